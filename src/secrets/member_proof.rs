//! Proofs that a message comes from a full member of the IR, one that holds the data key,
//! for the node-to-node calls where a node certificate alone must not be enough (Raft
//! messages, operator calls forwarded to the dispatcher). HMAC-SHA256 with a key derived
//! per purpose from the data key, so the AEAD key itself signs nothing.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::DataKey;

/// [`crate::timing::MEMBER_PROOF_MAX_SKEW`] in the seconds a timestamp carries.
pub const MAX_SKEW_SECS: u64 = crate::timing::MEMBER_PROOF_MAX_SKEW.as_secs();

pub struct MemberProof {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MemberProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberProof(***)")
    }
}

/// Why a signed message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ProofError {
    /// Missing or wrong: the sender does not hold the data key.
    NotAMember,
    /// Genuine, but its timestamp is too far from this node's clock.
    ClockSkew,
}

impl MemberProof {
    /// The proof key for `purpose` (e.g. "raft", "forward").
    pub fn new(data_key: &DataKey, purpose: &str) -> Self {
        let mut derive = Hmac::<Sha256>::new_from_slice(data_key.expose()).expect("HMAC takes any key length");
        derive.update(b"shir-member-proof-v1:");
        derive.update(purpose.as_bytes());
        MemberProof {
            key: Zeroizing::new(derive.finalize().into_bytes().into()),
        }
    }

    fn mac(&self, timestamp: i64, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key[..]).expect("HMAC takes any key length");
        mac.update(&timestamp.to_be_bytes());
        for part in parts {
            // Length-prefixed, so no two different messages share an encoding.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    pub fn sign(&self, timestamp: i64, parts: &[&[u8]]) -> Vec<u8> {
        self.mac(timestamp, parts).finalize().into_bytes().to_vec()
    }

    /// Checks `proof` in constant time, then the timestamp against `now`.
    pub fn verify(&self, now: i64, timestamp: i64, parts: &[&[u8]], proof: &[u8]) -> Result<(), ProofError> {
        self.mac(timestamp, parts)
            .verify_slice(proof)
            .map_err(|_| ProofError::NotAMember)?;
        if now.abs_diff(timestamp) > MAX_SKEW_SECS {
            return Err(ProofError::ClockSkew);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_per_purpose_and_message() {
        let key = DataKey::generate();
        let raft = MemberProof::new(&key, "raft");
        let proof = raft.sign(1000, &[b"vote", b"data"]);
        assert_eq!(raft.verify(1000, 1000, &[b"vote", b"data"], &proof), Ok(()));
        assert_eq!(
            raft.verify(1000, 1000, &[b"vote", b"datb"], &proof),
            Err(ProofError::NotAMember)
        );
        assert_eq!(
            raft.verify(1000, 1000, &[b"vot", b"edata"], &proof),
            Err(ProofError::NotAMember)
        );
        assert_eq!(
            raft.verify(1000, 1001, &[b"vote", b"data"], &proof),
            Err(ProofError::NotAMember)
        );
        let forward = MemberProof::new(&key, "forward");
        assert_eq!(
            forward.verify(1000, 1000, &[b"vote", b"data"], &proof),
            Err(ProofError::NotAMember)
        );
        let other = MemberProof::new(&DataKey::generate(), "raft");
        assert_eq!(
            other.verify(1000, 1000, &[b"vote", b"data"], &proof),
            Err(ProofError::NotAMember)
        );
        assert_eq!(
            raft.verify(2000, 1000, &[b"vote", b"data"], &proof),
            Err(ProofError::ClockSkew)
        );
        assert_eq!(
            raft.verify(1000, i64::MIN, &[], &raft.sign(i64::MIN, &[])),
            Err(ProofError::ClockSkew)
        );
    }
}
