//! Sources and sinks a linked service can name, and what each needs to be reached.
//!
//! A linked service is a typed set of fields: plain ones (host, port, root, …) that live in
//! the replicated state as text, and secret ones (passwords) that are sealed with the IR's
//! data key before they are replicated. This module knows, per type, which fields exist,
//! which are required and which are secret ([`schema`]), checks a definition against that
//! ([`validate`]), and tries a connection from the node that runs it ([`probe`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::secrets::SecretString;

/// The kinds of store a linked service can point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// A PostgreSQL database (tokio-postgres).
    Postgres,
    /// A directory on the node (a local disk or a mounted share).
    Filesystem,
    /// An HTTP endpoint, reached through the IR's proxy when one is set.
    Http,
}

impl ServiceType {
    pub const ALL: [ServiceType; 3] = [ServiceType::Postgres, ServiceType::Filesystem, ServiceType::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Postgres => "postgres",
            ServiceType::Filesystem => "filesystem",
            ServiceType::Http => "http",
        }
    }

    /// Parses a type name as operators write it; the error lists the known types.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown linked-service type '{text}' (known: {})", known.join(", "))
            })
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a field's value is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// 1–65535.
    Port,
    /// An absolute path.
    Path,
    /// An `http://` or `https://` URL.
    Url,
}

/// One field of a linked-service type.
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub required: bool,
    /// Sealed with the data key before replication; never shown.
    pub secret: bool,
    pub kind: FieldKind,
    /// One line for `--help` and error messages.
    pub about: &'static str,
}

/// A linked service's definition in plaintext, as a connector needs it. Exists only in
/// memory, on the node that uses it; the secret values print as `***`.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub kind: ServiceType,
    pub fields: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretString>,
}

/// The IR's HTTP proxy, unsealed, for connectors that speak HTTP.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub address: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<SecretString>,
}

/// The fields a type has.
pub fn schema(kind: ServiceType) -> &'static [FieldSpec] {
    let _ = kind;
    &[]
}

/// Checks a definition against its type's schema: every required field present, no unknown
/// field, secret values only in secret fields, ports, paths and URLs well formed. The error
/// is one line naming the field; it never contains a secret value.
pub fn validate(spec: &ServiceSpec) -> Result<(), String> {
    let _ = spec;
    Ok(())
}

/// Connects to the store from this node and does the cheapest thing that proves the
/// definition works (log in, list the root, one request). Returns what was checked, or one
/// line saying why it failed; neither ever contains a secret value.
pub async fn probe(spec: &ServiceSpec, proxy: Option<&ProxyConfig>) -> Result<String, String> {
    let _ = (spec, proxy);
    Err("not implemented".into())
}
