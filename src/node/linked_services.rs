//! Operator calls on linked services, encrypted credentials and the proxy setting.
//!
//! Writes run on the dispatcher, which seals every secret value with the data key (bound
//! to the object's id, version and field) before proposing, so plaintext never enters the
//! log. Reads and connection tests run on the node called, after it has caught up with the
//! dispatcher (`admin::read_index`), and unseal only what a connector needs right then.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tonic::Status;

use super::handle::Node;
use crate::connectors::{self, ProxyConfig, ServiceSpec, ServiceType};
use crate::proto;
use crate::secrets::{self, SecretBytes, SecretString};
use crate::state::linked_service::{
    MAX_FIELD_BYTES, UnsealError, encrypted_credential_aad, proxy_aad, validate_service_name,
};
use crate::state::{Command, LinkedService, ProxySettings, Sealed};

/// Prefix of blobs made by `shir credential encrypt`; the number is the format version.
const CREDENTIAL_PREFIX: &str = "SHIRCRED1";

use crate::timing::LINKED_SERVICE_TEST_TIMEOUT as TEST_TIMEOUT;

fn invalid(why: impl Into<String>) -> Status {
    Status::invalid_argument(why.into())
}

/// Turns the operator's definition into its in-memory form, moving each secret into a
/// zeroizing buffer, and checks it against the type's schema.
fn spec_from_proto(spec: proto::LinkedServiceSpec) -> Result<ServiceSpec, Status> {
    let kind = ServiceType::parse(&spec.r#type).map_err(|e| invalid(e.to_string()))?;
    let spec = ServiceSpec {
        kind,
        fields: spec.fields.into_iter().collect(),
        secrets: spec
            .secrets
            .into_iter()
            .map(|(k, v)| (k, SecretString::new(v)))
            .collect(),
    };
    check(&spec)?;
    Ok(spec)
}

fn check(spec: &ServiceSpec) -> Result<(), Status> {
    let too_long = spec
        .fields
        .iter()
        .map(|(k, v)| (k, v.len()))
        .chain(spec.secrets.iter().map(|(k, v)| (k, v.expose().len())))
        .find(|(_, len)| *len > MAX_FIELD_BYTES);
    if let Some((field, len)) = too_long {
        return Err(invalid(format!(
            "field '{field}' is {len} bytes long; at most {MAX_FIELD_BYTES} are allowed"
        )));
    }
    connectors::validate(spec).map_err(|e| invalid(e.to_string()))
}

/// A sealed value that does not open here: the node's fault, not the caller's.
fn unsealing(e: UnsealError) -> Status {
    Status::internal(e.to_string())
}

fn info(node: &Node, s: &LinkedService, stale: bool) -> proto::LinkedServiceInfo {
    proto::LinkedServiceInfo {
        name: s.name.clone(),
        r#type: s.kind.to_string(),
        id: s.id.clone(),
        version: s.version,
        fields: s.fields.clone().into_iter().collect(),
        secret_fields: s.secrets.keys().cloned().collect(),
        created_at: s.created_at,
        updated_at: s.updated_at,
        answered_by: node.config.name.clone(),
        stale,
    }
}

fn lookup(node: &Node, name: &str) -> Result<LinkedService, Status> {
    node.read_state(|s| s.linked_services.get(name).cloned())
        .ok_or_else(|| Status::not_found(format!("no linked service named '{name}'")))
}

/// A dispatcher elected a moment ago may not have applied all its predecessor committed;
/// a write decided on such a state (a "no such service", a "proxy already clear") would be
/// wrong. Confirming leadership waits until this node has applied everything committed.
async fn up_to_date(node: &Node) -> Result<(), Status> {
    if node.confirm_leadership().await {
        Ok(())
    } else {
        Err(super::forward::no_dispatcher())
    }
}

/// `lookup` for a read that may be answering from a state no dispatcher confirmed: then a
/// "no such service" must say it may only be this node that does not know it yet.
fn lookup_read(node: &Node, name: &str, stale: bool) -> Result<LinkedService, Status> {
    lookup(node, name).map_err(|e| {
        if stale {
            Status::not_found(format!(
                "{} on node '{}', which could not confirm with a dispatcher that it is up to date",
                e.message(),
                node.config.name
            ))
        } else {
            e
        }
    })
}

fn new_id() -> String {
    hex::encode(SecretBytes::random(16).expose())
}

// ------------------------------------------------------------------ writes (dispatcher)

pub async fn create(node: &Node, req: proto::LinkedServiceCreateRequest) -> Result<proto::LinkedServiceInfo, Status> {
    up_to_date(node).await?;
    validate_service_name(&req.name).map_err(|e| invalid(e.to_string()))?;
    let ir = node.ir()?;
    let spec = match (req.spec, req.encrypted_credential.trim()) {
        (Some(_), blob) if !blob.is_empty() => {
            return Err(invalid("give the definition or an encrypted credential, not both"));
        }
        (None, "") => return Err(invalid("a linked service needs a definition (--type and its fields)")),
        (None, blob) => open_credential(node, &ir.id, blob)?,
        (Some(spec), _) => spec_from_proto(spec)?,
    };
    if node.read_state(|s| s.linked_services.contains_key(&req.name)) {
        return Err(Status::already_exists(format!(
            "a linked service named '{}' already exists",
            req.name
        )));
    }
    let id = new_id();
    let now = crate::unix_now();
    let service = LinkedService {
        secrets: LinkedService::seal_secrets(&node.data_key, &ir.id, &id, 1, &spec),
        id,
        name: req.name,
        kind: spec.kind,
        fields: spec.fields,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    node.propose(Command::PutLinkedService {
        service: service.clone(),
        previous_version: 0,
    })
    .await?;
    tracing::info!(linked_service = %service.name, kind = %service.kind, "linked service created");
    Ok(info(node, &service, false))
}

pub async fn update(node: &Node, req: proto::LinkedServiceUpdateRequest) -> Result<proto::LinkedServiceInfo, Status> {
    up_to_date(node).await?;
    let ir = node.ir()?;
    let current = lookup(node, &req.name)?;
    let blob = req.encrypted_credential.trim();
    let spec = if !blob.is_empty() {
        if req.changes.is_some() || !req.unset.is_empty() {
            return Err(invalid("give field changes or an encrypted credential, not both"));
        }
        // Replaces everything: the current secrets are not needed (nor must they open).
        let replacement = open_credential(node, &ir.id, blob)?;
        if replacement.kind != current.kind {
            return Err(invalid(format!(
                "linked service '{}' is of type {}, the credential is for {}; delete and create it to change its type",
                req.name, current.kind, replacement.kind
            )));
        }
        replacement
    } else {
        let changes = req.changes.unwrap_or_default();
        if changes.fields.is_empty() && changes.secrets.is_empty() && req.unset.is_empty() {
            return Err(invalid(
                "nothing to update: give fields to change, --unset, or a password",
            ));
        }
        if !changes.r#type.is_empty() && changes.r#type != current.kind.as_str() {
            return Err(invalid(format!(
                "linked service '{}' is of type {}; delete and create it to change its type",
                req.name, current.kind
            )));
        }
        // A kept secret must not follow the service to a new server: whoever may edit the
        // service could otherwise point it at their own and read the password off a test.
        let moved: Vec<&str> = connectors::fields_secrets_go_to(current.kind)
            .iter()
            .copied()
            .filter(|f| {
                req.unset.iter().any(|u| u == f)
                    || changes
                        .fields
                        .get(*f)
                        .is_some_and(|v| current.fields.get(*f) != Some(v))
            })
            .collect();
        let kept: Vec<&String> = current
            .secrets
            .keys()
            .filter(|k| !changes.secrets.contains_key(*k) && !req.unset.contains(k))
            .collect();
        if !moved.is_empty() && !kept.is_empty() {
            return Err(invalid(format!(
                "changing {} of '{}' sends its {} somewhere new: give it again (--password-stdin) or --unset it",
                moved.join(", "),
                req.name,
                kept.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut spec = current.unseal(&node.data_key, &ir.id).map_err(unsealing)?;
        for field in &req.unset {
            if changes.fields.contains_key(field) || changes.secrets.contains_key(field) {
                return Err(invalid(format!("field '{field}' is both set and unset")));
            }
            let removed = spec.fields.remove(field).is_some() | spec.secrets.remove(field).is_some();
            if !removed {
                return Err(invalid(format!("field '{field}' is not set on '{}'", req.name)));
            }
        }
        spec.fields.extend(changes.fields);
        spec.secrets
            .extend(changes.secrets.into_iter().map(|(k, v)| (k, SecretString::new(v))));
        spec
    };
    check(&spec)?;
    let version = current.version + 1;
    let service = LinkedService {
        secrets: LinkedService::seal_secrets(&node.data_key, &ir.id, &current.id, version, &spec),
        fields: spec.fields,
        version,
        updated_at: crate::unix_now(),
        ..current.clone()
    };
    node.propose(Command::PutLinkedService {
        service: service.clone(),
        previous_version: current.version,
    })
    .await?;
    tracing::info!(linked_service = %service.name, version, "linked service updated");
    Ok(info(node, &service, false))
}

pub async fn delete(
    node: &Node,
    req: proto::LinkedServiceDeleteRequest,
) -> Result<proto::LinkedServiceDeleteReply, Status> {
    up_to_date(node).await?;
    let current = lookup(node, &req.name)?;
    node.propose(Command::DeleteLinkedService {
        name: current.name.clone(),
        id: current.id.clone(),
    })
    .await?;
    tracing::info!(linked_service = %current.name, "linked service deleted");
    Ok(proto::LinkedServiceDeleteReply {
        name: current.name,
        version: current.version,
    })
}

pub async fn proxy_set(node: &Node, req: proto::ProxySetRequest) -> Result<proto::ProxyInfo, Status> {
    up_to_date(node).await?;
    let ir = node.ir()?;
    let address = req.address.trim();
    connectors::check_host(address).map_err(|why| invalid(format!("proxy address {why}")))?;
    let port = u16::try_from(req.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(format!("invalid proxy port {}: use 1-65535", req.port)))?;
    let password = SecretString::new(req.password);
    if req.user.is_empty() && !password.expose().is_empty() {
        return Err(invalid("a proxy password needs a proxy user (--user)"));
    }
    if password.expose().len() > MAX_FIELD_BYTES || req.user.len() > MAX_FIELD_BYTES {
        return Err(invalid(format!(
            "proxy user and password may be at most {MAX_FIELD_BYTES} bytes"
        )));
    }
    let version = node.read_state(|s| s.proxy_version) + 1;
    let settings = ProxySettings {
        address: address.to_string(),
        port,
        user: (!req.user.is_empty()).then_some(req.user),
        password: (!password.expose().is_empty()).then(|| {
            Sealed(secrets::seal(
                &node.data_key,
                proxy_aad(&ir.id, version).as_bytes(),
                password.expose().as_bytes(),
            ))
        }),
        version,
    };
    node.propose(Command::SetProxy {
        proxy: Some(settings.clone()),
        version,
    })
    .await?;
    tracing::info!(address = %settings.address, port, version, "proxy set");
    Ok(proxy_info(node, Some(&settings), version, false))
}

pub async fn proxy_clear(node: &Node) -> Result<proto::ProxyInfo, Status> {
    up_to_date(node).await?;
    let (configured, version) = node.read_state(|s| (s.proxy.is_some(), s.proxy_version));
    if !configured {
        return Ok(proxy_info(node, None, version, false));
    }
    node.propose(Command::SetProxy {
        proxy: None,
        version: version + 1,
    })
    .await?;
    tracing::info!(version = version + 1, "proxy cleared");
    Ok(proxy_info(node, None, version + 1, false))
}

// ------------------------------------------------------------------ reads (any node)

pub fn list(node: &Node, stale: bool) -> proto::LinkedServiceListReply {
    let services = node.read_state(|s| s.linked_services.values().map(|l| info(node, l, stale)).collect());
    proto::LinkedServiceListReply {
        services,
        answered_by: node.config.name.clone(),
        stale,
        applied_index: node.metrics().last_applied.map(|l| l.index).unwrap_or(0),
    }
}

pub fn show(node: &Node, name: &str, stale: bool) -> Result<proto::LinkedServiceInfo, Status> {
    Ok(info(node, &lookup_read(node, name, stale)?, stale))
}

pub fn proxy_show(node: &Node, stale: bool) -> proto::ProxyInfo {
    let (proxy, version) = node.read_state(|s| (s.proxy.clone(), s.proxy_version));
    proxy_info(node, proxy.as_ref(), version, stale)
}

fn proxy_info(node: &Node, proxy: Option<&ProxySettings>, version: u64, stale: bool) -> proto::ProxyInfo {
    let mut info = proto::ProxyInfo {
        version,
        answered_by: node.config.name.clone(),
        stale,
        ..Default::default()
    };
    if let Some(p) = proxy {
        info.configured = true;
        info.address = p.address.clone();
        info.port = u32::from(p.port);
        info.user = p.user.clone().unwrap_or_default();
        info.password_set = p.password.is_some();
    }
    info
}

/// The IR's proxy with its password unsealed, for a connector about to use it.
fn proxy_config(node: &Node, ir_id: &str) -> Result<Option<ProxyConfig>, Status> {
    node.read_state(|s| s.proxy.clone())
        .map(|p| p.unseal(&node.data_key, ir_id).map_err(unsealing))
        .transpose()
}

/// Connects to the store from this node with the credentials as this node decrypts them.
pub async fn test(node: &Node, name: &str, stale: bool) -> Result<proto::LinkedServiceTestReply, Status> {
    let ir = node.ir()?;
    let service = lookup_read(node, name, stale)?;
    let mut reply = proto::LinkedServiceTestReply {
        name: service.name.clone(),
        node: node.config.name.clone(),
        version: service.version,
        stale,
        ..Default::default()
    };
    let started = Instant::now();
    let prepared = service
        .unseal(&node.data_key, &ir.id)
        .map_err(unsealing)
        .and_then(|spec| Ok((spec, proxy_config(node, &ir.id)?)));
    let (spec, proxy) = match prepared {
        Ok(ready) => ready,
        Err(e) => {
            reply.message = e.message().to_string();
            return Ok(reply);
        }
    };
    reply.decrypted = true;
    let outcome = tokio::time::timeout(TEST_TIMEOUT, connectors::probe(&spec, proxy.as_ref()))
        .await
        .map_err(|_| format!("no answer within {} s", TEST_TIMEOUT.as_secs()))
        .and_then(|probed| probed.map_err(|e| e.to_string()));
    reply.elapsed_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(what) => {
            reply.ok = true;
            reply.message = what;
        }
        Err(why) => reply.message = why,
    }
    tracing::info!(linked_service = %name, ok = reply.ok, elapsed_ms = reply.elapsed_ms, "linked service tested");
    Ok(reply)
}

// ------------------------------------------------------------------ encrypted credentials

/// What an encrypted credential holds: a whole definition, secrets included.
#[derive(Serialize)]
struct CredentialOut<'a> {
    r#type: ServiceType,
    fields: &'a BTreeMap<String, String>,
    secrets: BTreeMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct CredentialIn {
    r#type: ServiceType,
    fields: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
}

/// Seals a definition into `SHIRCRED1.<ir id>.<sealed JSON>`: text an operator can keep in
/// a file and hand to `linked-service create`, which only this IR's nodes can open.
pub fn encrypt_credential(
    node: &Node,
    req: proto::CredentialEncryptRequest,
) -> Result<proto::CredentialEncryptReply, Status> {
    let ir = node.ir()?;
    let spec = spec_from_proto(req.spec.ok_or_else(|| invalid("a definition is required"))?)?;
    let body = CredentialOut {
        r#type: spec.kind,
        fields: &spec.fields,
        secrets: spec.secrets.iter().map(|(k, v)| (k.as_str(), v.expose())).collect(),
    };
    // Sized up front so the plaintext JSON is never copied by a reallocation that would
    // leave an unzeroized buffer behind.
    let text_len: usize = spec.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + spec
            .secrets
            .iter()
            .map(|(k, v)| k.len() + v.expose().len())
            .sum::<usize>();
    let room = 1024 + 6 * text_len;
    let mut plain = Vec::with_capacity(room);
    serde_json::to_writer(&mut plain, &body).map_err(|e| Status::internal(e.to_string()))?;
    let plain = SecretBytes::new(plain);
    let sealed = secrets::seal(
        &node.data_key,
        encrypted_credential_aad(&ir.id).as_bytes(),
        plain.expose(),
    );
    tracing::info!(kind = %spec.kind, "credential encrypted");
    Ok(proto::CredentialEncryptReply {
        blob: format!("{CREDENTIAL_PREFIX}.{}.{sealed}", ir.id),
        ir_id: ir.id,
        r#type: spec.kind.to_string(),
    })
}

fn open_credential(node: &Node, ir_id: &str, blob: &str) -> Result<ServiceSpec, Status> {
    let mut parts = blob.splitn(3, '.');
    let (Some(CREDENTIAL_PREFIX), Some(blob_ir), Some(sealed)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid(
            "not an encrypted credential (expected the SHIRCRED1.… text printed by `shir credential encrypt`)",
        ));
    };
    if blob_ir != ir_id {
        return Err(invalid(format!(
            "this credential was encrypted by integration runtime {blob_ir}, not by this one ({ir_id}); \
             encrypt it again against this IR"
        )));
    }
    let plain = secrets::open(&node.data_key, encrypted_credential_aad(ir_id).as_bytes(), sealed)
        .map_err(|_| invalid("the encrypted credential does not open: it was altered or truncated"))?;
    let body: CredentialIn = serde_json::from_slice(plain.expose())
        .map_err(|_| invalid("the encrypted credential holds no valid definition"))?;
    let spec = ServiceSpec {
        kind: body.r#type,
        fields: body.fields,
        secrets: body
            .secrets
            .into_iter()
            .map(|(k, v)| (k, SecretString::new(v)))
            .collect(),
    };
    check(&spec)?;
    Ok(spec)
}
