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

/// Opens TCP to `address` (`host:port`) and completes a TLS handshake with `config`.
pub async fn connect_tls(address: &str, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let name = server_name(address).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let handshake = async {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| io::Error::new(e.kind(), crate::pki::tls::describe_tls_error(&e)))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {address} timed out")))?
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
