//! `weftctl install`: the control plane's manifests without Helm, for
//! `weftctl install | kubectl apply -f -`. They are the chart's (charts/weft) as `helm template`
//! renders them with `identity.mode=given`; `scripts/check-chart` renders both and fails on any
//! difference but the random parts (admin token, webhook certificate) and the manager label.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use weft_certs::{TrustAnchor, TrustDomain};

use super::CliError;
use crate::pki;
use crate::policy::crds;

const CHART: &str = "weft";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The webhook's CA and serving certificate live this long (the chart's
/// `webhook.certValidityDays`); `weftctl check` warns 30 days before.
const WEBHOOK_CERT_DAYS: i64 = 3650;
const UID: u32 = 7100;

/// Print the control plane's manifests (the Helm chart's, without Helm).
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The control plane's namespace (created by the output).
    #[arg(long, default_value = "weft")]
    pub namespace: String,

    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: TrustDomain,

    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The trust anchor and issuer, as `weftctl certs init` writes them (trust-anchor.pem,
    /// issuer.pem, issuer-key.pem) [default: a new anchor and issuer, the anchor's key
    /// discarded].
    #[arg(long)]
    pub identity_dir: Option<PathBuf>,

    /// Three replicas on three nodes, a PodDisruptionBudget, and pods refused while the webhook
    /// is down (the chart's values-ha.yaml).
    #[arg(long)]
    pub ha: bool,

    /// Where the images are, as `<registry>/weft-control` etc.
    #[arg(long, default_value = "localhost")]
    pub registry: String,

    /// Print only Weft's CustomResourceDefinitions (policy.weft.io), for
    /// `weftctl install --crds | kubectl apply -f -` before the control plane.
    #[arg(long)]
    pub crds: bool,
}

/// What varies between installs, as the chart's values.
struct Values<'a> {
    args: &'a InstallArgs,
    replicas: u32,
    anti_affinity_hard: bool,
    pdb_min_available: Option<u32>,
    max_unavailable: u32,
    max_surge: u32,
    resources: Value,
    failure_policy: &'static str,
}

impl<'a> Values<'a> {
    fn of(args: &'a InstallArgs) -> Self {
        if args.ha {
            Self {
                args,
                replicas: 3,
                anti_affinity_hard: true,
                pdb_min_available: Some(2),
                max_unavailable: 1,
                max_surge: 0,
                resources: json!({"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}),
                failure_policy: "Fail",
            }
        } else {
            Self {
                args,
                replicas: 1,
                anti_affinity_hard: false,
                pdb_min_available: None,
                max_unavailable: 0,
                max_surge: 1,
                resources: json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}),
                failure_policy: "Ignore",
            }
        }
    }

    fn image(&self, name: &str) -> String {
        format!("{}/{name}:{VERSION}", self.args.registry)
    }
}

/// The trust anchor(s) and the issuer, as PEM.
struct Identity {
    anchors: String,
    issuer: String,
    issuer_key: String,
}

/// Prints the manifests.
pub fn run(args: &InstallArgs, out: &mut impl std::io::Write) -> Result<(), CliError> {
    if args.crds {
        return write_crds(out);
    }
    let identity = match &args.identity_dir {
        Some(dir) => read_identity(dir, &args.trust_domain)?,
        None => new_identity(&args.trust_domain)?,
    };
    let docs = manifests(&Values::of(args), &identity)?;
    super::inject::write(&docs, out)
}

/// Weft's CRDs as YAML, as the chart ships them in `crds/`.
pub fn write_crds(out: &mut impl std::io::Write) -> Result<(), CliError> {
    let docs = crds::definitions()
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError(format!("cannot write the CRDs: {e}")))?;
    out.write_all(
        b"# Weft's CustomResourceDefinitions, generated from the Rust types by `weftctl install --crds`.\n",
    )
    .map_err(|e| CliError(format!("cannot write: {e}")))?;
    super::inject::write(&docs, out)
}

/// A new anchor and issuer; the anchor's key is dropped here, as `linkerd install` does.
fn new_identity(trust_domain: &TrustDomain) -> Result<Identity, CliError> {
    let now = std::time::SystemTime::now();
    let failed = |e: weft_certs::AuthorityError| CliError(format!("a new trust anchor: {e}"));
    let anchor = TrustAnchor::generate(trust_domain, now).map_err(failed)?;
    let issuer = anchor.generate_issuer(now).map_err(failed)?;
    eprintln!(
        "weftctl install: a new trust anchor for {trust_domain}, its key not kept (give --identity-dir from `weftctl certs init` to keep one)"
    );
    Ok(Identity {
        anchors: anchor.certificate_pem(),
        issuer: issuer.certificate_pem(),
        issuer_key: issuer.key_pem().to_string(),
    })
}

fn read_identity(dir: &Path, trust_domain: &TrustDomain) -> Result<Identity, CliError> {
    // Checked as weft-control will at start: the issuer chains to the anchor, for this domain.
    pki::load(dir, Some(trust_domain))
        .map_err(|e| CliError(format!("--identity-dir {}: {e}", dir.display())))?;
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| CliError(format!("{}: {e}", path.display())))
    };
    Ok(Identity {
        anchors: read(pki::TRUST_ANCHOR_FILE)?,
        issuer: read(pki::ISSUER_FILE)?,
        issuer_key: read(pki::ISSUER_KEY_FILE)?,
    })
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn selector_labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "weft",
        "app.kubernetes.io/instance": "weft",
        "app.kubernetes.io/component": component,
    })
}

fn labels(component: &str) -> Value {
    let mut labels = selector_labels(component);
    if let Some(map) = labels.as_object_mut() {
        map.insert("app.kubernetes.io/version".into(), VERSION.into());
        map.insert("app.kubernetes.io/part-of".into(), "weft".into());
        map.insert("app.kubernetes.io/managed-by".into(), "weftctl".into());
        map.insert("helm.sh/chart".into(), format!("{CHART}-{VERSION}").into());
    }
    labels
}

fn metadata(name: &str, namespace: Option<&str>, component: &str) -> Value {
    let mut metadata = json!({"name": name, "labels": labels(component)});
    if let (Some(namespace), Some(map)) = (namespace, metadata.as_object_mut()) {
        map.insert("namespace".into(), namespace.into());
    }
    metadata
}

fn manifests(values: &Values<'_>, identity: &Identity) -> Result<Vec<Value>, CliError> {
    let ns = values.args.namespace.as_str();
    let mut docs = vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns},
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": metadata("weft-admin-token", Some(ns), "control-plane"),
            "type": "Opaque",
            "data": {"token": b64(&crate::admin_credential::new_token())},
        }),
        deployment(values, identity),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": metadata("weft-issuer", Some(ns), "identity"),
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(&identity.issuer), "tls.key": b64(&identity.issuer_key), "ca.crt": b64(&identity.anchors)},
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": metadata("weft-trust-anchor", Some(ns), "identity"),
            "type": "Opaque",
            "data": {"ca.crt": b64(&identity.anchors)},
        }),
    ];
    if let Some(min_available) = values.pdb_min_available {
        docs.push(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata("weft-control", Some(ns), "control-plane"),
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": selector_labels("control-plane")}},
        }));
    }
    docs.extend([
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": metadata("weft-control", None, "control-plane"),
            "rules": [
                {"apiGroups": [""], "resources": ["namespaces", "pods", "services"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                // Policy lives in the API server: weftctl apply and delete write through weft-control.
                {"apiGroups": ["policy.weft.io"], "resources": crds::plurals(), "verbs": ["get", "list", "watch", "create", "update", "delete"]},
                {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes", "grpcroutes"], "verbs": ["get", "list", "watch", "create", "update", "delete"]},
                // Route status, written by the replica holding the Lease.
                {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes/status", "grpcroutes/status"], "verbs": ["get", "patch", "update"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": metadata("weft-control", None, "control-plane"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft-control"},
            "subjects": [{"kind": "ServiceAccount", "name": "weft-control", "namespace": ns}],
        }),
        // The Lease the replicas elect the route status writer with: its own alone.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": metadata("weft-control", Some(ns), "control-plane"),
            "rules": [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["weft-control"], "verbs": ["get", "update"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": metadata("weft-control", Some(ns), "control-plane"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weft-control"},
            "subjects": [{"kind": "ServiceAccount", "name": "weft-control", "namespace": ns}],
        }),
        service(ns, "weft-control", "control-plane", &[("proxy-api", 7200, "proxy-api"), ("admin", 7201, "admin"), ("metrics", 7290, "metrics")]),
        // Its own Service: the API server calls webhooks on 443, and the certificate names it.
        service(ns, "weft-webhook", "webhook", &[("https", 443, "webhook")]),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": metadata("weft-control", Some(ns), "control-plane"),
        }),
    ]);
    docs.extend(webhook(values)?);
    Ok(docs)
}

/// A ClusterIP Service in front of the control plane's pods: (name, port, container port name).
fn service(ns: &str, name: &str, component: &str, ports: &[(&str, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port, target)| json!({"name": name, "port": port, "targetPort": target}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(name, Some(ns), component),
        "spec": {"type": "ClusterIP", "selector": selector_labels("control-plane"), "ports": ports},
    })
}

fn deployment(values: &Values<'_>, identity: &Identity) -> Value {
    let args = values.args;
    let ns = args.namespace.as_str();
    let selector = json!({"matchLabels": selector_labels("control-plane")});
    let anti_affinity = if values.anti_affinity_hard {
        json!({"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": selector},
        ]})
    } else {
        json!({"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": selector}},
        ]})
    };
    // Rolls the pods when what they read only at start changes, as the chart's checksum does.
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        [
            identity.anchors.as_str(),
            &identity.issuer,
            &identity.issuer_key,
            args.trust_domain.as_str(),
        ]
        .concat()
        .as_bytes(),
    );
    let checksum: String = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata("weft-control", Some(ns), "control-plane"),
        "spec": {
            "replicas": values.replicas,
            "revisionHistoryLimit": 5,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": values.max_unavailable, "maxSurge": values.max_surge}},
            "selector": selector,
            "template": {
                "metadata": {
                    "labels": labels("control-plane"),
                    "annotations": {"weft.io/inject": "disabled", "checksum/config": checksum},
                },
                "spec": {
                    "serviceAccountName": "weft-control",
                    "automountServiceAccountToken": true,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 20,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {"podAntiAffinity": anti_affinity},
                    "containers": [{
                        "name": "weft-control",
                        "image": values.image("weft-control"),
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/weft-control"],
                        "args": [
                            "--data-dir=/var/lib/weft",
                            "--pki-dir=/var/run/weft/pki",
                            format!("--trust-domain={}", args.trust_domain),
                            format!("--cluster-domain={}", args.cluster_domain),
                            "--policy-store=kubernetes",
                            format!("--lease-namespace={ns}"),
                            "--proxy-api-addr=0.0.0.0:7200",
                            "--admin-addr=0.0.0.0:7201",
                            "--metrics-addr=0.0.0.0:7290",
                            "--leaf-lifetime=24h",
                            "--admin-token-file=/var/run/weft/admin/token",
                            "--shutdown-grace=10s",
                            "--webhook-addr=0.0.0.0:7243",
                            "--webhook-cert=/var/run/weft/webhook/tls.crt",
                            "--webhook-key=/var/run/weft/webhook/tls.key",
                            format!("--proxy-image={}", values.image("weft-proxy")),
                            format!("--init-image={}", values.image("weft-init")),
                            "--sidecar-mode=native",
                            format!("--proxy-api-service=weft-control.{ns}.svc.{}:7200", args.cluster_domain),
                        ],
                        "ports": [
                            {"name": "proxy-api", "containerPort": 7200},
                            {"name": "admin", "containerPort": 7201},
                            {"name": "webhook", "containerPort": 7243},
                            {"name": "metrics", "containerPort": 7290},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "metrics"}, "periodSeconds": 5, "failureThreshold": 2},
                        "livenessProbe": {"httpGet": {"path": "/live", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3},
                        "resources": values.resources,
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/weft"},
                            {"name": "pki", "mountPath": "/var/run/weft/pki", "readOnly": true},
                            {"name": "admin-token", "mountPath": "/var/run/weft/admin", "readOnly": true},
                            {"name": "webhook-tls", "mountPath": "/var/run/weft/webhook", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "pki", "projected": {"defaultMode": 0o440, "sources": [
                            {"secret": {"name": "weft-issuer", "items": [
                                {"key": "tls.crt", "path": "issuer.pem"},
                                {"key": "tls.key", "path": "issuer-key.pem"},
                            ]}},
                            {"secret": {"name": "weft-trust-anchor", "items": [{"key": "ca.crt", "path": "trust-anchor.pem"}]}},
                        ]}},
                        {"name": "admin-token", "secret": {"secretName": "weft-admin-token", "defaultMode": 0o440, "items": [{"key": "token", "path": "token"}]}},
                        {"name": "webhook-tls", "secret": {"secretName": "weft-webhook-tls", "defaultMode": 0o440}},
                    ],
                },
            },
        },
    })
}

/// The webhook's serving certificate from a CA made for it alone, and the configuration that
/// trusts that CA.
fn webhook(values: &Values<'_>) -> Result<[Value; 3], CliError> {
    let args = values.args;
    let ns = args.namespace.as_str();
    let failed = |e: rcgen::Error| CliError(format!("the webhook's certificate: {e}"));
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(WEBHOOK_CERT_DAYS);
    let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weft-webhook-ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (ca_params.not_before, ca_params.not_after) = (now, until);
    let ca = ca_params.self_signed(&ca_key).map_err(failed)?;
    let ca_pem = ca.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let host = format!("weft-webhook.{ns}.svc");
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(vec![
        host.clone(),
        format!("weft-webhook.{ns}"),
        format!("{host}.{}", args.cluster_domain),
    ])
    .map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    (params.not_before, params.not_after) = (now, until);
    let cert = params.signed_by(&key, &issuer).map_err(failed)?;
    let mut excluded = vec!["kube-system", "cert-manager"];
    if !excluded.contains(&ns) {
        excluded.push(ns);
    }
    let not_disabled =
        json!({"key": "weft.io/admission-webhooks", "operator": "NotIn", "values": ["disabled"]});
    // Both webhooks are served by weft-control behind one Service, vouched for by one CA.
    let client_config = |path: &str| {
        json!({
            "service": {"name": "weft-webhook", "namespace": ns, "path": path, "port": 443},
            "caBundle": b64(&ca_pem),
        })
    };
    Ok([
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": metadata("weft-webhook-tls", Some(ns), "webhook"),
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(&cert.pem()), "tls.key": b64(&key.serialize_pem()), "ca.crt": b64(&ca_pem)},
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": metadata("weft-inject", None, "webhook"),
            "webhooks": [{
                "name": "inject.weft.io",
                "clientConfig": client_config(crate::webhook::INJECT_PATH),
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded},
                    not_disabled,
                ]},
                "objectSelector": {"matchExpressions": [not_disabled]},
                "failurePolicy": values.failure_policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        }),
        // Weft's own kinds, checked as weft-control reads them (fail closed).
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": metadata("weft-validate", None, "webhook"),
            "webhooks": [{
                "name": "validate.weft.io",
                "clientConfig": client_config(crate::policy_admission::VALIDATE_PATH),
                "rules": [{
                    "operations": ["CREATE", "UPDATE"],
                    "apiGroups": ["policy.weft.io"],
                    "apiVersions": ["v1alpha1"],
                    "resources": crds::plurals(),
                    "scope": "Namespaced",
                }],
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        }),
    ])
}
