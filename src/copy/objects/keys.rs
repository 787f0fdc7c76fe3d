//! From a dataset's path to keys: the objects a source names, and the key each copied file
//! gets under a sink.

use std::time::SystemTime;

use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use object_store::path::Path as Key;

use super::Bucket;
use crate::copy::CopyError;
use crate::job_spec::paths::{RelPath, matches_path};

/// One object a source names.
#[derive(Clone, Debug)]
pub(super) struct SourceObject {
    pub key: Key,
    /// Its names below what the source names: the layout a copy keeps.
    pub rel: Vec<String>,
    pub size: u64,
    pub modified: SystemTime,
    /// `service:key`.
    pub shown: String,
}

/// The objects `text` names in `bucket`, in key order, and whether it named exactly one.
/// None at all is a fatal error.
pub(super) async fn list(bucket: &Bucket, text: &str) -> Result<(bool, Vec<SourceObject>), CopyError> {
    let rel = RelPath::parse(&bucket.service, text).map_err(CopyError::fatal)?;
    let literal = rel.literal().to_vec();
    let pattern = rel.names[literal.len()..].to_vec();
    let base = key_of(&literal);
    if pattern.is_empty() && !rel.dir_syntax && !literal.is_empty() {
        match bucket.store.head(&base).await {
            Ok(meta) => {
                let object = SourceObject {
                    rel: vec![literal.last().cloned().unwrap_or_default()],
                    shown: bucket.show(&meta.location),
                    key: meta.location,
                    size: meta.size,
                    modified: meta.last_modified.into(),
                };
                return Ok((true, vec![object]));
            }
            // Not an object: a prefix, perhaps.
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(bucket.error(format!("cannot read {}", bucket.show(&base)), &e)),
        }
    }
    let prefix = (!literal.is_empty()).then_some(&base);
    let metas: Vec<object_store::ObjectMeta> = bucket
        .store
        .list(prefix)
        .try_collect()
        .await
        .map_err(|e| bucket.error(format!("cannot list {}:{text}", bucket.service), &e))?;
    let mut objects = Vec::new();
    for meta in metas {
        let names: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_owned()).collect();
        let Some(below) = names.get(literal.len()..) else {
            continue;
        };
        if below.is_empty() || (!pattern.is_empty() && !matches_path(&pattern, below)) {
            continue;
        }
        objects.push(SourceObject {
            rel: below.to_vec(),
            shown: bucket.show(&meta.location),
            key: meta.location,
            size: meta.size,
            modified: meta.last_modified.into(),
        });
    }
    if objects.is_empty() {
        return Err(CopyError::fatal(format!(
            "{}:{text}: no object matches (check the path: keys are case-sensitive)",
            bucket.service
        )));
    }
    objects.sort_by(|a, b| a.key.as_ref().cmp(b.key.as_ref()));
    Ok((false, objects))
}

/// Where a sink path puts copied files: under a prefix, each at its path below the source,
/// or (for one file, to a path not written as a directory) at that key.
#[derive(Clone, Debug)]
pub(super) struct SinkKeys {
    base: Vec<String>,
    into_prefix: bool,
}

impl SinkKeys {
    pub fn new(service: &str, text: &str, single: bool) -> Result<SinkKeys, CopyError> {
        let rel = RelPath::parse(service, text).map_err(CopyError::fatal)?;
        if rel.has_wildcard() {
            return Err(CopyError::fatal(format!(
                "{service}:{text}: a sink path cannot hold wildcards"
            )));
        }
        let into_prefix = !single || rel.dir_syntax || rel.names.is_empty();
        Ok(SinkKeys {
            base: rel.names,
            into_prefix,
        })
    }

    /// The key of the file at `rel` below the source.
    pub fn key(&self, rel: &[String]) -> Key {
        if self.into_prefix {
            let names: Vec<String> = self.base.iter().chain(rel).cloned().collect();
            key_of(&names)
        } else {
            key_of(&self.base)
        }
    }
}

/// A key from its names. Each name is taken as it is (object_store's `Path` encodes what a
/// key may not hold).
fn key_of(names: &[String]) -> Key {
    Key::from_iter(names.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_prefix_keeps_the_layout_and_a_file_path_names_the_key() {
        let rel = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let prefix = SinkKeys::new("lake", "archive/in/", true).unwrap();
        assert_eq!(prefix.key(&rel(&["a.bin"])).as_ref(), "archive/in/a.bin");
        let tree = SinkKeys::new("lake", "archive", false).unwrap();
        assert_eq!(tree.key(&rel(&["sub", "b.txt"])).as_ref(), "archive/sub/b.txt");
        let file = SinkKeys::new("lake", "raw/big.csv", true).unwrap();
        assert_eq!(file.key(&rel(&["whatever.csv"])).as_ref(), "raw/big.csv");
        let root = SinkKeys::new("lake", "", true).unwrap();
        assert_eq!(root.key(&rel(&["a.bin"])).as_ref(), "a.bin");
        assert!(SinkKeys::new("lake", "out/*.bin", false).is_err());
        assert!(SinkKeys::new("lake", "../x", false).is_err());
    }
}
