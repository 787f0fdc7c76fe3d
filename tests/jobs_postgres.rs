//! Copy jobs against a real PostgreSQL (a throw-away server from the machine's initdb and
//! pg_ctl): table to table, CSV file to table, query to Parquet and back; a node killed
//! while its transaction is staged leaves exactly one copy; a missing sink table fails the
//! job with a clear error and loads nothing.

mod common;

use common::shir_on;

use std::time::Duration;

use serde_json::Value;
use shir::cli::local_ir::LocalIr;
use shir::proto;
use shir::testing::postgres::ThrowawayPostgres;

const HOLD_MS: u64 = 3000;

async fn submit(ir: &LocalIr, name: &str, source: &str, sink: &str) -> String {
    let request = proto::JobSubmitRequest {
        name: name.into(),
        source: source.into(),
        sink: sink.into(),
        ..Default::default()
    };
    common::submit_job(ir, 0, request).await
}

async fn wait_end(ir: &LocalIr, via: usize, id: &str) -> Value {
    common::job_end(ir, via, id, Duration::from_secs(60)).await
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_load_and_unload_postgres_exactly_once() {
    let Some(pg) = ThrowawayPostgres::start() else { return };
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(3), 3);
    ir.offline_timeout_ms = Some(1500);
    ir.env
        .push(common::failpoints(&[(common::HOLD_BEFORE_PUBLISH, "hold-", HOLD_MS)]));
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.form("pg-ir").await.expect("three nodes form an IR");
    let db = pg.create_database().await;
    let client = pg.client(&db).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id bigint, customer text, amount numeric(12,2), day date, note text);
             INSERT INTO orders SELECT g, 'customer-' || g % 100, (g % 997) / 10.0, DATE '2026-11-01' + g % 30,
                    CASE WHEN g % 7 = 0 THEN NULL ELSE 'n' || g END FROM generate_series(1, 20000) g;
             CREATE TABLE orders_copy (LIKE orders);
             CREATE TABLE orders_from_csv (LIKE orders);
             CREATE SCHEMA \"Sales\";
             CREATE TABLE \"Sales\".\"Order Items\" (\"Item\" text, qty int);
             INSERT INTO \"Sales\".\"Order Items\" VALUES ('a', 1), ('b', NULL), (NULL, 3);
             CREATE TABLE items_copy (\"Item\" text, qty int);",
        )
        .await
        .expect("tables");
    let port = pg.port().to_string();
    shir_on(
        &ir,
        1,
        &[
            "linked-service",
            "create",
            "warehouse",
            "--type",
            "postgres",
            "--host",
            pg.host(),
            "--port",
            &port,
            "--database",
            &db,
            "--user",
            pg.user(),
            "--password-stdin",
        ],
        Some(&format!("{}\n", pg.password())),
    )
    .await
    .expect("create warehouse");
    let share = tmp.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    ir.create_filesystem_service("share", &share)
        .await
        .expect("create share");
    shir_on(&ir, 0, &["linked-service", "test", "warehouse"], None)
        .await
        .expect("warehouse reachable");

    steps.step("table to table, with the node killed while its transaction is staged");
    let id = submit(
        &ir,
        "hold-table",
        "warehouse:public.orders",
        "warehouse:public.orders_copy",
    )
    .await;
    let running = common::eventually("the job to run", Duration::from_secs(20), || async {
        let out = shir_on(&ir, 0, &["job", "show", &id, "--json"], None).await?;
        let j: Value = serde_json::from_str(&out).unwrap();
        if j["state"] == "Running" {
            Ok(j)
        } else {
            Err(j.to_string())
        }
    })
    .await;
    let victim = ir
        .nodes
        .iter()
        .position(|n| n.name == running["node"].as_str().unwrap())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ir.kill(victim).await.unwrap();
    let via = (victim + 1) % 3;
    let done = wait_end(&ir, via, &id).await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["rows"], 20000, "{done}");
    assert_eq!(done["check"]["verified"], true, "{done}");
    assert_eq!(count(&client, "orders_copy").await, 20000, "exactly one copy");
    let same: bool = client
        .query_one(
            "SELECT NOT EXISTS (SELECT * FROM orders EXCEPT SELECT * FROM orders_copy)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same, "the copy holds the same rows, NULLs included");
    ir.start(victim).await.unwrap();
    ir.wait_all_online(via, Duration::from_secs(30)).await.unwrap();

    steps.step("a missing sink table fails the job and loads nothing");
    let id = submit(&ir, "", "warehouse:public.orders", "warehouse:public.nope").await;
    let failed = wait_end(&ir, 0, &id).await;
    assert_eq!(failed["state"], "Failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("does not exist"), "{failed}");

    steps.step("table names read as PostgreSQL reads them: quoted kept, unquoted folded");
    let id = submit(
        &ir,
        "",
        "warehouse:\"Sales\".\"Order Items\"",
        "warehouse:PUBLIC.Items_Copy",
    )
    .await;
    let done = wait_end(&ir, 0, &id).await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(done["rows"], 3, "{done}");
    assert_eq!(done["source"], "warehouse:\"Sales\".\"Order Items\"", "{done}");
    assert_eq!(done["sink"], "warehouse:public.items_copy", "{done}");
    assert_eq!(count(&client, "items_copy").await, 3);

    steps.step("a source that stops answering is stopped after the stall timeout");
    let request = proto::JobSubmitRequest {
        source: "warehouse:select 1 as x from pg_sleep(60)".into(),
        sink: "share:/stalled.csv".into(),
        max_attempts: 1,
        stall_timeout_ms: 1500,
        ..Default::default()
    };
    let id = common::submit_job(&ir, 0, request).await;
    let stalled = wait_end(&ir, 0, &id).await;
    assert_eq!(stalled["state"], "Failed", "{stalled}");
    assert!(
        stalled["error"].as_str().unwrap().contains("no data moved for 1 s"),
        "{stalled}"
    );
    assert!(!share.join("stalled.csv").exists(), "nothing published");

    steps.step("query to CSV, CSV to table: the same rows come back");
    let id = submit(
        &ir,
        "",
        "warehouse:select * from orders where id <= 5000",
        "share:/export/orders.csv",
    )
    .await;
    let done = wait_end(&ir, 0, &id).await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(done["rows"], 5000, "{done}");
    let id = submit(&ir, "", "share:/export/orders.csv", "warehouse:public.orders_from_csv").await;
    let done = wait_end(&ir, 0, &id).await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(count(&client, "orders_from_csv").await, 5000);
    let nulls: i64 = client
        .query_one("SELECT count(*) FROM orders_from_csv WHERE note IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    let expected: i64 = client
        .query_one("SELECT count(*) FROM orders WHERE id <= 5000 AND note IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, expected, "NULLs survive the trip through CSV");

    steps.step("query to Parquet, read back by pyarrow when it is installed");
    let id = submit(
        &ir,
        "",
        "warehouse:select id, customer, day from orders",
        "share:/lake/orders.parquet",
    )
    .await;
    let done = wait_end(&ir, 0, &id).await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    let parquet = share.join("lake/orders.parquet");
    let script = format!(
        "import pyarrow.parquet as pq; t = pq.read_table('{}'); print(t.num_rows)",
        parquet.display()
    );
    match std::process::Command::new("python3").args(["-c", &script]).output() {
        Ok(out) if out.status.success() => {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20000");
        }
        _ => eprintln!("skipped the pyarrow read-back: python3 with pyarrow is not installed"),
    }
    ir.stop_all().await;
}
