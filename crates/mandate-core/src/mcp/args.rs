//! A `tools/call`'s `arguments` checked against the tool's modelled type
//! ([`super::schema`]) before policy reads them: every value policies see
//! has the type the schema promised (so a policy cannot fail on a string
//! where it compares a number), within bounds (so no call costs much to
//! judge), and what goes upstream is exactly what was judged (re-serialised
//! from the checked tree, never the caller's bytes).

use serde_json::{Map, Value};

use super::schema::{ArgType, Record};

/// Longest string argument (bytes).
pub const MAX_STRING: usize = 16 * 1024;
/// Most elements of one array argument.
pub const MAX_SET: usize = 256;
/// Most values in one call's arguments, all levels together.
pub const MAX_NODES: usize = 1024;
/// Largest integer magnitude: 2^53 − 1, what every JSON implementation
/// (JavaScript's included) reads exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// What happens to arguments policies cannot read (unmodelled or undeclared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Extra {
    /// Refuse the call (the default).
    #[default]
    Refuse,
    /// Forward them; no policy sees them.
    Pass,
}

/// Checked arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// What goes upstream.
    pub forward: Map<String, Value>,
    /// What policies see as `context.arguments` (modelled members only;
    /// `null` members absent).
    pub visible: Map<String, Value>,
    /// Top-level argument names, sorted (for the audit trail).
    pub keys: Vec<String>,
}

/// Why arguments are refused: where, and what is wrong (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgProblem {
    /// JSON pointer of the offending member (`/to/email`).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ArgProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "argument `{}`: {}", self.pointer, self.message)
        }
    }
}

/// Checks `arguments` (absent: `{}`) against `ty`.
pub fn check(ty: &Record, arguments: Option<&Value>, extra: Extra) -> Result<Checked, ArgProblem> {
    let empty = Value::Object(Map::new());
    let args = match arguments {
        None | Some(Value::Null) => &empty,
        Some(v) => v,
    };
    let Value::Object(o) = args else {
        return Err(problem("", "`arguments` must be a JSON object"));
    };
    let mut c = Checker { nodes: 0, extra };
    let (forward, visible) = c.record(ty, o, "")?;
    let mut keys: Vec<String> = forward.keys().cloned().collect();
    keys.sort();
    Ok(Checked {
        forward,
        visible,
        keys,
    })
}

fn problem(pointer: &str, message: impl Into<String>) -> ArgProblem {
    ArgProblem {
        pointer: pointer.to_owned(),
        message: message.into(),
    }
}

fn pointer(parent: &str, key: &str) -> String {
    let k: String = key
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
        .replace('~', "~0")
        .replace('/', "~1");
    format!("{parent}/{k}")
}

/// An object's members.
type Members = Map<String, Value>;

struct Checker {
    nodes: usize,
    extra: Extra,
}

impl Checker {
    fn count(&mut self, at: &str) -> Result<(), ArgProblem> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(problem(
                at,
                format!("the arguments hold more than {MAX_NODES} values"),
            ));
        }
        Ok(())
    }

    fn record(
        &mut self,
        ty: &Record,
        o: &Map<String, Value>,
        at: &str,
    ) -> Result<(Members, Members), ArgProblem> {
        let (mut forward, mut visible) = (Map::new(), Map::new());
        for (k, v) in o {
            let p = pointer(at, k);
            self.count(&p)?;
            if k.len() > 256 || k.chars().any(char::is_control) {
                return Err(problem(
                    &p,
                    "argument names are at most 256 bytes, without control characters",
                ));
            }
            match ty.attrs.get(k) {
                Some(a) if v.is_null() => {
                    if !a.nullable {
                        return Err(problem(&p, "must not be null"));
                    }
                    forward.insert(k.clone(), Value::Null);
                }
                Some(a) => {
                    let (f, seen) = self.value(&a.ty, v, &p)?;
                    forward.insert(k.clone(), f);
                    visible.insert(k.clone(), seen);
                }
                None => {
                    if self.extra == Extra::Refuse {
                        let why = if ty.unmodelled.contains(k) {
                            "its schema is of a kind policies cannot judge"
                        } else {
                            "the tool's schema does not declare it"
                        };
                        return Err(problem(
                            &p,
                            format!(
                                "{why}, so it is refused (an admin may register the tool with `extra_args: pass` to forward such arguments unjudged)"
                            ),
                        ));
                    }
                    // An upstream that matches names ignoring case (Go's
                    // encoding/json) would read `AMOUNT` as `amount`.
                    let folded = crate::forwarding::fold_case(k);
                    if let Some(d) = ty
                        .attrs
                        .keys()
                        .chain(&ty.unmodelled)
                        .find(|d| *d != k && crate::forwarding::fold_case(d) == folded)
                    {
                        return Err(problem(
                            &p,
                            format!(
                                "differs from the declared argument `{d}` only in letter case, so an upstream may read it as that one; send `{d}`"
                            ),
                        ));
                    }
                    self.opaque(v, &p, 0)?;
                    forward.insert(k.clone(), v.clone());
                }
            }
        }
        for (k, a) in &ty.attrs {
            if a.required && !o.contains_key(k) {
                return Err(problem(&pointer(at, k), "is required"));
            }
        }
        Ok((forward, visible))
    }

    /// The value as forwarded and as policies see it.
    fn value(&mut self, ty: &ArgType, v: &Value, at: &str) -> Result<(Value, Value), ArgProblem> {
        let same = |v: &Value| Ok((v.clone(), v.clone()));
        match (ty, v) {
            (ArgType::String, Value::String(s)) => {
                if s.len() > MAX_STRING {
                    return Err(problem(at, format!("is longer than {MAX_STRING} bytes")));
                }
                same(v)
            }
            (ArgType::Long, Value::Number(n)) => match (n.as_i64(), n.is_u64()) {
                (Some(i), _) if i.unsigned_abs() <= MAX_SAFE_INTEGER as u64 => same(v),
                (Some(_), _) | (None, true) => Err(problem(at, "is outside ±(2^53 − 1)")),
                (None, false) => Err(problem(
                    at,
                    "must be an integer, written without a fraction or exponent",
                )),
            },
            (ArgType::Bool, Value::Bool(_)) => same(v),
            (ArgType::Set(t), Value::Array(items)) => {
                if items.len() > MAX_SET {
                    return Err(problem(at, format!("holds more than {MAX_SET} elements")));
                }
                let (mut f, mut seen) = (Vec::new(), Vec::new());
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    self.count(&p)?;
                    let (a, b) = self.value(t, item, &p)?;
                    f.push(a);
                    seen.push(b);
                }
                Ok((Value::Array(f), Value::Array(seen)))
            }
            (ArgType::Record(r), Value::Object(o)) => {
                let (forward, visible) = self.record(r, o, at)?;
                Ok((Value::Object(forward), Value::Object(visible)))
            }
            (t, _) => Err(problem(at, format!("must be {}", expected(t)))),
        }
    }

    /// A value passed unjudged: bounded all the same.
    fn opaque(&mut self, v: &Value, at: &str, depth: usize) -> Result<(), ArgProblem> {
        if depth > super::schema::MAX_DEPTH {
            return Err(problem(at, "nests too deep"));
        }
        match v {
            Value::String(s) if s.len() > MAX_STRING => {
                Err(problem(at, format!("is longer than {MAX_STRING} bytes")))
            }
            Value::Array(a) => a.iter().try_for_each(|x| {
                self.count(at)?;
                self.opaque(x, at, depth + 1)
            }),
            Value::Object(o) => o.values().try_for_each(|x| {
                self.count(at)?;
                self.opaque(x, at, depth + 1)
            }),
            _ => Ok(()),
        }
    }
}

fn expected(t: &ArgType) -> &'static str {
    match t {
        ArgType::String => "a string",
        ArgType::Long => "an integer",
        ArgType::Bool => "true or false",
        ArgType::Set(_) => "an array",
        ArgType::Record(_) => "an object",
    }
}

/// A keyed digest of the arguments as forwarded (HMAC-SHA-256 over their
/// canonical JSON: keys sorted, no spaces), so the audit trail can show two
/// calls had the same arguments without the values (a plain hash of
/// `{"amount":5}` is guessable).
pub fn digest(key: &[u8], forward: &Map<String, Value>) -> String {
    use hmac::{Hmac, Mac};
    let canonical = canonical_json(&Value::Object(forward.clone()));
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<sha2::Sha256> as Mac>::new_from_slice(&[0]).expect("hmac key"));
    mac.update(&canonical);
    crate::jose::b64(&mac.finalize().into_bytes())
}

/// Request details as the audit trail may show them: an MCP call's
/// arguments by their names only (values can be anything an agent sends);
/// anything else as it is.
pub fn audit_view(details: &Value) -> Value {
    match details.get("mcp_call") {
        Some(call) => {
            let mut keys: Vec<&String> = call
                .get("arguments")
                .and_then(Value::as_object)
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            keys.sort();
            serde_json::json!({"mcp_call": {"name": call.get("name"), "arg_keys": keys}})
        }
        None => details.clone(),
    }
}

/// JSON with object keys sorted (by their UTF-8 bytes) and no spaces,
/// whatever order the map keeps them in.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(serde_json::to_vec(k).unwrap_or_default());
                    out.push(b':');
                    write(&o[k], out);
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out);
                }
                out.push(b']');
            }
            other => out.extend(serde_json::to_vec(other).unwrap_or_default()),
        }
    }
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::super::schema::arguments_type;
    use super::*;
    use serde_json::json;

    fn ty() -> Record {
        arguments_type(&json!({"type": "object", "properties": {
            "amount": {"type": "integer"}, "repo": {"type": "string"},
            "labels": {"type": "array", "items": {"type": "string"}},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "price": {"type": "number"}
        }, "required": ["amount"]}))
        .unwrap()
    }

    #[test]
    fn a_good_call_is_forwarded_as_judged() {
        let a = json!({"amount": 5, "repo": "acme/x", "labels": ["a"], "note": null});
        let c = check(&ty(), Some(&a), Extra::Refuse).unwrap();
        assert_eq!(Value::Object(c.forward.clone()), a);
        assert_eq!(
            Value::Object(c.visible),
            json!({"amount": 5, "repo": "acme/x", "labels": ["a"]})
        );
        assert_eq!(c.keys, ["amount", "labels", "note", "repo"]);
    }

    #[test]
    fn wrong_types_numbers_and_shapes_are_refused_naming_where() {
        let t = ty();
        let bad = |a: Value| check(&t, Some(&a), Extra::Refuse).unwrap_err();
        assert_eq!(bad(json!({"amount": "5"})).pointer, "/amount");
        assert!(bad(json!({"amount": 1.5})).message.contains("integer"));
        assert!(bad(json!({"amount": 1e2})).message.contains("integer"));
        assert!(
            bad(json!({"amount": 9007199254740993_i64}))
                .message
                .contains("2^53")
        );
        assert!(
            bad(json!({"amount": -9007199254740993_i64}))
                .message
                .contains("2^53")
        );
        assert!(bad(json!({"repo": "x"})).message.contains("required"));
        assert_eq!(
            bad(json!({"amount": 1, "labels": [1]})).pointer,
            "/labels/0"
        );
        assert!(
            bad(json!({"amount": 1, "extra": 1}))
                .message
                .contains("does not declare")
        );
        assert!(
            bad(json!({"amount": 1, "price": 1.5}))
                .message
                .contains("cannot judge")
        );
        assert!(bad(json!({"amount": null})).message.contains("null"));
        assert!(bad(json!({"amount": i64::MIN})).message.contains("2^53"));
        assert!(bad(json!({"amount": u64::MAX})).message.contains("2^53"));
        assert!(
            bad(json!({"amount": 1, "repo": "x".repeat(MAX_STRING + 1)}))
                .message
                .contains("longer")
        );
        let many: Vec<Value> = (0..300).map(|i| json!(i.to_string())).collect();
        assert!(
            bad(json!({"amount": 1, "labels": many}))
                .message
                .contains("256")
        );
        for not_object in [json!([1]), json!("x"), json!(3)] {
            assert!(
                check(&t, Some(&not_object), Extra::Refuse)
                    .unwrap_err()
                    .message
                    .contains("object")
            );
        }
        // Absent and null arguments are `{}`.
        assert!(
            check(&t, None, Extra::Refuse)
                .unwrap_err()
                .message
                .contains("required")
        );
    }

    #[test]
    fn passed_arguments_go_upstream_but_not_to_policy_and_stay_bounded() {
        let a = json!({"amount": 1, "price": 1.5, "extra": {"deep": [1, 2]}});
        let c = check(&ty(), Some(&a), Extra::Pass).unwrap();
        assert_eq!(Value::Object(c.forward), a);
        assert_eq!(Value::Object(c.visible), json!({"amount": 1}));
        // A passed key an upstream could read as a judged one is refused.
        for alias in ["AMOUNT", "Amount", "LABELS", "label\\u017f"] {
            let a: Value =
                serde_json::from_str(&format!(r#"{{"amount": 1, "repo": "x", "{alias}": 5}}"#))
                    .unwrap();
            let e = check(&ty(), Some(&a), Extra::Pass).unwrap_err();
            assert!(e.message.contains("letter case"), "{alias}: {e}");
        }
        let a: Value = serde_json::from_str(r#"{"amount": 1, "PRICE": 5}"#).unwrap();
        assert!(check(&ty(), Some(&a), Extra::Pass).is_err());
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!([deep]);
        }
        assert!(check(&ty(), Some(&json!({"amount": 1, "x": deep})), Extra::Pass).is_err());
        let wide: Vec<Value> = (0..2000).map(Value::from).collect();
        assert!(check(&ty(), Some(&json!({"amount": 1, "x": wide})), Extra::Pass).is_err());
    }

    #[test]
    fn the_audit_trail_sees_argument_names_not_values() {
        let d = json!({"mcp_call": {"name": "pay", "arguments": {"to": "x@y", "amount": 5}}});
        assert_eq!(
            audit_view(&d),
            json!({"mcp_call": {"name": "pay", "arg_keys": ["amount", "to"]}})
        );
        let other = json!([{"type": "payment", "amount": 5}]);
        assert_eq!(audit_view(&other), other);
    }

    #[test]
    fn the_digest_is_keyed_and_independent_of_key_order() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        let b: Map<String, Value> = serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap();
        assert_eq!(digest(b"k", &a), digest(b"k", &b));
        assert_ne!(digest(b"k", &a), digest(b"other", &a));
        assert_eq!(canonical_json(&Value::Object(b)), br#"{"a":2,"b":1}"#);
    }
}
