//! `shir linked-service`, `shir credential` and `shir settings`: connection definitions
//! with encrypted credentials, and IR-wide settings. Secrets are read from standard input
//! (never from the command line, where `ps` and shell history would keep them).

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::Target;
use super::output::{rfc3339_secs, table};
use super::print_json;
use crate::connectors::{self, ServiceType};
use crate::proto;
use crate::secrets::SecretString;

#[derive(Subcommand)]
pub enum LinkedServiceCommand {
    /// Define a connection to a store; secret fields are encrypted before they are replicated.
    #[command(
        after_help = "Types and their fields:\n  postgres    --host, --database, --user [--port 5432] [--password-stdin] [--set state_schema=NAME (where shir keeps NAME.job_commits; default shir)]\n  \
filesystem  --root (an absolute path on every node)\n  http        --url [--user] [--password-stdin] (uses `shir settings proxy`; a password needs an https:// URL, \
or --set insecure_http=true)\n  \
s3          --set bucket=, region=, access_key_id= [endpoint=, path_style=true|false] --secret-stdin secret_access_key [--secret-file session_token=F]\n  \
azure-blob  --set account=, container= [endpoint=] --secret-stdin account_key (or sas_token)\n  \
gcs         --set bucket= [endpoint=] --secret-file service_account_key=sa.json\n\n\
Object stores are reached through `shir settings proxy` when one is set.\n\n\
Examples:\n  echo \"$PW\" | shir linked-service create warehouse --type postgres --host db --database sales --user etl --password-stdin\n  \
echo \"$SECRET\" | shir linked-service create lake --type s3 --set bucket=raw --set region=eu-west-1 --set access_key_id=AKIA... --secret-stdin secret_access_key"
    )]
    Create {
        /// Name of the linked service.
        name: String,
        /// postgres, filesystem, http, s3, azure-blob or gcs (not needed with --encrypted-credential).
        #[arg(long = "type", value_name = "TYPE", required_unless_present = "encrypted_credential")]
        kind: Option<String>,
        #[command(flatten)]
        fields: FieldArgs,
        /// Take the whole definition from a file written by `shir credential encrypt` ("-" for stdin).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "password_stdin"])]
        encrypted_credential: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Change fields of a linked service (the others keep their values); its version goes up by one.
    #[command(
        after_help = "Fields by type as for `create` (see `shir linked-service create --help`).\n\
Changing where a password goes (postgres host, port or user; http url or user) needs the password again \
(--password-stdin) or --unset password, so that a stored password never follows a service to a new server."
    )]
    Update {
        /// Name of the linked service.
        name: String,
        #[command(flatten)]
        fields: FieldArgs,
        /// Remove an optional field, e.g. --unset password (repeatable).
        #[arg(long, value_name = "FIELD")]
        unset: Vec<String>,
        /// Replace the whole definition with one from `shir credential encrypt` ("-" for stdin).
        #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
        encrypted_credential: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List linked services: names, types and versions (never secrets).
    List {
        #[command(flatten)]
        target: Target,
        /// Print a JSON array of objects with name, type, version, fields and secret_fields.
        #[arg(long)]
        json: bool,
    },
    /// Show one linked service; secret fields print as ***.
    Show {
        /// Name of the linked service.
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Connect to the store from the node this command talks to, with the credentials as it decrypts them.
    Test {
        /// Name of the linked service.
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Delete a linked service.
    Delete {
        /// Name of the linked service.
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Encrypt a definition with the IR's data key, on the node this command talks to, into a
    /// blob only this IR can open; give it to `linked-service create --encrypted-credential`.
    #[command(
        after_help = "With --endpoint and --admin-cert the secret crosses only the TLS connection to the node; \
the blob can then be stored or passed on without exposing it."
    )]
    Encrypt {
        /// postgres, filesystem or http.
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        #[command(flatten)]
        fields: FieldArgs,
        /// Write the blob to this new owner-only file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SettingsCommand {
    /// The HTTP proxy connectors that speak HTTP go through.
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// How many finished jobs the IR keeps, and for how long.
    #[command(subcommand)]
    JobHistory(super::job::JobHistoryCommand),
}

#[derive(Subcommand)]
pub enum ProxyCommand {
    /// Set the proxy, replacing the previous one whole (give --user and --password-stdin again to keep
    /// authentication); the password is encrypted before it is replicated.
    Set {
        /// Proxy host name or IP address.
        #[arg(long)]
        address: String,
        /// Proxy port (1-65535).
        #[arg(long)]
        port: u32,
        /// User for proxy authentication (Basic).
        #[arg(long)]
        user: Option<String>,
        /// Read the proxy password from standard input (first line).
        #[arg(long, requires = "user")]
        password_stdin: bool,
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show the proxy; the password prints as ***.
    Show {
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove the proxy: connectors connect directly.
    Clear {
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// The fields of a definition, as flags. Which apply depends on the type.
#[derive(Args, Default)]
pub struct FieldArgs {
    /// postgres: server host name or IP address.
    #[arg(long)]
    host: Option<String>,
    /// postgres: server port (default 5432).
    #[arg(long)]
    port: Option<String>,
    /// postgres: database name.
    #[arg(long)]
    database: Option<String>,
    /// postgres, http: user name.
    #[arg(long)]
    user: Option<String>,
    /// filesystem: absolute path of the root directory.
    #[arg(long)]
    root: Option<String>,
    /// http: the URL (http:// or https://).
    #[arg(long)]
    url: Option<String>,
    /// Any field by name, NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Read the password from standard input (first line).
    #[arg(long)]
    password_stdin: bool,
    /// Read the secret field FIELD from standard input (first line), e.g. --secret-stdin secret_access_key.
    #[arg(long, value_name = "FIELD", conflicts_with = "password_stdin")]
    secret_stdin: Option<String>,
    /// Read the secret field FIELD from the file PATH, whole (a key file, a PEM certificate); repeatable.
    #[arg(long = "secret-file", value_name = "FIELD=PATH")]
    secret_file: Vec<String>,
}

/// Whether `name` is a secret field of some type: its value must not come on a command line,
/// where every user of the machine can read it.
fn is_secret_field(name: &str) -> bool {
    ServiceType::ALL
        .iter()
        .any(|kind| connectors::schema(*kind).iter().any(|f| f.secret && f.name == name))
}

impl FieldArgs {
    /// The definition these flags give; reads the password from stdin if asked to.
    fn into_spec(self, kind: &str) -> Result<proto::LinkedServiceSpec> {
        let mut fields: HashMap<String, String> = HashMap::new();
        let named = [
            ("host", self.host),
            ("port", self.port),
            ("database", self.database),
            ("user", self.user),
            ("root", self.root),
            ("url", self.url),
        ];
        for (name, value) in named {
            if let Some(v) = value {
                fields.insert(name.to_string(), v);
            }
        }
        for pair in self.set {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("--set takes NAME=VALUE, got '{pair}'"))?;
            if name == "password" {
                bail!("give the password with --password-stdin, not on the command line");
            }
            if is_secret_field(name) {
                bail!(
                    "field '{name}' is secret: give it with --secret-stdin {name} or --secret-file {name}=PATH, not on the command line"
                );
            }
            fields.insert(name.to_string(), value.to_string());
        }
        let mut secrets = HashMap::new();
        if self.password_stdin {
            let password = read_secret_stdin("password")?;
            secrets.insert("password".to_string(), password.expose().to_string());
        }
        if let Some(name) = self.secret_stdin {
            let value = read_secret_stdin(&name)?;
            secrets.insert(name, value.expose().to_string());
        }
        for pair in self.secret_file {
            let (name, path) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("--secret-file takes FIELD=PATH, got '{pair}'"))?;
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read --secret-file {name}={path}"))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.is_empty() {
                bail!("--secret-file {name}={path}: the file is empty");
            }
            if secrets.insert(name.to_string(), text.to_string()).is_some() {
                bail!("secret field '{name}' is given twice");
            }
        }
        Ok(proto::LinkedServiceSpec {
            r#type: kind.to_string(),
            fields,
            secrets,
        })
    }
}

/// Reads a secret from standard input: its first line, without the line end. At a terminal
/// it asks for it and turns echo off while it is typed.
pub fn read_secret_stdin(what: &str) -> Result<SecretString> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprint!("{what}: ");
        let _echo_off = EchoOff::new();
        stdin.read_line(&mut text).context("cannot read standard input")?;
        eprintln!();
    } else {
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    }
    let secret = SecretString::new(text);
    let first_line = secret.expose().lines().next().unwrap_or("");
    if first_line.is_empty() {
        bail!("no {what} on standard input");
    }
    Ok(SecretString::new(first_line.to_string()))
}

/// Terminal echo off until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: termios is plain data; tcgetattr fills it or fails, and we only restore
        // what it returned.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return EchoOff(None);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &quiet);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the attributes tcgetattr returned.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

fn read_credential_file(path: &PathBuf) -> Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Ok(text.trim().to_string())
}

fn service_json(s: &proto::LinkedServiceInfo) -> Value {
    let mut fields: serde_json::Map<String, Value> = s.fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    for secret in &s.secret_fields {
        fields.insert(secret.clone(), json!("***"));
    }
    json!({
        "name": s.name,
        "type": s.r#type,
        "version": s.version,
        "id": s.id,
        "fields": fields,
        "secret_fields": s.secret_fields,
        "created_at": rfc3339_secs(s.created_at),
        "updated_at": rfc3339_secs(s.updated_at),
        "answered_by": s.answered_by,
        "stale": s.stale,
    })
}

fn service_text(s: &proto::LinkedServiceInfo) -> String {
    let mut rows = vec![
        vec!["name".to_string(), s.name.clone()],
        vec!["type".to_string(), s.r#type.clone()],
        vec!["version".to_string(), s.version.to_string()],
    ];
    let mut fields: Vec<(String, String)> = s.fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    fields.extend(s.secret_fields.iter().map(|k| (k.clone(), "***".to_string())));
    fields.sort();
    rows.extend(fields.into_iter().map(|(k, v)| vec![k, v]));
    rows.push(vec!["id".into(), s.id.clone()]);
    rows.push(vec!["updated".into(), rfc3339_secs(s.updated_at).unwrap_or_default()]);
    table(&["FIELD", "VALUE"], &rows)
}

fn warn_if_stale(stale: bool, node: &str) {
    if stale {
        eprintln!(
            "warning: no dispatcher could confirm this answer; it is node '{node}''s own view and may miss recent changes"
        );
    }
}

pub async fn run(command: LinkedServiceCommand) -> Result<()> {
    match command {
        LinkedServiceCommand::Create {
            name,
            kind,
            fields,
            encrypted_credential,
            target,
            json,
        } => {
            let request = match encrypted_credential {
                Some(path) => {
                    if fields.any_given() {
                        bail!("--encrypted-credential holds the whole definition; give no field flags with it");
                    }
                    proto::LinkedServiceCreateRequest {
                        name,
                        spec: None,
                        encrypted_credential: read_credential_file(&path)?,
                    }
                }
                None => proto::LinkedServiceCreateRequest {
                    name,
                    spec: Some(fields.into_spec(kind.as_deref().unwrap_or_default())?),
                    encrypted_credential: String::new(),
                },
            };
            let info = target
                .connect()
                .await?
                .linked_service_create(request)
                .await?
                .into_inner();
            if json {
                print_json(&service_json(&info));
            } else {
                println!(
                    "created linked service '{}' ({}, version {})",
                    info.name, info.r#type, info.version
                );
            }
        }
        LinkedServiceCommand::Update {
            name,
            fields,
            unset,
            encrypted_credential,
            target,
            json,
        } => {
            let request = match encrypted_credential {
                Some(path) => {
                    if fields.any_given() || !unset.is_empty() {
                        bail!("--encrypted-credential replaces the whole definition; give no field flags with it");
                    }
                    proto::LinkedServiceUpdateRequest {
                        name,
                        encrypted_credential: read_credential_file(&path)?,
                        ..Default::default()
                    }
                }
                None => proto::LinkedServiceUpdateRequest {
                    name,
                    changes: Some(fields.into_spec("")?),
                    unset,
                    encrypted_credential: String::new(),
                },
            };
            let info = target
                .connect()
                .await?
                .linked_service_update(request)
                .await?
                .into_inner();
            if json {
                print_json(&service_json(&info));
            } else {
                println!("updated linked service '{}' (now version {})", info.name, info.version);
            }
        }
        LinkedServiceCommand::List { target, json } => {
            let reply = target
                .connect()
                .await?
                .linked_service_list(proto::LinkedServiceListRequest {})
                .await?
                .into_inner();
            warn_if_stale(reply.stale, &reply.answered_by);
            if json {
                print_json(&Value::Array(reply.services.iter().map(service_json).collect()));
            } else if reply.services.is_empty() {
                println!("no linked services");
            } else {
                let rows: Vec<Vec<String>> = reply
                    .services
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.r#type.clone(),
                            s.version.to_string(),
                            rfc3339_secs(s.updated_at).unwrap_or_default(),
                        ]
                    })
                    .collect();
                println!("{}", table(&["NAME", "TYPE", "VERSION", "UPDATED"], &rows));
            }
        }
        LinkedServiceCommand::Show { name, target, json } => {
            let info = target
                .connect()
                .await?
                .linked_service_show(proto::LinkedServiceShowRequest { name })
                .await?
                .into_inner();
            warn_if_stale(info.stale, &info.answered_by);
            if json {
                print_json(&service_json(&info));
            } else {
                println!("{}", service_text(&info));
            }
        }
        LinkedServiceCommand::Test { name, target, json } => {
            let r = target
                .connect()
                .await?
                .linked_service_test(proto::LinkedServiceTestRequest { name })
                .await?
                .into_inner();
            warn_if_stale(r.stale, &r.node);
            if json {
                print_json(&json!({
                    "name": r.name, "node": r.node, "version": r.version, "decrypted": r.decrypted,
                    "ok": r.ok, "message": r.message, "elapsed_ms": r.elapsed_ms, "stale": r.stale,
                }));
            } else if r.ok {
                println!(
                    "linked service '{}' (version {}) works from node '{}': {} ({} ms)",
                    r.name, r.version, r.node, r.message, r.elapsed_ms
                );
            }
            if !r.ok {
                bail!(
                    "linked service '{}' (version {}) failed from node '{}': {}",
                    r.name,
                    r.version,
                    r.node,
                    r.message
                );
            }
        }
        LinkedServiceCommand::Delete { name, target, json } => {
            let reply = target
                .connect()
                .await?
                .linked_service_delete(proto::LinkedServiceDeleteRequest { name })
                .await?
                .into_inner();
            if json {
                print_json(&json!({"deleted": reply.name, "version": reply.version}));
            } else {
                println!(
                    "deleted linked service '{}' (was version {})",
                    reply.name, reply.version
                );
            }
        }
    }
    Ok(())
}

impl FieldArgs {
    fn any_given(&self) -> bool {
        [
            &self.host,
            &self.port,
            &self.database,
            &self.user,
            &self.root,
            &self.url,
        ]
        .iter()
        .any(|f| f.is_some())
            || !self.set.is_empty()
            || self.password_stdin
            || self.secret_stdin.is_some()
            || !self.secret_file.is_empty()
    }
}

pub async fn run_credential(command: CredentialCommand) -> Result<()> {
    let CredentialCommand::Encrypt {
        kind,
        fields,
        out,
        target,
        json,
    } = command;
    if let Some(path) = &out
        && path.exists()
    {
        bail!("{} already exists; choose another --out", path.display());
    }
    let spec = fields.into_spec(&kind)?;
    let reply = target
        .connect()
        .await?
        .credential_encrypt(proto::CredentialEncryptRequest { spec: Some(spec) })
        .await?
        .into_inner();
    match &out {
        Some(path) => {
            crate::secrets::write_private_file(path, format!("{}\n", reply.blob).as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            if json {
                print_json(&json!({"file": path, "ir_id": reply.ir_id, "type": reply.r#type}));
            } else {
                println!(
                    "wrote an encrypted {} credential for IR {} to {}",
                    reply.r#type,
                    reply.ir_id,
                    path.display()
                );
            }
        }
        None if json => print_json(&json!({"blob": reply.blob, "ir_id": reply.ir_id, "type": reply.r#type})),
        None => println!("{}", reply.blob),
    }
    Ok(())
}

fn proxy_json(p: &proto::ProxyInfo) -> Value {
    if !p.configured {
        return json!({"configured": false, "version": p.version, "answered_by": p.answered_by, "stale": p.stale});
    }
    json!({
        "configured": true,
        "address": p.address,
        "port": p.port,
        "user": (!p.user.is_empty()).then_some(&p.user),
        "password": p.password_set.then_some("***"),
        "version": p.version,
        "answered_by": p.answered_by,
        "stale": p.stale,
    })
}

fn proxy_text(p: &proto::ProxyInfo) -> String {
    if !p.configured {
        return "no proxy: connectors connect directly".into();
    }
    let mut rows = vec![
        vec!["address".to_string(), p.address.clone()],
        vec!["port".to_string(), p.port.to_string()],
    ];
    if !p.user.is_empty() {
        rows.push(vec!["user".into(), p.user.clone()]);
    }
    if p.password_set {
        rows.push(vec!["password".into(), "***".into()]);
    }
    rows.push(vec!["version".into(), p.version.to_string()]);
    table(&["SETTING", "VALUE"], &rows)
}

pub async fn run_settings(command: SettingsCommand) -> Result<()> {
    let command = match command {
        SettingsCommand::Proxy(command) => command,
        SettingsCommand::JobHistory(command) => return super::job::run_job_history(command).await,
    };
    let (reply, json, verb) = match command {
        ProxyCommand::Set {
            address,
            port,
            user,
            password_stdin,
            target,
            json,
        } => {
            let password = if password_stdin {
                read_secret_stdin("proxy password")?
            } else {
                SecretString::default()
            };
            let request = proto::ProxySetRequest {
                address,
                port,
                user: user.unwrap_or_default(),
                password: password.expose().to_string(),
            };
            (
                target.connect().await?.proxy_set(request).await?.into_inner(),
                json,
                "set",
            )
        }
        ProxyCommand::Show { target, json } => (
            target
                .connect()
                .await?
                .proxy_show(proto::ProxyShowRequest {})
                .await?
                .into_inner(),
            json,
            "show",
        ),
        ProxyCommand::Clear { target, json } => (
            target
                .connect()
                .await?
                .proxy_clear(proto::ProxyClearRequest {})
                .await?
                .into_inner(),
            json,
            "clear",
        ),
    };
    warn_if_stale(reply.stale, &reply.answered_by);
    if json {
        print_json(&proxy_json(&reply));
    } else {
        match verb {
            "set" => println!(
                "proxy set to {}:{} (version {})",
                reply.address, reply.port, reply.version
            ),
            "clear" => println!("proxy cleared; connectors connect directly"),
            _ => println!("{}", proxy_text(&reply)),
        }
    }
    Ok(())
}
