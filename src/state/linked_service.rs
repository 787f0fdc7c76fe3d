//! Linked services and IR-wide settings as the replicated state holds them: plain fields as
//! text, secret fields sealed with the IR's data key. The dispatcher seals before proposing,
//! so the Raft log, snapshots and sled only ever see ciphertext; a node unseals a service
//! ([`LinkedService::unseal`]) or the proxy ([`ProxySettings::unseal`]) only when a connector
//! is about to use it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CommandResult, IrState, Sealed};
use crate::connectors::{ProxyConfig, ServiceSpec, ServiceType};
use crate::secrets::{self, DataKey, SecretString, SecretsError};

/// Longest value a plain or secret field may have: definitions travel to every node in
/// every snapshot, and no host name, path, URL or password needs more.
pub const MAX_FIELD_BYTES: usize = 4096;

/// A linked service: a named, typed connection definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedService {
    /// Random, chosen at creation; a service deleted and created again under the same name
    /// gets a new id, so its old sealed values cannot be swapped in.
    pub id: String,
    pub name: String,
    pub kind: ServiceType,
    pub fields: BTreeMap<String, String>,
    /// Each sealed with [`linked_service_aad`] of this id and version.
    pub secrets: BTreeMap<String, Sealed>,
    /// 1 at creation, +1 with every update.
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The IR's HTTP proxy (ADF's "custom proxy"), used by connectors that speak HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySettings {
    pub address: String,
    pub port: u16,
    pub user: Option<String>,
    /// Sealed with [`proxy_aad`] of this version.
    pub password: Option<Sealed>,
    pub version: u64,
}

/// A sealed value that does not open on this node. The line names the field, never a value.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("secret field '{field}' of linked service '{service}' does not open on this node: {cause}")]
    Field {
        service: String,
        field: String,
        cause: SecretsError,
    },
    #[error("secret field '{field}' is not UTF-8")]
    FieldNotText { field: String },
    #[error("the proxy password does not open on this node: {0}")]
    ProxyPassword(SecretsError),
    #[error("the proxy password is not UTF-8")]
    ProxyPasswordNotText,
}

impl LinkedService {
    /// Seals every secret of `spec` for version `version` of the service `id` of IR `ir_id`.
    pub fn seal_secrets(
        key: &DataKey,
        ir_id: &str,
        id: &str,
        version: u64,
        spec: &ServiceSpec,
    ) -> BTreeMap<String, Sealed> {
        spec.secrets
            .iter()
            .map(|(field, value)| {
                let aad = linked_service_aad(ir_id, id, version, field);
                let sealed = secrets::seal(key, aad.as_bytes(), value.expose().as_bytes());
                (field.clone(), Sealed(sealed))
            })
            .collect()
    }

    /// The plaintext definition, for a connector or a re-seal; the secrets open only with the
    /// data key of IR `ir_id`, for this service's id and version.
    pub fn unseal(&self, key: &DataKey, ir_id: &str) -> Result<ServiceSpec, UnsealError> {
        let mut secrets = BTreeMap::new();
        for (field, sealed) in &self.secrets {
            let aad = linked_service_aad(ir_id, &self.id, self.version, field);
            let bytes = secrets::open(key, aad.as_bytes(), &sealed.0).map_err(|cause| UnsealError::Field {
                service: self.name.clone(),
                field: field.clone(),
                cause,
            })?;
            let text = SecretString::from_secret_bytes(bytes)
                .map_err(|_| UnsealError::FieldNotText { field: field.clone() })?;
            secrets.insert(field.clone(), text);
        }
        Ok(ServiceSpec {
            kind: self.kind,
            fields: self.fields.clone(),
            secrets,
        })
    }
}

impl ProxySettings {
    /// The proxy with its password unsealed, for a connector about to use it.
    pub fn unseal(&self, key: &DataKey, ir_id: &str) -> Result<ProxyConfig, UnsealError> {
        let password = match &self.password {
            Some(sealed) => {
                let bytes = secrets::open(key, proxy_aad(ir_id, self.version).as_bytes(), &sealed.0)
                    .map_err(UnsealError::ProxyPassword)?;
                Some(SecretString::from_secret_bytes(bytes).map_err(|_| UnsealError::ProxyPasswordNotText)?)
            }
            None => None,
        };
        Ok(ProxyConfig {
            address: self.address.clone(),
            port: self.port,
            user: self.user.clone(),
            password,
        })
    }
}

/// Associated data of a linked service's secret field: the IR, the object's id and version
/// and the field. A sealed value moved to another service, field or version does not open.
pub fn linked_service_aad(ir_id: &str, id: &str, version: u64, field: &str) -> String {
    format!("{ir_id}/linked-service/{id}/v{version}/{field}")
}

/// Associated data of the proxy password.
pub fn proxy_aad(ir_id: &str, version: u64) -> String {
    format!("{ir_id}/proxy/v{version}/password")
}

/// Associated data of a blob made by `shir credential encrypt`: it opens only in this IR.
pub fn encrypted_credential_aad(ir_id: &str) -> String {
    format!("{ir_id}/encrypted-credential")
}

/// A linked-service name outside what job definitions, tables and URLs take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid linked-service name '{0}': use 1-80 letters, digits, '_', '-' or '.', starting with a letter or digit"
)]
pub struct InvalidServiceName(String);

/// Linked-service names appear in job definitions, tables and URLs: 1–80 letters, digits,
/// '_', '-' or '.', starting with a letter or digit.
pub fn validate_service_name(name: &str) -> Result<(), InvalidServiceName> {
    let ok = !name.is_empty()
        && name.len() <= 80
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(InvalidServiceName(name.to_string()))
    }
}

impl IrState {
    /// Creates (`previous_version` 0) or replaces (`previous_version` = the version the
    /// dispatcher read) a linked service. Refused if another write got there first.
    pub(super) fn put_linked_service(&mut self, service: &LinkedService, previous_version: u64) -> CommandResult {
        let current = self.linked_services.get(&service.name);
        match (previous_version, current) {
            (0, Some(_)) => {
                return CommandResult::refused(format!("a linked service named '{}' already exists", service.name));
            }
            (0, None) => {}
            (_, None) => {
                return CommandResult::refused(format!("linked service '{}' was deleted meanwhile", service.name));
            }
            (previous, Some(current)) if current.id != service.id || current.version != previous => {
                return CommandResult::refused(format!(
                    "linked service '{}' was changed meanwhile (now version {}); run the update again",
                    service.name, current.version
                ));
            }
            _ => {}
        }
        if previous_version.checked_add(1) != Some(service.version) {
            return CommandResult::refused(format!(
                "version {} does not follow version {previous_version}",
                service.version
            ));
        }
        self.linked_services.insert(service.name.clone(), service.clone());
        CommandResult::Ok
    }

    pub(super) fn delete_linked_service(&mut self, name: &str, id: &str) -> CommandResult {
        let users: Vec<&str> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_final() && j.spec.services().any(|s| s == name))
            .map(|j| j.id.as_str())
            .collect();
        if !users.is_empty() {
            return CommandResult::refused(format!(
                "linked service '{name}' is used by {} queued or running job(s) ({}); cancel them or let them finish first",
                users.len(),
                users.join(", ")
            ));
        }
        match self.linked_services.get(name) {
            Some(s) if s.id == id => {
                self.linked_services.remove(name);
                CommandResult::Ok
            }
            Some(_) => CommandResult::refused(format!("linked service '{name}' was replaced meanwhile")),
            None => CommandResult::refused(format!("no linked service named '{name}'")),
        }
    }

    pub(super) fn set_proxy(&mut self, proxy: &Option<ProxySettings>, version: u64) -> CommandResult {
        if version != self.proxy_version + 1 {
            return CommandResult::refused("the proxy settings were changed meanwhile; run the command again");
        }
        if let Some(p) = proxy
            && p.version != version
        {
            return CommandResult::refused("proxy settings carry the wrong version");
        }
        self.proxy = proxy.clone();
        self.proxy_version = version;
        CommandResult::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn service(version: u64, id: &str) -> LinkedService {
        LinkedService {
            id: id.into(),
            name: "warehouse".into(),
            kind: ServiceType::Postgres,
            fields: BTreeMap::from([("host".into(), "db".into())]),
            secrets: BTreeMap::from([("password".into(), Sealed("c2VhbGVk".into()))]),
            version,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn put(state: &mut IrState, s: LinkedService, previous_version: u64) -> CommandResult {
        state.apply(&Command::PutLinkedService {
            service: s,
            previous_version,
        })
    }

    #[test]
    fn versions_follow_each_other_and_stale_writes_are_refused() {
        let mut state = IrState::default();
        assert_eq!(put(&mut state, service(1, "a"), 0), CommandResult::Ok);
        assert!(
            matches!(put(&mut state, service(1, "a"), 0), CommandResult::Rejected(m) if m.to_string().contains("already exists"))
        );
        assert_eq!(put(&mut state, service(2, "a"), 1), CommandResult::Ok);
        // A second writer that read version 1 loses.
        assert!(
            matches!(put(&mut state, service(2, "a"), 1), CommandResult::Rejected(m) if m.to_string().contains("now version 2"))
        );
        // Skipping a version is refused.
        assert!(matches!(
            put(&mut state, service(4, "a"), 2),
            CommandResult::Rejected(_)
        ));
        assert_eq!(state.linked_services["warehouse"].version, 2);
    }

    #[test]
    fn a_recreated_service_is_not_the_old_one() {
        let mut state = IrState::default();
        put(&mut state, service(1, "a"), 0);
        let deleted = state.apply(&Command::DeleteLinkedService {
            name: "warehouse".into(),
            id: "a".into(),
        });
        assert_eq!(deleted, CommandResult::Ok);
        put(&mut state, service(1, "b"), 0);
        // An update prepared against the deleted service (id "a") must not apply to "b".
        assert!(matches!(
            put(&mut state, service(2, "a"), 1),
            CommandResult::Rejected(_)
        ));
        let stale_delete = state.apply(&Command::DeleteLinkedService {
            name: "warehouse".into(),
            id: "a".into(),
        });
        assert!(matches!(stale_delete, CommandResult::Rejected(_)));
    }

    #[test]
    fn a_service_that_takes_a_queued_jobs_rejected_rows_is_not_deleted() {
        use crate::job_spec::{BadRows, CsvOptions, DatasetRef, Format, JobSpec, Location};
        let mut state = IrState::default();
        put(&mut state, service(1, "a"), 0);
        let dataset = |path: &str| DatasetRef {
            service: "share".into(),
            location: Location::Path(path.into()),
            format: Format::Csv(CsvOptions::default()),
        };
        let spec = JobSpec {
            name: String::new(),
            source: dataset("in.csv"),
            sink: dataset("out.csv"),
            retry: Default::default(),
            stall_timeout_ms: crate::job_spec::DEFAULT_STALL_TIMEOUT_MS,
            if_exists: Default::default(),
            create_table: false,
            mapping: Default::default(),
            bad_rows: Some(BadRows {
                service: "warehouse".into(),
                folder: "errors".into(),
            }),
        };
        let job = crate::state::jobs::Job::queued("j1".into(), spec, 0);
        assert_eq!(state.apply(&Command::SubmitJob { job }), CommandResult::Ok);
        let refused = state.apply(&Command::DeleteLinkedService {
            name: "warehouse".into(),
            id: "a".into(),
        });
        assert!(
            matches!(&refused, CommandResult::Rejected(m) if m.to_string().contains("is used by 1 queued or running job(s) (j1)")),
            "{refused:?}"
        );
    }

    #[test]
    fn proxy_versions_only_grow() {
        let mut state = IrState::default();
        let proxy = |version| ProxySettings {
            address: "proxy".into(),
            port: 3128,
            user: None,
            password: None,
            version,
        };
        let set = |state: &mut IrState, p: Option<ProxySettings>, version| {
            state.apply(&Command::SetProxy { proxy: p, version })
        };
        assert_eq!(set(&mut state, Some(proxy(1)), 1), CommandResult::Ok);
        assert_eq!(set(&mut state, None, 2), CommandResult::Ok);
        assert!(state.proxy.is_none());
        assert!(matches!(set(&mut state, Some(proxy(1)), 1), CommandResult::Rejected(_)));
        assert_eq!(set(&mut state, Some(proxy(3)), 3), CommandResult::Ok);
    }

    #[test]
    fn service_names() {
        assert!(validate_service_name("warehouse_01.eu-west").is_ok());
        for bad in ["", "-x", "a b", "ü", &"x".repeat(81)] {
            assert!(validate_service_name(bad).is_err(), "{bad}");
        }
    }
}
