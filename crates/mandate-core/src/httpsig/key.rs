//! `Signature-Key` (draft-hardt-httpbis-signature-key, `hwk`): the
//! signer's public key inline, so the signature names its own key.

use super::fields::{Bare, Member, Params, parse_dictionary, ser_params};
use crate::error::{Result, malformed};
use crate::jose::PublicJwk;

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
