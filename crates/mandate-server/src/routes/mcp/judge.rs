//! Whether one `tools/call` may go upstream: every check in order, the two
//! policy questions, and humans where `@approval` policies ask for them.
//!
//! An approval binds the exact call: run, tool, MCP tool name and the
//! arguments as they would be forwarded (their digest is the approval's
//! `request_digest`), so approving `pay {amount: 500}` approves nothing
//! else; it is spent in the same commit as the `mcp.call` event that
//! forwards it. The agent learns of the wait as a JSON-RPC error
//! ([`AUTHORIZATION_PENDING`], with the approval ids and the interval) and
//! sends the same call again, as at the token endpoint.

use mandate_core::audit::EventBody;
use mandate_core::mcp::args::{self, Checked};
use mandate_core::mcp::jsonrpc;
use mandate_core::mcp::schema::Record;
use mandate_core::model::Approval;
use mandate_core::policy::{ApprovalNeed, Verdict};
use serde_json::{Map, Value, json};

use super::{Caller, S};
use crate::error::ApiError;
use crate::exchange::{decide, gather};

/// The call waits: for humans (`data.approvals`), or for an admin to
/// resume the run (`data.suspended`). Outside JSON-RPC's reserved range.
pub const AUTHORIZATION_PENDING: i64 = -31001;
/// A human denied this call (final for these arguments).
pub const APPROVAL_DENIED: i64 = -31002;

/// Seconds an agent waits before asking again.
pub const INTERVAL: u64 = 5;

/// Most approval requests one run may have waiting at once (as at the token endpoint).
const MAX_PENDING_PER_RUN: usize = 16;

/// A refusal of a call: how it is answered.
pub(super) enum Refusal {
    /// A JSON-RPC error.
    Rpc(i64, String, Option<Value>),
    /// A tool result with `isError` (a policy said no).
    Policy(Verdict),
    /// HTTP 403 `insufficient_scope`.
    Scope(String),
    /// Humans must approve: these requests are new (to record), these wait.
    Pending {
        asked: Vec<Approval>,
        waiting: Vec<Approval>,
    },
}

/// A call that may go upstream.
pub(super) struct Allowed {
    /// The MCP tool.
    pub name: String,
    /// Its arguments as judged (and forwarded).
    pub checked: Checked,
    /// Approvals it spends.
    pub spend: Vec<Approval>,
}

/// The checks before a call may go upstream, in order; the audit event is
/// filled as they go.
pub(super) fn judge(
    s: &S,
    c: &Caller,
    params: &Map<String, Value>,
    now: u64,
    ev: &mut EventBody,
) -> Result<Allowed, Refusal> {
    let name = match params.get("name") {
        Some(Value::String(n)) => n.clone(),
        _ => {
            return Err(Refusal::Rpc(
                jsonrpc::INVALID_PARAMS,
                "`params.name` must be the tool's name".into(),
                None,
            ));
        }
    };
    let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    ev.actions = vec![shown.clone()];
    super::call::merge(&mut ev.details, json!({"mcp_tool": shown}));
    let spec = c.tool.mcp.as_ref();
    let Some((_, ty)) = spec.and_then(|m| m.enabled(&c.tool.actions, &name)) else {
        ev.reason = Some("unknown or not enabled MCP tool".into());
        return Err(Refusal::Rpc(
            jsonrpc::INVALID_PARAMS,
            format!(
                "Unknown tool: {shown} (tool `{}` does not offer it; see tools/list)",
                c.tool.name
            ),
            None,
        ));
    };
    if !c.claims.scope.split(' ').any(|a| a == name) {
        ev.reason = Some("not in the credential's scope".into());
        return Err(Refusal::Scope(name));
    }
    // An amount declared at the exchange says nothing about the amounts in
    // calls (a credential declaring 1 could carry calls of any size):
    // amounts are judged per call, from the arguments.
    if c.claims.declared_details().is_some() {
        ev.reason = Some("credential declares authorization_details".into());
        return Err(Refusal::Rpc(
            jsonrpc::INVALID_REQUEST,
            "this credential declares `authorization_details`, which the MCP gateway does not use (each call is judged on its own arguments): ask for a credential without them".into(),
            None,
        ));
    }
    if params.get("_meta").is_some_and(|m| !m.is_object())
        || params
            .keys()
            .any(|k| !["name", "arguments", "_meta"].contains(&k.as_str()))
    {
        ev.reason = Some("malformed params".into());
        return Err(Refusal::Rpc(
            jsonrpc::INVALID_PARAMS,
            "`params` takes `name`, `arguments` and `_meta` (an object) only".into(),
            None,
        ));
    }
    let extra = spec.map(|m| m.extra_args).unwrap_or_default();
    let checked = args::check(&ty, params.get("arguments"), extra).map_err(|p| {
        ev.reason = Some(format!("arguments: {p}"));
        Refusal::Rpc(
            jsonrpc::INVALID_PARAMS,
            format!("{p}"),
            Some(json!({"pointer": p.pointer})),
        )
    })?;
    let key = s.master.derive(&format!("mcp-args:{}", c.claims.tenant));
    super::call::merge(
        &mut ev.details,
        json!({"arg_keys": checked.keys, "args_digest": args::digest(key.as_slice(), &checked.forward)}),
    );
    if let Some((why, refusal)) = suspended(s, c) {
        ev.reason = Some(format!("run suspended: {why}"));
        return Err(refusal);
    }
    let spend = with_humans(s, c, (&name, &checked, &ty), now, ev)?;
    Ok(Allowed {
        name,
        checked,
        spend,
    })
}

/// Why the caller's run is suspended, and the answer that says so: its
/// calls (and its `tools/list`) wait until an admin resumes or revokes it.
pub(super) fn suspended(s: &S, c: &Caller) -> Option<(String, Refusal)> {
    let why = s
        .reg()
        .suspension(&c.claims.run, &c.claims.revocation_keys())?;
    let refusal = Refusal::Rpc(
        AUTHORIZATION_PENDING,
        format!(
            "run `{}` is suspended ({why}); its calls wait until an admin resumes it or revokes it",
            c.claims.run
        ),
        Some(json!({"error": "authorization_pending", "suspended": true, "interval": INTERVAL})),
    );
    Some((why, refusal))
}

/// The policy questions, with humans where `@approval` policies ask.
fn with_humans(
    s: &S,
    c: &Caller,
    call: (&str, &Checked, &Record),
    now: u64,
    ev: &mut EventBody,
) -> Result<Vec<Approval>, Refusal> {
    let (name, checked, _) = call;
    let verdict = both(s, c, call, false, now)?;
    ev.policies = verdict.policies.clone();
    if verdict.allowed {
        return Ok(Vec::new());
    }
    let refused = |ev: &mut EventBody, v: Verdict| {
        ev.policies = v.policies.clone();
        ev.reason = v.reason.clone();
        Refusal::Policy(v)
    };
    let Some(need) = verdict.approval.clone() else {
        return Err(refused(ev, verdict));
    };
    let digest = digest_of(c, name, checked);
    let live = gather::live_approvals(s, &digest, &c.claims.run, now).map_err(internal)?;
    match decide::humans(&need, &live) {
        Err(d) => {
            ev.reason = Some("approval denied".into());
            Err(Refusal::Rpc(APPROVAL_DENIED, d.error.description, None))
        }
        Ok(decide::Humans::Approved(list)) => {
            let again = both(s, c, call, true, now)?;
            if !again.allowed {
                return Err(refused(ev, again));
            }
            ev.policies = again.policies;
            Ok(list)
        }
        Ok(decide::Humans::Waiting(waiting)) => {
            ev.reason = Some("waiting for approval".into());
            Err(Refusal::Pending {
                asked: Vec::new(),
                waiting,
            })
        }
        Ok(decide::Humans::Ask { pending, missing }) => {
            let run = &c.claims.run;
            if gather::pending_for_run(s, run, now).map_err(internal)? + missing.len()
                > MAX_PENDING_PER_RUN
            {
                ev.reason = Some("too many pending approvals".into());
                return Err(Refusal::Policy(Verdict {
                    reason: Some(format!(
                        "run `{run}` already waits for {MAX_PENDING_PER_RUN} approvals; wait for them to be decided or expire"
                    )),
                    ..verdict
                }));
            }
            let mut asked = Vec::with_capacity(missing.len());
            for p in &missing {
                let principal =
                    (c.claims.sub != c.claims.client_id).then_some(c.claims.sub.as_str());
                let approvers = gather::approvers(s, (&c.claims.tenant, principal), &p.approvers)
                    .map_err(|e| Refusal::Rpc(APPROVAL_DENIED, e.description, None))?;
                asked.push(Approval {
                    id: mandate_core::ids::random_id(&mut rand_core::OsRng, "apr_"),
                    tenant: c.claims.tenant.clone(),
                    run: run.clone(),
                    agent: c.claims.agent.clone(),
                    principal: principal.map(str::to_owned),
                    tool: c.tool.name.clone(),
                    actions: vec![name.to_owned()],
                    // What the approver decides on: the call as it would go.
                    details: call_details(name, checked),
                    request_digest: digest.clone(),
                    approvers,
                    policies: vec![p.policy.clone()],
                    status: mandate_core::approval::ApprovalStatus::Pending,
                    requested_ms: s.now_ms(),
                    expires_at: now + s.config.approval_ttl,
                    decided_by: None,
                    decided_ms: None,
                    comment: None,
                });
            }
            ev.reason = Some(format!(
                "approval required by {}",
                need.policies().join(", ")
            ));
            Err(Refusal::Pending {
                asked,
                waiting: pending,
            })
        }
    }
}

/// What an approval of this call shows and binds.
fn call_details(name: &str, checked: &Checked) -> Value {
    json!({"mcp_call": {"name": name, "arguments": Value::Object(checked.forward.clone())}})
}

/// The digest an approval of this call binds (an object where the token
/// endpoint's details are an array, so the two never meet).
fn digest_of(c: &Caller, name: &str, checked: &Checked) -> String {
    mandate_core::exchange::request_digest(
        &c.claims.run,
        &c.tool.name,
        &[name.to_owned()],
        &Value::String(
            String::from_utf8(args::canonical_json(&call_details(name, checked)))
                .unwrap_or_default(),
        ),
    )
}

fn internal(e: ApiError) -> Refusal {
    Refusal::Rpc(jsonrpc::INTERNAL_ERROR, e.description, None)
}

/// Both questions: the exchange's, for this MCP tool (as the proxy asks it
/// per call, so time windows and history keep holding), and the call
/// action's, with the arguments. Allowed only if both allow; a refusal
/// either gives without `@approval` is final; otherwise the approvals both
/// need.
fn both(
    s: &S,
    c: &Caller,
    (name, checked, ty): (&str, &Checked, &Record),
    approved: bool,
    now: u64,
) -> Result<Verdict, Refusal> {
    let input = policy_input(s, c, now).map_err(internal)?;
    let details = mandate_core::policy::Details::default();
    let actions = [name.to_owned()];
    let question = decide::Question {
        subject: decide::Subject::of_credential(&c.claims),
        input: &input,
        tool: &c.tool,
        actions: &actions,
        details: &details,
        approved,
    };
    let facts = question.facts(now);
    let failed = |e: mandate_core::Error| {
        Refusal::Rpc(
            jsonrpc::INTERNAL_ERROR,
            format!("policy evaluation failed: {e}"),
            None,
        )
    };
    let call = mandate_core::mcp::call_action(&c.tool.name, name);
    let entities = s
        .policy_entities(input.generation, &facts)
        .map_err(failed)?;
    let call_entities = s
        .call_entities(input.generation, &facts, &call)
        .map_err(failed)?;
    let verdicts = s
        .engine
        .decide_mcp_call(
            &input.policies,
            &facts,
            (&entities, &call_entities),
            (&call, &checked.visible, ty),
        )
        .map_err(failed)?;
    let first = verdicts.exchange;
    let Some(second) = verdicts.call else {
        return Ok(first);
    };
    if !second.allowed && second.approval.is_none() {
        return Ok(second);
    }
    if first.allowed && second.allowed {
        let mut policies = first.policies;
        for p in second.policies {
            if !policies.contains(&p) {
                policies.push(p);
            }
        }
        return Ok(Verdict {
            allowed: true,
            policies,
            reason: None,
            approval: None,
        });
    }
    let mut each = Vec::new();
    let mut policies = Vec::new();
    let mut reason = None;
    for v in [first, second].into_iter().filter(|v| !v.allowed) {
        reason = reason.or(v.reason);
        policies.extend(v.policies);
        each.extend(v.approval.into_iter().flat_map(|a| a.each));
    }
    each.sort_by(|a, b| a.policy.cmp(&b.policy));
    each.dedup_by(|a, b| a.policy == b.policy);
    Ok(Verdict {
        allowed: false,
        policies,
        reason,
        approval: Some(ApprovalNeed { each }),
    })
}

/// The exchange's policy question for MCP tool `name`.
pub(super) fn exchange_question(
    s: &S,
    c: &Caller,
    name: &str,
    approved: bool,
    now: u64,
) -> Result<Verdict, ApiError> {
    let claims = &c.claims;
    let input = policy_input(s, c, now)?;
    // Declared details are refused at the gateway (see `judge`): none here.
    let details = mandate_core::policy::Details::default();
    decide::verdict(
        s,
        &decide::Question {
            subject: decide::Subject::of_credential(claims),
            input: &input,
            tool: &c.tool,
            actions: &[name.to_owned()],
            details: &details,
            approved,
        },
        now,
    )
}

fn policy_input(s: &S, c: &Caller, now: u64) -> Result<gather::PolicyInput, ApiError> {
    let claims = &c.claims;
    gather::policy_input(
        s,
        (&claims.tenant, &claims.agent, &claims.run),
        claims.iat,
        &c.tool.name,
        now,
    )
    .ok_or_else(|| {
        crate::error::err(
            crate::error::Code::Unauthorized,
            "the agent is no longer registered",
        )
    })
}
