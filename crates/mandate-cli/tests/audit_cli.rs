//! `mandate audit` and `mandate audit verify`, run as the real binary
//! against a real `mandate serve`: what reaches the operator's terminal,
//! and what verification says it checked (items 9 and 17 of issue 10).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Serve, agent, stderr, stdout, tempdir};
use mandate_core::audit::is_unsafe_char;
use serde_json::Value;

/// No character a terminal would act on, other than the line breaks between rows.
fn assert_terminal_safe(text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|c| is_unsafe_char(*c) && *c != '\n')
        .collect();
    assert!(bad.is_empty(), "{bad:?} in:\n{text}");
}

#[test]
fn audit_output_never_carries_a_callers_control_characters() {
    let s = Serve::start(&tempdir("ctl"));
    let evil = "grant_type=%1b[2J%1b[31mALLOW%0a42+fake+row%0d%c2%9b0m%e2%80%ae&subject_token=x";
    let r = agent()
        .post(format!("{}/oauth/token", s.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(evil)
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let json = s.cli(&["--json", "audit", "--decision", "deny"]);
    assert!(json.status.success(), "{}", stderr(&json));
    assert_terminal_safe(&stdout(&json));
    let events: Value = serde_json::from_str(&stdout(&json)).unwrap();
    let rows = events.as_array().unwrap().len();
    let reason = events[rows - 1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("`\\x1b[2J\\x1b[31mALLOW\\n42 fake row\\r\\x9b0m\\u{202e}`"),
        "{reason}"
    );
    let table = s.cli(&["audit", "--decision", "deny"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let out = stdout(&table);
    assert_terminal_safe(&out);
    // One header line and one line per event: no cell broke a line.
    assert_eq!(out.lines().count(), 1 + rows, "{out}");
    assert!(out.contains("`\\x1b[2J\\x1b[31mALLOW"), "{out}");
    let verify = s.cli(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert_terminal_safe(&stdout(&verify));
    s.stop();
}

#[test]
fn audit_verify_checks_an_exported_checkpoint_and_names_cut_events() {
    let dir = tempdir("verify");
    let s = Serve::start(&dir);
    let early = std::fs::read_to_string(dir.join("config/audit.checkpoint")).unwrap();
    for t in ["a", "b", "c", "d"] {
        let o = s.cli(&["tenant", "create", t]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let kept = dir.join("kept.checkpoint");
    let o = s.cli(&["audit", "checkpoint", "--out", kept.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["audit", "verify", "--checkpoint", kept.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("audit trail intact: events 1..="), "{out}");
    assert!(
        out.contains("every stored column (seq,prev_hash,hash,body,"),
        "{out}"
    );
    assert!(out.contains("supplied checkpoint: event"), "{out}");
    assert!(out.contains("broker checkpoint: event"), "{out}");
    assert!(
        out.contains("the trail reaches it with the same hash"),
        "{out}"
    );
    let head: u64 = {
        let j = s.cli(&["--json", "audit", "verify"]);
        let v: Value = serde_json::from_str(&stdout(&j)).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        v["head"]["seq"].as_u64().unwrap()
    };
    // A checkpoint signed by someone else is refused, with the reason.
    let other = mandate_core::keys::SigningKey::generate(
        mandate_core::jose::Alg::EdDSA,
        &mut rand_core::OsRng,
    );
    let forged = dir.join("forged.checkpoint");
    std::fs::write(
        &forged,
        mandate_core::audit::Checkpoint::of_head(&s.url, head, &"a".repeat(64), 1)
            .sign(&other)
            .jws,
    )
    .unwrap();
    let o = s.cli(&["audit", "verify", "--checkpoint", forged.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not one of this broker's keys"),
        "{}",
        stderr(&o)
    );
    s.stop();

    // The attacker cuts the last two events and puts back an early checkpoint file.
    let c = rusqlite::Connection::open(dir.join("data/mandate.db")).unwrap();
    c.execute_batch("DROP TRIGGER audit_no_delete").unwrap();
    c.execute("DELETE FROM audit WHERE seq > ?1", [head - 2])
        .unwrap();
    drop(c);
    std::fs::write(dir.join("config/audit.checkpoint"), early).unwrap();
    let s = Serve::start(&dir);
    let o = s.cli(&["audit", "verify", "--checkpoint", kept.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(&format!("audit trail BROKEN at event {}", head - 1)),
        "{out}"
    );
    assert!(
        out.contains(&format!("events {}..={head} are missing", head - 1)),
        "{out}"
    );
    assert!(out.contains("NOT matched"), "{out}");
    assert!(
        stderr(&o).contains("the audit trail does not verify"),
        "{}",
        stderr(&o)
    );
    let o = s.cli(&[
        "--json",
        "audit",
        "verify",
        "--checkpoint",
        kept.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    // `audit verify` is itself audited, so the text run above added an
    // event since: the first bad one is now at most one further on.
    assert_eq!(v["ok"], false, "{v}");
    let first_bad = v["first_bad"]["seq"].as_u64().unwrap_or(0);
    assert!((head - 1..=head).contains(&first_bad), "{v}");
    s.stop();
}

/// `audit verify --checkpoint F --incremental`: only the events after a
/// checkpoint verified before are read; they must follow on from it; the
/// checkpoint must still match; a cut of its event is named.
#[test]
fn audit_verify_incremental_reads_what_came_after_a_kept_checkpoint() {
    let dir = tempdir("verify-inc");
    let s = Serve::start(&dir);
    s.cli(&["tenant", "create", "a"]);
    let kept = dir.join("kept.checkpoint");
    let o = s.cli(&["audit", "checkpoint", "--out", kept.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let at: u64 = {
        let j = s.cli(&["--json", "audit", "verify"]);
        let v: Value = serde_json::from_str(&stdout(&j)).unwrap();
        v["head"]["seq"].as_u64().unwrap()
    };
    for t in ["b", "c", "d"] {
        let o = s.cli(&["tenant", "create", t]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let kept = kept.to_str().unwrap();
    let o = s.cli(&["audit", "verify", "--checkpoint", kept, "--incremental"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!(
            "audit trail intact after the checkpoint: events {}..=",
            at + 1
        )),
        "{out}"
    );
    assert!(
        out.contains("incremental: events up to it were not read"),
        "{out}"
    );
    let j = s.cli(&[
        "--json",
        "audit",
        "verify",
        "--checkpoint",
        kept,
        "--incremental",
    ]);
    let v: Value = serde_json::from_str(&stdout(&j)).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["after"].as_u64()),
        (Value::Bool(true), Some(at)),
        "{v}"
    );
    // --incremental says from where: without --checkpoint it is a usage error.
    let o = s.cli(&["audit", "verify", "--incremental"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--checkpoint"), "{}", stderr(&o));
    s.stop();

    // The checkpoint's event rewritten behind the broker's back: named.
    let c = rusqlite::Connection::open(dir.join("data/mandate.db")).unwrap();
    c.execute_batch("DROP TRIGGER audit_no_update").unwrap();
    c.execute("UPDATE audit SET hash = 'ff' WHERE seq = ?1", [at])
        .unwrap();
    drop(c);
    let s = Serve::start(&dir);
    let o = s.cli(&["audit", "verify", "--checkpoint", kept, "--incremental"]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(&format!("audit trail BROKEN at event {at}")),
        "{out}"
    );
    s.stop();
}
