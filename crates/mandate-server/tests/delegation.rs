//! Online delegation (issue 4 §1): a run starts child runs for sub-agents
//! with their own keys; each hop holds less or the same, never more; the
//! credential's `act` chain leads back to the human; revoking a parent
//! revokes every descendant at once.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::client::dpop_proof;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::json;

fn setup(tag: &str, tweak: impl FnOnce(&mut mandate_server::Config)) -> (Broker, String) {
    let b = Broker::start_with(tag, tweak);
    let grant = b.seed("acme");
    for (name, env) in [
        ("researcher", json!(["crm:*"])),
        ("summarizer", json!(["crm:read"])),
    ] {
        let (s, v) = b.admin_post(
            "/v1/tenants/acme/agents",
            json!({"name": name, "owner": "team-ops", "envelope": env}),
        );
        assert_eq!(s, 201, "{v}");
    }
    (b, grant)
}

#[test]
fn three_levels_narrow_carry_the_chain_and_die_with_the_root() {
    let (b, grant) = setup("deleg-3", |_| {});
    let (root, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    // Asking for more than the parent holds gets the intersection.
    let (child, m1, k1) = delegate(
        &b,
        &m0,
        &k0,
        "researcher",
        Some(json!(["crm:*", "github:read"])),
    );
    let (grandchild, m2, k2) = delegate(&b, &m1, &k1, "summarizer", None);

    let (s, v) = b.exchange(&m2, &k2, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let cred = v["access_token"].as_str().unwrap().to_owned();
    let c = introspect(&b, &cred);
    assert_eq!(c["active"], true);
    assert_eq!(c["sub"], "alice@example.com");
    assert!(
        c["act"]["sub"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/run/{grandchild}"))
    );
    assert!(
        c["act"]["act"]["sub"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/run/{child}"))
    );
    assert!(
        c["act"]["act"]["act"]["sub"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/run/{root}"))
    );
    assert!(c["act"]["act"]["act"].get("act").is_none());
    // Never more: the grandchild cannot reach what the root holds but the chain narrowed away.
    assert_refused(
        &b.exchange(&m2, &k2, "github", "read"),
        400,
        "invalid_scope",
        "not granted",
    );
    assert_refused(
        &b.exchange(&m1, &k1, "crm", "write"),
        400,
        "invalid_scope",
        "not granted",
    );

    // Inspecting the grandchild's mandate shows the whole chain.
    let (s, v) = b.admin_post("/v1/tokens/inspect", json!({"token": m2}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["depth"], 2);
    let hops: Vec<&str> = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert!(
        hops[1].ends_with(&format!("/run/{root}")) && hops[2].ends_with(&format!("/run/{child}")),
        "{hops:?}"
    );
    assert!(hops[4].ends_with(&format!("/run/{grandchild}")), "{hops:?}");

    // Revoking the root revokes every descendant, at once.
    let (s, v) = b.admin_post("/v1/revocations", json!({"kind": "run", "id": root}));
    assert_eq!(s, 200, "{v}");
    for (m, k) in [(&m1, &k1), (&m2, &k2)] {
        assert_refused(
            &b.exchange(m, k, "crm", "read"),
            400,
            "invalid_grant",
            "revoked",
        );
    }
    assert_eq!(introspect(&b, &cred)["active"], false);
    let (s, _) = delegate_with(
        &b,
        &m1,
        &k1,
        json!({"agent": "summarizer", "jwk": k2.public().to_json()}),
    );
    assert_eq!(s, 400);
    let evs = b.audit("type=run.delegate&decision=allow");
    assert_eq!(evs.len(), 2);
    // The refusal is in the trail too (issue 10, item 16).
    assert_eq!(b.audit("type=run.delegate&decision=deny").len(), 1);
    assert_eq!(
        evs.iter().find(|e| e["run"] == grandchild).unwrap()["details"]["ancestors"],
        json!([child, root])
    );
}

/// Delegations from one run at once cannot pass its children limit
/// together: the count is checked again in the commit.
#[test]
fn concurrent_delegations_stop_at_the_children_limit() {
    let (b, grant) = setup("deleg-race", |c| c.max_children = 3);
    let (_, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let made: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (b, m0, k0) = (&b, &m0, &k0);
                scope.spawn(move || {
                    let child = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
                    let body = json!({"agent": "researcher", "jwk": child.public().to_json()});
                    delegate_with(b, m0, k0, body).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(made.iter().filter(|s| **s == 201).count(), 3, "{made:?}");
    assert!(made.iter().all(|s| *s == 201 || *s == 403), "{made:?}");
}

#[test]
fn delegation_refusals_say_why() {
    let (b, grant) = setup("deleg-refuse", |c| {
        c.max_delegation_depth = 2;
        c.max_children = 2;
    });
    let (_, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let child = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let body = |agent: &str| json!({"agent": agent, "jwk": child.public().to_json()});
    // Proof by a key that is not the parent's; the parent's own key for the child.
    assert_refused(
        &delegate_with(&b, &m0, &child, body("researcher")),
        400,
        "invalid_dpop_proof",
        "cnf.jkt",
    );
    let mut same = body("researcher");
    same["jwk"] = k0.public().to_json();
    assert_refused(
        &delegate_with(&b, &m0, &k0, same),
        400,
        "invalid_request",
        "its own key",
    );
    // Nothing in common; an unknown sub-agent; a forged mandate; too long a life.
    let mut disjoint = body("researcher");
    disjoint["capabilities"] = json!(["github:push"]);
    assert_refused(
        &delegate_with(&b, &m0, &k0, disjoint),
        403,
        "insufficient_scope",
        "no capabilities",
    );
    assert_refused(
        &delegate_with(&b, &m0, &k0, body("ghost")),
        404,
        "not_found",
        "agent `ghost`",
    );
    assert_refused(
        &delegate_with(&b, "garbage", &k0, body("researcher")),
        400,
        "invalid_grant",
        "mandate",
    );
    let mut long = body("researcher");
    long["ttl_secs"] = json!(999_999);
    assert_refused(
        &delegate_with(&b, &m0, &k0, long),
        400,
        "invalid_request",
        "ttl_secs",
    );
    // A replayed proof.
    let url = format!("{}/v1/runs/delegate", b.url);
    let proof = dpop_proof(&k0, "POST", &url, now(), &jti(), None, None);
    let send = || {
        let mut v = body("researcher");
        v["mandate"] = json!(m0);
        read(
            Broker::agent()
                .post(&url)
                .header("DPoP", &proof)
                .send_json(&v)
                .unwrap(),
        )
    };
    assert_eq!(send().0, 201);
    assert_refused(&send(), 400, "invalid_dpop_proof", "already used");
    // Expiry never beyond the parent's; depth and fan-out bounded.
    let (_, m1, k1) = delegate(&b, &m0, &k0, "researcher", None);
    let c1 = introspect(&b, &m1);
    let c0 = introspect(&b, &m0);
    assert!(c1["exp"].as_u64().unwrap() <= c0["exp"].as_u64().unwrap());
    let (_, m2, k2) = delegate(&b, &m1, &k1, "summarizer", None);
    assert_refused(
        &delegate_with(&b, &m2, &k2, body("summarizer")),
        403,
        "insufficient_scope",
        "depth 3",
    );
    assert_refused(
        &delegate_with(&b, &m0, &k0, body("researcher")),
        403,
        "insufficient_scope",
        "limit",
    );
}

/// Depth and fan-out are bounded by the tenant's policy (Cedar action
/// `delegate`), and exchange policies see depth and offline hops.
#[test]
fn policy_bounds_delegation_and_sees_depth() {
    let (b, grant) = setup("deleg-policy", |_| {});
    let (s, v) = b.admin_put_text(
        "/v1/tenants/acme/policies/depth",
        r#"
        @id("one-level-only") forbid (principal, action == Mandate::Action::"delegate", resource)
        when { context.depth > 1 };
        @id("handed-on-no-github") forbid (principal, action == Mandate::Action::"exchange", resource == Mandate::Tool::"github")
        when { context.hops > 0 };
        "#,
    );
    assert_eq!(s, 200, "{v}");
    let (_, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let (child, m1, k1) = delegate(&b, &m0, &k0, "researcher", None);
    // The child holds crm:read only (grant ∩ envelope), so ask it to read: allowed.
    assert_eq!(b.exchange(&m1, &k1, "crm", "read").0, 200);
    // Depth 2 is forbidden by the tenant's policy, named in the refusal.
    let grandchild = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let (s, v) = delegate_with(
        &b,
        &m1,
        &k1,
        json!({"agent": "summarizer", "jwk": grandchild.public().to_json()}),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("depth/one-level-only"),
        "{v}"
    );
    let ev = b.audit("type=run.delegate&decision=allow");
    assert_eq!(ev.len(), 1);
    // The policy's refusal is audited as the parent's (issue 10, item 16).
    let denied = b.audit("type=run.delegate&decision=deny");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["run"], child);
    assert!(
        denied[0]["reason"]
            .as_str()
            .unwrap()
            .contains("depth/one-level-only")
    );
    assert!(
        ev[0]["details"]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "baseline/delegate-within-bounds")
    );
    assert_eq!(ev[0]["run"], child);

    // Offline hops are visible to exchange policy: the run may read github,
    // a holder it handed the mandate to may not (crm is still fine).
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let next = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let handed = mandate_core::attenuation::attenuate(
        &m,
        &k,
        &mandate_core::attenuation::Narrowing {
            next_holder: Some(next.kid()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(b.exchange(&m, &k, "github", "read").0, 200);
    assert_refused(
        &b.exchange(&handed, &next, "github", "read"),
        403,
        "access_denied",
        "depth/handed-on-no-github",
    );
    assert_eq!(b.exchange(&handed, &next, "crm", "read").0, 200);
}
