//! `weft-proxy init` against each firewall backend, in network namespaces of the test's own:
//! the rules it installs, that a second run changes nothing, that `--cleanup` gives back the
//! namespace's ruleset exactly as it was, and that the rules really redirect.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use weft_tests::apps::start_echo_app;
use weft_tests::client::MeshClient;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};
use weft_tests::netns::NetNs;
use weft_tests::process::bin;

use crate::{CLIENT_ID, SERVER_ID};

/// The proxy's user, exempt from the rules.
const PROXY_UID: u32 = 7102;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    IptablesLegacy,
    IptablesNft,
    Nft,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::IptablesLegacy => "iptables-legacy",
            Self::IptablesNft => "iptables-nft",
            Self::Nft => "nft",
        }
    }

    /// Rules of somebody else's, which must survive Weft's install and cleanup untouched.
    fn populate(self, ns: &NetNs) {
        match self {
            Self::Nft => {
                ok(ns, &["nft", "add", "table", "inet", "other"]);
                ok(
                    ns,
                    &[
                        "nft",
                        "add chain inet other out { type nat hook output priority 0; }",
                    ],
                );
                ok(
                    ns,
                    &[
                        "nft", "add", "rule", "inet", "other", "out", "tcp", "dport", "9999",
                        "return",
                    ],
                );
            }
            Self::IptablesLegacy | Self::IptablesNft => {
                let suffix = if self == Self::IptablesLegacy {
                    "legacy"
                } else {
                    "nft"
                };
                for tool in ["iptables", "ip6tables"] {
                    let tool = format!("{tool}-{suffix}");
                    ok(
                        ns,
                        &[
                            &tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999",
                            "-j", "RETURN",
                        ],
                    );
                    ok(
                        ns,
                        &[
                            &tool, "-A", "INPUT", "-p", "tcp", "--dport", "9998", "-j", "ACCEPT",
                        ],
                    );
                }
            }
        }
    }

    /// The whole ruleset as this backend's own tool prints it, comments (dates) left out.
    fn ruleset(self, ns: &NetNs) -> String {
        let dumps: Vec<String> = match self {
            Self::Nft => vec![ok(ns, &["nft", "list", "ruleset"])],
            Self::IptablesLegacy | Self::IptablesNft => {
                let suffix = if self == Self::IptablesLegacy {
                    "legacy"
                } else {
                    "nft"
                };
                ["iptables", "ip6tables"]
                    .iter()
                    .map(|tool| ok(ns, &[&format!("{tool}-{suffix}-save")]))
                    .collect()
            }
        };
        dumps
            .concat()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn run(ns: &NetNs, args: &[&str]) -> Output {
    let mut command = ns.command(args[0]);
    command.args(&args[1..]);
    command.output().unwrap()
}

/// Runs a command in the namespace and returns its standard output; it must succeed.
fn ok(ns: &NetNs, args: &[&str]) -> String {
    let output = run(ns, args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network of the namespace's own (192.0.2.0/24 and 2001:db8::/64 on a veth pair), so that
/// an address on it is routable but not local: the app's connections there leave through it.
fn add_far_network(ns: &NetNs) {
    ok(
        ns,
        &[
            "ip", "link", "add", "weft0", "type", "veth", "peer", "name", "weft1",
        ],
    );
    ok(ns, &["ip", "addr", "add", "192.0.2.1/24", "dev", "weft0"]);
    ok(
        ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            "weft0",
            "nodad",
        ],
    );
    for link in ["weft0", "weft1"] {
        ok(ns, &["ip", "link", "set", link, "up"]);
    }
}

fn init(ns: &NetNs, extra: &[&str]) -> Output {
    let proxy = bin("weft-proxy");
    let mut args = vec![proxy.to_str().unwrap(), "init", "--ipv6", "on"];
    args.extend_from_slice(extra);
    run(ns, &args)
}

const SETTINGS: [&str; 8] = [
    "--skip-inbound-ports",
    "22,8000-8100",
    "--skip-outbound-ports",
    "25",
    "--skip-outbound-cidrs",
    "192.0.2.0/24,2001:db8::/32",
    "--control-plane-addr",
    "127.0.0.1:7200",
];

/// Installs twice, then cleans up, checking the ruleset at each step. `named` passes the
/// backend by flag; otherwise detection must find it from the rules already there.
fn install_twice_then_clean_up(backend: Backend, named: bool) {
    weft_tests::init();
    let ns = NetNs::create();
    backend.populate(&ns);
    let original = backend.ruleset(&ns);
    let mut settings = SETTINGS.to_vec();
    if named {
        settings.extend(["--backend", backend.name()]);
    }

    let dry = init(&ns, &[settings.as_slice(), &["--dry-run"]].concat());
    assert!(dry.status.success(), "{dry:?}");
    let printed = String::from_utf8_lossy(&dry.stdout);
    assert!(
        printed.contains("7140") && printed.contains("8000"),
        "{printed}"
    );
    assert_eq!(
        backend.ruleset(&ns),
        original,
        "--dry-run changed the ruleset"
    );

    let first = init(&ns, &settings);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let installed = backend.ruleset(&ns);
    let expected: &[&str] = match backend {
        Backend::Nft => &[
            "table inet weft",
            "meta skuid 7102 return",
            "tcp dport { 22, 7143, 7190-7191, 8000-8100 } return",
            "ip daddr 192.0.2.0/24 return",
            "ip6 daddr 2001:db8::/32 return",
            "ip daddr 127.0.0.1 tcp dport 7200 return",
            "redirect to :7140",
            "redirect to :7143",
        ],
        _ => &[
            "-A OUTPUT -p tcp -j WEFT_OUTBOUND",
            "-A PREROUTING -p tcp -j WEFT_INBOUND",
            "-A WEFT_OUTBOUND -m owner --uid-owner 7102 -j RETURN",
            "-A WEFT_OUTBOUND -o lo -j RETURN",
            "-A WEFT_INBOUND -p tcp -m multiport --dports 22,7143,7190,7191,8000:8100 -j RETURN",
            "-A WEFT_OUTBOUND -d 192.0.2.0/24 -j RETURN",
            "-A WEFT_OUTBOUND -d 2001:db8::/32 -j RETURN",
            "-A WEFT_OUTBOUND -p tcp -m multiport --dports 25 -j RETURN",
            "--to-ports 7140",
            "--to-ports 7143",
        ],
    };
    for rule in expected {
        assert!(installed.contains(rule), "{rule} missing from\n{installed}");
    }
    assert!(
        installed.contains("9999"),
        "somebody else's rule is gone:\n{installed}"
    );

    let second = init(&ns, &settings);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        backend.ruleset(&ns),
        installed,
        "a second run changed the rules"
    );

    let cleanup = init(&ns, &["--cleanup"]);
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert_eq!(
        backend.ruleset(&ns),
        original,
        "cleanup did not restore the ruleset"
    );
    let again = init(&ns, &["--cleanup"]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(backend.ruleset(&ns), original);
}

#[test]
fn iptables_legacy_found_by_detection_installs_once_and_cleans_up_exactly() {
    install_twice_then_clean_up(Backend::IptablesLegacy, false);
}

#[test]
fn iptables_nft_found_by_detection_installs_once_and_cleans_up_exactly() {
    install_twice_then_clean_up(Backend::IptablesNft, false);
}

#[test]
fn native_nftables_installs_once_and_cleans_up_exactly() {
    install_twice_then_clean_up(Backend::Nft, true);
}

#[test]
fn bad_values_exit_64_naming_them_and_change_nothing() {
    weft_tests::init();
    let ns = NetNs::create();
    let before = Backend::IptablesNft.ruleset(&ns);
    for (args, named) in [
        (
            &["--skip-outbound-ports", "80,http"][..],
            "--skip-outbound-ports",
        ),
        (&["--backend", "pf"][..], "--backend"),
        (&["--outbound-port", "70000"][..], "--outbound-port"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let output = init(&ns, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
    assert_eq!(Backend::IptablesNft.ruleset(&ns), before);
}

/// The installed rules send an app's connection to a non-local address to the outbound port,
/// with its original destination readable there, and leave loopback alone.
#[test]
fn installed_rules_redirect_the_apps_connections_and_leave_loopback_alone() {
    weft_tests::init();
    let ns = NetNs::create();
    add_far_network(&ns);
    let outbound = weft_tests::free_port();
    let output = init(&ns, &["--outbound-port", &outbound.to_string()]);
    assert!(output.status.success(), "{output:?}");
    ns.run(move || async move {
        let proxy = TcpListener::bind(("127.0.0.1", outbound)).await.unwrap();
        let local_app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far: SocketAddr = "192.0.2.77:8080".parse().unwrap();
        let _app = TcpStream::connect(far).await.unwrap();
        let (accepted, _) = tokio::time::timeout(Duration::from_secs(10), proxy.accept())
            .await
            .expect("the redirected connection reaches the outbound port")
            .unwrap();
        let orig = original_dst(&accepted);
        assert_eq!(orig, Some(far));
        // Loopback is the app's own business: it reaches its listener directly.
        let _local = TcpStream::connect(local_app.local_addr().unwrap())
            .await
            .unwrap();
        let (direct, _) = local_app.accept().await.unwrap();
        assert_eq!(original_dst(&direct), None);
    });
}

/// The app calls addresses that are not the proxy's, on IPv4 and IPv6, as if there were no
/// mesh; the rules `weft-proxy init` installed take its connections to the client proxy, whose
/// outbound listens on both stacks, and the request arrives through the mesh.
#[test]
fn an_app_behind_init_rules_reaches_the_mesh_over_ipv4_and_ipv6() {
    weft_tests::init();
    let ns = NetNs::create();
    add_far_network(&ns);
    let proxy_bin = bin("weft-proxy");
    ns.run(move || async move {
        let cp = ControlPlane::start("24h").await;
        let app = start_echo_app().await;
        let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(app.port)).await;
        let client = Proxy::start(
            &cp,
            ProxySpec::new(CLIENT_ID)
                .route("192.0.2.77:8080", &server)
                .route("[2001:db8::77]:8080", &server)
                .uid(PROXY_UID),
        )
        .await;
        // Run where this thread is: inside the namespace.
        let output = std::process::Command::new(&proxy_bin)
            .args(["init", "--ipv6", "on", "--outbound-port"])
            .arg(client.outbound.port().to_string())
            .args(["--proxy-uid", &PROXY_UID.to_string()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        for (far, authority) in [
            ("192.0.2.77:8080", "192.0.2.77:8080"),
            ("[2001:db8::77]:8080", "[2001:db8::77]:8080"),
        ] {
            let response = MeshClient::http1(far.parse().unwrap())
                .send("GET", authority, "/as-if-no-mesh", Bytes::new())
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{far}");
            assert_eq!(response.headers()["x-seen-client-id"], CLIENT_ID, "{far}");
        }
        assert_eq!(app.request_count(), 2);
    });
}

/// Where a REDIRECTed IPv4 connection was headed; `None` when it was not redirected.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let addr = getsockopt(stream, sockopt::OriginalDst).ok()?;
    let orig = SocketAddr::from((
        std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ));
    (Some(orig) != stream.local_addr().ok()).then_some(orig)
}
