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
use crate::state::schedules::{
    CatchUp, MAX_CATCH_UP_LIMIT, MAX_CONCURRENT_WINDOWS, MAX_QUEUED_RUNS, Overlap, Run, RunState, Schedule,
};
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
    let (service, rest) = template.source.split_once(':').unwrap_or_default();
    // `SERVICE:"select …"` reads as one quoted table name (as for `job submit`): with its
    // placeholders as text in it, it would fail at every run, so say so now.
    if mode == Mode::Text
        && kind_of(service) == Some(ServiceType::Postgres)
        && rest.starts_with('"')
        && rest.contains(' ')
    {
        return Err(format!(
            "--source: {rest} reads as a quoted table name; write a query without the double quotes, \
             '{service}:select …' (in single quotes for the shell)"
        ));
    }
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
    let free = (max_concurrent.min(MAX_CONCURRENT_WINDOWS) as usize).saturating_sub(state.running_runs(s));
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
        CatchUp::All => s.catch_up_limit.clamp(1, MAX_CATCH_UP_LIMIT) as usize,
        CatchUp::Last | CatchUp::None => 1,
    };
    // One more than are run: the oldest of them stands for every older missed slot.
    let (mut due, _) = s.trigger.newest_due(s.last_slot_ms, s.earliest_ms, now_ms, count + 1);
    if due.len() > count {
        let older = due.remove(0);
        let why = match s.catch_up {
            CatchUp::All => format!(
                "missed (no dispatcher, or paused): older than the {count} latest, which --catch-up all runs (--catch-up-limit)"
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
        let how = if s.catch_up == CatchUp::None && now_ms.saturating_sub(s.trigger.due_at(slot)) > MISSED_AFTER_MS {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::jobs::JobState;
    use crate::state::schedules::DEFAULT_KEEP_RUNS;
    use crate::state::{CommandResult, LinkedService};

    fn service(name: &str, kind: ServiceType) -> LinkedService {
        LinkedService {
            id: format!("{name}-id"),
            name: name.into(),
            kind,
            fields: BTreeMap::new(),
            secrets: BTreeMap::new(),
            version: 1,
            created_at: 1,
            updated_at: 1,
        }
    }

    /// An IR with a share and a database, and schedule `s` every second from t = 10 s.
    fn ir(catch_up: CatchUp, overlap: Overlap) -> IrState {
        let mut state = IrState::default();
        state
            .linked_services
            .insert("share".into(), service("share", ServiceType::Filesystem));
        state
            .linked_services
            .insert("wh".into(), service("wh", ServiceType::Postgres));
        let schedule = Schedule {
            id: "s-id".into(),
            name: "s".into(),
            trigger: Trigger::Every {
                every_ms: 1_000,
                anchor_ms: 0,
            },
            template: Submission {
                source: "share:/in/a.bin".into(),
                sink: "share:/out/{slot:%H%M%S}.bin".into(),
                binary: true,
                ..Default::default()
            },
            catch_up,
            catch_up_limit: 3,
            overlap,
            keep_runs: DEFAULT_KEEP_RUNS,
            paused: false,
            created_at_ms: 10_000,
            earliest_ms: 10_000,
            last_slot_ms: None,
            runs: Vec::new(),
        };
        assert_eq!(state.apply(&Command::CreateSchedule { schedule }), CommandResult::Ok);
        state
    }

    fn apply_all(state: &mut IrState, commands: &[Command]) {
        for c in commands {
            assert_eq!(state.apply(c), CommandResult::Ok, "{c:?}");
        }
    }

    fn runs(state: &IrState) -> Vec<(i64, RunState)> {
        state
            .schedules
            .get("s")
            .unwrap()
            .runs
            .iter()
            .map(|r| (r.slot_ms, r.state))
            .collect()
    }

    fn finish_all(state: &mut IrState) {
        let ids: Vec<String> = state.jobs.active().map(|j| j.id.clone()).collect();
        for id in ids {
            state.jobs.update(&id, |j| j.state = JobState::Succeeded);
        }
    }

    #[test]
    fn a_slot_fires_once_whoever_proposes_it() {
        let mut state = ir(CatchUp::Last, Overlap::Skip);
        assert!(plan(&state, 9_999).is_empty(), "nothing before the first slot");
        let first = plan(&state, 10_050);
        let again = plan(&state, 10_150);
        // A dispatcher that took over plans the same slot with the same job id.
        assert_eq!(first.len(), 1);
        let job_of = |c: &Command| match c {
            Command::FireSlot { job: Some(j), .. } => j.id.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(job_of(&first[0]), job_of(&again[0]));
        apply_all(&mut state, &first);
        assert!(plan(&state, 10_900).is_empty(), "fired: nothing more due before 11 s");
        // The other dispatcher's proposal of the same slot commits after: a no-op.
        let before = state.clone();
        assert!(matches!(state.apply(&again[0]), CommandResult::Rejected(_)));
        assert_eq!(state, before, "a second proposal of a slot changes nothing");
        assert_eq!(state.jobs.len(), 1);
        let job = state.jobs.get(&job_of(&first[0])).unwrap();
        assert_eq!(job.spec.sink.describe(), "share:/out/000010.bin", "placeholders filled");
    }

    #[test]
    fn catch_up_all_runs_the_latest_missed_slots_in_turn() {
        let mut state = ir(CatchUp::All, Overlap::Skip);
        // 10..=15 s due at 15.5 s; the limit is 3.
        let commands = plan(&state, 15_500);
        apply_all(&mut state, &commands);
        assert_eq!(
            runs(&state),
            [
                (12_000, RunState::Skipped),
                (13_000, RunState::Fired),
                (14_000, RunState::Queued),
                (15_000, RunState::Queued)
            ],
            "the older slots are one skipped record; the latest three run one after the other"
        );
        // Each queued slot starts when the run before it has ended.
        assert!(plan(&state, 15_600).is_empty(), "13 s is still running");
        finish_all(&mut state);
        let next = plan(&state, 15_700);
        assert!(
            matches!(&next[..], [Command::StartQueuedRun { slot_ms: 14_000, .. }]),
            "{next:?}"
        );
        apply_all(&mut state, &next);
        assert_eq!(runs(&state)[2], (14_000, RunState::Fired));
    }

    #[test]
    fn catch_up_none_and_last() {
        let mut state = ir(CatchUp::Last, Overlap::Skip);
        let commands = plan(&state, 14_500);
        apply_all(&mut state, &commands);
        assert_eq!(runs(&state), [(13_000, RunState::Skipped), (14_000, RunState::Fired)]);

        // None: a slot more than MISSED_AFTER_MS late does not run.
        let mut state = ir(CatchUp::None, Overlap::Skip);
        state.schedules.get_mut("s").unwrap().trigger = Trigger::Every {
            every_ms: 60_000,
            anchor_ms: 0,
        };
        let commands = plan(&state, 60_000 + MISSED_AFTER_MS + 500);
        apply_all(&mut state, &commands);
        assert_eq!(runs(&state), [(60_000, RunState::Skipped)]);
        assert!(state.jobs.is_empty());
        // ... but one that is merely late (a failover) does.
        let mut state = ir(CatchUp::None, Overlap::Skip);
        let commands = plan(&state, 11_900);
        apply_all(&mut state, &commands);
        assert_eq!(runs(&state), [(10_000, RunState::Skipped), (11_000, RunState::Fired)]);
    }

    #[test]
    fn overlap_skip_records_the_reason_and_queue_waits() {
        let mut state = ir(CatchUp::Last, Overlap::Skip);
        for now in [10_000, 11_000] {
            let commands = plan(&state, now);
            apply_all(&mut state, &commands);
        }
        let s = state.schedules.get("s").unwrap();
        assert_eq!(s.runs[1].state, RunState::Skipped);
        assert!(
            s.runs[1].reason.as_deref().unwrap().contains("still running"),
            "{:?}",
            s.runs[1]
        );

        let mut state = ir(CatchUp::Last, Overlap::Queue);
        for now in [10_000, 11_000] {
            let commands = plan(&state, now);
            apply_all(&mut state, &commands);
        }
        assert_eq!(runs(&state), [(10_000, RunState::Fired), (11_000, RunState::Queued)]);
    }

    #[test]
    fn the_history_is_pruned_in_the_command() {
        let mut state = ir(CatchUp::Last, Overlap::Skip);
        state.schedules.get_mut("s").unwrap().keep_runs = 10;
        for t in 0..25 {
            finish_all(&mut state);
            let commands = plan(&state, 10_000 + t * 1_000);
            apply_all(&mut state, &commands);
        }
        let s = state.schedules.get("s").unwrap();
        assert_eq!(s.runs.len(), 10);
        assert_eq!(s.runs[0].slot_ms, 25_000, "the oldest went first");
        assert_eq!(s.last_slot_ms, Some(34_000));
    }

    #[test]
    fn a_paused_schedule_fires_nothing() {
        let mut state = ir(CatchUp::Last, Overlap::Skip);
        let commands = plan(&state, 10_000);
        assert_eq!(
            state.apply(&Command::SetSchedulePaused {
                name: "s".into(),
                id: "s-id".into(),
                paused: true
            }),
            CommandResult::Ok
        );
        assert!(plan(&state, 12_000).is_empty());
        // A proposal made just before the pause committed changes nothing.
        assert!(matches!(state.apply(&commands[0]), CommandResult::Rejected(_)));
        assert!(runs(&state).is_empty());
    }

    #[test]
    fn a_query_source_gets_sql_literals_and_a_table_source_text() {
        let state = ir(CatchUp::Last, Overlap::Skip);
        let kind_of = |s: &str| state.linked_services.get(s).map(|l| l.kind);
        let template = Submission {
            source: "wh:select * from e where at >= {window_start} and at < {window_end}".into(),
            sink: "share:/e/{window_start:%H}.csv".into(),
            ..Default::default()
        };
        let windows = Trigger::Window {
            every_ms: 3_600_000,
            start_ms: 0,
            max_concurrent: 1,
        };
        let run = render("w", &windows, &template, 0, &kind_of);
        assert_eq!(
            run.source,
            "wh:select * from e where at >= '1970-01-01T00:00:00Z'::timestamptz and at < '1970-01-01T01:00:00Z'::timestamptz"
        );
        assert_eq!(run.sink, "share:/e/00.csv");
        assert_eq!(run.name, "w");
        let table = Submission {
            source: "wh:public.events_{slot:%Y}".into(),
            sink: "share:/e.csv".into(),
            ..Default::default()
        };
        assert_eq!(
            render("w", &windows, &table, 0, &kind_of).source,
            "wh:public.events_1970"
        );
        check_template("w", &windows, &template, 0, kind_of).unwrap();
        let quoted = Submission {
            source: "wh:\"select * from e where at >= {window_start}\"".into(),
            ..template
        };
        let e = check_template("w", &windows, &quoted, 0, kind_of).unwrap_err();
        assert!(e.contains("reads as a quoted table name"), "{e}");
    }
}
