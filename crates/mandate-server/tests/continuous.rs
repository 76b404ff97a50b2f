//! Continuous authorization (issue 5 §2): each exchange is judged with what
//! the run already did (budgets, eval gates), that history survives a
//! restart, and anomalies raise alerts and suspend the run until an admin
//! resumes it.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use serde_json::{Value, json};

fn put_policy(b: &Broker, name: &str, src: &str) {
    let (s, v) = b.admin_put_text(&format!("/v1/tenants/acme/policies/{name}"), src);
    assert_eq!(s, 200, "{v}");
}

#[test]
fn budgets_and_eval_gates_see_the_run_history_even_after_a_restart() {
    let b = Broker::start("ca-budget");
    let grant = b.seed("acme");
    put_policy(
        &b,
        "budget",
        r#"@id("three-crm-reads") forbid (principal, action == Mandate::Action::"exchange", resource == Mandate::Tool::"crm")
           when { context.history.tool_exchanges >= 3 };
           @id("github-after-evals") forbid (principal, action == Mandate::Action::"exchange", resource == Mandate::Tool::"github")
           when { !context.history.evals_passed.contains("regression") };"#,
    );
    let (run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    for _ in 0..3 {
        assert_eq!(b.exchange(&m, &k, "crm", "read").0, 200);
    }
    assert_refused(
        &b.exchange(&m, &k, "crm", "read"),
        403,
        "access_denied",
        "budget/three-crm-reads",
    );
    // Another run has its own budget.
    let (_, m2, k2) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&m2, &k2, "crm", "read").0, 200);

    // The eval gate: refused until the orchestrator reports a pass.
    assert_refused(
        &b.exchange(&m, &k, "github", "read"),
        403,
        "access_denied",
        "github-after-evals",
    );
    let (s, v) = b.admin_post(
        &format!("/v1/runs/{run}/evals"),
        json!({"name": "regression", "passed": true, "score": 0.97}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(b.exchange(&m, &k, "github", "read").0, 200);
    // Bad reports.
    assert_eq!(
        b.admin_post(
            "/v1/runs/run_nope/evals",
            json!({"name": "regression", "passed": true})
        )
        .0,
        404
    );
    assert_eq!(
        b.admin_post(
            &format!("/v1/runs/{run}/evals"),
            json!({"name": "Bad Name", "passed": true})
        )
        .0,
        400
    );
    assert_eq!(
        b.admin_post(&format!("/v1/runs/{run}/evals"), json!({"name": "x"}))
            .0,
        400
    );

    // After a restart the broker still knows what the run did.
    let b = b.restart();
    assert_refused(
        &b.exchange(&m, &k, "crm", "read"),
        403,
        "access_denied",
        "three-crm-reads",
    );
    assert_eq!(
        b.exchange(&m, &k, "github", "read").0,
        200,
        "the eval pass is remembered"
    );
    // A failing report withdraws the pass.
    let (s, _) = b.admin_post(
        &format!("/v1/runs/{run}/evals"),
        json!({"name": "regression", "passed": false}),
    );
    assert_eq!(s, 200);
    assert_refused(
        &b.exchange(&m, &k, "github", "read"),
        403,
        "access_denied",
        "github-after-evals",
    );
}

#[test]
fn a_denial_burst_raises_an_alert_and_suspends_the_run_until_resumed() {
    let b = Broker::start_with("ca-anomaly", |c| {
        c.anomaly_denials_1m = 3;
        c.suspend_on_anomaly = true;
        c.anomaly_new_tool = true;
    });
    let grant = b.seed("acme");
    let (run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    // The first credential for a tool this agent never used: an alert, once.
    assert_eq!(b.exchange(&m, &k, "crm", "read").0, 200);
    assert_eq!(b.audit("type=alert.new_tool").len(), 1);
    // Suspension from the new-tool alert: resume first.
    let (s, v) = b.admin_post(&format!("/v1/runs/{run}/resume"), json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(b.exchange(&m, &k, "crm", "read").0, 200);
    assert_eq!(b.audit("type=alert.new_tool").len(), 1);
    // Three denials in a minute.
    for _ in 0..3 {
        assert_eq!(b.exchange(&m, &k, "crm", "write").0, 400);
    }
    let alerts = b.audit("type=alert.denial_burst");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["run"], run.as_str());
    assert_eq!(alerts[0]["decision"], "suspend");
    // Suspended: even an allowed request waits for an admin.
    assert_refused(
        &b.exchange(&m, &k, "crm", "read"),
        400,
        "authorization_pending",
        "suspended",
    );
    // Suspension survives a restart.
    let b = b.restart();
    assert_refused(
        &b.exchange(&m, &k, "crm", "read"),
        400,
        "authorization_pending",
        "suspended",
    );
    let (s, _) = b.admin_post(&format!("/v1/runs/{run}/resume"), json!({}));
    assert_eq!(s, 200);
    assert_eq!(b.exchange(&m, &k, "crm", "read").0, 200);
    assert_eq!(
        b.admin_post(&format!("/v1/runs/{run}/resume"), json!({})).0,
        409,
        "not suspended"
    );
    // An admin can suspend by hand; revoking ends it for good.
    let (s, _) = b.admin_post(
        &format!("/v1/runs/{run}/suspend"),
        json!({"reason": "looks odd"}),
    );
    assert_eq!(s, 200);
    assert_refused(
        &b.exchange(&m, &k, "crm", "read"),
        400,
        "authorization_pending",
        "looks odd",
    );
    let (s, _) = b.admin_post("/v1/revocations", json!({"kind": "run", "id": run}));
    assert_eq!(s, 200);
    assert_refused(
        &b.exchange(&m, &k, "crm", "read"),
        400,
        "invalid_grant",
        "revoked",
    );
    assert_eq!(b.admin_post("/v1/runs/run_nope/suspend", json!({})).0, 404);
    // An ended run cannot be suspended, resumed or given eval results.
    let (s, _) = b.admin_post(&format!("/v1/runs/{run}/end"), json!({}));
    assert_eq!(s, 200);
    assert_refused(
        &b.admin_post(&format!("/v1/runs/{run}/suspend"), json!({})),
        409,
        "conflict",
        "has ended",
    );
    assert_refused(
        &b.admin_post(
            &format!("/v1/runs/{run}/evals"),
            json!({"name": "x", "passed": true}),
        ),
        409,
        "conflict",
        "has ended",
    );
    assert_refused(
        &b.admin_post(
            &format!("/v1/runs/{run}/suspend"),
            json!({"reason": "\u{7}bell"}),
        ),
        400,
        "invalid_request",
        "",
    );
}

#[test]
fn a_request_rate_spike_raises_an_alert() {
    let b = Broker::start_with("ca-rate", |c| c.anomaly_rate_1m = 5);
    let grant = b.seed("acme");
    let (run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    for _ in 0..6 {
        assert_eq!(
            b.exchange(&m, &k, "crm", "read").0,
            200,
            "not suspended: only alerts by default"
        );
    }
    let alerts = b.audit("type=alert.rate_spike");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["run"], run.as_str());
    assert_eq!(alerts[0]["details"]["requests_1m"], 6);
}

/// `GET /v1/runs` says where each run stands: active, suspended, ended,
/// revoked (and by which id, also through its grant), expired.
#[test]
fn run_listing_says_where_each_run_stands() {
    let b = Broker::start("run-status");
    let grant = b.seed("acme");
    let runs: Vec<String> = (0..5)
        .map(|_| b.start_run("acme", &grant, Alg::EdDSA).0)
        .collect();
    let status = |b: &Broker| -> std::collections::HashMap<String, (String, Value)> {
        let (s, v) = b.admin_get("/v1/runs?tenant=acme");
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_owned(),
                    (
                        r["status"].as_str().unwrap().to_owned(),
                        r["revoked_by"].clone(),
                    ),
                )
            })
            .collect()
    };
    assert!(status(&b).values().all(|(s, _)| s == "active"));
    b.admin_post(&format!("/v1/runs/{}/suspend", runs[0]), json!({}));
    b.admin_post(&format!("/v1/runs/{}/end", runs[1]), json!({}));
    b.admin_post("/v1/revocations", json!({"kind": "run", "id": runs[2]}));
    let now = status(&b);
    assert_eq!(now[&runs[0]].0, "suspended");
    assert_eq!(now[&runs[1]].0, "ended");
    assert_eq!(
        now[&runs[2]],
        ("revoked".to_owned(), json!(format!("run:{}", runs[2])))
    );
    assert_eq!(now[&runs[3]].0, "active");
    // Revoking the grant revokes every run under it.
    b.admin_post("/v1/revocations", json!({"kind": "grant", "id": grant}));
    let now = status(&b);
    assert_eq!(
        now[&runs[4]],
        ("revoked".to_owned(), json!(format!("grant:{grant}")))
    );
    // A fresh run, then past every mandate's life.
    let grant2 = b.admin_post(
        "/v1/tenants/acme/grants",
        json!({"principal": "alice@example.com", "agent": "triage", "capabilities": ["crm:read"], "task": "t"}),
    ).1["id"].as_str().unwrap().to_owned();
    let (fresh, _, _) = b.start_run("acme", &grant2, Alg::EdDSA);
    assert_eq!(status(&b)[&fresh].0, "active");
    b.advance(7200);
    assert_eq!(status(&b)[&fresh].0, "expired");
}
