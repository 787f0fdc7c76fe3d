//! Linked services on a real four-node IR: every node sees the same versions right after a
//! write is acknowledged, bad definitions are refused without changing anything, credentials
//! set remotely as an encrypted blob, the proxy used by the HTTP connector, and after a
//! dispatcher failover every node still decrypts every credential.

mod common;

use common::shir_on;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use shir::cli::local_ir::LocalIr;

/// `linked-service list --json` from node `i`, as name → version.
async fn versions(ir: &LocalIr, i: usize) -> BTreeMap<String, u64> {
    let out = shir_on(ir, i, &["linked-service", "list", "--json"], None)
        .await
        .unwrap_or_else(|e| panic!("list via {}: {e}", ir.nodes[i].name));
    let list: Value = serde_json::from_str(&out).expect("list --json is JSON");
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| {
            assert!(s["type"].is_string(), "every entry has a type: {s}");
            (s["name"].as_str().unwrap().to_string(), s["version"].as_u64().unwrap())
        })
        .collect()
}

/// Right after an acknowledged write, every running node lists exactly `expected`.
async fn same_everywhere(ir: &LocalIr, expected: &BTreeMap<String, u64>) {
    for i in 0..ir.nodes.len() {
        if ir.nodes[i].is_running() {
            assert_eq!(
                &versions(ir, i).await,
                expected,
                "versions listed by {}",
                ir.nodes[i].name
            );
        }
    }
}

/// A refusal is one line that mentions `expect`.
fn refused(result: Result<String, String>, expect: &str) {
    let err = result.expect_err(&format!("should be refused with '{expect}'"));
    assert!(err.contains(expect), "error should mention '{expect}': {err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
}

async fn test_json(ir: &LocalIr, i: usize, name: &str) -> (Value, Option<String>) {
    match shir_on(ir, i, &["linked-service", "test", name, "--json"], None).await {
        Ok(out) => (serde_json::from_str(&out).expect("test --json"), None),
        Err(e) => (Value::Null, Some(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_services_replicate_validate_and_survive_failover() {
    let steps = common::Steps::new();
    let (tmp, mut ir, _logs) = common::four_node_ir("linked-ir").await;
    let share = tmp.path().join("share");
    let share2 = tmp.path().join("share2");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::create_dir_all(&share2).unwrap();
    let mut expected = BTreeMap::new();

    steps.step("create through a follower; every node lists version 1 at once");
    let follower = (ir.dispatcher(0).await.unwrap() + 1) % 4;
    let root = share.to_string_lossy().to_string();
    let out = shir_on(
        &ir,
        follower,
        &[
            "linked-service",
            "create",
            "share",
            "--type",
            "filesystem",
            "--root",
            &root,
        ],
        None,
    )
    .await
    .expect("create share");
    assert!(out.contains("version 1"), "{out}");
    expected.insert("share".to_string(), 1);
    same_everywhere(&ir, &expected).await;

    steps.step("update through another node; version 2 everywhere at once");
    let root2 = share2.to_string_lossy().to_string();
    shir_on(
        &ir,
        (follower + 1) % 4,
        &["linked-service", "update", "share", "--root", &root2],
        None,
    )
    .await
    .expect("update share");
    expected.insert("share".to_string(), 2);
    same_everywhere(&ir, &expected).await;
    let shown: Value = serde_json::from_str(
        &shir_on(&ir, 3, &["linked-service", "show", "share", "--json"], None)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shown["fields"]["root"], root2.as_str());
    for i in 0..4 {
        let (r, err) = test_json(&ir, i, "share").await;
        assert!(err.is_none(), "test share from node{}: {err:?}", i + 1);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["node"], ir.nodes[i].name.as_str());
    }

    steps.step("bad definitions are refused and change nothing");
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (vec!["create", "x", "--type", "nosuch"], "unknown linked-service type"),
        (
            vec!["create", "x", "--type", "postgres", "--host", "db", "--user", "u"],
            "database",
        ),
        (
            vec!["create", "share", "--type", "filesystem", "--root", "/tmp"],
            "already exists",
        ),
        (
            vec![
                "create",
                "x",
                "--type",
                "postgres",
                "--host",
                "db",
                "--database",
                "d",
                "--user",
                "u",
                "--port",
                "70000",
            ],
            "port",
        ),
        (
            vec!["create", "x", "--type", "filesystem", "--root", "relative/path"],
            "root",
        ),
        (
            vec!["create", "bad name", "--type", "filesystem", "--root", "/tmp"],
            "invalid linked-service name",
        ),
        (
            vec![
                "create",
                "x",
                "--type",
                "filesystem",
                "--root",
                "/tmp",
                "--set",
                "colour=red",
            ],
            "colour",
        ),
        (vec!["create", "x", "--type", "http", "--url", "ftp://host/"], "url"),
        (
            vec![
                "create",
                "x",
                "--type",
                "postgres",
                "--host",
                "db:5432",
                "--database",
                "d",
                "--user",
                "u",
            ],
            "without a port",
        ),
        (
            vec!["create", "x", "--type", "postgres", "--set", "password=x"],
            "--password-stdin",
        ),
        (vec!["update", "share"], "nothing to update"),
        (vec!["update", "share", "--unset", "root"], "root"),
        (
            vec!["update", "nosuch", "--root", "/tmp"],
            "no linked service named 'nosuch'",
        ),
        (vec!["delete", "nosuch"], "no linked service named 'nosuch'"),
        (vec!["show", "nosuch"], "no linked service named 'nosuch'"),
        (vec!["test", "nosuch"], "no linked service named 'nosuch'"),
    ];
    for (args, expect) in bad {
        let mut all = vec!["linked-service"];
        all.extend(args);
        refused(shir_on(&ir, 1, &all, None).await, expect);
    }
    same_everywhere(&ir, &expected).await;

    steps.step("a credential encrypted remotely with an admin certificate");
    let admin = tmp.path().join("ops.pem");
    let admin_arg = admin.to_string_lossy().to_string();
    shir_on(
        &ir,
        0,
        &["admin-cert", "issue", "--name", "ops", "--out", &admin_arg],
        None,
    )
    .await
    .expect("admin cert");
    let pg = common::test_postgres();
    let (host, port, database, user, password) = match &pg {
        Some(c) => (
            c["host"].clone(),
            c.get("port").cloned().unwrap_or("5432".into()),
            c.get("dbname").cloned().unwrap_or("postgres".into()),
            c["user"].clone(),
            c["password"].clone(),
        ),
        None => (
            "127.0.0.1".into(),
            "1".into(),
            "sales".into(),
            "etl".into(),
            "not-a-real-password".into(),
        ),
    };
    let blob_file = tmp.path().join("warehouse.cred");
    let blob_arg = blob_file.to_string_lossy().to_string();
    let endpoint = ir.nodes[3].address.clone();
    ir.shir_with_input(
        &[
            "credential",
            "encrypt",
            "--type",
            "postgres",
            "--host",
            &host,
            "--port",
            &port,
            "--database",
            &database,
            "--user",
            &user,
            "--password-stdin",
            "--out",
            &blob_arg,
            "--endpoint",
            &endpoint,
            "--admin-cert",
            &admin_arg,
        ],
        Some(&format!("{password}\n")),
    )
    .await
    .expect("credential encrypt over port 8060");
    let blob = std::fs::read_to_string(&blob_file).unwrap();
    assert!(blob.starts_with("SHIRCRED1."), "{blob}");
    assert!(!blob.contains(&password), "the blob holds the password in clear");
    shir_on(
        &ir,
        2,
        &[
            "linked-service",
            "create",
            "warehouse",
            "--encrypted-credential",
            &blob_arg,
        ],
        None,
    )
    .await
    .expect("create from the blob");
    expected.insert("warehouse".to_string(), 1);
    same_everywhere(&ir, &expected).await;
    let shown = shir_on(&ir, 1, &["linked-service", "show", "warehouse"], None)
        .await
        .unwrap();
    assert!(shown.contains("password") && shown.contains("***"), "{shown}");
    assert!(!shown.contains(&password));

    steps.step("an altered blob, and a blob of another IR, are refused");
    let mut altered = blob.trim().to_string();
    let flip = altered.len() - 10;
    let c = if &altered[flip..flip + 1] == "A" { "B" } else { "A" };
    altered.replace_range(flip..flip + 1, c);
    let altered_file = tmp.path().join("altered.cred");
    std::fs::write(&altered_file, &altered).unwrap();
    refused(
        shir_on(
            &ir,
            0,
            &[
                "linked-service",
                "create",
                "w2",
                "--encrypted-credential",
                &altered_file.to_string_lossy(),
            ],
            None,
        )
        .await,
        "does not open",
    );
    let other_root = tmp.path().join("other");
    let mut other = common::local_ir(&other_root, common::free_port(1), 1);
    other.init(0, "other-ir").await.expect("init other IR");
    other.start(0).await.expect("start other IR");
    let foreign = other
        .wait_for("the other IR to encrypt", Duration::from_secs(20), || async {
            shir_on(
                &other,
                0,
                &["credential", "encrypt", "--type", "filesystem", "--root", "/tmp"],
                None,
            )
            .await
            .ok()
        })
        .await
        .unwrap();
    other.stop_all().await;
    let foreign_file = tmp.path().join("foreign.cred");
    std::fs::write(&foreign_file, foreign).unwrap();
    refused(
        shir_on(
            &ir,
            0,
            &[
                "linked-service",
                "create",
                "w3",
                "--encrypted-credential",
                &foreign_file.to_string_lossy(),
            ],
            None,
        )
        .await,
        "not by this one",
    );
    same_everywhere(&ir, &expected).await;

    steps.step("a stored password does not follow the service to another server");
    refused(
        shir_on(
            &ir,
            0,
            &["linked-service", "update", "warehouse", "--host", "127.0.0.9"],
            None,
        )
        .await,
        "give it again",
    );
    refused(
        shir_on(
            &ir,
            0,
            &["linked-service", "update", "warehouse", "--set", "user=mallory"],
            None,
        )
        .await,
        "give it again",
    );
    same_everywhere(&ir, &expected).await;

    steps.step("the password is updated: version 2, and the test uses it");
    shir_on(
        &ir,
        0,
        &["linked-service", "update", "warehouse", "--password-stdin"],
        Some(&format!("{password}\n")),
    )
    .await
    .expect("update password");
    expected.insert("warehouse".to_string(), 2);
    same_everywhere(&ir, &expected).await;

    steps.step("the proxy is replicated and the HTTP connector goes through it");
    let (proxy_port, seen) = common::recording_proxy().await;
    let proxy_port = proxy_port.to_string();
    shir_on(
        &ir,
        1,
        &[
            "settings",
            "proxy",
            "set",
            "--address",
            "127.0.0.1",
            "--port",
            &proxy_port,
            "--user",
            "squid",
        ],
        None,
    )
    .await
    .expect("proxy without password");
    shir_on(
        &ir,
        2,
        &[
            "settings",
            "proxy",
            "set",
            "--address",
            "127.0.0.1",
            "--port",
            &proxy_port,
            "--user",
            "squid",
            "--password-stdin",
        ],
        Some("proxy-pass\n"),
    )
    .await
    .expect("proxy set");
    for i in 0..4 {
        let p: Value = serde_json::from_str(
            &shir_on(&ir, i, &["settings", "proxy", "show", "--json"], None)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p["version"], 2, "proxy version on node{}: {p}", i + 1);
        assert_eq!(p["password"], "***");
    }
    refused(
        shir_on(
            &ir,
            0,
            &["settings", "proxy", "set", "--address", "127.0.0.1", "--port", "0"],
            None,
        )
        .await,
        "port",
    );
    shir_on(
        &ir,
        0,
        &[
            "linked-service",
            "create",
            "web",
            "--type",
            "http",
            "--url",
            "http://intranet.invalid/health",
        ],
        None,
    )
    .await
    .expect("create web");
    expected.insert("web".to_string(), 1);
    let (r, err) = test_json(&ir, 3, "web").await;
    assert!(err.is_none(), "test web through the proxy: {err:?}");
    assert_eq!(r["ok"], true, "{r}");
    let requests = seen.lock().unwrap().clone();
    let request = requests.last().expect("the proxy saw a request");
    assert!(
        request.starts_with("GET http://intranet.invalid/health HTTP/1.1"),
        "{request}"
    );
    assert!(
        request.contains("Proxy-Authorization: Basic c3F1aWQ6cHJveHktcGFzcw=="),
        "proxy credentials (squid:proxy-pass) not sent: {request}"
    );

    steps.step("the dispatcher is killed; every node still decrypts every credential");
    let dispatcher = ir.dispatcher(0).await.unwrap();
    ir.kill(dispatcher).await.unwrap();
    let survivor = (dispatcher + 1) % 4;
    ir.wait_for("a new dispatcher", Duration::from_secs(20), || async {
        let s = ir.status(survivor).await.ok()?;
        (!s.dispatcher.is_empty() && s.dispatcher != ir.nodes[dispatcher].name).then_some(())
    })
    .await
    .unwrap();
    same_everywhere(&ir, &expected).await;
    for i in (0..4).filter(|i| *i != dispatcher) {
        let (r, err) = test_json(&ir, i, "warehouse").await;
        match &pg {
            Some(_) => {
                assert!(err.is_none(), "warehouse from node{} after failover: {err:?}", i + 1);
                assert_eq!(r["decrypted"], true);
                assert_eq!(r["ok"], true, "{r}");
            }
            // Without PostgreSQL the connection fails, but only after the password opened.
            None => {
                let err = err.expect("no server to reach");
                assert!(err.contains("failed from node"), "{err}");
            }
        }
        let (r, err) = test_json(&ir, i, "web").await;
        assert!(
            err.is_none() && r["decrypted"] == true,
            "web from node{}: {err:?} {r}",
            i + 1
        );
    }

    steps.step("the killed node comes back with the same versions and credentials");
    ir.start(dispatcher).await.unwrap();
    ir.wait_all_online(survivor, Duration::from_secs(30)).await.unwrap();
    same_everywhere(&ir, &expected).await;
    let (r, _) = test_json(&ir, dispatcher, "web").await;
    assert_eq!(r["decrypted"], true, "{r}");

    steps.step("proxy cleared and a service deleted, everywhere");
    shir_on(&ir, 0, &["settings", "proxy", "clear"], None)
        .await
        .expect("clear");
    let p: Value = serde_json::from_str(
        &shir_on(&ir, 3, &["settings", "proxy", "show", "--json"], None)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(p["configured"], false);
    shir_on(&ir, 1, &["linked-service", "delete", "share"], None)
        .await
        .expect("delete");
    expected.remove("share");
    same_everywhere(&ir, &expected).await;
    ir.stop_all().await;
}
