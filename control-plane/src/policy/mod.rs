//! Policy resources: parsing Kubernetes-shaped manifests into typed resources, checking them
//! with errors that name the field, and the references between them.

/// Implements `JsonSchema` for a type that is one inline schema in every CRD that uses it (a
/// port, a duration): its serde form is custom, so schemars cannot derive it.
macro_rules! inline_json_schema {
    ($type:ty, $schema:tt) => {
        impl schemars::JsonSchema for $type {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($type).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}

pub mod crds;
mod defaults;
mod duration;
mod inbound;
mod net;
mod retry_code;
mod types;
mod validate;

use std::fmt;

use serde::de::DeserializeOwned;

pub use self::duration::{GatewayDuration, duration, format_duration};
pub use self::net::{Address, Cidr, Port};
pub use self::retry_code::{GrpcStatus, HttpStatus, RetryCode, RetryOn};
pub use self::types::*;

/// The namespace of a manifest that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of policy resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A service off Kubernetes.
    Service,
    /// An instance of an app off Kubernetes.
    Workload,
    /// Gateway API HTTP routing.
    HttpRoute,
    /// Gateway API gRPC routing.
    GrpcRoute,
    /// Weft's traffic policy for a Service or route.
    ServicePolicy,
    /// How workloads take inbound traffic by default: mode, authorization, rate limits.
    InboundDefaults,
    /// Who may call which workloads' ports and routes.
    AuthorizationPolicy,
}

/// Why a manifest was refused: which resource, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {reason}")]
pub struct PolicyError {
    /// `HTTPRoute shop/api`, or `document 3` before the name is known.
    pub resource: String,
    /// The field, as a path: `spec.rules[0].backendRefs[1].weight`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Identifies a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// A resource's spec, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Service(ServiceSpec),
    Workload(WorkloadSpec),
    HttpRoute(HttpRouteSpec),
    GrpcRoute(GrpcRouteSpec),
    ServicePolicy(Box<ServicePolicySpec>),
    InboundDefaults(InboundDefaultsSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
}

/// Fields the API server sets, which `kubectl get -o yaml` shows: dropped without a warning, so
/// such a manifest applies as it is.
const SERVER_SET_FIELDS: [&str; 7] = [
    "status",
    "metadata.uid",
    "metadata.generation",
    "metadata.managedFields",
    "metadata.selfLink",
    "metadata.deletionTimestamp",
    "metadata.deletionGracePeriodSeconds",
];

/// A manifest parsed and checked, with what in it was ignored.
#[derive(Debug)]
pub struct Parsed {
    pub resource: Resource,
    /// One line per field ignored: `HTTPRoute shop/api: unknown field "spec.rules[0].mirror", ignored`.
    pub warnings: Vec<String>,
}

/// A checked policy resource, its namespace filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub meta: ObjectMeta,
    pub spec: Spec,
}

// === impl Kind ===

impl Kind {
    /// Every kind, in the order `weftctl get all` shows them.
    pub const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::Workload,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ServicePolicy,
        Kind::InboundDefaults,
        Kind::AuthorizationPolicy,
    ];

    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Workload => "Workload",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ServicePolicy => "ServicePolicy",
            Kind::InboundDefaults => "InboundDefaults",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The `apiVersion` the kind belongs to.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::HttpRoute | Kind::GrpcRoute => GATEWAY_API_VERSION,
            _ => WEFT_API_VERSION,
        }
    }

    /// The kind a manifest's `kind` field names (exactly, as Kubernetes requires).
    pub fn from_manifest(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The kind a user typed on the command line: any case, singular, plural or short.
    pub fn from_cli(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Some(Kind::Service),
            "workload" | "workloads" | "wl" => Some(Kind::Workload),
            "httproute" | "httproutes" => Some(Kind::HttpRoute),
            "grpcroute" | "grpcroutes" => Some(Kind::GrpcRoute),
            "servicepolicy" | "servicepolicies" | "sp" => Some(Kind::ServicePolicy),
            "inbounddefaults" | "inbounddefault" | "id" => Some(Kind::InboundDefaults),
            "authorizationpolicy" | "authorizationpolicies" | "authz" | "ap" => {
                Some(Kind::AuthorizationPolicy)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Key ===

impl Key {
    /// The key of `kind` `namespace/name`.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

// === impl Resource ===

impl Resource {
    /// Parses and checks one manifest. `position` names it in errors until its own name is known.
    pub fn parse(manifest: &serde_json::Value, position: &str) -> Result<Self, PolicyError> {
        Self::parse_reporting(manifest, position).map(|parsed| parsed.resource)
    }

    /// [`Resource::parse`], reporting the fields it ignored: those the API server sets are
    /// dropped quietly; other unknown fields are warned of in Gateway API kinds and refused in
    /// Weft's own.
    pub fn parse_reporting(
        manifest: &serde_json::Value,
        position: &str,
    ) -> Result<Parsed, PolicyError> {
        let error = |field: &str, reason: String| PolicyError {
            resource: position.to_string(),
            field: field.to_string(),
            reason,
        };
        let kind_name = manifest
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| error("kind", "must be set".to_string()))?;
        let kind = Kind::from_manifest(kind_name).ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            error(
                "kind",
                format!("unknown kind {kind_name:?}; known: {}", known.join(", ")),
            )
        })?;
        let api_version = manifest
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if api_version != kind.api_version() {
            return Err(error(
                "apiVersion",
                format!("{kind} must be {}, not {api_version:?}", kind.api_version()),
            ));
        }
        let mut ignored = Vec::new();
        let (meta, spec) = match kind {
            Kind::Service => typed(manifest, position, &mut ignored, Spec::Service)?,
            Kind::Workload => typed(manifest, position, &mut ignored, Spec::Workload)?,
            Kind::HttpRoute => typed(manifest, position, &mut ignored, Spec::HttpRoute)?,
            Kind::GrpcRoute => typed(manifest, position, &mut ignored, Spec::GrpcRoute)?,
            Kind::ServicePolicy => typed(manifest, position, &mut ignored, |s| {
                Spec::ServicePolicy(Box::new(s))
            })?,
            Kind::InboundDefaults => {
                typed(manifest, position, &mut ignored, Spec::InboundDefaults)?
            }
            Kind::AuthorizationPolicy => {
                typed(manifest, position, &mut ignored, Spec::AuthorizationPolicy)?
            }
        };
        let mut resource = Resource { kind, meta, spec };
        // A uid means the manifest came from an API server: its resourceVersion is that
        // server's, not a version of this store, and would only make the apply conflict.
        if ignored.iter().any(|field| field == "metadata.uid") {
            resource.meta.resource_version = None;
        }
        let namespace = resource
            .meta
            .namespace
            .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string())
            .clone();
        let named = format!("{kind} {namespace}/{}", resource.meta.name);
        validate::check(&resource).map_err(|(field, reason)| PolicyError {
            resource: if validate::names_are_valid(&resource) {
                named.clone()
            } else {
                position.to_string()
            },
            field,
            reason,
        })?;
        let unknown: Vec<String> = ignored
            .into_iter()
            .filter(|field| !SERVER_SET_FIELDS.contains(&field.as_str()))
            .collect();
        // Weft's own kinds fail closed: a misspelt `http`, `ports` or `selector` ignored would
        // widen an AuthorizationPolicy to every request, port or workload. (On Kubernetes their
        // CRDs' schemas refuse the same under kubectl's default strict field validation.)
        if kind.api_version() == WEFT_API_VERSION
            && let Some(field) = unknown.first()
        {
            return Err(PolicyError {
                resource: named,
                field: field.clone(),
                reason: format!("unknown field; {kind} has no such field"),
            });
        }
        let mut warnings: Vec<String> = unknown
            .into_iter()
            .map(|field| format!("{named}: unknown field {field:?}, ignored"))
            .collect();
        if let Some((field, reason)) = resource.unsupported() {
            warnings.push(format!(
                "{named}: {field}: {reason}; the route is not served until it is (Accepted=False, UnsupportedValue)"
            ));
        }
        Ok(Parsed { resource, warnings })
    }

    /// For a route, the first thing in it Weft cannot do yet (see [`RouteSpec::unsupported`]).
    pub fn unsupported(&self) -> Option<(String, String)> {
        match &self.spec {
            Spec::HttpRoute(spec) => spec.unsupported(),
            Spec::GrpcRoute(spec) => spec.unsupported(),
            _ => None,
        }
    }

    /// The resource's key.
    pub fn key(&self) -> Key {
        Key::new(self.kind, self.namespace(), &self.meta.name)
    }

    /// The resource's namespace.
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The manifest as stored and shown, with its resource version.
    pub fn to_json(&self, resource_version: u64) -> serde_json::Value {
        let mut meta = self.meta.clone();
        meta.resource_version = Some(resource_version.to_string());
        let spec = match &self.spec {
            Spec::Service(s) => serde_json::to_value(s),
            Spec::Workload(s) => serde_json::to_value(s),
            Spec::HttpRoute(s) => serde_json::to_value(s),
            Spec::GrpcRoute(s) => serde_json::to_value(s),
            Spec::ServicePolicy(s) => serde_json::to_value(s),
            Spec::InboundDefaults(s) => serde_json::to_value(s),
            Spec::AuthorizationPolicy(s) => serde_json::to_value(s),
        }
        .unwrap_or_default();
        serde_json::json!({
            "apiVersion": self.kind.api_version(),
            "kind": self.kind.as_str(),
            "metadata": meta,
            "spec": spec,
        })
    }

    /// The same resource without its resource version, for comparing content.
    pub fn without_version(&self) -> Self {
        let mut copy = self.clone();
        copy.meta.resource_version = None;
        copy
    }

    /// Every resource this one refers to, with the field that does.
    pub fn references(&self) -> Vec<(String, Key)> {
        validate::references(self)
    }
}

/// Deserializes `manifest` as `Manifest<S>`, naming the failing field
/// and adding the fields it ignores to `ignored`.
fn typed<S: DeserializeOwned>(
    manifest: &serde_json::Value,
    position: &str,
    ignored: &mut Vec<String>,
    wrap: impl FnOnce(S) -> Spec,
) -> Result<(ObjectMeta, Spec), PolicyError> {
    let mut report = |path: serde_ignored::Path<'_>| ignored.push(field_path(&path));
    let reporting = serde_ignored::Deserializer::new(manifest, &mut report);
    let parsed: Manifest<S> = serde_path_to_error::deserialize(reporting).map_err(|e| {
        let field = e.path().to_string();
        PolicyError {
            resource: named(manifest).unwrap_or_else(|| position.to_string()),
            field: if field == "." {
                "(document)".to_string()
            } else {
                field
            },
            reason: e.into_inner().to_string(),
        }
    })?;
    Ok((parsed.metadata, wrap(parsed.spec)))
}

/// A field's path as errors name it: `spec.rules[0].filters`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// The resource a manifest names (`HTTPRoute shop/api`), when its kind and metadata are sound
/// enough to name it by.
fn named(manifest: &serde_json::Value) -> Option<String> {
    let kind = Kind::from_manifest(manifest.get("kind")?.as_str()?)?;
    let meta: ObjectMeta = serde_json::from_value(manifest.get("metadata")?.clone()).ok()?;
    validate::check_meta(&meta).ok()?;
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    Some(format!("{kind} {namespace}/{}", meta.name))
}

#[cfg(test)]
mod tests;
