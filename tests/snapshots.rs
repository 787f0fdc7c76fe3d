//! The log stays bounded: snapshots are taken and the log purged behind them; a node that
//! joins after the entries it lacks were purged catches up from a snapshot sent over the
//! node port; a node restarted after a purge rebuilds its state from snapshot plus log.
//!
//! (openraft 0.9 does not purge entries a down member still needs, so purging waits while
//! a member is down; a new member is the case where a snapshot must travel.)

mod common;

use std::time::Duration;

use shir::cli::local_ir::LocalIr;
use shir::proto;

/// Small, so a few hundred writes cross several snapshots in a test.
const SNAPSHOT_EVERY: u64 = 40;
const WRITES: usize = 200;

fn lower_snapshot_interval(ir: &LocalIr, i: usize) {
    let mut config = ir.nodes[i].dir.load_config().expect("node.json");
    config.snapshot_every_entries = Some(SNAPSHOT_EVERY);
    ir.nodes[i].dir.write_config(&config).expect("write node.json");
}

async fn get(ir: &LocalIr, i: usize, key: &str) -> Result<String, String> {
    let mut admin = ir.admin(i).await.map_err(|e| e.to_string())?;
    let reply = admin
        .get(proto::GetRequest { key: key.into() })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    if reply.found {
        Ok(reply.value)
    } else {
        Err(format!("{key} not on {}", ir.nodes[i].name))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_bounded_and_lagging_nodes_catch_up_from_snapshots() {
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let port = common::free_port(3);
    let mut ir = common::local_ir(tmp.path(), port, 3);
    let _logs = common::DumpLogsOnPanic::new(&ir);

    steps.step("two nodes, snapshot every 40 entries");
    ir.init(0, "snap-ir").await.expect("init");
    lower_snapshot_interval(&ir, 0);
    ir.start(0).await.expect("start node1");
    let key = ir
        .wait_for("key1", Duration::from_secs(20), || async { ir.key1(0).await.ok() })
        .await
        .expect("key1");
    ir.register(1, &key).await.expect("register node2");
    lower_snapshot_interval(&ir, 1);
    ir.start(1).await.expect("start node2");
    ir.wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("all online");

    steps.step("write one entry at a time");
    let leader = ir.dispatcher(0).await.expect("dispatcher");
    let mut admin = ir.admin(leader).await.expect("admin");
    let mut k0_index = 0;
    for i in 0..WRITES {
        let index = admin
            .put(proto::PutRequest {
                key: format!("k{i}"),
                value: format!("v{i}"),
            })
            .await
            .unwrap_or_else(|e| panic!("put k{i}: {e}"))
            .into_inner()
            .log_index;
        if i == 0 {
            k0_index = index;
        }
    }

    steps.step("the dispatcher snapshotted and purged its log");
    let view = common::eventually("a purge on the dispatcher", Duration::from_secs(20), || async {
        let v = ir.local_view(leader).await.map_err(|e| e.to_string())?;
        if v.purged_index > 0 && v.snapshot_index > 0 {
            Ok(v)
        } else {
            Err(format!("snapshot {} purged {}", v.snapshot_index, v.purged_index))
        }
    })
    .await;
    let kept = view.last_log_index - view.purged_index;
    assert!(
        kept <= 2 * SNAPSHOT_EVERY + 10,
        "log not bounded: {kept} entries kept (last {}, purged to {})",
        view.last_log_index,
        view.purged_index
    );

    // The IR's first entries plus the first writes are gone from the dispatcher's log, so a
    // node that ends up holding k0 can only have it from a snapshot.
    assert!(view.purged_index > k0_index, "purged only to {}", view.purged_index);

    steps.step("node3 joins after the purge and catches up from a snapshot");
    let key = ir.key1(0).await.expect("key1");
    ir.register(2, &key).await.expect("register node3");
    lower_snapshot_interval(&ir, 2);
    ir.start(2).await.expect("start node3");
    let last = format!("k{}", WRITES - 1);
    common::eventually("node3 to hold the last write", Duration::from_secs(30), || {
        get(&ir, 2, &last)
    })
    .await;
    for i in 0..WRITES {
        assert_eq!(
            get(&ir, 2, &format!("k{i}")).await.as_deref(),
            Ok(format!("v{i}").as_str())
        );
    }
    let v3 = ir.local_view(2).await.expect("node3 view");
    assert!(
        v3.snapshot_index >= view.purged_index,
        "node3 should have installed the dispatcher's snapshot: {v3:?}"
    );
    ir.wait_all_online(0, Duration::from_secs(30))
        .await
        .expect("three voters online");

    steps.step("kill -9 the dispatcher and restart it: state rebuilt from snapshot and log");
    ir.kill(leader).await.expect("kill");
    ir.start(leader).await.expect("restart");
    for i in 0..WRITES {
        let key = format!("k{i}");
        let value = common::eventually("restarted node's state", Duration::from_secs(20), || {
            get(&ir, leader, &key)
        })
        .await;
        assert_eq!(value, format!("v{i}"));
    }
    ir.stop_all().await;
}
