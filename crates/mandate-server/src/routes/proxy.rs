//! The `proxy` provider's data path: `ANY /proxy/{tool}/{path}`.
//!
//! For upstream APIs that only accept a static key. The agent (or an
//! unchanged SDK) sends a short-lived proxy credential where the API key
//! would go; the proxy checks it, maps method and path to an action through
//! the tool's route table, asks the tenant's policy, injects the real key
//! and forwards, streaming both ways. Our credential never goes upstream;
//! the key never comes back. Each call leaves two audit events: the
//! decision (durable before the upstream sees the request) and the outcome
//! (status, bytes, latency; never bodies, never secrets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;

use mandate_core::audit::EventBody;
use mandate_core::credential::{self, AccessClaims};
use mandate_core::policy::ExchangeFacts;
use mandate_core::tooling::{HOP_BY_HOP, InjectSpec, check_request_path};
use mandate_store::Tool;

use super::{S, client, correlation_id};
use crate::error::{ApiError, Code, err};

/// Path prefix of the proxy.
pub const PREFIX: &str = "/proxy/";

/// What a checked request is allowed to become.
struct Plan {
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
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
        time_ms: crate::now_ms(),
        event_type: "proxy.call".into(),
        correlation_id: Some(correlation_id(&parts.headers)),
        client_addr: client(Some(addr)),
        ..Default::default()
    };
    // A signed request (RFC 9421) is read whole first: its Content-Digest
    // must match the body before anything is forwarded.
    let (body, signed_body) = if crate::sigs::present(&parts.headers) {
        match http_body_util::Limited::new(body, s.config.proxy_max_body)
            .collect()
            .await
        {
            Ok(b) => {
                let b = b.to_bytes();
                (Body::from(b.clone()), Some(b))
            }
            Err(_) => {
                let e = err(
                    Code::TooLarge,
                    format!(
                        "the request body is larger than {} bytes",
                        s.config.proxy_max_body
                    ),
                );
                ev.decision = "deny".into();
                ev.reason = Some(e.description.clone());
                return audited(&s, ev, e).await;
            }
        }
    } else {
        (body, None)
    };
    let plan = match authorize(
        &s,
        &parts,
        signed_body.as_deref(),
        crate::now_secs(),
        &mut ev,
    ) {
        Ok(p) => p,
        Err(e) => {
            ev.decision = "deny".into();
            if ev.reason.is_none() {
                ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
            }
            note(&s, &ev, true).await;
            return audited(&s, ev, e).await;
        }
    };
    ev.decision = "allow".into();
    note(&s, &ev, false).await;
    // The decision is durable before the upstream acts on the request.
    if let Err(e) = s.record(vec![ev.clone()]).await {
        return e.into_response();
    }

    let limit = s.config.proxy_max_body as u64;
    let in_bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&in_bytes);
    let body = Body::new(http_body_util::Limited::new(
        counted(body, counter),
        limit as usize,
    ));
    let mut up = axum::http::Request::new(body);
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = plan.uri;
    *up.headers_mut() = plan.headers;

    let mut result = ev;
    result.event_type = "proxy.result".into();
    let outcome = tokio::time::timeout(plan.timeout, s.http.request(up)).await;
    let resp = match outcome {
        Err(_) => {
            return failed(
                &s,
                result,
                started,
                &in_bytes,
                err(
                    Code::GatewayTimeout,
                    format!(
                        "the upstream did not answer within {} ms",
                        plan.timeout.as_millis()
                    ),
                ),
            )
            .await;
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
            return failed(&s, result, started, &in_bytes, e).await;
        }
        Ok(Ok(r)) => r,
    };
    let (mut rp, rb) = resp.into_parts();
    strip_hop_by_hop(&mut rp.headers);
    let out_bytes = Arc::new(AtomicU64::new(0));
    result.decision = "ok".into();
    let done = Outcome {
        s: Arc::clone(&s),
        ev: Some(result),
        status: rp.status.as_u16(),
        started,
        headers_ms: started.elapsed().as_secs_f64() * 1e3,
        in_bytes,
        out_bytes: Arc::clone(&out_bytes),
    };
    let body = rb.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            done.out_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        f
    });
    Response::from_parts(rp, Body::new(body))
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
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let Some(mut ev) = self.ev.take() else { return };
        ev.time_ms = crate::now_ms();
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
    ev.time_ms = crate::now_ms();
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
        let now = crate::now_secs();
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
    check_request_path(&upstream_path).map_err(|why| {
        err(
            Code::InvalidRequest,
            format!("{why}; the proxy forwards only plain paths"),
        )
    })?;

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
        .filter(|t| t.provider == "proxy")
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
    // A bound proxy credential (the exchange was signed) needs every call
    // signed by the same key, covering the header that carries it.
    if let Some(cnf) = &claims.cnf {
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
                jkt: &cnf.jkt,
                must_cover: &names,
            },
            now,
        )
        .inspect_err(|e| ev.reason = Some(format!("signature: {}", e.description)))?;
        merge(&mut ev.details, json!({"proof": "httpsig"}));
    }
    let action = spec
        .action_for(parts.method.as_str(), &upstream_path)
        .ok_or_else(|| {
            err(
                Code::Forbidden,
                format!(
                    "`{} {}` is not mapped to any action of tool `{}`; the proxy forwards only mapped requests",
                    parts.method,
                    upstream_path.chars().take(128).collect::<String>(),
                    tool.name
                ),
            )
        })?
        .to_owned();
    ev.actions = vec![action.clone()];
    if !claims.scope.split(' ').any(|a| a == action) {
        return Err(err(
            Code::Forbidden,
            format!(
                "`{} {}` is action `{action}`, which this credential does not carry (it carries: {})",
                parts.method,
                upstream_path.chars().take(128).collect::<String>(),
                claims.scope
            ),
        ));
    }
    // A holder narrowed its mandate to paths under a prefix (the path is
    // already free of dot segments and encoded slashes).
    if let Some(prefix) = &claims.path_prefix
        && !upstream_path.starts_with(prefix.as_str())
    {
        ev.reason = Some(format!("outside path prefix {prefix}"));
        return Err(err(
            Code::Forbidden,
            format!(
                "`{}` is outside `{prefix}`, the only paths this credential may reach",
                upstream_path.chars().take(128).collect::<String>()
            ),
        ));
    }
    let agent = reg
        .agents
        .get(&(claims.tenant.clone(), claims.agent.clone()))
        .cloned()
        .ok_or_else(|| err(Code::Unauthorized, "the agent is no longer registered"))?;
    let policies = reg
        .compiled
        .get(&claims.tenant)
        .cloned()
        .unwrap_or_default();
    let generation = reg.generation;
    drop(reg);
    let actions = [action];
    let details = claims
        .authorization_details
        .as_ref()
        .map(mandate_core::policy::Details::from_json)
        .unwrap_or_default();
    let history = s
        .history
        .lock()
        .map(|h| {
            h.facts(
                &claims.run,
                claims.iat,
                (&claims.tenant, &claims.agent, &tool.name),
                now,
            )
        })
        .unwrap_or_default();
    let facts = ExchangeFacts {
        tenant: &claims.tenant,
        now,
        agent: &claims.agent,
        agent_owner: &agent.owner,
        agent_purpose: &agent.purpose,
        run: &claims.run,
        task: &claims.task,
        principal: ev.principal.as_deref(),
        grant: claims.grant.as_deref(),
        tool: &tool.name,
        tool_audience: &tool.audience,
        tool_labels: &tool.labels,
        tool_risk: &tool.risk,
        tool_provider: &tool.provider,
        actions: &actions,
        depth: claims.chain_depths().0,
        hops: claims.chain_depths().1,
        approved: claims.approval.is_some(),
        details: &details,
        history: &history,
    };
    s.enforce(generation, &policies, &facts, &mut ev.policies)?;

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
    for n in &token_headers {
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
    let mut value = HeaderValue::from_str(&spec.inject.render(key)).map_err(|_| {
        err(
            Code::ServerError,
            "the tool's upstream key cannot go into an HTTP header; an admin must set it again",
        )
    })?;
    value.set_sensitive(true);
    let inject_name = HeaderName::from_bytes(spec.inject.header.as_bytes())
        .map_err(|_| err(Code::ServerError, "the tool's inject header is invalid"))?;
    headers.insert(inject_name, value);
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
    })
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
