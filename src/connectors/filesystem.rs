//! Filesystem linked services: a directory on the node (a local disk or a mounted share),
//! its one field and the probe (is it a directory, can it be listed, can it be written).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{FieldKind, FieldSpec, ProbeError, ServiceSpec};

pub(super) const FIELDS: &[FieldSpec] = &[FieldSpec {
    name: "root",
    required: true,
    secret: false,
    kind: FieldKind::Path,
    about: "absolute path of the directory on the node (a local disk or a mounted share)",
}];

pub(super) fn target(spec: &ServiceSpec) -> String {
    format!("the directory {}", spec.get("root").unwrap_or_default())
}

pub(super) async fn probe(spec: &ServiceSpec) -> Result<String, ProbeError> {
    let root = PathBuf::from(spec.get("root").unwrap_or_default());
    // std::fs blocks. On a runtime thread a hung network share would stall the runtime and
    // the caller's timeout could never fire; on a blocking thread the timeout answers the
    // operator, though the thread itself stays stuck until the share answers.
    tokio::task::spawn_blocking(move || probe_dir(&root))
        .await
        .map_err(|e| ProbeError::FilesystemTaskLost { detail: e.to_string() })?
}

fn probe_dir(root: &Path) -> Result<String, ProbeError> {
    let shown = root.display();
    let dir = || shown.to_string();
    let meta = fs::metadata(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ProbeError::DirMissing { dir: dir() },
        _ => ProbeError::DirUnreadable {
            dir: dir(),
            detail: e.to_string(),
        },
    })?;
    if !meta.is_dir() {
        return Err(ProbeError::NotADir { dir: dir() });
    }

    // One entry proves the directory can be listed; listing all of it could take minutes
    // on a large share.
    let unlistable = |e: io::Error| ProbeError::DirUnlistable {
        dir: dir(),
        detail: e.to_string(),
    };
    let mut entries = fs::read_dir(root).map_err(unlistable)?;
    if let Some(Err(e)) = entries.next() {
        return Err(unlistable(e));
    }

    // Permission bits do not tell: ACLs, read-only mounts and root squash on NFS all decide
    // otherwise. Creating a file is the only real answer. The name is unique so that probes
    // from several nodes on one share never meet.
    let name = format!(".shir-probe-{}-{:016x}", std::process::id(), rand::random::<u64>());
    let path = root.join(&name);
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(file) => {
            drop(file);
            fs::remove_file(&path).map_err(|e| ProbeError::ProbeFileLeft {
                dir: dir(),
                file: name.clone(),
                detail: e.to_string(),
            })?;
            Ok(format!("{shown} is a directory, readable and writable"))
        }
        Err(e) => Ok(format!("{shown} is a directory, readable, not writable ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::{ServiceType, probe};
    use super::*;

    fn spec(root: &Path) -> ServiceSpec {
        ServiceSpec::new(ServiceType::Filesystem).with("root", root.to_str().unwrap())
    }

    #[tokio::test]
    async fn filesystem_probe_finds_a_writable_directory_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("existing.csv"), "a,b\n").unwrap();
        let ok = probe(&spec(dir.path()), None).await.unwrap();
        assert!(ok.contains("readable and writable"), "{ok}");
        assert!(ok.contains(&dir.path().display().to_string()), "{ok}");
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["existing.csv"], "the probe file was not removed");
    }

    #[tokio::test]
    async fn filesystem_probe_of_a_missing_root_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-there");
        let err = probe(&spec(&missing), None).await.unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("not-there"), "{err}");
    }

    #[tokio::test]
    async fn filesystem_probe_of_a_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain.txt");
        fs::write(&file, "x").unwrap();
        let err = probe(&spec(&file), None).await.unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[tokio::test]
    async fn filesystem_probe_of_a_read_only_directory_says_not_writable() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            println!("skipped: running as root, whom permission bits do not stop from writing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ro");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o555)).unwrap();
        let outcome = probe(&spec(&root), None).await;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let ok = outcome.unwrap();
        assert!(ok.contains("readable, not writable"), "{ok}");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn filesystem_probe_of_an_unlistable_directory_fails() {
        // SAFETY: as above.
        if unsafe { libc::geteuid() } == 0 {
            println!("skipped: running as root, whom permission bits do not stop from listing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wx");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o311)).unwrap();
        let outcome = probe(&spec(&root), None).await;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let err = outcome.unwrap_err().to_string();
        assert!(err.contains("cannot list"), "{err}");
    }
}
