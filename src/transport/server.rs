//! The node port: one TCP listener, two TLS handshakes. The ClientHello's ALPN decides:
//! `shir-join/1` gets a certificate-less handshake that can reach `Join` alone; anything
//! else must complete mutual TLS with a certificate from the IR's CA that is not revoked.
//! Accepted connections are labelled with their `Caller` and handed to a tonic server.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::Caller;
use crate::pki::{self, tls::ALPN_JOIN};

use crate::timing::{ACCEPT_RETRY_PAUSE, HANDSHAKE_TIMEOUT, HELLO_TIMEOUT};

/// Handshakes in flight at once, in all and from one address. Connections beyond either
/// are closed at once: a flood from one address cannot crowd out peers, joiners and
/// operators, and a flood from many cannot grow the node's memory.
const MAX_PENDING_HANDSHAKES: usize = 256;
const MAX_PENDING_PER_ADDRESS: usize = 16;

/// Joiners' connections open at once. A joiner needs no certificate, so anyone can open
/// one; with the joiners' server's per-connection bounds (`node::services`) this caps what
/// strangers can make the node hold. Registrations are rare and one at a time.
const MAX_JOINER_CONNECTIONS: usize = 32;

/// Counts handshakes in flight, per source address and in all.
#[derive(Default)]
struct Pending {
    per_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One admitted handshake; gives its slot back when dropped.
struct Slot {
    pending: Arc<Pending>,
    ip: std::net::IpAddr,
}

impl Pending {
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let mut map = self.per_address.lock().expect("pending lock");
        let total: usize = map.values().sum();
        let mine = map.entry(ip).or_insert(0);
        if *mine >= MAX_PENDING_PER_ADDRESS || total >= MAX_PENDING_HANDSHAKES {
            return None;
        }
        *mine += 1;
        Some(Slot {
            pending: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.pending.per_address.lock().expect("pending lock");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection with the caller it was authenticated as.
pub struct Conn<S> {
    io: S,
    caller: Caller,
    /// A joiner's place among `MAX_JOINER_CONNECTIONS`, given back when the connection ends.
    _joiner_slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

pub type TlsConn = Conn<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;
pub type LocalConn = Conn<tokio::net::UnixStream>;
pub type Incoming<C> = tokio_stream::wrappers::ReceiverStream<Result<C, io::Error>>;

/// The two TLS configurations of the node port.
#[derive(Clone)]
pub struct PortTls {
    pub members: Arc<ServerConfig>,
    pub joiners: Arc<ServerConfig>,
    /// Certificates naming another IR are refused even if (somehow) signed by our CA.
    pub ir_id: String,
}

/// Accepts on `listener` until `stop`, sorting connections into the members' stream and the
/// joiners' stream.
pub fn accept_node_port(
    listener: TcpListener,
    tls: PortTls,
    stop: CancellationToken,
) -> (Incoming<TlsConn>, Incoming<TlsConn>) {
    let (member_tx, member_rx) = mpsc::channel(64);
    let (join_tx, join_rx) = mpsc::channel(16);
    let pending = Arc::new(Pending::default());
    let joiner_slots = Arc::new(tokio::sync::Semaphore::new(MAX_JOINER_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.cancelled() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            };
            let Some(slot) = pending.admit(peer.ip()) else {
                tracing::debug!(%peer, "refused connection: too many handshakes in flight");
                continue;
            };
            let (tls, member_tx, join_tx) = (tls.clone(), member_tx.clone(), join_tx.clone());
            let joiner_slots = joiner_slots.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, &tls, joiner_slots)).await {
                    Ok(Ok(conn)) => {
                        let tx = if matches!(conn.caller, Caller::Joiner) {
                            join_tx
                        } else {
                            member_tx
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "refused connection"),
                    Err(_) => tracing::info!(%peer, "refused connection: TLS handshake timed out"),
                }
            });
        }
    });
    (
        tokio_stream::wrappers::ReceiverStream::new(member_rx),
        tokio_stream::wrappers::ReceiverStream::new(join_rx),
    )
}

async fn handshake(
    tcp: tokio::net::TcpStream,
    tls: &PortTls,
    joiner_slots: Arc<tokio::sync::Semaphore>,
) -> io::Result<TlsConn> {
    let start = tokio::time::timeout(
        HELLO_TIMEOUT,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TLS ClientHello in time"))??;
    let wants_join = start
        .client_hello()
        .alpn()
        .map(|mut protocols| protocols.any(|p| p == ALPN_JOIN))
        .unwrap_or(false);
    if wants_join {
        // Before the rest of the handshake, so a refused joiner costs no signature.
        let slot = joiner_slots.try_acquire_owned().map_err(|_| {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{MAX_JOINER_CONNECTIONS} joiners' connections are open already"),
            )
        })?;
        let io = start.into_stream(tls.joiners.clone()).await?;
        return Ok(Conn {
            io,
            caller: Caller::Joiner,
            _joiner_slot: Some(slot),
        });
    }
    let io = start.into_stream(tls.members.clone()).await?;
    let leaf = io
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate"))?;
    let identity = pki::identity_from_cert(leaf.as_ref())
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
    if identity.ir_id != tls.ir_id {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("certificate belongs to IR {}, not this one", identity.ir_id),
        ));
    }
    Ok(Conn {
        io,
        caller: Caller::Certified(identity),
        _joiner_slot: None,
    })
}

/// Accepts local operators on the owner-only Unix socket until `stop`.
pub fn accept_local(listener: UnixListener, stop: CancellationToken) -> Incoming<LocalConn> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((io, _)) => {
                    if tx
                        .send(Ok(Conn {
                            io,
                            caller: Caller::Local,
                            _joiner_slot: None,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "local socket accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
