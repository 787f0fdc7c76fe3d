//! Admission of new nodes (`Join`), run by the dispatcher: check the proof made with an
//! authentication key, check the IR has room and the name is free, sign the joiner's CSR,
//! commit the new member, and hand back its certificate, the CA and the data key.

use std::collections::HashMap;
use std::sync::Mutex;

use tonic::Status;

use super::handle::Node;
use crate::auth_key::{JoinProofInput, verify_join_proof};
use crate::pki;
use crate::proto;
use crate::state::{Command, NodeRecord, auth_key_aad, validate_node_name};

/// [`crate::timing::JOIN_PROOF_MAX_AGE`] in the seconds a proof's timestamp carries.
pub const PROOF_MAX_AGE_SECS: i64 = crate::timing::JOIN_PROOF_MAX_AGE.as_secs() as i64;

/// Bound on remembered nonces; a flood of joins cannot grow memory past it.
const MAX_REMEMBERED_NONCES: usize = 10_000;

#[derive(Default)]
pub struct Admission {
    /// One admission at a time: the reserved node id and the capacity check must not race.
    serial: tokio::sync::Mutex<()>,
    /// Nonces of accepted-or-tried proofs with their timestamps, so each proof works once.
    nonces: Mutex<HashMap<Vec<u8>, i64>>,
}

impl Admission {
    /// Forgets `nonce` after an admission that did not commit, so the same request may be
    /// retried (the dispatcher may have changed under it).
    fn forget(&self, nonce: &[u8]) {
        self.nonces.lock().expect("nonce lock").remove(nonce);
    }

    /// Records `nonce`; false if it was seen within the proof window.
    fn first_use(&self, nonce: &[u8], now: i64) -> bool {
        let mut seen = self.nonces.lock().expect("nonce lock");
        seen.retain(|_, t| now - *t <= 2 * PROOF_MAX_AGE_SECS);
        if seen.contains_key(nonce) {
            return false;
        }
        // Only a key holder can fill the table (the proof is checked before the nonce), and
        // a key holder can make fresh proofs at will: forgetting the oldest gives them
        // nothing, while refusing every nonce locked real joiners out for ten minutes.
        if seen.len() >= MAX_REMEMBERED_NONCES
            && let Some(oldest) = seen.iter().min_by_key(|(_, t)| **t).map(|(n, _)| n.clone())
        {
            seen.remove(&oldest);
        }
        seen.insert(nonce.to_vec(), now);
        true
    }
}

fn denied(msg: impl Into<String>) -> Status {
    Status::permission_denied(msg.into())
}

/// Admits the node described by `req`, or says in one line why not. Nothing is written
/// unless every check passes.
pub async fn admit(node: &Node, req: proto::JoinRequest) -> Result<proto::JoinResponse, Status> {
    // First: a joiner of another protocol version may have written every other field
    // differently (the proof's form included).
    crate::protocol::check(req.protocol_version).map_err(|e| Status::failed_precondition(e.to_string()))?;
    let _one_at_a_time = node.admission.serial.lock().await;
    let ir = node.ir()?;
    let slot: u8 = match req.key_slot {
        1 | 2 => req.key_slot as u8,
        other => return Err(Status::invalid_argument(format!("no key slot {other}"))),
    };
    // The proof comes first: until it checks out the caller is anonymous and learns nothing
    // about this IR (not its name, not its clock). The proof covers the IR id, so a key of
    // another IR fails here too.
    let sealed = node
        .read_state(|s| s.auth_keys.get(usize::from(slot) - 1).map(|k| k.secret.clone()))
        .ok_or_else(|| Status::internal("the IR's state has no authentication keys"))?;
    let secret = node.unseal(&auth_key_aad(&ir.id, slot), &sealed)?;
    let input = JoinProofInput {
        ir_id: &req.ir_id,
        slot,
        name: &req.name,
        address: &req.address,
        csr_der: &req.csr_der,
        timestamp: req.timestamp,
        nonce: &req.nonce,
    };
    if req.ir_id != ir.id {
        return Err(denied("this authentication key is for another integration runtime"));
    }
    if !verify_join_proof(secret.expose(), &input, &req.proof) {
        tracing::warn!(name = %req.name, address = %req.address, slot, "join refused: bad authentication key proof");
        return Err(denied(format!(
            "authentication key rejected: it is not this IR's current key{slot} (wrong, or regenerated since it was copied)"
        )));
    }
    let now = crate::unix_now();
    if now.abs_diff(req.timestamp) > PROOF_MAX_AGE_SECS as u64 {
        return Err(denied(format!(
            "join proof is stale: its time is {}s from the dispatcher's clock; check the joining machine's clock",
            now.saturating_sub(req.timestamp)
        )));
    }
    let nonce_hex = hex::encode(&req.nonce);
    let admitted_with_it = node.read_state(|s| s.nodes.values().any(|n| n.join_nonce == nonce_hex));
    if req.nonce.len() < 16 || admitted_with_it || !node.admission.first_use(&req.nonce, now) {
        return Err(denied("join proof already used; run the command again for a fresh one"));
    }
    validate_node_name(&req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    crate::pki::tls::server_name(&req.address)
        .map_err(|e| Status::invalid_argument(format!("invalid address '{}': {e}", req.address)))?;
    // The same joiner (same name, address and key) asking again with a fresh proof: its
    // first request committed but the answer was lost. Answer with that registration.
    let earlier = node.read_state(|s| s.node_by_name(&req.name).cloned());
    if let Some(rec) = earlier.filter(|r| r.address == req.address && pki::csr_matches_cert(&req.csr_der, &r.cert_pem))
    {
        tracing::info!(name = %req.name, id = rec.id, "join repeated; returning the existing registration");
        return Ok(join_response(node, ir, rec.id, rec.cert_pem));
    }
    let node_id = node.read_state(|s| s.check_admission(&req.name, &req.address).map(|()| s.next_node_id));
    let node_id = node_id.map_err(|e| Status::failed_precondition(e.to_string()))?;

    let ca = node.ca()?;
    let issued = pki::sign_node_csr(&ca, &req.csr_der, &ir.id, &req.name, &req.address)
        .map_err(|e| Status::invalid_argument(format!("cannot sign the certificate request: {e}")))?;
    let record = NodeRecord {
        id: node_id,
        name: req.name.clone(),
        address: req.address.clone(),
        cert_serial: issued.serial_hex.clone(),
        cert_not_after: issued.not_after,
        cert_pem: issued.cert_pem.clone(),
        join_nonce: nonce_hex,
        joined_at: now,
    };
    if let Err(e) = node.propose(Command::AddNode { node: record }).await {
        node.admission.forget(&req.nonce);
        return Err(e.into());
    }
    node.membership_changed.notify_one();
    tracing::info!(name = %req.name, id = node_id, address = %req.address, slot, "node admitted");

    Ok(join_response(node, ir, node_id, issued.cert_pem))
}

fn join_response(node: &Node, ir: crate::state::IrInfo, node_id: u64, cert_pem: String) -> proto::JoinResponse {
    let members = node.read_state(|s| {
        s.nodes
            .values()
            .map(|n| proto::Member {
                id: n.id,
                name: n.name.clone(),
                address: n.address.clone(),
            })
            .collect()
    });
    proto::JoinResponse {
        node_id,
        ir_name: ir.name,
        cert_pem,
        ca_cert_pem: ir.ca_cert_pem,
        data_key: node.data_key.expose().to_vec(),
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_nonce_table_forgets_the_oldest_rather_than_refusing_every_join() {
        let admission = Admission::default();
        let now = 1_700_000_000;
        for i in 0..MAX_REMEMBERED_NONCES {
            assert!(admission.first_use(&(i as u64).to_be_bytes(), now + (i / 1000) as i64));
        }
        // A flood of valid proofs (a key holder's) filled the table: the next joiner still
        // gets in, and the newest proofs stay refused as replays.
        let latest = ((MAX_REMEMBERED_NONCES - 1) as u64).to_be_bytes();
        assert!(admission.first_use(b"a fresh nonce", now + 10));
        assert!(!admission.first_use(b"a fresh nonce", now + 10), "a replay");
        assert!(!admission.first_use(&latest, now + 10), "a recent replay");
        assert!(admission.nonces.lock().unwrap().len() <= MAX_REMEMBERED_NONCES);
    }
}
