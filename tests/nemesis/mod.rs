//! Fault injection on four "machines" (network namespaces): form an IR, run the workload
//! while the nemesis injects faults, heal, let it settle, and check the history.

pub mod checker;
pub mod faults;
pub mod history;
pub mod hosts;
pub mod workload;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::Mutex;

use checker::{JobView, Observed, ServiceView, Verdict};
use faults::Nemesis;
use history::History;
use hosts::{Hosts, Net};
use workload::{Cli, CredentialProbe, Members, Workload};

/// How long a node may be silent before it is Offline in these runs (production: 4 s).
const OFFLINE_TIMEOUT_MS: u64 = 2000;

/// Workload workers sending operations at once.
const WORKERS: u64 = 3;

/// How long held jobs wait between staging and publishing.
const HOLD_MS: u64 = 1500;

/// One run: what it found, and where its files are (kept when it found something).
pub struct Outcome {
    pub verdict: Verdict,
    pub root: std::path::PathBuf,
}

/// Forms an IR on four namespaces, injects faults for `duration` from `seed`, checks.
pub async fn run(seed: u64, duration: Duration, exe: &str) -> Result<Outcome> {
    let begun = Instant::now();
    eprintln!(
        "nemesis: seed {seed} (replay with SHIR_NEMESIS_SEED={seed}), {} s of faults",
        duration.as_secs()
    );
    // Kept unless the run passes: the logs, the history and the share are the evidence.
    let root = tempfile::Builder::new().prefix("shir-nem-").tempdir()?.keep();
    eprintln!("nemesis: files in {}", root.display());
    let net = Net::create(4).context("cannot create the namespaces")?;
    let root_ip = net.root_ip();
    let mut hosts = Hosts::new(net, exe, &root, OFFLINE_TIMEOUT_MS);
    hosts.env = vec![
        ("NO_COLOR".into(), "1".into()),
        (
            "SHIR_LOG".into(),
            "info,shir::worker=debug,openraft=off,sled=warn,h2=warn,hyper=warn,tower=warn".into(),
        ),
        crate::common::failpoints(&[(crate::common::HOLD_BEFORE_PUBLISH, workload::HOLD_PREFIX, HOLD_MS)]),
    ];
    let logs = LogTails(root.clone());

    // Formation: init on the first machine, register the others with key1.
    hosts.provision(0, None).await?;
    hosts.start(0).await?;
    let local = |args: &[&str]| {
        let dir = root.join("node1");
        let mut cmd = std::process::Command::new(exe);
        cmd.args(args).arg("--data-dir").arg(dir);
        cmd
    };
    let key = poll("node1 to show its keys", Duration::from_secs(20), || {
        let out = local(&["key", "show", "--json"]).output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["key1"].as_str().map(str::to_string)
    })
    .await?;
    let admin_cert = root.join("admin.pem");
    let out_arg = admin_cert.to_string_lossy().into_owned();
    let issued = local(&["admin-cert", "issue", "--name", "nemesis", "--out", &out_arg]).output()?;
    if !issued.status.success() {
        bail!("admin-cert issue: {}", String::from_utf8_lossy(&issued.stderr));
    }
    for i in 1..4 {
        hosts.provision(i, Some(&key)).await?;
        hosts.start(i).await?;
    }
    let cli = Cli {
        exe: exe.into(),
        admin_cert,
    };
    let names = hosts.names();
    wait_settled(&cli, &hosts, &names, Duration::from_secs(60)).await?;
    eprintln!(
        "nemesis: four nodes formed an IR [{:.1}s]",
        begun.elapsed().as_secs_f64()
    );

    let share = root.join("share");
    let inputs = workload::write_inputs(&share, seed)?;
    let share_arg = share.to_string_lossy().into_owned();
    cli.call(
        &hosts.endpoint(0),
        &[
            "linked-service",
            "create",
            "share",
            "--type",
            "filesystem",
            "--root",
            &share_arg,
        ],
        None,
    )
    .await
    .map_err(|e| anyhow!("create the share: {e:?}"))?;
    let probe = CredentialProbe::start(&root_ip).await?;
    let history = Arc::new(History::new(seed));
    let members = Arc::new(Members::default());
    let hosts = Arc::new(Mutex::new(hosts));
    let load = Arc::new(Workload::new(cli, members, history.clone(), inputs, probe.url.clone()));
    let mut nemesis = Nemesis::new(hosts.clone(), load.clone(), history.clone(), seed);
    nemesis.members_changed().await;
    for (name, endpoint) in load.members.list() {
        let via = (name.clone(), endpoint);
        load.set_limit(&via, &name, 2).await;
    }

    // Faults, with the workload running throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(load.clone().run(seed.wrapping_add(w + 1), stop.clone())))
        .collect();
    nemesis.run(duration).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    eprintln!("nemesis: faults over, healing [{:.1}s]", begun.elapsed().as_secs_f64());

    // Heal: every machine runs a node again, no member without a machine, all settled.
    nemesis.heal().await?;
    for i in 0..4 {
        if hosts.lock().await.nodes[i].is_none() {
            nemesis.register(i).await?;
        }
    }
    remove_ghosts(&load, &hosts).await;
    let names = hosts.lock().await.names();
    wait_settled(&load.cli, &*hosts.lock().await, &names, Duration::from_secs(60)).await?;
    wait_jobs_final(&load).await;
    eprintln!("nemesis: settled, checking [{:.1}s]", begun.elapsed().as_secs_f64());

    let seen = observe(&load, &probe, &share, &names).await;
    hosts.lock().await.stop_all().await;
    let events = history::read_logs(&root);
    std::fs::write(root.join("history.txt"), history.dump())?;
    let verdict = checker::check(&history, &history.ops(), &events, &seen);
    eprintln!("{}", verdict.summary);
    eprintln!("nemesis: run took {:.1}s", begun.elapsed().as_secs_f64());
    drop(logs);
    if verdict.anomalies.is_empty() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(Outcome { verdict, root })
}

/// Polls `check` every 200 ms until it returns `Some`.
async fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every node lists exactly `names`, all Online voters, and a dispatcher.
async fn wait_settled(cli: &Cli, hosts: &Hosts, names: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    'poll: while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..hosts.nodes.len() {
            let Ok(status) = cli.json(&hosts.endpoint(i), &["status"], None).await else {
                last = format!("machine {i} does not answer status");
                continue 'poll;
            };
            let (listed, unwell, dispatcher) = read_status(&status);
            if listed.len() != names.len() || !unwell.is_empty() || dispatcher.is_empty() {
                last = format!("machine {i}: nodes {listed:?}, not well {unwell:?}, dispatcher '{dispatcher}'");
                continue 'poll;
            }
        }
        return Ok(());
    }
    bail!("the IR did not settle within {timeout:?}: {last}")
}

/// (names, names not Online voters, dispatcher) from `status --json`.
fn read_status(status: &serde_json::Value) -> (Vec<String>, Vec<String>, String) {
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let name = |n: &serde_json::Value| n["name"].as_str().unwrap_or_default().to_string();
    (
        nodes.iter().map(name).collect(),
        nodes
            .iter()
            .filter(|n| n["status"] != "Online" || n["raft_role"] != "Voter")
            .map(name)
            .collect(),
        status["dispatcher"].as_str().unwrap_or_default().to_string(),
    )
}

/// Removes members the IR lists that no machine runs (a registration whose answer was lost).
async fn remove_ghosts(load: &Workload, hosts: &Mutex<Hosts>) {
    let names = hosts.lock().await.names();
    let Some(via) = load.members.list().into_iter().next() else {
        return;
    };
    for _ in 0..20 {
        let Ok(status) = load.cli.json(&via.1, &["status"], None).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let ghosts: Vec<String> = read_status(&status)
            .0
            .into_iter()
            .filter(|n| !names.contains(n))
            .collect();
        if ghosts.is_empty() {
            return;
        }
        for ghost in ghosts {
            eprintln!("nemesis: removing {ghost}, registered without an answer");
            load.remove_node(&via, &ghost).await;
        }
    }
}

/// Every job a node lists, page by page: `job list` answers at most 1,000 jobs at a time,
/// oldest first, and a 30-minute run submits thousands.
async fn all_jobs(load: &Workload, endpoint: &str) -> Result<Vec<serde_json::Value>, history::Result> {
    let mut jobs: Vec<serde_json::Value> = Vec::new();
    loop {
        let mut args = vec!["job", "list", "--limit", "1000"];
        let last = jobs.last().and_then(|j| j["id"].as_str()).map(str::to_string);
        if let Some(last) = &last {
            args.extend(["--after", last.as_str()]);
        }
        let page = load.cli.json(endpoint, &args, None).await?;
        let page = page.as_array().cloned().unwrap_or_default();
        let full = page.len() == 1000;
        jobs.extend(page);
        if !full {
            return Ok(jobs);
        }
    }
}

/// Waits (up to two minutes) until no job is Queued or Running.
async fn wait_jobs_final(load: &Workload) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Some(via) = load.members.list().into_iter().next() else {
            return;
        };
        if let Ok(jobs) = all_jobs(load, &via.1).await
            && jobs.iter().all(|j| j["state"] != "Queued" && j["state"] != "Running")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("nemesis: jobs still unfinished after two minutes");
}

/// Asks every node what it holds, and reads the share's output.
async fn observe(load: &Workload, probe: &CredentialProbe, share: &Path, names: &[String]) -> Observed {
    let mut seen = Observed {
        members: names.to_vec(),
        default_limit: shir::node::sysload::default_jobs_limit(),
        ..Default::default()
    };
    for (node, endpoint) in load.members.list() {
        if let Ok(status) = load.cli.json(&endpoint, &["status"], None).await {
            seen.status.insert(node.clone(), read_status(&status));
        }
        if let Ok(jobs) = all_jobs(load, &endpoint).await {
            seen.jobs.insert(node.clone(), jobs.iter().map(job_view).collect());
        }
        if let Ok(keys) = load.cli.json(&endpoint, &["key", "show"], None).await {
            let key = |k: &str| workload::key_secret(keys[k].as_str().unwrap_or_default());
            seen.keys.insert(node.clone(), (key("key1"), key("key2")));
        }
        for service in workload::SERVICES {
            let Ok(shown) = load
                .cli
                .json(&endpoint, &["linked-service", "show", service], None)
                .await
            else {
                continue;
            };
            probe.take();
            let tested = load
                .cli
                .json(&endpoint, &["linked-service", "test", service], None)
                .await;
            let view = ServiceView {
                version: shown["version"].as_u64(),
                user: shown["fields"]["user"].as_str().map(str::to_string),
                test_ok: tested.as_ref().is_ok_and(|t| t["ok"] == true),
                test_message: match &tested {
                    Ok(t) => t["message"].as_str().unwrap_or_default().to_string(),
                    Err(e) => format!("{e:?}"),
                },
                sent: probe.take(),
            };
            seen.services.insert((service.to_string(), node.clone()), view);
        }
    }
    let out = share.join("out");
    let mut stack = vec![out];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let (Ok(rel), Ok(bytes)) = (path.strip_prefix(share), std::fs::read(&path)) {
                let rel = rel.to_string_lossy().into_owned();
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    use std::os::unix::fs::MetadataExt;
                    seen.changed_ms
                        .insert(rel.clone(), meta.ctime() * 1000 + meta.ctime_nsec() / 1_000_000);
                }
                seen.files.insert(rel, workload::sha256(&bytes));
            }
        }
    }
    seen
}

fn job_view(j: &serde_json::Value) -> JobView {
    let text = |k: &str| j[k].as_str().unwrap_or_default().to_string();
    JobView {
        id: text("id"),
        name: text("name"),
        state: text("state"),
        attempt: j["attempt"].as_u64().unwrap_or(0) as u32,
        error: j["error"].as_str().map(str::to_string),
        finished_ms: j["finished_at"].as_str().and_then(|t| {
            let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
            Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
        }),
    }
}

/// Prints the end of every node log if the run panics.
struct LogTails(std::path::PathBuf);

impl Drop for LogTails {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("===== last 30 lines of {} =====", path.display());
                eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
            }
        }
    }
}
