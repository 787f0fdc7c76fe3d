//! Proves that four real `shir` processes form one IR that every node describes alike (status
//! JSON, keys, human table), and that SIGKILLing the dispatcher elects another within seconds,
//! marks it Offline, keeps accepting writes, and lets it rejoin with its identity and data.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use shir::auth_key::AuthKey;
use shir::cli::local_ir::LocalIr;
use shir::proto;

use common::{Steps, dir_arg, eventually, status_json};

const IR_NAME: &str = "formation-ir";

/// Checks one `status --json` document strictly; returns the dispatcher's name.
fn check_status_document(v: &Value, ir: &LocalIr, who: &str) -> String {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{who}: status is not an object: {v}"));
    for key in ["ir_name", "ir_id", "dispatcher", "nodes"] {
        assert!(obj.contains_key(key), "{who}: status lacks '{key}': {v}");
    }
    assert_eq!(v["ir_name"], IR_NAME, "{who}");
    let ir_id = v["ir_id"].as_str().unwrap_or_default();
    assert!(
        ir_id.len() == 32 && ir_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{who}: ir_id {ir_id:?}"
    );
    let dispatcher = v["dispatcher"]
        .as_str()
        .unwrap_or_else(|| panic!("{who}: no dispatcher: {v}"))
        .to_string();
    assert!(
        ir.nodes.iter().any(|n| n.name == dispatcher),
        "{who}: dispatcher {dispatcher:?} is not a node name"
    );

    let nodes = v["nodes"].as_array().unwrap_or_else(|| panic!("{who}: nodes: {v}"));
    assert_eq!(nodes.len(), 4, "{who}: {v}");
    let expected: BTreeMap<&str, &str> = ir.nodes.iter().map(|n| (n.name.as_str(), n.address.as_str())).collect();
    let mut seen = BTreeSet::new();
    let mut dispatchers = Vec::new();
    for n in nodes {
        let name = n["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{who}: node without name: {n}"));
        assert!(seen.insert(name.to_string()), "{who}: {name} listed twice");
        for key in [
            "name",
            "address",
            "status",
            "role",
            "version",
            "running_jobs",
            "concurrent_jobs_limit",
            "cpu_percent",
            "available_memory_mb",
            "last_heartbeat",
            "cert_expires",
        ] {
            assert!(n.get(key).is_some(), "{who}: node {name} lacks '{key}': {n}");
        }
        assert_eq!(n["address"].as_str(), expected.get(name).copied(), "{who}: {n}");
        assert_eq!(n["status"], "Online", "{who}: {n}");
        match n["role"].as_str() {
            Some("Dispatcher") => dispatchers.push(name.to_string()),
            Some("Worker") => {}
            other => panic!("{who}: node {name} has role {other:?}"),
        }
        assert_eq!(n["version"], shir::VERSION, "{who}: {n}");
        assert_eq!(n["running_jobs"].as_u64(), Some(0), "{who}: {n}");
        assert!(
            n["concurrent_jobs_limit"].as_u64().is_some_and(|l| l >= 1),
            "{who}: {n}"
        );
        let cpu = n["cpu_percent"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&cpu), "{who}: {n}");
        assert!(n["available_memory_mb"].as_u64().is_some_and(|m| m > 0), "{who}: {n}");
        let heard = n["last_heartbeat"].as_str().unwrap_or_default();
        assert!(heard.len() >= 20 && heard.contains('T'), "{who}: last_heartbeat {n}");
        // Certificates last years: the expiry is an RFC 3339 date after this year.
        let expires = n["cert_expires"].as_str().unwrap_or_default();
        let year: i32 = expires.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
        let this_year = time::OffsetDateTime::now_utc().year();
        assert!(year > this_year, "{who}: cert_expires {expires:?}");
    }
    assert_eq!(
        dispatchers,
        vec![dispatcher.clone()],
        "{who}: exactly the dispatcher has that role"
    );
    dispatcher
}

async fn put(ir: &LocalIr, via: usize, key: &str, value: &str) -> Result<u64, String> {
    let mut admin = ir.admin(via).await.map_err(|e| e.to_string())?;
    admin
        .put(proto::PutRequest {
            key: key.into(),
            value: value.into(),
        })
        .await
        .map(|r| r.into_inner().log_index)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_form_and_fail_over() {
    let steps = Steps::new();
    steps.step("form a four-node IR");
    let (_tmp, mut ir, _logs) = common::four_node_ir(IR_NAME).await;

    steps.step("shir status --json from every node: same IR, same dispatcher, four Online nodes");
    let mut ids = BTreeSet::new();
    let mut dispatchers = BTreeSet::new();
    for k in 0..4 {
        // A node that joined last may be Limited until its peers' next heartbeat round.
        let doc = eventually("status --json with every node Online", Duration::from_secs(30), || {
            let ir = &ir;
            async move {
                let v = status_json(ir, k).await?;
                let all_online = v["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.len() == 4 && ns.iter().all(|n| n["status"] == "Online"));
                if all_online { Ok(v) } else { Err(v.to_string()) }
            }
        })
        .await;
        dispatchers.insert(check_status_document(&doc, &ir, &ir.nodes[k].name));
        ids.insert(doc["ir_id"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(ids.len(), 1, "every node reports one IR id: {ids:?}");
    assert_eq!(
        dispatchers.len(),
        1,
        "every node reports one dispatcher: {dispatchers:?}"
    );
    let ir_id = ids.into_iter().next().unwrap_or_default();

    steps.step("shir key show --json: two distinct SHIR1@ keys for this IR");
    let keys: Value = serde_json::from_str(
        &ir.shir(&["key", "show", "--json", "--data-dir", &dir_arg(&ir, 2)])
            .await
            .expect("key show"),
    )
    .expect("key show --json is JSON");
    let (key1, key2) = (
        keys["key1"].as_str().unwrap_or_default(),
        keys["key2"].as_str().unwrap_or_default(),
    );
    assert!(key1.starts_with("SHIR1@") && key2.starts_with("SHIR1@"), "{keys}");
    assert_ne!(key1, key2);
    for (text, slot) in [(key1, 1), (key2, 2)] {
        let key = AuthKey::parse(text).expect("a shown key parses");
        assert_eq!((key.ir_id.as_str(), key.slot), (ir_id.as_str(), slot));
        assert_eq!(key.endpoints.len(), 4, "{:?}", key.endpoints);
    }

    steps.step("human status names every node and the dispatcher");
    let text = ir
        .shir(&["status", "--data-dir", &dir_arg(&ir, 1)])
        .await
        .expect("status");
    for n in &ir.nodes {
        assert!(text.contains(&n.name), "{} missing from:\n{text}", n.name);
        assert!(text.contains(&n.address), "{} missing from:\n{text}", n.address);
    }
    assert!(text.contains("Dispatcher") && text.contains(IR_NAME), "{text}");

    steps.step("write values through every node (followers forward to the dispatcher)");
    let mut written: Vec<(String, String)> = Vec::new();
    for i in 0..8 {
        let (key, value) = (format!("before-{i}"), format!("value-{i}-{}", rand::random::<u32>()));
        put(&ir, i % 4, &key, &value).await.expect("Put before the kill");
        written.push((key, value));
    }

    let victim = ir.dispatcher(0).await.expect("dispatcher");
    let victim_name = ir.nodes[victim].name.clone();
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let config_before = std::fs::read(ir.nodes[victim].dir.config_path()).expect("node.json");
    let id_before = ir.local_view(victim).await.expect("local view").node_id;
    let ids_before: BTreeSet<u64> = ir.status(0).await.expect("status").nodes.iter().map(|n| n.id).collect();

    steps.step(&format!(
        "SIGKILL the dispatcher {victim_name}; a survivor leads within seconds"
    ));
    let killed_at = Instant::now();
    ir.kill(victim).await.expect("kill");
    let (new_leader, took) = eventually("a new dispatcher", Duration::from_secs(15), || {
        let (ir, survivors, victim_name) = (&ir, &survivors, &victim_name);
        async move {
            for &i in survivors {
                let v = ir.local_view(i).await.map_err(|e| e.to_string())?;
                if v.is_leader && v.name != *victim_name {
                    return Ok((v.name, killed_at.elapsed()));
                }
            }
            Err("no survivor leads yet".to_string())
        }
    })
    .await;
    eprintln!(
        "new dispatcher {new_leader} elected {} ms after the kill",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    eventually(
        "every survivor to follow the new dispatcher",
        Duration::from_secs(10),
        || {
            let (ir, survivors, new_leader) = (&ir, &survivors, &new_leader);
            async move {
                for &i in survivors {
                    let v = ir.local_view(i).await.map_err(|e| e.to_string())?;
                    if v.leader_name != *new_leader {
                        return Err(format!("{} follows {:?}", v.name, v.leader_name));
                    }
                }
                Ok(())
            }
        },
    )
    .await;

    steps.step("a write after the failover succeeds");
    for (n, &i) in survivors.iter().enumerate() {
        let (key, value) = (format!("after-{n}"), format!("value-after-{n}"));
        put(&ir, i, &key, &value).await.expect("Put after the failover");
        written.push((key, value));
    }

    steps.step(&format!("{victim_name} shows Offline after the offline timeout"));
    let watcher = survivors[0];
    eventually("the killed node to show Offline", Duration::from_secs(20), || {
        let (ir, victim_name, new_leader) = (&ir, &victim_name, &new_leader);
        async move {
            let v = status_json(ir, watcher).await?;
            let by_name = |name: &str| {
                v["nodes"]
                    .as_array()
                    .and_then(|ns| ns.iter().find(|n| n["name"] == name))
                    .map(|n| n["status"].as_str().unwrap_or_default().to_string())
            };
            let others_online = ir
                .nodes
                .iter()
                .filter(|n| n.name != *victim_name)
                .all(|n| by_name(&n.name).as_deref() == Some("Online"));
            if by_name(victim_name).as_deref() == Some("Offline")
                && others_online
                && v["dispatcher"] == new_leader.as_str()
            {
                Ok(())
            } else {
                Err(v.to_string())
            }
        }
    })
    .await;

    steps.step(&format!("restart {victim_name} on its data dir (no re-registration)"));
    ir.start(victim).await.expect("restart the killed node");
    let status = ir
        .wait_all_online(watcher, Duration::from_secs(30))
        .await
        .expect("all four Online again");
    let ids_after: BTreeSet<u64> = status.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids_after, ids_before, "no node was added or replaced");
    assert_eq!(
        std::fs::read(ir.nodes[victim].dir.config_path()).expect("node.json"),
        config_before,
        "node.json unchanged by the restart"
    );
    assert_eq!(ir.local_view(victim).await.expect("local view").node_id, id_before);
    let back = status
        .nodes
        .iter()
        .find(|n| n.name == victim_name)
        .expect("the killed node is still a member");
    assert_eq!(
        (back.status(), back.raft_role()),
        (proto::NodeHealth::Online, proto::RaftRole::Voter)
    );

    steps.step("every node, the restarted one included, holds every value written");
    for i in 0..4 {
        eventually("all written values applied", Duration::from_secs(20), || {
            let (ir, written) = (&ir, &written);
            async move {
                let mut admin = ir.admin(i).await.map_err(|e| e.to_string())?;
                for (key, value) in written {
                    let got = admin
                        .get(proto::GetRequest { key: key.clone() })
                        .await
                        .map_err(|s| s.message().to_string())?
                        .into_inner();
                    if !got.found || got.value != *value {
                        return Err(format!("{}: {key} -> {got:?}", ir.nodes[i].name));
                    }
                }
                Ok(())
            }
        })
        .await;
    }

    steps.step("two of four down (the dispatcher among them): no dispatcher, writes refused in bounded time");
    let dispatcher = ir.dispatcher(0).await.expect("dispatcher");
    let other = (0..4).find(|&i| i != dispatcher).expect("a worker");
    ir.kill(dispatcher).await.expect("kill the dispatcher");
    ir.kill(other).await.expect("kill a worker");
    let survivor = (0..4).find(|&i| i != dispatcher && i != other).expect("a survivor");
    let view = eventually(
        "a survivor to report no dispatcher",
        Duration::from_secs(20),
        || async {
            let v = status_json(&ir, survivor).await?;
            if v["dispatcher"].is_null() {
                Ok(v)
            } else {
                Err(format!("dispatcher still {}", v["dispatcher"]))
            }
        },
    )
    .await;
    assert!(view["nodes"].as_array().is_some_and(|n| n.len() == 4), "{view}");
    let started = std::time::Instant::now();
    let err = put(&ir, survivor, "no-quorum", "x")
        .await
        .expect_err("a write without a majority must fail");
    eprintln!("write without a majority refused after {:?}: {err}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the refusal must come in bounded time"
    );

    steps.step("one node back: a majority again, a dispatcher, writes succeed");
    ir.start(other).await.expect("restart the worker");
    eventually("a write with a majority back", Duration::from_secs(30), || {
        put(&ir, survivor, "quorum-back", "y")
    })
    .await;

    steps.step("done");
    ir.stop_all().await;
}
