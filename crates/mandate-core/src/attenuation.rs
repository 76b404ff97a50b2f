//! Offline attenuation: a holder narrows its mandate without calling the
//! broker, by appending a Biscuit *third-party block* (Biscuit specification,
//! "Third-party blocks": the block is signed by an external key, and that
//! signature covers the previous block's signature, so blocks cannot be
//! reordered, removed or altered) signed with its own key. It may hand the
//! result on by naming the next holder's key, by RFC 7638 thumbprint, in
//! that block; the next holder proves that key to use it, and signs the next
//! block with it. So every hop's key is proven, and the broker (or anyone)
//! can follow the chain from the run key to whoever presents the token.
//!
//! Block `i` (`i ≥ 1`) may state, as facts:
//!
//! ```text
//! holder($jkt);           the next holder's key (absent: the signer keeps it)
//! holder_name($label);    a label for the next holder (display and audit only)
//! only($tool, $action);   capabilities limited to these patterns (one fact each)
//! not_after($int);        an earlier expiry (seconds since the epoch)
//! max_uses($int);         exchanges allowed with any token that contains this block
//! resource_prefix($str);  credentials limited to paths under this prefix
//! ```
//!
//! and carries checks (`reject if ...`) that say the same in Datalog, so that any Biscuit
//! verifier enforces them (`time`, `request($tool, $action)`,
//! `uses($block, $n)` and `resource($path)` are the facts an authorizer
//! provides). Rules and scopes are refused. A block's facts are read per
//! block and can only narrow: capabilities are intersected, expiries take
//! the minimum, prefixes must nest, and a fact a block states about itself
//! cannot widen anything granted earlier (the authority block is the only one
//! the broker takes grants from).

use std::collections::{BTreeSet, HashMap};

use biscuit_auth::builder::{BlockBuilder, Term};
use biscuit_auth::{Biscuit, PrivateKey, PublicKey, UnverifiedBiscuit};
use serde::Serialize;

use crate::UnixTime;
use crate::capability::{Capability, CapabilitySet};
use crate::error::{Error, Result, malformed};
use crate::jose::{PublicJwk, b64};
use crate::keys::SigningKey;

/// Longest mandate accepted (bytes of base64): an attenuated one may not
/// grow past it either. (Here, below [`crate::mandate`], which reads hops
/// through this module: the dependency goes one way.)
pub const MAX_MANDATE_LEN: usize = 16 * 1024;

/// Most attenuation blocks a mandate may carry.
pub const MAX_HOPS: usize = 8;

/// Most `only` facts one block may state.
pub const MAX_ONLY: usize = 32;

/// Most statements (facts and checks) one block may hold: what
/// [`attenuate`] writes at most.
const MAX_STATEMENTS: usize = MAX_ONLY + 10;

/// Deepest nesting of brackets in a block's source (what Mandate writes
/// nests 3 deep).
const MAX_NESTING: usize = 6;

/// What one block narrows, and to whom it hands the mandate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Narrowing {
    /// Capabilities limited to these patterns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilitySet>,
    /// An earlier expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<UnixTime>,
    /// Exchanges allowed with any token containing this block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    /// Credentials limited to paths under this prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_prefix: Option<String>,
    /// The next holder's key thumbprint (RFC 7638).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_holder: Option<String>,
    /// A label for the next holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_holder_name: Option<String>,
}

/// One verified attenuation block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// Block index (1 = the first block after the broker's).
    pub index: usize,
    /// Thumbprint of the key that signed the block (the holder before it).
    pub signed_by: String,
    /// Thumbprint of the holder after it.
    pub holder: String,
    /// What the block narrows.
    pub narrowing: Narrowing,
    /// The block's Biscuit revocation identifier (its signature), base64url:
    /// the key under which its uses are counted.
    pub block_id: String,
}

/// The Biscuit private key for one of our signing keys.
fn biscuit_private(key: &SigningKey) -> Result<PrivateKey> {
    let alg = match key {
        SigningKey::Ed25519(_) => biscuit_auth::Algorithm::Ed25519,
        SigningKey::P256(_) => biscuit_auth::Algorithm::Secp256r1,
    };
    PrivateKey::from_bytes(key.to_secret().expose(), alg)
        .map_err(|e| Error::Crypto(format!("holder key: {e}")))
}

/// The JWK (and so the RFC 7638 thumbprint) of a Biscuit public key.
pub fn jwk_of(key: &PublicKey) -> Result<PublicJwk> {
    let bytes = key.to_bytes();
    match key {
        PublicKey::Ed25519(_) => {
            let raw: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| malformed("mandate", "hop key is not 32 bytes"))?;
            ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map(PublicJwk::Ed25519)
                .map_err(|_| malformed("mandate", "hop key is not an Ed25519 key"))
        }
        PublicKey::P256(_) => p256::ecdsa::VerifyingKey::from_sec1_bytes(&bytes)
            .map(PublicJwk::P256)
            .map_err(|_| malformed("mandate", "hop key is not a P-256 key")),
    }
}

fn s(v: &str) -> Term {
    Term::Str(v.to_owned())
}

/// The block for `n`, at position `index`.
fn block(
    index: usize,
    n: &Narrowing,
) -> std::result::Result<BlockBuilder, biscuit_auth::error::Token> {
    let mut b = BlockBuilder::new();
    let fact = |name: &str, terms: Vec<Term>| biscuit_auth::builder::Fact::new(name.into(), terms);
    let p = |k: &str, v: Term| HashMap::from([(k.to_owned(), v)]);
    if let Some(h) = &n.next_holder {
        b = b.fact(fact("holder", vec![s(h)]))?;
    }
    if let Some(h) = &n.next_holder_name {
        b = b.fact(fact("holder_name", vec![s(h)]))?;
    }
    if let Some(caps) = &n.capabilities {
        let mut set = BTreeSet::new();
        for c in &caps.0 {
            b = b.fact(fact("only", vec![s(&c.tool), s(&c.action)]))?;
            set.insert(s(&c.to_string()));
        }
        b = b.code_with_params(
            "reject if request($tool, $action), \
             !({set}.contains($tool + \":\" + $action) || {set}.contains($tool + \":*\") \
             || {set}.contains(\"*:\" + $action) || {set}.contains(\"*:*\"))",
            p("set", Term::Set(set)),
            HashMap::new(),
        )?;
    }
    if let Some(t) = n.not_after {
        b = b.fact(fact("not_after", vec![Term::Integer(t as i64)]))?;
        b = b.code_with_params(
            "check if time($t), $t <= {exp}",
            p("exp", Term::Date(t)),
            HashMap::new(),
        )?;
    }
    if let Some(u) = n.max_uses {
        b = b.fact(fact("max_uses", vec![Term::Integer(u as i64)]))?;
        let mut params = p("n", Term::Integer(u as i64));
        params.insert("i".into(), Term::Integer(index as i64));
        b = b.code_with_params("reject if uses({i}, $u), $u >= {n}", params, HashMap::new())?;
    }
    if let Some(prefix) = &n.resource_prefix {
        b = b.fact(fact("resource_prefix", vec![s(prefix)]))?;
        // Path segments, not string prefixes: `/repos/alice` covers
        // `/repos/alice` and `/repos/alice/x`, never `/repos/alice-private`.
        let mut params = p("p", s(prefix));
        params.insert("under".into(), s(&under(prefix)));
        b = b.code_with_params(
            "reject if resource($r), $r != {p}, !$r.starts_with({under})",
            params,
            HashMap::new(),
        )?;
    }
    Ok(b)
}

/// `prefix` as the start of the paths under it (`/a` → `/a/`, `/a/` stays).
fn under(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// Whether `path` is `prefix` or lies under it, by path segments: one rule,
/// in [`crate::paths`].
pub use crate::paths::path_within;

/// Text that goes into a block's strings: printable, and no quote or
/// backslash (a block's Datalog source is read back to check its shape).
fn plain_text(v: &str) -> bool {
    !v.chars().any(|c| c.is_control() || c == '"' || c == '\\')
}

fn check_narrowing(n: &Narrowing) -> Result<()> {
    if let Some(h) = &n.next_holder
        && (h.len() != 43 || crate::jose::unb64("holder key thumbprint", h).is_err())
    {
        return Err(malformed(
            "next holder",
            "must be an RFC 7638 JWK thumbprint (43 characters of base64url)",
        ));
    }
    if let Some(l) = &n.next_holder_name
        && (l.is_empty() || l.len() > 128 || !plain_text(l))
    {
        return Err(malformed(
            "next holder name",
            "1 to 128 printable characters, without quotes or backslashes",
        ));
    }
    if let Some(p) = &n.resource_prefix
        && (!p.starts_with('/')
            || p.len() > 512
            || p.contains("..")
            || p.contains("//")
            || !plain_text(p))
    {
        return Err(malformed(
            "resource prefix",
            "must start with `/`, have no `..`, `//`, quotes or backslashes, and be at most 512 characters",
        ));
    }
    if n.max_uses == Some(0) || n.max_uses.is_some_and(|u| u > i64::MAX as u64) {
        return Err(malformed("use limit", "must be at least 1"));
    }
    if n.not_after.is_some_and(|t| t > i64::MAX as u64) {
        return Err(malformed("expiry", "out of range"));
    }
    if let Some(c) = &n.capabilities
        && c.0.len() > MAX_ONLY
    {
        return Err(malformed(
            "capabilities",
            format!("name at most {MAX_ONLY} `tool:action` patterns"),
        ));
    }
    if let Some(c) = &n.capabilities
        && c.is_empty()
    {
        return Err(malformed("capabilities", "name at least one `tool:action`"));
    }
    Ok(())
}

/// Appends a block narrowing `token` as `n` says, signed by `holder`: the
/// key of whoever holds the mandate now (the run key, or the key named by the
/// last block). Needs no broker and no root key: the broker checks the chain
/// when the token is used.
pub fn attenuate(token: &str, holder: &SigningKey, n: &Narrowing) -> Result<String> {
    check_narrowing(n)?;
    if token.len() > MAX_MANDATE_LEN {
        return Err(malformed("mandate", "too long"));
    }
    let t =
        UnverifiedBiscuit::from_base64(token).map_err(|e| malformed("mandate", e.to_string()))?;
    if t.block_count() > MAX_HOPS {
        return Err(malformed(
            "mandate",
            format!("it already has {MAX_HOPS} attenuation blocks, the most accepted"),
        ));
    }
    let go = || -> std::result::Result<String, biscuit_auth::error::Token> {
        let b = block(t.block_count(), n)?;
        let req = t.third_party_request()?;
        let signed = req.create_block(
            &biscuit_private(holder)
                .map_err(|_| biscuit_auth::error::Token::ConversionError("holder key".into()))?,
            b,
        )?;
        t.append_third_party(&signed.serialize()?)?.to_base64()
    };
    let out = go().map_err(|e| Error::Crypto(format!("could not attenuate the mandate: {e}")))?;
    if out.len() > MAX_MANDATE_LEN {
        return Err(malformed(
            "mandate",
            "the attenuated mandate would be longer than the broker accepts",
        ));
    }
    Ok(out)
}

fn str_term(t: &Term) -> Option<&str> {
    match t {
        Term::Str(s) => Some(s),
        _ => None,
    }
}

fn int_term(t: &Term) -> Option<i64> {
    match t {
        Term::Integer(i) => Some(*i),
        _ => None,
    }
}

/// The checks of a block as text, sorted (parameters applied).
fn checks_of(b: &BlockBuilder) -> Vec<String> {
    let only = BlockBuilder {
        checks: b.checks.clone(),
        ..BlockBuilder::new()
    };
    let mut v: Vec<String> = only.to_string().lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// The cheap checks on a block's source before any parser sees it: at
/// most [`MAX_STATEMENTS`] statements, brackets nested at most
/// [`MAX_NESTING`] deep, no rules (`<-`).
fn precheck_source(src: &str) -> std::result::Result<(), String> {
    let mut depth = 0usize;
    for c in src.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "its Datalog nests deeper than {MAX_NESTING} brackets"
                    ));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if src.matches(";\n").count() > MAX_STATEMENTS {
        return Err(format!("it has more than {MAX_STATEMENTS} statements"));
    }
    if src.contains("<-") {
        return Err("rules are not accepted, only facts and checks".into());
    }
    Ok(())
}

/// Reads and checks the attenuation blocks of a verified Biscuit: each must
/// be signed by the holder at that point, starting from `run_jkt`, and state
/// only the facts above. Returns the hops in order.
pub(crate) fn read_hops(b: &Biscuit, run_jkt: &str) -> Result<Vec<Hop>> {
    let count = b.block_count();
    if count > MAX_HOPS + 1 {
        return Err(malformed(
            "mandate",
            format!("more than {MAX_HOPS} attenuation blocks"),
        ));
    }
    let ids = b.revocation_identifiers();
    let mut holder = run_jkt.to_owned();
    let mut hops = Vec::with_capacity(count.saturating_sub(1));
    for i in 1..count {
        let bad = |reason: String| malformed("mandate", format!("attenuation block {i}: {reason}"));
        let ext = b
            .block_external_key(i)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| {
                bad("it is not signed by the holder's key; append blocks with `mandate token attenuate` (a Biscuit third-party block signed by the key that holds the mandate)".into())
            })?;
        let signer = jwk_of(&ext)?.thumbprint();
        if signer != holder {
            return Err(bad(format!(
                "it is signed by key {signer}, but the mandate was held by key {holder} at that point"
            )));
        }
        let src = b.print_block_source(i).map_err(|e| bad(e.to_string()))?;
        // No Datalog of a presented token is parsed or run before its shape
        // is known to be what `attenuate` writes: bounded nesting and size
        // first, then the facts read one by one, then every check compared
        // with the checks those facts call for.
        precheck_source(&src).map_err(bad)?;
        let parsed = BlockBuilder::new()
            .code(&src)
            .map_err(|e| bad(format!("unreadable Datalog: {e}")))?;
        if !parsed.rules.is_empty() || !parsed.scopes.is_empty() {
            return Err(bad(
                "rules and scopes are not accepted, only facts and checks".into(),
            ));
        }
        let mut n = Narrowing::default();
        let mut only = BTreeSet::new();
        let set_once =
            |slot: &mut Option<String>, v: Option<&str>, what: &str| match (slot.is_some(), v) {
                (false, Some(v)) => {
                    *slot = Some(v.to_owned());
                    Ok(())
                }
                (true, _) => Err(bad(format!("`{what}` is stated twice"))),
                (_, None) => Err(bad(format!("`{what}` must be a string"))),
            };
        for f in &parsed.facts {
            let terms = &f.predicate.terms;
            match (f.predicate.name.as_str(), terms.len()) {
                ("holder", 1) => set_once(&mut n.next_holder, str_term(&terms[0]), "holder")?,
                ("holder_name", 1) => {
                    set_once(&mut n.next_holder_name, str_term(&terms[0]), "holder_name")?
                }
                ("resource_prefix", 1) => set_once(
                    &mut n.resource_prefix,
                    str_term(&terms[0]),
                    "resource_prefix",
                )?,
                ("only", 2) => {
                    let (Some(t), Some(a)) = (str_term(&terms[0]), str_term(&terms[1])) else {
                        return Err(bad("`only` takes two strings".into()));
                    };
                    only.insert(
                        Capability::parse(&format!("{t}:{a}")).map_err(|e| bad(e.to_string()))?,
                    );
                }
                ("not_after", 1) => {
                    let t = int_term(&terms[0])
                        .filter(|t| *t >= 0)
                        .ok_or_else(|| bad("`not_after` takes a non-negative integer".into()))?;
                    n.not_after = Some(n.not_after.map_or(t as u64, |x| x.min(t as u64)));
                }
                ("max_uses", 1) => {
                    let u = int_term(&terms[0])
                        .filter(|u| *u >= 1)
                        .ok_or_else(|| bad("`max_uses` takes a positive integer".into()))?;
                    n.max_uses = Some(n.max_uses.map_or(u as u64, |x| x.min(u as u64)));
                }
                (name, arity) => {
                    return Err(bad(format!(
                        "unknown fact `{name}` with {arity} terms; blocks may state holder, holder_name, only, not_after, max_uses, resource_prefix"
                    )));
                }
            }
        }
        if !only.is_empty() {
            n.capabilities = Some(CapabilitySet(only));
        }
        check_narrowing(&n).map_err(|e| bad(e.to_string()))?;
        let expected = block(i, &n).map_err(|e| bad(e.to_string()))?;
        if checks_of(&parsed) != checks_of(&expected) {
            return Err(bad(
                "its checks are not the ones its facts call for; append blocks with `mandate token attenuate`".into(),
            ));
        }
        if let Some(next) = &n.next_holder {
            holder = next.clone();
        }
        hops.push(Hop {
            index: i,
            signed_by: signer,
            holder: holder.clone(),
            narrowing: n,
            block_id: ids.get(i).map(|id| b64(id)).unwrap_or_default(),
        });
    }
    Ok(hops)
}

/// The effect of all hops on the authority's grants: capabilities
/// intersected, expiry the earliest, resource prefix the innermost (prefixes
/// that do not nest leave nothing: an empty capability set).
pub(crate) struct Effect {
    pub capabilities: CapabilitySet,
    pub expires_at: UnixTime,
    pub resource_prefix: Option<String>,
    pub holder: String,
}

pub(crate) fn apply(
    capabilities: &CapabilitySet,
    expires_at: UnixTime,
    run_jkt: &str,
    hops: &[Hop],
) -> Effect {
    let mut e = Effect {
        capabilities: capabilities.clone(),
        expires_at,
        resource_prefix: None,
        holder: run_jkt.to_owned(),
    };
    for h in hops {
        if let Some(c) = &h.narrowing.capabilities {
            e.capabilities = e.capabilities.intersect(c);
        }
        if let Some(t) = h.narrowing.not_after {
            e.expires_at = e.expires_at.min(t);
        }
        if let Some(p) = &h.narrowing.resource_prefix {
            e.resource_prefix = match e.resource_prefix.take() {
                None => Some(p.clone()),
                Some(old) if path_within(&old, p) => Some(p.clone()),
                Some(old) if path_within(p, &old) => Some(old),
                Some(old) => {
                    e.capabilities = CapabilitySet::default();
                    Some(old)
                }
            };
        }
        e.holder = h.holder.clone();
    }
    e
}
