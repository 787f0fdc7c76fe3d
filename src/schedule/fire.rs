//! The dispatcher's side of schedules: which slots are due now, and the one command that
//! fires each.
//!
//! [`plan`] reads the applied state and the dispatcher's clock and returns the commands of
//! this round; it decides nothing that applying could contradict, and applying decides
//! nothing that depends on a clock. A slot fires by one `FireSlot` that records it and
//! carries its job, whose id is derived from the schedule's id and the slot, so a slot is
//! fired once or not at all: a dispatcher that dies between deciding and committing leaves
//! the slot unrecorded, and its successor, planning from the same applied state, fires it.

use sha2::{Digest, Sha256};

use super::placeholders::{self, Mode, Values};
use super::slots::Trigger;
use crate::connectors::ServiceType;
use crate::job_spec::Submission;
use crate::job_spec::names::{self, Named};
use crate::node::handle::Node;
use crate::node::proposer::ProposeError;
use crate::state::jobs::Job;
use crate::state::schedules::{CatchUp, MAX_QUEUED_RUNS, Overlap, Run, RunState, Schedule};
use crate::state::{Command, IrState};

/// A slot not fired within this long of falling due counts as missed (`--catch-up none`
/// does not run it). Far above a failover (about a second) and a dispatch round, so a
/// slot that falls due during a failover is late, not missed.
pub const MISSED_AFTER_MS: i64 = 30_000;

/// The job id of a schedule's run: derived, so that every dispatcher that fires the slot
/// proposes the same job, and the state machine can refuse a second one.
pub fn run_job_id(schedule_id: &str, slot_ms: i64, manual: bool) -> String {
    let kind = if manual { "manual" } else { "slot" };
    let digest = Sha256::digest(format!("{schedule_id}/{kind}/{slot_ms}"));
    hex::encode(&digest[..6])
}

fn values(trigger: &Trigger, slot_ms: i64) -> Values {
    Values {
        slot_ms,
        window: trigger.is_window().then(|| (slot_ms, trigger.due_at(slot_ms))),
        zone: trigger.zone(),
    }
}

/// How a source's placeholders are written: as SQL literals in a PostgreSQL query, as text
/// anywhere else (paths, table names).
fn source_mode(source: &str, sample: &Values, kind_of: &impl Fn(&str) -> Option<ServiceType>) -> Mode {
    let Some((service, rest)) = source.split_once(':') else {
        return Mode::Text;
    };
    if kind_of(service) != Some(ServiceType::Postgres) {
        return Mode::Text;
    }
    match names::parse_table(&placeholders::render(rest, sample, Mode::Text)) {
        Ok(Named::NotAName) => Mode::Sql,
        _ => Mode::Text,
    }
}

/// The submission of the run of `slot_ms`: the template with its placeholders replaced.
pub fn render(
    name: &str,
    trigger: &Trigger,
    template: &Submission,
    slot_ms: i64,
    kind_of: &impl Fn(&str) -> Option<ServiceType>,
) -> Submission {
    let v = values(trigger, slot_ms);
    let mode = source_mode(&template.source, &v, kind_of);
    let mut run = template.clone();
    run.source = match template.source.split_once(':') {
        Some((service, rest)) => format!("{service}:{}", placeholders::render(rest, &v, mode)),
        None => template.source.clone(),
    };
    run.sink = placeholders::render(&template.sink, &v, Mode::Text);
    run.name = match template.name.as_str() {
        "" => name.to_string(),
        given => placeholders::render(given, &v, Mode::Text),
    };
    run
}

/// Checks a new schedule's template: placeholders it defines, and a job that a run would
/// accept (rendered for `sample_slot`), so a mistake is refused now, not at 02:30.
pub fn check_template(
    name: &str,
    trigger: &Trigger,
    template: &Submission,
    sample_slot: i64,
    kind_of: impl Fn(&str) -> Option<ServiceType>,
) -> Result<(), String> {
    let window = trigger.is_window();
    let mode = source_mode(&template.source, &values(trigger, sample_slot), &kind_of);
    let rest = template.source.split_once(':').map_or("", |(_, r)| r);
    placeholders::check(rest, window, mode, "--source")?;
    placeholders::check(&template.sink, window, Mode::Text, "--sink")?;
    placeholders::check(&template.name, window, Mode::Text, "--name")?;
    render(name, trigger, template, sample_slot, &kind_of)
        .parse(kind_of)
        .map(|_| ())
        .map_err(|e| e.0)
}

/// The job of `s`'s run of `slot_ms`, or why there can be none (a linked service it names
/// was deleted since the schedule was made, say).
pub fn job_for(state: &IrState, s: &Schedule, slot_ms: i64, manual: bool, now_ms: i64) -> Result<Job, String> {
    let kind_of = |service: &str| state.linked_services.get(service).map(|l| l.kind);
    let spec = render(&s.name, &s.trigger, &s.template, slot_ms, &kind_of)
        .parse(kind_of)
        .map_err(|e| format!("the run's job is not valid: {}", e.0))?;
    Ok(Job::queued(run_job_id(&s.id, slot_ms, manual), spec, now_ms))
}

/// A `FireSlot` for `slot_ms` in `state`: its job, or the run skipped with `skip` or queued.
fn fire(state: &IrState, s: &Schedule, slot_ms: i64, how: How, now_ms: i64) -> Command {
    let (job, run_state, reason) = match how {
        How::Fire => match job_for(state, s, slot_ms, false, now_ms) {
            Ok(job) => (Some(job), RunState::Fired, None),
            Err(why) => (None, RunState::Skipped, Some(why)),
        },
        How::Queue => (None, RunState::Queued, None),
        How::Skip(why) => (None, RunState::Skipped, Some(why)),
    };
    Command::FireSlot {
        name: s.name.clone(),
        id: s.id.clone(),
        run: Run {
            slot_ms,
            recorded_at_ms: now_ms,
            fired_at_ms: job.as_ref().map(|_| now_ms),
            job: job.as_ref().map(|j| j.id.clone()),
            state: run_state,
            reason,
            manual: false,
        },
        job,
    }
}

enum How {
    Fire,
    Queue,
    Skip(String),
}

/// The commands that fire what is due at `now_ms`, for every schedule.
pub fn plan(state: &IrState, now_ms: i64) -> Vec<Command> {
    let mut out = Vec::new();
    for s in state.schedules.values().filter(|s| !s.paused) {
        match s.trigger {
            Trigger::Window { max_concurrent, .. } => plan_windows(state, s, max_concurrent, now_ms, &mut out),
            _ => plan_slots(state, s, now_ms, &mut out),
        }
    }
    out
}

/// Windows are backfilled oldest first, at most `max_concurrent` runs at a time; a window
/// over while the limit is reached waits for a free place (it is never skipped).
fn plan_windows(state: &IrState, s: &Schedule, max_concurrent: u32, now_ms: i64, out: &mut Vec<Command>) {
    let free = (max_concurrent as usize).saturating_sub(state.running_runs(s));
    for slot in s.trigger.oldest_due(s.last_slot_ms, s.earliest_ms, now_ms, free) {
        out.push(fire(state, s, slot, How::Fire, now_ms));
    }
}

fn plan_slots(state: &IrState, s: &Schedule, now_ms: i64, out: &mut Vec<Command>) {
    let running = state.running_job_of(s);
    let mut queued = s.runs.iter().filter(|r| r.state == RunState::Queued).count();
    if running.is_none()
        && let Some(next) = s.first_queued()
    {
        let (job, reason) = match job_for(state, s, next.slot_ms, false, now_ms) {
            Ok(job) => (Some(job), None),
            Err(why) => (None, Some(why)),
        };
        out.push(Command::StartQueuedRun {
            name: s.name.clone(),
            id: s.id.clone(),
            slot_ms: next.slot_ms,
            job,
            reason,
            now_ms,
        });
    }
    // Most rounds have nothing due: one step of the trigger says so.
    let next = match s.last_slot_ms {
        Some(last) => s.trigger.next(last),
        None => s.trigger.first_at_or_after(s.earliest_ms),
    };
    if next.is_none_or(|n| s.trigger.due_at(n) > now_ms) {
        return;
    }
    let count = match s.catch_up {
        CatchUp::All => s.catch_up_limit.max(1) as usize,
        CatchUp::Last | CatchUp::None => 1,
    };
    // One more than are run: the oldest of them stands for every older missed slot.
    let (mut due, _) = s.trigger.newest_due(s.last_slot_ms, s.earliest_ms, now_ms, count + 1);
    if due.len() > count {
        let older = due.remove(0);
        let why = match s.catch_up {
            CatchUp::All => format!(
                "missed (no dispatcher, or paused): older than the {count} latest missed slots --catch-up-limit runs"
            ),
            CatchUp::Last => "missed (no dispatcher, or paused): --catch-up last runs only the latest".to_string(),
            CatchUp::None => "missed (no dispatcher, or paused): --catch-up none".to_string(),
        };
        let why = format!("{why}; so is every earlier unrecorded slot");
        out.push(fire(state, s, older, How::Skip(why), now_ms));
    }
    // Whether a run is going or waiting: a slot due now would overlap it.
    let mut busy = running.is_some() || queued > 0;
    let mut backfill = false;
    for slot in due {
        let how = if s.catch_up == CatchUp::None && now_ms - s.trigger.due_at(slot) > MISSED_AFTER_MS {
            How::Skip("missed (no dispatcher, or paused): --catch-up none".into())
        } else if backfill {
            // Slots caught up in one round run one after the other, behind the first.
            How::Queue
        } else if busy {
            match s.overlap {
                Overlap::Skip => How::Skip(match &running {
                    Some(job) => format!("the previous run (job {job}) was still running (--overlap skip)"),
                    None => "earlier runs were still waiting (--overlap skip)".into(),
                }),
                Overlap::Queue if queued >= MAX_QUEUED_RUNS => {
                    How::Skip(format!("{MAX_QUEUED_RUNS} runs were already waiting (--overlap queue)"))
                }
                Overlap::Queue => How::Queue,
            }
        } else {
            backfill = true;
            How::Fire
        };
        if matches!(how, How::Queue) {
            queued += 1;
        }
        busy = true;
        out.push(fire(state, s, slot, how, now_ms));
    }
}

/// One round of the dispatcher: fires what is due. A refused command (a slot that another
/// dispatcher's proposal recorded first, a schedule deleted meanwhile) is expected and
/// harmless; anything else ends the round, and the next round plans again.
pub async fn fire_due(node: &Node) -> Result<(), ProposeError> {
    let now = crate::unix_now_ms();
    let commands = node.read_state(|s| plan(s, now));
    for command in commands {
        if let Command::FireSlot { name, run, .. } = &command {
            tracing::info!(schedule = %name, slot = run.slot_ms, state = ?run.state, job = ?run.job, "schedule slot");
        }
        match node.propose(command).await {
            Ok(_) => {}
            Err(ProposeError::Rejected(why)) => tracing::debug!(%why, "schedule command refused"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
