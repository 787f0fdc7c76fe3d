//! Sources and sinks a linked service can name, and what each needs to be reached.
//!
//! A linked service is a typed set of fields: plain ones (host, port, root, …) that live in
//! the replicated state as text, and secret ones (passwords) that are sealed with the IR's
//! data key before they are replicated. This module knows, per type, which fields exist,
//! which are required and which are secret ([`schema`]), checks a definition against that
//! ([`validate`]), and tries a connection from the node that runs it ([`probe`]).

mod error;
mod filesystem;
mod http;
pub(crate) mod objects;
pub(crate) mod postgres;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::error::{ProbeError, SpecError, UrlError, ValueError};
use crate::secrets::SecretString;

/// The kinds of store a linked service can point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// A PostgreSQL database (tokio-postgres).
    Postgres,
    /// A directory on the node (a local disk or a mounted share).
    Filesystem,
    /// An HTTP endpoint, reached through the IR's proxy when one is set.
    Http,
    /// An S3 bucket, or one of an S3-compatible store.
    S3,
    /// An Azure Blob Storage container (ADLS Gen2 accounts through their blob endpoint).
    #[serde(rename = "azure-blob")]
    AzureBlob,
    /// A Google Cloud Storage bucket.
    Gcs,
}

impl ServiceType {
    pub const ALL: [ServiceType; 6] = [
        ServiceType::Postgres,
        ServiceType::Filesystem,
        ServiceType::Http,
        ServiceType::S3,
        ServiceType::AzureBlob,
        ServiceType::Gcs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Postgres => "postgres",
            ServiceType::Filesystem => "filesystem",
            ServiceType::Http => "http",
            ServiceType::S3 => "s3",
            ServiceType::AzureBlob => "azure-blob",
            ServiceType::Gcs => "gcs",
        }
    }

    /// Whether datasets on it are files named by paths (a share, a bucket, a container).
    pub fn holds_files(self) -> bool {
        matches!(
            self,
            ServiceType::Filesystem | ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs
        )
    }

    /// Whether it is an object store (reached over HTTP, objects named by keys).
    pub fn is_object_store(self) -> bool {
        matches!(self, ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs)
    }

    /// Parses a type name as operators write it; the error lists the known types.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        Self::ALL.into_iter().find(|t| t.as_str() == text).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
            SpecError::UnknownType {
                given: text.to_owned(),
                known: known.join(", "),
            }
        })
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a field's value is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// A host name or an IP address, without a port.
    Host,
    /// 1–65535.
    Port,
    /// An absolute path.
    Path,
    /// An `http://` or `https://` URL.
    Url,
    /// `true` or `false`.
    Bool,
    /// A PostgreSQL schema name shir creates tables in.
    SchemaName,
}

/// One field of a linked-service type.
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub required: bool,
    /// Sealed with the data key before replication; never shown.
    pub secret: bool,
    pub kind: FieldKind,
    /// One line for `--help` and error messages.
    pub about: &'static str,
}

/// A linked service's definition in plaintext, as a connector needs it. Exists only in
/// memory, on the node that uses it; the secret values print as `***`.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub kind: ServiceType,
    pub fields: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretString>,
}

/// The IR's HTTP proxy, unsealed, for connectors that speak HTTP.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub address: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<SecretString>,
}

impl ServiceSpec {
    /// An empty definition of a type, to fill with [`with`](Self::with) and
    /// [`with_secret`](Self::with_secret).
    pub fn new(kind: ServiceType) -> Self {
        Self {
            kind,
            fields: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// Sets a plain field.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.fields.insert(name.to_owned(), value.into());
        self
    }

    /// Sets a secret field.
    pub fn with_secret(mut self, name: &str, value: impl Into<SecretString>) -> Self {
        self.secrets.insert(name.to_owned(), value.into());
        self
    }

    /// A plain field's value, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// A secret field's value, if given.
    pub fn get_secret(&self, name: &str) -> Option<&SecretString> {
        self.secrets.get(name)
    }
}

pub use crate::timing::PROBE_TIMEOUT;

/// The fields a type has.
pub fn schema(kind: ServiceType) -> &'static [FieldSpec] {
    match kind {
        ServiceType::Postgres => postgres::FIELDS,
        ServiceType::Filesystem => filesystem::FIELDS,
        ServiceType::Http => http::FIELDS,
        ServiceType::S3 => objects::S3_FIELDS,
        ServiceType::AzureBlob => objects::AZURE_FIELDS,
        ServiceType::Gcs => objects::GCS_FIELDS,
    }
}

/// Checks a definition against its type's schema: every required field present, no unknown
/// field, secret values only in secret fields, ports, paths and URLs well formed. The error
/// is one line naming the field; it never contains a secret value.
pub fn validate(spec: &ServiceSpec) -> Result<(), SpecError> {
    let kind = spec.kind;
    let fields = schema(kind);
    let find = |name: &str| fields.iter().find(|f| f.name == name);

    for name in spec.fields.keys().chain(spec.secrets.keys()) {
        if find(name).is_none() {
            let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
            return Err(SpecError::UnknownField {
                kind,
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }

    // Misplaced values first: a password typed as a plain field would otherwise be
    // replicated and shown in clear, so it is refused before anything looks at its value.
    for name in spec.fields.keys() {
        if find(name).is_some_and(|f| f.secret) {
            return Err(SpecError::SecretGivenPlain {
                kind,
                name: name.clone(),
            });
        }
    }
    for name in spec.secrets.keys() {
        if find(name).is_some_and(|f| !f.secret) {
            return Err(SpecError::PlainGivenSecret {
                kind,
                name: name.clone(),
            });
        }
    }

    for field in fields {
        let given = if field.secret {
            spec.secrets.get(field.name).map(|s| s.expose().is_empty())
        } else {
            spec.fields.get(field.name).map(|v| v.trim().is_empty())
        };
        match given {
            None if field.required => {
                return Err(SpecError::Missing {
                    kind,
                    name: field.name,
                    about: field.about,
                });
            }
            Some(true) => {
                return Err(SpecError::Empty { kind, name: field.name });
            }
            _ => {}
        }
    }

    for (name, value) in &spec.fields {
        let Some(field) = find(name) else { continue };
        // Every plain field is one line: a line break in a host or user name could smuggle a
        // header into an HTTP request or a second line into a log.
        if value.chars().any(char::is_control) {
            return Err(SpecError::ControlCharacter {
                kind,
                name: name.clone(),
            });
        }
        check_kind(field, value).map_err(|problem| SpecError::BadValue {
            kind,
            name: name.clone(),
            problem,
        })?;
    }

    match kind {
        ServiceType::Http => http::check(spec),
        ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs => objects::check(spec),
        ServiceType::Postgres | ServiceType::Filesystem => Ok(()),
    }
}

/// The value check of a field kind; the error completes "field 'x' …".
fn check_kind(field: &FieldSpec, value: &str) -> Result<(), ValueError> {
    match field.kind {
        FieldKind::Text => Ok(()),
        FieldKind::Host => check_host(value),
        FieldKind::Port => match parse_port(value) {
            Some(_) => Ok(()),
            None => Err(ValueError::NotAPort(value.to_owned())),
        },
        FieldKind::Path if Path::new(value).is_absolute() => Ok(()),
        FieldKind::Path => Err(ValueError::NotAbsolute(value.to_owned())),
        // The URL itself is not repeated: it may carry a token in its query.
        FieldKind::Url => http::Url::parse(value).map(|_| ()).map_err(ValueError::Url),
        FieldKind::Bool if value == "true" || value == "false" => Ok(()),
        FieldKind::Bool => Err(ValueError::NotABool(value.to_owned())),
        FieldKind::SchemaName if postgres::is_schema_name(value) => Ok(()),
        FieldKind::SchemaName => Err(ValueError::NotASchemaName(value.to_owned())),
    }
}

/// A host name or IP address as a connector dials it: no port (that has its own field),
/// no spaces; IPv6 literals with or without brackets. The error completes "field 'x' …".
pub fn check_host(value: &str) -> Result<(), ValueError> {
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if value.contains(':') {
        return Err(ValueError::HostWithPort(value.to_owned()));
    }
    let name_ok = !value.is_empty()
        && value.len() <= 253
        && !value.starts_with(['-', '.'])
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if name_ok {
        Ok(())
    } else {
        Err(ValueError::NotAHost(value.to_owned()))
    }
}

/// The plain fields that decide where a type's secrets are sent. Changing one of them
/// must come with the secrets again: otherwise whoever may edit a linked service could
/// point it at a server of their own and have a connection test hand it the password.
pub fn fields_secrets_go_to(kind: ServiceType) -> &'static [&'static str] {
    match kind {
        ServiceType::Postgres => &["host", "port", "user"],
        ServiceType::Http => &["url", "user"],
        // The signatures of S3 and Azure keys are not the keys, but a session token or a SAS
        // token travels as it is, and a GCS key's tokens go to the endpoint.
        ServiceType::S3 | ServiceType::Gcs => &["endpoint"],
        ServiceType::AzureBlob => &["endpoint", "account"],
        ServiceType::Filesystem => &[],
    }
}

/// A port as operators write it: decimal digits only (no sign, no spaces), 1–65535.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Connects to the store from this node and does the cheapest thing that proves the
/// definition works (log in, list the root, one request). Returns what was checked, or one
/// line saying why it failed; neither ever contains a secret value.
///
/// The definition is validated first. The whole probe is bounded by [`PROBE_TIMEOUT`].
/// `proxy` is used by the types that speak HTTP and ignored by the others.
pub async fn probe(spec: &ServiceSpec, proxy: Option<&ProxyConfig>) -> Result<String, ProbeError> {
    probe_within(spec, proxy, PROBE_TIMEOUT).await
}

async fn probe_within(spec: &ServiceSpec, proxy: Option<&ProxyConfig>, limit: Duration) -> Result<String, ProbeError> {
    validate(spec)?;
    let work = async {
        match spec.kind {
            ServiceType::Postgres => postgres::probe(spec, limit).await,
            ServiceType::Filesystem => filesystem::probe(spec).await,
            ServiceType::Http => http::probe(spec, proxy, None).await,
            ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs => objects::probe(spec, proxy).await,
        }
    };
    let outcome = match tokio::time::timeout(limit, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ProbeError::TimedOut {
            after: show_duration(limit),
            target: target(spec, proxy),
        }),
    };

    // The probes never format a secret into a message; this is the second line of defence,
    // for text that comes from elsewhere (a server's error, an OS error).
    let secrets: Vec<&str> = spec
        .secrets
        .values()
        .chain(proxy.and_then(|p| p.password.as_ref()))
        .map(SecretString::expose)
        .filter(|s| !s.is_empty())
        .collect();
    let clean = |text: &str| redact(&one_line(text), &secrets);
    outcome.map(|what| clean(&what)).map_err(|mut why| {
        for text in why.texts_mut() {
            *text = clean(text);
        }
        why
    })
}

/// What a probe talks to, for the timeout message.
fn target(spec: &ServiceSpec, proxy: Option<&ProxyConfig>) -> String {
    match spec.kind {
        ServiceType::Postgres => postgres::target(spec),
        ServiceType::Filesystem => filesystem::target(spec),
        ServiceType::Http => http::target(spec, proxy),
        ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs => objects::target(spec),
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Folds a multi-line message (PostgreSQL's DETAIL and HINT lines, say) into one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if out.contains(secret) {
            out = out.replace(secret, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "S3cr3t-never-shown";

    fn postgres() -> ServiceSpec {
        ServiceSpec::new(ServiceType::Postgres)
            .with("host", "db1.example")
            .with("port", "5433")
            .with("database", "sales")
            .with("user", "etl")
            .with_secret("password", SECRET)
    }

    fn http() -> ServiceSpec {
        ServiceSpec::new(ServiceType::Http)
            .with("url", "https://api.example/v1/ping")
            .with("user", "etl")
            .with_secret("password", SECRET)
    }

    /// Validates a definition that must fail; checks the error is one line, names `field`
    /// and holds no secret value.
    fn refused(spec: &ServiceSpec, field: &str) -> String {
        let err = validate(spec)
            .expect_err("the definition should be refused")
            .to_string();
        assert!(
            err.contains(&format!("'{field}'")),
            "error does not name field {field}: {err}"
        );
        assert!(!err.contains('\n'), "error is not one line: {err}");
        assert!(!err.contains(SECRET), "error shows a secret: {err}");
        err
    }

    #[test]
    fn state_schema_takes_plain_lowercase_schema_names() {
        for good in ["shir", "etl_state", "_x1", &"s".repeat(63)] {
            validate(&postgres().with("state_schema", good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "Shir",
            "etl-state",
            "1st",
            "pg_shir",
            "information_schema",
            "a b",
            "s\"x",
            &"s".repeat(64),
        ] {
            let err = refused(&postgres().with("state_schema", bad), "state_schema");
            assert!(err.contains("is not a schema name shir uses"), "{bad}: {err}");
        }
    }

    #[test]
    fn schema_lists_each_types_fields() {
        let names = |kind| schema(kind).iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(
            names(ServiceType::Postgres),
            ["host", "port", "database", "user", "password", "state_schema"]
        );
        assert_eq!(names(ServiceType::Filesystem), ["root"]);
        assert_eq!(names(ServiceType::Http), ["url", "user", "password", "insecure_http"]);
        assert_eq!(
            names(ServiceType::S3),
            [
                "bucket",
                "region",
                "endpoint",
                "path_style",
                "access_key_id",
                "secret_access_key",
                "session_token"
            ]
        );
        assert_eq!(
            names(ServiceType::AzureBlob),
            ["account", "container", "endpoint", "account_key", "sas_token"]
        );
        assert_eq!(names(ServiceType::Gcs), ["bucket", "endpoint", "service_account_key"]);
        let secret = [
            "password",
            "secret_access_key",
            "session_token",
            "account_key",
            "sas_token",
            "service_account_key",
        ];
        for kind in ServiceType::ALL {
            for field in schema(kind) {
                assert_eq!(field.secret, secret.contains(&field.name), "{kind}.{}", field.name);
            }
        }
    }

    #[test]
    fn validate_accepts_complete_and_minimal_definitions() {
        validate(&postgres()).unwrap();
        validate(&http()).unwrap();
        validate(&ServiceSpec::new(ServiceType::Filesystem).with("root", "/data/in")).unwrap();
        let minimal = ServiceSpec::new(ServiceType::Postgres)
            .with("host", "db1")
            .with("database", "sales")
            .with("user", "etl");
        validate(&minimal).unwrap();
        validate(&ServiceSpec::new(ServiceType::Http).with("url", "http://[::1]:8080")).unwrap();
        validate(&ServiceSpec::new(ServiceType::Http).with("url", "HTTP://host?q=1")).unwrap();
    }

    #[test]
    fn validate_requires_required_fields_non_empty() {
        let mut spec = postgres();
        spec.fields.remove("host");
        let err = refused(&spec, "host");
        assert!(err.contains("required"), "{err}");
        refused(&postgres().with("database", "  "), "database");
        refused(&ServiceSpec::new(ServiceType::Filesystem), "root");
        refused(&ServiceSpec::new(ServiceType::Http), "url");
        // An optional field that is given must still have a value.
        refused(&postgres().with("port", ""), "port");
        refused(&postgres().with_secret("password", ""), "password");
    }

    #[test]
    fn validate_rejects_unknown_fields_and_lists_the_types_fields() {
        let err = refused(&postgres().with("hots", "db2"), "hots");
        assert!(err.contains("host, port, database, user, password"), "{err}");
        let err = refused(&postgres().with_secret("token", SECRET), "token");
        assert!(err.contains("host, port, database, user, password"), "{err}");
        let err = refused(
            &ServiceSpec::new(ServiceType::Filesystem)
                .with("root", "/x")
                .with("host", "a"),
            "host",
        );
        assert!(err.contains("(its fields: root)"), "{err}");
    }

    #[test]
    fn validate_rejects_secret_given_as_plain_field() {
        let mut spec = postgres();
        spec.secrets.clear();
        let spec = spec.with("password", SECRET);
        let err = refused(&spec, "password");
        assert!(err.contains("is secret"), "{err}");
        let mut spec = http();
        spec.secrets.clear();
        refused(&spec.with("password", SECRET), "password");
    }

    #[test]
    fn validate_rejects_plain_field_given_as_secret() {
        let mut spec = postgres();
        spec.fields.remove("user");
        let err = refused(&spec.with_secret("user", SECRET), "user");
        assert!(err.contains("not secret"), "{err}");
        // Both ways at once: still refused, still without the value.
        refused(&postgres().with_secret("host", SECRET), "host");
    }

    #[test]
    fn validate_checks_ports() {
        for good in ["1", "5432", "65535", "0080"] {
            validate(&postgres().with("port", good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["0", "65536", "99999999999", "-1", "+5432", " 5432", "5432x", "x"] {
            let err = refused(&postgres().with("port", bad), "port");
            assert!(err.contains("1-65535"), "{bad}: {err}");
        }
        assert_eq!(parse_port("443"), Some(443));
        assert_eq!(parse_port("0"), None);
    }

    #[test]
    fn validate_checks_paths_are_absolute() {
        let fs = |root: &str| ServiceSpec::new(ServiceType::Filesystem).with("root", root);
        validate(&fs("/")).unwrap();
        validate(&fs("/mnt/share/in")).unwrap();
        for bad in ["data/in", "./in", "~/in"] {
            let err = refused(&fs(bad), "root");
            assert!(err.contains("absolute"), "{bad}: {err}");
        }
    }

    #[test]
    fn validate_checks_urls() {
        for (bad, why) in [
            ("ftp://host/", "http:// or https://"),
            ("host.example/path", "http:// or https://"),
            ("http://", "no host"),
            ("http:///path", "no host"),
            ("http://:8080/", "no host"),
            ("http://host:0/", "port"),
            ("http://host:70000/", "port"),
            ("http://host:80x/", "port"),
            ("http://[::1/", "'['"),
            ("http://[zz::1]/", "IPv6"),
            ("http://host/a b", "spaces"),
            ("http://hôst/", "non-ASCII"),
        ] {
            let err = refused(&http().with("url", bad), "url");
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn validate_refuses_credentials_inside_a_url_without_repeating_them() {
        let err = refused(&http().with("url", format!("https://etl:{SECRET}@api.example/")), "url");
        assert!(err.contains("'user' and 'password'"), "{err}");
        // A URL's query may hold a token: errors about a URL never repeat it.
        let err = refused(
            &http().with("url", format!("https://api.example:0/?sig={SECRET}")),
            "url",
        );
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn validate_rejects_control_characters_in_plain_fields() {
        let err = refused(&postgres().with("host", "db1\r\nX-Injected: yes"), "host");
        assert!(err.contains("control character"), "{err}");
        refused(&http().with("user", "etl\n"), "user");
    }

    #[test]
    fn validate_http_basic_credentials_rules() {
        let err = refused(&http().with("user", "dom:etl"), "user");
        assert!(err.contains("':'"), "{err}");
        let mut spec = http();
        spec.fields.remove("user");
        refused(&spec, "password");
        let mut spec = http();
        spec.secrets.clear();
        validate(&spec).unwrap();
    }

    #[test]
    fn validate_errors_never_contain_secret_values() {
        // Every way to get a definition wrong, each with the secret somewhere in it.
        let mut no_user = postgres();
        no_user.fields.remove("user");
        let cases = [
            no_user,
            postgres().with("port", "0"),
            postgres().with("bogus", "x"),
            postgres().with_secret("bogus", SECRET),
            postgres().with_secret("user", SECRET),
            postgres().with("password", SECRET),
            http().with("url", format!("https://u:{SECRET}@h/")),
            http().with("url", format!("gopher://h/{SECRET}")),
            http().with("url", format!("http://h:1{SECRET}/")),
            http().with("url", format!("http://h/{SECRET} x")),
            http().with("user", "a:b"),
        ];
        for spec in &cases {
            let err = validate(spec).expect_err("should be refused").to_string();
            assert!(!err.contains(SECRET), "{err}");
            assert!(!err.contains("S3cr3t"), "{err}");
        }
    }

    #[tokio::test]
    async fn probe_validates_before_connecting() {
        let err = probe(&postgres().with("port", "0"), None).await.unwrap_err();
        assert!(
            matches!(&err, ProbeError::Spec(SpecError::BadValue { name, problem: ValueError::NotAPort(_), .. }) if name == "port"),
            "{err:?}"
        );
        assert!(err.to_string().contains("'port'"), "{err}");
    }

    #[test]
    fn messages_are_folded_to_one_line_and_redacted() {
        assert_eq!(
            one_line("db error: FATAL: no\nDETAIL: why\r\n\nHINT: fix"),
            "db error: FATAL: no; DETAIL: why; HINT: fix"
        );
        assert_eq!(redact("user a pw hunter2!", &["hunter2"]), "user a pw ***!");
        assert_eq!(show_duration(Duration::from_secs(10)), "10 s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250 ms");
    }

    #[test]
    fn hosts_carry_no_port() {
        for good in ["db1", "db1.corp.local", "10.0.0.5", "::1", "[fe80::1]", "my_host"] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in ["db:5432", "proxy:3128", "", "-", "a b", ".x", "x/y"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert!(
            check_host("db:5432")
                .unwrap_err()
                .to_string()
                .contains("without a port")
        );
        let spec = ServiceSpec::new(ServiceType::Postgres)
            .with("host", "db:5432")
            .with("database", "d")
            .with("user", "u");
        assert!(validate(&spec).unwrap_err().to_string().contains("'host'"));
    }
}
