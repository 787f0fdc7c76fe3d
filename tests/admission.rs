//! Proves that `shir register` admits a node only with a current authentication key of this
//! IR, a free name and room in the IR, and that every refusal is a one-line error, a non-zero
//! exit, and leaves the target data dir exactly as it was (absent, or empty).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use shir::auth_key::AuthKey;
use shir::cli::local_ir::LocalIr;

use common::{DumpLogsOnPanic, Steps, dir_arg, eventually, free_port};

const PREFIX: &str = "SHIR1@";

/// One `shir register` attempt, with the key in a file beside `dir` (as an operator passes it).
async fn register(ir: &LocalIr, dir: &Path, name: &str, listen: &str, key: &str) -> (Result<String, String>, Duration) {
    let key_file = dir.with_extension("auth-key");
    std::fs::write(&key_file, format!("{key}\n")).expect("write the key file");
    let key_file = key_file.to_string_lossy().into_owned();
    let started = Instant::now();
    let dir = dir.to_string_lossy();
    let out = ir
        .shir(&[
            "register",
            "--data-dir",
            &dir,
            "--name",
            name,
            "--listen",
            listen,
            "--auth-key-file",
            &key_file,
        ])
        .await
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&key_file);
    (out, started.elapsed())
}

/// Runs the registration twice, into an absent dir and into an existing empty one; both must
/// be refused with every word of `words` in a one-line error and leave the dir untouched.
/// Returns the error and the slower of the two durations.
async fn expect_refused(
    ir: &LocalIr,
    scratch: &Path,
    name: &str,
    listen: &str,
    key: &str,
    words: &[&str],
) -> (String, Duration) {
    let absent: PathBuf = scratch.join(format!("absent-{}", rand::random::<u32>()));
    let empty: PathBuf = scratch.join(format!("empty-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&empty).expect("create an empty dir");
    let mut slowest = Duration::ZERO;
    let mut message = String::new();
    for dir in [&absent, &empty] {
        let (out, took) = register(ir, dir, name, listen, key).await;
        let err = match out {
            Ok(stdout) => panic!("registration of {name} into {} succeeded: {stdout}", dir.display()),
            Err(e) => e,
        };
        assert!(!err.trim().contains('\n'), "the error is one line: {err:?}");
        let lower = err.to_lowercase();
        for w in words {
            assert!(lower.contains(&w.to_lowercase()), "error lacks {w:?}: {err}");
        }
        if dir == &absent {
            assert!(!absent.exists(), "a refused register created {}", absent.display());
        } else {
            let left: Vec<_> = std::fs::read_dir(&empty).expect("read dir").collect();
            assert!(
                left.is_empty(),
                "a refused register left {left:?} in {}",
                empty.display()
            );
        }
        slowest = slowest.max(took);
        message = err;
    }
    let _ = std::fs::remove_dir(&empty);
    (message, slowest)
}

async fn keys(ir: &LocalIr, via: usize) -> (String, String) {
    let out = ir
        .shir(&["key", "show", "--json", "--data-dir", &dir_arg(ir, via)])
        .await
        .expect("key show");
    let v: Value = serde_json::from_str(&out).expect("key show --json is JSON");
    (
        v["key1"].as_str().expect("key1").to_string(),
        v["key2"].as_str().expect("key2").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_bad_keys_duplicates_and_a_fifth_node() {
    let steps = Steps::new();
    let tmp = common::tempdir();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    // Five loopback addresses: the fifth node is refused at 127.0.0.5 on the same port.
    let port = free_port(5);
    let mut ir = common::local_ir(tmp.path(), port, 4);
    let mut logs = DumpLogsOnPanic::new(&ir);

    steps.step("form a three-node IR: init node1, register node2 and node3");
    ir.init(0, "admission-ir").await.expect("init node1");
    ir.start(0).await.expect("start node1");
    let key1 = ir
        .wait_for("node1 to lead", Duration::from_secs(20), || async {
            ir.key1(0).await.ok()
        })
        .await
        .expect("key1");
    for i in 1..3 {
        ir.register(i, &key1).await.expect("register");
        ir.start(i).await.expect("start");
    }
    let status = ir
        .wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("three Online voters");
    assert_eq!(status.nodes.len(), 3);
    let (key1, key2) = keys(&ir, 0).await;
    let node4_dir = ir.nodes[3].dir.root().to_path_buf();
    let node4_addr = ir.nodes[3].address.clone();

    steps.step("garbled key (one character flipped): checksum error, fast, nothing written");
    let mid = key1.len() / 2;
    let flipped = if key1.as_bytes()[mid] == b'A' { "B" } else { "A" };
    let garbled = format!("{}{flipped}{}", &key1[..mid], &key1[mid + 1..]);
    let (err, took) = expect_refused(&ir, &scratch, "node4", &node4_addr, &garbled, &["damaged", "checksum"]).await;
    eprintln!("garbled key refused in {} ms: {err}", took.as_millis());
    assert!(
        took < Duration::from_millis(1000),
        "a garbled key must fail before any network call ({took:?})"
    );
    assert!(!node4_dir.exists());

    steps.step("truncated key: refused as truncated");
    // Cut to half at a whole base64 quantum (see `every_truncation_is_reported_as_truncated`
    // for the other cut points).
    let body = key1.len() - PREFIX.len();
    let cut = PREFIX.len() + body / 2 / 4 * 4;
    let (err, took) = expect_refused(&ir, &scratch, "node4", &node4_addr, &key1[..cut], &["truncated"]).await;
    eprintln!("truncated key refused in {} ms: {err}", took.as_millis());
    assert!(took < Duration::from_millis(1000), "{took:?}");
    // Only the last quantum lost: the checksum catches it.
    let cut = PREFIX.len() + (body - 1) / 4 * 4;
    let (err, _) = expect_refused(&ir, &scratch, "node4", &node4_addr, &key1[..cut], &["truncated"]).await;
    eprintln!("key missing its last characters refused: {err}");

    steps.step("wrong key (right IR, CA pin and endpoints; random secret): rejected by the IR");
    let real = AuthKey::parse(&key1).expect("key1 parses");
    let wrong = common::with_random_secret(&real).encode();
    let (err, _) = expect_refused(
        &ir,
        &scratch,
        "node4",
        &node4_addr,
        &wrong,
        &["authentication key rejected"],
    )
    .await;
    eprintln!("wrong key: {err}");

    steps.step("duplicate name (node2 at node4's address) and duplicate address: refused");
    let (err, _) = expect_refused(
        &ir,
        &scratch,
        "node2",
        &node4_addr,
        &key1,
        &["node2", "already registered"],
    )
    .await;
    eprintln!("duplicate name: {err}");
    let (err, _) = expect_refused(
        &ir,
        &scratch,
        "node4",
        &ir.nodes[1].address,
        &key1,
        &["already used", "node2"],
    )
    .await;
    eprintln!("duplicate address: {err}");

    steps.step("regenerate key2: the old key2 is refused; every node shows the new one at once");
    let out = ir
        .shir(&["key", "regenerate", "key2", "--json", "--data-dir", &dir_arg(&ir, 1)])
        .await
        .expect("key regenerate key2");
    let regenerated: Value = serde_json::from_str(&out).expect("regenerate --json is JSON");
    let new_key2 = regenerated["key2"].as_str().expect("key2").to_string();
    assert!(new_key2.starts_with(PREFIX));
    assert_ne!(new_key2, key2, "key2 changed");
    assert_eq!(regenerated["key1"].as_str(), Some(key1.as_str()), "key1 untouched");
    for via in [2, 0] {
        let (k1, k2) = keys(&ir, via).await;
        assert_eq!(
            (k1.as_str(), k2.as_str()),
            (key1.as_str(), new_key2.as_str()),
            "via node{}",
            via + 1
        );
    }
    let (err, _) = expect_refused(
        &ir,
        &scratch,
        "node4",
        &node4_addr,
        &key2,
        &["authentication key rejected"],
    )
    .await;
    eprintln!("old key2: {err}");

    steps.step("a key of another IR: refused, nothing written");
    let other_port = free_port(1);
    let mut other = common::local_ir(&tmp.path().join("other"), other_port, 1);
    logs.watch(&other, "other-");
    other.init(0, "other-ir").await.expect("init the other IR");
    other.start(0).await.expect("start the other IR");
    let other_key = other
        .wait_for("the other IR to lead", Duration::from_secs(20), || async {
            other.key1(0).await.ok()
        })
        .await
        .expect("the other IR's key1");
    let other_key = AuthKey::parse(&other_key).expect("other key parses");
    assert_ne!(other_key.ir_id, real.ir_id);
    // The other IR's key pointed at this IR's nodes: this IR's CA fails the key's pin.
    let foreign_pin = AuthKey::new(
        other_key.ir_id.clone(),
        1,
        other_key.secret.expose(),
        other_key.ca_pin,
        real.endpoints.clone(),
    )
    .expect("well-formed")
    .encode();
    let (err, _) = expect_refused(&ir, &scratch, "node4", &node4_addr, &foreign_pin, &["pin"]).await;
    eprintln!("another IR's key at this IR's endpoints: {err}");
    // The other IR's id and secret behind this IR's pin: the IR names the mismatch.
    let foreign_id = AuthKey::new(
        other_key.ir_id.clone(),
        1,
        other_key.secret.expose(),
        real.ca_pin,
        real.endpoints.clone(),
    )
    .expect("well-formed")
    .encode();
    let (err, _) = expect_refused(
        &ir,
        &scratch,
        "node4",
        &node4_addr,
        &foreign_id,
        &["another integration runtime"],
    )
    .await;
    eprintln!("another IR's id: {err}");
    other.stop_all().await;
    assert!(!node4_dir.exists());

    steps.step("register node4 with the new key2: admitted, Online voter");
    let (out, _) = register(&ir, &node4_dir, "node4", &node4_addr, &new_key2).await;
    let out = out.expect("node4 registers with the new key2");
    assert!(out.contains("node4"), "{out}");
    ir.start(3).await.expect("start node4");
    let status = ir
        .wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("four Online voters");
    assert_eq!(status.nodes.len(), 4);
    eventually(
        "node4 to be a voter in node4's own view",
        Duration::from_secs(20),
        || {
            let ir = &ir;
            async move {
                let v = ir.local_view(3).await.map_err(|e| e.to_string())?;
                if v.voters.len() == 4 && v.voters.contains(&v.node_id) {
                    Ok(())
                } else {
                    Err(format!("{v:?}"))
                }
            }
        },
    )
    .await;

    steps.step("a fifth node (node5 at 127.0.0.5): refused, the IR has 4 nodes");
    let (key1_now, _) = keys(&ir, 3).await;
    let node5_dir = tmp.path().join("node5");
    let node5_addr = format!("127.0.0.5:{port}");
    let (err, _) = expect_refused(&ir, &scratch, "node5", &node5_addr, &key1_now, &["4 nodes"]).await;
    eprintln!("fifth node: {err}");
    let (out, _) = register(&ir, &node5_dir, "node5", &node5_addr, &key1_now).await;
    assert!(out.is_err(), "{out:?}");
    assert!(!node5_dir.exists());
    assert_eq!(ir.status(2).await.expect("status").nodes.len(), 4);

    steps.step("done");
    ir.stop_all().await;
}

/// A key cut at any point is reported as truncated (or damaged), whatever the cut's position
/// in base64's 4-character groups; no network is involved, so no IR is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_truncation_is_reported_as_truncated() {
    let tmp = common::tempdir();
    let ir = common::local_ir(tmp.path(), 1, 1);
    let key = AuthKey::new(
        "0123456789abcdef0123456789abcdef".into(),
        1,
        &rand::random::<[u8; 32]>(),
        rand::random::<[u8; 32]>(),
        vec!["127.0.0.1:1".into(), "127.0.0.2:1".into()],
    )
    .expect("a well-formed key")
    .encode();
    let dir = tmp.path().join("never");
    let mut wrong = Vec::new();
    for cut in PREFIX.len() + 8..key.len() {
        let (out, _) = register(&ir, &dir, "node9", "127.0.0.9:1", &key[..cut]).await;
        match out {
            Ok(stdout) => panic!("a key cut to {cut} characters was accepted: {stdout}"),
            Err(e) if e.contains("truncated") => {}
            Err(e) => wrong.push(format!("cut at {cut}/{}: {e}", key.len())),
        }
        assert!(!dir.exists());
    }
    assert!(
        wrong.is_empty(),
        "{} of {} truncations were not reported as truncated, e.g.:\n{}",
        wrong.len(),
        key.len() - PREFIX.len() - 8,
        wrong[..wrong.len().min(6)].join("\n")
    );
}
