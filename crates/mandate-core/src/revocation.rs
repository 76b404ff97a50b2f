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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// Prefix of the kill switch's id.
pub const EVERYTHING: &str = "everything:";

/// The kinds of revocation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// One credential: `cred:<id>`.
    Credential,
    /// A run and everything it made or delegated: `run:<id>`.
    Run,
    /// An agent: `agent:<tenant>/<agent>`.
    Agent,
    /// A principal: `principal:<tenant>/<principal>`.
    Principal,
    /// A grant: `grant:<id>`.
    Grant,
    /// A tenant: `tenant:<t>`.
    Tenant,
    /// A narrowed mandate's subtree: `block:<biscuit revocation id>`.
    Block,
    /// The kill switch: `everything:<unix secs>`.
    Everything,
}

impl RevocationKind {
    /// Every kind.
    pub const ALL: [RevocationKind; 8] = [
        Self::Credential,
        Self::Run,
        Self::Agent,
        Self::Principal,
        Self::Grant,
        Self::Tenant,
        Self::Block,
        Self::Everything,
    ];

    /// The id prefix (`run:`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Credential => "cred:",
            Self::Run => "run:",
            Self::Agent => "agent:",
            Self::Principal => "principal:",
            Self::Grant => "grant:",
            Self::Tenant => "tenant:",
            Self::Block => "block:",
            Self::Everything => EVERYTHING,
        }
    }

    /// The kind's name (`run`), for messages that must not reveal the id.
    pub fn name(self) -> &'static str {
        self.prefix().trim_end_matches(':')
    }

    /// The id of `value` of this kind.
    pub fn id(self, value: &str) -> String {
        format!("{}{value}", self.prefix())
    }
}

/// A well-formed revocation id's kind and value: a known kind, a non-empty
/// value, at most 512 characters, no control characters.
pub fn parse_id(id: &str) -> Option<(RevocationKind, &str)> {
    if id.len() > 512 || id.chars().any(char::is_control) {
        return None;
    }
    RevocationKind::ALL.into_iter().find_map(|k| {
        id.strip_prefix(k.prefix())
            .filter(|v| !v.is_empty())
            .map(|v| (k, v))
    })
}

/// The revoked ids a broker or a verifier holds, with the kill switch's
/// time; ids are forgotten once nothing they name can still be valid. The
/// one answer to "is this revoked", for the broker and for mandate-verify.
#[derive(Debug, Default, Clone)]
pub struct RevokedSet {
    ids: HashSet<String>,
    /// Until when each id matters (seconds; 0 = forever).
    until: HashMap<String, u64>,
    /// Ids by the time they may be forgotten, soonest first.
    expiring: BinaryHeap<Reverse<(u64, String)>>,
    /// Everything issued at or before this time (seconds) is refused.
    before: u64,
}

impl RevokedSet {
    /// Records `id`, which matters until `until` (0 = forever);
    /// `everything:<T>` moves the kill-switch time. Forgets ids whose time
    /// passed before `now`. Returns whether it was new.
    pub fn add(&mut self, id: &str, until: u64, now: u64) -> bool {
        if let Some(t) = id
            .strip_prefix(EVERYTHING)
            .and_then(|t| t.parse::<u64>().ok())
        {
            self.before = self.before.max(t);
        }
        let kept = self.until.entry(id.to_owned()).or_insert(until);
        *kept = if *kept == 0 || until == 0 {
            0
        } else {
            (*kept).max(until)
        };
        if *kept != 0 {
            self.expiring.push(Reverse((*kept, id.to_owned())));
        }
        self.forget_expired(now);
        self.ids.insert(id.to_owned())
    }

    fn forget_expired(&mut self, now: u64) {
        while let Some(Reverse((t, _))) = self.expiring.peek()
            && *t < now
        {
            let Some(Reverse((_, id))) = self.expiring.pop() else {
                break;
            };
            if self.until.get(&id).is_some_and(|u| *u != 0 && *u < now) {
                self.until.remove(&id);
                self.ids.remove(&id);
            }
        }
    }

    /// Why a token issued at `issued_at` with revocation ids `keys` is
    /// refused, if it is: the first revoked id, or the kill switch.
    pub fn refused<'a>(
        &self,
        keys: &'a [String],
        issued_at: u64,
    ) -> Option<std::borrow::Cow<'a, str>> {
        refused(keys, issued_at, &self.ids, self.before)
    }

    /// Adds every id `other` holds (and its kill-switch time): revocations
    /// only accumulate, so a set rebuilt from a store keeps what this one
    /// learnt meanwhile.
    pub fn absorb(&mut self, other: &RevokedSet, now: u64) {
        self.before = self.before.max(other.before);
        for id in &other.ids {
            let until = other.until.get(id).copied().unwrap_or(0);
            self.add(id, until, now);
        }
    }

    /// Forgets `id` again (its revocation was added before its commit, and
    /// the commit failed).
    pub fn remove(&mut self, id: &str) {
        self.ids.remove(id);
        self.until.remove(id);
    }

    /// The revoked ids, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.ids.iter()
    }

    /// Whether `id` is revoked.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// The kill switch's time (0: never used).
    pub fn revoked_before(&self) -> u64 {
        self.before
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

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
    use RevocationKind as K;
    let mut v = Vec::with_capacity(6 + 2 * ancestors.len());
    if let Some(c) = who.credential {
        v.push(K::Credential.id(c));
    }
    for b in who.blocks.iter().rev() {
        v.push(K::Block.id(b));
    }
    v.push(K::Run.id(who.run));
    for a in ancestors {
        v.push(K::Run.id(&a.run));
    }
    v.push(K::Agent.id(&format!("{}/{}", who.tenant, who.agent)));
    for a in ancestors {
        if let Some(agent) = &a.agent {
            let k = K::Agent.id(&format!("{}/{agent}", who.tenant));
            if !v.contains(&k) {
                v.push(k);
            }
        }
    }
    if let Some(p) = who.principal {
        v.push(K::Principal.id(&format!("{}/{p}", who.tenant)));
    }
    if let Some(g) = who.grant {
        v.push(K::Grant.id(g));
    }
    v.push(K::Tenant.id(who.tenant));
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
    parse_id(key).map_or("credential", |(k, _)| k.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorb_unites_two_sets() {
        let mut s = RevokedSet::default();
        s.add("run:live", 30, 20);
        s.add("everything:5", 0, 20);
        let mut t = RevokedSet::default();
        t.add("agent:a/b", 0, 20);
        t.absorb(&s, 20);
        assert!(t.contains("run:live") && t.contains("agent:a/b"));
        assert_eq!(t.revoked_before(), 5);
        t.add("cred:x", 40, 31);
        assert!(!t.contains("run:live"), "forgotten after its time");
    }

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
    fn ids_parse_strictly_by_kind() {
        assert_eq!(parse_id("run:r1"), Some((RevocationKind::Run, "r1")));
        assert_eq!(
            parse_id("everything:5"),
            Some((RevocationKind::Everything, "5"))
        );
        for bad in ["run:", "runs:x", "x", "cred:a\nb", &"a".repeat(600)] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        assert_eq!(kind("agent:t/a"), "agent");
        assert_eq!(kind("nonsense"), "credential");
    }

    #[test]
    fn a_revoked_set_forgets_what_can_no_longer_be_valid() {
        let mut r = RevokedSet::default();
        assert!(r.add("cred:a", 100, 50));
        assert!(r.add("run:r", 300, 50));
        assert!(r.contains("cred:a"));
        assert!(r.add("agent:t/x", 0, 200));
        assert!(!r.contains("cred:a"));
        assert!(r.contains("run:r") && r.contains("agent:t/x"));
        r.add("run:r", 0, 200);
        r.add("cred:b", 400, 1000);
        assert!(r.contains("run:r") && r.contains("agent:t/x") && r.contains("cred:b"));
        assert!(r.refused(&["cred:a".into()], 10).is_none());
        r.add("everything:500", 0, 1000);
        assert_eq!(r.revoked_before(), 500);
        assert_eq!(r.refused(&[], 500).as_deref(), Some("everything:500"));
        assert!(r.refused(&[], 501).is_none());
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
