//! The admin API (`/v1`): tenants, principals, agents, tools, grants,
//! policies, runs, revocations and the audit trail. Every call needs the
//! admin bearer credential; every change is an audit event committed with it.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use rand_core::OsRng;
use serde::Deserialize;
use serde_json::{Value, json};

use mandate_core::audit::EventBody;
use mandate_core::capability::{CapabilitySet, check_action};
use mandate_core::ids::{self, agent_spiffe_id, random_id, run_spiffe_id};
use mandate_core::jose::{Alg, PublicJwk};
use mandate_core::mandate::{self, MandateClaims};
use mandate_store::*;

use super::{S, body, client, correlation_id, json_body, require_admin};
use crate::error::{ApiError, Code, err};

/// Per-request context for audit events.
struct Ctx {
    corr: String,
    addr: Option<String>,
}

impl Ctx {
    fn new(headers: &HeaderMap, addr: SocketAddr) -> Self {
        Ctx {
            corr: correlation_id(headers),
            addr: client(Some(addr)),
        }
    }
    fn event(&self, event_type: &str, tenant: Option<&str>) -> EventBody {
        EventBody {
            time_ms: crate::now_ms(),
            event_type: event_type.into(),
            decision: "ok".into(),
            tenant: tenant.map(str::to_owned),
            actor: Some("admin".into()),
            correlation_id: Some(self.corr.clone()),
            client_addr: self.addr.clone(),
            ..Default::default()
        }
    }
}

fn bad(e: mandate_core::Error) -> ApiError {
    err(Code::InvalidRequest, e.to_string())
}

fn need_tenant(s: &S, tenant: &str) -> Result<(), ApiError> {
    if s.reg().tenants.contains_key(tenant) {
        Ok(())
    } else {
        Err(err(
            Code::NotFound,
            format!(
                "tenant `{}` not found; create it with `mandate tenant create`",
                short(tenant)
            ),
        ))
    }
}

/// Commits a registration with its event and answers 201 with the record.
async fn created<T: serde::Serialize>(
    s: &S,
    m: Mutation,
    ev: EventBody,
    record: &T,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.commit(Entry {
        mutation: Some(m),
        events: vec![ev],
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!(record))))
}

/// Lists what a tenant has, for an admin.
fn of_tenant(
    s: &S,
    headers: &HeaderMap,
    tenant: &str,
    pick: impl FnOnce(&crate::registry::Registry) -> Value,
) -> Result<Json<Value>, ApiError> {
    require_admin(s, headers)?;
    need_tenant(s, tenant)?;
    Ok(Json(pick(&s.reg())))
}

fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

// ---------- tenants ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: String,
    #[serde(default)]
    description: String,
}

/// `POST /v1/tenants`
pub async fn create_tenant(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&s, &headers)?;
    let req: NewTenant = json_body(&body(raw, s.config.max_body)?)?;
    ids::check_slug("tenant", &req.name).map_err(bad)?;
    ids::check_text("description", &req.description, 1024).map_err(bad)?;
    if s.reg().tenants.contains_key(&req.name) {
        return Err(err(
            Code::Conflict,
            format!("tenant `{}` already exists", req.name),
        ));
    }
    let t = Tenant {
        name: req.name.clone(),
        description: req.description,
        created_ms: crate::now_ms(),
    };
    let ev = Ctx::new(&headers, addr).event("tenant.create", Some(&t.name));
    created(&s, Mutation::CreateTenant(t.clone()), ev, &t).await
}

/// `GET /v1/tenants`
pub async fn list_tenants(State(s): State<S>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    Ok(Json(json!(s.reg().tenants.values().collect::<Vec<_>>())))
}

// ---------- principals ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    id: String,
    #[serde(default)]
    display_name: String,
}

/// `POST /v1/tenants/{tenant}/principals`
pub async fn create_principal(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&s, &headers)?;
    need_tenant(&s, &tenant)?;
    let req: NewPrincipal = json_body(&body(raw, s.config.max_body)?)?;
    ids::check_principal(&req.id).map_err(bad)?;
    ids::check_text("display name", &req.display_name, 256).map_err(bad)?;
    if s.reg()
        .principals
        .contains_key(&(tenant.clone(), req.id.clone()))
    {
        return Err(err(
            Code::Conflict,
            format!("principal `{}` already exists in tenant `{tenant}`", req.id),
        ));
    }
    let p = Principal {
        tenant: tenant.clone(),
        id: req.id,
        display_name: req.display_name,
        created_ms: crate::now_ms(),
    };
    let mut ev = Ctx::new(&headers, addr).event("principal.create", Some(&tenant));
    ev.principal = Some(p.id.clone());
    created(&s, Mutation::CreatePrincipal(p.clone()), ev, &p).await
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

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    name: String,
    owner: String,
    #[serde(default)]
    purpose: String,
    envelope: Vec<String>,
}

/// `POST /v1/tenants/{tenant}/agents`
pub async fn create_agent(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&s, &headers)?;
    need_tenant(&s, &tenant)?;
    let req: NewAgent = json_body(&body(raw, s.config.max_body)?)?;
    ids::check_slug("agent", &req.name).map_err(bad)?;
    if req.owner.trim().is_empty() {
        return Err(err(
            Code::InvalidRequest,
            "an agent needs an `owner`: the person or team accountable for it",
        ));
    }
    ids::check_text("owner", &req.owner, 256).map_err(bad)?;
    ids::check_text("purpose", &req.purpose, 1024).map_err(bad)?;
    if req.envelope.len() > 256 {
        return Err(err(
            Code::InvalidRequest,
            "an envelope may hold at most 256 capabilities",
        ));
    }
    let env = CapabilitySet::parse(&req.envelope).map_err(bad)?;
    if s.reg()
        .agents
        .contains_key(&(tenant.clone(), req.name.clone()))
    {
        return Err(err(
            Code::Conflict,
            format!("agent `{}` already exists in tenant `{tenant}`", req.name),
        ));
    }
    let a = Agent {
        spiffe_id: agent_spiffe_id(&s.config.trust_domain, &tenant, &req.name),
        tenant: tenant.clone(),
        name: req.name,
        owner: req.owner,
        purpose: req.purpose,
        envelope: env.to_strings(),
        created_ms: crate::now_ms(),
    };
    let mut ev = Ctx::new(&headers, addr).event("agent.create", Some(&tenant));
    ev.agent = Some(a.name.clone());
    ev.details = json!({"owner": a.owner, "envelope": a.envelope});
    created(&s, Mutation::CreateAgent(a.clone()), ev, &a).await
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
    audience: String,
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
}

/// Longest credential lifetime a tool may ask for.
const TOOL_MAX_TTL: u64 = 3600;

/// `POST /v1/tenants/{tenant}/tools`
pub async fn create_tool(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&s, &headers)?;
    need_tenant(&s, &tenant)?;
    let req: NewTool = json_body(&body(raw, s.config.max_body)?)?;
    ids::check_slug("tool", &req.name).map_err(bad)?;
    let aud_ok = (req.audience.starts_with("https://")
        || req.audience.starts_with("http://")
        || req.audience.starts_with("urn:"))
        && req.audience.len() <= 512
        && !req
            .audience
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !aud_ok {
        return Err(err(
            Code::InvalidRequest,
            "`audience` must be an absolute URI (https://..., or urn:...) of at most 512 characters",
        ));
    }
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
    let risk = req.risk.unwrap_or_else(|| "low".into());
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
    let provider = req.provider.unwrap_or_else(|| "jwt".into());
    if provider != "jwt" {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "provider `{}` is not supported by this broker; use `jwt`",
                short(&provider)
            ),
        ));
    }
    let alg = Alg::parse("tool credentials", req.alg.as_deref().unwrap_or("EdDSA")).map_err(bad)?;
    {
        let reg = s.reg();
        if reg.tools.contains_key(&(tenant.clone(), req.name.clone())) {
            return Err(err(
                Code::Conflict,
                format!("tool `{}` already exists in tenant `{tenant}`", req.name),
            ));
        }
        if reg.find_tool(&tenant, &req.audience).is_some() {
            return Err(err(
                Code::Conflict,
                format!(
                    "another tool of tenant `{tenant}` already has audience `{}`",
                    req.audience
                ),
            ));
        }
    }
    let mut actions = req.actions;
    actions.dedup();
    let t = Tool {
        tenant: tenant.clone(),
        name: req.name,
        audience: req.audience,
        actions,
        labels: req.labels,
        risk,
        max_ttl_secs: ttl,
        provider,
        alg: alg.as_str().into(),
        created_ms: crate::now_ms(),
    };
    let mut ev = Ctx::new(&headers, addr).event("tool.create", Some(&tenant));
    ev.tool = Some(t.name.clone());
    ev.details =
        json!({"audience": t.audience, "actions": t.actions, "labels": t.labels, "risk": t.risk});
    created(&s, Mutation::CreateTool(t.clone()), ev, &t).await
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
                .collect::<Vec<_>>()
        )
    })
}

// ---------- grants ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    principal: String,
    agent: String,
    capabilities: Vec<String>,
    task: String,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// Longest grant (30 days).
const GRANT_MAX_SECS: u64 = 30 * 24 * 3600;

/// `POST /v1/tenants/{tenant}/grants`
pub async fn create_grant(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&s, &headers)?;
    need_tenant(&s, &tenant)?;
    let req: NewGrant = json_body(&body(raw, s.config.max_body)?)?;
    let caps = CapabilitySet::parse(&req.capabilities).map_err(bad)?;
    if caps.is_empty() {
        return Err(err(
            Code::InvalidRequest,
            "a grant needs at least one capability (`tool:action`)",
        ));
    }
    ids::check_text("task", &req.task, 1024).map_err(bad)?;
    {
        let reg = s.reg();
        if !reg
            .principals
            .contains_key(&(tenant.clone(), req.principal.clone()))
        {
            return Err(err(
                Code::NotFound,
                format!(
                    "principal `{}` not found in tenant `{tenant}`",
                    short(&req.principal)
                ),
            ));
        }
        if !reg
            .agents
            .contains_key(&(tenant.clone(), req.agent.clone()))
        {
            return Err(err(
                Code::NotFound,
                format!(
                    "agent `{}` not found in tenant `{tenant}`",
                    short(&req.agent)
                ),
            ));
        }
    }
    let secs = req.expires_in_secs.unwrap_or(24 * 3600);
    if secs == 0 || secs > GRANT_MAX_SECS {
        return Err(err(
            Code::InvalidRequest,
            format!("`expires_in_secs` must be 1 to {GRANT_MAX_SECS}"),
        ));
    }
    let g = Grant {
        id: random_id(&mut OsRng, "grt_"),
        tenant: tenant.clone(),
        principal: req.principal,
        agent: req.agent,
        capabilities: caps.to_strings(),
        task: req.task,
        expires_at: crate::now_secs() + secs,
        created_ms: crate::now_ms(),
    };
    let mut ev = Ctx::new(&headers, addr).event("grant.create", Some(&tenant));
    ev.principal = Some(g.principal.clone());
    ev.agent = Some(g.agent.clone());
    ev.task = Some(g.task.clone());
    ev.details = json!({"grant": g.id, "capabilities": g.capabilities, "expires_at": g.expires_at});
    created(&s, Mutation::CreateGrant(g.clone()), ev, &g).await
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
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, axum::response::Response> {
    use axum::response::IntoResponse;
    require_admin(&s, &headers).map_err(IntoResponse::into_response)?;
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
    let rec = PolicySetRecord {
        tenant: tenant.clone(),
        name: name.clone(),
        policies: policies.into_iter().map(PolicyText::from).collect(),
        created_ms: crate::now_ms(),
    };
    let mut ev = Ctx::new(&headers, addr).event("policy.put", Some(&tenant));
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
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_admin(&s, &headers)?;
    need_tenant(&s, &tenant)?;
    let mut ev = Ctx::new(&headers, addr).event("policy.delete", Some(&tenant));
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
            "subject_token_type": super::oauth::TOKEN_TYPE_MANDATE,
            "expires_at": expires_at,
            "capabilities": run.capabilities,
            "token_endpoint": s.token_endpoint,
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

// ---------- revocation ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRevocation {
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/revocations`: revoke a credential, run, agent, principal, grant or tenant.
pub async fn revoke(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let req: NewRevocation = json_body(&body(raw, s.config.max_body)?)?;
    let reason = req.reason.unwrap_or_else(|| "revoked by an admin".into());
    ids::check_text("reason", &reason, 512).map_err(bad)?;
    let need = |what: &str, v: &Option<String>| -> Result<String, ApiError> {
        v.clone().ok_or_else(|| {
            err(
                Code::InvalidRequest,
                format!("revoking a {} needs `{what}`", req.kind),
            )
        })
    };
    let mut ev = Ctx::new(&headers, addr).event("revoke", None);
    let now = crate::now_secs();
    let (key, until) = {
        let reg = s.reg();
        match req.kind.as_str() {
            "credential" => {
                let jti = match (&req.id, &req.token) {
                    (Some(j), _) => j.clone(),
                    (None, Some(t)) => {
                        let c = mandate_core::credential::verify(
                            &s.keys,
                            &s.config.issuer,
                            t,
                            now,
                            true,
                        )
                        .map_err(|e| {
                            err(
                                Code::InvalidRequest,
                                format!("`token` is not a credential of this broker: {e}"),
                            )
                        })?;
                        ev.tenant = Some(c.tenant.clone());
                        ev.run = Some(c.run.clone());
                        ev.agent = Some(c.agent.clone());
                        c.jti
                    }
                    (None, None) => {
                        return Err(err(
                            Code::InvalidRequest,
                            "revoking a credential needs `id` (its jti) or `token`",
                        ));
                    }
                };
                ev.credential_id = Some(jti.clone());
                (format!("cred:{jti}"), 0)
            }
            "run" => {
                let id = need("id", &req.id)?;
                let run = s.store.get_run(&id)?.ok_or_else(|| {
                    err(Code::NotFound, format!("run `{}` not found", short(&id)))
                })?;
                ev.tenant = Some(run.tenant.clone());
                ev.agent = Some(run.agent.clone());
                ev.principal = run.principal.clone();
                ev.run = Some(id.clone());
                (format!("run:{id}"), run.expires_at)
            }
            "agent" | "principal" => {
                let tenant = need("tenant", &req.tenant)?;
                let id = need("id", &req.id)?;
                let exists = if req.kind == "agent" {
                    reg.agents.contains_key(&(tenant.clone(), id.clone()))
                } else {
                    reg.principals.contains_key(&(tenant.clone(), id.clone()))
                };
                if !exists {
                    return Err(err(
                        Code::NotFound,
                        format!(
                            "{} `{}` not found in tenant `{}`",
                            req.kind,
                            short(&id),
                            short(&tenant)
                        ),
                    ));
                }
                ev.tenant = Some(tenant.clone());
                if req.kind == "agent" {
                    ev.agent = Some(id.clone());
                } else {
                    ev.principal = Some(id.clone());
                }
                (format!("{}:{tenant}/{id}", req.kind), 0)
            }
            "grant" => {
                let id = need("id", &req.id)?;
                let g = reg.grants.get(&id).ok_or_else(|| {
                    err(Code::NotFound, format!("grant `{}` not found", short(&id)))
                })?;
                ev.tenant = Some(g.tenant.clone());
                ev.agent = Some(g.agent.clone());
                ev.principal = Some(g.principal.clone());
                (format!("grant:{id}"), g.expires_at)
            }
            "tenant" => {
                let t = need("id", &req.id).or_else(|_| need("tenant", &req.tenant))?;
                if !reg.tenants.contains_key(&t) {
                    return Err(err(
                        Code::NotFound,
                        format!("tenant `{}` not found", short(&t)),
                    ));
                }
                ev.tenant = Some(t.clone());
                (format!("tenant:{t}"), 0)
            }
            other => {
                return Err(err(
                    Code::InvalidRequest,
                    format!(
                        "cannot revoke a `{}`; kinds are credential, run, agent, principal, grant, tenant",
                        short(other)
                    ),
                ));
            }
        }
    };
    ev.reason = Some(reason.clone());
    ev.details = json!({"revoked": key});
    let rev = Revocation {
        seq: 0,
        key: key.clone(),
        reason,
        time_ms: crate::now_ms(),
        until,
    };
    let done = s
        .commit(Entry {
            mutation: Some(Mutation::Revoke(rev)),
            events: vec![ev],
        })
        .await?;
    Ok(Json(json!({"revoked": key, "seq": done.revocation_seq})))
}

/// `GET /v1/revocations`: the revoked ids in force (for operators).
pub async fn list_revocations(
    State(s): State<S>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let reg = s.reg();
    let mut keys: Vec<&String> = reg.revoked.iter().collect();
    keys.sort();
    Ok(Json(json!({"seq": reg.revocation_seq, "revoked": keys})))
}

// ---------- audit ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
pub struct AuditQuery {
    tenant: Option<String>,
    agent: Option<String>,
    run: Option<String>,
    principal: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since_ms: Option<u64>,
    after_seq: Option<u64>,
    limit: Option<u32>,
}

/// `GET /v1/audit`
pub async fn audit_query(
    State(s): State<S>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    if let Some(d) = &q.decision
        && !["allow", "deny", "ok"].contains(&d.as_str())
    {
        return Err(err(
            Code::InvalidRequest,
            "`decision` must be `allow`, `deny` or `ok`",
        ));
    }
    let f = AuditFilter {
        tenant: q.tenant,
        agent: q.agent,
        run: q.run,
        principal: q.principal,
        tool: q.tool,
        decision: q.decision,
        event_type: q.event_type,
        since_ms: q.since_ms,
        after_seq: q.after_seq,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
    };
    let store = std::sync::Arc::clone(&s.store);
    let events = tokio::task::spawn_blocking(move || store.audit_query(&f))
        .await
        .map_err(|_| err(Code::ServerError, "audit query failed"))??;
    Ok(Json(json!(events)))
}

/// `GET /v1/audit/verify`
pub async fn audit_verify(State(s): State<S>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let store = std::sync::Arc::clone(&s.store);
    let rep = tokio::task::spawn_blocking(move || store.audit_verify())
        .await
        .map_err(|_| err(Code::ServerError, "audit verification failed"))??;
    Ok(Json(json!({
        "ok": rep.first_break.is_none(),
        "verified": rep.verified,
        "first_bad": rep.first_break.map(|b| json!({"seq": b.seq, "reason": b.reason})),
    })))
}
