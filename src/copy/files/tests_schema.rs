//! Tests of what a CSV source's columns become: null markers, a schema given by the operator
//! (decimals included), time formats, column selection and renaming, and bad rows sent to a
//! rejects file, through the data plane's entry point and read back with pyarrow where it is
//! installed.

use super::tests::{copy, csv, read, write};
use crate::copy::{CsvOptions, Format};

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
