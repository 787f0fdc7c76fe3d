//! Paths under a linked service's root: confining them to it, expanding globs and
//! directories into the files they name, naming staging files, and creating directories
//! durably.
//!
//! Confinement is lexical first: an absolute path or a `..` component is refused before
//! anything touches the disk. Symbolic links are then held to the same rule: where a source
//! file or a sink directory finally leads (its real path) must lie inside the root's real
//! path, or the copy is refused — a link planted in a share must not let a copy read
//! `/etc` or write outside the share. This is checked when the copy starts, not at every
//! read. A directory walk does not descend into links to directories (they can loop), reads
//! a link to a file as that file, and passes over a dangling link.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::io_error;
use crate::copy::{AttemptId, CopyError, Endpoint, Location};

/// The most a file name may be on Linux filesystems; staging names are cut to fit.
const NAME_MAX: usize = 255;

/// A linked service's root directory, with the service's name for messages.
#[derive(Clone, Debug)]
pub(super) struct Root {
    pub service: String,
    pub dir: PathBuf,
}

impl Root {
    /// The root of a filesystem endpoint, which must be an absolute path.
    pub fn of(endpoint: &Endpoint) -> Result<Root, CopyError> {
        let service = endpoint.service_name.clone();
        let Some(root) = endpoint.service.get("root").filter(|r| !r.trim().is_empty()) else {
            return Err(CopyError::fatal(format!(
                "{service}: the linked service has no root directory"
            )));
        };
        let dir = PathBuf::from(root);
        if !dir.is_absolute() {
            return Err(CopyError::fatal(format!(
                "{service}: the root directory must be an absolute path"
            )));
        }
        Ok(Root { service, dir })
    }

    /// The endpoint's path text; tables and queries belong to other connectors.
    pub fn path_of<'a>(&self, endpoint: &'a Endpoint) -> Result<&'a str, CopyError> {
        match &endpoint.location {
            Location::Path(text) => Ok(text),
            _ => Err(CopyError::fatal(format!(
                "{}: a filesystem linked service takes a path, not a table or a query",
                self.service
            ))),
        }
    }

    /// `service:relative/path`, as an operator writes a dataset.
    pub fn show(&self, rel: &Path) -> String {
        format!("{}:{}", self.service, rel.display())
    }

    /// The root with its symbolic links resolved, to compare real paths against.
    pub fn real(&self) -> Result<PathBuf, CopyError> {
        fs::canonicalize(&self.dir)
            .map_err(|e| io_error(format!("{}: cannot resolve the root directory", self.service), &e))
    }

    /// Refuses `path` (shown as `rel`) if it really lies outside the root.
    pub fn confine(&self, real_root: &Path, path: &Path, rel: &Path) -> Result<(), CopyError> {
        let real = fs::canonicalize(path).map_err(|e| io_error(format!("cannot resolve {}", self.show(rel)), &e))?;
        if real.starts_with(real_root) {
            Ok(())
        } else {
            Err(CopyError::fatal(format!(
                "{}: a symbolic link leads outside the linked service's root",
                self.show(rel)
            )))
        }
    }

    /// The root must exist on this node. Its absence is transient: the share may be
    /// unmounted here and mounted on another node, or come back.
    pub fn check_present(&self) -> Result<(), CopyError> {
        match fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(CopyError::fatal(format!(
                "{}: the root is not a directory",
                self.service
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CopyError::transient(format!(
                "{}: the root directory does not exist on this node (is the share mounted?)",
                self.service
            ))),
            Err(e) => Err(io_error(
                format!("{}: cannot reach the root directory", self.service),
                &e,
            )),
        }
    }
}

pub(super) use crate::job_spec::paths::{RelPath, is_pattern, matches_name, matches_path};

/// [`RelPath::parse`] for a root: the submission check applies the same rule, in the same
/// words, so a path refused here was normally refused at submit already.
pub(super) fn rel_path(root: &Root, text: &str) -> Result<RelPath, CopyError> {
    RelPath::parse(&root.service, text).map_err(CopyError::fatal)
}

pub(super) fn rel_to_path(rel: &RelPath) -> PathBuf {
    rel.names.iter().collect()
}

/// A file a sink writes, under the root.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub path: PathBuf,
    /// `service:path`, for messages.
    pub shown: String,
}

/// The file a tabular sink's path names: no wildcards, not a directory.
pub(super) fn sink_file(root: &Root, text: &str) -> Result<Target, CopyError> {
    let rel = crate::job_spec::paths::check_sink_file(&root.service, text).map_err(CopyError::fatal)?;
    let rel = rel_to_path(&rel);
    Ok(Target {
        path: root.dir.join(&rel),
        shown: root.show(&rel),
    })
}

/// What a source path turned out to name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SourceKind {
    File,
    Directory,
    Glob,
}

/// Which files a directory walk takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Walk {
    /// Tabular reads skip names starting with `.` or `_` under a directory, as Spark, Hive
    /// and pyarrow's datasets do: `_SUCCESS` markers, `.crc` side files and `_temporary/`
    /// work directories are not data.
    Table,
    /// Binary copies take every file (only our own staging files are left out).
    Binary,
}

/// One file a source names.
#[derive(Clone, Debug)]
pub(super) struct SourceFile {
    /// Relative to the directory the source names (for a glob, the part before the first
    /// wildcard; for a single file, its directory): the layout a binary copy keeps.
    pub rel: PathBuf,
    /// Relative to the root, for messages.
    pub under_root: PathBuf,
    pub path: PathBuf,
}

/// The files a source names, in path order.
#[derive(Debug)]
pub(super) struct Sources {
    pub kind: SourceKind,
    pub files: Vec<SourceFile>,
}

/// Expands a source path into its files: a file, every file under a directory, or every
/// file matching a glob. No file at all is a fatal error.
pub(super) fn resolve_sources(root: &Root, text: &str, walk: Walk) -> Result<Sources, CopyError> {
    let rel = rel_path(root, text)?;
    root.check_present()?;
    let literal = rel.names.iter().take_while(|n| !is_pattern(n)).count();
    let base_rel: PathBuf = rel.names[..literal].iter().collect();
    let base = root.dir.join(&base_rel);
    let pattern = &rel.names[literal..];

    let mut files = Vec::new();
    let kind = if pattern.is_empty() {
        let meta = match fs::metadata(&base) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CopyError::fatal(format!(
                    "{}: no such file or directory",
                    root.show(&base_rel)
                )));
            }
            Err(e) => return Err(io_error(format!("cannot read {}", root.show(&base_rel)), &e)),
        };
        if meta.is_file() {
            if rel.dir_syntax {
                return Err(CopyError::fatal(format!(
                    "{}/: is a file, not a directory",
                    root.show(&base_rel)
                )));
            }
            let name = base_rel.file_name().map(PathBuf::from).unwrap_or_default();
            files.push(SourceFile {
                rel: name,
                under_root: base_rel.clone(),
                path: base.clone(),
            });
            SourceKind::File
        } else if meta.is_dir() {
            walk_dir(root, &base, &base_rel, PathBuf::new(), &[], walk, &mut files)?;
            SourceKind::Directory
        } else {
            return Err(CopyError::fatal(format!(
                "{}: not a regular file or directory",
                root.show(&base_rel)
            )));
        }
    } else {
        match fs::metadata(&base) {
            Ok(meta) if meta.is_dir() => {
                walk_dir(root, &base, &base_rel, PathBuf::new(), pattern, walk, &mut files)?;
            }
            // A missing or non-directory base matches nothing; said below.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => {}
            Err(e) => return Err(io_error(format!("cannot read {}", root.show(&base_rel)), &e)),
        }
        SourceKind::Glob
    };

    if files.is_empty() {
        let what = match kind {
            SourceKind::Glob => "no file matches",
            _ => "holds no files",
        };
        return Err(CopyError::fatal(format!("{}:{}: {what}", root.service, text)));
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    let real_root = root.real()?;
    for file in &files {
        root.confine(&real_root, &file.path, &file.under_root)?;
    }
    Ok(Sources { kind, files })
}

/// Collects the files under `dir` (whose path from the walk's base is `rel`) that can match
/// `pattern` (empty: every file), depth first.
fn walk_dir(
    root: &Root,
    dir: &Path,
    base_rel: &Path,
    rel: PathBuf,
    pattern: &[String],
    walk: Walk,
    out: &mut Vec<SourceFile>,
) -> Result<(), CopyError> {
    let shown = || root.show(&base_rel.join(&rel));
    let entries = fs::read_dir(dir).map_err(|e| io_error(format!("cannot list {}", shown()), &e))?;
    let mut entries: Vec<fs::DirEntry> = entries
        .collect::<Result<_, _>>()
        .map_err(|e| io_error(format!("cannot list {}", shown()), &e))?;
    entries.sort_by_key(|e| e.file_name());

    for entry in entries {
        let name = entry.file_name();
        if is_staging_name(&name) {
            continue;
        }
        let text = name.to_string_lossy();
        // Hidden and underscore names are skipped only in plain directory reads; a glob
        // says by itself what it wants (and its wildcards follow the shell's dot rule).
        if walk == Walk::Table && pattern.is_empty() && (text.starts_with('.') || text.starts_with('_')) {
            continue;
        }
        let child_rel = rel.join(&name);
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| io_error(format!("cannot read {}", root.show(&base_rel.join(&child_rel))), &e))?;
        let (is_file, is_dir) = if file_type.is_symlink() {
            match fs::metadata(&path) {
                // Links to directories are not followed: they can loop or leave the root.
                Ok(meta) => (meta.is_file(), false),
                Err(_) => (false, false),
            }
        } else {
            (file_type.is_file(), file_type.is_dir())
        };
        let segments: Vec<String> = child_rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if is_dir {
            if pattern.is_empty() || could_match_below(pattern, &segments) {
                walk_dir(root, &path, base_rel, child_rel, pattern, walk, out)?;
            }
        } else if is_file && (pattern.is_empty() || matches_path(pattern, &segments)) {
            // Sockets, FIFOs and devices are passed over: reading a FIFO could block forever.
            out.push(SourceFile {
                under_root: base_rel.join(&child_rel),
                rel: child_rel,
                path,
            });
        }
    }
    Ok(())
}

/// Whether a directory (its names) can lead to a match, so that a walk need not enter
/// directories that cannot.
fn could_match_below(pattern: &[String], dirs: &[String]) -> bool {
    match (pattern.split_first(), dirs.split_first()) {
        (_, None) => !pattern.is_empty(),
        (None, Some(_)) => false,
        (Some((first, _)), Some((dir, _))) if first == "**" => !dir.starts_with('.'),
        (Some((first, rest)), Some((dir, dirs))) => matches_name(first, dir) && could_match_below(rest, dirs),
    }
}

/// Job ids go into file names: anything but letters, digits, `-` and `_` becomes `_`.
fn file_safe(job_id: &str) -> String {
    job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The staging file for `target_name`: `.{name}.shir-{job}-{attempt}.tmp`. Hidden, so that
/// globs and listings pass it over; recognisably ours; one per attempt, so that two attempts
/// of a job (a stale one still running) never write the same file. A long name is cut so
/// that the whole fits in a file name.
pub(super) fn staging_name(target_name: &OsStr, attempt: &AttemptId) -> OsString {
    let suffix = format!(".shir-{}-{}.tmp", file_safe(&attempt.job_id), attempt.attempt);
    let name = target_name.to_string_lossy();
    let room = NAME_MAX.saturating_sub(1 + suffix.len());
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    OsString::from(format!(".{}{suffix}", &name[..cut]))
}

/// Whether a name is one of our staging files (of any job and attempt).
pub(super) fn is_staging_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else { return false };
    staging_parts(name).is_some()
}

/// `(job, attempt)` of a staging name; the job part still holds the `.shir-` marker.
fn staging_parts(name: &str) -> Option<(&str, u32)> {
    let stem = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (head, attempt) = stem.rsplit_once('-')?;
    if attempt.is_empty() || !attempt.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let marker = head.rfind(".shir-")?;
    Some((&head[marker..], attempt.parse().ok()?))
}

/// Removes staging files that earlier attempts of this job left in `dir` (a worker killed
/// mid-copy cannot clean up after itself). Later attempts' files are left alone: only a
/// current attempt publishes, and a later one would be the current one.
pub(super) fn sweep_earlier_attempts(dir: &Path, attempt: &AttemptId) {
    let marker = format!(".shir-{}", file_safe(&attempt.job_id));
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        if let Some((job, n)) = staging_parts(text)
            && job == marker
            && n < attempt.attempt
        {
            // Best effort: a leftover costs disk space, never correctness.
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Creates `dir` (under the root) and any missing parents, fsyncing each parent after a
/// child appears so that the new entries survive a crash, and refuses a `dir` that really
/// lies outside the root (through a symbolic link). Records the directories it created in
/// `created`, outermost first, so that a discard can remove them again (also when a later
/// one fails).
pub(super) fn create_dirs(root: &Root, dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), CopyError> {
    let rel = dir.strip_prefix(&root.dir).unwrap_or(dir);
    let mut current = root.dir.clone();
    let mut shown = PathBuf::new();
    for name in rel.iter() {
        let parent = current.clone();
        current.push(name);
        shown.push(name);
        match fs::create_dir(&current) {
            Ok(()) => {
                created.push(current.clone());
                sync_dir(&parent).map_err(|e| io_error(format!("cannot sync {}", root.show(&shown)), &e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !current.is_dir() {
                    return Err(CopyError::fatal(format!(
                        "{}: is a file, but the copy needs a directory there",
                        root.show(&shown)
                    )));
                }
            }
            Err(e) => {
                return Err(io_error(
                    format!("cannot create the directory {}", root.show(&shown)),
                    &e,
                ));
            }
        }
    }
    root.confine(&root.real()?, dir, &shown)
}

/// Makes a directory's entries (a created, renamed or removed file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &str) -> Vec<String> {
        path.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn glob_names_match_like_the_shell() {
        assert!(matches_name("*.csv", "a.csv"));
        assert!(!matches_name("*.csv", ".csv"));
        assert!(!matches_name("*.csv", ".hidden.csv"));
        assert!(matches_name(".*.csv", ".hidden.csv"));
        assert!(matches_name("?.csv", "a.csv"));
        assert!(!matches_name("?.csv", "ab.csv"));
        assert!(matches_name("a*b*c", "aXXbYYbZc"));
        assert!(!matches_name("a*b*c", "aXXbYYbZ"));
        assert!(matches_name("*", "anything"));
        assert!(matches_name("día-?.csv", "día-1.csv"));
        assert!(!matches_name("a.csv", "b.csv"));
    }

    #[test]
    fn double_star_matches_any_depth_but_not_hidden_directories() {
        let pattern = names("**/*.csv");
        assert!(matches_path(&pattern, &names("a.csv")));
        assert!(matches_path(&pattern, &names("x/y/a.csv")));
        assert!(!matches_path(&pattern, &names("x/.git/a.csv")));
        assert!(!matches_path(&pattern, &names("x/a.txt")));
        let pattern = names("2026/*/day-?.csv");
        assert!(matches_path(&pattern, &names("2026/11/day-1.csv")));
        assert!(!matches_path(&pattern, &names("2026/11/12/day-1.csv")));
        assert!(could_match_below(&pattern, &names("2026/11")));
        assert!(!could_match_below(&pattern, &names("2025")));
    }

    #[test]
    fn staging_names_are_hidden_ours_and_per_attempt() {
        let attempt = AttemptId {
            job_id: "job/7".into(),
            attempt: 3,
        };
        let name = staging_name(OsStr::new("orders.csv"), &attempt);
        assert_eq!(name, ".orders.csv.shir-job_7-3.tmp");
        assert!(is_staging_name(&name));
        assert_eq!(staging_parts(name.to_str().unwrap()), Some((".shir-job_7", 3)));
        assert!(!is_staging_name(OsStr::new("orders.csv")));
        assert!(!is_staging_name(OsStr::new(".orders.csv.tmp")));

        let long = "x".repeat(300);
        let name = staging_name(OsStr::new(&long), &attempt);
        assert!(name.len() <= NAME_MAX, "{}", name.len());
        assert!(is_staging_name(&name));
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let root = Root {
            service: "share".into(),
            dir: PathBuf::from("/srv/share"),
        };
        for bad in ["/etc/passwd", "../x", "a/../../b", "a/..", ".."] {
            let err = rel_path(&root, bad).unwrap_err();
            assert!(!err.retryable, "{bad}");
            assert!(err.message.starts_with("share"), "{}", err.message);
        }
        let ok = rel_path(&root, "./in//2026/").unwrap();
        assert_eq!(ok.names, ["in", "2026"]);
        assert!(ok.dir_syntax);
    }
}
