//! `tools/list` and `tools/call` at the gateway.
//!
//! A call is judged in this order, each refusal audited and nothing sent
//! upstream: the tool is enabled and synced (else `-32602` "Unknown tool",
//! MCP 2025-11-25 `server/tools` §Error Handling); the credential carries
//! it (else 403 `insufficient_scope`); the arguments fit the pinned schema
//! (else `-32602` naming where); the run is not suspended; the tenant's
//! policies permit the exchange question for this tool (as at the proxy,
//! so time windows and history keep holding per call) *and* the call
//! action `"<tool>:<name>"` with `context.arguments`. A policy refusal is a
//! tool result with `isError: true` (MCP §Tool Execution Errors: a model
//! can correct its arguments); gateway faults are JSON-RPC errors.

use std::net::SocketAddr;
use std::time::Instant;

use mandate_core::audit::{Decision, EventBody, EventType};
use mandate_core::mcp::args::{self, Checked};
use mandate_core::mcp::jsonrpc::{self, Id};
use mandate_core::policy::Verdict;
use serde_json::{Map, Value, json};

use super::{Caller, Dispatched, S};
use crate::error::ApiError;
use crate::exchange::{decide, gather};
use crate::mcp_client::Failure;

/// The run is suspended (its calls wait until an admin resumes or revokes it).
pub const SUSPENDED: i64 = -31001;
/// The gateway could not record the decision (nothing was forwarded).
pub const NOT_RECORDED: i64 = -31010;
/// The MCP server could not be reached or failed.
pub const UPSTREAM_FAILED: i64 = -31011;
/// The MCP server did not answer in time.
pub const UPSTREAM_TIMEOUT: i64 = -31012;

/// `tools/list`: the pinned tools the caller may call now (enabled, in its
/// credential's scope, and permitted by the exchange question); sorted by
/// name. A listed tool may still be refused on its arguments.
pub(super) fn list(s: &S, c: &Caller, now: u64) -> Value {
    let Some(spec) = &c.tool.mcp else {
        return json!({"tools": []});
    };
    let scope: Vec<&str> = c.claims.scope.split(' ').collect();
    let mut tools: Vec<Value> = spec
        .tools
        .iter()
        .filter(|t| c.tool.actions.contains(&t.name) && scope.contains(&t.name.as_str()))
        .filter(|t| exchange_question(s, c, &t.name, now).is_ok_and(|v| v.allowed))
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    tools.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"tools": tools})
}

/// The exchange's policy question for MCP tool `name` (as the proxy asks it per call).
fn exchange_question(s: &S, c: &Caller, name: &str, now: u64) -> Result<Verdict, ApiError> {
    let claims = &c.claims;
    let input = policy_input(s, c, now)?;
    let details = claims
        .declared_details()
        .map(mandate_core::policy::Details::from_json)
        .unwrap_or_default();
    decide::verdict(
        s,
        &decide::Question {
            subject: decide::Subject::of_credential(claims),
            input: &input,
            tool: &c.tool,
            actions: &[name.to_owned()],
            details: &details,
            approved: false,
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

/// A refusal of a call: how it is answered.
enum Refusal {
    /// A JSON-RPC error.
    Rpc(i64, String, Option<Value>),
    /// A tool result with `isError` (a policy said no).
    Policy(Verdict),
    /// HTTP 403 `insufficient_scope`.
    Scope(String),
}

/// `tools/call`.
pub(super) async fn call(
    s: &S,
    addr: SocketAddr,
    c: &Caller,
    id: &Id,
    params: Map<String, Value>,
    now: u64,
) -> Dispatched {
    let started = Instant::now();
    let mut ev = event(s, addr, c, id);
    let judged = judge(s, c, &params, now, &mut ev);
    let (name, checked) = match judged {
        Ok(ok) => ok,
        Err(refusal) => return refuse(s, ev, id, refusal).await,
    };
    ev.decision = Decision::Allow;
    note(s, &ev, false).await;
    // The decision is durable before the MCP server acts on the call.
    if s.record(vec![ev.clone()]).await.is_err() {
        return Dispatched::Json(jsonrpc::error(
            Some(id),
            NOT_RECORDED,
            "the gateway could not record the decision, so the call was not sent; try again",
            None,
        ));
    }
    let params = json!({"name": name, "arguments": Value::Object(checked.forward)});
    let outcome = crate::mcp_client::request(s, &c.tool, "tools/call", params).await;
    let mut result_ev = ev;
    result_ev.event_type = EventType::McpResult;
    let mut scrubber = crate::mcp_client::scrubber(s, &c.tool);
    let (answer, status) = match outcome {
        Ok(result) => {
            let status = if result.get("isError") == Some(&Value::Bool(true)) {
                "tool_error"
            } else {
                "ok"
            };
            (jsonrpc::result(id, result), status.to_owned())
        }
        Err(Failure::Rpc(code, message)) => (
            jsonrpc::error(Some(id), code, &message, None),
            format!("rpc_error:{code}"),
        ),
        Err(Failure::Timeout) => (
            jsonrpc::error(
                Some(id),
                UPSTREAM_TIMEOUT,
                "the MCP server did not answer in time",
                None,
            ),
            "timeout".to_owned(),
        ),
        Err(f @ Failure::Unreachable(_)) => (
            jsonrpc::error(Some(id), UPSTREAM_FAILED, &f.to_string(), None),
            "upstream_failed".to_owned(),
        ),
    };
    // The MCP server's key never comes back (a tool that echoes its
    // headers or its environment).
    let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
    let mut reflected = false;
    if let Some(sc) = scrubber.as_mut()
        && let Some(clean) = sc.scrub(&bytes)
    {
        bytes = clean;
        reflected = true;
    }
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        jsonrpc::error(
            Some(id),
            UPSTREAM_FAILED,
            "the MCP server's answer could not be relayed",
            None,
        )
    });
    merge(
        &mut result_ev.details,
        json!({"status": status, "duration_ms": started.elapsed().as_millis() as u64,
               "bytes": bytes.len(), "secret_reflected": reflected}),
    );
    // The outcome is recorded before the answer leaves; a failure to
    // record it is logged (the decision is already durable).
    if let Err(e) = s.record(vec![result_ev]).await {
        tracing::warn!(
            "the outcome of an MCP call could not be recorded: {}",
            e.description
        );
    }
    Dispatched::Json(answer)
}

/// The checks before a call may go upstream; the audit event is filled as
/// they go.
fn judge(
    s: &S,
    c: &Caller,
    params: &Map<String, Value>,
    now: u64,
    ev: &mut EventBody,
) -> Result<(String, Checked), Refusal> {
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
    merge(&mut ev.details, json!({"mcp_tool": shown}));
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
    if let Some(m) = params.get("_meta")
        && !m.is_object()
    {
        return Err(Refusal::Rpc(
            jsonrpc::INVALID_PARAMS,
            "`params._meta` must be an object".into(),
            None,
        ));
    }
    if params
        .keys()
        .any(|k| !["name", "arguments", "_meta"].contains(&k.as_str()))
    {
        ev.reason = Some("unknown members in params".into());
        return Err(Refusal::Rpc(
            jsonrpc::INVALID_PARAMS,
            "`params` takes `name`, `arguments` and `_meta` only".into(),
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
    merge(
        &mut ev.details,
        json!({"arg_keys": checked.keys, "args_digest": args::digest(key.as_slice(), &checked.forward)}),
    );
    if let Some(why) = s.reg().suspended.get(&c.claims.run) {
        ev.reason = Some(format!("run suspended: {why}"));
        return Err(Refusal::Rpc(
            SUSPENDED,
            format!(
                "run `{}` is suspended ({why}); its calls wait until an admin resumes it or revokes it",
                c.claims.run
            ),
            Some(json!({"suspended": true})),
        ));
    }
    let asked = exchange_question(s, c, &name, now)
        .map_err(|e| Refusal::Rpc(jsonrpc::INTERNAL_ERROR, e.description, None))?;
    ev.policies = asked.policies.clone();
    if !asked.allowed {
        ev.reason = asked.reason.clone();
        return Err(Refusal::Policy(asked));
    }
    let verdict = call_question(s, c, &name, &checked, &ty, now)?;
    for p in &verdict.policies {
        if !ev.policies.contains(p) {
            ev.policies.push(p.clone());
        }
    }
    if !verdict.allowed {
        ev.policies = verdict.policies.clone();
        ev.reason = verdict.reason.clone();
        return Err(Refusal::Policy(verdict));
    }
    Ok((name, checked))
}

/// The call action's question: `"<tool>:<name>"` with `context.arguments`.
fn call_question(
    s: &S,
    c: &Caller,
    name: &str,
    checked: &Checked,
    ty: &mandate_core::mcp::schema::Record,
    now: u64,
) -> Result<Verdict, Refusal> {
    let internal = |e: String| {
        Refusal::Rpc(
            jsonrpc::INTERNAL_ERROR,
            format!("policy evaluation failed: {e}"),
            None,
        )
    };
    let input = policy_input(s, c, now).map_err(|e| internal(e.description))?;
    let sub = decide::Subject::of_credential(&c.claims);
    let details = c
        .claims
        .declared_details()
        .map(mandate_core::policy::Details::from_json)
        .unwrap_or_default();
    let actions = [name.to_owned()];
    let facts = mandate_core::policy::ExchangeFacts {
        tenant: sub.tenant,
        now,
        agent: &input.agent.name,
        agent_owner: &input.agent.owner,
        agent_purpose: &input.agent.purpose,
        run: sub.run,
        task: sub.task,
        principal: sub.principal,
        grant: sub.grant,
        tool: &c.tool.name,
        tool_audience: &c.tool.audience,
        tool_labels: &c.tool.labels,
        tool_risk: &c.tool.risk,
        tool_provider: c.tool.provider.as_str(),
        actions: &actions,
        depth: sub.depth,
        hops: sub.hops,
        approved: false,
        details: &details,
        history: &input.history,
    };
    let entities = s
        .policy_entities(input.generation, &facts)
        .map_err(|e| internal(e.to_string()))?;
    let call = mandate_core::mcp::call_action(&c.tool.name, name);
    s.engine
        .decide_call(
            &input.policies,
            &facts,
            &entities,
            &call,
            &checked.visible,
            ty,
        )
        .map_err(|e| internal(e.to_string()))
}

async fn refuse(s: &S, mut ev: EventBody, id: &Id, refusal: Refusal) -> Dispatched {
    ev.decision = Decision::Deny;
    if ev.reason.is_none()
        && let Refusal::Rpc(_, m, _) = &refusal
    {
        ev.reason = Some(m.chars().take(256).collect());
    }
    note(s, &ev, true).await;
    if s.record(vec![ev]).await.is_err() {
        return Dispatched::Json(jsonrpc::error(
            Some(id),
            NOT_RECORDED,
            "the gateway could not record its decision; try again",
            None,
        ));
    }
    match refusal {
        Refusal::Rpc(code, message, data) => {
            Dispatched::Json(jsonrpc::error(Some(id), code, &message, data))
        }
        Refusal::Scope(scope) => Dispatched::NeedsScope(scope),
        Refusal::Policy(v) => {
            let reason = v
                .reason
                .clone()
                .unwrap_or_else(|| "denied by policy".into());
            let approval = v.approval.as_ref().map(|a| a.policies());
            let mut text = format!("Refused by Mandate: {reason}");
            if approval.is_some() {
                text.push_str(" (this call needs a human's approval, which the MCP gateway cannot ask for yet; use the token endpoint for approval-gated actions)");
            }
            Dispatched::Json(jsonrpc::result(
                id,
                json!({
                    "content": [{"type": "text", "text": text}],
                    "isError": true,
                    "_meta": {"dev.mandate/refusal": {"policies": v.policies, "reason": reason}},
                }),
            ))
        }
    }
}

fn event(s: &S, addr: SocketAddr, c: &Caller, id: &Id) -> EventBody {
    let claims = &c.claims;
    let id_shown: String = id
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    EventBody {
        time_ms: s.now_ms(),
        event_type: EventType::McpCall,
        correlation_id: Some(mandate_core::ids::random_id(&mut rand_core::OsRng, "")),
        client_addr: super::super::client(Some(addr)),
        tenant: Some(claims.tenant.clone()),
        agent: Some(claims.agent.clone()),
        run: Some(claims.run.clone()),
        principal: (claims.sub != claims.client_id).then(|| claims.sub.clone()),
        task: Some(claims.task.clone()),
        tool: Some(c.tool.name.clone()),
        credential_id: Some(claims.jti.clone()),
        details: json!({"method": "tools/call", "jsonrpc_id": id_shown}),
        ..Default::default()
    }
}

fn merge(into: &mut Value, more: Value) {
    if !into.is_object() {
        *into = json!({});
    }
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), more) {
        a.extend(b);
    }
}

/// Counts the call toward its run's request rate and denials.
async fn note(s: &S, ev: &EventBody, denied: bool) {
    if let (Some(tenant), Some(agent), Some(run)) = (&ev.tenant, &ev.agent, &ev.run) {
        let now = s.now_secs();
        let r = crate::alerts::RunRef {
            tenant,
            agent,
            run,
            principal: ev.principal.as_deref(),
            issued_at: now,
        };
        crate::alerts::judged(s, r, now, denied).await;
    }
}
