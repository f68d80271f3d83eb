//! Which proxies are connected, what they watch, and which versions they applied.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::SystemTime;

use parking_lot::Mutex;
use weft_api::admin::{ProxyStatus, WatchStatus};
use weft_certs::Identity;

/// Every proxy with an open discovery stream.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    proxies: Mutex<HashMap<SocketAddr, ProxyEntry>>,
}

#[derive(Debug)]
struct ProxyEntry {
    identity: Identity,
    cert_expiry: Option<SystemTime>,
    connected_at: SystemTime,
    open_streams: usize,
    watches: BTreeMap<String, WatchEntry>,
    /// The fingerprint of its certificate's issuer, as it last reported it.
    cert_issuer: String,
    /// The port of its tap API, as it told on its mesh watch.
    tap_port: Option<u16>,
    /// Its pod, as it told (empty when it did not).
    pod: String,
}

/// A connected proxy, as an operator selects it.
#[derive(Debug, Clone)]
pub struct ConnectedProxy {
    pub identity: Identity,
    pub remote: SocketAddr,
    /// Where its tap API is reached: its address as the control plane sees it, its tap port.
    pub tap_addr: Option<SocketAddr>,
    pub pod: String,
}

impl ConnectedProxy {
    /// How events and messages name it: its pod when known, else its identity and address —
    /// with its tap port, which tells apart proxies of one identity sharing an address (a VM's,
    /// a test's loopback).
    pub fn name(&self) -> String {
        match (&self.pod, self.tap_addr) {
            (pod, _) if !pod.is_empty() => format!("{}/{pod}", self.identity.namespace()),
            (_, Some(tap)) => format!("{} at {tap}", self.identity),
            _ => format!("{} at {}", self.identity, self.remote.ip()),
        }
    }
}

/// What a proxy reports its certificate under (the version is its issuer's fingerprint).
pub const CERTIFICATE_RESOURCE: &str = "certificate";
/// The mesh snapshot's resource name.
const MESH_RESOURCE: &str = "mesh";

#[derive(Debug, Default)]
struct WatchEntry {
    /// Streams of this resource on this connection (a proxy may re-watch before the old one ends).
    streams: usize,
    sent: String,
    applied: String,
    error: String,
}

/// Who is on the other end of a discovery stream.
#[derive(Debug, Clone)]
pub struct Caller {
    pub remote: SocketAddr,
    pub identity: Identity,
    pub cert_expiry: Option<SystemTime>,
}

impl ProxyRegistry {
    /// A stream for `resource` opened.
    pub fn opened(&self, caller: &Caller, resource: &str) {
        let mut proxies = self.proxies.lock();
        let entry = proxies.entry(caller.remote).or_insert_with(|| ProxyEntry {
            identity: caller.identity.clone(),
            cert_expiry: caller.cert_expiry,
            connected_at: SystemTime::now(),
            open_streams: 0,
            watches: BTreeMap::new(),
            cert_issuer: String::new(),
            tap_port: None,
            pod: String::new(),
        });
        entry.open_streams += 1;
        entry
            .watches
            .entry(resource.to_string())
            .or_default()
            .streams += 1;
    }

    /// A stream for `resource` closed; the proxy is forgotten with its last stream.
    pub fn closed(&self, caller: &Caller, resource: &str) {
        let mut proxies = self.proxies.lock();
        if let Some(entry) = proxies.get_mut(&caller.remote) {
            entry.open_streams = entry.open_streams.saturating_sub(1);
            if let Some(watch) = entry.watches.get_mut(resource) {
                watch.streams = watch.streams.saturating_sub(1);
                if watch.streams == 0 {
                    entry.watches.remove(resource);
                }
            }
            if entry.open_streams == 0 {
                proxies.remove(&caller.remote);
            }
        }
    }

    /// The proxy told where its tap API listens and which pod it runs in.
    pub fn described(&self, caller: &Caller, tap_port: Option<u16>, pod: &str) {
        if let Some(entry) = self.proxies.lock().get_mut(&caller.remote) {
            entry.tap_port = tap_port;
            // Bounded: a name, not a document.
            entry.pod = pod.chars().take(253).collect();
        }
    }

    /// The connected proxies `select` picks, by name.
    pub fn select(&self, select: impl Fn(&ConnectedProxy) -> bool) -> Vec<ConnectedProxy> {
        let mut selected: Vec<ConnectedProxy> = self
            .proxies
            .lock()
            .iter()
            .map(|(remote, entry)| ConnectedProxy {
                identity: entry.identity.clone(),
                remote: *remote,
                tap_addr: entry
                    .tap_port
                    .map(|port| SocketAddr::new(remote.ip(), port)),
                pod: entry.pod.clone(),
            })
            .filter(|proxy| select(proxy))
            .collect();
        selected.sort_by_key(ConnectedProxy::name);
        selected
    }

    /// `version` of `resource` was sent.
    pub fn sent(&self, caller: &Caller, resource: &str, version: &str) {
        if let Some(watch) = self
            .proxies
            .lock()
            .get_mut(&caller.remote)
            .and_then(|entry| entry.watches.get_mut(resource))
        {
            watch.sent = version.to_string();
        }
    }

    /// The proxy reported `version` of `resource` applied (`error` empty) or rejected.
    pub fn reported(&self, caller: &Caller, resource: &str, version: &str, error: &str) {
        let mut proxies = self.proxies.lock();
        let Some(entry) = proxies.get_mut(&caller.remote) else {
            return;
        };
        if resource == CERTIFICATE_RESOURCE {
            entry.cert_issuer = version.chars().take(64).collect();
            return;
        }
        if let Some(watch) = entry.watches.get_mut(resource) {
            if error.is_empty() {
                watch.applied = version.to_string();
                watch.error.clear();
            } else {
                watch.error = format!("version {version} rejected: {error}");
            }
        }
    }

    /// The connected proxies that have not applied mesh snapshot `version` (or a later one).
    pub fn mesh_laggards(&self, version: u64) -> Vec<String> {
        self.laggards(|entry| {
            entry
                .watches
                .get(MESH_RESOURCE)
                .and_then(|watch| watch.applied.parse::<u64>().ok())
                .is_some_and(|applied| applied >= version)
        })
    }

    /// The connected proxies whose certificate is not (as far as they reported) of `issuer`.
    pub fn issuer_laggards(&self, issuer: &str) -> Vec<String> {
        self.laggards(|entry| entry.cert_issuer == issuer)
    }

    fn laggards(&self, caught_up: impl Fn(&ProxyEntry) -> bool) -> Vec<String> {
        let mut lagging: Vec<String> = self
            .proxies
            .lock()
            .iter()
            .filter(|(_, entry)| !caught_up(entry))
            .map(|(remote, entry)| format!("{} at {remote}", entry.identity))
            .collect();
        lagging.sort();
        lagging
    }

    /// Every connected proxy, by identity then address.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let proxies = self.proxies.lock();
        let mut status: Vec<ProxyStatus> = proxies
            .iter()
            .map(|(remote, entry)| ProxyStatus {
                identity: entry.identity.to_string(),
                remote: remote.to_string(),
                cert_expiry: entry.cert_expiry.map(Into::into),
                connected_at: Some(entry.connected_at.into()),
                watches: entry
                    .watches
                    .iter()
                    .map(|(resource, watch)| WatchStatus {
                        resource: resource.clone(),
                        sent_version: watch.sent.clone(),
                        applied_version: watch.applied.clone(),
                        error: watch.error.clone(),
                    })
                    .collect(),
                revoked: String::new(),
                cert_issuer: entry.cert_issuer.clone(),
                pod: entry.pod.clone(),
                tap_addr: entry
                    .tap_port
                    .map(|port| SocketAddr::new(remote.ip(), port).to_string())
                    .unwrap_or_default(),
            })
            .collect();
        status.sort_by(|a, b| (&a.identity, &a.remote).cmp(&(&b.identity, &b.remote)));
        status
    }
}
