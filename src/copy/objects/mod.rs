//! Object-store sources and sinks: S3, Azure Blob Storage and GCS buckets and containers,
//! named like a share's files (`SERVICE:PATH`: a key, a prefix ending in `/`, or a glob).
//!
//! * **Where** (`keys`). A path is split into names by the rules of a share's paths (no
//!   `..`, no absolute path); the names before the first wildcard are the prefix listed, the
//!   rest is matched against each key's names as a share's glob matches file names. A path
//!   without wildcards is the object of that key if there is one, else a prefix.
//! * **Binary copies** (`binary`) stream each object or file through, in parts, between any
//!   two of a share, a bucket and a container, hashing the source as it is read.
//! * **Tables** (`tables`) go through a local spool and the share's own readers and writer.
//! * **Writing** (`upload`) is a multipart upload per object (S3's multipart upload,
//!   Azure's block list, GCS's XML multipart upload), whose parts go up during the copy and
//!   which is completed only at publish: nothing is visible at the key before the attempt
//!   is allowed to publish. A discarded attempt aborts its uploads.
//! * **Errors** are one line naming `service:key` and the store's own reason. A refused
//!   credential, a missing bucket or object, or a refused permission fails at once; other
//!   failures (throttling, 5xx, a reset connection) are retried inside the call by the
//!   client and then fail the attempt transiently.

mod binary;
mod keys;
mod tables;
mod upload;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use object_store::ObjectStore;

pub use binary::copy_binary;
pub use tables::{read_table, write_table};

use super::{CopyError, Endpoint};
use crate::connectors::objects as store;

/// A bucket or container, open.
#[derive(Clone)]
pub(super) struct Bucket {
    pub store: Arc<dyn ObjectStore>,
    /// The linked service's name, for messages.
    pub service: String,
    /// `host:port` of the proxy its calls go through, if one is set.
    pub via: Option<String>,
}

impl Bucket {
    pub fn of(endpoint: &Endpoint) -> Result<Bucket, CopyError> {
        let store = store::open(&endpoint.service, endpoint.proxy.as_ref()).map_err(CopyError::fatal)?;
        Ok(Bucket {
            store,
            service: endpoint.service_name.clone(),
            via: endpoint.proxy.as_ref().map(|p| format!("{}:{}", p.address, p.port)),
        })
    }

    /// One listing of the top, before a sink uploads anything: a missing bucket, a refused
    /// key or an unreachable store fails the attempt now, not after the whole source was
    /// read (some stores accept the parts of an upload to a bucket that is not there).
    pub async fn check_writable(&self, what: &str) -> Result<(), CopyError> {
        self.store
            .list_with_delimiter(None)
            .await
            .map(|_| ())
            .map_err(|e| self.error(format!("cannot write to {what}"), &e))
    }

    /// [`store_error`], saying so when a connection through the proxy failed: an operator
    /// then looks at the proxy, not at the store.
    pub fn error(&self, what: impl std::fmt::Display, e: &object_store::Error) -> CopyError {
        let mut error = store_error(what, e);
        if let Some(via) = &self.via
            && error.message.to_ascii_lowercase().contains("connect")
        {
            error.message.push_str(&format!(" (through proxy {via})"));
        }
        error
    }

    /// `service:key`, as an operator writes a dataset.
    pub fn show(&self, key: &object_store::path::Path) -> String {
        format!("{}:{key}", self.service)
    }
}

/// An object-store failure as a copy error: `{what}: {the store's reason}`, fatal when an
/// operator must act (credentials, permissions, a missing bucket or object) and transient
/// otherwise (the client has already retried what it could).
pub(super) fn store_error(what: impl std::fmt::Display, e: &object_store::Error) -> CopyError {
    let reason = store::describe(e);
    let message = format!("{what}: {reason}");
    let fatal = matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
    ) || FATAL_CODES.iter().any(|code| reason.contains(code));
    if fatal {
        CopyError::fatal(message)
    } else {
        CopyError::transient(message)
    }
}

/// Error codes in the stores' answers that no retry mends (S3, Azure, GCS spell them so).
const FATAL_CODES: &[&str] = &[
    "NoSuchBucket",
    "ContainerNotFound",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InvalidAuthenticationInfo",
    "403 Forbidden",
    "401 Unauthorized",
    "404 Not Found",
];
