//! Continuous authorization (issue 5 §2): each exchange is judged with what
//! the run already did (budgets, eval gates), that history survives a
//! restart, and anomalies raise alerts and suspend the run until an admin
//! resumes it.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use serde_json::json;

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
