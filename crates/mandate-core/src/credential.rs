//! Credentials for `jwt` tools: RFC 9068 JWT access tokens (`typ: at+jwt`),
//! bound to the run key (RFC 9449 §6.1 `cnf.jkt`), naming the run as actor
//! (RFC 8693 §4.1 `act`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::UnixTime;
use crate::error::{Error, Result, malformed};
use crate::jose::{CompactJws, PublicJwk};
use crate::keys::{BrokerKeys, SigningKey};

/// Longest credential accepted back (introspection, revocation).
pub const MAX_CREDENTIAL_LEN: usize = 8192;

/// The actor claim (RFC 8693 §4.1): who is acting; nested `act` for earlier actors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting party (the run's SPIFFE ID).
    pub sub: String,
    /// The actor before this one, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub act: Option<Box<Actor>>,
}

/// Confirmation claim (RFC 7800, RFC 9449 §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// Thumbprint of the key the token is bound to.
    pub jkt: String,
}

/// The claims of a credential (RFC 9068 §2.2 plus Mandate's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the broker.
    pub iss: String,
    /// The tool's audience URI.
    pub aud: String,
    /// The principal when acting on someone's behalf, else the agent's SPIFFE ID.
    pub sub: String,
    /// The acting run.
    pub act: Actor,
    /// The agent's SPIFFE ID (RFC 9068 §2.2).
    pub client_id: String,
    /// Space-separated actions.
    pub scope: String,
    /// Unique id: what revocation names.
    pub jti: String,
    /// Issued at.
    pub iat: UnixTime,
    /// Expiry.
    pub exp: UnixTime,
    /// Key binding. Absent only on the broker's proxy credentials, which
    /// unchanged SDKs present as bearer tokens, and which only the broker's
    /// proxy accepts (their `aud` is the proxy).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cnf: Option<Confirmation>,
    /// Tenant.
    pub tenant: String,
    /// Run id.
    pub run: String,
    /// Agent name.
    pub agent: String,
    /// Task.
    pub task: String,
    /// Grant, when acting under one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grant: Option<String>,
    /// Paths under which the credential may be used, when a holder narrowed
    /// its mandate to a resource prefix (the broker's proxy enforces it;
    /// other tools should).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path_prefix: Option<String>,
    /// What the agent declared about the request (RFC 9396 §7: the
    /// authorization details the credential was issued for).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub authorization_details: Option<Value>,
    /// The human approval this credential was issued under (the first of
    /// [`AccessClaims::approvals`], for clients that read one).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approval: Option<ApprovalClaim>,
    /// Every human approval this credential was issued under: one per
    /// `@approval` policy that refused the request, each decided by that
    /// policy's own approvers.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub approvals: Vec<ApprovalClaim>,
    /// The attenuation blocks of the mandate it was exchanged for (their
    /// Biscuit revocation ids, base64url): revoking a narrowed mandate
    /// revokes the credentials made from it.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub blocks: Vec<String>,
}

impl AccessClaims {
    /// The `mandate` object of the credential's `authorization_details`
    /// ([`declared_details`]).
    pub fn declared_details(&self) -> Option<&Value> {
        declared_details(self.authorization_details.as_ref()?)
    }
}

/// The `mandate` object of a credential's `authorization_details` (RFC
/// 9396 §2: an array of objects; credentials of brokers before issue 16
/// carried the object itself, and are read the same way): what the agent
/// declared (`amount`, `currency`, `target`, `description`).
pub fn declared_details(authorization_details: &Value) -> Option<&Value> {
    match authorization_details {
        Value::Array(a) => a
            .iter()
            .find(|o| o.get("type").and_then(Value::as_str) == Some("mandate")),
        o @ Value::Object(_) => Some(o),
        _ => None,
    }
}

/// Who approved, when, and what exactly (issue 5: "agent performed X,
/// approved by alice at 09:22 UTC").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalClaim {
    /// The approval's id.
    pub id: String,
    /// The approver (`principal:<id>`).
    pub approver: String,
    /// When it was approved (seconds).
    pub approved_at: UnixTime,
    /// SHA-256 (base64url) of the approved request: run, tool, actions, details.
    pub request_digest: String,
}

impl AccessClaims {
    /// From the `act` chain: (delegation depth of the run, offline hops).
    /// Hops are actors named by JWK thumbprint URI (RFC 9278) before the run.
    pub fn chain_depths(&self) -> (usize, usize) {
        let mut hops = 0;
        let mut runs: usize = 0;
        let mut a = Some(&self.act);
        while let Some(x) = a {
            if x.sub.starts_with("urn:ietf:params:oauth:jwk-thumbprint:") {
                hops += 1;
            } else {
                runs += 1;
            }
            a = x.act.as_deref();
        }
        (runs.saturating_sub(1), hops)
    }

    /// Every id this credential can be revoked by.
    pub fn revocation_keys(&self) -> Vec<String> {
        // A delegated run's credential dies with any run it descends from,
        // and with those runs' agents: the nested `act` chain (RFC 8693
        // §4.1) names them (holders of attenuated mandates are key
        // thumbprints, not runs, and are skipped).
        let mut ancestors = Vec::new();
        let mut a = Some(&self.act);
        while let Some(x) = a {
            if let Some(anc) = crate::revocation::Ancestor::from_run_spiffe(&x.sub)
                && anc.run != self.run
            {
                ancestors.push(anc);
            }
            a = x.act.as_deref();
        }
        let principal = (self.sub != self.client_id).then_some(self.sub.as_str());
        crate::revocation::keys(
            &crate::revocation::Lineage {
                tenant: &self.tenant,
                agent: &self.agent,
                run: &self.run,
                principal,
                grant: self.grant.as_deref(),
                credential: Some(&self.jti),
                blocks: &self.blocks,
            },
            &ancestors,
        )
    }
}

/// Signs a credential with `key` (RFC 9068 §2.1: `typ: at+jwt`, `kid`).
pub fn sign(key: &SigningKey, claims: &AccessClaims) -> Result<String> {
    Signer::new(key.clone()).sign(claims)
}

/// A credential signer with its protected header encoded once (the hot
/// path signs thousands of credentials with the same key).
#[derive(Debug, Clone)]
pub struct Signer {
    key: SigningKey,
    header_b64: String,
}

impl Signer {
    /// A signer for `key`.
    pub fn new(key: SigningKey) -> Self {
        let header = json!({"alg": key.alg().as_str(), "typ": "at+jwt", "kid": key.kid()});
        let header_b64 = crate::jose::b64(header.to_string().as_bytes());
        Self { key, header_b64 }
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String> {
        let payload = serde_json::to_vec(claims).map_err(|e| Error::Crypto(e.to_string()))?;
        let mut out = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        out.push_str(&crate::jose::b64(&payload));
        let sig = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&crate::jose::b64(&sig));
        Ok(out)
    }
}

/// The longest a credential lives (a tool's `max_ttl_secs` is at most this).
pub const MAX_CREDENTIAL_LIFETIME: UnixTime = 3600;

/// The public keys a credential verifier trusts, by `kid`.
pub trait TrustedKeys {
    /// The key of `kid`, and the time it was retired, if it was
    /// (credentials it signed later are forged with a leaked key).
    fn trusted(&self, kid: &str) -> Option<(PublicJwk, Option<UnixTime>)>;
}

impl TrustedKeys for BrokerKeys {
    fn trusted(&self, kid: &str) -> Option<(PublicJwk, Option<UnixTime>)> {
        let key = self.jwt_key_by_kid(kid)?;
        Some((key.public(), self.retired_since.get(kid).copied()))
    }
}

impl TrustedKeys for std::collections::HashMap<String, PublicJwk> {
    fn trusted(&self, kid: &str) -> Option<(PublicJwk, Option<UnixTime>)> {
        self.get(kid).map(|k| (k.clone(), None))
    }
}

/// What a credential must be to verify.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The broker's issuer URL (a trailing `/` is ignored on both sides).
    pub issuer: &'a str,
    /// The tool's audience, when the verifier is one tool.
    pub audience: Option<&'a str>,
    /// Now.
    pub now: UnixTime,
    /// Seconds of clock difference allowed for `exp` and `iat`.
    pub leeway: u64,
    /// Accept an expired credential (introspection of what was issued).
    pub allow_expired: bool,
}

/// Why a credential does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a compact JWS of an accepted algorithm.
    #[error("{0}")]
    Unreadable(Error),
    /// Not a well-formed credential.
    #[error("{0}")]
    Malformed(String),
    /// Its `kid` names no trusted key.
    #[error("signed with unknown key `{0}`")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// Another issuer or audience.
    #[error("it is for {what} `{got}`, not `{want}`")]
    WrongParty {
        /// `iss` or `aud`.
        what: &'static str,
        /// What it says.
        got: String,
        /// What was expected.
        want: String,
    },
    /// It claims a longer life than any credential of the broker has, or was
    /// signed by a retired key after its retirement: forged.
    #[error("{0}")]
    Forged(String),
    /// Expired.
    #[error("expired at {0}")]
    Expired(UnixTime),
    /// Issued in the future.
    #[error("issued in the future; check the clock")]
    FromTheFuture,
}

/// Verifies a credential (RFC 9068 profile): allow-listed `alg`, trusted
/// `kid`, signature, `typ`, issuer, audience, lifetime, retirement, time.
/// The one credential verifier: the broker, mandate-verify and the
/// testdata tests all call it.
pub fn verify_with(
    keys: &impl TrustedKeys,
    token: &str,
    x: &Expect<'_>,
) -> std::result::Result<AccessClaims, Refusal> {
    let jws =
        CompactJws::parse("credential", token, MAX_CREDENTIAL_LEN).map_err(Refusal::Unreadable)?;
    if jws.header_str("typ") != Some("at+jwt") {
        return Err(Refusal::Malformed("header `typ` must be `at+jwt`".into()));
    }
    let kid = jws
        .header_str("kid")
        .ok_or_else(|| Refusal::Malformed("header has no `kid`".into()))?;
    let (key, retired) = keys
        .trusted(kid)
        .ok_or_else(|| Refusal::UnknownKey(kid.chars().take(64).collect()))?;
    key.verify(
        "credential",
        jws.alg,
        jws.signing_input.as_bytes(),
        &jws.signature,
    )
    .map_err(|_| Refusal::BadSignature)?;
    let c: AccessClaims = serde_json::from_slice(&jws.payload)
        .map_err(|e| Refusal::Malformed(format!("claims: {e}")))?;
    let want_iss = x.issuer.trim_end_matches('/');
    if c.iss.trim_end_matches('/') != want_iss {
        return Err(Refusal::WrongParty {
            what: "issuer",
            got: c.iss,
            want: want_iss.to_owned(),
        });
    }
    if let Some(aud) = x.audience
        && c.aud != aud
    {
        return Err(Refusal::WrongParty {
            what: "audience",
            got: c.aud,
            want: aud.to_owned(),
        });
    }
    if c.exp.saturating_sub(c.iat) > MAX_CREDENTIAL_LIFETIME {
        return Err(Refusal::Forged(format!(
            "it lives longer than {MAX_CREDENTIAL_LIFETIME} s, which no credential of the broker does"
        )));
    }
    if let Some(t) = retired
        && c.iat > t
    {
        return Err(Refusal::Forged(format!(
            "it was signed at {} by a key retired at {t}",
            c.iat
        )));
    }
    if !x.allow_expired && c.exp.saturating_add(x.leeway) < x.now {
        return Err(Refusal::Expired(c.exp));
    }
    if c.iat > x.now.saturating_add(x.leeway) {
        return Err(Refusal::FromTheFuture);
    }
    Ok(c)
}

/// Clock difference the broker allows on its own credentials' `iat` (a
/// wall clock stepped back) when it checks them.
const BROKER_LEEWAY: u64 = 60;

/// Verifies a credential this broker issued ([`verify_with`] its keys):
/// expired ones are refused at once unless `allow_expired`.
pub fn verify(
    keys: &BrokerKeys,
    issuer: &str,
    token: &str,
    now: UnixTime,
    allow_expired: bool,
) -> Result<AccessClaims> {
    let c = verify_with(
        keys,
        token,
        &Expect {
            issuer,
            audience: None,
            now,
            leeway: BROKER_LEEWAY,
            allow_expired: true,
        },
    )
    .map_err(|r| match r {
        Refusal::Unreadable(e) => e,
        Refusal::UnknownKey(_) | Refusal::BadSignature => {
            Error::BadSignature { what: "credential" }
        }
        Refusal::WrongParty { .. } => malformed("credential", "issued by another broker"),
        other => malformed("credential", other.to_string()),
    })?;
    if !allow_expired && c.exp < now {
        return Err(Error::Expired {
            what: "credential",
            expired_at: c.exp,
            now,
        });
    }
    Ok(c)
}

/// The claims as JSON (for introspection responses).
pub fn to_json(c: &AccessClaims) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{Alg, b64};
    use rand::rngs::OsRng;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "http://b".into(),
            aud: "https://api.example".into(),
            sub: "alice".into(),
            act: Actor {
                sub: "spiffe://x/run/1".into(),
                act: None,
            },
            client_id: "spiffe://x".into(),
            scope: "read".into(),
            jti: "j1".into(),
            iat: 100,
            exp: 200,
            cnf: Some(Confirmation { jkt: "k".into() }),
            tenant: "t".into(),
            run: "r".into(),
            agent: "a".into(),
            task: "x".into(),
            grant: None,
            path_prefix: None,
            authorization_details: None,
            approval: None,
            approvals: vec![],
            blocks: vec![],
        }
    }

    #[test]
    fn declared_details_are_read_from_the_rfc_9396_array_and_the_old_object() {
        let d = json!({"type": "mandate", "amount": 5});
        let mut c = claims();
        assert_eq!(c.declared_details(), None);
        c.authorization_details = Some(json!([{"type": "other", "amount": 9}, d]));
        assert_eq!(c.declared_details(), Some(&d));
        c.authorization_details = Some(d.clone());
        assert_eq!(c.declared_details(), Some(&d));
        c.authorization_details = Some(json!([{"type": "other", "amount": 9}]));
        assert_eq!(c.declared_details(), None);
        c.authorization_details = Some(json!("amount"));
        assert_eq!(c.declared_details(), None);
    }

    #[test]
    fn credential_round_trips_with_both_algorithms() {
        let keys = BrokerKeys::generate(&mut OsRng);
        for alg in [Alg::EdDSA, Alg::ES256] {
            let t = sign(keys.jwt_key(alg), &claims()).unwrap();
            assert_eq!(verify(&keys, "http://b", &t, 150, false).unwrap(), claims());
            assert!(matches!(
                verify(&keys, "http://b", &t, 201, false),
                Err(Error::Expired { .. })
            ));
            assert!(verify(&keys, "http://other", &t, 150, false).is_err());
        }
    }

    #[test]
    fn credential_with_hs256_or_unknown_kid_is_refused() {
        let keys = BrokerKeys::generate(&mut OsRng);
        let t = sign(&keys.jwt_eddsa, &claims()).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let h = b64(
            json!({"alg":"HS256","typ":"at+jwt","kid":keys.jwt_eddsa.kid()})
                .to_string()
                .as_bytes(),
        );
        assert!(matches!(
            verify(
                &keys,
                "http://b",
                &format!("{h}.{}.{}", parts[1], parts[2]),
                150,
                false
            ),
            Err(Error::UnsupportedAlgorithm { .. })
        ));
        let other = BrokerKeys::generate(&mut OsRng);
        let t2 = sign(&other.jwt_eddsa, &claims()).unwrap();
        assert_eq!(
            verify(&keys, "http://b", &t2, 150, false),
            Err(Error::BadSignature { what: "credential" })
        );
    }
}
