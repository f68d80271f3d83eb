//! The rules as `iptables-restore --noflush` input, for iptables-legacy and iptables-nft.
//!
//! Weft touches only its own two chains and the two jumps into them: the rest of the nat table,
//! whoever wrote it, is left as it was. One restore per family applies everything at once.

use std::fmt::Write;

use super::exec::{run, run_with_input};
use super::rules::{Family, PortRange, Rules};

const INBOUND_CHAIN: &str = "WEFT_INBOUND";
const OUTBOUND_CHAIN: &str = "WEFT_OUTBOUND";
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)];
/// multiport takes 15 ports, a range counting two.
const PORTS_PER_MATCH: usize = 7;

/// Which iptables: both take the same rules, but a pod must use the one its kernel's other
/// rules use, or the two sets race each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Legacy,
    Nft,
}

impl Flavour {
    fn tool(self, family: Family, suffix: &str) -> String {
        let base = base_tool(family);
        let flavour = match self {
            Self::Legacy => "legacy",
            Self::Nft => "nft",
        };
        format!("{base}-{flavour}{suffix}")
    }

    /// The nat table as iptables-save prints it.
    fn save_nat(self, family: Family) -> Result<String, String> {
        run(&self.tool(family, "-save"), &["-t", "nat"])
    }

    /// The tables that exist: naming one (`-t nat`) would create it in legacy iptables, and
    /// looking must change nothing.
    fn save_existing(self, family: Family) -> Result<String, String> {
        run(&self.tool(family, "-save"), &[])
    }

    /// Whether this flavour's tables hold any rule at all.
    pub fn has_rules(self, family: Family) -> bool {
        self.save_existing(family)
            .is_ok_and(|saved| saved.lines().any(|line| line.starts_with("-A ")))
    }

    pub fn has_weft_rules(self, family: Family) -> bool {
        self.save_existing(family)
            .is_ok_and(|saved| !weft_chains(&saved).is_empty())
    }

    pub fn available(self) -> bool {
        run(&self.tool(Family::V4, ""), &["--version"]).is_ok()
    }

    pub fn install(self, rules: &Rules, family: Family) -> Result<(), String> {
        let saved = self.save_nat(family)?;
        let script = install_script(rules, family, &saved);
        self.restore(family, &script)
    }

    /// Removes Weft's chains and jumps; a table that never had them is not touched at all.
    pub fn cleanup(self, family: Family) -> Result<(), String> {
        let saved = self.save_existing(family)?;
        match cleanup_script(&saved) {
            Some(script) => self.restore(family, &script),
            None => Ok(()),
        }
    }

    fn restore(self, family: Family, script: &str) -> Result<(), String> {
        let tool = self.tool(family, "-restore");
        let mut args = vec!["--noflush"];
        if self == Self::Legacy {
            // Legacy iptables serialises writers with a lock; wait for it rather than fail.
            args.push("--wait");
        }
        run_with_input(&tool, &args, script).map(drop)
    }
}

/// `iptables` or `ip6tables`: the command that handles `family`.
pub fn base_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// The rules alone, as `--dry-run` shows them.
pub fn rules_script(rules: &Rules, family: Family) -> String {
    let mut script = String::from("*nat\n");
    declare_and_fill(&mut script, rules, family);
    script.push_str("COMMIT\n");
    script
}

/// Replaces whatever Weft installed before with `rules`: old jumps deleted, chains flushed by
/// declaring them, so running it twice leaves one set.
fn install_script(rules: &Rules, family: Family, saved: &str) -> String {
    let mut script = String::from("*nat\n");
    for jump in weft_jumps(saved) {
        let _ = writeln!(script, "-D {jump}");
    }
    declare_and_fill(&mut script, rules, family);
    script.push_str("COMMIT\n");
    script
}

fn cleanup_script(saved: &str) -> Option<String> {
    let chains = weft_chains(saved);
    if chains.is_empty() {
        return None;
    }
    let mut script = String::from("*nat\n");
    for jump in weft_jumps(saved) {
        let _ = writeln!(script, "-D {jump}");
    }
    for chain in &chains {
        let _ = writeln!(script, ":{chain} - [0:0]");
    }
    for chain in &chains {
        let _ = writeln!(script, "-X {chain}");
    }
    script.push_str("COMMIT\n");
    Some(script)
}

fn declare_and_fill(script: &mut String, rules: &Rules, family: Family) {
    let _ = writeln!(script, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(script, ":{OUTBOUND_CHAIN} - [0:0]");
    for ports in multiport(&rules.skip_inbound_ports) {
        let _ = writeln!(
            script,
            "-A {INBOUND_CHAIN} -p tcp -m multiport --dports {ports} -j RETURN"
        );
    }
    let _ = writeln!(
        script,
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        rules.inbound_port
    );
    let _ = writeln!(
        script,
        "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN",
        rules.proxy_uid
    );
    let _ = writeln!(script, "-A {OUTBOUND_CHAIN} -o lo -j RETURN");
    for addr in rules.control_plane(family) {
        let _ = writeln!(
            script,
            "-A {OUTBOUND_CHAIN} -d {} -p tcp --dport {} -j RETURN",
            addr.ip(),
            addr.port()
        );
    }
    for net in rules.cidrs(family) {
        let _ = writeln!(script, "-A {OUTBOUND_CHAIN} -d {net} -j RETURN");
    }
    for ports in multiport(&rules.skip_outbound_ports) {
        let _ = writeln!(
            script,
            "-A {OUTBOUND_CHAIN} -p tcp -m multiport --dports {ports} -j RETURN"
        );
    }
    let _ = writeln!(
        script,
        "-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        rules.outbound_port
    );
    for (from, to) in JUMPS {
        let _ = writeln!(script, "-A {from} -p tcp -j {to}");
    }
}

/// The ranges in multiport notation, in groups small enough for one match each.
fn multiport(ranges: &[PortRange]) -> Vec<String> {
    ranges
        .chunks(PORTS_PER_MATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|range| range.to_string().replace('-', ":"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// Weft's chains in a saved nat table.
fn weft_chains(saved: &str) -> Vec<&str> {
    saved
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|decl| decl.split_whitespace().next())
        .filter(|chain| [INBOUND_CHAIN, OUTBOUND_CHAIN].contains(chain))
        .collect()
}

/// Rules of other chains that jump into Weft's, as saved (without the `-A `).
fn weft_jumps(saved: &str) -> Vec<&str> {
    saved
        .lines()
        .filter_map(|line| line.strip_prefix("-A "))
        .filter(|rule| {
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or_default();
            let target = rule.rsplit_once("-j ").map(|(_, target)| target.trim());
            !chain.starts_with("WEFT_")
                && target.is_some_and(|t| [INBOUND_CHAIN, OUTBOUND_CHAIN].contains(&t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:WEFT_INBOUND - [0:0]\n:WEFT_OUTBOUND - [0:0]\n-A PREROUTING -p tcp -j WEFT_INBOUND\n-A OUTPUT -p tcp --dport 9999 -j RETURN\n-A OUTPUT -p tcp -j WEFT_OUTBOUND\n-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports 7140\nCOMMIT\n";

    #[test]
    fn reinstalling_deletes_the_old_jumps_and_only_those() {
        let rules = super::super::tests::rules();
        let script = install_script(&rules, Family::V4, SAVED);
        assert!(script.contains("-D PREROUTING -p tcp -j WEFT_INBOUND\n"));
        assert!(script.contains("-D OUTPUT -p tcp -j WEFT_OUTBOUND\n"));
        assert!(!script.contains("9999"), "{script}");
    }

    #[test]
    fn cleanup_leaves_a_table_without_weft_untouched() {
        assert_eq!(cleanup_script("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"), None);
        let script = cleanup_script(SAVED).unwrap();
        assert!(
            script.contains("-X WEFT_INBOUND\n-X WEFT_OUTBOUND\n"),
            "{script}"
        );
    }

    #[test]
    fn families_get_only_their_own_addresses_and_ports_are_grouped_for_multiport() {
        let mut rules = super::super::tests::rules();
        rules.skip_inbound_ports = (1..=16).map(PortRange::single).collect();
        let v4 = rules_script(&rules, Family::V4);
        let v6 = rules_script(&rules, Family::V6);
        assert!(v4.contains("-d 10.0.0.0/8 -j RETURN") && !v4.contains("fd00::/8"));
        assert!(v6.contains("-d fd00::/8 -j RETURN") && !v6.contains("10.0.0.0/8"));
        assert_eq!(v4.matches("--dports").count(), 3 + 1, "{v4}");
    }
}
