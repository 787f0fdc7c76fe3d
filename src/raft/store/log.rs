//! The Raft log store: entries, vote, committed and purge marks, each acknowledged only once
//! sled has flushed it.

// See `super`: openraft's error type is the one every method returns.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use sled::{Batch, Db, Tree};

use super::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, encode, flush, read_key};
use crate::raft::types::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log store. Cloning is cheap (sled trees are reference counted), which is how it doubles as
/// its own `LogReader` for replication tasks.
#[derive(Clone)]
pub struct LogStore {
    pub(super) db: Db,
    pub(super) log: Tree,
    pub(super) meta: Tree,
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
