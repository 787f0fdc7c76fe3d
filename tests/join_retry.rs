//! A join whose answer was lost can be asked again: the same node (name, address, key) with
//! a fresh proof gets the registration that was made, not "name taken" and not a second
//! node. The identical request replayed is refused, and another key cannot take the name.

mod common;

use std::time::Duration;

use shir::auth_key::AuthKey;
use shir::node::provision::join_request as request;
use shir::pki::{self, tls};
use shir::proto::{self, join_client::JoinClient};
use shir::transport::client::tls_channel_checked;

async fn join(key: &AuthKey, req: proto::JoinRequest) -> Result<proto::JoinResponse, tonic::Status> {
    let config = tls::client_config_join(key.ca_pin).expect("join TLS config");
    let channel = tls_channel_checked(&key.endpoints[0], config)
        .await
        .expect("join connection");
    JoinClient::new(channel)
        .join(req)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_join_returns_the_same_registration() {
    let steps = common::Steps::new();
    let tmp = common::tempdir();
    let port = common::free_port(2);
    let mut ir = common::local_ir(tmp.path(), port, 2);
    let _logs = common::DumpLogsOnPanic::new(&ir);
    ir.init(0, "retry-ir").await.expect("init");
    ir.start(0).await.expect("start");
    let key1 = ir
        .wait_for("key1", Duration::from_secs(20), || async { ir.key1(0).await.ok() })
        .await
        .expect("key1");
    let key = AuthKey::parse(&key1).expect("key1 parses");
    let address = ir.nodes[1].address.clone();
    let node_key = pki::new_private_key().expect("key");
    let csr = pki::make_csr(node_key.expose(), "node2").expect("csr");

    steps.step("first join is admitted");
    let first_request = request(&key, "node2", &address, &csr);
    let first = join(&key, first_request.clone()).await.expect("first join");

    steps.step("the identical request replayed is refused");
    let err = join(&key, first_request.clone())
        .await
        .expect_err("a replayed proof must be refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("already used"), "{err:?}");

    steps.step("and still refused by a dispatcher that restarted (nothing kept in memory)");
    ir.kill(0).await.expect("kill node1");
    ir.start(0).await.expect("restart node1");
    let err = ir
        .wait_for(
            "the restarted dispatcher to answer",
            Duration::from_secs(20),
            || async {
                match join(&key, first_request.clone()).await {
                    Err(e) if e.code() == tonic::Code::Unavailable => None,
                    other => Some(other),
                }
            },
        )
        .await
        .expect("an answer")
        .expect_err("a replayed proof must be refused after a restart");
    assert!(err.message().contains("already used"), "{err:?}");

    steps.step("the same node with a fresh proof gets the same registration");
    let again = join(&key, request(&key, "node2", &address, &csr))
        .await
        .expect("repeated join");
    assert_eq!((again.node_id, &again.cert_pem), (first.node_id, &first.cert_pem));

    steps.step("another key cannot take the name");
    let other_key = pki::new_private_key().expect("key");
    let other_csr = pki::make_csr(other_key.expose(), "node2").expect("csr");
    let err = join(&key, request(&key, "node2", &address, &other_csr))
        .await
        .expect_err("name taken");
    assert!(err.message().contains("already registered"), "{err:?}");

    let nodes = common::status_json(&ir, 0).await.expect("status")["nodes"]
        .as_array()
        .map(Vec::len);
    assert_eq!(nodes, Some(2), "one registration, not two");
    ir.stop_all().await;
}
