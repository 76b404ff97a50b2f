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

/// (tool, action) pairs remembered per tenant (pairs are registered tools'
/// actions: the scope check refuses others before policy runs).
const MAX_PAIRS: usize = 4096;

/// Distinct slices kept per tenant: each holds its own copy of its
/// policies, so this bounds the memory (beyond it a slice is built per
/// request, outside the lock).
const MAX_SLICES: usize = 128;

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
            // `in` may name an action group that contains `exchange` (the
            // schema has none today; one added later must not be missed).
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
    cached: Mutex<Cache>,
    /// Every policy reaches everything: the full set is every slice.
    trivial: bool,
}

/// Slices by pair, and the distinct slices (many pairs reach the same
/// policies and share one set).
#[derive(Default)]
struct Cache {
    by_pair: HashMap<(String, String), Option<Arc<PolicySet>>>,
    by_members: HashMap<Vec<bool>, Arc<PolicySet>>,
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

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policies that can apply to an exchange of `action` on `tool`;
    /// `None`: all of them.
    pub(super) fn slice(&self, tool: &str, action: &str) -> Option<Arc<PolicySet>> {
        if self.trivial {
            return None;
        }
        let key = (tool.to_owned(), action.to_owned());
        if let Some(s) = self.cache().by_pair.get(&key) {
            return s.clone();
        }
        let members: Vec<bool> = self
            .policies
            .iter()
            .map(|(_, r)| r.reaches(tool, action))
            .collect();
        let found = if members.iter().all(|m| *m) {
            Some(None)
        } else {
            self.cache()
                .by_members
                .get(&members)
                .map(|s| Some(Arc::clone(s)))
        };
        let set = match found {
            Some(s) => s,
            None => {
                // Built outside the lock: other exchanges of the tenant go on.
                let mut set = PolicySet::new();
                for ((p, _), _) in self.policies.iter().zip(&members).filter(|(_, m)| **m) {
                    // Ids are unique in the tenant's set this came from.
                    if set.add(p.clone()).is_err() {
                        return None;
                    }
                }
                let set = Arc::new(set);
                let mut c = self.cache();
                if c.by_members.len() < MAX_SLICES {
                    c.by_members.insert(members, Arc::clone(&set));
                } else {
                    // Not remembered, so not by pair either.
                    return Some(set);
                }
                Some(set)
            }
        };
        let mut c = self.cache();
        if c.by_pair.len() < MAX_PAIRS {
            c.by_pair.insert(key, set.clone());
        }
        set
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
        for src in [
            r#"permit (principal, action in [Mandate::Action::"delegate", Mandate::Action::"exchange"], resource);"#,
            r#"permit (principal, action in Mandate::Action::"delegate", resource);"#,
        ] {
            assert!(reach(src).reaches("x", "a"), "{src}");
        }
    }

    /// Pairs that reach the same policies share one set; a pair that
    /// reaches every policy is the whole set.
    #[test]
    fn slices_are_shared_between_pairs_that_reach_the_same_policies() {
        let set = PolicySet::from_str(
            r#"permit (principal, action, resource);
               forbid (principal, action, resource == Mandate::Tool::"crm") when { context.action == "delete" };"#,
        )
        .unwrap();
        let s = Slices::new(set.policies().map(|p| (p.clone(), Reach::of(p))).collect());
        let (a, b) = (
            s.slice("crm", "read").unwrap(),
            s.slice("mail", "read").unwrap(),
        );
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.policies().count(), 1);
        assert!(s.slice("crm", "delete").is_none());
        assert!(Arc::ptr_eq(&a, &s.slice("crm", "read").unwrap()));
    }
}
