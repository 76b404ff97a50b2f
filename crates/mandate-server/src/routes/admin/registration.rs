//! Registrations: tenants, principals, agents, tools, grants and Cedar policies.

use super::*;
use crate::services::registration;

// ---------- tenants ----------

/// `POST /v1/tenants`
pub async fn create_tenant(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<registration::NewTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let t = registration::create_tenant(&s, &origin(addr, &headers), req).await?;
    Ok((StatusCode::CREATED, Json(json!(t))))
}

/// `GET /v1/tenants`
pub async fn list_tenants(State(s): State<S>, _: Admin) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.reg().tenants.values().collect::<Vec<_>>())))
}

// ---------- principals ----------

/// `POST /v1/tenants/{tenant}/principals`
pub async fn create_principal(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let p = registration::create_principal(&s, &origin(addr, &headers), &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(json!(p))))
}

/// `GET /v1/tenants/{tenant}/principals`
pub async fn list_principals(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.principals
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}

// ---------- agents ----------

/// `POST /v1/tenants/{tenant}/agents`
pub async fn create_agent(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let a = registration::create_agent(&s, &origin(addr, &headers), &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(json!(a))))
}

/// `PUT /v1/tenants/{tenant}/agents/{name}`: replaces the agent's
/// registration (same body as registering it).
pub async fn replace_agent(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    need_tenant(&s, &tenant)?;
    let raw = body(raw, s.config.max_body)?;
    whole(&raw, &["owner", "purpose", "envelope"])?;
    let req = json_body(&raw)?;
    let a = registration::replace_agent(&s, &origin(addr, &headers), (&tenant, &name), req).await?;
    Ok(Json(json!(a)))
}

/// `GET /v1/tenants/{tenant}/agents`
pub async fn list_agents(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.agents
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}

// ---------- tools ----------

/// `POST /v1/tenants/{tenant}/tools`
pub async fn create_tool(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let t = registration::create_tool(&s, &origin(addr, &headers), &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(tool_view(&s, &t))))
}

/// `PUT /v1/tenants/{tenant}/tools/{name}`: replaces the tool's
/// registration (same body as registering it; its secret stays).
pub async fn replace_tool(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    need_tenant(&s, &tenant)?;
    let raw = body(raw, s.config.max_body)?;
    whole(&raw, &["actions", "labels", "risk", "max_ttl_secs", "alg"])?;
    let req = json_body(&raw)?;
    let t = registration::replace_tool(&s, &origin(addr, &headers), (&tenant, &name), req).await?;
    Ok(Json(tool_view(&s, &t)))
}

/// `POST /v1/tenants/{tenant}/tools/{name}/sync`: reads an `mcp` tool's
/// tools from its MCP server (`tools/list`) and pins them.
pub async fn sync_tool(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        #[serde(default)]
        accept_changes: bool,
    }
    need_tenant(&s, &tenant)?;
    let q: Q = crate::routes::query_of(&uri)?;
    let r = crate::services::mcp_tools::sync(
        &s,
        &origin(addr, &headers),
        (&tenant, &name),
        q.accept_changes,
    )
    .await?;
    Ok(Json(
        json!({"tool": tool_view(&s, &r.tool), "tools": r.tools}),
    ))
}

/// A replacement names every field that registering would default: what a
/// `PUT` leaves out is not silently reset (a tool's risk to `low`, its
/// labels to none, which policies judge by).
fn whole(raw: &[u8], fields: &[&str]) -> Result<(), ApiError> {
    let v: Value = json_body(raw)?;
    let missing: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|f| v.get(f).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(err(
            Code::InvalidRequest,
            format!(
                "a replacement gives every field: missing {} (send the registration whole, as `GET` shows it)",
                missing.join(", ")
            ),
        ))
    }
}

/// A tool as the API shows it: with `secret_set` when its provider holds a
/// secret (none is ever shown), so a missing one is visible until it is set.
fn tool_view(s: &crate::state::AppState, t: &Tool) -> Value {
    let mut v = json!(t);
    if crate::providers::of(t.provider).holds_secret()
        && (t.mcp.is_none() || crate::mcp_client::wants_key(s, t))
        && let Some(o) = v.as_object_mut()
    {
        o.insert(
            "secret_set".into(),
            json!(s.tool_secret(&t.tenant, &t.name).is_some()),
        );
    }
    v
}

/// `PUT /v1/tenants/{tenant}/tools/{name}/secret`: sets the upstream key
/// (proxy) or admin connection string (postgres). The body is the secret;
/// it is sealed under the master key and never returned by any endpoint.
pub async fn set_tool_secret(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    need_tenant(&s, &tenant)?;
    let raw = body(raw, s.config.max_body)?;
    let set =
        registration::set_tool_secret(&s, &origin(addr, &headers), (&tenant, &name), &raw).await?;
    let mut answer = json!({"tenant": tenant, "tool": name, "secret_set": true,
        "updated_ms": set.updated_ms});
    if let Some(checked) = set.roles_checked {
        answer["roles_checked"] = json!(checked.is_ok());
        if let Err(why) = checked {
            answer["note"] = json!(format!(
                "the mapped database roles could not be checked now ({why}); every exchange checks them again"
            ));
        }
    }
    Ok(Json(answer))
}

/// `GET /v1/tenants/{tenant}/tools`
pub async fn list_tools(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.tools
                .values()
                .filter(|x| x.tenant == tenant)
                .map(|t| tool_view(&s, t))
                .collect::<Vec<_>>()
        )
    })
}

// ---------- grants ----------

/// `POST /v1/tenants/{tenant}/grants`
pub async fn create_grant(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An unknown tenant is said before a bad body.
    need_tenant(&s, &tenant)?;
    let req = json_body(&body(raw, s.config.max_body)?)?;
    let g = registration::create_grant(&s, &origin(addr, &headers), &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(json!(g))))
}

/// `GET /v1/tenants/{tenant}/grants`
pub async fn list_grants(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.grants
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}

// ---------- policies ----------

/// `PUT /v1/tenants/{tenant}/policies/{name}` with the Cedar text as body.
pub async fn put_policies(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, axum::response::Response> {
    use axum::response::IntoResponse;
    use registration::PolicyRefusal;
    need_tenant(&s, &tenant).map_err(IntoResponse::into_response)?;
    let raw = body(raw, s.config.max_body).map_err(IntoResponse::into_response)?;
    match registration::put_policies(&s, &origin(addr, &headers), (&tenant, &name), &raw).await {
        Ok(rec) => Ok(Json(json!(rec))),
        Err(PolicyRefusal::Refused(e)) => Err(e.into_response()),
        Err(PolicyRefusal::Invalid(problems)) => {
            let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
            let list: Vec<Value> = problems
                .iter()
                .map(|p| json!({"line": p.line, "column": p.column, "message": p.message}))
                .collect();
            Err((
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": "invalid_request",
                    "error_description": format!("policy `{name}` is not valid against the Mandate schema: {first}"),
                    "problems": list,
                })),
            )
                .into_response())
        }
    }
}

/// `DELETE /v1/tenants/{tenant}/policies/{name}`
pub async fn delete_policies(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    registration::delete_policies(&s, &origin(addr, &headers), (&tenant, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/tenants/{tenant}/policies`
pub async fn list_policies(
    State(s): State<S>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    of_tenant(&s, &headers, &tenant, |reg| {
        json!(
            reg.policy_sets
                .values()
                .filter(|x| x.tenant == tenant)
                .collect::<Vec<_>>()
        )
    })
}
