//! Attacks from the adversarial review (issue 10), each reproduced against a
//! real broker over HTTP, and the refusal that now answers it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use biscuit_auth::UnverifiedBiscuit;
use biscuit_auth::builder::{BlockBuilder, Fact, Term};
use common::*;
use mandate_core::attenuation::{Narrowing, attenuate};
use mandate_core::capability::CapabilitySet;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::{Value, json};

fn key() -> SigningKey {
    SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng)
}

fn revoke_rfc7009(b: &Broker, token: &str) -> u16 {
    let r = Broker::agent()
        .post(format!("{}/oauth/revoke", b.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("token={}", enc(token)))
        .unwrap();
    r.status().as_u16()
}

/// A block with `n` facts and a 4-way join over them: quadratic-to-quartic
/// work for any Datalog engine that runs it.
fn heavy_block(n: usize) -> BlockBuilder {
    let mut b = BlockBuilder::new();
    for i in 0..n {
        b = b
            .fact(Fact::new(
                "e".into(),
                vec![
                    Term::Integer(i as i64),
                    Term::Integer((i as i64 + 1) % n as i64),
                ],
            ))
            .unwrap();
    }
    b.code("p($a, $d) <- e($a, $b), e($b, $c), e($c, $d), e($d, $a);")
        .unwrap()
}

/// `token` with a third-party block appended, signed by `holder` (what a
/// holder can do with its own key, whatever the block says).
fn signed_by_holder(token: &str, holder: &SigningKey, block: BlockBuilder) -> String {
    let t = UnverifiedBiscuit::from_base64(token).unwrap();
    let req = t.third_party_request().unwrap();
    let key = biscuit_auth::PrivateKey::from_bytes(
        holder.to_secret().expose(),
        biscuit_auth::Algorithm::Ed25519,
    )
    .unwrap();
    let blk = req.create_block(&key, block).unwrap();
    t.append_third_party(&blk.serialize().unwrap())
        .unwrap()
        .to_base64()
        .unwrap()
}

#[test]
fn datalog_in_a_presented_token_never_runs_before_its_shape_is_checked() {
    let b = Broker::start("sec-datalog");
    let grant = b.seed("acme");
    let (run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    // Anyone holding the mandate (no key needed) appends a first-party block.
    let first_party = UnverifiedBiscuit::from_base64(&m)
        .unwrap()
        .append(heavy_block(300))
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(first_party.len() < 16 * 1024, "{}", first_party.len());
    let started = Instant::now();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (url, t) = (b.url.clone(), first_party.clone());
            std::thread::spawn(move || {
                Broker::agent()
                    .post(format!("{url}/oauth/revoke"))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .send(format!("token={}", enc(&t)))
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Refused by shape, in far less than the seconds the join would take.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_refused(
        &b.exchange(&first_party, &k, "crm", "read"),
        400,
        "invalid_grant",
        "not signed by the holder",
    );
    // The revocation endpoint wrote nothing for it, and the run still works.
    assert!(b.audit(&format!("run={run}&type=revoke")).is_empty());
    assert_eq!(b.exchange(&m, &k, "crm", "read").0, 200);

    // A holder signs a third-party block with heavy rules or checks: refused too.
    let signed = {
        let block = heavy_block(10)
            .code("check if p($a, $b), p($b, $c), p($c, $a);")
            .unwrap();
        signed_by_holder(&m, &k, block)
    };
    assert_refused(
        &b.exchange(&signed, &k, "crm", "read"),
        400,
        "invalid_grant",
        "rules",
    );
    // Checks of other shapes than `mandate token attenuate` writes.
    let odd_check = {
        let block = BlockBuilder::new()
            .code(r#"only("crm", "read"); check if time($t), $t.length() > 0 || true;"#)
            .unwrap();
        signed_by_holder(&m, &k, block)
    };
    assert_refused(
        &b.exchange(&odd_check, &k, "crm", "read"),
        400,
        "invalid_grant",
        "checks are not the ones",
    );
    // Deep nesting is refused before a parser sees it.
    let deep = {
        let expr = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        let block = BlockBuilder::new()
            .code(format!("check if {expr};"))
            .unwrap();
        signed_by_holder(&m, &k, block)
    };
    assert_refused(
        &b.exchange(&deep, &k, "crm", "read"),
        400,
        "invalid_grant",
        "nests deeper",
    );
    // What `attenuate` writes still works.
    let fine = attenuate(
        &m,
        &k,
        &Narrowing {
            capabilities: Some(CapabilitySet::parse(&["crm:read"]).unwrap()),
            resource_prefix: Some("/repos/acme".into()),
            max_uses: Some(3),
            not_after: Some(now() + 60),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(b.exchange(&fine, &k, "crm", "read").0, 200);
}

#[test]
fn a_refused_token_is_remembered_and_costs_nothing_the_second_time() {
    let b = Broker::start("sec-failcache");
    let grant = b.seed("acme");
    let (_run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let bad = UnverifiedBiscuit::from_base64(&m)
        .unwrap()
        .append(heavy_block(10))
        .unwrap()
        .to_base64()
        .unwrap();
    for _ in 0..3 {
        assert_refused(
            &b.exchange(&bad, &k, "crm", "read"),
            400,
            "invalid_grant",
            "not signed by the holder",
        );
    }
    // Audited with its reason (through the per-client throttle: the token
    // proves no key, so three in a window are one event with a count).
    let denied = b.audit("type=token.exchange&decision=deny");
    assert!(
        denied.iter().any(|e| e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not signed by the holder")),
        "{denied:?}"
    );
}

#[test]
fn amounts_are_bounded_and_the_budget_cannot_be_overflowed() {
    let b = Broker::start("sec-budget");
    b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/tools",
        json!({"name": "pay", "audience": "https://pay.acme.example", "actions": ["transfer"], "labels": ["money"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "payer", "owner": "ops", "envelope": ["pay:transfer"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/grants",
        json!({"principal": "alice@example.com", "agent": "payer", "capabilities": ["pay:transfer"], "task": "pay"}),
    );
    assert_eq!(s, 201, "{v}");
    let grant = v["id"].as_str().unwrap().to_owned();
    let (s, v) = b.admin_put_text(
        "/v1/tenants/acme/policies/budget",
        include_str!("../../../examples/policies/budget.cedar"),
    );
    assert_eq!(s, 200, "{v}");
    let k = key();
    let (s, v) = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "payer", "principal": "alice@example.com", "grant": grant, "jwk": k.public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    let m = v["mandate"].as_str().unwrap().to_owned();
    let pay = |amount: Value| {
        let d = json!([{"type": "mandate", "amount": amount, "currency": "EUR"}]);
        let body = format!(
            "{}&authorization_details={}",
            form(&m, "pay", "transfer"),
            enc(&d.to_string())
        );
        b.exchange_raw(&body, Some(&b.proof(&k)))
    };
    assert_eq!(pay(json!(100)).0, 200);
    // The reviewer's attack: i64::MAX after a small amount overflowed the
    // policy's sum, Cedar skipped the erroring `forbid`, and it was allowed.
    assert_refused(
        &pay(json!(9_223_372_036_854_775_807_i64)),
        400,
        "invalid_request",
        "from 0 to",
    );
    assert_refused(&pay(json!(-1)), 400, "invalid_request", "from 0 to");
    assert_refused(&pay(json!(1.5)), 400, "invalid_request", "from 0 to");
    // The budget still holds afterwards: 500.00 in all.
    assert_eq!(pay(json!(49_900)).0, 200);
    assert_refused(&pay(json!(1)), 403, "access_denied", "money-budget");
}

/// Approvals env: tools pay (money) and deploy (money + prod), principals
/// alice (the run's) and bob (finance), approvals.cedar.
fn approvals_env(tag: &str) -> (Broker, String, String, String) {
    let b = Broker::start(tag);
    b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/tools",
        json!({"name": "release", "audience": "https://release.acme.example", "actions": ["deploy"], "labels": ["money", "prod"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/principals",
        json!({"id": "bob@example.com", "groups": ["finance"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "deployer", "owner": "ops", "envelope": ["release:deploy"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/grants",
        json!({"principal": "alice@example.com", "agent": "deployer", "capabilities": ["release:deploy"], "task": "ship"}),
    );
    assert_eq!(s, 201, "{v}");
    let grant = v["id"].as_str().unwrap().to_owned();
    let (s, v) = b.admin_put_text(
        "/v1/tenants/acme/policies/approvals",
        include_str!("../../../examples/policies/approvals.cedar"),
    );
    assert_eq!(s, 200, "{v}");
    let token = |p: &str| {
        let (s, v) = b.admin_post(
            &format!("/v1/tenants/acme/principals/{p}/approver-tokens"),
            json!({}),
        );
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    };
    let (alice, bob) = (token("alice@example.com"), token("bob@example.com"));
    (b, grant, alice, bob)
}

fn as_approver(b: &Broker, token: &str, method: &str, path: &str) -> (u16, Value) {
    let url = format!("{}{path}", b.url);
    let r = match method {
        "GET" => Broker::agent()
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call(),
        _ => Broker::agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(json!({})),
    };
    read(r.unwrap())
}

#[test]
fn each_approval_policy_needs_its_own_approvers() {
    let (b, grant, alice, bob) = approvals_env("sec-sod");
    let k = key();
    let (s, v) = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "deployer", "principal": "alice@example.com", "grant": grant, "jwk": k.public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    let m = v["mandate"].as_str().unwrap().to_owned();
    let ask = || {
        let d = json!([{"type": "mandate", "amount": 2_500_000, "currency": "EUR"}]);
        let body = format!(
            "{}&authorization_details={}",
            form(&m, "release", "deploy"),
            enc(&d.to_string())
        );
        b.exchange_raw(&body, Some(&b.proof(&k)))
    };
    // A 25,000.00 payment that is also a production deploy.
    let (s, v) = ask();
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "authorization_pending");
    let approvals = v["approvals"].as_array().unwrap().clone();
    assert_eq!(approvals.len(), 2, "{v}");
    let id_for = |policy: &str| {
        approvals
            .iter()
            .find(|a| a["policies"][0] == policy)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (finance, deploy) = (
        id_for("approvals/large-payments"),
        id_for("approvals/prod-deploys"),
    );
    // The principal approves what it may (the deploy): not enough alone.
    assert_eq!(
        as_approver(
            &b,
            &alice,
            "POST",
            &format!("/v1/approvals/{deploy}/approve")
        )
        .0,
        200
    );
    // ... and cannot approve finance's part.
    assert_eq!(
        as_approver(
            &b,
            &alice,
            "POST",
            &format!("/v1/approvals/{finance}/approve")
        )
        .0,
        403
    );
    let (s, v) = ask();
    assert_eq!(v["error"], "authorization_pending", "{s} {v}");
    // Polling does not pile up new requests.
    assert_eq!(v["approvals"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        as_approver(
            &b,
            &bob,
            "POST",
            &format!("/v1/approvals/{finance}/approve")
        )
        .0,
        200
    );
    let (s, v) = ask();
    assert_eq!(s, 200, "{v}");
    let c = introspect(&b, v["access_token"].as_str().unwrap());
    let named: Vec<&str> = c["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(
        named.contains(&finance.as_str()) && named.contains(&deploy.as_str()),
        "{c}"
    );
    // Each approval is spent: the same request asks anew.
    let (_, v) = ask();
    assert_eq!(v["error"], "authorization_pending", "{v}");
}

#[test]
fn pending_approvals_per_run_are_capped_and_count_toward_anomalies() {
    let (b, grant, _alice, _bob) = approvals_env("sec-flood");
    let k = key();
    let (s, v) = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "deployer", "principal": "alice@example.com", "grant": grant, "jwk": k.public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    let m = v["mandate"].as_str().unwrap().to_owned();
    let mut refused = None;
    for i in 0..40 {
        let d = json!([{"type": "mandate", "amount": 20_000 + i, "currency": "EUR"}]);
        let body = format!(
            "{}&authorization_details={}",
            form(&m, "release", "deploy"),
            enc(&d.to_string())
        );
        let (s, v) = b.exchange_raw(&body, Some(&b.proof(&k)));
        if s == 403 {
            refused = Some((i, v));
            break;
        }
        assert_eq!(v["error"], "authorization_pending", "{v}");
    }
    let (i, v) = refused.expect("the flood must be capped");
    assert!(i <= 16, "capped after {i}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("already waits"),
        "{v}"
    );
}

#[test]
fn approver_credentials_die_with_their_principal_and_can_be_revoked() {
    let (b, _grant, alice, bob) = approvals_env("sec-approver");
    assert_eq!(as_approver(&b, &alice, "GET", "/v1/approvals").0, 200);
    // Revoking the principal revokes its approver credential.
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "principal", "tenant": "acme", "id": "alice@example.com"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_refused(
        &as_approver(&b, &alice, "GET", "/v1/approvals"),
        401,
        "invalid_token",
        "revoked (principal)",
    );
    // An approver credential is revocable by its id, and the revocation
    // survives a restart.
    let bob_id = {
        let (s, v) = b.admin_post(
            "/v1/tenants/acme/principals/bob@example.com/approver-tokens",
            json!({}),
        );
        assert_eq!(s, 201, "{v}");
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    };
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "credential", "id": bob_id.0}),
    );
    assert_eq!(s, 200, "{v}");
    let b = b.restart();
    assert_refused(
        &as_approver(&b, &bob_id.1, "GET", "/v1/approvals"),
        401,
        "invalid_token",
        "revoked (cred)",
    );
    // Bob's first credential still works.
    assert_eq!(as_approver(&b, &bob, "GET", "/v1/approvals").0, 200);
    // A tenant revocation ends it too.
    let (s, _) = b.admin_post("/v1/revocations", json!({"kind": "tenant", "id": "acme"}));
    assert_eq!(s, 200);
    assert_refused(
        &as_approver(&b, &bob, "GET", "/v1/approvals"),
        401,
        "invalid_token",
        "revoked (tenant)",
    );
}

#[test]
fn feed_credentials_are_revocable() {
    let b = Broker::start("sec-feed");
    b.seed("acme");
    let (s, v) = b.admin_post("/v1/feed-tokens", json!({}));
    assert_eq!(s, 201, "{v}");
    let (id, token) = (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    );
    let get = |t: &str| {
        read(
            Broker::agent()
                .get(format!("{}/v1/revocations/log", b.url))
                .header("Authorization", &format!("Bearer {t}"))
                .call()
                .unwrap(),
        )
    };
    assert_eq!(get(&token).0, 200);
    let (s, v) = b.admin_post("/v1/revocations", json!({"kind": "credential", "id": id}));
    assert_eq!(s, 200, "{v}");
    assert_refused(&get(&token), 401, "invalid_token", "revoked");
}

#[test]
fn revoking_an_agent_cuts_the_runs_its_runs_delegated_to() {
    let b = Broker::start("sec-subtree");
    let grant = b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "helper", "owner": "team-ops", "envelope": ["crm:read"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (_root, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let (_child, m1, k1) = delegate(&b, &m0, &k0, "helper", None);
    let (s, v) = b.exchange(&m1, &k1, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let cred = v["access_token"].as_str().unwrap().to_owned();
    // Revoke the PARENT's agent: the child (another agent) dies with it.
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "agent", "tenant": "acme", "id": "triage"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_refused(
        &b.exchange(&m1, &k1, "crm", "read"),
        400,
        "invalid_grant",
        "revoked (agent)",
    );
    assert_eq!(introspect(&b, &cred)["active"], false);
}

/// A suspended run cannot escape its suspension by delegating: it starts
/// no child, and the children it started before wait with it (their
/// exchanges and MCP/proxy calls are judged by the whole lineage).
#[test]
fn a_suspended_run_delegates_nothing_and_its_children_wait_with_it() {
    let b = Broker::start("sec-suspend-subtree");
    let grant = b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "helper", "owner": "team-ops", "envelope": ["crm:read"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (root, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let (child, m1, k1) = delegate(&b, &m0, &k0, "helper", None);
    let (s, v) = b.exchange(&m1, &k1, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.admin_post(
        &format!("/v1/runs/{root}/suspend"),
        json!({"reason": "looks odd"}),
    );
    assert_eq!(s, 200, "{v}");
    // The parent starts no child now.
    let fresh = key();
    let (s, v) = delegate_with(
        &b,
        &m0,
        &k0,
        json!({"agent": "helper", "jwk": fresh.public().to_json()}),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("suspended"),
        "{v}"
    );
    // The child started before waits, naming the suspended ancestor.
    let (s, v) = b.exchange(&m1, &k1, "crm", "read");
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "authorization_pending", "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains(&root),
        "{v}"
    );
    // The child itself may not delegate further either.
    let (s, v) = delegate_with(
        &b,
        &m1,
        &k1,
        json!({"agent": "helper", "jwk": key().public().to_json()}),
    );
    assert_eq!(s, 403, "{v}");
    // Resumed: both work again.
    let (s, v) = b.admin_post(&format!("/v1/runs/{root}/resume"), json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(b.exchange(&m1, &k1, "crm", "read").0, 200);
    let _ = child;
}

#[test]
fn revoking_a_narrowed_mandate_ends_only_its_own_subtree() {
    let b = Broker::start("sec-subrevoke");
    let grant = b.seed("acme");
    let (run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let k1 = key();
    let m1 = attenuate(
        &m0,
        &k0,
        &Narrowing {
            capabilities: Some(CapabilitySet::parse(&["crm:read"]).unwrap()),
            next_holder: Some(k1.kid()),
            ..Default::default()
        },
    )
    .unwrap();
    let (s, v) = b.exchange(&m1, &k1, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let sub_cred = v["access_token"].as_str().unwrap().to_owned();
    let k2 = key();
    let m2 = attenuate(
        &m1,
        &k1,
        &Narrowing {
            next_holder: Some(k2.kid()),
            ..Default::default()
        },
    )
    .unwrap();
    // Whoever holds m1 revokes it (RFC 7009, no proof needed to give up).
    assert_eq!(revoke_rfc7009(&b, &m1), 200);
    // Its subtree is gone: m1, what extends it, credentials made from it.
    assert_refused(
        &b.exchange(&m1, &k1, "crm", "read"),
        400,
        "invalid_grant",
        "revoked (block)",
    );
    assert_refused(
        &b.exchange(&m2, &k2, "crm", "read"),
        400,
        "invalid_grant",
        "revoked",
    );
    assert_eq!(introspect(&b, &sub_cred)["active"], false);
    // The parent run goes on.
    assert_eq!(b.exchange(&m0, &k0, "crm", "read").0, 200);
    let (_, runs) = b.admin_get("/v1/runs?tenant=acme");
    let r = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.as_str())
        .unwrap()
        .clone();
    assert!(r["ended_ms"].is_null(), "{r}");
    // Revoking again writes nothing new (idempotent, unauthenticated).
    let before = b.audit("type=revoke").len();
    assert_eq!(revoke_rfc7009(&b, &m1), 200);
    assert_eq!(b.audit("type=revoke").len(), before);
}

#[test]
fn proofs_by_the_wrong_key_do_not_count_against_the_run() {
    let b = Broker::start_with("sec-wrongkey", |c| {
        c.anomaly_denials_1m = 3;
        c.suspend_on_anomaly = true;
    });
    let grant = b.seed("acme");
    let (_run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    // Someone who saw the mandate but lacks its key.
    let thief = key();
    for _ in 0..10 {
        assert_refused(
            &b.exchange(&m, &thief, "crm", "read"),
            400,
            "invalid_dpop_proof",
            "",
        );
    }
    // The run is not suspended: its holder goes on.
    let (s, v) = b.exchange(&m, &k, "crm", "read");
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_jwt_audience_names_one_tool_across_the_broker() {
    let b = Broker::start("sec-aud");
    b.seed("acme");
    assert_eq!(b.admin_post("/v1/tenants", json!({"name": "evil"})).0, 201);
    // Tenant evil tries to register a tool with acme's crm audience, so that
    // its own runs' credentials would verify at acme's CRM.
    let (s, v) = b.admin_post(
        "/v1/tenants/evil/tools",
        json!({"name": "crm2", "audience": "https://crm.acme.example", "actions": ["read"]}),
    );
    assert_refused(&(s, v), 409, "conflict", "unique across the broker");
    // Proxy tools of two tenants may share a name.
    for t in ["acme", "evil"] {
        let (s, v) = b.admin_post(
            &format!("/v1/tenants/{t}/tools"),
            json!({"name": "mail", "provider": "proxy", "actions": ["send"],
                   "proxy": {"upstream": "http://127.0.0.1:9",
                             "routes": [{"method": "POST", "path": "/send", "action": "send"}],
                             "inject": {"header": "Authorization", "format": "Bearer {secret}"}}}),
        );
        assert_eq!(s, 201, "{t}: {v}");
    }
}

/// Refusals before a run's key is proven are anyone's: they go through the
/// per-client throttle, so a flood of garbage writes a few events, not one
/// per request (token endpoint and proxy).
#[test]
fn unauthenticated_refusals_do_not_write_one_event_each() {
    let b = Broker::start("sec-flood");
    b.seed("acme");
    let before = b.audit("limit=100000").len();
    for i in 0..60 {
        let (s, _) = b.exchange_raw(&form(&format!("garbage{i}"), "crm", "read"), Some("x"));
        assert_eq!(s, 400);
        let r = Broker::agent()
            .get(format!("{}/proxy/crm/items/{i}", b.url))
            .header("Authorization", "Bearer garbage")
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let added = b.audit("limit=100000").len() - before;
    assert!(
        added <= 8,
        "{added} events for 120 unauthenticated refusals"
    );
    assert!(
        !b.audit("type=token.exchange&decision=deny").is_empty(),
        "the refusals are not audited at all"
    );
}

/// Narrowed mandates are minted offline by whoever holds a run's key: none
/// is cached before its holder proves the key, and RFC 7009 revokes at most
/// 64 of one run (each is a line in the log and feed).
#[test]
fn narrowed_mandates_fill_no_cache_and_the_revocation_log_only_so_far() {
    let b = Broker::start("sec-narrowed");
    let grant = b.seed("acme");
    let (run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let narrowed: Vec<String> = (0..70)
        .map(|i| {
            attenuate(
                &m0,
                &k0,
                &Narrowing {
                    next_holder_name: Some(format!("copy-{i}")),
                    ..Default::default()
                },
            )
            .unwrap()
        })
        .collect();
    for m in &narrowed[..20] {
        let (s, _) = b.exchange_raw(&form(m, "crm", "read"), Some("not-a-proof"));
        assert_eq!(s, 400);
    }
    assert_eq!(b.state.attenuated.lock().unwrap().len(), 0);
    let cached = b.state.mandates.lock().unwrap().len();
    assert!(cached <= 1, "{cached} mandates cached before any proof");
    // Proven: cached then (bounded).
    assert_eq!(b.exchange(&narrowed[0], &k0, "crm", "read").0, 200);
    assert_eq!(b.state.attenuated.lock().unwrap().len(), 1);
    for m in &narrowed[..64] {
        assert_eq!(revoke_rfc7009(&b, m), 200);
    }
    assert_eq!(revoke_rfc7009(&b, &narrowed[64]), 400);
    // A restart does not reset the count (it is read back from the trail).
    let b = b.restart();
    assert_eq!(revoke_rfc7009(&b, &narrowed[65]), 400);
    let (_, log) = b.admin_get("/v1/revocations/log?after=0");
    let blocks = log["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"].as_str().unwrap_or("").starts_with("block:"))
        .count();
    assert_eq!(blocks, 64);
    // The run itself can still be ended by its holder.
    assert_eq!(revoke_rfc7009(&b, &m0), 200);
    assert_refused(
        &b.exchange(&m0, &k0, "crm", "read"),
        400,
        "invalid_grant",
        "revoked (run)",
    );
    assert!(!run.is_empty());
}
