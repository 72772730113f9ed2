//! Warnings that can repeat once per event — a refused connection (a client's reconnect attempts
//! included), an unreachable peer, a lagging hook — are logged at most once per interval per key,
//! each line carrying `suppressed`: how many identical warnings were left out since the last one.
//! A flood then costs one line per interval and still shows its rate, instead of burying every
//! other line of the log.
//!
//! Use a `static` [`LogThrottle`] per call site and [`warn_throttled!`](crate::warn_throttled):
//!
//! ```
//! use rskv::log_throttle::LogThrottle;
//! static REFUSED: LogThrottle = LogThrottle::every_interval();
//! # let peer = "127.0.0.1:1";
//! rskv::warn_throttled!(REFUSED, 0, %peer, "connection refused");
//! ```
//!
//! Suppressed warnings are counted, not stored: the count is reported with the next warning logged
//! for that key, so the tail of a flood that stops within an interval is never reported.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// How often one throttled warning is logged at most: short enough that an operator watching the
/// log sees a persisting problem within seconds, long enough that a flood is a handful of lines.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Where one key's warnings stand.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the last warning for this key was logged.
    logged_at: Instant,
    /// Warnings left out since then.
    suppressed: u64,
}

/// Decides which of a repeating warning's occurrences are logged: the first of each interval,
/// per key (e.g. a peer's node id; one key for a call site whose occurrences are all alike).
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    /// Per key; keys are few (peers, call sites), so the map never needs pruning.
    slots: Mutex<BTreeMap<u64, Slot>>,
}

impl LogThrottle {
    /// A throttle logging each key at most once per `interval`; `const`, so it can be a `static`
    /// beside the warning it throttles.
    pub const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    /// A throttle with the crate's [`WARN_INTERVAL`].
    pub const fn every_interval() -> LogThrottle {
        LogThrottle::new(WARN_INTERVAL)
    }

    /// Whether an occurrence for `key` is to be logged now: `Some(suppressed)`, the number left
    /// out since the last one logged, or `None` to leave this one out (and count it).
    pub fn check(&self, key: u64) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: u64, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-update of two integers: log.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(&key) {
            Some(slot) if now.saturating_duration_since(slot.logged_at) < self.interval => {
                slot.suppressed += 1;
                None
            }
            Some(slot) => {
                let suppressed = slot.suppressed;
                *slot = Slot {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                slots.insert(
                    key,
                    Slot {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Moves every key's last log time `by` into the past, as if that much time had passed.
    #[cfg(test)]
    fn age(&self, by: Duration) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.values_mut() {
            slot.logged_at = slot.logged_at.checked_sub(by).unwrap_or(slot.logged_at);
        }
    }
}

/// `tracing::warn!` through a [`LogThrottle`](crate::log_throttle::LogThrottle): logs when the
/// throttle lets `key`'s occurrence through, adding the field `suppressed`.
///
/// `warn_throttled!(THROTTLE, key, fields..., "message")`, fields as in `tracing::warn!`.
#[macro_export]
macro_rules! warn_throttled {
    ($throttle:expr, $key:expr, $($rest:tt)+) => {
        if let Some(suppressed) = $throttle.check($key) {
            ::tracing::warn!(suppressed, $($rest)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn throttle_should_let_one_through_per_interval_per_key_with_the_count() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.check_at(1, t0), Some(0), "the first is logged");
        for ms in [1, 500, 9_999] {
            assert_eq!(throttle.check_at(1, t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.check_at(2, t0), Some(0), "keys are independent");
        assert_eq!(
            throttle.check_at(1, t0 + Duration::from_secs(10)),
            Some(3),
            "the next interval's first carries the count"
        );
        assert_eq!(throttle.check_at(1, t0 + Duration::from_secs(11)), None);
        assert_eq!(
            throttle.check_at(1, t0 + Duration::from_secs(25)),
            Some(1),
            "the count restarts after each logged line"
        );
    }

    /// A `MakeWriter` collecting everything logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn warn_throttled_should_log_once_per_interval_with_the_count() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        tracing::subscriber::with_default(subscriber, || {
            for attempt in 0..100 {
                crate::warn_throttled!(throttle, 7, attempt, "connection refused");
            }
            throttle.age(Duration::from_secs(3600));
            crate::warn_throttled!(throttle, 7, attempt = 100, "connection refused");
        });
        let text =
            String::from_utf8(captured.0.lock().expect("capture lock").clone()).expect("utf-8 log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("WARN"), "{text}");
        assert!(
            lines[0].contains("suppressed=0") && lines[0].contains("attempt=0"),
            "{text}"
        );
        assert!(
            lines[1].contains("suppressed=99") && lines[1].contains("attempt=100"),
            "{text}"
        );
        assert!(lines[1].contains("connection refused"), "{text}");
    }
}
