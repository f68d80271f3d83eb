//! `weftctl tap TARGET`: the live requests of the selected proxies, one line per event, through
//! the control plane (which alone may call the proxies' tap APIs, as an admin).

use std::time::{Duration, SystemTime};

use weft_api::admin::{ProxySelector, TapRequest};
use weft_api::tap::{Match, ObserveRequest, TapEvent, tap_event};

use super::{AdminClient, CliError};

/// Which proxies and which of their requests; shared by `tap` and `top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TapTarget {
    /// The proxies: ns/NAME (every proxy of a namespace), sa/NAME (of a service account),
    /// pod/NAME (or a bare NAME), or addr/IP.
    pub target: String,
    /// The namespace of a service account or pod.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only requests in this direction.
    #[arg(long, value_parser = ["inbound", "outbound"])]
    pub direction: Option<String>,
    /// Only requests to this authority (host or host:port).
    #[arg(long)]
    pub authority: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only requests with this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Stop after this many requests (0: the proxies' maximum, 10 000).
    #[arg(long = "max", default_value_t = 0)]
    pub max_requests: u32,
}

#[derive(Debug, clap::Args)]
pub struct TapArgs {
    #[command(flatten)]
    pub target: TapTarget,
    /// Show request and response headers (credentials never are).
    #[arg(long)]
    pub headers: bool,
    /// text (one line per event), or json (one object per line).
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TapOutput,
}

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TapOutput {
    Text,
    Json,
}

impl TapTarget {
    /// The admin API request this target and these filters make.
    pub(super) fn request(&self, headers: bool) -> Result<TapRequest, CliError> {
        Ok(TapRequest {
            selector: Some(self.selector()?),
            observe: Some(ObserveRequest {
                r#match: Some(Match {
                    direction: self.direction.clone().unwrap_or_default(),
                    authority: self.authority.clone().unwrap_or_default(),
                    path_prefix: self.path.clone().unwrap_or_default(),
                    method: self
                        .method
                        .as_deref()
                        .map(str::to_ascii_uppercase)
                        .unwrap_or_default(),
                }),
                limit: self.max_requests,
                headers,
            }),
        })
    }

    /// The target as the admin API's selector.
    pub(super) fn selector(&self) -> Result<ProxySelector, CliError> {
        selector(&self.target, &self.namespace)
    }
}

/// `kind/name` (a bare name is a pod) in `namespace`, as the admin API's selector.
pub(super) fn selector(target: &str, namespace: &str) -> Result<ProxySelector, CliError> {
    let (kind, name) = match target.split_once('/') {
        Some((kind, name)) => (kind, name),
        None => ("pod", target),
    };
    let kind = match kind {
        "ns" | "namespace" => "ns",
        "sa" | "serviceaccount" => "sa",
        "pod" | "po" => "pod",
        "addr" => "addr",
        other => {
            return Err(CliError(format!(
                "{target:?}: unknown kind {other:?}; use ns/NAME, sa/NAME, pod/NAME or addr/IP"
            )));
        }
    };
    if name.is_empty() {
        return Err(CliError(format!("{target:?}: a name is missing")));
    }
    Ok(ProxySelector {
        kind: kind.to_string(),
        name: name.to_string(),
        namespace: namespace.to_string(),
    })
}

pub(super) async fn run(
    args: &TapArgs,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let request = args.target.request(args.headers)?;
    let mut events = client.admin.tap(request).await?.into_inner();
    while let Some(event) = events.message().await? {
        let line = match args.output {
            TapOutput::Text => text(&event),
            TapOutput::Json => json(&event).to_string(),
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // The reader went away (`| head`): done.
            break;
        }
    }
    Ok(())
}

/// One event as Linkerd-style `key=value` text.
fn text(event: &TapEvent) -> String {
    let head = format!("id={} proxy={}", event.request_id, event.proxy);
    match &event.event {
        Some(tap_event::Event::RequestInit(init)) => {
            let mut line = format!(
                "req {head} dir={} :method={} :authority={} :path={} protocol={}",
                init.direction, init.method, init.authority, init.path, init.protocol
            );
            if !init.peer_identity.is_empty() {
                line.push_str(&format!(" client={}", init.peer_identity));
            }
            for header in &init.headers {
                line.push_str(&format!(" {}={}", header.name, header.value));
            }
            line
        }
        Some(tap_event::Event::ResponseInit(init)) => {
            let mut line = format!(
                "rsp {head} :status={} latency={}",
                init.status,
                micros(init.since_request)
            );
            for header in &init.headers {
                line.push_str(&format!(" {}={}", header.name, header.value));
            }
            line
        }
        Some(tap_event::Event::ResponseEnd(end)) => {
            let mut line = format!(
                "end {head} :status={} duration={} request-bytes={} response-bytes={}",
                end.status,
                micros(end.duration),
                end.request_bytes,
                end.response_bytes
            );
            if let Some(code) = end.grpc_status {
                line.push_str(&format!(" grpc-status={code}"));
            }
            for (key, value) in [
                ("route", &end.route),
                ("backend", &end.backend),
                ("server", &end.peer_identity),
            ] {
                if !value.is_empty() {
                    line.push_str(&format!(" {key}={value}"));
                }
            }
            if !end.complete {
                line.push_str(" incomplete");
            }
            line
        }
        None => format!("??? {head}"),
    }
}

/// One event as a JSON object.
fn json(event: &TapEvent) -> serde_json::Value {
    use serde_json::json;
    let headers = |headers: &[weft_api::tap::Header]| {
        headers
            .iter()
            .map(|h| json!({"name": h.name, "value": h.value}))
            .collect::<Vec<_>>()
    };
    let mut value = json!({"id": event.request_id, "proxy": event.proxy});
    let details = match &event.event {
        Some(tap_event::Event::RequestInit(init)) => json!({
            "type": "request",
            "direction": init.direction,
            "method": init.method,
            "authority": init.authority,
            "path": init.path,
            "protocol": init.protocol,
            "client": init.peer_identity,
            "destination": init.destination,
            "at": init.at.and_then(|at| SystemTime::try_from(at).ok())
                .map(|at| humantime::format_rfc3339_micros(at).to_string()),
            "headers": headers(&init.headers),
        }),
        Some(tap_event::Event::ResponseInit(init)) => json!({
            "type": "response",
            "status": init.status,
            "latency_us": duration(init.since_request).as_micros() as u64,
            "headers": headers(&init.headers),
        }),
        Some(tap_event::Event::ResponseEnd(end)) => json!({
            "type": "end",
            "status": end.status,
            "grpc_status": end.grpc_status,
            "duration_us": duration(end.duration).as_micros() as u64,
            "request_bytes": end.request_bytes,
            "response_bytes": end.response_bytes,
            "route": end.route,
            "backend": end.backend,
            "server": end.peer_identity,
            "complete": end.complete,
        }),
        None => json!({"type": "unknown"}),
    };
    if let (Some(object), serde_json::Value::Object(details)) = (value.as_object_mut(), details) {
        object.extend(details);
    }
    value
}

pub(super) fn duration(wire: Option<prost_types::Duration>) -> Duration {
    wire.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}

fn micros(wire: Option<prost_types::Duration>) -> String {
    format!("{}µs", duration(wire).as_micros())
}

#[cfg(test)]
mod tests {
    use weft_api::tap::{Header, RequestInit, ResponseEnd};

    use super::*;

    fn target(target: &str) -> TapTarget {
        TapTarget {
            target: target.to_string(),
            namespace: "shop".to_string(),
            direction: None,
            authority: None,
            path: None,
            method: Some("get".to_string()),
            max_requests: 5,
        }
    }

    #[test]
    fn targets_name_a_kind_and_a_name() {
        let selector = target("sa/web").selector().unwrap();
        assert_eq!(
            (selector.kind.as_str(), selector.name.as_str()),
            ("sa", "web")
        );
        assert_eq!(target("web-7d9f").selector().unwrap().kind, "pod");
        assert!(
            target("deploy/web")
                .selector()
                .unwrap_err()
                .0
                .contains("unknown kind")
        );
        assert!(
            target("pod/")
                .selector()
                .unwrap_err()
                .0
                .contains("name is missing")
        );
        let request = target("ns/shop").request(false).unwrap();
        let observe = request.observe.unwrap();
        assert_eq!(observe.limit, 5);
        assert_eq!(observe.r#match.unwrap().method, "GET");
    }

    #[test]
    fn events_print_as_one_line_each() {
        let request = TapEvent {
            request_id: 3,
            proxy: "shop/web-1".to_string(),
            event: Some(tap_event::Event::RequestInit(RequestInit {
                direction: "outbound".to_string(),
                method: "GET".to_string(),
                authority: "api.shop:8080".to_string(),
                path: "/items".to_string(),
                protocol: "1.1".to_string(),
                headers: vec![Header {
                    name: "user-agent".to_string(),
                    value: "curl".to_string(),
                }],
                ..RequestInit::default()
            })),
        };
        assert_eq!(
            text(&request),
            "req id=3 proxy=shop/web-1 dir=outbound :method=GET :authority=api.shop:8080 :path=/items protocol=1.1 user-agent=curl"
        );
        let end = TapEvent {
            request_id: 3,
            proxy: "shop/web-1".to_string(),
            event: Some(tap_event::Event::ResponseEnd(ResponseEnd {
                status: 200,
                grpc_status: Some(0),
                duration: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_500_000,
                }),
                response_bytes: 12,
                complete: true,
                route: "items".to_string(),
                ..ResponseEnd::default()
            })),
        };
        assert_eq!(
            text(&end),
            "end id=3 proxy=shop/web-1 :status=200 duration=1500µs request-bytes=0 response-bytes=12 grpc-status=0 route=items"
        );
        let json = json(&end);
        assert_eq!(json["type"], "end");
        assert_eq!(json["duration_us"], 1500);
        assert_eq!(json["proxy"], "shop/web-1");
    }
}
