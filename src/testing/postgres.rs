//! A throw-away PostgreSQL server for tests, made from the machine's own `initdb` and
//! `pg_ctl` (Debian's packages put them under `/usr/lib/postgresql/<version>/bin`).
//!
//! [`ThrowawayPostgres::start`] creates a cluster in a temporary directory — superuser
//! [`SUPERUSER`] with a random password, scram-sha-256 for every connection, listening on
//! 127.0.0.1 on a free port with its Unix socket in that directory — and waits until it
//! accepts connections. Dropping it stops the server (`pg_ctl stop -m immediate`) and
//! removes the directory. [`ThrowawayPostgres::shared`] gives one server per test binary;
//! statics are never dropped, so a small watchdog process, which the test process holds by
//! a pipe, stops the server and removes the directory once the process is gone, however it
//! ended (even by SIGKILL).
//!
//! `initdb` and the server refuse to run as root; when the tests run as root (CI does)
//! they run as `postgres` if that user exists, else as `nobody`, through `runuser` (or
//! `setpriv`), and the directory is handed to that user.
//!
//! Without the binaries, [`ThrowawayPostgres::start`] prints why and returns `None` so that
//! the tests skip, except when `CI=true`: CI must have them (`.ci/run` installs them), so
//! there it panics.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::connectors::{ServiceSpec, ServiceType};

/// The superuser the cluster is created with.
pub const SUPERUSER: &str = "shir";

/// The database every new cluster has.
pub const DEFAULT_DATABASE: &str = "postgres";

/// The address the server listens on.
pub const HOST: &str = "127.0.0.1";

/// How long `pg_ctl` may wait for the server to accept connections: a cold start on a
/// loaded CI machine takes a few seconds, a healthy one well under one.
const START_TIMEOUT_SECS: u32 = 60;

/// A free port is found by binding port 0 and letting it go; another process may take it
/// before the server binds it, so a failed bind is retried this many times.
const PORT_ATTEMPTS: usize = 5;

/// Settings for a server whose data does not need to survive a crash: no fsync, no full
/// pages in the WAL. Tests load data fast; durability is PostgreSQL's business, not ours.
const SETTINGS: &str = "
# Added by shir's throw-away test server.
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
log_min_messages = warning
";

/// Run by the watchdog: waits until the test process closes the pipe (by exiting, in any
/// way), then stops the server and removes its directory. Terminal signals are ignored so
/// that a Ctrl-C which kills the tests does not kill the cleanup.
const WATCHDOG: &str = r#"trap '' INT TERM HUP
cat >/dev/null
"$@" stop -D "$SHIR_PG_DATA" -m immediate -s >/dev/null 2>&1
rm -rf "$SHIR_PG_DIR""#;

/// A running PostgreSQL server in a temporary directory; stopped and removed on drop.
pub struct ThrowawayPostgres {
    /// The cluster's directory: `data/` (the cluster), `log`, and the Unix socket.
    root: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    password: String,
    version: String,
    started_in: Duration,
    /// The watchdog and the write end of its pipe; taken on drop.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl std::fmt::Debug for ThrowawayPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrowawayPostgres")
            .field("dir", &self.root.path())
            .field("port", &self.port)
            .field("version", &self.version)
            .field("password", &"***")
            .finish_non_exhaustive()
    }
}

/// The unprivileged user the server runs as when the tests run as root.
#[derive(Clone, Debug)]
struct RunAs {
    user: String,
    uid: u32,
    gid: u32,
    /// `runuser` if present, else `setpriv`.
    tool: PathBuf,
}

impl RunAs {
    /// `postgres` if it exists (Debian's package creates it), else `nobody`.
    fn pick() -> Result<RunAs, String> {
        let tool = find_program("runuser")
            .or_else(|| find_program("setpriv"))
            .ok_or("running as root, and neither runuser nor setpriv is installed to drop to an unprivileged user")?;
        for user in ["postgres", "nobody"] {
            if let Some((uid, gid)) = lookup_user(user) {
                return Ok(RunAs {
                    user: user.to_owned(),
                    uid,
                    gid,
                    tool,
                });
            }
        }
        Err("running as root, and there is neither a postgres nor a nobody user to run the server as".to_owned())
    }

    /// The words that run `program` as this user.
    fn prefix(&self, program: &Path) -> Vec<String> {
        let tool = self.tool.display().to_string();
        let program = program.display().to_string();
        if self.tool.ends_with("runuser") {
            vec![tool, "-u".into(), self.user.clone(), "--".into(), program]
        } else {
            vec![
                tool,
                format!("--reuid={}", self.uid),
                format!("--regid={}", self.gid),
                "--clear-groups".into(),
                "--".into(),
                program,
            ]
        }
    }
}

/// The user's uid and gid, from the password database.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam takes a NUL-terminated string and returns a pointer into static
    // storage or null; the two fields are copied out at once.
    unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        if entry.is_null() {
            None
        } else {
            Some(((*entry).pw_uid, (*entry).pw_gid))
        }
    }
}

/// A program on PATH (or in /usr/sbin and /sbin, which root's PATH may lack).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `$SHIR_TEST_PG_BIN` if set,
/// else where `initdb` on PATH really lives, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Result<PathBuf, String> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| is_executable(&dir.join(p)))
    };
    if let Some(dir) = std::env::var_os("SHIR_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "SHIR_TEST_PG_BIN={} holds no initdb, pg_ctl and postgres",
                dir.display()
            ))
        };
    }
    if let Some(initdb) = find_program("initdb") {
        // Debian links /usr/local/bin/initdb (or similar) to the versioned directory.
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent()
            && complete(dir)
        {
            return Ok(dir.to_owned());
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "PostgreSQL's initdb and pg_ctl are not installed (not on PATH, not under /usr/lib/postgresql/*/bin; Debian: apt-get install postgresql)".to_owned())
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A port nobody listens on at this moment.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((HOST, 0))?.local_addr()?.port())
}

/// The last lines of a log, for an error message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

impl ThrowawayPostgres {
    /// Creates and starts a new server. `None` (and a printed reason) when PostgreSQL is
    /// not installed, except under `CI=true`, where that panics; any other failure panics.
    pub fn start() -> Option<ThrowawayPostgres> {
        let bin = match find_bin_dir() {
            Ok(bin) => bin,
            Err(why) if ci() => panic!("CI=true but {why}: .ci/run must install PostgreSQL"),
            Err(why) => {
                println!("skipped: {why}");
                return None;
            }
        };
        match Self::start_with(bin) {
            Ok(server) => Some(server),
            Err(e) => panic!("cannot start a throw-away PostgreSQL: {e}"),
        }
    }

    /// One server for the whole test binary, started by the first caller; the tests share
    /// it (each makes its own database or schema). It is stopped when the process ends.
    pub fn shared() -> Option<&'static ThrowawayPostgres> {
        static SHARED: OnceLock<Option<ThrowawayPostgres>> = OnceLock::new();
        SHARED.get_or_init(ThrowawayPostgres::start).as_ref()
    }

    fn start_with(bin: PathBuf) -> Result<ThrowawayPostgres, String> {
        let began = Instant::now();
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let run_as = if root_user { Some(RunAs::pick()?) } else { None };

        let root = tempfile::Builder::new()
            .prefix("shir-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let data = root.path().join("data");
        let log = root.path().join("log");
        let give = |path: &Path| -> Result<(), String> {
            match &run_as {
                Some(who) => std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid))
                    .map_err(|e| format!("cannot hand {} to {}: {e}", path.display(), who.user)),
                None => Ok(()),
            }
        };
        give(root.path())?;

        let password = format!("{:032x}", rand::random::<u128>());
        let pwfile = root.path().join("pwfile");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .and_then(|mut f| f.write_all(password.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", pwfile.display()))?;
        give(&pwfile)?;

        let initdb = tool(&bin, run_as.as_ref(), root.path(), "initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.join("initdb").display()))?;
        let _ = std::fs::remove_file(&pwfile);
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed ({}): {}",
                initdb.status,
                crate::connectors::one_line(&String::from_utf8_lossy(&initdb.stderr))
            ));
        }
        let version = std::fs::read_to_string(data.join("PG_VERSION"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();

        // The server's own socket goes into our directory rather than /var/run/postgresql,
        // which need not exist or be writable.
        let settings = format!("{SETTINGS}unix_socket_directories = '{}'\n", root.path().display());
        append(&data.join("postgresql.conf"), &settings)?;

        // From here on the directory holds a cluster that may be running: the watchdog
        // cleans it up if this process dies before it is dropped.
        let watchdog = {
            let pg_ctl = bin.join("pg_ctl");
            let words = match &run_as {
                Some(who) => who.prefix(&pg_ctl),
                None => vec![pg_ctl.display().to_string()],
            };
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(WATCHDOG)
                .arg("shir-pg-watchdog")
                .args(&words)
                .env("SHIR_PG_DATA", &data)
                .env("SHIR_PG_DIR", root.path())
                .current_dir("/")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start the watchdog shell: {e}"))?;
            let pipe = child.stdin.take().expect("stdin was piped");
            Mutex::new(Some((child, pipe)))
        };

        let mut server = ThrowawayPostgres {
            root,
            bin,
            run_as,
            port: 0,
            password,
            version,
            started_in: Duration::ZERO,
            watchdog,
        };

        let mut failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
            // A later line wins in postgresql.conf, so a retry just appends its port.
            append(&data.join("postgresql.conf"), &format!("port = {port}\n"))?;
            let status = tool(&server.bin, server.run_as.as_ref(), server.root.path(), "pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-s", "-t", &START_TIMEOUT_SECS.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
            if status.status.success() {
                server.port = port;
                server.started_in = began.elapsed();
                return Ok(server);
            }
            let logged = tail(&log, 5);
            failure = format!(
                "pg_ctl start failed ({}): {} {logged}",
                status.status,
                crate::connectors::one_line(&String::from_utf8_lossy(&status.stderr))
            );
            if !logged.contains("could not bind") && !logged.contains("already in use") {
                break;
            }
        }
        Err(failure)
    }

    /// The address to connect to.
    pub fn host(&self) -> &str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name ([`SUPERUSER`]).
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password (random, made for this server).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server's major version, e.g. `15`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.root.path()
    }

    /// How long creating and starting the server took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// A libpq `key=value` connection string for `database`, as the superuser.
    pub fn connection_string(&self, database: &str) -> String {
        format!(
            "host={HOST} port={} user={SUPERUSER} password={} dbname={database}",
            self.port, self.password
        )
    }

    /// A PostgreSQL linked service's definition that reaches `database` as the superuser.
    pub fn service_spec(&self, database: &str) -> ServiceSpec {
        ServiceSpec::new(ServiceType::Postgres)
            .with("host", HOST)
            .with("port", self.port.to_string())
            .with("database", database)
            .with("user", SUPERUSER)
            .with_secret("password", self.password.as_str())
    }

    /// A client connected to `database` as the superuser; panics if it cannot connect.
    pub async fn client(&self, database: &str) -> tokio_postgres::Client {
        let config: tokio_postgres::Config = self
            .connection_string(database)
            .parse()
            .expect("a valid connection string");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the throw-away PostgreSQL on port {}: {e}", self.port));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Creates a database with a fresh name and returns the name, so that a test sharing
    /// the server has tables of its own.
    pub async fn create_database(&self) -> String {
        let name = format!("t_{:016x}", rand::random::<u64>());
        self.client(DEFAULT_DATABASE)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        name
    }

    /// `psql` (the server's own version, else the one on PATH) connected to `database` as
    /// the superuser, without reading `~/.psqlrc`, stopping at the first error, printing
    /// unaligned tuples only; add `-c SQL` and run it.
    pub fn psql(&self, database: &str) -> Command {
        let own = self.bin.join("psql");
        let program = if is_executable(&own) {
            own
        } else {
            find_program("psql").unwrap_or_else(|| PathBuf::from("psql"))
        };
        let mut cmd = Command::new(program);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                HOST,
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        cmd
    }

    /// Stops the server at once (no checkpoint: the data is thrown away next).
    fn stop(&self) {
        let mut cmd = tool(&self.bin, self.run_as.as_ref(), self.root.path(), "pg_ctl");
        let _ = cmd
            .arg("stop")
            .arg("-D")
            .arg(self.root.path().join("data"))
            .args(["-m", "immediate", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `program` from the server's binaries, run as the unprivileged user when there is one,
/// in the server's directory (another user may not be able to read the caller's).
fn tool(bin: &Path, run_as: Option<&RunAs>, dir: &Path, program: &str) -> Command {
    let program = bin.join(program);
    let mut cmd = match run_as {
        Some(who) => {
            let words = who.prefix(&program);
            let mut cmd = Command::new(&words[0]);
            cmd.args(&words[1..]);
            cmd
        }
        None => Command::new(program),
    };
    cmd.current_dir(dir).stdin(Stdio::null());
    cmd
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        if self.port != 0 {
            self.stop();
        }
        // Closing the pipe wakes the watchdog, which finds nothing left to do.
        if let Some((mut child, pipe)) = self.watchdog.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(pipe);
            let _ = child.wait();
        }
        // The TempDir field removes the directory after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throwaway_postgres_answers_over_tcp_with_scram_only() {
        let Some(server) = ThrowawayPostgres::shared() else {
            return;
        };
        println!(
            "PostgreSQL {} on port {}, started in {:?}",
            server.version(),
            server.port(),
            server.started_in()
        );
        let client = server.client(DEFAULT_DATABASE).await;
        let row = client
            .query_one(
                "SELECT current_user::text, current_setting('password_encryption'), \
                 (SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), SUPERUSER);
        assert_eq!(row.get::<_, String>(1), "scram-sha-256");
        assert_eq!(row.get::<_, String>(2), "scram-sha-256");

        // A wrong password is refused.
        let wrong = format!(
            "host={HOST} port={} user={SUPERUSER} password=wrong dbname=postgres",
            server.port()
        );
        let config: tokio_postgres::Config = wrong.parse().unwrap();
        let err = config
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("a wrong password must fail");
        let err = crate::error_chain(&err);
        assert!(err.contains("password authentication failed"), "{err}");

        // psql, a client we did not write, logs in too.
        let out = server
            .psql(DEFAULT_DATABASE)
            .args(["-c", "SELECT 40 + 2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    }

    #[tokio::test]
    async fn throwaway_postgres_gives_each_test_its_own_database() {
        let Some(server) = ThrowawayPostgres::shared() else {
            return;
        };
        let (a, b) = (server.create_database().await, server.create_database().await);
        assert_ne!(a, b);
        let client = server.client(&a).await;
        let db: String = client
            .query_one("SELECT current_database()::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(db, a);
    }

    #[test]
    fn throwaway_postgres_is_stopped_and_removed_on_drop() {
        let Some(server) = ThrowawayPostgres::start() else {
            return;
        };
        let dir = server.socket_dir().to_owned();
        let port = server.port();
        assert!(dir.join("data").join("postmaster.pid").exists());
        assert!(std::net::TcpStream::connect((HOST, port)).is_ok());
        let started = Instant::now();
        drop(server);
        println!("stopped and removed in {:?}", started.elapsed());
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(
            std::net::TcpStream::connect((HOST, port)).is_err(),
            "something still listens on {port}"
        );
    }

    #[test]
    fn throwaway_postgres_is_cleaned_up_by_the_watchdog_when_its_owner_vanishes() {
        let Some(server) = ThrowawayPostgres::start() else {
            return;
        };
        let dir = server.socket_dir().to_owned();
        let port = server.port();
        // What happens when the process dies: the pipe closes and nobody runs Drop.
        let (mut child, pipe) = server.watchdog.lock().unwrap().take().unwrap();
        drop(pipe);
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(std::net::TcpStream::connect((HOST, port)).is_err());
        drop(server);
    }
}
