//! Canned Kubernetes API answers for one test (plain HTTP on loopback, each request answered by
//! the test's handler): for `weftctl check`, which asks for versions and access reviews case by
//! case. Lists, watches and TokenReview are served by the real stand-in, `fake_apiserver`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// What the stand-in answers.
#[derive(Debug)]
pub enum Reply {
    /// A status and a JSON body.
    Json(u16, serde_json::Value),
    /// A status and a text body.
    Text(u16, String),
}

/// A request: method, path with query, body.
pub type Handler = Arc<
    dyn Fn(http::Method, String, Bytes) -> Pin<Box<dyn Future<Output = Reply> + Send>>
        + Send
        + Sync,
>;

/// A Kubernetes `Status` for a missing object, as the API server sends with 404.
pub fn not_found(what: &str) -> Reply {
    Reply::Json(
        404,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404,
        }),
    )
}

/// Serves `handler` on a loopback port until the test ends.
pub async fn serve(handler: Handler) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let method = request.method().clone();
                            let path = request
                                .uri()
                                .path_and_query()
                                .map_or(String::new(), ToString::to_string);
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (status, body): (u16, BoxBody<Bytes, Infallible>) =
                                match handler(method, path, body).await {
                                    Reply::Json(status, json) => {
                                        (status, Full::new(Bytes::from(json.to_string())).boxed())
                                    }
                                    Reply::Text(status, text) => {
                                        (status, Full::new(Bytes::from(text)).boxed())
                                    }
                                };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A kubeconfig pointing at the stand-in, with no credentials.
pub fn kubeconfig(dir: &Path, api: SocketAddr) -> PathBuf {
    crate::mesh::write_temp(
        dir,
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{api}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             current-context: fake\n"
        ),
    )
}
