//! Envoy configured as a sidecar pair doing what two weft-proxies do: the client side takes
//! plain HTTP and speaks HTTP/2 over TLS 1.3 with a client certificate, checking the server's
//! SPIFFE URI SAN; the server side requires a client certificate of the trust domain and sends
//! HTTP/1.1 to the upstream (HTTP/2 for gRPC). Request-id generation is off: Weft does not
//! generate one either.

use std::net::SocketAddr;
use std::path::Path;

use crate::topology::SERVER_ID;

/// A `common_tls_context` body, each line indented by `indent` spaces.
fn tls_common(dir: &Path, me: &str, peer_match: &str, indent: usize) -> String {
    let body = format!(
        r#"tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
alpn_protocols: ["h2"]
tls_certificates:
- certificate_chain: {{filename: "{dir}/{me}.pem"}}
  private_key: {{filename: "{dir}/{me}-key.pem"}}
validation_context:
  trusted_ca: {{filename: "{dir}/anchor.pem"}}
  match_typed_subject_alt_names:
  - san_type: URI
    matcher: {peer_match}"#,
        dir = dir.display()
    );
    let pad = " ".repeat(indent);
    body.lines().map(|line| format!("\n{pad}{line}")).collect()
}

fn router(stat_prefix: &str, routes: &str) -> String {
    format!(
        r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          codec_type: AUTO
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

fn cluster(name: &str, to: SocketAddr, http2: bool, tls: Option<String>) -> String {
    let protocol = if http2 {
        "http2_protocol_options: {}"
    } else {
        "http_protocol_options: {}"
    };
    let tls = tls
        .map(|context| {
            format!(
                r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:{context}"#,
                sni = server_dns_name()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{{protocol}}}{tls}"#,
        ip = to.ip(),
        port = to.port()
    )
}

fn server_dns_name() -> String {
    SERVER_ID
        .parse::<weft_certs::Identity>()
        .map(|id| id.dns_name())
        .unwrap_or_default()
}

fn admin(port: u16) -> String {
    format!("admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n")
}

/// The client sidecar: plain HTTP on `port`, HTTP/2 over mTLS to the server sidecar.
pub fn client_config(dir: &Path, port: u16, admin_port: u16, server_port: u16) -> String {
    let routes = r#"
              - match: {prefix: "/"}
                route: {cluster: server_sidecar, timeout: 0s}"#;
    let server = SocketAddr::from(([127, 0, 0, 1], server_port));
    let tls = tls_common(dir, "client", &format!("{{exact: \"{SERVER_ID}\"}}"), 10);
    format!(
        "{admin}static_resources:\n  listeners:\n  - name: outbound\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n    filter_chains:\n    - filters:{router}\n  clusters:{cluster}\n",
        admin = admin(admin_port),
        router = router("outbound", routes),
        cluster = cluster("server_sidecar", server, true, Some(tls)),
    )
}

/// The server sidecar: mTLS on `port` (any identity of the trust domain), to `upstream`.
pub fn server_config(dir: &Path, port: u16, admin_port: u16, upstream: SocketAddr) -> String {
    let routes = r#"
              - match: {prefix: "/", headers: [{name: content-type, string_match: {prefix: application/grpc}}]}
                route: {cluster: upstream_h2, timeout: 0s}
              - match: {prefix: "/"}
                route: {cluster: upstream_h1, timeout: 0s}"#;
    let tls = tls_common(dir, "server", "{prefix: \"spiffe://cluster.local/\"}", 12);
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:{tls}
      filters:{router}
  clusters:{h1}{h2}
"#,
        admin = admin(admin_port),
        router = router("inbound", routes),
        h1 = cluster("upstream_h1", upstream, false, None),
        h2 = cluster("upstream_h2", upstream, true, None),
    )
}
