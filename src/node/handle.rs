//! The node's shared handle: Raft, the applied state, the proposer, the peers' channels,
//! the data key, and the queries every service and loop asks of them. It starts nothing;
//! `run` builds it and hands it to the servers and loops.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{admission, liveness, proposer, restored, sysload};
use crate::datadir::NodeConfig;
use crate::pki::Ca;
use crate::raft::network::Peers;
use crate::raft::{self as raftmod, NodeId, Raft};
use crate::secrets::{self, DataKey, SecretBytes};
use crate::state::{Command, IrInfo, IrState, Sealed};

/// What the handle's queries fail with. Converted to `tonic::Status` only at the service
/// edge (`impl From<NodeError> for Status`), so the domain code never picks a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A joining or restored node has not applied the IR's state yet: it will shortly.
    #[error("this node has not received the IR's state yet; try again shortly")]
    NoState,
    /// A sealed value did not open with this node's data key.
    #[error("{0}")]
    Unseal(String),
    #[error("sealed CA key is not PEM")]
    CaKeyNotPem,
    #[error("cannot load the CA: {0}")]
    CaLoad(String),
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match e {
            NodeError::NoState => Status::unavailable(e.to_string()),
            NodeError::Unseal(_) | NodeError::CaKeyNotPem | NodeError::CaLoad(_) => Status::internal(e.to_string()),
        }
    }
}

/// A running node: the parts every service and loop shares.
pub struct Node {
    pub config: NodeConfig,
    pub raft: Raft,
    /// The applied state, kept current by the state machine.
    pub state: Arc<RwLock<IrState>>,
    pub data_key: DataKey,
    pub peers: Peers,
    pub liveness: liveness::Liveness,
    pub admission: admission::Admission,
    /// Wakes the membership loop at once after a join or removal.
    pub membership_changed: tokio::sync::Notify,
    pub(super) proposer: proposer::Proposer,
    /// Verifies that Raft requests come from members (holders of the data key).
    pub raft_proof: Arc<crate::secrets::member_proof::MemberProof>,
    pub cert_not_after: i64,
    /// Serial of this node's certificate: once it is on the revoked list, this node was removed.
    pub cert_serial: String,
    pub db: sled::Db,
    /// Refuses votes while a node restored from a backup catches up.
    pub restore_guard: restored::RestoreGuard,
    /// Cancelled once the node is shutting down (SIGTERM, or removed from the IR): every
    /// loop and server watches it.
    pub shutdown: CancellationToken,
}

use crate::timing::CONFIRM_TIMEOUT;

impl Node {
    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, raftmod::Node> {
        self.raft.metrics().borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id())
    }

    /// The current leader's id and address, as far as this node knows.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        // Borrowed, not cloned: every operator call and write asks this.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The limit this node's heartbeats report: 0 once it is shutting down, else its own
    /// default (node.json, or from the machine). A limit set with `node set-limit` is not in
    /// it: that is in the replicated state, which the dispatcher and `status` apply over
    /// this, so a change shows the moment it is committed, not at the node's next heartbeat.
    pub fn jobs_limit(&self) -> u32 {
        if self.shutdown.is_cancelled() {
            return 0;
        }
        self.config
            .concurrent_jobs_limit
            .unwrap_or_else(sysload::default_jobs_limit)
    }

    pub fn read_state<R>(&self, f: impl FnOnce(&IrState) -> R) -> R {
        f(&self.state.read().expect("state lock"))
    }

    pub fn ir(&self) -> Result<IrInfo, NodeError> {
        self.read_state(|s| s.ir.clone()).ok_or(NodeError::NoState)
    }

    pub fn node_name(&self, id: NodeId) -> Option<String> {
        self.read_state(|s| s.nodes.get(&id).map(|n| n.name.clone()))
    }

    pub fn unseal(&self, aad: &str, sealed: &Sealed) -> Result<SecretBytes, NodeError> {
        secrets::open(&self.data_key, aad.as_bytes(), &sealed.0).map_err(|e| NodeError::Unseal(e.to_string()))
    }

    /// The CA with its private key, unsealed for one signing.
    pub fn ca(&self) -> Result<Ca, NodeError> {
        let ir = self.ir()?;
        let key = self.unseal(&crate::state::ca_key_aad(&ir.id), &ir.ca_key)?;
        let key_pem = crate::secrets::SecretString::from_secret_bytes(key).map_err(|_| NodeError::CaKeyNotPem)?;
        Ca::from_pem(&ir.ca_cert_pem, key_pem.expose()).map_err(|e| NodeError::CaLoad(e.to_string()))
    }

    /// Commits `cmd` through Raft (group-committed with concurrent proposals); returns its
    /// log index once it is applied on this (leader) node.
    pub async fn propose(&self, cmd: Command) -> Result<u64, proposer::ProposeError> {
        self.proposer.propose(cmd).await
    }

    /// True if this node leads and a majority confirms it now. openraft 0.9 keeps a leader
    /// that lost its majority believing it leads; status and linearizable reads must not.
    pub async fn confirm_leadership(&self) -> bool {
        self.is_leader()
            && matches!(
                tokio::time::timeout(CONFIRM_TIMEOUT, self.raft.ensure_linearizable()).await,
                Ok(Ok(_))
            )
    }
}
