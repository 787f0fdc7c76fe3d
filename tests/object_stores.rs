//! Object-store linked services on a real three-node IR, as an operator uses them: `s3` and
//! `azure-blob` services made with `--secret-stdin`, tested from a node, binary copy jobs
//! from a share to each and back, read back by boto3 and Microsoft's SDK; a worker killed
//! while its upload is staged, and the job ends with one complete object; bad definitions
//! refused in one line, changing nothing; the secrets in no log and nowhere on disk.
//! The servers (s3s-fs, Azurite) are started by the test; without them it skips, except
//! under `CI=true`.

mod common;

use common::shir_on;

use std::time::Duration;

use serde_json::Value;
use shir::cli::local_ir::LocalIr;
use shir::testing::object_stores::{AZURITE_ACCOUNT, AZURITE_KEY, ThrowawayAzurite, ThrowawayS3, python};
use shir::testing::python_with;

const HOLD_MS: u64 = 3000;

async fn job_json(ir: &LocalIr, via: usize, args: &[&str]) -> Value {
    let out = shir_on(ir, via, args, None)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

async fn submit(ir: &LocalIr, name: &str, source: &str, sink: &str) -> String {
    let j = job_json(
        ir,
        0,
        &[
            "job", "submit", "--name", name, "--source", source, "--sink", sink, "--binary", "--json",
        ],
    )
    .await;
    j["id"].as_str().expect("an id").to_string()
}

async fn wait_end(ir: &LocalIr, via: usize, id: &str) -> Value {
    common::job_end(ir, via, id, Duration::from_secs(90)).await
}

/// `shir linked-service create NAME --type KIND`, `--set FIELD` for each of `fields`, then `more`.
async fn create(
    ir: &LocalIr,
    via: usize,
    name: &str,
    kind: &str,
    fields: &[&str],
    more: &[&str],
    input: Option<&str>,
) -> Result<String, String> {
    let mut args = vec!["linked-service", "create", name, "--type", kind];
    for field in fields {
        args.extend(["--set", field]);
    }
    args.extend(more);
    shir_on(ir, via, &args, input).await
}

fn refused(result: Result<String, String>, expect: &str) {
    let err = result.expect_err(&format!("should be refused with '{expect}'"));
    assert!(err.contains(expect), "error should mention '{expect}': {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_jobs_copy_to_s3_and_azure_blob_exactly_once() {
    let Some(s3) = ThrowawayS3::start() else { return };
    let Some(azurite) = ThrowawayAzurite::start() else {
        return;
    };
    s3.create_bucket("raw");
    azurite.create_container("landing");
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let share = tmp.path().join("share");
    std::fs::create_dir_all(share.join("in/sub")).unwrap();
    std::fs::write(share.join("in/a.txt"), "hello\n").unwrap();
    std::fs::write(share.join("in/sub/b.bin"), vec![7u8; 300_000]).unwrap();
    let mut ir = common::local_ir(tmp.path(), common::free_port(3), 3);
    ir.offline_timeout_ms = Some(1500);
    ir.env
        .push(common::failpoints(&[(common::HOLD_BEFORE_PUBLISH, "hold-", HOLD_MS)]));
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.form("objects-ir").await.expect("three nodes form an IR");
    steps.step("IR formed");

    let root = format!("root={}", share.display());
    create(&ir, 0, "share", "filesystem", &[&root], &[], None)
        .await
        .unwrap();
    let (bucket, region, endpoint, key_id) = (
        "bucket=raw".to_string(),
        format!("region={}", s3.region),
        format!("endpoint={}", s3.endpoint),
        format!("access_key_id={}", s3.access_key_id),
    );
    let secret_stdin = ["--secret-stdin", "secret_access_key"];

    // Bad definitions: one line each, nothing made.
    let secret_set = format!("secret_access_key={}", s3.secret_access_key);
    refused(
        create(
            &ir,
            0,
            "lake",
            "s3",
            &[&bucket, &region, &key_id, &secret_set],
            &[],
            None,
        )
        .await,
        "give it with --secret-stdin secret_access_key",
    );
    let no_url = "endpoint=localhost:9000";
    let lake_fields = [bucket.as_str(), &region, no_url, &key_id];
    refused(
        create(
            &ir,
            0,
            "lake",
            "s3",
            &lake_fields,
            &secret_stdin,
            Some(&s3.secret_access_key),
        )
        .await,
        "field 'endpoint' must be a URL",
    );
    refused(
        create(&ir, 0, "blob", "azure-blob", &["account=a", "container=c"], &[], None).await,
        "give one of the secrets account_key or sas_token",
    );
    let not_a_key = tmp.path().join("sa.json");
    std::fs::write(&not_a_key, "{\"type\": \"authorized_user\"}").unwrap();
    let key_file = format!("service_account_key={}", not_a_key.display());
    refused(
        create(&ir, 0, "gcs", "gcs", &["bucket=b"], &["--secret-file", &key_file], None).await,
        "is not a service account's JSON key",
    );
    let listed = job_json(&ir, 0, &["linked-service", "list", "--json"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "only the share exists: {listed}");

    let lake_fields = [bucket.as_str(), &region, &endpoint, &key_id];
    create(
        &ir,
        0,
        "lake",
        "s3",
        &lake_fields,
        &secret_stdin,
        Some(&s3.secret_access_key),
    )
    .await
    .unwrap();
    let (account, blob_endpoint) = (
        format!("account={AZURITE_ACCOUNT}"),
        format!("endpoint={}", azurite.endpoint),
    );
    let blob_fields = [account.as_str(), "container=landing", &blob_endpoint];
    create(
        &ir,
        1,
        "blob",
        "azure-blob",
        &blob_fields,
        &["--secret-stdin", "account_key"],
        Some(AZURITE_KEY),
    )
    .await
    .unwrap();
    for (via, name) in [(2, "lake"), (2, "blob")] {
        let tested = shir_on(&ir, via, &["linked-service", "test", name], None)
            .await
            .unwrap();
        assert!(tested.contains("listed"), "{name}: {tested}");
    }
    let shown = shir_on(&ir, 1, &["linked-service", "show", "lake"], None)
        .await
        .unwrap();
    assert!(
        shown.contains("***") && !shown.contains(&s3.secret_access_key),
        "{shown}"
    );
    steps.step("linked services made and tested");

    // Share → S3, the worker killed while its upload waits to publish: the job ends with
    // one complete copy, published by the next attempt.
    let held = submit(&ir, "hold-up", "share:/in/", "lake:/archive/in/").await;
    let node = common::eventually("the held job to run", Duration::from_secs(30), || async {
        let j = job_json(&ir, 0, &["job", "show", &held, "--json"]).await;
        match (j["state"].as_str(), j["node"].as_str()) {
            (Some("Running"), Some(node)) if !node.is_empty() => Ok(node.to_string()),
            _ => Err(j.to_string()),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(HOLD_MS / 3)).await;
    let i = ir.nodes.iter().position(|n| n.name == node).expect("the node runs");
    ir.kill(i).await.expect("the worker is killed");
    let j = wait_end(&ir, (i + 1) % 3, &held).await;
    assert_eq!(j["state"], "Succeeded", "{j}");
    assert!(j["attempt"].as_u64().unwrap() >= 2, "{j}");
    ir.start(i).await.expect("the node restarts");
    let objects = python(&format!(
        r#"{}
import hashlib
for o in s3.list_objects_v2(Bucket="raw", Prefix="archive/").get("Contents", []):
    body = s3.get_object(Bucket="raw", Key=o["Key"])["Body"].read()
    print(o["Key"], o["Size"], hashlib.sha256(body).hexdigest()[:12])
"#,
        s3.boto3()
    ))
    .unwrap();
    assert_eq!(
        objects, "archive/in/a.txt 6 5891b5b522d5\narchive/in/sub/b.bin 300000 08f166476de1",
        "exactly one copy of each file"
    );
    steps.step("share -> s3 through a worker kill");

    // S3 → Azure Blob → share, each read back.
    let id = submit(&ir, "to-blob", "lake:/archive/", "blob:/copied/").await;
    assert_eq!(wait_end(&ir, 0, &id).await["state"], "Succeeded");
    let blobs = python(&format!(
        "{}\nprint(sorted((b.name, b.size) for b in container.list_blobs()))",
        azurite.sdk("landing")
    ))
    .unwrap();
    assert_eq!(blobs, "[('copied/in/a.txt', 6), ('copied/in/sub/b.bin', 300000)]");
    let id = submit(&ir, "back", "blob:/copied/in/", "share:/restored/").await;
    let j = wait_end(&ir, 0, &id).await;
    assert_eq!(j["state"], "Succeeded", "{j}");
    assert_eq!(
        std::fs::read(share.join("restored/sub/b.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read_to_string(share.join("restored/a.txt")).unwrap(),
        "hello\n"
    );

    // A share's CSV to Parquet on S3 (the format from the extension), read by pyarrow.
    std::fs::write(share.join("orders.csv"), "id,amount\n1,2.5\n2,4.0\n").unwrap();
    let j = job_json(
        &ir,
        0,
        &[
            "job",
            "submit",
            "--source",
            "share:/orders.csv",
            "--sink",
            "lake:/tables/orders.parquet",
            "--json",
        ],
    )
    .await;
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(wait_end(&ir, 0, &id).await["state"], "Succeeded");
    if python_with("pyarrow").is_some() {
        let read = python(&format!(
        "{}\nimport io, pyarrow.parquet as pq\nt = pq.read_table(io.BytesIO(s3.get_object(Bucket=\"raw\", Key=\"tables/orders.parquet\")[\"Body\"].read()))\nprint(t.to_pylist())",
        s3.boto3()
    ))
    .unwrap();
        assert_eq!(read, "[{'id': 1, 'amount': 2.5}, {'id': 2, 'amount': 4.0}]");
    }

    // A glob that matches nothing fails the job with one line naming it.
    let id = submit(&ir, "nothing", "lake:/nothing/*.bin", "share:/none/").await;
    let j = wait_end(&ir, 0, &id).await;
    assert_eq!(j["state"], "Failed", "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("lake:nothing/*.bin: no object matches"),
        "{j}"
    );
    steps.step("s3 -> azure -> share");

    // The secrets are in no node's log and nowhere in a data directory.
    ir.stop_all().await;
    for secret in [s3.secret_access_key.as_str(), AZURITE_KEY] {
        let found = common::files_containing(tmp.path(), secret.as_bytes());
        assert!(found.is_empty(), "a secret is in {found:?}");
    }
}
