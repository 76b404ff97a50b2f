//! The small part of JOSE that Mandate needs, owned here so that the rules
//! are explicit: base64url (RFC 7515 §2), public JWKs (RFC 7517) for Ed25519
//! (RFC 8037) and P-256 (RFC 7518 §6.2), JWK thumbprints (RFC 7638), and
//! compact JWS (RFC 7515 §7.1) with an allow-list of exactly two algorithms,
//! `EdDSA` and `ES256`. `none` and every HMAC algorithm are refused before any
//! key is looked at, which closes the `alg: none` and HS256-with-a-public-key
//! confusions (RFC 8725 §2.1, §3.1).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, malformed};

/// Base64url without padding.
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Strict base64url decoding (no padding, no other alphabet).
pub fn unb64(what: &'static str, s: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed(what, "not base64url without padding"))
}

/// The JWS algorithms Mandate signs and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// Ed25519 (RFC 8037 §3.1).
    EdDSA,
    /// ECDSA with P-256 and SHA-256 (RFC 7518 §3.4).
    ES256,
}

impl Alg {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
        }
    }
    /// Parses an `alg` value, refusing anything but `EdDSA` (or its
    /// fully-specified name `Ed25519`, RFC 9864 §2.2) and `ES256`.
    pub fn parse(what: &'static str, alg: &str) -> Result<Self> {
        match alg {
            "EdDSA" | "Ed25519" => Ok(Alg::EdDSA),
            "ES256" => Ok(Alg::ES256),
            other => Err(Error::UnsupportedAlgorithm {
                what,
                alg: other.chars().take(32).collect(),
            }),
        }
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Alg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Alg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Alg::parse("alg", &s).map_err(serde::de::Error::custom)
    }
}

/// A public key from a JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicJwk {
    /// `{"kty":"OKP","crv":"Ed25519","x":...}`
    Ed25519(ed25519_dalek::VerifyingKey),
    /// `{"kty":"EC","crv":"P-256","x":...,"y":...}`
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicJwk {
    /// Parses a public JWK. Refuses private key material (`d`), symmetric
    /// keys and curves other than Ed25519 and P-256.
    pub fn from_json(v: &Value) -> Result<Self> {
        let o = v
            .as_object()
            .ok_or_else(|| malformed("JWK", "must be a JSON object"))?;
        if o.contains_key("d") {
            return Err(malformed("JWK", "contains private key material (`d`)"));
        }
        let s = |k: &str| o.get(k).and_then(Value::as_str);
        match (s("kty"), s("crv")) {
            (Some("OKP"), Some("Ed25519")) => {
                let x = unb64(
                    "JWK",
                    s("x").ok_or_else(|| malformed("JWK", "missing `x`"))?,
                )?;
                let x: [u8; 32] = x
                    .try_into()
                    .map_err(|_| malformed("JWK", "Ed25519 `x` must be 32 bytes"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| malformed("JWK", "not an Ed25519 public key"))?;
                if key.is_weak() {
                    return Err(malformed("JWK", "weak Ed25519 key"));
                }
                Ok(PublicJwk::Ed25519(key))
            }
            (Some("EC"), Some("P-256")) => {
                let x = unb64(
                    "JWK",
                    s("x").ok_or_else(|| malformed("JWK", "missing `x`"))?,
                )?;
                let y = unb64(
                    "JWK",
                    s("y").ok_or_else(|| malformed("JWK", "missing `y`"))?,
                )?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(malformed("JWK", "P-256 coordinates must be 32 bytes"));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(4);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| malformed("JWK", "not a point on P-256"))?;
                Ok(PublicJwk::P256(key))
            }
            (Some("oct"), _) => Err(malformed("JWK", "symmetric keys are not accepted")),
            (kty, crv) => Err(malformed(
                "JWK",
                format!(
                    "unsupported key type {}/{}; use OKP/Ed25519 or EC/P-256",
                    kty.unwrap_or("?"),
                    crv.unwrap_or("?")
                ),
            )),
        }
    }

    /// Whether `v` is a JWK of exactly this key (compares the defining
    /// members as text, without parsing the point).
    pub fn same_as_json(&self, v: &Value) -> bool {
        let Some(o) = v.as_object() else { return false };
        if o.contains_key("d") {
            return false;
        }
        self.required_members()
            .iter()
            .all(|(k, want)| o.get(*k).and_then(Value::as_str) == Some(want.as_str()))
    }

    /// The JWS algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self {
            PublicJwk::Ed25519(_) => Alg::EdDSA,
            PublicJwk::P256(_) => Alg::ES256,
        }
    }

    /// The JWK members that define the key, in RFC 7638 §3.2 order.
    fn required_members(&self) -> Vec<(&'static str, String)> {
        match self {
            PublicJwk::Ed25519(k) => vec![
                ("crv", "Ed25519".into()),
                ("kty", "OKP".into()),
                ("x", b64(k.as_bytes())),
            ],
            PublicJwk::P256(k) => {
                let p = k.to_encoded_point(false);
                vec![
                    ("crv", "P-256".into()),
                    ("kty", "EC".into()),
                    ("x", b64(p.x().map(|x| x.as_slice()).unwrap_or_default())),
                    ("y", b64(p.y().map(|y| y.as_slice()).unwrap_or_default())),
                ]
            }
        }
    }

    /// The public JWK as JSON (without `kid`, `alg` or `use`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in self.required_members() {
            m.insert(k.into(), Value::String(v));
        }
        Value::Object(m)
    }

    /// RFC 7638 JWK thumbprint: SHA-256 over the required members, in
    /// lexicographic order, without whitespace; base64url.
    pub fn thumbprint(&self) -> String {
        let members = self.required_members();
        let mut canon = String::from("{");
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                canon.push(',');
            }
            // Values are base64url or fixed names: no escaping needed.
            canon.push_str(&format!("\"{k}\":\"{v}\""));
        }
        canon.push('}');
        b64(&Sha256::digest(canon.as_bytes()))
    }

    /// Verifies `sig` over `input` with the algorithm `alg`, which must match
    /// the key's type.
    pub fn verify(&self, what: &'static str, alg: Alg, input: &[u8], sig: &[u8]) -> Result<()> {
        match (self, alg) {
            (PublicJwk::Ed25519(k), Alg::EdDSA) => {
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|_| Error::BadSignature { what })?;
                k.verify_strict(input, &sig)
                    .map_err(|_| Error::BadSignature { what })
            }
            (PublicJwk::P256(k), Alg::ES256) => {
                // RFC 7518 §3.4: the signature is R ‖ S, 64 bytes, not DER.
                // Verified by ring (constant-time, assembly-backed: about
                // 5× faster than the p256 crate, which parsed the key).
                if sig.len() != 64 {
                    return Err(Error::BadSignature { what });
                }
                let point = k.to_encoded_point(false);
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    point.as_bytes(),
                )
                .verify(input, sig)
                .map_err(|_| Error::BadSignature { what })
            }
            _ => Err(Error::UnsupportedAlgorithm {
                what,
                alg: format!("{} with a {} key", alg.as_str(), self.alg().as_str()),
            }),
        }
    }
}

/// A compact JWS split into its parts; the signature is not yet verified.
#[derive(Debug)]
pub struct CompactJws<'a> {
    /// The protected header.
    pub header: Map<String, Value>,
    /// The header's `alg`, already checked against the allow-list.
    pub alg: Alg,
    /// The decoded payload.
    pub payload: Vec<u8>,
    /// `BASE64URL(header) . BASE64URL(payload)`: what the signature covers.
    pub signing_input: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

impl<'a> CompactJws<'a> {
    /// Splits and decodes a compact JWS of at most `max_len` bytes and checks
    /// its `alg` against the allow-list. Unsecured JWS (`alg: none`, or an
    /// empty signature) and HMAC are refused here, before any key is chosen.
    pub fn parse(what: &'static str, token: &'a str, max_len: usize) -> Result<Self> {
        if token.len() > max_len {
            return Err(malformed(what, format!("longer than {max_len} bytes")));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(what, "not a compact JWS (three base64url parts)"));
        };
        let header_bytes = unb64(what, h)?;
        let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
            .map_err(|_| malformed(what, "header is not a JSON object"))?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(what, "header has no `alg`"))?;
        let alg = Alg::parse(what, alg)?;
        if let Some(crit) = header.get("crit") {
            // RFC 7515 §4.1.11: we understand no extensions, so any `crit` is fatal.
            return Err(malformed(
                what,
                format!("unsupported critical header {crit}"),
            ));
        }
        let payload = unb64(what, p)?;
        let signature = unb64(what, s)?;
        if signature.is_empty() {
            return Err(Error::BadSignature { what });
        }
        Ok(CompactJws {
            header,
            alg,
            payload,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature,
        })
    }

    /// The payload as a JSON object.
    pub fn claims(&self, what: &'static str) -> Result<Map<String, Value>> {
        serde_json::from_slice(&self.payload)
            .map_err(|_| malformed(what, "payload is not a JSON object"))
    }

    /// A string header member.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ES256 through ring: signatures made by another implementation (the
    /// p256 crate) verify; anything else is refused.
    #[test]
    fn es256_verifies_fixed_signatures_only_from_its_key() {
        use p256::ecdsa::signature::Signer as _;
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let other = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let key = PublicJwk::P256(*sk.verifying_key());
        let msg = b"header.payload";
        let sig: p256::ecdsa::Signature = sk.sign(msg);
        let raw = sig.to_bytes();
        assert!(key.verify("t", Alg::ES256, msg, &raw).is_ok());
        let refused = |m: &[u8], s: &[u8]| key.verify("t", Alg::ES256, m, s).is_err();
        assert!(refused(b"header.payloaD", &raw));
        let mut flipped = raw.to_vec();
        flipped[40] ^= 1;
        assert!(refused(msg, &flipped));
        // DER (what some libraries emit) is not JWS's R ‖ S.
        assert!(refused(msg, sig.to_der().as_bytes()));
        assert!(refused(msg, &raw[..63]));
        assert!(refused(msg, &[0u8; 64]));
        let theirs: p256::ecdsa::Signature = other.sign(msg);
        assert!(refused(msg, &theirs.to_bytes()));
        // An ES256 key never verifies under another algorithm.
        assert!(key.verify("t", Alg::EdDSA, msg, &raw).is_err());
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 8037 Appendix A.3: thumbprint of the Ed25519 example key.
        let jwk = serde_json::json!({"kty":"OKP","crv":"Ed25519",
            "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let k = PublicJwk::from_json(&jwk).unwrap();
        assert_eq!(
            k.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn alg_none_and_hmac_are_refused_before_any_key() {
        for alg in ["none", "HS256", "RS256", "ES384"] {
            let h = b64(format!("{{\"alg\":\"{alg}\"}}").as_bytes());
            let tok = format!("{h}.{}.{}", b64(b"{}"), b64(b"sig"));
            assert!(
                matches!(
                    CompactJws::parse("test", &tok, 4096),
                    Err(Error::UnsupportedAlgorithm { .. })
                ),
                "{alg}"
            );
        }
        let h = b64(b"{\"alg\":\"EdDSA\"}");
        let unsigned = format!("{h}.{}.", b64(b"{}"));
        assert!(matches!(
            CompactJws::parse("test", &unsigned, 4096),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn fully_specified_ed25519_is_eddsa() {
        assert_eq!(Alg::parse("t", "Ed25519").unwrap(), Alg::EdDSA);
        assert!(Alg::parse("t", "Ed448").is_err());
    }

    #[test]
    fn private_and_symmetric_jwks_are_refused() {
        let private = serde_json::json!({"kty":"OKP","crv":"Ed25519",
            "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"});
        assert!(PublicJwk::from_json(&private).is_err());
        let oct = serde_json::json!({"kty":"oct","k":"c2VjcmV0"});
        assert!(PublicJwk::from_json(&oct).is_err());
    }

    #[test]
    fn oversized_and_malformed_jws_are_refused() {
        assert!(CompactJws::parse("t", &"a".repeat(10_000), 8192).is_err());
        assert!(CompactJws::parse("t", "a.b", 8192).is_err());
        assert!(CompactJws::parse("t", "a.b.c.d", 8192).is_err());
        assert!(CompactJws::parse("t", "!!.b.c", 8192).is_err());
    }
}
