//! Identity on Kubernetes: a pod proves its ServiceAccount with a projected token (audience
//! `weft`), which the API server reviews (TokenReview). The namespace and ServiceAccount come
//! from the review, never from the request; outcomes are cached briefly, so calls in a row with
//! one token (a proxy retrying, restarting) cost the API server one review. Concurrent first
//! calls with the same token may each review it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use tonic::Status;
use weft_certs::{Identity, TrustDomain};

/// The audience a proxy's token must be minted for (the injector projects it so): a token for
/// the API server, or for another system, does not prove anything to Weft.
pub const AUDIENCE: &str = "weft";
/// How long a review may take: Certify must not hang on an API server that does not answer.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a review's outcome is reused.
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Reviews remembered at most: past it the cache is emptied, never grown.
const CACHE_MAX: usize = 10_000;
/// What the API server calls a ServiceAccount: `system:serviceaccount:<namespace>:<name>`.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// Why a ServiceAccount token proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server does not accept the token (unknown, expired, or for another audience).
    #[error("ServiceAccount token refused by the Kubernetes API: {0}")]
    NotAuthenticated(String),
    /// The API server accepted the token, but not for Weft's audience.
    #[error("ServiceAccount token is for audiences {0:?}, not {AUDIENCE:?}")]
    WrongAudience(Vec<String>),
    /// The token is a user's or a node's, not a ServiceAccount's.
    #[error("{0:?} is not a ServiceAccount")]
    NotServiceAccount(String),
    /// The ServiceAccount's name cannot be a SPIFFE identity.
    #[error("ServiceAccount {0:?}: {1}")]
    BadName(String, String),
    /// The review could not be made.
    #[error("cannot review the ServiceAccount token: {0}")]
    Unavailable(String),
}

impl From<ReviewError> for Status {
    fn from(error: ReviewError) -> Status {
        match error {
            ReviewError::NotAuthenticated(_) | ReviewError::WrongAudience(_) => {
                Status::unauthenticated(error.to_string())
            }
            ReviewError::NotServiceAccount(_) | ReviewError::BadName(..) => {
                Status::permission_denied(error.to_string())
            }
            ReviewError::Unavailable(_) => Status::unavailable(error.to_string()),
        }
    }
}

/// Reviews ServiceAccount tokens with the Kubernetes API.
#[derive(Clone)]
pub struct TokenReviewer {
    reviews: Api<TokenReview>,
    trust_domain: TrustDomain,
    cache: Arc<Mutex<HashMap<TokenDigest, Reviewed>>>,
}

/// A token's SHA-256: the cache never holds a token itself.
type TokenDigest = Vec<u8>;
/// When a token was reviewed, and the outcome.
type Reviewed = (Instant, Result<Identity, ReviewError>);

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// Reviews with `client`'s API server, issuing identities in `trust_domain`.
    pub fn new(client: kube::Client, trust_domain: TrustDomain) -> Self {
        Self {
            reviews: Api::all(client),
            trust_domain,
            cache: Arc::default(),
        }
    }

    /// The identity `token` proves: `spiffe://<td>/ns/<namespace>/sa/<service account>` of the
    /// ServiceAccount the API server says it belongs to.
    pub async fn review(&self, token: &str) -> Result<Identity, ReviewError> {
        let key = digest::digest(&digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec();
        let now = Instant::now();
        if let Some((at, outcome)) = self.cache.lock().get(&key)
            && now.duration_since(*at) < CACHE_TTL
        {
            return outcome.clone();
        }
        let outcome = self.ask(token).await;
        // An API server that could not answer is asked again next time.
        if !matches!(outcome, Err(ReviewError::Unavailable(_))) {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (now, outcome.clone()));
        }
        outcome
    }

    async fn ask(&self, token: &str) -> Result<Identity, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let reviewed = tokio::time::timeout(
            REVIEW_TIMEOUT,
            self.reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            ReviewError::Unavailable(format!(
                "the Kubernetes API did not answer within {}s",
                REVIEW_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::NotAuthenticated(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".to_string()),
            ));
        }
        // An API server that ignores the audience asked for must not let another system's
        // token through.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(ReviewError::WrongAudience(audiences));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_identity(&self.trust_domain, &username)
    }
}

/// The identity of `system:serviceaccount:<namespace>:<name>`.
fn service_account_identity(
    trust_domain: &TrustDomain,
    username: &str,
) -> Result<Identity, ReviewError> {
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_USER)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| ReviewError::NotServiceAccount(username.to_string()))?;
    Identity::new(trust_domain.clone(), namespace, name)
        .map_err(|e| ReviewError::BadName(username.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_accounts_have_identities_and_each_failure_has_its_status() {
        let td = TrustDomain::cluster_local();
        assert_eq!(
            service_account_identity(&td, "system:serviceaccount:shop:web")
                .unwrap()
                .to_string(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        for username in [
            "admin",
            "system:node:worker-1",
            "system:serviceaccount:shop",
        ] {
            assert!(matches!(
                service_account_identity(&td, username),
                Err(ReviewError::NotServiceAccount(_))
            ));
        }
        assert!(matches!(
            service_account_identity(&td, "system:serviceaccount:shop:Web_1"),
            Err(ReviewError::BadName(..))
        ));
        let code = |e: ReviewError| Status::from(e).code();
        assert_eq!(
            code(ReviewError::NotAuthenticated("expired".into())),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(ReviewError::WrongAudience(vec![])),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(ReviewError::NotServiceAccount("admin".into())),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(ReviewError::Unavailable("refused".into())),
            tonic::Code::Unavailable
        );
    }
}
