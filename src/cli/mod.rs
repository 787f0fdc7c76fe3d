//! The `shir` command line: one subcommand per operator action. Every command prints a
//! table or a line for people and `--json` for scripts, and on failure one line on stderr
//! and a non-zero exit.

pub mod backup;
pub mod bench;
pub mod client;
pub mod demo;
pub mod exit;
pub mod job;
pub mod linked_service;
pub mod local_ir;
pub mod output;
pub mod schedule;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::datadir::{DEFAULT_DATA_DIR, DataDir};
use crate::node::{self, provision};
use crate::proto;
use client::Target;

#[derive(Parser)]
#[command(
    name = "shir",
    version,
    about = "Self-hosted integration runtime: up to four nodes, one port (8060), Raft-elected dispatcher, mutual TLS.",
    after_help = concat!(
        "Start with `shir demo` to see a four-node runtime and a dispatcher failover on this machine.\n\n",
        "Exit statuses: 0 succeeded; 1 failed (a job that failed, or any other error); 2 bad usage; ",
        "3 this node was removed from the IR (shir run); 4 the job was cancelled (job wait); ",
        "5 still running when --timeout ran out (job wait); 6 no such job, schedule, linked service or node; ",
        "69 the node could not be reached or the IR has no dispatcher now (retry later)."
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new integration runtime with this machine as its first node.
    Init(InitArgs),
    /// Run the node (the host service; foreground, as systemd runs it).
    #[command(
        after_help = "Stops on SIGINT or SIGTERM. Exits with status 3 if the node was removed from the IR \
(`shir node remove`); supervisors should not restart it then."
    )]
    Run(RunArgs),
    /// Add this machine to an existing integration runtime with an authentication key.
    Register(RegisterArgs),
    /// Show the integration runtime, its dispatcher and every node.
    Status(StatusArgs),
    /// Show or regenerate the authentication keys (key1, key2).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage the nodes of the integration runtime.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Issue certificates for remote administration over port 8060.
    #[command(subcommand)]
    AdminCert(AdminCertCommand),
    /// Define connections to stores (PostgreSQL, file shares, HTTP) with encrypted credentials.
    #[command(subcommand)]
    LinkedService(linked_service::LinkedServiceCommand),
    /// Encrypt a credential with the IR's data key for use on another machine.
    #[command(subcommand)]
    Credential(linked_service::CredentialCommand),
    /// IR-wide settings (the HTTP proxy).
    #[command(subcommand)]
    Settings(linked_service::SettingsCommand),
    /// Copy jobs: submit, list, show, wait for, cancel.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Schedules: copies the IR runs by itself, on a cron expression, an interval or tumbling windows.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Back up this node's identity and the IR's keys, or restore a node from such a backup.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Start a four-node runtime on this machine (127.0.0.1-4), kill its dispatcher, and show the failover.
    Demo(demo::DemoArgs),
    /// Measure dispatcher failover time and committed writes per second on a local four-node runtime.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct NodeAddrArgs {
    /// This node's name (lowercase letters, digits, '-').
    #[arg(long)]
    name: String,
    /// IP:PORT to listen on; also the address other nodes dial unless --advertise is given.
    #[arg(long)]
    listen: String,
    /// HOST:PORT other nodes and clients dial, if different from --listen.
    #[arg(long)]
    advertise: Option<String>,
}

#[derive(Args)]
struct InitArgs {
    /// Directory for this node's identity and database (created, owner-only).
    #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    addr: NodeAddrArgs,
    /// Name of the integration runtime.
    #[arg(long)]
    ir_name: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RegisterArgs {
    /// Directory for this node's identity and database (must be empty or absent; created,
    /// owner-only, only once the IR has admitted the node).
    #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    addr: NodeAddrArgs,
    #[command(flatten)]
    key: AuthKeyArgs,
    #[arg(long)]
    json: bool,
}

/// Where a joining node's authentication key comes from. A key on the command line is seen
/// by every user of the machine (`ps`, /proc/PID/cmdline) for as long as the process runs,
/// so the file and the environment variable come first and the flag draws a warning.
#[derive(Args)]
struct AuthKeyArgs {
    /// File holding the authentication key (key1 or key2 from `shir key show` on a member),
    /// on its first line. The way to pass it: the key stays off the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "auth_key")]
    auth_key_file: Option<PathBuf>,
    /// The authentication key itself. Avoid: other users see it in `ps`; use
    /// --auth-key-file or the SHIR_AUTH_KEY environment variable.
    #[arg(long, env = "SHIR_AUTH_KEY", hide_env_values = true, value_name = "KEY")]
    auth_key: Option<String>,
}

impl AuthKeyArgs {
    fn given(&self) -> bool {
        self.auth_key_file.is_some() || self.auth_key.is_some()
    }

    /// The key, if one was given; warns when it came on the command line.
    fn read(&self) -> Result<Option<String>> {
        if let Some(path) = &self.auth_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow!("cannot read the authentication key from {}: {e}", path.display()))?;
            let key = text.lines().next().unwrap_or("").trim();
            if key.is_empty() {
                return Err(anyhow!(
                    "{} holds no authentication key (its first line is empty)",
                    path.display()
                ));
            }
            return Ok(Some(key.to_string()));
        }
        if self.auth_key.is_some() && on_command_line("--auth-key") {
            eprintln!(
                "warning: --auth-key puts the key on the command line, where every user of this machine can read it (ps, /proc); use --auth-key-file FILE or SHIR_AUTH_KEY"
            );
        }
        Ok(self.auth_key.clone())
    }

    fn required(&self) -> Result<String> {
        self.read()?
            .ok_or_else(|| anyhow!("no authentication key: pass --auth-key-file FILE or set SHIR_AUTH_KEY"))
    }
}

/// Whether `flag` (as `--flag VALUE` or `--flag=VALUE`) is among this process's arguments.
fn on_command_line(flag: &str) -> bool {
    std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    })
}

#[derive(Args)]
struct RunArgs {
    /// Directory holding this node's identity and database.
    #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// On first start only: register with this name (needs --listen and a key:
    /// --auth-key-file or SHIR_AUTH_KEY).
    #[arg(long, requires = "listen")]
    name: Option<String>,
    /// On first start only: IP:PORT to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// On first start only: HOST:PORT others dial.
    #[arg(long)]
    advertise: Option<String>,
    /// On first start only: the authentication key to register with.
    #[command(flatten)]
    key: AuthKeyArgs,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print key1 and key2.
    Show {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Replace a key; the old one stops admitting nodes at once. Registered nodes are unaffected.
    Regenerate {
        /// key1 or key2
        key: KeySlot,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeySlot {
    Key1,
    Key2,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Set how many jobs a node runs at once (0: back to its default from cores and memory).
    SetLimit {
        name: String,
        limit: u32,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from the IR and revoke its certificate.
    Remove {
        name: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCertCommand {
    /// Issue an admin certificate (with its key and the CA) into a new owner-only file.
    Issue {
        /// Name of the administrator (goes into the certificate).
        #[arg(long)]
        name: String,
        /// File to write; must not exist.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node runs on one thread: its work is many short steps handing off to each other
    // (TLS, gRPC, Raft, sled, whose flushes have threads of their own), and keeping them on
    // one thread saves the cross-thread wake-ups that otherwise cost more than the steps.
    // Measured with `shir bench`: a third more committed writes with 64 clients.
    let mut builder = match cli.command {
        Command::Run(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder.enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(exit::for_error(&e))
        }
    }
}

/// An error as one operator-readable line: the context chain, gRPC statuses by message.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(status) => status.message().to_string(),
            None => cause.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHIR_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,openraft=off,sled=warn,h2=warn,hyper=warn,tower=warn")
        });
    // Colour only for a person at a terminal; journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON renders"));
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Init(a) => {
            let addrs = provision::Addresses::new(&a.addr.listen, a.addr.advertise.as_deref())?;
            let dir = DataDir::new(&a.data_dir);
            let cfg = provision::init(&dir, &a.addr.name, &addrs, &a.ir_name).await?;
            if a.json {
                print_json(
                    &serde_json::json!({"ir_id": cfg.ir_id, "ir_name": cfg.ir_name, "node": cfg.name, "node_id": cfg.node_id, "address": cfg.advertise}),
                );
            } else {
                println!(
                    "created integration runtime '{}' ({}) with node '{}' at {}\nnext: shir run --data-dir {}",
                    cfg.ir_name,
                    cfg.ir_id,
                    cfg.name,
                    cfg.advertise,
                    a.data_dir.display()
                );
            }
            Ok(())
        }
        Command::Register(a) => {
            let addrs = provision::Addresses::new(&a.addr.listen, a.addr.advertise.as_deref())?;
            let dir = DataDir::new(&a.data_dir);
            let key = a.key.required()?;
            let cfg = provision::register(&dir, &a.addr.name, &addrs, &key).await?;
            if a.json {
                print_json(
                    &serde_json::json!({"ir_id": cfg.ir_id, "ir_name": cfg.ir_name, "node": cfg.name, "node_id": cfg.node_id, "address": cfg.advertise}),
                );
            } else {
                println!(
                    "registered node '{}' (id {}) in integration runtime '{}'\nnext: shir run --data-dir {}",
                    cfg.name,
                    cfg.node_id,
                    cfg.ir_name,
                    a.data_dir.display()
                );
            }
            Ok(())
        }
        Command::Run(a) => {
            init_logging(a.log_format);
            let dir = DataDir::new(&a.data_dir);
            if !dir.is_provisioned() {
                match (&a.name, &a.listen, a.key.read()?) {
                    (Some(name), Some(listen), Some(key)) => {
                        let addrs = provision::Addresses::new(listen, a.advertise.as_deref())?;
                        let cfg = provision::register(&dir, name, &addrs, &key).await?;
                        tracing::info!(node = %cfg.name, id = cfg.node_id, ir = %cfg.ir_name, "registered");
                    }
                    _ => {
                        return Err(anyhow!(
                            "{} holds no shir node; run `shir init` or `shir register` first, or pass --name, --listen and --auth-key-file (or SHIR_AUTH_KEY)",
                            a.data_dir.display()
                        ));
                    }
                }
            } else if a.key.given() {
                tracing::info!("this data dir already holds a registered node; --name/--listen/--auth-key are ignored");
            }
            node::run(dir).await
        }
        Command::Status(a) => {
            let reply = a
                .target
                .connect()
                .await?
                .status(proto::StatusRequest {})
                .await?
                .into_inner();
            if a.json {
                print_json(&output::status_json(&reply));
            } else {
                println!("{}", output::status_text(&reply));
            }
            Ok(())
        }
        Command::Key(KeyCommand::Show { target, json }) => {
            let keys = target
                .connect()
                .await?
                .key_show(proto::KeyShowRequest {})
                .await?
                .into_inner();
            print_keys(&keys, json);
            Ok(())
        }
        Command::Key(KeyCommand::Regenerate { key, target, json }) => {
            let slot = match key {
                KeySlot::Key1 => 1,
                KeySlot::Key2 => 2,
            };
            let keys = target
                .connect()
                .await?
                .key_regenerate(proto::KeyRegenerateRequest { slot })
                .await?
                .into_inner();
            if !json {
                println!("key{slot} regenerated; the old key{slot} no longer admits nodes.");
            }
            print_keys(&keys, json);
            Ok(())
        }
        Command::Node(NodeCommand::SetLimit {
            name,
            limit,
            target,
            json,
        }) => job::set_limit(name, limit, target, json).await,
        Command::Node(NodeCommand::Remove { name, target, json }) => {
            let reply = target
                .connect()
                .await?
                .node_remove(proto::NodeRemoveRequest { name: name.clone() })
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({"removed": name, "revoked_serial": reply.revoked_serial}));
            } else {
                println!(
                    "removed node '{name}'; its certificate (serial {}) is revoked on every node",
                    reply.revoked_serial
                );
            }
            Ok(())
        }
        Command::AdminCert(AdminCertCommand::Issue {
            name,
            out,
            target,
            json,
        }) => {
            if out.exists() {
                return Err(anyhow!("{} already exists; choose another --out", out.display()));
            }
            let (file, not_after) = client::request_admin_cert(&mut target.connect().await?, &name).await?;
            let expires = output::rfc3339_secs(not_after).unwrap_or_default();
            crate::secrets::write_private_file(
                &out,
                file.render(&format!("shir admin certificate for '{name}', expires {expires}"))
                    .as_bytes(),
            )
            .with_context(|| format!("cannot write {}", out.display()))?;
            if json {
                print_json(&serde_json::json!({"name": name, "file": out, "expires": expires}));
            } else {
                println!(
                    "wrote admin certificate for '{name}' to {} (expires {expires})",
                    out.display()
                );
                println!("use: shir status --endpoint HOST:PORT --admin-cert {}", out.display());
            }
            Ok(())
        }
        Command::Job(c) => job::run(c).await,
        Command::Schedule(c) => schedule::run(c).await,
        Command::LinkedService(c) => linked_service::run(c).await,
        Command::Credential(c) => linked_service::run_credential(c).await,
        Command::Settings(c) => linked_service::run_settings(c).await,
        Command::Backup(c) => backup::run(c).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Bench(a) => bench::run(a).await,
    }
}

fn print_keys(keys: &proto::KeyShowReply, json: bool) {
    if json {
        print_json(&serde_json::json!({"key1": keys.key1, "key2": keys.key2}));
    } else {
        println!("key1  {}\nkey2  {}", keys.key1, keys.key2);
    }
}
