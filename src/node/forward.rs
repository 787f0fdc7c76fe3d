//! Reaching the dispatcher: a call runs here if this node leads, else over the node channel
//! to the leader, retried while there is no dispatcher. The services, the dispatcher and the
//! worker all use it; it depends on none of them.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::transport::Channel;

use super::handle::Node;
use super::proposer;
use crate::proto;

/// Where a call that must run on the dispatcher goes.
pub enum Hop {
    Here,
    There(Channel),
}

/// How long a call forwarded to the dispatcher may take: a write's own time limit plus
/// the hop.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(proposer::WRITE_TIMEOUT.as_secs() + 2);

/// How long a forwarded call waits for a dispatcher to exist (an election takes well under
/// a second; a little more covers a leader that dies while the call is in flight).
pub const FORWARD_PATIENCE: Duration = Duration::from_secs(5);

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
    /// "not the dispatcher" answers mean it did not run; so does a connection that never
    /// opened. Anything else (a reset, a timeout) may have come after the dispatcher acted,
    /// so only an idempotent call tries again.
    fn may_retry(&self, failure: &Status) -> bool {
        let m = failure.message();
        let did_not_run = failure.code() == tonic::Code::Unavailable
            && (m.starts_with(NOT_DISPATCHER)
                || m.starts_with(NO_DISPATCHER)
                || m.contains("Connection refused")
                || m.contains("connecting to"));
        let transient = matches!(failure.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded);
        did_not_run || (self.idempotent && transient)
    }
}

const NOT_DISPATCHER: &str = "this node is not the dispatcher";
const NO_DISPATCHER: &str = "there is no dispatcher";

pub fn not_dispatcher() -> Status {
    Status::unavailable(format!("{NOT_DISPATCHER} (it changed during the call); retry"))
}

pub fn no_dispatcher() -> Status {
    Status::unavailable(format!(
        "{NO_DISPATCHER}: fewer than a majority of the IR's nodes can reach each other; \
         it resumes when enough nodes are back"
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
