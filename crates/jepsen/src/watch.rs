//! The watch workload: one watcher per node records the changes it is sent; afterwards every
//! watcher's stream must be a gap-free, duplicate-free, in-order slice of one common sequence, and
//! every acknowledged write must be in it. Watches are served from the store's history, so a
//! watcher resumes on its node, across that node's restarts, from the revision after the last one
//! it received.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;
use rskv_client::Client;
use rskv_client::ClientError;
use rskv_client::ClientOptions;
use rskv_proto::kv::watch_event::Kind;

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Store revision of the change (every change of one request shares it).
    pub revision: i64,
    /// Key.
    pub key: String,
    /// New value (`None`: a delete).
    pub value: Option<String>,
}

/// An uninterrupted run of events from one node: a stream, or resumed streams that continued
/// exactly where the previous one stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Segment {
    /// The node it came from.
    pub node: u64,
    /// Events in arrival order.
    pub events: Vec<Seen>,
    /// Why it ended (the node could not resume from the next revision, or the run ended).
    pub ended: String,
}

/// What one watcher recorded.
pub type Segments = Arc<Mutex<Vec<Segment>>>;

/// Watches `prefix` on node `node` (only that node) until `stop`, keeping the newest revision
/// received in `progress`, resuming after each interruption from the revision after the last one
/// received (a response holds whole revisions, so nothing repeats); a node that can no longer
/// serve that revision (compacted away) starts a new segment from live changes.
pub async fn run_watcher(
    node: u64,
    addr: String,
    tls: Option<rskv_client::tls::TlsDialer>,
    prefix: String,
    out: Segments,
    progress: Arc<AtomicI64>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(client) = Client::with_options(
        vec![addr],
        ClientOptions {
            deadline: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(1),
            tls,
            ..ClientOptions::default()
        },
    ) else {
        return;
    };
    let mut current = Segment {
        node,
        ..Segment::default()
    };
    // The first revision not received yet; 0 (live) until something is.
    let mut next = 0i64;
    loop {
        if *stop.borrow() {
            break;
        }
        let stream = tokio::select! {
            s = client.watch(prefix.clone(), true, next) => s,
            _ = stop.changed() => break,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(ClientError::Status(s)) if s.code() == tonic::Code::OutOfRange => {
                current.ended = format!("node cannot resume at {next}: {}", s.message());
                finish(&out, &mut current, node);
                next = 0;
                continue;
            }
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => break,
            };
            match msg {
                Ok(Some(resp)) => {
                    for e in resp.events {
                        next = e.revision + 1;
                        progress.fetch_max(e.revision, Ordering::Relaxed);
                        current.events.push(Seen {
                            revision: e.revision,
                            key: String::from_utf8_lossy(&e.key).into_owned(),
                            value: (e.kind() == Kind::Put)
                                .then(|| String::from_utf8_lossy(&e.value).into_owned()),
                        });
                    }
                }
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    current.ended = format!("stream ended: {}", s.message());
                    finish(&out, &mut current, node);
                    next = 0;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    current.ended = "end of run".into();
    finish(&out, &mut current, node);
}

fn finish(out: &Segments, current: &mut Segment, node: u64) {
    let done = std::mem::replace(
        current,
        Segment {
            node,
            ..Segment::default()
        },
    );
    if let Ok(mut o) = out.lock() {
        o.push(done);
    }
}

/// The watch check's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchReport {
    /// Segments recorded (one per watcher plus one per break).
    pub segments: usize,
    /// Events received, all watchers together.
    pub events: usize,
    /// Distinct events (the common sequence).
    pub distinct: usize,
    /// Every problem found; empty means the check passed.
    pub anomalies: Vec<String>,
}

/// Events of one revision, in order (several when one request changed several keys).
type Run = Vec<(String, Option<String>)>;

/// A segment's events split into runs of one revision each, in arrival order.
fn runs(seg: &Segment) -> Vec<(i64, Run)> {
    let mut out: Vec<(i64, Run)> = Vec::new();
    for e in &seg.events {
        let event = (e.key.clone(), e.value.clone());
        match out.last_mut() {
            Some((revision, run)) if *revision == e.revision => run.push(event),
            _ => out.push((e.revision, vec![event])),
        }
    }
    out
}

fn describe(run: &Run) -> String {
    let items: Vec<String> = run.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    items.join(", ")
}

/// Checks the segments against each other and against the acknowledged writes of `history`.
///
/// The common sequence is, per revision, the events of that revision in order. The server sends
/// whole revisions only, but a segment's first and last revision are still allowed to be cut (a
/// suffix or a prefix of the common events there), so the check does not depend on it; every
/// revision in between must match exactly, and every revision of the common sequence between a
/// segment's first and last must be in it.
pub fn check(segments: &[Segment], history: &[Op]) -> WatchReport {
    let mut report = WatchReport {
        segments: segments.len(),
        ..WatchReport::default()
    };
    let split: Vec<Vec<(i64, Run)>> = segments.iter().map(runs).collect();
    // The longest run seen for each revision stands for it; the others are checked against it.
    let mut common: BTreeMap<i64, Run> = BTreeMap::new();
    for (seg, seg_runs) in segments.iter().zip(&split) {
        report.events += seg.events.len();
        for (revision, run) in seg_runs {
            let entry = common.entry(*revision).or_default();
            if run.len() > entry.len() {
                *entry = run.clone();
            }
        }
    }
    report.distinct = common.values().map(Vec::len).sum();
    for (seg, seg_runs) in segments.iter().zip(&split) {
        let last = seg_runs.len().saturating_sub(1);
        for (pos, (revision, run)) in seg_runs.iter().enumerate() {
            if pos > 0 && *revision <= seg_runs[pos - 1].0 {
                report.anomalies.push(format!(
                    "node {}: events at revision {revision} after revision {} (reordered or \
                     duplicated)",
                    seg.node,
                    seg_runs[pos - 1].0
                ));
            }
            let Some(full) = common.get(revision) else {
                continue;
            };
            let fits = run == full
                || (pos == 0 && full.ends_with(run))
                || (pos == last && full.starts_with(run));
            if !fits {
                report.anomalies.push(format!(
                    "node {} saw [{}] at revision {revision}, another watcher saw [{}]",
                    seg.node,
                    describe(run),
                    describe(full)
                ));
            }
        }
        // No gaps: every revision of the common sequence between its first and last.
        // (Bounds by value: a reordered segment, reported above, may end below its start.)
        let (Some(first), Some(end)) = (
            seg_runs.iter().map(|(i, _)| *i).min(),
            seg_runs.iter().map(|(i, _)| *i).max(),
        ) else {
            continue;
        };
        let have: std::collections::HashSet<i64> = seg_runs.iter().map(|(i, _)| *i).collect();
        let missing: Vec<i64> = common
            .range(first..=end)
            .map(|(i, _)| *i)
            .filter(|i| !have.contains(i))
            .collect();
        if let Some(m) = missing.first() {
            report.anomalies.push(format!(
                "node {}: gap of {} revisions inside one segment, first {}",
                seg.node,
                missing.len(),
                m
            ));
        }
    }
    // Every acknowledged write (and successful CAS) was delivered to some watcher.
    let delivered: std::collections::HashSet<(&str, &str)> = common
        .values()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?)))
        .collect();
    for op in history.iter().filter(|o| o.outcome == Outcome::Ok) {
        let value = match &op.kind {
            OpKind::Write { value } => value,
            OpKind::Cas {
                to, success: true, ..
            } => to,
            _ => continue,
        };
        if !delivered.contains(&(op.key.as_str(), value.as_str())) {
            report.anomalies.push(format!(
                "acknowledged write {}={} was never delivered to any watcher",
                op.key, value
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_one_revision_should_be_checked_as_an_ordered_run() {
        // Revision 3 carries three changes (one request), two of them to the same key.
        let all = [
            (2, "a", "1"),
            (3, "b", "2"),
            (3, "a", "3"),
            (3, "b", "4"),
            (5, "a", "5"),
        ];
        let cut_start = seg(2, &all[2..]);
        let cut_end = seg(3, &all[..3]);
        let history = vec![ok_write("b", "4"), ok_write("a", "3")];
        let r = check(&[seg(1, &all), cut_start, cut_end], &history);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.distinct, 5);

        // Inside a segment, a run must be whole and in the same order.
        let swapped = seg(
            4,
            &[
                (2, "a", "1"),
                (3, "a", "3"),
                (3, "b", "2"),
                (3, "b", "4"),
                (5, "a", "5"),
            ],
        );
        let cut_inside = seg(5, &[(2, "a", "1"), (3, "b", "2"), (5, "a", "5")]);
        let r = check(&[seg(1, &all), swapped, cut_inside], &history);
        let text = r.anomalies.join("\n");
        assert!(
            text.contains("node 4 saw [a=Some(\"3\"), b=Some(\"2\")"),
            "{text}"
        );
        assert!(
            text.contains("node 5 saw [b=Some(\"2\")] at revision 3"),
            "{text}"
        );
    }

    fn seg(node: u64, events: &[(i64, &str, &str)]) -> Segment {
        Segment {
            node,
            events: events
                .iter()
                .map(|(i, k, v)| Seen {
                    revision: *i,
                    key: k.to_string(),
                    value: Some(v.to_string()),
                })
                .collect(),
            ended: String::new(),
        }
    }

    fn ok_write(key: &str, value: &str) -> Op {
        crate::checker::build::op_on(key, 0, crate::checker::build::w(value), Outcome::Ok, 0, 1)
    }

    #[test]
    fn consistent_segments_should_pass() {
        let all = [(2, "a", "1"), (3, "b", "2"), (5, "a", "3")];
        let segments = vec![seg(1, &all), seg(2, &all[1..]), seg(3, &all[..1])];
        let history = vec![ok_write("a", "1"), ok_write("a", "3")];
        let r = check(&segments, &history);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.distinct, 3);
    }

    #[test]
    fn gap_reorder_conflict_and_missing_write_should_be_reported() {
        let all = [(2, "a", "1"), (3, "b", "2"), (5, "a", "3")];
        let gap = seg(2, &[(2, "a", "1"), (5, "a", "3")]);
        let reordered = seg(3, &[(3, "b", "2"), (2, "a", "1")]);
        let conflict = seg(4, &[(3, "b", "9")]);
        let history = vec![ok_write("c", "never-delivered")];
        let r = check(&[seg(1, &all), gap, reordered, conflict], &history);
        let text = r.anomalies.join("\n");
        assert!(text.contains("node 2: gap of 1 revisions"), "{text}");
        assert!(
            text.contains("node 3: events at revision 2 after revision 3"),
            "{text}"
        );
        assert!(text.contains("node 4 saw [b=Some(\"9\")]"), "{text}");
        assert!(
            text.contains("c=never-delivered was never delivered"),
            "{text}"
        );
    }
}
