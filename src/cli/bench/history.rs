//! `shir bench --history`: whether a write costs the same with a long job history as with
//! none. It starts one IR per history size, side by side (the IR of the k-th size on port
//! `--base-port + 10·k`), brings each one's kept finished jobs up to its size, then measures
//! committed writes per second (the `Put` load of the main bench) and `job submit` latency
//! (submit to committed, one at a time) on each.
//!
//! The measurements are cut into rounds taken in turn on every IR, so that whatever else
//! loads this shared machine meanwhile falls on all sizes alike: measuring one size after
//! the other put minutes between them, and the machine's drift over those minutes was as
//! large as the effect looked for. The figure to read is each size's ratio to the first.
//!
//! History is seeded with `JobHistorySeed`, a bench-only call (the nodes are started with
//! `SHIR_BENCH_SEED=1`) that commits finished jobs through the log in entries of up to
//! 1,000: they are applied, stored one key each and snapshotted exactly like jobs that ran;
//! only the running is skipped, which would take hours for 100,000.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use super::load::{self, LoadResult};
use super::{BenchArgs, channels, form, shir_put};
use crate::cli::local_ir::{LocalIr, check_port_free};
use crate::proto;

/// `job submit` samples per history size, spread evenly over the rounds.
const SUBMITS: usize = 100;
/// Rounds each measurement is cut into.
const ROUNDS: usize = 5;
/// Port distance between the IRs of two sizes.
const PORT_STEP: u16 = 10;

/// One IR with its history size and what was measured on it.
struct Subject {
    size: u64,
    ir: LocalIr,
    tls: Arc<rustls::ClientConfig>,
    submits: Vec<f64>,
    /// Per client count, one result per round.
    writes: Vec<Vec<LoadResult>>,
    /// Log entries the measurement added, and how many snapshots the leader took meanwhile
    /// (a snapshot costs in proportion to the state: this is where a big one costs more).
    entries: u64,
    snapshots: u64,
    /// CPU time of the IR's processes (user and system) during its write loads: less
    /// disturbed by the machine's other work than throughput is.
    write_cpu: Duration,
}

pub async fn run(exe: &Path, work: &Path, args: &BenchArgs, say: &dyn Fn(&str)) -> Result<Value> {
    let nodes = usize::from(args.nodes);
    let mut subjects = Vec::new();
    let outcome = measure(exe, work, args, nodes, &mut subjects, say).await;
    for s in &mut subjects {
        s.ir.stop_all().await;
    }
    outcome?;
    report(&subjects, &args.clients, say)
}

async fn measure(
    exe: &Path,
    work: &Path,
    args: &BenchArgs,
    nodes: usize,
    subjects: &mut Vec<Subject>,
    say: &dyn Fn(&str),
) -> Result<()> {
    let share = work.join("share");
    std::fs::create_dir_all(share.join("in"))?;
    std::fs::write(share.join("in/tiny.csv"), "a,b\n1,2\n")?;
    let most = args.history.iter().copied().max().unwrap_or(0);
    for (k, &size) in args.history.iter().enumerate() {
        let port = u16::try_from(k)
            .ok()
            .and_then(|k| args.base_port.checked_add(PORT_STEP * k))
            .ok_or_else(|| anyhow!("too many history sizes for --base-port {}", args.base_port))?;
        check_port_free(port, nodes).map_err(|e| anyhow!("{e}; choose another with --base-port"))?;
        let mut ir = LocalIr::new(exe, work.join(format!("shir-{size}")), port, nodes);
        ir.bench_seed = true;
        let tls = form(&mut ir).await.with_context(|| format!("the IR for {size} jobs"))?;
        // Each IR writes its outputs to a folder of its own.
        std::fs::create_dir_all(share.join(format!("out-{k}")))?;
        ir.create_filesystem_service("share", &share).await?;
        let leader = ir.dispatcher(0).await?;
        let mut admin = ir.admin(leader).await?;
        // Keep all of them (and the jobs this bench submits), at any age.
        admin
            .job_history(proto::JobHistoryRequest {
                set: true,
                max_jobs: most + SUBMITS as u64,
                max_days: 0,
            })
            .await?;
        seed(&ir, size).await?;
        say(&format!("IR with {size} finished jobs on 127.0.0.1-{nodes}:{port}"));
        subjects.push(Subject {
            size,
            ir,
            tls,
            submits: Vec::new(),
            writes: args.clients.iter().map(|_| Vec::new()).collect(),
            entries: 0,
            snapshots: 0,
            write_cpu: Duration::ZERO,
        });
    }

    let round = Duration::from_secs_f64(args.seconds) / ROUNDS as u32;
    say(&format!(
        "measuring: {ROUNDS} rounds taken in turn on every IR; {:.1} s of writes per round and client count, {} job submits per round",
        round.as_secs_f64(),
        SUBMITS / ROUNDS
    ));
    for r in 0..ROUNDS {
        // Start each round with another IR, so none is always measured first.
        let n = subjects.len();
        for s in (0..n).map(|i| (i + r) % n) {
            let subject = &mut subjects[s];
            let leader = subject.ir.dispatcher(0).await?;
            let before = subject.ir.local_view(leader).await?;
            let submits = submit_latency(&subject.ir, leader, s, SUBMITS / ROUNDS).await?;
            subject.submits.extend(submits);
            for (c, &clients) in args.clients.iter().enumerate() {
                let channels = channels(&subject.ir, leader, clients, &subject.tls).await?;
                let cpu = cpu_time(&subject.ir);
                let result = load::run(clients, round, shir_put(channels)).await;
                subject.write_cpu += cpu_time(&subject.ir).saturating_sub(cpu);
                subject.writes[c].push(result);
            }
            let after = subject.ir.local_view(leader).await?;
            subject.entries += after.last_applied.saturating_sub(before.last_applied);
            subject.snapshots += u64::from(after.snapshot_index != before.snapshot_index);
        }
    }
    Ok(())
}

/// Brings the IR's kept finished jobs up to `size`.
async fn seed(ir: &LocalIr, size: u64) -> Result<()> {
    let leader = ir.dispatcher(0).await?;
    let mut admin = ir.admin(leader).await?;
    let started = Instant::now();
    let info = admin
        .job_history_seed(proto::JobHistorySeedRequest {
            count: u32::try_from(size).context("history size")?,
        })
        .await?
        .into_inner();
    tracing::debug!(finished = info.finished, took = ?started.elapsed(), "history seeded");
    Ok(())
}

/// Times `count` submissions, one at a time, from `job submit` to its reply (the job
/// committed), in milliseconds.
async fn submit_latency(ir: &LocalIr, leader: usize, k: usize, count: usize) -> Result<Vec<f64>> {
    let mut admin = ir.admin(leader).await?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let request = proto::JobSubmitRequest {
            source: "share:/in/tiny.csv".into(),
            sink: format!("share:/out-{k}/{}-{i}.csv", rand::random::<u32>()),
            binary: true,
            ..Default::default()
        };
        let t = Instant::now();
        admin.job_submit(request).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

/// User and system CPU time of the IR's node processes so far.
fn cpu_time(ir: &LocalIr) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let used: u64 = ir
        .nodes
        .iter()
        .filter_map(|n| n.pid())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces;
            // utime and stime are the 14th and 15th fields of the line.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    Duration::from_micros(used * 1_000_000 / ticks)
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn report(subjects: &[Subject], clients: &[usize], say: &dyn Fn(&str)) -> Result<Value> {
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let first = subjects.first().context("no history size")?;
    let first_submit = median(&first.submits);
    let first_writes: Vec<f64> = first.writes.iter().map(|w| LoadResult::merge(w).per_second()).collect();
    say(&format!(
        "\n{:<16}{:>10}{:>12}{:>10}{:>10}{:>14}{:>10}",
        "finished jobs", "clients", "writes/s", "p50 ms", "× first", "submit p50 ms", "× first"
    ));
    let mut rows = Vec::new();
    for s in subjects {
        let submit = median(&s.submits);
        let submit_ratio = submit / first_submit.max(f64::MIN_POSITIVE);
        let mut per_clients = Vec::new();
        for (c, &n) in clients.iter().enumerate() {
            let w = LoadResult::merge(&s.writes[c]);
            let ratio = w.per_second() / first_writes[c].max(f64::MIN_POSITIVE);
            say(&format!(
                "{:<16}{:>10}{:>12.0}{:>10.2}{:>10.2}{:>14.2}{:>10.2}",
                s.size,
                n,
                w.per_second(),
                w.p50_ms(),
                ratio,
                submit,
                submit_ratio
            ));
            per_clients.push(json!({"clients": n, "writes": w.json(), "ratio_to_first": r2(ratio)}));
        }
        rows.push(json!({
            "finished_jobs": s.size,
            "submit_p50_ms": r2(submit),
            "submit_ratio_to_first": r2(submit_ratio),
            "writes": per_clients,
            "log_entries": s.entries,
            "snapshots": s.snapshots,
        }));
    }
    let cpu_per_write = |s: &Subject| {
        let writes: u64 = s.writes.iter().flatten().map(|w| w.ok).sum();
        s.write_cpu.as_secs_f64() * 1e6 / writes.max(1) as f64
    };
    let first_cpu = cpu_per_write(first);
    for (s, row) in subjects.iter().zip(&mut rows) {
        let cpu = cpu_per_write(s);
        say(&format!(
            "{} finished jobs: {:.0} µs of CPU per write ({:.2}× first; all nodes), {} log entries during the measurement, snapshots taken in {} of {ROUNDS} rounds",
            s.size,
            cpu,
            cpu / first_cpu.max(f64::MIN_POSITIVE),
            s.entries,
            s.snapshots
        ));
        row["cpu_us_per_write"] = json!(r2(cpu));
    }
    Ok(json!({"history": rows, "rounds": ROUNDS}))
}
