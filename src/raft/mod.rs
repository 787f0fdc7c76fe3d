//! Raft: the log that orders every change to the IR's state, and the election that picks
//! the dispatcher. openraft does the protocol; this module supplies its storage (sled),
//! its transport (gRPC over mutual TLS) and its timing.

pub mod network;
pub mod store;
pub mod types;

use std::sync::Arc;

use crate::timing;

pub use types::{Node, NodeId, Raft, TypeConfig};

/// Entries between snapshots, at least. A small state snapshots every 2,000 entries, which
/// bounds the log to a few megabytes (an entry is a command or a batch of them, bounded by
/// the proposer); a big one less often, see [`snapshot_loop`].
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 2000;

/// Objects of the state (jobs, services, keys) per entry between snapshots: a snapshot costs
/// time in proportion to the state, so spacing them in proportion too keeps its cost per
/// write constant (encoding eight small objects per entry), and the log stays a fraction of
/// the state's size.
const OBJECTS_PER_ENTRY: u64 = 8;

/// Entries per AppendEntries message.
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// Bytes per snapshot chunk sent to a lagging or new node.
pub const SNAPSHOT_CHUNK: u64 = 1 << 20;

/// Timing and log bounds of the Raft group; the timing is in [`crate::timing`], which says
/// why (failover of the dispatcher is an election).
pub fn config(cluster_name: &str, snapshot_every_entries: Option<u64>) -> Arc<openraft::Config> {
    let snapshot_every = snapshot_every_entries.unwrap_or(DEFAULT_SNAPSHOT_EVERY).max(2);
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: timing::RAFT_HEARTBEAT.as_millis() as u64,
        election_timeout_min: timing::RAFT_ELECTION_MIN.as_millis() as u64,
        election_timeout_max: timing::RAFT_ELECTION_MAX.as_millis() as u64,
        // Keep a quarter of a snapshot interval behind each snapshot for slow followers:
        // the log stays bounded and a follower a little behind still catches up from the log.
        // `snapshot_loop` decides, from the log and the state's size.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: snapshot_every / 4,
        // Purge in steps of at least this many entries (openraft skips smaller purges).
        purge_batch_size: (snapshot_every / 4).clamp(1, 256),
        install_snapshot_timeout: timing::RAFT_INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
        // Entries per AppendEntries and bytes per snapshot chunk: with the proposer's batch
        // bound these keep every Raft message a few MiB at most, far under `MAX_MESSAGE`.
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK,
        ..Default::default()
    };
    Arc::new(config.validate().expect("static Raft configuration is valid"))
}

/// Triggers a snapshot once the log since the last one holds `snapshot_every` entries or one
/// per [`OBJECTS_PER_ENTRY`] objects of the state, whichever is more. A fixed interval would make a write cost grow
/// with the state (a 100,000-job state snapshotted every 2,000 entries spends most of its
/// time encoding snapshots); this keeps the cost per entry constant.
pub async fn snapshot_loop(raft: Raft, state: Arc<std::sync::RwLock<crate::state::IrState>>, snapshot_every: u64) {
    let mut metrics = raft.metrics();
    let mut triggered_at: Option<u64> = None;
    loop {
        if metrics.changed().await.is_err() {
            return;
        }
        let (applied, last_snapshot) = {
            let m = metrics.borrow();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        let Some(applied) = applied else { continue };
        let objects = state.read().unwrap_or_else(|e| e.into_inner()).objects();
        let interval = snapshot_every.max(objects / OBJECTS_PER_ENTRY);
        // Counted from the later of the last snapshot and the last trigger, so a snapshot in
        // the making is not asked for again on every entry.
        let since = last_snapshot
            .max(triggered_at)
            .map_or(applied + 1, |s| applied.saturating_sub(s));
        if since >= interval {
            triggered_at = Some(applied);
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}
