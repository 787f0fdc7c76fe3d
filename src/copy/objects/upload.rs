//! Staged objects: one multipart upload per object, its parts sent during the copy, the
//! upload completed at publish and aborted at discard.
//!
//! Parts are `PART_BYTES` each (every store takes parts of that size: S3 wants at least
//! 5 MiB for all but the last, Azure's blocks may be up to 4000 MiB), `PARTS_IN_FLIGHT` of
//! them at a time, so a copy holds at most `(PARTS_IN_FLIGHT + 1) × PART_BYTES` whatever the
//! object's size. An upload whose copy stops without publishing (an error, a cancel, a
//! stall: its future dropped) is aborted in the background. One of a worker that died is
//! left to the store: S3 keeps its parts until a lifecycle rule
//! (`AbortIncompleteMultipartUpload`) removes them, Azure drops uncommitted blocks after a
//! week, GCS keeps them until aborted.

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, MultipartUpload, PutMultipartOptions, PutPayload};
use tokio::task::JoinSet;

use super::{Bucket, store_error};
use crate::copy::{CopyError, IfExists, Published, StagedOutput};

/// The size of each part but the last.
pub(super) const PART_BYTES: usize = 16 << 20;

/// Parts sent at once per upload.
const PARTS_IN_FLIGHT: usize = 4;

/// Uploads completed at once at publish.
const COMPLETES_IN_FLIGHT: usize = 8;

/// The user metadata that names the job whose output an object is, so that `--if-exists
/// fail|skip` tell a retry's own earlier output from an object that was there before.
/// Lowercase letters only: Azure's metadata names must be identifiers, and some S3 servers
/// (moto, behind WSGI) cannot sign a header with `_` in its name.
pub(super) const JOB_META: &str = "shirjob";

/// The source file's modification time, kept as metadata (seconds since the epoch, with
/// nanoseconds): the store's own last-modified time is when the upload completed.
pub(super) const MTIME_META: &str = "shirmtime";

/// One object being uploaded.
pub(super) struct Upload {
    upload: Option<Box<dyn MultipartUpload>>,
    pending: BytesMut,
    in_flight: JoinSet<object_store::Result<()>>,
    parts: usize,
    pub bytes: u64,
    pub key: Key,
    pub shown: String,
}

impl Upload {
    /// Starts the upload of `key`, with `job` and the source's modification time as metadata.
    pub async fn start(
        bucket: &Bucket,
        key: Key,
        job: &str,
        mtime: Option<std::time::SystemTime>,
    ) -> Result<Upload, CopyError> {
        let shown = bucket.show(&key);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata(JOB_META.into()), job.to_owned().into());
        if let Some(at) = mtime.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            let value = format!("{}.{:09}", at.as_secs(), at.subsec_nanos());
            attributes.insert(Attribute::Metadata(MTIME_META.into()), value.into());
        }
        let options = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = bucket
            .store
            .put_multipart_opts(&key, options)
            .await
            .map_err(|e| bucket.error(format!("cannot start the upload of {shown}"), &e))?;
        Ok(Upload {
            upload: Some(upload),
            pending: BytesMut::new(),
            in_flight: JoinSet::new(),
            parts: 0,
            bytes: 0,
            key,
            shown,
        })
    }

    /// Adds bytes; full parts go up as they fill.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), CopyError> {
        self.bytes += chunk.len() as u64;
        self.pending.extend_from_slice(&chunk);
        while self.pending.len() >= PART_BYTES {
            let part = self.pending.split_to(PART_BYTES).freeze();
            self.send(part).await?;
        }
        Ok(())
    }

    async fn send(&mut self, part: Bytes) -> Result<(), CopyError> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_one().await?;
        }
        let upload = self.upload.as_mut().expect("an upload in progress");
        self.in_flight.spawn(upload.put_part(PutPayload::from(part)));
        self.parts += 1;
        Ok(())
    }

    async fn wait_one(&mut self) -> Result<(), CopyError> {
        match self.in_flight.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(store_error(format!("cannot upload {}", self.shown), &e)),
            Some(Err(e)) => Err(CopyError::transient(format!(
                "the upload of {} stopped: {e}",
                self.shown
            ))),
        }
    }

    /// Sends the last part (an empty object gets one empty part: a multipart upload needs
    /// one) and waits for every part to be stored. The object is still not visible.
    pub async fn finish_parts(&mut self) -> Result<(), CopyError> {
        if !self.pending.is_empty() || self.parts == 0 {
            let last = std::mem::take(&mut self.pending).freeze();
            self.send(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.wait_one().await?;
        }
        Ok(())
    }

    /// Makes the object visible.
    async fn complete(mut self) -> Result<(), CopyError> {
        let mut upload = self.upload.take().expect("an upload in progress");
        upload
            .complete()
            .await
            .map(|_| ())
            .map_err(|e| store_error(format!("cannot publish {}", self.shown), &e))
    }

    async fn abort(mut self) {
        self.in_flight.abort_all();
        if let Some(mut upload) = self.upload.take()
            && let Err(e) = upload.abort().await
        {
            tracing::warn!(object = %self.shown, error = %super::store::describe(&e), "could not abort an upload; the store keeps its parts until its own clean-up");
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Neither completed nor aborted: the copy stopped. Abort it, in the background.
        if let Some(mut upload) = self.upload.take() {
            self.in_flight.abort_all();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = upload.abort().await;
                });
            }
        }
    }
}

/// The uploads of one attempt, every part stored, none completed.
pub(super) struct StagedUploads {
    pub bucket: Bucket,
    pub uploads: Vec<Upload>,
    pub job: String,
    pub if_exists: IfExists,
}

/// Whose the object at `key` is: `None` if there is none, else whether job `job` wrote it.
async fn existing(bucket: &Bucket, job: &str, key: &Key, shown: &str) -> Result<Option<bool>, CopyError> {
    let options = object_store::GetOptions {
        head: true,
        ..Default::default()
    };
    match bucket.store.get_opts(key, options).await {
        Ok(found) => {
            let ours = found
                .attributes
                .get(&Attribute::Metadata(JOB_META.into()))
                .is_some_and(|v| v.as_ref() == job);
            Ok(Some(ours))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(bucket.error(format!("cannot read {shown}"), &e)),
    }
}

impl StagedUploads {
    async fn publish_all(self) -> Result<Published, CopyError> {
        use futures::StreamExt as _;
        let mut skip = vec![false; self.uploads.len()];
        if self.if_exists != IfExists::Overwrite {
            let mut refused = None;
            // Keys and names apart from the uploads, which may not be shared across an await.
            let targets: Vec<(Key, String)> = self.uploads.iter().map(|u| (u.key.clone(), u.shown.clone())).collect();
            let (bucket, job) = (self.bucket.clone(), self.job.clone());
            for (i, (key, shown)) in targets.iter().enumerate() {
                match existing(&bucket, &job, key, shown).await {
                    Ok(Some(false)) if self.if_exists == IfExists::Fail => {
                        refused = Some(CopyError::fatal(format!(
                            "{shown} existed before the job and --if-exists fail leaves it as it was"
                        )));
                        break;
                    }
                    Ok(Some(false)) => skip[i] = true,
                    Ok(_) => {}
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = refused {
                self.discard_all().await;
                return Err(e);
            }
        }
        let mut published = Published::default();
        let mut keep = Vec::with_capacity(self.uploads.len());
        for (upload, skipped) in self.uploads.into_iter().zip(skip) {
            if skipped {
                published.skipped += 1;
                upload.abort().await;
            } else {
                keep.push(upload);
            }
        }
        // The check above and the completion are two calls: an object that appears between
        // them is replaced (object_store's interface has no conditional multipart upload).
        let mut completions =
            futures::stream::iter(keep.into_iter().map(Upload::complete)).buffer_unordered(COMPLETES_IN_FLIGHT);
        let mut first_error = None;
        while let Some(done) = completions.next().await {
            if let Err(e) = done {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(published),
        }
    }

    async fn discard_all(self) {
        for upload in self.uploads {
            upload.abort().await;
        }
    }
}

impl StagedOutput for StagedUploads {
    fn publish(self: Box<Self>) -> BoxFuture<'static, Result<Published, CopyError>> {
        self.publish_all().boxed()
    }

    fn discard(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.discard_all().boxed()
    }
}
