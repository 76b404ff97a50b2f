//! Structured Field Values (RFC 8941, RFC 9651) as the signature fields
//! use them: dictionaries parsed by the maintained `sfv` crate (one parser
//! of untrusted input less to own), into the few types RFC 9421 needs, and
//! the inner-list serialization of `@signature-params` (§2.3).

use sfv::visitor::{
    DictionaryVisitor, EntryVisitor, InnerListVisitor, ItemVisitor, ParameterVisitor,
};
use sfv::{BareItemFromInput, GenericBareItem, KeyRef};

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

/// Parses a Structured Field Dictionary (RFC 9651 §4.2.2) with `sfv`,
/// straight into the types above. Stricter than RFC 9651 where signatures
/// need it: a key or parameter that appears twice is refused (the spec
/// keeps the last; for signatures that would let a second member replace
/// the first, or a header be rewritten and still verify), and so are the
/// item types signatures never use (decimals, dates, display strings).
pub fn parse_dictionary(field: &str) -> Result<Vec<(String, Member)>> {
    if field.len() > MAX_FIELD_LEN {
        return Err(bad(format!("a field is longer than {MAX_FIELD_LEN} bytes")));
    }
    sfv::Parser::new(field)
        .parse_dictionary_with_visitor(Dict(Vec::new()))
        .map_err(|e| bad(format!("not a structured field dictionary: {e}")))
}

/// Why a field was refused while it was parsed.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

type Parsed<T> = std::result::Result<T, Refused>;

fn twice(what: &str, key: &KeyRef) -> Refused {
    Refused(format!(
        "{what} `{}` appears twice",
        key.as_str().chars().take(64).collect::<String>()
    ))
}

fn bare(v: BareItemFromInput<'_>) -> Parsed<Bare> {
    Ok(match v {
        GenericBareItem::Integer(i) => Bare::Int(i.into()),
        GenericBareItem::String(s) => Bare::Str(s.as_str().to_owned()),
        GenericBareItem::Token(t) => Bare::Token(t.as_str().to_owned()),
        GenericBareItem::ByteSequence(b) => Bare::Bytes(b),
        GenericBareItem::Boolean(b) => Bare::Bool(b),
        GenericBareItem::Decimal(_)
        | GenericBareItem::Date(_)
        | GenericBareItem::DisplayString(_) => {
            return Err(Refused(
                "decimals, dates and display strings are not used in signatures".into(),
            ));
        }
    })
}

/// The dictionary being built.
struct Dict(Vec<(String, Member)>);

impl<'de> DictionaryVisitor<'de> for Dict {
    type Out = Vec<(String, Member)>;
    type Error = Refused;

    fn entry(&mut self, key: &'de KeyRef) -> Parsed<impl EntryVisitor<'de>> {
        if self.0.iter().any(|(k, _)| k == key.as_str()) {
            return Err(twice("key", key));
        }
        self.0.push((
            key.as_str().to_owned(),
            Member::Item(Item {
                value: Bare::Bool(true),
                params: Vec::new(),
            }),
        ));
        let slot = self.0.last_mut().map(|(_, m)| m);
        slot.map(Slot)
            .ok_or_else(|| Refused("the dictionary lost a member".into()))
    }

    fn finish(self) -> Parsed<Self::Out> {
        Ok(self.0)
    }
}

/// A dictionary member being filled in.
struct Slot<'a>(&'a mut Member);

impl<'de> EntryVisitor<'de> for Slot<'_> {
    type Error = Refused;

    fn item(self) -> Parsed<impl ItemVisitor<'de>> {
        *self.0 = Member::Item(Item {
            value: Bare::Bool(true),
            params: Vec::new(),
        });
        match self.0 {
            Member::Item(i) => Ok(ItemSlot(i)),
            Member::List(..) => Err(Refused("a member changed kind".into())),
        }
    }

    fn inner_list(self) -> Parsed<impl InnerListVisitor<'de>> {
        *self.0 = Member::List(Vec::new(), Vec::new());
        match self.0 {
            Member::List(items, params) => Ok(ListSlot { items, params }),
            Member::Item(_) => Err(Refused("a member changed kind".into())),
        }
    }
}

/// An item being filled in.
struct ItemSlot<'a>(&'a mut Item);

impl<'de> ItemVisitor<'de> for ItemSlot<'_> {
    type Out = ();
    type Error = Refused;

    fn bare_item(self, v: BareItemFromInput<'de>) -> Parsed<impl ParameterVisitor<'de, Out = ()>> {
        self.0.value = bare(v)?;
        Ok(ParamSlot(&mut self.0.params))
    }
}

/// An inner list being filled in.
struct ListSlot<'a> {
    items: &'a mut Vec<Item>,
    params: &'a mut Params,
}

impl<'de> InnerListVisitor<'de> for ListSlot<'_> {
    type Error = Refused;

    fn item(&mut self) -> Parsed<impl ItemVisitor<'de>> {
        self.items.push(Item {
            value: Bare::Bool(true),
            params: Vec::new(),
        });
        self.items
            .last_mut()
            .map(ItemSlot)
            .ok_or_else(|| Refused("the inner list lost an item".into()))
    }

    fn finish(self) -> Parsed<impl ParameterVisitor<'de>> {
        Ok(ParamSlot(self.params))
    }
}

/// Parameters being filled in; a name seen before is refused.
struct ParamSlot<'a>(&'a mut Params);

impl<'de> ParameterVisitor<'de> for ParamSlot<'_> {
    type Out = ();
    type Error = Refused;

    fn parameter(&mut self, key: &'de KeyRef, value: BareItemFromInput<'de>) -> Parsed<()> {
        if self.0.iter().any(|(k, _)| k == key.as_str()) {
            return Err(twice("parameter", key));
        }
        self.0.push((key.as_str().to_owned(), bare(value)?));
        Ok(())
    }

    fn finish(self) -> Parsed<()> {
        Ok(())
    }
}
