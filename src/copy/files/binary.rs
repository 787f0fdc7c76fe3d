//! Binary copies: files as they are, one staging file next to each target.
//!
//! The source is one file, a directory (recursively) or a glob. The sink is a directory —
//! each file keeps its path relative to what the source names (the directory, or the part
//! of a glob before its first wildcard) — or, when the source names exactly one file, a
//! file path. A sink path that ends in `/` or is an existing directory is a directory.
//!
//! Three threads share the work. The copier moves the bytes with `copy_file_range`, inside
//! the kernel as `cp` does (falling back to reads and writes where a filesystem does not
//! support it), gives each staging file the source's permission bits (`rwx` for user,
//! group and others; set-id bits are dropped, since ownership is not kept) and its
//! modification and access times, and fsyncs it. One hasher reads each source file and
//! hashes it (the source's checksum, as read); the other reads back each stretch of staging
//! file as soon as it is written and hashes it (the sink's checksum, as written). Equal
//! checksums therefore say that the staging files hold what the source held, not just that
//! one buffer was hashed twice. A source file whose size or modification time changes
//! while it is copied fails the copy (transiently: a retry may find it settled).
//!
//! The two hashers and the copier keep both cores busy; the checksum is XXH3-128, cheap
//! enough that each hasher costs about what its reads cost (`checksum` says why not
//! SHA-256). Hashing in the copy's own pass (read into a buffer, hash, write) was weighed
//! and left: it moves the same bytes through memory as `copy_file_range` plus a hasher's
//! read, and would put the copy and the source's hash on one thread instead of two.

use std::collections::HashSet;
use std::fs::{File, FileTimes, OpenOptions, Permissions};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::SystemTime;

use super::checksum::Checksum;
use super::paths::{
    Root, SourceFile, SourceKind, Target, Walk, create_dirs, rel_path, rel_to_path, resolve_sources, staging_name,
};
use super::stage::{StagedFile, StagedFiles};
use super::{IO_BUFFER, blocking, io_error};
use crate::copy::{AttemptId, Consistency, CopyError, Counters, Endpoint, IfExists, Staged};

/// Bytes per `copy_file_range` call: few enough calls that their cost vanishes, small
/// enough that progress and the sink's hasher follow the copy closely.
const COPY_CHUNK: u64 = 8 << 20;

/// Hash jobs a hasher may lag behind the copier: bounds the open source files and the
/// stretch of staging file not yet read back (16 × 8 MiB).
const HASH_QUEUE: usize = 16;

/// Every this many bytes copied, the kernel is asked to start writing them to disk, so
/// that the fsync at the end of a large file waits for the last stretch only.
const WRITEBACK_EVERY: u64 = 32 << 20;

pub(super) async fn copy_binary(
    attempt: &AttemptId,
    source: &Endpoint,
    sink: &Endpoint,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    let source_root = Root::of(source)?;
    let source_text = source_root.path_of(source)?.to_owned();
    let sink_root = Root::of(sink)?;
    let sink_text = sink_root.path_of(sink)?.to_owned();
    let (attempt, counters, if_exists) = (attempt.clone(), counters.clone(), sink.if_exists);

    // A blocking thread cannot be cancelled; a cancelled copy (its future dropped) raises
    // this flag, the copier stops at its next chunk and the staging files are removed.
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancelled.clone());
    blocking(move || {
        let plan = Plan::make(&source_root, &source_text, &sink_root, &sink_text, if_exists)?;
        plan.stage(&sink_root, &attempt, &counters, &cancelled)
    })
    .await
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The files to copy and where each goes.
struct Plan {
    /// `service:path` of the source as given, for messages about the whole copy.
    source_shown: String,
    /// Each source file with its `service:path`.
    files: Vec<(SourceFile, String)>,
    targets: Vec<Target>,
    /// What publishing does to a target that was there before the job.
    if_exists: IfExists,
}

impl Plan {
    fn make(
        source_root: &Root,
        source_text: &str,
        sink_root: &Root,
        sink_text: &str,
        if_exists: IfExists,
    ) -> Result<Plan, CopyError> {
        let sources = resolve_sources(source_root, source_text, Walk::Binary)?;
        sink_root.check_present()?;
        let sink_rel = rel_path(sink_root, sink_text)?;
        if sink_rel.has_wildcard() {
            return Err(CopyError::fatal(format!(
                "{}:{sink_text}: a sink path cannot hold wildcards",
                sink_root.service
            )));
        }
        let sink_base = rel_to_path(&sink_rel);
        let into_dir =
            sources.kind != SourceKind::File || sink_rel.dir_syntax || sink_root.dir.join(&sink_base).is_dir();

        let mut files = Vec::with_capacity(sources.files.len());
        let mut targets = Vec::with_capacity(sources.files.len());
        for file in sources.files {
            let rel = if into_dir {
                sink_base.join(&file.rel)
            } else {
                sink_base.clone()
            };
            let target = Target {
                path: sink_root.dir.join(&rel),
                shown: sink_root.show(&rel),
            };
            let shown = source_root.show(&file.under_root);
            if target.path == file.path {
                return Err(CopyError::fatal(format!(
                    "{shown}: the copy would overwrite its own source"
                )));
            }
            files.push((file, shown));
            targets.push(target);
        }
        Ok(Plan {
            source_shown: format!("{}:{source_text}", source_root.service),
            files,
            targets,
            if_exists,
        })
    }

    /// Copies every file to its staging file, hashing both sides, and checks that they
    /// agree.
    fn stage(
        &self,
        sink_root: &Root,
        attempt: &AttemptId,
        counters: &Counters,
        cancelled: &AtomicBool,
    ) -> Result<Staged, CopyError> {
        let (source_jobs, source_rx) = sync_channel::<HashJob>(HASH_QUEUE);
        let (sink_jobs, sink_rx) = sync_channel::<HashJob>(HASH_QUEUE);
        // Raised when the copier fails, so that the hashers drop their queued work.
        let stop = AtomicBool::new(false);

        let (copied, source, sink) = std::thread::scope(|scope| {
            let source = scope.spawn(|| hash_all(source_rx, &stop));
            let sink = scope.spawn(|| hash_all(sink_rx, &stop));
            // The copier owns the job senders: when it returns, the hashers see the end.
            let copied = self.copy_all(sink_root, attempt, counters, cancelled, source_jobs, sink_jobs);
            if copied.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            (copied, source.join(), sink.join())
        });
        let unexpected = || CopyError::fatal(format!("hashing {} stopped unexpectedly", self.source_shown));
        let copied = match copied {
            Ok(copied) => copied,
            Err(Stopped::Failed(e)) => return Err(e),
            // A hasher failed first; its error says why.
            Err(Stopped::HasherGone) => {
                for hashed in [source, sink] {
                    if let Ok(Err(e)) = hashed {
                        return Err(e);
                    }
                }
                return Err(unexpected());
            }
        };
        let source = source.map_err(|_| unexpected())??;
        let sink = sink.map_err(|_| unexpected())??;

        let check = Consistency {
            source_checksum: Some(source.checksum.clone()),
            sink_checksum: Some(sink.checksum.clone()),
            verified: source.checksum == sink.checksum
                && source.bytes == copied.bytes
                && sink.bytes == copied.bytes
                && copied.files == self.files.len(),
            ..Consistency::default()
        };
        if !check.verified {
            return Err(CopyError::transient(format!(
                "consistency check failed for {}: read {} bytes ({}), wrote {} bytes in {} of {} files ({})",
                self.source_shown,
                source.bytes,
                source.checksum,
                sink.bytes,
                copied.files,
                self.files.len(),
                sink.checksum
            )));
        }
        let staged = copied.staged;
        Ok(Staged::new(
            0,
            copied.bytes,
            copied.files as u64,
            check,
            Box::new(staged),
        ))
    }

    /// The copier: every file, in path order, to its staging file.
    fn copy_all(
        &self,
        sink_root: &Root,
        attempt: &AttemptId,
        counters: &Counters,
        cancelled: &AtomicBool,
        source_jobs: SyncSender<HashJob>,
        sink_jobs: SyncSender<HashJob>,
    ) -> Result<Copied, Stopped> {
        let mut staged = StagedFiles::new(attempt, self.if_exists);
        let mut ready_dirs: HashSet<PathBuf> = HashSet::new();
        let mut buffer: Vec<u8> = Vec::new();
        let (mut total, mut files) = (0u64, 0usize);

        for ((file, shown), target) in self.files.iter().zip(&self.targets) {
            let input = File::open(&file.path).map_err(|e| io_error(format!("cannot open {shown}"), &e))?;
            let input = Arc::new(input);
            let before = input
                .metadata()
                .map_err(|e| io_error(format!("cannot read {shown}"), &e))?;
            source_jobs
                .send(HashJob {
                    file: input.clone(),
                    from: 0,
                    to: None,
                    what: format!("cannot read {shown}"),
                })
                .map_err(|_| Stopped::HasherGone)?;

            let dir = target.path.parent().expect("a target lies under the root");
            if !ready_dirs.contains(dir) {
                create_dirs(sink_root, dir, &mut staged.created_dirs)?;
                ready_dirs.insert(dir.to_path_buf());
            }
            if target.path.is_dir() {
                return Err(CopyError::fatal(format!(
                    "{} is a directory, so the file {shown} cannot be copied there",
                    target.shown
                ))
                .into());
            }
            let name = target.path.file_name().expect("a target names a file");
            let temp = dir.join(staging_name(name, attempt));
            let output = OpenOptions::new()
                // Read too: the sink's hasher reads the staging file back through it.
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(|e| io_error(format!("cannot create the staging file for {}", target.shown), &e))?;
            staged.add(
                &output,
                StagedFile {
                    temp,
                    target: target.path.clone(),
                    shown: target.shown.clone(),
                },
            )?;
            let output = Arc::new(output);

            let (mut at, mut handed_to_disk) = (0u64, 0u64);
            let mut in_kernel = true;
            loop {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(
                        CopyError::transient(format!("the copy of {} was cancelled", self.source_shown)).into(),
                    );
                }
                let copied = if in_kernel {
                    match copy_in_kernel(&input, &output, at) {
                        // Some filesystems (old kernels' procfs, some FUSE) report 0 for a
                        // file that has bytes left; read them the ordinary way.
                        Ok(0) if at < before.len() => {
                            in_kernel = false;
                            continue;
                        }
                        Ok(n) => n,
                        Err(e) if not_supported(&e) => {
                            in_kernel = false;
                            continue;
                        }
                        Err(e) => return Err(io_error(format!("cannot copy {shown}"), &e).into()),
                    }
                } else {
                    if buffer.is_empty() {
                        buffer = vec![0; IO_BUFFER];
                    }
                    copy_through(&input, &output, at, &mut buffer)
                        .map_err(|e| io_error(format!("cannot copy {shown}"), &e))?
                };
                if copied == 0 {
                    break;
                }
                #[cfg(test)]
                tests_hooks::damage_write(attempt, &output, at);
                sink_jobs
                    .send(HashJob {
                        file: output.clone(),
                        from: at,
                        to: Some(at + copied),
                        what: format!("cannot read back the staging file for {}", target.shown),
                    })
                    .map_err(|_| Stopped::HasherGone)?;
                at += copied;
                total += copied;
                counters.add(0, copied, 0);
                if at - handed_to_disk >= WRITEBACK_EVERY {
                    start_writeback(&output, handed_to_disk, at - handed_to_disk);
                    handed_to_disk = at;
                }
            }

            // The file must be the one whose size and time the copy keeps: a writer still at
            // work on it would leave a copy of something that never existed as a whole.
            let after = input
                .metadata()
                .map_err(|e| io_error(format!("cannot read {shown}"), &e))?;
            if at != before.len() || after.len() != before.len() || after.modified().ok() != before.modified().ok() {
                return Err(CopyError::transient(format!("{shown} changed while it was being copied")).into());
            }

            let meta_error = |e: io::Error| io_error(format!("cannot set the metadata of {}", target.shown), &e);
            output
                .set_permissions(Permissions::from_mode(before.mode() & 0o777))
                .map_err(meta_error)?;
            let times = FileTimes::new()
                .set_modified(before.modified().unwrap_or(SystemTime::UNIX_EPOCH))
                .set_accessed(before.accessed().unwrap_or(SystemTime::UNIX_EPOCH));
            output.set_times(times).map_err(meta_error)?;
            output
                .sync_all()
                .map_err(|e| io_error(format!("cannot sync the staging file for {}", target.shown), &e))?;
            files += 1;
            counters.add(0, 0, 1);
        }
        Ok(Copied {
            bytes: total,
            files,
            staged,
        })
    }
}

/// Why the copier stopped.
enum Stopped {
    Failed(CopyError),
    /// A hasher hung up: it failed, and its error is the one to report.
    HasherGone,
}

impl From<CopyError> for Stopped {
    fn from(e: CopyError) -> Self {
        Stopped::Failed(e)
    }
}

struct Copied {
    bytes: u64,
    files: usize,
    staged: StagedFiles,
}

/// A stretch of a file for a hasher: `from` to `to`, or to its end.
struct HashJob {
    file: Arc<File>,
    from: u64,
    to: Option<u64>,
    /// What a read error is about, e.g. "cannot read share:in/a.bin".
    what: String,
}

struct Hashed {
    checksum: String,
    bytes: u64,
}

/// A hasher: reads each job's stretch in order into one running checksum.
fn hash_all(jobs: Receiver<HashJob>, stop: &AtomicBool) -> Result<Hashed, CopyError> {
    let mut hasher = Checksum::new();
    let mut buffer = vec![0u8; IO_BUFFER];
    let mut total = 0u64;
    for job in jobs {
        let mut at = job.from;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(CopyError::transient("the copy stopped"));
            }
            let want = match job.to {
                Some(end) => (end - at).min(buffer.len() as u64) as usize,
                None => buffer.len(),
            };
            if want == 0 {
                break;
            }
            let n = match job.file.read_at(&mut buffer[..want], at) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(&job.what, &e)),
            };
            if n == 0 {
                if job.to.is_some() {
                    return Err(CopyError::transient(format!("{}: it ended early", job.what)));
                }
                break;
            }
            hasher.update(&buffer[..n]);
            at += n as u64;
            total += n as u64;
        }
    }
    Ok(Hashed {
        checksum: hasher.finish(),
        bytes: total,
    })
}

/// Copies up to [`COPY_CHUNK`] bytes at offset `at` inside the kernel; the count copied,
/// 0 at the end of the source.
fn copy_in_kernel(input: &File, output: &File, at: u64) -> io::Result<u64> {
    loop {
        let mut from = at as libc::loff_t;
        let mut to = at as libc::loff_t;
        // SAFETY: both descriptors are open for the duration of the call, and the offset
        // pointers point at locals that outlive it.
        let n = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                &mut from,
                output.as_raw_fd(),
                &mut to,
                COPY_CHUNK as usize,
                0,
            )
        };
        if n >= 0 {
            return Ok(n as u64);
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether `copy_file_range` failed because it cannot be used here (an old kernel, another
/// filesystem on the other side, a filesystem that does not offer it), not because the
/// copy itself failed; the ordinary copy then takes over.
fn not_supported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM | libc::EBADF | libc::ETXTBSY)
    )
}

/// The ordinary copy of one buffer's worth at offset `at`; 0 at the end of the source.
fn copy_through(input: &File, output: &File, at: u64, buffer: &mut [u8]) -> io::Result<u64> {
    let n = loop {
        match input.read_at(buffer, at) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    output.write_all_at(&buffer[..n], at)?;
    Ok(n as u64)
}

/// Asks the kernel to start writing a range of the file to disk without waiting for it.
/// Only a head start for the fsync that follows, so a failure is ignored (the fsync
/// reports real errors).
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is open for the
    // duration of the call, and any offset and length are valid arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Fault injection for the tests of the consistency check.
#[cfg(test)]
pub(super) mod tests_hooks {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::Mutex;

    use crate::copy::AttemptId;

    /// Jobs whose writes go bad: the first byte of each stretch the copier writes is
    /// flipped in the staging file before the sink's hasher reads it back, as a faulty disk
    /// or share would return other bytes than were written.
    pub static DAMAGED_JOBS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    pub fn damage_write(attempt: &AttemptId, output: &File, at: u64) {
        if !DAMAGED_JOBS.lock().unwrap().contains(&attempt.job_id) {
            return;
        }
        let mut byte = [0u8];
        output.read_exact_at(&mut byte, at).unwrap();
        output.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
    }
}
