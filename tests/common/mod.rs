//! What the integration tests share: collision-free ports, temp dirs, polling with a
//! reason on timeout, and node logs printed when a test fails.
#![allow(dead_code)]

pub mod clients;

use std::fs::OpenOptions;
use std::future::Future;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use shir::cli::local_ir::{LocalIr, check_port_free};

/// The `shir` binary cargo built for this test run.
pub const SHIR: &str = env!("CARGO_BIN_EXE_shir");

/// A port free on 127.0.0.1 up to 127.0.0.`hosts`, reserved for this test binary.
///
/// The kernel picks a candidate (bind 127.0.0.1:0), which must then also be bindable on the
/// other loopback addresses. Test binaries run in parallel, so the port is also claimed with
/// a marker file that the other binaries respect (markers older than 15 minutes are stale).
pub fn free_port(hosts: usize) -> u16 {
    for _ in 0..500 {
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if check_port_free(port, hosts).is_ok() && reserve(port) {
            return port;
        }
    }
    panic!("found no port free on 127.0.0.1-127.0.0.{hosts}");
}

fn reserve(port: u16) -> bool {
    let dir = std::env::temp_dir().join("shir-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let marker = dir.join(port.to_string());
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(&marker) {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&marker)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > Duration::from_secs(15 * 60));
                if !stale {
                    return false;
                }
                let _ = std::fs::remove_file(&marker);
            }
            Err(_) => return false,
        }
    }
    false
}

/// A `LocalIr` of the test's `shir` binary, with plain (uncoloured) node logs.
pub fn local_ir(root: &Path, port: u16, count: usize) -> LocalIr {
    let mut ir = LocalIr::new(SHIR, root, port, count);
    ir.env.push(("NO_COLOR".into(), "1".into()));
    ir
}

/// A formed four-node IR named `ir_name` in a fresh temp dir, with its logs dumped if the
/// test panics. Bind all three (`let (_tmp, mut ir, _logs) = …`): they drop in reverse, so
/// the logs are printed before the directory holding them goes.
pub async fn four_node_ir(ir_name: &str) -> (tempfile::TempDir, LocalIr, DumpLogsOnPanic) {
    let tmp = tempdir();
    let mut ir = local_ir(tmp.path(), free_port(4), 4);
    let logs = DumpLogsOnPanic::new(&ir);
    ir.form(ir_name).await.expect("four nodes form an IR");
    (tmp, ir, logs)
}

/// The worker's fail points (src/worker/failpoints.rs): between staging and asking to
/// publish, and between publishing and reporting.
pub const HOLD_BEFORE_PUBLISH: &str = "worker-hold-before-publish";
pub const HOLD_AFTER_PUBLISH: &str = "worker-hold-after-publish";

/// The `FAILPOINTS` environment entry that makes attempts of jobs whose name starts with
/// `prefix` wait `ms` milliseconds at `point`, for each `(point, prefix, ms)`.
pub fn failpoints(holds: &[(&str, &str, u64)]) -> (String, String) {
    let setting: Vec<String> = holds
        .iter()
        .map(|(point, prefix, ms)| format!("{point}=return({prefix}:{ms})"))
        .collect();
    ("FAILPOINTS".into(), setting.join(";"))
}

/// A fresh temporary directory with a short path (Unix socket paths must stay short).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shir-it-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Prints `--- step: …` with the time since the test began, so a slow step stands out.
pub struct Steps {
    start: Instant,
}

impl Steps {
    pub fn new() -> Self {
        Steps { start: Instant::now() }
    }
    pub fn step(&self, what: &str) {
        eprintln!("--- step: {what}   [{:.1}s]", self.start.elapsed().as_secs_f64());
    }
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Default for Steps {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls `check` every 50 ms until it returns `Ok`; on timeout panics with the last reason,
/// so a failure says what was still wrong rather than only that time ran out.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The data dir of node `i` as a CLI argument.
pub fn dir_arg(ir: &LocalIr, i: usize) -> String {
    ir.nodes[i].dir.root().to_string_lossy().into_owned()
}

/// `shir ARGS --data-dir <node i>`, with `input` on its standard input; stdout, or the
/// one-line error.
pub async fn shir_on(ir: &LocalIr, i: usize, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let dir = dir_arg(ir, i);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", &dir]);
    ir.shir_with_input(&all, input).await.map_err(|e| e.to_string())
}

/// `shir status --json --data-dir <node i>`, parsed.
pub async fn status_json(ir: &LocalIr, i: usize) -> Result<serde_json::Value, String> {
    let out = ir
        .shir(&["status", "--json", "--data-dir", &dir_arg(ir, i)])
        .await
        .map_err(|e| format!("shir status via {}: {e}", ir.nodes[i].name))?;
    serde_json::from_str(&out).map_err(|e| format!("status --json is not JSON ({e}): {out}"))
}

/// Prints the last lines of every watched node log if the test panics.
/// Declare it after the `TempDir` holding the logs, so it runs before they are removed.
pub struct DumpLogsOnPanic {
    logs: Vec<(String, PathBuf)>,
}

impl DumpLogsOnPanic {
    pub fn new(ir: &LocalIr) -> Self {
        let mut guard = DumpLogsOnPanic { logs: Vec::new() };
        guard.watch(ir, "");
        guard
    }

    /// Also dump the logs of `ir`'s nodes, labelled with `prefix`.
    pub fn watch(&mut self, ir: &LocalIr, prefix: &str) {
        for n in &ir.nodes {
            self.logs.push((format!("{prefix}{}", n.name), n.log.clone()));
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

impl Drop for DumpLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, path) in &self.logs {
            eprintln!("===== last 40 lines of {name}'s log ({}) =====", path.display());
            eprintln!("{}", tail(path, 40));
        }
    }
}

/// The PostgreSQL server tests may use, from `SHIR_TEST_PG` (libpq `key=value` form, a role
/// that may create roles), as its fields; `None` (with the reason printed) when it is unset,
/// so tests that need it skip. `.ci/postgres` starts one and prints the variable.
pub fn test_postgres() -> Option<std::collections::BTreeMap<String, String>> {
    let Ok(conn) = std::env::var("SHIR_TEST_PG") else {
        // CI starts a server (.ci/run calls .ci/postgres): there, a missing one is a failure.
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but SHIR_TEST_PG is not set: .ci/run must start PostgreSQL with .ci/postgres"
        );
        eprintln!("skipped the PostgreSQL part: SHIR_TEST_PG is not set (run .ci/postgres)");
        return None;
    };
    Some(
        conn.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect(),
    )
}

/// `linked-service create NAME --type postgres` through node `via`, for database `db` of `pg`
/// as its superuser, the password on standard input, with `extra` flags; stdout or the error.
pub async fn try_create_postgres_service(
    ir: &LocalIr,
    via: usize,
    name: &str,
    pg: &shir::testing::postgres::ThrowawayPostgres,
    db: &str,
    extra: &[&str],
) -> Result<String, String> {
    let port = pg.port().to_string();
    let mut args = vec![
        "linked-service",
        "create",
        name,
        "--type",
        "postgres",
        "--host",
        pg.host(),
        "--port",
        &port,
        "--database",
        db,
        "--user",
        pg.user(),
        "--password-stdin",
    ];
    args.extend_from_slice(extra);
    shir_on(ir, via, &args, Some(&format!("{}\n", pg.password()))).await
}

/// [`try_create_postgres_service`] with no extra flags, which must succeed.
pub async fn create_postgres_service(
    ir: &LocalIr,
    via: usize,
    name: &str,
    pg: &shir::testing::postgres::ThrowawayPostgres,
    db: &str,
) {
    try_create_postgres_service(ir, via, name, pg, db, &[])
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

/// Request heads an HTTP server received, in arrival order.
pub type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// An HTTP server on `ip` (the kernel picks the port) that answers every request `200 OK`
/// and records the request heads it received, so a test can see what a connector sent.
pub async fn recording_http_server(ip: &str) -> std::io::Result<(std::net::SocketAddr, Heads)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
    let address = listener.local_addr()?;
    let seen = Heads::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                record.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    .await;
            });
        }
    });
    Ok((address, seen))
}

/// An HTTP proxy on 127.0.0.1 that answers every request `200 OK` and records the request
/// heads it received (a [`recording_http_server`]); its port.
pub async fn recording_proxy() -> (u16, Heads) {
    let (address, seen) = recording_http_server("127.0.0.1").await.expect("bind proxy");
    (address.port(), seen)
}

/// Submits a job through node `via`'s admin socket; its id.
pub async fn submit_job(ir: &LocalIr, via: usize, request: shir::proto::JobSubmitRequest) -> String {
    let mut admin = ir.admin(via).await.expect("admin socket");
    admin.job_submit(request).await.expect("submit").into_inner().id
}

/// `key` with a random secret in place of its own: well-formed, right IR, CA pin and
/// endpoints, so only the IR's check of the proof can refuse it.
pub fn with_random_secret(key: &shir::auth_key::AuthKey) -> shir::auth_key::AuthKey {
    shir::auth_key::AuthKey::new(
        key.ir_id.clone(),
        key.slot,
        &rand::random::<[u8; 32]>(),
        key.ca_pin,
        key.endpoints.clone(),
    )
    .expect("a well-formed key")
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path);
            }
        }
    }
    found
}

/// Polls `job show` on node `via` until job `id` has ended (Succeeded, Failed or Cancelled)
/// and returns its JSON; panics after `timeout` with what it last saw.
pub async fn job_end(ir: &LocalIr, via: usize, id: &str, timeout: Duration) -> serde_json::Value {
    eventually(&format!("job {id} to end"), timeout, || async {
        let out = shir_on(ir, via, &["job", "show", id, "--json"], None).await?;
        let j: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        match j["state"].as_str() {
            Some("Succeeded" | "Failed" | "Cancelled") => Ok(j),
            _ => Err(j.to_string()),
        }
    })
    .await
}
