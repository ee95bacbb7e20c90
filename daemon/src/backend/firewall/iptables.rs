//! The iptables backend, for gateways without nft: chains `OTPATCH-INPUT`, `OTPATCH-OUTPUT` and
//! `OTPATCH-FORWARD` in the filter table, jumped to first from the built-in chains, written with
//! `iptables-restore --noflush` so that each address family changes in one transaction and the site's own rules
//! stay as they are. IPv4 and IPv6 are two transactions (iptables has no joint one); IPv6 is segmented too, so
//! a window never leaves an IPv6 path open.

use std::fmt::Write as _;
use std::net::IpAddr;

use async_trait::async_trait;

use otpatch_common::policy::Protocol;

use super::{proto_name, run, Rule, Ruleset};
use crate::backend::{BackendResult, Firewall, FirewallView, LiftReport, SegmentationPlan};

const CHAINS: [(&str, &str); 3] =
    [("INPUT", "OTPATCH-INPUT"), ("OUTPUT", "OTPATCH-OUTPUT"), ("FORWARD", "OTPATCH-FORWARD")];

/// Drives `iptables`/`ip6tables` and their `-restore`/`-save` companions, optionally behind an argv prefix
/// (`ip netns exec gw`) and with a variant suffix (`iptables-legacy`).
#[derive(Debug, Clone)]
pub struct IptablesFirewall {
    prefix: Vec<String>,
    v4: String,
    v6: String,
}

impl IptablesFirewall {
    /// `v4`/`v6` are the command names, e.g. `iptables` and `ip6tables`, or `iptables-legacy` and
    /// `ip6tables-legacy`; `-restore` and `-save` are appended for the companions.
    pub fn new(prefix: Vec<String>, v4: &str, v6: &str) -> Self {
        IptablesFirewall { prefix, v4: v4.to_string(), v6: v6.to_string() }
    }

    fn cmd(&self, name: &str) -> Vec<String> {
        let mut v = self.prefix.clone();
        v.push(name.to_string());
        v
    }

    /// The restore input that installs the chains for one family (`v6` selects which rules).
    pub fn restore_input(rs: &Ruleset, v6: bool, hooked: &[&str]) -> String {
        let mut s = String::from("*filter\n");
        for (_, chain) in CHAINS {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        // What the window allows RETURNs to the built-in chain, where the site's own rules still decide; only what
        // it refuses ends here (DROP). No blanket "established": a session no flow allows passes nothing.
        let icmp = if v6 { "ipv6-icmp" } else { "icmp" };
        for (builtin, chain) in CHAINS {
            let _ = writeln!(s, "-F {chain}");
            match builtin {
                "INPUT" => {
                    let _ = writeln!(s, "-A {chain} -i lo -j RETURN");
                }
                "OUTPUT" => {
                    let _ = writeln!(s, "-A {chain} -o lo -j RETURN");
                }
                _ => {}
            }
            let _ = writeln!(s, "-A {chain} -p {icmp} -m conntrack --ctstate RELATED -j RETURN");
            if v6 && builtin != "FORWARD" {
                for t in super::ICMPV6_ND_TYPES {
                    let _ = writeln!(
                        s,
                        "-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -m comment --comment \"IPv6 neighbour \
                         discovery\" -j RETURN"
                    );
                }
            }
            for r in rs.rules.iter().filter(|r| r.addr.is_ipv6() == v6) {
                for m in matches(r, builtin) {
                    let _ = writeln!(s, "-A {chain} {m} -m comment --comment \"{}\" -j RETURN", comment(&r.why));
                }
            }
            if rs.log_drops {
                let _ = writeln!(
                    s,
                    "-A {chain} -m limit --limit 10/sec --limit-burst 20 -j LOG --log-prefix \"otpatch drop {}: \"",
                    builtin.to_lowercase()
                );
            }
            let _ = writeln!(s, "-A {chain} -j DROP");
            if !hooked.contains(&builtin) {
                let _ = writeln!(s, "-I {builtin} 1 -j {chain}");
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// Built-in chains that already jump to ours, and which of our chains exist, from `iptables -S`.
    async fn state(&self, tool: &str) -> BackendResult<(Vec<&'static str>, Vec<&'static str>)> {
        let text = run(&self.cmd(tool), &["-S"], None).await?;
        let existing =
            CHAINS.iter().filter(|(_, c)| text.lines().any(|l| l.trim() == format!("-N {c}"))).map(|(_, c)| *c);
        let hooked = CHAINS
            .iter()
            .filter(|(b, c)| text.lines().any(|l| l.trim() == format!("-A {b} -j {c}")))
            .map(|(b, _)| *b)
            .collect();
        Ok((hooked, existing.collect()))
    }

    async fn dropped(&self, tool: &str) -> BackendResult<u64> {
        let text = run(&self.cmd(&format!("{tool}-save")), &["-c", "-t", "filter"], None).await?;
        Ok(dropped_from_save(&text))
    }

    async fn apply_family(&self, rs: &Ruleset, v6: bool) -> BackendResult<()> {
        let tool = if v6 { &self.v6 } else { &self.v4 };
        let (hooked, _) = self.state(tool).await?;
        let input = Self::restore_input(rs, v6, &hooked);
        run(&self.cmd(&format!("{tool}-restore")), &["--noflush"], Some(&input)).await.map(|_| ())
    }

    async fn lift_family(&self, v6: bool) -> BackendResult<Option<u64>> {
        let tool = if v6 { &self.v6 } else { &self.v4 };
        let (hooked, existing) = self.state(tool).await?;
        if existing.is_empty() && hooked.is_empty() {
            return Ok(None);
        }
        let dropped = if existing.is_empty() { 0 } else { self.dropped(tool).await? };
        let mut s = String::from("*filter\n");
        for (builtin, chain) in CHAINS {
            if hooked.contains(&builtin) {
                let _ = writeln!(s, "-D {builtin} -j {chain}");
            }
        }
        // Only the chains that exist: a leftover of a crash may be partial.
        for chain in existing {
            let _ = writeln!(s, "-F {chain}");
            let _ = writeln!(s, "-X {chain}");
        }
        s.push_str("COMMIT\n");
        run(&self.cmd(&format!("{tool}-restore")), &["--noflush"], Some(&s)).await?;
        Ok(Some(dropped))
    }
}

/// Packets counted by DROP rules of our chains in `iptables-save -c` output (`[packets:bytes] -A ... -j DROP`).
pub fn dropped_from_save(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains(" -A OTPATCH-") && l.trim_end().ends_with("-j DROP"))
        .filter_map(|l| l.strip_prefix('[').and_then(|r| r.split(':').next()).and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

fn comment(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || " .-_:/@".contains(*c)).take(200).collect()
}

fn host(a: &IpAddr) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}/32"),
        IpAddr::V6(v) => format!("{v}/128"),
    }
}

/// The iptables match options of a rule in a built-in chain (see [`super::peer_matches`]). The reply half never
/// opens a connection: for TCP a SYN without ACK does not match it, for UDP only what conntrack knows as
/// established does.
fn matches(r: &Rule, builtin: &str) -> Vec<String> {
    let (a, p) = (host(&r.addr), proto_name(r.protocol));
    super::peer_matches(r, &builtin.to_lowercase())
        .into_iter()
        .map(|m| {
            let addr = if m.peer_is_destination { "-d" } else { "-s" };
            let port = if m.port_is_destination { "--dport" } else { "--sport" };
            let guard = match (m.reply, r.protocol) {
                (false, _) => "",
                (true, Protocol::Tcp) => " ! --tcp-flags SYN,ACK SYN",
                (true, Protocol::Udp) => " -m conntrack --ctstate ESTABLISHED",
            };
            format!("{addr} {a} -p {p} -m {p} {port} {}{guard}", r.port)
        })
        .collect()
}

#[async_trait]
impl Firewall for IptablesFirewall {
    async fn apply(&self, plan: &SegmentationPlan) -> BackendResult<()> {
        let rs = Ruleset::resolve(plan).await?;
        self.apply_family(&rs, false).await?;
        if let Err(e) = self.apply_family(&rs, true).await {
            // Never leave half a segmentation behind.
            let _ = self.lift_family(false).await;
            return Err(e);
        }
        Ok(())
    }

    async fn lift(&self) -> BackendResult<LiftReport> {
        let v4 = self.lift_family(false).await?;
        let v6 = self.lift_family(true).await?;
        Ok(LiftReport { was_active: v4.is_some() || v6.is_some(), dropped_packets: v4.unwrap_or(0) + v6.unwrap_or(0) })
    }

    async fn active(&self) -> BackendResult<bool> {
        let (hooked, existing) = self.state(&self.v4).await?;
        Ok(!existing.is_empty() || !hooked.is_empty())
    }

    async fn inspect(&self) -> BackendResult<Option<FirewallView>> {
        if !self.active().await? {
            return Ok(None);
        }
        let mut ruleset = String::new();
        let mut dropped = 0;
        for tool in [&self.v4, &self.v6] {
            let text = run(&self.cmd(tool), &["-S"], None).await?;
            ruleset.push_str(&format!("# {tool}\n"));
            for l in text.lines().filter(|l| l.contains("OTPATCH-")) {
                ruleset.push_str(l);
                ruleset.push('\n');
            }
            dropped += self.dropped(tool).await?;
        }
        Ok(Some(FirewallView { backend: "iptables".into(), ruleset, dropped_packets: dropped }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otpatch_common::policy::{Direction, Protocol};

    fn rs() -> Ruleset {
        Ruleset {
            window_id: "w-1".into(),
            rules: vec![
                Rule {
                    addr: "192.0.2.10".parse().unwrap(),
                    port: 502,
                    protocol: Protocol::Tcp,
                    direction: Direction::Outbound,
                    routed: false,
                    why: "health probe target".into(),
                },
                Rule {
                    addr: "2001:db8::5".parse().unwrap(),
                    port: 4840,
                    protocol: Protocol::Tcp,
                    direction: Direction::Both,
                    routed: false,
                    why: "flow \"scada\"".into(),
                },
            ],
            log_drops: false,
        }
    }

    #[test]
    fn restore_input_hooks_once_and_keeps_families_apart() {
        let v4 = IptablesFirewall::restore_input(&rs(), false, &[]);
        assert!(v4.contains("-A OTPATCH-OUTPUT -d 192.0.2.10/32 -p tcp -m tcp --dport 502"));
        assert!(v4.contains("-A OTPATCH-INPUT -s 192.0.2.10/32 -p tcp -m tcp --sport 502 ! --tcp-flags SYN,ACK SYN"));
        assert!(!v4.contains("-j ACCEPT"), "allowed traffic returns to the site's chains: {v4}");
        assert!(!v4.contains("ESTABLISHED -j"), "no blanket rule for sessions opened before the window");
        assert!(!v4.contains("-A OTPATCH-FORWARD -d 192.0.2.10"), "the gateway's own flows are not forwarded");
        assert!(!v4.contains("2001:db8"));
        assert!(v4.contains("-I INPUT 1 -j OTPATCH-INPUT"));
        assert!(v4.ends_with("COMMIT\n"));
        let again = IptablesFirewall::restore_input(&rs(), false, &["INPUT", "OUTPUT", "FORWARD"]);
        assert!(!again.contains("-I INPUT"), "an existing jump is not added twice");
        let v6 = IptablesFirewall::restore_input(&rs(), true, &[]);
        assert!(v6.contains("-s 2001:db8::5/128 -p tcp -m tcp --dport 4840"));
        assert!(v6.contains("--comment \"flow scada\""));
        assert_eq!(v6.matches("--icmpv6-type").count(), 10, "neighbour discovery in input and output");
        assert_eq!(v6.matches("-j DROP").count(), 3);
    }

    #[test]
    fn counters_come_from_our_drop_rules() {
        let save = "*filter\n:INPUT ACCEPT [10:100]\n[4:240] -A INPUT -j DROP\n[3:180] -A OTPATCH-INPUT -j DROP\n\
                    [2:120] -A OTPATCH-OUTPUT -j DROP\n[9:9] -A OTPATCH-OUTPUT -d 1.2.3.4/32 -j ACCEPT\nCOMMIT\n";
        assert_eq!(dropped_from_save(save), 5);
    }
}
