//! The register workload: clients read, write and compare-and-swap a few keys through the
//! library [`Client`] (leader redirect included), recording every operation for the checker.

use std::collections::HashMap;
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
use crate::client::ClientError;
use crate::client::ClientOptions;
use crate::client::Consistency;
use crate::Client;

/// Every operation of a run, shared by the clients.
pub type History = Arc<Mutex<Vec<Op>>>;

/// Maps a client error to a history outcome: definitely not applied, or unknown.
///
/// The client retries a write only while it certainly did nothing (refused before sending, or
/// "not leader"), and reports an ambiguous failure as such without retrying; so "gave up" is a
/// definite failure and only `Ambiguous` or an unexpected status is unknown.
pub fn outcome_of(e: &ClientError) -> Outcome {
    match e {
        ClientError::InvalidArgument(_) | ClientError::Config(_) | ClientError::Unavailable(_) => {
            Outcome::Fail
        }
        ClientError::Ambiguous(_) | ClientError::Status(_) => Outcome::Info,
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
/// stalls, long enough for an election.
///
/// # Errors
/// When no endpoint is given.
pub fn suite_client(endpoints: Vec<String>) -> Result<Client, ClientError> {
    Client::with_options(
        endpoints,
        ClientOptions {
            deadline: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
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

async fn write(client: &Client, process: u64, key: &str, value: String, epoch: Instant) -> Op {
    let invoke = since(epoch);
    let outcome = match client.put(key.to_string(), value.clone()).await {
        Ok(_) => Outcome::Ok,
        Err(e) => outcome_of(&e),
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
        Err(e) => (
            OpKind::Cas {
                from,
                to,
                success: false,
                current: None,
            },
            outcome_of(&e),
        ),
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
    mut stop: watch::Receiver<bool>,
) {
    let Workload {
        keys,
        clients,
        rate,
        reads,
        epoch,
        history,
    } = workload;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut process = index;
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let key = &keys[rng.random_range(0..keys.len())];
        let roll = rng.random_range(0..10);
        n += 1;
        let op = if roll < 4 {
            read(&client, process, key, reads, epoch).await
        } else if roll < 7 {
            write(&client, process, key, format!("{process}.{n}"), epoch).await
        } else {
            let from = seen.get(key.as_str()).cloned().flatten();
            cas(&client, process, key, from, format!("{process}.{n}"), epoch).await
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
