//! Binary copies with an object store on one side or both: files and objects as they are,
//! keys and sizes kept, the layout below what the source names kept under the sink, a
//! file's modification time kept as the object's `shirmtime` metadata (and given back to
//! a file downloaded from such an object; otherwise a downloaded file gets the object's
//! last-modified time).
//!
//! Each file or object streams through in chunks; the source is hashed (XXH3-128, as a
//! share's binary copy) as it is read. A share sink's staging files are read back and
//! hashed too, so the check compares what was read with what was written. An object sink
//! cannot be read back before publish (an upload is invisible until completed): its check
//! is the byte count each object's parts came to, and the store's own per-part integrity
//! check (`Content-MD5` and the like, which object_store sends) for the bytes on the wire.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use object_store::{Attribute, ObjectStoreExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::keys::{self, SinkKeys, SourceObject};
use super::upload::{MTIME_META, StagedUploads, Upload};
use super::{Bucket, store_error};
use crate::copy::files::{Checksum, FileSink, ListedFile, blocking, io_error, list_binary};
use crate::copy::{AttemptId, Consistency, CopyError, Counters, Endpoint, Location, Staged, StagedOutput};

/// Bytes per read from a file.
const READ_CHUNK: usize = 8 << 20;

/// Bytes a downloaded file's writer gathers before a write.
const WRITE_BUFFER: usize = 4 << 20;

pub async fn copy_binary(
    attempt: &AttemptId,
    source: &Endpoint,
    sink: &Endpoint,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    let (single, items) = Items::list(source).await?;
    let mut out = Out::open(attempt, sink, single).await?;
    let mut source_sum = Checksum::new();
    let (mut total, mut files) = (0u64, 0u64);
    for item in &items.list {
        let (mut chunks, modified) = items.open(item).await?;
        let modified = modified.or(Some(item.modified));
        let mut writer = out.create(&item.rel, modified).await?;
        let mut read = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            source_sum.update(&chunk);
            read += chunk.len() as u64;
            counters.add(0, chunk.len() as u64, 0);
            writer.write(chunk).await?;
        }
        if read != item.size {
            return Err(CopyError::transient(format!(
                "{} changed while it was being copied ({} bytes listed, {read} read)",
                item.shown, item.size
            )));
        }
        out.finish(writer, modified).await?;
        total += read;
        files += 1;
        counters.add(0, 0, 1);
    }
    let source_checksum = source_sum.finish();
    let (sink_checksum, sink_bytes, output) = out.into_output().await?;
    let verified = sink_bytes == total && sink_checksum.as_ref().is_none_or(|sum| *sum == source_checksum);
    let check = Consistency {
        source_checksum: Some(source_checksum.clone()),
        sink_checksum: sink_checksum.clone(),
        verified,
        ..Consistency::default()
    };
    if !verified {
        output.discard().await;
        return Err(CopyError::transient(format!(
            "consistency check failed for {}: read {total} bytes ({source_checksum}), wrote {sink_bytes} bytes ({})",
            items.shown,
            sink_checksum.as_deref().unwrap_or("not read back")
        )));
    }
    Ok(Staged::new(0, total, files, check, output))
}

/// One file or object to copy.
struct Item {
    rel: Vec<String>,
    size: u64,
    modified: SystemTime,
    shown: String,
    from: From,
}

enum From {
    File(std::path::PathBuf),
    Object(object_store::path::Path),
}

/// What the source names.
struct Items {
    bucket: Option<Bucket>,
    list: Vec<Item>,
    /// The source as given, for messages about the whole copy.
    shown: String,
}

impl Items {
    async fn list(source: &Endpoint) -> Result<(bool, Items), CopyError> {
        let text = path_of(source)?;
        let shown = format!("{}:{text}", source.service_name);
        if source.service.kind.is_object_store() {
            let bucket = Bucket::of(source)?;
            let (single, objects) = keys::list(&bucket, &text).await?;
            let list = objects.into_iter().map(Item::object).collect();
            return Ok((
                single,
                Items {
                    bucket: Some(bucket),
                    list,
                    shown,
                },
            ));
        }
        let source = source.clone();
        let (single, listed) = blocking(move || list_binary(&source)).await?;
        let list = listed.into_iter().map(Item::file).collect();
        Ok((
            single,
            Items {
                bucket: None,
                list,
                shown,
            },
        ))
    }

    /// The item's bytes, and the modification time its object keeps in metadata, if any.
    async fn open(
        &self,
        item: &Item,
    ) -> Result<(BoxStream<'static, Result<Bytes, CopyError>>, Option<SystemTime>), CopyError> {
        match (&item.from, &self.bucket) {
            (From::Object(key), Some(bucket)) => {
                let got = bucket
                    .store
                    .get(key)
                    .await
                    .map_err(|e| bucket.error(format!("cannot read {}", item.shown), &e))?;
                let kept = got
                    .attributes
                    .get(&Attribute::Metadata(MTIME_META.into()))
                    .and_then(|v| parse_mtime(v.as_ref()));
                let shown = item.shown.clone();
                let stream = got
                    .into_stream()
                    .map(move |chunk| chunk.map_err(|e| store_error(format!("cannot read {shown}"), &e)));
                Ok((stream.boxed(), kept))
            }
            (From::File(path), _) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| io_error(format!("cannot open {}", item.shown), &e))?;
                Ok((file_chunks(file, item.shown.clone()), None))
            }
            (From::Object(_), None) => unreachable!("objects come with their bucket"),
        }
    }
}

impl Item {
    fn object(o: SourceObject) -> Item {
        Item {
            rel: o.rel,
            size: o.size,
            modified: o.modified,
            shown: o.shown,
            from: From::Object(o.key),
        }
    }

    fn file(f: ListedFile) -> Item {
        Item {
            rel: f.rel,
            size: f.size,
            modified: f.modified,
            shown: f.shown,
            from: From::File(f.path),
        }
    }
}

/// A file read in chunks of `READ_CHUNK`.
pub(super) fn file_chunks(file: tokio::fs::File, shown: String) -> BoxStream<'static, Result<Bytes, CopyError>> {
    futures::stream::try_unfold((file, shown), |(mut file, shown)| async move {
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        while buffer.len() < READ_CHUNK {
            let n = file
                .read_buf(&mut buffer)
                .await
                .map_err(|e| io_error(format!("cannot read {shown}"), &e))?;
            if n == 0 {
                break;
            }
        }
        if buffer.is_empty() {
            Ok(None)
        } else {
            Ok(Some((buffer.freeze(), (file, shown))))
        }
    })
    .boxed()
}

/// `seconds.nanoseconds` since the epoch, as [`MTIME_META`] holds it.
fn parse_mtime(text: &str) -> Option<SystemTime> {
    let (secs, nanos) = text.split_once('.').unwrap_or((text, "0"));
    let at = Duration::new(secs.parse().ok()?, nanos.parse().ok().filter(|n| *n < 1_000_000_000)?);
    SystemTime::UNIX_EPOCH.checked_add(at)
}

/// Where the copy goes.
enum Out {
    Files {
        sink: Arc<Mutex<FileSink>>,
        sum: Box<Checksum>,
        bytes: u64,
    },
    Objects {
        keys: SinkKeys,
        staged: StagedUploads,
    },
}

/// One file or object being written.
enum Writer {
    File {
        file: tokio::io::BufWriter<tokio::fs::File>,
        shown: String,
    },
    Object(Upload),
}

impl Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CopyError> {
        match self {
            Writer::File { file, shown } => file
                .write_all(&chunk)
                .await
                .map_err(|e| io_error(format!("cannot write {shown}"), &e)),
            Writer::Object(upload) => upload.write(chunk).await,
        }
    }
}

impl Out {
    async fn open(attempt: &AttemptId, sink: &Endpoint, single: bool) -> Result<Out, CopyError> {
        if sink.service.kind.is_object_store() {
            let bucket = Bucket::of(sink)?;
            let text = path_of(sink)?;
            let keys = SinkKeys::new(&sink.service_name, &text, single)?;
            bucket.check_writable(&format!("{}:{text}", sink.service_name)).await?;
            return Ok(Out::Objects {
                keys,
                staged: StagedUploads {
                    bucket,
                    uploads: Vec::new(),
                    job: attempt.job_id.clone(),
                    if_exists: sink.if_exists,
                },
            });
        }
        let (attempt, sink) = (attempt.clone(), sink.clone());
        let opened = blocking(move || FileSink::open(&attempt, &sink, single)).await?;
        Ok(Out::Files {
            sink: Arc::new(Mutex::new(opened)),
            sum: Box::new(Checksum::new()),
            bytes: 0,
        })
    }

    async fn create(&mut self, rel: &[String], modified: Option<SystemTime>) -> Result<Writer, CopyError> {
        match self {
            Out::Objects { keys, staged } => {
                let key = keys.key(rel);
                let upload = Upload::start(&staged.bucket, key, &staged.job, modified).await?;
                Ok(Writer::Object(upload))
            }
            Out::Files { sink, .. } => {
                let (sink, rel) = (sink.clone(), rel.to_vec());
                let (file, shown) = blocking(move || {
                    let mut sink = sink.lock().expect("the file sink is not poisoned");
                    let shown = sink.shown(&rel);
                    Ok((sink.create(&rel)?, shown))
                })
                .await?;
                let file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file));
                Ok(Writer::File { file, shown })
            }
        }
    }

    /// Ends one file or object: a file gets its modification time, is synced and read back
    /// into the sink's checksum; an object's last part goes up.
    async fn finish(&mut self, writer: Writer, modified: Option<SystemTime>) -> Result<(), CopyError> {
        match (self, writer) {
            (Out::Objects { staged, .. }, Writer::Object(mut upload)) => {
                upload.finish_parts().await?;
                staged.uploads.push(upload);
                Ok(())
            }
            (Out::Files { sum, bytes, .. }, Writer::File { mut file, shown }) => {
                file.flush()
                    .await
                    .map_err(|e| io_error(format!("cannot write {shown}"), &e))?;
                let file = file.into_inner().into_std().await;
                let mut local = std::mem::replace(sum.as_mut(), Checksum::new());
                let (local, read) = blocking(move || {
                    FileSink::seal(&file, modified, &shown)?;
                    let read = read_back(&file, &mut local, &shown)?;
                    Ok((local, read))
                })
                .await?;
                **sum = local;
                *bytes += read;
                Ok(())
            }
            _ => unreachable!("a writer comes from its own sink"),
        }
    }

    /// The sink's checksum (files only), the bytes it holds, and the staged output.
    async fn into_output(self) -> Result<(Option<String>, u64, Box<dyn StagedOutput>), CopyError> {
        match self {
            Out::Objects { staged, .. } => {
                let bytes = staged.uploads.iter().map(|u| u.bytes).sum();
                Ok((None, bytes, Box::new(staged)))
            }
            Out::Files { sink, sum, bytes } => {
                let sink = Arc::try_unwrap(sink)
                    .map_err(|_| CopyError::fatal("the file sink is still in use"))?
                    .into_inner()
                    .expect("the file sink is not poisoned");
                Ok((Some(sum.finish()), bytes, sink.finish()))
            }
        }
    }
}

/// Reads a staging file back from its start into `sum`; returns its length.
fn read_back(file: &std::fs::File, sum: &mut Checksum, shown: &str) -> Result<u64, CopyError> {
    use std::os::unix::fs::FileExt as _;
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut at = 0u64;
    loop {
        let n = file
            .read_at(&mut buffer, at)
            .map_err(|e| io_error(format!("cannot read back the staging file for {shown}"), &e))?;
        if n == 0 {
            return Ok(at);
        }
        sum.update(&buffer[..n]);
        at += n as u64;
    }
}

pub(super) fn path_of(endpoint: &Endpoint) -> Result<String, CopyError> {
    match &endpoint.location {
        Location::Path(text) => Ok(text.clone()),
        _ => Err(CopyError::fatal(format!(
            "{}: an object store takes a path (a key, a prefix or a glob), not a table or a query",
            endpoint.service_name
        ))),
    }
}
