//! Client sessions: the state machine's memory of which writes it has already applied, so that a
//! client may retry a write whose reply it lost and have it applied exactly once (Ongaro's thesis
//! §6.3; LogCabin does the same).
//!
//! A client opens a session (a replicated [`Command::OpenSession`] that returns an id) and numbers
//! its writes 1, 2, 3, ... Every write carries (session, sequence) and the lowest sequence whose
//! reply the client has not yet received (`first_unacked`). Applying a write of a session:
//! - a sequence already applied is answered with the reply stored when it was applied, and
//!   changes nothing;
//! - a sequence below `first_unacked` is a stray copy of a write whose reply the client already
//!   has: refused, nothing applied;
//! - otherwise it is applied, and its reply stored until the client's `first_unacked` passes it.
//!
//! So the table holds, per session, only the replies the client may still ask for again.
//!
//! **Time comes from the log, never from a node's clock.** Every session command carries the
//! leader's wall-clock time when it was proposed; the table's clock is the largest such time
//! applied so far (so it never goes back, even when a new leader's clock is behind). A session
//! idle for longer than its time-to-live (carried in its OpenSession command, so every node uses
//! the same one) by that clock is expired: removed, and its writes refused. Every node applies
//! the same log, so every node expires the same sessions at the same index. The price: a leader
//! whose clock runs far ahead expires sessions early (their clients reopen and see one "outcome
//! unknown" at most), and the clock then stays at that time until real time catches up, so
//! meanwhile idle sessions expire only by eviction at `max_sessions`; one far behind keeps
//! sessions longer.
//!
//! Bounds: a session holds at most [`MAX_PENDING_REPLIES`] replies and [`MAX_PENDING_BYTES`] of
//! them, all sessions together [`MAX_TABLE_BYTES`]; writes beyond are refused until replies are
//! acknowledged. Session ids are sequential and unauthenticated: any client may close, or by
//! opening many, evict another's session (which costs that client at most one unknown outcome).
//!
//! The table lives in the engine's system keyspace ([`super::Keyspace::System`]): one record per
//! session and one for the table's clock and id counter, written in the same atomic commit as the
//! data they describe, exported in snapshots and reloaded at start.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::io;

use bytes::Buf;
use bytes::BufMut;
use bytes::Bytes;

use crate::error::io_err;
use crate::types::CommandResponse;
use crate::types::SessionOutcome;
use crate::types::SessionRefusal;

/// Most replies one session may hold unacknowledged. A client that keeps this many writes
/// unconfirmed is refused further writes until it acknowledges some (a bound on the table, which
/// every node keeps in memory and rewrites a session's record of at each apply that touches it).
pub const MAX_PENDING_REPLIES: usize = 16_384;

/// Most bytes of unacknowledged replies one session may hold ([`reply_bytes`] each): replies can
/// carry previous values, so a count alone does not bound them. One reply may take it past the
/// limit; the next write is then refused until replies are acknowledged.
pub const MAX_PENDING_BYTES: u64 = 1 << 20;

/// Most bytes of unacknowledged replies all sessions together may hold.
pub const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Expired sessions are swept from the table whenever the clock crosses a multiple of this (a
/// session is also checked whenever it is used, so the sweep only frees memory).
const SWEEP_EVERY_MS: u64 = 1_000;

/// Key of the table's clock and id counter in the system keyspace.
const META_KEY: &[u8] = b"sessions/meta";
/// Prefix of one session's record (followed by its id, big-endian).
const SESSION_PREFIX: &[u8] = b"sessions/s/";

/// The table-wide state: the log's clock and the next session id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Meta {
    /// Largest leader time (Unix milliseconds) applied so far.
    clock_ms: u64,
    /// Id the next session gets (ids start at 1; 0 means "no session" on the wire).
    next_id: u64,
}

/// What a stored reply keeps of the command's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The whole response (a put's previous value, asked for with `return_prev`).
    All,
    /// Whether there was a previous value, not the value (a delete answers only that).
    Existence,
    /// The previous value only when the swap failed (a compare-and-swap that succeeded is
    /// answered with the request's own new value).
    UnlessSuccess,
}

/// A reply kept for a write the client may ask for again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredReply {
    /// The write's sequence number.
    seq: u64,
    /// Log index the write was applied at.
    index: u64,
    /// The store revision after the write (its answer's `revision`).
    revision: i64,
    /// The command's `success` (a compare-and-swap's outcome).
    success: bool,
    /// The command's `prev` (a delete keeps only whether there was one).
    prev: Option<Bytes>,
}

/// What one stored reply counts against the byte budgets.
fn reply_bytes(reply: &StoredReply) -> u64 {
    32 + reply.prev.as_ref().map_or(0, |p| p.len() as u64)
}

/// One open session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    /// Idle time after which the session expires, fixed when it was opened.
    ttl_ms: u64,
    /// The table's clock when the session was last used.
    last_active_ms: u64,
    /// Sequences below this are acknowledged by the client: their replies are gone.
    first_unacked: u64,
    /// Replies of applied writes at or above `first_unacked`, in sequence order. A deque: a
    /// client's writes are applied in nearly the order it numbered them, so replies join at the
    /// back and leave, acknowledged, from the front.
    replies: VecDeque<StoredReply>,
    /// Bytes of `replies` ([`reply_bytes`]), kept as they change.
    bytes: u64,
}

/// Version of a session record's encoding (its first byte). Version 2 added each reply's
/// revision; version 1 came before the multi-version store, whose format refuses older stores.
const RECORD_VERSION: u8 = 2;

impl Session {
    fn new(ttl_ms: u64, last_active_ms: u64) -> Session {
        Session {
            ttl_ms,
            last_active_ms,
            first_unacked: 1,
            replies: VecDeque::new(),
            bytes: 0,
        }
    }

    fn expired(&self, clock_ms: u64) -> bool {
        self.last_active_ms.saturating_add(self.ttl_ms) < clock_ms
    }

    /// Where reply `seq` is, or would go.
    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.replies.binary_search_by_key(&seq, |r| r.seq)
    }

    /// Drops the replies below `first_unacked`; returns the bytes freed.
    fn acknowledge(&mut self, first_unacked: u64) -> u64 {
        let mut freed = 0;
        self.first_unacked = self.first_unacked.max(first_unacked);
        while self
            .replies
            .front()
            .is_some_and(|r| r.seq < self.first_unacked)
        {
            if let Some(r) = self.replies.pop_front() {
                freed += reply_bytes(&r);
            }
        }
        self.bytes -= freed;
        freed
    }

    /// Stores `reply` (replacing one of the same sequence); returns the bytes added and freed.
    fn insert(&mut self, reply: StoredReply) -> (u64, u64) {
        let added = reply_bytes(&reply);
        let freed = match self.position(reply.seq) {
            Ok(at) => reply_bytes(&std::mem::replace(&mut self.replies[at], reply)),
            Err(at) if at == self.replies.len() => {
                self.replies.push_back(reply);
                0
            }
            Err(at) => {
                self.replies.insert(at, reply);
                0
            }
        };
        self.bytes = self.bytes + added - freed;
        (added, freed)
    }

    /// The record stored for the session: the version, then varints: time-to-live, last use,
    /// first unacknowledged sequence, number of replies, and per reply its sequence and index as
    /// differences from the previous one's (replies are in sequence order; the first sequence
    /// from `first_unacked`, the first index from 0, zigzag-coded as indexes need not grow),
    /// its revision likewise as a zigzag difference from the previous one's (from 0), a flags
    /// byte (1: success, 2: a previous value follows) and the previous value with its
    /// length. A plain put's reply takes three or four bytes.
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 + self.replies.len() * 4);
        out.put_u8(RECORD_VERSION);
        for v in [
            self.ttl_ms,
            self.last_active_ms,
            self.first_unacked,
            self.replies.len() as u64,
        ] {
            prost::encoding::encode_varint(v, &mut out);
        }
        let (mut seq, mut index, mut revision) = (self.first_unacked, 0u64, 0i64);
        let zigzag = |delta: i64| ((delta << 1) ^ (delta >> 63)) as u64;
        for r in &self.replies {
            prost::encoding::encode_varint(r.seq - seq, &mut out);
            prost::encoding::encode_varint(zigzag(r.index.wrapping_sub(index) as i64), &mut out);
            prost::encoding::encode_varint(zigzag(r.revision.wrapping_sub(revision)), &mut out);
            (seq, index, revision) = (r.seq, r.index, r.revision);
            out.put_u8(u8::from(r.success) | if r.prev.is_some() { 2 } else { 0 });
            if let Some(prev) = &r.prev {
                prost::encoding::encode_varint(prev.len() as u64, &mut out);
                out.put_slice(prev);
            }
        }
        Bytes::from(out)
    }

    /// Reads a record written by [`Session::encode`].
    fn decode(mut data: Bytes) -> io::Result<Session> {
        let bad = |what: &str| io_err(format!("session record: {what}"));
        let varint = |data: &mut Bytes| {
            prost::encoding::decode_varint(data).map_err(|_| bad("truncated varint"))
        };
        read_version(&mut data, RECORD_VERSION).map_err(|why| bad(&why))?;
        let ttl_ms = varint(&mut data)?;
        let mut session = Session::new(ttl_ms, varint(&mut data)?);
        session.first_unacked = varint(&mut data)?;
        let count = varint(&mut data)?;
        let (mut seq, mut index, mut revision) = (session.first_unacked, 0u64, 0i64);
        let unzigzag = |z: u64| ((z >> 1) as i64) ^ -((z & 1) as i64);
        for _ in 0..count {
            seq = seq
                .checked_add(varint(&mut data)?)
                .ok_or_else(|| bad("sequence overflow"))?;
            index = index.wrapping_add(unzigzag(varint(&mut data)?) as u64);
            revision = revision.wrapping_add(unzigzag(varint(&mut data)?));
            if data.is_empty() {
                return Err(bad("truncated reply"));
            }
            let flags = data.get_u8();
            let prev = if flags & 2 != 0 {
                let len = varint(&mut data)? as usize;
                if data.len() < len {
                    return Err(bad("truncated previous value"));
                }
                Some(data.split_to(len))
            } else {
                None
            };
            session.insert(StoredReply {
                seq,
                index,
                revision,
                success: flags & 1 != 0,
                prev,
            });
        }
        if !data.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(session)
    }
}

/// What to do with a session write.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Apply it, then [`SessionTable::record`] its reply.
    Execute,
    /// Already applied: answer with this response, change nothing.
    Replay(CommandResponse),
    /// Refuse it, change nothing.
    Refuse(SessionRefusal),
}

/// The session table of one state machine, kept in memory and mirrored to the system keyspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTable {
    meta: Meta,
    sessions: BTreeMap<u64, Session>,
    /// Bytes of stored replies of all sessions ([`reply_bytes`]).
    total_bytes: u64,
    /// Sessions changed (or removed) since the last [`SessionTable::take_changes`].
    dirty: BTreeSet<u64>,
    meta_dirty: bool,
}

fn session_key(id: u64) -> Bytes {
    let mut key = Vec::with_capacity(SESSION_PREFIX.len() + 8);
    key.extend_from_slice(SESSION_PREFIX);
    key.extend_from_slice(&id.to_be_bytes());
    Bytes::from(key)
}

/// Takes the version byte that starts every record of the session table, refusing a record that
/// is empty or of a version other than `expected`; the error says which.
fn read_version(data: &mut Bytes, expected: u8) -> Result<(), String> {
    if data.is_empty() {
        return Err("empty".to_string());
    }
    let version = data.get_u8();
    if version != expected {
        return Err(format!(
            "version {version}; this rskv reads version {expected}"
        ));
    }
    Ok(())
}

/// Version of the table metadata record's encoding (its first byte).
const META_VERSION: u8 = 1;

impl Meta {
    /// The record stored for the table: the version, then varints: the clock and the next id.
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(1 + 2 * 10);
        out.put_u8(META_VERSION);
        prost::encoding::encode_varint(self.clock_ms, &mut out);
        prost::encoding::encode_varint(self.next_id, &mut out);
        Bytes::from(out)
    }

    /// Reads a record written by [`Meta::encode`].
    fn decode(mut data: Bytes) -> io::Result<Meta> {
        let bad = |what: &str| io_err(format!("session table metadata: {what}"));
        read_version(&mut data, META_VERSION).map_err(|why| bad(&why))?;
        let mut varint =
            || prost::encoding::decode_varint(&mut data).map_err(|_| bad("truncated varint"));
        let meta = Meta {
            clock_ms: varint()?,
            next_id: varint()?,
        };
        if !data.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(meta)
    }
}

impl SessionTable {
    /// The table stored in `records` (the system keyspace; records of other owners are skipped).
    ///
    /// # Errors
    /// When a session record cannot be decoded.
    pub fn load(records: Vec<(Bytes, Bytes)>) -> io::Result<SessionTable> {
        let mut table = SessionTable::default();
        for (key, value) in records {
            if key.as_ref() == META_KEY {
                table.meta = Meta::decode(value)?;
            } else if let Some(id) = key.strip_prefix(SESSION_PREFIX) {
                let id = <[u8; 8]>::try_from(id)
                    .map(u64::from_be_bytes)
                    .map_err(|_| io_err(format!("session record key {key:?} is malformed")))?;
                let session =
                    Session::decode(value).map_err(|e| io_err(format!("session {id}: {e}")))?;
                table.total_bytes += session.bytes;
                table.sessions.insert(id, session);
            }
        }
        Ok(table)
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Moves the clock to `now_ms` (never back) and sweeps expired sessions when it crosses a
    /// sweep boundary. Deterministic: it depends only on the clock values in the log.
    fn advance(&mut self, now_ms: u64) {
        let before = self.meta.clock_ms;
        if now_ms <= before {
            return;
        }
        self.meta.clock_ms = now_ms;
        self.meta_dirty = true;
        if before / SWEEP_EVERY_MS != now_ms / SWEEP_EVERY_MS {
            let expired: Vec<u64> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.expired(now_ms))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                self.remove(id);
            }
        }
    }

    fn remove(&mut self, id: u64) -> bool {
        self.dirty.insert(id);
        match self.sessions.remove(&id) {
            Some(session) => {
                self.total_bytes -= session.bytes;
                true
            }
            None => false,
        }
    }

    /// Opens a session idle-expiring after `ttl_ms`; returns its id. With `max_sessions` already
    /// open, the least recently used one is closed to make room (its client will see its session
    /// expired).
    pub fn open(&mut self, now_ms: u64, ttl_ms: u64, max_sessions: u64) -> u64 {
        self.advance(now_ms);
        while self.sessions.len() as u64 >= max_sessions.max(1) {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(id, s)| (s.last_active_ms, **id))
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => self.remove(id),
                None => break,
            };
        }
        self.meta.next_id = self.meta.next_id.max(1);
        let id = self.meta.next_id;
        self.meta.next_id += 1;
        self.meta_dirty = true;
        self.sessions
            .insert(id, Session::new(ttl_ms, self.meta.clock_ms));
        self.dirty.insert(id);
        id
    }

    /// Closes session `id`; `false` if it was not open.
    pub fn close(&mut self, id: u64) -> bool {
        self.remove(id)
    }

    /// Decides what to do with write `seq` of session `id` proposed at `now_ms`, whose client has
    /// received every reply below `first_unacked`.
    pub fn admit(&mut self, id: u64, seq: u64, first_unacked: u64, now_ms: u64) -> Admission {
        self.advance(now_ms);
        let clock = self.meta.clock_ms;
        let Some(session) = self.sessions.get_mut(&id) else {
            return Admission::Refuse(SessionRefusal::Expired { id });
        };
        if session.expired(clock) {
            self.remove(id);
            return Admission::Refuse(SessionRefusal::Expired { id });
        }
        self.dirty.insert(id);
        session.last_active_ms = clock;
        self.total_bytes -= session.acknowledge(first_unacked);
        if seq < session.first_unacked {
            return Admission::Refuse(SessionRefusal::Acknowledged {
                seq,
                first_unacked: session.first_unacked,
            });
        }
        if let Ok(at) = session.position(seq) {
            let reply = &session.replies[at];
            return Admission::Replay(CommandResponse {
                prev: reply.prev.clone(),
                success: reply.success,
                session: SessionOutcome::Replayed { index: reply.index },
                revision: reply.revision,
                ..CommandResponse::default()
            });
        }
        let (replies, bytes) = (session.replies.len() as u64, session.bytes);
        if replies >= MAX_PENDING_REPLIES as u64 || bytes >= MAX_PENDING_BYTES {
            return Admission::Refuse(SessionRefusal::Backlog { replies, bytes });
        }
        if self.total_bytes >= MAX_TABLE_BYTES {
            return Admission::Refuse(SessionRefusal::TableFull {
                bytes: self.total_bytes,
            });
        }
        Admission::Execute
    }

    /// Stores the reply of write `seq` of session `id`, applied at `index`; `keep` says what of
    /// the response a repeat needs.
    pub fn record(
        &mut self,
        id: u64,
        seq: u64,
        index: u64,
        response: &CommandResponse,
        keep: Keep,
    ) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let prev = match keep {
            Keep::All => response.prev.clone(),
            Keep::Existence => response.prev.as_ref().map(|_| Bytes::new()),
            Keep::UnlessSuccess if response.success => None,
            Keep::UnlessSuccess => response.prev.clone(),
        };
        let (added, freed) = session.insert(StoredReply {
            seq,
            index,
            revision: response.revision,
            success: response.success,
            prev,
        });
        self.total_bytes = self.total_bytes + added - freed;
        self.dirty.insert(id);
    }

    /// The system-keyspace writes (`None` deletes) that bring the stored table up to this one
    /// since the last call.
    pub fn take_changes(&mut self) -> Vec<(Bytes, Option<Bytes>)> {
        let mut out = Vec::with_capacity(self.dirty.len() + 1);
        if std::mem::take(&mut self.meta_dirty) {
            out.push((Bytes::from_static(META_KEY), Some(self.meta.encode())));
        }
        for id in std::mem::take(&mut self.dirty) {
            let value = self.sessions.get(&id).map(Session::encode);
            out.push((session_key(id), value));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 10_000;

    fn done(prev: Option<&'static str>) -> CommandResponse {
        CommandResponse::done(prev.map(|p| Bytes::from_static(p.as_bytes())))
    }

    /// The table after storing its changes and loading them back, as after a restart.
    fn reloaded(table: &mut SessionTable) -> SessionTable {
        let mut stored: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        for (k, v) in table.take_changes() {
            match v {
                Some(v) => stored.insert(k, v),
                None => stored.remove(&k),
            };
        }
        SessionTable::load(stored.into_iter().collect()).expect("load")
    }

    #[test]
    fn a_retried_write_should_be_replayed_not_executed() {
        let mut t = SessionTable::default();
        let id = t.open(1_000, TTL, 10);
        assert_eq!(t.admit(id, 1, 1, 1_001), Admission::Execute);
        t.record(id, 1, 42, &done(Some("old")), Keep::All);
        match t.admit(id, 1, 1, 1_002) {
            Admission::Replay(r) => {
                assert_eq!(r.session, SessionOutcome::Replayed { index: 42 });
                assert_eq!(r.prev, Some(Bytes::from_static(b"old")));
            }
            other => panic!("expected a replay, got {other:?}"),
        }
        // Acknowledged: the reply is dropped, and a stray copy is refused.
        assert_eq!(t.admit(id, 2, 2, 1_003), Admission::Execute);
        assert_eq!(
            t.admit(id, 1, 2, 1_004),
            Admission::Refuse(SessionRefusal::Acknowledged {
                seq: 1,
                first_unacked: 2
            })
        );
    }

    #[test]
    fn sessions_should_expire_by_the_log_clock_only() {
        let mut t = SessionTable::default();
        let a = t.open(1_000, TTL, 10);
        let b = t.open(1_000, TTL, 10);
        assert_eq!(t.admit(a, 1, 1, 1_000 + TTL), Admission::Execute);
        // A clock from the log that went back (a new leader's slower clock) changes nothing.
        assert_eq!(t.admit(a, 2, 1, 500), Admission::Execute);
        // b was last used at 1,000; by 1,000 + TTL + 1 it has expired, a has not.
        assert_eq!(
            t.admit(b, 1, 1, 1_000 + TTL + 1),
            Admission::Refuse(SessionRefusal::Expired { id: b })
        );
        assert_eq!(t.admit(a, 3, 1, 1_000 + TTL + 1), Admission::Execute);
        assert_eq!(t.len(), 1);
        // A sweep removes idle sessions nobody uses any more: a was last used at 1,000 + TTL + 1.
        let c = t.open(1_000 + TTL + 1, TTL, 10);
        assert_eq!(t.admit(c, 1, 1, 1_000 + 2 * TTL + 1), Admission::Execute);
        assert_eq!(
            t.len(),
            2,
            "a is idle exactly its time-to-live: not expired yet"
        );
        assert_eq!(t.admit(c, 2, 1, 2_500 + 2 * TTL), Admission::Execute);
        assert_eq!(t.len(), 1, "a expired in the sweep, c is in use");
    }

    #[test]
    fn a_full_table_should_close_the_least_recently_used_session() {
        let mut t = SessionTable::default();
        let a = t.open(1_000, TTL, 2);
        let b = t.open(1_001, TTL, 2);
        t.admit(a, 1, 1, 1_002);
        let c = t.open(1_003, TTL, 2);
        assert_eq!(
            t.admit(b, 1, 1, 1_004),
            Admission::Refuse(SessionRefusal::Expired { id: b })
        );
        assert_eq!(t.admit(a, 2, 1, 1_004), Admission::Execute);
        assert_eq!(t.admit(c, 1, 1, 1_004), Admission::Execute);
        assert!(c > b && b > a, "ids are never reused");
    }

    #[test]
    fn the_table_should_survive_a_reload_identically() {
        let mut t = SessionTable::default();
        let a = t.open(1_000, TTL, 10);
        let b = t.open(1_000, TTL, 10);
        t.admit(a, 1, 1, 1_001);
        t.record(
            a,
            1,
            7,
            &done(Some("a big previous value")),
            Keep::Existence,
        );
        t.admit(b, 1, 1, 1_001);
        t.record(b, 1, 8, &done(None), Keep::All);
        assert!(t.close(b));
        let mut back = reloaded(&mut t);
        assert_eq!(back.sessions, t.sessions);
        assert_eq!(back.meta, t.meta);
        // A delete's reply keeps only that the key existed.
        match back.admit(a, 1, 1, 1_002) {
            Admission::Replay(r) => assert_eq!(r.prev, Some(Bytes::new())),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert_eq!(back.open(1_003, TTL, 10), b + 1, "the id counter survives");
    }

    #[test]
    fn a_session_record_should_round_trip_compactly_and_refuse_damage() {
        let mut session = Session::new(60_000, 1_234_567);
        session.first_unacked = 40;
        for (seq, index, success, prev) in [
            (41, 900, true, None),
            (40, 901, true, None),
            (44, 899, false, Some("current value")),
            (42, 950, true, Some("")),
        ] {
            session.insert(StoredReply {
                seq,
                index,
                revision: index as i64 * 2 - 900,
                success,
                prev: prev.map(|p: &str| Bytes::copy_from_slice(p.as_bytes())),
            });
        }
        let seqs: Vec<u64> = session.replies.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![40, 41, 42, 44], "kept in sequence order");
        let record = session.encode();
        assert_eq!(Session::decode(record.clone()).expect("decode"), session);
        // A plain put's reply: sequence, index and revision deltas and the flags, 4-5 bytes each.
        let mut plain = Session::new(60_000, 0);
        for seq in 1..=100 {
            plain.insert(StoredReply {
                seq,
                index: 10_000 + seq / 10,
                revision: 20_000 + seq as i64 * 3,
                success: true,
                prev: None,
            });
        }
        let bytes = plain.encode().len();
        assert!(bytes < 20 + 100 * 5, "{bytes} bytes for 100 replies");
        for cut in [1, record.len() / 2, record.len() - 1] {
            assert!(
                Session::decode(record.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut newer = record.to_vec();
        newer[0] = RECORD_VERSION + 1;
        let err = Session::decode(Bytes::from(newer)).expect_err("newer version");
        assert!(err.to_string().contains("version 3"), "{err}");
    }

    #[test]
    fn table_metadata_should_round_trip_and_refuse_damage() {
        let meta = Meta {
            clock_ms: 1_765_000_000_000,
            next_id: 42,
        };
        let record = meta.encode();
        assert_eq!(Meta::decode(record.clone()).expect("decode"), meta);
        for cut in [0, 1, record.len() - 1] {
            assert!(Meta::decode(record.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut newer = record.to_vec();
        newer[0] = META_VERSION + 1;
        let err = Meta::decode(Bytes::from(newer)).expect_err("newer version");
        assert!(err.to_string().contains("version 2"), "{err}");
        let mut longer = record.to_vec();
        longer.push(0);
        assert!(Meta::decode(Bytes::from(longer)).is_err(), "trailing bytes");
    }

    #[test]
    fn a_session_should_refuse_writes_beyond_its_backlog() {
        let mut t = SessionTable::default();
        let id = t.open(0, TTL, 10);
        for seq in 1..=MAX_PENDING_REPLIES as u64 {
            assert_eq!(t.admit(id, seq, 1, 0), Admission::Execute);
            t.record(id, seq, seq, &done(None), Keep::All);
        }
        let next = MAX_PENDING_REPLIES as u64 + 1;
        assert!(matches!(
            t.admit(id, next, 1, 0),
            Admission::Refuse(SessionRefusal::Backlog { .. })
        ));
        // Acknowledging frees room.
        assert_eq!(t.admit(id, next, next, 0), Admission::Execute);
    }
}
