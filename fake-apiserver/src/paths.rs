//! What a request path names: a resource collection or object, where, and which subresource.

/// `/api/v1/...` or `/apis/<group>/<version>/...`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `group/version/plural`, with an empty group for the core API.
    pub resource: String,
    /// Empty for cluster-scoped objects and for lists across namespaces.
    pub namespace: String,
    /// Empty for the collection.
    pub name: String,
    /// `status`, or empty.
    pub subresource: String,
}

impl Target {
    /// The resource as kubectl names it: `httproutes.gateway.networking.k8s.io`.
    pub fn plural_and_group(&self) -> String {
        let mut parts = self.resource.splitn(3, '/');
        let group = parts.next().unwrap_or_default();
        let plural = parts.nth(1).unwrap_or_default();
        format!("{plural}.{group}")
    }

    pub fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            // The Namespace objects themselves.
            ["namespaces"] | ["namespaces", _] | ["namespaces", _, "status"]
                if group.is_empty() =>
            {
                ("", rest)
            }
            ["namespaces", namespace, rest @ ..] => (*namespace, rest),
            rest => ("", rest),
        };
        let (plural, name, subresource) = match rest {
            [plural] => (*plural, "", ""),
            [plural, name] => (*plural, *name, ""),
            [plural, name, subresource] => (*plural, *name, *subresource),
            _ => return None,
        };
        Some(Self {
            resource: format!("{group}/{version}/{plural}"),
            namespace: namespace.to_string(),
            name: name.to_string(),
            subresource: subresource.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_what_kube_clients_mean() {
        let t = Target::parse("/api/v1/namespaces/shop/pods/web-1").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.namespace.as_str(), t.name.as_str()),
            ("/v1/pods", "shop", "web-1")
        );
        let t = Target::parse("/api/v1/namespaces/shop").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.namespace.as_str(), t.name.as_str()),
            ("/v1/namespaces", "", "shop")
        );
        let t =
            Target::parse("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r/status")
                .unwrap();
        assert_eq!(t.resource, "gateway.networking.k8s.io/v1/httproutes");
        assert_eq!(t.subresource, "status");
        let t = Target::parse("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!((t.namespace.as_str(), t.name.as_str()), ("", ""));
        assert!(Target::parse("/healthz").is_none());
    }
}
