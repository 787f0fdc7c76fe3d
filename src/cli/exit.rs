//! Exit statuses a script can tell apart: the outcome of a job, a thing that does not
//! exist, and a node that could not be reached are different answers, not all "1".
//! `shir --help` lists them (its after_help, src/cli/mod.rs) and so does the README.

use std::io::ErrorKind;

/// Succeeded.
pub const SUCCESS: u8 = 0;
/// The job (or the command) failed; also every error without a status of its own.
pub const FAILED: u8 = 1;
/// Bad usage: an unknown flag or a missing argument (clap's status).
pub const USAGE: u8 = 2;
/// `shir run`: this node was removed from the IR.
pub const REMOVED: u8 = crate::node::EXIT_REMOVED;
/// `job wait`: the job was cancelled.
pub const CANCELLED: u8 = 4;
/// `job wait --timeout`: the job had not finished in time.
pub const WAIT_TIMEOUT: u8 = 5;
/// What was named (job, schedule, linked service, node) does not exist.
pub const NOT_FOUND: u8 = 6;
/// The node could not be reached, or the IR has no dispatcher to answer (sysexits'
/// EX_UNAVAILABLE): worth retrying, unlike the others.
pub const UNAVAILABLE: u8 = 69;

/// The status for an error that ended a command.
pub fn for_error(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<crate::node::Removed>().is_some() {
        return REMOVED;
    }
    if let Some(w) = e.downcast_ref::<super::job::WaitOutcome>() {
        return w.exit;
    }
    for cause in e.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::NotFound => NOT_FOUND,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => UNAVAILABLE,
                _ => FAILED,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && unreachable(io.kind())
        {
            return UNAVAILABLE;
        }
    }
    FAILED
}

/// The kinds of I/O error that mean "nobody answered there", not "answered no".
fn unreachable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::TimedOut
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::AddrNotAvailable
            // A Unix socket path that is not there: no node runs for that data dir.
            | ErrorKind::NotFound
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_cause() {
        let status = |code| anyhow::Error::new(tonic::Status::new(code, "x"));
        assert_eq!(for_error(&status(tonic::Code::NotFound)), NOT_FOUND);
        assert_eq!(for_error(&status(tonic::Code::Unavailable)), UNAVAILABLE);
        assert_eq!(for_error(&status(tonic::Code::InvalidArgument)), FAILED);
        let refused = anyhow::Error::new(std::io::Error::from(ErrorKind::ConnectionRefused)).context("cannot connect");
        assert_eq!(for_error(&refused), UNAVAILABLE);
        let denied = anyhow::Error::new(std::io::Error::from(ErrorKind::PermissionDenied));
        assert_eq!(for_error(&denied), FAILED);
        assert_eq!(for_error(&anyhow::anyhow!("anything else")), FAILED);
    }
}
