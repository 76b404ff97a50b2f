//! Revocation by an admin: a credential, run, agent, principal, grant or
//! tenant, or everything (the kill switch).

use serde::Deserialize;
use serde_json::json;

use mandate_core::audit::EventType;
use mandate_core::ids;
use mandate_core::model::Revocation;
use mandate_core::revocation::RevocationKind;
use mandate_store::{Entry, Mutation};

use crate::error::{ApiError, Code, err};
use crate::origin::Origin;
use crate::services::{bad, short};
use crate::state::AppState;

/// What an admin asks to revoke (`POST /v1/revocations`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRevocation {
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) tenant: Option<String>,
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// What an admin revocation names, and who it concerns (for the audit).
#[derive(Default)]
struct Target {
    key: String,
    until: u64,
    tenant: Option<String>,
    agent: Option<String>,
    principal: Option<String>,
    run: Option<String>,
    credential: Option<String>,
}

/// The kind a request names (`credential`, `run`, ...; the kill switch is
/// `everything`).
fn parse_kind(kind: &str) -> Result<RevocationKind, ApiError> {
    match kind {
        "credential" => Ok(RevocationKind::Credential),
        "block" | "cred" => Err(err(
            Code::InvalidRequest,
            format!("cannot revoke a `{kind}` here; kinds are credential, run, agent, principal, grant, tenant, everything"),
        )),
        other => RevocationKind::ALL
            .into_iter()
            .find(|k| k.name() == other)
            .ok_or_else(|| {
                err(
                    Code::InvalidRequest,
                    format!(
                        "cannot revoke a `{}`; kinds are credential, run, agent, principal, grant, tenant, everything",
                        short(other)
                    ),
                )
            }),
    }
}

/// A revocation made: its id and its place in the revocation log.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The revoked id (`run:...`).
    pub key: String,
    /// Its sequence number in the log.
    pub seq: Option<u64>,
}

/// Revokes what an admin names: a credential, run, agent, principal, grant
/// or tenant, or everything (the kill switch); durable with its event.
pub async fn revoke(
    s: &AppState,
    req: NewRevocation,
    origin: &Origin,
) -> Result<Revoked, ApiError> {
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| "revoked by an admin".into());
    ids::check_text("reason", &reason, 512).map_err(bad)?;
    let kind = parse_kind(&req.kind)?;
    let t = target(s, &req, kind, s.now_secs())?;
    // Only ids every verifier can read go on the feed: one that a verifier
    // refuses to parse would stop it following the feed.
    if mandate_core::revocation::parse_id(&t.key).is_none() {
        return Err(err(
            Code::InvalidRequest,
            "the id to revoke is not well formed: at most 512 characters, none of them control characters",
        ));
    }
    let mut ev = origin.admin_event(EventType::Revoke, t.tenant.as_deref(), s.now_ms());
    ev.agent = t.agent;
    ev.principal = t.principal;
    ev.run = t.run;
    ev.credential_id = t.credential;
    let (key, until) = (t.key, t.until);
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
    Ok(Revoked {
        key,
        seq: done.revocation_seq,
    })
}

/// Resolves what `req` names into a revocation id and whom it concerns.
fn target(
    s: &AppState,
    req: &NewRevocation,
    kind: RevocationKind,
    now: u64,
) -> Result<Target, ApiError> {
    use RevocationKind as K;
    let need = |what: &str, v: &Option<String>| -> Result<String, ApiError> {
        v.clone().ok_or_else(|| {
            err(
                Code::InvalidRequest,
                format!("revoking a {} needs `{what}`", req.kind),
            )
        })
    };
    let reg = s.reg();
    Ok(match kind {
        K::Credential => credential_target(s, &reg, req, now)?,
        K::Run => {
            let id = need("id", &req.id)?;
            let run = s
                .store
                .get_run(&id)?
                .ok_or_else(|| err(Code::NotFound, format!("run `{}` not found", short(&id))))?;
            Target {
                key: K::Run.id(&id),
                until: run.expires_at,
                tenant: Some(run.tenant),
                agent: Some(run.agent),
                principal: run.principal,
                run: Some(id),
                credential: None,
            }
        }
        K::Agent | K::Principal => {
            let tenant = need("tenant", &req.tenant)?;
            let id = need("id", &req.id)?;
            let key = (tenant.clone(), id.clone());
            let exists = if kind == K::Agent {
                reg.agents.contains_key(&key)
            } else {
                reg.principals.contains_key(&key)
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
            Target {
                key: kind.id(&format!("{tenant}/{id}")),
                tenant: Some(tenant),
                agent: (kind == K::Agent).then(|| id.clone()),
                principal: (kind == K::Principal).then_some(id),
                ..Target::default()
            }
        }
        K::Grant => {
            let id = need("id", &req.id)?;
            let g = reg
                .grants
                .get(&id)
                .ok_or_else(|| err(Code::NotFound, format!("grant `{}` not found", short(&id))))?;
            Target {
                key: K::Grant.id(&id),
                until: g.expires_at,
                tenant: Some(g.tenant.clone()),
                agent: Some(g.agent.clone()),
                principal: Some(g.principal.clone()),
                ..Target::default()
            }
        }
        K::Tenant => {
            let t = need("id", &req.id).or_else(|_| need("tenant", &req.tenant))?;
            if !reg.tenants.contains_key(&t) {
                return Err(err(
                    Code::NotFound,
                    format!("tenant `{}` not found", short(&t)),
                ));
            }
            Target {
                key: K::Tenant.id(&t),
                tenant: Some(t),
                ..Target::default()
            }
        }
        // The kill switch: every mandate and credential issued until now,
        // of every tenant and provider. New runs may start. Never
        // forgotten: approver and feed credentials do not expire, so no
        // time bounds what it must keep refusing.
        K::Everything => Target {
            key: K::Everything.id(&now.to_string()),
            ..Target::default()
        },
        K::Block => {
            return Err(err(
                Code::InvalidRequest,
                "a narrowed mandate is revoked by its holder, at the RFC 7009 endpoint (`/oauth/revoke`)",
            ));
        }
    })
}

/// A credential, by id (`jti`) or by the credential itself.
fn credential_target(
    s: &AppState,
    reg: &crate::registry::Registry,
    req: &NewRevocation,
    now: u64,
) -> Result<Target, ApiError> {
    match (&req.id, &req.token) {
        (Some(j), _) => Ok(Target {
            key: RevocationKind::Credential.id(j),
            tenant: credential_tenant(s, reg, j, req.tenant.as_deref())?,
            credential: Some(j.clone()),
            ..Target::default()
        }),
        (None, Some(t)) => {
            let c =
                mandate_core::credential::verify(&s.keyset().keys, &s.config.issuer, t, now, true)
                    .map_err(|e| {
                        err(
                            Code::InvalidRequest,
                            format!("`token` is not a credential of this broker: {e}"),
                        )
                    })?;
            Ok(Target {
                key: RevocationKind::Credential.id(&c.jti),
                tenant: Some(c.tenant),
                run: Some(c.run),
                agent: Some(c.agent),
                credential: Some(c.jti),
                ..Target::default()
            })
        }
        (None, None) => Err(err(
            Code::InvalidRequest,
            "revoking a credential needs `id` (its jti) or `token`",
        )),
    }
}

/// The tenant a credential revoked by id belongs to, so a tenant's feed
/// sees it and no other tenant's does: an approver, feed or join
/// credential's own; else the one the request names (which must exist);
/// else unknown (`None`: the id is shown to every feed, as an opaque id).
fn credential_tenant(
    s: &AppState,
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
