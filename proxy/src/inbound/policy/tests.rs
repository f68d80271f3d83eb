use super::*;
use crate::destination::{IdentityPattern, PortSettings, RequestMatch};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const OPS: &str = "spiffe://cluster.local/ns/ops/sa/admin";

fn client(identity: Option<&str>, addr: [u8; 4]) -> Client {
    Client {
        identity: identity.map(|id| id.parse().unwrap()),
        addr: IpAddr::from(addr),
    }
}

fn policy(pushed: Option<InboundPolicy>) -> (Policy, watch::Sender<Option<Arc<InboundPolicy>>>) {
    let (tx, rx) = watch::channel(pushed.map(Arc::new));
    let ports = InboundPorts {
        opaque_ports: [5432].into(),
        ..InboundPorts::default()
    };
    let in_cluster: InCluster = Arc::new(|ip: IpAddr| ip.to_string().starts_with("10."));
    (Policy::new(ports, Some(rx), in_cluster), tx)
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

fn api_only_for_web() -> Authorization {
    Authorization {
        name: "shop/web-api".to_string(),
        ports: [8080].into(),
        http: vec![RequestMatch {
            path: Some(crate::destination::PathMatch::Prefix("/api".to_string())),
            ..RequestMatch::any()
        }],
        sources: vec![Source {
            identities: vec![WEB.parse().unwrap()],
            ..Source::default()
        }],
    }
}

#[tokio::test(start_paused = true)]
async fn a_port_is_opaque_by_configuration_or_by_pushed_policy() {
    let (policy, tx) = policy(None);
    assert!(policy.port(None, 5432).opaque);
    // No answer yet: not opaque, after a bounded wait.
    assert!(policy.current().await.is_none());
    assert!(!policy.port(None, 6379).opaque);
    tx.send_replace(Some(Arc::new(InboundPolicy {
        opaque_ports: [6379].into(),
        ..InboundPolicy::default()
    })));
    let pushed = policy.current().await;
    assert!(policy.port(pushed.as_deref(), 6379).opaque);
    assert!(!policy.port(pushed.as_deref(), 8080).opaque);
}

#[test]
fn without_policy_the_configured_default_decides_and_implies_the_mode() {
    let (policy, _tx) = policy(None);
    let view = policy.port(None, 8080);
    assert_eq!(policy.mode(None, 8080), Mode::Strict);
    assert_eq!(view.default, DefaultAuthorization::AllAuthenticated);
    let plain = policy.authorize::<()>(None, 8080, &client(None, [10, 0, 0, 1]), None);
    assert!(!plain.allowed);
    assert_eq!(plain.policy, "default:all-authenticated");
    let meshed = policy.authorize::<()>(None, 8080, &client(Some(WEB), [10, 0, 0, 1]), None);
    assert!(meshed.allowed);
}

#[test]
fn the_port_setting_beats_the_workload_default() {
    let (policy, _tx) = policy(None);
    let pushed = InboundPolicy {
        defaults: PortSettings {
            authorization: Some(DefaultAuthorization::Deny),
            ..PortSettings::default()
        },
        ports: [(
            8081,
            PortSettings {
                authorization: Some(DefaultAuthorization::AllUnauthenticated),
                ..PortSettings::default()
            },
        )]
        .into(),
        ..InboundPolicy::default()
    };
    let anyone = client(None, [192, 0, 2, 1]);
    assert_eq!(policy.mode(Some(&pushed), 8081), Mode::Permissive);
    assert_eq!(policy.mode(Some(&pushed), 8080), Mode::Strict);
    assert!(
        policy
            .authorize::<()>(Some(&pushed), 8081, &anyone, None)
            .allowed
    );
    let denied =
        policy.authorize::<()>(Some(&pushed), 8080, &client(Some(WEB), [10, 0, 0, 1]), None);
    assert!(!denied.allowed);
    assert_eq!(denied.policy, "default:deny");
}

#[test]
fn cluster_authenticated_needs_an_identity_from_the_cluster_networks() {
    let (policy, _tx) = policy(None);
    let pushed = InboundPolicy {
        defaults: PortSettings {
            authorization: Some(DefaultAuthorization::ClusterAuthenticated),
            ..PortSettings::default()
        },
        ..InboundPolicy::default()
    };
    let p = Some(&pushed);
    assert!(
        policy
            .authorize::<()>(p, 80, &client(Some(WEB), [10, 1, 2, 3]), None)
            .allowed
    );
    assert!(
        !policy
            .authorize::<()>(p, 80, &client(Some(WEB), [192, 0, 2, 1]), None)
            .allowed
    );
    assert!(
        !policy
            .authorize::<()>(p, 80, &client(None, [10, 1, 2, 3]), None)
            .allowed
    );
}

#[test]
fn once_a_policy_covers_a_port_only_what_it_allows_passes() {
    let (policy, _tx) = policy(None);
    let pushed = InboundPolicy {
        defaults: PortSettings {
            authorization: Some(DefaultAuthorization::AllUnauthenticated),
            ..PortSettings::default()
        },
        authorizations: vec![api_only_for_web()],
        ..InboundPolicy::default()
    };
    let p = Some(&pushed);
    let web = client(Some(WEB), [10, 0, 0, 1]);
    let allowed = policy.authorize(p, 8080, &web, Some(&get("/api/x")));
    assert_eq!((allowed.allowed, allowed.policy), (true, "shop/web-api"));
    let admin = policy.authorize(p, 8080, &web, Some(&get("/admin")));
    assert!(!admin.allowed);
    assert!(admin.reason.unwrap().contains(WEB));
    // An HTTP-only policy does not cover a TCP connection.
    assert!(!policy.authorize::<()>(p, 8080, &web, None).allowed);
    let cart = client(Some(CART), [10, 0, 0, 2]);
    assert!(
        !policy
            .authorize(p, 8080, &cart, Some(&get("/api/x")))
            .allowed
    );
    // Another port: the default (here, anyone).
    assert!(
        policy
            .authorize(p, 9090, &cart, Some(&get("/admin")))
            .allowed
    );
}

#[test]
fn audit_lets_through_what_would_have_been_denied_and_says_so() {
    let (policy, _tx) = policy(None);
    let pushed = InboundPolicy {
        defaults: PortSettings {
            authorization: Some(DefaultAuthorization::Audit),
            ..PortSettings::default()
        },
        authorizations: vec![api_only_for_web()],
        ..InboundPolicy::default()
    };
    let cart = client(Some(CART), [10, 0, 0, 2]);
    let decision = policy.authorize(Some(&pushed), 8080, &cart, Some(&get("/api/x")));
    assert!(decision.allowed);
    assert_eq!(decision.label, "audit");
    let web = client(Some(WEB), [10, 0, 0, 1]);
    assert_eq!(
        policy
            .authorize(Some(&pushed), 8080, &web, Some(&get("/api/x")))
            .label,
        "allow"
    );
}

#[test]
fn sources_match_namespaces_wildcards_unauthenticated_clients_and_cidrs() {
    let (policy, _tx) = policy(None);
    let source_policy = |source: Source| InboundPolicy {
        authorizations: vec![Authorization {
            name: "ops/x".to_string(),
            ports: BTreeSet::new(),
            http: Vec::new(),
            sources: vec![source],
        }],
        ..InboundPolicy::default()
    };
    let ops = client(Some(OPS), [10, 0, 0, 3]);
    let web = client(Some(WEB), [10, 0, 0, 1]);
    let anonymous = client(None, [192, 0, 2, 7]);
    let wildcard = source_policy(Source {
        identities: vec!["spiffe://cluster.local/ns/ops/sa/*".parse().unwrap()],
        ..Source::default()
    });
    assert!(
        policy
            .authorize::<()>(Some(&wildcard), 1, &ops, None)
            .allowed
    );
    assert!(
        !policy
            .authorize::<()>(Some(&wildcard), 1, &web, None)
            .allowed
    );
    let namespace = source_policy(Source {
        namespaces: vec!["shop".to_string()],
        ..Source::default()
    });
    assert!(
        policy
            .authorize::<()>(Some(&namespace), 1, &web, None)
            .allowed
    );
    assert!(
        !policy
            .authorize::<()>(Some(&namespace), 1, &anonymous, None)
            .allowed
    );
    let unauthenticated = source_policy(Source {
        unauthenticated: true,
        ..Source::default()
    });
    assert!(
        policy
            .authorize::<()>(Some(&unauthenticated), 1, &anonymous, None)
            .allowed
    );
    let cidr = source_policy(Source {
        cidrs: vec!["192.0.2.0/24".parse().unwrap()],
        ..Source::default()
    });
    assert!(
        policy
            .authorize::<()>(Some(&cidr), 1, &anonymous, None)
            .allowed
    );
    assert!(!policy.authorize::<()>(Some(&cidr), 1, &web, None).allowed);
    assert!(matches!(
        "spiffe://cluster.local/ns/ops/sa/*".parse::<IdentityPattern>(),
        Ok(IdentityPattern::Namespace { .. })
    ));
    assert!(
        "spiffe://cluster.local/ns/*/sa/x"
            .parse::<IdentityPattern>()
            .is_err()
    );
}

#[test]
fn a_policy_that_takes_unauthenticated_clients_opens_its_port_to_plaintext() {
    let (policy, _tx) = policy(None);
    let healthz = |source: Source| InboundPolicy {
        defaults: PortSettings {
            authorization: Some(DefaultAuthorization::Deny),
            ..PortSettings::default()
        },
        authorizations: vec![Authorization {
            name: "shop/probes".to_string(),
            ports: [8080].into(),
            http: vec![RequestMatch {
                path: Some(crate::destination::PathMatch::Exact("/healthz".to_string())),
                ..RequestMatch::any()
            }],
            sources: vec![source],
        }],
        ..InboundPolicy::default()
    };
    let probes = healthz(Source {
        unauthenticated: true,
        ..Source::default()
    });
    assert_eq!(policy.mode(Some(&probes), 8080), Mode::Permissive);
    assert_eq!(policy.mode(Some(&probes), 9090), Mode::Strict);
    let kubelet = client(None, [10, 0, 0, 1]);
    assert!(
        policy
            .authorize(Some(&probes), 8080, &kubelet, Some(&get("/healthz")))
            .allowed
    );
    assert!(
        !policy
            .authorize(Some(&probes), 8080, &kubelet, Some(&get("/admin")))
            .allowed
    );
    // Identities only: the port stays strict.
    let meshed = healthz(Source {
        identities: vec![WEB.parse().unwrap()],
        ..Source::default()
    });
    assert_eq!(policy.mode(Some(&meshed), 8080), Mode::Strict);
    // An explicit mode wins.
    let mut strict = probes.clone();
    strict.defaults.mode = Some(Mode::Strict);
    assert_eq!(policy.mode(Some(&strict), 8080), Mode::Strict);
}
