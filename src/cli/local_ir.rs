//! A whole integration runtime on this machine: nodes as real `shir` processes on the
//! loopback addresses 127.0.0.1–127.0.0.4, each with its own data dir, all on one port.
//! Used by `shir demo`, `shir bench` and the integration tests, so all three exercise the
//! product exactly as an operator runs it. What only tests need (extra environment for the
//! nodes, a shorter offline timeout, standard input for a command, waiting for a node to
//! exit by itself) comes with the `test-support` feature, which release builds leave off.

use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::datadir::DataDir;
use crate::proto::{self, admin_client::AdminClient};
use crate::timing::{ALL_ONLINE_WAIT, FIRST_LEADER_WAIT, LOCAL_IR_POLL, NODE_EXIT_WAIT, NODE_START_WAIT};
use crate::transport::client::unix_channel;

pub struct LocalNode {
    pub name: String,
    pub address: String,
    pub dir: DataDir,
    pub log: PathBuf,
    child: Option<Child>,
}

impl LocalNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct LocalIr {
    exe: PathBuf,
    root: PathBuf,
    pub nodes: Vec<LocalNode>,
    /// Extra environment for every node process (log filters, fail points).
    #[cfg(feature = "test-support")]
    pub env: Vec<(String, String)>,
    /// `shir bench --history`: start nodes that accept `JobHistorySeed`.
    pub bench_seed: bool,
    /// Written to each node's node.json when it is provisioned: tests shorten it so that a
    /// node they stop is declared Offline quickly.
    #[cfg(feature = "test-support")]
    pub offline_timeout_ms: Option<u64>,
}

/// The loopback address of node `i` (0-based): 127.0.0.1 for the first.
pub fn loopback(i: usize) -> String {
    format!("127.0.0.{}", i + 1)
}

/// Checks `port` is free on the four loopback addresses, with a one-line reason if not.
pub fn check_port_free(port: u16, count: usize) -> Result<()> {
    for i in 0..count {
        let addr = format!("{}:{port}", loopback(i));
        StdTcpListener::bind(&addr).map_err(|e| anyhow!("port {port} on {addr} is not available ({e})"))?;
    }
    Ok(())
}

impl LocalIr {
    /// Plans `count` nodes named node1.. under `root`, listening on `port`.
    pub fn new(exe: impl Into<PathBuf>, root: impl Into<PathBuf>, port: u16, count: usize) -> Self {
        let root = root.into();
        let nodes = (0..count)
            .map(|i| LocalNode {
                name: format!("node{}", i + 1),
                address: format!("{}:{port}", loopback(i)),
                dir: DataDir::new(root.join(format!("node{}", i + 1))),
                log: root.join(format!("node{}.log", i + 1)),
                child: None,
            })
            .collect();
        LocalIr {
            exe: exe.into(),
            root,
            nodes,
            #[cfg(feature = "test-support")]
            env: Vec::new(),
            bench_seed: false,
            #[cfg(feature = "test-support")]
            offline_timeout_ms: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs a one-shot `shir` subcommand; its stdout on success, its error line on failure.
    pub async fn shir(&self, args: &[&str]) -> Result<String> {
        self.run_shir(args, None).await
    }

    /// `shir` with `args` and `input` on its standard input (for `--password-stdin`).
    #[cfg(feature = "test-support")]
    pub async fn shir_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        self.run_shir(args, input).await
    }

    async fn run_shir(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut command = Command::new(&self.exe);
        self.test_env(&mut command);
        let mut child = command
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt as _;
            stdin
                .write_all(text.as_bytes())
                .await
                .context("cannot write to shir's stdin")?;
        }
        let out = child.wait_with_output().await.context("shir did not finish")?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!("{}", err.trim().trim_start_matches("error: "))
        }
    }

    /// `shir init` for node `i` (the IR's first node).
    pub async fn init(&self, i: usize, ir_name: &str) -> Result<()> {
        self.provision(i, "init", &["--ir-name", ir_name]).await
    }

    /// `shir register` for node `i` with `key`, passed in an owner-only file as an operator
    /// should (on the command line every user of the machine could read it).
    pub async fn register(&self, i: usize, key: &str) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(&self.root)?;
        let path = self.root.join(format!("{}.auth-key", self.nodes[i].name));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(file, "{key}")?;
        drop(file);
        let arg = path.to_string_lossy().into_owned();
        let registered = self.provision(i, "register", &["--auth-key-file", &arg]).await;
        // Needed only until the node is a member; left behind, it is a secret on disk.
        let _ = std::fs::remove_file(&path);
        registered
    }

    /// `shir init` or `shir register` for node `i`, with its data dir, name and address.
    async fn provision(&self, i: usize, verb: &str, extra: &[&str]) -> Result<()> {
        let n = &self.nodes[i];
        let dir = n.dir.root().to_string_lossy().into_owned();
        let mut args = vec![verb, "--data-dir", &dir, "--name", &n.name, "--listen", &n.address];
        args.extend_from_slice(extra);
        self.shir(&args).await?;
        #[cfg(feature = "test-support")]
        if let Some(ms) = self.offline_timeout_ms {
            let mut config = n.dir.load_config()?;
            config.offline_timeout_ms = ms;
            n.dir.write_config(&config)?;
        }
        Ok(())
    }

    /// Starts `shir run` for node `i` and waits until its local socket answers.
    pub async fn start(&mut self, i: usize) -> Result<()> {
        // Appended to: a restarted node's log follows its earlier life.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)?;
        let mut command = Command::new(&self.exe);
        self.test_env(&mut command);
        let child = command
            .args(["run", "--data-dir"])
            .arg(self.nodes[i].dir.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + NODE_START_WAIT;
        loop {
            if self.admin(i).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.nodes[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.nodes[i].child = None;
                let log = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
                let last = log.lines().last().unwrap_or("").to_string();
                bail!("{} exited ({status}) at start: {last}", self.nodes[i].name);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not open its local socket within {} s",
                    self.nodes[i].name,
                    NODE_START_WAIT.as_secs()
                );
            }
            tokio::time::sleep(LOCAL_IR_POLL).await;
        }
    }

    /// Sends `signal` to node `i`'s process; for SIGKILL and SIGTERM, waits for it to exit.
    pub async fn signal(&mut self, i: usize, signal: i32) -> Result<()> {
        let pid = self.nodes[i]
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.nodes[i].name))?;
        // SAFETY: plain kill(2) on a child we started and have not reaped.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill {}: {}", pid, std::io::Error::last_os_error());
        }
        if (signal == libc::SIGKILL || signal == libc::SIGTERM)
            && let Some(mut child) = self.nodes[i].child.take()
        {
            let _ = tokio::time::timeout(NODE_EXIT_WAIT, child.wait()).await;
        }
        Ok(())
    }

    pub async fn kill(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGKILL).await
    }

    /// Waits up to `timeout` for node `i`'s process to exit by itself; its exit code if it did.
    #[cfg(feature = "test-support")]
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let child = self.nodes[i].child.as_mut()?;
        let status = tokio::time::timeout(timeout, child.wait()).await.ok()?.ok()?;
        self.nodes[i].child = None;
        status.code()
    }

    /// Stops every running node (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_running() {
                let _ = self.signal(i, libc::SIGTERM).await;
            }
        }
    }

    /// The tests' extra environment on `command`; nothing without `test-support`.
    fn test_env(&self, command: &mut Command) {
        #[cfg(feature = "test-support")]
        command.envs(self.env.iter().cloned());
        if self.bench_seed {
            command.env(crate::node::job_history::SEED_ENV, "1");
        }
    }

    /// Admin client on node `i`'s local socket.
    pub async fn admin(&self, i: usize) -> Result<AdminClient<Channel>> {
        Ok(AdminClient::new(unix_channel(&self.nodes[i].dir.socket_path()).await?))
    }

    pub async fn status(&self, i: usize) -> Result<proto::StatusReply> {
        Ok(self.admin(i).await?.status(proto::StatusRequest {}).await?.into_inner())
    }

    pub async fn local_view(&self, i: usize) -> Result<proto::LocalViewReply> {
        Ok(self
            .admin(i)
            .await?
            .local_view(proto::LocalViewRequest {})
            .await?
            .into_inner())
    }

    pub async fn key1(&self, i: usize) -> Result<String> {
        Ok(self
            .admin(i)
            .await?
            .key_show(proto::KeyShowRequest {})
            .await?
            .into_inner()
            .key1)
    }

    /// Polls `check` every `LOCAL_IR_POLL` until it returns `Some`, or fails after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {:?} waiting for {what}", timeout);
            }
            tokio::time::sleep(LOCAL_IR_POLL).await;
        }
    }

    /// Waits until node `via` reports every running node Online and a dispatcher.
    pub async fn wait_all_online(&self, via: usize, timeout: Duration) -> Result<proto::StatusReply> {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.name.clone())
            .collect();
        self.wait_for("every running node to be Online", timeout, || async {
            let s = self.status(via).await.ok()?;
            let ok = !s.dispatcher.is_empty()
                && running.iter().all(|name| {
                    s.nodes.iter().any(|n| {
                        &n.name == name
                            && n.status() == proto::NodeHealth::Online
                            && n.raft_role() == proto::RaftRole::Voter
                    })
                });
            ok.then_some(s)
        })
        .await
    }

    /// Creates a full IR: init node 0, start it, register and start the others with key1.
    pub async fn form(&mut self, ir_name: &str) -> Result<()> {
        self.init(0, ir_name).await?;
        self.start(0).await?;
        let key = self
            .wait_for("the first node to lead", FIRST_LEADER_WAIT, || async {
                self.key1(0).await.ok()
            })
            .await?;
        for i in 1..self.nodes.len() {
            self.register(i, &key).await?;
            self.start(i).await?;
        }
        self.wait_all_online(0, ALL_ONLINE_WAIT).await?;
        Ok(())
    }

    /// `shir linked-service create NAME --type filesystem --root ROOT`, through node 0.
    pub async fn create_filesystem_service(&self, name: &str, root: &Path) -> Result<()> {
        let request = proto::LinkedServiceCreateRequest {
            name: name.into(),
            spec: Some(proto::LinkedServiceSpec {
                r#type: "filesystem".into(),
                fields: [("root".to_string(), root.to_string_lossy().into_owned())]
                    .into_iter()
                    .collect(),
                secrets: Default::default(),
            }),
            encrypted_credential: String::new(),
        };
        self.admin(0)
            .await?
            .linked_service_create(request)
            .await
            .map_err(|s| anyhow!(s.message().to_string()))?;
        Ok(())
    }

    /// Index of the node that is dispatcher according to node `via`.
    pub async fn dispatcher(&self, via: usize) -> Result<usize> {
        let s = self.status(via).await?;
        self.nodes
            .iter()
            .position(|n| n.name == s.dispatcher)
            .ok_or_else(|| anyhow!("no dispatcher"))
    }
}
