//! The `proxy` provider's data path: `ANY /proxy/{tool}/{path}`.
//!
//! For upstream APIs that only accept a static key. The agent (or an
//! unchanged SDK) sends a short-lived proxy credential where the API key
//! would go; the proxy checks it, maps method and path to an action through
//! the tool's route table, asks the tenant's policy, injects the real key
//! and forwards, streaming both ways. Our credential never goes upstream;
//! the key never comes back (responses are scrubbed of it). Each call
//! leaves two audit events: the decision (durable before the upstream sees
//! the request) and the outcome (status, bytes, latency; never bodies,
//! never secrets).
//!
//! Request parts the route table does not judge are refused when they can
//! make the upstream do something else (method overrides, path parameters,
//! encoded path characters, control characters); a route that moves money
//! names where its amount is, and a credential issued for an amount is
//! good for one call of at most that amount.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use serde_json::json;

use mandate_core::audit::EventBody;
use mandate_core::credential::{self, AccessClaims};
use mandate_core::forwarding::SpendRefused;
use mandate_core::forwarding::{self, BodyKind};
use mandate_core::model::Tool;
use mandate_core::scrub::Scrubber;
use mandate_core::tooling::{
    AmountAt, HOP_BY_HOP, InjectSpec, ProxySpec, RouteSpec, check_request_path,
};

use super::{S, client, correlation_id};
use crate::error::{ApiError, Code, err};
use crate::state::CommitRefused;
use mandate_store::{Entry, Mutation};

mod authorize;
pub(crate) mod body;
mod upstream;

pub(crate) use authorize::verify_token as verify_credential;
use authorize::*;
use body::*;
use upstream::*;

/// Path prefix of the proxy.
pub const PREFIX: &str = "/proxy/";

/// Upper bound on credentials remembered as spent (single-use amount
/// credentials still alive); when full, such calls are refused.
pub const SPENT_CAP: usize = 200_000;

/// What a checked request is allowed to become.
struct Plan {
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    /// The amount check, when the route moves money.
    amount: Option<AmountPlan>,
    /// Scrubs the injected key from the response.
    scrubber: Scrubber,
    /// What the decision's commit must find (the credential unrevoked, its
    /// proof and a single-use credential not used), at every broker.
    guard: Vec<Mutation>,
}

/// A money-moving call: where its amount is, and what the credential allows.
struct AmountPlan {
    at: AmountAt,
    declared: u64,
    jti: String,
    until: u64,
}

/// `ANY /proxy/{tool}/{path}`.
pub async fn forward(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut ev = EventBody {
        time_ms: s.now_ms(),
        event_type: mandate_core::audit::EventType::ProxyCall,
        correlation_id: Some(correlation_id(&parts.headers)),
        client_addr: client(Some(addr)),
        ..Default::default()
    };
    // A signed request (RFC 9421) is read whole first: its Content-Digest
    // must match the body before anything is forwarded.
    let (body, signed_body) = if crate::pop::httpsig::present(&parts.headers) {
        match read_body(body, s.config.proxy_max_body).await {
            Ok(b) => (Inbound::Read(b.clone()), Some(b)),
            Err(e) => return denied(&s, ev, e).await,
        }
    } else {
        (Inbound::Streaming(body), None)
    };
    let now = s.now_secs();
    let mut plan = match authorize(&s, &parts, signed_body.as_deref(), now, &mut ev) {
        Ok(p) => p,
        Err(e) => return denied(&s, ev, e).await,
    };
    let body = match inspect(&s, &parts, &plan, body, now, &mut ev).await {
        Ok(b) => b,
        Err(e) => return denied(&s, ev, e).await,
    };
    ev.decision = mandate_core::audit::Decision::Allow;
    crate::alerts::judged_call(&s, &ev, false).await;
    // The decision is durable before the upstream acts on the request,
    // and checked in its commit against every broker's revocations and uses.
    let mut guard = std::mem::take(&mut plan.guard);
    if let Some(a) = plan.amount.as_ref() {
        guard.push(Mutation::FirstUse {
            uses: vec![mandate_core::dpop::Spent {
                key: format!("credential:{}", a.jti),
                until: a.until,
            }],
            now,
        });
    }
    let entry = Entry {
        mutation: Mutation::all(guard),
        events: vec![ev.clone()],
    };
    match s.commit_outcome(entry).await {
        Ok(_) => {}
        Err(CommitRefused::Revoked(k)) => {
            ev.reason = Some(format!("revoked: {k}"));
            let e = err(
                Code::Unauthorized,
                "the credential has been revoked; the run must start again",
            );
            return denied(&s, ev, e).await;
        }
        Err(CommitRefused::Replayed(_)) => {
            ev.reason = Some("signature nonce or single-use credential used before".into());
            let e = err(
                Code::Forbidden,
                "this signature, or this single-use credential, was already used (here or at another broker); sign afresh or ask for a new credential",
            );
            return denied(&s, ev, e).await;
        }
        Err(CommitRefused::Failed(e)) => return e.into_response(),
    }
    let mut up = axum::http::Request::new(Body::empty());
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = plan.uri.clone();
    *up.headers_mut() = std::mem::take(&mut plan.headers);
    let mut result = ev;
    result.event_type = mandate_core::audit::EventType::ProxyResult;
    send(&s, up, body, plan, result, started).await
}

/// A refusal after the request was read: audited, and counted toward the
/// run's denials. Before a credential identified a run, the refusal is
/// anyone's: it goes through the per-client throttle instead.
async fn denied(s: &S, mut ev: EventBody, e: ApiError) -> Response {
    if ev.run.is_none() {
        return e
            .unauthenticated(mandate_core::audit::EventType::ProxyCall)
            .into_response();
    }
    ev.decision = mandate_core::audit::Decision::Deny;
    if ev.reason.is_none() {
        ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
    }
    crate::alerts::judged_call(s, &ev, true).await;
    audited(s, ev, e).await
}

fn merge(into: &mut serde_json::Value, more: serde_json::Value) {
    if !into.is_object() {
        *into = json!({});
    }
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), more) {
        a.extend(b);
    }
}

async fn audited(s: &S, ev: EventBody, e: ApiError) -> Response {
    if let Err(we) = s.record(vec![ev]).await {
        return we.into_response();
    }
    e.into_response()
}
