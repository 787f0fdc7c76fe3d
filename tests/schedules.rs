//! Schedules on a real four-node IR: bad input refused with one line and nothing written;
//! a schedule every 2 s whose dispatcher is killed with SIGKILL ten times around firing
//! times, and every slot from the first to the last fired exactly once; tumbling windows
//! backfilled in order with their placeholders; overlap skip with its reason; catch-up last
//! after a pause; pause, resume, run-now and delete, the same on every node.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use shir::cli::local_ir::LocalIr;
use shir::testing::postgres::ThrowawayPostgres;

/// Jobs named `hold-…` wait this long before publishing, so the next slot finds them running.
const HOLD_MS: u64 = 2500;
/// The exactly-once schedule's interval.
const TICK_MS: i64 = 2000;
const KILLS: usize = 10;

async fn shir_on(ir: &LocalIr, i: usize, args: &[&str]) -> Result<String, String> {
    common::shir_on(ir, i, args, None).await
}

fn now_ms() -> i64 {
    shir::unix_now_ms()
}

async fn runs(ir: &LocalIr, via: usize, name: &str) -> Result<Vec<Value>, String> {
    let out = shir_on(ir, via, &["schedule", "runs", name, "--json"]).await?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// `schedule create NAME ARGS…` through node `via`, copying the test's one file; `args` split
/// at spaces.
async fn create(ir: &LocalIr, via: usize, name: &str, args: &str) -> Result<String, String> {
    let mut all = vec!["schedule", "create", name, "--source", "share:/in/data.bin", "--binary"];
    all.extend(args.split(' '));
    shir_on(ir, via, &all).await
}

/// Waits until `name`'s runs, filtered by `keep`, are at least `n`; returns them.
async fn runs_until(ir: &LocalIr, name: &str, n: usize, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    common::eventually(&format!("{n} runs of {name}"), Duration::from_secs(30), || async {
        let r: Vec<Value> = runs(ir, 0, name).await?.into_iter().filter(|r| keep(r)).collect();
        if r.len() >= n {
            Ok(r)
        } else {
            Err(format!("{} runs", r.len()))
        }
    })
    .await
}

async fn schedule_names(ir: &LocalIr, via: usize) -> Vec<String> {
    let out = shir_on(ir, via, &["schedule", "list", "--json"])
        .await
        .expect("schedule list");
    let v: Value = serde_json::from_str(&out).expect("list --json is JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn slot_ms(run: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(run["slot"].as_str().expect("slot is a string"))
        .expect("slot is RFC 3339")
        .timestamp_millis()
}

/// `runs` ended: every job finished, nothing queued.
fn settled(runs: &[Value]) -> Result<(), String> {
    match runs
        .iter()
        .find(|r| !matches!(r["state"].as_str(), Some("Succeeded" | "Skipped")))
    {
        Some(r) => Err(format!("not settled: {r}")),
        None => Ok(()),
    }
}

/// A node that is up, other than `not`.
fn other_than(ir: &LocalIr, not: usize) -> usize {
    (0..ir.nodes.len())
        .find(|i| *i != not && ir.nodes[*i].is_running())
        .expect("a running node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_each_slot_once_through_dispatcher_kills() {
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(4), 4);
    ir.offline_timeout_ms = Some(1500);
    ir.env
        .push(common::failpoints(&[(common::HOLD_BEFORE_PUBLISH, "hold-", HOLD_MS)]));
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.form("sched-ir").await.expect("four nodes form an IR");
    let share = tmp.path().join("share");
    std::fs::create_dir_all(share.join("in")).unwrap();
    std::fs::write(share.join("in/data.bin"), b"one slot, one copy\n").unwrap();
    ir.create_filesystem_service("share", &share)
        .await
        .expect("create share");

    steps.step("bad input: one line each, nothing written");
    create(&ir, 0, "dup", "--every 1h --sink share:/dup/{date}.bin")
        .await
        .expect("a good schedule");
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cron", "61 * * * *"], "the minute field '61' is not valid"),
        (
            vec!["--cron", "0 2 * * *", "--time-zone", "Europe/Berln"],
            "invalid time zone 'Europe/Berln'",
        ),
        (vec!["--every", "1h", "--window"], "--window needs --start"),
        (
            vec![
                "--every",
                "1h",
                "--window",
                "--start",
                "2026-11-01T00:00:00Z",
                "--name",
                "w-{windw_start}",
            ],
            "unknown placeholder {windw_start}",
        ),
        (
            vec!["--every", "1h", "--sink", "share:/o/{slot:%Q}.bin"],
            "invalid strftime format '%Q'",
        ),
        (vec!["--every", "0s"], "the shortest is 1s"),
        (
            vec![
                "--every",
                "1h",
                "--window",
                "--start",
                "2026-11-01T00:00:00Z",
                "--overlap",
                "queue",
            ],
            "do not apply to --window",
        ),
        (vec!["--every", "1h", "--sink", "nosuch:/o/x.bin"], "nosuch"),
    ];
    for (args, expected) in bad {
        let mut all = vec![
            "schedule",
            "create",
            "bad",
            "--source",
            "share:/in/data.bin",
            "--binary",
        ];
        if !args.contains(&"--sink") {
            all.extend(["--sink", "share:/o/x.bin"]);
        }
        all.extend(&args);
        let e = shir_on(&ir, 1, &all)
            .await
            .expect_err(&format!("{args:?} must be refused"));
        assert!(e.contains(expected), "{args:?}: '{e}' does not say '{expected}'");
        assert!(!e.contains('\n'), "{args:?}: not one line: {e}");
    }
    let e = create(&ir, 2, "dup", "--every 1m --sink share:/o/x.bin")
        .await
        .expect_err("a taken name");
    assert_eq!(e, "a schedule named 'dup' exists already");
    for verb in ["show", "pause", "resume", "runs", "run-now", "delete"] {
        let e = shir_on(&ir, 2, &["schedule", verb, "nosuch"]).await.expect_err(verb);
        assert_eq!(e, "no schedule named 'nosuch'", "{verb}");
    }
    assert_eq!(schedule_names(&ir, 3).await, ["dup"], "the refused calls wrote nothing");
    shir_on(&ir, 0, &["schedule", "delete", "dup"])
        .await
        .expect("delete dup");
    assert!(schedule_names(&ir, 2).await.is_empty());

    steps.step("a schedule every 2 s; SIGKILL the dispatcher around firing times");
    create(
        &ir,
        0,
        "tick",
        "--every 2s --catch-up all --overlap queue --sink share:/tick/{slot:%Y%m%dT%H%M%S}.bin",
    )
    .await
    .expect("create tick");
    runs_until(&ir, "tick", 1, |_| true).await;
    // Offsets from a slot's time: just before (the dispatcher may die deciding), at, and
    // after (it may die between proposing and committing, or after).
    let offsets = [-150i64, -40, 0, 20, 60, 120, 250, -80, 10, 400];
    for (k, offset) in offsets.iter().enumerate().take(KILLS) {
        let d = ir.dispatcher(0).await.or(ir.dispatcher(1).await).expect("a dispatcher");
        let now = now_ms();
        let mut at = (now / TICK_MS + 1) * TICK_MS + offset;
        if at < now + 50 {
            at += TICK_MS;
        }
        tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64)).await;
        ir.kill(d).await.expect("kill the dispatcher");
        steps.step(&format!("kill {}: {} at slot {offset:+} ms", k + 1, ir.nodes[d].name));
        let via = other_than(&ir, d);
        common::eventually("a new dispatcher", Duration::from_secs(15), || async {
            ir.dispatcher(via).await.map_err(|e| e.to_string())
        })
        .await;
        ir.start(d).await.expect("restart the killed node");
    }

    steps.step("let it run three more slots, pause, wait for every run to end");
    let before = runs(&ir, 0, "tick").await.expect("runs").len();
    runs_until(&ir, "tick", before + 3, |_| true).await;
    shir_on(&ir, 1, &["schedule", "pause", "tick"]).await.expect("pause");
    let all = common::eventually("tick's runs to end", Duration::from_secs(60), || async {
        let r = runs(&ir, 2, "tick").await?;
        settled(&r).map(|_| r)
    })
    .await;

    steps.step("every slot from the first to the last fired exactly once");
    assert!(all.len() > KILLS, "{} runs for {KILLS} kills, one a slot", all.len());
    let slots: Vec<i64> = all.iter().map(slot_ms).collect();
    for pair in slots.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            TICK_MS,
            "a gap or a duplicate between slots: {slots:?}"
        );
    }
    let jobs: BTreeSet<&str> = all
        .iter()
        .map(|r| r["job"].as_str().expect("every slot has a job"))
        .collect();
    assert_eq!(jobs.len(), all.len(), "each slot its own job");
    for r in &all {
        assert_eq!(r["state"], "Succeeded", "{r}");
        assert!(r["fired_at"].is_string(), "{r}");
        assert!(r["reason"].is_null(), "{r}");
    }
    let files = std::fs::read_dir(share.join("tick"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().contains(".shir-"))
        .count();
    assert_eq!(files, all.len(), "one output file per slot");
    for i in 1..4 {
        assert_eq!(runs(&ir, i, "tick").await.unwrap(), all, "node {i} shows other runs");
    }

    steps.step("run-now on a paused schedule; resume; delete");
    let out = shir_on(&ir, 3, &["schedule", "run-now", "tick", "--json"])
        .await
        .expect("run-now");
    let manual: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(manual["manual"], true);
    let job = manual["job"].as_str().expect("a job").to_string();
    common::job_end(&ir, 0, &job, Duration::from_secs(30)).await;
    for (verb, paused) in [("show", true), ("resume", false)] {
        let out = shir_on(&ir, 2, &["schedule", verb, "tick", "--json"])
            .await
            .expect(verb);
        let shown: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(shown["paused"], paused, "{verb}: {shown}");
    }
    let list = shir_on(&ir, 1, &["schedule", "list"]).await.expect("list");
    assert!(
        list.contains("tick") && list.contains("every 2s") && list.contains("active"),
        "{list}"
    );
    let table = shir_on(&ir, 1, &["schedule", "runs", "tick"]).await.expect("runs");
    assert!(table.starts_with("SLOT") && table.contains("(run-now)"), "{table}");
    let deleted = shir_on(&ir, 0, &["schedule", "delete", "tick"])
        .await
        .expect("delete tick");
    assert_eq!(deleted.trim(), "deleted schedule tick");

    steps.step("tumbling windows: backfilled in order, two at a time, with their placeholders");
    let start = (now_ms() / 1000 - 6) * 1000;
    let start_text = shir::cli::output::rfc3339_ms(start).unwrap();
    let args = format!(
        "--every 1s --window --start {start_text} --max-concurrent-windows 2 \
         --sink share:/win/{{window_start:%H%M%S}}-{{window_end:%H%M%S}}.bin"
    );
    create(&ir, 1, "win", &args).await.expect("create win");
    let win = runs_until(&ir, "win", 6, |r| r["state"] == "Succeeded").await;
    assert_eq!(slot_ms(&win[0]), start, "the first window starts at --start");
    for pair in win.windows(2) {
        assert_eq!(
            slot_ms(&pair[1]) - slot_ms(&pair[0]),
            1000,
            "windows in order, none missing"
        );
    }
    let hms = |ms: i64| {
        let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
        t.format("%H%M%S").to_string()
    };
    for r in &win[..6] {
        let s = slot_ms(r);
        let file = share.join(format!("win/{}-{}.bin", hms(s), hms(s + 1000)));
        assert!(file.exists(), "{} for {r}", file.display());
    }
    shir_on(&ir, 1, &["schedule", "delete", "win"])
        .await
        .expect("delete win");

    steps.step("overlap skip: a slot due while the previous run holds is skipped with the reason");
    create(
        &ir,
        2,
        "slow",
        "--every 1s --name hold-{slot} --sink share:/slow/{slot:%H%M%S}.bin",
    )
    .await
    .expect("create slow");
    let skipped = runs_until(&ir, "slow", 1, |r| r["state"] == "Skipped").await;
    assert!(skipped[0]["job"].is_null(), "{}", skipped[0]);
    let reason = skipped[0]["reason"].as_str().unwrap();
    assert!(reason.contains("still running (--overlap skip)"), "{reason}");
    shir_on(&ir, 2, &["schedule", "delete", "slow"])
        .await
        .expect("delete slow");

    steps.step("catch-up last: slots missed while paused, only the latest runs");
    create(&ir, 3, "lasty", "--every 1s --sink share:/lasty/{slot:%H%M%S}.bin")
        .await
        .expect("create lasty");
    runs_until(&ir, "lasty", 1, |_| true).await;
    shir_on(&ir, 3, &["schedule", "pause", "lasty"])
        .await
        .expect("pause lasty");
    let paused = runs(&ir, 0, "lasty").await.unwrap().len();
    // Three slots fall due while it is paused: a wait for time itself, not for a state.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        runs(&ir, 0, "lasty").await.unwrap().len(),
        paused,
        "nothing fires while paused"
    );
    shir_on(&ir, 3, &["schedule", "resume", "lasty"])
        .await
        .expect("resume lasty");
    let after = runs_until(&ir, "lasty", paused + 2, |_| true).await;
    let missed = &after[paused];
    assert_eq!(missed["state"], "Skipped", "{missed}");
    assert!(
        missed["reason"].as_str().unwrap().contains("--catch-up last"),
        "{missed}"
    );
    assert!(
        after[paused + 1]["job"].is_string(),
        "the latest slot ran: {}",
        after[paused + 1]
    );
    assert!(slot_ms(&after[paused + 1]) - slot_ms(missed) >= 1000);
    shir_on(&ir, 3, &["schedule", "delete", "lasty"])
        .await
        .expect("delete lasty");

    clocks_that_disagree_are_warned_of(&mut ir, &steps).await;
    windows_of_a_postgres_query(&ir, &share, &steps).await;
    ir.stop_all().await;
}

/// Debian's libfaketime (package `faketime`), which shifts one process's wall clock.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A node whose clock is 30 s ahead (libfaketime on that one process; the monotonic clock
/// its timers use is left alone) makes `status` warn, naming it, on every node; back in
/// step, the warning goes.
async fn clocks_that_disagree_are_warned_of(ir: &mut LocalIr, steps: &common::Steps) {
    if !std::path::Path::new(LIBFAKETIME).exists() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but {LIBFAKETIME} is missing: .ci/run must install Debian's faketime"
        );
        eprintln!("skipped the clock-skew part: {LIBFAKETIME} is missing (apt-get install faketime)");
        return;
    }
    steps.step("node4's clock 30 s ahead: status warns on every node, naming it");
    let without = ir.env.clone();
    ir.env.extend([
        ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
        ("FAKETIME".to_string(), "+30s".to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]);
    ir.kill(3).await.expect("stop node4");
    ir.start(3).await.expect("start node4 30 s ahead");
    ir.env = without;
    for via in [0, 3] {
        // Offsets are from whichever node answered (the dispatcher may answer for node1),
        // and a peer not heard from yet has none: wait until node4 shows 30 s ahead of
        // each of the others.
        let status = common::eventually("a clock warning", Duration::from_secs(20), || async {
            let s = common::status_json(ir, via).await?;
            let offset = |name: &str| {
                s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["name"] == name)
                    .unwrap()["clock_offset_ms"]
                    .as_i64()
                    .unwrap()
            };
            for other in ["node1", "node2", "node3"] {
                let ahead = offset("node4") - offset(other);
                if !(29_000..=31_000).contains(&ahead) {
                    return Err(format!("node4 ahead of {other} by {ahead} ms: {s}"));
                }
            }
            match s["warnings"].as_array().and_then(|w| w.first()) {
                Some(w) => Ok((w.as_str().unwrap_or("").to_string(), s)),
                None => Err(format!("no warning: {s}")),
            }
        })
        .await;
        let (warning, _) = status;
        assert!(
            warning.contains("clocks disagree by") && warning.contains("node4 is ahead"),
            "{warning}"
        );
        let text = shir_on(ir, via, &["status"]).await.expect("status");
        assert!(text.contains("Warning: the nodes' clocks disagree"), "{text}");
    }

    steps.step("node4 back in step: the warning goes");
    ir.kill(3).await.expect("stop node4");
    ir.start(3).await.expect("start node4");
    common::eventually("no clock warning", Duration::from_secs(20), || async {
        let s = common::status_json(ir, 0).await?;
        match s["warnings"].as_array().map(Vec::len) {
            Some(0) => Ok(()),
            _ => Err(format!("still warned: {s}")),
        }
    })
    .await;
}

/// Hourly windows over a PostgreSQL query, backfilled: each run reads exactly its hour, the
/// bounds substituted as timestamptz literals (raw text would not even parse as SQL).
async fn windows_of_a_postgres_query(ir: &LocalIr, share: &std::path::Path, steps: &common::Steps) {
    let Some(pg) = ThrowawayPostgres::start() else { return };
    steps.step("hourly windows over a PostgreSQL query, three backfilled");
    let db = pg.create_database().await;
    let hour = 3_600_000;
    let start = (now_ms() / hour - 3) * hour;
    let start_text = shir::cli::output::rfc3339_ms(start).unwrap();
    pg.client(&db)
        .await
        .batch_execute(&format!(
            "CREATE TABLE events (at timestamptz, v int);
             INSERT INTO events SELECT TIMESTAMPTZ '{start_text}' + g * INTERVAL '10 minutes', g
                    FROM generate_series(0, 17) g;"
        ))
        .await
        .expect("events");
    common::create_postgres_service(ir, 0, "warehouse", &pg, &db).await;
    let source = "warehouse:select v from events where at >= {window_start} and at < {window_end} order by v";
    let create = [
        "schedule",
        "create",
        "hourly",
        "--every",
        "1h",
        "--window",
        "--start",
        &start_text,
        "--max-concurrent-windows",
        "3",
        "--source",
        source,
        "--sink",
        "share:/events/{window_start:%Y%m%d%H}.csv",
    ];
    shir_on(ir, 1, &create).await.expect("create hourly");
    let done = runs_until(ir, "hourly", 3, |r| r["state"] == "Succeeded").await;
    for (k, run) in done.iter().enumerate() {
        assert_eq!(slot_ms(run), start + k as i64 * hour, "{run}");
        assert_eq!(run["rows"], 6, "six rows an hour: {run}");
        let name = chrono::DateTime::from_timestamp_millis(slot_ms(run))
            .unwrap()
            .format("%Y%m%d%H");
        let text = std::fs::read_to_string(share.join(format!("events/{name}.csv"))).expect("the window's file");
        let expected: Vec<String> = (0..6).map(|i| (k * 6 + i).to_string()).collect();
        assert_eq!(text.lines().skip(1).collect::<Vec<_>>(), expected, "window {k}");
    }
    let e = shir_on(
        ir,
        2,
        &[
            "schedule",
            "create",
            "quoted",
            "--every",
            "1h",
            "--source",
            "warehouse:select 1 where '{date}' > ''",
            "--sink",
            "share:/q.csv",
        ],
    )
    .await
    .expect_err("a placeholder inside quotes");
    assert!(e.contains("inside quotes"), "{e}");
}
