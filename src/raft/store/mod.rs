//! Durable Raft storage: the log store (entries, vote, committed and purge marks: `log`, on
//! the node's own log files, `wal`) and the state machine on sled (applied state stored by
//! key, membership, current snapshot: `state_machine`, `objects`), and the upgrade of data
//! dirs of earlier layouts (`migrate`).
//!
//! Raft's safety argument assumes that whatever a node acknowledged survives a crash: a vote it
//! granted, entries it told the leader it holds. Those are records in the log files, synced
//! (`fdatasync`) before they are acknowledged, one sync per append. Applying a committed entry
//! is different: the entry is already durable on a majority, so `apply` flushes sled only for
//! commands whose effect a restarted node must not forget even for a moment (members,
//! revocations, keys); otherwise its keys reach sled in the batches of the state machine's
//! writer thread (`persist`), and a crash before that means re-applying from the log, which
//! keeps every entry after the durable applied id (a purge flushes the writer first). docs/performance.md has the figures behind this.
//!
//! Why the state is kept in memory as persistent maps (`imbl`) and written per key, rather than
//! served from sled: every reader in the node (`Node::read_state`, the dispatcher's rounds,
//! the workers' polls) reads a consistent `IrState` under a lock it holds for microseconds;
//! sled reads would make each of those a decode, and per-object locks would lose the one
//! consistent view `apply` must produce. With persistent maps the applied copy is an O(1)
//! clone that shares every unchanged object, so publishing to readers stays
//! `Arc<RwLock<IrState>>` (the API everything calls) at a cost independent of history, and
//! `apply` writes only the objects it changed, which the maps record (`state::Tracked`).
//!
//! Layout:
//! * `raft-log/` (beside sled's directory): the log's segment files, `wal` has the format.
//!   Data dirs of earlier versions kept the log in sled trees `raft_log` (entry index as
//!   big-endian u64 → `Entry`) and `raft_meta` (`vote`, `committed`, `last_purged`); they are
//!   moved on open.
//! * sled tree `sm`: `last_applied`, `last_membership`, and one key per object of the state
//!   (`objects` has the kinds), written in one batch per apply so they never disagree after a
//!   crash. Old data dirs have a single `state` key instead, converted on open. Values JSON.
//! * sled tree `snapshot`: `meta` and `data` of the current snapshot; `data` is the objects
//!   one after another (`state_machine`), not one JSON value.

// `StorageError` is openraft's type and every trait method returns it; the helpers below return
// it too so `?` needs no conversions. Boxing it would only be unboxed again at the trait boundary.
#![allow(clippy::result_large_err)]

mod log;
mod migrate;
mod objects;
mod persist;
mod state_machine;
mod wal;

use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::{AnyError, BasicNode, SnapshotMeta, StorageError, StorageIOError, StoredMembership};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::{Db, Tree};

pub use self::log::LogStore;
use self::state_machine::AppliedState;
pub use self::state_machine::{SnapshotBuilder, StateMachineStore};
pub use self::wal::Durable;
use crate::raft::types::NodeId;
use crate::state::IrState;

// The log's sled trees and keys of earlier versions, read once by `migrate::migrate_log`.
const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const SM_TREE: &str = "sm";
const SNAPSHOT_TREE: &str = "snapshot";

/// Beside sled's directory in a data dir: the log's files.
pub const LOG_DIR: &str = "raft-log";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_LAST_MEMBERSHIP: &[u8] = b"last_membership";
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
    #[error("cannot read the state machine's objects")]
    Objects(#[from] objects::ObjectError),
    #[error("cannot open the Raft log")]
    Log(#[from] std::io::Error),
}

/// Opens the Raft storage of one node.
pub struct RaftStore;

impl RaftStore {
    /// Opens (or creates) the Raft store: the log in `log_dir`, the state machine in an
    /// already-open sled Db; upgrades an old layout.
    ///
    /// `state` is the node-wide view of the applied state: it is overwritten here with what was
    /// last applied on disk, and from then on only the returned `StateMachineStore` writes it.
    /// `me`, this node's id, lets its entries as leader be replicated while they are synced
    /// (see [`Durable`]).
    pub fn open(
        db: &Db,
        log_dir: &Path,
        state: Arc<RwLock<IrState>>,
        me: Option<NodeId>,
    ) -> Result<(LogStore, StateMachineStore), StoreError> {
        migrate::migrate_log(db, log_dir)?;
        let sm = db.open_tree(SM_TREE)?;
        let persister = Arc::new(persist::Persister::start(db.clone(), sm.clone())?);
        let log_store = LogStore {
            wal: Arc::new(wal::Wal::open(log_dir)?),
            persister: persister.clone(),
            me,
        };

        migrate::migrate(db, &sm)?;
        let objects = sm
            .iter()
            .filter(|item| item.as_ref().map_or(true, |(k, _)| objects::is_object_key(k)))
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from));
        let applied = AppliedState {
            last_applied: load(&sm, SM_TREE, KEY_LAST_APPLIED)?.flatten(),
            last_membership: load(&sm, SM_TREE, KEY_LAST_MEMBERSHIP)?.unwrap_or_default(),
            state: objects::load(objects)?,
        };
        *state.write().unwrap_or_else(|e| e.into_inner()) = applied.state.clone();

        let state_machine = StateMachineStore {
            db: db.clone(),
            sm,
            snapshots: db.open_tree(SNAPSHOT_TREE)?,
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
            applied,
            persister,
            shared: state,
            durable: me.map(|_| log_store.durable()),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::testing::{StoreBuilder, Suite, blank_ent, log_id, membership_ent};
    use openraft::{Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageHelper, Vote};

    use super::*;
    use crate::raft::types::TypeConfig;
    use crate::state::{Command, CommandResult, Tracked};

    /// Keeps the sled db's directory alive for as long as a suite test uses the store.
    struct TempDirGuard {
        _dir: tempfile::TempDir,
    }

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDirGuard> for SledBuilder {
        async fn build(&self) -> StorageResult<(TempDirGuard, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let db = sled::open(dir.path().join("db")).map_err(|e| StorageIOError::write(&e))?;
            let (log, sm) = RaftStore::open(&db, &dir.path().join(LOG_DIR), Arc::default(), None)
                .map_err(|e| StorageIOError::write(&e))?;
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

    /// Opens the sled Db of a node's store in `path`, waiting out a previous handle.
    fn open_db(path: &std::path::Path) -> Db {
        let path = path.join("db");
        // sled's flusher thread lets go of the previous handle's file lock a moment after the
        // handle is dropped; a restarted process never sees that, a test reopening at once can.
        let mut tries = 0;
        loop {
            match sled::open(&path) {
                Ok(db) => return db,
                Err(e) if e.to_string().contains("could not acquire lock") && tries < 250 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("cannot reopen the store: {e}"),
            }
        }
    }

    /// Opens a node's store in `path` (a data dir's `db` and `raft-log`); the sled Db closes
    /// once everything returned is dropped.
    fn open(path: &std::path::Path) -> (LogStore, StateMachineStore, Arc<RwLock<IrState>>) {
        let db = open_db(path);
        let shared = Arc::new(RwLock::new(IrState::default()));
        let (log, sm) = RaftStore::open(&db, &path.join(LOG_DIR), shared.clone(), None).unwrap();
        (log, sm, shared)
    }

    fn kv(pairs: &[(&str, &str)]) -> Tracked<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[tokio::test]
    async fn only_a_leaders_own_entries_are_reported_before_their_sync() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let shared = Arc::new(RwLock::new(IrState::default()));
        let (mut log, mut sm) = RaftStore::open(&db, &dir.path().join(LOG_DIR), shared.clone(), Some(1)).unwrap();
        let ent = |term, node, index| blank_ent::<TypeConfig>(term, node, index);
        assert!(!log.own_as_leader(&ent(1, 1, 1)), "no vote yet");
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        assert!(!log.own_as_leader(&ent(2, 1, 1)), "a candidate is not a leader");
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        assert!(log.own_as_leader(&ent(2, 1, 1)));
        assert!(
            !log.own_as_leader(&ent(1, 1, 1)),
            "entries of its earlier term come from another leader now"
        );
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        assert!(
            !log.own_as_leader(&ent(3, 2, 1)),
            "a follower's entries wait for their sync"
        );
        assert!(!log.own_as_leader(&ent(2, 1, 1)));

        // Reported at once as leader, they are still applied only once synced, and then shown.
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        let entries = vec![ent(4, 1, 0), put(4, 1, "k", "v")];
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries).await.unwrap();
        assert_eq!(shared.read().unwrap().kv, kv(&[("k", "v")]));
        assert_eq!(log.durable().clamp(Some(log_id(4, 1, 1))), Some(log_id(4, 1, 1)));

        // An entry not on disk yet is not applied: here it is not even written.
        let later = vec![put(4, 2, "k", "w")];
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(300), sm.apply(later.clone())).await;
        assert!(waiting.is_err(), "applied before it was durable");
        assert_eq!(shared.read().unwrap().kv, kv(&[("k", "v")]));
        assert_eq!(log.durable().clamp(Some(log_id(4, 1, 2))), Some(log_id(4, 1, 1)));
        log.blocking_append(later.clone()).await.unwrap();
        sm.apply(later).await.unwrap();
        assert_eq!(shared.read().unwrap().kv, kv(&[("k", "w")]));
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

    /// A state with something of every kind, jobs in several phases included.
    fn rich_state() -> IrState {
        use crate::job_spec::{CsvOptions, DatasetRef, Format, JobSpec, Location, RetryPolicy};
        use crate::state::jobs::Job;
        let mut s = IrState::default();
        s.apply(&Command::Put {
            key: "a".into(),
            value: "1".into(),
        });
        s.apply(&Command::RemoveNode { name: "ghost".into() });
        s.revoked_serials.insert("0badc0de".into());
        s.node_limits.insert(3, 2);
        let ds = |p: &str| DatasetRef {
            service: "share".into(),
            location: Location::Path(p.into()),
            format: Format::Csv(CsvOptions::default()),
        };
        let spec = JobSpec {
            name: "copy".into(),
            source: ds("in.csv"),
            sink: ds("out.csv"),
            retry: RetryPolicy::default(),
            stall_timeout_ms: crate::job_spec::DEFAULT_STALL_TIMEOUT_MS,
            if_exists: Default::default(),
            create_table: false,
            mapping: Default::default(),
            bad_rows: None,
        };
        for id in ["j1", "j2"] {
            s.apply(&Command::SubmitJob {
                job: Job::queued(id.into(), spec.clone(), 5),
            });
        }
        s.apply(&Command::CancelJob {
            job_id: "j2".into(),
            now_ms: 6,
        });
        s
    }

    /// A data dir of the versions that stored the state as one JSON value (`sm/state`),
    /// written the way they wrote it, opens with its state, and in the new layout from then on.
    #[tokio::test]
    async fn an_old_layout_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let state = rich_state();
        {
            let db = open_db(dir.path());
            let sm = db.open_tree(SM_TREE).unwrap();
            sm.insert(KEY_LAST_APPLIED, serde_json::to_vec(&Some(log_id(1, 1, 7))).unwrap())
                .unwrap();
            sm.insert(
                KEY_LAST_MEMBERSHIP,
                serde_json::to_vec(&super::Membership::default()).unwrap(),
            )
            .unwrap();
            sm.insert(migrate::KEY_STATE, serde_json::to_vec(&state).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        for _ in 0..2 {
            // Twice: the second open finds the new layout and must not migrate again.
            let (_log, mut sm, shared) = open(dir.path());
            assert_eq!(*shared.read().unwrap(), state);
            assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 7)));
            assert!(sm.sm.get(migrate::KEY_STATE).unwrap().is_none());
            assert!(sm.sm.get(b"job/j1").unwrap().is_some());
            assert_eq!(shared.read().unwrap().jobs.active().count(), 1);
        }
    }

    /// Writes a log the way the versions that kept it in sled did.
    fn write_sled_log(path: &std::path::Path, entries: &[Entry<TypeConfig>], vote: Vote<NodeId>) {
        let db = open_db(path);
        let log = db.open_tree(LOG_TREE).unwrap();
        for e in entries {
            log.insert(e.log_id.index.to_be_bytes(), serde_json::to_vec(e).unwrap())
                .unwrap();
        }
        let meta = db.open_tree(META_TREE).unwrap();
        meta.insert(KEY_VOTE, serde_json::to_vec(&vote).unwrap()).unwrap();
        meta.insert(KEY_COMMITTED, serde_json::to_vec(&Some(log_id(1, 1, 2))).unwrap())
            .unwrap();
        meta.insert(KEY_LAST_PURGED, serde_json::to_vec(&Some(log_id(0, 1, 0))).unwrap())
            .unwrap();
        // Purged entries are applied ones.
        let sm = db.open_tree(SM_TREE).unwrap();
        sm.insert(KEY_LAST_APPLIED, serde_json::to_vec(&Some(log_id(0, 1, 0))).unwrap())
            .unwrap();
        db.flush().unwrap();
    }

    /// A data dir whose log is in sled opens with the same log, vote and marks, moved to the
    /// log files once; a kill before the move finished (its staging directory left) or after
    /// it (the sled trees left) opens the same way.
    #[tokio::test]
    async fn a_log_kept_in_sled_is_moved_once() {
        let entries = vec![
            blank_ent::<TypeConfig>(1, 1, 1),
            put(1, 2, "a", "1"),
            put(1, 3, "b", "2"),
        ];
        let vote = Vote::new_committed(1, 1);
        for crash in ["none", "before the rename", "before the drop"] {
            let dir = tempfile::tempdir().unwrap();
            write_sled_log(dir.path(), &entries, vote);
            match crash {
                "before the rename" => {
                    let staging = dir.path().join(format!("{LOG_DIR}.new"));
                    std::fs::create_dir(&staging).unwrap();
                    std::fs::write(staging.join("0000000000000001.log"), b"half a log").unwrap();
                }
                "before the drop" => {
                    // Moved once; then the old trees are back beside the new log, one of
                    // them with an entry the log does not have, which must not count.
                    drop(open(dir.path()));
                    write_sled_log(dir.path(), &entries, vote);
                    let db = open_db(dir.path());
                    let log = db.open_tree(LOG_TREE).unwrap();
                    log.insert(9u64.to_be_bytes(), b"stale".to_vec()).unwrap();
                    db.flush().unwrap();
                }
                _ => {}
            }
            for _ in 0..2 {
                let (mut log, mut sm, shared) = open(dir.path());
                assert_eq!(log.read_vote().await.unwrap(), Some(vote), "{crash}");
                assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 2)), "{crash}");
                let state = log.get_log_state().await.unwrap();
                assert_eq!(state.last_purged_log_id, Some(log_id(0, 1, 0)), "{crash}");
                assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)), "{crash}");
                assert_eq!(log.try_get_log_entries(1..).await.unwrap(), entries, "{crash}");
                assert!(!sm.db.tree_names().iter().any(|n| n.as_ref() == LOG_TREE.as_bytes()));
                assert!(!dir.path().join(format!("{LOG_DIR}.new")).exists());
                // What `Raft::new` does on start: re-apply up to the committed id.
                StorageHelper::new(&mut log, &mut sm).get_initial_state().await.unwrap();
                assert_eq!(shared.read().unwrap().kv, kv(&[("a", "1")]), "{crash}");
            }
        }
    }

    /// Applying writes the changed objects only, and a reopened store reads the same state.
    #[tokio::test]
    async fn apply_writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, shared) = open(dir.path());
        let mut entries = vec![membership_ent::<TypeConfig>(0, 1, 0, vec![BTreeSet::from([1u64])])];
        entries.extend((1..=50).map(|i| put(1, i, &format!("k{i}"), "v")));
        sm.apply(entries).await.unwrap();
        sm.persister.flush().await.unwrap();
        let before = sm.sm.iter().count();
        // Marks the keys it rewrites, to see which ones the next apply writes.
        for key in ["kv/k1", "kv/k2"] {
            sm.sm.insert(key, b"\"stale\"".to_vec()).unwrap();
        }
        sm.apply(vec![put(1, 51, "k2", "w")]).await.unwrap();
        sm.persister.flush().await.unwrap();
        assert_eq!(sm.sm.get("kv/k1").unwrap().unwrap().as_ref(), b"\"stale\"");
        assert_eq!(sm.sm.get("kv/k2").unwrap().unwrap().as_ref(), b"\"w\"");
        assert_eq!(sm.sm.iter().count(), before);
        sm.sm.insert("kv/k1", b"\"v\"".to_vec()).unwrap();
        let expected = shared.read().unwrap().clone();
        drop((_log, sm));
        let (_log, _sm, reopened) = open(dir.path());
        assert_eq!(*reopened.read().unwrap(), expected);
    }

    #[tokio::test]
    async fn a_snapshot_of_the_previous_format_still_installs() {
        let state = rich_state();
        let old = AppliedState {
            last_applied: Some(log_id(1, 1, 3)),
            last_membership: super::Membership::default(),
            state: state.clone(),
        };
        let data = serde_json::to_vec(&old).unwrap();
        assert_eq!(state_machine::decode_snapshot(&data).unwrap(), state);
        let keyed = state_machine::decode_snapshot(&state_machine::encode_snapshot(&state).unwrap()).unwrap();
        assert_eq!(keyed, state);
        assert!(state_machine::decode_snapshot(b"garbage").is_err());
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
