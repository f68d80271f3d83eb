//! Destinations known without discovery, from the YAML file named by `WEFT_PROXY_STATIC_ROUTES`:
//!
//! ```yaml
//! routes:
//!   - authority: backend.demo:8080        # as the app addresses it: Host header, or ip:port
//!     address: 127.0.0.1:7143             # the peer proxy's inbound listener
//!     identity: spiffe://cluster.local/ns/demo/sa/backend
//!     opaque: false                       # true: forward bytes, no protocol detection
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use weft_certs::Identity;

/// Why the routes file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not parse or does not have the expected shape.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// One route has a bad field.
    #[error("{path}: routes[{index}].{field}: {reason}")]
    Field {
        /// The file.
        path: String,
        /// The route's position.
        index: usize,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Where to send traffic for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The authority as configured, with its port: also the metrics label.
    pub authority: Arc<str>,
    /// The peer proxy's inbound address.
    pub address: SocketAddr,
    /// The identity the peer must prove.
    pub identity: Identity,
    /// Skip protocol detection and forward bytes.
    pub opaque: bool,
}

/// The routes, by normalized authority.
#[derive(Debug, Clone, Default)]
pub struct StaticRoutes {
    by_authority: HashMap<String, Arc<Route>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    routes: Vec<RouteEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    authority: String,
    address: String,
    identity: String,
    #[serde(default)]
    opaque: bool,
}

// === impl StaticRoutes ===

impl StaticRoutes {
    /// Loads and validates the routes file at `path`.
    pub fn load(path: &Path) -> Result<Self, RoutesError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RoutesError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text)
    }

    /// Parses routes from YAML text; `path` only names the source in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, RoutesError> {
        let file: RoutesFile = serde_saphyr::from_str(text).map_err(|e| {
            // The parser's first line says where and what; the rest draws the input, and a
            // configuration error is one line.
            let message = e.to_string();
            let first = message.lines().next().unwrap_or(&message);
            RoutesError::Parse {
                path: path.to_string(),
                reason: first.trim_start_matches("error: ").trim().to_string(),
            }
        })?;
        let mut by_authority = HashMap::new();
        for (index, entry) in file.routes.into_iter().enumerate() {
            let field = |field: &'static str, reason: String| RoutesError::Field {
                path: path.to_string(),
                index,
                field,
                reason,
            };
            let authority = normalize_authority(&entry.authority).ok_or_else(|| {
                field(
                    "authority",
                    format!("{:?} is not host[:port]", entry.authority),
                )
            })?;
            let address = entry
                .address
                .parse()
                .map_err(|e| field("address", format!("{:?}: {e}", entry.address)))?;
            let identity = entry
                .identity
                .parse()
                .map_err(|e| field("identity", format!("{e}")))?;
            if by_authority.contains_key(&authority) {
                return Err(field("authority", format!("{authority} is routed twice")));
            }
            let route = Route {
                authority: authority.clone().into(),
                address,
                identity,
                opaque: entry.opaque,
            };
            by_authority.insert(authority, Arc::new(route));
        }
        Ok(Self { by_authority })
    }

    /// The route for an authority as the app wrote it (a Host header, an h2 :authority, or the
    /// original destination's ip:port).
    pub fn get(&self, authority: &str) -> Option<&Arc<Route>> {
        self.by_authority.get(&normalize_authority(authority)?)
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_authority.values()
    }
}

/// Lowercases the host and adds the default HTTP port, so `Backend` and `backend:80` match.
pub fn normalize_authority(authority: &str) -> Option<String> {
    let authority: http::uri::Authority = authority.trim().parse().ok()?;
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let port = authority.port_u16().unwrap_or(80);
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"
routes:
  - authority: Backend.Demo:8080
    address: 127.0.0.1:7143
    identity: spiffe://cluster.local/ns/demo/sa/backend
  - authority: db
    address: 127.0.0.1:7144
    identity: spiffe://cluster.local/ns/demo/sa/db
    opaque: true
"#;

    #[test]
    fn routes_match_by_normalized_authority() {
        let routes = StaticRoutes::parse("routes.yaml", ROUTES).unwrap();
        let backend = routes.get("backend.demo:8080").unwrap();
        assert_eq!(backend.address.port(), 7143);
        assert_eq!(&*backend.authority, "backend.demo:8080");
        assert!(routes.get("backend.demo").is_none());
        assert!(routes.get("db:80").unwrap().opaque);
        assert!(routes.get("DB").is_some());
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                "routes: [{authority: a, address: nope, identity: spiffe://cluster.local/ns/a/sa/b}]",
                "routes[0].address",
            ),
            (
                "routes: [{authority: a, address: 127.0.0.1:1, identity: spiffe://x}]",
                "routes[0].identity",
            ),
            (
                "routes: [{authority: 'a b', address: 127.0.0.1:1, identity: spiffe://cluster.local/ns/a/sa/b}]",
                "routes[0].authority",
            ),
            (
                "routes: [{authority: a, address: 127.0.0.1:1, identity: spiffe://cluster.local/ns/a/sa/b, colour: red}]",
                "colour",
            ),
            ("routes: [", "routes.yaml"),
        ];
        for (yaml, expected) in cases {
            let err = StaticRoutes::parse("routes.yaml", yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }
}
