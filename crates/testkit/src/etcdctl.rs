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

/// Runs `etcdctl --endpoints E1,E2,... ARGS` (v3 API) with `deadline` for the whole run (also
/// passed as `--command-timeout`); panics if it has not finished by then.
///
/// Endpoints are passed as given; give bare `host:port`: etcdctl 3.4 sends an endpoint's
/// `http://` prefix inside the HTTP/2 `:authority` of the calls it makes per endpoint
/// (`endpoint status`, `defrag`), which rskv's HTTP/2 stack refuses as malformed.
pub async fn etcdctl(endpoints: &[String], args: &[&str], deadline: Duration) -> EtcdctlOutput {
    let mut command = tokio::process::Command::new(etcdctl_bin());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--dial-timeout=2s")
        .arg(format!("--command-timeout={}ms", deadline.as_millis()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", etcdctl_bin().display()));
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
