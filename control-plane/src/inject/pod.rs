//! Adding the proxy to one pod template, and taking it away again.
//!
//! Injection only adds: containers, volumes, one label and annotations. It never edits what the
//! pod already has, which is what lets `uninject` give back the manifest that went in and lets
//! injecting twice change nothing (the second time removes the first's additions, then adds
//! them again).

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};

use super::{IdentitySource, InjectError, InjectSettings, Overrides, SidecarMode};

/// The proxy's container.
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// The init container that installs the redirect rules.
pub const INIT_CONTAINER: &str = "weft-init";
/// Marks an injected pod, with the proxy version it was injected with.
pub const PROXY_VERSION_ANNOTATION: &str = "weft.io/proxy-version";
/// The label selecting meshed pods (for PodMonitors, `weftctl check`, network policies).
const PROXIED_LABEL: &str = "weft.io/proxied";
/// The annotations injection added because the pod had none of its own, so that uninjection
/// removes exactly those.
const ADDED_ANNOTATIONS: &str = "weft.io/added-annotations";
const IDENTITY_VOLUME: &str = "weft-identity";
/// iptables takes a lock file under /run; the init container's root filesystem is read-only.
const INIT_RUN_VOLUME: &str = "weft-init-run";
/// Where the proxy finds the token it proves its identity with (DESIGN's Kubernetes contract).
const IDENTITY_DIR: &str = "/var/run/secrets/weft.io/serviceaccount";
/// The binary's path inside the proxy image.
const PROXY_BINARY: &str = "/weft-proxy";
/// The proxy's UID: the init rules exempt it, so its own traffic is never redirected.
const PROXY_UID: i64 = 7102;
const INBOUND_PORT: i32 = 7143;
/// The proxy container's inbound port, by name: discovery dials a meshed Pod there.
pub const INBOUND_PORT_NAME: &str = "weft-inbound";
const ADMIN_PORT: i32 = 7191;
/// The proxy's tap API, which the control plane calls for `weftctl tap`, `top`, `proxy-config`.
const TAP_PORT: i32 = 7190;

/// Which workload the template belongs to, where that changes the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Runs until deleted.
    Service,
    /// Ends when its containers do (Job, CronJob, or a bare Pod that never restarts).
    Batch,
}

/// Whether this template already carries Weft's additions.
pub fn is_injected(metadata: &Map<String, Value>) -> bool {
    annotations(metadata).is_some_and(|a| a.contains_key(PROXY_VERSION_ANNOTATION))
}

/// Adds the proxy to a pod template's `metadata` and `spec`.
pub fn inject(
    metadata: &mut Map<String, Value>,
    spec: &mut Map<String, Value>,
    settings: &InjectSettings,
    owner: Owner,
    namespace: Option<&str>,
) -> Result<(), InjectError> {
    let overrides = Overrides::from_annotations(annotations(metadata))?;
    let identity = identity(spec, namespace, settings)?;
    uninject(metadata, spec);
    let mode = overrides.sidecar_mode.unwrap_or(settings.sidecar_mode);

    let proxy = proxy_container(settings, identity, &overrides, mode, owner);
    let init = init_container(settings, &overrides);
    let mut front = vec![to_value(&init)?];
    match mode {
        SidecarMode::Native => front.push(to_value(&proxy)?),
        SidecarMode::Classic => prepend(spec, "containers", vec![to_value(&proxy)?])?,
    }
    prepend(spec, "initContainers", front)?;
    append(
        spec,
        "volumes",
        vec![
            to_value(&identity_volume(&settings.identity))?,
            to_value(&Volume {
                name: INIT_RUN_VOLUME.to_string(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            })?,
        ],
    )?;

    map_at(metadata, "labels")?.insert(PROXIED_LABEL.to_string(), "true".into());
    let annotations = map_at(metadata, "annotations")?;
    let scrape = [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ];
    // An app that asks to be scraped itself keeps its own annotations; the proxy's metrics are
    // then collected by the chart's PodMonitor instead.
    if !annotations.keys().any(|k| k.starts_with("prometheus.io/")) {
        let added: Vec<&str> = scrape.iter().map(|(k, _)| *k).collect();
        for (key, value) in scrape {
            annotations.insert(key.to_string(), value.into());
        }
        annotations.insert(ADDED_ANNOTATIONS.to_string(), added.join(",").into());
    }
    annotations.insert(
        PROXY_VERSION_ANNOTATION.to_string(),
        settings.proxy_version.clone().into(),
    );
    Ok(())
}

/// Removes everything [`inject`] added; a template without it is left as it is.
pub fn uninject(metadata: &mut Map<String, Value>, spec: &mut Map<String, Value>) {
    if !is_injected(metadata) {
        return;
    }
    remove_named(spec, "initContainers", &[INIT_CONTAINER, PROXY_CONTAINER]);
    remove_named(spec, "containers", &[PROXY_CONTAINER]);
    remove_named(spec, "volumes", &[IDENTITY_VOLUME, INIT_RUN_VOLUME]);
    if let Some(Value::Object(labels)) = metadata.get_mut("labels") {
        labels.shift_remove(PROXIED_LABEL);
    }
    if let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
        annotations.shift_remove(PROXY_VERSION_ANNOTATION);
        if let Some(Value::String(added)) = annotations.shift_remove(ADDED_ANNOTATIONS) {
            for key in added.split(',') {
                annotations.shift_remove(key);
            }
        }
    }
    for key in ["labels", "annotations"] {
        if metadata.get(key).is_some_and(is_empty_map) {
            metadata.shift_remove(key);
        }
    }
}

/// The proxy's identity: its pod's ServiceAccount, in its namespace. A manifest without a
/// namespace (applied with `kubectl -n`) leaves the namespace to the downward API.
fn identity(
    spec: &Map<String, Value>,
    namespace: Option<&str>,
    settings: &InjectSettings,
) -> Result<Vec<EnvVar>, InjectError> {
    // What the ServiceAccount admission plugin sets before any webhook runs.
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let td = settings.trust_domain.clone();
    let check = |namespace: &str| {
        weft_certs::Identity::new(td.clone(), namespace, service_account)
            .map_err(|e| InjectError(format!("no SPIFFE identity for its ServiceAccount: {e}")))
    };
    Ok(match namespace {
        Some(namespace) => vec![env_var(
            "WEFT_PROXY_IDENTITY",
            &check(namespace)?.to_string(),
        )],
        None => {
            check("default")?;
            vec![
                field_env_var("WEFT_POD_NAMESPACE", "metadata.namespace"),
                // Kubernetes expands $(VAR) from the variable above.
                env_var(
                    "WEFT_PROXY_IDENTITY",
                    &format!("spiffe://{td}/ns/$(WEFT_POD_NAMESPACE)/sa/{service_account}"),
                ),
            ]
        }
    })
}

/// A variable the kubelet sets from the pod's own `field` (the downward API).
fn field_env_var(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn proxy_container(
    settings: &InjectSettings,
    identity: Vec<EnvVar>,
    overrides: &Overrides,
    mode: SidecarMode,
    owner: Owner,
) -> Container {
    let mut env = identity;
    env.extend([
        env_var(
            "WEFT_PROXY_CONTROL_PLANE_ADDR",
            &settings.control_plane_addr,
        ),
        env_var("WEFT_PROXY_TRUST_ANCHORS_PEM", &settings.trust_anchors_pem),
        env_var("WEFT_PROXY_TOKEN_PATH", &format!("{IDENTITY_DIR}/token")),
        // Told to the control plane, so operators select the proxy by its pod's name.
        field_env_var("WEFT_POD_NAME", "metadata.name"),
    ]);
    let optional = [
        ("WEFT_PROXY_LOG", &overrides.log_level),
        ("WEFT_PROXY_OPAQUE_PORTS", &overrides.opaque_ports),
        (
            "WEFT_PROXY_DEFAULT_INBOUND_POLICY",
            &overrides.default_inbound_policy,
        ),
        ("WEFT_PROXY_TRACE_SAMPLING", &overrides.trace_sampling),
    ];
    env.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.as_deref().map(|v| env_var(name, v))),
    );
    if let Some(endpoint) = &settings.trace_endpoint {
        env.push(env_var("WEFT_PROXY_TRACE_ENDPOINT", endpoint));
    }
    if settings.access_log {
        env.push(env_var("WEFT_PROXY_ACCESS_LOG", "json"));
    }
    // A classic sidecar outlives a Job's containers unless the job tells it to go; a native
    // one is stopped by the kubelet once they end.
    if mode == SidecarMode::Classic && owner == Owner::Batch {
        env.push(env_var("WEFT_PROXY_SHUTDOWN_ENDPOINT", "true"));
    }

    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(ADMIN_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let mut requests = std::collections::BTreeMap::new();
    requests.insert(
        "cpu".to_string(),
        Quantity(overrides.cpu_request.clone().unwrap_or("10m".to_string())),
    );
    requests.insert("memory".to_string(), Quantity("20Mi".to_string()));
    let limits = overrides
        .memory_limit
        .as_ref()
        .map(|limit| std::iter::once(("memory".to_string(), Quantity(limit.clone()))).collect());

    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some(INBOUND_PORT_NAME.to_string()),
                container_port: INBOUND_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("weft-admin".to_string()),
                container_port: ADMIN_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("weft-tap".to_string()),
                container_port: TAP_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/ready", 5, 3)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        // A native sidecar holds the app back until this succeeds.
        startup_probe: (mode == SidecarMode::Native).then(|| http_probe("/ready", 1, 120)),
        lifecycle: (mode == SidecarMode::Classic).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![PROXY_BINARY.to_string(), "await-ready".to_string()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        restart_policy: (mode == SidecarMode::Native).then(|| "Always".to_string()),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits,
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: IDENTITY_VOLUME.to_string(),
            mount_path: IDENTITY_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    }
}

fn init_container(settings: &InjectSettings, overrides: &Overrides) -> Container {
    let optional = [
        (
            "WEFT_PROXY_SKIP_INBOUND_PORTS",
            &overrides.skip_inbound_ports,
        ),
        (
            "WEFT_PROXY_SKIP_OUTBOUND_PORTS",
            &overrides.skip_outbound_ports,
        ),
        (
            "WEFT_PROXY_SKIP_OUTBOUND_CIDRS",
            &overrides.skip_outbound_cidrs,
        ),
    ];
    let env: Vec<EnvVar> = optional
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| env_var(name, v)))
        .collect();
    let mut resources = std::collections::BTreeMap::new();
    resources.insert("cpu".to_string(), Quantity("10m".to_string()));
    resources.insert("memory".to_string(), Quantity("10Mi".to_string()));
    Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(settings.init_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: Some(vec!["init".to_string()]),
        env: (!env.is_empty()).then_some(env),
        resources: Some(ResourceRequirements {
            requests: Some(resources),
            ..Default::default()
        }),
        // Rules in the pod's own network namespace need NET_ADMIN and NET_RAW, and root to use
        // them; nothing else.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: INIT_RUN_VOLUME.to_string(),
            mount_path: "/run".to_string(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    }
}

fn identity_volume(identity: &IdentitySource) -> Volume {
    match identity {
        IdentitySource::ServiceAccountToken => Volume {
            name: IDENTITY_VOLUME.to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("weft".to_string()),
                        // Short-lived: the kubelet renews it at 80 % of its life.
                        expiration_seconds: Some(3600),
                        path: "token".to_string(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        IdentitySource::JoinTokenSecret(secret) => Volume {
            name: IDENTITY_VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                // The default, said explicitly: podman 4.3's `kube play` dereferences it.
                optional: Some(false),
                items: Some(vec![KeyToPath {
                    key: "token".to_string(),
                    path: "token".to_string(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, InjectError> {
    serde_json::to_value(value).map_err(|e| InjectError(format!("cannot encode: {e}")))
}

fn annotations(metadata: &Map<String, Value>) -> Option<&Map<String, Value>> {
    metadata.get("annotations").and_then(Value::as_object)
}

fn is_empty_map(value: &Value) -> bool {
    value.as_object().is_some_and(Map::is_empty) || value.is_null()
}

/// The map under `key`, created if absent (or null, as `annotations:` with nothing after it).
fn map_at<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
        .ok_or_else(|| InjectError(format!("metadata.{key} is not a mapping")))
}

fn list_at<'a>(
    spec: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = spec
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
        .ok_or_else(|| InjectError(format!("spec.{key} is not a list")))
}

fn prepend(spec: &mut Map<String, Value>, key: &str, items: Vec<Value>) -> Result<(), InjectError> {
    let list = list_at(spec, key)?;
    list.splice(0..0, items);
    Ok(())
}

fn append(spec: &mut Map<String, Value>, key: &str, items: Vec<Value>) -> Result<(), InjectError> {
    list_at(spec, key)?.extend(items);
    Ok(())
}

/// Drops the entries named `names` from the list under `key`, and the list if that empties it.
fn remove_named(spec: &mut Map<String, Value>, key: &str, names: &[&str]) {
    let Some(Value::Array(list)) = spec.get_mut(key) else {
        return;
    };
    list.retain(|item| {
        !item
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| names.contains(&name))
    });
    if list.is_empty() && key != "containers" {
        spec.shift_remove(key);
    }
}
