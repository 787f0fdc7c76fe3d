//! Proves that SIGKILLing nodes (followers, the dispatcher, then all four at once) while
//! writes are in flight loses no acknowledged write: every `Admin.Put` that returned Ok is
//! readable afterwards on every node, the restarted ones included.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shir::proto::{self, admin_client::AdminClient};
use shir::transport::client::unix_channel;
use tonic::transport::Channel;

use common::{Steps, eventually};

const WRITERS: usize = 8;
const ROUNDS: usize = 4;
const PUT_TIMEOUT: Duration = Duration::from_secs(8);

struct WriterReport {
    /// Key, value, and when the Put returned Ok.
    acked: Vec<(String, String, Instant)>,
    failed: usize,
}

/// Puts `w<writer>-<seq>` keys round robin through the nodes marked up, until `stop`.
async fn writer(w: usize, sockets: Vec<PathBuf>, up: Arc<Vec<AtomicBool>>, stop: Arc<AtomicBool>) -> WriterReport {
    let mut clients: Vec<Option<AdminClient<Channel>>> = vec![None; sockets.len()];
    let mut report = WriterReport {
        acked: Vec::new(),
        failed: 0,
    };
    let mut next = w;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = sockets.len();
        let Some(i) = (0..n).map(|k| (next + k) % n).find(|&i| up[i].load(Ordering::Relaxed)) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        next = i + 1;
        if clients[i].is_none() {
            match unix_channel(&sockets[i]).await {
                Ok(channel) => clients[i] = Some(AdminClient::new(channel)),
                Err(_) => {
                    report.failed += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(client) = clients[i].as_mut() else { continue };
        let key = format!("w{w}-{seq}");
        let value = format!("{}-{seq}-{:08x}", i + 1, rand::random::<u32>());
        seq += 1;
        let put = client.put(proto::PutRequest {
            key: key.clone(),
            value: value.clone(),
        });
        match tokio::time::timeout(PUT_TIMEOUT, put).await {
            Ok(Ok(_)) => report.acked.push((key, value, Instant::now())),
            _ => {
                // Not acknowledged: it may or may not be applied; either is fine.
                report.failed += 1;
                clients[i] = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_during_writes_loses_nothing_acknowledged() {
    let steps = Steps::new();
    steps.step("form a four-node IR");
    let (_tmp, mut ir, _logs) = common::four_node_ir("durability-ir").await;

    steps.step(&format!("start {WRITERS} writers through the nodes' local sockets"));
    let sockets: Vec<PathBuf> = ir.nodes.iter().map(|n| n.dir.socket_path()).collect();
    let up: Arc<Vec<AtomicBool>> = Arc::new((0..4).map(|_| AtomicBool::new(true)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, sockets.clone(), up.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await; // writes before the first fault

    let mut kills = Vec::new();
    for round in 0..ROUNDS {
        let running: Vec<usize> = (0..4).filter(|&i| ir.nodes[i].is_running()).collect();
        let leader = ir.dispatcher(running[0]).await.expect("a dispatcher");
        // Even rounds a follower (a different one each time), odd rounds the dispatcher.
        let victim = if round % 2 == 0 {
            (leader + 1 + round / 2) % 4
        } else {
            leader
        };
        let role = if victim == leader { "dispatcher" } else { "follower" };
        steps.step(&format!(
            "round {}: SIGKILL {} ({role}), restart it after 1 s",
            round + 1,
            ir.nodes[victim].name
        ));
        up[victim].store(false, Ordering::Relaxed);
        ir.kill(victim).await.expect("kill");
        kills.push(format!("{} ({role})", ir.nodes[victim].name));
        // The fault's duration, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(1)).await;
        ir.start(victim).await.expect("restart");
        up[victim].store(true, Ordering::Relaxed);
        let watcher = (victim + 1) % 4;
        ir.wait_all_online(watcher, Duration::from_secs(30))
            .await
            .expect("all four Online again");
    }

    steps.step("round 5: SIGKILL all four nodes at once, restart them after 1 s");
    for i in 0..4 {
        up[i].store(false, Ordering::Relaxed);
        ir.kill(i).await.expect("kill");
    }
    kills.push("all four at once".to_string());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..4 {
        ir.start(i).await.expect("restart");
        up[i].store(true, Ordering::Relaxed);
    }
    ir.wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("all four Online after the full restart");
    let all_back = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await; // writes after the last fault

    steps.step("stop the writers");
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut failed = 0;
    let mut after_full_restart = 0;
    for w in writers {
        let report = w.await.expect("writer task");
        after_full_restart += report.acked.iter().filter(|(_, _, at)| *at > all_back).count();
        acked.extend(report.acked.into_iter().map(|(k, v, _)| (k, v)));
        failed += report.failed;
    }
    eprintln!(
        "{} writes acknowledged ({after_full_restart} after the full restart), {failed} not acknowledged; {} kills: {}",
        acked.len(),
        kills.len(),
        kills.join(", ")
    );
    assert!(
        after_full_restart > 0,
        "no write was acknowledged after all four nodes restarted"
    );
    assert!(
        acked.len() >= 200,
        "only {} writes acknowledged; the test proves little",
        acked.len()
    );

    steps.step("every node holds every acknowledged write");
    ir.wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("all Online");
    let checks = (0..4).map(|i| {
        let (ir, acked) = (&ir, &acked);
        async move {
            let admin = ir.admin(i).await.expect("admin socket");
            for (key, value) in acked {
                let got = eventually("an acknowledged write to be applied", Duration::from_secs(30), || {
                    let mut admin = admin.clone();
                    async move {
                        let got = admin
                            .get(proto::GetRequest { key: key.clone() })
                            .await
                            .map_err(|s| s.message().to_string())?
                            .into_inner();
                        if got.found {
                            Ok(got.value)
                        } else {
                            Err(format!("{} lacks acknowledged {key}", ir.nodes[i].name))
                        }
                    }
                })
                .await;
                assert_eq!(&got, value, "{} holds another value for {key}", ir.nodes[i].name);
            }
        }
    });
    futures::future::join_all(checks).await;

    steps.step("done");
    ir.stop_all().await;
}
