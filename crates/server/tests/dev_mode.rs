//! Single-node dev mode (`kv_server` without a config) through the library client, the CLI's
//! seed commands, and bad input at every door: API, CLI, config.

mod common;

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use common::client_bin;
use common::expect_failure;
use common::loopback_ports;
use common::server_bin;
use common::wait_for;
use common::NodeProc;
use rskv_client::Client;
use rskv_client::ClientError;
use rskv_client::Consistency;
use rskv_testkit::fs::contents;
use rskv_testkit::fs::copy_dir;

/// Starts `kv_server` in dev mode on a free port with extra flags. Unless `own_temp_dir`, the data
/// goes to the test's directory (so a killed node leaves nothing behind).
fn dev_node(extra: &[&str], own_temp_dir: bool) -> (NodeProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = loopback_ports(3);
    let addr = format!("127.0.0.1:{}", ports[0]);
    let metrics_addr = format!("127.0.0.1:{}", ports[2]);
    let log = dir.path().join("node.log");
    let logfile = std::fs::File::create(&log).expect("log");
    let mut args = vec![
        "--listen-addr".to_string(),
        addr.clone(),
        "--peer-listen-addr".to_string(),
        format!("127.0.0.1:{}", ports[1]),
        "--metrics-addr".to_string(),
        metrics_addr.clone(),
    ];
    if !own_temp_dir {
        args.push("--data-dir".into());
        args.push(dir.path().join("data").display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Command::new(server_bin())
        .args(&args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(logfile.try_clone().expect("clone"))
        .stderr(logfile)
        .spawn()
        .expect("spawn");
    (
        NodeProc::attach(1, addr, metrics_addr, dir.path().to_path_buf(), log, child),
        dir,
    )
}

async fn ready_client(node: &NodeProc) -> Client {
    let client = Client::new(vec![node.addr.clone()]).expect("client");
    wait_for("dev node to lead", Duration::from_secs(20), || {
        let client = &client;
        async move {
            let s = client.status_of(&node.addr).await.ok()?;
            (s.role == "leader").then_some(())
        }
    })
    .await;
    client
}

fn cli(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(client_bin())
        .arg("--endpoints")
        .arg(addr)
        .args(args)
        .output()
        .expect("run kv_client")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_should_serve_the_whole_api() {
    let (mut node, _dir) = dev_node(&[], true);
    let client = ready_client(&node).await;

    let i1 = client.put("b", "2").await.expect("put");
    let i2 = client.put("a", "1").await.expect("put");
    assert!(i2 > i1, "indexes grow: {i1} then {i2}");
    let prev = client.put_with("a", "one", true).await.expect("put prev");
    assert_eq!(prev.prev_value, Some(Bytes::from("1")));
    client
        .batch_put(vec![
            (Bytes::from("c"), Bytes::from("3")),
            (Bytes::from("d"), Bytes::from("4")),
        ])
        .await
        .expect("batch");
    assert_eq!(
        client.get("a").await.expect("get"),
        Some(Bytes::from("one"))
    );
    assert_eq!(client.get("missing").await.expect("get"), None);

    // Ordered scans with a limit and a continuation.
    let page = client
        .scan("", "", 2, Consistency::Linearizable)
        .await
        .expect("scan");
    let keys: Vec<_> = page.pairs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![Bytes::from("a"), Bytes::from("b")]);
    assert_eq!(page.next_start, Some(Bytes::from("c")));
    let rest = client
        .scan(page.next_start.expect("next"), "", 10, Consistency::Stale)
        .await
        .expect("scan");
    assert_eq!(rest.pairs.len(), 2);
    assert_eq!(rest.next_start, None);
    let ranged = client
        .scan("b", "d", 0, Consistency::Linearizable)
        .await
        .expect("scan");
    assert_eq!(ranged.pairs.len(), 2);

    // Compare-and-swap, absent and present.
    let cas = client
        .compare_and_swap("lock", None, "me")
        .await
        .expect("cas");
    assert!(cas.success);
    let cas = client
        .compare_and_swap("lock", None, "you")
        .await
        .expect("cas");
    assert!(!cas.success);
    assert_eq!(cas.current, Some(Bytes::from("me")));
    let cas = client
        .compare_and_swap("lock", Some(Bytes::from("me")), "you")
        .await
        .expect("cas");
    assert!(cas.success);
    assert_eq!(
        client.get("lock").await.expect("get"),
        Some(Bytes::from("you"))
    );

    let del = client.delete("a").await.expect("delete");
    assert!(del.existed);
    assert_eq!(client.get("a").await.expect("get"), None);

    // A clean stop on SIGTERM, and the temporary data dir is removed.
    let log = node.log_text();
    assert!(
        log.contains("dev mode: single-node cluster ready"),
        "dev mode prints its hint"
    );
    let data_dir = log
        .split("data_dir=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_string)
        .expect("dev mode logs its data dir");
    assert!(std::path::Path::new(&data_dir).exists());
    let status = node
        .terminate(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "temp dir {data_dir} not removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_cli_commands_should_work() {
    let (node, _dir) = dev_node(&[], false);
    ready_client(&node).await;
    let set = cli(&node.addr, &["set", "--key", "name", "--value", "999999"]);
    assert!(set.status.success(), "{set:?}");
    assert!(stdout(&set).starts_with("OK"), "{}", stdout(&set));
    let set = cli(&node.addr, &["set", "--key", "age", "--value", "18"]);
    assert!(set.status.success(), "{set:?}");
    let get = cli(&node.addr, &["get", "--key", "age"]);
    assert!(get.status.success(), "{get:?}");
    assert_eq!(stdout(&get), "18");
    let get = cli(&node.addr, &["get", "--key", "name"]);
    assert_eq!(stdout(&get), "999999");
    let json = cli(&node.addr, &["--json", "get", "--key", "name"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("json");
    assert_eq!(v["value"], "999999");
    let status = cli(&node.addr, &["status"]);
    assert!(status.status.success(), "{status:?}");
    assert!(stdout(&status).contains("leader"), "{}", stdout(&status));

    // `watch --rev 1`: the key's history from the first revision (one put), then live changes.
    let mut watch = Command::new(client_bin())
        .args(["--endpoints", &node.addr, "--json"])
        .args(["watch", "--key", "age", "--rev", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run kv_client watch");
    let lines = watch_lines(&mut watch);
    let past = next_json_line(&lines);
    assert_eq!(
        (&past["type"], &past["key"], &past["value"]),
        (&"put".into(), &"age".into(), &"18".into()),
        "{past}"
    );
    let set = cli(&node.addr, &["set", "--key", "age", "--value", "19"]);
    assert!(set.status.success(), "{set:?}");
    let live = next_json_line(&lines);
    assert_eq!(live["value"], "19", "{live}");
    assert_eq!(live["prev_value"], "18", "{live}");
    assert!(
        live["revision"].as_i64() > past["revision"].as_i64(),
        "{past} then {live}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}

/// The lines a running `kv_client watch` prints, read on a thread of their own.
fn watch_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line of `lines` as JSON, within a deadline.
fn next_json_line(lines: &std::sync::mpsc::Receiver<String>) -> serde_json::Value {
    let line = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("kv_client watch printed a line in time");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_should_be_rejected_and_change_nothing() {
    let (node, _dir) = dev_node(&["--max-key-size", "8", "--max-value-size", "16"], false);
    let client = ready_client(&node).await;
    client.put("k", "original").await.expect("put");

    let invalid = |r: Result<_, ClientError>, what: &str| match r {
        Err(ClientError::InvalidArgument(msg)) => msg,
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    };
    let msg = invalid(client.put("", "v").await.map(|_| ()), "empty key");
    assert!(msg.contains("empty"), "{msg}");
    let msg = invalid(
        client.put("k", "x".repeat(17)).await.map(|_| ()),
        "big value",
    );
    assert!(msg.contains("limit is 16"), "{msg}");
    let msg = invalid(client.put("k".repeat(9), "v").await.map(|_| ()), "big key");
    assert!(msg.contains("limit is 8"), "{msg}");
    let msg = invalid(
        client
            .scan("z", "a", 0, Consistency::Linearizable)
            .await
            .map(|_| ()),
        "reversed scan",
    );
    assert!(msg.contains("after end"), "{msg}");
    invalid(
        client
            .compare_and_swap("k", Some(Bytes::from("original")), "x".repeat(17))
            .await
            .map(|_| ()),
        "big cas value",
    );
    invalid(client.batch_put(vec![]).await.map(|_| ()), "empty batch");
    assert_eq!(
        client.get("k").await.expect("get"),
        Some(Bytes::from("original"))
    );
    let all = client
        .scan_all("", "", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_eq!(all.len(), 1, "nothing else was written: {all:?}");

    // The CLI reports server-side rejections with a message and exit code 1.
    let out = cli(&node.addr, &["set", "--key", "", "--value", "v"]);
    expect_failure(&out, 1, "key must not be empty");
}

#[test]
fn cli_usage_errors_should_exit_2() {
    let out = Command::new(client_bin())
        .arg("frobnicate")
        .output()
        .expect("run");
    expect_failure(&out, 2, "frobnicate");
    let out = Command::new(client_bin())
        .args(["get"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "missing --key");
    // Watches start from a revision; the log-index flag is gone, and revisions are not negative.
    for (args, why) in [
        (
            &["watch", "--key", "k", "--from-index", "3"][..],
            "--from-index",
        ),
        (&["watch", "--key", "k", "--rev=-1"][..], "--rev"),
    ] {
        let out = Command::new(client_bin()).args(args).output().expect("run");
        expect_failure(&out, 2, why);
    }
    for (endpoint, why) in [
        ("https://127.0.0.1:7379", "--cacert"),
        ("127.0.0.1", "expected host:port"),
    ] {
        let out = Command::new(client_bin())
            .args(["--endpoints", endpoint, "get", "--key", "k"])
            .output()
            .expect("run");
        expect_failure(&out, 2, why);
    }
}

#[test]
fn unreachable_cluster_should_fail_fast_with_a_message() {
    let port = loopback_ports(1)[0];
    let started = Instant::now();
    let out = Command::new(client_bin())
        .args([
            "--endpoints",
            &format!("127.0.0.1:{port}"),
            "get",
            "--key",
            "x",
        ])
        .output()
        .expect("run");
    expect_failure(&out, 1, "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_config_should_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("node_id = 1\nlisten_addr = \"127.0.0.1:1\"\ncolour = 3\n", "colour"),
        ("node_id = \"x\"\nlisten_addr = \"127.0.0.1:1\"\n", "node_id"),
        ("listen_addr = \"127.0.0.1:1\"\n", "node_id"),
        (
            "node_id = 4\nlisten_addr = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n[cluster]\ninitial_members = { 1 = \"127.0.0.1:1\" }\n",
            "initial_members",
        ),
        ("node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n[storage]\nengine = \"paper\"\n", "paper"),
        (
            "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\nadvertise_addr = \"https://n1:1\"\n",
            "advertise_addr",
        ),
        (
            "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n[cluster]\ninitial_members = { 1 = \"127.0.0.1\" }\n",
            "initial_members",
        ),
        (
            "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n[cluster]\njoin = [\"https://127.0.0.1:7379\"]\n",
            "needs TLS settings",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(server_bin())
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(key),
            "case {i}: message should name `{key}`: {err}"
        );
    }
}

/// A data directory whose Raft log store was written by a newer rskv (the checked-in format
/// fixture with its log store's version raised): `kv_server` refuses it at start with a message
/// naming the store, the version found and the version it reads, exits 1 without a panic, and
/// leaves every file as it was.
#[test]
fn a_data_dir_of_another_format_version_should_be_refused_at_start_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../storage/tests/fixtures/format-v1"),
        &data,
    );
    {
        let log_dir = data.join("raft_log");
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, &log_dir).expect("list");
        let db = rocksdb::DB::open_cf(&opts, &log_dir, &cfs).expect("open");
        let meta = db.cf_handle("meta").expect("meta");
        db.put_cf(meta, b"format_version", b"2").expect("put");
        db.flush_wal(true).expect("sync");
    }
    let before = contents(&data);
    let ports = loopback_ports(3);
    let mut child = Command::new(server_bin())
        .args(["--listen-addr", &format!("127.0.0.1:{}", ports[0])])
        .args(["--peer-listen-addr", &format!("127.0.0.1:{}", ports[1])])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", ports[2])])
        .args(["--engine", "rocksdb"])
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kv_server did not refuse the data directory within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    let expected = format!(
        "kv_server: storage: opening raft log in {}: Raft log store in {} is format version 2, \
         newer than this rskv reads (version 1)",
        data.join("raft_log").display(),
        data.join("raft_log").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(contents(&data) == before, "the data directory changed");
}
