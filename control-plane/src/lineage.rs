//! Where every certificate comes from, so that a revocation reaches all of its renewals.
//!
//! Each certificate issued to a workload is recorded by serial with the join token its lineage
//! began with, or with its ServiceAccount when a Kubernetes token began it: a renewal (the caller
//! presents its current certificate) is refused when that join token was revoked, and any
//! Certify is refused for a revoked identity. A ServiceAccount lineage does not renew by
//! certificate: each renewal presents a fresh token for the API server to review again (as a
//! proxy falls back to its token when renewal by certificate is refused), so deleting the pod or
//! its ServiceAccount ends it, as does revoking the identity. Token uses are counted
//! here too. Writes are group-committed by one thread: a burst of Certify calls costs one durable
//! commit, not one each, and each call answers only once its record is on disk.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use weft_certs::Identity;

use crate::join_tokens::{self, JoinTokenError, JoinTokenRecord, unix};
use crate::store::{ReadRecords, Records, Store, StoreError, Txn};

/// Calls waiting for the writer; more wait (with backpressure) rather than queue unbounded.
const QUEUE: usize = 4096;
/// The most writes one commit carries.
const MAX_BATCH: usize = 512;

/// Why a Certify was refused, or its certificate could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// The join token does not prove the identity.
    #[error(transparent)]
    Token(#[from] JoinTokenError),
    /// An operator revoked the identity.
    #[error("identity {identity} is revoked{until}")]
    IdentityRevoked {
        /// The identity.
        identity: Identity,
        /// " until <time>", or nothing.
        until: String,
    },
    /// The presented certificate was not issued by this control plane to a workload (or its
    /// record is gone): its holder must prove itself afresh.
    #[error(
        "renewal refused: certificate {serial} has no recorded lineage; prove the identity afresh with a join token or a ServiceAccount token"
    )]
    NoLineage {
        /// The certificate's serial.
        serial: String,
    },
    /// The presented certificate descends from a ServiceAccount token: it renews with a fresh
    /// one, reviewed again, so a deleted pod or ServiceAccount stops renewing.
    #[error(
        "renewal refused: certificate {serial} began with a ServiceAccount token; renew with a fresh one"
    )]
    ServiceAccountRenewal {
        /// The certificate's serial.
        serial: String,
    },
    /// The join token the presented certificate descends from was revoked.
    #[error("renewal refused: join token {id} was revoked, and this certificate descends from it")]
    TokenRevoked {
        /// The token's id.
        id: String,
    },
    /// The store failed.
    #[error("{0}")]
    Store(String),
}

/// The root recorded for a lineage that began with a ServiceAccount token: it never renews by
/// certificate, only by a token reviewed again.
const SERVICE_ACCOUNT_ROOT: &str = "serviceaccount:";

/// How a Certify caller proved who it is.
#[derive(Debug, Clone)]
pub enum Proof {
    /// A join token, on first contact.
    Token(String),
    /// A Kubernetes ServiceAccount token, already reviewed by the API server: the identity of
    /// that ServiceAccount.
    ServiceAccount(Identity),
    /// Its current certificate (already verified by the TLS handshake), on renewal.
    Certificate {
        /// The certificate's serial.
        serial: String,
        /// The identity it carries.
        identity: Identity,
    },
}

/// A certificate as recorded: whose it is and where its lineage began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// The identity it carries.
    pub identity: String,
    /// Where its lineage began: the hash of a join token, or `serviceaccount:<identity>`.
    pub token: String,
    /// The serial of the certificate it renewed, if it was a renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its notAfter, in seconds since the Unix epoch: the record goes once it has passed.
    pub not_after: u64,
}

/// An identity's revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// When, in seconds since the Unix epoch.
    pub revoked_at: u64,
    /// When it lapses, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// A certificate about to be handed out, to record with its proof.
#[derive(Debug)]
pub struct Issue {
    /// Who asked.
    pub identity: Identity,
    /// How they proved it.
    pub proof: Proof,
    /// The new certificate's serial.
    pub serial: String,
    /// Its notAfter.
    pub not_after: SystemTime,
}

/// The lineage of issued certificates, and revoked identities.
#[derive(Debug, Clone)]
pub struct Lineage {
    store: Store,
    writes: mpsc::Sender<Pending>,
}

#[derive(Debug)]
struct Pending {
    issue: Issue,
    now: SystemTime,
    done: oneshot::Sender<Result<(), LineageError>>,
}

// === impl Lineage ===

impl Lineage {
    /// Records into `store`, through a writer thread that lives as long as any clone.
    pub fn new(store: Store) -> std::io::Result<Self> {
        let (writes, pending) = mpsc::channel(QUEUE);
        let writer = store.clone();
        std::thread::Builder::new()
            .name("weft-lineage".to_string())
            .spawn(move || write_batches(&writer, pending))?;
        Ok(Self { store, writes })
    }

    /// The identity `proof` proves at `now`, if it may get a certificate, without counting a
    /// token's use: the cheap check made before anything is signed.
    pub async fn check(&self, proof: &Proof, now: SystemTime) -> Result<Identity, LineageError> {
        let store = self.store.clone();
        let proof = proof.clone();
        tokio::task::spawn_blocking(move || proven(&store, &proof, now))
            .await
            .map_err(|e| LineageError::Store(format!("lineage check failed: {e}")))?
    }

    /// Checks `issue` again, counts its token's use, and records the certificate, durably; the
    /// certificate may be handed out only once this returns `Ok`.
    pub async fn record(&self, issue: Issue, now: SystemTime) -> Result<(), LineageError> {
        let (done, outcome) = oneshot::channel();
        self.writes
            .send(Pending { issue, now, done })
            .await
            .map_err(|_| LineageError::Store("the lineage writer has stopped".to_string()))?;
        outcome
            .await
            .map_err(|_| LineageError::Store("the lineage writer has stopped".to_string()))?
    }

    /// Revokes `identity` until `until` (or until lifted).
    pub fn revoke_identity(
        &self,
        identity: &Identity,
        until: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let record = RevocationRecord {
            revoked_at: unix(now),
            until: until.map(unix),
        };
        self.store
            .put(Records::RevokedIdentities, &identity.to_string(), &record)
    }

    /// Lifts `identity`'s revocation; false if it had none.
    pub fn unrevoke_identity(&self, identity: &Identity) -> Result<bool, StoreError> {
        self.store
            .transact(|txn| txn.remove(Records::RevokedIdentities, &identity.to_string()))
    }

    /// The revocations in force at `now`, by identity.
    pub fn revoked(&self, now: SystemTime) -> Result<Vec<(String, RevocationRecord)>, StoreError> {
        let now = unix(now);
        Ok(self
            .store
            .list::<RevocationRecord>(Records::RevokedIdentities)?
            .into_iter()
            .filter(|(_, record)| in_force(record, now))
            .collect())
    }

    /// Forgets what can no longer matter at `now`: records of expired certificates, lapsed
    /// revocations, and expired tokens no live certificate descends from.
    pub fn purge(&self, now: SystemTime) -> Result<usize, StoreError> {
        let now = unix(now);
        self.store.transact(|txn| {
            let mut live_roots = std::collections::HashSet::new();
            let mut purged = txn.retain(Records::Certificates, |_, cert: &CertificateRecord| {
                let live = cert.not_after > now;
                if live {
                    live_roots.insert(cert.token.clone());
                }
                live
            })?;
            purged += txn.retain(Records::RevokedIdentities, |_, r: &RevocationRecord| {
                in_force(r, now)
            })?;
            purged += txn.retain(Records::JoinTokens, |hash, token: &JoinTokenRecord| {
                token.expires_at > now || live_roots.contains(hash)
            })?;
            Ok(purged)
        })
    }

    /// Purges every `every` until `drain`.
    pub async fn purge_periodically(self, every: Duration, drain: weft_telemetry::Drain) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = drain.signaled() => return,
            }
            let lineage = self.clone();
            match tokio::task::spawn_blocking(move || lineage.purge(SystemTime::now())).await {
                Ok(Ok(purged)) => tracing::debug!(purged, "purged identity records"),
                Ok(Err(error)) => tracing::warn!(%error, "cannot purge identity records"),
                Err(error) => tracing::warn!(%error, "identity record purge failed"),
            }
        }
    }
}

/// The identity `proof` proves at `now`, if it may get a certificate.
fn proven(
    records: &impl ReadRecords,
    proof: &Proof,
    now: SystemTime,
) -> Result<Identity, LineageError> {
    let identity = match proof {
        Proof::Token(token) => join_tokens::check(records, token, now)?,
        Proof::ServiceAccount(identity) => identity.clone(),
        Proof::Certificate { serial, identity } => {
            root_of(records, serial, identity)?;
            identity.clone()
        }
    };
    not_revoked(records, &identity, now)?;
    Ok(identity)
}

/// Refuses an identity whose revocation is in force at `now`.
fn not_revoked(
    records: &impl ReadRecords,
    identity: &Identity,
    now: SystemTime,
) -> Result<(), LineageError> {
    let revocation: Option<RevocationRecord> = records
        .read(Records::RevokedIdentities, &identity.to_string())
        .map_err(|e| LineageError::Store(e.to_string()))?;
    match revocation {
        Some(revocation) if in_force(&revocation, unix(now)) => {
            Err(LineageError::IdentityRevoked {
                identity: identity.clone(),
                until: revocation
                    .until
                    .map(|t| {
                        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(t);
                        format!(" until {}", humantime::format_rfc3339_seconds(t))
                    })
                    .unwrap_or_default(),
            })
        }
        _ => Ok(()),
    }
}

/// The hash of the token `serial`'s lineage began with, if that token was not revoked.
fn root_of(
    records: &impl ReadRecords,
    serial: &str,
    identity: &Identity,
) -> Result<String, LineageError> {
    let store_error = |e: StoreError| LineageError::Store(e.to_string());
    let no_lineage = || LineageError::NoLineage {
        serial: serial.to_string(),
    };
    let cert: CertificateRecord = records
        .read(Records::Certificates, serial)
        .map_err(store_error)?
        .ok_or_else(no_lineage)?;
    if cert.identity != identity.to_string() {
        return Err(no_lineage());
    }
    if cert.token.starts_with(SERVICE_ACCOUNT_ROOT) {
        return Err(LineageError::ServiceAccountRenewal {
            serial: serial.to_string(),
        });
    }
    let token: JoinTokenRecord = records
        .read(Records::JoinTokens, &cert.token)
        .map_err(store_error)?
        .ok_or_else(no_lineage)?;
    if token.revoked_at.is_some() {
        return Err(LineageError::TokenRevoked {
            id: join_tokens::id_of(&cert.token).to_string(),
        });
    }
    Ok(cert.token)
}

/// Checks one issue again (a revocation may have landed since), counts its token's use, and
/// records it, inside `txn`.
fn apply(txn: &Txn<'_>, issue: &Issue, now: SystemTime) -> Result<(), LineageError> {
    let store_error = |e: StoreError| LineageError::Store(e.to_string());
    not_revoked(txn, &issue.identity, now)?;
    let (token, parent) = match &issue.proof {
        Proof::Token(token) => {
            let (proven, hash) = join_tokens::consume(txn, token, now)?;
            if proven != issue.identity {
                return Err(LineageError::Store(format!(
                    "token proves {proven}, not {}",
                    issue.identity
                )));
            }
            (hash, None)
        }
        Proof::ServiceAccount(identity) => (format!("{SERVICE_ACCOUNT_ROOT}{identity}"), None),
        Proof::Certificate { serial, identity } => {
            (root_of(txn, serial, identity)?, Some(serial.clone()))
        }
    };
    let record = CertificateRecord {
        identity: issue.identity.to_string(),
        token,
        parent,
        not_after: unix(issue.not_after),
    };
    txn.put(Records::Certificates, &issue.serial, &record)
        .map_err(store_error)
}

/// The writer: takes whatever is waiting (up to a batch), applies it in one transaction, commits,
/// then answers each caller. Runs until every `Lineage` is dropped.
fn write_batches(store: &Store, mut pending: mpsc::Receiver<Pending>) {
    while let Some(first) = pending.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let committed = store.transact(|txn| {
            Ok(batch
                .iter()
                .map(|p| apply(txn, &p.issue, p.now))
                .collect::<Vec<_>>())
        });
        match committed {
            Ok(outcomes) => {
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = p.done.send(outcome);
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot record issued certificates");
                for p in batch {
                    let _ = p.done.send(Err(LineageError::Store(error.to_string())));
                }
            }
        }
    }
}

fn in_force(revocation: &RevocationRecord, now: u64) -> bool {
    revocation.until.is_none_or(|until| until > now)
}

#[cfg(test)]
mod tests;
