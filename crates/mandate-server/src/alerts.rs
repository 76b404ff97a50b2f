//! Anomalies and announcements: a run's request rate or denials spiking, or
//! an agent using a tool it never used, raise an alert event (audit) and a
//! webhook, and, where configured, suspend the run (its exchanges then wait
//! for an admin to resume or revoke it). Approval requests and alerts are
//! POSTed to the configured webhook, signed by the broker with RFC 9421
//! (Ed25519, the credential key in the JWKS, `keyid` = its `kid`), so a chat
//! bot or pager can check they come from the broker.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use mandate_core::audit::EventBody;
use mandate_core::httpsig;
use mandate_core::mandate::MandateClaims;
use serde_json::{Value, json};

use crate::state::AppState;

/// Tag of the broker's webhook signatures.
pub const WEBHOOK_TAG: &str = "mandate-webhook";

/// Queues `data` for the webhook, as `{type, time_ms, data}`: stored in the
/// outbox (so a restart does not lose it) and delivered in order.
pub async fn announce(s: &AppState, kind: &str, data: Value) {
    if s.config.webhook_url.is_none() {
        return;
    }
    let body = json!({"type": kind, "time_ms": s.now_ms(), "data": data}).to_string();
    match s
        .commit(mandate_store::Entry {
            mutation: Some(mandate_store::Mutation::Enqueue { body }),
            events: vec![],
        })
        .await
    {
        Ok(_) => s.outbox_notify.notify_one(),
        Err(e) => tracing::error!("could not queue a webhook: {}", e.description),
    }
}

/// The run a request belongs to.
#[derive(Debug, Clone, Copy)]
pub struct RunRef<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Agent.
    pub agent: &'a str,
    /// Run id.
    pub run: &'a str,
    /// Principal.
    pub principal: Option<&'a str>,
    /// When its mandate (or credential) was issued.
    pub issued_at: u64,
}

impl<'a> From<&'a MandateClaims> for RunRef<'a> {
    fn from(m: &'a MandateClaims) -> Self {
        RunRef {
            tenant: &m.tenant,
            agent: &m.agent,
            run: &m.run,
            principal: m.principal.as_deref(),
            issued_at: m.issued_at,
        }
    }
}

/// [`judged`] for a call at the proxy or the MCP gateway, by its audit
/// event (when the credential named a run).
pub async fn judged_call(s: &AppState, ev: &EventBody, denied: bool) {
    if let (Some(tenant), Some(agent), Some(run)) = (&ev.tenant, &ev.agent, &ev.run) {
        let now = s.now_secs();
        let r = RunRef {
            tenant,
            agent,
            run,
            principal: ev.principal.as_deref(),
            issued_at: now,
        };
        judged(s, r, now, denied).await;
    }
}

/// Notes a judged request of a run (an exchange or a proxied call, denied
/// or not) and raises the alerts it calls for.
pub async fn judged(s: &AppState, m: RunRef<'_>, now: u64, denied: bool) {
    let facts = {
        let Ok(mut h) = s.history.lock() else { return };
        h.request(m.run, now, denied);
        h.facts(m.run, m.issued_at, (m.tenant, m.agent, ""), now)
    };
    if facts.rate_1m > s.config.anomaly_rate_1m {
        alert(
            s,
            m,
            "rate_spike",
            json!({"requests_1m": facts.rate_1m, "threshold": s.config.anomaly_rate_1m}),
            now,
        )
        .await;
    }
    if denied && facts.denials_1m >= s.config.anomaly_denials_1m {
        alert(
            s,
            m,
            "denial_burst",
            json!({"denials_1m": facts.denials_1m, "threshold": s.config.anomaly_denials_1m}),
            now,
        )
        .await;
    }
}

/// Notes an issued credential; `first_use` if the agent never used the tool.
pub async fn issued(s: &AppState, m: &MandateClaims, tool: &str, first_use: bool, now: u64) {
    judged(s, m.into(), now, false).await;
    if first_use && s.config.anomaly_new_tool {
        alert(s, m.into(), "new_tool", json!({"tool": tool}), now).await;
    }
}

async fn alert(s: &AppState, m: RunRef<'_>, kind: &'static str, details: Value, now: u64) {
    let first = s
        .history
        .lock()
        .map(|mut h| h.first_alert(m.run, kind))
        .unwrap_or(false);
    if !first {
        return;
    }
    let suspend = s.config.suspend_on_anomaly;
    let mut ev = EventBody {
        time_ms: s.now_ms(),
        event_type: mandate_core::audit::EventType::parse(&format!("alert.{kind}")),
        decision: if suspend {
            mandate_core::audit::Decision::Suspend
        } else {
            mandate_core::audit::Decision::Ok
        },
        tenant: Some(m.tenant.to_owned()),
        agent: Some(m.agent.to_owned()),
        run: Some(m.run.to_owned()),
        principal: m.principal.map(str::to_owned),
        details: details.clone(),
        ..Default::default()
    };
    ev.reason = Some(format!("anomaly: {kind}"));
    let mutation = suspend.then(|| mandate_store::Mutation::SuspendRun {
        id: m.run.to_owned(),
        ms: s.now_ms(),
        reason: format!("anomaly: {kind}"),
    });
    let committed = s
        .commit(mandate_store::Entry {
            mutation,
            events: vec![ev],
        })
        .await;
    if let Err(e) = committed {
        tracing::warn!(
            "could not record alert {kind} for run {}: {}",
            m.run,
            e.description
        );
    }
    announce(
        s,
        "alert",
        json!({"kind": kind, "run": m.run, "agent": m.agent, "tenant": m.tenant,
               "suspended": suspend, "details": details, "time": now}),
    )
    .await;
}

/// Delivers the outbox, oldest first, at least once: a payload leaves the
/// outbox when the receiver answers 2xx; failures are retried with backoff
/// (1 s, 4 s, 16 s, ... at most 5 min), and given up after 10 tries with a
/// `webhook.failed` event. Resumes after a restart.
pub async fn deliver_webhooks(s: Arc<AppState>) {
    let Some(url) = s.config.webhook_url.clone() else {
        return;
    };
    let mut tries: std::collections::HashMap<i64, u32> = std::collections::HashMap::new();
    loop {
        let pending = s.store.outbox(100).unwrap_or_default();
        let mut wait = Duration::from_secs(5);
        for (id, body) in pending {
            let ok =
                matches!(post_signed(&s, &url, &body).await, Ok(st) if (200..300).contains(&st));
            let n = tries.entry(id).or_default();
            *n += 1;
            let give_up = !ok && *n >= 10;
            if ok || give_up {
                tries.remove(&id);
                let events = if give_up {
                    vec![EventBody {
                        time_ms: s.now_ms(),
                        event_type: mandate_core::audit::EventType::WebhookFailed,
                        decision: mandate_core::audit::Decision::Error,
                        reason: Some(format!("{url} did not accept it after 10 tries")),
                        details: serde_json::from_str(&body).unwrap_or(Value::Null),
                        ..Default::default()
                    }]
                } else {
                    vec![]
                };
                let _ = s
                    .commit(mandate_store::Entry {
                        mutation: Some(mandate_store::Mutation::Dequeue { id }),
                        events,
                    })
                    .await;
            } else {
                // In order: later payloads wait for this one.
                tracing::warn!("webhook {url}: delivery failed (try {n})");
                wait = Duration::from_secs(4u64.saturating_pow(*n - 1).min(300));
                break;
            }
        }
        tokio::select! {
            _ = s.outbox_notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The headers of a webhook POST of `body` to `url`, signed by the broker.
pub fn webhook_headers(
    s: &AppState,
    url: &str,
    body: &str,
) -> Result<Vec<(String, String)>, String> {
    let keyset = s.keyset();
    let key = &keyset.keys.jwt_eddsa;
    let now = s.now_secs();
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        (
            "content-digest".to_owned(),
            httpsig::content_digest(body.as_bytes()),
        ),
    ];
    let nonce = mandate_core::ids::random_id(&mut rand_core::OsRng, "");
    let kid = key.kid();
    let (input, sig) = httpsig::sign(
        &httpsig::Message::request("POST", url, headers.clone()),
        key,
        &httpsig::SignParams {
            label: "mandate",
            components: &["@method", "@target-uri", "content-type", "content-digest"],
            created: now,
            expires: Some(now + 300),
            nonce: Some(&nonce),
            keyid: Some(&kid),
            include_alg: true,
            tag: Some(WEBHOOK_TAG),
        },
    )
    .map_err(|e| e.to_string())?;
    headers.push(("signature-input".into(), input));
    headers.push(("signature".into(), sig));
    Ok(headers)
}

async fn post_signed(s: &AppState, url: &str, body: &str) -> Result<u16, String> {
    let headers = webhook_headers(s, url, body)?;
    let mut req = axum::http::Request::builder().method("POST").uri(url);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Body::from(body.to_owned()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), s.http.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}
