//! Warnings that can repeat once per event — a refused connection (a client's reconnect attempts
//! included), an unreachable peer, a lagging hook — are logged at most once per interval per key,
//! each line carrying `suppressed`: how many identical warnings were left out since the last one.
//! A flood then costs one line per interval and still shows its rate, instead of burying every
//! other line of the log.
//!
//! Use a `static` [`LogThrottle`] per call site and [`warn_throttled!`](crate::warn_throttled):
//!
//! ```
//! use rskv_storage::log_throttle::LogThrottle;
//! static REFUSED: LogThrottle = LogThrottle::every_interval();
//! # let peer = "127.0.0.1:1";
//! rskv_storage::warn_throttled!(REFUSED, 0, %peer, "connection refused");
//! ```
//!
//! Libraries' warnings cannot be throttled where they are raised: [`RepeatedWarnings`] wraps the
//! log format of the binaries and writes identical warnings from the targets it is given (openraft,
//! whose heartbeat to an unreachable peer warns about ten times a second) the same way.
//!
//! Suppressed warnings are counted, not stored: the count is reported with the next warning logged
//! for that key, so the tail of a flood that stops within an interval is never reported.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::hash::Hasher;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tracing::field::Field;
use tracing::field::Visit;
use tracing::Event;
use tracing::Level;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::FormatEvent;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::registry::LookupSpan;

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
    /// Per key: peers and call sites, or hashes of distinct warnings ([`RepeatedWarnings`]),
    /// pruned of keys quiet for an interval once there are [`MAX_KEYS`].
    slots: Mutex<BTreeMap<u64, Slot>>,
}

/// Keys a throttle tracks before it forgets the quiet ones (warnings whose text varies every time
/// would otherwise grow it without bound).
const MAX_KEYS: usize = 4096;

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
                if slots.len() >= MAX_KEYS {
                    let interval = self.interval;
                    slots
                        .retain(|_, slot| now.saturating_duration_since(slot.logged_at) < interval);
                }
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

/// A log format writing each distinct warning from the given targets at most once per interval,
/// with `suppressed=N` (identical ones left out since) appended; everything else is written by the
/// wrapped format unchanged. Two warnings are identical when they come from the same call site
/// with the same field values (message included), so each unreachable peer has its own line.
/// Those lines lose ANSI colours: the wrapped format writes them into a plain buffer first.
pub struct RepeatedWarnings<F> {
    inner: F,
    /// Target prefixes whose warnings are throttled (e.g. `openraft`).
    targets: &'static [&'static str],
    throttle: Arc<LogThrottle>,
}

impl<F> RepeatedWarnings<F> {
    /// Wraps `inner`, throttling warnings whose target starts with one of `targets` to one per
    /// [`WARN_INTERVAL`].
    pub fn new(inner: F, targets: &'static [&'static str]) -> RepeatedWarnings<F> {
        RepeatedWarnings {
            inner,
            targets,
            throttle: Arc::new(LogThrottle::every_interval()),
        }
    }

    fn throttled(&self, event: &Event<'_>) -> bool {
        let meta = event.metadata();
        *meta.level() == Level::WARN && self.targets.iter().any(|t| meta.target().starts_with(t))
    }
}

/// Collects an event's field values, to tell identical warnings apart from different ones.
struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?};", field.name(), value);
    }
}

/// Which warning `event` is: its call site and field values, hashed.
fn identity(event: &Event<'_>) -> u64 {
    let mut text = FieldText(String::new());
    event.record(&mut text);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.metadata().callsite().hash(&mut hasher);
    text.0.hash(&mut hasher);
    hasher.finish()
}

impl<S, N, F> FormatEvent<S, N> for RepeatedWarnings<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if !self.throttled(event) {
            return self.inner.format_event(ctx, writer, event);
        }
        // Writing nothing leaves the line out.
        let Some(suppressed) = self.throttle.check(identity(event)) else {
            return Ok(());
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writeln!(
            writer,
            "{} suppressed={suppressed}",
            line.trim_end_matches('\n')
        )
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
    fn repeated_library_warnings_should_be_written_once_per_interval_with_the_count() {
        let captured = Captured::default();
        let writer = captured.clone();
        let format =
            RepeatedWarnings::new(tracing_subscriber::fmt::format().without_time(), &["noisy"]);
        let throttle = format.throttle.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(format)
            .finish();
        // One call site, as a library's warning is.
        let heartbeat_failed =
            |peer: u64| tracing::warn!(target: "noisy::heartbeat", "target={peer} failed: refused");
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                heartbeat_failed(1);
                heartbeat_failed(2);
                tracing::warn!(target: "ours", "not throttled here");
                tracing::info!(target: "noisy::heartbeat", "infos pass");
            }
            throttle.age(WARN_INTERVAL);
            heartbeat_failed(1);
        });
        let text =
            String::from_utf8(captured.0.lock().expect("capture lock").clone()).expect("utf-8 log");
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count("target=1 failed: refused suppressed=0"), 1, "{text}");
        assert_eq!(count("target=2 failed: refused suppressed=0"), 1, "{text}");
        assert_eq!(count("target=1 failed: refused suppressed=49"), 1, "{text}");
        assert_eq!(count("not throttled here"), 50, "{text}");
        assert_eq!(count("infos pass"), 50, "{text}");
        assert!(
            !text.contains("\n\n"),
            "suppressed lines leave no blank line"
        );
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
