//! CSV, JSON Lines and Parquet tables on object stores, through a local spool: a source's
//! objects are downloaded into a temporary directory and read there by the share's own
//! readers; a sink's table is written there by the share's own writer and then uploaded as
//! one staged multipart upload, completed at publish. So a table on a bucket is read and
//! written by exactly the rules (strict CSV, type inference, encodings, line numbers in
//! errors) and the code of a table on a share, and memory stays bounded; the cost is one
//! local copy of the data, in the node's temporary directory (`TMPDIR`), which must have room
//! for it. Messages name the objects (`lake:raw/a.csv line 7 ...`), not the spool.

use futures::StreamExt as _;
use object_store::ObjectStoreExt as _;
use object_store::path::Path as Key;
use tokio::io::AsyncWriteExt as _;

use super::binary::{file_chunks, path_of};
use super::keys;
use super::upload::{StagedUploads, Upload};
use super::{Bucket, store_error};
use crate::connectors::{ServiceSpec, ServiceType};
use crate::copy::files::{self, io_error};
use crate::copy::{AttemptId, Batches, CopyError, Counters, Endpoint, IfExists, Location, Staged};

fn spool() -> Result<tempfile::TempDir, CopyError> {
    tempfile::Builder::new()
        .prefix("shir-spool-")
        .tempdir()
        .map_err(|e| io_error("cannot make a spool directory in the node's temporary directory", &e))
}

/// `endpoint` as a share rooted at `dir`, with the same name, path and format.
fn spooled(endpoint: &Endpoint, dir: &std::path::Path, path: &str) -> Endpoint {
    Endpoint {
        service: ServiceSpec::new(ServiceType::Filesystem).with("root", dir.to_string_lossy()),
        location: Location::Path(path.to_owned()),
        if_exists: IfExists::Overwrite,
        proxy: None,
        ..endpoint.clone()
    }
}

/// Downloads what `source` names into a spool and reads it as a share's table.
pub async fn read_table(
    source: &Endpoint,
    counters: &Counters,
    infer: bool,
    rejects: Option<files::Rejects>,
) -> Result<Batches, CopyError> {
    let bucket = Bucket::of(source)?;
    let text = path_of(source)?;
    let (_, objects) = keys::list(&bucket, &text).await?;
    let dir = spool()?;
    for object in &objects {
        // The spool mirrors the keys, so the share reader's listing of `text` finds them.
        let local = dir.path().join(object.key.as_ref());
        let shown = &object.shown;
        let parent = local.parent().expect("a key has a name");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_error(format!("cannot spool {shown}"), &e))?;
        let got = bucket
            .store
            .get(&object.key)
            .await
            .map_err(|e| bucket.error(format!("cannot read {shown}"), &e))?;
        let mut chunks = got.into_stream();
        let file = tokio::fs::File::create(&local)
            .await
            .map_err(|e| io_error(format!("cannot spool {shown}"), &e))?;
        let mut file = tokio::io::BufWriter::with_capacity(4 << 20, file);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| store_error(format!("cannot read {shown}"), &e))?;
            // Progress while downloading, so a long download is not taken for a stall.
            counters.add(0, chunk.len() as u64, 0);
            file.write_all(&chunk)
                .await
                .map_err(|e| io_error(format!("cannot spool {shown}"), &e))?;
        }
        file.flush()
            .await
            .map_err(|e| io_error(format!("cannot spool {shown}"), &e))?;
    }
    let batches = files::read_table(&spooled(source, dir.path(), &text), counters, infer, rejects).await?;
    // The spool lives as long as its batches are read.
    Ok(batches
        .map(move |batch| {
            let _keep = &dir;
            batch
        })
        .boxed())
}

/// Writes the table into a spool as a share's sink would, then uploads it, staged.
pub async fn write_table(
    attempt: &AttemptId,
    sink: &Endpoint,
    batches: Batches,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    let bucket = Bucket::of(sink)?;
    let text = path_of(sink)?;
    crate::job_spec::paths::check_sink_file(&sink.service_name, &text).map_err(CopyError::fatal)?;
    let key = Key::from(text.trim_start_matches('/'));
    let shown = bucket.show(&key);
    bucket.check_writable(&shown).await?;
    let dir = spool()?;
    let written = files::write_table(attempt, &spooled(sink, dir.path(), &text), batches, counters).await?;
    let (rows, bytes, files_written, check) = (written.rows, written.bytes, written.files, written.check.clone());
    // Within the spool: the staging file becomes the spooled table.
    written.publish().await?;
    let local = dir.path().join(&text);
    let file = tokio::fs::File::open(&local)
        .await
        .map_err(|e| io_error(format!("cannot read the spooled table for {shown}"), &e))?;
    let mut upload = Upload::start(&bucket, key, &attempt.job_id, None).await?;
    let mut chunks = file_chunks(file, shown.clone());
    let mut sent = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        upload.write(chunk).await?;
    }
    upload.finish_parts().await?;
    if sent != bytes {
        return Err(CopyError::transient(format!(
            "consistency check failed for {shown}: wrote {bytes} bytes, uploaded {sent}"
        )));
    }
    let staged = StagedUploads {
        bucket,
        uploads: vec![upload],
        job: attempt.job_id.clone(),
        if_exists: sink.if_exists,
    };
    Ok(Staged::new(rows, bytes, files_written, check, Box::new(staged)))
}
