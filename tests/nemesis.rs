//! Fault injection on four network namespaces (see tests/nemesis/): a short run in every
//! `cargo test` (a fixed seed, then a random one), a long one with `SHIR_NEMESIS_SECS`.
//!
//! * `SHIR_NEMESIS_SEED=N` replays one seed (the run prints its seed first and last);
//! * `SHIR_NEMESIS_SECS=S` injects faults for S seconds per seed instead of the short run's;
//! * needs root, iproute2 and nft; without them it skips, saying why (with CI=true: fails).
//!
//! `tests/nemesis/run.sh` runs it by hand.

mod common;
#[path = "nemesis/mod.rs"]
mod suite;

use std::time::Duration;

/// The fixed seed every short run replays.
const FIXED_SEED: u64 = 20_251_201;

/// Seconds of faults per seed in the short run.
const SHORT_SECS: u64 = 50;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a whole number")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_and_break_no_promise() {
    if let Some(why) = suite::hosts::missing_requirement() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but the nemesis suite cannot run: it {why}"
        );
        eprintln!("skipped the nemesis suite: it {why}");
        return;
    }
    let secs = env_u64("SHIR_NEMESIS_SECS").unwrap_or(SHORT_SECS);
    let seeds = match env_u64("SHIR_NEMESIS_SEED") {
        Some(seed) => vec![seed],
        None => vec![FIXED_SEED, rand::random::<u32>() as u64],
    };
    // A long run can be given a copy of the binary, so that rebuilding the tree meanwhile
    // does not change the nodes it restarts.
    let shir = std::env::var("SHIR_NEMESIS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_shir").to_string());
    for seed in seeds {
        let outcome = suite::run(seed, Duration::from_secs(secs), &shir)
            .await
            .unwrap_or_else(|e| panic!("nemesis run with seed {seed} could not complete: {e:#}"));
        assert!(
            outcome.verdict.anomalies.is_empty(),
            "seed {seed}: {} anomalies (logs and share kept in {}):\n{}",
            outcome.verdict.anomalies.len(),
            outcome.root.display(),
            outcome.verdict.summary
        );
    }
}
