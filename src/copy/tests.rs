//! What a tabular copy reports and shapes whatever its ends: the written schema and column
//! mapping with a PostgreSQL source (the file sources have their own tests in `files`).

use crate::copy::files::tests::endpoint as share_endpoint;
use crate::copy::{
    AttemptId, ColumnMapping, Counters, CsvOptions, Endpoint, Format, Location, TableOptions, stage, stage_table,
};
use crate::testing::postgres::ThrowawayPostgres;

fn attempt() -> AttemptId {
    AttemptId {
        job_id: "job-1".into(),
        attempt: 1,
    }
}

#[tokio::test]
async fn a_postgres_source_reports_the_schema_it_wrote_and_takes_a_column_mapping() {
    let Some(server) = ThrowawayPostgres::shared() else {
        return;
    };
    let database = server.create_database().await;
    let client = server.client(&database).await;
    client
        .batch_execute(
            "create table orders (id bigint, name text, placed timestamptz, paid boolean);
             insert into orders values (1, 'a', '2026-12-01 10:11:12+01', true), (2, null, null, false);",
        )
        .await
        .unwrap();
    let source = Endpoint {
        service_name: "warehouse".into(),
        service: server.service_spec(&database),
        location: Location::Table {
            schema: "public".into(),
            table: "orders".into(),
        },
        format: Format::Csv(CsvOptions::default()),
        if_exists: Default::default(),
        proxy: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let staged = stage(
        &attempt(),
        &source,
        &share_endpoint(dir.path(), "lake/orders.parquet", Format::Parquet),
        &Counters::default(),
    )
    .await
    .unwrap();
    let columns: Vec<String> = staged
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.data_type))
        .collect();
    assert_eq!(
        columns,
        // As the PostgreSQL reader labels its zone; the schema is what was written.
        [
            "id Int64",
            "name Utf8",
            "placed Timestamp(µs, \"+00:00\")",
            "paid Boolean"
        ]
    );
    staged.discard().await;

    let options = TableOptions {
        mapping: ColumnMapping {
            select: vec!["paid".into(), "id".into()],
            rename: vec![("id".into(), "order_id".into())],
        },
        ..TableOptions::default()
    };
    let staged = stage_table(
        &attempt(),
        &source,
        &share_endpoint(dir.path(), "out/orders.csv", Format::Csv(CsvOptions::default())),
        &options,
        &Counters::default(),
    )
    .await
    .unwrap();
    let columns: Vec<&str> = staged.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["paid", "order_id"]);
    staged.publish().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/orders.csv")).unwrap(),
        "paid,order_id\ntrue,1\nfalse,2\n"
    );
    let missing = TableOptions {
        mapping: ColumnMapping {
            select: vec!["email".into()],
            rename: Vec::new(),
        },
        ..TableOptions::default()
    };
    let e = stage_table(
        &attempt(),
        &source,
        &share_endpoint(dir.path(), "out/x.csv", Format::Csv(CsvOptions::default())),
        &missing,
        &Counters::default(),
    )
    .await
    .err()
    .expect("no column email");
    assert_eq!(
        e.message,
        "--columns names a column 'email' that warehouse:public.orders does not have (its columns: id, name, placed, paid)"
    );
}
