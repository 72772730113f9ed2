//! Reads of the multi-version store with etcd's meanings: a range at any revision not compacted
//! (with limit, sort, revision filters, keys- and count-only), the changes since a revision (for
//! watches), and transaction comparisons. They run over a [`Source`]: the engine for the
//! services, or a batch's pending writes for the ranges and comparisons inside a transaction.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io;

use bytes::Bytes;
use rskv_proto::etcd::etcdserverpb::compare::CompareResult;
use rskv_proto::etcd::etcdserverpb::compare::CompareTarget;
use rskv_proto::etcd::etcdserverpb::compare::TargetUnion;
use rskv_proto::etcd::etcdserverpb::range_request::SortOrder;
use rskv_proto::etcd::etcdserverpb::range_request::SortTarget;
use rskv_proto::etcd::etcdserverpb::Compare;
use rskv_proto::etcd::etcdserverpb::RangeRequest;
use rskv_proto::etcd::etcdserverpb::RangeResponse;
use rskv_proto::etcd::etcdserverpb::ResponseHeader;
use rskv_proto::etcd::mvccpb;

use super::prev_of;
use super::to_etcd;
use super::version_of;
use super::KeyVersion;
use super::Rev;
use super::Source;
use crate::types::MvccError;

/// Changes read per step while undoing history for a read at an older revision.
const HISTORY_STEP: usize = 4096;

/// etcd's key range: `range_end` empty is the single key (`None`); `"\0"` is every key from the
/// start on (`Some(None)`); anything else is the exclusive end (`Some(Some(end))`).
pub fn key_range(range_end: &[u8]) -> Option<Option<Bytes>> {
    match range_end {
        [] => None,
        [0] => Some(None),
        end => Some(Some(Bytes::copy_from_slice(end))),
    }
}

/// Whether `key` is in etcd's range `[start, range_end)` (see [`key_range`]).
pub fn in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

/// Checks that `revision` can be read: not compacted, not in the future. 0 or less is the
/// current revision. Returns the revision to read at.
///
/// # Errors
/// [`MvccError::Compacted`] or [`MvccError::FutureRevision`].
pub fn readable(revision: i64, current: i64, compacted: i64) -> Result<i64, MvccError> {
    if revision <= 0 {
        return Ok(current);
    }
    if revision > current {
        return Err(MvccError::FutureRevision {
            requested: revision,
            current,
        });
    }
    if revision < compacted {
        return Err(MvccError::Compacted {
            requested: revision,
            compacted,
        });
    }
    Ok(revision)
}

/// Every version in etcd's range `key`..`range_end` as of revision `at` (the current revision or
/// an older one not compacted), in key order, at most `limit` of them (0: all) when `at` is
/// current.
///
/// The engine's keyspaces are read one after another, not from one snapshot, while apply goes
/// on: a read at the current revision checks the revision did not move while it read (else it
/// would return versions newer than the revision it answers for) and, if it did, reads as of
/// that revision through history instead, which is exact whatever commits land meanwhile (a
/// key's first change after `at` names its version at `at`).
///
/// # Errors
/// On a storage failure.
pub fn versions_at(
    source: &dyn Source,
    key: &[u8],
    range_end: &[u8],
    at: i64,
    limit: usize,
) -> io::Result<Vec<(Bytes, KeyVersion)>> {
    let limit = if limit == 0 { usize::MAX } else { limit };
    let current = source.meta().revision;
    let latest_in = |limit: usize| -> io::Result<Vec<(Bytes, KeyVersion)>> {
        Ok(match key_range(range_end) {
            None => source
                .latest(key)?
                .map(|kv| vec![(Bytes::copy_from_slice(key), kv)])
                .unwrap_or_default(),
            Some(end) => source.latest_range(key, end.as_deref(), limit)?,
        })
    };
    if at >= current {
        let latest = latest_in(limit)?;
        if source.revision_now()? == current {
            return Ok(latest);
        }
    }
    let at = at.min(current);
    let latest = latest_in(usize::MAX)?;
    // Undo the changes made after `at`: a key's first change after it names the version the key
    // had at `at` (or none).
    let mut result: BTreeMap<Bytes, KeyVersion> = latest.into_iter().collect();
    let mut touched: HashSet<Bytes> = HashSet::new();
    let mut from = Rev::new(at + 1);
    loop {
        let step = source.changes(from, HISTORY_STEP)?;
        let Some((last, _)) = step.last() else {
            break;
        };
        from = Rev {
            main: last.main,
            sub: last.sub + 1,
        };
        let full = step.len() == HISTORY_STEP;
        for (_, change) in step {
            if !in_range(&change.key, key, range_end) || !touched.insert(change.key.clone()) {
                continue;
            }
            result.remove(&change.key);
            if let Some(prev) = prev_of(&change) {
                if let Some(version) = source
                    .change(prev)?
                    .and_then(|before| version_of(prev, &before))
                {
                    result.insert(change.key.clone(), version);
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok(result.into_iter().collect())
}

/// etcd's Range: the versions at the requested revision, filtered, sorted and limited as etcd
/// does. The header carries only the revision read at; the rest is the caller's.
///
/// # Errors
/// [`MvccError`] for a compacted or future revision; an `io::Error` inside `Ok(Err)` is not used:
/// storage failures are the outer error.
pub fn range(
    source: &dyn Source,
    request: &RangeRequest,
) -> io::Result<Result<RangeResponse, MvccError>> {
    let meta = source.meta();
    let at = match readable(request.revision, meta.revision, meta.compact_revision) {
        Ok(at) => at,
        Err(e) => return Ok(Err(e)),
    };
    let filtered = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    let sort_order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    // Versions come in ascending key order: sorting is needed for any other order.
    let order = match (sort_target, sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (target, SortOrder::None) if target != SortTarget::Key => SortOrder::Ascend,
        (_, order) => order,
    };
    let page = if at >= meta.revision && !filtered && order == SortOrder::None {
        latest_page(source, request, meta.revision)?
    } else {
        None
    };
    let (mut versions, count) = match page {
        Some(page) => page,
        None => {
            let versions = versions_at(source, &request.key, &request.range_end, at, 0)?;
            let count = versions.len();
            (versions, count)
        }
    };
    if filtered {
        versions.retain(|(_, kv)| {
            (request.min_mod_revision == 0 || kv.mod_revision >= request.min_mod_revision)
                && (request.max_mod_revision == 0 || kv.mod_revision <= request.max_mod_revision)
                && (request.min_create_revision == 0
                    || kv.create_revision >= request.min_create_revision)
                && (request.max_create_revision == 0
                    || kv.create_revision <= request.max_create_revision)
        });
    }
    if order != SortOrder::None {
        versions.sort_by(|(ka, a), (kb, b)| {
            let ord = match sort_target {
                SortTarget::Key => ka.cmp(kb),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                ord.reverse()
            } else {
                ord
            }
        });
    }
    let mut more = false;
    if request.count_only {
        // etcd counts without reading any version, so a count is never "more".
        versions.clear();
    } else if request.limit > 0 && versions.len() as i64 > request.limit {
        versions.truncate(request.limit as usize);
        more = true;
    }
    let kvs = versions
        .into_iter()
        .map(|(key, kv)| {
            let mut kv = to_etcd(key, &kv);
            if request.keys_only {
                kv.value = Bytes::new();
            }
            kv
        })
        .collect();
    Ok(Ok(RangeResponse {
        // The revision it read at; the services fill in the rest.
        header: Some(ResponseHeader {
            revision: at,
            ..ResponseHeader::default()
        }),
        kvs,
        more,
        count: count as i64,
    }))
}

/// Part of a range's versions, and how many the whole range holds.
type Page = (Vec<(Bytes, KeyVersion)>, usize);

/// A range at the current revision in key order that returns only part of what it counts
/// (`limit`, or `count_only`): the first `limit + 1` versions (none for a count) and the count of
/// the whole range, without reading every version in it. `None` when this shortcut does not
/// apply (a single key or no limit) or a commit landed while it read (the caller reads through
/// history instead).
fn latest_page(
    source: &dyn Source,
    request: &RangeRequest,
    current: i64,
) -> io::Result<Option<Page>> {
    let Some(end) = key_range(&request.range_end) else {
        return Ok(None);
    };
    if request.limit <= 0 && !request.count_only {
        return Ok(None);
    }
    let versions = if request.count_only {
        Vec::new()
    } else {
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        source.latest_range(&request.key, end.as_deref(), limit.saturating_add(1))?
    };
    let count = source.latest_count(&request.key, end.as_deref())?;
    Ok((source.revision_now()? == current).then_some((versions, count)))
}

/// Whether every key etcd's comparison names satisfies it (a comparison on a range holds when it
/// holds for every key in the range; an absent key compares as version, create and mod revision
/// 0, lease 0, and fails any value comparison). A range with no key in it compares as one absent
/// key, as etcd's `applyCompare` does, rather than holding for want of a key that fails.
///
/// # Errors
/// On a storage failure.
pub fn compare_holds(source: &dyn Source, compare: &Compare) -> io::Result<bool> {
    if compare.range_end.is_empty() && compare.target != CompareTarget::Value as i32 {
        // One key, on its metadata: no value to read.
        let meta = source.latest_meta(&compare.key)?;
        let kv = meta.map(|m| KeyVersion {
            create_revision: m.create_revision,
            mod_revision: m.modified.main,
            mod_sub: m.modified.sub,
            version: m.version,
            lease: m.lease,
            value: Bytes::new(),
        });
        return Ok(compare_one(compare, kv.as_ref()));
    }
    let current = source.meta().revision;
    let versions = versions_at(source, &compare.key, &compare.range_end, current, 0)?;
    if versions.is_empty() {
        return Ok(compare_one(compare, None));
    }
    Ok(versions
        .iter()
        .all(|(_, kv)| compare_one(compare, Some(kv))))
}

fn compare_one(compare: &Compare, kv: Option<&KeyVersion>) -> bool {
    use std::cmp::Ordering;
    let target = CompareTarget::try_from(compare.target).unwrap_or(CompareTarget::Version);
    let ordering = match (target, &compare.target_union, kv) {
        (CompareTarget::Value, Some(TargetUnion::Value(v)), Some(kv)) => kv.value.cmp(v),
        (CompareTarget::Value, _, _) => return false,
        (CompareTarget::Version, Some(TargetUnion::Version(v)), kv) => {
            kv.map_or(0, |kv| kv.version).cmp(v)
        }
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v)), kv) => {
            kv.map_or(0, |kv| kv.create_revision).cmp(v)
        }
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v)), kv) => {
            kv.map_or(0, |kv| kv.mod_revision).cmp(v)
        }
        (CompareTarget::Lease, Some(TargetUnion::Lease(v)), kv) => {
            kv.map_or(0, |kv| kv.lease).cmp(v)
        }
        // A comparison whose value does not match its target (or has none) compares with 0,
        // as etcd's does.
        (CompareTarget::Version | CompareTarget::Create | CompareTarget::Mod, _, kv) => {
            let field = kv.map_or(0, |kv| match target {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                _ => kv.mod_revision,
            });
            field.cmp(&0)
        }
        (CompareTarget::Lease, _, kv) => kv.map_or(0, |kv| kv.lease).cmp(&0),
    };
    match CompareResult::try_from(compare.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// etcd's watch event of the change at `rev`, with the version it replaced when `prev_kv` is
/// asked for (and still in history).
///
/// # Errors
/// On a storage failure.
pub fn event(
    source: &dyn Source,
    rev: Rev,
    change: &super::Change,
    prev_kv: bool,
) -> io::Result<mvccpb::Event> {
    let kv = match version_of(rev, change) {
        Some(version) => to_etcd(change.key.clone(), &version),
        None => mvccpb::KeyValue {
            key: change.key.clone(),
            mod_revision: rev.main,
            ..Default::default()
        },
    };
    let prev_kv = match (prev_kv, prev_of(change)) {
        (true, Some(prev)) => source
            .change(prev)?
            .and_then(|before| version_of(prev, &before).map(|v| to_etcd(change.key.clone(), &v))),
        _ => None,
    };
    Ok(mvccpb::Event {
        r#type: if change.tombstone {
            mvccpb::event::EventType::Delete as i32
        } else {
            mvccpb::event::EventType::Put as i32
        },
        kv: Some(kv),
        prev_kv,
    })
}
