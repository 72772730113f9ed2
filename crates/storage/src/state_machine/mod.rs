//! The replicated state machine: applies committed commands to a [`KvEngine`] and manages
//! snapshots.
//!
//! [`StateMachine`] is the one openraft `RaftStateMachine` of rskv. It owns everything that is the
//! same for both engines — executing [`Command`]s, computing responses, the snapshot files — and
//! asks the engine only for what differs: point reads, ordered scans, an atomic commit of one
//! applied batch, and export/import of a consistent view.
//!
//! **Snapshots** take one of two forms, by engine. The memory engine forgets everything at a
//! restart, so its snapshots are files (`snapshot.bin`), written in full every
//! `raft.snapshot_every` writes and read back at the next start. The RocksDB engine is *durable*
//! ([`KvEngine::durable`]): it recovers its own data and applied index, so, as in TiKV, a snapshot
//! needs no copy of the data. Building one only syncs the engine (the log before it may then be
//! purged); when a peer needs the data, [`SnapshotData::Stream`] exports a point-in-time view of
//! the engine straight into the snapshot format as it is sent, with writes going on meanwhile.
//! Writing the whole data set to a file every 50k writes had cost 10-25% of 256-client puts.
//!
//! Apply is batched: all entries openraft hands over at once are executed against an overlay (so a
//! later command in the batch sees an earlier one's write) and committed to the engine in one
//! atomic step together with the new applied log id and membership. Responses go back to clients
//! only after that commit, so an acknowledged write is visible to every later read.

pub mod alarms;
pub mod auth;
pub mod memory;
pub mod rocks;
pub mod sessions;

use std::fs::File;
use std::io;
use std::io::BufWriter;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;

use crate::error::io_err;
use crate::events::EventBus;
use crate::io_thread::IoThread;
use crate::mvcc::index::KeyIndex;
use crate::mvcc::sweep::Sweeper;
use crate::mvcc::writer::Writer;
use crate::mvcc::KeyVersion;
use crate::mvcc::Source;
use crate::snapshot::snapshot_stream;
use crate::snapshot::FirstRead;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotFile;
use crate::snapshot::SnapshotWriter;
use crate::types::Command;
use crate::types::CommandResponse;
use crate::types::Entry;
use crate::types::EtcdReply;
use crate::types::LogId;
use crate::types::MvccError;
use crate::types::SessionOutcome;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use alarms::AlarmSet;
use auth::AuthStore;
use sessions::Admission;
use sessions::SessionTable;

/// Name of the current snapshot inside the snapshot directory.
const SNAPSHOT_FILE: &str = "snapshot.bin";

/// How far the state machine has applied the log, and under which membership (stored by a
/// durable engine in rskv's format, [`crate::format`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedState {
    /// Last log id applied; `None` before the first entry.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
}

/// The keyspaces of a state machine. Client keys, their history and the state machine's own
/// replicated bookkeeping are kept apart, so no client scan, watch or write can ever see or touch
/// the bookkeeping, while all are still committed together, exported together in snapshots and
/// recovered together. Snapshots hold them as sections in the order of [`Keyspace::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keyspace {
    /// Client data as of the latest revision: each live key's current version (see
    /// [`crate::mvcc`]). What Get, Scan and Range at the latest revision read.
    Data,
    /// The state machine's own records (see [`sessions`], and the store's revision counters).
    System,
    /// Every change by revision, until compaction removes it (see [`crate::mvcc`]): what reads
    /// at an older revision and watches from a revision read.
    History,
    /// Leases and the keys attached to each (see [`crate::mvcc`]).
    Lease,
}

impl Keyspace {
    /// Every keyspace, in snapshot section order.
    pub const ALL: [Keyspace; 4] = [
        Keyspace::Data,
        Keyspace::System,
        Keyspace::History,
        Keyspace::Lease,
    ];

    /// The keyspace's position in [`Keyspace::ALL`].
    pub fn position(self) -> usize {
        self as usize
    }
}

/// One exported record: a key and value of one keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Which keyspace it belongs to.
    pub space: Keyspace,
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
}

/// One keyspace's writes in a [`WriteSet`]: key → new value (`None` deletes).
pub type Writes = Vec<(Bytes, Option<Bytes>)>;

/// One applied batch, committed atomically by an engine.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// Key → new value (`None` deletes), in no particular order; each key appears once.
    pub writes: Writes,
    /// The same for the system keyspace.
    pub system: Writes,
    /// The same for the history keyspace.
    pub history: Writes,
    /// The same for the lease keyspace.
    pub leases: Writes,
    /// The applied state after this batch.
    pub state: AppliedState,
}

impl WriteSet {
    /// Each keyspace with its writes.
    pub fn spaces(&self) -> [(Keyspace, &Writes); 4] {
        [
            (Keyspace::Data, &self.writes),
            (Keyspace::System, &self.system),
            (Keyspace::History, &self.history),
            (Keyspace::Lease, &self.leases),
        ]
    }

    /// Each keyspace with its writes, taken out of the set.
    pub fn take_spaces(&mut self) -> [(Keyspace, Writes); 4] {
        [
            (Keyspace::Data, std::mem::take(&mut self.writes)),
            (Keyspace::System, std::mem::take(&mut self.system)),
            (Keyspace::History, std::mem::take(&mut self.history)),
            (Keyspace::Lease, std::mem::take(&mut self.leases)),
        ]
    }
}

/// Receives a consistent export of an engine (used to write snapshot files).
pub trait SnapshotSink {
    /// Called once, first, with the applied state the exported records correspond to.
    ///
    /// # Errors
    /// When the sink cannot start (e.g. the file cannot be created).
    fn begin(&mut self, state: &AppliedState) -> io::Result<()>;
    /// Called for every key of each keyspace in ascending order, keyspace by keyspace in the
    /// order of [`Keyspace::ALL`].
    ///
    /// # Errors
    /// On a write failure; the export stops.
    fn record(&mut self, space: Keyspace, key: &[u8], value: &[u8]) -> io::Result<()>;
}

/// The storage interface a state-machine engine implements; all methods are blocking and are
/// called from blocking threads, except [`KvEngine::try_get_in_now`].
pub trait KvEngine: Send + Sync + 'static {
    /// `memory` or `rocksdb`, for status output.
    fn name(&self) -> &'static str;
    /// The value of `key` in the data keyspace, if present.
    ///
    /// # Errors
    /// On a storage failure.
    fn get(&self, key: &[u8]) -> io::Result<Option<Bytes>> {
        self.get_in(Keyspace::Data, key)
    }
    /// The value of `key` in `space`, if present.
    ///
    /// # Errors
    /// On a storage failure.
    fn get_in(&self, space: Keyspace, key: &[u8]) -> io::Result<Option<Bytes>>;
    /// [`KvEngine::get_in`] when it needs neither a lock wait (no snapshot import or commit in
    /// progress) nor a file read (RocksDB: memtables and block cache only), `None` otherwise.
    /// Point reads call it on the async runtime to skip the hop to a blocking thread, which costs
    /// more than the read itself (two thread wake-ups against a memtable or cache lookup).
    fn try_get_in_now(&self, space: Keyspace, key: &[u8]) -> Option<io::Result<Option<Bytes>>>;
    /// Up to `limit` pairs of the data keyspace with `start <= key < end` (no end: unbounded),
    /// in key order.
    ///
    /// # Errors
    /// On a storage failure.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, Bytes)>> {
        self.scan_in(Keyspace::Data, start, end, limit)
    }
    /// [`KvEngine::scan`] in any keyspace.
    ///
    /// # Errors
    /// On a storage failure.
    fn scan_in(
        &self,
        space: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, Bytes)>>;
    /// How many keys of `space` have `start <= key < end` (no end: unbounded): etcd's Range
    /// answers the count of a whole range even when it returns only `limit` keys of it, and
    /// counting must not copy every value out of the engine to do so.
    ///
    /// # Errors
    /// On a storage failure.
    fn count_in(&self, space: Keyspace, start: &[u8], end: Option<&[u8]>) -> io::Result<usize> {
        let mut count = 0;
        self.visit_in(space, start, end, &mut |_, _| {
            count += 1;
            Ok(())
        })?;
        Ok(count)
    }
    /// Hands every pair of `space` with `start <= key < end` (no end: unbounded) to `visit`, in
    /// key order, without copying them where the engine can (loading the key index at open reads
    /// the whole data keyspace this way, HashKV the history).
    ///
    /// # Errors
    /// On a storage failure, or the first error `visit` returns.
    fn visit_in(
        &self,
        space: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> io::Result<()> {
        const STEP: usize = 4096;
        let mut from = start.to_vec();
        loop {
            let step = self.scan_in(space, &from, end, STEP)?;
            for (key, value) in &step {
                visit(key, value)?;
            }
            match step.last() {
                Some((last, _)) if step.len() == STEP => {
                    from.clear();
                    from.extend_from_slice(last);
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
    /// The applied state as of the last commit.
    ///
    /// # Errors
    /// On a storage failure.
    fn applied_state(&self) -> io::Result<AppliedState>;
    /// Every record of the system keyspace, in key order (it is small: the state machine loads
    /// it whole at start and after a snapshot install).
    ///
    /// # Errors
    /// On a storage failure.
    fn system_records(&self) -> io::Result<Vec<(Bytes, Bytes)>> {
        self.scan_in(Keyspace::System, b"", None, usize::MAX)
    }
    /// Applies one batch atomically: readers see all of it or none of it.
    ///
    /// # Errors
    /// On a storage failure; nothing of the batch is visible then.
    fn commit(&self, batch: WriteSet) -> io::Result<()>;
    /// [`KvEngine::commit`] of a batch written beside apply (compaction's sweep,
    /// [`crate::mvcc::sweep`]): its keyspace writes only, the applied state left as it is
    /// (`batch.state` is ignored), so apply's commits may come before or after it.
    ///
    /// # Errors
    /// On a storage failure; nothing of the batch is visible then.
    fn commit_outside_apply(&self, batch: WriteSet) -> io::Result<()>;
    /// Exports a point-in-time view: the applied state and every record, consistent with each
    /// other, while commits may continue.
    ///
    /// # Errors
    /// On a storage or sink failure.
    fn export(&self, sink: &mut dyn SnapshotSink) -> io::Result<()>;
    /// Replaces the whole content of every keyspace with `records` and sets the applied state.
    ///
    /// # Errors
    /// On a storage failure or a corrupt record stream.
    fn import(
        &self,
        state: &AppliedState,
        records: &mut dyn Iterator<Item = io::Result<Record>>,
    ) -> io::Result<()>;
    /// Makes everything committed so far durable (called before the log behind a snapshot is
    /// purged, since commits themselves are not synced).
    ///
    /// # Errors
    /// On a sync failure.
    fn sync(&self) -> io::Result<()>;
    /// Whether committed data and the applied state survive a restart on their own (after
    /// [`KvEngine::sync`]). Such an engine needs no snapshot files: its snapshots are streamed
    /// from an [`KvEngine::export`] when a peer needs one.
    fn durable(&self) -> bool {
        false
    }
    /// Rewrites the stored data to drop what deletions and compaction left behind (etcd's
    /// defragment); nothing to do for an engine that holds no garbage.
    ///
    /// # Errors
    /// On a storage failure.
    fn defragment(&self) -> io::Result<()> {
        Ok(())
    }
    /// Whether a previous import was interrupted (the content is then not trustworthy).
    ///
    /// # Errors
    /// On a storage failure.
    fn import_interrupted(&self) -> io::Result<bool> {
        Ok(false)
    }
}

/// Executes one command through the batch's [`Writer`] (which records its writes and the apply
/// events it causes) and the session table.
pub(crate) fn execute(
    writer: &mut Writer<'_>,
    sessions: &mut SessionTable,
    system: Replicated<'_>,
    mut command: Command,
    index: u64,
) -> io::Result<CommandResponse> {
    let Replicated { auth, alarms } = system;
    if let Some(stamp) = command.take_session() {
        let admission = sessions.admit(stamp.id, stamp.seq, stamp.first_unacked, stamp.now_ms);
        return Ok(match admission {
            Admission::Execute => {
                let keep = match command.unwrapped() {
                    Command::Delete { .. } => sessions::Keep::Existence,
                    Command::CompareAndSwap { .. } => sessions::Keep::UnlessSuccess,
                    _ => sessions::Keep::All,
                };
                let response = execute(writer, sessions, system, command, index)?;
                sessions.record(stamp.id, stamp.seq, index, &response, keep);
                response
            }
            Admission::Replay(response) => response,
            Admission::Refuse(why) => CommandResponse::refused(why),
        });
    }
    if !matches!(command, Command::Group { .. }) {
        writer.begin(index);
    }
    if alarms.no_space() && grows(&command) {
        // etcd's capped applier: nothing that grows the store while NOSPACE is raised.
        let mut refused = etcd_reply(Err(MvccError::NoSpace));
        refused.revision = writer.revision();
        return Ok(refused);
    }
    let value = |kv: Option<KeyVersion>| kv.map(|kv| kv.value);
    // The store refuses nothing of rskv's own commands: they name no lease.
    let refused = |e: MvccError| io_err(format!("native write refused by the store: {e}"));
    let mut response = match command {
        Command::Put {
            key,
            value: new,
            return_prev,
            ..
        } => {
            let prev = writer
                .put(key, Some(new), Some(0), return_prev)?
                .map_err(refused)?;
            CommandResponse::done(value(prev))
        }
        Command::Delete { key, .. } => CommandResponse::done(value(writer.delete(key)?)),
        Command::BatchPut { pairs, .. } => {
            for (key, new) in pairs {
                writer
                    .put(key, Some(new), Some(0), false)?
                    .map_err(refused)?;
            }
            CommandResponse::done(None)
        }
        Command::CompareAndSwap {
            key,
            expected,
            new_value,
            ..
        } => {
            let prev = value(writer.latest(&key)?);
            let success = prev == expected;
            if success {
                // Read again (the event carries the value replaced): only a CAS that succeeds.
                writer
                    .put(key, Some(new_value), Some(0), true)?
                    .map_err(refused)?;
            }
            CommandResponse {
                prev,
                success,
                ..CommandResponse::default()
            }
        }
        Command::Group { commands } => CommandResponse {
            success: true,
            group: commands
                .into_iter()
                .map(|c| execute(writer, sessions, system, c, index))
                .collect::<io::Result<_>>()?,
            ..CommandResponse::default()
        },
        Command::OpenSession {
            now_ms,
            ttl_ms,
            max_sessions,
        } => CommandResponse {
            session: SessionOutcome::Opened {
                id: sessions.open(now_ms, ttl_ms, max_sessions),
            },
            ..CommandResponse::done(None)
        },
        Command::CloseSession { id } => {
            sessions.close(id);
            CommandResponse::done(None)
        }
        Command::Txn(txn) => etcd_reply(writer.txn(&txn)?.map(|r| EtcdReply::Txn(Box::new(r)))),
        Command::Compact { revision } => {
            etcd_reply(writer.compact(revision)?.map(|()| EtcdReply::Done))
        }
        Command::LeaseGrant { id, ttl } => etcd_reply(
            writer
                .lease_grant(id, ttl)?
                .map(|()| EtcdReply::LeaseGranted { id, ttl }),
        ),
        Command::LeaseRevoke { id } => {
            etcd_reply(writer.lease_revoke(id)?.map(|()| EtcdReply::Done))
        }
        Command::Authorized {
            user,
            revision,
            command,
        } => {
            // Checked when proposed; again only if users, roles or the flag changed since, on
            // every member alike (the auth store is replicated state, at the same revision here).
            let denied = if revision == auth.revision() || !auth.enabled() {
                None
            } else {
                auth.check_command(&user, &command).err()
            };
            match denied {
                None => return execute(writer, sessions, system, *command, index),
                Some(e) => CommandResponse {
                    etcd: Some(EtcdReply::AuthRefused(e)),
                    ..CommandResponse::default()
                },
            }
        }
        Command::Alarm {
            member,
            alarm,
            activate,
        } => {
            alarms.apply(member, alarm, activate);
            etcd_reply(Ok(EtcdReply::Done))
        }
        Command::Auth(change) => {
            let reply = match auth.apply(&change) {
                Ok(()) => EtcdReply::Done,
                Err(e) => EtcdReply::AuthRefused(e),
            };
            CommandResponse {
                success: reply == EtcdReply::Done,
                etcd: Some(reply),
                ..CommandResponse::default()
            }
        }
    };
    response.revision = writer.revision();
    Ok(response)
}

/// The replicated stores apply reads and changes besides the data: users and roles, alarms.
#[derive(Clone, Copy)]
pub(crate) struct Replicated<'a> {
    pub(crate) auth: &'a AuthStore,
    pub(crate) alarms: &'a AlarmSet,
}

/// The replicated stores beside the data, owned by the state machine.
#[derive(Clone, Default)]
struct Stores {
    auth: Arc<AuthStore>,
    alarms: Arc<AlarmSet>,
}

impl Stores {
    fn replicated(&self) -> Replicated<'_> {
        Replicated {
            auth: &self.auth,
            alarms: &self.alarms,
        }
    }

    /// Both stores as the system keyspace `records` hold them.
    fn load(&self, records: &[(Bytes, Bytes)]) -> io::Result<()> {
        self.auth.load(records)?;
        self.alarms.load(records)
    }
}

/// Whether `command` could grow the store (refused while `NOSPACE` is raised): puts, compare
/// and swaps, lease grants, and transactions with a put in either branch. Deletes pass, so the
/// store can be cleaned up: etcd's DeleteRange travels here as a transaction of one delete, and a
/// transaction of deletes and reads passes as in etcd (whose quota costs a Txn by its puts). A
/// put in a nested transaction counts here; etcd's cost leaves nested puts out.
fn grows(command: &Command) -> bool {
    fn puts(txn: &crate::types::TxnRequest) -> bool {
        use rskv_proto::etcd::etcdserverpb::request_op::Request as Op;
        txn.success
            .iter()
            .chain(&txn.failure)
            .any(|op| match &op.request {
                Some(Op::RequestPut(_)) => true,
                Some(Op::RequestTxn(nested)) => puts(nested),
                Some(Op::RequestRange(_) | Op::RequestDeleteRange(_)) | None => false,
            })
    }
    match command {
        Command::Put { .. }
        | Command::BatchPut { .. }
        | Command::CompareAndSwap { .. }
        | Command::LeaseGrant { .. } => true,
        Command::Txn(txn) => puts(txn),
        _ => false,
    }
}

/// The response of an etcd command.
fn etcd_reply(reply: Result<EtcdReply, MvccError>) -> CommandResponse {
    let reply = reply.unwrap_or_else(EtcdReply::Refused);
    CommandResponse {
        success: !matches!(reply, EtcdReply::Refused(_)),
        etcd: Some(reply),
        ..CommandResponse::default()
    }
}

fn lock_index(keys: &Mutex<KeyIndex>) -> io::Result<std::sync::MutexGuard<'_, KeyIndex>> {
    keys.lock().map_err(|_| io_err("key index lock poisoned"))
}

/// What [`KvEngine::visit_in`] hands each pair to.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;

/// The responders of one apply batch, each with its command's response.
type Answers = Vec<(
    Option<openraft::storage::ApplyResponder<TypeConfig>>,
    CommandResponse,
)>;

/// Applies one batch of entries: executes each through a [`Writer`] (the batch's writes over the
/// engine) and the session table, commits everything in one atomic engine write with the new
/// applied state, then publishes the batch's events. Blocking.
fn apply_batch(
    engine: &dyn KvEngine,
    bus: &EventBus,
    sessions: &mut SessionTable,
    stores: &Stores,
    keys: &mut KeyIndex,
    batch: Vec<EntryResponder<TypeConfig>>,
) -> io::Result<Answers> {
    let mut state = engine.applied_state()?;
    let mut writer = Writer::new(engine, keys);
    let mut responders = Vec::with_capacity(batch.len());
    for (entry, responder) in batch {
        state.last_applied = Some(entry.log_id);
        let response = match entry.payload {
            EntryPayload::Blank => CommandResponse::done(None),
            EntryPayload::Normal(command) => execute(
                &mut writer,
                sessions,
                stores.replicated(),
                command,
                entry.log_id.index,
            )?,
            EntryPayload::Membership(membership) => {
                state.membership = StoredMembership::new(Some(entry.log_id), membership);
                CommandResponse::done(None)
            }
        };
        responders.push((responder, response));
    }
    let events = writer.take_events();
    let revision = writer.revision();
    let index = state.last_applied.map_or(0, |l| l.index);
    let mut system = sessions.take_changes();
    system.extend(stores.auth.take_changes());
    system.extend(stores.alarms.take_changes());
    let mut set = WriteSet {
        system,
        state,
        ..WriteSet::default()
    };
    writer.finish(&mut set);
    engine.commit(set)?;
    // After the commit: an event is never seen before its change is readable.
    bus.publish(events);
    bus.applied(revision, index);
    Ok(responders)
}

/// Asks for a snapshot every `raft.snapshot_every` applied writes. openraft's own policy counts
/// log entries, and an entry may carry a whole group of writes: counted in entries, a busy node
/// would snapshot rarely and a memory-engine restart would replay a long log tail.
pub struct SnapshotTrigger {
    every: u64,
    applied: AtomicU64,
    at_last_snapshot: AtomicU64,
    requested: AtomicBool,
    closed: AtomicBool,
    wake: tokio::sync::Notify,
}

impl SnapshotTrigger {
    /// A trigger firing every `every` writes (0: never).
    pub fn new(every: u64) -> Arc<SnapshotTrigger> {
        Arc::new(SnapshotTrigger {
            every,
            applied: AtomicU64::new(0),
            at_last_snapshot: AtomicU64::new(0),
            requested: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn applied(&self, writes: u64) {
        let total = self.applied.fetch_add(writes, Ordering::AcqRel) + writes;
        let since = total.saturating_sub(self.at_last_snapshot.load(Ordering::Acquire));
        if self.every > 0 && since >= self.every && !self.requested.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    fn snapshot_started(&self) {
        self.at_last_snapshot
            .store(self.applied.load(Ordering::Acquire), Ordering::Release);
        self.requested.store(false, Ordering::Release);
    }

    /// Waits until a snapshot is due; `false` once [`SnapshotTrigger::close`] was called.
    pub async fn due(&self) -> bool {
        if !self.closed.load(Ordering::Acquire) {
            self.wake.notified().await;
        }
        !self.closed.load(Ordering::Acquire)
    }

    /// Ends the waits (node shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Writes an entry carries (a group counts each of its commands).
fn writes_in(entry: &Entry) -> u64 {
    match &entry.payload {
        EntryPayload::Normal(command) => command.writes() as u64,
        _ => 0,
    }
}

/// The state machine handed to openraft; cheap to clone (the engine is shared).
#[derive(Clone)]
pub struct StateMachine {
    engine: Arc<dyn KvEngine>,
    /// Where `snapshot.bin` and incoming snapshots live.
    snapshot_dir: PathBuf,
    /// Names temporary snapshot files uniquely.
    snapshot_seq: Arc<AtomicU64>,
    /// Counts applied writes to ask for snapshots.
    trigger: Arc<SnapshotTrigger>,
    /// Where applied changes are published.
    events: Arc<EventBus>,
    /// Serializes snapshot builds with snapshot installs.
    snapshot_lock: Arc<Mutex<()>>,
    /// The client session table, as of the last applied entry (mirrored in the engine's system
    /// keyspace). Only apply and snapshot installs change it.
    sessions: Arc<Mutex<SessionTable>>,
    /// How many sessions it holds, for status and metrics: read without the table's lock, which
    /// a snapshot install holds for as long as the import takes.
    open_sessions: Arc<AtomicUsize>,
    /// Every live key's metadata, as of the last applied entry: what apply's writes replace,
    /// without an engine read. Only apply and snapshot installs change it, each holding the
    /// session table's lock first.
    keys: Arc<Mutex<KeyIndex>>,
    /// Users, roles, permissions and tokens (etcd's auth), and etcd's alarms, as of the last
    /// applied entry (mirrored in the system keyspace). Only apply and snapshot installs change
    /// them.
    stores: Stores,
    /// Removes what compactions leave below the compacted revision, beside apply; woken after
    /// each apply that compacts and each snapshot import.
    sweeper: Arc<Sweeper>,
    /// Where committed entries are applied to the engine: a thread of its own, so a slow engine
    /// write never holds an async worker.
    apply_thread: Arc<IoThread>,
}

impl StateMachine {
    /// Wraps `engine`, keeping snapshots under `snapshot_dir`. If the engine's last import was
    /// interrupted, or the engine is behind the stored snapshot (the memory engine after a
    /// restart), the stored snapshot is imported first.
    ///
    /// # Errors
    /// When the snapshot directory or the stored snapshot cannot be read.
    pub async fn open(
        engine: Arc<dyn KvEngine>,
        snapshot_dir: &Path,
        events: Arc<EventBus>,
        trigger: Arc<SnapshotTrigger>,
    ) -> io::Result<StateMachine> {
        std::fs::create_dir_all(snapshot_dir)?;
        let path = snapshot_dir.join(SNAPSHOT_FILE);
        let stores = Stores::default();
        let (sessions, keys, sweeper) = tokio::task::spawn_blocking({
            let engine = engine.clone();
            let stores = stores.clone();
            move || {
                recover(&*engine, &path)?;
                let system = engine.system_records()?;
                stores.load(&system)?;
                let sessions = SessionTable::load(system)?;
                let started = std::time::Instant::now();
                let keys = KeyIndex::load(&*engine)?;
                tracing::info!(
                    keys = keys.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "key index loaded"
                );
                let sweeper = Sweeper::spawn(engine)?;
                Ok::<_, io::Error>((sessions, keys, sweeper))
            }
        })
        .await
        .map_err(io_err)??;
        let index = engine.applied_state()?.last_applied.map_or(0, |l| l.index);
        events.applied(keys.meta().revision, index);
        Ok(StateMachine {
            engine,
            snapshot_dir: snapshot_dir.to_path_buf(),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            trigger,
            events,
            snapshot_lock: Arc::new(Mutex::new(())),
            open_sessions: Arc::new(AtomicUsize::new(sessions.len())),
            sessions: Arc::new(Mutex::new(sessions)),
            keys: Arc::new(Mutex::new(keys)),
            stores,
            sweeper: Arc::new(sweeper),
            apply_thread: Arc::new(IoThread::spawn("rskv-apply")?),
        })
    }

    /// The thread removing compacted history: HashKV and etcd's `physical` compaction go
    /// through it.
    pub fn sweeper(&self) -> Arc<Sweeper> {
        self.sweeper.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    /// Open client sessions, as of the last apply or snapshot install.
    pub fn open_sessions(&self) -> usize {
        self.open_sessions.load(Ordering::Relaxed)
    }

    /// The auth store, for the services' checks (only apply changes it).
    pub fn auth(&self) -> Arc<AuthStore> {
        self.stores.auth.clone()
    }

    /// The active alarms, for etcd's Alarm API and health (only apply changes them).
    pub fn alarms(&self) -> Arc<AlarmSet> {
        self.stores.alarms.clone()
    }
}

/// Loads a backup into an engine that holds nothing yet, for a node of a new cluster: one in
/// etcd's format ([`crate::etcd_backup`]: what `etcdctl snapshot save` writes against rskv or
/// etcd), or an rskv snapshot file framed as a backup (the previous format). Every keyspace's
/// records as they were, with no applied log entry and no membership, so the new cluster's own
/// log starts afresh on top of the data (its revisions continue from the backup's). Every member of the new cluster restores the
/// same backup, as with etcd. Blocking.
///
/// Unless `verify` is off, the SHA-256 the backup ends with is checked first (etcd's database
/// file copied from a data directory has none).
///
/// # Errors
/// When the engine already holds data, or the file is not a backup this rskv reads.
pub fn restore_backup(
    engine: &dyn KvEngine,
    backup: &Path,
    verify: bool,
) -> io::Result<SnapshotMeta> {
    let state = engine.applied_state()?;
    let empty = Keyspace::ALL.iter().try_fold(true, |empty, space| {
        Ok::<_, io::Error>(empty && engine.scan_in(*space, b"", None, 1)?.is_empty())
    })?;
    if state.last_applied.is_some() || !empty {
        return Err(io_err(
            "the state machine already holds data: a backup is restored only into a new node's \
             empty data directory",
        ));
    }
    if verify {
        crate::snapshot::verify_backup(backup)?;
    }
    if crate::etcd_backup::is_etcd_backup(backup)? {
        let summary = crate::etcd_backup::restore(backup, &mut |records| {
            engine.import(&AppliedState::default(), records)
        })?;
        engine.sync()?;
        tracing::info!(?summary, backup = %backup.display(), "etcd backup restored");
        return Ok(SnapshotMeta::default());
    }
    let file = SnapshotFile::open(backup)
        .map_err(|e| io_err(format!("opening backup {}: {e}", backup.display())))?;
    // Read it through first: a damaged or cut backup is refused before anything is written.
    let records = file.reader()?.try_fold(0u64, |n, r| r.map(|_| n + 1))?;
    let meta = file.read_meta()?;
    engine.import(&AppliedState::default(), &mut file.reader()?)?;
    engine.sync()?;
    tracing::info!(records, backup = %backup.display(), "backup restored");
    Ok(meta)
}

/// Brings the engine up to the stored snapshot when it is behind it.
fn recover(engine: &dyn KvEngine, snapshot_path: &Path) -> io::Result<()> {
    if !snapshot_path.exists() {
        if engine.import_interrupted()? {
            return Err(io_err(
                "state machine import was interrupted and no snapshot is stored; wipe the data dir and rejoin",
            ));
        }
        return Ok(());
    }
    let file = SnapshotFile::open(snapshot_path)?;
    let meta = file
        .read_meta()
        .map_err(|e| io_err(format!("snapshot file {}: {e}", snapshot_path.display())))?;
    let applied = engine.applied_state()?;
    let behind =
        applied.last_applied.as_ref().map(|l| l.index) < meta.last_log_id.as_ref().map(|l| l.index);
    if behind || engine.import_interrupted()? {
        tracing::info!(snapshot = ?meta.last_log_id, applied = ?applied.last_applied, "restoring state machine from stored snapshot");
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        engine.import(&state, &mut file.reader()?)?;
    }
    Ok(())
}

/// Encodes an engine export in the snapshot format into `W` (a file being built, or the stream
/// of a durable engine's snapshot), keeping its metadata.
struct EncoderSink<W: Write> {
    /// The output, until `begin` wraps it in the encoder.
    out: Option<W>,
    encoder: Option<SnapshotWriter<W>>,
    meta: Option<SnapshotMeta>,
    /// Where the metadata goes as soon as it is known (or why the export failed before it), for
    /// a stream whose reader waits for it.
    meta_tx: Option<std::sync::mpsc::SyncSender<io::Result<SnapshotMeta>>>,
    /// For a stream: the records are exported only once someone reads it.
    first_read: Option<FirstRead>,
}

impl<W: Write> EncoderSink<W> {
    fn new(out: W) -> EncoderSink<W> {
        EncoderSink {
            out: Some(out),
            encoder: None,
            meta: None,
            meta_tx: None,
            first_read: None,
        }
    }
}

impl<W: Write> SnapshotSink for EncoderSink<W> {
    fn begin(&mut self, state: &AppliedState) -> io::Result<()> {
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
        };
        let out = self
            .out
            .take()
            .ok_or_else(|| io_err("snapshot export began twice"))?;
        self.encoder = Some(SnapshotWriter::start(out, &meta)?);
        if let Some(tx) = self.meta_tx.take() {
            tx.send(Ok(meta.clone()))
                .map_err(|_| io_err("snapshot export abandoned"))?;
        }
        self.meta = Some(meta);
        match self.first_read.take() {
            Some(first_read) => first_read.wait(),
            None => Ok(()),
        }
    }

    fn record(&mut self, space: Keyspace, key: &[u8], value: &[u8]) -> io::Result<()> {
        match &mut self.encoder {
            Some(e) => e.record(space, key, value),
            None => Err(io_err("snapshot record before begin")),
        }
    }
}

/// A snapshot of a durable engine as of now: its metadata at once, its records streamed by an
/// export thread as the consumer reads them (from the first read on, at most a few MiB ahead).
/// The engine is synced after the export's point-in-time view is taken, so everything the
/// snapshot claims is durable and the log before it may be purged. Dropping the data unread ends
/// the export before it reads a record. Blocking.
pub fn stream_snapshot(engine: Arc<dyn KvEngine>) -> io::Result<Snapshot> {
    let (out, stream, first_read) = snapshot_stream();
    let (meta_tx, meta_rx) = std::sync::mpsc::sync_channel(1);
    let exporter = engine.clone();
    // The thread holds only the engine and the stream's writing end; it ends when the export is
    // done or the stream is dropped, so nothing outlives the data it serves.
    std::thread::Builder::new()
        .name("rskv-snapshot-export".into())
        .spawn(move || {
            let mut sink = EncoderSink {
                meta_tx: Some(meta_tx),
                first_read: Some(first_read),
                ..EncoderSink::new(out)
            };
            let result = exporter.export(&mut sink);
            let result = match (result, sink.encoder.take()) {
                (Ok(()), Some(encoder)) => encoder.end().map(drop),
                (Ok(()), None) => Err(io_err("engine export produced no snapshot")),
                (Err(e), Some(encoder)) => {
                    encoder
                        .into_inner()
                        .fail(io_err(format!("snapshot export failed: {e}")));
                    Err(e)
                }
                (Err(e), None) => Err(e),
            };
            if let Err(e) = result {
                if let Some(tx) = sink.meta_tx.take() {
                    let _ = tx.send(Err(io_err(format!("snapshot export failed: {e}"))));
                }
                tracing::debug!(error = %e, "snapshot export ended early");
            }
        })?;
    let meta = meta_rx
        .recv()
        .map_err(|_| io_err("snapshot export ended before its metadata"))??;
    engine.sync()?;
    Ok(Snapshot {
        meta,
        snapshot: SnapshotData::Stream(stream),
    })
}

/// Builds a snapshot file from the engine and makes it the current snapshot, unless a newer one
/// (installed from the leader meanwhile) is already current; returns the current snapshot.
///
/// Holds `lock` throughout, as install does, so a build never exports a half-imported engine and
/// never replaces a newer installed snapshot with an older one.
fn build_snapshot_blocking(
    engine: &dyn KvEngine,
    dir: &Path,
    seq: u64,
    lock: &Mutex<()>,
) -> io::Result<(SnapshotMeta, PathBuf)> {
    let _guard = lock.lock().map_err(|_| io_err("snapshot lock poisoned"))?;
    let started = std::time::Instant::now();
    // The log before the snapshot may be purged next: make the engine's data durable first.
    engine.sync()?;
    let tmp = dir.join(format!("building-{seq}.tmp"));
    let mut sink = EncoderSink::new(BufWriter::with_capacity(1 << 20, File::create(&tmp)?));
    engine.export(&mut sink)?;
    let (writer, meta) = match (sink.encoder, sink.meta) {
        (Some(w), Some(m)) => (w, m),
        _ => return Err(io_err("engine export produced no snapshot")),
    };
    let count = writer.finish()?;
    let final_path = dir.join(SNAPSHOT_FILE);
    if final_path.exists() {
        let current = SnapshotFile::open(&final_path)?.read_meta()?;
        if current.last_log_id >= meta.last_log_id {
            std::fs::remove_file(&tmp)?;
            tracing::info!(built = ?meta.last_log_id, current = ?current.last_log_id, "kept the newer current snapshot");
            return Ok((current, final_path));
        }
    }
    std::fs::rename(&tmp, &final_path)?;
    sync_dir(dir)?;
    tracing::info!(
        last_log_id = ?meta.last_log_id,
        records = count,
        bytes = std::fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot built"
    );
    crate::metrics::snapshot_built();
    Ok((meta, final_path))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Builds snapshots for openraft; a clone of the state machine's handles.
pub struct SnapshotBuilder {
    sm: StateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let engine = self.sm.engine.clone();
        if engine.durable() {
            self.sm.trigger.snapshot_started();
            let snapshot = tokio::task::spawn_blocking(move || stream_snapshot(engine))
                .await
                .map_err(io_err)??;
            tracing::info!(last_log_id = ?snapshot.meta.last_log_id, "snapshot point recorded (engine synced; data streamed on demand)");
            crate::metrics::snapshot_built();
            return Ok(snapshot);
        }
        let dir = self.sm.snapshot_dir.clone();
        let seq = self.sm.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        self.sm.trigger.snapshot_started();
        let lock = self.sm.snapshot_lock.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || {
            build_snapshot_blocking(&*engine, &dir, seq, &lock)
        })
        .await
        .map_err(io_err)??;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::File(SnapshotFile::open(&path)?),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let engine = self.engine.clone();
        let state = tokio::task::spawn_blocking(move || engine.applied_state())
            .await
            .map_err(io_err)??;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let engine = self.engine.clone();
        let bus = self.events.clone();
        let sessions = self.sessions.clone();
        let open_sessions = self.open_sessions.clone();
        let keys = self.keys.clone();
        let stores = self.stores.clone();
        let sweeper = self.sweeper.clone();
        let writes: u64 = batch.iter().map(|(entry, _)| writes_in(entry)).sum();
        let work = move || {
            let mut sessions = sessions
                .lock()
                .map_err(|_| io_err("session table lock poisoned"))?;
            let mut keys = lock_index(&keys)?;
            let compacted = keys.meta().compact_revision;
            let applied = apply_batch(&*engine, &bus, &mut sessions, &stores, &mut keys, batch);
            if keys.meta().compact_revision != compacted {
                sweeper.wake();
            }
            if applied.is_err() {
                // The tables and the index may have moved ahead of what the engine holds: take
                // the engine's.
                if let Ok(system) = engine.system_records() {
                    let _ = stores.load(&system);
                    if let Ok(stored) = SessionTable::load(system) {
                        *sessions = stored;
                    }
                }
                if let Ok(stored) = KeyIndex::load(&*engine) {
                    *keys = stored;
                }
            }
            open_sessions.store(sessions.len(), Ordering::Relaxed);
            applied
        };
        let responders = self.apply_thread.run(work).await??;
        self.trigger.applied(writes);
        for (responder, response) in responders {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { sm: self.clone() }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let engine = self.engine.clone();
        let spool = self.snapshot_dir.join(format!(
            "incoming-local-{}.tmp",
            self.snapshot_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let final_path = self.snapshot_path();
        let dir = self.snapshot_dir.clone();
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let lock = self.snapshot_lock.clone();
        let events = self.events.clone();
        let sessions = self.sessions.clone();
        let open_sessions = self.open_sessions.clone();
        let keys = self.keys.clone();
        let stores = self.stores.clone();
        let sweeper = self.sweeper.clone();
        self.trigger.snapshot_started();
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().map_err(|_| io_err("snapshot lock poisoned"))?;
            let started = std::time::Instant::now();
            let snapshot = match snapshot {
                SnapshotData::File(file) => file,
                // An export handed over in-process (openraft's storage suite does this): written
                // to a file first, so an interrupted import can be redone at the next start.
                SnapshotData::Stream(mut stream) => {
                    let mut out = std::fs::File::create(&spool)?;
                    std::io::copy(&mut stream, &mut out)?;
                    SnapshotFile::open(&spool)?
                }
            };
            snapshot.file.sync_all()?;
            // Read it through once before touching the engine: a transfer cut short (a sender
            // whose file read or engine export failed midway ends its stream early) must be
            // refused here, not found corrupt halfway through an import that has already
            // cleared the engine, and then again at every restart.
            let records = snapshot.reader()?.try_fold(0u64, |n, r| r.map(|_| n + 1))?;
            tracing::debug!(records, "incoming snapshot verified");
            // Put the file in place first: if the import below is interrupted, the next start
            // re-imports it (see `recover`).
            if snapshot.path != final_path {
                std::fs::rename(&snapshot.path, &final_path)?;
                sync_dir(&dir)?;
            }
            let file = SnapshotFile::open(&final_path)?;
            // Held across the import: no apply runs during an install, and the table must be
            // the imported one before the next.
            let mut table = sessions
                .lock()
                .map_err(|_| io_err("session table lock poisoned"))?;
            let mut index = lock_index(&keys)?;
            let paused = sweeper.pause()?;
            engine.import(&state, &mut file.reader()?)?;
            drop(paused);
            sweeper.wake();
            let system = engine.system_records()?;
            stores.load(&system)?;
            *table = SessionTable::load(system)?;
            *index = KeyIndex::load(&*engine)?;
            open_sessions.store(table.len(), Ordering::Relaxed);
            let revision = index.meta().revision;
            drop(index);
            drop(table);
            if engine.durable() {
                // Imported and synced: the engine now holds the data, and the file (a whole copy
                // of it) is not needed for recovery.
                drop(file);
                std::fs::remove_file(&final_path)?;
                sync_dir(&dir)?;
            }
            // Hooks cannot be given the changes a snapshot skipped over: tell them. (Watch
            // streams read history, which the snapshot carries: they go on.)
            events.reset(state.last_applied.map(|l| l.index).unwrap_or(0));
            events.applied(revision, state.last_applied.map_or(0, |l| l.index));
            tracing::info!(
                last_log_id = ?state.last_applied,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot installed"
            );
            crate::metrics::snapshot_installed();
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(io_err)?
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        if self.engine.durable() {
            // The engine itself is the current snapshot, as of now: at least as new as the last
            // one built, so it covers every purged entry.
            let engine = self.engine.clone();
            let snapshot = tokio::task::spawn_blocking(move || stream_snapshot(engine))
                .await
                .map_err(io_err)??;
            return Ok(snapshot.meta.last_log_id.is_some().then_some(snapshot));
        }
        let path = self.snapshot_path();
        tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Ok(None);
            }
            let file = SnapshotFile::open(&path)?;
            let meta = file.read_meta()?;
            Ok(Some(Snapshot {
                meta,
                snapshot: SnapshotData::File(file),
            }))
        })
        .await
        .map_err(io_err)?
    }
}

/// A test suite every engine must pass; each engine's tests call it with a fresh instance.
#[cfg(test)]
pub(crate) mod engine_suite {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn log_id(index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(1, 1, index)
    }

    pub(crate) fn commit_should_be_visible_and_ordered(engine: &dyn KvEngine) {
        let state = AppliedState {
            last_applied: Some(log_id(3)),
            membership: StoredMembership::default(),
        };
        engine
            .commit(WriteSet {
                writes: vec![
                    (b("b"), Some(b("2"))),
                    (b("a"), Some(b("1"))),
                    (b("c"), Some(b("3"))),
                    (b("zz"), None),
                ],
                system: vec![(b("s2"), Some(b("y"))), (b("s1"), Some(b("x")))],
                state: state.clone(),
                ..WriteSet::default()
            })
            .expect("commit");
        assert_eq!(engine.get(b"a").expect("get"), Some(b("1")));
        assert_eq!(engine.get(b"zz").expect("get"), None);
        assert_eq!(engine.applied_state().expect("state"), state);
        let keys: Vec<Bytes> = engine
            .scan(b"", None, 10)
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            vec![b("a"), b("b"), b("c")],
            "no system key in a scan"
        );
        assert_eq!(engine.get(b"s1").expect("get"), None, "nor in a get");
        let ranged = engine.scan(b"b", Some(b"c"), 10).expect("scan");
        assert_eq!(ranged, vec![(b("b"), b("2"))]);
        assert_eq!(engine.scan(b"", None, 2).expect("scan").len(), 2);
        assert_eq!(
            engine.system_records().expect("system"),
            vec![(b("s1"), b("x")), (b("s2"), b("y"))]
        );
        engine
            .commit(WriteSet {
                writes: vec![(b("a"), None)],
                system: vec![(b("s1"), None)],
                state: AppliedState {
                    last_applied: Some(log_id(4)),
                    membership: StoredMembership::default(),
                },
                ..WriteSet::default()
            })
            .expect("commit");
        assert_eq!(engine.get(b"a").expect("get"), None);
        assert_eq!(
            engine.system_records().expect("system"),
            vec![(b("s2"), b("y"))]
        );
    }

    /// Collects an export.
    pub(crate) struct VecSink(pub Option<AppliedState>, pub Vec<Record>);

    impl SnapshotSink for VecSink {
        fn begin(&mut self, state: &AppliedState) -> io::Result<()> {
            self.0 = Some(state.clone());
            Ok(())
        }
        fn record(&mut self, space: Keyspace, key: &[u8], value: &[u8]) -> io::Result<()> {
            self.1.push(Record {
                space,
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
            });
            Ok(())
        }
    }

    pub(crate) fn export_import_should_round_trip(source: &dyn KvEngine, target: &dyn KvEngine) {
        let state = AppliedState {
            last_applied: Some(log_id(9)),
            membership: StoredMembership::default(),
        };
        let writes = (0..100)
            .map(|i| (b(&format!("k{i:03}")), Some(b(&format!("v{i}")))))
            .collect();
        source
            .commit(WriteSet {
                writes,
                system: vec![(b("sys"), Some(b("1")))],
                state: state.clone(),
                ..WriteSet::default()
            })
            .expect("commit");
        // The target has stale content that the import must replace entirely.
        target
            .commit(WriteSet {
                writes: vec![(b("stale"), Some(b("x")))],
                system: vec![(b("stale-sys"), Some(b("x")))],
                state: AppliedState::default(),
                ..WriteSet::default()
            })
            .expect("commit");
        let mut sink = VecSink(None, Vec::new());
        source.export(&mut sink).expect("export");
        assert_eq!(sink.0.as_ref(), Some(&state));
        assert_eq!(sink.1.len(), 101);
        assert_eq!(
            sink.1.last().map(|r| r.space),
            Some(Keyspace::System),
            "data first, then the system keyspace"
        );
        target
            .import(&state, &mut sink.1.clone().into_iter().map(Ok))
            .expect("import");
        assert_eq!(target.get(b"stale").expect("get"), None);
        let data: Vec<(Bytes, Bytes)> = sink
            .1
            .iter()
            .filter(|r| r.space == Keyspace::Data)
            .map(|r| (r.key.clone(), r.value.clone()))
            .collect();
        assert_eq!(target.scan(b"", None, 1000).expect("scan"), data);
        assert_eq!(
            target.system_records().expect("system"),
            vec![(b("sys"), b("1"))]
        );
        assert_eq!(target.applied_state().expect("state"), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryEngine;
    use prost::Message;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn group_should_apply_each_command_in_order_at_one_index() {
        let engine = MemoryEngine::new();
        let cas = |expected: &str, new_value: &str| Command::CompareAndSwap {
            key: b("k"),
            expected: Some(b(expected)),
            new_value: b(new_value),
            session: None,
        };
        let group = Command::Group {
            commands: vec![
                Command::Put {
                    key: b("k"),
                    value: b("1"),
                    return_prev: false,
                    session: None,
                },
                cas("1", "2"),
                cas("1", "3"),
                Command::Delete {
                    key: b("k"),
                    session: None,
                },
                Command::Put {
                    key: b("j"),
                    value: b("5"),
                    return_prev: true,
                    session: None,
                },
            ],
        };
        let mut keys = KeyIndex::load(&engine).expect("index");
        let mut writer = Writer::new(&engine, &mut keys);
        let mut sessions = SessionTable::default();
        let resp = execute(
            &mut writer,
            &mut sessions,
            Stores::default().replicated(),
            group,
            7,
        )
        .expect("execute");
        let events = writer.take_events();
        let summary: Vec<(bool, Option<Bytes>)> = resp
            .group
            .iter()
            .map(|r| (r.success, r.prev.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (true, None),
                (true, Some(b("1"))),
                (false, Some(b("2"))),
                (true, Some(b("2"))),
                (true, None),
            ]
        );
        let seen: Vec<(u64, i64, Bytes)> = events
            .iter()
            .map(|e| (e.index, e.revision, e.key.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (7, 2, b("k")),
                (7, 3, b("k")),
                (7, 4, b("k")),
                (7, 5, b("j"))
            ],
            "one event per change, in order, all at the group's index, a revision per write"
        );
        assert_eq!(writer.latest(b"k").expect("read"), None);
        assert_eq!(
            writer.latest(b"j").expect("read").map(|kv| kv.value),
            Some(b("5"))
        );
        assert_eq!(
            resp.revision, 5,
            "the group's revision after its last write"
        );
    }

    /// `n` keys, each a 300-byte value starting with `tag`, as applied at `index`.
    fn rows(n: usize, tag: &str, index: u64) -> WriteSet {
        let version = |i: usize| KeyVersion {
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b(&format!("{tag}{:0>300}", i)),
            ..KeyVersion::default()
        };
        WriteSet {
            system: Vec::new(),
            writes: (0..n)
                .map(|i| {
                    (
                        b(&format!("key{i:05}")),
                        Some(Bytes::from(version(i).encode_to_vec())),
                    )
                })
                .collect(),
            state: AppliedState {
                last_applied: Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
                membership: StoredMembership::default(),
            },
            ..WriteSet::default()
        }
    }

    async fn state_machine(engine: Arc<dyn KvEngine>, dir: &Path) -> StateMachine {
        let events = Arc::new(EventBus::new(16));
        StateMachine::open(engine, dir, events, SnapshotTrigger::new(0))
            .await
            .expect("open state machine")
    }

    /// A snapshot file built by a memory engine holding `rows`, in `dir`.
    async fn memory_snapshot(dir: &Path, rows: WriteSet) -> Snapshot {
        let source = Arc::new(MemoryEngine::new());
        let mut leader = state_machine(source.clone(), dir).await;
        source.commit(rows).expect("commit");
        leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_engine_snapshot_should_stream_a_point_in_time_view() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(rocks::RocksEngine::open(&dir.path().join("sm")).expect("open"));
        let mut leader = state_machine(engine.clone(), &dir.path().join("snapshots")).await;
        assert!(
            leader
                .get_current_snapshot()
                .await
                .expect("current")
                .is_none(),
            "nothing applied, no snapshot"
        );
        // 5,000 records of 300 bytes: several stream pieces, so the export has to wait for the
        // reader while later commits land.
        engine.commit(rows(5000, "old", 10)).expect("commit");
        let built = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(10));
        assert!(
            !dir.path().join("snapshots").join(SNAPSHOT_FILE).exists(),
            "a durable engine writes no snapshot file"
        );
        let current = leader
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot once something is applied");
        assert_eq!(current.meta, built.meta);
        engine.commit(rows(5000, "new", 11)).expect("commit");

        let follower_dir = tempfile::tempdir().expect("tempdir");
        let target = Arc::new(MemoryEngine::new());
        let mut follower = state_machine(target.clone(), follower_dir.path()).await;
        follower
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .expect("install");
        assert_eq!(
            target.applied_state().expect("state").last_applied,
            current.meta.last_log_id
        );
        let all = target.scan(b"", None, usize::MAX).expect("scan");
        assert_eq!(all.len(), 5000);
        assert!(
            all.iter().all(|(_, v)| KeyVersion::decode(&v[..])
                .expect("version")
                .value
                .starts_with(b"old")),
            "the stream holds the state at its metadata, not later commits"
        );
        // The next snapshot is taken anew and sees the later commit.
        let next = leader
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("snapshot");
        assert_eq!(next.meta.last_log_id.map(|l| l.index), Some(11));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_engine_should_keep_installed_data_without_the_file() {
        let source_dir = tempfile::tempdir().expect("tempdir");
        let snapshot = memory_snapshot(source_dir.path(), rows(100, "v", 7)).await;

        let dir = tempfile::tempdir().expect("tempdir");
        {
            let engine = Arc::new(rocks::RocksEngine::open(&dir.path().join("sm")).expect("open"));
            let mut follower = state_machine(engine, &dir.path().join("snapshots")).await;
            follower
                .install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .expect("install");
        }
        assert!(
            !dir.path().join("snapshots").join(SNAPSHOT_FILE).exists(),
            "the engine holds the data once imported"
        );
        let engine = Arc::new(rocks::RocksEngine::open(&dir.path().join("sm")).expect("reopen"));
        let mut reopened = state_machine(engine.clone(), &dir.path().join("snapshots")).await;
        assert_eq!(
            reopened.applied_state().await.expect("state").0,
            snapshot.meta.last_log_id
        );
        assert_eq!(engine.scan(b"", None, usize::MAX).expect("scan").len(), 100);
    }

    /// A log of session commands: sessions opened, writes (some repeated, some after their
    /// session expired), acknowledgements, a close, and the clock moving on and back.
    fn session_log() -> Vec<Entry> {
        use openraft::entry::RaftEntry;
        let mut commands = Vec::new();
        let ttl = 5_000;
        for s in 0..3u64 {
            commands.push(Command::OpenSession {
                now_ms: 1_000 + s,
                ttl_ms: ttl,
                max_sessions: 3,
            });
        }
        let write = |id: u64, seq: u64, first_unacked: u64, now_ms: u64, key: &str| {
            Command::CompareAndSwap {
                key: b(key),
                expected: None,
                new_value: b(&format!("{id}.{seq}")),
                session: None,
            }
            .in_session(crate::types::SessionStamp {
                id,
                seq,
                first_unacked,
                now_ms,
            })
        };
        for round in 0..6u64 {
            let now = 2_000 + round * 1_500;
            for id in 1..=3u64 {
                if id == 3 && round >= 2 {
                    continue; // session 3 goes idle and expires
                }
                let seq = round + 1;
                commands.push(write(id, seq, seq.saturating_sub(1).max(1), now, "k"));
                // A retry of the same write, and a clock that went back (a new leader).
                commands.push(write(id, seq, seq.saturating_sub(1).max(1), now - 700, "k"));
            }
        }
        // Session 1 goes on; session 3, idle since 3,500, has expired by 12,000.
        commands.push(write(1, 7, 6, 12_000, "j"));
        commands.push(write(3, 3, 1, 12_000, "k"));
        commands.push(Command::CloseSession { id: 2 });
        commands.push(Command::OpenSession {
            now_ms: 12_001,
            ttl_ms: ttl,
            max_sessions: 3,
        });
        commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Entry::new_normal(
                    openraft::testing::log_id::<TypeConfig>(1, 1, i as u64 + 1),
                    c,
                )
            })
            .collect()
    }

    async fn apply_all(sm: &mut StateMachine, entries: &[Entry]) {
        let batch = entries.iter().cloned().map(|e| Ok((e, None)));
        sm.apply(futures::stream::iter(batch)).await.expect("apply");
    }

    /// Applied straight through, with a crash of the RocksDB engine halfway (memtables lost,
    /// the log replayed from its last flush), or by installing a snapshot of the first half
    /// taken on another node: every way ends with the same session table and the same data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_should_be_identical_however_the_log_was_applied() {
        let log = session_log();
        let half = log.len() / 2;
        let dir = tempfile::tempdir().expect("tempdir");

        let straight = Arc::new(MemoryEngine::new());
        let mut sm = state_machine(straight.clone(), &dir.path().join("a")).await;
        apply_all(&mut sm, &log).await;

        // Crash halfway: the engine keeps what was flushed (after the first quarter), and the
        // log is replayed from there.
        let crashed_dir = dir.path().join("b");
        {
            let engine = Arc::new(rocks::RocksEngine::open_crashing(&crashed_dir));
            let mut sm = state_machine(engine.clone(), &dir.path().join("b-snap")).await;
            apply_all(&mut sm, &log[..half / 2]).await;
            engine.sync().expect("flush");
            apply_all(&mut sm, &log[half / 2..half]).await;
        }
        let crashed = Arc::new(rocks::RocksEngine::open_crashing(&crashed_dir));
        let mut sm = state_machine(crashed.clone(), &dir.path().join("b-snap")).await;
        let replay_from = crashed
            .applied_state()
            .expect("state")
            .last_applied
            .map_or(0, |l| l.index as usize);
        assert_eq!(
            replay_from,
            half / 2,
            "what was flushed survived, nothing more"
        );
        apply_all(&mut sm, &log[replay_from..]).await;

        // A snapshot of the first half, from a node that applied it, then the rest.
        let source = Arc::new(MemoryEngine::new());
        let mut leader = state_machine(source.clone(), &dir.path().join("c-src")).await;
        apply_all(&mut leader, &log[..half]).await;
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        let installed = Arc::new(MemoryEngine::new());
        let mut sm = state_machine(installed.clone(), &dir.path().join("c")).await;
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        apply_all(&mut sm, &log[half..]).await;

        let expected = straight.system_records().expect("records");
        assert_eq!(
            expected.len(),
            4,
            "the revision record, the session meta record, session 1 and the one opened last: \
             {expected:?}"
        );
        for (name, engine) in [
            ("crash and replay", crashed as Arc<dyn KvEngine>),
            ("snapshot install", installed),
        ] {
            assert_eq!(
                engine.system_records().expect("records"),
                expected,
                "{name}: the session table differs"
            );
            assert_eq!(
                engine.scan(b"", None, 100).expect("scan"),
                straight.scan(b"", None, 100).expect("scan"),
                "{name}: the data differs"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncated_snapshot_should_be_refused_before_the_engine_is_touched() {
        let source_dir = tempfile::tempdir().expect("tempdir");
        let snapshot = memory_snapshot(source_dir.path(), rows(100, "new", 9)).await;
        let SnapshotData::File(file) = snapshot.snapshot else {
            panic!("the memory engine builds files");
        };
        let len = file.file.metadata().expect("metadata").len();
        let cut = source_dir.path().join("incoming-cut.tmp");
        std::fs::copy(&file.path, &cut).expect("copy");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&cut)
            .expect("open")
            .set_len(len / 2)
            .expect("truncate");

        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(rocks::RocksEngine::open(&dir.path().join("sm")).expect("open"));
        engine.commit(rows(10, "old", 3)).expect("commit");
        let mut follower = state_machine(engine.clone(), &dir.path().join("snapshots")).await;
        let truncated = SnapshotData::File(SnapshotFile::open(&cut).expect("open"));
        assert!(follower
            .install_snapshot(&snapshot.meta, truncated)
            .await
            .is_err());
        assert_eq!(
            engine
                .applied_state()
                .expect("state")
                .last_applied
                .map(|l| l.index),
            Some(3)
        );
        assert!(!engine.import_interrupted().expect("marker"));
        assert_eq!(engine.scan(b"", None, usize::MAX).expect("scan").len(), 10);
    }
}
