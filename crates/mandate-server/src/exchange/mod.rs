//! The exchange service (RFC 8693 token exchange, DESIGN "the exchange"):
//! one function, [`exchange`], in three visible stages.
//!
//! 1. **gather** ([`gather`]): the mandate (verified by [`crate::gate`]),
//!    its revocation, the proof of possession, the tool, the agent, the
//!    tenant's policies, the run's history, attenuation use counts, a
//!    named approval;
//! 2. **decide** ([`decide`]): scope, attenuation, amounts, the request
//!    digest an approval binds, Cedar, human approvals, the credential's
//!    claims (pure core functions, facts and time passed in);
//! 3. **record** ([`record`]): one commit (the event, durable first, with
//!    the lease, the use counts and the spent approvals), then the tool's
//!    provider makes the credential.
//!
//! It returns an [`Outcome`]; the token endpoint only renders it. The proxy
//! asks its per-call policy question through the same
//! [`gather::policy_input`] and [`decide::verdict`].

pub mod decide;
pub mod gather;

mod record;
pub mod request;

use std::sync::Arc;

use mandate_core::credential::AccessClaims;
use mandate_core::mandate::MandateClaims;
use mandate_core::model::Approval;
use rand_core::OsRng;

use crate::error::{ApiError, Code, err};
use crate::providers::{self, Credential, Pop};
use crate::state::AppState;
pub use request::{ExchangeRequest, Proof};

/// How an exchange ended.
pub enum Outcome {
    /// A credential, its event durable.
    Issued(Box<Issued>),
    /// Humans were asked to approve (durable, announced); retry later.
    ApprovalRequested {
        /// Every approval this request waits for (the new ones first).
        approvals: Vec<PendingApproval>,
        /// What to tell the agent.
        message: String,
    },
    /// The request waits: for approvals already asked, or for an admin to
    /// resume a suspended run.
    Waiting {
        /// The approvals it waits for (none for a suspended run).
        approvals: Vec<PendingApproval>,
        /// What to tell the agent.
        message: String,
    },
    /// Refused, with the rule that decided (audited).
    Denied(Denial),
}

/// An approval an exchange waits for, as the agent is told of it.
#[derive(Debug, Clone)]
pub struct PendingApproval {
    /// Its id (`apr_...`), to poll and to name when retrying.
    pub id: String,
    /// The policies that asked for it.
    pub policies: Vec<String>,
    /// Who may decide it.
    pub approvers: Vec<String>,
    /// Where it is in its life.
    pub status: mandate_core::approval::ApprovalStatus,
    /// Until when it can be decided (seconds).
    pub expires_at: u64,
}

impl From<&Approval> for PendingApproval {
    fn from(a: &Approval) -> Self {
        Self {
            id: a.id.clone(),
            policies: a.policies.clone(),
            approvers: a.approvers.clone(),
            status: a.status,
            expires_at: a.expires_at,
        }
    }
}

/// A credential made by an exchange.
pub struct Issued {
    /// Its claims.
    pub claims: AccessClaims,
    /// The credential as the provider made it.
    pub credential: Credential,
}

/// A refusal and the rule that decided it.
#[derive(Debug)]
pub struct Denial {
    /// What the caller is told.
    pub error: ApiError,
    /// The deciding rule, for the audit trail, when it says more than the
    /// error (`revoked: run:...`, `tenant mismatch: ...`).
    pub rule: Option<String>,
    /// The policies that decided, if policy did.
    pub policies: Vec<String>,
}

impl Denial {
    /// A refusal whose audit reason is `rule`.
    pub fn because(error: ApiError, rule: String) -> Self {
        Self {
            error,
            rule: Some(rule),
            policies: Vec::new(),
        }
    }
}

impl From<ApiError> for Denial {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            rule: None,
            policies: Vec::new(),
        }
    }
}

/// What is known of an exchange so far, for its audit event.
pub struct Known<'a> {
    /// The request.
    pub req: &'a ExchangeRequest,
    /// The verified mandate.
    pub mandate: Option<Arc<MandateClaims>>,
    /// The tool (as asked, then as found).
    pub tool: String,
    /// How possession was proven (`None`: nobody is authenticated yet).
    pub pop: Option<Pop>,
    /// The proof's use, committed with the credential.
    pub spent: Option<mandate_core::dpop::Spent>,
}

/// Exchanges a mandate for a credential (see the module documentation).
pub async fn exchange(s: &Arc<AppState>, req: ExchangeRequest, now: u64) -> Outcome {
    let mut known = Known {
        req: &req,
        mandate: None,
        tool: req.target.clone(),
        pop: None,
        spent: None,
    };
    // Gather.
    let m = match crate::gate::verify_mandate(s, &req.subject, now, req.client.ip()).await {
        Ok(m) => m,
        Err(e) => return record::refused(s, &known, e.into(), now).await,
    };
    known.mandate = Some(Arc::clone(&m));
    if let Err(d) = gather::not_revoked(s, &m) {
        return record::refused(s, &known, d, now).await;
    }
    match gather::prove(s, &req, &m, now) {
        Ok((pop, spent)) => {
            known.pop = Some(pop);
            known.spent = Some(spent);
        }
        Err(e) => return record::refused(s, &known, e.into(), now).await,
    }
    let tool = match gather::tool(s, &m, &req.target) {
        Ok(t) => t,
        Err(d) => return record::refused(s, &known, d, now).await,
    };
    known.tool = tool.name.clone();
    let facts = match gather::facts(s, &m, tool, now) {
        Ok(f) => f,
        Err(d) => return record::refused(s, &known, d, now).await,
    };
    // Decide, then record.
    match decide_all(s, &req, &m, &facts, known.pop, now) {
        Ok(Decided::Issue(grant)) => record::issue(s, &known, &facts, *grant, now).await,
        Ok(Decided::Wait { approvals, message }) => {
            record::waiting(s, &known, approvals, message, now).await
        }
        Ok(Decided::Ask(ask)) => record::ask(s, &known, ask, now).await,
        Err(d) => record::refused(s, &known, d, now).await,
    }
}

/// What the decide stage concluded.
enum Decided {
    Issue(Box<record::Grant>),
    Wait {
        approvals: Vec<Approval>,
        message: String,
    },
    Ask(record::Ask),
}

/// Most approval requests one run may have waiting at once.
const MAX_PENDING_PER_RUN: usize = 16;

fn decide_all(
    s: &AppState,
    req: &ExchangeRequest,
    m: &MandateClaims,
    f: &gather::Facts,
    pop: Option<Pop>,
    now: u64,
) -> Result<Decided, Denial> {
    let tool = &f.tool;
    decide::scope(m, tool, &req.actions)?;
    let provider = providers::of(tool.provider);
    provider.check_pop(tool, pop)?;
    let count_uses = decide::attenuation(s, req, m, f, now)?;
    let prepared = provider.prepare(tool, &req.actions)?;
    // A suspended run waits for an admin (anomaly response).
    if let Some(why) = &f.suspended {
        return Ok(Decided::Wait {
            approvals: Vec::new(),
            message: format!(
                "run `{}` is suspended ({why}); its exchanges wait until an admin resumes it (`mandate run resume`) or revokes it",
                m.run
            ),
        });
    }
    decide::amount(f, &req.details)?;
    let digest =
        mandate_core::exchange::request_digest(&m.run, &tool.name, &req.actions, &req.details_json);
    let named = gather::named_approval(s, req)?;
    decide::named_approval(named.as_ref(), &digest, &m.run, now)?;
    let (approvals, policies) = match policy(s, req, m, f, &digest, now)? {
        Answer::Allow {
            approvals,
            policies,
        } => (approvals, policies),
        Answer::Stop(d) => return Ok(d),
    };
    let claims = mandate_core::exchange::credential_claims(
        m,
        mandate_core::exchange::CredentialSpec {
            issuer: &s.config.issuer,
            audience: &tool.audience,
            max_ttl: tool.max_ttl_secs,
            actions: &req.actions,
            details: &req.details_json,
            approvals: approvals.iter().map(approval_claim).collect(),
            jti: mandate_core::ids::random_id(&mut OsRng, "cred_"),
            bound: pop.is_some_and(|p| provider.binds(tool, p)),
        },
        now,
    );
    Ok(Decided::Issue(Box::new(record::Grant {
        claims,
        prepared,
        count_uses,
        mandate_exp: m.expires_at,
        approvals,
        policies,
    })))
}

/// What the tenant's policies, and humans where they ask for them, say.
enum Answer {
    /// Allowed, spending these approvals; the policies that allowed.
    Allow {
        approvals: Vec<Approval>,
        policies: Vec<String>,
    },
    /// The exchange stops here (waits, or asks humans).
    Stop(Decided),
}

/// Asks the tenant's policies; when `@approval` policies refuse, matches
/// the live approvals of this request (`digest`) and asks anew where none
/// was asked.
fn policy(
    s: &AppState,
    req: &ExchangeRequest,
    m: &MandateClaims,
    f: &gather::Facts,
    digest: &str,
    now: u64,
) -> Result<Answer, Denial> {
    let tool = &f.tool;
    let mut q = decide::Question {
        subject: decide::Subject::of_mandate(m),
        input: &f.input,
        tool,
        actions: &req.actions,
        details: &req.details,
        approved: false,
    };
    let mut verdict = decide::verdict(s, &q, now)?;
    let mut approvals = Vec::new();
    if !verdict.allowed
        && let Some(need) = verdict.approval.clone()
    {
        let live = gather::live_approvals(s, digest, &m.run, now)?;
        match decide::humans(&need, &live)? {
            decide::Humans::Approved(list) => {
                q.approved = true;
                verdict = decide::verdict(s, &q, now)?;
                if !verdict.allowed {
                    let reason = verdict.reason.unwrap_or_else(|| "denied by policy".into());
                    return Err(Denial {
                        error: err(
                            Code::AccessDenied,
                            format!(
                                "{reason}; it was approved, but the policy still refuses: an `@approval` policy must say `unless {{ context.approved }}`"
                            ),
                        ),
                        rule: None,
                        policies: verdict.policies,
                    });
                }
                approvals = list;
            }
            decide::Humans::Waiting(pending) => {
                return Ok(Answer::Stop(Decided::Wait {
                    approvals: pending,
                    message:
                        "waiting for humans to approve this request; retry after `interval` seconds"
                            .into(),
                }));
            }
            decide::Humans::Ask { pending, missing } => {
                if gather::pending_for_run(s, &m.run, now)? + missing.len() > MAX_PENDING_PER_RUN {
                    return Err(Denial {
                        policies: verdict.policies,
                        ..Denial::because(
                            err(
                                Code::AccessDenied,
                                format!(
                                    "run `{}` already waits for {MAX_PENDING_PER_RUN} approvals; wait for them to be decided or expire",
                                    m.run
                                ),
                            ),
                            "too many pending approvals".into(),
                        )
                    });
                }
                let mut asked = Vec::with_capacity(missing.len());
                for p in &missing {
                    let approvers =
                        gather::approvers(s, (&m.tenant, m.principal.as_deref()), &p.approvers)
                            .map_err(|e| Denial {
                                error: e,
                                rule: None,
                                policies: verdict.policies.clone(),
                            })?;
                    asked.push(record::approval_request(
                        m,
                        req,
                        &tool.name,
                        digest,
                        approvers,
                        p,
                        (s.now_ms(), now + s.config.approval_ttl),
                    ));
                }
                let reason = verdict.reason.unwrap_or_else(|| "denied by policy".into());
                return Ok(Answer::Stop(Decided::Ask(record::Ask {
                    asked,
                    pending,
                    message: format!(
                        "{reason}; humans must approve it (each policy by its own approvers); retry after `interval` seconds"
                    ),
                    rule: format!("approval required by {}", need.policies().join(", ")),
                    policies: verdict.policies,
                })));
            }
        }
    }
    if !verdict.allowed {
        let reason = verdict.reason.unwrap_or_else(|| "denied by policy".into());
        return Err(Denial {
            error: err(Code::AccessDenied, reason),
            rule: None,
            policies: verdict.policies,
        });
    }
    Ok(Answer::Allow {
        approvals,
        policies: verdict.policies,
    })
}

fn approval_claim(a: &Approval) -> mandate_core::credential::ApprovalClaim {
    mandate_core::credential::ApprovalClaim {
        id: a.id.clone(),
        approver: a.decided_by.clone().unwrap_or_default(),
        approved_at: a.decided_ms.unwrap_or(0) / 1000,
        request_digest: a.request_digest.clone(),
    }
}
