use std::time::{Duration, SystemTime};

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    lineage: Lineage,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.redb")).unwrap();
    let lineage = Lineage::new(store.clone()).unwrap();
    Fixture {
        _dir: dir,
        store,
        lineage,
    }
}

fn web() -> Identity {
    WEB.parse().unwrap()
}

impl Fixture {
    fn token(&self, max_uses: Option<u32>) -> join_tokens::NewJoinToken {
        join_tokens::create(
            &self.store,
            &web(),
            Duration::from_secs(3600),
            max_uses,
            SystemTime::now(),
        )
        .unwrap()
    }

    /// Checks and records a certificate `serial` proven by `proof`, as Certify does.
    async fn issue(&self, proof: Proof, serial: &str) -> Result<(), LineageError> {
        let now = SystemTime::now();
        let identity = self.lineage.check(&proof, now).await?;
        let issue = Issue {
            identity,
            proof,
            serial: serial.to_string(),
            not_after: now + Duration::from_secs(60),
        };
        self.lineage.record(issue, now).await
    }
}

fn renewal(serial: &str) -> Proof {
    Proof::Certificate {
        serial: serial.to_string(),
        identity: web(),
    }
}

#[tokio::test]
async fn a_revoked_token_ends_its_whole_lineage_and_no_other() {
    let f = fixture();
    let (first, second) = (f.token(None), f.token(None));
    f.issue(Proof::Token(first.token.clone()), "a1")
        .await
        .unwrap();
    f.issue(renewal("a1"), "a2").await.unwrap();
    f.issue(renewal("a2"), "a3").await.unwrap();
    f.issue(Proof::Token(second.token.clone()), "b1")
        .await
        .unwrap();

    assert!(join_tokens::revoke(&f.store, &first.id, SystemTime::now()).unwrap());
    let refused = f.issue(renewal("a3"), "a4").await.unwrap_err();
    assert!(
        matches!(&refused, LineageError::TokenRevoked { id } if *id == first.id),
        "{refused}"
    );
    f.issue(renewal("b1"), "b2").await.unwrap();
    // A certificate the lineage does not know (an admin's, or from before records) cannot renew.
    let unknown = f.issue(renewal("ffff"), "x").await.unwrap_err();
    assert!(
        matches!(unknown, LineageError::NoLineage { .. }),
        "{unknown}"
    );
}

#[tokio::test]
async fn a_revoked_identity_is_refused_every_way_until_it_lapses() {
    let f = fixture();
    let token = f.token(None);
    f.issue(Proof::Token(token.token.clone()), "a1")
        .await
        .unwrap();
    let now = SystemTime::now();
    f.lineage
        .revoke_identity(&web(), Some(now + Duration::from_secs(60)), now)
        .unwrap();
    for proof in [Proof::Token(token.token.clone()), renewal("a1")] {
        let refused = f.issue(proof, "a2").await.unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with(&format!("identity {WEB} is revoked until ")),
            "{refused}"
        );
    }
    assert_eq!(f.lineage.revoked(now).unwrap().len(), 1);
    assert!(
        f.lineage
            .revoked(now + Duration::from_secs(61))
            .unwrap()
            .is_empty()
    );
    assert!(f.lineage.unrevoke_identity(&web()).unwrap());
    assert!(!f.lineage.unrevoke_identity(&web()).unwrap());
    f.issue(renewal("a1"), "a2").await.unwrap();
}

#[tokio::test]
async fn concurrent_issues_share_commits_and_uses_are_never_overspent() {
    let f = fixture();
    let token = f.token(Some(5));
    let mut calls = Vec::new();
    for i in 0..20 {
        let proof = Proof::Token(token.token.clone());
        let lineage = f.lineage.clone();
        calls.push(tokio::spawn(async move {
            let now = SystemTime::now();
            let issue = Issue {
                identity: web(),
                proof,
                serial: format!("s{i}"),
                not_after: now + Duration::from_secs(60),
            };
            lineage.record(issue, now).await
        }));
    }
    let mut granted = 0;
    for call in calls {
        granted += usize::from(call.await.unwrap().is_ok());
    }
    assert_eq!(granted, 5);
}

#[tokio::test]
async fn purging_forgets_only_what_can_no_longer_matter() {
    let f = fixture();
    let kept = f.token(None);
    let now = SystemTime::now();
    f.issue(Proof::Token(kept.token.clone()), "live")
        .await
        .unwrap();
    // Expired tokens with no live descendant, expired certificates and lapsed revocations go.
    join_tokens::create(&f.store, &web(), Duration::from_secs(1), None, now).unwrap();
    f.lineage
        .revoke_identity(&web(), Some(now + Duration::from_secs(5)), now)
        .unwrap();
    let later = now + Duration::from_secs(30);
    assert_eq!(f.lineage.purge(later).unwrap(), 2);
    // Once the live certificate expires, it goes, and then its expired token.
    let much_later = now + Duration::from_secs(7200);
    assert_eq!(f.lineage.purge(much_later).unwrap(), 2);
    assert!(
        f.store
            .list::<JoinTokenRecord>(Records::JoinTokens)
            .unwrap()
            .is_empty()
    );
}
