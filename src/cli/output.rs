//! How results look: aligned tables for people, JSON for scripts.

use serde_json::{Value, json};

use crate::proto;

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A list for people (a table of `header` and `row`s, or `empty` when there is nothing) or,
/// with `json`, for scripts (an array of `as_json` objects).
pub fn print_list<T>(
    items: &[T],
    json: bool,
    empty: &str,
    header: &[&str],
    as_json: impl Fn(&T) -> Value,
    row: impl Fn(&T) -> Vec<String>,
) {
    if json {
        super::print_json(&Value::Array(items.iter().map(as_json).collect()));
    } else if items.is_empty() {
        println!("{empty}");
    } else {
        println!("{}", table(header, &items.iter().map(row).collect::<Vec<_>>()));
    }
}

pub fn rfc3339_secs(unix: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

pub fn rfc3339_ms(unix_ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

fn ago(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let secs = (crate::unix_now_ms() - unix_ms).max(0) as f64 / 1000.0;
    if secs < 60.0 {
        format!("{secs:.1}s ago")
    } else {
        format!("{:.0}m ago", secs / 60.0)
    }
}

fn date(unix: i64) -> String {
    rfc3339_secs(unix)
        .map(|s| s[..10].to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn status_json(s: &proto::StatusReply) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "id": n.id,
                "address": n.address,
                "status": n.status().label(),
                "status_reason": (!n.status_reason.is_empty()).then_some(&n.status_reason),
                "role": n.role().label(),
                "raft_role": n.raft_role().label(),
                "version": n.version,
                "running_jobs": n.running_jobs,
                "concurrent_jobs_limit": n.concurrent_jobs_limit,
                "cpu_percent": (f64::from(n.cpu_percent) * 10.0).round() / 10.0,
                "available_memory_mb": n.available_memory_mb,
                "last_heartbeat": if n.last_heartbeat_ms == 0 { None } else { rfc3339_ms(n.last_heartbeat_ms) },
                "cert_expires": rfc3339_secs(n.cert_expires),
                "unreachable_peers": n.unreachable_peers,
                "clock_offset_ms": n.clock_offset_ms,
            })
        })
        .collect();
    json!({
        "ir_name": s.ir_name,
        "ir_id": s.ir_id,
        "dispatcher": if s.dispatcher.is_empty() { None } else { Some(&s.dispatcher) },
        "term": s.term,
        "answered_by": s.answered_by,
        "queued_jobs": s.queued_jobs,
        "nodes": nodes,
        "warnings": s.warnings,
    })
}

pub fn status_text(s: &proto::StatusReply) -> String {
    let dispatcher = if s.dispatcher.is_empty() {
        format!("none (no quorum; this is {}'s own view)", s.answered_by)
    } else {
        s.dispatcher.clone()
    };
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let mut why: Vec<String> = Vec::new();
            if !n.status_reason.is_empty() {
                why.push(n.status_reason.clone());
            }
            if !n.unreachable_peers.is_empty() {
                why.push(format!("cannot reach {}", n.unreachable_peers.join(", ")));
            }
            let status = if why.is_empty() {
                n.status().label().to_string()
            } else {
                format!("{} ({})", n.status().label(), why.join("; "))
            };
            // An Offline node's last load is stale: show it as unknown rather than as current.
            let heard = n.last_heartbeat_ms != 0 && n.status() != proto::NodeHealth::Offline;
            vec![
                n.name.clone(),
                n.address.clone(),
                status,
                if n.raft_role() == proto::RaftRole::Learner {
                    format!("{} (learner)", n.role().label())
                } else {
                    n.role().label().to_string()
                },
                if heard { n.version.clone() } else { "-".into() },
                if heard {
                    format!("{}/{}", n.running_jobs, n.concurrent_jobs_limit)
                } else {
                    "-".into()
                },
                if heard {
                    format!("{:.0}%", n.cpu_percent)
                } else {
                    "-".into()
                },
                if heard {
                    format!("{:.1} GiB", n.available_memory_mb as f64 / 1024.0)
                } else {
                    "-".into()
                },
                ago(n.last_heartbeat_ms),
                date(n.cert_expires),
            ]
        })
        .collect();
    let warnings: String = s.warnings.iter().map(|w| format!("\nWarning: {w}")).collect();
    format!(
        "Integration runtime  {} ({})\nDispatcher           {}\nQueued jobs          {}{warnings}\n\n{}",
        s.ir_name,
        s.ir_id,
        dispatcher,
        s.queued_jobs,
        table(
            &[
                "NAME",
                "ADDRESS",
                "STATUS",
                "ROLE",
                "VERSION",
                "JOBS",
                "CPU",
                "MEM FREE",
                "LAST HEARTBEAT",
                "CERT EXPIRES"
            ],
            &rows
        )
    )
}
