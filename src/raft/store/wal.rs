//! The Raft log on disk: append-only segment files of checksummed records, made durable with
//! one `fdatasync` per append at most, as etcd's WAL does.
//!
//! Why not sled, which holds everything else: sled makes a write durable by sealing and
//! syncing its I/O buffers, several per record written since the last flush, and a lone
//! client's write waits for that on the leader and on a quorum of followers. Here an append
//! is one `pwrite` of all its entries, and the `fdatasync` runs on the log's own sync thread:
//! `append` returns once the entries are written and tells openraft through the callback,
//! and appends that arrive during a sync share the next one. A leader's own entries are
//! reported at once, so that they are replicated while the leader syncs; [`Durable`] says
//! why that is safe.
//!
//! Layout: `raft-log/<segment number, 16 hex digits>.log`. A record is
//!
//! ```text
//! u32 LE  length of the body
//! u64 LE  XXH3-64 of the body
//! body    kind (u8), then: Entry: u16 LE length, the log id (JSON), the entry (JSON)
//!                          Truncate: u64 LE first index removed
//!                          Vote / Committed / Purged: JSON
//! ```
//!
//! Replaying the segments in order rebuilds the log: an entry replaces any entry at its
//! index or after it, a truncate removes from its index on, a purge removes up to its index.
//! A new segment starts with the vote, committed and purge marks, so whole old segments can
//! be deleted once every entry in them is purged. The file system may keep a torn record at
//! the end of the last segment after a crash: it was never acknowledged, and is cut off.
//! Anything wrong before that is damage, and opening fails rather than guess.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use openraft::storage::LogFlushed;
use openraft::{Entry, LogId, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use twox_hash::XxHash3_64;

use crate::raft::types::{NodeId, TypeConfig};

/// A segment is closed once it holds this much; the next append starts a new one.
const SEGMENT_BYTES: u64 = 16 << 20;

const FRAME_HEADER: usize = 4 + 8;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_VOTE: u8 = 3;
const KIND_COMMITTED: u8 = 4;
const KIND_PURGED: u8 = 5;

type Id = LogId<NodeId>;

/// Entries kept decoded in memory, the newest ones: replication and `apply` read an entry
/// right after it was appended, and serving those from memory saves a read and a decode per
/// reader (three on a leader of three nodes).
const RECENT_BYTES: usize = 8 << 20;

/// Where one entry's record is.
#[derive(Clone)]
struct Loc {
    log_id: Id,
    file: Arc<File>,
    /// Offset and length of the entry's JSON.
    offset: u64,
    len: usize,
    /// The entry itself while it is among the recent ones.
    recent: Option<Arc<Entry<TypeConfig>>>,
}

struct Segment {
    number: u64,
    file: Arc<File>,
    /// Highest entry index written to it; `None` for a segment without entries.
    max_index: Option<u64>,
}

#[derive(Default)]
struct Inner {
    /// Ascending by number; the last is the one written to.
    segments: Vec<Segment>,
    /// Where the next record goes in the last segment.
    end: u64,
    entries: BTreeMap<u64, Loc>,
    /// Indexes whose `Loc::recent` is set, oldest first, and their encoded size in total.
    recent: std::collections::VecDeque<u64>,
    recent_bytes: usize,
    vote: Option<Vote<NodeId>>,
    committed: Option<Id>,
    /// `committed` changed since its last record: the record goes out with the next write
    /// (openraft allows losing it, see `LogStore::save_committed`), saving a write per entry.
    committed_unwritten: bool,
    purged: Option<Id>,
    /// Set when a write or sync failed: what is on disk is then unknown, and going on could
    /// acknowledge entries that are not there.
    failed: bool,
}

const SYNC_THREAD_STOPPED: &str = "the Raft log's sync thread stopped";

/// A file whose writes must be synced before they count, and what they do to the durable
/// end of the log once they are.
#[must_use = "the records are not durable until the file is synced"]
pub(super) struct Unsynced(Arc<File>, Reach);

/// How a write moves the end of what is durable.
#[derive(Clone, Copy)]
enum Reach {
    /// A mark: the entries stay as they were.
    Same,
    /// Entries up to this one.
    Upto(Id),
    /// A truncate: what is left ends here.
    Back(Option<Id>),
}

impl Unsynced {
    /// Waits until the records are on disk.
    pub(super) async fn sync(self, wal: &Wal) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        wal.request_sync(self, Done::Notify(tx))?;
        rx.await.unwrap_or_else(|_| Err(io::Error::other(SYNC_THREAD_STOPPED)))
    }

    /// Has openraft told through `callback` once the records are on disk; returns at once.
    pub(super) fn then(self, wal: &Wal, callback: LogFlushed<TypeConfig>) -> io::Result<()> {
        wal.request_sync(self, Done::Callback(callback))
    }

    /// Tells openraft through `callback` now, before the records are on disk, and has them
    /// synced. Only for a leader's own entries: see [`Durable`] for what keeps that safe.
    pub(super) fn now(self, wal: &Wal, callback: LogFlushed<TypeConfig>) -> io::Result<()> {
        wal.request_sync(self, Done::Nobody)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }
}

/// Who waits for a sync.
enum Done {
    Notify(tokio::sync::oneshot::Sender<io::Result<()>>),
    Callback(LogFlushed<TypeConfig>),
    /// Only the durable end moves (see [`Unsynced::now`]).
    Nobody,
}

/// How far the log is on disk, as the sync thread last found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Durability {
    upto: Option<Id>,
    /// A sync failed: nothing more will become durable.
    failed: bool,
}

/// The durable end of a node's log, for the two places that must not run ahead of it.
///
/// A leader tells openraft its own entries are flushed as soon as they are written
/// ([`Unsynced::now`]), so that openraft 0.9, which waits for that before it replicates,
/// sends them to the followers while the leader's `fdatasync` runs: the leader's sync and
/// the followers' overlap instead of following each other (Raft dissertation §10.2.1).
/// openraft then counts the leader towards a commit quorum before its copy is on disk, so a
/// commit index may stand for entries a majority does not hold durably yet. Nothing acts on
/// such a commit: the state machine applies an entry only once it is durable here
/// ([`Durable::wait`]; a client hears of its write only after the apply), and a leader
/// tells followers a commit index no later than its durable end ([`Durable::clamp`]), so no
/// node applies an entry that a crash of the leader could still take from the majority.
/// Followers acknowledge entries only after their sync, as before.
#[derive(Clone)]
pub struct Durable(tokio::sync::watch::Receiver<Durability>);

impl Durable {
    /// Waits until the entry at `index` is on disk.
    pub async fn wait(&mut self, index: u64) -> io::Result<()> {
        let reached = self
            .0
            .wait_for(|d| d.failed || d.upto.is_some_and(|u| u.index >= index))
            .await
            .map_err(|_| io::Error::other(SYNC_THREAD_STOPPED))?;
        if reached.failed {
            return Err(io::Error::other("a sync of the Raft log failed"));
        }
        Ok(())
    }

    /// `committed`, or the durable end of the log if that is earlier: the commit index a
    /// leader may tell its followers.
    pub fn clamp(&self, committed: Option<Id>) -> Option<Id> {
        let upto = self.0.borrow().upto;
        match (committed, upto) {
            (Some(c), Some(u)) if u.index < c.index => Some(u),
            (Some(_), None) => None,
            (c, _) => c,
        }
    }
}

/// `io::Error` is not `Clone`; a sync's outcome goes to every requester it served.
fn copy(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

impl Done {
    fn tell(self, result: io::Result<()>) {
        match self {
            Done::Notify(tx) => drop(tx.send(result)),
            Done::Callback(callback) => callback.log_io_completed(result),
            Done::Nobody => {}
        }
    }
}

type SyncRequest = (Unsynced, Done);

/// The sync thread: syncs in the order asked, each file once for all the requests waiting,
/// moves the durable end, and tells each requester after its file's sync. Ends when the log
/// is dropped.
fn sync_thread(
    requests: mpsc::Receiver<SyncRequest>,
    inner: Arc<Mutex<Inner>>,
    durable: tokio::sync::watch::Sender<Durability>,
) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let mut synced: Vec<(Arc<File>, io::Result<()>)> = Vec::new();
        // Every request in the batch was sent after its records were written, and the batch
        // was taken before any of its syncs began: one sync per file covers them all.
        for (Unsynced(file, reach), done) in batch {
            let result = match synced.iter().find(|(f, _)| Arc::ptr_eq(f, &file)) {
                Some((_, r)) => copy(r),
                None => {
                    let r = file.sync_data();
                    if r.is_err() {
                        inner.lock().unwrap_or_else(|e| e.into_inner()).failed = true;
                    }
                    let out = copy(&r);
                    synced.push((file, r));
                    out
                }
            };
            durable.send_if_modified(|d| {
                let before = *d;
                match (&result, reach) {
                    (Err(_), _) => d.failed = true,
                    (Ok(()), Reach::Same) => {}
                    // In the order written: a later append after a truncate is a later entry.
                    (Ok(()), Reach::Upto(id)) => d.upto = Some(id),
                    (Ok(()), Reach::Back(id)) => d.upto = id,
                }
                *d != before
            });
            done.tell(result);
        }
    }
}

/// The log of one node.
pub(super) struct Wal {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    syncer: mpsc::Sender<SyncRequest>,
    durable: Durable,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.log"))
}

fn damaged(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the Raft log segment {} is damaged at byte {offset}: {what}",
            path.display()
        ),
    )
}

fn json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Appends one framed record to `out`; returns the body's offset within `out`.
fn frame(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) -> usize {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    body.push(kind);
    for p in parts {
        body.extend_from_slice(p);
    }
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&XxHash3_64::oneshot(&body).to_le_bytes());
    let at = out.len();
    out.extend_from_slice(&body);
    at
}

/// An entry's record; returns where its JSON starts within `out`, and its length.
fn frame_entry(out: &mut Vec<u8>, entry: &Entry<TypeConfig>) -> io::Result<(usize, usize)> {
    let id = json(&entry.log_id)?;
    let body = json(entry)?;
    let at = frame(out, KIND_ENTRY, &[&(id.len() as u16).to_le_bytes(), &id, &body]);
    Ok((at + 1 + 2 + id.len(), body.len()))
}

/// The records that let a segment stand without the ones before it.
fn frame_marks(
    out: &mut Vec<u8>,
    vote: Option<Vote<NodeId>>,
    committed: Option<Id>,
    purged: Option<Id>,
) -> io::Result<()> {
    if let Some(vote) = &vote {
        frame(out, KIND_VOTE, &[&json(vote)?]);
    }
    frame(out, KIND_COMMITTED, &[&json(&committed)?]);
    if let Some(purged) = &purged {
        frame(out, KIND_PURGED, &[&json(purged)?]);
    }
    Ok(())
}

/// Reserves a segment's space up front, as etcd does: an `fdatasync` that must also record
/// a larger file size costs a journal commit on ext4 (measured here: 153 µs against 106 µs
/// per sync). Best effort: a file system without it just grows the file.
fn preallocate(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor this function borrows.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, SEGMENT_BYTES as libc::off_t) };
    if rc != 0 {
        tracing::debug!(
            "cannot preallocate a Raft log segment: {}",
            io::Error::from_raw_os_error(rc)
        );
    }
}

/// Syncs a directory, so that files created or renamed in it survive a crash.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Inner {
    /// Drops decoded entries, oldest first, until the recent ones fit their bound.
    fn trim_recent(&mut self) {
        while self.recent_bytes > RECENT_BYTES {
            let Some(index) = self.recent.pop_front() else { break };
            if let Some(loc) = self.entries.get_mut(&index)
                && loc.recent.take().is_some()
            {
                self.recent_bytes -= loc.len;
            }
        }
    }

    fn insert_entry(&mut self, loc: Loc) {
        let index = loc.log_id.index;
        // An entry replaces whatever the log held from its index on (openraft truncates first;
        // this keeps a replayed log right even if it did not).
        self.truncate(index);
        if loc.recent.is_some() {
            self.recent.push_back(index);
            self.recent_bytes += loc.len;
        }
        self.entries.insert(index, loc);
        self.trim_recent();
        if let Some(last) = self.segments.last_mut() {
            last.max_index = Some(last.max_index.map_or(index, |m| m.max(index)));
        }
    }

    /// Accounts for entries taken out of `entries`.
    fn forget(&mut self, removed: BTreeMap<u64, Loc>) {
        for loc in removed.values() {
            if loc.recent.is_some() {
                self.recent_bytes -= loc.len;
            }
        }
    }

    /// Removes the entries from `since` on.
    fn truncate(&mut self, since: u64) {
        let removed = self.entries.split_off(&since);
        self.forget(removed);
        while self.recent.back().is_some_and(|&i| i >= since) {
            self.recent.pop_back();
        }
    }

    /// The last purged log id and the last log id (the purged one for an empty log).
    fn log_state(&self) -> (Option<Id>, Option<Id>) {
        let last = self.entries.last_key_value().map(|(_, loc)| loc.log_id);
        (self.purged, last.or(self.purged))
    }

    fn purge(&mut self, upto: Id) {
        let kept = self.entries.split_off(&(upto.index + 1));
        let removed = std::mem::replace(&mut self.entries, kept);
        self.forget(removed);
        while self.recent.front().is_some_and(|&i| i <= upto.index) {
            self.recent.pop_front();
        }
        if self.purged.is_none_or(|p| p < upto) {
            self.purged = Some(upto);
        }
    }

    /// Reads one segment's records into the log. `last` says whether it is the segment
    /// written to, whose torn tail is cut off; returns where its valid records end and whether
    /// a torn record follows (rather than the zeros of preallocated space, or nothing).
    fn replay(&mut self, path: &Path, file: &Arc<File>, last: bool) -> io::Result<(u64, bool)> {
        let bytes = fs::read(path)?;
        let mut at = 0usize;
        while at < bytes.len() {
            let torn = |what: &str| -> io::Result<(u64, bool)> {
                if last {
                    tracing::warn!(segment = %path.display(), offset = at, "cutting off a torn record at the end of the Raft log: {what}");
                    Ok((at as u64, true))
                } else {
                    Err(damaged(path, at as u64, what))
                }
            };
            if bytes[at..].iter().all(|&b| b == 0) {
                // Preallocated and never written.
                return Ok((at as u64, false));
            }
            if bytes.len() - at < FRAME_HEADER {
                return torn("incomplete header");
            }
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let hash = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8 bytes"));
            let start = at + FRAME_HEADER;
            if len == 0 || bytes.len() - start < len {
                return torn("incomplete record");
            }
            let body = &bytes[start..start + len];
            if XxHash3_64::oneshot(body) != hash {
                return torn("checksum mismatch");
            }
            self.replay_record(body, file, start as u64)
                .map_err(|e| damaged(path, at as u64, &e.to_string()))?;
            at = start + len;
        }
        Ok((at as u64, false))
    }

    fn replay_record(&mut self, body: &[u8], file: &Arc<File>, body_offset: u64) -> io::Result<()> {
        let (kind, payload) = (body[0], &body[1..]);
        match kind {
            KIND_ENTRY => {
                let bad = || io::Error::new(io::ErrorKind::InvalidData, "entry record too short");
                let id_len =
                    u16::from_le_bytes(payload.get(..2).ok_or_else(bad)?.try_into().expect("2 bytes")) as usize;
                let id_bytes = payload.get(2..2 + id_len).ok_or_else(bad)?;
                let log_id: Id = from_json(id_bytes)?;
                let len = payload.len() - 2 - id_len;
                if self.purged.is_some_and(|p| log_id.index <= p.index) {
                    return Ok(());
                }
                self.insert_entry(Loc {
                    log_id,
                    file: file.clone(),
                    offset: body_offset + 1 + 2 + id_len as u64,
                    len,
                    recent: None,
                });
            }
            KIND_TRUNCATE => {
                let since = u64::from_le_bytes(
                    payload
                        .try_into()
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad truncate record"))?,
                );
                self.truncate(since);
            }
            KIND_VOTE => self.vote = Some(from_json(payload)?),
            KIND_COMMITTED => self.committed = from_json(payload)?,
            KIND_PURGED => self.purge(from_json(payload)?),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown record kind {other}"),
                ));
            }
        }
        Ok(())
    }
}

impl Wal {
    /// Opens the log in `dir`, creating it (and its first segment) if it does not exist.
    pub(super) fn open(dir: &Path) -> io::Result<Wal> {
        if !dir.exists() {
            create(dir, |_| Ok(()))?;
        }
        let mut numbers = Vec::new();
        for item in fs::read_dir(dir)? {
            let name = item?.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            numbers.push(number);
        }
        numbers.sort_unstable();
        if numbers.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the Raft log in {} has no segments", dir.display()),
            ));
        }

        let mut inner = Inner::default();
        for (i, &number) in numbers.iter().enumerate() {
            let path = segment_path(dir, number);
            let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
            inner.segments.push(Segment {
                number,
                file: file.clone(),
                max_index: None,
            });
            let last = i + 1 == numbers.len();
            let (end, torn) = inner.replay(&path, &file, last)?;
            if last {
                if torn {
                    // Zeros again where the torn record was, so nothing of it is read later.
                    file.set_len(end)?;
                    preallocate(&file);
                    file.sync_all()?;
                } else {
                    // A process killed before its sync leaves the records in the page cache:
                    // what is read back here counts as durable, so make it so.
                    file.sync_data()?;
                }
                inner.end = end;
            }
        }
        let (_, upto) = inner.log_state();
        let (durable_tx, durable_rx) = tokio::sync::watch::channel(Durability { upto, failed: false });
        let inner = Arc::new(Mutex::new(inner));
        let (syncer, requests) = mpsc::channel();
        let thread_inner = inner.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_thread(requests, thread_inner, durable_tx))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            inner,
            syncer,
            durable: Durable(durable_rx),
        })
    }

    fn request_sync(&self, unsynced: Unsynced, done: Done) -> io::Result<()> {
        self.syncer
            .send((unsynced, done))
            .map_err(|_| io::Error::other(SYNC_THREAD_STOPPED))
    }

    /// The durable end of the log, watched.
    pub(super) fn durable(&self) -> Durable {
        self.durable.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `records` at the end of the last segment, first starting a new segment if the
    /// last is full; returns the file (which the caller syncs) and where `records` begin.
    fn write(&self, inner: &mut Inner, records: &[u8]) -> io::Result<(Arc<File>, u64)> {
        if inner.failed {
            return Err(io::Error::other(
                "the Raft log is unusable after an earlier write to it failed",
            ));
        }
        let result = self.write_inner(inner, records);
        if result.is_err() {
            inner.failed = true;
        }
        result
    }

    fn write_inner(&self, inner: &mut Inner, records: &[u8]) -> io::Result<(Arc<File>, u64)> {
        if inner.end >= SEGMENT_BYTES {
            self.rotate(inner)?;
        }
        let mut buf = Vec::new();
        if inner.committed_unwritten {
            frame(&mut buf, KIND_COMMITTED, &[&json(&inner.committed)?]);
        }
        let prefix = buf.len() as u64;
        let bytes: &[u8] = if buf.is_empty() {
            records
        } else {
            buf.extend_from_slice(records);
            &buf
        };
        let current = inner.segments.last().expect("a log has a segment");
        current.file.write_all_at(bytes, inner.end)?;
        let at = inner.end + prefix;
        inner.end += bytes.len() as u64;
        inner.committed_unwritten = false;
        Ok((current.file.clone(), at))
    }

    /// Closes the last segment (synced: nothing is written to it again) and starts the next
    /// with the marks.
    fn rotate(&self, inner: &mut Inner) -> io::Result<()> {
        let current = inner.segments.last().expect("a log has a segment");
        current.file.sync_data()?;
        let number = current.number + 1;
        let mut marks = Vec::new();
        frame_marks(&mut marks, inner.vote, inner.committed, inner.purged)?;
        let path = segment_path(&self.dir, number);
        let file = Arc::new(OpenOptions::new().read(true).write(true).create_new(true).open(&path)?);
        preallocate(&file);
        file.write_all_at(&marks, 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        inner.committed_unwritten = false;
        inner.segments.push(Segment {
            number,
            file,
            max_index: None,
        });
        inner.end = marks.len() as u64;
        Ok(())
    }

    /// Writes entries; they are readable at once and durable once the result is synced.
    pub(super) fn append(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> io::Result<Unsynced> {
        let mut records = Vec::new();
        let mut placed = Vec::new();
        for entry in entries {
            let (at, len) = frame_entry(&mut records, &entry)?;
            placed.push((Arc::new(entry), at, len));
        }
        let last = placed.last().map(|(entry, _, _)| entry.log_id);
        let mut inner = self.lock();
        let (file, base) = self.write(&mut inner, &records)?;
        for (entry, at, len) in placed {
            inner.insert_entry(Loc {
                log_id: entry.log_id,
                file: file.clone(),
                offset: base + at as u64,
                len,
                recent: Some(entry),
            });
        }
        Ok(Unsynced(file, last.map_or(Reach::Same, Reach::Upto)))
    }

    fn write_mark(&self, kind: u8, payload: &[u8], change: impl FnOnce(&mut Inner)) -> io::Result<Unsynced> {
        let mut record = Vec::new();
        frame(&mut record, kind, &[payload]);
        let mut inner = self.lock();
        let (file, _) = self.write(&mut inner, &record)?;
        change(&mut inner);
        Ok(Unsynced(file, Reach::Same))
    }

    pub(super) fn save_vote(&self, vote: &Vote<NodeId>) -> io::Result<Unsynced> {
        let vote = *vote;
        self.write_mark(KIND_VOTE, &json(&vote)?, |inner| inner.vote = Some(vote))
    }

    /// Remembers the committed id; its record goes out with the next write, or when the log
    /// is closed.
    pub(super) fn save_committed(&self, committed: Option<Id>) {
        let mut inner = self.lock();
        inner.committed = committed;
        inner.committed_unwritten = true;
    }

    pub(super) fn truncate(&self, since: u64) -> io::Result<Unsynced> {
        let mut left = None;
        let Unsynced(file, _) = self.write_mark(KIND_TRUNCATE, &since.to_le_bytes(), |inner| {
            inner.truncate(since);
            left = inner.log_state().1;
        })?;
        Ok(Unsynced(file, Reach::Back(left)))
    }

    /// Marks everything up to `upto` purged, durably, then deletes the segments that hold
    /// nothing after it.
    pub(super) async fn purge(&self, upto: Id) -> io::Result<()> {
        self.write_mark(KIND_PURGED, &json(&upto)?, |inner| inner.purge(upto))?
            .sync(self)
            .await?;
        let doomed: Vec<u64> = {
            let mut inner = self.lock();
            let keep_from = inner.segments[..inner.segments.len() - 1]
                .iter()
                .position(|s| s.max_index.is_some_and(|m| m > upto.index))
                .unwrap_or(inner.segments.len() - 1);
            inner.segments.drain(..keep_from).map(|s| s.number).collect()
        };
        // Readers holding an entry's file keep it readable until they are done.
        for number in doomed {
            fs::remove_file(segment_path(&self.dir, number))?;
        }
        Ok(())
    }

    pub(super) fn vote(&self) -> Option<Vote<NodeId>> {
        self.lock().vote
    }

    pub(super) fn committed(&self) -> Option<Id> {
        self.lock().committed
    }

    /// The last purged log id and the last log id (the purged one for an empty log).
    pub(super) fn log_state(&self) -> (Option<Id>, Option<Id>) {
        self.lock().log_state()
    }

    /// The entries in `range` that the log holds, in order.
    pub(super) fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry<TypeConfig>>> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        // BTreeMap::range panics on a start after the end; openraft may ask for an empty range.
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) = (start, end)
            && s > e
        {
            return Ok(Vec::new());
        }
        let locs: Vec<Loc> = self
            .lock()
            .entries
            .range((start, end))
            .map(|(_, l)| l.clone())
            .collect();
        locs.into_iter()
            .map(|loc| {
                if let Some(entry) = loc.recent {
                    return Ok(Entry::clone(&entry));
                }
                let mut buf = vec![0; loc.len];
                loc.file.read_exact_at(&mut buf, loc.offset)?;
                from_json(&buf)
            })
            .collect()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let mut inner = self.lock();
        if inner.committed_unwritten && !inner.failed {
            // Best effort, not synced: a node that stops keeps its commit point.
            let _ = self.write(&mut inner, &[]);
        }
    }
}

/// Creates a log in `dir` atomically: `fill` writes the first segment's records in a sibling
/// directory, which is renamed into place once synced. A crash leaves either no log (and the
/// sibling, removed on the next try) or the whole one.
pub(super) fn create(dir: &Path, fill: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("raft-log");
    let staging = parent.join(format!("{name}.new"));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    let mut records = Vec::new();
    fill(&mut records)?;
    let file = File::create(segment_path(&staging, 1))?;
    preallocate(&file);
    file.write_all_at(&records, 0)?;
    file.sync_all()?;
    sync_dir(&staging)?;
    fs::rename(&staging, dir)?;
    sync_dir(parent)
}

/// The records of a log that holds `entries` and the given marks: what [`create`] fills a
/// migrated log with.
pub(super) fn initial_records(
    out: &mut Vec<u8>,
    vote: Option<Vote<NodeId>>,
    committed: Option<Id>,
    purged: Option<Id>,
    entries: impl IntoIterator<Item = io::Result<Entry<TypeConfig>>>,
) -> io::Result<()> {
    frame_marks(out, vote, committed, purged)?;
    for entry in entries {
        frame_entry(out, &entry?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::testing::{blank_ent, log_id};

    use super::*;

    fn ids(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    async fn append(wal: &Wal, range: std::ops::Range<u64>, term: u64) {
        wal.append(range.map(|i| blank_ent::<TypeConfig>(term, 1, i)))
            .unwrap()
            .sync(wal)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_durable_end_follows_syncs_and_truncates_and_bounds_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let id = |term, index| log_id::<NodeId>(term, 1, index);
        {
            let wal = Wal::open(&path).unwrap();
            let mut durable = wal.durable();
            assert_eq!(durable.clamp(Some(id(1, 3))), None, "nothing is on disk yet");
            append(&wal, 1..6, 1).await;
            durable.wait(5).await.unwrap();
            assert_eq!(
                durable.clamp(Some(id(1, 3))),
                Some(id(1, 3)),
                "an earlier commit stands"
            );
            assert_eq!(
                durable.clamp(Some(id(1, 9))),
                Some(id(1, 5)),
                "a later one is held back"
            );
            assert_eq!(durable.clamp(None), None);

            wal.truncate(4).unwrap().sync(&wal).await.unwrap();
            assert_eq!(durable.clamp(Some(id(2, 9))), Some(id(1, 3)));
            // Written and not yet synced: the durable end waits for the sync.
            let unsynced = wal.append((4..6).map(|i| blank_ent::<TypeConfig>(2, 1, i))).unwrap();
            assert_eq!(durable.clamp(Some(id(2, 5))), Some(id(1, 3)));
            unsynced.sync(&wal).await.unwrap();
            durable.wait(5).await.unwrap();
            assert_eq!(durable.clamp(Some(id(2, 5))), Some(id(2, 5)));
        }
        // What a reopened log holds counts as durable.
        let wal = Wal::open(&path).unwrap();
        assert_eq!(wal.durable().clamp(Some(id(2, 7))), Some(id(2, 5)));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_damage_before_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        {
            let wal = Wal::open(&path).unwrap();
            append(&wal, 1..4, 1).await;
        }
        let segment = segment_path(&path, 1);
        let whole = fs::read(&segment).unwrap();
        // Records end in JSON's `}`; after them the preallocated zeros.
        let used = whole.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert!(whole.len() > used, "the segment is preallocated");
        // A record half written when the machine stopped.
        let mut torn = whole.clone();
        torn[used..used + 20].copy_from_slice(&whole[..20]);
        fs::write(&segment, &torn).unwrap();
        let wal = Wal::open(&path).unwrap();
        assert_eq!(ids(&wal.entries(..).unwrap()), vec![1, 2, 3]);
        assert!(
            fs::read(&segment).unwrap()[used..].iter().all(|&b| b == 0),
            "the torn bytes are gone"
        );
        append(&wal, 4..5, 1).await;
        assert_eq!(ids(&wal.entries(..).unwrap()), vec![1, 2, 3, 4]);
        drop(wal);

        // A flipped byte in a closed segment is damage, not a tail.
        let mut bad = fs::read(&segment).unwrap();
        bad[FRAME_HEADER + 3] ^= 0xff;
        fs::write(&segment, &bad).unwrap();
        fs::write(segment_path(&path, 2), b"").unwrap();
        let err = Wal::open(&path).err().expect("damage is refused");
        assert!(err.to_string().contains("is damaged at byte 0"), "{err}");
    }

    #[tokio::test]
    async fn truncates_purges_and_segments_replay_to_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let wal = Wal::open(&path).unwrap();
        append(&wal, 0..10, 1).await;
        wal.truncate(6).unwrap().sync(&wal).await.unwrap();
        append(&wal, 6..8, 2).await;
        {
            let mut inner = wal.lock();
            wal.rotate(&mut inner).unwrap();
        }
        append(&wal, 8..12, 2).await;
        wal.save_vote(&Vote::new(2, 1)).unwrap().sync(&wal).await.unwrap();
        // Written with the purge's record, the next write.
        wal.save_committed(Some(log_id(2, 1, 9)));
        wal.purge(log_id(2, 1, 9)).await.unwrap();
        // Segment 1 held nothing after 9 and is gone; its marks live on in segment 2.
        assert!(!segment_path(&path, 1).exists());
        let expect = |wal: &Wal| {
            let entries = wal.entries(..).unwrap();
            assert_eq!(ids(&entries), vec![10, 11]);
            assert!(entries.iter().all(|e| e.log_id.leader_id.term == 2));
            assert_eq!(wal.vote(), Some(Vote::new(2, 1)));
            assert_eq!(wal.committed(), Some(log_id(2, 1, 9)));
            assert_eq!(wal.log_state(), (Some(log_id(2, 1, 9)), Some(log_id(2, 1, 11))));
            assert_eq!(ids(&wal.entries(9..=10).unwrap()), vec![10]);
            let (from, to) = (10, 9);
            assert!(wal.entries(from..to).unwrap().is_empty());
        };
        expect(&wal);
        drop(wal);
        expect(&Wal::open(&path).unwrap());
    }
}
