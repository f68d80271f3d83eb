//! `weft-proxy init`: installs the pod's redirect rules, as linkerd-init and istio-init do.
//! Inbound TCP goes to the proxy's inbound port and the app's outbound TCP to its outbound
//! port; the proxy's own connections, loopback, the control plane and what the user skips are
//! left alone. Installing is idempotent, `--cleanup` removes exactly Weft's rules.

mod backend;
mod exec;
mod iptables;
mod nft;
mod options;
mod rules;

pub use options::{
    ENV_INIT_BACKEND, ENV_INIT_IPV6, ENV_SKIP_INBOUND_PORTS, ENV_SKIP_OUTBOUND_CIDRS,
    ENV_SKIP_OUTBOUND_PORTS, ENV_UID,
};

use backend::Backend;
use options::{BackendChoice, InitArgs};
use rules::Rules;

use crate::EXIT_USAGE;

/// Runs `weft-proxy init` with the arguments after `init`; returns the exit code.
pub fn run(args: impl IntoIterator<Item = String>) -> i32 {
    let args = match InitArgs::parse_from_args(args) {
        Ok(args) => args,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                return 0;
            }
            let text = error.to_string();
            let line = text.lines().next().unwrap_or("bad arguments");
            eprintln!("weft-proxy init: {}", line.trim_start_matches("error: "));
            return EXIT_USAGE;
        }
    };
    let (rules, choice) = match args
        .rules(|name| std::env::var(name).ok())
        .and_then(|rules| Ok((rules, args.backend()?)))
    {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("weft-proxy init: {error}");
            return EXIT_USAGE;
        }
    };
    let outcome = if args.cleanup {
        cleanup(choice, &rules, args.dry_run)
    } else {
        install(choice, &rules, args.dry_run)
    };
    match outcome {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("weft-proxy init: {error}");
            1
        }
    }
}

fn install(choice: BackendChoice, rules: &Rules, dry_run: bool) -> Result<(), String> {
    let backend = match choice {
        BackendChoice::Named(backend) => backend,
        BackendChoice::Auto if dry_run => Backend::detect().unwrap_or(Backend::IptablesNft),
        BackendChoice::Auto => Backend::detect()?,
    };
    if dry_run {
        return write_stdout(&render(backend, rules));
    }
    match backend.flavour() {
        Some(flavour) => {
            for family in rules.families() {
                flavour
                    .install(rules, family)
                    .map_err(|e| format!("{} ({}): {e}", backend.name(), family.name()))?;
            }
        }
        None => nft::install(rules).map_err(|e| format!("nft: {e}"))?,
    }
    eprintln!(
        "weft-proxy init: {} rules installed ({}): inbound to :{}, outbound to :{}",
        backend.name(),
        rules
            .families()
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(" and "),
        rules.inbound_port,
        rules.outbound_port
    );
    Ok(())
}

/// Removes Weft's rules from the named backend, or from every backend that has them (a pod
/// whose rules were installed by another detection must still be cleaned).
fn cleanup(choice: BackendChoice, rules: &Rules, dry_run: bool) -> Result<(), String> {
    let backends: Vec<Backend> = match choice {
        BackendChoice::Named(backend) => vec![backend],
        BackendChoice::Auto => Backend::ALL
            .into_iter()
            .filter(|b| b.has_weft_rules())
            .collect(),
    };
    for backend in backends {
        if dry_run {
            write_stdout(&format!(
                "# would remove Weft's rules from {}\n",
                backend.name()
            ))?;
            continue;
        }
        match backend.flavour() {
            Some(flavour) => {
                // IPv6 is cleaned whatever the pod has now: rules left from an earlier run
                // with IPv6 must go too.
                for family in [rules::Family::V4, rules::Family::V6] {
                    if family == rules::Family::V6 && !rules.ipv6 && !flavour.has_weft_rules(family)
                    {
                        continue;
                    }
                    flavour
                        .cleanup(family)
                        .map_err(|e| format!("{} ({}): {e}", backend.name(), family.name()))?;
                }
            }
            None => nft::cleanup().map_err(|e| format!("nft: {e}"))?,
        }
        eprintln!("weft-proxy init: Weft's {} rules removed", backend.name());
    }
    Ok(())
}

/// What `--dry-run` shows goes to standard output, so it can be piped or saved.
fn write_stdout(text: &str) -> Result<(), String> {
    use std::io::Write;
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}

fn render(backend: Backend, rules: &Rules) -> String {
    match backend.flavour() {
        Some(_) => rules
            .families()
            .into_iter()
            .map(|family| {
                let tool = iptables::base_tool(family);
                format!(
                    "# {} ({}): {tool}-restore --noflush\n{}",
                    backend.name(),
                    family.name(),
                    iptables::rules_script(rules, family)
                )
            })
            .collect(),
        None => format!("# nft -f -\n{}", nft::ruleset(rules)),
    }
}

#[cfg(test)]
mod tests {
    use super::rules::{PortRange, Rules};

    /// Rules with something of every kind, for the renderers' tests.
    pub fn rules() -> Rules {
        Rules {
            proxy_uid: 7102,
            inbound_port: 7143,
            outbound_port: 7140,
            skip_inbound_ports: vec![
                PortRange::single(22),
                PortRange {
                    first: 8000,
                    last: 8100,
                },
            ],
            skip_outbound_ports: vec![PortRange::single(25)],
            skip_outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            control_plane: vec!["10.9.9.9:7200".parse().unwrap()],
            ipv6: true,
        }
    }

    #[test]
    fn bad_values_name_their_flag_or_variable() {
        let parse = |args: &[&str]| {
            super::InitArgs::parse_from_args(args.iter().map(ToString::to_string))
                .unwrap()
                .rules(|_| None)
                .map(drop)
                .unwrap_err()
                .to_string()
        };
        assert!(parse(&["--skip-inbound-ports", "22,x"]).starts_with("--skip-inbound-ports"));
        assert!(
            parse(&["--skip-outbound-cidrs", "10.0.0.0/33"])
                .contains("WEFT_PROXY_SKIP_OUTBOUND_CIDRS")
        );
        assert!(parse(&["--proxy-uid=-1"]).starts_with("--proxy-uid"));
        assert!(parse(&["--inbound-port", "0"]).starts_with("--inbound-port"));
        assert!(parse(&["--ipv6", "maybe"]).starts_with("--ipv6"));
        assert!(parse(&["--control-plane-addr", "nohost"]).starts_with("--control-plane-addr"));
        let from_env = super::InitArgs::parse_from_args(Vec::<String>::new())
            .unwrap()
            .rules(|name| (name == "WEFT_PROXY_INBOUND_ADDR").then(|| "0.0.0.0:99999".to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            from_env.starts_with("WEFT_PROXY_INBOUND_ADDR"),
            "{from_env}"
        );
    }

    #[test]
    fn the_proxys_own_ports_are_always_skipped_inbound() {
        let rules = super::InitArgs::parse_from_args(["--skip-inbound-ports=22".to_string()])
            .unwrap()
            .rules(|name| (name == "WEFT_PROXY_ADMIN_ADDR").then(|| "0.0.0.0:9191".to_string()))
            .unwrap();
        assert_eq!(
            rules.skip_inbound_ports,
            [22, 7143, 7190, 9191].map(PortRange::single).to_vec()
        );
        let without_tap = super::InitArgs::parse_from_args(["--tap-port=off".to_string()])
            .unwrap()
            .rules(|_| None)
            .unwrap();
        assert_eq!(
            without_tap.skip_inbound_ports,
            [7143, 7191].map(PortRange::single).to_vec()
        );
        let tap_off_by_env = super::InitArgs::parse_from_args([])
            .unwrap()
            .rules(|name| (name == "WEFT_PROXY_TAP_ADDR").then(|| "off".to_string()))
            .unwrap();
        assert_eq!(
            tap_off_by_env.skip_inbound_ports,
            without_tap.skip_inbound_ports
        );
    }
}
