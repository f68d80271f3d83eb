//! What a proxy matches a request on, whichever route kind asked for it: an HTTPRoute match as
//! written, a GRPCRoute method as the HTTP/2 path that carries it. Precedence between matches is
//! decided here, on these values, before anything is put on the wire.

use crate::policy::{
    GrpcRouteMatch, HttpRouteMatch, NamedValueMatch, PathMatchType, Resource, ValueMatchType,
};

/// How a value is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A header or query parameter the request must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedMatch {
    pub name: String,
    pub value: TextMatch,
}

/// Every condition of one match; all must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMatch {
    pub path: Option<TextMatch>,
    pub method: Option<String>,
    pub headers: Vec<NamedMatch>,
    pub query_params: Vec<NamedMatch>,
}

/// Gateway API precedence of one match: exact paths before prefixes (longest first) before
/// regular expressions, then a method, then more header matches, then more query matches; ties
/// go to the older route (RFC 3339 timestamps of one format sort in time order), then to the
/// route's `namespace/name`, then to the rule's order.
pub type Precedence = (
    u8,
    std::cmp::Reverse<usize>,
    u8,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    String,
    String,
    usize,
    usize,
);

/// The precedence of match `index` of rule `rule` of `route` (`None`: a rule that matches
/// everything).
pub fn precedence(
    m: Option<&RequestMatch>,
    route: &Resource,
    rule: usize,
    index: usize,
) -> Precedence {
    let (rank, length) = match m.and_then(|m| m.path.as_ref()) {
        Some(TextMatch::Exact(path)) => (0, path.len()),
        Some(TextMatch::Prefix(path)) => (1, path.len()),
        Some(TextMatch::Regex(_)) => (2, 0),
        None => (1, 1),
    };
    let method = u8::from(m.is_none_or(|m| m.method.is_none()));
    let headers = m.map_or(0, |m| m.headers.len());
    let queries = m.map_or(0, |m| m.query_params.len());
    (
        rank,
        std::cmp::Reverse(length),
        method,
        std::cmp::Reverse(headers),
        std::cmp::Reverse(queries),
        route.meta.creation_timestamp.clone().unwrap_or_default(),
        format!("{}/{}", route.namespace(), route.meta.name),
        rule,
        index,
    )
}

impl From<&HttpRouteMatch> for RequestMatch {
    fn from(m: &HttpRouteMatch) -> Self {
        Self {
            path: m.path.as_ref().map(|p| {
                let value = p.value.clone();
                match p.kind {
                    Some(PathMatchType::Exact) => TextMatch::Exact(value),
                    Some(PathMatchType::RegularExpression) => TextMatch::Regex(value),
                    None | Some(PathMatchType::PathPrefix) => TextMatch::Prefix(value),
                }
            }),
            method: m.method.clone(),
            headers: named(&m.headers, true),
            query_params: named(&m.query_params, false),
        }
    }
}

/// gRPC methods are HTTP/2 paths `/<service>/<method>`.
impl From<&GrpcRouteMatch> for RequestMatch {
    fn from(m: &GrpcRouteMatch) -> Self {
        let path = m.method.as_ref().map(|method| {
            let service = method.service.as_deref();
            let name = method.method.as_deref();
            if method.kind == Some(ValueMatchType::RegularExpression) {
                return TextMatch::Regex(format!(
                    "^/(?:{})/(?:{})$",
                    service.unwrap_or("[^/]+"),
                    name.unwrap_or("[^/]+")
                ));
            }
            match (service, name) {
                (Some(service), Some(name)) => TextMatch::Exact(format!("/{service}/{name}")),
                (Some(service), None) => TextMatch::Prefix(format!("/{service}/")),
                (None, Some(name)) => TextMatch::Regex(format!("^/[^/]+/{}$", regex::escape(name))),
                (None, None) => TextMatch::Prefix("/".to_string()),
            }
        });
        Self {
            path,
            method: None,
            headers: named(&m.headers, true),
            query_params: Vec::new(),
        }
    }
}

/// Header names are case-insensitive (kept lowercase); query parameter names are not.
fn named(matches: &[NamedValueMatch], lowercase: bool) -> Vec<NamedMatch> {
    matches
        .iter()
        .map(|m| NamedMatch {
            name: if lowercase {
                m.name.to_ascii_lowercase()
            } else {
                m.name.clone()
            },
            value: if m.kind == Some(ValueMatchType::RegularExpression) {
                TextMatch::Regex(m.value.clone())
            } else {
                TextMatch::Exact(m.value.clone())
            },
        })
        .collect()
}
