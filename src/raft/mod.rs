//! Raft: the log that orders every change to the IR's state, and the election that picks
//! the dispatcher. openraft does the protocol; this module supplies its storage (sled),
//! its transport (gRPC over mutual TLS) and its timing.

pub mod network;
pub mod store;
pub mod types;

use std::sync::Arc;

use crate::timing;

pub use types::{Node, NodeId, Raft, TypeConfig};

/// Entries between snapshots. The state is small (kilobytes), so a snapshot is cheap; 2,000
/// entries bounds the log to a few megabytes at most (an entry is a command or a batch of
/// them, bounded by the proposer) while snapshots stay rare.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 2000;

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
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
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
