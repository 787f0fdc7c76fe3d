//! Group commit. Every proposal costs openraft one log append, and an append waits for a
//! flush on a majority of nodes; proposing commands one by one caps throughput at one
//! flush round per command. The proposer queues concurrent proposals and submits whatever
//! has gathered as one `Command::Batch` entry, with a few batches in flight at once, so
//! under load one flush round commits many commands while a lone command goes at once.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;

use crate::raft::Raft;
use crate::state::{Command, CommandResult};

/// Most commands in one log entry, and most bytes (roughly) of payload: bound the entry's
/// size, so every Raft message stays small, and the apply step's latency.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 512 << 10;

pub use crate::timing::WRITE_TIMEOUT;

/// Batches in flight at once. More than one so consecutive batches overlap their network
/// and flush time; few enough that under load the queue gathers real batches.
const MAX_IN_FLIGHT: usize = 4;

/// Queue depth before proposers wait (back-pressure instead of unbounded memory).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<u64, Status>>;

pub struct Proposer {
    queue: mpsc::Sender<(Command, Reply)>,
}

impl Proposer {
    pub fn spawn(raft: Raft) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(gather(raft, rx));
        Proposer { queue }
    }

    /// Commits `cmd`; returns its log index once it is applied on this (leader) node. The
    /// time limit covers the whole way, queue included.
    pub async fn propose(&self, cmd: Command) -> Result<u64, Status> {
        let (tx, rx) = oneshot::channel();
        let whole = async {
            self.queue
                .send((cmd, tx))
                .await
                .map_err(|_| Status::unavailable("the node is shutting down"))?;
            rx.await.map_err(|_| Status::unavailable("the node is shutting down"))?
        };
        tokio::time::timeout(WRITE_TIMEOUT, whole)
            .await
            .unwrap_or_else(|_| Err(not_committed_in_time()))
    }
}

async fn gather(raft: Raft, mut rx: mpsc::Receiver<(Command, Reply)>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever arrived while we waited for a slot rides along, up to the batch bounds.
        let mut bytes = first.0.approximate_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.0.approximate_size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            submit(&raft, batch).await;
            drop(permit);
        });
    }
}

async fn submit(raft: &Raft, mut batch: Vec<(Command, Reply)>) {
    if batch.len() == 1 {
        let (cmd, reply) = batch.pop().expect("one");
        let _ = reply.send(
            write(raft, cmd)
                .await
                .and_then(|(index, result)| outcome(index, result)),
        );
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
    match write(raft, Command::Batch(commands)).await {
        Ok((index, CommandResult::Batch(results))) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(outcome(index, result));
            }
        }
        Ok((_, other)) => {
            let status = Status::internal(format!("batch applied with an unexpected result: {other:?}"));
            replies.into_iter().for_each(|r| drop(r.send(Err(status.clone()))));
        }
        Err(status) => replies.into_iter().for_each(|r| drop(r.send(Err(status.clone())))),
    }
}

async fn write(raft: &Raft, cmd: Command) -> Result<(u64, CommandResult), Status> {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(cmd)).await {
        Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data)),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(super::not_dispatcher()),
        Ok(Err(e)) => Err(Status::unavailable(format!("write not committed: {e}"))),
        Err(_) => Err(not_committed_in_time()),
    }
}

fn not_committed_in_time() -> Status {
    Status::deadline_exceeded(format!(
        "write not committed within {} s: the dispatcher cannot reach a majority of nodes; \
         it may still commit once they are back",
        WRITE_TIMEOUT.as_secs()
    ))
}

fn outcome(index: u64, result: CommandResult) -> Result<u64, Status> {
    match result {
        CommandResult::Rejected(why) => Err(Status::failed_precondition(why)),
        _ => Ok(index),
    }
}
