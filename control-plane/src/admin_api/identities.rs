//! Revoked identities: revoke, unrevoke, list.

use std::time::SystemTime;

use tonic::Status;
use weft_api::admin::{
    ListRevokedIdentitiesResponse, RevokeIdentityRequest, RevokedIdentity, UnrevokeIdentityRequest,
};
use weft_certs::{Identity, TrustDomain};

use crate::lineage::{Lineage, RevocationRecord};
use crate::store::StoreError;

/// The identity-revocation part of the admin API.
#[derive(Debug, Clone)]
pub struct IdentityAdmin {
    lineage: Lineage,
    trust_domain: TrustDomain,
}

impl IdentityAdmin {
    /// Revokes identities of `trust_domain` in `lineage`.
    pub fn new(lineage: Lineage, trust_domain: TrustDomain) -> Self {
        Self {
            lineage,
            trust_domain,
        }
    }

    /// Refuses every Certify for the identity from now on (until `until`, if set).
    pub async fn revoke(&self, req: RevokeIdentityRequest) -> Result<(), Status> {
        let identity = self.identity(&req.identity)?;
        let now = SystemTime::now();
        let until = req
            .until
            .map(SystemTime::try_from)
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("until: {e}")))?;
        if until.is_some_and(|until| until <= now) {
            return Err(Status::invalid_argument("until: must be in the future"));
        }
        let lineage = self.lineage.clone();
        blocking(move || lineage.revoke_identity(&identity, until, now)).await?;
        tracing::warn!(identity = %req.identity, "identity revoked");
        Ok(())
    }

    /// Lifts a revocation.
    pub async fn unrevoke(&self, req: UnrevokeIdentityRequest) -> Result<(), Status> {
        let identity = self.identity(&req.identity)?;
        let lineage = self.lineage.clone();
        if blocking(move || lineage.unrevoke_identity(&identity)).await? {
            tracing::warn!(identity = %req.identity, "identity revocation lifted");
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "{} is not revoked",
                req.identity
            )))
        }
    }

    /// The revocations in force.
    pub async fn list(&self) -> Result<ListRevokedIdentitiesResponse, Status> {
        Ok(ListRevokedIdentitiesResponse {
            identities: self
                .revoked()
                .await?
                .into_iter()
                .map(|(identity, record)| RevokedIdentity {
                    identity,
                    revoked_at: Some(at(record.revoked_at).into()),
                    until: record.until.map(|until| at(until).into()),
                })
                .collect(),
        })
    }

    /// The revocations in force, by identity.
    pub async fn revoked(&self) -> Result<Vec<(String, RevocationRecord)>, Status> {
        let lineage = self.lineage.clone();
        blocking(move || lineage.revoked(SystemTime::now())).await
    }

    fn identity(&self, value: &str) -> Result<Identity, Status> {
        super::identity_in(value, &self.trust_domain)
    }
}

/// A revocation record's time.
pub fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))
}
