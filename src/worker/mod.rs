//! The worker: every node runs the attempts the log assigns to it.
//!
//! It watches its applied state for jobs `Running` on this node, and runs each attempt:
//! stage the copy, ask the dispatcher for permission to publish (granted only to the
//! current attempt, through the log), publish, report the outcome. An attempt that is no
//! longer current (requeued, cancelled) is stopped; its staged output is thrown away.
//!
//! Reports go through the `Reports` handle the wiring gives it, wherever the dispatcher
//! runs. When the node shuts down the worker starts nothing more; an attempt that has not
//! been allowed to publish stops and is handed back (the dispatcher requeues it), one that
//! publishes finishes and reports, and the loop returns once every attempt has ended.

mod error;
mod failpoints;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use error::AttemptError;

use crate::copy::{self, AttemptId, Counters, Endpoint};
use crate::job_spec::{DatasetRef, Format, IfExists, Location, MAX_REPORTED_COLUMNS};
use crate::node::forward::Reports;
use crate::node::handle::Node;
use crate::proto::{self, job_report_request::Phase};
use crate::state::jobs::{Job, JobState, Outcome};

use crate::timing::{
    PROGRESS_EVERY, PROGRESS_REPORT_PATIENCE, RELEASE_PATIENCE, REPORT_PATIENCE, STALL_CHECK_MAX, STALL_CHECK_MIN,
    START_CONFIRM_PATIENCE, UNCONFIRMED_START_PAUSE, UNSETTLED_RERUN_PAUSE, WORKER_IDLE_POLL,
};

/// Runs the attempts the log assigns to this node, until the node shuts down and every
/// attempt has ended.
pub async fn worker_loop(node: Arc<Node>, reports: Arc<dyn Reports>) {
    let mut metrics = node.raft.metrics();
    let mut running: HashMap<String, (u32, CancellationToken)> = HashMap::new();
    let mut tasks = JoinSet::new();
    // Attempts that ended without their outcome reaching a dispatcher: forgotten here, so
    // that if the log still says they run on this node they are run again (publishing is
    // idempotent) instead of staying Running forever.
    let (unsettled_tx, mut unsettled) = tokio::sync::mpsc::unbounded_channel::<(String, u32)>();
    loop {
        tokio::select! {
            _ = metrics.changed() => {}
            _ = tokio::time::sleep(WORKER_IDLE_POLL) => {}
            _ = node.shutdown.cancelled() => break,
        }
        while tasks.try_join_next().is_some() {}
        while let Ok((id, attempt)) = unsettled.try_recv() {
            if running.get(&id).is_some_and(|(a, _)| *a == attempt) {
                running.remove(&id);
            }
        }
        let me = node.id();
        let mine: Vec<Job> = node.read_state(|s| {
            s.jobs
                .active()
                .filter(|j| j.state == JobState::Running && j.node == Some(me))
                .cloned()
                .collect()
        });
        // Attempts that are no longer this node's current ones stop.
        running.retain(|id, (attempt, token)| {
            let current = mine.iter().any(|j| &j.id == id && j.attempt == *attempt);
            if !current {
                token.cancel();
                // From here the attempt no longer counts against this node's limit, even if
                // its task is still winding down. tests/nemesis reads this event: keep it.
                tracing::debug!(job = %id, attempt = *attempt, "attempt let go: no longer current here");
            }
            current
        });
        for job in mine {
            match running.get(&job.id) {
                Some((_, token)) => {
                    if job.cancel_requested {
                        token.cancel();
                    }
                }
                None => {
                    let token = CancellationToken::new();
                    running.insert(job.id.clone(), (job.attempt, token.clone()));
                    tracing::info!(job = %job.id, attempt = job.attempt, "running job");
                    tasks.spawn(run_attempt(
                        node.clone(),
                        reports.clone(),
                        job,
                        token,
                        unsettled_tx.clone(),
                    ));
                }
            }
        }
    }
    // Shutting down: every attempt stops at its next safe point (see `cancelled`).
    for (_, token) in running.values() {
        token.cancel();
    }
    while tasks.join_next().await.is_some() {}
}

/// A linked service's definition, unsealed for this attempt.
fn endpoint(node: &Node, side: &DatasetRef, if_exists: IfExists) -> Result<Endpoint, AttemptError> {
    let ir = node.ir().map_err(AttemptError::NoState)?;
    let service = node
        .read_state(|s| s.linked_services.get(&side.service).cloned())
        .ok_or_else(|| AttemptError::UnknownService(side.service.clone()))?;
    let spec = service.unseal(&node.data_key, &ir.id).map_err(AttemptError::Unseal)?;
    let proxy = match node.read_state(|s| s.proxy.clone()) {
        Some(sealed) if spec.kind.is_object_store() => {
            Some(sealed.unseal(&node.data_key, &ir.id).map_err(AttemptError::Unseal)?)
        }
        _ => None,
    };
    Ok(Endpoint {
        proxy,
        service_name: side.service.clone(),
        service: spec,
        location: side.location.clone(),
        format: side.format.clone(),
        if_exists,
    })
}

async fn run_attempt(
    node: Arc<Node>,
    reports: Arc<dyn Reports>,
    job: Job,
    cancel: CancellationToken,
    unsettled: tokio::sync::mpsc::UnboundedSender<(String, u32)>,
) {
    let id = AttemptId {
        job_id: job.id.clone(),
        attempt: job.attempt,
    };
    // A node that just restarted acts on its log before it has caught up: it may find an
    // attempt "running" here that the IR has long moved past. The dispatcher says whether it
    // is current before any work (or staging file) is done for it.
    let start = proto::JobReportRequest {
        job_id: id.job_id.clone(),
        attempt: id.attempt,
        phase: Some(Phase::Start(proto::ReportStart {})),
    };
    let confirmed = !node.shutdown.is_cancelled()
        && matches!(reports.report(start, START_CONFIRM_PATIENCE).await, Ok(reply) if reply.accepted);
    if !confirmed {
        // Not current, or the dispatcher has not applied the assignment yet, or it cannot be
        // reached (it would not allow publishing either): look again in a moment, if the log
        // still says the attempt runs here.
        tracing::debug!(job = %id.job_id, attempt = id.attempt, "attempt not confirmed current; not starting it yet");
        tokio::time::sleep(UNCONFIRMED_START_PAUSE).await;
        let _ = unsettled.send((id.job_id, id.attempt));
        return;
    }
    let counters = Arc::new(Counters::default());
    let reporter = tokio::spawn(report_progress(reports.clone(), id.clone(), counters.clone()));
    let ended = attempt(&node, reports.as_ref(), &job, &id, &counters, &cancel).await;
    reporter.abort();
    let outcome = match ended {
        Ended::Report(outcome) => outcome,
        Ended::Superseded => return,
        Ended::Released => {
            let request = proto::JobReportRequest {
                job_id: id.job_id.clone(),
                attempt: id.attempt,
                phase: Some(Phase::Release(proto::ReportRelease {})),
            };
            match reports.report(request, RELEASE_PATIENCE).await {
                Ok(reply) if reply.accepted => {
                    tracing::info!(job = %id.job_id, attempt = id.attempt, "attempt handed back: this node is shutting down");
                }
                Ok(reply) => {
                    tracing::info!(job = %id.job_id, attempt = id.attempt, why = %reply.message, "hand-back refused");
                }
                Err(e) => {
                    tracing::warn!(job = %id.job_id, error = %e.message(), "could not hand the attempt back; it is requeued once this node is offline");
                }
            }
            return;
        }
        Ended::Unsettled => {
            tokio::time::sleep(UNSETTLED_RERUN_PAUSE).await;
            let _ = unsettled.send((id.job_id, id.attempt));
            return;
        }
    };
    // A failed attempt is what an operator reads logs for: WARN, with the reason as a field.
    match &outcome {
        Outcome::Succeeded { .. } => tracing::info!(job = %id.job_id, attempt = id.attempt, "attempt succeeded"),
        Outcome::Failed { error, .. } => {
            tracing::warn!(job = %id.job_id, attempt = id.attempt, reason = %error, "attempt failed")
        }
        Outcome::Cancelled => tracing::info!(job = %id.job_id, attempt = id.attempt, "attempt cancelled"),
    }
    let request = proto::JobReportRequest {
        job_id: id.job_id.clone(),
        attempt: id.attempt,
        phase: Some(Phase::Finish(outcome.into())),
    };
    if let Err(e) = reports.report(request, REPORT_PATIENCE).await {
        tracing::warn!(job = %id.job_id, error = %e.message(), "could not report the outcome; the attempt will run again");
        tokio::time::sleep(UNSETTLED_RERUN_PAUSE).await;
        let _ = unsettled.send((id.job_id, id.attempt));
    }
}

/// How an attempt ended.
enum Ended {
    /// With an outcome to report.
    Report(Outcome),
    /// It is no longer current: another attempt owns the job now; nothing to report.
    Superseded,
    /// The node is shutting down and the attempt had not begun publishing: hand it back.
    Released,
    /// No dispatcher could be asked for permission to publish: run it again later if the
    /// log still says it is ours.
    Unsettled,
}

/// Runs one attempt up to its outcome.
async fn attempt(
    node: &Node,
    reports: &dyn Reports,
    job: &Job,
    id: &AttemptId,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Ended {
    match run(node, reports, job, id, counters, cancel).await {
        Ok(outcome) => Ended::Report(outcome),
        Err(AttemptError::Stopped) => cancelled(node, job),
        Err(AttemptError::Cancelled) => Ended::Report(Outcome::Cancelled),
        Err(AttemptError::LostAttempt(why)) => {
            tracing::info!(job = %id.job_id, attempt = id.attempt, why = %why, "not allowed to publish; discarding");
            Ended::Superseded
        }
        Err(AttemptError::DispatcherUnreachable(e)) => {
            tracing::warn!(job = %id.job_id, error = %e, "no dispatcher allowed publishing; discarding");
            Ended::Unsettled
        }
        Err(e) => Ended::Report(Outcome::Failed {
            retryable: e.retryable(),
            error: e.to_string(),
        }),
    }
}

/// Stages, asks for permission, publishes; staged output not published is discarded
/// before an error returns.
async fn run(
    node: &Node,
    reports: &dyn Reports,
    job: &Job,
    id: &AttemptId,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Result<Outcome, AttemptError> {
    let source = endpoint(node, &job.spec.source, IfExists::Overwrite)?;
    let sink = endpoint(node, &job.spec.sink, job.spec.if_exists)?;
    let rejects = match &job.spec.bad_rows {
        Some(bad) => Some(endpoint(
            node,
            &DatasetRef {
                service: bad.service.clone(),
                location: Location::Path(bad.file(&job.id)),
                format: Format::JsonLines,
            },
            IfExists::Overwrite,
        )?),
        None => None,
    };
    let options = copy::TableOptions {
        mapping: job.spec.mapping.clone(),
        rejects,
        create_table: job.spec.create_table,
    };
    let stall = Duration::from_millis(job.spec.stall_timeout_ms);
    let staged = tokio::select! {
        staged = copy::stage_table(id, &source, &sink, &options, counters) => staged?,
        _ = cancel.cancelled() => return Err(AttemptError::Stopped),
        () = stalled(counters, stall) => return Err(AttemptError::Stalled(stall)),
    };
    if let Some(hold) = failpoints::hold_before_publish(&job.spec.name) {
        // Tests widen the window between staging and publishing, to kill or pause a node
        // exactly there.
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = cancel.cancelled() => {}
        }
    }
    if cancel.is_cancelled() {
        staged.discard().await;
        return Err(AttemptError::Stopped);
    }
    let permission = proto::JobReportRequest {
        job_id: id.job_id.clone(),
        attempt: id.attempt,
        phase: Some(Phase::Publish(proto::ReportPublish {})),
    };
    // The log can move on while the request waits for a dispatcher (a partition heals, the
    // job was requeued): stop waiting then, instead of holding the staged output for the
    // whole patience. A permission granted meanwhile is harmless: the job's next attempt
    // publishes again.
    let asked = tokio::select! {
        asked = reports.report(permission, REPORT_PATIENCE) => asked,
        _ = cancel.cancelled() => {
            staged.discard().await;
            return Err(AttemptError::Stopped);
        }
    };
    let refused = match asked {
        Ok(reply) if reply.accepted => None,
        Ok(reply) if reply.cancelled => Some(AttemptError::Cancelled),
        Ok(reply) => Some(AttemptError::LostAttempt(reply.message)),
        Err(e) => Some(AttemptError::DispatcherUnreachable(e.message().to_string())),
    };
    if let Some(refused) = refused {
        staged.discard().await;
        return Err(refused);
    }
    let (rows, bytes, files, check) = (staged.rows, staged.bytes, staged.files, staged.check.clone());
    let columns_total = staged.columns.len() as u64;
    let columns: Vec<_> = staged.columns.iter().take(MAX_REPORTED_COLUMNS).cloned().collect();
    let published = staged.publish().await;
    if let Some(hold) = failpoints::hold_after_publish(&job.spec.name) {
        // Tests kill the node here: published, not yet reported.
        tokio::time::sleep(hold).await;
    }
    let skipped = published?.skipped;
    Ok(Outcome::Succeeded {
        rows,
        bytes,
        files: files.saturating_sub(skipped),
        files_skipped: skipped,
        check,
        columns,
        columns_total,
    })
}

/// Returns once `counters` have not moved for `limit`. Dropping the staging future then
/// closes its connections and removes its staging file; a thread blocked in a hung file
/// system call stays blocked, but the node's slot is free again.
async fn stalled(counters: &Counters, limit: Duration) {
    let tick = (limit / 4).clamp(STALL_CHECK_MIN, STALL_CHECK_MAX);
    let mut last = counters.snapshot();
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = counters.snapshot();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

/// A stop asked for: report Cancelled if the job asked to be cancelled, hand the attempt back
/// if the node is shutting down, else nothing (the attempt was superseded).
fn cancelled(node: &Node, job: &Job) -> Ended {
    let asked = node.read_state(|s| {
        s.jobs
            .get(&job.id)
            .is_some_and(|j| j.cancel_requested && j.attempt == job.attempt)
    });
    if asked {
        Ended::Report(Outcome::Cancelled)
    } else if node.shutdown.is_cancelled() {
        Ended::Released
    } else {
        tracing::info!(job = %job.id, attempt = job.attempt, "attempt superseded (no longer current); its output is discarded");
        Ended::Superseded
    }
}

async fn report_progress(reports: Arc<dyn Reports>, id: AttemptId, counters: Arc<Counters>) {
    let mut last = (u64::MAX, 0, 0);
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let now = counters.snapshot();
        if now == last {
            continue;
        }
        last = now;
        let request = proto::JobReportRequest {
            job_id: id.job_id.clone(),
            attempt: id.attempt,
            phase: Some(Phase::Progress(proto::ReportProgress {
                rows: now.0,
                bytes: now.1,
                files: now.2,
            })),
        };
        let _ = reports.report(request, PROGRESS_REPORT_PATIENCE).await;
    }
}
