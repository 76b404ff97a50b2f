//! Policy slicing: an exchange for one tool and action is judged by the
//! policies that can apply to it, not by every policy of the tenant, so a
//! tenant's cost per exchange does not grow with policies written for other
//! tools and actions (issue 12: 1,000 policies cost 5.4× one policy before).
//!
//! A policy can be left out of a request only when Cedar would find it not
//! satisfied *without evaluating anything that can fail*: Cedar evaluates a
//! policy as the conjunction, left to right and short-circuiting, of its
//! scope (principal, action, resource), then its conditions in order
//! (cedar-policy-core `Policy::condition`). So a policy is out of reach of
//! a request when
//!
//! - its action scope does not include `Mandate::Action::"exchange"`;
//! - its resource scope is `resource == Mandate::Tool::"t"` for another
//!   tool; or
//! - its first condition is a `when` whose leftmost conjunct is
//!   `context.action == "a"` (or `["a", "b"].contains(context.action)`)
//!   naming other actions (`context.action` is always present: the test
//!   cannot fail).
//!
//! Anything else (an `unless` first, a test after another conjunct, an
//! `in` scope, a policy that does not convert) keeps the policy in every
//! slice. A policy that would error on a request is therefore still
//! evaluated on it, and still denies (errors deny, [`super::exchange`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cedar_policy::{Policy, PolicySet};
use serde_json::Value;

/// Slices kept per tenant; beyond this many (tool, action) pairs a slice is
/// built per request instead of cached (pairs are registered tools'
/// actions: the scope check refuses others before policy runs).
const MAX_CACHED: usize = 4096;

/// Which exchanges one policy can apply to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reach {
    /// Its action scope includes `exchange`.
    exchange: bool,
    /// Its resource scope names this one tool.
    tool: Option<String>,
    /// Its first condition tests that the action is one of these.
    actions: Option<Vec<String>>,
}

impl Reach {
    fn everything() -> Self {
        Self {
            exchange: true,
            tool: None,
            actions: None,
        }
    }

    /// What Cedar's JSON form (EST) of `p` says of its reach.
    pub(super) fn of(p: &Policy) -> Self {
        match p.to_json() {
            Ok(est) => Self::of_est(&est),
            Err(_) => Self::everything(),
        }
    }

    fn of_est(est: &Value) -> Self {
        let exchange = match est.pointer("/action/op").and_then(Value::as_str) {
            Some("==") => is_action(&est["action"]["entity"], "exchange").unwrap_or(true),
            Some("in") => match est["action"].get("entities").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .any(|e| is_action(e, "exchange").unwrap_or(true)),
                // `action in <one entity>`: action groups are not in the
                // schema, so this is the action itself (or unknown).
                None => is_action(&est["action"]["entity"], "exchange").unwrap_or(true),
            },
            _ => true,
        };
        let tool = match est.pointer("/resource/op").and_then(Value::as_str) {
            Some("==") => {
                let e = &est["resource"]["entity"];
                match (e["type"].as_str(), e["id"].as_str()) {
                    (Some("Mandate::Tool"), Some(id)) => Some(id.to_owned()),
                    _ => None,
                }
            }
            _ => None,
        };
        let actions = est
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .filter(|c| c["kind"].as_str() == Some("when"))
            .and_then(|c| action_test(leftmost(&c["body"])));
        Self {
            exchange,
            tool,
            actions,
        }
    }

    /// Whether the policy can apply to an exchange of `action` on `tool`.
    fn reaches(&self, tool: &str, action: &str) -> bool {
        self.exchange
            && self.tool.as_deref().is_none_or(|t| t == tool)
            && self
                .actions
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x == action))
    }
}

/// `Some(true)` if `e` is `Mandate::Action::"<name>"`, `Some(false)` for
/// another action, `None` when it cannot tell.
fn is_action(e: &Value, name: &str) -> Option<bool> {
    match (e["type"].as_str(), e["id"].as_str()) {
        (Some("Mandate::Action"), Some(id)) => Some(id == name),
        _ => None,
    }
}

/// The leftmost conjunct of `a && b && ...` (which Cedar evaluates first).
fn leftmost(mut e: &Value) -> &Value {
    while let Some(l) = e.get("&&").and_then(|a| a.get("left")) {
        e = l;
    }
    e
}

/// The actions `e` limits to, if it is `context.action == "a"`,
/// `"a" == context.action` or `[..literals..].contains(context.action)`.
fn action_test(e: &Value) -> Option<Vec<String>> {
    let is_ctx_action = |v: &Value| {
        v.get(".").is_some_and(|d| {
            d["left"]["Var"].as_str() == Some("context") && d["attr"].as_str() == Some("action")
        })
    };
    let literal = |v: &Value| v.get("Value").and_then(Value::as_str).map(str::to_owned);
    if let Some(eq) = e.get("==") {
        let (l, r) = (&eq["left"], &eq["right"]);
        if is_ctx_action(l) {
            return literal(r).map(|a| vec![a]);
        }
        if is_ctx_action(r) {
            return literal(l).map(|a| vec![a]);
        }
        return None;
    }
    let c = e.get("contains")?;
    if !is_ctx_action(&c["right"]) {
        return None;
    }
    c["left"]["Set"]
        .as_array()?
        .iter()
        .map(literal)
        .collect::<Option<Vec<_>>>()
}

/// A tenant's policies with their reach, and the slices made so far.
pub(super) struct Slices {
    policies: Vec<(Policy, Reach)>,
    cached: Mutex<HashMap<(String, String), Arc<PolicySet>>>,
    /// Every policy reaches everything: the full set is every slice.
    trivial: bool,
}

impl std::fmt::Debug for Slices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slices({} policies)", self.policies.len())
    }
}

impl Default for Slices {
    /// No slicing: every request sees the whole set.
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Slices {
    pub(super) fn new(policies: Vec<(Policy, Reach)>) -> Self {
        let trivial = policies.iter().all(|(_, r)| *r == Reach::everything());
        Self {
            policies,
            cached: Mutex::default(),
            trivial,
        }
    }

    /// The policies that can apply to an exchange of `action` on `tool`;
    /// `None`: all of them.
    pub(super) fn slice(&self, tool: &str, action: &str) -> Option<Arc<PolicySet>> {
        if self.trivial {
            return None;
        }
        let key = (tool.to_owned(), action.to_owned());
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cached.get(&key) {
            return Some(Arc::clone(s));
        }
        let mut set = PolicySet::new();
        for (p, r) in &self.policies {
            // Ids are unique in the tenant's set this came from.
            if r.reaches(tool, action) && set.add(p.clone()).is_err() {
                return None;
            }
        }
        let set = Arc::new(set);
        if cached.len() < MAX_CACHED {
            cached.insert(key, Arc::clone(&set));
        }
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn reach(src: &str) -> Reach {
        let set = PolicySet::from_str(src).unwrap();
        Reach::of(set.policies().next().unwrap())
    }

    #[test]
    fn reach_reads_the_scope_and_the_first_test_only() {
        let r = reach(
            r#"forbid (principal, action, resource == Mandate::Tool::"crm") when { context.action == "delete" && context.amount > 5 };"#,
        );
        assert!(r.reaches("crm", "delete"));
        assert!(!r.reaches("crm", "read"));
        assert!(!r.reaches("mail", "delete"));
        let r = reach(
            r#"permit (principal, action == Mandate::Action::"exchange", resource) when { ["a", "b"].contains(context.action) };"#,
        );
        assert!(r.reaches("x", "a") && r.reaches("y", "b") && !r.reaches("x", "c"));
        // Not first: another test runs (and may fail) before it.
        let r = reach(
            r#"forbid (principal, action, resource) when { context.amount > 5 && context.action == "pay" };"#,
        );
        assert_eq!(r, Reach::everything());
        // `unless` first, `||`, and a non-literal are not read.
        for src in [
            r#"forbid (principal, action, resource) unless { context.action == "read" };"#,
            r#"forbid (principal, action, resource) when { context.action == "a" || context.action == "b" };"#,
            r#"forbid (principal, action, resource) when { context.action == context.task };"#,
        ] {
            assert_eq!(reach(src), Reach::everything(), "{src}");
        }
        let r = reach(r#"permit (principal, action == Mandate::Action::"delegate", resource);"#);
        assert!(!r.reaches("x", "a"));
        let r = reach(
            r#"permit (principal, action in [Mandate::Action::"delegate", Mandate::Action::"exchange"], resource);"#,
        );
        assert!(r.reaches("x", "a"));
    }
}
