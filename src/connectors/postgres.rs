//! PostgreSQL linked services: their fields, the connection probe (log in, ask the server
//! its version), and the login the copy data plane uses ([`connect`]).

use std::time::Duration;

use tokio_postgres::NoTls;

use super::{FieldKind, FieldSpec, ServiceSpec, one_line, parse_port};

use crate::timing::{
    POSTGRES_KEEPALIVE_IDLE as KEEPALIVE_IDLE, POSTGRES_KEEPALIVE_INTERVAL as KEEPALIVE_INTERVAL,
    POSTGRES_KEEPALIVE_RETRIES as KEEPALIVE_RETRIES,
};

/// PostgreSQL's own default, as libpq uses it.
pub(super) const DEFAULT_PORT: u16 = 5432;

pub(super) const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "host",
        required: true,
        secret: false,
        kind: FieldKind::Host,
        about: "host name or IP address of the PostgreSQL server",
    },
    FieldSpec {
        name: "port",
        required: false,
        secret: false,
        kind: FieldKind::Port,
        about: "TCP port of the server (default 5432)",
    },
    FieldSpec {
        name: "database",
        required: true,
        secret: false,
        kind: FieldKind::Text,
        about: "database to connect to",
    },
    FieldSpec {
        name: "user",
        required: true,
        secret: false,
        kind: FieldKind::Text,
        about: "role to log in as",
    },
    FieldSpec {
        name: "password",
        required: false,
        secret: true,
        kind: FieldKind::Text,
        about: "password of the role",
    },
    FieldSpec {
        name: "state_schema",
        required: false,
        secret: false,
        kind: FieldKind::SchemaName,
        about: "schema of shir's idempotency records, STATE_SCHEMA.job_commits (default shir)",
    },
];

/// Whether `name` can be the `state_schema`: a name PostgreSQL reads as itself unquoted
/// (so an operator types it in `psql` as shown), and not one of the names it keeps for
/// itself (`pg_*`, `information_schema`).
pub(super) fn is_schema_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_")
        && name != "information_schema"
}

fn port(spec: &ServiceSpec) -> u16 {
    spec.get("port").and_then(parse_port).unwrap_or(DEFAULT_PORT)
}

fn address(spec: &ServiceSpec) -> String {
    let host = spec.get("host").unwrap_or_default();
    if host.contains(':') {
        format!("[{host}]:{}", port(spec))
    } else {
        format!("{host}:{}", port(spec))
    }
}

pub(super) fn target(spec: &ServiceSpec) -> String {
    format!("PostgreSQL at {}", address(spec))
}

/// Logs in and asks for the server's version, user and database: a login alone proves the
/// password, and the query proves the session is usable (not, say, refused for too many
/// connections after authentication).
pub(super) async fn probe(spec: &ServiceSpec, limit: Duration) -> Result<String, super::ProbeError> {
    let at = address(spec);
    let client = connect(spec, "shir linked-service probe", limit)
        .await
        .map_err(|failure| super::ProbeError::PostgresConnect {
            detail: failure.message,
        })?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_user::text, current_database()::text",
            &[],
        )
        .await
        .map_err(|e| super::ProbeError::PostgresQuery {
            at: at.clone(),
            user: spec.get("user").unwrap_or_default().to_owned(),
            database: spec.get("database").unwrap_or_default().to_owned(),
            detail: one_line(&crate::error_chain(&e)),
        })?;
    let version: String = row.get(0);
    let who: String = row.get(1);
    let db: String = row.get(2);
    Ok(format!(
        "connected to PostgreSQL {version} as {who} to database {db} at {at}"
    ))
}

/// Why [`connect`] failed: one line that never holds the password, and whether another try
/// could help (nothing listening, too many connections, a server starting up) or not (a
/// wrong password, an unknown database, a server that wants the password in clear).
#[derive(Debug)]
pub(crate) struct ConnectFailure {
    pub message: String,
    pub retryable: bool,
}

/// Connects to the service's database as its user and returns the client; the connection
/// is driven by a spawned task that ends once the client is dropped. `limit` bounds the
/// login after the TCP connection is made (tokio-postgres' own connect timeout); callers
/// that need the whole attempt bounded wrap it in a timeout.
pub(crate) async fn connect(
    spec: &ServiceSpec,
    application_name: &str,
    limit: Duration,
) -> Result<tokio_postgres::Client, ConnectFailure> {
    let user = spec.get("user").unwrap_or_default();
    let database = spec.get("database").unwrap_or_default();
    let at = address(spec);

    let mut config = tokio_postgres::Config::new();
    config
        .host(spec.get("host").unwrap_or_default())
        .port(port(spec))
        .dbname(database)
        .user(user)
        .application_name(application_name)
        .connect_timeout(limit);
    if let Some(password) = spec.get_secret("password") {
        // tokio-postgres keeps its own copy of the password in the Config, not zeroized;
        // it lives only as long as this function.
        config.password(password.expose());
    }

    // TLS to PostgreSQL is not supported yet, so the connection is plain TCP. The stream is
    // wrapped so that the password is only ever used in a SCRAM exchange, which never puts
    // it on the wire: a server (or whoever answers in its place) asking for it in clear or
    // as MD5 gets nothing.
    let host = spec.get("host").unwrap_or_default();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let tcp = tokio::net::TcpStream::connect((host, port(spec)))
        .await
        .map_err(|e| ConnectFailure {
            message: format!("cannot connect to PostgreSQL at {at} as {user} to database {database}: {e}"),
            retryable: true,
        })?;
    let _ = tcp.set_nodelay(true);
    // A server or network that goes silent without closing the connection would otherwise
    // hold a copy (and its node's job slot) until the kernel's two-hour default notices.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let (client, connection) = config
        .connect_raw(ScramOnly::new(tcp), NoTls)
        .await
        .map_err(|e| ConnectFailure {
            message: format!(
                "cannot connect to PostgreSQL at {at} as {user} to database {database}: {}",
                one_line(&crate::error_chain(&e))
            ),
            retryable: is_retryable(&e),
        })?;
    // The connection object drives the socket; it finishes on its own once `client` is dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Whether an error from PostgreSQL could pass on another try: a lost connection, a server
/// shutting down or starting up, too many connections, a deadlock or serialization
/// failure. Bad input, a missing table, a refused login or a syntax error would fail the
/// same way again.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        // SQLSTATE classes: 08 connection exception, 40 transaction rollback (deadlock,
        // serialization), 53 insufficient resources, 57 operator intervention (shutdown,
        // cannot connect now), 58 system error (I/O).
        return matches!(&code.code()[..2], "08" | "40" | "53" | "57" | "58");
    }
    if e.is_closed() {
        return true;
    }
    // A socket error is worth another try; the refusal of a password request by
    // `ScramOnly` (PermissionDenied) is not.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() != std::io::ErrorKind::PermissionDenied;
        }
        source = cause.source();
    }
    false
}

/// A client stream that refuses a server's request for the password in clear
/// (`AuthenticationCleartextPassword`, code 3) or as MD5 (code 5), before tokio-postgres
/// could answer it. It reads the first message the server sends (type `R`, length, code);
/// everything after passes through untouched.
struct ScramOnly<S> {
    inner: S,
    /// The first 9 bytes from the server, as far as they have arrived.
    head: [u8; 9],
    seen: usize,
}

impl<S> ScramOnly<S> {
    fn new(inner: S) -> Self {
        ScramOnly {
            inner,
            head: [0; 9],
            seen: 0,
        }
    }
}

/// Authentication request codes that would hand the server the password (or an MD5 of it
/// replayable against that server).
const CLEARTEXT_PASSWORD: u32 = 3;
const MD5_PASSWORD: u32 = 5;

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ScramOnly<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled
            && self.seen < self.head.len()
        {
            let new = &buf.filled()[before..];
            let take = new.len().min(self.head.len() - self.seen);
            let at = self.seen;
            self.head[at..at + take].copy_from_slice(&new[..take]);
            self.seen += take;
            if self.seen == self.head.len() && self.head[0] == b'R' {
                let code = u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
                if code == CLEARTEXT_PASSWORD || code == MD5_PASSWORD {
                    let how = if code == CLEARTEXT_PASSWORD {
                        "in clear"
                    } else {
                        "as MD5"
                    };
                    return std::task::Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "the server asked for the password {how}; shir gives passwords only to \
                             scram-sha-256 authentication (set password_encryption and pg_hba.conf to scram-sha-256)"
                        ),
                    )));
                }
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ScramOnly<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio_postgres::config::Host;

    use super::super::{ServiceType, probe as probe_spec};
    use super::*;

    /// The server named by `SHIR_TEST_PG`, or `None` (and a note) when it is not set.
    fn test_server() -> Option<tokio_postgres::Config> {
        match std::env::var("SHIR_TEST_PG") {
            Ok(text) if !text.trim().is_empty() => {
                Some(text.parse().expect("SHIR_TEST_PG is a libpq connection string"))
            }
            // CI starts a server (.ci/run calls .ci/postgres): there, a missing one is a failure.
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true but SHIR_TEST_PG is not set: .ci/run must start PostgreSQL with .ci/postgres")
            }
            _ => {
                println!("skipped: SHIR_TEST_PG is not set (run .ci/postgres)");
                None
            }
        }
    }

    /// A login role made for one test, with a random name and password, dropped by
    /// [`TestRole::drop_role`].
    struct TestRole {
        admin: tokio_postgres::Client,
        name: String,
        password: String,
        host: String,
        port: u16,
    }

    impl TestRole {
        async fn create(server: &tokio_postgres::Config) -> TestRole {
            let (admin, connection) = server.connect(NoTls).await.expect("connect with SHIR_TEST_PG");
            tokio::spawn(connection);
            let name = format!("shir_probe_{:016x}", rand::random::<u64>());
            let password = format!("pw-{:032x}", rand::random::<u128>());
            // Both are hex made just above: nothing to quote.
            admin
                .batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
                .await
                .expect("create a test role (SHIR_TEST_PG's role needs CREATEROLE)");
            let host = match server.get_hosts().first() {
                Some(Host::Tcp(host)) => host.clone(),
                Some(Host::Unix(path)) => path.display().to_string(),
                None => "localhost".to_owned(),
            };
            let port = server.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
            TestRole {
                admin,
                name,
                password,
                host,
                port,
            }
        }

        fn spec(&self, database: &str, password: &str) -> ServiceSpec {
            ServiceSpec::new(ServiceType::Postgres)
                .with("host", &self.host)
                .with("port", self.port.to_string())
                .with("database", database)
                .with("user", &self.name)
                .with_secret("password", password)
        }

        async fn drop_role(self) {
            self.admin
                .batch_execute(&format!("DROP ROLE IF EXISTS {}", self.name))
                .await
                .expect("drop the test role");
        }
    }

    #[tokio::test]
    async fn postgres_probe_with_the_right_password_connects() {
        let Some(server) = test_server() else { return };
        let role = TestRole::create(&server).await;
        let outcome = probe_spec(&role.spec("postgres", &role.password), None).await;
        let (name, at) = (role.name.clone(), format!("{}:{}", role.host, role.port));
        role.drop_role().await;

        let ok = outcome.unwrap();
        println!("{ok}");
        assert!(ok.starts_with("connected to PostgreSQL "), "{ok}");
        assert!(
            ok.ends_with(&format!(" as {name} to database postgres at {at}")),
            "{ok}"
        );
    }

    #[tokio::test]
    async fn postgres_probe_with_a_wrong_password_fails_without_showing_it() {
        let Some(server) = test_server() else { return };
        let role = TestRole::create(&server).await;
        let wrong = format!("wrong-{:016x}", rand::random::<u64>());
        let outcome = probe_spec(&role.spec("postgres", &wrong), None).await;
        let mut no_password = role.spec("postgres", "x");
        no_password.secrets.clear();
        let without = probe_spec(&no_password, None).await;
        let right = role.password.clone();
        let name = role.name.clone();
        role.drop_role().await;

        let err = outcome.unwrap_err().to_string();
        println!("{err}");
        assert!(
            err.contains(&format!("password authentication failed for user \"{name}\"")),
            "{err}"
        );
        assert!(!err.contains(&wrong) && !err.contains(&right), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = without.unwrap_err().to_string();
        println!("{err}");
        assert!(err.contains("password missing"), "{err}");
    }

    #[tokio::test]
    async fn postgres_probe_of_an_unknown_database_fails() {
        let Some(server) = test_server() else { return };
        let role = TestRole::create(&server).await;
        let database = format!("no_such_db_{:08x}", rand::random::<u32>());
        let outcome = probe_spec(&role.spec(&database, &role.password), None).await;
        let password = role.password.clone();
        role.drop_role().await;

        let err = outcome.unwrap_err().to_string();
        println!("{err}");
        assert!(
            err.contains(&format!("database \"{database}\" does not exist")),
            "{err}"
        );
        assert!(!err.contains(&password), "{err}");
    }

    #[tokio::test]
    async fn postgres_probe_of_a_closed_port_fails() {
        // Needs no server: a port bound and let go has nothing listening.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = ServiceSpec::new(ServiceType::Postgres)
            .with("host", "127.0.0.1")
            .with("port", port.to_string())
            .with("database", "sales")
            .with("user", "etl")
            .with_secret("password", "closed-port-secret");
        let err = probe_spec(&spec, None).await.unwrap_err().to_string();
        println!("{err}");
        assert!(
            err.starts_with(&format!(
                "cannot connect to PostgreSQL at 127.0.0.1:{port} as etl to database sales: "
            )),
            "{err}"
        );
        assert!(!err.contains("closed-port-secret"), "{err}");
    }

    /// A server that asks for the password in clear (or as MD5) must get nothing: the
    /// stand-in for someone who answers in the database's place. Returns what the client
    /// sent after its startup message.
    async fn impostor(auth_request: Vec<u8>) -> (String, Vec<u8>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let len = stream.read_u32().await.unwrap() as usize;
            let mut startup = vec![0u8; len - 4];
            stream.read_exact(&mut startup).await.unwrap();
            stream.write_all(&auth_request).await.unwrap();
            let mut after = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut after)).await;
            after
        });
        let spec = ServiceSpec::new(ServiceType::Postgres)
            .with("host", "127.0.0.1")
            .with("port", port.to_string())
            .with("database", "sales")
            .with("user", "etl")
            .with_secret("password", "Impostor-Bait-pw");
        let err = probe_spec(&spec, None)
            .await
            .expect_err("an impostor must not get a login")
            .to_string();
        (err, server.await.unwrap())
    }

    #[tokio::test]
    async fn postgres_probe_never_sends_the_password_in_clear_or_as_md5() {
        let cleartext = [b"R".as_slice(), &8u32.to_be_bytes(), &3u32.to_be_bytes()].concat();
        let (err, sent) = impostor(cleartext).await;
        assert!(err.contains("asked for the password in clear"), "{err}");
        assert!(
            !String::from_utf8_lossy(&sent).contains("Impostor-Bait-pw"),
            "password sent: {sent:?}"
        );
        assert!(
            sent.is_empty() || sent[0] != b'p',
            "a password message was sent: {sent:?}"
        );

        let md5 = [b"R".as_slice(), &12u32.to_be_bytes(), &5u32.to_be_bytes(), b"salt"].concat();
        let (err, sent) = impostor(md5).await;
        assert!(err.contains("as MD5"), "{err}");
        assert!(
            sent.is_empty() || sent[0] != b'p',
            "a password message was sent: {sent:?}"
        );
    }
}
