//! # rskv-bench: the load generator behind `kv_bench`, modelled on etcd's `benchmark` tool: `conns` gRPC
//! connections per node shared by `clients` concurrent requesters, each request timed into an HDR
//! histogram. For rskv that is one [`Client`] holding `conns` connections to each node (its
//! batcher coalesces across all of them); for etcd, `conns` clients with the requesters spread
//! over them, as etcd's own benchmark does (etcd's client does not pool connections).
//!
//! It goes through the library [`Client`], so leader redirects are part of what is measured.

// Library code never unwraps: a panic on a server path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::Rng;
use rand::SeedableRng;

use rskv_client::Client;
use rskv_client::ClientError;
use rskv_client::ClientOptions;
use rskv_client::Consistency;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of random keys at the given consistency.
    Get(Consistency),
    /// Gets with probability `read_ratio`, puts otherwise.
    Mixed {
        /// Fraction of requests that are reads.
        read_ratio: f64,
        /// Consistency of the reads.
        consistency: Consistency,
    },
    /// Compare-and-swap from the value last seen (absent at first) to a new one.
    Cas,
    /// Fills the key space with batch puts (100 keys each), e.g. to preload data.
    Load,
    /// etcd target only: a transaction with no comparison whose success branch puts one random
    /// key (etcd's `benchmark txn-put` with one op).
    TxnPut,
}

/// How keys are drawn from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent 0.99 (a few hot keys), as YCSB.
    Zipfian,
}

/// Which system the load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// rskv, through the library client (leader redirect included).
    Rskv,
    /// etcd's v3 API (feature `etcd`), through the `etcd-client` crate: puts, linearizable or
    /// serializable ranges, one-put transactions. etcd itself, or rskv's etcd API on its client
    /// port. Requests go to the endpoints given (pass the leader: etcd's client follows no
    /// redirect, and an rskv follower forwards).
    Etcd,
}

/// A benchmark run's parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The system under test.
    pub target: Target,
    /// Node addresses.
    pub endpoints: Vec<String>,
    /// rskv: TLS to every node; `None`: plaintext (the etcd target speaks plaintext only).
    pub tls: Option<rskv_client::tls::TlsDialer>,
    /// rskv: the user to authenticate as (etcd's auth enabled on the cluster).
    pub credentials: Option<rskv_client::auth::Credentials>,
    /// gRPC connections per node.
    pub conns: usize,
    /// rskv: Multi RPCs in flight per node before requests are batched
    /// ([`ClientOptions::batch_inflight`]); 0 sends every request alone.
    pub batch_inflight: usize,
    /// rskv: writes through a client session, exactly once ([`ClientOptions::sessions`]).
    pub sessions: bool,
    /// Concurrent requesters.
    pub clients: usize,
    /// Stop after this many requests…
    pub total: Option<u64>,
    /// …or after this long.
    pub duration: Option<Duration>,
    /// Key length in bytes (keys are zero-padded decimal numbers).
    pub key_size: usize,
    /// Value length in bytes.
    pub val_size: usize,
    /// Number of distinct keys.
    pub key_space: u64,
    /// Key distribution.
    pub distribution: KeyDistribution,
    /// The operation mix.
    pub workload: Workload,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Successful requests.
    pub ok: u64,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latencies of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl BenchReport {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// One JSON object with every figure.
    pub fn to_json(&self, opts: &BenchOptions) -> serde_json::Value {
        serde_json::json!({
            "workload": format!("{:?}", opts.workload),
            "clients": opts.clients,
            "conns": opts.conns,
            "batch_inflight": opts.batch_inflight,
            "sessions": opts.sessions,
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput": self.throughput(),
            "p50_ms": self.latency_ms(0.5),
            "p90_ms": self.latency_ms(0.9),
            "p99_ms": self.latency_ms(0.99),
            "p999_ms": self.latency_ms(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
        })
    }
}

/// Draws key indexes according to a distribution.
struct KeyGen {
    /// Zipfian: cumulative probabilities, searched by binary search.
    cdf: Option<Arc<Vec<f64>>>,
    space: u64,
}

impl KeyGen {
    fn new(space: u64, distribution: KeyDistribution) -> KeyGen {
        let cdf = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipfian => {
                let n = space.min(10_000_000) as usize;
                let mut acc = 0.0;
                let mut cdf = Vec::with_capacity(n);
                for i in 1..=n {
                    acc += 1.0 / (i as f64).powf(0.99);
                    cdf.push(acc);
                }
                for v in &mut cdf {
                    *v /= acc;
                }
                Some(Arc::new(cdf))
            }
        };
        KeyGen { cdf, space }
    }

    fn next(&self, rng: &mut impl Rng) -> u64 {
        match &self.cdf {
            None => rng.random_range(0..self.space),
            Some(cdf) => {
                let u: f64 = rng.random();
                cdf.partition_point(|p| *p < u) as u64
            }
        }
    }
}

fn key(index: u64, size: usize) -> Bytes {
    Bytes::from(format!("{index:0size$}"))
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::InvalidArgument(_) => "invalid_argument".into(),
        ClientError::Unavailable(_) => "unavailable".into(),
        ClientError::Ambiguous(_) => "ambiguous".into(),
        ClientError::SessionExpired(_) => "session_expired".into(),
        ClientError::Status(s) => format!("{:?}", s.code()).to_lowercase(),
        ClientError::Config(_) => "config".into(),
    }
}

/// One connection of the system under test.
#[derive(Clone)]
enum Conn {
    Rskv(Arc<Client>),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>),
}

impl Conn {
    async fn put(&self, key: Bytes, value: Bytes) -> Result<(), ClientError> {
        match self {
            Conn::Rskv(c) => c.put(key, value).await.map(|_| ()),
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => c
                .clone()
                .put(key.to_vec(), value.to_vec(), None)
                .await
                .map(|_| ())
                .map_err(etcd_error),
        }
    }

    async fn get(&self, key: Bytes, consistency: Consistency) -> Result<(), ClientError> {
        match self {
            Conn::Rskv(c) => c.get_with(key, consistency).await.map(|_| ()),
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => {
                let opts = match consistency {
                    Consistency::Stale => Some(etcd_client::GetOptions::new().with_serializable()),
                    Consistency::Linearizable => None,
                };
                c.clone()
                    .get(key.to_vec(), opts)
                    .await
                    .map(|_| ())
                    .map_err(etcd_error)
            }
        }
    }

    /// A transaction with no comparison putting `key` (etcd only).
    async fn txn_put(&self, key: Bytes, value: Bytes) -> Result<(), ClientError> {
        match self {
            Conn::Rskv(_) => {
                let _ = (key, value);
                Err(ClientError::Config(
                    "txn-put is only implemented for the etcd target".into(),
                ))
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => {
                let txn = etcd_client::Txn::new().and_then(vec![etcd_client::TxnOp::put(
                    key.to_vec(),
                    value.to_vec(),
                    None,
                )]);
                c.clone().txn(txn).await.map(|_| ()).map_err(etcd_error)
            }
        }
    }

    fn rskv(&self) -> Result<&Client, ClientError> {
        match self {
            Conn::Rskv(c) => Ok(c),
            #[cfg(feature = "etcd")]
            Conn::Etcd(_) => Err(ClientError::Config(
                "this workload is only implemented for rskv".into(),
            )),
        }
    }
}

#[cfg(feature = "etcd")]
fn etcd_error(e: etcd_client::Error) -> ClientError {
    match e {
        etcd_client::Error::GRpcStatus(s) => ClientError::Status(s),
        other => ClientError::Unavailable(other.to_string().into()),
    }
}

async fn connect(opts: &BenchOptions) -> Result<Conn, ClientError> {
    match opts.target {
        Target::Rskv => Ok(Conn::Rskv(Arc::new(Client::with_options(
            opts.endpoints.clone(),
            ClientOptions {
                batch_inflight: opts.batch_inflight,
                connections: opts.conns,
                sessions: opts.sessions,
                tls: opts.tls.clone(),
                credentials: opts.credentials.clone(),
                ..ClientOptions::default()
            },
        )?))),
        #[cfg(feature = "etcd")]
        Target::Etcd => {
            let client = etcd_client::Client::connect(&opts.endpoints, None)
                .await
                .map_err(|e| ClientError::Unavailable(e.to_string().into()))?;
            Ok(Conn::Etcd(Box::new(client.kv_client())))
        }
        #[cfg(not(feature = "etcd"))]
        Target::Etcd => Err(ClientError::Config(
            "kv_bench was built without the `etcd` feature (cargo build --features etcd)".into(),
        )),
    }
}

/// Runs the benchmark.
///
/// # Errors
/// [`ClientError::Config`] for unusable endpoints or an unsupported target/workload.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, ClientError> {
    let mut conns = vec![connect(opts).await?];
    if opts.target == Target::Etcd {
        for _ in 1..opts.conns {
            conns.push(connect(opts).await?);
        }
    }
    if opts.target == Target::Etcd && (opts.tls.is_some() || opts.credentials.is_some()) {
        return Err(ClientError::Config(
            "TLS and --user are only implemented for the rskv target".into(),
        ));
    }
    if opts.target == Target::Etcd && matches!(opts.workload, Workload::Cas | Workload::Load) {
        return Err(ClientError::Config(
            "cas and load are only implemented for rskv".into(),
        ));
    }
    if opts.target == Target::Rskv && opts.workload == Workload::TxnPut {
        return Err(ClientError::Config(
            "txn-put is only implemented for the etcd target".into(),
        ));
    }
    let issued = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'v'; opts.val_size]);
    let keys = Arc::new(KeyGen::new(opts.key_space.max(1), opts.distribution));
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let total = match (opts.total, opts.workload) {
        (_, Workload::Load) => Some(opts.key_space.div_ceil(100)),
        (Some(t), _) => Some(t),
        (None, _) if opts.duration.is_some() => None,
        (None, _) => Some(10_000),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..opts.clients.max(1) {
        let client = conns[worker % conns.len()].clone();
        let issued = issued.clone();
        let keys = keys.clone();
        let value = value.clone();
        let opts = opts.clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(worker as u64 + 1);
            let mut hist = Histogram::<u64>::new(3).ok();
            let mut ok = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut last_cas: Option<Bytes> = None;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| n >= t) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t0 = Instant::now();
                let result: Result<(), ClientError> = match opts.workload {
                    Workload::Put => {
                        client
                            .put(key(keys.next(&mut rng), opts.key_size), value.clone())
                            .await
                    }
                    Workload::Get(c) => {
                        client.get(key(keys.next(&mut rng), opts.key_size), c).await
                    }
                    Workload::TxnPut => {
                        client
                            .txn_put(key(keys.next(&mut rng), opts.key_size), value.clone())
                            .await
                    }
                    Workload::Mixed {
                        read_ratio,
                        consistency,
                    } => {
                        let k = key(keys.next(&mut rng), opts.key_size);
                        if rng.random::<f64>() < read_ratio {
                            client.get(k, consistency).await
                        } else {
                            client.put(k, value.clone()).await
                        }
                    }
                    Workload::Cas => {
                        let client = match client.rskv() {
                            Ok(c) => c,
                            Err(e) => {
                                *errors.entry(error_kind(&e)).or_default() += 1;
                                break;
                            }
                        };
                        let k = key(worker as u64 % opts.key_space.max(1), opts.key_size);
                        let next = Bytes::from(format!("{worker}-{n}"));
                        match client
                            .compare_and_swap(k, last_cas.clone(), next.clone())
                            .await
                        {
                            Ok(outcome) => {
                                last_cas = outcome.current;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Workload::Load => {
                        let client = match client.rskv() {
                            Ok(c) => c,
                            Err(e) => {
                                *errors.entry(error_kind(&e)).or_default() += 1;
                                break;
                            }
                        };
                        let first = n * 100;
                        let pairs = (first..(first + 100).min(opts.key_space))
                            .map(|i| (key(i, opts.key_size), value.clone()))
                            .collect();
                        client.batch_put(pairs).await.map(|_| ())
                    }
                };
                match result {
                    Ok(()) => {
                        ok += 1;
                        if let Some(h) = &mut hist {
                            let _ = h.record(t0.elapsed().as_micros() as u64);
                        }
                    }
                    Err(e) => *errors.entry(error_kind(&e)).or_default() += 1,
                }
            }
            (ok, errors, hist)
        });
    }
    let mut report = BenchReport {
        ok: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency_us: Histogram::new(3).map_err(|e| ClientError::Config(e.to_string()))?,
    };
    while let Some(done) = tasks.join_next().await {
        let Ok((ok, errors, hist)) = done else {
            *report.errors.entry("panic".into()).or_default() += 1;
            continue;
        };
        report.ok += ok;
        for (k, v) in errors {
            *report.errors.entry(k).or_default() += v;
        }
        if let Some(h) = hist {
            let _ = report.latency_us.add(h);
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
