//! Operator calls: what each does, run where its `AdminCall` says (the dispatcher, or this
//! node for local views). A call that must run on the dispatcher and arrives elsewhere is
//! forwarded over the node channel as its protobuf bytes, and executed there by the same
//! code.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use openraft::ChangeMembers;

use prost::Message;
use tonic::Status;

use super::calls::{AdminCall, Place};
use super::forward::{FORWARD_PATIENCE, Hop, no_dispatcher};
use super::{Node, job_history, jobs_admin, linked_services, liveness, schedules_admin};
use crate::auth_key::AuthKey;
use crate::dispatch::Dispatcher;
use crate::pki;
use crate::proto;
use crate::secrets::DataKey;
use crate::secrets::member_proof::{MemberProof, ProofError};
use crate::state::{AdminCertRecord, Command, auth_key_aad};
use crate::timing::{HANDOVER_PROBE_TIMEOUT, HANDOVER_RETRY_PAUSE, READ_PATIENCE};

/// Runs `call` where it belongs and returns the encoded reply. `on_behalf_of` names the
/// operator, for the dispatcher's log.
pub async fn route(
    node: &Arc<Node>,
    dispatcher: &Dispatcher,
    call: AdminCall,
    on_behalf_of: &str,
) -> Result<Vec<u8>, Status> {
    if call.place() == Place::Here {
        return execute(node, dispatcher, call, on_behalf_of).await;
    }
    let status = matches!(call, AdminCall::Status(_));
    match on_dispatcher(node, dispatcher, call, on_behalf_of).await {
        // Without a dispatcher, status is still worth having: this node's own view says
        // which nodes it hears from, and `dispatcher` is empty.
        Err(s) if status && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
            Ok(liveness::status_reply(node, None).encode_to_vec())
        }
        other => other,
    }
}

/// Brings this node up to everything the dispatcher had applied when asked, once the
/// dispatcher has confirmed with a majority that it still leads (a read index). Every write
/// acknowledged before the read began is then in this node's state. False if that could
/// not be done in time (no dispatcher): the caller answers from its own view, marked stale.
async fn read_index(node: &Arc<Node>, dispatcher: &Dispatcher, on_behalf_of: &str) -> bool {
    let index = match Box::pin(on_dispatcher(node, dispatcher, AdminCall::ReadIndex(()), on_behalf_of)).await {
        Ok(bytes) => match proto::ReadIndexReply::decode(bytes.as_slice()) {
            Ok(reply) => reply.applied_index,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    node.raft
        .wait(Some(READ_PATIENCE))
        .applied_index_at_least(Some(index), "read index")
        .await
        .is_ok()
}

/// Runs `call` on the dispatcher: here, or forwarded with this node's member proof.
async fn on_dispatcher(
    node: &Arc<Node>,
    dispatcher: &Dispatcher,
    call: AdminCall,
    on_behalf_of: &str,
) -> Result<Vec<u8>, Status> {
    let (method, request) = (call.method(), call.encode_request());
    let (call, request) = (&call, &request);
    node.at_dispatcher(call.calling(), |hop| async move {
        match hop {
            Hop::Here => Box::pin(execute(node, dispatcher, call.clone(), on_behalf_of)).await,
            Hop::There(channel) => {
                let timestamp = crate::unix_now();
                let proof = forward_proof(&node.data_key, method, request, on_behalf_of, timestamp);
                let call = proto::ForwardedCall {
                    method: method.to_string(),
                    request: request.clone(),
                    on_behalf_of: on_behalf_of.to_string(),
                    timestamp,
                    proof,
                };
                proto::cluster_client::ClusterClient::new(channel)
                    .forward_admin(call)
                    .await
                    .map(|r| r.into_inner().response)
            }
        }
    })
    .await
}

/// The purpose string of forwarded-call proofs.
const FORWARD_PROOF: &str = "forward";

/// Proof that a forwarded call comes from a full member (holder of the data key).
fn forward_proof(key: &DataKey, method: &str, request: &[u8], on_behalf_of: &str, timestamp: i64) -> Vec<u8> {
    MemberProof::new(key, FORWARD_PROOF).sign(timestamp, &[method.as_bytes(), request, on_behalf_of.as_bytes()])
}

/// Refuses a forwarded call that does not come from a full member: a node certificate alone
/// (without the data key) must not be able to make operator calls.
pub fn verify_forwarded(node: &Node, call: &proto::ForwardedCall) -> Result<(), Status> {
    let parts = [call.method.as_bytes(), &call.request[..], call.on_behalf_of.as_bytes()];
    match MemberProof::new(&node.data_key, FORWARD_PROOF).verify(crate::unix_now(), call.timestamp, &parts, &call.proof)
    {
        Ok(()) => Ok(()),
        Err(ProofError::NotAMember) => Err(Status::permission_denied(
            "forwarded operator call refused: it carries no valid member proof \
             (a node certificate alone cannot make operator calls)",
        )),
        Err(ProofError::ClockSkew) => Err(Status::permission_denied(
            "forwarded operator call refused: the clocks of this node and the forwarding node differ by \
             more than 5 minutes; check time synchronisation",
        )),
    }
}

/// Runs `call` on this node: the dispatcher, unless the call's place is `Here`.
pub async fn execute(
    node: &Arc<Node>,
    dispatcher: &Dispatcher,
    call: AdminCall,
    on_behalf_of: &str,
) -> Result<Vec<u8>, Status> {
    let reply = match call {
        AdminCall::LocalView(_) => local_view(node).encode_to_vec(),
        AdminCall::Get(req) => {
            let value = node.read_state(|s| s.kv.get(&req.key).cloned());
            proto::GetReply {
                found: value.is_some(),
                value: value.unwrap_or_default(),
            }
            .encode_to_vec()
        }
        AdminCall::LinkedServiceList(_) => {
            let stale = !read_index(node, dispatcher, on_behalf_of).await;
            linked_services::list(node, stale).encode_to_vec()
        }
        AdminCall::LinkedServiceShow(req) => {
            let stale = !read_index(node, dispatcher, on_behalf_of).await;
            linked_services::show(node, &req.name, stale)?.encode_to_vec()
        }
        AdminCall::LinkedServiceTest(req) => {
            let stale = !read_index(node, dispatcher, on_behalf_of).await;
            linked_services::test(node, &req.name, stale).await?.encode_to_vec()
        }
        AdminCall::ProxyShow(_) => {
            let stale = !read_index(node, dispatcher, on_behalf_of).await;
            linked_services::proxy_show(node, stale).encode_to_vec()
        }
        AdminCall::CredentialEncrypt(req) => linked_services::encrypt_credential(node, req)?.encode_to_vec(),
        AdminCall::Status(_) => {
            if !node.confirm_leadership().await {
                return Err(no_dispatcher());
            }
            liveness::status_reply(node, Some(node.id())).encode_to_vec()
        }
        AdminCall::KeyShow(_) => {
            // A linearizable read: a key regenerated a moment ago is never shown stale.
            if !node.confirm_leadership().await {
                return Err(no_dispatcher());
            }
            show_keys(node)?.encode_to_vec()
        }
        AdminCall::KeyRegenerate(req) => regenerate_key(node, req.slot).await?.encode_to_vec(),
        AdminCall::NodeRemove(req) => {
            let target = node.read_state(|s| s.node_by_name(&req.name).map(|r| r.id));
            if target == Some(node.id()) && node.read_state(|s| s.nodes.len()) > 1 {
                return remove_self(node, &req.encode_to_vec()).await;
            }
            remove_node(node, &req.name).await?.encode_to_vec()
        }
        AdminCall::AdminCertIssue(req) => issue_admin_cert(node, &req.name, &req.csr_der).await?.encode_to_vec(),
        AdminCall::Put(req) => {
            if req.key.len() > crate::state::MAX_KEY_BYTES || req.value.len() > crate::state::MAX_VALUE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "key or value too large (at most {} and {} bytes)",
                    crate::state::MAX_KEY_BYTES,
                    crate::state::MAX_VALUE_BYTES
                )));
            }
            let log_index = node
                .propose(Command::Put {
                    key: req.key,
                    value: req.value,
                })
                .await?;
            proto::PutReply { log_index }.encode_to_vec()
        }
        AdminCall::ReadIndex(()) => {
            if !node.confirm_leadership().await {
                return Err(no_dispatcher());
            }
            let applied_index = node.metrics().last_applied.map(|l| l.index).unwrap_or(0);
            proto::ReadIndexReply { applied_index }.encode_to_vec()
        }
        AdminCall::LinkedServiceCreate(req) => linked_services::create(node, req).await?.encode_to_vec(),
        AdminCall::LinkedServiceUpdate(req) => linked_services::update(node, req).await?.encode_to_vec(),
        AdminCall::LinkedServiceDelete(req) => linked_services::delete(node, req).await?.encode_to_vec(),
        AdminCall::ProxySet(req) => linked_services::proxy_set(node, req).await?.encode_to_vec(),
        AdminCall::ProxyClear(_) => linked_services::proxy_clear(node).await?.encode_to_vec(),
        AdminCall::JobSubmit(req) => jobs_admin::submit(node, dispatcher, req).await?.encode_to_vec(),
        AdminCall::JobList(req) => jobs_admin::list(node, dispatcher, req).await?.encode_to_vec(),
        AdminCall::JobShow(req) => jobs_admin::show(node, dispatcher, req).await?.encode_to_vec(),
        AdminCall::JobCancel(req) => jobs_admin::cancel(node, dispatcher, req).await?.encode_to_vec(),
        AdminCall::NodeSetLimit(req) => jobs_admin::set_limit(node, dispatcher, req).await?.encode_to_vec(),
        AdminCall::JobHistory(req) => job_history::show_or_set(node, req).await?.encode_to_vec(),
        AdminCall::JobHistorySeed(req) => job_history::seed(node, req).await?.encode_to_vec(),
        AdminCall::ScheduleCreate(req) => schedules_admin::create(node, dispatcher, req).await?.encode_to_vec(),
        AdminCall::ScheduleList(_) => schedules_admin::list(node).await?.encode_to_vec(),
        AdminCall::ScheduleShow(req) => schedules_admin::show(node, &req.name).await?.encode_to_vec(),
        AdminCall::ScheduleRuns(req) => schedules_admin::runs(node, &req.name).await?.encode_to_vec(),
        AdminCall::SchedulePause(req) => schedules_admin::set_paused(node, dispatcher, &req.name, true)
            .await?
            .encode_to_vec(),
        AdminCall::ScheduleResume(req) => schedules_admin::set_paused(node, dispatcher, &req.name, false)
            .await?
            .encode_to_vec(),
        AdminCall::ScheduleRunNow(req) => schedules_admin::run_now(node, dispatcher, &req.name)
            .await?
            .encode_to_vec(),
        AdminCall::ScheduleDelete(req) => schedules_admin::delete(node, &req.name).await?.encode_to_vec(),
    };
    Ok(reply)
}

fn local_view(node: &Node) -> proto::LocalViewReply {
    let m = node.metrics();
    let membership = m.membership_config.membership();
    let leader_id = m.current_leader.unwrap_or(0);
    proto::LocalViewReply {
        name: node.config.name.clone(),
        node_id: node.id(),
        leader_id,
        leader_name: m.current_leader.and_then(|id| node.node_name(id)).unwrap_or_default(),
        term: m.current_term,
        is_leader: m.current_leader == Some(node.id()),
        last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: m.purged.map(|l| l.index).unwrap_or(0),
        last_log_index: m.last_log_index.unwrap_or(0),
    }
}

/// Both keys as operators paste them: the secret, the CA pin and every member's address.
fn show_keys(node: &Node) -> Result<proto::KeyShowReply, Status> {
    let ir = node.ir()?;
    let ca_pin = pki::spki_pin(ir.ca_cert_pem.as_bytes()).map_err(|e| Status::internal(e.to_string()))?;
    let (slots, endpoints) = node.read_state(|s| {
        (
            s.auth_keys.clone(),
            s.nodes.values().map(|n| n.address.clone()).collect::<Vec<_>>(),
        )
    });
    let mut texts = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let number = i as u8 + 1;
        let secret = node.unseal(&auth_key_aad(&ir.id, number), &slot.secret)?;
        let key = AuthKey {
            ir_id: ir.id.clone(),
            slot: number,
            secret,
            ca_pin,
            endpoints: endpoints.clone(),
        };
        texts.push(key.encode());
    }
    let [key1, key2]: [String; 2] = texts
        .try_into()
        .map_err(|_| Status::internal("the IR's state does not hold two authentication keys"))?;
    Ok(proto::KeyShowReply { key1, key2 })
}

async fn regenerate_key(node: &Node, slot: u32) -> Result<proto::KeyShowReply, Status> {
    let slot: u8 = match slot {
        1 | 2 => slot as u8,
        other => {
            return Err(Status::invalid_argument(format!(
                "no key{other}: the keys are key1 and key2"
            )));
        }
    };
    let ir = node.ir()?;
    let sealed = crate::auth_key::new_sealed_secret(&node.data_key, &ir.id, slot);
    node.propose(Command::RegenerateKey { slot, secret: sealed }).await?;
    tracing::info!(slot, "authentication key regenerated");
    show_keys(node)
}

/// The dispatcher is asked to remove itself. Followers refuse appends signed by a revoked
/// certificate, so the revocation must be committed by another dispatcher: leave the voters
/// first (committed while the followers still accept this node), then hand the call to the
/// dispatcher the others elect. This node stops by itself once it is out (see `node::run`).
async fn remove_self(node: &Node, request: &[u8]) -> Result<Vec<u8>, Status> {
    let me = BTreeSet::from([node.id()]);
    node.raft
        .change_membership(ChangeMembers::RemoveVoters(me), false)
        .await
        .map_err(|e| Status::unavailable(format!("cannot leave the voters: {e}")))?;
    tracing::info!("left the voters; handing the removal to the next dispatcher");
    let peers: Vec<String> = node.read_state(|s| {
        s.nodes
            .values()
            .filter(|n| n.id != node.id())
            .map(|n| n.address.clone())
            .collect()
    });
    let deadline = Instant::now() + FORWARD_PATIENCE;
    loop {
        for address in &peers {
            let mut cluster = proto::cluster_client::ClusterClient::new(node.peers.channel(address));
            let probe = proto::HeartbeatRequest {
                name: node.config.name.clone(),
                load: None,
                sent_at_ms: 0,
                protocol_version: crate::protocol::PROTOCOL_VERSION,
            };
            let Ok(Ok(reply)) = tokio::time::timeout(HANDOVER_PROBE_TIMEOUT, cluster.heartbeat(probe)).await else {
                continue;
            };
            let dispatcher = reply.into_inner().dispatcher;
            let Some(target) = node.read_state(|s| s.node_by_name(&dispatcher).map(|n| n.address.clone())) else {
                continue;
            };
            if dispatcher == node.config.name {
                continue;
            }
            let timestamp = crate::unix_now();
            let call = proto::ForwardedCall {
                method: "NodeRemove".into(),
                request: request.to_vec(),
                on_behalf_of: "the departing dispatcher".into(),
                timestamp,
                proof: forward_proof(
                    &node.data_key,
                    "NodeRemove",
                    request,
                    "the departing dispatcher",
                    timestamp,
                )
                .to_vec(),
            };
            let mut leader = proto::cluster_client::ClusterClient::new(node.peers.channel(&target));
            if let Ok(reply) = leader.forward_admin(call).await {
                return Ok(reply.into_inner().response);
            }
        }
        if Instant::now() > deadline {
            return Err(no_dispatcher());
        }
        tokio::time::sleep(HANDOVER_RETRY_PAUSE).await;
    }
}

async fn remove_node(node: &Node, name: &str) -> Result<proto::NodeRemoveReply, Status> {
    let (record, count) = node.read_state(|s| (s.node_by_name(name).cloned(), s.nodes.len()));
    let record = record.ok_or_else(|| Status::not_found(format!("no node named '{name}' in this IR")))?;
    if count == 1 {
        return Err(Status::failed_precondition(format!(
            "'{name}' is the IR's only node; it cannot be removed"
        )));
    }
    node.propose(Command::RemoveNode { name: name.to_string() }).await?;
    node.membership_changed.notify_one();
    tracing::info!(node = %name, serial = %record.cert_serial, "node removed; certificate revoked");
    Ok(proto::NodeRemoveReply {
        revoked_serial: record.cert_serial,
    })
}

async fn issue_admin_cert(node: &Node, name: &str, csr_der: &[u8]) -> Result<proto::AdminCertIssueReply, Status> {
    pki::check_admin_name(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let ir = node.ir()?;
    let ca = node.ca()?;
    let issued = pki::sign_admin_csr(&ca, csr_der, &ir.id, name)
        .map_err(|e| Status::invalid_argument(format!("cannot sign the certificate request: {e}")))?;
    node.propose(Command::RecordAdminCert {
        record: AdminCertRecord {
            name: name.to_string(),
            serial: issued.serial_hex.clone(),
            not_after: issued.not_after,
            issued_at: crate::unix_now(),
        },
    })
    .await?;
    tracing::info!(admin = %name, serial = %issued.serial_hex, "admin certificate issued");
    Ok(proto::AdminCertIssueReply {
        cert_pem: issued.cert_pem,
        ca_cert_pem: ir.ca_cert_pem,
        not_after: issued.not_after,
    })
}
