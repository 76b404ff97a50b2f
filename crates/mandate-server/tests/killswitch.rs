//! The kill switch: `revoke --everything` refuses every mandate and
//! credential issued until then, in every tenant, at once and after a restart.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use serde_json::json;

#[test]
fn everything_issued_before_is_refused_in_every_tenant_and_new_runs_work() {
    let b = Broker::start("kill-all");
    let g1 = b.seed("acme");
    let g2 = b.seed("globex");
    let (_, m1, k1) = b.start_run("acme", &g1, Alg::EdDSA);
    let (_, m2, k2) = b.start_run("globex", &g2, Alg::ES256);
    let (s, c1) = b.exchange(&m1, &k1, "crm", "read");
    assert_eq!(s, 200, "{c1}");
    let cred = c1["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&b, &cred)["active"], true);

    assert_refused(
        &b.admin_post("/v1/revocations", json!({"kind": "everything!"})),
        400,
        "invalid_request",
        "everything",
    );
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "everything", "reason": "incident 7"}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked"].as_str().unwrap().starts_with("everything:"));
    for (m, k) in [(&m1, &k1), (&m2, &k2)] {
        assert_refused(
            &b.exchange(m, k, "crm", "read"),
            400,
            "invalid_grant",
            "revoked (everything)",
        );
    }
    assert_eq!(introspect(&b, &cred)["active"], false);
    let feed = b.admin_get("/v1/revocations/log?after=0").1;
    assert!(
        feed["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["key"] == v["revoked"])
    );

    // Runs started after the switch work (a second later: the cut is per second).
    b.advance(1);
    let (_, m3, k3) = b.start_run("acme", &g1, Alg::EdDSA);
    assert_eq!(b.exchange(&m3, &k3, "crm", "read").0, 200);

    // And after a restart the switch still holds (the restarted broker has
    // another address, so the old mandates are checked in its registry).
    let cut = b.state.reg().revoked.revoked_before();
    assert!(cut > 0);
    let dir = b.dir.clone();
    drop(b);
    let b = Broker::start_again(&dir);
    let reg = b.state.reg();
    assert_eq!(reg.revoked.revoked_before(), cut);
    assert!(reg.refused(&[], cut).unwrap().starts_with("everything:"));
    assert!(reg.refused(&[], cut + 1).is_none());
}

/// What the kill switch refuses stays refused after a restart, also for
/// credentials that do not expire with a mandate: approver credentials and
/// join tokens made before it (issue 10, review of scoped credentials).
#[test]
fn the_kill_switch_is_never_forgotten_by_approver_and_join_credentials() {
    let b = Broker::start_with("kill-scoped", |c| c.mandate_max_ttl = 2);
    let grant = b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/principals/alice@example.com/approver-tokens",
        json!({}),
    );
    assert_eq!(s, 201, "{v}");
    let approver = v["token"].as_str().unwrap().to_owned();
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents/triage/join-tokens",
        json!({"principal": "alice@example.com", "grant": grant, "ttl_secs": 3600}),
    );
    assert_eq!(s, 201, "{v}");
    let join = v["token"].as_str().unwrap().to_owned();
    let approvals = |b: &Broker| {
        read(
            Broker::agent()
                .get(format!("{}/v1/approvals", b.url))
                .header("Authorization", &format!("Bearer {approver}"))
                .call()
                .unwrap(),
        )
    };
    let start = |b: &Broker| {
        let key = mandate_core::keys::SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
        read(
            Broker::agent()
                .post(format!("{}/v1/runs", b.url))
                .header("Authorization", &format!("Bearer {join}"))
                .send_json(
                    json!({"tenant": "acme", "agent": "triage", "principal": "alice@example.com",
                    "grant": grant, "jwk": key.public().to_json()}),
                )
                .unwrap(),
        )
    };
    assert_eq!(approvals(&b).0, 200);
    let (s, v) = b.admin_post("/v1/revocations", json!({"kind": "everything"}));
    assert_eq!(s, 200, "{v}");
    assert_refused(&approvals(&b), 401, "invalid_token", "revoked (everything)");
    assert_refused(&start(&b), 401, "invalid_token", "revoked (everything)");
    // Longer than the longest mandate (2 s) later, after a restart: still refused.
    b.advance(3);
    let (dir, clock) = (b.dir.clone(), std::sync::Arc::clone(&b.clock));
    drop(b);
    let b = Broker::start_again_on(&dir, clock);
    assert_refused(&approvals(&b), 401, "invalid_token", "revoked (everything)");
    assert_refused(&start(&b), 401, "invalid_token", "revoked (everything)");
}
