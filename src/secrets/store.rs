//! Node-local storage of the data key: a local key file wraps the IR's data key on disk.
//!
//! The local key never leaves the node, so a copied `data.key` alone is useless, and both
//! files are written so that no reader ever sees them half-written or world-readable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rand::RngCore as _;
use rand::rngs::OsRng;

use super::{DataKey, SecretsError, open, seal};

pub const LOCAL_KEY_FILE: &str = "local.key";
pub const DATA_KEY_FILE: &str = "data.key";
/// Binds the sealed data key to its purpose, so no other sealed blob can stand in for it.
const DATA_KEY_AAD: &[u8] = b"shir data key";

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SecretsError {
    let path = path.to_path_buf();
    move |source| SecretsError::Io { action, path, source }
}

/// Writes `bytes` to `path` readable by the owner only, atomically: a temporary file created
/// with mode 0600 (so the content is never exposed, even briefly), fsynced, renamed over
/// `path`, and the directory fsynced so the rename survives a crash.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| SecretsError::Io {
            action: "write",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        })?
        .to_string_lossy()
        .into_owned();
    let mut suffix = [0u8; 6];
    OsRng.fill_bytes(&mut suffix);
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(suffix)));

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err("replace", path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", &dir))
    })();
    if result.is_err() {
        // Best effort: a leftover temp file holds a secret, so do not leave it behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Saves `key` under `dir`, wrapped by the node's local key. An existing `local.key` is
/// reused: replacing it before `data.key` is rewritten would strand the old `data.key` if
/// the process died in between.
pub fn store_data_key(dir: &Path, key: &DataKey) -> Result<(), SecretsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    let local_path = dir.join(LOCAL_KEY_FILE);
    let local = match read_local_key(&local_path) {
        Ok(k) => k,
        Err(SecretsError::MissingFile { .. }) => {
            let k = DataKey::generate();
            write_private_file(&local_path, k.expose())?;
            k
        }
        Err(e) => return Err(e),
    };
    let sealed = seal(&local, DATA_KEY_AAD, key.expose());
    write_private_file(&dir.join(DATA_KEY_FILE), sealed.as_bytes())
}

/// Loads the data key saved by [`store_data_key`].
pub fn load_data_key(dir: &Path) -> Result<DataKey, SecretsError> {
    let local = read_local_key(&dir.join(LOCAL_KEY_FILE))?;
    let data_path = dir.join(DATA_KEY_FILE);
    let text = read_file(&data_path)?;
    let damaged = |why: String| SecretsError::DamagedFile {
        path: data_path.clone(),
        why,
    };
    let text = std::str::from_utf8(&text).map_err(|_| damaged("not text".into()))?;
    let opened = open(&local, DATA_KEY_AAD, text).map_err(|e| match e {
        SecretsError::DoesNotOpen => damaged(format!(
            "it does not open with {LOCAL_KEY_FILE} (the two files do not belong together, \
             or {DATA_KEY_FILE} was altered)"
        )),
        other => damaged(other.to_string()),
    })?;
    DataKey::from_bytes(opened.expose()).map_err(|_| damaged(format!("holds {} bytes, expected 32", opened.len())))
}

fn read_file(path: &Path) -> Result<Vec<u8>, SecretsError> {
    fs::read(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SecretsError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            io_err("read", path)(e)
        }
    })
}

fn read_local_key(path: &Path) -> Result<DataKey, SecretsError> {
    let bytes = zeroize::Zeroizing::new(read_file(path)?);
    // Like ssh with its private keys: a wrapping key others can read protects nothing.
    let mode = fs::metadata(path)
        .map_err(io_err("inspect", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(SecretsError::InsecurePermissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    DataKey::from_bytes(&bytes).map_err(|_| SecretsError::DamagedFile {
        path: path.to_path_buf(),
        why: format!("holds {} bytes, expected 32", bytes.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn store_and_load_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        store_data_key(dir.path(), &key).unwrap();
        assert_eq!(load_data_key(dir.path()).unwrap(), key);
        assert_eq!(mode(&dir.path().join(LOCAL_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join(DATA_KEY_FILE)), 0o600);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn restoring_reuses_local_key() {
        let dir = tempfile::tempdir().unwrap();
        store_data_key(dir.path(), &DataKey::generate()).unwrap();
        let local_before = fs::read(dir.path().join(LOCAL_KEY_FILE)).unwrap();
        let second = DataKey::generate();
        store_data_key(dir.path(), &second).unwrap();
        assert_eq!(fs::read(dir.path().join(LOCAL_KEY_FILE)).unwrap(), local_before);
        assert_eq!(load_data_key(dir.path()).unwrap(), second);
    }

    #[test]
    fn write_private_file_replaces_readable_file_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_data_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains(LOCAL_KEY_FILE) && err.contains("missing"), "{err}");

        store_data_key(dir.path(), &DataKey::generate()).unwrap();
        fs::remove_file(dir.path().join(DATA_KEY_FILE)).unwrap();
        let err = load_data_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains(DATA_KEY_FILE) && err.contains("missing"), "{err}");

        write_private_file(&dir.path().join(DATA_KEY_FILE), b"garbage").unwrap();
        let err = load_data_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains(DATA_KEY_FILE) && err.contains("damaged"), "{err}");

        // A data.key from another node does not open with this node's local key.
        let other = tempfile::tempdir().unwrap();
        store_data_key(other.path(), &DataKey::generate()).unwrap();
        fs::copy(other.path().join(DATA_KEY_FILE), dir.path().join(DATA_KEY_FILE)).unwrap();
        let err = load_data_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains("do not belong together"), "{err}");

        write_private_file(&dir.path().join(LOCAL_KEY_FILE), b"short").unwrap();
        let err = load_data_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains(LOCAL_KEY_FILE) && err.contains("damaged"), "{err}");
    }

    #[test]
    fn readable_local_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        store_data_key(dir.path(), &DataKey::generate()).unwrap();
        let local = dir.path().join(LOCAL_KEY_FILE);
        fs::set_permissions(&local, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_data_key(dir.path()).unwrap_err();
        assert!(matches!(err, SecretsError::InsecurePermissions { mode: 0o644, .. }));
    }
}
