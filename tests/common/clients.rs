//! Clients for poking at a node's port: TLS configs with a node's or an admin's
//! certificate or none, raw gRPC calls, Raft calls with or without a member proof, junk bytes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use shir::auth_key::AuthKey;
use shir::cli::local_ir::LocalIr;
use shir::pki::{self, tls::client_config_mtls};
use shir::proto::{
    self, admin_client::AdminClient, cluster_client::ClusterClient, join_client::JoinClient, raft_client::RaftClient,
};
use shir::secrets::member_proof::MemberProof;
use shir::transport::client::tls_channel_checked;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

pub const CALL_TIMEOUT: Duration = Duration::from_secs(8);

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// A client config presenting node `i`'s own certificate and key (with its own TLS
/// session cache, so the first connection makes a full handshake).
pub fn node_client(ir: &LocalIr, i: usize) -> Arc<ClientConfig> {
    let d = &ir.nodes[i].dir;
    client_config_mtls(&read(d.ca_cert_path()), &read(d.cert_path()), &read(d.key_path())).expect("node TLS config")
}

pub async fn connect(address: &str, config: Arc<ClientConfig>) -> Result<Channel, String> {
    tokio::time::timeout(CALL_TIMEOUT, tls_channel_checked(address, config))
        .await
        .map_err(|_| format!("connecting to {address} timed out"))?
        .map_err(|e| format!("connect: {e}"))
}

/// A client that trusts the IR's CA but has no certificate of its own.
pub fn anonymous_config(ca_pem: &str) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in pki::certs_from_pem(ca_pem).expect("CA PEM") {
        roots.add(cert).expect("CA into roots");
    }
    let mut anonymous = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    anonymous
}

/// Completes a TLS handshake with `config`, then reads: a server that refuses the client's
/// certificate says so with a fatal alert, which TLS 1.3 delivers on the client's first read.
pub async fn handshake_refusal(address: &str, config: Arc<ClientConfig>) -> String {
    let tcp = TcpStream::connect(address).await.expect("tcp connect");
    let name = shir::pki::tls::server_name(address).expect("server name");
    let mut tls = match tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(CALL_TIMEOUT, tls.read(&mut buf)).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(n)) => format!("read {n} bytes: the server did not refuse"),
        Err(_) => "timed out: the server did not refuse".into(),
    }
}

pub fn describe(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// `Admin.Status` over the node port with `config`.
pub async fn tcp_status(address: &str, config: Arc<ClientConfig>) -> Result<proto::StatusReply, String> {
    let channel = connect(address, config).await?;
    tokio::time::timeout(CALL_TIMEOUT, AdminClient::new(channel).status(proto::StatusRequest {}))
        .await
        .map_err(|_| "Status timed out".to_string())?
        .map(tonic::Response::into_inner)
        .map_err(describe)
}

pub fn heartbeat_request() -> proto::HeartbeatRequest {
    proto::HeartbeatRequest {
        name: "node4".into(),
        load: None,
        sent_at_ms: shir::unix_now_ms(),
        protocol_version: shir::protocol::PROTOCOL_VERSION,
    }
}

pub async fn heartbeat_on(channel: Channel) -> Result<String, String> {
    tokio::time::timeout(CALL_TIMEOUT, ClusterClient::new(channel).heartbeat(heartbeat_request()))
        .await
        .map_err(|_| "Heartbeat timed out".to_string())?
        .map(|r| r.into_inner().dispatcher)
        .map_err(describe)
}

/// `Cluster.Heartbeat` over a new connection with `config`.
pub async fn heartbeat(address: &str, config: Arc<ClientConfig>) -> Result<String, String> {
    heartbeat_on(connect(address, config).await?).await
}

/// `Join` as a joiner without a certificate makes it, to the first endpoint of `key`, with
/// whatever `req` says (another protocol version, say).
pub async fn join_raw(key: &AuthKey, req: proto::JoinRequest) -> Result<proto::JoinResponse, tonic::Status> {
    let config = shir::pki::tls::client_config_join(key.ca_pin).expect("join TLS config");
    let channel = connect(&key.endpoints[0], config)
        .await
        .map_err(tonic::Status::unavailable)?;
    tokio::time::timeout(CALL_TIMEOUT, JoinClient::new(channel).join(req))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("test timeout: Join did not answer"))?
        .map(tonic::Response::into_inner)
}

/// A Raft request, signed with `member` (a holder of the data key) if given. `AppendStream`
/// sends it as the one request of a stream (signed as an AppendEntries, as nodes sign them)
/// and returns the first reply.
pub async fn raft_call(
    channel: Channel,
    method: &str,
    data: Vec<u8>,
    member: Option<&MemberProof>,
) -> Result<proto::RaftPayload, tonic::Status> {
    let mut client = RaftClient::new(channel);
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signed_as = if method == "AppendStream" {
        "AppendEntries"
    } else {
        method
    };
    let proof = member
        .map(|m| m.sign(timestamp, &shir::raft::network::proof_parts(signed_as, &data)))
        .unwrap_or_default();
    let payload = proto::RaftPayload { data, timestamp, proof };
    let call = async {
        match method {
            "AppendEntries" => client.append_entries(payload).await,
            "AppendStream" => {
                let mut replies = client
                    .append_stream(futures::stream::iter([payload]))
                    .await?
                    .into_inner();
                match replies.message().await? {
                    Some(reply) => Ok(tonic::Response::new(reply)),
                    None => Err(tonic::Status::unknown("the stream ended without a reply")),
                }
            }
            "Vote" => client.vote(payload).await,
            _ => client.install_snapshot(payload).await,
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("test timeout"))?
        .map(tonic::Response::into_inner)
}

/// Writes `bytes` on a plain TCP connection and waits for the node to close it.
pub async fn send_junk(address: String, bytes: Vec<u8>) -> Result<(), String> {
    let mut tcp = TcpStream::connect(&address).await.map_err(|e| e.to_string())?;
    let _ = tcp.write_all(&bytes).await; // the node may hang up before reading it all
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. a TLS alert
            }
        }
    })
    .await;
    closed.map_err(|_| format!("{address} kept a junk connection open for 10 s"))
}
