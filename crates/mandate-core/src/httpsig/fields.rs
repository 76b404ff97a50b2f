//! Structured Field Values (RFC 8941, RFC 9651) as the signature fields
//! use them: dictionaries parsed by the maintained `sfv` crate (one parser
//! of untrusted input less to own), into the few types RFC 9421 needs, and
//! the inner-list serialization of `@signature-params` (§2.3).

use sfv::visitor::{DictionaryVisitor, EntryVisitor};
use sfv::{BareItem, KeyRef, ListEntry};

use super::{MAX_FIELD_LEN, bad};
use crate::error::Result;

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

pub(super) fn ser_params(p: &Params, out: &mut String) {
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

/// Parses a Structured Field Dictionary (RFC 9651 §4.2.2). Duplicate keys
/// are refused (the spec keeps the last; for signatures that would let a
/// second member silently replace the first), and so are the item types
/// signatures never use (decimals, dates, display strings).
pub fn parse_dictionary(field: &str) -> Result<Vec<(String, Member)>> {
    if field.len() > MAX_FIELD_LEN {
        return Err(bad(format!("a field is longer than {MAX_FIELD_LEN} bytes")));
    }
    let dict = sfv::Parser::new(field)
        .parse_dictionary_with_visitor(Unique(sfv::Dictionary::new()))
        .map_err(|e| bad(format!("not a structured field dictionary: {e}")))?;
    dict.into_iter()
        .map(|(k, m)| {
            let m = match m {
                ListEntry::Item(i) => Member::Item(item(i)?),
                ListEntry::InnerList(l) => Member::List(
                    l.items.into_iter().map(item).collect::<Result<_>>()?,
                    params(l.params)?,
                ),
            };
            Ok((k.as_str().to_owned(), m))
        })
        .collect()
}

/// A dictionary that refuses a key seen before.
struct Unique(sfv::Dictionary);

/// A key that appears twice.
#[derive(Debug)]
struct Duplicate(String);

impl std::fmt::Display for Duplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` appears twice", self.0)
    }
}

impl std::error::Error for Duplicate {}

impl<'de> DictionaryVisitor<'de> for Unique {
    type Out = sfv::Dictionary;
    type Error = Duplicate;

    fn entry(
        &mut self,
        key: &'de KeyRef,
    ) -> std::result::Result<impl EntryVisitor<'de>, Duplicate> {
        if self.0.contains_key(key) {
            return Err(Duplicate(key.as_str().chars().take(64).collect()));
        }
        match DictionaryVisitor::entry(&mut self.0, key) {
            Ok(v) => Ok(v),
            Err(never) => match never {},
        }
    }

    fn finish(self) -> std::result::Result<sfv::Dictionary, Duplicate> {
        Ok(self.0)
    }
}

fn item(i: sfv::Item) -> Result<Item> {
    Ok(Item {
        value: bare(i.bare_item)?,
        params: params(i.params)?,
    })
}

fn params(p: sfv::Parameters) -> Result<Params> {
    p.into_iter()
        .map(|(k, v)| Ok((k.as_str().to_owned(), bare(v)?)))
        .collect()
}

fn bare(v: BareItem) -> Result<Bare> {
    Ok(match v {
        BareItem::Integer(i) => Bare::Int(i.into()),
        BareItem::String(s) => Bare::Str(s.as_str().to_owned()),
        BareItem::Token(t) => Bare::Token(t.as_str().to_owned()),
        BareItem::ByteSequence(b) => Bare::Bytes(b),
        BareItem::Boolean(b) => Bare::Bool(b),
        BareItem::Decimal(_) | BareItem::Date(_) | BareItem::DisplayString(_) => {
            return Err(bad(
                "decimals, dates and display strings are not used in signatures",
            ));
        }
    })
}
