//! Revocation of a credential, run, agent, principal, grant or tenant.

use super::*;

// ---------- revocation ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRevocation {
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/revocations`: revoke a credential, run, agent, principal, grant or tenant.
pub async fn revoke(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let req: NewRevocation = json_body(&body(raw, s.config.max_body)?)?;
    let reason = req.reason.unwrap_or_else(|| "revoked by an admin".into());
    ids::check_text("reason", &reason, 512).map_err(bad)?;
    let need = |what: &str, v: &Option<String>| -> Result<String, ApiError> {
        v.clone().ok_or_else(|| {
            err(
                Code::InvalidRequest,
                format!("revoking a {} needs `{what}`", req.kind),
            )
        })
    };
    let mut ev = Ctx::new(&s, &headers, addr).event("revoke", None);
    let now = s.now_secs();
    let (key, until) = {
        let reg = s.reg();
        match req.kind.as_str() {
            "credential" => {
                let jti = match (&req.id, &req.token) {
                    (Some(j), _) => {
                        ev.tenant = credential_tenant(&s, &reg, j, req.tenant.as_deref())?;
                        j.clone()
                    }
                    (None, Some(t)) => {
                        let c = mandate_core::credential::verify(
                            &s.keys,
                            &s.config.issuer,
                            t,
                            now,
                            true,
                        )
                        .map_err(|e| {
                            err(
                                Code::InvalidRequest,
                                format!("`token` is not a credential of this broker: {e}"),
                            )
                        })?;
                        ev.tenant = Some(c.tenant.clone());
                        ev.run = Some(c.run.clone());
                        ev.agent = Some(c.agent.clone());
                        c.jti
                    }
                    (None, None) => {
                        return Err(err(
                            Code::InvalidRequest,
                            "revoking a credential needs `id` (its jti) or `token`",
                        ));
                    }
                };
                ev.credential_id = Some(jti.clone());
                (format!("cred:{jti}"), 0)
            }
            "run" => {
                let id = need("id", &req.id)?;
                let run = s.store.get_run(&id)?.ok_or_else(|| {
                    err(Code::NotFound, format!("run `{}` not found", short(&id)))
                })?;
                ev.tenant = Some(run.tenant.clone());
                ev.agent = Some(run.agent.clone());
                ev.principal = run.principal.clone();
                ev.run = Some(id.clone());
                (format!("run:{id}"), run.expires_at)
            }
            "agent" | "principal" => {
                let tenant = need("tenant", &req.tenant)?;
                let id = need("id", &req.id)?;
                let exists = if req.kind == "agent" {
                    reg.agents.contains_key(&(tenant.clone(), id.clone()))
                } else {
                    reg.principals.contains_key(&(tenant.clone(), id.clone()))
                };
                if !exists {
                    return Err(err(
                        Code::NotFound,
                        format!(
                            "{} `{}` not found in tenant `{}`",
                            req.kind,
                            short(&id),
                            short(&tenant)
                        ),
                    ));
                }
                ev.tenant = Some(tenant.clone());
                if req.kind == "agent" {
                    ev.agent = Some(id.clone());
                } else {
                    ev.principal = Some(id.clone());
                }
                (format!("{}:{tenant}/{id}", req.kind), 0)
            }
            "grant" => {
                let id = need("id", &req.id)?;
                let g = reg.grants.get(&id).ok_or_else(|| {
                    err(Code::NotFound, format!("grant `{}` not found", short(&id)))
                })?;
                ev.tenant = Some(g.tenant.clone());
                ev.agent = Some(g.agent.clone());
                ev.principal = Some(g.principal.clone());
                (format!("grant:{id}"), g.expires_at)
            }
            "tenant" => {
                let t = need("id", &req.id).or_else(|_| need("tenant", &req.tenant))?;
                if !reg.tenants.contains_key(&t) {
                    return Err(err(
                        Code::NotFound,
                        format!("tenant `{}` not found", short(&t)),
                    ));
                }
                ev.tenant = Some(t.clone());
                (format!("tenant:{t}"), 0)
            }
            "everything" => {
                // The kill switch: every mandate and credential issued until
                // now, of every tenant and provider. New runs may start.
                // Never forgotten: approver and feed credentials do not
                // expire, so no time bounds what it must keep refusing.
                (format!("{}{now}", crate::registry::EVERYTHING), 0)
            }
            other => {
                return Err(err(
                    Code::InvalidRequest,
                    format!(
                        "cannot revoke a `{}`; kinds are credential, run, agent, principal, grant, tenant, everything",
                        short(other)
                    ),
                ));
            }
        }
    };
    ev.reason = Some(reason.clone());
    ev.details = json!({"revoked": key});
    let rev = Revocation {
        seq: 0,
        key: key.clone(),
        reason,
        time_ms: s.now_ms(),
        until,
        tenant: ev.tenant.clone(),
    };
    let done = s
        .commit(Entry {
            mutation: Some(Mutation::Revoke(rev)),
            events: vec![ev],
        })
        .await?;
    Ok(Json(json!({"revoked": key, "seq": done.revocation_seq})))
}

/// `GET /v1/revocations`: the revoked ids in force (for operators).
pub async fn list_revocations(
    State(s): State<S>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let reg = s.reg();
    let mut keys: Vec<&String> = reg.revoked.iter().collect();
    keys.sort();
    Ok(Json(json!({"seq": reg.revocation_seq, "revoked": keys})))
}

/// The tenant a credential revoked by id belongs to, so a tenant's feed
/// sees it and no other tenant's does: an approver, feed or join
/// credential's own; else the one the request names (which must exist);
/// else unknown (`None`: the id is shown to every feed, as an opaque id).
fn credential_tenant(
    s: &S,
    reg: &crate::registry::Registry,
    id: &str,
    named: Option<&str>,
) -> Result<Option<String>, ApiError> {
    if let Some(a) = reg.approvers.iter().find(|a| a.id == id) {
        return Ok(Some(a.tenant.clone()));
    }
    let feed = s
        .feed_credentials
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.tenant.clone());
    if let Some(t) = feed {
        return Ok(t);
    }
    if let Some(j) = s.store.join_token(id)? {
        return Ok(Some(j.tenant));
    }
    match named {
        Some(t) if reg.tenants.contains_key(t) => Ok(Some(t.to_owned())),
        Some(t) => Err(err(
            Code::NotFound,
            format!("tenant `{}` not found", short(t)),
        )),
        None => Ok(None),
    }
}
