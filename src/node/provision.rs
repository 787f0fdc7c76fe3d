//! Making a node: `init` creates a new IR and its first node; `register` admits this
//! machine into an existing IR with an authentication key. Both write nothing until they
//! have everything, and `node.json` last, so a refusal or a crash leaves no half node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, anyhow, bail};
use openraft::BasicNode;
use rand::RngCore;

use crate::auth_key::{AuthKey, JoinProofInput, join_proof};
use crate::datadir::{DEFAULT_OFFLINE_TIMEOUT_MS, DataDir, NodeConfig};
use crate::pki::{self, Ca, tls};
use crate::proto;
use crate::raft::network::{NetworkFactory, Peers};
use crate::raft::store::RaftStore;
use crate::raft::{self as raftmod, Raft};
use crate::secrets::member_proof::MemberProof;
use crate::secrets::{self, DataKey};
use crate::state::{AuthKeySlot, Command, IrInfo, IrState, NodeRecord, Sealed, ca_key_aad, validate_node_name};
use crate::timing::BOOTSTRAP_LEADER_WAIT;
use crate::transport::client::tls_channel_checked;

/// Where a node listens and what address it gives others.
pub struct Addresses {
    pub listen: String,
    pub advertise: String,
}

impl Addresses {
    /// `listen` must be `ip:port`; `advertise` defaults to it and must be dialable.
    pub fn new(listen: &str, advertise: Option<&str>) -> Result<Self> {
        let bind: SocketAddr = listen
            .parse()
            .map_err(|_| anyhow!("invalid --listen '{listen}': expected IP:PORT, e.g. 10.0.0.1:8060"))?;
        let advertise = match advertise {
            Some(a) => a.to_string(),
            None if bind.ip().is_unspecified() => {
                bail!("--listen {listen} is not an address other nodes can dial; add --advertise HOST:PORT")
            }
            None => listen.to_string(),
        };
        tls::server_name(&advertise).map_err(|e| anyhow!("invalid --advertise '{advertise}': {e}"))?;
        Ok(Addresses {
            listen: listen.to_string(),
            advertise,
        })
    }
}

impl Addresses {
    /// The `node.json` of a newly provisioned node at these addresses, with default tuning.
    fn node_config(&self, ir_id: &str, ir_name: &str, node_id: u64, name: &str) -> NodeConfig {
        NodeConfig {
            ir_id: ir_id.to_string(),
            ir_name: ir_name.to_string(),
            node_id,
            name: name.to_string(),
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            offline_timeout_ms: DEFAULT_OFFLINE_TIMEOUT_MS,
            concurrent_jobs_limit: None,
            snapshot_every_entries: None,
            first_peers: Vec::new(),
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Removes what a failed provisioning wrote, leaving the directory as it was before.
pub(crate) fn undo(dir: &DataDir, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(dir.root());
    } else if let Ok(entries) = std::fs::read_dir(dir.root()) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// `shir init`: a new IR whose first node lives in `dir`.
pub async fn init(dir: &DataDir, name: &str, addrs: &Addresses, ir_name: &str) -> Result<NodeConfig> {
    validate_node_name(name).map_err(|e| anyhow!(e))?;
    if ir_name.trim().is_empty() {
        bail!("--ir-name must not be empty");
    }
    dir.ensure_empty()?;
    let created = dir.create()?;
    let result = init_into(dir, name, addrs, ir_name).await;
    if result.is_err() {
        undo(dir, created);
    }
    result
}

async fn init_into(dir: &DataDir, name: &str, addrs: &Addresses, ir_name: &str) -> Result<NodeConfig> {
    let ir_id = hex::encode(random_bytes::<16>());
    let ca = Ca::generate(&ir_id, ir_name).context("cannot create the CA")?;
    let key_pem = pki::new_private_key()?;
    let cert = pki::issue_node_cert(&ca, key_pem.expose(), &ir_id, name, &addrs.advertise)
        .context("cannot issue the node certificate")?;
    let data_key = DataKey::generate();
    let now = crate::unix_now();

    let auth_keys = (1..=2u8)
        .map(|slot| AuthKeySlot {
            generation: 1,
            secret: crate::auth_key::new_sealed_secret(&data_key, &ir_id, slot),
        })
        .collect();
    let ir = IrInfo {
        id: ir_id.clone(),
        name: ir_name.to_string(),
        created_at: now,
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key: Sealed(secrets::seal(
            &data_key,
            ca_key_aad(&ir_id).as_bytes(),
            ca.key_pem().expose().as_bytes(),
        )),
    };
    let first_node = NodeRecord {
        id: 1,
        name: name.to_string(),
        address: addrs.advertise.clone(),
        cert_serial: cert.serial_hex.clone(),
        cert_not_after: cert.not_after,
        cert_pem: cert.cert_pem.clone(),
        join_nonce: String::new(),
        joined_at: now,
    };
    let config = addrs.node_config(&ir_id, ir_name, 1, name);

    // The first entries of the log: a one-node membership and the IR itself. Done here, in
    // process, so that `init` leaves a complete node and `run` has nothing special to do.
    {
        let db = crate::node::open_db(dir)?;
        let (log_store, state_machine) = RaftStore::open(
            &db,
            &dir.raft_log_path(),
            Arc::new(RwLock::new(IrState::default())),
            Some(1),
        )?;
        let client_tls = tls::client_config_mtls(ca.cert_pem(), &cert.cert_pem, key_pem.expose())?;
        let raft = Raft::new(
            1,
            raftmod::config(&ir_id, None),
            NetworkFactory {
                peers: Peers::new(client_tls),
                proof: Arc::new(MemberProof::new(&data_key, crate::raft::network::PROOF_PURPOSE)),
                durable: log_store.durable(),
            },
            log_store,
            state_machine,
        )
        .await?;
        raft.initialize(BTreeMap::from([(1, BasicNode::new(&addrs.advertise))]))
            .await?;
        raft.wait(Some(BOOTSTRAP_LEADER_WAIT))
            .current_leader(1, "bootstrap leader")
            .await?;
        let bootstrap = Command::Bootstrap {
            ir,
            first_node,
            auth_keys,
        };
        raft.client_write(bootstrap)
            .await
            .map_err(|e| anyhow!("cannot record the IR: {e}"))?;
        raft.shutdown().await.map_err(|e| anyhow!("raft shutdown: {e}"))?;
        db.flush_async().await?;
    }
    // Written last: `write_identity` puts node.json after everything else.
    dir.write_identity(&config, ca.cert_pem(), &cert.cert_pem, &key_pem, &data_key)?;
    Ok(config)
}

/// A `Join` request for this node, with a new nonce and timestamp and the proof over them.
pub fn join_request(key: &AuthKey, name: &str, address: &str, csr_der: &[u8]) -> proto::JoinRequest {
    let nonce = random_bytes::<16>().to_vec();
    let timestamp = crate::unix_now();
    let input = JoinProofInput {
        ir_id: &key.ir_id,
        slot: key.slot,
        name,
        address,
        csr_der,
        timestamp,
        nonce: &nonce,
    };
    let proof = join_proof(key.secret.expose(), &input).to_vec();
    proto::JoinRequest {
        ir_id: key.ir_id.clone(),
        key_slot: key.slot.into(),
        name: name.to_string(),
        address: address.to_string(),
        csr_der: csr_der.to_vec(),
        timestamp,
        nonce,
        proof,
        protocol_version: crate::protocol::PROTOCOL_VERSION,
    }
}

/// `shir register`: joins the IR named by `auth_key`. The key is checked (checksum) before
/// anything touches the network; nothing is written unless the IR admits this node.
pub async fn register(dir: &DataDir, name: &str, addrs: &Addresses, auth_key: &str) -> Result<NodeConfig> {
    let key = AuthKey::parse(auth_key)?;
    validate_node_name(name).map_err(|e| anyhow!(e))?;
    dir.ensure_empty()?;

    let key_pem = pki::new_private_key()?;
    let csr_der = pki::make_csr(key_pem.expose(), name)?;
    let tls = tls::client_config_join(key.ca_pin)?;

    let mut failures = Vec::new();
    let mut admitted = None;
    for endpoint in &key.endpoints {
        let channel = match tls_channel_checked(endpoint, tls.clone()).await {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        // A fresh proof per attempt: if an earlier attempt committed but its answer was
        // lost, the IR recognises this node by its name, address and key and answers with
        // that registration; a replayed proof is never needed.
        let request = join_request(&key, name, &addrs.advertise, &csr_der);
        match proto::join_client::JoinClient::new(channel).join(request).await {
            Ok(reply) => {
                admitted = Some(reply.into_inner());
                break;
            }
            // Unreachable, leaderless or slow member: another member may do better.
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                failures.push(format!("{endpoint}: {}", s.message()))
            }
            Err(s) => bail!("registration refused: {}", s.message()),
        }
    }
    let reply = admitted.ok_or_else(|| {
        anyhow!(
            "could not register through any endpoint in the key: {}",
            failures.join("; ")
        )
    })?;

    if pki::spki_pin(reply.ca_cert_pem.as_bytes())? != key.ca_pin {
        bail!("the IR answered with a CA that does not match the authentication key's pin; nothing written");
    }
    let mut config = addrs.node_config(&key.ir_id, &reply.ir_name, reply.node_id, name);
    config.first_peers = key
        .endpoints
        .iter()
        .filter(|e| **e != addrs.advertise)
        .cloned()
        .collect();
    let data_key =
        DataKey::from_bytes(&reply.data_key).map_err(|e| anyhow!("the IR sent a malformed data key: {e}"))?;
    let created = dir.create()?;
    if let Err(e) = dir.write_identity(&config, &reply.ca_cert_pem, &reply.cert_pem, &key_pem, &data_key) {
        undo(dir, created);
        return Err(e);
    }
    Ok(config)
}
