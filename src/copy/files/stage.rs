//! Staged file output: staging files next to their targets, published by rename and
//! discarded by removal.
//!
//! Publishing renames each staging file over its target — atomic per file, so a reader
//! sees the old file or the new one, never a torn one — then fsyncs the directories so that
//! the renames survive a crash. A later attempt of the same job that publishes again
//! replaces the target with its own complete copy: either way the target holds exactly one
//! complete file. Publishing first removes the staging files of the job's earlier attempts:
//! left behind by a worker that died, or still held by one that lives on after its node was
//! judged offline, which can then no longer rename anything over the target.
//!
//! Under `--if-exists fail|skip` a target that was there before the job must be left alone,
//! but one that an earlier attempt of the same job published must still be replaced, or a
//! retry after a crash between publishing and reporting would fail or skip its own output.
//! So each staging file carries the job's id in an extended attribute (`user.shir.job`),
//! which the rename takes along to the target, and the rename itself refuses to replace
//! (`RENAME_NOREPLACE`): a file that appears between the check and the rename is not lost.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::io_error;
use super::paths::{sweep_earlier_attempts, sync_dir};
use crate::copy::{AttemptId, CopyError, IfExists, Published, StagedOutput};

/// The extended attribute naming the job whose output a file is.
const JOB_TAG: &str = "user.shir.job";

/// One staging file and the target it becomes.
#[derive(Debug)]
pub(super) struct StagedFile {
    pub temp: PathBuf,
    pub target: PathBuf,
    /// The target as `service:path`, for messages.
    pub shown: String,
}

/// Staging files of one attempt, and the directories the attempt created for them.
#[derive(Debug)]
pub(super) struct StagedFiles {
    pub attempt: AttemptId,
    pub if_exists: IfExists,
    pub files: Vec<StagedFile>,
    /// Outermost first; a discard removes them again when they are empty.
    pub created_dirs: Vec<PathBuf>,
}

/// Whose a target file is, as far as `--if-exists` cares.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Absent,
    /// An earlier attempt of this job published it.
    Ours,
    /// It was there before the job (or another job wrote it).
    Other,
}

impl StagedFiles {
    pub fn new(attempt: &AttemptId, if_exists: IfExists) -> Self {
        StagedFiles {
            attempt: attempt.clone(),
            if_exists,
            files: Vec::new(),
            created_dirs: Vec::new(),
        }
    }

    /// Takes on a staging file just created (`opened` is it, open for writing). Under
    /// `--if-exists fail|skip` it is tagged with the job, and under `fail` a target that
    /// was there before the job fails the attempt now rather than after the copy.
    pub fn add(&mut self, opened: &File, file: StagedFile) -> Result<(), CopyError> {
        // Pushed first, so that the staging file is discarded if what follows fails.
        self.files.push(file);
        let file = self.files.last().expect("just pushed");
        if self.if_exists == IfExists::Overwrite {
            return Ok(());
        }
        let job = self.attempt.job_id.as_bytes();
        if let Err(e) = rustix::fs::fsetxattr(opened, JOB_TAG, job, rustix::fs::XattrFlags::empty()) {
            if e == rustix::io::Errno::NOTSUP {
                return Err(CopyError::fatal(format!(
                    "cannot stage {} under --if-exists {}: its filesystem keeps no extended attributes, which tell this job's own earlier output from a file that was there before (use --if-exists overwrite)",
                    file.shown,
                    self.if_exists.as_str()
                )));
            }
            return Err(io_error(
                format!("cannot tag the staging file for {}", file.shown),
                &e.into(),
            ));
        }
        if self.if_exists == IfExists::Fail && existing(&file.target, job) == Existing::Other {
            return Err(existed(file));
        }
        Ok(())
    }

    /// Renames every staging file over its target (or, under `--if-exists`, next to none),
    /// then makes the renames durable.
    pub fn publish_now(mut self) -> Result<Published, CopyError> {
        let job = self.attempt.job_id.clone();
        if self.if_exists == IfExists::Fail
            && let Some(file) = self
                .files
                .iter()
                .find(|f| existing(&f.target, job.as_bytes()) == Existing::Other)
        {
            let e = existed(file);
            self.discard_now();
            return Err(e);
        }
        let files = std::mem::take(&mut self.files);
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.target.parent().map(Path::to_path_buf))
            .collect();
        // The fence against an earlier attempt that is still alive (its node paused or cut
        // off, and judged offline): its staging files go before this attempt renames, so a
        // rename it makes from now on fails, and the target ends as this attempt's file,
        // not as whichever rename came last. (Its permission to publish is not revoked where
        // it runs; only the file system can stop it.)
        for dir in &dirs {
            sweep_earlier_attempts(dir, &self.attempt);
        }
        let mut published = Published::default();
        for (i, file) in files.iter().enumerate() {
            let done = match self.if_exists {
                IfExists::Overwrite => fs::rename(&file.temp, &file.target).map(|()| true),
                IfExists::Fail | IfExists::Skip => rename_unless_other(file, job.as_bytes()),
            };
            let failed = match done {
                Ok(true) => None,
                Ok(false) if self.if_exists == IfExists::Skip => {
                    let _ = fs::remove_file(&file.temp);
                    published.skipped += 1;
                    None
                }
                // Appeared since the check above: the files before it are published.
                Ok(false) => Some(existed(file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Some(CopyError::fatal(format!(
                    "cannot publish {}: its staging file is gone (discarded, or removed by a later attempt)",
                    file.shown
                ))),
                Err(e) => Some(io_error(format!("cannot publish {}", file.shown), &e)),
            };
            if let Some(e) = failed {
                for rest in &files[i..] {
                    let _ = fs::remove_file(&rest.temp);
                }
                return Err(e);
            }
        }
        for dir in &dirs {
            sync_dir(dir).map_err(|e| {
                let shown = files.iter().find(|f| f.target.parent() == Some(dir.as_path()));
                let shown = shown.map(|f| f.shown.as_str()).unwrap_or("the target directory");
                io_error(format!("cannot make the publish of {shown} durable"), &e)
            })?;
            // Again: an earlier attempt still staging may have added files since.
            sweep_earlier_attempts(dir, &self.attempt);
        }
        // The directories made hold the published files now.
        self.created_dirs.clear();
        Ok(published)
    }

    /// Removes the staging files and the directories made for them; the targets are left
    /// as they were. Best effort: what cannot be removed now a later publish sweeps.
    pub fn discard_now(mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        for file in std::mem::take(&mut self.files) {
            let _ = fs::remove_file(&file.temp);
        }
        // Innermost first; `remove_dir` leaves a directory that something else has filled.
        for dir in std::mem::take(&mut self.created_dirs).iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Renames a staging file to its target unless another file is there; one this job published
/// before is replaced. `false`: another file is there and was left alone.
fn rename_unless_other(file: &StagedFile, job: &[u8]) -> io::Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    loop {
        match renameat_with(CWD, &file.temp, CWD, &file.target, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(true),
            Err(e) if e == rustix::io::Errno::EXIST => match existing(&file.target, job) {
                Existing::Ours => return fs::rename(&file.temp, &file.target).map(|()| true),
                Existing::Other => return Ok(false),
                // Removed in between: try again.
                Existing::Absent => continue,
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `target` exists, and if so whether this job published it. A file whose tag
/// cannot be read counts as another's: when in doubt, leave it alone.
fn existing(target: &Path, job: &[u8]) -> Existing {
    let mut tag = [0u8; 256];
    match rustix::fs::lgetxattr(target, JOB_TAG, &mut tag[..]) {
        Ok(n) if &tag[..n] == job => Existing::Ours,
        Err(e) if e == rustix::io::Errno::NOENT => Existing::Absent,
        _ => Existing::Other,
    }
}

fn existed(file: &StagedFile) -> CopyError {
    CopyError::fatal(format!(
        "{} existed before the job and --if-exists fail leaves it as it was",
        file.shown
    ))
}

impl StagedOutput for StagedFiles {
    fn publish(self: Box<Self>) -> BoxFuture<'static, Result<Published, CopyError>> {
        async move { super::blocking(move || self.publish_now()).await }.boxed()
    }

    fn discard(self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            let _ = tokio::task::spawn_blocking(move || self.discard_now()).await;
        }
        .boxed()
    }
}

impl Drop for StagedFiles {
    /// Staged files neither published nor discarded are removed: an error or a cancelled
    /// copy (its future dropped, its channel closed), or an attempt superseded just as its
    /// copy finished, whose result is dropped unread, must not leave staging files behind.
    fn drop(&mut self) {
        self.clear();
    }
}
