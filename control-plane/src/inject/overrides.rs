//! Per-pod settings from `config.weft.io/*` annotations, each checked here so that a typo is
//! refused at injection with the annotation's name, not found later in a crash-looping proxy.

use serde_json::{Map, Value};

use super::{InjectError, SidecarMode};

const PREFIX: &str = "config.weft.io/";

/// The annotations a pod may set, and the variable each becomes.
const KNOWN: &[&str] = &[
    "opaque-ports",
    "skip-inbound-ports",
    "skip-outbound-ports",
    "skip-outbound-cidrs",
    "default-inbound-policy",
    "sidecar-mode",
    "proxy-log-level",
    "proxy-cpu-request",
    "proxy-memory-limit",
    "trace-sampling",
];

/// A pod's own injection settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `WEFT_PROXY_OPAQUE_PORTS`.
    pub opaque_ports: Option<String>,
    /// `WEFT_PROXY_SKIP_INBOUND_PORTS` (init).
    pub skip_inbound_ports: Option<String>,
    /// `WEFT_PROXY_SKIP_OUTBOUND_PORTS` (init).
    pub skip_outbound_ports: Option<String>,
    /// `WEFT_PROXY_SKIP_OUTBOUND_CIDRS` (init).
    pub skip_outbound_cidrs: Option<String>,
    /// `WEFT_PROXY_DEFAULT_INBOUND_POLICY`.
    pub default_inbound_policy: Option<String>,
    /// Native or classic sidecar.
    pub sidecar_mode: Option<SidecarMode>,
    /// `WEFT_PROXY_LOG`.
    pub log_level: Option<String>,
    /// The proxy container's CPU request.
    pub cpu_request: Option<String>,
    /// The proxy container's memory limit.
    pub memory_limit: Option<String>,
    /// `WEFT_PROXY_TRACE_SAMPLING`.
    pub trace_sampling: Option<String>,
}

impl Overrides {
    /// Reads and checks the `config.weft.io/*` annotations of a pod template.
    pub fn from_annotations(annotations: Option<&Map<String, Value>>) -> Result<Self, InjectError> {
        let mut overrides = Self::default();
        let Some(annotations) = annotations else {
            return Ok(overrides);
        };
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let bad = |why: &str| InjectError(format!("annotation {key}: {value} {why}"));
            let Some(text) = value.as_str().map(str::trim) else {
                return Err(bad("is not a string"));
            };
            let text = text.to_string();
            match name {
                "opaque-ports" => {
                    port_list(&text, false).map_err(|why| bad(&why))?;
                    overrides.opaque_ports = Some(text);
                }
                "skip-inbound-ports" => {
                    port_list(&text, true).map_err(|why| bad(&why))?;
                    overrides.skip_inbound_ports = Some(text);
                }
                "skip-outbound-ports" => {
                    port_list(&text, true).map_err(|why| bad(&why))?;
                    overrides.skip_outbound_ports = Some(text);
                }
                "skip-outbound-cidrs" => {
                    for cidr in items(&text) {
                        cidr.parse::<ipnet::IpNet>()
                            .map_err(|_| bad(&format!("has {cidr:?}, not a CIDR")))?;
                    }
                    overrides.skip_outbound_cidrs = Some(text);
                }
                "default-inbound-policy" => {
                    // The proxy reads the same words: one vocabulary, checked here first.
                    use weft_api::inbound::DefaultAuthorization;
                    text.parse::<DefaultAuthorization>().map_err(|_| {
                        let names = DefaultAuthorization::ALL.map(DefaultAuthorization::as_str);
                        bad(&format!("is not one of {}", names.join(", ")))
                    })?;
                    overrides.default_inbound_policy = Some(text);
                }
                "sidecar-mode" => {
                    overrides.sidecar_mode =
                        Some(text.parse().map_err(|_| bad("is not native or classic"))?);
                }
                "proxy-log-level" => {
                    log_filter(&text).map_err(|why| bad(&why))?;
                    overrides.log_level = Some(text);
                }
                "proxy-cpu-request" => {
                    quantity(&text).map_err(|why| bad(&why))?;
                    overrides.cpu_request = Some(text);
                }
                "proxy-memory-limit" => {
                    quantity(&text).map_err(|why| bad(&why))?;
                    overrides.memory_limit = Some(text);
                }
                "trace-sampling" => {
                    if !text
                        .parse::<f64>()
                        .is_ok_and(|ratio| (0.0..=1.0).contains(&ratio))
                    {
                        return Err(bad("is not a ratio between 0 and 1"));
                    }
                    overrides.trace_sampling = Some(text);
                }
                _ => {
                    return Err(InjectError(format!(
                        "annotation {key} is not one Weft knows (known: {})",
                        KNOWN
                            .iter()
                            .map(|k| format!("{PREFIX}{k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        Ok(overrides)
    }
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Ports, and where `ranges` allows it `low-high` ranges, separated by commas.
fn port_list(list: &str, ranges: bool) -> Result<(), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("has {p:?}, not a port"))
    };
    for item in items(list) {
        match item.split_once('-') {
            Some((low, high)) if ranges => {
                if port(low)? > port(high)? {
                    return Err(format!("has the empty range {item:?}"));
                }
            }
            _ => {
                port(item)?;
            }
        }
    }
    Ok(())
}

/// `level` or `target=level` directives, as the proxy's log filter takes them.
fn log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    for directive in items(filter) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&level) {
            return Err(format!(
                "has {directive:?}, not a log level ({})",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `0.5`), as the API server would accept it.
fn quantity(text: &str) -> Result<(), String> {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| text.strip_suffix(suffix).filter(|n| !n.is_empty()))
        .unwrap_or(text);
    let valid = !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err("is not a resource quantity (such as 100m or 64Mi)".to_string())
    }
}
