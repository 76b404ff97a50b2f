//! The pure decisions of a token exchange (RFC 8693): what was asked
//! (scope, RFC 9396 details), what an approval binds (the request digest),
//! who acts (the RFC 8693 §4.1 `act` chain) and the credential's claims.
//! No IO: the broker gathers the facts, passes time and randomness in, and
//! records the outcome.

use serde_json::{Value, json};

use crate::UnixTime;
use crate::capability::check_action;
use crate::credential::{AccessClaims, Actor, ApprovalClaim, Confirmation};
use crate::mandate::MandateClaims;

/// RFC 9278 §3: JWK Thumbprint URI prefix for SHA-256 thumbprints.
pub const JKT_URN: &str = "urn:ietf:params:oauth:jwk-thumbprint:sha-256:";

/// Most actions one exchange may ask for.
pub const MAX_ACTIONS: usize = 16;

/// The actions of an RFC 6749 §3.3 `scope`: named (never `*`), each valid,
/// deduplicated in order, 1 to [`MAX_ACTIONS`].
pub fn parse_scope(scope: &str) -> Result<Vec<String>, String> {
    let mut actions: Vec<String> = Vec::new();
    for a in scope.split(' ').filter(|a| !a.is_empty()) {
        check_action(a).map_err(|e| e.to_string())?;
        if a == "*" {
            return Err("ask for named actions, not `*`".into());
        }
        if !actions.iter().any(|x| x == a) {
            actions.push(a.to_owned());
        }
    }
    if actions.is_empty() || actions.len() > MAX_ACTIONS {
        return Err(format!("ask for 1 to {MAX_ACTIONS} actions"));
    }
    Ok(actions)
}

/// SHA-256 (base64url) over what an approval binds: run, tool, actions
/// (sorted), declared details (canonical JSON: object keys sorted).
pub fn request_digest(run: &str, tool: &str, actions: &[String], details: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut a = actions.to_vec();
    a.sort();
    let canon = json!({"run": run, "tool": tool, "actions": a, "details": details}).to_string();
    crate::jose::b64(&Sha256::digest(canon.as_bytes()))
}

/// The RFC 8693 §4.1 actor chain, current actor first: each holder a block
/// handed the mandate to (by RFC 9278 JWK thumbprint URI), then the run,
/// then the runs it was delegated from.
pub fn act_chain(claims: &MandateClaims) -> Actor {
    let mut chain = None;
    for (_, run_id) in claims.ancestors.iter().rev() {
        chain = Some(Box::new(Actor {
            sub: run_id.clone(),
            act: chain,
        }));
    }
    let mut current = Actor {
        sub: claims.run_id.clone(),
        act: chain,
    };
    for h in claims.hops.iter().filter(|h| h.holder != h.signed_by) {
        current = Actor {
            sub: format!("{JKT_URN}{}", h.holder),
            act: Some(Box::new(current)),
        };
    }
    current
}

/// What a credential is made of besides the mandate.
#[derive(Debug)]
pub struct CredentialSpec<'a> {
    /// The broker's issuer URL.
    pub issuer: &'a str,
    /// The tool's audience URI.
    pub audience: &'a str,
    /// The tool's longest credential lifetime (seconds).
    pub max_ttl: u64,
    /// The granted actions.
    pub actions: &'a [String],
    /// The declared RFC 9396 details (`null` when none).
    pub details: &'a Value,
    /// The approvals it is issued under.
    pub approvals: Vec<ApprovalClaim>,
    /// Its id (`cred_...`), chosen by the caller's randomness.
    pub jti: String,
    /// Bound to the mandate's key (`cnf`), or a bearer proxy credential.
    pub bound: bool,
}

/// The claims of the credential a mandate is exchanged for at `now`: it
/// never outlives the mandate or the tool's lifetime.
pub fn credential_claims(
    m: &MandateClaims,
    spec: CredentialSpec<'_>,
    now: UnixTime,
) -> AccessClaims {
    let approval = spec.approvals.first().cloned();
    AccessClaims {
        iss: spec.issuer.to_owned(),
        aud: spec.audience.to_owned(),
        sub: m.principal.clone().unwrap_or_else(|| m.agent_id.clone()),
        act: act_chain(m),
        client_id: m.agent_id.clone(),
        scope: spec.actions.join(" "),
        jti: spec.jti,
        iat: now,
        exp: m.expires_at.min(now.saturating_add(spec.max_ttl)),
        cnf: spec.bound.then(|| Confirmation {
            jkt: m.cnf_jkt.clone(),
        }),
        tenant: m.tenant.clone(),
        run: m.run.clone(),
        agent: m.agent.clone(),
        task: m.task.clone(),
        grant: m.grant.clone(),
        path_prefix: m.resource_prefix.clone(),
        // RFC 9396 §2 (and §9.2 for JWT access tokens): an array of objects.
        authorization_details: (!spec.details.is_null())
            .then(|| Value::Array(vec![spec.details.clone()])),
        approval,
        blocks: m.block_ids(),
        approvals: spec.approvals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_named_actions_deduplicated_and_bounded() {
        assert_eq!(parse_scope("read  write read").unwrap(), ["read", "write"]);
        assert!(parse_scope("*").is_err());
        assert!(parse_scope("   ").is_err());
        let many: Vec<String> = (0..17).map(|i| format!("a{i}")).collect();
        assert!(parse_scope(&many.join(" ")).is_err());
        assert!(parse_scope("bad/action").is_err());
    }

    #[test]
    fn the_digest_ignores_action_order_and_binds_everything_else() {
        let d = json!([{"type": "mandate", "amount": 5}]);
        let a = request_digest("run_1", "pay", &["b".into(), "a".into()], &d);
        assert_eq!(
            a,
            request_digest("run_1", "pay", &["a".into(), "b".into()], &d)
        );
        assert_ne!(
            a,
            request_digest("run_2", "pay", &["a".into(), "b".into()], &d)
        );
        assert_ne!(
            a,
            request_digest("run_1", "pay2", &["a".into(), "b".into()], &d)
        );
        assert_ne!(a, request_digest("run_1", "pay", &["a".into()], &d));
        assert_ne!(
            a,
            request_digest(
                "run_1",
                "pay",
                &["a".into(), "b".into()],
                &json!([{"amount": 6}])
            )
        );
    }
}
