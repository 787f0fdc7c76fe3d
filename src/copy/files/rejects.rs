//! The rejects file of `--on-bad-row skip`: CSV rows that cannot be copied (a value that does
//! not fit its column's type, a row of the wrong width) are written there, one JSON object a
//! line, instead of failing the job:
//!
//! `{"file":"share:in/a.csv","line":7,"column":"amount","reason":"'n/a' is not an integer","text":"7,n/a,x"}`
//!
//! `text` is the record as the file has it (decoded to UTF-8, without its line break; a
//! quoted field may hold line breaks, which JSON escapes). The file is staged next to its
//! target like any sink file (`.{name}.shir-{job}-{attempt}.tmp`, made on the first reject)
//! and published with the job's output, renamed over the target: its name carries the job's
//! id, so a retried attempt replaces it rather than leaving a second one. A copy without bad
//! rows publishes none.
//!
//! The reader counts every record it reads here too, so the consistency check can require
//! `rows_read = rows_written + rows_skipped` from three counts made in three places.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::sync::{Arc, Mutex};

use super::paths::{Root, create_dirs, sink_file, staging_name};
use super::stage::{StagedFile, StagedFiles};
use super::{IO_BUFFER, io_error};
use crate::copy::{AttemptId, CopyError, Endpoint, IfExists, StagedOutput};

/// One row that was not copied.
pub(super) struct Reject<'a> {
    /// The source file as `service:path`.
    pub file: &'a str,
    pub line: u64,
    /// The column whose value does not fit; `None` for a row of the wrong width.
    pub column: Option<&'a str>,
    pub reason: &'a str,
    pub text: &'a str,
}

/// Where a copy's bad rows go; shared by the reader thread that finds them and the copy that
/// publishes them.
#[derive(Clone)]
pub struct Rejects(Arc<Mutex<Inner>>);

struct Inner {
    attempt: AttemptId,
    target: Endpoint,
    /// Made on the first reject.
    open: Option<(BufWriter<File>, StagedFiles)>,
    skipped: u64,
    records: u64,
}

/// What a finished rejects file comes to.
pub struct RejectsDone {
    /// Rows written to the rejects file.
    pub skipped: u64,
    /// Records the reader read, the rejected ones included.
    pub records: u64,
    /// The staged rejects file; `None` when no row was rejected.
    pub output: Option<Box<dyn StagedOutput>>,
    /// The target as `service:path`, for `job show`.
    pub shown: String,
}

impl Rejects {
    /// Rejects for `attempt` go to the file `target` names (on a share).
    pub fn new(attempt: &AttemptId, target: Endpoint) -> Rejects {
        Rejects(Arc::new(Mutex::new(Inner {
            attempt: attempt.clone(),
            target,
            open: None,
            skipped: 0,
            records: 0,
        })))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A reader that panicked holding the lock has failed the copy already.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts records read, the rejected ones included.
    pub(super) fn count_read(&self, records: u64) {
        self.inner().records += records;
    }

    /// Appends one row to the rejects file (blocking).
    pub(super) fn reject(&self, reject: &Reject) -> Result<(), CopyError> {
        let mut inner = self.inner();
        if inner.open.is_none() {
            inner.open = Some(inner.stage()?);
        }
        let line = serde_json::json!({
            "file": reject.file,
            "line": reject.line,
            "column": reject.column,
            "reason": reject.reason,
            "text": reject.text,
        });
        let (writer, staged) = inner.open.as_mut().expect("opened above");
        let shown = &staged.files[0].shown;
        serde_json::to_writer(&mut *writer, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| writer.write_all(b"\n"))
            .map_err(|e| io_error(format!("cannot write the rejects file {shown}"), &e))?;
        inner.skipped += 1;
        Ok(())
    }

    /// Syncs the rejects file and hands it over for publishing (blocking).
    pub(crate) fn finish(&self) -> Result<RejectsDone, CopyError> {
        let mut inner = self.inner();
        let (skipped, records) = (inner.skipped, inner.records);
        let root = Root::of(&inner.target)?;
        let shown = format!("{}:{}", root.service, root.path_of(&inner.target)?);
        let Some((writer, staged)) = inner.open.take() else {
            return Ok(RejectsDone {
                skipped,
                records,
                output: None,
                shown,
            });
        };
        let file = writer
            .into_inner()
            .map_err(|e| io_error(format!("cannot write the rejects file {shown}"), e.error()))?;
        file.sync_all()
            .map_err(|e| io_error(format!("cannot sync the rejects file {shown}"), &e))?;
        Ok(RejectsDone {
            skipped,
            records,
            output: Some(Box::new(staged)),
            shown,
        })
    }
}

/// The text a CSV reader parses, kept from the start of the batch being read, so that a
/// rejected record can be quoted as the file has it. Only a reader with a rejects file keeps
/// it; memory stays one batch of text (and the reader's buffer).
#[derive(Clone, Default)]
pub(super) struct Kept(Arc<Mutex<KeptText>>);

#[derive(Default)]
struct KeptText {
    bytes: Vec<u8>,
    /// The stream offset of `bytes[0]`.
    from: u64,
}

impl Kept {
    /// `input` with everything read from it kept here.
    pub fn tee(&self, input: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        Box::new(Tee {
            input,
            kept: self.clone(),
        })
    }

    fn text(&self) -> std::sync::MutexGuard<'_, KeptText> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The text between two stream offsets, without the record's line break.
    pub fn record(&self, start: u64, end: u64) -> String {
        let kept = self.text();
        let at = |offset: u64| (offset.saturating_sub(kept.from) as usize).min(kept.bytes.len());
        let bytes = &kept.bytes[at(start)..at(end)];
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Forgets the text before `offset`: no record that starts earlier is asked for again.
    pub fn forget_before(&self, offset: u64) {
        let mut kept = self.text();
        let n = (offset.saturating_sub(kept.from) as usize).min(kept.bytes.len());
        kept.bytes.drain(..n);
        kept.from += n as u64;
    }
}

struct Tee {
    input: Box<dyn Read + Send>,
    kept: Kept,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.kept.text().bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Inner {
    /// Creates the staging file next to the rejects file's target.
    fn stage(&self) -> Result<(BufWriter<File>, StagedFiles), CopyError> {
        let root = Root::of(&self.target)?;
        let target = sink_file(&root, root.path_of(&self.target)?)?;
        root.check_present()?;
        let dir = target.path.parent().expect("a sink file lies under the root");
        let name = target.path.file_name().expect("a sink path names a file");
        // Its name is the job's: whatever was there is this job's own earlier output.
        let mut staged = StagedFiles::new(&self.attempt, IfExists::Overwrite);
        create_dirs(&root, dir, &mut staged.created_dirs)?;
        let temp = dir.join(staging_name(name, &self.attempt));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| io_error(format!("cannot create the rejects file {}", target.shown), &e))?;
        let writer = BufWriter::with_capacity(
            IO_BUFFER,
            file.try_clone()
                .map_err(|e| io_error(format!("cannot create the rejects file {}", target.shown), &e))?,
        );
        staged.add(
            &file,
            StagedFile {
                temp,
                target: target.path.clone(),
                shown: target.shown.clone(),
            },
        )?;
        Ok((writer, staged))
    }
}
