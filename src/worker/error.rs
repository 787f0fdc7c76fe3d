//! What an attempt can end with other than success. Whether another try could help is a
//! property of the variant (or, for a copy failure, of the connector's own error), never
//! read from the message; the message is the one line `job show` prints.

use std::time::Duration;

use crate::copy::CopyError;
use crate::node::handle::NodeError;
use crate::state::linked_service::UnsealError;

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// This node has not applied the IR's state yet (just joined or restored).
    #[error(transparent)]
    NoState(NodeError),
    /// The job names a linked service that was removed since.
    #[error("linked service '{0}' does not exist")]
    UnknownService(String),
    /// A linked service's secrets did not open with this node's data key.
    #[error(transparent)]
    Unseal(UnsealError),
    /// Reading the source, writing the sink, the consistency check or publishing failed;
    /// the connector says whether trying again could help.
    #[error(transparent)]
    Copy(CopyError),
    /// No row, byte or file moved for the job's stall timeout.
    #[error(
        "no data moved for {}: the source or sink stopped answering; the attempt was stopped (--stall-timeout)",
        humantime(*.0)
    )]
    Stalled(Duration),
    /// The attempt was told to stop (its job cancelled, the node shutting down, or the
    /// attempt superseded): the applied state says which.
    #[error("the attempt was stopped")]
    Stopped,
    /// The dispatcher answered that the job was cancelled.
    #[error("the job was cancelled")]
    Cancelled,
    /// The dispatcher refused to let this attempt publish: another attempt owns the job.
    #[error("not allowed to publish: {0}")]
    LostAttempt(String),
    /// No dispatcher could be asked for permission to publish.
    #[error("no dispatcher allowed publishing: {0}")]
    DispatcherUnreachable(String),
}

impl AttemptError {
    /// Whether another attempt (here or on another node) could succeed where this one failed.
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::NoState(_) | AttemptError::Stalled(_) | AttemptError::DispatcherUnreachable(_) => true,
            AttemptError::Copy(e) => e.retryable,
            AttemptError::UnknownService(_)
            | AttemptError::Unseal(_)
            | AttemptError::Stopped
            | AttemptError::Cancelled
            | AttemptError::LostAttempt(_) => false,
        }
    }
}

impl From<CopyError> for AttemptError {
    fn from(e: CopyError) -> Self {
        AttemptError::Copy(e)
    }
}

pub(super) fn humantime(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s if s >= 1 => format!("{s} s"),
        _ => format!("{} ms", d.as_millis()),
    }
}
