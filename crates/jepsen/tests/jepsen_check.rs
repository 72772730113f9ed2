//! `kv_jepsen check` on saved histories: the verdict, the exit status, and the anomaly file.

use rskv_testkit as common;

use std::process::Command;

use common::expect_failure;

use rskv_jepsen::checker::Op;
use rskv_jepsen::checker::OpKind;
use rskv_jepsen::checker::Outcome;

fn op(process: u64, kind: OpKind, invoke: u64, complete: u64) -> Op {
    Op {
        process,
        key: "k/1".into(),
        kind,
        outcome: Outcome::Ok,
        invoke,
        complete,
    }
}

fn check(history: &[Op]) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, rskv_jepsen::checker::to_jsonl(history)).expect("write history");
    let out = Command::new(env!("CARGO_BIN_EXE_kv_jepsen"))
        .arg("check")
        .arg(&file)
        .output()
        .expect("run kv_jepsen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), text, dir)
}

#[test]
fn check_should_pass_a_linearizable_history_and_save_a_failing_keys_ops() {
    let write = |v: &str| OpKind::Write { value: v.into() };
    let read = |v: &str| OpKind::Read {
        value: Some(v.into()),
    };
    let good = [op(1, write("a"), 0, 10), op(2, read("a"), 20, 30)];
    let (code, text, _dir) = check(&good);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("2 ops: linearizable"), "{text}");

    // A read of the older value after a newer write completed.
    let stale = [
        op(1, write("a"), 0, 10),
        op(1, write("b"), 20, 30),
        op(2, read("a"), 40, 50),
    ];
    let (code, text, dir) = check(&stale);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("NOT linearizable"), "{text}");
    let saved = dir.path().join("anomaly-k_1.jsonl");
    assert!(text.contains(&saved.display().to_string()), "{text}");
    let ops =
        rskv_jepsen::checker::parse_jsonl(&std::fs::read_to_string(&saved).expect("anomaly file"))
            .expect("parse anomaly");
    assert_eq!(ops.len(), 3);
}

#[test]
fn check_of_a_missing_file_should_exit_2_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_kv_jepsen"))
        .args(["check", "/nonexistent/history.jsonl"])
        .output()
        .expect("run kv_jepsen");
    expect_failure(&out, 2, "reading /nonexistent/history.jsonl");
}
