//! What a caller can make the control plane or a proxy hold is bounded, and what is refused is
//! refused with a clear status.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;
use weft_api::client::ControlPlaneTarget;
use weft_api::discovery::discovery_client::DiscoveryClient;
use weft_api::discovery::{OutboundSnapshot, WatchOutboundRequest};
use weft_tests::client::MeshClient;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec, metric_value};

use crate::CLIENT_ID;

/// A discovery client holding a certificate of `identity`, as a proxy would.
async fn discovery(cp: &ControlPlane, identity: &str) -> DiscoveryClient<Channel> {
    let certs = cp.credential(identity).await;
    let tls = weft_certs::client_config(&cp.anchors(), certs, &[weft_certs::ALPN_H2]).unwrap();
    let target = ControlPlaneTarget {
        addr: cp.proxy_api.to_string(),
        server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
        tls: Arc::new(tls),
    };
    DiscoveryClient::new(target.channel().await.unwrap())
}

async fn watch(
    client: &mut DiscoveryClient<Channel>,
    n: usize,
) -> Result<tonic::Streaming<OutboundSnapshot>, tonic::Status> {
    let request = WatchOutboundRequest {
        destination: format!("svc-{n}.shop:80"),
    };
    client
        .watch_outbound(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_watches_are_capped_per_identity_and_in_total() {
    weft_tests::init();
    let cp = ControlPlane::start_with(
        "24h",
        &["--max-watches-per-identity", "3", "--max-watches", "5"],
    )
    .await;
    let mut web = discovery(&cp, "spiffe://cluster.local/ns/shop/sa/web").await;
    let mut api = discovery(&cp, "spiffe://cluster.local/ns/shop/sa/api").await;
    let mut held = Vec::new();
    for n in 0..3 {
        held.push(watch(&mut web, n).await.unwrap());
    }
    let refused = watch(&mut web, 3).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("per identity"), "{refused:?}");
    for n in 0..2 {
        held.push(watch(&mut api, n).await.unwrap());
    }
    let refused = watch(&mut api, 2).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("in total"), "{refused:?}");

    // A watch that ends gives its place back.
    drop(held.remove(0));
    weft_tests::eventually("a freed watch", Duration::from_secs(10), || {
        let mut web = web.clone();
        async move { watch(&mut web, 9).await.ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_discovery_refused_is_not_asked_again_at_once() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    let app = MeshClient::http1(client.outbound);
    // A host name longer than any DNS name: the control plane refuses to watch it.
    let authority = format!("{}.example:80", "x".repeat(300));
    for _ in 0..5 {
        let response = app
            .send("GET", &authority, "/", Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
    }
    let metrics = weft_tests::client::http_get(cp.metrics, "/metrics")
        .await
        .unwrap()
        .1;
    let refused = metric_value(
        &metrics,
        "weft_control_discovery_watches_total{result=\"invalid\"}",
    );
    assert_eq!(refused, Some(1.0), "{metrics}");
}
