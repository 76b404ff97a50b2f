//! Runs: starting one (minting its mandate), delegating to a sub-agent (a
//! child run that only ever holds less), join tokens (one run each), and
//! ending a run (its mandate and every credential it got are refused from
//! then on).

use rand_core::OsRng;
use serde::Deserialize;
use serde_json::{Value, json};

use mandate_core::audit::{EventBody, EventType};
use mandate_core::capability::CapabilitySet;
use mandate_core::ids::{self, random_id, run_spiffe_id};
use mandate_core::jose::PublicJwk;
use mandate_core::mandate::{self, MandateClaims};
use mandate_core::model::{Agent, Grant, JoinToken, Revocation, Run};
use mandate_store::{Entry, Mutation};

use super::{bad, find_run, if_not_found, need_tenant, short};
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

/// A registered agent of `tenant`, or `not_found`.
fn find_agent(
    reg: &crate::registry::Registry,
    tenant: &str,
    name: &str,
) -> Result<Agent, ApiError> {
    reg.agents
        .get(&(tenant.to_owned(), name.to_owned()))
        .cloned()
        .ok_or_else(|| {
            err(
                Code::NotFound,
                format!("agent `{}` not found in tenant `{tenant}`", short(name)),
            )
        })
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
    // A token that could never start a run is refused now, not at the host.
    if let (Some(p), Some(g)) = (&req.principal, &req.grant) {
        let reg = s.reg();
        let grant = reg.grants.get(g).filter(|x| x.tenant == tenant);
        match grant {
            None => {
                return Err(err(
                    Code::NotFound,
                    format!("grant `{}` not found in tenant `{tenant}`", short(g)),
                ));
            }
            Some(x) if x.principal != *p || x.agent != agent => {
                return Err(err(
                    Code::InvalidRequest,
                    format!(
                        "grant `{}` is {}'s to agent `{}`, not {}'s to `{}`",
                        short(g),
                        short(&x.principal),
                        short(&x.agent),
                        short(p),
                        short(agent)
                    ),
                ));
            }
            Some(x)
                if x.expires_at <= s.now_secs()
                    || reg
                        .revoked
                        .contains(&mandate_core::revocation::RevocationKind::Grant.id(g)) =>
            {
                return Err(err(
                    Code::InvalidRequest,
                    format!(
                        "grant `{}` has expired or was revoked: ask the principal for a new one",
                        short(g)
                    ),
                ));
            }
            Some(_) => {}
        }
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

/// A run to start (`POST /v1/runs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    pub(crate) tenant: String,
    pub(crate) agent: String,
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
    s: &AppState,
    claims: &MandateClaims,
    origin: &Origin,
    event_type: EventType,
) -> Result<(String, Run, EventBody), ApiError> {
    let token = mandate::mint(&s.keyset().root, claims, &mut OsRng)
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
        // In the second the mandate was issued in, so that what judges the
        // run by its start (the kill switch in `list`) judges its mandate.
        started_ms: s
            .now_ms()
            .min(claims.issued_at.saturating_mul(1000).saturating_add(999)),
        expires_at: claims.expires_at,
        ended_ms: None,
        parent: claims.ancestors.first().map(|(r, _)| r.clone()),
    };
    let mut ev = origin.admin_event(event_type, Some(&claims.tenant), s.now_ms());
    ev.agent = Some(claims.agent.clone());
    ev.run = Some(claims.run.clone());
    ev.principal = claims.principal.clone();
    ev.task = Some(claims.task.clone());
    ev.decision = mandate_core::audit::Decision::Allow;
    ev.credential_exp = Some(claims.expires_at);
    Ok((token, run, ev))
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
fn run_subject(s: &AppState, req: &NewRun, now: u64) -> Result<(Agent, Option<Grant>), ApiError> {
    let reg = s.reg();
    let agent = find_agent(&reg, &req.tenant, &req.agent)?;
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
fn run_tools(s: &AppState, req: &NewRun, caps: &CapabilitySet) -> Result<Vec<Value>, ApiError> {
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
pub async fn start_run(
    s: &AppState,
    origin: &Origin,
    req: NewRun,
    join: Option<&JoinToken>,
) -> Result<Value, ApiError> {
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
    let (token, run, mut ev) = issue(s, &claims, origin, EventType::RunStart)?;
    ev.details = json!({"capabilities": run.capabilities, "grant": claims.grant, "jkt": claims.cnf_jkt, "run_id": claims.run_id});
    if let Some(j) = &join {
        // Consumed first and once: of two concurrent uses, one wins.
        ev.actor = Some(format!("join token {}", j.id));
        let mut used = ev.clone();
        used.event_type = mandate_core::audit::EventType::JoinTokenUse;
        // Checked in the commit too: a revocation of the token (or of what
        // it names) committed at another broker a moment ago refuses it.
        s.commit(Entry {
            mutation: Mutation::all(vec![
                Mutation::Unrevoked {
                    keys: j.revocation_keys(),
                    issued_at: j.created_ms / 1000,
                    now,
                },
                Mutation::UseJoinToken {
                    id: j.id.clone(),
                    used_ms: s.now_ms(),
                },
            ]),
            events: vec![used],
        })
        .await
        .map_err(if_not_found(
            Code::Unauthorized,
            "this join token was already used; a join token starts one run, ask an admin for a new one".into(),
        ))?;
    }
    s.commit(Entry {
        mutation: Mutation::all(vec![
            Mutation::Unrevoked {
                keys: claims.revocation_keys(),
                issued_at: claims.issued_at,
                now,
            },
            Mutation::StartRun(run.clone()),
        ]),
        events: vec![ev],
    })
    .await?;
    // Said loudly: without a grant, nothing narrows the agent's envelope.
    let warnings: Vec<String> = if claims.grant.is_none() {
        vec![format!(
            "this run acts for no principal and holds the agent's whole envelope ({}); to narrow it, start it with a principal and their grant",
            run.capabilities.join(", ")
        )]
    } else {
        Vec::new()
    };
    Ok(json!({
        "run": run_id,
        "run_id": claims.run_id,
        "agent_id": claims.agent_id,
        "mandate": token,
        "subject_token_type": crate::exchange::request::TOKEN_TYPE_MANDATE,
        "expires_at": expires_at,
        "capabilities": run.capabilities,
        "token_endpoint": s.token_endpoint,
        "tools": tools,
        "warnings": warnings,
    }))
}

/// Request body of `POST /v1/runs/delegate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChild {
    pub(crate) mandate: String,
    agent: String,
    jwk: Value,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    task: Option<String>,
}

/// The broker's absolute ceilings on delegation: the parent is live and
/// not attenuated, under the depth and fan-out limits. (depth, children).
fn delegation_limits(s: &AppState, parent: &MandateClaims) -> Result<(usize, u64), ApiError> {
    if let Some(k) = s.reg().refused(&parent.revocation_keys(), parent.issued_at) {
        return Err(err(
            Code::InvalidGrant,
            format!(
                "the parent run has been revoked ({}); it cannot delegate",
                k.split(':').next().unwrap_or("run")
            ),
        ));
    }
    // A suspended run (or one descending from a suspended run) starts no
    // child: the child would not be suspended, and would be the way out.
    if let Some(why) = s.reg().suspension(&parent.run, &parent.revocation_keys()) {
        return Err(err(
            Code::Forbidden,
            format!(
                "run `{}` is suspended ({why}); it cannot delegate until an admin resumes it",
                parent.run
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
    s: &AppState,
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
pub async fn delegate(
    s: &AppState,
    origin: &Origin,
    (parent, spent): (&MandateClaims, mandate_core::dpop::Spent),
    req: NewChild,
    now: u64,
) -> Result<Value, ApiError> {
    let (depth, children) = delegation_limits(s, parent)?;
    let agent = find_agent(&s.reg(), &parent.tenant, &req.agent)?;
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
    let (token, run, mut ev) = issue(s, &claims, origin, EventType::RunDelegate)?;
    let chain: Vec<&str> = claims.ancestors.iter().map(|(r, _)| r.as_str()).collect();
    ev.actor = Some(parent.run_id.clone());
    ev.details = json!({"parent": parent.run, "ancestors": chain, "depth": depth,
        "capabilities": run.capabilities, "parent_capabilities": parent.capabilities.to_strings(),
        "policies": verdict.policies});
    // Checked in the commit, against every broker on the store: the parent
    // is not revoked and its proof was not used before.
    s.commit(Entry {
        mutation: Mutation::all(vec![
            Mutation::Unrevoked {
                keys: parent.revocation_keys(),
                issued_at: parent.issued_at,
                now,
            },
            Mutation::FirstUse {
                uses: vec![spent],
                now,
            },
            // The limit read above, counted again in the commit: delegations
            // at once (here or at another broker) cannot pass it together.
            Mutation::FewerChildren {
                parent: parent.run.clone(),
                max: s.config.max_children,
            },
            Mutation::StartRun(run.clone()),
        ]),
        events: vec![ev],
    })
    .await?;
    Ok(json!({
        "run": run_id, "run_id": claims.run_id, "agent_id": claims.agent_id, "mandate": token,
        "subject_token_type": crate::exchange::request::TOKEN_TYPE_MANDATE,
        "expires_at": expires_at, "capabilities": run.capabilities,
        "parent": parent.run, "ancestors": chain, "depth": depth,
        "token_endpoint": s.token_endpoint,
    }))
}

/// Runs, newest first (at most `limit`), each with where it stands now.
pub fn list(
    s: &AppState,
    tenant: Option<&str>,
    agent: Option<&str>,
    limit: u32,
) -> Result<Vec<(Run, mandate_core::model::RunStatus)>, ApiError> {
    let runs = s.store.list_runs(tenant, agent, limit)?;
    let now = s.now_secs();
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let ancestors = ancestors(s, &r)?;
        let reg = s.reg();
        let keys = r.revocation_keys(&ancestors);
        let refused = reg.revoked.refused(&keys, r.started_ms / 1000);
        let status = r.status(refused.as_deref(), reg.suspended.contains_key(&r.id), now);
        drop(reg);
        out.push((r, status));
    }
    Ok(out)
}

/// A delegated run's ancestors, parent first, read from the store (at most
/// [`MAX_DEPTH`] of them).
fn ancestors(s: &AppState, r: &Run) -> Result<Vec<mandate_core::revocation::Ancestor>, ApiError> {
    let mut out = Vec::new();
    let mut next = r.parent.clone();
    while let Some(id) = next.take() {
        if out.len() >= MAX_DEPTH {
            break;
        }
        match s.store.get_run(&id)? {
            Some(p) => {
                out.push(mandate_core::revocation::Ancestor {
                    run: p.id.clone(),
                    agent: Some(p.agent.clone()),
                });
                next = p.parent;
            }
            None => out.push(mandate_core::revocation::Ancestor {
                run: id,
                agent: None,
            }),
        }
    }
    Ok(out)
}

/// Deepest delegation chain [`list`] follows to judge a run.
const MAX_DEPTH: usize = 32;
