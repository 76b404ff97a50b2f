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
use mandate_core::forwarding::{self, BodyKind};
use mandate_core::forwarding::{SpendRefused, SpentSet};
use mandate_core::scrub::Scrubber;
use mandate_core::tooling::{
    AmountAt, HOP_BY_HOP, InjectSpec, ProxySpec, RouteSpec, check_request_path,
};
use mandate_store::Tool;

use super::{S, client, correlation_id};
use crate::error::{ApiError, Code, err};

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
        event_type: "proxy.call".into(),
        correlation_id: Some(correlation_id(&parts.headers)),
        client_addr: client(Some(addr)),
        ..Default::default()
    };
    // A signed request (RFC 9421) is read whole first: its Content-Digest
    // must match the body before anything is forwarded.
    let (body, signed_body) = if crate::sigs::present(&parts.headers) {
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
    ev.decision = "allow".into();
    note(&s, &ev, false).await;
    // The decision is durable before the upstream acts on the request.
    if let Err(e) = s.record(vec![ev.clone()]).await {
        return e.into_response();
    }
    let mut up = axum::http::Request::new(Body::empty());
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = plan.uri.clone();
    *up.headers_mut() = std::mem::take(&mut plan.headers);
    let mut result = ev;
    result.event_type = "proxy.result".into();
    send(&s, up, body, plan, result, started).await
}

/// A refusal after the request was read: audited, and counted toward the
/// run's denials. Before a credential identified a run, the refusal is
/// anyone's: it goes through the per-client throttle instead.
async fn denied(s: &S, mut ev: EventBody, e: ApiError) -> Response {
    if ev.run.is_none() {
        return e.unauthenticated("proxy.call").into_response();
    }
    ev.decision = "deny".into();
    if ev.reason.is_none() {
        ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
    }
    note(s, &ev, true).await;
    audited(s, ev, e).await
}

/// A request body: streaming still, or already read (bounded).
enum Inbound {
    Streaming(Body),
    Read(Bytes),
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| {
            err(
                Code::TooLarge,
                format!("the request body is larger than {limit} bytes"),
            )
        })
}

/// Checks what the body says where the route table cannot see it: a
/// method override in a form, JSON or multipart body, and the amount of a
/// money-moving call (then spends the single-use credential). Bodies that
/// need neither stream through unread.
async fn inspect(
    s: &S,
    parts: &Parts,
    plan: &Plan,
    body: Inbound,
    now: u64,
    ev: &mut EventBody,
) -> Result<Inbound, ApiError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let kind = BodyKind::of(content_type);
    let bytes = match body {
        Inbound::Streaming(b) if !kind.is_inspected() && plan.amount.is_none() => {
            return Ok(Inbound::Streaming(b));
        }
        Inbound::Streaming(b) => read_body(b, s.config.proxy_max_body).await?,
        Inbound::Read(b) => b,
    };
    forwarding::check_body_overrides(kind, &bytes).map_err(|r| {
        ev.reason = Some(format!("request shape: {r}"));
        err(Code::InvalidRequest, r.0)
    })?;
    if let Some(a) = &plan.amount {
        check_amount(s, a, kind, &bytes, parts.uri.query(), now, ev)?;
    }
    Ok(Inbound::Read(bytes))
}

/// The amount the request moves is at most what the credential declared,
/// and the credential has not moved money before (it is spent now).
fn check_amount(
    s: &S,
    a: &AmountPlan,
    kind: BodyKind,
    body: &[u8],
    query: Option<&str>,
    now: u64,
    ev: &mut EventBody,
) -> Result<(), ApiError> {
    let declared = a.declared;
    let sent = forwarding::amount_in(&a.at, kind, body, query).map_err(|p| {
        ev.reason = Some(format!("amount: {p}"));
        err(
            Code::Forbidden,
            format!("{p}; this credential is for one call moving at most {declared} (minor units)"),
        )
    })?;
    merge(
        &mut ev.details,
        json!({"amount_declared": declared, "amount_sent": sent}),
    );
    if sent > declared {
        ev.reason = Some(format!("amount {sent} over the declared {declared}"));
        return Err(err(
            Code::Forbidden,
            format!(
                "the request moves {sent}, more than the {declared} this credential was issued for (authorization_details, minor units); ask for a credential declaring this amount"
            ),
        ));
    }
    let spent = s
        .proxy_spent
        .lock()
        .map_err(|_| err(Code::ServerError, "the spent-credential set is unavailable"))?
        .spend(&a.jti, a.until, now);
    match spent {
        Ok(()) => {
            merge(&mut ev.details, json!({"single_use_until": a.until}));
            Ok(())
        }
        Err(SpendRefused::Spent) => {
            ev.reason = Some("single-use amount credential used again".into());
            Err(err(
                Code::Forbidden,
                "this credential was issued for an amount and is good for one call, which it has made; ask for a new one for the next call",
            ))
        }
        Err(SpendRefused::Full) => {
            ev.reason = Some("spent-credential set full".into());
            Err(err(
                Code::Unavailable,
                "the proxy is tracking too many single-use credentials right now; retry in a minute",
            ))
        }
    }
}

/// Sends the checked request upstream and streams the scrubbed response back.
async fn send(
    s: &S,
    mut up: axum::http::Request<Body>,
    body: Inbound,
    plan: Plan,
    result: EventBody,
    started: Instant,
) -> Response {
    let limit = s.config.proxy_max_body as u64;
    let in_bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&in_bytes);
    *up.body_mut() = match body {
        Inbound::Read(b) => {
            in_bytes.store(b.len() as u64, Ordering::Relaxed);
            Body::from(b)
        }
        Inbound::Streaming(b) => Body::new(http_body_util::Limited::new(
            counted(b, counter),
            limit as usize,
        )),
    };
    let outcome = tokio::time::timeout(plan.timeout, s.http.request(up)).await;
    let resp = match outcome {
        Err(_) => {
            let e = err(
                Code::GatewayTimeout,
                format!(
                    "the upstream did not answer within {} ms",
                    plan.timeout.as_millis()
                ),
            );
            return failed(s, result, started, &in_bytes, e).await;
        }
        Ok(Err(e)) => {
            let e = if in_bytes.load(Ordering::Relaxed) > limit {
                err(
                    Code::TooLarge,
                    format!("the request body is larger than {limit} bytes"),
                )
            } else if e.is_connect() {
                err(
                    Code::BadGateway,
                    "the proxy cannot connect to the upstream; tell the tool's admin (the upstream URL is in its registration)",
                )
            } else {
                err(
                    Code::BadGateway,
                    "the upstream closed the connection or sent an invalid response",
                )
            };
            return failed(s, result, started, &in_bytes, e).await;
        }
        Ok(Ok(r)) => r,
    };
    let (mut rp, rb) = resp.into_parts();
    strip_hop_by_hop(&mut rp.headers);
    if let Some(enc) = compressed(&rp.headers) {
        let e = err(
            Code::BadGateway,
            format!(
                "the upstream answered with a `{enc}`-encoded body, which the proxy cannot check for the upstream key; the tool's admin must have the upstream answer uncompressed (the proxy asks with `Accept-Encoding: identity`)"
            ),
        );
        return failed(s, result, started, &in_bytes, e).await;
    }
    let mut scrubber = plan.scrubber;
    scrub_headers(&mut rp.headers, &mut scrubber);
    let reflected = Arc::new(AtomicBool::new(scrubber.reflected()));
    let out_bytes = Arc::new(AtomicU64::new(0));
    let mut result = result;
    result.decision = "ok".into();
    let done = Outcome {
        s: Arc::clone(s),
        ev: Some(result),
        status: rp.status.as_u16(),
        started,
        headers_ms: started.elapsed().as_secs_f64() * 1e3,
        in_bytes,
        out_bytes: Arc::clone(&out_bytes),
        reflected: Arc::clone(&reflected),
    };
    let body = Scrubbed {
        inner: Body::new(rb),
        scrubber,
        flushed: false,
        trailers: None,
        outcome: done,
    };
    Response::from_parts(rp, Body::new(body))
}

/// The response's content coding, when it is not `identity`.
fn compressed(h: &HeaderMap) -> Option<String> {
    h.get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .flat_map(|v| {
            v.split(',')
                .map(|c| c.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .find(|c| !c.is_empty() && c != "identity")
        .map(|c| c.chars().take(32).collect())
}

/// Replaces the upstream key in header values (and drops a header whose
/// name holds it).
fn scrub_headers(h: &mut HeaderMap, scrubber: &mut Scrubber) {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h.iter() {
        if scrubber.scrub(name.as_str().as_bytes()).is_some() {
            continue;
        }
        match scrubber.scrub(value.as_bytes()) {
            Some(clean) => {
                if let Ok(v) = HeaderValue::from_bytes(&clean) {
                    out.append(name.clone(), v);
                }
            }
            None => {
                out.append(name.clone(), value.clone());
            }
        }
    }
    *h = out;
}

/// The upstream's response body with the upstream key replaced, also where
/// it is split across chunks (the scrubber holds back a tail); records the
/// call's outcome when done or dropped.
struct Scrubbed {
    inner: Body,
    scrubber: Scrubber,
    flushed: bool,
    trailers: Option<HeaderMap>,
    outcome: Outcome,
}

impl Scrubbed {
    fn data(&mut self, bytes: Vec<u8>) -> Frame<Bytes> {
        self.outcome
            .out_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if self.scrubber.reflected() {
            self.outcome.reflected.store(true, Ordering::Relaxed);
        }
        Frame::data(Bytes::from(bytes))
    }

    /// The end: what the scrubber held back, then the trailers.
    fn flush(&mut self) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if !self.flushed {
            self.flushed = true;
            let rest = self.scrubber.finish();
            if !rest.is_empty() {
                return Poll::Ready(Some(Ok(self.data(rest))));
            }
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

impl hyper::body::Body for Scrubbed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.flushed {
            return this.flush();
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return this.flush(),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(f))) => f,
            };
            match frame.into_data() {
                Ok(d) => {
                    let out = this.scrubber.push(&d);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(this.data(out))));
                    }
                }
                Err(f) => {
                    if let Ok(mut t) = f.into_trailers() {
                        scrub_headers(&mut t, &mut this.scrubber);
                        this.trailers = Some(t);
                    }
                    return this.flush();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.flushed && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.inner.size_hint().exact() {
            // Markers are as long as what they replace.
            Some(n) if !self.flushed => SizeHint::with_exact(n + self.scrubber.held() as u64),
            _ => SizeHint::default(),
        }
    }
}

/// The request body, counting its bytes as they stream.
fn counted(
    body: Body,
    counter: Arc<AtomicU64>,
) -> impl hyper::body::Body<Data = axum::body::Bytes, Error = axum::Error> + Send + 'static {
    body.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            counter.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        f
    })
}

/// Records a call's outcome when its response body is done (or dropped).
struct Outcome {
    s: S,
    ev: Option<EventBody>,
    status: u16,
    started: Instant,
    headers_ms: f64,
    in_bytes: Arc<AtomicU64>,
    out_bytes: Arc<AtomicU64>,
    /// The upstream sent the injected key back (it was scrubbed).
    reflected: Arc<AtomicBool>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let Some(mut ev) = self.ev.take() else { return };
        ev.time_ms = self.s.now_ms();
        merge(
            &mut ev.details,
            json!({
                "status": self.status,
                "request_bytes": self.in_bytes.load(Ordering::Relaxed),
                "response_bytes": self.out_bytes.load(Ordering::Relaxed),
                "latency_ms": round2(self.headers_ms),
                "duration_ms": round2(self.started.elapsed().as_secs_f64() * 1e3),
            }),
        );
        if self.reflected.load(Ordering::Relaxed) {
            merge(&mut ev.details, json!({"secret_reflected": true}));
            ev.reason = Some(
                "the upstream sent the injected key back; it was replaced before reaching the agent"
                    .into(),
            );
        }
        let s = Arc::clone(&self.s);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                if let Err(e) = s.record(vec![ev]).await {
                    tracing::error!("cannot record a proxy call's outcome: {}", e.description);
                }
            });
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
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

async fn failed(
    s: &S,
    mut ev: EventBody,
    started: Instant,
    in_bytes: &AtomicU64,
    e: ApiError,
) -> Response {
    ev.time_ms = s.now_ms();
    ev.decision = "error".into();
    ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
    merge(
        &mut ev.details,
        json!({
            "status": e.code.status().as_u16(),
            "request_bytes": in_bytes.load(Ordering::Relaxed),
            "duration_ms": round2(started.elapsed().as_secs_f64() * 1e3),
        }),
    );
    audited(s, ev, e).await
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// The one proxy credential a request carries, and the headers it came in.
fn proxy_token<'a>(
    h: &'a HeaderMap,
    inject: &InjectSpec,
) -> Result<(&'a str, Vec<HeaderName>), ApiError> {
    let inject_name = HeaderName::from_bytes(inject.header.as_bytes())
        .map_err(|_| err(Code::ServerError, "the tool's inject header is invalid"))?;
    let mut found: Vec<(&'a str, HeaderName)> = Vec::new();
    let sources = [
        (inject_name, Some(inject)),
        (header::AUTHORIZATION, None),
        (header::PROXY_AUTHORIZATION, None),
    ];
    let mut seen_names: Vec<HeaderName> = Vec::new();
    for (name, fmt) in sources {
        if seen_names.contains(&name) {
            continue;
        }
        seen_names.push(name.clone());
        let mut values = h.get_all(&name).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Err(err(
                Code::InvalidRequest,
                format!("send the `{name}` header once"),
            ));
        }
        let v = v.to_str().map_err(|_| {
            err(
                Code::InvalidRequest,
                format!("the `{name}` header is not ASCII"),
            )
        })?;
        let token = match fmt {
            Some(f) if name != header::AUTHORIZATION || f.extract(v).is_some() => f.extract(v),
            _ => bearer(v),
        };
        if let Some(t) = token {
            found.push((t.trim(), name));
        } else if fmt.is_some() {
            // The key header holds something that is not in the key's format.
            return Err(err(
                Code::Unauthorized,
                format!(
                    "the `{name}` header must carry the proxy credential in the form `{}`",
                    inject.format.replace("{secret}", "<proxy credential>")
                ),
            ));
        }
    }
    let Some((first, _)) = found.first() else {
        return Err(err(
            Code::Unauthorized,
            format!(
                "send the proxy credential where the API key goes (`{}: {}`), as `mandate exec` sets it up",
                inject.header,
                inject.format.replace("{secret}", "<proxy credential>")
            ),
        ));
    };
    if found.iter().any(|(t, _)| t != first) {
        return Err(err(
            Code::InvalidRequest,
            "the request carries two different credentials; send one",
        ));
    }
    let first = *first;
    Ok((first, found.into_iter().map(|(_, n)| n).collect()))
}

/// Counts a proxied call toward its run's request rate and denials (the
/// anomaly checks), when the credential named a run.
async fn note(s: &S, ev: &EventBody, denied: bool) {
    if let (Some(tenant), Some(agent), Some(run)) = (&ev.tenant, &ev.agent, &ev.run) {
        let now = s.now_secs();
        let r = crate::alerts::RunRef {
            tenant,
            agent,
            run,
            principal: ev.principal.as_deref(),
            issued_at: now,
        };
        crate::alerts::judged(s, r, now, denied).await;
    }
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim())
        .filter(|t| !t.is_empty())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Everything checked before a call may go upstream, in order: who calls
/// (the credential, its tool, revocation, suspension, its key binding),
/// whether the request is what the route table judges, what it is (route
/// → action ⊆ scope, path prefix, amount), and what policy says now.
fn authorize(
    s: &S,
    parts: &Parts,
    signed_body: Option<&[u8]>,
    now: u64,
    ev: &mut EventBody,
) -> Result<Plan, ApiError> {
    let path = parts.uri.path();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let (tool_name, upstream_path) = match rest.split_once('/') {
        Some((t, p)) => (t, format!("/{p}")),
        None => (rest, "/".to_owned()),
    };
    ev.tool = Some(tool_name.chars().take(64).collect());
    merge(
        &mut ev.details,
        json!({"method": parts.method.as_str(), "path": upstream_path.chars().take(256).collect::<String>()}),
    );
    let caller = identify(s, parts, tool_name, now, ev)?;
    check_request_shape(parts, &upstream_path).inspect_err(|e| {
        ev.reason = Some(format!("request shape: {}", e.description));
    })?;
    // A bound proxy credential (the exchange was signed) needs every call
    // signed by the same key, covering the header that carries it.
    if let Some(cnf) = &caller.claims.cnf {
        verify_binding(
            s,
            parts,
            signed_body,
            &cnf.jkt,
            &caller.token_headers,
            now,
            ev,
        )?;
    }
    let (action, amount) = judge(&caller, parts.method.as_str(), &upstream_path, ev)?;
    ask_policy(s, &caller, action, now, ev)?;
    let mut plan = plan(s, parts, &caller, &upstream_path)?;
    plan.amount = amount;
    Ok(plan)
}

/// Request parts the route table does not see but an upstream may act on:
/// the path's encoding, method-override and URL-rewrite headers, and the
/// query string (method overrides, control characters).
fn check_request_shape(parts: &Parts, upstream_path: &str) -> Result<(), ApiError> {
    check_request_path(upstream_path).map_err(|why| {
        err(
            Code::InvalidRequest,
            format!("{why}; the proxy forwards only plain paths"),
        )
    })?;
    if let Some(name) = parts
        .headers
        .keys()
        .find(|n| forwarding::is_override_header(n.as_str()))
    {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "the `{name}` header makes some servers perform another method or path than the one authorised; send the request with its real method and path"
            ),
        ));
    }
    if let Some(q) = parts.uri.query() {
        forwarding::check_query(q).map_err(|r| err(Code::InvalidRequest, r.0))?;
    }
    Ok(())
}

/// Who calls: a valid credential for this tool, not revoked, its run not suspended.
struct Caller<'a> {
    claims: Arc<AccessClaims>,
    tool: Tool,
    spec: ProxySpec,
    token: &'a str,
    token_headers: Vec<HeaderName>,
}

fn identify<'a>(
    s: &S,
    parts: &'a Parts,
    tool_name: &str,
    now: u64,
    ev: &mut EventBody,
) -> Result<Caller<'a>, ApiError> {
    // Which tenant is the token's; the tool is looked up in that tenant only.
    // The inject format is needed to find the token, so first find a token
    // in the usual places to learn the tenant.
    let probe = first_token_anywhere(&parts.headers)?.ok_or_else(|| {
        err(
            Code::Unauthorized,
            "send the proxy credential where the tool's API key goes (as `mandate exec` sets it up)",
        )
    })?;
    let claims = verify_token(s, probe, now)?;
    let reg = s.reg();
    let tool: Tool = reg
        .tools
        .get(&(claims.tenant.clone(), tool_name.to_owned()))
        .filter(|t| t.provider == mandate_core::tooling::ProviderKind::Proxy)
        .cloned()
        .ok_or_else(|| {
            err(
                Code::NotFound,
                format!(
                    "no proxy tool `{}` in tenant `{}`",
                    tool_name.chars().take(64).collect::<String>(),
                    claims.tenant
                ),
            )
        })?;
    let spec = tool
        .proxy
        .clone()
        .ok_or_else(|| err(Code::ServerError, "the proxy tool has no proxy settings"))?;
    let (token, token_headers) = proxy_token(&parts.headers, &spec.inject)?;
    if token != probe {
        return Err(err(
            Code::InvalidRequest,
            "the request carries two different credentials; send one",
        ));
    }
    ev.tenant = Some(claims.tenant.clone());
    ev.agent = Some(claims.agent.clone());
    ev.run = Some(claims.run.clone());
    ev.principal = (claims.sub != claims.client_id).then(|| claims.sub.clone());
    ev.task = Some(claims.task.clone());
    ev.credential_id = Some(claims.jti.clone());
    if claims.aud != tool.audience {
        ev.reason = Some(format!(
            "credential for `{}` used on `{}`",
            claims.aud, tool.name
        ));
        return Err(err(
            Code::Unauthorized,
            format!(
                "this credential is for `{}`, not for tool `{}`; ask for one for this tool",
                claims.aud, tool.name
            ),
        ));
    }
    if let Some(why) = reg.suspended.get(&claims.run) {
        ev.reason = Some(format!("run suspended: {why}"));
        return Err(err(
            Code::Unavailable,
            format!(
                "run `{}` is suspended ({why}); its calls wait until an admin resumes it or revokes it",
                claims.run
            ),
        ));
    }
    if let Some(k) = reg.refused(&claims.revocation_keys(), claims.iat) {
        ev.reason = Some(format!("revoked: {k}"));
        return Err(err(
            Code::Unauthorized,
            format!(
                "the credential has been revoked ({}); the run must start again",
                k.split(':').next().unwrap_or("credential")
            ),
        ));
    }
    Ok(Caller {
        claims,
        tool,
        spec,
        token,
        token_headers,
    })
}

/// A key-bound credential's call is signed (RFC 9421) by that key.
fn verify_binding(
    s: &S,
    parts: &Parts,
    signed_body: Option<&[u8]>,
    jkt: &str,
    token_headers: &[HeaderName],
    now: u64,
    ev: &mut EventBody,
) -> Result<(), ApiError> {
    let Some(body) = signed_body else {
        ev.reason = Some("bound credential without a signature".into());
        return Err(err(
            Code::Unauthorized,
            "this proxy credential is bound to a key: sign each request with it (RFC 9421: `Signature-Input`, `Signature`, `Signature-Key`)",
        ));
    };
    let target = format!(
        "{}{}",
        s.config.issuer.trim_end_matches('/'),
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let names: Vec<&str> = token_headers.iter().map(|n| n.as_str()).collect();
    crate::sigs::verify(
        s,
        &parts.headers,
        &crate::sigs::Expect {
            method: parts.method.as_str(),
            target_uri: &target,
            body: Some(body),
            jkt,
            must_cover: &names,
        },
        now,
    )
    .inspect_err(|e| ev.reason = Some(format!("signature: {}", e.description)))?;
    merge(&mut ev.details, json!({"proof": "httpsig"}));
    Ok(())
}

/// What the request is: its route's action (within the credential's
/// scope), inside the credential's path prefix, and, when money moves, the
/// amount check the body must pass.
fn judge(
    c: &Caller<'_>,
    method: &str,
    path: &str,
    ev: &mut EventBody,
) -> Result<(String, Option<AmountPlan>), ApiError> {
    let shown = path.chars().take(128).collect::<String>();
    let route: &RouteSpec = c
        .spec
        .judge(method, path)
        .map_err(|why| {
            ev.reason = Some(format!("request shape: {why}"));
            err(Code::InvalidRequest, why)
        })?
        .ok_or_else(|| {
            err(
                Code::Forbidden,
                format!(
                    "`{method} {shown}` is not mapped to any action of tool `{}`; the proxy forwards only mapped requests",
                    c.tool.name
                ),
            )
        })?;
    let action = route.action.clone();
    ev.actions = vec![action.clone()];
    if !c.claims.scope.split(' ').any(|a| a == action) {
        return Err(err(
            Code::Forbidden,
            format!(
                "`{method} {shown}` is action `{action}`, which this credential does not carry (it carries: {})",
                c.claims.scope
            ),
        ));
    }
    // A holder narrowed its mandate to paths under a prefix, matched on
    // segments (the path is already free of dot segments and encodings).
    if let Some(prefix) = &c.claims.path_prefix
        && !mandate_core::paths::path_within(prefix, path)
    {
        ev.reason = Some(format!("outside path prefix {prefix}"));
        return Err(err(
            Code::Forbidden,
            format!("`{shown}` is outside `{prefix}`, the only paths this credential may reach"),
        ));
    }
    let amount = amount_plan(c, route, method, &shown, ev)?;
    Ok((action, amount))
}

/// A credential declaring an amount is good only on a route that says where
/// the request's amount is; a route that moves money needs a credential
/// declaring one.
fn amount_plan(
    c: &Caller<'_>,
    route: &RouteSpec,
    method: &str,
    shown: &str,
    ev: &mut EventBody,
) -> Result<Option<AmountPlan>, ApiError> {
    let declared = match c
        .claims
        .authorization_details
        .as_ref()
        .and_then(|d| d.get("amount"))
    {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ev.reason = Some("declared amount unreadable".into());
            err(
                Code::Forbidden,
                "the credential's declared amount is not a non-negative integer; ask for a new credential",
            )
        })?),
    };
    match (declared, &route.amount) {
        (None, None) => Ok(None),
        (Some(d), None) => {
            ev.reason = Some("declared amount on a route that names none".into());
            Err(err(
                Code::Forbidden,
                format!(
                    "this credential was issued for an amount ({d}), but route `{} {}` of tool `{}` does not say where a request carries its amount, so the proxy cannot check it; an admin names it in the route (`amount`), or ask for a credential without an amount",
                    route.method, route.path, c.tool.name
                ),
            ))
        }
        (None, Some(_)) => {
            ev.reason = Some("money-moving route without a declared amount".into());
            Err(err(
                Code::Forbidden,
                format!(
                    "`{method} {shown}` moves money: ask for a credential declaring the amount (`authorization_details` with `amount`, in minor units); it is good for one call of at most that amount"
                ),
            ))
        }
        (Some(declared), Some(at)) => Ok(Some(AmountPlan {
            at: at.clone(),
            declared,
            jti: c.claims.jti.clone(),
            until: c.claims.exp,
        })),
    }
}

/// The tenant's policies, in force now, judge the call (with the run's
/// history): the exchange's own policy question ([`crate::exchange::decide`]).
fn ask_policy(
    s: &S,
    c: &Caller<'_>,
    action: String,
    now: u64,
    ev: &mut EventBody,
) -> Result<(), ApiError> {
    use crate::exchange::{decide, gather};
    let claims = &c.claims;
    let input = gather::policy_input(
        s,
        (&claims.tenant, &claims.agent, &claims.run),
        claims.iat,
        &c.tool.name,
        now,
    )
    .ok_or_else(|| err(Code::Unauthorized, "the agent is no longer registered"))?;
    let details = claims
        .authorization_details
        .as_ref()
        .map(mandate_core::policy::Details::from_json)
        .unwrap_or_default();
    let verdict = decide::verdict(
        s,
        &decide::Question {
            subject: decide::Subject::of_credential(claims),
            input: &input,
            tool: &c.tool,
            actions: &[action],
            details: &details,
            approved: claims.approval.is_some(),
        },
        now,
    )?;
    ev.policies = verdict.policies;
    if verdict.allowed {
        Ok(())
    } else {
        Err(err(
            Code::AccessDenied,
            verdict.reason.unwrap_or_else(|| "denied by policy".into()),
        ))
    }
}

/// The request as it goes upstream: our credential and signature removed
/// (and refused anywhere else), the real key injected, uncompressed
/// answers asked for (so they can be scrubbed of the key).
fn plan(s: &S, parts: &Parts, c: &Caller<'_>, upstream_path: &str) -> Result<Plan, ApiError> {
    let (tool, spec, token) = (&c.tool, &c.spec, c.token);
    let secret = s.tool_secret(&tool.tenant, &tool.name).ok_or_else(|| {
        err(
            Code::Unavailable,
            format!(
                "tool `{}` has no upstream key yet; an admin sets it with `mandate tool set-secret {}`",
                tool.name, tool.name
            ),
        )
    })?;
    if let Some(q) = parts.uri.query()
        && contains(q.as_bytes(), token.as_bytes())
    {
        return Err(err(
            Code::InvalidRequest,
            "the proxy credential appears in the query string; it is never forwarded upstream",
        ));
    }
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    for n in &c.token_headers {
        headers.remove(n);
    }
    // The agent's signature is for the broker, not the upstream.
    for n in ["signature", "signature-input", "signature-key"] {
        headers.remove(n);
    }
    for (name, v) in headers.iter() {
        if contains(v.as_bytes(), token.as_bytes()) {
            return Err(err(
                Code::InvalidRequest,
                format!(
                    "the proxy credential appears in the `{name}` header; it is never forwarded upstream"
                ),
            ));
        }
    }
    let key = std::str::from_utf8(secret.expose())
        .map_err(|_| err(Code::ServerError, "the tool's upstream key is not text"))?;
    let rendered = zeroize::Zeroizing::new(spec.inject.render(key));
    let mut value = HeaderValue::from_str(&rendered).map_err(|_| {
        err(
            Code::ServerError,
            "the tool's upstream key cannot go into an HTTP header; an admin must set it again",
        )
    })?;
    value.set_sensitive(true);
    let inject_name = HeaderName::from_bytes(spec.inject.header.as_bytes())
        .map_err(|_| err(Code::ServerError, "the tool's inject header is invalid"))?;
    headers.insert(inject_name, value);
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > s.config.proxy_max_body as u64
    {
        return Err(err(
            Code::TooLarge,
            format!(
                "the request body is larger than {} bytes",
                s.config.proxy_max_body
            ),
        ));
    }
    let target = format!(
        "{}{}{}",
        spec.upstream.trim_end_matches('/'),
        upstream_path,
        parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    );
    let uri: Uri = target
        .parse()
        .map_err(|_| err(Code::InvalidRequest, "the request path cannot be forwarded"))?;
    Ok(Plan {
        uri,
        headers,
        timeout: Duration::from_millis(spec.timeout_ms),
        amount: None,
        scrubber: Scrubber::new([key.as_bytes(), rendered.as_bytes()]),
    })
}

/// Spent single-use (amount) credentials, from the audit trail: every
/// allowed `proxy.call` that spent one is durable before its request went
/// upstream, so a restarted broker refuses the credential again until it
/// expires.
pub(crate) fn spent_from_trail(
    store: &dyn mandate_store::Store,
    max_ttl: u64,
    now_ms: u64,
) -> Result<SpentSet, crate::config::BootError> {
    let mut spent = SpentSet::new(SPENT_CAP);
    let now = now_ms / 1000;
    crate::state::each_recent_event(store, "proxy.call", Some("allow"), max_ttl, now_ms, |ev| {
        let until = ev.body.details["single_use_until"].as_u64();
        if let (Some(until), Some(jti)) = (until, ev.body.credential_id.as_deref())
            && until >= now
            // The proxy never lets more than the cap be alive at once, so
            // full means a trail it did not write: refuse to start rather
            // than forget a spent credential.
            && let Err(SpendRefused::Full) = spent.spend(jti, until, now)
        {
            return Err(crate::config::BootError(format!(
                "more than {SPENT_CAP} single-use proxy credentials in the audit trail are still alive; wait until they expire (at most {max_ttl} s) and start again"
            )));
        }
        Ok(())
    })?;
    Ok(spent)
}

/// The credential, before the tool (and so its key format) is known: a
/// bearer token, or a key header of another shape (`x-api-key: <token>`)
/// whose value is a JWS. Two different ones are refused.
fn first_token_anywhere(h: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut found: Option<&str> = None;
    let bearers = [header::AUTHORIZATION, header::PROXY_AUTHORIZATION]
        .into_iter()
        .flat_map(|n| h.get_all(n).iter())
        .filter_map(|v| v.to_str().ok())
        .filter_map(bearer);
    let jws = h
        .iter()
        .filter_map(|(_, v)| v.to_str().ok())
        .map(str::trim)
        .filter(|v| v.starts_with("eyJ") && v.matches('.').count() == 2);
    for t in bearers.chain(jws) {
        match found {
            Some(f) if f != t => {
                return Err(err(
                    Code::InvalidRequest,
                    "the request carries two different credentials; send one",
                ));
            }
            Some(_) => {}
            None => found = Some(t),
        }
    }
    Ok(found)
}

fn verify_token(s: &S, token: &str, now: u64) -> Result<Arc<AccessClaims>, ApiError> {
    let digest = mandate_core::mandate::token_digest(token);
    if let Some(c) = s
        .proxy_credentials
        .lock()
        .ok()
        .and_then(|m| m.get(&digest, now))
    {
        return Ok(c);
    }
    let c =
        credential::verify(&s.keys, &s.config.issuer, token, now, false).map_err(|e| match e {
            mandate_core::Error::Expired { .. } => err(
                Code::Unauthorized,
                "the proxy credential has expired; ask the agent socket for a fresh one",
            ),
            other => err(
                Code::Unauthorized,
                format!("the proxy credential is not valid: {other}"),
            ),
        })?;
    let c = Arc::new(c);
    if let Ok(mut m) = s.proxy_credentials.lock() {
        m.put(digest, c.exp.saturating_sub(1), Arc::clone(&c), now);
    }
    Ok(c)
}
