//! `POST /v1/tokens/inspect`: what a mandate or credential says, whether it
//! verifies right now, and if not, why. For operators answering "what is this
//! token, who holds it, on whose behalf, and is it still good?".

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use mandate_core::{credential, mandate};

use super::{Admin, JsonBody, S};
use crate::error::ApiError;

/// Body of an inspection.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inspect {
    token: String,
}

/// `POST /v1/tokens/inspect {"token": "..."}`
pub async fn inspect(
    State(s): State<S>,
    _: Admin,
    JsonBody(req): JsonBody<Inspect>,
) -> Result<Json<Value>, ApiError> {
    let now = s.now_secs();
    let reg = s.reg();
    let token = req.token.trim();
    if token.matches('.').count() == 2 {
        // A credential: signature and issuer first, then what can change.
        return Ok(Json(
            match credential::verify(&s.keyset().keys, &s.config.issuer, token, now, true) {
                Err(e) => json!({"kind": "credential", "verifies": false, "reason": e.to_string()}),
                Ok(c) => {
                    let (ok, reason) = match (c.exp < now, reg.refused(&c.revocation_keys(), c.iat))
                    {
                        (_, Some(k)) => (false, Some(format!("revoked: {k}"))),
                        (true, None) => (false, Some(format!("expired at {}", c.exp))),
                        (false, None) => (true, None),
                    };
                    let mut chain = vec![
                        json!({"hop": "broker", "id": c.iss}),
                        json!({"hop": "agent", "id": c.client_id}),
                    ];
                    let mut act = Some(&c.act);
                    let mut runs = Vec::new();
                    while let Some(a) = act {
                        runs.push(json!({"hop": "run", "id": a.sub}));
                        act = a.act.as_deref();
                    }
                    runs.reverse();
                    chain.extend(runs);
                    json!({
                        "kind": "credential", "verifies": ok, "reason": reason,
                        "chain": chain, "principal": if c.sub != c.client_id { Some(&c.sub) } else { None },
                        "tenant": c.tenant, "tool": c.aud, "actions": c.scope.split(' ').collect::<Vec<_>>(),
                        "task": c.task, "grant": c.grant, "jti": c.jti, "issued_at": c.iat, "expires_at": c.exp,
                        "key_binding": c.cnf.as_ref().map(|k| json!({"jkt": k.jkt})),
                    })
                }
            },
        ));
    }
    // A mandate: verified at time 0 so an expired one still shows its claims
    // (its signature and checks are verified; only expiry is judged below).
    Ok(Json(match mandate::verify(&s.keyset().roots, token, 0) {
        Err(e) => json!({"kind": "unknown", "verifies": false,
                         "reason": format!("neither a credential nor a mandate of this broker: {e}")}),
        Ok(m) => {
            let (ok, reason) = match (
                m.expires_at < now,
                reg.refused(&m.revocation_keys(), m.issued_at),
            ) {
                (_, Some(k)) => (false, Some(format!("revoked: {k}"))),
                (true, None) => (false, Some(format!("expired at {}", m.expires_at))),
                (false, None) => (true, None),
            };
            // broker → the root run → ... → the parent → this agent and run.
            let mut chain = vec![json!({"hop": "broker", "id": m.issuer})];
            chain.extend(
                m.ancestors
                    .iter()
                    .rev()
                    .map(|(_, id)| json!({"hop": "run", "id": id})),
            );
            chain.push(json!({"hop": "agent", "id": m.agent_id}));
            chain.push(json!({"hop": "run", "id": m.run_id, "key": m.run_jkt}));
            // Offline hops: who signed each block, what it narrowed, to whom.
            for h in &m.hops {
                let n = &h.narrowing;
                chain.push(json!({
                    "hop": if h.holder != h.signed_by { "holder" } else { "narrowed" },
                    "id": format!("{}{}", crate::routes::oauth::JKT_URN, h.holder),
                    "name": n.next_holder_name, "signed_by": h.signed_by, "block": h.index,
                    "capabilities": n.capabilities, "not_after": n.not_after,
                    "max_uses": n.max_uses, "path_prefix": n.resource_prefix,
                }));
            }
            json!({
                "kind": "mandate", "verifies": ok, "reason": reason,
                "chain": chain, "depth": m.ancestors.len(),
                "principal": m.principal, "grant": m.grant, "tenant": m.tenant, "task": m.task,
                "capabilities": m.capabilities.to_strings(), "issued_at": m.issued_at, "expires_at": m.expires_at,
                "key_binding": {"jkt": m.cnf_jkt}, "run_key": m.run_jkt,
                "attenuations": m.hops.len(), "path_prefix": m.resource_prefix,
            })
        }
    }))
}
