//! Operator calls on copy jobs, run on the dispatcher: submit (parse and check the
//! datasets, then commit the job), list and show (with the running attempts' progress,
//! which only the dispatcher has), cancel, and per-node limits.

use tonic::Status;

use super::Node;
use crate::connectors::ServiceType;
use crate::copy::postgres::names::{self, Named};
use crate::copy::{CsvOptions, Format, Location};
use crate::proto;
use crate::secrets::SecretBytes;
use crate::state::Command;
use crate::state::jobs::{DEFAULT_STALL_TIMEOUT_MS, DatasetRef, Job, JobSpec, JobState, RetryPolicy};

fn invalid(why: impl Into<String>) -> Status {
    Status::invalid_argument(why.into())
}

/// Where a read must not see a state older than the dispatcher's own commits.
async fn up_to_date(node: &Node) -> Result<(), Status> {
    if node.confirm_leadership().await {
        Ok(())
    } else {
        Err(super::no_dispatcher())
    }
}

/// `csv`, `jsonl`, `parquet` from a flag, or from the file name's extension.
fn file_format(flag: &str, path: &str, csv: &CsvOptions, role: &str) -> Result<Format, Status> {
    let name = if flag.is_empty() {
        let ext = path
            .rsplit('/')
            .next()
            .unwrap_or("")
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some(e) => e.to_string(),
            None => {
                return Err(invalid(format!(
                    "cannot tell the {role} format from '{path}': give --{role}-format csv, jsonl or parquet (or --binary)"
                )));
            }
        }
    } else {
        flag.to_ascii_lowercase()
    };
    match name.as_str() {
        "csv" | "txt" => Ok(Format::Csv(csv.clone())),
        // A .tsv is tab-separated unless a delimiter was given.
        "tsv" if csv.delimiter == b',' => Ok(Format::Csv(CsvOptions {
            delimiter: b'\t',
            ..csv.clone()
        })),
        "tsv" => Ok(Format::Csv(csv.clone())),
        "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
        "parquet" => Ok(Format::Parquet),
        other => Err(invalid(format!(
            "unknown {role} format '{other}': use csv, jsonl or parquet (or --binary for files as they are)"
        ))),
    }
}

/// Parses `LINKED_SERVICE:PATH`, `LINKED_SERVICE:SCHEMA.TABLE` or `LINKED_SERVICE:QUERY`
/// against the linked service's type.
fn dataset(
    node: &Node,
    text: &str,
    role: &str,
    req: &proto::JobSubmitRequest,
    csv: &CsvOptions,
) -> Result<DatasetRef, Status> {
    let (service, rest) = text.split_once(':').ok_or_else(|| {
        invalid(format!(
            "--{role} '{text}' is not LINKED_SERVICE:PATH, :TABLE or :QUERY"
        ))
    })?;
    let kind = node
        .read_state(|s| s.linked_services.get(service).map(|l| l.kind))
        .ok_or_else(|| invalid(format!("--{role}: no linked service named '{service}'")))?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(invalid(format!(
            "--{role} '{text}' names no path, table or query after the ':'"
        )));
    }
    let flag = if role == "source" {
        &req.source_format
    } else {
        &req.sink_format
    };
    match kind {
        ServiceType::Filesystem => {
            // Paths are under the service's root; a leading '/' means the root itself.
            let path = rest.trim_start_matches('/');
            let format = if req.binary {
                Format::Binary
            } else {
                file_format(flag, path, csv, role)?
            };
            Ok(DatasetRef {
                service: service.to_string(),
                location: Location::Path(path.to_string()),
                format,
            })
        }
        ServiceType::Postgres => {
            if !flag.is_empty() {
                return Err(invalid(format!(
                    "--{role}-format applies to files; '{service}' is a PostgreSQL linked service"
                )));
            }
            if req.binary {
                return Err(invalid(
                    "--binary copies files: both ends must be filesystem linked services",
                ));
            }
            let named = names::parse_table(rest).map_err(|why| invalid(format!("--{role}: {why}")))?;
            let location = match named {
                Named::Table { schema, table } => Location::Table { schema, table },
                Named::NotAName if role == "sink" => {
                    return Err(invalid(format!(
                        "--sink '{text}': a sink is a table, SCHEMA.TABLE or TABLE (quote names with capitals, spaces or dots: \"Sales\".\"Order Items\"); a query can only be a source"
                    )));
                }
                Named::NotAName => Location::Query(rest.to_string()),
            };
            Ok(DatasetRef {
                service: service.to_string(),
                location,
                format: Format::Csv(csv.clone()),
            })
        }
        ServiceType::Http => Err(invalid(format!(
            "--{role}: linked service '{service}' is of type http, which copy jobs cannot use yet"
        ))),
    }
}

pub async fn submit(node: &Node, req: proto::JobSubmitRequest) -> Result<proto::JobSubmitReply, Status> {
    up_to_date(node).await?;
    let delimiter = match req.csv_delimiter.as_bytes() {
        [] => b',',
        [one] if one.is_ascii() && *one != b'\n' && *one != b'\r' && *one != b'"' => *one,
        _ => {
            return Err(invalid(
                "--csv-delimiter takes one ASCII character (not a quote or a line break)",
            ));
        }
    };
    let csv = CsvOptions {
        header: !req.csv_no_header,
        delimiter,
        quote: b'"',
    };
    let source = dataset(node, &req.source, "source", &req, &csv)?;
    let sink = dataset(node, &req.sink, "sink", &req, &csv)?;
    let retry = match (req.max_attempts, req.retry_interval_ms) {
        (0, 0) => RetryPolicy::default(),
        (0, interval_ms) => RetryPolicy {
            interval_ms,
            ..RetryPolicy::default()
        },
        (n, interval_ms) if n <= 100 => RetryPolicy {
            max_attempts: n,
            interval_ms: if interval_ms == 0 && req.retry_interval_ms == 0 {
                RetryPolicy::default().interval_ms
            } else {
                interval_ms
            },
        },
        (n, _) => return Err(invalid(format!("--max-attempts {n} is more than 100"))),
    };
    let stall_timeout_ms = match req.stall_timeout_ms {
        0 => DEFAULT_STALL_TIMEOUT_MS,
        ms if (1_000..=86_400_000).contains(&ms) => ms,
        _ => return Err(invalid("--stall-timeout must be between 1 and 86400 seconds")),
    };
    let id = hex::encode(SecretBytes::random(6).expose());
    let now = crate::unix_now_ms();
    let spec = JobSpec {
        name: req.name,
        source,
        sink,
        retry,
        stall_timeout_ms,
    };
    let job = Job::queued(id.clone(), spec, now);
    node.propose(Command::SubmitJob { job }).await?;
    node.dispatch_wake.notify_one();
    tracing::info!(job = %id, "job submitted");
    Ok(proto::JobSubmitReply { id })
}

/// How a dataset reads back, for `job show`.
pub fn describe(d: &DatasetRef) -> String {
    match &d.location {
        Location::Path(p) => format!("{}:/{p}", d.service),
        Location::Table { schema, table } => format!(
            "{}:{}.{}",
            d.service,
            names::display_ident(schema),
            names::display_ident(table)
        ),
        Location::Query(q) => format!("{}:{q}", d.service),
    }
}

fn info(node: &Node, j: &Job) -> proto::JobInfo {
    let (mut rows, mut bytes, mut files) = (j.rows, j.bytes, j.files);
    if j.state == JobState::Running
        && let Some(p) = node.progress.get(&j.id, j.attempt)
    {
        (rows, bytes, files) = (p.rows, p.bytes, p.files);
    }
    proto::JobInfo {
        id: j.id.clone(),
        name: j.spec.name.clone(),
        state: j.state.as_str().to_string(),
        node: j.node.and_then(|id| node.node_name(id)).unwrap_or_default(),
        attempt: j.attempt,
        rows,
        bytes,
        files,
        error: j.error.clone().unwrap_or_default(),
        source: describe(&j.spec.source),
        sink: describe(&j.spec.sink),
        submitted_at_ms: j.submitted_at_ms,
        started_at_ms: j.started_at_ms.unwrap_or(0),
        finished_at_ms: j.finished_at_ms.unwrap_or(0),
        max_attempts: j.spec.retry.max_attempts,
        check_json: j
            .check
            .as_ref()
            .map(|c| serde_json::to_string(c).expect("a check serialises"))
            .unwrap_or_default(),
        cancel_requested: j.cancel_requested,
        stall_timeout_ms: j.spec.stall_timeout_ms,
    }
}

/// Most jobs in one `job list` reply: a page stays a small message however long the history.
const MAX_PAGE: usize = 1000;

pub async fn list(node: &Node, req: proto::JobListRequest) -> Result<proto::JobListReply, Status> {
    up_to_date(node).await?;
    let wanted = match req.state.to_ascii_lowercase().as_str() {
        "" => None,
        "queued" => Some(JobState::Queued),
        "running" => Some(JobState::Running),
        "succeeded" => Some(JobState::Succeeded),
        "failed" => Some(JobState::Failed),
        "cancelled" => Some(JobState::Cancelled),
        other => {
            return Err(invalid(format!(
                "unknown job state '{other}': use queued, running, succeeded, failed or cancelled"
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
        jobs: page.iter().map(|j| info(node, j)).collect(),
        queued,
        next_after: if more {
            page.last().map(|j| j.id.clone()).unwrap_or_default()
        } else {
            String::new()
        },
    })
}

fn lookup(node: &Node, id: &str) -> Result<Job, Status> {
    node.read_state(|s| s.jobs.get(id).cloned())
        .ok_or_else(|| Status::not_found(format!("no job {id}")))
}

pub async fn show(node: &Node, req: proto::JobShowRequest) -> Result<proto::JobInfo, Status> {
    up_to_date(node).await?;
    Ok(info(node, &lookup(node, &req.id)?))
}

pub async fn cancel(node: &Node, req: proto::JobCancelRequest) -> Result<proto::JobInfo, Status> {
    up_to_date(node).await?;
    lookup(node, &req.id)?;
    node.propose(Command::CancelJob {
        job_id: req.id.clone(),
        now_ms: crate::unix_now_ms(),
    })
    .await?;
    tracing::info!(job = %req.id, "job cancel requested");
    Ok(info(node, &lookup(node, &req.id)?))
}

/// Jobs a node may run at once, at most: more would only queue inside one machine.
const MAX_LIMIT: u32 = 256;

pub async fn set_limit(node: &Node, req: proto::NodeSetLimitRequest) -> Result<proto::NodeSetLimitReply, Status> {
    up_to_date(node).await?;
    let id = node
        .read_state(|s| s.node_by_name(&req.name).map(|n| n.id))
        .ok_or_else(|| Status::not_found(format!("no node named '{}' in this IR", req.name)))?;
    if req.limit > MAX_LIMIT {
        return Err(invalid(format!("a limit of {} is more than {MAX_LIMIT}", req.limit)));
    }
    let limit = (req.limit > 0).then_some(req.limit);
    node.propose(Command::SetNodeLimit { node: id, limit }).await?;
    node.dispatch_wake.notify_one();
    tracing::info!(node = %req.name, ?limit, "concurrent jobs limit set");
    Ok(proto::NodeSetLimitReply {
        name: req.name,
        limit: req.limit,
    })
}
