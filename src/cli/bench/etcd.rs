//! The comparison: an etcd (Debian's `etcd-server`) of as many members as the shir IR has
//! nodes, on 127.0.0.1-N with its default fsync, driven through the same tonic client stack
//! as shir: the same quorum on both sides (three of four waits for two followers' syncs).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use super::load::PutFuture;
use crate::timing::{ETCD_LEADER_POLL, ETCD_LEADER_WAIT};

pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub struct Cluster {
    pub version: String,
    client_urls: Vec<String>,
    _members: Vec<Child>,
}

impl Cluster {
    /// Starts an etcd of `size` members if it is installed; `None` if it is not. Client port
    /// `port`, peer `port + 1`.
    pub async fn start(work: &Path, port: u16, size: usize) -> Result<Option<Cluster>> {
        let Ok(out) = std::process::Command::new("etcd").arg("--version").output() else {
            return Ok(None);
        };
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_string();
        let peer = |i: usize| format!("http://127.0.0.{}:{}", i + 1, port + 1);
        let client = |i: usize| format!("http://127.0.0.{}:{}", i + 1, port);
        let initial: Vec<String> = (0..size).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut members = Vec::new();
        for i in 0..size {
            let log = std::fs::File::create(work.join(format!("etcd{i}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(work.join(format!("etcd{i}")))
                .args([
                    "--listen-client-urls",
                    &client(i),
                    "--advertise-client-urls",
                    &client(i),
                ])
                .args([
                    "--listen-peer-urls",
                    &peer(i),
                    "--initial-advertise-peer-urls",
                    &peer(i),
                ])
                .args([
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--initial-cluster-token", "shir-bench"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?;
            members.push(child);
        }
        let cluster = Cluster {
            version,
            client_urls: (0..size).map(client).collect(),
            _members: members,
        };
        let deadline = Instant::now() + ETCD_LEADER_WAIT;
        while cluster.leader_url().await.is_err() {
            if Instant::now() > deadline {
                bail!("no etcd leader within {} s", ETCD_LEADER_WAIT.as_secs());
            }
            tokio::time::sleep(ETCD_LEADER_POLL).await;
        }
        Ok(Some(cluster))
    }

    async fn leader_url(&self) -> Result<String> {
        for url in &self.client_urls {
            let channel = Endpoint::from_shared(url.clone())?.connect().await?;
            let status = pb::maintenance_client::MaintenanceClient::new(channel)
                .status(pb::StatusRequest {})
                .await?
                .into_inner();
            let me = status.header.map(|h| h.member_id).unwrap_or(0);
            if status.leader != 0 && status.leader == me {
                return Ok(url.clone());
            }
        }
        Err(anyhow!("no leader yet"))
    }

    /// `n` connections to the leader (writes to a follower would add a forwarding hop).
    pub async fn leader_channels(&self, n: usize) -> Result<Vec<Channel>> {
        let url = self.leader_url().await?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(Endpoint::from_shared(url.clone())?.tcp_nodelay(true).connect().await?);
        }
        Ok(out)
    }
}

pub fn put(channels: Vec<Channel>) -> impl Fn(usize, u64) -> PutFuture + Clone {
    let clients: Arc<Vec<pb::kv_client::KvClient<Channel>>> =
        Arc::new(channels.into_iter().map(pb::kv_client::KvClient::new).collect());
    move |client: usize, seq: u64| {
        let mut c = clients[client % clients.len()].clone();
        Box::pin(async move {
            let request = pb::PutRequest {
                key: format!("bench/{client}").into_bytes(),
                value: format!("{seq:016}").into_bytes(),
            };
            c.put(request)
                .await
                .map(drop)
                .map_err(|s| anyhow!(s.message().to_string()))
        })
    }
}
