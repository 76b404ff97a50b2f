//! The `postgres` provider: a database role per credential.
//!
//! An exchange for a `postgres` tool records a *lease* (durably, with its
//! audit event), checks that no mapped role reaches a power a credential
//! must never have ([`mandate_core::pgrole`]), and then creates a role
//! `mandate_<run>_<k>` with `LOGIN`, a random password (sent as a
//! SCRAM-SHA-256 verifier, so the clear text never reaches the server's
//! logs), `VALID UNTIL` the credential's expiry, and membership only in the
//! roles the granted actions map to. The reaper drops the role when the
//! lease expires or anything it hangs on is revoked: it refuses new logins,
//! takes the role's memberships, ends its sessions, and drops it *with what
//! it owns* (never handed to the admin: a `SECURITY DEFINER` function would
//! then run as the admin). If others depend on those objects, the role stays,
//! unable to log in and member of nothing, and the lease is retried. The
//! reaper works from the stored leases, so a restart resumes the clean-up;
//! failures back off per tool and per lease, and are said once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_postgres::{Client, NoTls};

use mandate_core::audit::EventBody;
use mandate_core::model::Lease;
use mandate_core::pgrole::{PG_SERVER_ROLES, PgReach, check_mapped_roles};
use mandate_core::tooling::check_pg_ident;
use mandate_store::{Entry, Mutation};

use crate::state::AppState;

/// How long the broker waits for the database admin connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one DDL round may take.
const DDL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the reaper looks for expired leases.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// How long the reaper waits for a terminated session to end (ms).
const TERMINATE_WAIT_MS: i64 = 3000;
/// The first wait after a failure; it doubles with each further failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Admin connections, one per tool, reopened when closed or when the
/// tool's admin connection string changes; and what the reaper must retry.
#[derive(Default)]
pub struct Postgres {
    admins: tokio::sync::Mutex<HashMap<ToolKey, (u64, Arc<Client>)>>,
    retries: Mutex<Retries>,
}

/// (tenant, tool).
type ToolKey = (String, String);

/// What the reaper retries later. Keys are tools and leases that have a
/// live lease (pruned each pass), so it is bounded by the stored leases.
#[derive(Default)]
struct Retries {
    /// Tools whose admin connection failed: the secret version it failed
    /// with (a new secret is tried at once) and when to try again.
    tools: HashMap<ToolKey, (Option<u64>, Backoff)>,
    /// Leases whose role could not be dropped yet.
    leases: HashMap<String, (ToolKey, Backoff)>,
    /// Leases whose role could not be created: dropped whatever the
    /// revocation set says, since their revocation may not be durable.
    abandoned: HashMap<String, String>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postgres")
    }
}

/// Why a database operation failed (never holds the connection string).
#[derive(Debug)]
pub struct PgError {
    /// What kind of failure.
    pub kind: PgErrorKind,
    /// What happened and what to do.
    pub message: String,
}

/// Kinds of [`PgError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgErrorKind {
    /// No admin connection: no secret, unreachable, or login refused (the
    /// tool's settings).
    Unavailable,
    /// A mapped role is missing or reaches a forbidden power: refused.
    Refused,
    /// The role owns objects that others depend on: it stays, unable to
    /// log in and member of nothing, until they are gone.
    Dependent,
    /// A statement failed or timed out.
    Failed,
}

impl PgError {
    fn new(kind: PgErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

fn unavailable(message: impl Into<String>) -> PgError {
    PgError::new(PgErrorKind::Unavailable, message)
}

fn failed(message: impl Into<String>) -> PgError {
    PgError::new(PgErrorKind::Failed, message)
}

/// Exponential backoff in injected time: 1 s, 2 s, 4 s, ... at most 5 min.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    next_ms: u64,
}

impl Backoff {
    /// Whether a try is due at `now_ms`.
    pub fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.next_ms
    }

    /// How many tries failed in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failed try at `now_ms`; returns the wait before the next.
    pub fn failed(&mut self, now_ms: u64) -> Duration {
        let wait = RETRY_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        self.next_ms = now_ms.saturating_add(wait.as_millis() as u64);
        wait
    }

    /// Makes the next try due at once (the failure count stays).
    pub fn now(&mut self) {
        self.next_ms = 0;
    }
}

/// Mapped roles and every role they are members of (at any depth) that
/// has a power no credential may reach. `$1`: mapped roles; `$2`: the
/// server-file roles.
const REACH_SQL: &str = "SELECT m.rolname::text, a.rolname::text, a.rolsuper, a.rolcreaterole,
        a.rolbypassrls, a.rolreplication, a.rolname::text = ANY($2::text[]),
        a.rolname IN (current_user, session_user)
   FROM pg_roles m JOIN pg_roles a ON pg_has_role(m.oid, a.oid, 'MEMBER')
  WHERE m.rolname::text = ANY($1::text[])
    AND (a.rolsuper OR a.rolcreaterole OR a.rolbypassrls OR a.rolreplication
         OR a.rolname::text = ANY($2::text[]) OR a.rolname IN (current_user, session_user))";

/// Mapped roles the database does not know.
const MISSING_SQL: &str = "SELECT r FROM unnest($1::text[]) AS r
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname::text = r)";

/// Refuses when a mapped role is missing or reaches a power no credential
/// may have (asked of the database through `c`, the admin connection).
async fn check_roles(c: &Client, roles: &[String]) -> Result<(), PgError> {
    let server: Vec<&str> = PG_SERVER_ROLES.to_vec();
    let looked_up = async {
        let reach = c.query(REACH_SQL, &[&roles, &server]).await?;
        let missing = c.query(MISSING_SQL, &[&roles]).await?;
        Ok::<_, tokio_postgres::Error>((reach, missing))
    };
    let (reach, missing) = tokio::time::timeout(DDL_TIMEOUT, looked_up)
        .await
        .map_err(|_| failed("checking the mapped database roles timed out"))?
        .map_err(|e| {
            failed(format!(
                "checking the mapped database roles failed: {}",
                describe(&e)
            ))
        })?;
    let reach: Vec<PgReach> = reach
        .iter()
        .map(|r| PgReach {
            mapped: r.get(0),
            via: r.get(1),
            superuser: r.get(2),
            createrole: r.get(3),
            bypassrls: r.get(4),
            replication: r.get(5),
            server_access: r.get(6),
            broker_admin: r.get(7),
        })
        .collect();
    let missing: Vec<String> = missing.iter().map(|r| r.get(0)).collect();
    check_mapped_roles(&reach, &missing)
        .map_err(|e| PgError::new(PgErrorKind::Refused, e.to_string()))
}

async fn connect(dsn: &str, tool: &str) -> Result<Client, PgError> {
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(dsn, NoTls))
        .await
        .map_err(|_| {
            unavailable(format!(
                "the database admin connection of tool `{tool}` timed out after {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            unavailable(format!(
                "the database admin connection of tool `{tool}` failed: {}",
                describe(&e)
            ))
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!("database admin connection closed: {}", describe(&e));
        }
    });
    Ok(client)
}

/// Checks a tool's mapped roles through the admin connection string `dsn`
/// (not yet stored: when an admin sets it).
pub async fn check_tool_roles(dsn: &str, tool: &str, roles: &[String]) -> Result<(), PgError> {
    let c = connect(dsn, tool).await?;
    check_roles(&c, roles).await
}

/// Runs `sql` (one implicit transaction) through the admin connection.
async fn ddl(c: &Client, sql: &str, what: &str) -> Result<(), PgError> {
    tokio::time::timeout(DDL_TIMEOUT, c.batch_execute(sql))
        .await
        .map_err(|_| failed(format!("{what} timed out")))?
        .map_err(|e| {
            let dependent =
                e.code() == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST);
            let kind = if dependent {
                PgErrorKind::Dependent
            } else {
                PgErrorKind::Failed
            };
            PgError::new(kind, format!("{what} failed: {}", describe(&e)))
        })
}

/// Takes every role membership of `role` (an identifier checked by
/// [`check_pg_ident`]): what it still owns then runs with nothing.
fn revoke_memberships_sql(role: &str) -> String {
    format!(
        "DO $$ DECLARE g name; BEGIN
           FOR g IN SELECT b.rolname FROM pg_auth_members m
                      JOIN pg_roles b ON b.oid = m.roleid
                      JOIN pg_roles a ON a.oid = m.member
                     WHERE a.rolname = '{role}'
           LOOP EXECUTE format('REVOKE %I FROM %I', g, '{role}'); END LOOP;
         END $$"
    )
}

impl Postgres {
    async fn admin(&self, s: &AppState, tenant: &str, tool: &str) -> Result<Arc<Client>, PgError> {
        let (version, dsn) = s.tool_secret_versioned(tenant, tool).ok_or_else(|| {
            unavailable(format!(
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
            .map_err(|_| unavailable("the admin connection string is not text"))?;
        let client = Arc::new(connect(dsn, tool).await?);
        admins.insert(key, (version, Arc::clone(&client)));
        Ok(client)
    }

    /// Creates the lease's role, after checking that no mapped role reaches
    /// a power a credential must never have. One statement: the role exists
    /// with all of its memberships, or not at all.
    pub async fn create_role(
        &self,
        s: &AppState,
        lease: &Lease,
        password: &str,
        member_of: &[String],
    ) -> Result<(), PgError> {
        check_pg_ident("role", &lease.role).map_err(|e| failed(e.to_string()))?;
        for r in member_of {
            check_pg_ident("role", r).map_err(|e| failed(e.to_string()))?;
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
        check_roles(&c, member_of).await?;
        ddl(&c, &sql, "creating the database role").await
    }

    /// Drops the lease's role and everything it owns, failing closed one
    /// committed step at a time: no new logins, no memberships, no
    /// sessions; then `DROP OWNED` and `DROP ROLE` together. Never
    /// `REASSIGN OWNED` to the admin. A missing role is said so.
    pub async fn drop_role(&self, s: &AppState, lease: &Lease) -> Result<RoleGone, PgError> {
        check_pg_ident("role", &lease.role).map_err(|e| failed(e.to_string()))?;
        let c = self.admin(s, &lease.tenant, &lease.tool).await?;
        let r = lease.role.as_str();
        let exists = tokio::time::timeout(
            DDL_TIMEOUT,
            c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&r]),
        )
        .await
        .map_err(|_| failed("looking up the database role timed out"))?
        .map_err(|e| failed(describe(&e)))?;
        if exists.is_none() {
            return Ok(RoleGone::Absent);
        }
        ddl(
            &c,
            &format!("ALTER ROLE \"{r}\" NOLOGIN"),
            "refusing the role's logins",
        )
        .await?;
        ddl(
            &c,
            &revoke_memberships_sql(r),
            "taking the role's memberships",
        )
        .await?;
        let ended: Option<bool> = tokio::time::timeout(
            DDL_TIMEOUT,
            c.query_one(
                "SELECT bool_and(pg_terminate_backend(pid, $2)) FROM pg_stat_activity WHERE usename = $1",
                &[&r, &TERMINATE_WAIT_MS],
            ),
        )
        .await
        .map_err(|_| failed("ending the role's sessions timed out"))?
        .map_err(|e| failed(format!("ending the role's sessions failed: {}", describe(&e))))?
        .get(0);
        if ended == Some(false) {
            return Err(failed(format!(
                "a session of the role did not end within {TERMINATE_WAIT_MS} ms"
            )));
        }
        ddl(
            &c,
            &format!("DROP OWNED BY \"{r}\"; DROP ROLE \"{r}\";"),
            "dropping the role and what it owns",
        )
        .await
        .map(|()| RoleGone::Dropped)
    }

    /// Marks a lease whose role could not be created: the reaper drops it
    /// even if its revocation could not be made durable.
    pub fn abandon(&self, lease: &str, why: &str) {
        self.retries()
            .abandoned
            .insert(lease.to_owned(), why.to_owned());
    }

    fn retries(&self) -> std::sync::MutexGuard<'_, Retries> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets what concerns no live lease any more.
    fn prune(&self, live: &[Lease]) {
        let ids: std::collections::HashSet<&str> = live.iter().map(|l| l.id.as_str()).collect();
        let tools: std::collections::HashSet<(&str, &str)> = live
            .iter()
            .map(|l| (l.tenant.as_str(), l.tool.as_str()))
            .collect();
        let mut r = self.retries();
        r.abandoned.retain(|id, _| ids.contains(id.as_str()));
        r.leases.retain(|id, _| ids.contains(id.as_str()));
        r.tools
            .retain(|(tenant, tool), _| tools.contains(&(tenant.as_str(), tool.as_str())));
    }

    /// Whether the reaper should try `l` now (its tool's admin connection
    /// and the lease itself are not backing off).
    fn due(&self, s: &AppState, l: &Lease, now_ms: u64) -> bool {
        let key = (l.tenant.clone(), l.tool.clone());
        let version = s.tool_secret_versioned(&l.tenant, &l.tool).map(|(v, _)| v);
        let mut r = self.retries();
        if let Some((v, b)) = r.tools.get(&key) {
            if *v == version {
                if !b.ready(now_ms) {
                    return false;
                }
            } else {
                // A new admin connection string: try it at once.
                r.tools.remove(&key);
                tracing::info!(tenant = %l.tenant, tool = %l.tool, "the admin connection string of tool `{}` changed; the lease reaper tries again", l.tool);
            }
        }
        r.leases.get(&l.id).is_none_or(|(_, b)| b.ready(now_ms))
    }
}
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!(
                "{} ({}): {}",
                db.message(),
                db.code().code(),
                d.replace('\n', "; ")
            ),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
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
    s.pg.prune(&leases);
    let now = s.now_secs();
    let mut dropped = 0;
    for l in leases {
        let Some(why) = reap_reason(s, &l, now) else {
            continue;
        };
        if !s.pg.due(s, &l, s.now_ms()) {
            continue;
        }
        match s.pg.drop_role(s, &l).await {
            // The broker that issued it may be creating it right now (its
            // lease commits first, the role comes after; a revocation heard
            // in between, here or from another broker, must not mark it
            // dropped before it exists): a later pass drops it. (One whose
            // creation failed here is abandoned: it goes now.)
            Ok(RoleGone::Absent)
                if (l.created_ms / 1000).saturating_add(ROLE_CREATION_GRACE) > s.now_secs()
                    && !s.pg.retries().abandoned.contains_key(&l.id) => {}
            Ok(_) => {
                if record_drop(s, &l, why).await {
                    dropped += 1;
                    s.pg.dropped(&l);
                }
            }
            Err(e) => s.pg.not_dropped(s, &l, e).await,
        }
    }
    dropped
}

/// What [`Postgres::drop_role`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleGone {
    /// It was there and is gone now.
    Dropped,
    /// There was no such role.
    Absent,
}

/// How long after its lease a role may still be on its way (seconds).
const ROLE_CREATION_GRACE: u64 = 60;

/// Why `l`'s role must go now, if it must.
fn reap_reason(s: &AppState, l: &Lease, now: u64) -> Option<String> {
    if l.expires_at <= now {
        return Some("expired".to_owned());
    }
    if let Some(k) = s.reg().refused(&l.revocation_keys(), l.created_ms / 1000) {
        return Some(format!("revoked: {k}"));
    }
    s.pg.retries().abandoned.get(&l.id).cloned()
}

/// Marks the lease dropped, with its `lease.drop` event.
async fn record_drop(s: &AppState, l: &Lease, why: String) -> bool {
    let ev = lease_event(
        l,
        mandate_core::audit::EventType::LeaseDrop,
        mandate_core::audit::Decision::Ok,
        why,
        s.now_ms(),
    );
    let r = s
        .commit(Entry {
            mutation: Some(Mutation::DropLease {
                id: l.id.clone(),
                dropped_ms: s.now_ms(),
            }),
            events: vec![ev],
        })
        .await;
    if let Err(e) = &r {
        tracing::error!(role = %l.role, "the database role was dropped but its lease could not be marked; retrying: {}", e.description);
    }
    r.is_ok()
}

fn lease_event(
    l: &Lease,
    event_type: mandate_core::audit::EventType,
    decision: mandate_core::audit::Decision,
    reason: String,
    time_ms: u64,
) -> EventBody {
    EventBody {
        time_ms,
        event_type,
        decision,
        reason: Some(reason),
        tenant: Some(l.tenant.clone()),
        agent: Some(l.agent.clone()),
        run: Some(l.run.clone()),
        principal: l.principal.clone(),
        tool: Some(l.tool.clone()),
        credential_id: Some(l.id.clone()),
        actor: Some("broker (lease reaper)".into()),
        details: json!({"role": l.role}),
        ..Default::default()
    }
}

impl Postgres {
    /// After `l`'s role was dropped: its tool reaches the database, and
    /// roles of the same tool that others depended on may go now.
    fn dropped(&self, l: &Lease) {
        let key = (l.tenant.clone(), l.tool.clone());
        let mut r = self.retries();
        r.abandoned.remove(&l.id);
        r.leases.remove(&l.id);
        if r.tools.remove(&key).is_some() {
            tracing::info!(tenant = %l.tenant, tool = %l.tool, "the lease reaper reaches the database of tool `{}` again", l.tool);
        }
        for (k, b) in r.leases.values_mut() {
            if *k == key {
                b.now();
            }
        }
    }

    /// After `l`'s role could not be dropped: backs off (per tool when its
    /// admin connection failed, else per lease) and says so once: a log
    /// line, and for a role that others depend on a `lease.stuck` event.
    async fn not_dropped(&self, s: &AppState, l: &Lease, e: PgError) {
        let now_ms = s.now_ms();
        let key = (l.tenant.clone(), l.tool.clone());
        if e.kind == PgErrorKind::Unavailable {
            let version = s.tool_secret_versioned(&l.tenant, &l.tool).map(|(v, _)| v);
            let (first, wait) = {
                let mut r = self.retries();
                let (v, b) = r.tools.entry(key).or_default();
                *v = version;
                (b.failures() == 0, b.failed(now_ms))
            };
            if first {
                tracing::error!(tenant = %l.tenant, tool = %l.tool, "{}", tool_problem(&l.tenant, &l.tool, &e.message));
            } else {
                tracing::debug!(tenant = %l.tenant, tool = %l.tool, "lease reaper: still no admin connection ({}); next try in {} s", e.message, wait.as_secs());
            }
            return;
        }
        let first = {
            let mut r = self.retries();
            let (_, b) = r
                .leases
                .entry(l.id.clone())
                .or_insert_with(|| (key, Backoff::default()));
            let first = b.failures() == 0;
            b.failed(now_ms);
            first
        };
        if !first {
            tracing::debug!(role = %l.role, "cannot drop database role yet: {}", e.message);
            return;
        }
        if e.kind != PgErrorKind::Dependent {
            tracing::warn!(role = %l.role, "cannot drop database role yet (retrying with backoff, up to {} s): {}", RETRY_MAX.as_secs(), e.message);
            return;
        }
        let reason = stuck_reason(&e.message);
        tracing::warn!(role = %l.role, "{reason}");
        if let Err(c) = s
            .record(vec![lease_event(
                l,
                mandate_core::audit::EventType::LeaseStuck,
                mandate_core::audit::Decision::Error,
                reason,
                s.now_ms(),
            )])
            .await
        {
            tracing::error!(role = %l.role, "could not record that the role is stuck: {}", c.description);
        }
    }
}

/// What the reaper says, once, when a tool's admin connection fails.
fn tool_problem(tenant: &str, tool: &str, why: &str) -> String {
    format!(
        "the lease reaper cannot reach the database of tool `{tool}` (tenant `{tenant}`): {why}; the roles of its expired or revoked credentials wait to be dropped. Fix the admin connection string with `mandate tool set-secret --tenant {tenant} {tool}` (a new one is tried at once); until then it retries with backoff, at most every {} s",
        RETRY_MAX.as_secs()
    )
}

/// What the trail says when a role cannot go because others depend on it.
fn stuck_reason(why: &str) -> String {
    format!(
        "the role owns objects that others depend on ({why}); it stays, unable to log in and member of no role, and is dropped once they are gone: drop them, or reassign them to a role no credential can reach"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes_and_waits() {
        let mut b = Backoff::default();
        assert!(b.ready(0));
        let waits: Vec<u64> = (0..12).map(|_| b.failed(1_000).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert!(!b.ready(1_000 + 299_999));
        assert!(b.ready(1_000 + 300_000));
        for _ in 0..100 {
            b.failed(u64::MAX);
        }
        assert_eq!(b.failures(), 112);
        b.now();
        assert!(b.ready(0));
        assert_eq!(b.failures(), 112, "a retry made due keeps its count");
    }

    #[test]
    fn the_tool_problem_says_what_to_fix() {
        let t = tool_problem("acme", "db", "password authentication failed");
        assert!(
            t.contains("`mandate tool set-secret --tenant acme db`"),
            "{t}"
        );
        assert!(t.contains("password authentication failed"), "{t}");
        assert!(t.contains("300 s"), "{t}");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp_utc(0), "1970-01-01 00:00:00+00");
        assert_eq!(timestamp_utc(951_782_400), "2000-02-29 00:00:00+00");
        assert_eq!(timestamp_utc(1_795_426_245), "2026-11-23 09:30:45+00");
    }
}
