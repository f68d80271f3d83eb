//! End-to-end tests: the real `weft-control` and `weft-proxy` binaries on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_endpoints;
mod authz;
mod bad_config;
mod check;
mod cluster;
mod drain;
mod fake_apiserver;
mod foreign;
mod gateway_api;
mod identity_api;
mod inbound_limits;
mod inbound_protocols;
mod install;
mod kube_play;
mod kubernetes;
mod limits;
mod netns;
mod outage;
mod pods;
mod policy;
mod policy_features;
mod prometheus;
mod proxy_init;
mod readiness;
mod refusals;
mod revocation;
mod rotation;
mod store_damage;
mod tap;
mod traces;
mod traffic;
mod trust_rotation;
mod upgrades;
mod webhook;

use weft_tests::apps::{App, start_echo_app};
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/api";
/// The authority the client app uses for the server app's HTTP API.
pub const HTTP_AUTHORITY: &str = "api.shop:8080";
/// The authority the client app uses for the server app's gRPC API.
pub const GRPC_AUTHORITY: &str = "api.shop:50051";

/// A control plane, an app behind its proxy ("api"), and a client proxy ("web") routing to it.
#[derive(Debug)]
pub struct Mesh {
    pub cp: ControlPlane,
    pub app: App,
    pub server: Proxy,
    pub client: Proxy,
}

impl Mesh {
    pub async fn start(leaf_lifetime: &str) -> Self {
        weft_tests::init();
        let cp = ControlPlane::start(leaf_lifetime).await;
        let app = start_echo_app().await;
        let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(app.port)).await;
        let client = Proxy::start(
            &cp,
            ProxySpec::new(CLIENT_ID)
                .route(HTTP_AUTHORITY, &server)
                .route(GRPC_AUTHORITY, &server),
        )
        .await;
        Self {
            cp,
            app,
            server,
            client,
        }
    }
}
