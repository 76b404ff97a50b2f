//! Runs: join tokens (one run each), and ending a run (its mandate and
//! every credential it got are refused from then on). Starting and
//! delegating runs are still done by their routes.

use rand_core::OsRng;
use serde::Deserialize;

use mandate_core::audit::{EventBody, EventType};
use mandate_core::ids::random_id;
use mandate_core::model::{JoinToken, Revocation, Run};
use mandate_store::{Entry, Mutation};

use super::{find_run, need_tenant, short};
use crate::error::{ApiError, Code, err};
use crate::origin::Origin;
use crate::state::AppState;

/// Prefix of join tokens.
pub const JOIN_PREFIX: &str = "mandate_join_";

/// Longest join token lifetime.
pub const JOIN_MAX_TTL: u64 = 86_400;

/// Request body of `POST /v1/tenants/{t}/agents/{a}/join-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    grant: Option<String>,
}

/// A new join token, shown once.
pub struct NewJoinCredential {
    /// Its id.
    pub id: String,
    /// The token.
    pub token: String,
    /// Its expiry (seconds).
    pub expires_at: u64,
}

/// Makes a one-time, short-lived join token that starts one run of `agent`
/// (and no other call); the broker keeps its SHA-256.
pub async fn create_join_token(
    s: &AppState,
    origin: &Origin,
    (tenant, agent): (&str, &str),
    req: NewJoinToken,
) -> Result<NewJoinCredential, ApiError> {
    need_tenant(s, tenant)?;
    if !s
        .reg()
        .agents
        .contains_key(&(tenant.to_owned(), agent.to_owned()))
    {
        return Err(err(
            Code::NotFound,
            format!("agent `{}` not found in tenant `{tenant}`", short(agent)),
        ));
    }
    if req.principal.is_some() != req.grant.is_some() {
        return Err(err(
            Code::InvalidRequest,
            "to act on someone's behalf, give both `principal` and `grant`",
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(600);
    if ttl == 0 || ttl > JOIN_MAX_TTL {
        return Err(err(
            Code::InvalidRequest,
            format!("`ttl_secs` must be 1 to {JOIN_MAX_TTL}"),
        ));
    }
    let id = random_id(&mut OsRng, "")[..16].to_owned();
    let secret = mandate_core::secret::Secret::random(&mut OsRng, 32);
    let token = format!(
        "{JOIN_PREFIX}{id}_{}",
        mandate_core::jose::b64(secret.expose())
    );
    let expires_at = s.now_secs() + ttl;
    let j = JoinToken {
        id: id.clone(),
        hash: crate::boot::token_hash(&token),
        tenant: tenant.to_owned(),
        agent: agent.to_owned(),
        principal: req.principal,
        grant: req.grant,
        expires_at,
        created_ms: s.now_ms(),
        used_ms: None,
    };
    let mut ev = origin.admin_event(EventType::JoinTokenCreate, Some(tenant), s.now_ms());
    ev.agent = Some(agent.to_owned());
    ev.principal = j.principal.clone();
    ev.credential_id = Some(id.clone());
    ev.credential_exp = Some(expires_at);
    s.commit(Entry {
        mutation: Some(Mutation::CreateJoinToken(j)),
        events: vec![ev],
    })
    .await?;
    Ok(NewJoinCredential {
        id,
        token,
        expires_at,
    })
}

/// Ends run `id` at an admin's request.
pub async fn end_run(s: &AppState, origin: &Origin, id: &str) -> Result<(), ApiError> {
    let run = find_run(s, id)?;
    if run.ended_ms.is_some() {
        return Err(err(Code::Conflict, format!("run `{id}` has already ended")));
    }
    let ev = origin.admin_event(EventType::RunEnd, Some(&run.tenant), s.now_ms());
    finish_run(s, &run, ev, "run ended").await
}

/// Ends `run` (what `POST /v1/runs/{id}/end` does): commits the end with
/// a revocation of `run:<id>` (reason `reason`) and `ev`, a `run.end`
/// event filled in here with the run's tenant, agent and principal. From
/// then on its mandate and every credential it got are refused.
pub async fn finish_run(
    s: &AppState,
    run: &Run,
    mut ev: EventBody,
    reason: &str,
) -> Result<(), ApiError> {
    ev.agent = Some(run.agent.clone());
    ev.run = Some(run.id.clone());
    ev.principal = run.principal.clone();
    let revocation = Revocation {
        seq: 0,
        key: format!("run:{}", run.id),
        reason: reason.into(),
        time_ms: s.now_ms(),
        until: run.expires_at,
        tenant: Some(run.tenant.clone()),
    };
    s.commit(Entry {
        mutation: Some(Mutation::EndRun {
            id: run.id.clone(),
            ended_ms: s.now_ms(),
            revocation,
        }),
        events: vec![ev],
    })
    .await?;
    Ok(())
}
