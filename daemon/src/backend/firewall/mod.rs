//! Window segmentation: the [`Firewall`](crate::backend::Firewall) backends.
//!
//! While a window is open the gateway may talk only to the patch server and to the OT flows the plant needs
//! (every health-probe target and the policy's extra flows, by address and port, so that a Modbus connection
//! opened before the window keeps working even if conntrack has never seen it). Everything else is dropped and
//! counted. The rules live in the project's own table (nftables: `table inet otpatch`; iptables: chains
//! `OTPATCH-INPUT`, `OTPATCH-OUTPUT`, `OTPATCH-FORWARD` hooked first into the built-in chains); the site's own
//! tables and chains are never touched. Applying and lifting are each one transaction.
//!
//! What the window adds is only ever a restriction: traffic it allows goes on to the site's own rules (nftables:
//! the site's base chains still run after ours; iptables: our chains `RETURN` to the built-in chain instead of
//! accepting), so a flow the site drops stays dropped. Exactly:
//! - a connection is allowed by address, port and who opens it; the reply half of a rule (the peer's port as
//!   source port) cannot open a connection (a TCP SYN without ACK, or a UDP packet conntrack sees as new, is
//!   dropped there);
//! - there is no blanket "established" rule: a session opened before the window that no flow allows (a remote
//!   access session, say) passes nothing while the window is open;
//! - forwarding rules exist only for policy flows marked `routed`; the gateway's own flows (patch server, probe
//!   targets) have input/output rules only;
//! - ICMP errors related to a tracked connection (path MTU discovery) and IPv6 neighbour discovery (ICMPv6 types
//!   133-137) pass, so allowed IPv6 peers stay reachable.
//!
//! Both backends run an external command (`nft`, `iptables-restore`) given as an argv prefix, so tests run the
//! very same code inside a network namespace (`ip netns exec gw nft`).

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;

use otpatch_common::policy::{Direction, FirewallBackend, Protocol};
use tokio::io::AsyncWriteExt;

use crate::backend::{BackendError, BackendResult, SegmentationPlan};

pub mod iptables;
pub mod nft;

/// Name of the nftables table and prefix of the iptables chains.
pub const TABLE: &str = "otpatch";

/// One allowed flow, resolved to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Who opens the connection: the gateway (outbound), the peer (inbound), or either.
    pub direction: Direction,
    /// The flow passes through the gateway: it gets forwarding rules (and only then).
    pub routed: bool,
    /// Why it is allowed (for the ruleset's comments).
    pub why: String,
}

/// The patch server's addresses for one window: resolved once, before segmentation (or pinned by the policy), and
/// written down before the rules go up, so that the ruleset allows exactly these, the fetcher connects to exactly
/// these (TLS still checks the server's name), and a daemon that restarts mid-window uses the same ones. No DNS
/// traffic is needed while the window is segmented. Kept in `<state>/server-addresses.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerAddresses {
    pub window_id: String,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

impl ServerAddresses {
    pub fn path(state_dir: &std::path::Path) -> std::path::PathBuf {
        state_dir.join("server-addresses.json")
    }

    /// The record for `window_id`, if one was written for it (an unreadable record is an error).
    pub fn load(state_dir: &std::path::Path, window_id: &str) -> BackendResult<Option<ServerAddresses>> {
        let r: Option<ServerAddresses> =
            crate::fsutil::load_json(&Self::path(state_dir), "which addresses the patch server has in this window")
                .map_err(BackendError::new)?;
        Ok(r.filter(|r| r.window_id == window_id))
    }

    /// The addresses for `window_id`: the ones recorded for it (recovery), else the policy's pinned ones, else
    /// the host resolved now; recorded before they are returned.
    pub async fn for_window(
        state_dir: &std::path::Path,
        window_id: &str,
        host: &str,
        port: u16,
        pinned: &[IpAddr],
    ) -> BackendResult<Vec<SocketAddr>> {
        if let Some(r) = Self::load(state_dir, window_id)? {
            if r.host == host && !r.addrs.is_empty() {
                return Ok(r.addrs);
            }
        }
        let addrs = if pinned.is_empty() {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| BackendError::new(format!("cannot resolve the patch server {host}: {e}")))?
                .collect();
            dedup(found)
        } else {
            pinned.iter().map(|a| SocketAddr::new(*a, port)).collect()
        };
        if addrs.is_empty() {
            return Err(BackendError::new(format!("the patch server {host} has no address")));
        }
        let record = ServerAddresses { window_id: window_id.into(), host: host.into(), addrs: addrs.clone() };
        let text = serde_json::to_vec(&record).map_err(|e| BackendError::new(e.to_string()))?;
        std::fs::create_dir_all(state_dir).map_err(|e| BackendError::new(format!("{}: {e}", state_dir.display())))?;
        crate::fsutil::write_atomic(&Self::path(state_dir), &text)
            .map_err(|e| BackendError::new(format!("recording the patch server's addresses: {e}")))?;
        Ok(addrs)
    }
}

/// The resolved ruleset of one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub window_id: String,
    pub rules: Vec<Rule>,
    pub log_drops: bool,
}

impl Ruleset {
    /// Resolves the plan: the server's host name (if it is one) through the system resolver, every probe
    /// target and flow as given. Done before the window segments, so name resolution itself is never blocked.
    pub async fn resolve(plan: &SegmentationPlan) -> BackendResult<Ruleset> {
        let mut rules = Vec::new();
        if let Some((host, port)) = &plan.server {
            // The orchestrator resolved them before segmenting (and recorded them); only a plan made without that
            // (a test, a tool) is resolved here.
            let addrs: Vec<SocketAddr> = if plan.server_addrs.is_empty() {
                tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| BackendError::new(format!("cannot resolve the patch server {host}: {e}")))?
                    .collect()
            } else {
                plan.server_addrs.clone()
            };
            if addrs.is_empty() {
                return Err(BackendError::new(format!("the patch server {host} has no address")));
            }
            for a in dedup(addrs) {
                rules.push(Rule {
                    addr: a.ip(),
                    port: a.port(),
                    protocol: Protocol::Tcp,
                    direction: Direction::Outbound,
                    routed: false,
                    why: format!("patch server {host}"),
                });
            }
        }
        for t in &plan.probe_targets {
            rules.push(Rule {
                addr: t.ip(),
                port: t.port(),
                protocol: Protocol::Tcp,
                direction: Direction::Outbound,
                routed: false,
                why: "health probe target".into(),
            });
        }
        for f in &plan.flows {
            rules.push(Rule {
                addr: f.address,
                port: f.port,
                protocol: f.protocol,
                direction: f.direction,
                routed: f.routed,
                why: format!("flow {}", f.name),
            });
        }
        // The same flow named twice (a probe target that is also a policy flow) needs one rule.
        let mut seen = Vec::new();
        rules.retain(|r| {
            let key = (r.addr, r.port, r.protocol, r.direction, r.routed);
            if seen.contains(&key) {
                false
            } else {
                seen.push(key);
                true
            }
        });
        Ok(Ruleset { window_id: plan.window_id.clone(), rules, log_drops: plan.log_drops })
    }
}

/// One match of a rule in a chain: whether the peer is the packet's destination (else its source), whether the
/// rule's port is the destination port (else the source port), and whether the packet is the reply half of the
/// connection (the peer answering on its service port), which must never open a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerMatch {
    pub peer_is_destination: bool,
    pub port_is_destination: bool,
    pub reply: bool,
}

/// The matches a rule needs in a chain (`input`, `output` or `forward`). The direction of the connection decides
/// which side's port is the service port; both directions of each connection are allowed by address and port, so
/// that traffic of a connection conntrack has never seen (opened before the window) still passes, but the
/// direction that carries replies is marked so the backends refuse connection openings on it.
pub(crate) fn peer_matches(r: &Rule, chain: &str) -> Vec<PeerMatch> {
    let m =
        |peer_is_destination, port_is_destination, reply| PeerMatch { peer_is_destination, port_is_destination, reply };
    // Opened towards the peer: -> peer:port, replies peer:port ->.
    let (to_peer, to_peer_reply) = (m(true, true, false), m(false, false, true));
    // Opened by the peer: peer -> :port, replies :port -> peer.
    let (from_peer, from_peer_reply) = (m(false, true, false), m(true, false, true));
    let outbound = matches!(r.direction, Direction::Outbound | Direction::Both);
    let inbound = matches!(r.direction, Direction::Inbound | Direction::Both);
    let mut v = Vec::new();
    let routed_here = chain == "forward";
    if routed_here != r.routed {
        // The gateway's own flows are never forwarded; a routed flow does not end on the gateway.
        return v;
    }
    match chain {
        "output" => {
            if outbound {
                v.push(to_peer);
            }
            if inbound {
                v.push(from_peer_reply);
            }
        }
        "input" => {
            if outbound {
                v.push(to_peer_reply);
            }
            if inbound {
                v.push(from_peer);
            }
        }
        // Routed traffic: the same two halves, whichever interface they cross.
        _ => {
            if outbound {
                v.extend([to_peer, to_peer_reply]);
            }
            if inbound {
                v.extend([from_peer, from_peer_reply]);
            }
        }
    }
    v
}

/// ICMPv6 neighbour discovery: router solicitation and advertisement, neighbour solicitation and advertisement,
/// redirect. Without them no IPv6 peer stays reachable once its neighbour entry expires.
pub(crate) const ICMPV6_ND_TYPES: [u8; 5] = [133, 134, 135, 136, 137];

fn dedup(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v.dedup();
    v
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Runs `argv` with `input` on stdin; an error carries the command's own stderr.
pub(crate) async fn run(argv: &[String], extra: &[&str], input: Option<&str>) -> BackendResult<String> {
    let (prog, args) = argv.split_first().ok_or_else(|| BackendError::new("empty firewall command"))?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args).args(extra).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let shown = format!("{} {}", argv.join(" "), extra.join(" "));
    let mut child = cmd.spawn().map_err(|e| {
        let msg = format!("cannot run {}: {e}", shown.trim());
        if e.kind() == std::io::ErrorKind::NotFound {
            BackendError::not_installed(msg)
        } else {
            BackendError::new(msg)
        }
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| BackendError::new(format!("writing to {}: {e}", shown.trim())))?;
    }
    let out = child.wait_with_output().await.map_err(|e| BackendError::new(format!("{}: {e}", shown.trim())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(BackendError::new(format!("{} failed ({}): {}", shown.trim(), out.status, err.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lifts what either backend may have left behind (a daemon that crashed mid-window, a policy that switched
/// backends, a start that failed): `table inet otpatch` and the `OTPATCH-*` chains of iptables and ip6tables,
/// except `keep` (the backend this daemon drives itself, whose recovery decides). A tool that is not installed
/// is skipped. Returns what it did, one line each, and the errors of tools that are installed.
pub async fn lift_leftovers(keep: Option<FirewallBackend>) -> (Vec<String>, Vec<String>) {
    use crate::backend::Firewall;
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    let nft = nft::NftFirewall::new(vec!["nft".into()]);
    let ipt = iptables::IptablesFirewall::new(Vec::new(), "iptables", "ip6tables");
    let both: [(FirewallBackend, &dyn Firewall); 2] =
        [(FirewallBackend::Nftables, &nft), (FirewallBackend::Iptables, &ipt)];
    for (which, fw) in both {
        if keep == Some(which) {
            continue;
        }
        let name = if which == FirewallBackend::Nftables { "nftables" } else { "iptables" };
        match fw.lift().await {
            Ok(r) if r.was_active => done.push(format!("{name}: lifted ({} packets dropped)", r.dropped_packets)),
            Ok(_) => done.push(format!("{name}: nothing left")),
            // The tool is not installed: nothing of this backend can be in place.
            Err(e) if e.kind() == crate::backend::ErrorKind::NotInstalled => {
                done.push(format!("{name}: not installed"))
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    (done, errors)
}

/// Picks the backend: the policy's choice, or with `auto` nftables when `nft` answers, else iptables.
pub async fn detect(choice: FirewallBackend, nft_argv: &[String]) -> FirewallBackend {
    match choice {
        FirewallBackend::Auto => {
            if run(nft_argv, &["list", "tables"], None).await.is_ok() {
                FirewallBackend::Nftables
            } else {
                FirewallBackend::Iptables
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otpatch_common::policy::Flow;

    #[tokio::test]
    async fn resolve_merges_server_probes_and_flows_without_duplicates() {
        let plan = SegmentationPlan {
            window_id: "w-1".into(),
            server: Some(("127.0.0.1".into(), 8443)),
            server_addrs: vec![],
            flows: vec![
                Flow {
                    name: "historian".into(),
                    address: "10.0.5.20".parse().unwrap(),
                    port: 4840,
                    protocol: Protocol::Tcp,
                    direction: Direction::Outbound,
                    routed: false,
                },
                Flow {
                    name: "plc-again".into(),
                    address: "10.0.5.10".parse().unwrap(),
                    port: 502,
                    protocol: Protocol::Tcp,
                    direction: Direction::Outbound,
                    routed: false,
                },
            ],
            probe_targets: vec!["10.0.5.10:502".parse().unwrap()],
            log_drops: false,
        };
        let rs = Ruleset::resolve(&plan).await.unwrap();
        let got: Vec<(String, u16)> = rs.rules.iter().map(|r| (r.addr.to_string(), r.port)).collect();
        assert_eq!(got, vec![("127.0.0.1".into(), 8443), ("10.0.5.10".into(), 502), ("10.0.5.20".into(), 4840)]);
    }

    #[tokio::test]
    async fn server_addresses_are_resolved_once_per_window_and_reused_by_its_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let pinned: Vec<IpAddr> = vec!["198.18.1.2".parse().unwrap()];
        // Pinned by the policy: no resolution at all (the name does not resolve), recorded for the window.
        let a = ServerAddresses::for_window(state, "w-1", "patch.invalid", 8443, &pinned).await.unwrap();
        assert_eq!(a, vec!["198.18.1.2:8443".parse::<SocketAddr>().unwrap()]);
        // A restart in the same window uses what was recorded, even with no pin and no resolver.
        let again = ServerAddresses::for_window(state, "w-1", "patch.invalid", 8443, &[]).await.unwrap();
        assert_eq!(again, a);
        assert_eq!(ServerAddresses::load(state, "w-1").unwrap().unwrap().addrs, a);
        // The next window resolves again (and this name cannot be).
        let e = ServerAddresses::for_window(state, "w-2", "patch.invalid", 8443, &[]).await.unwrap_err();
        assert!(e.0.contains("patch.invalid"), "{e}");
        assert_eq!(ServerAddresses::load(state, "w-2").unwrap(), None);
        // The ruleset allows exactly the recorded addresses, without resolving the name.
        let plan = SegmentationPlan {
            window_id: "w-1".into(),
            server: Some(("patch.invalid".into(), 8443)),
            server_addrs: a.clone(),
            flows: vec![],
            probe_targets: vec![],
            log_drops: false,
        };
        let rs = Ruleset::resolve(&plan).await.unwrap();
        assert_eq!(rs.rules.iter().map(|r| (r.addr, r.port)).collect::<Vec<_>>(), vec![(pinned[0], 8443)]);
        // A damaged record is an error, not "nothing recorded".
        std::fs::write(ServerAddresses::path(state), b"{").unwrap();
        assert!(ServerAddresses::load(state, "w-1").is_err());
    }

    #[tokio::test]
    async fn an_unresolvable_server_is_a_clear_error() {
        let plan = SegmentationPlan {
            window_id: "w-1".into(),
            server: Some(("no-such-host.invalid".into(), 443)),
            server_addrs: vec![],
            flows: vec![],
            probe_targets: vec![],
            log_drops: false,
        };
        let e = Ruleset::resolve(&plan).await.unwrap_err();
        assert!(e.0.contains("no-such-host.invalid"), "{e}");
    }

    #[tokio::test]
    async fn failing_commands_report_their_stderr() {
        let e = run(&["sh".into(), "-c".into()], &["echo boom >&2; exit 3"], None).await.unwrap_err();
        assert!(e.0.contains("boom") && e.0.contains("exit status: 3"), "{e}");
        let e = run(&["/nonexistent/nft".into()], &[], None).await.unwrap_err();
        assert!(e.0.contains("cannot run /nonexistent/nft"), "{e}");
    }
}
