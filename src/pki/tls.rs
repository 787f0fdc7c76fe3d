//! rustls configurations for the cluster port: mutual TLS between members, and the join
//! handshake in which a newcomer trusts the cluster only through its authentication key's pin.
//!
//! All configurations are TLS 1.3 only and use the ring provider explicitly, so nothing
//! depends on which provider happens to be installed as the process default.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::{PkiError, certs_from_pem, private_key_from_pem, split_host_port};

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_JOIN: &[u8] = b"shir-join/1";

/// Tells the mTLS server whether a certificate serial (lowercase hex) has been revoked.
pub type RevocationCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

type Result<T, E = PkiError> = std::result::Result<T, E>;

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn roots_from_pem(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The node's chain as sent to peers: its certificate(s), then any CA certificate from
/// `ca_pem` the chain lacks, so a joiner (who knows only the CA's pin) finds the CA in it.
fn chain_with_ca(chain_pem: &str, ca_pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let mut chain = certs_from_pem(chain_pem)?;
    for ca in certs_from_pem(ca_pem)? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    Ok(chain)
}

/// Server side of member-to-member and admin connections: the client must present a
/// certificate from the cluster CA whose serial is not revoked.
pub fn server_config_mtls(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    revoked: RevocationCheck,
) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let inner =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from_pem(ca_pem)?), provider.clone()).build()?;
    let verifier = Arc::new(RevocationCheckingVerifier { inner, revoked });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain_with_ca(chain_pem, ca_pem)?, private_key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session resumption: a resumed TLS 1.3 session skips the client-certificate check,
    // so a certificate revoked after the first handshake would still get in. Connections
    // between nodes are long-lived, so a full handshake per connection costs nothing.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Server side of the join handshake: anyone may connect (the join RPC itself is
/// authenticated by the key's secret). `chain_pem` must hold the node certificate followed by
/// the CA certificate, because the joiner locates the CA in the chain by its pin.
pub fn server_config_join(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let chain = certs_from_pem(chain_pem)?;
    if chain.len() < 2 {
        return Err(PkiError::Pem {
            what: "the join listener's certificate chain",
            detail: "it must contain the node certificate followed by the CA certificate".into(),
        });
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, private_key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    Ok(Arc::new(config))
}

/// Client side of member-to-member and admin connections.
pub fn client_config_mtls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots_from_pem(ca_pem)?)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, private_key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Client side of the join handshake: the server is trusted only if its chain contains a CA
/// whose public key matches `ca_pin` and its certificate is valid under that CA.
pub fn client_config_join(ca_pin: [u8; 32]) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        pin: ca_pin,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS server name to expect when dialing `host:port`: an IP address if the host is
/// one (node certificates carry IP SANs for IP addresses), a DNS name otherwise.
pub fn server_name(address: &str) -> Result<ServerName<'static>> {
    let (host, _) = split_host_port(address).ok_or_else(|| PkiError::BadAddress(address.into()))?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    DnsName::try_from(host.to_owned())
        .map(ServerName::DnsName)
        .map_err(|_| PkiError::BadAddress(address.into()))
}

fn other_error(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Our verifier failures travel inside `CertificateError::Other`, whose `Display` prints
/// the inner error's `Debug`; so `Debug` here is the plain message, keeping rustls's text
/// readable ("invalid peer certificate: Other(OtherError(certificate has been revoked))").
macro_rules! verify_failure {
    ($name:ident, $msg:literal) => {
        #[derive(thiserror::Error)]
        #[error($msg)]
        struct $name;

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($msg)
            }
        }
    };
}

verify_failure!(
    PinMismatch,
    "the server's CA does not match the authentication key's pin"
);

#[derive(thiserror::Error)]
#[error("could not build a verifier for the pinned CA: {0}")]
struct PinnedVerifierBuild(String);

impl fmt::Debug for PinnedVerifierBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a refusal of a revoked certificate reads, in the TLS layer and in the services.
pub const REVOKED: &str = "certificate has been revoked";

/// True if `status` says a peer refused our certificate as revoked: on a new connection as
/// the TLS alert `certificate_revoked` (seen in the `Debug` text, which includes the error's
/// sources), on one made before the revocation as the services' `PermissionDenied`.
pub fn refused_as_revoked(status: &tonic::Status) -> bool {
    (status.code() == tonic::Code::PermissionDenied && status.message().ends_with(REVOKED))
        || format!("{status:?}").contains("CertificateRevoked")
}

/// A one-line description of a failed TLS connection for operators: the message of our own
/// verifier failures without rustls's wrapping, otherwise the error's own text.
pub fn describe_tls_error(err: &std::io::Error) -> String {
    let rustls_err = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) => inner.to_string(),
        Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => REVOKED.to_string(),
        Some(other) => other.to_string(),
        None => err.to_string(),
    }
}

/// WebPKI client verification followed by a revocation check against the replicated list
/// of revoked serials (the cluster has no CRL distribution; the list is the CRL).
struct RevocationCheckingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationCheck,
}

impl fmt::Debug for RevocationCheckingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationCheckingVerifier")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for RevocationCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let (_, cert) = X509Certificate::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if (self.revoked)(&hex::encode(cert.tbs_certificate.raw_serial())) {
            // The standard error, not one of ours: the TLS alert then says
            // `certificate_revoked`, which is how a removed node that missed its removal
            // learns of it from the others (node::liveness).
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// Trust on pin: finds the CA in the server's own chain by the SHA-256 of its public key,
/// then performs ordinary WebPKI verification with that CA as the only trust anchor.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    Some(Sha256::digest(parsed.public_key().raw).into())
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (anchor, others): (Vec<_>, Vec<_>) = intermediates.iter().partition(|c| spki_sha256(c) == Some(self.pin));
        let Some(anchor) = anchor.into_iter().next() else {
            return Err(other_error(PinMismatch));
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| other_error(PinnedVerifierBuild(e.to_string())))?;
        let others: Vec<CertificateDer<'_>> = others.into_iter().cloned().collect();
        webpki.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::pki::{
        Ca, Role, identity_from_cert, issue_admin_cert, issue_node_cert, make_csr, new_private_key, sign_node_csr,
    };

    const IR: &str = "0123456789abcdef0123456789abcdef";

    struct Node {
        cert_pem: String,
        key_pem: String,
        serial: String,
    }

    fn node(ca: &Ca, name: &str) -> Node {
        let key = new_private_key().unwrap();
        let issued = issue_node_cert(ca, key.expose(), IR, name, "127.0.0.1:8060").unwrap();
        Node {
            cert_pem: issued.cert_pem,
            key_pem: key.expose().to_owned(),
            serial: issued.serial_hex,
        }
    }

    fn never_revoked() -> RevocationCheck {
        Arc::new(|_| false)
    }

    struct Outcome {
        /// What the server saw: the client's certificates, or the handshake error.
        server: std::result::Result<Vec<CertificateDer<'static>>, String>,
        /// What the client saw: the negotiated ALPN after a round trip, or the error.
        client: std::result::Result<Option<Vec<u8>>, String>,
    }

    /// A real handshake over loopback TCP followed by a one-message round trip, because with
    /// TLS 1.3 a client learns that its certificate was refused only on its first read.
    async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .map_err(|e| describe_tls_error(&e))?;
            let certs = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(certs)
        });
        let client_result = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = server_name(&addr.to_string()).map_err(|e| e.to_string())?;
            let mut tls = TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| describe_tls_error(&e))?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"ok");
            Ok::<_, String>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        };
        let client = tokio::time::timeout(Duration::from_secs(10), client_result)
            .await
            .expect("client timed out");
        let server = tokio::time::timeout(Duration::from_secs(10), server_task)
            .await
            .expect("server timed out")
            .unwrap();
        Outcome { server, client }
    }

    fn mtls_server(ca: &Ca, n: &Node, revoked: RevocationCheck) -> Arc<ServerConfig> {
        server_config_mtls(ca.cert_pem(), &n.cert_pem, &n.key_pem, revoked).unwrap()
    }

    #[tokio::test]
    async fn mtls_accepts_node_of_same_ca() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let (a, b) = (node(&ca, "node-a"), node(&ca, "node-b"));
        let client = client_config_mtls(ca.cert_pem(), &b.cert_pem, &b.key_pem).unwrap();
        let out = handshake(mtls_server(&ca, &a, never_revoked()), client).await;
        assert_eq!(out.client.unwrap(), Some(ALPN_H2.to_vec()));
        let certs = out.server.unwrap();
        let id = identity_from_cert(&certs[0]).unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Node, "node-b"));
        assert_eq!(id.serial_hex, b.serial);
    }

    #[tokio::test]
    async fn mtls_rejects_client_without_certificate() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let a = node(&ca, "node-a");
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots_from_pem(ca.cert_pem()).unwrap())
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        let out = handshake(mtls_server(&ca, &a, never_revoked()), Arc::new(client)).await;
        let err = out.server.unwrap_err();
        assert!(err.contains("peer sent no certificates"), "{err}");
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn mtls_rejects_client_from_other_ca() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let rogue_ca = Ca::generate(IR, "rogue").unwrap();
        let a = node(&ca, "node-a");
        let m = node(&rogue_ca, "node-b");
        // The rogue client even trusts the real CA, so only its own certificate is at fault.
        let client = client_config_mtls(ca.cert_pem(), &m.cert_pem, &m.key_pem).unwrap();
        let out = handshake(mtls_server(&ca, &a, never_revoked()), client).await;
        let err = out.server.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn mtls_client_rejects_server_from_other_ca() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let rogue_ca = Ca::generate(IR, "rogue").unwrap();
        let rogue = node(&rogue_ca, "node-a");
        let b = node(&ca, "node-b");
        let client = client_config_mtls(ca.cert_pem(), &b.cert_pem, &b.key_pem).unwrap();
        let server = server_config_mtls(rogue_ca.cert_pem(), &rogue.cert_pem, &rogue.key_pem, never_revoked()).unwrap();
        let out = handshake(server, client).await;
        let err = out.client.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn mtls_rejects_revoked_serial() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let (a, b) = (node(&ca, "node-a"), node(&ca, "node-b"));
        let serial = b.serial.clone();
        let revoked: RevocationCheck = Arc::new(move |s| s == serial);
        let client = client_config_mtls(ca.cert_pem(), &b.cert_pem, &b.key_pem).unwrap();
        let out = handshake(mtls_server(&ca, &a, revoked), client).await;
        assert_eq!(out.server.unwrap_err(), "certificate has been revoked");
        let client = out.client.unwrap_err();
        assert!(client.contains("CertificateRevoked"), "{client}");
    }

    #[tokio::test]
    async fn mtls_accepts_admin_and_reports_identity() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let a = node(&ca, "node-a");
        let (admin, admin_key) = issue_admin_cert(&ca, IR, "alice").unwrap();
        let client = client_config_mtls(ca.cert_pem(), &admin.cert_pem, admin_key.expose()).unwrap();
        let out = handshake(mtls_server(&ca, &a, never_revoked()), client).await;
        assert!(out.client.is_ok(), "{:?}", out.client);
        let certs = out.server.unwrap();
        let id = identity_from_cert(&certs[0]).unwrap();
        assert_eq!(
            (id.ir_id.as_str(), id.role, id.name.as_str()),
            (IR, Role::Admin, "alice")
        );
        assert_eq!(id.serial_hex, admin.serial_hex);
    }

    fn join_server(ca: &Ca, n: &Node) -> Arc<ServerConfig> {
        let chain = format!("{}{}", n.cert_pem, ca.cert_pem());
        server_config_join(&chain, &n.key_pem).unwrap()
    }

    #[tokio::test]
    async fn join_with_right_pin_connects() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let a = node(&ca, "node-a");
        let client = client_config_join(ca.pin().unwrap()).unwrap();
        let out = handshake(join_server(&ca, &a), client).await;
        assert_eq!(out.client.unwrap(), Some(ALPN_JOIN.to_vec()));
        assert!(out.server.unwrap().is_empty());
    }

    #[tokio::test]
    async fn join_with_wrong_pin_fails() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let other = Ca::generate(IR, "other").unwrap();
        let a = node(&ca, "node-a");
        let client = client_config_join(other.pin().unwrap()).unwrap();
        let out = handshake(join_server(&ca, &a), client).await;
        assert_eq!(
            out.client.unwrap_err(),
            "the server's CA does not match the authentication key's pin"
        );
        assert!(out.server.is_err());
    }

    #[tokio::test]
    async fn join_pin_of_ca_does_not_accept_foreign_leaf() {
        // The attacker presents the genuine CA certificate in its chain but a leaf signed
        // by its own CA: the pin matches, the chain does not verify.
        let ca = Ca::generate(IR, "prod").unwrap();
        let rogue_ca = Ca::generate(IR, "rogue").unwrap();
        let rogue = node(&rogue_ca, "node-a");
        let chain = format!("{}{}", rogue.cert_pem, ca.cert_pem());
        let server = server_config_join(&chain, &rogue.key_pem).unwrap();
        let client = client_config_join(ca.pin().unwrap()).unwrap();
        let out = handshake(server, client).await;
        let err = out.client.unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");
    }

    #[tokio::test]
    async fn join_client_cannot_use_mtls_port_config() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let a = node(&ca, "node-a");
        let client = client_config_join(ca.pin().unwrap()).unwrap();
        let out = handshake(mtls_server(&ca, &a, never_revoked()), client).await;
        assert!(out.client.is_err());
        let err = out.server.unwrap_err();
        assert!(err.contains("doesn't support any known protocol"), "{err}");
    }

    #[tokio::test]
    async fn joined_node_cert_from_csr_works_for_mtls() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let a = node(&ca, "node-a");
        let key = new_private_key().unwrap();
        let csr = make_csr(key.expose(), "node-b").unwrap();
        let issued = sign_node_csr(&ca, &csr, IR, "node-b", "127.0.0.2:8060").unwrap();
        let client = client_config_mtls(ca.cert_pem(), &issued.cert_pem, key.expose()).unwrap();
        let out = handshake(mtls_server(&ca, &a, never_revoked()), client).await;
        assert!(out.client.is_ok(), "{:?}", out.client);
        let id = identity_from_cert(&out.server.unwrap()[0]).unwrap();
        assert_eq!(id.name, "node-b");
    }

    #[test]
    fn join_server_needs_ca_in_chain() {
        let ca = Ca::generate(IR, "prod").unwrap();
        let a = node(&ca, "node-a");
        assert!(server_config_join(&a.cert_pem, &a.key_pem).is_err());
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.2:8060").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(server_name("[::1]:8060").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(
            server_name("node-a.example:8060").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("node-a.example").is_err());
        assert!(server_name("bad_host!:1").is_err());
    }
}
