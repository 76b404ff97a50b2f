//! Gather: the facts an exchange (or a call at the proxy) is decided on,
//! read from the registry, the caches, the run's history and the store.
//! Nothing here decides; it only reads.

use std::sync::Arc;

use mandate_core::mandate::MandateClaims;
use mandate_core::model::{Agent, Approval, Tool};
use mandate_core::policy::{History, TenantPolicies};

use super::Denial;
use super::request::{ExchangeRequest, Proof};
use crate::error::{ApiError, Code, err};
use crate::providers::Pop;
use crate::state::AppState;

/// What the tenant's policies judge a run's request with.
pub struct PolicyInput {
    /// The run's agent.
    pub agent: Agent,
    /// The tenant's policies, as compiled for `generation`.
    pub policies: Arc<TenantPolicies>,
    /// The registry generation they belong to (keys the entity cache).
    pub generation: u64,
    /// What the run has done so far.
    pub history: History,
}

/// The run's agent, the tenant's policies in force and the run's history
/// for `tool`; `None` when the agent is no longer registered.
pub fn policy_input(
    s: &AppState,
    (tenant, agent, run): (&str, &str, &str),
    issued_at: u64,
    tool: &str,
    now: u64,
) -> Option<PolicyInput> {
    let (agent, policies, generation) = {
        let reg = s.reg();
        let agent = reg
            .agents
            .get(&(tenant.to_owned(), agent.to_owned()))
            .cloned()?;
        let policies = reg.compiled.get(tenant).cloned().unwrap_or_default();
        (agent, policies, reg.generation)
    };
    let history = s
        .history
        .lock()
        .map(|h| h.facts(run, issued_at, (tenant, &agent.name, tool), now))
        .unwrap_or_default();
    Some(PolicyInput {
        agent,
        policies,
        generation,
        history,
    })
}

/// The mandate is not revoked (before its holder proved anything: a
/// revoked run's exchanges stop here).
pub fn not_revoked(s: &AppState, m: &MandateClaims) -> Result<(), Denial> {
    match s.reg().refused(&m.revocation_keys(), m.issued_at) {
        None => Ok(()),
        Some(k) => Err(Denial::because(
            err(
                Code::InvalidGrant,
                format!(
                    "the mandate has been revoked ({}); start a new run",
                    mandate_core::revocation::kind(&k)
                ),
            ),
            format!("revoked: {k}"),
        )),
    }
}

/// Verifies the proof of possession of the mandate's key; how, and the
/// proof's use (committed with the credential it gets, so no broker on the
/// store accepts it again).
pub fn prove(
    s: &AppState,
    req: &ExchangeRequest,
    m: &MandateClaims,
    now: u64,
) -> Result<(Pop, mandate_core::dpop::Spent), ApiError> {
    match &req.proof {
        Proof::Dpop(proof) => {
            let spent = crate::pop::dpop::dpop_at_token_endpoint(s, proof, &m.cnf_jkt, now)?;
            Ok((Pop::Dpop, spent))
        }
        Proof::MessageSignature { headers, body } => {
            let signed = crate::pop::httpsig::verify(
                s,
                headers,
                &crate::pop::httpsig::Expect {
                    method: "POST",
                    target_uri: &s.token_endpoint,
                    body: Some(body),
                    jkt: &m.cnf_jkt,
                    must_cover: &[],
                },
                now,
            )?;
            Ok((Pop::MessageSignature, signed.spent))
        }
    }
}

/// The tool asked for, in the mandate's tenant only (tenant isolation in
/// code, before any policy runs).
pub fn tool(s: &AppState, m: &MandateClaims, target: &str) -> Result<std::sync::Arc<Tool>, Denial> {
    let reg = s.reg();
    if let Some(t) = reg.find_tool(&m.tenant, target) {
        return Ok(t.clone());
    }
    let rule = match reg.tool_elsewhere(&m.tenant, target) {
        Some(other) => format!("tenant mismatch: tool belongs to tenant `{other}`"),
        None => "unknown tool".into(),
    };
    Err(Denial::because(
        err(
            Code::InvalidTarget,
            format!(
                "no tool `{}` is registered in tenant `{}`",
                target.chars().take(120).collect::<String>(),
                m.tenant
            ),
        ),
        rule,
    ))
}

/// Everything else an exchange is decided on.
pub struct Facts {
    /// The tool.
    pub tool: std::sync::Arc<Tool>,
    /// Agent, policies and history.
    pub input: PolicyInput,
    /// Uses made of each use-limited attenuation block: (block id, limit, used).
    pub block_uses: Vec<(String, u64, u64)>,
    /// Why the run is suspended, if it is.
    pub suspended: Option<String>,
}

/// Reads the facts of an exchange of `m` for `tool`.
pub fn facts(
    s: &AppState,
    m: &MandateClaims,
    tool: std::sync::Arc<Tool>,
    now: u64,
) -> Result<Facts, Denial> {
    let input = policy_input(
        s,
        (&m.tenant, &m.agent, &m.run),
        m.issued_at,
        &tool.name,
        now,
    )
    .ok_or_else(|| {
        Denial::from(err(
            Code::InvalidGrant,
            format!("agent `{}` is no longer registered", m.agent),
        ))
    })?;
    let limited: Vec<(String, u64)> = m
        .hops
        .iter()
        .filter_map(|h| h.narrowing.max_uses.map(|n| (h.block_id.clone(), n)))
        .collect();
    let block_uses = if limited.is_empty() {
        Vec::new()
    } else {
        let ids: Vec<String> = limited.iter().map(|(b, _)| b.clone()).collect();
        let counts = s.store.block_uses(&ids).map_err(ApiError::from)?;
        limited
            .into_iter()
            .zip(counts)
            .map(|((b, n), c)| (b, n, c))
            .collect()
    };
    let suspended = s.reg().suspension(&m.run, &m.revocation_keys());
    Ok(Facts {
        tool,
        input,
        block_uses,
        suspended,
    })
}

/// The approval the agent names (`approval_id`), if any: read only once
/// the pure checks passed.
pub fn named_approval(s: &AppState, req: &ExchangeRequest) -> Result<Option<Approval>, ApiError> {
    let Some(id) = &req.approval_id else {
        return Ok(None);
    };
    let a = s.store.approval(id)?.ok_or_else(|| {
        err(
            Code::InvalidGrant,
            format!("no approval `{}`", id.chars().take(64).collect::<String>()),
        )
    })?;
    Ok(Some(a))
}

/// The live approvals of this request (newest first): looked up only when
/// policy asks for humans, so the hot path reads no store.
pub fn live_approvals(
    s: &AppState,
    digest: &str,
    run: &str,
    now: u64,
) -> Result<Vec<Approval>, ApiError> {
    Ok(s.store
        .approvals_for_request(digest)?
        .into_iter()
        .filter(|a| a.expires_at >= now && a.run == run)
        .collect())
}

/// How many approvals of `run` wait for a decision.
pub fn pending_for_run(s: &AppState, run: &str, now: u64) -> Result<usize, ApiError> {
    Ok(s.store.pending_approvals_for_run(run, now)?)
}

/// Who may approve: `principal` becomes the run's principal; a group must
/// have at least one member in the tenant.
pub fn approvers(
    s: &AppState,
    (tenant, principal): (&str, Option<&str>),
    wanted: &[String],
) -> Result<Vec<String>, ApiError> {
    let reg = s.reg();
    let mut out = Vec::new();
    for w in wanted {
        if w == "principal" {
            if let Some(p) = principal {
                out.push(format!("principal:{p}"));
            }
        } else if let Some(g) = w.strip_prefix("group:")
            && reg
                .principals
                .iter()
                .any(|((t, _), p)| t == tenant && p.groups.iter().any(|x| x == g))
        {
            out.push(w.clone());
        }
    }
    if out.is_empty() {
        return Err(err(
            Code::AccessDenied,
            format!(
                "this request needs approval by {}, and nobody can give it (the run acts for no principal, or the group has no members)",
                wanted.join(" or ")
            ),
        ));
    }
    Ok(out)
}
