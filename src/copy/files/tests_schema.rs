//! Tests of what a CSV source's columns become: null markers, a schema given by the operator
//! (decimals included), time formats, column selection and renaming, and bad rows sent to a
//! rejects file, through the data plane's entry point and read back with pyarrow where it is
//! installed.

use std::path::Path;

use super::tests::{attempt, copy, csv, endpoint, fatal, python, read, write};
use crate::copy::{ColumnMapping, CopyError, Counters, CsvOptions, Format, Staged, TableOptions, stage_table};
use crate::testing::python_with;

fn csv_options(change: impl FnOnce(&mut CsvOptions)) -> Format {
    let mut options = CsvOptions::default();
    change(&mut options);
    Format::Csv(options)
}

#[tokio::test]
async fn null_markers_become_nulls_for_inference_and_for_text() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id,amount,note\n1,NULL,x\n\\N,2.5,NA\n3,,y\n");
    let with_nulls = || csv_options(|o| o.nulls = vec!["NULL".into(), "\\N".into(), "NA".into()]);
    copy(root, "in/a.csv", with_nulls(), "out/a.jsonl", Format::JsonLines)
        .await
        .unwrap();
    // `amount` is a float and `id` an integer: the markers did not make them text.
    assert_eq!(
        read(root, "out/a.jsonl"),
        "{\"id\":1,\"note\":\"x\"}\n{\"amount\":2.5}\n{\"id\":3,\"note\":\"y\"}\n"
    );
    // To CSV the markers are nulls too, written as empty fields.
    copy(root, "in/a.csv", with_nulls(), "out/a.csv", csv()).await.unwrap();
    assert_eq!(read(root, "out/a.csv"), "id,amount,note\n1,,x\n,2.5,\n3,,y\n");
    // Without them the same file has text columns.
    copy(root, "in/a.csv", csv(), "out/b.jsonl", Format::JsonLines)
        .await
        .unwrap();
    assert!(read(root, "out/b.jsonl").starts_with("{\"id\":\"1\",\"amount\":\"NULL\""));
}

fn given(columns: &str) -> Format {
    let columns = crate::job_spec::schema::parse_schema(columns).unwrap();
    csv_options(|o| o.schema = crate::copy::SchemaMode::Given(columns))
}

/// Stages attempt `n` of a copy shaped by `options` (columns, rejects).
async fn stage_shaped(
    n: u32,
    root: &Path,
    from: &str,
    from_format: Format,
    to: &str,
    to_format: Format,
    options: &TableOptions,
) -> Result<Staged, CopyError> {
    stage_table(
        &attempt(n),
        &endpoint(root, from, from_format),
        &endpoint(root, to, to_format),
        options,
        &Counters::default(),
    )
    .await
}

fn rejects_to(root: &Path, path: &str) -> TableOptions {
    TableOptions {
        rejects: Some(endpoint(root, path, Format::JsonLines)),
        ..TableOptions::default()
    }
}

#[tokio::test]
async fn a_given_schema_types_the_columns_with_exact_decimals_and_reads_back_in_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "in/a.csv",
        "id,amount,when,zip\n1,0.10,2026-12-01 10:11:12+01:00,02134\n2,-12345678.99,,10001\n",
    );
    let schema = r#"{"id": "int64", "amount": "decimal(12,2)", "when": "timestamptz", "zip": "text"}"#;
    let (staged, _) = super::tests::copy_as(1, root, "in/a.csv", given(schema), "lake/a.parquet", Format::Parquet)
        .await
        .unwrap();
    let columns: Vec<(String, String)> = staged
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.data_type.clone()))
        .collect();
    assert_eq!(
        columns,
        [
            ("id".to_string(), "Int64".to_string()),
            ("amount".into(), "Decimal128(12, 2)".into()),
            ("when".into(), "Timestamp(µs, \"UTC\")".into()),
            ("zip".into(), "Utf8".into()),
        ]
    );
    staged.publish().await.unwrap();
    if python_with("pyarrow").is_none() {
        return;
    }
    let script = "import json, sys\n\
                  import pyarrow.parquet as pq\n\
                  t = pq.read_table(sys.argv[1])\n\
                  print(json.dumps([[f.name, str(f.type)] for f in t.schema] + [str(v) for v in t.column('amount').to_pylist()]))\n";
    let got: serde_json::Value = serde_json::from_str(&python(script, &[&root.join("lake/a.parquet")])).unwrap();
    assert_eq!(
        got,
        serde_json::json!([
            ["id", "int64"],
            ["amount", "decimal128(12, 2)"],
            ["when", "timestamp[us, tz=UTC]"],
            ["zip", "string"],
            "0.10",
            "-12345678.99"
        ])
    );
}

#[tokio::test]
async fn a_schema_that_does_not_match_the_header_fails_before_any_row_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id,amount\n1,2.5\n");
    let cases = [
        (
            "id:int64,amount:float64,note:text",
            "share:in/a.csv: --schema names a column 'note' that the file does not have (its columns: id, amount)",
        ),
        (
            "id:int64",
            "share:in/a.csv: column 'amount' of the file is not in --schema (a schema names every column; --columns leaves some out)",
        ),
    ];
    for (schema, expected) in cases {
        let e = fatal(copy(root, "in/a.csv", given(schema), "out/a.parquet", Format::Parquet).await);
        assert_eq!(e, expected);
    }
    let e = fatal(
        copy(
            root,
            "in/a.csv",
            given("id:int64,amount:decimal(3,0)"),
            "out/a.parquet",
            Format::Parquet,
        )
        .await,
    );
    assert_eq!(
        e,
        "share:in/a.csv line 2 column 'amount': '2.5' is not a decimal of at most 3 digits, 0 after the point (the type --schema gives it)"
    );
    assert!(!root.join("out").exists(), "nothing staged or published");
}

#[tokio::test]
async fn a_timestamp_format_is_used_to_infer_and_to_convert() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "in/a.csv",
        "at,day\n01/12/2026 10:11,02/12/2026\n31/12/2026 23:59,\n",
    );
    let formats = || {
        csv_options(|o| {
            o.timestamp_format = Some("%d/%m/%Y %H:%M".into());
            o.date_format = Some("%d/%m/%Y".into());
        })
    };
    copy(root, "in/a.csv", formats(), "out/a.jsonl", Format::JsonLines)
        .await
        .unwrap();
    // Arrow's JSON writer prints timestamps and dates in ISO form: the values were read.
    assert_eq!(
        read(root, "out/a.jsonl"),
        "{\"at\":\"2026-12-01T10:11:00\",\"day\":\"2026-12-02\"}\n{\"at\":\"2026-12-31T23:59:00\"}\n"
    );
    // Without the formats they are text.
    copy(root, "in/a.csv", csv(), "out/b.jsonl", Format::JsonLines)
        .await
        .unwrap();
    assert!(read(root, "out/b.jsonl").starts_with("{\"at\":\"01/12/2026 10:11\""));
}

#[tokio::test]
async fn columns_are_selected_and_renamed_whatever_the_formats() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id,name,secret\n1,Ann,x\n2,Bo,y\n");
    let options = TableOptions {
        mapping: ColumnMapping {
            select: vec!["name".into(), "id".into()],
            rename: vec![("id".into(), "customer_id".into())],
        },
        ..TableOptions::default()
    };
    let staged = stage_shaped(1, root, "in/a.csv", csv(), "out/a.csv", csv(), &options)
        .await
        .unwrap();
    staged.publish().await.unwrap();
    assert_eq!(read(root, "out/a.csv"), "name,customer_id\nAnn,1\nBo,2\n");
    let missing = TableOptions {
        mapping: ColumnMapping {
            select: vec!["name".into(), "email".into()],
            rename: Vec::new(),
        },
        ..TableOptions::default()
    };
    let e = fatal(
        stage_shaped(1, root, "in/a.csv", csv(), "out/b.parquet", Format::Parquet, &missing)
            .await
            .map(|s| s.rows),
    );
    assert_eq!(
        e,
        "--columns names a column 'email' that share:in/a.csv does not have (its columns: id, name, secret)"
    );
    assert!(!root.join("out/b.parquet").exists());
}

const BAD_ROWS: &str = "id,amount,note\n\
                        1,1.50,ok\n\
                        2,n/a,\"two\nlines\"\n\
                        3,2.00\n\
                        4,3.25,ok\n";

#[tokio::test]
async fn skipped_rows_go_to_a_rejects_file_published_with_the_output_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", BAD_ROWS);
    let schema = given("id:int64,amount:decimal(5,2),note:text");
    let rejects = rejects_to(root, "errors/job-1.rejects.jsonl");
    let staged = stage_shaped(
        1,
        root,
        "in/a.csv",
        schema.clone(),
        "out/a.jsonl",
        Format::JsonLines,
        &rejects,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            staged.check.rows_read,
            staged.check.rows_written,
            staged.check.rows_skipped,
            staged.check.verified
        ),
        (4, 2, 2, true)
    );
    assert!(!root.join("errors/job-1.rejects.jsonl").exists(), "not before publish");
    staged.publish().await.unwrap();
    // Decimals are JSON numbers with the digits they had.
    assert_eq!(
        read(root, "out/a.jsonl"),
        "{\"id\":1,\"amount\":1.50,\"note\":\"ok\"}\n{\"id\":4,\"amount\":3.25,\"note\":\"ok\"}\n"
    );
    let lines: Vec<serde_json::Value> = read(root, "errors/job-1.rejects.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"file": "share:in/a.csv", "line": 3, "column": "amount",
                "reason": "'n/a' is not a decimal of at most 5 digits, 2 after the point", "text": "2,n/a,\"two\nlines\""}),
            serde_json::json!({"file": "share:in/a.csv", "line": 5, "column": null,
                "reason": "2 fields where the header has 3", "text": "3,2.00"}),
        ]
    );

    // A second attempt publishes again over the same file, leaving one rejects file.
    let again = stage_shaped(2, root, "in/a.csv", schema, "out/a.jsonl", Format::JsonLines, &rejects)
        .await
        .unwrap();
    again.publish().await.unwrap();
    assert_eq!(super::tests::listing(&root.join("errors")), ["job-1.rejects.jsonl"]);
    assert_eq!(read(root, "errors/job-1.rejects.jsonl").lines().count(), 2);

    // Without skipping a bad row fails the copy (here the reader's own width check comes
    // first, before the batch with line 3 is converted), and nothing more is published.
    let e = fatal(
        copy(
            root,
            "in/a.csv",
            given("id:int64,amount:decimal(5,2),note:text"),
            "out/b.jsonl",
            Format::JsonLines,
        )
        .await,
    );
    assert_eq!(e, "share:in/a.csv line 5: 2 fields where the header has 3");
    assert!(!root.join("out/b.jsonl").exists());
}

#[tokio::test]
async fn a_copy_without_bad_rows_publishes_no_rejects_file_and_a_discard_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/good.csv", "id\n1\n2\n");
    write(root, "in/bad.csv", "id\n1\nx\n");
    let rejects = rejects_to(root, "errors/job-1.rejects.jsonl");
    let staged = stage_shaped(
        1,
        root,
        "in/good.csv",
        given("id:int64"),
        "out/a.parquet",
        Format::Parquet,
        &rejects,
    )
    .await
    .unwrap();
    assert_eq!((staged.check.rows_read, staged.check.rows_skipped), (2, 0));
    staged.publish().await.unwrap();
    assert!(!root.join("errors").exists(), "no rejects, no file (and no folder)");
    let staged = stage_shaped(
        1,
        root,
        "in/bad.csv",
        given("id:int64"),
        "out/b.parquet",
        Format::Parquet,
        &rejects,
    )
    .await
    .unwrap();
    assert_eq!(staged.check.rows_skipped, 1);
    staged.discard().await;
    assert!(!root.join("errors").exists(), "a discarded copy leaves no rejects file");
    assert!(!root.join("out/b.parquet").exists());
}

#[tokio::test]
async fn rejects_quote_their_record_across_batches_and_from_decoded_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Latin-1 bytes (é is 0xE9), bad rows in the first batch and in the second.
    let mut input = b"id,name\n".to_vec();
    for i in 0..20_000u32 {
        match i {
            5 => input.extend_from_slice(b"five,caf\xe9\n"),
            15_000 => input.extend_from_slice(b"15000,a,b\n"),
            _ => input.extend_from_slice(format!("{i},n{i}\n").as_bytes()),
        }
    }
    write(root, "in/a.csv", &input);
    let columns = crate::job_spec::schema::parse_schema("id:int64,name:text").unwrap();
    let format = csv_options(|o| {
        o.encoding = crate::job_spec::Encoding::Latin1;
        o.schema = crate::copy::SchemaMode::Given(columns);
    });
    let rejects = rejects_to(root, "errors/job-1.rejects.jsonl");
    let staged = stage_shaped(1, root, "in/a.csv", format, "out/a.parquet", Format::Parquet, &rejects)
        .await
        .unwrap();
    assert_eq!(
        (
            staged.check.rows_read,
            staged.check.rows_written,
            staged.check.rows_skipped
        ),
        (20_000, 19_998, 2)
    );
    staged.publish().await.unwrap();
    let lines: Vec<serde_json::Value> = read(root, "errors/job-1.rejects.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let quoted: Vec<(u64, &str)> = lines
        .iter()
        .map(|l| (l["line"].as_u64().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    assert_eq!(quoted, [(7, "five,café"), (15_002, "15000,a,b")]);
    assert_eq!(lines[0]["reason"], "'five' is not an integer");
}
