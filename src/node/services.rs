//! The gRPC services a node serves, and who may call each: `Raft` and `Cluster` take member
//! nodes, `Admin` takes operators, `Join` takes anyone (the proof decides). Handlers check
//! the caller the transport authenticated, then hand over to the module that does the work.

use std::sync::Arc;

use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::calls::{AdminCall, admin_handlers};
use super::forward::{Calling, FORWARD_TIMEOUT, Hop, not_dispatcher};
use super::{Node, admin, admission};
use crate::dispatch::Dispatcher;
use crate::proto::{self, RaftPayload};
use crate::raft::network;
use crate::secrets::member_proof::ProofError;
use crate::transport::{Caller, caller_of};

pub use super::forward::FORWARD_PATIENCE;

#[derive(Clone)]
pub struct Services {
    node: Arc<Node>,
    dispatcher: Arc<Dispatcher>,
}

impl Services {
    /// The caller of `req`, refused if its certificate was revoked after the connection was
    /// made: the handshake check stops new connections, this stops calls on old ones.
    fn caller(&self, req: &Request<impl Sized>) -> Result<Caller, Status> {
        self.not_revoked(caller_of(req))
    }

    /// `caller`, refused if its certificate is revoked by now.
    fn not_revoked(&self, caller: Caller) -> Result<Caller, Status> {
        if let Caller::Certified(id) = &caller
            && self.node.read_state(|s| s.is_revoked(&id.serial_hex))
        {
            return Err(Status::permission_denied(format!(
                "{caller}: {}",
                crate::pki::tls::REVOKED
            )));
        }
        Ok(caller)
    }

    fn require_node<T>(&self, req: &Request<T>, what: &str) -> Result<String, Status> {
        let caller = self.caller(req)?;
        caller.node_name().map(str::to_string).ok_or_else(|| {
            Status::permission_denied(format!("{caller} may not call {what}: a node certificate is required"))
        })
    }

    pub fn new(node: Arc<Node>, dispatcher: Arc<Dispatcher>) -> Self {
        Services { node, dispatcher }
    }
    pub fn raft(&self) -> proto::raft_server::RaftServer<Self> {
        proto::raft_server::RaftServer::new(self.clone())
            .max_decoding_message_size(network::MAX_MESSAGE)
            .max_encoding_message_size(network::MAX_MESSAGE)
    }
    pub fn cluster(&self) -> proto::cluster_server::ClusterServer<Self> {
        proto::cluster_server::ClusterServer::new(self.clone())
    }
    pub fn admin(&self) -> proto::admin_server::AdminServer<Self> {
        proto::admin_server::AdminServer::new(self.clone())
    }
    pub fn join(&self) -> proto::join_server::JoinServer<Self> {
        proto::join_server::JoinServer::new(self.clone()).max_decoding_message_size(MAX_JOIN_MESSAGE)
    }

    /// The server for joiners' connections. Anyone may open one, so what a caller can make
    /// the node hold is bounded: a few streams per connection, each a small message, and
    /// connections that end (see `transport::server` for how many may be open).
    pub fn joiners_server(&self) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .max_concurrent_streams(JOIN_STREAMS_PER_CONNECTION)
            .max_connection_age(JOIN_CONNECTION_AGE)
            .max_connection_age_grace(JOIN_CONNECTION_AGE)
            .add_service(self.join())
    }
}

/// Largest `Join` request accepted: a name, an address, a CSR of a few hundred bytes and a
/// proof. Without this bound tonic's 4 MiB default let any anonymous caller make the node
/// buffer 4 MiB per stream while it trickled a body that never ends.
pub const MAX_JOIN_MESSAGE: usize = 64 << 10;

/// `shir register` makes one call per connection; a few more leave room for retries.
pub const JOIN_STREAMS_PER_CONNECTION: u32 = 4;

pub use crate::timing::JOIN_CONNECTION_AGE;

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    network::decode(bytes).map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = network::encode(value).map_err(|e| Status::internal(e.to_string()))?;
    // Replies are not signed: the caller chose this peer and verified it in the TLS handshake.
    Ok(Response::new(RaftPayload {
        data,
        ..Default::default()
    }))
}

#[tonic::async_trait]
impl proto::raft_server::Raft for Services {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> =
            decode(self.raft_request(&req, "AppendEntries")?)?;
        self.node
            .restore_guard
            .saw_leader_commit(rpc.leader_commit.map(|l| l.index));
        encode(&self.node.raft.append_entries(rpc).await)
    }

    type AppendStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        self.require_node(&req, "Raft")?;
        let caller = caller_of(&req);
        let state = (req.into_inner(), self.clone(), caller);
        // One request at a time, each answered before the next is read: the sender waits for
        // each reply anyway, and the order is what pairs them. A refused request ends the
        // stream with its status.
        let replies = futures::stream::unfold(Some(state), |state| async move {
            let (mut requests, services, caller) = state?;
            let payload = match requests.message().await {
                Ok(Some(payload)) => payload,
                Ok(None) => return None,
                Err(status) => return Some((Err(status), None)),
            };
            match services.streamed_append(&caller, &payload).await {
                Ok(reply) => Some((Ok(reply), Some((requests, services, caller)))),
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(self.raft_request(&req, "Vote")?)?;
        if self.node.restore_guard.refuses_votes() {
            return Err(Status::unavailable(
                "this node was restored from a backup and does not vote until it has caught up",
            ));
        }
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(self.raft_request(&req, "InstallSnapshot")?)?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }
}

impl Services {
    /// The bytes of a Raft request from a member: a node certificate, and a proof that the
    /// sender holds the data key, which the certificate alone does not give.
    fn raft_request<'a>(&self, req: &'a Request<RaftPayload>, method: &str) -> Result<&'a [u8], Status> {
        self.require_node(req, "Raft")?;
        self.member_payload(req.get_ref(), method)
    }

    /// One request of an `AppendStream`: checked as an `AppendEntries` call is (the stream's
    /// caller again, as its certificate may have been revoked since the stream opened), and
    /// answered the same way.
    async fn streamed_append(&self, caller: &Caller, payload: &RaftPayload) -> Result<RaftPayload, Status> {
        self.not_revoked(caller.clone())?;
        let rpc: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> =
            decode(self.member_payload(payload, "AppendEntries")?)?;
        self.node
            .restore_guard
            .saw_leader_commit(rpc.leader_commit.map(|l| l.index));
        Ok(encode(&self.node.raft.append_entries(rpc).await)?.into_inner())
    }

    /// The bytes of a Raft request, if its proof shows the sender holds the data key.
    fn member_payload<'a>(&self, payload: &'a RaftPayload, method: &str) -> Result<&'a [u8], Status> {
        let parts = network::proof_parts(method, &payload.data);
        match self
            .node
            .raft_proof
            .verify(crate::unix_now(), payload.timestamp, &parts, &payload.proof)
        {
            Ok(()) => Ok(&payload.data),
            Err(ProofError::NotAMember) => Err(Status::permission_denied(
                "Raft message refused: it carries no valid member proof (a node certificate alone is not a Raft peer)",
            )),
            Err(ProofError::ClockSkew) => Err(Status::permission_denied(
                "Raft message refused: the clocks of the two nodes differ by more than 5 minutes; check time synchronisation",
            )),
        }
    }
}

#[tonic::async_trait]
impl proto::cluster_server::Cluster for Services {
    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatReply>, Status> {
        let name = self.require_node(&req, "Heartbeat")?;
        self.node
            .liveness
            .heard(&name, req.into_inner())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let dispatcher = self
            .node
            .leader()
            .and_then(|(id, _)| self.node.node_name(id))
            .unwrap_or_default();
        Ok(Response::new(proto::HeartbeatReply { dispatcher }))
    }

    async fn forward_admin(
        &self,
        req: Request<proto::ForwardedCall>,
    ) -> Result<Response<proto::ForwardedReply>, Status> {
        let from = self.require_node(&req, "ForwardAdmin")?;
        let call = req.into_inner();
        admin::verify_forwarded(&self.node, &call)?;
        if !self.node.is_leader() {
            return Err(not_dispatcher());
        }
        tracing::debug!(method = %call.method, via = %from, on_behalf_of = %call.on_behalf_of, "forwarded admin call");
        let admin_call = AdminCall::decode(&call.method, &call.request)?;
        let response = admin::execute(&self.node, &self.dispatcher, admin_call, &call.on_behalf_of).await?;
        Ok(Response::new(proto::ForwardedReply { response }))
    }

    async fn job_report(
        &self,
        req: Request<proto::JobReportRequest>,
    ) -> Result<Response<proto::JobReportReply>, Status> {
        let name = self.require_node(&req, "JobReport")?;
        if !self.node.is_leader() {
            return Err(not_dispatcher());
        }
        // The attempt is checked against the node the certificate names, never a field.
        let from = self
            .node
            .read_state(|s| s.node_by_name(&name).map(|n| n.id))
            .ok_or_else(|| Status::permission_denied(format!("{name} is not a member")))?;
        self.dispatcher
            .report(&self.node, from, req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn forward_join(&self, req: Request<proto::JoinRequest>) -> Result<Response<proto::JoinResponse>, Status> {
        self.require_node(&req, "ForwardJoin")?;
        if !self.node.is_leader() {
            return Err(not_dispatcher());
        }
        admission::admit(&self.node, req.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl proto::join_server::Join for Services {
    async fn join(&self, req: Request<proto::JoinRequest>) -> Result<Response<proto::JoinResponse>, Status> {
        let join = req.into_inner();
        let node = &self.node;
        let calling = Calling {
            patience: FORWARD_PATIENCE,
            attempt: FORWARD_TIMEOUT,
            idempotent: false,
        };
        node.at_dispatcher(calling, |hop| {
            let join = join.clone();
            async move {
                match hop {
                    Hop::Here => admission::admit(node, join).await,
                    Hop::There(channel) => proto::cluster_client::ClusterClient::new(channel)
                        .forward_join(join)
                        .await
                        .map(Response::into_inner),
                }
            }
        })
        .await
        .map(Response::new)
    }
}

impl Services {
    /// Every admin RPC: check the caller is an operator, then run the call where it must run.
    async fn admin_call<Req, Resp: Message + Default>(
        &self,
        call: fn(Req) -> AdminCall,
        req: Request<Req>,
    ) -> Result<Response<Resp>, Status> {
        let caller = self.caller(&req)?;
        let call = call(req.into_inner());
        let method = call.method();
        if !caller.is_admin() {
            return Err(Status::permission_denied(format!(
                "{caller} may not call {method}: an admin certificate or the local socket is required"
            )));
        }
        let bytes = admin::route(&self.node, &self.dispatcher, call, &caller.to_string()).await?;
        Resp::decode(bytes.as_slice())
            .map(Response::new)
            .map_err(|e| Status::internal(format!("malformed reply to {method}: {e}")))
    }
}

admin_handlers!(Services);
