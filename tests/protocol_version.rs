//! A node of another protocol version is refused in one line: a joiner gets the line from
//! `Join` and nothing is written; a member's heartbeats are refused, its load is ignored and
//! `status` shows it Limited with the line as the reason.

mod common;

use std::time::Duration;

use common::clients::{connect, describe, join_raw};
use shir::auth_key::AuthKey;
use shir::node::provision::join_request;
use shir::pki::{self, tls::client_config_mtls};
use shir::proto::{self, cluster_client::ClusterClient};
use shir::protocol::PROTOCOL_VERSION;

const OTHER: u32 = 999;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_protocol_version_is_refused_in_one_line() {
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let mut ir = common::local_ir(tmp.path(), common::free_port(2), 2);
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.init(0, "protocol-ir").await.expect("init");
    ir.start(0).await.expect("start");
    let key1 = ir
        .wait_for("key1", Duration::from_secs(20), || async { ir.key1(0).await.ok() })
        .await
        .expect("key1");
    let key = AuthKey::parse(&key1).expect("key1 parses");
    let address = ir.nodes[1].address.clone();
    let node_key = pki::new_private_key().expect("key");
    let csr = pki::make_csr(node_key.expose(), "node2").expect("csr");
    let line = format!("protocol version {OTHER}, this IR speaks {PROTOCOL_VERSION}");

    steps.step("a joiner of another protocol version gets the one line, and nothing is written");
    let mut other = join_request(&key, "node2", &address, &csr);
    other.protocol_version = OTHER;
    let err = join_raw(&key, other).await.expect_err("another version is refused");
    eprintln!("{}", describe(err.clone()));
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::FailedPrecondition, line.as_str())
    );
    let nodes = common::status_json(&ir, 0).await.expect("status")["nodes"].clone();
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");

    steps.step("the same joiner at this version is admitted (node2 is never started: the test speaks for it)");
    let joined = join_raw(&key, join_request(&key, "node2", &address, &csr))
        .await
        .expect("join at this version");
    let as_node2 =
        client_config_mtls(&joined.ca_cert_pem, &joined.cert_pem, node_key.expose()).expect("node2's TLS config");
    let channel = connect(&ir.nodes[0].address, as_node2).await.expect("node2 connects");
    let heartbeat = |protocol_version| {
        let mut client = ClusterClient::new(channel.clone());
        async move {
            let request = proto::HeartbeatRequest {
                name: "node2".into(),
                load: Some(proto::NodeLoad {
                    concurrent_jobs_limit: 7,
                    version: "9.9.9".into(),
                    reachable_peers: vec!["node1".into()],
                    ..Default::default()
                }),
                sent_at_ms: shir::unix_now_ms(),
                protocol_version,
            };
            client.heartbeat(request).await.map(|_| ())
        }
    };
    let node2 = |status: &serde_json::Value| {
        status["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == "node2").cloned())
            .unwrap_or_default()
    };

    steps.step("its heartbeats of another version are refused, and status shows it Limited with the reason");
    let shown = common::eventually("node2 Limited for its version", Duration::from_secs(20), || async {
        let err = heartbeat(OTHER)
            .await
            .expect_err("a heartbeat of another version is refused");
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::FailedPrecondition, line.as_str())
        );
        let n = node2(&common::status_json(&ir, 0).await?);
        if n["status"] == "Limited" {
            Ok(n)
        } else {
            Err(format!("node2: {n}"))
        }
    })
    .await;
    eprintln!("node2 while refused: {shown}");
    assert_eq!(shown["status_reason"], line.as_str(), "{shown}");
    // Its load was not taken: neither the limit nor the version it sent.
    assert_eq!(shown["concurrent_jobs_limit"], 0, "{shown}");
    assert_ne!(shown["version"], "9.9.9", "{shown}");
    let text = common::shir_on(&ir, 0, &["status"], None).await.expect("status");
    assert!(text.contains(&format!("Limited ({line})")), "{text}");

    steps.step("once it speaks this version, its load counts and the reason is gone");
    let shown = common::eventually("node2's load taken", Duration::from_secs(20), || async {
        heartbeat(PROTOCOL_VERSION).await.map_err(describe)?;
        let n = node2(&common::status_json(&ir, 0).await?);
        if n["concurrent_jobs_limit"] == 7 {
            Ok(n)
        } else {
            Err(format!("node2: {n}"))
        }
    })
    .await;
    assert!(shown["status_reason"].is_null(), "{shown}");
    assert_eq!(shown["status"], "Online", "{shown}");
    ir.stop_all().await;
}
