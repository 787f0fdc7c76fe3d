//! `shir schedule`: copies the IR runs by itself, on a cron expression, an interval or
//! tumbling windows; each slot's run is a job made from the `job submit` options given here.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::client::Target;
use super::job::SubmitArgs;
use super::output::{print_list, rfc3339_ms};
use super::print_json;
use crate::proto;
use crate::proto::admin_client::AdminClient;
use crate::schedule::slots::parse_every;

#[derive(Clone, Copy, ValueEnum)]
pub enum CatchUpArg {
    None,
    Last,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OverlapArg {
    Skip,
    Queue,
}

const CREATE_HELP: &str = "\
Placeholders in --source, --sink and --name, replaced in each run's job:
  {slot}          the slot's time (RFC 3339)      {date}        its day (YYYY-MM-DD)
  {window_start}  a window's start (--window)      {window_end}  its end (exclusive)
  each with an optional strftime format: {slot:%Y%m%dT%H%M%S}, {window_start:%Y/%m/%d/%H}.
  In a PostgreSQL query a time becomes a quoted SQL literal ('2026-11-01T00:00:00Z'::timestamptz,
  '2026-11-01'::date): write it bare, not inside quotes.

Examples:
  shir schedule create nightly-orders --cron '30 2 * * *' --time-zone Europe/Berlin \\
       --source warehouse:public.orders --sink lake:/orders/{date}/orders.parquet
  shir schedule create hourly --every 1h --start 2026-11-01T00:00:00Z --window \\
       --source 'warehouse:select * from events where at >= {window_start} and at < {window_end}' \\
       --sink 'share:/events/{window_start:%Y/%m/%d/%H}.parquet'

Slots come from the dispatcher's clock. Every `job submit` option applies to each run's job.";

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Make a schedule: a trigger (--cron, --every, or --every with --window) and a job.
    #[command(after_help = CREATE_HELP)]
    Create {
        /// The schedule's name (letters, digits, '_', '-', '.').
        name: String,
        /// A cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6
        /// with seconds first.
        #[arg(long, value_name = "EXPRESSION", conflicts_with = "every")]
        cron: Option<String>,
        /// The IANA time zone the cron expression is read in (default UTC).
        #[arg(long, value_name = "ZONE", requires = "cron")]
        time_zone: Option<String>,
        /// A fixed interval: 1s, 30s, 5m, 1h, 1d (at least 1s). Slots fall on multiples of it
        /// from --start, or from the Unix epoch (so 1h fires on the hour).
        #[arg(long, value_name = "INTERVAL")]
        every: Option<String>,
        /// Tumbling windows of --every from --start: each run reads [window_start,
        /// window_end) and fires when its window ends; past windows are backfilled oldest first.
        #[arg(long, requires = "every")]
        window: bool,
        /// The first slot or window (RFC 3339, e.g. 2026-11-01T00:00:00Z); required with --window.
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// Window runs at once, at most (default 1).
        #[arg(long, value_name = "N", requires = "window")]
        max_concurrent_windows: Option<u32>,
        /// Slots that fell due while there was no dispatcher (or while paused): run none of
        /// them, only the latest (default), or all of them oldest first.
        #[arg(long, value_enum, value_name = "none|last|all")]
        catch_up: Option<CatchUpArg>,
        /// With --catch-up all: the most missed slots run, the latest ones (default 100).
        #[arg(long, value_name = "N")]
        catch_up_limit: Option<u32>,
        /// A slot that falls due while the previous run is still going: skip it (recorded,
        /// with the reason; default) or queue it behind.
        #[arg(long, value_enum, value_name = "skip|queue")]
        overlap: Option<OverlapArg>,
        /// Runs kept in `schedule runs` (default 100; 10 to 10000).
        #[arg(long, value_name = "N")]
        keep_runs: Option<u32>,
        /// Create it paused (`schedule resume` starts it).
        #[arg(long)]
        paused: bool,
        #[command(flatten)]
        job: Box<SubmitArgs>,
        #[command(flatten)]
        target: Target,
        /// Print the schedule as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the schedules.
    List {
        #[command(flatten)]
        target: Target,
        /// Print a JSON array of schedule objects.
        #[arg(long)]
        json: bool,
    },
    /// Show one schedule: trigger, policies, job template, last and next slot.
    Show(OneSchedule),
    /// The schedule's recent slots, oldest first: slot, when fired, job, state, rows, reason
    /// (--json: a list of {slot, fired_at, job, state, reason, manual, rows, bytes, files}).
    Runs(OneSchedule),
    /// Stop firing (slots that fall due meanwhile follow --catch-up on resume).
    Pause(OneSchedule),
    /// Fire again.
    Resume(OneSchedule),
    /// Run the schedule's job now, outside its trigger (cron and interval schedules); prints the job id.
    RunNow(OneSchedule),
    /// Delete the schedule and its run history (jobs already made stay).
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

/// A call about one schedule.
#[derive(clap::Args)]
pub struct OneSchedule {
    /// The schedule's name.
    name: String,
    #[command(flatten)]
    target: Target,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

impl OneSchedule {
    async fn connect(&self) -> Result<(AdminClient<Channel>, proto::ScheduleNameRequest)> {
        let request = proto::ScheduleNameRequest {
            name: self.name.clone(),
        };
        Ok((self.target.connect().await?, request))
    }
}

fn time_or_null(ms: i64) -> Value {
    match ms {
        0 => Value::Null,
        ms => rfc3339_ms(ms).map_or(Value::Null, Value::String),
    }
}

fn text_or_null(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

fn schedule_json(s: &proto::ScheduleInfo) -> Value {
    json!({
        "name": s.name,
        "id": s.id,
        "trigger": s.trigger,
        "cron": text_or_null(&s.cron),
        "time_zone": text_or_null(&s.time_zone),
        "every_ms": if s.every_ms == 0 { Value::Null } else { json!(s.every_ms) },
        "window": s.window,
        "start": time_or_null(s.start_ms),
        "max_concurrent_windows": if s.window { json!(s.max_concurrent_windows) } else { Value::Null },
        "catch_up": s.catch_up,
        "catch_up_limit": s.catch_up_limit,
        "overlap": s.overlap,
        "keep_runs": s.keep_runs,
        "paused": s.paused,
        "created_at": time_or_null(s.created_at_ms),
        "last_slot": time_or_null(s.last_slot_ms),
        "next_slot": time_or_null(s.next_slot_ms),
        "source": s.source,
        "sink": s.sink,
        "runs": s.runs,
    })
}

fn run_json(r: &proto::ScheduleRun) -> Value {
    json!({
        "slot": time_or_null(r.slot_ms),
        "fired_at": time_or_null(r.fired_at_ms),
        "job": text_or_null(&r.job),
        "state": r.state,
        "reason": text_or_null(&r.reason),
        "manual": r.manual,
        "rows": r.rows,
        "bytes": r.bytes,
        "files": r.files,
    })
}

/// A time for people; `-` for none.
fn shown(ms: i64) -> String {
    rfc3339_ms(ms).filter(|_| ms != 0).unwrap_or_else(|| "-".into())
}

fn show_text(s: &proto::ScheduleInfo) {
    println!("name:      {}", s.name);
    println!("trigger:   {}{}", s.trigger, if s.paused { " (paused)" } else { "" });
    if s.start_ms != 0 {
        println!("start:     {}", shown(s.start_ms));
    }
    println!("catch-up:  {} (limit {})", s.catch_up, s.catch_up_limit);
    println!("overlap:   {}", s.overlap);
    println!("source:    {}", s.source);
    println!("sink:      {}", s.sink);
    println!("last slot: {}", shown(s.last_slot_ms));
    println!("next slot: {}", shown(s.next_slot_ms));
    println!("runs kept: {} of at most {}", s.runs, s.keep_runs);
}

fn print_schedule(s: &proto::ScheduleInfo, json: bool) {
    if json {
        print_json(&schedule_json(s));
    } else {
        show_text(s);
    }
}

pub async fn run(command: ScheduleCommand) -> Result<()> {
    match command {
        ScheduleCommand::Create {
            name,
            cron,
            time_zone,
            every,
            window,
            start,
            max_concurrent_windows,
            catch_up,
            catch_up_limit,
            overlap,
            keep_runs,
            paused,
            job,
            target,
            json,
        } => {
            let every_ms = every
                .as_deref()
                .map(parse_every)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let request = proto::ScheduleCreateRequest {
                name,
                job: Some(job.into_request()?),
                cron: cron.unwrap_or_default(),
                time_zone: time_zone.unwrap_or_default(),
                every_ms: every_ms.unwrap_or(0) as u64,
                window,
                start: start.unwrap_or_default(),
                max_concurrent_windows: max_concurrent_windows.unwrap_or(0),
                catch_up: match catch_up {
                    None => String::new(),
                    Some(CatchUpArg::None) => "none".into(),
                    Some(CatchUpArg::Last) => "last".into(),
                    Some(CatchUpArg::All) => "all".into(),
                },
                catch_up_limit: catch_up_limit.unwrap_or(0),
                overlap: match overlap {
                    None => String::new(),
                    Some(OverlapArg::Skip) => "skip".into(),
                    Some(OverlapArg::Queue) => "queue".into(),
                },
                keep_runs: keep_runs.unwrap_or(0),
                paused,
            };
            let reply = target.connect().await?.schedule_create(request).await?.into_inner();
            print_schedule(&reply, json);
        }
        ScheduleCommand::List { target, json } => {
            let reply = target
                .connect()
                .await?
                .schedule_list(proto::ScheduleListRequest {})
                .await?
                .into_inner();
            let next = |s: &proto::ScheduleInfo| shown(s.next_slot_ms);
            print_list(
                &reply.schedules,
                json,
                "no schedules",
                &["NAME", "TRIGGER", "STATE", "NEXT SLOT", "SOURCE", "SINK"],
                schedule_json,
                |s| {
                    let state = if s.paused { "paused" } else { "active" };
                    vec![
                        s.name.clone(),
                        s.trigger.clone(),
                        state.into(),
                        next(s),
                        s.source.clone(),
                        s.sink.clone(),
                    ]
                },
            );
        }
        ScheduleCommand::Show(one) => {
            let (mut client, request) = one.connect().await?;
            print_schedule(&client.schedule_show(request).await?.into_inner(), one.json);
        }
        ScheduleCommand::Runs(one) => {
            let (mut client, request) = one.connect().await?;
            let reply = client.schedule_runs(request).await?.into_inner();
            print_list(
                &reply.runs,
                one.json,
                "no runs yet",
                &["SLOT", "FIRED", "JOB", "STATE", "ROWS", "BYTES", "REASON"],
                run_json,
                |r| {
                    vec![
                        format!("{}{}", shown(r.slot_ms), if r.manual { " (run-now)" } else { "" }),
                        shown(r.fired_at_ms),
                        if r.job.is_empty() { "-".into() } else { r.job.clone() },
                        r.state.clone(),
                        r.rows.to_string(),
                        r.bytes.to_string(),
                        r.reason.clone(),
                    ]
                },
            );
        }
        ScheduleCommand::Pause(one) => {
            let (mut client, request) = one.connect().await?;
            print_schedule(&client.schedule_pause(request).await?.into_inner(), one.json);
        }
        ScheduleCommand::Resume(one) => {
            let (mut client, request) = one.connect().await?;
            print_schedule(&client.schedule_resume(request).await?.into_inner(), one.json);
        }
        ScheduleCommand::RunNow(one) => {
            let (mut client, request) = one.connect().await?;
            let run = client.schedule_run_now(request).await?.into_inner();
            if one.json {
                print_json(&run_json(&run));
            } else {
                println!("{}", run.job);
            }
        }
        ScheduleCommand::Delete { name, target } => {
            let reply = target
                .connect()
                .await?
                .schedule_delete(proto::ScheduleNameRequest { name })
                .await?
                .into_inner();
            println!("deleted schedule {}", reply.name);
        }
    }
    Ok(())
}
