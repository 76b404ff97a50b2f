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
    /// The approval this credential spends.
    approval: Option<Approval>,
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
    let mut r = Json(s.keys.jwks()).into_response();
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
    /// An approval request to record (the answer is `authorization_pending`).
    pending: Option<Approval>,
    /// An existing pending approval the agent is waiting for.
    waiting: Option<Approval>,
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
    // RFC 9449 §8.1, §8.2: every answer carries the nonce to use next.
    if let Some(n) = &s.nonces
        && let Ok(v) = HeaderValue::from_str(&n.current(crate::now_secs()))
    {
        resp.headers_mut().insert("dpop-nonce", v);
    }
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
    let outcome = exchange(s, &headers, raw, now, &mut seen);
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
            if let Some(a) = &issued.approval {
                // "performed X, approved by alice at 09:22 UTC"
                ev.details["approval"] = json!({"id": a.id, "approved_by": a.decided_by,
                    "approved_ms": a.decided_ms, "request_digest": a.request_digest});
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
            if let Some(a) = &issued.approval {
                // Spent with the credential it allowed: never twice.
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
                if e.code == Code::Conflict && issued.approval.is_some() {
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
            if let Some(a) = seen.pending {
                // A new approval request: durable first, then announced.
                ev.event_type = "approval.request".into();
                ev.decision = "pending".into();
                ev.reason = seen.audit_reason.clone();
                ev.details = json!({"approval": a.id, "approvers": a.approvers,
                    "details": a.details, "expires_at": a.expires_at});
                if let Err(we) = s
                    .commit(Entry {
                        mutation: Some(Mutation::CreateApproval(a.clone())),
                        events: vec![ev],
                    })
                    .await
                {
                    return we.into_response();
                }
                crate::alerts::announce(s, "approval.requested", json!(a)).await;
                return pending(&e, Some(&a), interval, now);
            }
            // Waiting for a decision, or a suspended run: nothing new to record.
            pending(&e, seen.waiting.as_ref(), interval, now)
        }
        Err(e) => {
            ev.decision = "deny".into();
            ev.reason = Some(
                seen.audit_reason
                    .unwrap_or_else(|| format!("{}: {}", e.code.as_str(), e.description)),
            );
            if let Err(we) = s.record(vec![ev]).await {
                return we.into_response();
            }
            if let Some(m) = seen.mandate.as_deref() {
                crate::alerts::judged(s, m.into(), now, true).await;
            }
            e.into_response()
        }
    }
}

/// RFC 8628 §3.5-style `authorization_pending`, with the approval to poll.
fn pending(e: &ApiError, a: Option<&Approval>, interval: u64, now: u64) -> Response {
    let mut body = json!({"error": e.code.as_str(), "error_description": e.description,
        "interval": interval});
    if let Some(a) = a {
        body["approval_id"] = json!(a.id);
        body["expires_in"] = json!(a.expires_at.saturating_sub(now));
        body["approvers"] = json!(a.approvers);
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

fn exchange(
    s: &S,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
    now: u64,
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
    let claims = s
        .verify_mandate(subject, now)
        .map_err(|e| err(Code::InvalidGrant, e.to_string()))?;
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
    // An approval named by the agent is checked first; otherwise one is
    // looked up only when policy asks for it (no store read on the hot path).
    let digest = request_digest(&claims.run, &tool.name, &actions, &details_json);
    let mut found = match &approval_id {
        Some(id) => {
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
            Some(a)
        }
        None => None,
    };
    let mut approved = approval_state(found.as_ref(), seen)?;
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
        approved,
        details: &details,
        history: &history,
    };
    let mut verdict = s.decide(generation, &policies, &facts)?;
    if !verdict.allowed && verdict.approval.is_some() && found.is_none() {
        // Policy wants a human: has one decided exactly this request?
        found = s
            .store
            .approval_for_request(&digest)?
            .filter(|a| a.expires_at >= now);
        approved = approval_state(found.as_ref(), seen)?;
        if approved {
            facts.approved = true;
            verdict = s.decide(generation, &policies, &facts)?;
        }
    }
    seen.policies = verdict.policies.clone();
    if !verdict.allowed {
        let reason = verdict
            .reason
            .clone()
            .unwrap_or_else(|| "denied by policy".into());
        let Some(need) = verdict.approval else {
            return Err(err(Code::AccessDenied, reason));
        };
        if approved {
            return Err(err(
                Code::AccessDenied,
                format!(
                    "{reason}; it was approved, but the policy still refuses: an `@approval` policy must say `unless {{ context.approved }}`"
                ),
            ));
        }
        let approvers = resolve_approvers(s, &claims, &need.approvers)?;
        seen.audit_reason = Some(format!("approval required by {}", need.policies.join(", ")));
        seen.pending = Some(Approval {
            id: random_id(&mut OsRng, "apr_"),
            tenant: claims.tenant.clone(),
            run: claims.run.clone(),
            agent: claims.agent.clone(),
            principal: claims.principal.clone(),
            tool: tool.name.clone(),
            actions: actions.clone(),
            details: details_json,
            request_digest: digest,
            approvers,
            policies: need.policies,
            status: "pending".into(),
            requested_ms: crate::now_ms(),
            expires_at: now + s.config.approval_ttl,
            decided_by: None,
            decided_ms: None,
            comment: None,
        });
        return Err(err(
            Code::AuthorizationPending,
            format!("{reason}; a human must approve it; retry after `interval` seconds"),
        ));
    }
    let approval = found.filter(|a| a.status == "approved");

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
        approval: approval.as_ref().map(|a| credential::ApprovalClaim {
            id: a.id.clone(),
            approver: a.decided_by.clone().unwrap_or_default(),
            approved_at: a.decided_ms.unwrap_or(0) / 1000,
            request_digest: a.request_digest.clone(),
        }),
    };
    let mut access = access;
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
        approval,
    })
}

/// What an existing approval means for this request: approved (true), not
/// there (false), or an answer now (denied: final; pending: keep waiting).
fn approval_state(found: Option<&Approval>, seen: &mut Seen) -> Result<bool, ApiError> {
    match found.map(|a| a.status.as_str()) {
        Some("approved") => Ok(true),
        Some("denied") => {
            let a = found.map(|a| (a.decided_by.clone(), a.comment.clone()));
            let (by, comment) = a.unwrap_or_default();
            seen.audit_reason = Some("approval denied".into());
            Err(err(
                Code::AccessDenied,
                format!(
                    "{} denied this request{}; a denial is final for this request",
                    by.unwrap_or_else(|| "an approver".into()),
                    comment.map(|c| format!(": {c}")).unwrap_or_default()
                ),
            ))
        }
        Some("pending") => {
            seen.waiting = found.cloned();
            Err(err(
                Code::AuthorizationPending,
                "waiting for a human to approve this request; retry after `interval` seconds",
            ))
        }
        _ => Ok(false),
    }
}

/// Parses RFC 9396 `authorization_details`: a JSON array with one object of
/// type `mandate` (`amount` integer minor units, `currency`, `target`,
/// `description`). Returns the facts for policy and the canonical JSON
/// (`null` when absent) that approvals bind.
fn parse_details(raw: Option<&str>) -> Result<(Details, Value), ApiError> {
    let Some(raw) = raw else {
        return Ok((Details::default(), Value::Null));
    };
    let bad = |why: &str| {
        err(
            Code::InvalidRequest,
            format!(
                "`authorization_details` (RFC 9396): {why}; send [{{\"type\": \"mandate\", \"amount\": 2500, \"currency\": \"EUR\", \"target\": \"...\"}}]"
            ),
        )
    };
    if raw.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    let v: Value = serde_json::from_str(raw).map_err(|_| bad("not JSON"))?;
    let [obj] = v.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(bad("must be an array of exactly one object"));
    };
    let o = obj
        .as_object()
        .ok_or_else(|| bad("must be an array of exactly one object"))?;
    if o.get("type").and_then(Value::as_str) != Some("mandate") {
        return Err(bad("the object's `type` must be `mandate`"));
    }
    let mut d = Details::default();
    for (k, val) in o {
        match (k.as_str(), val) {
            ("type", _) => {}
            ("amount", Value::Number(n)) => {
                d.amount = Some(
                    n.as_i64()
                        .filter(|a| *a >= 0)
                        .ok_or_else(|| bad("`amount` is a non-negative integer in minor units"))?,
                );
            }
            ("currency", Value::String(c))
                if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                d.currency = Some(c.clone());
            }
            ("target", Value::String(t)) | ("description", Value::String(t))
                if t.len() <= 256 && !t.chars().any(char::is_control) =>
            {
                if k == "target" {
                    d.target = Some(t.clone());
                }
            }
            (k, _) => {
                return Err(bad(&format!(
                    "field `{}` is unknown or mistyped (amount: integer, currency: ISO 4217 code, target and description: text)",
                    k.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    Ok((d, obj.clone()))
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
    let known = s.run_keys.lock().ok().and_then(|m| m.get(jkt).cloned());
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
            nonces: s.nonces.as_ref(),
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

fn identify(s: &S, token: &str, now: u64, allow_expired: bool) -> Option<Presented> {
    if token.matches('.').count() == 2 {
        credential::verify(&s.keys, &s.config.issuer, token, now, allow_expired)
            .ok()
            .map(|c| Presented::Credential(Box::new(c)))
    } else {
        s.verify_mandate(token, now).ok().map(Presented::Mandate)
    }
}

/// RFC 7662 introspection (admin bearer required, §2.1).
pub async fn introspect(
    State(s): State<S>,
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
    let reg = s.reg();
    Ok(match identify(&s, token, now, false) {
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
/// Answers 200 for unknown or invalid tokens too (§2.2).
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
    let (key, until, tenant, run, agent) = match identify(&s, token, now, true) {
        Some(Presented::Credential(c)) => {
            (format!("cred:{}", c.jti), c.exp, c.tenant, c.run, c.agent)
        }
        Some(Presented::Mandate(m)) => (
            format!("run:{}", m.run),
            0,
            m.tenant.clone(),
            m.run.clone(),
            m.agent.clone(),
        ),
        None => return Ok(axum::http::StatusCode::OK.into_response()),
    };
    let ev = EventBody {
        time_ms: crate::now_ms(),
        event_type: "revoke".into(),
        decision: "ok".into(),
        tenant: Some(tenant),
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
