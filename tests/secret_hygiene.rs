//! No secret reaches a log (at trace level, every crate), CLI output other than the command
//! whose purpose is to show it, or a node's database: the authentication-key secrets (old
//! and regenerated), the data key, and the private keys of nodes and admins.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use shir::auth_key::AuthKey;

/// Every text form a secret might take in a log or a file.
fn encodings(secret: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    vec![
        hex::encode(secret),
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        format!("{secret:?}"),
    ]
}

/// The base64 lines of a PEM private key, long enough to be unique.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_string)
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_outputs_and_databases() {
    let tmp = common::tempdir();
    let port = common::free_port(2);
    let mut ir = common::local_ir(tmp.path(), port, 2);
    ir.env.push(("SHIR_LOG".into(), "trace".into()));
    let _logs = common::DumpLogsOnPanic::new(&ir);
    let dir0 = common::dir_arg(&ir, 0);

    ir.init(0, "hygiene-ir").await.expect("init");
    ir.start(0).await.expect("start");
    let keys = ir
        .wait_for("keys", Duration::from_secs(20), || async {
            ir.shir(&["key", "show", "--json", "--data-dir", &dir0]).await.ok()
        })
        .await
        .expect("key show");
    let keys: serde_json::Value = serde_json::from_str(&keys).expect("json");
    let key1 = keys["key1"].as_str().unwrap().to_string();
    let old_key2 = AuthKey::parse(keys["key2"].as_str().unwrap()).unwrap();
    let regenerated = ir
        .shir(&["key", "regenerate", "key2", "--json", "--data-dir", &dir0])
        .await
        .expect("regenerate");
    let regenerated: serde_json::Value = serde_json::from_str(&regenerated).expect("json");
    let new_key2 = AuthKey::parse(regenerated["key2"].as_str().unwrap()).unwrap();
    ir.register(1, &key1).await.expect("register");
    ir.start(1).await.expect("start node2");
    ir.wait_all_online(0, Duration::from_secs(30)).await.expect("online");
    let admin_file = tmp.path().join("ops.pem");
    let issued = ir
        .shir(&[
            "admin-cert",
            "issue",
            "--name",
            "ops",
            "--out",
            &admin_file.to_string_lossy(),
            "--data-dir",
            &dir0,
        ])
        .await
        .expect("admin-cert issue");
    let mut outputs = vec![issued];
    for i in 0..2 {
        outputs.push(
            ir.shir(&["status", "--data-dir", &common::dir_arg(&ir, i)])
                .await
                .expect("status"),
        );
        outputs.push(
            ir.shir(&["status", "--json", "--data-dir", &common::dir_arg(&ir, i)])
                .await
                .expect("status"),
        );
    }
    ir.stop_all().await;

    let mut needles: Vec<(String, String)> = Vec::new();
    for (what, secret) in [
        ("key1 secret", AuthKey::parse(&key1).unwrap().secret.expose().to_vec()),
        ("old key2 secret", old_key2.secret.expose().to_vec()),
        ("new key2 secret", new_key2.secret.expose().to_vec()),
        (
            "data key",
            shir::secrets::load_data_key(ir.nodes[0].dir.root())
                .expect("data key")
                .expose()
                .to_vec(),
        ),
    ] {
        needles.extend(encodings(&secret).into_iter().map(|e| (what.to_string(), e)));
    }
    for (what, pem_path) in [
        ("node1 private key", ir.nodes[0].dir.key_path()),
        ("node2 private key", ir.nodes[1].dir.key_path()),
        ("admin private key", admin_file.clone()),
    ] {
        let pem = std::fs::read_to_string(&pem_path).expect("read key");
        let key_part = &pem[pem.find("-----BEGIN PRIVATE KEY-----").expect("a private key")..];
        needles.extend(pem_lines(key_part).into_iter().map(|l| (what.to_string(), l)));
    }

    // Where secrets may legitimately be: the owner-only key files themselves.
    let allowed = |p: &Path| {
        p == admin_file
            || p.file_name()
                .is_some_and(|n| n == "node.key" || n == "local.key" || n == "data.key")
    };
    let mut files = Vec::new();
    files_under(tmp.path(), &mut files);
    let mut hits = Vec::new();
    let mut scanned = 0usize;
    for file in files.iter().filter(|f| !allowed(f)) {
        let bytes = std::fs::read(file).unwrap_or_default();
        scanned += bytes.len();
        let text = String::from_utf8_lossy(&bytes);
        for (what, needle) in &needles {
            if text.contains(needle.as_str()) {
                hits.push(format!("{what} in {}", file.display()));
            }
        }
    }
    for (i, out) in outputs.iter().enumerate() {
        for (what, needle) in &needles {
            if out.contains(needle.as_str()) {
                hits.push(format!("{what} in CLI output #{i}"));
            }
        }
    }
    let log_bytes: u64 = ir
        .nodes
        .iter()
        .map(|n| std::fs::metadata(&n.log).map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "scanned {} files ({scanned} bytes, {log_bytes} bytes of trace logs) for {} needles",
        files.len(),
        needles.len()
    );
    assert!(log_bytes > 100_000, "trace logging was not on: {log_bytes} bytes");
    hits.sort();
    hits.dedup();
    assert!(hits.is_empty(), "secrets found:\n{}", hits.join("\n"));
}
