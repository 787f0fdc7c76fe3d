//! What other connectors use of the filesystem: the files a binary source names, and
//! staging files for a binary sink written from a stream (an object store's download).
//! The rules are the ones this connector's own binary copy keeps (`binary`): the same
//! listing, the same layout under the sink, staging files next to their targets, published
//! by rename.

use std::collections::HashSet;
use std::fs::{File, FileTimes, OpenOptions};
use std::path::PathBuf;
use std::time::SystemTime;

use super::io_error;
use super::paths::{Root, SourceKind, Walk, create_dirs, rel_path, rel_to_path, resolve_sources, staging_name};
use super::stage::{StagedFile, StagedFiles};
use crate::copy::{AttemptId, CopyError, Endpoint, StagedOutput};

/// One file a binary source names.
#[derive(Clone, Debug)]
pub(crate) struct ListedFile {
    /// Its names below what the source names: the layout a copy keeps.
    pub rel: Vec<String>,
    pub path: PathBuf,
    /// `service:path`, for messages.
    pub shown: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// The files a binary source names, and whether it named exactly one file (which a sink
/// path that is not a directory then receives under its own name). Blocking.
pub(crate) fn list_binary(source: &Endpoint) -> Result<(bool, Vec<ListedFile>), CopyError> {
    let root = Root::of(source)?;
    let text = root.path_of(source)?.to_owned();
    let sources = resolve_sources(&root, &text, Walk::Binary)?;
    let mut files = Vec::with_capacity(sources.files.len());
    for file in sources.files {
        let shown = root.show(&file.under_root);
        let meta = std::fs::metadata(&file.path).map_err(|e| io_error(format!("cannot read {shown}"), &e))?;
        files.push(ListedFile {
            rel: file.rel.iter().map(|n| n.to_string_lossy().into_owned()).collect(),
            path: file.path,
            shown,
            size: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    Ok((sources.kind == SourceKind::File, files))
}

/// Staging files under a filesystem sink, for files that arrive as streams. Dropped without
/// [`finish`](Self::finish), it removes what it staged.
pub(crate) struct FileSink {
    root: Root,
    base: PathBuf,
    /// The sink is a directory receiving each file at its relative path; otherwise the one
    /// file the sink path names.
    into_dir: bool,
    attempt: AttemptId,
    staged: StagedFiles,
    ready_dirs: HashSet<PathBuf>,
}

impl FileSink {
    /// For `sink`, which receives one file if `single` (the source named one) and the sink
    /// path is not a directory, else a tree. Blocking.
    pub(crate) fn open(attempt: &AttemptId, sink: &Endpoint, single: bool) -> Result<FileSink, CopyError> {
        let root = Root::of(sink)?;
        let text = root.path_of(sink)?.to_owned();
        root.check_present()?;
        let rel = rel_path(&root, &text)?;
        if rel.has_wildcard() {
            return Err(CopyError::fatal(format!(
                "{}:{text}: a sink path cannot hold wildcards",
                root.service
            )));
        }
        let base = rel_to_path(&rel);
        let into_dir = !single || rel.dir_syntax || root.dir.join(&base).is_dir();
        Ok(FileSink {
            root,
            base,
            into_dir,
            attempt: attempt.clone(),
            staged: StagedFiles::new(attempt, sink.if_exists),
            ready_dirs: HashSet::new(),
        })
    }

    /// Where a file at `rel` below the source goes, as `service:path`.
    pub(crate) fn shown(&self, rel: &[String]) -> String {
        self.root.show(&self.target_rel(rel))
    }

    fn target_rel(&self, rel: &[String]) -> PathBuf {
        if self.into_dir {
            rel.iter().fold(self.base.clone(), |path, name| path.join(name))
        } else {
            self.base.clone()
        }
    }

    /// Creates the staging file for the file at `rel` below the source (and the
    /// directories it needs), open for reading and writing. Blocking.
    pub(crate) fn create(&mut self, rel: &[String]) -> Result<File, CopyError> {
        let target_rel = self.target_rel(rel);
        let target = self.root.dir.join(&target_rel);
        let shown = self.root.show(&target_rel);
        let dir = target.parent().expect("a target lies under the root").to_path_buf();
        if !self.ready_dirs.contains(&dir) {
            create_dirs(&self.root, &dir, &mut self.staged.created_dirs)?;
            self.ready_dirs.insert(dir.clone());
        }
        if target.is_dir() {
            return Err(CopyError::fatal(format!(
                "{shown} is a directory, so a file cannot be copied there"
            )));
        }
        let name = target.file_name().expect("a target names a file");
        let temp = dir.join(staging_name(name, &self.attempt));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| io_error(format!("cannot create the staging file for {shown}"), &e))?;
        self.staged.add(&file, StagedFile { temp, target, shown })?;
        Ok(file)
    }

    /// Gives a staging file its source's modification time and makes it durable. Blocking.
    pub(crate) fn seal(file: &File, modified: Option<SystemTime>, shown: &str) -> Result<(), CopyError> {
        if let Some(modified) = modified {
            file.set_times(FileTimes::new().set_modified(modified))
                .map_err(|e| io_error(format!("cannot set the modification time of {shown}"), &e))?;
        }
        file.sync_all()
            .map_err(|e| io_error(format!("cannot sync the staging file for {shown}"), &e))
    }

    /// The staged files, to publish or discard.
    pub(crate) fn finish(self) -> Box<dyn StagedOutput> {
        Box::new(self.staged)
    }
}
