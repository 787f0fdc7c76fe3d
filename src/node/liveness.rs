//! Liveness: every node sends its load to every other node about once a second, and
//! judges from what it hears which nodes are Online, Offline (silent for the offline
//! timeout) or Limited (up, but unable to reach some peer that is itself up).
//!
//! Heartbeats go to every peer, not only to the dispatcher, so a newly elected dispatcher
//! already knows everyone's load and can answer `status` at once after a failover. A
//! heartbeat of another protocol version is refused: its load is not taken, and the node
//! shows as Limited with the reason, rather than as Offline (it is up) or Online.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::handle::Node;
use super::sysload;
use crate::proto::{self, NodeLoad};
use crate::protocol::{self, ProtocolMismatch};

pub use crate::timing::HEARTBEAT_INTERVAL;

use crate::timing::{CLOCK_SKEW_WARN, HEARTBEAT_TIMEOUT};

/// How a node is doing, as judged from what was last heard of every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Online,
    /// Silent for the offline timeout.
    Offline,
    /// Up, but it cannot reach some peer that is itself up, or it speaks another protocol
    /// version.
    Limited,
}

struct Seen {
    at_ms: i64,
    /// Its clock minus ours when its last heartbeat arrived (the send time it carries, less
    /// our receive time; the network's delay makes it a little low).
    clock_offset_ms: i64,
    load: NodeLoad,
    /// Its last heartbeat was refused for this reason (another protocol version); `load` is
    /// then empty.
    refused: Option<String>,
}

pub struct Liveness {
    seen: Mutex<HashMap<String, Seen>>,
    reachable: Mutex<Vec<String>>,
    cpu: Mutex<sysload::CpuSample>,
    /// Set once most peers refused this node's certificate as revoked in one heartbeat
    /// round: it was removed, though it may never have received the entries saying so.
    pub refused_as_revoked: std::sync::atomic::AtomicBool,
    /// Peer addresses whose last connection, probed apart from the heartbeat round, ended
    /// in the `certificate_revoked` alert; and the probes under way.
    revoked_by: Arc<Mutex<HashSet<String>>>,
    probing: Arc<Mutex<HashSet<String>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Liveness {
            seen: Mutex::default(),
            reachable: Mutex::default(),
            cpu: Mutex::new(sysload::cpu_sample()),
            refused_as_revoked: Default::default(),
            revoked_by: Arc::default(),
            probing: Arc::default(),
        }
    }

    /// This node's own load (its clock is the reference: offset 0).
    pub fn record(&self, name: &str, load: NodeLoad) {
        self.record_at(name, load, 0);
    }

    fn record_at(&self, name: &str, load: NodeLoad, clock_offset_ms: i64) {
        let seen = Seen {
            at_ms: crate::unix_now_ms(),
            clock_offset_ms,
            load,
            refused: None,
        };
        self.seen.lock().expect("liveness lock").insert(name.to_string(), seen);
    }

    /// A heartbeat from node `name` (as its certificate says): its load is taken if it speaks
    /// this node's protocol; else it is remembered as up but refused, and the caller is told.
    pub fn heard(&self, name: &str, req: proto::HeartbeatRequest) -> Result<(), ProtocolMismatch> {
        if let Err(mismatch) = protocol::check(req.protocol_version) {
            let reason = mismatch.to_string();
            let mut seen = self.seen.lock().expect("liveness lock");
            if seen.get(name).and_then(|s| s.refused.as_ref()) != Some(&reason) {
                tracing::warn!(peer = %name, %reason, "heartbeat refused: the peer speaks another protocol version");
            }
            let refused = Seen {
                at_ms: crate::unix_now_ms(),
                clock_offset_ms: 0,
                load: NodeLoad::default(),
                refused: Some(reason),
            };
            seen.insert(name.to_string(), refused);
            return Err(mismatch);
        }
        let offset = if req.sent_at_ms > 0 {
            req.sent_at_ms - crate::unix_now_ms()
        } else {
            0
        };
        self.record_at(name, req.load.unwrap_or_default(), offset);
        Ok(())
    }

    /// Every member's health and last load, as heard here.
    pub fn view(&self, node: &Node) -> Vec<(crate::raft::NodeId, Health, NodeLoad)> {
        let now = crate::unix_now_ms();
        let timeout = node.config.offline_timeout_ms as i64;
        let members: Vec<(crate::raft::NodeId, String)> =
            node.read_state(|s| s.nodes.values().map(|n| (n.id, n.name.clone())).collect());
        let names: Vec<&str> = members.iter().map(|(_, n)| n.as_str()).collect();
        let seen = self.seen.lock().expect("liveness lock");
        members
            .iter()
            .map(|(id, name)| {
                let (status, _) = health(name, &names, &seen, now, timeout);
                let load = seen.get(name).map(|s| s.load.clone()).unwrap_or_default();
                (*id, status, load)
            })
            .collect()
    }

    fn own_load(&self, node: &Node) -> NodeLoad {
        let now = sysload::cpu_sample();
        let cpu_percent = {
            let mut before = self.cpu.lock().expect("cpu lock");
            let pct = sysload::cpu_percent(*before, now);
            *before = now;
            pct
        };
        NodeLoad {
            running_jobs: node.read_state(|s| s.running_on(node.id())),
            concurrent_jobs_limit: node.jobs_limit(),
            cpu_percent,
            available_memory_mb: sysload::available_memory_mb(),
            version: crate::VERSION.to_string(),
            reachable_peers: self.reachable.lock().expect("reachable lock").clone(),
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

/// One peer's answer to a heartbeat.
struct Answer {
    name: String,
    address: String,
    ok: bool,
    /// Refused this node's certificate as revoked, and said so.
    revoked: bool,
    /// Closed the connection without saying why.
    unclear: bool,
}

impl Liveness {
    /// Probes each peer that closed on this node without a reason, apart from the round (a
    /// probe may take a second; the round must not), one probe per peer at a time; a peer
    /// that answers again is no longer counted as refusing.
    fn probe_unclear(&self, node: &Node, answers: &[Answer]) {
        let mut revoked_by = self.revoked_by.lock().expect("revoked_by lock");
        let mut probing = self.probing.lock().expect("probing lock");
        for answer in answers {
            if answer.ok {
                revoked_by.remove(&answer.address);
            }
            if !answer.unclear || !probing.insert(answer.address.clone()) {
                continue;
            }
            let (address, tls) = (answer.address.clone(), node.peers.tls());
            let (revoked_by, probing) = (self.revoked_by.clone(), self.probing.clone());
            tokio::spawn(async move {
                if crate::transport::client::refuses_as_revoked(&address, tls).await {
                    revoked_by.lock().expect("revoked_by lock").insert(address.clone());
                }
                probing.lock().expect("probing lock").remove(&address);
            });
        }
    }
}

/// Sends this node's load to every peer once per interval, until `until`. When the node
/// begins to shut down it sends at once (its limit is 0 from then: no more jobs for it),
/// and goes on until `until` so that its peers do not take it for Offline while it drains.
pub async fn heartbeat_loop(node: Arc<Node>, until: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled(), if !announced => announced = true,
            _ = until.cancelled() => return,
        }
        let load = node.liveness.own_load(&node);
        node.liveness.record(&node.config.name, load.clone());
        let me = node.id();
        let mut peers: Vec<(String, String)> = node.read_state(|s| {
            s.nodes
                .values()
                .filter(|n| n.id != me)
                .map(|n| (n.name.clone(), n.address.clone()))
                .collect()
        });
        // Nothing applied yet (a node just registered, or removed before it caught up, to
        // which the dispatcher no longer replicates): ask the members its key named.
        if peers.is_empty() {
            peers = node.config.first_peers.iter().map(|a| (a.clone(), a.clone())).collect();
        }
        let calls = peers.into_iter().map(|(name, address)| {
            let request = proto::HeartbeatRequest {
                name: node.config.name.clone(),
                load: Some(load.clone()),
                sent_at_ms: crate::unix_now_ms(),
                protocol_version: protocol::PROTOCOL_VERSION,
            };
            let mut client = proto::cluster_client::ClusterClient::new(node.peers.channel(&address));
            async move {
                let answer = tokio::time::timeout(HEARTBEAT_TIMEOUT, client.heartbeat(request)).await;
                let revoked = matches!(&answer, Ok(Err(e)) if crate::pki::tls::refused_as_revoked(e));
                // Connected, then closed: perhaps refused after the handshake (see
                // `refuses_as_revoked`), which only a probe can tell.
                let unclear = !revoked
                    && matches!(&answer, Ok(Err(e)) if matches!(e.code(), tonic::Code::Cancelled | tonic::Code::Unavailable)
                        && !crate::transport::client::never_connected(e));
                Answer {
                    name,
                    address,
                    ok: matches!(answer, Ok(Ok(_))),
                    revoked,
                    unclear,
                }
            }
        });
        let answers = futures::future::join_all(calls).await;
        node.liveness.probe_unclear(&node, &answers);
        // A node removed while it could not hear the dispatcher (partitioned, paused, far
        // behind, or before it ever caught up) never receives its revocation nor the
        // membership change: the dispatcher no longer replicates to it. Peers refusing its
        // certificate as revoked tell it instead; a majority of them, so that no single peer
        // can stop it (node::run stops on this).
        let refusals = {
            let revoked_by = node.liveness.revoked_by.lock().expect("revoked_by lock");
            answers
                .iter()
                .filter(|a| a.revoked || revoked_by.contains(&a.address))
                .count()
        };
        if refusals > 0 && refusals * 2 > answers.len() {
            node.liveness
                .refused_as_revoked
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let reached: Vec<(String, bool)> = answers.into_iter().map(|a| (a.name, a.ok)).collect();
        let mut reachable = node.liveness.reachable.lock().expect("reachable lock");
        // openraft's own per-retry logs are off by default; one line per change says the same.
        for (name, ok) in &reached {
            match (reachable.contains(name), *ok) {
                (true, false) => tracing::warn!(peer = %name, "peer stopped answering heartbeats"),
                (false, true) => tracing::info!(peer = %name, "peer answering heartbeats"),
                _ => {}
            }
        }
        *reachable = reached
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(name, _)| name)
            .collect();
    }
}

/// How node `name` is doing, from what was last heard of every node: `Offline` if silent
/// for `timeout` ms, `Limited` if its heartbeats are refused (another protocol version) or
/// (with the peers it misses) if it is up but does not reach some peer that is itself up,
/// else `Online`. A peer that is down or refused makes nobody Limited.
fn health(name: &str, all: &[&str], seen: &HashMap<String, Seen>, now: i64, timeout: i64) -> (Health, Vec<String>) {
    let fresh = |n: &str| seen.get(n).is_some_and(|s| now - s.at_ms <= timeout);
    let refused = |n: &str| seen.get(n).is_some_and(|s| s.refused.is_some());
    if !fresh(name) {
        return (Health::Offline, Vec::new());
    }
    if refused(name) {
        return (Health::Limited, Vec::new());
    }
    let reaches = seen
        .get(name)
        .map(|s| s.load.reachable_peers.as_slice())
        .unwrap_or_default();
    let missed: Vec<String> = all
        .iter()
        .filter(|peer| **peer != name && fresh(peer) && !refused(peer) && !reaches.iter().any(|r| r == *peer))
        .map(|p| p.to_string())
        .collect();
    if missed.is_empty() {
        (Health::Online, missed)
    } else {
        (Health::Limited, missed)
    }
}

/// The IR's status as this node sees it. On the dispatcher, with `dispatcher` its own id
/// (confirmed by a majority), this is the IR's status; `None` is a node's own view when no
/// dispatcher could be confirmed.
pub fn status_reply(node: &Node, dispatcher: Option<crate::raft::NodeId>) -> proto::StatusReply {
    let m = node.metrics();
    let membership = m.membership_config.membership().clone();
    let now = crate::unix_now_ms();
    let timeout = node.config.offline_timeout_ms as i64;
    let state = node.state.read().expect("state lock").clone();
    let seen = node.liveness.seen.lock().expect("liveness lock");
    let names: Vec<&str> = state.nodes.values().map(|n| n.name.as_str()).collect();

    let nodes: Vec<proto::NodeStatus> = state
        .nodes
        .values()
        .map(|n| {
            let heard = seen.get(&n.name);
            let load = heard.map(|s| s.load.clone()).unwrap_or_default();
            let (status, unreachable) = health(&n.name, &names, &seen, now, timeout);
            let role = if dispatcher == Some(n.id) {
                proto::NodeRole::Dispatcher
            } else {
                proto::NodeRole::Worker
            };
            let raft_role = if membership.voter_ids().any(|v| v == n.id) {
                proto::RaftRole::Voter
            } else {
                proto::RaftRole::Learner
            };
            let status_reason = match (status, heard) {
                (Health::Limited, Some(s)) => s.refused.clone().unwrap_or_default(),
                _ => String::new(),
            };
            proto::NodeStatus {
                id: n.id,
                name: n.name.clone(),
                address: n.address.clone(),
                status: proto::NodeHealth::from(status).into(),
                role: role.into(),
                raft_role: raft_role.into(),
                status_reason,
                version: load.version.clone(),
                // Running jobs from the replicated state (exact on the dispatcher); the limit
                // as set with `node set-limit`, else as the node reports its default.
                running_jobs: state.running_on(n.id),
                concurrent_jobs_limit: state
                    .node_limits
                    .get(&n.id)
                    .copied()
                    .unwrap_or(load.concurrent_jobs_limit),
                cpu_percent: load.cpu_percent,
                available_memory_mb: load.available_memory_mb,
                last_heartbeat_ms: heard.map(|s| s.at_ms).unwrap_or(0),
                cert_expires: n.cert_not_after,
                unreachable_peers: unreachable,
                clock_offset_ms: match (status, heard) {
                    (Health::Offline, _) | (_, None) => 0,
                    (_, Some(s)) => s.clock_offset_ms,
                },
            }
        })
        .collect();
    let warnings = clock_warning(&nodes).into_iter().collect();
    let (ir_name, ir_id) = state
        .ir
        .as_ref()
        .map(|ir| (ir.name.clone(), ir.id.clone()))
        .unwrap_or_default();
    proto::StatusReply {
        ir_name,
        ir_id,
        dispatcher: dispatcher
            .and_then(|id| state.nodes.get(&id))
            .map(|n| n.name.clone())
            .unwrap_or_default(),
        nodes,
        term: m.current_term,
        answered_by: node.config.name.clone(),
        queued_jobs: state.queued_jobs() as u32,
        warnings,
    }
}

/// A warning when the clocks of the nodes that are up disagree by more than
/// [`CLOCK_SKEW_WARN`]: schedules fire by the dispatcher's clock, so a failover between
/// nodes whose clocks disagree moves when slots fire (README, "Schedules").
fn clock_warning(nodes: &[proto::NodeStatus]) -> Option<String> {
    let up = nodes
        .iter()
        .filter(|n| n.status() != proto::NodeHealth::Offline && n.last_heartbeat_ms != 0);
    let earliest = up.clone().min_by_key(|n| n.clock_offset_ms)?;
    let latest = up.max_by_key(|n| n.clock_offset_ms)?;
    let spread = latest.clock_offset_ms - earliest.clock_offset_ms;
    (spread > CLOCK_SKEW_WARN.as_millis() as i64).then(|| {
        format!(
            "the nodes' clocks disagree by {:.1} s ({} is ahead of {}): schedules fire by the dispatcher's clock; keep every node's clock in sync (NTP)",
            spread as f64 / 1000.0,
            latest.name,
            earliest.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(at_ms: i64, reaches: &[&str]) -> Seen {
        let load = NodeLoad {
            reachable_peers: reaches.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Seen {
            clock_offset_ms: 0,
            at_ms,
            load,
            refused: None,
        }
    }

    const ALL: [&str; 4] = ["n1", "n2", "n3", "n4"];

    #[test]
    fn clocks_apart_by_more_than_two_seconds_are_warned_of() {
        let node = |name: &str, offset: i64, health: proto::NodeHealth| proto::NodeStatus {
            name: name.into(),
            status: health.into(),
            last_heartbeat_ms: 1,
            clock_offset_ms: offset,
            ..Default::default()
        };
        let online = proto::NodeHealth::Online;
        let calm = [node("n1", 0, online), node("n2", -40, online), node("n3", 1900, online)];
        assert_eq!(clock_warning(&calm), None);
        let skewed = [
            node("n1", 0, online),
            node("n2", -1200, online),
            node("n3", 4100, online),
        ];
        let w = clock_warning(&skewed).expect("a warning");
        assert!(w.contains("disagree by 5.3 s (n3 is ahead of n2)"), "{w}");
        // An Offline node's last offset is stale; a node never heard from has none.
        let gone = [node("n1", 0, online), node("n2", 60_000, proto::NodeHealth::Offline)];
        assert_eq!(clock_warning(&gone), None);
        let mut never = node("n2", 60_000, online);
        never.last_heartbeat_ms = 0;
        assert_eq!(clock_warning(&[node("n1", 0, online), never]), None);
    }

    #[test]
    fn everyone_heard_and_reaching_everyone_is_online() {
        let map: HashMap<String, Seen> = ALL
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    seen(1000, &ALL.iter().copied().filter(|p| p != n).collect::<Vec<_>>()),
                )
            })
            .collect();
        for n in ALL {
            assert_eq!(health(n, &ALL, &map, 2000, 4000), (Health::Online, vec![]));
        }
    }

    #[test]
    fn a_silent_node_is_offline_and_makes_nobody_limited() {
        let mut map = HashMap::new();
        map.insert("n1".into(), seen(10_000, &["n2", "n4"]));
        map.insert("n2".into(), seen(10_000, &["n1", "n4"]));
        map.insert("n3".into(), seen(1_000, &["n1", "n2", "n4"])); // last heard 9 s ago
        map.insert("n4".into(), seen(10_000, &["n1", "n2"]));
        assert_eq!(health("n3", &ALL, &map, 10_000, 4000).0, Health::Offline);
        assert_eq!(health("n1", &ALL, &map, 10_000, 4000), (Health::Online, vec![]));
        assert_eq!(health("n4", &ALL, &map, 10_000, 4000), (Health::Online, vec![]));
    }

    #[test]
    fn a_node_that_cannot_reach_a_live_peer_is_limited() {
        let mut map = HashMap::new();
        map.insert("n1".into(), seen(10_000, &["n2", "n3", "n4"]));
        map.insert("n2".into(), seen(10_000, &["n1", "n3"])); // cannot reach n4
        map.insert("n3".into(), seen(10_000, &["n1", "n2", "n4"]));
        map.insert("n4".into(), seen(10_000, &["n1", "n3"])); // cannot reach n2
        assert_eq!(
            health("n2", &ALL, &map, 10_500, 4000),
            (Health::Limited, vec!["n4".to_string()])
        );
        assert_eq!(
            health("n4", &ALL, &map, 10_500, 4000),
            (Health::Limited, vec!["n2".to_string()])
        );
        assert_eq!(health("n1", &ALL, &map, 10_500, 4000), (Health::Online, vec![]));
    }

    #[test]
    fn a_node_of_another_protocol_version_is_limited_with_the_reason_and_its_load_ignored() {
        let liveness = Liveness::new();
        for n in ["n1", "n2", "n4"] {
            liveness.record(n, seen(0, &["n1", "n2", "n4"]).load);
        }
        let from_n3 = |protocol_version| proto::HeartbeatRequest {
            name: "n3".into(),
            load: Some(NodeLoad {
                running_jobs: 7,
                concurrent_jobs_limit: 8,
                ..Default::default()
            }),
            sent_at_ms: 0,
            protocol_version,
        };
        let refused = liveness.heard("n3", from_n3(999)).expect_err("another version");
        let why = format!("protocol version 999, this IR speaks {}", protocol::PROTOCOL_VERSION);
        assert_eq!(refused.to_string(), why);
        let now = crate::unix_now_ms();
        {
            let map = liveness.seen.lock().unwrap();
            assert_eq!(map["n3"].load, NodeLoad::default(), "its load is not taken");
            assert_eq!(map["n3"].refused.as_deref(), Some(why.as_str()));
            assert_eq!(health("n3", &ALL, &map, now, 4000), (Health::Limited, vec![]));
            // Nobody reaches n3 (it refuses them too): that makes nobody else Limited.
            assert_eq!(health("n1", &ALL, &map, now, 4000), (Health::Online, vec![]));
        }
        liveness
            .heard("n3", from_n3(protocol::PROTOCOL_VERSION))
            .expect("this version");
        let map = liveness.seen.lock().unwrap();
        assert_eq!((map["n3"].load.running_jobs, map["n3"].refused.is_none()), (7, true));
    }

    #[test]
    fn never_heard_is_offline() {
        let map = HashMap::new();
        assert_eq!(health("n1", &ALL, &map, 10_000, 4000).0, Health::Offline);
    }
}
