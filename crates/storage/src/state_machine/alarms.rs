//! etcd's alarms (`NOSPACE`, `CORRUPT`), replicated through the log
//! ([`Command::Alarm`](crate::types::Command::Alarm)) and kept in the system keyspace
//! (`alarm/<member id, 16 hex digits>/<alarm type>`), so every member lists the same alarms,
//! they survive restarts and travel in snapshots. While a `NOSPACE` alarm is active, apply
//! refuses what would grow the store (puts, transactions with a put, lease grants) and lets
//! deletes and reads through, as etcd's capped applier does: the cluster answers what it can and
//! can be cleaned up, then disarmed.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::sync::RwLock;

use bytes::Bytes;

use crate::error::io_err;

/// etcd's `AlarmType.NOSPACE`.
pub const NOSPACE: i32 = 1;
/// etcd's `AlarmType.CORRUPT`.
pub const CORRUPT: i32 = 2;

const PREFIX: &[u8] = b"alarm/";

/// The active alarms of the cluster, as of the last applied entry.
#[derive(Debug, Default)]
pub struct AlarmSet {
    /// (member id, etcd `AlarmType` value).
    active: RwLock<BTreeSet<(u64, i32)>>,
    /// Any `NOSPACE` among them: read by every write at apply.
    no_space: AtomicBool,
    /// Record keys changed since the last [`AlarmSet::take_changes`].
    dirty: Mutex<Vec<(u64, i32)>>,
}

/// The record key of `alarm` raised for `member`.
pub fn record_key(member: u64, alarm: i32) -> Vec<u8> {
    [PREFIX, format!("{member:016x}/{alarm}").as_bytes()].concat()
}

fn parse_key(key: &[u8]) -> Option<(u64, i32)> {
    let rest = std::str::from_utf8(key.strip_prefix(PREFIX)?).ok()?;
    let (member, alarm) = rest.split_once('/')?;
    Some((u64::from_str_radix(member, 16).ok()?, alarm.parse().ok()?))
}

impl AlarmSet {
    fn set(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<(u64, i32)>> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the set with what the system keyspace `records` hold (at start, after a
    /// snapshot install, after a failed commit).
    ///
    /// # Errors
    /// When an alarm record's key cannot be read.
    pub fn load(&self, records: &[(Bytes, Bytes)]) -> io::Result<()> {
        let mut loaded = BTreeSet::new();
        for (key, _) in records.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
            let alarm =
                parse_key(key).ok_or_else(|| io_err(format!("unreadable alarm record {key:?}")))?;
            loaded.insert(alarm);
        }
        let mut set = self.set();
        self.no_space
            .store(loaded.iter().any(|(_, a)| *a == NOSPACE), Ordering::Release);
        *set = loaded;
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Raises (`activate`) or clears `alarm` for `member` (apply thread only); whether the set
    /// changed.
    pub fn apply(&self, member: u64, alarm: i32, activate: bool) -> bool {
        let mut set = self.set();
        let changed = if activate {
            set.insert((member, alarm))
        } else {
            set.remove(&(member, alarm))
        };
        if changed {
            self.no_space
                .store(set.iter().any(|(_, a)| *a == NOSPACE), Ordering::Release);
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((member, alarm));
        }
        changed
    }

    /// The system-keyspace writes (`None` deletes) since the last call.
    pub fn take_changes(&self) -> Vec<(Bytes, Option<Bytes>)> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        let set = self.active.read().unwrap_or_else(|p| p.into_inner());
        dirty
            .into_iter()
            .map(|alarm| {
                let value = set.contains(&alarm).then(Bytes::new);
                (Bytes::from(record_key(alarm.0, alarm.1)), value)
            })
            .collect()
    }

    /// The active alarms, (member id, alarm type), sorted.
    pub fn list(&self) -> Vec<(u64, i32)> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Whether a `NOSPACE` alarm is active: writes that would grow the store are refused.
    pub fn no_space(&self) -> bool {
        self.no_space.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_should_come_back_from_their_records() {
        let alarms = AlarmSet::default();
        assert!(alarms.apply(3, NOSPACE, true));
        assert!(!alarms.apply(3, NOSPACE, true), "raised once");
        assert!(alarms.apply(1, CORRUPT, true));
        assert!(alarms.no_space());
        let records: Vec<(Bytes, Bytes)> = alarms
            .take_changes()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let again = AlarmSet::default();
        again.load(&records).expect("load");
        assert_eq!(again.list(), vec![(1, CORRUPT), (3, NOSPACE)]);
        assert!(again.no_space());
        assert!(alarms.apply(3, NOSPACE, false));
        assert!(!alarms.no_space());
        assert_eq!(
            alarms.take_changes(),
            vec![(Bytes::from(record_key(3, NOSPACE)), None)],
            "a cleared alarm deletes its record"
        );
        assert_eq!(parse_key(b"alarm/zz/1"), None);
    }
}
