//! Building etcd requests in tests: what a transaction's parts take to write out by hand.

use bytes::Bytes;
use rskv_proto::etcd::etcdserverpb::compare::CompareResult;
use rskv_proto::etcd::etcdserverpb::compare::CompareTarget;
use rskv_proto::etcd::etcdserverpb::compare::TargetUnion;
use rskv_proto::etcd::etcdserverpb::Compare;

/// etcd's comparison of one key's `target` with `value` (set `range_end` on the result to
/// compare a range).
pub fn compare(
    key: &str,
    target: CompareTarget,
    result: CompareResult,
    value: TargetUnion,
) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        target_union: Some(value),
        range_end: Bytes::new(),
    }
}
