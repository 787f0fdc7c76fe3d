//! A node restored from a backup keeps its Raft id but comes back without its log and
//! without the record of its votes. Until it has caught up it must not vote:
//!
//! * it could vote a second time in a term where it already voted (two leaders in a term);
//! * with an empty log it grants its vote to any candidate, so entries that only it and the
//!   old leader held (committed by that majority) could be lost if the old leader dies
//!   before it catches up: it and a lagging node would elect the lagging one.
//!
//! So while the data dir's `restored` marker exists the node answers appends (its
//! acknowledgements are honest: it has what it acknowledges) but refuses every vote. The
//! first append it receives tells it the leader's commit index; once it has applied that
//! far it holds everything committed before it came back, removes the marker and votes
//! again. If the leader is lost before that, no leader is elected until it returns: that
//! is the price of not losing acknowledged writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::handle::Node;
use crate::datadir::DataDir;
use crate::timing::RESTORED_CATCH_UP_CHECK;

pub struct RestoreGuard {
    marker: PathBuf,
    active: AtomicBool,
    /// The leader's commit index seen in the first append after the restore.
    catch_up_to: Mutex<Option<u64>>,
}

impl RestoreGuard {
    pub fn load(dir: &DataDir) -> Self {
        let marker = dir.restored_marker_path();
        let active = marker.exists();
        if active {
            tracing::warn!("restored from a backup: not voting until this node has caught up with the dispatcher");
        }
        RestoreGuard {
            marker,
            active: AtomicBool::new(active),
            catch_up_to: Mutex::new(None),
        }
    }

    pub fn refuses_votes(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Notes the commit index of an append from the leader (only the first one counts).
    pub fn saw_leader_commit(&self, index: Option<u64>) {
        if !self.refuses_votes() {
            return;
        }
        let mut target = self.catch_up_to.lock().expect("restore guard lock");
        if target.is_none() {
            *target = Some(index.unwrap_or(0));
        }
    }

    /// Lifts the guard once `applied` reaches the commit index it waits for.
    fn caught_up(&self, applied: u64) -> bool {
        let reached = matches!(*self.catch_up_to.lock().expect("restore guard lock"), Some(t) if applied >= t);
        if reached && self.active.swap(false, Ordering::AcqRel) {
            if let Err(e) = std::fs::remove_file(&self.marker) {
                tracing::error!(error = %e, path = %self.marker.display(), "cannot remove the restore marker");
            }
            tracing::info!(applied, "restored node caught up; voting again");
        }
        reached
    }
}

/// Watches applied progress until a restored node has caught up.
pub async fn watch(node: Arc<Node>) {
    if !node.restore_guard.refuses_votes() {
        return;
    }
    let mut metrics = node.raft.metrics();
    loop {
        let applied = metrics.borrow().last_applied.map(|l| l.index).unwrap_or(0);
        if node.restore_guard.caught_up(applied) {
            return;
        }
        // A change of metrics, or a first append that set the target, both come with a
        // metrics update; the timeout only bounds how late a lifted guard is noticed.
        tokio::select! {
            _ = tokio::time::timeout(RESTORED_CATCH_UP_CHECK, metrics.changed()) => {}
            _ = node.shutdown.cancelled() => return,
        }
    }
}
