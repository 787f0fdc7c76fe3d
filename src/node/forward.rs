//! Reaching the dispatcher: a call runs here if this node leads, else over the node channel
//! to the leader, retried while there is no dispatcher. The services, the dispatcher and the
//! worker all use it; it depends on none of them.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::transport::Channel;

use super::handle::Node;
use crate::proto;

/// Where a call that must run on the dispatcher goes.
pub enum Hop {
    Here,
    There(Channel),
}

pub use crate::timing::FORWARD_TIMEOUT;

pub use crate::timing::FORWARD_PATIENCE;

use crate::timing::FORWARD_RETRY_PAUSE;

/// How a call goes to the dispatcher: how long to keep trying, how long one attempt may
/// take, and whether running it twice is harmless.
#[derive(Clone, Copy)]
pub struct Calling {
    pub patience: Duration,
    pub attempt: Duration,
    pub idempotent: bool,
}

impl Calling {
    /// Whether `failure` leaves the call safe to try again. Our own "no dispatcher" and
    /// "not the dispatcher" answers mean it did not run (they say so in their metadata);
    /// so does a connection that never opened. Anything else (a reset, a timeout) may have
    /// come after the dispatcher acted, so only an idempotent call tries again.
    fn may_retry(&self, failure: &Status) -> bool {
        let transient = matches!(failure.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded);
        did_not_run(failure) || (self.idempotent && transient)
    }
}

/// Status metadata that marks an answer given before the call ran at all. It crosses the
/// node channel with the status, so a forwarding node knows without reading the message.
const NOT_RUN: &str = "shir-not-run";

/// True if the call that failed with `failure` certainly did not run: refused before it
/// started (marked `NOT_RUN`), or its connection never opened.
pub fn did_not_run(failure: &Status) -> bool {
    failure.code() == tonic::Code::Unavailable
        && (failure.metadata().contains_key(NOT_RUN) || crate::transport::client::never_connected(failure))
}

fn not_run(mut status: Status) -> Status {
    status
        .metadata_mut()
        .insert(NOT_RUN, tonic::metadata::MetadataValue::from_static("1"));
    status
}

pub fn not_dispatcher() -> Status {
    not_run(Status::unavailable(
        "this node is not the dispatcher (it changed during the call); retry",
    ))
}

pub fn no_dispatcher() -> Status {
    not_run(Status::unavailable(
        "there is no dispatcher: fewer than a majority of the IR's nodes can reach each other; \
         it resumes when enough nodes are back",
    ))
}

impl Node {
    /// Runs `call` on the dispatcher: here if this node leads, else over the node channel to
    /// the leader, each attempt bounded by `calling.attempt`. Retries for `calling.patience`
    /// while there is no dispatcher, or it changed, or it could not be reached at all; a call
    /// that may have taken effect is retried only if `calling.idempotent`.
    pub async fn at_dispatcher<T, F, Fut>(&self, calling: Calling, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Hop) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + calling.patience;
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id() => call(Hop::Here).await,
                Some((_, addr)) => tokio::time::timeout(calling.attempt, call(Hop::There(self.peers.channel(&addr))))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "the dispatcher did not answer within {:.1} s",
                            calling.attempt.as_secs_f64()
                        )))
                    }),
                None => Err(no_dispatcher()),
            };
            match attempt {
                Err(s) if calling.may_retry(&s) && Instant::now() < deadline => {
                    tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }
}

/// The dispatcher as the worker sees it: where its reports on its attempts go. The wiring
/// gives the worker one; the worker does not know where the dispatcher runs.
#[tonic::async_trait]
pub trait Reports: Send + Sync {
    /// Sends `request` to the dispatcher, trying for up to `patience`.
    async fn report(
        &self,
        request: proto::JobReportRequest,
        patience: Duration,
    ) -> Result<proto::JobReportReply, Status>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_marked_answers_say_the_call_did_not_run() {
        assert!(did_not_run(&not_dispatcher()));
        assert!(did_not_run(&no_dispatcher()));
        // The same words without the mark (from anything else) prove nothing.
        assert!(!did_not_run(&Status::unavailable(
            "this node is not the dispatcher (it changed during the call); retry"
        )));
        assert!(!did_not_run(&Status::deadline_exceeded(
            "the dispatcher did not answer within 1.0 s"
        )));
    }
}
