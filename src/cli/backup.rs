//! `shir backup create | restore`: a node's identity, the IR's CA and data key in one
//! password-sealed file (ADF's `dmgcmd -gbf` / `-ibf`).
//!
//! The node's database is not in the backup: a restored node starts with an empty one and
//! catches up from the other members through Raft, as a newly registered node does. Nor is
//! `local.key`: it belongs to a machine, so restore makes a new one and wraps the data key
//! with it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::datadir::{DEFAULT_DATA_DIR, DataDir, NodeConfig};
use crate::pki::{self, Role};
use crate::secrets::backup::{self, BackupContents};
use crate::secrets::{SecretBytes, SecretString};

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Write this node's identity, the IR's CA and data key to a password-sealed file.
    #[command(
        after_help = "Reads the data dir's files only, so it works whether the node runs or not. The file is \
written owner-only; keep it and its password apart: together they let anyone act as this node and read the IR's secrets."
    )]
    Create {
        /// Data directory of the node to back up.
        #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// File to write; must not exist.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        password: PasswordSource,
        #[arg(long)]
        json: bool,
    },
    /// Bring a node back from a backup file into an empty data directory.
    #[command(
        after_help = "The restored node keeps its name, id, address and certificate, and catches up on the IR's \
state from the other members when it runs. Restore a node only once its original no longer runs: two processes \
with one identity confuse the IR."
    )]
    Restore {
        /// Backup file from `shir backup create`.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        password: PasswordSource,
        /// Empty (or absent) data directory to restore into.
        #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Where the password comes from: never a flag's value, which `ps` and shell history show.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct PasswordSource {
    /// File holding the password (its first line; keep it owner-only).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordSource {
    fn read(&self) -> Result<SecretBytes> {
        let password = match &self.password_file {
            Some(path) => backup::password_from_file(path)?,
            None => backup::password_from_reader(std::io::stdin().lock(), "standard input")?,
        };
        Ok(password)
    }
}

pub async fn run(command: BackupCommand) -> Result<()> {
    match command {
        BackupCommand::Create {
            data_dir,
            file,
            password,
            json,
        } => {
            let made = create(&DataDir::new(&data_dir), &file, &password)
                .with_context(|| format!("cannot back up {}", data_dir.display()))?;
            if json {
                super::print_json(&serde_json::json!({
                    "file": file,
                    "node": made.name,
                    "node_id": made.node_id,
                    "ir_name": made.ir_name,
                    "ir_id": made.ir_id,
                }));
            } else {
                println!(
                    "backed up node '{}' (id {}) of IR '{}' ({}) to {}",
                    made.name,
                    made.node_id,
                    made.ir_name,
                    made.ir_id,
                    file.display()
                );
            }
            Ok(())
        }
        BackupCommand::Restore {
            file,
            password,
            data_dir,
            json,
        } => {
            let (restored, backup_created) = restore(&file, &password, &DataDir::new(&data_dir))
                .with_context(|| format!("cannot restore from {}", file.display()))?;
            if json {
                super::print_json(&serde_json::json!({
                    "node": restored.name,
                    "node_id": restored.node_id,
                    "ir_name": restored.ir_name,
                    "ir_id": restored.ir_id,
                    "address": restored.advertise,
                    "data_dir": data_dir,
                    "backup_created": super::output::rfc3339_secs(backup_created),
                }));
            } else {
                println!(
                    "restored node '{}' (id {}) of IR '{}'; next: shir run --data-dir {}",
                    restored.name,
                    restored.node_id,
                    restored.ir_name,
                    data_dir.display()
                );
            }
            Ok(())
        }
    }
}

fn create(dir: &DataDir, file: &Path, password: &PasswordSource) -> Result<NodeConfig> {
    // A backup is never overwritten: the file being replaced may be the only good copy.
    if file.symlink_metadata().is_ok() {
        bail!("{} already exists; choose another --file", file.display());
    }
    let files = dir.load()?;
    let node_json = std::fs::read_to_string(dir.config_path())
        .with_context(|| format!("cannot read {}", dir.config_path().display()))?;
    check_identity(
        &files.config,
        &files.config.ir_id,
        &files.ca_cert_pem,
        &files.cert_pem,
        &files.key_pem,
    )?;
    let password = password.read()?;
    let contents = BackupContents {
        ir_id: files.config.ir_id.clone(),
        node_json,
        ca_cert_pem: files.ca_cert_pem,
        cert_pem: files.cert_pem,
        key_pem: files.key_pem,
        data_key: files.data_key,
        created_at: crate::unix_now(),
    };
    let sealed = backup::seal_backup(&contents, &password)?;
    crate::secrets::write_private_file(file, &sealed).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(files.config)
}

/// Restores into `dir`; the node's configuration and when the backup was made.
fn restore(file: &Path, password: &PasswordSource, dir: &DataDir) -> Result<(NodeConfig, i64)> {
    dir.ensure_empty()?;
    let sealed = backup::read_backup_file(file).map_err(|e| anyhow!("cannot read the backup file: {e}"))?;
    let password = password.read()?;
    let contents = backup::open_backup(&sealed, &password)?;
    let config: NodeConfig = serde_json::from_str(&contents.node_json)
        .map_err(|e| anyhow!("the backup's node.json is not a node configuration: {e}"))?;
    check_identity(
        &config,
        &contents.ir_id,
        &contents.ca_cert_pem,
        &contents.cert_pem,
        &contents.key_pem,
    )?;

    // Everything is known good; only now is anything written, node.json last.
    dir.ensure_empty()?;
    let created = dir.create()?;
    // Written before node.json: a node that starts from this dir must know it lost its
    // Raft log and vote record (see node::restored).
    let marked = std::fs::write(
        dir.restored_marker_path(),
        b"restored from a backup; removed once caught up\n",
    )
    .with_context(|| format!("cannot write {}", dir.restored_marker_path().display()));
    if let Err(e) = marked.and_then(|()| {
        dir.write_identity(
            &config,
            &contents.ca_cert_pem,
            &contents.cert_pem,
            &contents.key_pem,
            &contents.data_key,
        )
    }) {
        crate::node::provision::undo(dir, created);
        return Err(e);
    }
    Ok((config, contents.created_at))
}

/// Checks that a node's parts belong together before they are sealed or written: the
/// certificate was issued by the CA to the node that `config` names, and the key is the
/// certificate's. A mismatch found here is one found before the node fails its first
/// handshake with a message far from the cause.
fn check_identity(
    config: &NodeConfig,
    ir_id: &str,
    ca_cert_pem: &str,
    cert_pem: &str,
    key_pem: &SecretString,
) -> Result<()> {
    if config.ir_id != ir_id {
        bail!("node.json belongs to IR {}, the rest to IR {ir_id}", config.ir_id);
    }
    let ca_der = pki::cert_der_from_pem(ca_cert_pem).context("the CA certificate")?;
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| anyhow!("cannot parse the CA certificate: {e}"))?;
    let cert_der = pki::cert_der_from_pem(cert_pem).context("the node certificate")?;
    let (_, cert) =
        X509Certificate::from_der(&cert_der).map_err(|e| anyhow!("cannot parse the node certificate: {e}"))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| anyhow!("the node certificate was not issued by the IR's CA certificate"))?;
    let identity = pki::identity_from_cert(&cert_der).context("the node certificate")?;
    if identity.role != Role::Node || identity.ir_id != config.ir_id || identity.name != config.name {
        bail!(
            "the node certificate is for {} '{}' of IR {}, but node.json names node '{}' of IR {}",
            identity.role.as_str(),
            identity.name,
            identity.ir_id,
            config.name,
            config.ir_id
        );
    }
    // rcgen's error is dropped unread: it is about the key's text, which is secret.
    let key = rcgen::KeyPair::from_pem(key_pem.expose())
        .map_err(|_| anyhow!("the node private key is not a PEM private key shir can read"))?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        bail!("the node private key does not belong to the node certificate");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    const IR: &str = "0123456789abcdef0123456789abcdef";

    struct Parts {
        config: NodeConfig,
        ca: Ca,
        cert_pem: String,
        key_pem: SecretString,
    }

    fn node(ca: Ca, name: &str) -> Parts {
        let key_pem = pki::new_private_key().unwrap();
        let cert = pki::issue_node_cert(&ca, key_pem.expose(), IR, name, "127.0.0.2:8060").unwrap();
        let config = NodeConfig {
            ir_id: IR.into(),
            ir_name: "prod".into(),
            node_id: 2,
            name: name.into(),
            listen: "127.0.0.2:8060".into(),
            advertise: "127.0.0.2:8060".into(),
            offline_timeout_ms: 4000,
            concurrent_jobs_limit: None,
            snapshot_every_entries: None,
            first_peers: Vec::new(),
        };
        Parts {
            config,
            ca,
            cert_pem: cert.cert_pem,
            key_pem,
        }
    }

    fn check(p: &Parts) -> Result<()> {
        check_identity(&p.config, IR, p.ca.cert_pem(), &p.cert_pem, &p.key_pem)
    }

    #[test]
    fn parts_that_belong_together_pass() {
        check(&node(Ca::generate(IR, "prod").unwrap(), "node2")).unwrap();
    }

    #[test]
    fn parts_that_do_not_belong_together_are_refused() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let good = node(ca.clone(), "node2");

        let mut other_key = node(ca.clone(), "node2");
        other_key.key_pem = pki::new_private_key().unwrap();
        let err = check(&other_key).unwrap_err().to_string();
        assert!(err.contains("does not belong to the node certificate"), "{err}");

        let mut other_ca = node(ca.clone(), "node2");
        other_ca.ca = Ca::generate(IR, "prod").unwrap();
        let err = check(&other_ca).unwrap_err().to_string();
        assert!(err.contains("not issued by the IR's CA"), "{err}");

        let mut renamed = node(ca.clone(), "node2");
        renamed.config.name = "node3".into();
        let err = check(&renamed).unwrap_err().to_string();
        assert!(err.contains("node.json names node 'node3'"), "{err}");

        let err = check_identity(
            &good.config,
            "another-ir",
            good.ca.cert_pem(),
            &good.cert_pem,
            &good.key_pem,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("another-ir"), "{err}");

        let mut garbled = node(ca, "node2");
        garbled.key_pem = SecretString::from("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n");
        let err = check(&garbled).unwrap_err().to_string();
        assert!(
            err.contains("not a PEM private key") && !err.contains("c2VjcmV0"),
            "{err}"
        );
    }
}
