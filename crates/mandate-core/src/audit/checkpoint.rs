//! Signed checkpoints: the audit trail anchored outside its database.
//!
//! The hash chain shows an edit that was not carried on through every later
//! hash; it cannot show a rewrite that was (recomputing SHA-256 needs no
//! secret), nor a cut of the last events. A checkpoint is the broker's
//! signature over (sequence number, head hash, event count, time), made with
//! its Ed25519 credential key (published in the JWKS) and kept apart from the
//! data. A chain that verifies and has exactly the checkpoint's hash at its
//! sequence number holds every event the broker had written then, unaltered.
//!
//! Format: a compact JWS (`typ` [`CHECKPOINT_TYP`], `kid` = a JWKS key id),
//! so any JOSE library and the broker's JWKS check it too. The `typ` keeps a
//! checkpoint from passing as a credential (`at+jwt`) and the reverse.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::jose::{CompactJws, PublicJwk};
use crate::keys::SigningKey;

/// The JWS `typ` of a checkpoint.
pub const CHECKPOINT_TYP: &str = "mandate-audit-checkpoint+jwt";

/// Longest checkpoint accepted (bytes).
pub const MAX_CHECKPOINT_LEN: usize = 4096;

const WHAT: &str = "audit checkpoint";

/// What a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The broker (its issuer URL).
    pub iss: String,
    /// Sequence number of the last event covered.
    pub seq: u64,
    /// That event's hash (hex).
    pub hash: String,
    /// How many events the trail held (sequence numbers start at 1, so `seq`).
    pub events: u64,
    /// When it was made (ms since the Unix epoch).
    pub time_ms: u64,
}

/// A sequence number and the hash the chain must have there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number.
    pub seq: u64,
    /// Expected hash (hex).
    pub hash: String,
    /// Where the anchor comes from, for messages (`the signed checkpoint of ...`).
    pub label: String,
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// What it states.
    pub checkpoint: Checkpoint,
    /// The key that signed it (a JWKS `kid`).
    pub kid: String,
    /// The JWS itself, to publish or keep.
    pub jws: String,
}

impl Checkpoint {
    /// A checkpoint of the head `(seq, hash)`.
    pub fn of_head(iss: &str, seq: u64, hash: &str, time_ms: u64) -> Self {
        Checkpoint {
            iss: iss.to_owned(),
            seq,
            hash: hash.to_owned(),
            events: seq,
            time_ms,
        }
    }

    /// Signs it with `key` (the broker's Ed25519 credential key).
    pub fn sign(&self, key: &SigningKey) -> VerifiedCheckpoint {
        let payload = serde_json::to_value(self).unwrap_or(Value::Null);
        let jws = key.sign_jws(&json!({"typ": CHECKPOINT_TYP, "kid": key.kid()}), &payload);
        VerifiedCheckpoint {
            checkpoint: self.clone(),
            kid: key.kid(),
            jws,
        }
    }
}

impl VerifiedCheckpoint {
    /// The anchor it sets for chain verification.
    pub fn anchor(&self, source: &str) -> Anchor {
        Anchor {
            seq: self.checkpoint.seq,
            hash: self.checkpoint.hash.clone(),
            label: format!(
                "the {source} checkpoint (event {}, signed by key {})",
                self.checkpoint.seq, self.kid
            ),
        }
    }

    /// The checkpoint as JSON (the JWS and what it states), for APIs.
    pub fn to_json(&self) -> Value {
        let c = &self.checkpoint;
        json!({"checkpoint": self.jws, "iss": c.iss, "seq": c.seq, "hash": c.hash,
               "events": c.events, "time_ms": c.time_ms, "kid": self.kid})
    }
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: WHAT,
        reason: reason.into(),
    }
}

/// Checks a checkpoint JWS against `jwks` (a JWKS document, RFC 7517 §5):
/// its `typ`, a `kid` naming one of the JWKS keys, the signature by that
/// key, and a well-formed statement (`events` = `seq` ≥ 1, a SHA-256 hex hash).
pub fn verify_checkpoint(jws: &str, jwks: &Value) -> Result<VerifiedCheckpoint> {
    let jws = jws.trim();
    let parsed = CompactJws::parse(WHAT, jws, MAX_CHECKPOINT_LEN)?;
    if parsed.header_str("typ") != Some(CHECKPOINT_TYP) {
        return Err(malformed(format!(
            "header `typ` must be `{CHECKPOINT_TYP}`"
        )));
    }
    let kid = parsed
        .header_str("kid")
        .ok_or_else(|| malformed("header has no `kid`"))?;
    let jwk = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["kid"].as_str() == Some(kid))
        .ok_or_else(|| {
            malformed(format!(
                "it names key `{}`, which is not one of this broker's keys (JWKS): another broker or a forger signed it",
                crate::audit::escape_controls(&kid.chars().take(64).collect::<String>())
            ))
        })?;
    let key = PublicJwk::from_json(jwk)?;
    key.verify(
        WHAT,
        parsed.alg,
        parsed.signing_input.as_bytes(),
        &parsed.signature,
    )?;
    let checkpoint: Checkpoint = serde_json::from_slice(&parsed.payload)
        .map_err(|e| malformed(format!("its statement is not a checkpoint: {e}")))?;
    let hex64 = checkpoint.hash.len() == 64
        && checkpoint
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if checkpoint.seq == 0 || checkpoint.events != checkpoint.seq || !hex64 {
        return Err(malformed(
            "its statement is inconsistent (`events` must equal `seq` ≥ 1, `hash` a SHA-256 in hex)",
        ));
    }
    Ok(VerifiedCheckpoint {
        checkpoint,
        kid: kid.to_owned(),
        jws: jws.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Alg;
    use crate::keys::BrokerKeys;
    use rand::rngs::OsRng;

    fn cp() -> Checkpoint {
        Checkpoint::of_head("http://b", 7, &"ab".repeat(32), 1000)
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_the_jwks() {
        let keys = BrokerKeys::generate(&mut OsRng);
        let signed = cp().sign(&keys.jwt_eddsa);
        let back = verify_checkpoint(&signed.jws, &keys.jwks()).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.anchor("broker's").seq, 7);
    }

    #[test]
    fn another_key_or_an_edit_is_refused() {
        let keys = BrokerKeys::generate(&mut OsRng);
        let other = BrokerKeys::generate(&mut OsRng);
        let forged = cp().sign(&other.jwt_eddsa);
        let e = verify_checkpoint(&forged.jws, &keys.jwks()).unwrap_err();
        assert!(
            e.to_string().contains("not one of this broker's keys"),
            "{e}"
        );
        // Same kid, other key: the signature fails.
        let mut impostor = forged.jws.split('.').map(str::to_owned).collect::<Vec<_>>();
        impostor[0] = crate::jose::b64(
            json!({"alg": "EdDSA", "typ": CHECKPOINT_TYP, "kid": keys.jwt_eddsa.kid()})
                .to_string()
                .as_bytes(),
        );
        let e = verify_checkpoint(&impostor.join("."), &keys.jwks()).unwrap_err();
        assert!(matches!(e, Error::BadSignature { .. }), "{e}");
        // An edited statement fails the signature.
        let good = cp().sign(&keys.jwt_eddsa);
        let mut parts = good.jws.split('.').map(str::to_owned).collect::<Vec<_>>();
        let mut more = cp();
        more.seq = 8;
        more.events = 8;
        parts[1] = crate::jose::b64(serde_json::to_string(&more).unwrap().as_bytes());
        assert!(verify_checkpoint(&parts.join("."), &keys.jwks()).is_err());
    }

    #[test]
    fn a_credential_is_not_a_checkpoint() {
        let keys = BrokerKeys::generate(&mut OsRng);
        let k = &keys.jwt_eddsa;
        let jwt = k.sign_jws(
            &json!({"typ": "at+jwt", "kid": k.kid()}),
            &serde_json::to_value(cp()).unwrap(),
        );
        let e = verify_checkpoint(&jwt, &keys.jwks()).unwrap_err();
        assert!(e.to_string().contains("typ"), "{e}");
        let es = SigningKey::generate(Alg::ES256, &mut OsRng);
        assert!(verify_checkpoint(&cp().sign(&es).jws, &keys.jwks()).is_err());
    }

    #[test]
    fn inconsistent_statements_are_refused() {
        let keys = BrokerKeys::generate(&mut OsRng);
        for bad in [
            Checkpoint { events: 6, ..cp() },
            Checkpoint::of_head("http://b", 0, &"ab".repeat(32), 1),
            Checkpoint::of_head("http://b", 3, "nothex", 1),
        ] {
            assert!(verify_checkpoint(&bad.sign(&keys.jwt_eddsa).jws, &keys.jwks()).is_err());
        }
    }
}
