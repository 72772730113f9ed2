//! A linearizability checker for a key-value store of registers with read, write and
//! compare-and-swap — the core of the Jepsen-style fault tests.
//!
//! Each key is an independent register, so a history is split per key and each sub-history is
//! checked with the Wing–Gong–Lowe search, memoising (set of linearized operations, register
//! state) pairs as Porcupine does. The set is memoised as a 128-bit Zobrist hash (the XOR of a
//! random key per operation, updated in O(1) as operations are linearized and undone) rather than
//! a bitset, so each cache entry is a few dozen bytes whatever the history's length: bitsets made
//! the cache quadratic in the operations of a key (a 1.3M-operation history over 5 keys ran out
//! of memory). Two different sets share a hash with probability about 2^-128 per pair; a
//! collision could only prune a branch, i.e. report a violation that is not there, never hide one.
//!
//! Operations that failed definitely (`Fail`) are dropped; reads whose outcome is unknown
//! (`Info`) are dropped; writes and CAS whose outcome is unknown keep an infinite return time and
//! may take effect at any point after their invocation, or not at all.

use std::collections::BTreeMap;
use std::collections::HashSet;

use serde::Deserialize;
use serde::Serialize;

/// A register value; `None` is "absent".
pub type Value = Option<String>;

/// What an operation did, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum OpKind {
    /// A read that returned `value`.
    Read {
        /// What was read (`None`: absent). Ignored for unknown outcomes.
        value: Value,
    },
    /// A write of `value`.
    Write {
        /// The value written.
        value: String,
    },
    /// Compare-and-swap `from` → `to`; `current` is the value the server reported afterwards.
    Cas {
        /// The expected value.
        from: Value,
        /// The new value.
        to: String,
        /// Whether the swap happened (for `Ok` outcomes).
        success: bool,
        /// The value after the operation, as reported (for `Ok` outcomes).
        current: Value,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed; the result is known.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// Unknown (timeout, connection lost after sending): may or may not have taken effect.
    Info,
}

/// One operation of a history, with its invocation and completion times (monotonic, one clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Which client process issued it.
    pub process: u64,
    /// The key (register) it touched.
    pub key: String,
    /// What it did.
    #[serde(flatten)]
    pub kind: OpKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Time taken before sending (nanoseconds on the driver's monotonic clock).
    pub invoke: u64,
    /// Time taken after the reply; ignored for `Info`.
    pub complete: u64,
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// This key's history is not; its operations are attached, in invocation order.
    NotLinearizable {
        /// The failing key.
        key: String,
        /// Its sub-history.
        ops: Vec<Op>,
    },
    /// The search budget ran out on this key before an answer.
    Unknown {
        /// The key whose search was cut short.
        key: String,
    },
}

/// One wording of a verdict for every report (the fault run's summary and `kv_jepsen check`), so
/// a reader meets the same words wherever a history was checked.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, .. } => write!(f, "NOT linearizable on key {key}"),
            Verdict::Unknown { key } => {
                write!(f, "unknown (search budget exhausted on key {key})")
            }
        }
    }
}

/// A prepared operation: what the model needs, with an infinite return for unknown outcomes.
#[derive(Debug, Clone)]
struct Prepared {
    step: Step,
    invoke: u64,
    complete: u64,
}

#[derive(Debug, Clone)]
enum Step {
    Read(Value),
    Write(String),
    /// A CAS known to have succeeded.
    CasOk {
        from: Value,
        to: String,
    },
    /// A CAS known to have failed, having observed `current`.
    CasFailed {
        from: Value,
        current: Value,
    },
    /// A CAS with unknown outcome: succeeds if the register holds `from`, else changes nothing.
    CasMaybe {
        from: Value,
        to: String,
    },
}

/// Applies `step` to `state`; `None` when the step cannot happen in that state.
fn apply(state: &Value, step: &Step) -> Option<Value> {
    match step {
        Step::Read(v) => (state == v).then(|| state.clone()),
        Step::Write(v) => Some(Some(v.clone())),
        Step::CasOk { from, to } => (state == from).then(|| Some(to.clone())),
        Step::CasFailed { from, current } => {
            (state != from && state == current).then(|| state.clone())
        }
        Step::CasMaybe { from, to } => Some(if state == from {
            Some(to.clone())
        } else {
            state.clone()
        }),
    }
}

fn prepare(op: &Op) -> Option<Prepared> {
    let complete = if op.outcome == Outcome::Info {
        u64::MAX
    } else {
        op.complete
    };
    let step = match (&op.kind, op.outcome) {
        (_, Outcome::Fail) => return None,
        (OpKind::Read { .. }, Outcome::Info) => return None,
        (OpKind::Read { value }, _) => Step::Read(value.clone()),
        (OpKind::Write { value }, _) => Step::Write(value.clone()),
        (OpKind::Cas { from, to, .. }, Outcome::Info) => Step::CasMaybe {
            from: from.clone(),
            to: to.clone(),
        },
        (
            OpKind::Cas {
                from,
                to,
                success,
                current,
            },
            _,
        ) => {
            if *success {
                Step::CasOk {
                    from: from.clone(),
                    to: to.clone(),
                }
            } else {
                Step::CasFailed {
                    from: from.clone(),
                    current: current.clone(),
                }
            }
        }
    };
    Some(Prepared {
        step,
        invoke: op.invoke,
        complete,
    })
}

/// Result of checking one register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyResult {
    /// A linearization exists.
    Ok,
    /// None exists.
    Violation,
    /// The budget ran out.
    Unknown,
}

/// Checks one register's operations (starting absent) with at most `budget` search steps.
pub fn check_register(ops: &[Op], budget: u64) -> KeyResult {
    let prepared: Vec<Prepared> = ops.iter().filter_map(prepare).collect();
    wgl(&drop_unobserved(prepared), budget)
}

/// Drops unknown-outcome writes and CAS whose value nobody ever observed.
///
/// Not taking effect is always allowed for them; and if one did take effect, the operation
/// linearized right after it cannot have observed its value, so it is a write and the unknown
/// operation can be removed from that linearization too. Without this, every unobserved
/// unknown operation doubles the search space (they pile up under faults). Repeated to a fixed
/// point: a dropped CAS no longer counts as observing its `from`.
fn drop_unobserved(mut ops: Vec<Prepared>) -> Vec<Prepared> {
    loop {
        let mut observed: HashSet<&str> = HashSet::new();
        for op in &ops {
            let seen: [Option<&Value>; 2] = match &op.step {
                Step::Read(v) => [Some(v), None],
                Step::Write(_) => [None, None],
                Step::CasOk { from, .. } => [Some(from), None],
                Step::CasFailed { from, current } => [Some(from), Some(current)],
                Step::CasMaybe { from, .. } => [Some(from), None],
            };
            observed.extend(seen.into_iter().flatten().filter_map(|v| v.as_deref()));
        }
        let unknown_unseen = |op: &Prepared| {
            op.complete == u64::MAX
                && match &op.step {
                    Step::Write(v) | Step::CasMaybe { to: v, .. } => !observed.contains(v.as_str()),
                    _ => false,
                }
        };
        let before = ops.len();
        let kept: Vec<Prepared> = ops
            .iter()
            .filter(|op| !unknown_unseen(op))
            .cloned()
            .collect();
        if kept.len() == before {
            return kept;
        }
        ops = kept;
    }
}

/// Wing–Gong–Lowe search over call/return events kept in a doubly linked list.
fn wgl(ops: &[Prepared], budget: u64) -> KeyResult {
    let n = ops.len();
    if n == 0 {
        return KeyResult::Ok;
    }
    // Events: (time, is_return, op). Calls sort before returns at equal times.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, i));
        events.push((op.complete.max(op.invoke), true, i));
    }
    events.sort_by_key(|(t, is_return, i)| (*t, *is_return, *i));
    // Linked list with a sentinel head at index 0; node k + 1 is events[k].
    let len = events.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.saturating_sub(1)).collect();
    next[len - 1] = usize::MAX;
    let mut call_node = vec![0usize; n];
    let mut return_node = vec![0usize; n];
    for (k, (_, is_return, i)) in events.iter().enumerate() {
        if *is_return {
            return_node[*i] = k + 1;
        } else {
            call_node[*i] = k + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = node;
        if nx != usize::MAX {
            prev[nx] = node;
        }
    };
    let keys: Vec<u128> = (0..n as u64).map(zobrist_key).collect();
    let mut linearized: u128 = 0;
    let mut cache: HashSet<(u128, Value)> = HashSet::new();
    let mut state: Value = None;
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut cursor = next[0];
    let mut steps = 0u64;
    while next[0] != usize::MAX {
        steps += 1;
        if steps > budget {
            return KeyResult::Unknown;
        }
        if cursor == usize::MAX {
            return KeyResult::Violation;
        }
        let (_, is_return, op) = events[cursor - 1];
        if !is_return {
            let mut applied = None;
            if let Some(new_state) = apply(&state, &ops[op].step) {
                if cache.insert((linearized ^ keys[op], new_state.clone())) {
                    linearized ^= keys[op];
                    applied = Some(new_state);
                }
            }
            match applied {
                Some(new_state) => {
                    stack.push((op, std::mem::replace(&mut state, new_state)));
                    unlink(&mut next, &mut prev, call_node[op]);
                    unlink(&mut next, &mut prev, return_node[op]);
                    cursor = next[0];
                }
                None => cursor = next[cursor],
            }
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((op, old_state)) = stack.pop() else {
                return KeyResult::Violation;
            };
            state = old_state;
            linearized ^= keys[op];
            relink(&mut next, &mut prev, return_node[op]);
            relink(&mut next, &mut prev, call_node[op]);
            cursor = next[call_node[op]];
        }
    }
    KeyResult::Ok
}

/// The Zobrist key of operation `i`: two rounds of splitmix64, so keys are fixed per index and
/// look independent.
fn zobrist_key(i: u64) -> u128 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let hi = splitmix(i.wrapping_mul(2));
    let lo = splitmix(i.wrapping_mul(2).wrapping_add(1));
    (u128::from(hi) << 64) | u128::from(lo)
}

/// Checks a whole history key by key (smallest failing key reported first).
pub fn check(history: &[Op], budget_per_key: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut unknown = None;
    let mut failures: Vec<(usize, String, Vec<Op>)> = Vec::new();
    for (key, mut ops) in by_key {
        match check_register(&ops, budget_per_key) {
            KeyResult::Ok => {}
            KeyResult::Unknown => unknown = unknown.or(Some(key.to_string())),
            KeyResult::Violation => {
                ops.sort_by_key(|o| o.invoke);
                failures.push((ops.len(), key.to_string(), ops));
            }
        }
    }
    if let Some((_, key, ops)) = failures.into_iter().min_by_key(|(n, k, _)| (*n, k.clone())) {
        return Verdict::NotLinearizable { key, ops };
    }
    match unknown {
        Some(key) => Verdict::Unknown { key },
        None => Verdict::Linearizable,
    }
}

/// Reads a history saved as JSON lines (one [`Op`] per line).
///
/// # Errors
/// A message naming the first line that does not parse.
pub fn parse_jsonl(text: &str) -> Result<Vec<Op>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Writes a history as JSON lines.
pub fn to_jsonl(history: &[Op]) -> String {
    history
        .iter()
        .filter_map(|op| serde_json::to_string(op).ok())
        .map(|l| l + "\n")
        .collect()
}

/// Builders for hand-made histories in tests.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// An operation on key `k`.
    pub fn op(process: u64, kind: OpKind, outcome: Outcome, invoke: u64, complete: u64) -> Op {
        op_on("k", process, kind, outcome, invoke, complete)
    }
    /// An operation on `key`.
    pub fn op_on(
        key: &str,
        process: u64,
        kind: OpKind,
        outcome: Outcome,
        invoke: u64,
        complete: u64,
    ) -> Op {
        Op {
            process,
            key: key.into(),
            kind,
            outcome,
            invoke,
            complete,
        }
    }
    /// A write.
    pub fn w(v: &str) -> OpKind {
        OpKind::Write { value: v.into() }
    }
    /// A read.
    pub fn r(v: Option<&str>) -> OpKind {
        OpKind::Read {
            value: v.map(String::from),
        }
    }
    /// A compare-and-swap.
    pub fn cas(from: Option<&str>, to: &str, success: bool, current: Option<&str>) -> OpKind {
        OpKind::Cas {
            from: from.map(String::from),
            to: to.into(),
            success,
            current: current.map(String::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;
    use rand::SeedableRng;

    use super::build::*;
    use super::*;

    const B: u64 = 1_000_000;

    #[test]
    fn stale_read_after_newer_write_should_fail() {
        let h = vec![
            op(1, w("a"), Outcome::Ok, 0, 10),
            op(1, w("b"), Outcome::Ok, 20, 30),
            op(2, r(Some("a")), Outcome::Ok, 40, 50),
        ];
        assert!(matches!(check(&h, B), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn lost_acknowledged_write_should_fail() {
        let h = vec![
            op(1, w("a"), Outcome::Ok, 0, 10),
            op(2, r(None), Outcome::Ok, 20, 30),
        ];
        assert!(matches!(check(&h, B), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn double_cas_success_should_fail() {
        let h = vec![
            op(1, w("a"), Outcome::Ok, 0, 10),
            op(2, cas(Some("a"), "b", true, Some("b")), Outcome::Ok, 20, 40),
            op(3, cas(Some("a"), "c", true, Some("c")), Outcome::Ok, 25, 45),
        ];
        assert!(matches!(check(&h, B), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn concurrent_overlapping_ops_should_pass() {
        // The read overlaps both writes and may see either order.
        let h = vec![
            op(1, w("a"), Outcome::Ok, 0, 100),
            op(2, w("b"), Outcome::Ok, 10, 90),
            op(3, r(Some("a")), Outcome::Ok, 50, 150),
            op(3, r(Some("a")), Outcome::Ok, 160, 170),
        ];
        assert_eq!(check(&h, B), Verdict::Linearizable);
    }

    #[test]
    fn info_writes_that_did_or_did_not_land_should_pass() {
        let landed = vec![
            op(1, w("a"), Outcome::Ok, 0, 10),
            op(2, w("b"), Outcome::Info, 20, 0),
            op(3, r(Some("b")), Outcome::Ok, 100, 110),
        ];
        assert_eq!(check(&landed, B), Verdict::Linearizable);
        let lost = vec![
            op(1, w("a"), Outcome::Ok, 0, 10),
            op(2, w("b"), Outcome::Info, 20, 0),
            op(3, r(Some("a")), Outcome::Ok, 100, 110),
        ];
        assert_eq!(check(&lost, B), Verdict::Linearizable);
        // A failed write never lands.
        let failed = vec![
            op(1, w("a"), Outcome::Ok, 0, 10),
            op(2, w("b"), Outcome::Fail, 20, 30),
            op(3, r(Some("b")), Outcome::Ok, 100, 110),
        ];
        assert!(matches!(check(&failed, B), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn failing_key_should_be_reported_with_its_ops() {
        let mut h = vec![op(1, w("x"), Outcome::Ok, 0, 10)];
        h[0].key = "fine".into();
        h.push(op(1, w("a"), Outcome::Ok, 0, 10));
        h.push(op(2, r(Some("zzz")), Outcome::Ok, 20, 30));
        match check(&h, B) {
            Verdict::NotLinearizable { key, ops } => {
                assert_eq!(key, "k");
                assert_eq!(ops.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let round_trip = parse_jsonl(&to_jsonl(&h)).expect("parse");
        assert_eq!(round_trip, h);
    }

    #[test]
    fn many_unobserved_unknown_writes_should_be_cheap_to_check() {
        // 300 concurrent writes with unknown outcome, never read: each may or may not have
        // happened. Without dropping them the search would explode; with it, a few steps.
        let mut h: Vec<Op> = (0..300)
            .map(|i| op(i, w(&format!("lost{i}")), Outcome::Info, i, i + 1))
            .collect();
        h.push(op(1000, w("a"), Outcome::Ok, 400, 410));
        h.push(op(1001, r(Some("a")), Outcome::Ok, 420, 430));
        assert_eq!(check_register(&h, 10_000), KeyResult::Ok);
        // An unknown write that was observed is kept: reading it is fine...
        let seen = vec![
            op(1, w("x"), Outcome::Info, 0, 1),
            op(2, r(Some("x")), Outcome::Ok, 5, 6),
        ];
        assert_eq!(check_register(&seen, 10_000), KeyResult::Ok);
        // ...but a value nobody wrote is still a violation.
        let phantom = vec![
            op(1, w("x"), Outcome::Info, 0, 1),
            op(2, r(Some("y")), Outcome::Ok, 5, 6),
        ];
        assert_eq!(check_register(&phantom, 10_000), KeyResult::Violation);
    }

    #[test]
    fn a_long_history_of_one_key_should_check_in_bounded_memory() {
        // 200k operations on one register, two clients overlapping pairwise: a write, then a
        // read of it concurrent with the next write. With a bitset per cache entry the cache
        // alone would need 200k x 25 KB; with hashes it is a few MB.
        let n = 100_000u64;
        let mut h = Vec::with_capacity(2 * n as usize);
        for i in 0..n {
            let t = 10 * i;
            h.push(op(1, w(&format!("v{i}")), Outcome::Ok, t, t + 6));
            h.push(op(2, r(Some(&format!("v{i}"))), Outcome::Ok, t + 7, t + 12));
        }
        assert_eq!(check_register(&h, 10_000_000), KeyResult::Ok);
        // The same history with one stale read in the middle is caught.
        let k = n as usize;
        h[k + 1] = op(
            2,
            r(Some("v3")),
            Outcome::Ok,
            10 * (n / 2) + 7,
            10 * (n / 2) + 12,
        );
        assert_eq!(check_register(&h, 10_000_000), KeyResult::Violation);
    }

    /// Brute force: try every order of the prepared ops consistent with real time; info writes
    /// and CAS may also be left out.
    fn brute(ops: &[Op]) -> bool {
        let prepared: Vec<Prepared> = ops.iter().filter_map(prepare).collect();
        fn go(ops: &[Prepared], done: &mut Vec<bool>, state: &Value) -> bool {
            if done.iter().all(|d| *d) {
                return true;
            }
            for i in 0..ops.len() {
                if done[i] {
                    continue;
                }
                // i can go next only if no other pending op returned before i was invoked.
                let blocked =
                    (0..ops.len()).any(|j| !done[j] && j != i && ops[j].complete < ops[i].invoke);
                if blocked {
                    continue;
                }
                if let Some(next) = apply(state, &ops[i].step) {
                    done[i] = true;
                    if go(ops, done, &next) {
                        return true;
                    }
                    done[i] = false;
                }
                // An unknown-outcome op may never take effect.
                if ops[i].complete == u64::MAX {
                    done[i] = true;
                    if go(ops, done, state) {
                        return true;
                    }
                    done[i] = false;
                }
            }
            false
        }
        go(&prepared, &mut vec![false; prepared.len()], &None)
    }

    #[test]
    fn wgl_should_agree_with_brute_force_on_random_small_histories() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let values = ["a", "b", "c"];
        let mut violations = 0;
        for _ in 0..3000 {
            let n = rng.random_range(1..=6);
            let mut h = Vec::new();
            for p in 0..n {
                let invoke = rng.random_range(0..50u64);
                let complete = invoke + rng.random_range(1..30u64);
                let pick = |rng: &mut rand::rngs::SmallRng| -> Option<&str> {
                    if rng.random_bool(0.25) {
                        None
                    } else {
                        Some(values[rng.random_range(0..3)])
                    }
                };
                let kind = match rng.random_range(0..3) {
                    0 => r(pick(&mut rng)),
                    1 => w(values[rng.random_range(0..3)]),
                    _ => {
                        let success = rng.random_bool(0.5);
                        let from = pick(&mut rng);
                        let to = values[rng.random_range(0..3)];
                        let current = if success { Some(to) } else { pick(&mut rng) };
                        cas(from, to, success, current)
                    }
                };
                let outcome = match rng.random_range(0..10) {
                    0 => Outcome::Info,
                    1 => Outcome::Fail,
                    _ => Outcome::Ok,
                };
                h.push(op(p as u64, kind, outcome, invoke, complete));
            }
            let expected = brute(&h);
            let got = check_register(&h, B);
            assert_eq!(got == KeyResult::Ok, expected, "disagreement on {h:#?}");
            if !expected {
                violations += 1;
            }
        }
        assert!(
            violations > 100,
            "the generator must produce both verdicts ({violations})"
        );
    }
}
