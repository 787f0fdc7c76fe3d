//! `shir bench --copy`: copy throughput and job latency on a four-node IR, next to the plain
//! tools a user would otherwise run, in the same run: `cp` for a binary file and for a CSV
//! file, `psql -c "\copy … to …"` for a PostgreSQL table to CSV (when `SHIR_TEST_PG` names a
//! server and `psql` is installed), and submit-to-start latency of small jobs on an idle IR.

use std::io::Write as _;
use std::path::Path;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cli::local_ir::LocalIr;
use crate::proto;
use crate::timing::BENCH_JOB_POLL;

/// Copies measured per tool, alternating; the best of them counts (the machine is shared:
/// the best run is the one least disturbed by others). Five, because this machine's disk
/// takes 1 to 3 s for the same 1 GiB write and fsync from one run to the next.
const ROUNDS: usize = 5;

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// A file of `bytes` pseudo-random bytes (not compressible, not all zeroes).
fn write_binary(path: &Path, bytes: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// A CSV file of about `bytes` bytes: an id, a name, an amount and a date per row.
fn write_csv(path: &Path, bytes: u64) -> Result<u64> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(f, "id,name,amount,day")?;
    let (mut written, mut rows) = (0u64, 0u64);
    while written < bytes {
        let line = format!(
            "{rows},customer-{:06},{}.{:02},2026-{:02}-{:02}\n",
            rows % 100_000,
            rows % 9973,
            rows % 100,
            rows % 12 + 1,
            rows % 28 + 1
        );
        written += line.len() as u64;
        f.write_all(line.as_bytes())?;
        rows += 1;
    }
    f.flush()?;
    Ok(rows)
}

/// `cp SRC DST` then `sync DST`: shir's publish makes its output durable, so the plain
/// copy is timed to the same point.
fn time_cp(src: &Path, dst: &Path) -> Result<Duration> {
    let _ = std::fs::remove_file(dst);
    settle()?;
    let started = Instant::now();
    let ok =
        Process::new("cp").arg(src).arg(dst).status()?.success() && Process::new("sync").arg(dst).status()?.success();
    if !ok {
        bail!("cp failed");
    }
    Ok(started.elapsed())
}

/// Submits a job and waits for it to succeed; its wall time and the job.
async fn time_job(ir: &LocalIr, request: proto::JobSubmitRequest) -> Result<(Duration, proto::JobInfo)> {
    let mut admin = ir.admin(0).await?;
    let started = Instant::now();
    let id = admin.job_submit(request).await?.into_inner().id;
    loop {
        let j = admin
            .job_show(proto::JobShowRequest { id: id.clone() })
            .await?
            .into_inner();
        match j.state() {
            proto::JobState::Succeeded => return Ok((started.elapsed(), j)),
            proto::JobState::Failed | proto::JobState::Cancelled => {
                bail!("job {id} {}: {}", j.state().label(), j.error)
            }
            _ => tokio::time::sleep(BENCH_JOB_POLL).await,
        }
    }
}

/// Waits until every dirty page on the machine is written, so that one measurement does not
/// pay for the disk traffic of the one before it (the inputs just written, the previous copy).
fn settle() -> Result<()> {
    if !Process::new("sync").status()?.success() {
        bail!("sync failed");
    }
    Ok(())
}

fn best(times: &[Duration]) -> Duration {
    times.iter().copied().min().unwrap_or_default()
}

async fn file_copy(ir: &LocalIr, share: &Path, file: &str, binary: bool, say: &dyn Fn(&str)) -> Result<Value> {
    let src = share.join("in").join(file);
    let bytes = std::fs::metadata(&src)?.len();
    let (mut cp, mut ours, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        cp.push(time_cp(&src, &share.join("cp-out").join(file))?);
        settle()?;
        let request = proto::JobSubmitRequest {
            source: format!("share:/in/{file}"),
            sink: format!("share:/out/{round}-{file}"),
            binary,
            ..Default::default()
        };
        let (took, job) = time_job(ir, request).await?;
        if let Some(check) = job.check.as_ref().filter(|c| !c.verified) {
            bail!("the copy of {file} was not verified: {check:?}");
        }
        ours.push(took);
        // The attempt itself, from its assignment to its outcome (both stamped by the
        // dispatcher): without the submit, the queue and this benchmark's polling.
        runs.push(Duration::from_millis(
            (job.finished_at_ms - job.started_at_ms).max(1) as u64
        ));
    }
    let (cp, ours, run) = (best(&cp), best(&ours), best(&runs));
    let ratio = mib_per_s(bytes, ours) / mib_per_s(bytes, cp);
    let run_ratio = mib_per_s(bytes, run) / mib_per_s(bytes, cp);
    let label = if binary { "binary" } else { "csv -> csv" };
    say(&format!(
        "  {label:<12} {:>6.0} MiB  shir {:>7.1} MiB/s (attempt alone {:>7.1})   cp {:>7.1} MiB/s   \
         shir/cp {ratio:.2} ({run_ratio:.2})",
        bytes as f64 / 1048576.0,
        mib_per_s(bytes, ours),
        mib_per_s(bytes, run),
        mib_per_s(bytes, cp)
    ));
    Ok(json!({
        "kind": label, "bytes": bytes, "shir_s": ours.as_secs_f64(), "attempt_s": run.as_secs_f64(),
        "cp_s": cp.as_secs_f64(), "shir_mib_s": mib_per_s(bytes, ours), "cp_mib_s": mib_per_s(bytes, cp),
        "ratio_shir_to_cp": ratio, "ratio_attempt_to_cp": run_ratio,
    }))
}

/// CSV → Parquet with inferred column types against the same copy with `--schema text`
/// (what inference costs) and against DuckDB's `COPY (FROM read_csv(…)) TO '….parquet'`,
/// which infers the same types, when python3 has `duckdb`.
async fn csv_to_parquet(ir: &LocalIr, share: &Path, say: &dyn Fn(&str)) -> Result<Value> {
    let src = share.join("in/big.csv");
    let bytes = std::fs::metadata(&src)?.len();
    let duckdb = Process::new("python3")
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success());
    let (mut inferred, mut text, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for (schema, times) in [("infer", &mut inferred), ("text", &mut text)] {
            settle()?;
            let request = proto::JobSubmitRequest {
                source: "share:/in/big.csv".into(),
                sink: format!("share:/out/{round}-{schema}.parquet"),
                schema: schema.into(),
                ..Default::default()
            };
            times.push(time_job(ir, request).await?.0);
        }
        if duckdb {
            let out = share.join(format!("cp-out/{round}-duckdb.parquet"));
            settle()?;
            let started = Instant::now();
            let script = "import sys, duckdb\n\
                          duckdb.sql('SET enable_progress_bar = false')\n\
                          duckdb.sql(f\"COPY (FROM read_csv('{sys.argv[1]}')) TO '{sys.argv[2]}' (FORMAT parquet)\")\n\
                          import os; fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd)\n";
            let ok = Process::new("python3")
                .args(["-c", script])
                .arg(&src)
                .arg(&out)
                .status()?
                .success();
            if !ok {
                bail!("duckdb failed to copy {} to Parquet", src.display());
            }
            theirs.push(started.elapsed());
        }
    }
    let (inferred, text) = (best(&inferred), best(&text));
    let cost = mib_per_s(bytes, inferred) / mib_per_s(bytes, text);
    let mut line = format!(
        "  csv -> parquet {:>4.0} MiB  inferred types {:>6.1} MiB/s   --schema text {:>6.1} MiB/s   inferred/text {cost:.2}",
        bytes as f64 / 1048576.0,
        mib_per_s(bytes, inferred),
        mib_per_s(bytes, text)
    );
    let duckdb = (!theirs.is_empty()).then(|| best(&theirs));
    if let Some(d) = duckdb {
        line += &format!(
            "   duckdb {:>6.1} MiB/s   shir/duckdb {:.2}",
            mib_per_s(bytes, d),
            mib_per_s(bytes, inferred) / mib_per_s(bytes, d)
        );
    } else {
        line += "   (duckdb: python3 has no duckdb module)";
    }
    say(&line);
    Ok(json!({
        "bytes": bytes, "inferred_s": inferred.as_secs_f64(), "text_s": text.as_secs_f64(),
        "ratio_inferred_to_text": cost, "duckdb_s": duckdb.map(|d| d.as_secs_f64()),
        "ratio_shir_to_duckdb": duckdb.map(|d| mib_per_s(bytes, inferred) / mib_per_s(bytes, d)),
    }))
}

/// PostgreSQL table → CSV against `psql -c "\copy … to …"`, on the server `SHIR_TEST_PG` names.
async fn postgres_copy(ir: &LocalIr, share: &Path, rows: u64, say: &dyn Fn(&str)) -> Result<Option<Value>> {
    let Ok(conn) = std::env::var("SHIR_TEST_PG") else {
        say("  postgres -> csv: skipped (SHIR_TEST_PG is not set; see .ci/postgres)");
        return Ok(None);
    };
    let fields: std::collections::BTreeMap<String, String> = conn
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    let psql = |sql: &str| -> Result<Duration> {
        let started = Instant::now();
        let ok = Process::new("psql")
            .arg(&conn)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .status()
            .context("cannot run psql")?
            .success();
        if !ok {
            bail!("psql failed on: {sql}");
        }
        Ok(started.elapsed())
    };
    psql(&format!(
        "DROP TABLE IF EXISTS shir_bench_orders; CREATE TABLE shir_bench_orders AS \
         SELECT g AS id, 'customer-' || (g % 100000) AS name, (g % 9973)::numeric(12,2) / 100 AS amount, \
         DATE '2026-01-01' + (g % 365) AS day, now() AS loaded_at FROM generate_series(1, {rows}) g"
    ))?;
    let create = |name: &str| proto::LinkedServiceCreateRequest {
        name: name.to_string(),
        spec: Some(proto::LinkedServiceSpec {
            r#type: "postgres".into(),
            fields: [
                ("host", fields.get("host")),
                ("port", fields.get("port")),
                ("database", fields.get("dbname")),
                ("user", fields.get("user")),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.clone())))
            .collect(),
            secrets: fields
                .get("password")
                .map(|p| [("password".to_string(), p.clone())].into_iter().collect())
                .unwrap_or_default(),
        }),
        encrypted_credential: String::new(),
    };
    let mut admin = ir.admin(0).await?;
    let _ = admin.linked_service_create(create("warehouse")).await;
    let out = share.join("psql-orders.csv");
    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        theirs.push(psql(&format!(
            "\\copy shir_bench_orders to '{}' with (format csv, header)",
            out.display()
        ))?);
        let request = proto::JobSubmitRequest {
            source: "warehouse:public.shir_bench_orders".into(),
            sink: format!("share:/out/{round}-orders.csv"),
            ..Default::default()
        };
        ours.push(time_job(ir, request).await?.0);
    }
    psql("DROP TABLE shir_bench_orders")?;
    let (theirs, ours) = (best(&theirs), best(&ours));
    let ratio = theirs.as_secs_f64() / ours.as_secs_f64();
    say(&format!(
        "  postgres -> csv {rows} rows  shir {:>6.2} s   psql \\copy {:>6.2} s   shir/psql (speed) {ratio:.2}",
        ours.as_secs_f64(),
        theirs.as_secs_f64()
    ));
    Ok(Some(
        json!({"rows": rows, "shir_s": ours.as_secs_f64(), "psql_s": theirs.as_secs_f64(), "ratio_shir_to_psql": ratio}),
    ))
}

/// Submit-to-start latency of small jobs on an idle IR: from the submit call's commit to the
/// dispatcher's assignment (both times taken by the dispatcher), one job at a time.
async fn latency(ir: &LocalIr, share: &Path, jobs: usize, say: &dyn Fn(&str)) -> Result<Value> {
    std::fs::write(share.join("in/tiny.csv"), "a,b\n1,2\n")?;
    let mut samples = Vec::new();
    for i in 0..jobs {
        let request = proto::JobSubmitRequest {
            source: "share:/in/tiny.csv".into(),
            sink: format!("share:/lat/{i}.csv"),
            binary: true,
            ..Default::default()
        };
        let (_, j) = time_job(ir, request).await?;
        samples.push((j.started_at_ms - j.submitted_at_ms) as f64);
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    let (p50, p99) = (pct(0.5), pct(0.99));
    say(&format!(
        "  submit-to-start, {jobs} jobs one at a time: p50 {p50:.0} ms, p99 {p99:.0} ms"
    ));
    Ok(json!({"jobs": jobs, "p50_ms": p50, "p99_ms": p99}))
}

pub async fn run(ir: &mut LocalIr, work: &Path, size_mib: u64, say: &dyn Fn(&str)) -> Result<Value> {
    std::fs::create_dir_all(ir.root())?;
    ir.form("bench-ir").await.context("forming the IR")?;
    let share = work.join("share");
    for dir in ["in", "out", "cp-out", "lat"] {
        std::fs::create_dir_all(share.join(dir))?;
    }
    ir.create_filesystem_service("share", &share).await?;
    let bytes = size_mib << 20;
    say(&format!(
        "\nwriting a {size_mib} MiB binary file and a {size_mib} MiB CSV file"
    ));
    write_binary(&share.join("in/big.bin"), bytes)?;
    let csv_rows = write_csv(&share.join("in/big.csv"), bytes)?;
    settle()?;
    say(&format!(
        "\ncopies (best of {ROUNDS}; cp timed with sync, as shir's output is made durable)"
    ));
    let binary = file_copy(ir, &share, "big.bin", true, say).await?;
    let csv = file_copy(ir, &share, "big.csv", false, say).await?;
    let parquet = csv_to_parquet(ir, &share, say).await?;
    let postgres = postgres_copy(ir, &share, csv_rows.min(5_000_000), say).await?;
    say("\njob latency");
    let latency = latency(ir, &share, 200, say).await?;
    Ok(json!({"binary": binary, "csv": csv, "csv_to_parquet": parquet, "postgres": postgres, "latency": latency}))
}
