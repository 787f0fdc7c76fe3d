//! The PostgreSQL source and sink against a throw-away server (one per test binary, a
//! database per test), read back with `psql` where it counts.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray as _, Date32Array, Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::StreamExt as _;
use tokio_postgres::Client;

use super::read_table;
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

    /// The one text value a query returns.
    async fn text(&self, sql: &str) -> String {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", crate::error_chain(&e)))
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

/// The sink as most tests use it: into a table that exists.
async fn write_table(
    attempt: &AttemptId,
    sink: &Endpoint,
    batches: Batches,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    super::write_table(attempt, sink, batches, counters, false).await
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
        ("n2", DataType::Decimal128(12, 3)),
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
    let n2 = column("n2");
    let n2 = n2.as_primitive::<arrow::datatypes::Decimal128Type>();
    assert_eq!(n2.value_as_string(0), "42.500");
    assert_eq!(n2.value_as_string(3), "99999999.999");
    assert_eq!(text("n", 2), "NaN");
    assert_eq!(n2.value(2), -1);
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

/// Decimals of both widths, an unconstrained numeric, intervals and arrays.
const RICH_TYPES: &str = r#"
    CREATE TABLE rich (
        id integer NOT NULL, d10 numeric(10, 2), d40 numeric(40, 5), free numeric, neg numeric(3, -2),
        iv interval, ia integer[], ta text[], da numeric(6, 2)[], ba bytea[], za timestamptz[], ua uuid[],
        ja jsonb[], bo boolean[], dt date[], fa double precision[]
    );
    INSERT INTO rich VALUES
        (1, 12345678.91, -12345678901234567890123456789012345.12345, 3.14159265358979323846264338327950288419716939937510,
         12300, '1 year 2 mons 3 days 04:05:06.5', '{1,NULL,-3}', '{"a,b","q\"uote","back\\slash",NULL,"NULL",""}',
         '{1.50,-0.01}', '{"\\x00ff",NULL}', '{"2024-02-29 12:34:56.789+05:30"}',
         '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', ARRAY['{"k": [1, "x"]}'::jsonb], '{t,f,NULL}',
         '{2024-02-29,1999-12-31}', '{1.5,NaN,-Infinity}'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, -0.01, 0, 'NaN', -99900, '-1 mons -1 days -00:00:00.000001', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
         '{}', '{}', '{}'),
        (4, 99999999.99, 99999999999999999999999999999999999.99999, '-1e-30', 0, '1 day -01:00:01', '{2147483647}',
         E'{"tab\there","newline\nthere"}', '{9999.99}', '{""}', '{NULL}', '{NULL}', '{null}', '{f}', '{NULL}', '{0}');
    CREATE TABLE rich_copy (LIKE rich);
"#;

#[tokio::test]
async fn decimals_intervals_and_arrays_go_table_to_batches_to_table_unchanged() {
    let Some(db) = Db::new().await else { return };
    db.sql(RICH_TYPES).await;
    let batches = collect(read_table(&db.table("rich"), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    let batch = &batches[0];
    let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
    let types: Vec<DataType> = batch.schema().fields().iter().map(|f| f.data_type().clone()).collect();
    assert_eq!(
        types,
        [
            DataType::Int32,
            DataType::Decimal128(10, 2),
            DataType::Decimal256(40, 5),
            DataType::Utf8,
            DataType::Decimal128(5, 0),
            DataType::Utf8,
            list(DataType::Int32),
            list(DataType::Utf8),
            list(DataType::Decimal128(6, 2)),
            list(DataType::Binary),
            list(DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))),
            list(DataType::Utf8),
            list(DataType::Utf8),
            list(DataType::Boolean),
            list(DataType::Date32),
            list(DataType::Float64),
        ]
    );
    let declared: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.metadata()[super::decode::POSTGRES_TYPE].as_str())
        .collect();
    assert_eq!(
        declared,
        [
            "int4",
            "numeric(10,2)",
            "numeric(40,5)",
            "numeric",
            "numeric(3,-2)",
            "interval",
            "int4[]",
            "text[]",
            "numeric(6,2)[]",
            "bytea[]",
            "timestamptz[]",
            "uuid[]",
            "jsonb[]",
            "bool[]",
            "date[]",
            "float8[]"
        ]
    );
    let d40 = batch.column(2).as_primitive::<arrow::datatypes::Decimal256Type>();
    assert_eq!(d40.value_as_string(0), "-12345678901234567890123456789012345.12345");
    assert_eq!(d40.value_as_string(3), "99999999999999999999999999999999999.99999");
    assert_eq!(
        batch.column(3).as_string::<i32>().value(0),
        "3.14159265358979323846264338327950288419716939937510"
    );
    assert_eq!(
        batch.column(5).as_string::<i32>().value(0),
        "1 year 2 months 3 days 4 hours 5 minutes 6.5 seconds"
    );
    let ia = batch.column(6).as_list::<i32>();
    assert_eq!(ia.value_length(0), 3);
    assert!(ia.value(0).is_null(1));
    assert!(ia.is_null(1), "a NULL array is a NULL list");
    assert_eq!(ia.value_length(2), 0, "an empty array is an empty list");

    let staged = write_table(
        &attempt("job-rich", 1),
        &db.table("rich_copy"),
        stream_of(batches),
        &Counters::default(),
    )
    .await
    .unwrap();
    staged.publish().await.unwrap();
    assert_eq!(db.dump("rich_copy").await, db.dump("rich").await);
    let same: bool = db
        .client
        .query_one(
            "SELECT NOT EXISTS (SELECT * FROM rich EXCEPT SELECT * FROM rich_copy)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same);
}

#[tokio::test]
async fn a_nan_in_a_decimal_column_or_a_nested_array_fails_naming_row_and_column() {
    let Some(db) = Db::new().await else { return };
    db.sql(
        "CREATE TABLE nan (id integer, amount numeric(10, 2)); INSERT INTO nan VALUES (1, 1.5), (2, 'NaN'); \
         CREATE TABLE grid (id integer, cells integer[]); INSERT INTO grid VALUES (1, '{{1,2},{3,4}}')",
    )
    .await;
    let err = collect(read_table(&db.table("nan"), &Counters::default()).await.unwrap())
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.starts_with(
            "source table public.nan: row 2, column \"amount\" (numeric): 'NaN' has no decimal equivalent"
        ),
        "{err}"
    );
    let err = collect(read_table(&db.table("grid"), &Counters::default()).await.unwrap())
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("row 1, column \"cells\" (integer[]): an array of 2 dimensions"),
        "{err}"
    );
    // A query's cast decides the type: its modifier comes with the query's description.
    let query = Location::Query(
        "SELECT amount::numeric(12, 4) AS a, amount AS b, amount * 1 AS c FROM nan WHERE id = 1".into(),
    );
    let batches = collect(read_table(&db.endpoint(query), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    let types: Vec<DataType> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        [DataType::Decimal128(12, 4), DataType::Decimal128(10, 2), DataType::Utf8]
    );
}

#[tokio::test]
async fn create_table_makes_the_table_in_the_load_transaction_with_the_source_types() {
    let Some(db) = Db::new().await else { return };
    let db = &db;
    db.sql(RICH_TYPES).await;
    let load = |job: &'static str, table: &'static str| {
        let (source, sink) = (db.table("rich"), db.table(table));
        async move {
            let batches = read_table(&source, &Counters::default()).await.unwrap();
            super::write_table(&attempt(job, 1), &sink, batches, &Counters::default(), true)
                .await
                .unwrap()
        }
    };
    let exists = |table: &'static str| async move {
        db.text(&format!("SELECT (to_regclass('public.{table}') IS NOT NULL)::text"))
            .await
    };
    // Discarded: no table is left behind.
    load("job-made-discarded", "made").await.discard().await;
    assert_eq!(exists("made").await, "false");
    // Staged, the table is invisible to others; published, it holds the rows.
    let staged = load("job-made", "made").await;
    assert_eq!(exists("made").await, "false");
    staged.publish().await.unwrap();
    assert_eq!(db.dump("made").await, db.dump("rich").await);
    let columns = |table: &'static str| async move {
        db.text(&format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'public.{table}'::regclass AND attnum > 0"
        ))
        .await
    };
    assert_eq!(columns("made").await, columns("rich").await);
    // A second job into the table that now exists loads into it as into any table.
    load("job-made-again", "made").await.publish().await.unwrap();
    assert_eq!(db.count("made").await, 8);
}

#[tokio::test]
async fn the_records_live_in_the_schema_the_linked_service_names() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE target (id integer, t text)").await;
    let mut sink = db.table("target");
    sink.service = sink.service.with("state_schema", "etl_state");
    let staged = super::write_table(
        &attempt("job-state", 1),
        &sink,
        stream_of(vec![ids_and_texts(0..2)]),
        &Counters::default(),
        false,
    )
    .await
    .unwrap();
    staged.publish().await.unwrap();
    assert_eq!(
        db.text("SELECT sink_table || ' ' || rows FROM etl_state.job_commits WHERE job_id = 'job-state'")
            .await,
        "public.target 2"
    );
    assert_eq!(db.text("SELECT (to_regnamespace('shir') IS NULL)::text").await, "true");
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
    db.sql("CREATE TABLE odd (id integer, \"during\" int4range); INSERT INTO odd VALUES (1, '[1,5)')")
        .await;
    let err = read_table(&db.table("odd"), &Counters::default()).await.err().unwrap();
    println!("{err}");
    assert!(!err.retryable);
    assert!(
        err.message.contains("column 2 (\"during\") has type int4range"),
        "{err}"
    );
    assert!(err.message.contains("source table public.odd"), "{err}");

    // What the message suggests works.
    let query = Location::Query("SELECT id, \"during\"::text FROM odd".into());
    let batches = collect(read_table(&db.endpoint(query), &Counters::default()).await.unwrap())
        .await
        .unwrap();
    assert_eq!(batches[0].column(1).as_string::<i32>().value(0), "[1,5)");
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
    assert_eq!(
        err,
        CopyError::fatal("sink table public.nope does not exist (--create-table makes it from the source's columns)")
    );
}

/// One batch of the given columns, each Int32 holding `values`.
fn ints(names: &[&str], values: &[i32]) -> RecordBatch {
    let fields: Vec<Field> = names.iter().map(|n| Field::new(*n, DataType::Int32, true)).collect();
    let arrays: Vec<ArrayRef> = names
        .iter()
        .map(|_| Arc::new(Int32Array::from(values.to_vec())) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

#[tokio::test]
async fn columns_are_matched_by_name_ignoring_case_and_the_rest_get_their_defaults() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE named (total integer, extra integer DEFAULT 7, \"Id\" integer, spare text)")
        .await;
    // Source order differs from the table's, and neither name is written as the table has it.
    let staged = write_table(
        &attempt("job-named", 1),
        &db.table("named"),
        stream_of(vec![ints(&["id", "TOTAL"], &[1, 2])]),
        &Counters::default(),
    )
    .await
    .unwrap();
    staged.publish().await.unwrap();
    assert_eq!(
        db.text(
            "SELECT string_agg(concat_ws(',', \"Id\", total, extra, spare IS NULL), ';' ORDER BY \"Id\") FROM named"
        )
        .await,
        "1,1,7,t;2,2,7,t"
    );
}

#[tokio::test]
async fn a_source_column_the_table_lacks_is_named_and_nothing_loads() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE three (id integer, other text, extra date)").await;
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
        CopyError::fatal(
            "sink table public.three has no column \"t\" (source column 2); its columns: id, other, extra"
        )
    );
    assert_eq!(db.count("three").await, 0);
}

#[tokio::test]
async fn a_required_column_the_source_lacks_and_an_ambiguous_name_are_refused() {
    let Some(db) = Db::new().await else { return };
    db.sql(
        "CREATE TABLE strict (id integer, must integer NOT NULL, dflt integer NOT NULL DEFAULT 0, \
             auto integer GENERATED ALWAYS AS IDENTITY); \
         CREATE TABLE twins (\"Ab\" integer, \"aB\" integer)",
    )
    .await;
    let load = |table: &'static str, names: &'static [&'static str]| {
        let sink = db.table(table);
        async move {
            write_table(
                &attempt("job-strict", 1),
                &sink,
                stream_of(vec![ints(names, &[1])]),
                &Counters::default(),
            )
            .await
            .err()
            .unwrap()
        }
    };
    assert_eq!(
        load("strict", &["id"]).await,
        CopyError::fatal(
            "column \"must\" of sink table public.strict is NOT NULL without a default, and the source has no column of that name"
        )
    );
    let err = load("twins", &["ab"]).await;
    assert_eq!(
        err.message,
        "source column \"ab\" matches both \"Ab\" and \"aB\" of sink table public.twins, which differ only in case"
    );
    assert_eq!(db.count("strict").await + db.count("twins").await, 0);
}

#[tokio::test]
async fn a_headerless_csv_goes_into_the_columns_by_position() {
    let Some(db) = Db::new().await else { return };
    db.sql("CREATE TABLE pos (a integer, b integer)").await;
    let staged = write_table(
        &attempt("job-pos", 1),
        &db.table("pos"),
        stream_of(vec![ints(&["column_1", "column_2"], &[5])]),
        &Counters::default(),
    )
    .await
    .unwrap();
    staged.publish().await.unwrap();
    assert_eq!(db.text("SELECT concat_ws(',', a, b) FROM pos").await, "5,5");
    let err = write_table(
        &attempt("job-pos-3", 1),
        &db.table("pos"),
        stream_of(vec![ints(&["column_1", "column_2", "column_3"], &[5])]),
        &Counters::default(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        err.message,
        "sink table public.pos has 2 columns, the source (without a header) has 3"
    );
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
    db.sql(&super::create_commits_sql("shir")).await;
    db.sql(&format!(
        "GRANT USAGE ON SCHEMA shir TO {role}; GRANT INSERT, SELECT ON shir.job_commits TO {role}"
    ))
    .await;
    load().await.unwrap().publish().await.unwrap();
    assert_eq!(db.count("target").await, 5);
}
