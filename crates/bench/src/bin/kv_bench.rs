//! `kv_bench`: load generator for rskv (modelled on etcd's `benchmark`). Thin: flags →
//! [`rskv_bench::run`] → a summary (or one JSON line with `--json`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::ValueEnum;
use rskv_bench::BenchOptions;
use rskv_bench::KeyDistribution;
use rskv_bench::Workload;
use rskv_client::Consistency;
use rskv_client::DEV_ADDR;

/// mimalloc, as in `kv_server`: the generator shares the machine with the cluster it measures,
/// and with glibc's malloc its allocations were ~8% of its CPU (64-client puts).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Put,
    Get,
    Mixed,
    Cas,
    /// Fill the whole key space with batch puts (preloading).
    Load,
    /// etcd target only: one-put transactions with no comparison (etcd's `txn-put`).
    TxnPut,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TargetArg {
    Rskv,
    Etcd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Read {
    Linearizable,
    Stale,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dist {
    Uniform,
    Zipfian,
}

/// Benchmark an rskv cluster.
#[derive(Debug, Parser)]
#[command(name = "kv_bench", version, about)]
struct Args {
    /// The operation mix.
    #[arg(value_enum)]
    workload: Kind,
    /// The system to load: rskv, or etcd (needs a build with `--features etcd`).
    #[arg(long, value_enum, default_value = "rskv")]
    target: TargetArg,
    /// Comma-separated node addresses.
    #[arg(long, value_delimiter = ',', default_value = DEV_ADDR)]
    endpoints: Vec<String>,
    /// rskv: TLS to every node, and the user to authenticate as.
    #[command(flatten)]
    security: rskv_client::tls::SecurityArgs,
    /// gRPC connections per node (rskv: all in one client; etcd: one client each).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// rskv: Multi RPCs in flight per node; requests waiting behind them go together in
    /// the next one. 0 sends every request as its own RPC (as the etcd target does).
    #[arg(long, default_value_t = rskv_client::ClientOptions::default().batch_inflight)]
    batch_inflight: usize,
    /// rskv: send writes without a client session (as before sessions existed; an ambiguous
    /// write is then reported, not retried). For measuring what sessions cost.
    #[arg(long)]
    no_sessions: bool,
    /// Concurrent requests.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total requests (default 10000 unless --duration is given).
    #[arg(long)]
    total: Option<u64>,
    /// Run for this many seconds instead of a total.
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    dist: Dist,
    /// Read consistency for get and mixed.
    #[arg(long, value_enum, default_value = "linearizable")]
    consistency: Read,
    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
    /// Generator threads (tokio workers). One by default: the generator shares the cores with
    /// the cluster it measures, and a single thread spends less on cross-thread wake-ups
    /// (interleaved on this 2-core machine: 64-client puts +1-7% per round, 256-client stale
    /// gets no slower, and the same generator drives etcd).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.conns == 0
        || args.clients == 0
        || args.key_space == 0
        || args.key_size == 0
        || args.threads == 0
    {
        eprintln!(
            "error: --conns, --clients, --key-space, --key-size and --threads must be positive"
        );
        return ExitCode::from(2);
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        eprintln!("error: --read-ratio must be between 0 and 1");
        return ExitCode::from(2);
    }
    let consistency = match args.consistency {
        Read::Linearizable => Consistency::Linearizable,
        Read::Stale => Consistency::Stale,
    };
    let (tls, credentials) = match args.security.connection() {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("kv_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = BenchOptions {
        target: match args.target {
            TargetArg::Rskv => rskv_bench::Target::Rskv,
            TargetArg::Etcd => rskv_bench::Target::Etcd,
        },
        endpoints: args.endpoints.clone(),
        tls,
        credentials,
        conns: args.conns,
        batch_inflight: args.batch_inflight,
        sessions: !args.no_sessions,
        clients: args.clients,
        total: args.total,
        duration: args
            .duration
            .filter(|d| *d > 0.0)
            .map(Duration::from_secs_f64),
        key_size: args.key_size,
        val_size: args.val_size,
        key_space: args.key_space,
        distribution: match args.dist {
            Dist::Uniform => KeyDistribution::Uniform,
            Dist::Zipfian => KeyDistribution::Zipfian,
        },
        workload: match args.workload {
            Kind::Put => Workload::Put,
            Kind::Get => Workload::Get(consistency),
            Kind::Mixed => Workload::Mixed {
                read_ratio: args.read_ratio,
                consistency,
            },
            Kind::Cas => Workload::Cas,
            Kind::Load => Workload::Load,
            Kind::TxnPut => Workload::TxnPut,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match runtime.block_on(rskv_bench::run(&opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if args.json {
        println!("{}", report.to_json(&opts));
    } else {
        println!(
            "{:?}: {} ok in {:.2}s = {:.0} req/s (clients {}, conns {})",
            opts.workload,
            report.ok,
            report.elapsed.as_secs_f64(),
            report.throughput(),
            opts.clients,
            opts.conns
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            report.latency_ms(0.5),
            report.latency_ms(0.9),
            report.latency_ms(0.99),
            report.latency_ms(0.999),
            report.latency_us.max() as f64 / 1000.0
        );
        if !report.errors.is_empty() {
            println!("errors: {:?}", report.errors);
        }
    }
    if report.ok == 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
