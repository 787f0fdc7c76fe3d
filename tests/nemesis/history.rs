//! What happened in a run: the workload's operations with their times and results, the
//! faults injected, and the events the nodes logged (read back from their JSON logs).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Result {
    /// Acknowledged: it happened.
    Ok,
    /// Refused before it could take effect (no dispatcher, connection refused, bad input).
    Failed(String),
    /// Timed out or broke off: it may or may not have happened.
    Unknown(String),
}

impl Result {
    pub fn label(&self) -> &'static str {
        match self {
            Result::Ok => "acked",
            Result::Failed(_) => "failed",
            Result::Unknown(_) => "unknown",
        }
    }
}

/// What an operation was about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// A copy job named `name` (unique per op) from `source` to `sink`, both paths under
    /// the share; `expected` lists each output file (relative to the share) with its SHA-256.
    Submit {
        name: String,
        sink: String,
        expected: Vec<(String, String)>,
        id: Option<String>,
    },
    /// Create or update of an http linked service: `user` names the op, `password` is its
    /// secret; `version` as acknowledged.
    LinkedService {
        service: String,
        user: String,
        password: String,
        version: Option<u64>,
    },
    /// `linked-service show` on node `node`: the version it reported and whether it said it
    /// may be behind.
    ReadService {
        service: String,
        node: String,
        version: Option<u64>,
        stale: bool,
    },
    SetLimit {
        node: String,
        limit: u32,
    },
    /// `key`: the digest of the new key's secret (see `workload::key_secret`).
    KeyRegenerate {
        slot: String,
        key: Option<String>,
    },
    NodeRemove {
        node: String,
    },
    NodeRegister {
        node: String,
    },
}

impl What {
    pub fn kind(&self) -> &'static str {
        match self {
            What::Submit { .. } => "job submit",
            What::LinkedService { .. } => "linked-service write",
            What::ReadService { .. } => "linked-service read",
            What::SetLimit { .. } => "node set-limit",
            What::KeyRegenerate { .. } => "key regenerate",
            What::NodeRemove { .. } => "node remove",
            What::NodeRegister { .. } => "node register",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Op {
    pub id: u64,
    /// The node it was sent to.
    pub via: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub what: What,
    pub result: Result,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: &'static str,
    pub target: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// One event a node logged that the checker reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The process started (`node serving`): nothing of an earlier life runs any more.
    Started,
    /// The worker took up an attempt.
    AttemptBegan { job: String, attempt: u32 },
    /// The worker let go of an attempt (failed, superseded, refused, not confirmed).
    AttemptEnded { job: String, attempt: u32 },
    /// The worker published an attempt's output ("attempt succeeded"); the attempt ends.
    Published { job: String, attempt: u32 },
    /// This node became dispatcher in `term`.
    BecameDispatcher { term: u64 },
}

#[derive(Clone, Debug)]
pub struct LogEvent {
    pub node: String,
    pub at_ms: i64,
    pub event: Event,
}

/// Everything the checker judges.
#[derive(Default)]
pub struct History {
    pub ops: Mutex<Vec<Op>>,
    pub faults: Mutex<Vec<Fault>>,
    /// Broken promises the harness saw as they happened (e.g. a removed node that ran on).
    pub seen_live: Mutex<Vec<String>>,
    pub seed: u64,
    next: std::sync::atomic::AtomicU64,
}

impl History {
    pub fn new(seed: u64) -> History {
        History {
            seed,
            ..Default::default()
        }
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    pub fn anomaly(&self, what: String) {
        eprintln!("nemesis: ANOMALY {what}");
        self.seen_live.lock().unwrap().push(what);
    }

    pub fn fault(&self, f: Fault) {
        self.faults.lock().unwrap().push(f);
    }

    /// Every operation and fault in time order, one a line (written next to the logs).
    pub fn dump(&self) -> String {
        let mut lines: Vec<(i64, String)> = self
            .ops()
            .iter()
            .map(|o| {
                let line = format!(
                    "{} +{}ms op{} {} via {}: {} {:?} {:?}",
                    o.start_ms,
                    o.end_ms - o.start_ms,
                    o.id,
                    o.what.kind(),
                    o.via,
                    o.result.label(),
                    o.what,
                    o.result
                );
                (o.start_ms, line)
            })
            .collect();
        lines.extend(self.faults().iter().map(|f| {
            let line = format!(
                "{} +{}ms FAULT {} on {}",
                f.start_ms,
                f.end_ms - f.start_ms,
                f.kind,
                f.target
            );
            (f.start_ms, line)
        }));
        lines.sort();
        lines.into_iter().map(|(_, l)| l + "\n").collect()
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.faults.lock().unwrap().clone()
    }
}

/// Worker messages that end an attempt's stay on its node (see src/worker/mod.rs).
const ENDINGS: &[&str] = &[
    "attempt failed",
    "attempt cancelled",
    "attempt superseded",
    "not allowed to publish",
    "no dispatcher allowed publishing",
    "could not report the outcome",
    "attempt not confirmed current",
    "attempt let go",
];

/// The events of one node's JSON log (`shir run --log-format json`).
pub fn parse_log(node: &str, text: &str) -> Vec<LogEvent> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| {
            let at_ms = parse_time(v["timestamp"].as_str()?)?;
            let fields = &v["fields"];
            let message = fields["message"].as_str()?;
            let job = || fields["job"].as_str().map(str::to_string);
            let attempt = || fields["attempt"].as_u64().map(|a| a as u32);
            let event = if message == "node serving" {
                Event::Started
            } else if message == "running job" {
                Event::AttemptBegan {
                    job: job()?,
                    attempt: attempt()?,
                }
            } else if message == "attempt succeeded" {
                Event::Published {
                    job: job()?,
                    attempt: attempt()?,
                }
            } else if message == "became dispatcher" {
                Event::BecameDispatcher {
                    term: fields["term"].as_u64()?,
                }
            } else if ENDINGS.iter().any(|e| message.starts_with(e)) {
                Event::AttemptEnded {
                    job: job()?,
                    attempt: attempt().unwrap_or(0),
                }
            } else {
                return None;
            };
            Some(LogEvent {
                node: node.to_string(),
                at_ms,
                event,
            })
        })
        .collect()
}

/// Every node log under `root` (`<name>.log`), parsed, in time order.
pub fn read_logs(root: &Path) -> Vec<LogEvent> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log")
            && let (Some(name), Ok(text)) = (path.file_stem(), std::fs::read_to_string(&path))
        {
            all.extend(parse_log(&name.to_string_lossy(), &text));
        }
    }
    all.sort_by_key(|e| e.at_ms);
    all
}

fn parse_time(text: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Counts by key, for the summary.
pub fn tally<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for k in keys {
        *m.entry(k).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages the checker depends on, as `shir run --log-format json` writes them.
    #[test]
    fn node_log_events_are_read() {
        let lines = [
            r#"{"timestamp":"2026-12-01T02:29:00.240467Z","level":"INFO","fields":{"message":"node serving","node":"node2"},"target":"shir::node"}"#,
            r#"{"timestamp":"2026-12-01T02:29:00.250000Z","level":"INFO","fields":{"message":"became dispatcher","term":7},"target":"shir::dispatch"}"#,
            r#"{"timestamp":"2026-12-01T02:29:01.000000Z","level":"INFO","fields":{"message":"running job","job":"j1","attempt":2},"target":"shir::worker"}"#,
            r#"{"timestamp":"2026-12-01T02:29:01.500000Z","level":"DEBUG","fields":{"message":"attempt let go: no longer current here","job":"j1","attempt":2},"target":"shir::worker"}"#,
            r#"{"timestamp":"2026-12-01T02:29:02.000000Z","level":"INFO","fields":{"message":"attempt succeeded","job":"j2","attempt":1},"target":"shir::worker"}"#,
            r#"{"timestamp":"2026-12-01T02:29:02.000000Z","level":"INFO","fields":{"message":"attempt failed: disk full","job":"j3","attempt":1},"target":"shir::worker"}"#,
            "not json",
        ];
        let events: Vec<Event> = parse_log("node2", &lines.join("\n"))
            .into_iter()
            .map(|e| e.event)
            .collect();
        let job = |j: &str| j.to_string();
        assert_eq!(
            events,
            vec![
                Event::Started,
                Event::BecameDispatcher { term: 7 },
                Event::AttemptBegan {
                    job: job("j1"),
                    attempt: 2
                },
                Event::AttemptEnded {
                    job: job("j1"),
                    attempt: 2
                },
                Event::Published {
                    job: job("j2"),
                    attempt: 1
                },
                Event::AttemptEnded {
                    job: job("j3"),
                    attempt: 1
                },
            ]
        );
        assert_eq!(parse_log("n", lines[0])[0].at_ms, 1_796_092_140_240);
    }
}
