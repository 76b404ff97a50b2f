//! An MCP tool's `inputSchema` (JSON Schema, MCP 2025-11-25
//! `server/tools` §Tool) as the Cedar type of `context.arguments`, so a
//! policy can say `context.arguments.amount <= 100` and be validated in
//! strict mode against the tool it names.
//!
//! Only what Cedar can represent exactly is modelled: `string` (also
//! `enum`/`const` of strings and any `format`) as `String`; `integer` as
//! `Long`; `boolean` as `Bool`; an `array` of one modelled type as `Set`;
//! an `object` with `properties` as a record (`required` members are
//! required attributes); `T | null` (`type: ["T", "null"]`, or `anyOf` of
//! `T` and `null`, as pydantic writes `Optional[T]`) as an optional `T`;
//! local `$ref`s into `$defs`/`definitions`. Anything else (numbers that
//! are not integers, `oneOf`, tuples, open maps, property names outside
//! `A-Z a-z 0-9 _ - .`) is *unmodelled*: no policy can read it, and a call
//! carrying it is refused unless the registration says to pass it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Deepest nesting of modelled records and sets.
pub const MAX_DEPTH: usize = 8;

/// Most properties in one tool's schema, all records together.
pub const MAX_PROPERTIES: usize = 256;

/// The type of an argument, as policies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgType {
    /// Cedar `String`.
    String,
    /// Cedar `Long` (JSON integers within ±(2^53 − 1)).
    Long,
    /// Cedar `Bool`.
    Bool,
    /// Cedar `Set<T>`.
    Set(Box<ArgType>),
    /// A Cedar record.
    Record(Record),
}

/// An object's modelled members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Modelled members by name.
    pub attrs: BTreeMap<String, Attr>,
    /// Members the schema declares that are not modelled (policies cannot
    /// read them).
    pub unmodelled: Vec<String>,
}

/// One member of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Its type.
    pub ty: ArgType,
    /// The schema lists it in `required`.
    pub required: bool,
    /// It may be `null` (then absent for policies).
    pub nullable: bool,
}

/// Why a tool's schema cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRefused(pub String);

impl std::fmt::Display for SchemaRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tool's arguments as a record type, from its `inputSchema` (which MCP
/// requires to be an object schema; an absent or empty schema takes no
/// arguments).
pub fn arguments_type(input_schema: &Value) -> Result<Record, SchemaRefused> {
    let root = input_schema
        .as_object()
        .ok_or_else(|| SchemaRefused("`inputSchema` is not a JSON object".into()))?;
    if let Some(t) = root.get("type")
        && t != "object"
    {
        return Err(SchemaRefused(
            "`inputSchema` must be of `type: object`".into(),
        ));
    }
    let mut cx = Cx {
        root,
        properties: 0,
    };
    match cx.object(root, 0)? {
        Some(r) => Ok(r),
        None => Ok(Record::default()),
    }
}

struct Cx<'a> {
    root: &'a Map<String, Value>,
    properties: usize,
}

/// A member name policies can read as `context.arguments.<name>` or
/// `context.arguments["<name>"]` without escaping.
pub fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl<'a> Cx<'a> {
    /// `None`: unmodelled.
    fn ty(&mut self, s: &'a Value, depth: usize) -> Result<Option<(ArgType, bool)>, SchemaRefused> {
        if depth > MAX_DEPTH {
            return Err(SchemaRefused(format!(
                "the schema nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let Some(o) = s.as_object() else {
            return Ok(None);
        };
        if let Some(r) = o.get("$ref") {
            return match r.as_str().and_then(|r| self.resolve(r)) {
                Some(target) => self.ty(target, depth + 1),
                None => Ok(None),
            };
        }
        if let Some(any) = o.get("anyOf").and_then(Value::as_array) {
            return self.nullable_union(any, depth);
        }
        if ["oneOf", "allOf", "not", "if", "patternProperties"]
            .iter()
            .any(|k| o.contains_key(*k))
        {
            return Ok(None);
        }
        if let Some(e) = o.get("enum") {
            let all_strings = e
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
            return Ok(all_strings.then_some((ArgType::String, false)));
        }
        if let Some(c) = o.get("const") {
            return Ok(c.is_string().then_some((ArgType::String, false)));
        }
        let (name, nullable) = match o.get("type") {
            Some(Value::String(t)) => (t.as_str(), false),
            Some(Value::Array(ts)) => {
                let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                let non_null: Vec<&str> = names.iter().copied().filter(|t| *t != "null").collect();
                if names.len() != ts.len() || non_null.len() != 1 {
                    return Ok(None);
                }
                (non_null[0], names.len() == 2)
            }
            _ => return Ok(None),
        };
        let ty = match name {
            "string" => Some(ArgType::String),
            "integer" => Some(ArgType::Long),
            "boolean" => Some(ArgType::Bool),
            "array" => self.array(o, depth)?,
            "object" => self.object(o, depth)?.map(ArgType::Record),
            _ => None,
        };
        Ok(ty.map(|t| (t, nullable)))
    }

    fn nullable_union(
        &mut self,
        any: &'a [Value],
        depth: usize,
    ) -> Result<Option<(ArgType, bool)>, SchemaRefused> {
        let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
        let rest: Vec<&Value> = any.iter().filter(|v| !is_null(v)).collect();
        if rest.len() != 1 {
            return Ok(None);
        }
        let nullable = rest.len() < any.len();
        Ok(self
            .ty(rest[0], depth + 1)?
            .map(|(t, n)| (t, n || nullable)))
    }

    fn array(
        &mut self,
        o: &'a Map<String, Value>,
        depth: usize,
    ) -> Result<Option<ArgType>, SchemaRefused> {
        if o.get("prefixItems").is_some() {
            return Ok(None);
        }
        let Some(items) = o.get("items").filter(|i| i.is_object()) else {
            return Ok(None);
        };
        Ok(match self.ty(items, depth + 1)? {
            Some((t, false)) => Some(ArgType::Set(Box::new(t))),
            _ => None,
        })
    }

    fn object(
        &mut self,
        o: &'a Map<String, Value>,
        depth: usize,
    ) -> Result<Option<Record>, SchemaRefused> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let props = match o.get("properties") {
            Some(Value::Object(p)) => p,
            None => EMPTY.get_or_init(Map::new),
            Some(_) => return Ok(None),
        };
        // An open map with no named members is unmodelled; one with named
        // members still lets policies read those (the others are refused
        // or passed, as the registration says).
        if props.is_empty() && o.get("additionalProperties").is_some_and(|a| a != false) {
            return Ok(None);
        }
        let required: Vec<&str> = o
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut rec = Record::default();
        for (name, s) in props {
            self.properties += 1;
            if self.properties > MAX_PROPERTIES {
                return Err(SchemaRefused(format!(
                    "the schema declares more than {MAX_PROPERTIES} properties"
                )));
            }
            let modelled = if plain_name(name) {
                self.ty(s, depth + 1)?
            } else {
                None
            };
            match modelled {
                Some((ty, nullable)) => {
                    rec.attrs.insert(
                        name.clone(),
                        Attr {
                            ty,
                            required: required.contains(&name.as_str()),
                            nullable,
                        },
                    );
                }
                None => rec.unmodelled.push(name.clone()),
            }
        }
        Ok(Some(rec))
    }

    /// A local reference (`#/$defs/X`, `#/definitions/X`); anything else
    /// (a network URI, which MCP forbids dereferencing) is unmodelled.
    fn resolve(&self, r: &str) -> Option<&'a Value> {
        let path = r.strip_prefix("#/")?;
        let (section, name) = path.split_once('/')?;
        if !["$defs", "definitions"].contains(&section) || name.contains('/') {
            return None;
        }
        self.root.get(section)?.get(name)
    }
}

impl ArgType {
    /// The type in Cedar's schema syntax.
    pub fn cedar(&self) -> String {
        match self {
            ArgType::String => "String".into(),
            ArgType::Long => "Long".into(),
            ArgType::Bool => "Bool".into(),
            ArgType::Set(t) => format!("Set<{}>", t.cedar()),
            ArgType::Record(r) => r.cedar(),
        }
    }
}

impl Record {
    /// The record type in Cedar's schema syntax. An attribute is optional
    /// unless the schema requires it and it cannot be `null`.
    pub fn cedar(&self) -> String {
        let members: Vec<String> = self
            .attrs
            .iter()
            .map(|(n, a)| {
                let opt = if a.required && !a.nullable { "" } else { "?" };
                // `plain_name` keeps quotes and backslashes out.
                format!("\"{n}\"{opt}: {}", a.ty.cedar())
            })
            .collect();
        format!("{{{}}}", members.join(", "))
    }
}

/// The members of `old` that `new` lacks or types differently (JSON
/// pointers): what policies written for `old` may read and `new` would
/// no longer give them.
pub fn narrowed(old: &Record, new: &Record) -> Vec<String> {
    fn walk(old: &Record, new: &Record, at: &str, out: &mut Vec<String>) {
        for (name, a) in &old.attrs {
            let p = format!("{at}/{name}");
            match new.attrs.get(name) {
                None => out.push(p),
                Some(b) => match (&a.ty, &b.ty) {
                    (ArgType::Record(x), ArgType::Record(y)) => walk(x, y, &p, out),
                    (x, y) if x != y => out.push(p),
                    _ => {}
                },
            }
        }
    }
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cedar(s: Value) -> String {
        arguments_type(&s).unwrap().cedar()
    }

    #[test]
    fn scalars_sets_records_and_requiredness() {
        let s = json!({"type": "object", "properties": {
            "repo": {"type": "string"}, "amount": {"type": "integer"},
            "draft": {"type": "boolean"}, "labels": {"type": "array", "items": {"type": "string"}},
            "to": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}, "required": ["email"]}
        }, "required": ["repo", "amount"]});
        assert_eq!(
            cedar(s),
            r#"{"amount": Long, "draft"?: Bool, "labels"?: Set<String>, "repo": String, "to"?: {"email": String}}"#
        );
    }

    #[test]
    fn pydantic_optionals_refs_and_enums() {
        let s = json!({"type": "object", "properties": {
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
            "kind": {"$ref": "#/$defs/Kind"},
            "n": {"type": ["integer", "null"]}
        }, "required": ["note", "kind", "n"], "$defs": {"Kind": {"enum": ["a", "b"], "type": "string"}}});
        assert_eq!(cedar(s), r#"{"kind": String, "n"?: Long, "note"?: String}"#);
    }

    #[test]
    fn what_cedar_cannot_hold_is_unmodelled() {
        let s = json!({"type": "object", "properties": {
            "price": {"type": "number"}, "x": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "remote": {"$ref": "https://evil.example/s.json"}, "tuple": {"type": "array", "prefixItems": []},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "bad name": {"type": "string"}, "ok": {"type": "string"}
        }});
        let r = arguments_type(&s).unwrap();
        assert_eq!(r.attrs.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(r.unmodelled.len(), 6);
    }

    #[test]
    fn a_narrowed_schema_names_what_it_took_away() {
        let old = arguments_type(&json!({"type": "object", "properties": {
            "amount": {"type": "integer"}, "to": {"type": "object", "properties": {"iban": {"type": "string"}}},
            "memo": {"type": "string"}}})).unwrap();
        let new = arguments_type(&json!({"type": "object", "properties": {
            "amount": {"type": "string"}, "to": {"type": "object", "properties": {}},
            "memo": {"type": "string"}, "more": {"type": "boolean"}}}))
        .unwrap();
        assert_eq!(narrowed(&old, &new), ["/amount", "/to/iban"]);
        assert!(narrowed(&new, &new).is_empty());
    }

    #[test]
    fn schemas_that_cannot_be_used_are_refused() {
        assert!(arguments_type(&json!("x")).is_err());
        assert!(arguments_type(&json!({"type": "array"})).is_err());
        let mut deep = json!({"type": "string"});
        for _ in 0..12 {
            deep = json!({"type": "object", "properties": {"a": deep}});
        }
        assert!(arguments_type(&deep).unwrap_err().0.contains("deeper"));
        let many: Map<String, Value> = (0..300)
            .map(|i| (format!("p{i}"), json!({"type": "string"})))
            .collect();
        let s = json!({"type": "object", "properties": many});
        assert!(arguments_type(&s).unwrap_err().0.contains("256"));
        // A reference cycle ends at the depth bound.
        let cyc = json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
            "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}}});
        assert!(arguments_type(&cyc).is_err());
        assert_eq!(arguments_type(&json!({})).unwrap(), Record::default());
    }
}
