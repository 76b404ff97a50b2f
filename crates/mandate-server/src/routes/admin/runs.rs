//! Runs: start one (minting its mandate), list them, end one.

use super::*;

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

/// `POST /v1/runs`: starts a run and returns its mandate.
pub async fn start_run(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&s, &headers)?;
    let req: NewRun = json_body(&body(raw, s.config.max_body)?)?;
    need_tenant(&s, &req.tenant)?;
    let key = PublicJwk::from_json(&req.jwk)
        .map_err(|e| err(Code::InvalidRequest, format!("`jwk`: {e}")))?;
    let now = crate::now_secs();
    let (agent, grant) = {
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
        (agent, grant)
    };
    let envelope = CapabilitySet::parse(&agent.envelope).map_err(bad)?;
    let mut caps = match &grant {
        Some(g) => CapabilitySet::parse(&g.capabilities)
            .map_err(bad)?
            .intersect(&envelope),
        None => envelope,
    };
    if let Some(narrow) = &req.capabilities {
        caps = CapabilitySet::parse(narrow).map_err(bad)?.intersect(&caps);
    }
    if caps.is_empty() {
        return Err(err(
            Code::Forbidden,
            "this run would hold no capabilities: the grant and the agent's envelope do not overlap",
        ));
    }
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
                "proxy_url": (t.provider == "proxy").then(|| super::proxy_url(&s, &t.name)),
            }));
        }
    }
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
        issued_at: now,
        expires_at,
    };
    let token = mandate::mint(&s.root, &claims, &mut OsRng)
        .map_err(|e| err(Code::ServerError, e.to_string()))?;
    let run = Run {
        id: run_id.clone(),
        tenant: req.tenant.clone(),
        agent: agent.name.clone(),
        principal: claims.principal.clone(),
        grant: claims.grant.clone(),
        task: task.clone(),
        capabilities: caps.to_strings(),
        jkt: claims.cnf_jkt.clone(),
        started_ms: crate::now_ms(),
        expires_at,
        ended_ms: None,
    };
    let mut ev = Ctx::new(&headers, addr).event("run.start", Some(&req.tenant));
    ev.agent = Some(agent.name.clone());
    ev.run = Some(run_id.clone());
    ev.principal = claims.principal.clone();
    ev.task = Some(task);
    ev.decision = "allow".into();
    ev.credential_exp = Some(expires_at);
    ev.details = json!({"capabilities": run.capabilities, "grant": claims.grant, "jkt": claims.cnf_jkt, "run_id": claims.run_id});
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
    headers: HeaderMap,
    Query(q): Query<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
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
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let run = s
        .store
        .get_run(&id)?
        .ok_or_else(|| err(Code::NotFound, format!("run `{}` not found", short(&id))))?;
    if run.ended_ms.is_some() {
        return Err(err(Code::Conflict, format!("run `{id}` has already ended")));
    }
    let mut ev = Ctx::new(&headers, addr).event("run.end", Some(&run.tenant));
    ev.agent = Some(run.agent.clone());
    ev.run = Some(id.clone());
    ev.principal = run.principal.clone();
    let revocation = Revocation {
        seq: 0,
        key: format!("run:{id}"),
        reason: "run ended".into(),
        time_ms: crate::now_ms(),
        until: run.expires_at,
    };
    s.commit(Entry {
        mutation: Some(Mutation::EndRun {
            id: id.clone(),
            ended_ms: crate::now_ms(),
            revocation,
        }),
        events: vec![ev],
    })
    .await?;
    Ok(Json(json!({"run": id, "ended": true})))
}
