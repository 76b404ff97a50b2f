//! Everything checked before a call may go upstream: the credential and
//! where it came in, its tool, revocation and suspension, its key binding,
//! the route table, the path prefix, the amount, and the tenant's policy.

use super::*;

/// The one proxy credential a request carries, and the headers it came in.
pub(super) fn proxy_token<'a>(
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

pub(crate) fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim())
        .filter(|t| !t.is_empty())
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Everything checked before a call may go upstream, in order: who calls
/// (the credential, its tool, revocation, suspension, its key binding),
/// whether the request is what the route table judges, what it is (route
/// → action ⊆ scope, path prefix, amount), and what policy says now.
pub(super) fn authorize(
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
    let mut guard = vec![Mutation::Unrevoked {
        keys: caller.claims.revocation_keys(),
        issued_at: caller.claims.iat,
        now,
    }];
    if let Some(cnf) = &caller.claims.cnf {
        let spent = verify_binding(
            s,
            parts,
            signed_body,
            &cnf.jkt,
            &caller.token_headers,
            now,
            ev,
        )?;
        guard.push(Mutation::FirstUse {
            uses: vec![spent],
            now,
        });
    }
    let (action, amount) = judge(&caller, parts.method.as_str(), &upstream_path, ev)?;
    ask_policy(s, &caller, action, now, ev)?;
    let mut plan = plan(s, parts, &caller, &upstream_path)?;
    plan.amount = amount;
    plan.guard = guard;
    Ok(plan)
}

/// Request parts the route table does not see but an upstream may act on:
/// the path's encoding, method-override and URL-rewrite headers, and the
/// query string (method overrides, control characters).
pub(super) fn check_request_shape(parts: &Parts, upstream_path: &str) -> Result<(), ApiError> {
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
pub(super) struct Caller<'a> {
    claims: Arc<AccessClaims>,
    tool: Arc<Tool>,
    spec: ProxySpec,
    token: &'a str,
    token_headers: Vec<HeaderName>,
}

pub(super) fn identify<'a>(
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
    let tool: Arc<Tool> = reg
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
    let keys = claims.revocation_keys();
    if let Some(why) = reg.suspension(&claims.run, &keys) {
        ev.reason = Some(format!("run suspended: {why}"));
        return Err(err(
            Code::Unavailable,
            format!(
                "run `{}` is suspended ({why}); its calls wait until an admin resumes it or revokes it",
                claims.run
            ),
        ));
    }
    if let Some(k) = reg.refused(&keys, claims.iat) {
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
pub(super) fn verify_binding(
    s: &S,
    parts: &Parts,
    signed_body: Option<&[u8]>,
    jkt: &str,
    token_headers: &[HeaderName],
    now: u64,
    ev: &mut EventBody,
) -> Result<mandate_core::dpop::Spent, ApiError> {
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
    let signed = crate::pop::httpsig::verify(
        s,
        &parts.headers,
        &crate::pop::httpsig::Expect {
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
    Ok(signed.spent)
}

/// What the request is: its route's action (within the credential's
/// scope), inside the credential's path prefix, and, when money moves, the
/// amount check the body must pass.
pub(super) fn judge(
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
pub(super) fn amount_plan(
    c: &Caller<'_>,
    route: &RouteSpec,
    method: &str,
    shown: &str,
    ev: &mut EventBody,
) -> Result<Option<AmountPlan>, ApiError> {
    let declared = match c
        .claims
        .declared_details()
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
pub(super) fn ask_policy(
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
        .declared_details()
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
pub(super) fn plan(
    s: &S,
    parts: &Parts,
    c: &Caller<'_>,
    upstream_path: &str,
) -> Result<Plan, ApiError> {
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
        guard: Vec::new(),
    })
}

/// The credential, before the tool (and so its key format) is known: a
/// bearer token, or a key header of another shape (`x-api-key: <token>`)
/// whose value is a JWS. Two different ones are refused.
pub(super) fn first_token_anywhere(h: &HeaderMap) -> Result<Option<&str>, ApiError> {
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

pub(crate) fn verify_token(s: &S, token: &str, now: u64) -> Result<Arc<AccessClaims>, ApiError> {
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
        credential::verify(&s.keyset().keys, &s.config.issuer, token, now, false).map_err(|e| {
            match e {
                mandate_core::Error::Expired { .. } => err(
                    Code::Unauthorized,
                    "the proxy credential has expired; ask the agent socket for a fresh one",
                ),
                other => err(
                    Code::Unauthorized,
                    format!("the proxy credential is not valid: {other}"),
                ),
            }
        })?;
    let c = Arc::new(c);
    if let Ok(mut m) = s.proxy_credentials.lock() {
        m.put(digest, c.exp.saturating_sub(1), Arc::clone(&c), now);
    }
    Ok(c)
}
