//! The mutating admission webhook: `weftctl inject`'s code behind HTTPS, answering the API
//! server's AdmissionReviews for new Pods with a JSON Patch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use weft_telemetry::Drain;

use crate::inject::{self, InjectSettings};
use crate::limits::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use crate::policy_admission;
use crate::tls_incoming::TlsConnection;

/// The API server sends at most 3 MiB of object; a review is a little more.
const MAX_REVIEW: usize = 4 * 1024 * 1024;
/// The API server gives up after its own timeout (10 s by default); so do we.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Reviews in flight on one HTTP/2 connection; the API server sends one per pod it admits.
const MAX_STREAMS: u32 = 100;
/// The path the MutatingWebhookConfiguration calls (DESIGN's Kubernetes contract).
pub const INJECT_PATH: &str = "/inject";

/// The annotations of namespaces, which opt their pods in: known to the control plane through
/// its Kubernetes store; without one, only pods that opt in themselves are injected.
pub trait NamespaceAnnotations: Send + Sync {
    /// The annotations of `namespace`, if it is known.
    fn annotations(&self, namespace: &str) -> Option<Map<String, Value>>;
}

/// Namespaces known from a fixed list (tests, and control planes without a Kubernetes store).
#[derive(Debug, Default)]
pub struct StaticNamespaces(pub HashMap<String, Map<String, Value>>);

impl NamespaceAnnotations for StaticNamespaces {
    fn annotations(&self, namespace: &str) -> Option<Map<String, Value>> {
        self.0.get(namespace).cloned()
    }
}

/// Decides and patches reviews.
#[derive(Clone)]
pub struct Webhook {
    settings: Arc<dyn Fn() -> InjectSettings + Send + Sync>,
    namespaces: Arc<dyn NamespaceAnnotations>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").finish_non_exhaustive()
    }
}

impl Webhook {
    /// `settings` is asked at each review, so a rotated trust bundle reaches new pods at once.
    pub fn new(
        settings: impl Fn() -> InjectSettings + Send + Sync + 'static,
        namespaces: Arc<dyn NamespaceAnnotations>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            namespaces,
        }
    }

    /// Answers one AdmissionReview (its JSON body); never fails: what cannot be read gets an
    /// AdmissionReview refusing it with the reason.
    pub fn review(&self, body: &[u8]) -> AdmissionReview<DynamicObject> {
        match request_of(body) {
            Ok(request) => self.respond(&request).into_review(),
            Err(reason) => AdmissionResponse::invalid(reason).into_review(),
        }
    }

    fn respond(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        if request.kind.kind != "Pod" || request.operation != Operation::Create {
            return response;
        }
        let Some(object) = &request.object else {
            return response.deny("a Pod CREATE review without the pod");
        };
        let original = match serde_json::to_value(object) {
            Ok(value) => value,
            Err(error) => return response.deny(format!("cannot read the pod: {error}")),
        };
        let pod_annotations = original
            .pointer("/metadata/annotations")
            .and_then(Value::as_object);
        let namespace = request.namespace.as_deref().unwrap_or("default");
        let namespace_annotations = self.namespaces.annotations(namespace);
        if !inject::wanted(pod_annotations, namespace_annotations.as_ref()) {
            return response;
        }
        // The API server sends the pod with its type, and with its namespace unless the pod is
        // created through a controller; the injector needs both, the patch neither.
        let mut pod = original.clone();
        let untyped = pod.get("kind").is_none();
        let unplaced = pod.pointer("/metadata/namespace").is_none();
        if let Value::Object(fields) = &mut pod {
            if untyped {
                fields.insert("kind".to_string(), "Pod".into());
            }
            if let (true, Some(Value::Object(metadata))) = (unplaced, fields.get_mut("metadata")) {
                metadata.insert("namespace".to_string(), namespace.into());
            }
        }
        if let Err(error) = inject::inject_document(&mut pod, &(self.settings)()) {
            return response.deny(format!("weft: {error}"));
        }
        if let Value::Object(fields) = &mut pod {
            if untyped {
                fields.shift_remove("kind");
            }
            if let (true, Some(Value::Object(metadata))) = (unplaced, fields.get_mut("metadata")) {
                metadata.shift_remove("namespace");
            }
        }
        let patch = json_patch::diff(&original, &pod);
        match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(error) => response.deny(format!("cannot encode the patch: {error}")),
        }
    }
}

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Its certificate or key cannot be used.
    #[error("{path}: {reason}")]
    Certificate {
        /// The file at fault.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The webhook's TLS, from the serving certificate the API server was told to trust (the
/// chart's Secret).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, WebhookError> {
    let bad = |path: &Path, reason: String| WebhookError::Certificate {
        path: path.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "holds no certificate".to_string()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(cert, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves reviews on the `connections` that [`tls_incoming::incoming`] admits (so this port has
/// the same bounds on connections, handshakes and silence as the gRPC ones) until `drain` is
/// signalled.
pub async fn serve(
    mut connections: ReceiverStream<Result<TlsConnection, std::io::Error>>,
    webhook: Webhook,
    drain: Drain,
) {
    loop {
        let connection = tokio::select! {
            next = connections.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(_)) => continue,
                None => return,
            },
            () = drain.signaled() => return,
        };
        let webhook = webhook.clone();
        drain.spawn(async move {
            let remote = connection.connect_info().remote;
            if let Err(error) = serve_connection(connection, remote, webhook).await {
                tracing::debug!(%remote, %error, "webhook connection ended");
            }
        });
    }
}

async fn serve_connection(
    connection: TlsConnection,
    remote: SocketAddr,
    webhook: Webhook,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = hyper::service::service_fn(move |request| {
        let webhook = webhook.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request, &webhook, remote).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A request head must arrive whole within the API server's own timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS);
    builder
        .serve_connection(TokioIo::new(connection), service)
        .await
}

async fn handle(
    request: Request<Incoming>,
    webhook: &Webhook,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    if path != INJECT_PATH && path != policy_admission::VALIDATE_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "the webhook serves /inject and /validate only",
        );
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview");
    }
    let body = Limited::new(request.into_body(), MAX_REVIEW);
    let body = match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) => {
            if error.is::<http_body_util::LengthLimitError>() {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "an AdmissionReview over 4 MiB",
                );
            }
            return plain(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "the request body came too slowly",
            );
        }
    };
    let review = if path == INJECT_PATH {
        webhook.review(&body)
    } else {
        policy_admission::review(&body)
    };
    if let Some(response) = &review.response {
        tracing::debug!(%remote, uid = %response.uid, allowed = response.allowed, patched = response.patch.is_some(), "admission review");
    }
    match encode(&review) {
        Ok(json) => Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response")),
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the AdmissionReview could not be encoded",
        ),
    }
}

/// The request an AdmissionReview (its JSON body) carries, or why there is none.
pub(crate) fn request_of(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|error| format!("not an AdmissionReview: {error}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview carries no request".to_string())
}

/// The review as JSON, its patch base64-encoded as Go's `[]byte` is (kube-core writes an array of
/// numbers, which the API server also takes; base64 is what every other webhook sends).
fn encode(review: &AdmissionReview<DynamicObject>) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine as _;
    let mut json = serde_json::to_value(review)?;
    if let Some(patch) = json.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take())?;
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    serde_json::to_vec(&json)
}

fn plain(status: StatusCode, reason: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(reason.as_bytes())));
    *response.status_mut() = status;
    response
}
