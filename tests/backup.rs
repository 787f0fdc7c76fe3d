//! `shir backup create | restore` run as an operator runs them: a member of a live
//! three-node IR is backed up, lost with its data dir, restored into a new directory and
//! comes back as the same member with the writes it missed (through a snapshot: the leader
//! has purged the log behind it); and every bad input (wrong password, damaged file,
//! occupied data dir, missing files) is one line that changes nothing.

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use shir::cli::local_ir::LocalIr;
use shir::datadir::DataDir;
use shir::proto;

use common::{Steps, eventually};

const PASSWORD: &str = "backup pass phrase 7";

/// Small, so that the restored node's first entries are purged on the leader and it has to
/// catch up from a snapshot, as a node restored after weeks would.
const SNAPSHOT_EVERY: u64 = 40;

fn lower_snapshot_interval(ir: &LocalIr, i: usize) {
    let mut config = ir.nodes[i].dir.load_config().expect("node.json");
    config.snapshot_every_entries = Some(SNAPSHOT_EVERY);
    ir.nodes[i].dir.write_config(&config).expect("write node.json");
}

/// Runs `shir` with `args` (and `stdin`, if given); success, stdout, stderr.
fn shir(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(common::SHIR)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shir");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("run shir");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shir_ok(args: &[&str]) -> String {
    let (ok, out, err) = shir(args, None);
    assert!(ok, "{args:?} failed: {err}");
    out
}

/// Asserts a failure whose stderr is exactly one line `error: …` containing `words`, and
/// returns that line.
fn assert_refused(args: &[&str], stdin: Option<&str>, words: &str) -> String {
    let (ok, out, err) = shir(args, stdin);
    assert!(!ok, "{args:?} should fail; printed {out}");
    assert_eq!(err.lines().count(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(err.starts_with("error: "), "{args:?}: {err:?}");
    assert!(err.contains(words), "{args:?}: expected {words:?} in {err:?}");
    assert!(!err.contains(PASSWORD), "the password leaked into {err:?}");
    err.trim_end().to_string()
}

fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn write_password_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write password file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// Names and contents of the files directly in `dir`, to show a refusal changed nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let bytes = std::fs::read(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

async fn get(ir: &LocalIr, i: usize, key: &str) -> Result<Option<String>, String> {
    let reply = ir
        .admin(i)
        .await
        .map_err(|e| e.to_string())?
        .get(proto::GetRequest { key: key.into() })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    Ok(reply.found.then_some(reply.value))
}

async fn put(ir: &LocalIr, i: usize, key: &str, value: &str) {
    ir.admin(i)
        .await
        .expect("admin socket")
        .put(proto::PutRequest {
            key: key.into(),
            value: value.into(),
        })
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_member_rejoins_as_itself_and_catches_up() {
    let steps = Steps::new();
    steps.step(&format!(
        "form a three-node IR that snapshots every {SNAPSHOT_EVERY} entries"
    ));
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(3), 3);
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.init(0, "backup-ir").await.expect("init");
    lower_snapshot_interval(&ir, 0);
    ir.start(0).await.expect("start node1");
    let key = ir
        .wait_for("key1", Duration::from_secs(20), || async { ir.key1(0).await.ok() })
        .await
        .expect("key1");
    for i in 1..3 {
        ir.register(i, &key).await.expect("register");
        lower_snapshot_interval(&ir, i);
        ir.start(i).await.expect("start");
    }
    ir.wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("all three Online");

    steps.step("write enough that the log is purged behind a snapshot");
    for k in 0..3 * SNAPSHOT_EVERY {
        put(&ir, 0, &format!("before-{k}"), &format!("v{k}")).await;
    }
    // Whichever of node1 and node3 leads later, it no longer has the log's first entries.
    for i in [0, 2] {
        eventually("the log to be purged", Duration::from_secs(10), || async {
            let view = ir.local_view(i).await.map_err(|e| e.to_string())?;
            (view.purged_index > 0).then_some(()).ok_or(format!("{view:?}"))
        })
        .await;
    }

    steps.step("back up node2 while it runs");
    let password_file = write_password_file(tmp.path(), "password", &format!("{PASSWORD}\n"));
    let backup = tmp.path().join("node2.shirbackup");
    let node2_dir = ir.nodes[1].dir.root().to_path_buf();
    let before = common::status_json(&ir, 0).await.expect("status");
    let node2_id = before["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "node2")
        .expect("node2 in status")["id"]
        .clone();
    let out = shir_ok(&[
        "backup",
        "create",
        "--data-dir",
        &arg(&node2_dir),
        "--file",
        &arg(&backup),
        "--password-file",
        &arg(&password_file),
        "--json",
    ]);
    let made: serde_json::Value = serde_json::from_str(&out).expect("create --json is JSON");
    assert_eq!(made["node"], "node2");
    assert_eq!(made["node_id"], node2_id);
    assert_eq!(made["ir_name"], "backup-ir");
    assert_eq!(made["ir_id"], before["ir_id"]);
    assert_eq!(mode(&backup), 0o600, "the backup file must be owner-only");

    steps.step("lose node2: SIGKILL, delete its data dir");
    ir.kill(1).await.expect("kill node2");
    std::fs::remove_dir_all(&node2_dir).expect("delete node2's data dir");

    steps.step("write while node2 is gone");
    for k in 0..20 {
        put(&ir, 0, &format!("while-down-{k}"), &format!("w{k}")).await;
    }

    steps.step("restore node2 into a new, absent data dir");
    let restored_dir = tmp.path().join("node2-restored");
    let out = shir_ok(&[
        "backup",
        "restore",
        "--file",
        &arg(&backup),
        "--password-file",
        &arg(&password_file),
        "--data-dir",
        &arg(&restored_dir),
    ]);
    assert_eq!(
        out.trim_end(),
        format!(
            "restored node 'node2' (id {node2_id}) of IR 'backup-ir'; next: shir run --data-dir {}",
            restored_dir.display()
        )
    );
    assert_eq!(mode(&restored_dir), 0o700);
    for file in ["node.key", "local.key", "data.key"] {
        assert_eq!(mode(&restored_dir.join(file)), 0o600, "{file}");
    }
    assert!(!restored_dir.join("db").exists(), "restore must not make a database");

    steps.step("lose the dispatcher too, then start the restored node2 beside the last node");
    // node2 lost its log and its vote record. Were it to vote now, it and the remaining
    // node could elect a leader that lacks writes committed by the lost majority.
    let dispatcher = ir.dispatcher(0).await.expect("a dispatcher");
    let other = 2 - dispatcher; // the one of node1 (0) and node3 (2) that stays up
    ir.kill(dispatcher).await.expect("kill the dispatcher");
    ir.nodes[1].dir = DataDir::new(&restored_dir);
    ir.start(1).await.expect("restored node2 starts");
    let ids = [
        node2_id.as_u64().unwrap(),
        ir.local_view(other).await.expect("view").node_id,
    ];
    let watch_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < watch_until {
        for i in [1, other] {
            if let Ok(v) = ir.local_view(i).await {
                assert!(
                    !ids.contains(&v.leader_id),
                    "a leader was elected by the restored node's vote: {v:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&ir.nodes[1].log).unwrap_or_default();
    assert!(
        log.contains("not voting until"),
        "node2 should say it does not vote yet:\n{log}"
    );
    assert!(
        restored_dir.join("restored").exists(),
        "the restore marker is still there"
    );

    steps.step("the lost dispatcher returns: a leader, node2 catches up and votes again");
    ir.start(dispatcher).await.expect("restart the old dispatcher");
    eventually("the restore marker to go", Duration::from_secs(30), || async {
        if restored_dir.join("restored").exists() {
            Err("node2 has not caught up yet".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let log = std::fs::read_to_string(&ir.nodes[1].log).unwrap_or_default();
    assert!(log.contains("voting again"), "{log}");

    steps.step("it is the same member: same id, Online voter, no new node");
    let status = ir
        .wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("all three Online with node2 restored");
    assert_eq!(status.nodes.len(), 3, "restore must not add a node: {:?}", status.nodes);
    let node2 = status.nodes.iter().find(|n| n.name == "node2").expect("node2");
    assert_eq!(serde_json::json!(node2.id), node2_id);
    let own = eventually("node2 to see itself a voter", Duration::from_secs(30), || async {
        let own = ir.local_view(1).await.map_err(|e| e.to_string())?;
        if own.voters.contains(&own.node_id) {
            Ok(own)
        } else {
            Err(format!("node2's own view: {own:?}"))
        }
    })
    .await;
    assert_eq!(
        (own.name.as_str(), serde_json::json!(own.node_id)),
        ("node2", node2_id.clone())
    );
    let log = std::fs::read_to_string(&ir.nodes[1].log).unwrap_or_default();
    assert!(!log.contains("registered"), "a restored node must not register again");

    steps.step("node2's own state has what was written while it was gone");
    for k in 0..20 {
        let key = format!("while-down-{k}");
        let value = eventually(&format!("{key} on node2"), Duration::from_secs(30), || {
            let (ir, key) = (&ir, &key);
            async move { get(ir, 1, key).await?.ok_or_else(|| format!("node2 lacks {key}")) }
        })
        .await;
        assert_eq!(value, format!("w{k}"));
    }
    assert_eq!(get(&ir, 1, "before-3").await.expect("get"), Some("v3".into()));
    let own = ir.local_view(1).await.expect("node2's local view");
    assert!(own.snapshot_index > 0, "node2 has no snapshot: {own:?}");

    steps.step("and every node, the restored one included, applies new writes");
    put(&ir, 1, "after-restore", "yes").await;
    for i in 0..3 {
        eventually(
            &format!("after-restore on node{}", i + 1),
            Duration::from_secs(10),
            || {
                let ir = &ir;
                async move {
                    get(ir, i, "after-restore")
                        .await?
                        .ok_or_else(|| format!("node{} lacks after-restore", i + 1))
                }
            },
        )
        .await;
    }
    // A leader that finds a follower's log gone asserts in debug builds unless openraft's
    // `loosen-follower-log-revert` is on; the IR then limps on with a new leader, so only
    // the logs show it.
    for n in &ir.nodes {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", n.name);
    }

    steps.step("done");
    ir.stop_all().await;
}

/// Every form a secret could take in the file if it were stored in the clear.
fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        STANDARD.encode(secret).into_bytes(),
        STANDARD_NO_PAD.encode(secret).into_bytes(),
        URL_SAFE.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backups_and_targets_are_refused_and_change_nothing() {
    let steps = Steps::new();
    let tmp = common::tempdir();
    let ir = common::local_ir(tmp.path(), common::free_port(1), 1);
    steps.step("a node to back up (initialised, not running)");
    ir.init(0, "refusals-ir").await.expect("init");
    let source = ir.nodes[0].dir.root().to_path_buf();
    let password_file = write_password_file(tmp.path(), "password", &format!("{PASSWORD}\r\n"));
    let backup = tmp.path().join("node1.shirbackup");
    let started = std::time::Instant::now();
    let out = shir_ok(&[
        "backup",
        "create",
        "--data-dir",
        &arg(&source),
        "--file",
        &arg(&backup),
        "--password-file",
        &arg(&password_file),
    ]);
    eprintln!("backup create took {:?}", started.elapsed());
    assert!(
        out.starts_with("backed up node 'node1' (id 1) of IR 'refusals-ir' (") && out.contains(&arg(&backup)),
        "{out}"
    );
    let good = std::fs::read(&backup).expect("read backup");

    steps.step("the file holds neither the data key, nor the node key, nor the password");
    let data_key = shir::secrets::load_data_key(&source).expect("load the data key");
    let key_pem = std::fs::read_to_string(source.join("node.key")).expect("node.key");
    let mut secrets = encodings(data_key.expose());
    secrets.extend(encodings(PASSWORD.as_bytes()));
    secrets.push(key_pem.clone().into_bytes());
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(|l| l.as_bytes().to_vec()),
    );
    for secret in &secrets {
        assert!(
            !contains(&good, secret),
            "the backup holds a secret in the clear: {}",
            String::from_utf8_lossy(secret)
        );
    }
    assert!(
        !contains(&good, b"refusals-ir"),
        "the payload must be encrypted as a whole"
    );

    steps.step("create refuses an existing --file, a missing or empty password file");
    let create = |file: &Path, password: &Path| {
        vec![
            "backup".to_string(),
            "create".into(),
            "--data-dir".into(),
            arg(&source),
            "--file".into(),
            arg(file),
            "--password-file".into(),
            arg(password),
        ]
    };
    let refuse_create = |args: Vec<String>, words: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, None, words)
    };
    refuse_create(create(&backup, &password_file), "already exists");
    assert_eq!(
        std::fs::read(&backup).expect("read backup"),
        good,
        "the existing file is untouched"
    );
    let other = tmp.path().join("other.shirbackup");
    let missing_password = tmp.path().join("no-such-password");
    let err = refuse_create(create(&other, &missing_password), "cannot read password file");
    assert!(err.contains(&arg(&missing_password)), "{err}");
    let empty_password = write_password_file(tmp.path(), "empty", "\n");
    refuse_create(create(&other, &empty_password), "empty password");
    refuse_create(
        create(&other, &password_file)
            .into_iter()
            .map(|a| {
                if a == arg(&source) {
                    arg(&tmp.path().join("nowhere"))
                } else {
                    a
                }
            })
            .collect(),
        "holds no shir node",
    );
    assert!(!other.exists(), "a refused create writes no file");

    let target = tmp.path().join("target");
    let restore = |file: &Path, password: &Path| {
        vec![
            "backup".to_string(),
            "restore".into(),
            "--file".into(),
            arg(file),
            "--password-file".into(),
            arg(password),
            "--data-dir".into(),
            arg(&target),
        ]
    };
    let refuse_restore = |args: Vec<String>, words: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = assert_refused(&args, None, words);
        assert!(
            !target.exists(),
            "a refused restore must not create {}",
            target.display()
        );
        line
    };

    steps.step("wrong password");
    let wrong = write_password_file(tmp.path(), "wrong", &format!("{PASSWORD}x\n"));
    let wrong_password = refuse_restore(restore(&backup, &wrong), "wrong password, or the file was altered");

    steps.step("truncated, altered ciphertext, altered header: each its own message");
    let damaged = |name: &str, bytes: &[u8]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).expect("write damaged copy");
        path
    };
    let truncated = damaged("truncated", &good[..good.len() - 40]);
    let truncated = refuse_restore(restore(&truncated, &password_file), "truncated");
    let header_cut = damaged("header-cut", &good[..60]);
    refuse_restore(restore(&header_cut, &password_file), "truncated");
    let mut flipped = good.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 0x01;
    let flipped = damaged("flipped-ciphertext", &flipped);
    let altered = refuse_restore(
        restore(&flipped, &password_file),
        "wrong password, or the file was altered",
    );
    let mut header = good.clone();
    header[30] ^= 0x01; // inside the salt
    let header = damaged("flipped-header", &header);
    let header = refuse_restore(restore(&header, &password_file), "header is damaged");
    let mut magic = good.clone();
    magic[0] ^= 0x20;
    let magic = damaged("flipped-magic", &magic);
    let magic = refuse_restore(restore(&magic, &password_file), "not a shir backup file");
    // The cause, after "cannot restore from <file>: ".
    let cause = |line: &str| {
        line.split_once(": ")
            .map(|(_, rest)| rest.split_once(": ").map_or("", |c| c.1).to_string())
    };
    let distinct: std::collections::BTreeSet<_> = [&truncated, &altered, &header, &magic].map(|l| cause(l)).into();
    assert_eq!(
        distinct.len(),
        4,
        "each kind of damage needs its own message: {distinct:?}"
    );
    // An AEAD cannot tell a wrong password from altered ciphertext; both say so.
    assert_eq!(cause(&wrong_password), cause(&altered));

    steps.step("missing backup file, missing password file");
    let missing = tmp.path().join("no-such-backup");
    refuse_restore(restore(&missing, &password_file), "cannot read the backup file");
    let err = refuse_restore(restore(&backup, &missing_password), "cannot read password file");
    assert!(err.contains(&arg(&missing_password)), "{err}");

    steps.step("a target data dir that is not empty is left as it was");
    std::fs::create_dir(&target).expect("mkdir target");
    std::fs::write(target.join("keep.txt"), b"operator's file").expect("write keep.txt");
    let before = snapshot(&target);
    let args = restore(&backup, &password_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_refused(&args, None, "is not empty");
    assert_eq!(snapshot(&target), before);
    // A wrong password into an existing empty dir leaves it empty.
    std::fs::remove_file(target.join("keep.txt")).expect("empty target");
    let args = restore(&backup, &wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_refused(&args, None, "wrong password");
    assert!(snapshot(&target).is_empty(), "refused restore wrote into the empty dir");
    // Nor is a provisioned node overwritten.
    let args = restore(&backup, &password_file);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let source_arg = arg(&source);
    *args.last_mut().expect("data dir") = &source_arg;
    let before = snapshot(&source);
    assert_refused(&args, None, "already holds a shir node");
    assert_eq!(snapshot(&source), before);

    steps.step("a good restore into the existing empty dir, password on stdin");
    let started = std::time::Instant::now();
    let (ok, out, err) = shir(
        &[
            "backup",
            "restore",
            "--file",
            &arg(&backup),
            "--password-stdin",
            "--data-dir",
            &arg(&target),
            "--json",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    eprintln!("backup restore took {:?}", started.elapsed());
    assert!(ok, "restore failed: {err}");
    let restored: serde_json::Value = serde_json::from_str(&out).expect("restore --json is JSON");
    assert_eq!(restored["node"], "node1");
    assert_eq!(restored["node_id"], 1);
    assert_eq!(restored["ir_name"], "refusals-ir");
    assert!(restored["backup_created"].is_string(), "{restored}");
    let files = DataDir::new(&target).load().expect("the restored dir loads");
    assert!(files.data_key == data_key, "same data key");
    assert_eq!(files.key_pem.expose(), key_pem);
    for same in ["node.crt", "ca.crt", "node.json"] {
        assert_eq!(
            std::fs::read(target.join(same)).expect("restored file"),
            std::fs::read(source.join(same)).expect("source file"),
            "{same}"
        );
    }
    assert_ne!(
        std::fs::read(target.join("local.key")).expect("restored local.key"),
        std::fs::read(source.join("local.key")).expect("source local.key"),
        "local.key belongs to a machine; restore makes a new one"
    );
    assert_eq!(mode(&target), 0o700);
}
