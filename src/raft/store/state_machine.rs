//! The state machine: applies committed commands to `IrState`, writes the objects they
//! changed (and the applied log id, in the same sled batch), publishes the result to the
//! node's readers, and builds and installs snapshots as streams of objects.

// See `super`: openraft's error type is the one every method returns.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{TransactionError, TransactionalTree};
use sled::{Batch, Db, Tree};

use super::objects::{self, ObjectError};
use super::persist::{Change, Persister};
use super::{KEY_LAST_APPLIED, KEY_LAST_MEMBERSHIP, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, Membership, Meta};
use super::{encode, flush, read_key};
use crate::raft::types::{NodeId, TypeConfig};
use crate::state::{Command, CommandResult, IrState};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// First bytes of a snapshot in the keyed format. A snapshot that starts with `{` instead is
/// the one-value JSON of the versions before it, which a node still installs.
const SNAPSHOT_MAGIC: &[u8] = b"shir-snapshot/2\n";

/// Everything the state machine is: the applied point and the state it produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct AppliedState {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: Membership,
    pub state: IrState,
}

fn object_error(wrap: fn(AnyError) -> StorageIOError<NodeId>) -> impl Fn(ObjectError) -> StorageError<NodeId> {
    move |e| wrap(AnyError::new(&e)).into()
}

/// The state machine store of one node.
pub struct StateMachineStore {
    pub(super) db: Db,
    pub(super) sm: Tree,
    pub(super) snapshots: Tree,
    /// Serialises writers of the `snapshot` tree: a snapshot builder runs in its own task and
    /// must not overwrite a newer snapshot that `install_snapshot` stored meanwhile.
    pub(super) snapshot_lock: Arc<tokio::sync::Mutex<()>>,
    /// The applied state; the source of truth that `shared` mirrors. On disk once the
    /// persister has written it.
    pub(super) applied: AppliedState,
    pub(super) persister: Arc<Persister>,
    pub(super) shared: Arc<RwLock<IrState>>,
    /// The log's durable end, when a leader's entries may be committed before they are synced
    /// (see `Durable`): an entry is then applied only once it is on this node's disk. `None`:
    /// every entry openraft applies was synced before it committed.
    pub(super) durable: Option<super::Durable>,
}

impl StateMachineStore {
    /// Publishes an applied state that is already on disk to the rest of the node. The clone
    /// shares every unchanged object with the previous state (see `crate::state::IrState`).
    fn publish(&mut self, applied: AppliedState) {
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = applied.state.clone();
        self.applied = applied;
    }

    fn current_snapshot(&self) -> StorageResult<Option<(Meta, Vec<u8>)>> {
        let meta: Option<Meta> = read_key(&self.snapshots, KEY_SNAPSHOT_META, StorageIOError::read_state_machine)?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let data = self
            .snapshots
            .get(KEY_SNAPSHOT_DATA)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?
            .map(|v| v.to_vec())
            .unwrap_or_default();
        Ok(Some((meta, data)))
    }
}

/// The applied point, staged next to the objects it accounts for; the membership too when it
/// changed (every key written is one more record for sled to sync at the next flush).
fn stage_applied(changes: &mut Vec<Change>, applied: &AppliedState, membership_changed: bool) -> StorageResult<()> {
    changes.push((
        KEY_LAST_APPLIED.to_vec(),
        Some(encode(&applied.last_applied, StorageIOError::write_state_machine)?),
    ));
    if membership_changed {
        changes.push((
            KEY_LAST_MEMBERSHIP.to_vec(),
            Some(encode(&applied.last_membership, StorageIOError::write_state_machine)?),
        ));
    }
    Ok(())
}

fn persist_error(wrap: fn(AnyError) -> StorageIOError<NodeId>) -> impl Fn(String) -> StorageError<NodeId> {
    move |e| wrap(AnyError::error(e)).into()
}

fn snapshot_batch(meta: &Meta, data: &[u8]) -> StorageResult<Batch> {
    let meta_bytes =
        serde_json::to_vec(meta).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
    let mut batch = Batch::default();
    batch.insert(KEY_SNAPSHOT_META, meta_bytes);
    batch.insert(KEY_SNAPSHOT_DATA, data);
    Ok(batch)
}

/// Encodes `state` as a snapshot: the magic, then each object as (u32 length, key, u32
/// length, value), big-endian, one object at a time.
pub(super) fn encode_snapshot(state: &IrState) -> Result<Vec<u8>, ObjectError> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    objects::for_each(state, |key, value| {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(&value);
    })?;
    Ok(out)
}

/// Why a snapshot's bytes are not a snapshot.
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotError {
    #[error("the snapshot is truncated")]
    Truncated,
    #[error("the snapshot is in no format this version reads")]
    Format,
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("cannot decode a snapshot of the previous format")]
    Legacy(#[source] serde_json::Error),
}

/// One stored object: key and value.
type Object = (Vec<u8>, Vec<u8>);

/// The objects of a keyed snapshot, one at a time.
fn snapshot_objects(data: &[u8]) -> impl Iterator<Item = Result<Object, SnapshotError>> + '_ {
    let mut rest = &data[SNAPSHOT_MAGIC.len().min(data.len())..];
    let mut take = move || -> Result<Option<Object>, SnapshotError> {
        if rest.is_empty() {
            return Ok(None);
        }
        let mut field = || -> Result<Vec<u8>, SnapshotError> {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or(SnapshotError::Truncated)?;
            let len = u32::from_be_bytes(*len) as usize;
            let (bytes, tail) = tail.split_at_checked(len).ok_or(SnapshotError::Truncated)?;
            rest = tail;
            Ok(bytes.to_vec())
        };
        let key = field()?;
        let value = field()?;
        Ok(Some((key, value)))
    };
    std::iter::from_fn(move || take().transpose())
}

/// Decodes a snapshot of either format into the state it carries.
pub(super) fn decode_snapshot(data: &[u8]) -> Result<IrState, SnapshotError> {
    if data.starts_with(SNAPSHOT_MAGIC) {
        return objects::load(snapshot_objects(data));
    }
    if data.first() == Some(&b'{') {
        let old: AppliedState = serde_json::from_slice(data).map_err(SnapshotError::Legacy)?;
        return Ok(old.state);
    }
    Err(SnapshotError::Format)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.applied.last_applied, self.applied.last_membership.clone()))
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // A leader's own entries may be committed before its copy is synced (see `Durable`):
        // neither shown, nor stored, nor answered before it is.
        if let (Some(durable), Some(last)) = (&mut self.durable, entries.last()) {
            durable
                .wait(last.log_id.index)
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        // Work on a copy (cheap: it shares structure): the node must never see state that a
        // crash could take back.
        let mut next = self.applied.clone();
        let mut responses = Vec::new();
        let mut must_flush = false;
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResult::Ok,
                EntryPayload::Normal(ref cmd) => {
                    must_flush |= flush_before_showing(cmd);
                    next.state.apply(cmd)
                }
                EntryPayload::Membership(membership) => {
                    must_flush = true;
                    next.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::Ok
                }
            };
            responses.push(response);
        }
        if responses.is_empty() {
            return Ok(responses);
        }

        let mut changes = Vec::new();
        objects::stage_changes(&self.applied.state, &mut next.state, &mut changes)
            .map_err(object_error(StorageIOError::write_state_machine))?;
        stage_applied(
            &mut changes,
            &next,
            next.last_membership != self.applied.last_membership,
        )?;
        let wrap = persist_error(StorageIOError::write_state_machine);
        self.persister.write(changes);
        if must_flush {
            // A restarted node must come back with at least the trust it showed (a revoked
            // certificate above all, or a membership), not wait for a leader to tell it the
            // commit index before it re-applies.
            self.persister.flush().await.map_err(wrap)?;
        }
        // Anything else needs no flush of its own: the entries are durable in the log (a
        // majority synced them before they committed), so a crash only means re-applying
        // them from the log on restart; the persister and sled's timer flush carry these
        // keys to disk.
        self.publish(next);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A copy (cheap, shared), so the builder sees one applied point while `apply` moves on.
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            snapshot_lock: self.snapshot_lock.clone(),
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state = decode_snapshot(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // The meta is what openraft reasons about (it purges the log up to it), so it wins over
        // whatever the payload says about the applied point.
        let next = AppliedState {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            state,
        };

        // Changes of earlier applies still queued must not land on top of the snapshot's.
        self.persister
            .flush()
            .await
            .map_err(persist_error(StorageIOError::write_state_machine))?;
        // The old objects go and the snapshot's come, in one batch: a key the snapshot has
        // is overwritten (a batch keeps the last write per key), one it lacks is deleted.
        let mut sm_batch = Batch::default();
        for key in self.sm.iter().keys() {
            let key = key.map_err(|e| StorageIOError::write_state_machine(&e))?;
            if objects::is_object_key(&key) {
                sm_batch.remove(key);
            }
        }
        objects::for_each(&next.state, |key, value| sm_batch.insert(key.as_bytes(), value))
            .map_err(object_error(StorageIOError::write_state_machine))?;
        let mut applied = Vec::new();
        stage_applied(&mut applied, &next, true)?;
        for (key, value) in applied {
            sm_batch.insert(key, value.expect("stage_applied writes values"));
        }
        let snap_batch = snapshot_batch(meta, &data)?;
        let guard = self.snapshot_lock.lock().await;
        // One transaction over both trees: after a crash the stored snapshot and the applied
        // state are either both the old ones or both the new ones.
        (&self.sm, &self.snapshots)
            .transaction(|(sm, snaps): &(TransactionalTree, TransactionalTree)| {
                sm.apply_batch(&sm_batch)?;
                snaps.apply_batch(&snap_batch)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<sled::Error>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) | TransactionError::Storage(e) => e,
            })
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        flush(&self.db, StorageIOError::write_state_machine).await?;
        drop(guard);
        self.publish(next);
        Ok(())
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.current_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Commands whose effect a node must not forget across a crash once it has acted on it,
/// even for the moment until a leader tells it the commit index again: who belongs to the
/// IR, which certificates are revoked, which keys admit nodes.
fn flush_before_showing(cmd: &Command) -> bool {
    match cmd {
        Command::Bootstrap { .. }
        | Command::AddNode { .. }
        | Command::RemoveNode { .. }
        | Command::RegenerateKey { .. }
        | Command::RecordAdminCert { .. } => true,
        Command::Batch(commands) => commands.iter().any(flush_before_showing),
        _ => false,
    }
}

/// Builds a snapshot of the applied state as it was when the builder was created.
pub struct SnapshotBuilder {
    db: Db,
    snapshots: Tree,
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
    applied: AppliedState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = encode_snapshot(&self.applied.state).map_err(object_error(StorageIOError::read_state_machine))?;
        // sled's id generator is persistent and monotonic, so ids stay unique across restarts
        // even when two snapshots cover the same log id.
        let unique = self
            .db
            .generate_id()
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match &self.applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, unique),
            None => format!("none-{unique}"),
        };
        let meta = Meta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.last_membership.clone(),
            snapshot_id,
        };

        let _guard = self.snapshot_lock.lock().await;
        let stored: Option<Meta> = read_key(&self.snapshots, KEY_SNAPSHOT_META, StorageIOError::read_state_machine)?;
        // A snapshot installed while this one was being built may be newer; keep that one.
        let newer_stored = stored.is_some_and(|s| s.last_log_id > meta.last_log_id);
        if !newer_stored {
            self.snapshots
                .apply_batch(snapshot_batch(&meta, &data)?)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            let signature = meta.signature();
            self.db
                .flush_async()
                .await
                .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
