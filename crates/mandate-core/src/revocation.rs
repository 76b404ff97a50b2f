//! Revocation as data (DESIGN "revocation as data"): every token and
//! credential the broker issues carries the identities it descends from, and
//! revoking any of them refuses it. This module is the one place that says
//! which ids revoke what, and whether a set of revoked ids refuses a token.
//!
//! Ids have the form `kind:value`:
//!
//! ```text
//! tenant:<t>              agent:<t>/<agent>        run:<run id>
//! principal:<t>/<p>       grant:<grant id>         cred:<credential id>
//! block:<biscuit revocation id of an attenuation block>  (a narrowed
//!                         mandate's subtree: every token that contains the block)
//! everything:<unix secs>  (the kill switch: refuses what was issued at or before)
//! ```
//!
//! A delegated run descends from its ancestor runs *and their agents*: a run
//! started by a sub-agent of agent A dies when A is revoked, and so do its
//! credentials, database roles and further sub-agents.

use std::collections::HashSet;

/// Prefix of the kill switch's id.
pub const EVERYTHING: &str = "everything:";

/// The prefixes of every kind of revocation id the broker issues.
pub const KINDS: [&str; 8] = [
    "cred:",
    "run:",
    "agent:",
    "principal:",
    "grant:",
    "tenant:",
    "block:",
    EVERYTHING,
];

/// What a token or credential was issued to, and what it descends from.
#[derive(Debug, Clone, Copy)]
pub struct Lineage<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// The acting agent.
    pub agent: &'a str,
    /// The acting run.
    pub run: &'a str,
    /// The principal it acts for, if any.
    pub principal: Option<&'a str>,
    /// The grant it acts under, if any.
    pub grant: Option<&'a str>,
    /// The credential itself, for credentials.
    pub credential: Option<&'a str>,
    /// The attenuation blocks of the mandate (Biscuit revocation ids,
    /// base64url), outermost last.
    pub blocks: &'a [String],
}

/// An ancestor of a delegated run: its run id and its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ancestor {
    /// Run id.
    pub run: String,
    /// Agent name (`None` when it could not be read: the run id still revokes).
    pub agent: Option<String>,
}

impl Ancestor {
    /// The ancestor named by a run SPIFFE ID
    /// (`spiffe://<td>/tenant/<t>/agent/<a>/run/<r>`), if it is one.
    pub fn from_run_spiffe(id: &str) -> Option<Self> {
        let path = id.strip_prefix("spiffe://")?;
        let mut parts = path.split('/').skip(1);
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("tenant"), Some(_), Some("agent"), Some(a), Some("run"), Some(r), None)
                if !a.is_empty() && !r.is_empty() =>
            {
                Some(Ancestor {
                    run: r.to_owned(),
                    agent: Some(a.to_owned()),
                })
            }
            _ => None,
        }
    }
}

/// Every id that revokes a token or credential of `who`, descending from
/// `ancestors` (parent first). Order: most specific first.
pub fn keys(who: &Lineage<'_>, ancestors: &[Ancestor]) -> Vec<String> {
    let mut v = Vec::with_capacity(6 + 2 * ancestors.len());
    if let Some(c) = who.credential {
        v.push(format!("cred:{c}"));
    }
    for b in who.blocks.iter().rev() {
        v.push(format!("block:{b}"));
    }
    v.push(format!("run:{}", who.run));
    for a in ancestors {
        v.push(format!("run:{}", a.run));
    }
    v.push(format!("agent:{}/{}", who.tenant, who.agent));
    for a in ancestors {
        if let Some(agent) = &a.agent {
            let k = format!("agent:{}/{agent}", who.tenant);
            if !v.contains(&k) {
                v.push(k);
            }
        }
    }
    if let Some(p) = who.principal {
        v.push(format!("principal:{}/{p}", who.tenant));
    }
    if let Some(g) = who.grant {
        v.push(format!("grant:{g}"));
    }
    v.push(format!("tenant:{}", who.tenant));
    v
}

/// Why a token issued at `issued_at` with revocation ids `keys` is refused,
/// given the revoked ids and the kill switch's time (`revoked_before`: what
/// was issued at or before it is refused): the id that revokes it, if any.
pub fn refused<'a>(
    keys: &'a [String],
    issued_at: u64,
    revoked: &HashSet<String>,
    revoked_before: u64,
) -> Option<std::borrow::Cow<'a, str>> {
    if issued_at <= revoked_before {
        return Some(format!("{EVERYTHING}{revoked_before}").into());
    }
    keys.iter()
        .find(|k| revoked.contains(*k))
        .map(|k| std::borrow::Cow::Borrowed(k.as_str()))
}

/// The kind of a revocation id (`run`, `agent`, ...), for messages that must
/// not reveal the id itself.
pub fn kind(key: &str) -> &str {
    key.split(':').next().unwrap_or("credential")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage() -> Lineage<'static> {
        Lineage {
            tenant: "acme",
            agent: "child-bot",
            run: "run_c",
            principal: Some("alice"),
            grant: Some("grt_1"),
            credential: None,
            blocks: &[],
        }
    }

    #[test]
    fn ancestors_revoke_by_run_and_by_agent() {
        let a = vec![
            Ancestor::from_run_spiffe("spiffe://td/tenant/acme/agent/parent-bot/run/run_p")
                .unwrap(),
            Ancestor::from_run_spiffe("spiffe://td/tenant/acme/agent/root-bot/run/run_r").unwrap(),
        ];
        let k = keys(&lineage(), &a);
        for want in [
            "run:run_c",
            "run:run_p",
            "run:run_r",
            "agent:acme/child-bot",
            "agent:acme/parent-bot",
            "agent:acme/root-bot",
            "principal:acme/alice",
            "grant:grt_1",
            "tenant:acme",
        ] {
            assert!(k.contains(&want.to_owned()), "{want} missing from {k:?}");
        }
        assert!(!k.iter().any(|k| k.starts_with("cred:")));
        let c = keys(
            &Lineage {
                credential: Some("cred_1"),
                ..lineage()
            },
            &[],
        );
        assert_eq!(c[0], "cred:cred_1");
    }

    #[test]
    fn run_spiffe_ids_are_parsed_strictly() {
        assert_eq!(
            Ancestor::from_run_spiffe("spiffe://td/tenant/t/agent/a/run/r"),
            Some(Ancestor {
                run: "r".into(),
                agent: Some("a".into())
            })
        );
        for bad in [
            "spiffe://td/tenant/t/agent/a",
            "spiffe://td/tenant/t/agent/a/run/r/x",
            "spiffe://td/tenant/t/agent//run/r",
            "https://td/tenant/t/agent/a/run/r",
            "urn:ietf:params:oauth:jwk-thumbprint:sha-256:abc",
        ] {
            assert_eq!(Ancestor::from_run_spiffe(bad), None, "{bad}");
        }
    }

    #[test]
    fn refused_names_the_first_revoked_id_or_the_kill_switch() {
        let k = keys(&lineage(), &[]);
        let mut revoked = HashSet::new();
        assert_eq!(refused(&k, 100, &revoked, 0), None);
        revoked.insert("principal:acme/alice".to_owned());
        assert_eq!(
            refused(&k, 100, &revoked, 0).as_deref(),
            Some("principal:acme/alice")
        );
        assert_eq!(
            refused(&k, 100, &HashSet::new(), 100).as_deref(),
            Some("everything:100")
        );
        assert_eq!(refused(&k, 101, &HashSet::new(), 100), None);
    }
}
