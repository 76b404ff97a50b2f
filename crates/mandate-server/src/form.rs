//! Strict `application/x-www-form-urlencoded` parsing for the OAuth
//! endpoints: RFC 6749 §3.2 says parameters must not appear more than once,
//! so a duplicate is refused rather than guessed at.

use std::collections::BTreeMap;

use crate::error::{ApiError, Code, err};

/// Parsed form fields.
#[derive(Debug, Default)]
pub struct Form(BTreeMap<String, String>);

impl Form {
    /// Parses `body`, refusing duplicates, empty names and bad encoding.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded_pairs(body)? {
            if k.is_empty() {
                return Err(err(
                    Code::InvalidRequest,
                    "the form has a field without a name",
                ));
            }
            if map.contains_key(&k) {
                return Err(err(
                    Code::InvalidRequest,
                    format!(
                        "parameter `{}` appears more than once; send it once",
                        short(&k)
                    ),
                ));
            }
            map.insert(k, v);
        }
        Ok(Form(map))
    }

    /// An optional field (empty counts as absent).
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required field.
    pub fn req(&self, name: &str) -> Result<&str, ApiError> {
        self.opt(name).ok_or_else(|| {
            err(
                Code::InvalidRequest,
                format!("parameter `{name}` is required"),
            )
        })
    }
}

fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(40).collect()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode(s: &[u8]) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let (Some(h), Some(l)) = (
                    s.get(i + 1).and_then(|b| hex(*b)),
                    s.get(i + 2).and_then(|b| hex(*b)),
                ) else {
                    return Err(err(
                        Code::InvalidRequest,
                        "the form body has a bad percent-encoding",
                    ));
                };
                out.push(h * 16 + l);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| err(Code::InvalidRequest, "the form body is not UTF-8"))
}

fn form_urlencoded_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let k = decode(it.next().unwrap_or_default())?;
            let v = decode(it.next().unwrap_or_default())?;
            Ok((k, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicated_fields_are_refused() {
        let e = Form::parse(b"scope=a&scope=b").unwrap_err();
        assert!(e.description.contains("more than once"));
    }

    proptest::proptest! {
        #[test]
        fn form_parser_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = Form::parse(&body);
        }

        #[test]
        fn encoded_fields_round_trip(k in "[a-z_]{1,12}", v in ".{0,40}") {
            let enc: String = v.bytes().map(|b| format!("%{b:02X}")).collect();
            let f = Form::parse(format!("{k}={enc}").as_bytes()).unwrap();
            proptest::prop_assert_eq!(f.opt(&k), if v.is_empty() { None } else { Some(v.as_str()) });
        }
    }

    #[test]
    fn fields_decode() {
        let f = Form::parse(b"a=x+y%21&b=&c").unwrap();
        assert_eq!(f.opt("a"), Some("x y!"));
        assert_eq!(f.opt("b"), None);
        assert!(f.req("c").is_err());
        assert!(Form::parse(b"a=%zz").is_err());
        assert!(Form::parse(b"a=%ff").is_err());
    }
}
