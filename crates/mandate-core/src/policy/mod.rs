//! Policy: Cedar (<https://docs.cedarpolicy.com>) decides every exchange.
//!
//! The schema ships with Mandate (`schema/mandate.cedarschema`); policies are
//! validated against it in strict mode when loaded, and a refusal names the
//! line and column. Each requested action is one Cedar request with
//! `principal` = the run (a member of its agent), `action` =
//! `Mandate::Action::"exchange"`, `resource` = the tool, and the context
//! documented in the schema.

use std::str::FromStr;

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::UnixTime;
use crate::error::{Error, Result};

/// Cedar entities of one exchange (see [`Engine::entities`]).
pub use cedar_policy::Entities as PolicyEntities;

/// The schema text shipped with Mandate.
pub const SCHEMA_SRC: &str = include_str!("../../../../schema/mandate.cedarschema");

/// Longest policy file accepted.
pub const MAX_POLICY_LEN: usize = 64 * 1024;

/// A policy that failed to load, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let upto = &src[..offset.min(src.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

fn problems(src: &str, d: &dyn Diagnostic, message: String) -> PolicyProblem {
    let offset = d
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .unwrap_or(0);
    let (line, column) = line_col(src, offset);
    let mut message = message;
    if let Some(help) = d.help() {
        message.push_str(&format!(" ({help})"));
    }
    PolicyProblem {
        line,
        column,
        message,
    }
}

/// The policy engine: the parsed schema and a validator.
pub struct Engine {
    schema: Schema,
    authorizer: Authorizer,
    exchange: EntityUid,
    delegate: EntityUid,
    types: Types,
    validate_requests: bool,
}

struct Types {
    tenant: EntityTypeName,
    principal: EntityTypeName,
    agent: EntityTypeName,
    run: EntityTypeName,
    tool: EntityTypeName,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("policy::Engine")
    }
}

/// A tenant's compiled policies.
#[derive(Debug, Clone, Default)]
pub struct TenantPolicies {
    set: PolicySet,
    count: usize,
    /// The same policies sliced by the tools and actions they can reach.
    slices: std::sync::Arc<slice::Slices>,
}

impl TenantPolicies {
    /// Number of policies.
    pub fn len(&self) -> usize {
        self.count
    }
    /// True when there are none (every exchange is then denied).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One policy as stored: its id and its source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// `<set name>/<@id or index>`.
    pub id: String,
    /// The policy's Cedar text.
    pub text: String,
}

/// Why a refusal can be lifted by humans: the deciding policies all carry
/// `@approval("principal" | "group:<name>", ...)`. Each refusing policy
/// must be lifted by its own approvers (separation of duties: a payment
/// that is also a production deploy needs finance *and* the principal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNeed {
    /// Each refusing policy and who may lift it, in policy id order.
    pub each: Vec<PolicyApprovers>,
}

/// One refusing `@approval` policy and who may lift it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyApprovers {
    /// The policy id.
    pub policy: String,
    /// `principal` or `group:<name>` entries: any one of them may decide.
    pub approvers: Vec<String>,
}

impl ApprovalNeed {
    /// The policies that asked.
    pub fn policies(&self) -> Vec<String> {
        self.each.iter().map(|p| p.policy.clone()).collect()
    }
}

/// The decision for one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// True when every requested action is permitted.
    pub allowed: bool,
    /// Policies that decided (the permits that allowed, or the forbids that refused).
    pub policies: Vec<String>,
    /// When refused: which action, and why, in words a human can act on.
    pub reason: Option<String>,
    /// When refused only by `@approval` policies: who can lift it.
    pub approval: Option<ApprovalNeed>,
}

/// Checks an `@approval` annotation's value: `principal` and/or
/// `group:<name>`, comma-separated.
pub fn parse_approvers(v: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for a in v.split(',').map(str::trim) {
        match a.strip_prefix("group:") {
            Some(g) if crate::ids::check_slug("group", g).is_ok() => out.push(a.to_owned()),
            None if a == "principal" => out.push(a.to_owned()),
            _ => {
                return Err(format!(
                    "`@approval(\"{v}\")`: name `principal` and/or `group:<name>`, comma-separated"
                ));
            }
        }
    }
    Ok(out)
}

mod delegation;
mod exchange;
mod facts;
mod load;
mod mcp;
mod slice;

pub use delegation::DelegationFacts;
pub use facts::{Details, ExchangeFacts, History, MAX_AMOUNT, MAX_AMOUNT_TOTAL, add_amount};
pub use mcp::{CallAction, TenantSchema};

/// Facts of nothing yet: no declared details, no history (tests).
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Details, History};

    pub(crate) static NO_DETAILS: Details = Details {
        amount: None,
        currency: None,
        target: None,
    };
    pub(crate) static NO_HISTORY: History = History {
        exchanges: 0,
        tool_exchanges: 0,
        action_exchanges: Vec::new(),
        labels_touched: Vec::new(),
        amount_total: 0,
        elapsed: 0,
        tool_used_before: false,
        rate_1m: 0,
        denials_1m: 0,
        evals_passed: Vec::new(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASELINE: &str = include_str!("../../../../examples/policies/baseline.cedar");
    use super::fixtures::{NO_DETAILS, NO_HISTORY};

    fn facts<'a>(
        labels: &'a [String],
        actions: &'a [String],
        risk: &'a str,
        principal: Option<&'a str>,
    ) -> ExchangeFacts<'a> {
        ExchangeFacts {
            tenant: "acme",
            now: 1_800_000_000,
            agent: "bot",
            agent_owner: "alice",
            agent_purpose: "triage",
            run: "run_1",
            task: "t",
            principal,
            grant: principal.map(|_| "grt_1"),
            tool: "crm",
            tool_audience: "https://crm.example",
            tool_labels: labels,
            tool_risk: risk,
            tool_provider: "jwt",
            actions,
            depth: 0,
            hops: 0,
            approved: false,
            details: &NO_DETAILS,
            history: &NO_HISTORY,
        }
    }

    #[test]
    fn delegation_bounds_come_from_policy() {
        let e = Engine::new_validating().unwrap();
        let p = e
            .compile(&e.parse_policies("baseline", BASELINE).unwrap())
            .unwrap();
        let caps = vec!["crm:read".to_owned()];
        let f = |depth, children| DelegationFacts {
            tenant: "acme",
            now: 1_800_000_000,
            parent_run: "run_1",
            parent_agent: "planner",
            parent_agent_owner: "ops",
            parent_agent_purpose: "plans",
            parent_task: "plan",
            child_agent: "researcher",
            child_agent_owner: "ops",
            child_agent_purpose: "reads",
            task: "read",
            principal: Some("alice"),
            depth,
            children,
            capabilities: &caps,
        };
        let v = e.decide_delegation(&p, &f(1, 0)).unwrap();
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies, ["baseline/delegate-within-bounds"]);
        let v = e.decide_delegation(&p, &f(4, 0)).unwrap();
        assert!(!v.allowed && v.reason.unwrap().contains("depth 4"));
        assert!(!e.decide_delegation(&p, &f(1, 8)).unwrap().allowed);
        // A tenant rule: researchers never delegate further than depth 1,
        // and no child may hold a write capability.
        let extra = r#"
            @id("shallow") forbid (principal, action == Mandate::Action::"delegate", resource)
            when { context.depth > 1 };
            @id("read-only-children") forbid (principal, action == Mandate::Action::"delegate", resource)
            when { context.capabilities.contains("crm:write") };
        "#;
        let mut all = e.parse_policies("baseline", BASELINE).unwrap();
        all.extend(e.parse_policies("t", extra).unwrap());
        let p2 = e.compile(&all).unwrap();
        let v = e.decide_delegation(&p2, &f(2, 0)).unwrap();
        assert_eq!(v.policies, ["t/shallow"]);
        let w = vec!["crm:write".to_owned()];
        let v = e
            .decide_delegation(
                &p2,
                &DelegationFacts {
                    capabilities: &w,
                    ..f(1, 0)
                },
            )
            .unwrap();
        assert_eq!(v.policies, ["t/read-only-children"]);
        // Same-agent delegation (a run delegating to its own agent) works.
        let v = e
            .decide_delegation(
                &p,
                &DelegationFacts {
                    child_agent: "planner",
                    ..f(1, 0)
                },
            )
            .unwrap();
        assert!(v.allowed);
    }

    #[test]
    fn baseline_permits_and_forbid_names_itself() {
        let e = Engine::new().unwrap();
        let p = e
            .compile(&e.parse_policies("baseline", BASELINE).unwrap())
            .unwrap();
        let labels = vec!["pii".to_string()];
        let actions = vec!["read".to_string()];
        let v = e
            .decide(&p, &facts(&labels, &actions, "low", Some("alice")))
            .unwrap();
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies, vec!["baseline/allow-registered-tools"]);
        let v = e
            .decide(&p, &facts(&labels, &actions, "critical", None))
            .unwrap();
        assert!(!v.allowed);
        assert_eq!(
            v.policies,
            vec!["baseline/no-critical-tools-without-a-principal"]
        );
        assert!(v.reason.unwrap().contains("forbidden by policy"));
    }

    #[test]
    fn request_matches_the_schema() {
        let e = Engine::new_validating().unwrap();
        let p = e
            .compile(&e.parse_policies("baseline", BASELINE).unwrap())
            .unwrap();
        let labels = vec!["pii".to_string(), "money".to_string()];
        let actions = vec!["read".to_string(), "write".to_string()];
        for principal in [Some("alice@example.com"), None] {
            let v = e
                .decide(&p, &facts(&labels, &actions, "high", principal))
                .unwrap();
            assert!(v.allowed, "{v:?}");
        }
    }

    #[test]
    fn no_policies_deny_with_a_hint() {
        let e = Engine::new().unwrap();
        let v = e
            .decide(
                &TenantPolicies::default(),
                &facts(&[], &["read".into()], "low", None),
            )
            .unwrap();
        assert!(!v.allowed);
        assert!(v.reason.unwrap().contains("mandate policy add"));
    }

    #[test]
    fn policies_can_use_labels_and_agent_membership() {
        let e = Engine::new().unwrap();
        let src = r#"
            permit (principal in Mandate::Agent::"bot", action == Mandate::Action::"exchange", resource)
            when { !(context.tool_labels.contains("money")) && context.action == "read" };
        "#;
        let p = e.compile(&e.parse_policies("p", src).unwrap()).unwrap();
        let read = vec!["read".to_string()];
        let write = vec!["read".to_string(), "write".to_string()];
        assert!(
            e.decide(&p, &facts(&[], &read, "low", None))
                .unwrap()
                .allowed
        );
        let v = e.decide(&p, &facts(&[], &write, "low", None)).unwrap();
        assert!(!v.allowed && v.reason.unwrap().contains("`write`"));
        let money = vec!["money".to_string()];
        assert!(
            !e.decide(&p, &facts(&money, &read, "low", None))
                .unwrap()
                .allowed
        );
    }

    /// Slicing never changes a decision: every request is decided the same
    /// by the sliced policies and by the whole set, including policies that
    /// fail to evaluate (which deny) and tests slicing cannot read.
    #[test]
    fn sliced_policies_decide_exactly_as_the_whole_set() {
        let e = Engine::new().unwrap();
        let mut stored = vec![StoredPolicy {
            id: "p/all".into(),
            text: r#"permit (principal, action == Mandate::Action::"exchange", resource);"#.into(),
        }];
        let texts = [
            // Sliceable by tool and by action.
            r#"forbid (principal, action, resource == Mandate::Tool::"crm") when { context.action == "delete" };"#,
            r#"forbid (principal, action, resource) when { ["wipe", "drop"].contains(context.action) && context.depth >= 0 };"#,
            r#"forbid (principal, action == Mandate::Action::"delegate", resource);"#,
            // Fails to evaluate without an amount; sliced only to `pay`.
            r#"forbid (principal, action, resource) when { context.action == "pay" && context.amount > 100 };"#,
            // Fails to evaluate before its action test: in every slice.
            r#"forbid (principal, action, resource) when { context.amount > 100 && context.action == "refund" };"#,
            // Not readable by slicing: in every slice.
            r#"forbid (principal, action, resource) unless { context.action != "purge" };"#,
            r#"forbid (principal, action, resource) when { context.action == "x1" || context.action == "write" };"#,
            r#"@approval("principal") forbid (principal, action, resource == Mandate::Tool::"mail") when { context.action == "send" } unless { context.approved };"#,
        ];
        for (i, t) in texts.iter().enumerate() {
            stored.push(StoredPolicy {
                id: format!("p/{i}"),
                text: (*t).into(),
            });
        }
        // Many unrelated policies too (what slicing is for).
        for i in 0..200 {
            stored.push(StoredPolicy {
                id: format!("q/{i}"),
                text: format!(
                    r#"forbid (principal, action, resource) when {{ context.action == "other{i}" }};"#
                ),
            });
        }
        let sliced = e.compile(&stored).unwrap();
        let whole = TenantPolicies {
            slices: std::sync::Arc::default(),
            ..sliced.clone()
        };
        let amounts = [
            NO_DETAILS.clone(),
            Details {
                amount: Some(500),
                ..NO_DETAILS.clone()
            },
        ];
        let mut seen = std::collections::HashSet::new();
        for tool in ["crm", "mail", "bank"] {
            for action in [
                "read", "write", "delete", "wipe", "pay", "refund", "purge", "send", "other7",
            ] {
                for d in &amounts {
                    let actions = vec![action.to_string()];
                    let f = ExchangeFacts {
                        tool,
                        details: d,
                        ..facts(&[], &actions, "low", None)
                    };
                    let a = e.decide(&sliced, &f).unwrap();
                    let b = e.decide(&whole, &f).unwrap();
                    assert_eq!(a, b, "{tool} {action} {:?}", d.amount);
                    seen.insert(a.allowed);
                }
            }
        }
        // Both outcomes occurred, so the comparison meant something.
        assert_eq!(seen.len(), 2);
        let pay = ["pay".to_string()];
        let v = e.decide(&sliced, &facts(&[], &pay, "low", None)).unwrap();
        assert!(!v.allowed && v.reason.unwrap().contains("failed to evaluate"));
    }

    #[test]
    fn invalid_policy_is_refused_with_line_and_column() {
        let e = Engine::new().unwrap();
        let syntax = "permit (principal, action, resource)\nwhen { context.tenant == };";
        let errs = e.parse_policies("bad", syntax).unwrap_err();
        assert_eq!(errs[0].line, 2, "{errs:?}");
        let unknown_attr = "permit (principal, action == Mandate::Action::\"exchange\", resource)\n  when { resource.colour == \"red\" };";
        let errs = e.parse_policies("bad", unknown_attr).unwrap_err();
        assert_eq!((errs[0].line, errs[0].column > 1), (2, true), "{errs:?}");
        assert!(errs[0].message.contains("colour"), "{errs:?}");
    }
}
