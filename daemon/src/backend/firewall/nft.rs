//! The nftables backend: one `nft -f -` transaction creates `table inet otpatch` with its input, output and
//! forward chains; another deletes it. The `add table` + `delete table` prologue makes both idempotent (it works
//! whether or not the table exists) without `destroy`, which nft 1.0.6 (Debian 12) lacks.

use std::fmt::Write as _;
use std::net::IpAddr;

use async_trait::async_trait;

use otpatch_common::policy::Protocol;

use super::{proto_name, run, Rule, Ruleset, TABLE};
use crate::backend::{BackendError, BackendResult, Firewall, FirewallView, LiftReport, SegmentationPlan};

/// Drives `nft` (or an argv prefix such as `ip netns exec gw nft`).
#[derive(Debug, Clone)]
pub struct NftFirewall {
    argv: Vec<String>,
}

impl NftFirewall {
    pub fn new(argv: Vec<String>) -> Self {
        NftFirewall { argv }
    }

    /// The `nft -f` script for a ruleset: replaces the table in one transaction.
    pub fn script(rs: &Ruleset) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {TABLE}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        let _ = writeln!(s, "table inet {TABLE} {{");
        let _ = writeln!(s, "  comment \"otpatch window {}: lifted when the window ends\"", sanitize(&rs.window_id));
        for (chain, hook) in [("input", "input"), ("output", "output"), ("forward", "forward")] {
            let _ = writeln!(s, "  chain {chain} {{");
            let _ = writeln!(s, "    type filter hook {hook} priority filter - 10; policy accept;");
            match chain {
                "input" => s.push_str("    iif \"lo\" accept\n"),
                "output" => s.push_str("    oif \"lo\" accept\n"),
                _ => {}
            }
            // No blanket "established": a session that no flow allows passes nothing during the window. ICMP
            // errors about a tracked connection (path MTU discovery) do, and so does IPv6 neighbour discovery.
            // Protocol numbers, not names: nft resolves names through /etc/protocols, which a minimal gateway
            // image may lack (1 = ICMP, 58 = ICMPv6).
            s.push_str("    meta l4proto { 1, 58 } ct state related accept\n");
            if chain != "forward" {
                let types: Vec<String> = super::ICMPV6_ND_TYPES.iter().map(u8::to_string).collect();
                let _ = writeln!(
                    s,
                    "    icmpv6 type {{ {} }} accept comment \"IPv6 neighbour discovery\"",
                    types.join(", ")
                );
            }
            for r in &rs.rules {
                for line in rule_lines(r, chain) {
                    let _ = writeln!(s, "    {line} accept comment \"{}\"", sanitize(&r.why));
                }
            }
            if rs.log_drops {
                let _ = writeln!(
                    s,
                    "    limit rate 10/second burst 20 packets log prefix \"otpatch drop {chain}: \" level info"
                );
            }
            s.push_str("    counter drop comment \"otpatch: not allowed during the window\"\n");
            s.push_str("  }\n");
        }
        s.push_str("}\n");
        s
    }

    /// Packets dropped so far, summed over the drop rules (None when the table is not there).
    pub async fn dropped(&self) -> BackendResult<Option<u64>> {
        let text = match run(&self.argv, &["-j", "list", "table", "inet", TABLE], None).await {
            Ok(t) => t,
            Err(_) if !self.active().await? => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(dropped_from_json(&text)?))
    }

    /// The ruleset as nft lists it (for status displays).
    pub async fn listing(&self) -> BackendResult<Option<String>> {
        if !self.active().await? {
            return Ok(None);
        }
        run(&self.argv, &["list", "table", "inet", TABLE], None).await.map(Some)
    }
}

/// Drop-rule counters from `nft -j list table` output.
pub fn dropped_from_json(text: &str) -> BackendResult<u64> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BackendError::new(format!("unreadable nft JSON: {e}")))?;
    let items = v["nftables"].as_array().ok_or_else(|| BackendError::new("nft JSON without an nftables array"))?;
    let mut total = 0u64;
    for item in items {
        let Some(expr) = item["rule"]["expr"].as_array() else { continue };
        let drops = expr.iter().any(|e| e.get("drop").is_some());
        if !drops {
            continue;
        }
        for e in expr {
            if let Some(p) = e["counter"]["packets"].as_u64() {
                total += p;
            }
        }
    }
    Ok(total)
}

/// Characters that could break out of an nft string.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '"' | '\\' | '\n' | '\r' | ';' | '{' | '}')).take(100).collect()
}

fn family(a: &IpAddr) -> &'static str {
    match a {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

/// The nft match expressions of a rule in a chain (see [`super::peer_matches`]). The reply half never opens a
/// connection: for TCP a SYN without ACK does not match it, for UDP only what conntrack knows as established does.
fn rule_lines(r: &Rule, chain: &str) -> Vec<String> {
    let (f, p) = (family(&r.addr), proto_name(r.protocol));
    super::peer_matches(r, chain)
        .into_iter()
        .map(|m| {
            let addr = if m.peer_is_destination { "daddr" } else { "saddr" };
            let port = if m.port_is_destination { "dport" } else { "sport" };
            let guard = match (m.reply, r.protocol) {
                (false, _) => "",
                (true, Protocol::Tcp) => " tcp flags & (syn | ack) != syn",
                (true, Protocol::Udp) => " ct state established",
            };
            format!("{f} {addr} {} {p} {port} {}{guard}", r.addr, r.port)
        })
        .collect()
}

#[async_trait]
impl Firewall for NftFirewall {
    async fn apply(&self, plan: &SegmentationPlan) -> BackendResult<()> {
        let rs = Ruleset::resolve(plan).await?;
        run(&self.argv, &["-f", "-"], Some(&Self::script(&rs))).await.map(|_| ())
    }

    async fn lift(&self) -> BackendResult<LiftReport> {
        let dropped = self.dropped().await?;
        run(&self.argv, &["-f", "-"], Some(&format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"))).await?;
        Ok(LiftReport { was_active: dropped.is_some(), dropped_packets: dropped.unwrap_or(0) })
    }

    async fn active(&self) -> BackendResult<bool> {
        let tables = run(&self.argv, &["list", "tables"], None).await?;
        Ok(tables.lines().any(|l| l.trim() == format!("table inet {TABLE}")))
    }

    async fn inspect(&self) -> BackendResult<Option<FirewallView>> {
        let (Some(ruleset), Some(dropped)) = (self.listing().await?, self.dropped().await?) else { return Ok(None) };
        Ok(Some(FirewallView { backend: "nftables".into(), ruleset, dropped_packets: dropped }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otpatch_common::policy::{Direction, Protocol};

    fn rs() -> Ruleset {
        Ruleset {
            window_id: "w-1\"; flush ruleset".into(),
            rules: vec![
                Rule {
                    addr: "192.0.2.10".parse().unwrap(),
                    port: 8443,
                    protocol: Protocol::Tcp,
                    direction: Direction::Outbound,
                    routed: false,
                    why: "patch server".into(),
                },
                Rule {
                    addr: "2001:db8::5".parse().unwrap(),
                    port: 4840,
                    protocol: Protocol::Udp,
                    direction: Direction::Inbound,
                    routed: false,
                    why: "flow scada".into(),
                },
            ],
            log_drops: true,
        }
    }

    #[test]
    fn script_allows_both_directions_by_address_and_port_and_drops_the_rest() {
        let s = NftFirewall::script(&rs());
        assert!(s.starts_with("add table inet otpatch\ndelete table inet otpatch\ntable inet otpatch {"));
        assert!(s.contains("ip daddr 192.0.2.10 tcp dport 8443 accept comment \"patch server\""));
        assert!(s.contains("ip saddr 192.0.2.10 tcp sport 8443 tcp flags & (syn | ack) != syn accept"));
        assert!(s.contains("ip6 saddr 2001:db8::5 udp dport 4840 accept"));
        assert!(s.contains("ip6 daddr 2001:db8::5 udp sport 4840 ct state established accept"));
        assert!(!s.contains("established,related"), "no blanket rule for sessions opened before the window");
        assert_eq!(s.matches("icmpv6 type { 133, 134, 135, 136, 137 } accept").count(), 2, "input and output");
        let forward = &s[s.find("chain forward").unwrap()..];
        assert!(!forward.contains("192.0.2.10"), "the gateway's own flows are not forwarded: {forward}");
        assert_eq!(s.matches("counter drop").count(), 3);
        assert_eq!(s.matches("log prefix").count(), 3);
        // A hostile window id cannot inject statements.
        assert!(!s.contains("\"; flush ruleset"));
    }

    #[test]
    fn counters_are_read_from_drop_rules_only() {
        let json = r#"{"nftables":[{"metainfo":{}},{"rule":{"expr":[{"counter":{"packets":7,"bytes":1}},{"accept":null}]}},
            {"rule":{"expr":[{"counter":{"packets":3,"bytes":180}},{"drop":null}]}},
            {"rule":{"expr":[{"counter":{"packets":2,"bytes":120}},{"drop":null}]}}]}"#;
        assert_eq!(dropped_from_json(json).unwrap(), 5);
        assert!(dropped_from_json("not json").is_err());
    }
}
