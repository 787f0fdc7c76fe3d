//! Data fidelity through the real binary on a one-node IR: submissions that would write
//! what they read or name paths outside the share are refused at submit and leave no job
//! behind; CSV that is malformed fails its job at once (no retry) with file and line and
//! publishes nothing; `--allow-empty` and `--encoding` let the rest through; `--if-exists
//! fail|skip` leave a file that was there before the job as it was; CSV column types are
//! inferred unless `--schema text`.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shir::cli::local_ir::LocalIr;

async fn shir(ir: &LocalIr, args: &[&str]) -> Result<String, String> {
    common::shir_on(ir, 0, args, None).await
}

async fn jobs(ir: &LocalIr) -> Vec<Value> {
    let out = shir(ir, &["job", "list", "--json"]).await.expect("job list");
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .expect("job list --json is an array")
}

/// Submits and waits for the job to end; returns it as `job show --json` has it.
async fn run(ir: &LocalIr, args: &[&str]) -> Value {
    let mut all = vec!["job", "submit"];
    all.extend(args);
    let id = shir(ir, &all).await.expect("submitted").trim().to_string();
    common::eventually(&format!("job {id} ends"), Duration::from_secs(30), || async {
        let out = shir(ir, &["job", "show", &id, "--json"]).await?;
        let job: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        match job["state"].as_str() {
            Some("Succeeded" | "Failed") => Ok(job),
            _ => Err(format!("{job}")),
        }
    })
    .await
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_refused_and_bad_csv_fails_naming_file_and_line() {
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(1), 1);
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.form("fidelity-ir").await.expect("one node forms an IR");
    let share = tmp.path().join("share");
    std::fs::create_dir_all(share.join("in")).unwrap();
    std::fs::create_dir_all(share.join("etc")).unwrap();
    ir.create_filesystem_service("share", &share)
        .await
        .expect("create share");
    let input = "id,name\n1,a\n2,b\n";
    std::fs::write(share.join("in/a.csv"), input).unwrap();

    steps.step("submissions refused at submit, with no job left behind");
    let refusals: [(&[&str], &str); 6] = [
        (
            &["--source", "share:/in/a.csv", "--sink", "share:/in/a.csv"],
            "--sink share:/in/a.csv would overwrite what --source share:/in/a.csv reads: write somewhere else",
        ),
        (
            &[
                "--source",
                "share:/in/",
                "--sink",
                "share:/in/all.parquet",
                "--source-format",
                "csv",
            ],
            "--sink share:/in/all.parquet would overwrite what --source share:/in/ reads",
        ),
        (
            &["--source", "share:/in/*.csv", "--sink", "share:/in/all.csv"],
            "--sink share:/in/all.csv would overwrite what --source share:/in/*.csv reads",
        ),
        (
            &["--source", "share:/in/a.csv", "--sink", "share:/out/../../etc/x.csv"],
            "--sink: share:out/../../etc/x.csv: the path leaves the linked service's root ('..' is not allowed)",
        ),
        (
            &["--source", "share:/../../etc/x", "--sink", "share:/out/x.csv"],
            "--source: share:../../etc/x: the path leaves the linked service's root ('..' is not allowed)",
        ),
        (
            &["--source", "share:/in/a.csv", "--sink", "share:/out/"],
            "--sink: share:out/: names a directory; a table is written to one file, so give its name",
        ),
    ];
    for (args, expected) in refusals {
        let mut all = vec!["job", "submit"];
        all.extend(args);
        let err = shir(&ir, &all).await.expect_err(expected);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    assert!(jobs(&ir).await.is_empty(), "no refused job entered the log");
    assert_eq!(std::fs::read_to_string(share.join("in/a.csv")).unwrap(), input);
    assert_eq!(listing(&share.join("in")), ["a.csv"]);
    assert!(listing(&share.join("etc")).is_empty());
    assert!(!share.join("out").exists());

    steps.step("malformed CSV fails at the first attempt with file and line, publishing nothing");
    let bad: [(&str, &[u8], &str); 6] = [
        (
            "open.csv",
            b"id,text\n1,\"unterminated\n2,b\n",
            "share:bad/open.csv line 2: a quoted field is never closed",
        ),
        (
            "dup.csv",
            b"id,name,id\n1,a,2\n",
            "share:bad/dup.csv line 1: the header names columns 1 and 3 both 'id'",
        ),
        (
            "blank.csv",
            b"id,,name\n1,a,2\n",
            "share:bad/blank.csv line 1: column 2 of the header has no name",
        ),
        (
            "ragged.csv",
            b"id,name\n1,a\n2,b,c\n",
            "share:bad/ragged.csv line 3: 3 fields where the header has 2",
        ),
        (
            "latin1.csv",
            b"id,name\n1,caf\xe9\n",
            "share:bad/latin1.csv line 2: field 2 is not valid UTF-8",
        ),
        (
            "header-only.csv",
            b"id,name\n",
            "share:bad/header-only.csv has a header and no rows: give --allow-empty",
        ),
    ];
    std::fs::create_dir_all(share.join("bad")).unwrap();
    for (name, content, expected) in bad {
        std::fs::write(share.join("bad").join(name), content).unwrap();
        let source = format!("share:/bad/{name}");
        let job = run(&ir, &["--source", &source, "--sink", "share:/out/x.parquet"]).await;
        assert_eq!(job["state"], "Failed", "{job}");
        let error = job["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error}");
        assert_eq!(job["attempt"], 1, "{name}: bad data is not retried: {job}");
        assert!(listing(&share.join("out")).is_empty(), "{name}: nothing published");
    }
    std::fs::write(share.join("bad/empty.csv"), "").unwrap();
    let job = run(&ir, &["--source", "share:/bad/empty.csv", "--sink", "share:/out/x.csv"]).await;
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("share:bad/empty.csv is empty"),
        "{job}"
    );

    steps.step("--allow-empty and --encoding let the same files through");
    let job = run(
        &ir,
        &[
            "--source",
            "share:/bad/header-only.csv",
            "--sink",
            "share:/out/empty.csv",
            "--allow-empty",
        ],
    )
    .await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    assert_eq!(
        std::fs::read_to_string(share.join("out/empty.csv")).unwrap(),
        "id,name\n"
    );
    let job = run(
        &ir,
        &[
            "--source",
            "share:/bad/latin1.csv",
            "--sink",
            "share:/out/utf8.csv",
            "--encoding",
            "latin1",
        ],
    )
    .await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    assert_eq!(
        std::fs::read_to_string(share.join("out/utf8.csv")).unwrap(),
        "id,name\n1,café\n"
    );
    let err = shir(
        &ir,
        &[
            "job",
            "submit",
            "--source",
            "share:/in/a.csv",
            "--sink",
            "share:/out/y.csv",
            "--encoding",
            "ebcdic",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("--encoding 'ebcdic' is not one of utf-8, latin1, windows-1252"),
        "{err}"
    );

    steps.step("--if-exists fail and skip leave a file another job wrote as it was");
    let before = std::fs::read_to_string(share.join("out/utf8.csv")).unwrap();
    let onto_it = |rule: &'static str| {
        [
            "--source",
            "share:/in/a.csv",
            "--sink",
            "share:/out/utf8.csv",
            "--if-exists",
            rule,
        ]
    };
    let job = run(&ir, &onto_it("fail")).await;
    assert_eq!(job["state"], "Failed", "{job}");
    assert_eq!(job["attempt"], 1, "not retried: {job}");
    assert_eq!(
        job["error"],
        "share:out/utf8.csv existed before the job and --if-exists fail leaves it as it was"
    );
    let job = run(&ir, &onto_it("skip")).await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    assert_eq!((&job["files"], &job["files_skipped"]), (&0.into(), &1.into()), "{job}");
    let id = job["id"].as_str().unwrap();
    let shown = shir(&ir, &["job", "show", id]).await.unwrap();
    assert!(
        shown.contains("0 (1 skipped: they existed, --if-exists skip)"),
        "{shown}"
    );
    assert_eq!(std::fs::read_to_string(share.join("out/utf8.csv")).unwrap(), before);
    let job = run(&ir, &onto_it("overwrite")).await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    assert_eq!(std::fs::read_to_string(share.join("out/utf8.csv")).unwrap(), input);
    assert_eq!(
        listing(&share.join("out")),
        ["empty.csv", "utf8.csv"],
        "no staging file left"
    );
    let known = jobs(&ir).await.len();
    let mut all = vec!["job", "submit"];
    all.extend(onto_it("append"));
    let err = shir(&ir, &all).await.unwrap_err();
    assert_eq!(err.trim(), "--if-exists 'append' is not one of overwrite, fail, skip");
    assert_eq!(jobs(&ir).await.len(), known, "the refused job did not enter the log");

    steps.step("CSV to JSON Lines: types inferred by default, text with --schema text");
    std::fs::write(share.join("in/typed.csv"), "id,ok,day\n1,true,2026-12-01\n2,false,\n").unwrap();
    let to_jsonl = |sink: &'static str, schema: &'static str| {
        ["--source", "share:/in/typed.csv", "--sink", sink, "--schema", schema]
    };
    let job = run(&ir, &to_jsonl("share:/out/typed.jsonl", "infer")).await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    assert_eq!(
        std::fs::read_to_string(share.join("out/typed.jsonl")).unwrap(),
        "{\"id\":1,\"ok\":true,\"day\":\"2026-12-01\"}\n{\"id\":2,\"ok\":false}\n"
    );
    let job = run(&ir, &to_jsonl("share:/out/text.jsonl", "text")).await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    assert_eq!(
        std::fs::read_to_string(share.join("out/text.jsonl")).unwrap(),
        "{\"id\":\"1\",\"ok\":\"true\",\"day\":\"2026-12-01\"}\n{\"id\":\"2\",\"ok\":\"false\"}\n"
    );
    let mut all = vec!["job", "submit"];
    all.extend(to_jsonl("share:/out/x.jsonl", "guess"));
    let err = shir(&ir, &all).await.unwrap_err();
    assert_eq!(
        err.trim(),
        "--schema 'guess' is not infer or text, and not a schema file that can be read: No such file or directory (os error 2)"
    );

    schemas_null_markers_formats_mapping_and_bad_rows(&ir, &share, &steps).await;
}

/// Runs `python3 -c script args…` and returns its output; panics naming the script's error.
fn python(script: &str, args: &[&Path]) -> String {
    let out = std::process::Command::new("python3")
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

/// The columns `job show --json` reports, as `name type` strings.
fn schema_of(job: &Value) -> Vec<String> {
    job["schema"]
        .as_array()
        .unwrap_or_else(|| panic!("a schema in {job}"))
        .iter()
        .map(|c| format!("{} {}", c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect()
}

/// `--schema FILE`, `--csv-null`, `--timestamp-format`, `--columns`/`--rename` and
/// `--on-bad-row skip` through the CLI and a worker, read back by pyarrow and DuckDB; every
/// bad submission refused in one line with no job made, every mismatch found at the start of
/// the copy failing it at once with nothing published.
async fn schemas_null_markers_formats_mapping_and_bad_rows(ir: &LocalIr, share: &Path, steps: &common::Steps) {
    steps.step("typed CSV with a schema file, null markers, a timestamp format, mapping and bad rows");
    std::fs::create_dir_all(share.join("typed")).unwrap();
    std::fs::write(
        share.join("typed/orders.csv"),
        "id,amount,placed,note,secret\n\
         1,176.12,01/12/2026 10:11,first,x\n\
         2,NULL,02/12/2026 00:00,\\N,y\n\
         3,n/a,03/12/2026 12:30,bad amount,z\n\
         4,0.10,31/12/2026 23:59\n\
         5,-12345678.99,31/12/2026 23:59,last,w\n",
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let schema_file = tmp.path().join("orders.schema.json");
    std::fs::write(
        &schema_file,
        r#"{"id": "int64", "amount": "decimal(12,2)", "placed": "timestamp", "note": "text", "secret": "text"}"#,
    )
    .unwrap();
    let schema_arg = schema_file.to_str().unwrap();
    let args = [
        "--source",
        "share:/typed/orders.csv",
        "--sink",
        "share:/lake/orders.parquet",
        "--schema",
        schema_arg,
        "--csv-null",
        "NULL,\\N",
        "--timestamp-format",
        "%d/%m/%Y %H:%M",
        "--columns",
        "id,placed,amount,note",
        "--rename",
        "placed=placed_at",
        "--on-bad-row",
        "skip",
        "--bad-rows",
        "share:/errors/",
    ];
    let job = run(ir, &args).await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            &job["check"]["rows_read"],
            &job["check"]["rows_written"],
            &job["check"]["rows_skipped"]
        ),
        (&5.into(), &3.into(), &2.into()),
        "{job}"
    );
    assert_eq!(job["check"]["verified"], true);
    assert_eq!(
        schema_of(&job),
        [
            "id Int64",
            "placed_at Timestamp(µs)",
            "amount Decimal128(12, 2)",
            "note Utf8"
        ]
    );
    assert_eq!(job["schema_columns"], 4);
    let rejects = format!("share:/errors/{id}.rejects.jsonl");
    assert_eq!(job["rejects"], rejects.as_str());
    let shown = shir(ir, &["job", "show", &id]).await.unwrap();
    let row = |field: &str| {
        let line = shown.lines().find(|l| l.starts_with(field));
        line.map(|l| l[field.len()..].trim().to_string()).unwrap_or_default()
    };
    assert_eq!(
        row("schema"),
        "id Int64, placed_at Timestamp(µs), amount Decimal128(12, 2), note Utf8",
        "{shown}"
    );
    assert_eq!(row("rejects"), rejects, "{shown}");
    assert!(
        shown.contains("verified: 5 rows read, 3 written, 2 skipped (--on-bad-row skip)"),
        "{shown}"
    );
    assert_eq!(
        listing(&share.join("errors")),
        [format!("{id}.rejects.jsonl")],
        "one rejects file, no staging file"
    );
    let lines: Vec<Value> = std::fs::read_to_string(share.join(format!("errors/{id}.rejects.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"file": "share:typed/orders.csv", "line": 4, "column": "amount",
                "reason": "'n/a' is not a decimal of at most 12 digits, 2 after the point",
                "text": "3,n/a,03/12/2026 12:30,bad amount,z"}),
            serde_json::json!({"file": "share:typed/orders.csv", "line": 5, "column": null,
                "reason": "3 fields where the header has 5", "text": "4,0.10,31/12/2026 23:59"}),
        ]
    );

    if shir::testing::python_with("pyarrow").is_some() {
        let script = "import json, sys\n\
                      import pyarrow.parquet as pq\n\
                      t = pq.read_table(sys.argv[1])\n\
                      show = lambda v: v.isoformat() if hasattr(v, 'isoformat') else (str(v) if v is not None and not isinstance(v, (int, str)) else v)\n\
                      print(json.dumps({'types': [[f.name, str(f.type)] for f in t.schema], 'rows': [{k: show(v) for k, v in r.items()} for r in t.to_pylist()]}))\n";
        let got: Value = serde_json::from_str(&python(script, &[&share.join("lake/orders.parquet")])).unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "types": [["id", "int64"], ["placed_at", "timestamp[us]"], ["amount", "decimal128(12, 2)"], ["note", "string"]],
                "rows": [
                    {"id": 1, "placed_at": "2026-12-01T10:11:00", "amount": "176.12", "note": "first"},
                    {"id": 2, "placed_at": "2026-12-02T00:00:00", "amount": null, "note": null},
                    {"id": 5, "placed_at": "2026-12-31T23:59:00", "amount": "-12345678.99", "note": "last"},
                ]
            })
        );
    }
    if shir::testing::python_with("duckdb").is_some() {
        let script = "import json, sys, duckdb\n\
                      d = duckdb.sql(f\"DESCRIBE SELECT * FROM read_parquet('{sys.argv[1]}')\").fetchall()\n\
                      s = duckdb.sql(f\"SELECT sum(amount)::VARCHAR FROM read_parquet('{sys.argv[1]}')\").fetchall()[0][0]\n\
                      r = duckdb.sql(f\"SELECT line, \\\"column\\\" FROM read_json('{sys.argv[2]}') ORDER BY line\").fetchall()\n\
                      print(json.dumps({'types': [[c[0], c[1]] for c in d], 'sum': s, 'rejects': r}))\n";
        let out = python(
            script,
            &[
                &share.join("lake/orders.parquet"),
                &share.join(format!("errors/{id}.rejects.jsonl")),
            ],
        );
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "types": [["id", "BIGINT"], ["placed_at", "TIMESTAMP"], ["amount", "DECIMAL(12,2)"], ["note", "VARCHAR"]],
                "sum": "-12345502.87",
                "rejects": [[4, "amount"], [5, null]],
            })
        );
    }

    steps.step("a typed source (Parquet) reports its own schema, selected and reordered");
    let job = run(
        ir,
        &[
            "--source",
            "share:/lake/orders.parquet",
            "--sink",
            "share:/lake/orders.jsonl",
            "--columns",
            "amount,id",
        ],
    )
    .await;
    assert_eq!(job["state"], "Succeeded", "{job}");
    assert_eq!(schema_of(&job), ["amount Decimal128(12, 2)", "id Int64"]);

    steps.step("bad schema, format, mapping and bad-row submissions are refused in one line");
    let known = jobs(ir).await.len();
    let bad_type = tmp.path().join("bad.schema");
    std::fs::write(&bad_type, "id:int64\namount:money\n").unwrap();
    let created = shir(
        ir,
        &[
            "linked-service",
            "create",
            "web",
            "--type",
            "http",
            "--url",
            "http://127.0.0.1:9/",
        ],
    )
    .await;
    assert!(created.is_ok(), "{created:?}");
    let base = ["--source", "share:/typed/orders.csv", "--sink", "share:/lake/x.parquet"];
    let refusals: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--schema", bad_type.to_str().unwrap()],
            "--schema: column 'amount': 'money' is not a type (int64, float64, boolean, date, timestamp, timestamptz, decimal(P,S), text)".into(),
        ),
        (
            vec!["--schema", "/nonexistent/schema.json"],
            "--schema '/nonexistent/schema.json' is not infer or text, and not a schema file that can be read: No such file or directory (os error 2)".into(),
        ),
        (
            vec!["--timestamp-format", "%d/%m/%Y"],
            "--timestamp-format '%d/%m/%Y' does not read back the timestamp it writes ('01/12/2026': input is not enough for unique date and time); a timestamp needs a date and a time of day (dates alone: --date-format)".into(),
        ),
        (
            vec!["--timestamp-format", "%Y-%m-%d %Q"],
            "--timestamp-format '%Y-%m-%d %Q' is not a strftime format (a '%' names no field chrono knows)".into(),
        ),
        (
            vec!["--bad-rows", "share:/errors/"],
            "--bad-rows is where --on-bad-row skip puts rejected rows: give --on-bad-row skip too".into(),
        ),
        (
            vec!["--on-bad-row", "skip", "--bad-rows", "web:/errors/"],
            "--bad-rows: 'web' is a http linked service; the rejects file goes to a file share".into(),
        ),
        (
            vec!["--on-bad-row", "skip"],
            "--on-bad-row skip needs --bad-rows LINKED_SERVICE:/folder/ for the rejects file".into(),
        ),
        (
            vec!["--columns", "id,note", "--rename", "note=id"],
            "--rename note=id: two columns would be named 'id'".into(),
        ),
        (vec!["--columns", "id,id"], "--columns names 'id' twice".into()),
        (
            vec!["--schema", schema_arg, "--columns", "id,email"],
            "--columns names 'email', which --schema does not (a schema names every column of the file)".into(),
        ),
        (vec!["--csv-null", ""], "--csv-null '' names no value: empty fields are nulls already".into()),
    ];
    for (extra, expected) in &refusals {
        let mut all = vec!["job", "submit"];
        all.extend(base);
        all.extend(extra.iter().copied());
        let err = shir(ir, &all).await.expect_err(expected);
        assert_eq!(err.trim(), expected.as_str(), "{extra:?}");
    }
    assert_eq!(jobs(ir).await.len(), known, "no refused job entered the log");

    steps.step("columns the file does not have fail the job at its start, publishing nothing");
    let narrow = tmp.path().join("narrow.schema");
    std::fs::write(
        &narrow,
        "id:int64,amount:decimal(12,2),placed:text,note:text,secret:text,extra:text",
    )
    .unwrap();
    let at_start: [(&[&str], &str); 3] = [
        (
            &["--schema", narrow.to_str().unwrap()],
            "share:typed/orders.csv: --schema names a column 'extra' that the file does not have (its columns: id, amount, placed, note, secret)",
        ),
        (
            &["--columns", "id,email", "--schema", "text"],
            "--columns names a column 'email' that share:typed/orders.csv does not have (its columns: id, amount, placed, note, secret)",
        ),
        (
            &["--rename", "note=id", "--schema", "text"],
            "share:typed/orders.csv: two columns would be named 'id' (--rename gives a name the source has)",
        ),
    ];
    for (extra, expected) in at_start {
        let mut all = base.to_vec();
        all.extend(extra);
        let job = run(ir, &all).await;
        assert_eq!(job["state"], "Failed", "{job}");
        assert_eq!(job["attempt"], 1, "not retried: {job}");
        assert_eq!(job["error"], expected);
        assert!(!share.join("lake/x.parquet").exists(), "nothing published");
    }
}
