//! Human approval, eval gates and run suspension: parse (and say who
//! calls), [`crate::services::approvals`], render.

use super::*;
use crate::services::approvals::{self, APPROVER_TOKEN_PREFIX, Caller, EvalReport};
use mandate_core::approval::ApprovalStatus;

/// Body of `POST .../approver-tokens` (may be empty).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewApproverToken {
    /// Seconds it lives (default [`approvals::APPROVER_DEFAULT_TTL`]).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// Who calls (an approver or the admin); a refusal is audited through the
/// throttle for unauthenticated callers.
fn caller(s: &S, headers: &HeaderMap) -> Result<Caller, ApiError> {
    identify_caller(s, headers)
        .map_err(|e| e.unauthenticated(mandate_core::audit::EventType::AdminAuth))
}

fn identify_caller(s: &S, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if t.starts_with(APPROVER_TOKEN_PREFIX) => approvals::approver(s, t),
        Some(_) => require_admin(s, headers).map(|_| Caller::Admin).map_err(|_| {
            err(
                Code::Unauthorized,
                "send an approver credential (`mandate principal approver-token`) or, to read, the admin credential; an agent's mandate or credential cannot approve",
            )
        }),
        None => Err(err(
            Code::Unauthorized,
            "send `Authorization: Bearer <approver credential>`",
        )),
    }
}

/// An approval as shown: `expired` once a pending one can no longer be decided.
fn view(a: &Approval, now: u64) -> Value {
    let mut v = json!(a);
    if a.status == ApprovalStatus::Pending && a.expires_at < now {
        v["status"] = json!("expired");
    }
    v
}

/// `POST /v1/tenants/{t}/principals/{p}/approver-tokens` (admin).
pub async fn create_approver_token(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, principal)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let raw = body(raw, s.config.max_body)?;
    let req: NewApproverToken = if raw.iter().all(u8::is_ascii_whitespace) {
        NewApproverToken::default()
    } else {
        json_body(&raw)?
    };
    let made = approvals::create_approver_token(
        &s,
        &origin(addr, &headers),
        (&tenant, &principal),
        req.ttl_secs,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": made.id, "tenant": tenant, "principal": principal, "token": made.token, "expires_at": made.expires_at}),
        ),
    ))
}

/// Query of `GET /v1/approvals`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    tenant: Option<String>,
    status: Option<ApprovalStatus>,
    limit: Option<u32>,
}

/// `GET /v1/approvals`: an approver sees what it may decide; the admin sees all.
pub async fn list_approvals(
    State(s): State<S>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&s, &headers)?;
    let q: ApprovalQuery = super::super::query_of(&uri)?;
    let now = s.now_secs();
    let shown: Vec<Value> = approvals::list(&s, &who, q.tenant, q.status, q.limit)?
        .iter()
        .map(|a| view(a, now))
        .collect();
    Ok(Json(json!(shown)))
}

/// `GET /v1/approvals/{id}`.
pub async fn show_approval(
    State(s): State<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&s, &headers)?;
    Ok(Json(view(&approvals::show(&s, &who, &id)?, s.now_secs())))
}

/// Body of approve and deny.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/approvals/{id}/approve`.
pub async fn approve(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    decide(&s, addr, &headers, &id, raw, ApprovalStatus::Approved).await
}

/// `POST /v1/approvals/{id}/deny`.
pub async fn deny(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    decide(&s, addr, &headers, &id, raw, ApprovalStatus::Denied).await
}

async fn decide(
    s: &S,
    addr: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    raw: Result<Bytes, BytesRejection>,
    status: ApprovalStatus,
) -> Result<Json<Value>, ApiError> {
    let who = caller(s, headers)?;
    if matches!(who, Caller::Admin) {
        return Err(err(
            Code::Forbidden,
            "the admin credential reads approvals but does not decide them; use an approver credential (`mandate principal approver-token`)",
        ));
    }
    let d: Decision = optional_json(s, raw)?;
    let decided =
        approvals::decide(s, &origin(addr, headers), &who, (id, status), d.comment).await?;
    Ok(Json(view(&decided, s.now_secs())))
}

/// `POST /v1/runs/{id}/evals` (admin, or the orchestrator holding it): an
/// eval gate's result for a run, which policies see as
/// `context.history.evals_passed`.
pub async fn report_eval(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(r): JsonBody<EvalReport>,
) -> Result<Json<Value>, ApiError> {
    approvals::report_eval(&s, &origin(addr, &headers), &id, &r).await?;
    Ok(Json(json!({"run": id, "eval": r.name, "passed": r.passed})))
}

/// Body of `POST /v1/runs/{id}/suspend`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Suspend {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/runs/{id}/suspend` (admin): its exchanges wait.
pub async fn suspend_run(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: Suspend = optional_json(&s, raw)?;
    let reason = req.reason.unwrap_or_else(|| "suspended by an admin".into());
    approvals::set_suspended(&s, &origin(addr, &headers), &id, Some(reason)).await?;
    Ok(Json(json!({"run": id, "suspended": true})))
}

/// `POST /v1/runs/{id}/resume` (admin).
pub async fn resume_run(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    approvals::set_suspended(&s, &origin(addr, &headers), &id, None).await?;
    Ok(Json(json!({"run": id, "suspended": false})))
}
