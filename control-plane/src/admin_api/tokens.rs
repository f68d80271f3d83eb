//! Join tokens: create, list, revoke.

use std::time::{Duration, SystemTime};

use tonic::Status;
use weft_api::admin::{
    CreateJoinTokenRequest, CreateJoinTokenResponse, JoinTokenInfo, ListJoinTokensResponse,
    RevokeJoinTokenRequest,
};
use weft_certs::TrustDomain;

use crate::identity_api::{RESERVED_NAMESPACE, is_reserved};
use crate::join_tokens::{self, JoinTokenError};
use crate::metrics::Metrics;
use crate::store::Store;

/// The join-token half of the admin API.
#[derive(Debug, Clone)]
pub struct TokenAdmin {
    store: Store,
    trust_domain: TrustDomain,
    default_ttl: Duration,
    metrics: Metrics,
}

impl TokenAdmin {
    /// Issues tokens of `trust_domain` into `store`.
    pub fn new(
        store: Store,
        trust_domain: TrustDomain,
        default_ttl: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            trust_domain,
            default_ttl,
            metrics,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, JoinTokenError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(|e| match e {
                JoinTokenError::Ttl => Status::invalid_argument(format!("ttl_seconds: {e}")),
                other => Status::internal(other.to_string()),
            })
    }

    pub async fn create(
        &self,
        req: CreateJoinTokenRequest,
    ) -> Result<CreateJoinTokenResponse, Status> {
        let identity = super::identity_in(&req.identity, &self.trust_domain)?;
        if is_reserved(&identity) {
            return Err(Status::invalid_argument(format!(
                "identity: namespace {RESERVED_NAMESPACE} is reserved for the control plane"
            )));
        }
        let ttl = match req.ttl_seconds {
            0 => self.default_ttl,
            secs => Duration::from_secs(secs),
        };
        let namespace = identity.namespace().to_string();
        let max_uses = (req.max_uses > 0).then_some(req.max_uses);
        let new = self
            .blocking(move |store| {
                join_tokens::create(store, &identity, ttl, max_uses, SystemTime::now())
            })
            .await?;
        self.metrics
            .join_tokens_created
            .with_label_values(&[&namespace])
            .inc();
        Ok(CreateJoinTokenResponse {
            token: new.token,
            id: new.id,
            expires_at: Some(new.expires_at.into()),
        })
    }

    pub async fn list(&self) -> Result<ListJoinTokensResponse, Status> {
        let tokens = self
            .blocking(|store| join_tokens::list(store, SystemTime::now()))
            .await?;
        Ok(ListJoinTokensResponse {
            tokens: tokens
                .into_iter()
                .map(|t| JoinTokenInfo {
                    id: t.id,
                    identity: t.identity,
                    expires_at: Some(t.expires_at.into()),
                    uses: t.uses,
                    max_uses: t.max_uses.unwrap_or(0),
                    revoked_at: t.revoked_at.map(Into::into),
                })
                .collect(),
        })
    }

    pub async fn revoke(&self, req: RevokeJoinTokenRequest) -> Result<(), Status> {
        let id = req.id;
        let shown = id.clone();
        if self
            .blocking(move |store| join_tokens::revoke(store, &id, SystemTime::now()))
            .await?
        {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "no join token with id {shown:?}"
            )))
        }
    }
}
