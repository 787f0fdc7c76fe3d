//! Tests of the filesystem connector against real files in temporary directories, through
//! the data plane's own entry point ([`stage`]) and, where they are installed, tools we did
//! not write: Python's `csv` module reads our CSV, pyarrow our Parquet.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use arrow::datatypes::DataType;
use futures::StreamExt;

use super::paths::is_staging_name;
use crate::connectors::{ServiceSpec, ServiceType};
use crate::copy::{
    AttemptId, Batches, Consistency, CopyError, Counters, CsvOptions, Endpoint, Format, IfExists, Location, Published,
    SchemaMode, Staged, stage,
};
use crate::testing::{noise, python_with};

// --- helpers -----------------------------------------------------------------------------

pub(in crate::copy) fn endpoint(root: &Path, path: &str, format: Format) -> Endpoint {
    Endpoint {
        service_name: "share".into(),
        service: ServiceSpec::new(ServiceType::Filesystem).with("root", root.to_str().unwrap()),
        location: Location::Path(path.into()),
        format,
        if_exists: Default::default(),
        proxy: None,
    }
}

pub(super) fn csv() -> Format {
    Format::Csv(CsvOptions::default())
}

/// CSV read as text whatever the sink (`--schema text`).
fn csv_text() -> Format {
    Format::Csv(CsvOptions {
        schema: SchemaMode::Text,
        ..CsvOptions::default()
    })
}

fn csv_with(delimiter: u8, quote: u8, header: bool) -> Format {
    Format::Csv(CsvOptions {
        header,
        delimiter,
        quote,
        ..CsvOptions::default()
    })
}

pub(super) fn attempt(n: u32) -> AttemptId {
    AttemptId {
        job_id: "job-1".into(),
        attempt: n,
    }
}

pub(super) fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    path
}

pub(super) fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every file under `dir`, hidden ones too, as sorted relative paths.
pub(super) fn listing(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn staging_files(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|p| is_staging_name(Path::new(p).file_name().unwrap()))
        .collect()
}

/// What a staged copy reported, kept before publishing consumes it.
#[derive(Debug)]
pub(super) struct Report {
    pub rows: u64,
    pub bytes: u64,
    pub files: u64,
    pub check: Consistency,
    pub counted: (u64, u64, u64),
}

pub(super) async fn copy_as(
    n: u32,
    root: &Path,
    from: &str,
    from_format: Format,
    to: &str,
    to_format: Format,
) -> Result<(Staged, Report), CopyError> {
    let counters = Counters::default();
    let staged = stage(
        &attempt(n),
        &endpoint(root, from, from_format),
        &endpoint(root, to, to_format),
        &counters,
    )
    .await?;
    let report = Report {
        rows: staged.rows,
        bytes: staged.bytes,
        files: staged.files,
        check: staged.check.clone(),
        counted: counters.snapshot(),
    };
    Ok((staged, report))
}

/// Stages attempt `n` with a sink rule for files that were there before.
async fn stage_with(
    n: u32,
    root: &Path,
    from: &str,
    to: &str,
    format: Format,
    rule: IfExists,
) -> Result<Staged, CopyError> {
    let sink = Endpoint {
        if_exists: rule,
        ..endpoint(root, to, format.clone())
    };
    stage(&attempt(n), &endpoint(root, from, format), &sink, &Counters::default()).await
}

pub(super) async fn copy(
    root: &Path,
    from: &str,
    from_format: Format,
    to: &str,
    to_format: Format,
) -> Result<Report, CopyError> {
    let (staged, report) = copy_as(1, root, from, from_format, to, to_format).await?;
    staged.publish().await?;
    Ok(report)
}

pub(super) fn fatal(outcome: Result<impl std::fmt::Debug, CopyError>) -> String {
    let e = outcome.expect_err("the copy should have failed");
    assert!(
        !e.retryable,
        "expected a fatal error, got a transient one: {}",
        e.message
    );
    assert!(!e.message.contains('\n'), "an error is one line: {:?}", e.message);
    e.message
}

fn set_mtime(path: &Path, at: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(at))
        .unwrap();
}

/// The checksum of the parts one after the other, hashed in one piece (the copy hashes
/// stretch by stretch).
fn checksum_of(parts: &[&[u8]]) -> String {
    format!("xxh3-128:{:032x}", twox_hash::XxHash3_128::oneshot(&parts.concat()))
}

// --- tabular round trips ----------------------------------------------------------------

#[tokio::test]
async fn csv_to_csv_keeps_values_through_quoting_and_a_new_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let input = "id;name;note;amount\n\
                 1;\"Smith; John\";\"said \"\"hi\"\"\";1.50\n\
                 2;Zoë;\"two\nlines\";007\n\
                 3;;\"\";\n";
    let source = write(root, "in/a.csv", input);
    let report = copy(root, "in/a.csv", csv_with(b';', b'"', true), "out/a.csv", csv())
        .await
        .unwrap();

    // Text columns: 1.50 and 007 come out as they went in; empty fields are NULL and are
    // written empty; quotes only where the new delimiter or a quote or newline needs them.
    let expected = "id,name,note,amount\n\
                    1,Smith; John,\"said \"\"hi\"\"\",1.50\n\
                    2,Zoë,\"two\nlines\",007\n\
                    3,,,\n";
    assert_eq!(read(root, "out/a.csv"), expected);
    assert_eq!((report.rows, report.files), (3, 1));
    assert_eq!(report.bytes, expected.len() as u64);
    assert_eq!((report.check.rows_read, report.check.rows_written), (3, 3));
    assert!(report.check.verified);
    let source_len = fs::metadata(source).unwrap().len();
    assert_eq!(report.counted, (3, source_len, 1), "rows, bytes and files read");
}

#[tokio::test]
async fn csv_to_csv_of_plain_data_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut input = String::from("day,store,amount,comment\n");
    for i in 0..20_000 {
        input.push_str(&format!(
            "2026-11-{:02},S{:03},{}.{:02},\"a, b\"\n",
            i % 28 + 1,
            i % 7,
            i,
            i % 100
        ));
    }
    write(root, "in/big.csv", &input);
    let report = copy(root, "in/big.csv", csv(), "out/big.csv", csv()).await.unwrap();
    assert_eq!(report.rows, 20_000);
    assert!(read(root, "out/big.csv") == input, "the copy differs from its source");
}

#[tokio::test]
async fn csv_without_a_header_gets_numbered_columns() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/raw.csv", "a|1\nb|2\n");
    copy(
        root,
        "in/raw.csv",
        csv_with(b'|', b'"', false),
        "out/raw.jsonl",
        Format::JsonLines,
    )
    .await
    .unwrap();
    assert_eq!(
        read(root, "out/raw.jsonl"),
        "{\"column_1\":\"a\",\"column_2\":1}\n{\"column_1\":\"b\",\"column_2\":2}\n"
    );
    copy(
        root,
        "in/raw.csv",
        csv_with(b'|', b'"', false),
        "out/raw.csv",
        csv_with(b'\t', b'"', false),
    )
    .await
    .unwrap();
    assert_eq!(read(root, "out/raw.csv"), "a\t1\nb\t2\n");
}

#[tokio::test]
async fn csv_with_a_byte_order_mark_keeps_its_first_column_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/excel.csv", b"\xEF\xBB\xBFid,name\n1,x\n");
    copy(root, "in/excel.csv", csv(), "out/excel.jsonl", Format::JsonLines)
        .await
        .unwrap();
    assert_eq!(read(root, "out/excel.jsonl"), "{\"id\":1,\"name\":\"x\"}\n");
}

#[tokio::test]
async fn csv_to_json_lines_leaves_nulls_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id,name,city\n1,Ann,\n2,\"Bo \"\"B\"\"\",Oslo\n");
    let report = copy(root, "in/a.csv", csv(), "out/a.jsonl", Format::JsonLines)
        .await
        .unwrap();
    assert_eq!(
        read(root, "out/a.jsonl"),
        "{\"id\":1,\"name\":\"Ann\"}\n{\"id\":2,\"name\":\"Bo \\\"B\\\"\",\"city\":\"Oslo\"}\n"
    );
    assert_eq!(report.rows, 2);
    // --schema text keeps the values as they were written.
    copy(root, "in/a.csv", csv_text(), "out/text.jsonl", Format::JsonLines)
        .await
        .unwrap();
    assert!(read(root, "out/text.jsonl").starts_with("{\"id\":\"1\",\"name\":\"Ann\"}\n"));
}

#[tokio::test]
async fn json_lines_to_parquet_to_csv_round_trip_keeps_types_and_column_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Key order z, a, n, …: columns come out in the data's order, not sorted. `n` is an
    // integer everywhere, `x` an integer once and a float once (so a float), `ok` boolean.
    let input = "{\"z\":\"first\",\"a\":1,\"n\":10,\"x\":1,\"ok\":true}\n\
                 \n\
                 {\"z\":\"ünï\",\"a\":null,\"n\":-3,\"x\":2.5,\"ok\":false}\n\
                 {\"z\":null,\"a\":3,\"n\":0,\"x\":0.25}\n";
    write(root, "in/events.jsonl", input);
    let to_parquet = copy(
        root,
        "in/events.jsonl",
        Format::JsonLines,
        "lake/events.parquet",
        Format::Parquet,
    )
    .await
    .unwrap();
    assert_eq!(to_parquet.rows, 3);
    assert_eq!(to_parquet.counted.0, 3);

    let counters = Counters::default();
    let mut batches = super::read_table(
        &endpoint(root, "lake/events.parquet", Format::Parquet),
        &counters,
        false,
        None,
    )
    .await
    .unwrap();
    // The columns come first, without rows; then the rows.
    let batch = batches.next().await.unwrap().unwrap();
    assert_eq!(batch.num_rows(), 0);
    let schema = batch.schema();
    assert_eq!(batches.next().await.unwrap().unwrap().schema(), schema);
    let columns: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        columns,
        [
            ("z", &DataType::Utf8),
            ("a", &DataType::Int64),
            ("n", &DataType::Int64),
            ("x", &DataType::Float64),
            ("ok", &DataType::Boolean)
        ]
    );
    assert!(batches.next().await.is_none());

    copy(root, "lake/events.parquet", Format::Parquet, "out/events.csv", csv())
        .await
        .unwrap();
    assert_eq!(
        read(root, "out/events.csv"),
        "z,a,n,x,ok\nfirst,1,10,1.0,true\nünï,,-3,2.5,false\n,3,0,0.25,\n"
    );
}

#[tokio::test]
async fn a_source_without_rows_is_refused_unless_allowed_and_then_keeps_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/empty.csv", "id,name\n");
    write(root, "in/nothing.csv", "");
    let e = fatal(copy(root, "in/empty.csv", csv(), "out/empty.csv", csv()).await);
    assert_eq!(
        e,
        "share:in/empty.csv has a header and no rows: give --allow-empty to copy an empty input"
    );
    let e = fatal(copy(root, "in/nothing.csv", csv(), "out/empty.csv", csv()).await);
    assert_eq!(
        e,
        "share:in/nothing.csv is empty: give --allow-empty to copy an empty input"
    );
    let e = fatal(copy(root, "in/", csv(), "out/empty.csv", csv()).await);
    assert_eq!(
        e,
        "none of the 2 files of share:in/ holds a row: give --allow-empty to copy an empty input"
    );
    assert!(!root.join("out").exists());

    let csv = || {
        Format::Csv(CsvOptions {
            allow_empty: true,
            ..CsvOptions::default()
        })
    };
    let report = copy(root, "in/empty.csv", csv(), "out/empty.csv", csv()).await.unwrap();
    assert_eq!(report.rows, 0);
    assert!(report.check.verified);
    assert_eq!(read(root, "out/empty.csv"), "id,name\n");
    copy(root, "in/empty.csv", csv(), "out/empty.parquet", Format::Parquet)
        .await
        .unwrap();
    copy(root, "out/empty.parquet", Format::Parquet, "out/again.csv", csv())
        .await
        .unwrap();
    assert_eq!(read(root, "out/again.csv"), "id,name\n");
}

#[tokio::test]
async fn many_rows_stream_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut input = String::from("n,text\n");
    for i in 0..50_000 {
        input.push_str(&format!("{i},row {i}\n"));
    }
    write(root, "in/rows.csv", &input);
    let counters = Counters::default();
    let batches = super::read_table(&endpoint(root, "in/rows.csv", csv()), &counters, false, None)
        .await
        .unwrap();
    let sizes: Vec<usize> = batches.map(|b| b.unwrap().num_rows()).collect().await;
    assert!(sizes.iter().all(|&n| n <= super::BATCH_ROWS), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 50_000);
    assert_eq!(counters.snapshot(), (50_000, input.len() as u64, 1));
}

// --- which files a source names ------------------------------------------------------------

/// A tree of one-row CSV files whose only value is their own path.
fn csv_tree(root: &Path, files: &[&str]) {
    for f in files {
        write(root, f, format!("path\n{f}\n"));
    }
}

async fn paths_read(root: &Path, source: &str) -> Result<String, CopyError> {
    copy(root, source, csv(), "out/paths.csv", csv()).await?;
    Ok(read(root, "out/paths.csv")
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" "))
}

#[tokio::test]
async fn globs_directories_and_recursion_select_files_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    csv_tree(
        root,
        &[
            "data/2026/02.csv",
            "data/2026/01.csv",
            "data/2026/sub/03.csv",
            "data/2025/01.csv",
            "data/.hidden.csv",
            "data/_temporary/0.csv",
        ],
    );
    write(root, "data/_SUCCESS", "");

    assert_eq!(
        paths_read(root, "data/2026/*.csv").await.unwrap(),
        "data/2026/01.csv data/2026/02.csv"
    );
    assert_eq!(
        paths_read(root, "data/2026/0?.csv").await.unwrap(),
        "data/2026/01.csv data/2026/02.csv"
    );
    assert_eq!(
        paths_read(root, "data/**/*.csv").await.unwrap(),
        "data/2025/01.csv data/2026/01.csv data/2026/02.csv data/2026/sub/03.csv data/_temporary/0.csv"
    );
    assert_eq!(
        paths_read(root, "data/*/01.csv").await.unwrap(),
        "data/2025/01.csv data/2026/01.csv"
    );
    // A directory: every file under it, recursively, without hidden and `_` names.
    assert_eq!(
        paths_read(root, "data").await.unwrap(),
        "data/2025/01.csv data/2026/01.csv data/2026/02.csv data/2026/sub/03.csv"
    );
    assert_eq!(
        paths_read(root, "data/2026/").await.unwrap(),
        paths_read(root, "data/2026").await.unwrap()
    );
    // A glob may name hidden files when it says so.
    assert_eq!(paths_read(root, "data/.*.csv").await.unwrap(), "data/.hidden.csv");
}

#[tokio::test]
async fn a_missing_source_is_a_fatal_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    csv_tree(root, &["data/a.csv"]);
    fs::create_dir_all(root.join("empty")).unwrap();

    let e = fatal(copy(root, "nothing.csv", csv(), "out/x.csv", csv()).await);
    assert_eq!(e, "share:nothing.csv: no such file or directory");
    let e = fatal(copy(root, "data/*.parquet", Format::Parquet, "out/x.csv", csv()).await);
    assert_eq!(e, "share:data/*.parquet: no file matches");
    let e = fatal(copy(root, "absent/**/*.csv", csv(), "out/x.csv", csv()).await);
    assert_eq!(e, "share:absent/**/*.csv: no file matches");
    let e = fatal(copy(root, "empty/", csv(), "out/x.csv", csv()).await);
    assert_eq!(e, "share:empty/: holds no files");
    let e = fatal(copy(root, "empty/", Format::Binary, "out/", Format::Binary).await);
    assert_eq!(e, "share:empty/: holds no files");
    assert!(
        listing(root).iter().all(|p| !p.starts_with("out")),
        "{:?}",
        listing(root)
    );
}

#[tokio::test]
async fn a_missing_root_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("unmounted");
    let e = copy(&gone, "a.csv", csv(), "b.csv", csv()).await.unwrap_err();
    assert!(e.retryable, "{}", e.message);
    assert!(e.message.contains("does not exist on this node"), "{}", e.message);
    assert!(
        !e.message.contains(dir.path().to_str().unwrap()),
        "names the service, not the node's path"
    );
}

#[tokio::test]
async fn paths_that_leave_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(dir.path(), "outside.csv", "a\n1\n");
    write(&root, "in/a.csv", "a\n1\n");

    for (from, to) in [
        ("../outside.csv", "out/a.csv"),
        ("in/../../outside.csv", "out/a.csv"),
        ("/etc/passwd", "out/a.csv"),
        ("in/a.csv", "../escaped.csv"),
        ("in/a.csv", "/tmp/escaped.csv"),
    ] {
        let e = fatal(copy(&root, from, csv(), to, csv()).await);
        assert!(e.contains("root"), "{from} -> {to}: {e}");
    }
    let e = fatal(copy(&root, "in/", Format::Binary, "a/../../b/", Format::Binary).await);
    assert!(e.contains("leaves the linked service's root"), "{e}");
    assert!(!dir.path().join("escaped.csv").exists());
    assert!(!dir.path().join("b").exists());
}

#[tokio::test]
async fn symbolic_links_may_not_lead_out_of_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(dir.path(), "secret/key.csv", "k\nv\n");
    write(&root, "in/a.csv", "k\n1\n");
    std::os::unix::fs::symlink(dir.path().join("secret/key.csv"), root.join("in/b.csv")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("secret")).unwrap();
    std::os::unix::fs::symlink(root.join("in/a.csv"), root.join("inside.csv")).unwrap();

    let e = fatal(copy(&root, "in/", csv(), "out/all.csv", csv()).await);
    assert_eq!(
        e,
        "share:in/b.csv: a symbolic link leads outside the linked service's root"
    );
    let e = fatal(copy(&root, "secret/key.csv", csv(), "out/k.csv", csv()).await);
    assert!(
        e.ends_with("a symbolic link leads outside the linked service's root"),
        "{e}"
    );
    let e = fatal(copy(&root, "in/a.csv", csv(), "secret/planted.csv", csv()).await);
    assert_eq!(
        e,
        "share:secret: a symbolic link leads outside the linked service's root"
    );
    let e = fatal(copy(&root, "in/a.csv", Format::Binary, "secret/", Format::Binary).await);
    assert!(e.contains("leads outside"), "{e}");
    assert_eq!(listing(&dir.path().join("secret")), ["key.csv"]);

    // A link that stays inside the root is followed.
    copy(&root, "inside.csv", csv(), "out/inside.csv", csv()).await.unwrap();
    assert_eq!(read(&root, "out/inside.csv"), "k\n1\n");
}

#[tokio::test]
async fn sink_paths_must_name_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "a\n1\n");
    fs::create_dir_all(root.join("out/dir")).unwrap();
    let e = fatal(copy(root, "in/a.csv", csv(), "out/", csv()).await);
    assert!(e.contains("names a directory"), "{e}");
    let e = fatal(copy(root, "in/a.csv", csv(), "out/*.csv", csv()).await);
    assert!(e.contains("wildcards"), "{e}");
    let e = fatal(copy(root, "in/a.csv", csv(), "out/dir", csv()).await);
    assert!(e.contains("is a directory"), "{e}");
    assert!(staging_files(root).is_empty());
}

// --- bad input ------------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_csv_row_is_reported_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The quoted field spans lines 3 and 4, so the record on line 6 is the 5th record:
    // the error names the line a person finds in an editor.
    write(root, "in/1-good.csv", "id,text\n1,fine\n");
    write(
        root,
        "in/2-bad.csv",
        "id,text\n1,a\n2,\"multi\nline\"\n3,b\n4,c,extra\n5,d\n",
    );
    let e = fatal(copy(root, "in/", csv(), "out/all.csv", csv()).await);
    assert_eq!(e, "share:in/2-bad.csv line 6: 3 fields where the header has 2");
    assert_eq!(
        listing(&root.join("out")),
        Vec::<String>::new(),
        "nothing staged is left"
    );
    assert!(
        !root.join("out").exists(),
        "the directory made for the target is removed"
    );

    write(root, "in2/latin1.csv", b"id,text\n1,ok\n2,caf\xe9\n");
    let e = fatal(copy(root, "in2/latin1.csv", csv(), "out/x.csv", csv()).await);
    assert_eq!(e, "share:in2/latin1.csv line 3: field 2 is not valid UTF-8");
}

fn csv_in(encoding: crate::job_spec::Encoding) -> Format {
    Format::Csv(CsvOptions {
        encoding,
        ..CsvOptions::default()
    })
}

#[tokio::test]
async fn a_named_encoding_is_decoded() {
    use crate::job_spec::Encoding;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/latin1.csv", b"id,text\n1,caf\xe9\n2,\x80\n");
    copy(root, "in/latin1.csv", csv_in(Encoding::Latin1), "out/a.csv", csv())
        .await
        .unwrap();
    assert_eq!(read(root, "out/a.csv"), "id,text\n1,café\n2,\u{80}\n");
    copy(root, "in/latin1.csv", csv_in(Encoding::Windows1252), "out/b.csv", csv())
        .await
        .unwrap();
    assert_eq!(read(root, "out/b.csv"), "id,text\n1,café\n2,€\n");
    // The quote check reads decoded text too.
    write(root, "in/open.csv", b"id,text\n1,\"caf\xe9\n2,b\n");
    let e = fatal(copy(root, "in/open.csv", csv_in(Encoding::Latin1), "out/c.csv", csv()).await);
    assert!(
        e.starts_with("share:in/open.csv line 2: a quoted field is never closed"),
        "{e}"
    );
}

#[tokio::test]
async fn strict_csv_refuses_open_quotes_and_bad_headers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "open.csv",
            b"id,text\n1,\"unterminated\n2,b\n",
            "share:in/open.csv line 2: a quoted field is never closed (an unterminated quote runs to the end of the file)",
        ),
        (
            "open-header.csv",
            b"id,\"text\n",
            "share:in/open-header.csv line 1: a quoted field is never closed (an unterminated quote runs to the end of the file)",
        ),
        (
            "dup.csv",
            b"id,name,id\n1,a,2\n",
            "share:in/dup.csv line 1: the header names columns 1 and 3 both 'id'",
        ),
        (
            "blank.csv",
            b"id,,name\n1,a,2\n",
            "share:in/blank.csv line 1: column 2 of the header has no name",
        ),
        (
            "short.csv",
            b"id,name\n1,a\n2\n",
            "share:in/short.csv line 3: 1 fields where the header has 2",
        ),
    ];
    for (name, content, expected) in cases {
        write(root, &format!("in/{name}"), content);
        let e = fatal(copy(root, &format!("in/{name}"), csv(), "out/x.parquet", Format::Parquet).await);
        assert_eq!(e, expected);
        assert!(!root.join("out").exists(), "{name}: nothing is written");
        fs::remove_file(root.join("in").join(name)).unwrap();
    }
    // Quotes that close, doubled quotes and a quote inside an unquoted field are all fine.
    write(root, "in/ok.csv", b"id,text\n1,\"a \"\"b\"\" c\"\n2,x\"y\n3,\"\"\n");
    let report = copy(root, "in/ok.csv", csv(), "out/ok.csv", csv()).await.unwrap();
    assert_eq!(report.rows, 3);
}

#[tokio::test]
async fn a_bad_json_line_is_reported_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.jsonl", "{\"a\":1}\n\n{\"a\":2,}\n{\"a\":3}\n");
    let e = fatal(copy(root, "in/a.jsonl", Format::JsonLines, "out/a.csv", csv()).await);
    assert!(e.starts_with("share:in/a.jsonl line 3: column 8: "), "{e}");

    write(root, "in/b.jsonl", "{\"a\":1}\n[1,2]\n");
    let e = fatal(copy(root, "in/b.jsonl", Format::JsonLines, "out/b.csv", csv()).await);
    assert!(
        e.starts_with("share:in/b.jsonl line 2: ") && e.contains("expected a JSON object"),
        "{e}"
    );
    assert!(!root.join("out").exists());
}

#[tokio::test]
async fn a_file_that_is_not_parquet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/fake.parquet", "id,name\n1,x\n");
    let e = fatal(copy(root, "in/fake.parquet", Format::Parquet, "out/x.csv", csv()).await);
    assert!(
        e.starts_with("share:in/fake.parquet: not a readable Parquet file"),
        "{e}"
    );
}

#[tokio::test]
async fn files_with_different_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "csv/a.csv", "id,name\n1,x\n");
    write(root, "csv/b.csv", "id,title\n2,y\n");
    let e = fatal(copy(root, "csv/*.csv", csv(), "out/x.csv", csv()).await);
    assert_eq!(
        e,
        "share:csv/b.csv does not have the columns of share:csv/a.csv: column 2 is 'name' (Utf8) there and 'title' (Utf8) here"
    );
    write(root, "csv2/a.csv", "1,x\n");
    write(root, "csv2/b.csv", "2,y,z\n");
    let e = fatal(copy(root, "csv2", csv_with(b',', b'"', false), "out/x.csv", csv()).await);
    assert!(e.ends_with("column 3 'column_3' (Utf8) is extra"), "{e}");

    write(root, "json/a.jsonl", "{\"id\":1,\"name\":\"x\"}\n");
    write(root, "json/b.jsonl", "{\"id\":2}\n");
    let e = fatal(copy(root, "json", Format::JsonLines, "out/x.csv", csv()).await);
    assert_eq!(
        e,
        "share:json/b.jsonl does not have the columns of share:json/a.jsonl: it has no key 'name'"
    );

    // Same names, other types: text in one Parquet file, integers in the other.
    write(root, "p/src1.csv", "id\n1\n");
    write(root, "p/src2.jsonl", "{\"id\":2}\n");
    copy(root, "p/src1.csv", csv_text(), "pq/1.parquet", Format::Parquet)
        .await
        .unwrap();
    copy(root, "p/src2.jsonl", Format::JsonLines, "pq/2.parquet", Format::Parquet)
        .await
        .unwrap();
    let e = fatal(copy(root, "pq/*.parquet", Format::Parquet, "out/x.csv", csv()).await);
    assert_eq!(
        e,
        "share:pq/2.parquet does not have the columns of share:pq/1.parquet: column 1 is 'id' (Utf8) there and 'id' (Int64) here"
    );
    assert!(!root.join("out").exists());
}

#[tokio::test]
async fn json_files_share_types_inferred_over_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // An integer column in one file and a float in the other make one float column.
    write(root, "json/a.jsonl", "{\"id\":1,\"v\":1}\n");
    write(root, "json/b.jsonl", "{\"v\":2.5,\"id\":2}\n");
    copy(root, "json", Format::JsonLines, "out/x.csv", csv()).await.unwrap();
    assert_eq!(read(root, "out/x.csv"), "id,v\n1,1.0\n2,2.5\n");
}

// --- staging and publishing -------------------------------------------------------------------

#[tokio::test]
async fn nothing_is_at_the_target_before_publish() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id\n1\n2\n");
    let (staged, _) = copy_as(7, root, "in/a.csv", csv(), "out/result.csv", csv())
        .await
        .unwrap();
    assert!(!root.join("out/result.csv").exists());
    assert_eq!(listing(&root.join("out")), [".result.csv.shir-job-1-7.tmp"]);
    staged.publish().await.unwrap();
    assert_eq!(listing(&root.join("out")), ["result.csv"]);
    assert_eq!(read(root, "out/result.csv"), "id\n1\n2\n");
}

#[tokio::test]
async fn publishing_twice_or_from_two_attempts_leaves_one_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut input = String::from("id\n");
    for i in 0..30_000 {
        input.push_str(&format!("{i}\n"));
    }
    write(root, "in/a.csv", &input);
    let out = root.join("out");

    // Attempts 1 and 2 both staged (attempt 1 was thought dead but was not), both publish.
    let (first, _) = copy_as(1, root, "in/a.csv", csv(), "out/a.csv", csv()).await.unwrap();
    let (second, _) = copy_as(2, root, "in/a.csv", csv(), "out/a.csv", csv()).await.unwrap();
    assert_eq!(staging_files(&out).len(), 2);
    first.publish().await.unwrap();
    second.publish().await.unwrap();
    assert_eq!(listing(&out), ["a.csv"]);
    assert!(read(root, "out/a.csv") == input);

    // The same attempt run and published twice (its worker restarted after publishing).
    for _ in 0..2 {
        let (staged, _) = copy_as(3, root, "in/a.csv", csv(), "out/a.csv", csv()).await.unwrap();
        staged.publish().await.unwrap();
    }
    assert_eq!(listing(&out), ["a.csv"]);
    assert!(read(root, "out/a.csv") == input);

    // A worker killed after staging never cleans up; the attempt that publishes does. A
    // later attempt's staging file is not touched: only the current attempt publishes.
    let (killed, _) = copy_as(4, root, "in/a.csv", csv(), "out/a.csv", csv()).await.unwrap();
    std::mem::forget(killed);
    let (later, _) = copy_as(9, root, "in/a.csv", csv(), "out/a.csv", csv()).await.unwrap();
    let (current, _) = copy_as(5, root, "in/a.csv", csv(), "out/a.csv", csv()).await.unwrap();
    current.publish().await.unwrap();
    assert_eq!(listing(&out), [".a.csv.shir-job-1-9.tmp", "a.csv"]);
    later.discard().await;
    assert_eq!(listing(&out), ["a.csv"]);
    assert!(read(root, "out/a.csv") == input);
}

/// The fence against an attempt thought dead that still runs: once a later attempt begins
/// publishing, the earlier one's staging files are gone, in every directory, even if the
/// later publish stops half way; the target ends as the later attempt's file.
#[tokio::test]
async fn an_earlier_attempt_cannot_publish_once_a_later_one_began() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.bin", "old a");
    write(root, "in/b.bin", "old b");
    let (earlier, _) = copy_as(1, root, "in/", Format::Binary, "out/", Format::Binary)
        .await
        .unwrap();
    write(root, "in/a.bin", "new a");
    write(root, "in/b.bin", "new b");
    let (later, _) = copy_as(2, root, "in/", Format::Binary, "out/", Format::Binary)
        .await
        .unwrap();
    // The later publish fails at its second file (say, a disk error): it has renamed one.
    let second = staging_files(&root.join("out"))
        .into_iter()
        .filter(|f| f.contains("-2.tmp"))
        .max()
        .unwrap();
    fs::remove_file(root.join("out").join(&second)).unwrap();
    assert!(later.publish().await.is_err());
    let refused = fatal(earlier.publish().await);
    assert!(refused.contains("its staging file is gone"), "{refused}");
    assert_eq!(listing(&root.join("out")), ["a.bin"]);
    assert_eq!(read(root, "out/a.bin"), "new a");
}

#[tokio::test]
async fn if_exists_fail_and_skip_leave_a_file_that_was_there_alone_but_replace_the_jobs_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id\n1\n");
    write(root, "out/a.csv", "old\n");
    let out = root.join("out");

    // fail: refused before copying, nothing staged, the file as it was.
    let err = fatal(
        stage_with(1, root, "in/a.csv", "out/a.csv", csv(), IfExists::Fail)
            .await
            .map(|_| ()),
    );
    assert_eq!(
        err,
        "share:out/a.csv existed before the job and --if-exists fail leaves it as it was"
    );
    assert_eq!(listing(&out), ["a.csv"]);
    assert_eq!(read(root, "out/a.csv"), "old\n");

    // skip: staged and checked, not published; the outcome counts it.
    let staged = stage_with(1, root, "in/a.csv", "out/a.csv", csv(), IfExists::Skip)
        .await
        .unwrap();
    assert_eq!(staged.publish().await.unwrap(), Published { skipped: 1 });
    assert_eq!(listing(&out), ["a.csv"]);
    assert_eq!(read(root, "out/a.csv"), "old\n");

    // The job's own earlier publish is replaced under either rule: retries stay idempotent.
    fs::remove_file(out.join("a.csv")).unwrap();
    for (n, rule) in [(1, IfExists::Fail), (2, IfExists::Fail), (3, IfExists::Skip)] {
        let staged = stage_with(n, root, "in/a.csv", "out/a.csv", csv(), rule).await.unwrap();
        assert_eq!(staged.publish().await.unwrap(), Published { skipped: 0 }, "attempt {n}");
        assert_eq!(listing(&out), ["a.csv"]);
        assert_eq!(read(root, "out/a.csv"), "id\n1\n");
    }
    // Another job's output is not this job's: `job-1` is not `job-2`.
    let other = AttemptId {
        job_id: "job-2".into(),
        attempt: 1,
    };
    let sink = Endpoint {
        if_exists: IfExists::Fail,
        ..endpoint(root, "out/a.csv", csv())
    };
    let err = stage(&other, &endpoint(root, "in/a.csv", csv()), &sink, &Counters::default()).await;
    assert!(fatal(err.map(|_| ())).contains("existed before the job"));

    // A file that appears between staging and publishing is not replaced either.
    fs::remove_file(out.join("a.csv")).unwrap();
    let failing = stage_with(4, root, "in/a.csv", "out/a.csv", csv(), IfExists::Fail)
        .await
        .unwrap();
    let skipping = stage_with(5, root, "in/a.csv", "out/a.csv", csv(), IfExists::Skip)
        .await
        .unwrap();
    write(root, "out/a.csv", "late\n");
    assert!(fatal(failing.publish().await).contains("existed before the job"));
    assert_eq!(skipping.publish().await.unwrap(), Published { skipped: 1 });
    assert_eq!(listing(&out), ["a.csv"]);
    assert_eq!(read(root, "out/a.csv"), "late\n");

    // Binary folder copies decide file by file.
    write(root, "tree/x.bin", "new x");
    write(root, "tree/y.bin", "new y");
    write(root, "copy/x.bin", "old x");
    let staged = stage_with(6, root, "tree/", "copy/", Format::Binary, IfExists::Skip)
        .await
        .unwrap();
    assert_eq!(staged.publish().await.unwrap(), Published { skipped: 1 });
    assert_eq!(listing(&root.join("copy")), ["x.bin", "y.bin"]);
    assert_eq!(
        (read(root, "copy/x.bin"), read(root, "copy/y.bin")),
        ("old x".into(), "new y".into())
    );
}

/// An attempt superseded just as its copy finished drops the staged output it was handed,
/// neither publishing nor discarding it: that must leave nothing either (a nemesis run found
/// such a staging file left over).
#[tokio::test]
async fn a_staged_copy_dropped_unpublished_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id\n1\n");
    write(root, "in/b.bin", "bytes");
    let (table, _) = copy_as(1, root, "in/a.csv", csv(), "out/a.csv", csv()).await.unwrap();
    let (files, _) = copy_as(1, root, "in/b.bin", Format::Binary, "bin/", Format::Binary)
        .await
        .unwrap();
    assert_eq!(staging_files(&root.join("out")).len(), 1);
    drop((table, files));
    assert!(
        !root.join("out").exists() && !root.join("bin").exists(),
        "{:?}",
        listing(root)
    );
}

#[tokio::test]
async fn discard_leaves_nothing_not_even_the_directories_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.csv", "id\n1\n");
    write(root, "keep/old.csv", "old\n");
    let (staged, _) = copy_as(1, root, "in/a.csv", csv(), "new/deep/a.parquet", Format::Parquet)
        .await
        .unwrap();
    assert_eq!(listing(&root.join("new")), ["deep/.a.parquet.shir-job-1-1.tmp"]);
    staged.discard().await;
    assert!(!root.join("new").exists());

    let (staged, _) = copy_as(1, root, "in/a.csv", csv(), "keep/old.csv", csv())
        .await
        .unwrap();
    staged.discard().await;
    assert_eq!(listing(&root.join("keep")), ["old.csv"]);
    assert_eq!(read(root, "keep/old.csv"), "old\n", "the target is untouched");
}

#[tokio::test]
async fn a_cancelled_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("out")).unwrap();
    // One batch, then a source that never ends; the copy is dropped mid-way.
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "a",
        DataType::Utf8,
        true,
    )]));
    let batch = arrow::record_batch::RecordBatch::try_new(
        schema,
        vec![std::sync::Arc::new(arrow::array::StringArray::from(vec!["x"]))],
    )
    .unwrap();
    let batches: Batches = futures::stream::iter([Ok(batch)])
        .chain(futures::stream::pending())
        .boxed();
    let sink = endpoint(root, "out/a.csv", csv());
    let counters = Counters::default();
    let first = attempt(1);
    let write = super::write_table(&first, &sink, batches, &counters);
    assert!(tokio::time::timeout(Duration::from_millis(300), write).await.is_err());
    for _ in 0..100 {
        if listing(&root.join("out")).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("staging files left: {:?}", listing(&root.join("out")));
}

// --- binary copies ----------------------------------------------------------------------------

#[tokio::test]
async fn binary_copy_keeps_layout_sizes_times_and_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let big = noise(3 * super::IO_BUFFER + 12_345, 1);
    let files: [(&str, Vec<u8>, u32); 4] = [
        ("in/.hidden", b"dot".to_vec(), 0o644),
        ("in/a.bin", big, 0o640),
        ("in/sub/b.txt", b"hello\n".to_vec(), 0o600),
        ("in/sub/deeper/empty", Vec::new(), 0o755),
    ];
    let epoch = SystemTime::UNIX_EPOCH;
    for (i, (rel, content, mode)) in files.iter().enumerate() {
        let path = write(root, rel, content);
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        set_mtime(
            &path,
            epoch + Duration::new(1_700_000_000 + i as u64 * 3600, 123_456_789),
        );
    }

    let (staged, report) = copy_as(1, root, "in/", Format::Binary, "archive/in/", Format::Binary)
        .await
        .unwrap();
    let archive = root.join("archive/in");
    assert!(
        listing(&archive)
            .iter()
            .all(|p| is_staging_name(Path::new(p).file_name().unwrap())),
        "only staging files before publish: {:?}",
        listing(&archive)
    );
    staged.publish().await.unwrap();
    assert_eq!(listing(&archive), [".hidden", "a.bin", "sub/b.txt", "sub/deeper/empty"]);

    let total: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    for (rel, content, mode) in &files {
        let from = fs::metadata(root.join(rel)).unwrap();
        let to_path = root.join("archive").join(rel);
        let to = fs::metadata(&to_path).unwrap();
        assert!(fs::read(&to_path).unwrap() == *content, "{rel}: content");
        assert_eq!(to.len(), from.len(), "{rel}: size");
        assert_eq!(to.modified().unwrap(), from.modified().unwrap(), "{rel}: mtime");
        assert_eq!(to.permissions().mode() & 0o7777, *mode, "{rel}: permissions");
    }
    let parts: Vec<&[u8]> = files.iter().map(|f| f.1.as_slice()).collect();
    let expected = checksum_of(&parts);
    assert_eq!(report.check.source_checksum.as_deref(), Some(expected.as_str()));
    assert_eq!(report.check.sink_checksum.as_deref(), Some(expected.as_str()));
    assert!(report.check.verified);
    assert_eq!((report.rows, report.bytes, report.files), (0, total, 4));
    assert_eq!(report.counted, (0, total, 4));
}

#[tokio::test]
async fn binary_copy_of_one_file_goes_to_a_file_or_into_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.bin", b"\x00\x01binary\xff");
    copy(root, "in/a.bin", Format::Binary, "out/renamed.bin", Format::Binary)
        .await
        .unwrap();
    copy(root, "in/a.bin", Format::Binary, "out/into/", Format::Binary)
        .await
        .unwrap();
    fs::create_dir_all(root.join("out/existing")).unwrap();
    copy(root, "in/a.bin", Format::Binary, "out/existing", Format::Binary)
        .await
        .unwrap();
    assert_eq!(
        listing(&root.join("out")),
        ["existing/a.bin", "into/a.bin", "renamed.bin"]
    );
    for p in ["out/renamed.bin", "out/into/a.bin", "out/existing/a.bin"] {
        assert_eq!(fs::read(root.join(p)).unwrap(), b"\x00\x01binary\xff");
    }
}

#[tokio::test]
async fn binary_glob_keeps_the_layout_below_its_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "logs/2026/11/app.log", "nov\n");
    write(root, "logs/2026/12/app.log", "dec\n");
    write(root, "logs/2026/12/other.log", "no\n");
    let report = copy(root, "logs/2026/*/app.log", Format::Binary, "archive/", Format::Binary)
        .await
        .unwrap();
    assert_eq!(listing(&root.join("archive")), ["11/app.log", "12/app.log"]);
    // The digits `xxhsum -H2` (xxHash 0.8.1) prints for a file holding "nov\ndec\n".
    let by_xxhsum = "xxh3-128:0357b7119c8c8e45257166e87b98d6cf";
    assert_eq!(report.check.source_checksum.as_deref(), Some(by_xxhsum));
    assert_eq!(report.check.sink_checksum.as_deref(), Some(by_xxhsum));
}

#[tokio::test]
async fn binary_copy_whose_writes_go_bad_fails_its_check_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Several files, one larger than a copy chunk, so that damage in any stretch counts.
    write(root, "in/a.bin", noise(9 << 20, 5));
    write(root, "in/b.bin", noise(1000, 6));
    let job = "damaged-writes";
    super::binary::tests_hooks::DAMAGED_JOBS
        .lock()
        .unwrap()
        .push(job.into());
    let attempt = AttemptId {
        job_id: job.into(),
        attempt: 1,
    };
    let outcome = stage(
        &attempt,
        &endpoint(root, "in/", Format::Binary),
        &endpoint(root, "out/", Format::Binary),
        &Counters::default(),
    )
    .await;
    let e = match outcome {
        Ok(staged) => panic!("a copy whose writes went bad passed its check: {:?}", staged.check),
        Err(e) => e,
    };
    assert!(
        e.message
            .starts_with("consistency check failed for share:in/: read 9438184 bytes (xxh3-128:"),
        "{}",
        e.message
    );
    assert!(e.retryable, "another node's disk may write well: {}", e.message);
    assert_eq!(
        listing(&root.join("out")),
        Vec::<String>::new(),
        "nothing staged or published"
    );
}

#[tokio::test]
async fn binary_attempts_publish_once_and_discard_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/x/1.bin", noise(100_000, 2));
    write(root, "in/y/2.bin", noise(10, 3));
    let (first, _) = copy_as(1, root, "in", Format::Binary, "out/", Format::Binary)
        .await
        .unwrap();
    let (second, _) = copy_as(2, root, "in", Format::Binary, "out/", Format::Binary)
        .await
        .unwrap();
    first.publish().await.unwrap();
    second.publish().await.unwrap();
    assert_eq!(listing(&root.join("out")), ["x/1.bin", "y/2.bin"]);
    assert_eq!(fs::read(root.join("out/x/1.bin")).unwrap(), noise(100_000, 2));

    let (third, _) = copy_as(3, root, "in", Format::Binary, "fresh/", Format::Binary)
        .await
        .unwrap();
    third.discard().await;
    assert!(!root.join("fresh").exists());
}

#[tokio::test]
async fn binary_copy_refuses_to_overwrite_its_own_source() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/a.bin", "a");
    let e = fatal(copy(root, "in/", Format::Binary, "in/", Format::Binary).await);
    assert_eq!(e, "share:in/a.bin: the copy would overwrite its own source");
    assert_eq!(listing(&root.join("in")), ["a.bin"]);
}

#[tokio::test]
async fn binary_copy_of_a_missing_file_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let e = fatal(copy(root, "in/none.bin", Format::Binary, "out/", Format::Binary).await);
    assert_eq!(e, "share:in/none.bin: no such file or directory");
}

// --- read back by tools we did not write --------------------------------------------------------

pub(super) fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Values that need quoting, escaping or care in CSV.
const AWKWARD: &str = "{\"id\":\"1\",\"text\":\"plain\"}\n\
    {\"id\":\"2\",\"text\":\"comma, inside\"}\n\
    {\"id\":\"3\",\"text\":\"quote \\\" inside\"}\n\
    {\"id\":\"4\",\"text\":\"new\\nline\"}\n\
    {\"id\":\"5\",\"text\":\"semi;colon 'single'\"}\n\
    {\"id\":\"6\",\"text\":\"  spaced  \"}\n\
    {\"id\":\"7\",\"text\":\"ünïcødé ✓\"}\n\
    {\"id\":\"8\",\"text\":\"cr\\r\\nlf\"}\n";

#[tokio::test]
async fn csv_we_write_reads_back_identically_in_pythons_csv_module() {
    if python_with("csv").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/awkward.jsonl", AWKWARD);
    let expected: Vec<serde_json::Value> = AWKWARD
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::json!([v["id"], v["text"]])
        })
        .collect();

    for (format, delimiter, quote) in [(csv(), ",", "\""), (csv_with(b';', b'\'', true), ";", "'")] {
        copy(root, "in/awkward.jsonl", Format::JsonLines, "out/awkward.csv", format)
            .await
            .unwrap();
        let script = "import csv, json, sys\n\
                      with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
                      \x20   rows = list(csv.reader(f, delimiter=sys.argv[2], quotechar=sys.argv[3]))\n\
                      print(json.dumps(rows))\n";
        let out = python(
            script,
            &[&root.join("out/awkward.csv"), Path::new(delimiter), Path::new(quote)],
        );
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(rows[0], serde_json::json!(["id", "text"]));
        assert_eq!(rows[1..], expected[..], "delimiter {delimiter}, quote {quote}");
    }
}

/// A CSV with a column of each type inference knows, and a ZIP code that must stay text.
const TYPED_CSV: &str = "id,amount,ok,day,at,at_utc,zip,note\n\
    1,1.50,true,2026-12-01,2026-12-01 10:11:12,2026-12-01T10:11:12Z,02134,hello\n\
    2,-3,FALSE,2026-12-02,2026-12-02T00:00:00.5,2026-12-02 01:00:00+01:00,10001,\n\
    ,2.25e1,,,,,,\"quoted, text\"\n";

#[tokio::test]
async fn csv_column_types_are_inferred_as_duckdb_infers_them_and_read_back_as_such() {
    if python_with("pyarrow").is_none() || python_with("duckdb").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "in/t.csv", TYPED_CSV);
    copy(root, "in/t.csv", csv(), "lake/t.parquet", Format::Parquet)
        .await
        .unwrap();
    let script = "import json, sys\n\
                  import pyarrow.parquet as pq\n\
                  t = pq.read_table(sys.argv[1])\n\
                  show = lambda v: v.isoformat() if hasattr(v, 'isoformat') else v\n\
                  rows = [{k: show(v) for k, v in r.items()} for r in t.to_pylist()]\n\
                  print(json.dumps({'types': [[f.name, str(f.type)] for f in t.schema], 'rows': rows}))\n";
    let got: serde_json::Value = serde_json::from_str(&python(script, &[&root.join("lake/t.parquet")])).unwrap();
    assert_eq!(
        got["types"],
        serde_json::json!([
            ["id", "int64"],
            ["amount", "double"],
            ["ok", "bool"],
            ["day", "date32[day]"],
            ["at", "timestamp[us]"],
            ["at_utc", "timestamp[us, tz=UTC]"],
            ["zip", "string"],
            ["note", "string"]
        ])
    );
    assert_eq!(
        got["rows"],
        serde_json::json!([
            {"id": 1, "amount": 1.5, "ok": true, "day": "2026-12-01", "at": "2026-12-01T10:11:12",
             "at_utc": "2026-12-01T10:11:12+00:00", "zip": "02134", "note": "hello"},
            {"id": 2, "amount": -3.0, "ok": false, "day": "2026-12-02", "at": "2026-12-02T00:00:00.500000",
             "at_utc": "2026-12-02T00:00:00+00:00", "zip": "10001", "note": null},
            {"id": null, "amount": 22.5, "ok": null, "day": null, "at": null,
             "at_utc": null, "zip": null, "note": "quoted, text"},
        ])
    );
    // DuckDB reads our Parquet with the types its own CSV reader infers from the source.
    let script = "import json, sys, duckdb\n\
                  d = lambda q: [[c[0], c[1]] for c in duckdb.sql(q).fetchall()]\n\
                  print(json.dumps([d(f\"DESCRIBE SELECT * FROM read_parquet('{sys.argv[1]}')\"),\n\
                  \x20                 d(f\"DESCRIBE SELECT * FROM read_csv('{sys.argv[2]}')\")]))\n";
    let out = python(script, &[&root.join("lake/t.parquet"), &root.join("in/t.csv")]);
    let [ours, duckdbs]: [serde_json::Value; 2] = serde_json::from_str(&out).unwrap();
    assert_eq!(ours, duckdbs);
    assert_eq!(ours[5], serde_json::json!(["at_utc", "TIMESTAMP WITH TIME ZONE"]));

    // --schema text keeps every column text.
    copy(root, "in/t.csv", csv_text(), "lake/text.parquet", Format::Parquet)
        .await
        .unwrap();
    let script = "import sys, pyarrow.parquet as pq\n\
                  print(sorted(set(str(f.type) for f in pq.read_table(sys.argv[1]).schema)))\n";
    assert_eq!(python(script, &[&root.join("lake/text.parquet")]).trim(), "['string']");
}

#[tokio::test]
async fn a_value_that_contradicts_the_inferred_type_fails_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Past the sample: the first 20,480 rows say integer, a later one says otherwise.
    let mut input = String::from("id,amount\n");
    for i in 0..30_000 {
        input.push_str(&format!("{i},{}\n", i * 3));
    }
    input.push_str("30000,\"n/a\nreally\"\n");
    write(root, "in/late.csv", &input);
    let e = fatal(copy(root, "in/late.csv", csv(), "out/late.parquet", Format::Parquet).await);
    assert_eq!(
        e,
        "share:in/late.csv line 30002 column 'amount': 'n/a\\nreally' is not an integer (the type inferred from the first 20480 rows; --schema text copies every column as text)"
    );
    assert!(!root.join("out").exists(), "nothing staged or published");
    // The same file to CSV keeps the text, so nothing contradicts anything.
    copy(root, "in/late.csv", csv(), "out/late.csv", csv()).await.unwrap();
    assert!(read(root, "out/late.csv") == input);
}

#[tokio::test]
async fn parquet_we_write_reads_back_identically_in_pyarrow() {
    if python_with("pyarrow").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "in/t.jsonl",
        "{\"id\":1,\"name\":\"Ann\",\"score\":1.5,\"ok\":true}\n\
         {\"id\":2,\"name\":\"ünï ✓\",\"score\":null,\"ok\":false}\n\
         {\"id\":-3,\"name\":null,\"score\":-0.25}\n",
    );
    copy(root, "in/t.jsonl", Format::JsonLines, "lake/t.parquet", Format::Parquet)
        .await
        .unwrap();
    let script = "import json, sys\n\
                  import pyarrow.parquet as pq\n\
                  t = pq.read_table(sys.argv[1])\n\
                  print(json.dumps({'types': [[f.name, str(f.type)] for f in t.schema], 'rows': t.to_pylist()}))\n";
    let out = python(script, &[&root.join("lake/t.parquet")]);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        got,
        serde_json::json!({
            "types": [["id", "int64"], ["name", "string"], ["score", "double"], ["ok", "bool"]],
            "rows": [
                {"id": 1, "name": "Ann", "score": 1.5, "ok": true},
                {"id": 2, "name": "ünï ✓", "score": null, "ok": false},
                {"id": -3, "name": null, "score": -0.25, "ok": null},
            ]
        })
    );
}

#[tokio::test]
async fn parquet_written_by_pyarrow_is_read_by_us() {
    if python_with("pyarrow").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("lake")).unwrap();
    let script = "import sys\n\
                  import pyarrow as pa, pyarrow.parquet as pq\n\
                  t = pa.table({'day': ['2026-11-27', '2026-11-28'], 'n': pa.array([1, None], pa.int32()), 'x': [0.5, 2.0]})\n\
                  pq.write_table(t, sys.argv[1], row_group_size=1)\n";
    python(script, &[&root.join("lake/p.parquet")]);
    let report = copy(root, "lake/p.parquet", Format::Parquet, "out/p.csv", csv())
        .await
        .unwrap();
    assert_eq!(report.rows, 2);
    assert_eq!(read(root, "out/p.csv"), "day,n,x\n2026-11-27,1,0.5\n2026-11-28,,2.0\n");
}

// --- throughput (run by hand) --------------------------------------------------------------------

/// A binary copy of one large file against `cp` of the same file, on the same disk.
/// `SHIR_BENCH_MIB` sets the size (default 1024), `SHIR_BENCH_DIR` the directory.
/// Run: `cargo test --release --lib copy::files::tests::binary_copy_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: writes a gigabyte"]
async fn binary_copy_throughput_against_cp() {
    let mib: usize = std::env::var("SHIR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let base = std::env::var("SHIR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).unwrap();
    let root = dir.path();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(File::create(root.join("src.bin")).unwrap());
        for i in 0..mib {
            f.write_all(&noise(1 << 20, i as u64 + 1)).unwrap();
        }
    }
    let sync = || {
        Command::new("sync").status().unwrap();
    };
    // Warm the page cache for both contenders alike, then alternate them, each starting
    // with no dirty pages (a VM's disk makes single runs noisy).
    let _ = fs::read(root.join("src.bin")).unwrap();
    let (mut cp, mut cp_sync, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let target = root.join(format!("cp{round}.bin"));
        sync();
        let t = std::time::Instant::now();
        let status = Command::new("cp")
            .arg(root.join("src.bin"))
            .arg(&target)
            .status()
            .unwrap();
        assert!(status.success());
        cp.push(t.elapsed());
        sync();
        cp_sync.push(t.elapsed());
        fs::remove_file(target).unwrap();

        sync();
        let t = std::time::Instant::now();
        copy(root, "src.bin", Format::Binary, "shir.bin", Format::Binary)
            .await
            .unwrap();
        ours.push(t.elapsed());
        fs::remove_file(root.join("shir.bin")).unwrap();
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (cp, cp_sync, ours) = (median(&mut cp), median(&mut cp_sync), median(&mut ours));
    let mb = mib as f64 * 1.048_576;
    println!(
        "{mib} MiB, medians of 3: cp {:.0} MB/s ({cp:.2?}; with sync {cp_sync:.2?}), shir {:.0} MB/s ({ours:.2?}, fsynced, two checksums): {:.2}x cp, {:.2}x cp+sync",
        mb / cp.as_secs_f64(),
        mb / ours.as_secs_f64(),
        cp.as_secs_f64() / ours.as_secs_f64(),
        cp_sync.as_secs_f64() / ours.as_secs_f64()
    );
}

/// A CSV→CSV copy of a large file (`SHIR_BENCH_MIB`, default 256), against `cp`.
/// Run: `cargo test --release --lib copy::files::tests::csv_copy_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: writes hundreds of megabytes"]
async fn csv_copy_throughput_against_cp() {
    let mib: usize = std::env::var("SHIR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let base = std::env::var("SHIR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).unwrap();
    let root = dir.path();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(File::create(root.join("src.csv")).unwrap());
        writeln!(f, "id,day,store,sku,quantity,price,currency,customer,channel,comment").unwrap();
        let (mut written, mut i) = (0usize, 0u64);
        while written < mib << 20 {
            let line = format!(
                "{i},2026-11-{:02},S{:04},SKU-{:08},{},{}.{:02},EUR,C{:07},{},\"note {i}, with comma\"\n",
                i % 28 + 1,
                i % 997,
                i * 7919 % 100_000_000,
                i % 13,
                i % 1000,
                i % 100,
                i * 31 % 10_000_000,
                ["web", "store", "phone"][(i % 3) as usize]
            );
            f.write_all(line.as_bytes()).unwrap();
            written += line.len();
            i += 1;
        }
    }
    Command::new("sync").status().unwrap();
    let _ = fs::read(root.join("src.csv")).unwrap();
    let t = std::time::Instant::now();
    assert!(
        Command::new("cp")
            .arg(root.join("src.csv"))
            .arg(root.join("cp.csv"))
            .status()
            .unwrap()
            .success()
    );
    let cp = t.elapsed();
    let t = std::time::Instant::now();
    let report = copy(root, "src.csv", csv(), "out.csv", csv()).await.unwrap();
    let ours = t.elapsed();
    assert!(fs::read(root.join("out.csv")).unwrap() == fs::read(root.join("src.csv")).unwrap());
    let mb = mib as f64 * 1.048_576;
    println!(
        "{mib} MiB CSV, {} rows: cp {:.0} MB/s ({cp:.2?}), shir CSV→CSV {:.0} MB/s ({ours:.2?}), byte-identical",
        report.rows,
        mb / cp.as_secs_f64(),
        mb / ours.as_secs_f64()
    );
}
