//! The IR's private PKI: the cluster CA, node and admin certificates, and identities.
//!
//! Every certificate names its holder with one URI SAN, `spiffe://<ir_id>/node/<name>` or
//! `spiffe://<ir_id>/admin/<name>`; that URI, not the subject, is what authorisation reads.
//! Certificates are issued only with names and extensions chosen here: a CSR contributes
//! its public key and nothing else.

pub mod tls;

use std::net::IpAddr;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::secrets::SecretString;

/// Certificates start five minutes in the past so a peer whose clock is slightly behind
/// does not reject a certificate issued a moment ago.
const BACKDATE: Duration = Duration::minutes(5);
const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(365);
const SPIFFE_SCHEME: &str = "spiffe://";

/// Why a certificate, key or CSR could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not {action}: {source}")]
    Rcgen {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("could not read {what} from PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("could not parse {what}: {detail}")]
    X509 { what: &'static str, detail: String },
    #[error("the certificate signing request's signature does not verify")]
    CsrSignature,
    #[error("the certificate signing request's public key is not supported: {0}")]
    CsrKey(String),
    #[error("the CA certificate is not a CA certificate (no basic constraints CA:true)")]
    NotCa,
    #[error("the CA private key does not belong to the CA certificate")]
    CaKeyMismatch,
    #[error("the certificate carries no shir identity (no spiffe:// URI SAN)")]
    NoIdentity,
    #[error("the certificate carries more than one shir identity")]
    AmbiguousIdentity,
    #[error("certificate identity {0:?} is not spiffe://<ir>/node/<name> or spiffe://<ir>/admin/<name>")]
    BadIdentity(String),
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("invalid address {0:?} (expected host:port)")]
    BadAddress(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

fn rcgen_err(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { action, source }
}

fn x509_err(what: &'static str) -> impl FnOnce(x509_parser::nom::Err<x509_parser::error::X509Error>) -> PkiError {
    move |e| PkiError::X509 {
        what,
        detail: e.to_string(),
    }
}

/// The cluster certificate authority: its certificate is public, its key is a secret the
/// replicated state keeps sealed.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: SecretString,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("key_pem", &self.key_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new ECDSA P-256 CA valid for ten years.
    pub fn generate(ir_id: &str, ir_name: &str) -> Result<Ca> {
        check_ir_id(ir_id)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("shir CA {ir_name}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, format!("shir IR {ir_id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign the CA certificate"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: SecretString::new(key.serialize_pem()),
        })
    }

    /// Loads a CA, checking that the certificate is a CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let der = cert_der_from_pem(cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(x509_err("the CA certificate"))?;
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::NotCa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("read the CA private key"))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::CaKeyMismatch);
        }
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: SecretString::from(key_pem),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &SecretString {
        &self.key_pem
    }

    /// The pin an authentication key carries for this CA.
    pub fn pin(&self) -> Result<[u8; 32]> {
        spki_pin(&self.cert_pem)
    }

    /// Leaf certificates must not outlive the CA that vouches for them.
    fn clamp_validity(&self, params: &mut CertificateParams) -> Result<()> {
        let der = cert_der_from_pem(&self.cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(x509_err("the CA certificate"))?;
        let ca_not_after = cert.validity().not_after.to_datetime();
        if params.not_after > ca_not_after {
            params.not_after = ca_not_after;
        }
        Ok(())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(self.key_pem.expose()).map_err(rcgen_err("read the CA private key"))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(rcgen_err("load the CA certificate"))
    }
}

/// A certificate just issued, with the facts the replicated state records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// Lowercase hex of the DER serial's content bytes, as `identity_from_cert` reports it.
    pub serial_hex: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// A fresh ECDSA P-256 private key, PKCS#8 PEM.
pub fn new_private_key() -> Result<SecretString> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate an ECDSA P-256 key"))?;
    Ok(SecretString::new(key.serialize_pem()))
}

/// A CSR (DER) for the joining node's key. The cluster ignores everything in it except the
/// public key and the proof of possession; the subject is only a courtesy for logs.
pub fn make_csr(key_pem: &str, name: &str) -> Result<Vec<u8>> {
    let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("read the node private key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .map_err(rcgen_err("create the certificate signing request"))?;
    Ok(csr.der().to_vec())
}

/// Issues a node certificate for the key in `csr_der`, with names chosen here.
pub fn sign_node_csr(ca: &Ca, csr_der: &[u8], ir_id: &str, name: &str, address: &str) -> Result<IssuedCert> {
    let mut params = leaf_params(ir_id, Role::Node, name, Some(address))?;
    ca.clamp_validity(&mut params)?;
    let public_key = csr_public_key(csr_der)?;
    let cert = params
        .signed_by(&public_key, &ca.issuer()?)
        .map_err(rcgen_err("sign the node certificate"))?;
    issued(cert.pem(), cert.der())
}

/// Issues a node certificate for a key held locally (the first node of a new IR).
pub fn issue_node_cert(ca: &Ca, key_pem: &str, ir_id: &str, name: &str, address: &str) -> Result<IssuedCert> {
    let mut params = leaf_params(ir_id, Role::Node, name, Some(address))?;
    ca.clamp_validity(&mut params)?;
    let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("read the node private key"))?;
    let cert = params
        .signed_by(&key, &ca.issuer()?)
        .map_err(rcgen_err("sign the node certificate"))?;
    issued(cert.pem(), cert.der())
}

/// Issues a client-only certificate for an administrator whose key is in `csr_der`.
pub fn sign_admin_csr(ca: &Ca, csr_der: &[u8], ir_id: &str, name: &str) -> Result<IssuedCert> {
    let mut params = leaf_params(ir_id, Role::Admin, name, None)?;
    ca.clamp_validity(&mut params)?;
    let public_key = csr_public_key(csr_der)?;
    let cert = params
        .signed_by(&public_key, &ca.issuer()?)
        .map_err(rcgen_err("sign the admin certificate"))?;
    issued(cert.pem(), cert.der())
}

/// Issues a client-only certificate for an administrator, with a new key.
pub fn issue_admin_cert(ca: &Ca, ir_id: &str, name: &str) -> Result<(IssuedCert, SecretString)> {
    let mut params = leaf_params(ir_id, Role::Admin, name, None)?;
    ca.clamp_validity(&mut params)?;
    let key_pem = new_private_key()?;
    let key = KeyPair::from_pem(key_pem.expose()).map_err(rcgen_err("read the admin key"))?;
    let cert = params
        .signed_by(&key, &ca.issuer()?)
        .map_err(rcgen_err("sign the admin certificate"))?;
    Ok((issued(cert.pem(), cert.der())?, key_pem))
}

/// True if `csr_der` (with a valid self-signature) asks for the key certified by `cert_pem`:
/// the same joiner asking again.
pub fn csr_matches_cert(csr_der: &[u8], cert_pem: &str) -> bool {
    let Ok(der) = cert_der_from_pem(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    let Ok((_, csr)) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der) else {
        return false;
    };
    csr.verify_signature().is_ok() && csr.certification_request_info.subject_pki.raw == cert.public_key().raw
}

/// Verifies the CSR's self-signature (proof that the requester holds the key) and returns
/// its public key.
fn csr_public_key(csr_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(x509_err("the certificate signing request"))?;
    csr.verify_signature().map_err(|_| PkiError::CsrSignature)?;
    rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| PkiError::CsrKey(e.to_string()))
}

fn leaf_params(ir_id: &str, role: Role, name: &str, address: Option<&str>) -> Result<CertificateParams> {
    check_ir_id(ir_id)?;
    match role {
        Role::Node => check_node_name(name)?,
        Role::Admin => check_admin_name(name)?,
    }
    let ia5 = |s: String| {
        Ia5String::try_from(s).map_err(|e| PkiError::Rcgen {
            action: "encode a subject alternative name",
            source: e,
        })
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::URI(ia5(identity_uri(ir_id, role, name))?)];
    if let Some(address) = address {
        let host = split_host_port(address)
            .ok_or_else(|| PkiError::BadAddress(address.into()))?
            .0;
        match host.parse::<IpAddr>() {
            Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
            Err(_) => {
                if !host.eq_ignore_ascii_case(name) {
                    params.subject_alt_names.push(SanType::DnsName(ia5(host.to_owned())?));
                }
            }
        }
    }
    if role == Role::Node {
        params.subject_alt_names.push(SanType::DnsName(ia5(name.to_owned())?));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    Ok(params)
}

/// 16 random bytes with the top bit clear (serials are positive) and the next bit set (so
/// DER keeps all 16 bytes and the hex form is always 32 characters).
fn random_serial() -> SerialNumber {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn issued(cert_pem: String, der: &CertificateDer<'_>) -> Result<IssuedCert> {
    let (_, cert) = X509Certificate::from_der(der).map_err(x509_err("the issued certificate"))?;
    Ok(IssuedCert {
        serial_hex: hex::encode(cert.tbs_certificate.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
        cert_pem,
    })
}

pub fn identity_uri(ir_id: &str, role: Role, name: &str) -> String {
    format!("{SPIFFE_SCHEME}{ir_id}/{}/{name}", role.as_str())
}

fn check_ir_id(ir_id: &str) -> Result<()> {
    let bad = |why| PkiError::InvalidName {
        what: "IR id",
        value: ir_id.to_owned(),
        why,
    };
    if ir_id.is_empty() || ir_id.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if !ir_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("only lowercase letters, digits and '-' are allowed"));
    }
    Ok(())
}

/// Node names double as DNS SANs, so they must be DNS labels.
pub fn check_node_name(name: &str) -> Result<()> {
    let bad = |why| PkiError::InvalidName {
        what: "node name",
        value: name.to_owned(),
        why,
    };
    if name.is_empty() || name.len() > 63 {
        return Err(bad("must be 1 to 63 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(bad("only letters, digits and '-' are allowed"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(bad("must not start or end with '-'"));
    }
    Ok(())
}

/// Admin names only appear in the URI path, but stay within characters that need no
/// escaping there.
pub fn check_admin_name(name: &str) -> Result<()> {
    let bad = |why| PkiError::InvalidName {
        what: "admin name",
        value: name.to_owned(),
        why,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

/// Splits `host:port`; IPv6 hosts come in brackets, which are removed.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = match host.strip_prefix('[') {
        Some(inner) => {
            let ip = inner.strip_suffix(']')?;
            ip.parse::<std::net::Ipv6Addr>().ok()?;
            ip
        }
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo; accepts PEM (text or bytes) or DER.
pub fn spki_pin(cert_pem_or_der: impl AsRef<[u8]>) -> Result<[u8; 32]> {
    let der = cert_der_from_pem_or_der(cert_pem_or_der.as_ref())?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(x509_err("the CA certificate"))?;
    Ok(Sha256::digest(cert.public_key().raw).into())
}

/// Who is at the other end of a connection, read from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Node,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub ir_id: String,
    pub role: Role,
    pub name: String,
    pub serial_hex: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Reads the shir identity from a (DER) certificate. Trust is not checked here: call it on
/// certificates the TLS layer has already verified.
pub fn identity_from_cert(der: &[u8]) -> Result<PeerIdentity> {
    let (_, cert) = X509Certificate::from_der(der).map_err(x509_err("the peer certificate"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::X509 {
            what: "the subject alternative names",
            detail: e.to_string(),
        })?
        .ok_or(PkiError::NoIdentity)?;
    let mut uris = san.value.general_names.iter().filter_map(|g| match g {
        GeneralName::URI(u) if u.starts_with(SPIFFE_SCHEME) => Some(*u),
        _ => None,
    });
    let uri = uris.next().ok_or(PkiError::NoIdentity)?;
    if uris.next().is_some() {
        return Err(PkiError::AmbiguousIdentity);
    }
    let (ir_id, role, name) = parse_identity_uri(uri).ok_or_else(|| PkiError::BadIdentity(uri.into()))?;
    Ok(PeerIdentity {
        ir_id: ir_id.to_owned(),
        role,
        name: name.to_owned(),
        serial_hex: hex::encode(cert.tbs_certificate.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn parse_identity_uri(uri: &str) -> Option<(&str, Role, &str)> {
    let rest = uri.strip_prefix(SPIFFE_SCHEME)?;
    let mut parts = rest.split('/');
    let (ir_id, role, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ir_id.is_empty() || name.is_empty() {
        return None;
    }
    let role = match role {
        "node" => Role::Node,
        "admin" => Role::Admin,
        _ => return None,
    };
    Some((ir_id, role, name))
}

/// What an operator needs to recognise a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub serial_hex: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the DER certificate.
    pub sha256_thumbprint: String,
    /// Lowercase hex SHA-1 of the DER certificate (the thumbprint Windows tools show).
    pub sha1_thumbprint: String,
}

pub fn cert_summary(pem: &str) -> Result<CertSummary> {
    let der = cert_der_from_pem(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(x509_err("the certificate"))?;
    Ok(CertSummary {
        serial_hex: hex::encode(cert.tbs_certificate.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
        sha256_thumbprint: hex::encode(Sha256::digest(&der)),
        sha1_thumbprint: hex::encode(Sha1::digest(&der)),
    })
}

/// Every certificate in a PEM bundle, in order; an empty bundle is an error.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: "certificates",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: "certificates",
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The first certificate of a PEM bundle.
pub fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>> {
    Ok(certs_from_pem(pem)?.swap_remove(0))
}

fn cert_der_from_pem_or_der(input: &[u8]) -> Result<CertificateDer<'static>> {
    if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(input).map_err(|_| PkiError::Pem {
            what: "certificates",
            detail: "not UTF-8 text".into(),
        })?;
        cert_der_from_pem(text)
    } else {
        Ok(CertificateDer::from(input.to_vec()))
    }
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem {
        what: "a private key",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData as _;
    use x509_parser::extensions::ParsedExtension;

    const IR: &str = "0123456789abcdef0123456789abcdef";

    fn sans(pem: &str) -> Vec<String> {
        let der = cert_der_from_pem(pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn ca_is_a_ca_and_reloads() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let der = cert_der_from_pem(ca.cert_pem()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert!(cert.subject().to_string().contains("CN=shir CA prod"));
        let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / (365 * 86400);
        assert_eq!(years, 10);

        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem().expose()).unwrap();
        assert_eq!(again.pin().unwrap(), ca.pin().unwrap());
        let other = Ca::generate(IR, "other").unwrap();
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), other.key_pem().expose()),
            Err(PkiError::CaKeyMismatch)
        ));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn csr_gets_our_names_not_its_own() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let key = new_private_key().unwrap();
        // A CSR that asks for other names, a CA bit and a wildcard DNS name.
        let mut wanted = CertificateParams::new(vec!["*.evil.example".to_string()]).unwrap();
        wanted.subject_alt_names.push(SanType::URI(
            Ia5String::try_from(format!("spiffe://{IR}/admin/root")).unwrap(),
        ));
        wanted.distinguished_name.push(DnType::CommonName, "root");
        let kp = KeyPair::from_pem(key.expose()).unwrap();
        let csr = wanted.serialize_request(&kp).unwrap().der().to_vec();

        let issued = sign_node_csr(&ca, &csr, IR, "node-b", "127.0.0.2:8060").unwrap();
        assert_eq!(
            sans(&issued.cert_pem),
            vec![
                format!("URI:spiffe://{IR}/node/node-b"),
                "IP:[127, 0, 0, 2]".to_string(),
                "DNS:node-b".to_string(),
            ]
        );
        let der = cert_der_from_pem(&issued.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.subject().to_string().contains("CN=node-b"));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        assert!(!cert.is_ca());
        // The certificate holds the CSR's key, and the CA's key id as its AKI.
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), kp.public_key_raw());
        let ca_der = cert_der_from_pem(ca.cert_pem()).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        let ski = ca_cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);

        let id = identity_from_cert(&der).unwrap();
        assert_eq!(
            (id.ir_id.as_str(), id.role, id.name.as_str()),
            (IR, Role::Node, "node-b")
        );
        assert_eq!(id.serial_hex, issued.serial_hex);
        assert_eq!(id.serial_hex.len(), 32);
        assert_eq!(id.not_after, issued.not_after);
        let days = (issued.not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86400;
        assert!((364..=365).contains(&days), "{days}");
    }

    #[test]
    fn dns_address_and_tampered_csr() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let key = new_private_key().unwrap();
        let csr = make_csr(key.expose(), "node-c").unwrap();
        let issued = sign_node_csr(&ca, &csr, IR, "node-c", "host.example.com:8060").unwrap();
        assert_eq!(
            sans(&issued.cert_pem)[1..],
            ["DNS:host.example.com".to_string(), "DNS:node-c".to_string()]
        );

        let mut bad = csr.clone();
        let n = bad.len();
        bad[n - 5] ^= 0x01;
        assert!(sign_node_csr(&ca, &bad, IR, "node-c", "10.0.0.3:8060").is_err());
        assert!(matches!(
            sign_node_csr(&ca, &csr, IR, "node-c", "no-port"),
            Err(PkiError::BadAddress(_))
        ));
        assert!(matches!(
            sign_node_csr(&ca, &csr, IR, "bad/name", "10.0.0.3:8060"),
            Err(PkiError::InvalidName { .. })
        ));
    }

    #[test]
    fn leaf_never_outlives_ca() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        let ca = Ca::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        let ca_not_after = cert_summary(ca.cert_pem()).unwrap().not_after;
        let issued = issue_node_cert(&ca, new_private_key().unwrap().expose(), IR, "n1", "10.0.0.1:1").unwrap();
        assert_eq!(issued.not_after, ca_not_after);
    }

    #[test]
    fn admin_cert_is_client_only() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let (issued, key) = issue_admin_cert(&ca, IR, "alice").unwrap();
        assert!(key.expose().contains("PRIVATE KEY"));
        let der = cert_der_from_pem(&issued.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let id = identity_from_cert(&der).unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Admin, "alice"));
        assert_eq!(sans(&issued.cert_pem), vec![format!("URI:spiffe://{IR}/admin/alice")]);
    }

    #[test]
    fn identity_errors() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let der = cert_der_from_pem(ca.cert_pem()).unwrap();
        assert!(matches!(identity_from_cert(&der), Err(PkiError::NoIdentity)));
        assert!(identity_from_cert(b"junk").is_err());
        assert_eq!(parse_identity_uri("spiffe://x/node/a"), Some(("x", Role::Node, "a")));
        for bad in [
            "spiffe://x/node/",
            "spiffe:///node/a",
            "spiffe://x/root/a",
            "spiffe://x/node/a/b",
            "spiffe://x/node",
        ] {
            assert_eq!(parse_identity_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn pin_and_summary() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let der = cert_der_from_pem(ca.cert_pem()).unwrap();
        assert_eq!(spki_pin(&der).unwrap(), spki_pin(ca.cert_pem()).unwrap());
        let kp = KeyPair::from_pem(ca.key_pem().expose()).unwrap();
        let spki_der = kp.subject_public_key_info();
        assert_eq!(spki_pin(&der).unwrap(), <[u8; 32]>::from(Sha256::digest(&spki_der)));

        let s = cert_summary(ca.cert_pem()).unwrap();
        assert_eq!(s.sha256_thumbprint, hex::encode(Sha256::digest(&der)));
        assert_eq!(s.sha1_thumbprint.len(), 40);
        assert_eq!(s.serial_hex.len(), 32);
    }

    #[test]
    fn pem_helpers_and_addresses() {
        assert!(certs_from_pem("").is_err());
        assert!(private_key_from_pem("nope").is_err());
        let key = new_private_key().unwrap();
        assert!(private_key_from_pem(key.expose()).is_ok());
        assert_eq!(split_host_port("10.0.0.1:8060"), Some(("10.0.0.1", 8060)));
        assert_eq!(split_host_port("[::1]:8060"), Some(("::1", 8060)));
        assert_eq!(split_host_port("h.example:1"), Some(("h.example", 1)));
        assert_eq!(split_host_port("::1:8060"), None);
        assert_eq!(split_host_port(":8060"), None);
        assert_eq!(split_host_port("host"), None);
    }
}
