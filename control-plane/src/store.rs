//! The embedded store: one redb file under `--data-dir`, so a restart loses nothing.
//!
//! Calls are synchronous (redb commits with fsync); async callers run them on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Policy resources by `<Kind>/<namespace>/<name>`, as JSON manifests.
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// Counters: the policy revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the policy revision in [`META`].
const REVISION: &str = "revision";

/// Stored records: key and bytes.
pub type RawRecords = Vec<(String, Vec<u8>)>;

/// The tables of JSON records the control plane keeps beside its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Join tokens by the hex SHA-256 of the token; the token itself is never stored.
    JoinTokens,
    /// Every certificate issued to a workload, by serial: the lineage revocation follows.
    Certificates,
    /// Revoked identities, by SPIFFE id.
    RevokedIdentities,
}

impl Records {
    const ALL: [Records; 3] = [
        Records::JoinTokens,
        Records::Certificates,
        Records::RevokedIdentities,
    ];

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Records::JoinTokens => "join_tokens",
            Records::Certificates => "certificates",
            Records::RevokedIdentities => "revoked_identities",
        })
    }
}

/// Reading records, from the store or inside a transaction (which sees its own writes).
pub trait ReadRecords {
    /// The record under `key` in `records`, if any.
    fn read<T: DeserializeOwned>(
        &self,
        records: Records,
        key: &str,
    ) -> Result<Option<T>, StoreError>;
}

/// One write transaction over the record tables, committed (durably) as a whole.
pub struct Txn<'a> {
    txn: &'a redb::WriteTransaction,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Txn")
    }
}

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
    /// The Kubernetes API server failed or refused, with its reason.
    #[error("store (Kubernetes API): {0}")]
    Kubernetes(String),
    /// A stored value could not be decoded.
    #[error("store: corrupt record {key}: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
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
        for records in Records::ALL {
            txn.open_table(records.table()).map_err(redb::Error::from)?;
        }
        txn.open_table(RESOURCES).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self { db: Arc::new(db) })
    }

    fn write(&self) -> Result<redb::WriteTransaction, StoreError> {
        write(&self.db)
    }

    /// The revision of the stored resources.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        read_revision(&txn)
    }

    /// One stored resource's JSON bytes.
    pub fn resource(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(RESOURCES).map_err(redb::Error::from)?;
        let value = table.get(key).map_err(redb::Error::from)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Every stored resource (key and JSON bytes), and the revision they were read at.
    pub fn resources(&self) -> Result<(u64, RawRecords), StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let revision = read_revision(&txn)?;
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

    /// Runs `f` in one write transaction and commits it durably; nothing of it is kept when
    /// `f` or the commit fails.
    pub fn transact<T>(
        &self,
        f: impl FnOnce(&Txn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.write()?;
        let result = f(&Txn { txn: &txn })?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(result)
    }

    /// Every record in `records`, by key. One that no longer decodes is an error, never skipped.
    pub fn list<T: DeserializeOwned>(
        &self,
        records: Records,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(records.table()).map_err(redb::Error::from)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (key, value) = entry.map_err(redb::Error::from)?;
            all.push((key.value().to_string(), decode(key.value(), value.value())?));
        }
        Ok(all)
    }

    /// Stores `record` under `key` in `records`, in a transaction of its own.
    pub fn put<T: Serialize>(
        &self,
        records: Records,
        key: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        self.transact(|txn| txn.put(records, key, record))
    }
}

impl ReadRecords for Store {
    fn read<T: DeserializeOwned>(
        &self,
        records: Records,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(records.table()).map_err(redb::Error::from)?;
        read_from(&table, key)
    }
}

// === impl Txn ===

impl ReadRecords for Txn<'_> {
    fn read<T: DeserializeOwned>(
        &self,
        records: Records,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let table = self
            .txn
            .open_table(records.table())
            .map_err(redb::Error::from)?;
        read_from(&table, key)
    }
}

/// The record under `key` in `table`, decoded.
fn read_from<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let Some(value) = table.get(key).map_err(redb::Error::from)? else {
        return Ok(None);
    };
    decode(key, value.value()).map(Some)
}

impl Txn<'_> {
    /// Stores `record` under `key`.
    pub fn put<T: Serialize>(
        &self,
        records: Records,
        key: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
            key: key.to_string(),
            source,
        })?;
        let mut table = self
            .txn
            .open_table(records.table())
            .map_err(redb::Error::from)?;
        table
            .insert(key, value.as_slice())
            .map_err(redb::Error::from)?;
        Ok(())
    }

    /// Removes the record under `key`; true if there was one.
    pub fn remove(&self, records: Records, key: &str) -> Result<bool, StoreError> {
        let mut table = self
            .txn
            .open_table(records.table())
            .map_err(redb::Error::from)?;
        Ok(table.remove(key).map_err(redb::Error::from)?.is_some())
    }

    /// Keeps only the records for which `keep` says yes; returns how many went. A record that
    /// no longer decodes is an error, never silently kept or dropped.
    pub fn retain<T: DeserializeOwned>(
        &self,
        records: Records,
        mut keep: impl FnMut(&str, &T) -> bool,
    ) -> Result<usize, StoreError> {
        let mut table = self
            .txn
            .open_table(records.table())
            .map_err(redb::Error::from)?;
        let mut doomed = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (key, value) = entry.map_err(redb::Error::from)?;
            let record: T = decode(key.value(), value.value())?;
            if !keep(key.value(), &record) {
                doomed.push(key.value().to_string());
            }
        }
        for key in &doomed {
            table.remove(key.as_str()).map_err(redb::Error::from)?;
        }
        Ok(doomed.len())
    }
}

fn read_revision(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(META)
        .map_err(redb::Error::from)?
        .get(REVISION)
        .map_err(redb::Error::from)?
        .map_or(0, |v| v.value()))
}

/// A write transaction committed in two phases: the commit slot it writes is itself made durable
/// before the file points at it, so a damaged page of the newest commit is reported as damage
/// instead of quietly falling back to the commit before it (losing the last change).
fn write(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(redb::Error::from)?;
    txn.set_two_phase_commit(true);
    Ok(txn)
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Record {
        identity: String,
        expires_at: u64,
    }

    fn record(expires_at: u64) -> Record {
        Record {
            identity: "spiffe://cluster.local/ns/a/sa/b".to_string(),
            expires_at,
        }
    }

    #[test]
    fn records_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put(Records::JoinTokens, "abc", &record(100)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.read(Records::JoinTokens, "abc").unwrap(),
            Some(record(100))
        );
        assert_eq!(
            store
                .read::<Record>(Records::JoinTokens, "missing")
                .unwrap(),
            None
        );
    }

    /// A store holding a few records, and its bytes.
    fn written(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put(Records::JoinTokens, "abc", &record(100)).unwrap();
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
    fn a_transaction_is_all_or_nothing_and_retain_keeps_what_it_says() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        for (key, expiry) in [("aa11", 100), ("bb22", 10), ("cc33", 100)] {
            store
                .put(Records::JoinTokens, key, &record(expiry))
                .unwrap();
        }
        let failed: Result<(), StoreError> = store.transact(|txn| {
            txn.remove(Records::JoinTokens, "aa11")?;
            Err(StoreError::Unparsable {
                key: "x".to_string(),
                reason: "abandoned".to_string(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(store.list::<Record>(Records::JoinTokens).unwrap().len(), 3);
        let removed = store
            .transact(|txn| {
                txn.retain(Records::JoinTokens, |key, r: &Record| {
                    r.expires_at > 50 && key != "aa11"
                })
            })
            .unwrap();
        assert_eq!(removed, 2);
        let left: Vec<String> = store
            .list::<Record>(Records::JoinTokens)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec!["cc33".to_string()]);
    }

    #[test]
    fn a_record_that_no_longer_decodes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store
            .put(Records::Certificates, "ab", &"not a record")
            .unwrap();
        assert!(store.list::<Record>(Records::Certificates).is_err());
        let kept = store.transact(|txn| txn.retain(Records::Certificates, |_, _: &Record| true));
        assert!(kept.is_err());
    }
}
