//! `shir bench --history`: whether a write costs the same with a long job history as with
//! none. For each history size it brings the IR's kept finished jobs up to that many, then
//! measures committed writes per second (the `Put` load of the main bench) and the median
//! `job submit` latency (submit to committed, one at a time).
//!
//! History is seeded with `JobHistorySeed`, a bench-only call (the nodes are started with
//! `SHIR_BENCH_SEED=1`) that commits finished jobs through the log in entries of up to
//! 1,000: they are applied, stored one key each and snapshotted exactly like jobs that ran;
//! only the running is skipped, which would take hours for 100,000.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{CONNECTIONS, load, shir_put};
use crate::cli::local_ir::LocalIr;
use crate::proto;
use crate::transport::client::tls_channel_checked;

/// Submissions timed per history size.
const SUBMITS: usize = 100;

pub fn prepare(ir: &mut LocalIr) {
    ir.bench_seed = true;
}

pub async fn run(
    ir: &mut LocalIr,
    sizes: &[u64],
    clients: &[usize],
    duration: Duration,
    client_tls: std::sync::Arc<rustls::ClientConfig>,
    work: &std::path::Path,
    say: &dyn Fn(&str),
) -> Result<Value> {
    let share = work.join("share");
    std::fs::create_dir_all(share.join("in"))?;
    std::fs::create_dir_all(share.join("out"))?;
    std::fs::write(share.join("in/tiny.csv"), "a,b\n1,2\n")?;
    ir.create_filesystem_service("share", &share).await?;
    let leader = ir.dispatcher(0).await?;
    let mut admin = ir.admin(leader).await?;
    let most = sizes.iter().copied().max().unwrap_or(0);
    // Keep all of them (and the jobs this bench submits), at any age.
    admin
        .job_history(proto::JobHistoryRequest {
            set: true,
            max_jobs: most + (SUBMITS * (sizes.len() + 1)) as u64,
            max_days: 0,
        })
        .await?;

    say(&format!(
        "\nwrites with job history kept, {:.0} s per phase; job submit: median of {SUBMITS}",
        duration.as_secs_f64()
    ));
    say(&format!(
        "{:<16}{:>10}{:>12}{:>12}{:>14}",
        "finished jobs", "clients", "writes/s", "p50 ms", "submit p50 ms"
    ));
    let mut rows = Vec::new();
    let mut seeded = 0u64;
    for &size in sizes {
        // Seeding is heavy on the dispatcher; if it moved, follow it.
        let leader = ir.dispatcher(0).await?;
        let mut admin = ir.admin(leader).await?;
        let kept = admin
            .job_history(proto::JobHistoryRequest::default())
            .await?
            .into_inner()
            .finished;
        if size > kept {
            let started = Instant::now();
            let info = admin
                .job_history_seed(proto::JobHistorySeedRequest {
                    count: u32::try_from(size - kept).context("history size")?,
                })
                .await?
                .into_inner();
            seeded += size - kept;
            tracing::debug!(finished = info.finished, took = ?started.elapsed(), "history seeded");
        }
        let submit = submit_latency(ir, leader).await?;
        let mut per_clients = Vec::new();
        for &c in clients {
            let address = ir.nodes[leader].address.clone();
            let mut channels: Vec<Channel> = Vec::new();
            for _ in 0..c.min(CONNECTIONS) {
                channels.push(tls_channel_checked(&address, client_tls.clone()).await?);
            }
            let r = load::run(c, duration, shir_put(channels)).await;
            say(&format!(
                "{:<16}{:>10}{:>12.0}{:>12.2}{:>14.2}",
                size,
                c,
                r.per_second(),
                r.p50_ms(),
                submit
            ));
            per_clients.push(json!({"clients": c, "writes": r.json()}));
        }
        rows.push(json!({"finished_jobs": size, "submit_p50_ms": submit, "writes": per_clients}));
    }
    Ok(json!({"history": rows, "seeded": seeded}))
}

/// Median time from `job submit` to its reply (the job committed), submissions one at a time.
async fn submit_latency(ir: &LocalIr, leader: usize) -> Result<f64> {
    let mut admin = ir.admin(leader).await?;
    let mut samples = Vec::with_capacity(SUBMITS);
    for i in 0..SUBMITS {
        let request = proto::JobSubmitRequest {
            source: "share:/in/tiny.csv".into(),
            sink: format!("share:/out/{}-{i}.csv", rand::random::<u32>()),
            binary: true,
            ..Default::default()
        };
        let t = Instant::now();
        admin.job_submit(request).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2] * 100.0).round() / 100.0)
}
