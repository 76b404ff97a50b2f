//! The OAuth endpoints: server metadata (RFC 8414), JWKS (RFC 7517), token
//! exchange (RFC 8693) with DPoP (RFC 9449), introspection (RFC 7662) and
//! revocation (RFC 7009).

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use rand_core::OsRng;
use serde_json::{Value, json};

use mandate_core::audit::EventBody;
use mandate_core::capability::check_action;
use mandate_core::credential::{self, AccessClaims, Actor, Confirmation};
use mandate_core::dpop::{self, ProofExpectations};
use mandate_core::ids::random_id;
use mandate_core::jose::Alg;
use mandate_core::mandate::{self, MandateClaims};
use mandate_core::policy::{Details, ExchangeFacts};
use mandate_store::{Approval, Entry, Lease, Mutation, Revocation, Tool};

use super::{S, body, client, correlation_id, require_admin};
use crate::error::{ApiError, Code, err};
use crate::form::Form;

/// RFC 8693 §3 grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Our subject token type: a Mandate mandate.
pub const TOKEN_TYPE_MANDATE: &str = "urn:mandate:params:oauth:token-type:mandate";
/// RFC 8693 §3 issued token type.
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3 JWT token type.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Our issued token type for the `postgres` provider: a connection URI
/// (RFC 8693 §3 lets a server define its own token type URIs).
pub const TOKEN_TYPE_POSTGRES: &str = "urn:mandate:params:oauth:token-type:postgres-uri";

/// What an allowed exchange produced before it is recorded.
struct Issued {
    claims: AccessClaims,
    /// The signed JWT (`jwt` and `proxy` providers).
    token: Option<String>,
    tool: Tool,
    /// Roles a `postgres` credential joins.
    pg_roles: Vec<String>,
    /// Use-limited attenuation blocks to count (block id, limit).
    count_uses: Vec<(String, u64)>,
    /// Expiry of the mandate (when the counts can be forgotten).
    mandate_exp: u64,
    /// The approvals this credential spends (one per `@approval` policy).
    approvals: Vec<Approval>,
}

/// RFC 8414 authorization server metadata.
pub async fn metadata(State(s): State<S>) -> Json<Value> {
    let iss = s.config.issuer.trim_end_matches('/');
    Json(json!({
        "issuer": iss,
        "token_endpoint": s.token_endpoint,
        "jwks_uri": format!("{iss}/jwks.json"),
        "introspection_endpoint": format!("{iss}/oauth/introspect"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "grant_types_supported": [GRANT_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "dpop_signing_alg_values_supported": ["EdDSA", "Ed25519", "ES256"],
        "response_types_supported": [],
        "mandate_subject_token_types_supported": [TOKEN_TYPE_MANDATE],
        "mandate_admin_api": format!("{iss}/v1"),
    }))
}

/// The credential signing keys.
pub async fn jwks(State(s): State<S>) -> Response {
    let mut r = Json(s.keys.jwks_at(crate::now_secs())).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// What an exchange learned before it was decided, for the audit event.
#[derive(Default)]
struct Seen {
    mandate: Option<std::sync::Arc<MandateClaims>>,
    tool: Option<String>,
    actions: Vec<String>,
    policies: Vec<String>,
    audit_reason: Option<String>,
    /// How possession was proven: `dpop` or `httpsig` (RFC 9421).
    pop: Option<&'static str>,
    /// Approval requests to record (the answer is `authorization_pending`).
    pending: Vec<Approval>,
    /// Existing pending approvals the agent is waiting for.
    waiting: Vec<Approval>,
    /// The declared amount, for the run's history.
    amount: Option<i64>,
    /// The tool's labels, for the run's history.
    labels: Vec<String>,
}

fn require_form_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
        return Err(err(
            Code::InvalidRequest,
            "send the parameters as `application/x-www-form-urlencoded` (RFC 6749 §4.1.3)",
        ));
    }
    Ok(())
}

fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut it = headers.get_all(name).iter();
    let first = it.next();
    if it.next().is_some() {
        return Err(err(
            Code::InvalidDpopProof,
            format!("send exactly one `{name}` header"),
        ));
    }
    first
        .map(|v| {
            v.to_str().map_err(|_| {
                err(
                    Code::InvalidDpopProof,
                    format!("the `{name}` header is not ASCII"),
                )
            })
        })
        .transpose()
}

/// RFC 8693 token exchange: a mandate and a DPoP proof in, a credential out.
pub async fn token(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let mut resp = token_inner(&s, addr, headers, raw).await;
    // RFC 9449 §8.1, §8.2: every answer carries the nonce to use next
    // (required with `--dpop-nonce`, and after a restart for older proofs).
    s.add_dpop_nonce(&mut resp);
    resp
}

async fn token_inner(
    s: &S,
    addr: SocketAddr,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let now = crate::now_secs();
    let mut seen = Seen::default();
    // The mandate is verified first, off the async workers and within the
    // gate's bounds; `exchange` then only reads the result.
    let verified = match presented_subject(&raw) {
        Some(subject) => Some(crate::gate::verify_mandate(s, &subject, now, addr.ip()).await),
        None => None,
    };
    let outcome = exchange(s, &headers, raw, now, verified, &mut seen);
    let m = seen.mandate.as_deref();
    let mut ev = EventBody {
        time_ms: crate::now_ms(),
        event_type: "token.exchange".into(),
        tenant: m.map(|m| m.tenant.clone()),
        agent: m.map(|m| m.agent.clone()),
        run: m.map(|m| m.run.clone()),
        principal: m.and_then(|m| m.principal.clone()),
        task: m.map(|m| m.task.clone()),
        tool: seen.tool.clone(),
        actions: seen.actions.clone(),
        policies: seen.policies.clone(),
        correlation_id: Some(correlation_id(&headers)),
        client_addr: client(Some(addr)),
        ..Default::default()
    };
    match outcome {
        Ok(issued) => {
            let claims = &issued.claims;
            ev.decision = "allow".into();
            ev.credential_id = Some(claims.jti.clone());
            ev.credential_exp = Some(claims.exp);
            ev.details = json!({"grant": claims.grant, "aud": claims.aud, "provider": issued.tool.provider,
                "proof": seen.pop, "bound": claims.cnf.is_some()});
            if let Some(a) = &seen.amount {
                ev.details["amount"] = json!(a);
            }
            if !issued.approvals.is_empty() {
                // "performed X, approved by alice at 09:22 UTC" (and by
                // finance's bob: one approval per policy that asked).
                let list: Vec<Value> = issued
                    .approvals
                    .iter()
                    .map(|a| {
                        json!({"id": a.id, "approved_by": a.decided_by,
                        "approved_ms": a.decided_ms, "request_digest": a.request_digest,
                        "policies": a.policies})
                    })
                    .collect();
                ev.details["approval"] = list[0].clone();
                ev.details["approvals"] = json!(list);
            }
            if let Some(m) = seen.mandate.as_deref().filter(|m| !m.hops.is_empty()) {
                ev.details["hops"] = json!(m.hops);
                ev.details["holder"] = json!(m.cnf_jkt);
                if let Some(p) = &m.resource_prefix {
                    ev.details["path_prefix"] = json!(p);
                }
            }
            // A database credential is a role the broker must drop later:
            // the lease is recorded with the event, before the role exists.
            let pg = if issued.tool.provider == "postgres" {
                let lease = Lease {
                    id: claims.jti.clone(),
                    tenant: claims.tenant.clone(),
                    tool: issued.tool.name.clone(),
                    run: claims.run.clone(),
                    agent: claims.agent.clone(),
                    principal: (claims.sub != claims.client_id).then(|| claims.sub.clone()),
                    grant: claims.grant.clone(),
                    role: format!(
                        "mandate_{}_{}",
                        claims.run.trim_start_matches("run_"),
                        &claims.jti.trim_start_matches("cred_")[..6]
                    ),
                    expires_at: claims.exp,
                    created_ms: crate::now_ms(),
                    dropped_ms: None,
                    revoked_by: claims.revocation_keys(),
                };
                ev.details["role"] = json!(lease.role);
                ev.details["roles"] = json!(issued.pg_roles);
                Some(lease)
            } else {
                None
            };
            // The event is durable before the credential leaves the broker.
            let withheld = ev.clone();
            let mut mutations: Vec<Mutation> =
                pg.clone().map(Mutation::CreateLease).into_iter().collect();
            if !issued.count_uses.is_empty() {
                mutations.push(Mutation::CountUses {
                    blocks: issued.count_uses.clone(),
                    until: issued.mandate_exp,
                });
            }
            for a in &issued.approvals {
                // Spent with the credential they allowed: never twice.
                mutations.push(Mutation::UseApproval { id: a.id.clone() });
            }
            let mutation = match mutations.len() {
                0 | 1 => mutations.pop(),
                _ => Some(Mutation::Batch(mutations)),
            };
            if let Err(e) = s
                .commit(Entry {
                    mutation,
                    events: vec![ev],
                })
                .await
            {
                if e.code == Code::Conflict && !issued.approvals.is_empty() {
                    return err(
                        Code::InvalidGrant,
                        "this approval was already used for a credential; ask again",
                    )
                    .into_response();
                }
                if e.code == Code::Conflict && !issued.count_uses.is_empty() {
                    // Another exchange took the last use first.
                    let mut w = withheld;
                    w.decision = "deny".into();
                    w.credential_id = None;
                    w.reason = Some("use limit of an attenuation block reached".into());
                    if let Err(e) = s.record(vec![w]).await {
                        return e.into_response();
                    }
                    return err(
                        Code::InvalidGrant,
                        "an attenuation block's use limit was reached; ask the holder before you for a new mandate",
                    )
                    .into_response();
                }
                return e.into_response();
            }
            // A revocation committed while this exchange was in flight wins:
            // the credential is not returned, and the trail says so.
            let keys = claims.revocation_keys();
            let revoked = s.reg().refused(&keys, claims.iat);
            let mut failure = withheld.clone();
            if let Some(k) = revoked {
                let mut w = withheld;
                w.time_ms = crate::now_ms();
                w.event_type = "token.withheld".into();
                w.decision = "deny".into();
                w.reason = Some(format!("revoked while the exchange was in flight: {k}"));
                if let Err(e) = s.record(vec![w]).await {
                    return e.into_response();
                }
                return err(
                    Code::InvalidGrant,
                    "the mandate has been revoked; start a new run",
                )
                .into_response();
            }
            let mut body = json!({
                "issued_token_type": TOKEN_TYPE_ACCESS,
                "token_type": "DPoP",
                "expires_in": claims.exp.saturating_sub(now),
                "scope": claims.scope,
                "credential_id": claims.jti,
            });
            match (issued.tool.provider.as_str(), pg, &issued.token) {
                ("postgres", Some(lease), _) => {
                    let Some(spec) = &issued.tool.postgres else {
                        return err(Code::ServerError, "the tool has no database settings")
                            .into_response();
                    };
                    let password = password();
                    if let Err(e) =
                        s.pg.create_role(s, &lease, &password, &issued.pg_roles)
                            .await
                    {
                        // Nothing half-made stays: the lease is revoked, so the
                        // reaper drops the role if the server made it after all;
                        // and it is marked abandoned, so the reaper drops it even
                        // if that revocation cannot be made durable.
                        s.pg.abandon(&lease.id, "the database role could not be created");
                        let refused = e.kind == crate::pg::PgErrorKind::Refused;
                        failure.time_ms = crate::now_ms();
                        failure.event_type = "token.failed".into();
                        failure.decision = if refused { "deny" } else { "error" }.into();
                        failure.reason = Some(e.message.clone());
                        if let Err(c) = s
                            .commit(Entry {
                                mutation: Some(Mutation::Revoke(Revocation {
                                    seq: 0,
                                    key: format!("cred:{}", lease.id),
                                    reason: "database role could not be created".into(),
                                    time_ms: crate::now_ms(),
                                    until: lease.expires_at,
                                    tenant: Some(lease.tenant.clone()),
                                })),
                                events: vec![failure],
                            })
                            .await
                        {
                            tracing::error!(lease = %lease.id, role = %lease.role,
                                "the revocation of a lease whose database role could not be created was not stored ({}); the lease reaper drops the role anyway (after a restart: at the lease's expiry)",
                                c.description);
                        }
                        return if refused {
                            err(
                                Code::AccessDenied,
                                format!("{}; no credential was issued (an admin of tool `{}` must fix its role mapping)", e.message, issued.tool.name),
                            )
                        } else {
                            err(
                                Code::Unavailable,
                                format!("{}; no credential was issued, retry later", e.message),
                            )
                        }
                        .into_response();
                    }
                    body["access_token"] = json!(format!(
                        "postgresql://{}:{}@{}:{}/{}",
                        lease.role, password, spec.host, spec.port, spec.database
                    ));
                    body["issued_token_type"] = json!(TOKEN_TYPE_POSTGRES);
                    body["token_type"] = json!("N_A");
                }
                ("proxy", _, Some(token)) => {
                    body["access_token"] = json!(token);
                    body["token_type"] = json!("Bearer");
                    body["proxy_url"] = json!(super::admin::proxy_url(s, &issued.tool.name));
                }
                (_, _, Some(token)) => body["access_token"] = json!(token),
                _ => {
                    return err(Code::ServerError, "no credential was made").into_response();
                }
            }
            if let Some(m) = seen.mandate.as_deref() {
                let first = s
                    .history
                    .lock()
                    .map(|mut h| {
                        h.issued(
                            (&m.tenant, &m.agent, &issued.tool.name),
                            &m.run,
                            &claims
                                .scope
                                .split(' ')
                                .map(str::to_owned)
                                .collect::<Vec<_>>(),
                            &seen.labels,
                            seen.amount,
                            now,
                        )
                    })
                    .unwrap_or(false);
                crate::alerts::issued(s, m, &issued.tool.name, first, now).await;
            }
            let mut r = Json(body).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) if e.code == Code::AuthorizationPending => {
            let interval = 5;
            // Waiting counts toward the run's request rate (anomalies).
            if let Some(m) = seen.mandate.as_deref()
                && seen.pop.is_some()
            {
                crate::alerts::judged(s, m.into(), now, false).await;
            }
            if !seen.pending.is_empty() {
                // New approval requests: durable first, then announced.
                ev.event_type = "approval.request".into();
                ev.decision = "pending".into();
                ev.reason = seen.audit_reason.clone();
                let first = &seen.pending[0];
                ev.details = json!({"approval": first.id,
                    "approvals": seen.pending.iter().map(|a| json!({"id": a.id, "policies": a.policies, "approvers": a.approvers})).collect::<Vec<_>>(),
                    "approvers": first.approvers, "details": first.details, "expires_at": first.expires_at});
                let mut creates: Vec<Mutation> = seen
                    .pending
                    .iter()
                    .cloned()
                    .map(Mutation::CreateApproval)
                    .collect();
                let mutation = match creates.len() {
                    1 => creates.pop(),
                    _ => Some(Mutation::Batch(creates)),
                };
                if let Err(we) = s
                    .commit(Entry {
                        mutation,
                        events: vec![ev],
                    })
                    .await
                {
                    return we.into_response();
                }
                for a in &seen.pending {
                    crate::alerts::announce(s, "approval.requested", json!(a)).await;
                }
            }
            // Waiting for decisions, or a suspended run.
            let mut all = seen.pending;
            all.extend(seen.waiting);
            pending(&e, &all, interval, now)
        }
        // Before the caller proved a run's key, a refusal is anyone's: it
        // goes through the per-client throttle, so no unauthenticated
        // caller writes one event per request.
        Err(e) if seen.pop.is_none() => e.unauthenticated("token.exchange").into_response(),
        Err(e) => {
            ev.decision = "deny".into();
            ev.reason = Some(
                seen.audit_reason
                    .unwrap_or_else(|| format!("{}: {}", e.code.as_str(), e.description)),
            );
            if let Err(we) = s.record(vec![ev]).await {
                return we.into_response();
            }
            // A denial counts against the run only once its key was proven
            // (above): someone who saw a mandate without its key cannot make
            // it look anomalous (and get it suspended).
            if let Some(m) = seen.mandate.as_deref() {
                crate::alerts::judged(s, m.into(), now, true).await;
            }
            e.into_response()
        }
    }
}

/// RFC 8628 §3.5-style `authorization_pending`, with the approvals to poll
/// (`approval_id` names the first; `approvals` all, each with its approvers).
fn pending(e: &ApiError, all: &[Approval], interval: u64, now: u64) -> Response {
    let mut body = json!({"error": e.code.as_str(), "error_description": e.description,
        "interval": interval});
    if let Some(a) = all.first() {
        let mut approvers: Vec<&String> = all.iter().flat_map(|a| &a.approvers).collect();
        approvers.sort();
        approvers.dedup();
        body["approval_id"] = json!(a.id);
        body["expires_in"] = json!(
            all.iter()
                .map(|a| a.expires_at)
                .min()
                .unwrap_or(now)
                .saturating_sub(now)
        );
        body["approvers"] = json!(approvers);
        body["approvals"] = json!(
            all.iter()
                .map(|a| json!({"id": a.id, "policies": a.policies,
            "approvers": a.approvers, "status": a.status}))
                .collect::<Vec<_>>()
        );
    }
    let mut r = (e.code.status(), Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A random database password (URL-safe, so it fits a connection URI).
fn password() -> String {
    let s = mandate_core::secret::Secret::random(&mut OsRng, 24);
    mandate_core::jose::b64(s.expose())
}

/// The `subject_token` of a token request, if the body is a form that has one.
fn presented_subject(raw: &Result<Bytes, BytesRejection>) -> Option<String> {
    let raw = raw.as_ref().ok()?;
    Form::parse(raw)
        .ok()?
        .opt("subject_token")
        .map(str::to_owned)
}

fn exchange(
    s: &S,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
    now: u64,
    verified: Option<Result<std::sync::Arc<MandateClaims>, ApiError>>,
    seen: &mut Seen,
) -> Result<Issued, ApiError> {
    let raw = body(raw, s.config.max_body)?;
    require_form_content_type(headers)?;
    let form = Form::parse(&raw)?;
    match form.req("grant_type")? {
        GRANT_TOKEN_EXCHANGE => {}
        other => {
            return Err(err(
                Code::UnsupportedGrantType,
                format!(
                    "grant type `{}` is not supported; use `{GRANT_TOKEN_EXCHANGE}`",
                    other.chars().take(80).collect::<String>()
                ),
            ));
        }
    }
    if form.opt("actor_token").is_some() {
        return Err(err(
            Code::InvalidRequest,
            "`actor_token` is not accepted: the mandate already names the actor",
        ));
    }
    if let Some(t) = form.opt("requested_token_type")
        && t != TOKEN_TYPE_ACCESS
        && t != TOKEN_TYPE_JWT
    {
        return Err(err(
            Code::InvalidRequest,
            format!("`requested_token_type` must be `{TOKEN_TYPE_ACCESS}`"),
        ));
    }
    let subject = form.req("subject_token")?;
    if form.req("subject_token_type")? != TOKEN_TYPE_MANDATE {
        return Err(err(
            Code::InvalidRequest,
            format!("`subject_token_type` must be `{TOKEN_TYPE_MANDATE}`"),
        ));
    }
    let target = match (form.opt("resource"), form.opt("audience")) {
        (Some(r), Some(a)) if r != a => {
            return Err(err(
                Code::InvalidTarget,
                "`resource` and `audience` name different tools; send one",
            ));
        }
        (Some(t), _) | (None, Some(t)) => t.to_owned(),
        (None, None) => {
            return Err(err(
                Code::InvalidTarget,
                "name the tool with `resource` (its audience URI) or `audience` (its name)",
            ));
        }
    };
    let scope = form.req("scope").map_err(|_| {
        err(
            Code::InvalidScope,
            "`scope` is required: the tool actions you need, separated by spaces",
        )
    })?;
    let mut actions: Vec<String> = Vec::new();
    for a in scope.split(' ').filter(|a| !a.is_empty()) {
        check_action(a).map_err(|e| err(Code::InvalidScope, e.to_string()))?;
        if a == "*" {
            return Err(err(Code::InvalidScope, "ask for named actions, not `*`"));
        }
        if !actions.iter().any(|x| x == a) {
            actions.push(a.to_owned());
        }
    }
    if actions.is_empty() || actions.len() > 16 {
        return Err(err(Code::InvalidScope, "ask for 1 to 16 actions"));
    }
    seen.actions = actions.clone();
    let (details, details_json) = parse_details(form.opt("authorization_details"))?;
    let approval_id = form.opt("approval_id").map(str::to_owned);
    seen.amount = details.amount;
    let proof = single_header(headers, "dpop")?;
    match (proof.is_some(), crate::sigs::present(headers)) {
        (false, false) => {
            return Err(err(
                Code::InvalidDpopProof,
                "a proof of possession is required: prove the key that holds the mandate with a DPoP proof (RFC 9449) in the `DPoP` header, or an HTTP message signature (RFC 9421) with `Signature-Input`, `Signature` and `Signature-Key`",
            ));
        }
        (true, true) => {
            return Err(err(
                Code::InvalidRequest,
                "send one proof of possession: DPoP or an HTTP message signature, not both",
            ));
        }
        _ => {}
    }

    // The mandate: signature, checks, expiry (cached per token).
    let claims = verified.unwrap_or_else(|| {
        Err(err(
            Code::InvalidRequest,
            "`subject_token` is required: the run's mandate",
        ))
    })?;
    seen.mandate = Some(claims.clone());
    seen.tool = Some(target.clone());
    {
        let reg = s.reg();
        if let Some(k) = reg.refused(&claims.revocation_keys(), claims.issued_at) {
            seen.audit_reason = Some(format!("revoked: {k}"));
            return Err(err(
                Code::InvalidGrant,
                format!(
                    "the mandate has been revoked ({}); start a new run",
                    k.split(':').next().unwrap_or("run")
                ),
            ));
        }
    }

    // The proof of possession, bound to the mandate's key.
    if let Some(proof) = proof {
        dpop_at_token_endpoint(s, proof, &claims.cnf_jkt, now)?;
        seen.pop = Some("dpop");
    } else {
        crate::sigs::verify(
            s,
            headers,
            &crate::sigs::Expect {
                method: "POST",
                target_uri: &s.token_endpoint,
                body: Some(&raw),
                jkt: &claims.cnf_jkt,
                must_cover: &[],
            },
            now,
        )?;
        seen.pop = Some("httpsig");
    }
    let signed_exchange = seen.pop == Some("httpsig");

    let reg = s.reg();
    // Tenant isolation in code, before any policy runs.
    let Some(tool) = reg.find_tool(&claims.tenant, &target).cloned() else {
        seen.audit_reason = Some(match reg.tool_elsewhere(&claims.tenant, &target) {
            Some(other) => format!("tenant mismatch: tool belongs to tenant `{other}`"),
            None => "unknown tool".into(),
        });
        return Err(err(
            Code::InvalidTarget,
            format!(
                "no tool `{}` is registered in tenant `{}`",
                target.chars().take(120).collect::<String>(),
                claims.tenant
            ),
        ));
    };
    seen.tool = Some(tool.name.clone());
    let Some(agent) = reg
        .agents
        .get(&(claims.tenant.clone(), claims.agent.clone()))
        .cloned()
    else {
        return Err(err(
            Code::InvalidGrant,
            format!("agent `{}` is no longer registered", claims.agent),
        ));
    };
    for a in &actions {
        if !tool.actions.iter().any(|x| x == a) {
            return Err(err(
                Code::InvalidScope,
                format!(
                    "tool `{}` has no action `{a}`; its actions are: {}",
                    tool.name,
                    tool.actions.join(", ")
                ),
            ));
        }
        if !claims.capabilities.allows(&tool.name, a) {
            return Err(err(
                Code::InvalidScope,
                format!(
                    "action `{a}` on tool `{}` is not granted to this run; its capabilities are: {} (a new grant is needed)",
                    tool.name,
                    claims.capabilities.to_strings().join(", ")
                ),
            ));
        }
    }
    // An attenuated mandate: every block's checks run against this use
    // (what is asked, and how often each use-limited block was used).
    let mut count_uses = Vec::new();
    if !claims.hops.is_empty() {
        let limited: Vec<_> = claims
            .hops
            .iter()
            .filter_map(|h| h.narrowing.max_uses.map(|n| (h, n)))
            .collect();
        let ids: Vec<String> = limited.iter().map(|(h, _)| h.block_id.clone()).collect();
        let counts = s.store.block_uses(&ids)?;
        let uses: Vec<(usize, u64)> = limited
            .iter()
            .zip(&counts)
            .map(|((h, _), c)| (h.index, *c))
            .collect();
        if let Some(((h, n), _)) = limited.iter().zip(&counts).find(|((_, n), c)| **c >= *n) {
            seen.audit_reason = Some(format!("use limit of attenuation block {}", h.index));
            return Err(err(
                Code::InvalidGrant,
                format!(
                    "attenuation block {} allows {n} uses and all have been made; ask the holder before it for a new mandate",
                    h.index
                ),
            ));
        }
        let parsed = s
            .parsed_mandate(subject, now)
            .map_err(|e| err(Code::InvalidGrant, e.to_string()))?;
        mandate::authorize_parsed(&parsed, now, &tool.name, &actions, &uses, None)
            .map_err(|e| err(Code::InvalidScope, e.to_string()))?;
        count_uses = limited
            .iter()
            .map(|(h, n)| (h.block_id.clone(), *n))
            .collect();
    }
    let mut pg_roles: Vec<String> = Vec::new();
    if let Some(spec) = &tool.postgres {
        for a in &actions {
            let role = spec.roles.get(a).ok_or_else(|| {
                err(
                    Code::InvalidScope,
                    format!(
                        "action `{a}` of tool `{}` maps to no database role; ask for one of: {}",
                        tool.name,
                        spec.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            if !pg_roles.contains(role) {
                pg_roles.push(role.clone());
            }
        }
    }
    let policies = reg
        .compiled
        .get(&claims.tenant)
        .cloned()
        .unwrap_or_default();
    let generation = reg.generation;
    // A suspended run waits for an admin (anomaly response).
    let suspended = reg.suspended.get(&claims.run).cloned();
    drop(reg);
    if let Some(why) = suspended {
        seen.audit_reason = Some(format!("run suspended: {why}"));
        return Err(err(
            Code::AuthorizationPending,
            format!(
                "run `{}` is suspended ({why}); its exchanges wait until an admin resumes it (`mandate run resume`) or revokes it",
                claims.run
            ),
        ));
    }
    seen.labels = tool.labels.clone();
    let history = s
        .history
        .lock()
        .map(|h| {
            h.facts(
                &claims.run,
                claims.issued_at,
                (&claims.tenant, &claims.agent, &tool.name),
                now,
            )
        })
        .unwrap_or_default();
    if let Some(a) = details.amount
        && let Err(why) = mandate_core::policy::add_amount(history.amount_total, a)
    {
        seen.audit_reason = Some(format!("amount refused: {why}"));
        return Err(err(Code::AccessDenied, why));
    }
    // An approval named by the agent must be for exactly this request.
    let digest = request_digest(&claims.run, &tool.name, &actions, &details_json);
    if let Some(id) = &approval_id {
        let a = s
            .store
            .approval(id)?
            .ok_or_else(|| err(Code::InvalidGrant, format!("no approval `{}`", short(id))))?;
        if a.request_digest != digest || a.run != claims.run {
            return Err(err(
                Code::InvalidGrant,
                "this approval is for a different request (run, tool, actions or declared details differ); ask again",
            ));
        }
        if a.expires_at < now {
            return Err(err(
                Code::ExpiredToken,
                format!(
                    "approval `{}` expired; make the request again to ask anew",
                    a.id
                ),
            ));
        }
    }
    let mut facts = ExchangeFacts {
        tenant: &claims.tenant,
        now,
        agent: &claims.agent,
        agent_owner: &agent.owner,
        agent_purpose: &agent.purpose,
        run: &claims.run,
        task: &claims.task,
        principal: claims.principal.as_deref(),
        grant: claims.grant.as_deref(),
        tool: &tool.name,
        tool_audience: &tool.audience,
        tool_labels: &tool.labels,
        tool_risk: &tool.risk,
        tool_provider: &tool.provider,
        actions: &actions,
        depth: claims.ancestors.len(),
        hops: claims.hops.len(),
        approved: false,
        details: &details,
        history: &history,
    };
    let mut verdict = s.decide(generation, &policies, &facts)?;
    let mut approvals = Vec::new();
    if !verdict.allowed
        && let Some(need) = verdict.approval.clone()
    {
        // Policy wants humans: has each refusing policy's approvers decided
        // exactly this request? (Looked up only now: no store read on the
        // hot path.)
        let live: Vec<Approval> = s
            .store
            .approvals_for_request(&digest)?
            .into_iter()
            .filter(|a| a.expires_at >= now && a.run == claims.run)
            .collect();
        match approvals_for(&need, &live) {
            ApprovalState::Approved(list) => {
                facts.approved = true;
                verdict = s.decide(generation, &policies, &facts)?;
                if !verdict.allowed {
                    seen.policies = verdict.policies.clone();
                    let reason = verdict.reason.unwrap_or_else(|| "denied by policy".into());
                    return Err(err(
                        Code::AccessDenied,
                        format!(
                            "{reason}; it was approved, but the policy still refuses: an `@approval` policy must say `unless {{ context.approved }}`"
                        ),
                    ));
                }
                approvals = list;
            }
            ApprovalState::Denied(a) => {
                seen.audit_reason = Some("approval denied".into());
                return Err(err(
                    Code::AccessDenied,
                    format!(
                        "{} denied this request{}; a denial is final for this request",
                        a.decided_by.clone().unwrap_or_else(|| "an approver".into()),
                        a.comment.map(|c| format!(": {c}")).unwrap_or_default()
                    ),
                ));
            }
            ApprovalState::Waiting { pending, missing } => {
                seen.policies = verdict.policies.clone();
                let reason = verdict.reason.unwrap_or_else(|| "denied by policy".into());
                if missing.is_empty() {
                    seen.waiting = pending;
                    return Err(err(
                        Code::AuthorizationPending,
                        "waiting for humans to approve this request; retry after `interval` seconds",
                    ));
                }
                if pending_for_run(s, &claims.run, now)? + missing.len() > MAX_PENDING_PER_RUN {
                    seen.audit_reason = Some("too many pending approvals".into());
                    return Err(err(
                        Code::AccessDenied,
                        format!(
                            "run `{}` already waits for {MAX_PENDING_PER_RUN} approvals; wait for them to be decided or expire",
                            claims.run
                        ),
                    ));
                }
                let mut asked = Vec::with_capacity(missing.len());
                for p in &missing {
                    asked.push(Approval {
                        id: random_id(&mut OsRng, "apr_"),
                        tenant: claims.tenant.clone(),
                        run: claims.run.clone(),
                        agent: claims.agent.clone(),
                        principal: claims.principal.clone(),
                        tool: tool.name.clone(),
                        actions: actions.clone(),
                        details: details_json.clone(),
                        request_digest: digest.clone(),
                        approvers: resolve_approvers(s, &claims, &p.approvers)?,
                        policies: vec![p.policy.clone()],
                        status: "pending".into(),
                        requested_ms: crate::now_ms(),
                        expires_at: now + s.config.approval_ttl,
                        decided_by: None,
                        decided_ms: None,
                        comment: None,
                    });
                }
                seen.audit_reason = Some(format!(
                    "approval required by {}",
                    need.policies().join(", ")
                ));
                seen.waiting = pending;
                seen.pending = asked;
                return Err(err(
                    Code::AuthorizationPending,
                    format!(
                        "{reason}; humans must approve it (each policy by its own approvers); retry after `interval` seconds"
                    ),
                ));
            }
        }
    }
    seen.policies = verdict.policies.clone();
    if !verdict.allowed {
        let reason = verdict.reason.unwrap_or_else(|| "denied by policy".into());
        return Err(err(Code::AccessDenied, reason));
    }

    let exp = claims.expires_at.min(now + tool.max_ttl_secs);
    let access = AccessClaims {
        iss: s.config.issuer.clone(),
        aud: tool.audience.clone(),
        sub: claims
            .principal
            .clone()
            .unwrap_or_else(|| claims.agent_id.clone()),
        act: act_chain(&claims),
        client_id: claims.agent_id.clone(),
        scope: actions.join(" "),
        jti: random_id(&mut OsRng, "cred_"),
        iat: now,
        exp,
        cnf: Some(Confirmation {
            jkt: claims.cnf_jkt.clone(),
        }),
        tenant: claims.tenant.clone(),
        run: claims.run.clone(),
        agent: claims.agent.clone(),
        task: claims.task.clone(),
        grant: claims.grant.clone(),
        path_prefix: claims.resource_prefix.clone(),
        authorization_details: (!details_json.is_null()).then(|| details_json.clone()),
        approval: None,
        blocks: claims.block_ids(),
        approvals: approvals
            .iter()
            .map(|a| credential::ApprovalClaim {
                id: a.id.clone(),
                approver: a.decided_by.clone().unwrap_or_default(),
                approved_at: a.decided_ms.unwrap_or(0) / 1000,
                request_digest: a.request_digest.clone(),
            })
            .collect(),
    };
    let mut access = access;
    access.approval = access.approvals.first().cloned();
    let token = match tool.provider.as_str() {
        "postgres" => None,
        provider => {
            // Proxy credentials go where an API key goes, through SDKs that
            // cannot make DPoP proofs: bearer tokens, good only at the
            // broker's proxy for this tool, for minutes, until the run ends.
            // A client that signs its requests (RFC 9421) gets a bound
            // proxy credential, and must sign each call at the proxy too.
            if provider == "proxy" && !signed_exchange {
                access.cnf = None;
            }
            let alg = Alg::parse("tool", &tool.alg).unwrap_or(Alg::EdDSA);
            let signer = match alg {
                Alg::EdDSA => &s.signers[0],
                Alg::ES256 => &s.signers[1],
            };
            Some(
                signer
                    .sign(&access)
                    .map_err(|e| err(Code::ServerError, e.to_string()))?,
            )
        }
    };
    Ok(Issued {
        claims: access,
        token,
        tool,
        pg_roles,
        count_uses,
        mandate_exp: claims.expires_at,
        approvals,
    })
}

/// Most approval requests one run may have waiting at once.
const MAX_PENDING_PER_RUN: usize = 16;

/// How many approvals of `run` wait for a decision.
fn pending_for_run(s: &S, run: &str, now: u64) -> Result<usize, ApiError> {
    Ok(s.store.pending_approvals_for_run(run, now)?)
}

/// What the live approvals of a request mean for what policy needs.
enum ApprovalState {
    /// Every refusing policy was approved by its own approvers: these.
    Approved(Vec<Approval>),
    /// Some approver denied: final.
    Denied(Box<Approval>),
    /// Some policies still wait (`pending`), others were never asked (`missing`).
    Waiting {
        pending: Vec<Approval>,
        missing: Vec<mandate_core::policy::PolicyApprovers>,
    },
}

/// Matches each refusing policy with the newest live approval that asked
/// for it (AND: each policy needs its own).
fn approvals_for(need: &mandate_core::policy::ApprovalNeed, live: &[Approval]) -> ApprovalState {
    let mut approved = Vec::new();
    let mut pending = Vec::new();
    let mut missing = Vec::new();
    for p in &need.each {
        // `live` is newest first.
        match live.iter().find(|a| a.policies.contains(&p.policy)) {
            Some(a) if a.status == "denied" => return ApprovalState::Denied(Box::new(a.clone())),
            Some(a) if a.status == "approved" => approved.push(a.clone()),
            Some(a) => pending.push(a.clone()),
            None => missing.push(p.clone()),
        }
    }
    if pending.is_empty() && missing.is_empty() {
        approved.dedup_by(|a, b| a.id == b.id);
        ApprovalState::Approved(approved)
    } else {
        ApprovalState::Waiting { pending, missing }
    }
}

/// Most narrowed mandates of one run that RFC 7009 revokes (per process):
/// each is a line in the revocation log and the feed, and a holder of the
/// run's key can mint them offline without end.
pub const MAX_BLOCK_REVOCATIONS: u32 = 64;

/// Narrowed mandates revoked at RFC 7009 per run, from the audit trail (the
/// last `max_ttl` seconds: older ones belong to runs that have expired), so
/// a restart does not reset [`MAX_BLOCK_REVOCATIONS`].
pub(crate) fn block_revocations_from_trail(
    store: &dyn mandate_store::Store,
    max_ttl: u64,
) -> Result<std::collections::HashMap<String, u32>, crate::boot::BootError> {
    let mut counts = std::collections::HashMap::new();
    crate::state::each_recent_event(store, "revoke", None, max_ttl, |ev| {
        let block = ev.body.details["revoked"]
            .as_str()
            .is_some_and(|k| k.starts_with("block:"));
        if let (true, Some(run)) = (block, ev.body.run.as_deref()) {
            *counts.entry(run.to_owned()).or_insert(0u32) += 1;
        }
        Ok(())
    })?;
    Ok(counts)
}

/// Counts one more narrowed-mandate revocation of `run`, or refuses.
fn count_block_revocation(s: &S, run: &str) -> Result<(), ApiError> {
    let mut counts = s
        .block_revocations
        .lock()
        .map_err(|_| err(Code::ServerError, "the revocation counter is unavailable"))?;
    let n = counts.entry(run.to_owned()).or_insert(0);
    if *n >= MAX_BLOCK_REVOCATIONS {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "{MAX_BLOCK_REVOCATIONS} narrowed mandates of run `{run}` were revoked already; to cut off more, revoke the run (`mandate revoke --run {run}`)"
            ),
        ));
    }
    *n += 1;
    Ok(())
}

/// RFC 9396 `authorization_details` of the form, if any: the facts for
/// policy and the canonical JSON (`null` when absent) that approvals bind.
fn parse_details(raw: Option<&str>) -> Result<(Details, Value), ApiError> {
    match raw {
        None => Ok((Details::default(), Value::Null)),
        Some(raw) => Details::parse(raw).map_err(|why| {
            err(
                Code::InvalidRequest,
                format!(
                    "`authorization_details` (RFC 9396): {why}; send [{{\"type\": \"mandate\", \"amount\": 2500, \"currency\": \"EUR\", \"target\": \"...\"}}]"
                ),
            )
        }),
    }
}

/// SHA-256 (base64url) over what an approval binds: run, tool, actions
/// (sorted), declared details (canonical JSON: object keys sorted).
fn request_digest(run: &str, tool: &str, actions: &[String], details: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut a = actions.to_vec();
    a.sort();
    let canon = json!({"run": run, "tool": tool, "actions": a, "details": details}).to_string();
    mandate_core::jose::b64(&Sha256::digest(canon.as_bytes()))
}

/// Who may approve: `principal` becomes the run's principal; a group must
/// have at least one member in the tenant.
fn resolve_approvers(
    s: &S,
    claims: &MandateClaims,
    wanted: &[String],
) -> Result<Vec<String>, ApiError> {
    let reg = s.reg();
    let mut out = Vec::new();
    for w in wanted {
        if w == "principal" {
            if let Some(p) = &claims.principal {
                out.push(format!("principal:{p}"));
            }
        } else if let Some(g) = w.strip_prefix("group:")
            && reg
                .principals
                .iter()
                .any(|((t, _), p)| *t == claims.tenant && p.groups.iter().any(|x| x == g))
        {
            out.push(w.clone());
        }
    }
    if out.is_empty() {
        return Err(err(
            Code::AccessDenied,
            format!(
                "this request needs approval by {}, and nobody can give it (the run acts for no principal, or the group has no members)",
                wanted.join(" or ")
            ),
        ));
    }
    Ok(out)
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The RFC 8693 §4.1 actor chain, current actor first: each holder a block
/// handed the mandate to (by RFC 9278 JWK thumbprint URI), then the run,
/// then the runs it was delegated from.
fn act_chain(claims: &MandateClaims) -> Actor {
    let mut chain = None;
    for (_, run_id) in claims.ancestors.iter().rev() {
        chain = Some(Box::new(Actor {
            sub: run_id.clone(),
            act: chain,
        }));
    }
    let mut current = Actor {
        sub: claims.run_id.clone(),
        act: chain,
    };
    for h in claims.hops.iter().filter(|h| h.holder != h.signed_by) {
        current = Actor {
            sub: format!("{JKT_URN}{}", h.holder),
            act: Some(Box::new(current)),
        };
    }
    current
}

/// RFC 9278 §3: JWK Thumbprint URI prefix for SHA-256 thumbprints.
pub const JKT_URN: &str = "urn:ietf:params:oauth:jwk-thumbprint:sha-256:";

/// Verifies a DPoP proof (RFC 9449) at the token endpoint for the key `jkt`.
fn dpop_at_token_endpoint(s: &S, proof: &str, jkt: &str, now: u64) -> Result<(), ApiError> {
    let known = s.known_run_key(jkt).map(|k| (*k).clone());
    let verified = dpop::verify_proof(
        proof,
        &ProofExpectations {
            method: "POST",
            uri: &s.token_endpoint,
            now,
            max_age: s.config.dpop_max_age,
            max_skew: s.config.dpop_max_skew,
            jkt: Some(jkt),
            access_token: None,
            known_key: known.as_ref(),
            nonces: s.required_nonces(),
        },
    )
    .map_err(|e| match e {
        mandate_core::Error::DpopNonce(m) => err(Code::UseDpopNonce, m),
        other => err(Code::InvalidDpopProof, other.to_string()),
    })?;
    if known.is_none() {
        s.remember_run_key(&verified.jkt, verified.key.clone());
    }
    s.first_use_of_proof(&verified, now)
}

/// What a presented token turned out to be.
enum Presented {
    Credential(Box<AccessClaims>),
    Mandate(std::sync::Arc<MandateClaims>),
}

async fn identify(s: &S, token: &str, now: u64, client: std::net::IpAddr) -> Option<Presented> {
    if token.matches('.').count() == 2 {
        credential::verify(&s.keys, &s.config.issuer, token, now, false)
            .ok()
            .map(|c| Presented::Credential(Box::new(c)))
    } else {
        crate::gate::verify_mandate(s, token, now, client)
            .await
            .ok()
            .map(Presented::Mandate)
    }
}

/// RFC 7662 introspection (admin bearer required, §2.1).
pub async fn introspect(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let raw = body(raw, s.config.max_body)?;
    require_form_content_type(&headers)?;
    let form = Form::parse(&raw)?;
    let token = form.req("token")?;
    let now = crate::now_secs();
    let inactive = Json(json!({"active": false}));
    let presented = identify(&s, token, now, addr.ip()).await;
    let reg = s.reg();
    Ok(match presented {
        Some(Presented::Credential(c)) => {
            if reg.refused(&c.revocation_keys(), c.iat).is_some() {
                inactive
            } else {
                let mut v = credential::to_json(c.as_ref());
                if let Some(o) = v.as_object_mut() {
                    o.insert("active".into(), json!(true));
                    o.insert("token_type".into(), json!("DPoP"));
                }
                Json(v)
            }
        }
        Some(Presented::Mandate(m)) => {
            if reg.refused(&m.revocation_keys(), m.issued_at).is_some() {
                inactive
            } else {
                Json(json!({
                    "active": true, "token_type": TOKEN_TYPE_MANDATE, "iss": m.issuer, "sub": m.run_id,
                    "client_id": m.agent_id, "exp": m.expires_at, "iat": m.issued_at, "tenant": m.tenant,
                    "run": m.run, "agent": m.agent, "principal": m.principal, "grant": m.grant, "task": m.task,
                    "scope": m.capabilities.to_strings().join(" "), "cnf": {"jkt": m.cnf_jkt},
                }))
            }
        }
        None => inactive,
    })
}

/// RFC 7009 revocation: the holder of a credential or mandate may revoke it.
/// Answers 200 for unknown, invalid, expired or already revoked tokens too
/// (§2.2), and writes nothing for them: this endpoint needs no
/// authentication, so only a valid, live token can make it write, once.
/// A narrowed (attenuated) mandate revokes only its own subtree: its last
/// block, so every token that extends it and every credential made from
/// them; never the run it was narrowed from.
pub async fn revoke(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, s.config.max_body)?;
    require_form_content_type(&headers)?;
    let form = Form::parse(&raw)?;
    let token = form.req("token")?;
    let now = crate::now_secs();
    let ok = || Ok(axum::http::StatusCode::OK.into_response());
    let (key, until, tenant, run, agent) = match identify(&s, token, now, addr.ip()).await {
        Some(Presented::Credential(c)) => {
            if s.reg().refused(&c.revocation_keys(), c.iat).is_some() {
                return ok();
            }
            (format!("cred:{}", c.jti), c.exp, c.tenant, c.run, c.agent)
        }
        Some(Presented::Mandate(m)) => {
            // A narrowed mandate already revoked writes nothing again; a
            // run's own mandate ends its run once (a revoked run that has
            // not ended yet still ends: below, ended runs write nothing).
            if !m.hops.is_empty() && s.reg().refused(&m.revocation_keys(), m.issued_at).is_some() {
                return ok();
            }
            let key = match m.hops.last() {
                Some(h) => {
                    count_block_revocation(&s, &m.run).map_err(|e| e.unauthenticated("revoke"))?;
                    format!("block:{}", h.block_id)
                }
                None => format!("run:{}", m.run),
            };
            let until = if m.hops.is_empty() { 0 } else { m.expires_at };
            (key, until, m.tenant.clone(), m.run.clone(), m.agent.clone())
        }
        None => return ok(),
    };
    let ev = EventBody {
        time_ms: crate::now_ms(),
        event_type: "revoke".into(),
        decision: "ok".into(),
        tenant: Some(tenant.clone()),
        agent: Some(agent),
        run: Some(run),
        credential_id: key.strip_prefix("cred:").map(str::to_owned),
        actor: Some("token holder (RFC 7009)".into()),
        correlation_id: Some(correlation_id(&headers)),
        client_addr: client(Some(addr)),
        details: json!({"revoked": key}),
        ..Default::default()
    };
    let rev = Revocation {
        seq: 0,
        key,
        reason: "revoked by its holder".into(),
        time_ms: crate::now_ms(),
        until,
        tenant: Some(tenant),
    };
    // A run's holder revoking its mandate ends the run (what `mandate exec`
    // does when its child exits).
    let mutation = match rev.key.strip_prefix("run:") {
        Some(id) => match s.store.get_run(id)? {
            Some(r) if r.ended_ms.is_none() => Mutation::EndRun {
                id: id.to_owned(),
                ended_ms: crate::now_ms(),
                revocation: rev,
            },
            Some(_) => return Ok(axum::http::StatusCode::OK.into_response()),
            None => Mutation::Revoke(rev),
        },
        None => Mutation::Revoke(rev),
    };
    s.commit(Entry {
        mutation: Some(mutation),
        events: vec![ev],
    })
    .await?;
    Ok(axum::http::StatusCode::OK.into_response())
}
