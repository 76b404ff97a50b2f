//! The audit trail against an attacker who can write the database file
//! (item 9 of issue 10) and against callers who put control characters in
//! what gets audited (item 17). Every test runs a real broker over HTTP and
//! tampers with the SQLite file with plain SQL while the broker is stopped.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mandate_core::audit::{self, AuditColumn, ChainedEvent, EventBody};
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use rand::rngs::OsRng;
use serde_json::{Value, json};

fn db(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("data/mandate.db")).unwrap();
    // What an attacker does first: the append-only triggers are in the same file.
    c.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .unwrap();
    c
}

fn checkpoint_file(dir: &Path) -> PathBuf {
    dir.join("config/audit.checkpoint")
}

/// A broker whose trail has registrations, an allowed exchange and, at the
/// returned seq, a denied one (with tenant, agent, run, principal and tool),
/// followed by more events; and its first checkpoint (of the events written
/// at start, before any of these), as an attacker could have saved it.
fn broker_with_a_denial(tag: &str) -> (Broker, u64, String) {
    // No periodic checkpoint during the test: the only ones are those it asks for.
    let b = Broker::start_with(tag, |c| c.audit_checkpoint_secs = 3600);
    let early = std::fs::read_to_string(checkpoint_file(&b.dir)).unwrap();
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
    let denied = b.exchange(&mandate, &key, "crm", "write");
    assert_refused(&denied, 400, "invalid_scope", "write");
    let ev = b.audit("decision=deny&type=token.exchange");
    let seq = ev.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
    assert_eq!(b.exchange(&mandate, &key, "github", "read").0, 200);
    (b, seq, early)
}

fn verify(b: &Broker) -> Value {
    let (s, v) = b.admin_get("/v1/audit/verify");
    assert_eq!(s, 200, "{v}");
    v
}

fn verify_with(b: &Broker, checkpoint: &str) -> (u16, Value) {
    b.admin_post("/v1/audit/verify", json!({"checkpoint": checkpoint}))
}

fn export(b: &Broker) -> Value {
    let (s, v) = b.admin_get("/v1/audit/checkpoint");
    assert_eq!(s, 200, "{v}");
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Why the broker refuses to start on `dir`.
fn boot_refusal(dir: &Path) -> String {
    let addr = "127.0.0.1:9".parse().unwrap();
    let cfg = mandate_server::Config::new(addr, dir.join("data"), &dir.join("config"));
    match mandate_server::boot::boot(cfg) {
        Ok(_) => panic!("the broker started on tampered data"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_unauthenticated_caller_cannot_put_control_characters_in_the_trail() {
    let b = Broker::start("audit-ctl");
    let evil = "%1b[2J%1b]0;pwned%07%0aDENY+everything+else%0d%e2%80%ae";
    let got = b.exchange_raw(&format!("grant_type={evil}&subject_token=x"), None);
    assert_refused(&got, 400, "unsupported_grant_type", "not supported");
    let (_, events) = b.admin_get("/v1/audit?type=token.exchange&decision=deny");
    let reason = events.as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !reason.chars().any(audit::is_unsafe_char),
        "stored raw: {reason:?}"
    );
    assert!(
        reason.contains("\\x1b[2J\\x1b]0;pwned\\x07\\nDENY everything else\\r\\u{202e}"),
        "{reason}"
    );
    // Long caller text is bounded: a 20 kB tool name in a denied request.
    let (_, mandate, key) = {
        let grant = b.seed("acme");
        b.start_run("acme", &grant, Alg::EdDSA)
    };
    let long = format!("x{}", "\u{1b}".repeat(10_000));
    let got = b.exchange(&mandate, &key, &long, "read");
    assert_eq!(got.0, 400, "{}", got.1);
    let (_, events) = b.admin_get("/v1/audit?type=token.exchange&decision=deny");
    let text = events.as_array().unwrap().last().unwrap().to_string();
    assert!(text.len() < 8 * audit::MAX_TEXT, "{} bytes", text.len());
    assert!(!text.contains("\\u001b"), "{text}");
    assert_eq!(verify(&b)["ok"], true);
}

#[test]
fn altering_any_column_of_a_row_is_named_with_its_seq_and_column() {
    let (b, k, _) = broker_with_a_denial("audit-cols");
    // The attack of the issue: flip the denial's `decision` column and it
    // vanishes from `mandate audit --decision deny`.
    let dir = b.stop();
    let hash_k: String = db(&dir)
        .query_row("SELECT hash FROM audit WHERE seq = ?1", [k], |r| r.get(0))
        .unwrap();
    let alterations: Vec<(AuditColumn, String)> = vec![
        (AuditColumn::Seq, "seq = seq + 100000".into()),
        (
            AuditColumn::PrevHash,
            format!("prev_hash = '{}'", "0".repeat(64)),
        ),
        (AuditColumn::Hash, format!("hash = '{}'", "f".repeat(64))),
        (
            AuditColumn::Body,
            "body = replace(body, '\"decision\":\"deny\"', '\"decision\":\"allow\"')".into(),
        ),
        (AuditColumn::TimeMs, "time_ms = time_ms + 1".into()),
        (
            AuditColumn::EventType,
            "event_type = 'tenant.create'".into(),
        ),
        (AuditColumn::Decision, "decision = 'allow'".into()),
        (AuditColumn::Tenant, "tenant = 'other'".into()),
        (AuditColumn::Agent, "agent = 'other'".into()),
        (AuditColumn::Run, "run = 'run_other'".into()),
        (AuditColumn::Principal, "principal = NULL".into()),
        (AuditColumn::Tool, "tool = X'00'".into()),
    ];
    assert_eq!(alterations.len(), AuditColumn::ALL.len());
    for (col, set) in alterations {
        let copy = tempdir(&format!("audit-col-{}", col.as_str()));
        copy_dir(&dir, &copy);
        let n = db(&copy)
            .execute(
                &format!("UPDATE audit SET {set} WHERE hash = ?1"),
                [&hash_k],
            )
            .unwrap();
        assert_eq!(n, 1, "{set}");
        let b = Broker::start_again(&copy);
        if col == AuditColumn::Decision {
            let denials = b.audit("decision=deny&type=token.exchange");
            assert!(
                denials.iter().all(|e| e["seq"] != k),
                "the denial is hidden"
            );
        }
        let v = verify(&b);
        assert_eq!(v["ok"], false, "{col:?}: {v}");
        assert_eq!(v["first_bad"]["seq"], k, "{col:?}: {v}");
        assert_eq!(v["first_bad"]["column"], col.as_str(), "{v}");
        assert_eq!(v["verified"], k - 1, "{v}");
        // The failed verification is itself in the trail.
        let ev = b.audit("type=audit.verify&decision=deny");
        assert_eq!(ev.last().unwrap()["details"]["seq"], k, "{ev:?}");
    }
}

#[test]
fn cut_events_are_refused_at_start_and_named_against_an_exported_checkpoint() {
    let (b, _, old) = broker_with_a_denial("audit-cut");
    for i in 0..3 {
        let (s, v) = b.admin_post("/v1/tenants", json!({"name": format!("t{i}")}));
        assert_eq!(s, 201, "{v}");
    }
    let exported = export(&b);
    let head = exported["seq"].as_u64().unwrap();
    let dir = b.stop();
    assert_eq!(
        std::fs::read_to_string(checkpoint_file(&dir))
            .unwrap()
            .trim(),
        exported["checkpoint"].as_str().unwrap(),
        "the file holds the latest checkpoint"
    );
    let n = db(&dir)
        .execute("DELETE FROM audit WHERE seq > ?1", [head - 3])
        .unwrap();
    assert_eq!(n, 3);
    let why = boot_refusal(&dir);
    assert!(
        why.contains(&format!("events {}..={head} were removed", head - 2)),
        "{why}"
    );
    // The attacker also puts back an older checkpoint file: the broker
    // starts, and only a checkpoint kept elsewhere shows the cut.
    std::fs::write(checkpoint_file(&dir), &old).unwrap();
    let b = Broker::start_again(&dir);
    let v = verify(&b);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoints"][0]["source"], "broker");
    let (s, v) = verify_with(&b, exported["checkpoint"].as_str().unwrap());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad"]["seq"], head - 2, "{v}");
    let reason = v["first_bad"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("events {}..={head} are missing", head - 2)),
        "{reason}"
    );
    assert_eq!(v["checkpoints"][0]["matched"], false, "{v}");
}

/// The attacker's recomputation: every event from `from` on re-chained
/// with the core hash function after `edit`, written back with plain SQL.
fn rewrite_from(c: &rusqlite::Connection, from: u64, edit: impl Fn(&mut EventBody)) {
    let (mut prev, rows): (String, Vec<(u64, String)>) = {
        let prev = c
            .query_row("SELECT prev_hash FROM audit WHERE seq = ?1", [from], |r| {
                r.get(0)
            })
            .unwrap();
        let mut st = c
            .prepare("SELECT seq, body FROM audit WHERE seq >= ?1 ORDER BY seq")
            .unwrap();
        let rows = st
            .query_map([from], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (prev, rows)
    };
    for (seq, body) in rows {
        let mut b: EventBody = serde_json::from_str(&body).unwrap();
        if seq == from {
            edit(&mut b);
        }
        let ev: ChainedEvent = audit::chain(seq - 1, &prev, b);
        let json = String::from_utf8(audit::canonical(&ev.body)).unwrap();
        c.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2, body = ?3, decision = ?4 WHERE seq = ?5",
            rusqlite::params![
                ev.prev_hash,
                ev.hash,
                json,
                ev.body.decision.as_str(),
                seq as i64
            ],
        )
        .unwrap();
        prev = ev.hash;
    }
}

#[test]
fn a_rewrite_with_every_later_hash_recomputed_is_caught_by_the_checkpoint() {
    let (b, k, early) = broker_with_a_denial("audit-rewrite");
    let exported = export(&b);
    let head = exported["seq"].as_u64().unwrap();
    assert!(head > k);
    let dir = b.stop();
    rewrite_from(&db(&dir), k, |e| {
        e.decision = mandate_core::audit::Decision::Allow;
        e.reason = None;
    });
    // The chain alone is fooled.
    {
        let st = mandate_store::sqlite::SqliteStore::open(&dir.join("data/mandate.db")).unwrap();
        let rep = mandate_store::Store::audit_verify(&st, vec![]).unwrap();
        assert_eq!(rep.first_break, None);
    }
    // The broker's own checkpoint is not.
    let why = boot_refusal(&dir);
    assert!(why.contains("were rewritten"), "{why}");
    assert!(why.contains(&format!("event {head} ")), "{why}");
    // Nor one kept elsewhere, when the file was rolled back too.
    std::fs::write(checkpoint_file(&dir), &early).unwrap();
    let b = Broker::start_again(&dir);
    let (_, jwks) = b.admin_get("/jwks.json");
    let early_seq = audit::verify_checkpoint(&early, &jwks)
        .unwrap()
        .checkpoint
        .seq;
    assert!(
        early_seq < k,
        "the rolled-back checkpoint predates the edit"
    );
    // The broker, started on the rewritten trail, sees nothing wrong.
    assert_eq!(verify(&b)["ok"], true);
    let (_, v) = verify_with(&b, exported["checkpoint"].as_str().unwrap());
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad"]["seq"], head, "{v}");
    assert_eq!(v["first_bad"]["column"], Value::Null, "{v}");
    assert!(
        v["first_bad"]["reason"]
            .as_str()
            .unwrap()
            .contains("rewritten"),
        "{v}"
    );
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let b = Broker::start("audit-forged");
    b.seed("acme");
    let mine = export(&b);
    let other = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let forged = audit::Checkpoint::of_head(
        &b.url,
        mine["seq"].as_u64().unwrap(),
        mine["hash"].as_str().unwrap(),
        1,
    )
    .sign(&other)
    .jws;
    let got = verify_with(&b, &forged);
    assert_refused(
        &got,
        400,
        "invalid_request",
        "not one of this broker's keys",
    );
    // Another key claiming this broker's kid: the signature fails.
    let kid = mine["kid"].as_str().unwrap();
    let header = mandate_core::jose::b64(
        json!({"alg": "EdDSA", "typ": audit::CHECKPOINT_TYP, "kid": kid})
            .to_string()
            .as_bytes(),
    );
    let mut parts: Vec<&str> = forged.split('.').collect();
    parts[0] = &header;
    let impostor = parts.join(".");
    let got = verify_with(&b, &impostor);
    assert_refused(&got, 400, "invalid_request", "signature does not verify");
    let denials = b.audit("type=audit.verify&decision=deny");
    assert_eq!(denials.len(), 2, "{denials:?}");
    assert!(
        denials[0]["reason"]
            .as_str()
            .unwrap()
            .contains("checkpoint was refused"),
        "{denials:?}"
    );
    // A genuine one passes, and the checkpoint verifies with the public JWKS.
    let (s, v) = verify_with(&b, mine["checkpoint"].as_str().unwrap());
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    let (_, jwks) = b.admin_get("/jwks.json");
    assert!(audit::verify_checkpoint(mine["checkpoint"].as_str().unwrap(), &jwks).is_ok());
    // A forged checkpoint file stops the broker from starting.
    let dir = b.stop();
    std::fs::write(checkpoint_file(&dir), &forged).unwrap();
    let why = boot_refusal(&dir);
    assert!(
        why.contains("does not verify with this broker's keys"),
        "{why}"
    );
}

#[test]
fn checkpoints_live_outside_the_data_and_follow_the_head() {
    let b = Broker::start_with("audit-file", |c| c.audit_checkpoint_secs = 3600);
    let first = export(&b);
    assert_eq!(first["file"], checkpoint_file(&b.dir).display().to_string());
    b.seed("acme");
    let second = export(&b);
    assert!(second["seq"].as_u64() > first["seq"].as_u64());
    let v = verify(&b);
    assert_eq!(v["checkpoints"][0]["seq"], second["seq"], "{v}");
    assert_eq!(v["unanchored"], Value::Null, "{v}");
    b.admin_post("/v1/tenants", json!({"name": "later"}));
    let v = verify(&b);
    let head = v["head"]["seq"].as_u64().unwrap();
    assert_eq!(v["unanchored"], json!({"from": head, "to": head}), "{v}");
    // Shutdown anchors everything.
    let dir = b.stop();
    let (_, jwks) = {
        let b = Broker::start_again(&dir);
        let j = b.admin_get("/jwks.json");
        let dir = b.stop();
        let text = std::fs::read_to_string(checkpoint_file(&dir)).unwrap();
        let cp = audit::verify_checkpoint(&text, &j.1).unwrap();
        assert!(cp.checkpoint.seq >= head);
        j
    };
    assert!(jwks["keys"].is_array());
    // A checkpoint file inside the data directory is refused.
    let inside = tempdir("audit-inside");
    let addr = "127.0.0.1:9".parse().unwrap();
    let mut cfg = mandate_server::Config::new(addr, inside.join("data"), &inside.join("config"));
    cfg.audit_checkpoint_file = inside.join("data/audit.checkpoint");
    let why = mandate_server::boot::boot(cfg).unwrap_err().to_string();
    assert!(why.contains("inside the data directory"), "{why}");
    // A data directory that lost everything, with a checkpoint left: refused.
    std::fs::remove_dir_all(dir.join("data")).unwrap();
    let why = boot_refusal(&dir);
    assert!(why.contains("has no audit trail"), "{why}");
}

/// `GET /v1/audit` pages back by sequence number (keyset): each page is the
/// newest events older than the last page's first, until none are left; a
/// malformed or unknown parameter is refused.
#[test]
fn audit_pages_go_back_by_sequence_number() {
    let (b, _, _) = broker_with_a_denial("audit-pages");
    let seqs = |q: &str| -> Vec<u64> {
        b.audit(q)
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let all = seqs("limit=1000");
    assert!(all.len() > 6, "{all:?}");
    let mut pages = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let q = match before {
            Some(s) => format!("limit=3&before_seq={s}"),
            None => "limit=3".to_owned(),
        };
        let page = seqs(&q);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3 && page.windows(2).all(|w| w[0] < w[1]));
        before = page.first().copied();
        pages.splice(0..0, page);
    }
    assert_eq!(pages, all);
    // Filters apply on every page.
    let tool = seqs("tool=crm&limit=1000");
    let last = *tool.last().unwrap();
    assert_eq!(
        seqs(&format!("tool=crm&limit=1000&before_seq={last}")),
        tool[..tool.len() - 1]
    );
    assert_eq!(b.admin_get("/v1/audit?before_seq=x").0, 400);
    assert_eq!(b.admin_get("/v1/audit?before=3").0, 400);
}

/// Query strings are refused as JSON errors that name the problem, on every
/// endpoint that takes one: malformed values, repeated and unknown
/// parameters (issue 16: `/v1/audit` answered plain text and `/v1/runs`
/// accepted anything).
#[test]
fn bad_query_strings_are_refused_as_json_naming_the_parameter() {
    let (b, _, _) = broker_with_a_denial("bad-queries");
    for (path, names) in [
        ("/v1/audit?before_seq=x", "before_seq"),
        ("/v1/audit?limit=-1", "limit"),
        ("/v1/audit?bogus=1", "bogus"),
        ("/v1/audit?tool=a&tool=b", "tool"),
        ("/v1/runs?bogus=1", "bogus"),
        ("/v1/runs?limit=many", "limit"),
        ("/v1/approvals?bogus=1", "bogus"),
        ("/v1/revocations/log?after=1&bogus=2", "bogus"),
    ] {
        let (status, v) = b.admin_get(path);
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"], "invalid_request", "{path}: {v}");
        let why = v["error_description"].as_str().unwrap();
        assert!(why.contains(names), "{path}: {why}");
    }
    // A caller without a credential learns nothing about the parameters.
    for path in [
        "/v1/revocations/log?bogus=1",
        "/v1/approvals?bogus=1",
        "/v1/audit?bogus=1",
        "/v1/runs?bogus=1",
    ] {
        let r = Broker::agent()
            .get(format!("{}{path}", b.url))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    // Ids a verifier could not read never reach the feed; bodies are objects.
    for bad in [
        json!({"kind": "credential", "id": "a\u{1}b"}),
        json!({"kind": "credential", "id": "x".repeat(600)}),
    ] {
        let (status, v) = b.admin_post("/v1/revocations", bad);
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{v}"
        );
    }
    let (status, v) = b.admin_post("/v1/tenants", json!(["sneaky"]));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("must be an object")
    );
    // The status is the admin's only.
    let r = Broker::agent()
        .get(format!("{}/v1/status", b.url))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(b.admin_get("/v1/status").1["tenants"][0]["name"], "acme");
    // What is documented still works.
    assert_eq!(b.admin_get("/v1/runs?tenant=acme&limit=5").0, 200);
    assert_eq!(b.admin_get("/v1/revocations/log?after=0&limit=5").0, 200);
}

/// When the WAL cannot be synced (here: another file put at its path, so
/// the broker's sync refuses to pretend), the write whose sync failed is
/// refused with 503 and its reason, nothing is ever answered as durable
/// again (a later write, an exchange), `/healthz` says so, and a
/// revocation whose sync failed stays refused in memory (it may be on
/// disk): the credential it revokes is no longer active.
#[test]
fn a_failed_sync_refuses_every_write_after_it_and_keeps_the_revocation() {
    let b = Broker::start("syncfail");
    let grant = b.seed("acme");
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let (_, other, other_key) = b.start_run("acme", &grant, Alg::EdDSA);
    let (s, v) = b.exchange(&mandate, &key, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&b, &token)["active"], true);
    let wal = b.dir.join("data").join("mandate.db-wal");
    std::fs::rename(&wal, b.dir.join("data").join("moved-wal")).unwrap();
    std::fs::write(&wal, b"").unwrap();

    let revoked = b.admin_post("/v1/revocations", json!({"kind": "run", "id": run}));
    assert_refused(&revoked, 503, "temporarily_unavailable", "retry");
    assert_eq!(introspect(&b, &token)["active"], false, "kept refused");
    let health = read(
        Broker::agent()
            .get(format!("{}/healthz", b.url))
            .call()
            .unwrap(),
    );
    assert_eq!(health.0, 503);
    assert_refused(
        &b.exchange(&other, &other_key, "crm", "read"),
        503,
        "temporarily_unavailable",
        "nothing was issued",
    );
    assert!(b.state.writer.failed());
}
