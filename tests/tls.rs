//! Proves the node port's mutual TLS: only certificates of this IR's CA get in, admin RPCs
//! need an admin certificate, Raft and Cluster RPCs a node certificate, a removed node's
//! certificate is refused everywhere, and junk or malformed input never stops a node serving.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use shir::cli::local_ir::LocalIr;
use shir::pki::{self, Ca, tls::client_config_mtls};
use shir::proto::{self, admin_client::AdminClient, cluster_client::ClusterClient, raft_client::RaftClient};
use shir::secrets::member_proof::MemberProof;
use shir::transport::client::tls_channel_checked;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

use common::{Steps, dir_arg, eventually};

const CALL_TIMEOUT: Duration = Duration::from_secs(8);

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// A client config presenting node `i`'s own certificate and key (with its own TLS
/// session cache, so the first connection makes a full handshake).
fn node_client(ir: &LocalIr, i: usize) -> Arc<ClientConfig> {
    let d = &ir.nodes[i].dir;
    client_config_mtls(&read(d.ca_cert_path()), &read(d.cert_path()), &read(d.key_path())).expect("node TLS config")
}

async fn connect(address: &str, config: Arc<ClientConfig>) -> Result<Channel, String> {
    tokio::time::timeout(CALL_TIMEOUT, tls_channel_checked(address, config))
        .await
        .map_err(|_| format!("connecting to {address} timed out"))?
        .map_err(|e| format!("connect: {e}"))
}

/// A client that trusts the IR's CA but has no certificate of its own.
fn anonymous_config(ca_pem: &str) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in pki::certs_from_pem(ca_pem).expect("CA PEM") {
        roots.add(cert).expect("CA into roots");
    }
    let mut anonymous = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    anonymous
}

/// Completes a TLS handshake with `config`, then reads: a server that refuses the client's
/// certificate says so with a fatal alert, which TLS 1.3 delivers on the client's first read.
async fn handshake_refusal(address: &str, config: Arc<ClientConfig>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(address).await.expect("tcp connect");
    let name = shir::pki::tls::server_name(address).expect("server name");
    let mut tls = match tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(CALL_TIMEOUT, tls.read(&mut buf)).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(n)) => format!("read {n} bytes: the server did not refuse"),
        Err(_) => "timed out: the server did not refuse".into(),
    }
}

fn describe(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// `Admin.Status` over the node port with `config`.
async fn tcp_status(address: &str, config: Arc<ClientConfig>) -> Result<proto::StatusReply, String> {
    let channel = connect(address, config).await?;
    tokio::time::timeout(CALL_TIMEOUT, AdminClient::new(channel).status(proto::StatusRequest {}))
        .await
        .map_err(|_| "Status timed out".to_string())?
        .map(tonic::Response::into_inner)
        .map_err(describe)
}

fn heartbeat_request() -> proto::HeartbeatRequest {
    proto::HeartbeatRequest {
        name: "node4".into(),
        load: None,
        sent_at_ms: shir::unix_now_ms(),
    }
}

async fn heartbeat_on(channel: Channel) -> Result<String, String> {
    tokio::time::timeout(CALL_TIMEOUT, ClusterClient::new(channel).heartbeat(heartbeat_request()))
        .await
        .map_err(|_| "Heartbeat timed out".to_string())?
        .map(|r| r.into_inner().dispatcher)
        .map_err(describe)
}

/// `Cluster.Heartbeat` over a new connection with `config`.
async fn heartbeat(address: &str, config: Arc<ClientConfig>) -> Result<String, String> {
    heartbeat_on(connect(address, config).await?).await
}

/// A Raft request, signed with `member` (a holder of the data key) if given.
async fn raft_call(
    channel: Channel,
    method: &str,
    data: Vec<u8>,
    member: Option<&MemberProof>,
) -> Result<proto::RaftPayload, tonic::Status> {
    let mut client = RaftClient::new(channel);
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let proof = member
        .map(|m| m.sign(timestamp, &shir::raft::network::proof_parts(method, &data)))
        .unwrap_or_default();
    let payload = proto::RaftPayload { data, timestamp, proof };
    let call = async {
        match method {
            "AppendEntries" => client.append_entries(payload).await,
            "Vote" => client.vote(payload).await,
            _ => client.install_snapshot(payload).await,
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("test timeout"))?
        .map(tonic::Response::into_inner)
}

/// Writes `bytes` on a plain TCP connection and waits for the node to close it.
async fn send_junk(address: String, bytes: Vec<u8>) -> Result<(), String> {
    let mut tcp = TcpStream::connect(&address).await.map_err(|e| e.to_string())?;
    let _ = tcp.write_all(&bytes).await; // the node may hang up before reading it all
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. a TLS alert
            }
        }
    })
    .await;
    closed.map_err(|_| format!("{address} kept a junk connection open for 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_admits_only_the_right_certificates() {
    let steps = Steps::new();
    steps.step("form a four-node IR");
    let (tmp, mut ir, _logs) = common::four_node_ir("tls-ir").await;
    let addr: Vec<String> = ir.nodes.iter().map(|n| n.address.clone()).collect();
    let ca_pem = read(ir.nodes[0].dir.ca_cert_path());
    let ir_id = ir.status(0).await.expect("status").ir_id;

    steps.step("(c) admin-cert issue writes an owner-only file that works against another node");
    let admin_file = tmp.path().join("ops.admin");
    let admin_path = admin_file.to_string_lossy().into_owned();
    let issue = |name: &'static str| {
        let (ir, admin_path) = (&ir, admin_path.clone());
        async move {
            ir.shir(&[
                "admin-cert",
                "issue",
                "--name",
                name,
                "--out",
                &admin_path,
                "--data-dir",
                &dir_arg(ir, 0),
            ])
            .await
        }
    };
    let out = issue("ops").await.expect("admin-cert issue");
    assert!(out.contains("ops"), "{out}");
    let mode = std::fs::metadata(&admin_file).expect("admin file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin certificate file mode {mode:o}");
    let status = ir
        .shir(&["status", "--endpoint", &addr[1], "--admin-cert", &admin_path, "--json"])
        .await
        .expect("remote status with the admin certificate");
    let status: Value = serde_json::from_str(&status).expect("status --json is JSON");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(4), "{status}");
    assert_eq!(status["ir_id"], ir_id.as_str());
    let again = issue("ops2").await;
    assert!(
        again.as_ref().is_err_and(|e| e.to_string().contains("already exists")),
        "{again:?}"
    );
    let bundle = shir::cli::client::AdminCertFile::read(&admin_file).expect("admin file parses");
    let admin = client_config_mtls(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).expect("admin TLS config");
    tcp_status(&addr[1], admin.clone())
        .await
        .expect("admin status over TCP");

    steps.step("(a) a client without a certificate is refused; the node keeps serving");
    let err = tcp_status(&addr[1], Arc::new(anonymous_config(&ca_pem)))
        .await
        .expect_err("no client certificate must be refused");
    eprintln!("no certificate: {err}");
    assert!(!err.contains("timed out"), "refused actively, not by silence: {err}");
    let alert = handshake_refusal(&addr[1], Arc::new(anonymous_config(&ca_pem))).await;
    eprintln!("no certificate, at the TLS layer: {alert}");
    assert!(
        alert.contains("CertificateRequired"),
        "refused in the handshake for want of a certificate: {alert}"
    );
    tcp_status(&addr[1], admin.clone()).await.expect("node2 still serves");

    steps.step("(b) an admin certificate from another CA (same IR id) is refused");
    let rogue_ca = Ca::generate(&ir_id, "rogue").expect("rogue CA");
    let (rogue, rogue_key) = pki::issue_admin_cert(&rogue_ca, &ir_id, "mallory").expect("rogue admin cert");
    let rogue = client_config_mtls(&ca_pem, &rogue.cert_pem, rogue_key.expose()).expect("rogue TLS config");
    let err = tcp_status(&addr[1], rogue.clone())
        .await
        .expect_err("a foreign CA's certificate must be refused");
    eprintln!("foreign CA: {err}");
    let alert = handshake_refusal(&addr[1], rogue.clone()).await;
    eprintln!("foreign CA, at the TLS layer: {alert}");
    assert!(
        alert.contains("UnknownCA"),
        "refused in the handshake as an unknown CA: {alert}"
    );
    assert!(!err.contains("timed out"), "{err}");
    tcp_status(&addr[1], admin.clone()).await.expect("node2 still serves");

    steps.step("(d) a node certificate may not call admin RPCs; an admin one may not call Cluster or Raft");
    let node3_file = tmp.path().join("node3-as-admin.pem");
    let d3 = &ir.nodes[2].dir;
    let node3_bundle = format!(
        "{}{}{}",
        read(d3.cert_path()),
        read(d3.ca_cert_path()),
        read(d3.key_path())
    );
    std::fs::write(&node3_file, node3_bundle).expect("write node3 bundle");
    let err = ir
        .shir(&[
            "status",
            "--endpoint",
            &addr[0],
            "--admin-cert",
            &node3_file.to_string_lossy(),
        ])
        .await
        .expect_err("a node certificate must not pass as an admin's");
    let err = err.to_string();
    eprintln!("node cert on Admin.Status: {err}");
    assert!(
        err.contains("may not call") && err.contains("admin certificate") && err.contains("node3"),
        "{err}"
    );
    // Nor through the node-to-node forwarding call: without the data key a node certificate
    // cannot produce the member proof the dispatcher requires.
    for target in &addr[..3] {
        let channel = connect(target, node_client(&ir, 2)).await.expect("node3 connects");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let err = ClusterClient::new(channel)
            .forward_admin(proto::ForwardedCall {
                method: "KeyShow".into(),
                request: Vec::new(),
                on_behalf_of: "local operator".into(),
                timestamp: now,
                proof: vec![0; 32],
            })
            .await
            .map(drop)
            .map_err(describe)
            .expect_err("a node certificate must not make operator calls through ForwardAdmin");
        assert!(
            err.contains("PermissionDenied") && err.contains("member proof"),
            "{target}: {err}"
        );
    }
    let err = heartbeat(&addr[0], admin.clone())
        .await
        .expect_err("an admin certificate must not call Cluster");
    assert!(
        err.contains("PermissionDenied") && err.contains("node certificate"),
        "{err}"
    );
    let channel = connect(&addr[0], admin.clone()).await.expect("connect");
    let err = raft_call(channel, "Vote", b"{}".to_vec(), None)
        .await
        .map(drop)
        .map_err(describe)
        .expect_err("an admin certificate must not call Raft");
    assert!(err.contains("PermissionDenied"), "{err}");

    steps.step("(f) junk on the port (random bytes, bogus TLS records, cleartext HTTP) is dropped");
    let mut junk = Vec::new();
    junk.push((0..64 * 1024).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    let mut record = vec![0x16, 0x03, 0x01, 0x00, 0x40]; // a handshake record, but no ClientHello
    record.extend((0..64).map(|_| rand::random::<u8>()));
    junk.push(record);
    let mut alert = vec![0x15, 0x03, 0x03, 0x40, 0x00]; // an alert record claiming 16 KiB
    alert.extend((0..128).map(|_| rand::random::<u8>()));
    junk.push(alert);
    junk.push(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec());
    junk.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    let sent: Vec<_> = junk
        .into_iter()
        .map(|bytes| tokio::spawn(send_junk(addr[1].clone(), bytes)))
        .collect();
    // 150 idle connections from one other address (127.0.0.9) that never say anything: the
    // node caps handshakes in flight per address, so they cannot crowd out anyone else.
    let mut idle = Vec::new();
    for _ in 0..150 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.9:0".parse().unwrap()).expect("bind 127.0.0.9");
        idle.push(socket.connect(addr[1].parse().unwrap()).await.expect("idle connect"));
    }
    tcp_status(&addr[1], admin.clone())
        .await
        .expect("node2 serves while junk and idle connections are open");
    for task in sent {
        task.await
            .expect("junk task")
            .expect("the node closed the junk connection");
    }
    drop(idle);
    tcp_status(&addr[1], admin.clone()).await.expect("node2 still serves");

    steps.step("(g) Raft messages: a node certificate alone is no Raft peer; malformed and oversized ones are refused");
    let node3 = node_client(&ir, 2);
    let node3_data_key = shir::secrets::load_data_key(ir.nodes[2].dir.root()).expect("node3's data key");
    let member = MemberProof::new(&node3_data_key, shir::raft::network::PROOF_PURPOSE);
    for method in ["AppendEntries", "Vote", "InstallSnapshot"] {
        let channel = connect(&addr[0], node3.clone()).await.expect("node3 connects");
        let err = raft_call(channel, method, b"\x00not json{".to_vec(), None)
            .await
            .expect_err("an unsigned Raft message");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{method}: {err:?}");
        assert!(err.message().contains("member proof"), "{method}: {err:?}");
        let channel = connect(&addr[0], node3.clone()).await.expect("node3 connects");
        let err = raft_call(channel, method, b"\x00not json{".to_vec(), Some(&member))
            .await
            .expect_err("malformed Raft payload");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{method}: {err:?}");
        assert!(err.message().contains("malformed"), "{method}: {err:?}");
    }
    let channel = connect(&addr[0], node3.clone()).await.expect("node3 connects");
    let oversized = shir::raft::network::MAX_MESSAGE + 1;
    let err = raft_call(channel, "AppendEntries", vec![b'x'; oversized], Some(&member))
        .await
        .expect_err("a Raft payload over the limit");
    eprintln!("oversized AppendEntries: {:?}: {}", err.code(), err.message());
    assert_eq!(err.code(), tonic::Code::OutOfRange, "refused for its size: {err:?}");
    tcp_status(&addr[0], admin.clone()).await.expect("node1 still serves");
    let status = ir
        .wait_all_online(0, Duration::from_secs(20))
        .await
        .expect("IR healthy");
    assert!(!status.dispatcher.is_empty());

    steps.step("(e) remove node4: its certificate is refused by every remaining node");
    // `resuming` keeps the TLS session tickets node4 earned before its removal; fresh
    // configs (`node_client` per attempt) make full handshakes.
    let resuming = node_client(&ir, 3);
    let node4_serial = pki::cert_summary(&read(ir.nodes[3].dir.cert_path()))
        .expect("node4 cert")
        .serial_hex;
    let dispatcher = ir.dispatcher(0).await.expect("dispatcher");
    for a in &addr[..3] {
        heartbeat(a, resuming.clone())
            .await
            .expect("node4's certificate works before removal");
    }
    // A connection node4 opened before its removal, to the dispatcher.
    let held = connect(&addr[dispatcher], node_client(&ir, 3)).await.expect("connect");
    heartbeat_on(held.clone()).await.expect("heartbeat before removal");

    let out = ir
        .shir(&["node", "remove", "node4", "--json", "--data-dir", &dir_arg(&ir, 1)])
        .await
        .expect("node remove node4");
    let removed: Value = serde_json::from_str(&out).expect("node remove --json is JSON");
    assert_eq!(removed["removed"], "node4");
    assert_eq!(removed["revoked_serial"], node4_serial.as_str());
    for a in &addr[..3] {
        let err = eventually("node4's certificate to be refused", Duration::from_secs(20), || {
            let node4 = node_client(&ir, 3);
            async move {
                match heartbeat(a, node4).await {
                    Ok(_) => Err(format!("{a} still accepts node4")),
                    Err(e) => Ok(e),
                }
            }
        })
        .await;
        eprintln!("node4 at {a}: {err}");
        assert!(!err.contains("timed out"), "{err}");
    }
    // node4 itself learns it was removed (its serial is on the list it replicates) and stops.
    let code = ir.wait_exit(3, Duration::from_secs(20)).await;
    assert_eq!(
        code,
        Some(3),
        "node4 should stop by itself once its certificate is revoked"
    );
    let log = std::fs::read_to_string(&ir.nodes[3].log).expect("node4 log");
    assert!(
        log.contains("removed from the integration runtime"),
        "node4's log says why:\n{log}"
    );
    let status = eventually("status to list three Online nodes", Duration::from_secs(20), || {
        let ir = &ir;
        async move {
            let s = ir.status(1).await.map_err(|e| e.to_string())?;
            let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
            if names == ["node1", "node2", "node3"]
                && s.nodes.iter().all(|n| n.status == "Online" && n.raft_role == "Voter")
            {
                Ok(s)
            } else {
                Err(format!("{:?}", s.nodes))
            }
        }
    })
    .await;
    assert!(!status.dispatcher.is_empty() && status.dispatcher != "node4");
    let view = ir.local_view(0).await.expect("local view");
    assert_eq!(view.voters.len() + view.learners.len(), 3, "{view:?}");
    tcp_status(&addr[2], admin.clone())
        .await
        .expect("node3 serves the admin");

    steps.step("(e) nor can node4 get in by resuming a TLS session or over a connection it already had");
    let mut breaches = Vec::new();
    for a in &addr[..3] {
        match heartbeat(a, resuming.clone()).await {
            Ok(_) => breaches.push(format!(
                "{a} accepted node4 on a resumed TLS session (session ticket from before the removal)"
            )),
            Err(e) => eprintln!("node4 resuming at {a}: {e}"),
        }
    }
    match heartbeat_on(held.clone()).await {
        Ok(_) => breaches.push(format!(
            "{} still answers node4's Heartbeat on a connection opened before the removal",
            addr[dispatcher]
        )),
        Err(e) => eprintln!("node4's old connection, Heartbeat: {e}"),
    }
    let forwarded = tokio::time::timeout(
        CALL_TIMEOUT,
        ClusterClient::new(held).forward_admin(proto::ForwardedCall {
            method: "KeyShow".into(),
            request: Vec::new(),
            on_behalf_of: "removed node4".into(),
            timestamp: 0,
            proof: Vec::new(),
        }),
    )
    .await;
    match forwarded {
        Ok(Ok(reply)) => {
            let keys = <proto::KeyShowReply as prost::Message>::decode(reply.into_inner().response.as_slice());
            let leaked = keys.is_ok_and(|k| k.key1.starts_with("SHIR1@"));
            breaches.push(format!(
                "{} ran ForwardAdmin(KeyShow) for node4 on its old connection (authentication keys returned: {leaked})",
                addr[dispatcher]
            ));
        }
        Ok(Err(status)) => {
            eprintln!("node4's old connection, ForwardAdmin: {}", describe(status.clone()));
            assert!(status.message().contains("revoked"), "refused as revoked: {status:?}");
        }
        Err(_) => breaches.push("ForwardAdmin on node4's old connection timed out instead of being refused".into()),
    }
    assert!(
        breaches.is_empty(),
        "a removed node keeps member access:\n{}",
        breaches.join("\n")
    );

    steps.step("(f) silent connections from one address do not lock other clients out");
    // Each accepted connection holds a handshake slot until it speaks or times out (1 s).
    // A client that opens more than the node has slots must not stop everyone else.
    let mut silent = Vec::new();
    for _ in 0..150 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.9:0".parse().expect("addr"))
            .expect("bind 127.0.0.9");
        silent.push(
            socket
                .connect(addr[1].parse().expect("addr"))
                .await
                .expect("silent connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let result = ir
        .shir(&["status", "--endpoint", &addr[1], "--admin-cert", &admin_path])
        .await;
    drop(silent);
    assert!(
        result.is_ok(),
        "with 150 silent connections from 127.0.0.9 open, an admin at 127.0.0.1 cannot reach {}: {}",
        addr[1],
        result.err().map(|e| e.to_string()).unwrap_or_default()
    );

    steps.step("done");
    ir.stop_all().await;
}
