//! Throw-away object stores for tests: an S3 server that checks signatures (s3s-fs, from
//! crates.io) and Azure's own emulator (Azurite, from npm, started with its telemetry off). Both listen on 127.0.0.1 on a free port and keep
//! their data in a temporary directory; dropping one stops it, and a server whose test
//! process died is killed with it (`PR_SET_PDEATHSIG`).
//!
//! Without the programs, `start` prints why and returns `None` so that the tests skip,
//! except when `CI=true`: `.ci/run` installs them, so there it panics.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{python_with, skip};
use crate::connectors::{ServiceSpec, ServiceType};

/// How long a server may take to accept connections (Azurite starts Node.js).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Azurite's well-known development account (public: it is in Microsoft's documentation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Starts `command`, killed with the thread that started it.
fn spawn(mut command: Command, log: &Path) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    command.stdout(out.try_clone()?).stderr(out).stdin(Stdio::null());
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of the new process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn()
}

fn wait_listening(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the test server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the test server did not listen on port {port} within {START_TIMEOUT:?}");
}

/// Runs a Python snippet with boto3 or the Azure SDK; its standard output, trimmed.
///
/// The snippet's end leaves the interpreter at once (`os._exit`) once its output is flushed:
/// pyarrow next to boto3's threads sometimes aborts in its C++ teardown ("terminate called
/// without an active exception") after the work is done, which failed a test that had
/// passed. An error in the snippet still ends it with a traceback and a non-zero status.
pub fn python(script: &str) -> Result<String, String> {
    let script = format!("{script}\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_os._exit(0)\n");
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// s3s-fs (crates.io, the s3s project's file-system S3 server), which checks every
/// request's SigV4 signature against the one key it is started with.
pub struct ThrowawayS3 {
    child: Child,
    dir: tempfile::TempDir,
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub log: PathBuf,
}

impl ThrowawayS3 {
    pub fn start() -> Option<ThrowawayS3> {
        let Some(server) = std::env::var_os("SHIR_TEST_S3S")
            .map(PathBuf::from)
            .or_else(|| on_path("s3s-fs"))
        else {
            return skip("s3s-fs is not installed (cargo install s3s-fs@0.14.1 --locked --features binary)");
        };
        python_with("boto3")?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("the server's data directory");
        let log = dir.path().join("s3s.log");
        let port = free_port();
        let access_key_id = format!("SHIRTEST{:012X}", rand::random::<u64>() >> 16);
        let secret_access_key = format!("{:032x}", rand::random::<u128>());
        let mut command = Command::new(server);
        command.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        command.args(["--access-key", &access_key_id, "--secret-key", &secret_access_key]);
        command.arg(&data);
        let mut child = spawn(command, &log).expect("s3s-fs starts");
        wait_listening(port, &mut child, &log);
        Some(ThrowawayS3 {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1".into(),
            access_key_id,
            secret_access_key,
            log,
        })
    }

    /// Multipart uploads begun and neither completed nor aborted: s3s-fs keeps their parts
    /// as `.upload_id-*` files in its data directory (it has no ListMultipartUploads).
    pub fn unfinished_upload_parts(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("data"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// boto3's client for this server, as Python source (for `python`).
    pub fn boto3(&self) -> String {
        format!(
            // boto3 sends and checks CRC checksums by default, which s3s-fs 0.14 mishandles
            // for a plain PUT; shir does not depend on them.
            r#"import boto3; from botocore.config import Config; s3 = boto3.client("s3", endpoint_url="{}", region_name="{}", aws_access_key_id="{}", aws_secret_access_key="{}", config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"))"#,
            self.endpoint, self.region, self.access_key_id, self.secret_access_key
        )
    }

    pub fn create_bucket(&self, bucket: &str) {
        python(&format!("{}\ns3.create_bucket(Bucket=\"{bucket}\")", self.boto3())).expect("the bucket is made");
    }

    /// An s3 linked service for `bucket` on this server.
    pub fn spec(&self, bucket: &str) -> ServiceSpec {
        ServiceSpec::new(ServiceType::S3)
            .with("bucket", bucket)
            .with("region", &self.region)
            .with("endpoint", &self.endpoint)
            .with("access_key_id", &self.access_key_id)
            .with_secret("secret_access_key", self.secret_access_key.clone())
    }
}

impl Drop for ThrowawayS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's blob service, telemetry off.
pub struct ThrowawayAzurite {
    child: Child,
    _dir: tempfile::TempDir,
    /// The account's blob URL (path style: `http://127.0.0.1:PORT/devstoreaccount1`).
    pub endpoint: String,
    pub log: PathBuf,
}

impl ThrowawayAzurite {
    pub fn start() -> Option<ThrowawayAzurite> {
        let Some(azurite) = std::env::var_os("SHIR_TEST_AZURITE")
            .map(PathBuf::from)
            .or_else(|| on_path("azurite-blob"))
        else {
            return skip("azurite-blob is not installed (npm install -g azurite)");
        };
        python_with("azure.storage.blob")?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("azurite.log");
        let port = free_port();
        let mut command = Command::new(azurite);
        command.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()]);
        command.arg("--location").arg(dir.path().join("data"));
        command.args(["--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"]);
        let mut child = spawn(command, &log).expect("azurite-blob starts");
        wait_listening(port, &mut child, &log);
        Some(ThrowawayAzurite {
            child,
            _dir: dir,
            endpoint: format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
            log,
        })
    }

    /// The Azure SDK's container client, as Python source (for `python`), named `container`.
    pub fn sdk(&self, container: &str) -> String {
        format!(
            r#"from azure.storage.blob import BlobServiceClient; service = BlobServiceClient(account_url="{}", credential={{"account_name": "{AZURITE_ACCOUNT}", "account_key": "{AZURITE_KEY}"}}); container = service.get_container_client("{container}")"#,
            self.endpoint
        )
    }

    pub fn create_container(&self, container: &str) {
        python(&format!("{}\ncontainer.create_container()", self.sdk(container))).expect("the container is made");
    }

    /// An azure-blob linked service for `container`, with the account key.
    pub fn spec(&self, container: &str) -> ServiceSpec {
        ServiceSpec::new(ServiceType::AzureBlob)
            .with("account", AZURITE_ACCOUNT)
            .with("container", container)
            .with("endpoint", &self.endpoint)
            .with_secret("account_key", AZURITE_KEY)
    }
}

impl Drop for ThrowawayAzurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tinyproxy (Debian's package), with Basic authentication, logging each request it carries.
pub struct ThrowawayProxy {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub log: PathBuf,
}

impl ThrowawayProxy {
    pub fn start() -> Option<ThrowawayProxy> {
        let Some(tinyproxy) = std::env::var_os("SHIR_TEST_TINYPROXY")
            .map(PathBuf::from)
            .or_else(|| on_path("tinyproxy"))
        else {
            return skip("tinyproxy is not installed (apt-get install tinyproxy)");
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("tinyproxy.log");
        let port = free_port();
        let password = format!("{:016x}", rand::random::<u64>());
        let config = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Info\nMaxClients 20\n\
                 Allow 127.0.0.1\nBasicAuth shir {password}\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .expect("the proxy's configuration");
        let mut command = Command::new(tinyproxy);
        command.arg("-d").arg("-c").arg(&config);
        let mut child = spawn(command, &dir.path().join("stdout.log")).expect("tinyproxy starts");
        wait_listening(port, &mut child, &log);
        Some(ThrowawayProxy {
            child,
            _dir: dir,
            port,
            user: "shir".into(),
            password,
            log,
        })
    }

    /// What the proxy logged.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ThrowawayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
