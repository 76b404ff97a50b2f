//! Availability, attacked over real HTTP: policy text that would overflow
//! a stack.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// Policy text with `n` levels of each nesting an attacker can reach for.
fn deep_policies(n: usize) -> Vec<(&'static str, String)> {
    let head = "permit (principal, action == Mandate::Action::\"exchange\", resource) when { ";
    vec![
        (
            "parentheses",
            format!("{head}{}true{} }};", "(".repeat(n), ")".repeat(n)),
        ),
        (
            "sets",
            format!("{head}{}1{}.contains(1) }};", "[".repeat(n), "]".repeat(n)),
        ),
        (
            "records",
            format!("{head}{}1{} has a }};", "{a: ".repeat(n), "}".repeat(n)),
        ),
        (
            "if",
            format!("{head}{}true }};", "if true then true else ".repeat(n)),
        ),
    ]
}

/// Policy text with `n` operators in a chain, without brackets.
fn long_chains(n: usize) -> Vec<(&'static str, String)> {
    let head = "permit (principal, action == Mandate::Action::\"exchange\", resource) when { ";
    vec![
        ("negations", format!("{head}{}true }};", "!".repeat(n))),
        (
            "or-chain",
            format!("{head}{}true }};", "true || ".repeat(n)),
        ),
        ("sums", format!("{head}{}1 == 1 }};", "1 + ".repeat(n))),
    ]
}

#[test]
fn deeply_nested_policies_are_refused_and_the_broker_stays_up() {
    let b = Broker::start("dos-policy");
    b.seed("acme");
    let over = mandate_core::policy_limits::MAX_OPERATORS + 1;
    let attempts = [200, 10_000]
        .into_iter()
        .flat_map(|n| deep_policies(n).into_iter().map(move |p| (n, p)))
        .chain(
            [over, 10_000]
                .into_iter()
                .flat_map(|n| long_chains(n).into_iter().map(move |p| (n, p))),
        );
    {
        for (n, (shape, src)) in attempts {
            let src: String = src.chars().take(60 * 1024).collect();
            let got = b.admin_put_text("/v1/tenants/acme/policies/deep", &src);
            assert_eq!(got.0, 400, "{shape} x{n}: {}", got.1);
            assert_eq!(got.1["error"], "invalid_request", "{shape}: {}", got.1);
            let d = got.1["error_description"].as_str().unwrap();
            assert!(
                ["nested more than 32", "operators", "`if` expressions"]
                    .iter()
                    .any(|w| d.contains(w)),
                "{shape} x{n}: {d}"
            );
            assert!(got.1["problems"][0]["column"].as_u64().unwrap() > 1);
        }
    }
    // Still serving: the baseline is still in force and a policy loads.
    assert_eq!(
        b.admin_put_text(
            "/v1/tenants/acme/policies/ok",
            "permit (principal, action == Mandate::Action::\"exchange\", resource) when { ((true)) };"
        )
        .0,
        200
    );
    assert_eq!(b.admin_get("/v1/tenants/acme/policies").0, 200);
}

#[test]
fn a_tenant_holds_a_bounded_number_of_policies() {
    let b = Broker::start("dos-policy-count");
    b.seed("acme");
    let one = "permit (principal, action == Mandate::Action::\"exchange\", resource) when { context.action == \"read\" };\n";
    let per_set = mandate_core::policy_limits::MAX_POLICIES;
    let sets = mandate_core::policy_limits::MAX_TENANT_POLICIES / per_set;
    for i in 0..sets {
        let got = b.admin_put_text(
            &format!("/v1/tenants/acme/policies/s{i}"),
            &one.repeat(per_set),
        );
        if i + 1 < sets {
            assert_eq!(got.0, 200, "{}", got.1);
        } else {
            // The baseline's policies are there too: this one is over.
            assert_refused(&got, 400, "invalid_request", "at most");
        }
    }
    // Replacing a set counts the new text, not the old one as well.
    assert_eq!(b.admin_put_text("/v1/tenants/acme/policies/s0", one).0, 200);
}
