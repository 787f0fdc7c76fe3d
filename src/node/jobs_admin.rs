//! Operator calls on copy jobs, run on the dispatcher: submit (`job_spec` reads and checks
//! the submission, this commits the job), list and show (with the running attempts' progress,
//! which only the dispatcher has), cancel, and per-node limits.

use tonic::Status;

use super::Node;
use crate::dispatch::Dispatcher;
use crate::job_spec::Submission;
use crate::proto;
use crate::secrets::SecretBytes;
use crate::state::Command;
use crate::state::jobs::{Job, JobState};

fn invalid(why: impl Into<String>) -> Status {
    Status::invalid_argument(why.into())
}

/// Where a read must not see a state older than the dispatcher's own commits.
pub(super) async fn up_to_date(node: &Node) -> Result<(), Status> {
    if node.confirm_leadership().await {
        Ok(())
    } else {
        Err(super::forward::no_dispatcher())
    }
}

pub async fn submit(
    node: &Node,
    dispatcher: &Dispatcher,
    req: proto::JobSubmitRequest,
) -> Result<proto::JobSubmitReply, Status> {
    up_to_date(node).await?;
    let spec = Submission::from(req)
        .parse(|service| node.read_state(|s| s.linked_services.get(service).map(|l| l.kind)))
        .map_err(|e| invalid(e.0))?;
    let id = hex::encode(SecretBytes::random(6).expose());
    let job = Job::queued(id.clone(), spec, crate::unix_now_ms());
    node.propose(Command::SubmitJob { job }).await?;
    dispatcher.wake();
    tracing::info!(job = %id, "job submitted");
    Ok(proto::JobSubmitReply { id })
}

fn info(node: &Node, dispatcher: &Dispatcher, j: &Job) -> proto::JobInfo {
    let (mut rows, mut bytes, mut files) = (j.rows, j.bytes, j.files);
    if j.state == JobState::Running
        && let Some(p) = dispatcher.progress(&j.id, j.attempt)
    {
        (rows, bytes, files) = (p.rows, p.bytes, p.files);
    }
    proto::JobInfo {
        id: j.id.clone(),
        name: j.spec.name.clone(),
        state: proto::JobState::from(j.state).into(),
        node: j.node.and_then(|id| node.node_name(id)).unwrap_or_default(),
        attempt: j.attempt,
        rows,
        bytes,
        files,
        error: j.error.clone().unwrap_or_default(),
        source: j.spec.source.describe(),
        sink: j.spec.sink.describe(),
        submitted_at_ms: j.submitted_at_ms,
        started_at_ms: j.started_at_ms.unwrap_or(0),
        finished_at_ms: j.finished_at_ms.unwrap_or(0),
        max_attempts: j.spec.retry.max_attempts,
        check: j.check.clone().map(Into::into),
        cancel_requested: j.cancel_requested,
        stall_timeout_ms: j.spec.stall_timeout_ms,
        if_exists: j.spec.if_exists.as_str().into(),
        files_skipped: j.files_skipped,
        create_table: j.spec.create_table,
        columns: j.columns.iter().cloned().map(Into::into).collect(),
        columns_total: j.columns_total,
        rejects: j.spec.bad_rows.as_ref().map(|b| b.describe(&j.id)).unwrap_or_default(),
    }
}

/// Most jobs in one `job list` reply: a page stays a small message however long the history.
const MAX_PAGE: usize = 1000;

pub async fn list(
    node: &Node,
    dispatcher: &Dispatcher,
    req: proto::JobListRequest,
) -> Result<proto::JobListReply, Status> {
    up_to_date(node).await?;
    let wanted = match proto::JobState::try_from(req.state) {
        Ok(proto::JobState::Unspecified) => None,
        Ok(state) => Some(JobState::try_from(state).map_err(|e| invalid(e.0))?),
        Err(_) => {
            return Err(invalid(format!(
                "unknown job state {}: use queued, running, succeeded, failed or cancelled",
                req.state
            )));
        }
    };
    let limit = match req.limit {
        0 => MAX_PAGE,
        n => (n as usize).min(MAX_PAGE),
    };
    let (page, more, queued) = node.read_state(|s| {
        let after = match req.after.as_str() {
            "" => None,
            id => Some(s.jobs.get(id).map(|j| j.seq).ok_or_else(|| {
                Status::not_found(format!(
                    "no job {id} to list after (it may have been pruned from the history)"
                ))
            })?),
        };
        let mut wanted = s.jobs.from_seq(after).filter(|j| wanted.is_none_or(|w| j.state == w));
        let page: Vec<Job> = wanted.by_ref().take(limit).cloned().collect();
        let more = wanted.next().is_some();
        Ok::<_, Status>((page, more, s.queued_jobs() as u32))
    })?;
    Ok(proto::JobListReply {
        jobs: page.iter().map(|j| info(node, dispatcher, j)).collect(),
        next_after: if more {
            page.last().map(|j| j.id.clone()).unwrap_or_default()
        } else {
            String::new()
        },
        queued,
    })
}

/// The job `id` names: its whole id or a unique prefix of it.
fn lookup(node: &Node, id: &str) -> Result<Job, Status> {
    node.read_state(|s| match s.jobs.find(id) {
        Ok(job) => Ok(job.clone()),
        Err(matches) if matches.is_empty() => Err(Status::not_found(format!("no job {id}"))),
        Err(matches) => Err(invalid(format!(
            "job id {id} is ambiguous: it begins {}{}; give more of the id",
            matches.join(", "),
            if matches.len() > 2 { ", …" } else { "" }
        ))),
    })
}

pub async fn show(node: &Node, dispatcher: &Dispatcher, req: proto::JobShowRequest) -> Result<proto::JobInfo, Status> {
    up_to_date(node).await?;
    Ok(info(node, dispatcher, &lookup(node, &req.id)?))
}

pub async fn cancel(
    node: &Node,
    dispatcher: &Dispatcher,
    req: proto::JobCancelRequest,
) -> Result<proto::JobInfo, Status> {
    up_to_date(node).await?;
    let id = lookup(node, &req.id)?.id;
    node.propose(Command::CancelJob {
        job_id: id.clone(),
        now_ms: crate::unix_now_ms(),
    })
    .await?;
    tracing::info!(job = %id, "job cancel requested");
    Ok(info(node, dispatcher, &lookup(node, &id)?))
}

/// Jobs a node may run at once, at most: more would only queue inside one machine.
const MAX_LIMIT: u32 = 256;

pub async fn set_limit(
    node: &Node,
    dispatcher: &Dispatcher,
    req: proto::NodeSetLimitRequest,
) -> Result<proto::NodeSetLimitReply, Status> {
    up_to_date(node).await?;
    let id = node
        .read_state(|s| s.node_by_name(&req.name).map(|n| n.id))
        .ok_or_else(|| Status::not_found(format!("no node named '{}' in this IR", req.name)))?;
    if req.limit > MAX_LIMIT {
        return Err(invalid(format!("a limit of {} is more than {MAX_LIMIT}", req.limit)));
    }
    let limit = (req.limit > 0).then_some(req.limit);
    node.propose(Command::SetNodeLimit { node: id, limit }).await?;
    dispatcher.wake();
    tracing::info!(node = %req.name, ?limit, "concurrent jobs limit set");
    Ok(proto::NodeSetLimitReply {
        name: req.name,
        limit: req.limit,
    })
}
