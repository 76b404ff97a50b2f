//! Signing keys: the broker's (mandate root, JWT EdDSA, JWT ES256) and the
//! JWKS (RFC 7517 §5) that publishes their public halves.

use ed25519_dalek::Signer as _;
use rand_core::{CryptoRng, RngCore};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::jose::{Alg, PublicJwk, b64};
use crate::secret::Secret;

/// A private signing key for JWS. `Debug` never shows the private half.
#[derive(Clone)]
pub enum SigningKey {
    /// Ed25519 (`EdDSA`).
    Ed25519(ed25519_dalek::SigningKey),
    /// ECDSA P-256 (`ES256`).
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, kid={})", self.alg().as_str(), self.kid())
    }
}

impl SigningKey {
    /// A fresh key for `alg`.
    pub fn generate(alg: Alg, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        match alg {
            Alg::EdDSA => SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(rng)),
            Alg::ES256 => SigningKey::P256(p256::ecdsa::SigningKey::random(rng)),
        }
    }

    /// From the raw private scalar / seed (32 bytes for both algorithms).
    pub fn from_bytes(alg: Alg, bytes: &[u8]) -> Result<Self> {
        let bad = || Error::Malformed {
            what: "private key",
            reason: format!("not a valid {} private key", alg.as_str()),
        };
        match alg {
            Alg::EdDSA => {
                let seed: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
                Ok(SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    &seed,
                )))
            }
            Alg::ES256 => p256::ecdsa::SigningKey::from_slice(bytes)
                .map(SigningKey::P256)
                .map_err(|_| bad()),
        }
    }

    /// The raw private key bytes, for sealing at rest.
    pub fn to_secret(&self) -> Secret {
        match self {
            SigningKey::Ed25519(k) => Secret::new(k.to_bytes().to_vec()),
            SigningKey::P256(k) => Secret::new(k.to_bytes().to_vec()),
        }
    }

    /// The JWS algorithm.
    pub fn alg(&self) -> Alg {
        match self {
            SigningKey::Ed25519(_) => Alg::EdDSA,
            SigningKey::P256(_) => Alg::ES256,
        }
    }

    /// The public key.
    pub fn public(&self) -> PublicJwk {
        match self {
            SigningKey::Ed25519(k) => PublicJwk::Ed25519(k.verifying_key()),
            SigningKey::P256(k) => PublicJwk::P256(*k.verifying_key()),
        }
    }

    /// The key id: the RFC 7638 thumbprint of the public key, so a `kid`
    /// can never name two different keys.
    pub fn kid(&self) -> String {
        self.public().thumbprint()
    }

    /// Signs `input`; ES256 signatures are R ‖ S (RFC 7518 §3.4).
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(k) => k.sign(input).to_bytes().to_vec(),
            SigningKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
        }
    }

    /// Signs a JWT: `header` gets `alg` (and the caller supplies `typ`, `kid`).
    pub fn sign_jws(&self, header: &Value, payload: &Value) -> String {
        let mut h = header.clone();
        if let Some(o) = h.as_object_mut() {
            o.insert("alg".into(), Value::String(self.alg().as_str().into()));
        }
        let mut out = b64(h.to_string().as_bytes());
        out.push('.');
        out.push_str(&b64(payload.to_string().as_bytes()));
        let sig = self.sign(out.as_bytes());
        out.push('.');
        out.push_str(&b64(&sig));
        out
    }

    /// The private JWK (RFC 7517 §4, RFC 8037 §2 for Ed25519, RFC 7518
    /// §6.2.2 for P-256), as text to write to a key file. Wrapped in a
    /// [`Secret`] so it is zeroized and never printed by `Debug`.
    pub fn to_private_jwk(&self) -> Secret {
        let mut v = self.public_jwk();
        v["d"] = json!(b64(self.to_secret().expose()));
        Secret::new(v.to_string().into_bytes())
    }

    /// Reads a private JWK (Ed25519 or P-256), checking that its public
    /// members match the private key.
    pub fn from_private_jwk(text: &[u8]) -> Result<Self> {
        let bad = |reason: &str| Error::Malformed {
            what: "private key file",
            reason: reason.to_owned(),
        };
        let v: Value =
            serde_json::from_slice(text).map_err(|_| bad("not a JSON Web Key (RFC 7517)"))?;
        let d = v
            .get("d")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no private key (`d`); this is a public key"))?;
        let alg = match (
            v.get("kty").and_then(Value::as_str),
            v.get("crv").and_then(Value::as_str),
        ) {
            (Some("OKP"), Some("Ed25519")) => Alg::EdDSA,
            (Some("EC"), Some("P-256")) => Alg::ES256,
            _ => return Err(bad("use an Ed25519 (OKP) or P-256 (EC) key")),
        };
        let secret = Secret::new(
            crate::jose::unb64("private key file", d).map_err(|_| bad("`d` is not base64url"))?,
        );
        let key = Self::from_bytes(alg, secret.expose())?;
        let mut public = v.clone();
        if let Some(o) = public.as_object_mut() {
            o.remove("d");
        }
        if !key.public().same_as_json(&public) {
            return Err(bad("its public members do not match its private key"));
        }
        Ok(key)
    }

    /// The public JWK with `kid`, `alg` and `use: sig`, for a JWKS.
    pub fn public_jwk(&self) -> Value {
        let mut v = self.public().to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("kid".into(), json!(self.kid()));
            o.insert("alg".into(), json!(self.alg().as_str()));
            o.insert("use".into(), json!("sig"));
        }
        v
    }
}

/// How long a retired credential key stays published and trusted after its
/// retirement: the longest a credential lives, plus a minute of clock skew.
pub const RETIRED_PUBLISHED: crate::UnixTime = crate::credential::MAX_CREDENTIAL_LIFETIME + 60;

/// The broker's keys: one Ed25519 root for mandates (Biscuit) and one key per
/// JWS algorithm for credentials.
#[derive(Clone)]
pub struct BrokerKeys {
    /// Signs mandates (Biscuit authority blocks).
    pub mandate_root: SigningKey,
    /// Signs `EdDSA` credentials.
    pub jwt_eddsa: SigningKey,
    /// Signs `ES256` credentials.
    pub jwt_es256: SigningKey,
    /// Earlier credential keys, still published and accepted until the
    /// credentials they signed have expired (key rotation).
    pub retired: Vec<SigningKey>,
    /// Earlier mandate root keys, newest first, still accepted until the
    /// mandates they signed have expired.
    pub retired_roots: Vec<SigningKey>,
    /// When each retired key (by `kid`) was retired (seconds): what it
    /// signed after that is refused, whatever it says (a stolen retired key
    /// cannot mint new tokens).
    pub retired_since: std::collections::HashMap<String, crate::UnixTime>,
}

impl std::fmt::Debug for BrokerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerKeys")
            .field("mandate_root", &self.mandate_root)
            .field("jwt_eddsa", &self.jwt_eddsa)
            .field("jwt_es256", &self.jwt_es256)
            .finish()
    }
}

impl BrokerKeys {
    /// Fresh keys.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        BrokerKeys {
            mandate_root: SigningKey::generate(Alg::EdDSA, rng),
            jwt_eddsa: SigningKey::generate(Alg::EdDSA, rng),
            jwt_es256: SigningKey::generate(Alg::ES256, rng),
            retired: Vec::new(),
            retired_roots: Vec::new(),
            retired_since: std::collections::HashMap::new(),
        }
    }

    /// The credential signing key for `alg`.
    pub fn jwt_key(&self, alg: Alg) -> &SigningKey {
        match alg {
            Alg::EdDSA => &self.jwt_eddsa,
            Alg::ES256 => &self.jwt_es256,
        }
    }

    /// The credential key with this `kid`, if any.
    pub fn jwt_key_by_kid(&self, kid: &str) -> Option<&SigningKey> {
        [&self.jwt_eddsa, &self.jwt_es256]
            .into_iter()
            .chain(self.retired.iter())
            .find(|k| k.kid() == kid)
    }

    /// The JWKS document at `now`: retired keys only while what they signed
    /// can still be alive ([`RETIRED_PUBLISHED`] after their retirement).
    pub fn jwks_at(&self, now: crate::UnixTime) -> Value {
        let keys: Vec<Value> = [&self.jwt_eddsa, &self.jwt_es256]
            .into_iter()
            .chain(self.retired.iter().filter(|k| {
                self.retired_since
                    .get(&k.kid())
                    .is_none_or(|t| t.saturating_add(RETIRED_PUBLISHED) >= now)
            }))
            .map(SigningKey::public_jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// The JWKS document (RFC 7517 §5) with the credential keys, current
    /// ones first, then retired ones.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = [&self.jwt_eddsa, &self.jwt_es256]
            .into_iter()
            .chain(self.retired.iter())
            .map(SigningKey::public_jwk)
            .collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_retired_key_leaves_the_jwks_once_what_it_signed_has_expired() {
        let mut keys = BrokerKeys::generate(&mut OsRng);
        let old = SigningKey::generate(Alg::EdDSA, &mut OsRng);
        keys.retired_since.insert(old.kid(), 1_000);
        keys.retired.push(old);
        let count = |now| keys.jwks_at(now)["keys"].as_array().map_or(0, Vec::len);
        assert_eq!(count(1_000 + RETIRED_PUBLISHED), 3);
        assert_eq!(count(1_000 + RETIRED_PUBLISHED + 1), 2);
    }
    use super::*;
    use crate::jose::CompactJws;
    use rand::rngs::OsRng;

    #[test]
    fn signed_jws_verifies_with_its_public_jwk() {
        for alg in [Alg::EdDSA, Alg::ES256] {
            let k = SigningKey::generate(alg, &mut OsRng);
            let t = k.sign_jws(&json!({"typ":"JWT"}), &json!({"a":1}));
            let jws = CompactJws::parse("t", &t, 4096).unwrap();
            assert_eq!(jws.alg, alg);
            let jwk = PublicJwk::from_json(&k.public_jwk()).unwrap();
            jwk.verify("t", jws.alg, jws.signing_input.as_bytes(), &jws.signature)
                .unwrap();
            let other = SigningKey::generate(alg, &mut OsRng).public();
            assert!(
                other
                    .verify("t", jws.alg, jws.signing_input.as_bytes(), &jws.signature)
                    .is_err()
            );
            let back = SigningKey::from_bytes(alg, k.to_secret().expose()).unwrap();
            assert_eq!(back.kid(), k.kid());
        }
    }

    #[test]
    fn private_jwk_round_trips_and_mismatches_are_refused() {
        for alg in [Alg::EdDSA, Alg::ES256] {
            let k = SigningKey::generate(alg, &mut OsRng);
            let text = k.to_private_jwk();
            let back = SigningKey::from_private_jwk(text.expose()).unwrap();
            assert_eq!(back.kid(), k.kid());
            let mut v: Value = serde_json::from_slice(text.expose()).unwrap();
            v["x"] = SigningKey::generate(alg, &mut OsRng).public().to_json()["x"].clone();
            assert!(SigningKey::from_private_jwk(v.to_string().as_bytes()).is_err());
            assert!(SigningKey::from_private_jwk(k.public_jwk().to_string().as_bytes()).is_err());
        }
        assert!(SigningKey::from_private_jwk(b"garbage").is_err());
    }

    #[test]
    fn debug_never_shows_private_keys() {
        let k = BrokerKeys::generate(&mut OsRng);
        let s = format!("{k:?}");
        let secret = k.jwt_eddsa.to_secret();
        assert!(!s.contains(&b64(secret.expose())));
    }
}
