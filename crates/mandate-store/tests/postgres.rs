//! What only the PostgreSQL backend has: several brokers on one database,
//! calls from inside a tokio runtime, reconnection, schema versions,
//! refusals (TLS, unreachable servers) that name no secret.
//!
//! `export MANDATE_TEST_PG=$(bash scripts/pg.sh 2>/dev/null)` first.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use mandate_core::audit::EventBody;
use mandate_store::postgres::PgStore;
use mandate_store::{AuditFilter, Mutation, Store, StoreError};

/// Reads (and a commit) from a tokio worker thread neither panic nor block
/// the runtime for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_inside_a_multi_thread_runtime_work() {
    let db = PgDb::new();
    let s = Arc::new(PgStore::open(&db.url).unwrap());
    registry(&*s);
    apply(&*s, Mutation::StartRun(run("run_1", 1, None)));
    assert_eq!(s.get_run("run_1").unwrap().unwrap().id, "run_1");
    assert!(s.approval("nope").unwrap().is_none());
    assert_eq!(s.block_uses(&["b".into()]).unwrap(), [0]);
    // From several tasks at once, on the runtime's workers.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.get_run("run_1").unwrap().is_some() && s.load().is_ok() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    drop(s);
}

#[tokio::test(flavor = "current_thread")]
async fn calls_from_inside_a_current_thread_runtime_work() {
    let db = PgDb::new();
    let s = PgStore::open(&db.url).unwrap();
    assert!(s.get_run("run_1").unwrap().is_none());
    assert_eq!(s.load().unwrap().audit_head.0, 0);
}

/// Two brokers (stores) on one database, committing from four threads at
/// once: one chain, seq 1..N without a gap or a fork, and revocation
/// numbers in commit order.
#[test]
fn two_brokers_committing_at_once_keep_one_chain() {
    let db = PgDb::new();
    let stores = [
        Arc::new(PgStore::open(&db.url).unwrap()),
        Arc::new(PgStore::open(&db.url).unwrap()),
    ];
    const ROUNDS: u64 = 25;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = Arc::clone(&stores[(t % 2) as usize]);
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                let mut revs = Vec::new();
                for i in 0..ROUNDS {
                    let body = EventBody {
                        time_ms: 1000 + i,
                        agent: Some(format!("thread{t}")),
                        ..ev("x", "a")
                    };
                    let revoke = Mutation::Revoke(revocation(&format!("cred:{t}/{i}"), None));
                    let batch = vec![
                        entry(Some(revoke), vec![body.clone()]),
                        entry(None, vec![body.clone(), body]),
                    ];
                    for r in s.commit(batch).unwrap() {
                        let c = r.unwrap();
                        seqs.extend(c.events.iter().map(|e| e.seq));
                        revs.extend(c.revocation_seq);
                    }
                }
                (seqs, revs)
            })
        })
        .collect();
    let mut all_seqs = Vec::new();
    let mut all_revs = Vec::new();
    for t in threads {
        let (seqs, revs) = t.join().unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all_seqs.extend(seqs);
        all_revs.extend(revs);
    }
    let n = 4 * ROUNDS * 3;
    all_seqs.sort_unstable();
    assert_eq!(
        all_seqs,
        (1..=n).collect::<Vec<_>>(),
        "every seq once: no gap, no fork"
    );
    for s in &stores {
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!((rep.verified, rep.first_break.clone()), (n, None));
        assert_eq!(rep.head.0, n);
        assert_eq!(s.load().unwrap().audit_head, rep.head);
    }
    let trail = stores[0]
        .audit_query(&AuditFilter {
            after_seq: Some(0),
            limit: Some(100_000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        trail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    // Revocations: each number once, and the log in the order of the trail.
    all_revs.sort_unstable();
    all_revs.dedup();
    assert_eq!(all_revs.len() as u64, 4 * ROUNDS);
    let log = stores[1].revocations_after(0, 1000).unwrap();
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), all_revs);
}

/// Brokers starting together on an empty database migrate it once.
#[test]
fn brokers_starting_together_migrate_once() {
    let db = PgDb::new();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || PgStore::open(&url).map(|_| ()))
        })
        .collect();
    for t in opened {
        t.join().unwrap().unwrap();
    }
    let s = PgStore::open(&db.url).unwrap();
    registry(&s);
    drop(s);
    // A database from a newer broker is refused, not written to.
    pg_exec(
        &db.url,
        "INSERT INTO schema_version (version, applied_ms) VALUES (99, 0)",
    )
    .unwrap();
    let Err(StoreError::Corrupt(why)) = PgStore::open(&db.url) else {
        panic!("a newer schema was opened");
    };
    assert!(why.contains("99"), "{why}");
}

/// Connections killed under the store are reopened by the next call.
#[test]
fn lost_connections_are_reopened() {
    let db = PgDb::new();
    let s = PgStore::open(&db.url).unwrap();
    registry(&s);
    for _ in 0..6 {
        s.load().unwrap();
    }
    let kill = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    for round in 0..2 {
        pg_exec(&admin_url(), &kill).unwrap();
        for _ in 0..6 {
            assert_eq!(s.load().unwrap().tenants.len(), 1 + round, "round {round}");
        }
        commit1(
            &s,
            Some(Mutation::CreateTenant(tenant(&format!("t{round}")))),
            vec![ev("x", "a")],
        )
        .unwrap();
    }
    assert_eq!(s.audit_verify(vec![]).unwrap().first_break, None);
}

/// The audit table refuses edits (also TRUNCATE) to anyone who does not
/// first disable its triggers.
#[test]
fn the_audit_table_is_append_only() {
    let db = PgDb::new();
    let s = PgStore::open(&db.url).unwrap();
    commit1(&s, None, vec![ev("x", "a")]).unwrap();
    for sql in [
        "UPDATE audit SET tenant = 'b'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let e = pg_exec(&db.url, sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(s.audit_verify(vec![]).unwrap().verified, 1);
}

/// Refusals are clear and never show the password.
#[test]
fn refusals_name_no_secret() {
    let secret = "hunter2-very-secret";
    let Err(StoreError::Db(why)) = PgStore::open(&format!(
        "postgresql://u:{secret}@127.0.0.1:5432/db?sslmode=require"
    )) else {
        panic!("TLS was accepted");
    };
    assert!(why.contains("TLS") && !why.contains(secret), "{why}");
    // Nothing listens on port 1: refused at once, not hanging.
    let started = std::time::Instant::now();
    let Err(StoreError::Db(why)) =
        PgStore::open(&format!("postgresql://u:{secret}@127.0.0.1:1/db"))
    else {
        panic!("connected to nothing");
    };
    assert!(!why.contains(secret), "{why}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    let url = with_db(&admin_url(), "mandate_no_such_database");
    let Err(StoreError::Db(why)) = PgStore::open(&url) else {
        panic!("opened a missing database");
    };
    assert!(why.contains("does not exist"), "{why}");
    let db = PgDb::new();
    let s = PgStore::open(&db.url).unwrap();
    assert_eq!(format!("{s:?}"), "PgStore");
    // A conflict names the constraint, not the values.
    registry(&s);
    let Err(StoreError::Conflict(why)) =
        commit1(&s, Some(Mutation::CreateTenant(tenant("acme"))), vec![])
    else {
        panic!("a duplicate tenant was stored");
    };
    assert!(
        why.contains("tenants") && !why.contains("acme inc."),
        "{why}"
    );
}

/// Waits at most `secs` for `n` to be woken.
fn woken(rt: &tokio::runtime::Runtime, n: &tokio::sync::Notify, secs: u64) -> bool {
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(secs), n.notified())
            .await
            .is_ok()
    })
}

/// A broker that watches the store hears another's commits (revocations,
/// registry changes, events), not failed ones, and after its listening
/// connection is killed it reconnects and is woken to catch up.
#[test]
fn a_watching_store_hears_other_brokers_changes_and_catches_up_after_a_reconnect() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = PgDb::new();
    let (a, b) = (
        PgStore::open(&db.url).unwrap(),
        PgStore::open(&db.url).unwrap(),
    );
    let heard = Arc::new(tokio::sync::Notify::new());
    assert!(b.watch(Arc::clone(&heard)));
    assert!(woken(&rt, &heard, 10), "woken once listening, to catch up");
    commit1(&a, None, vec![ev("x", "a")]).unwrap();
    assert!(
        woken(&rt, &heard, 5),
        "events are announced (run histories count them)"
    );
    apply(&a, Mutation::Revoke(revocation("cred:x", None)));
    assert!(woken(&rt, &heard, 5), "a revocation is announced");
    assert_eq!(b.revocations_after(0, 10).unwrap().len(), 1);
    apply(&a, Mutation::CreateTenant(tenant("acme")));
    assert!(woken(&rt, &heard, 5), "a registry change is announced");
    assert_eq!(b.generation().unwrap(), 1);
    // A failed entry announces nothing.
    assert!(commit1(&a, Some(Mutation::CreateTenant(tenant("acme"))), vec![]).is_err());
    assert!(!woken(&rt, &heard, 1));
    // The listening connection is killed: it comes back and wakes the
    // broker to read what it may have missed meanwhile.
    let kill = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    pg_exec(&admin_url(), &kill).unwrap();
    apply(&a, Mutation::Revoke(revocation("cred:y", None)));
    assert!(woken(&rt, &heard, 10), "woken after reconnecting");
    assert_eq!(b.revocations_after(0, 10).unwrap().len(), 2);
}

/// A revocation committed by one broker refuses, inside the other's
/// commit, what that one issues (whatever its memory says), and a proof
/// used at one is refused at the other.
#[test]
fn one_brokers_revocation_and_proof_uses_bind_the_other_at_commit() {
    let db = PgDb::new();
    let (a, b) = (
        PgStore::open(&db.url).unwrap(),
        PgStore::open(&db.url).unwrap(),
    );
    let guard = || Mutation::Unrevoked {
        keys: vec!["run:r1".into(), "tenant:acme".into()],
        issued_at: 10,
        now: 20,
    };
    commit1(&b, Some(guard()), vec![ev("x", "acme")]).unwrap();
    apply(&a, Mutation::Revoke(revocation("tenant:acme", None)));
    let e = commit1(&b, Some(guard()), vec![ev("x", "acme")]).unwrap_err();
    assert!(
        matches!(&e, StoreError::Revoked(k) if k == "tenant:acme"),
        "{e:?}"
    );
    let used = || Mutation::FirstUse {
        uses: vec![mandate_core::dpop::Spent {
            key: "proof:p".into(),
            until: 90,
        }],
        now: 20,
    };
    commit1(&a, Some(used()), vec![]).unwrap();
    let e = commit1(&b, Some(used()), vec![]).unwrap_err();
    assert!(matches!(e, StoreError::Replayed(_)), "{e:?}");
}
