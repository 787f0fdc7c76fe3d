//! Staged file output: staging files next to their targets, published by rename and
//! discarded by removal.
//!
//! Publishing renames each staging file over its target — atomic per file, so a reader
//! sees the old file or the new one, never a torn one — then fsyncs the directories so that
//! the renames survive a crash. A later attempt of the same job that publishes again
//! replaces the target with its own complete copy: either way the target holds exactly one
//! complete file. Publishing also removes staging files that earlier attempts of the job
//! left behind when their worker died.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::PathBuf;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::io_error;
use super::paths::{sweep_earlier_attempts, sync_dir};
use crate::copy::{AttemptId, CopyError, StagedOutput};

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
    pub files: Vec<StagedFile>,
    /// Outermost first; a discard removes them again when they are empty.
    pub created_dirs: Vec<PathBuf>,
}

impl StagedFiles {
    pub fn new(attempt: &AttemptId) -> Self {
        StagedFiles {
            attempt: attempt.clone(),
            files: Vec::new(),
            created_dirs: Vec::new(),
        }
    }

    /// Renames every staging file over its target, then makes the renames durable.
    pub fn publish_now(self) -> Result<(), CopyError> {
        let mut dirs = BTreeSet::new();
        for file in &self.files {
            if let Err(e) = fs::rename(&file.temp, &file.target) {
                if e.kind() == io::ErrorKind::NotFound {
                    return Err(CopyError::fatal(format!(
                        "cannot publish {}: its staging file is gone (discarded, or removed by a later attempt)",
                        file.shown
                    )));
                }
                return Err(io_error(format!("cannot publish {}", file.shown), &e));
            }
            if let Some(dir) = file.target.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in &dirs {
            sync_dir(dir).map_err(|e| {
                let shown = self.files.iter().find(|f| f.target.parent() == Some(dir.as_path()));
                let shown = shown.map(|f| f.shown.as_str()).unwrap_or("the target directory");
                io_error(format!("cannot make the publish of {shown} durable"), &e)
            })?;
            sweep_earlier_attempts(dir, &self.attempt);
        }
        Ok(())
    }

    /// Removes the staging files and the directories made for them; the targets are left
    /// as they were. Best effort: what cannot be removed now a later publish sweeps.
    pub fn discard_now(self) {
        for file in &self.files {
            let _ = fs::remove_file(&file.temp);
        }
        // Innermost first; `remove_dir` leaves a directory that something else has filled.
        for dir in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

impl StagedOutput for StagedFiles {
    fn publish(self: Box<Self>) -> BoxFuture<'static, Result<(), CopyError>> {
        async move { super::blocking(move || self.publish_now()).await }.boxed()
    }

    fn discard(self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            let _ = tokio::task::spawn_blocking(move || self.discard_now()).await;
        }
        .boxed()
    }
}

/// Discards staged work unless disarmed: an error or a cancelled copy (its future dropped,
/// its channel closed) must not leave staging files behind.
pub(super) struct DiscardOnDrop(pub Option<StagedFiles>);

impl DiscardOnDrop {
    pub fn get(&mut self) -> &mut StagedFiles {
        self.0.as_mut().expect("staged files are present until disarmed")
    }

    pub fn disarm(mut self) -> StagedFiles {
        self.0.take().expect("staged files are present until disarmed")
    }
}

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        if let Some(staged) = self.0.take() {
            staged.discard_now();
        }
    }
}
