//! Operator calls on schedules, run on the dispatcher: create (the trigger, the policies and
//! the job template are all checked here, before anything is written), list, show, runs,
//! pause, resume, run-now and delete. The writes are Raft entries; firing is the
//! dispatcher's (`schedule::fire`).

use tonic::Status;

use super::Node;
use super::jobs_admin::up_to_date;
use crate::dispatch::Dispatcher;
use crate::job_spec::Submission;
use crate::proto;
use crate::schedule::fire::{check_template, job_for};
use crate::schedule::slots::{self, Trigger};
use crate::secrets::SecretBytes;
use crate::state::schedules::{
    CatchUp, DEFAULT_KEEP_RUNS, MAX_CATCH_UP_LIMIT, MAX_CONCURRENT_WINDOWS, MAX_KEEP_RUNS, MIN_KEEP_RUNS, Overlap, Run,
    RunState, Schedule, validate_schedule_name,
};
use crate::state::{Command, IrState};

fn invalid(why: impl Into<String>) -> Status {
    Status::invalid_argument(why.into())
}

const DEFAULT_CATCH_UP_LIMIT: u32 = 100;

fn lookup(node: &Node, name: &str) -> Result<Schedule, Status> {
    node.read_state(|s| s.schedules.get(name).cloned())
        .ok_or_else(|| Status::not_found(format!("no schedule named '{name}'")))
}

/// The trigger a request describes: exactly one of a cron expression and an interval.
fn trigger(req: &proto::ScheduleCreateRequest, start_ms: Option<i64>) -> Result<Trigger, String> {
    let every_ms = i64::try_from(req.every_ms).map_err(|_| "the interval is too long".to_string())?;
    let trigger = match (req.cron.as_str(), every_ms, req.window) {
        ("", 0, true) => return Err("--window needs --every: the length of each window".into()),
        ("", 0, false) => return Err("give --cron EXPRESSION or --every INTERVAL".into()),
        (cron, _, _) if !cron.is_empty() && (every_ms > 0 || req.window) => {
            return Err("give one of --cron and --every (with --window), not both".into());
        }
        (cron, _, _) if !cron.is_empty() => Trigger::Cron {
            expression: cron.to_string(),
            time_zone: match req.time_zone.as_str() {
                "" => "UTC".to_string(),
                zone => zone.to_string(),
            },
        },
        (_, _, _) if !req.time_zone.is_empty() => {
            return Err("--time-zone goes with --cron: intervals and windows are counted in UTC".into());
        }
        (_, every_ms, true) => Trigger::Window {
            every_ms,
            start_ms: start_ms
                .ok_or("--window needs --start: the start of the first window (RFC 3339, e.g. 2026-11-01T00:00:00Z)")?,
            max_concurrent: req.max_concurrent_windows.max(1),
        },
        (_, every_ms, false) => Trigger::Every {
            every_ms,
            anchor_ms: start_ms.unwrap_or(0),
        },
    };
    if req.max_concurrent_windows > MAX_CONCURRENT_WINDOWS {
        return Err(format!("--max-concurrent-windows is at most {MAX_CONCURRENT_WINDOWS}"));
    }
    if req.max_concurrent_windows > 0 && !req.window {
        return Err("--max-concurrent-windows goes with --window".into());
    }
    // Windows are all backfilled, in order, a few at a time: neither policy applies.
    if req.window && !(req.catch_up.is_empty() && req.overlap.is_empty() && req.catch_up_limit == 0) {
        return Err(
            "--catch-up and --overlap do not apply to --window: every window runs, oldest first, \
             --max-concurrent-windows at a time"
                .into(),
        );
    }
    trigger.check()?;
    Ok(trigger)
}

fn policies(req: &proto::ScheduleCreateRequest) -> Result<(CatchUp, u32, Overlap, u32), String> {
    let catch_up = match req.catch_up.as_str() {
        "" | "last" => CatchUp::Last,
        "none" => CatchUp::None,
        "all" => CatchUp::All,
        other => return Err(format!("invalid --catch-up '{other}': use none, last or all")),
    };
    let overlap = match req.overlap.as_str() {
        "" | "skip" => Overlap::Skip,
        "queue" => Overlap::Queue,
        other => return Err(format!("invalid --overlap '{other}': use skip or queue")),
    };
    let limit = match req.catch_up_limit {
        0 => DEFAULT_CATCH_UP_LIMIT,
        n if n > MAX_CATCH_UP_LIMIT => return Err(format!("--catch-up-limit is at most {MAX_CATCH_UP_LIMIT}")),
        n => n,
    };
    let keep = match req.keep_runs {
        0 => DEFAULT_KEEP_RUNS,
        n if !(MIN_KEEP_RUNS..=MAX_KEEP_RUNS).contains(&n) => {
            return Err(format!(
                "--keep-runs must be between {MIN_KEEP_RUNS} and {MAX_KEEP_RUNS}"
            ));
        }
        n => n,
    };
    Ok((catch_up, limit, overlap, keep))
}

pub async fn create(
    node: &Node,
    dispatcher: &Dispatcher,
    req: proto::ScheduleCreateRequest,
) -> Result<proto::ScheduleInfo, Status> {
    up_to_date(node).await?;
    validate_schedule_name(&req.name).map_err(|e| invalid(e.to_string()))?;
    if node.read_state(|s| s.schedules.contains_key(&req.name)) {
        return Err(Status::already_exists(format!(
            "a schedule named '{}' exists already",
            req.name
        )));
    }
    let start_ms = match req.start.as_str() {
        "" => None,
        start => Some(slots::parse_start(start).map_err(invalid)?),
    };
    let trigger = trigger(&req, start_ms).map_err(invalid)?;
    let (catch_up, catch_up_limit, overlap, keep_runs) = policies(&req).map_err(invalid)?;
    let template = Submission::from(req.job.clone().unwrap_or_default());
    let now = crate::unix_now_ms();
    let earliest_ms = start_ms.unwrap_or(now);
    let sample = trigger.first_at_or_after(earliest_ms).unwrap_or(earliest_ms);
    node.read_state(|s| {
        check_template(&req.name, &trigger, &template, sample, |service| {
            s.linked_services.get(service).map(|l| l.kind)
        })
    })
    .map_err(invalid)?;
    let schedule = Schedule {
        id: hex::encode(SecretBytes::random(8).expose()),
        name: req.name.clone(),
        trigger,
        template,
        catch_up,
        catch_up_limit,
        overlap,
        keep_runs,
        paused: req.paused,
        created_at_ms: now,
        earliest_ms,
        last_slot_ms: None,
        runs: Vec::new(),
    };
    node.propose(Command::CreateSchedule { schedule }).await?;
    dispatcher.wake();
    tracing::info!(schedule = %req.name, "schedule created");
    show(node, &req.name).await
}

fn describe(t: &Trigger) -> String {
    let every = |ms: i64| match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => format!("{}s", ms / 1000),
    };
    match t {
        Trigger::Cron { expression, time_zone } => format!("cron '{expression}' in {time_zone}"),
        Trigger::Every { every_ms, .. } => format!("every {}", every(*every_ms)),
        Trigger::Window {
            every_ms,
            max_concurrent,
            ..
        } => format!("windows of {}, {max_concurrent} at a time", every(*every_ms)),
    }
}

fn info(s: &Schedule) -> proto::ScheduleInfo {
    let (cron, time_zone, every_ms, start_ms, max_concurrent_windows) = match &s.trigger {
        Trigger::Cron { expression, time_zone } => (expression.clone(), time_zone.clone(), 0, 0, 0),
        Trigger::Every { every_ms, anchor_ms } => (String::new(), String::new(), *every_ms, *anchor_ms, 0),
        Trigger::Window {
            every_ms,
            start_ms,
            max_concurrent,
        } => (String::new(), String::new(), *every_ms, *start_ms, *max_concurrent),
    };
    let next = match s.last_slot_ms {
        Some(last) => s.trigger.next(last),
        None => s.trigger.first_at_or_after(s.earliest_ms),
    };
    proto::ScheduleInfo {
        name: s.name.clone(),
        id: s.id.clone(),
        trigger: describe(&s.trigger),
        cron,
        time_zone,
        every_ms: every_ms as u64,
        window: s.trigger.is_window(),
        start_ms,
        max_concurrent_windows,
        catch_up: s.catch_up.as_str().into(),
        catch_up_limit: s.catch_up_limit,
        overlap: s.overlap.as_str().into(),
        keep_runs: s.keep_runs,
        paused: s.paused,
        created_at_ms: s.created_at_ms,
        last_slot_ms: s.last_slot_ms.unwrap_or(0),
        next_slot_ms: next.unwrap_or(0),
        source: s.template.source.clone(),
        sink: s.template.sink.clone(),
        job: Some((&s.template).into()),
        runs: s.runs.len() as u32,
    }
}

fn run_info(state: &IrState, r: &Run) -> proto::ScheduleRun {
    let (shown, job) = state.run_state(r);
    proto::ScheduleRun {
        slot_ms: r.slot_ms,
        recorded_at_ms: r.recorded_at_ms,
        fired_at_ms: r.fired_at_ms.unwrap_or(0),
        job: r.job.clone().unwrap_or_default(),
        state: shown,
        reason: r.reason.clone().unwrap_or_default(),
        manual: r.manual,
        rows: job.map_or(0, |j| j.rows),
        bytes: job.map_or(0, |j| j.bytes),
        files: job.map_or(0, |j| j.files),
    }
}

pub async fn list(node: &Node) -> Result<proto::ScheduleListReply, Status> {
    up_to_date(node).await?;
    Ok(proto::ScheduleListReply {
        schedules: node.read_state(|s| s.schedules.values().map(info).collect()),
    })
}

pub async fn show(node: &Node, name: &str) -> Result<proto::ScheduleInfo, Status> {
    up_to_date(node).await?;
    Ok(info(&lookup(node, name)?))
}

pub async fn runs(node: &Node, name: &str) -> Result<proto::ScheduleRunsReply, Status> {
    up_to_date(node).await?;
    let s = lookup(node, name)?;
    Ok(proto::ScheduleRunsReply {
        name: s.name.clone(),
        runs: node.read_state(|state| s.runs.iter().map(|r| run_info(state, r)).collect()),
    })
}

pub async fn set_paused(
    node: &Node,
    dispatcher: &Dispatcher,
    name: &str,
    paused: bool,
) -> Result<proto::ScheduleInfo, Status> {
    up_to_date(node).await?;
    let s = lookup(node, name)?;
    node.propose(Command::SetSchedulePaused {
        name: s.name,
        id: s.id,
        paused,
    })
    .await?;
    dispatcher.wake();
    tracing::info!(schedule = %name, paused, "schedule paused or resumed");
    show(node, name).await
}

/// A run now, as if a slot fell due at this instant; the overlap policy does not apply (the
/// operator asked for it), and the trigger's own slots are unaffected.
pub async fn run_now(node: &Node, dispatcher: &Dispatcher, name: &str) -> Result<proto::ScheduleRun, Status> {
    up_to_date(node).await?;
    let s = lookup(node, name)?;
    if s.trigger.is_window() {
        return Err(Status::failed_precondition(format!(
            "schedule '{name}' runs tumbling windows, each when it ends; run-now is for cron and interval schedules"
        )));
    }
    let now = crate::unix_now_ms();
    let job = node
        .read_state(|state| job_for(state, &s, now, true, now))
        .map_err(Status::failed_precondition)?;
    let run = Run {
        slot_ms: now,
        recorded_at_ms: now,
        fired_at_ms: Some(now),
        job: Some(job.id.clone()),
        state: RunState::Fired,
        reason: None,
        manual: true,
    };
    node.propose(Command::FireSlot {
        name: s.name.clone(),
        id: s.id.clone(),
        run: run.clone(),
        job: Some(job),
    })
    .await?;
    dispatcher.wake();
    tracing::info!(schedule = %name, job = ?run.job, "schedule run now");
    Ok(node.read_state(|state| run_info(state, &run)))
}

pub async fn delete(node: &Node, name: &str) -> Result<proto::ScheduleDeleteReply, Status> {
    up_to_date(node).await?;
    let s = lookup(node, name)?;
    node.propose(Command::DeleteSchedule { name: s.name, id: s.id }).await?;
    tracing::info!(schedule = %name, "schedule deleted");
    Ok(proto::ScheduleDeleteReply { name: name.to_string() })
}
