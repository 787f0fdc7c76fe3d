//! How CLI commands reach a node: the local node's Unix socket (the data dir's owner is
//! an operator), or a remote node's port with an admin certificate file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use tonic::transport::Channel;

use crate::datadir::{DEFAULT_DATA_DIR, DataDir};
use crate::pki::tls;
use crate::proto::admin_client::AdminClient;
use crate::transport::client::{tls_channel_checked, unix_channel};

/// Which node a command talks to.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Data directory of the local node (its owner-only socket is used).
    #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Talk to a remote node at HOST:PORT instead (needs --admin-cert).
    #[arg(long, requires = "admin_cert")]
    pub endpoint: Option<String>,
    /// Admin certificate file from `shir admin-cert issue` (for --endpoint).
    #[arg(long, requires = "endpoint")]
    pub admin_cert: Option<PathBuf>,
}

impl Target {
    pub async fn connect(&self) -> Result<AdminClient<Channel>> {
        let channel = match (&self.endpoint, &self.admin_cert) {
            (Some(endpoint), Some(cert)) => {
                let bundle = AdminCertFile::read(cert)?;
                let config = tls::client_config_mtls(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem)?;
                tls_channel_checked(endpoint, config)
                    .await
                    .with_context(|| format!("cannot connect to {endpoint}"))?
            }
            _ => {
                let dir = DataDir::new(&self.data_dir);
                if !dir.is_provisioned() {
                    bail!(
                        "{} holds no shir node; pass --data-dir, or --endpoint with --admin-cert",
                        self.data_dir.display()
                    );
                }
                unix_channel(&dir.socket_path()).await?
            }
        };
        Ok(AdminClient::new(channel))
    }
}

/// Has the IR issue an admin certificate named `name`. The key is made here and only its
/// CSR travels, so the admin's private key never exists anywhere but on this machine.
pub async fn request_admin_cert(client: &mut AdminClient<Channel>, name: &str) -> Result<(AdminCertFile, i64)> {
    let key_pem = crate::pki::new_private_key()?;
    let csr_der = crate::pki::make_csr(key_pem.expose(), name)?;
    let reply = client
        .admin_cert_issue(crate::proto::AdminCertIssueRequest {
            name: name.to_string(),
            csr_der,
        })
        .await?
        .into_inner();
    let file = AdminCertFile {
        cert_pem: reply.cert_pem,
        ca_pem: reply.ca_cert_pem,
        key_pem: key_pem.expose().to_string(),
    };
    Ok((file, reply.not_after))
}

/// The file `shir admin-cert issue` writes: the admin certificate, the IR's CA and the
/// admin's private key, PEM, owner-only.
pub struct AdminCertFile {
    pub cert_pem: String,
    pub ca_pem: String,
    pub key_pem: String,
}

impl AdminCertFile {
    pub fn render(&self, header: &str) -> String {
        format!(
            "# {header}\n# Keep this file private: it grants administration of the IR.\n{}{}{}",
            self.cert_pem, self.ca_pem, self.key_pem
        )
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read admin certificate {}", path.display()))?;
        let certs = pem_blocks(&text, "CERTIFICATE");
        let key = pem_blocks(&text, "PRIVATE KEY").into_iter().next();
        match (certs.as_slice(), key) {
            ([cert, ca], Some(key_pem)) => Ok(AdminCertFile {
                cert_pem: cert.clone(),
                ca_pem: ca.clone(),
                key_pem,
            }),
            _ => bail!(
                "{} is not an admin certificate file (expected a certificate, the CA and a private key)",
                path.display()
            ),
        }
    }
}

/// The PEM blocks of one label in `text`, each with its BEGIN/END lines.
pub fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else { break };
        let stop = start + stop + end.len();
        out.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    out
}
