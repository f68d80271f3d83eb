//! `weft.admin.v1.Admin`: the operator API behind `weftctl`.

mod identities;
mod proxies;
mod resources;
mod tokens;

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use weft_api::admin::admin_server::Admin;
use weft_api::admin::{
    ApplyRequest, ApplyResponse, CreateJoinTokenRequest, CreateJoinTokenResponse, DeleteRequest,
    DeleteResponse, GetRequest, ListJoinTokensRequest, ListJoinTokensResponse, ListRequest,
    ListResponse, ListRevokedIdentitiesRequest, ListRevokedIdentitiesResponse, ProxyConfigRequest,
    ProxyConfigResponse, ProxyMetricsRequest, ProxyMetricsResponse, ProxyStatusRequest,
    ProxyStatusResponse, Resource, RevokeIdentityRequest, RevokeIdentityResponse,
    RevokeJoinTokenRequest, RevokeJoinTokenResponse, RotateRequest, RotateResponse, TapRequest,
    UnrevokeIdentityRequest, UnrevokeIdentityResponse, WatchEvent, WatchRequest,
};

pub use self::identities::IdentityAdmin;
pub use self::proxies::ProxyAccess;
pub use self::resources::ResourceAdmin;
pub use self::tokens::TokenAdmin;
use std::time::SystemTime;

use weft_certs::Identity;

use crate::admin_credential::AdminCredential;
use crate::discovery::ProxyRegistry;
use crate::tls_incoming::PeerInfo;
use crate::trust::{RotationError, Trust};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    tokens: TokenAdmin,
    identities: IdentityAdmin,
    resources: ResourceAdmin,
    proxies: Arc<ProxyRegistry>,
    access: ProxyAccess,
    trust: Arc<Trust>,
}

/// Rejects calls that prove neither an admin identity (a client certificate) nor the admin
/// credential (a bearer token).
#[derive(Debug, Clone)]
pub struct RequireAdmin {
    credential: AdminCredential,
    identities: Arc<[Identity]>,
}

// === impl RequireAdmin ===

impl RequireAdmin {
    /// Accepts `credential` as a bearer token, and clients presenting a valid certificate of one
    /// of `identities`.
    pub fn new(credential: AdminCredential, identities: Vec<Identity>) -> Self {
        Self {
            credential,
            identities: identities.into(),
        }
    }
}

impl Interceptor for RequireAdmin {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(PeerInfo {
            identity: Some(identity),
            not_after: Some(not_after),
            ..
        }) = request.extensions().get::<PeerInfo>()
            && self.identities.contains(identity)
            && *not_after > SystemTime::now()
        {
            return Ok(request);
        }
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing authorization: Bearer <admin token>, or an admin client certificate",
            )
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
    /// The admin API over its parts.
    pub fn new(
        tokens: TokenAdmin,
        identities: IdentityAdmin,
        resources: ResourceAdmin,
        proxies: Arc<ProxyRegistry>,
        access: ProxyAccess,
        trust: Arc<Trust>,
    ) -> Self {
        Self {
            tokens,
            identities,
            resources,
            proxies,
            access,
            trust,
        }
    }
}

/// `value` as an identity of `trust_domain`, or INVALID_ARGUMENT naming the field.
fn identity_in(value: &str, trust_domain: &weft_certs::TrustDomain) -> Result<Identity, Status> {
    let identity: Identity = value
        .parse()
        .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
    if identity.trust_domain() != trust_domain {
        return Err(Status::invalid_argument(format!(
            "identity: {identity} is outside this control plane's trust domain {trust_domain}"
        )));
    }
    Ok(identity)
}

/// The gRPC status of a rotation not done.
fn rotation_status(error: RotationError) -> Status {
    match error {
        RotationError::Precondition(message) => Status::failed_precondition(message),
        RotationError::InvalidKey(message) => {
            Status::invalid_argument(format!("anchor_key: {message}"))
        }
        RotationError::Internal(message) => Status::internal(message),
    }
}

/// The stream of a Watch call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.resources
            .apply(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Resource>, Status> {
        self.resources.get(request.into_inner()).map(Response::new)
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.resources.list(request.into_inner()).map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.resources
            .delete(request.into_inner())
            .await
            .map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        self.resources
            .watch(request.into_inner())
            .map(Response::new)
    }

    async fn proxy_status(
        &self,
        _request: Request<ProxyStatusRequest>,
    ) -> Result<Response<ProxyStatusResponse>, Status> {
        let revoked = self.identities.revoked().await?;
        let mut proxies = self.proxies.status();
        for proxy in &mut proxies {
            if let Some((_, record)) = revoked.iter().find(|(id, _)| *id == proxy.identity) {
                proxy.revoked = match record.until {
                    Some(until) => format!(
                        "revoked until {}",
                        humantime::format_rfc3339_seconds(identities::at(until))
                    ),
                    None => "revoked".to_string(),
                };
            }
        }
        Ok(Response::new(ProxyStatusResponse { proxies }))
    }

    type TapStream = proxies::TapStream;

    async fn tap(&self, request: Request<TapRequest>) -> Result<Response<Self::TapStream>, Status> {
        Ok(Response::new(self.access.tap(request.into_inner()).await?))
    }

    async fn proxy_config(
        &self,
        request: Request<ProxyConfigRequest>,
    ) -> Result<Response<ProxyConfigResponse>, Status> {
        Ok(Response::new(
            self.access.config(request.into_inner().selector).await?,
        ))
    }

    async fn proxy_metrics(
        &self,
        request: Request<ProxyMetricsRequest>,
    ) -> Result<Response<ProxyMetricsResponse>, Status> {
        Ok(Response::new(
            self.access.metrics(request.into_inner()).await?,
        ))
    }

    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        self.tokens
            .create(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_join_tokens(
        &self,
        _request: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        self.tokens.list().await.map(Response::new)
    }

    async fn revoke_identity(
        &self,
        request: Request<RevokeIdentityRequest>,
    ) -> Result<Response<RevokeIdentityResponse>, Status> {
        self.identities.revoke(request.into_inner()).await?;
        Ok(Response::new(RevokeIdentityResponse {}))
    }

    async fn unrevoke_identity(
        &self,
        request: Request<UnrevokeIdentityRequest>,
    ) -> Result<Response<UnrevokeIdentityResponse>, Status> {
        self.identities.unrevoke(request.into_inner()).await?;
        Ok(Response::new(UnrevokeIdentityResponse {}))
    }

    async fn list_revoked_identities(
        &self,
        _request: Request<ListRevokedIdentitiesRequest>,
    ) -> Result<Response<ListRevokedIdentitiesResponse>, Status> {
        self.identities.list().await.map(Response::new)
    }

    async fn rotate_issuer(
        &self,
        request: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        let key = Some(request.into_inner().anchor_key_pem).filter(|key| !key.is_empty());
        let message = self
            .trust
            .rotate_issuer(key)
            .await
            .map_err(rotation_status)?;
        Ok(Response::new(RotateResponse { message }))
    }

    async fn rotate_anchor(
        &self,
        _request: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        let message = self
            .trust
            .rotate_anchor(&self.proxies)
            .await
            .map_err(rotation_status)?;
        Ok(Response::new(RotateResponse { message }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<RevokeJoinTokenRequest>,
    ) -> Result<Response<RevokeJoinTokenResponse>, Status> {
        self.tokens.revoke(request.into_inner()).await?;
        Ok(Response::new(RevokeJoinTokenResponse {}))
    }
}
