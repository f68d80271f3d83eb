//! The HTTP side: authentication, the Kubernetes verbs on any resource path, watches as
//! streams of JSON lines with bookmarks, TokenReview, and `/fake/…` for the tests to steer it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use parking_lot::{Mutex, MutexGuard};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::paths::Target;
use crate::select::Selector;
use crate::status::ApiError;
use crate::store::{Change, Event, Place, Scope, Store, parse_continue};
use crate::tokens::Tokens;

pub type Body = BoxBody<Bytes, Infallible>;

/// Bodies larger than this are refused, as the API server refuses them (3 MiB there).
const MAX_BODY: usize = 3 * 1024 * 1024;
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// How TokenReview fails when a test asks it to.
#[derive(Debug, Clone, Copy)]
enum ReviewFailure {
    /// With this HTTP status.
    Status(u16),
    /// By never answering.
    Hang,
}

/// The fake's whole state.
#[derive(Debug)]
pub struct Fake {
    store: Mutex<Store>,
    tokens: Mutex<Tokens>,
    /// TokenReviews answered, so a test can see what a client's cache saved.
    reviews: std::sync::atomic::AtomicU64,
    /// When set, TokenReview fails this way.
    review_failure: Mutex<Option<ReviewFailure>>,
    bearer: String,
    bookmark_every: Duration,
    /// Resources (`httproutes.gateway.networking.k8s.io`) answered with 404, as if their CRDs
    /// were not installed.
    unserved: Vec<String>,
}

impl Fake {
    pub fn new(bearer: String, bookmark_every: Duration, unserved: Vec<String>) -> Self {
        Self {
            store: Mutex::default(),
            tokens: Mutex::default(),
            review_failure: Mutex::default(),
            reviews: std::sync::atomic::AtomicU64::new(0),
            bearer,
            bookmark_every,
            unserved,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock()
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        match self.answer(request).await {
            Ok(response) => response,
            Err(error) => json_response(error.code, &error.to_json()),
        }
    }

    async fn answer(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let authorized = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(self.bearer.as_str());
        if !authorized {
            return Err(ApiError::unauthorized());
        }
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query: HashMap<String, String> = request
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = read_body(request.into_body()).await?;
        if let Some(control) = path.strip_prefix("/fake/") {
            return self.control(&method, control, &body);
        }
        if path == TOKEN_REVIEWS && method == Method::POST {
            return self.token_review(&body).await;
        }
        let target = Target::parse(&path)
            .ok_or_else(|| ApiError::bad_request(format!("{path}: not a resource path")))?;
        if self.unserved.contains(&target.plural_and_group()) {
            return Err(ApiError::not_served());
        }
        let place = Place {
            resource: target.resource.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        };
        let status_only = target.subresource == "status";
        match (method, target.name.is_empty()) {
            (Method::GET, true) => {
                let scope = Scope {
                    resource: target.resource,
                    namespace: target.namespace,
                    selector: Selector::parse(
                        query.get("labelSelector").map(String::as_str),
                        query.get("fieldSelector").map(String::as_str),
                    )?,
                };
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                    self.watch(scope, &query)
                } else {
                    self.list(&scope, &query)
                }
            }
            (Method::GET, false) => Ok(json_response(200, &self.store().get(&place)?)),
            (Method::POST, true) => {
                let object = json_body(&body)?;
                let place = Place {
                    name: object["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    ..place
                };
                check_namespace(&place, &object)?;
                Ok(json_response(201, &self.store().create(place, object)?))
            }
            (Method::PUT, false) => {
                let object = json_body(&body)?;
                check_namespace(&place, &object)?;
                Ok(json_response(
                    200,
                    &self.store().replace(&place, object, status_only)?,
                ))
            }
            (Method::PATCH, false) => self.patch(&place, &content_type, &body, status_only),
            (Method::DELETE, false) => {
                let precondition = delete_precondition(&body)?;
                let deleted = self.store().delete(&place, precondition.as_deref())?;
                Ok(json_response(200, &deleted))
            }
            (method, _) => Err(ApiError::method_not_allowed(&method)),
        }
    }

    fn list(
        &self,
        scope: &Scope,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let limit = query
            .get("limit")
            .map(|l| l.parse::<usize>())
            .transpose()
            .map_err(|_| ApiError::bad_request("limit must be a number"))?
            .filter(|l| *l > 0);
        let store = self.store();
        let after = match query.get("continue").filter(|c| !c.is_empty()) {
            None => None,
            Some(token) => {
                let (revision, after) = parse_continue(token)
                    .ok_or_else(|| ApiError::bad_request("continue: not a continue token"))?;
                if revision < store.floor() {
                    return Err(ApiError::gone(revision, store.floor()));
                }
                Some(after)
            }
        };
        let page = store.list(scope, limit, after);
        let kind = page
            .items
            .first()
            .and_then(|o| o["kind"].as_str())
            .map_or_else(|| "List".to_string(), |k| format!("{k}List"));
        let mut metadata = json!({"resourceVersion": page.revision.to_string()});
        if let Some(next) = page.next {
            metadata["continue"] = json!(next);
        }
        Ok(json_response(
            200,
            &json!({
                "kind": kind,
                "apiVersion": api_version(&scope.resource),
                "metadata": metadata,
                "items": page.items,
            }),
        ))
    }

    fn watch(
        self: Arc<Self>,
        scope: Scope,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let since = match query.get("resourceVersion").map(String::as_str) {
            None | Some("" | "0") => None,
            Some(version) => Some(
                version
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request("resourceVersion must be a number"))?,
            ),
        };
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        let (lines, body) = mpsc::channel::<Bytes>(64);
        // A resume from before the history kept is not an HTTP error: the stream carries it.
        match self.store().watch(&scope, since) {
            Ok((backlog, live)) => {
                tokio::spawn(
                    self.clone()
                        .follow(scope, backlog, live, bookmarks, timeout, lines),
                );
            }
            Err(gone) => {
                let _ = lines.try_send(line("ERROR", &gone.to_json()));
            }
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(body);
        let stream = futures_util::StreamExt::map(stream, |b| Ok::<_, Infallible>(Frame::data(b)));
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(stream).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())))
    }

    /// Sends a watch its backlog, then every change in scope as it happens, with bookmarks when
    /// asked; ends on timeout, when the client goes, or with 410 Gone after a compaction.
    async fn follow(
        self: Arc<Self>,
        scope: Scope,
        backlog: Vec<Event>,
        mut live: broadcast::Receiver<Change>,
        bookmarks: bool,
        timeout: Option<Duration>,
        lines: mpsc::Sender<Bytes>,
    ) {
        let mut watch = Follower {
            scope,
            lines,
            sent: 0,
        };
        for event in backlog {
            if !watch.pass(Change::Event(event)).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(self.bookmark_every);
        ticks.tick().await;
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) => {
                        if !watch.pass(change).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return watch.gone().await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticks.tick(), if bookmarks => {
                    // Everything up to the revision read under the lock is already queued: pass
                    // it on first, so the bookmark never runs ahead of an event.
                    let revision = self.store().revision();
                    loop {
                        match live.try_recv() {
                            Ok(change) => {
                                if !watch.pass(change).await {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => return watch.gone().await,
                            Err(_) => break,
                        }
                    }
                    if !watch.bookmark(revision).await {
                        return;
                    }
                }
                () = &mut deadline => return,
                () = watch.lines.closed() => return,
            }
        }
    }

    fn patch(
        &self,
        place: &Place,
        content_type: &str,
        body: &[u8],
        status_only: bool,
    ) -> Result<Response<Body>, ApiError> {
        let patch = json_body(body)?;
        let mut store = self.store();
        let is_apply = content_type.starts_with("application/apply-patch");
        let stored = match store.get(place) {
            Ok(stored) => stored,
            // Server-side apply creates what does not exist yet.
            Err(missing) if is_apply && missing.code == 404 && !status_only => {
                check_namespace(place, &patch)?;
                return Ok(json_response(201, &store.create(place.clone(), patch)?));
            }
            Err(error) => return Err(error),
        };
        let mut patched = stored;
        if content_type.starts_with("application/json-patch+json") {
            let operations: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("not a JSON patch: {e}")))?;
            json_patch::patch(&mut patched, &operations)
                .map_err(|e| ApiError::invalid(format!("the JSON patch does not apply: {e}")))?;
        } else if is_apply
            || content_type.starts_with("application/merge-patch+json")
            || content_type.starts_with("application/strategic-merge-patch+json")
        {
            // Merge semantics stand in for strategic merge and server-side apply: enough for the
            // maps and whole lists Weft writes.
            json_patch::merge(&mut patched, &patch);
        } else {
            return Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format: {content_type}"
                ),
            });
        }
        Ok(json_response(
            200,
            &store.replace(place, patched, status_only)?,
        ))
    }

    async fn token_review(&self, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let review = json_body(body)?;
        let failure = *self.review_failure.lock();
        match failure {
            Some(ReviewFailure::Status(code)) => {
                return Err(ApiError {
                    code,
                    reason: "InternalError",
                    message: "Internal error occurred: the token reviewer is failing (as asked)"
                        .into(),
                });
            }
            Some(ReviewFailure::Hang) => std::future::pending::<()>().await,
            None => {}
        }
        let reviewed = self.tokens.lock().review(review);
        self.reviews
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(json_response(201, &reviewed))
    }

    /// `POST /fake/tokens` registers a token; `POST /fake/compact` drops the history;
    /// `PUT /fake/token-review-failure` `{"code": 500}` makes reviews fail, `{"hang": true}`
    /// makes them never answer, `{}` stops either; `GET /fake/token-reviews` counts the reviews
    /// answered.
    fn control(
        &self,
        method: &Method,
        what: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        match (method, what) {
            (&Method::POST, "tokens") => {
                self.tokens
                    .lock()
                    .add(&json_body(body)?)
                    .map_err(ApiError::invalid)?;
            }
            (&Method::POST, "compact") => self.store().compact(),
            (&Method::GET, "token-reviews") => {
                let answered = self.reviews.load(std::sync::atomic::Ordering::Relaxed);
                return Ok(json_response(200, &json!({ "answered": answered })));
            }
            (&Method::PUT, "token-review-failure") => {
                let asked = json_body(body)?;
                let code = asked["code"].as_u64().and_then(|c| u16::try_from(c).ok());
                *self.review_failure.lock() = match (asked["hang"].as_bool(), code) {
                    (Some(true), _) => Some(ReviewFailure::Hang),
                    (_, Some(code)) => Some(ReviewFailure::Status(code)),
                    _ => None,
                };
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "/fake/{what}: no such control"
                )));
            }
        }
        Ok(json_response(
            200,
            &json!({"revision": self.store().revision()}),
        ))
    }
}

/// One watch's stream, and how far it has got.
struct Follower {
    scope: Scope,
    lines: mpsc::Sender<Bytes>,
    /// The revision of the last change passed (sent, or skipped as out of scope).
    sent: u64,
}

impl Follower {
    /// Passes one change on; false once the watch is over.
    async fn pass(&mut self, change: Change) -> bool {
        match change {
            Change::Event(event) => {
                self.sent = self.sent.max(event.revision);
                !self.scope.contains(&event) || self.send(event.kind, &event.object).await
            }
            Change::Compacted => {
                self.gone().await;
                false
            }
        }
    }

    /// Tells the client it has seen everything up to `revision`.
    async fn bookmark(&mut self, revision: u64) -> bool {
        let bookmark = json!({
            "kind": "Bookmark",
            "apiVersion": api_version(&self.scope.resource),
            "metadata": {"resourceVersion": revision.max(self.sent).to_string()},
        });
        self.send("BOOKMARK", &bookmark).await
    }

    /// Ends the watch as the API server does when it cannot go on from where the client is.
    async fn gone(&mut self) {
        let error = ApiError::gone(self.sent, self.sent + 1);
        self.send("ERROR", &error.to_json()).await;
    }

    async fn send(&mut self, kind: &str, object: &Value) -> bool {
        self.lines.send(line(kind, object)).await.is_ok()
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// `apiVersion` of a resource key: `v1` for the core group, `group/version` otherwise.
fn api_version(resource: &str) -> String {
    let mut parts = resource.splitn(3, '/');
    let group = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// An object whose namespace differs from its path's is refused, as by the API server.
fn check_namespace(place: &Place, object: &Value) -> Result<(), ApiError> {
    match object["metadata"]["namespace"].as_str() {
        Some(namespace) if !place.namespace.is_empty() && namespace != place.namespace => {
            Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({namespace}) does not match the namespace sent on the request ({})",
                place.namespace
            )))
        }
        _ => Ok(()),
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    limited
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!("request body: {e}"),
        })
}

/// The `preconditions.resourceVersion` a DeleteOptions body names, if any.
fn delete_precondition(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    let options = json_body(body)?;
    Ok(options["preconditions"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_string))
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}
