//! Decide: what the gathered facts mean for this request, through the pure
//! functions of the core (scope, attenuation, amounts, approval state,
//! claims) and the tenant's Cedar policies. Reads no store.

use mandate_core::approval::{ApprovalState, approval_state};
use mandate_core::credential::AccessClaims;
use mandate_core::mandate::{self, MandateClaims};
use mandate_core::model::{Approval, Tool};
use mandate_core::policy::{Details, ExchangeFacts, Verdict};

use super::Denial;
use super::gather::{Facts, PolicyInput};
use super::request::ExchangeRequest;
use crate::error::{ApiError, Code, err};
use crate::state::AppState;

/// Who acts, for policy.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Run id.
    pub run: &'a str,
    /// Task.
    pub task: &'a str,
    /// The principal it acts for.
    pub principal: Option<&'a str>,
    /// The grant it acts under.
    pub grant: Option<&'a str>,
    /// Delegation depth of the run.
    pub depth: usize,
    /// Offline attenuation hops.
    pub hops: usize,
}

impl<'a> Subject<'a> {
    /// The subject of a mandate.
    pub fn of_mandate(m: &'a MandateClaims) -> Self {
        Self {
            tenant: &m.tenant,
            run: &m.run,
            task: &m.task,
            principal: m.principal.as_deref(),
            grant: m.grant.as_deref(),
            depth: m.ancestors.len(),
            hops: m.hops.len(),
        }
    }

    /// The subject of a credential (a call at the proxy).
    pub fn of_credential(c: &'a AccessClaims) -> Self {
        let (depth, hops) = c.chain_depths();
        Self {
            tenant: &c.tenant,
            run: &c.run,
            task: &c.task,
            principal: (c.sub != c.client_id).then_some(c.sub.as_str()),
            grant: c.grant.as_deref(),
            depth,
            hops,
        }
    }
}

/// What the tenant's policies say of `actions` on `tool` now (the one
/// policy question of the exchange and of the proxy).
pub struct Question<'a> {
    /// Who asks.
    pub subject: Subject<'a>,
    /// Agent, policies, history.
    pub input: &'a PolicyInput,
    /// The tool.
    pub tool: &'a Tool,
    /// The actions.
    pub actions: &'a [String],
    /// Declared details.
    pub details: &'a Details,
    /// Whether humans approved exactly this request.
    pub approved: bool,
}

impl Question<'_> {
    /// The facts policies see for this question at `now` (the exchange's,
    /// the proxy's and the MCP gateway's, built here only).
    pub fn facts(&self, now: u64) -> ExchangeFacts<'_> {
        let (sub, input, tool) = (&self.subject, self.input, self.tool);
        ExchangeFacts {
            tenant: sub.tenant,
            now,
            agent: &input.agent.name,
            agent_owner: &input.agent.owner,
            agent_purpose: &input.agent.purpose,
            run: sub.run,
            task: sub.task,
            principal: sub.principal,
            grant: sub.grant,
            tool: &tool.name,
            tool_audience: &tool.audience,
            tool_labels: &tool.labels,
            tool_risk: &tool.risk,
            tool_provider: tool.provider.as_str(),
            actions: self.actions,
            depth: sub.depth,
            hops: sub.hops,
            approved: self.approved,
            details: self.details,
            history: &input.history,
        }
    }
}

/// Asks the tenant's policies.
pub fn verdict(s: &AppState, q: &Question<'_>, now: u64) -> Result<Verdict, ApiError> {
    s.decide(q.input.generation, &q.input.policies, &q.facts(now))
}

/// The asked actions are the tool's and within the run's capabilities.
pub fn scope(m: &MandateClaims, tool: &Tool, actions: &[String]) -> Result<(), Denial> {
    for a in actions {
        if !tool.actions.iter().any(|x| x == a) {
            return Err(err(
                Code::InvalidScope,
                format!(
                    "tool `{}` has no action `{a}`; its actions are: {}",
                    tool.name,
                    tool.actions.join(", ")
                ),
            )
            .into());
        }
        if !m.capabilities.allows(&tool.name, a) {
            return Err(err(
                Code::InvalidScope,
                format!(
                    "action `{a}` on tool `{}` is not granted to this run; its capabilities are: {} (a new grant is needed)",
                    tool.name,
                    m.capabilities.to_strings().join(", ")
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// An attenuated mandate: every block's checks run against this use (what
/// is asked, and how often each use-limited block was used). The blocks
/// whose uses this exchange counts: (block id, limit).
pub fn attenuation(
    s: &AppState,
    req: &ExchangeRequest,
    m: &MandateClaims,
    f: &Facts,
    now: u64,
) -> Result<Vec<(String, u64)>, Denial> {
    if m.hops.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((b, n, _)) = f.block_uses.iter().find(|(_, n, c)| c >= n) {
        let index = m
            .hops
            .iter()
            .find(|h| &h.block_id == b)
            .map_or(0, |h| h.index);
        return Err(Denial::because(
            err(
                Code::InvalidGrant,
                format!(
                    "attenuation block {index} allows {n} uses and all have been made; ask the holder before it for a new mandate"
                ),
            ),
            format!("use limit of attenuation block {index}"),
        ));
    }
    let uses: Vec<(usize, u64)> = f
        .block_uses
        .iter()
        .filter_map(|(b, _, c)| {
            m.hops
                .iter()
                .find(|h| &h.block_id == b)
                .map(|h| (h.index, *c))
        })
        .collect();
    let parsed = s
        .parsed_mandate(&req.subject, now)
        .map_err(|e| err(Code::InvalidGrant, e.to_string()))?;
    mandate::authorize_parsed(&parsed, now, &f.tool.name, &req.actions, &uses, None)
        .map_err(|e| err(Code::InvalidScope, e.to_string()))?;
    Ok(f.block_uses
        .iter()
        .map(|(b, n, _)| (b.clone(), *n))
        .collect())
}

/// A declared amount must fit the run's running total.
pub fn amount(f: &Facts, details: &Details) -> Result<(), Denial> {
    match details.amount {
        Some(a) => mandate_core::policy::add_amount(f.input.history.amount_total, a)
            .map(|_| ())
            .map_err(|why| {
                Denial::because(
                    err(Code::AccessDenied, why.clone()),
                    format!("amount refused: {why}"),
                )
            }),
        None => Ok(()),
    }
}

/// An approval named by the agent must be for exactly this request.
pub fn named_approval(
    a: Option<&Approval>,
    digest: &str,
    run: &str,
    now: u64,
) -> Result<(), Denial> {
    let Some(a) = a else { return Ok(()) };
    if a.request_digest != digest || a.run != run {
        return Err(err(
            Code::InvalidGrant,
            "this approval is for a different request (run, tool, actions or declared details differ); ask again",
        )
        .into());
    }
    if a.expires_at < now {
        return Err(err(
            Code::ExpiredToken,
            format!(
                "approval `{}` expired; make the request again to ask anew",
                a.id
            ),
        )
        .into());
    }
    Ok(())
}

/// What humans' decisions mean for a refusal by `@approval` policies.
pub enum Humans {
    /// Every policy's approvers approved: ask policy again with `approved`.
    Approved(Vec<Approval>),
    /// Some approvals wait; none is missing.
    Waiting(Vec<Approval>),
    /// Some policies were never asked: ask them (`missing`), and wait for the rest.
    Ask {
        /// Asked, not decided.
        pending: Vec<Approval>,
        /// To ask.
        missing: Vec<mandate_core::policy::PolicyApprovers>,
    },
}

/// Matches the live approvals of this request with what policy needs.
pub fn humans(
    need: &mandate_core::policy::ApprovalNeed,
    live: &[Approval],
) -> Result<Humans, Denial> {
    match approval_state(need, live) {
        ApprovalState::Approved(list) => Ok(Humans::Approved(list)),
        ApprovalState::Denied(a) => Err(Denial::because(
            err(
                Code::AccessDenied,
                format!(
                    "{} denied this request{}; a denial is final for this request",
                    a.decided_by.clone().unwrap_or_else(|| "an approver".into()),
                    a.comment.map(|c| format!(": {c}")).unwrap_or_default()
                ),
            ),
            "approval denied".into(),
        )),
        ApprovalState::Waiting { pending, missing } if missing.is_empty() => {
            Ok(Humans::Waiting(pending))
        }
        ApprovalState::Waiting { pending, missing } => Ok(Humans::Ask { pending, missing }),
    }
}
