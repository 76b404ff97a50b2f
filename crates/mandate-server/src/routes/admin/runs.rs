//! Runs: start one (minting its mandate), list them, end one.

use std::sync::Arc;

use super::*;
use crate::services::runs::{self, JOIN_PREFIX};

// ---------- runs ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    tenant: String,
    agent: String,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    grant: Option<String>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    jwk: Value,
    /// Tools the run will use (for `mandate exec`): answered with what the
    /// run may do there and the environment variables they set up.
    #[serde(default)]
    tools: Vec<String>,
}

/// Mints the mandate of `claims` and makes the run record (its parent is
/// the first ancestor) and the audit event that records it.
fn issue(
    s: &S,
    claims: &MandateClaims,
    ctx: Ctx,
    event_type: mandate_core::audit::EventType,
) -> Result<(String, Run, EventBody), ApiError> {
    let token = mandate::mint(&s.root, claims, &mut OsRng)
        .map_err(|e| err(Code::ServerError, e.to_string()))?;
    let run = Run {
        id: claims.run.clone(),
        tenant: claims.tenant.clone(),
        agent: claims.agent.clone(),
        principal: claims.principal.clone(),
        grant: claims.grant.clone(),
        task: claims.task.clone(),
        capabilities: claims.capabilities.to_strings(),
        jkt: claims.cnf_jkt.clone(),
        started_ms: s.now_ms(),
        expires_at: claims.expires_at,
        ended_ms: None,
        parent: claims.ancestors.first().map(|(r, _)| r.clone()),
    };
    let mut ev = ctx.event(event_type, Some(&claims.tenant));
    ev.agent = Some(claims.agent.clone());
    ev.run = Some(claims.run.clone());
    ev.principal = claims.principal.clone();
    ev.task = Some(claims.task.clone());
    ev.decision = mandate_core::audit::Decision::Allow;
    ev.credential_exp = Some(claims.expires_at);
    Ok((token, run, ev))
}

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
    let mut keys = vec![
        format!("cred:{}", j.id),
        format!("tenant:{}", j.tenant),
        format!("agent:{}/{}", j.tenant, j.agent),
    ];
    keys.extend(
        j.principal
            .iter()
            .map(|p| format!("principal:{}/{p}", j.tenant)),
    );
    keys.extend(j.grant.iter().map(|g| format!("grant:{g}")));
    if let Some(k) = s.reg().refused(&keys, j.created_ms / 1000) {
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
        Ok(req) => start_run_as(&s, addr, &headers, req, join.as_ref()).await,
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

/// A join token starts a run of exactly its agent (and principal, grant).
fn join_allows(j: &JoinToken, req: &NewRun) -> Result<(), ApiError> {
    if j.tenant == req.tenant
        && j.agent == req.agent
        && j.principal == req.principal
        && j.grant == req.grant
    {
        return Ok(());
    }
    Err(err(
        Code::Forbidden,
        format!(
            "this join token starts a run of agent `{}` in tenant `{}`{} only",
            j.agent,
            j.tenant,
            match (&j.principal, &j.grant) {
                (Some(p), Some(g)) => format!(" for `{p}` under grant `{g}`"),
                _ => " on no one's behalf".into(),
            }
        ),
    ))
}

/// The run's agent and grant, neither revoked, the grant live and given by
/// the principal to this agent.
fn run_subject(s: &S, req: &NewRun, now: u64) -> Result<(Agent, Option<Grant>), ApiError> {
    let reg = s.reg();
    let agent = reg
        .agents
        .get(&(req.tenant.clone(), req.agent.clone()))
        .cloned()
        .ok_or_else(|| {
            err(
                Code::NotFound,
                format!(
                    "agent `{}` not found in tenant `{}`",
                    short(&req.agent),
                    req.tenant
                ),
            )
        })?;
    let grant = match (&req.principal, &req.grant) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(err(
                Code::InvalidRequest,
                "to act on someone's behalf, give both `principal` and `grant`",
            ));
        }
        (Some(p), Some(g)) => {
            let grant = reg
                .grants
                .get(g)
                .filter(|x| x.tenant == req.tenant)
                .cloned()
                .ok_or_else(|| {
                    err(
                        Code::NotFound,
                        format!("grant `{}` not found in tenant `{}`", short(g), req.tenant),
                    )
                })?;
            if &grant.principal != p || grant.agent != agent.name {
                return Err(err(
                    Code::Forbidden,
                    format!(
                        "grant `{g}` was given by `{}` to agent `{}`, not by `{}` to `{}`",
                        grant.principal,
                        grant.agent,
                        short(p),
                        agent.name
                    ),
                ));
            }
            if grant.expires_at <= now {
                return Err(err(
                    Code::Forbidden,
                    format!("grant `{g}` expired; ask `{p}` for a new one"),
                ));
            }
            Some(grant)
        }
    };
    let mut keys = vec![
        format!("tenant:{}", req.tenant),
        format!("agent:{}/{}", req.tenant, agent.name),
    ];
    if let Some(g) = &grant {
        keys.push(format!("principal:{}/{}", req.tenant, g.principal));
        keys.push(format!("grant:{}", g.id));
    }
    if let Some(k) = reg.first_revoked(&keys) {
        return Err(err(
            Code::Forbidden,
            format!("cannot start a run: `{k}` has been revoked"),
        ));
    }
    Ok((agent, grant))
}

/// What the run may do: the agent's envelope, within the grant, narrowed
/// by the request.
fn run_capabilities(
    agent: &Agent,
    grant: Option<&Grant>,
    narrow: Option<&[String]>,
) -> Result<CapabilitySet, ApiError> {
    let envelope = CapabilitySet::parse(&agent.envelope).map_err(bad)?;
    let mut caps = match grant {
        Some(g) => CapabilitySet::parse(&g.capabilities)
            .map_err(bad)?
            .intersect(&envelope),
        None => envelope,
    };
    if let Some(narrow) = narrow {
        caps = CapabilitySet::parse(narrow).map_err(bad)?.intersect(&caps);
    }
    if caps.is_empty() {
        return Err(err(
            Code::Forbidden,
            "this run would hold no capabilities: the grant and the agent's envelope do not overlap",
        ));
    }
    Ok(caps)
}

/// The tools the run names, each with the actions it may use and how its
/// provider describes it (for the exec socket).
fn run_tools(s: &S, req: &NewRun, caps: &CapabilitySet) -> Result<Vec<Value>, ApiError> {
    if req.tools.len() > 32 {
        return Err(err(Code::InvalidRequest, "name at most 32 `tools`"));
    }
    let mut tools = Vec::new();
    {
        let reg = s.reg();
        for name in &req.tools {
            let t = reg
                .tools
                .get(&(req.tenant.clone(), name.clone()))
                .ok_or_else(|| {
                    err(
                        Code::NotFound,
                        format!(
                            "tool `{}` not found in tenant `{}`",
                            short(name),
                            req.tenant
                        ),
                    )
                })?;
            let actions: Vec<&String> = t
                .actions
                .iter()
                .filter(|a| caps.allows(&t.name, a))
                .collect();
            if actions.is_empty() {
                return Err(err(
                    Code::Forbidden,
                    format!(
                        "this run would hold no action of tool `{name}`; its capabilities are: {}",
                        caps.to_strings().join(", ")
                    ),
                ));
            }
            tools.push(json!({
                "name": t.name, "provider": t.provider, "audience": t.audience, "actions": actions,
                "env": t.env,
            }));
            if let (Some(o), Some(d)) = (
                tools.last_mut().and_then(|v| v.as_object_mut()),
                crate::providers::of(t.provider).describe(s, t).as_object(),
            ) {
                o.extend(d.clone());
            }
        }
    }
    Ok(tools)
}

/// [`start_run`] once the caller is authenticated.
async fn start_run_as(
    s: &S,
    addr: SocketAddr,
    headers: &HeaderMap,
    req: NewRun,
    join: Option<&JoinToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Some(j) = join {
        join_allows(j, &req)?;
    }
    need_tenant(s, &req.tenant)?;
    let key = PublicJwk::from_json(&req.jwk)
        .map_err(|e| err(Code::InvalidRequest, format!("`jwk`: {e}")))?;
    let now = s.now_secs();
    let (agent, grant) = run_subject(s, &req, now)?;
    let caps = run_capabilities(&agent, grant.as_ref(), req.capabilities.as_deref())?;
    let tools = run_tools(s, &req, &caps)?;

    let max = s.config.mandate_max_ttl;
    let ttl = req.ttl_secs.unwrap_or(s.config.mandate_ttl);
    if ttl == 0 || ttl > max {
        return Err(err(
            Code::InvalidRequest,
            format!("`ttl_secs` must be 1 to {max}"),
        ));
    }
    let mut expires_at = now + ttl;
    if let Some(g) = &grant {
        expires_at = expires_at.min(g.expires_at);
    }
    let task = req
        .task
        .or_else(|| grant.as_ref().map(|g| g.task.clone()))
        .unwrap_or_default();
    ids::check_text("task", &task, 1024).map_err(bad)?;
    let run_id = random_id(&mut OsRng, "run_");
    let claims = MandateClaims {
        issuer: s.config.issuer.clone(),
        tenant: req.tenant.clone(),
        agent: agent.name.clone(),
        agent_id: agent.spiffe_id.clone(),
        run: run_id.clone(),
        run_id: run_spiffe_id(&s.config.trust_domain, &req.tenant, &agent.name, &run_id),
        principal: grant.as_ref().map(|g| g.principal.clone()),
        grant: grant.as_ref().map(|g| g.id.clone()),
        task: task.clone(),
        capabilities: caps.clone(),
        cnf_jkt: key.thumbprint(),
        run_jkt: key.thumbprint(),
        issued_at: now,
        expires_at,
        ancestors: vec![],
        hops: vec![],
        resource_prefix: None,
    };
    let (token, run, mut ev) = issue(
        s,
        &claims,
        Ctx::new(s, headers, addr),
        mandate_core::audit::EventType::RunStart,
    )?;
    ev.details = json!({"capabilities": run.capabilities, "grant": claims.grant, "jkt": claims.cnf_jkt, "run_id": claims.run_id});
    if let Some(j) = &join {
        // Consumed first and once: of two concurrent uses, one wins.
        ev.actor = Some(format!("join token {}", j.id));
        let mut used = ev.clone();
        used.event_type = mandate_core::audit::EventType::JoinTokenUse;
        s.commit(Entry {
            mutation: Some(Mutation::UseJoinToken {
                id: j.id.clone(),
                used_ms: s.now_ms(),
            }),
            events: vec![used],
        })
        .await
        .map_err(if_not_found(
            Code::Unauthorized,
            "this join token was already used; a join token starts one run, ask an admin for a new one".into(),
        ))?;
    }
    s.commit(Entry {
        mutation: Some(Mutation::StartRun(run.clone())),
        events: vec![ev],
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "run": run_id,
            "run_id": claims.run_id,
            "agent_id": claims.agent_id,
            "mandate": token,
            "subject_token_type": crate::routes::oauth::TOKEN_TYPE_MANDATE,
            "expires_at": expires_at,
            "capabilities": run.capabilities,
            "token_endpoint": s.token_endpoint,
            "tools": tools,
        })),
    ))
}

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
pub struct RunQuery {
    tenant: Option<String>,
    agent: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/runs`
pub async fn list_runs(
    State(s): State<S>,
    _: Admin,
    Query(q): Query<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    let runs = s.store.list_runs(
        q.tenant.as_deref(),
        q.agent.as_deref(),
        q.limit.unwrap_or(100).min(1000),
    )?;
    Ok(Json(json!(runs)))
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

/// Request body of `POST /v1/runs/delegate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChild {
    mandate: String,
    agent: String,
    jwk: Value,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    task: Option<String>,
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
        Ok((parent, req, now)) => {
            match delegate_as(&s, &parent, req, now, Ctx::new(&s, &headers, addr)).await {
                Ok(done) => done.into_response(),
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
) -> Result<(Arc<MandateClaims>, NewChild, u64), ApiError> {
    let req: NewChild = json_body(&body(raw, s.config.max_body)?)?;
    let now = s.now_secs();
    let parent = crate::gate::verify_mandate(s, &req.mandate, now, addr.ip()).await?;
    prove_run_key(
        s,
        headers,
        "/v1/runs/delegate",
        &parent,
        now,
        "parent run's",
    )?;
    Ok((parent, req, now))
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
) -> Result<(), ApiError> {
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

/// The broker's absolute ceilings on delegation: the parent is live and
/// not attenuated, under the depth and fan-out limits. (depth, children).
fn delegation_limits(s: &S, parent: &MandateClaims) -> Result<(usize, u64), ApiError> {
    if let Some(k) = s.reg().refused(&parent.revocation_keys(), parent.issued_at) {
        return Err(err(
            Code::InvalidGrant,
            format!(
                "the parent run has been revoked ({}); it cannot delegate",
                k.split(':').next().unwrap_or("run")
            ),
        ));
    }
    if !parent.hops.is_empty() {
        return Err(err(
            Code::InvalidRequest,
            "an attenuated mandate cannot start child runs (its use limits and hops would not carry over); delegate from the run's own mandate, or hand this one on offline with `mandate token attenuate`",
        ));
    }
    let depth = parent.ancestors.len() + 1;
    if depth > s.config.max_delegation_depth {
        return Err(err(
            Code::Forbidden,
            format!(
                "delegation depth {depth} is over this broker's limit of {}",
                s.config.max_delegation_depth
            ),
        ));
    }
    let children = s.store.count_children(&parent.run)?;
    if children >= s.config.max_children {
        return Err(err(
            Code::Forbidden,
            format!(
                "run `{}` has already delegated {children} runs, this broker's limit",
                parent.run
            ),
        ));
    }
    Ok((depth, children))
}

/// The tenant's policy on this delegation (Cedar action `delegate`).
fn delegation_policy(
    s: &S,
    parent: &MandateClaims,
    agent: &Agent,
    task: &str,
    (depth, children): (usize, u64),
    caps: &CapabilitySet,
    now: u64,
) -> Result<mandate_core::policy::Verdict, ApiError> {
    let (policies, parent_agent) = {
        let reg = s.reg();
        (
            reg.compiled
                .get(&parent.tenant)
                .cloned()
                .unwrap_or_default(),
            reg.agents
                .get(&(parent.tenant.clone(), parent.agent.clone()))
                .cloned(),
        )
    };
    let parent_agent = parent_agent.ok_or_else(|| {
        err(
            Code::Forbidden,
            format!("agent `{}` is no longer registered", parent.agent),
        )
    })?;
    let cap_strings = caps.to_strings();
    let verdict = s
        .engine
        .decide_delegation(
            &policies,
            &mandate_core::policy::DelegationFacts {
                tenant: &parent.tenant,
                now,
                parent_run: &parent.run,
                parent_agent: &parent.agent,
                parent_agent_owner: &parent_agent.owner,
                parent_agent_purpose: &parent_agent.purpose,
                parent_task: &parent.task,
                child_agent: &agent.name,
                child_agent_owner: &agent.owner,
                child_agent_purpose: &agent.purpose,
                task,
                principal: parent.principal.as_deref(),
                depth,
                children,
                capabilities: &cap_strings,
            },
        )
        .map_err(|e| err(Code::ServerError, e.to_string()))?;
    if !verdict.allowed {
        return Err(err(
            Code::AccessDenied,
            verdict
                .reason
                .unwrap_or_else(|| "delegation denied by policy".into()),
        ));
    }
    Ok(verdict)
}

/// [`delegate`]'s work once the parent's key is proven: every refusal from
/// here on is the parent run's.
async fn delegate_as(
    s: &S,
    parent: &Arc<MandateClaims>,
    req: NewChild,
    now: u64,
    ctx: Ctx,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (depth, children) = delegation_limits(s, parent)?;
    let agent = s
        .reg()
        .agents
        .get(&(parent.tenant.clone(), req.agent.clone()))
        .cloned()
        .ok_or_else(|| {
            err(
                Code::NotFound,
                format!(
                    "agent `{}` not found in tenant `{}`",
                    short(&req.agent),
                    parent.tenant
                ),
            )
        })?;
    let key = PublicJwk::from_json(&req.jwk)
        .map_err(|e| err(Code::InvalidRequest, format!("`jwk`: {e}")))?;
    if key.thumbprint() == parent.cnf_jkt {
        return Err(err(
            Code::InvalidRequest,
            "a sub-agent's run needs its own key, not its parent's",
        ));
    }
    let mut caps = parent
        .capabilities
        .intersect(&CapabilitySet::parse(&agent.envelope).map_err(bad)?);
    if let Some(narrow) = &req.capabilities {
        caps = CapabilitySet::parse(narrow).map_err(bad)?.intersect(&caps);
    }
    if caps.is_empty() {
        return Err(err(
            Code::Forbidden,
            format!(
                "the child run would hold no capabilities: the parent holds {}",
                parent.capabilities.to_strings().join(", ")
            ),
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(s.config.mandate_ttl);
    if ttl == 0 || ttl > s.config.mandate_max_ttl {
        return Err(err(
            Code::InvalidRequest,
            format!("`ttl_secs` must be 1 to {}", s.config.mandate_max_ttl),
        ));
    }
    let expires_at = parent.expires_at.min(now + ttl);
    let task = req.task.unwrap_or_else(|| parent.task.clone());
    ids::check_text("task", &task, 1024).map_err(bad)?;
    // The tenant's policy bounds depth, fan-out and what a child may hold
    // (Cedar action `delegate`); the broker's ceilings above are absolute.
    let verdict = delegation_policy(s, parent, &agent, &task, (depth, children), &caps, now)?;
    let run_id = random_id(&mut OsRng, "run_");
    let mut ancestors = vec![(parent.run.clone(), parent.run_id.clone())];
    ancestors.extend(parent.ancestors.iter().cloned());
    let claims = MandateClaims {
        issuer: s.config.issuer.clone(),
        tenant: parent.tenant.clone(),
        agent: agent.name.clone(),
        agent_id: agent.spiffe_id.clone(),
        run: run_id.clone(),
        run_id: run_spiffe_id(&s.config.trust_domain, &parent.tenant, &agent.name, &run_id),
        principal: parent.principal.clone(),
        grant: parent.grant.clone(),
        task: task.clone(),
        capabilities: caps.clone(),
        cnf_jkt: key.thumbprint(),
        run_jkt: key.thumbprint(),
        issued_at: now,
        expires_at,
        ancestors,
        hops: vec![],
        resource_prefix: None,
    };
    let (token, run, mut ev) = issue(s, &claims, ctx, mandate_core::audit::EventType::RunDelegate)?;
    let chain: Vec<&str> = claims.ancestors.iter().map(|(r, _)| r.as_str()).collect();
    ev.actor = Some(parent.run_id.clone());
    ev.details = json!({"parent": parent.run, "ancestors": chain, "depth": depth,
        "capabilities": run.capabilities, "parent_capabilities": parent.capabilities.to_strings(),
        "policies": verdict.policies});
    s.commit(Entry {
        mutation: Some(Mutation::StartRun(run.clone())),
        events: vec![ev],
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "run": run_id, "run_id": claims.run_id, "agent_id": claims.agent_id, "mandate": token,
            "subject_token_type": crate::routes::oauth::TOKEN_TYPE_MANDATE,
            "expires_at": expires_at, "capabilities": run.capabilities,
            "parent": parent.run, "ancestors": chain, "depth": depth,
            "token_endpoint": s.token_endpoint,
        })),
    ))
}
