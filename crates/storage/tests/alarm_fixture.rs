//! The alarms' encodings, pinned: the replicated change (`Command::Alarm`, in the Raft log and on
//! the wire between nodes) and the system-keyspace record an active alarm leaves (in the state
//! machine and in snapshots). Written by the version that introduced them; never change a
//! constant to make this pass.

use bytes::Bytes;
use prost::Message;
use rskv_storage::format::Wire;
use rskv_storage::state_machine::alarms::AlarmSet;
use rskv_storage::state_machine::alarms::NOSPACE;
use rskv_storage::types::Command;

/// NOSPACE raised for member 0x2a.
const RAISE: &str = "7206082a10011801";
/// Its record key (the value is empty).
const RECORD: &str = "alarm/000000000000002a/1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn alarm_changes_and_records_should_encode_as_they_did() {
    let raise = Command::Alarm {
        member: 0x2a,
        alarm: NOSPACE,
        activate: true,
    };
    let bytes = raise.to_message().encode_to_vec();
    assert_eq!(hex(&bytes), RAISE);
    let back = Command::from_message(
        rskv_proto::storage::Command::decode(bytes.as_slice()).expect("decode"),
    )
    .expect("known command");
    assert_eq!(back, raise);

    let alarms = AlarmSet::default();
    alarms.apply(0x2a, NOSPACE, true);
    let records = alarms.take_changes();
    assert_eq!(
        records,
        vec![(Bytes::from_static(RECORD.as_bytes()), Some(Bytes::new()))]
    );
    let loaded = AlarmSet::default();
    loaded
        .load(&[(Bytes::from_static(RECORD.as_bytes()), Bytes::new())])
        .expect("load");
    assert_eq!(loaded.list(), vec![(0x2a, NOSPACE)]);
    assert!(loaded.no_space());
}
