//! `GET /config` on the admin server: the proxy's effective configuration and what discovery has
//! told it, as JSON. Nothing secret is in it: the token file is named, never read, and the
//! private key never leaves the certificate store.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Config;
use crate::destination::discovery::{DiscoveryClient, Resolved};
use crate::destination::{BackendSpec, Destination, InboundPolicy, PortSettings, RouteEntry};

/// The document `/config` serves.
pub fn render(config: &Config, discovery: &DiscoveryClient) -> String {
    let inbound = discovery.inbound_policy().borrow().clone();
    let document = json!({
        "identity": config.identity.to_string(),
        "pod": config.pod_name,
        "controlPlane": {
            "address": config.control_plane_addr,
            "identity": config.control_plane_identity.to_string(),
        },
        "tokenFile": config.token_path.display().to_string(),
        "listeners": {
            "inbound": config.inbound_addr.to_string(),
            "outbound": config.outbound_addr.to_string(),
            "admin": config.admin_addr.to_string(),
            "tap": config.tap_addr.map(|addr| addr.to_string()),
        },
        "tapIdentities": config.tap_identities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "telemetry": {
            "traceEndpoint": config.trace_endpoint,
            "traceSampling": config.trace_sampling,
            "accessLog": config.access_log,
            "logFormat": format!("{:?}", config.log_format),
        },
        "appPort": config.app_port,
        "settings": {
            "workers": config.workers,
            "shutdownGrace": duration(config.shutdown_grace),
            "shutdownEndpoint": config.shutdown_endpoint,
            "detectTimeout": duration(config.detect_timeout),
            "opaquePorts": config.opaque_ports,
            "maxReplayBytes": config.max_replay_bytes,
            "maxDestinations": config.max_destinations,
            "maxEndpoints": config.max_endpoints,
            "inboundLimits": {
                "maxHandshakes": config.inbound_limits.max_handshakes,
                "maxConnectionsPerIdentity": config.inbound_limits.max_connections_per_identity,
                "idleTimeout": duration(config.inbound_limits.idle_timeout),
                "maxConnectionAge": duration(config.inbound_limits.max_connection_age),
            },
            "defaultInboundPolicy": format!("{:?}", config.default_inbound_policy),
            "inboundMode": config.inbound_mode.map(|mode| format!("{mode:?}")),
        },
        "staticRoutes": config.static_routes.iter().map(|route| json!({
            "authority": &*route.authority,
            "address": route.address.to_string(),
            "identity": route.identity.to_string(),
            "opaque": route.opaque,
        })).collect::<Vec<_>>(),
        "discovery": {
            "meshNetworks": discovery
                .mesh_networks()
                .map(|mesh| mesh.cidrs().collect::<Vec<_>>()),
            "inbound": inbound.as_deref().map(inbound_policy),
            "outbound": discovery
                .watched()
                .into_iter()
                .map(|(name, resolved)| (name, resolution(&resolved)))
                .collect::<serde_json::Map<_, _>>(),
        },
    });
    serde_json::to_string_pretty(&document).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn resolution(resolved: &Resolved) -> Value {
    match resolved {
        Resolved::Pending => json!({"state": "pending"}),
        Resolved::NotFound => json!({"state": "outside the mesh"}),
        Resolved::Found(destination) => destination_view(destination),
    }
}

fn destination_view(destination: &Destination) -> Value {
    json!({
        "state": "found",
        "version": destination.version,
        "service": &*destination.service,
        "opaque": destination.opaque,
        "backends": destination.backends.iter().map(backend).collect::<Vec<_>>(),
        "routes": destination.routes.iter().map(|entry| route(entry, &destination.backends)).collect::<Vec<_>>(),
        "loadBalancer": format!("{:?}", destination.policy.load_balancer),
        "connectTimeout": destination.policy.connect_timeout.map(duration),
        "circuitBreaker": destination.policy.circuit_breaker.as_ref().map(|b| format!("{b:?}")),
        "retryBudget": destination.policy.retry_budget.as_ref().map(|b| format!("{b:?}")),
    })
}

fn backend(backend: &BackendSpec) -> Value {
    json!({
        "name": &*backend.name,
        "endpoints": backend.endpoints.iter().map(|e| json!({
            "address": e.address.to_string(),
            "identity": e.identity.to_string(),
            "weight": e.weight,
            "foreignSpiffe": e.foreign_spiffe,
        })).collect::<Vec<_>>(),
    })
}

fn route(entry: &RouteEntry, backends: &[BackendSpec]) -> Value {
    let rule = &entry.rule;
    json!({
        "route": &*entry.route,
        "matches": format!("{:?}", entry.matches),
        "backends": rule.backends.iter().map(|(index, weight)| json!({
            "backend": backends.get(*index).map(|b| &*b.name),
            "weight": weight,
        })).collect::<Vec<_>>(),
        "requestTimeout": rule.request_timeout.map(duration),
        "backendRequestTimeout": rule.backend_request_timeout.map(duration),
        "retry": rule.retry.as_ref().map(|r| json!({
            "httpCodes": r.http_codes,
            "grpcCodes": r.grpc_codes,
            "attempts": r.attempts,
            "backoff": duration(r.backoff),
        })),
    })
}

fn inbound_policy(policy: &InboundPolicy) -> Value {
    let (total, per_identity) = &policy.rate_limit;
    json!({
        "opaquePorts": policy.opaque_ports,
        "defaults": port_settings(&policy.defaults),
        "ports": policy
            .ports
            .iter()
            .map(|(port, settings)| (port.to_string(), port_settings(settings)))
            .collect::<serde_json::Map<_, _>>(),
        "authorizations": policy.authorizations.iter().map(|a| json!({
            "name": a.name,
            "ports": a.ports,
            "http": a.http.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>(),
            "sources": a.sources.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "rateLimit": {
            "total": total.as_ref().map(|l| format!("{l:?}")),
            "perIdentity": per_identity.as_ref().map(|l| format!("{l:?}")),
        },
    })
}

fn port_settings(settings: &PortSettings) -> Value {
    json!({
        "mode": settings.mode.map(|m| format!("{m:?}")),
        "authorization": settings.authorization.map(|a| format!("{a:?}")),
        "appProtocol": settings.app_protocol.map(|p| format!("{p:?}")),
    })
}

fn duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}
