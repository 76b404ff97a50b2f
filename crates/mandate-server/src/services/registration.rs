//! Registrations: tenants, principals, agents, tools (and their secrets),
//! grants and Cedar policy sets. Each is checked, then committed with its
//! audit event. Each is checked, then committed with its audit event.

use rand_core::OsRng;
use serde::Deserialize;
use serde_json::json;

use mandate_core::audit::{EventBody, EventType};
use mandate_core::capability::CapabilitySet;
use mandate_core::capability::check_action;
use mandate_core::ids::{self, agent_spiffe_id, random_id};
use mandate_core::jose::Alg;
use mandate_core::model::{Agent, Grant, PolicySetRecord, PolicyText, Principal, Tenant, Tool};
use mandate_core::tooling::{EnvSpec, PostgresSpec, ProviderKind, ProxySpec, check_env};
use mandate_store::{Entry, Mutation, ToolSecret};

use super::{bad, need_tenant, short};
use crate::error::{ApiError, Code, err};
use crate::origin::Origin;
use crate::state::AppState;

/// Commits a registration (or its removal) with its event.
pub(crate) async fn commit_created(
    s: &AppState,
    m: Mutation,
    ev: EventBody,
) -> Result<(), ApiError> {
    s.commit(Entry {
        mutation: Some(m),
        events: vec![ev],
    })
    .await
    .map(|_| ())
}

/// A tenant to register.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: String,
    #[serde(default)]
    description: String,
}

/// Registers a tenant.
pub async fn create_tenant(
    s: &AppState,
    origin: &Origin,
    req: NewTenant,
) -> Result<Tenant, ApiError> {
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
        created_ms: s.now_ms(),
    };
    let ev = origin.admin_event(EventType::TenantCreate, Some(&t.name), s.now_ms());
    commit_created(s, Mutation::CreateTenant(t.clone()), ev).await?;
    Ok(t)
}

/// A principal to register.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    id: String,
    #[serde(default)]
    display_name: String,
    /// Groups an approval policy can name (`@approval("group:finance")`).
    #[serde(default)]
    groups: Vec<String>,
}

/// Registers a principal of `tenant`.
pub async fn create_principal(
    s: &AppState,
    origin: &Origin,
    tenant: &str,
    req: NewPrincipal,
) -> Result<Principal, ApiError> {
    need_tenant(s, tenant)?;
    ids::check_principal(&req.id).map_err(bad)?;
    ids::check_text("display name", &req.display_name, 256).map_err(bad)?;
    if req.groups.len() > 32 {
        return Err(err(Code::InvalidRequest, "at most 32 groups"));
    }
    for g in &req.groups {
        ids::check_slug("group", g).map_err(bad)?;
    }
    if s.reg()
        .principals
        .contains_key(&(tenant.to_owned(), req.id.clone()))
    {
        return Err(err(
            Code::Conflict,
            format!("principal `{}` already exists in tenant `{tenant}`", req.id),
        ));
    }
    let p = Principal {
        tenant: tenant.to_owned(),
        id: req.id,
        display_name: req.display_name,
        groups: req.groups,
        created_ms: s.now_ms(),
    };
    let mut ev = origin.admin_event(EventType::PrincipalCreate, Some(tenant), s.now_ms());
    ev.principal = Some(p.id.clone());
    commit_created(s, Mutation::CreatePrincipal(p.clone()), ev).await?;
    Ok(p)
}

/// An agent to register.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    name: String,
    owner: String,
    #[serde(default)]
    purpose: String,
    envelope: Vec<String>,
}

/// Registers an agent of `tenant`: its owner is mandatory, its envelope the
/// most it may ever be granted.
pub async fn create_agent(
    s: &AppState,
    origin: &Origin,
    tenant: &str,
    req: NewAgent,
) -> Result<Agent, ApiError> {
    let _one_at_a_time = s.registrations.lock().await;
    let a = agent_from(s, tenant, req, None)?;
    let mut ev = origin.admin_event(EventType::AgentCreate, Some(tenant), s.now_ms());
    ev.agent = Some(a.name.clone());
    ev.details = json!({"owner": a.owner, "envelope": a.envelope});
    commit_created(s, Mutation::CreateAgent(a.clone()), ev).await?;
    Ok(a)
}

/// Replaces agent `name` of `tenant` (a typo fixed, an envelope changed):
/// the same checks as registering it. Runs started before keep the
/// capabilities their mandates carry until they expire; revoke them
/// (`mandate revoke --agent`) to cut them off now. The event names both.
pub async fn replace_agent(
    s: &AppState,
    origin: &Origin,
    (tenant, name): (&str, &str),
    req: NewAgent,
) -> Result<Agent, ApiError> {
    let _one_at_a_time = s.registrations.lock().await;
    need_tenant(s, tenant)?;
    let found = s
        .reg()
        .agents
        .get(&(tenant.to_owned(), name.to_owned()))
        .cloned();
    let before = to_replace(found, "agent", (tenant, name), &req.name)?;
    let a = agent_from(s, tenant, req, Some(&before))?;
    let mut ev = origin.admin_event(EventType::AgentUpdate, Some(tenant), s.now_ms());
    ev.agent = Some(a.name.clone());
    ev.details = json!({
        "before": {"owner": before.owner, "purpose": before.purpose, "envelope": before.envelope},
        "after": {"owner": a.owner, "purpose": a.purpose, "envelope": a.envelope},
    });
    commit_created(s, Mutation::ReplaceAgent(a.clone()), ev).await?;
    Ok(a)
}

/// The registration a replacement replaces: it must exist, and the body
/// must name it (a registration cannot be renamed).
fn to_replace<T>(
    found: Option<T>,
    what: &str,
    (tenant, name): (&str, &str),
    body_name: &str,
) -> Result<T, ApiError> {
    let before = found.ok_or_else(|| {
        err(
            Code::NotFound,
            format!("{what} `{}` not found in tenant `{tenant}`", short(name)),
        )
    })?;
    if body_name != name {
        return Err(err(
            Code::InvalidRequest,
            format!("the body's `name` must be the {what}'s name: a {what} cannot be renamed"),
        ));
    }
    Ok(before)
}

/// The agent `req` describes, checked; `replacing` is the one it replaces.
fn agent_from(
    s: &AppState,
    tenant: &str,
    req: NewAgent,
    replacing: Option<&Agent>,
) -> Result<Agent, ApiError> {
    need_tenant(s, tenant)?;
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
    if replacing.is_none()
        && s.reg()
            .agents
            .contains_key(&(tenant.to_owned(), req.name.clone()))
    {
        return Err(err(
            Code::Conflict,
            format!("agent `{}` already exists in tenant `{tenant}`", req.name),
        ));
    }
    Ok(Agent {
        spiffe_id: agent_spiffe_id(&s.config.trust_domain, tenant, &req.name),
        tenant: tenant.to_owned(),
        name: req.name,
        owner: req.owner,
        purpose: req.purpose,
        envelope: env.to_strings(),
        created_ms: replacing.map_or_else(|| s.now_ms(), |a| a.created_ms),
    })
}

/// A principal's grant to an agent, to register.
#[derive(Debug, Deserialize)]
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
pub const GRANT_MAX_SECS: u64 = 30 * 24 * 3600;

/// Registers a principal's grant to an agent of `tenant`: capabilities, a
/// task, an expiry (at most [`GRANT_MAX_SECS`]).
pub async fn create_grant(
    s: &AppState,
    origin: &Origin,
    tenant: &str,
    req: NewGrant,
) -> Result<Grant, ApiError> {
    need_tenant(s, tenant)?;
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
            .contains_key(&(tenant.to_owned(), req.principal.clone()))
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
            .contains_key(&(tenant.to_owned(), req.agent.clone()))
        {
            return Err(err(
                Code::NotFound,
                format!(
                    "agent `{}` not found in tenant `{tenant}`",
                    short(&req.agent)
                ),
            ));
        }
        // A grant that would give the run nothing it says is a mistake:
        // caught now, not at the first exchange (issue 16).
        let agent = &reg.agents[&(tenant.to_owned(), req.agent.clone())];
        let envelope = CapabilitySet::parse(&agent.envelope).map_err(bad)?;
        let problems = mandate_core::capability::grant_problems(&caps, &envelope, |t| {
            reg.tools
                .get(&(tenant.to_owned(), t.to_owned()))
                .map(|tool| tool.actions.as_slice())
        });
        if !problems.is_empty() {
            return Err(err(
                Code::InvalidRequest,
                format!("the grant is refused: {}", problems.join("; ")),
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
        tenant: tenant.to_owned(),
        principal: req.principal,
        agent: req.agent,
        capabilities: caps.to_strings(),
        task: req.task,
        expires_at: s.now_secs() + secs,
        created_ms: s.now_ms(),
    };
    let mut ev = origin.admin_event(EventType::GrantCreate, Some(tenant), s.now_ms());
    ev.principal = Some(g.principal.clone());
    ev.agent = Some(g.agent.clone());
    ev.task = Some(g.task.clone());
    ev.details = json!({"grant": g.id, "capabilities": g.capabilities, "expires_at": g.expires_at});
    commit_created(s, Mutation::CreateGrant(g.clone()), ev).await?;
    Ok(g)
}

/// A tool to register.
#[derive(Debug, Deserialize)]
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
    mcp: Option<mandate_core::mcp::McpSpec>,
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
fn tool_fits(
    s: &AppState,
    tenant: &str,
    name: &str,
    audience: &str,
    provider: &dyn crate::providers::Provider,
    replacing: Option<&Tool>,
) -> Result<(), ApiError> {
    let reg = s.reg();
    // The tool being replaced does not stand in its own way.
    let other = |t: &Tool| replacing.is_none_or(|r| !(r.tenant == t.tenant && r.name == t.name));
    if replacing.is_none()
        && reg
            .tools
            .contains_key(&(tenant.to_owned(), name.to_owned()))
    {
        return Err(err(
            Code::Conflict,
            format!("tool `{}` already exists in tenant `{tenant}`", name),
        ));
    }
    if reg.find_tool(tenant, audience).is_some_and(|t| other(t)) {
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
        other(t)
            && t.audience == audience
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

/// A credential minted for an MCP server is a bearer JWT of the broker's:
/// its audience must name that server alone, or a `jwt` tool at the same
/// audience would accept every credential minted for MCP calls (and the
/// other way round). So a minted audience is no tool's audience, no other
/// tool's minted audience, and not under the broker's own URL.
fn audiences_free(
    s: &AppState,
    audience: &str,
    mcp: Option<&mandate_core::mcp::McpSpec>,
    replacing: Option<&Tool>,
) -> Result<(), ApiError> {
    let minted = |t: &Tool| -> Option<String> {
        t.mcp
            .as_ref()?
            .mint
            .as_ref()
            .map(|m| same_audience(&m.audience))
    };
    let reg = s.reg();
    let others = || {
        reg.tools
            .values()
            .filter(|t| replacing.is_none_or(|r| !(r.tenant == t.tenant && r.name == t.name)))
    };
    let mine = same_audience(audience);
    if others().any(|t| minted(t).as_deref() == Some(mine.as_str())) {
        return Err(err(
            Code::Conflict,
            format!(
                "audience `{audience}` is the one an `mcp` tool mints credentials for; a tool's audience must name it alone"
            ),
        ));
    }
    let Some(m) = mcp.and_then(|m| m.mint.as_ref()) else {
        return Ok(());
    };
    let own = format!("{}/", same_audience(&s.config.issuer));
    let wanted = same_audience(&m.audience);
    if wanted == mine
        || format!("{wanted}/").starts_with(&own)
        || others().any(|t| {
            same_audience(&t.audience) == wanted || minted(t).as_deref() == Some(wanted.as_str())
        })
    {
        return Err(err(
            Code::Conflict,
            format!(
                "minted audience `{}` is already a tool's audience, another tool's minted audience, or the broker's own URL; it must name the MCP server alone",
                m.audience
            ),
        ));
    }
    Ok(())
}

/// An audience as a verifier that normalises URLs would compare it: the
/// scheme and host in lower case, no trailing `/`.
fn same_audience(a: &str) -> String {
    let a = a.trim_end_matches('/');
    match a.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{path}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            )
        }
        None => a.to_owned(),
    }
}

/// Registers a tool of `tenant`: its provider checks its settings and sets
/// or checks its audience.
pub async fn create_tool(
    s: &AppState,
    origin: &Origin,
    tenant: &str,
    req: NewTool,
) -> Result<Tool, ApiError> {
    let _one_at_a_time = s.registrations.lock().await;
    let t = tool_from(s, tenant, req, None)?;
    super::mcp_tools::keeps_policies_valid(s, &t)?;
    let mut ev = origin.admin_event(EventType::ToolCreate, Some(tenant), s.now_ms());
    ev.tool = Some(t.name.clone());
    ev.details = tool_details(&t);
    commit_created(s, Mutation::CreateTool(t.clone()), ev).await?;
    Ok(t)
}

/// Replaces tool `name` of `tenant` (a typo fixed, an action added or
/// taken away): the same checks as registering it; its provider cannot
/// change, and its stored secret stays. Exchanges judge by it at once.
pub async fn replace_tool(
    s: &AppState,
    origin: &Origin,
    (tenant, name): (&str, &str),
    req: NewTool,
) -> Result<Tool, ApiError> {
    let _one_at_a_time = s.registrations.lock().await;
    need_tenant(s, tenant)?;
    let found = s
        .reg()
        .tools
        .get(&(tenant.to_owned(), name.to_owned()))
        .cloned();
    let before = to_replace(found, "tool", (tenant, name), &req.name)?;
    let t = tool_from(s, tenant, req, Some(&before))?;
    if t.provider != before.provider {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "a tool's provider cannot change (`{}` to `{}`): its secret and credentials are of that provider",
                before.provider.as_str(),
                t.provider.as_str()
            ),
        ));
    }
    replacement_keeps_promises(s, &before, &t)?;
    super::mcp_tools::keeps_policies_valid(s, &t)?;
    let mut ev = origin.admin_event(EventType::ToolUpdate, Some(tenant), s.now_ms());
    ev.tool = Some(t.name.clone());
    ev.details = json!({"before": tool_details(&before), "after": tool_details(&t)});
    commit_created(s, Mutation::ReplaceTool(t.clone()), ev).await?;
    // Its MCP sessions and processes were opened under the old registration.
    crate::mcp_client::forget_tool(s, tenant, name);
    Ok(t)
}

/// What a replaced tool must not change: where its stored secret goes (a
/// proxy tool's upstream and how the key is injected), since an admin could
/// otherwise redirect a key nobody may read to a host of their own; and a
/// `jwt` tool's audience, since credentials for it live on and whoever
/// registered the freed audience would accept them.
fn replacement_keeps_promises(s: &AppState, before: &Tool, after: &Tool) -> Result<(), ApiError> {
    let destination = |t: &Tool| {
        let proxy = t
            .proxy
            .as_ref()
            .map(|p| (p.upstream.clone(), Some(p.inject.clone())));
        proxy.or_else(|| {
            t.mcp
                .as_ref()
                .map(|m| (m.upstream.describe(), m.inject.clone()))
        })
    };
    if destination(before) != destination(after)
        && s.tool_secret(&before.tenant, &before.name).is_some()
    {
        return Err(err(
            Code::Conflict,
            "this tool's upstream (or how its key is injected) cannot change while it holds a secret: the key would go somewhere its owner did not send it; register a new tool and set its secret",
        ));
    }
    if before.provider == ProviderKind::Jwt && before.audience != after.audience {
        return Err(err(
            Code::Conflict,
            "a `jwt` tool's audience cannot change: credentials for the old one live on (up to an hour), and a tool registered at it later would accept them; register a new tool",
        ));
    }
    Ok(())
}

/// A tool as its audit events describe it.
fn tool_details(t: &Tool) -> serde_json::Value {
    json!({"audience": t.audience, "actions": t.actions, "labels": t.labels,
        "risk": t.risk, "max_ttl_secs": t.max_ttl_secs, "alg": t.alg.as_str(), "provider": t.provider,
        "proxy": t.proxy, "postgres": t.postgres, "env": t.env,
        "mcp": t.mcp.as_ref().map(|m| json!({"upstream": m.upstream.describe(), "inject": m.inject, "mint": m.mint,
            "timeout_ms": m.timeout_ms, "extra_args": m.extra_args,
            "tools": m.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()}))})
}

/// The tool `req` describes, checked by its provider; `replacing` is the
/// one it replaces.
fn tool_from(
    s: &AppState,
    tenant: &str,
    req: NewTool,
    replacing: Option<&Tool>,
) -> Result<Tool, ApiError> {
    need_tenant(s, tenant)?;
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
        .audience(s, tenant, &req.name, req.audience.as_deref())
        .map_err(|e| err(Code::InvalidRequest, e))?;
    check_audience(&audience)?;
    // The broker's own data paths are the audiences of its `proxy` and
    // `mcp` tools: a `jwt` tool elsewhere may not take one (it would keep
    // every tenant from registering that name).
    let issuer = s.config.issuer.trim_end_matches('/');
    if kind == ProviderKind::Jwt
        && ["/mcp/", "/proxy/"]
            .iter()
            .any(|p| audience.starts_with(&format!("{issuer}{p}")))
    {
        return Err(err(
            Code::InvalidRequest,
            "this audience is the broker's own proxy or MCP gateway URL; a `jwt` tool names the service that verifies its credentials",
        ));
    }
    let (risk, ttl) = tool_shape(&req)?;
    provider
        .validate(&crate::providers::Settings {
            actions: &req.actions,
            proxy: req.proxy.as_ref(),
            postgres: req.postgres.as_ref(),
            mcp: req.mcp.as_ref(),
            tenant,
            stdio: &s.config.mcp_stdio,
        })
        .map_err(|e| err(Code::InvalidRequest, e))?;
    check_env(&req.env).map_err(bad)?;
    let alg = Alg::parse("tool credentials", req.alg.as_deref().unwrap_or("EdDSA")).map_err(bad)?;
    tool_fits(s, tenant, &req.name, &audience, provider, replacing)?;
    audiences_free(s, &audience, req.mcp.as_ref(), replacing)?;
    let mut actions = req.actions;
    actions.dedup();
    // A replaced `mcp` tool keeps its synced tools unless the request pins others.
    let mcp = req.mcp.map(|mut m| {
        if m.tools.is_empty()
            && let Some(before) = replacing.and_then(|t| t.mcp.as_ref())
        {
            m.tools = before.tools.clone();
        }
        m
    });
    Ok(Tool {
        tenant: tenant.to_owned(),
        name: req.name,
        audience,
        actions,
        labels: req.labels,
        risk,
        max_ttl_secs: ttl,
        provider: kind,
        alg,
        created_ms: replacing.map_or_else(|| s.now_ms(), |t| t.created_ms),
        proxy: req.proxy,
        postgres: req.postgres,
        mcp,
        env: req.env,
    })
}

/// Longest tool secret accepted.
const MAX_SECRET: usize = 8192;

/// A tool secret set.
#[derive(Debug)]
pub struct SecretSet {
    /// When (ms).
    pub updated_ms: u64,
    /// For a database tool: whether its mapped roles could be checked now
    /// (`Err`: why not; every exchange checks them again).
    pub roles_checked: Option<Result<(), String>>,
}

/// Tool `name` of `tenant` as registered, or why not found.
pub(crate) fn registered_tool(s: &AppState, tenant: &str, name: &str) -> Result<Tool, ApiError> {
    s.reg()
        .tools
        .get(&(tenant.to_owned(), name.to_owned()))
        .map(|t| (**t).clone())
        .ok_or_else(|| {
            err(
                Code::NotFound,
                format!("tool `{}` not found in tenant `{tenant}`", short(name)),
            )
        })
}

/// Sets a tool's upstream key (proxy, mcp) or admin connection string
/// (postgres), `raw` as sent: sealed under the master key, never returned.
pub async fn set_tool_secret(
    s: &AppState,
    origin: &Origin,
    (tenant, name): (&str, &str),
    raw: &[u8],
) -> Result<SecretSet, ApiError> {
    need_tenant(s, tenant)?;
    let tool = registered_tool(s, tenant, name)?;
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
    let text = std::str::from_utf8(raw)
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
        Some(spec) => Some(check_pg_mapping(s, origin, &tool, spec, text).await?),
        None => None,
    };
    let secret = mandate_core::secret::Secret::new(text.as_bytes().to_vec());
    let aad = crate::state::tool_secret_aad(tenant, name);
    let sealed = s
        .master
        .seal(&mut OsRng, aad.as_bytes(), secret.expose())
        .map_err(|e| err(Code::ServerError, e.to_string()))?;
    let updated_ms = s.now_ms();
    let mut ev = origin.admin_event(EventType::ToolSecretSet, Some(tenant), updated_ms);
    ev.tool = Some(name.to_owned());
    ev.details = json!({"bytes": secret.expose().len()});
    s.commit(Entry {
        mutation: Some(Mutation::PutToolSecret(ToolSecret {
            tenant: tenant.to_owned(),
            tool: name.to_owned(),
            sealed,
            updated_ms,
        })),
        events: vec![ev],
    })
    .await?;
    s.set_tool_secret(tenant, name, secret);
    // Processes started with the old key stop now, not at their next call.
    crate::mcp_client::forget_tool(s, tenant, name);
    Ok(SecretSet {
        updated_ms,
        roles_checked: checked,
    })
}

/// Checks, through the admin connection string `dsn` about to be set,
/// that no role the tool maps an action to is missing or reaches a power a
/// credential must never have ([`mandate_core::pgrole`]). A refusal is
/// audited and returned; an unreachable database is no refusal (every
/// exchange checks again) and comes back as `Ok(Err(why))`.
async fn check_pg_mapping(
    s: &AppState,
    origin: &Origin,
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
            let mut ev =
                origin.admin_event(EventType::ToolSecretSet, Some(&tool.tenant), s.now_ms());
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

/// Why a policy set was not stored.
#[derive(Debug)]
pub enum PolicyRefusal {
    /// The text is not valid against the Mandate schema: each problem.
    Invalid(Vec<mandate_core::policy::PolicyProblem>),
    /// Anything else.
    Refused(ApiError),
}

impl From<ApiError> for PolicyRefusal {
    fn from(e: ApiError) -> Self {
        Self::Refused(e)
    }
}

/// Adds or replaces policy set `name` of `tenant` with the Cedar text
/// `raw`, validated against the schema and bounded per tenant.
pub async fn put_policies(
    s: &AppState,
    origin: &Origin,
    (tenant, name): (&str, &str),
    raw: &[u8],
) -> Result<PolicySetRecord, PolicyRefusal> {
    // One at a time with tool changes: policies are validated against the
    // tenant's schema, which its `mcp` tools extend.
    let _one_at_a_time = s.registrations.lock().await;
    need_tenant(s, tenant)?;
    ids::check_slug("policy set", name).map_err(bad)?;
    let src = std::str::from_utf8(raw)
        .map_err(|_| err(Code::InvalidRequest, "the policy text is not UTF-8"))?;
    let schema = super::mcp_tools::tenant_schema(s, tenant, None)?;
    let policies = s
        .engine
        .parse_policies_in(&schema, name, src)
        .map_err(PolicyRefusal::Invalid)?;
    // A bounded number per tenant: the set being replaced does not count.
    let others: usize = s
        .reg()
        .policy_sets
        .iter()
        .filter(|((t, n), _)| t == tenant && n != name)
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
        .into());
    }
    let rec = PolicySetRecord {
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        policies: policies.into_iter().map(PolicyText::from).collect(),
        created_ms: s.now_ms(),
    };
    let mut ev = origin.admin_event(EventType::PolicyPut, Some(tenant), s.now_ms());
    ev.policies = rec.policies.iter().map(|p| p.id.clone()).collect();
    ev.details = json!({"set": name});
    commit_created(s, Mutation::PutPolicySet(rec.clone()), ev).await?;
    Ok(rec)
}

/// Removes policy set `name` of `tenant`.
pub async fn delete_policies(
    s: &AppState,
    origin: &Origin,
    (tenant, name): (&str, &str),
) -> Result<(), ApiError> {
    need_tenant(s, tenant)?;
    let mut ev = origin.admin_event(EventType::PolicyDelete, Some(tenant), s.now_ms());
    ev.details = json!({"set": name});
    commit_created(
        s,
        Mutation::DeletePolicySet {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        },
        ev,
    )
    .await
}
