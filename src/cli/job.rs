//! `shir job`: submit copy jobs, follow them, cancel them; `shir node set-limit`.

use std::io::IsTerminal;

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::client::Target;
use super::output::{rfc3339_ms, table};
use super::print_json;
use crate::proto;
use crate::timing::JOB_POLL;

/// How `job submit` reads and writes its data: formats, CSV options, types, existing files.
#[derive(clap::Args)]
pub struct FormatArgs {
    /// csv, jsonl or parquet (default: from the file extension).
    #[arg(long)]
    pub source_format: Option<String>,
    /// csv, jsonl or parquet (default: from the file extension).
    #[arg(long)]
    pub sink_format: Option<String>,
    /// Copy files as they are (both ends filesystem).
    #[arg(long, conflicts_with_all = ["source_format", "sink_format"])]
    pub binary: bool,
    /// CSV files have no header line.
    #[arg(long)]
    pub csv_no_header: bool,
    /// CSV field delimiter (one character; default ',').
    #[arg(long, value_name = "CHAR")]
    pub csv_delimiter: Option<String>,
    /// Copy a CSV source that holds no rows (an empty output with its columns) instead
    /// of failing.
    #[arg(long)]
    pub allow_empty: bool,
    /// Text encoding of a CSV source: utf-8 (default), latin1 or windows-1252.
    #[arg(long, value_name = "ENCODING")]
    pub encoding: Option<String>,
    /// A sink file that was there before the job: overwrite it (default), fail the
    /// job, or skip it and publish the rest. The job's own earlier attempts never count.
    #[arg(long, value_name = "overwrite|fail|skip")]
    pub if_exists: Option<String>,
    /// Column types of a CSV source going to Parquet or JSON Lines: infer them from the
    /// first 20,480 rows (default), keep every column text, or take them from a file
    /// (JSON {"id": "int64", ...} or id:int64,amount:decimal(12,2) lines), read here and
    /// sent with the job.
    #[arg(long, value_name = "infer|text|FILE")]
    pub schema: Option<String>,
    /// A CSV field value that means null, as an empty field does (NULL, \N, NA); repeat
    /// the flag or give a comma list.
    #[arg(long, value_name = "VALUE")]
    pub csv_null: Vec<String>,
    /// strftime format of a CSV source's timestamps (e.g. '%d/%m/%Y %H:%M'; %z for an
    /// offset), for inference and conversion; default ISO 8601.
    #[arg(long, value_name = "FORMAT")]
    pub timestamp_format: Option<String>,
    /// strftime format of a CSV source's dates (e.g. '%d/%m/%Y'); default YYYY-MM-DD.
    #[arg(long, value_name = "FORMAT")]
    pub date_format: Option<String>,
    /// Source columns to copy, in this order ('a,b,c'); default all.
    #[arg(long, value_name = "A,B,C")]
    pub columns: Option<String>,
    /// Write source column OLD as NEW (repeatable).
    #[arg(long, value_name = "OLD=NEW")]
    pub rename: Vec<String>,
    /// A CSV row whose value does not fit its column's type, or of the wrong width: fail
    /// the job (default) or skip it to the rejects file in --bad-rows.
    #[arg(long, value_name = "fail|skip")]
    pub on_bad_row: Option<String>,
    /// Folder on a file share for the rejects file of --on-bad-row skip
    /// (LINKED_SERVICE:/folder/; the file is JOB.rejects.jsonl).
    #[arg(long, value_name = "LINKED_SERVICE:/FOLDER/")]
    pub bad_rows: Option<String>,
}

/// What `job submit` takes to define a job; `schedule create` takes the same for each run.
#[derive(clap::Args)]
pub struct SubmitArgs {
    /// Where to read: LINKED_SERVICE:PATH, :SCHEMA.TABLE or :"QUERY".
    #[arg(long)]
    pub source: String,
    /// Where to write: LINKED_SERVICE:PATH or :SCHEMA.TABLE.
    #[arg(long)]
    pub sink: String,
    #[command(flatten)]
    pub formats: FormatArgs,
    /// Attempts in all, the first included (default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Seconds between attempts after a retryable failure (default 5).
    #[arg(long)]
    pub retry_interval: Option<f64>,
    /// Seconds an attempt may read nothing before it is stopped and retried: a share or
    /// database that hangs without closing the connection (default 600).
    #[arg(long, value_name = "SECONDS")]
    pub stall_timeout: Option<f64>,
    /// A name to recognise the job by.
    #[arg(long = "name", value_name = "NAME", default_value = "")]
    pub job_name: String,
    /// A PostgreSQL sink table that does not exist is made from the source's columns and
    /// types, in the transaction that loads it (no table is left behind by a failed job).
    #[arg(long)]
    pub create_table: bool,
}

impl SubmitArgs {
    /// The submission as it goes on the wire; a `--schema FILE` is read here, so the nodes
    /// never need the file.
    pub fn into_request(self) -> Result<proto::JobSubmitRequest> {
        let SubmitArgs {
            source,
            sink,
            formats,
            max_attempts,
            retry_interval,
            stall_timeout,
            job_name: name,
            create_table,
        } = self;
        let FormatArgs {
            source_format,
            sink_format,
            binary,
            csv_no_header,
            csv_delimiter,
            allow_empty,
            encoding,
            if_exists,
            schema,
            csv_null,
            timestamp_format,
            date_format,
            columns,
            rename,
            on_bad_row,
            bad_rows,
        } = formats;
        if let Some(s) = stall_timeout
            && !(1.0..=86_400.0).contains(&s)
        {
            bail!("--stall-timeout must be between 1 and 86400 seconds");
        }
        if let Some(s) = retry_interval
            && !(0.0..=86_400.0).contains(&s)
        {
            bail!("--retry-interval must be between 0 and 86400 seconds");
        }
        // Anything but a mode names a file on this machine: its text goes with the job,
        // so the workers never need the file.
        let (schema, schema_columns) = match schema {
            Some(mode) if ["infer", "text"].contains(&mode.to_ascii_lowercase().as_str()) => (mode, String::new()),
            Some(path) => match std::fs::read_to_string(&path) {
                // Empty text on the wire means no file: say so here instead.
                Ok(text) if text.trim().is_empty() => bail!("--schema {path}: the schema file is empty"),
                Ok(text) => (String::new(), text),
                Err(e) => {
                    bail!("--schema '{path}' is not infer or text, and not a schema file that can be read: {e}")
                }
            },
            None => (String::new(), String::new()),
        };
        Ok(proto::JobSubmitRequest {
            name,
            source,
            sink,
            source_format: source_format.unwrap_or_default(),
            sink_format: sink_format.unwrap_or_default(),
            binary,
            csv_no_header,
            csv_delimiter: csv_delimiter.unwrap_or_default(),
            max_attempts: max_attempts.unwrap_or(0),
            retry_interval_ms: retry_interval.map(|s| (s * 1000.0) as u64).unwrap_or(0),
            stall_timeout_ms: stall_timeout.map(|s| (s * 1000.0) as u64).unwrap_or(0),
            allow_empty,
            encoding: encoding.unwrap_or_default(),
            if_exists: if_exists.unwrap_or_default(),
            schema,
            csv_null,
            schema_columns,
            timestamp_format: timestamp_format.unwrap_or_default(),
            date_format: date_format.unwrap_or_default(),
            columns: columns.unwrap_or_default(),
            rename,
            on_bad_row: on_bad_row.unwrap_or_default(),
            bad_rows: bad_rows.unwrap_or_default(),
            create_table,
        })
    }
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Queue a copy job; prints its id once it is committed (it survives any single node failure).
    #[command(
        after_help = "Datasets are LINKED_SERVICE:PATH (filesystem; PATH under the service's root, may hold a glob \
or name a folder), LINKED_SERVICE:SCHEMA.TABLE or LINKED_SERVICE:\"QUERY\" (postgres).\n\nExamples:\n  \
shir job submit --source share:/exports/*.csv --sink warehouse:public.orders\n  \
shir job submit --source warehouse:\"select * from orders\" --sink share:/lake/orders.parquet\n  \
shir job submit --source share:/in/ --sink share:/archive/in/ --binary"
    )]
    Submit {
        #[command(flatten)]
        job: Box<SubmitArgs>,
        #[command(flatten)]
        target: Target,
        /// Print {"id": ...}.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, oldest first.
    List {
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// Most jobs to print (at most 1000, the default); the rest come with --after.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Only jobs submitted after this job id (the id a previous page ended with).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Print a JSON array of job objects.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: state, node, attempt, rows/bytes/files, timings, consistency check, error.
    Show {
        /// The job's id, or a unique prefix of it (at least 4 characters).
        id: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it ends. Exit status: 0 succeeded, 1 failed, 4 cancelled, 5 timed
    /// out (--timeout), 6 no such job, 69 the node could not be reached.
    Wait {
        /// The job's id, or a unique prefix of it (at least 4 characters).
        id: String,
        /// Give up after this many seconds (exit status 5); default: wait as long as it takes.
        #[arg(long)]
        timeout: Option<f64>,
        #[command(flatten)]
        target: Target,
        /// Print the final job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job (too late once it is publishing its output).
    Cancel {
        /// The job's id, or a unique prefix of it (at least 4 characters).
        id: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StateFilter {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<StateFilter> for proto::JobState {
    fn from(s: StateFilter) -> Self {
        match s {
            StateFilter::Queued => proto::JobState::Queued,
            StateFilter::Running => proto::JobState::Running,
            StateFilter::Succeeded => proto::JobState::Succeeded,
            StateFilter::Failed => proto::JobState::Failed,
            StateFilter::Cancelled => proto::JobState::Cancelled,
        }
    }
}

/// A job in this state has ended and will not change again.
pub fn is_final(state: proto::JobState) -> bool {
    matches!(
        state,
        proto::JobState::Succeeded | proto::JobState::Failed | proto::JobState::Cancelled
    )
}

/// `job wait` ended without success; carries the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct WaitOutcome {
    pub message: String,
    pub exit: u8,
}

/// The check as `--json` has always shown it (the state's serde form): null until it ran.
fn check_json(check: Option<&proto::ConsistencyCheck>) -> Value {
    check.map_or(Value::Null, |c| {
        json!({
            "rows_read": c.rows_read,
            "rows_written": c.rows_written,
            "source_checksum": c.source_checksum,
            "sink_checksum": c.sink_checksum,
            "verified": c.verified,
            "rows_skipped": c.rows_skipped,
        })
    })
}

pub fn job_json(j: &proto::JobInfo) -> Value {
    let check = check_json(j.check.as_ref());
    let opt_time = |ms: i64| (ms > 0).then(|| rfc3339_ms(ms)).flatten();
    json!({
        "id": j.id,
        "name": j.name,
        "state": j.state().label(),
        "node": (!j.node.is_empty()).then_some(&j.node),
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "rows": j.rows,
        "bytes": j.bytes,
        "files": j.files,
        "files_skipped": j.files_skipped,
        "if_exists": j.if_exists,
        "error": (!j.error.is_empty()).then_some(&j.error),
        "source": j.source,
        "sink": j.sink,
        "submitted_at": opt_time(j.submitted_at_ms),
        "started_at": opt_time(j.started_at_ms),
        "finished_at": opt_time(j.finished_at_ms),
        "check": check,
        "cancel_requested": j.cancel_requested,
        "stall_timeout_ms": j.stall_timeout_ms,
        "create_table": j.create_table,
        "schema": j.columns.iter().map(|c| json!({"name": c.name, "type": c.data_type})).collect::<Vec<_>>(),
        "schema_columns": j.columns_total,
        "rejects": (!j.rejects.is_empty()).then_some(&j.rejects),
    })
}

fn job_text(j: &proto::JobInfo) -> String {
    let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let time = |ms: i64| {
        if ms > 0 {
            rfc3339_ms(ms).unwrap_or_default()
        } else {
            "-".into()
        }
    };
    let mut rows = vec![
        vec!["id".to_string(), j.id.clone()],
        vec!["name".into(), dash(&j.name)],
        vec!["state".into(), j.state().label().into()],
        vec!["node".into(), dash(&j.node)],
        vec!["attempt".into(), format!("{} of {}", j.attempt, j.max_attempts)],
        vec!["source".into(), j.source.clone()],
        vec![
            "sink".into(),
            if j.create_table {
                format!("{} (--create-table)", j.sink)
            } else {
                j.sink.clone()
            },
        ],
        vec!["rows".into(), j.rows.to_string()],
        vec!["bytes".into(), j.bytes.to_string()],
        vec!["files".into(), files_text(j)],
        vec!["submitted".into(), time(j.submitted_at_ms)],
        vec!["started".into(), time(j.started_at_ms)],
        vec!["finished".into(), time(j.finished_at_ms)],
    ];
    if let Some(check) = &j.check {
        rows.push(vec!["check".into(), check_text(check)]);
    }
    if !j.columns.is_empty() {
        rows.push(vec!["schema".into(), schema_text(&j.columns, j.columns_total)]);
    }
    if !j.rejects.is_empty() {
        rows.push(vec!["rejects".into(), j.rejects.clone()]);
    }
    if !j.error.is_empty() {
        rows.push(vec!["error".into(), j.error.clone()]);
    }
    table(&["FIELD", "VALUE"], &rows)
}

fn files_text(j: &proto::JobInfo) -> String {
    match (j.files_skipped, j.if_exists.as_str()) {
        (0, "" | "overwrite") => j.files.to_string(),
        (0, rule) => format!("{} (--if-exists {rule})", j.files),
        (skipped, rule) => format!("{} ({skipped} skipped: they existed, --if-exists {rule})", j.files),
    }
}

fn check_text(c: &proto::ConsistencyCheck) -> String {
    let verified = if c.verified { "verified" } else { "NOT verified" };
    match (c.source_checksum.as_deref(), c.sink_checksum.as_deref()) {
        (Some(a), Some(b)) => {
            // `ALGORITHM:DIGITS`; the first 16 digits are enough to tell two apart by eye.
            let (algorithm, a) = a.split_once(':').unwrap_or(("checksum", a));
            let b = b.split_once(':').map_or(b, |(_, digits)| digits);
            format!(
                "{verified}: {algorithm} {} read, {} written",
                &a[..a.len().min(16)],
                &b[..b.len().min(16)]
            )
        }
        _ if c.rows_skipped > 0 => format!(
            "{verified}: {} rows read, {} written, {} skipped (--on-bad-row skip)",
            c.rows_read, c.rows_written, c.rows_skipped
        ),
        _ => format!("{verified}: {} rows read, {} written", c.rows_read, c.rows_written),
    }
}

/// The columns written, `name Type` each, on one line: what `job show` prints under schema;
/// a table wider than the job keeps says how many more it had.
fn schema_text(columns: &[proto::WrittenColumn], total: u64) -> String {
    let shown: Vec<String> = columns.iter().map(|c| format!("{} {}", c.name, c.data_type)).collect();
    let more = total.saturating_sub(columns.len() as u64);
    match more {
        0 => shown.join(", "),
        n => format!("{}, and {n} more columns", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_line_says_how_many_columns_it_leaves_out() {
        let column = |name: &str, t: &str| proto::WrittenColumn {
            name: name.into(),
            data_type: t.into(),
        };
        let columns = [column("id", "Int64"), column("amount", "Decimal128(12, 2)")];
        assert_eq!(schema_text(&columns, 2), "id Int64, amount Decimal128(12, 2)");
        assert_eq!(
            schema_text(&columns, 300),
            "id Int64, amount Decimal128(12, 2), and 298 more columns"
        );
    }
}

fn progress_line(j: &proto::JobInfo) -> String {
    format!(
        "{} {:<9} node {:<8} attempt {}  {} rows  {}  {} files",
        j.id,
        j.state().label(),
        if j.node.is_empty() { "-" } else { &j.node },
        j.attempt,
        j.rows,
        human_bytes(j.bytes),
        j.files
    )
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub async fn run(command: JobCommand) -> Result<()> {
    match command {
        JobCommand::Submit { job, target, json } => {
            let request = job.into_request()?;
            let reply = target.connect().await?.job_submit(request).await?.into_inner();
            if json {
                print_json(&json!({"id": reply.id}));
            } else {
                println!("{}", reply.id);
            }
        }
        JobCommand::List {
            state,
            limit,
            after,
            target,
            json,
        } => {
            let state = state.map_or(proto::JobState::Unspecified, proto::JobState::from);
            let reply = target
                .connect()
                .await?
                .job_list(proto::JobListRequest {
                    state: state.into(),
                    limit: limit.unwrap_or(0),
                    after: after.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                print_json(&Value::Array(reply.jobs.iter().map(job_json).collect()));
            } else if reply.jobs.is_empty() {
                println!("no jobs");
            } else {
                let rows: Vec<Vec<String>> = reply
                    .jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.clone(),
                            j.state().label().into(),
                            if j.node.is_empty() { "-".into() } else { j.node.clone() },
                            j.attempt.to_string(),
                            j.rows.to_string(),
                            human_bytes(j.bytes),
                            j.files.to_string(),
                            j.source.clone(),
                            j.sink.clone(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(
                        &[
                            "ID", "STATE", "NODE", "ATTEMPT", "ROWS", "BYTES", "FILES", "SOURCE", "SINK"
                        ],
                        &rows
                    )
                );
                println!("{} queued", reply.queued);
            }
            if !reply.next_after.is_empty() {
                // On stderr, so `--json` output stays one array a script can parse.
                eprintln!("more jobs: shir job list --after {}", reply.next_after);
            }
        }
        JobCommand::Show { id, target, json } => {
            let j = target
                .connect()
                .await?
                .job_show(proto::JobShowRequest { id })
                .await?
                .into_inner();
            if json {
                print_json(&job_json(&j));
            } else {
                println!("{}", job_text(&j));
            }
        }
        JobCommand::Cancel { id, target, json } => {
            let j = target
                .connect()
                .await?
                .job_cancel(proto::JobCancelRequest { id })
                .await?
                .into_inner();
            if json {
                print_json(&job_json(&j));
            } else if j.state() == proto::JobState::Cancelled {
                println!("job {} cancelled", j.id);
            } else {
                println!("job {} is stopping (it was {})", j.id, j.state().label());
            }
        }
        JobCommand::Wait {
            id,
            timeout,
            target,
            json,
        } => {
            let mut client = target.connect().await?;
            let started = std::time::Instant::now();
            let live = std::io::stderr().is_terminal();
            let mut last_line = String::new();
            let j = loop {
                let j = client
                    .job_show(proto::JobShowRequest { id: id.clone() })
                    .await?
                    .into_inner();
                if is_final(j.state()) {
                    break j;
                }
                let line = progress_line(&j);
                if line != last_line {
                    if live {
                        eprint!("\r\x1b[2K{line}");
                    } else {
                        eprintln!("{line}");
                    }
                    last_line = line;
                }
                if let Some(limit) = timeout
                    && started.elapsed().as_secs_f64() > limit
                {
                    if live {
                        eprintln!();
                    }
                    return Err(WaitOutcome {
                        message: format!("job {} is still {} after {limit} s", j.id, j.state().label()),
                        exit: super::exit::WAIT_TIMEOUT,
                    }
                    .into());
                }
                tokio::time::sleep(JOB_POLL).await;
            };
            if live && !last_line.is_empty() {
                eprintln!();
            }
            if json {
                print_json(&job_json(&j));
            } else {
                println!("{}", progress_line(&j));
            }
            match j.state() {
                proto::JobState::Succeeded => {}
                proto::JobState::Cancelled => {
                    return Err(WaitOutcome {
                        message: format!("job {} was cancelled", j.id),
                        exit: super::exit::CANCELLED,
                    }
                    .into());
                }
                _ => bail!("job {} failed after {} attempt(s): {}", j.id, j.attempt, j.error),
            }
        }
    }
    Ok(())
}

pub async fn set_limit(name: String, limit: u32, target: Target, json: bool) -> Result<()> {
    let reply = target
        .connect()
        .await?
        .node_set_limit(proto::NodeSetLimitRequest { name, limit })
        .await?
        .into_inner();
    if json {
        print_json(&json!({"node": reply.name, "limit": (reply.limit > 0).then_some(reply.limit)}));
    } else if reply.limit == 0 {
        println!("node '{}' runs as many jobs at once as its default allows", reply.name);
    } else {
        println!("node '{}' now runs at most {} jobs at once", reply.name, reply.limit);
    }
    Ok(())
}

/// `shir settings job-history`: how many finished jobs the IR keeps, and for how long.
#[derive(Subcommand)]
pub enum JobHistoryCommand {
    /// Set the retention; finished jobs beyond it are dropped on every node at once.
    Set {
        /// Most finished jobs kept (the earliest finished go first).
        #[arg(long)]
        jobs: u64,
        /// Finished jobs older than this many days go; 0 keeps them whatever their age.
        #[arg(long)]
        days: u32,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show the retention and how many finished jobs are kept now.
    Show {
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run_job_history(command: JobHistoryCommand) -> Result<()> {
    let (request, target, json) = match command {
        JobHistoryCommand::Set {
            jobs,
            days,
            target,
            json,
        } => (
            proto::JobHistoryRequest {
                set: true,
                max_jobs: jobs,
                max_days: days,
            },
            target,
            json,
        ),
        JobHistoryCommand::Show { target, json } => (proto::JobHistoryRequest::default(), target, json),
    };
    let info = target.connect().await?.job_history(request).await?.into_inner();
    if json {
        print_json(&json!({"max_jobs": info.max_jobs, "max_days": info.max_days, "finished": info.finished}));
    } else {
        let age = match info.max_days {
            0 => "of any age".to_string(),
            d => format!("for {d} days"),
        };
        println!(
            "finished jobs kept: at most {} {age}; {} kept now",
            info.max_jobs, info.finished
        );
    }
    Ok(())
}
