//! The applied state as sled keys: one key per object, `<kind>/<key>` → JSON.
//!
//! Three uses share this one layout: `apply` writes the objects a command changed, a
//! snapshot is the sequence of every object's (key, value) and installing one writes them
//! back, and opening a store reads them all into an `IrState`.
//!
//! Kinds: `job/<id>`, `kv/<key>`, `service/<name>`, `schedule/<name>`, `admin_cert/<serial>`, `node/<id>`,
//! `node_limit/<id>`, `revoked/<serial>` (empty value), `auth_key/<slot index>`, and the
//! IR-wide values under `ir/` (`info`, `next_node_id`, `proxy`, `proxy_version`, `job_seq`,
//! `job_history`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::{IrState, NodeId};

const JOB: &str = "job/";
const KV: &str = "kv/";
const SERVICE: &str = "service/";
const SCHEDULE: &str = "schedule/";
const ADMIN_CERT: &str = "admin_cert/";
const NODE: &str = "node/";
const NODE_LIMIT: &str = "node_limit/";
const REVOKED: &str = "revoked/";
const AUTH_KEY: &str = "auth_key/";
const IR_INFO: &str = "ir/info";
const IR_NEXT_NODE_ID: &str = "ir/next_node_id";
const IR_PROXY: &str = "ir/proxy";
const IR_PROXY_VERSION: &str = "ir/proxy_version";
const IR_JOB_SEQ: &str = "ir/job_seq";
const IR_JOB_HISTORY: &str = "ir/job_history";

const KINDS: [&str; 10] = [
    JOB, KV, SERVICE, SCHEDULE, ADMIN_CERT, NODE, NODE_LIMIT, REVOKED, AUTH_KEY, "ir/",
];

/// Why a stored object could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("cannot encode `{key}`")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot decode `{key}`")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown key `{0}` in the state machine")]
    Unknown(String),
}

/// Whether `key` (of the `sm` tree) holds an object of the state, rather than the applied
/// log id, the membership or the old layout's single value.
pub fn is_object_key(key: &[u8]) -> bool {
    KINDS.iter().any(|k| key.starts_with(k.as_bytes()))
}

fn enc<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, ObjectError> {
    serde_json::to_vec(value).map_err(|source| ObjectError::Encode {
        key: key.to_string(),
        source,
    })
}

fn dec<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ObjectError> {
    serde_json::from_slice(value).map_err(|source| ObjectError::Decode {
        key: key.to_string(),
        source,
    })
}

/// Every object of `state`, handed to `put` one at a time (so a snapshot never holds the
/// state as one encoded value).
pub fn for_each(state: &IrState, mut put: impl FnMut(&str, Vec<u8>)) -> Result<(), ObjectError> {
    let mut one = |key: String, value: Vec<u8>| put(&key, value);
    if let Some(ir) = &state.ir {
        one(IR_INFO.into(), enc(IR_INFO, ir)?);
    }
    one(IR_NEXT_NODE_ID.into(), enc(IR_NEXT_NODE_ID, &state.next_node_id)?);
    one(IR_PROXY.into(), enc(IR_PROXY, &state.proxy)?);
    one(IR_PROXY_VERSION.into(), enc(IR_PROXY_VERSION, &state.proxy_version)?);
    one(IR_JOB_SEQ.into(), enc(IR_JOB_SEQ, &state.job_seq)?);
    one(IR_JOB_HISTORY.into(), enc(IR_JOB_HISTORY, &state.job_history)?);
    for (i, slot) in state.auth_keys.iter().enumerate() {
        let key = format!("{AUTH_KEY}{i}");
        let value = enc(&key, slot)?;
        one(key, value);
    }
    for (id, n) in &state.nodes {
        let key = format!("{NODE}{id}");
        let value = enc(&key, n)?;
        one(key, value);
    }
    for (id, limit) in &state.node_limits {
        let key = format!("{NODE_LIMIT}{id}");
        let value = enc(&key, limit)?;
        one(key, value);
    }
    for serial in &state.revoked_serials {
        one(format!("{REVOKED}{serial}"), Vec::new());
    }
    for (serial, c) in state.admin_certs.iter() {
        let key = format!("{ADMIN_CERT}{serial}");
        let value = enc(&key, c)?;
        one(key, value);
    }
    for (k, v) in state.kv.iter() {
        let key = format!("{KV}{k}");
        let value = enc(&key, v)?;
        one(key, value);
    }
    for (name, s) in state.linked_services.iter() {
        let key = format!("{SERVICE}{name}");
        let value = enc(&key, s)?;
        one(key, value);
    }
    for (name, sched) in state.schedules.iter() {
        let key = format!("{SCHEDULE}{name}");
        let value = enc(&key, sched)?;
        one(key, value);
    }
    for j in state.jobs.values() {
        let key = format!("{JOB}{}", j.id);
        let value = enc(&key, j)?;
        one(key, value);
    }
    Ok(())
}

/// Builds the state from its objects, in any order.
pub fn load<E: From<ObjectError>>(
    objects: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
) -> Result<IrState, E> {
    let mut s = IrState::default();
    let (mut slots, mut admin_certs, mut kv, mut services, mut schedules, mut jobs) = (
        BTreeMap::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for object in objects {
        let (key, value) = object?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let k = key.as_str();
        let v = value.as_slice();
        let id =
            |rest: &str| -> Result<NodeId, ObjectError> { rest.parse().map_err(|_| ObjectError::Unknown(k.into())) };
        if let Some(rest) = k.strip_prefix(JOB) {
            let job: crate::state::jobs::Job = dec(k, v)?;
            if job.id != rest {
                return Err(ObjectError::Unknown(k.into()).into());
            }
            jobs.push(job);
        } else if let Some(rest) = k.strip_prefix(KV) {
            kv.push((rest.to_string(), dec(k, v)?));
        } else if let Some(rest) = k.strip_prefix(SERVICE) {
            services.push((rest.to_string(), dec(k, v)?));
        } else if let Some(rest) = k.strip_prefix(SCHEDULE) {
            schedules.push((rest.to_string(), dec(k, v)?));
        } else if let Some(rest) = k.strip_prefix(ADMIN_CERT) {
            admin_certs.push((rest.to_string(), dec(k, v)?));
        } else if let Some(rest) = k.strip_prefix(NODE_LIMIT) {
            s.node_limits.insert(id(rest)?, dec(k, v)?);
        } else if let Some(rest) = k.strip_prefix(NODE) {
            s.nodes.insert(id(rest)?, dec(k, v)?);
        } else if let Some(rest) = k.strip_prefix(REVOKED) {
            s.revoked_serials.insert(rest.to_string());
        } else if let Some(rest) = k.strip_prefix(AUTH_KEY) {
            slots.insert(id(rest)?, dec(k, v)?);
        } else {
            match k {
                IR_INFO => s.ir = Some(dec(k, v)?),
                IR_NEXT_NODE_ID => s.next_node_id = dec(k, v)?,
                IR_PROXY => s.proxy = dec(k, v)?,
                IR_PROXY_VERSION => s.proxy_version = dec(k, v)?,
                IR_JOB_SEQ => s.job_seq = dec(k, v)?,
                IR_JOB_HISTORY => s.job_history = dec(k, v)?,
                _ => return Err(ObjectError::Unknown(k.into()).into()),
            }
        }
    }
    s.auth_keys = slots.into_values().collect();
    s.admin_certs = admin_certs.into_iter().collect();
    s.kv = kv.into_iter().collect();
    s.linked_services = services.into_iter().collect();
    s.schedules = schedules.into_iter().collect();
    s.jobs = jobs.into_iter().collect();
    Ok(s)
}

/// Stages in `changes` the objects that differ between `before` (as stored) and `after`, and
/// clears `after`'s record of what changed. Cost: the changed objects, plus a comparison of
/// the few small values (the IR, at most four nodes, two key slots, revocations).
pub fn stage_changes(
    before: &IrState,
    after: &mut IrState,
    changes: &mut Vec<super::persist::Change>,
) -> Result<usize, ObjectError> {
    let mut written = 0;
    let mut put = |key: String, value: Option<Vec<u8>>| {
        written += 1;
        changes.push((key.into_bytes(), value));
    };
    if before.ir != after.ir {
        put(
            IR_INFO.into(),
            after.ir.as_ref().map(|ir| enc(IR_INFO, ir)).transpose()?,
        );
    }
    if before.next_node_id != after.next_node_id {
        put(IR_NEXT_NODE_ID.into(), Some(enc(IR_NEXT_NODE_ID, &after.next_node_id)?));
    }
    if before.proxy != after.proxy {
        put(IR_PROXY.into(), Some(enc(IR_PROXY, &after.proxy)?));
    }
    if before.proxy_version != after.proxy_version {
        put(
            IR_PROXY_VERSION.into(),
            Some(enc(IR_PROXY_VERSION, &after.proxy_version)?),
        );
    }
    if before.job_seq != after.job_seq {
        put(IR_JOB_SEQ.into(), Some(enc(IR_JOB_SEQ, &after.job_seq)?));
    }
    if before.job_history != after.job_history {
        put(IR_JOB_HISTORY.into(), Some(enc(IR_JOB_HISTORY, &after.job_history)?));
    }
    for i in 0..before.auth_keys.len().max(after.auth_keys.len()) {
        if before.auth_keys.get(i) != after.auth_keys.get(i) {
            let key = format!("{AUTH_KEY}{i}");
            let value = after.auth_keys.get(i).map(|slot| enc(&key, slot)).transpose()?;
            put(key, value);
        }
    }
    diff_small(&before.nodes, &after.nodes, NODE, &mut put)?;
    diff_small(&before.node_limits, &after.node_limits, NODE_LIMIT, &mut put)?;
    for serial in before.revoked_serials.symmetric_difference(&after.revoked_serials) {
        let present = after.revoked_serials.contains(serial);
        put(format!("{REVOKED}{serial}"), present.then(Vec::new));
    }
    for serial in after.admin_certs.take_dirty() {
        let key = format!("{ADMIN_CERT}{serial}");
        let value = after.admin_certs.get(&serial).map(|c| enc(&key, c)).transpose()?;
        put(key, value);
    }
    for k in after.kv.take_dirty() {
        let key = format!("{KV}{k}");
        let value = after.kv.get(&k).map(|v| enc(&key, v)).transpose()?;
        put(key, value);
    }
    for name in after.linked_services.take_dirty() {
        let key = format!("{SERVICE}{name}");
        let value = after.linked_services.get(&name).map(|s| enc(&key, s)).transpose()?;
        put(key, value);
    }
    for name in after.schedules.take_dirty() {
        let key = format!("{SCHEDULE}{name}");
        let value = after.schedules.get(&name).map(|s| enc(&key, s)).transpose()?;
        put(key, value);
    }
    for id in after.jobs.take_dirty() {
        let key = format!("{JOB}{id}");
        let value = after.jobs.get(&id).map(|j| enc(&key, j)).transpose()?;
        put(key, value);
    }
    Ok(written)
}

fn diff_small<V: Serialize + PartialEq>(
    before: &BTreeMap<NodeId, V>,
    after: &BTreeMap<NodeId, V>,
    kind: &str,
    put: &mut impl FnMut(String, Option<Vec<u8>>),
) -> Result<(), ObjectError> {
    for (id, v) in after {
        if before.get(id) != Some(v) {
            let key = format!("{kind}{id}");
            let value = enc(&key, v)?;
            put(key, Some(value));
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(id)) {
        put(format!("{kind}{id}"), None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::slots::Trigger;
    use crate::state::schedules::{CatchUp, Overlap, Run, RunState, Schedule};

    fn schedule() -> Schedule {
        Schedule {
            id: "id".into(),
            name: "nightly".into(),
            trigger: Trigger::Cron {
                expression: "30 2 * * *".into(),
                time_zone: "Europe/Berlin".into(),
            },
            template: Default::default(),
            catch_up: CatchUp::Last,
            catch_up_limit: 100,
            overlap: Overlap::Skip,
            keep_runs: 100,
            paused: false,
            created_at_ms: 1,
            earliest_ms: 1,
            last_slot_ms: Some(5),
            runs: vec![Run {
                slot_ms: 5,
                recorded_at_ms: 6,
                fired_at_ms: None,
                job: None,
                state: RunState::Skipped,
                reason: Some("missed".into()),
                manual: false,
            }],
        }
    }

    /// A schedule is its own key: written alone when it changes, and in snapshots.
    #[test]
    fn schedules_are_objects_of_their_own() {
        let before = IrState::default();
        let mut after = before.clone();
        after.schedules.insert("nightly".into(), schedule());
        let mut changes = Vec::new();
        stage_changes(&before, &mut after, &mut changes).unwrap();
        let keys: Vec<String> = changes
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(keys, ["schedule/nightly"]);
        let mut objects = Vec::new();
        for_each(&after, |k, v| {
            objects.push(Ok::<_, ObjectError>((k.as_bytes().to_vec(), v)))
        })
        .unwrap();
        assert!(objects.iter().all(|o| is_object_key(&o.as_ref().unwrap().0)));
        let loaded: IrState = load(objects).unwrap();
        assert_eq!(loaded.schedules.get("nightly"), Some(&schedule()));
    }
}
