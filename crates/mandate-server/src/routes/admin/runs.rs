//! Runs: start one (minting its mandate), list them, end one.

use std::sync::Arc;

use super::*;
use crate::services::runs::{self, JOIN_PREFIX, NewChild, NewRun};

// ---------- runs ----------

/// `POST /v1/tenants/{t}/agents/{a}/join-tokens`: a one-time, short-lived
/// credential that starts one run of this agent (and no other call). The
/// token is in this answer only; the broker keeps its SHA-256.
pub async fn create_join_token(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, agent)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let j = runs::create_join_token(&s, &origin(addr, &headers), (&tenant, &agent), req).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": j.id, "token": j.token, "tenant": tenant, "agent": agent, "expires_at": j.expires_at}),
        ),
    ))
}

/// Who starts a run: the admin, or the holder of a join token.
fn run_starter(s: &S, headers: &HeaderMap) -> Result<Option<JoinToken>, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(rest) = token.and_then(|t| t.strip_prefix(JOIN_PREFIX)) else {
        require_admin(s, headers)?;
        return Ok(None);
    };
    let invalid = || {
        err(
            Code::Unauthorized,
            "the join token is not valid for this broker",
        )
    };
    let (id, _) = rest.split_once('_').ok_or_else(invalid)?;
    let j = s.store.join_token(id)?.ok_or_else(invalid)?;
    let hash = crate::boot::token_hash(token.unwrap_or_default());
    if !mandate_core::secret::ct_eq(&j.hash, &hash) {
        return Err(invalid());
    }
    // Revoked by id, with what it belongs to, or by the kill switch (which
    // refuses every credential issued until then).
    if let Some(k) = s.reg().refused(&j.revocation_keys(), j.created_ms / 1000) {
        return Err(err(
            Code::Unauthorized,
            format!(
                "this join token has been revoked ({}); ask an admin for a new one",
                mandate_core::revocation::kind(&k)
            ),
        ));
    }
    if j.used_ms.is_some() {
        return Err(err(
            Code::Unauthorized,
            "this join token was already used; a join token starts one run, ask an admin for a new one",
        ));
    }
    if j.expires_at <= s.now_secs() {
        return Err(err(
            Code::Unauthorized,
            "this join token has expired; ask an admin for a new one",
        ));
    }
    Ok(Some(j))
}

/// `POST /v1/runs`: starts a run and returns its mandate. Takes the admin
/// credential or a join token for exactly this agent (and principal, grant).
/// Every refusal is audited (`run.start`, decision `deny`): those of a
/// caller who was not authenticated through the per-address throttle.
pub async fn start_run(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let join = run_starter(&s, &headers)
        .map_err(|e| e.unauthenticated(mandate_core::audit::EventType::RunStart))?;
    let req = body(raw, s.config.max_body).and_then(|b| json_body::<NewRun>(&b));
    let asked = req
        .as_ref()
        .map(|r| (Some(short(&r.tenant)), Some(short(&r.agent))))
        .unwrap_or_default();
    let outcome = match req {
        Ok(req) => runs::start_run(&s, &origin(addr, &headers), req, join.as_ref())
            .await
            .map(|v| (StatusCode::CREATED, Json(v))),
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        let mut ev = Ctx::new(&s, &headers, addr)
            .event(mandate_core::audit::EventType::RunStart, asked.0.as_deref());
        ev.agent = asked.1;
        ev.decision = mandate_core::audit::Decision::Deny;
        ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
        if let Some(j) = &join {
            ev.actor = Some(format!("join token {}", j.id));
        }
        s.record(vec![ev]).await?;
    }
    outcome
}

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    tenant: Option<String>,
    agent: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/runs`
pub async fn list_runs(
    State(s): State<S>,
    _: Admin,
    QueryParams(q): QueryParams<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    let runs = runs::list(
        &s,
        q.tenant.as_deref(),
        q.agent.as_deref(),
        q.limit.unwrap_or(100).min(1000),
    )?;
    let shown: Vec<Value> = runs
        .into_iter()
        .map(|(r, status)| {
            let mut v = json!(r);
            v["status"] = json!(status.as_str());
            if let mandate_core::model::RunStatus::Revoked(why) = &status {
                v["revoked_by"] = json!(why);
            }
            v
        })
        .collect();
    Ok(Json(json!(shown)))
}

/// `POST /v1/runs/{id}/end`: ends a run; its mandate and credentials are refused from now on.
pub async fn end_run(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    runs::end_run(&s, &origin(addr, &headers), &id).await?;
    Ok(Json(json!({"run": id, "ended": true})))
}

/// `POST /v1/runs/delegate`: a run starts a child run for a sub-agent with
/// its own key. Authenticated by the parent's mandate and a DPoP proof by the
/// parent's key (with the broker's nonce when nonces are required, RFC 9449
/// §8; every answer carries the next one in `DPoP-Nonce`). The child gets at
/// most the parent's capabilities (∩ the sub-agent's envelope ∩ what is
/// asked), expires no later, inherits tenant, principal and grant, and names
/// its ancestors, so revoking any of them revokes it. Every refusal is
/// audited (`run.delegate`, decision `deny`): once the parent's key is
/// proven, as the parent run's; before, through the per-address throttle.
pub async fn delegate(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut resp = match delegating_parent(&s, addr, &headers, raw).await {
        Err(e) => e
            .unauthenticated(mandate_core::audit::EventType::RunDelegate)
            .into_response(),
        Ok((parent, req, now, spent)) => {
            match runs::delegate(&s, &origin(addr, &headers), (&parent, spent), req, now).await {
                Ok(done) => (StatusCode::CREATED, Json(done)).into_response(),
                Err(e) => {
                    let mut ev = Ctx::new(&s, &headers, addr).event(
                        mandate_core::audit::EventType::RunDelegate,
                        Some(&parent.tenant),
                    );
                    ev.agent = Some(parent.agent.clone());
                    ev.run = Some(parent.run.clone());
                    ev.principal = parent.principal.clone();
                    ev.actor = Some(parent.run_id.clone());
                    ev.decision = mandate_core::audit::Decision::Deny;
                    ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
                    match s.record(vec![ev]).await {
                        Ok(_) => e.into_response(),
                        Err(we) => we.into_response(),
                    }
                }
            }
        }
    };
    s.add_dpop_nonce(&mut resp);
    resp
}

/// The parent at `POST /v1/runs/delegate`, once its mandate verifies and a
/// fresh proof by its key is presented; with the request and the time.
/// Refusals here are not yet any run's (they are audited per address).
async fn delegating_parent(
    s: &S,
    addr: SocketAddr,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(Arc<MandateClaims>, NewChild, u64, mandate_core::dpop::Spent), ApiError> {
    let req: NewChild = json_body(&body(raw, s.config.max_body)?)?;
    let now = s.now_secs();
    let parent = crate::gate::verify_mandate(s, &req.mandate, now, addr.ip()).await?;
    let spent = prove_run_key(
        s,
        headers,
        "/v1/runs/delegate",
        &parent,
        now,
        "parent run's",
    )?;
    Ok((parent, req, now, spent))
}

/// Checks the `DPoP` header of a request to `path` on this broker: a fresh
/// proof (RFC 9449 §4.3, with the broker's nonce when nonces are required,
/// §8) by the key `claims` are bound to, used once. `whose` names the key
/// in the refusal ("parent run's", "run's").
pub fn prove_run_key(
    s: &S,
    headers: &HeaderMap,
    path: &str,
    claims: &MandateClaims,
    now: u64,
    whose: &str,
) -> Result<mandate_core::dpop::Spent, ApiError> {
    let proof = headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            err(
                Code::InvalidDpopProof,
                format!("a DPoP proof signed by the {whose} key is required in the `DPoP` header"),
            )
        })?;
    let url = format!("{}{path}", s.config.issuer.trim_end_matches('/'));
    let verified = mandate_core::dpop::verify_proof(
        proof,
        &mandate_core::dpop::ProofExpectations {
            method: "POST",
            uri: &url,
            now,
            max_age: s.config.dpop_max_age,
            max_skew: s.config.dpop_max_skew,
            jkt: Some(&claims.cnf_jkt),
            access_token: None,
            known_key: None,
            nonces: s.required_nonces(),
        },
    )
    .map_err(|e| match e {
        mandate_core::Error::DpopNonce(m) => err(Code::UseDpopNonce, m),
        other => err(Code::InvalidDpopProof, other.to_string()),
    })?;
    // Only a proof that passed every other check is remembered.
    s.first_use_of_proof(&verified, now)
}
