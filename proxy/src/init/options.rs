//! `weft-proxy init`'s flags, each falling back to the `WEFT_PROXY_*` variable the injector
//! derives from the pod's `config.weft.io/` annotations; every value checked before anything
//! is changed.

use std::net::{SocketAddr, ToSocketAddrs};

use clap::Parser;
use ipnet::IpNet;

use super::backend::Backend;
use super::rules::{PortRange, Rules};
use crate::config::{
    ENV_ADMIN_ADDR, ENV_CONTROL_PLANE_ADDR, ENV_INBOUND_ADDR, ENV_OUTBOUND_ADDR, ENV_TAP_ADDR,
};

pub const ENV_UID: &str = "WEFT_PROXY_UID";
pub const ENV_SKIP_INBOUND_PORTS: &str = "WEFT_PROXY_SKIP_INBOUND_PORTS";
pub const ENV_SKIP_OUTBOUND_PORTS: &str = "WEFT_PROXY_SKIP_OUTBOUND_PORTS";
pub const ENV_SKIP_OUTBOUND_CIDRS: &str = "WEFT_PROXY_SKIP_OUTBOUND_CIDRS";
pub const ENV_INIT_BACKEND: &str = "WEFT_PROXY_INIT_BACKEND";
pub const ENV_INIT_IPV6: &str = "WEFT_PROXY_INIT_IPV6";

/// Installs the pod's redirect rules (the init container's job).
#[derive(Debug, Parser)]
#[command(name = "weft-proxy init", no_binary_name = true)]
pub struct InitArgs {
    /// The proxy's UID: its own connections are not redirected.
    #[arg(long, env = ENV_UID, default_value = "7102")]
    proxy_uid: String,
    /// Where inbound TCP is sent [default: the port of WEFT_PROXY_INBOUND_ADDR, or 7143].
    #[arg(long)]
    inbound_port: Option<String>,
    /// Where the app's outbound TCP is sent [default: the port of WEFT_PROXY_OUTBOUND_ADDR, or 7140].
    #[arg(long)]
    outbound_port: Option<String>,
    /// The proxy's admin port, left reachable (metrics, probes) [default: WEFT_PROXY_ADMIN_ADDR's, or 7191].
    #[arg(long)]
    admin_port: Option<String>,
    /// The proxy's tap port, left reachable for the control plane (`off`: none)
    /// [default: WEFT_PROXY_TAP_ADDR's, or 7190].
    #[arg(long)]
    tap_port: Option<String>,
    /// Inbound ports that bypass the proxy: `22,8000-8100`.
    #[arg(long, env = ENV_SKIP_INBOUND_PORTS, default_value = "")]
    skip_inbound_ports: String,
    /// Outbound ports that bypass the proxy.
    #[arg(long, env = ENV_SKIP_OUTBOUND_PORTS, default_value = "")]
    skip_outbound_ports: String,
    /// Outbound networks that bypass the proxy: `10.0.0.0/8,fd00::/8`.
    #[arg(long, env = ENV_SKIP_OUTBOUND_CIDRS, default_value = "")]
    skip_outbound_cidrs: String,
    /// The control plane (`host:port`), whose address is left alone.
    #[arg(long, env = ENV_CONTROL_PLANE_ADDR)]
    control_plane_addr: Option<String>,
    /// auto, iptables-legacy, iptables-nft or nft.
    #[arg(long, env = ENV_INIT_BACKEND, default_value = "auto")]
    backend: String,
    /// Redirect IPv6 too: auto (when the pod has IPv6), on, off.
    #[arg(long, env = ENV_INIT_IPV6, default_value = "auto")]
    ipv6: String,
    /// Print the rules and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove Weft's rules (and nothing else) instead of installing them.
    #[arg(long)]
    pub cleanup: bool,
}

/// A value that cannot be used: which one, and why (one line, exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct BadValue {
    pub name: String,
    pub reason: String,
}

fn bad(name: &str, reason: impl Into<String>) -> BadValue {
    BadValue {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// The backend: named, or left to detection.
#[derive(Debug, Clone, Copy)]
pub enum BackendChoice {
    Auto,
    Named(Backend),
}

impl InitArgs {
    pub fn parse_from_args(args: impl IntoIterator<Item = String>) -> Result<Self, clap::Error> {
        Self::try_parse_from(args)
    }

    pub fn backend(&self) -> Result<BackendChoice, BadValue> {
        match self.backend.trim() {
            "auto" => Ok(BackendChoice::Auto),
            name => name
                .parse()
                .map(BackendChoice::Named)
                .map_err(|e| bad(&format!("--backend ({ENV_INIT_BACKEND})"), e)),
        }
    }

    /// The rules these flags and `env` describe.
    pub fn rules(&self, env: impl Fn(&str) -> Option<String>) -> Result<Rules, BadValue> {
        let proxy_uid = self.proxy_uid.trim().parse::<u32>().map_err(|e| {
            bad(
                &format!("--proxy-uid ({ENV_UID})"),
                format!("{:?}: {e}", self.proxy_uid),
            )
        })?;
        let port = |flag: &Option<String>, name: &str, var: &str, default: u16| match flag {
            Some(value) => single_port(value).map_err(|e| bad(&format!("--{name}"), e)),
            None => match env(var) {
                Some(addr) => addr
                    .trim()
                    .parse::<SocketAddr>()
                    .map(|addr| addr.port())
                    .map_err(|e| bad(var, format!("{addr:?}: {e}"))),
                None => Ok(default),
            },
        };
        let inbound_port = port(&self.inbound_port, "inbound-port", ENV_INBOUND_ADDR, 7143)?;
        let outbound_port = port(
            &self.outbound_port,
            "outbound-port",
            ENV_OUTBOUND_ADDR,
            7140,
        )?;
        let admin_port = port(&self.admin_port, "admin-port", ENV_ADMIN_ADDR, 7191)?;
        let tap_off = |value: Option<&str>| value.is_some_and(|v| v.trim() == "off");
        let tap_port = if tap_off(self.tap_port.as_deref())
            || tap_off(env(ENV_TAP_ADDR).as_deref()) && self.tap_port.is_none()
        {
            None
        } else {
            Some(port(&self.tap_port, "tap-port", ENV_TAP_ADDR, 7190)?)
        };
        let mut skip_inbound_ports =
            PortRange::parse_list(&self.skip_inbound_ports).map_err(|e| {
                bad(
                    &format!("--skip-inbound-ports ({ENV_SKIP_INBOUND_PORTS})"),
                    e,
                )
            })?;
        // The proxy's own listeners are reached directly: peers may dial the inbound port,
        // kubelet and Prometheus the admin port, the control plane the tap port.
        skip_inbound_ports.extend([
            PortRange::single(inbound_port),
            PortRange::single(admin_port),
        ]);
        skip_inbound_ports.extend(tap_port.map(PortRange::single));
        skip_inbound_ports.sort();
        skip_inbound_ports.dedup();
        let skip_outbound_ports =
            PortRange::parse_list(&self.skip_outbound_ports).map_err(|e| {
                bad(
                    &format!("--skip-outbound-ports ({ENV_SKIP_OUTBOUND_PORTS})"),
                    e,
                )
            })?;
        let skip_outbound_cidrs = self
            .skip_outbound_cidrs
            .split(',')
            .map(str::trim)
            .filter(|net| !net.is_empty())
            .map(|net| {
                net.parse::<IpNet>()
                    .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|e| {
                        bad(
                            &format!("--skip-outbound-cidrs ({ENV_SKIP_OUTBOUND_CIDRS})"),
                            format!("{net:?}: {e}"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let control_plane = match &self.control_plane_addr {
            Some(addr) => control_plane(addr)?,
            None => Vec::new(),
        };
        let ipv6 = match self.ipv6.trim() {
            "auto" => pod_has_ipv6(),
            "on" | "true" => true,
            "off" | "false" => false,
            other => {
                return Err(bad(
                    &format!("--ipv6 ({ENV_INIT_IPV6})"),
                    format!("{other:?} is not auto, on or off"),
                ));
            }
        };
        Ok(Rules {
            proxy_uid,
            inbound_port,
            outbound_port,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_outbound_cidrs,
            control_plane,
            ipv6,
        })
    }
}

fn single_port(value: &str) -> Result<u16, String> {
    match value.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{value:?} is not a port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// The control plane's addresses. A name that does not resolve now is not an error: the
/// proxy's UID is exempt anyway, so only the app's own calls to it would be affected.
fn control_plane(addr: &str) -> Result<Vec<SocketAddr>, BadValue> {
    let name = format!("--control-plane-addr ({ENV_CONTROL_PLANE_ADDR})");
    let trimmed = addr.trim();
    let host_port = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .unwrap_or(trimmed);
    let valid = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && single_port(port).is_ok());
    if !valid {
        return Err(bad(&name, format!("{addr:?} is not host:port")));
    }
    match host_port.to_socket_addrs() {
        Ok(addrs) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        }
        Err(error) => {
            eprintln!(
                "weft-proxy init: warning: {name}: cannot resolve {host_port}: {error}; relying on the proxy's UID"
            );
            Ok(Vec::new())
        }
    }
}

/// Whether this network namespace has IPv6 at all (the kernel lists no IPv6 addresses when
/// it is disabled).
fn pod_has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|list| !list.trim().is_empty())
}
