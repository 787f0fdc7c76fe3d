//! The jobs of the replicated state, with the indexes that keep every per-write step
//! independent of how much history is kept.
//!
//! Finished jobs are most of the table (ten thousand, a hundred thousand), yet what runs
//! on every command and every dispatcher round only needs the active ones (queued and
//! running), and retention only the oldest finished. So next to the jobs by id the table
//! keeps the active ones and the finished ones in their own ordered indexes, rebuilt on
//! load, never stored. Changes go through `insert`, `update` and `remove`, which keep the
//! indexes right and mark the job for the store to write.

use std::collections::BTreeSet;

use imbl::OrdMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::jobs::Job;

/// Shortest job id prefix taken for a whole id (git's too).
pub const MIN_PREFIX: usize = 4;
/// Matches an ambiguous prefix's refusal names.
const AMBIGUOUS_SHOWN: usize = 5;

#[derive(Clone, Debug, Default)]
pub struct Jobs {
    by_id: OrdMap<String, Job>,
    /// Every job by submission order: the order `job list` pages in.
    by_seq: OrdMap<u64, String>,
    /// Queued and running jobs by submission order: the queue, what workers look for.
    active: OrdMap<u64, String>,
    /// Finished jobs by (finish time, submission order): retention drops from the front.
    finished: OrdMap<(i64, u64), String>,
    /// Jobs changed since the store last wrote.
    dirty: BTreeSet<String>,
}

/// Where a job sits in the indexes (besides `by_seq`, which every job is in).
fn finished_key(job: &Job) -> Option<(i64, u64)> {
    job.state.is_final().then(|| (job.finished_at_ms.unwrap_or(0), job.seq))
}

impl Jobs {
    pub fn get(&self, id: &str) -> Option<&Job> {
        self.by_id.get(id)
    }

    /// The job `id` or, when no id is exactly that, the one job whose id starts with it (at
    /// least [`MIN_PREFIX`] characters), as git and docker take a unique prefix. `Err` holds
    /// the ids of the first few matches: none, or more than one.
    pub fn find(&self, id: &str) -> Result<&Job, Vec<&str>> {
        if let Some(job) = self.by_id.get(id) {
            return Ok(job);
        }
        if id.len() < MIN_PREFIX {
            return Err(Vec::new());
        }
        let mut matches = self
            .by_id
            .range(id.to_string()..)
            .take_while(|(k, _)| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, job)), None) => Ok(job),
            (None, _) => Err(Vec::new()),
            (Some((a, _)), Some((b, _))) => Err([a, b]
                .into_iter()
                .chain(matches.map(|(k, _)| k))
                .take(AMBIGUOUS_SHOWN)
                .map(String::as_str)
                .collect()),
        }
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every job, by id.
    pub fn values(&self) -> impl Iterator<Item = &Job> {
        self.by_id.values()
    }

    /// Queued and running jobs, oldest submission first.
    pub fn active(&self) -> impl Iterator<Item = &Job> {
        self.active.values().filter_map(|id| self.by_id.get(id))
    }

    /// Jobs submitted after the one with `after_seq` (all with `None`), in submission order.
    pub fn from_seq(&self, after_seq: Option<u64>) -> impl Iterator<Item = &Job> {
        let start = after_seq.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.by_seq
            .range((start, std::ops::Bound::Unbounded))
            .filter_map(|(_, id)| self.by_id.get(id))
    }

    pub fn finished_len(&self) -> usize {
        self.finished.len()
    }

    /// Finished jobs, the earliest finished first.
    pub fn finished(&self) -> impl Iterator<Item = &Job> {
        self.finished.values().filter_map(|id| self.by_id.get(id))
    }

    /// Adds or replaces a job.
    pub fn insert(&mut self, job: Job) {
        let id = job.id.clone();
        if let Some(old) = self.by_id.remove(&id) {
            self.unindex(&old);
        }
        self.index(&job);
        self.by_id.insert(id.clone(), job);
        self.dirty.insert(id);
    }

    /// Changes job `id` with `f` (which must leave its id alone); `None` if there is no such job.
    pub fn update<R>(&mut self, id: &str, f: impl FnOnce(&mut Job) -> R) -> Option<R> {
        let job = self.by_id.get_mut(id)?;
        let before = (job.seq, finished_key(job));
        let result = f(job);
        let after = (job.seq, finished_key(job));
        if before != after {
            self.unindex_at(before.0, before.1);
            self.index_at(after.0, after.1, id);
        }
        self.dirty.insert(id.to_string());
        Some(result)
    }

    pub fn remove(&mut self, id: &str) -> Option<Job> {
        let old = self.by_id.remove(id)?;
        self.unindex(&old);
        self.dirty.insert(id.to_string());
        Some(old)
    }

    /// The ids changed since the last call, for the store to write or delete.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    fn index(&mut self, job: &Job) {
        self.index_at(job.seq, finished_key(job), &job.id);
    }

    fn unindex(&mut self, job: &Job) {
        self.unindex_at(job.seq, finished_key(job));
    }

    fn index_at(&mut self, seq: u64, finished: Option<(i64, u64)>, id: &str) {
        self.by_seq.insert(seq, id.to_string());
        match finished {
            Some(key) => self.finished.insert(key, id.to_string()),
            None => self.active.insert(seq, id.to_string()),
        };
    }

    fn unindex_at(&mut self, seq: u64, finished: Option<(i64, u64)>) {
        self.by_seq.remove(&seq);
        match finished {
            Some(key) => self.finished.remove(&key),
            None => self.active.remove(&seq),
        };
    }
}

impl FromIterator<Job> for Jobs {
    /// A loaded table: nothing in it is waiting to be written.
    fn from_iter<I: IntoIterator<Item = Job>>(iter: I) -> Self {
        let mut jobs = Jobs::default();
        for job in iter {
            jobs.insert(job);
        }
        jobs.dirty.clear();
        jobs
    }
}

impl std::ops::Index<&str> for Jobs {
    type Output = Job;
    fn index(&self, id: &str) -> &Job {
        self.get(id).unwrap_or_else(|| panic!("no job {id}"))
    }
}

/// Equal when the jobs are: the indexes follow from them.
impl PartialEq for Jobs {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id
    }
}

impl Eq for Jobs {}

/// Stored (in old data dirs and old snapshots) as a map by id, as when it was a `BTreeMap`.
impl Serialize for Jobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.by_id.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Jobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let by_id = OrdMap::<String, Job>::deserialize(d)?;
        Ok(by_id.into_iter().map(|(_, job)| job).collect())
    }
}
