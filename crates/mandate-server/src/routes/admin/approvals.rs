//! Human approval (issue 5 §1), eval gates and run suspension (§2).
//!
//! Approvers are principals; they authenticate with an approver credential
//! (`POST /v1/tenants/{t}/principals/{p}/approver-tokens`, shown once,
//! stored hashed), which decides approval requests and does nothing else.
//! An approval names who may decide it (`principal:<id>`, `group:<name>`);
//! the admin can read approvals but not decide them, and an agent's mandate
//! or credential is not an approver credential.

use super::*;
use mandate_core::approval::ApprovalStatus;

/// Prefix of approver credentials.
pub const APPROVER_TOKEN_PREFIX: &str = "mandate_approver_";

/// An approver credential's life when none is asked for (30 days).
pub const APPROVER_DEFAULT_TTL: u64 = 30 * 86_400;

/// The longest an approver credential may live (one year).
pub const APPROVER_MAX_TTL: u64 = 365 * 86_400;

/// Body of `POST .../approver-tokens` (may be empty).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewApproverToken {
    /// Seconds it lives (default [`APPROVER_DEFAULT_TTL`]).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// Who is calling an approvals endpoint.
enum Caller {
    Admin,
    Approver { tenant: String, principal: String },
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
        Some(t) if t.starts_with(APPROVER_TOKEN_PREFIX) => {
            let hash = crate::boot::token_hash(t);
            let reg = s.reg();
            let mut found = None;
            for a in &reg.approvers {
                if mandate_core::secret::ct_eq(&a.hash, &hash) {
                    found = Some(a.clone());
                }
            }
            let a = found.ok_or_else(|| {
                err(
                    Code::Unauthorized,
                    "the approver credential is not valid for this broker",
                )
            })?;
            if a.expires_at <= s.now_secs() {
                return Err(err(
                    Code::Unauthorized,
                    "the approver credential has expired; ask an admin for a new one (`mandate principal approver-token`)",
                ));
            }
            // It dies with itself, its principal and its tenant.
            if let Some(k) = reg.refused(&a.revocation_keys(), a.created) {
                return Err(err(
                    Code::Unauthorized,
                    format!(
                        "the approver credential has been revoked ({}); ask an admin for a new one",
                        mandate_core::revocation::kind(&k)
                    ),
                ));
            }
            Ok(Caller::Approver {
                tenant: a.tenant,
                principal: a.principal,
            })
        }
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

/// Whether `principal` of `tenant` may decide `a`.
fn may_decide(s: &S, tenant: &str, principal: &str, a: &Approval) -> bool {
    if a.tenant != tenant {
        return false;
    }
    let groups = s
        .reg()
        .principals
        .get(&(tenant.to_owned(), principal.to_owned()))
        .map(|p| p.groups.clone())
        .unwrap_or_default();
    a.approvers.iter().any(|w| {
        w.strip_prefix("principal:") == Some(principal)
            || w.strip_prefix("group:")
                .is_some_and(|g| groups.iter().any(|x| x == g))
    })
}

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
    let ttl = req.ttl_secs.unwrap_or(APPROVER_DEFAULT_TTL);
    if ttl == 0 || ttl > APPROVER_MAX_TTL {
        return Err(err(
            Code::InvalidRequest,
            format!("`ttl_secs` must be from 1 to {APPROVER_MAX_TTL} (one year)"),
        ));
    }
    need_tenant(&s, &tenant)?;
    if !s
        .reg()
        .principals
        .contains_key(&(tenant.clone(), principal.clone()))
    {
        return Err(err(
            Code::NotFound,
            format!(
                "principal `{}` not found in tenant `{tenant}`",
                short(&principal)
            ),
        ));
    }
    let secret = mandate_core::secret::Secret::random(&mut OsRng, 32);
    let token = format!(
        "{APPROVER_TOKEN_PREFIX}{}",
        mandate_core::jose::b64(secret.expose())
    );
    let id = random_id(&mut OsRng, "apv_");
    let expires_at = s.now_secs() + ttl;
    let mut ev = Ctx::new(&s, &headers, addr).event(
        mandate_core::audit::EventType::ApproverTokenCreate,
        Some(&tenant),
    );
    ev.principal = Some(principal.clone());
    ev.credential_id = Some(id.clone());
    s.commit(Entry {
        mutation: Some(Mutation::PutApproverToken(ApproverToken {
            id: id.clone(),
            hash: crate::boot::token_hash(&token),
            tenant: tenant.clone(),
            principal: principal.clone(),
            created_ms: s.now_ms(),
            expires_at,
        })),
        events: vec![ev],
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "tenant": tenant, "principal": principal, "token": token, "expires_at": expires_at}),
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
    q: Result<Query<ApprovalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&s, &headers)?;
    let Query(q) = q.map_err(|e| err(Code::InvalidRequest, e.body_text()))?;
    let tenant = match &who {
        Caller::Admin => q.tenant.clone(),
        Caller::Approver { tenant, .. } => Some(tenant.clone()),
    };
    let now = s.now_secs();
    let all = s.store.list_approvals(
        tenant.as_deref(),
        q.status,
        q.limit.unwrap_or(100).min(1000),
    )?;
    let shown: Vec<Value> = all
        .iter()
        .filter(|a| match &who {
            Caller::Admin => true,
            Caller::Approver { tenant, principal } => may_decide(&s, tenant, principal, a),
        })
        .map(|a| view(a, now))
        .collect();
    Ok(Json(json!(shown)))
}

fn load(s: &S, who: &Caller, id: &str) -> Result<Approval, ApiError> {
    let a = s.store.approval(id)?;
    match (a, who) {
        (Some(a), Caller::Admin) => Ok(a),
        (Some(a), Caller::Approver { tenant, principal })
            if may_decide(s, tenant, principal, &a) =>
        {
            Ok(a)
        }
        (Some(_), Caller::Approver { principal, .. }) => Err(err(
            Code::Forbidden,
            format!("`{principal}` is not an approver of this request"),
        )),
        (None, _) => Err(err(
            Code::NotFound,
            format!("approval `{}` not found", short(id)),
        )),
    }
}

/// `GET /v1/approvals/{id}`.
pub async fn show_approval(
    State(s): State<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&s, &headers)?;
    Ok(Json(view(&load(&s, &who, &id)?, s.now_secs())))
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
    let Caller::Approver { principal, .. } = &who else {
        return Err(err(
            Code::Forbidden,
            "the admin credential reads approvals but does not decide them; use an approver credential (`mandate principal approver-token`)",
        ));
    };
    let d: Decision = optional_json(s, raw)?;
    if let Some(c) = &d.comment {
        ids::check_text("comment", c, 1024).map_err(bad)?;
    }
    let a = load(s, &who, id)?;
    let now = s.now_secs();
    if a.status != ApprovalStatus::Pending || a.expires_at < now {
        return Err(err(
            Code::Conflict,
            format!(
                "approval `{}` is {}; only a pending, unexpired request can be decided",
                a.id,
                if a.status == ApprovalStatus::Pending {
                    "expired"
                } else {
                    a.status.as_str()
                }
            ),
        ));
    }
    let by = format!("principal:{principal}");
    let mut ev = Ctx::new(s, headers, addr).event(
        mandate_core::audit::EventType::ApprovalDecide,
        Some(&a.tenant),
    );
    ev.decision = if status == ApprovalStatus::Approved {
        mandate_core::audit::Decision::Approve
    } else {
        mandate_core::audit::Decision::Deny
    };
    ev.actor = Some(by.clone());
    ev.agent = Some(a.agent.clone());
    ev.run = Some(a.run.clone());
    ev.principal = a.principal.clone();
    ev.tool = Some(a.tool.clone());
    ev.actions = a.actions.clone();
    ev.reason = d.comment.clone();
    ev.details =
        json!({"approval": a.id, "request_digest": a.request_digest, "details": a.details});
    s.commit(Entry {
        mutation: Some(Mutation::DecideApproval {
            id: a.id.clone(),
            status,
            by: by.clone(),
            comment: d.comment.clone(),
            decided_ms: s.now_ms(),
            now,
        }),
        events: vec![ev],
    })
    .await
    .map_err(if_not_found(
        Code::Conflict,
        "the request was decided by someone else or expired meanwhile".into(),
    ))?;
    let decided = s.store.approval(id)?.unwrap_or(a);
    crate::alerts::announce(s, "approval.decided", json!(decided)).await;
    Ok(Json(view(&decided, now)))
}

/// Body of `POST /v1/runs/{id}/evals`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalReport {
    name: String,
    passed: bool,
    #[serde(default)]
    score: Option<f64>,
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
    ids::check_slug("eval name", &r.name).map_err(bad)?;
    let run = find_run(&s, &id)?;
    if run.ended_ms.is_some() {
        return Err(err(Code::Conflict, format!("run `{id}` has ended")));
    }
    let mut ev = Ctx::new(&s, &headers, addr)
        .event(mandate_core::audit::EventType::RunEval, Some(&run.tenant));
    ev.decision = if r.passed {
        mandate_core::audit::Decision::Ok
    } else {
        mandate_core::audit::Decision::Fail
    };
    ev.agent = Some(run.agent.clone());
    ev.run = Some(id.clone());
    ev.principal = run.principal.clone();
    ev.details = json!({"eval": r.name, "passed": r.passed, "score": r.score});
    s.commit(Entry {
        mutation: None,
        events: vec![ev],
    })
    .await?;
    if let Ok(mut h) = s.history.lock() {
        h.eval(&id, &r.name, r.passed, s.now_secs());
    }
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
    ids::check_text("reason", &reason, 512).map_err(bad)?;
    run_state(
        &s,
        addr,
        &headers,
        &id,
        Mutation::SuspendRun {
            id: id.clone(),
            ms: s.now_ms(),
            reason,
        },
    )
    .await
}

/// `POST /v1/runs/{id}/resume` (admin).
pub async fn resume_run(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    run_state(
        &s,
        addr,
        &headers,
        &id,
        Mutation::ResumeRun { id: id.clone() },
    )
    .await
}

async fn run_state(
    s: &S,
    addr: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    m: Mutation,
) -> Result<Json<Value>, ApiError> {
    let run = find_run(s, id)?;
    let suspend = matches!(m, Mutation::SuspendRun { .. });
    let mut ev = Ctx::new(s, headers, addr).event(
        if suspend {
            mandate_core::audit::EventType::RunSuspend
        } else {
            mandate_core::audit::EventType::RunResume
        },
        Some(&run.tenant),
    );
    ev.agent = Some(run.agent.clone());
    ev.run = Some(id.to_owned());
    ev.principal = run.principal.clone();
    if let Mutation::SuspendRun { reason, .. } = &m {
        ev.reason = Some(reason.clone());
    }
    s.commit(Entry {
        mutation: Some(m),
        events: vec![ev],
    })
    .await
    .map_err(if_not_found(
        Code::Conflict,
        if suspend {
            format!("run `{id}` has ended")
        } else {
            format!("run `{id}` is not suspended")
        },
    ))?;
    Ok(Json(json!({"run": id, "suspended": suspend})))
}
