//! Schedules in the replicated state: the trigger, the job template, the policies, and the
//! record of the slots fired, which is what makes each slot fire once.
//!
//! The dispatcher decides from its clock which slots are due (`schedule::fire`) and fires
//! each by proposing one `FireSlot` that records the slot and creates the run's job
//! together. `last_slot_ms` only moves forward, and a `FireSlot` for a slot at or before it
//! changes nothing: a slot is recorded once, by whichever dispatcher's proposal commits
//! first, and a proposal repeated by a new dispatcher after a failover is a no-op. The run
//! history is pruned to `keep_runs` in the same command, so every node keeps the same runs.

use serde::{Deserialize, Serialize};

use super::jobs::Job;
use super::{CommandResult, IrState};
use crate::job_spec::Submission;
use crate::schedule::slots::Trigger;

/// What happens to slots that fell due while there was no dispatcher (or the schedule was
/// paused): `--catch-up`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatchUp {
    /// None of them runs; they are recorded as skipped.
    None,
    /// Only the latest runs (Nomad's way).
    #[default]
    Last,
    /// Each runs, oldest first, up to `catch_up_limit` of the latest.
    All,
}

/// What happens to a slot that falls due while the schedule's previous run is still going:
/// `--overlap`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// It is recorded as skipped, with the reason.
    #[default]
    Skip,
    /// It waits, and runs when the runs before it have ended.
    Queue,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Last => "last",
            CatchUp::All => "all",
        }
    }
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        }
    }
}

/// Runs kept per schedule by default (`--keep-runs`), and the bounds: enough to look back
/// over a few days of an hourly schedule; every run is part of the replicated state.
pub const DEFAULT_KEEP_RUNS: u32 = 100;
pub const MIN_KEEP_RUNS: u32 = 10;
pub const MAX_KEEP_RUNS: u32 = 10_000;

/// The most missed slots `--catch-up all` runs after an outage (each becomes a job at once),
/// and the most window runs at a time: also what the dispatcher plans at most per schedule
/// and round, whatever a record says.
pub const MAX_CATCH_UP_LIMIT: u32 = 10_000;
pub const MAX_CONCURRENT_WINDOWS: u32 = 100;

/// Slots a schedule may have waiting under `--overlap queue`: past that a slot is skipped,
/// so a run that hangs cannot make the queue (and the state) grow without end.
pub const MAX_QUEUED_RUNS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// The run's job was created.
    Fired,
    /// Waiting for the runs before it (`--overlap queue`, or a backfill).
    Queued,
    /// Not run; `reason` says why.
    Skipped,
}

/// One slot of a schedule as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub slot_ms: i64,
    /// When the slot was recorded (the dispatcher's clock).
    pub recorded_at_ms: i64,
    /// When its job was created (a queued run's is later than its record).
    pub fired_at_ms: Option<i64>,
    pub job: Option<String>,
    pub state: RunState,
    pub reason: Option<String>,
    /// Made by `schedule run-now` rather than by the trigger.
    pub manual: bool,
}

/// A schedule: when it fires, what each run copies, and what it has fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Chosen by the proposer at create; run job ids are derived from it, so a schedule
    /// deleted and made again under its name does not reuse its predecessor's job ids.
    pub id: String,
    pub name: String,
    pub trigger: Trigger,
    /// The `job submit` options of each run's job, placeholders unreplaced.
    pub template: Submission,
    pub catch_up: CatchUp,
    pub catch_up_limit: u32,
    pub overlap: Overlap,
    pub keep_runs: u32,
    pub paused: bool,
    pub created_at_ms: i64,
    /// No slot before this one is ever due (`--start`, or the creation time).
    pub earliest_ms: i64,
    /// The latest slot the trigger made that was recorded (fired, queued or skipped):
    /// exactly once rests on it, not on `runs`, which is pruned.
    pub last_slot_ms: Option<i64>,
    /// The latest `keep_runs` runs, oldest first.
    pub runs: Vec<Run>,
    // Incremental loads (not yet) add their watermark here, e.g.
    // `watermark: Option<Watermark>` with `#[serde(default)]`: advanced only by the command
    // that records a run's job as Succeeded, and read by the next run's job.
}

impl Schedule {
    /// The run of `slot_ms` that the trigger (not `run-now`) made, if it is still kept.
    pub fn run(&self, slot_ms: i64) -> Option<&Run> {
        self.runs.iter().find(|r| r.slot_ms == slot_ms && !r.manual)
    }

    /// The oldest run waiting its turn.
    pub fn first_queued(&self) -> Option<&Run> {
        self.runs.iter().find(|r| r.state == RunState::Queued)
    }

    fn prune(&mut self) {
        while self.runs.len() > self.keep_runs as usize {
            // Waiting runs are work still to do: the oldest ended or skipped one goes first.
            match self.runs.iter().position(|r| r.state != RunState::Queued) {
                Some(i) => self.runs.remove(i),
                None => break,
            };
        }
    }
}

impl IrState {
    /// The jobs of `s`'s runs that have not ended, oldest first.
    fn unfinished_jobs<'a>(&'a self, s: &'a Schedule) -> impl Iterator<Item = &'a str> {
        s.runs
            .iter()
            .filter_map(|r| r.job.as_deref())
            .filter(|id| self.jobs.get(id).is_some_and(|j| !j.state.is_final()))
    }

    /// The newest job of one of `s`'s runs that has not ended, if any.
    pub fn running_job_of(&self, s: &Schedule) -> Option<String> {
        self.unfinished_jobs(s).last().map(str::to_string)
    }

    /// How many of `s`'s runs have a job that has not ended.
    pub fn running_runs(&self, s: &Schedule) -> usize {
        self.unfinished_jobs(s).count()
    }

    /// The state of a run as shown: its job's once it has one.
    pub fn run_state(&self, r: &Run) -> (String, Option<&Job>) {
        match (r.state, r.job.as_deref()) {
            (RunState::Fired, Some(id)) => match self.jobs.get(id) {
                Some(j) => (j.state.as_str().to_string(), Some(j)),
                None => ("Pruned".into(), None),
            },
            (RunState::Queued, _) => ("Queued".into(), None),
            _ => ("Skipped".into(), None),
        }
    }

    pub(super) fn create_schedule(&mut self, schedule: &Schedule) -> CommandResult {
        if self.schedules.contains_key(&schedule.name) {
            return CommandResult::refused(format!("a schedule named '{}' exists already", schedule.name));
        }
        self.schedules.insert(schedule.name.clone(), schedule.clone());
        CommandResult::Ok
    }

    /// The schedule `name` if it is still the one with `id` (not deleted and made again).
    fn schedule_mut(&mut self, name: &str, id: &str) -> Result<&mut Schedule, CommandResult> {
        match self.schedules.get_mut(name) {
            Some(s) if s.id == id => Ok(s),
            _ => Err(CommandResult::refused(format!("no schedule named '{name}'"))),
        }
    }

    /// The schedule a run's `job` is for, if the job is new: its id is derived from the slot,
    /// so an existing one means the slot's job was made already.
    fn schedule_for(&mut self, name: &str, id: &str, job: Option<&Job>) -> Result<&mut Schedule, CommandResult> {
        if let Some(job) = job
            && self.jobs.contains_key(&job.id)
        {
            return Err(CommandResult::refused(format!("job {} exists already", job.id)));
        }
        self.schedule_mut(name, id)
    }

    pub(super) fn set_schedule_paused(&mut self, name: &str, id: &str, paused: bool) -> CommandResult {
        match self.schedule_mut(name, id) {
            Ok(s) => {
                s.paused = paused;
                CommandResult::Ok
            }
            Err(refused) => refused,
        }
    }

    pub(super) fn delete_schedule(&mut self, name: &str, id: &str) -> CommandResult {
        if let Err(refused) = self.schedule_mut(name, id) {
            return refused;
        }
        // The runs' jobs stay: they are jobs like any other, kept by the job history.
        self.schedules.remove(name);
        CommandResult::Ok
    }

    /// Records `run` of schedule `name` and creates its `job`, in one step; a slot already
    /// recorded changes nothing.
    pub(super) fn fire_slot(&mut self, name: &str, id: &str, run: &Run, job: Option<&Job>) -> CommandResult {
        let s = match self.schedule_for(name, id, job) {
            Ok(s) => s,
            Err(refused) => return refused,
        };
        if run.manual {
            if s.runs.iter().any(|r| r.manual && r.slot_ms == run.slot_ms) {
                return CommandResult::refused(format!("schedule '{name}' already has that run"));
            }
        } else {
            if s.last_slot_ms.is_some_and(|last| run.slot_ms <= last) {
                return CommandResult::refused(format!(
                    "slot {} of schedule '{name}' is recorded already",
                    run.slot_ms
                ));
            }
            if s.paused {
                return CommandResult::refused(format!("schedule '{name}' is paused"));
            }
            s.last_slot_ms = Some(run.slot_ms);
        }
        s.runs.push(run.clone());
        s.prune();
        match job {
            Some(job) => self.submit_job(job),
            None => CommandResult::Ok,
        }
    }

    /// Gives the queued run of `slot_ms` its job (or, with `job` None, skips it for `reason`).
    pub(super) fn start_queued_run(
        &mut self,
        name: &str,
        id: &str,
        slot_ms: i64,
        job: Option<&Job>,
        reason: Option<&str>,
        now_ms: i64,
    ) -> CommandResult {
        let s = match self.schedule_for(name, id, job) {
            Ok(s) => s,
            Err(refused) => return refused,
        };
        let Some(run) = s
            .runs
            .iter_mut()
            .find(|r| r.slot_ms == slot_ms && !r.manual && r.state == RunState::Queued)
        else {
            return CommandResult::refused(format!("slot {slot_ms} of schedule '{name}' is not waiting"));
        };
        match job {
            Some(job) => {
                run.state = RunState::Fired;
                run.fired_at_ms = Some(now_ms);
                run.job = Some(job.id.clone());
                self.submit_job(job)
            }
            None => {
                run.state = RunState::Skipped;
                run.reason = reason.map(str::to_string);
                CommandResult::Ok
            }
        }
    }
}

/// A schedule name outside what job names and command lines take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule name '{0}': use 1-80 letters, digits, '_', '-' or '.', starting with a letter or digit")]
pub struct InvalidScheduleName(String);

/// Schedule names follow linked-service names' rules: they are typed on command lines and
/// become the names of their runs' jobs.
pub fn validate_schedule_name(name: &str) -> Result<(), InvalidScheduleName> {
    super::linked_service::validate_service_name(name).map_err(|_| InvalidScheduleName(name.to_string()))
}
