//! Stopping a node with SIGTERM while it runs a job: the node hands the attempt back, exits
//! 0 within the systemd unit's stop timeout, and the job ends Succeeded exactly once on
//! another node, long before the node would have been judged Offline.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use shir::cli::local_ir::LocalIr;
use shir::proto;

/// Jobs named `hold-…` wait this long between staging and publishing (the worker's fail
/// point): the window in which the node is stopped. The next attempt holds as long too.
const HOLD_MS: u64 = 8_000;

/// Far longer than the test waits for the job: without a hand-back the job would stay
/// Running on the stopped node until it is judged Offline.
const OFFLINE_TIMEOUT_MS: u64 = 60_000;

/// `TimeoutStopSec` in deploy/shir.service.
const UNIT_STOP_TIMEOUT: Duration = Duration::from_secs(20);

async fn job(ir: &LocalIr, via: usize, id: &str) -> Result<Value, String> {
    let out = common::shir_on(ir, via, &["job", "show", id, "--json"], None).await?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read file")))
}

fn staging_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".shir-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_hands_the_attempt_back_and_exits_0() {
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(4), 4);
    ir.offline_timeout_ms = Some(OFFLINE_TIMEOUT_MS);
    ir.env
        .push(common::failpoints(&[(common::HOLD_BEFORE_PUBLISH, "hold-", HOLD_MS)]));
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.form("shutdown-ir").await.expect("four nodes form an IR");
    let share = tmp.path().join("share");
    std::fs::create_dir_all(share.join("in")).unwrap();
    ir.create_filesystem_service("share", &share)
        .await
        .expect("create share");
    let big: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(share.join("in/big.bin"), &big).unwrap();

    steps.step("a job stages its output on some node, then that node gets SIGTERM");
    let request = proto::JobSubmitRequest {
        name: "hold-term".into(),
        source: "share:/in/big.bin".into(),
        sink: "share:/out/big.bin".into(),
        binary: true,
        ..Default::default()
    };
    let id = common::submit_job(&ir, 0, request).await;
    let running = common::eventually("the job to run", Duration::from_secs(20), || async {
        let j = job(&ir, 0, &id).await?;
        if j["state"] == "Running" {
            Ok(j)
        } else {
            Err(format!("{j}"))
        }
    })
    .await;
    let victim = ir
        .nodes
        .iter()
        .position(|n| n.name == running["node"].as_str().unwrap())
        .unwrap();
    // Staging a few MB takes well under this; the hold keeps the attempt before publishing.
    common::eventually("the attempt to stage", Duration::from_secs(10), || async {
        if staging_files(&share.join("out")).is_empty() {
            Err("no staging file yet".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let pid = ir.nodes[victim].pid().expect("the victim runs") as i32;
    let asked = Instant::now();
    // SAFETY: plain kill(2) on a child the harness started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let code = ir.wait_exit(victim, UNIT_STOP_TIMEOUT).await;
    let took = asked.elapsed();
    eprintln!(
        "{} stopped in {:.1} s with {code:?}",
        ir.nodes[victim].name,
        took.as_secs_f64()
    );
    assert_eq!(code, Some(0), "the node exits 0 within the unit's stop timeout");

    steps.step("the job is handed back and succeeds elsewhere, exactly once");
    let via = (victim + 1) % 4;
    let done = common::eventually("the job to succeed", Duration::from_secs(30), || async {
        let j = job(&ir, via, &id).await?;
        if j["state"] == "Succeeded" {
            Ok(j)
        } else {
            Err(format!("{j}"))
        }
    })
    .await;
    assert_eq!(done["attempt"], 2, "{done}");
    assert_ne!(done["node"], running["node"], "{done}");
    assert_eq!(sha256(&share.join("out/big.bin")), sha256(&share.join("in/big.bin")));
    let outputs: Vec<String> = std::fs::read_dir(share.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(outputs, vec!["big.bin".to_string()], "one output, no staging files");
    let list = common::shir_on(&ir, via, &["job", "list", "--json"], None)
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    ir.stop_all().await;
}
