//! The workload: operator actions sent during the faults from outside the namespaces, through
//! the real CLI with `--endpoint NODE:8060 --admin-cert FILE`, each recorded with its times
//! and result. Copy jobs read known inputs from a filesystem linked service whose root all
//! namespaces see; http linked services point at a small server here that records the
//! credentials each node sends, which proves a node decrypted the right version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use super::history::{self, History, Op, What, now_ms};

/// How long one CLI call may take. A write without a majority gives up after 10 s.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The http linked services the workload creates and updates.
pub const SERVICES: &[&str] = &["svc1", "svc2", "svc3"];

/// Jobs whose name starts with this wait between staging and publishing (the worker's test
/// hook), so that faults land in that window too.
pub const HOLD_PREFIX: &str = "hold-";

/// Messages that say a call was refused before it could take effect.
const REFUSED: &[&str] = &[
    "there is no dispatcher",
    "cannot connect to",
    "Connection refused",
    "already exists",
    "no linked service",
    "no node named",
    "not found",
];

/// The `shir` CLI as an administrator outside the machines runs it.
pub struct Cli {
    pub exe: PathBuf,
    pub admin_cert: PathBuf,
}

impl Cli {
    /// `shir ARGS --endpoint ENDPOINT --admin-cert FILE`: stdout, or how it failed.
    pub async fn call(&self, endpoint: &str, args: &[&str], input: Option<&str>) -> Result<String, history::Result> {
        let mut child = Command::new(&self.exe)
            .args(args)
            .arg("--endpoint")
            .arg(endpoint)
            .arg("--admin-cert")
            .arg(&self.admin_cert)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| history::Result::Failed(format!("cannot start shir: {e}")))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(text.as_bytes()).await;
        }
        let out = match tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output()).await {
            Err(_) => return Err(history::Result::Unknown(format!("no answer within {CALL_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(history::Result::Unknown(e.to_string())),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if REFUSED.iter().any(|r| message.contains(r)) {
            Err(history::Result::Failed(message))
        } else {
            Err(history::Result::Unknown(message))
        }
    }

    /// `call` with `--json`, parsed.
    pub async fn json(
        &self,
        endpoint: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<serde_json::Value, history::Result> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.call(endpoint, &all, input).await?;
        serde_json::from_str(&out).map_err(|e| history::Result::Unknown(format!("not JSON ({e}): {out}")))
    }
}

/// Which node each machine runs now (name, endpoint); the nemesis updates it when it
/// replaces a node.
#[derive(Default)]
pub struct Members {
    machines: Mutex<Vec<Option<(String, String)>>>,
}

impl Members {
    pub fn set(&self, machines: Vec<Option<(String, String)>>) {
        *self.machines.lock().unwrap() = machines;
    }
    pub fn list(&self) -> Vec<(String, String)> {
        self.machines.lock().unwrap().iter().flatten().cloned().collect()
    }
}

/// The job inputs: single files `in/fK.bin` and folders `in/dK/` of three files, with
/// their SHA-256.
pub struct Inputs {
    pub files: Vec<(String, String)>,
    pub folders: Vec<(String, Vec<(String, String)>)>,
}

/// What identifies an authentication key: a digest of its secret. The key's text also lists
/// member endpoints, which change with the membership while the key stays the same.
pub fn key_secret(text: &str) -> String {
    match shir::auth_key::AuthKey::parse(text) {
        Ok(key) => sha256(key.secret.expose()),
        Err(e) => format!("unreadable key: {e}"),
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes seeded random inputs under `share/in`.
pub fn write_inputs(share: &Path, seed: u64) -> std::io::Result<Inputs> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1b1b);
    let mut make = |rel: &str| -> std::io::Result<String> {
        let size = rng.gen_range(1..256 * 1024);
        let bytes: Vec<u8> = (0..size).map(|_| rng.r#gen()).collect();
        let path = share.join(rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, &bytes)?;
        Ok(sha256(&bytes))
    };
    let mut files = Vec::new();
    for k in 0..16 {
        let rel = format!("in/f{k}.bin");
        files.push((rel.clone(), make(&rel)?));
    }
    let mut folders = Vec::new();
    for k in 0..4 {
        let mut inside = Vec::new();
        for f in 0..3 {
            let name = format!("part{f}.bin");
            inside.push((name.clone(), make(&format!("in/d{k}/{name}"))?));
        }
        folders.push((format!("in/d{k}"), inside));
    }
    std::fs::create_dir_all(share.join("out"))?;
    Ok(Inputs { files, folders })
}

/// An http server on the bridge address that answers every GET `200 OK` and records the
/// basic-auth credentials it was sent.
pub struct CredentialProbe {
    pub url: String,
    heads: crate::common::Heads,
}

impl CredentialProbe {
    pub async fn start(ip: &str) -> std::io::Result<CredentialProbe> {
        let (address, heads) = crate::common::recording_http_server(ip).await?;
        Ok(CredentialProbe {
            url: format!("http://{address}/"),
            heads,
        })
    }

    /// The credentials received since the last call, emptied.
    pub fn take(&self) -> Vec<(String, String)> {
        let heads = std::mem::take(&mut *self.heads.lock().unwrap());
        heads.iter().filter_map(|head| basic_auth(head)).collect()
    }
}

fn basic_auth(head: &str) -> Option<(String, String)> {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization: basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(line["authorization: basic ".len()..].trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Everything a workload worker needs.
pub struct Workload {
    pub cli: Cli,
    pub members: Arc<Members>,
    pub history: Arc<History>,
    pub inputs: Inputs,
    pub probe_url: String,
    /// Services whose creation is known to have happened (from then on: updates).
    created: Mutex<BTreeMap<String, bool>>,
}

impl Workload {
    pub fn new(cli: Cli, members: Arc<Members>, history: Arc<History>, inputs: Inputs, probe_url: String) -> Self {
        Workload {
            cli,
            members,
            history,
            inputs,
            probe_url,
            created: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `f`'s call through the node `via`, and records it.
    async fn op<F, Fut>(
        &self,
        via: &(String, String),
        what: What,
        f: F,
    ) -> (u64, history::Result, Option<serde_json::Value>)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, history::Result>>,
    {
        let id = self.history.next_id();
        let start_ms = now_ms();
        let answer = f(via.1.clone()).await;
        let end_ms = now_ms();
        let (result, value) = match answer {
            Ok(v) => (history::Result::Ok, Some(v)),
            Err(r) => (r, None),
        };
        let what = complete(what, value.as_ref());
        self.history.record(Op {
            id,
            via: via.0.clone(),
            start_ms,
            end_ms,
            what,
            result: result.clone(),
        });
        (id, result, value)
    }

    /// One worker: random operations until `stop`.
    pub async fn run(self: Arc<Self>, seed: u64, stop: Arc<AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        while !stop.load(Ordering::Relaxed) {
            let members = self.members.list();
            if members.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let via = members[rng.gen_range(0..members.len())].clone();
            match rng.gen_range(0..100) {
                0..55 => self.submit(&via, &mut rng).await,
                55..70 => self.write_service(&via, &mut rng).await,
                70..85 => self.read_service(&via, &mut rng).await,
                85..95 => {
                    let target = members[rng.gen_range(0..members.len())].0.clone();
                    self.set_limit(&via, &target, rng.gen_range(1..=3)).await;
                }
                _ => self.regenerate_key(&via, &mut rng).await,
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
        }
    }

    pub async fn submit(&self, via: &(String, String), rng: &mut StdRng) {
        let n = self.history.next_id();
        let hold = if rng.gen_bool(0.25) { HOLD_PREFIX } else { "" };
        let name = format!("{hold}job{n}");
        let (source, sink, expected) = if rng.gen_bool(0.75) {
            let (rel, sha) = &self.inputs.files[rng.gen_range(0..self.inputs.files.len())];
            let sink = format!("out/{name}.bin");
            (format!("/{rel}"), sink.clone(), vec![(sink, sha.clone())])
        } else {
            let (rel, inside) = &self.inputs.folders[rng.gen_range(0..self.inputs.folders.len())];
            let sink = format!("out/{name}");
            let expected = inside
                .iter()
                .map(|(f, sha)| (format!("{sink}/{f}"), sha.clone()))
                .collect();
            (format!("/{rel}/"), format!("{sink}/"), expected)
        };
        let what = What::Submit {
            name: name.clone(),
            sink: sink.trim_end_matches('/').to_string(),
            expected,
            id: None,
        };
        let (source, sink_arg) = (format!("share:{source}"), format!("share:/{sink}"));
        self.op(via, what, |endpoint| async move {
            let args = [
                "job",
                "submit",
                "--source",
                &source,
                "--sink",
                &sink_arg,
                "--binary",
                "--name",
                &name,
                "--max-attempts",
                "20",
                "--retry-interval",
                "1",
            ];
            self.cli.json(&endpoint, &args, None).await
        })
        .await;
    }

    pub async fn write_service(&self, via: &(String, String), rng: &mut StdRng) {
        let service = SERVICES[rng.gen_range(0..SERVICES.len())].to_string();
        let name = service.clone();
        let n = self.history.next_id();
        let (user, password) = (format!("u{n}"), format!("pw-{n}-{:08x}", rng.r#gen::<u32>()));
        let create = !self.created.lock().unwrap().get(&service).copied().unwrap_or(false);
        let what = What::LinkedService {
            service: service.clone(),
            user: user.clone(),
            password: password.clone(),
            version: None,
        };
        let url = self.probe_url.clone();
        let input = format!("{password}\n");
        let (_, result, _) = self
            .op(via, what, |endpoint| async move {
                let mut args = vec!["linked-service"];
                if create {
                    args.extend([
                        "create",
                        &service,
                        "--type",
                        "http",
                        "--url",
                        &url,
                        "--set",
                        "insecure_http=true",
                    ]);
                } else {
                    args.extend(["update", &service]);
                }
                args.extend(["--user", &user, "--password-stdin"]);
                self.cli.json(&endpoint, &args, Some(&input)).await
            })
            .await;
        let exists = match &result {
            history::Result::Ok => true,
            history::Result::Failed(m) => m.contains("already exists"),
            history::Result::Unknown(_) => false,
        };
        if exists {
            self.created.lock().unwrap().insert(name, true);
        }
    }

    pub async fn read_service(&self, via: &(String, String), rng: &mut StdRng) {
        let service = SERVICES[rng.gen_range(0..SERVICES.len())].to_string();
        let what = What::ReadService {
            service: service.clone(),
            node: via.0.clone(),
            version: None,
            stale: false,
        };
        self.op(via, what, |endpoint| async move {
            self.cli
                .json(&endpoint, &["linked-service", "show", &service], None)
                .await
        })
        .await;
    }

    pub async fn set_limit(&self, via: &(String, String), node: &str, limit: u32) -> history::Result {
        let what = What::SetLimit {
            node: node.to_string(),
            limit,
        };
        let limit = limit.to_string();
        self.op(via, what, |endpoint| async move {
            self.cli
                .json(&endpoint, &["node", "set-limit", node, &limit], None)
                .await
        })
        .await
        .1
    }

    pub async fn regenerate_key(&self, via: &(String, String), rng: &mut StdRng) {
        let slot = if rng.gen_bool(0.5) { "key1" } else { "key2" };
        let what = What::KeyRegenerate {
            slot: slot.to_string(),
            key: None,
        };
        self.op(via, what, |endpoint| async move {
            self.cli.json(&endpoint, &["key", "regenerate", slot], None).await
        })
        .await;
    }

    /// `node remove NAME` through `via`, recorded.
    pub async fn remove_node(&self, via: &(String, String), name: &str) -> history::Result {
        let what = What::NodeRemove { node: name.to_string() };
        self.op(via, what, |endpoint| async move {
            self.cli.json(&endpoint, &["node", "remove", name], None).await
        })
        .await
        .1
    }
}

/// Fills in what the answer told about the operation (job id, version, key).
fn complete(what: What, answer: Option<&serde_json::Value>) -> What {
    let Some(v) = answer else { return what };
    match what {
        What::Submit {
            name, sink, expected, ..
        } => What::Submit {
            name,
            sink,
            expected,
            id: v["id"].as_str().map(str::to_string),
        },
        What::LinkedService {
            service,
            user,
            password,
            ..
        } => What::LinkedService {
            service,
            user,
            password,
            version: v["version"].as_u64(),
        },
        What::ReadService { service, node, .. } => What::ReadService {
            service,
            node,
            version: v["version"].as_u64(),
            stale: v["stale"].as_bool().unwrap_or(false),
        },
        What::KeyRegenerate { slot, .. } => What::KeyRegenerate {
            key: v[slot.as_str()].as_str().map(key_secret),
            slot,
        },
        other => other,
    }
}
