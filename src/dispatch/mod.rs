//! The dispatcher: on the Raft leader, it returns the jobs of nodes gone Offline to the
//! queue and places queued jobs on the least-loaded Online nodes. Its decisions are Raft
//! entries; workers learn of them by applying the log.
//!
//! It also takes the workers' reports on their attempts (`Dispatcher::report`): progress,
//! kept in memory here (a few times a second per job is not worth a log entry), permission
//! to publish, outcomes and hand-backs, which are committed. What it keeps (the progress
//! board, its wake-up) is behind the `Dispatcher` handle the wiring gives to the services
//! and to the loop.

pub mod placement;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tonic::Status;

use crate::node::forward::{Calling, FORWARD_TIMEOUT, Hop, Reports};
use crate::node::handle::Node;
use crate::node::liveness::Health;
use crate::node::proposer::ProposeError;
use crate::proto::{self, job_report_request::Phase};
use crate::state::jobs::{JobState, Outcome};
use crate::state::{Command, NodeId, Rejection};
use placement::{Candidate, Waiting};

use crate::timing::DISPATCH_IDLE_ROUND as IDLE_ROUND;

/// The latest progress of running attempts, as their workers report it.
#[derive(Default)]
pub struct ProgressBoard {
    by_job: Mutex<HashMap<String, Progress>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub attempt: u32,
    pub rows: u64,
    pub bytes: u64,
    pub files: u64,
}

impl ProgressBoard {
    pub fn get(&self, job_id: &str, attempt: u32) -> Option<Progress> {
        let map = self.by_job.lock().expect("progress lock");
        map.get(job_id).copied().filter(|p| p.attempt == attempt)
    }

    fn set(&self, job_id: &str, p: Progress) {
        self.by_job.lock().expect("progress lock").insert(job_id.to_string(), p);
    }

    fn forget(&self, job_id: &str) {
        self.by_job.lock().expect("progress lock").remove(job_id);
    }
}

/// Why the dispatcher could not take a report (a refused one is an answer, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// This node does not lead, or a majority does not confirm it: the report did not run.
    #[error("this node is not the dispatcher")]
    NotDispatcher,
    #[error("malformed job outcome: {0}")]
    MalformedOutcome(String),
    #[error("a job report without a phase (start, progress, publish or finish)")]
    NoPhase,
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

impl From<DispatchError> for Status {
    fn from(e: DispatchError) -> Status {
        match e {
            DispatchError::NotDispatcher => crate::node::forward::not_dispatcher(),
            DispatchError::MalformedOutcome(_) | DispatchError::NoPhase => Status::invalid_argument(e.to_string()),
            DispatchError::Propose(e) => e.into(),
        }
    }
}

use crate::timing::DRAINING_FOR;

/// What the dispatcher keeps between rounds and reports, shared by the services (job
/// reports, `job show`'s progress, wake-ups on submit) and the dispatch loop.
#[derive(Default)]
pub struct Dispatcher {
    progress: ProgressBoard,
    /// Wakes the dispatch loop at once (a job submitted or finished).
    wake: Notify,
    /// Nodes that handed their attempts back because they are shutting down, and since when.
    draining: Mutex<HashMap<NodeId, Instant>>,
}

impl Dispatcher {
    /// The latest progress of `attempt` of `job_id`, if its worker reported any here.
    pub fn progress(&self, job_id: &str, attempt: u32) -> Option<Progress> {
        self.progress.get(job_id, attempt)
    }

    /// Asks for a dispatch round now rather than at the next idle tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn is_draining(&self, node: NodeId) -> bool {
        let mut draining = self.draining.lock().expect("draining lock");
        draining.retain(|_, since| since.elapsed() < DRAINING_FOR);
        draining.contains_key(&node)
    }
}

/// Runs on every node; acts while this node is the dispatcher, until the node shuts down.
pub async fn dispatch_loop(node: Arc<Node>, dispatcher: Arc<Dispatcher>) {
    let mut metrics = node.raft.metrics();
    let mut leading_since: Option<(u64, Instant)> = None;
    let offline_timeout = Duration::from_millis(node.config.offline_timeout_ms);
    loop {
        tokio::select! {
            _ = metrics.changed() => {}
            _ = dispatcher.wake.notified() => {}
            _ = tokio::time::sleep(IDLE_ROUND) => {}
            _ = node.shutdown.cancelled() => return,
        }
        if !node.is_leader() {
            leading_since = None;
            continue;
        }
        let term = metrics.borrow().current_term;
        let since = match leading_since {
            Some((t, at)) if t == term => at,
            _ => {
                // The fault-injection suite (tests/nemesis) checks from these events that no
                // Raft term ever had two dispatchers: keep the message and the `term` field.
                tracing::info!(term, "became dispatcher");
                leading_since = Some((term, Instant::now()));
                Instant::now()
            }
        };
        // A new dispatcher has heard nobody yet: it waits one offline timeout before it
        // takes anyone for gone.
        let may_judge = since.elapsed() >= offline_timeout;
        if let Err(e) = round(&node, &dispatcher, may_judge).await {
            tracing::debug!(error = %e, "dispatch round did not complete");
        }
    }
}

async fn round(node: &Node, dispatcher: &Dispatcher, may_judge: bool) -> Result<(), ProposeError> {
    let view = node.liveness.view(node);
    let now = crate::unix_now_ms();
    // Retention, decided here and carried out by a log entry so every node drops the same jobs.
    crate::node::job_history::prune_if_due(node).await?;
    // Schedules' due slots become jobs before placement, so they are placed this round.
    crate::schedule::fire::fire_due(node).await?;
    if may_judge {
        for (id, status, _) in &view {
            if *status != Health::Offline {
                continue;
            }
            // The exact attempts judged lost, so that a late commit of this entry cannot
            // requeue what the node was given since.
            let lost: Vec<(String, u32)> = node.read_state(|s| {
                s.jobs
                    .active()
                    .filter(|j| j.state == JobState::Running && j.node == Some(*id))
                    .map(|j| (j.id.clone(), j.attempt))
                    .collect()
            });
            if !lost.is_empty() {
                tracing::warn!(
                    node = *id,
                    jobs = lost.len(),
                    "node is offline; its jobs go back to the queue"
                );
                for (job, _) in &lost {
                    dispatcher.progress.forget(job);
                }
                node.propose(Command::RequeueNode {
                    node: *id,
                    jobs: lost,
                    now_ms: now,
                })
                .await?;
            }
        }
    }
    let (queue, candidates) = node.read_state(|s| {
        let mut waiting: Vec<(u64, Waiting)> = s
            .jobs
            .active()
            .filter(|j| j.state == JobState::Queued && j.not_before_ms <= now)
            .map(|j| {
                (
                    j.seq,
                    Waiting {
                        job_id: j.id.clone(),
                        next_attempt: j.attempt + 1,
                    },
                )
            })
            .collect();
        waiting.sort_by_key(|(seq, _)| *seq);
        let candidates: Vec<Candidate> = view
            .iter()
            .map(|(id, status, load)| Candidate {
                id: *id,
                online: *status == Health::Online && !dispatcher.is_draining(*id),
                running: s.running_on(*id),
                // A node that stops says limit 0 in its heartbeats; `node set-limit` must
                // not override that.
                limit: match load.concurrent_jobs_limit {
                    0 => 0,
                    heard => s.node_limits.get(id).copied().unwrap_or(heard),
                },
                cpu_percent: load.cpu_percent,
                available_memory_mb: load.available_memory_mb,
            })
            .collect();
        (waiting.into_iter().map(|(_, w)| w).collect::<Vec<_>>(), candidates)
    });
    if queue.is_empty() {
        return Ok(());
    }
    let assignments = placement::place(&queue, &candidates);
    if assignments.is_empty() {
        return Ok(());
    }
    for a in &assignments {
        tracing::debug!(job = %a.job_id, node = a.node, attempt = a.attempt, "job assigned");
    }
    node.propose(Command::AssignJobs {
        assignments,
        now_ms: now,
    })
    .await?;
    Ok(())
}

impl Dispatcher {
    /// A worker's report on attempt `req.attempt` of a job (start, progress, publish, finish,
    /// release), from node `from` (read from its certificate by the caller). Runs on the
    /// dispatcher. Refused reports (a stale attempt, an ended job) answer `accepted: false`:
    /// fencing, not an error.
    pub async fn report(
        &self,
        node: &Node,
        from: NodeId,
        req: proto::JobReportRequest,
    ) -> Result<proto::JobReportReply, DispatchError> {
        let command = match &req.phase {
            // A node that restarts may believe for a moment that it still leads (its last vote
            // was its own): the answer to "may this attempt start?" must come from a dispatcher
            // a majority confirms, never from a stale one.
            Some(Phase::Start(_)) if !node.confirm_leadership().await => return Err(DispatchError::NotDispatcher),
            Some(phase @ (Phase::Progress(_) | Phase::Start(_))) => {
                let moved = match phase {
                    Phase::Progress(p) => *p,
                    _ => proto::ReportProgress::default(),
                };
                let current = node.read_state(|s| s.jobs.get(&req.job_id).map(|j| (j.state, j.attempt, j.node)));
                let accepted = current == Some((JobState::Running, req.attempt, Some(from)));
                if accepted {
                    let p = Progress {
                        attempt: req.attempt,
                        rows: moved.rows,
                        bytes: moved.bytes,
                        files: moved.files,
                    };
                    self.progress.set(&req.job_id, p);
                }
                return Ok(proto::JobReportReply {
                    accepted,
                    ..Default::default()
                });
            }
            Some(Phase::Publish(_)) => Command::BeginPublish {
                job_id: req.job_id.clone(),
                attempt: req.attempt,
                node: from,
            },
            Some(Phase::Finish(outcome)) => {
                let outcome =
                    Outcome::try_from(outcome.clone()).map_err(|e| DispatchError::MalformedOutcome(e.to_string()))?;
                Command::FinishJob {
                    job_id: req.job_id.clone(),
                    attempt: req.attempt,
                    node: from,
                    outcome,
                    now_ms: crate::unix_now_ms(),
                }
            }
            Some(Phase::Release(_)) => {
                // Marked before the job is requeued, so that no round places it back there.
                self.draining
                    .lock()
                    .expect("draining lock")
                    .insert(from, Instant::now());
                Command::ReleaseJob {
                    job_id: req.job_id.clone(),
                    attempt: req.attempt,
                    node: from,
                    now_ms: crate::unix_now_ms(),
                }
            }
            None => return Err(DispatchError::NoPhase),
        };
        let ending = matches!(req.phase, Some(Phase::Finish(_) | Phase::Release(_)));
        match node.propose(command).await {
            Ok(_) => {
                if ending {
                    self.progress.forget(&req.job_id);
                    self.wake();
                }
                Ok(proto::JobReportReply {
                    accepted: true,
                    ..Default::default()
                })
            }
            Err(ProposeError::Rejected(why)) => {
                tracing::info!(job = %req.job_id, attempt = req.attempt, node = from, why = %why, "report refused");
                Ok(proto::JobReportReply {
                    accepted: false,
                    message: why.to_string(),
                    cancelled: matches!(why, Rejection::CancelledBeforePublish { .. }),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Where this node's worker sends its reports: the dispatcher here if this node leads, else
/// over the node channel. The wiring hands it to the worker as its `Reports`.
pub struct ToDispatcher {
    pub node: Arc<Node>,
    pub dispatcher: Arc<Dispatcher>,
}

#[tonic::async_trait]
impl Reports for ToDispatcher {
    async fn report(
        &self,
        request: proto::JobReportRequest,
        patience: Duration,
    ) -> Result<proto::JobReportReply, Status> {
        let calling = Calling {
            patience,
            attempt: FORWARD_TIMEOUT,
            // The state machine takes a repeated report for the same attempt as the first.
            idempotent: true,
        };
        let node = &self.node;
        node.at_dispatcher(calling, |hop| {
            let request = request.clone();
            async move {
                match hop {
                    Hop::Here => self
                        .dispatcher
                        .report(node, node.id(), request)
                        .await
                        .map_err(Status::from),
                    Hop::There(channel) => proto::cluster_client::ClusterClient::new(channel)
                        .job_report(request)
                        .await
                        .map(|r| r.into_inner()),
                }
            }
        })
        .await
    }
}
