//! Secret values in memory and at rest: zeroized buffers, the IR's data key, and sealing.
//!
//! Everything sensitive that the replicated state carries (the CA key, authentication key
//! secrets) is sealed with one 256-bit data key shared by the IR's nodes. Each node keeps
//! that data key on disk wrapped by a node-local key ([`store_data_key`]), the way the
//! runtimes shir replaces lean on DPAPI.

pub mod backup;
pub mod member_proof;
mod store;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use rand::rngs::OsRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use store::{DATA_KEY_FILE, LOCAL_KEY_FILE, load_data_key, store_data_key, write_private_file};

/// XChaCha20's nonce is long enough that random nonces never collide in practice, so
/// sealing needs no counter shared between nodes.
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a secret could not be opened, loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("sealed value is not valid base64")]
    BadBase64,
    #[error("sealed value is too short ({0} bytes) to hold a nonce and an authentication tag")]
    TooShort(usize),
    #[error("a data key must be 32 bytes, got {0}")]
    BadKeyLength(usize),
    #[error("sealed value does not open with this IR's data key (wrong key or altered data)")]
    DoesNotOpen,
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is missing; this node has no data key (was it initialised or joined?)")]
    MissingFile { path: std::path::PathBuf },
    #[error("{path} is damaged: {why}")]
    DamagedFile { path: std::path::PathBuf, why: String },
    #[error("{path} is accessible to other users (mode {mode:o}); run chmod 600 on it")]
    InsecurePermissions { path: std::path::PathBuf, mode: u32 },
}

/// Bytes that must not outlive their use or end up in logs.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// `n` bytes from the operating system's random generator.
    pub fn random(n: usize) -> Self {
        let mut bytes = vec![0u8; n];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for SecretBytes {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Text that must not outlive its use or end up in logs (PEM private keys, mostly).
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads UTF-8 text out of opened secret bytes without leaving an unzeroized copy.
    pub fn from_secret_bytes(mut bytes: SecretBytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes.0)?;
        let inner = std::mem::take(&mut bytes.0);
        Ok(Self(String::from_utf8(inner).expect("validated as UTF-8 just above")))
    }
}

impl From<String> for SecretString {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for SecretString {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The IR-wide 256-bit key that seals secrets kept in the replicated state.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// Accepts exactly 32 bytes, as they come out of `open`, a file or the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsError> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretsError::BadKeyLength(bytes.len()))?;
        Ok(Self(key))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(***)")
    }
}

/// Encrypts and authenticates `plaintext`, binding it to `aad` (what the value is for, so a
/// sealed value cannot be moved to another field). Output: base64(nonce || ciphertext).
pub fn seal(key: &DataKey, aad: &[u8], plaintext: &[u8]) -> String {
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        // The AEAD only refuses inputs beyond 256 GiB, which never reach this function.
        .expect("XChaCha20-Poly1305 encryption of an in-memory value");
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    B64.encode(out)
}

/// Reverses [`seal`]; fails unless the key, the aad and every byte are exactly as sealed.
pub fn open(key: &DataKey, aad: &[u8], sealed: &str) -> Result<SecretBytes, SecretsError> {
    let raw = B64.decode(sealed.trim()).map_err(|_| SecretsError::BadBase64)?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(SecretsError::TooShort(raw.len()));
    }
    let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map(SecretBytes::new)
        .map_err(|_| SecretsError::DoesNotOpen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let key = DataKey::generate();
        let sealed = seal(&key, b"ca key", b"very secret");
        assert_eq!(open(&key, b"ca key", &sealed).unwrap().expose(), b"very secret");
        // Random nonces: sealing twice must not repeat ciphertexts.
        assert_ne!(sealed, seal(&key, b"ca key", b"very secret"));
    }

    #[test]
    fn wrong_aad_or_key_fails() {
        let key = DataKey::generate();
        let sealed = seal(&key, b"ca key", b"x");
        let err = open(&key, b"auth key 1", &sealed).unwrap_err();
        assert!(matches!(err, SecretsError::DoesNotOpen));
        assert!(err.to_string().contains("does not open with this IR's data key"));
        assert!(matches!(
            open(&DataKey::generate(), b"ca key", &sealed),
            Err(SecretsError::DoesNotOpen)
        ));
    }

    #[test]
    fn every_flipped_bit_fails() {
        let key = DataKey::generate();
        let sealed = seal(&key, b"a", b"payload");
        let raw = B64.decode(&sealed).unwrap();
        for i in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(open(&key, b"a", &B64.encode(&bad)), Err(SecretsError::DoesNotOpen)),
                "bit {i} flipped still opened"
            );
        }
    }

    #[test]
    fn malformed_input_errors() {
        let key = DataKey::generate();
        assert!(matches!(open(&key, b"", "not base64!"), Err(SecretsError::BadBase64)));
        assert!(matches!(
            open(&key, b"", &B64.encode([0u8; 39])),
            Err(SecretsError::TooShort(39))
        ));
    }

    #[test]
    fn debug_and_display_hide_contents() {
        let s = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        let t = SecretString::from("hunter2");
        assert_eq!(format!("{t:?} {t}"), "*** ***");
        assert!(!format!("{:?}", DataKey::from_bytes(&[7; 32]).unwrap()).contains('7'));
        assert!(matches!(
            DataKey::from_bytes(&[7; 31]),
            Err(SecretsError::BadKeyLength(31))
        ));
    }

    #[test]
    fn secret_string_from_bytes() {
        let s = SecretString::from_secret_bytes(SecretBytes::from(&b"pem"[..])).unwrap();
        assert_eq!(s.expose(), "pem");
        assert!(SecretString::from_secret_bytes(SecretBytes::new(vec![0xff])).is_err());
    }
}
