//! `weft.identity.v1.Identity`: signs proxies' CSRs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tonic::{Request, Response, Status};
use weft_api::identity::identity_server::Identity as IdentityService;
use weft_api::identity::{CertifyRequest, CertifyResponse};
use weft_certs::{AuthorityError, CertificateRequest, CsrError, Identity, Issuer};

use crate::join_tokens::{self, JoinTokenError};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls_incoming::PeerInfo;

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    issuer: Arc<Issuer>,
    store: Store,
    leaf_lifetime: Duration,
    metrics: Metrics,
}

impl IdentityApi {
    /// Signs with `issuer` for `leaf_lifetime`, checking join tokens in `store`.
    pub fn new(
        issuer: Arc<Issuer>,
        store: Store,
        leaf_lifetime: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            issuer,
            store,
            leaf_lifetime,
            metrics,
        }
    }

    async fn certify(
        &self,
        peer: Option<&PeerInfo>,
        req: CertifyRequest,
    ) -> Result<CertifyResponse, Status> {
        let asked: Identity = req
            .identity
            .parse()
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        let csr = CertificateRequest::from_der(&req.csr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if csr.identity() != &asked {
            return Err(Status::invalid_argument(format!(
                "identity field {asked} does not match the CSR's {}",
                csr.identity()
            )));
        }
        if is_reserved(&asked) {
            return Err(Status::permission_denied(format!(
                "{asked} is in the reserved namespace {RESERVED_NAMESPACE}"
            )));
        }
        let now = SystemTime::now();
        let proven = self.proven_identity(peer, &req.token, now).await?;
        csr.require_identity(&proven).map_err(|e| match e {
            CsrError::NotProven { .. } => Status::permission_denied(e.to_string()),
            other => Status::invalid_argument(other.to_string()),
        })?;
        let issued = self
            .issuer
            .sign(&csr, self.leaf_lifetime, now)
            .map_err(|e| match e {
                AuthorityError::IssuerExpired(_) => Status::failed_precondition(e.to_string()),
                other => Status::permission_denied(other.to_string()),
            })?;
        tracing::info!(identity = %proven, valid_until = ?issued.not_after, "certified");
        Ok(CertifyResponse {
            chain: issued.chain.into_iter().map(|cert| cert.to_vec()).collect(),
            valid_until: Some(prost_types::Timestamp::from(issued.not_after)),
        })
    }

    /// Who the caller is: its current certificate if it presented a still-valid one (renewal),
    /// otherwise its join token.
    async fn proven_identity(
        &self,
        peer: Option<&PeerInfo>,
        token: &str,
        now: SystemTime,
    ) -> Result<Identity, Status> {
        if let Some(PeerInfo {
            identity: Some(identity),
            not_after: Some(not_after),
            ..
        }) = peer
            && *not_after > now
        {
            return Ok(identity.clone());
        }
        if token.is_empty() {
            return Err(Status::unauthenticated(
                "no join token and no valid client certificate: prove the identity with a token",
            ));
        }
        let store = self.store.clone();
        let token = token.to_string();
        let verified =
            tokio::task::spawn_blocking(move || join_tokens::verify(&store, &token, now))
                .await
                .map_err(|e| Status::internal(format!("token check failed: {e}")))?;
        verified.map_err(|e| match e {
            JoinTokenError::Unknown | JoinTokenError::Expired => {
                Status::unauthenticated(e.to_string())
            }
            other => Status::internal(other.to_string()),
        })
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let started = Instant::now();
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let result = self.certify(peer.as_ref(), request.into_inner()).await;
        self.metrics
            .certify_duration
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => "ok",
            Err(status) => code_name(status.code()),
        };
        self.metrics
            .certify_requests
            .with_label_values(&[label])
            .inc();
        if let Err(status) = &result {
            tracing::info!(remote = ?peer.map(|p| p.remote), code = label, message = status.message(), "certify refused");
        }
        result.map(Response::new)
    }
}

/// The control plane's own namespace: no workload may hold an identity in it, or it could pose
/// as the control plane (`spiffe://<td>/ns/weft/sa/weft-control`) to every proxy.
pub const RESERVED_NAMESPACE: &str = "weft";

/// True for identities only the control plane may hold.
pub fn is_reserved(identity: &Identity) -> bool {
    identity.namespace() == RESERVED_NAMESPACE
}

/// A stable, bounded label for a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::NotFound => "not_found",
        tonic::Code::Internal => "internal",
        tonic::Code::Unavailable => "unavailable",
        _ => "other",
    }
}
