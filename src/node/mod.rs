//! The host service (`shir run`): opens the node's storage, starts Raft, serves the node
//! port and the local socket, and runs the background loops (heartbeats, membership).

pub mod admin;
pub mod admission;
pub mod job_history;
pub mod jobs_admin;
pub mod linked_services;
pub mod liveness;
pub mod membership;
pub mod proposer;
pub mod provision;
pub mod restored;
pub mod services;
pub mod sysload;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UnixListener};
use tonic::Status;
use tonic::transport::{Channel, Server};

use crate::datadir::{DataDir, NodeConfig, NodeFiles};
use crate::pki::{self, Ca, tls};
use crate::raft::network::{NetworkFactory, Peers};
use crate::raft::store::SledStore;
use crate::raft::{self as raftmod, NodeId, Raft};
use crate::secrets::{self, DataKey, SecretBytes};
use crate::state::{Command, IrInfo, IrState, Sealed};
use crate::transport::server::{PortTls, accept_local, accept_node_port};

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
    proposer: proposer::Proposer,
    /// Verifies that Raft requests come from members (holders of the data key).
    pub raft_proof: Arc<crate::secrets::member_proof::MemberProof>,
    pub cert_not_after: i64,
    /// Serial of this node's certificate: once it is on the revoked list, this node was removed.
    pub cert_serial: String,
    pub db: sled::Db,
    /// Refuses votes while a node restored from a backup catches up.
    pub restore_guard: restored::RestoreGuard,
    /// Running attempts' progress as their workers report it (used on the dispatcher).
    pub progress: crate::dispatch::ProgressBoard,
    /// Wakes the dispatch loop at once (a job submitted or finished).
    pub dispatch_wake: tokio::sync::Notify,
}

/// Where a call that must run on the dispatcher goes.
pub enum Hop {
    Here,
    There(Channel),
}

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

    /// Jobs this node runs at once: `node set-limit` if set, else node.json, else from its
    /// cores and memory.
    pub fn jobs_limit(&self) -> u32 {
        self.read_state(|s| s.node_limits.get(&self.id()).copied())
            .or(self.config.concurrent_jobs_limit)
            .unwrap_or_else(sysload::default_jobs_limit)
    }

    pub fn read_state<R>(&self, f: impl FnOnce(&IrState) -> R) -> R {
        f(&self.state.read().expect("state lock"))
    }

    pub fn ir(&self) -> Result<IrInfo, Status> {
        self.read_state(|s| s.ir.clone())
            .ok_or_else(|| Status::unavailable("this node has not received the IR's state yet; try again shortly"))
    }

    pub fn node_name(&self, id: NodeId) -> Option<String> {
        self.read_state(|s| s.nodes.get(&id).map(|n| n.name.clone()))
    }

    pub fn unseal(&self, aad: &str, sealed: &Sealed) -> Result<SecretBytes, Status> {
        secrets::open(&self.data_key, aad.as_bytes(), &sealed.0).map_err(|e| Status::internal(e.to_string()))
    }

    /// The CA with its private key, unsealed for one signing.
    pub fn ca(&self) -> Result<Ca, Status> {
        let ir = self.ir()?;
        let key = self.unseal(&crate::state::ca_key_aad(&ir.id), &ir.ca_key)?;
        let key_pem = crate::secrets::SecretString::from_secret_bytes(key)
            .map_err(|_| Status::internal("sealed CA key is not PEM"))?;
        Ca::from_pem(&ir.ca_cert_pem, key_pem.expose())
            .map_err(|e| Status::internal(format!("cannot load the CA: {e}")))
    }

    /// Commits `cmd` through Raft (group-committed with concurrent proposals); returns its
    /// log index once it is applied on this (leader) node.
    pub async fn propose(&self, cmd: Command) -> Result<u64, Status> {
        self.proposer.propose(cmd).await
    }

    /// Runs `call` on the dispatcher: here if this node leads, else over the node channel to
    /// the leader, each attempt bounded by `calling.attempt`. Retries for `calling.patience`
    /// while there is no dispatcher, or it changed, or it could not be reached at all; a call
    /// that may have taken effect is retried only if `calling.idempotent`.
    pub async fn at_dispatcher<T, F, Fut>(&self, calling: Calling, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Hop) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + calling.patience;
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id() => call(Hop::Here).await,
                Some((_, addr)) => tokio::time::timeout(calling.attempt, call(Hop::There(self.peers.channel(&addr))))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "the dispatcher did not answer within {:.1} s",
                            calling.attempt.as_secs_f64()
                        )))
                    }),
                None => Err(no_dispatcher()),
            };
            match attempt {
                Err(s) if calling.may_retry(&s) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }
}

pub use crate::timing::FORWARD_TIMEOUT;

/// How a call goes to the dispatcher: how long to keep trying, how long one attempt may
/// take, and whether running it twice is harmless.
#[derive(Clone, Copy)]
pub struct Calling {
    pub patience: Duration,
    pub attempt: Duration,
    pub idempotent: bool,
}

impl Calling {
    /// Whether `failure` leaves the call safe to try again. Our own "no dispatcher" and
    /// "not the dispatcher" answers mean it did not run; so does a connection that never
    /// opened. Anything else (a reset, a timeout) may have come after the dispatcher acted,
    /// so only an idempotent call tries again.
    fn may_retry(&self, failure: &Status) -> bool {
        let m = failure.message();
        let did_not_run = failure.code() == tonic::Code::Unavailable
            && (m.starts_with(NOT_DISPATCHER)
                || m.starts_with(NO_DISPATCHER)
                || m.contains("Connection refused")
                || m.contains("connecting to"));
        let transient = matches!(failure.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded);
        did_not_run || (self.idempotent && transient)
    }
}

const NOT_DISPATCHER: &str = "this node is not the dispatcher";
const NO_DISPATCHER: &str = "there is no dispatcher";

use crate::timing::CONFIRM_TIMEOUT;

impl Node {
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

pub fn not_dispatcher() -> Status {
    Status::unavailable(format!("{NOT_DISPATCHER} (it changed during the call); retry"))
}

pub fn no_dispatcher() -> Status {
    Status::unavailable(format!(
        "{NO_DISPATCHER}: fewer than a majority of the IR's nodes can reach each other; \
         it resumes when enough nodes are back"
    ))
}

/// `shir run`: serves until SIGINT or SIGTERM.
pub async fn run(dir: DataDir) -> Result<()> {
    let files = dir.load()?;
    let node = start(&dir, files).await?;
    tracing::info!(
        node = %node.config.name,
        listen = %node.config.listen,
        ir = %node.config.ir_name,
        "node serving"
    );
    let removed = tokio::select! {
        _ = shutdown_signal() => false,
        _ = removed_from_ir(&node) => true,
    };
    tracing::info!("shutting down");
    let _ = node.raft.shutdown().await;
    let _ = node.db.flush_async().await;
    let _ = std::fs::remove_file(dir.socket_path());
    if removed {
        return Err(Removed {
            data_dir: dir.root().display().to_string(),
        }
        .into());
    }
    Ok(())
}

/// `shir run` ends with this when the node was removed from the IR: no peer accepts its
/// certificate any more, so serving on would only confuse. systemd must not restart it
/// (see `EXIT_REMOVED`).
#[derive(Debug, thiserror::Error)]
#[error(
    "this node was removed from the integration runtime and its certificate revoked; delete {data_dir} (or register again into an empty data dir) to reuse this machine"
)]
pub struct Removed {
    pub data_dir: String,
}

/// Exit status of `shir run` for a removed node; the systemd unit lists it in
/// `RestartPreventExitStatus`.
pub const EXIT_REMOVED: u8 = 3;

use crate::timing::OUT_OF_MEMBERSHIP_GRACE;

/// Resolves once this node was removed: its certificate is on the replicated revoked list,
/// or most peers refuse it as revoked (it missed its removal: see `liveness`), or, having
/// been a member, it has been out of the membership for the grace period.
async fn removed_from_ir(node: &Node) {
    let mut was_member = false;
    let mut out_since: Option<std::time::Instant> = None;
    loop {
        let revoked = node.read_state(|s| s.is_revoked(&node.cert_serial))
            || node
                .liveness
                .refused_as_revoked
                .load(std::sync::atomic::Ordering::Relaxed);
        let member = node
            .metrics()
            .membership_config
            .membership()
            .get_node(&node.id())
            .is_some();
        was_member |= member;
        out_since = if was_member && !member {
            out_since.or(Some(std::time::Instant::now()))
        } else {
            None
        };
        if revoked || out_since.is_some_and(|t| t.elapsed() > OUT_OF_MEMBERSHIP_GRACE) {
            tracing::error!(node = %node.config.name, "this node was removed from the IR; stopping");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Opens sled, failing with a clear line if another process holds the data dir.
pub fn open_db(dir: &DataDir) -> Result<sled::Db> {
    sled::Config::new()
        .path(dir.db_path())
        // Raft flushes explicitly before acknowledging; sled's timer flush is only a backstop.
        .flush_every_ms(Some(1000))
        .open()
        .map_err(|e| {
            // sled reports the data dir's file lock as an I/O error with this text.
            if e.to_string().contains("could not acquire lock") {
                anyhow::anyhow!("{} is in use by another shir process", dir.root().display())
            } else {
                anyhow::anyhow!("cannot open the node database in {}: {e}", dir.db_path().display())
            }
        })
}

/// Builds the node from its files and starts every server and loop.
pub async fn start(dir: &DataDir, files: NodeFiles) -> Result<Arc<Node>> {
    let NodeFiles {
        config,
        ca_cert_pem,
        cert_pem,
        key_pem,
        data_key,
    } = files;
    let db = open_db(dir)?;
    let state = Arc::new(RwLock::new(IrState::default()));
    let (log_store, state_machine) = SledStore::open(&db, state.clone()).context("cannot open the Raft store")?;

    let client_tls = tls::client_config_mtls(&ca_cert_pem, &cert_pem, key_pem.expose()).context("TLS client setup")?;
    let peers = Peers::new(client_tls);
    let raft_proof = Arc::new(crate::secrets::member_proof::MemberProof::new(
        &data_key,
        crate::raft::network::PROOF_PURPOSE,
    ));
    let raft = Raft::new(
        config.node_id,
        raftmod::config(&config.ir_id, config.snapshot_every_entries),
        NetworkFactory {
            peers: peers.clone(),
            proof: raft_proof.clone(),
        },
        log_store,
        state_machine,
    )
    .await
    .context("cannot start Raft")?;

    let chain = format!("{cert_pem}{ca_cert_pem}");
    let revoked_view = state.clone();
    let revoked: Arc<dyn Fn(&str) -> bool + Send + Sync> =
        Arc::new(move |serial: &str| revoked_view.read().map(|s| s.is_revoked(serial)).unwrap_or(true));
    let port_tls = PortTls {
        members: tls::server_config_mtls(&ca_cert_pem, &chain, key_pem.expose(), revoked)
            .context("TLS server setup")?,
        joiners: tls::server_config_join(&chain, key_pem.expose()).context("TLS join setup")?,
        ir_id: config.ir_id.clone(),
    };
    let summary = pki::cert_summary(&cert_pem).context("cannot read this node's certificate")?;
    let (cert_not_after, cert_serial) = (summary.not_after, summary.serial_hex);

    let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("cannot listen on {}: the port is already in use", config.listen)
        } else {
            anyhow::anyhow!("cannot listen on {}: {e}", config.listen)
        }
    })?;
    let socket_path = dir.socket_path();
    let _ = std::fs::remove_file(&socket_path);
    let local = UnixListener::bind(&socket_path).with_context(|| format!("cannot create {}", socket_path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    }

    let node = Arc::new(Node {
        liveness: liveness::Liveness::new(),
        admission: admission::Admission::default(),
        membership_changed: tokio::sync::Notify::new(),
        proposer: proposer::Proposer::spawn(raft.clone()),
        raft_proof,
        config,
        raft,
        state,
        data_key,
        peers,
        cert_not_after,
        cert_serial,
        db,
        restore_guard: restored::RestoreGuard::load(dir),
        progress: crate::dispatch::ProgressBoard::default(),
        dispatch_wake: tokio::sync::Notify::new(),
    });

    let (members_in, joiners_in) = accept_node_port(listener, port_tls);
    let services = services::Services::new(node.clone());
    let members = Server::builder()
        .add_service(services.raft())
        .add_service(services.cluster())
        .add_service(services.admin())
        .serve_with_incoming(members_in);
    let joiners = services.joiners_server().serve_with_incoming(joiners_in);
    let locals = Server::builder()
        .add_service(services.admin())
        .serve_with_incoming(accept_local(local));
    for (what, server) in [
        ("node port", tokio::spawn(members)),
        ("join port", tokio::spawn(joiners)),
        ("local socket", tokio::spawn(locals)),
    ] {
        tokio::spawn(async move {
            if let Ok(Err(e)) = server.await {
                tracing::error!(error = %e, "{what} server stopped");
            }
        });
    }
    tokio::spawn(liveness::heartbeat_loop(node.clone()));
    tokio::spawn(membership::reconcile_loop(node.clone()));
    tokio::spawn(restored::watch(node.clone()));
    tokio::spawn(crate::dispatch::dispatch_loop(node.clone()));
    tokio::spawn(crate::worker::worker_loop(node.clone()));
    tokio::spawn(raftmod::snapshot_loop(
        node.raft.clone(),
        node.state.clone(),
        node.config
            .snapshot_every_entries
            .unwrap_or(raftmod::DEFAULT_SNAPSHOT_EVERY)
            .max(2),
    ));
    Ok(node)
}
