//! Registrations: tenants, principals, agents and grants (tools and
//! policies still registered by their routes). Each is checked, then committed with its audit event.

use rand_core::OsRng;
use serde::Deserialize;
use serde_json::json;

use mandate_core::audit::{EventBody, EventType};
use mandate_core::capability::CapabilitySet;
use mandate_core::ids::{self, agent_spiffe_id, random_id};
use mandate_core::model::{Agent, Grant, Principal, Tenant};
use mandate_store::{Entry, Mutation};

use super::{bad, need_tenant, short};
use crate::error::{ApiError, Code, err};
use crate::origin::Origin;
use crate::state::AppState;

/// Commits a registration with its event.
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
    if s.reg()
        .agents
        .contains_key(&(tenant.to_owned(), req.name.clone()))
    {
        return Err(err(
            Code::Conflict,
            format!("agent `{}` already exists in tenant `{tenant}`", req.name),
        ));
    }
    let a = Agent {
        spiffe_id: agent_spiffe_id(&s.config.trust_domain, tenant, &req.name),
        tenant: tenant.to_owned(),
        name: req.name,
        owner: req.owner,
        purpose: req.purpose,
        envelope: env.to_strings(),
        created_ms: s.now_ms(),
    };
    let mut ev = origin.admin_event(EventType::AgentCreate, Some(tenant), s.now_ms());
    ev.agent = Some(a.name.clone());
    ev.details = json!({"owner": a.owner, "envelope": a.envelope});
    commit_created(s, Mutation::CreateAgent(a.clone()), ev).await?;
    Ok(a)
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
