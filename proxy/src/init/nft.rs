//! The rules as one nftables table, `inet weft`, holding IPv4 and IPv6 alike.
//!
//! The table is Weft's alone: installing replaces it in one transaction (declare, delete,
//! define), and cleanup deletes it, so nothing else in the ruleset is touched.

use std::fmt::Write;

use super::exec::{run, run_with_input};
use super::rules::{Family, PortRange, Rules};

const TABLE: &str = "weft";

pub fn available() -> bool {
    run("nft", &["--version"]).is_ok()
}

pub fn has_weft_table() -> bool {
    run("nft", &["list", "table", "inet", TABLE]).is_ok()
}

pub fn install(rules: &Rules) -> Result<(), String> {
    let script = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        ruleset(rules)
    );
    run_with_input("nft", &["-f", "-"], &script).map(drop)
}

pub fn cleanup() -> Result<(), String> {
    if !has_weft_table() {
        return Ok(());
    }
    run("nft", &["delete", "table", "inet", TABLE]).map(drop)
}

/// The table's definition, as `--dry-run` shows it.
pub fn ruleset(rules: &Rules) -> String {
    // Without IPv6, the pod's IPv6 traffic (if any appears) is left alone rather than sent to
    // a proxy that does not listen for it.
    let only = if rules.ipv6 { "" } else { "meta nfproto ipv4 " };
    let mut out = String::new();
    let _ = writeln!(out, "table inet {TABLE} {{");
    let _ = writeln!(out, "\tchain prerouting {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook prerouting priority dstnat; policy accept;"
    );
    let _ = writeln!(out, "\t\t{only}meta l4proto tcp jump inbound");
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain inbound {{");
    if !rules.skip_inbound_ports.is_empty() {
        let _ = writeln!(
            out,
            "\t\ttcp dport {} return",
            set(&rules.skip_inbound_ports)
        );
    }
    let _ = writeln!(
        out,
        "\t\tmeta l4proto tcp redirect to :{}",
        rules.inbound_port
    );
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain output {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook output priority -100; policy accept;"
    );
    let _ = writeln!(out, "\t\t{only}meta l4proto tcp jump outbound");
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain outbound {{");
    let _ = writeln!(out, "\t\tmeta skuid {} return", rules.proxy_uid);
    let _ = writeln!(out, "\t\toifname \"lo\" return");
    for family in [Family::V4, Family::V6] {
        let ip = match family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        for addr in rules.control_plane(family) {
            let _ = writeln!(
                out,
                "\t\t{ip} daddr {} tcp dport {} return",
                addr.ip(),
                addr.port()
            );
        }
        let nets: Vec<String> = rules.cidrs(family).map(ToString::to_string).collect();
        if !nets.is_empty() {
            let _ = writeln!(out, "\t\t{ip} daddr {{ {} }} return", nets.join(", "));
        }
    }
    if !rules.skip_outbound_ports.is_empty() {
        let _ = writeln!(
            out,
            "\t\ttcp dport {} return",
            set(&rules.skip_outbound_ports)
        );
    }
    let _ = writeln!(
        out,
        "\t\tmeta l4proto tcp redirect to :{}",
        rules.outbound_port
    );
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
    out
}

fn set(ranges: &[PortRange]) -> String {
    let items: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_carries_both_families_unless_ipv6_is_off() {
        let mut rules = super::super::tests::rules();
        let both = ruleset(&rules);
        assert!(both.contains("ip daddr { 10.0.0.0/8 } return"), "{both}");
        assert!(both.contains("ip6 daddr { fd00::/8 } return"), "{both}");
        assert!(
            both.contains("ip daddr 10.9.9.9 tcp dport 7200 return"),
            "{both}"
        );
        assert!(
            both.contains("tcp dport { 22, 8000-8100 } return"),
            "{both}"
        );
        assert!(!both.contains("nfproto"));
        rules.ipv6 = false;
        assert!(ruleset(&rules).contains("meta nfproto ipv4 meta l4proto tcp jump outbound"));
    }
}
