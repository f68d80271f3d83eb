//! Live views of the proxy's requests for operators (`weftctl tap` and `top`): an observer
//! attaches with a filter and receives a summary of each matching request — never a body, and
//! headers only when asked, credentials left out.
//!
//! Nothing is paid while no one watches but one atomic load per request. Events go through a
//! bounded channel per observer; a slow observer loses events (counted), never slows traffic.

mod samples;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, Method, Version};
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::mpsc;

pub use self::server::{TapServer, TapServerSettings};
use crate::metrics::Direction;

/// Observers attached to one proxy at most: each costs a filter check per request.
const MAX_OBSERVERS: usize = 16;
/// Requests one observer sees at most (and by default).
pub const MAX_LIMIT: u64 = 10_000;
/// Events waiting for a slow observer before newer ones are dropped: with the bounds below,
/// a few MiB per observer at most.
const EVENT_BACKLOG: usize = 256;
/// A path, authority or header value shown is cut to this many bytes.
const MAX_SHOWN: usize = 1024;
/// Header bytes shown per event at most; the rest are left out.
const MAX_SHOWN_HEADERS: usize = 8 * 1024;
/// Headers whose values are never shown, whatever is asked: credentials by name, and names
/// that carry one by convention (`x-api-key`, `x-auth-token`, session ids…).
const SECRET_HEADER_WORDS: [&str; 9] = [
    "auth",
    "cookie",
    "token",
    "key",
    "secret",
    "session",
    "password",
    "signature",
    "credential",
];

/// The proxy's observers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Taps(Arc<Hub>);

#[derive(Debug)]
struct Hub {
    /// The number of observers, read on every request.
    count: AtomicUsize,
    observers: ArcSwap<Vec<Arc<Observer>>>,
    /// Held while the list changes, so the count published is the list's.
    changing: parking_lot::Mutex<()>,
    next_observer: AtomicU64,
    next_request: AtomicU64,
    attached: IntGauge,
    dropped: IntCounter,
}

/// Which requests an observer wants; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub direction: Option<Direction>,
    pub authority: Option<String>,
    pub path_prefix: Option<String>,
    pub method: Option<Method>,
}

#[derive(Debug)]
struct Observer {
    id: u64,
    filter: Filter,
    headers: bool,
    /// Requests it may still be shown; at zero it is detached.
    remaining: AtomicU64,
    events: mpsc::Sender<Event>,
}

/// Something that happened to one request.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique within this proxy.
    pub request_id: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    Request(RequestInit),
    Response(ResponseInit),
    End(ResponseEnd),
}

#[derive(Debug, Clone)]
pub struct RequestInit {
    pub direction: Direction,
    pub method: Method,
    pub authority: String,
    pub path: String,
    pub version: Version,
    pub peer_identity: Option<String>,
    pub destination: Arc<str>,
    pub at: SystemTime,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ResponseInit {
    pub status: u16,
    pub since_request: Duration,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct ResponseEnd {
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub complete: bool,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub peer_identity: Option<String>,
}

/// An attached observer's events; dropping it detaches the observer. The stream ends once the
/// observer has seen its limit of requests and each of them has ended.
#[derive(Debug)]
pub struct Attached {
    pub events: mpsc::Receiver<Event>,
    _detach: Detach,
}

#[derive(Debug)]
struct Detach {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.hub.detach(self.id);
    }
}

/// Why an observer could not attach.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_OBSERVERS} observers are attached to this proxy already")]
pub struct TooManyObservers;

/// The observers a request matched, told about it as it goes.
#[derive(Debug)]
pub struct Tapped {
    hub: Arc<Hub>,
    request_id: u64,
    observers: Vec<Arc<Observer>>,
}

/// What a request is matched on.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub direction: Direction,
    pub method: &'a Method,
    pub authority: &'a str,
    pub path: &'a str,
}

impl Taps {
    /// No observers yet; the gauge and drop counter registered in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let attached = IntGauge::new(
            "weft_tap_observers",
            "Tap observers attached to this proxy (weftctl tap and top).",
        )?;
        let dropped = IntCounter::new(
            "weft_tap_events_dropped_total",
            "Tap events dropped because an observer was not reading them fast enough.",
        )?;
        registry.register(Box::new(attached.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(Self::with_metrics(attached, dropped))
    }

    fn with_metrics(attached: IntGauge, dropped: IntCounter) -> Self {
        Self(Arc::new(Hub {
            count: AtomicUsize::new(0),
            observers: ArcSwap::from_pointee(Vec::new()),
            changing: parking_lot::Mutex::new(()),
            next_observer: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            attached,
            dropped,
        }))
    }

    /// Observers that count nothing anywhere (tests, and proxies built without a registry).
    pub fn unregistered() -> Self {
        let unregistered = |name: &str| IntCounter::new(name, "unregistered");
        Self::with_metrics(
            IntGauge::new("weft_tap_observers", "unregistered")
                .unwrap_or_else(|e| unreachable!("a constant name is valid: {e}")),
            unregistered("weft_tap_events_dropped_total")
                .unwrap_or_else(|e| unreachable!("a constant name is valid: {e}")),
        )
    }

    /// Whether anyone watches at all: the only cost on a request's path while no one does.
    pub fn is_watched(&self) -> bool {
        self.0.count.load(Ordering::Relaxed) > 0
    }

    /// Attaches an observer of the requests `filter` matches, `limit` of them at most
    /// (0 or above [`MAX_LIMIT`]: [`MAX_LIMIT`]).
    pub fn attach(
        &self,
        filter: Filter,
        limit: u64,
        headers: bool,
    ) -> Result<Attached, TooManyObservers> {
        let hub = &self.0;
        let limit = if limit == 0 {
            MAX_LIMIT
        } else {
            limit.min(MAX_LIMIT)
        };
        let (events, receiver) = mpsc::channel(EVENT_BACKLOG);
        let observer = Arc::new(Observer {
            id: hub.next_observer.fetch_add(1, Ordering::Relaxed),
            filter,
            headers,
            remaining: AtomicU64::new(limit),
            events,
        });
        let id = observer.id;
        {
            let _changing = hub.changing.lock();
            let current = hub.observers.load();
            if current.len() >= MAX_OBSERVERS {
                return Err(TooManyObservers);
            }
            let mut next = Vec::clone(&current);
            next.push(observer);
            hub.set(next);
        }
        Ok(Attached {
            events: receiver,
            _detach: Detach {
                hub: hub.clone(),
                id,
            },
        })
    }

    /// Offers a starting request to the observers: `None` when none takes it. `headers` is read
    /// only when an observer asked for headers.
    pub fn offer(
        &self,
        head: RequestHead<'_>,
        init: impl FnOnce() -> RequestInit,
        headers: &HeaderMap,
    ) -> Option<Tapped> {
        if !self.is_watched() {
            return None;
        }
        let hub = &self.0;
        let observers = hub.observers.load();
        let mut taking = Vec::new();
        for observer in observers.iter() {
            if !observer.filter.matches(&head) {
                continue;
            }
            match observer
                .remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(1)
                }) {
                Ok(1) => {
                    // Its last request: no new ones, and its stream ends when this one does.
                    hub.detach(observer.id);
                    taking.push(observer.clone());
                }
                Ok(_) => taking.push(observer.clone()),
                Err(_) => {}
            }
        }
        if taking.is_empty() {
            return None;
        }
        let tapped = Tapped {
            hub: hub.clone(),
            request_id: hub.next_request.fetch_add(1, Ordering::Relaxed),
            observers: taking,
        };
        let init = init();
        let with_headers = tapped
            .observers
            .iter()
            .any(|observer| observer.headers)
            .then(|| shown_headers(headers));
        for observer in &tapped.observers {
            let mut init = init.clone();
            if observer.headers {
                init.headers = with_headers.clone().unwrap_or_default();
            }
            hub.send(observer, tapped.event(EventKind::Request(init)));
        }
        Some(tapped)
    }
}

impl Hub {
    fn detach(&self, id: u64) {
        let _changing = self.changing.lock();
        let next: Vec<Arc<Observer>> = self
            .observers
            .load()
            .iter()
            .filter(|observer| observer.id != id)
            .cloned()
            .collect();
        self.set(next);
    }

    /// Publishes `observers` and their count (the caller holds `changing`).
    fn set(&self, observers: Vec<Arc<Observer>>) {
        let count = observers.len();
        self.observers.store(Arc::new(observers));
        self.count.store(count, Ordering::Relaxed);
        self.attached.set(count as i64);
    }

    fn send(&self, observer: &Observer, event: Event) {
        // A closed channel is an observer gone, not a slow one.
        if let Err(mpsc::error::TrySendError::Full(_)) = observer.events.try_send(event) {
            self.dropped.inc();
        }
    }
}

impl Filter {
    fn matches(&self, head: &RequestHead<'_>) -> bool {
        self.direction
            .is_none_or(|direction| direction == head.direction)
            && self
                .authority
                .as_deref()
                .is_none_or(|authority| authority.eq_ignore_ascii_case(head.authority))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| head.path.starts_with(prefix))
            && self
                .method
                .as_ref()
                .is_none_or(|method| method == head.method)
    }
}

impl Tapped {
    fn event(&self, kind: EventKind) -> Event {
        Event {
            request_id: self.request_id,
            kind,
        }
    }

    /// The response's head arrived.
    pub fn response(&self, status: u16, since_request: Duration, headers: &HeaderMap) {
        let shown = self
            .observers
            .iter()
            .any(|observer| observer.headers)
            .then(|| shown_headers(headers));
        for observer in &self.observers {
            let headers = if observer.headers {
                shown.clone().unwrap_or_default()
            } else {
                Vec::new()
            };
            let init = ResponseInit {
                status,
                since_request,
                headers,
            };
            self.hub
                .send(observer, self.event(EventKind::Response(init)));
        }
    }

    /// The exchange is over.
    pub fn end(self, end: ResponseEnd) {
        for observer in &self.observers {
            self.hub
                .send(observer, self.event(EventKind::End(end.clone())));
        }
    }
}

/// `headers` as shown: credentials' values redacted, values that are not text shown lossily,
/// each value and all of them bounded.
fn shown_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut shown = Vec::new();
    let mut budget = MAX_SHOWN_HEADERS;
    for (name, value) in headers {
        let name = name.as_str();
        let value = if SECRET_HEADER_WORDS.iter().any(|word| name.contains(word)) {
            "<redacted>".to_string()
        } else {
            shown_text(&String::from_utf8_lossy(value.as_bytes()))
        };
        let Some(left) = budget.checked_sub(name.len() + value.len()) else {
            break;
        };
        budget = left;
        shown.push((name.to_string(), value));
    }
    shown
}

/// `text` cut to [`MAX_SHOWN`] bytes (on a character boundary), marked when cut.
pub fn shown_text(text: &str) -> String {
    if text.len() <= MAX_SHOWN {
        return text.to_string();
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a Method, path: &'a str) -> RequestHead<'a> {
        RequestHead {
            direction: Direction::Inbound,
            method,
            authority: "api.shop:8080",
            path,
        }
    }

    fn init() -> RequestInit {
        RequestInit {
            direction: Direction::Inbound,
            method: Method::GET,
            authority: "api.shop:8080".to_string(),
            path: "/items".to_string(),
            version: Version::HTTP_11,
            peer_identity: None,
            destination: Arc::from("api"),
            at: SystemTime::now(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn nothing_is_offered_while_no_one_watches() {
        let taps = Taps::unregistered();
        assert!(!taps.is_watched());
        assert!(
            taps.offer(head(&Method::GET, "/"), init, &HeaderMap::new())
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_observer_sees_matching_requests_up_to_its_limit_then_its_stream_ends() {
        let taps = Taps::unregistered();
        let filter = Filter {
            path_prefix: Some("/items".to_string()),
            method: Some(Method::GET),
            ..Filter::default()
        };
        let mut attached = taps.attach(filter, 2, false).unwrap();
        assert!(taps.is_watched());
        let headers = HeaderMap::new();
        assert!(
            taps.offer(head(&Method::POST, "/items"), init, &headers)
                .is_none()
        );
        assert!(
            taps.offer(head(&Method::GET, "/admin"), init, &headers)
                .is_none()
        );
        let first = taps
            .offer(head(&Method::GET, "/items/1"), init, &headers)
            .unwrap();
        let second = taps
            .offer(head(&Method::GET, "/items/2"), init, &headers)
            .unwrap();
        // Its limit is reached: detached, though its two requests are still under way.
        assert!(!taps.is_watched());
        assert!(
            taps.offer(head(&Method::GET, "/items/3"), init, &headers)
                .is_none()
        );
        first.response(200, Duration::from_millis(1), &headers);
        first.end(ResponseEnd::default());
        second.end(ResponseEnd::default());
        let mut kinds = Vec::new();
        while let Some(event) = attached.events.recv().await {
            kinds.push(match event.kind {
                EventKind::Request(_) => "request",
                EventKind::Response(_) => "response",
                EventKind::End(_) => "end",
            });
        }
        assert_eq!(kinds, ["request", "request", "response", "end", "end"]);
    }

    #[tokio::test]
    async fn credentials_are_never_shown_and_headers_only_when_asked() {
        let taps = Taps::unregistered();
        let mut with_headers = taps.attach(Filter::default(), 1, true).unwrap();
        let mut without = taps.attach(Filter::default(), 1, false).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        headers.insert("cookie", "session=secret".parse().unwrap());
        headers.insert("x-api-key", "k-123".parse().unwrap());
        headers.insert("user-agent", "curl".parse().unwrap());
        let tapped = taps.offer(head(&Method::GET, "/"), init, &headers).unwrap();
        tapped.end(ResponseEnd::default());
        let Some(EventKind::Request(shown)) = with_headers.events.recv().await.map(|e| e.kind)
        else {
            panic!("a request event first");
        };
        let shown: Vec<(&str, &str)> = shown
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("authorization", "<redacted>"),
                ("cookie", "<redacted>"),
                ("x-api-key", "<redacted>"),
                ("user-agent", "curl"),
            ]
        );
        let Some(EventKind::Request(bare)) = without.events.recv().await.map(|e| e.kind) else {
            panic!("a request event first");
        };
        assert!(bare.headers.is_empty());
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_SHOWN);
        let shown = shown_text(&long);
        assert!(shown.len() <= MAX_SHOWN + "…".len());
        assert!(shown.ends_with('…'));
        assert_eq!(shown_text("/short"), "/short");
    }

    #[test]
    fn observers_are_bounded_and_leave_when_dropped() {
        let taps = Taps::unregistered();
        let attached: Vec<Attached> = (0..MAX_OBSERVERS)
            .map(|_| taps.attach(Filter::default(), 0, false).unwrap())
            .collect();
        assert!(taps.attach(Filter::default(), 0, false).is_err());
        drop(attached);
        assert!(!taps.is_watched());
        assert!(taps.attach(Filter::default(), 0, false).is_ok());
    }
}
