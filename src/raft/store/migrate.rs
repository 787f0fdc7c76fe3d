//! In-place upgrades of data dirs written by earlier versions: the state machine as one value
//! (`migrate`) and the Raft log in sled (`migrate_log`).
//!
//! The versions before the state machine was stored by key kept the whole `IrState` as one
//! JSON value under `sm/state`. On the first
//! open by this version it is split into one key per object, and `state` is removed, in one
//! sled batch: sled applies a batch atomically, so a kill during the migration leaves the
//! old layout (and the next start migrates again) or the new one, never a mix. The applied
//! log id and membership keys are the same in both layouts and stay as they are.

use sled::{Batch, Db, Tree};

use super::StoreError;
use super::objects;
use crate::state::IrState;

/// The old layout's one key.
pub(super) const KEY_STATE: &[u8] = b"state";

/// Migrates `sm` if it is in the old layout; returns how many objects were written.
pub(super) fn migrate(db: &Db, sm: &Tree) -> Result<Option<usize>, StoreError> {
    let Some(old) = sm.get(KEY_STATE)? else {
        return Ok(None);
    };
    let state: IrState = serde_json::from_slice(&old).map_err(|source| StoreError::Decode {
        tree: super::SM_TREE,
        key: String::from_utf8_lossy(KEY_STATE).into_owned(),
        source,
    })?;
    let mut batch = Batch::default();
    let mut written = 0;
    objects::for_each(&state, |key, value| {
        written += 1;
        batch.insert(key.as_bytes(), value);
    })?;
    batch.remove(KEY_STATE);
    sm.apply_batch(batch)?;
    // Durable before anything else is written on top of the new layout.
    db.flush()?;
    tracing::info!(
        objects = written,
        bytes = old.len(),
        "state machine migrated from one value to one key per object"
    );
    Ok(Some(written))
}

/// Moves the Raft log of a data dir written before the log had its own files (sled trees
/// `raft_log` and `raft_meta`) into a new [`wal`](super::wal) log at `log_dir`, once.
///
/// The new log is written beside `log_dir` and renamed into place when synced, and the sled
/// trees are dropped only after that: a kill before the rename leaves the old layout (and the
/// next start migrates again from it), a kill after it the new one, whose presence alone
/// decides. Leftover trees from a kill between the rename and the drop are dropped then.
pub(super) fn migrate_log(db: &Db, log_dir: &std::path::Path) -> Result<(), StoreError> {
    let had_log = db.tree_names().iter().any(|n| n.as_ref() == super::LOG_TREE.as_bytes());
    if !log_dir.exists() && had_log {
        let log = db.open_tree(super::LOG_TREE)?;
        let meta = db.open_tree(super::META_TREE)?;
        let vote = super::load(&meta, super::META_TREE, super::KEY_VOTE)?;
        let committed = super::load(&meta, super::META_TREE, super::KEY_COMMITTED)?.flatten();
        let purged = super::load(&meta, super::META_TREE, super::KEY_LAST_PURGED)?.flatten();
        let entries = log.iter().map(|item| {
            let (_, bytes) = item.map_err(std::io::Error::other)?;
            serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        let count = log.len();
        super::wal::create(log_dir, |out| {
            super::wal::initial_records(out, vote, committed, purged, entries)
        })?;
        tracing::info!(entries = count, "Raft log moved from sled to its own files");
    }
    if had_log {
        db.drop_tree(super::LOG_TREE)?;
        db.drop_tree(super::META_TREE)?;
        db.flush()?;
    }
    Ok(())
}
