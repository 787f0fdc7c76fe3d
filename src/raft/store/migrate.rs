//! In-place upgrade of a data dir written before the state machine was stored by key.
//!
//! Those versions kept the whole `IrState` as one JSON value under `sm/state`. On the first
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
