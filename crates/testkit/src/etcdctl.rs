//! Running etcd's own command-line client, `etcdctl` (v3 API), against rskv nodes: the proof that
//! etcd's tools work unchanged. `etcdctl` comes from Debian's `etcd-client` package
//! (`scripts/prereqs.sh` installs it); a test that needs it fails, never skips, when it is
//! missing. `ETCDCTL` names another binary.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// What one `etcdctl` run did.
#[derive(Debug)]
pub struct EtcdctlOutput {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl EtcdctlOutput {
    /// Stdout parsed as JSON (`-w json`); panics with both streams when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "etcdctl printed no JSON ({e}):\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics with both streams unless it failed saying `message` on stderr (etcd's error text).
    pub fn expect_error(&self, message: &str) {
        assert!(
            !self.success && self.stderr.contains(message),
            "etcdctl should have failed with `{message}` ({:?}):\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
    }

    /// Panics with both streams unless it succeeded; returns itself for chaining.
    pub fn expect_ok(self, what: &str) -> EtcdctlOutput {
        assert!(
            self.success,
            "etcdctl {what} failed ({:?}):\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// The `etcdctl` binary: `$ETCDCTL`, else `etcdctl` on the `PATH`. Panics, saying what to install,
/// when there is none.
pub fn etcdctl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ETCDCTL") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcdctl"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "etcdctl is not installed: these tests run etcd's own client against rskv. Install \
             Debian's etcd-client package (`apt-get install etcd-client`, or run \
             scripts/prereqs.sh), or set ETCDCTL to an etcdctl binary"
        )
    })
}

/// `etcdctl --endpoints E1,E2,... ARGS` (v3 API, `--command-timeout` = `timeout`), with piped
/// stdout and stderr, killed when dropped. Endpoints are passed as given; give bare `host:port`:
/// etcdctl 3.4 sends an endpoint's `http://` prefix inside the HTTP/2 `:authority` of the calls it
/// makes per endpoint (`endpoint status`, `defrag`), which rskv's HTTP/2 stack refuses as
/// malformed.
fn command(endpoints: &[String], args: &[&str], timeout: Duration) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(etcdctl_bin());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--dial-timeout=2s")
        .arg(format!("--command-timeout={}ms", timeout.as_millis()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `etcdctl --endpoints E1,E2,... ARGS` (v3 API) with `deadline` for the whole run (also
/// passed as `--command-timeout`); panics if it has not finished by then. See [`command`] for the
/// endpoints' form.
pub async fn etcdctl(endpoints: &[String], args: &[&str], deadline: Duration) -> EtcdctlOutput {
    etcdctl_with_input(endpoints, args, None, deadline).await
}

/// As [`etcdctl`], writing `input` (when given) to its stdin and closing it: for `etcdctl txn`,
/// which reads its comparisons and operations there.
pub async fn etcdctl_with_input(
    endpoints: &[String],
    args: &[&str],
    input: Option<&str>,
    deadline: Duration,
) -> EtcdctlOutput {
    use tokio::io::AsyncWriteExt;
    let mut command = command(endpoints, args, deadline);
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", etcdctl_bin().display()));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: writing stdin: {e}"));
        // Dropped here: etcdctl sees the end of its input.
    }
    // A little beyond the command timeout, so etcdctl's own timeout message wins the race.
    let out = tokio::time::timeout(deadline + Duration::from_secs(3), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within {deadline:?}"))
        .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"));
    EtcdctlOutput {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A long-running `etcdctl` (`watch`, `lock`, `elect`, `lease keep-alive`): its stdout read line
/// by line as it prints, each line with the time it arrived; its stderr kept for failure reports.
/// Killed when dropped.
pub struct EtcdctlProcess {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<(std::time::Instant, String)>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    args: Vec<String>,
    /// Every stdout line received so far, in order, with when it arrived.
    pub seen: Vec<(std::time::Instant, String)>,
}

impl EtcdctlProcess {
    /// Starts `etcdctl ARGS` against `endpoints` (its `--command-timeout` is `timeout`; it bounds
    /// each request, not the run).
    pub fn spawn(endpoints: &[String], args: &[&str], timeout: Duration) -> EtcdctlProcess {
        use tokio::io::AsyncBufReadExt;
        use tokio::io::AsyncReadExt;
        let mut child = command(endpoints, args, timeout)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", etcdctl_bin().display()));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send((std::time::Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
            }
        });
        EtcdctlProcess {
            child,
            lines,
            stderr,
            args: args.iter().map(|s| s.to_string()).collect(),
            seen: Vec::new(),
        }
    }

    /// What it has printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the lines printed so far without waiting; returns how many arrived.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
            n += 1;
        }
        n
    }

    /// Waits until the lines received so far satisfy `done` (given every line, in order), or
    /// panics after `timeout` with what it printed.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[String]) -> bool,
    ) {
        if !self.within(timeout, done).await {
            panic!(
                "etcdctl {:?}: timed out after {timeout:?} waiting for {what}:\nstdout: {}\n\
                 stderr: {}",
                self.args,
                self.lines().join("\n"),
                self.stderr()
            );
        }
    }

    /// Whether the lines received satisfy `done` (given every line, in order) within `timeout`.
    pub async fn within(&mut self, timeout: Duration, done: impl Fn(&[String]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drain();
            if done(&self.lines()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                // Its stdout closed (it exited) or the time is up.
                Ok(None) | Err(_) => {
                    self.drain();
                    return done(&self.lines());
                }
            }
        }
    }

    /// Waits until some line received contains `needle`; returns when that line arrived.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> std::time::Instant {
        self.wait_until(&format!("a line with `{needle}`"), timeout, |lines| {
            lines.iter().any(|l| l.contains(needle))
        })
        .await;
        self.seen
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
            .expect("the line just seen")
    }

    /// The stdout lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.seen.iter().map(|(_, l)| l.clone()).collect()
    }

    /// Sends `signal` (`INT`, `TERM`, ...) and waits up to `timeout` for it to exit; returns
    /// whether it exited with status 0. Panics if it does not exit.
    pub async fn stop(&mut self, signal: &str, timeout: Duration) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "etcdctl {:?} did not exit within {timeout:?} of SIG{signal}:\nstderr: {}",
                    self.args,
                    self.stderr()
                )
            })
            .expect("wait for etcdctl");
        status.success()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Decodes standard base64, as etcdctl's JSON output encodes keys and values, into text; panics
/// on anything else.
pub fn unbase64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut held = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .unwrap_or_else(|| panic!("not base64: {text:?}"));
        bits = (bits << 6) | v as u32;
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| panic!("base64 {text:?} is not UTF-8: {e}"))
}

/// One `KeyValue` of etcdctl's JSON output, key and value decoded (a missing field, which
/// etcdctl omits when it is zero or empty, is 0 or "").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonKv {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Its create revision.
    pub create_revision: i64,
    /// Its mod revision.
    pub mod_revision: i64,
    /// Its version.
    pub version: i64,
    /// Its lease (0: none).
    pub lease: i64,
}

/// The `KeyValue`s of a JSON list (`kvs`, `prev_kvs`); a missing list (etcdctl omits empty ones)
/// is empty.
pub fn json_kvs(list: &serde_json::Value) -> Vec<JsonKv> {
    let text =
        |kv: &serde_json::Value, field: &str| unbase64(kv[field].as_str().unwrap_or_default());
    let number = |kv: &serde_json::Value, field: &str| kv[field].as_i64().unwrap_or(0);
    list.as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| JsonKv {
                    key: text(kv, "key"),
                    value: text(kv, "value"),
                    create_revision: number(kv, "create_revision"),
                    mod_revision: number(kv, "mod_revision"),
                    version: number(kv, "version"),
                    lease: number(kv, "lease"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The (key, value) pairs of a JSON `KeyValue` list ([`json_kvs`]).
pub fn decoded_kvs(list: &serde_json::Value) -> Vec<(String, String)> {
    json_kvs(list)
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}
