//! Every timeout and interval of the runtime, in one place, because they depend on each
//! other: a forwarded call must outlast the write it carries, a node must miss several
//! heartbeats before it is declared Offline, a Raft heartbeat must come several times per
//! election timeout. Each constant says why it has its value; the test at the end checks the
//! rules between them, so changing one value cannot silently break another's reason.
//!
//! The modules that use them keep their own names (`use crate::timing::X`).

use std::time::Duration;

// --- Raft (openraft's configuration is in milliseconds; src/raft/mod.rs converts) ---

/// The leader's heartbeat: several per election timeout, so a follower does not stand for
/// election because of one late message.
pub const RAFT_HEARTBEAT: Duration = Duration::from_millis(50);

/// A follower stands for election after a random timeout in `[min, max)`. openraft 0.9 also
/// has it wait out the old leader's lease (= max) first, so failover takes about
/// `max + [min, max)`: 450–600 ms, far above a flushed append (a few ms), so a busy but
/// healthy leader is not deposed.
pub const RAFT_ELECTION_MIN: Duration = Duration::from_millis(150);
pub const RAFT_ELECTION_MAX: Duration = Duration::from_millis(300);

/// openraft waits this long after an Unreachable before retrying a peer. Short, so a
/// restarted node is caught up promptly; the cost is a failed connect per interval.
pub const RAFT_UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// How long sending one snapshot chunk may take (1 MiB on a LAN: milliseconds).
pub const RAFT_INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(2000);

/// The longest a dispatcher failover takes by the rule above: the lease plus the longest
/// election timeout.
pub const RAFT_FAILOVER_MAX: Duration = RAFT_ELECTION_MAX.saturating_add(RAFT_ELECTION_MAX);

/// How long `init` waits for its one-node Raft to elect itself before recording the IR: one
/// election timeout on a healthy disk; generous, as for a write, for a slow or busy one.
pub const BOOTSTRAP_LEADER_WAIT: Duration = Duration::from_secs(10);

/// How often a restored node (which refuses votes until it has applied up to the commit
/// index) looks at its progress without a metrics change: bounds how late it votes again.
pub const RESTORED_CATCH_UP_CHECK: Duration = Duration::from_millis(200);

// --- Liveness ---

/// Heartbeat period between nodes. Once a second, as the runtimes shir replaces do; cheap
/// for four nodes.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A heartbeat that takes longer than this counts as "peer not reachable" for the round:
/// under the interval, so a round ends before the next begins.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(900);

/// `status` warns when the clocks of the nodes that are up disagree by more than this.
/// Measured from heartbeat send times, so it must be well above a heartbeat's delay (under
/// `HEARTBEAT_TIMEOUT`) to never warn of the network; NTP keeps clocks within milliseconds.
pub const CLOCK_SKEW_WARN: Duration = Duration::from_secs(2);

/// A node silent for longer than this is Offline (node.json's `offline_timeout_ms`): four
/// missed heartbeats is a node that is gone, not one that is slow, and one or two lost ones
/// do not requeue a node's jobs.
pub const DEFAULT_OFFLINE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a node that was a member may be out of the Raft membership before it takes
/// itself for removed. A removed dispatcher leaves the membership before its certificate is
/// revoked (by the next dispatcher, whose entries it no longer receives); the grace lets it
/// finish handing over the removal first.
pub const OUT_OF_MEMBERSHIP_GRACE: Duration = Duration::from_secs(5);

/// How often the dispatcher re-checks membership when nothing wakes it.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(300);

/// How often a node checks whether it was removed (revoked, or out of the membership): a
/// fraction of the grace, so it stops soon after the grace ends.
pub const REMOVAL_CHECK_INTERVAL: Duration = Duration::from_millis(500);

// --- Writes, forwarding, reads ---

/// How long a write may wait to commit. Past it the caller hears so; the entry may still
/// commit later (e.g. once a majority is back), which the message says. Long enough to ride
/// out several elections.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a forwarded call adds to the work it carries: the hop to the dispatcher and back.
pub const FORWARD_HOP: Duration = Duration::from_secs(2);

/// How long a call forwarded to the dispatcher may take: a write's own time limit plus the
/// hop, so the caller hears the dispatcher's answer (even "timed out") rather than its own
/// timeout.
pub const FORWARD_TIMEOUT: Duration = WRITE_TIMEOUT.saturating_add(FORWARD_HOP);

/// How long a forwarded call waits for a dispatcher to exist (an election takes well under
/// a second; a little more covers a leader that dies while the call is in flight).
pub const FORWARD_PATIENCE: Duration = Duration::from_secs(5);

/// The pause between two tries of a forwarded call while there is no dispatcher: short, so a
/// new one is found within a few milliseconds of its election, without spinning meanwhile.
pub const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A dispatcher that removes itself asks each peer who leads now (a heartbeat): a peer that
/// does not answer within this is skipped for the round, as a heartbeat is; the rounds end
/// after `FORWARD_PATIENCE`, with a pause between them while the others elect.
pub const HANDOVER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub const HANDOVER_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long the dispatcher waits for a majority to confirm it still leads (one heartbeat
/// round on a healthy IR, milliseconds).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// How long `status` keeps trying the dispatcher before answering from this node's own view,
/// and how long one try may take. Short: during an election an operator wants an answer, not
/// a hang; a try at a dispatcher that froze gives up in time to try the one elected next.
pub const STATUS_PATIENCE: Duration = Duration::from_secs(3);
pub const STATUS_ATTEMPT: Duration = Duration::from_secs(1);

/// How long a read waits for the dispatcher's read index, and then for this node to apply
/// up to it, before answering from what it has (marked stale). As short as `status`: both
/// answer an operator, from the local view if need be.
pub const READ_PATIENCE: Duration = Duration::from_secs(3);

// --- Connections ---

/// How long a TCP connect plus TLS handshake to a peer may take before it counts as
/// unreachable. Peers are on a LAN; a second is generous and keeps a dead peer from stalling
/// callers.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 pings on an idle node-to-node connection, and how long one may go unanswered: a
/// peer that vanished without a FIN is noticed in seconds, not at TCP's minutes.
pub const CHANNEL_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const CHANNEL_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client must send its ClientHello within `HELLO_TIMEOUT`, and finish its handshake
/// within `HANDSHAKE_TIMEOUT`; a stalled or malicious one is dropped. A real client sends the
/// hello at once, so the first bound can be short, which frees slots held by silent
/// connections.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause after a failed `accept` (out of file descriptors, say) before accepting again:
/// the loop does not spin while the cause lasts, and a peer's connect waiting in the backlog
/// is still taken before it gives up.
pub const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A joiner's connection is told to go after this long and cut after as long again: a
/// `Join` takes at most `FORWARD_PATIENCE` plus a forwarded attempt, far less than this, and
/// a connection held open for nothing frees its place for real joiners.
pub const JOIN_CONNECTION_AGE: Duration = Duration::from_secs(30);

/// A join proof is accepted only this close to the dispatcher's clock (and only once), so a
/// captured request cannot be replayed later; five minutes tolerates ordinary clock drift
/// between machines.
pub const JOIN_PROOF_MAX_AGE: Duration = Duration::from_secs(300);

/// How far a signed member message's timestamp may be from the receiver's clock: wide
/// enough for clocks that drift and machines that slept, as for join proofs.
pub const MEMBER_PROOF_MAX_SKEW: Duration = Duration::from_secs(300);

// --- Jobs ---

/// How often the dispatcher looks again when nothing wakes it (liveness changes are only
/// seen by looking): several times per heartbeat.
pub const DISPATCH_IDLE_ROUND: Duration = Duration::from_millis(200);

/// How often a running attempt reports its progress: "a few times a second at most".
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How long one progress report may take: it is only news, and the next one follows, so a
/// slow dispatcher delays the numbers a little rather than piling reports up.
pub const PROGRESS_REPORT_PATIENCE: Duration = Duration::from_secs(1);

/// How often the worker looks at the log again when nothing changed in it: attempts it gave
/// up on (see below) are run again on the next look; several looks per heartbeat, as the
/// dispatcher's.
pub const WORKER_IDLE_POLL: Duration = Duration::from_millis(250);

/// How long a worker asks the dispatcher whether an attempt is still current before it
/// starts it: rides out an election; an unconfirmed attempt is only looked at again later.
pub const START_CONFIRM_PATIENCE: Duration = Duration::from_secs(5);

/// The pause before a worker looks again at an attempt the dispatcher did not confirm
/// (usually the dispatcher has not applied the assignment yet, milliseconds): short.
pub const UNCONFIRMED_START_PAUSE: Duration = Duration::from_millis(200);

/// The pause before a worker runs again an attempt whose permission or outcome reached no
/// dispatcher: that means copying again, so it waits for the IR to settle a little longer.
pub const UNSETTLED_RERUN_PAUSE: Duration = Duration::from_secs(1);

/// How long a worker keeps trying to reach a dispatcher with a publish request or an
/// outcome before it gives up on the attempt. Longer than an election and an offline
/// timeout: by then the dispatcher has requeued the attempt anyway.
pub const REPORT_PATIENCE: Duration = Duration::from_secs(30);

/// An attempt that moves no data for this long is stopped and retried (`--stall-timeout`'s
/// default). Ten minutes: longer than any pause a healthy source takes before its first row
/// (a big sort, a cold share), short enough that a hung one gives its slot back the same
/// hour.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A stall is checked for every quarter of its timeout, but no more often than
/// `STALL_CHECK_MIN` (a tiny `--stall-timeout` does not spin) and no less often than
/// `STALL_CHECK_MAX` (a stalled attempt stops within seconds of its timeout).
pub const STALL_CHECK_MIN: Duration = Duration::from_millis(100);
pub const STALL_CHECK_MAX: Duration = Duration::from_secs(5);

// --- Stopping (SIGTERM) ---

/// The systemd unit's `TimeoutStopSec` (deploy/shir.service), after which systemd kills.
pub const SYSTEMD_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `shir run` may take to stop once asked: within `SYSTEMD_STOP_TIMEOUT`, with
/// room for Raft and sled after the drain.
pub const STOP_WITHIN: Duration = Duration::from_secs(15);

/// How long of `STOP_WITHIN` the worker has to hand back or finish its attempts.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(10);

/// After the drain, how long each of the node's three servers (node port, join port, local
/// socket) may take to finish its calls in flight: one after the other, within `STOP_WITHIN`.
pub const SERVER_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long a hand-back may take to reach a dispatcher: the node is stopping, and an
/// attempt not handed back is requeued anyway once the node is Offline.
pub const RELEASE_PATIENCE: Duration = Duration::from_secs(5);

/// How long a node that handed its attempts back (it is shutting down) gets nothing new,
/// whatever its heartbeats said before: its heartbeats say limit 0 from the moment it began
/// to stop, and this covers one that arrives after the hand-back (a whole drain).
pub const DRAINING_FOR: Duration = Duration::from_secs(10);

// --- Connectors ---

/// How long a probe may take in all (name resolution, connecting, logging in, the first
/// answer): long enough for a slow VPN or a cold DNS cache, short enough that an operator
/// waiting on a connection test learns that nothing answers rather than waiting on TCP's
/// own timeouts, which run to minutes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection test gives up after this long even if the connector would wait longer:
/// beyond the probe's own limit, so the probe's more precise reason normally wins.
pub const LINKED_SERVICE_TEST_TIMEOUT: Duration = Duration::from_secs(15);

/// TCP keepalive on connections to PostgreSQL: a peer silent for 30 s is probed every 10 s
/// and given up after `POSTGRES_KEEPALIVE_RETRIES` unanswered probes, so a dead server or
/// path ends a copy in about 90 s (and the attempt is retried) instead of hanging.
pub const POSTGRES_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const POSTGRES_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const POSTGRES_KEEPALIVE_RETRIES: u32 = 6;

/// How long connecting and logging in to PostgreSQL may take before a copy's attempt fails
/// (transiently): generous for a server across a VPN, short next to the stall timeout.
pub const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

// --- Command line (demo, bench, job wait, the local IR they run) ---

/// How often `job wait` and the demo read a job's state again: at least as often as a
/// worker reports progress, so every report is shown, and a few reads a second at most.
pub const JOB_POLL: Duration = Duration::from_millis(200);

/// How often a local IR's node is polled (its socket opening, a condition coming true): a
/// local call costs next to nothing, so a change is seen within a twentieth of a second.
pub const LOCAL_IR_POLL: Duration = Duration::from_millis(50);

/// How long a started local node may take to open its local socket (opening sled, starting
/// Raft), and then to lead a new IR by itself: generous for a loaded laptop.
pub const NODE_START_WAIT: Duration = Duration::from_secs(20);
pub const FIRST_LEADER_WAIT: Duration = Duration::from_secs(20);

/// How long a local IR waits for a node it sent SIGTERM or SIGKILL to exit: a stopping
/// node bounds its own stop at `STOP_WITHIN`; the rest is the process's teardown.
pub const NODE_EXIT_WAIT: Duration = STOP_WITHIN.saturating_add(Duration::from_secs(5));

/// How long a local IR waits for every running node to be an Online voter: registering a
/// node, or bringing one back from Offline, takes a few heartbeats; this is many.
pub const ALL_ONLINE_WAIT: Duration = Duration::from_secs(30);

/// What the demo waits for after killing a node: a new dispatcher (well past the longest
/// failover), the killed node marked Offline (past the offline timeout), a job on a worker
/// to kill, and the whole batch done after the kill (its requeue and a full copy).
pub const DEMO_FAILOVER_WAIT: Duration = Duration::from_secs(10);
pub const DEMO_OFFLINE_WAIT: Duration = Duration::from_secs(15);
pub const DEMO_JOB_RUNNING_WAIT: Duration = Duration::from_secs(10);
pub const DEMO_BATCH_AFTER_KILL: Duration = Duration::from_secs(120);

/// `shir bench` measures a failover by polling for the new dispatcher this often (so the
/// measurement is finer than a Raft heartbeat), and gives up after `BENCH_FAILOVER_WAIT`.
pub const BENCH_FAILOVER_POLL: Duration = Duration::from_millis(5);
pub const BENCH_FAILOVER_WAIT: Duration = Duration::from_secs(15);

/// `shir bench` times a copy by polling its job this often: fine next to a copy's seconds.
pub const BENCH_JOB_POLL: Duration = Duration::from_millis(10);

/// How long `shir bench` waits for its etcd cluster (the comparison) to elect a leader, and
/// how often it asks.
pub const ETCD_LEADER_WAIT: Duration = Duration::from_secs(30);
pub const ETCD_LEADER_POLL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_unit_waits_as_long_as_we_think() {
        let unit = include_str!("../deploy/shir.service");
        let secs: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("deploy/shir.service sets TimeoutStopSec")
            .trim()
            .parse()
            .expect("TimeoutStopSec in whole seconds");
        assert_eq!(Duration::from_secs(secs), SYSTEMD_STOP_TIMEOUT);
    }

    #[test]
    fn the_timeouts_keep_their_order() {
        // Raft: heartbeats several times per election timeout; a random range to split
        // votes; failover well within what a write or a forwarded call waits.
        assert!(RAFT_HEARTBEAT < RAFT_ELECTION_MIN / 2);
        assert!(RAFT_ELECTION_MIN < RAFT_ELECTION_MAX);
        assert!(RAFT_FAILOVER_MAX < FORWARD_PATIENCE);
        assert!(RAFT_FAILOVER_MAX * 4 < WRITE_TIMEOUT);
        // A restarted peer is retried within a heartbeat: its catching up starts before the
        // liveness heartbeats would miss it.
        assert!(RAFT_UNREACHABLE_BACKOFF < HEARTBEAT_INTERVAL);
        // `init`'s one-node election has at least as long as a failover.
        assert!(RAFT_FAILOVER_MAX < BOOTSTRAP_LEADER_WAIT);

        // Liveness: a heartbeat round ends before the next; several are missed before a node
        // is Offline; an election ends before a node would be declared Offline for it.
        assert!(HEARTBEAT_TIMEOUT < HEARTBEAT_INTERVAL);
        assert!(HEARTBEAT_INTERVAL * 3 <= DEFAULT_OFFLINE_TIMEOUT);
        assert!(RAFT_FAILOVER_MAX < DEFAULT_OFFLINE_TIMEOUT);
        assert!(CONNECT_TIMEOUT <= HEARTBEAT_INTERVAL);
        assert!(DISPATCH_IDLE_ROUND < HEARTBEAT_INTERVAL);
        assert!(RECONCILE_INTERVAL < OUT_OF_MEMBERSHIP_GRACE);
        assert!(REMOVAL_CHECK_INTERVAL * 4 <= OUT_OF_MEMBERSHIP_GRACE);

        // Forwarding: the caller waits for the dispatcher's own answer.
        assert_eq!(FORWARD_TIMEOUT, WRITE_TIMEOUT + FORWARD_HOP);
        assert!(FORWARD_TIMEOUT > WRITE_TIMEOUT);
        assert!(JOIN_CONNECTION_AGE > FORWARD_PATIENCE + FORWARD_TIMEOUT);
        // Retries while there is no dispatcher: several within an election, many within the
        // patience; a departing dispatcher's probe and pause fit several rounds in it.
        assert!(FORWARD_RETRY_PAUSE < RAFT_ELECTION_MIN);
        assert!(HANDOVER_RETRY_PAUSE < RAFT_ELECTION_MIN);
        assert!(HANDOVER_PROBE_TIMEOUT <= HEARTBEAT_INTERVAL);
        assert!((HANDOVER_PROBE_TIMEOUT + HANDOVER_RETRY_PAUSE) * 2 < FORWARD_PATIENCE);

        // Reads and status: at least two tries (a frozen dispatcher, then the next one);
        // the dispatcher confirms its lead within one try of the asking node; a read
        // answers no later than status does.
        assert!(STATUS_ATTEMPT * 2 <= STATUS_PATIENCE);
        assert!(STATUS_ATTEMPT * 2 <= READ_PATIENCE);
        assert!(CONFIRM_TIMEOUT <= STATUS_ATTEMPT);
        assert!(RAFT_HEARTBEAT < CONFIRM_TIMEOUT);
        assert!(READ_PATIENCE <= STATUS_PATIENCE);
        assert!(STATUS_PATIENCE < WRITE_TIMEOUT);

        // Connections: the hello comes before the handshake's end; a ping is answered
        // before the next.
        assert!(HELLO_TIMEOUT < HANDSHAKE_TIMEOUT);
        assert!(CHANNEL_KEEPALIVE_TIMEOUT < CHANNEL_KEEPALIVE_INTERVAL);
        // After a failed accept, a peer's connect is still taken before it gives up.
        assert!(ACCEPT_RETRY_PAUSE < CONNECT_TIMEOUT);

        // Jobs: a worker outwaits the requeue of its attempt (offline timeout plus an
        // election) and a forwarded report; progress several times a heartbeat at most.
        assert!(REPORT_PATIENCE > DEFAULT_OFFLINE_TIMEOUT + RAFT_FAILOVER_MAX);
        assert!(REPORT_PATIENCE > FORWARD_TIMEOUT);
        assert!(PROGRESS_EVERY < HEARTBEAT_INTERVAL);
        assert!(PROGRESS_REPORT_PATIENCE < REPORT_PATIENCE);
        // The worker looks several times a heartbeat; its start check rides out an election
        // yet gives up long before a report would; it pauses briefly before looking again at
        // an unconfirmed start, longer before copying again.
        assert!(WORKER_IDLE_POLL < HEARTBEAT_INTERVAL);
        assert!(RAFT_FAILOVER_MAX < START_CONFIRM_PATIENCE);
        assert!(START_CONFIRM_PATIENCE < REPORT_PATIENCE);
        assert!(UNCONFIRMED_START_PAUSE < UNSETTLED_RERUN_PAUSE);
        // The stall check's bounds are a range (`clamp` panics otherwise), and the default
        // timeout is checked at the upper bound.
        assert!(STALL_CHECK_MIN < STALL_CHECK_MAX);
        assert!(STALL_CHECK_MAX * 4 <= DEFAULT_STALL_TIMEOUT);

        // Stopping: the drain, then Raft and sled, all before systemd kills; a hand-back
        // reaches the dispatcher within the drain; the dispatcher keeps a stopping node
        // empty for as long as it may take to drain.
        assert!(DRAIN_WITHIN < STOP_WITHIN);
        assert!(STOP_WITHIN < SYSTEMD_STOP_TIMEOUT);
        assert!(RELEASE_PATIENCE < DRAIN_WITHIN);
        assert!(DRAINING_FOR >= DRAIN_WITHIN);
        // The drain, then the three servers one after the other, within the stop.
        assert!(DRAIN_WITHIN + SERVER_CLOSE_WAIT * 3 < STOP_WITHIN);

        // Connectors: the probe's own limit comes first; a dead PostgreSQL is noticed, and a
        // connect fails, well within the stall timeout.
        assert!(PROBE_TIMEOUT < LINKED_SERVICE_TEST_TIMEOUT);
        let keepalive_gives_up = POSTGRES_KEEPALIVE_IDLE + POSTGRES_KEEPALIVE_INTERVAL * POSTGRES_KEEPALIVE_RETRIES;
        assert_eq!(keepalive_gives_up, Duration::from_secs(90));
        assert!(keepalive_gives_up < DEFAULT_STALL_TIMEOUT);
        assert!(POSTGRES_CONNECT_TIMEOUT < DEFAULT_STALL_TIMEOUT);

        // Command line: `job wait` shows every progress report; the local IR's waits outlast
        // what they wait for (a failover, the offline timeout, a node's first election, a
        // node coming back Online); a failover is measured finer than a heartbeat.
        assert!(JOB_POLL <= PROGRESS_EVERY);
        assert!(LOCAL_IR_POLL < RAFT_ELECTION_MIN);
        // A local IR must not give up on a stopping node before the node itself would.
        assert!(NODE_EXIT_WAIT > STOP_WITHIN);
        assert!(RAFT_FAILOVER_MAX * 4 < DEMO_FAILOVER_WAIT);
        assert!(RAFT_FAILOVER_MAX * 4 < BENCH_FAILOVER_WAIT);
        assert!(BENCH_FAILOVER_POLL < RAFT_HEARTBEAT);
        assert!(DEFAULT_OFFLINE_TIMEOUT * 2 < DEMO_OFFLINE_WAIT);
        assert!(DEFAULT_OFFLINE_TIMEOUT * 2 < ALL_ONLINE_WAIT);
        assert!(DEFAULT_OFFLINE_TIMEOUT + REPORT_PATIENCE < DEMO_BATCH_AFTER_KILL);
    }
}
