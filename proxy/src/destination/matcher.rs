//! Request matching, compiled once per snapshot: path (exact, prefix by segment, regex),
//! method, headers and query parameters, all of which must match.

use http::{HeaderName, Method, Request};
use regex::Regex;

/// A string test.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    /// Anchored: the whole value must match.
    Regex(Regex),
}

/// How a path must look.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// By path segment: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    Regex(Regex),
}

/// Everything one match requires of a request.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

impl RequestMatch {
    /// Matches every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// True when `request` satisfies every part.
    pub fn matches<B>(&self, request: &Request<B>) -> bool {
        if let Some(method) = &self.method
            && request.method() != method
        {
            return false;
        }
        if let Some(path) = &self.path
            && !path.matches(request.uri().path())
        {
            return false;
        }
        let headers_match = self.headers.iter().all(|(name, value)| {
            request
                .headers()
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| value.matches(v)))
        });
        if !headers_match {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        let query = request.uri().query().unwrap_or_default();
        self.query.iter().all(|(name, value)| {
            query.split('&').any(|pair| {
                let (key, val) = pair.split_once('=').unwrap_or((pair, ""));
                key == name && value.matches(val)
            })
        })
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                prefix.is_empty()
                    || (path.starts_with(prefix)
                        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
            }
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(exact) => value == exact,
            ValueMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

// Regexes compare by their source, which is what a snapshot carries.
impl PartialEq for ValueMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) | (Self::Prefix(a), Self::Prefix(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PartialEq for RequestMatch {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.method == other.method
            && self.headers == other.headers
            && self.query == other.query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::get(uri)
            .header("x-canary", "true")
            .body(())
            .unwrap()
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let m = RequestMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            ..RequestMatch::any()
        };
        assert!(m.matches(&request("/api")));
        assert!(m.matches(&request("/api/orders")));
        assert!(!m.matches(&request("/apix")));
        let root = RequestMatch {
            path: Some(PathMatch::Prefix("/".into())),
            ..RequestMatch::any()
        };
        assert!(root.matches(&request("/anything")));
    }

    #[test]
    fn every_part_must_match() {
        let m = RequestMatch {
            path: Some(PathMatch::Regex(Regex::new("^/orders/[0-9]+$").unwrap())),
            method: Some(Method::GET),
            headers: vec![(
                HeaderName::from_static("x-canary"),
                ValueMatch::Exact("true".into()),
            )],
            query: vec![("v".into(), ValueMatch::Exact("2".into()))],
        };
        assert!(m.matches(&request("/orders/12?v=2")));
        assert!(!m.matches(&request("/orders/12?v=3")));
        assert!(!m.matches(&request("/orders/x?v=2")));
        let post = Request::post("/orders/12?v=2")
            .header("x-canary", "true")
            .body(())
            .unwrap();
        assert!(!m.matches(&post));
    }
}
