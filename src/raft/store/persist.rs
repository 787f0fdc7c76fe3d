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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use sled::{Batch, Db, Tree};

/// How long changes wait to be written with the ones after them.
const LINGER: Duration = Duration::from_millis(20);

/// A change of one key: its new value, or `None` to remove it.
pub(super) type Change = (Vec<u8>, Option<Vec<u8>>);

type FlushDone = tokio::sync::oneshot::Sender<Result<(), String>>;

/// What `apply` has handed over and the writer has not written yet. Handing over takes
/// this lock and nothing else: no wake-up per apply, the writer looks every [`LINGER`].
#[derive(Default)]
struct Queue {
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    flushes: Vec<FlushDone>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Rung for flushes and for closing only.
    bell: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle `apply` and the log store use; the thread ends (writing what is pending) when
/// the handle is dropped.
pub(super) struct Persister {
    shared: Arc<Shared>,
}

impl Persister {
    pub(super) fn start(db: Db, tree: Tree) -> std::io::Result<Persister> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            bell: Condvar::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("state-persist".into())
            .spawn(move || run(&writer, &db, &tree))?;
        Ok(Persister { shared })
    }

    /// Queues changes, written in order with the ones queued before them (a later change of
    /// a key replaces an earlier one still queued).
    pub(super) fn write(&self, changes: Vec<Change>) {
        self.shared.lock().changes.extend(changes);
    }

    /// Writes everything queued so far and flushes sled; fails if that or any earlier
    /// background write failed.
    pub(super) async fn flush(&self) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.shared.lock().flushes.push(done);
        self.shared.bell.notify_one();
        wait.await
            .unwrap_or_else(|_| Err("the state machine's writer thread stopped".into()))
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.bell.notify_one();
    }
}

fn write_changes(tree: &Tree, changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::default();
    for (key, value) in changes {
        match value {
            Some(v) => batch.insert(key, v),
            None => batch.remove(key),
        }
    }
    tree.apply_batch(batch).map_err(|e| e.to_string())
}

fn run(shared: &Shared, db: &Db, tree: &Tree) {
    // A failed write leaves sled behind the applied state; every later flush reports it, so
    // the purge or command waiting on one fails instead of trusting the disk.
    let mut failed: Option<String> = None;
    loop {
        let (changes, flushes, closed) = {
            let mut queue = shared.lock();
            if queue.flushes.is_empty() && !queue.closed {
                queue = shared
                    .bell
                    .wait_timeout(queue, LINGER)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            (
                std::mem::take(&mut queue.changes),
                std::mem::take(&mut queue.flushes),
                queue.closed,
            )
        };
        if let Err(e) = write_changes(tree, changes) {
            tracing::error!("cannot write the applied state to sled: {e}");
            failed.get_or_insert(e);
        }
        if !flushes.is_empty() {
            let result = match &failed {
                Some(e) => Err(e.clone()),
                None => db.flush().map(drop).map_err(|e| e.to_string()),
            };
            for done in flushes {
                let _ = done.send(result.clone());
            }
        }
        if closed {
            return;
        }
    }
}
