//! The watch workload: one watcher per node records the apply events it is sent; afterwards every
//! watcher's stream must be a gap-free, duplicate-free, in-order slice of one common sequence, and
//! every acknowledged write must be in it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;
use crate::client::ClientError;
use crate::client::ClientOptions;
use crate::pb::kv::watch_event::Kind;
use crate::Client;

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Log index of the write.
    pub index: u64,
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
    /// Why it ended (the node could not resume from the next index, or the run ended).
    pub ended: String,
}

/// What one watcher recorded.
pub type Segments = Arc<Mutex<Vec<Segment>>>;

/// Watches `prefix` on node `node` (only that node) until `stop`, keeping the newest index
/// received in `progress`, resuming after each
/// interruption from the index after the last event; a node that can no longer serve that index
/// (restarted, wiped, installed a snapshot) starts a new segment from live events.
pub async fn run_watcher(
    node: u64,
    addr: String,
    prefix: String,
    out: Segments,
    progress: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(client) = Client::with_options(
        vec![addr],
        ClientOptions {
            deadline: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        },
    ) else {
        return;
    };
    let mut current = Segment {
        node,
        ..Segment::default()
    };
    let mut next = 0u64;
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
                        next = e.index + 1;
                        progress.fetch_max(e.index, Ordering::Relaxed);
                        current.events.push(Seen {
                            index: e.index,
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

/// Checks the segments against each other and against the acknowledged writes of `history`.
pub fn check(segments: &[Segment], history: &[Op]) -> WatchReport {
    let mut report = WatchReport {
        segments: segments.len(),
        ..WatchReport::default()
    };
    // The common sequence: (index, key) -> value; one write per index in this workload.
    let mut common: BTreeMap<(u64, String), Option<String>> = BTreeMap::new();
    for seg in segments {
        report.events += seg.events.len();
        for e in &seg.events {
            let k = (e.index, e.key.clone());
            match common.get(&k) {
                Some(v) if *v != e.value => report.anomalies.push(format!(
                    "node {} saw {}={:?} at index {}, another watcher saw {:?}",
                    seg.node, e.key, e.value, e.index, v
                )),
                Some(_) => {}
                None => {
                    common.insert(k, e.value.clone());
                }
            }
        }
    }
    report.distinct = common.len();
    let order: Vec<&(u64, String)> = common.keys().collect();
    for seg in segments {
        // In order, no duplicates.
        for pair in seg.events.windows(2) {
            if (pair[1].index, &pair[1].key) <= (pair[0].index, &pair[0].key) {
                report.anomalies.push(format!(
                    "node {}: event {}@{} after {}@{} (reordered or duplicated)",
                    seg.node, pair[1].key, pair[1].index, pair[0].key, pair[0].index
                ));
            }
        }
        // No gaps: everything in the common sequence between its first and last event.
        let (Some(first), Some(last)) = (seg.events.first(), seg.events.last()) else {
            continue;
        };
        let lo = order.partition_point(|k| (k.0, k.1.as_str()) < (first.index, first.key.as_str()));
        let hi = order.partition_point(|k| (k.0, k.1.as_str()) <= (last.index, last.key.as_str()));
        let have: std::collections::HashSet<(u64, &str)> = seg
            .events
            .iter()
            .map(|e| (e.index, e.key.as_str()))
            .collect();
        let missing: Vec<String> = order[lo..hi]
            .iter()
            .filter(|k| !have.contains(&(k.0, k.1.as_str())))
            .map(|k| format!("{}@{}", k.1, k.0))
            .collect();
        if !missing.is_empty() {
            report.anomalies.push(format!(
                "node {}: gap of {} events inside one segment, first {}",
                seg.node,
                missing.len(),
                missing[0]
            ));
        }
    }
    // Every acknowledged write (and successful CAS) was delivered to some watcher.
    let delivered: std::collections::HashSet<(&str, &str)> = common
        .iter()
        .filter_map(|((_, k), v)| Some((k.as_str(), v.as_deref()?)))
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

    fn seg(node: u64, events: &[(u64, &str, &str)]) -> Segment {
        Segment {
            node,
            events: events
                .iter()
                .map(|(i, k, v)| Seen {
                    index: *i,
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
        assert!(text.contains("node 2: gap of 1 events"), "{text}");
        assert!(text.contains("node 3: event a@2 after b@3"), "{text}");
        assert!(text.contains("node 4 saw b=Some(\"9\")"), "{text}");
        assert!(
            text.contains("c=never-delivered was never delivered"),
            "{text}"
        );
    }
}
