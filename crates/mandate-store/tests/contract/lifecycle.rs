//! Revocations, approvals, block uses, join tokens, leases, runs, the outbox.

use crate::common::*;
use mandate_core::approval::ApprovalStatus;
use mandate_core::audit::{Decision, EventBody, EventType};
use mandate_core::model::*;
use mandate_store::{Mutation, StoreError};

/// Revocations come back in order, from a point; each entry learns its number.
#[test]
fn revocations_come_in_order_after_a_point() {
    for b in backends() {
        let s = &*b.store;
        registry(s);
        apply(s, Mutation::StartRun(run("run_1", 1, None)));
        let mut got = Vec::new();
        for k in ["cred:c1", "agent:acme/bot", "tenant:acme"] {
            got.push(
                apply(s, Mutation::Revoke(revocation(k, Some("acme"))))
                    .revocation_seq
                    .unwrap(),
            );
        }
        // A revocation in a failed entry is not in the log.
        let failed = Mutation::Batch(vec![
            Mutation::Revoke(revocation("cred:lost", None)),
            Mutation::CreateTenant(tenant("acme")),
        ]);
        assert!(commit1(s, Some(failed), vec![]).is_err());
        let end = Mutation::EndRun {
            id: "run_1".into(),
            ended_ms: 5,
            revocation: revocation("run:run_1", Some("acme")),
        };
        got.push(apply(s, end).revocation_seq.unwrap());
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{}: {got:?}", b.name);
        let log = s.revocations_after(0, 100).unwrap();
        let keys: Vec<&str> = log.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["cred:c1", "agent:acme/bot", "tenant:acme", "run:run_1"],
            "{}",
            b.name
        );
        assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), got);
        assert_eq!(
            log[3],
            Revocation {
                seq: got[3],
                ..revocation("run:run_1", Some("acme"))
            }
        );
        let after_first = s.revocations_after(got[0], 2).unwrap();
        assert_eq!(
            after_first.iter().map(|r| r.seq).collect::<Vec<_>>(),
            got[1..3]
        );
        assert!(s.revocations_after(got[3], 10).unwrap().is_empty());
        assert_eq!(s.load().unwrap().revocations, log);
        // Without a mutation, no revocation number.
        assert_eq!(
            commit1(s, None, vec![ev("x", "a")]).unwrap().revocation_seq,
            None
        );
    }
}

/// Approvals: asked, counted while pending, decided once, used once,
/// found by request and listed newest first.
#[test]
fn approvals_are_decided_and_used_once() {
    for b in backends() {
        let s = &*b.store;
        let create = |a: Approval| apply(s, Mutation::CreateApproval(a));
        create(approval("apr_1", "run_1", "d1", 100));
        create(approval("apr_2", "run_1", "d1", 100));
        create(approval("apr_3", "run_2", "d2", 5));
        create(Approval {
            tenant: "beta".into(),
            ..approval("apr_4", "run_9", "d4", 100)
        });
        assert!(matches!(
            commit1(
                s,
                Some(Mutation::CreateApproval(approval("apr_1", "r", "d", 1))),
                vec![]
            ),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            s.pending_approvals_for_run("run_1", 50).unwrap(),
            2,
            "{}",
            b.name
        );
        assert_eq!(
            s.pending_approvals_for_run("run_2", 50).unwrap(),
            0,
            "expired"
        );
        assert_eq!(s.pending_approvals_for_run("run_2", 5).unwrap(), 1);
        let ids = |v: Vec<Approval>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.approvals_for_request("d1").unwrap()),
            ["apr_2", "apr_1"],
            "{}",
            b.name
        );
        let decide = |id: &str, status: ApprovalStatus, now: u64| Mutation::DecideApproval {
            id: id.into(),
            status,
            by: "principal:bob".into(),
            comment: Some("fine".into()),
            decided_ms: 60,
            now,
        };
        apply(s, decide("apr_1", ApprovalStatus::Approved, 50));
        let a1 = s.approval("apr_1").unwrap().unwrap();
        assert_eq!(
            a1,
            Approval {
                status: ApprovalStatus::Approved,
                decided_by: Some("principal:bob".into()),
                decided_ms: Some(60),
                comment: Some("fine".into()),
                ..approval("apr_1", "run_1", "d1", 100)
            }
        );
        assert!(matches!(
            commit1(s, Some(decide("apr_1", ApprovalStatus::Denied, 50)), vec![]),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            commit1(
                s,
                Some(decide("apr_3", ApprovalStatus::Approved, 50)),
                vec![]
            ),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            commit1(
                s,
                Some(decide("apr_x", ApprovalStatus::Approved, 1)),
                vec![]
            ),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.pending_approvals_for_run("run_1", 50).unwrap(), 1);
        let use_ = |id: &str| Mutation::UseApproval { id: id.into() };
        assert!(
            matches!(
                commit1(s, Some(use_("apr_2")), vec![]),
                Err(StoreError::Conflict(_))
            ),
            "a pending approval is not spent"
        );
        apply(s, use_("apr_1"));
        assert_eq!(
            s.approval("apr_1").unwrap().unwrap().status,
            ApprovalStatus::Used
        );
        assert!(
            matches!(
                commit1(s, Some(use_("apr_1")), vec![]),
                Err(StoreError::Conflict(_))
            ),
            "spent twice"
        );
        assert_eq!(ids(s.approvals_for_request("d1").unwrap()), ["apr_2"]);
        apply(s, decide("apr_2", ApprovalStatus::Denied, 50));
        let live = s.approvals_for_request("d1").unwrap();
        assert_eq!((live.len(), live[0].status), (1, ApprovalStatus::Denied));
        assert!(s.approvals_for_request("nope").unwrap().is_empty());
        assert_eq!(
            ids(s.list_approvals(None, None, 10).unwrap()),
            ["apr_4", "apr_3", "apr_2", "apr_1"],
            "{}",
            b.name
        );
        assert_eq!(
            ids(s.list_approvals(Some("acme"), None, 10).unwrap()),
            ["apr_3", "apr_2", "apr_1"]
        );
        assert_eq!(
            ids(s
                .list_approvals(None, Some(ApprovalStatus::Used), 10)
                .unwrap()),
            ["apr_1"]
        );
        assert_eq!(
            ids(s
                .list_approvals(Some("acme"), Some(ApprovalStatus::Pending), 10)
                .unwrap()),
            ["apr_3"]
        );
        assert_eq!(
            ids(s.list_approvals(None, None, 2).unwrap()),
            ["apr_4", "apr_3"]
        );
        assert!(
            s.list_approvals(Some("nobody"), None, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.approval("nope").unwrap(), None);
    }
}

/// Block uses are counted up to their limit; an entry over a limit counts
/// nothing at all.
#[test]
fn block_uses_are_counted_up_to_their_limit() {
    for b in backends() {
        let s = &*b.store;
        let count = |blocks: &[(&str, u64)]| Mutation::CountUses {
            blocks: blocks.iter().map(|(b, l)| (b.to_string(), *l)).collect(),
            until: 99,
        };
        let uses = |blocks: &[&str]| {
            s.block_uses(&blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(uses(&["b1"]), [0]);
        apply(s, count(&[("b1", 2)]));
        apply(s, count(&[("b1", 2)]));
        assert!(
            matches!(
                commit1(s, Some(count(&[("b1", 2)])), vec![ev("x", "a")]),
                Err(StoreError::Conflict(_))
            ),
            "{}",
            b.name
        );
        assert_eq!(uses(&["b1", "b2", "b1"]), [2, 0, 2]);
        // b2 would be counted, b1 is at its limit: neither is.
        assert!(commit1(s, Some(count(&[("b2", 5), ("b1", 2)])), vec![]).is_err());
        assert_eq!(uses(&["b2"]), [0], "{}", b.name);
        assert!(matches!(
            commit1(s, Some(count(&[("b3", 0)])), vec![]),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(uses(&["b3"]), [0]);
        apply(s, count(&[("b2", 5), ("b4", 1)]));
        assert_eq!(uses(&["b4", "b2", "b1"]), [1, 1, 2]);
        assert!(uses(&[]).is_empty());
        // A higher limit later lets the count go on.
        apply(s, count(&[("b1", 3)]));
        assert_eq!(uses(&["b1"]), [3]);
    }
}

/// Join tokens are used once; leases are live until dropped.
#[test]
fn join_tokens_and_leases() {
    for b in backends() {
        let s = &*b.store;
        let jt = JoinToken {
            id: "jt_1".into(),
            hash: vec![1; 32],
            tenant: "acme".into(),
            agent: "bot".into(),
            principal: Some("alice".into()),
            grant: None,
            expires_at: 100,
            created_ms: 5,
            used_ms: None,
        };
        apply(s, Mutation::CreateJoinToken(jt.clone()));
        assert!(
            s.join_token("jt_1").unwrap() == Some(jt.clone()),
            "{}",
            b.name
        );
        assert!(s.join_token("jt_2").unwrap().is_none());
        apply(
            s,
            Mutation::UseJoinToken {
                id: "jt_1".into(),
                used_ms: 7,
            },
        );
        assert!(
            s.join_token("jt_1").unwrap()
                == Some(JoinToken {
                    used_ms: Some(7),
                    ..jt.clone()
                })
        );
        let again = Mutation::UseJoinToken {
            id: "jt_1".into(),
            used_ms: 8,
        };
        assert!(matches!(
            commit1(s, Some(again), vec![]),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            commit1(s, Some(Mutation::CreateJoinToken(jt)), vec![]),
            Err(StoreError::Conflict(_))
        ));

        let lease = |id: &str, role: &str, at: u64| Lease {
            id: id.into(),
            tenant: "acme".into(),
            tool: "db".into(),
            run: "run_1".into(),
            agent: "bot".into(),
            principal: None,
            grant: Some("grt_1".into()),
            role: role.into(),
            expires_at: 9,
            created_ms: at,
            dropped_ms: None,
            revoked_by: vec![format!("cred:{id}"), "run:run_0".into()],
        };
        apply(s, Mutation::CreateLease(lease("cred_2", "role_2", 20)));
        apply(s, Mutation::CreateLease(lease("cred_1", "role_1", 10)));
        assert_eq!(
            s.live_leases().unwrap(),
            [lease("cred_1", "role_1", 10), lease("cred_2", "role_2", 20)],
            "{}",
            b.name
        );
        assert!(matches!(
            commit1(
                s,
                Some(Mutation::CreateLease(lease("cred_3", "role_1", 30))),
                vec![]
            ),
            Err(StoreError::Conflict(_))
        ));
        apply(
            s,
            Mutation::DropLease {
                id: "cred_1".into(),
                dropped_ms: 40,
            },
        );
        assert_eq!(s.live_leases().unwrap(), [lease("cred_2", "role_2", 20)]);
        let again = Mutation::DropLease {
            id: "cred_1".into(),
            dropped_ms: 41,
        };
        assert!(matches!(
            commit1(s, Some(again), vec![]),
            Err(StoreError::NotFound(_))
        ));
    }
}

/// Runs: listed newest first by tenant and agent, read one by one, their
/// delegated children counted.
#[test]
fn runs_are_listed_read_and_counted() {
    for b in backends() {
        let s = &*b.store;
        registry(s);
        apply(s, Mutation::CreateAgent(agent("acme", "bot2")));
        apply(s, Mutation::StartRun(run("r1", 10, None)));
        apply(s, Mutation::StartRun(run("r2", 20, Some("r1"))));
        apply(s, Mutation::StartRun(run("r3", 30, Some("r1"))));
        apply(
            s,
            Mutation::StartRun(Run {
                agent: "bot2".into(),
                principal: None,
                ..run("r4", 40, None)
            }),
        );
        assert!(matches!(
            commit1(s, Some(Mutation::StartRun(run("r1", 50, None))), vec![]),
            Err(StoreError::Conflict(_))
        ));
        let orphan = Run {
            agent: "nobody".into(),
            ..run("r5", 50, None)
        };
        assert!(
            matches!(
                commit1(s, Some(Mutation::StartRun(orphan)), vec![]),
                Err(StoreError::Conflict(_))
            ),
            "{}",
            b.name
        );
        let ids = |v: Vec<Run>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.list_runs(None, None, 10).unwrap()),
            ["r4", "r3", "r2", "r1"],
            "{}",
            b.name
        );
        assert_eq!(
            ids(s.list_runs(Some("acme"), Some("bot"), 10).unwrap()),
            ["r3", "r2", "r1"]
        );
        assert_eq!(ids(s.list_runs(None, Some("bot2"), 10).unwrap()), ["r4"]);
        assert_eq!(ids(s.list_runs(None, None, 2).unwrap()), ["r4", "r3"]);
        assert!(s.list_runs(Some("beta"), None, 10).unwrap().is_empty());
        assert_eq!(s.get_run("r2").unwrap(), Some(run("r2", 20, Some("r1"))));
        assert_eq!(s.get_run("nope").unwrap(), None);
        assert_eq!(s.count_children("r1").unwrap(), 2);
        assert_eq!(s.count_children("r2").unwrap(), 0);
        let end = Mutation::EndRun {
            id: "r1".into(),
            ended_ms: 70,
            revocation: revocation("run:r1", Some("acme")),
        };
        apply(s, end);
        assert_eq!(s.get_run("r1").unwrap().unwrap().ended_ms, Some(70));
    }
}

/// The webhook outbox is first in, first out; agent/tool pairs come from
/// allowed exchanges.
#[test]
fn outbox_and_tools_used() {
    for b in backends() {
        let s = &*b.store;
        for body in ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"] {
            apply(s, Mutation::Enqueue { body: body.into() });
        }
        let first = s.outbox(2).unwrap();
        assert_eq!(
            first.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
            ["{\"n\":1}", "{\"n\":2}"],
            "{}",
            b.name
        );
        assert!(first[0].0 < first[1].0);
        apply(s, Mutation::Dequeue { id: first[0].0 });
        apply(s, Mutation::Dequeue { id: 12345 });
        let rest = s.outbox(10).unwrap();
        assert_eq!(
            rest.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
            ["{\"n\":2}", "{\"n\":3}"]
        );

        let ex = |agent: &str, tool: Option<&str>, d: Decision| EventBody {
            event_type: EventType::TokenExchange,
            decision: d,
            agent: Some(agent.into()),
            tool: tool.map(Into::into),
            ..ev("x", "acme")
        };
        commit1(
            s,
            None,
            vec![
                ex("bot", Some("crm"), Decision::Allow),
                ex("bot", Some("crm"), Decision::Allow),
                ex("bot", Some("db"), Decision::Deny),
                ex("bot2", Some("db"), Decision::Allow),
                ex("bot3", None, Decision::Allow),
                EventBody {
                    event_type: EventType::RunStart,
                    ..ex("bot4", Some("x"), Decision::Allow)
                },
            ],
        )
        .unwrap();
        let mut used = s.agent_tools_used().unwrap();
        used.sort();
        let t = |a: &str, b: &str| ("acme".to_owned(), a.to_owned(), b.to_owned());
        assert_eq!(used, [t("bot", "crm"), t("bot2", "db")], "{}", b.name);
    }
}
