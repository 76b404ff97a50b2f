//! Human approval (issue 5 §1), eval gates and run suspension (§2).
//!
//! Approvers are principals; they authenticate with an approver credential
//! (shown once, stored hashed), which decides approval requests and does
//! nothing else. An approval names who may decide it (`principal:<id>`,
//! `group:<name>`); the admin can read approvals but not decide them, and an
//! agent's mandate or credential is not an approver credential.

use rand_core::OsRng;
use serde::Deserialize;
use serde_json::json;

use mandate_core::approval::ApprovalStatus;
use mandate_core::audit::{Decision, EventType};
use mandate_core::ids::{self, random_id};
use mandate_core::model::{Approval, ApproverToken};
use mandate_store::{Entry, Mutation};

use super::{bad, find_run, if_not_found, need_tenant, short};
use crate::error::{ApiError, Code, err};
use crate::origin::Origin;
use crate::state::AppState;

/// Prefix of approver credentials.
pub const APPROVER_TOKEN_PREFIX: &str = "mandate_approver_";

/// An approver credential's life when none is asked for (30 days).
pub const APPROVER_DEFAULT_TTL: u64 = 30 * 86_400;

/// The longest an approver credential may live (one year).
pub const APPROVER_MAX_TTL: u64 = 365 * 86_400;

/// Who is calling an approvals endpoint.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The admin: reads everything, decides nothing.
    Admin,
    /// An approver: a principal of a tenant.
    Approver {
        /// Its tenant.
        tenant: String,
        /// The principal.
        principal: String,
        /// The credential's revocation ids and when it was made (seconds):
        /// checked again in a decision's commit.
        revoked_by: (Vec<String>, u64),
    },
}

/// The approver an approver credential (`token`) names, if it is valid,
/// unexpired and not revoked.
pub fn approver(s: &AppState, token: &str) -> Result<Caller, ApiError> {
    let hash = crate::boot::token_hash(token);
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
        revoked_by: (a.revocation_keys(), a.created),
        tenant: a.tenant,
        principal: a.principal,
    })
}

/// Whether `principal` of `tenant` may decide `a`.
fn may_decide(s: &AppState, tenant: &str, principal: &str, a: &Approval) -> bool {
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

/// A new approver credential, shown once.
pub struct NewApproverCredential {
    /// Its id (`apv_...`).
    pub id: String,
    /// The credential.
    pub token: String,
    /// Expiry (seconds).
    pub expires_at: u64,
}

/// Makes an approver credential for `principal` of `tenant`.
pub async fn create_approver_token(
    s: &AppState,
    origin: &Origin,
    (tenant, principal): (&str, &str),
    ttl_secs: Option<u64>,
) -> Result<NewApproverCredential, ApiError> {
    let ttl = ttl_secs.unwrap_or(APPROVER_DEFAULT_TTL);
    if ttl == 0 || ttl > APPROVER_MAX_TTL {
        return Err(err(
            Code::InvalidRequest,
            format!("`ttl_secs` must be from 1 to {APPROVER_MAX_TTL} (one year)"),
        ));
    }
    need_tenant(s, tenant)?;
    if !s
        .reg()
        .principals
        .contains_key(&(tenant.to_owned(), principal.to_owned()))
    {
        return Err(err(
            Code::NotFound,
            format!(
                "principal `{}` not found in tenant `{tenant}`",
                short(principal)
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
    let mut ev = origin.admin_event(EventType::ApproverTokenCreate, Some(tenant), s.now_ms());
    ev.principal = Some(principal.to_owned());
    ev.credential_id = Some(id.clone());
    s.commit(Entry {
        mutation: Some(Mutation::PutApproverToken(ApproverToken {
            id: id.clone(),
            hash: crate::boot::token_hash(&token),
            tenant: tenant.to_owned(),
            principal: principal.to_owned(),
            created_ms: s.now_ms(),
            expires_at,
        })),
        events: vec![ev],
    })
    .await?;
    Ok(NewApproverCredential {
        id,
        token,
        expires_at,
    })
}

/// Approvals `who` may see: an approver what it may decide (in its
/// tenant), the admin all (of `tenant`, if named); newest first.
pub fn list(
    s: &AppState,
    who: &Caller,
    tenant: Option<String>,
    status: Option<ApprovalStatus>,
    limit: Option<u32>,
) -> Result<Vec<Approval>, ApiError> {
    let tenant = match who {
        Caller::Admin => tenant,
        Caller::Approver { tenant, .. } => Some(tenant.clone()),
    };
    let all = s
        .store
        .list_approvals(tenant.as_deref(), status, limit.unwrap_or(100).min(1000))?;
    Ok(all
        .into_iter()
        .filter(|a| match who {
            Caller::Admin => true,
            Caller::Approver {
                tenant, principal, ..
            } => may_decide(s, tenant, principal, a),
        })
        .collect())
}

/// One approval, if `who` may see it.
pub fn show(s: &AppState, who: &Caller, id: &str) -> Result<Approval, ApiError> {
    let a = s.store.approval(id)?;
    match (a, who) {
        (Some(a), Caller::Admin) => Ok(a),
        (
            Some(a),
            Caller::Approver {
                tenant, principal, ..
            },
        ) if may_decide(s, tenant, principal, &a) => Ok(a),
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

/// An approver decides a pending, unexpired approval (`status`: approved
/// or denied); the decision is durable with its event, then announced.
pub async fn decide(
    s: &AppState,
    origin: &Origin,
    who: &Caller,
    (id, status): (&str, ApprovalStatus),
    comment: Option<String>,
) -> Result<Approval, ApiError> {
    let Caller::Approver {
        principal,
        revoked_by,
        ..
    } = who
    else {
        return Err(err(
            Code::Forbidden,
            "the admin credential reads approvals but does not decide them; use an approver credential (`mandate principal approver-token`)",
        ));
    };
    if let Some(c) = &comment {
        ids::check_text("comment", c, 1024).map_err(bad)?;
    }
    let a = show(s, who, id)?;
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
    let mut ev = origin.admin_event(EventType::ApprovalDecide, Some(&a.tenant), s.now_ms());
    ev.decision = if status == ApprovalStatus::Approved {
        Decision::Approve
    } else {
        Decision::Deny
    };
    ev.actor = Some(by.clone());
    ev.agent = Some(a.agent.clone());
    ev.run = Some(a.run.clone());
    ev.principal = a.principal.clone();
    ev.tool = Some(a.tool.clone());
    ev.actions = a.actions.clone();
    ev.reason = comment.clone();
    ev.details = json!({"approval": a.id, "request_digest": a.request_digest,
            "details": mandate_core::mcp::args::audit_view(&a.details)});
    // The approver's credential is checked again in the commit: revoked
    // at another broker a moment ago, it decides nothing.
    s.commit(Entry {
        mutation: Mutation::all(vec![
            Mutation::Unrevoked {
                keys: revoked_by.0.clone(),
                issued_at: revoked_by.1,
                now,
            },
            Mutation::DecideApproval {
                id: a.id.clone(),
                status,
                by,
                comment,
                decided_ms: s.now_ms(),
                now,
            },
        ]),
        events: vec![ev],
    })
    .await
    .map_err(if_not_found(
        Code::Conflict,
        "the request was decided by someone else or expired meanwhile".into(),
    ))?;
    let decided = s.store.approval(id)?.unwrap_or(a);
    crate::alerts::announce(s, "approval.decided", json!(decided)).await;
    Ok(decided)
}

/// An eval gate's result for a run (`POST /v1/runs/{id}/evals`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalReport {
    /// The eval's name (a slug).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Its score, if any.
    #[serde(default)]
    pub score: Option<f64>,
}

/// Records an eval gate's result for run `id`, which policies see as
/// `context.history.evals_passed`.
pub async fn report_eval(
    s: &AppState,
    origin: &Origin,
    id: &str,
    r: &EvalReport,
) -> Result<(), ApiError> {
    ids::check_slug("eval name", &r.name).map_err(bad)?;
    let run = find_run(s, id)?;
    if run.ended_ms.is_some() {
        return Err(err(Code::Conflict, format!("run `{id}` has ended")));
    }
    let mut ev = origin.admin_event(EventType::RunEval, Some(&run.tenant), s.now_ms());
    ev.decision = if r.passed {
        Decision::Ok
    } else {
        Decision::Fail
    };
    ev.agent = Some(run.agent.clone());
    ev.run = Some(id.to_owned());
    ev.principal = run.principal.clone();
    ev.details = json!({"eval": r.name, "passed": r.passed, "score": r.score});
    s.record(vec![ev]).await?;
    if let Ok(mut h) = s.history.lock() {
        h.eval(id, &r.name, r.passed, s.now_secs());
    }
    Ok(())
}

/// Suspends run `id` (`Some(reason)`: its exchanges wait) or resumes it
/// (`None`).
pub async fn set_suspended(
    s: &AppState,
    origin: &Origin,
    id: &str,
    reason: Option<String>,
) -> Result<(), ApiError> {
    if let Some(r) = &reason {
        ids::check_text("reason", r, 512).map_err(bad)?;
    }
    let run = find_run(s, id)?;
    let suspend = reason.is_some();
    let event_type = if suspend {
        EventType::RunSuspend
    } else {
        EventType::RunResume
    };
    let mut ev = origin.admin_event(event_type, Some(&run.tenant), s.now_ms());
    ev.agent = Some(run.agent.clone());
    ev.run = Some(id.to_owned());
    ev.principal = run.principal.clone();
    ev.reason = reason.clone();
    let m = match reason {
        Some(reason) => Mutation::SuspendRun {
            id: id.to_owned(),
            ms: s.now_ms(),
            reason,
        },
        None => Mutation::ResumeRun { id: id.to_owned() },
    };
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
    Ok(())
}
