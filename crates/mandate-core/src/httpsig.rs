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

use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, Result, malformed};
use crate::jose::{Alg, PublicJwk};
use crate::keys::SigningKey;

/// Longest `Signature-Input` / `Signature` / `Signature-Key` value accepted.
pub const MAX_FIELD_LEN: usize = 8192;

const WHAT: &str = "HTTP message signature";

fn bad(reason: impl Into<String>) -> Error {
    malformed(WHAT, reason)
}

// ---------------------------------------------------------------- RFC 8941

/// A bare item (RFC 8941 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bare {
    /// Integer.
    Int(i64),
    /// String.
    Str(String),
    /// Token.
    Token(String),
    /// Byte sequence.
    Bytes(Vec<u8>),
    /// Boolean.
    Bool(bool),
}

/// Parameters, in order.
pub type Params = Vec<(String, Bare)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value.
    pub value: Bare,
    /// Its parameters.
    pub params: Params,
}

/// A dictionary member's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A single item.
    Item(Item),
    /// An inner list and its parameters.
    List(Vec<Item>, Params),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> Result<String> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err(bad("a structured field key must start with a-z or *")),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'.' | b'*')
            {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn bare(&mut self) -> Result<Bare> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.i += 1;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
                if self.peek() == Some(b'.') {
                    return Err(bad("decimals are not accepted here"));
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| bad("integer"))?;
                if t.trim_start_matches('-').len() > 15 {
                    return Err(bad("integer longer than 15 digits"));
                }
                t.parse().map(Bare::Int).map_err(|_| bad("not an integer"))
            }
            Some(b'"') => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    match self.peek() {
                        None => return Err(bad("unterminated string")),
                        Some(b'"') => {
                            self.i += 1;
                            return Ok(Bare::Str(out));
                        }
                        Some(b'\\') => {
                            self.i += 1;
                            match self.peek() {
                                Some(c @ (b'"' | b'\\')) => {
                                    out.push(c as char);
                                    self.i += 1;
                                }
                                _ => return Err(bad("bad escape in string")),
                            }
                        }
                        Some(c @ 0x20..=0x7e) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        Some(_) => return Err(bad("strings are printable ASCII")),
                    }
                }
            }
            Some(b':') => {
                self.i += 1;
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == b':' {
                        break;
                    }
                    if !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
                        return Err(bad("byte sequences are base64"));
                    }
                    self.i += 1;
                }
                if self.peek() != Some(b':') {
                    return Err(bad("unterminated byte sequence"));
                }
                let raw = &self.s[start..self.i];
                self.i += 1;
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map(Bare::Bytes)
                    .map_err(|_| bad("byte sequence is not base64"))
            }
            Some(b'?') => {
                self.i += 1;
                let v = match self.peek() {
                    Some(b'1') => true,
                    Some(b'0') => false,
                    _ => return Err(bad("booleans are ?0 or ?1")),
                };
                self.i += 1;
                Ok(Bare::Bool(v))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(Bare::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => Err(bad("expected an item")),
        }
    }
    fn params(&mut self) -> Result<Params> {
        let mut out: Params = Vec::new();
        while self.peek() == Some(b';') {
            self.i += 1;
            self.sp();
            let k = self.key()?;
            let v = if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            if out.iter().any(|(x, _)| *x == k) {
                return Err(bad(format!("parameter `{k}` appears twice")));
            }
            out.push((k, v));
        }
        Ok(out)
    }
    fn item(&mut self) -> Result<Item> {
        let value = self.bare()?;
        let params = self.params()?;
        Ok(Item { value, params })
    }
    fn member(&mut self) -> Result<Member> {
        if self.peek() != Some(b'(') {
            return self.item().map(Member::Item);
        }
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.sp();
            if self.peek() == Some(b')') {
                self.i += 1;
                let p = self.params()?;
                return Ok(Member::List(items, p));
            }
            items.push(self.item()?);
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(bad("inner list items are separated by spaces"));
            }
            if items.len() > 64 {
                return Err(bad("more than 64 components"));
            }
        }
    }
}

/// Parses a Structured Field Dictionary (RFC 8941 §4.2.2). Duplicate keys
/// are refused (the spec keeps the last; for signatures that would let a
/// second member silently replace the first).
pub fn parse_dictionary(field: &str) -> Result<Vec<(String, Member)>> {
    if field.len() > MAX_FIELD_LEN {
        return Err(bad(format!("a field is longer than {MAX_FIELD_LEN} bytes")));
    }
    let mut p = Parser {
        s: field.as_bytes(),
        i: 0,
    };
    p.sp();
    let mut out: Vec<(String, Member)> = Vec::new();
    while p.peek().is_some() {
        let k = p.key()?;
        let m = if p.peek() == Some(b'=') {
            p.i += 1;
            p.member()?
        } else {
            Member::Item(Item {
                value: Bare::Bool(true),
                params: p.params()?,
            })
        };
        if out.iter().any(|(x, _)| *x == k) {
            return Err(bad(format!("`{k}` appears twice")));
        }
        out.push((k, m));
        p.ows();
        match p.peek() {
            None => break,
            Some(b',') => {
                p.i += 1;
                p.ows();
                if p.peek().is_none() {
                    return Err(bad("trailing comma"));
                }
            }
            _ => return Err(bad("dictionary members are separated by commas")),
        }
    }
    Ok(out)
}

fn ser_bare(v: &Bare, out: &mut String) {
    match v {
        Bare::Int(i) => out.push_str(&i.to_string()),
        Bare::Str(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Bare::Token(t) => out.push_str(t),
        Bare::Bytes(b) => {
            use base64::Engine as _;
            out.push(':');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push(':');
        }
        Bare::Bool(b) => out.push_str(if *b { "?1" } else { "?0" }),
    }
}

fn ser_params(p: &Params, out: &mut String) {
    for (k, v) in p {
        out.push(';');
        out.push_str(k);
        if *v != Bare::Bool(true) {
            out.push('=');
            ser_bare(v, out);
        }
    }
}

/// Serializes an inner list with parameters (RFC 8941 §4.1.1.1).
pub fn serialize_inner_list(items: &[Item], params: &Params) -> String {
    let mut out = String::from("(");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        ser_bare(&it.value, &mut out);
        ser_params(&it.params, &mut out);
    }
    out.push(')');
    ser_params(params, &mut out);
    out
}

// ---------------------------------------------------------------- messages

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

/// `Content-Digest` for `body` with SHA-256 (RFC 9530 §2).
pub fn content_digest(body: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
    )
}

/// Checks a `Content-Digest` field against `body`: every `sha-256` and
/// `sha-512` member must match, and at least one must be present; other
/// algorithms are ignored (RFC 9530 §2, §6.2 forbids insecure ones anyway).
pub fn check_content_digest(field: &str, body: &[u8]) -> Result<()> {
    let mut checked = 0;
    for (alg, m) in parse_dictionary(field)? {
        let Member::Item(Item {
            value: Bare::Bytes(d),
            ..
        }) = m
        else {
            return Err(malformed("Content-Digest", "members are byte sequences"));
        };
        let ok = match alg.as_str() {
            "sha-256" => Sha256::digest(body).as_slice() == d.as_slice(),
            "sha-512" => Sha512::digest(body).as_slice() == d.as_slice(),
            _ => continue,
        };
        if !ok {
            return Err(malformed(
                "Content-Digest",
                format!("the {alg} digest does not match the body"),
            ));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(malformed("Content-Digest", "no sha-256 or sha-512 digest"));
    }
    Ok(())
}

// ------------------------------------------- draft-hardt-httpbis-signature-key

/// The `Signature-Key` field value for `key` under `label` (scheme `hwk`).
pub fn signature_key_field(label: &str, key: &PublicJwk) -> String {
    let jwk = key.to_json();
    let s = |k: &str| {
        jwk.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut params: Params = vec![
        ("kty".into(), Bare::Str(s("kty"))),
        ("crv".into(), Bare::Str(s("crv"))),
        ("x".into(), Bare::Str(s("x"))),
    ];
    if jwk.get("y").is_some() {
        params.push(("y".into(), Bare::Str(s("y"))));
    }
    let mut out = format!("{label}=hwk");
    ser_params(&params, &mut out);
    out
}

/// Reads the public key for `label` from a `Signature-Key` field (scheme
/// `hwk` only).
pub fn parse_signature_key(field: &str, label: &str) -> Result<PublicJwk> {
    let dict = parse_dictionary(field)?;
    let Some((_, Member::Item(it))) = dict.iter().find(|(k, _)| k == label) else {
        return Err(malformed(
            "Signature-Key",
            format!("no key for signature `{label}`"),
        ));
    };
    if it.value != Bare::Token("hwk".into()) {
        return Err(malformed(
            "Signature-Key",
            "only the `hwk` scheme (the public key inline) is accepted",
        ));
    }
    let mut jwk = serde_json::Map::new();
    for (k, v) in &it.params {
        if let ("kty" | "crv" | "x" | "y", Bare::Str(s)) = (k.as_str(), v) {
            jwk.insert(k.clone(), serde_json::Value::String(s.clone()));
        }
    }
    PublicJwk::from_json(&serde_json::Value::Object(jwk))
}

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
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad}");
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
