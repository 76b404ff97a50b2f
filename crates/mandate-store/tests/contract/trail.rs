//! The audit trail: the chain, verification, queries, and the same hashes on every backend.

use crate::common::*;
use mandate_core::audit::{AuditColumn, ChainedEvent, Decision, EventBody, EventType, GENESIS};
use mandate_store::{AuditFilter, Mutation, Store};

/// Seq and prev_hash continue across batches; verification counts every
/// event, ends at the head, and checks anchors.
#[test]
fn the_chain_continues_across_batches_and_verifies() {
    for b in backends() {
        let s = &*b.store;
        let mut all: Vec<ChainedEvent> = Vec::new();
        for batch in 0..4u64 {
            let entries = (0..=batch)
                .map(|i| {
                    entry(
                        None,
                        (0..2)
                            .map(|j| EventBody {
                                time_ms: 100 + batch * 10 + i + j,
                                ..ev("x", "a")
                            })
                            .collect(),
                    )
                })
                .collect();
            for r in s.commit(entries).unwrap() {
                all.extend(r.unwrap().events);
            }
        }
        assert_eq!(all.len(), 20);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "{}", b.name);
            let prev = if i == 0 { GENESIS } else { &all[i - 1].hash };
            assert_eq!(e.prev_hash, prev);
        }
        assert_eq!(
            s.audit_query(&AuditFilter::default()).unwrap(),
            all,
            "{}",
            b.name
        );
        let last = all.last().unwrap();
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!(
            rep,
            mandate_store::VerifyReport {
                verified: 20,
                head: (20, last.hash.clone()),
                first_break: None
            }
        );
        assert_eq!(s.load().unwrap().audit_head, (20, last.hash.clone()));
        let anchor = |seq: u64, hash: &str| mandate_core::audit::Anchor {
            seq,
            hash: hash.into(),
            label: "the checkpoint".into(),
        };
        let ok = s.audit_verify(vec![anchor(7, &all[6].hash)]).unwrap();
        assert_eq!((ok.verified, ok.first_break), (20, None));
        let bad = s.audit_verify(vec![anchor(7, &all[5].hash)]).unwrap();
        assert_eq!(bad.first_break.unwrap().seq, 7, "{}", b.name);
        let beyond = s.audit_verify(vec![anchor(25, "00")]).unwrap();
        let brk = beyond.first_break.unwrap();
        assert_eq!(brk.seq, 21);
        assert!(brk.reason.contains("missing"), "{}", brk.reason);
    }
}

/// Events 1..=n of tenant `a`, agent `ag<i>`, time `i`, type by `kind(i)`.
fn numbered(n: u64, kind: impl Fn(u64) -> &'static str) -> Vec<EventBody> {
    (1..=n)
        .map(|i| EventBody {
            time_ms: i,
            agent: Some(format!("ag{i}")),
            ..ev(kind(i), "a")
        })
        .collect()
}

/// An incremental verification (from a checkpoint verified before) reads
/// the events after it: an edit there is named; the checkpoint's event
/// must still have its hash and be there; an edit before it is left to a
/// whole verification, which names it.
#[test]
fn an_incremental_verification_checks_what_came_after_its_checkpoint() {
    for b in backends() {
        let s = &*b.store;
        let all = commit1(s, None, numbered(10, |_| "x")).unwrap().events;
        let from = |seq: u64, hash: &str| mandate_core::audit::Anchor {
            seq,
            hash: hash.into(),
            label: "your checkpoint".into(),
        };
        let ok = s.audit_verify_after(from(6, &all[5].hash), vec![]).unwrap();
        assert_eq!(ok.first_break, None, "{}", b.name);
        assert_eq!(
            (ok.verified, ok.head.clone()),
            (10, (10, all[9].hash.clone()))
        );
        // At the head: nothing after it, still intact.
        let at_head = s
            .audit_verify_after(from(10, &all[9].hash), vec![])
            .unwrap();
        assert_eq!((at_head.verified, at_head.first_break), (10, None));
        // Not the checkpoint's hash (or no such event): refused at it.
        let wrong = s.audit_verify_after(from(6, &all[4].hash), vec![]).unwrap();
        let brk = wrong.first_break.unwrap();
        assert_eq!(
            (brk.seq, brk.column),
            (6, Some(AuditColumn::Hash)),
            "{}",
            b.name
        );
        let gone = s.audit_verify_after(from(12, "00"), vec![]).unwrap();
        assert!(gone.first_break.unwrap().reason.contains("missing"));
        // A later anchor (the broker's checkpoint) is checked too.
        let anchored = s
            .audit_verify_after(from(6, &all[5].hash), vec![from(8, &all[6].hash)])
            .unwrap();
        assert_eq!(anchored.first_break.unwrap().seq, 8, "{}", b.name);
        b.raw.unguard_audit();
        // An edit after the checkpoint is named.
        b.raw
            .exec("UPDATE audit SET agent = 'evil' WHERE seq = 8")
            .unwrap();
        // From the checkpoint at event 6: the first break, if any.
        let after6 = || {
            s.audit_verify_after(from(6, &all[5].hash), vec![])
                .unwrap()
                .first_break
        };
        let brk = after6().unwrap();
        assert_eq!(
            (brk.seq, brk.column),
            (8, Some(AuditColumn::Agent)),
            "{}",
            b.name
        );
        b.raw
            .exec("UPDATE audit SET agent = 'ag8' WHERE seq = 8")
            .unwrap();
        // An edit before it is not read by the incremental one; the whole one names it.
        b.raw
            .exec("UPDATE audit SET agent = 'evil' WHERE seq = 3")
            .unwrap();
        assert_eq!(after6(), None, "{}", b.name);
        let whole = s.audit_verify(vec![]).unwrap().first_break.unwrap();
        assert_eq!(whole.seq, 3, "{}", b.name);
        // The checkpoint's own event changed: refused at it.
        b.raw
            .exec("UPDATE audit SET hash = 'ff' WHERE seq = 6")
            .unwrap();
        assert_eq!(after6().unwrap().seq, 6, "{}", b.name);
    }
}

/// The table refuses edits; an edit that gets around that is named by
/// verification (the row and the column).
#[test]
fn verification_names_a_tampered_row() {
    for b in backends() {
        let s = &*b.store;
        commit1(s, None, numbered(6, |i| if i == 4 { "y" } else { "x" })).unwrap();
        assert_eq!(s.audit_verify(vec![]).unwrap().verified, 6);
        assert!(
            b.raw
                .exec("UPDATE audit SET body = 'x' WHERE seq = 2")
                .is_err(),
            "{}: the audit table took an UPDATE",
            b.name
        );
        assert!(
            b.raw.exec("DELETE FROM audit WHERE seq = 2").is_err(),
            "{}: the audit table took a DELETE",
            b.name
        );
        b.raw.unguard_audit();
        b.raw
            .exec("UPDATE audit SET tenant = 'evil' WHERE seq = 3")
            .unwrap();
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!(rep.verified, 2, "{}", b.name);
        let brk = rep.first_break.unwrap();
        assert_eq!((brk.seq, brk.column), (3, Some(AuditColumn::Tenant)));
        b.raw
            .exec("UPDATE audit SET tenant = 'a' WHERE seq = 3")
            .unwrap();
        assert_eq!(s.audit_verify(vec![]).unwrap().first_break, None);
        b.raw
            .exec("UPDATE audit SET body = replace(body, '\"y\"', '\"w\"') WHERE seq = 4")
            .unwrap();
        let brk = s.audit_verify(vec![]).unwrap().first_break.unwrap();
        assert_eq!(
            (brk.seq, brk.column),
            (4, Some(AuditColumn::Body)),
            "{}",
            b.name
        );
        b.raw
            .exec("UPDATE audit SET body = replace(body, '\"w\"', '\"y\"') WHERE seq = 4")
            .unwrap();
        b.raw
            .exec("UPDATE audit SET time_ms = 99 WHERE seq = 5")
            .unwrap();
        let brk = s.audit_verify(vec![]).unwrap().first_break.unwrap();
        assert_eq!((brk.seq, brk.column), (5, Some(AuditColumn::TimeMs)));
        b.raw
            .exec("UPDATE audit SET time_ms = 5 WHERE seq = 5")
            .unwrap();
        b.raw.exec("DELETE FROM audit WHERE seq = 2").unwrap();
        let rep = s.audit_verify(vec![]).unwrap();
        let brk = rep.first_break.unwrap();
        assert_eq!((rep.verified, brk.seq), (1, 2), "{}", b.name);
        assert!(brk.reason.contains("missing"), "{}", brk.reason);
    }
}

fn seqs(s: &dyn Store, f: AuditFilter) -> Vec<u64> {
    s.audit_query(&f).unwrap().iter().map(|e| e.seq).collect()
}

/// A trail longer than a page of verification: verified whole, and an edit
/// in a later page (or a row cut) named exactly.
#[test]
fn a_long_trail_verifies_across_pages() {
    for b in backends() {
        let s = &*b.store;
        let n = 5000u64;
        for chunk in 0..10 {
            let entries = (0..50)
                .map(|i| {
                    let events = (0..10)
                        .map(|j| ev("token.exchange", &format!("t{}", chunk * 500 + i * 10 + j)))
                        .collect();
                    entry(None, events)
                })
                .collect();
            for r in s.commit(entries).unwrap() {
                r.unwrap();
            }
        }
        let whole = s.audit_verify(vec![]).unwrap();
        assert_eq!(
            (whole.verified, whole.first_break, whole.head.0),
            (n, None, n),
            "{}",
            b.name
        );
        b.raw.unguard_audit();
        b.raw
            .exec("UPDATE audit SET tenant = 'evil' WHERE seq = 4100")
            .unwrap();
        let rep = s.audit_verify(vec![]).unwrap();
        let brk = rep.first_break.unwrap();
        assert_eq!(
            (rep.verified, brk.seq, brk.column),
            (4099, 4100, Some(AuditColumn::Tenant)),
            "{}",
            b.name
        );
        b.raw
            .exec("UPDATE audit SET tenant = 't4099' WHERE seq = 4100")
            .unwrap();
        assert_eq!(s.audit_verify(vec![]).unwrap().first_break, None);
        b.raw.exec("DELETE FROM audit WHERE seq = 4096").unwrap();
        let brk = s.audit_verify(vec![]).unwrap().first_break.unwrap();
        assert_eq!(brk.seq, 4096, "{}", b.name);
        assert!(brk.reason.contains("missing"), "{}", brk.reason);
        // Queries still find their way around the hole.
        let since = s
            .audit_query(&filter(|f| (f.since_ms, f.limit) = (Some(0), Some(3))))
            .unwrap();
        assert_eq!(
            since.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [4998, 4999, 5000]
        );
    }
}

/// A filter: the default, changed by `set`.
fn filter(set: impl FnOnce(&mut AuditFilter)) -> AuditFilter {
    let mut f = AuditFilter::default();
    set(&mut f);
    f
}

fn some(v: &str) -> Option<String> {
    Some(v.to_owned())
}

/// Every filter of `audit_query`, alone and together, and keyset pages.
#[test]
fn audit_query_filters_and_pages() {
    for b in backends() {
        let s = &*b.store;
        // (tenant, agent, run, principal, tool, decision, type)
        let rows = [
            (
                "a",
                "x",
                "r1",
                "p1",
                "t1",
                Decision::Allow,
                EventType::TokenExchange,
            ),
            (
                "b",
                "y",
                "r2",
                "p2",
                "t2",
                Decision::Deny,
                EventType::TokenExchange,
            ),
            (
                "a",
                "y",
                "r1",
                "p2",
                "t1",
                Decision::Ok,
                EventType::RunStart,
            ),
            (
                "a",
                "x",
                "r3",
                "p1",
                "t2",
                Decision::Deny,
                EventType::Revoke,
            ),
            (
                "b",
                "x",
                "r2",
                "p1",
                "t1",
                Decision::Allow,
                EventType::TokenExchange,
            ),
            (
                "a",
                "x",
                "r1",
                "p1",
                "t1",
                Decision::Allow,
                EventType::TokenExchange,
            ),
        ];
        let events = rows
            .iter()
            .enumerate()
            .map(|(i, (te, a, r, p, to, d, t))| EventBody {
                time_ms: 100 * (i as u64 + 1),
                event_type: t.clone(),
                decision: d.clone(),
                tenant: some(te),
                agent: some(a),
                run: some(r),
                principal: some(p),
                tool: some(to),
                ..Default::default()
            })
            .collect();
        commit1(s, None, events).unwrap();
        let q = |set: fn(&mut AuditFilter)| seqs(s, filter(set));
        assert_eq!(q(|_| {}), [1, 2, 3, 4, 5, 6], "{}", b.name);
        assert_eq!(q(|f| f.tenant = some("a")), [1, 3, 4, 6], "{}", b.name);
        assert_eq!(q(|f| f.agent = some("y")), [2, 3]);
        assert_eq!(q(|f| f.run = some("r1")), [1, 3, 6]);
        assert_eq!(q(|f| f.principal = some("p2")), [2, 3]);
        assert_eq!(q(|f| f.tool = some("t2")), [2, 4]);
        assert_eq!(q(|f| f.decision = some("deny")), [2, 4]);
        assert_eq!(q(|f| f.decision = some("allow")), [1, 5, 6]);
        assert_eq!(q(|f| f.event_type = some("token.exchange")), [1, 2, 5, 6]);
        assert_eq!(q(|f| f.event_type = some("revoke")), [4]);
        assert!(q(|f| f.event_type = some("nope")).is_empty());
        let all3 = q(|f| {
            f.tenant = some("a");
            f.agent = some("x");
            f.decision = some("allow");
        });
        assert_eq!(all3, [1, 6]);
        // Values are data, never SQL.
        assert!(q(|f| f.tenant = some("a' OR '1'='1")).is_empty());
        // Newest first, then the page before; oldest first after a seq.
        let page = |before: Option<u64>, after: Option<u64>| {
            seqs(
                s,
                filter(|f| (f.limit, f.before_seq, f.after_seq) = (Some(2), before, after)),
            )
        };
        assert_eq!(page(None, None), [5, 6], "{}", b.name);
        assert_eq!(page(Some(5), None), [3, 4]);
        assert_eq!(page(Some(3), None), [1, 2]);
        assert!(page(Some(1), None).is_empty());
        assert_eq!(page(None, Some(0)), [1, 2]);
        assert_eq!(page(None, Some(2)), [3, 4]);
        assert_eq!(page(Some(4), Some(2)), [3]);
        assert_eq!(
            q(|f| (f.after_seq, f.before_seq) = (Some(2), Some(5))),
            [3, 4]
        );
        let one_after = q(|f| (f.tenant, f.limit, f.after_seq) = (some("a"), Some(1), Some(1)));
        assert_eq!(one_after, [3]);
        assert_eq!(q(|f| f.limit = Some(0)), Vec::<u64>::new());
        // Since a time (and with the other filters and pages).
        assert_eq!(q(|f| f.since_ms = Some(300)), [3, 4, 5, 6], "{}", b.name);
        assert_eq!(
            q(|f| (f.since_ms, f.tenant) = (Some(301), some("a"))),
            [4, 6]
        );
        assert_eq!(q(|f| (f.since_ms, f.limit) = (Some(250), Some(2))), [5, 6]);
        let oldest = q(|f| (f.since_ms, f.limit, f.after_seq) = (Some(250), Some(2), Some(0)));
        assert_eq!(oldest, [3, 4]);
        assert_eq!(
            q(|f| (f.since_ms, f.before_seq) = (Some(250), Some(5))),
            [3, 4]
        );
        assert!(q(|f| f.since_ms = Some(601)).is_empty());
        let full = s.audit_query(&filter(|f| f.run = some("r3"))).unwrap();
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].body.principal.as_deref(), Some("p1"));
    }
}

/// Times do not go back along the chain (a little back is moved up); a
/// clock step further back is kept, and "since" still finds everything.
#[test]
fn times_keep_their_order_and_a_clock_step_back_is_searched() {
    for b in backends() {
        let s = &*b.store;
        let at = |t: u64, agent: &str| EventBody {
            time_ms: t,
            agent: Some(agent.into()),
            ..ev("x", "a")
        };
        let times = [100, 300, 200, 400, 50, 500];
        let batch = times
            .iter()
            .enumerate()
            .map(|(i, t)| entry(None, vec![at(*t, if i % 2 == 0 { "even" } else { "odd" })]))
            .collect();
        for r in s.commit(batch).unwrap() {
            r.unwrap();
        }
        commit1(s, None, vec![at(10, "odd")]).unwrap();
        let all = s.audit_query(&AuditFilter::default()).unwrap();
        let stored: Vec<u64> = all.iter().map(|e| e.body.time_ms).collect();
        assert_eq!(stored, [100, 300, 300, 400, 400, 500, 500], "{}", b.name);
        assert_eq!(s.audit_verify(vec![]).unwrap().first_break, None);
        let since = |t| AuditFilter {
            since_ms: Some(t),
            ..Default::default()
        };
        assert_eq!(seqs(s, since(300)), [2, 3, 4, 5, 6, 7]);
        assert_eq!(seqs(s, since(401)), [6, 7]);
        let odd = |before: Option<u64>| AuditFilter {
            agent: Some("odd".into()),
            before_seq: before,
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(seqs(s, odd(None)), [6, 7]);
        assert_eq!(seqs(s, odd(Some(6))), [2, 4]);
        assert!(seqs(s, odd(Some(2))).is_empty());

        // A clock that jumped ahead and came back.
        for t in [1_000_000, 2_000_000, 1_000_500, 1_001_000] {
            commit1(
                s,
                None,
                vec![EventBody {
                    time_ms: t,
                    ..ev("x", "a")
                }],
            )
            .unwrap();
        }
        let f = |since: u64, limit: u32, after: Option<u64>| -> Vec<(u64, u64)> {
            s.audit_query(&AuditFilter {
                since_ms: Some(since),
                limit: Some(limit),
                after_seq: after,
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|e| (e.seq, e.body.time_ms))
            .collect()
        };
        assert_eq!(
            f(1_000_400, 10, None),
            [(9, 2_000_000), (10, 1_000_500), (11, 1_001_000)],
            "{}",
            b.name
        );
        assert_eq!(f(1_500_000, 10, None), [(9, 2_000_000)]);
        assert_eq!(f(1_000_400, 1, None), [(11, 1_001_000)]);
        assert_eq!(f(1_000_400, 2, Some(0)), [(9, 2_000_000), (10, 1_000_500)]);
        assert!(f(2_000_001, 10, None).is_empty());
        assert_eq!(s.audit_verify(vec![]).unwrap().first_break, None);
    }
}

/// The same events, committed to each backend at the same times, chain to
/// the same hashes.
#[test]
fn backends_chain_the_same_events_to_the_same_hashes() {
    let stores = backends();
    let bodies = |k: u64| -> Vec<EventBody> {
        (0..3)
            .map(|i| EventBody {
                time_ms: 1_700_000_000_000 + k * 1000 + i,
                event_type: if i == 0 {
                    EventType::TokenExchange
                } else {
                    EventType::Other(format!("custom.{k}"))
                },
                decision: if i == 1 {
                    Decision::Deny
                } else {
                    Decision::Allow
                },
                reason: (i == 1).then(|| "no «grant» — ünïcode 🙂 \"quoted\"".to_owned()),
                tenant: Some("acme".into()),
                agent: Some(format!("bot{k}")),
                run: Some("run_1".into()),
                principal: (i != 2).then(|| "alice".into()),
                tool: Some("crm".into()),
                actions: vec!["read".into(), "write".into()],
                credential_exp: Some(1_700_000_300),
                details: serde_json::json!({"z": 1, "a": [1, 2, {"k": null}], "m": "x\ny"}),
                ..Default::default()
            })
            .collect()
    };
    let mut chains: Vec<Vec<ChainedEvent>> = Vec::new();
    for b in &stores {
        let s = &*b.store;
        let mut chain = Vec::new();
        for k in 0..4 {
            let batch = vec![
                entry(
                    Some(Mutation::CreateTenant(tenant(&format!("t{k}")))),
                    bodies(k),
                ),
                entry(Some(Mutation::CreateTenant(tenant("t0"))), bodies(100)),
                entry(None, bodies(k + 10)),
            ];
            for r in s.commit(batch).unwrap().into_iter().flatten() {
                chain.extend(r.events);
            }
        }
        assert_eq!(
            s.audit_query(&AuditFilter {
                limit: Some(1000),
                ..Default::default()
            })
            .unwrap(),
            chain,
            "{}",
            b.name
        );
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!(
            (rep.verified, rep.first_break),
            (chain.len() as u64, None),
            "{}",
            b.name
        );
        chains.push(chain);
    }
    assert_eq!(chains[0].len(), 24);
    assert_eq!(
        chains[0], chains[1],
        "SQLite and PostgreSQL chained different hashes"
    );
}

/// A commit not yet synced is seen by nobody outside through the reads
/// that hand rows out by number (the trail, the revocation log, the
/// webhook outbox): a power cut could give its numbers to other rows.
/// Once synced, all of it is. (PostgreSQL's commit is durable when it
/// returns: there it is seen at once.)
#[test]
fn rows_are_handed_out_only_once_durable() {
    for b in backends() {
        let s = &*b.store;
        s.commit(vec![entry(None, vec![ev("x", "a")])]).unwrap();
        let unsynced = s
            .commit_unsynced(vec![
                entry(
                    Some(Mutation::Revoke(revocation("run:r1", Some("a")))),
                    vec![ev("y", "a")],
                ),
                entry(Some(Mutation::Enqueue { body: "{}".into() }), Vec::new()),
            ])
            .unwrap();
        assert!(unsynced.iter().all(|r| r.is_ok()), "{}", b.name);
        let seen = |s: &dyn Store| {
            (
                s.audit_query(&AuditFilter::default()).unwrap().len(),
                s.revocations_after(0, 10).unwrap().len(),
                s.outbox(10).unwrap().len(),
                s.audit_verify(Vec::new()).unwrap().verified,
            )
        };
        if b.name == "sqlite" {
            assert_eq!(seen(s), (1, 0, 0, 1), "nothing of the unsynced commit");
        }
        s.sync().unwrap();
        assert_eq!(seen(s), (2, 1, 1, 2), "{}: all of it once synced", b.name);
    }
}
