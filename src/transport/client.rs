//! Outgoing connections: TLS handshakes done by us (so we choose the trust anchors and the
//! ALPN protocol), then plain HTTP/2 over them for tonic.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::pki::tls::server_name;

pub use crate::timing::CONNECT_TIMEOUT;
use crate::timing::{CHANNEL_KEEPALIVE_INTERVAL, CHANNEL_KEEPALIVE_TIMEOUT};

/// TCP to `address` and a TLS handshake with `config`, its errors as rustls gave them.
async fn handshake(address: &str, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let name = server_name(address).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// Opens TCP to `address` (`host:port`) and completes a TLS handshake with `config`.
pub async fn connect_tls(address: &str, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let handshake = async {
        handshake(address, config)
            .await
            .map_err(|e| io::Error::new(e.kind(), crate::pki::tls::describe_tls_error(&e)))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            ConnectTimedOut {
                address: address.to_string(),
            },
        )
    })?
}

/// Whether the member at `address` refuses `config`'s certificate as revoked. In TLS 1.3 the
/// server judges the client's certificate after the client has finished its handshake, so
/// its `certificate_revoked` alert is the first thing the client reads on what looked like
/// an open connection; through a channel, a request sees only "connection closed". Here the
/// handshake is followed by one read, which returns the alert itself.
pub async fn refuses_as_revoked(address: &str, config: Arc<ClientConfig>) -> bool {
    use tokio::io::AsyncReadExt;
    let probe = async {
        let mut tls = handshake(address, config).await?;
        let mut byte = [0u8; 1];
        tls.read(&mut byte).await.map(|_| ())
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
        Ok(Err(e)) => matches!(
            e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRevoked
            ))
        ),
        // Answered, closed without an alert, or silent: not a revocation.
        _ => false,
    }
}

/// A TCP connect plus TLS handshake that did not complete within `CONNECT_TIMEOUT`: nothing
/// was sent on it.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {address} timed out")]
pub struct ConnectTimedOut {
    pub address: String,
}

/// Whether a failed call never reached its peer: the connection was refused or could not be
/// opened in time. Read from the error's causes (the connector's `io::Error`), never from
/// its text.
pub fn never_connected(failure: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(failure);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            let timed_out = io.get_ref().is_some_and(|inner| inner.is::<ConnectTimedOut>());
            if io.kind() == io::ErrorKind::ConnectionRefused || timed_out {
                return true;
            }
        }
        if e.is::<ConnectTimedOut>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn endpoint(address: &str) -> Endpoint {
    // The URI only names the peer for HTTP/2's :authority; the connector below does the dialling.
    Endpoint::from_shared(format!("http://{address}"))
        .expect("host:port makes a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(CHANNEL_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(CHANNEL_KEEPALIVE_TIMEOUT)
}

/// A channel to `address` over TLS with `config`. Lazy: it connects on first use and
/// reconnects after failures, so it can be created for a peer that is down.
pub fn tls_channel(address: &str, config: Arc<ClientConfig>) -> Channel {
    let target = address.to_string();
    endpoint(address).connect_with_connector_lazy(service_fn(move |_: Uri| {
        let (target, config) = (target.clone(), config.clone());
        async move { connect_tls(&target, config).await.map(TokioIo::new) }
    }))
}

/// A channel to `address` that has completed one handshake, so that a refused certificate
/// or an unreachable node is reported now, with its cause, rather than on the first call.
pub async fn tls_channel_checked(address: &str, config: Arc<ClientConfig>) -> io::Result<Channel> {
    let first = connect_tls(address, config.clone()).await?;
    let slot = Arc::new(std::sync::Mutex::new(Some(first)));
    let target = address.to_string();
    endpoint(address)
        .connect_with_connector(service_fn(move |_: Uri| {
            let (target, config, slot) = (target.clone(), config.clone(), slot.clone());
            async move {
                let ready = slot.lock().expect("slot lock").take();
                match ready {
                    Some(stream) => Ok(TokioIo::new(stream)),
                    None => connect_tls(&target, config).await.map(TokioIo::new),
                }
            }
        }))
        .await
        .map_err(|e| io::Error::other(crate::error_chain(&e)))
}

/// A channel to the local node's owner-only Unix socket.
pub async fn unix_channel(socket: &Path) -> io::Result<Channel> {
    let path: PathBuf = socket.to_path_buf();
    UnixStream::connect(&path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach the local node at {}: {e} (is `shir run` running for this data dir?)",
                path.display()
            ),
        )
    })?;
    Endpoint::from_static("http://local.node")
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| io::Error::other(crate::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    #[tokio::test]
    async fn a_call_to_a_closed_port_is_known_never_to_have_connected() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let channel = tls_channel(&address, config());
        let failure = crate::proto::cluster_client::ClusterClient::new(channel)
            .heartbeat(crate::proto::HeartbeatRequest::default())
            .await
            .unwrap_err();
        assert!(never_connected(&failure), "{failure:?}");
        let refused = tonic::Status::unavailable("Connection refused (by its text only)");
        assert!(!never_connected(&refused));
    }
}
