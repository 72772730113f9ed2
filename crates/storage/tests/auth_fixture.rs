//! The auth store's encodings, pinned: the replicated change (`Command::Auth`, in the Raft log
//! and on the wire between nodes) and the system-keyspace records it leaves (`auth/meta`,
//! `auth/user/<name>`, `auth/role/<name>`, in the state machine and in snapshots). The bytes
//! below were written by the version that introduced them; today's code must decode them to the
//! same values and encode those values to the same bytes. Never change a constant to make this
//! pass: it stands for data already in logs and on disks.

use bytes::Bytes;
use prost::Message;
use rskv_proto::storage as pb;
use rskv_proto::storage::auth_change::Op;
use rskv_storage::format::Wire;
use rskv_storage::state_machine::auth::AuthStore;
use rskv_storage::types::Command;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn change(op: Op, user: &str, role: &str) -> pb::AuthChange {
    let mut c = pb::AuthChange {
        user: user.into(),
        role: role.into(),
        ..Default::default()
    };
    c.set_op(op);
    c
}

/// One change of each kind that carries fields, as the log holds them.
fn changes() -> Vec<(pb::AuthChange, &'static str)> {
    let mut add = change(Op::UserAdd, "alice", "");
    add.password_hash = "$2b$10$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP".into();
    let mut cert_only = change(Op::UserAdd, "svc", "");
    cert_only.no_password = true;
    let mut grant = change(Op::RoleGrantPermission, "", "reader");
    grant.permission = Some(pb::AuthPermission {
        kind: 2,
        key: Bytes::from_static(b"a/"),
        range_end: Bytes::from_static(b"a0"),
    });
    let mut token = change(Op::IssueToken, "alice", "");
    token.token = "tok.123".into();
    vec![
        (change(Op::Enable, "", ""), ENABLE),
        (add, USER_ADD),
        (cert_only, USER_ADD_CERT_ONLY),
        (change(Op::UserGrantRole, "alice", "reader"), GRANT_ROLE),
        (grant, GRANT_PERMISSION),
        (token, ISSUE_TOKEN),
    ]
}

const ENABLE: &str = "62020801";
const USER_ADD: &str = "624608031205616c696365223b243262243130246162636465666768696a6b6c6d6e6f707172737475767778797a303132333435363738394142434445464748494a4b4c4d4e4f50";
const USER_ADD_CERT_ONLY: &str = "6209080312037376632801";
const GRANT_ROLE: &str = "621108061205616c6963651a06726561646572";
const GRANT_PERMISSION: &str = "6216080a1a06726561646572320a08021202612f1a026130";
const ISSUE_TOKEN: &str = "6212080c1205616c6963653a07746f6b2e313233";
const RECORDS: &str = "617574682f6d657461=08011008;617574682f726f6c652f726561646572=0a06726561646572120a08021202612f1a026130;617574682f757365722f616c696365=0a05616c696365123b243262243130246162636465666768696a6b6c6d6e6f707172737475767778797a303132333435363738394142434445464748494a4b4c4d4e4f501a06726561646572;617574682f757365722f726f6f74=0a04726f6f74123b24326224313024726f6f74726f6f74726f6f74726f6f74726f6f74726f6f74726f6f74726f6f74726f6f74726f6f74726f6f74726f6f74726f6f741a04726f6f74;617574682f757365722f737663=0a037376632001;";

#[test]
fn auth_changes_should_encode_as_they_did() {
    for (change, pinned) in changes() {
        let command = Command::Auth(change.clone());
        let bytes = command.to_message().encode_to_vec();
        assert_eq!(hex(&bytes), pinned, "{change:?}");
        let back = Command::from_message(
            rskv_proto::storage::Command::decode(unhex(pinned).as_slice()).expect("decode"),
        )
        .expect("known command");
        assert_eq!(back, command);
    }
}

#[test]
fn auth_records_should_encode_as_they_did() {
    let store = AuthStore::default();
    for (change, _) in changes() {
        store.apply(&change).ok();
    }
    let mut root = change(Op::UserAdd, "root", "");
    root.password_hash = "$2b$10$rootrootrootrootrootrootrootrootrootrootrootrootroot".into();
    for c in [
        change(Op::RoleAdd, "", "reader"),
        root,
        change(Op::UserGrantRole, "root", "root"),
        change(Op::UserGrantRole, "alice", "reader"),
        changes()[4].0.clone(),
        change(Op::Enable, "", ""),
    ] {
        store.apply(&c).expect("apply");
    }
    let records: Vec<(Bytes, Bytes)> = store
        .take_changes()
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let text: String = records
        .iter()
        .map(|(k, v)| format!("{}={};", hex(k), hex(v)))
        .collect();
    assert_eq!(text, RECORDS);
    let pinned: Vec<(Bytes, Bytes)> = RECORDS
        .split(';')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (k, v) = r.split_once('=').expect("k=v");
            (Bytes::from(unhex(k)), Bytes::from(unhex(v)))
        })
        .collect();
    let loaded = AuthStore::default();
    loaded.load(&pinned).expect("load");
    assert!(loaded.enabled());
    assert_eq!(loaded.revision(), store.revision());
    assert_eq!(loaded.user_names(), vec!["alice", "root", "svc"]);
    assert!(loaded.is_root("root"));
    assert_eq!(loaded.role("reader"), store.role("reader"));
    assert_eq!(loaded.user("alice"), store.user("alice"));
}

/// A client's write with who sent it (`Command::Authorized`, in the log since auth checks at
/// apply): alice's put of `a/x` checked at auth revision 7.
const AUTHORIZED_PUT: &str = "6a150a05616c69636510071a0a0a080a03612f78120131";

#[test]
fn authorized_writes_should_encode_as_they_did() {
    let command = Command::Authorized {
        user: "alice".into(),
        revision: 7,
        command: Box::new(Command::Put {
            key: Bytes::from_static(b"a/x"),
            value: Bytes::from_static(b"1"),
            return_prev: false,
            session: None,
        }),
    };
    let bytes = command.to_message().encode_to_vec();
    assert_eq!(hex(&bytes), AUTHORIZED_PUT);
    let back = Command::from_message(
        rskv_proto::storage::Command::decode(unhex(AUTHORIZED_PUT).as_slice()).expect("decode"),
    )
    .expect("known command");
    assert_eq!(back, command);
    // Without the command it wraps, it is refused, not applied as nothing.
    let mut hollow = command.to_message();
    if let Some(rskv_proto::storage::command::Command::Authorized(a)) = hollow.command.as_mut() {
        a.command = None;
    }
    assert!(Command::from_message(hollow).is_err());
}
