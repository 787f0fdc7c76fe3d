//! The Raft log store on [`Wal`]: entries, vote, committed and purge marks, each acknowledged
//! only once the log file is synced.

// See `super`: openraft's error type is the one every method returns.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use super::persist::Persister;
use super::wal::{Durable, Wal};
use crate::raft::types::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_error(wrap: fn(AnyError) -> StorageIOError<NodeId>) -> impl Fn(std::io::Error) -> StorageError<NodeId> {
    move |e| wrap(AnyError::new(&e)).into()
}

/// The log store. Cloning is cheap (the log is shared), which is how it doubles as its own
/// `LogReader` for replication tasks.
#[derive(Clone)]
pub struct LogStore {
    pub(super) wal: Arc<Wal>,
    /// The state machine's writer, flushed before a purge (see [`LogStore::purge`]).
    pub(super) persister: Arc<Persister>,
    /// This node's id, when its own entries as leader may be reported before they are synced
    /// (see [`Durable`]); `None`: every entry waits for its sync.
    pub(super) me: Option<NodeId>,
}

impl LogStore {
    /// The durable end of this log, for the state machine and the Raft network.
    pub fn durable(&self) -> Durable {
        self.wal.durable()
    }

    /// Whether `first` is an entry this node appends as the leader of the term it voted for:
    /// a leader's own entries come only from itself (it is never sent entries of its term),
    /// while a follower's, even ones it once proposed, come with another leader's vote.
    pub(super) fn own_as_leader(&self, first: &Entry<TypeConfig>) -> bool {
        let Some(me) = self.me else { return false };
        let Some(vote) = self.wal.vote() else { return false };
        vote.is_committed()
            && vote.leader_id.voted_for() == Some(me)
            && first.log_id.leader_id.node_id == me
            && first.log_id.leader_id.term == vote.leader_id.term
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.wal.entries(range).map_err(io_error(StorageIOError::read_logs))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    #[tracing::instrument(level = "trace", skip_all)]
    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        // An empty log still has a last log id: the purged one, which Raft needs to keep
        // matching the leader's log after a snapshot.
        let (last_purged_log_id, last_log_id) = self.wal.log_state();
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
        let wrap = io_error(StorageIOError::write_vote);
        // A vote granted and then forgotten in a crash lets this node vote twice in one term.
        self.wal
            .save_vote(vote)
            .map_err(&wrap)?
            .sync(&self.wal)
            .await
            .map_err(wrap)
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.wal.vote())
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not written at once: losing this mark in a crash only means openraft re-applies fewer
        // entries on restart and learns the rest of the commit index from the leader. The log's
        // next write (an append, nearly always) carries it, and closing the log writes it.
        self.wal.save_committed(committed);
        Ok(())
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.wal.committed())
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let wrap = io_error(StorageIOError::write_logs);
        let mut entries = entries.into_iter().peekable();
        let early = entries.peek().is_some_and(|first| self.own_as_leader(first));
        // One write: a crash keeps a prefix of it at most (the torn rest is cut off on open),
        // so the log never has a hole. The entries are readable when this returns. A
        // follower's callback tells openraft they may be acknowledged to the leader (which
        // counts them towards a commit quorum) once the sync thread has them on disk; a
        // leader's tells it at once, so that openraft 0.9 (which awaits the callback before it
        // replicates) sends them while the leader syncs. `Durable` holds back what acts on a
        // commit until the leader's copy is on disk.
        let unsynced = self.wal.append(entries).map_err(&wrap)?;
        if early {
            unsynced.now(&self.wal, callback)
        } else {
            unsynced.then(&self.wal, callback)
        }
        .map_err(wrap)
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let wrap = io_error(StorageIOError::write_logs);
        // Synced so that entries the leader overruled cannot reappear after a restart and be
        // reported as this node's log.
        self.wal
            .truncate(log_id.index)
            .map_err(&wrap)?
            .sync(&self.wal)
            .await
            .map_err(wrap)
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Applied objects reach disk through the persister and sled's flushes, not with the
        // log's syncs, and a restarted node re-applies from its last durable applied id: the
        // entries after it must still be in the log. openraft purges only what a snapshot (of
        // applied state) covers, so flushing the persister first makes the durable applied id
        // at least the purge point.
        self.persister
            .flush()
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::error(e)))?;
        self.wal
            .purge(log_id)
            .await
            .map_err(io_error(StorageIOError::write_logs))
    }
}
