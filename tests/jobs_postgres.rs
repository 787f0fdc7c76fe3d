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
    common::create_postgres_service(&ir, 1, "warehouse", &pg, &db).await;
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

/// A table of every type item 2 of issue 12 names, a row of NULLs included.
const EVERY_TYPE: &str = r#"
    CREATE TABLE every_type (
        id integer, d10 numeric(10, 2), d40 numeric(40, 5), free numeric, at timestamptz, day date,
        yes boolean, raw bytea, u uuid, j json, jb jsonb, ints integer[], texts text[], span interval,
        small smallint, big bigint, f4 real, f8 double precision, clock time, local timestamp, vc varchar(20)
    );
    INSERT INTO every_type VALUES
        (1, 12345678.91, -12345678901234567890123456789012345.12345, 3.141592653589793238462643383279502884197,
         '2026-12-03 10:11:12.345678+01', '2026-12-03', true, '\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '{"a": [1, 2.50]}', '{"b": {"c": null}}', '{1,NULL,-3}', '{"x,y","q\"uote",NULL}',
         '1 year 2 mons 3 days 04:05:06.5', -32768, 9223372036854775807, 1.5, 0.1, '23:59:59.999999',
         '2026-12-03 10:11:12', 'short'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL),
        (3, -0.01, 0.00001, 'NaN', '1900-01-01 00:00:00+00', '0044-03-15 BC', false, '', '00000000-0000-0000-0000-000000000000',
         '[]', '"é ☃"', '{}', '{""}', '-1 mons -1 days -00:00:00.000001', 0, 0, 'NaN',
         '-Infinity', '00:00:00', '0044-03-15 12:00:00 BC', '');
"#;

/// `SELECT …` of one text value.
async fn text(client: &tokio_postgres::Client, sql: &str) -> String {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Rows as PostgreSQL prints them, in `id` order, and the columns' declared types.
async fn rows_and_types(client: &tokio_postgres::Client, table: &str) -> (String, String) {
    let rows = text(
        client,
        &format!("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM {table} t"),
    )
    .await;
    let types = text(
        client,
        &format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
        ),
    )
    .await;
    (rows, types)
}

/// `python3 -c SCRIPT`'s standard output; panics with its error output if it fails.
fn python(script: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_survive_parquet_and_come_back_into_a_created_table() {
    let Some(pg) = ThrowawayPostgres::start() else { return };
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(1), 1);
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.form("pg-types-ir").await.expect("one node forms an IR");
    let db = pg.create_database().await;
    let client = pg.client(&db).await;
    client.batch_execute(EVERY_TYPE).await.expect("tables");
    common::try_create_postgres_service(&ir, 0, "warehouse", &pg, &db, &["--set", "state_schema=etl_state"])
        .await
        .expect("create warehouse");
    let share = tmp.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    ir.create_filesystem_service("share", &share)
        .await
        .expect("create share");
    let submit = |args: &'static [&'static str]| {
        let ir = &ir;
        async move {
            let mut all = vec!["job", "submit"];
            all.extend(args);
            let id = shir_on(ir, 0, &all, None).await.expect("submitted");
            wait_end(ir, 0, id.trim()).await
        }
    };

    steps.step("PostgreSQL to Parquet: each column keeps its type");
    let done = submit(&[
        "--source",
        "warehouse:public.every_type",
        "--sink",
        "share:/lake/every.parquet",
    ])
    .await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(done["rows"], 3, "{done}");
    let parquet = share.join("lake/every.parquet");
    if shir::testing::python_with("pyarrow").is_some() && shir::testing::python_with("duckdb").is_some() {
        let out = python(&format!(
            "import pyarrow.parquet as pq, duckdb\n\
             t = pq.read_table('{p}')\n\
             for f in t.schema: print('pyarrow', f.name, f.type)\n\
             for c in pq.ParquetFile('{p}').schema: print('parquet', c.path, c.physical_type, c.logical_type)\n\
             for name, kind, *_ in duckdb.sql(\"DESCRIBE SELECT * FROM read_parquet('{p}')\").fetchall(): print('duckdb', name, kind)\n\
             r = t.slice(0, 1).to_pylist()[0]\n\
             print('value d10', r['d10']); print('value d40', r['d40']); print('value ints', r['ints'])\n\
             print('value at', r['at'].isoformat()); print('value u', r['u']); print('value span', r['span'])\n\
             print('nulls', [k for k, v in t.slice(1, 1).to_pylist()[0].items() if v is None] == [c for c in t.column_names if c != 'id'])\n\
             print('duckdb d10', duckdb.sql(\"SELECT sum(d10) FROM read_parquet('{p}')\").fetchall()[0][0])\n\
             print('duckdb casts', duckdb.sql(\"SELECT typeof(u::UUID), typeof(jb::JSON), (jb::JSON)->>'$.b' FROM read_parquet('{p}') WHERE id = 1\").fetchall())\n\
             print('duckdb span', [str(v) for (v,) in duckdb.sql(\"SELECT span::INTERVAL FROM read_parquet('{p}') ORDER BY id\").fetchall()])\n",
            p = parquet.display()
        ));
        let expected = "\
pyarrow id int32
pyarrow d10 decimal128(10, 2)
pyarrow d40 decimal256(40, 5)
pyarrow free string
pyarrow at timestamp[us, tz=+00:00]
pyarrow day date32[day]
pyarrow yes bool
pyarrow raw binary
pyarrow u string
pyarrow j string
pyarrow jb string
pyarrow ints list<item: int32>
pyarrow texts list<item: string>
pyarrow span string
pyarrow small int16
pyarrow big int64
pyarrow f4 float
pyarrow f8 double
pyarrow clock time64[us]
pyarrow local timestamp[us]
pyarrow vc string
parquet id INT32 None
parquet d10 INT64 Decimal(precision=10, scale=2)
parquet d40 FIXED_LEN_BYTE_ARRAY Decimal(precision=40, scale=5)
parquet free BYTE_ARRAY String
parquet at INT64 Timestamp(isAdjustedToUTC=true, timeUnit=microseconds, is_from_converted_type=false, force_set_converted_type=false)
parquet day INT32 Date
parquet yes BOOLEAN None
parquet raw BYTE_ARRAY None
parquet u BYTE_ARRAY String
parquet j BYTE_ARRAY String
parquet jb BYTE_ARRAY String
parquet ints.list.item INT32 None
parquet texts.list.item BYTE_ARRAY String
parquet span BYTE_ARRAY String
parquet small INT32 Int(bitWidth=16, isSigned=true)
parquet big INT64 None
parquet f4 FLOAT None
parquet f8 DOUBLE None
parquet clock INT64 Time(isAdjustedToUTC=false, timeUnit=microseconds)
parquet local INT64 Timestamp(isAdjustedToUTC=false, timeUnit=microseconds, is_from_converted_type=false, force_set_converted_type=false)
parquet vc BYTE_ARRAY String
duckdb id INTEGER
duckdb d10 DECIMAL(10,2)
duckdb d40 DOUBLE
duckdb free VARCHAR
duckdb at TIMESTAMP WITH TIME ZONE
duckdb day DATE
duckdb yes BOOLEAN
duckdb raw BLOB
duckdb u VARCHAR
duckdb j VARCHAR
duckdb jb VARCHAR
duckdb ints INTEGER[]
duckdb texts VARCHAR[]
duckdb span VARCHAR
duckdb small SMALLINT
duckdb big BIGINT
duckdb f4 FLOAT
duckdb f8 DOUBLE
duckdb clock TIME
duckdb local TIMESTAMP
duckdb vc VARCHAR
value d10 12345678.91
value d40 -12345678901234567890123456789012345.12345
value ints [1, None, -3]
value at 2026-12-03T09:11:12.345678+00:00
value u a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11
value span 1 year 2 months 3 days 4 hours 5 minutes 6.5 seconds
nulls True
duckdb d10 12345678.90
duckdb casts [('UUID', 'JSON', '{\"c\":null}')]
duckdb span ['423 days, 4:05:06.500000', 'None', '-32 days, 23:59:59.999999']
";
        assert_eq!(out, expected);
    }

    steps.step("Parquet back to PostgreSQL with --create-table: the same types and values");
    let done = submit(&[
        "--source",
        "share:/lake/every.parquet",
        "--sink",
        "warehouse:public.every_back",
        "--create-table",
    ])
    .await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(done["create_table"], true, "{done}");
    assert_eq!(done["rows"], 3, "{done}");
    assert_eq!(
        rows_and_types(&client, "every_back").await,
        rows_and_types(&client, "every_type").await,
        "every value and every declared type back as it was"
    );

    steps.step("the records went to the schema the linked service names, and the log says it made them");
    assert_eq!(
        text(&client, "SELECT sink_table FROM etl_state.job_commits").await,
        "public.every_back"
    );
    assert_eq!(
        text(&client, "SELECT (to_regnamespace('shir') IS NULL)::text").await,
        "true"
    );
    let log = std::fs::read_to_string(&ir.nodes[0].log).unwrap();
    assert_eq!(
        log.matches("created etl_state.job_commits").count(),
        1,
        "said once, when it was made"
    );

    steps.step("a job that fails after creating its table leaves no table behind");
    let done = submit(&[
        "--source",
        "warehouse:select g, 1 / (g - 9000) AS x from generate_series(1, 10000) g",
        "--sink",
        "warehouse:public.never",
        "--create-table",
        "--max-attempts",
        "1",
    ])
    .await;
    assert_eq!(done["state"], "Failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("division by zero"), "{done}");
    let log = std::fs::read_to_string(&ir.nodes[0].log).unwrap();
    assert!(
        log.contains("CREATE TABLE \"public\".\"never\" (\"g\" int4, \"x\" int4)"),
        "the table was made before the source failed"
    );
    assert_eq!(
        text(&client, "SELECT (to_regclass('public.never') IS NULL)::text").await,
        "true"
    );

    steps.step("CSV to a created table: the columns get the types inferred from the file");
    std::fs::write(
        share.join("orders.csv"),
        "id,Amount,day,note\n1,1.50,2026-01-01,a\n2,,2026-01-02,\n",
    )
    .unwrap();
    let done = submit(&[
        "--source",
        "share:/orders.csv",
        "--sink",
        "warehouse:public.from_csv",
        "--create-table",
    ])
    .await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(
        rows_and_types(&client, "from_csv").await,
        (
            "(1,1.5,2026-01-01,a)\n(2,,2026-01-02,)".to_owned(),
            "id bigint, Amount double precision, day date, note text".to_owned()
        )
    );

    steps.step("bad inputs: each one line, nothing changed");
    client
        .batch_execute(
            "CREATE TABLE wrong (id date, d10 numeric); CREATE TABLE narrow (id integer); \
             CREATE TABLE nan (id integer, amount numeric(10, 2)); INSERT INTO nan VALUES (1, 1), (2, 'NaN');",
        )
        .await
        .unwrap();
    let jobs_before = shir_on(&ir, 0, &["job", "list", "--json"], None).await.unwrap();
    let refused = shir_on(
        &ir,
        0,
        &[
            "job",
            "submit",
            "--source",
            "warehouse:public.every_type",
            "--sink",
            "share:/lake/x.csv",
            "--create-table",
        ],
        None,
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains("--create-table makes PostgreSQL tables; the sink share:/lake/x.csv is not one"),
        "{refused}"
    );
    assert_eq!(refused.trim().lines().count(), 1, "{refused}");
    assert_eq!(
        shir_on(&ir, 0, &["job", "list", "--json"], None).await.unwrap(),
        jobs_before,
        "no job made"
    );

    let failed = submit(&[
        "--source",
        "warehouse:select id, d10 from every_type",
        "--sink",
        "warehouse:public.wrong",
        "--create-table",
    ])
    .await;
    assert_eq!(failed["state"], "Failed", "{failed}");
    assert_eq!(failed["attempt"], 1, "bad input is not retried: {failed}");
    assert_eq!(
        failed["error"],
        "source column 1 (\"id\", Int32) cannot be written to column \"id\" (date) of sink table public.wrong",
    );
    let failed = submit(&[
        "--source",
        "warehouse:public.every_type",
        "--sink",
        "warehouse:public.narrow",
    ])
    .await;
    assert_eq!(failed["state"], "Failed", "{failed}");
    assert_eq!(
        failed["error"],
        "sink table public.narrow has no column \"d10\" (source column 2); its columns: id"
    );
    let failed = submit(&["--source", "warehouse:public.nan", "--sink", "share:/lake/nan.parquet"]).await;
    assert_eq!(failed["state"], "Failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "source table public.nan: row 2, column \"amount\" (numeric): 'NaN' has no decimal equivalent"
        ),
        "{failed}"
    );
    assert!(!error.contains('\n'), "{error}");
    assert!(!share.join("lake/nan.parquet").exists(), "nothing published");
    // CSV has no lists: an array column fails a CSV sink (a query can cast it to text).
    let failed = submit(&[
        "--source",
        "warehouse:select ints from every_type",
        "--sink",
        "share:/lake/ints.csv",
    ])
    .await;
    assert_eq!(failed["state"], "Failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("not supported in CSV"), "{failed}");
    assert!(!error.contains('\n'), "{error}");
    assert!(!share.join("lake/ints.csv").exists(), "nothing published");
    let done = submit(&[
        "--source",
        "warehouse:select ints::text from every_type",
        "--sink",
        "share:/lake/ints.csv",
    ])
    .await;
    assert_eq!(done["state"], "Succeeded", "{done}");
    assert_eq!(
        text(
            &client,
            "SELECT (SELECT count(*) FROM wrong) || ',' || (SELECT count(*) FROM narrow)"
        )
        .await,
        "0,0"
    );

    for (bad, why) in [
        ("state_schema=Bad-Name", "'Bad-Name'"),
        ("state_schema=pg_mine", "'pg_mine'"),
        ("state_schema=", "empty"),
    ] {
        let err = common::try_create_postgres_service(&ir, 0, "warehouse2", &pg, &db, &["--set", bad])
            .await
            .unwrap_err();
        assert!(err.contains("state_schema") && err.contains(why), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let services = shir_on(&ir, 0, &["linked-service", "list"], None).await.unwrap();
    assert!(!services.contains("warehouse2"), "{services}");
    ir.stop_all().await;
}
