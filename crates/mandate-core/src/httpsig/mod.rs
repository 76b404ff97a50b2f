//! HTTP Message Signatures (RFC 9421) with Ed25519 and ECDSA P-256, and
//! `Content-Digest` (RFC 9530): a second proof of possession besides DPoP,
//! where each request is signed by the key that holds the mandate.
//!
//! What is implemented:
//! - the Structured Field syntax (RFC 8941) needed by `Signature-Input`,
//!   `Signature`, `Content-Digest` and `Signature-Key` (dictionaries, inner
//!   lists, strings, tokens, integers, booleans, byte sequences, parameters);
//! - the signature base (RFC 9421 §2.5) over the derived components
//!   `@method`, `@target-uri`, `@authority`, `@scheme`, `@request-target`,
//!   `@path`, `@query`, `@status` (§2.2) and header fields (§2.1); component
//!   parameters (`sf`, `key`, `bs`, `req`, `name`) are refused;
//! - the algorithms `ed25519` (§3.3.6) and `ecdsa-p256-sha256` (§3.3.4,
//!   the signature is r ‖ s); no HMAC, no RSA;
//! - `Signature-Key: <label>=hwk;kty=...;crv=...;x=...[;y=...]`
//!   (draft-hardt-httpbis-signature-key, the AAuth direction) to carry the
//!   signer's public key inline;
//! - the policy a verifier applies (§3.2.1, §7.2): required components,
//!   `created` not in the future, `expires` required and not passed, a
//!   bounded lifetime, a `nonce` (replay is the caller's cache).

use crate::error::{Error, Result, malformed};
use crate::jose::{Alg, PublicJwk};
use crate::keys::SigningKey;

/// Longest `Signature-Input` / `Signature` / `Signature-Key` value accepted.
pub const MAX_FIELD_LEN: usize = 8192;

const WHAT: &str = "HTTP message signature";

fn bad(reason: impl Into<String>) -> Error {
    malformed(WHAT, reason)
}

mod digest;
mod fields;
mod key;

pub use digest::{check_content_digest, content_digest};
pub use fields::{Bare, Item, Member, Params, parse_dictionary, serialize_inner_list};
pub use key::{parse_signature_key, signature_key_field};

/// The parts of an HTTP message a signature can cover.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Request method (requests).
    pub method: Option<String>,
    /// Absolute target URI, e.g. `https://example.com/foo?a=b` (requests).
    pub target_uri: Option<String>,
    /// Status code (responses).
    pub status: Option<u16>,
    /// Header fields: (lower-case name, value); a name may repeat.
    pub headers: Vec<(String, String)>,
}

impl Message {
    /// A request.
    pub fn request(method: &str, target_uri: &str, headers: Vec<(String, String)>) -> Self {
        Message {
            method: Some(method.to_owned()),
            target_uri: Some(target_uri.to_owned()),
            status: None,
            headers,
        }
    }

    /// A header field's value: its field lines, trimmed, joined by `, `
    /// (RFC 9421 §2.1). `None` if absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim_matches(|c| c == ' ' || c == '\t'))
            .collect();
        (!vals.is_empty()).then(|| vals.join(", "))
    }

    fn uri_parts(&self) -> Result<(String, String, String, Option<String>)> {
        let uri = self
            .target_uri
            .as_deref()
            .ok_or_else(|| bad("the message has no target URI"))?;
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("the target URI is not absolute"))?;
        let scheme = scheme.to_ascii_lowercase();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let mut authority = rest[..end].to_ascii_lowercase();
        let default = if scheme == "https" { ":443" } else { ":80" };
        if let Some(a) = authority.strip_suffix(default) {
            authority = a.to_owned();
        }
        let rest = &rest[end..];
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (rest, None),
        };
        let path = if path.is_empty() { "/" } else { path }.to_owned();
        Ok((scheme, authority, path, query))
    }

    /// The value of one component (RFC 9421 §2.1, §2.2).
    fn component(&self, id: &str) -> Result<String> {
        let v = match id {
            "@method" => self
                .method
                .clone()
                .ok_or_else(|| bad("`@method` is only defined for requests"))?,
            "@target-uri" => self
                .target_uri
                .clone()
                .ok_or_else(|| bad("`@target-uri` is only defined for requests"))?,
            "@authority" => self.uri_parts()?.1,
            "@scheme" => self.uri_parts()?.0,
            "@path" => self.uri_parts()?.2,
            "@query" => format!("?{}", self.uri_parts()?.3.unwrap_or_default()),
            "@request-target" => {
                let (_, _, p, q) = self.uri_parts()?;
                match q {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                }
            }
            "@status" => self
                .status
                .map(|s| s.to_string())
                .ok_or_else(|| bad("`@status` is only defined for responses"))?,
            "@signature-params" => return Err(bad("`@signature-params` cannot be covered")),
            d if d.starts_with('@') => {
                return Err(bad(format!("unsupported derived component `{d}`")));
            }
            h => {
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(bad(format!("component `{h}` must be lower case")));
                }
                self.header(h)
                    .ok_or_else(|| bad(format!("covered header `{h}` is not in the message")))?
            }
        };
        if v.contains(['\n', '\r']) {
            return Err(bad(format!("component `{id}` contains a line break")));
        }
        Ok(v)
    }
}

/// The signature base (RFC 9421 §2.5) for `components` and the serialized
/// `@signature-params` value.
pub fn signature_base(msg: &Message, components: &[Item], params_value: &str) -> Result<String> {
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for c in components {
        let Bare::Str(id) = &c.value else {
            return Err(bad("covered components are strings"));
        };
        if !c.params.is_empty() {
            return Err(bad(format!(
                "component parameters (on `{id}`) are not supported"
            )));
        }
        if seen.contains(&id.as_str()) {
            return Err(bad(format!("component `{id}` is covered twice")));
        }
        seen.push(id);
        out.push('"');
        out.push_str(id);
        out.push_str("\": ");
        out.push_str(&msg.component(id)?);
        out.push('\n');
    }
    out.push_str("\"@signature-params\": ");
    out.push_str(params_value);
    Ok(out)
}

/// The RFC 9421 algorithm name for a key type.
pub fn alg_name(alg: Alg) -> &'static str {
    match alg {
        Alg::EdDSA => "ed25519",
        Alg::ES256 => "ecdsa-p256-sha256",
    }
}

/// One signature found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its label.
    pub label: String,
    /// Covered components, in order.
    pub covered: Vec<String>,
    /// `created`.
    pub created: Option<i64>,
    /// `expires`.
    pub expires: Option<i64>,
    /// `nonce`.
    pub nonce: Option<String>,
    /// `keyid`.
    pub keyid: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
}

/// Picks the signature to verify from `Signature-Input` and `Signature`:
/// the one labelled `label`, or the only one. Returns the found parameters,
/// the signature base and the signature bytes.
pub fn select(
    msg: &Message,
    signature_input: &str,
    signature: &str,
    label: Option<&str>,
) -> Result<(Found, String, Vec<u8>)> {
    let inputs = parse_dictionary(signature_input)?;
    let sigs = parse_dictionary(signature)?;
    let (name, member) = match label {
        Some(l) => inputs
            .iter()
            .find(|(k, _)| k == l)
            .ok_or_else(|| bad(format!("no signature labelled `{l}`")))?,
        None if inputs.len() == 1 => &inputs[0],
        None => {
            return Err(bad(
                "several signatures; the verifier does not know which to check",
            ));
        }
    };
    let Member::List(items, params) = member else {
        return Err(bad("a Signature-Input member must be an inner list"));
    };
    let sig = match sigs.iter().find(|(k, _)| k == name) {
        Some((
            _,
            Member::Item(Item {
                value: Bare::Bytes(b),
                ..
            }),
        )) => b.clone(),
        Some(_) => return Err(bad("a Signature member must be a byte sequence")),
        None => return Err(bad(format!("no `Signature` for label `{name}`"))),
    };
    let mut found = Found {
        label: name.clone(),
        covered: Vec::new(),
        created: None,
        expires: None,
        nonce: None,
        keyid: None,
        tag: None,
    };
    for it in items {
        if let Bare::Str(s) = &it.value {
            found.covered.push(s.clone());
        }
    }
    for (k, v) in params {
        match (k.as_str(), v) {
            ("created", Bare::Int(i)) => found.created = Some(*i),
            ("expires", Bare::Int(i)) => found.expires = Some(*i),
            ("nonce", Bare::Str(s)) => found.nonce = Some(s.clone()),
            ("keyid", Bare::Str(s)) => found.keyid = Some(s.clone()),
            ("tag", Bare::Str(s)) => found.tag = Some(s.clone()),
            ("alg", Bare::Str(_)) => {}
            (k, _) => {
                return Err(bad(format!(
                    "signature parameter `{k}` is unknown or mistyped"
                )));
            }
        }
    }
    let base = signature_base(msg, items, &serialize_inner_list(items, params))?;
    Ok((found, base, sig))
}

/// Verifies the cryptographic signature only (no policy): the Appendix B
/// test cases use this. `alg`, if stated, must name the key's algorithm.
pub fn verify_signature(
    msg: &Message,
    signature_input: &str,
    signature: &str,
    label: Option<&str>,
    key: &PublicJwk,
) -> Result<Found> {
    let (found, base, sig) = select(msg, signature_input, signature, label)?;
    let inputs = parse_dictionary(signature_input)?;
    if let Some((_, Member::List(_, params))) = inputs.iter().find(|(k, _)| *k == found.label)
        && let Some((_, v)) = params.iter().find(|(k, _)| k == "alg")
        && *v != Bare::Str(alg_name(key.alg()).to_owned())
    {
        return Err(Error::UnsupportedAlgorithm {
            what: WHAT,
            alg: format!("{v:?} with a {} key", alg_name(key.alg())),
        });
    }
    key.verify(WHAT, key.alg(), base.as_bytes(), &sig)?;
    Ok(found)
}

/// What a verifier requires of a signature (RFC 9421 §3.2.1, §7.2).
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// Now (seconds since the epoch).
    pub now: u64,
    /// Allowed clock skew, seconds.
    pub skew: u64,
    /// Longest `expires - created`, seconds.
    pub max_lifetime: u64,
    /// Components that must be covered.
    pub required: &'a [&'a str],
}

/// Verifies a request signature under `policy`: signature, coverage,
/// `created` (required, not in the future), `expires` (required, not
/// passed, at most `max_lifetime` after `created`), `nonce` (required).
/// Replay of the nonce is for the caller to refuse.
pub fn verify_request(
    msg: &Message,
    signature_input: &str,
    signature: &str,
    label: Option<&str>,
    key: &PublicJwk,
    policy: &Policy<'_>,
) -> Result<Found> {
    let found = verify_signature(msg, signature_input, signature, label, key)?;
    for r in policy.required {
        if !found.covered.iter().any(|c| c == r) {
            return Err(bad(format!("the signature must cover `{r}`")));
        }
    }
    let created = found
        .created
        .ok_or_else(|| bad("the signature needs a `created` parameter"))?;
    let expires = found
        .expires
        .ok_or_else(|| bad("the signature needs an `expires` parameter"))?;
    if found
        .nonce
        .as_deref()
        .is_none_or(|n| n.len() < 8 || n.len() > 128)
    {
        return Err(bad("the signature needs a `nonce` of 8 to 128 characters"));
    }
    let now = policy.now as i64;
    if created > now + policy.skew as i64 {
        return Err(Error::NotYetValid {
            what: WHAT,
            iat: created.max(0) as u64,
            now: policy.now,
        });
    }
    if expires + (policy.skew as i64) < now {
        return Err(Error::Expired {
            what: WHAT,
            expired_at: expires.max(0) as u64,
            now: policy.now,
        });
    }
    if expires < created || (expires - created) as u64 > policy.max_lifetime {
        return Err(bad(format!(
            "`expires` must be after `created` and at most {} s later",
            policy.max_lifetime
        )));
    }
    Ok(found)
}

/// Verifies a request signed by the key a token is bound to (the key
/// travels in `Signature-Key`, scheme `hwk`, and must have thumbprint
/// `jkt`): exactly one signature; `@method`, `@target-uri`, `signature-key`
/// and, when `body` is not empty, `content-digest` (checked against `body`)
/// covered, besides `policy.required`; `created`/`expires`/`nonce` as
/// [`verify_request`]. Replay of the nonce is for the caller to refuse.
pub fn verify_bound(msg: &Message, jkt: &str, body: &[u8], policy: &Policy<'_>) -> Result<Found> {
    let get = |n: &str| {
        msg.header(n)
            .ok_or_else(|| bad(format!("the `{n}` header is missing")))
    };
    let input = get("signature-input")?;
    let signature = get("signature")?;
    let dict = parse_dictionary(&input)?;
    let [(label, _)] = dict.as_slice() else {
        return Err(bad("send exactly one signature in `Signature-Input`"));
    };
    let key_field = get("signature-key").map_err(|_| {
        bad("send the public key in `Signature-Key: <label>=hwk;kty=...;crv=...;x=...` (draft-hardt-httpbis-signature-key)")
    })?;
    let key = parse_signature_key(&key_field, label)?;
    if key.thumbprint() != jkt {
        return Err(bad(
            "the request is signed by a key other than the one the token is bound to",
        ));
    }
    let mut required = vec!["@method", "@target-uri", "signature-key"];
    if !body.is_empty() {
        required.push("content-digest");
    }
    required.extend_from_slice(policy.required);
    let found = verify_request(
        msg,
        &input,
        &signature,
        Some(label),
        &key,
        &Policy {
            required: &required,
            ..policy.clone()
        },
    )?;
    if !body.is_empty() {
        check_content_digest(&get("content-digest")?, body)?;
    }
    Ok(found)
}

/// What to sign with [`sign`].
#[derive(Debug, Clone)]
pub struct SignParams<'a> {
    /// Label, e.g. `sig1`.
    pub label: &'a str,
    /// Components to cover, in order.
    pub components: &'a [&'a str],
    /// `created`.
    pub created: u64,
    /// `expires`.
    pub expires: Option<u64>,
    /// `nonce`.
    pub nonce: Option<&'a str>,
    /// `keyid`.
    pub keyid: Option<&'a str>,
    /// Whether to state `alg`.
    pub include_alg: bool,
    /// `tag`: what the signature is for (RFC 9421 §2.3).
    pub tag: Option<&'a str>,
}

/// Signs `msg`; returns the `Signature-Input` and `Signature` field values.
pub fn sign(msg: &Message, key: &SigningKey, p: &SignParams<'_>) -> Result<(String, String)> {
    let items: Vec<Item> = p
        .components
        .iter()
        .map(|c| Item {
            value: Bare::Str((*c).to_owned()),
            params: vec![],
        })
        .collect();
    let mut params: Params = vec![("created".into(), Bare::Int(p.created as i64))];
    if let Some(e) = p.expires {
        params.push(("expires".into(), Bare::Int(e as i64)));
    }
    if let Some(n) = p.nonce {
        params.push(("nonce".into(), Bare::Str(n.to_owned())));
    }
    if let Some(k) = p.keyid {
        params.push(("keyid".into(), Bare::Str(k.to_owned())));
    }
    if let Some(t) = p.tag {
        params.push(("tag".into(), Bare::Str(t.to_owned())));
    }
    if p.include_alg {
        params.push(("alg".into(), Bare::Str(alg_name(key.alg()).into())));
    }
    let value = serialize_inner_list(&items, &params);
    let base = signature_base(msg, &items, &value)?;
    let sig = key.sign(base.as_bytes());
    let mut s = format!("{}=:", p.label);
    use base64::Engine as _;
    s.push_str(&base64::engine::general_purpose::STANDARD.encode(sig));
    s.push(':');
    Ok((format!("{}={value}", p.label), s))
}

// ---------------------------------------------------------------- RFC 9530

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_parse_and_inner_lists_round_trip() {
        let d = parse_dictionary(
            r#"sig1=("@method" "@target-uri" "content-digest");created=1618884473;keyid="k\"1";nonce="abc", sig2=:AAEC:"#,
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        let Member::List(items, params) = &d[0].1 else {
            panic!()
        };
        assert_eq!(
            serialize_inner_list(items, params),
            r#"("@method" "@target-uri" "content-digest");created=1618884473;keyid="k\"1";nonce="abc""#
        );
        assert_eq!(
            d[1].1,
            Member::Item(Item {
                value: Bare::Bytes(vec![0, 1, 2]),
                params: vec![]
            })
        );
        for bad in [
            "sig1=(",
            "sig1=(\"a\"\"b\")",
            "Sig1=()",
            "a=1, a=2",
            "a=1,",
            "a=\"\u{7f}\"",
            "a=:not base64!:",
            "a=1.5",
            "a=1234567890123456",
            "a=();x=1;x=2",
            "a=@1659578233",
            "a=%\"caf%c3%a9\"",
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad}");
        }
        // Stricter than RFC 9651 (which keeps the last): a repeated
        // parameter could rewrite a header that still verifies.
        for dup in ["a=();x=1;x=2", "a=(\"@method\";req;req)", "a=1;b;b=2"] {
            assert!(parse_dictionary(dup).is_err(), "{dup}");
        }
    }

    #[test]
    fn content_digest_matches_only_its_body() {
        let d = content_digest(b"{\"hello\": \"world\"}");
        assert_eq!(d, "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:");
        check_content_digest(&d, b"{\"hello\": \"world\"}").unwrap();
        assert!(check_content_digest(&d, b"{\"hello\": \"world!\"}").is_err());
        // RFC 9530 / RFC 9421 test-request digest (sha-512).
        check_content_digest(
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            b"{\"hello\": \"world\"}",
        )
        .unwrap();
        assert!(check_content_digest("md5=:AAAA:", b"x").is_err());
    }
}
