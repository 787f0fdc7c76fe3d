//! Bad input at the command line gets one clear line on stderr, a non-zero exit, and changes
//! nothing: a second `run` on a data dir in use, missing data dirs and files, bad flags.

mod common;

use std::process::Command;

fn shir(args: &[&str]) -> (bool, String, String) {
    shir_env(args, &[])
}

fn shir_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shir"))
        .args(args)
        .env_remove("SHIR_AUTH_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run shir");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failure whose stderr is exactly one line starting `error:` and containing `words`.
fn assert_refused(args: &[&str], words: &str) {
    let (ok, _, err) = shir(args);
    assert!(!ok, "{args:?} should fail");
    assert_eq!(err.lines().count(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(err.starts_with("error: "), "{args:?}: {err:?}");
    assert!(err.contains(words), "{args:?}: expected {words:?} in {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_one_line() {
    let tmp = common::tempdir();
    let port = common::free_port(1);
    let mut ir = common::local_ir(tmp.path(), port, 1);
    let dir = common::dir_arg(&ir, 0);
    let missing = tmp.path().join("missing").to_string_lossy().into_owned();

    assert_refused(&["status", "--data-dir", &missing], "holds no shir node");
    assert!(
        !tmp.path().join("missing").exists(),
        "status must not create the data dir"
    );
    assert_refused(
        &[
            "init",
            "--data-dir",
            &missing,
            "--name",
            "Node_1",
            "--listen",
            "127.0.0.1:1",
            "--ir-name",
            "x",
        ],
        "invalid node name",
    );
    assert_refused(
        &[
            "init",
            "--data-dir",
            &missing,
            "--name",
            "node1",
            "--listen",
            "127.0.0.1",
            "--ir-name",
            "x",
        ],
        "expected IP:PORT",
    );
    assert_refused(
        &[
            "init",
            "--data-dir",
            &missing,
            "--name",
            "node1",
            "--listen",
            "0.0.0.0:8060",
            "--ir-name",
            "x",
        ],
        "--advertise",
    );
    assert!(
        !tmp.path().join("missing").exists(),
        "a refused init must not create the data dir"
    );

    ir.init(0, "cli-ir").await.expect("init");
    assert_refused(
        &[
            "init",
            "--data-dir",
            &dir,
            "--name",
            "node1",
            "--listen",
            "127.0.0.1:1",
            "--ir-name",
            "x",
        ],
        "already holds a shir node",
    );
    ir.start(0).await.expect("start");
    assert_refused(&["run", "--data-dir", &dir], "in use by another shir process");
    // The running node is unharmed by the refused second run.
    ir.status(0).await.expect("status after a refused second run");

    let cert = tmp.path().join("nope.pem").to_string_lossy().into_owned();
    let endpoint = ir.nodes[0].address.clone();
    assert_refused(
        &["status", "--endpoint", &endpoint, "--admin-cert", &cert],
        "cannot read admin certificate",
    );
    std::fs::write(&cert, "not a pem").unwrap();
    assert_refused(
        &["status", "--endpoint", &endpoint, "--admin-cert", &cert],
        "is not an admin certificate file",
    );
    assert_refused(
        &["node", "remove", "node9", "--data-dir", &dir],
        "no node named 'node9'",
    );
    assert_refused(&["node", "remove", "node1", "--data-dir", &dir], "only node");

    let out = tmp.path().join("ops.pem").to_string_lossy().into_owned();
    let (ok, _, err) = shir(&[
        "admin-cert",
        "issue",
        "--name",
        "ops",
        "--out",
        &out,
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    assert_refused(
        &[
            "admin-cert",
            "issue",
            "--name",
            "ops2",
            "--out",
            &out,
            "--data-dir",
            &dir,
        ],
        "already exists",
    );

    // Exit statuses tell "no such thing" and "nobody answered" from a failure.
    assert_exit(
        &["job", "show", "0123456789ab", "--data-dir", &dir],
        6,
        "no job 0123456789ab",
    );
    assert_exit(
        &["job", "wait", "0123456789ab", "--data-dir", &dir],
        6,
        "no job 0123456789ab",
    );
    assert_exit(&["node", "remove", "node9", "--data-dir", &dir], 6, "no node named");
    assert_exit(&["node", "remove", "node1", "--data-dir", &dir], 1, "only node");
    let closed = format!("127.0.0.1:{}", common::free_port(1));
    assert_exit(
        &["status", "--endpoint", &closed, "--admin-cert", &out],
        69,
        "cannot connect to",
    );
    ir.stop_all().await;
    assert_exit(&["status", "--data-dir", &dir], 69, "cannot reach the local node");
    assert_exit(
        &["job", "wait", "0123456789ab", "--data-dir", &dir],
        69,
        "cannot reach the local node",
    );
}

/// Asserts a one-line refusal containing `words` with exit status `code`.
fn assert_exit(args: &[&str], code: i32, words: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_shir"))
        .args(args)
        .output()
        .expect("run shir");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(err.contains(words), "{args:?}: expected {words:?} in {err:?}");
}

/// The key a node joins with stays off the command line: it is read from a file or from
/// SHIR_AUTH_KEY, and `--auth-key` still works but warns.
#[test]
fn auth_key_comes_from_a_file_or_the_environment() {
    let tmp = common::tempdir();
    let dir = tmp.path().join("node2").to_string_lossy().into_owned();
    let register = |extra: &[&str]| {
        let mut args = vec![
            "register",
            "--data-dir",
            &dir,
            "--name",
            "node2",
            "--listen",
            "127.0.0.1:1",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let refused = |extra: &[&str], words: &str| {
        let args = register(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, words);
    };
    refused(
        &[],
        "no authentication key: pass --auth-key-file FILE or set SHIR_AUTH_KEY",
    );
    let missing = tmp.path().join("no-such-key").to_string_lossy().into_owned();
    refused(
        &["--auth-key-file", &missing],
        "cannot read the authentication key from",
    );
    let empty = tmp.path().join("empty-key");
    std::fs::write(&empty, "\n").unwrap();
    refused(
        &["--auth-key-file", &empty.to_string_lossy()],
        "holds no authentication key",
    );
    assert!(
        !tmp.path().join("node2").exists(),
        "a refused registration creates nothing"
    );

    // A malformed key from each source: the flag warns, the file and the variable do not.
    let warning = "warning: --auth-key puts the key on the command line";
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, "not-a-key\n").unwrap();
    let key_file = key_file.to_string_lossy().into_owned();
    for (extra, env, warns) in [
        (vec!["--auth-key", "not-a-key"], vec![], true),
        (vec!["--auth-key=not-a-key"], vec![], true),
        (vec!["--auth-key-file", key_file.as_str()], vec![], false),
        (vec![], vec![("SHIR_AUTH_KEY", "not-a-key")], false),
    ] {
        let args = register(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = shir_env(&args, &env);
        assert!(!ok, "{extra:?} {env:?}: a malformed key must be refused");
        assert_eq!(err.contains(warning), warns, "{extra:?} {env:?}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("error: "), "{extra:?} {env:?}: {err}");
        assert!(!last.contains("not-a-key"), "the error must not repeat the key: {err}");
    }
}
