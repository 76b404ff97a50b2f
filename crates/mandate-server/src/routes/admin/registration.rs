//! Registrations: tenants, principals, agents, tools, grants and Cedar policies.

use super::*;
use crate::services::registration;

// ---------- tenants ----------

/// `POST /v1/tenants`
pub async fn create_tenant(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<registration::NewTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let t = registration::create_tenant(&s, &origin(addr, &headers), req).await?;
    Ok((StatusCode::CREATED, Json(json!(t))))
}

/// `GET /v1/tenants`
pub async fn list_tenants(State(s): State<S>, _: Admin) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.reg().tenants.values().collect::<Vec<_>>())))
}

// ---------- principals ----------

/// `POST /v1/tenants/{tenant}/principals`
pub async fn create_principal(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let p = registration::create_principal(&s, &origin(addr, &headers), &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(json!(p))))
}

/// `GET /v1/tenants/{tenant}/principals`
pub async fn list_principals(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.principals
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}

// ---------- agents ----------

/// `POST /v1/tenants/{tenant}/agents`
pub async fn create_agent(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let a = registration::create_agent(&s, &origin(addr, &headers), &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(json!(a))))
}

/// `GET /v1/tenants/{tenant}/agents`
pub async fn list_agents(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.agents
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}

// ---------- tools ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTool {
    name: String,
    #[serde(default)]
    audience: Option<String>,
    actions: Vec<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    risk: Option<String>,
    #[serde(default)]
    max_ttl_secs: Option<u64>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    proxy: Option<ProxySpec>,
    #[serde(default)]
    postgres: Option<PostgresSpec>,
    #[serde(default)]
    env: Vec<EnvSpec>,
}

/// Longest credential lifetime a tool may ask for.
const TOOL_MAX_TTL: u64 = mandate_core::credential::MAX_CREDENTIAL_LIFETIME;

/// A tool's audience is an absolute URI, short, without spaces.
fn check_audience(audience: &str) -> Result<(), ApiError> {
    let ok = (audience.starts_with("https://")
        || audience.starts_with("http://")
        || audience.starts_with("urn:"))
        && audience.len() <= 512
        && !audience
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(err(
            Code::InvalidRequest,
            "`audience` must be an absolute URI (https://..., or urn:...) of at most 512 characters",
        ));
    }
    Ok(())
}

/// A registration's actions, labels, risk and lifetime are well formed:
/// (risk, lifetime).
fn tool_shape(req: &NewTool) -> Result<(String, u64), ApiError> {
    if req.actions.is_empty() || req.actions.len() > 64 {
        return Err(err(Code::InvalidRequest, "a tool needs 1 to 64 `actions`"));
    }
    for a in &req.actions {
        check_action(a).map_err(bad)?;
        if a == "*" {
            return Err(err(
                Code::InvalidRequest,
                "tool actions must be named; `*` is only for capabilities",
            ));
        }
    }
    for l in &req.labels {
        ids::check_slug("label", l).map_err(bad)?;
    }
    let risk = req.risk.clone().unwrap_or_else(|| "low".into());
    if !["low", "medium", "high", "critical"].contains(&risk.as_str()) {
        return Err(err(
            Code::InvalidRequest,
            "`risk` must be `low`, `medium`, `high` or `critical`",
        ));
    }
    let ttl = req.max_ttl_secs.unwrap_or(300);
    if ttl == 0 || ttl > TOOL_MAX_TTL {
        return Err(err(
            Code::InvalidRequest,
            format!("`max_ttl_secs` must be 1 to {TOOL_MAX_TTL}"),
        ));
    }
    Ok((risk, ttl))
}

/// No tool of the tenant has this name or audience, and a `jwt` tool's
/// audience names it alone across the broker.
fn tool_is_new(
    s: &S,
    tenant: &str,
    name: &str,
    audience: &str,
    provider: &dyn crate::providers::Provider,
) -> Result<(), ApiError> {
    let reg = s.reg();
    if reg
        .tools
        .contains_key(&(tenant.to_owned(), name.to_owned()))
    {
        return Err(err(
            Code::Conflict,
            format!("tool `{}` already exists in tenant `{tenant}`", name),
        ));
    }
    if reg.find_tool(tenant, audience).is_some() {
        return Err(err(
            Code::Conflict,
            format!("another tool of tenant `{tenant}` already has audience `{audience}`"),
        ));
    }
    // Verifiers check `iss` and `aud`: a `jwt` tool's audience must name
    // it alone across the broker, or another tenant's credentials would
    // verify at it. (Proxy tools of several tenants may share a name:
    // the proxy looks tools up in the credential's tenant.)
    if reg.tools.values().any(|t| {
        t.audience == audience
            && (provider.audience_unique() || crate::providers::of(t.provider).audience_unique())
    }) {
        return Err(err(
            Code::Conflict,
            format!(
                "audience `{audience}` is already used by a tool of another tenant; a tool's audience must be unique across the broker (verifiers check `iss` and `aud`)"
            ),
        ));
    }
    Ok(())
}

/// `POST /v1/tenants/{tenant}/tools`
pub async fn create_tool(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    need_tenant(&s, &tenant)?;
    let req: NewTool = json_body(&body(raw, s.config.max_body)?)?;
    ids::check_slug("tool", &req.name).map_err(bad)?;
    let name = req.provider.as_deref().unwrap_or("jwt");
    let kind = ProviderKind::parse(name).ok_or_else(|| {
        err(
            Code::InvalidRequest,
            format!(
                "provider `{}` is not supported; use one of: {}",
                short(name),
                ProviderKind::names()
            ),
        )
    })?;
    let provider = crate::providers::of(kind);
    // A proxy tool's credentials are only good at the broker's proxy for it,
    // so that is its audience; a database tool is named by a URN.
    let audience = provider
        .audience(&s, &tenant, &req.name, req.audience.as_deref())
        .map_err(|e| err(Code::InvalidRequest, e))?;
    check_audience(&audience)?;
    let (risk, ttl) = tool_shape(&req)?;
    provider
        .validate(&crate::providers::Settings {
            actions: &req.actions,
            proxy: req.proxy.as_ref(),
            postgres: req.postgres.as_ref(),
        })
        .map_err(|e| err(Code::InvalidRequest, e))?;
    check_env(&req.env).map_err(bad)?;
    let alg = Alg::parse("tool credentials", req.alg.as_deref().unwrap_or("EdDSA")).map_err(bad)?;
    tool_is_new(&s, &tenant, &req.name, &audience, provider)?;
    let mut actions = req.actions;
    actions.dedup();
    let t = Tool {
        tenant: tenant.clone(),
        name: req.name,
        audience,
        actions,
        labels: req.labels,
        risk,
        max_ttl_secs: ttl,
        provider: kind,
        alg,
        created_ms: s.now_ms(),
        proxy: req.proxy,
        postgres: req.postgres,
        env: req.env,
    };
    let mut ev = Ctx::new(&s, &headers, addr)
        .event(mandate_core::audit::EventType::ToolCreate, Some(&tenant));
    ev.tool = Some(t.name.clone());
    ev.details = json!({"audience": t.audience, "actions": t.actions, "labels": t.labels,
        "risk": t.risk, "provider": t.provider, "proxy": t.proxy, "postgres": t.postgres, "env": t.env});
    created(&s, Mutation::CreateTool(t.clone()), ev, &t).await
}

/// Longest tool secret accepted.
const MAX_SECRET: usize = 8192;

/// `PUT /v1/tenants/{tenant}/tools/{name}/secret`: sets the upstream key
/// (proxy) or admin connection string (postgres). The body is the secret;
/// it is sealed under the master key and never returned by any endpoint.
pub async fn set_tool_secret(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    need_tenant(&s, &tenant)?;
    let raw = body(raw, s.config.max_body)?;
    let tool = s
        .reg()
        .tools
        .get(&(tenant.clone(), name.clone()))
        .cloned()
        .ok_or_else(|| {
            err(
                Code::NotFound,
                format!("tool `{}` not found in tenant `{tenant}`", short(&name)),
            )
        })?;
    let provider = crate::providers::of(tool.provider);
    if !provider.holds_secret() {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "tool `{name}` uses the `{}` provider, which holds no upstream secret",
                tool.provider
            ),
        ));
    }
    // Trailing newlines come from files and `echo`; they are never part of a key.
    let text = std::str::from_utf8(&raw)
        .map_err(|_| err(Code::InvalidRequest, "the secret must be UTF-8 text"))?
        .trim_end_matches(['\n', '\r']);
    if text.is_empty() || text.len() > MAX_SECRET {
        return Err(err(
            Code::InvalidRequest,
            format!("the secret must be 1 to {MAX_SECRET} bytes"),
        ));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(err(
            Code::InvalidRequest,
            "the secret holds control characters (it goes into an HTTP header or a connection string)",
        ));
    }
    provider
        .check_secret(&tool, text)
        .map_err(|e| err(Code::InvalidRequest, e))?;
    let checked = match &tool.postgres {
        Some(spec) => {
            Some(check_pg_mapping(&s, Ctx::new(&s, &headers, addr), &tool, spec, text).await?)
        }
        None => None,
    };
    let secret = mandate_core::secret::Secret::new(text.as_bytes().to_vec());
    let aad = crate::state::tool_secret_aad(&tenant, &name);
    let sealed = s
        .master
        .seal(&mut OsRng, aad.as_bytes(), secret.expose())
        .map_err(|e| err(Code::ServerError, e.to_string()))?;
    let updated_ms = s.now_ms();
    let mut ev = Ctx::new(&s, &headers, addr)
        .event(mandate_core::audit::EventType::ToolSecretSet, Some(&tenant));
    ev.tool = Some(name.clone());
    ev.details = json!({"bytes": secret.expose().len()});
    s.commit(Entry {
        mutation: Some(Mutation::PutToolSecret(ToolSecret {
            tenant: tenant.clone(),
            tool: name.clone(),
            sealed,
            updated_ms,
        })),
        events: vec![ev],
    })
    .await?;
    s.set_tool_secret(&tenant, &name, secret);
    let mut answer =
        json!({"tenant": tenant, "tool": name, "secret_set": true, "updated_ms": updated_ms});
    if let Some(checked) = checked {
        answer["roles_checked"] = json!(checked.is_ok());
        if let Err(why) = checked {
            answer["note"] = json!(format!(
                "the mapped database roles could not be checked now ({why}); every exchange checks them again"
            ));
        }
    }
    Ok(Json(answer))
}

/// Checks, through the admin connection string `dsn` about to be set,
/// that no role the tool maps an action to is missing or reaches a power a
/// credential must never have ([`mandate_core::pgrole`]). A refusal is
/// audited and returned; an unreachable database is no refusal (every
/// exchange checks again) and comes back as `Ok(Err(why))`.
async fn check_pg_mapping(
    s: &S,
    ctx: Ctx,
    tool: &Tool,
    spec: &mandate_core::tooling::PostgresSpec,
    dsn: &str,
) -> Result<Result<(), String>, ApiError> {
    let mut roles: Vec<String> = spec.roles.values().cloned().collect();
    roles.sort();
    roles.dedup();
    match crate::pg::check_tool_roles(dsn, &tool.name, &roles).await {
        Ok(()) => Ok(Ok(())),
        Err(e) if e.kind == crate::pg::PgErrorKind::Refused => {
            let mut ev = ctx.event(
                mandate_core::audit::EventType::ToolSecretSet,
                Some(&tool.tenant),
            );
            ev.tool = Some(tool.name.clone());
            ev.decision = mandate_core::audit::Decision::Deny;
            ev.reason = Some(e.message.clone());
            s.record(vec![ev]).await?;
            Err(err(
                Code::InvalidRequest,
                format!(
                    "tool `{}`: {}; the secret was not set",
                    tool.name, e.message
                ),
            ))
        }
        Err(e) => Ok(Err(e.message)),
    }
}

/// `GET /v1/tenants/{tenant}/tools`
pub async fn list_tools(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.tools
                .values()
                .filter(|x| x.tenant == tenant)
                .map(|t| {
                    let mut v = json!(t);
                    if crate::providers::of(t.provider).holds_secret()
                        && let Some(o) = v.as_object_mut()
                    {
                        o.insert(
                            "secret_set".into(),
                            json!(s.tool_secret(&tenant, &t.name).is_some()),
                        );
                    }
                    v
                })
                .collect::<Vec<_>>()
        )
    })
}

// ---------- grants ----------

/// `POST /v1/tenants/{tenant}/grants`
pub async fn create_grant(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let g = registration::create_grant(&s, &origin(addr, &headers), &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(json!(g))))
}

/// `GET /v1/tenants/{tenant}/grants`
pub async fn list_grants(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.grants
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}

// ---------- policies ----------

/// `PUT /v1/tenants/{tenant}/policies/{name}` with the Cedar text as body.
pub async fn put_policies(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, axum::response::Response> {
    use axum::response::IntoResponse;
    need_tenant(&s, &tenant).map_err(IntoResponse::into_response)?;
    ids::check_slug("policy set", &name).map_err(|e| bad(e).into_response())?;
    let raw = body(raw, s.config.max_body).map_err(IntoResponse::into_response)?;
    let src = std::str::from_utf8(&raw)
        .map_err(|_| err(Code::InvalidRequest, "the policy text is not UTF-8").into_response())?;
    let policies = match s.engine.parse_policies(&name, src) {
        Ok(p) => p,
        Err(problems) => {
            let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
            let list: Vec<Value> = problems
                .iter()
                .map(|p| json!({"line": p.line, "column": p.column, "message": p.message}))
                .collect();
            return Err((
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": "invalid_request",
                    "error_description": format!("policy `{name}` is not valid against the Mandate schema: {first}"),
                    "problems": list,
                })),
            )
                .into_response());
        }
    };
    // A bounded number per tenant: the set being replaced does not count.
    let others: usize = s
        .reg()
        .policy_sets
        .iter()
        .filter(|((t, n), _)| *t == tenant && *n != name)
        .map(|(_, p)| p.policies.len())
        .sum();
    let max = mandate_core::policy_limits::MAX_TENANT_POLICIES;
    if others + policies.len() > max {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "tenant `{tenant}` would hold {} policies; a tenant holds at most {max}: remove or merge some",
                others + policies.len()
            ),
        )
        .into_response());
    }
    let rec = PolicySetRecord {
        tenant: tenant.clone(),
        name: name.clone(),
        policies: policies.into_iter().map(PolicyText::from).collect(),
        created_ms: s.now_ms(),
    };
    let mut ev = Ctx::new(&s, &headers, addr)
        .event(mandate_core::audit::EventType::PolicyPut, Some(&tenant));
    ev.policies = rec.policies.iter().map(|p| p.id.clone()).collect();
    ev.details = json!({"set": name});
    s.commit(Entry {
        mutation: Some(Mutation::PutPolicySet(rec.clone())),
        events: vec![ev],
    })
    .await
    .map_err(IntoResponse::into_response)?;
    Ok(Json(json!(rec)))
}

/// `DELETE /v1/tenants/{tenant}/policies/{name}`
pub async fn delete_policies(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    need_tenant(&s, &tenant)?;
    let mut ev = Ctx::new(&s, &headers, addr)
        .event(mandate_core::audit::EventType::PolicyDelete, Some(&tenant));
    ev.details = json!({"set": name});
    s.commit(Entry {
        mutation: Some(Mutation::DeletePolicySet { tenant, name }),
        events: vec![ev],
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/tenants/{tenant}/policies`
pub async fn list_policies(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.policy_sets
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}
