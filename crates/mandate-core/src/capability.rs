//! Capabilities: `tool:action` pairs, where either side may be `*`.
//!
//! A run's capabilities are the intersection of its grant (what a principal
//! delegated) and its agent's envelope (the most the agent may ever hold).
//! An exchange's requested actions must lie within the run's capabilities and
//! within the tool's registered actions.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{Error, Result};

/// One capability: a tool (or `*`) and an action (or `*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability {
    /// Tool name, or `*` for any tool.
    pub tool: String,
    /// Action name, or `*` for any action of the tool.
    pub action: String,
}

impl Capability {
    /// Parses `tool:action`. The tool is everything before the first `:`, so
    /// actions may themselves contain `:` (`resend:email:send`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidName {
            what: "capability",
            value: s.chars().take(64).collect(),
            reason,
        };
        let (tool, action) = s
            .split_once(':')
            .ok_or_else(|| bad("must be `tool:action` (either side may be `*`)"))?;
        if tool != "*" {
            crate::ids::check_slug("tool", tool)
                .map_err(|_| bad("tool part is not a valid tool name"))?;
        }
        check_action(action).map_err(|_| bad("action part is not a valid action name"))?;
        Ok(Self {
            tool: tool.to_owned(),
            action: action.to_owned(),
        })
    }

    /// Whether this capability allows `action` on `tool`.
    pub fn allows(&self, tool: &str, action: &str) -> bool {
        (self.tool == "*" || self.tool == tool) && (self.action == "*" || self.action == action)
    }

    /// The greatest capability allowed by both, if any.
    pub fn meet(&self, other: &Capability) -> Option<Capability> {
        let tool = meet_part(&self.tool, &other.tool)?;
        let action = meet_part(&self.action, &other.action)?;
        Some(Capability { tool, action })
    }
}

fn meet_part(a: &str, b: &str) -> Option<String> {
    match (a, b) {
        ("*", x) | (x, "*") => Some(x.to_owned()),
        (x, y) if x == y => Some(x.to_owned()),
        _ => None,
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tool, self.action)
    }
}

/// Checks an action name: 1–64 characters of `a-z 0-9 . _ - :`, or `*`.
pub fn check_action(action: &str) -> Result<()> {
    let ok = action == "*"
        || (!action.is_empty()
            && action.len() <= 64
            && action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:".contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "action",
            value: action.chars().take(64).collect(),
            reason: "must be 1 to 64 characters of a-z, 0-9, `.`, `_`, `-`, `:`",
        })
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilitySet(pub BTreeSet<Capability>);

impl serde::Serialize for CapabilitySet {
    /// As a list of `tool:action` strings.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|c| c.to_string()))
    }
}

impl CapabilitySet {
    /// Parses a list of `tool:action` strings.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self> {
        items
            .iter()
            .map(|s| Capability::parse(s.as_ref()))
            .collect::<Result<BTreeSet<_>>>()
            .map(Self)
    }

    /// Whether any capability allows `action` on `tool`.
    pub fn allows(&self, tool: &str, action: &str) -> bool {
        self.0.iter().any(|c| c.allows(tool, action))
    }

    /// Everything allowed by both sets (pairwise meets; redundant entries
    /// subsumed by a wider one are dropped).
    pub fn intersect(&self, other: &CapabilitySet) -> CapabilitySet {
        let mut out = BTreeSet::new();
        for a in &self.0 {
            for b in &other.0 {
                if let Some(m) = a.meet(b) {
                    out.insert(m);
                }
            }
        }
        let all: Vec<Capability> = out.iter().cloned().collect();
        out.retain(|c| {
            !all.iter().any(|w| {
                w != c && w.allows(&c.tool, &c.action) && (w.tool == "*" || w.action == "*")
            })
        });
        CapabilitySet(out)
    }

    /// Whether every capability of `self` is allowed by `wider`.
    pub fn is_subset_of(&self, wider: &CapabilitySet) -> bool {
        self.0.iter().all(|c| {
            wider.0.iter().any(|w| {
                (w.tool == "*" || w.tool == c.tool) && (w.action == "*" || w.action == c.action)
            })
        })
    }

    /// As strings, sorted.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|c| c.to_string()).collect()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What is wrong with granting `caps` to an agent whose envelope is
/// `envelope`, one line per capability that would give the run nothing it
/// says: outside the envelope (the run holds grant ∩ envelope), a tool that
/// is not registered, or an action the tool does not have.
/// `tool_actions(name)` gives a registered tool's actions. Empty: none.
pub fn grant_problems<'a>(
    caps: &CapabilitySet,
    envelope: &CapabilitySet,
    tool_actions: impl Fn(&str) -> Option<&'a [String]>,
) -> Vec<String> {
    let mut out = Vec::new();
    for c in &caps.0 {
        if !envelope.0.iter().any(|e| c.meet(e).is_some()) {
            out.push(format!(
                "`{c}` is outside the agent's envelope ({}): the run would get nothing from it",
                envelope.to_strings().join(", ")
            ));
            continue;
        }
        if c.tool == "*" {
            continue;
        }
        match tool_actions(&c.tool) {
            None => out.push(format!(
                "`{c}`: tool `{}` is not registered in this tenant (register it first with `mandate tool create`)",
                c.tool
            )),
            Some(actions) if c.action != "*" && !actions.contains(&c.action) => {
                out.push(format!(
                    "`{c}`: tool `{}` has no action `{}` (its actions: {})",
                    c.tool,
                    c.action,
                    actions.join(", ")
                ))
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_that_would_give_nothing_are_named() {
        let set = |v: &[&str]| CapabilitySet::parse(v).unwrap();
        let crm = vec!["read".to_owned(), "write".to_owned()];
        let tools = |t: &str| (t == "crm").then_some(crm.as_slice());
        let env = set(&["crm:*", "github:read"]);
        assert!(grant_problems(&set(&["crm:read", "crm:*", "*:read"]), &env, tools).is_empty());
        let p = grant_problems(
            &set(&["crm:delete", "jira:read", "github:push", "github:read"]),
            &env,
            tools,
        );
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.iter().any(|l| l.contains(
            "`crm:delete`: tool `crm` has no action `delete` (its actions: read, write)"
        )));
        assert!(
            p.iter()
                .any(|l| l.contains("`jira:read` is outside the agent's envelope"))
        );
        assert!(p.iter().any(|l| l.contains("`github:push` is outside")));
        // Inside the envelope but not registered.
        assert!(grant_problems(&set(&["github:read"]), &env, tools)[0].contains("not registered"));
    }

    fn set(v: &[&str]) -> CapabilitySet {
        CapabilitySet::parse(v).unwrap()
    }

    #[test]
    fn grant_meets_envelope() {
        let grant = set(&["github:*", "crm:read"]);
        let envelope = set(&["github:read", "github:pr:create", "crm:*", "mail:send"]);
        let caps = grant.intersect(&envelope);
        assert_eq!(
            caps.to_strings(),
            vec!["crm:read", "github:pr:create", "github:read"]
        );
        assert!(!caps.allows("mail", "send"));
        assert!(caps.is_subset_of(&grant) && caps.is_subset_of(&envelope));
    }

    #[test]
    fn wildcards_meet_to_the_narrower_side() {
        let caps = set(&["*:read"]).intersect(&set(&["github:*"]));
        assert_eq!(caps.to_strings(), vec!["github:read"]);
        let wide = set(&["*:*"]).intersect(&set(&["a:x", "a:*"]));
        assert_eq!(wide.to_strings(), vec!["a:*"]);
    }

    #[test]
    fn malformed_capabilities_are_refused() {
        for bad in [
            "github",
            ":read",
            "GitHub:read",
            "github:",
            "github:READ",
            "a b:c",
        ] {
            assert!(Capability::parse(bad).is_err(), "{bad}");
        }
    }
}
