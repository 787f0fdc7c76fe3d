//! Raft transport: openraft's three RPCs carried over the `Raft` gRPC service on the node
//! port, mutual TLS with this node's certificate. Requests and responses travel as
//! bincode bytes (compact: snapshot chunks and command payloads stay their own size), the
//! callee's `Result` included, so a remote Raft error comes back as the same typed error
//! openraft would have produced locally.

// openraft's `RPCError` is the type every `RaftNetwork` method returns; the helpers that build
// it return it too, rather than a boxed one unboxed again at the trait boundary.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::store::Durable;
use super::types::{Node, NodeId, TypeConfig};
use crate::proto::RaftPayload;
use crate::proto::raft_client::RaftClient;
use crate::secrets::member_proof::MemberProof;
use crate::transport::client::tls_channel;

/// Channels to peers, one per address, shared by Raft replication and the node's own
/// calls (heartbeats, forwarding) so each pair of nodes keeps one TLS session.
#[derive(Clone)]
pub struct Peers {
    tls: Arc<ClientConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        Peers {
            tls,
            channels: Arc::default(),
        }
    }

    /// The client configuration (this node's certificate) its connections use.
    pub fn tls(&self) -> Arc<ClientConfig> {
        self.tls.clone()
    }

    pub fn channel(&self, address: &str) -> Channel {
        let mut map = self.channels.lock().expect("peers lock");
        map.entry(address.to_string())
            .or_insert_with(|| tls_channel(address, self.tls.clone()))
            .clone()
    }
}

/// Largest Raft message a node accepts or sends. Entries are bounded (see
/// `MAX_PAYLOAD_ENTRIES` and the proposer's batch size) and snapshots travel in chunks of
/// `SNAPSHOT_CHUNK`, so real messages stay far below it; the bound exists so that a broken
/// or hostile peer cannot make a node buffer without limit.
pub const MAX_MESSAGE: usize = 64 << 20;

/// The wire encoding of openraft's messages.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    // Same layout as `bincode::serialize`, plus a cap so a forged length prefix cannot
    // make the decoder allocate gigabytes.
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_MESSAGE as u64)
        .deserialize(bytes)
}

pub struct NetworkFactory {
    pub peers: Peers,
    /// Signs every request as coming from a member (see `secrets::member_proof`).
    pub proof: Arc<MemberProof>,
    /// This node's durable log end: a commit index is sent no later than it (see `Durable`).
    pub durable: Durable,
}

/// The purpose string of Raft message proofs.
pub const PROOF_PURPOSE: &str = "raft";

/// The parts a Raft request's proof covers: the method, so a vote cannot be replayed as an
/// append, and the bytes.
pub fn proof_parts<'a>(method: &'a str, data: &'a [u8]) -> [&'a [u8]; 2] {
    [method.as_bytes(), data]
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            proof: self.proof.clone(),
            client: RaftClient::new(self.peers.channel(&node.addr))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            stream: None,
            unary_only: false,
            durable: self.durable.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    proof: Arc<MemberProof>,
    client: RaftClient<Channel>,
    /// The open `AppendStream`, if any: opened on first use, dropped on any failure (a reply
    /// that may still arrive would pair with the wrong request) and opened again next time.
    stream: Option<AppendStream>,
    /// The peer answered `AppendStream` with Unimplemented (a version without it).
    unary_only: bool,
    durable: Durable,
}

/// One `AppendStream`: requests go in, replies come out in the same order.
struct AppendStream {
    requests: tokio::sync::mpsc::Sender<RaftPayload>,
    replies: tonic::Streaming<RaftPayload>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, method: Method, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = self.signed(method, req)?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::Append => self.client.append_entries(request).await,
            Method::Vote => self.client.vote(request).await,
            Method::Snapshot => self.client.install_snapshot(request).await,
        };
        let payload = reply
            .map_err(|status| RPCError::Unreachable(Unreachable::new(&status)))?
            .into_inner();
        self.reply(&payload)
    }

    fn signed<Req: Serialize, E: std::error::Error>(&self, method: Method, req: &Req) -> RpcResult<RaftPayload, E> {
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timestamp = crate::unix_now();
        let proof = self.proof.sign(timestamp, &proof_parts(method.name(), &data));
        Ok(RaftPayload { data, timestamp, proof })
    }

    fn reply<Resp, E>(&self, payload: &RaftPayload) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, E> = decode(&payload.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends one request on the `AppendStream` (opening it if needed) and waits for its reply.
    async fn exchange(&mut self, payload: RaftPayload) -> Result<RaftPayload, tonic::Status> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let (requests, queue) = tokio::sync::mpsc::channel(1);
                let replies = self
                    .client
                    .append_stream(tokio_stream::wrappers::ReceiverStream::new(queue))
                    .await?
                    .into_inner();
                self.stream.insert(AppendStream { requests, replies })
            }
        };
        if stream.requests.send(payload).await.is_err() {
            return Err(tonic::Status::unavailable("the Raft stream to the peer closed"));
        }
        match stream.replies.message().await? {
            Some(reply) => Ok(reply),
            None => Err(tonic::Status::unavailable("the peer closed the Raft stream")),
        }
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl Method {
    /// The gRPC method name, which the proof covers.
    fn name(self) -> &'static str {
        match self {
            Method::Append => "AppendEntries",
            Method::Vote => "Vote",
            Method::Snapshot => "InstallSnapshot",
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        // A follower applies up to the commit index it is told; that must not include entries
        // still unsynced on this leader, which a crash here could take from the majority.
        rpc.leader_commit = self.durable.clamp(rpc.leader_commit);
        if self.unary_only {
            return self.call(Method::Append, &rpc, &option).await;
        }
        let payload = self.signed(Method::Append, &rpc)?;
        let status = match tokio::time::timeout(option.hard_ttl(), self.exchange(payload)).await {
            Ok(Ok(reply)) => return self.reply(&reply),
            Ok(Err(status)) => status,
            Err(elapsed) => tonic::Status::deadline_exceeded(elapsed.to_string()),
        };
        // A reply that may still arrive would pair with the next request.
        self.stream = None;
        if status.code() == tonic::Code::Unimplemented {
            self.unary_only = true;
            return self.call(Method::Append, &rpc, &option).await;
        }
        Err(RPCError::Unreachable(Unreachable::new(&status)))
    }

    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(Method::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(crate::timing::RAFT_UNREACHABLE_BACKOFF))
    }
}
