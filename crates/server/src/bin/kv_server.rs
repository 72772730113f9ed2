//! `kv_server`: one rskv node. Thin: flags → config → `Node::start` → `Node::serve`.
//!
//! Without `--config` it starts single-node dev mode on 127.0.0.1:7379 with data in a temporary
//! directory (removed on exit) unless `--data-dir` is given.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rskv_server::config::Config;
use rskv_server::config::Overrides;
use rskv_server::node::Listeners;
use rskv_server::node::Node;
use rskv_storage::log_throttle::RepeatedWarnings;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: allocation was ~9% of a leader's CPU under load
/// (per-request buffers in tonic/h2, log entries); see docs/benchmarks.md. It is
/// built without transparent huge pages (Cargo feature `no_thp`): with them, refilling memory
/// it had returned to the OS zeroed whole 2 MiB pages, 18% of a leader's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An rskv node: a Raft member serving the rskv gRPC API.
#[derive(Debug, Parser)]
#[command(name = "kv_server", version, about)]
struct Args {
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // openraft warns on every heartbeat to an unreachable peer: once per interval instead.
        .event_format(RepeatedWarnings::new(
            tracing_subscriber::fmt::format(),
            &["openraft"],
        ))
        .init();
    let args = Args::parse();
    let dev_mode = Config::is_dev_mode(&args.overrides);
    let config = match Config::load(&args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kv_server: {}", e.report());
            return ExitCode::from(2);
        }
    };
    // Dev mode without --data-dir keeps data in a temporary directory, removed after the runtime
    // (and with it every storage handle) is gone.
    let (data_dir, temp_dir) = match (&config.data_dir, dev_mode) {
        (Some(dir), _) => (dir.clone(), None),
        (None, true) => match tempfile::Builder::new().prefix("rskv-dev-").tempdir() {
            Ok(temp) => (temp.path().to_path_buf(), Some(temp)),
            Err(e) => {
                eprintln!("kv_server: cannot create a temporary data dir: {e}");
                return ExitCode::from(1);
            }
        },
        (None, false) => {
            eprintln!(
                "kv_server: config: `data_dir` is required (set it in the file or pass --data-dir)"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv_server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(config, data_dir, dev_mode));
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    drop(temp_dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kv_server: {message}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config, data_dir: PathBuf, dev_mode: bool) -> Result<(), String> {
    let listeners = Listeners::bind(&config).await.map_err(|e| e.report())?;
    let listen = config.listen_addr;
    // Flags alone (no --config) can also describe a cluster member; only a lone node is the dev
    // cluster the hint is for (no members listed means this node alone, as in the embedded
    // default).
    let lone = config.cluster.join.is_empty()
        && config
            .initial_members()
            .map(|m| m.len() <= 1)
            .unwrap_or(false);
    let node_id = config.node_id;
    let node = Node::start(config, &data_dir)
        .await
        .map_err(|e| e.report())?;
    if dev_mode && lone {
        tracing::info!(
            addr = %listen,
            data_dir = %data_dir.display(),
            "dev mode: single-node cluster ready; try `kv_client set --key name --value 999999`"
        );
    } else {
        tracing::info!(node_id, addr = %listen, data_dir = %data_dir.display(), "node started");
    }
    let mut signals = Signals::new();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = node.serve(listeners, async move {
        let _ = first_rx.await;
    });
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result.map_err(|e| e.report()),
        () = signals.next() => {}
    }
    tracing::info!("shutting down gracefully; signal again to force an immediate exit");
    let _ = first_tx.send(());
    tokio::select! {
        result = &mut serve => {
            result.map_err(|e| e.report())?;
            tracing::info!("stopped cleanly");
            Ok(())
        }
        () = signals.next() => {
            eprintln!("kv_server: second signal; exiting without finishing the shutdown");
            std::process::exit(1);
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, as one stream of "stop" requests.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::signal;
            use tokio::signal::unix::SignalKind;
            let term = signal(SignalKind::terminate())
                .map_err(|e| tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the node"))
                .ok();
            Signals { term }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Completes at the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = &mut self.term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("SIGINT received");
    }
}
