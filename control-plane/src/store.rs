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
    /// The file could not be opened: damaged, not a store, or held by another process.
    #[error(
        "store {path}: {source}: the file is damaged or not a Weft store; restore it from a backup, or move it aside to start with an empty one"
    )]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// redb's reason.
        source: redb::DatabaseError,
    },
    /// redb failed (I/O, corruption, or another process holding the file).
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A stored resource no longer parses as one.
    #[error(
        "store: stored resource {key} no longer parses ({reason}); the store is damaged or was written by a newer weft-control"
    )]
    Unparsable {
        /// The record's key.
        key: String,
        /// Why it does not parse.
        reason: String,
    },
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
    /// Opens (or creates) the store file at `path`. Every page of the file is checked first: a
    /// damaged store is refused, never trusted (a plain open may panic on one, or read garbage).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let txn = write(&db)?;
        txn.open_table(JOIN_TOKENS).map_err(redb::Error::from)?;
        txn.open_table(RESOURCES).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self { db: Arc::new(db) })
    }

    fn write(&self) -> Result<redb::WriteTransaction, StoreError> {
        write(&self.db)
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
        let txn = self.write()?;
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
        let txn = self.write()?;
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
        let txn = self.write()?;
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

/// A write transaction committed in two phases: the commit slot it writes is itself made durable
/// before the file points at it, so a damaged page of the newest commit is reported as damage
/// instead of quietly falling back to the commit before it (losing the last change).
fn write(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(redb::Error::from)?;
    txn.set_two_phase_commit(true);
    Ok(txn)
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

    /// A store holding a few records, and its bytes.
    fn written(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_join_token("abc", &record(100)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    #[test]
    fn a_bit_flipped_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes) = written(dir.path());
        // Flip one bit inside a stored record, where a plain open would not look.
        let needle = b"spiffe://cluster.local";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        bytes[at + 3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let error = Store::open(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("damaged"), "{error}");
    }

    #[test]
    fn a_truncated_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = written(dir.path());
        for len in [bytes.len() / 2, 100] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let error = Store::open(&path).unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
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
