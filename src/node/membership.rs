//! Keeps Raft membership equal to the members the replicated state lists. Runs on every
//! node, acts only on the dispatcher: a joined node becomes a learner, is promoted to voter
//! once it has caught up, and a removed node leaves the membership. Driving membership from
//! the state (rather than from the join call) means a dispatcher that dies halfway through
//! a join leaves nothing half done: the next one finishes it.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use super::handle::Node;
use crate::raft::NodeId;

use crate::timing::RECONCILE_INTERVAL;

/// A learner is promoted once its replicated log is within this many entries of the
/// leader's: close enough that the joint configuration commits without waiting on it.
const CAUGHT_UP_LAG: u64 = 16;

/// A membership change Raft refused (not the leader any more, a change already under way):
/// the next round tries again.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ChangeRefused(#[from] RaftError<NodeId, ClientWriteError<NodeId, crate::raft::Node>>);

pub async fn reconcile_loop(node: Arc<Node>) {
    loop {
        tokio::select! {
            _ = node.membership_changed.notified() => {}
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            _ = node.shutdown.cancelled() => return,
        }
        if node.is_leader()
            && let Err(e) = reconcile_once(&node).await
        {
            tracing::debug!(error = %e, "membership change deferred");
        }
    }
}

async fn reconcile_once(node: &Node) -> Result<(), ChangeRefused> {
    let m = node.metrics();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let wanted = node.read_state(|s| s.nodes.clone());
    if wanted.is_empty() {
        return Ok(()); // state not bootstrapped yet
    }

    // Removed nodes first, so a replacement never finds the IR over its size.
    let gone_voters: BTreeSet<NodeId> = voters.iter().filter(|id| !wanted.contains_key(id)).copied().collect();
    if !gone_voters.is_empty() {
        tracing::info!(?gone_voters, "removing voters");
        node.raft
            .change_membership(ChangeMembers::RemoveVoters(gone_voters), false)
            .await?;
        return Ok(());
    }
    let gone_learners: BTreeSet<NodeId> = learners.iter().filter(|id| !wanted.contains_key(id)).copied().collect();
    if !gone_learners.is_empty() {
        node.raft
            .change_membership(ChangeMembers::RemoveNodes(gone_learners), false)
            .await?;
        return Ok(());
    }

    for (id, record) in &wanted {
        if !voters.contains(id) && !learners.contains(id) {
            tracing::info!(node = %record.name, id, "adding learner");
            node.raft
                .add_learner(*id, BasicNode::new(&record.address), false)
                .await?;
        }
    }

    let last = m.last_log_index.unwrap_or(0);
    let caught_up: BTreeSet<NodeId> = learners
        .iter()
        .filter(|id| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .is_some_and(|matched| matched.index + CAUGHT_UP_LAG >= last)
        })
        .copied()
        .collect();
    if !caught_up.is_empty() {
        tracing::info!(?caught_up, "promoting learners to voters");
        node.raft
            .change_membership(ChangeMembers::AddVoterIds(caught_up), false)
            .await?;
    }
    Ok(())
}
