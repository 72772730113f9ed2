//! `kv_jepsen`: the fault suite (`run`) and the checker on a saved history (`check`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use rskv_jepsen as jepsen;
use rskv_jepsen::checker;
use rskv_jepsen::nemesis::NemesisKind;
use rskv_jepsen::net::NetKind;

#[derive(Parser)]
#[command(about = "Jepsen-style fault tests for rskv: faults, a recorded history, a checker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster, run clients under faults, heal, check; exit 1 on any anomaly.
    Run(RunArgs),
    /// Check a saved history (history.jsonl) for linearizability.
    Check {
        /// The JSONL history file.
        file: PathBuf,
        /// Search budget per key.
        #[arg(long, default_value_t = 20_000_000)]
        budget: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Faults to mix, comma-separated: partition, kill, pause, restart, member, clock, disk, or
    /// all.
    #[arg(long, default_value = "partition,kill,pause", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Client operations per second, all clients together.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Keys (independent registers).
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// State machine: rocksdb or memory.
    #[arg(long, default_value = "rocksdb")]
    engine: String,
    /// Network: netns (root), proxy (loopback + fault-injecting proxy) or loopback (no
    /// partitions); default netns when root, else proxy.
    #[arg(long)]
    net: Option<NetKind>,
    /// Seconds a fault lasts, and seconds of calm between two.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Results folder; default results/jepsen-<time>.
    #[arg(long)]
    results: Option<PathBuf>,
    /// kv_server binary; default: next to this binary.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Random seed; default from the clock (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Checker search budget per key.
    #[arg(long, default_value_t = 20_000_000)]
    budget: u64,
    /// Read with STALE consistency in the workload (serializable Ranges in the etcd workload;
    /// not linearizable by design): a run with partitions should then fail, showing the checker
    /// catches stale reads.
    #[arg(long)]
    stale_reads: bool,
    /// Workloads: register (rskv's client: registers, counter, watchers), etcd (etcd's API
    /// through the etcd-client crate: registers by Txn, watches from revision 1, a lease-held
    /// lock), or all.
    #[arg(long, default_value = "register")]
    workload: jepsen::Workloads,
    /// Mutual TLS on every node's client and peer ports (a throwaway CA in the results folder),
    /// every client of the run presenting a certificate.
    #[arg(long)]
    tls: bool,
    /// Extra kv_server flags, e.g. --server-arg=--snapshot-every=500.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

fn run(args: RunArgs) -> Result<bool, String> {
    let mut nemeses = Vec::new();
    for name in &args.nemesis {
        match name.trim() {
            "" | "none" => {}
            "all" => nemeses.extend(NemesisKind::ALL),
            other => nemeses.push(other.parse::<NemesisKind>()?),
        }
    }
    if !["rocksdb", "memory"].contains(&args.engine.as_str()) {
        return Err(format!(
            "unknown engine '{}' (rocksdb, memory)",
            args.engine
        ));
    }
    if args.nodes == 0 || args.rate <= 0.0 || args.interval <= 0.0 {
        return Err("--nodes, --rate and --interval must be positive".into());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let server_bin = match args.server_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("locating kv_server: {e}"))?
            .with_file_name("kv_server"),
    };
    let results = args.results.unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("results/jepsen-{stamp}"))
    });
    let opts = jepsen::Options {
        nodes: args.nodes,
        time: Duration::from_secs(args.time),
        nemeses,
        rate: args.rate,
        keys: args.keys,
        clients: args.clients,
        engine: args.engine,
        net: args.net,
        interval: Duration::from_secs_f64(args.interval),
        server_bin,
        results,
        seed,
        check_budget: args.budget,
        server_args: args.server_args,
        stale_reads: args.stale_reads,
        workloads: args.workload,
        tls: args.tls,
    };
    eprintln!(
        "kv_jepsen: {} nodes, {} s, workload {}{}, nemesis {:?}, {} ops/s, seed {seed}, results in {}",
        opts.nodes,
        args.time,
        opts.workloads,
        if opts.tls { " over TLS" } else { "" },
        opts.nemeses.iter().map(|k| k.name()).collect::<Vec<_>>(),
        opts.rate,
        opts.results.display()
    );
    let report = jepsen::run(&opts).map_err(|e| format!("{e:#}"))?;
    println!("{}", report.summary());
    Ok(report.passed())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { file, budget } => std::fs::read_to_string(&file)
            .map_err(|e| format!("reading {}: {e}", file.display()))
            .and_then(|text| checker::parse_jsonl(&text))
            .map(|history| {
                let verdict = checker::check(&history, budget);
                println!("{} ops: {verdict}", history.len());
                if let checker::Verdict::NotLinearizable { key, ops } = &verdict {
                    let dir = file.parent().unwrap_or(std::path::Path::new("."));
                    println!("  {}", rskv_jepsen::save_anomaly(dir, key, ops));
                }
                verdict == checker::Verdict::Linearizable
            }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kv_jepsen: {e}");
            ExitCode::from(2)
        }
    }
}
