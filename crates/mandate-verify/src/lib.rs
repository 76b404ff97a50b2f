//! # mandate-verify
//!
//! For tool owners: verify a Mandate credential (an RFC 9068 JWT access token)
//! offline, with the broker's JWKS, and the DPoP proof (RFC 9449) that must
//! come with it on every request:
//!
//! - signature by a key of the JWKS (EdDSA or ES256 only; `none` and HMAC are
//!   refused before any key is chosen), `typ: at+jwt`;
//! - `iss`, `aud`, `exp` and `iat` with a leeway;
//! - the proof: signed by the key the credential is bound to (`cnf.jkt`), for
//!   this method and URI, fresh, with `ath` = the hash of this credential, and
//!   never seen before (replay cache);
//! - revocation: none of the ids the credential can be revoked by (itself,
//!   its run, agent, principal, grant, tenant) is in the revoked set, which the
//!   caller keeps current from the broker's revocation feed.
//!
//! [`Verifier`] does no IO and reads no clock: the caller passes the JWKS,
//! the time and the revocations in. [`live::Live`] (feature `live`, on by
//! default) does the IO: it fetches the broker's metadata and JWKS (again
//! when a credential names an unknown `kid`), and keeps the revocations
//! current from the broker's feed (Server-Sent Events, resumed from the last
//! event id, with the log polled when the stream is down).
//! [`webhook::verify_webhook`] checks the broker's signed webhooks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "live")]
pub mod live;
#[cfg(feature = "axum")]
pub mod middleware;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Mutex;

use mandate_core::UnixTime;
use mandate_core::credential::AccessClaims;
pub use mandate_core::credential::ApprovalClaim;
use mandate_core::dpop::{self, ProofExpectations, ReplayCache, ReplayError};
use mandate_core::jose::PublicJwk;
use serde_json::Value;

/// The most keys a JWKS may hold (a broker publishes its current keys and a
/// few retired ones).
pub const MAX_JWKS_KEYS: usize = 64;

/// Why a request was refused. Messages say what is wrong, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The credential is not a well-formed JWT of an accepted algorithm.
    #[error("credential refused: {0}")]
    Malformed(String),
    /// Its `kid` is not in the JWKS: fetch the JWKS again, then retry once.
    #[error("credential signed with unknown key `{0}`; refresh the JWKS")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("credential signature does not verify")]
    BadSignature,
    /// Another issuer or audience.
    #[error("credential is for {what} `{got}`, not `{want}`")]
    WrongParty {
        /// `iss` or `aud`.
        what: &'static str,
        /// What the credential says.
        got: String,
        /// What this verifier expects.
        want: String,
    },
    /// Expired, or issued in the future.
    #[error("credential is not valid now: {0}")]
    NotValidNow(String),
    /// Revoked.
    #[error("credential has been revoked ({0})")]
    Revoked(String),
    /// The DPoP proof is missing or wrong.
    #[error("{0}")]
    Proof(String),
    /// The credential is limited to paths under a prefix (`path_prefix`)
    /// and this request's path is not one of them, or is encoded so that it
    /// cannot be compared (`%2F`, `%2E`, `%25`, dot segments).
    #[error("credential may reach only paths under `{prefix}`; {why}")]
    OutsidePath {
        /// The credential's `path_prefix`.
        prefix: String,
        /// What is wrong with the request's path.
        why: String,
    },
    /// The revocation set has not been brought up to date for longer than
    /// allowed (`LiveConfig::max_staleness` of the `live` module): refusing rather than
    /// accepting a credential that may have been revoked meanwhile.
    #[error("revocation data is stale: {0}")]
    Stale(String),
}

/// Who is calling, as the credential says and the proof confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Tenant.
    pub tenant: String,
    /// Agent name and SPIFFE ID.
    pub agent: String,
    /// Agent SPIFFE ID (`client_id`).
    pub agent_id: String,
    /// Run id.
    pub run: String,
    /// On whose behalf (`sub`): the principal, or the agent's SPIFFE ID.
    pub subject: String,
    /// The actor chain, innermost (current) first (RFC 8693 §4.1).
    pub actors: Vec<String>,
    /// Granted actions.
    pub scopes: Vec<String>,
    /// Task.
    pub task: String,
    /// Credential id.
    pub jti: String,
    /// Expiry.
    pub exp: UnixTime,
    /// The paths the credential may reach, when its holder narrowed it;
    /// already enforced against the request's URI.
    pub path_prefix: Option<String>,
    /// What the agent declared about the request (RFC 9396 authorization
    /// details, §2: an array of objects), for the tool to hold it to; read
    /// the declared amount with [`Identity::declared_details`].
    pub authorization_details: Option<Value>,
    /// The human approvals the credential was issued under.
    pub approvals: Vec<ApprovalClaim>,
}

impl Identity {
    /// The `mandate` object the agent declared (`amount` in minor units,
    /// `currency`, `target`, `description`), whichever shape the credential
    /// carries it in. `None`: it declared nothing, so a tool that moves
    /// money must refuse rather than treat it as unlimited.
    pub fn declared_details(&self) -> Option<&Value> {
        mandate_core::credential::declared_details(self.authorization_details.as_ref()?)
    }
}

/// The request a credential arrived with.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `Authorization: DPoP <credential>`.
    pub credential: &'a str,
    /// The `DPoP` header.
    pub proof: Option<&'a str>,
    /// HTTP method.
    pub method: &'a str,
    /// The request URI as the tool publishes it.
    pub uri: &'a str,
}

/// A request proving possession with an HTTP message signature (RFC 9421).
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The credential (from `Authorization`).
    pub credential: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// The absolute request URI as the client addressed it.
    pub uri: &'a str,
    /// Every header: (lower-case name, value).
    pub headers: &'a [(String, String)],
    /// The body (empty if none).
    pub body: &'a [u8],
}

/// Verifies credentials for one tool (one audience) of one broker (issuer).
pub struct Verifier {
    issuer: String,
    audience: String,
    keys: HashMap<String, PublicJwk>,
    revoked: mandate_core::revocation::RevokedSet,
    leeway: u64,
    proof_max_age: u64,
    replay: Mutex<ReplayCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier for credentials of `issuer` addressed to `audience`.
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience: audience.to_owned(),
            keys: HashMap::new(),
            revoked: mandate_core::revocation::RevokedSet::default(),
            leeway: 5,
            proof_max_age: 60,
            replay: Mutex::new(ReplayCache::new(
                dpop::ReplayLimits {
                    per_key: 100_000,
                    capacity: 1_000_000,
                },
                0,
            )),
        }
    }

    /// Clock leeway for `exp`, `iat` and proof times (default 5 s).
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }

    /// Replaces the keys with a JWKS document (RFC 7517 §5). Keys without a
    /// `kid`, private keys and unsupported key types are skipped, and only
    /// the first [`MAX_JWKS_KEYS`] are looked at; returns how many keys were
    /// loaded.
    pub fn set_jwks(&mut self, jwks: &Value) -> usize {
        self.keys = jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .take(MAX_JWKS_KEYS)
            .filter_map(|k| Some((k["kid"].as_str()?.to_owned(), PublicJwk::from_json(k).ok()?)))
            .collect();
        self.keys.len()
    }

    /// Records a revoked id from the broker's feed (`cred:…`, `run:…`, ...).
    /// `everything:<T>` (the broker's kill switch) refuses every credential
    /// issued at or before `T`.
    pub fn revoke(&mut self, key: &str) {
        // Kept for ever: a verifier does not know until when it matters.
        self.revoked.add(key, 0, 0);
    }

    /// Verifies a request's credential and proof at `now`.
    pub fn verify(&self, req: &Request<'_>, now: UnixTime) -> Result<Identity, VerifyError> {
        let (c, jkt) = self.bound_claims(req.credential, now)?;
        let proof = req.proof.ok_or_else(|| {
            VerifyError::Proof(
                "a DPoP proof signed by the run key is required (`DPoP` header)".into(),
            )
        })?;
        let p = dpop::verify_proof(
            proof,
            &ProofExpectations {
                method: req.method,
                uri: req.uri,
                now,
                max_age: self.proof_max_age,
                max_skew: self.leeway,
                jkt: Some(&jkt),
                access_token: Some(req.credential),
                known_key: None,
                nonces: None,
            },
        )
        .map_err(|e| VerifyError::Proof(e.to_string()))?;
        within_prefix(c.path_prefix.as_deref(), req.uri)?;
        self.first_use(
            &p.jkt,
            &p.jti,
            p.iat,
            p.iat + self.proof_max_age + self.leeway,
            now,
        )?;
        Ok(identity(c))
    }

    /// Verifies a request whose proof of possession is an HTTP message
    /// signature (RFC 9421) by the key the credential is bound to, instead
    /// of DPoP: the key in `Signature-Key` (`hwk`), covering `@method`,
    /// `@target-uri`, `authorization`, `signature-key` and, with a body,
    /// `content-digest` (RFC 9530, checked against `body`); `created`,
    /// `expires` and a `nonce` used once.
    pub fn verify_signed(
        &self,
        req: &SignedRequest<'_>,
        now: UnixTime,
    ) -> Result<Identity, VerifyError> {
        use mandate_core::httpsig;
        let (c, jkt) = self.bound_claims(req.credential, now)?;
        let msg = httpsig::Message::request(req.method, req.uri, req.headers.to_vec());
        let found = httpsig::verify_bound(
            &msg,
            &jkt,
            req.body,
            &httpsig::Policy {
                now,
                skew: self.leeway,
                max_lifetime: self.proof_max_age.max(60),
                required: &["authorization"],
            },
        )
        .map_err(|e| VerifyError::Proof(e.to_string()))?;
        within_prefix(c.path_prefix.as_deref(), req.uri)?;
        let nonce = format!("httpsig:{}", found.nonce.unwrap_or_default());
        let until = found.expires.unwrap_or(0).max(0) as u64 + self.leeway;
        let created = found.created.unwrap_or(0).max(0) as u64;
        self.first_use(&jkt, &nonce, created, until, now)?;
        Ok(identity(c))
    }

    fn first_use(
        &self,
        jkt: &str,
        id: &str,
        dated: u64,
        until: u64,
        now: UnixTime,
    ) -> Result<(), VerifyError> {
        let mut replay = self
            .replay
            .lock()
            .map_err(|_| VerifyError::Proof("replay cache unavailable".into()))?;
        let used = dpop::ProofUse {
            jkt,
            id,
            dated,
            forget_after: until,
            nonce: false,
        };
        match replay.check_and_insert(&used, now) {
            Ok(()) => Ok(()),
            Err(ReplayError::Replayed) => Err(VerifyError::Proof("proof replayed".into())),
            Err(ReplayError::OverQuota { .. }) => Err(VerifyError::Proof(
                "too many live proofs from this key; slow down".into(),
            )),
            Err(ReplayError::Forgotten { .. } | ReplayError::BeforeStart { .. }) => Err(
                VerifyError::Proof("proof too old to check for replay; make a fresh one".into()),
            ),
        }
    }

    /// The credential's claims after signature, issuer, audience, time and
    /// revocation checks, and the key it is bound to.
    fn bound_claims(
        &self,
        credential: &str,
        now: UnixTime,
    ) -> Result<(AccessClaims, String), VerifyError> {
        use mandate_core::credential::{Expect, Refusal, verify_with};
        let c = verify_with(
            &self.keys,
            credential,
            &Expect {
                issuer: &self.issuer,
                audience: Some(&self.audience),
                now,
                leeway: self.leeway,
                allow_expired: false,
            },
        )
        .map_err(|r| match r {
            Refusal::Unreadable(e) => VerifyError::Malformed(e.to_string()),
            Refusal::Malformed(m) | Refusal::Forged(m) => VerifyError::Malformed(m),
            Refusal::UnknownKey(kid) => VerifyError::UnknownKey(kid),
            Refusal::BadSignature => VerifyError::BadSignature,
            Refusal::WrongParty { what, got, want } => VerifyError::WrongParty { what, got, want },
            Refusal::Expired(exp) => VerifyError::NotValidNow(format!("expired at {exp}")),
            Refusal::FromTheFuture => {
                VerifyError::NotValidNow("issued in the future; check the clock".into())
            }
        })?;
        let keys = c.revocation_keys();
        if let Some(k) = self.revoked.refused(&keys, c.iat) {
            return Err(VerifyError::Revoked(
                mandate_core::revocation::kind(&k).to_owned(),
            ));
        }
        let Some(jkt) = c.cnf.as_ref().map(|k| k.jkt.clone()) else {
            return Err(VerifyError::Proof(
                "the credential is not bound to a key (no `cnf`): it is a proxy credential, valid only at the broker's proxy".into(),
            ));
        };
        Ok((c, jkt))
    }
}

/// The path of an absolute URI (`scheme://authority/path?query#fragment`).
fn uri_path(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let path = match rest.find(['/', '?', '#']) {
        Some(i) if rest[i..].starts_with('/') => &rest[i..],
        _ => return Some("/"),
    };
    path.split(['?', '#']).next()
}

/// A credential with a `path_prefix` is good only on paths under it, as
/// sent (never decoded): a percent-encoded `/`, `.` or `%` could mean
/// another path to the server behind, so it is refused, as are dot
/// segments ([`mandate_core::paths::path_within`]).
fn within_prefix(prefix: Option<&str>, uri: &str) -> Result<(), VerifyError> {
    let Some(prefix) = prefix else {
        return Ok(());
    };
    let outside = |why: String| VerifyError::OutsidePath {
        prefix: prefix.to_owned(),
        why,
    };
    let path = uri_path(uri).ok_or_else(|| outside(format!("`{uri}` is not an absolute URI")))?;
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%2e", "%25"].iter().any(|e| lower.contains(e)) {
        return Err(outside(format!(
            "`{path}` encodes `/`, `.` or `%`; send it unencoded"
        )));
    }
    if !mandate_core::paths::path_within(prefix, path) {
        return Err(outside(format!("`{path}` is outside it")));
    }
    Ok(())
}

/// The verified identity of a credential's claims.
fn identity(c: AccessClaims) -> Identity {
    {
        let approvals = if c.approvals.is_empty() {
            c.approval.into_iter().collect()
        } else {
            c.approvals
        };
        let mut actors = Vec::new();
        let mut a = Some(&c.act);
        while let Some(x) = a {
            actors.push(x.sub.clone());
            a = x.act.as_deref();
        }
        Identity {
            tenant: c.tenant,
            agent: c.agent,
            agent_id: c.client_id,
            run: c.run,
            subject: c.sub,
            actors,
            scopes: c
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            task: c.task,
            jti: c.jti,
            exp: c.exp,
            path_prefix: c.path_prefix,
            authorization_details: c.authorization_details,
            approvals,
        }
    }
}
