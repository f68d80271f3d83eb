//! Reaching the proxies for an operator: `Tap` merges the live request streams of the selected
//! proxies, `ProxyConfig` fetches one proxy's configuration. The control plane calls each
//! proxy's tap API over mTLS with its own identity, checking the proxy's identity in turn.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;
use weft_api::admin::{
    ProxyConfigResponse, ProxyMetricsRequest, ProxyMetricsResponse, ProxySamples, ProxySelector,
    TapRequest,
};
use weft_api::client::ControlPlaneTarget;
use weft_api::tap::tap_client::TapClient;
use weft_api::tap::{ConfigRequest, TapEvent, tap_event};

use crate::discovery::{ConnectedProxy, ProxyRegistry};

/// Events of all tapped proxies waiting for the operator's client.
const MERGED_BACKLOG: usize = 1024;
/// Requests one tap shows at most (the proxies' own bound).
const MAX_LIMIT: u32 = 10_000;
/// Proxies one tap (or metrics read) reaches at most: it is for looking, not for bulk export.
const MAX_TAPPED: usize = 64;
/// The largest answer read from one proxy (its metrics, its configuration).
const MAX_PROXY_ANSWER: usize = 16 << 20;
/// A proxy that has not answered a tap or config call by then is left out (tap) or reported.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A merged stream of tap events.
pub type TapStream = Pin<Box<dyn Stream<Item = Result<TapEvent, Status>> + Send>>;

/// Which proxies an operator means.
#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Namespace(String),
    ServiceAccount { namespace: String, name: String },
    Pod { namespace: String, name: String },
    Address(IpAddr),
    All,
}

/// Calls the proxies' tap APIs.
#[derive(Debug, Clone)]
pub struct ProxyAccess {
    registry: Arc<ProxyRegistry>,
    /// The control plane's own certificate as a client; proxies' identities verified.
    tls: Arc<rustls::ClientConfig>,
}

impl ProxyAccess {
    pub fn new(registry: Arc<ProxyRegistry>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self { registry, tls }
    }

    /// The selected proxies' requests, merged, until `limit` requests have ended.
    pub async fn tap(&self, request: TapRequest) -> Result<TapStream, Status> {
        let selector = selector_of(request.selector)?;
        let mut observe = request.observe.unwrap_or_default();
        if observe.limit == 0 || observe.limit > MAX_LIMIT {
            observe.limit = MAX_LIMIT;
        }
        let limit = observe.limit;
        let proxies = self.selected_at_most(&selector, "tap", "select a service account or pod")?;
        if matches!(selector, Selector::Pod { .. }) && proxies.len() > 1 {
            // A pod's name is what its proxy says: two saying the same is not one pod.
            return Err(several(&selector, &proxies));
        }
        let answers = self
            .call_each(&proxies, |mut client| {
                let observe = observe.clone();
                async move { client.observe(observe).await }
            })
            .await;
        let mut opened = Vec::new();
        let mut failures = Vec::new();
        for (name, answer) in answers {
            match answer {
                Ok(stream) => opened.push((name, stream)),
                Err(status) => {
                    tracing::debug!(proxy = %name, %status, "tap: cannot tap the proxy");
                    failures.push(format!("{name}: {}", status.message()));
                }
            }
        }
        if opened.is_empty() {
            return Err(Status::unavailable(format!(
                "no selected proxy could be tapped: {}",
                failures.join("; ")
            )));
        }
        let (tx, rx) = mpsc::channel(MERGED_BACKLOG);
        for (name, mut upstream) in opened {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        next = upstream.message() => next,
                        // The operator went away: dropping the call detaches from the proxy.
                        () = tx.closed() => return,
                    };
                    let mut event = match next {
                        Ok(Some(event)) => event,
                        Ok(None) => return,
                        Err(status) => {
                            tracing::debug!(proxy = %name, %status, "tap: the proxy's stream failed");
                            return;
                        }
                    };
                    event.proxy.clone_from(&name);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Ends when every proxy's stream has, or once `limit` requests have ended; dropping the
        // merged stream then ends the calls to the proxies.
        let merged = ReceiverStream::new(rx);
        let stream =
            futures_util::stream::unfold((merged, 0), move |(mut merged, ended)| async move {
                if ended >= limit {
                    return None;
                }
                let event = futures_util::StreamExt::next(&mut merged).await?;
                let end = matches!(
                    &event,
                    Ok(TapEvent {
                        event: Some(tap_event::Event::ResponseEnd(_)),
                        ..
                    })
                );
                Some((event, (merged, ended + u32::from(end))))
            });
        Ok(Box::pin(stream))
    }

    /// The configuration of the one proxy `selector` picks.
    pub async fn config(
        &self,
        selector: Option<ProxySelector>,
    ) -> Result<ProxyConfigResponse, Status> {
        let selector = selector_of(selector)?;
        let mut proxies = self.selected(&selector)?;
        if proxies.len() > 1 {
            return Err(several(&selector, &proxies));
        }
        let proxy = proxies.remove(0);
        let call = async {
            let mut client = self.client(&proxy).await?;
            client.config(ConfigRequest {}).await
        };
        let json = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| Status::deadline_exceeded(format!("{}: no answer", proxy.name())))??
            .into_inner()
            .json;
        Ok(ProxyConfigResponse {
            proxy: proxy.name(),
            json,
        })
    }

    /// The selected proxies' samples of the requested families, each proxy's read at once and
    /// within [`CALL_TIMEOUT`]; one that fails is listed with its error.
    pub async fn metrics(
        &self,
        request: ProxyMetricsRequest,
    ) -> Result<ProxyMetricsResponse, Status> {
        let selector = selector_of(request.selector)?;
        let wanted = request.metrics.unwrap_or_default();
        if wanted.families.is_empty() {
            return Err(Status::invalid_argument(
                "metrics.families: name at least one",
            ));
        }
        let proxies = self.selected_at_most(&selector, "read", "or ask a Prometheus")?;
        let answers = self
            .call_each(&proxies, |mut client| {
                let wanted = wanted.clone();
                async move { client.metrics(wanted).await }
            })
            .await;
        let proxies = answers
            .into_iter()
            .map(|(proxy, answer)| match answer {
                Ok(response) => ProxySamples {
                    proxy,
                    samples: response.samples,
                    error: String::new(),
                },
                Err(status) => ProxySamples {
                    proxy,
                    samples: Vec::new(),
                    error: status.message().to_string(),
                },
            })
            .collect();
        Ok(ProxyMetricsResponse { proxies })
    }

    /// The proxies `selector` picks, unless there are more than [`MAX_TAPPED`] to `verb`: then
    /// INVALID_ARGUMENT, with `advice`.
    fn selected_at_most(
        &self,
        selector: &Selector,
        verb: &str,
        advice: &str,
    ) -> Result<Vec<ConnectedProxy>, Status> {
        let proxies = self.selected(selector)?;
        if proxies.len() > MAX_TAPPED {
            return Err(Status::invalid_argument(format!(
                "{} proxies match {}; {verb} at most {MAX_TAPPED} at once ({advice})",
                proxies.len(),
                describe(selector),
            )));
        }
        Ok(proxies)
    }

    /// `call` on each of `proxies`' tap APIs, all at once and each within [`CALL_TIMEOUT`]: one
    /// that does not answer holds up none of the others. Each answer with its proxy's name.
    async fn call_each<T, F, Fut>(
        &self,
        proxies: &[ConnectedProxy],
        call: F,
    ) -> Vec<(String, Result<T, Status>)>
    where
        F: Fn(TapClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let calls = proxies.iter().map(|proxy| {
            let call = &call;
            async move {
                let answer = tokio::time::timeout(CALL_TIMEOUT, async {
                    call(self.client(proxy).await?).await
                })
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer")));
                (proxy.name(), answer.map(tonic::Response::into_inner))
            }
        });
        futures_util::future::join_all(calls).await
    }

    fn selected(&self, selector: &Selector) -> Result<Vec<ConnectedProxy>, Status> {
        let proxies = self.registry.select(|proxy| selector.picks(proxy));
        if proxies.is_empty() {
            // Each replica knows the proxies connected to it.
            return Err(Status::not_found(format!(
                "no proxy connected to this control plane replica matches {}",
                describe(selector)
            )));
        }
        Ok(proxies)
    }

    async fn client(&self, proxy: &ConnectedProxy) -> Result<TapClient<Channel>, Status> {
        let Some(addr) = proxy.tap_addr else {
            return Err(Status::failed_precondition(format!(
                "{} serves no tap API (WEFT_PROXY_TAP_ADDR=off, or an older proxy)",
                proxy.name()
            )));
        };
        let target = ControlPlaneTarget {
            addr: addr.to_string(),
            server_name: proxy.identity.dns_name(),
            tls: self.tls.clone(),
        };
        let channel = target
            .channel()
            .await
            .map_err(|e| Status::unavailable(format!("{}: {e}", proxy.name())))?;
        Ok(TapClient::new(channel).max_decoding_message_size(MAX_PROXY_ANSWER))
    }
}

impl Selector {
    fn picks(&self, proxy: &ConnectedProxy) -> bool {
        let identity = &proxy.identity;
        match self {
            Self::Namespace(namespace) => identity.namespace() == namespace,
            Self::ServiceAccount { namespace, name } => {
                identity.namespace() == namespace && identity.service_account() == name
            }
            Self::Pod { namespace, name } => {
                identity.namespace() == namespace && proxy.pod == *name
            }
            Self::Address(ip) => proxy.remote.ip() == *ip,
            Self::All => true,
        }
    }
}

/// The wire selector as the domain's: INVALID_ARGUMENT naming the field otherwise.
fn selector_of(wire: Option<ProxySelector>) -> Result<Selector, Status> {
    let wire = wire.ok_or_else(|| Status::invalid_argument("selector: required"))?;
    if wire.kind == "all" {
        return Ok(Selector::All);
    }
    let name = wire.name.trim().to_string();
    if name.is_empty() {
        return Err(Status::invalid_argument("selector.name: required"));
    }
    let namespace = || {
        let namespace = wire.namespace.trim();
        if namespace.is_empty() {
            Err(Status::invalid_argument(format!(
                "selector.namespace: required for {}",
                wire.kind
            )))
        } else {
            Ok(namespace.to_string())
        }
    };
    Ok(match wire.kind.as_str() {
        "ns" | "namespace" => Selector::Namespace(name),
        "sa" | "serviceaccount" => Selector::ServiceAccount {
            namespace: namespace()?,
            name,
        },
        "pod" | "po" => Selector::Pod {
            namespace: namespace()?,
            name,
        },
        "addr" => Selector::Address(name.parse().map_err(|_| {
            Status::invalid_argument(format!("selector.name {name:?}: not an IP address"))
        })?),
        other => {
            return Err(Status::invalid_argument(format!(
                "selector.kind {other:?}: must be ns, sa, pod, addr or all"
            )));
        }
    })
}

/// FAILED_PRECONDITION: `selector` picks several `proxies` where one is wanted.
fn several(selector: &Selector, proxies: &[ConnectedProxy]) -> Status {
    let names: Vec<String> = proxies.iter().take(5).map(ConnectedProxy::name).collect();
    Status::failed_precondition(format!(
        "{} proxies match {}: {}; select one pod",
        proxies.len(),
        describe(selector),
        names.join(", ")
    ))
}

fn describe(selector: &Selector) -> String {
    match selector {
        Selector::Namespace(namespace) => format!("ns/{namespace}"),
        Selector::ServiceAccount { namespace, name } => {
            format!("sa/{name} in namespace {namespace}")
        }
        Selector::Pod { namespace, name } => format!("pod/{name} in namespace {namespace}"),
        Selector::Address(ip) => format!("addr/{ip}"),
        Selector::All => "any proxy".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(kind: &str, name: &str, namespace: &str) -> Option<ProxySelector> {
        Some(ProxySelector {
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
        })
    }

    #[test]
    fn selectors_are_checked_field_by_field() {
        assert_eq!(
            selector_of(wire("sa", "web", "shop")).unwrap(),
            Selector::ServiceAccount {
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            selector_of(wire("addr", "10.0.0.7", "")).unwrap(),
            Selector::Address([10, 0, 0, 7].into())
        );
        for (wire, said) in [
            (None, "selector: required"),
            (wire("deploy", "web", "shop"), "selector.kind \"deploy\""),
            (wire("pod", "", "shop"), "selector.name: required"),
            (
                wire("pod", "web-1", ""),
                "selector.namespace: required for pod",
            ),
            (wire("addr", "web", ""), "not an IP address"),
        ] {
            let status = selector_of(wire).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(said), "{}", status.message());
        }
    }
}
