//! The example policies in `examples/policies/` do what their comments say
//! (issue 5 §2): budget, sequence rule with approval, time window, prod guard.
#![allow(clippy::unwrap_used)]

use mandate_core::policy::{Details, Engine, ExchangeFacts, History, TenantPolicies};

fn load(files: &[(&str, &str)]) -> (Engine, TenantPolicies) {
    let e = Engine::new_validating().unwrap();
    let mut all = Vec::new();
    for (name, src) in files {
        all.extend(e.parse_policies(name, src).unwrap());
    }
    let p = e.compile(&all).unwrap();
    (e, p)
}

const BASELINE: &str = include_str!("../../../examples/policies/baseline.cedar");

struct Case {
    labels: Vec<String>,
    risk: &'static str,
    action: Vec<String>,
    now: u64,
    approved: bool,
    details: Details,
    history: History,
}

impl Case {
    fn new(labels: &[&str]) -> Self {
        Case {
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            risk: "medium",
            action: vec!["send".into()],
            // Wednesday 2027-01-13 12:00 UTC.
            now: 1_799_841_600,
            approved: false,
            details: Details::default(),
            history: History::default(),
        }
    }
    fn facts(&self) -> ExchangeFacts<'_> {
        ExchangeFacts {
            tenant: "acme",
            now: self.now,
            agent: "bot",
            agent_owner: "ops",
            agent_purpose: "p",
            run: "run_1",
            task: "t",
            principal: Some("alice"),
            grant: Some("grt_1"),
            tool: "tool",
            tool_audience: "https://tool.example",
            tool_labels: &self.labels,
            tool_risk: self.risk,
            tool_provider: "jwt",
            actions: &self.action,
            depth: 0,
            hops: 0,
            approved: self.approved,
            details: &self.details,
            history: &self.history,
        }
    }
}

#[test]
fn budget_counts_exchanges_and_amounts() {
    let (e, p) = load(&[
        ("baseline", BASELINE),
        (
            "budget",
            include_str!("../../../examples/policies/budget.cedar"),
        ),
    ]);
    let mut c = Case::new(&[]);
    c.history.tool_exchanges = 19;
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);
    c.history.tool_exchanges = 20;
    let v = e.decide(&p, &c.facts()).unwrap();
    assert_eq!(v.policies, ["budget/tool-budget"]);
    assert!(v.approval.is_none());

    let mut c = Case::new(&["money"]);
    assert_eq!(
        e.decide(&p, &c.facts()).unwrap().policies,
        ["budget/money-needs-an-amount"]
    );
    c.details.amount = Some(20_000);
    c.history.amount_total = 30_000;
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);
    c.history.amount_total = 30_001;
    assert_eq!(
        e.decide(&p, &c.facts()).unwrap().policies,
        ["budget/money-budget"]
    );
}

#[test]
fn pii_then_external_send_needs_the_principal_and_payments_need_finance() {
    let (e, p) = load(&[
        ("baseline", BASELINE),
        (
            "approvals",
            include_str!("../../../examples/policies/approvals.cedar"),
        ),
    ]);
    let mut c = Case::new(&["external_send"]);
    assert!(e.decide(&p, &c.facts()).unwrap().allowed, "no pii read yet");
    c.history.labels_touched = vec!["pii".into()];
    let v = e.decide(&p, &c.facts()).unwrap();
    assert!(!v.allowed);
    let need = v.approval.unwrap();
    assert_eq!(need.each.len(), 1);
    assert_eq!(need.each[0].approvers, ["principal"]);
    assert_eq!(need.policies(), ["approvals/pii-then-external-send"]);
    c.approved = true;
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);

    let mut c = Case::new(&["money"]);
    c.details.amount = Some(10_000);
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);
    c.details.amount = Some(10_001);
    let v = e.decide(&p, &c.facts()).unwrap();
    assert_eq!(v.approval.unwrap().each[0].approvers, ["group:finance"]);

    // Production deploys wait for the principal; reads do not.
    let mut c = Case::new(&["prod"]);
    c.action = vec!["deploy".into()];
    let v = e.decide(&p, &c.facts()).unwrap();
    assert_eq!(v.approval.unwrap().policies(), ["approvals/prod-deploys"]);
    c.approved = true;
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);
    c.action = vec!["read".into()];
    c.approved = false;
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);
}

#[test]
fn two_approval_policies_each_need_their_own_approvers() {
    // A 25,000.00 payment that is also a production deploy: finance AND the
    // principal, never one approver for both (separation of duties).
    let (e, p) = load(&[
        ("baseline", BASELINE),
        (
            "approvals",
            include_str!("../../../examples/policies/approvals.cedar"),
        ),
    ]);
    let mut c = Case::new(&["money", "prod"]);
    c.action = vec!["deploy".into()];
    c.details.amount = Some(2_500_000);
    let v = e.decide(&p, &c.facts()).unwrap();
    assert!(!v.allowed);
    let need = v.approval.unwrap();
    assert_eq!(
        need.policies(),
        ["approvals/large-payments", "approvals/prod-deploys"]
    );
    assert_eq!(need.each[0].approvers, ["group:finance"]);
    assert_eq!(need.each[1].approvers, ["principal"]);
}

#[test]
fn an_erroring_policy_denies_and_the_budget_cannot_overflow() {
    let (e, p) = load(&[
        ("baseline", BASELINE),
        (
            "budget",
            include_str!("../../../examples/policies/budget.cedar"),
        ),
    ]);
    let mut c = Case::new(&["money"]);
    // `amount_total + amount` overflows a Cedar long: the `forbid` errors,
    // Cedar skips it, and the permit alone would allow. It must deny.
    c.history.amount_total = 10;
    c.details.amount = Some(i64::MAX);
    let v = e.decide(&p, &c.facts()).unwrap();
    assert!(!v.allowed, "an erroring forbid must deny: {v:?}");
    let why = v.reason.unwrap();
    assert!(why.contains("failed to evaluate"), "{why}");
    assert!(v.approval.is_none());
    // The core bound refuses such amounts and totals before policy runs.
    assert!(mandate_core::policy::add_amount(10, i64::MAX).is_err());
    assert!(mandate_core::policy::add_amount(mandate_core::policy::MAX_AMOUNT_TOTAL, 1).is_err());
    assert_eq!(mandate_core::policy::add_amount(10, 5), Ok(15));
    assert!(mandate_core::policy::add_amount(0, -1).is_err());
}

#[test]
fn time_window_and_prod_guard() {
    let (e, p) = load(&[
        ("baseline", BASELINE),
        (
            "hours",
            include_str!("../../../examples/policies/time-window.cedar"),
        ),
        (
            "prod",
            include_str!("../../../examples/policies/prod-guard.cedar"),
        ),
    ]);
    let mut c = Case::new(&[]);
    c.risk = "high";
    assert!(e.decide(&p, &c.facts()).unwrap().allowed, "Wednesday noon");
    c.now += 7 * 3600; // 19:00
    assert_eq!(
        e.decide(&p, &c.facts()).unwrap().policies,
        ["hours/business-hours"]
    );
    c.now += 3 * 86_400 - 7 * 3600; // Saturday noon
    assert!(!e.decide(&p, &c.facts()).unwrap().allowed);

    let mut c = Case::new(&["prod"]);
    c.action = vec!["deploy".into()];
    assert_eq!(
        e.decide(&p, &c.facts()).unwrap().policies,
        ["prod/prod-writes-need-evals"]
    );
    c.history.evals_passed = vec!["regression".into()];
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);
    let mut c = Case::new(&["prod"]);
    c.action = vec!["read".into()];
    assert!(e.decide(&p, &c.facts()).unwrap().allowed);
}

#[test]
fn approval_annotations_are_checked_when_loaded() {
    let e = Engine::new().unwrap();
    for bad in [
        r#"@approval("principal") permit (principal, action, resource);"#,
        r#"@approval("everyone") forbid (principal, action == Mandate::Action::"exchange", resource) unless { context.approved };"#,
        r#"@approval("group:Bad Name") forbid (principal, action == Mandate::Action::"exchange", resource) unless { context.approved };"#,
    ] {
        let errs = e.parse_policies("x", bad).unwrap_err();
        assert!(errs[0].message.contains("approval"), "{errs:?}");
    }
    assert!(
        e.parse_policies(
            "x",
            r#"@approval("principal, group:finance") forbid (principal, action == Mandate::Action::"exchange", resource) unless { context.approved };"#
        )
        .is_ok()
    );
}
