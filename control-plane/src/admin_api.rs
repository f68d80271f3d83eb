//! `weft.admin.v1.Admin`: the operator API behind `weftctl`.

use std::time::{Duration, SystemTime};

use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use weft_api::admin::admin_server::Admin;
use weft_api::admin::{
    CreateJoinTokenRequest, CreateJoinTokenResponse, JoinTokenInfo, ListJoinTokensRequest,
    ListJoinTokensResponse, RevokeJoinTokenRequest, RevokeJoinTokenResponse,
};
use weft_certs::{Identity, TrustDomain};

use crate::admin_credential::AdminCredential;
use crate::identity_api::{RESERVED_NAMESPACE, is_reserved};
use crate::join_tokens::{self, JoinTokenError};
use crate::metrics::Metrics;
use crate::store::Store;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    store: Store,
    trust_domain: TrustDomain,
    default_token_ttl: Duration,
    metrics: Metrics,
}

/// Rejects calls without the admin credential as a bearer token.
#[derive(Debug, Clone)]
pub struct RequireAdmin {
    credential: AdminCredential,
}

// === impl RequireAdmin ===

impl RequireAdmin {
    /// Accepts only `credential`.
    pub fn new(credential: AdminCredential) -> Self {
        Self { credential }
    }
}

impl Interceptor for RequireAdmin {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization: Bearer <admin token>")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization must be: Bearer <admin token>")
            })?;
        if !self.credential.matches(token.trim()) {
            return Err(Status::unauthenticated("admin token is not valid"));
        }
        Ok(request)
    }
}

// === impl AdminApi ===

impl AdminApi {
    /// Serves tokens of `trust_domain` from `store`.
    pub fn new(
        store: Store,
        trust_domain: TrustDomain,
        default_token_ttl: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            trust_domain,
            default_token_ttl,
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
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let req = request.into_inner();
        let identity: Identity = req
            .identity
            .parse()
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        if identity.trust_domain() != &self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "identity: {identity} is outside this control plane's trust domain {}",
                self.trust_domain
            )));
        }
        if is_reserved(&identity) {
            return Err(Status::invalid_argument(format!(
                "identity: namespace {RESERVED_NAMESPACE} is reserved for the control plane"
            )));
        }
        let ttl = match req.ttl_seconds {
            0 => self.default_token_ttl,
            secs => Duration::from_secs(secs),
        };
        let namespace = identity.namespace().to_string();
        let new = self
            .blocking(move |store| join_tokens::create(store, &identity, ttl, SystemTime::now()))
            .await?;
        self.metrics
            .join_tokens_created
            .with_label_values(&[&namespace])
            .inc();
        Ok(Response::new(CreateJoinTokenResponse {
            token: new.token,
            id: new.id,
            expires_at: Some(new.expires_at.into()),
        }))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        let tokens = self
            .blocking(|store| join_tokens::list(store, SystemTime::now()))
            .await?;
        Ok(Response::new(ListJoinTokensResponse {
            tokens: tokens
                .into_iter()
                .map(|t| JoinTokenInfo {
                    id: t.id,
                    identity: t.identity,
                    expires_at: Some(t.expires_at.into()),
                })
                .collect(),
        }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<RevokeJoinTokenRequest>,
    ) -> Result<Response<RevokeJoinTokenResponse>, Status> {
        let id = request.into_inner().id;
        let shown = id.clone();
        if self
            .blocking(move |store| join_tokens::revoke(store, &id, SystemTime::now()))
            .await?
        {
            Ok(Response::new(RevokeJoinTokenResponse {}))
        } else {
            Err(Status::not_found(format!(
                "no join token with id {shown:?}"
            )))
        }
    }
}
