//! Revocation that evicts: a revoked join token ends every certificate descended from it, a
//! revoked identity gets no certificate by any proof, and a token may be good for N uses only.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use weft_api::client::ControlPlaneTarget;
use weft_api::identity::CertifyRequest;
use weft_api::identity::identity_client::IdentityClient;
use weft_certs::{ALPN_H2, CertStore, Credential, Identity, LeafKey};
use weft_tests::eventually;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// A workload that certifies by hand: by token first, then by its current certificate.
struct Workload {
    target: ControlPlaneTarget,
    certs: Arc<CertStore>,
}

impl Workload {
    fn new(cp: &ControlPlane) -> Self {
        weft_tests::init();
        let certs = CertStore::new();
        let tls = weft_certs::client_config(&cp.anchors(), certs.clone(), &[ALPN_H2]).unwrap();
        Self {
            target: ControlPlaneTarget {
                addr: cp.proxy_api.to_string(),
                server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
                tls: Arc::new(tls),
            },
            certs,
        }
    }

    /// Certifies with `token` (empty: renew with the certificate held), keeping what it gets.
    async fn certify(&self, token: &str) -> Result<(), tonic::Status> {
        let identity: Identity = WEB.parse().unwrap();
        let key = LeafKey::generate().unwrap();
        let request = CertifyRequest {
            identity: WEB.to_string(),
            csr: key.csr(&identity).unwrap().to_vec(),
            token: token.to_string(),
        };
        let chain = IdentityClient::new(self.target.channel().await.unwrap())
            .certify(request)
            .await?
            .into_inner()
            .chain;
        let chain: Vec<CertificateDer<'static>> =
            chain.into_iter().map(CertificateDer::from).collect();
        let not_after = weft_certs::not_after_of(&chain[0]).unwrap();
        self.certs.set(Credential {
            key: key.certify(chain).unwrap(),
            identity,
            valid_from: SystemTime::now(),
            not_after,
        });
        Ok(())
    }
}

fn weftctl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let (status, stdout, stderr) = cp.weftctl(args);
    assert!(status.success(), "weftctl {args:?}: {stderr}");
    stdout
}

/// The ids in `weftctl token list`.
fn token_ids(cp: &ControlPlane) -> Vec<String> {
    weftctl_ok(cp, &["token", "list"])
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Creates a token for WEB with `extra` flags; returns (secret, id).
fn token(cp: &ControlPlane, extra: &[&str]) -> (String, String) {
    let before = token_ids(cp);
    let mut args = vec!["token", "create", "--identity", WEB];
    args.extend_from_slice(extra);
    let secret = weftctl_ok(cp, &args).trim().to_string();
    let id = token_ids(cp)
        .into_iter()
        .find(|id| !before.contains(id))
        .expect("the new token is listed");
    (secret, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_refuses_every_renewal_descended_from_it() {
    let cp = ControlPlane::start("1h").await;
    let (first, first_id) = token(&cp, &[]);
    let (second, _) = token(&cp, &[]);

    let evicted = Workload::new(&cp);
    evicted.certify(&first).await.unwrap();
    evicted.certify("").await.unwrap();
    evicted.certify("").await.unwrap();
    let bystander = Workload::new(&cp);
    bystander.certify(&second).await.unwrap();

    weftctl_ok(&cp, &["token", "revoke", &first_id]);
    let refused = evicted.certify("").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("join token {first_id} was revoked")),
        "{}",
        refused.message()
    );
    // Nor does the token itself, presented afresh.
    let refused = Workload::new(&cp).certify(&first).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // The same identity from another token's lineage renews as before.
    bystander.certify("").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_gets_no_certificate_by_token_or_renewal() {
    let cp = ControlPlane::start("1h").await;
    let proxy = Proxy::start(&cp, ProxySpec::new(WEB)).await;
    let (secret, _) = token(&cp, &[]);
    let workload = Workload::new(&cp);
    workload.certify(&secret).await.unwrap();

    weftctl_ok(&cp, &["identity", "revoke", WEB]);
    for token in [secret.as_str(), ""] {
        let refused = workload.certify(token).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains(&format!("identity {WEB} is revoked")),
            "{}",
            refused.message()
        );
    }
    let list = weftctl_ok(&cp, &["identity", "list"]);
    assert!(list.lines().any(|line| line.starts_with(WEB)), "{list}");
    let status = eventually(
        "proxy-status to show the revoked proxy",
        Duration::from_secs(20),
        || {
            let status = weftctl_ok(&cp, &["proxy-status"]);
            async move {
                status
                    .lines()
                    .any(|l| l.starts_with(WEB) && l.contains("REVOKED"))
                    .then_some(status)
            }
        },
    )
    .await;
    assert!(status.contains(&proxy.identity));

    weftctl_ok(&cp, &["identity", "unrevoke", WEB]);
    workload.certify("").await.unwrap();
    let list = weftctl_ok(&cp, &["identity", "list"]);
    assert!(!list.contains(WEB), "{list}");

    // A revocation with an end lapses by itself.
    let until =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3)).to_string();
    weftctl_ok(&cp, &["identity", "revoke", WEB, "--until", &until]);
    assert!(workload.certify("").await.is_err());
    eventually(
        "the revocation to lapse",
        Duration::from_secs(15),
        || async { workload.certify("").await.ok() },
    )
    .await;

    let (status, _, stderr) = cp.weftctl(&["identity", "revoke", "spiffe://nope"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("identity"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_uses_proves_its_identity_that_many_times() {
    let cp = ControlPlane::start("1h").await;
    let (secret, id) = token(&cp, &["--uses", "2"]);
    for _ in 0..2 {
        Workload::new(&cp).certify(&secret).await.unwrap();
    }
    let refused = Workload::new(&cp).certify(&secret).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("used 2 of 2 times"),
        "{}",
        refused.message()
    );
    let list = weftctl_ok(&cp, &["token", "list"]);
    let line = list.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(line.contains(" 2/2 "), "{list}");
}
