//! The register workload: clients read, write and compare-and-swap a few keys through the
//! library [`Client`] (leader redirect included), recording every operation for the checker.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use rand::SeedableRng;
use tokio::sync::watch;

use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;
use rskv_client::Client;
use rskv_client::ClientError;
use rskv_client::ClientOptions;
use rskv_client::Consistency;

/// Every operation of a run, shared by the clients.
pub type History = Arc<Mutex<Vec<Op>>>;

/// Writes of a run whose outcome stayed unknown, by why (shared by every client).
#[derive(Debug, Default)]
pub struct Unknowns {
    /// The deadline passed after an attempt whose outcome is unknown (or an unexpected status).
    pub ambiguous: AtomicU64,
    /// The session expired between an unknown attempt and its retry.
    pub session_expired: AtomicU64,
}

impl Unknowns {
    /// Counts `e` if it leaves a write's outcome unknown.
    pub fn count(&self, e: &ClientError) {
        match e {
            ClientError::SessionExpired(_) => {
                self.session_expired.fetch_add(1, Ordering::Relaxed);
            }
            e if outcome_of(e) == Outcome::Info => {
                self.ambiguous.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Maps a client error to a history outcome: definitely not applied, or unknown.
///
/// The client's writes go through its session: an attempt whose outcome is unknown is retried
/// until one answers, and "gave up" (`Unavailable`) means no attempt can have been applied; only
/// `Ambiguous` (the deadline passed after an unknown attempt), `SessionExpired` (the session
/// expired in between) or an unexpected status are unknown.
pub fn outcome_of(e: &ClientError) -> Outcome {
    match e {
        ClientError::InvalidArgument(_) | ClientError::Config(_) | ClientError::Unavailable(_) => {
            Outcome::Fail
        }
        ClientError::Ambiguous(_) | ClientError::SessionExpired(_) | ClientError::Status(_) => {
            Outcome::Info
        }
    }
}

fn text(b: Option<Bytes>) -> Option<String> {
    b.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Nanoseconds since the run's epoch: the one monotonic clock of the history.
pub fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A client with the suite's timeouts: short enough that faults produce `info` ops rather than
/// stalls, long enough for an election; in TLS with `tls`.
///
/// # Errors
/// When no endpoint is given.
pub fn suite_client(
    endpoints: Vec<String>,
    tls: Option<rskv_client::tls::TlsDialer>,
) -> Result<Client, ClientError> {
    Client::with_options(
        endpoints,
        ClientOptions {
            deadline: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            tls,
            ..ClientOptions::default()
        },
    )
}

/// Reads `key` as history operation `process`.
pub async fn read(
    client: &Client,
    process: u64,
    key: &str,
    consistency: Consistency,
    epoch: Instant,
) -> Op {
    let invoke = since(epoch);
    let (value, outcome) = match client.get_with(key.to_string(), consistency).await {
        Ok(r) => (
            r.found
                .then(|| String::from_utf8_lossy(&r.value).into_owned()),
            Outcome::Ok,
        ),
        Err(e) => (None, outcome_of(&e)),
    };
    Op {
        process,
        key: key.to_string(),
        kind: OpKind::Read { value },
        outcome,
        invoke,
        complete: since(epoch),
    }
}

async fn write(
    client: &Client,
    process: u64,
    key: &str,
    value: String,
    epoch: Instant,
    unknowns: &Unknowns,
) -> Op {
    let invoke = since(epoch);
    let outcome = match client.put(key.to_string(), value.clone()).await {
        Ok(_) => Outcome::Ok,
        Err(e) => {
            unknowns.count(&e);
            outcome_of(&e)
        }
    };
    Op {
        process,
        key: key.to_string(),
        kind: OpKind::Write { value },
        outcome,
        invoke,
        complete: since(epoch),
    }
}

async fn cas(
    client: &Client,
    process: u64,
    key: &str,
    from: Option<String>,
    to: String,
    epoch: Instant,
    unknowns: &Unknowns,
) -> Op {
    let invoke = since(epoch);
    let result = client
        .compare_and_swap(key.to_string(), from.clone().map(Bytes::from), to.clone())
        .await;
    let (kind, outcome) = match result {
        Ok(o) => (
            OpKind::Cas {
                from,
                to,
                success: o.success,
                current: text(o.current),
            },
            Outcome::Ok,
        ),
        Err(e) => {
            unknowns.count(&e);
            (
                OpKind::Cas {
                    from,
                    to,
                    success: false,
                    current: None,
                },
                outcome_of(&e),
            )
        }
    };
    Op {
        process,
        key: key.to_string(),
        kind,
        outcome,
        invoke,
        complete: since(epoch),
    }
}

/// A client's pace: one operation every `1 / rate` seconds (falling behind, it goes on at that
/// pace rather than catching up in a burst), until told to stop.
pub(crate) struct Pace {
    ticker: tokio::time::Interval,
    stop: watch::Receiver<bool>,
}

impl Pace {
    pub(crate) fn new(rate: f64, stop: watch::Receiver<bool>) -> Pace {
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pace { ticker, stop }
    }

    /// Waits for the next operation's turn; `false` once the run is told to stop.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => {}
            _ = self.stop.changed() => return false,
        }
        !*self.stop.borrow()
    }
}

/// The workload every client runs.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The keys, picked uniformly.
    pub keys: Arc<Vec<String>>,
    /// Number of clients (process ids advance by this after an unknown outcome).
    pub clients: u64,
    /// Operations per second per client.
    pub rate: f64,
    /// Consistency of the reads.
    pub reads: Consistency,
    /// Time zero of the history.
    pub epoch: Instant,
    /// Where operations are recorded.
    pub history: History,
    /// Writes left with an unknown outcome.
    pub unknowns: Arc<Unknowns>,
}

/// Client `index`'s loop: a random key and operation (40% reads, 30% writes, 30% CAS from the
/// last value this client saw) at the workload's rate until `stop`. After an unknown outcome
/// the client continues as a new process, as Jepsen does: a process has at most one operation
/// pending.
pub async fn run_client(
    index: u64,
    client: std::sync::Arc<Client>,
    workload: Workload,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let Workload {
        keys,
        clients,
        rate,
        reads,
        epoch,
        history,
        unknowns,
    } = workload;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut process = index;
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut pace = Pace::new(rate, stop);
    let mut n = 0u64;
    while pace.next().await {
        let key = &keys[rng.random_range(0..keys.len())];
        let roll = rng.random_range(0..10);
        n += 1;
        let op = if roll < 4 {
            read(&client, process, key, reads, epoch).await
        } else if roll < 7 {
            write(
                &client,
                process,
                key,
                format!("{process}.{n}"),
                epoch,
                &unknowns,
            )
            .await
        } else {
            let from = seen.get(key.as_str()).cloned().flatten();
            let to = format!("{process}.{n}");
            cas(&client, process, key, from, to, epoch, &unknowns).await
        };
        if op.outcome == Outcome::Ok {
            let now = match &op.kind {
                OpKind::Read { value } => value.clone(),
                OpKind::Write { value } => Some(value.clone()),
                OpKind::Cas { current, .. } => current.clone(),
            };
            seen.insert(key.clone(), now);
        }
        let unknown = op.outcome == Outcome::Info;
        if let Ok(mut h) = history.lock() {
            h.push(op);
        }
        if unknown {
            process += clients;
        }
    }
}

/// The counter workload's key: outside the registers' prefix, checked on its own.
pub const COUNTER_KEY: &str = "jc/counter";

/// What the counter clients did.
#[derive(Debug, Default)]
pub struct CounterTally {
    /// Increments acknowledged as applied.
    pub acked: AtomicU64,
    /// Increments whose outcome stayed unknown.
    pub unknown: AtomicU64,
    /// Increments that certainly did nothing (no node answered in time).
    pub failed: AtomicU64,
}

/// A counter client: at `rate` per second until `stop`, reads the counter and compare-and-swaps
/// it one up, counting each increment as acknowledged, failed or unknown. With exactly-once
/// writes the counter ends between the acknowledged increments and those plus the unknown ones
/// (equal to the acknowledged ones when nothing is unknown), whatever the faults did.
pub async fn run_counter(
    client: Arc<Client>,
    rate: f64,
    tally: Arc<CounterTally>,
    unknowns: Arc<Unknowns>,
    stop: watch::Receiver<bool>,
) {
    let mut pace = Pace::new(rate, stop);
    while pace.next().await {
        let Ok(current) = client.get(COUNTER_KEY).await else {
            continue;
        };
        let value: u64 = current
            .as_ref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let next = (value + 1).to_string();
        match client.compare_and_swap(COUNTER_KEY, current, next).await {
            Ok(o) if o.success => {
                tally.acked.fetch_add(1, Ordering::Relaxed);
            }
            // Another client got there first: nothing changed.
            Ok(_) => {}
            Err(e) => {
                unknowns.count(&e);
                let counter = match outcome_of(&e) {
                    Outcome::Info => &tally.unknown,
                    _ => &tally.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
