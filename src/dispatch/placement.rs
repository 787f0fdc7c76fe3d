//! Where queued jobs go: a pure function of the queue and the nodes' load, so it can be
//! tested without a cluster.

use crate::state::NodeId;
use crate::state::jobs::Assignment;

/// A node as placement sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: NodeId,
    /// Only Online nodes take new jobs.
    pub online: bool,
    pub running: u32,
    pub limit: u32,
    pub cpu_percent: f32,
    pub available_memory_mb: u64,
}

/// A queued job ready to run: its id and the attempt its next assignment will be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub job_id: String,
    pub next_attempt: u32,
}

/// Assigns `queue` (already in FIFO order) to nodes: each job to the Online node with a free
/// slot and the lowest `running / limit`, ties broken by lower CPU, then more available
/// memory, then lower id (so the choice is stable). Jobs wait when every slot is taken; a
/// job never jumps ahead of an earlier one.
pub fn place(queue: &[Waiting], nodes: &[Candidate]) -> Vec<Assignment> {
    let mut nodes: Vec<Candidate> = nodes.iter().filter(|n| n.online && n.limit > 0).cloned().collect();
    let mut out = Vec::new();
    for job in queue {
        let best = nodes.iter_mut().filter(|n| n.running < n.limit).min_by(|a, b| {
            let load = |n: &Candidate| f64::from(n.running) / f64::from(n.limit);
            load(a)
                .total_cmp(&load(b))
                .then(a.cpu_percent.total_cmp(&b.cpu_percent))
                .then(b.available_memory_mb.cmp(&a.available_memory_mb))
                .then(a.id.cmp(&b.id))
        });
        let Some(node) = best else { break };
        node.running += 1;
        out.push(Assignment {
            job_id: job.job_id.clone(),
            node: node.id,
            attempt: job.next_attempt,
            limit: node.limit,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, running: u32, limit: u32, cpu: f32) -> Candidate {
        Candidate {
            id,
            online: true,
            running,
            limit,
            cpu_percent: cpu,
            available_memory_mb: 1000,
        }
    }

    fn queue(n: usize) -> Vec<Waiting> {
        (0..n)
            .map(|i| Waiting {
                job_id: format!("j{i}"),
                next_attempt: 1,
            })
            .collect()
    }

    #[test]
    fn least_loaded_first_by_ratio_then_cpu() {
        let nodes = [node(1, 2, 4, 10.0), node(2, 1, 4, 50.0), node(3, 1, 4, 20.0)];
        let placed = place(&queue(1), &nodes);
        assert_eq!(placed[0].node, 3, "same ratio as node 2, less CPU");
        // A bigger node with more running jobs can still be the least loaded.
        let nodes = [node(1, 1, 2, 0.0), node(2, 3, 8, 0.0)];
        assert_eq!(place(&queue(1), &nodes)[0].node, 2);
    }

    #[test]
    fn never_above_a_limit_and_the_rest_waits_in_order() {
        let nodes = [node(1, 0, 2, 0.0), node(2, 0, 1, 0.0)];
        let placed = place(&queue(5), &nodes);
        assert_eq!(placed.len(), 3);
        assert_eq!(
            placed.iter().map(|a| a.job_id.as_str()).collect::<Vec<_>>(),
            ["j0", "j1", "j2"],
            "FIFO: the first three jobs, none skipped"
        );
        assert_eq!(placed.iter().filter(|a| a.node == 1).count(), 2);
        assert_eq!(placed.iter().filter(|a| a.node == 2).count(), 1);
    }

    #[test]
    fn offline_and_full_nodes_take_nothing() {
        let mut off = node(1, 0, 4, 0.0);
        off.online = false;
        let full = node(2, 4, 4, 0.0);
        assert!(place(&queue(2), &[off, full]).is_empty());
    }

    #[test]
    fn spreads_evenly_across_equal_nodes() {
        let nodes: Vec<Candidate> = (1..=4).map(|id| node(id, 0, 3, 0.0)).collect();
        let placed = place(&queue(8), &nodes);
        for id in 1..=4 {
            assert_eq!(placed.iter().filter(|a| a.node == id).count(), 2, "node {id}");
        }
    }
}
