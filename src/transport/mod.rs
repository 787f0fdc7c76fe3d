//! How bytes reach a node: TLS on the node port (mutual TLS for members and admins, a
//! separate ALPN protocol for joiners) and the owner-only Unix socket for local operators.

pub mod client;
pub mod server;

use std::fmt;

use crate::pki::{PeerIdentity, Role};

/// Who is on the other end of a connection, established once per connection from what the
/// TLS handshake verified (never from anything the peer writes in a message). Handlers read
/// it from the request extensions.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A process on this machine that could open the owner-only Unix socket.
    Local,
    /// A certificate holder, verified against the IR's CA.
    Certified(PeerIdentity),
    /// A node without a certificate on the join ALPN; it may call `Join` and nothing else.
    Joiner,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Local) || matches!(self, Caller::Certified(p) if matches!(p.role, Role::Admin))
    }

    /// The node name, if the caller is a member node.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            Caller::Certified(p) if matches!(p.role, Role::Node) => Some(&p.name),
            _ => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local => f.write_str("local operator"),
            Caller::Joiner => f.write_str("joining node"),
            Caller::Certified(p) => match p.role {
                Role::Node => write!(f, "node '{}'", p.name),
                Role::Admin => write!(f, "admin '{}'", p.name),
            },
        }
    }
}

/// The caller of a request, as recorded by the transport when the connection was accepted.
pub fn caller_of<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions()
        .get::<Caller>()
        .cloned()
        // A connection the transport did not label is treated as the least trusted kind.
        .unwrap_or(Caller::Joiner)
}
