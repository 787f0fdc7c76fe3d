//! The PostgreSQL source and sink against a throw-away server (one per test binary, a
//! database per test), read back with `psql` where it counts.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray as _, Date32Array, Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::StreamExt as _;
use tokio_postgres::Client;

use super::{read_table, write_table};
use crate::connectors::{ServiceSpec, ServiceType};
use crate::copy::{AttemptId, Batches, CopyError, Counters, CsvOptions, Endpoint, Format, Location, Staged};
use crate::testing::postgres::ThrowawayPostgres;

/// A database of one test's own on the shared server.
struct Db {
    server: &'static ThrowawayPostgres,
    name: String,
    client: Client,
}

impl Db {
    /// `None` (the test skips) when PostgreSQL is not installed and CI is not set.
    async fn new() -> Option<Db> {
        let server = ThrowawayPostgres::shared()?;
        let name = server.create_database().await;
        let client = server.client(&name).await;
        Some(Db { server, name, client })
    }

    fn endpoint(&self, location: Location) -> Endpoint {
        Endpoint {
            service_name: "warehouse".into(),
            service: self.server.service_spec(&self.name),
            location,
            // PostgreSQL ignores the format.
            format: Format::Csv(CsvOptions::default()),
            if_exists: Default::default(),
            proxy: None,
        }
    }

    fn table(&self, table: &str) -> Endpoint {
        self.endpoint(Location::Table {
            schema: "public".into(),
            table: table.into(),
        })
    }

    async fn sql(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", crate::error_chain(&e)));
    }

    /// Rows in a table, seen from a connection of its own (committed rows only).
    async fn count(&self, table: &str) -> i64 {
        self.client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The table's rows as PostgreSQL prints them, in `id` order: equal texts, equal data.
    async fn dump(&self, table: &str) -> String {
        self.client
            .query_one(
                &format!("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY id), '') FROM {table} t"),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `psql -c SQL`'s output, trimmed; panics if psql fails.
    fn psql(&self, sql: &str) -> String {
        let out = self
            .server
            .psql(&self.name)
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -c {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

fn attempt(job: &str, attempt: u32) -> AttemptId {
    AttemptId {
        job_id: job.into(),
        attempt,
    }
}

async fn collect(batches: Batches) -> Result<Vec<RecordBatch>, CopyError> {
    batches.collect::<Vec<_>>().await.into_iter().collect()
}

fn stream_of(batches: Vec<RecordBatch>) -> Batches {
    futures::stream::iter(batches.into_iter().map(Ok)).boxed()
}

/// A batch of `id` (Int32) and `t` (Utf8) rows.
fn ids_and_texts(ids: std::ops::Range<i32>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, true),
        Field::new("t", DataType::Utf8, true),
    ]));
    let texts: Vec<String> = ids.clone().map(|i| format!("row {i}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from_iter_values(ids)),
            Arc::new(StringArray::from(texts)),
        ],
    )
    .unwrap()
}

async fn stage_rows(db: &Db, table: &str, job: &str, n: u32, rows: std::ops::Range<i32>) -> Staged {
    write_table(
        &attempt(job, n),
        &db.table(table),
        stream_of(vec![ids_and_texts(rows)]),
        &Counters::default(),
    )
    .await
    .unwrap()
}

/// Every mapped type, a row of NULLs and a row of awkward values.
const ALL_TYPES: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
    CREATE TABLE src (
        id integer NOT NULL, b boolean, i2 smallint, i8 bigint, f4 real, f8 double precision,
        n numeric, n2 numeric(12, 3), t text, vc varchar(20), c char(5), nm name, by bytea,
        d date, tm time, ts timestamp, tz timestamptz, u uuid, j json, jb jsonb, m mood, p positive
    );
    INSERT INTO src VALUES
        (1, true, 12, 1234567890123, 1.5, 2.25, 3.14159, 42.5, 'hello', 'short', 'ab', 'a_name',
         '\xdeadbeef', '2024-02-29', '12:34:56', '2024-02-29 12:34:56.123456',
         '2024-02-29 12:34:56.789+05:30', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '{"a": [1, 2.50, "x"]}', '{"b": {"c": null}}', 'happy', 7),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, false, -32768, -9223372036854775808, 'NaN', '-Infinity', 'NaN', -0.001,
         E'tab\there, newline\nthere, backslash \\ and \\N, quote '' "', '', '', '',
         '\x005c0a0d09ff', '0044-03-15 BC', '00:00:00.000001', '0044-03-15 12:00:00.5 BC',
         '1900-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000', '[]', '"é ☃ 🎉"', 'sad', 1),
        (4, true, 32767, 9223372036854775807, 3.4028235e38, 1e-300,
         '-123456789012345678901234567890.123456789012345678901234567890', 99999999.999, 'ünïcödé',
         'exactly twenty chars', 'abcde', repeat('n', 63), '', '9999-12-31', '23:59:59.999999',
         '9999-12-31 23:59:59.999999', '2262-04-11 23:47:16.854775+00',
         'ffffffff-ffff-ffff-ffff-ffffffffffff', '  {"spaces": true}  ', '{"n": 1e400}', 'ok', 2147483647);
    CREATE TABLE dst (LIKE src);
"#;

#[tokio::test]
async fn every_mapped_type_goes_table_to_batches_to_table_unchanged() {
    let Some(db) = Db::new().await else { return };
    db.sql(ALL_TYPES).await;

    let counters = Counters::default();
    let batches = collect(read_table(&db.table("src"), &counters).await.unwrap())
        .await
        .unwrap();
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(batch.num_rows(), 4);

    let types: Vec<(String, DataType)> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let utf8 = DataType::Utf8;
    let expected = [
        ("id", DataType::Int32),
        ("b", DataType::Boolean),
        ("i2", DataType::Int16),
        ("i8", DataType::Int64),
        ("f4", DataType::Float32),
        ("f8", DataType::Float64),
        ("n", utf8.clone()),
        ("n2", utf8.clone()),
        ("t", utf8.clone()),
        ("vc", utf8.clone()),
        ("c", utf8.clone()),
        ("nm", utf8.clone()),
        ("by", DataType::Binary),
        ("d", DataType::Date32),
        ("tm", DataType::Time64(TimeUnit::Microsecond)),
        ("ts", DataType::Timestamp(TimeUnit::Microsecond, None)),
        ("tz", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))),
        ("u", utf8.clone()),
        ("j", utf8.clone()),
        ("jb", utf8.clone()),
        ("m", utf8.clone()),
        ("p", DataType::Int32),
    ];
    let expected: Vec<(String, DataType)> = expected.into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
    assert_eq!(types, expected);

    // Values as Arrow holds them.
    let column = |name: &str| -> ArrayRef { batch.column_by_name(name).unwrap().clone() };
    let text = |name: &str, row: usize| -> String { column(name).as_string::<i32>().value(row).to_owned() };
    assert_eq!(text("n", 0), "3.14159");
    assert_eq!(text("n2", 0), "42.500");
    assert_eq!(text("n", 2), "NaN");
    assert_eq!(text("n2", 2), "-0.001");
    assert_eq!(
        text("n", 3),
        "-123456789012345678901234567890.123456789012345678901234567890"
    );
    assert_eq!(text("c", 0), "ab   ");
    assert_eq!(text("u", 0), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(text("jb", 0), r#"{"b": {"c": null}}"#);
    assert_eq!(text("m", 0), "happy");
    assert_eq!(column("by").as_binary::<i32>().value(2), b"\x00\x5c\x0a\x0d\x09\xff");
    let days = column("d");
    let days = days.as_any().downcast_ref::<Date32Array>().unwrap();
    assert_eq!(days.value(0), 19_782); // 2024-02-29
    let tz = column("tz");
    let tz = tz.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(tz.value(0), 1_709_190_296_789_000); // 2024-02-29 07:04:56.789 UTC
    for name in ["b", "i2", "n", "t", "by", "d", "tz", "u", "jb", "m", "p"] {
        assert!(column(name).is_null(1), "{name} of row 2 should be NULL");
        assert!(!column(name).is_null(0), "{name} of row 1 should not be NULL");
    }
    assert!(!column("t").is_null(2), "an empty string is not NULL");
    assert_eq!(text("t", 3), "ünïcödé");

    // Arrow's own CSV and JSON writers take every column (a time zone they cannot format,
    // such as a zone name without arrow's chrono-tz feature, would fail here).
    let mut csv = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
    csv.write(batch).unwrap();
    let csv = String::from_utf8(csv.into_inner()).unwrap();
    assert!(csv.contains("2024-02-29T07:04:56.789Z"), "{csv}");
    let mut json = arrow::json::LineDelimitedWriter::new(Vec::new());
    json.write(batch).unwrap();
    json.finish().unwrap();
    assert_eq!(String::from_utf8(json.into_inner()).unwrap().lines().count(), 4);

    // And back into a table of the same definition.
    let staged = write_table(
        &attempt("job-types", 1),
        &db.table("dst"),
        stream_of(batches),
        &counters,
    )
    .await
    .unwrap();
    assert_eq!(
        (staged.rows, staged.check.rows_read, staged.check.rows_written),
        (4, 4, 4)
    );
    assert!(staged.check.verified);
    staged.publish().await.unwrap();
    assert_eq!(db.dump("dst").await, db.dump("src").await);
    assert_eq!(counters.snapshot().0, 4);
}

#[tokio::test]
async fn a_query_source_yields_its_columns_and_rows() {
    let Some(db) = Db::new().await else { return };
    db.sql(ALL_TYPES).await;
    let query = Location::Query(
        "SELECT id, n2 * 2 AS doubled, upper(t) AS shout, d + 1 AS next_day FROM src \
         WHERE id IN (1, 2) ORDER BY id -- a trailing comment\n ; "
            .into(),
    );
    let batches = collect(read_table(&db.endpoint(query), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "doubled", "shout", "next_day"]);
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.column(1).as_string::<i32>().value(0), "85.000");
    assert_eq!(batch.column(2).as_string::<i32>().value(0), "HELLO");
    assert!(batch.column(2).is_null(1));
    assert_eq!(
        batch.column(3).as_primitive::<arrow::datatypes::Date32Type>().value(0),
        19_783
    );
}

#[tokio::test]
async fn numeric_text_matches_what_postgresql_prints() {
    let Some(db) = Db::new().await else { return };
    let query = Location::Query(
        "SELECT v, v::text FROM (\
             SELECT round(((random() - 0.5) * 10 ^ (g % 30))::numeric, g % 17) AS v FROM generate_series(1, 3000) g \
             UNION ALL SELECT x::numeric FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '0', '0.0000', '-0.001', \
                 '100000000', '1e-20', '10000', '9999.9999', '-12345678901234567890.123456789012']) x\
         ) s"
        .into(),
    );
    let batches = collect(read_table(&db.endpoint(query), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    let mut rows = 0;
    for batch in &batches {
        let (ours, theirs) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        for i in 0..batch.num_rows() {
            assert_eq!(ours.value(i), theirs.value(i));
        }
        rows += batch.num_rows();
    }
    assert_eq!(rows, 3011);
}

#[tokio::test]
async fn a_large_table_streams_in_bounded_batches_and_loads_back() {
    let Some(db) = Db::new().await else { return };
    db.sql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS t, g * 0.5 AS half, \
             timestamp '2000-01-01' + g * interval '1 second' AS at FROM generate_series(1, 100000) g; \
         CREATE TABLE big_copy (LIKE big);",
    )
    .await;
    let counters = Counters::default();
    let batches = read_table(&db.table("big"), &counters).await.unwrap();
    let staged = write_table(&attempt("job-big", 1), &db.table("big_copy"), batches, &counters)
        .await
        .unwrap();
    assert_eq!(staged.check.rows_read, 100_000);
    assert_eq!(staged.check.rows_written, 100_000);
    assert!(staged.check.verified);
    staged.publish().await.unwrap();
    assert_eq!(db.dump("big_copy").await, db.dump("big").await);
    let (rows, bytes, files) = counters.snapshot();
    assert_eq!((rows, files), (100_000, 0));
    assert!(bytes > 100_000 * 32, "{bytes}");

    let batches = collect(read_table(&db.table("big"), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(sizes.len(), 13, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= super::BATCH_ROWS), "{sizes:?}");
}

#[tokio::test]
async fn an_empty_source_still_yields_its_columns() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE nothing (id integer, t text)").await;
    let batches = collect(read_table(&db.table("nothing"), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].num_rows(), 0);
    assert_eq!(batches[0].num_columns(), 2);
}

#[tokio::test]
async fn a_type_it_cannot_map_is_a_fatal_error_naming_the_column() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE odd (id integer, \"during\" interval); INSERT INTO odd VALUES (1, '1 day')")
        .await;
    let err = read_table(&db.table("odd"), &Counters::default()).await.err().unwrap();
    println!("{err}");
    assert!(!err.retryable);
    assert!(err.message.contains("column 2 (\"during\") has type interval"), "{err}");
    assert!(err.message.contains("source table public.odd"), "{err}");

    // What the message suggests works.
    let query = Location::Query("SELECT id, \"during\"::text FROM odd".into());
    let batches = collect(read_table(&db.endpoint(query), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    assert_eq!(batches[0].column(1).as_string::<i32>().value(0), "1 day");
}

#[tokio::test]
async fn an_infinite_timestamp_is_a_fatal_error_naming_the_row_and_column() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE inf (id integer, at timestamp); INSERT INTO inf VALUES (1, now()), (2, 'infinity')")
        .await;
    let batches = read_table(&db.table("inf"), &Counters::default()).await.unwrap();
    let err = collect(batches).await.unwrap_err();
    println!("{err}");
    assert!(!err.retryable);
    assert!(err.message.contains("row 2, column \"at\""), "{err}");
    assert!(err.message.contains("'infinity'"), "{err}");
}

#[tokio::test]
async fn a_missing_source_table_or_a_bad_query_is_fatal() {
    let Some(db) = Db::new().await else { return };
    let err = read_table(&db.table("nope"), &Counters::default()).await.err().unwrap();
    assert_eq!(err, CopyError::fatal("source table public.nope does not exist"));

    let query = Location::Query("SELEC 1".into());
    let err = read_table(&db.endpoint(query), &Counters::default())
        .await
        .err()
        .unwrap();
    println!("{err}");
    assert!(!err.retryable);
    assert!(err.message.starts_with("source query: syntax error"), "{err}");

    // An error while the rows stream, not when the query is planned.
    let query = Location::Query("SELECT 1 / (g - 5000) FROM generate_series(1, 10000) g".into());
    let batches = read_table(&db.endpoint(query), &Counters::default()).await.unwrap();
    let err = collect(batches).await.unwrap_err();
    println!("{err}");
    assert!(!err.retryable);
    assert!(err.message.contains("division by zero"), "{err}");
}

#[tokio::test]
async fn a_source_query_cannot_write() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE victim (id integer); INSERT INTO victim VALUES (1)")
        .await;
    let query = Location::Query("DELETE FROM victim RETURNING id".into());
    let err = match read_table(&db.endpoint(query), &Counters::default()).await {
        Ok(batches) => collect(batches).await.unwrap_err(),
        Err(e) => e,
    };
    println!("{err}");
    assert!(err.message.contains("read-only transaction"), "{err}");
    assert_eq!(db.count("victim").await, 1);
}

#[tokio::test]
async fn a_missing_sink_table_is_fatal() {
    let Some(db) = Db::new().await else { return };
    let err = write_table(
        &attempt("job-missing", 1),
        &db.table("nope"),
        stream_of(vec![ids_and_texts(0..3)]),
        &Counters::default(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err, CopyError::fatal("sink table public.nope does not exist"));
}

#[tokio::test]
async fn a_wrong_column_count_says_how_many_each_side_has() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE three (id integer, t text, extra date)").await;
    let err = write_table(
        &attempt("job-count", 1),
        &db.table("three"),
        stream_of(vec![ids_and_texts(0..3)]),
        &Counters::default(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        err,
        CopyError::fatal("sink table public.three has 3 columns, the source has 2")
    );
    assert_eq!(db.count("three").await, 0);
}

#[tokio::test]
async fn a_column_of_the_wrong_kind_is_refused_before_loading() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE typed (id date, t text)").await;
    let err = write_table(
        &attempt("job-kind", 1),
        &db.table("typed"),
        stream_of(vec![ids_and_texts(0..3)]),
        &Counters::default(),
    )
    .await
    .err()
    .unwrap();
    println!("{err}");
    assert!(!err.retryable);
    assert!(
        err.message
            .contains("source column 1 (\"id\", Int32) cannot be written to column \"id\" (date)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bad_value_is_fatal_names_the_row_and_loads_nothing() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE numbers (id integer, t integer)").await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, true),
        Field::new("t", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![Some("10"), None, Some("eleven")])),
        ],
    )
    .unwrap();
    let err = write_table(
        &attempt("job-bad", 1),
        &db.table("numbers"),
        stream_of(vec![batch]),
        &Counters::default(),
    )
    .await
    .err()
    .unwrap();
    println!("{err}");
    assert!(!err.retryable);
    assert!(!err.message.contains('\n'), "{err}");
    assert!(
        err.message
            .contains("invalid input syntax for type integer: \"eleven\""),
        "{err}"
    );
    assert!(err.message.contains("line 3, column t"), "{err}");
    assert_eq!(db.count("numbers").await, 0);
}

#[tokio::test]
async fn staged_rows_are_invisible_until_publish() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE target (id integer, t text)").await;
    let staged = stage_rows(&db, "target", "job-visible", 1, 0..1000).await;
    assert_eq!(staged.rows, 1000);
    assert_eq!(db.count("target").await, 0, "rows visible before publish");
    assert_eq!(db.psql("SELECT count(*) FROM target"), "0");

    staged.publish().await.unwrap();
    assert_eq!(db.count("target").await, 1000);
    let record = db
        .client
        .query_one(
            "SELECT attempt, rows, sink_table FROM shir.job_commits WHERE job_id = 'job-visible'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            record.get::<_, i32>(0),
            record.get::<_, i64>(1),
            record.get::<_, String>(2)
        ),
        (1, 1000, "public.target".to_owned())
    );
}

#[tokio::test]
async fn discard_leaves_the_table_as_it_was() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE target (id integer, t text); INSERT INTO target VALUES (-1, 'before'), (-2, 'before')")
        .await;
    let before = db.dump("target").await;
    let staged = stage_rows(&db, "target", "job-discard", 1, 0..10).await;
    staged.discard().await;
    assert_eq!(db.dump("target").await, before);

    // A staged output dropped without either (its node died): the same.
    let staged = stage_rows(&db, "target", "job-dropped", 1, 0..10).await;
    drop(staged);
    assert_eq!(db.dump("target").await, before);
    let recorded: i64 = db
        .client
        .query_one("SELECT count(*) FROM shir.job_commits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn a_second_attempt_publishing_after_the_first_leaves_one_copy() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE target (id integer, t text)").await;
    let first = stage_rows(&db, "target", "job-twice", 1, 0..500).await;
    first.publish().await.unwrap();
    let second = stage_rows(&db, "target", "job-twice", 2, 0..500).await;
    second.publish().await.unwrap();
    assert_eq!(db.count("target").await, 500);
    let attempt: i32 = db
        .client
        .query_one("SELECT attempt FROM shir.job_commits WHERE job_id = 'job-twice'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempt, 1);

    // Another job into the same table is not confused with it.
    stage_rows(&db, "target", "job-other", 1, 500..600)
        .await
        .publish()
        .await
        .unwrap();
    assert_eq!(db.count("target").await, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_attempts_publishing_at_once_leave_one_copy() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE target (id integer, t text)").await;
    for round in 0..5 {
        let job = format!("job-race-{round}");
        let (a, b) = tokio::join!(
            stage_rows(&db, "target", &job, 1, 0..300),
            stage_rows(&db, "target", &job, 2, 0..300)
        );
        let (a, b) = tokio::join!(a.publish(), b.publish());
        a.unwrap();
        b.unwrap();
        assert_eq!(db.count("target").await, 300 * (round + 1), "round {round}");
    }
    let jobs: i64 = db
        .client
        .query_one("SELECT count(*) FROM shir.job_commits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 5);
}

#[tokio::test]
async fn psql_reads_back_what_we_loaded() {
    let Some(db) = Db::new().await else { return };
    db.sql(ALL_TYPES).await;
    let batches = read_table(&db.table("src"), &Counters::default()).await.unwrap();
    write_table(&attempt("job-psql", 1), &db.table("dst"), batches, &Counters::default())
        .await
        .unwrap()
        .publish()
        .await
        .unwrap();
    assert_eq!(db.psql("SELECT count(*), count(t), count(by) FROM dst"), "4|3|3");
    assert_eq!(
        db.psql("SELECT n, n2, c, encode(by, 'hex'), d, ts, tz, u, jb, m FROM dst WHERE id = 1"),
        "3.14159|42.500|ab   |deadbeef|2024-02-29|2024-02-29 12:34:56.123456|2024-02-29 07:04:56.789+00|\
         a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|{\"b\": {\"c\": null}}|happy"
    );
    assert_eq!(
        db.psql("SELECT t = E'tab\\there, newline\\nthere, backslash \\\\ and \\\\N, quote '' \"', d, ts, encode(by, 'hex') FROM dst WHERE id = 3"),
        "t|0044-03-15 BC|0044-03-15 12:00:00.5 BC|005c0a0d09ff"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM dst WHERE id = 2 AND num_nulls(b, i2, i8, f4, f8, n, n2, t, vc, c, nm, by, d, tm, ts, tz, u, j, jb, m, p) = 21"),
        "1"
    );
}

#[tokio::test]
async fn unreachable_servers_are_transient_and_wrong_passwords_fatal_never_shown() {
    let Some(db) = Db::new().await else { return };
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let password = "Never-Shown-pw-1234";
    let spec = |port: u16| {
        ServiceSpec::new(ServiceType::Postgres)
            .with("host", "127.0.0.1")
            .with("port", port.to_string())
            .with("database", db.name.as_str())
            .with("user", "shir")
            .with_secret("password", password)
    };
    let endpoint = |port: u16| Endpoint {
        service_name: "warehouse".into(),
        service: spec(port),
        location: Location::Table {
            schema: "public".into(),
            table: "t".into(),
        },
        format: Format::Parquet,
        if_exists: Default::default(),
        proxy: None,
    };

    let err = read_table(&endpoint(closed), &Counters::default()).await.err().unwrap();
    println!("{err}");
    assert!(err.retryable, "{err}");
    assert!(
        err.message.contains("cannot connect to PostgreSQL at 127.0.0.1"),
        "{err}"
    );
    assert!(!err.message.contains(password));

    let err = write_table(
        &attempt("job-auth", 1),
        &endpoint(db.server.port()),
        stream_of(vec![]),
        &Counters::default(),
    )
    .await
    .err()
    .unwrap();
    println!("{err}");
    assert!(!err.retryable, "{err}");
    assert!(err.message.contains("password authentication failed"), "{err}");
    assert!(!err.message.contains(password));
    assert!(!err.message.contains('\n'));
}

#[tokio::test]
async fn a_role_that_may_not_create_schemas_uses_a_record_made_by_an_owner() {
    let Some(db) = Db::new().await else { return };
    let role = format!("etl_{:08x}", rand::random::<u32>());
    let password = format!("pw{:016x}", rand::random::<u64>());
    // Both made of hex just above: nothing to quote.
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
         CREATE TABLE target (id integer, t text); GRANT INSERT, SELECT ON target TO {role};"
    ))
    .await;
    let etl = Endpoint {
        service: ServiceSpec::new(ServiceType::Postgres)
            .with("host", db.server.host())
            .with("port", db.server.port().to_string())
            .with("database", db.name.as_str())
            .with("user", role.as_str())
            .with_secret("password", password.as_str()),
        ..db.table("target")
    };
    let (job, counters) = (attempt("job-etl", 1), Counters::default());
    let load = || write_table(&job, &etl, stream_of(vec![ids_and_texts(0..5)]), &counters);

    let err = load().await.err().unwrap();
    println!("{err}");
    assert!(!err.retryable);
    assert!(
        err.message
            .starts_with("cannot create the idempotency record shir.job_commits: permission denied for database"),
        "{err}"
    );
    assert!(err.message.contains("have an owner of the database run once"), "{err}");

    // What the message asks for.
    db.sql(super::CREATE_COMMITS).await;
    db.sql(&format!(
        "GRANT USAGE ON SCHEMA shir TO {role}; GRANT INSERT, SELECT ON shir.job_commits TO {role}"
    ))
    .await;
    load().await.unwrap().publish().await.unwrap();
    assert_eq!(db.count("target").await, 5);
}
