//! Copy jobs in the replicated state: the queue, assignments, outcomes, and the fencing
//! that makes a late report from an old attempt harmless.
//!
//! A job's `attempt` counts assignments. Every report a worker makes carries the attempt
//! it runs; a report whose attempt (or node) is not the job's current one is refused, so a
//! worker that was paused or cut off and comes back cannot change a job that has moved on.
//! Output becomes visible only after `BeginPublish` for the current attempt is committed.

use serde::{Deserialize, Serialize};

use super::{CommandResult, IrState, NodeId, Rejection};
use crate::job_spec::{Consistency, JobSpec, WrittenColumn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "Queued",
            JobState::Running => "Running",
            JobState::Succeeded => "Succeeded",
            JobState::Failed => "Failed",
            JobState::Cancelled => "Cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// Submission order: the queue is served first in, first out.
    pub seq: u64,
    pub spec: JobSpec,
    pub state: JobState,
    /// The node running (or that last ran) the current attempt.
    pub node: Option<NodeId>,
    /// Assignments so far; 0 while never assigned.
    pub attempt: u32,
    /// The current attempt was allowed to make its output visible.
    pub publishing: bool,
    /// Some attempt was allowed to publish: its output may be visible (the node may have died
    /// before it said so). From then on the job can only end Succeeded: it is retried without
    /// counting attempts and can no longer be cancelled; publishing again is idempotent.
    #[serde(default)]
    pub publish_granted: bool,
    pub cancel_requested: bool,
    pub rows: u64,
    pub bytes: u64,
    pub files: u64,
    /// Files left as they were because they existed before the job (`--if-exists skip`).
    #[serde(default)]
    pub files_skipped: u64,
    pub check: Option<Consistency>,
    pub error: Option<String>,
    pub submitted_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// A retried job waits until then before it is assigned again.
    pub not_before_ms: i64,
    /// The columns the succeeded attempt wrote (none for binary copies), at most
    /// [`MAX_REPORTED_COLUMNS`](crate::job_spec::MAX_REPORTED_COLUMNS) of them.
    #[serde(default)]
    pub columns: Vec<WrittenColumn>,
    /// How many columns it wrote in all.
    #[serde(default)]
    pub columns_total: u64,
}

impl Job {
    /// A job as submitted: queued, never assigned. Its place in the queue (`seq`) is given
    /// when the submission is applied.
    pub fn queued(id: String, spec: JobSpec, submitted_at_ms: i64) -> Job {
        Job {
            id,
            seq: 0,
            spec,
            state: JobState::Queued,
            node: None,
            attempt: 0,
            publishing: false,
            publish_granted: false,
            cancel_requested: false,
            rows: 0,
            bytes: 0,
            files: 0,
            files_skipped: 0,
            check: None,
            error: None,
            submitted_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            not_before_ms: 0,
            columns: Vec::new(),
            columns_total: 0,
        }
    }
}

/// What a worker reports at the end of an attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded {
        rows: u64,
        bytes: u64,
        /// Files published; `files_skipped` more were staged and left unpublished.
        files: u64,
        #[serde(default)]
        files_skipped: u64,
        check: Consistency,
        /// The columns written, for `job show` (the first ones of a wide table); empty for
        /// binary copies.
        #[serde(default)]
        columns: Vec<WrittenColumn>,
        /// How many columns were written in all.
        #[serde(default)]
        columns_total: u64,
    },
    Failed {
        error: String,
        retryable: bool,
    },
    Cancelled,
}

/// One placement decided by the dispatcher; `limit` is the node's limit it was decided with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: String,
    pub node: NodeId,
    pub attempt: u32,
    pub limit: u32,
}

/// How a publish request refused because the job was cancelled begins: the worker reports
/// the attempt Cancelled when it sees it.
pub const CANCELLED_BEFORE_PUBLISH: &str = "cancelled before publishing";

/// How many finished jobs the IR keeps for `job list`/`job show`, and for how long. Older
/// ones are dropped by `PruneJobs`, so the state, every snapshot and every node's disk stay
/// bounded however long the IR runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobHistory {
    /// Most finished jobs kept; the earliest finished go first.
    pub max_jobs: u64,
    /// Finished jobs older than this many days go; 0 keeps them whatever their age.
    pub max_days: u32,
}

impl Default for JobHistory {
    /// Ten thousand jobs is a week of a job a minute and a few MiB of state; thirty days
    /// is what an operator looks back over after a month-end problem.
    fn default() -> Self {
        JobHistory {
            max_jobs: 10_000,
            max_days: 30,
        }
    }
}

/// The most jobs one `SeedJobHistory` makes: bounds one entry's apply (and a corrupt
/// entry's damage) like the proposer's batch bounds.
pub const MAX_SEEDED_PER_COMMAND: u32 = 1_000;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl JobHistory {
    /// Whether the oldest finished job of `jobs` (and so maybe more) is due to go at `now_ms`.
    pub fn prune_due(&self, jobs: &super::Jobs, now_ms: i64) -> bool {
        jobs.finished_len() as u64 > self.max_jobs
            || jobs
                .finished()
                .next()
                .is_some_and(|oldest| self.expired(oldest, now_ms))
    }

    fn expired(&self, job: &Job, now_ms: i64) -> bool {
        self.max_days > 0
            && job.finished_at_ms.unwrap_or(0) < now_ms.saturating_sub(i64::from(self.max_days).saturating_mul(DAY_MS))
    }
}

impl IrState {
    /// Jobs running (assigned, not finished) on `node`.
    pub fn running_on(&self, node: NodeId) -> u32 {
        self.jobs
            .active()
            .filter(|j| j.state == JobState::Running && j.node == Some(node))
            .count() as u32
    }

    pub fn queued_jobs(&self) -> usize {
        self.jobs.active().filter(|j| j.state == JobState::Queued).count()
    }

    pub(super) fn submit_job(&mut self, job: &Job) -> CommandResult {
        if self.jobs.contains_key(&job.id) {
            return CommandResult::refused(format!("job {} exists already", job.id));
        }
        let mut job = job.clone();
        self.job_seq += 1;
        job.seq = self.job_seq;
        self.jobs.insert(job);
        CommandResult::Ok
    }

    pub(super) fn set_job_history(&mut self, history: &JobHistory) -> CommandResult {
        self.job_history = *history;
        CommandResult::Ok
    }

    /// Drops the finished jobs the policy no longer keeps: past the count the earliest
    /// finished, and any older than the age limit. Only finished jobs: a queued or running
    /// job is never dropped, however old.
    pub(super) fn prune_jobs(&mut self, now_ms: i64) -> CommandResult {
        let policy = self.job_history;
        let over = (self.jobs.finished_len() as u64).saturating_sub(policy.max_jobs);
        let doomed: Vec<String> = self
            .jobs
            .finished()
            .enumerate()
            .take_while(|(i, j)| (*i as u64) < over || policy.expired(j, now_ms))
            .map(|(_, j)| j.id.clone())
            .collect();
        for id in &doomed {
            self.jobs.remove(id);
        }
        CommandResult::Ok
    }

    /// `count` finished copies of `template`, ids `<template id>-<n>`, each with its own
    /// place in the submission order, as if submitted and run one by one.
    pub(super) fn seed_job_history(&mut self, template: &Job, count: u32) -> CommandResult {
        if count > MAX_SEEDED_PER_COMMAND {
            return CommandResult::refused(format!("at most {MAX_SEEDED_PER_COMMAND} jobs per seed command"));
        }
        if !template.state.is_final() {
            return CommandResult::refused("seeded jobs must be finished");
        }
        for _ in 0..count {
            self.job_seq += 1;
            let mut job = template.clone();
            job.id = format!("{}-{}", template.id, self.job_seq);
            job.seq = self.job_seq;
            if self.jobs.contains_key(&job.id) {
                continue;
            }
            self.jobs.insert(job);
        }
        CommandResult::Ok
    }

    pub(super) fn assign_jobs(&mut self, assignments: &[Assignment], now_ms: i64) -> CommandResult {
        let mut results = Vec::with_capacity(assignments.len());
        for a in assignments {
            let running = self.running_on(a.node);
            let known = self.nodes.contains_key(&a.node);
            // A `node set-limit` committed after the dispatcher decided still counts.
            let limit = self.node_limits.get(&a.node).map_or(a.limit, |set| a.limit.min(*set));
            let result = match self.jobs.get(&a.job_id) {
                None => CommandResult::refused(format!("no job {}", a.job_id)),
                Some(_) if !known => CommandResult::refused(format!("no node {}", a.node)),
                Some(_) if running >= limit => CommandResult::Rejected(Rejection::AtLimit { node: a.node, limit }),
                Some(j) if j.state != JobState::Queued || j.attempt.checked_add(1) != Some(a.attempt) => {
                    CommandResult::refused(format!("job {} is not waiting for attempt {}", a.job_id, a.attempt))
                }
                Some(_) => {
                    self.jobs.update(&a.job_id, |j| {
                        j.state = JobState::Running;
                        j.node = Some(a.node);
                        j.attempt = a.attempt;
                        j.publishing = false;
                        j.started_at_ms.get_or_insert(now_ms);
                    });
                    CommandResult::Ok
                }
            };
            results.push(result);
        }
        CommandResult::Batch(results)
    }

    /// Whether `attempt` on `node` is the job's current one, or why a report about it is refused.
    fn check_current(&self, job_id: &str, attempt: u32, node: NodeId) -> Result<&Job, CommandResult> {
        match self.jobs.get(job_id) {
            None => Err(CommandResult::refused(format!("no job {job_id}"))),
            Some(j) if j.state != JobState::Running || j.attempt != attempt || j.node != Some(node) => {
                Err(CommandResult::Rejected(Rejection::StaleAttempt {
                    job_id: job_id.to_string(),
                    attempt,
                    now_attempt: j.attempt,
                    now_state: j.state.as_str().to_string(),
                }))
            }
            Some(j) => Ok(j),
        }
    }

    pub(super) fn begin_publish(&mut self, job_id: &str, attempt: u32, node: NodeId) -> CommandResult {
        match self.check_current(job_id, attempt, node) {
            Ok(j) if j.cancel_requested && !j.publish_granted => {
                CommandResult::Rejected(Rejection::CancelledBeforePublish {
                    job_id: job_id.to_string(),
                })
            }
            Ok(_) => {
                self.jobs.update(job_id, |j| {
                    j.publishing = true;
                    j.publish_granted = true;
                });
                CommandResult::Ok
            }
            Err(refused) => refused,
        }
    }

    pub(super) fn finish_job(
        &mut self,
        job_id: &str,
        attempt: u32,
        node: NodeId,
        outcome: &Outcome,
        now_ms: i64,
    ) -> CommandResult {
        match self.check_current(job_id, attempt, node) {
            Ok(j) if matches!(outcome, Outcome::Succeeded { .. }) && !j.publishing => {
                return CommandResult::refused(format!("job {job_id} attempt {attempt} never began publishing"));
            }
            Ok(_) => {}
            Err(refused) => return refused,
        }
        self.jobs
            .update(job_id, |j| end_attempt(j, outcome, now_ms))
            .unwrap_or(CommandResult::Ok)
    }

    /// A node went Offline: the attempts judged lost go back to the queue (or fail, once
    /// they have used their attempts; or end cancelled, if that was asked for). Only the
    /// attempts the dispatcher judged (`jobs`) are touched: an entry committed late, by the
    /// next leader, must not requeue what the node has been given since. `None`: every
    /// running job of the node (it was removed from the IR).
    pub(super) fn requeue_node(&mut self, node: NodeId, jobs: Option<&[(String, u32)]>, now_ms: i64) -> CommandResult {
        let lost: Vec<String> = self
            .jobs
            .active()
            .filter(|j| j.state == JobState::Running && j.node == Some(node))
            .filter(|j| {
                jobs.is_none_or(|judged| judged.iter().any(|(id, attempt)| *id == j.id && *attempt == j.attempt))
            })
            .map(|j| j.id.clone())
            .collect();
        for id in lost {
            self.jobs.update(&id, |j| {
                j.publishing = false;
                if j.publish_granted {
                    // Its output may be visible already: it must end Succeeded, by a new attempt
                    // that publishes again (idempotently).
                    j.state = JobState::Queued;
                    j.not_before_ms = now_ms;
                } else if j.cancel_requested {
                    j.state = JobState::Cancelled;
                    j.finished_at_ms = Some(now_ms);
                } else if j.attempt >= j.spec.retry.max_attempts {
                    j.state = JobState::Failed;
                    j.error = Some(format!(
                        "its node went offline during attempt {}, the last of {}",
                        j.attempt, j.spec.retry.max_attempts
                    ));
                    j.finished_at_ms = Some(now_ms);
                } else {
                    j.state = JobState::Queued;
                    j.not_before_ms = now_ms;
                }
            });
        }
        CommandResult::Ok
    }

    /// A worker that shuts down hands its attempt back: the job goes back to the queue (or
    /// ends cancelled, if that was asked for) like the attempt of a node gone Offline, but a
    /// hand-back is no failure, so it does not use up the job's attempts.
    pub(super) fn release_job(&mut self, job_id: &str, attempt: u32, node: NodeId, now_ms: i64) -> CommandResult {
        if let Err(refused) = self.check_current(job_id, attempt, node) {
            return refused;
        }
        self.jobs.update(job_id, |j| {
            j.publishing = false;
            if j.cancel_requested && !j.publish_granted {
                j.state = JobState::Cancelled;
                j.finished_at_ms = Some(now_ms);
            } else {
                j.state = JobState::Queued;
                j.not_before_ms = now_ms;
                // The next assignment numbers its attempt `attempt + 1` (fencing needs a new
                // number); the limit counts attempts that failed, so it grows by the one handed back.
                j.spec.retry.max_attempts = j.spec.retry.max_attempts.saturating_add(1);
            }
        });
        CommandResult::Ok
    }

    pub(super) fn cancel_job(&mut self, job_id: &str, now_ms: i64) -> CommandResult {
        match self.jobs.get(job_id) {
            None => CommandResult::refused(format!("no job {job_id}")),
            Some(j) if j.state.is_final() => {
                CommandResult::refused(format!("job {job_id} has already ended ({})", j.state.as_str()))
            }
            Some(j) if j.publishing || j.publish_granted => CommandResult::refused(format!(
                "job {job_id} has begun publishing its output; it is too late to cancel it"
            )),
            Some(_) => {
                self.jobs.update(job_id, |j| {
                    j.cancel_requested = true;
                    if j.state == JobState::Queued {
                        j.state = JobState::Cancelled;
                        j.finished_at_ms = Some(now_ms);
                    }
                    // Running: its worker sees the request and stops; it reports Cancelled.
                });
                CommandResult::Ok
            }
        }
    }
}

/// Ends (or, if it is to be retried, requeues) the current attempt of `j` as its worker reported.
fn end_attempt(j: &mut Job, outcome: &Outcome, now_ms: i64) -> CommandResult {
    match outcome {
        Outcome::Succeeded {
            rows,
            bytes,
            files,
            files_skipped,
            check,
            columns,
            columns_total,
        } => {
            (j.rows, j.bytes, j.files, j.files_skipped) = (*rows, *bytes, *files, *files_skipped);
            j.check = Some(check.clone());
            (j.columns, j.columns_total) = (columns.clone(), *columns_total);
            j.error = None;
            j.state = JobState::Succeeded;
        }
        Outcome::Failed { error, retryable } => {
            j.error = Some(if j.publish_granted && !*retryable {
                // A later attempt cannot even stage (the source is gone, say), but an
                // earlier one may have published before its node died: say so rather
                // than let "Failed" suggest the sink holds nothing.
                format!(
                    "{error} (an earlier attempt was allowed to publish before its node went offline: the sink may hold its complete output)"
                )
            } else {
                error.clone()
            });
            let must_finish = j.publish_granted && *retryable;
            if must_finish || (*retryable && !j.cancel_requested && j.attempt < j.spec.retry.max_attempts) {
                j.state = JobState::Queued;
                // Saturating: a submitted interval or a clock near the type's end must not wrap
                // round into the past (nor panic a debug build's apply).
                let interval = i64::try_from(j.spec.retry.interval_ms).unwrap_or(i64::MAX);
                j.not_before_ms = now_ms.saturating_add(interval);
            } else {
                j.state = JobState::Failed;
            }
        }
        Outcome::Cancelled => j.state = JobState::Cancelled,
    }
    if j.state.is_final() {
        j.finished_at_ms = Some(now_ms);
    }
    j.publishing = false;
    CommandResult::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_spec::{CsvOptions, DEFAULT_STALL_TIMEOUT_MS, DatasetRef, Format, Location, RetryPolicy};
    use crate::state::{Command, NodeRecord};

    fn state_with_nodes() -> IrState {
        let mut s = IrState::default();
        for id in [1, 2] {
            s.nodes.insert(
                id,
                NodeRecord {
                    id,
                    name: format!("node{id}"),
                    address: format!("127.0.0.{id}:8060"),
                    cert_serial: String::new(),
                    cert_not_after: 0,
                    cert_pem: String::new(),
                    join_nonce: String::new(),
                    joined_at: 0,
                },
            );
        }
        s
    }

    fn job(id: &str, max_attempts: u32) -> Job {
        let ds = |p: &str| DatasetRef {
            service: "share".into(),
            location: Location::Path(p.into()),
            format: Format::Csv(CsvOptions::default()),
        };
        let spec = JobSpec {
            name: String::new(),
            source: ds("in.csv"),
            sink: ds("out.csv"),
            retry: RetryPolicy {
                max_attempts,
                interval_ms: 1000,
            },
            stall_timeout_ms: DEFAULT_STALL_TIMEOUT_MS,
            if_exists: Default::default(),
            create_table: false,
            mapping: Default::default(),
            bad_rows: None,
        };
        Job::queued(id.into(), spec, 0)
    }

    #[test]
    fn a_unique_prefix_names_a_job() {
        let table: super::super::job_table::Jobs = ["a1b2c3d4e5f6", "a1b2ffffffff", "0badc0ffee00"]
            .map(|id| job(id, 1))
            .into_iter()
            .collect();
        let found = |id: &str| table.find(id).map(|j| j.id.clone()).map_err(|m| m.join(","));
        assert_eq!(found("0badc0ffee00"), Ok("0badc0ffee00".into()));
        assert_eq!(found("0bad"), Ok("0badc0ffee00".into()));
        assert_eq!(found("a1b2c"), Ok("a1b2c3d4e5f6".into()));
        assert_eq!(found("a1b2"), Err("a1b2c3d4e5f6,a1b2ffffffff".into()));
        // Shorter than four characters: only a whole id, never a guess.
        assert_eq!(found("0ba"), Err(String::new()));
        assert_eq!(found(""), Err(String::new()));
        assert_eq!(found("ffff"), Err(String::new()));
    }

    fn assign(s: &mut IrState, id: &str, node: NodeId, attempt: u32, limit: u32) -> CommandResult {
        let a = Assignment {
            job_id: id.into(),
            node,
            attempt,
            limit,
        };
        match s.apply(&Command::AssignJobs {
            assignments: vec![a],
            now_ms: 1,
        }) {
            CommandResult::Batch(mut r) => r.remove(0),
            other => other,
        }
    }

    fn finish(s: &mut IrState, id: &str, attempt: u32, node: NodeId, outcome: Outcome) -> CommandResult {
        s.apply(&Command::FinishJob {
            job_id: id.into(),
            attempt,
            node,
            outcome,
            now_ms: 10,
        })
    }

    fn success() -> Outcome {
        Outcome::Succeeded {
            rows: 3,
            bytes: 30,
            files: 1,
            files_skipped: 0,
            check: Consistency::default(),
            columns: Vec::new(),
            columns_total: 0,
        }
    }

    #[test]
    fn a_late_report_from_an_old_attempt_is_refused() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 3) });
        assert_eq!(assign(&mut s, "j1", 1, 1, 4), CommandResult::Ok);
        // node1 goes silent; its job is requeued and runs again on node2 as attempt 2.
        s.apply(&Command::RequeueNode {
            node: 1,
            jobs: vec![("j1".into(), 1)],
            now_ms: 5,
        });
        assert_eq!(assign(&mut s, "j1", 2, 2, 4), CommandResult::Ok);
        // node1 comes back and reports on attempt 1: refused, whatever it says.
        let begin = s.apply(&Command::BeginPublish {
            job_id: "j1".into(),
            attempt: 1,
            node: 1,
        });
        assert!(matches!(begin, CommandResult::Rejected(m) if m.to_string().contains("stale")));
        assert!(matches!(
            finish(&mut s, "j1", 1, 1, success()),
            CommandResult::Rejected(_)
        ));
        // Attempt 2 on node2 publishes and succeeds.
        let begin = s.apply(&Command::BeginPublish {
            job_id: "j1".into(),
            attempt: 2,
            node: 2,
        });
        assert_eq!(begin, CommandResult::Ok);
        assert_eq!(finish(&mut s, "j1", 2, 2, success()), CommandResult::Ok);
        assert_eq!(s.jobs["j1"].state, JobState::Succeeded);
        // Even a report with the right attempt but from another node is refused.
        assert!(matches!(
            finish(&mut s, "j1", 2, 1, success()),
            CommandResult::Rejected(_)
        ));
    }

    #[test]
    fn success_needs_a_publish_permission_first() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 3) });
        assign(&mut s, "j1", 1, 1, 4);
        assert!(matches!(
            finish(&mut s, "j1", 1, 1, success()),
            CommandResult::Rejected(_)
        ));
    }

    #[test]
    fn no_node_goes_over_its_limit() {
        let mut s = state_with_nodes();
        for i in 0..3 {
            s.apply(&Command::SubmitJob {
                job: job(&format!("j{i}"), 3),
            });
        }
        assert_eq!(assign(&mut s, "j0", 1, 1, 2), CommandResult::Ok);
        assert_eq!(assign(&mut s, "j1", 1, 1, 2), CommandResult::Ok);
        assert!(matches!(assign(&mut s, "j2", 1, 1, 2), CommandResult::Rejected(m) if m.to_string().contains("limit")));
        assert_eq!(s.running_on(1), 2);
        assert_eq!(s.queued_jobs(), 1);
    }

    #[test]
    fn retries_until_the_policy_runs_out() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 2) });
        let failed = || Outcome::Failed {
            error: "connection refused".into(),
            retryable: true,
        };
        assign(&mut s, "j1", 1, 1, 4);
        finish(&mut s, "j1", 1, 1, failed());
        assert_eq!(s.jobs["j1"].state, JobState::Queued);
        assert_eq!(s.jobs["j1"].not_before_ms, 10 + 1000);
        assign(&mut s, "j1", 2, 2, 4);
        finish(&mut s, "j1", 2, 2, failed());
        assert_eq!(s.jobs["j1"].state, JobState::Failed);
        // A fatal error does not retry at all.
        s.apply(&Command::SubmitJob { job: job("j2", 3) });
        assign(&mut s, "j2", 1, 1, 4);
        let fatal = Outcome::Failed {
            error: "line 7: bad row".into(),
            retryable: false,
        };
        finish(&mut s, "j2", 1, 1, fatal);
        assert_eq!(s.jobs["j2"].state, JobState::Failed);
    }

    #[test]
    fn cancelling() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("q", 3) });
        s.apply(&Command::SubmitJob { job: job("r", 3) });
        s.apply(&Command::CancelJob {
            job_id: "q".into(),
            now_ms: 2,
        });
        assert_eq!(s.jobs["q"].state, JobState::Cancelled);
        assign(&mut s, "r", 1, 1, 4);
        s.apply(&Command::CancelJob {
            job_id: "r".into(),
            now_ms: 2,
        });
        assert!(s.jobs["r"].cancel_requested);
        assert_eq!(finish(&mut s, "r", 1, 1, Outcome::Cancelled), CommandResult::Ok);
        assert_eq!(s.jobs["r"].state, JobState::Cancelled);
        let again = s.apply(&Command::CancelJob {
            job_id: "r".into(),
            now_ms: 3,
        });
        assert!(matches!(again, CommandResult::Rejected(m) if m.to_string().contains("already ended")));
    }

    fn requeue(s: &mut IrState, node: NodeId, jobs: &[(&str, u32)]) {
        s.apply(&Command::RequeueNode {
            node,
            jobs: jobs.iter().map(|(j, a)| (j.to_string(), *a)).collect(),
            now_ms: 7,
        });
    }

    fn begin(s: &mut IrState, id: &str, attempt: u32, node: NodeId) -> CommandResult {
        s.apply(&Command::BeginPublish {
            job_id: id.into(),
            attempt,
            node,
        })
    }

    fn release(s: &mut IrState, id: &str, attempt: u32, node: NodeId) -> CommandResult {
        s.apply(&Command::ReleaseJob {
            job_id: id.into(),
            attempt,
            node,
            now_ms: 8,
        })
    }

    #[test]
    fn a_handed_back_attempt_requeues_without_using_up_the_attempts() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 1) });
        assign(&mut s, "j1", 1, 1, 4);
        // Fenced like every report: another node, or another attempt, cannot hand it back.
        assert!(matches!(release(&mut s, "j1", 1, 2), CommandResult::Rejected(m) if m.to_string().contains("stale")));
        assert!(matches!(release(&mut s, "j1", 2, 1), CommandResult::Rejected(m) if m.to_string().contains("stale")));
        assert_eq!(release(&mut s, "j1", 1, 1), CommandResult::Ok);
        assert_eq!(s.jobs["j1"].state, JobState::Queued);
        // Its one attempt was handed back, not failed: the next one may still fail and retry
        // no more, but it runs.
        assign(&mut s, "j1", 2, 2, 4);
        assert_eq!(s.jobs["j1"].state, JobState::Running);
        let failed = Outcome::Failed {
            error: "gone".into(),
            retryable: true,
        };
        assert_eq!(finish(&mut s, "j1", 2, 2, failed), CommandResult::Ok);
        assert_eq!(s.jobs["j1"].state, JobState::Failed);
    }

    #[test]
    fn once_publishing_was_allowed_the_job_can_only_succeed() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 1) });
        assign(&mut s, "j1", 1, 1, 4);
        assert_eq!(begin(&mut s, "j1", 1, 1), CommandResult::Ok);
        // Its node dies after renaming (or committing) but before reporting. It was the last
        // attempt by the policy, yet the job goes back to the queue, not to Failed...
        requeue(&mut s, 1, &[("j1", 1)]);
        assert_eq!(s.jobs["j1"].state, JobState::Queued);
        // ...and can no longer be cancelled, whose output may already be there.
        let cancel = s.apply(&Command::CancelJob {
            job_id: "j1".into(),
            now_ms: 8,
        });
        assert!(matches!(cancel, CommandResult::Rejected(m) if m.to_string().contains("too late")));
        assert_eq!(assign(&mut s, "j1", 2, 2, 4), CommandResult::Ok);
        assert_eq!(begin(&mut s, "j1", 2, 2), CommandResult::Ok);
        assert_eq!(finish(&mut s, "j1", 2, 2, success()), CommandResult::Ok);
        assert_eq!(s.jobs["j1"].state, JobState::Succeeded);
    }

    #[test]
    fn a_fatal_failure_after_a_publish_permission_says_output_may_exist() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 3) });
        assign(&mut s, "j1", 1, 1, 4);
        assert_eq!(begin(&mut s, "j1", 1, 1), CommandResult::Ok);
        requeue(&mut s, 1, &[("j1", 1)]);
        assert_eq!(assign(&mut s, "j1", 2, 2, 4), CommandResult::Ok);
        let gone = Outcome::Failed {
            error: "source file in.csv does not exist".into(),
            retryable: false,
        };
        assert_eq!(finish(&mut s, "j1", 2, 2, gone), CommandResult::Ok);
        let j = &s.jobs["j1"];
        assert_eq!(j.state, JobState::Failed);
        let error = j.error.as_deref().unwrap();
        assert!(error.starts_with("source file in.csv does not exist"), "{error}");
        assert!(error.contains("may hold its complete output"), "{error}");
    }

    #[test]
    fn a_cancel_before_publishing_stops_the_publish() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 3) });
        assign(&mut s, "j1", 1, 1, 4);
        s.apply(&Command::CancelJob {
            job_id: "j1".into(),
            now_ms: 2,
        });
        let begin = begin(&mut s, "j1", 1, 1);
        assert!(matches!(begin, CommandResult::Rejected(m) if m.to_string().starts_with(CANCELLED_BEFORE_PUBLISH)));
        assert_eq!(finish(&mut s, "j1", 1, 1, Outcome::Cancelled), CommandResult::Ok);
        assert_eq!(s.jobs["j1"].state, JobState::Cancelled);
    }

    #[test]
    fn a_late_requeue_touches_only_the_attempts_it_judged() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 3) });
        assign(&mut s, "j1", 1, 1, 4);
        requeue(&mut s, 1, &[("j1", 1)]);
        assign(&mut s, "j1", 1, 2, 4);
        // The same judgement committed again later (a new leader finishing an old entry).
        requeue(&mut s, 1, &[("j1", 1)]);
        assert_eq!((s.jobs["j1"].state, s.jobs["j1"].attempt), (JobState::Running, 2));
    }

    #[test]
    fn a_removed_node_gives_its_jobs_back_and_a_new_limit_counts_at_once() {
        let mut s = state_with_nodes();
        s.apply(&Command::SubmitJob { job: job("j1", 3) });
        s.apply(&Command::SubmitJob { job: job("j2", 3) });
        assign(&mut s, "j1", 2, 1, 4);
        s.apply(&Command::RemoveNode { name: "node2".into() });
        assert_eq!(s.jobs["j1"].state, JobState::Queued);
        // The dispatcher decided with a limit of 4; `set-limit 1` committed meanwhile.
        s.apply(&Command::SetNodeLimit {
            node: 1,
            limit: Some(1),
        });
        assert_eq!(assign(&mut s, "j1", 1, 2, 4), CommandResult::Ok);
        assert!(
            matches!(assign(&mut s, "j2", 1, 1, 4), CommandResult::Rejected(m) if m.to_string().contains("limit of 1"))
        );
    }

    #[test]
    fn retention_drops_only_finished_jobs_past_the_policy() {
        let mut s = state_with_nodes();
        for i in 0..5 {
            s.apply(&Command::SubmitJob {
                job: job(&format!("j{i}"), 3),
            });
        }
        // j0..j3 finish at 0, 1000, 2000, 3000 ms; j4 stays queued.
        for i in 0..4 {
            s.apply(&Command::CancelJob {
                job_id: format!("j{i}"),
                now_ms: i * 1000,
            });
        }
        s.apply(&Command::SetJobHistory {
            history: JobHistory {
                max_jobs: 3,
                max_days: 0,
            },
        });
        assert!(s.job_history.prune_due(&s.jobs, 0));
        s.apply(&Command::PruneJobs { now_ms: 0 });
        assert!(!s.jobs.contains_key("j0"));
        assert_eq!(s.jobs.finished_len(), 3);
        assert!(!s.job_history.prune_due(&s.jobs, 0));
        // One day later with a one-day limit: all finished ones go, the queued one stays.
        s.apply(&Command::SetJobHistory {
            history: JobHistory {
                max_jobs: 3,
                max_days: 1,
            },
        });
        s.apply(&Command::PruneJobs { now_ms: DAY_MS + 2500 });
        let left: Vec<&str> = s.jobs.values().map(|j| j.id.as_str()).collect();
        assert_eq!(left, ["j3", "j4"]);
        assert_eq!(s.jobs.active().count(), 1);
    }
}
