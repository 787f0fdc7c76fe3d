//! What can go wrong with a linked service: a definition refused ([`SpecError`]) or a
//! connection test that failed ([`ProbeError`]).
//!
//! Each variant names what was being done and with what; its text is the one line an
//! operator reads. No variant holds a secret: definitions are refused by field name, and
//! text that comes from elsewhere (an OS error, a server's message) is redacted by
//! [`probe`](super::probe) before it leaves the module.

use thiserror::Error;

use super::ServiceType;

/// A linked-service definition that does not fit its type's schema.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("unknown linked-service type '{given}' (known: {known})")]
    UnknownType { given: String, known: String },
    #[error("{kind} linked service: unknown field '{name}' (its fields: {known})")]
    UnknownField {
        kind: ServiceType,
        name: String,
        known: String,
    },
    #[error("{kind} linked service: field '{name}' is secret: give it as a secret, not as a plain field")]
    SecretGivenPlain { kind: ServiceType, name: String },
    #[error("{kind} linked service: field '{name}' is not secret: give it as a plain field")]
    PlainGivenSecret { kind: ServiceType, name: String },
    #[error("{kind} linked service: field '{name}' is required ({about})")]
    Missing {
        kind: ServiceType,
        name: &'static str,
        about: &'static str,
    },
    #[error("{kind} linked service: field '{name}' is empty (leave it out if it is optional)")]
    Empty { kind: ServiceType, name: &'static str },
    #[error("{kind} linked service: field '{name}' contains a control character")]
    ControlCharacter { kind: ServiceType, name: String },
    #[error("{kind} linked service: field '{name}' {problem}")]
    BadValue {
        kind: ServiceType,
        name: String,
        problem: ValueError,
    },
    #[error("http linked service: field 'user' must not contain ':' (HTTP Basic authentication cannot carry it)")]
    ColonInHttpUser,
    #[error("http linked service: field 'password' is given without field 'user'")]
    HttpPasswordWithoutUser,
    #[error("http linked service: field 'insecure_http' is true or false, not '{given}'")]
    InsecureHttpNotBool { given: String },
    #[error(
        "http linked service: a password is sent only over https:// (over http:// it crosses the \
         network in clear); use an https:// URL, or set insecure_http=true to accept that"
    )]
    PasswordOverPlainHttp,
    #[error("azure-blob linked service: give one of the secrets account_key or sas_token, not both")]
    AzureCredential,
    #[error("gcs linked service: field 'service_account_key' is not a service account's JSON key: {why}")]
    NotAServiceAccountKey { why: &'static str },
}

/// What is wrong with one field's value; the text completes "field 'x' …".
#[derive(Debug, Error)]
pub enum ValueError {
    #[error("is not a port number (1-65535): '{0}'")]
    NotAPort(String),
    #[error("must be an absolute path: '{0}'")]
    NotAbsolute(String),
    #[error("must be a host name or IP address without a port (give the port separately): '{0}'")]
    HostWithPort(String),
    #[error("is not a host name or IP address: '{0}'")]
    NotAHost(String),
    #[error("is true or false, not '{0}'")]
    NotABool(String),
    #[error(
        "is not a schema name shir uses: '{0}' (lowercase letters, digits and _, starting with a letter or _, not pg_, at most 63 characters)"
    )]
    NotASchemaName(String),
    #[error(transparent)]
    Url(#[from] UrlError),
}

/// What is wrong with a URL. The URL itself is never repeated: its query may carry a token.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    #[error("must be a URL starting with http:// or https://")]
    NoScheme,
    #[error("must start with http:// or https://")]
    UnknownScheme,
    #[error("must not contain spaces or control characters")]
    SpaceOrControl,
    #[error("must not carry a user or password: give them as the fields 'user' and 'password'")]
    Credentials,
    #[error("has an unclosed '[' in its host")]
    UnclosedBracket,
    #[error("has an invalid IPv6 address")]
    BadIpv6,
    #[error("has something other than a port after its host")]
    JunkAfterHost,
    #[error("has no host")]
    NoHost,
    #[error("has a host with non-ASCII characters: write it in its xn-- form")]
    NonAsciiHost,
    #[error("has an invalid port (1-65535)")]
    BadPort,
}

/// Why a connection test failed. Fields named `detail` hold text from elsewhere (the OS,
/// a TLS library, the server), folded to one line and redacted by the probe.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("gave up after {after}: no answer from {target}")]
    TimedOut { after: String, target: String },

    #[error("{dir} does not exist on this node")]
    DirMissing { dir: String },
    #[error("cannot read {dir}: {detail}")]
    DirUnreadable { dir: String, detail: String },
    #[error("{dir} is not a directory")]
    NotADir { dir: String },
    #[error("cannot list {dir}: {detail}")]
    DirUnlistable { dir: String, detail: String },
    #[error("{dir} is readable and writable, but the probe file {file} could not be removed: {detail}")]
    ProbeFileLeft { dir: String, file: String, detail: String },
    #[error("the filesystem probe did not finish: {detail}")]
    FilesystemTaskLost { detail: String },

    /// The login failed; the text is [`ConnectFailure`](super::postgres::ConnectFailure)'s.
    #[error("{detail}")]
    PostgresConnect { detail: String },
    #[error("logged in, but a query failed on PostgreSQL at {at} as {user} to database {database}: {detail}")]
    PostgresQuery {
        at: String,
        user: String,
        database: String,
        detail: String,
    },

    #[error("cannot reach {peer}: {detail}")]
    Unreachable { peer: String, detail: String },
    #[error("cannot reach proxy {proxy}: {detail}")]
    ProxyUnreachable { proxy: String, detail: String },
    #[error("lost the connection to proxy {proxy}: {detail}")]
    ProxyLost { proxy: String, detail: String },
    #[error("proxy {proxy} refused CONNECT {authority}: {status}{hint}")]
    ProxyRefusedTunnel {
        proxy: String,
        authority: String,
        status: String,
        hint: &'static str,
    },
    #[error("proxy {proxy} sent data after its CONNECT answer")]
    ProxyDataAfterTunnel { proxy: String },
    #[error("no trusted root certificates found on this node{detail}")]
    NoTrustedRoots { detail: String },
    #[error("cannot set up TLS: {detail}")]
    TlsSetup { detail: String },
    #[error("http linked service: the host of field 'url' is not a valid TLS server name")]
    NotATlsName,
    #[error("TLS with {peer} failed: {detail}")]
    Tls { peer: String, detail: String },
    #[error("lost the connection to {peer}: {detail}")]
    Lost { peer: String, detail: String },
    /// An answer that is not a usable HTTP response head.
    #[error("{detail}")]
    BadResponse { detail: String },
    /// An object store refused or could not be reached; `detail` names it and says why.
    #[error("{detail}")]
    ObjectStore { detail: String },
    /// The server answered with a status that is not success; `hint` says what to check.
    #[error("{request}: {status}{hint}")]
    Refused {
        request: String,
        status: String,
        hint: &'static str,
    },
}

impl ProbeError {
    /// Every text the error holds, to fold and redact in place.
    pub(super) fn texts_mut(&mut self) -> Vec<&mut String> {
        use ProbeError::*;
        match self {
            Spec(_) | NotATlsName => vec![],
            TimedOut { after, target } => vec![after, target],
            DirMissing { dir } | NotADir { dir } => vec![dir],
            DirUnreadable { dir, detail } | DirUnlistable { dir, detail } => vec![dir, detail],
            ProbeFileLeft { dir, file, detail } => vec![dir, file, detail],
            FilesystemTaskLost { detail } | PostgresConnect { detail } | BadResponse { detail } => vec![detail],
            ObjectStore { detail } => vec![detail],
            NoTrustedRoots { detail } | TlsSetup { detail } => vec![detail],
            PostgresQuery {
                at,
                user,
                database,
                detail,
            } => vec![at, user, database, detail],
            Unreachable { peer, detail } | Tls { peer, detail } | Lost { peer, detail } => vec![peer, detail],
            ProxyUnreachable { proxy, detail } | ProxyLost { proxy, detail } => vec![proxy, detail],
            ProxyRefusedTunnel {
                proxy,
                authority,
                status,
                ..
            } => vec![proxy, authority, status],
            ProxyDataAfterTunnel { proxy } => vec![proxy],
            Refused { request, status, .. } => vec![request, status],
        }
    }
}
