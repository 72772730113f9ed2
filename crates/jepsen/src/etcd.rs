//! The etcd workload: rskv driven through etcd's v3 API with the `etcd-client` crate (a client
//! nobody here wrote), checked on what etcd promises.
//!
//! Three parts run together, every client on one node of its own (followers forward to the
//! leader):
//!
//! - **Registers updated by Txn.** A client reads a key (a linearizable `Range`: value and
//!   `mod_revision`), then writes a unique value with a `Txn` comparing `mod_revision` to the one
//!   it read (success: put; failure: read the key). Every written value is unique and keys are
//!   never deleted, so "the key's `mod_revision` is still `m`" is "the key still holds the value
//!   read with `m`" (0: absent), and the Txn is a compare-and-swap on values: the history goes to
//!   the suite's linearizability checker ([`crate::checker`]) unchanged.
//! - **Watches from revision 1 on every node**, over all keys, resumed after a break from the last
//!   revision received + 1. At the end every node's sequence of events must be the same, contain
//!   every revision from 2 (the first write of a fresh store) to the final one, replay into
//!   exactly what a final `Range` at that revision returns, and hold every acknowledged write at
//!   the revision it was acknowledged with.
//! - **A lease-held lock** with etcd's lock recipe (`clientv3/concurrency.Mutex`; etcd-client's
//!   own `lock()` calls etcd's server-side lock service, `v3lockpb`, which rskv does not serve).
//!   See [`check_locks`] for exactly what is checked and why it is sound.
//!
//! Every answer that carries a revision is also checked against real time: an operation invoked
//! after another completed must not see an older revision ([`check_revision_order`]).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use etcd_client as ec;
use rand::Rng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checker;
use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;
use crate::workload::since;
use crate::workload::Pace;
use crate::Counts;

/// The registers' keys.
pub const REGISTER_PREFIX: &str = "je/r/";
/// The lock's keys (one per waiter: the prefix and its lease id in hex, as etcd's recipe).
pub const LOCK_PREFIX: &str = "je/lock/";
/// Every call is given up after this (an unanswered write is then `info`).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The lock workers' lease TTL in seconds (rskv's minimum).
const LEASE_TTL: i64 = 2;
/// Concurrent lock workers.
const LOCK_WORKERS: u64 = 3;
/// History process ids of the etcd clients start here (apart from the register workload's).
const PROCESS_BASE: u64 = 1 << 32;

/// Why a call did not answer.
#[derive(Debug)]
enum CallError {
    Timeout,
    Etcd(ec::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => write!(f, "no answer in {CALL_TIMEOUT:?}"),
            CallError::Etcd(e) => write!(f, "{e}"),
        }
    }
}

/// A call bounded by [`CALL_TIMEOUT`] (etcd-client's balanced channel can wait for a dead
/// endpoint forever).
async fn within<T>(call: impl Future<Output = Result<T, ec::Error>>) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Etcd(e)),
        Err(_) => Err(CallError::Timeout),
    }
}

/// A write's outcome after an error: `fail` only for refusals that happen before anything is
/// proposed (bad input, a compacted or future revision, an unknown lease); everything else
/// (timeouts, transport errors, `UNAVAILABLE`) may have been applied.
fn outcome_of(e: &CallError) -> Outcome {
    match e {
        CallError::Etcd(ec::Error::GRpcStatus(s))
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::OutOfRange
                    | tonic::Code::Unimplemented
            ) =>
        {
            Outcome::Fail
        }
        CallError::Etcd(ec::Error::InvalidArgs(_)) => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// One member's client address, and how the etcd client reaches it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// TLS (`None`: plaintext).
    pub tls: Option<ec::TlsOptions>,
}

/// A client of one node, with the suite's timeouts.
async fn connect(endpoint: &Endpoint) -> Option<ec::Client> {
    let mut options = ec::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
    let url = match &endpoint.tls {
        Some(tls) => {
            options = options.with_tls(tls.clone());
            format!("https://{}", endpoint.addr)
        }
        None => endpoint.addr.clone(),
    };
    within(ec::Client::connect([url], Some(options))).await.ok()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision())
}

/// An answered call and the store revision its answer carried: a write's own revision, or for
/// a read the revision of the state read (a `Range`'s header revision is read before its data,
/// so it is at most the revision the data is at).
#[derive(Debug, Clone, Serialize)]
pub struct Stamp {
    /// Invocation time (ns since the run's epoch).
    pub invoke: u64,
    /// Completion time.
    pub complete: u64,
    /// The revision answered.
    pub revision: i64,
    /// Whether the call wrote (and so got a revision of its own).
    pub write: bool,
    /// What it was, for reports.
    pub what: String,
}

/// An acknowledged change and the revision it was acknowledged with.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    /// Its key.
    pub key: String,
    /// The value put, `None` for a delete.
    pub value: Option<String>,
    /// Its revision.
    pub revision: i64,
}

/// One time a lock worker held the lock.
#[derive(Debug, Clone, Serialize)]
pub struct Acquisition {
    /// The worker.
    pub worker: u64,
    /// Its lease.
    pub lease: i64,
    /// Its lock key.
    pub key: String,
    /// The lock key's create revision.
    pub create_revision: i64,
    /// The revision of the transaction that showed the key as the oldest under the prefix.
    pub claim_revision: i64,
    /// The oldest key under the prefix that transaction returned (key, create revision).
    pub owner_seen: Option<(String, i64)>,
    /// Whether the worker waited for older keys to go.
    pub waited: bool,
    /// When the claim was invoked and answered (ns since the epoch).
    pub claim_invoke: u64,
    /// When the worker started holding the lock.
    pub claim_complete: u64,
    /// When the release (delete of the key) was invoked.
    pub release_invoke: u64,
    /// Its answer: the delete's revision and how many keys it deleted (0: the lease had expired
    /// and taken the key first); `None` when unanswered.
    pub release: Option<(i64, i64)>,
}

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The event's revision (its key's `mod_revision`).
    pub revision: i64,
    /// The key.
    pub key: String,
    /// `true` for a put, `false` for a delete.
    pub put: bool,
    /// The value put.
    pub value: Option<String>,
    /// The key's `create_revision` (0 for a delete).
    pub create_revision: i64,
    /// The key's `version` (0 for a delete).
    pub version: i64,
}

/// What one node's watcher received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchLog {
    /// The node.
    pub node: u64,
    /// Events in arrival order, over every resumed stream.
    pub events: Vec<Event>,
    /// How many times the stream broke and was resumed.
    pub resumes: u64,
    /// Why it stopped for good before the end, if it did (a canceled watch).
    pub ended: Option<String>,
}

/// What the workload recorded, shared by its tasks.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The registers' history (read / CAS).
    pub history: Mutex<Vec<Op>>,
    /// Every answer with a revision.
    pub stamps: Mutex<Vec<Stamp>>,
    /// Acknowledged changes.
    pub acks: Mutex<Vec<Ack>>,
    /// Lock tenures.
    pub locks: Mutex<Vec<Acquisition>>,
    /// Lock attempts given up (an error, a timeout, a lease lost while waiting).
    pub lock_abandoned: AtomicU64,
    /// Leases granted to lock workers.
    pub leases: AtomicU64,
}

impl Recorded {
    fn push<T>(list: &Mutex<Vec<T>>, item: T) {
        if let Ok(mut l) = list.lock() {
            l.push(item);
        }
    }

    fn stamp(&self, invoke: u64, complete: u64, revision: i64, write: bool, what: String) {
        Self::push(
            &self.stamps,
            Stamp {
                invoke,
                complete,
                revision,
                write,
                what,
            },
        );
    }
}

/// What the etcd workload is asked to do.
#[derive(Debug, Clone)]
pub struct EtcdSpec {
    /// Registers.
    pub keys: usize,
    /// Register clients.
    pub clients: usize,
    /// Register operations per second, all clients together.
    pub rate: f64,
    /// Seed of the random choices.
    pub seed: u64,
    /// Serializable (member-local, possibly stale) Ranges instead of linearizable ones: a run
    /// with partitions should then fail, showing that the checks can.
    pub serializable: bool,
    /// TLS to every member (`None`: plaintext).
    pub tls: Option<ec::TlsOptions>,
}

/// What the register clients share.
struct Registers {
    keys: Arc<Vec<String>>,
    clients: u64,
    rate: f64,
    serializable: bool,
    epoch: Instant,
    rec: Arc<Recorded>,
}

/// A register client: at its rate, a linearizable Range of a random key, then in 7 of 10
/// operations a Txn writing a unique value if the key's `mod_revision` is still the one read. A
/// process has at most one operation pending: after an unknown outcome the client goes on as a
/// new process.
async fn run_register_client(
    index: u64,
    endpoint: Endpoint,
    regs: Arc<Registers>,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let Registers {
        keys,
        clients,
        rate,
        serializable,
        epoch,
        rec,
    } = &*regs;
    let (clients, rate, epoch) = (*clients, *rate, *epoch);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut process = PROCESS_BASE + index;
    let mut pace = Pace::new(rate, stop);
    let mut client: Option<ec::Client> = None;
    let mut n = 0u64;
    while pace.next().await {
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint).await;
            continue;
        };
        let key = &keys[rng.random_range(0..keys.len())];
        n += 1;
        let invoke = since(epoch);
        let options = serializable.then(|| ec::GetOptions::new().with_serializable());
        let read = within(c.get(key.as_str(), options)).await;
        let complete = since(epoch);
        let (value, outcome, seen) = match read {
            Ok(r) => {
                let kv = r.kvs().first();
                let value = kv.map(|kv| text(kv.value()));
                let m = kv.map_or(0, |kv| kv.mod_revision());
                rec.stamp(
                    invoke,
                    complete,
                    header_revision(r.header()),
                    false,
                    format!("range {key}"),
                );
                (value.clone(), Outcome::Ok, Some((value, m)))
            }
            Err(e) => {
                // A read changes nothing: whatever the error, it is left out of the history.
                client = None;
                (None, outcome_of(&e), None)
            }
        };
        Recorded::push(
            &rec.history,
            Op {
                process,
                key: key.clone(),
                kind: OpKind::Read { value },
                outcome,
                invoke,
                complete,
            },
        );
        let Some((from, m)) = seen else { continue };
        if rng.random_range(0..10) < 3 {
            continue;
        }
        let to = format!("e{process}.{n}");
        let txn = ec::Txn::new()
            .when([ec::Compare::mod_revision(
                key.as_str(),
                ec::CompareOp::Equal,
                m,
            )])
            .and_then([ec::TxnOp::put(key.as_str(), to.as_str(), None)])
            .or_else([ec::TxnOp::get(key.as_str(), None)]);
        let Some(c) = client.as_mut() else { continue };
        let invoke = since(epoch);
        let result = within(c.txn(txn)).await;
        let complete = since(epoch);
        let (success, current, outcome) = match result {
            Ok(r) => {
                let revision = header_revision(r.header());
                if r.succeeded() {
                    Recorded::push(
                        &rec.acks,
                        Ack {
                            key: key.clone(),
                            value: Some(to.clone()),
                            revision,
                        },
                    );
                }
                // On failure, what the key held (read by the failure branch) for the checker.
                let current = if r.succeeded() {
                    Some(to.clone())
                } else {
                    r.op_responses()
                        .into_iter()
                        .find_map(|op| match op {
                            ec::TxnOpResponse::Get(g) => {
                                Some(g.kvs().first().map(|kv| text(kv.value())))
                            }
                            _ => None,
                        })
                        .flatten()
                };
                rec.stamp(
                    invoke,
                    complete,
                    revision,
                    r.succeeded(),
                    format!("txn {key} mod={m}"),
                );
                (r.succeeded(), current, Outcome::Ok)
            }
            Err(e) => {
                client = None;
                (false, None, outcome_of(&e))
            }
        };
        Recorded::push(
            &rec.history,
            Op {
                process,
                key: key.clone(),
                kind: OpKind::Cas {
                    from,
                    to,
                    success,
                    current,
                },
                outcome,
                invoke,
                complete,
            },
        );
        if outcome == Outcome::Info {
            process += clients;
        }
    }
}

/// Watches every key on one node from revision 1 until `stop`, resuming after a break from the
/// last revision received + 1 (etcd never splits one revision's events over two responses
/// unless asked to fragment, so nothing is skipped). `progress` holds the newest revision
/// received; while it is below `target` a stream silent for 5 s is reopened.
async fn run_watcher(
    endpoint: Endpoint,
    log: Arc<Mutex<WatchLog>>,
    progress: Arc<AtomicI64>,
    target: Arc<AtomicI64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 1i64;
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
        }
        first = false;
        let Some(mut client) = connect(&endpoint).await else {
            continue;
        };
        let options = ec::WatchOptions::new()
            .with_all_keys()
            .with_start_revision(next);
        let mut stream = match within(client.watch("", Some(options))).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        loop {
            let quiet = if progress.load(Ordering::Relaxed) < target.load(Ordering::Relaxed) {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(3600)
            };
            let msg = tokio::select! {
                m = tokio::time::timeout(quiet, stream.message()) => m,
                _ = stop.changed() => return,
            };
            let resp = match msg {
                Ok(Ok(Some(resp))) => resp,
                // Silent while behind, ended or broken: resume.
                _ => {
                    if let Ok(mut l) = log.lock() {
                        l.resumes += 1;
                    }
                    break;
                }
            };
            if resp.canceled() {
                let why = format!(
                    "watch from revision {next} canceled (compact_revision {}): {}",
                    resp.compact_revision(),
                    resp.cancel_reason()
                );
                if let Ok(mut l) = log.lock() {
                    l.ended = Some(why);
                }
                return;
            }
            let mut newest = next - 1;
            if let Ok(mut l) = log.lock() {
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    let put = e.event_type() == ec::EventType::Put;
                    newest = newest.max(kv.mod_revision());
                    l.events.push(Event {
                        revision: kv.mod_revision(),
                        key: text(kv.key()),
                        put,
                        value: put.then(|| text(kv.value())),
                        create_revision: kv.create_revision(),
                        version: kv.version(),
                    });
                }
            }
            if newest >= next {
                next = newest + 1;
                progress.fetch_max(newest, Ordering::Relaxed);
            }
        }
    }
}

/// A lock worker's lease and the task keeping it alive.
struct Session {
    lease: i64,
    alive: Arc<AtomicBool>,
    keeper: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Keeps `lease` alive every 500 ms until told it is gone (TTL 0) or aborted; a broken
/// keep-alive stream is reopened.
async fn keep_alive(endpoint: Endpoint, lease: i64, alive: Arc<AtomicBool>) {
    while alive.load(Ordering::Relaxed) {
        let Some(mut client) = connect(&endpoint).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok((mut keeper, mut stream)) = within(client.lease_keep_alive(lease)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            if within(keeper.keep_alive()).await.is_err() {
                break;
            }
            match within(stream.message()).await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                Ok(Some(_)) => {
                    alive.store(false, Ordering::Relaxed);
                    return;
                }
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The oldest key under the lock prefix (etcd's `WithFirstCreate`).
fn first_create() -> ec::GetOptions {
    ec::GetOptions::new()
        .with_prefix()
        .with_sort(ec::SortTarget::Create, ec::SortOrder::Ascend)
        .with_limit(1)
}

fn txn_get(op: Option<&ec::TxnOpResponse>) -> Option<ec::KeyValue> {
    match op {
        Some(ec::TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
        _ => None,
    }
}

/// Sends `txn`, stamping its answer (a write if it succeeded and `writes`); `None` when it
/// was not answered. Returns the answer, its invocation and completion times and revision.
async fn stamped_txn(
    client: &mut ec::Client,
    txn: ec::Txn,
    writes: bool,
    what: String,
    epoch: Instant,
    rec: &Recorded,
) -> Option<(ec::TxnResponse, u64, u64, i64)> {
    let invoke = since(epoch);
    let r = within(client.txn(txn)).await.ok()?;
    let complete = since(epoch);
    let revision = header_revision(r.header());
    rec.stamp(invoke, complete, revision, writes && r.succeeded(), what);
    Some((r, invoke, complete, revision))
}

/// What an acquisition attempt ended with.
enum Acquire {
    Held(Acquisition),
    /// Given up; the session is dropped (its key, if any, goes with the lease).
    Abandoned,
}

/// etcd's `concurrency.Mutex.Lock`: put the key `prefix + lease` (if absent) with the lease and
/// read the oldest key in the same transaction; unless that is ours, wait until every older key
/// is deleted (watching the newest of them at a time), then check the key still exists. That
/// last check is made with a transaction reading our key and the oldest key (etcd uses a `Get` of
/// the key), so the claim has an exact revision to check against.
async fn acquire(
    client: &mut ec::Client,
    worker: u64,
    session: &Session,
    epoch: Instant,
    rec: &Recorded,
) -> Acquire {
    let key = format!("{LOCK_PREFIX}{:x}", session.lease);
    let txn = ec::Txn::new()
        .when([ec::Compare::create_revision(
            key.as_str(),
            ec::CompareOp::Equal,
            0,
        )])
        .and_then([
            ec::TxnOp::put(
                key.as_str(),
                "",
                Some(ec::PutOptions::new().with_lease(session.lease)),
            ),
            ec::TxnOp::get(LOCK_PREFIX, Some(first_create())),
        ])
        .or_else([
            ec::TxnOp::get(key.as_str(), None),
            ec::TxnOp::get(LOCK_PREFIX, Some(first_create())),
        ]);
    let Some((r, invoke, complete, revision)) =
        stamped_txn(client, txn, true, format!("lock txn {key}"), epoch, rec).await
    else {
        return Acquire::Abandoned;
    };
    let ops = r.op_responses();
    let my_rev = if r.succeeded() {
        Recorded::push(
            &rec.acks,
            Ack {
                key: key.clone(),
                value: Some(String::new()),
                revision,
            },
        );
        revision
    } else {
        match txn_get(ops.first()) {
            Some(kv) => kv.create_revision(),
            None => return Acquire::Abandoned,
        }
    };
    let owner = txn_get(ops.get(1));
    let mut held = Acquisition {
        worker,
        lease: session.lease,
        key: key.clone(),
        create_revision: my_rev,
        claim_revision: revision,
        owner_seen: owner
            .as_ref()
            .map(|kv| (text(kv.key()), kv.create_revision())),
        waited: false,
        claim_invoke: invoke,
        claim_complete: complete,
        release_invoke: 0,
        release: None,
    };
    if owner.is_some_and(|kv| kv.create_revision() == my_rev) {
        return Acquire::Held(held);
    }
    // waitDeletes: until no key older than ours is left, watch the newest of them go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if Instant::now() > deadline || !session.alive.load(Ordering::Relaxed) {
            return Acquire::Abandoned;
        }
        let options = ec::GetOptions::new()
            .with_prefix()
            .with_sort(ec::SortTarget::Create, ec::SortOrder::Descend)
            .with_limit(1)
            .with_max_create_revision(my_rev - 1);
        let invoke = since(epoch);
        let Ok(r) = within(client.get(LOCK_PREFIX, Some(options))).await else {
            return Acquire::Abandoned;
        };
        let at = header_revision(r.header());
        rec.stamp(invoke, since(epoch), at, false, format!("lock wait {key}"));
        let Some(older) = r.kvs().first() else { break };
        let older = older.key().to_vec();
        let Ok(mut stream) =
            within(client.watch(older, Some(ec::WatchOptions::new().with_start_revision(at))))
                .await
        else {
            return Acquire::Abandoned;
        };
        'watch: loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    if resp.canceled() {
                        break 'watch;
                    }
                    if resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == ec::EventType::Delete)
                    {
                        break 'watch;
                    }
                }
                _ => break 'watch,
            }
        }
    }
    let txn = ec::Txn::new().and_then([
        ec::TxnOp::get(key.as_str(), None),
        ec::TxnOp::get(LOCK_PREFIX, Some(first_create())),
    ]);
    let Some((r, invoke, complete, revision)) =
        stamped_txn(client, txn, false, format!("lock claim {key}"), epoch, rec).await
    else {
        return Acquire::Abandoned;
    };
    let ops = r.op_responses();
    if txn_get(ops.first()).is_none() {
        // The session's key is gone: its lease expired while waiting (ErrSessionExpired).
        return Acquire::Abandoned;
    }
    held.claim_revision = revision;
    held.owner_seen = txn_get(ops.get(1)).map(|kv| (text(kv.key()), kv.create_revision()));
    held.waited = true;
    held.claim_invoke = invoke;
    held.claim_complete = complete;
    Acquire::Held(held)
}

/// A lock worker: with a lease kept alive, acquire the lock, hold it 50-250 ms (sometimes
/// 1.5-3.5 s, sometimes 3-5 s without renewing the lease), release it by
/// deleting the key, pause up to 100 ms, again; any error or a lost lease starts a new session.
async fn run_lock_worker(
    worker: u64,
    endpoint: Endpoint,
    epoch: Instant,
    rec: Arc<Recorded>,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client: Option<ec::Client> = None;
    let mut session: Option<Session> = None;
    while !*stop.borrow() {
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let s = match session.take() {
            Some(s) if s.alive.load(Ordering::Relaxed) => s,
            _ => match within(c.lease_grant(LEASE_TTL, None)).await {
                Ok(g) => {
                    rec.leases.fetch_add(1, Ordering::Relaxed);
                    let alive = Arc::new(AtomicBool::new(true));
                    Session {
                        lease: g.id(),
                        alive: alive.clone(),
                        keeper: tokio::spawn(keep_alive(endpoint.clone(), g.id(), alive)),
                    }
                }
                Err(_) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let mut held = match acquire(c, worker, &s, epoch, &rec).await {
            Acquire::Held(h) => h,
            Acquire::Abandoned => {
                rec.lock_abandoned.fetch_add(1, Ordering::Relaxed);
                let _ = within(c.lease_revoke(s.lease)).await;
                client = None;
                continue;
            }
        };
        // One hold in eight outlasts the lease's TTL, so a fault on the worker's node can let
        // the lease expire under it; one in sixteen stops renewing the lease, as a stalled
        // client would, and holds past its expiry: the next holder takes over meanwhile.
        let hold = if rng.random_range(0..16) == 0 {
            s.keeper.abort();
            s.alive.store(false, Ordering::Relaxed);
            Duration::from_millis(rng.random_range(3000..5000))
        } else if rng.random_range(0..8) == 0 {
            Duration::from_millis(rng.random_range(1500..3500))
        } else {
            Duration::from_millis(rng.random_range(50..250))
        };
        tokio::time::sleep(hold).await;
        held.release_invoke = since(epoch);
        match within(c.delete(held.key.as_str(), None)).await {
            Ok(d) => {
                let revision = header_revision(d.header());
                rec.stamp(
                    held.release_invoke,
                    since(epoch),
                    revision,
                    d.deleted() > 0,
                    format!("unlock {}", held.key),
                );
                if d.deleted() > 0 {
                    Recorded::push(
                        &rec.acks,
                        Ack {
                            key: held.key.clone(),
                            value: None,
                            revision,
                        },
                    );
                }
                held.release = Some((revision, d.deleted()));
                session = Some(s);
            }
            Err(_) => {
                let _ = within(c.lease_revoke(s.lease)).await;
                client = None;
            }
        }
        Recorded::push(&rec.locks, held);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
    }
    if let (Some(c), Some(s)) = (client.as_mut(), session.as_ref()) {
        let _ = within(c.lease_revoke(s.lease)).await;
    }
}

/// Takes what a shared list holds.
fn take<T>(list: &Mutex<Vec<T>>) -> Vec<T> {
    list.lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

/// A running etcd workload.
pub struct EtcdRun {
    endpoints: Vec<Endpoint>,
    keys: Arc<Vec<String>>,
    epoch: Instant,
    rec: Arc<Recorded>,
    logs: Vec<Arc<Mutex<WatchLog>>>,
    progress: Vec<Arc<AtomicI64>>,
    target: Arc<AtomicI64>,
    watch_stop: watch::Sender<bool>,
    watchers: Vec<JoinHandle<()>>,
    client_stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

/// What the etcd workload found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EtcdReport {
    /// Operation counts: `range`, `txn` (registers).
    pub ops: BTreeMap<String, Counts>,
    /// The registers' linearizability verdict.
    pub verdict: String,
    /// The revision of the final Range all watch streams are checked up to.
    pub final_revision: i64,
    /// Per node: events received up to the final revision, and resumed streams.
    pub watch_events: BTreeMap<u64, (usize, u64)>,
    /// Answers checked for revision order.
    pub stamps: usize,
    /// Lock tenures (acquired and released or lost).
    pub lock_holds: usize,
    /// Tenures whose key the lease's expiry deleted before the holder's release.
    pub lock_lost_to_expiry: usize,
    /// Tenures that overlapped the next holder's in real time, all after such an expiry.
    pub lock_overlaps_after_expiry: usize,
    /// Lock attempts given up.
    pub lock_abandoned: u64,
    /// Leases granted.
    pub leases: u64,
    /// Every problem found; empty means every check passed.
    pub anomalies: Vec<String>,
}

impl EtcdReport {
    /// The report's lines for the run summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\netcd workload (etcd-client):");
        for (kind, c) in &self.ops {
            let _ = writeln!(s, "  {kind:<8} {:>8} {:>8} {:>8}", c.ok, c.fail, c.info);
        }
        let _ = writeln!(s, "  registers: {}", self.verdict);
        let per: Vec<String> = self
            .watch_events
            .iter()
            .map(|(n, (e, r))| format!("node {n}: {e} events, {r} resumes"))
            .collect();
        let _ = writeln!(
            s,
            "  watch from revision 1 up to revision {}: {}",
            self.final_revision,
            per.join("; ")
        );
        let _ = writeln!(
            s,
            "  revision order: {} answers checked against real time",
            self.stamps
        );
        let _ = writeln!(
            s,
            "  lock: {} holds, {} lost to lease expiry ({} overlapping the next holder in real time), {} attempts abandoned, {} leases",
            self.lock_holds,
            self.lock_lost_to_expiry,
            self.lock_overlaps_after_expiry,
            self.lock_abandoned,
            self.leases
        );
        let _ = writeln!(s, "  etcd anomalies: {}", self.anomalies.len());
        s
    }
}

impl EtcdRun {
    /// Starts watchers on every node and the register and lock clients, client `i` on node
    /// `i mod n`.
    pub fn start(nodes: &[(u64, String)], spec: &EtcdSpec, epoch: Instant) -> EtcdRun {
        let endpoints: Vec<Endpoint> = nodes
            .iter()
            .map(|(_, addr)| Endpoint {
                addr: addr.clone(),
                tls: spec.tls.clone(),
            })
            .collect();
        let rec = Arc::new(Recorded::default());
        let (watch_stop, watch_rx) = watch::channel(false);
        let (client_stop, client_rx) = watch::channel(false);
        let target = Arc::new(AtomicI64::new(i64::MAX));
        let mut logs = Vec::new();
        let mut progress = Vec::new();
        let mut watchers = Vec::new();
        for ((id, _), endpoint) in nodes.iter().zip(&endpoints) {
            let log = Arc::new(Mutex::new(WatchLog {
                node: *id,
                ..WatchLog::default()
            }));
            let p = Arc::new(AtomicI64::new(0));
            logs.push(log.clone());
            progress.push(p.clone());
            watchers.push(tokio::spawn(run_watcher(
                endpoint.clone(),
                log,
                p,
                target.clone(),
                watch_rx.clone(),
            )));
        }
        let keys: Arc<Vec<String>> = Arc::new(
            (0..spec.keys.max(1))
                .map(|k| format!("{REGISTER_PREFIX}{k}"))
                .collect(),
        );
        let n = endpoints.len().max(1);
        let clients = spec.clients.max(1) as u64;
        let seed = spec.seed;
        let regs = Arc::new(Registers {
            keys: keys.clone(),
            clients,
            rate: spec.rate / clients as f64,
            serializable: spec.serializable,
            epoch,
            rec: rec.clone(),
        });
        let mut workers = Vec::new();
        for i in 0..clients {
            workers.push(tokio::spawn(run_register_client(
                i,
                endpoints[i as usize % n].clone(),
                regs.clone(),
                seed.wrapping_add(1000 + i),
                client_rx.clone(),
            )));
        }
        for w in 0..LOCK_WORKERS {
            workers.push(tokio::spawn(run_lock_worker(
                w,
                endpoints[(w as usize + 1) % n].clone(),
                epoch,
                rec.clone(),
                seed.wrapping_add(2000 + w),
                client_rx.clone(),
            )));
        }
        EtcdRun {
            endpoints,
            keys,
            epoch,
            rec,
            logs,
            progress,
            target,
            watch_stop,
            watchers,
            client_stop,
            workers,
        }
    }

    /// Stops the clients (lock workers revoke their leases).
    pub async fn stop_clients(&mut self) {
        let _ = self.client_stop.send(true);
        for w in self.workers.drain(..) {
            let _ = w.await;
        }
    }

    /// After the cluster is healed and healthy: final reads, the final Range, watchers caught up
    /// to it, then every check. Saves `etcd-history.jsonl`, `etcd-watch.jsonl` and
    /// `etcd-locks.jsonl` in `dir`.
    ///
    /// # Errors
    /// When a results file cannot be written.
    pub async fn finish(mut self, dir: &Path, budget: u64) -> anyhow::Result<EtcdReport> {
        self.stop_clients().await;
        let mut report = EtcdReport::default();
        // Final linearizable reads of every register, retried until one answers.
        let mut finals: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut final_state: Option<(i64, Vec<ec::KeyValue>)> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        'reads: for endpoint in self.endpoints.iter().cycle() {
            if Instant::now() > deadline {
                break;
            }
            let Some(mut c) = connect(endpoint).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            for (k, key) in self.keys.iter().enumerate() {
                if finals.contains_key(key) {
                    continue;
                }
                let invoke = since(self.epoch);
                let Ok(r) = within(c.get(key.as_str(), None)).await else {
                    continue 'reads;
                };
                let value = r.kvs().first().map(|kv| text(kv.value()));
                finals.insert(key.clone(), value.clone());
                Recorded::push(
                    &self.rec.history,
                    Op {
                        process: u64::MAX - 1000 - k as u64,
                        key: key.clone(),
                        kind: OpKind::Read { value },
                        outcome: Outcome::Ok,
                        invoke,
                        complete: since(self.epoch),
                    },
                );
            }
            // The whole store at one revision: find the newest, then read exactly it.
            let Ok(r) = within(c.get("", Some(ec::GetOptions::new().with_all_keys()))).await else {
                continue;
            };
            let revision = header_revision(r.header());
            let at = ec::GetOptions::new()
                .with_all_keys()
                .with_revision(revision);
            let Ok(r) = within(c.get("", Some(at))).await else {
                continue;
            };
            final_state = Some((revision, r.kvs().to_vec()));
            break;
        }
        for key in self.keys.iter() {
            if !finals.contains_key(key) {
                report
                    .anomalies
                    .push(format!("final read of {key} did not succeed in 60 s"));
            }
        }
        let Some((final_revision, final_kvs)) = final_state else {
            report
                .anomalies
                .push("the final Range of every key did not succeed in 60 s".into());
            return Ok(report);
        };
        report.final_revision = final_revision;
        // Watchers catch up with the final revision (a stalled stream is reopened), then stop.
        self.target.store(final_revision, Ordering::Relaxed);
        let _ = crate::poll(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                self.progress
                    .iter()
                    .all(|p| p.load(Ordering::Relaxed) >= final_revision)
                    .then_some(())
            },
        )
        .await;
        let _ = self.watch_stop.send(true);
        for w in self.watchers.drain(..) {
            let _ = w.await;
        }

        let history: Vec<Op> = take(&self.rec.history);
        let stamps: Vec<Stamp> = take(&self.rec.stamps);
        let acks: Vec<Ack> = take(&self.rec.acks);
        let locks: Vec<Acquisition> = take(&self.rec.locks);
        let logs: Vec<WatchLog> = self
            .logs
            .iter()
            .filter_map(|l| l.lock().ok().map(|l| l.clone()))
            .collect();
        std::fs::write(dir.join("etcd-history.jsonl"), checker::to_jsonl(&history))?;
        let mut out = String::new();
        for log in &logs {
            out.push_str(&serde_json::to_string(log)?);
            out.push('\n');
        }
        std::fs::write(dir.join("etcd-watch.jsonl"), out)?;
        let mut out = String::new();
        for l in &locks {
            out.push_str(&serde_json::to_string(l)?);
            out.push('\n');
        }
        std::fs::write(dir.join("etcd-locks.jsonl"), out)?;

        for op in &history {
            let kind = match op.kind {
                OpKind::Read { .. } => "range",
                _ => "txn",
            };
            let c = report.ops.entry(kind.to_string()).or_default();
            match op.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Fail => c.fail += 1,
                Outcome::Info => c.info += 1,
            }
        }
        let verdict = checker::check(&history, budget);
        match &verdict {
            checker::Verdict::Linearizable => {}
            checker::Verdict::Unknown { .. } => {
                report.anomalies.push(format!("registers: {verdict}"));
            }
            checker::Verdict::NotLinearizable { key, ops } => {
                report.anomalies.push(crate::save_anomaly(dir, key, ops));
            }
        }
        report.verdict = verdict.to_string();
        report
            .anomalies
            .extend(crate::lost_writes(&history, &finals));

        let finals: Vec<Event> = final_kvs
            .iter()
            .map(|kv| Event {
                revision: kv.mod_revision(),
                key: text(kv.key()),
                put: true,
                value: Some(text(kv.value())),
                create_revision: kv.create_revision(),
                version: kv.version(),
            })
            .collect();
        let (common, anomalies) = check_watches(&logs, final_revision, &finals, &acks);
        report.anomalies.extend(anomalies);
        for log in &logs {
            let n = log
                .events
                .iter()
                .filter(|e| e.revision <= final_revision)
                .count();
            report.watch_events.insert(log.node, (n, log.resumes));
        }
        report.stamps = stamps.len();
        report.anomalies.extend(check_revision_order(&stamps));
        let locks_found = check_locks(&common, &locks);
        report.lock_holds = locks.len();
        report.lock_lost_to_expiry = locks_found.lost_to_expiry;
        report.lock_overlaps_after_expiry = locks_found.overlaps_after_expiry;
        report.anomalies.extend(locks_found.anomalies);
        report.lock_abandoned = self.rec.lock_abandoned.load(Ordering::Relaxed);
        report.leases = self.rec.leases.load(Ordering::Relaxed);
        Ok(report)
    }
}

/// Checks the watchers' logs up to `final_revision` and returns the common sequence.
///
/// - Every node's sequence (events with revisions up to the final one, in arrival order) is the
///   same, event for event (revision, key, put or delete, value, create revision, version).
/// - Revisions never decrease, and every revision from 2 to the final one is there: every
///   revision is a change, and the watch is over every key.
/// - Each event follows from the ones before: a put on an absent key has version 1 and is
///   created at its revision, a put on a live key keeps its create revision and adds one to the
///   version, a delete deletes a live key.
/// - Replayed, the sequence gives exactly the keys, values, create and mod revisions and
///   versions of the final Range at the final revision (`finals`).
/// - Every acknowledged change is in it at the revision it was acknowledged with.
pub fn check_watches(
    logs: &[WatchLog],
    final_revision: i64,
    finals: &[Event],
    acks: &[Ack],
) -> (Vec<Event>, Vec<String>) {
    let mut anomalies = Vec::new();
    let upto = |log: &WatchLog| -> Vec<Event> {
        log.events
            .iter()
            .filter(|e| e.revision <= final_revision)
            .cloned()
            .collect()
    };
    let seqs: Vec<(u64, Vec<Event>)> = logs.iter().map(|l| (l.node, upto(l))).collect();
    for log in logs {
        if let Some(why) = &log.ended {
            anomalies.push(format!("watch on node {}: {why}", log.node));
        }
    }
    // The longest sequence stands for all; each other one must equal it.
    let Some((ref_node, common)) = seqs.iter().max_by_key(|(_, s)| s.len()).cloned() else {
        return (Vec::new(), anomalies);
    };
    for (node, seq) in &seqs {
        if *node == ref_node || seq == &common {
            continue;
        }
        let at = seq
            .iter()
            .zip(&common)
            .position(|(a, b)| a != b)
            .unwrap_or(seq.len().min(common.len()));
        anomalies.push(format!(
            "watch on node {node} differs from node {ref_node}'s at event {at} of {}: {:?} where node {ref_node} has {:?}",
            seq.len(),
            seq.get(at),
            common.get(at)
        ));
    }
    // Order and no gaps.
    let mut last = 1i64;
    let mut missing: Vec<i64> = Vec::new();
    for e in &common {
        if e.revision < last {
            anomalies.push(format!(
                "watch on node {ref_node}: revision {} after {last}",
                e.revision
            ));
        } else if e.revision > last + 1 {
            missing.extend(last + 1..e.revision);
        }
        last = last.max(e.revision);
    }
    if last < final_revision {
        missing.extend(last + 1..=final_revision);
    }
    if let Some(first) = missing.first() {
        anomalies.push(format!(
            "watch: {} of revisions 2..={final_revision} never delivered on any node, first {first}",
            missing.len()
        ));
    }
    // Replay.
    let mut state: BTreeMap<&str, &Event> = BTreeMap::new();
    let mut bad_events = 0usize;
    let mut first_bad = None;
    for e in &common {
        let ok = match (state.get(e.key.as_str()), e.put) {
            (None, true) => e.version == 1 && e.create_revision == e.revision,
            (Some(prev), true) => {
                e.version == prev.version + 1 && e.create_revision == prev.create_revision
            }
            (Some(_), false) => true,
            (None, false) => false,
        };
        if !ok {
            bad_events += 1;
            first_bad.get_or_insert_with(|| e.clone());
        }
        if e.put {
            state.insert(&e.key, e);
        } else {
            state.remove(e.key.as_str());
        }
    }
    if let Some(e) = first_bad {
        anomalies.push(format!(
            "watch: {bad_events} events do not follow from the ones before, first {e:?}"
        ));
    }
    let replayed: Vec<&Event> = state.values().copied().collect();
    let wanted: Vec<&Event> = finals.iter().collect();
    if replayed != wanted {
        let r: BTreeSet<&str> = replayed.iter().map(|e| e.key.as_str()).collect();
        let w: BTreeSet<&str> = wanted.iter().map(|e| e.key.as_str()).collect();
        let differ = replayed
            .iter()
            .zip(&wanted)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("; first difference: replayed {a:?}, Range {b:?}"))
            .unwrap_or_default();
        anomalies.push(format!(
            "watch replayed to revision {final_revision} gives {} keys, the final Range {} ({} only replayed, {} only in the Range){differ}",
            r.len(),
            w.len(),
            r.difference(&w).count(),
            w.difference(&r).count()
        ));
    }
    // Acknowledged changes at their revisions.
    let mut at: BTreeMap<(i64, &str), Option<&str>> = BTreeMap::new();
    for e in &common {
        at.insert((e.revision, e.key.as_str()), e.value.as_deref());
    }
    let mut lost = 0usize;
    let mut first_lost = None;
    for a in acks.iter().filter(|a| a.revision <= final_revision) {
        if at.get(&(a.revision, a.key.as_str())) != Some(&a.value.as_deref()) {
            lost += 1;
            first_lost.get_or_insert_with(|| a.clone());
        }
    }
    if let Some(a) = first_lost {
        anomalies.push(format!(
            "{lost} acknowledged changes are not in the watch history at their revision, first {a:?}"
        ));
    }
    (common, anomalies)
}

/// Checks that revisions follow real time: if one answer arrived before another call was made,
/// the later call's revision is at least the earlier one's, and greater if the later call wrote.
///
/// Sound for linearizable calls: a write's revision is the store's revision right after it,
/// a read's is at most the revision of the state it read (rskv reads a `Range`'s header revision
/// before its data, after the read barrier), and the store's revision never goes down.
pub fn check_revision_order(stamps: &[Stamp]) -> Vec<String> {
    let mut by_complete: Vec<&Stamp> = stamps.iter().collect();
    by_complete.sort_by_key(|s| s.complete);
    let mut by_invoke: Vec<&Stamp> = stamps.iter().collect();
    by_invoke.sort_by_key(|s| s.invoke);
    let mut done = 0usize;
    let mut newest: Option<&Stamp> = None;
    let mut bad = 0usize;
    let mut first = None;
    for s in by_invoke {
        while done < by_complete.len() && by_complete[done].complete < s.invoke {
            let c = by_complete[done];
            if newest.is_none_or(|n| c.revision > n.revision) {
                newest = Some(c);
            }
            done += 1;
        }
        let Some(n) = newest else { continue };
        if s.revision < n.revision || (s.write && s.revision == n.revision) {
            bad += 1;
            first.get_or_insert_with(|| (s.clone(), n.clone()));
        }
    }
    match first {
        None => Vec::new(),
        Some((s, n)) => vec![format!(
            "{bad} answers go back in revision: '{}' (invoked at {:.3} s) answered revision {}, \
             after '{}' had answered {} (at {:.3} s)",
            s.what,
            s.invoke as f64 / 1e9,
            s.revision,
            n.what,
            n.revision,
            n.complete as f64 / 1e9
        )],
    }
}

/// What the lock check found.
#[derive(Debug, Default)]
pub struct LockFindings {
    /// Tenures whose key the lease's expiry deleted before the release.
    pub lost_to_expiry: usize,
    /// Of those, tenures the next holder's overlapped in real time.
    pub overlaps_after_expiry: usize,
    /// Violations.
    pub anomalies: Vec<String>,
}

/// Checks the lock against the store's own history (`common`, the watch sequence every node
/// agreed on).
///
/// In the recipe, the lock belongs at revision `r` to the live key under the prefix with the
/// lowest create revision: a function of `r`, so two holders can never own it at one revision.
/// Each holder's claim is a transaction at an exact revision `g` that read its own key and the
/// oldest key under the prefix. Checked, for each tenure:
///
/// 1. at `g`, the store's history has the holder's key live with the create revision it was
///    given, and no live lock key created before it (it was the owner at `g`);
/// 2. the claim transaction itself returned the holder's key as the oldest;
/// 3. tenures in revision time, `[g, revision the key was deleted)`, are disjoint;
/// 4. a release that deleted the key did so at the revision it answered; one that found it gone
///    (the lease expired first: the holder lost the lock without knowing, which leases allow)
///    is counted, not a violation;
/// 5. in real time: the next holder's claim answered before this holder's release was sent,
///    while this holder's key was still there to delete (no expiry), is a violation; after an
///    expiry it is counted.
///
/// What is not checked: that two holders never *believed* they held the lock at once in wall
/// time. A lease expires on the leader's clock while its holder may be paused, partitioned or
/// slow, so such overlaps are allowed by etcd's semantics (they need fencing with the key's
/// revision); (5) checks the wall-clock order only where no expiry could excuse it, and (1)-(3)
/// use revisions only, which faults cannot skew.
pub fn check_locks(common: &[Event], locks: &[Acquisition]) -> LockFindings {
    struct Life<'a> {
        key: &'a str,
        create: i64,
        end: i64,
    }
    let mut lives: Vec<Life> = Vec::new();
    let mut live: BTreeMap<&str, usize> = BTreeMap::new();
    for e in common.iter().filter(|e| e.key.starts_with(LOCK_PREFIX)) {
        match (live.get(e.key.as_str()), e.put) {
            (None, true) => {
                live.insert(&e.key, lives.len());
                lives.push(Life {
                    key: &e.key,
                    create: e.create_revision,
                    end: i64::MAX,
                });
            }
            (Some(&i), false) => {
                lives[i].end = e.revision;
                live.remove(e.key.as_str());
            }
            _ => {}
        }
    }
    let mut f = LockFindings::default();
    let mut tenures: Vec<(i64, i64, &Acquisition)> = Vec::new();
    for a in locks {
        let Some(own) = lives
            .iter()
            .find(|l| l.key == a.key && l.create == a.create_revision)
        else {
            f.anomalies.push(format!(
                "lock: worker {}'s key {} created at {} is not in the watch history",
                a.worker, a.key, a.create_revision
            ));
            continue;
        };
        let g = a.claim_revision;
        if !(own.create <= g && g < own.end) {
            f.anomalies.push(format!(
                "lock: worker {} claimed at revision {g} with key {} live only in [{}, {})",
                a.worker, a.key, own.create, own.end
            ));
        }
        if let Some(older) = lives
            .iter()
            .find(|l| l.create < a.create_revision && l.create <= g && g < l.end)
        {
            f.anomalies.push(format!(
                "lock: worker {} claimed at revision {g} with key {} (created {}), but {} (created {}) was live until {}",
                a.worker, a.key, a.create_revision, older.key, older.create, older.end
            ));
        }
        if a.owner_seen.as_ref() != Some(&(a.key.clone(), a.create_revision)) {
            f.anomalies.push(format!(
                "lock: worker {}'s claim at revision {g} showed {:?} as the oldest key, not {} (created {})",
                a.worker, a.owner_seen, a.key, a.create_revision
            ));
        }
        match a.release {
            Some((d, deleted)) if deleted > 0 && own.end != d => f.anomalies.push(format!(
                "lock: worker {} deleted {} at revision {d}, the history deletes it at {}",
                a.worker, a.key, own.end
            )),
            Some((d, 0)) if own.end > d => f.anomalies.push(format!(
                "lock: worker {}'s release at revision {d} found {} gone, the history deletes it at {}",
                a.worker, a.key, own.end
            )),
            Some((_, 0)) => f.lost_to_expiry += 1,
            _ => {}
        }
        tenures.push((g, own.end, a));
    }
    tenures.sort_by_key(|(g, _, _)| *g);
    for pair in tenures.windows(2) {
        let ((g1, end1, a), (g2, _, b)) = (pair[0], pair[1]);
        if end1 > g2 {
            f.anomalies.push(format!(
                "lock: tenures overlap in revisions: worker {} [{g1}, {end1}) and worker {} from {g2}",
                a.worker, b.worker
            ));
        }
        if b.claim_complete < a.release_invoke {
            match a.release {
                Some((_, deleted)) if deleted > 0 => f.anomalies.push(format!(
                    "lock: worker {} held the lock (claim answered at {:.3} s) before worker {} released it (at {:.3} s) with its key still there",
                    b.worker,
                    b.claim_complete as f64 / 1e9,
                    a.worker,
                    a.release_invoke as f64 / 1e9
                )),
                Some(_) => f.overlaps_after_expiry += 1,
                None => {}
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, value: &str, create: i64, version: i64) -> Event {
        Event {
            revision,
            key: key.into(),
            put: true,
            value: Some(value.into()),
            create_revision: create,
            version,
        }
    }

    fn del(revision: i64, key: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            put: false,
            value: None,
            create_revision: 0,
            version: 0,
        }
    }

    fn log(node: u64, events: &[Event]) -> WatchLog {
        WatchLog {
            node,
            events: events.to_vec(),
            ..WatchLog::default()
        }
    }

    #[test]
    fn identical_gap_free_watches_should_pass_and_gaps_or_differences_not() {
        let all = [
            put(2, "a", "1", 2, 1),
            put(3, "a", "2", 2, 2),
            put(4, "b", "x", 4, 1),
            del(4, "a"),
        ];
        let finals = [put(4, "b", "x", 4, 1)];
        let acks = [Ack {
            key: "a".into(),
            value: Some("2".into()),
            revision: 3,
        }];
        let (common, anomalies) = check_watches(&[log(1, &all), log(2, &all)], 4, &finals, &acks);
        assert!(anomalies.is_empty(), "{anomalies:?}");
        assert_eq!(common.len(), 4);

        let gap = [all[0].clone(), all[2].clone(), all[3].clone()];
        let (_, anomalies) = check_watches(&[log(1, &all), log(2, &gap)], 4, &finals, &acks);
        let text = anomalies.join("\n");
        assert!(text.contains("node 2 differs"), "{text}");

        let (_, anomalies) = check_watches(&[log(1, &gap)], 4, &finals, &acks);
        let text = anomalies.join("\n");
        assert!(
            text.contains("1 of revisions 2..=4 never delivered"),
            "{text}"
        );
        assert!(text.contains("acknowledged changes are not"), "{text}");

        // A version that skips one, and a delete of a key that is not there.
        let wrong = [
            put(2, "a", "1", 2, 1),
            put(3, "a", "2", 2, 3),
            put(4, "b", "x", 4, 1),
            del(4, "c"),
        ];
        let (_, anomalies) = check_watches(&[log(1, &wrong)], 4, &finals, &[]);
        let text = anomalies.join("\n");
        assert!(text.contains("2 events do not follow"), "{text}");

        let (_, anomalies) = check_watches(&[log(1, &all)], 4, &[], &acks);
        assert!(
            anomalies.join("\n").contains("the final Range 0"),
            "{anomalies:?}"
        );
    }

    fn stamp(invoke: u64, complete: u64, revision: i64, write: bool) -> Stamp {
        Stamp {
            invoke,
            complete,
            revision,
            write,
            what: format!("op@{invoke}"),
        }
    }

    #[test]
    fn revisions_going_back_in_real_time_should_be_reported() {
        let fine = [
            stamp(0, 10, 5, true),
            stamp(5, 20, 4, false), // concurrent with the write: may miss it
            stamp(11, 12, 5, false),
            stamp(13, 14, 6, true),
        ];
        assert!(check_revision_order(&fine).is_empty());
        let stale = [stamp(0, 10, 5, true), stamp(11, 12, 4, false)];
        assert_eq!(check_revision_order(&stale).len(), 1);
        let same = [stamp(0, 10, 5, false), stamp(11, 12, 5, true)];
        assert_eq!(check_revision_order(&same).len(), 1);
    }

    fn hold(
        worker: u64,
        key: &str,
        create: i64,
        claim: i64,
        release: Option<(i64, i64)>,
    ) -> Acquisition {
        Acquisition {
            worker,
            lease: 0,
            key: key.into(),
            create_revision: create,
            claim_revision: claim,
            owner_seen: Some((key.into(), create)),
            waited: false,
            claim_invoke: claim as u64 * 10,
            claim_complete: claim as u64 * 10 + 1,
            release_invoke: release.map_or(u64::MAX, |(d, _)| d as u64 * 10),
            release,
        }
    }

    #[test]
    fn lock_claims_should_be_checked_against_the_history() {
        let l = LOCK_PREFIX;
        let (a, b) = (format!("{l}a"), format!("{l}b"));
        // a created at 2, b at 3 (waits), a released at 5, b claims at 6, released at 7.
        let history = [
            put(2, &a, "", 2, 1),
            put(3, &b, "", 3, 1),
            del(5, &a),
            del(7, &b),
        ];
        let good = [
            hold(1, &a, 2, 2, Some((5, 1))),
            hold(2, &b, 3, 6, Some((7, 1))),
        ];
        let f = check_locks(&history, &good);
        assert!(f.anomalies.is_empty(), "{:?}", f.anomalies);

        // b claims at 4, while a (older) is live.
        let early = [
            hold(1, &a, 2, 2, Some((5, 1))),
            hold(2, &b, 3, 4, Some((7, 1))),
        ];
        let text = check_locks(&history, &early).anomalies.join("\n");
        assert!(text.contains("was live until 5"), "{text}");
        assert!(text.contains("overlap in revisions"), "{text}");

        // a's lease expired (deleted at 5 by the lessor); its release at 6 deleted nothing.
        let expired = [
            hold(1, &a, 2, 2, Some((6, 0))),
            hold(2, &b, 3, 5, Some((7, 1))),
        ];
        let f = check_locks(&history, &expired);
        assert!(f.anomalies.is_empty(), "{:?}", f.anomalies);
        assert_eq!(f.lost_to_expiry, 1);
        assert_eq!(f.overlaps_after_expiry, 1);
    }
}
