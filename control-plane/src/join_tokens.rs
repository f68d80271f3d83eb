//! Join tokens: how a proxy off Kubernetes proves its identity on first contact.
//!
//! A token is 32 random bytes, shown once. Only its SHA-256 is stored, so a copy of the store
//! cannot be replayed; the token's id (a prefix of that hash) names it for listing and revoking.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use base64::Engine;
use weft_certs::Identity;

use crate::store::{JoinTokenRecord, Store, StoreError};

/// Every token starts with this, so it is recognisable in a leaked file or log.
const TOKEN_PREFIX: &str = "weftjt_";
/// Hex characters of the hash used as the token's public id.
const ID_LEN: usize = 16;
/// The longest lifetime a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// No such token (never issued, revoked, or mistyped).
    #[error("unknown join token")]
    Unknown,
    /// The token's lifetime is over.
    #[error("join token expired")]
    Expired,
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
}

/// Creates a token proving `identity` for `ttl`.
pub fn create(
    store: &Store,
    identity: &Identity,
    ttl: Duration,
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
    };
    store.put_join_token(&hash, &record)?;
    Ok(NewJoinToken {
        id: hash[..ID_LEN].to_string(),
        token,
        expires_at,
    })
}

/// The identity `token` proves at `now`.
pub fn verify(store: &Store, token: &str, now: SystemTime) -> Result<Identity, JoinTokenError> {
    let record = store
        .join_token(&hash(token.trim()))?
        .ok_or(JoinTokenError::Unknown)?;
    if record.expires_at <= unix(now) {
        return Err(JoinTokenError::Expired);
    }
    record
        .identity
        .parse()
        .map_err(|e: weft_certs::IdentityError| JoinTokenError::Corrupt(e.to_string()))
}

/// Tokens that have not expired at `now`.
pub fn list(store: &Store, now: SystemTime) -> Result<Vec<JoinTokenInfo>, JoinTokenError> {
    let now = unix(now);
    Ok(store
        .join_tokens()?
        .into_iter()
        .filter(|(_, record)| record.expires_at > now)
        .map(|(hash, record)| JoinTokenInfo {
            id: hash[..ID_LEN.min(hash.len())].to_string(),
            identity: record.identity,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(record.expires_at),
        })
        .collect())
}

/// Revokes the token with public id `id` (and purges expired ones); false if none matched.
pub fn revoke(store: &Store, id: &str, now: SystemTime) -> Result<bool, JoinTokenError> {
    // Ids are fixed-length hex prefixes; anything else could match several tokens.
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    Ok(store.remove_join_tokens(Some(&id.to_ascii_lowercase()), unix(now))? > 0)
}

fn hash(token: &str) -> String {
    let digest = digest::digest(&digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn unix(time: SystemTime) -> u64 {
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

    #[test]
    fn a_token_proves_its_identity_until_it_expires() {
        let (_dir, store) = store();
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let now = SystemTime::now();
        let new = create(&store, &id, Duration::from_secs(60), now).unwrap();
        assert!(new.token.starts_with(TOKEN_PREFIX));
        assert_eq!(verify(&store, &new.token, now).unwrap(), id);
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
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let new = create(&store, &id, Duration::from_secs(60), SystemTime::now()).unwrap();
        let stored = store.join_tokens().unwrap();
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
    fn revoked_tokens_stop_working() {
        let (_dir, store) = store();
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let now = SystemTime::now();
        let new = create(&store, &id, Duration::from_secs(60), now).unwrap();
        assert!(!revoke(&store, "short", now).unwrap());
        assert!(revoke(&store, &new.id, now).unwrap());
        assert!(matches!(
            verify(&store, &new.token, now),
            Err(JoinTokenError::Unknown)
        ));
        assert!(list(&store, now).unwrap().is_empty());
    }

    #[test]
    fn ttl_is_bounded() {
        let (_dir, store) = store();
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        assert!(matches!(
            create(&store, &id, Duration::ZERO, SystemTime::now()),
            Err(JoinTokenError::Ttl)
        ));
        assert!(matches!(
            create(
                &store,
                &id,
                MAX_TTL + Duration::from_secs(1),
                SystemTime::now()
            ),
            Err(JoinTokenError::Ttl)
        ));
    }
}
