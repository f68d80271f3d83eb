//! The embedded store: one redb file under `--data-dir`, so a restart loses nothing.
//!
//! Calls are synchronous (redb commits with fsync); async callers run them on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Join tokens by the hex SHA-256 of the token; the token itself is never stored.
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
/// Policy resources by `<Kind>/<namespace>/<name>`, as JSON manifests.
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// Counters: the policy revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the policy revision in [`META`].
const REVISION: &str = "revision";

/// Stored records: key and bytes.
pub type RawRecords = Vec<(String, Vec<u8>)>;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, or another process holding the file).
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A stored value could not be decoded.
    #[error("store: corrupt record {key}: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// A join token as stored: who it proves and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// The SPIFFE identity the token proves.
    pub identity: String,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// Creation, in seconds since the Unix epoch.
    pub created_at: u64,
}

/// The control plane's durable state.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store(redb)")
    }
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(JOIN_TOKENS).map_err(redb::Error::from)?;
        txn.open_table(RESOURCES).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Every stored resource (key and JSON bytes), and the revision they were read at.
    pub fn resources(&self) -> Result<(u64, RawRecords), StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let revision = txn
            .open_table(META)
            .map_err(redb::Error::from)?
            .get(REVISION)
            .map_err(redb::Error::from)?
            .map_or(0, |v| v.value());
        let table = txn.open_table(RESOURCES).map_err(redb::Error::from)?;
        let mut resources = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (key, value) = entry.map_err(redb::Error::from)?;
            resources.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok((revision, resources))
    }

    /// Writes `puts`, removes `deletes` and moves the revision to `revision`, atomically: after a
    /// crash either all of it is there or none.
    pub fn commit_resources(
        &self,
        revision: u64,
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(RESOURCES).map_err(redb::Error::from)?;
            for (key, value) in puts {
                table
                    .insert(key.as_str(), value.as_slice())
                    .map_err(redb::Error::from)?;
            }
            for key in deletes {
                table.remove(key.as_str()).map_err(redb::Error::from)?;
            }
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            meta.insert(REVISION, revision).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Stores a join token record under its hash.
    pub fn put_join_token(&self, hash: &str, record: &JoinTokenRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
            key: hash.to_string(),
            source,
        })?;
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(JOIN_TOKENS).map_err(redb::Error::from)?;
            table
                .insert(hash, value.as_slice())
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// The record stored under `hash`, if any.
    pub fn join_token(&self, hash: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(JOIN_TOKENS).map_err(redb::Error::from)?;
        let Some(value) = table.get(hash).map_err(redb::Error::from)? else {
            return Ok(None);
        };
        decode(hash, value.value()).map(Some)
    }

    /// Every stored join token, by hash.
    pub fn join_tokens(&self) -> Result<Vec<(String, JoinTokenRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(JOIN_TOKENS).map_err(redb::Error::from)?;
        let mut tokens = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (key, value) = entry.map_err(redb::Error::from)?;
            tokens.push((key.value().to_string(), decode(key.value(), value.value())?));
        }
        Ok(tokens)
    }

    /// Removes every token whose hash starts with `prefix` and those that expired before `now`;
    /// returns how many matched `prefix`.
    pub fn remove_join_tokens(&self, prefix: Option<&str>, now: u64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        let mut matched = 0;
        {
            let mut table = txn.open_table(JOIN_TOKENS).map_err(redb::Error::from)?;
            table
                .retain(|hash, value| {
                    let revoked = prefix.is_some_and(|p| hash.starts_with(p));
                    matched += usize::from(revoked);
                    let expired = serde_json::from_slice::<JoinTokenRecord>(value)
                        .map(|record| record.expires_at <= now)
                        .unwrap_or(false);
                    !revoked && !expired
                })
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(matched)
    }
}

fn decode(key: &str, value: &[u8]) -> Result<JoinTokenRecord, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: u64) -> JoinTokenRecord {
        JoinTokenRecord {
            identity: "spiffe://cluster.local/ns/a/sa/b".to_string(),
            expires_at,
            created_at: 1,
        }
    }

    #[test]
    fn records_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_join_token("abc", &record(100)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.join_token("abc").unwrap(), Some(record(100)));
        assert_eq!(store.join_token("missing").unwrap(), None);
    }

    #[test]
    fn removal_by_prefix_also_purges_expired_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.put_join_token("aa11", &record(100)).unwrap();
        store.put_join_token("bb22", &record(10)).unwrap();
        store.put_join_token("cc33", &record(100)).unwrap();
        assert_eq!(store.remove_join_tokens(Some("aa"), 50).unwrap(), 1);
        let left: Vec<String> = store
            .join_tokens()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec!["cc33".to_string()]);
    }
}
