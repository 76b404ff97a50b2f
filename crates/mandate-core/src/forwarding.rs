//! What the broker's proxy lets through besides method and path (issue 10,
//! items 7 and 12): request parts that make some upstream frameworks do
//! something other than the request line says (method overrides in
//! headers, query or body; rewritten URLs; control characters), and the
//! amount a money-moving request carries, read from its body the way the
//! upstream will read it, or refused when that is ambiguous.
//!
//! Pure functions; the server reads the body (bounded) and calls them.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::tooling::{AmountAt, decode_hex_pair};

/// Headers that make a server (or a framework behind it) take another
/// method or path than the request line's: `X-HTTP-Method-Override` and
/// friends (Google, OData, Symfony, Express's `method-override`), and
/// `X-Original-URL` / `X-Rewrite-URL` (IIS, Symfony, Zend).
pub const OVERRIDE_HEADERS: [&str; 6] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
];

/// Parameter names that override the method (Rails, Laravel, Symfony,
/// Express's `method-override`), compared after [`param_key`].
const OVERRIDE_PARAMS: [&str; 4] = [
    "_method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a request header name overrides method or path.
pub fn is_override_header(name: &str) -> bool {
    OVERRIDE_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name.trim()))
}

/// Why a request part is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(why.into()))
}

/// Checks a query string: no control characters (raw or encoded: `%0d%0a`
/// is how headers get injected by upstreams that log or re-emit it), no
/// non-ASCII bytes, and no method-override parameter (`_method=DELETE`).
pub fn check_query(query: &str) -> Result<(), Refusal> {
    if query.len() > 8192 {
        return refuse("the query string is longer than 8192 bytes");
    }
    if !query.is_ascii() || query.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return refuse("the query string holds a space, a control character or a non-ASCII byte");
    }
    let b = query.as_bytes();
    for (i, _) in b.iter().enumerate().filter(|(_, c)| **c == b'%') {
        if let Some(c) = decode_hex_pair(b.get(i + 1..i + 3))
            && (c < 0x20 || c == 0x7f)
        {
            return refuse(
                "the query string holds an encoded control character (`%00`, `%0d%0a`, ...)",
            );
        }
    }
    for name in pair_names(b, true) {
        if is_override_param(&name) {
            return refuse(format!(
                "the query string sets `{}`, which makes some servers perform another method than the one authorised; send the request with its real method",
                clip(&name)
            ));
        }
    }
    Ok(())
}

/// How a request body is encoded, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` or `*/*+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `multipart/*`.
    Multipart,
    /// No `Content-Type`: some frameworks (Rack) parse such a body as a form.
    Unlabelled,
    /// Anything else: forwarded without being read.
    Other,
}

impl BodyKind {
    /// The kind a `Content-Type` value names.
    pub fn of(content_type: Option<&str>) -> BodyKind {
        let Some(ct) = content_type else {
            return BodyKind::Unlabelled;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if media.is_empty() {
            BodyKind::Unlabelled
        } else if media == "application/json" || media.ends_with("+json") {
            BodyKind::Json
        } else if media == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else if media.starts_with("multipart/") {
            BodyKind::Multipart
        } else {
            BodyKind::Other
        }
    }

    /// Whether the proxy must read such a body before forwarding it (to
    /// look for a method override).
    pub fn is_inspected(self) -> bool {
        self != BodyKind::Other
    }
}

/// Refuses a body that overrides the request's method: a `_method` field
/// of a form (or of an unlabelled body, which Rack reads as one), a
/// top-level `_method` key of a JSON object (Laravel reads JSON input too),
/// or a `_method` part of a multipart body.
pub fn check_body_overrides(kind: BodyKind, body: &[u8]) -> Result<(), Refusal> {
    let found = match kind {
        BodyKind::Other => None,
        BodyKind::Form | BodyKind::Unlabelled => {
            pair_names(body, true).find(|n| is_override_param(n))
        }
        BodyKind::Multipart => {
            let lower = body.to_ascii_lowercase();
            [&b"_method"[..], b"%5fmethod"]
                .iter()
                .any(|n| lower.windows(n.len()).any(|w| w == *n))
                .then(|| "_method".to_owned())
        }
        BodyKind::Json => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let v: Value = serde_json::from_slice(body).map_err(|_| {
                Refusal(
                    "the body is labelled JSON but does not parse; the proxy reads JSON bodies before forwarding them".into(),
                )
            })?;
            v.as_object()
                .and_then(|o| {
                    o.keys()
                        .find(|k| is_override_param(&param_key(k.as_bytes())))
                })
                .cloned()
        }
    };
    match found {
        Some(name) => refuse(format!(
            "the body sets `{}`, which makes some servers perform another method than the one authorised; send the request with its real method",
            clip(&name)
        )),
        None => Ok(()),
    }
}

/// Why a request's amount cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountProblem {
    /// The body is not of the kind the route reads the amount from.
    ContentType {
        /// The `Content-Type` to send.
        expected: &'static str,
    },
    /// The body does not parse (or is ambiguous: a key or field twice).
    Unreadable(String),
    /// No amount where the route says it is.
    Missing(String),
    /// Something that is not a non-negative integer in minor units.
    NotAnAmount(String),
    /// The amount's name also appears in the query string.
    AlsoInQuery(String),
}

impl fmt::Display for AmountProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountProblem::ContentType { expected } => write!(
                f,
                "this route reads the amount from the body: send it as `Content-Type: {expected}`"
            ),
            AmountProblem::Unreadable(why) => write!(f, "the body cannot be read: {why}"),
            AmountProblem::Missing(at) => write!(f, "the body has no amount at `{at}`"),
            AmountProblem::NotAnAmount(at) => write!(
                f,
                "the amount at `{at}` is not a non-negative integer in minor units"
            ),
            AmountProblem::AlsoInQuery(name) => write!(
                f,
                "the query string also names `{name}`, which some servers read instead of the body's"
            ),
        }
    }
}

/// Longest amount accepted, in digits (fits `i64`).
const MAX_AMOUNT_DIGITS: usize = 18;

/// The amount (minor units) a request body carries where `at` says, read
/// strictly: a JSON body with a key twice in one object (even differing
/// only in letter case) or a form with the field twice (even spelled the
/// way PHP or ASP.NET would merge: `amount`, `Amount`, `amount[]`) is
/// refused, and so is the amount's name in the query string.
pub fn amount_in(
    at: &AmountAt,
    kind: BodyKind,
    body: &[u8],
    query: Option<&str>,
) -> Result<u64, AmountProblem> {
    let name = param_key(at.field_name().as_bytes());
    let last = key_parts(&name).last().unwrap_or(&name).to_owned();
    if let Some(q) = query
        && pair_names(q.as_bytes(), true)
            .any(|n| same_field(&n, &name) || key_parts(&n).any(|p| p == last))
    {
        return Err(AmountProblem::AlsoInQuery(clip(&at.field_name())));
    }
    match at {
        AmountAt::Json(pointer) => {
            if kind != BodyKind::Json {
                return Err(AmountProblem::ContentType {
                    expected: "application/json",
                });
            }
            let v = strict_json(body).map_err(AmountProblem::Unreadable)?;
            let found = v
                .pointer(pointer)
                .ok_or_else(|| AmountProblem::Missing(clip(pointer)))?;
            let n = match found {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => digits(s.as_bytes()),
                _ => None,
            };
            n.ok_or_else(|| AmountProblem::NotAnAmount(clip(pointer)))
        }
        AmountAt::Form(field) => {
            if kind != BodyKind::Form {
                return Err(AmountProblem::ContentType {
                    expected: "application/x-www-form-urlencoded",
                });
            }
            let mut value = None;
            for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
                let mut it = pair.splitn(2, |b| *b == b'=');
                let raw_name = it.next().unwrap_or_default();
                let decoded = strict_decode(raw_name)
                    .ok_or_else(|| AmountProblem::Unreadable("a bad percent-encoding".into()))?;
                if !same_field(&param_key(&decoded), &name) {
                    continue;
                }
                if value.is_some() {
                    return Err(AmountProblem::Unreadable(format!(
                        "field `{}` appears more than once",
                        clip(field)
                    )));
                }
                let raw = strict_decode(it.next().unwrap_or_default())
                    .ok_or_else(|| AmountProblem::Unreadable("a bad percent-encoding".into()))?;
                value = Some(raw);
            }
            let raw = value.ok_or_else(|| AmountProblem::Missing(clip(field)))?;
            digits(&raw).ok_or_else(|| AmountProblem::NotAnAmount(clip(field)))
        }
    }
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_AMOUNT_DIGITS || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A parameter name as the most permissive common framework would see it:
/// percent-decoded (`+` as space), lower case, ` ` and `.` as `_` (PHP).
fn param_key(raw: &[u8]) -> String {
    let decoded = lenient_decode(raw);
    String::from_utf8_lossy(&decoded)
        .to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '.' { '_' } else { c })
        .collect()
}

/// A name without its brackets (`amount[]` → `amount`): what PHP and Rails
/// file it under.
fn base(key: &str) -> &str {
    key.split('[').next().unwrap_or_default()
}

/// Whether a form field is `name`, also as PHP and Rails would file it
/// (`amount[]`, `amount[0]`).
fn same_field(key: &str, name: &str) -> bool {
    key.strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
}

/// The parts of a bracketed name (`payment[amount]` → `payment`, `amount`).
fn key_parts(key: &str) -> impl Iterator<Item = &str> {
    key.split(['[', ']']).filter(|p| !p.is_empty())
}

fn is_override_param(key: &str) -> bool {
    OVERRIDE_PARAMS.contains(&base(key))
}

/// The parameter names of a query string or form body (separated by `&`,
/// and by `;` as older servers do), as [`param_key`]s. Never fails: a
/// name that does not decode is taken as it is.
fn pair_names(b: &[u8], semicolons: bool) -> impl Iterator<Item = String> + '_ {
    b.split(move |c| *c == b'&' || (semicolons && *c == b';'))
        .filter(|p| !p.is_empty())
        .map(|p| param_key(p.split(|c| *c == b'=').next().unwrap_or_default()))
}

fn lenient_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match (s[i], decode_hex_pair(s.get(i + 1..i + 3))) {
            (b'%', Some(c)) => {
                out.push(c);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    out
}

fn strict_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                out.push(decode_hex_pair(s.get(i + 1..i + 3))?);
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// A key as case-insensitive matchers see it: every character upper-cased,
/// then lower-cased, so the characters Unicode folds together across case
/// (`ſ` and `s`, the Kelvin sign and `k`, `ß` and `ss`) meet too, as they
/// do in Go's `encoding/json` and `strings.EqualFold`.
pub fn fold_case(k: &str) -> String {
    k.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Parses JSON, refusing an object with a key twice, also when two keys
/// differ only in letter case (parsers disagree on which one wins).
pub fn strict_json(body: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = (&mut de)
        .deserialize_any(StrictVisitor)
        .map_err(|e| format!("not JSON, or ambiguous JSON ({e})"))?;
    de.end()
        .map_err(|_| "trailing data after the JSON value".to_owned())?;
    Ok(v)
}

struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Strict(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = serde_json::Map::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(fold_case(&k)) {
                return Err(de::Error::custom(format!(
                    "key `{}` appears twice in one object",
                    clip(&k)
                )));
            }
            let Strict(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// Single-use credentials already spent, until they expire (issue 10,
/// item 7: a credential issued for an amount is good for one call). Bounded;
/// when full it refuses rather than forgets, because forgetting would make a
/// spent credential good again.
#[derive(Debug)]
pub struct SpentSet {
    until: std::collections::HashMap<String, crate::UnixTime>,
    capacity: usize,
}

/// Why [`SpentSet::spend`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendRefused {
    /// This credential was spent before.
    Spent,
    /// The set holds `capacity` live credentials.
    Full,
}

impl SpentSet {
    /// An empty set that holds at most `capacity` live credentials.
    pub fn new(capacity: usize) -> Self {
        Self {
            until: std::collections::HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Spends `id`, remembered until `until` (its expiry), at `now`.
    pub fn spend(
        &mut self,
        id: &str,
        until: crate::UnixTime,
        now: crate::UnixTime,
    ) -> Result<(), SpendRefused> {
        if self.until.get(id).is_some_and(|u| *u >= now) {
            return Err(SpendRefused::Spent);
        }
        if self.until.len() >= self.capacity {
            self.until.retain(|_, u| *u >= now);
            if self.until.len() >= self.capacity {
                return Err(SpendRefused::Full);
            }
        }
        self.until.insert(id.to_owned(), until);
        Ok(())
    }

    /// Number of credentials held (some may have expired).
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// True when none are held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_at(p: &str) -> AmountAt {
        AmountAt::Json(p.into())
    }

    #[test]
    fn override_headers_are_known_in_any_case() {
        for h in [
            "X-HTTP-Method-Override",
            "x-http-method",
            "X-Method-Override",
            "X-Original-URL",
            "x-rewrite-url",
        ] {
            assert!(is_override_header(h), "{h}");
        }
        assert!(!is_override_header("x-request-id"));
    }

    #[test]
    fn queries_that_override_or_inject_are_refused() {
        for q in [
            "_method=DELETE",
            "a=1&_METHOD=delete",
            "a=1;_method=delete",
            "%5fmethod=delete",
            "_method[]=delete",
            ".method=delete",
            "x-http-method-override=DELETE",
            "q=a%0d%0aSet-Cookie:x",
            "q=%00",
            "q=%7F",
        ] {
            assert!(check_query(q).is_err(), "{q}");
        }
        for q in [
            "",
            "dry=1",
            "q=caf%C3%A9",
            "method=card",
            "a=%20b&c",
            "p=100%",
        ] {
            assert!(check_query(q).is_ok(), "{q}");
        }
    }

    #[test]
    fn bodies_that_override_the_method_are_refused() {
        use BodyKind::*;
        assert!(check_body_overrides(Form, b"a=1&_method=DELETE").is_err());
        assert!(check_body_overrides(Form, b"_method%5B%5D=DELETE").is_err());
        assert!(check_body_overrides(Unlabelled, b"_method=delete").is_err());
        assert!(check_body_overrides(Json, br#"{"to":"x","_method":"DELETE"}"#).is_err());
        assert!(check_body_overrides(Json, br#"{"\u005fmethod":"DELETE"}"#).is_err());
        assert!(check_body_overrides(Json, b"{not json").is_err());
        assert!(
            check_body_overrides(
                Multipart,
                b"--b\r\nContent-Disposition: form-data; name=\"_METHOD\"\r\n\r\nDELETE\r\n--b--"
            )
            .is_err()
        );
        assert!(check_body_overrides(Form, b"a=1&method=card").is_ok());
        assert!(check_body_overrides(Json, br#"{"nested":{"_method":"x"}}"#).is_ok());
        assert!(check_body_overrides(Json, b"").is_ok());
        assert!(check_body_overrides(Other, b"_method=DELETE").is_ok());
    }

    #[test]
    fn body_kinds_follow_the_content_type() {
        assert_eq!(
            BodyKind::of(Some("application/json; charset=utf-8")),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::of(Some("application/merge-patch+json")),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::of(Some("Application/X-WWW-Form-Urlencoded")),
            BodyKind::Form
        );
        assert_eq!(
            BodyKind::of(Some("multipart/form-data; boundary=x")),
            BodyKind::Multipart
        );
        assert_eq!(BodyKind::of(None), BodyKind::Unlabelled);
        assert_eq!(
            BodyKind::of(Some("application/octet-stream")),
            BodyKind::Other
        );
    }

    #[test]
    fn json_amounts_are_read_strictly() {
        let at = json_at("/amount");
        let j = BodyKind::Json;
        assert_eq!(amount_in(&at, j, br#"{"amount": 2500}"#, None), Ok(2500));
        assert_eq!(amount_in(&at, j, br#"{"amount": "2500"}"#, None), Ok(2500));
        assert_eq!(
            amount_in(
                &json_at("/payment/total"),
                j,
                br#"{"payment":{"total":7}}"#,
                None
            ),
            Ok(7)
        );
        assert_eq!(
            amount_in(&at, j, br#"{"total": 1}"#, None),
            Err(AmountProblem::Missing("/amount".into()))
        );
        for bad in [
            &br#"{"amount": -1}"#[..],
            br#"{"amount": 25.5}"#,
            br#"{"amount": 1e9}"#,
            br#"{"amount": "25.00"}"#,
            br#"{"amount": null}"#,
            br#"{"amount": 99999999999999999999999}"#,
        ] {
            assert!(
                matches!(
                    amount_in(&at, j, bad, None),
                    Err(AmountProblem::NotAnAmount(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for ambiguous in [
            &br#"{"amount": 1, "amount": 2500000}"#[..],
            br#"{"amount": 1, "Amount": 2500000}"#,
            br#"{"amount": 1, "\u0061mount": 2500000}"#,
            br#"{"amount": 1} {"amount": 2}"#,
            b"not json",
        ] {
            assert!(
                matches!(
                    amount_in(&at, j, ambiguous, None),
                    Err(AmountProblem::Unreadable(_))
                ),
                "{}",
                String::from_utf8_lossy(ambiguous)
            );
        }
        assert_eq!(
            amount_in(&at, BodyKind::Form, b"amount=1", None),
            Err(AmountProblem::ContentType {
                expected: "application/json"
            })
        );
        assert!(matches!(
            amount_in(&at, j, br#"{"amount": 1}"#, Some("amount=2500000")),
            Err(AmountProblem::AlsoInQuery(_))
        ));
        assert!(matches!(
            amount_in(&at, j, br#"{"amount": 1}"#, Some("payment[amount]=2500000")),
            Err(AmountProblem::AlsoInQuery(_))
        ));
        assert_eq!(amount_in(&at, j, br#"{"amount": 1}"#, Some("dry=1")), Ok(1));
    }

    #[test]
    fn form_amounts_are_read_strictly() {
        let at = AmountAt::Form("amount".into());
        let f = BodyKind::Form;
        assert_eq!(
            amount_in(&at, f, b"currency=eur&amount=2500", None),
            Ok(2500)
        );
        assert_eq!(amount_in(&at, f, b"%61mount=2500", None), Ok(2500));
        for ambiguous in [
            &b"amount=1&amount=2500000"[..],
            b"amount=1&Amount=2500000",
            b"amount=1&amount[]=2500000",
            b"amount=%zz",
        ] {
            assert!(
                matches!(
                    amount_in(&at, f, ambiguous, None),
                    Err(AmountProblem::Unreadable(_))
                ),
                "{}",
                String::from_utf8_lossy(ambiguous)
            );
        }
        let total = AmountAt::Form("total_amount".into());
        assert!(matches!(
            amount_in(&total, f, b"total_amount=1&total.amount=2500000", None),
            Err(AmountProblem::Unreadable(_))
        ));
        for bad in [
            &b"amount="[..],
            b"amount=+1",
            b"amount=1.5",
            b"amount=-1",
            b"amount=1;x=2",
        ] {
            assert!(
                matches!(
                    amount_in(&at, f, bad, None),
                    Err(AmountProblem::NotAnAmount(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            amount_in(&at, f, b"x=1", None),
            Err(AmountProblem::Missing(_))
        ));
        assert!(matches!(
            amount_in(&at, BodyKind::Json, b"{}", None),
            Err(AmountProblem::ContentType { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_body(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), q in "[ -~]{0,40}") {
            let _ = amount_in(&json_at("/a/0"), BodyKind::Json, &body, Some(&q));
            let _ = amount_in(&AmountAt::Form("a".into()), BodyKind::Form, &body, Some(&q));
            let _ = check_body_overrides(BodyKind::Form, &body);
            let _ = check_body_overrides(BodyKind::Json, &body);
            let _ = check_query(&q);
        }
    }

    #[test]
    fn a_spent_credential_stays_spent_until_it_expires_and_a_full_set_refuses() {
        let mut set = SpentSet::new(2);
        assert_eq!(set.spend("a", 100, 10), Ok(()));
        assert_eq!(set.spend("a", 100, 50), Err(SpendRefused::Spent));
        assert_eq!(set.spend("b", 20, 10), Ok(()));
        assert_eq!(set.spend("c", 100, 10), Err(SpendRefused::Full));
        // once "b" expired there is room again; "a" is still spent
        assert_eq!(set.spend("c", 100, 21), Ok(()));
        assert_eq!(set.spend("a", 100, 21), Err(SpendRefused::Spent));
        assert_eq!(set.len(), 2);
    }
}
