//! `POST /v1/runs/attach`: ties a run's life to a connection held by the
//! process that holds the run key (`mandate exec`'s wrapper).
//!
//! The caller presents the run's own mandate and a DPoP proof by the run
//! key (as at `/v1/runs/delegate`); the answer is a Server-Sent Events
//! stream: an `attached` event, then a comment every [`KEEP_ALIVE`], until
//! the attachment's lease (`Config::attach_lease`, 30 s) is over; then the
//! broker closes it and the wrapper attaches again with a fresh proof. When
//! the connection closes (the wrapper was killed: the kernel closes its
//! socket; or it was stopped and did not attach again) and the run has not
//! attached again within the grace period (`Config::attach_grace`, 10 s),
//! the broker ends the run
//! as `POST /v1/runs/{id}/end` does, audited with the reason
//! "exec wrapper detached". The ties live in memory: if the broker restarts
//! while the wrapper is gone, the run lasts until its mandate expires.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use mandate_core::audit::EventBody;
use mandate_core::mandate::MandateClaims;
use serde::Deserialize;

use super::{S, body, json_body};
use crate::error::{ApiError, Code, err};

/// How often an attached connection gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The reason recorded when a detached run is ended.
pub const DETACHED: &str = "exec wrapper detached";

/// Request body of `POST /v1/runs/attach`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachRequest {
    mandate: String,
}

/// Open attachments per run. `epoch` changes on every attach and detach, so
/// a grace timer knows whether anything happened since it started.
#[derive(Debug, Default)]
pub struct Attachments {
    runs: Mutex<HashMap<String, Tie>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tie {
    open: usize,
    epoch: u64,
}

impl Attachments {
    fn attach(&self, run: &str) {
        let mut m = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let t = m.entry(run.to_owned()).or_default();
        t.open += 1;
        t.epoch += 1;
    }

    /// One connection of `run` closed; returns the epoch to check after the grace.
    fn detach(&self, run: &str) -> u64 {
        let mut m = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let t = m.entry(run.to_owned()).or_default();
        t.open = t.open.saturating_sub(1);
        t.epoch += 1;
        t.epoch
    }

    /// After the grace: whether `run` is still detached since `epoch` (then
    /// it is forgotten, and its caller ends it).
    fn still_detached(&self, run: &str, epoch: u64) -> bool {
        let mut m = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let gone = m.get(run).is_some_and(|t| t.open == 0 && t.epoch == epoch);
        if gone {
            m.remove(run);
        }
        gone
    }

    /// Connections open for `run` now.
    pub fn open(&self, run: &str) -> usize {
        let m = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        m.get(run).map_or(0, |t| t.open)
    }
}

/// `POST /v1/runs/attach` (see the module's documentation). Every answer
/// carries the next DPoP nonce.
pub async fn attach(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let mut resp = match attaching_run(&s, addr, &headers, raw).await {
        Err(e) => e
            .unauthenticated(mandate_core::audit::EventType::RunAttach)
            .into_response(),
        Ok(claims) => stream(&s, claims),
    };
    s.add_dpop_nonce(&mut resp);
    resp
}

/// The run, once its own mandate verifies, a fresh proof by its key is
/// presented, and it is neither ended nor revoked.
async fn attaching_run(
    s: &S,
    addr: SocketAddr,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Arc<MandateClaims>, ApiError> {
    let req: AttachRequest = json_body(&body(raw, s.config.max_body)?)?;
    let now = s.now_secs();
    let claims = crate::gate::verify_mandate(s, &req.mandate, now, addr.ip()).await?;
    // An attachment commits nothing it could carry the proof's use in: it
    // is remembered here (and a replay elsewhere attaches nothing new: the
    // attachment is this connection's).
    super::admin::prove_run_key(s, headers, "/v1/runs/attach", &claims, now, "run's")?;
    if !claims.hops.is_empty() {
        return Err(err(
            Code::InvalidRequest,
            "an attenuated mandate cannot attach: attach with the run's own mandate and a proof by the run key",
        ));
    }
    if s.reg()
        .refused(&claims.revocation_keys(), claims.issued_at)
        .is_some()
        || s.store
            .get_run(&claims.run)?
            .is_none_or(|r| r.ended_ms.is_some())
    {
        return Err(err(
            Code::InvalidGrant,
            format!(
                "run `{}` has ended or been revoked; start a new run",
                claims.run
            ),
        ));
    }
    Ok(claims)
}

/// The SSE answer: attached until the body is dropped.
fn stream(s: &S, claims: Arc<MandateClaims>) -> Response {
    s.attachments.attach(&claims.run);
    let grace = s.config.attach_grace.as_secs();
    let first = format!(
        "event: attached\ndata: {}\n\n",
        serde_json::json!({"run": claims.run, "grace_secs": grace, "keep_alive_secs": KEEP_ALIVE.as_secs()})
    );
    let lease = s.config.attach_lease;
    let tick = KEEP_ALIVE.min(lease);
    let body = KeepAlive {
        first: Some(Bytes::from(first)),
        done: false,
        until: tokio::time::Instant::now() + lease,
        tick: tokio::time::interval_at(tokio::time::Instant::now() + tick, tick),
        tie: Detach {
            state: Arc::clone(s),
            claims,
        },
    };
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        Body::new(body),
    )
        .into_response()
}

/// The attached stream's body: the `attached` event, then a comment every
/// [`KEEP_ALIVE`]; an `ended` event and the end once the run is revoked; a
/// `renew` event and the end once the lease is over.
struct KeepAlive {
    first: Option<Bytes>,
    done: bool,
    until: tokio::time::Instant,
    tick: tokio::time::Interval,
    tie: Detach,
}

impl axum::body::HttpBody for KeepAlive {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.tick.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        if tokio::time::Instant::now() >= this.until {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"event: renew\ndata: {}\n\n",
            )))));
        }
        let c = &this.tie.claims;
        if this
            .tie
            .state
            .reg()
            .refused(&c.revocation_keys(), c.issued_at)
            .is_some()
        {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"event: ended\ndata: {}\n\n",
            )))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            b": keep-alive\n\n",
        )))))
    }
}

/// Dropped with the connection's response: starts the grace timer.
struct Detach {
    state: S,
    claims: Arc<MandateClaims>,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let epoch = self.state.attachments.detach(&self.claims.run);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let s = Arc::clone(&self.state);
        let claims = Arc::clone(&self.claims);
        rt.spawn(async move {
            tokio::time::sleep(s.config.attach_grace).await;
            if s.attachments.still_detached(&claims.run, epoch)
                && let Err(e) = end_detached(&s, &claims).await
            {
                tracing::warn!(run = %claims.run, "could not end a detached run: {}", e.description);
            }
        });
    }
}

/// Ends a run whose wrapper went away, unless it has ended already.
async fn end_detached(s: &S, claims: &MandateClaims) -> Result<(), ApiError> {
    let Some(run) = s.store.get_run(&claims.run)? else {
        return Ok(());
    };
    if run.ended_ms.is_some() {
        return Ok(());
    }
    let ev = EventBody {
        time_ms: s.now_ms(),
        event_type: mandate_core::audit::EventType::RunEnd,
        decision: mandate_core::audit::Decision::Ok,
        tenant: Some(run.tenant.clone()),
        actor: Some("broker".into()),
        reason: Some(DETACHED.into()),
        details: serde_json::json!({"grace_secs": s.config.attach_grace.as_secs()}),
        ..Default::default()
    };
    crate::services::runs::finish_run(s, &run, ev, DETACHED).await
}
