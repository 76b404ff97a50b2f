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

use crate::state::CommitRefused;
use mandate_core::audit::{Decision, EventBody, EventType};
use mandate_core::mcp::jsonrpc::{self, Id};
use mandate_store::{Entry, Mutation};
use serde_json::{Map, Value, json};

use super::judge::{self, Allowed, Refusal};
use super::{Caller, Dispatched, S};
use crate::mcp_client::{Failure, Minted};
use mandate_core::mcp::Upstream;

/// The gateway could not record the decision (nothing was forwarded).
pub const NOT_RECORDED: i64 = -31010;
/// The MCP server could not be reached or failed.
pub const UPSTREAM_FAILED: i64 = -31011;
/// The MCP server did not answer in time.
pub const UPSTREAM_TIMEOUT: i64 = -31012;
/// The credential was revoked while the call ran (the call was cancelled).
pub const REVOKED: i64 = -31020;

/// The `_meta` member of a forwarded `tools/call` that says on whose
/// behalf it runs (MCP 2025-11-25 `basic` §General fields: `_meta`).
pub const CALLER_META: &str = "dev.mandate/caller";

/// Who a forwarded call is for: the human (`sub`), the chain of agents
/// acting for them (`act`, RFC 8693 §4.1), the run and its tenant. The MCP
/// server can trust it as far as it trusts the channel: only the broker
/// holds its key (or its stdin).
fn caller(claims: &mandate_core::credential::AccessClaims) -> Value {
    json!({"sub": claims.sub, "act": claims.act, "tenant": claims.tenant,
           "run": claims.run, "agent": claims.agent})
}

/// The `_meta` of a forwarded call: who it is for, and the credential
/// minted for a stdio server (an HTTP server gets it as `Authorization`).
fn meta(c: &Caller, minted: Option<&Minted>) -> Value {
    let mut m = json!({CALLER_META: caller(&c.claims)});
    if let Some(token) = minted
        && matches!(
            c.tool.mcp.as_ref().map(|m| &m.upstream),
            Some(Upstream::Stdio(_))
        )
    {
        m[CREDENTIAL_META] = json!(token.token.as_str());
    }
    m
}

/// The `_meta` member carrying a minted credential to a stdio server.
pub const CREDENTIAL_META: &str = "dev.mandate/credential";

/// Runs `call` unless the caller's credential is revoked first: then the
/// call is dropped (its connection to the MCP server closes, which cancels
/// it there, MCP 2026-07-28 streamable HTTP §Cancellation) and the answer
/// is [`Failure::Revoked`]. Revocations are heard as the registry applies
/// them (the feed's channel); a lagging listener checks again.
async fn until_revoked<F, T>(s: &S, c: &Caller, call: F) -> Result<T, Failure>
where
    F: std::future::Future<Output = Result<T, Failure>>,
{
    let mut heard = s.revocations.subscribe();
    let keys = c.claims.revocation_keys();
    let revoked = async {
        loop {
            if s.reg().refused(&keys, c.claims.iat).is_some() {
                return;
            }
            match heard.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending().await
                }
            }
        }
    };
    tokio::select! {
        r = call => r,
        () = revoked => Err(Failure::Revoked),
    }
}

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
        .filter(|t| {
            judge::exchange_question(s, c, &t.name, false, now)
                .is_ok_and(|v| v.allowed || v.approval.is_some())
        })
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    tools.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"tools": tools})
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
    let Allowed {
        name,
        checked,
        spend,
    } = match judge::judge(s, c, &params, now, &mut ev) {
        Ok(ok) => ok,
        Err(refusal) => return refuse(s, ev, id, refusal).await,
    };
    ev.decision = Decision::Allow;
    if !spend.is_empty() {
        merge(
            &mut ev.details,
            json!({"approvals": spend.iter().map(|a| json!({"id": a.id, "approved_by": a.decided_by, "policies": a.policies})).collect::<Vec<_>>()}),
        );
    }
    crate::alerts::judged_call(s, &ev, false).await;
    let Ok(minted) = crate::mcp_client::mint(s, &c.tool, Some(&c.claims), &name) else {
        return Dispatched::Json(jsonrpc::error(
            Some(id),
            UPSTREAM_FAILED,
            "the credential for the MCP server could not be made, so the call was not sent",
            None,
        ));
    };
    if let Some(m) = &minted {
        merge(&mut ev.details, json!({"minted_jti": m.jti}));
    }
    // The decision is durable before the MCP server acts on the call, in
    // one commit with the approvals it spends (each good for one call).
    // Checked in that commit, against every broker on the store: the
    // credential is not revoked (its proof was spent before anything else).
    let mut spent = vec![Mutation::Unrevoked {
        keys: c.claims.revocation_keys(),
        issued_at: c.claims.iat,
        now,
    }];
    spent.extend(
        spend
            .iter()
            .map(|a| Mutation::UseApproval { id: a.id.clone() }),
    );
    let committed = s
        .commit_outcome(Entry {
            mutation: Mutation::all(spent),
            events: vec![ev.clone()],
        })
        .await;
    let refused = match committed {
        Ok(_) => None,
        Err(CommitRefused::Revoked(k)) => Some((
            format!("revoked: {k}"),
            REVOKED,
            "the credential has been revoked, so the call was not sent",
        )),
        // (No proof is spent in this commit: it was, before the message
        // was read.)
        Err(refused @ (CommitRefused::Failed(_) | CommitRefused::Replayed(_))) => {
            let e = crate::error::ApiError::from(refused);
            let message = if e.code == crate::error::Code::Conflict && !spend.is_empty() {
                "this approval was already used for a call; send the call again to ask anew"
            } else {
                "the gateway could not record the decision, so the call was not sent; try again"
            };
            return Dispatched::Json(jsonrpc::error(Some(id), NOT_RECORDED, message, None));
        }
    };
    if let Some((reason, code, message)) = refused {
        ev.decision = Decision::Deny;
        ev.reason = Some(reason);
        let _ = s.record(vec![ev]).await;
        return Dispatched::Json(jsonrpc::error(Some(id), code, message, None));
    }
    // Forwarded and recorded in a task of its own: an agent that hangs up
    // does not leave a forwarded call without its outcome. The answer comes
    // back as soon as the MCP server's does; its `mcp.result` event is
    // committed after (the decision was durable before anything was sent).
    let (answered, answer) = tokio::sync::oneshot::channel();
    tokio::spawn(forward(
        std::sync::Arc::clone(s),
        c.clone(),
        (id.clone(), answered),
        json!({"name": name, "arguments": Value::Object(checked.forward),
               "_meta": meta(c, minted.as_ref())}),
        ev,
        (started, minted),
    ));
    match answer.await {
        Ok(answer) => Dispatched::Json(answer),
        Err(_) => Dispatched::Json(jsonrpc::error(
            Some(id),
            UPSTREAM_FAILED,
            "the call failed inside the gateway",
            None,
        )),
    }
}

/// Sends the judged call upstream, hands its answer to `answered`, and
/// records its outcome.
async fn forward(
    s: S,
    c: Caller,
    (id, answered): (Id, tokio::sync::oneshot::Sender<Value>),
    params: Value,
    ev: EventBody,
    (started, minted): (Instant, Option<Minted>),
) {
    let outcome = until_revoked(&s, &c, async {
        let call = ("tools/call", params);
        crate::mcp_client::request(&s, &c.tool, Some(&c.claims), call, minted.as_ref()).await
    })
    .await;
    let mut result_ev = ev;
    result_ev.event_type = EventType::McpResult;
    let mut reflected = false;
    let (answer, status) = match outcome {
        Ok(r) => {
            reflected = r.reflected;
            let status = if r.result.get("isError") == Some(&Value::Bool(true)) {
                "tool_error"
            } else {
                "ok"
            };
            (jsonrpc::result(&id, r.result), status.to_owned())
        }
        Err(Failure::Rpc(code, message)) => (
            jsonrpc::error(Some(&id), code, &message, None),
            format!("rpc_error:{code}"),
        ),
        Err(Failure::Timeout) => (
            jsonrpc::error(
                Some(&id),
                UPSTREAM_TIMEOUT,
                "the MCP server did not answer in time",
                None,
            ),
            "timeout".to_owned(),
        ),
        Err(Failure::Revoked) => (
            jsonrpc::error(
                Some(&id),
                REVOKED,
                "the credential was revoked while the call ran; the call was cancelled",
                None,
            ),
            "revoked".to_owned(),
        ),
        Err(f @ Failure::Unreachable(_)) => (
            jsonrpc::error(Some(&id), UPSTREAM_FAILED, &f.to_string(), None),
            "upstream_failed".to_owned(),
        ),
    };
    merge(
        &mut result_ev.details,
        json!({"status": status, "duration_ms": started.elapsed().as_millis() as u64,
               "secret_reflected": reflected}),
    );
    let _ = answered.send(answer);
    // A failure to record the outcome is logged (the decision is durable).
    if let Err(e) = s.record(vec![result_ev]).await {
        tracing::warn!(
            "the outcome of an MCP call could not be recorded: {}",
            e.description
        );
    }
}

async fn refuse(s: &S, mut ev: EventBody, id: &Id, refusal: Refusal) -> Dispatched {
    ev.decision = Decision::Deny;
    let answer = match refusal {
        Refusal::Pending { asked, waiting } => return pending(s, ev, id, asked, waiting).await,
        Refusal::Rpc(code, message, data) => {
            if ev.reason.is_none() {
                ev.reason = Some(message.chars().take(256).collect());
            }
            Dispatched::Json(jsonrpc::error(Some(id), code, &message, data))
        }
        Refusal::Scope(scope) => Dispatched::NeedsScope(scope),
        Refusal::Policy(v) => {
            let reason = v
                .reason
                .clone()
                .unwrap_or_else(|| "denied by policy".into());
            Dispatched::Json(jsonrpc::result(
                id,
                json!({
                    "content": [{"type": "text", "text": format!("Refused by Mandate: {reason}")}],
                    "isError": true,
                    "_meta": {"dev.mandate/refusal": {"policies": v.policies, "reason": reason}},
                }),
            ))
        }
    };
    crate::alerts::judged_call(s, &ev, true).await;
    // A refusal is audited before it is answered.
    if s.record(vec![ev]).await.is_err() {
        return Dispatched::Json(jsonrpc::error(
            Some(id),
            NOT_RECORDED,
            "the gateway could not record its decision; try again",
            None,
        ));
    }
    answer
}

/// The call waits for humans: new approval requests are durable first
/// (with their event), then announced; the agent is told which approvals
/// it waits for and when to ask again (the same call, a new JSON-RPC id).
async fn pending(
    s: &S,
    mut ev: EventBody,
    id: &Id,
    asked: Vec<mandate_core::model::Approval>,
    waiting: Vec<mandate_core::model::Approval>,
) -> Dispatched {
    ev.decision = Decision::Pending;
    crate::alerts::judged_call(s, &ev, false).await;
    if !asked.is_empty() {
        ev.event_type = EventType::ApprovalRequest;
        merge(
            &mut ev.details,
            json!({"approval": asked[0].id, "approvals": asked.iter().map(|a| json!({"id": a.id, "policies": a.policies, "approvers": a.approvers})).collect::<Vec<_>>(),
                   "expires_at": asked[0].expires_at}),
        );
    }
    let creates: Vec<Mutation> = asked
        .iter()
        .cloned()
        .map(Mutation::CreateApproval)
        .collect();
    if s.commit(Entry {
        mutation: Mutation::all(creates),
        events: vec![ev],
    })
    .await
    .is_err()
    {
        return Dispatched::Json(jsonrpc::error(
            Some(id),
            NOT_RECORDED,
            "the gateway could not record the approval request; try again",
            None,
        ));
    }
    for a in &asked {
        crate::alerts::announce(s, "approval.requested", json!(a)).await;
    }
    let all: Vec<Value> = asked
        .iter()
        .chain(&waiting)
        .map(|a| {
            json!({"id": a.id, "policies": a.policies, "approvers": a.approvers,
                   "status": a.status, "expires_at": a.expires_at})
        })
        .collect();
    Dispatched::Json(jsonrpc::error(
        Some(id),
        judge::AUTHORIZATION_PENDING,
        "authorization_pending: humans must approve this call; send the same call again after `interval` seconds",
        Some(
            json!({"error": "authorization_pending", "approvals": all, "interval": judge::INTERVAL}),
        ),
    ))
}

fn event(s: &S, addr: SocketAddr, c: &Caller, id: &Id) -> EventBody {
    let id_shown: String = id
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    EventBody {
        details: json!({"method": "tools/call", "jsonrpc_id": id_shown}),
        ..caller_event(s, addr, c)
    }
}

/// An `mcp.call` event naming the caller (its run, agent, human and
/// credential) and the tool.
pub(super) fn caller_event(s: &S, addr: SocketAddr, c: &Caller) -> EventBody {
    let claims = &c.claims;
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
        ..Default::default()
    }
}

pub(super) fn merge(into: &mut Value, more: Value) {
    if !into.is_object() {
        *into = json!({});
    }
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), more) {
        a.extend(b);
    }
}
