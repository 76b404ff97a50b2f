//! The `postgres` provider: a PostgreSQL role made for one credential, with
//! the roles its actions map to, dropped at expiry or revocation by the
//! lease reaper ([`crate::pg`]). The lease is durable with the issuance
//! event, before the role exists.

use mandate_core::credential::AccessClaims;
use mandate_core::model::{Lease, Tool};
use mandate_core::tooling::ProviderKind;
use rand_core::OsRng;
use serde_json::json;

use super::{BoxFuture, Credential, Issue, IssueFailure, Prepared, Provider, Recorded, Settings};
use crate::error::{ApiError, Code, err};
use crate::state::AppState;

/// Our issued token type: a connection URI (RFC 8693 §3 lets a server
/// define its own token type URIs).
pub const TOKEN_TYPE_POSTGRES: &str = "urn:mandate:params:oauth:token-type:postgres-uri";

/// See the module documentation.
pub(super) struct Postgres;

impl Provider for Postgres {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Postgres
    }

    fn audience(
        &self,
        _: &AppState,
        tenant: &str,
        name: &str,
        given: Option<&str>,
    ) -> Result<String, String> {
        match given {
            Some(_) => Err(
                "a `postgres` tool's audience is set by the broker; leave `audience` out".into(),
            ),
            None => Ok(format!("urn:mandate:postgres:{tenant}:{name}")),
        }
    }

    fn validate(&self, settings: &Settings<'_>) -> Result<(), String> {
        settings.only(self.kind())?;
        match settings.postgres {
            Some(p) => p.validate(settings.actions).map_err(|e| e.to_string()),
            None => Err("a `postgres` tool needs `postgres`: host, database and the roles each action maps to".into()),
        }
    }

    fn holds_secret(&self) -> bool {
        true
    }

    fn check_secret(&self, _: &Tool, secret: &str) -> Result<(), String> {
        secret
            .parse::<tokio_postgres::Config>()
            .map(|_| ())
            .map_err(|_| "the admin connection string is not valid (`postgresql://user:password@host:port/database`)".into())
    }

    fn prepare(&self, tool: &Tool, actions: &[String]) -> Result<Prepared, ApiError> {
        let Some(spec) = &tool.postgres else {
            return Err(err(Code::ServerError, "the tool has no database settings"));
        };
        let mut roles: Vec<String> = Vec::new();
        for a in actions {
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
            if !roles.contains(role) {
                roles.push(role.clone());
            }
        }
        Ok(Prepared { roles })
    }

    fn record(&self, claims: &AccessClaims, tool: &Tool, prepared: &Prepared) -> Recorded {
        let lease = Lease {
            id: claims.jti.clone(),
            tenant: claims.tenant.clone(),
            tool: tool.name.clone(),
            run: claims.run.clone(),
            agent: claims.agent.clone(),
            principal: (claims.sub != claims.client_id).then(|| claims.sub.clone()),
            grant: claims.grant.clone(),
            role: role_name(claims),
            expires_at: claims.exp,
            created_ms: claims.iat.saturating_mul(1000),
            dropped_ms: None,
            revoked_by: claims.revocation_keys(),
        };
        Recorded {
            details: json!({"role": lease.role, "roles": prepared.roles}),
            lease: Some(lease),
        }
    }

    fn issue<'a>(
        &'a self,
        s: &'a AppState,
        x: Issue<'a>,
    ) -> BoxFuture<'a, Result<Credential, IssueFailure>> {
        Box::pin(async move {
            let (Some(spec), Some(lease)) = (&x.tool.postgres, &x.recorded.lease) else {
                return Err(IssueFailure {
                    refused: false,
                    message: "the tool has no database settings".into(),
                });
            };
            let password = password();
            if let Err(e) =
                s.pg.create_role(s, lease, &password, &x.prepared.roles)
                    .await
            {
                // The reaper drops the role if the server made it after all,
                // even if the lease's revocation cannot be made durable.
                s.pg.abandon(&lease.id, "the database role could not be created");
                let refused = e.kind == crate::pg::PgErrorKind::Refused;
                return Err(IssueFailure {
                    refused,
                    message: if refused {
                        format!(
                            "{}; no credential was issued (an admin of tool `{}` must fix its role mapping)",
                            e.message, x.tool.name
                        )
                    } else {
                        format!("{}; no credential was issued, retry later", e.message)
                    },
                });
            }
            Ok(Credential {
                access_token: format!(
                    "postgresql://{}:{}@{}:{}/{}",
                    lease.role,
                    password.as_str(),
                    spec.host,
                    spec.port,
                    spec.database
                )
                .into(),
                issued_token_type: TOKEN_TYPE_POSTGRES,
                token_type: "N_A",
                extra: Vec::new(),
            })
        })
    }
}

/// The role of a credential: its run and part of its id.
fn role_name(claims: &AccessClaims) -> String {
    let jti = claims.jti.trim_start_matches("cred_");
    format!(
        "mandate_{}_{}",
        claims.run.trim_start_matches("run_"),
        jti.get(..6).unwrap_or(jti)
    )
}

/// A random database password (URL-safe, so it fits a connection URI).
fn password() -> zeroize::Zeroizing<String> {
    let s = mandate_core::secret::Secret::random(&mut OsRng, 24);
    mandate_core::jose::b64(s.expose()).into()
}
