//! Join tokens: how a proxy off Kubernetes proves its identity on first contact.
//!
//! A token is 32 random bytes, shown once. Only its SHA-256 is stored, so a copy of the store
//! cannot be replayed; the token's id (a prefix of that hash) names it for listing and revoking.
//! A revoked token's record is kept: the certificates descended from it are refused renewal by
//! looking it up (see `lineage`).

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use base64::Engine;
use serde::{Deserialize, Serialize};
use weft_certs::Identity;

use crate::store::{ReadRecords, Records, Store, StoreError, Txn};

/// Every token starts with this, so it is recognisable in a leaked file or log.
const TOKEN_PREFIX: &str = "weftjt_";
/// Hex characters of the hash used as the token's public id.
const ID_LEN: usize = 16;
/// The longest lifetime a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Whether `token` is a join token at all (and not, say, a Kubernetes ServiceAccount token).
pub fn is_join_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// No such token (never issued, or mistyped).
    #[error("unknown join token")]
    Unknown,
    /// The token's lifetime is over.
    #[error("join token expired")]
    Expired,
    /// An operator revoked the token.
    #[error("join token {0} was revoked")]
    Revoked(String),
    /// The token proved its identity as many times as it may.
    #[error("join token {id} has been used {uses} of {uses} times")]
    UsedUp {
        /// The token's id.
        id: String,
        /// Its limit, reached.
        uses: u32,
    },
    /// The stored identity no longer parses; the record is unusable.
    #[error("join token record is corrupt: {0}")]
    Corrupt(String),
    /// The requested lifetime is zero or too long.
    #[error("ttl must be between 1s and {max}", max = humantime::format_duration(MAX_TTL))]
    Ttl,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A join token as stored: who it proves, until when, and how often it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// The SPIFFE identity the token proves.
    pub identity: String,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// Creation, in seconds since the Unix epoch.
    pub created_at: u64,
    /// Certificates obtained with it.
    #[serde(default)]
    pub uses: u32,
    /// How many it may obtain; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    /// When it was revoked, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// A freshly created token.
#[derive(Debug)]
pub struct NewJoinToken {
    /// The secret, to hand to the proxy.
    pub token: String,
    /// Its public id.
    pub id: String,
    /// When it stops working.
    pub expires_at: SystemTime,
}

/// A stored token, without its secret.
#[derive(Debug)]
pub struct JoinTokenInfo {
    /// Its public id.
    pub id: String,
    /// The identity it proves.
    pub identity: String,
    /// When it stops working.
    pub expires_at: SystemTime,
    /// Certificates obtained with it.
    pub uses: u32,
    /// Its limit, if it has one.
    pub max_uses: Option<u32>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
}

/// Creates a token proving `identity` for `ttl`, good for `max_uses` certificates (`None`: any).
pub fn create(
    store: &Store,
    identity: &Identity,
    ttl: Duration,
    max_uses: Option<u32>,
    now: SystemTime,
) -> Result<NewJoinToken, JoinTokenError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(JoinTokenError::Ttl);
    }
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = hash(&token);
    let expires_at = now + ttl;
    let record = JoinTokenRecord {
        identity: identity.to_string(),
        expires_at: unix(expires_at),
        created_at: unix(now),
        uses: 0,
        max_uses,
        revoked_at: None,
    };
    store.put(Records::JoinTokens, &hash, &record)?;
    Ok(NewJoinToken {
        id: id_of(&hash).to_string(),
        token,
        expires_at,
    })
}

/// The identity `token` proves at `now`, without counting a use: the check made before
/// anything is signed.
pub fn check(
    records: &impl ReadRecords,
    token: &str,
    now: SystemTime,
) -> Result<Identity, JoinTokenError> {
    let hash = hash(token);
    let record = records
        .read(Records::JoinTokens, &hash)?
        .ok_or(JoinTokenError::Unknown)?;
    admissible(&hash, &record, now)
}

/// Like [`check`], and counts the use, inside `txn`; returns the identity and the token's hash
/// (which the certificate's lineage records).
pub fn consume(
    txn: &Txn<'_>,
    token: &str,
    now: SystemTime,
) -> Result<(Identity, String), JoinTokenError> {
    let hash = hash(token);
    let mut record: JoinTokenRecord = txn
        .read(Records::JoinTokens, &hash)?
        .ok_or(JoinTokenError::Unknown)?;
    let identity = admissible(&hash, &record, now)?;
    record.uses = record.uses.saturating_add(1);
    txn.put(Records::JoinTokens, &hash, &record)?;
    Ok((identity, hash))
}

/// The identity a stored token proves, if it still may.
fn admissible(
    hash: &str,
    record: &JoinTokenRecord,
    now: SystemTime,
) -> Result<Identity, JoinTokenError> {
    if record.revoked_at.is_some() {
        return Err(JoinTokenError::Revoked(id_of(hash).to_string()));
    }
    if record.expires_at <= unix(now) {
        return Err(JoinTokenError::Expired);
    }
    if let Some(max) = record.max_uses
        && record.uses >= max
    {
        return Err(JoinTokenError::UsedUp {
            id: id_of(hash).to_string(),
            uses: max,
        });
    }
    record
        .identity
        .parse()
        .map_err(|e: weft_certs::IdentityError| JoinTokenError::Corrupt(e.to_string()))
}

/// Tokens that have not expired at `now`, and revoked ones (kept while their lineage may live).
pub fn list(store: &Store, now: SystemTime) -> Result<Vec<JoinTokenInfo>, JoinTokenError> {
    let now = unix(now);
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    Ok(store
        .list::<JoinTokenRecord>(Records::JoinTokens)?
        .into_iter()
        .filter(|(_, record)| record.expires_at > now || record.revoked_at.is_some())
        .map(|(hash, record)| JoinTokenInfo {
            id: id_of(&hash).to_string(),
            identity: record.identity,
            expires_at: at(record.expires_at),
            uses: record.uses,
            max_uses: record.max_uses,
            revoked_at: record.revoked_at.map(at),
        })
        .collect())
}

/// Revokes the token with public id `id`; false if none matched.
pub fn revoke(store: &Store, id: &str, now: SystemTime) -> Result<bool, JoinTokenError> {
    // Ids are fixed-length hex prefixes; anything else could match several tokens.
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let id = id.to_ascii_lowercase();
    let found = store
        .list::<JoinTokenRecord>(Records::JoinTokens)?
        .into_iter()
        .find(|(hash, _)| hash.starts_with(&id));
    let Some((hash, mut record)) = found else {
        return Ok(false);
    };
    record.revoked_at.get_or_insert(unix(now));
    store.put(Records::JoinTokens, &hash, &record)?;
    Ok(true)
}

/// The public id of the token whose hash is `hash`.
pub fn id_of(hash: &str) -> &str {
    &hash[..ID_LEN.min(hash.len())]
}

/// The stored form of `token`: its SHA-256, in hex.
pub fn hash(token: &str) -> String {
    let digest = digest::digest(&digest::SHA256, token.trim().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch.
pub fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        (dir, store)
    }

    fn web() -> Identity {
        "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()
    }

    fn verify(store: &Store, token: &str, now: SystemTime) -> Result<Identity, JoinTokenError> {
        store
            .transact(|txn| Ok(consume(txn, token, now)))
            .map_err(JoinTokenError::Store)?
            .map(|(identity, _)| identity)
    }

    #[test]
    fn a_token_proves_its_identity_until_it_expires() {
        let (_dir, store) = store();
        let now = SystemTime::now();
        let new = create(&store, &web(), Duration::from_secs(60), None, now).unwrap();
        assert!(new.token.starts_with(TOKEN_PREFIX));
        assert_eq!(verify(&store, &new.token, now).unwrap(), web());
        assert!(matches!(
            verify(&store, &new.token, now + Duration::from_secs(61)),
            Err(JoinTokenError::Expired)
        ));
        assert!(matches!(
            verify(&store, "weftjt_nope", now),
            Err(JoinTokenError::Unknown)
        ));
    }

    #[test]
    fn only_the_hash_is_stored() {
        let (_dir, store) = store();
        let new = create(
            &store,
            &web(),
            Duration::from_secs(60),
            None,
            SystemTime::now(),
        )
        .unwrap();
        let stored = store.list::<JoinTokenRecord>(Records::JoinTokens).unwrap();
        assert_eq!(stored.len(), 1);
        let secret = new.token.trim_start_matches(TOKEN_PREFIX);
        assert!(!stored[0].0.contains(secret));
        assert!(
            !serde_json::to_string(&stored[0].1)
                .unwrap()
                .contains(secret)
        );
    }

    #[test]
    fn revoked_tokens_stop_working_and_stay_listed() {
        let (_dir, store) = store();
        let now = SystemTime::now();
        let new = create(&store, &web(), Duration::from_secs(60), None, now).unwrap();
        assert!(!revoke(&store, "short", now).unwrap());
        assert!(revoke(&store, &new.id, now).unwrap());
        assert!(
            matches!(verify(&store, &new.token, now), Err(JoinTokenError::Revoked(id)) if id == new.id)
        );
        let listed = list(&store, now).unwrap();
        assert!(listed[0].revoked_at.is_some());
    }

    #[test]
    fn uses_are_counted_and_limited() {
        let (_dir, store) = store();
        let now = SystemTime::now();
        let new = create(&store, &web(), Duration::from_secs(60), Some(2), now).unwrap();
        verify(&store, &new.token, now).unwrap();
        verify(&store, &new.token, now).unwrap();
        let refused = verify(&store, &new.token, now).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!("join token {} has been used 2 of 2 times", new.id)
        );
        assert_eq!(list(&store, now).unwrap()[0].uses, 2);
    }

    #[test]
    fn ttl_is_bounded() {
        let (_dir, store) = store();
        let now = SystemTime::now();
        assert!(matches!(
            create(&store, &web(), Duration::ZERO, None, now),
            Err(JoinTokenError::Ttl)
        ));
        assert!(matches!(
            create(&store, &web(), MAX_TTL + Duration::from_secs(1), None, now),
            Err(JoinTokenError::Ttl)
        ));
    }
}
