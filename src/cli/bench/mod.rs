//! `shir bench`: the figures the README quotes, measured on a four-node IR of real `shir`
//! processes on loopback. Dispatcher failover after SIGKILL (median and max over many
//! kills) and committed writes per second with 1 and 64 clients, next to an etcd of as many
//! members on the same machine in the same run when `etcd` is installed, as a ratio: absolute
//! numbers on a shared machine drift, the ratio much less.

mod copy;
mod etcd;
mod history;
mod load;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use serde_json::json;
use tonic::transport::Channel;

use super::client::request_admin_cert;
use super::local_ir::{LocalIr, check_port_free};
use crate::pki::tls;
use crate::proto::{self, admin_client::AdminClient};
use crate::timing::{ALL_ONLINE_WAIT, BENCH_FAILOVER_POLL, BENCH_FAILOVER_WAIT};
use crate::transport::client::tls_channel_checked;
use load::LoadResult;

#[derive(Args)]
pub struct BenchArgs {
    /// Port for the four shir nodes on 127.0.0.1-4 (etcd uses the next two).
    #[arg(long, default_value_t = 18060)]
    pub base_port: u16,
    /// Number of dispatcher kills to time.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// Seconds of each write phase.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Client counts to measure committed writes with.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub clients: Vec<usize>,
    /// Number of shir nodes (1-4); failover is timed only with 3 or more.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub nodes: u8,
    /// Skip the etcd comparison even if `etcd` is installed.
    #[arg(long)]
    pub no_etcd: bool,
    /// Measure copy jobs instead: a binary and a CSV file against `cp`, a PostgreSQL table
    /// to CSV against `psql \copy` (with SHIR_TEST_PG), submit-to-start latency.
    #[arg(long)]
    pub copy: bool,
    /// Measure writes with this many finished jobs kept instead, one phase per size (e.g.
    /// `0,10000,100000`): committed writes/s and the median `job submit` latency.
    #[arg(long, value_delimiter = ',')]
    pub history: Vec<u64>,
    /// Size of each file the copy benchmark writes and copies, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    #[arg(long)]
    pub json: bool,
}

/// Concurrent clients share this many HTTP/2 connections, as a pooled client library would.
const CONNECTIONS: usize = 8;

pub async fn run(args: BenchArgs) -> Result<()> {
    let nodes = usize::from(args.nodes);
    check_port_free(args.base_port, nodes).map_err(|e| anyhow!("{e}; choose another with --base-port"))?;
    let work = tempfile::Builder::new().prefix("shir-bench-").tempdir()?;
    let exe = std::env::current_exe()?;
    let say = |s: &str| {
        if !args.json {
            println!("{s}");
        }
    };
    if !args.history.is_empty() {
        let report = history::run(&exe, work.path(), &args, &say).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        return Ok(());
    }
    let mut ir = LocalIr::new(exe, work.path().join("shir"), args.base_port, nodes);
    say(&format!(
        "shir bench: {nodes} node(s) on 127.0.0.1-{nodes}:{} ({} build), data in {}",
        args.base_port,
        if cfg!(debug_assertions) { "debug" } else { "release" },
        work.path().display()
    ));
    let outcome = if args.copy {
        copy::run(&mut ir, work.path(), args.size_mib, &say).await
    } else {
        bench(&mut ir, &args, work.path(), &say).await
    };
    ir.stop_all().await;
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

async fn bench(
    ir: &mut LocalIr,
    args: &BenchArgs,
    work: &std::path::Path,
    say: &dyn Fn(&str),
) -> Result<serde_json::Value> {
    let client_tls = form(ir).await?;
    say("all nodes Online");
    let duration = Duration::from_secs_f64(args.seconds);

    let etcd = if args.no_etcd {
        None
    } else {
        match etcd::Cluster::start(work, args.base_port + 1, ir.nodes.len()).await {
            Ok(Some(c)) => {
                let n = ir.nodes.len();
                say(&format!(
                    "etcd {} with {n} member(s) on 127.0.0.1-{n} (fsync on)",
                    c.version
                ));
                Some(c)
            }
            Ok(None) => {
                say("etcd not installed (Debian: apt-get install etcd-server): no comparison");
                None
            }
            Err(e) => {
                say(&format!("etcd did not start ({e:#}): no comparison"));
                None
            }
        }
    };

    let mut writes = Vec::new();
    say(&format!("\ncommitted writes, {:.0} s per phase", args.seconds));
    say(&format!("{:<22}{:>10}{:>10}{:>10}", "", "writes/s", "p50 ms", "p99 ms"));
    for &clients in &args.clients {
        let leader = ir.dispatcher(0).await?;
        let channels = channels(ir, leader, clients, &client_tls).await?;
        let shir = load::run(clients, duration, shir_put(channels)).await;
        say(&shir.row(&format!("shir, {clients} client(s)")));
        let mut entry = json!({"clients": clients, "shir": shir.json()});
        if let Some(etcd) = &etcd {
            let channels = etcd.leader_channels(clients.min(CONNECTIONS)).await?;
            let e = load::run(clients, duration, etcd::put(channels)).await;
            say(&e.row(&format!("etcd, {clients} client(s)")));
            let ratio = shir.per_second() / e.per_second().max(f64::MIN_POSITIVE);
            say(&format!("{:<22}{:>10.2}", "  shir / etcd", ratio));
            entry["etcd"] = e.json();
            entry["ratio_shir_to_etcd"] = json!((ratio * 100.0).round() / 100.0);
        }
        writes.push(entry);
    }
    drop(etcd);

    say(&format!("\ndispatcher failover after SIGKILL, {} kills", args.kills));
    let mut times = Vec::new();
    let kills = if ir.nodes.len() >= 3 { args.kills } else { 0 };
    for round in 0..kills {
        let took = failover_once(ir)
            .await
            .with_context(|| format!("failover round {}", round + 1))?;
        say(&format!(
            "  kill {:>2}: new dispatcher after {:.0} ms",
            round + 1,
            took.as_secs_f64() * 1000.0
        ));
        times.push(took);
    }
    times.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
    let (median, max) = match times.as_slice() {
        [] => (None, None),
        t => (Some(ms(t[t.len() / 2])), Some(ms(t[t.len() - 1]))),
    };
    if let (Some(median), Some(max)) = (median, max) {
        say(&format!("  median {median:.0} ms, max {max:.0} ms"));
    }
    Ok(json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "writes": writes,
        "failover": {"kills": times.len(), "median_ms": median, "max_ms": max,
                      "each_ms": times.iter().map(|d| ms(*d)).collect::<Vec<_>>()},
    }))
}

/// Forms the IR and returns a client configuration with an admin certificate: writes go to
/// the dispatcher over its port, the path a remote client takes, TLS included.
async fn form(ir: &mut LocalIr) -> Result<Arc<rustls::ClientConfig>> {
    std::fs::create_dir_all(ir.root())?;
    ir.form("bench-ir").await.context("forming the IR")?;
    let (bundle, _) = request_admin_cert(&mut ir.admin(0).await?, "bench").await?;
    Ok(tls::client_config_mtls(
        &bundle.ca_pem,
        &bundle.cert_pem,
        &bundle.key_pem,
    )?)
}

/// Connections for `clients` writers to node `i` (at most [`CONNECTIONS`]).
async fn channels(ir: &LocalIr, i: usize, clients: usize, tls: &Arc<rustls::ClientConfig>) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..clients.min(CONNECTIONS) {
        channels.push(tls_channel_checked(&ir.nodes[i].address, tls.clone()).await?);
    }
    Ok(channels)
}

fn shir_put(channels: Vec<Channel>) -> impl Fn(usize, u64) -> load::PutFuture + Clone {
    let clients: Arc<Vec<AdminClient<Channel>>> = Arc::new(channels.into_iter().map(AdminClient::new).collect());
    move |client: usize, seq: u64| {
        let mut c = clients[client % clients.len()].clone();
        Box::pin(async move {
            let request = proto::PutRequest {
                key: format!("bench/{client}"),
                value: format!("{seq:016}"),
            };
            c.put(request)
                .await
                .map(drop)
                .map_err(|s| anyhow!(s.message().to_string()))
        })
    }
}

/// Kills the dispatcher, times until a survivor leads, brings the node back and waits for a
/// full, healthy IR so every round starts from the same place.
async fn failover_once(ir: &mut LocalIr) -> Result<Duration> {
    let victim = ir.dispatcher(0).await?;
    let survivors: Vec<usize> = (0..ir.nodes.len()).filter(|&i| i != victim).collect();
    let mut watchers = Vec::new();
    for &i in &survivors {
        watchers.push(ir.admin(i).await?);
    }
    let old_term = ir.local_view(survivors[0]).await?.term;
    let killed_at = Instant::now();
    ir.kill(victim).await?;
    let took = loop {
        let mut found = false;
        for w in &mut watchers {
            if let Ok(v) = w
                .local_view(proto::LocalViewRequest {})
                .await
                .map(tonic::Response::into_inner)
                && v.is_leader
                && v.term > old_term
            {
                found = true;
            }
        }
        if found {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > BENCH_FAILOVER_WAIT {
            return Err(anyhow!(
                "no new dispatcher {} s after the kill",
                BENCH_FAILOVER_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(BENCH_FAILOVER_POLL).await;
    };
    ir.start(victim).await?;
    ir.wait_all_online(survivors[0], ALL_ONLINE_WAIT).await?;
    Ok(took)
}

impl LoadResult {
    fn row(&self, label: &str) -> String {
        format!(
            "{label:<22}{:>10.0}{:>10.2}{:>10.2}{}",
            self.per_second(),
            self.p50_ms(),
            self.p99_ms(),
            if self.errors > 0 {
                format!("  ({} errors)", self.errors)
            } else {
                String::new()
            }
        )
    }
}
