//! The replicated state of one integration runtime and the commands that change it.
//!
//! Every node applies the same committed commands in the same order, so `apply` must be
//! deterministic: anything that varies (time, random secrets, certificate serials) is
//! chosen by the proposer and carried inside the command.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub mod job_table;
pub mod jobs;
pub mod linked_service;
pub mod schedules;
pub mod tracked;

pub use job_table::Jobs;
pub use jobs::JobHistory;
pub use linked_service::{LinkedService, ProxySettings};
pub use schedules::Schedule;
pub use tracked::Tracked;

/// Raft node ids. Never reused: a removed node's id stays retired.
pub type NodeId = u64;

/// Membership is capped at four nodes, like the runtimes this one replaces: four voters
/// tolerate one failure and keep a three-node quorum.
pub const MAX_NODES: usize = 4;

/// Ciphertext produced by `secrets::seal` (nonce followed by AEAD output), base64 on the wire.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed(pub String);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// Identity of the integration runtime, written once by `Bootstrap`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrInfo {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    /// The cluster CA certificate (public).
    pub ca_cert_pem: String,
    /// The CA private key, sealed with the data key, so that whichever node leads can sign.
    pub ca_key: Sealed,
}

/// One authentication key slot (key1 or key2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKeySlot {
    /// Bumped by every regeneration; only for display and audit.
    pub generation: u64,
    /// The 256-bit secret, sealed with the data key.
    pub secret: Sealed,
}

/// A member of the IR as the replicated state knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    /// Advertised `host:port` other nodes dial.
    pub address: String,
    /// Hex serial of the certificate issued at join.
    pub cert_serial: String,
    /// Certificate expiry, Unix seconds.
    pub cert_not_after: i64,
    /// The certificate itself (public), so a join retried after its reply was lost can be
    /// answered with the registration that was made.
    #[serde(default)]
    pub cert_pem: String,
    /// Hex nonce of the join proof that admitted this node: replicated, so a replay of that
    /// proof is refused by whichever node is dispatcher, even after a failover.
    #[serde(default)]
    pub join_nonce: String,
    pub joined_at: i64,
}

/// An admin certificate that was issued (kept so it can be listed and revoked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCertRecord {
    pub name: String,
    pub serial: String,
    pub not_after: i64,
    pub issued_at: i64,
}

/// The applied state, in memory on every node.
///
/// Small parts (the IR's identity, its at most four nodes, the key slots) are plain values;
/// the parts that grow with use (jobs, linked services, bench keys, admin certificates) are
/// persistent maps that remember what changed ([`Tracked`], [`Jobs`]). That gives the two
/// costs a write must not grow with: the store writes only the changed objects, and the
/// node publishes the new state to readers as a clone that shares all unchanged structure.
/// `Serialize`/`Deserialize` are the old one-value encoding, kept to read old data dirs
/// and snapshots; the store itself writes one key per object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrState {
    pub ir: Option<IrInfo>,
    pub auth_keys: Vec<AuthKeySlot>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub next_node_id: NodeId,
    /// Serials (hex) of certificates no node may accept any more.
    pub revoked_serials: BTreeSet<String>,
    pub admin_certs: Tracked<String, AdminCertRecord>,
    /// Small key/value space used by `shir bench` to measure committed writes.
    pub kv: Tracked<String, String>,
    /// Linked services by name; secret fields sealed with the data key.
    #[serde(default)]
    pub linked_services: Tracked<String, LinkedService>,
    #[serde(default)]
    pub proxy: Option<ProxySettings>,
    /// Bumped by every proxy change, clearing included, so a version never repeats.
    #[serde(default)]
    pub proxy_version: u64,
    /// Copy jobs by id, queued, running and the latest finished ones.
    #[serde(default)]
    pub jobs: Jobs,
    /// Submissions so far; gives each job its place in the queue.
    #[serde(default)]
    pub job_seq: u64,
    /// `node set-limit` overrides of the nodes' concurrent-jobs limits.
    #[serde(default)]
    pub node_limits: BTreeMap<NodeId, u32>,
    /// How many finished jobs are kept, and for how long (`shir settings job-history`).
    #[serde(default)]
    pub job_history: JobHistory,
    /// Schedules by name, each with its recent runs.
    #[serde(default)]
    pub schedules: Tracked<String, Schedule>,
}

/// A log entry's payload: one change to the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First entry of every IR: its identity, its first node and both authentication keys.
    Bootstrap {
        ir: IrInfo,
        first_node: NodeRecord,
        auth_keys: Vec<AuthKeySlot>,
    },
    /// A node admitted by `Join`; its id was reserved by the proposer from `next_node_id`.
    AddNode {
        node: NodeRecord,
    },
    /// Take a node out and revoke its certificate.
    RemoveNode {
        name: String,
    },
    /// Replace the secret of key1 (`slot` 1) or key2 (`slot` 2).
    RegenerateKey {
        slot: u8,
        secret: Sealed,
    },
    RecordAdminCert {
        record: AdminCertRecord,
    },
    Put {
        key: String,
        value: String,
    },
    /// Create (`previous_version` 0) or update a linked service; secret fields arrive sealed.
    PutLinkedService {
        service: LinkedService,
        previous_version: u64,
    },
    /// Delete the linked service `name` if it is still the one with `id`.
    DeleteLinkedService {
        name: String,
        id: String,
    },
    /// Set (`Some`) or clear (`None`) the IR's proxy; `version` is the new proxy version.
    SetProxy {
        proxy: Option<ProxySettings>,
        version: u64,
    },
    /// A new copy job, queued; its place in the queue is given when applied.
    SubmitJob {
        job: jobs::Job,
    },
    /// Placements decided by the dispatcher.
    AssignJobs {
        assignments: Vec<jobs::Assignment>,
        now_ms: i64,
    },
    /// The current attempt of a job may make its output visible.
    BeginPublish {
        job_id: String,
        attempt: u32,
        node: NodeId,
    },
    /// The end of an attempt, as its worker reports it.
    FinishJob {
        job_id: String,
        attempt: u32,
        node: NodeId,
        outcome: jobs::Outcome,
        now_ms: i64,
    },
    /// `node` went Offline: these attempts of its (job, attempt) go back to the queue.
    RequeueNode {
        node: NodeId,
        jobs: Vec<(String, u32)>,
        now_ms: i64,
    },
    CancelJob {
        job_id: String,
        now_ms: i64,
    },
    /// Set (`Some`) or clear a node's concurrent-jobs limit.
    SetNodeLimit {
        node: NodeId,
        limit: Option<u32>,
    },
    /// The retention policy of finished jobs.
    SetJobHistory {
        history: JobHistory,
    },
    /// Drop the finished jobs the retention policy no longer keeps as of `now_ms`; proposed
    /// by the dispatcher, so every node drops the same ones.
    PruneJobs {
        now_ms: i64,
    },
    /// `shir bench --history` only: `count` finished jobs made from `template`, so a
    /// benchmark can keep 100,000 of them without running each. Goes through the log and
    /// the store like real jobs; only a node started for a benchmark proposes it.
    SeedJobHistory {
        template: jobs::Job,
        count: u32,
    },
    /// Several commands proposed together (group commit); applied in order, each as if alone.
    Batch(#[serde(deserialize_with = "bounded_batch")] Vec<Command>),
    /// A worker shutting down hands its current attempt back before it began publishing
    /// (last, so that the variants before keep their encoding).
    ReleaseJob {
        job_id: String,
        attempt: u32,
        node: NodeId,
        now_ms: i64,
    },
    /// A new schedule; refused if its name is taken.
    CreateSchedule {
        schedule: Schedule,
    },
    /// Pause or resume the schedule `name` if it is still the one with `id`.
    SetSchedulePaused {
        name: String,
        id: String,
        paused: bool,
    },
    DeleteSchedule {
        name: String,
        id: String,
    },
    /// One slot of a schedule, recorded and (unless queued or skipped) given its job in the
    /// same entry; a no-op for a slot already recorded (see `state::schedules`).
    FireSlot {
        name: String,
        id: String,
        run: schedules::Run,
        job: Option<jobs::Job>,
    },
    /// A queued run's turn: its job (or, without one, skipped for `reason`).
    StartQueuedRun {
        name: String,
        id: String,
        slot_ms: i64,
        job: Option<jobs::Job>,
        reason: Option<String>,
        now_ms: i64,
    },
}

/// The proposer batches single commands, so a real entry nests one level, two at most.
/// Decoding refuses deeper nesting: a corrupt or hostile message of nested batches would
/// otherwise recurse the decoder (and `apply`) off the end of its stack, which aborts the
/// node (found by `tests/fuzz.rs`).
pub const MAX_BATCH_DEPTH: usize = 4;

thread_local! {
    /// Batches being decoded on this thread, outermost included. Decoding is synchronous,
    /// so a thread-local count is the depth of the one decode in progress.
    static BATCH_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn bounded_batch<'de, D: serde::Deserializer<'de>>(decoder: D) -> Result<Vec<Command>, D::Error> {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            BATCH_DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    let depth = BATCH_DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    let _leave = Leave;
    if depth > MAX_BATCH_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "batches nested more than {MAX_BATCH_DEPTH} deep"
        )));
    }
    Vec::<Command>::deserialize(decoder)
}

/// Why a command that was valid when proposed changed nothing when applied. The refusals
/// the dispatcher and the worker act on are variants; the others carry their one line for
/// the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A report about an attempt that is not the job's current one on that node (fencing).
    #[error(
        "stale report: job {job_id} attempt {attempt} is not running on that node (now attempt {now_attempt}, {now_state})"
    )]
    StaleAttempt {
        job_id: String,
        attempt: u32,
        now_attempt: u32,
        now_state: String,
    },
    /// Permission to publish refused: the job was cancelled first.
    #[error("{}: job {job_id}", jobs::CANCELLED_BEFORE_PUBLISH)]
    CancelledBeforePublish { job_id: String },
    /// A placement on a node that already runs its limit.
    #[error("node {node} is at its limit of {limit}")]
    AtLimit { node: NodeId, limit: u32 },
    #[error("{0}")]
    Other(String),
}

impl CommandResult {
    /// A refusal that nothing acts on but the operator reading it.
    pub fn refused(why: impl Into<String>) -> Self {
        CommandResult::Rejected(Rejection::Other(why.into()))
    }
}

/// What applying a command produced, returned to the proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    #[default]
    Ok,
    /// The command was valid when proposed but is not any more (e.g. a concurrent join took
    /// the name); nothing changed.
    Rejected(Rejection),
    /// One result per command of a `Batch`, in order.
    Batch(Vec<CommandResult>),
}

/// Bounds on what `Put` may store: it exists to measure committed writes, not to be a
/// general store, and every entry travels to every node.
pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 64 << 10;

impl Command {
    /// Roughly how many bytes the command adds to a log entry (for batching bounds).
    pub fn approximate_size(&self) -> usize {
        match self {
            Command::Put { key, value } => 64 + key.len() + value.len(),
            Command::SetJobHistory { .. } | Command::PruneJobs { .. } => 64,
            Command::Batch(commands) => commands.iter().map(Command::approximate_size).sum(),
            // Certificates and sealed keys: a few KiB at most.
            _ => 4096,
        }
    }
}

impl IrState {
    /// Applies one committed command. Deterministic: same state + same command = same result.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::Bootstrap {
                ir,
                first_node,
                auth_keys,
            } => {
                if self.ir.is_some() {
                    return CommandResult::refused("the IR is already initialised");
                }
                let Some(next_id) = first_node.id.checked_add(1) else {
                    return CommandResult::refused(format!("node id {} is out of range", first_node.id));
                };
                self.ir = Some(ir.clone());
                self.auth_keys = auth_keys.clone();
                self.nodes.insert(first_node.id, first_node.clone());
                self.next_node_id = next_id;
                CommandResult::Ok
            }
            Command::AddNode { node } => {
                if let Err(why) = self.check_admission(&node.name, &node.address) {
                    return CommandResult::refused(why.to_string());
                }
                if node.id < self.next_node_id {
                    return CommandResult::refused(format!("node id {} already used", node.id));
                }
                let Some(next_id) = node.id.checked_add(1) else {
                    return CommandResult::refused(format!("node id {} is out of range", node.id));
                };
                self.next_node_id = next_id;
                self.nodes.insert(node.id, node.clone());
                CommandResult::Ok
            }
            Command::RemoveNode { name } => match self.node_by_name(name) {
                Some(n) => {
                    let (id, serial) = (n.id, n.cert_serial.clone());
                    self.nodes.remove(&id);
                    self.revoked_serials.insert(serial);
                    // Its jobs run nowhere now. No clock in a command that never had one:
                    // they may be assigned again at once.
                    self.requeue_node(id, None, 0);
                    self.node_limits.remove(&id);
                    CommandResult::Ok
                }
                None => CommandResult::refused(format!("no node named '{name}'")),
            },
            Command::RegenerateKey { slot, secret } => {
                match self.auth_keys.get_mut(usize::from(*slot).wrapping_sub(1)) {
                    Some(k) => {
                        k.generation += 1;
                        k.secret = secret.clone();
                        CommandResult::Ok
                    }
                    None => CommandResult::refused(format!("no key slot {slot}")),
                }
            }
            Command::RecordAdminCert { record } => {
                self.admin_certs.insert(record.serial.clone(), record.clone());
                CommandResult::Ok
            }
            Command::Put { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                CommandResult::Ok
            }
            Command::PutLinkedService {
                service,
                previous_version,
            } => self.put_linked_service(service, *previous_version),
            Command::DeleteLinkedService { name, id } => self.delete_linked_service(name, id),
            Command::SetProxy { proxy, version } => self.set_proxy(proxy, *version),
            Command::SubmitJob { job } => self.submit_job(job),
            Command::AssignJobs { assignments, now_ms } => self.assign_jobs(assignments, *now_ms),
            Command::BeginPublish { job_id, attempt, node } => self.begin_publish(job_id, *attempt, *node),
            Command::FinishJob {
                job_id,
                attempt,
                node,
                outcome,
                now_ms,
            } => self.finish_job(job_id, *attempt, *node, outcome, *now_ms),
            Command::RequeueNode { node, jobs, now_ms } => self.requeue_node(*node, Some(jobs), *now_ms),
            Command::ReleaseJob {
                job_id,
                attempt,
                node,
                now_ms,
            } => self.release_job(job_id, *attempt, *node, *now_ms),
            Command::CancelJob { job_id, now_ms } => self.cancel_job(job_id, *now_ms),
            Command::SetNodeLimit { node, limit } => {
                match limit {
                    Some(l) => self.node_limits.insert(*node, *l),
                    None => self.node_limits.remove(node),
                };
                CommandResult::Ok
            }
            Command::SetJobHistory { history } => self.set_job_history(history),
            Command::PruneJobs { now_ms } => self.prune_jobs(*now_ms),
            Command::SeedJobHistory { template, count } => self.seed_job_history(template, *count),
            Command::Batch(commands) => CommandResult::Batch(commands.iter().map(|c| self.apply(c)).collect()),
            Command::CreateSchedule { schedule } => self.create_schedule(schedule),
            Command::SetSchedulePaused { name, id, paused } => self.set_schedule_paused(name, id, *paused),
            Command::DeleteSchedule { name, id } => self.delete_schedule(name, id),
            Command::FireSlot { name, id, run, job } => self.fire_slot(name, id, run, job.as_ref()),
            Command::StartQueuedRun {
                name,
                id,
                slot_ms,
                job,
                reason,
                now_ms,
            } => self.start_queued_run(name, id, *slot_ms, job.as_ref(), reason.as_deref(), *now_ms),
        }
    }

    /// Roughly how many objects the state holds (what a snapshot's size grows with).
    pub fn objects(&self) -> u64 {
        (self.jobs.len() + self.kv.len() + self.linked_services.len() + self.admin_certs.len() + self.schedules.len())
            as u64
    }

    /// Why a node called `name` at `address` may not join now, if it may not.
    pub fn check_admission(&self, name: &str, address: &str) -> Result<(), AdmissionRefused> {
        if self.node_by_name(name).is_some() {
            return Err(AdmissionRefused::NameTaken(name.to_string()));
        }
        if let Some(other) = self.nodes.values().find(|n| n.address == address) {
            return Err(AdmissionRefused::AddressTaken {
                address: address.to_string(),
                by: other.name.clone(),
            });
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(AdmissionRefused::Full);
        }
        Ok(())
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|n| n.name == name)
    }

    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revoked_serials.contains(serial_hex)
    }
}

/// Why a node may not join now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionRefused {
    #[error("a node named '{0}' is already registered")]
    NameTaken(String),
    #[error("address {address} is already used by node '{by}'")]
    AddressTaken { address: String, by: String },
    #[error("the IR already has {MAX_NODES} nodes, the most it can have")]
    Full,
}

/// A node name that does not fit in certificates or on screens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name '{0}': use 1-63 lowercase letters, digits and '-', not starting with '-'")]
pub struct InvalidNodeName(String);

/// Associated data binding a sealed CA key to its IR, so a blob cannot be replayed elsewhere.
pub fn ca_key_aad(ir_id: &str) -> String {
    format!("{ir_id}/ca-key")
}

/// Associated data binding a sealed authentication-key secret to its IR and slot.
pub fn auth_key_aad(ir_id: &str, slot: u8) -> String {
    format!("{ir_id}/auth-key/{slot}")
}

/// Node names go into certificates (URI and DNS SANs) and onto operators' screens, so they
/// are kept to what is safe in both: 1–63 of `a-z`, `0-9`, `-`, starting with a letter or digit.
pub fn validate_node_name(name: &str) -> Result<(), InvalidNodeName> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidNodeName(name.to_string()))
    }
}
