//! shir: a self-hosted integration runtime. Up to four nodes, one binary, one port; Raft
//! elects the dispatcher and replicates the IR's state; mutual TLS authenticates every call.

pub mod auth_key;
pub mod cli;
pub mod connectors;
pub mod copy;
pub mod datadir;
pub mod dispatch;
pub mod job_spec;
pub mod node;
pub mod pki;
pub mod proto_conv;
pub mod protocol;
pub mod raft;
pub mod schedule;
pub mod secrets;
pub mod state;
/// Test harnesses (throw-away PostgreSQL, S3, Azurite and proxy servers): for this crate's unit tests and, with the
/// `test-support` feature, for the integration tests; not in release builds.
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
pub mod timing;
pub mod transport;
pub mod worker;

/// The gRPC contract generated from `proto/shir.proto`.
pub mod proto {
    tonic::include_proto!("shir.v1");

    /// The join answer carries the IR's data key: never print it.
    impl std::fmt::Debug for JoinResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("JoinResponse")
                .field("node_id", &self.node_id)
                .field("ir_name", &self.ir_name)
                .field("data_key", &"***")
                .field("members", &self.members)
                .finish_non_exhaustive()
        }
    }

    /// The authentication keys hold their secrets: never print them.
    impl std::fmt::Debug for KeyShowReply {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("KeyShowReply")
                .field("key1", &"***")
                .field("key2", &"***")
                .finish()
        }
    }

    /// A definition as an operator gives it: the secret values are plaintext here.
    impl std::fmt::Debug for LinkedServiceSpec {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let secrets: std::collections::BTreeMap<&str, &str> =
                self.secrets.keys().map(|k| (k.as_str(), "***")).collect();
            f.debug_struct("LinkedServiceSpec")
                .field("type", &self.r#type)
                .field("fields", &self.fields)
                .field("secrets", &secrets)
                .finish()
        }
    }

    /// The proxy password is plaintext here.
    impl std::fmt::Debug for ProxySetRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ProxySetRequest")
                .field("address", &self.address)
                .field("port", &self.port)
                .field("user", &self.user)
                .field("password", &if self.password.is_empty() { "" } else { "***" })
                .finish()
        }
    }
}

/// The version every node reports in its heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default node port, as in the runtime shir is modelled on.
pub const DEFAULT_PORT: u16 = 8060;

/// An error and its causes on one line, `outer: inner: innermost`, for operators.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Unix time in seconds and milliseconds; the state carries times as plain integers.
pub fn unix_now() -> i64 {
    unix_now_ms() / 1000
}

pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
