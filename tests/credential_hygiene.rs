//! Linked-service passwords never leave their sealed form where anyone could read them: a
//! password that is a unique sentinel is created, updated, tested, shown, encrypted as a
//! blob, used as the proxy password, refused in errors, and carried through a restart and a
//! dispatcher failover; then every file under the IR's directory (data dirs, sled, snapshots,
//! trace-level logs) and every CLI output is searched for it, raw, hex and base64.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use shir::cli::local_ir::LocalIr;

/// Text forms a secret could take: raw, hex, and base64 (standard and URL-safe) at each of
/// the three alignments it could have inside a longer encoded value.
fn forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut out = vec![secret.to_string(), hex::encode(secret)];
    for pad in 0..3 {
        let bytes = [&b"xx"[..pad], secret.as_bytes()].concat();
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&bytes);
            // The first and last groups depend on the bytes around the secret.
            out.push(encoded[4..encoded.len() - 4].to_string());
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

struct Session<'a> {
    ir: &'a LocalIr,
    outputs: Vec<(String, String)>,
}

impl Session<'_> {
    /// Runs `shir` against node `i` and keeps its output (stdout, or the error) for the search.
    async fn run(&mut self, i: usize, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let dir = common::dir_arg(self.ir, i);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", &dir]);
        let result = self.ir.shir_with_input(&all, input).await.map_err(|e| e.to_string());
        let text = match &result {
            Ok(out) => out.clone(),
            Err(e) => e.clone(),
        };
        self.outputs.push((args.join(" "), text));
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_service_passwords_never_appear_in_clear() {
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(3), 3);
    ir.env.push(("SHIR_LOG".into(), "trace".into()));
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.form("hygiene-ir").await.expect("three nodes form an IR");
    let tag = hex::encode(shir::secrets::SecretBytes::random(8).expose());
    let sentinels: Vec<String> = (1..=6).map(|n| format!("Sentinel{n}-{tag}-pw")).collect();

    steps.step("a PostgreSQL role whose password is the sentinel, if a server is available");
    let pg = common::test_postgres();
    let role = format!("shir_hyg_{tag}");
    let admin = match &pg {
        Some(c) => {
            let conn: String = c.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{}'", sentinels[0]))
                .await
                .expect("create role");
            Some(client)
        }
        None => None,
    };
    let (host, port, db) = match &pg {
        Some(c) => (
            c["host"].clone(),
            c.get("port").cloned().unwrap_or("5432".into()),
            c.get("dbname").cloned().unwrap_or("postgres".into()),
        ),
        None => ("127.0.0.1".to_string(), "1".to_string(), "postgres".to_string()),
    };
    let mut s = Session {
        ir: &ir,
        outputs: Vec::new(),
    };
    let line = |n: usize| format!("{}\n", sentinels[n]);

    steps.step("create, show, list, test");
    let pg_args = [
        "linked-service",
        "create",
        "warehouse",
        "--type",
        "postgres",
        "--host",
        &host,
        "--port",
        &port,
        "--database",
        &db,
        "--user",
        &role,
        "--password-stdin",
    ];
    s.run(1, &pg_args, Some(&line(0))).await.expect("create");
    let mut json_args = pg_args.to_vec();
    json_args.push("--json");
    // Refused (the name is taken): the error must not echo the password either.
    s.run(2, &json_args, Some(&line(0))).await.expect_err("duplicate");
    for i in 0..3 {
        s.run(i, &["linked-service", "show", "warehouse"], None)
            .await
            .expect("show");
        s.run(i, &["linked-service", "show", "warehouse", "--json"], None)
            .await
            .expect("show");
        s.run(i, &["linked-service", "list"], None).await.expect("list");
        s.run(i, &["linked-service", "list", "--json"], None)
            .await
            .expect("list");
        let tested = s.run(i, &["linked-service", "test", "warehouse", "--json"], None).await;
        assert_eq!(tested.is_ok(), pg.is_some(), "test from node{}: {tested:?}", i + 1);
    }

    steps.step("update the password; the old and the new one are both searched for");
    if let Some(client) = &admin {
        client
            .batch_execute(&format!("ALTER ROLE {role} PASSWORD '{}'", sentinels[1]))
            .await
            .expect("alter role");
    }
    s.run(
        0,
        &["linked-service", "update", "warehouse", "--password-stdin"],
        Some(&line(1)),
    )
    .await
    .expect("update");
    s.run(
        0,
        &["linked-service", "update", "nosuch", "--password-stdin"],
        Some(&line(1)),
    )
    .await
    .expect_err("no such service");
    let tested = s.run(2, &["linked-service", "test", "warehouse"], None).await;
    assert_eq!(tested.is_ok(), pg.is_some(), "{tested:?}");
    if pg.is_none() {
        // Connection failures are reported without the password.
        assert!(tested.unwrap_err().contains("failed from node"));
    }

    steps.step("an encrypted credential and the proxy password");
    let blob = s
        .run(
            1,
            &[
                "credential",
                "encrypt",
                "--type",
                "http",
                "--url",
                "https://x.invalid/",
                "--user",
                "u",
                "--password-stdin",
            ],
            Some(&line(2)),
        )
        .await
        .expect("encrypt");
    let blob_file = tmp.path().join("web.cred");
    std::fs::write(&blob_file, blob.trim()).unwrap();
    s.run(
        2,
        &[
            "linked-service",
            "create",
            "web",
            "--encrypted-credential",
            &blob_file.to_string_lossy(),
        ],
        None,
    )
    .await
    .expect("create from blob");
    s.run(
        0,
        &[
            "settings",
            "proxy",
            "set",
            "--address",
            "127.0.0.1",
            "--port",
            "9",
            "--user",
            "p",
            "--password-stdin",
        ],
        Some(&line(3)),
    )
    .await
    .expect("proxy");
    s.run(1, &["settings", "proxy", "show"], None)
        .await
        .expect("proxy show");
    s.run(2, &["settings", "proxy", "show", "--json"], None)
        .await
        .expect("proxy show");
    // The HTTP test goes to a closed proxy port: its error must not carry the passwords.
    s.run(1, &["linked-service", "test", "web"], None)
        .await
        .expect_err("closed proxy");

    steps.step("object-store secrets, from standard input and from a file");
    s.run(
        0,
        &[
            "linked-service",
            "create",
            "lake",
            "--type",
            "s3",
            "--set",
            "bucket=b",
            "--set",
            "region=r",
            "--set",
            "endpoint=http://127.0.0.1:9",
            "--set",
            "access_key_id=AK",
            "--secret-stdin",
            "secret_access_key",
        ],
        Some(&line(4)),
    )
    .await
    .expect("s3 service");
    // Outside the directory searched below: the file is the operator's, not shir's.
    let elsewhere = tempfile::tempdir().unwrap();
    let sas_file = elsewhere.path().join("sas.txt");
    std::fs::write(&sas_file, line(5)).unwrap();
    s.run(
        1,
        &[
            "linked-service",
            "create",
            "blob",
            "--type",
            "azure-blob",
            "--set",
            "account=acct",
            "--set",
            "container=c",
            "--set",
            "endpoint=http://127.0.0.1:9/acct",
            "--secret-file",
            &format!("sas_token={}", sas_file.display()),
        ],
        None,
    )
    .await
    .expect("azure-blob service");
    drop(elsewhere);
    for name in ["lake", "blob"] {
        s.run(2, &["linked-service", "show", name, "--json"], None)
            .await
            .expect("show");
        // Nothing listens on port 9: the error must not carry the secret.
        s.run(2, &["linked-service", "test", name], None)
            .await
            .expect_err("closed port");
    }

    steps.step("restart a node, fail the dispatcher over, use the credentials again");
    let mut outputs = std::mem::take(&mut s.outputs);
    drop(s);
    ir.signal(2, libc::SIGTERM).await.unwrap();
    ir.wait_exit(2, Duration::from_secs(10)).await;
    ir.start(2).await.unwrap();
    ir.wait_all_online(0, Duration::from_secs(30)).await.unwrap();
    let dispatcher = ir.dispatcher(0).await.unwrap();
    ir.kill(dispatcher).await.unwrap();
    let survivor = (dispatcher + 1) % 3;
    ir.wait_for("a new dispatcher", Duration::from_secs(20), || async {
        let st = ir.status(survivor).await.ok()?;
        (!st.dispatcher.is_empty() && st.dispatcher != ir.nodes[dispatcher].name).then_some(())
    })
    .await
    .unwrap();
    let mut s = Session {
        ir: &ir,
        outputs: Vec::new(),
    };
    for i in (0..3).filter(|i| *i != dispatcher) {
        let tested = s.run(i, &["linked-service", "test", "warehouse", "--json"], None).await;
        assert_eq!(
            tested.is_ok(),
            pg.is_some(),
            "after failover, node{}: {tested:?}",
            i + 1
        );
        s.run(i, &["status"], None).await.expect("status");
        s.run(i, &["status", "--json"], None).await.expect("status");
        s.run(i, &["linked-service", "show", "warehouse", "--json"], None)
            .await
            .expect("show");
    }
    outputs.append(&mut s.outputs);
    drop(s);
    ir.stop_all().await;
    if let Some(client) = &admin {
        let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
    }

    steps.step("search every file and every output");
    let mut needles = Vec::new();
    for secret in &sentinels[..6] {
        needles.extend(forms(secret));
    }
    let mut files = Vec::new();
    files_under(tmp.path(), &mut files);
    let mut hits = Vec::new();
    let mut scanned = 0usize;
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        scanned += bytes.len();
        let text = String::from_utf8_lossy(&bytes);
        hits.extend(
            needles
                .iter()
                .filter(|n| text.contains(n.as_str()))
                .map(|n| format!("{n} in {}", file.display())),
        );
    }
    for (command, out) in &outputs {
        hits.extend(
            needles
                .iter()
                .filter(|n| out.contains(n.as_str()))
                .map(|n| format!("{n} in `shir {command}`")),
        );
    }
    let log_bytes: u64 = ir
        .nodes
        .iter()
        .map(|n| std::fs::metadata(&n.log).map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "searched {} files ({scanned} bytes, {log_bytes} of trace logs) and {} CLI outputs for {} forms of 4 passwords",
        files.len(),
        outputs.len(),
        needles.len()
    );
    assert!(log_bytes > 100_000, "trace logging was not on: {log_bytes} bytes");
    // The search must be able to find what it looks for: a password inside a Basic
    // authorization header, base64-encoded at an offset, is found.
    let header = base64::engine::general_purpose::STANDARD.encode(format!("user:{}", sentinels[0]));
    assert!(
        forms(&sentinels[0]).iter().any(|f| header.contains(f.as_str())),
        "the search misses {header}"
    );
    hits.sort();
    hits.dedup();
    assert!(hits.is_empty(), "passwords found in clear:\n{}", hits.join("\n"));
}
