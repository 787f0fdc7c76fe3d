//! The node's data directory: what each file is, and loading and writing them.
//!
//! ```text
//! node.json    who this node is (IR id and name, node id, name, addresses, tuning); written
//!              last by init and register, so its presence means "a complete node"
//! ca.crt       the IR's CA certificate (public)
//! node.crt     this node's certificate
//! node.key     this node's private key (0600)
//! local.key    node-local key that wraps the data key (0600)
//! data.key     the IR's data key, sealed with local.key
//! db/          sled: the applied state (state machine) and the current snapshot
//! raft-log/    the Raft log: entries, vote, commit and purge marks (raft::store::wal)
//! shir.sock    owner-only Unix socket for local administration
//! restored     present from `shir backup restore` until the node has caught up (no voting)
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::secrets::{self, DataKey, SecretString};
use crate::state::NodeId;

/// Default location, as systemd's `StateDirectory=shir` creates it.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shir";

/// [`crate::timing::DEFAULT_OFFLINE_TIMEOUT`] in the milliseconds node.json carries.
pub const DEFAULT_OFFLINE_TIMEOUT_MS: u64 = crate::timing::DEFAULT_OFFLINE_TIMEOUT.as_millis() as u64;

/// `node.json`: the node's non-secret identity and settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeConfig {
    pub ir_id: String,
    pub ir_name: String,
    pub node_id: NodeId,
    pub name: String,
    /// Socket address to bind, `host:port`.
    pub listen: String,
    /// Address other nodes and clients dial; in the certificate as a SAN.
    pub advertise: String,
    /// See [`DEFAULT_OFFLINE_TIMEOUT_MS`].
    #[serde(default = "default_offline_timeout")]
    pub offline_timeout_ms: u64,
    /// Jobs this node runs at once; `None` derives it from cores and memory.
    #[serde(default)]
    pub concurrent_jobs_limit: Option<u32>,
    /// Take a Raft snapshot (and purge the log behind it) every this many entries;
    /// `None` is the default, 2,000. Tests lower it to exercise snapshots quickly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_every_entries: Option<u64>,
    /// The members' addresses in the authentication key this node registered with. Until
    /// its state names any peer (it has applied nothing yet), the node sends its heartbeats
    /// there: a node removed before it ever caught up learns of it from their refusal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_peers: Vec<String>,
}

fn default_offline_timeout() -> u64 {
    DEFAULT_OFFLINE_TIMEOUT_MS
}

/// Everything a node needs from disk to start.
pub struct NodeFiles {
    pub config: NodeConfig,
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: SecretString,
    pub data_key: DataKey,
}

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("node.json")
    }
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.root.join("node.crt")
    }
    pub fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("db")
    }
    pub fn raft_log_path(&self) -> PathBuf {
        self.root.join(crate::raft::store::LOG_DIR)
    }
    /// Present while a node restored from a backup has not yet caught up (node::restored).
    pub fn restored_marker_path(&self) -> PathBuf {
        self.root.join("restored")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.root.join("shir.sock")
    }

    /// True once init or register has completed here.
    pub fn is_provisioned(&self) -> bool {
        self.config_path().exists()
    }

    /// Refuses to provision over anything: a data dir holds one node's identity for life.
    pub fn ensure_empty(&self) -> Result<()> {
        if self.is_provisioned() {
            bail!(
                "{} already holds a shir node; start it with `shir run --data-dir {}`",
                self.root.display(),
                self.root.display()
            );
        }
        if let Ok(mut entries) = fs::read_dir(&self.root)
            && entries.next().is_some()
        {
            bail!("{} is not empty; choose an empty or new directory", self.root.display());
        }
        Ok(())
    }

    /// Creates the directory owner-only. Returns whether it was created (for clean-up).
    pub fn create(&self) -> Result<bool> {
        let existed = self.root.exists();
        fs::create_dir_all(&self.root).with_context(|| format!("cannot create {}", self.root.display()))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", self.root.display()))?;
        Ok(!existed)
    }

    /// Writes a complete identity; `node.json` last, so a crash midway leaves no half node.
    pub fn write_identity(
        &self,
        config: &NodeConfig,
        ca_cert_pem: &str,
        cert_pem: &str,
        key_pem: &SecretString,
        data_key: &DataKey,
    ) -> Result<()> {
        write_public(&self.ca_cert_path(), ca_cert_pem.as_bytes())?;
        write_public(&self.cert_path(), cert_pem.as_bytes())?;
        secrets::write_private_file(&self.key_path(), key_pem.expose().as_bytes())
            .with_context(|| format!("cannot write {}", self.key_path().display()))?;
        secrets::store_data_key(&self.root, data_key).context("cannot store the data key")?;
        self.write_config(config)
    }

    pub fn write_config(&self, config: &NodeConfig) -> Result<()> {
        let json = serde_json::to_vec_pretty(config)?;
        write_public(&self.config_path(), &json)
    }

    pub fn load_config(&self) -> Result<NodeConfig> {
        let path = self.config_path();
        let text = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "{} holds no shir node (no node.json); run `shir init` or `shir register` first",
                    self.root.display()
                )
            } else {
                anyhow::anyhow!("cannot read {}: {e}", path.display())
            }
        })?;
        serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    pub fn load(&self) -> Result<NodeFiles> {
        let config = self.load_config()?;
        let read = |p: PathBuf| fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()));
        Ok(NodeFiles {
            ca_cert_pem: read(self.ca_cert_path())?,
            cert_pem: read(self.cert_path())?,
            key_pem: SecretString::new(read(self.key_path())?),
            data_key: secrets::load_data_key(&self.root)?,
            config,
        })
    }
}

/// Writes a non-secret file atomically (temp file, fsync, rename).
fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
