//! Proves that `shir demo` runs end to end as an operator runs it (four nodes, a killed
//! dispatcher, a new one, the old one back Online) and that a taken port is refused with a
//! pointer to `--base-port`.

mod common;

use std::net::TcpListener;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;

use common::{SHIR, Steps, free_port};

async fn demo(port: u16, timeout: Duration) -> Output {
    let child = Command::new(SHIR)
        .args(["demo", "--base-port", &port.to_string(), "--file-mib", "4"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(timeout, child)
        .await
        .unwrap_or_else(|_| panic!("shir demo did not finish within {timeout:?}"))
        .expect("run shir demo")
}

/// The node named on the first line containing `marker`, right after it.
fn node_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let at = text.find(marker)? + marker.len();
    text[at..]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .next()
        .filter(|s| !s.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fails_over_and_refuses_a_taken_port() {
    let steps = Steps::new();

    steps.step("a taken port: shir demo exits non-zero and names --base-port");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("local addr").port();
    let started = Instant::now();
    let out = demo(port, Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "demo on a taken port succeeded: {stderr}");
    assert!(
        stderr.contains("--base-port") && stderr.contains(&port.to_string()),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once");
    drop(taken);

    steps.step("shir demo on a free port: exits 0 after the failover");
    let port = free_port(4);
    let out = demo(port, Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let killed = node_after(&stdout, "killing the dispatcher ").unwrap_or_else(|| panic!("no kill in:\n{stdout}"));
    let elected = node_after(&stdout, "new dispatcher: ").unwrap_or_else(|| panic!("no new dispatcher in:\n{stdout}"));
    assert_ne!(killed, elected, "the new dispatcher is another node:\n{stdout}");
    assert!(
        stdout.contains(&format!("{killed} is back Online")),
        "the killed node comes back Online:\n{stdout}"
    );
    assert!(
        stdout.contains("every output is exactly one complete copy: yes"),
        "the copy jobs' outputs match their inputs:\n{stdout}"
    );
    assert!(stdout.contains("demo finished"), "{stdout}");
    eprintln!(
        "demo: killed {killed}, elected {elected}, {:.1}s",
        steps.elapsed().as_secs_f64()
    );
}
