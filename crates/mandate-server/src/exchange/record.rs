//! Record: the outcome of an exchange made durable before anyone learns it
//! (DESIGN "audit first"): the issuance event with everything it spends in
//! one commit, then the provider makes the credential; approval requests
//! durable, then announced; refusals audited (those before the caller
//! proved a key, through the per-client throttle).

use mandate_core::approval::ApprovalStatus;
use mandate_core::audit::EventBody;
use mandate_core::credential::AccessClaims;
use mandate_core::mandate::MandateClaims;
use mandate_core::model::{Approval, Revocation};
use mandate_core::policy::PolicyApprovers;
use mandate_store::{Entry, Mutation};
use rand_core::OsRng;
use serde_json::{Value, json};

use super::gather::Facts;
use super::request::ExchangeRequest;
use super::{Denial, Issued, Known, Outcome};
use crate::error::{Code, err};
use crate::providers::{self, Issue, Prepared};
use crate::state::{AppState, CommitRefused};

/// What the decide stage allowed, to record and issue.
pub(super) struct Grant {
    /// The credential's claims.
    pub claims: AccessClaims,
    /// What the provider prepared.
    pub prepared: Prepared,
    /// Use-limited attenuation blocks to count (block id, limit).
    pub count_uses: Vec<(String, u64)>,
    /// Expiry of the mandate (when the counts can be forgotten).
    pub mandate_exp: u64,
    /// The approvals this credential spends (one per `@approval` policy).
    pub approvals: Vec<Approval>,
    /// The policies that allowed it.
    pub policies: Vec<String>,
}

/// Approval requests to make.
pub(super) struct Ask {
    /// New requests.
    pub asked: Vec<Approval>,
    /// Requests already waiting.
    pub pending: Vec<Approval>,
    /// What to tell the agent.
    pub message: String,
    /// Why, for the audit trail.
    pub rule: String,
    /// The policies that asked.
    pub policies: Vec<String>,
}

/// The exchange's audit event, with what is known.
fn event(s: &AppState, k: &Known<'_>, policies: &[String]) -> EventBody {
    let m = k.mandate.as_deref();
    EventBody {
        time_ms: s.now_ms(),
        event_type: mandate_core::audit::EventType::TokenExchange,
        tenant: m.map(|m| m.tenant.clone()),
        agent: m.map(|m| m.agent.clone()),
        run: m.map(|m| m.run.clone()),
        principal: m.and_then(|m| m.principal.clone()),
        task: m.map(|m| m.task.clone()),
        tool: Some(k.tool.clone()),
        actions: k.req.actions.clone(),
        policies: policies.to_vec(),
        correlation_id: Some(k.req.correlation_id.clone()),
        client_addr: crate::routes::client(Some(k.req.client)),
        ..Default::default()
    }
}

/// A refusal, audited. Before the caller proved a run's key a refusal is
/// anyone's: it goes through the per-client throttle, so no unauthenticated
/// caller writes one event per request.
pub(super) async fn refused(s: &AppState, k: &Known<'_>, d: Denial, now: u64) -> Outcome {
    if k.pop.is_none() {
        return Outcome::Denied(Denial {
            error: d
                .error
                .unauthenticated(mandate_core::audit::EventType::TokenExchange),
            ..d
        });
    }
    let mut ev = event(s, k, &d.policies);
    ev.decision = mandate_core::audit::Decision::Deny;
    ev.reason = Some(
        d.rule
            .clone()
            .unwrap_or_else(|| format!("{}: {}", d.error.code.as_str(), d.error.description)),
    );
    // The proof is spent with the refusal too: replayed at another broker
    // later (once an approval came, say) it is refused there.
    if let Err(e) = commit_spending(
        s,
        k,
        Entry {
            mutation: None,
            events: vec![ev],
        },
    )
    .await
    {
        return Outcome::Denied(e.into());
    }
    // A denial counts against the run only once its key was proven: someone
    // who saw a mandate without its key cannot make it look anomalous (and
    // get it suspended).
    if let Some(m) = k.mandate.as_deref() {
        crate::alerts::judged(s, m.into(), now, true).await;
    }
    Outcome::Denied(d)
}

/// Waiting (for approvals, or a suspended run) counts toward the run's
/// request rate (anomalies).
pub(super) async fn waiting(
    s: &AppState,
    k: &Known<'_>,
    approvals: Vec<Approval>,
    message: String,
    now: u64,
) -> Outcome {
    if let (Some(m), Some(_)) = (k.mandate.as_deref(), k.pop) {
        crate::alerts::judged(s, m.into(), now, false).await;
    }
    // Nothing else is recorded while a request waits; its proof is spent.
    if let Err(e) = commit_spending(
        s,
        k,
        Entry {
            mutation: None,
            events: Vec::new(),
        },
    )
    .await
    {
        return Outcome::Denied(e.into());
    }
    Outcome::Waiting {
        approvals: approvals.iter().map(Into::into).collect(),
        message,
    }
}

/// A new approval request for one refusing policy.
pub(super) fn approval_request(
    m: &MandateClaims,
    req: &ExchangeRequest,
    tool: &str,
    digest: &str,
    approvers: Vec<String>,
    p: &PolicyApprovers,
    (requested_ms, expires_at): (u64, u64),
) -> Approval {
    Approval {
        id: mandate_core::ids::random_id(&mut OsRng, "apr_"),
        tenant: m.tenant.clone(),
        run: m.run.clone(),
        agent: m.agent.clone(),
        principal: m.principal.clone(),
        tool: tool.to_owned(),
        actions: req.actions.clone(),
        details: req.details_json.clone(),
        request_digest: digest.to_owned(),
        approvers,
        policies: vec![p.policy.clone()],
        status: ApprovalStatus::Pending,
        requested_ms,
        expires_at,
        decided_by: None,
        decided_ms: None,
        comment: None,
    }
}

/// New approval requests: durable first, then announced.
pub(super) async fn ask(s: &AppState, k: &Known<'_>, ask: Ask, now: u64) -> Outcome {
    if let (Some(m), Some(_)) = (k.mandate.as_deref(), k.pop) {
        crate::alerts::judged(s, m.into(), now, false).await;
    }
    let mut ev = event(s, k, &ask.policies);
    ev.event_type = mandate_core::audit::EventType::ApprovalRequest;
    ev.decision = mandate_core::audit::Decision::Pending;
    ev.reason = Some(ask.rule);
    let first = &ask.asked[0];
    ev.details = json!({"approval": first.id,
        "approvals": ask.asked.iter().map(|a| json!({"id": a.id, "policies": a.policies, "approvers": a.approvers})).collect::<Vec<_>>(),
        "approvers": first.approvers, "details": first.details, "expires_at": first.expires_at});
    let creates: Vec<Mutation> = ask
        .asked
        .iter()
        .cloned()
        .map(Mutation::CreateApproval)
        .collect();
    if let Err(e) = commit_spending(
        s,
        k,
        Entry {
            mutation: Mutation::all(creates),
            events: vec![ev],
        },
    )
    .await
    {
        return Outcome::Denied(e.into());
    }
    for a in &ask.asked {
        crate::alerts::announce(s, "approval.requested", json!(a)).await;
    }
    Outcome::ApprovalRequested {
        approvals: ask
            .asked
            .iter()
            .chain(&ask.pending)
            .map(Into::into)
            .collect(),
        message: ask.message,
    }
}

/// Commits `entry` with the use of the request's proof (if it proved
/// anything): a proof is spent whatever it obtained, at every broker on the
/// store. A proof already spent elsewhere is refused, and the refusal is
/// recorded instead of `entry`.
async fn commit_spending(
    s: &AppState,
    k: &Known<'_>,
    mut entry: Entry,
) -> Result<(), crate::error::ApiError> {
    let Some(spent) = k.spent.clone() else {
        return s.commit(entry).await.map(|_| ());
    };
    let now = s.now_secs();
    let first = Mutation::FirstUse {
        uses: vec![spent],
        now,
    };
    entry.mutation = Mutation::all(entry.mutation.into_iter().chain([first]).collect());
    let events = entry.events.clone();
    match s.commit_outcome(entry).await {
        Ok(_) => Ok(()),
        Err(CommitRefused::Replayed(key)) => {
            let mut ev = events
                .into_iter()
                .next()
                .unwrap_or_else(|| event(s, k, &[]));
            ev.event_type = mandate_core::audit::EventType::TokenExchange;
            ev.decision = mandate_core::audit::Decision::Deny;
            ev.reason =
                Some("proof of possession replayed (used before at this or another broker)".into());
            ev.credential_id = None;
            s.record(vec![ev]).await?;
            Err(CommitRefused::Replayed(key).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The issuance event's details.
fn issue_details(k: &Known<'_>, g: &Grant, provider: &str) -> Value {
    let c = &g.claims;
    let mut d = json!({"grant": c.grant, "aud": c.aud, "provider": provider,
        "proof": k.pop.map(|p| p.as_str()), "bound": c.cnf.is_some()});
    if let Some(a) = &k.req.details.amount {
        d["amount"] = json!(a);
    }
    if !g.approvals.is_empty() {
        // "performed X, approved by alice at 09:22 UTC" (and by finance's
        // bob: one approval per policy that asked).
        let list: Vec<Value> = g
            .approvals
            .iter()
            .map(|a| {
                json!({"id": a.id, "approved_by": a.decided_by,
                "approved_ms": a.decided_ms, "request_digest": a.request_digest,
                "policies": a.policies})
            })
            .collect();
        d["approval"] = list[0].clone();
        d["approvals"] = json!(list);
    }
    if let Some(m) = k.mandate.as_deref().filter(|m| !m.hops.is_empty()) {
        d["hops"] = json!(m.hops);
        d["holder"] = json!(m.cnf_jkt);
        if let Some(p) = &m.resource_prefix {
            d["path_prefix"] = json!(p);
        }
    }
    d
}

/// What the exchange's commit must find unrevoked: the credential's
/// lineage and the mandate's, as of the earlier of their issue times (the
/// kill switch refuses what descends from a mandate issued before it).
fn unrevoked(k: &Known<'_>, claims: &AccessClaims, now: u64) -> Mutation {
    let mut keys = claims.revocation_keys();
    let mut issued_at = claims.iat;
    if let Some(m) = k.mandate.as_deref() {
        for key in m.revocation_keys() {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        issued_at = issued_at.min(m.issued_at);
    }
    Mutation::Unrevoked {
        keys,
        issued_at,
        now,
    }
}

/// Records an allowed exchange (one commit: the event, the provider's
/// lease, the attenuation use counts, the spent approvals), checks that no
/// revocation won the race, and has the provider make the credential.
pub(super) async fn issue(s: &AppState, k: &Known<'_>, f: &Facts, g: Grant, now: u64) -> Outcome {
    let provider = providers::of(f.tool.provider);
    let recorded = provider.record(&g.claims, &f.tool, &g.prepared);
    let claims = &g.claims;
    let mut ev = event(s, k, &g.policies);
    ev.decision = mandate_core::audit::Decision::Allow;
    ev.credential_id = Some(claims.jti.clone());
    ev.credential_exp = Some(claims.exp);
    ev.details = issue_details(k, &g, f.tool.provider.as_str());
    if let Some(o) = recorded.details.as_object() {
        for (key, v) in o {
            ev.details[key] = v.clone();
        }
    }
    let withheld = ev.clone();
    // First, in the commit's own transaction: no revocation committed before
    // it (at any broker on the store) refuses what it issues, and the proof
    // was not used before (at any broker).
    let mut mutations = vec![unrevoked(k, claims, now)];
    mutations.extend(
        k.spent
            .clone()
            .map(|u| Mutation::FirstUse { uses: vec![u], now }),
    );
    mutations.extend(recorded.lease.clone().map(Mutation::CreateLease));
    if !g.count_uses.is_empty() {
        mutations.push(Mutation::CountUses {
            blocks: g.count_uses.clone(),
            until: g.mandate_exp,
        });
    }
    for a in &g.approvals {
        // Spent with the credential they allowed: never twice.
        mutations.push(Mutation::UseApproval { id: a.id.clone() });
    }
    let committed = s
        .commit_outcome(Entry {
            mutation: Mutation::all(mutations),
            events: vec![ev],
        })
        .await;
    let e = match committed {
        Ok(_) => None,
        Err(CommitRefused::Revoked(key)) => {
            return revoked_in_flight(s, withheld, &key).await;
        }
        Err(CommitRefused::Replayed(_)) => {
            return refused_at_commit(
                s,
                withheld,
                "proof of possession replayed (used before at this or another broker)",
                err(
                    Code::InvalidDpopProof,
                    "this proof of possession was already used; make a fresh one for every request",
                ),
            )
            .await;
        }
        Err(CommitRefused::Failed(e)) => Some(e),
    };
    if let Some(e) = e {
        if e.code == Code::Conflict && !g.approvals.is_empty() {
            return Outcome::Denied(
                err(
                    Code::InvalidGrant,
                    "this approval was already used for a credential; ask again",
                )
                .into(),
            );
        }
        if e.code == Code::Conflict && !g.count_uses.is_empty() {
            // Another exchange took the last use first.
            return refused_at_commit(
                s,
                withheld,
                "use limit of an attenuation block reached",
                err(
                    Code::InvalidGrant,
                    "an attenuation block's use limit was reached; ask the holder before you for a new mandate",
                ),
            )
            .await;
        }
        return Outcome::Denied(e.into());
    }
    // A revocation committed while this exchange was in flight wins: the
    // credential is not returned, and the trail says so.
    let revoked = s.reg().refused(&claims.revocation_keys(), claims.iat);
    if let Some(key) = revoked {
        return revoked_in_flight(s, withheld, &key).await;
    }
    let made = provider
        .issue(
            s,
            Issue {
                claims,
                tool: &f.tool,
                prepared: &g.prepared,
                recorded: &recorded,
            },
        )
        .await;
    let credential = match made {
        Ok(c) => c,
        Err(e) => return failed(s, withheld, claims, e).await,
    };
    if let Some(m) = k.mandate.as_deref() {
        let actions: Vec<String> = claims.scope.split(' ').map(str::to_owned).collect();
        let first = s
            .history
            .lock()
            .map(|mut h| {
                h.issued(
                    (&m.tenant, &m.agent, &f.tool.name),
                    &m.run,
                    &actions,
                    &f.tool.labels,
                    k.req.details.amount,
                    now,
                )
            })
            .unwrap_or(false);
        crate::alerts::issued(s, m, &f.tool.name, first, now).await;
    }
    Outcome::Issued(Box::new(Issued {
        claims: g.claims,
        credential,
    }))
}

/// An allowed exchange whose credential is not returned after all: the
/// trail says why.
/// A revocation committed while the exchange was in flight (found in its
/// commit, or in memory after it) wins: nothing is returned, and the trail
/// says so.
async fn revoked_in_flight(s: &AppState, withheld: EventBody, key: &str) -> Outcome {
    withhold(
        s,
        withheld,
        mandate_core::audit::EventType::TokenWithheld,
        format!("revoked while the exchange was in flight: {key}"),
        err(
            Code::InvalidGrant,
            "the mandate has been revoked; start a new run",
        ),
    )
    .await
}

/// The exchange's commit refused it (nothing was issued): its event is
/// recorded as a denial without a credential.
async fn refused_at_commit(
    s: &AppState,
    mut ev: EventBody,
    reason: &str,
    error: crate::error::ApiError,
) -> Outcome {
    ev.credential_id = None;
    withhold(
        s,
        ev,
        mandate_core::audit::EventType::TokenExchange,
        reason.into(),
        error,
    )
    .await
}

async fn withhold(
    s: &AppState,
    mut ev: EventBody,
    event_type: mandate_core::audit::EventType,
    reason: String,
    error: crate::error::ApiError,
) -> Outcome {
    ev.time_ms = s.now_ms();
    ev.event_type = event_type;
    ev.decision = mandate_core::audit::Decision::Deny;
    ev.reason = Some(reason);
    if let Err(e) = s.record(vec![ev]).await {
        return Outcome::Denied(e.into());
    }
    Outcome::Denied(error.into())
}

/// The provider could not make a recorded credential: it is revoked (so
/// whatever was half made dies with it) and the trail says why.
async fn failed(
    s: &AppState,
    mut ev: EventBody,
    claims: &AccessClaims,
    e: providers::IssueFailure,
) -> Outcome {
    ev.time_ms = s.now_ms();
    ev.event_type = mandate_core::audit::EventType::TokenFailed;
    ev.decision = if e.refused {
        mandate_core::audit::Decision::Deny
    } else {
        mandate_core::audit::Decision::Error
    };
    ev.reason = Some(e.message.clone());
    let revocation = Revocation {
        seq: 0,
        key: format!("cred:{}", claims.jti),
        reason: "the credential could not be made".into(),
        time_ms: s.now_ms(),
        until: claims.exp,
        tenant: Some(claims.tenant.clone()),
    };
    if let Err(c) = s
        .commit(Entry {
            mutation: Some(Mutation::Revoke(revocation)),
            events: vec![ev],
        })
        .await
    {
        tracing::error!(credential = %claims.jti,
            "the revocation of a credential that could not be made was not stored ({}); a database role it left is dropped by the lease reaper anyway (after a restart: at the lease's expiry)",
            c.description);
    }
    let code = if e.refused {
        Code::AccessDenied
    } else {
        Code::Unavailable
    };
    Outcome::Denied(err(code, e.message).into())
}
