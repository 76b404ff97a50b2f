//! Revocation by a token's holder (RFC 7009): a credential revokes itself;
//! a run's own mandate ends its run; a narrowed (attenuated) mandate revokes
//! only its own subtree (its last block: every token that extends it and
//! every credential made from them), at most [`MAX_BLOCK_REVOCATIONS`] per
//! run. Also what introspection and revocation first verify: the token.

use std::sync::Arc;

use serde_json::json;

use mandate_core::audit::EventBody;
use mandate_core::credential::{self, AccessClaims};
use mandate_core::mandate::MandateClaims;
use mandate_core::model::Revocation;
use mandate_store::{Entry, Mutation};

use crate::error::{ApiError, Code, err};
pub use crate::origin::Origin;
use crate::state::AppState;

/// What a presented token turned out to be.
pub enum Presented {
    /// A credential of this broker.
    Credential(Box<AccessClaims>),
    /// A mandate of this broker.
    Mandate(Arc<MandateClaims>),
}

/// Verifies a presented token; `None` when it is neither (or not valid).
pub async fn identify(
    s: &Arc<AppState>,
    token: &str,
    now: u64,
    client: std::net::IpAddr,
) -> Option<Presented> {
    if token.matches('.').count() == 2 {
        credential::verify(&s.keyset().keys, &s.config.issuer, token, now, false)
            .ok()
            .map(|c| Presented::Credential(Box::new(c)))
    } else {
        crate::gate::verify_mandate(s, token, now, client)
            .await
            .ok()
            .map(Presented::Mandate)
    }
}

/// Most narrowed mandates of one run that RFC 7009 revokes (per process):
/// each is a line in the revocation log and the feed, and a holder of the
/// run's key can mint them offline without end.
pub const MAX_BLOCK_REVOCATIONS: u32 = 64;

/// Counts one more narrowed-mandate revocation of `run`, or refuses.
fn count_block_revocation(s: &AppState, run: &str) -> Result<(), ApiError> {
    let mut counts = s
        .block_revocations
        .lock()
        .map_err(|_| err(Code::ServerError, "the revocation counter is unavailable"))?;
    let n = counts.entry(run.to_owned()).or_insert(0);
    if *n >= MAX_BLOCK_REVOCATIONS {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "{MAX_BLOCK_REVOCATIONS} narrowed mandates of run `{run}` were revoked already; to cut off more, revoke the run (`mandate revoke --run {run}`)"
            ),
        ));
    }
    *n += 1;
    Ok(())
}

/// Revokes what its holder presented. Writes nothing for a token already
/// revoked (or a run already ended): only a valid, live token makes this
/// write, once.
pub async fn revoke(s: &AppState, presented: Presented, origin: &Origin) -> Result<(), ApiError> {
    let (key, until, tenant, run, agent) = match presented {
        Presented::Credential(c) => {
            if s.reg().refused(&c.revocation_keys(), c.iat).is_some() {
                return Ok(());
            }
            (format!("cred:{}", c.jti), c.exp, c.tenant, c.run, c.agent)
        }
        Presented::Mandate(m) => {
            // A narrowed mandate already revoked writes nothing again; a
            // run's own mandate ends its run once (a revoked run that has
            // not ended yet still ends: below, ended runs write nothing).
            if !m.hops.is_empty() && s.reg().refused(&m.revocation_keys(), m.issued_at).is_some() {
                return Ok(());
            }
            let key = match m.hops.last() {
                Some(h) => {
                    count_block_revocation(s, &m.run)
                        .map_err(|e| e.unauthenticated(mandate_core::audit::EventType::Revoke))?;
                    format!("block:{}", h.block_id)
                }
                None => format!("run:{}", m.run),
            };
            let until = if m.hops.is_empty() { 0 } else { m.expires_at };
            (key, until, m.tenant.clone(), m.run.clone(), m.agent.clone())
        }
    };
    let ev = EventBody {
        time_ms: s.now_ms(),
        event_type: mandate_core::audit::EventType::Revoke,
        decision: mandate_core::audit::Decision::Ok,
        tenant: Some(tenant.clone()),
        agent: Some(agent),
        run: Some(run),
        credential_id: key.strip_prefix("cred:").map(str::to_owned),
        actor: Some("token holder (RFC 7009)".into()),
        correlation_id: Some(origin.correlation_id.clone()),
        client_addr: crate::routes::client(Some(origin.client)),
        details: json!({"revoked": key}),
        ..Default::default()
    };
    let rev = Revocation {
        seq: 0,
        key,
        reason: "revoked by its holder".into(),
        time_ms: s.now_ms(),
        until,
        tenant: Some(tenant),
    };
    // A run's holder revoking its mandate ends the run (what `mandate exec`
    // does when its child exits).
    let mutation = match rev.key.strip_prefix("run:") {
        Some(id) => match s.store.get_run(id)? {
            Some(r) if r.ended_ms.is_none() => Mutation::EndRun {
                id: id.to_owned(),
                ended_ms: s.now_ms(),
                revocation: rev,
            },
            Some(_) => return Ok(()),
            None => Mutation::Revoke(rev),
        },
        None => Mutation::Revoke(rev),
    };
    s.commit(Entry {
        mutation: Some(mutation),
        events: vec![ev],
    })
    .await?;
    Ok(())
}
