//! `shir demo`: a four-node integration runtime on this machine, a dispatcher killed with
//! SIGKILL, the failover timed, the node brought back. Real processes, real TLS, real disks.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Args;

use super::local_ir::{LocalIr, check_port_free};
use super::output;

#[derive(Args)]
pub struct DemoArgs {
    /// Port every node listens on (on 127.0.0.1, .2, .3 and .4).
    #[arg(long, default_value_t = crate::DEFAULT_PORT)]
    pub base_port: u16,
    /// Keep the data dirs and logs afterwards (their location is printed).
    #[arg(long)]
    pub keep: bool,
}

fn role_of(status: &crate::proto::StatusReply, name: &str) -> String {
    status
        .nodes
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.role.clone())
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
        r = script(&mut ir) => r,
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
        .wait_for("node1 to become dispatcher", Duration::from_secs(20), || async {
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
            "{name}: shir register --name {name} --listen {addr} --auth-key <key1>, then shir run"
        ));
        ir.register(i, &key).await?;
        ir.start(i).await?;
    }
    step("waiting for the four nodes to be Online voters");
    let status = ir.wait_all_online(0, Duration::from_secs(30)).await?;
    println!("{}", output::status_text(&status));

    let victim = ir.dispatcher(0).await?;
    let victim_name = ir.nodes[victim].name.clone();
    let watcher = (victim + 1) % 4;
    step(&format!("killing the dispatcher {victim_name} with SIGKILL"));
    let killed_at = Instant::now();
    ir.kill(victim).await?;
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let (new_name, took) = ir
        .wait_for("a new dispatcher", Duration::from_secs(10), || async {
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
        .wait_for("the killed node to show Offline", Duration::from_secs(15), || async {
            let s = ir.status(watcher).await.ok()?;
            s.nodes
                .iter()
                .any(|n| n.name == victim_name && n.status == "Offline")
                .then_some(s)
        })
        .await?;
    println!("{}", output::status_text(&status));

    step(&format!(
        "restarting {victim_name}: shir run on its existing data dir (no re-registration)"
    ));
    ir.start(victim).await?;
    let status = ir.wait_all_online(watcher, Duration::from_secs(30)).await?;
    println!("{}", output::status_text(&status));
    println!(
        "\n{victim_name} is back Online as a {}; the dispatcher is {}.",
        role_of(&status, &victim_name),
        status.dispatcher
    );
    Ok(())
}
