//! Object-store linked services: S3 (and S3-compatible stores), Azure Blob Storage and
//! Google Cloud Storage, through the Arrow project's `object_store` client.
//!
//! This module knows each type's fields, checks what one field cannot say alone (Azure
//! needs exactly one of an account key and a SAS token; a GCS key must be a service
//! account's JSON key), opens a client for a definition ([`open`]) and probes it by listing
//! the top of the bucket or container. The client never reads the environment or instance
//! metadata for credentials: a linked service is used with its own, on whichever node runs it.
//!
//! Every call goes through the IR's proxy when one is set. TLS is rustls with ring, the one
//! provider in the tree; reqwest, under object_store, takes it as the process default
//! ([`install_crypto`]).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::{FieldKind, FieldSpec, ProbeError, ProxyConfig, ServiceSpec, ServiceType, SpecError};
use crate::secrets::SecretString;

pub(super) const S3_FIELDS: &[FieldSpec] = &[
    field("bucket", true, false, FieldKind::Text, "the bucket"),
    field(
        "region",
        true,
        false,
        FieldKind::Text,
        "the bucket's region, e.g. eu-west-1",
    ),
    field(
        "endpoint",
        false,
        false,
        FieldKind::Url,
        "an S3-compatible store's URL (MinIO, Ceph, ...); default: AWS",
    ),
    field(
        "path_style",
        false,
        false,
        FieldKind::Bool,
        "true: the bucket goes in the path, not the host name (S3-compatible stores; the default with an endpoint)",
    ),
    field("access_key_id", true, false, FieldKind::Text, "the access key's id"),
    field(
        "secret_access_key",
        true,
        true,
        FieldKind::Text,
        "the access key's secret",
    ),
    field(
        "session_token",
        false,
        true,
        FieldKind::Text,
        "a temporary credential's session token",
    ),
];

pub(super) const AZURE_FIELDS: &[FieldSpec] = &[
    field("account", true, false, FieldKind::Text, "the storage account"),
    field("container", true, false, FieldKind::Text, "the blob container"),
    field(
        "endpoint",
        false,
        false,
        FieldKind::Url,
        "the account's blob URL, for emulators and sovereign clouds; default https://ACCOUNT.blob.core.windows.net",
    ),
    field(
        "account_key",
        false,
        true,
        FieldKind::Text,
        "the account's access key (or give sas_token)",
    ),
    field(
        "sas_token",
        false,
        true,
        FieldKind::Text,
        "a shared access signature (or give account_key)",
    ),
];

pub(super) const GCS_FIELDS: &[FieldSpec] = &[
    field("bucket", true, false, FieldKind::Text, "the bucket"),
    field(
        "endpoint",
        false,
        false,
        FieldKind::Url,
        "the storage API's URL, for emulators; default https://storage.googleapis.com",
    ),
    field(
        "service_account_key",
        true,
        true,
        FieldKind::Text,
        "the service account's JSON key (--secret-file service_account_key=sa.json)",
    ),
];

const fn field(name: &'static str, required: bool, secret: bool, kind: FieldKind, about: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        required,
        secret,
        kind,
        about,
    }
}

/// Transient errors (429, 5xx, a reset connection) are retried inside a call this many
/// times, with backoff, before the attempt hears of them.
const MAX_RETRIES: usize = 5;

/// How long all retries of one call may take.
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Connecting to a store: its region is far away, but a connect that takes this long is not
/// going to work.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one field cannot check alone.
pub(super) fn check(spec: &ServiceSpec) -> Result<(), SpecError> {
    match spec.kind {
        ServiceType::AzureBlob => {
            let key = spec.get_secret("account_key").is_some();
            let sas = spec.get_secret("sas_token").is_some();
            if key == sas {
                return Err(SpecError::AzureCredential);
            }
            Ok(())
        }
        ServiceType::Gcs => match spec.get_secret("service_account_key") {
            Some(key) => check_service_account_key(key),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// A GCS key must be a service account's JSON key file; the error never repeats its content.
fn check_service_account_key(key: &SecretString) -> Result<(), SpecError> {
    let parsed: serde_json::Value =
        serde_json::from_str(key.expose()).map_err(|_| SpecError::NotAServiceAccountKey { why: "it is not JSON" })?;
    if parsed["type"].as_str() != Some("service_account") {
        return Err(SpecError::NotAServiceAccountKey {
            why: "its \"type\" is not \"service_account\"",
        });
    }
    for needed in ["client_email", "private_key"] {
        if parsed[needed].as_str().is_none_or(str::is_empty) {
            return Err(SpecError::NotAServiceAccountKey {
                why: if needed == "client_email" {
                    "it has no \"client_email\""
                } else {
                    "it has no \"private_key\""
                },
            });
        }
    }
    Ok(())
}

/// What a probe or copy talks to, for messages: never a secret.
pub(super) fn target(spec: &ServiceSpec) -> String {
    let get = |name| spec.get(name).unwrap_or_default();
    match spec.kind {
        ServiceType::S3 => match spec.get("endpoint") {
            Some(endpoint) => format!("bucket {} at {endpoint}", get("bucket")),
            None => format!("S3 bucket {} in {}", get("bucket"), get("region")),
        },
        ServiceType::AzureBlob => format!("container {} of account {}", get("container"), get("account")),
        _ => format!("GCS bucket {}", get("bucket")),
    }
}

/// Installs ring as the process's rustls provider, for reqwest (which takes the default);
/// the first call wins, later ones change nothing.
pub(crate) fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the bucket or container `spec` names. Fails (one line, no secret) only on a
/// definition the client cannot use; whether the store answers is for the first request.
pub(crate) fn open(spec: &ServiceSpec, proxy: Option<&ProxyConfig>) -> Result<Arc<dyn ObjectStore>, String> {
    install_crypto();
    let get = |name| spec.get(name).map(str::to_owned);
    let secret = |name| spec.get_secret(name).map(|s| s.expose().to_owned());
    let mut options = ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        // Large objects stream for minutes; a stalled transfer is the attempt's stall timeout.
        .with_timeout_disabled();
    if let Some(endpoint) = spec.get("endpoint") {
        options = options.with_allow_http(endpoint.to_ascii_lowercase().starts_with("http://"));
    }
    if let Some(proxy) = proxy {
        options = options.with_proxy_url(proxy_url(proxy));
    }
    let retry = RetryConfig {
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
        ..RetryConfig::default()
    };
    let what = target(spec);
    let built: object_store::Result<Arc<dyn ObjectStore>> = match spec.kind {
        ServiceType::S3 => {
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(get("bucket").unwrap_or_default())
                .with_region(get("region").unwrap_or_default())
                .with_access_key_id(get("access_key_id").unwrap_or_default())
                .with_secret_access_key(secret("secret_access_key").unwrap_or_default())
                .with_client_options(options)
                .with_retry(retry);
            if let Some(token) = secret("session_token") {
                b = b.with_token(token);
            }
            if let Some(endpoint) = get("endpoint") {
                b = b.with_endpoint(endpoint);
            }
            let path_style = spec.get("path_style").map(|v| v.eq_ignore_ascii_case("true"));
            // AWS itself wants the bucket in the host name; an S3-compatible store at an
            // endpoint usually in the path.
            let virtual_hosted = match path_style {
                Some(path) => !path,
                None => spec.get("endpoint").is_none(),
            };
            b.with_virtual_hosted_style_request(virtual_hosted)
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        }
        ServiceType::AzureBlob => {
            let account = get("account").unwrap_or_default();
            let mut b = MicrosoftAzureBuilder::new()
                .with_account(&account)
                .with_container_name(get("container").unwrap_or_default())
                .with_client_options(options)
                .with_retry(retry);
            if let Some(endpoint) = get("endpoint") {
                b = b.with_endpoint(endpoint);
            }
            if let Some(key) = secret("account_key") {
                b = b.with_access_key(key);
            } else if let Some(sas) = secret("sas_token") {
                b = b.with_sas_authorization(sas_pairs(&sas));
            }
            b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        }
        ServiceType::Gcs => {
            let mut b = GoogleCloudStorageBuilder::new()
                .with_bucket_name(get("bucket").unwrap_or_default())
                .with_service_account_key(secret("service_account_key").unwrap_or_default())
                .with_client_options(options)
                .with_retry(retry);
            if let Some(endpoint) = get("endpoint") {
                b = b.with_base_url(&endpoint);
            }
            b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        }
        other => return Err(format!("{other} is not an object store")),
    };
    built.map_err(|e| format!("cannot use {what}: {}", super::one_line(&e.to_string())))
}

/// The proxy as reqwest takes it, credentials in its URL.
fn proxy_url(proxy: &ProxyConfig) -> String {
    let host = if proxy.address.contains(':') {
        format!("[{}]", proxy.address)
    } else {
        proxy.address.clone()
    };
    match (&proxy.user, &proxy.password) {
        (Some(user), password) => {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let password = password.as_ref().map(|p| enc(p.expose())).unwrap_or_default();
            format!("http://{}:{password}@{host}:{}", enc(user), proxy.port)
        }
        (None, _) => format!("http://{host}:{}", proxy.port),
    }
}

/// A SAS token as the query pairs it is (with or without its leading `?`).
fn sas_pairs(token: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(token.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Lists the top of the bucket or container: proves the address, the credentials and the
/// right to list.
pub(super) async fn probe(spec: &ServiceSpec, proxy: Option<&ProxyConfig>) -> Result<String, ProbeError> {
    let what = target(spec);
    let store = open(spec, proxy).map_err(|detail| ProbeError::ObjectStore { detail })?;
    let listed = store
        .list_with_delimiter(None)
        .await
        .map_err(|e| ProbeError::ObjectStore {
            detail: format!("cannot list {what}: {}", describe(&e)),
        })?;
    Ok(format!(
        "listed {what}: {} objects and {} prefixes at the top",
        listed.objects.len(),
        listed.common_prefixes.len()
    ))
}

/// An object-store error as one line an operator can act on: the store's own reason (its
/// error code and message) where it gave one.
pub(crate) fn describe(e: &object_store::Error) -> String {
    use std::error::Error as _;
    let mut text = match e {
        object_store::Error::NotFound { .. } => "not found".to_owned(),
        object_store::Error::PermissionDenied { .. } => "permission denied".to_owned(),
        object_store::Error::Unauthenticated { .. } => "the credentials were refused".to_owned(),
        _ => String::new(),
    };
    // The innermost causes hold the store's status line and response body.
    let mut cause = e.source();
    while let Some(c) = cause {
        let line = super::one_line(&c.to_string());
        if !text.contains(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        cause = c.source();
    }
    if text.is_empty() {
        text = super::one_line(&e.to_string());
    }
    without_queries(&text)
}

/// `text` with the query of every URL in it cut off: the client's errors quote the request
/// URL, and with a SAS token the signature is in its query (re-encoded, so redacting the
/// token as given would not find it).
fn without_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let next_url = |text: &str| {
        [text.find("http://"), text.find("https://")]
            .into_iter()
            .flatten()
            .min()
    };
    while let Some(at) = next_url(rest) {
        let end = rest[at..].find(char::is_whitespace).map_or(rest.len(), |n| at + n);
        let url = &rest[at..end];
        out.push_str(&rest[..at]);
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?…");
            }
            None => out.push_str(url),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{ServiceType, validate};
    use super::*;

    #[test]
    fn azure_needs_exactly_one_credential() {
        let base = || {
            ServiceSpec::new(ServiceType::AzureBlob)
                .with("account", "acct")
                .with("container", "c")
        };
        let none = validate(&base()).unwrap_err().to_string();
        assert!(none.contains("account_key or sas_token"), "{none}");
        let both = validate(&base().with_secret("account_key", "k").with_secret("sas_token", "s"))
            .unwrap_err()
            .to_string();
        assert!(both.contains("not both"), "{both}");
        validate(&base().with_secret("sas_token", "sv=1&sig=x")).unwrap();
    }

    #[test]
    fn a_gcs_key_must_be_a_service_accounts_json_key() {
        let spec = |key: &str| {
            ServiceSpec::new(ServiceType::Gcs)
                .with("bucket", "b")
                .with_secret("service_account_key", key)
        };
        let secret = "private-bits-never-shown";
        for (key, why) in [
            (format!("not json {secret}"), "not JSON"),
            (
                format!(r#"{{"type":"user","private_key":"{secret}"}}"#),
                "service_account",
            ),
            (
                format!(r#"{{"type":"service_account","private_key":"{secret}"}}"#),
                "client_email",
            ),
        ] {
            let e = validate(&spec(&key)).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
            assert!(!e.contains(secret), "{e}");
        }
    }

    #[test]
    fn an_s3_endpoint_must_be_a_url_and_path_style_a_bool() {
        let base = || {
            ServiceSpec::new(ServiceType::S3)
                .with("bucket", "raw")
                .with("region", "eu-west-1")
                .with("access_key_id", "AKIA")
                .with_secret("secret_access_key", "s3cr3t")
        };
        validate(&base().with("endpoint", "https://minio:9000").with("path_style", "true")).unwrap();
        let e = validate(&base().with("path_style", "yes")).unwrap_err().to_string();
        assert_eq!(e, "s3 linked service: field 'path_style' is true or false, not 'yes'");
        let e = validate(&base().with("endpoint", "minio:9000"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("field 'endpoint' must be a URL"), "{e}");
        let e = validate(&base().with("secret_access_key", "plain"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is secret"), "{e}");
    }

    #[test]
    fn urls_in_errors_lose_their_queries_where_a_sas_signature_would_be() {
        let text = "Error performing GET https://acct.blob.core.windows.net/c?restype=container&sig=ab%2Bc in 3ms - \
                    then http://127.0.0.1:9/x?sv=1 and http://plain/path.";
        assert_eq!(
            without_queries(text),
            "Error performing GET https://acct.blob.core.windows.net/c?… in 3ms - then http://127.0.0.1:9/x?… and http://plain/path."
        );
    }

    #[test]
    fn a_sas_token_becomes_its_query_pairs() {
        assert_eq!(
            sas_pairs("?sv=2024-01-01&sig=a%2Bb%3D"),
            [
                ("sv".to_owned(), "2024-01-01".to_owned()),
                ("sig".to_owned(), "a+b=".to_owned())
            ]
        );
    }

    #[test]
    fn a_proxy_with_credentials_carries_them_encoded() {
        let proxy = ProxyConfig {
            address: "proxy.corp".into(),
            port: 3128,
            user: Some("me@corp".into()),
            password: Some(SecretString::new("p:w/d".into())),
        };
        assert_eq!(proxy_url(&proxy), "http://me%40corp:p%3Aw%2Fd@proxy.corp:3128");
    }
}
