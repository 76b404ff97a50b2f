//! Mandates: the run's token, a Biscuit v3 (<https://doc.biscuitsec.org>)
//! whose authority block, signed by the broker's root key, states who runs,
//! on whose behalf, for which task, within which limits, until when, and the
//! thumbprint (RFC 7638) of the run's key.
//!
//! Authority block facts (all strings unless noted):
//!
//! ```text
//! mandate_version(1);          issuer($url);       tenant($t);
//! agent($name);  agent_id($spiffe);   run($id);  run_id($spiffe);
//! principal($p); grant($g);           (both optional: on-behalf-of runs only)
//! task($text);   capability($tool, $action);      (one fact per capability)
//! cnf_jkt($thumbprint);  issued_at($int);  expires_at($int);
//! check if time($t), $t <= <expiry date>;
//! parent_run($depth, $run, $run_spiffe);  (delegated runs: 1 = parent, 2 = its parent, ...)
//! ```
//!
//! The authorizer only trusts facts from the authority block (Biscuit's
//! default scope), so a later block can never add a capability.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use biscuit_auth::builder::{Fact, Term};
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, KeyPair, PrivateKey, PublicKey, RootKeyProvider,
};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::attenuation::{self, Hop};
use crate::capability::{Capability, CapabilitySet};
use crate::error::{Error, Result, malformed};
use crate::keys::SigningKey;
use crate::{UnixTime, jose};

pub use crate::attenuation::MAX_MANDATE_LEN;

/// What a mandate states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateClaims {
    /// The broker that issued it (its `issuer` URL).
    pub issuer: String,
    /// Tenant.
    pub tenant: String,
    /// Agent name.
    pub agent: String,
    /// Agent SPIFFE ID.
    pub agent_id: String,
    /// Run id.
    pub run: String,
    /// Run SPIFFE ID.
    pub run_id: String,
    /// Principal on whose behalf the run acts, if any.
    pub principal: Option<String>,
    /// Grant under which it acts, if any.
    pub grant: Option<String>,
    /// Task description.
    pub task: String,
    /// Capabilities (grant ∩ envelope).
    pub capabilities: CapabilitySet,
    /// RFC 7638 thumbprint of the key that must prove possession: the run's
    /// key, or for an attenuated mandate the key its last block names.
    pub cnf_jkt: String,
    /// RFC 7638 thumbprint of the run's own key (the authority block's).
    pub run_jkt: String,
    /// Issue time.
    pub issued_at: UnixTime,
    /// Expiry.
    pub expires_at: UnixTime,
    /// For a delegated run: the runs it descends from, parent first, as
    /// (run id, run SPIFFE ID).
    pub ancestors: Vec<(String, String)>,
    /// Offline attenuation blocks, in order (empty for a mandate as minted).
    pub hops: Vec<Hop>,
    /// Credentials limited to paths under this prefix (set by attenuation).
    pub resource_prefix: Option<String>,
}

impl MandateClaims {
    /// Every id this mandate can be revoked by (DESIGN "revocation as data"):
    /// the run, its ancestor runs and their agents, its agent, principal,
    /// grant and tenant ([`crate::revocation::keys`]).
    pub fn revocation_keys(&self) -> Vec<String> {
        let blocks = self.block_ids();
        crate::revocation::keys(
            &crate::revocation::Lineage {
                tenant: &self.tenant,
                agent: &self.agent,
                run: &self.run,
                principal: self.principal.as_deref(),
                grant: self.grant.as_deref(),
                credential: None,
                blocks: &blocks,
            },
            &self.ancestry(),
        )
    }

    /// The Biscuit revocation ids of its attenuation blocks, in order.
    pub fn block_ids(&self) -> Vec<String> {
        self.hops.iter().map(|h| h.block_id.clone()).collect()
    }

    /// The runs (and their agents) this run descends from, parent first.
    pub fn ancestry(&self) -> Vec<crate::revocation::Ancestor> {
        self.ancestors
            .iter()
            .map(|(run, spiffe)| {
                crate::revocation::Ancestor::from_run_spiffe(spiffe)
                    .filter(|a| &a.run == run)
                    .unwrap_or_else(|| crate::revocation::Ancestor {
                        run: run.clone(),
                        agent: None,
                    })
            })
            .collect()
    }
}

/// The broker's mandate root key as a Biscuit key pair.
pub fn root_keypair(key: &SigningKey) -> Result<KeyPair> {
    let secret = key.to_secret();
    let pk = PrivateKey::from_bytes(secret.expose(), biscuit_auth::Algorithm::Ed25519)
        .map_err(|e| Error::Crypto(format!("mandate root key: {e}")))?;
    Ok(KeyPair::from(&pk))
}

/// The Biscuit root key id (`root_key_id`) of a root public key: the first
/// four bytes of the SHA-256 of its bytes. Mandates carry it, so a broker
/// that rotated its root key knows which key signed an older mandate.
pub fn root_key_id(key: &PublicKey) -> u32 {
    let d = Sha256::digest(key.to_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The root keys a broker accepts mandates from: the current one and the
/// ones it rotated away from (still valid until their mandates expire).
#[derive(Debug, Clone)]
pub struct RootKeys {
    /// The key new mandates are signed with.
    pub current: PublicKey,
    /// Earlier keys, newest first.
    pub retired: Vec<PublicKey>,
    /// The key that signed mandates without a root key id (minted before
    /// ids were set): the oldest root this broker keeps.
    pub legacy: PublicKey,
    /// When each retired key (by [`root_key_id`]) was retired (seconds).
    pub retired_since: std::collections::HashMap<u32, UnixTime>,
}

impl RootKeys {
    /// Refuses a mandate that says it was issued after the root key that
    /// signed it was retired: a stolen retired key mints nothing new.
    pub fn check_signed_before_retirement(
        &self,
        token: &Biscuit,
        issued_at: UnixTime,
    ) -> Result<()> {
        let id = token
            .root_key_id()
            .unwrap_or_else(|| root_key_id(&self.legacy));
        match self.retired_since.get(&id) {
            Some(t) if issued_at > *t => Err(malformed(
                "mandate",
                format!(
                    "it says it was issued at {issued_at}, after the key that signed it was retired ({t})"
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl RootKeyProvider for &RootKeys {
    fn choose(
        &self,
        key_id: Option<u32>,
    ) -> std::result::Result<PublicKey, biscuit_auth::error::Format> {
        match key_id {
            None => Ok(self.legacy),
            Some(id) => std::iter::once(&self.current)
                .chain(self.retired.iter())
                .find(|k| root_key_id(k) == id)
                .copied()
                .ok_or(biscuit_auth::error::Format::UnknownPublicKey),
        }
    }
}

/// The public half of the root key, for verification.
pub fn root_public(key: &SigningKey) -> Result<PublicKey> {
    Ok(root_keypair(key)?.public())
}

fn s(v: &str) -> Term {
    Term::Str(v.to_owned())
}

fn fact(name: &str, terms: Vec<Term>) -> Fact {
    Fact::new(name.to_owned(), terms)
}

/// Mints a mandate, signed with the broker's root key. `cnf_jkt` is the run
/// key; `hops` and `resource_prefix` must be empty (they come from holders).
pub fn mint(
    root: &KeyPair,
    claims: &MandateClaims,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<String> {
    let mut build = || -> std::result::Result<String, biscuit_auth::error::Token> {
        let mut b = Biscuit::builder()
            .fact(fact("mandate_version", vec![Term::Integer(1)]))?
            .fact(fact("issuer", vec![s(&claims.issuer)]))?
            .fact(fact("tenant", vec![s(&claims.tenant)]))?
            .fact(fact("agent", vec![s(&claims.agent)]))?
            .fact(fact("agent_id", vec![s(&claims.agent_id)]))?
            .fact(fact("run", vec![s(&claims.run)]))?
            .fact(fact("run_id", vec![s(&claims.run_id)]))?
            .fact(fact("task", vec![s(&claims.task)]))?
            .fact(fact("cnf_jkt", vec![s(&claims.run_jkt)]))?
            .fact(fact(
                "issued_at",
                vec![Term::Integer(claims.issued_at as i64)],
            ))?
            .fact(fact(
                "expires_at",
                vec![Term::Integer(claims.expires_at as i64)],
            ))?;
        if let Some(p) = &claims.principal {
            b = b.fact(fact("principal", vec![s(p)]))?;
        }
        if let Some(g) = &claims.grant {
            b = b.fact(fact("grant", vec![s(g)]))?;
        }
        for c in &claims.capabilities.0 {
            b = b.fact(fact("capability", vec![s(&c.tool), s(&c.action)]))?;
        }
        for (depth, (run, run_id)) in claims.ancestors.iter().enumerate() {
            b = b.fact(fact(
                "parent_run",
                vec![Term::Integer(depth as i64 + 1), s(run), s(run_id)],
            ))?;
        }
        let mut params = HashMap::new();
        params.insert("exp".to_owned(), Term::Date(claims.expires_at));
        b = b.code_with_params("check if time($t), $t <= {exp}", params, HashMap::new())?;
        // The grants in Datalog too, so any Biscuit verifier that provides
        // `request($tool, $action)` refuses what was never granted.
        let granted: std::collections::BTreeSet<Term> = claims
            .capabilities
            .0
            .iter()
            .map(|c| s(&c.to_string()))
            .collect();
        b = b.code_with_params(
            "reject if request($tool, $action), \
             !({caps}.contains($tool + \":\" + $action) || {caps}.contains($tool + \":*\") \
             || {caps}.contains(\"*:\" + $action) || {caps}.contains(\"*:*\"))",
            HashMap::from([("caps".to_owned(), Term::Set(granted))]),
            HashMap::new(),
        )?;
        b = b.root_key_id(root_key_id(&root.public()));
        let token = b.build_with_rng(root, biscuit_auth::datalog::SymbolTable::new(), rng)?;
        token.to_base64()
    };
    build().map_err(|e| Error::Crypto(format!("could not mint mandate: {e}")))
}

/// SHA-256 of the token text: the key of the verification cache.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Limits for the Datalog run. Biscuit's default of 1 ms time-outs on noisy
/// machines (see DEPS.md), so the limit is explicit and generous in time but
/// tight in facts and iterations.
pub fn authorizer_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 512,
        max_iterations: 64,
        max_time: Duration::from_millis(50),
    }
}

fn map_token_err(e: biscuit_auth::error::Token) -> Error {
    use biscuit_auth::error::{Format, Token};
    match e {
        Token::Format(Format::Signature(_)) | Token::Format(Format::UnknownPublicKey) => {
            Error::BadSignature { what: "mandate" }
        }
        Token::Format(f) => malformed("mandate", f.to_string()),
        Token::Base64(_) => malformed("mandate", "not base64"),
        Token::FailedLogic(l) => malformed("mandate", format!("a check failed: {l}")),
        Token::RunLimit(l) => malformed("mandate", format!("Datalog limits reached: {l}")),
        other => malformed("mandate", other.to_string()),
    }
}

/// Verifies a mandate's signature chain, its checks at `now` (with only
/// `time` known: request-dependent checks are written `check all` and hold
/// vacuously here; [`authorize_use`] runs them with the request), the hop
/// chain of its attenuation blocks, and returns its effective claims:
/// capabilities, expiry and key binding after every block's narrowing.
pub fn verify(root: impl RootKeyProvider, token: &str, now: UnixTime) -> Result<MandateClaims> {
    verify_parsed(root, token, now).map(|(c, _)| c)
}

/// [`verify`], also returning the parsed and verified token, which
/// [`authorize_parsed`] can judge each use of without verifying its
/// signatures again.
pub fn verify_parsed(
    root: impl RootKeyProvider,
    token: &str,
    now: UnixTime,
) -> Result<(MandateClaims, Biscuit)> {
    if token.len() > MAX_MANDATE_LEN {
        return Err(malformed(
            "mandate",
            format!("longer than {MAX_MANDATE_LEN} bytes"),
        ));
    }
    let biscuit = Biscuit::from_base64(token, root).map_err(map_token_err)?;
    // The shape of every block a holder appended is checked before any
    // Datalog runs (a presented token must not make the broker compute).
    let run_jkt = authority_jkt(&biscuit)?;
    let hops = attenuation::read_hops(&biscuit, &run_jkt)?;
    let run = || -> std::result::Result<MandateClaims, biscuit_auth::error::Token> {
        let mut a = AuthorizerBuilder::new()
            .fact(fact("time", vec![Term::Date(now)]))?
            .policy("allow if true")?
            .set_limits(authorizer_limits())
            .build(&biscuit)?;
        let one = |a: &mut biscuit_auth::Authorizer,
                   rule: &str|
         -> std::result::Result<Option<String>, biscuit_auth::error::Token> {
            let v: Vec<(String,)> = a.query(rule)?;
            Ok(v.into_iter().next().map(|t| t.0))
        };
        let int = |a: &mut biscuit_auth::Authorizer,
                   rule: &str|
         -> std::result::Result<Option<i64>, biscuit_auth::error::Token> {
            let v: Vec<(i64,)> = a.query(rule)?;
            Ok(v.into_iter().next().map(|t| t.0))
        };
        let mut expires_at = int(&mut a, "data($x) <- expires_at($x)")?.unwrap_or(0);
        if let Some(t) = hops.iter().filter_map(|h| h.narrowing.not_after).min() {
            expires_at = expires_at.min(t as i64);
        }
        // Check expiry in code first, for a precise error; the Datalog check enforces it too.
        if (expires_at as u64) < now {
            return Err(biscuit_auth::error::Token::ConversionError(format!(
                "expired:{expires_at}"
            )));
        }
        a.authorize()?;
        let req = |v: Option<String>, name: &str| {
            v.ok_or_else(|| {
                biscuit_auth::error::Token::ConversionError(format!("missing `{name}` fact"))
            })
        };
        let caps: Vec<(String, String)> = a.query("data($t, $a) <- capability($t, $a)")?;
        let granted = CapabilitySet(
            caps.into_iter()
                .map(|(tool, action)| Capability { tool, action })
                .collect::<BTreeSet<_>>(),
        );
        let effect = attenuation::apply(&granted, expires_at as u64, &run_jkt, &hops);
        let mut parents: Vec<(i64, String, String)> =
            a.query("data($d, $r, $i) <- parent_run($d, $r, $i)")?;
        parents.sort();
        if parents
            .iter()
            .enumerate()
            .any(|(i, (d, _, _))| *d != i as i64 + 1)
        {
            return Err(biscuit_auth::error::Token::ConversionError(
                "the `parent_run` chain has a gap".into(),
            ));
        }
        Ok(MandateClaims {
            issuer: req(one(&mut a, "data($x) <- issuer($x)")?, "issuer")?,
            tenant: req(one(&mut a, "data($x) <- tenant($x)")?, "tenant")?,
            agent: req(one(&mut a, "data($x) <- agent($x)")?, "agent")?,
            agent_id: req(one(&mut a, "data($x) <- agent_id($x)")?, "agent_id")?,
            run: req(one(&mut a, "data($x) <- run($x)")?, "run")?,
            run_id: req(one(&mut a, "data($x) <- run_id($x)")?, "run_id")?,
            principal: one(&mut a, "data($x) <- principal($x)")?,
            grant: one(&mut a, "data($x) <- grant($x)")?,
            task: req(one(&mut a, "data($x) <- task($x)")?, "task")?,
            cnf_jkt: effect.holder,
            run_jkt: run_jkt.clone(),
            issued_at: int(&mut a, "data($x) <- issued_at($x)")?.unwrap_or(0) as u64,
            expires_at: expires_at as u64,
            ancestors: parents.into_iter().map(|(_, r, i)| (r, i)).collect(),
            capabilities: effect.capabilities,
            hops: hops.clone(),
            resource_prefix: effect.resource_prefix,
        })
    };
    let claims = run().map_err(|e| match e {
        biscuit_auth::error::Token::ConversionError(m) if m.starts_with("expired:") => {
            Error::Expired {
                what: "mandate",
                expired_at: m[8..].parse().unwrap_or(0),
                now,
            }
        }
        biscuit_auth::error::Token::ConversionError(m) => {
            match m.strip_prefix("malformed mandate: ") {
                Some(r) => malformed("mandate", r.to_owned()),
                None => malformed("mandate", m),
            }
        }
        e => map_token_err(e),
    })?;
    Ok((claims, biscuit))
}

/// The run key's thumbprint from the authority block (which the broker
/// signed), read from its source without running any Datalog.
fn authority_jkt(b: &Biscuit) -> Result<String> {
    let src = b.print_block_source(0).map_err(map_token_err)?;
    let mut found = src.lines().filter_map(|l| {
        l.strip_prefix("cnf_jkt(\"")
            .and_then(|r| r.strip_suffix("\");").or_else(|| r.strip_suffix("\")")))
    });
    match (found.next(), found.next()) {
        (Some(j), None)
            if j.len() == 43
                && j.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') =>
        {
            Ok(j.to_owned())
        }
        _ => Err(malformed("mandate", "missing or bad `cnf_jkt` fact")),
    }
}

/// Runs every check of an attenuated mandate against one use: `request`
/// facts for the tool and each action, `uses(block, n)` for the uses counted
/// so far of each block with a use limit, and `resource` if a path is known.
/// Returns why it is refused, in words, if a check fails.
pub fn authorize_use(
    root: impl RootKeyProvider,
    token: &str,
    now: UnixTime,
    tool: &str,
    actions: &[String],
    uses: &[(usize, u64)],
    resource: Option<&str>,
) -> Result<()> {
    let (_, biscuit) = verify_parsed(root, token, now)?;
    authorize_parsed(&biscuit, now, tool, actions, uses, resource)
}

/// [`authorize_use`] on a token already parsed and verified.
pub fn authorize_parsed(
    biscuit: &Biscuit,
    now: UnixTime,
    tool: &str,
    actions: &[String],
    uses: &[(usize, u64)],
    resource: Option<&str>,
) -> Result<()> {
    let run = || -> std::result::Result<(), biscuit_auth::error::Token> {
        let mut b = AuthorizerBuilder::new().fact(fact("time", vec![Term::Date(now)]))?;
        for a in actions {
            b = b.fact(fact("request", vec![s(tool), s(a)]))?;
        }
        for (block, n) in uses {
            b = b.fact(fact(
                "uses",
                vec![Term::Integer(*block as i64), Term::Integer(*n as i64)],
            ))?;
        }
        if let Some(r) = resource {
            b = b.fact(fact("resource", vec![s(r)]))?;
        }
        let mut a = b
            .policy("allow if true")?
            .set_limits(authorizer_limits())
            .build(biscuit)?;
        a.authorize()?;
        Ok(())
    };
    run().map_err(|e| match e {
        biscuit_auth::error::Token::FailedLogic(l) => Error::Malformed {
            what: "mandate",
            reason: format!("its attenuation does not allow this use: {l}"),
        },
        e => map_token_err(e),
    })
}

/// Base64url of the token digest, for logs and audit (never the token itself).
pub fn token_fingerprint(token: &str) -> String {
    jose::b64(&token_digest(token)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Alg;
    use rand::rngs::OsRng;

    fn claims(now: u64) -> MandateClaims {
        MandateClaims {
            issuer: "http://127.0.0.1:8407".into(),
            tenant: "acme".into(),
            agent: "bot".into(),
            agent_id: "spiffe://mandate.local/tenant/acme/agent/bot".into(),
            run: "run_1".into(),
            run_id: "spiffe://mandate.local/tenant/acme/agent/bot/run/run_1".into(),
            principal: Some("alice@example.com".into()),
            grant: Some("grt_1".into()),
            task: "triage issue #42".into(),
            capabilities: CapabilitySet::parse(&["github:read", "crm:*"]).unwrap(),
            cnf_jkt: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into(),
            run_jkt: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into(),
            issued_at: now,
            expires_at: now + 900,
            ancestors: vec![],
            hops: vec![],
            resource_prefix: None,
        }
    }

    #[test]
    fn minted_mandate_verifies_and_round_trips_claims() {
        let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
        let kp = root_keypair(&key).unwrap();
        let now = 1_800_000_000;
        let c = claims(now);
        let t = mint(&kp, &c, &mut OsRng).unwrap();
        assert_eq!(verify(kp.public(), &t, now + 10).unwrap(), c);
    }

    #[test]
    fn rotated_root_keys_still_verify_their_mandates() {
        let now = 1_800_000_000;
        let old = root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
        let new = root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
        let by_old = mint(&old, &claims(now), &mut OsRng).unwrap();
        let by_new = mint(&new, &claims(now), &mut OsRng).unwrap();
        let mut roots = RootKeys {
            current: new.public(),
            retired: vec![old.public()],
            legacy: old.public(),
            retired_since: HashMap::new(),
        };
        assert!(verify(&roots, &by_old, now).is_ok());
        assert!(verify(&roots, &by_new, now).is_ok());
        // What the old root signed after its retirement is refused.
        roots
            .retired_since
            .insert(root_key_id(&old.public()), now - 1);
        let parsed = Biscuit::from_base64(&by_old, &roots).unwrap();
        let refused = roots.check_signed_before_retirement(&parsed, now);
        assert!(refused.unwrap_err().to_string().contains("was retired"));
        roots.retired_since.insert(root_key_id(&old.public()), now);
        assert!(roots.check_signed_before_retirement(&parsed, now).is_ok());
        // Once the old root is no longer kept, its mandates are refused.
        let only_new = RootKeys {
            current: new.public(),
            retired: vec![],
            legacy: new.public(),
            retired_since: HashMap::new(),
        };
        assert_eq!(
            verify(&only_new, &by_old, now),
            Err(Error::BadSignature { what: "mandate" })
        );
        // A mandate minted without a root key id (older brokers) is checked
        // against the legacy root.
        let no_id = Biscuit::builder()
            .fact("mandate_version(1)")
            .unwrap()
            .build(&old)
            .unwrap()
            .to_base64()
            .unwrap();
        let err = verify(&roots, &no_id, now).unwrap_err().to_string();
        assert!(!err.contains("signature"), "{err}");
        assert!(verify(&only_new, &no_id, now).is_err());
    }

    #[test]
    fn mandate_from_another_broker_is_refused() {
        let now = 1_800_000_000;
        let ours = root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
        let theirs = root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
        let t = mint(&theirs, &claims(now), &mut OsRng).unwrap();
        assert_eq!(
            verify(ours.public(), &t, now),
            Err(Error::BadSignature { what: "mandate" })
        );
    }

    #[test]
    fn expired_mandate_is_refused() {
        let now = 1_800_000_000;
        let kp = root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
        let t = mint(&kp, &claims(now), &mut OsRng).unwrap();
        assert!(matches!(
            verify(kp.public(), &t, now + 901),
            Err(Error::Expired {
                what: "mandate",
                ..
            })
        ));
    }

    #[test]
    fn forged_mandate_is_refused() {
        let now = 1_800_000_000;
        let kp = root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
        let t = mint(&kp, &claims(now), &mut OsRng).unwrap();
        // Flip one character in the middle of the signed payload.
        let mut bytes = t.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert!(verify(kp.public(), &forged, now).is_err());
        assert!(verify(kp.public(), "not-a-token", now).is_err());
    }

    #[test]
    fn appended_block_is_refused_and_adds_nothing() {
        let now = 1_800_000_000;
        let kp = root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
        let t = mint(&kp, &claims(now), &mut OsRng).unwrap();
        let b = Biscuit::from_base64(&t, kp.public()).unwrap();
        let blk = biscuit_auth::BlockBuilder::new()
            .fact("capability(\"bank\", \"transfer\")")
            .unwrap();
        let t2 = b.append(blk).unwrap().to_base64().unwrap();
        assert!(verify(kp.public(), &t2, now).is_err());
    }
}
