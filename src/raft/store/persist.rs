//! Writes the state machine's changes to sled on a thread of its own, a few applies at a time.
//!
//! A node's runtime is one thread (see `cli::main`), and a sled write blocks it while sled's
//! own threads seal and write its buffers: a follower measured ~0.3 ms of every write that
//! way, holding back its answer to the leader. The changes need not be on disk before they
//! are shown, only before the log entries that made them are purged (a restarted node
//! re-applies the rest from the log, see `super`), so `apply` hands them over here and goes
//! on; what arrives within [`LINGER`] is written as one batch, with the applied id it stands
//! for, so sled still never holds objects and an applied id that disagree. A flush (asked
//! for by commands that must not be forgotten, by a purge, and before a snapshot is
//! installed) writes what is pending first, in order.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use sled::{Batch, Db, Tree};

/// How long changes wait to be written with the ones after them.
const LINGER: Duration = Duration::from_millis(20);

/// A change of one key: its new value, or `None` to remove it.
pub(super) type Change = (Vec<u8>, Option<Vec<u8>>);

enum Job {
    Write(Vec<Change>),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The handle `apply` and the log store use; the thread ends (writing what is pending) when
/// the last handle is dropped.
pub(super) struct Persister {
    jobs: mpsc::Sender<Job>,
}

impl Persister {
    pub(super) fn start(db: Db, tree: Tree) -> std::io::Result<Persister> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("state-persist".into())
            .spawn(move || run(queue, &db, &tree))?;
        Ok(Persister { jobs })
    }

    /// Queues changes, written in order with the ones queued before them.
    pub(super) fn write(&self, changes: Vec<Change>) -> Result<(), String> {
        self.jobs
            .send(Job::Write(changes))
            .map_err(|_| "the state machine's writer thread stopped".to_string())
    }

    /// Writes everything queued so far and flushes sled; fails if that or any earlier
    /// background write failed.
    pub(super) async fn flush(&self) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Flush(done))
            .map_err(|_| "the state machine's writer thread stopped".to_string())?;
        wait.await
            .unwrap_or_else(|_| Err("the state machine's writer thread stopped".into()))
    }
}

fn write_pending(tree: &Tree, pending: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::default();
    for (key, value) in std::mem::take(pending) {
        match value {
            Some(v) => batch.insert(key, v),
            None => batch.remove(key),
        }
    }
    tree.apply_batch(batch).map_err(|e| e.to_string())
}

fn run(queue: mpsc::Receiver<Job>, db: &Db, tree: &Tree) {
    let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut oldest: Option<Instant> = None;
    // A failed write leaves sled behind the applied state; every later flush reports it, so
    // the purge or command waiting on one fails instead of trusting the disk.
    let mut failed: Option<String> = None;
    let write = |pending: &mut BTreeMap<_, _>, failed: &mut Option<String>| {
        if let Err(e) = write_pending(tree, pending) {
            tracing::error!("cannot write the applied state to sled: {e}");
            failed.get_or_insert(e);
        }
    };
    loop {
        let job = match oldest {
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => queue.recv_timeout((t + LINGER).saturating_duration_since(Instant::now())),
        };
        match job {
            Ok(Job::Write(changes)) => {
                pending.extend(changes);
                oldest.get_or_insert_with(Instant::now);
            }
            Ok(Job::Flush(done)) => {
                write(&mut pending, &mut failed);
                oldest = None;
                let result = match &failed {
                    Some(e) => Err(e.clone()),
                    None => db.flush().map(drop).map_err(|e| e.to_string()),
                };
                let _ = done.send(result);
            }
            Err(RecvTimeoutError::Timeout) => {
                write(&mut pending, &mut failed);
                oldest = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                write(&mut pending, &mut failed);
                return;
            }
        }
    }
}
