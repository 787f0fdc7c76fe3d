//! Binary copies between a share and real object-store servers (s3s-fs, which checks S3
//! signatures, and Azurite), through the data plane's entry point; what was written is read
//! back with boto3 and Microsoft's Python SDK. The servers are started per test from the
//! machine's installs (`crate::testing::object_stores`); without them the tests skip,
//! except under `CI=true`.

use std::fs::{self, FileTimes};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::connectors::{self, ServiceSpec};
use crate::copy::{AttemptId, CopyError, Counters, Endpoint, Format, IfExists, Location, Staged, stage};
use crate::testing::object_stores::{ThrowawayAzurite, ThrowawayS3, python};
use crate::testing::{noise, python_with};

fn share(root: &Path, path: &str) -> Endpoint {
    endpoint(
        "share",
        ServiceSpec::new(connectors::ServiceType::Filesystem).with("root", root.to_str().unwrap()),
        path,
    )
}

fn endpoint(name: &str, service: ServiceSpec, path: &str) -> Endpoint {
    Endpoint {
        service_name: name.into(),
        service,
        location: Location::Path(path.into()),
        format: Format::Binary,
        if_exists: IfExists::Overwrite,
        proxy: None,
    }
}

fn attempt(n: u32) -> AttemptId {
    AttemptId {
        job_id: "job-7".into(),
        attempt: n,
    }
}

async fn copy(n: u32, from: &Endpoint, to: &Endpoint) -> Result<Staged, CopyError> {
    stage(&attempt(n), from, to, &Counters::default()).await
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A tree of files with set modification times: a nested one, an empty one, and one of
/// 40 MiB (three parts).
fn tree(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![
        ("in/a.txt", b"hello\n".to_vec()),
        ("in/sub/b.bin", noise(100_000, 2)),
        ("in/empty", Vec::new()),
        ("in/big.bin", noise(40 << 20, 3)),
    ];
    for (i, (rel, content)) in files.iter().enumerate() {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000 + i as u64 * 3600, 123_456_789);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(FileTimes::new().set_modified(at))
            .unwrap();
    }
    files
}

/// Key → (size, sha256) of every object under `prefix`, as boto3 lists and reads them.
fn boto3_objects(s3: &ThrowawayS3, bucket: &str, prefix: &str) -> String {
    python(&format!(
        r#"{}
import hashlib
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="{bucket}", Prefix="{prefix}")
for page in pages:
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket="{bucket}", Key=o["Key"])["Body"].read()
        print(o["Key"], o["Size"], hashlib.sha256(body).hexdigest())
"#,
        s3.boto3()
    ))
    .unwrap()
}

fn expected_listing(prefix: &str, files: &[(&str, Vec<u8>)]) -> String {
    let mut lines: Vec<String> = files
        .iter()
        .map(|(rel, content)| {
            format!(
                "{prefix}{} {} {}",
                rel.trim_start_matches("in/"),
                content.len(),
                sha256(content)
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copies_to_s3_and_back_keep_keys_sizes_times_and_bytes() {
    let Some(s3) = ThrowawayS3::start() else { return };
    s3.create_bucket("raw");
    let lake = |path: &str| endpoint("lake", s3.spec("raw"), path);
    let dir = tempfile::tempdir().unwrap();
    let files = tree(dir.path());

    let staged = copy(1, &share(dir.path(), "in/"), &lake("archive/")).await.unwrap();
    assert_eq!(boto3_objects(&s3, "raw", ""), "", "nothing is visible before publish");
    assert!(staged.check.verified);
    let total: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    assert_eq!((staged.bytes, staged.files), (total, 4));
    staged.publish().await.unwrap();
    assert_eq!(
        boto3_objects(&s3, "raw", "archive/"),
        expected_listing("archive/", &files)
    );
    assert_eq!(s3.unfinished_upload_parts(), 0);

    // Publishing again (a retry after a lost report) leaves the same objects.
    copy(2, &share(dir.path(), "in/"), &lake("archive/"))
        .await
        .unwrap()
        .publish()
        .await
        .unwrap();
    assert_eq!(
        boto3_objects(&s3, "raw", "archive/"),
        expected_listing("archive/", &files)
    );

    // And back to a share: same layout, bytes and modification times.
    let back = copy(3, &lake("archive/"), &share(dir.path(), "restored/"))
        .await
        .unwrap();
    assert_eq!(back.check.source_checksum, back.check.sink_checksum);
    back.publish().await.unwrap();
    for (rel, content) in &files {
        let from = dir.path().join(rel);
        let to = dir.path().join("restored").join(rel.trim_start_matches("in/"));
        assert!(fs::read(&to).unwrap() == *content, "{rel}");
        assert_eq!(
            fs::metadata(&to).unwrap().modified().unwrap(),
            fs::metadata(&from).unwrap().modified().unwrap(),
            "{rel}: mtime"
        );
    }

    // One file to one key, and a glob.
    copy(4, &share(dir.path(), "in/a.txt"), &lake("single/renamed.txt"))
        .await
        .unwrap()
        .publish()
        .await
        .unwrap();
    let one = boto3_objects(&s3, "raw", "single/");
    assert!(one.starts_with("single/renamed.txt 6 "), "{one}");
    let globbed = copy(5, &lake("archive/**/*.bin"), &share(dir.path(), "globbed/"))
        .await
        .unwrap();
    assert_eq!(globbed.files, 2);
    globbed.discard().await;
    assert!(!dir.path().join("globbed").exists(), "a discard leaves nothing");

    // A discarded upload leaves no object and no unfinished upload.
    let dropped = copy(6, &share(dir.path(), "in/"), &lake("dropped/")).await.unwrap();
    dropped.discard().await;
    assert_eq!(boto3_objects(&s3, "raw", "dropped/"), "");
    assert_eq!(s3.unfinished_upload_parts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_objects_are_kept_under_if_exists_fail_and_skip() {
    let Some(s3) = ThrowawayS3::start() else { return };
    s3.create_bucket("raw");
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("in")).unwrap();
    fs::write(dir.path().join("in/a.txt"), "ours").unwrap();
    fs::write(dir.path().join("in/b.txt"), "ours too").unwrap();
    python(&format!(
        "{}\ns3.put_object(Bucket=\"raw\", Key=\"out/a.txt\", Body=b\"theirs\")",
        s3.boto3()
    ))
    .unwrap();
    let sink = |rule| Endpoint {
        if_exists: rule,
        ..endpoint("lake", s3.spec("raw"), "out/")
    };
    let failed = copy(1, &share(dir.path(), "in/"), &sink(IfExists::Fail))
        .await
        .unwrap()
        .publish()
        .await
        .unwrap_err();
    assert!(!failed.retryable);
    assert!(
        failed.message.contains("lake:out/a.txt existed before the job"),
        "{}",
        failed.message
    );
    assert_eq!(
        boto3_objects(&s3, "raw", "out/").lines().count(),
        1,
        "nothing published"
    );

    let skipped = copy(2, &share(dir.path(), "in/"), &sink(IfExists::Skip))
        .await
        .unwrap()
        .publish()
        .await
        .unwrap();
    assert_eq!(skipped.skipped, 1);
    let got = python(&format!(
        "{}\nprint(s3.get_object(Bucket=\"raw\", Key=\"out/a.txt\")[\"Body\"].read().decode(), s3.get_object(Bucket=\"raw\", Key=\"out/b.txt\")[\"Body\"].read().decode())",
        s3.boto3()
    ))
    .unwrap();
    assert_eq!(got, "theirs ours too");
    // The job's own output, published by an earlier attempt, is replaced on a retry.
    python(&format!(
        "{}\ns3.delete_object(Bucket=\"raw\", Key=\"out/a.txt\")",
        s3.boto3()
    ))
    .unwrap();
    let retried = copy(3, &share(dir.path(), "in/"), &sink(IfExists::Fail))
        .await
        .unwrap()
        .publish()
        .await
        .unwrap();
    assert_eq!(retried.skipped, 0);
    assert_eq!(boto3_objects(&s3, "raw", "out/").lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blob_copies_are_read_back_by_the_azure_sdk() {
    let Some(azurite) = ThrowawayAzurite::start() else {
        return;
    };
    azurite.create_container("landing");
    let blob = |path: &str| endpoint("blob", azurite.spec("landing"), path);
    let dir = tempfile::tempdir().unwrap();
    let files = tree(dir.path());

    let staged = copy(1, &share(dir.path(), "in/"), &blob("archive/in/")).await.unwrap();
    let listed = python(&format!(
        "{}\nprint(len(list(container.list_blobs())))",
        azurite.sdk("landing")
    ))
    .unwrap();
    assert_eq!(listed, "0", "nothing is visible before publish");
    staged.publish().await.unwrap();
    let read = python(&format!(
        r#"{}
import hashlib
for b in container.list_blobs(name_starts_with="archive/in/", include=["metadata"]):
    body = container.download_blob(b.name).readall()
    print(b.name, b.size, hashlib.sha256(body).hexdigest(), "shirmtime" in (b.metadata or {{}}))
"#,
        azurite.sdk("landing")
    ))
    .unwrap();
    let mut want: Vec<String> = expected_listing("archive/in/", &files)
        .lines()
        .map(|l| format!("{l} True"))
        .collect();
    want.sort();
    assert_eq!(read, want.join("\n"));

    let back = copy(2, &blob("archive/in/"), &share(dir.path(), "restored/"))
        .await
        .unwrap();
    assert!(back.check.verified);
    back.publish().await.unwrap();
    for (rel, content) in &files {
        let to = dir.path().join("restored").join(rel.trim_start_matches("in/"));
        assert!(fs::read(&to).unwrap() == *content, "{rel}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_one_line_that_names_the_store_and_shows_no_secret() {
    let Some(s3) = ThrowawayS3::start() else { return };
    s3.create_bucket("raw");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.txt"), "x").unwrap();
    let fatal = |e: CopyError| {
        assert!(!e.retryable, "transient: {}", e.message);
        assert!(!e.message.contains('\n'), "{}", e.message);
        assert!(!e.message.contains(&s3.secret_access_key), "{}", e.message);
        e.message
    };

    let wrong = s3
        .spec("raw")
        .with_secret("secret_access_key", "wrong-secret-never-shown");
    let e = fatal(
        copy(1, &share(dir.path(), "a.txt"), &endpoint("lake", wrong.clone(), "x/"))
            .await
            .err()
            .expect("the copy fails"),
    );
    assert!(e.contains("lake:x/") && e.contains("SignatureDoesNotMatch"), "{e}");
    assert!(!e.contains("wrong-secret-never-shown"), "{e}");

    let e = fatal(
        copy(1, &share(dir.path(), "a.txt"), &endpoint("lake", s3.spec("nope"), "x/"))
            .await
            .err()
            .expect("the copy fails"),
    );
    assert!(e.contains("NoSuchBucket"), "{e}");

    let e = fatal(
        copy(
            1,
            &endpoint("lake", s3.spec("raw"), "nothing/*.csv"),
            &share(dir.path(), "out/"),
        )
        .await
        .err()
        .expect("the copy fails"),
    );
    assert!(e.contains("lake:nothing/*.csv: no object matches"), "{e}");

    // The connection test lists the bucket, or says why not.
    let ok = connectors::probe(&s3.spec("raw"), None).await.unwrap();
    assert!(ok.starts_with("listed bucket raw at http://127.0.0.1:"), "{ok}");
    let refused = connectors::probe(&wrong, None).await.unwrap_err().to_string();
    assert!(refused.contains("SignatureDoesNotMatch"), "{refused}");
    assert!(!refused.contains("wrong-secret-never-shown"), "{refused}");
    let missing = connectors::probe(&s3.spec("nope"), None).await.unwrap_err().to_string();
    assert!(missing.contains("NoSuchBucket"), "{missing}");
}

fn with_format(endpoint: Endpoint, format: Format) -> Endpoint {
    Endpoint { format, ..endpoint }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_s3_are_read_and_written_by_the_rules_of_a_share() {
    let Some(s3) = ThrowawayS3::start() else { return };
    s3.create_bucket("raw");
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("in")).unwrap();
    let mut csv = String::from("id,amount,day\n");
    for i in 0..5000 {
        csv.push_str(&format!("{i},{}.25,2026-12-{:02}\n", i * 3, i % 28 + 1));
    }
    fs::write(dir.path().join("in/orders.csv"), &csv).unwrap();
    let csv_format = Format::Csv(Default::default());
    let lake = |path: &str, format: Format| with_format(endpoint("lake", s3.spec("raw"), path), format);
    let share_at = |path: &str, format: Format| with_format(share(dir.path(), path), format);

    // A share's CSV to Parquet on S3, types inferred; pyarrow reads what boto3 downloads.
    let staged = copy(
        1,
        &share_at("in/orders.csv", csv_format.clone()),
        &lake("lake/orders.parquet", Format::Parquet),
    )
    .await
    .unwrap();
    assert_eq!(boto3_objects(&s3, "raw", ""), "", "nothing is visible before publish");
    assert_eq!(staged.rows, 5000);
    staged.publish().await.unwrap();
    if python_with("pyarrow").is_some() {
        let read = python(&format!(
            r#"{}
import io, pyarrow.parquet as pq
t = pq.read_table(io.BytesIO(s3.get_object(Bucket="raw", Key="lake/orders.parquet")["Body"].read()))
print(t.num_rows, [str(f.type) for f in t.schema], t.column("amount")[1].as_py())
"#,
            s3.boto3()
        ))
        .unwrap();
        assert_eq!(read, "5000 ['int64', 'double', 'date32[day]'] 3.25");
    }

    // And back: Parquet on S3 to a CSV on the share, the same values.
    copy(
        2,
        &lake("lake/orders.parquet", Format::Parquet),
        &share_at("back/orders.csv", csv_format.clone()),
    )
    .await
    .unwrap()
    .publish()
    .await
    .unwrap();
    assert_eq!(fs::read_to_string(dir.path().join("back/orders.csv")).unwrap(), csv);

    // A malformed CSV on S3 fails with its object and line, as on a share.
    python(&format!(
        "{}\ns3.put_object(Bucket=\"raw\", Key=\"bad/x.csv\", Body=b\"a,b\\n1,2\\n3\\n\")",
        s3.boto3()
    ))
    .unwrap();
    let e = copy(
        3,
        &lake("bad/*.csv", csv_format),
        &share_at("out/x.parquet", Format::Parquet),
    )
    .await
    .err()
    .expect("a short row fails the copy");
    assert!(
        !e.retryable && e.message.contains("lake:bad/x.csv line 3"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_call_goes_through_the_proxy_with_its_credentials() {
    use crate::connectors::ProxyConfig;
    use crate::testing::object_stores::ThrowawayProxy;
    let Some(s3) = ThrowawayS3::start() else { return };
    let Some(proxy) = ThrowawayProxy::start() else { return };
    s3.create_bucket("raw");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.txt"), "through the proxy").unwrap();
    let config = |port: u16, password: &str| ProxyConfig {
        address: "127.0.0.1".into(),
        port,
        user: Some(proxy.user.clone()),
        password: Some(password.to_owned().into()),
    };
    let lake = |proxy: ProxyConfig| Endpoint {
        proxy: Some(proxy),
        ..endpoint("lake", s3.spec("raw"), "via/")
    };
    copy(
        1,
        &share(dir.path(), "a.txt"),
        &lake(config(proxy.port, &proxy.password)),
    )
    .await
    .unwrap_or_else(|e| panic!("{}; the proxy logged: {}", e.message, proxy.logged()))
    .publish()
    .await
    .unwrap();
    assert!(boto3_objects(&s3, "raw", "via/").starts_with("via/a.txt 17 "));
    let logged = proxy.logged();
    let port = s3.endpoint.rsplit(':').next().unwrap();
    for request in ["GET http://127.0.0.1", "POST http://127.0.0.1", "PUT http://127.0.0.1"] {
        assert!(
            logged
                .lines()
                .any(|l| l.contains(request) && l.contains(&format!(":{port}/raw"))),
            "the proxy carried no {request}: {logged}"
        );
    }
    assert!(!logged.contains(&s3.secret_access_key));

    // Wrong proxy credentials, and a proxy that is not there: one line that says so, quickly.
    let e = copy(
        2,
        &share(dir.path(), "a.txt"),
        &lake(config(proxy.port, "wrong-proxy-password")),
    )
    .await
    .err()
    .expect("the proxy refuses");
    // tinyproxy answers wrong credentials with 401 and its own page, where RFC 9110 has 407.
    assert!(e.message.contains("401") || e.message.contains("407"), "{}", e.message);
    assert!(!e.message.contains('\n'), "{}", e.message);
    assert!(!e.message.contains("wrong-proxy-password"), "{}", e.message);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let e = copy(3, &share(dir.path(), "a.txt"), &lake(config(closed, &proxy.password)))
        .await
        .err()
        .expect("no proxy there");
    assert!(
        e.message.contains(&format!("through proxy 127.0.0.1:{closed}")),
        "{}",
        e.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
