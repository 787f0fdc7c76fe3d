//! Bad input at the node port, beyond what tests/tls.rs (junk bytes, missing and foreign
//! certificates, malformed and oversized AppendEntries) and tests/admission.rs (wrong, stale,
//! garbled keys) try: handshakes that offer no usable protocol, garbage HTTP/2 and gRPC
//! frames over valid mutual TLS, truncated protobufs, oversized messages on every service,
//! a flood of bodies that never end, a replayed `Join` proof and a `Join` flood. Each is
//! refused with a clear error; the IR stays formed (same dispatcher, same term), keeps
//! committing writes, and the node's resident memory stays bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use rustls::ClientConfig;
use shir::auth_key::AuthKey;
use shir::cli::local_ir::LocalIr;
use shir::node::provision::join_request;
use shir::pki::tls::{client_config_join, client_config_mtls};
use shir::proto::{self, admin_client::AdminClient, cluster_client::ClusterClient, join_client::JoinClient};
use shir::secrets::member_proof::MemberProof;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::clients::{
    CALL_TIMEOUT, anonymous_config, connect, handshake_refusal, node_client, raft_call, read, send_junk, tcp_status,
};
use common::{Steps, dir_arg, eventually};

/// How much a node's resident memory may grow while a flood is held open: far less than the
/// flood would cost if the node buffered what it is sent.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// VmRSS of node `i`'s process, in KiB.
fn rss_kib(ir: &LocalIr, i: usize) -> u64 {
    let pid = ir.nodes[i].pid().expect("the node is running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Sends message bytes as they are: tonic frames them, nothing checks they are a protobuf.
#[derive(Clone, Copy)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// A unary call of `path` whose message is `body`, whatever it holds.
async fn raw_call(channel: Channel, path: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = http::uri::PathAndQuery::try_from(path.to_string()).expect("a gRPC path");
    let call = async {
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| Status::deadline_exceeded("test timeout: the node did not answer"))?
}

fn show(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Sends a few random byte strings as messages to each of `paths`: each call is answered
/// (decoded and refused, or decoded into some request and handled), the connection survives.
async fn random_messages(channel: &Channel, paths: &[&str]) {
    for path in paths {
        for _ in 0..8 {
            let body = random_bytes(rand::random::<usize>() % 512);
            match raw_call(channel.clone(), path, body).await {
                Ok(_) => eprintln!("{path} with random bytes: accepted (they decoded to a valid request)"),
                Err(e) => {
                    assert_ne!(e.code(), Code::DeadlineExceeded, "{path}: {}", show(&e));
                    assert_ne!(
                        e.code(),
                        Code::Unavailable,
                        "{path}: the connection broke: {}",
                        show(&e)
                    );
                }
            }
        }
    }
}

/// An HTTP/2 connection of our own over TLS with `config`, for frames tonic would not send.
async fn h2_connect(address: &str, config: Arc<ClientConfig>) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tls = shir::transport::client::connect_tls(address, config)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Starts a gRPC call of `path` and sends `body` on it; the stream stays open unless `end`.
async fn h2_start(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    h2_try_start(send, path, body, end).await.expect("send data")
}

/// [`h2_start`], where the node may reset the stream before its body goes out (a node under
/// a flood refusing more): that is an answer, not a failure of the test.
async fn h2_try_start(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
    end: bool,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
    let request = http::Request::post(format!("https://node{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request head");
    let mut ready = send.clone().ready().await.expect("connection ready");
    let (response, mut stream) = ready.send_request(request, false).expect("open a stream");
    stream.send_data(body, end)?;
    Ok((response, stream))
}

/// The gRPC status a raw call ended with (from the headers of a trailers-only answer, or the
/// trailers), or how the stream failed.
async fn grpc_outcome(response: h2::client::ResponseFuture) -> Result<(Code, String), String> {
    let answer = async {
        let (head, mut body) = response.await.map_err(|e| format!("stream failed: {e}"))?.into_parts();
        let mut fields = head.headers;
        if !fields.contains_key("grpc-status") {
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| format!("body failed: {e}"))?;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            fields = body
                .trailers()
                .await
                .map_err(|e| format!("trailers failed: {e}"))?
                .unwrap_or_default();
        }
        let code = fields
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .ok_or_else(|| format!("no grpc-status in {fields:?}"))?;
        let message = fields
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        Ok((Code::from(code), message))
    };
    tokio::time::timeout(CALL_TIMEOUT, answer)
        .await
        .map_err(|_| "the node did not answer in time".to_string())?
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC length-prefixed message: uncompressed, the given declared length, then `body`.
fn grpc_frame(declared_len: u32, body: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&declared_len.to_be_bytes());
    frame.extend_from_slice(body);
    frame.into()
}

/// Completes a TLS handshake with `config`, writes `bytes` and waits for the node to hang up.
async fn tls_junk(address: &str, config: Arc<ClientConfig>, bytes: &[u8]) -> Result<(), String> {
    let mut tls = shir::transport::client::connect_tls(address, config)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // SETTINGS, GOAWAY
            }
        }
    })
    .await;
    closed.map_err(|_| format!("{address} kept a connection with garbage HTTP/2 open for 10 s"))
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// What must hold after each attack: node `via` answers `Status` over TCP with every node of
/// `online` Online, a write through it commits, and the dispatcher is still `dispatcher` in
/// the same term (a flood that starved heartbeats would have caused an election).
async fn still_serving(
    ir: &LocalIr,
    admin: &Arc<ClientConfig>,
    via: usize,
    online: &[&str],
    dispatcher: (usize, u64),
    label: &str,
) {
    let status = tcp_status(&ir.nodes[via].address, admin.clone())
        .await
        .unwrap_or_else(|e| panic!("after {label}: {} does not answer Status: {e}", ir.nodes[via].name));
    for name in online {
        let node = status.nodes.iter().find(|n| n.name == *name);
        assert!(
            node.is_some_and(|n| n.status() == proto::NodeHealth::Online),
            "after {label}: {name} is not Online: {:?}",
            status.nodes
        );
    }
    let written = ir
        .admin(via)
        .await
        .expect("local admin socket")
        .put(proto::PutRequest {
            key: format!("edge/{label}"),
            value: "still committing".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("after {label}: a write through {} failed: {e}", ir.nodes[via].name));
    assert!(written.into_inner().log_index > 0);
    let (d, term) = dispatcher;
    let view = ir.local_view(d).await.expect("dispatcher's local view");
    assert!(
        view.is_leader && view.term == term,
        "after {label}: {} should still lead in term {term}; now leader {:?} in term {} (an election happened)",
        ir.nodes[d].name,
        view.leader_name,
        view.term
    );
}

/// Issues an admin certificate and returns a client config presenting it.
async fn admin_config(ir: &LocalIr, dir: &std::path::Path) -> Arc<ClientConfig> {
    let file = dir.join("edge.admin");
    let path = file.to_string_lossy().into_owned();
    ir.shir(&[
        "admin-cert",
        "issue",
        "--name",
        "edge",
        "--out",
        &path,
        "--data-dir",
        &dir_arg(ir, 0),
    ])
    .await
    .expect("admin-cert issue");
    let bundle = shir::cli::client::AdminCertFile::read(&file).expect("admin certificate file");
    client_config_mtls(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).expect("admin TLS config")
}

/// `Join` over the joiners' ALPN at `address`.
async fn join_call(
    address: String,
    tls: Arc<ClientConfig>,
    req: proto::JoinRequest,
) -> Result<proto::JoinResponse, Status> {
    let channel = connect(&address, tls).await.map_err(Status::unavailable)?;
    tokio::time::timeout(Duration::from_secs(20), JoinClient::new(channel).join(req))
        .await
        .map_err(|_| Status::deadline_exceeded("test timeout: Join did not answer"))?
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_at_the_edge_is_refused_and_the_ir_keeps_serving() {
    let steps = Steps::new();
    steps.step("form a four-node IR");
    let (tmp, mut ir, _logs) = common::four_node_ir("edge-ir").await;
    let addr: Vec<String> = ir.nodes.iter().map(|n| n.address.clone()).collect();
    let all = ["node1", "node2", "node3", "node4"];
    let admin = admin_config(&ir, tmp.path()).await;
    let d = ir.dispatcher(0).await.expect("a dispatcher");
    let term = ir.local_view(d).await.expect("local view").term;
    // The node attacked: a follower, so its joins are forwarded to the dispatcher over the
    // same connection as its Raft traffic.
    let victim = (d + 1) % 4;
    let target = addr[victim].clone();
    let ca_pem = read(ir.nodes[0].dir.ca_cert_path());
    let key = AuthKey::parse(&ir.key1(0).await.expect("key1")).expect("key1 parses");
    let joiner_tls = client_config_join(key.ca_pin).expect("joiner TLS config");
    let rss_start = (rss_kib(&ir, victim), rss_kib(&ir, d));
    eprintln!(
        "dispatcher {} (term {term}); attacking {} at {target}; VmRSS {} / {} KiB",
        ir.nodes[d].name, ir.nodes[victim].name, rss_start.0, rss_start.1
    );

    steps.step("hellos that offer no usable protocol, and the joiners' protocol used for other services");
    let mut no_alpn = anonymous_config(&ca_pem);
    no_alpn.alpn_protocols.clear();
    let refusal = handshake_refusal(&target, Arc::new(no_alpn)).await;
    eprintln!("no ALPN, no certificate: {refusal}");
    assert!(refusal.contains("CertificateRequired"), "{refusal}");
    let mut http1 = anonymous_config(&ca_pem);
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let refusal = handshake_refusal(&target, Arc::new(http1)).await;
    eprintln!("ALPN http/1.1: {refusal}");
    assert!(
        refusal.contains("NoApplicationProtocol") || refusal.contains("CertificateRequired"),
        "{refusal}"
    );
    let joiner = connect(&target, joiner_tls.clone())
        .await
        .expect("a joiner connects without a certificate");
    for path in [
        "/shir.v1.Admin/Status",
        "/shir.v1.Admin/KeyShow",
        "/shir.v1.Cluster/Heartbeat",
        "/shir.v1.Cluster/ForwardJoin",
        "/shir.v1.Raft/Vote",
    ] {
        let err = raw_call(joiner.clone(), path, Vec::new())
            .await
            .expect_err("a joiner may call Join alone");
        eprintln!("joiner calls {path}: {}", show(&err));
        assert_eq!(err.code(), Code::Unimplemented, "{path}: {}", show(&err));
    }
    still_serving(&ir, &admin, victim, &all, (d, term), "hellos").await;

    steps.step("valid mutual TLS, then garbage instead of HTTP/2");
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut garbage: Vec<(&str, Vec<u8>)> = vec![("random bytes, no preface", random_bytes(16 * 1024))];
    let mut frames = preface.clone();
    frames.extend(random_bytes(16 * 1024));
    garbage.push(("preface, then random frames", frames));
    // HEADERS on stream 1 whose header block is not HPACK.
    let mut bad_hpack = preface.clone();
    bad_hpack.extend(settings);
    bad_hpack.extend([0, 0, 16, 1, 4, 0, 0, 0, 1]);
    bad_hpack.extend([0xff; 16]);
    garbage.push(("HEADERS with a corrupt header block", bad_hpack));
    // A DATA frame claiming 16 MiB, more than any frame may be.
    let mut huge_frame = preface.clone();
    huge_frame.extend(settings);
    huge_frame.extend([0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]);
    huge_frame.extend(random_bytes(1024));
    garbage.push(("a frame longer than the maximum frame size", huge_frame));
    // DATA on a stream that was never opened.
    let mut orphan = preface.clone();
    orphan.extend(settings);
    orphan.extend([0, 0, 4, 0, 1, 0, 0, 0, 7, 1, 2, 3, 4]);
    garbage.push(("DATA on a stream never opened", orphan));
    for (what, bytes) in &garbage {
        tls_junk(&target, admin.clone(), bytes)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!("{what}: connection closed");
    }
    still_serving(&ir, &admin, victim, &all, (d, term), "garbage HTTP/2").await;

    steps.step("valid HTTP/2, broken gRPC: unknown method, random messages, truncated protobufs, lying frames");
    let channel = connect(&target, admin.clone()).await.expect("admin connects");
    let err = raw_call(channel.clone(), "/shir.Nope/Nothing", Vec::new())
        .await
        .expect_err("an unknown service");
    eprintln!("unknown service: {}", show(&err));
    assert_eq!(err.code(), Code::Unimplemented);
    random_messages(
        &channel,
        &[
            "/shir.v1.Admin/Put",
            "/shir.v1.Admin/JobSubmit",
            "/shir.v1.Admin/LinkedServiceCreate",
            "/shir.v1.Admin/Get",
        ],
    )
    .await;
    // With a node's certificate: the member services.
    let peer = (victim + 1) % 4;
    let node_channel = connect(&target, node_client(&ir, peer)).await.expect("a node connects");
    random_messages(
        &node_channel,
        &[
            "/shir.v1.Raft/AppendEntries",
            "/shir.v1.Raft/Vote",
            "/shir.v1.Cluster/Heartbeat",
            "/shir.v1.Cluster/JobReport",
            "/shir.v1.Cluster/ForwardAdmin",
        ],
    )
    .await;
    let put = prost::Message::encode_to_vec(&proto::PutRequest {
        key: "edge/truncated".into(),
        value: "x".repeat(200),
    });
    let raft = prost::Message::encode_to_vec(&proto::RaftPayload {
        data: vec![1; 200],
        timestamp: shir::unix_now(),
        proof: vec![0; 32],
    });
    let join = prost::Message::encode_to_vec(&join_request(&key, "node9", "127.0.0.9:9", &[0x30; 200]));
    let truncated = [
        (&channel, "/shir.v1.Admin/Put", "PutRequest", &put),
        (&node_channel, "/shir.v1.Raft/AppendEntries", "RaftPayload", &raft),
        (&joiner, "/shir.v1.Join/Join", "JoinRequest", &join),
    ];
    for (via, path, what, message) in truncated {
        for cut in [1, message.len() / 2, message.len() - 1] {
            let err = raw_call(via.clone(), path, message[..cut].to_vec())
                .await
                .expect_err("a truncated message");
            eprintln!("{what} cut to {cut} of {} bytes: {}", message.len(), show(&err));
            assert_eq!(err.code(), Code::Internal, "{}", show(&err));
            assert!(err.message().contains("decode"), "{}", show(&err));
        }
    }
    let got = AdminClient::new(channel.clone())
        .get(proto::GetRequest {
            key: "edge/truncated".into(),
        })
        .await
        .expect("Get")
        .into_inner();
    assert!(!got.found, "a truncated Put must write nothing");
    let mut h2 = h2_connect(&target, admin.clone())
        .await
        .expect("HTTP/2 over mutual TLS");
    let lying: Vec<(&str, Bytes)> = vec![
        (
            "a frame declaring 100 bytes that ends after 10",
            grpc_frame(100, &[0x0a; 10]),
        ),
        ("a frame flagged compressed without an encoding", {
            let mut f = grpc_frame(2, &[0x0a, 0]).to_vec();
            f[0] = 1;
            f.into()
        }),
        ("a frame with an unknown flag", {
            let mut f = grpc_frame(2, &[0x0a, 0]).to_vec();
            f[0] = 0x80;
            f.into()
        }),
        ("half a frame header", Bytes::from_static(&[0, 0, 0])),
        ("two messages for a unary call", {
            let mut f = grpc_frame(0, &[]).to_vec();
            f.extend_from_slice(&grpc_frame(0, &[]));
            f.into()
        }),
    ];
    for (what, body) in lying {
        let (response, _stream) = h2_start(&mut h2, "/shir.v1.Admin/Status", body, true).await;
        let outcome = grpc_outcome(response).await;
        eprintln!("{what}: {outcome:?}");
        match outcome {
            Ok((code, message)) => {
                // Two empty messages for a unary call: tonic reads the first and answers.
                if what.starts_with("two") {
                    continue;
                }
                assert!(code != Code::Ok && !message.is_empty(), "{what}: {code:?} {message}");
            }
            Err(e) => assert!(!e.contains("in time"), "{what}: {e}"),
        }
    }
    still_serving(&ir, &admin, victim, &all, (d, term), "broken gRPC").await;

    steps.step("oversized messages on Admin, Cluster, Raft and Join");
    let over = shir::raft::network::MAX_MESSAGE + 1;
    let err = AdminClient::new(channel.clone())
        .put(proto::PutRequest {
            key: "edge/oversized".into(),
            value: "x".repeat(over),
        })
        .await
        .expect_err("an oversized Put");
    eprintln!("Admin.Put of {over} bytes: {}", show(&err));
    assert_eq!(err.code(), Code::OutOfRange, "{}", show(&err));
    let err = ClusterClient::new(node_channel.clone())
        .heartbeat(proto::HeartbeatRequest {
            name: "x".repeat(over),
            load: None,
            sent_at_ms: 0,
            protocol_version: shir::protocol::PROTOCOL_VERSION,
        })
        .await
        .expect_err("an oversized Heartbeat");
    eprintln!("Cluster.Heartbeat of {over} bytes: {}", show(&err));
    assert_eq!(err.code(), Code::OutOfRange, "{}", show(&err));
    let data_key = shir::secrets::load_data_key(ir.nodes[peer].dir.root()).expect("a node's data key");
    let member = MemberProof::new(&data_key, shir::raft::network::PROOF_PURPOSE);
    let err = raft_call(node_channel.clone(), "InstallSnapshot", vec![0; over], Some(&member))
        .await
        .expect_err("an oversized InstallSnapshot");
    eprintln!("Raft.InstallSnapshot of {over} bytes: {}", show(&err));
    assert_eq!(err.code(), Code::OutOfRange, "{}", show(&err));
    let mut oversized_join = join_request(&key, "node9", "127.0.0.9:9", &[]);
    oversized_join.csr_der = vec![0x30; 5 << 20];
    let err = join_call(target.clone(), joiner_tls.clone(), oversized_join)
        .await
        .expect_err("an oversized Join");
    eprintln!("Join with a 5 MiB CSR: {}", show(&err));
    assert_eq!(err.code(), Code::OutOfRange, "{}", show(&err));
    // A frame header declaring 4 GiB: refused from the header, nothing allocated for it.
    let (response, _stream) = h2_start(&mut h2, "/shir.v1.Admin/Status", grpc_frame(u32::MAX, &[0; 64]), false).await;
    let outcome = grpc_outcome(response).await;
    eprintln!("a frame declaring {} bytes: {outcome:?}", u32::MAX);
    assert!(matches!(outcome, Ok((Code::OutOfRange, _))), "{outcome:?}");
    still_serving(&ir, &admin, victim, &all, (d, term), "oversized messages").await;

    steps.step("floods: junk connections, Join attempts, and Join bodies that never end");
    let rss_before = (rss_kib(&ir, victim), rss_kib(&ir, d));
    let junk: Vec<_> = (0..64)
        .map(|_| tokio::spawn(send_junk(target.clone(), random_bytes(256 * 1024))))
        .collect();
    for task in junk {
        task.await
            .expect("junk task")
            .expect("the node closed the junk connection");
    }
    // Join attempts as `shir register` sends them, with the real key and with a secret that
    // is not the IR's, and attempts with garbage in every field; to the victim (forwarded
    // to the dispatcher) and to the dispatcher itself.
    let csr = shir::pki::make_csr(shir::pki::new_private_key().expect("key").expose(), "flood").expect("CSR");
    let mut attempts = Vec::new();
    let flood_started = Instant::now();
    for i in 0..360usize {
        let name = format!("flood{i}");
        let address = format!("127.0.0.9:{}", 1000 + i);
        let req = if i % 3 == 2 {
            // With the real key: the proof holds, the IR (four nodes) has no room.
            join_request(&key, &name, &address, &csr)
        } else if i % 3 == 0 {
            join_request(&common::with_random_secret(&key), &name, &address, &csr)
        } else {
            proto::JoinRequest {
                ir_id: hex_string(16),
                key_slot: rand::random::<u32>() % 4,
                name: String::from_utf8_lossy(&random_bytes(12)).into_owned(),
                address: String::from_utf8_lossy(&random_bytes(12)).into_owned(),
                csr_der: random_bytes(300),
                timestamp: rand::random(),
                nonce: random_bytes(rand::random::<usize>() % 40),
                proof: random_bytes(rand::random::<usize>() % 40),
                protocol_version: shir::protocol::PROTOCOL_VERSION,
            }
        };
        attempts.push(req);
    }
    // Twelve connections (more from one address would be turned away at the handshake, see
    // tests/tls.rs), thirty calls in flight on each.
    let mut channels = Vec::new();
    for c in 0..12 {
        let to = if c % 3 == 0 { &addr[d] } else { &target };
        channels.push(connect(to, joiner_tls.clone()).await.expect("a joiner connects"));
    }
    let attempts: Vec<_> = attempts
        .into_iter()
        .enumerate()
        .map(|(i, req)| {
            let channel = channels[i % channels.len()].clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(30), JoinClient::new(channel).join(req))
                    .await
                    .map_err(|_| Status::deadline_exceeded("test timeout: Join did not answer"))?
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    for a in attempts {
        match a.await.expect("join task") {
            Ok(reply) => panic!("a flooded Join was admitted: node id {}", reply.node_id),
            Err(e) => {
                assert!(
                    matches!(
                        e.code(),
                        Code::PermissionDenied | Code::InvalidArgument | Code::FailedPrecondition
                    ),
                    "{}",
                    show(&e)
                );
                *refusals.entry(show(&e)).or_default() += 1;
            }
        }
    }
    eprintln!(
        "360 Join attempts refused in {:.1}s: {refusals:#?}",
        flood_started.elapsed().as_secs_f64()
    );
    drop((channels, joiner));
    // Bodies that never end: 40 joiners' connections, eight streams on each, each stream
    // declaring a Join of almost 4 MiB and sending 1 MiB of it.
    let (mut held, mut conns, mut refused_conns, mut queued_streams) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut reset_streams = 0;
    let mib = vec![0x0a; 1 << 20];
    for _ in 0..40 {
        let mut conn = match h2_connect(&target, joiner_tls.clone()).await {
            Ok(c) => c,
            Err(e) => {
                refused_conns.push(e);
                continue;
            }
        };
        for _ in 0..8 {
            let body = grpc_frame((4 << 20) - 64, &mib);
            // The node may allow fewer streams per connection; the client then waits.
            match tokio::time::timeout(
                Duration::from_secs(1),
                h2_try_start(&mut conn, "/shir.v1.Join/Join", body, false),
            )
            .await
            {
                Ok(Ok(started)) => held.push(started),
                Ok(Err(_)) => reset_streams += 1,
                Err(_) => queued_streams += 1,
            }
        }
        conns.push(conn);
    }
    eprintln!(
        "joiners' connections: {} open, {} refused ({:?}); streams: {} started, {reset_streams} reset by the node before their body, {queued_streams} held back by the node's stream limit",
        conns.len(),
        refused_conns.len(),
        refused_conns.first(),
        held.len()
    );
    assert!(
        !refused_conns.is_empty(),
        "the node let a stranger hold 40 joiners' connections open at once"
    );
    let mut peak = (rss_before.0, rss_before.1);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        peak = (peak.0.max(rss_kib(&ir, victim)), peak.1.max(rss_kib(&ir, d)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    let (responses, streams): (Vec<_>, Vec<_>) = held.into_iter().unzip();
    for outcome in futures::future::join_all(responses.into_iter().map(grpc_outcome)).await {
        let outcome = outcome.map_or_else(|e| e, |(code, message)| format!("{code:?}: {message}"));
        *answers.entry(outcome).or_default() += 1;
    }
    drop(streams);
    eprintln!("what the never-ending Join bodies got: {answers:#?}");
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = (rss_kib(&ir, victim), rss_kib(&ir, d));
    eprintln!(
        "VmRSS KiB, {} (attacked) / {} (dispatcher): before floods {} / {}, peak while held {} / {}, after {} / {}",
        ir.nodes[victim].name, ir.nodes[d].name, rss_before.0, rss_before.1, peak.0, peak.1, rss_after.0, rss_after.1
    );
    for (what, before, peak) in [
        ("attacked node", rss_before.0, peak.0),
        ("dispatcher", rss_before.1, peak.1),
    ] {
        assert!(
            peak.saturating_sub(before) < RSS_GROWTH_BOUND_KIB,
            "the {what}'s memory grew by {} KiB under the floods (bound {RSS_GROWTH_BOUND_KIB} KiB)",
            peak - before
        );
    }
    still_serving(&ir, &admin, victim, &all, (d, term), "floods").await;
    assert_eq!(
        ir.status(victim).await.expect("status").nodes.len(),
        4,
        "no flooded Join was admitted"
    );

    steps.step("a replayed Join proof: remove a node to make room, send one captured request many times");
    // Neither the dispatcher nor the attacked node, so both keep their roles.
    let gone = (0..4).rev().find(|&i| i != d && i != victim).expect("a fourth node");
    ir.shir(&["node", "remove", &ir.nodes[gone].name, "--data-dir", &dir_arg(&ir, d)])
        .await
        .expect("node remove");
    assert_eq!(
        ir.wait_exit(gone, Duration::from_secs(20)).await,
        Some(3),
        "the removed node stops"
    );
    let key = AuthKey::parse(&ir.key1(0).await.expect("key1")).expect("key1 parses");
    let csr = shir::pki::make_csr(shir::pki::new_private_key().expect("key").expose(), "node5").expect("CSR");
    let captured = join_request(&key, "node5", &addr[gone], &csr);
    let members: Vec<usize> = (0..4).filter(|&i| i != gone).collect();
    let mut sends = Vec::new();
    for _ in 0..4 {
        for &m in &members {
            let a = &addr[m];
            sends.push(tokio::spawn(join_call(a.clone(), joiner_tls.clone(), captured.clone())));
        }
    }
    let mut admitted = Vec::new();
    for s in sends {
        match s.await.expect("join task") {
            Ok(reply) => admitted.push(reply.node_id),
            Err(e) => {
                assert_eq!(e.code(), Code::PermissionDenied, "{}", show(&e));
                assert!(e.message().contains("already used"), "{}", show(&e));
            }
        }
    }
    eprintln!("one Join request sent 12 times at once: admitted {admitted:?}, the rest refused as already used");
    assert_eq!(admitted.len(), 1, "exactly one of the copies is admitted");
    for &m in &members {
        let a = &addr[m];
        let err = join_call(a.clone(), joiner_tls.clone(), captured.clone())
            .await
            .expect_err("a replay after the admission");
        assert!(err.message().contains("already used"), "{}", show(&err));
    }
    let mut renamed = captured.clone();
    renamed.name = "node6".into();
    let err = join_call(target.clone(), joiner_tls.clone(), renamed)
        .await
        .expect_err("the captured proof under another name");
    eprintln!("captured proof under another name: {}", show(&err));
    assert!(err.message().contains("authentication key rejected"), "{}", show(&err));
    let mut expected: Vec<String> = members.iter().map(|&m| ir.nodes[m].name.clone()).collect();
    expected.push("node5".into());
    assert_eq!(node_names(&ir, victim).await, expected, "node5 admitted once");

    steps.step("the replay after a dispatcher failover: refused from the replicated state");
    ir.kill(d).await.expect("kill the dispatcher");
    let via = victim;
    let new_d = eventually("a new dispatcher", Duration::from_secs(20), || {
        let ir = &ir;
        async move {
            match ir.dispatcher(via).await {
                Ok(n) if n != d => Ok(n),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let err = join_call(addr[via].clone(), joiner_tls.clone(), captured.clone())
        .await
        .expect_err("a replay to the new dispatcher");
    eprintln!("replay after failover to {}: {}", ir.nodes[new_d].name, show(&err));
    assert!(err.message().contains("already used"), "{}", show(&err));
    ir.start(d).await.expect("restart the old dispatcher");
    let term = ir.local_view(new_d).await.expect("local view").term;
    let three: Vec<&str> = members.iter().map(|&m| ir.nodes[m].name.as_str()).collect();
    eventually("the old dispatcher to be Online again", Duration::from_secs(20), || {
        let ir = &ir;
        async move {
            let s = ir.status(via).await.map_err(|e| e.to_string())?;
            let online = s
                .nodes
                .iter()
                .filter(|n| n.status() == proto::NodeHealth::Online)
                .count();
            if online == 3 {
                Ok(())
            } else {
                Err(format!("{:?}", s.nodes))
            }
        }
    })
    .await;
    // The restarted node's first reports may still list peers it has not reached yet.
    let others: Vec<&str> = three.iter().copied().filter(|n| *n != ir.nodes[d].name).collect();
    still_serving(&ir, &admin, via, &others, (new_d, term), "replayed joins").await;
    assert_eq!(node_names(&ir, d).await, expected, "the restarted node agrees");
    steps.step("done");
    ir.stop_all().await;
}

/// The members node `i` lists, in its order.
async fn node_names(ir: &LocalIr, i: usize) -> Vec<String> {
    let status = ir.status(i).await.expect("status");
    status.nodes.into_iter().map(|n| n.name).collect()
}

fn hex_string(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}
