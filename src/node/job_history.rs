//! The retention of finished jobs, run on the dispatcher: the policy (`shir settings
//! job-history`), the pruning it proposes, and the bench-only seeding of history.

use tonic::Status;

use super::handle::Node;
use super::proposer::ProposeError;
use crate::copy::{CsvOptions, Format, Location};
use crate::job_spec::{DEFAULT_STALL_TIMEOUT_MS, DatasetRef, JobSpec};
use crate::proto;
use crate::state::jobs::{Job, JobState, MAX_SEEDED_PER_COMMAND};
use crate::state::{Command, JobHistory};

/// Set in a dispatcher's environment to let `JobHistorySeed` add jobs: only `shir bench`
/// starts nodes with it, so a production IR's history holds only jobs that ran.
pub const SEED_ENV: &str = "SHIR_BENCH_SEED";

/// More than this many finished jobs would make every snapshot and every new node's
/// catch-up carry hundreds of MiB; the bench's 100,000 fit well below.
pub const MAX_JOBS_KEPT: u64 = 1_000_000;
/// Ten years.
pub const MAX_DAYS_KEPT: u32 = 3650;

fn info(node: &Node) -> proto::JobHistoryInfo {
    node.read_state(|s| proto::JobHistoryInfo {
        max_jobs: s.job_history.max_jobs,
        max_days: s.job_history.max_days,
        finished: s.jobs.finished_len() as u64,
    })
}

pub async fn show_or_set(node: &Node, req: proto::JobHistoryRequest) -> Result<proto::JobHistoryInfo, Status> {
    if !node.confirm_leadership().await {
        return Err(super::forward::no_dispatcher());
    }
    if req.set {
        if req.max_jobs > MAX_JOBS_KEPT {
            return Err(Status::invalid_argument(format!(
                "--jobs {} is more than {MAX_JOBS_KEPT}",
                req.max_jobs
            )));
        }
        if req.max_days > MAX_DAYS_KEPT {
            return Err(Status::invalid_argument(format!(
                "--days {} is more than {MAX_DAYS_KEPT}",
                req.max_days
            )));
        }
        let history = JobHistory {
            max_jobs: req.max_jobs,
            max_days: req.max_days,
        };
        node.propose(Command::SetJobHistory { history }).await?;
        // Prune now rather than at the next round, so `show` right after tells the truth.
        prune_if_due(node).await?;
        tracing::info!(
            max_jobs = req.max_jobs,
            max_days = req.max_days,
            "job history retention set"
        );
    }
    Ok(info(node))
}

/// Proposes `PruneJobs` if the policy no longer keeps the oldest finished job. Cheap when
/// nothing is due (the finished jobs are indexed by finish time), so the dispatcher calls it
/// every round.
pub async fn prune_if_due(node: &Node) -> Result<(), ProposeError> {
    let now_ms = crate::unix_now_ms();
    if node.read_state(|s| s.job_history.prune_due(&s.jobs, now_ms)) {
        node.propose(Command::PruneJobs { now_ms }).await?;
    }
    Ok(())
}

pub async fn seed(node: &Node, req: proto::JobHistorySeedRequest) -> Result<proto::JobHistoryInfo, Status> {
    if std::env::var_os(SEED_ENV).is_none() {
        return Err(Status::permission_denied(format!(
            "seeding job history is for `shir bench` only (the dispatcher was not started with {SEED_ENV}=1)"
        )));
    }
    let now_ms = crate::unix_now_ms();
    let ds = |path: &str| DatasetRef {
        service: "bench".into(),
        location: Location::Path(path.into()),
        format: Format::Csv(CsvOptions::default()),
    };
    let spec = JobSpec {
        name: "bench history".into(),
        source: ds("in.csv"),
        sink: ds("out.csv"),
        retry: Default::default(),
        stall_timeout_ms: DEFAULT_STALL_TIMEOUT_MS,
        if_exists: Default::default(),
        create_table: false,
        mapping: Default::default(),
        bad_rows: None,
    };
    let mut template = Job::queued("bench-history".into(), spec, now_ms);
    template.state = JobState::Succeeded;
    template.attempt = 1;
    (template.rows, template.bytes, template.files) = (1000, 64_000, 1);
    (template.started_at_ms, template.finished_at_ms) = (Some(now_ms), Some(now_ms));
    let mut left = req.count;
    while left > 0 {
        let count = left.min(MAX_SEEDED_PER_COMMAND);
        node.propose(Command::SeedJobHistory {
            template: template.clone(),
            count,
        })
        .await?;
        left -= count;
    }
    Ok(info(node))
}
