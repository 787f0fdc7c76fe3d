//! The host service (`shir run`): opens the node's storage, starts Raft, builds the `Node`
//! handle and the dispatcher's, serves the node port and the local socket, runs the loops
//! (heartbeats, membership, dispatch, worker) and stops them all on one signal.
//!
//! Stopping (SIGTERM, SIGINT, or this node removed from the IR) goes in two steps, bounded
//! by `STOP_WITHIN`: first `Node::shutdown` is cancelled, so the local socket and the join
//! port stop taking calls, the heartbeats say this node takes no more jobs, the loops end
//! and the worker hands back the attempts that have not begun publishing; then, once the
//! worker has drained, the node port closes, Raft stops and sled is flushed.

use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use super::{Node, admission, liveness, membership, proposer, restored, services};
use crate::datadir::{DataDir, NodeFiles};
use crate::dispatch::{Dispatcher, ToDispatcher};
use crate::pki::{self, tls};
use crate::raft::network::{NetworkFactory, Peers};
use crate::raft::store::RaftStore;
use crate::raft::{self as raftmod, Raft};
use crate::state::IrState;
use crate::transport::server::{PortTls, accept_local, accept_node_port};

pub use crate::timing::STOP_WITHIN;
use crate::timing::{DRAIN_WITHIN, SERVER_CLOSE_WAIT};

/// A node being served: the handle, and what `run` waits on to stop it.
pub struct Running {
    pub node: Arc<Node>,
    /// Ends once the worker has no attempt left.
    worker: JoinHandle<()>,
    /// Cancelled after the drain: closes the node port.
    servers_stop: CancellationToken,
    servers: Vec<JoinHandle<()>>,
}

/// `shir run`: serves until SIGINT or SIGTERM (exit 0), or until this node was removed.
pub async fn run(dir: DataDir) -> Result<()> {
    let files = dir.load()?;
    let running = start(&dir, files).await?;
    let node = running.node.clone();
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
    if tokio::time::timeout(STOP_WITHIN, stop(running)).await.is_err() {
        tracing::warn!(
            within_s = STOP_WITHIN.as_secs(),
            "shutdown did not complete in time; exiting"
        );
    }
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

/// Stops a running node: the signal, the worker's drain, the servers, Raft, sled.
async fn stop(running: Running) {
    let Running {
        node,
        worker,
        servers_stop,
        servers,
    } = running;
    node.shutdown.cancel();
    if tokio::time::timeout(DRAIN_WITHIN, worker).await.is_err() {
        tracing::warn!("attempts still running at shutdown; they are requeued once this node is offline");
    }
    servers_stop.cancel();
    for server in servers {
        let _ = tokio::time::timeout(SERVER_CLOSE_WAIT, server).await;
    }
    let _ = node.raft.shutdown().await;
    let _ = node.db.flush_async().await;
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

use crate::timing::{OUT_OF_MEMBERSHIP_GRACE, REMOVAL_CHECK_INTERVAL};

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
        tokio::time::sleep(REMOVAL_CHECK_INTERVAL).await;
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
pub async fn start(dir: &DataDir, files: NodeFiles) -> Result<Running> {
    let NodeFiles {
        config,
        ca_cert_pem,
        cert_pem,
        key_pem,
        data_key,
    } = files;
    let db = open_db(dir)?;
    let state = Arc::new(RwLock::new(IrState::default()));
    let (log_store, state_machine) = RaftStore::open(&db, &dir.raft_log_path(), state.clone(), Some(config.node_id))
        .context("cannot open the Raft store")?;

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
            durable: log_store.durable(),
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
        shutdown: CancellationToken::new(),
    });
    let dispatcher = Arc::new(Dispatcher::default());
    let shutdown = node.shutdown.clone();
    let servers_stop = CancellationToken::new();

    // The node port carries Raft and the reports of attempts still winding down: it stays
    // open until the drain is over. Operators and joiners are turned away at once.
    let (members_in, joiners_in) = accept_node_port(listener, port_tls, servers_stop.clone());
    let services = services::Services::new(node.clone(), dispatcher.clone());
    let members = Server::builder()
        .add_service(services.raft())
        .add_service(services.cluster())
        .add_service(services.admin())
        .serve_with_incoming_shutdown(members_in, servers_stop.clone().cancelled_owned());
    let joiners = services
        .joiners_server()
        .serve_with_incoming_shutdown(joiners_in, shutdown.clone().cancelled_owned());
    let locals = Server::builder()
        .add_service(services.admin())
        .serve_with_incoming_shutdown(
            accept_local(local, shutdown.clone()),
            shutdown.clone().cancelled_owned(),
        );
    let servers = [
        ("node port", tokio::spawn(members)),
        ("join port", tokio::spawn(joiners)),
        ("local socket", tokio::spawn(locals)),
    ]
    .into_iter()
    .map(|(what, server)| {
        tokio::spawn(async move {
            if let Ok(Err(e)) = server.await {
                tracing::error!(error = %e, "{what} server stopped");
            }
        })
    })
    .collect();
    tokio::spawn(liveness::heartbeat_loop(node.clone(), servers_stop.clone()));
    tokio::spawn(membership::reconcile_loop(node.clone()));
    tokio::spawn(restored::watch(node.clone()));
    // Ends with Raft's metrics channel, when Raft shuts down.
    tokio::spawn(raftmod::snapshot_loop(
        node.raft.clone(),
        node.state.clone(),
        node.config
            .snapshot_every_entries
            .unwrap_or(raftmod::DEFAULT_SNAPSHOT_EVERY)
            .max(2),
    ));
    tokio::spawn(crate::dispatch::dispatch_loop(node.clone(), dispatcher.clone()));
    let reports = Arc::new(ToDispatcher {
        node: node.clone(),
        dispatcher,
    });
    let worker = tokio::spawn(crate::worker::worker_loop(node.clone(), reports));
    Ok(Running {
        node,
        worker,
        servers_stop,
        servers,
    })
}
