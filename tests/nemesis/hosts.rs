//! Four machines on one: a network namespace per node, joined by a bridge through veth
//! pairs, each with its own address, and one real `shir run` in each on port 8060.
//!
//! The root namespace has an address on the bridge too, so the workload reaches every
//! node from outside, the way an administrator's machine would. Names carry this process's
//! id (`shn<pid>-<i>` namespaces, `shb<pid>` bridge), so concurrent runs do not collide, and
//! leftovers of runs that died without cleaning up are found by prefix and removed.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};

/// The node port, as on real machines.
pub const PORT: u16 = 8060;

const NS_PREFIX: &str = "shn";
const BRIDGE_PREFIX: &str = "shb";
const VETH_PREFIX: &str = "shv";

/// Why this machine cannot run the suite, or `None` if it can: root, iproute2 and nft.
pub fn missing_requirement() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")] {
        let found = StdCommand::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("needs `{tool}` (apt-get install -y {package})"));
        }
    }
    None
}

/// Runs a host command (ip, nft, tc); its stdout, or an error with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = StdCommand::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces and bridge of one run.
pub struct Net {
    bridge: String,
    /// Third octet of 10.77.x.0/24.
    subnet: u8,
    pub namespaces: Vec<String>,
}

impl Net {
    /// Creates `count` namespaces on a fresh bridge, after removing leftovers of dead runs.
    pub fn create(count: usize) -> Result<Net> {
        clean_leftovers();
        let pid = std::process::id();
        let subnet = free_subnet(pid)?;
        let mut net = Net {
            bridge: format!("{BRIDGE_PREFIX}{pid}"),
            subnet,
            namespaces: Vec::new(),
        };
        // From here `net` is dropped (and everything made so far removed) on any error.
        sh("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        let root = format!("{}/24", net.root_ip());
        sh("ip", &["addr", "add", &root, "dev", &net.bridge])?;
        sh("ip", &["link", "set", &net.bridge, "up"])?;
        for i in 0..count {
            let ns = format!("{NS_PREFIX}{pid}-{i}");
            sh("ip", &["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let (outside, inside) = (format!("{VETH_PREFIX}{pid}-{i}"), format!("shp{pid}-{i}"));
            sh(
                "ip",
                &["link", "add", &outside, "type", "veth", "peer", "name", &inside],
            )?;
            sh("ip", &["link", "set", &inside, "netns", &ns])?;
            sh("ip", &["-n", &ns, "link", "set", &inside, "name", "eth0"])?;
            let addr = format!("{}/24", net.ip(i));
            sh("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            sh("ip", &["link", "set", &outside, "master", &net.bridge])?;
            sh("ip", &["link", "set", &outside, "up"])?;
        }
        Ok(net)
    }

    /// Address of machine `i` (0-based): 10.77.x.1 for the first.
    pub fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, i + 1)
    }

    /// The root namespace's address on the bridge (where the workload and the test HTTP
    /// server live).
    pub fn root_ip(&self) -> String {
        format!("10.77.{}.254", self.subnet)
    }

    /// `program args` inside machine `i`'s namespace.
    pub fn exec(&self, i: usize, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.namespaces[i], program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            kill_namespace(ns);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
    }
}

/// Kills whatever still runs in `ns` (even a stopped process dies of SIGKILL) and deletes it;
/// its veth pair goes with it.
fn kill_namespace(ns: &str) {
    if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = sh("ip", &["netns", "del", ns]);
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The run id in a name made by [`Net::create`]: `shn1234-0` → 1234.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Removes namespaces and bridges left by runs whose process is gone.
fn clean_leftovers() {
    let mine = std::process::id();
    let listed = sh("ip", &["netns", "list"]).unwrap_or_default();
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(pid) = owner_pid(name, NS_PREFIX)
            && pid != mine
            && !pid_alive(pid)
        {
            eprintln!("nemesis: removing namespace {name} left by an earlier run");
            kill_namespace(name);
        }
    }
    let links = sh("ip", &["-o", "link", "show", "type", "bridge"]).unwrap_or_default();
    for line in links.lines() {
        let name = line.split(':').nth(1).map(|s| s.trim()).unwrap_or("");
        if let Some(pid) = owner_pid(name, BRIDGE_PREFIX)
            && pid != mine
            && !pid_alive(pid)
        {
            eprintln!("nemesis: removing bridge {name} left by an earlier run");
            let _ = sh("ip", &["link", "del", name]);
        }
    }
}

/// A /24 under 10.77/16 that no route on this host uses yet.
fn free_subnet(pid: u32) -> Result<u8> {
    let routes = sh("ip", &["-4", "route", "show"])?;
    (0..200u32)
        .map(|k| ((pid + k) % 200 + 20) as u8)
        .find(|x| !routes.contains(&format!("10.77.{x}.")))
        .ok_or_else(|| anyhow!("no free 10.77.x.0/24 subnet"))
}

/// One `shir` node on one machine: its name, data dir, log and process.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Set while the process is stopped with SIGSTOP.
    pub paused: bool,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// The four machines and their nodes.
pub struct Hosts {
    pub net: Net,
    pub exe: PathBuf,
    pub root: PathBuf,
    /// The node on each machine; `None` between a removal and its replacement.
    pub nodes: Vec<Option<Node>>,
    pub offline_timeout_ms: u64,
    pub env: Vec<(String, String)>,
    /// How many replacements each machine has had (names the next one).
    generation: Vec<u32>,
}

impl Hosts {
    pub fn new(net: Net, exe: impl Into<PathBuf>, root: &Path, offline_timeout_ms: u64) -> Hosts {
        let count = net.namespaces.len();
        Hosts {
            net,
            exe: exe.into(),
            root: root.to_path_buf(),
            nodes: (0..count).map(|_| None).collect(),
            offline_timeout_ms,
            env: Vec::new(),
            generation: vec![0; count],
        }
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("{}:{PORT}", self.net.ip(i))
    }

    /// Names a new node for machine `i` (node2, then node2r1 after a replacement, …) and
    /// gives it a data dir of its own.
    fn plan(&mut self, i: usize) -> Node {
        self.generation[i] += 1;
        let name = self.planned_name(i);
        Node {
            dir: self.root.join(&name),
            log: self.root.join(format!("{name}.log")),
            name,
            child: None,
            paused: false,
        }
    }

    /// The name of the node last planned for machine `i`.
    pub fn planned_name(&self, i: usize) -> String {
        match self.generation[i] {
            0 | 1 => format!("node{}", i + 1),
            g => format!("node{}r{}", i + 1, g - 1),
        }
    }

    /// `shir init` (no key) or `shir register --auth-key-file FILE` inside machine `i`, then the
    /// suite's node settings (short offline timeout, frequent snapshots) in node.json.
    pub async fn provision(&mut self, i: usize, key: Option<&str>) -> Result<()> {
        let node = self.plan(i);
        let (dir, listen) = (node.dir.to_string_lossy().into_owned(), self.endpoint(i));
        let key_file = node.dir.with_extension("auth-key").to_string_lossy().into_owned();
        let mut args = vec!["--data-dir", &dir, "--name", &node.name, "--listen", &listen];
        match key {
            None => args.extend(["--ir-name", "nemesis"]),
            Some(k) => {
                std::fs::write(&key_file, format!("{k}\n"))?;
                args.extend(["--auth-key-file", &key_file]);
            }
        }
        let verb = if key.is_some() { "register" } else { "init" };
        let mut all = vec![verb];
        all.extend(args);
        let result = self.shir_in(i, &all, Duration::from_secs(30)).await;
        let _ = std::fs::remove_file(&key_file);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&node.dir);
            return Err(e);
        }
        let config_path = node.dir.join("node.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
        config["offline_timeout_ms"] = self.offline_timeout_ms.into();
        config["snapshot_every_entries"] = 200.into();
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// A one-shot `shir` command inside machine `i`'s namespace.
    async fn shir_in(&self, i: usize, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.namespaces[i]])
            .arg(&self.exe)
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| anyhow!("shir {} did not finish within {timeout:?}", args[0]))??;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `shir run` on machine `i` (JSON logs appended to its log file) and waits until
    /// its local socket answers.
    pub async fn start(&mut self, i: usize) -> Result<()> {
        let ns = self.net.namespaces[i].clone();
        let (exe, env) = (self.exe.clone(), self.env.clone());
        let node = self.nodes[i]
            .as_mut()
            .ok_or_else(|| anyhow!("machine {i} has no node"))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        // `ip netns exec` execs the command: the child's pid is shir's, so signals reach it.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .args(["run", "--log-format", "json", "--data-dir"])
            .arg(&node.dir)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start shir run")?;
        node.child = Some(child);
        node.paused = false;
        let socket = node.dir.join("shir.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            let node = self.nodes[i].as_mut().expect("planned above");
            if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                node.child = None;
                bail!("{} exited ({status}) at start; see {}", node.name, node.log.display());
            }
            if Instant::now() > deadline {
                bail!("{} did not open its local socket within 20 s", node.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` to machine `i`'s node process.
    pub fn signal(&mut self, i: usize, signal: i32) -> Result<()> {
        let node = self.nodes[i]
            .as_mut()
            .ok_or_else(|| anyhow!("machine {i} has no node"))?;
        let pid = node.pid().ok_or_else(|| anyhow!("{} is not running", node.name))?;
        // SAFETY: plain kill(2) on a child we started and have not reaped.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        match signal {
            libc::SIGSTOP => node.paused = true,
            libc::SIGCONT => node.paused = false,
            _ => {}
        }
        Ok(())
    }

    /// kill -9 and reap.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGKILL)?;
        let node = self.nodes[i].as_mut().expect("signalled above");
        if let Some(mut child) = node.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        node.paused = false;
        Ok(())
    }

    /// Waits for machine `i`'s node to exit by itself (a removed node does); its exit code.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let node = self.nodes[i].as_mut()?;
        let child = node.child.as_mut()?;
        let status = tokio::time::timeout(timeout, child.wait()).await.ok()?.ok()?;
        node.child = None;
        status.code()
    }

    /// Forgets machine `i`'s node (after its removal): its log stays for the checker.
    pub fn retire(&mut self, i: usize) -> Option<Node> {
        self.nodes[i].take()
    }

    /// Names of the nodes the machines hold now.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().flatten().map(|n| n.name.clone()).collect()
    }

    /// Machine index of node `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.name == name))
    }

    /// SIGTERM every node, then SIGKILL what remains (a stopped process is continued first).
    pub async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.signal(i, libc::SIGCONT);
            let _ = self.signal(i, libc::SIGTERM);
        }
        for node in self.nodes.iter_mut().flatten() {
            if let Some(mut child) = node.child.take()
                && tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
