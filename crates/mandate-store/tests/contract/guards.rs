//! What every broker on a store agrees on at commit time: an entry that
//! issues something is refused if a revocation of what it descends from is
//! committed (`Unrevoked`), a one-time use is refused the second time
//! (`FirstUse`), and the registry's generation moves with every
//! registration change and only then.

use crate::common::*;
use mandate_core::dpop::Spent;
use mandate_store::{Change, Mutation, Store, StoreError};

fn unrevoked(keys: &[&str], issued_at: u64, now: u64) -> Mutation {
    Mutation::Unrevoked {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        issued_at,
        now,
    }
}

fn first_use(key: &str, until: u64, now: u64) -> Mutation {
    Mutation::FirstUse {
        uses: vec![Spent {
            key: key.into(),
            until,
        }],
        now,
    }
}

/// The refusal, and that the entry's events were not written.
fn refused(s: &dyn Store, m: Mutation) -> StoreError {
    let before = s.load().unwrap().audit_head;
    let e = commit1(s, Some(m), vec![ev("x", "acme")]).unwrap_err();
    assert_eq!(s.load().unwrap().audit_head, before, "nothing written");
    e
}

#[test]
fn an_entry_descending_from_a_revoked_id_is_refused_with_the_id() {
    for b in backends() {
        let s = &*b.store;
        let keys = ["cred:c1", "run:r1", "agent:acme/bot", "tenant:acme"];
        commit1(s, Some(unrevoked(&keys, 10, 50)), vec![ev("x", "acme")]).unwrap();
        apply(s, Mutation::Revoke(revocation("run:r1", Some("acme"))));
        let e = refused(s, unrevoked(&keys, 10, 50));
        assert!(
            matches!(&e, StoreError::Revoked(k) if k == "run:r1"),
            "{}: {e:?}",
            b.name
        );
        // In a batch, it refuses the whole entry (the approval is not spent).
        apply(
            s,
            Mutation::CreateApproval(approval("apr_1", "r1", "d", 100)),
        );
        let batch = Mutation::Batch(vec![
            unrevoked(&keys, 10, 50),
            Mutation::CountUses {
                blocks: vec![("blk".into(), 1)],
                until: 100,
            },
        ]);
        assert!(matches!(refused(s, batch), StoreError::Revoked(_)));
        assert_eq!(s.block_uses(&["blk".into()]).unwrap(), [0], "{}", b.name);
        // An id that only looks alike refuses nothing.
        commit1(s, Some(unrevoked(&["run:r", "run:r10"], 10, 50)), vec![]).unwrap();
        // Past its `until` (99), the revocation no longer matters: what it
        // named has expired.
        commit1(s, Some(unrevoked(&keys, 10, 100)), vec![]).unwrap();
    }
}

#[test]
fn the_kill_switch_refuses_what_was_issued_at_or_before_its_time() {
    for b in backends() {
        let s = &*b.store;
        let mut kill = revocation("everything:40", None);
        kill.until = 0;
        apply(s, Mutation::Revoke(kill));
        for issued_at in [1, 40] {
            let e = refused(s, unrevoked(&["run:r1"], issued_at, 50));
            assert!(matches!(e, StoreError::Revoked(_)), "{}: {e:?}", b.name);
        }
        commit1(s, Some(unrevoked(&["run:r1"], 41, 50)), vec![]).unwrap();
    }
}

#[test]
fn a_one_time_use_is_refused_the_second_time_until_it_expires() {
    for b in backends() {
        let s = &*b.store;
        commit1(s, Some(first_use("proof:a", 60, 50)), vec![ev("x", "acme")]).unwrap();
        let e = refused(s, first_use("proof:a", 60, 55));
        assert!(
            matches!(&e, StoreError::Replayed(k) if k == "proof:a"),
            "{}: {e:?}",
            b.name
        );
        // A refused use changes nothing else in its entry.
        let batch = Mutation::Batch(vec![
            Mutation::CreateTenant(tenant("acme")),
            first_use("proof:a", 60, 60),
        ]);
        assert!(matches!(refused(s, batch), StoreError::Replayed(_)));
        assert!(s.load().unwrap().tenants.is_empty(), "{}", b.name);
        // Another key is its own; two of one key in one entry is a replay.
        commit1(s, Some(first_use("proof:b", 60, 55)), vec![]).unwrap();
        let twice = Mutation::FirstUse {
            uses: vec![
                Spent {
                    key: "proof:c".into(),
                    until: 60,
                },
                Spent {
                    key: "proof:c".into(),
                    until: 60,
                },
            ],
            now: 55,
        };
        assert!(matches!(refused(s, twice), StoreError::Replayed(_)));
        // Expired, it refuses nothing (the proof itself is too old by then).
        commit1(s, Some(first_use("proof:a", 200, 61)), vec![]).unwrap();
        assert!(matches!(
            refused(s, first_use("proof:a", 200, 150)),
            StoreError::Replayed(_)
        ));
    }
}

/// What a store knows of one-time uses outlives the process: opened again
/// (a restarted broker), it refuses every use it recorded and not one it
/// refused or rolled back. Many uses of one expiry, in no order of their
/// keys (proofs of one second), are each kept.
#[test]
fn one_time_uses_are_refused_after_the_store_is_opened_again() {
    for mut b in backends() {
        let keys: Vec<String> = (0..200u32)
            .map(|i| format!("proof:{:08x}", i.wrapping_mul(2_654_435_761)))
            .collect();
        for chunk in keys.chunks(7) {
            let uses = chunk
                .iter()
                .map(|k| Spent {
                    key: k.clone(),
                    until: 60,
                })
                .collect();
            commit1(
                &*b.store,
                Some(Mutation::FirstUse { uses, now: 50 }),
                vec![],
            )
            .unwrap();
        }
        // Refused in a batch: its use is not kept.
        let batch = Mutation::Batch(vec![
            first_use("proof:rolled-back", 60, 50),
            first_use(&keys[3], 60, 50),
        ]);
        assert!(matches!(refused(&*b.store, batch), StoreError::Replayed(k) if k == keys[3]));
        b = b.reopened();
        let s = &*b.store;
        for k in &keys {
            let e = refused(s, first_use(k, 60, 55));
            assert!(
                matches!(&e, StoreError::Replayed(r) if r == k),
                "{}: {k} after reopening: {e:?}",
                b.name
            );
        }
        commit1(s, Some(first_use("proof:rolled-back", 60, 55)), vec![]).unwrap();
        assert!(matches!(
            refused(s, first_use("proof:rolled-back", 60, 56)),
            StoreError::Replayed(_)
        ));
        // Expired by then, they are cleared and refuse nothing.
        commit1(s, Some(first_use(&keys[0], 200, 61)), vec![]).unwrap();
        assert_eq!(s.latest_one_time_use().unwrap(), 200, "{}", b.name);
    }
}

/// In one commit of several entries, a use is kept only with its entry:
/// an entry refused after the first (a replay) and one whose later
/// mutation is refused (rolled back to its savepoint) keep none of their
/// uses, the others keep theirs, before and after a restart.
#[test]
fn a_use_is_kept_only_with_its_entry_in_a_batch() {
    for mut b in backends() {
        commit1(&*b.store, Some(first_use("proof:old", 60, 50)), vec![]).unwrap();
        let with = |k: &str| entry(Some(first_use(k, 60, 50)), vec![ev("x", "acme")]);
        let results = b
            .store
            .commit(vec![
                with("proof:1"),
                with("proof:old"),
                entry(
                    Some(Mutation::Batch(vec![
                        first_use("proof:3", 60, 50),
                        first_use("proof:old", 60, 50),
                    ])),
                    vec![ev("x", "acme")],
                ),
                with("proof:4"),
            ])
            .unwrap();
        let replayed: Vec<bool> = results
            .iter()
            .map(|r| matches!(r, Err(StoreError::Replayed(k)) if k == "proof:old"))
            .collect();
        assert_eq!(replayed, [false, true, true, false], "{}", b.name);
        assert!(results[0].is_ok() && results[3].is_ok(), "{}", b.name);
        for _ in 0..2 {
            let s = &*b.store;
            for k in ["proof:1", "proof:4", "proof:old"] {
                let e = refused(s, first_use(k, 60, 55));
                assert!(
                    matches!(&e, StoreError::Replayed(r) if r == k),
                    "{}: {k}: {e:?}",
                    b.name
                );
            }
            b = b.reopened();
        }
        commit1(&*b.store, Some(first_use("proof:3", 60, 55)), vec![]).unwrap();
    }
}

/// Brokers on one PostgreSQL store with different proof windows (or
/// clocks apart): a use recorded by a broker with a short window is kept
/// as long as the longest window of any broker on the store
/// (`KeepUses`, which only grows), so another broker that still judges the
/// proof fresh finds it. A store one process uses has one window at a
/// time and may ignore it.
#[test]
fn one_time_uses_are_kept_for_the_longest_window_on_the_store() {
    for b in backends().into_iter().filter(|b| b.name == "postgres") {
        let s = &*b.store;
        apply(s, Mutation::KeepUses { secs: 65 });
        apply(s, Mutation::KeepUses { secs: 10 });
        // Recorded with a 15 s window (date 45), then presented at 100
        // to a broker with a 65 s window (until 110): refused.
        commit1(s, Some(first_use("proof:a", 60, 50)), vec![]).unwrap();
        commit1(s, Some(first_use("proof:x", 90, 99)), vec![]).unwrap();
        let e = refused(s, first_use("proof:a", 110, 100));
        assert!(
            matches!(&e, StoreError::Replayed(k) if k == "proof:a"),
            "{e:?}"
        );
        // Past its until plus the longest window, it is cleared.
        commit1(s, Some(first_use("proof:x2", 200, 126)), vec![]).unwrap();
        commit1(s, Some(first_use("proof:a", 200, 126)), vec![]).unwrap();
    }
}

/// The latest `now` that cleared uses is kept (it only grows), from the
/// first `KeepUses` on: a broker restarted with a clock behind it asks
/// its nonce for proofs dated before it.
#[test]
fn the_latest_time_uses_were_cleared_is_kept() {
    for b in backends() {
        let s = &*b.store;
        let cleared = |s: &dyn Store| {
            let meta = s.load().unwrap().meta;
            let v = meta.iter().find(|(k, _)| k == mandate_store::USES_CLEARED);
            v.map(|(_, v)| v.parse::<u64>().unwrap())
        };
        apply(s, Mutation::KeepUses { secs: 65 });
        assert_eq!(cleared(s), Some(0), "{}", b.name);
        commit1(s, Some(first_use("proof:a", 160, 100)), vec![]).unwrap();
        commit1(s, Some(first_use("proof:b", 160, 50)), vec![]).unwrap();
        assert_eq!(cleared(s), Some(100), "{}", b.name);
        apply(s, Mutation::KeepUses { secs: 5 });
        assert_eq!(cleared(s), Some(100), "{}", b.name);
    }
}

/// On PostgreSQL, a broker whose clock runs ahead clears nothing past the
/// database's clock: the others, on time, still find what they judge
/// fresh.
#[test]
fn a_clock_ahead_clears_nothing_past_the_databases_clock() {
    for b in backends().into_iter().filter(|b| b.name == "postgres") {
        let s = &*b.store;
        let now = mandate_core::clock::Clock::now_secs(&mandate_core::clock::SystemClock);
        apply(s, Mutation::KeepUses { secs: 65 });
        commit1(s, Some(first_use("proof:a", now + 30, now)), vec![]).unwrap();
        // A broker an hour ahead uses another proof.
        commit1(
            s,
            Some(first_use("proof:b", now + 3700, now + 3600)),
            vec![],
        )
        .unwrap();
        let e = refused(s, first_use("proof:a", now + 30, now + 1));
        assert!(
            matches!(&e, StoreError::Replayed(k) if k == "proof:a"),
            "{e:?}"
        );
        let meta = s.load().unwrap().meta;
        let v = meta.iter().find(|(k, _)| k == mandate_store::USES_CLEARED);
        let cleared: u64 = v.unwrap().1.parse().unwrap();
        assert!(cleared <= now + 60, "{cleared} vs {now}");
    }
}

/// A broker that starts with another proof window asks a nonce for every
/// proof dated up to the latest recorded use: the store names it.
#[test]
fn the_latest_one_time_use_is_known() {
    for b in backends() {
        let s = &*b.store;
        assert_eq!(s.latest_one_time_use().unwrap(), 0, "{}", b.name);
        commit1(s, Some(first_use("proof:a", 160, 50)), vec![]).unwrap();
        commit1(s, Some(first_use("proof:b", 120, 55)), vec![]).unwrap();
        assert_eq!(s.latest_one_time_use().unwrap(), 160, "{}", b.name);
    }
}

#[test]
fn expired_one_time_uses_are_cleared_as_new_ones_come() {
    for b in backends() {
        let s = &*b.store;
        for i in 0..20 {
            commit1(s, Some(first_use(&format!("old:{i}"), 10, 5)), vec![]).unwrap();
        }
        for i in 0..10 {
            commit1(s, Some(first_use(&format!("new:{i}"), 100, 50)), vec![]).unwrap();
        }
        // The first new use clears every expired one.
        let left = b.raw.count("SELECT count(*) FROM one_time_uses");
        assert_eq!(left, 10, "{}", b.name);
    }
}

#[test]
fn the_generation_moves_with_registry_changes_only() {
    for b in backends() {
        let s = &*b.store;
        assert_eq!(s.generation().unwrap(), 0);
        let c = apply(s, Mutation::CreateTenant(tenant("acme")));
        assert_eq!(c.generation, Some(1), "{}", b.name);
        let c = apply(s, Mutation::Revoke(revocation("cred:x", None)));
        assert_eq!(c.generation, None, "a revocation is read from its log");
        commit1(s, Some(first_use("k", 9, 1)), vec![]).unwrap();
        // A failed entry does not move it.
        assert!(commit1(s, Some(Mutation::CreateTenant(tenant("acme"))), vec![]).is_err());
        let c = apply(
            s,
            Mutation::Batch(vec![
                Mutation::CreatePrincipal(principal("acme", "alice")),
                Mutation::Revoke(revocation("cred:y", None)),
            ]),
        );
        assert_eq!(c.generation, Some(2), "{}", b.name);
        assert_eq!(s.generation().unwrap(), 2);
        assert_eq!(s.load().unwrap().generation, 2, "{}", b.name);
    }
    assert_eq!(
        Mutation::Batch(vec![Mutation::Revoke(revocation("cred:z", None))]).change(),
        Change::Revocation
    );
}

/// The delegation limit is counted in the transaction that starts the
/// child: the child past it is refused (`Limit`), nothing written.
#[test]
fn a_run_past_its_children_limit_is_refused_in_the_commit() {
    for b in backends() {
        let s = &*b.store;
        registry(s);
        commit1(s, Some(Mutation::StartRun(run("p1", 10, None))), vec![]).unwrap();
        let child = |id: &str| {
            Mutation::all(vec![
                Mutation::FewerChildren {
                    parent: "p1".into(),
                    max: 2,
                },
                Mutation::StartRun(run(id, 20, Some("p1"))),
            ])
            .unwrap()
        };
        for id in ["c1", "c2"] {
            commit1(s, Some(child(id)), vec![ev("x", "acme")]).unwrap();
        }
        let e = refused(s, child("c3"));
        assert!(
            matches!(&e, StoreError::Limit(m) if m.contains("p1") && m.contains("2 runs")),
            "{}: {e:?}",
            b.name
        );
        assert_eq!(s.count_children("p1").unwrap(), 2, "{}", b.name);
        // Another parent's count is its own.
        commit1(s, Some(Mutation::StartRun(run("p2", 10, None))), vec![]).unwrap();
        let other = Mutation::all(vec![
            Mutation::FewerChildren {
                parent: "p2".into(),
                max: 2,
            },
            Mutation::StartRun(run("c4", 20, Some("p2"))),
        ])
        .unwrap();
        commit1(s, Some(other), vec![]).unwrap();
    }
}
