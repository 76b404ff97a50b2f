//! Audit of refusals nobody authenticated (a missing or wrong admin
//! credential, a join token that is not one, a delegation without a valid
//! proof, a connection over the limits), bounded: at most one event per
//! client address and event type per window (`Config::refusal_audit_window`,
//! 1 s), standing for a count of refusals, so a caller at line rate cannot
//! grow the trail without bound. The rule is
//! [`mandate_core::limits::RefusalThrottle`]; this module feeds it from
//! responses and writes its events.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use mandate_core::audit::EventBody;
use mandate_core::limits::{Admit, Counted, RefusalThrottle};
use serde_json::json;

use crate::error::Unauthenticated;
use crate::state::AppState;

/// The throttle's key: the client (by [`crate::listen::client_key`]) and the event type.
pub type Key = (Option<IpAddr>, mandate_core::audit::EventType);

/// Clients tracked at once; beyond, refusals are counted together.
const CLIENTS: usize = 10_000;

/// Immediate events per window, over all clients.
const RECORDS_PER_WINDOW: u64 = 100;

/// A throttle for `window_ms`.
pub fn throttle(window_ms: u64) -> RefusalThrottle<Key> {
    RefusalThrottle::new(window_ms, CLIENTS, RECORDS_PER_WINDOW)
}

fn event(
    key: Key,
    count: u64,
    reason: String,
    details: serde_json::Value,
    time_ms: u64,
) -> EventBody {
    let mut details = details;
    details["count"] = json!(count);
    EventBody {
        time_ms,
        event_type: key.1,
        decision: mandate_core::audit::Decision::Deny,
        reason: Some(reason),
        client_addr: key.0.map(|ip| ip.to_string()),
        details,
        ..Default::default()
    }
}

/// Notes a refusal of an unauthenticated caller and writes its event when
/// the throttle says so (the rest are written, counted, by [`flush`]).
pub async fn note(
    s: &AppState,
    ip: Option<IpAddr>,
    event_type: mandate_core::audit::EventType,
    reason: &str,
    details: serde_json::Value,
) {
    let key = (ip.map(crate::listen::client_key), event_type);
    let admit =
        s.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(key.clone(), reason, s.now_ms());
    if let Admit::Record { count } = admit {
        let ev = event(
            key,
            count,
            reason.chars().take(500).collect(),
            details,
            s.now_ms(),
        );
        if let Err(e) = s.record(vec![ev]).await {
            tracing::error!("cannot audit a refusal: {}", e.description);
        }
    }
}

/// Middleware: audits the refusals handlers marked unauthenticated.
pub async fn audit_unauthenticated(
    State(s): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let details = json!({
        "method": req.method().as_str(),
        "path": req.uri().path().chars().take(200).collect::<String>(),
    });
    let resp = next.run(req).await;
    if let Some(u) = resp.extensions().get::<Unauthenticated>() {
        note(&s, ip, u.event_type.clone(), &u.reason, details).await;
    }
    resp
}

/// Writes what the throttle counted, once per window, for ever.
pub async fn flush(s: Arc<AppState>) {
    let window = s
        .config
        .refusal_audit_window
        .max(std::time::Duration::from_millis(10));
    let mut tick = tokio::time::interval(window);
    loop {
        tick.tick().await;
        let now_ms = s.now_ms();
        let counted = s
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(now_ms);
        if counted.is_empty() {
            continue;
        }
        let events = counted
            .into_iter()
            .map(
                |Counted {
                     client,
                     count,
                     reason,
                 }| {
                    let many = client.is_none();
                    let key =
                        client.unwrap_or((None, mandate_core::audit::EventType::RefusalsOther));
                    event(
                        key,
                        count,
                        reason,
                        json!({"aggregated": true, "many_clients": many}),
                        now_ms,
                    )
                },
            )
            .collect();
        if let Err(e) = s.record(events).await {
            tracing::error!("cannot audit counted refusals: {}", e.description);
        }
    }
}
