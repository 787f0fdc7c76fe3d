//! `shir demo`: a four-node integration runtime on this machine, a dispatcher killed with
//! SIGKILL, the failover timed, the node brought back; then a batch of copy jobs across the
//! nodes, a node killed mid-copy, its jobs finished elsewhere and every output verified.
//! Real processes, real TLS, real disks.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Args;

use super::local_ir::{LocalIr, check_port_free};
use super::output;
use crate::proto;
use crate::timing::{
    ALL_ONLINE_WAIT, DEMO_BATCH_AFTER_KILL, DEMO_FAILOVER_WAIT, DEMO_JOB_RUNNING_WAIT, DEMO_OFFLINE_WAIT,
    FIRST_LEADER_WAIT, JOB_POLL,
};

#[derive(Args)]
pub struct DemoArgs {
    /// Port every node listens on (on 127.0.0.1, .2, .3 and .4).
    #[arg(long, default_value_t = crate::DEFAULT_PORT)]
    pub base_port: u16,
    /// Keep the data dirs and logs afterwards (their location is printed).
    #[arg(long)]
    pub keep: bool,
    /// Size of each of the 12 files the copy jobs move, in MiB.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub file_mib: u64,
}

fn role_of(status: &crate::proto::StatusReply, name: &str) -> String {
    status
        .nodes
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.role().label().to_string())
        .unwrap_or_default()
}

fn step(text: &str) {
    println!("\n==> {text}");
}

pub async fn run(args: DemoArgs) -> Result<()> {
    check_port_free(args.base_port, 4).map_err(|e| {
        anyhow!("{e}; rerun with --base-port to choose another port, e.g. `shir demo --base-port 18060`")
    })?;
    let work = tempfile::Builder::new()
        .prefix("shir-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let exe = std::env::current_exe().context("cannot find the shir executable")?;
    let mut ir = LocalIr::new(exe, work.path(), args.base_port, 4);
    println!(
        "shir demo: four nodes on 127.0.0.1-127.0.0.4, port {}; data and logs in {}",
        args.base_port,
        work.path().display()
    );

    // Ctrl-C must not leave four nodes running on the port: stop them, then report.
    let outcome = tokio::select! {
        r = async {
            script(&mut ir).await?;
            jobs_script(&mut ir, work.path(), args.file_mib as usize).await
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; stopping the nodes")),
    };
    ir.stop_all().await;
    if args.keep {
        let kept = work.keep();
        println!("\nkept data dirs and logs in {}", kept.display());
    }
    if outcome.is_ok() {
        println!(
            "\ndemo finished: all nodes stopped{}.",
            if args.keep { "" } else { ", temporary files removed" }
        );
    }
    outcome
}

async fn script(ir: &mut LocalIr) -> Result<()> {
    step("node1: shir init --name node1 --ir-name demo-ir   (creates the CA, keys and the IR)");
    ir.init(0, "demo-ir").await?;
    step("node1: shir run   (the host service)");
    ir.start(0).await?;
    let key = ir
        .wait_for("node1 to become dispatcher", FIRST_LEADER_WAIT, || async {
            ir.key1(0).await.ok()
        })
        .await?;
    println!(
        "key1 = {}…  (shown in full by `shir key show`)",
        &key[..key.len().min(24)]
    );

    for i in 1..4 {
        let name = ir.nodes[i].name.clone();
        let addr = ir.nodes[i].address.clone();
        step(&format!(
            "{name}: shir register --name {name} --listen {addr} --auth-key-file <file with key1>, then shir run"
        ));
        ir.register(i, &key).await?;
        ir.start(i).await?;
    }
    step("waiting for the four nodes to be Online voters");
    let status = ir.wait_all_online(0, ALL_ONLINE_WAIT).await?;
    println!("{}", output::status_text(&status));

    let victim = ir.dispatcher(0).await?;
    let victim_name = ir.nodes[victim].name.clone();
    let watcher = (victim + 1) % 4;
    step(&format!("killing the dispatcher {victim_name} with SIGKILL"));
    let killed_at = Instant::now();
    ir.kill(victim).await?;
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let (new_name, took) = ir
        .wait_for("a new dispatcher", DEMO_FAILOVER_WAIT, || async {
            for &i in &survivors {
                if let Ok(v) = ir.local_view(i).await
                    && v.is_leader
                {
                    return Some((v.name, killed_at.elapsed()));
                }
            }
            None
        })
        .await?;
    println!(
        "new dispatcher: {new_name}, elected {:.0} ms after the kill",
        took.as_secs_f64() * 1000.0
    );

    step(&format!(
        "waiting for {victim_name} to be marked Offline (silent for the offline timeout)"
    ));
    let status = ir
        .wait_for("the killed node to show Offline", DEMO_OFFLINE_WAIT, || async {
            let s = ir.status(watcher).await.ok()?;
            s.nodes
                .iter()
                .any(|n| n.name == victim_name && n.status() == proto::NodeHealth::Offline)
                .then_some(s)
        })
        .await?;
    println!("{}", output::status_text(&status));

    step(&format!(
        "restarting {victim_name}: shir run on its existing data dir (no re-registration)"
    ));
    ir.start(victim).await?;
    let status = ir.wait_all_online(watcher, ALL_ONLINE_WAIT).await?;
    println!("{}", output::status_text(&status));
    println!(
        "\n{victim_name} is back Online as a {}; the dispatcher is {}.",
        role_of(&status, &victim_name),
        status.dispatcher
    );
    Ok(())
}

/// Files in the demo's batch, and the size of each: big enough that a copy is still under way
/// when a node is killed, small enough for any laptop.
const DEMO_FILES: usize = 12;

fn sha256_file(path: &std::path::Path) -> Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

async fn jobs_script(ir: &mut LocalIr, work: &std::path::Path, file_mib: usize) -> Result<()> {
    let share = work.join("share");
    std::fs::create_dir_all(share.join("in"))?;
    step(&format!(
        "shir linked-service create share --type filesystem --root {}",
        share.display()
    ));
    ir.create_filesystem_service("share", &share).await?;
    let mut admin = ir.admin(0).await?;
    for n in 1..=4 {
        admin
            .node_set_limit(proto::NodeSetLimitRequest {
                name: format!("node{n}"),
                limit: 1,
            })
            .await
            .map_err(|s| anyhow!(s.message().to_string()))?;
    }
    println!("(each node runs one job at a time, so the batch takes turns)");
    let mut sums = Vec::new();
    let mut block = vec![0u8; 1 << 20];
    for f in 0..DEMO_FILES {
        let path = share.join(format!("in/part-{f:02}.bin"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut x = 0x2545_F491_4F6C_DD1Du64 ^ f as u64;
        for _ in 0..file_mib {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            std::io::Write::write_all(&mut out, &block)?;
        }
        std::io::Write::flush(&mut out)?;
        drop(out);
        sums.push(sha256_file(&path)?);
    }
    step(&format!(
        "shir job submit --source share:/in/part-NN.bin --sink share:/out/part-NN.bin --binary   ({DEMO_FILES} jobs of {file_mib} MiB)"
    ));
    let mut ids = Vec::new();
    for f in 0..DEMO_FILES {
        let request = proto::JobSubmitRequest {
            source: format!("share:/in/part-{f:02}.bin"),
            sink: format!("share:/out/part-{f:02}.bin"),
            binary: true,
            ..Default::default()
        };
        ids.push(
            admin
                .job_submit(request)
                .await
                .map_err(|s| anyhow!(s.message().to_string()))?
                .into_inner()
                .id,
        );
    }
    // Kill a worker that is not the dispatcher, while it copies.
    let dispatcher = ir.dispatcher(0).await?;
    let running = ir
        .wait_for("a job running on a worker", DEMO_JOB_RUNNING_WAIT, || async {
            let mut admin = ir.admin(dispatcher).await.ok()?;
            let list = admin
                .job_list(proto::JobListRequest {
                    state: proto::JobState::Running.into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            list.jobs
                .into_iter()
                .find(|j| j.node != ir.nodes[dispatcher].name && !j.node.is_empty())
        })
        .await
        .ok();
    let victim = match &running {
        Some(j) => {
            let victim = ir.nodes.iter().position(|n| n.name == j.node).unwrap_or(0);
            step(&format!("killing {} with SIGKILL while it copies job {}", j.node, j.id));
            victim
        }
        None => {
            let victim = (dispatcher + 1) % ir.nodes.len();
            step(&format!(
                "no job was running on a worker when we looked; killing {} with SIGKILL anyway",
                ir.nodes[victim].name
            ));
            victim
        }
    };
    let killed_at = Instant::now();
    ir.kill(victim).await?;
    println!("its job goes back to the queue once the node is Offline (4 s without heartbeats), then runs elsewhere");
    let mut watcher = ir.admin(dispatcher).await?;
    let done = loop {
        let list = watcher.job_list(proto::JobListRequest::default()).await?.into_inner();
        let finished = list.jobs.iter().filter(|j| super::job::is_final(j.state())).count();
        if finished == ids.len() {
            break list.jobs;
        }
        if killed_at.elapsed() > DEMO_BATCH_AFTER_KILL {
            return Err(anyhow!(
                "the batch did not finish within {} minutes of the kill",
                DEMO_BATCH_AFTER_KILL.as_secs() / 60
            ));
        }
        tokio::time::sleep(JOB_POLL).await;
    };
    step("every job, and its output checked against its input (SHA-256)");
    let mut rows = Vec::new();
    let mut all_good = true;
    for (f, id) in ids.iter().enumerate() {
        let j = done
            .iter()
            .find(|j| &j.id == id)
            .ok_or_else(|| anyhow!("job {id} missing"))?;
        let out = share.join(format!("out/part-{f:02}.bin"));
        let matches = out.exists() && sha256_file(&out)? == sums[f];
        all_good &= matches && j.state() == proto::JobState::Succeeded;
        rows.push(vec![
            j.id.clone(),
            j.state().label().to_string(),
            j.node.clone(),
            j.attempt.to_string(),
            if matches {
                "identical".into()
            } else {
                "DIFFERENT".into()
            },
        ]);
    }
    println!(
        "{}",
        output::table(&["JOB", "STATE", "NODE", "ATTEMPT", "OUTPUT"], &rows)
    );
    let moved = done.iter().filter(|j| j.attempt > 1).count();
    println!(
        "
{moved} job(s) ran a second attempt after {} was killed; every output is exactly one complete copy: {}",
        ir.nodes[victim].name,
        if all_good { "yes" } else { "NO" }
    );
    ir.start(victim).await?;
    if !all_good {
        return Err(anyhow!("some outputs do not match their inputs"));
    }
    Ok(())
}
