//! The `postgres` provider: a database role per credential.
//!
//! An exchange for a `postgres` tool records a *lease* (durably, with its
//! audit event) and then creates a role `mandate_<run>_<k>` with `LOGIN`, a
//! random password (sent as a SCRAM-SHA-256 verifier, so the clear text
//! never reaches the server's logs), `VALID UNTIL` the credential's expiry,
//! and membership only in the roles the granted actions map to. The reaper
//! drops the role (after refusing new logins and terminating its sessions)
//! when the lease expires or anything it hangs on is revoked; it works from
//! the stored leases, so a restart resumes the clean-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_postgres::{Client, NoTls};

use mandate_core::audit::EventBody;
use mandate_core::tooling::check_pg_ident;
use mandate_store::{Entry, Lease, Mutation};

use crate::state::AppState;

/// How long the broker waits for the database admin connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one DDL round may take.
const DDL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the reaper looks for expired leases.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Admin connections, one per tool, reopened when closed or when the
/// tool's admin connection string changes.
#[derive(Default)]
pub struct Postgres {
    admins: tokio::sync::Mutex<HashMap<ToolKey, (u64, Arc<Client>)>>,
}

/// (tenant, tool).
type ToolKey = (String, String);

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postgres")
    }
}

/// Why a database operation failed (never holds the connection string).
#[derive(Debug)]
pub struct PgError(pub String);

impl Postgres {
    async fn admin(&self, s: &AppState, tenant: &str, tool: &str) -> Result<Arc<Client>, PgError> {
        let (version, dsn) = s.tool_secret_versioned(tenant, tool).ok_or_else(|| {
            PgError(format!(
                "tool `{tool}` has no admin connection string; an admin sets it with `mandate tool set-secret {tool}`"
            ))
        })?;
        let key = (tenant.to_owned(), tool.to_owned());
        let mut admins = self.admins.lock().await;
        if let Some((v, c)) = admins.get(&key)
            && *v == version
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        admins.remove(&key);
        let dsn = std::str::from_utf8(dsn.expose())
            .map_err(|_| PgError("the admin connection string is not text".into()))?;
        let (client, conn) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(dsn, NoTls))
                .await
                .map_err(|_| {
                    PgError(format!(
                        "the database admin connection of tool `{tool}` timed out after {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| {
                    PgError(format!(
                        "the database admin connection of tool `{tool}` failed: {}",
                        describe(&e)
                    ))
                })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!("database admin connection closed: {}", describe(&e));
            }
        });
        let client = Arc::new(client);
        admins.insert(key, (version, Arc::clone(&client)));
        Ok(client)
    }

    /// Creates the lease's role. One statement: the role exists with all of
    /// its memberships, or not at all.
    pub async fn create_role(
        &self,
        s: &AppState,
        lease: &Lease,
        password: &str,
        member_of: &[String],
    ) -> Result<(), PgError> {
        check_pg_ident("role", &lease.role).map_err(|e| PgError(e.to_string()))?;
        for r in member_of {
            check_pg_ident("role", r).map_err(|e| PgError(e.to_string()))?;
        }
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let sql = format!(
            "CREATE ROLE \"{}\" LOGIN INHERIT PASSWORD '{}' VALID UNTIL '{}' CONNECTION LIMIT 16 IN ROLE {}",
            lease.role,
            verifier,
            timestamp_utc(lease.expires_at),
            member_of
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let c = self.admin(s, &lease.tenant, &lease.tool).await?;
        tokio::time::timeout(DDL_TIMEOUT, c.batch_execute(&sql))
            .await
            .map_err(|_| PgError("creating the database role timed out".into()))?
            .map_err(|e| {
                PgError(format!(
                    "creating the database role failed: {}",
                    describe(&e)
                ))
            })
    }

    /// Refuses new logins, ends the role's sessions, and drops it (and what
    /// it owns, after handing that to the admin). Missing roles are fine.
    pub async fn drop_role(&self, s: &AppState, lease: &Lease) -> Result<(), PgError> {
        check_pg_ident("role", &lease.role).map_err(|e| PgError(e.to_string()))?;
        let c = self.admin(s, &lease.tenant, &lease.tool).await?;
        let r = &lease.role;
        let exists = tokio::time::timeout(
            DDL_TIMEOUT,
            c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[r]),
        )
        .await
        .map_err(|_| PgError("looking up the database role timed out".into()))?
        .map_err(|e| PgError(describe(&e)))?;
        if exists.is_none() {
            return Ok(());
        }
        let sql = format!(
            "ALTER ROLE \"{r}\" NOLOGIN;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{r}';
             REASSIGN OWNED BY \"{r}\" TO CURRENT_USER;
             DROP OWNED BY \"{r}\";
             DROP ROLE \"{r}\";"
        );
        tokio::time::timeout(DDL_TIMEOUT, c.batch_execute(&sql))
            .await
            .map_err(|_| PgError("dropping the database role timed out".into()))?
            .map_err(|e| {
                PgError(format!(
                    "dropping the database role failed: {}",
                    describe(&e)
                ))
            })
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let s = e.to_string();
            match std::error::Error::source(e) {
                Some(src) => format!("{s}: {src}"),
                None => s,
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS+00` for a Unix time (proleptic Gregorian calendar;
/// H. Hinnant's `civil_from_days`).
pub fn timestamp_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Drops the roles of leases that expired or were revoked, until the broker stops.
pub async fn reaper(s: Arc<AppState>) {
    let mut revocations = s.revocations.subscribe();
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = revocations.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
        reap_once(&s).await;
    }
}

/// One pass of the reaper; returns how many roles were dropped.
pub async fn reap_once(s: &Arc<AppState>) -> usize {
    let store = Arc::clone(&s.store);
    let leases = match tokio::task::spawn_blocking(move || store.live_leases()).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::error!("cannot read leases: {e}");
            return 0;
        }
        Err(_) => return 0,
    };
    let now = crate::now_secs();
    let mut dropped = 0;
    for l in leases {
        let why = if l.expires_at <= now {
            Some("expired".to_owned())
        } else {
            s.reg()
                .refused(&l.revocation_keys(), l.created_ms / 1000)
                .map(|k| format!("revoked: {k}"))
        };
        let Some(why) = why else { continue };
        match s.pg.drop_role(s, &l).await {
            Ok(()) => {
                let ev = EventBody {
                    time_ms: crate::now_ms(),
                    event_type: "lease.drop".into(),
                    decision: "ok".into(),
                    reason: Some(why),
                    tenant: Some(l.tenant.clone()),
                    agent: Some(l.agent.clone()),
                    run: Some(l.run.clone()),
                    principal: l.principal.clone(),
                    tool: Some(l.tool.clone()),
                    credential_id: Some(l.id.clone()),
                    actor: Some("broker (lease reaper)".into()),
                    details: json!({"role": l.role}),
                    ..Default::default()
                };
                let r = s
                    .commit(Entry {
                        mutation: Some(Mutation::DropLease {
                            id: l.id.clone(),
                            dropped_ms: crate::now_ms(),
                        }),
                        events: vec![ev],
                    })
                    .await;
                if r.is_ok() {
                    dropped += 1;
                }
            }
            Err(e) => tracing::warn!(role = %l.role, "cannot drop database role yet: {}", e.0),
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::timestamp_utc;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp_utc(0), "1970-01-01 00:00:00+00");
        assert_eq!(timestamp_utc(951_782_400), "2000-02-29 00:00:00+00");
        assert_eq!(timestamp_utc(1_795_426_245), "2026-11-23 09:30:45+00");
    }
}
