//! Authentication keys (the text an operator pastes to join a node) and join proofs.
//!
//! A key is `SHIR1@` followed by base64url (no padding) of a compact binary payload:
//!
//! ```text
//! version   u8                      (1)
//! ir_id     varint length + UTF-8   (32 lowercase hex chars)
//! slot      u8                      (1 or 2)
//! secret    varint length + bytes   (32 bytes)
//! ca_pin    32 bytes                SHA-256 of the cluster CA's SubjectPublicKeyInfo
//! endpoints varint count, then each varint length + UTF-8 "host:port" (1 to 4)
//! checksum  4 bytes                 first 4 bytes of SHA-256 over everything above
//! ```
//!
//! Varints are unsigned LEB128. The checksum is verified before any field is read, so a
//! mistyped or truncated key is reported as such rather than as some odd field error.
//!
//! The pin lets a joining node authenticate the cluster before it sends anything; the secret
//! lets the cluster authenticate the joiner, who proves knowledge of it with an HMAC over
//! its request ([`join_proof`]) instead of sending it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secrets::SecretBytes;

pub const PREFIX: &str = "SHIR1@";
pub const FORMAT_VERSION: u8 = 1;
pub const SECRET_LEN: usize = 32;
pub const MAX_ENDPOINTS: usize = 4;
const CHECKSUM_LEN: usize = 4;
/// The payload up to the endpoint count with a 32-char IR id and a 32-byte secret; anything
/// shorter cannot be a key.
const MIN_PAYLOAD_LEN: usize = 1 + (1 + 32) + 1 + (1 + SECRET_LEN) + 32 + 1;
/// Domain separation: a join proof cannot be replayed as an HMAC for any other purpose.
const JOIN_PROOF_TAG: &[u8] = b"shir-join-v1";

/// Why a pasted authentication key was refused. Never carries the key text or its secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthKeyError {
    #[error("not a shir authentication key (it should start with {PREFIX})")]
    MissingPrefix,
    #[error("the authentication key contains characters that are not base64url; copy it again")]
    BadBase64,
    #[error("the authentication key is truncated (it ends mid-character); copy it again")]
    Truncated,
    #[error("the authentication key is too short ({0} bytes decoded); it was probably truncated; copy it again")]
    TooShort(usize),
    #[error("the authentication key is damaged or truncated (checksum mismatch); copy it again")]
    ChecksumMismatch,
    #[error("unsupported authentication key format version {0} (this shir understands version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    #[error("authentication key slot must be 1 or 2, found {0}")]
    BadSlot(u8),
    #[error("the authentication key lists no cluster endpoints")]
    NoEndpoints,
    #[error("the authentication key lists {0} endpoints; at most {MAX_ENDPOINTS} are allowed")]
    TooManyEndpoints(usize),
    #[error("the authentication key lists an invalid endpoint {0:?} (expected host:port)")]
    BadEndpoint(String),
    #[error("the authentication key is malformed: {0}")]
    Malformed(&'static str),
}

/// A decoded authentication key.
#[derive(Clone)]
pub struct AuthKey {
    pub ir_id: String,
    pub slot: u8,
    /// 32 bytes; the join secret of this slot.
    pub secret: SecretBytes,
    pub ca_pin: [u8; 32],
    pub endpoints: Vec<String>,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthKey")
            .field("ir_id", &self.ir_id)
            .field("slot", &self.slot)
            .field("secret", &"***")
            .field("ca_pin", &hex::encode(self.ca_pin))
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl AuthKey {
    /// Builds a key to hand out, refusing anything `parse` would refuse.
    pub fn new(
        ir_id: String,
        slot: u8,
        secret: &[u8],
        ca_pin: [u8; 32],
        endpoints: Vec<String>,
    ) -> Result<AuthKey, AuthKeyError> {
        let key = AuthKey {
            ir_id,
            slot,
            secret: SecretBytes::from(secret),
            ca_pin,
            endpoints,
        };
        key.validate()?;
        Ok(key)
    }

    /// A fresh slot secret.
    pub fn generate_secret() -> SecretBytes {
        SecretBytes::random(SECRET_LEN)
    }
}

/// A fresh secret for key slot `slot` of IR `ir_id`, sealed with the data key as it is kept
/// in the replicated state; the plaintext is zeroized before this returns.
pub fn new_sealed_secret(data_key: &crate::secrets::DataKey, ir_id: &str, slot: u8) -> crate::state::Sealed {
    let secret = AuthKey::generate_secret();
    let aad = crate::state::auth_key_aad(ir_id, slot);
    crate::state::Sealed(crate::secrets::seal(data_key, aad.as_bytes(), secret.expose()))
}

impl AuthKey {
    /// The text form handed to operators: `SHIR1@` + base64url(payload + checksum).
    pub fn encode(&self) -> String {
        let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(256));
        buf.push(FORMAT_VERSION);
        put_bytes(&mut buf, self.ir_id.as_bytes());
        buf.push(self.slot);
        put_bytes(&mut buf, self.secret.expose());
        buf.extend_from_slice(&self.ca_pin);
        put_varint(&mut buf, self.endpoints.len() as u64);
        for e in &self.endpoints {
            put_bytes(&mut buf, e.as_bytes());
        }
        let sum = Sha256::digest(&buf[..]);
        buf.extend_from_slice(&sum[..CHECKSUM_LEN]);
        format!("{PREFIX}{}", B64URL.encode(&buf[..]))
    }

    /// Parses pasted text. Whitespace anywhere is ignored, since keys get wrapped in mail.
    pub fn parse(text: &str) -> Result<AuthKey, AuthKeyError> {
        let compact = zeroize::Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect::<String>());
        let body = compact.strip_prefix(PREFIX).ok_or(AuthKeyError::MissingPrefix)?;
        let raw = zeroize::Zeroizing::new(B64URL.decode(body.as_bytes()).map_err(|e| match e {
            // A length or final character that cannot end a base64 text is how a cut shows.
            base64::DecodeError::InvalidLength(_) | base64::DecodeError::InvalidLastSymbol(..) => {
                AuthKeyError::Truncated
            }
            _ => AuthKeyError::BadBase64,
        })?);
        if raw.len() < MIN_PAYLOAD_LEN + CHECKSUM_LEN {
            return Err(AuthKeyError::TooShort(raw.len()));
        }
        let (payload, sum) = raw.split_at(raw.len() - CHECKSUM_LEN);
        if Sha256::digest(payload)[..CHECKSUM_LEN] != *sum {
            return Err(AuthKeyError::ChecksumMismatch);
        }

        let mut r = Reader { buf: payload };
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(AuthKeyError::UnsupportedVersion(version));
        }
        let ir_id = r.string("the IR id is not UTF-8")?;
        let slot = r.u8()?;
        let secret = SecretBytes::from(r.bytes()?);
        let ca_pin: [u8; 32] = r
            .take(32)?
            .try_into()
            .map_err(|_| AuthKeyError::Malformed("truncated CA pin"))?;
        let count = r.varint()?;
        if count > MAX_ENDPOINTS as u64 {
            return Err(AuthKeyError::TooManyEndpoints(
                usize::try_from(count).unwrap_or(usize::MAX),
            ));
        }
        let mut endpoints = Vec::new();
        for _ in 0..count {
            endpoints.push(r.string("an endpoint is not UTF-8")?);
        }
        if !r.buf.is_empty() {
            return Err(AuthKeyError::Malformed("unexpected data after the endpoints"));
        }
        let key = AuthKey {
            ir_id,
            slot,
            secret,
            ca_pin,
            endpoints,
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks the fields a key must satisfy; `parse` applies it, callers building a key
    /// can apply it before handing the key out.
    pub fn validate(&self) -> Result<(), AuthKeyError> {
        if self.ir_id.len() != 32
            || !self
                .ir_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(AuthKeyError::Malformed("the IR id is not 32 lowercase hex characters"));
        }
        if !matches!(self.slot, 1 | 2) {
            return Err(AuthKeyError::BadSlot(self.slot));
        }
        if self.secret.len() != SECRET_LEN {
            return Err(AuthKeyError::Malformed("the secret is not 32 bytes"));
        }
        match self.endpoints.len() {
            0 => return Err(AuthKeyError::NoEndpoints),
            n if n > MAX_ENDPOINTS => return Err(AuthKeyError::TooManyEndpoints(n)),
            _ => {}
        }
        for e in &self.endpoints {
            if !is_host_port(e) {
                return Err(AuthKeyError::BadEndpoint(e.clone()));
            }
        }
        Ok(())
    }
}

/// `host:port` with a DNS-style or IP host (IPv6 in brackets) and a non-zero port.
fn is_host_port(s: &str) -> bool {
    crate::pki::split_host_port(s).is_some_and(|(host, port)| {
        port != 0
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    })
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AuthKeyError> {
        if self.buf.len() < n {
            return Err(AuthKeyError::Malformed("a field runs past the end of the key"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, AuthKeyError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, AuthKeyError> {
        let mut v = 0u64;
        // Ten groups of seven bits cover u64; anything longer is not ours.
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or(AuthKeyError::Malformed("a length is too large"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(AuthKeyError::Malformed("a length is too large"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], AuthKeyError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| AuthKeyError::Malformed("a field runs past the end of the key"))?;
        self.take(len)
    }

    fn string(&mut self, not_utf8: &'static str) -> Result<String, AuthKeyError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| AuthKeyError::Malformed(not_utf8))
    }
}

/// Everything a join request commits to. The proof covers the CSR, so a captured request
/// cannot be replayed with another key pair, and a timestamp and nonce for freshness.
#[derive(Debug, Clone, Copy)]
pub struct JoinProofInput<'a> {
    pub ir_id: &'a str,
    pub slot: u8,
    pub name: &'a str,
    pub address: &'a str,
    pub csr_der: &'a [u8],
    /// Unix seconds, chosen by the joiner; the verifier bounds its skew.
    pub timestamp: i64,
    pub nonce: &'a [u8],
}

type HmacSha256 = Hmac<Sha256>;

fn join_mac(secret: &[u8], msg: &JoinProofInput<'_>) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    // Every variable-length field carries a fixed-width length so no two distinct inputs
    // encode to the same bytes.
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(JOIN_PROOF_TAG);
    field(msg.ir_id.as_bytes());
    field(&[msg.slot]);
    field(msg.name.as_bytes());
    field(msg.address.as_bytes());
    field(msg.csr_der);
    field(&msg.timestamp.to_be_bytes());
    field(msg.nonce);
    mac
}

/// HMAC-SHA256 under the slot secret over an unambiguous encoding of `msg`.
pub fn join_proof(secret: &[u8], msg: &JoinProofInput<'_>) -> [u8; 32] {
    join_mac(secret, msg).finalize().into_bytes().into()
}

/// Constant-time check of a proof made by [`join_proof`].
pub fn verify_join_proof(secret: &[u8], msg: &JoinProofInput<'_>, proof: &[u8]) -> bool {
    join_mac(secret, msg).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuthKey {
        AuthKey {
            ir_id: "0123456789abcdef0123456789abcdef".into(),
            slot: 2,
            secret: AuthKey::generate_secret(),
            ca_pin: [0xa5; 32],
            endpoints: vec![
                "10.0.0.1:8060".into(),
                "node-b.example.com:8060".into(),
                "[::1]:8060".into(),
            ],
        }
    }

    #[test]
    fn new_validates() {
        let k = sample();
        let ok = AuthKey::new(k.ir_id.clone(), 1, k.secret.expose(), k.ca_pin, k.endpoints.clone()).unwrap();
        assert_eq!(AuthKey::parse(&ok.encode()).unwrap().slot, 1);
        let err = AuthKey::new(k.ir_id.clone(), 1, &[1; 31], k.ca_pin, k.endpoints.clone());
        assert!(matches!(err, Err(AuthKeyError::Malformed(_))));
        let err = AuthKey::new(k.ir_id.clone(), 1, k.secret.expose(), k.ca_pin, vec![]);
        assert_eq!(err.unwrap_err(), AuthKeyError::NoEndpoints);
    }

    #[test]
    fn round_trip() {
        let key = sample();
        let text = key.encode();
        assert!(text.starts_with(PREFIX));
        let back = AuthKey::parse(&text).unwrap();
        assert_eq!(back.ir_id, key.ir_id);
        assert_eq!(back.slot, key.slot);
        assert_eq!(back.secret.expose(), key.secret.expose());
        assert_eq!(back.ca_pin, key.ca_pin);
        assert_eq!(back.endpoints, key.endpoints);
    }

    #[test]
    fn whitespace_is_ignored() {
        let key = sample();
        let text = key.encode();
        let (a, b) = text.split_at(40);
        let wrapped = format!("  \n{a}\n  {b}\r\n");
        assert_eq!(AuthKey::parse(&wrapped).unwrap().secret.expose(), key.secret.expose());
    }

    #[test]
    fn every_single_character_corruption_is_rejected() {
        let key = sample();
        let text = key.encode();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let secret_b64 = B64URL.encode(key.secret.expose());
        for pos in 0..text.len() {
            // Three substitutes per position: enough to hit every bit of every character.
            for k in [1usize, 17, 42] {
                let mut bytes = text.clone().into_bytes();
                let old = bytes[pos];
                let idx = alphabet.iter().position(|&c| c == old).unwrap_or(0);
                bytes[pos] = alphabet[(idx + k) % alphabet.len()];
                if bytes[pos] == old {
                    continue;
                }
                let bad = String::from_utf8(bytes).unwrap();
                let err = AuthKey::parse(&bad).unwrap_err();
                assert!(
                    matches!(
                        err,
                        AuthKeyError::ChecksumMismatch
                            | AuthKeyError::BadBase64
                            | AuthKeyError::Truncated
                            | AuthKeyError::MissingPrefix
                    ),
                    "position {pos}: {err}"
                );
                let msg = err.to_string();
                assert!(!msg.contains(&secret_b64) && !msg.contains(&bad[PREFIX.len()..]));
            }
        }
    }

    #[test]
    fn truncation_is_rejected() {
        let text = sample().encode();
        for len in 0..text.len() {
            let err = AuthKey::parse(&text[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthKeyError::MissingPrefix
                        | AuthKeyError::Truncated
                        | AuthKeyError::TooShort(_)
                        | AuthKeyError::ChecksumMismatch
                ),
                "length {len}: {err}"
            );
        }
    }

    #[test]
    fn precise_errors() {
        assert_eq!(
            AuthKey::parse("hello").unwrap_err().to_string(),
            "not a shir authentication key (it should start with SHIR1@)"
        );
        assert_eq!(AuthKey::parse("SHIR1@a!b").unwrap_err(), AuthKeyError::BadBase64);
        assert_eq!(AuthKey::parse("SHIR1@AAAA").unwrap_err(), AuthKeyError::TooShort(3));
        let text = sample().encode();
        let cut = &text[..text.len() - 8];
        assert!(matches!(
            AuthKey::parse(cut).unwrap_err(),
            AuthKeyError::ChecksumMismatch | AuthKeyError::Truncated
        ));
        assert_eq!(AuthKey::parse("SHIR1@AAAAA").unwrap_err(), AuthKeyError::Truncated);

        // Well-checksummed keys with bad fields: re-encode after tampering.
        let mut k = sample();
        k.slot = 3;
        assert_eq!(AuthKey::parse(&k.encode()).unwrap_err(), AuthKeyError::BadSlot(3));
        let mut k = sample();
        k.endpoints.clear();
        assert_eq!(AuthKey::parse(&k.encode()).unwrap_err(), AuthKeyError::NoEndpoints);
        let mut k = sample();
        k.endpoints = vec!["a:1".into(); 5];
        assert_eq!(
            AuthKey::parse(&k.encode()).unwrap_err(),
            AuthKeyError::TooManyEndpoints(5)
        );
        let mut k = sample();
        k.endpoints = vec!["no-port-here".into()];
        assert!(matches!(
            AuthKey::parse(&k.encode()).unwrap_err(),
            AuthKeyError::BadEndpoint(_)
        ));

        let mut payload = B64URL.decode(&sample().encode()[PREFIX.len()..]).unwrap();
        payload.truncate(payload.len() - CHECKSUM_LEN);
        payload[0] = 9;
        let sum = Sha256::digest(&payload);
        payload.extend_from_slice(&sum[..CHECKSUM_LEN]);
        let text = format!("{PREFIX}{}", B64URL.encode(&payload));
        assert_eq!(AuthKey::parse(&text).unwrap_err(), AuthKeyError::UnsupportedVersion(9));
    }

    #[test]
    fn debug_hides_secret() {
        let key = sample();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("***"));
        assert!(!dbg.contains(&hex::encode(key.secret.expose())));
        assert!(!dbg.contains(&B64URL.encode(key.secret.expose())));
        let bytes = format!("{:?}", key.secret.expose());
        assert!(!dbg.contains(&bytes[1..bytes.len() - 1]));
    }

    #[test]
    fn join_proof_binds_every_field() {
        let secret = [7u8; 32];
        let csr = vec![1u8, 2, 3, 4];
        let nonce = [9u8; 16];
        let base = JoinProofInput {
            ir_id: "0123456789abcdef0123456789abcdef",
            slot: 1,
            name: "node-b",
            address: "10.0.0.2:8060",
            csr_der: &csr,
            timestamp: 1_700_000_000,
            nonce: &nonce,
        };
        let proof = join_proof(&secret, &base);
        assert!(verify_join_proof(&secret, &base, &proof));
        assert!(!verify_join_proof(&[8u8; 32], &base, &proof));
        assert!(!verify_join_proof(&secret, &base, &proof[..31]));

        let other_csr = vec![1u8, 2, 3, 5];
        let other_nonce = [9u8; 15];
        let variants = [
            JoinProofInput {
                ir_id: "0123456789abcdef0123456789abcdee",
                ..base
            },
            JoinProofInput { slot: 2, ..base },
            JoinProofInput { name: "node-c", ..base },
            JoinProofInput {
                address: "10.0.0.2:8061",
                ..base
            },
            JoinProofInput {
                csr_der: &other_csr,
                ..base
            },
            JoinProofInput {
                timestamp: 1_700_000_001,
                ..base
            },
            JoinProofInput {
                nonce: &other_nonce,
                ..base
            },
            // Moving a byte across a field boundary must change the proof too.
            JoinProofInput {
                name: "node-b1",
                address: "0.0.0.2:8060",
                ..base
            },
        ];
        for (i, v) in variants.iter().enumerate() {
            assert!(!verify_join_proof(&secret, v, &proof), "variant {i}");
        }
    }
}
