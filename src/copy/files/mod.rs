//! Filesystem sources and sinks under a linked service's `root`: CSV, JSON Lines and
//! Parquet tables, and binary copies of files and folders.
//!
//! * **Where.** A [`Location::Path`](super::Location::Path) is relative to the root; an
//!   absolute path, one that climbs out with `..`, or one whose symbolic links lead out of
//!   the root is refused (`paths`). A source path names one file, a directory (every file
//!   under it, recursively, in path order; a table read skips names starting with `.` or
//!   `_`, as Spark and pyarrow do) or a glob (`*` and `?` within one name, `**` for any
//!   number of directories; as in the shell, wildcards do not match a leading `.`).
//! * **Reading** (`read`) runs on a blocking thread and hands record batches of at most
//!   `BATCH_ROWS` rows through a short channel, so memory stays bounded whatever the
//!   file size. CSV records become text columns (`csv_rows`; an empty field or a
//!   `--csv-null` value is NULL): a CSV→CSV copy then writes back the same values, not
//!   re-formatted numbers or dates, and a PostgreSQL sink lets the server parse the text
//!   into its column types, as `COPY` does. For a Parquet or JSON Lines sink the text is
//!   converted (`convert`) to the types inferred from a sample (`infer`) or named by
//!   `--schema FILE`; under `--on-bad-row skip` a row that does not fit goes to the
//!   rejects file (`rejects`) instead of failing the copy.
//! * **Writing** (`write`, `binary`) goes to a staging file next to each target,
//!   `.{name}.shir-{job}-{attempt}.tmp` (missing directories are created), fsynced before
//!   the copy reports success.
//!   Publishing (`stage`) renames the staging files over their targets and fsyncs the
//!   directories; discarding removes them. Nothing appears at a target before publish.
//! * **Errors** are one line naming the file as `service:path` (never the root's
//!   absolute location, never file contents). Bad input is fatal: a missing source, an
//!   unreadable row (with its line number), files of different schemas, a path outside
//!   the root, permission denied (an operator has to change something; a retry elsewhere
//!   would fail the same way). Conditions that can pass are transient: a full disk or
//!   quota, I/O errors of a flaky share, a root that is not mounted on this node, a
//!   source file that changed while it was copied (`io_error`).

mod binary;
mod bridge;
mod checksum;
mod convert;
mod csv_rows;
mod infer;
mod paths;
mod read;
mod rejects;
mod stage;
mod write;

#[cfg(test)]
pub(super) mod tests;
#[cfg(test)]
mod tests_schema;

use std::fmt::Display;
use std::io;

use super::{AttemptId, Batches, CopyError, Counters, Endpoint, Format, Staged};

pub(crate) use bridge::{FileSink, ListedFile, list_binary};
pub(crate) use checksum::Checksum;
pub use rejects::{Rejects, RejectsDone};

/// Rows per record batch: large enough that per-batch costs (a channel hop, a CSV flush, a
/// Parquet page check) vanish, small enough that a batch of a few dozen text columns stays
/// within a few MiB.
pub(crate) const BATCH_ROWS: usize = 8192;

/// A batch is cut earlier once its text passes this size, so that rows of megabytes each do
/// not make a batch of gigabytes.
const BATCH_BYTES: usize = 16 << 20;

/// Batches in flight between a reader thread and the writer: enough to keep both busy, few
/// enough that memory stays a small multiple of one batch.
const BATCHES_IN_FLIGHT: usize = 2;

/// Buffer for file I/O: one system call per MiB keeps the syscall cost negligible next to
/// copying and hashing, as `cp` does with its 128 KiB–1 MiB buffers.
const IO_BUFFER: usize = 1 << 20;

/// Opens the files that `source.location` names (one file, a directory or a glob under the
/// root) and yields their rows as record batches. Fails before yielding anything when no
/// file matches or the files do not share one schema; a bad row ends the stream with an
/// error naming its file and line.
/// With `infer`, a CSV source's columns get the types a sample of their values has
/// (`infer`) or the source's `--schema FILE` gives them; otherwise they are text. With
/// `rejects`, CSV rows that cannot be copied go there instead of failing the copy.
pub async fn read_table(
    source: &Endpoint,
    counters: &Counters,
    infer: bool,
    rejects: Option<Rejects>,
) -> Result<Batches, CopyError> {
    read::read_table(source, counters, infer, rejects).await
}

/// Writes `batches` to a staging file next to the target file; [`Staged::publish`] renames
/// it over the target. The consistency check compares the rows that came in with the rows
/// the file holds.
pub async fn write_table(
    attempt: &AttemptId,
    sink: &Endpoint,
    batches: Batches,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    write::write_table(attempt, sink, batches, counters).await
}

/// Copies files as they are, keeping their sizes, modification times and permissions and,
/// for a directory or a glob, their layout under the sink directory. The consistency check
/// is an XXH3-128 checksum (`checksum`) over the contents in path order, of the source as
/// read and of the staging files as written, together with byte and file counts.
pub async fn copy_binary(
    attempt: &AttemptId,
    source: &Endpoint,
    sink: &Endpoint,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    binary::copy_binary(attempt, source, sink, counters).await
}

/// The tabular formats, with their options.
#[derive(Clone, Debug)]
enum TableFormat {
    Csv(super::CsvOptions),
    JsonLines,
    Parquet,
}

impl TableFormat {
    fn of(endpoint: &Endpoint) -> Result<Self, CopyError> {
        match &endpoint.format {
            Format::Csv(options) => Ok(TableFormat::Csv(options.clone())),
            Format::JsonLines => Ok(TableFormat::JsonLines),
            Format::Parquet => Ok(TableFormat::Parquet),
            Format::Binary => Err(CopyError::fatal(format!(
                "{}: the binary format copies files as they are and cannot be read as a table",
                endpoint.service_name
            ))),
        }
    }
}

/// An I/O failure as one line, `{what}: {cause}`, fatal or transient by its cause.
///
/// Fatal: the path is wrong (not found, not a directory, a directory), the service's user
/// may not read or write it, or the filesystem is read-only — an operator has to act, and
/// retrying would only delay the error. Transient: a full disk or quota (space can be
/// freed, another node's disk may have room), a stale handle, a timeout or any other I/O
/// error, which on a network share is usually the share rather than the data.
pub(crate) fn io_error(what: impl Display, e: &io::Error) -> CopyError {
    use io::ErrorKind::*;
    let message = format!("{what}: {e}");
    match e.kind() {
        NotFound | PermissionDenied | NotADirectory | IsADirectory | ReadOnlyFilesystem | InvalidInput
        | InvalidData | InvalidFilename | FileTooLarge | AlreadyExists | DirectoryNotEmpty | Unsupported => {
            CopyError::fatal(message)
        }
        _ => CopyError::transient(message),
    }
}

/// Runs blocking file work off the async runtime: a hung network share then stalls one
/// blocking thread, not the runtime that serves RPCs and heartbeats.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, CopyError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, CopyError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        // A panic in file code is a bug, and the same input would hit it again.
        CopyError::fatal(format!("the file copy stopped unexpectedly: {e}"))
    })?
}
