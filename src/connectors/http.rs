//! HTTP linked services: their fields, the URL rules, and the probe — one GET, sent
//! directly or through the IR's proxy.
//!
//! The client is a minimal HTTP/1.1 one over tokio's `TcpStream`, with rustls for https. A
//! probe needs only a status line, and what has to be right here (absolute-form requests to
//! a proxy, CONNECT tunnels, the service's and the proxy's Basic credentials) stays visible
//! in one file instead of behind a general-purpose client's options.

use std::net::Ipv6Addr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::{
    FieldKind, FieldSpec, ProbeError, ProxyConfig, ServiceSpec, ServiceType, SpecError, UrlError, ValueError,
    parse_port,
};
use crate::pki::tls::describe_tls_error;
use crate::secrets::SecretString;

pub(super) const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "url",
        required: true,
        secret: false,
        kind: FieldKind::Url,
        about: "http:// or https:// URL that a GET is sent to",
    },
    FieldSpec {
        name: "user",
        required: false,
        secret: false,
        kind: FieldKind::Text,
        about: "user name for HTTP Basic authentication",
    },
    FieldSpec {
        name: "password",
        required: false,
        secret: true,
        kind: FieldKind::Text,
        about: "password for HTTP Basic authentication",
    },
    FieldSpec {
        name: "insecure_http",
        required: false,
        secret: false,
        kind: FieldKind::Text,
        about: "true to allow sending the password over plain http:// (it crosses the network in clear)",
    },
];

/// The most of a response head read before giving up: real heads are a few hundred bytes;
/// the cap stops a peer that never ends its head from filling memory.
const MAX_HEAD: usize = 64 * 1024;

/// The longest status text repeated in a message: it comes from the server, which chooses it.
const MAX_STATUS: usize = 120;

/// Rules beyond the per-field ones, which need two fields at once.
pub(super) fn check(spec: &ServiceSpec) -> Result<(), SpecError> {
    if spec.get("user").is_some_and(|u| u.contains(':')) {
        return Err(SpecError::ColonInHttpUser);
    }
    if spec.get_secret("password").is_some() && spec.get("user").is_none() {
        return Err(SpecError::HttpPasswordWithoutUser);
    }
    // Basic authentication over plain HTTP is the password in clear on the wire (and in
    // every proxy on the way).
    let insecure = match spec.get("insecure_http") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(SpecError::InsecureHttpNotBool {
                given: other.to_owned(),
            });
        }
    };
    if spec.get_secret("password").is_some()
        && !insecure
        && let Some(url) = spec.get("url")
        && !Url::parse(url).map_err(bad_url)?.https
    {
        return Err(SpecError::PasswordOverPlainHttp);
    }
    Ok(())
}

/// Field 'url' refused for `problem`.
fn bad_url(problem: UrlError) -> SpecError {
    SpecError::BadValue {
        kind: ServiceType::Http,
        name: "url".to_owned(),
        problem: ValueError::Url(problem),
    }
}

/// A checked `http://` or `https://` URL, split into what the request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Url {
    https: bool,
    /// Host name or IP address, IPv6 without brackets: what is dialled and what TLS checks.
    host: String,
    port: u16,
    /// `host[:port]` as written (IPv6 in brackets): the Host header.
    authority: String,
    /// Path and query, non-ASCII bytes percent-encoded: the origin-form request target.
    target: String,
}

impl Url {
    /// Parses a URL; the error completes "field 'url' …" and never repeats the URL, which
    /// may carry a token in its query.
    pub(super) fn parse(text: &str) -> Result<Url, UrlError> {
        let (scheme, rest) = text.split_once("://").ok_or(UrlError::NoScheme)?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(UrlError::UnknownScheme),
        };
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::SpaceOrControl);
        }
        // The fragment is for the client alone; it is never sent.
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (v6, after) = bracketed.split_once(']').ok_or(UrlError::UnclosedBracket)?;
            v6.parse::<Ipv6Addr>().map_err(|_| UrlError::BadIpv6)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(UrlError::JunkAfterHost)?),
            };
            (v6, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        if !host.is_ascii() {
            return Err(UrlError::NonAsciiHost);
        }
        let port = match port {
            Some(p) => parse_port(p).ok_or(UrlError::BadPort)?,
            None if https => 443,
            None => 80,
        };
        let mut target = String::with_capacity(path.len() + 1);
        if !path.starts_with('/') {
            target.push('/');
        }
        for byte in path.bytes() {
            if byte.is_ascii() {
                target.push(byte as char);
            } else {
                target.push_str(&format!("%{byte:02X}"));
            }
        }
        Ok(Url {
            https,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            target,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// `host:port` for dialling and CONNECT, IPv6 in brackets.
    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The absolute-form request target a proxy expects for plain http.
    fn absolute(&self) -> String {
        format!("{}://{}{}", self.scheme(), self.authority, self.target)
    }

    /// The URL for messages: without its query, which may hold a token.
    fn shown(&self) -> String {
        match self.target.split_once('?') {
            Some((path, _)) => format!("{}://{}{path}?…", self.scheme(), self.authority),
            None => self.absolute(),
        }
    }
}

fn proxy_name(proxy: &ProxyConfig) -> String {
    let host = proxy.address.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{}", proxy.port)
    } else {
        format!("{host}:{}", proxy.port)
    }
}

pub(super) fn target(spec: &ServiceSpec, proxy: Option<&ProxyConfig>) -> String {
    let url = Url::parse(spec.get("url").unwrap_or_default())
        .map(|u| u.shown())
        .unwrap_or_default();
    match proxy {
        Some(p) => format!("{url} through proxy {}", proxy_name(p)),
        None => url,
    }
}

/// What a request travels over: TCP, or TLS on TCP (direct or through a tunnel).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Sends one GET and judges the status: 2xx and 3xx (not followed: reaching the server is
/// what is being proved) are success, anything else is an error naming the status.
///
/// `tls` replaces the node's trusted roots (the tests' own CA); `None` loads the system's.
pub(super) async fn probe(
    spec: &ServiceSpec,
    proxy: Option<&ProxyConfig>,
    tls: Option<Arc<ClientConfig>>,
) -> Result<String, ProbeError> {
    let url = Url::parse(spec.get("url").unwrap_or_default()).map_err(bad_url)?;
    let authorization = spec.get("user").map(|user| basic(user, spec.get_secret("password")));

    // Three routes: straight to the server; to a proxy that forwards a plain-http request
    // given in absolute form; or through a CONNECT tunnel, inside which TLS and the request
    // run end to end, so that the proxy sees neither the request nor the service's
    // credentials.
    let (tcp, request_target, proxy_authorization) = match proxy {
        None => {
            let tcp = dial(&url.host, url.port).await.map_err(|e| ProbeError::Unreachable {
                peer: url.host_port(),
                detail: e.to_string(),
            })?;
            (tcp, url.target.clone(), None)
        }
        Some(proxy) => {
            let mut tcp = dial(&proxy.address, proxy.port)
                .await
                .map_err(|e| ProbeError::ProxyUnreachable {
                    proxy: proxy_name(proxy),
                    detail: e.to_string(),
                })?;
            let credentials = proxy.user.as_deref().map(|user| basic(user, proxy.password.as_ref()));
            if url.https {
                tunnel(&mut tcp, &url, proxy, credentials.as_deref().map(String::as_str)).await?;
                (tcp, url.target.clone(), None)
            } else {
                (tcp, url.absolute(), credentials)
            }
        }
    };
    let peer = match proxy {
        Some(p) if !url.https => format!("proxy {}", proxy_name(p)),
        Some(p) => format!("{} through proxy {}", url.host_port(), proxy_name(p)),
        None => url.host_port(),
    };

    let mut stream: Box<dyn Stream> = if url.https {
        let config = match tls {
            Some(config) => config,
            None => system_tls_config()?,
        };
        let name = ServerName::try_from(url.host.clone()).map_err(|_| ProbeError::NotATlsName)?;
        let tls_stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| ProbeError::Tls {
                peer: peer.clone(),
                detail: describe_tls_error(&e),
            })?;
        Box::new(tls_stream)
    } else {
        Box::new(tcp)
    };

    let request = get_request(
        &request_target,
        &url.authority,
        authorization.as_deref().map(|s| s.as_str()),
        proxy_authorization.as_deref().map(|s| s.as_str()),
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::Lost {
            peer: peer.clone(),
            detail: describe_tls_error(&e),
        })?;
    let head = read_head(&mut stream, &peer).await.map_err(bad_response)?;

    let via = proxy
        .map(|p| format!(" through proxy {}", proxy_name(p)))
        .unwrap_or_default();
    let request = format!("GET {}{via}", url.shown());
    let hint = match head.code {
        200..=399 => return Ok(format!("{request}: {}", head.status)),
        401 => " (check the linked service's user and password)",
        407 => " (check the proxy's user and password)",
        _ => "",
    };
    Err(ProbeError::Refused {
        request,
        status: head.status,
        hint,
    })
}

async fn dial(host: &str, port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await
}

/// Asks the proxy for a tunnel to the URL's host and port.
async fn tunnel(
    stream: &mut TcpStream,
    url: &Url,
    proxy: &ProxyConfig,
    proxy_authorization: Option<&str>,
) -> Result<(), ProbeError> {
    let name = proxy_name(proxy);
    let authority = url.host_port();
    let mut request = Zeroizing::new(String::with_capacity(256 + proxy_authorization.map_or(0, str::len)));
    request.push_str(&format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"));
    if let Some(credentials) = proxy_authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(credentials);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::ProxyLost {
            proxy: name.clone(),
            detail: e.to_string(),
        })?;
    let head = read_head(stream, &format!("proxy {name}"))
        .await
        .map_err(bad_response)?;
    if !(200..300).contains(&head.code) {
        let hint = if head.code == 407 {
            " (check the proxy's user and password)"
        } else {
            ""
        };
        return Err(ProbeError::ProxyRefusedTunnel {
            proxy: name,
            authority,
            status: head.status,
            hint,
        });
    }
    // The client speaks first in TLS, so a proxy that sends more than its answer is broken
    // or is not a proxy; those bytes would corrupt the handshake.
    if !head.rest.is_empty() {
        return Err(ProbeError::ProxyDataAfterTunnel { proxy: name });
    }
    Ok(())
}

/// The roots this node trusts: the operating system's store, where a company's own CAs
/// (and those of TLS-inspecting proxies) are installed. Read on each https probe, so a CA
/// added to the system is used without restarting the node.
fn system_tls_config() -> Result<Arc<ClientConfig>, ProbeError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
        return Err(ProbeError::NoTrustedRoots { detail: why });
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::TlsSetup { detail: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `Basic base64(user:password)`; kept in zeroized memory, as is every buffer it is copied to.
fn basic(user: &str, password: Option<&SecretString>) -> Zeroizing<String> {
    let password = password.map(SecretString::expose).unwrap_or_default();
    let mut pair = Zeroizing::new(String::with_capacity(user.len() + 1 + password.len()));
    pair.push_str(user);
    pair.push(':');
    pair.push_str(password);
    let mut out = Zeroizing::new(String::with_capacity(6 + pair.len().div_ceil(3) * 4));
    out.push_str("Basic ");
    BASE64.encode_string(pair.as_bytes(), &mut out);
    out
}

fn get_request(
    target: &str,
    host: &str,
    authorization: Option<&str>,
    proxy_authorization: Option<&str>,
) -> Zeroizing<String> {
    let credentials = authorization.map_or(0, str::len) + proxy_authorization.map_or(0, str::len);
    // Sized up front: growing the string would leave copies of the credentials in freed memory.
    let mut request = Zeroizing::new(String::with_capacity(256 + target.len() + host.len() + credentials));
    request.push_str(&format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shir/{}\r\nAccept: */*\r\nConnection: close\r\n",
        crate::VERSION
    ));
    if let Some(credentials) = authorization {
        request.push_str("Authorization: ");
        request.push_str(credentials);
        request.push_str("\r\n");
    }
    if let Some(credentials) = proxy_authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(credentials);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// A response's status and whatever was read past its head.
struct Head {
    code: u16,
    /// `200 OK`: the status line without the version, cleaned for a one-line message.
    status: String,
    rest: Vec<u8>,
}

/// What [`read_head`] refused, as it crosses out of this file.
fn bad_response(detail: String) -> ProbeError {
    ProbeError::BadResponse { detail }
}

async fn read_head<S: AsyncRead + Unpin + ?Sized>(stream: &mut S, peer: &str) -> Result<Head, String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (code, status) = parse_status_line(&buf[..end], peer)?;
            buf.drain(..end + 4);
            // Interim answers (100, 103 Early Hints) precede the real one. 101 switches
            // protocols, which a GET without Upgrade never asks for, so it is an answer.
            if (100..200).contains(&code) && code != 101 {
                continue;
            }
            return Ok(Head {
                code,
                status,
                rest: buf,
            });
        }
        if buf.len() > MAX_HEAD {
            return Err(format!(
                "{peer} sent a response head longer than {} KiB",
                MAX_HEAD / 1024
            ));
        }
        let read = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("lost the connection to {peer}: {}", describe_tls_error(&e)))?;
        if read == 0 {
            return Err(if buf.is_empty() {
                format!("{peer} closed the connection without answering")
            } else {
                format!("{peer} closed the connection in the middle of its answer")
            });
        }
    }
}

/// `HTTP/1.1 200 OK` → (200, "200 OK").
fn parse_status_line(head: &[u8], peer: &str) -> Result<(u16, String), String> {
    let line = head.split(|b| *b == b'\r' || *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let not_http = || format!("{peer} did not answer with HTTP");
    let (version, status) = line.split_once(' ').ok_or_else(not_http)?;
    if !version.starts_with("HTTP/1.") {
        return Err(not_http());
    }
    let status = status.trim();
    let code = status
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(not_http)?;
    let status: String = status.chars().filter(|c| !c.is_control()).take(MAX_STATUS).collect();
    Ok((code, status))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::super::{ServiceType, probe as probe_spec, probe_within};
    use super::*;

    const SERVICE_PASSWORD: &str = "svc-pass-5d1e";
    const PROXY_PASSWORD: &str = "proxy-pass-9c2a";

    fn service(url: &str) -> ServiceSpec {
        let spec = ServiceSpec::new(ServiceType::Http)
            .with("url", url)
            .with("user", "etl")
            .with_secret("password", SERVICE_PASSWORD);
        // The test servers speak plain HTTP; Basic authentication over it needs the opt-in.
        if url.starts_with("http://") {
            spec.with("insecure_http", "true")
        } else {
            spec
        }
    }

    #[test]
    fn a_password_over_plain_http_needs_the_opt_in() {
        let plain = ServiceSpec::new(ServiceType::Http)
            .with("url", "http://intranet/")
            .with("user", "etl")
            .with_secret("password", SERVICE_PASSWORD);
        let err = super::super::validate(&plain).unwrap_err().to_string();
        assert!(err.contains("https://") && !err.contains(SERVICE_PASSWORD), "{err}");
        assert!(super::super::validate(&plain.clone().with("insecure_http", "true")).is_ok());
        assert!(super::super::validate(&plain.clone().with("insecure_http", "yes")).is_err());
        let tls = ServiceSpec::new(ServiceType::Http)
            .with("url", "https://intranet/")
            .with("user", "etl")
            .with_secret("password", SERVICE_PASSWORD);
        assert!(super::super::validate(&tls).is_ok());
    }

    fn proxy_at(addr: SocketAddr, user: Option<&str>) -> ProxyConfig {
        ProxyConfig {
            address: addr.ip().to_string(),
            port: addr.port(),
            user: user.map(str::to_owned),
            password: user.map(|_| SecretString::from(PROXY_PASSWORD)),
        }
    }

    fn expected_basic(user: &str, password: &str) -> String {
        format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
    }

    /// No probe message, good or bad, may hold a password.
    fn assert_clean(message: &str) {
        assert!(!message.contains(SERVICE_PASSWORD), "service password in: {message}");
        assert!(!message.contains(PROXY_PASSWORD), "proxy password in: {message}");
        assert!(!message.contains('\n'), "not one line: {message}");
    }

    async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> String {
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                break;
            }
        }
        String::from_utf8(buf).unwrap()
    }

    /// A server or proxy on 127.0.0.1 that takes one connection, records the request head,
    /// sends `answer` and closes.
    async fn answer_once(answer: &'static str) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let request = read_request(&mut stream).await;
            stream.write_all(answer.as_bytes()).await.unwrap();
            let _ = stream.shutdown().await;
            request
        });
        (addr, task)
    }

    /// An address where nothing listens: bound, then let go.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
        request
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }

    #[test]
    fn urls_split_into_what_a_request_needs() {
        let url = Url::parse("HTTPS://Api.Example:8443/v1/ping?sig=abc#frag").unwrap();
        assert!(url.https);
        assert_eq!((url.host.as_str(), url.port), ("Api.Example", 8443));
        assert_eq!(url.authority, "Api.Example:8443");
        assert_eq!(url.target, "/v1/ping?sig=abc");
        assert_eq!(url.absolute(), "https://Api.Example:8443/v1/ping?sig=abc");
        assert_eq!(url.shown(), "https://Api.Example:8443/v1/ping?…");

        let url = Url::parse("http://host").unwrap();
        assert_eq!(
            (url.port, url.target.as_str(), url.authority.as_str()),
            (80, "/", "host")
        );
        assert_eq!(Url::parse("https://host?x=1").unwrap().target, "/?x=1");
        assert_eq!(Url::parse("https://host").unwrap().port, 443);

        let url = Url::parse("http://[::1]:8080/é").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.host_port(), "[::1]:8080");
        assert_eq!(url.authority, "[::1]:8080");
        assert_eq!(url.target, "/%C3%A9");
    }

    #[test]
    fn status_lines_are_parsed_and_cleaned() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK", "p").unwrap(),
            (200, "200 OK".into())
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 404\r\nX: y", "p").unwrap(),
            (404, "404".into())
        );
        assert!(parse_status_line(b"SSH-2.0-OpenSSH", "p").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc", "p").is_err());
        assert!(parse_status_line(b"HTTP/2 200", "p").is_err());
        let (_, long) = parse_status_line(format!("HTTP/1.1 200 {}", "x".repeat(500)).as_bytes(), "p").unwrap();
        assert_eq!(long.len(), MAX_STATUS);
    }

    #[tokio::test]
    async fn http_direct_get_sends_origin_form_and_basic_auth() {
        let (addr, server) = answer_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let ok = probe_spec(&service(&format!("http://{addr}/health?token=t0k3n")), None)
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /health?token=t0k3n HTTP/1.1\r\n"), "{request}");
        assert_eq!(header(&request, "Host"), Some(addr.to_string().as_str()));
        assert_eq!(
            header(&request, "Authorization"),
            Some(expected_basic("etl", SERVICE_PASSWORD).as_str())
        );
        assert_eq!(header(&request, "Proxy-Authorization"), None);
        assert_eq!(ok, format!("GET http://{addr}/health?…: 200 OK"));
        assert!(!ok.contains("t0k3n"), "{ok}");
        assert_clean(&ok);
    }

    #[tokio::test]
    async fn http_without_user_sends_no_authorization() {
        let (addr, server) = answer_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        let spec = ServiceSpec::new(ServiceType::Http).with("url", format!("http://{addr}"));
        let ok = probe_spec(&spec, None).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
        assert_eq!(header(&request, "Authorization"), None);
        assert!(ok.ends_with("204 No Content"), "{ok}");
    }

    #[tokio::test]
    async fn http_get_through_proxy_uses_absolute_form_and_proxy_authorization() {
        // The service's host does not resolve: only the proxy can answer, so an Ok proves the
        // request went through it.
        let (proxy_addr, proxy) = answer_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let config = proxy_at(proxy_addr, Some("puser"));
        let ok = probe_spec(&service("http://service.invalid:8080/data/x.csv"), Some(&config))
            .await
            .unwrap();
        let request = proxy.await.unwrap();
        assert!(
            request.starts_with("GET http://service.invalid:8080/data/x.csv HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(header(&request, "Host"), Some("service.invalid:8080"));
        assert_eq!(
            header(&request, "Proxy-Authorization"),
            Some(expected_basic("puser", PROXY_PASSWORD).as_str())
        );
        assert_eq!(
            header(&request, "Authorization"),
            Some(expected_basic("etl", SERVICE_PASSWORD).as_str())
        );
        assert_eq!(
            ok,
            format!("GET http://service.invalid:8080/data/x.csv through proxy {proxy_addr}: 200 OK")
        );
        assert_clean(&ok);
    }

    #[tokio::test]
    async fn http_proxy_without_user_gets_no_proxy_authorization() {
        let (proxy_addr, proxy) = answer_once("HTTP/1.1 200 OK\r\n\r\n").await;
        probe_spec(&service("http://service.invalid/"), Some(&proxy_at(proxy_addr, None)))
            .await
            .unwrap();
        assert_eq!(header(&proxy.await.unwrap(), "Proxy-Authorization"), None);
    }

    #[tokio::test]
    async fn http_407_from_the_proxy_is_an_error() {
        let (proxy_addr, proxy) = answer_once(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n\r\n",
        )
        .await;
        let err = probe_spec(
            &service("http://service.invalid/"),
            Some(&proxy_at(proxy_addr, Some("puser"))),
        )
        .await
        .unwrap_err()
        .to_string();
        proxy.await.unwrap();
        assert!(err.contains("407 Proxy Authentication Required"), "{err}");
        assert!(err.contains("proxy's user and password"), "{err}");
        assert_clean(&err);
    }

    #[tokio::test]
    async fn http_401_and_500_are_errors_and_redirects_are_not() {
        let (addr, _server) = answer_once("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\n\r\n").await;
        let err = probe_spec(&service(&format!("http://{addr}/")), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("401 Unauthorized"), "{err}");
        assert!(err.contains("linked service's user and password"), "{err}");
        assert_clean(&err);

        let (addr, _server) = answer_once("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let err = probe_spec(&service(&format!("http://{addr}/")), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("500 Internal Server Error"), "{err}");
        assert_clean(&err);

        let (addr, _server) = answer_once("HTTP/1.1 302 Found\r\nLocation: /login?secret=x\r\n\r\n").await;
        let ok = probe_spec(&service(&format!("http://{addr}/")), None).await.unwrap();
        assert!(ok.ends_with("302 Found"), "{ok}");
    }

    #[tokio::test]
    async fn http_interim_answers_are_skipped() {
        let (addr, _server) =
            answer_once("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n").await;
        let ok = probe_spec(&service(&format!("http://{addr}/")), None).await.unwrap();
        assert!(ok.ends_with("200 OK"), "{ok}");
    }

    #[tokio::test]
    async fn http_unreachable_server_or_proxy_is_an_error() {
        let addr = closed_port().await;
        let err = probe_spec(&service(&format!("http://{addr}/")), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("cannot reach {addr}: ")), "{err}");
        assert_clean(&err);

        let err = probe_spec(
            &service("http://service.invalid/"),
            Some(&proxy_at(addr, Some("puser"))),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with(&format!("cannot reach proxy {addr}: ")), "{err}");
        assert_clean(&err);
    }

    #[tokio::test]
    async fn http_non_http_answers_are_errors() {
        let (addr, _server) = answer_once("SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        let err = probe_spec(&service(&format!("http://{addr}/")), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not answer with HTTP"), "{err}");
        let (addr, _server) = answer_once("").await;
        let err = probe_spec(&service(&format!("http://{addr}/")), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("closed the connection without answering"), "{err}");
    }

    #[tokio::test]
    async fn http_silent_server_is_cut_off_by_the_time_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _silent = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        });
        let err = probe_within(&service(&format!("http://{addr}/x")), None, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("gave up after 300 ms: no answer from http://{addr}/x"));
    }

    #[tokio::test]
    async fn https_through_proxy_asks_for_a_tunnel_and_reports_its_refusal() {
        let (proxy_addr, proxy) = answer_once("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        let err = probe_spec(
            &service("https://service.invalid/secure"),
            Some(&proxy_at(proxy_addr, Some("puser"))),
        )
        .await
        .unwrap_err()
        .to_string();
        let request = proxy.await.unwrap();
        assert!(
            request.starts_with("CONNECT service.invalid:443 HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(header(&request, "Host"), Some("service.invalid:443"));
        assert_eq!(
            header(&request, "Proxy-Authorization"),
            Some(expected_basic("puser", PROXY_PASSWORD).as_str())
        );
        // The service's credentials belong inside the tunnel, never to the proxy.
        assert_eq!(header(&request, "Authorization"), None);
        assert_eq!(
            err,
            format!(
                "proxy {proxy_addr} refused CONNECT service.invalid:443: 407 Proxy Authentication Required \
                 (check the proxy's user and password)"
            )
        );
        assert_clean(&err);
    }

    /// A proxy that accepts CONNECT and then plays the origin itself, over TLS with a
    /// certificate for `name`: from the client's side the same as a real tunnel.
    async fn tls_behind_proxy(name: &str) -> (SocketAddr, CertificateDer, JoinHandle<(String, String)>) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let connect = read_request(&mut tcp).await;
            tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let inner = match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let request = read_request(&mut tls).await;
                    tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tls.shutdown().await;
                    request
                }
                Err(e) => format!("handshake failed: {e}"),
            };
            (connect, inner)
        });
        (addr, cert, task)
    }

    type CertificateDer = rustls::pki_types::CertificateDer<'static>;

    fn trusting(cert: CertificateDer) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    #[tokio::test]
    async fn https_through_proxy_runs_tls_inside_the_tunnel() {
        let (proxy_addr, cert, proxy) = tls_behind_proxy("service.test").await;
        let config = proxy_at(proxy_addr, Some("puser"));
        let ok = probe(
            &service("https://service.test/secure?k=v"),
            Some(&config),
            Some(trusting(cert)),
        )
        .await
        .unwrap();
        let (connect, inner) = proxy.await.unwrap();
        assert!(
            connect.starts_with("CONNECT service.test:443 HTTP/1.1\r\n"),
            "{connect}"
        );
        assert_eq!(header(&connect, "Authorization"), None);
        assert!(inner.starts_with("GET /secure?k=v HTTP/1.1\r\n"), "{inner}");
        assert_eq!(header(&inner, "Host"), Some("service.test"));
        assert_eq!(
            header(&inner, "Authorization"),
            Some(expected_basic("etl", SERVICE_PASSWORD).as_str())
        );
        // Inside the tunnel the proxy's credentials are not repeated.
        assert_eq!(header(&inner, "Proxy-Authorization"), None);
        assert_eq!(
            ok,
            format!("GET https://service.test/secure?… through proxy {proxy_addr}: 200 OK")
        );
        assert_clean(&ok);
    }

    #[tokio::test]
    async fn https_with_an_untrusted_certificate_is_an_error() {
        // The system's roots do not include the test's self-signed certificate.
        let (proxy_addr, _cert, _proxy) = tls_behind_proxy("service.test").await;
        let config = proxy_at(proxy_addr, Some("puser"));
        let err = probe_spec(&service("https://service.test/"), Some(&config))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate"), "{err}");
        assert_clean(&err);
    }

    #[tokio::test]
    async fn https_direct_checks_the_certificate_name() {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    read_request(&mut tls).await;
                    tls.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
                    let _ = tls.shutdown().await;
                }
            }
        });
        let ok = probe(
            &service(&format!("https://{addr}/")),
            None,
            Some(trusting(cert.clone())),
        )
        .await
        .unwrap();
        assert_eq!(ok, format!("GET https://{addr}/: 200 OK"));
        // The same server under a name its certificate does not carry.
        let err = probe(
            &service(&format!("https://localhost:{}/", addr.port())),
            None,
            Some(trusting(cert)),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!("TLS with localhost:{} failed", addr.port())),
            "{err}"
        );
        assert!(err.contains("certificate"), "{err}");
    }
}
