//! Durable Raft storage on sled: the log store (log entries, vote, committed and purge marks) and
//! the state machine (applied `IrState`, membership, current snapshot).
//!
//! Raft's safety argument assumes that whatever a node acknowledged survives a crash: a vote it
//! granted, entries it told the leader it holds, state it reported as applied. sled only promises
//! that writes are durable after a flush, so every method that acknowledges something flushes the
//! whole database before acknowledging it. That costs an fsync per acknowledgement, which shir's
//! write rate (joins, key rotations, certificates, bench puts) can afford.
//!
//! Layout (all values are JSON):
//! * `raft_log`: entry index as big-endian u64 (so byte order is index order) → `Entry`.
//! * `raft_meta`: `vote`, `committed`, `last_purged`.
//! * `sm`: `last_applied`, `last_membership`, `state` (the whole `IrState`), always written
//!   together in one batch so they never disagree after a crash.
//! * `snapshot`: `meta` and `data` of the current snapshot.

// `StorageError` is openraft's type and every trait method returns it; the helpers below return
// it too so `?` needs no conversions. Boxing it would only be unboxed again at the trait boundary.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{TransactionError, TransactionalTree};
use sled::{Batch, Db, Tree};

use crate::raft::types::{NodeId, TypeConfig};
use crate::state::{CommandResult, IrState};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const SM_TREE: &str = "sm";
const SNAPSHOT_TREE: &str = "snapshot";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_LAST_MEMBERSHIP: &[u8] = b"last_membership";
const KEY_STATE: &[u8] = b"state";
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled failed while opening the raft store")]
    Sled(#[from] sled::Error),
    #[error("cannot decode `{key}` in sled tree `{tree}`")]
    Decode {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Opens the Raft storage of one node.
pub struct SledStore;

impl SledStore {
    /// Opens (or creates) the Raft store in an already-open sled Db.
    ///
    /// `state` is the node-wide view of the applied state: it is overwritten here with what was
    /// last applied on disk, and from then on only the returned `StateMachineStore` writes it.
    pub fn open(db: &Db, state: Arc<RwLock<IrState>>) -> Result<(LogStore, StateMachineStore), StoreError> {
        let log_store = LogStore {
            db: db.clone(),
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
        };

        let sm = db.open_tree(SM_TREE)?;
        let applied = AppliedState {
            last_applied: load(&sm, SM_TREE, KEY_LAST_APPLIED)?.flatten(),
            last_membership: load(&sm, SM_TREE, KEY_LAST_MEMBERSHIP)?.unwrap_or_default(),
            state: load(&sm, SM_TREE, KEY_STATE)?.unwrap_or_default(),
        };
        *state.write().unwrap_or_else(|e| e.into_inner()) = applied.state.clone();

        let state_machine = StateMachineStore {
            db: db.clone(),
            sm,
            snapshots: db.open_tree(SNAPSHOT_TREE)?,
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
            applied,
            shared: state,
        };
        Ok((log_store, state_machine))
    }
}

/// Reads and decodes one key at open time; `None` if it was never written.
fn load<T: DeserializeOwned>(tree: &Tree, tree_name: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Decode {
                tree: tree_name,
                key: String::from_utf8_lossy(key).into_owned(),
                source,
            }),
    }
}

/// Like [`load`], but reports failures the way openraft wants them; `wrap` picks the
/// subject/verb of the error (e.g. `StorageIOError::read_vote`).
fn read_key<T: DeserializeOwned>(
    tree: &Tree,
    key: &[u8],
    wrap: fn(AnyError) -> StorageIOError<NodeId>,
) -> StorageResult<Option<T>> {
    match tree.get(key).map_err(|e| wrap(AnyError::new(&e)))? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| wrap(AnyError::new(&e)).into()),
    }
}

fn encode<T: Serialize>(value: &T, wrap: fn(AnyError) -> StorageIOError<NodeId>) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| wrap(AnyError::new(&e)).into())
}

/// Flushes every tree of the Db (sled flushes the shared page cache, not one tree).
async fn flush(db: &Db, wrap: fn(AnyError) -> StorageIOError<NodeId>) -> StorageResult<()> {
    db.flush_async()
        .await
        .map(drop)
        .map_err(|e| wrap(AnyError::new(&e)).into())
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log store. Cloning is cheap (sled trees are reference counted), which is how it doubles as
/// its own `LogReader` for replication tasks.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    log: Tree,
    meta: Tree,
}

impl LogStore {
    fn last_purged(&self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(read_key(&self.meta, KEY_LAST_PURGED, StorageIOError::read_logs)?.flatten())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = range.start_bound().map(|i| index_key(*i));
        let end = range.end_bound().map(|i| index_key(*i));
        let mut entries = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let entry = serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    #[tracing::instrument(level = "trace", skip_all)]
    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id = self.last_purged()?;
        let last_entry = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            None => None,
            Some((_, bytes)) => {
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
        };
        // An empty log still has a last log id: the purged one, which Raft needs to keep
        // matching the leader's log after a snapshot.
        let last_log_id = last_entry.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let bytes = encode(vote, StorageIOError::write_vote)?;
        self.meta
            .insert(KEY_VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        // A vote granted and then forgotten in a crash lets this node vote twice in one term.
        flush(&self.db, StorageIOError::write_vote).await
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        read_key(&self.meta, KEY_VOTE, StorageIOError::read_vote)
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let bytes = encode(&committed, StorageIOError::write)?;
        self.meta
            .insert(KEY_COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        // No flush: `apply` persists its own progress, so losing this mark in a crash only means
        // openraft re-applies fewer entries on restart and learns the rest of the commit index
        // from the leader. The next flush (append, vote, apply) carries it to disk anyway.
        Ok(())
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(read_key(&self.meta, KEY_COMMITTED, StorageIOError::read)?.flatten())
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One batch: sled applies it atomically, so a crash cannot keep a later entry of this
        // append without an earlier one, which would leave a hole.
        let mut batch = Batch::default();
        for entry in entries {
            let bytes = encode(&entry, StorageIOError::write_logs)?;
            batch.insert(&index_key(entry.log_id.index)[..], bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;

        // The callback tells openraft the entries may be acknowledged to the leader, which then
        // counts them towards a commit quorum: they must be on disk first.
        match self.db.flush_async().await {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(std::io::Error::other(e)));
                Err(err.into())
            }
        }
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Removing the whole tail in one batch never leaves a hole, whatever the crash point.
        let mut batch = Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Flushed so that entries the leader overruled cannot reappear after a restart and be
        // reported as this node's log.
        flush(&self.db, StorageIOError::write_logs).await
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The mark goes first and durably: if we crash before the entries are gone,
        // `get_log_state` still reports the right purge point and the leftovers are removed by
        // the next purge (which deletes everything up to its index, not just the new part).
        let bytes = encode(&Some(log_id), StorageIOError::write_logs)?;
        self.meta
            .insert(KEY_LAST_PURGED, bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        flush(&self.db, StorageIOError::write_logs).await?;

        let mut batch = Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// Everything the state machine is, in one value: what a snapshot carries and what `sm` stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: IrState,
}

impl AppliedState {
    /// Stages the three `sm` keys in one batch so they change together.
    fn to_batch(&self, wrap: fn(AnyError) -> StorageIOError<NodeId>) -> StorageResult<Batch> {
        let mut batch = Batch::default();
        batch.insert(KEY_LAST_APPLIED, encode(&self.last_applied, wrap)?);
        batch.insert(KEY_LAST_MEMBERSHIP, encode(&self.last_membership, wrap)?);
        batch.insert(KEY_STATE, encode(&self.state, wrap)?);
        Ok(batch)
    }
}

/// The state machine: applies committed commands to `IrState` and keeps the current snapshot.
pub struct StateMachineStore {
    db: Db,
    sm: Tree,
    snapshots: Tree,
    /// Serialises writers of the `snapshot` tree: a snapshot builder runs in its own task and
    /// must not overwrite a newer snapshot that `install_snapshot` stored meanwhile.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
    /// The applied state as persisted; the source of truth that `shared` mirrors.
    applied: AppliedState,
    shared: Arc<RwLock<IrState>>,
}

impl StateMachineStore {
    /// Publishes an applied state that is already on disk to the rest of the node.
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

fn snapshot_batch(meta: &Meta, data: &[u8]) -> StorageResult<Batch> {
    let meta_bytes =
        serde_json::to_vec(meta).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
    let mut batch = Batch::default();
    batch.insert(KEY_SNAPSHOT_META, meta_bytes);
    batch.insert(KEY_SNAPSHOT_DATA, data);
    Ok(batch)
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
        // Work on a copy: the node must never see state that a crash could take back.
        let mut next = self.applied.clone();
        let mut responses = Vec::new();
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResult::Ok,
                EntryPayload::Normal(ref cmd) => next.state.apply(cmd),
                EntryPayload::Membership(membership) => {
                    next.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::Ok
                }
            };
            responses.push(response);
        }
        if responses.is_empty() {
            return Ok(responses);
        }

        let batch = next.to_batch(StorageIOError::write_state_machine)?;
        self.sm
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        // Flushed before anyone sees it: a restarted node must come back with at least the
        // state it showed (revoked certificates above all), not wait for a leader to tell it
        // the commit index before it re-applies. Under load one flush covers a whole batch.
        flush(&self.db, StorageIOError::write_state_machine).await?;
        self.publish(next);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A copy, so the builder sees one consistent applied point while `apply` moves on.
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
        let decoded: AppliedState =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // The meta is what openraft reasons about (it purges the log up to it), so it wins over
        // whatever the payload says about the applied point.
        let next = AppliedState {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            state: decoded.state,
        };

        let sm_batch = next.to_batch(StorageIOError::write_state_machine)?;
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
        let data = encode(&self.applied, StorageIOError::read_state_machine)?;
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite, blank_ent, log_id, membership_ent};
    use openraft::{Membership, StorageHelper};

    use super::*;
    use crate::state::Command;

    /// Keeps the sled db's directory alive for as long as a suite test uses the store.
    struct TempDirGuard {
        _dir: tempfile::TempDir,
    }

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDirGuard> for SledBuilder {
        async fn build(&self) -> StorageResult<(TempDirGuard, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let db = sled::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
            let (log, sm) = SledStore::open(&db, Arc::default()).map_err(|e| StorageIOError::write(&e))?;
            Ok((TempDirGuard { _dir: dir }, log, sm))
        }
    }

    /// openraft's conformance suite; it runs each case on its own runtime, so no tokio::test.
    #[test]
    fn openraft_storage_suite() -> StorageResult<()> {
        Suite::test_all(SledBuilder)
    }

    fn put(term: u64, index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Normal(Command::Put {
                key: key.into(),
                value: value.into(),
            }),
        }
    }

    /// Opens a node's store at `path`; the sled Db closes once everything returned is dropped.
    fn open(path: &std::path::Path) -> (LogStore, StateMachineStore, Arc<RwLock<IrState>>) {
        // sled's flusher thread lets go of the previous handle's file lock a moment after the
        // handle is dropped; a restarted process never sees that, a test reopening at once can.
        let mut tries = 0;
        let db = loop {
            match sled::open(path) {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") && tries < 250 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("cannot reopen the store: {e}"),
            }
        };
        let shared = Arc::new(RwLock::new(IrState::default()));
        let (log, sm) = SledStore::open(&db, shared.clone()).unwrap();
        (log, sm, shared)
    }

    fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[tokio::test]
    async fn everything_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let membership = Membership::new(vec![BTreeSet::from([1u64])], None);
        // Shaped like a real log: `Raft::initialize` writes the first membership at index 0.
        let entries = vec![
            membership_ent::<TypeConfig>(0, 1, 0, vec![BTreeSet::from([1u64])]),
            blank_ent::<TypeConfig>(1, 1, 1),
            put(1, 2, "a", "1"),
            put(1, 3, "b", "2"),
            put(1, 4, "a", "3"),
        ];
        let vote = Vote::new_committed(1, 1);

        {
            let (mut log, mut sm, shared) = open(dir.path());
            log.blocking_append(entries.clone()).await.unwrap();
            log.save_vote(&vote).await.unwrap();
            // Entry 4 is committed but the node "stops" before applying it.
            log.save_committed(Some(log_id(1, 1, 4))).await.unwrap();

            let responses = sm.apply(entries[..4].to_vec()).await.unwrap();
            assert_eq!(responses, vec![CommandResult::Ok; 4]);
            assert_eq!(shared.read().unwrap().kv, kv(&[("a", "1"), ("b", "2")]));
        }

        let (mut log, mut sm, shared) = open(dir.path());
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(log.try_get_log_entries(0..5).await.unwrap(), entries);

        let (last_applied, last_membership) = sm.applied_state().await.unwrap();
        assert_eq!(last_applied, Some(log_id(1, 1, 3)));
        assert_eq!(
            last_membership,
            StoredMembership::new(Some(log_id(0, 1, 0)), membership)
        );
        assert_eq!(shared.read().unwrap().kv, kv(&[("a", "1"), ("b", "2")]));

        // What `Raft::new` does on start: re-apply up to the saved committed id.
        StorageHelper::new(&mut log, &mut sm).get_initial_state().await.unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 4)));
        assert_eq!(shared.read().unwrap().kv, kv(&[("a", "3"), ("b", "2")]));

        // Purges are remembered too, and the log state falls back to the purge point.
        log.purge(log_id(1, 1, 4)).await.unwrap();
        drop((log, sm));
        let (mut log, _sm, _shared) = open(dir.path());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 4)));
        assert!(log.try_get_log_entries(0..).await.unwrap().is_empty());
    }

    /// Set in the child process of `acknowledged_writes_survive_abort` to the db path.
    const CHILD_DB_ENV: &str = "SHIR_RAFT_STORE_CHILD_DB";

    /// Acknowledged writes must be on disk without sled's clean shutdown: a child process writes,
    /// then aborts (no destructors, so sled never gets to flush on drop), and the parent reopens.
    #[test]
    fn acknowledged_writes_survive_abort() {
        if let Ok(path) = std::env::var(CHILD_DB_ENV) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let (mut log, mut sm, _shared) = open(std::path::Path::new(&path));
                let entries = vec![
                    membership_ent::<TypeConfig>(0, 1, 0, vec![BTreeSet::from([1u64])]),
                    put(1, 1, "k", "v"),
                ];
                log.blocking_append(entries.clone()).await.unwrap();
                log.save_vote(&Vote::new(1, 1)).await.unwrap();
                sm.apply(entries).await.unwrap();
                // Still holding the stores: dropping the last Db handle would flush.
                std::process::abort();
            });
        }

        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "raft::store::tests::acknowledged_writes_survive_abort"])
            .env(CHILD_DB_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        // Aborting is the child's last step, so a clean exit or any other failure means it never
        // got that far.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "child did not reach abort: {status}");

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (mut log, mut sm, shared) = open(dir.path());
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
            assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 2);
            assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 1)));
            assert_eq!(shared.read().unwrap().kv, kv(&[("k", "v")]));
        });
    }

    #[tokio::test]
    async fn snapshot_moves_the_state_to_another_store() {
        let leader_dir = tempfile::tempdir().unwrap();
        let (_log, mut leader, leader_state) = open(leader_dir.path());
        let responses = leader
            .apply(vec![
                membership_ent::<TypeConfig>(1, 1, 1, vec![BTreeSet::from([1u64, 2])]),
                put(1, 2, "k", "v"),
                Entry {
                    log_id: log_id(1, 1, 3),
                    payload: EntryPayload::Normal(Command::RemoveNode { name: "ghost".into() }),
                },
            ])
            .await
            .unwrap();
        // One response per entry, in order, including what the command itself decided.
        assert_eq!(
            responses,
            vec![
                CommandResult::Ok,
                CommandResult::Ok,
                CommandResult::refused("no node named 'ghost'"),
            ]
        );
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 3)));

        let follower_dir = tempfile::tempdir().unwrap();
        let installed_meta = {
            let (_log, mut follower, follower_state) = open(follower_dir.path());
            let mut received = follower.begin_receiving_snapshot().await.unwrap();
            *received = *snapshot.snapshot;
            follower.install_snapshot(&snapshot.meta, received).await.unwrap();
            assert_eq!(*follower_state.read().unwrap(), *leader_state.read().unwrap());
            assert_eq!(
                follower.applied_state().await.unwrap(),
                leader.applied_state().await.unwrap()
            );
            snapshot.meta.clone()
        };

        // The installed snapshot and state are durable on the follower.
        let (_log, mut follower, follower_state) = open(follower_dir.path());
        assert_eq!(*follower_state.read().unwrap(), *leader_state.read().unwrap());
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, installed_meta);
        assert_eq!(current.meta.last_log_id, Some(log_id(1, 1, 3)));
    }
}
