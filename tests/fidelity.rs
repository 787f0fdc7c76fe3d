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
    assert_eq!(err.trim(), "--schema 'guess' is not infer or text");
}
