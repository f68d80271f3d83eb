//! `weft.identity.v1.Identity`: signs proxies' CSRs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tonic::{Request, Response, Status};
use weft_api::identity::identity_server::Identity as IdentityService;
use weft_api::identity::{CertifyRequest, CertifyResponse};
use weft_certs::{AuthorityError, CertificateRequest, CsrError, Identity};

use crate::join_tokens::{self, JoinTokenError};
use crate::limits::RateLimit;
use crate::lineage::{Issue, Lineage, LineageError, Proof};
use crate::metrics::Metrics;
use crate::service_account_tokens::TokenReviewer;
use crate::tls_incoming::PeerInfo;
use crate::trust::Trust;

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    trust: Arc<Trust>,
    lineage: Lineage,
    leaf_lifetime: Duration,
    rate: Arc<RateLimit>,
    metrics: Metrics,
    /// Set on Kubernetes: ServiceAccount tokens prove identities too.
    reviewer: Option<TokenReviewer>,
}

impl IdentityApi {
    /// Signs with the issuer in force in `trust` for `leaf_lifetime`, checking proofs against
    /// `lineage` and recording every certificate there; callers beyond `rate` are told to come
    /// back later.
    pub fn new(
        trust: Arc<Trust>,
        lineage: Lineage,
        leaf_lifetime: Duration,
        rate: RateLimit,
        metrics: Metrics,
    ) -> Self {
        Self {
            trust,
            lineage,
            leaf_lifetime,
            rate: Arc::new(rate),
            metrics,
            reviewer: None,
        }
    }

    /// Accepts Kubernetes ServiceAccount tokens besides join tokens, reviewed by `reviewer`.
    pub fn with_service_account_tokens(mut self, reviewer: TokenReviewer) -> Self {
        self.reviewer = Some(reviewer);
        self
    }

    async fn certify(
        &self,
        peer: Option<&PeerInfo>,
        req: CertifyRequest,
    ) -> Result<CertifyResponse, Status> {
        if let Some(peer) = peer {
            // Before any work: signing is what an attacker would make us do.
            self.rate.take(peer.remote.ip()).map_err(|exceeded| {
                Status::resource_exhausted(format!(
                    "Certify rate limit of {exceeded} reached; retry later"
                ))
            })?;
        }
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
        let proof = match proof(peer, req.token, now)? {
            Presented::Proof(proof) => proof,
            Presented::OtherToken(token) => match &self.reviewer {
                Some(reviewer) => Proof::ServiceAccount(reviewer.review(&token).await?),
                None => {
                    return Err(Status::unauthenticated(
                        "not a join token (weftjt_…), and this control plane reviews no Kubernetes ServiceAccount tokens (it has no --kubeconfig and is not in a cluster)",
                    ));
                }
            },
        };
        let proven = self.lineage.check(&proof, now).await.map_err(refusal)?;
        csr.require_identity(&proven).map_err(|e| match e {
            CsrError::NotProven { .. } => Status::permission_denied(e.to_string()),
            other => Status::invalid_argument(other.to_string()),
        })?;
        let issued = self
            .trust
            .issuer()
            .sign(&csr, self.leaf_lifetime, now)
            .map_err(|e| match e {
                AuthorityError::IssuerExpired(_) => Status::failed_precondition(e.to_string()),
                other => Status::permission_denied(other.to_string()),
            })?;
        let serial = issued
            .chain
            .first()
            .and_then(weft_certs::serial_of)
            .ok_or_else(|| Status::internal("the issued certificate has no readable serial"))?;
        // Handed out only once its lineage is on disk: a revocation must reach it.
        let issue = Issue {
            identity: proven.clone(),
            proof,
            serial,
            not_after: issued.not_after,
        };
        self.lineage.record(issue, now).await.map_err(refusal)?;
        // Counted by result; logged at debug only, as callers decide how often.
        tracing::debug!(identity = %proven, valid_until = ?issued.not_after, "certified");
        Ok(CertifyResponse {
            chain: issued.chain.into_iter().map(|cert| cert.to_vec()).collect(),
            valid_until: Some(prost_types::Timestamp::from(issued.not_after)),
        })
    }
}

/// What a caller presented to prove who it is.
enum Presented {
    /// Its current certificate, or a join token.
    Proof(Proof),
    /// A token that is not a join token: a Kubernetes ServiceAccount token, if anything.
    OtherToken(String),
}

/// How the caller proves who it is: the token it sent, if any (a proxy sends one only when
/// renewal by certificate was refused, so the token must then be what counts); otherwise its
/// current certificate if still valid (renewal).
fn proof(peer: Option<&PeerInfo>, token: String, now: SystemTime) -> Result<Presented, Status> {
    if !token.is_empty() {
        if join_tokens::is_join_token(&token) {
            return Ok(Presented::Proof(Proof::Token(token)));
        }
        return Ok(Presented::OtherToken(token));
    }
    if let Some(PeerInfo {
        identity: Some(identity),
        not_after: Some(not_after),
        serial: Some(serial),
        ..
    }) = peer
        && *not_after > now
    {
        return Ok(Presented::Proof(Proof::Certificate {
            serial: serial.clone(),
            identity: identity.clone(),
        }));
    }
    Err(Status::unauthenticated(
        "no token and no valid client certificate: prove the identity with a join token or a ServiceAccount token",
    ))
}

/// The gRPC status of a refusal: an unproven caller is UNAUTHENTICATED (a proxy then falls back
/// to its token), a proven one that may not have a certificate PERMISSION_DENIED.
fn refusal(error: LineageError) -> Status {
    match error {
        LineageError::Token(JoinTokenError::Corrupt(_) | JoinTokenError::Store(_))
        | LineageError::Store(_) => Status::internal(error.to_string()),
        LineageError::Token(_)
        | LineageError::NoLineage { .. }
        | LineageError::ServiceAccountRenewal { .. } => Status::unauthenticated(error.to_string()),
        LineageError::IdentityRevoked { .. } | LineageError::TokenRevoked { .. } => {
            Status::permission_denied(error.to_string())
        }
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
            tracing::debug!(remote = ?peer.map(|p| p.remote), code = label, message = status.message(), "certify refused");
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
        tonic::Code::ResourceExhausted => "resource_exhausted",
        _ => "other",
    }
}
