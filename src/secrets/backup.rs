//! The backup file of `shir backup create | restore`: a node's identity, the IR's CA
//! certificate and data key, sealed with a key derived from a password.
//!
//! ```text
//! offset  len  field
//!      0    8  magic "shirbkp\0"
//!      8    2  format version (1), big-endian like every integer here
//!     10    4  Argon2id memory cost, KiB
//!     14    4  Argon2id passes
//!     18    4  Argon2id lanes
//!     22   16  salt
//!     38   24  XChaCha20-Poly1305 nonce
//!     62    8  ciphertext length (payload + 16-byte tag)
//!     70   32  SHA-256 of bytes 0..70
//!    102    …  ciphertext of the JSON payload; the 102 header bytes are its associated data
//! ```
//!
//! The header is plaintext so that the cost parameters can change without a new format, and
//! so that a damaged or truncated file is told apart from a wrong password before any key is
//! derived. Its checksum only catches accidents; the AEAD is what authenticates it, so an
//! altered header with a recomputed checksum still fails to open.

use std::io::{self, BufRead};
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{DataKey, NONCE_LEN, SecretBytes, SecretString, TAG_LEN};

const MAGIC: &[u8; 8] = b"shirbkp\0";
pub const FORMAT_VERSION: u16 = 1;
const SALT_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;
/// Everything before the checksum.
const FIELDS_LEN: usize = 8 + 2 + 4 + 4 + 4 + SALT_LEN + NONCE_LEN + 8;
pub const HEADER_LEN: usize = FIELDS_LEN + CHECKSUM_LEN;

/// A payload is a few kilobytes of PEM; anything near this is not a backup, and reading it
/// whole into memory would be the first harm.
pub const MAX_FILE_LEN: u64 = 1 << 20;

/// Argon2id cost: how much memory and time one password guess costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

/// RFC 9106's second recommended setting (64 MiB, 3 passes), with one lane because the
/// argon2 crate computes lanes one after the other anyway. About a quarter of a second on
/// one core: nothing for an operator, a lot for someone trying passwords.
pub const DEFAULT_KDF: KdfParams = KdfParams {
    m_cost_kib: 64 * 1024,
    t_cost: 3,
    p_cost: 1,
};

/// What a file may ask of the machine that opens it. A file's header is read before its
/// authenticity can be checked, so these bounds keep a hostile file from demanding
/// gigabytes or hours.
const MAX_M_COST_KIB: u32 = 1 << 20;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

/// Why a backup could not be made or opened. No variant carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("this is not a shir backup file")]
    NotABackup,
    #[error(
        "the file is truncated: it holds {have} bytes, fewer than its {HEADER_LEN}-byte header (copy it again from where it was made)"
    )]
    TruncatedHeader { have: u64 },
    #[error(
        "the file is truncated: it holds {have} of the {need} bytes it should (copy it again from where it was made)"
    )]
    Truncated { have: u64, need: u64 },
    #[error("the file is damaged: it has {0} unexpected bytes after its end")]
    TrailingBytes(u64),
    #[error("the file is too large ({0} bytes) to be a shir backup")]
    TooLarge(u64),
    #[error(
        "backup format version {0} is not supported (this shir reads version {FORMAT_VERSION}); the file is from a newer shir, or damaged"
    )]
    UnsupportedVersion(u16),
    #[error("the file's header is damaged (its checksum does not match); nothing in it can be trusted")]
    HeaderDamaged,
    #[error("the file's key derivation parameters are out of range: {0}")]
    BadParameters(String),
    #[error("wrong password, or the file was altered")]
    WrongPasswordOrAltered,
    #[error("the file opened, but its contents are not a shir backup: {0}")]
    BadContents(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("cannot read {source_name}: {error}")]
    PasswordUnreadable { source_name: String, error: io::Error },
    #[error("{0} holds an empty password (its first line is the password)")]
    EmptyPassword(String),
}

/// What a backup holds. Public parts are plain strings; the node key and the data key are
/// in zeroizing types from the moment they are decrypted.
pub struct BackupContents {
    pub ir_id: String,
    /// `node.json` as it was on disk.
    pub node_json: String,
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: SecretString,
    pub data_key: DataKey,
    /// Unix seconds when the backup was made.
    pub created_at: i64,
}

impl std::fmt::Debug for BackupContents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupContents")
            .field("ir_id", &self.ir_id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The payload as written. Secrets go in as base64 so that, when read back, they contain no
/// JSON escapes and can be borrowed straight from the zeroizing plaintext (serde_json copies
/// escaped strings through a scratch buffer nobody zeroizes).
#[derive(Serialize)]
struct PayloadOut<'a> {
    ir_id: &'a str,
    node_json: &'a str,
    ca_cert_pem: &'a str,
    cert_pem: &'a str,
    key_pem_b64: &'a str,
    data_key_b64: &'a str,
    created_at: i64,
}

#[derive(Deserialize)]
struct PayloadIn<'a> {
    ir_id: String,
    node_json: String,
    ca_cert_pem: String,
    cert_pem: String,
    #[serde(borrow)]
    key_pem_b64: &'a str,
    #[serde(borrow)]
    data_key_b64: &'a str,
    created_at: i64,
}

struct Header {
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    ciphertext_len: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(MAGIC);
        put(&FORMAT_VERSION.to_be_bytes());
        put(&self.kdf.m_cost_kib.to_be_bytes());
        put(&self.kdf.t_cost.to_be_bytes());
        put(&self.kdf.p_cost.to_be_bytes());
        put(&self.salt);
        put(&self.nonce);
        put(&self.ciphertext_len.to_be_bytes());
        let checksum = Sha256::digest(&out[..FIELDS_LEN]);
        out[FIELDS_LEN..].copy_from_slice(&checksum);
        out
    }

    /// Reads and checks the header of `file`, in the order that names the most likely cause:
    /// a different kind of file, a short copy, a newer format, then damage.
    fn parse(file: &[u8]) -> Result<Header, BackupError> {
        let have = file.len() as u64;
        let magic_seen = &file[..file.len().min(MAGIC.len())];
        if magic_seen != &MAGIC[..magic_seen.len()] {
            return Err(BackupError::NotABackup);
        }
        if file.len() < MAGIC.len() + 2 {
            return Err(BackupError::TruncatedHeader { have });
        }
        let version = u16::from_be_bytes([file[8], file[9]]);
        if version != FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion(version));
        }
        if file.len() < HEADER_LEN {
            return Err(BackupError::TruncatedHeader { have });
        }
        if Sha256::digest(&file[..FIELDS_LEN])[..] != file[FIELDS_LEN..HEADER_LEN] {
            return Err(BackupError::HeaderDamaged);
        }
        let u32_at = |at: usize| u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes"));
        let header = Header {
            kdf: KdfParams {
                m_cost_kib: u32_at(10),
                t_cost: u32_at(14),
                p_cost: u32_at(18),
            },
            salt: file[22..38].try_into().expect("salt length"),
            nonce: file[38..62].try_into().expect("nonce length"),
            ciphertext_len: u64::from_be_bytes(file[62..70].try_into().expect("8 bytes")),
        };
        let need = (HEADER_LEN as u64).saturating_add(header.ciphertext_len);
        if header.ciphertext_len < TAG_LEN as u64 || need > MAX_FILE_LEN {
            return Err(BackupError::BadParameters(format!(
                "a ciphertext of {} bytes",
                header.ciphertext_len
            )));
        }
        if have < need {
            return Err(BackupError::Truncated { have, need });
        }
        if have > need {
            return Err(BackupError::TrailingBytes(have - need));
        }
        Ok(header)
    }
}

fn check_kdf(kdf: &KdfParams) -> Result<Params, BackupError> {
    if kdf.m_cost_kib > MAX_M_COST_KIB || kdf.t_cost > MAX_T_COST || kdf.p_cost > MAX_P_COST {
        return Err(BackupError::BadParameters(format!(
            "Argon2id m={} KiB, t={}, p={} (at most m={MAX_M_COST_KIB}, t={MAX_T_COST}, p={MAX_P_COST})",
            kdf.m_cost_kib, kdf.t_cost, kdf.p_cost
        )));
    }
    Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| BackupError::BadParameters(format!("Argon2id: {e}")))
}

fn derive_key(password: &SecretBytes, salt: &[u8], kdf: &KdfParams) -> Result<DataKey, BackupError> {
    let params = check_kdf(kdf)?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.expose(), salt, &mut key[..])
        .map_err(|e| BackupError::Kdf(e.to_string()))?;
    DataKey::from_bytes(&key[..]).map_err(|e| BackupError::Kdf(e.to_string()))
}

/// Counts the bytes serde_json would write, so the plaintext buffer can be allocated once
/// at its final size: a growing `Vec` leaves unzeroized copies behind in freed memory.
struct CountingWriter(usize);

impl io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Seals `contents` with a key derived from `password` by Argon2id with [`DEFAULT_KDF`].
pub fn seal_backup(contents: &BackupContents, password: &SecretBytes) -> Result<Vec<u8>, BackupError> {
    seal_backup_with(contents, password, DEFAULT_KDF)
}

/// [`seal_backup`] with chosen Argon2id costs.
pub fn seal_backup_with(
    contents: &BackupContents,
    password: &SecretBytes,
    kdf: KdfParams,
) -> Result<Vec<u8>, BackupError> {
    if password.is_empty() {
        return Err(BackupError::EmptyPassword("the caller".into()));
    }
    let key_pem_b64 = Zeroizing::new(B64.encode(contents.key_pem.expose()));
    let data_key_b64 = Zeroizing::new(B64.encode(contents.data_key.expose()));
    let payload = PayloadOut {
        ir_id: &contents.ir_id,
        node_json: &contents.node_json,
        ca_cert_pem: &contents.ca_cert_pem,
        cert_pem: &contents.cert_pem,
        key_pem_b64: &key_pem_b64,
        data_key_b64: &data_key_b64,
        created_at: contents.created_at,
    };
    let mut counter = CountingWriter(0);
    serde_json::to_writer(&mut counter, &payload).map_err(|e| BackupError::BadContents(e.to_string()))?;
    let mut plaintext = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *plaintext, &payload).map_err(|e| BackupError::BadContents(e.to_string()))?;

    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let header = Header {
        kdf,
        salt,
        nonce,
        ciphertext_len: (plaintext.len() + TAG_LEN) as u64,
    }
    .encode();
    let key = derive_key(password, &salt, &kdf)?;
    let ciphertext = XChaCha20Poly1305::new(key.expose().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &header,
            },
        )
        // The AEAD only refuses inputs beyond 256 GiB.
        .expect("XChaCha20-Poly1305 encryption of an in-memory payload");
    let mut file = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    file.extend_from_slice(&header);
    file.extend_from_slice(&ciphertext);
    Ok(file)
}

/// Opens a file made by [`seal_backup`]. Every check that needs no password comes first, so
/// a damaged file is reported as damaged rather than as a wrong password.
pub fn open_backup(file: &[u8], password: &SecretBytes) -> Result<BackupContents, BackupError> {
    if file.len() as u64 > MAX_FILE_LEN {
        return Err(BackupError::TooLarge(file.len() as u64));
    }
    let header = Header::parse(file)?;
    let key = derive_key(password, &header.salt, &header.kdf)?;
    open_with_key(file, &header, &key)
}

fn open_with_key(file: &[u8], header: &Header, key: &DataKey) -> Result<BackupContents, BackupError> {
    let (aad, ciphertext) = file.split_at(HEADER_LEN);
    let plaintext = Zeroizing::new(
        XChaCha20Poly1305::new(key.expose().into())
            .decrypt(XNonce::from_slice(&header.nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| BackupError::WrongPasswordOrAltered)?,
    );
    // Authenticated from here on: a failure below is a bug or a foreign writer, not damage.
    let payload: PayloadIn<'_> =
        serde_json::from_slice(&plaintext).map_err(|e| BackupError::BadContents(e.to_string()))?;
    let decode = |what: &str, b64: &str| {
        B64.decode(b64)
            .map(Zeroizing::new)
            .map_err(|_| BackupError::BadContents(format!("{what} is not base64")))
    };
    let key_pem_bytes = decode("the node key", payload.key_pem_b64)?;
    let key_pem = SecretString::from_secret_bytes(SecretBytes::from(&key_pem_bytes[..]))
        .map_err(|_| BackupError::BadContents("the node key is not text".into()))?;
    let data_key = DataKey::from_bytes(&decode("the data key", payload.data_key_b64)?)
        .map_err(|e| BackupError::BadContents(e.to_string()))?;
    Ok(BackupContents {
        ir_id: payload.ir_id,
        node_json: payload.node_json,
        ca_cert_pem: payload.ca_cert_pem,
        cert_pem: payload.cert_pem,
        key_pem,
        data_key,
        created_at: payload.created_at,
    })
}

/// The password on the first line of `path`, without its line ending.
pub fn password_from_file(path: &Path) -> Result<SecretBytes, BackupError> {
    let name = format!("password file {}", path.display());
    let file = std::fs::File::open(path).map_err(|error| BackupError::PasswordUnreadable {
        source_name: name.clone(),
        error,
    })?;
    password_from_reader(io::BufReader::new(file), &name)
}

/// The first line of `reader` as a password; `source_name` says where it came from in errors.
pub fn password_from_reader(mut reader: impl BufRead, source_name: &str) -> Result<SecretBytes, BackupError> {
    // Sized up front so that reading a line of any sane length never reallocates, which
    // would leave a copy of the password behind.
    let mut line = Zeroizing::new(Vec::with_capacity(4096));
    reader
        .read_until(b'\n', &mut line)
        .map_err(|error| BackupError::PasswordUnreadable {
            source_name: source_name.to_string(),
            error,
        })?;
    let mut end = line.len();
    if line[..end].ends_with(b"\n") {
        end -= 1;
    }
    if line[..end].ends_with(b"\r") {
        end -= 1;
    }
    if end == 0 {
        return Err(BackupError::EmptyPassword(source_name.to_string()));
    }
    Ok(SecretBytes::from(&line[..end]))
}

/// Reads a backup file, refusing at once anything too large to be one.
pub fn read_backup_file(path: &Path) -> Result<Vec<u8>, io::Error> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_FILE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            BackupError::TooLarge(len).to_string(),
        ));
    }
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> BackupContents {
        BackupContents {
            ir_id: "0123456789abcdef".into(),
            node_json: "{\"name\": \"node2\",\n \"quote\": \"\\\"\"}".into(),
            ca_cert_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----\nNODE\n-----END CERTIFICATE-----\n".into(),
            key_pem: SecretString::from("-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n"),
            data_key: DataKey::from_bytes(&[0x5a; 32]).unwrap(),
            created_at: 1_700_000_000,
        }
    }

    fn pw(s: &str) -> SecretBytes {
        SecretBytes::from(s.as_bytes())
    }

    /// One sealed file and its derived key, shared by the tests that only alter the file:
    /// production-strength Argon2id is the slow part.
    fn sealed() -> &'static (Vec<u8>, DataKey) {
        static SEALED: std::sync::OnceLock<(Vec<u8>, DataKey)> = std::sync::OnceLock::new();
        SEALED.get_or_init(|| {
            let file = seal_backup(&contents(), &pw("correct horse")).unwrap();
            let header = Header::parse(&file).unwrap();
            let key = derive_key(&pw("correct horse"), &header.salt, &header.kdf).unwrap();
            (file, key)
        })
    }

    #[test]
    fn round_trip_with_production_parameters() {
        let (file, _) = sealed();
        let started = std::time::Instant::now();
        let opened = open_backup(file, &pw("correct horse")).unwrap();
        eprintln!("open_backup with {DEFAULT_KDF:?}: {:?}", started.elapsed());
        let want = contents();
        assert_eq!(opened.ir_id, want.ir_id);
        assert_eq!(opened.node_json, want.node_json);
        assert_eq!(opened.ca_cert_pem, want.ca_cert_pem);
        assert_eq!(opened.cert_pem, want.cert_pem);
        assert_eq!(opened.key_pem, want.key_pem);
        assert_eq!(opened.data_key, want.data_key);
        assert_eq!(opened.created_at, want.created_at);
        assert!(!format!("{opened:?}").contains("SECRETKEY"));

        let header = Header::parse(file).unwrap();
        assert_eq!(header.kdf, DEFAULT_KDF);
        assert_eq!(&file[..8], MAGIC);
        assert_eq!(file.len(), HEADER_LEN + header.ciphertext_len as usize);
    }

    #[test]
    fn secrets_do_not_appear_in_the_file() {
        let (file, _) = sealed();
        let hay = String::from_utf8_lossy(file);
        for needle in ["SECRETKEY", "node2", "correct horse", &B64.encode([0x5a; 32])] {
            assert!(!hay.contains(needle), "{needle} is readable in the file");
        }
        assert!(!file.windows(32).any(|w| w == [0x5a; 32]));
    }

    #[test]
    fn sealing_twice_gives_different_files() {
        let other = seal_backup_with(
            &contents(),
            &pw("correct horse"),
            KdfParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            },
        )
        .unwrap();
        let (file, _) = sealed();
        assert_ne!(&file[22..62], &other[22..62], "salt and nonce must be fresh");
        assert_eq!(
            open_backup(&other, &pw("correct horse")).unwrap().ir_id,
            contents().ir_id
        );
    }

    #[test]
    fn wrong_password_fails() {
        let (file, _) = sealed();
        let err = open_backup(file, &pw("correct horse ")).unwrap_err();
        assert!(matches!(err, BackupError::WrongPasswordOrAltered), "{err}");
        assert_eq!(err.to_string(), "wrong password, or the file was altered");
    }

    #[test]
    fn truncation_is_reported_as_truncation() {
        let (file, _) = sealed();
        for cut in [0, 5, 9, 50, HEADER_LEN - 1] {
            let err = open_backup(&file[..cut], &pw("x")).unwrap_err();
            assert!(matches!(err, BackupError::TruncatedHeader { .. }), "cut {cut}: {err}");
        }
        for cut in [HEADER_LEN, HEADER_LEN + 1, file.len() - 1] {
            let err = open_backup(&file[..cut], &pw("x")).unwrap_err();
            assert!(
                matches!(err, BackupError::Truncated { have, need } if have == cut as u64 && need == file.len() as u64),
                "cut {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"));
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            open_backup(&longer, &pw("x")),
            Err(BackupError::TrailingBytes(1))
        ));
    }

    #[test]
    fn every_header_byte_is_checked_before_the_password() {
        let (file, _) = sealed();
        for i in 0..HEADER_LEN {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            // The wrong password shows that the header is refused before it matters.
            let err = open_backup(&bad, &pw("not the password")).unwrap_err();
            let expected = match i {
                0..8 => matches!(err, BackupError::NotABackup),
                8..10 => matches!(err, BackupError::UnsupportedVersion(_)),
                _ => matches!(err, BackupError::HeaderDamaged),
            };
            assert!(expected, "byte {i}: {err}");
        }
    }

    #[test]
    fn header_altered_with_a_recomputed_checksum_does_not_open() {
        let (file, key) = sealed();
        // Flip a nonce byte and one salt byte and fix the checksum: only the AEAD stands guard.
        for i in [22, 40, 69] {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            let checksum = Sha256::digest(&bad[..FIELDS_LEN]);
            bad[FIELDS_LEN..HEADER_LEN].copy_from_slice(&checksum);
            let result = Header::parse(&bad).and_then(|h| open_with_key(&bad, &h, key));
            assert!(
                matches!(
                    result,
                    Err(BackupError::WrongPasswordOrAltered
                        | BackupError::Truncated { .. }
                        | BackupError::TrailingBytes(_))
                ),
                "byte {i}"
            );
        }
    }

    #[test]
    fn every_flipped_ciphertext_bit_fails() {
        let (file, key) = sealed();
        let header = Header::parse(file).unwrap();
        assert!(open_with_key(file, &header, key).is_ok());
        for bit in (HEADER_LEN * 8..file.len() * 8).step_by(7) {
            let mut bad = file.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    open_with_key(&bad, &header, key),
                    Err(BackupError::WrongPasswordOrAltered)
                ),
                "bit {bit} flipped still opened"
            );
        }
    }

    #[test]
    fn hostile_parameters_are_refused_without_deriving() {
        let (file, _) = sealed();
        let mut bad = file.clone();
        bad[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        let checksum = Sha256::digest(&bad[..FIELDS_LEN]);
        bad[FIELDS_LEN..HEADER_LEN].copy_from_slice(&checksum);
        let err = open_backup(&bad, &pw("correct horse")).unwrap_err();
        assert!(matches!(err, BackupError::BadParameters(_)), "{err}");
        assert!(matches!(
            open_backup(&vec![0u8; MAX_FILE_LEN as usize + 1], &pw("x")),
            Err(BackupError::TooLarge(_))
        ));
        assert!(matches!(
            open_backup(b"PK\x03\x04 a zip file", &pw("x")),
            Err(BackupError::NotABackup)
        ));
    }

    #[test]
    fn password_is_the_first_line() {
        let read = |input: &[u8]| password_from_reader(input, "test").map(|p| p.expose().to_vec());
        assert_eq!(read(b"hunter2\n").unwrap(), b"hunter2");
        assert_eq!(read(b"hunter2\r\nsecond line\n").unwrap(), b"hunter2");
        assert_eq!(read(b"hunter2").unwrap(), b"hunter2");
        assert_eq!(read(b" spaced \n").unwrap(), b" spaced ");
        for empty in [&b""[..], b"\n", b"\r\n", b"\nsecond"] {
            let err = read(empty).unwrap_err();
            assert!(matches!(err, BackupError::EmptyPassword(_)), "{empty:?}: {err}");
        }
        let err = password_from_file(Path::new("/nonexistent/pw"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
        assert!(matches!(
            seal_backup(&contents(), &SecretBytes::default()),
            Err(BackupError::EmptyPassword(_))
        ));
    }
}
