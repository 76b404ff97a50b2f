//! Every mutation, and batches whose entries fail.

use crate::common::*;
use mandate_core::model::*;
use mandate_store::{AuditFilter, KeyRecord, Mutation, StoreError, ToolSecret};

fn sorted<T: Clone, K: Ord>(v: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_by_key(key);
    v
}

/// Each kind of mutation, committed, then seen by `load` (and the reads).
#[test]
fn every_mutation_is_visible_in_load() {
    for b in backends() {
        let s = &*b.store;
        registry(s);
        apply(s, Mutation::CreateTenant(tenant("beta")));
        apply(s, Mutation::CreatePrincipal(principal("acme", "bob")));
        let grant = Grant {
            id: "grt_1".into(),
            tenant: "acme".into(),
            principal: "alice".into(),
            agent: "bot".into(),
            capabilities: vec!["crm:read".into()],
            task: "t".into(),
            expires_at: 50,
            created_ms: 5,
        };
        apply(s, Mutation::CreateGrant(grant.clone()));
        let set = |name: &str, text: &str, at: u64| PolicySetRecord {
            tenant: "acme".into(),
            name: name.into(),
            policies: vec![PolicyText {
                id: "p1".into(),
                text: text.into(),
            }],
            created_ms: at,
        };
        apply(
            s,
            Mutation::PutPolicySet(set("base", "permit(principal, action, resource);", 6)),
        );
        apply(
            s,
            Mutation::PutPolicySet(set("base", "forbid(principal, action, resource);", 7)),
        );
        apply(s, Mutation::PutPolicySet(set("tmp", "x", 7)));
        apply(
            s,
            Mutation::DeletePolicySet {
                tenant: "acme".into(),
                name: "tmp".into(),
            },
        );
        let gone = Mutation::DeletePolicySet {
            tenant: "acme".into(),
            name: "tmp".into(),
        };
        assert!(
            matches!(commit1(s, Some(gone), vec![]), Err(StoreError::NotFound(_))),
            "{}",
            b.name
        );
        let mut bot = agent("acme", "bot");
        bot.purpose = "replaced".into();
        bot.envelope = vec!["crm:write".into()];
        apply(s, Mutation::ReplaceAgent(bot.clone()));
        let ghost = Mutation::ReplaceAgent(agent("acme", "ghost"));
        assert!(matches!(
            commit1(s, Some(ghost), vec![]),
            Err(StoreError::NotFound(_))
        ));
        let mut crm = tool("acme", "crm");
        crm.risk = "high".into();
        crm.actions = vec!["read".into()];
        crm.audience = "https://crm2.example".into();
        apply(s, Mutation::ReplaceTool(crm.clone()));
        let ghost = Mutation::ReplaceTool(tool("acme", "ghost"));
        assert!(matches!(
            commit1(s, Some(ghost), vec![]),
            Err(StoreError::NotFound(_))
        ));
        // A second tool at the same audience is a conflict.
        let mut dup = tool("acme", "crm2");
        dup.audience = crm.audience.clone();
        assert!(matches!(
            commit1(s, Some(Mutation::CreateTool(dup)), vec![]),
            Err(StoreError::Conflict(_))
        ));

        let key = |kid: &str, at: u64| KeyRecord {
            kid: kid.into(),
            alg: "EdDSA".into(),
            purpose: "mandate".into(),
            sealed: vec![0, 1, 2, 255],
            created_ms: at,
        };
        apply(s, Mutation::PutKey(key("k2", 20)));
        apply(s, Mutation::PutKey(key("k1", 10)));
        let secret = |sealed: Vec<u8>, at: u64| ToolSecret {
            tenant: "acme".into(),
            tool: "crm".into(),
            sealed,
            updated_ms: at,
        };
        apply(s, Mutation::PutToolSecret(secret(vec![1], 1)));
        apply(s, Mutation::PutToolSecret(secret(vec![2, 0, 2], 2)));
        let orphan = ToolSecret {
            tool: "ghost".into(),
            ..secret(vec![3], 3)
        };
        assert!(matches!(
            commit1(s, Some(Mutation::PutToolSecret(orphan)), vec![]),
            Err(StoreError::Conflict(_))
        ));
        let admin = |id: &str, tenant: Option<&str>| AdminToken {
            id: id.into(),
            hash: vec![9; 32],
            created_ms: 8,
            tenant: tenant.map(Into::into),
            expires_at: 77,
        };
        apply(s, Mutation::PutAdminToken(admin("adm_1", None)));
        apply(s, Mutation::PutAdminToken(admin("adm_2", Some("acme"))));
        apply(s, Mutation::DeleteAdminToken { id: "adm_1".into() });
        let again = Mutation::DeleteAdminToken { id: "adm_1".into() };
        assert!(matches!(
            commit1(s, Some(again), vec![]),
            Err(StoreError::NotFound(_))
        ));
        let approver = ApproverToken {
            id: "apt_1".into(),
            hash: vec![7; 32],
            tenant: "acme".into(),
            principal: "bob".into(),
            created_ms: 9,
            expires_at: 99,
        };
        apply(s, Mutation::PutApproverToken(approver.clone()));
        apply(
            s,
            Mutation::PutMeta {
                key: "k".into(),
                value: "v1".into(),
            },
        );
        apply(
            s,
            Mutation::PutMeta {
                key: "k".into(),
                value: "v2".into(),
            },
        );
        apply(
            s,
            Mutation::PutMeta {
                key: "a".into(),
                value: "".into(),
            },
        );
        // Runs: one suspended and resumed, one suspended still, one ended while suspended.
        for id in ["run_a", "run_b", "run_c"] {
            apply(s, Mutation::StartRun(run(id, 10, None)));
        }
        let suspend = |id: &str| Mutation::SuspendRun {
            id: id.into(),
            ms: 11,
            reason: format!("why {id}"),
        };
        apply(s, suspend("run_a"));
        apply(s, Mutation::ResumeRun { id: "run_a".into() });
        let resume = Mutation::ResumeRun { id: "run_a".into() };
        assert!(matches!(
            commit1(s, Some(resume), vec![]),
            Err(StoreError::NotFound(_))
        ));
        apply(s, suspend("run_b"));
        apply(s, suspend("run_c"));
        let end = |id: &str| Mutation::EndRun {
            id: id.into(),
            ended_ms: 12,
            revocation: revocation(&format!("run:{id}"), Some("acme")),
        };
        let ended = apply(s, end("run_c"));
        assert!(ended.revocation_seq.is_some());
        assert!(matches!(
            commit1(s, Some(end("run_c")), vec![]),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            commit1(s, Some(suspend("run_c")), vec![]),
            Err(StoreError::NotFound(_))
        ));
        let revoked = apply(s, Mutation::Revoke(revocation("agent:acme/bot", None)));
        // A batch is all or nothing.
        apply(
            s,
            Mutation::Batch(vec![
                Mutation::CreateTenant(tenant("gamma")),
                Mutation::PutMeta {
                    key: "b".into(),
                    value: "x".into(),
                },
            ]),
        );
        let half = Mutation::Batch(vec![
            Mutation::CreateTenant(tenant("delta")),
            Mutation::CreateTenant(tenant("acme")),
        ]);
        assert!(matches!(
            commit1(s, Some(half), vec![]),
            Err(StoreError::Conflict(_))
        ));

        let snap = s.load().unwrap();
        let names: Vec<String> = sorted(&snap.tenants, |t| t.name.clone())
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["acme", "beta", "gamma"], "{}", b.name);
        assert_eq!(sorted(&snap.tenants, |t| t.name.clone())[0], tenant("acme"));
        assert_eq!(
            sorted(&snap.principals, |p| p.id.clone()),
            [principal("acme", "alice"), principal("acme", "bob")]
        );
        assert_eq!(snap.agents, [bot]);
        assert_eq!(snap.tools, [crm]);
        assert_eq!(snap.grants, [grant]);
        assert_eq!(
            snap.policy_sets,
            [set("base", "forbid(principal, action, resource);", 7)]
        );
        assert_eq!(
            snap.keys,
            [key("k1", 10), key("k2", 20)],
            "keys come oldest first"
        );
        assert_eq!(snap.tool_secrets, [secret(vec![2, 0, 2], 2)]);
        assert_eq!(snap.admin_tokens, [admin("adm_2", Some("acme"))]);
        assert_eq!(snap.approver_tokens, [approver]);
        assert_eq!(
            snap.suspended_runs,
            [("run_b".to_owned(), "why run_b".to_owned())]
        );
        assert_eq!(
            sorted(&snap.meta, |m| m.0.clone()),
            [
                ("a".into(), "".into()),
                ("b".into(), "x".into()),
                ("k".into(), "v2".into())
            ]
        );
        let revs: Vec<(u64, String, Option<String>)> = snap
            .revocations
            .iter()
            .map(|r| (r.seq, r.key.clone(), r.tenant.clone()))
            .collect();
        assert_eq!(
            revs,
            [
                (
                    ended.revocation_seq.unwrap(),
                    "run:run_c".into(),
                    Some("acme".into())
                ),
                (
                    revoked.revocation_seq.unwrap(),
                    "agent:acme/bot".into(),
                    None
                )
            ]
        );
        assert_eq!(s.get_run("run_c").unwrap().unwrap().ended_ms, Some(12));
        assert_eq!(snap.audit_head.0, s.audit_verify(vec![]).unwrap().verified);
    }
}

/// A failed entry in a batch leaves neither its change nor its events;
/// the entries around it are committed and chained without a gap.
#[test]
fn a_failed_entry_in_a_batch_leaves_nothing_behind() {
    for b in backends() {
        let s = &*b.store;
        let r = s
            .commit(vec![
                entry(
                    Some(Mutation::CreateTenant(tenant("a"))),
                    vec![ev("tenant.create", "a")],
                ),
                entry(
                    Some(Mutation::CreateTenant(tenant("a"))),
                    vec![ev("tenant.create", "a"), ev("dup", "a")],
                ),
                entry(
                    Some(Mutation::Batch(vec![
                        Mutation::CreateTenant(tenant("half")),
                        Mutation::CreateTenant(tenant("a")),
                    ])),
                    vec![ev("half", "half")],
                ),
                entry(None, vec![ev("note", "a")]),
                entry(
                    Some(Mutation::CreateTenant(tenant("b"))),
                    vec![ev("tenant.create", "b")],
                ),
            ])
            .unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].as_ref().unwrap().events[0].seq, 1);
        assert!(
            matches!(r[1], Err(StoreError::Conflict(_))),
            "{}: {:?}",
            b.name,
            r[1]
        );
        assert!(matches!(r[2], Err(StoreError::Conflict(_))), "{}", b.name);
        let third = r[3].as_ref().unwrap();
        assert_eq!(third.events[0].seq, 2);
        assert_eq!(
            third.events[0].prev_hash,
            r[0].as_ref().unwrap().events[0].hash
        );
        assert_eq!(r[4].as_ref().unwrap().events[0].seq, 3);
        let names: Vec<String> = sorted(&s.load().unwrap().tenants, |t| t.name.clone())
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["a", "b"], "{}", b.name);
        let types: Vec<String> = s
            .audit_query(&AuditFilter::default())
            .unwrap()
            .iter()
            .map(|e| e.body.event_type.as_str().to_owned())
            .collect();
        assert_eq!(types, ["tenant.create", "note", "tenant.create"]);
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!((rep.verified, rep.first_break), (3, None));
        assert_eq!(rep.head, (3, r[4].as_ref().unwrap().events[0].hash.clone()));
        // A batch that fails as a whole (none here) and an empty batch.
        assert!(s.commit(vec![]).unwrap().is_empty());
    }
}
