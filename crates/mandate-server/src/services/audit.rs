//! Reading and verifying the audit trail: queries, verification of the
//! whole chain against the broker's signed checkpoints (and one the caller
//! kept), and checkpoints to keep elsewhere. A failed verification is
//! itself an audit event.

use std::sync::Arc;

use serde::Deserialize;

use mandate_core::audit::{ChainedEvent, Decision, EventType, VerifiedCheckpoint};
use mandate_store::{AuditFilter, VerifyReport};

use crate::error::{ApiError, Code, err};
use crate::origin::Origin;
use crate::state::AppState;

/// What an admin asks of the trail (`GET /v1/audit`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    tenant: Option<String>,
    agent: Option<String>,
    run: Option<String>,
    principal: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since_ms: Option<u64>,
    after_seq: Option<u64>,
    before_seq: Option<u64>,
    limit: Option<u32>,
}

/// The events that match `q`, oldest first, at most 10,000.
pub async fn query(s: &AppState, q: AuditQuery) -> Result<Vec<ChainedEvent>, ApiError> {
    if let Some(d) = &q.decision
        && !["allow", "deny", "ok", "error"].contains(&d.as_str())
    {
        return Err(err(
            Code::InvalidRequest,
            "`decision` must be `allow`, `deny`, `ok` or `error`",
        ));
    }
    let f = AuditFilter {
        tenant: q.tenant,
        agent: q.agent,
        run: q.run,
        principal: q.principal,
        tool: q.tool,
        decision: q.decision,
        event_type: q.event_type,
        since_ms: q.since_ms,
        after_seq: q.after_seq,
        before_seq: q.before_seq,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
    };
    let store = Arc::clone(&s.store);
    Ok(tokio::task::spawn_blocking(move || store.audit_query(&f))
        .await
        .map_err(|_| err(Code::ServerError, "audit query failed"))??)
}

/// Where a checkpoint checked against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSource {
    /// The broker's own latest one.
    Broker,
    /// Sent by the caller.
    Supplied,
}

impl CheckpointSource {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointSource::Broker => "broker",
            CheckpointSource::Supplied => "supplied",
        }
    }
}

/// A checkpoint the trail was checked against.
#[derive(Debug)]
pub struct Checked {
    /// Where it came from.
    pub source: CheckpointSource,
    /// The checkpoint.
    pub checkpoint: VerifiedCheckpoint,
    /// Whether the trail extends it.
    pub matched: bool,
}

/// The outcome of a verification.
#[derive(Debug)]
pub struct Verification {
    /// What the store found.
    pub report: VerifyReport,
    /// The checkpoints checked against.
    pub checked: Vec<Checked>,
    /// Events after the newest checkpoint, not anchored yet (from, to).
    pub unanchored: Option<(u64, u64)>,
    /// For an incremental verification: the checkpoint's event, after
    /// which events were read.
    pub after: Option<u64>,
}

/// How much of the trail a verification reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// Every event, from the first.
    Whole,
    /// The events after the checkpoint the caller supplies (one it verified
    /// before and kept): that event must still have its hash; earlier
    /// events are not read (issue 12: incremental verification).
    AfterSupplied,
}

/// Verifies the trail against the broker's latest checkpoint and, when
/// given, one the caller kept (a JWS, which must be signed by this broker's
/// keys): the whole trail, or what came after that checkpoint. A refused
/// checkpoint or a broken trail is recorded as a `deny`.
pub async fn verify(
    s: &AppState,
    origin: &Origin,
    supplied: Option<&str>,
    extent: Extent,
) -> Result<Verification, ApiError> {
    let mut checks = Vec::new();
    if let Some(jws) = supplied {
        match mandate_core::audit::verify_checkpoint(jws, &s.keyset().keys.jwks()) {
            Ok(c) => checks.push((CheckpointSource::Supplied, c)),
            Err(e) => {
                let why = format!(
                    "the checkpoint was refused: {e}; only checkpoints signed by this broker's keys (its JWKS, /jwks.json) can anchor its trail"
                );
                refused(s, origin, why.clone(), serde_json::Value::Null).await?;
                return Err(err(Code::InvalidRequest, why));
            }
        }
    }
    if let Some(mine) = s.checkpoints.latest() {
        checks.push((CheckpointSource::Broker, mine));
    }
    let anchors = checks
        .iter()
        .map(|(src, c)| c.anchor(src.as_str()))
        .collect();
    let from = match extent {
        Extent::Whole => None,
        Extent::AfterSupplied => Some(
            checks
                .iter()
                .find(|(src, _)| *src == CheckpointSource::Supplied)
                .map(|(src, c)| c.anchor(src.as_str()))
                .ok_or_else(|| {
                    err(
                        Code::InvalidRequest,
                        "an incremental verification starts from a checkpoint you verified before: send it as `checkpoint`",
                    )
                })?,
        ),
    };
    let after = from.as_ref().map(|f| f.seq);
    let store = Arc::clone(&s.store);
    let report = tokio::task::spawn_blocking(move || match from {
        None => store.audit_verify(anchors),
        Some(f) => store.audit_verify_after(f, anchors),
    })
    .await
    .map_err(|_| err(Code::ServerError, "audit verification failed"))??;
    let newest = checks
        .iter()
        .map(|(_, c)| c.checkpoint.seq)
        .max()
        .unwrap_or(0);
    let unanchored = (report.first_break.is_none() && report.head.0 > newest)
        .then_some((newest + 1, report.head.0));
    if let Some(b) = &report.first_break {
        refused(
            s,
            origin,
            format!(
                "the audit trail does not verify at event {}: {}",
                b.seq, b.reason
            ),
            serde_json::json!({"seq": b.seq, "column": b.column}),
        )
        .await?;
    }
    let checked = checks
        .into_iter()
        .map(|(source, checkpoint)| Checked {
            matched: report
                .first_break
                .as_ref()
                .is_none_or(|b| b.seq > checkpoint.checkpoint.seq),
            source,
            checkpoint,
        })
        .collect();
    Ok(Verification {
        report,
        checked,
        unanchored,
        after,
    })
}

async fn refused(
    s: &AppState,
    origin: &Origin,
    why: String,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let mut ev = origin.admin_event(EventType::AuditVerify, None, s.now_ms());
    ev.decision = Decision::Deny;
    ev.reason = Some(why);
    ev.details = details;
    s.record(vec![ev]).await.map(|_| ())
}

/// A signed checkpoint of the trail's head (made now if events came since
/// the last one), to keep elsewhere.
pub async fn checkpoint(s: &AppState) -> Result<VerifiedCheckpoint, ApiError> {
    let c = Arc::clone(&s.checkpoints);
    tokio::task::spawn_blocking(move || c.flush())
        .await
        .map_err(|_| err(Code::ServerError, "could not make a checkpoint"))?
        .ok_or_else(|| {
            err(
                Code::NotFound,
                "the audit trail is empty: nothing to checkpoint yet",
            )
        })
}
