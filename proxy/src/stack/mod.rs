//! The per-request HTTP stack of a destination, built from its policy as tower services:
//!
//! ```text
//! route (match) → header filters → mirror → timeout (request) → retry (budget)
//!   → timeout (each attempt) → split (weights) → balancer (P2C peak-EWMA or round robin,
//!   circuit breaking) → the endpoint's HTTP/2 connection
//! ```
//!
//! Layers are boxed into one service type, so a rule's stack is assembled from whichever of them
//! its policy asks for; each layer's state that must survive a policy update (balancers with
//! their latency and ejection state, retry budgets) lives in the destination's runtime and is
//! reused by the next stack.

mod balance;
mod error;
mod filters;
mod mirror;
mod rate_limit;
mod replay;
mod retry;
mod route;
mod split;
mod timeout;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

pub use self::error::ProxyError;
pub use self::rate_limit::TokenBucket;
pub use self::replay::ReplayBody;
pub use self::route::{DestinationRuntime, DestinationStack};
use crate::http_util::Body;

/// A request inside the stack: its body may be replayable.
pub type HttpRequest = Request<ReplayBody>;
/// A response inside the stack.
pub type HttpResponse = Response<Body>;
/// One layer's view of the layers below it.
pub type BoxHttp = BoxCloneSyncService<HttpRequest, HttpResponse, ProxyError>;
