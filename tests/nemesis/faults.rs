//! The nemesis: faults injected one after another on a schedule drawn from the run's seed.
//!
//! Each round of the schedule is a seeded shuffle of every kind of fault, so even a short run
//! injects each kind once. Whom a fault hits is drawn from the seed too, except where the
//! fault is about a role (the dispatcher), which is looked up when the fault starts.
//! Network faults are nft rules and netem qdiscs inside the namespaces, removed on heal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use super::history::{self, Fault, History, Op, What, now_ms};
use super::hosts::Hosts;
use super::workload::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// kill -9 a node, restart it.
    KillRestart,
    /// SIGSTOP past the offline timeout, then SIGCONT.
    Pause,
    /// Cut the dispatcher off from the other nodes.
    IsolateDispatcher,
    /// A majority/minority split: one random node alone.
    SplitThreeOne,
    /// Two and two: no side has a majority.
    SplitTwoTwo,
    /// A node loses part of what the others send it; what it sends arrives.
    OneWayLoss,
    /// Delay and loss on a node's link (tc netem).
    SlowNetwork,
    /// `node remove`, then a replacement registers with the shared key.
    ReplaceNode,
    /// As ReplaceNode, with the dispatcher killed while the membership changes.
    KillDispatcherInMembershipChange,
}

pub const ALL: &[Kind] = &[
    Kind::KillRestart,
    Kind::Pause,
    Kind::IsolateDispatcher,
    Kind::SplitThreeOne,
    Kind::SplitTwoTwo,
    Kind::OneWayLoss,
    Kind::SlowNetwork,
    Kind::ReplaceNode,
    Kind::KillDispatcherInMembershipChange,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::KillRestart => "kill -9 + restart",
            Kind::Pause => "SIGSTOP past offline timeout",
            Kind::IsolateDispatcher => "isolate the dispatcher",
            Kind::SplitThreeOne => "partition 3/1",
            Kind::SplitTwoTwo => "partition 2/2",
            Kind::OneWayLoss => "one-way loss",
            Kind::SlowNetwork => "slow link: delay+loss",
            Kind::ReplaceNode => "remove + replace node",
            Kind::KillDispatcherInMembershipChange => "kill dispatcher in membership change",
        }
    }
}

pub struct Nemesis {
    pub hosts: Arc<Mutex<Hosts>>,
    pub workload: Arc<Workload>,
    pub history: Arc<History>,
    rng: StdRng,
}

impl Nemesis {
    pub fn new(hosts: Arc<Mutex<Hosts>>, workload: Arc<Workload>, history: Arc<History>, seed: u64) -> Self {
        Nemesis {
            hosts,
            workload,
            history,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Injects faults until `duration` has passed, then heals everything.
    pub async fn run(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        let mut round: Vec<Kind> = Vec::new();
        while Instant::now() < end {
            if round.is_empty() {
                round = ALL.to_vec();
                round.shuffle(&mut self.rng);
            }
            let kind = round.pop().expect("refilled above");
            let start_ms = now_ms();
            let target = match self.inject(kind).await {
                Ok(target) => target,
                Err(e) => {
                    eprintln!("nemesis: {} did not complete: {e:#}", kind.label());
                    format!("(incomplete: {e})")
                }
            };
            let _ = self.heal().await;
            eprintln!(
                "nemesis: {} on {target} ({:.1} s)",
                kind.label(),
                (now_ms() - start_ms) as f64 / 1000.0
            );
            self.history.fault(Fault {
                kind: kind.label(),
                target,
                start_ms,
                end_ms: now_ms(),
            });
            let gap = self.rng.gen_range(500..2000);
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
    }

    fn pick(&mut self, count: usize) -> usize {
        self.rng.gen_range(0..count)
    }

    /// A fault's duration: `base` plus up to `spread` ms.
    fn hold(&mut self, base: u64, spread: u64) -> Duration {
        Duration::from_millis(base + self.rng.gen_range(0..spread))
    }

    /// Machines with a node.
    async fn occupied(&self) -> Vec<usize> {
        let hosts = self.hosts.lock().await;
        (0..hosts.nodes.len()).filter(|i| hosts.nodes[*i].is_some()).collect()
    }

    /// The machine of the dispatcher, as some answering node sees it.
    async fn dispatcher(&self) -> Result<usize> {
        for (_, endpoint) in self.workload.members.list() {
            let Ok(status) = self.workload.cli.json(&endpoint, &["status"], None).await else {
                continue;
            };
            if let Some(d) = status["dispatcher"].as_str().filter(|d| !d.is_empty())
                && let Some(i) = self.hosts.lock().await.index_of(d)
            {
                return Ok(i);
            }
        }
        Err(anyhow!("no node names a dispatcher"))
    }

    /// Starts `kind`; returns once it is healed again, with whom it hit.
    async fn inject(&mut self, kind: Kind) -> Result<String> {
        let machines = self.occupied().await;
        let count = self.hosts.lock().await.nodes.len();
        let timeout = self.hosts.lock().await.offline_timeout_ms;
        let random = machines[self.pick(machines.len())];
        match kind {
            Kind::KillRestart => {
                self.hosts.lock().await.kill(random).await?;
                let down = self.hold(200, 2500);
                tokio::time::sleep(down).await;
                self.hosts.lock().await.start(random).await?;
                Ok(self.name(random).await)
            }
            Kind::Pause => {
                self.hosts.lock().await.signal(random, libc::SIGSTOP)?;
                let paused = self.hold(timeout + 500, 2500);
                tokio::time::sleep(paused).await;
                self.hosts.lock().await.signal(random, libc::SIGCONT)?;
                Ok(self.name(random).await)
            }
            Kind::IsolateDispatcher | Kind::SplitThreeOne => {
                let alone = if kind == Kind::IsolateDispatcher {
                    self.dispatcher().await?
                } else {
                    random
                };
                let rest: Vec<usize> = (0..count).filter(|j| *j != alone).collect();
                self.partition(&[alone], &rest).await?;
                let cut = self.hold(2000, 4000);
                tokio::time::sleep(cut).await;
                Ok(self.name(alone).await)
            }
            Kind::SplitTwoTwo => {
                let mut all: Vec<usize> = (0..count).collect();
                all.shuffle(&mut self.rng);
                let (a, b) = all.split_at(count / 2);
                self.partition(a, b).await?;
                let cut = self.hold(2000, 3000);
                tokio::time::sleep(cut).await;
                Ok(format!("{a:?} | {b:?}"))
            }
            Kind::OneWayLoss => {
                let peers = self.peer_ips(random, &(0..count).collect::<Vec<_>>()).await;
                let rules = format!(
                    "table inet nemesis {{\n chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {peers} }} numgen random mod 100 < 60 drop; }}\n}}\n"
                );
                self.nft(random, &rules).await?;
                let lossy = self.hold(2000, 4000);
                tokio::time::sleep(lossy).await;
                Ok(self.name(random).await)
            }
            Kind::SlowNetwork => {
                let how = self.slow_down(random).await?;
                let slow = self.hold(3000, 4000);
                tokio::time::sleep(slow).await;
                Ok(format!("{} ({how})", self.name(random).await))
            }
            Kind::ReplaceNode => self.replace(random, None).await,
            Kind::KillDispatcherInMembershipChange => {
                let dispatcher = self.dispatcher().await?;
                let others: Vec<usize> = machines.iter().copied().filter(|m| *m != dispatcher).collect();
                let victim = others[self.pick(others.len())];
                let delay = self.hold(30, 400);
                self.replace(victim, Some((dispatcher, delay))).await
            }
        }
    }

    async fn name(&self, i: usize) -> String {
        self.hosts
            .lock()
            .await
            .nodes
            .get(i)
            .and_then(|n| n.as_ref().map(|n| n.name.clone()))
            .unwrap_or_else(|| format!("machine{i}"))
    }

    /// Addresses of `among` other than `i`, comma separated (an nft set).
    async fn peer_ips(&self, i: usize, among: &[usize]) -> String {
        let hosts = self.hosts.lock().await;
        among
            .iter()
            .filter(|j| **j != i)
            .map(|j| hosts.net.ip(*j))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Loads an nft ruleset inside machine `i`.
    async fn nft(&self, i: usize, rules: &str) -> Result<()> {
        let hosts = self.hosts.lock().await;
        let file = hosts.root.join(format!("nft-{i}.rules"));
        std::fs::write(&file, rules)?;
        hosts.net.exec(i, "nft", &["-f", &file.to_string_lossy()])?;
        Ok(())
    }

    /// Delay and loss on machine `i`'s link with netem; where the kernel has no netem (some
    /// VMs), a slow link (tbf) and random loss both ways (nft) instead. Says which.
    async fn slow_down(&self, i: usize) -> Result<&'static str> {
        let netem = [
            "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "80ms", "40ms", "loss", "5%",
        ];
        let tried = self.hosts.lock().await.net.exec(i, "tc", &netem);
        match tried {
            Ok(_) => Ok("netem"),
            Err(e) if e.to_string().contains("qdisc kind is unknown") => {
                let tbf = [
                    "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "512kbit", "burst", "16kb", "latency",
                    "100ms",
                ];
                self.hosts.lock().await.net.exec(i, "tc", &tbf)?;
                let rules = "table inet nemesis {\n chain input { type filter hook input priority 0; policy accept; numgen random mod 100 < 5 drop; }\n chain output { type filter hook output priority 0; policy accept; numgen random mod 100 < 5 drop; }\n}\n";
                self.nft(i, rules).await?;
                Ok("no netem in this kernel: tbf 512kbit + 5% loss")
            }
            Err(e) => Err(e),
        }
    }

    /// No traffic between `a` and `b` (the root namespace still reaches everyone).
    async fn partition(&self, a: &[usize], b: &[usize]) -> Result<()> {
        for i in a {
            let others = self.peer_ips(*i, b).await;
            let rules = format!(
                "table inet nemesis {{\n chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {others} }} drop; }}\n chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {others} }} drop; }}\n}}\n"
            );
            self.nft(*i, &rules).await?;
        }
        Ok(())
    }

    /// Removes every network fault, continues paused nodes, starts stopped ones.
    pub async fn heal(&self) -> Result<()> {
        let mut hosts = self.hosts.lock().await;
        for i in 0..hosts.nodes.len() {
            let _ = hosts.net.exec(i, "nft", &["delete", "table", "inet", "nemesis"]);
            let _ = hosts.net.exec(i, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
            if hosts.nodes[i].as_ref().is_some_and(|n| n.paused) {
                hosts.signal(i, libc::SIGCONT)?;
            }
            if hosts.nodes[i].as_ref().is_some_and(|n| !n.is_running()) {
                hosts.start(i).await?;
            }
        }
        Ok(())
    }

    /// Removes machine `i`'s node and registers a replacement there with the shared key;
    /// with `kill`, kills that machine (the dispatcher) `delay` after the removal was asked
    /// for, and restarts it a moment later.
    async fn replace(&mut self, i: usize, kill: Option<(usize, Duration)>) -> Result<String> {
        let old = self.name(i).await;
        let others: Vec<(String, String)> = self
            .workload
            .members
            .list()
            .into_iter()
            .filter(|m| m.0 != old)
            .collect();
        let via = others[self.pick(others.len())].clone();
        let removal = {
            let workload = self.workload.clone();
            let (via, old) = (via.clone(), old.clone());
            tokio::spawn(async move { workload.remove_node(&via, &old).await })
        };
        if let Some((dispatcher, delay)) = kill {
            tokio::time::sleep(delay).await;
            self.hosts.lock().await.kill(dispatcher).await?;
            tokio::time::sleep(Duration::from_millis(800)).await;
            self.hosts.lock().await.start(dispatcher).await?;
        }
        let mut result = removal.await?;
        // A removal that timed out or was cut off may not have happened: ask again (a
        // repeat of a completed removal is refused, which is fine).
        for _ in 0..3 {
            if matches!(result, history::Result::Ok) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            result = self.workload.remove_node(&via, &old).await;
        }
        // A removed node stops by itself (exit status 3) once it sees its certificate revoked.
        let exit = self.hosts.lock().await.wait_exit(i, Duration::from_secs(20)).await;
        if exit != Some(3) {
            if result == history::Result::Ok {
                self.history.anomaly(format!(
                    "membership: the removal of {old} was acknowledged but it did not stop within 20 s (exit {exit:?})"
                ));
            }
            return Err(anyhow!(
                "{old} did not stop as removed (exit {exit:?}; removal {result:?})"
            ));
        }
        self.hosts.lock().await.retire(i);
        self.members_changed().await;
        let new = self.register(i).await?;
        Ok(format!("{old} -> {new}"))
    }

    /// Registers a new node on empty machine `i` with a current key, starts it and gives it
    /// a limit of 2. Each try is recorded.
    pub async fn register(&mut self, i: usize) -> Result<String> {
        for _ in 0..8 {
            let Some(via) = self.workload.members.list().into_iter().next() else {
                return Err(anyhow!("no member left to ask for a key"));
            };
            let key = match self.workload.cli.json(&via.1, &["key", "show"], None).await {
                Ok(keys) => keys["key1"].as_str().unwrap_or_default().to_string(),
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let start_ms = now_ms();
            let mut hosts = self.hosts.lock().await;
            let provisioned = hosts.provision(i, Some(&key)).await;
            let name = hosts.planned_name(i);
            let result = match &provisioned {
                Ok(()) => history::Result::Ok,
                Err(e) => history::Result::Unknown(e.to_string()),
            };
            self.history.record(Op {
                id: self.history.next_id(),
                via: hosts.net.ip(i),
                start_ms,
                end_ms: now_ms(),
                what: What::NodeRegister { node: name.clone() },
                result,
            });
            if provisioned.is_err() {
                drop(hosts);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            hosts.start(i).await?;
            drop(hosts);
            self.members_changed().await;
            for _ in 0..10 {
                let via = self.workload.members.list().into_iter().next().expect("a member");
                if self.workload.set_limit(&via, &name, 2).await == history::Result::Ok {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            return Ok(name);
        }
        Err(anyhow!("no replacement could register on machine {i}"))
    }

    /// Tells the workload which nodes the machines run now.
    pub async fn members_changed(&self) {
        let hosts = self.hosts.lock().await;
        let list = (0..hosts.nodes.len())
            .map(|i| hosts.nodes[i].as_ref().map(|n| (n.name.clone(), hosts.endpoint(i))))
            .collect();
        self.workload.members.set(list);
    }
}
