//! `weftctl check`: what a cluster offers before Weft is installed (`--pre`), and how the
//! installed control plane is doing after — one line per check, ✔ or ✘ with the fix, as
//! `linkerd check` does. Exit code 1 if any check fails.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::CliError;
use crate::kube_client;

/// The oldest Kubernetes with native sidecars (init containers with `restartPolicy: Always`).
const MIN_MINOR: u32 = 29;
/// A certificate closer to its end than this is reported.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
const WEBHOOK_CONFIGURATION: &str = "weft-inject";
/// How long one request to the API server may take before its check fails.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Check a cluster before installing Weft, or the installed control plane after.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The kubeconfig [default: $KUBECONFIG, else ~/.kube/config, else in-cluster].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Before installing: only what the cluster must offer.
    #[arg(long)]
    pub pre: bool,

    /// The control plane's namespace.
    #[arg(long, default_value = "weft")]
    pub namespace: String,
}

/// One check's outcome: what was seen, or what is wrong and how to fix it.
type Outcome = Result<String, String>;

/// Runs the checks, printing a line for each.
pub async fn run(args: &CheckArgs, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let mut checks: Vec<(Cow<'static, str>, Outcome)> = Vec::new();
    let client = match client(args).await {
        Ok(client) => client,
        Err(why) => {
            checks.push(("the Kubernetes API can be reached".into(), Err(why)));
            return report(&checks, out);
        }
    };
    let version = client.apiserver_version().await.map_err(|e| {
        format!("{e}: check --kubeconfig and that the cluster is up (kubectl version)")
    });
    let reachable = version
        .as_ref()
        .map(|v| v.git_version.clone())
        .map_err(Clone::clone);
    checks.push(("the Kubernetes API can be reached".into(), reachable));
    let Ok(version) = version else {
        return report(&checks, out);
    };
    checks.push((
        "Kubernetes is 1.29 or newer (native sidecars)".into(),
        minimum_version(&version),
    ));

    if args.pre {
        for (group, resource, namespaced) in [
            ("", "namespaces", false),
            ("", "secrets", true),
            ("", "services", true),
            ("", "serviceaccounts", true),
            ("apps", "deployments", true),
            ("policy", "poddisruptionbudgets", true),
            ("rbac.authorization.k8s.io", "clusterroles", false),
            ("rbac.authorization.k8s.io", "clusterrolebindings", false),
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                false,
            ),
        ] {
            let namespace = namespaced.then_some(args.namespace.as_str());
            checks.push((
                format!("you may create {resource}").into(),
                may_create(&client, group, resource, namespace).await,
            ));
        }
        let existing = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get_opt(WEBHOOK_CONFIGURATION)
            .await;
        checks.push(("no Weft is installed yet".into(),
            match existing {
                Ok(None) => Ok("no weft-inject webhook".to_string()),
                Ok(Some(_)) => Err("the weft-inject webhook exists: upgrade with `helm upgrade`, or `helm uninstall weft` first".to_string()),
                Err(e) => Err(format!("cannot read webhooks: {e}")),
            },
        ));
        return report(&checks, out);
    }

    let namespace = args.namespace.as_str();
    checks.push((
        "the control plane is running".into(),
        control_plane(&client, namespace).await,
    ));
    for (name, secret) in [
        (
            "the issuer certificate is valid for 30 days more",
            "weft-issuer",
        ),
        (
            "the webhook's certificate is valid for 30 days more",
            "weft-webhook-tls",
        ),
    ] {
        checks.push((
            name.into(),
            certificate_expiry(&client, namespace, secret).await,
        ));
    }
    checks.push((
        "the webhook is configured with its CA".into(),
        webhook_ca(&client, namespace).await,
    ));
    checks.push((
        "the webhook answers AdmissionReviews".into(),
        webhook_answers(&client, namespace).await,
    ));
    checks.push((
        "the control plane is ready".into(),
        control_plane_ready(&client, namespace).await,
    ));
    report(&checks, out)
}

/// A client that reports a failure at once: the API server's 503 for a service with no endpoints
/// is the answer, not a reason to retry for minutes.
async fn client(args: &CheckArgs) -> Result<kube::Client, String> {
    let mut config = match &args.kubeconfig {
        Some(path) => kube_client::from_kubeconfig(path)
            .await
            .map_err(|e| e.to_string())?,
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no kubeconfig found ({e}): give --kubeconfig"))?,
    };
    config.default_retry = false;
    config.connect_timeout = Some(CHECK_TIMEOUT);
    config.read_timeout = Some(CHECK_TIMEOUT);
    kube_client::client(config).map_err(|e| e.to_string())
}

fn minimum_version(version: &k8s_openapi::apimachinery::pkg::version::Info) -> Outcome {
    let minor: Option<u32> = version
        .minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok();
    match (version.major.as_str(), minor) {
        ("1", Some(minor)) if minor >= MIN_MINOR => Ok(version.git_version.clone()),
        ("1", Some(_)) => Err(format!(
            "the cluster runs {}: upgrade it, or inject with --sidecar-mode classic (the chart's proxy.sidecarMode)",
            version.git_version
        )),
        _ => Err(format!("cannot read the version {:?}", version.git_version)),
    }
}

async fn may_create(
    client: &kube::Client,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Outcome {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                verb: Some("create".to_string()),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| format!("cannot ask the API server: {e}"))?;
    match answer.status {
        Some(status) if status.allowed => Ok("allowed".to_string()),
        _ => Err(format!(
            "not allowed: install as a cluster administrator (the chart creates {resource})"
        )),
    }
}

async fn control_plane(client: &kube::Client, namespace: &str) -> Outcome {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt("weft-control")
        .await
        .map_err(|e| format!("cannot read deployments in {namespace}: {e}"))?
        .ok_or_else(|| {
            format!("no Deployment weft-control in {namespace}: install with `helm install weft charts/weft -n {namespace}`")
        })?;
    let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
    let available = deployment
        .status
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if available >= 1 {
        Ok(format!("{available} of {wanted} replicas available"))
    } else {
        Err(format!(
            "0 of {wanted} replicas available: see `kubectl -n {namespace} describe deployment weft-control` and its pods' logs"
        ))
    }
}

async fn secret(client: &kube::Client, namespace: &str, name: &str) -> Result<Secret, String> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read Secret {name}: {e}"))?
        .ok_or_else(|| format!("no Secret {name} in {namespace}: reinstall the chart"))
}

fn secret_value(secret: &Secret, key: &str) -> Result<Vec<u8>, String> {
    let name = secret.metadata.name.as_deref().unwrap_or("?");
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.0.clone())
        .ok_or_else(|| format!("Secret {name} has no {key}"))
}

async fn certificate_expiry(client: &kube::Client, namespace: &str, name: &str) -> Outcome {
    let pem = secret_value(&secret(client, namespace, name).await?, "tls.crt")?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| format!("Secret {name}'s tls.crt is not a PEM certificate"))?;
    let not_after = weft_certs::not_after_of(&cert)
        .ok_or_else(|| format!("Secret {name}'s certificate cannot be read"))?;
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let until = humantime::format_rfc3339_seconds(not_after);
    if left >= EXPIRY_WARNING {
        Ok(format!("until {until}"))
    } else if left.is_zero() {
        Err(format!(
            "expired at {until}: rotate it now (see SECURITY.md)"
        ))
    } else {
        Err(format!("expires at {until}: rotate it (see SECURITY.md)"))
    }
}

async fn webhook_ca(client: &kube::Client, namespace: &str) -> Outcome {
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(WEBHOOK_CONFIGURATION)
        .await
        .map_err(|e| format!("cannot read webhooks: {e}"))?
        .ok_or("no MutatingWebhookConfiguration weft-inject: reinstall the chart")?;
    let bundle = configuration
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|webhook| webhook.client_config.ca_bundle)
        .map(|bundle| bundle.0)
        .ok_or("weft-inject has no caBundle: reinstall the chart")?;
    let ca = secret_value(
        &secret(client, namespace, "weft-webhook-tls").await?,
        "ca.crt",
    )?;
    if bundle == ca {
        Ok("caBundle matches weft-webhook-tls".to_string())
    } else {
        Err("caBundle is not weft-webhook-tls's CA, so the API server cannot call the webhook: `helm upgrade` to write them again".to_string())
    }
}

/// Through the API server's service proxy: the path the API server itself takes.
async fn webhook_answers(client: &kube::Client, namespace: &str) -> Outcome {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "weftctl-check",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "weftctl-check"},
            "dryRun": true,
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "weftctl-check"}, "spec": {"containers": []}},
        },
    });
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/services/https:weft-webhook:443/proxy/inject"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(review.to_string().into_bytes())
    .map_err(|e| e.to_string())?;
    let answer = client.request_text(request).await.map_err(|e| {
        format!("no answer ({e}): see `kubectl -n {namespace} get endpoints weft-webhook`")
    })?;
    let answer: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|_| "the answer is not an AdmissionReview".to_string())?;
    if answer
        .pointer("/response/uid")
        .and_then(serde_json::Value::as_str)
        == Some("weftctl-check")
    {
        Ok("answered".to_string())
    } else {
        Err("the answer is not an AdmissionReview for the request".to_string())
    }
}

async fn control_plane_ready(client: &kube::Client, namespace: &str) -> Outcome {
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{namespace}/services/http:weft-control:metrics/proxy/ready"
    ))
    .body(Vec::new())
    .map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map(|_| "/ready answers 200".to_string())
        .map_err(|e| format!("/ready: {e}: see `kubectl -n {namespace} logs deploy/weft-control`"))
}

fn report(
    checks: &[(Cow<'static, str>, Outcome)],
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let write = |out: &mut dyn std::io::Write, line: String| {
        writeln!(out, "{line}").map_err(|e| CliError(format!("cannot write: {e}")))
    };
    let mut failed = 0;
    for (name, outcome) in checks {
        match outcome {
            Ok(seen) => write(out, format!("✔ {name} ({seen})"))?,
            Err(fix) => {
                failed += 1;
                write(out, format!("✘ {name}: {fix}"))?;
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError(format!(
            "{failed} of {} checks failed",
            checks.len()
        )))
    }
}
