//! The embedded backend: one SQLite file in WAL mode.
//!
//! `synchronous = FULL` makes every commit durable (the WAL is synced at
//! commit); group commit amortises that sync over a batch. The audit table
//! is append-only (triggers refuse UPDATE and DELETE); the hash chain makes
//! any edit that bypasses them detectable.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use mandate_core::audit::{self, ChainVerifier, ChainedEvent, EventBody};

use crate::records::*;
use crate::{AuditFilter, Committed, Entry, Result, Store, StoreError, VerifyReport};

const SCHEMA_V1: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tenants (name TEXT PRIMARY KEY, description TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE principals (
  tenant TEXT NOT NULL REFERENCES tenants(name), id TEXT NOT NULL,
  display_name TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (tenant, id));
CREATE TABLE agents (
  tenant TEXT NOT NULL REFERENCES tenants(name), name TEXT NOT NULL, owner TEXT NOT NULL,
  purpose TEXT NOT NULL, envelope TEXT NOT NULL, spiffe_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, name));
CREATE TABLE tools (
  tenant TEXT NOT NULL REFERENCES tenants(name), name TEXT NOT NULL, audience TEXT NOT NULL,
  actions TEXT NOT NULL, labels TEXT NOT NULL, risk TEXT NOT NULL, max_ttl_secs INTEGER NOT NULL,
  provider TEXT NOT NULL, alg TEXT NOT NULL, created_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, name), UNIQUE (tenant, audience));
CREATE TABLE grants (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name), principal TEXT NOT NULL,
  agent TEXT NOT NULL, capabilities TEXT NOT NULL, task TEXT NOT NULL, expires_at INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  FOREIGN KEY (tenant, principal) REFERENCES principals(tenant, id),
  FOREIGN KEY (tenant, agent) REFERENCES agents(tenant, name));
CREATE TABLE policy_sets (
  tenant TEXT NOT NULL REFERENCES tenants(name), name TEXT NOT NULL, policies TEXT NOT NULL,
  created_ms INTEGER NOT NULL, PRIMARY KEY (tenant, name));
CREATE TABLE runs (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, agent TEXT NOT NULL, principal TEXT, grant_id TEXT,
  task TEXT NOT NULL, capabilities TEXT NOT NULL, jkt TEXT NOT NULL, started_ms INTEGER NOT NULL,
  expires_at INTEGER NOT NULL, ended_ms INTEGER,
  FOREIGN KEY (tenant, agent) REFERENCES agents(tenant, name));
CREATE INDEX runs_by_agent ON runs (tenant, agent, started_ms);
CREATE TABLE keys (
  kid TEXT PRIMARY KEY, alg TEXT NOT NULL, purpose TEXT NOT NULL, sealed BLOB NOT NULL,
  created_ms INTEGER NOT NULL);
CREATE TABLE revocations (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, reason TEXT NOT NULL,
  time_ms INTEGER NOT NULL, until INTEGER NOT NULL);
CREATE TABLE admin_tokens (id TEXT PRIMARY KEY, hash BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, body TEXT NOT NULL,
  time_ms INTEGER NOT NULL, event_type TEXT NOT NULL, decision TEXT NOT NULL,
  tenant TEXT, agent TEXT, run TEXT, principal TEXT, tool TEXT);
CREATE INDEX audit_by_tenant ON audit (tenant, time_ms);
CREATE INDEX audit_by_agent ON audit (agent, time_ms);
CREATE INDEX audit_by_run ON audit (run);
CREATE INDEX audit_by_principal ON audit (principal, time_ms);
CREATE INDEX audit_by_tool ON audit (tool, time_ms);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#;

/// Version 2: provider configuration, sealed tool secrets, database leases.
const SCHEMA_V2: &str = r#"
ALTER TABLE tools ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
CREATE TABLE tool_secrets (
  tenant TEXT NOT NULL, tool TEXT NOT NULL, sealed BLOB NOT NULL, updated_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, tool), FOREIGN KEY (tenant, tool) REFERENCES tools (tenant, name));
CREATE TABLE leases (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, tool TEXT NOT NULL, run TEXT NOT NULL,
  agent TEXT NOT NULL, principal TEXT, grant_id TEXT, role TEXT NOT NULL UNIQUE,
  expires_at INTEGER NOT NULL, created_ms INTEGER NOT NULL, dropped_ms INTEGER);
CREATE INDEX leases_live ON leases (dropped_ms) WHERE dropped_ms IS NULL;
ALTER TABLE runs ADD COLUMN parent TEXT;
CREATE INDEX runs_by_parent ON runs (parent) WHERE parent IS NOT NULL;
CREATE TABLE join_tokens (
  id TEXT PRIMARY KEY, hash BLOB NOT NULL, tenant TEXT NOT NULL, agent TEXT NOT NULL,
  principal TEXT, grant_id TEXT, expires_at INTEGER NOT NULL, created_ms INTEGER NOT NULL,
  used_ms INTEGER);
"#;

/// Version 3: use counts of attenuated mandates' blocks.
const SCHEMA_V3: &str = r#"
CREATE TABLE block_uses (block TEXT PRIMARY KEY, uses INTEGER NOT NULL, until INTEGER NOT NULL);
"#;

/// Version 4: principals' groups, approver credentials, approvals, suspended runs.
const SCHEMA_V4: &str = r#"
ALTER TABLE principals ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
CREATE TABLE approver_tokens (
  id TEXT PRIMARY KEY, hash BLOB NOT NULL, tenant TEXT NOT NULL, principal TEXT NOT NULL,
  created_ms INTEGER NOT NULL, FOREIGN KEY (tenant, principal) REFERENCES principals(tenant, id));
CREATE TABLE approvals (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, run TEXT NOT NULL, request_digest TEXT NOT NULL,
  status TEXT NOT NULL, expires_at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX approvals_by_request ON approvals (request_digest, status);
CREATE INDEX approvals_by_tenant ON approvals (tenant, status);
ALTER TABLE runs ADD COLUMN suspended_ms INTEGER;
ALTER TABLE runs ADD COLUMN suspended_reason TEXT;
"#;

/// Version 5: the webhook outbox.
const SCHEMA_V5: &str = r#"
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, created_ms INTEGER NOT NULL);
"#;

/// Version 6: a lease keeps every revocation id of its credential (with the
/// ancestors of a delegated run); older leases keep `[]` and are revoked by
/// their own columns, as before.
const SCHEMA_V6: &str = r#"
ALTER TABLE leases ADD COLUMN revoked_by TEXT NOT NULL DEFAULT '[]';
"#;

/// v7 (issue 10): revocations name their tenant (a tenant's feed credential
/// reads only its own); feed credentials may be limited to a tenant and
/// expire; approver credentials expire (those made before: 30 days after
/// they were made).
const SCHEMA_V7: &str = r#"
ALTER TABLE revocations ADD COLUMN tenant TEXT;
ALTER TABLE admin_tokens ADD COLUMN tenant TEXT;
ALTER TABLE admin_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approver_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
UPDATE approver_tokens SET expires_at = created_ms / 1000 + 2592000;
"#;

/// The schema version this code writes.
const SCHEMA_VERSION: i64 = 7;

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    head: Mutex<(u64, String)>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(c)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves SQLite's own state consistent
    // (the transaction rolls back on drop), so the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A text column parsed into a kind (an enum), or a corruption error naming it.
fn parse_col<T>(
    r: &rusqlite::Row<'_>,
    i: usize,
    what: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!(
                "unknown {what} `{}`",
                s.chars().take(32).collect::<String>()
            )
            .into(),
        )
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let writer = open_conn(path)?;
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version} is newer than this broker understands ({SCHEMA_VERSION})"
            )));
        }
        if version < 1 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
            ))?;
        }
        if version < 2 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
            ))?;
        }
        if version < 3 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V3} PRAGMA user_version = 3; COMMIT;"
            ))?;
        }
        if version < 4 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V4} PRAGMA user_version = 4; COMMIT;"
            ))?;
        }
        if version < 5 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V5} PRAGMA user_version = 5; COMMIT;"
            ))?;
        }
        if version < 6 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V6} PRAGMA user_version = 6; COMMIT;"
            ))?;
        }
        if version < 7 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V7} PRAGMA user_version = 7; COMMIT;"
            ))?;
        }
        let head = writer
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .optional()?
            .unwrap_or((0, audit::GENESIS.to_owned()));
        let reader = open_conn(path)?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            head: Mutex::new(head),
        })
    }
}

fn apply(tx: &Connection, m: &Mutation) -> Result<Option<u64>> {
    match m {
        Mutation::CreateTenant(t) => {
            tx.execute(
                "INSERT INTO tenants (name, description, created_ms) VALUES (?1, ?2, ?3)",
                params![t.name, t.description, t.created_ms as i64],
            )?;
        }
        Mutation::CreatePrincipal(p) => {
            tx.execute(
                "INSERT INTO principals (tenant, id, display_name, created_ms, groups) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![p.tenant, p.id, p.display_name, p.created_ms as i64, json(&p.groups)],
            )?;
        }
        Mutation::CreateAgent(a) => {
            tx.execute(
                "INSERT INTO agents (tenant, name, owner, purpose, envelope, spiffe_id, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![a.tenant, a.name, a.owner, a.purpose, json(&a.envelope), a.spiffe_id, a.created_ms as i64],
            )?;
        }
        Mutation::CreateTool(t) => {
            tx.execute(
                "INSERT INTO tools (tenant, name, audience, actions, labels, risk, max_ttl_secs, provider, alg, created_ms, config) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![t.tenant, t.name, t.audience, json(&t.actions), json(&t.labels), t.risk, t.max_ttl_secs as i64, t.provider.as_str(), t.alg.as_str(), t.created_ms as i64,
                    json(&ToolConfig { proxy: t.proxy.clone(), postgres: t.postgres.clone(), env: t.env.clone() })],
            )?;
        }
        Mutation::CreateGrant(g) => {
            tx.execute(
                "INSERT INTO grants (id, tenant, principal, agent, capabilities, task, expires_at, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![g.id, g.tenant, g.principal, g.agent, json(&g.capabilities), g.task, g.expires_at as i64, g.created_ms as i64],
            )?;
        }
        Mutation::PutPolicySet(p) => {
            tx.execute(
                "INSERT INTO policy_sets (tenant, name, policies, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, name) DO UPDATE SET policies = excluded.policies, created_ms = excluded.created_ms",
                params![p.tenant, p.name, json(&p.policies), p.created_ms as i64],
            )?;
        }
        Mutation::DeletePolicySet { tenant, name } => {
            let n = tx.execute(
                "DELETE FROM policy_sets WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("policy set `{name}`")));
            }
        }
        Mutation::StartRun(r) => {
            tx.execute(
                "INSERT INTO runs (id, tenant, agent, principal, grant_id, task, capabilities, jkt, started_ms, expires_at, ended_ms, parent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![r.id, r.tenant, r.agent, r.principal, r.grant, r.task, json(&r.capabilities), r.jkt, r.started_ms as i64, r.expires_at as i64, r.ended_ms.map(|x| x as i64), r.parent],
            )?;
        }
        Mutation::EndRun {
            id,
            ended_ms,
            revocation,
        } => {
            let n = tx.execute(
                "UPDATE runs SET ended_ms = ?2 WHERE id = ?1 AND ended_ms IS NULL",
                params![id, *ended_ms as i64],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("active run `{id}`")));
            }
            return apply(tx, &Mutation::Revoke(revocation.clone()));
        }
        Mutation::Revoke(r) => {
            tx.execute(
                "INSERT INTO revocations (key, reason, time_ms, until, tenant) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.key, r.reason, r.time_ms as i64, r.until as i64, r.tenant],
            )?;
            return Ok(Some(tx.last_insert_rowid() as u64));
        }
        Mutation::PutKey(k) => {
            tx.execute(
                "INSERT INTO keys (kid, alg, purpose, sealed, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.kid, k.alg, k.purpose, k.sealed, k.created_ms as i64],
            )?;
        }
        Mutation::PutToolSecret(t) => {
            tx.execute(
                "INSERT INTO tool_secrets (tenant, tool, sealed, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, tool) DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms",
                params![t.tenant, t.tool, t.sealed, t.updated_ms as i64],
            )?;
        }
        Mutation::CreateLease(l) => {
            tx.execute(
                "INSERT INTO leases (id, tenant, tool, run, agent, principal, grant_id, role, expires_at, created_ms, dropped_ms, revoked_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, ?11)",
                params![l.id, l.tenant, l.tool, l.run, l.agent, l.principal, l.grant, l.role, l.expires_at as i64, l.created_ms as i64, json(&l.revoked_by)],
            )?;
        }
        Mutation::CreateJoinToken(j) => {
            tx.execute(
                "INSERT INTO join_tokens (id, hash, tenant, agent, principal, grant_id, expires_at, created_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
                params![j.id, j.hash, j.tenant, j.agent, j.principal, j.grant, j.expires_at as i64, j.created_ms as i64],
            )?;
        }
        Mutation::UseJoinToken { id, used_ms } => {
            let n = tx.execute(
                "UPDATE join_tokens SET used_ms = ?2 WHERE id = ?1 AND used_ms IS NULL",
                params![id, *used_ms as i64],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("unused join token `{id}`")));
            }
        }
        Mutation::DropLease { id, dropped_ms } => {
            let n = tx.execute(
                "UPDATE leases SET dropped_ms = ?2 WHERE id = ?1 AND dropped_ms IS NULL",
                params![id, *dropped_ms as i64],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("live lease `{id}`")));
            }
        }
        Mutation::PutAdminToken(t) => {
            tx.execute(
                "INSERT INTO admin_tokens (id, hash, created_ms, tenant, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.hash, t.created_ms as i64, t.tenant, t.expires_at as i64],
            )?;
        }
        Mutation::Enqueue { body } => {
            tx.execute(
                "INSERT INTO outbox (body, created_ms) VALUES (?1, ?2)",
                params![
                    body,
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0)
                ],
            )?;
        }
        Mutation::Dequeue { id } => {
            tx.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
        }
        Mutation::PutApproverToken(t) => {
            tx.execute(
                "INSERT INTO approver_tokens (id, hash, tenant, principal, created_ms, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.id, t.hash, t.tenant, t.principal, t.created_ms as i64, t.expires_at as i64],
            )?;
        }
        Mutation::CreateApproval(a) => {
            tx.execute(
                "INSERT INTO approvals (id, tenant, run, request_digest, status, expires_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![a.id, a.tenant, a.run, a.request_digest, a.status.as_str(), a.expires_at as i64, json(a)],
            )?;
        }
        Mutation::DecideApproval {
            id,
            status,
            by,
            comment,
            decided_ms,
            now,
        } => {
            let body: Option<String> = tx
                .query_row(
                    "SELECT body FROM approvals WHERE id = ?1 AND status = 'pending' AND expires_at >= ?2",
                    params![id, *now as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let mut a: Approval = from_json(&body.ok_or_else(|| {
                StoreError::NotFound(format!("pending, unexpired approval `{id}`"))
            })?)?;
            a.status = *status;
            a.decided_by = Some(by.clone());
            a.decided_ms = Some(*decided_ms);
            a.comment = comment.clone();
            tx.execute(
                "UPDATE approvals SET status = ?2, body = ?3 WHERE id = ?1",
                params![id, status.as_str(), json(&a)],
            )?;
        }
        Mutation::UseApproval { id } => {
            let body: Option<String> = tx
                .query_row(
                    "SELECT body FROM approvals WHERE id = ?1 AND status = 'approved'",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            let mut a: Approval = from_json(
                &body.ok_or_else(|| StoreError::Conflict(format!("use of approval `{id}`")))?,
            )?;
            a.status = mandate_core::approval::ApprovalStatus::Used;
            tx.execute(
                "UPDATE approvals SET status = 'used', body = ?2 WHERE id = ?1",
                params![id, json(&a)],
            )?;
        }
        Mutation::SuspendRun { id, ms, reason } => {
            let n = tx.execute(
                "UPDATE runs SET suspended_ms = ?2, suspended_reason = ?3 WHERE id = ?1 AND ended_ms IS NULL",
                params![id, *ms as i64, reason],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("running run `{id}`")));
            }
        }
        Mutation::ResumeRun { id } => {
            let n = tx.execute(
                "UPDATE runs SET suspended_ms = NULL, suspended_reason = NULL WHERE id = ?1 AND suspended_ms IS NOT NULL",
                params![id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("suspended run `{id}`")));
            }
        }
        Mutation::Batch(all) => {
            for m in all {
                apply(tx, m)?;
            }
        }
        Mutation::CountUses { blocks, until } => {
            for (block, limit) in blocks {
                let n = tx.execute(
                    "INSERT INTO block_uses (block, uses, until) VALUES (?1, 1, ?3)
                     ON CONFLICT (block) DO UPDATE SET uses = uses + 1 WHERE uses < ?2",
                    params![block, *limit as i64, *until as i64],
                )?;
                if n == 0 || *limit == 0 {
                    return Err(StoreError::Conflict(format!(
                        "use limit ({limit}) of attenuation block {block}: reached"
                    )));
                }
            }
        }
        Mutation::PutMeta { key, value } => {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
        }
    }
    Ok(None)
}

/// The audit table's columns, in [`audit::AuditColumn::ALL`] order.
fn audit_columns() -> String {
    audit::AuditColumn::ALL
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_sql(c: audit::Cell) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match c {
        audit::Cell::Null | audit::Cell::Other(_) => Value::Null,
        audit::Cell::Integer(n) => Value::Integer(n),
        audit::Cell::Text(t) => Value::Text(t),
    }
}

fn from_sql(v: rusqlite::types::ValueRef<'_>) -> audit::Cell {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => audit::Cell::Null,
        ValueRef::Integer(n) => audit::Cell::Integer(n),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(t) => audit::Cell::Text(t.to_owned()),
            Err(_) => audit::Cell::Other("text that is not UTF-8"),
        },
        ValueRef::Real(_) => audit::Cell::Other("floating-point number"),
        ValueRef::Blob(_) => audit::Cell::Other("blob"),
    }
}

fn append_event(
    tx: &Connection,
    head: &mut (u64, String),
    body: EventBody,
) -> Result<ChainedEvent> {
    let json = audit::canonical(&body);
    let seq = head.0 + 1;
    let hash = audit::chain_hash(&head.1, seq, &json);
    let text = String::from_utf8(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let ev = ChainedEvent {
        seq,
        prev_hash: head.1.clone(),
        hash,
        body,
    };
    let row = audit::stored_row(&ev, &text);
    tx.prepare_cached(&format!(
        "INSERT INTO audit ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        audit_columns()
    ))?
    .execute(rusqlite::params_from_iter(row.into_iter().map(to_sql)))?;
    head.1 = ev.hash.clone();
    head.0 = seq;
    Ok(ev)
}

fn row_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainedEvent> {
    let body: String = r.get(3)?;
    Ok(ChainedEvent {
        seq: r.get::<_, i64>(0)? as u64,
        prev_hash: r.get(1)?,
        hash: r.get(2)?,
        body: from_json(&body)?,
    })
}

fn row_revocation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Revocation> {
    Ok(Revocation {
        seq: r.get::<_, i64>(0)? as u64,
        key: r.get(1)?,
        reason: r.get(2)?,
        time_ms: r.get::<_, i64>(3)? as u64,
        until: r.get::<_, i64>(4)? as u64,
        tenant: r.get(5)?,
    })
}

fn row_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        id: r.get(0)?,
        tenant: r.get(1)?,
        agent: r.get(2)?,
        principal: r.get(3)?,
        grant: r.get(4)?,
        task: r.get(5)?,
        capabilities: from_json(&r.get::<_, String>(6)?)?,
        jkt: r.get(7)?,
        started_ms: r.get::<_, i64>(8)? as u64,
        expires_at: r.get::<_, i64>(9)? as u64,
        ended_ms: r.get::<_, Option<i64>>(10)?.map(|x| x as u64),
        parent: r.get(11)?,
    })
}

const RUN_COLS: &str = "id, tenant, agent, principal, grant_id, task, capabilities, jkt, started_ms, expires_at, ended_ms, parent";

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot> {
        let c = lock(&self.reader);
        let mut s = Snapshot {
            audit_head: lock(&self.head).clone(),
            ..Default::default()
        };
        s.tenants = c
            .prepare("SELECT name, description, created_ms FROM tenants")?
            .query_map([], |r| {
                Ok(Tenant {
                    name: r.get(0)?,
                    description: r.get(1)?,
                    created_ms: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.principals = c
            .prepare("SELECT tenant, id, display_name, created_ms, groups FROM principals")?
            .query_map([], |r| {
                Ok(Principal {
                    tenant: r.get(0)?,
                    id: r.get(1)?,
                    display_name: r.get(2)?,
                    created_ms: r.get::<_, i64>(3)? as u64,
                    groups: from_json(&r.get::<_, String>(4)?)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.agents = c
            .prepare(
                "SELECT tenant, name, owner, purpose, envelope, spiffe_id, created_ms FROM agents",
            )?
            .query_map([], |r| {
                Ok(Agent {
                    tenant: r.get(0)?,
                    name: r.get(1)?,
                    owner: r.get(2)?,
                    purpose: r.get(3)?,
                    envelope: from_json(&r.get::<_, String>(4)?)?,
                    spiffe_id: r.get(5)?,
                    created_ms: r.get::<_, i64>(6)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.tools = c
            .prepare("SELECT tenant, name, audience, actions, labels, risk, max_ttl_secs, provider, alg, created_ms, config FROM tools")?
            .query_map([], |r| {
                let config: ToolConfig = from_json(&r.get::<_, String>(10)?)?;
                Ok(Tool {
                    tenant: r.get(0)?, name: r.get(1)?, audience: r.get(2)?,
                    actions: from_json(&r.get::<_, String>(3)?)?, labels: from_json(&r.get::<_, String>(4)?)?,
                    risk: r.get(5)?, max_ttl_secs: r.get::<_, i64>(6)? as u64, provider: parse_col(r, 7, "provider", mandate_core::tooling::ProviderKind::parse)?,
                    alg: parse_col(r, 8, "alg", |a| mandate_core::jose::Alg::parse("tool", a).ok())?, created_ms: r.get::<_, i64>(9)? as u64,
                    proxy: config.proxy, postgres: config.postgres, env: config.env,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.grants = c
            .prepare("SELECT id, tenant, principal, agent, capabilities, task, expires_at, created_ms FROM grants")?
            .query_map([], |r| {
                Ok(Grant {
                    id: r.get(0)?, tenant: r.get(1)?, principal: r.get(2)?, agent: r.get(3)?,
                    capabilities: from_json(&r.get::<_, String>(4)?)?, task: r.get(5)?,
                    expires_at: r.get::<_, i64>(6)? as u64, created_ms: r.get::<_, i64>(7)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.policy_sets = c
            .prepare("SELECT tenant, name, policies, created_ms FROM policy_sets")?
            .query_map([], |r| {
                Ok(PolicySetRecord {
                    tenant: r.get(0)?,
                    name: r.get(1)?,
                    policies: from_json(&r.get::<_, String>(2)?)?,
                    created_ms: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.revocations = c
            .prepare(
                "SELECT seq, key, reason, time_ms, until, tenant FROM revocations ORDER BY seq",
            )?
            .query_map([], row_revocation)?
            .collect::<rusqlite::Result<_>>()?;
        s.keys = c
            .prepare("SELECT kid, alg, purpose, sealed, created_ms FROM keys ORDER BY created_ms")?
            .query_map([], |r| {
                Ok(KeyRecord {
                    kid: r.get(0)?,
                    alg: r.get(1)?,
                    purpose: r.get(2)?,
                    sealed: r.get(3)?,
                    created_ms: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.tool_secrets = c
            .prepare("SELECT tenant, tool, sealed, updated_ms FROM tool_secrets")?
            .query_map([], |r| {
                Ok(ToolSecret {
                    tenant: r.get(0)?,
                    tool: r.get(1)?,
                    sealed: r.get(2)?,
                    updated_ms: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.approver_tokens = c
            .prepare(
                "SELECT id, hash, tenant, principal, created_ms, expires_at FROM approver_tokens",
            )?
            .query_map([], |r| {
                Ok(ApproverToken {
                    id: r.get(0)?,
                    hash: r.get(1)?,
                    tenant: r.get(2)?,
                    principal: r.get(3)?,
                    created_ms: r.get::<_, i64>(4)? as u64,
                    expires_at: r.get::<_, i64>(5)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.suspended_runs = c
            .prepare("SELECT id, COALESCE(suspended_reason, '') FROM runs WHERE suspended_ms IS NOT NULL AND ended_ms IS NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        s.admin_tokens = c
            .prepare("SELECT id, hash, created_ms, tenant, expires_at FROM admin_tokens")?
            .query_map([], |r| {
                Ok(AdminToken {
                    id: r.get(0)?,
                    hash: r.get(1)?,
                    created_ms: r.get::<_, i64>(2)? as u64,
                    tenant: r.get(3)?,
                    expires_at: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.meta = c
            .prepare("SELECT key, value FROM meta")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(s)
    }

    fn commit(&self, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>> {
        let mut c = lock(&self.writer);
        let mut head_guard = lock(&self.head);
        let mut head = head_guard.clone();
        let mut tx = c.transaction()?;
        let mut results = Vec::with_capacity(batch.len());
        for entry in batch {
            let saved_head = head.clone();
            let mut sp = tx.savepoint()?;
            let outcome = (|| -> Result<Committed> {
                let revocation_seq = match &entry.mutation {
                    Some(m) => apply(&sp, m)?,
                    None => None,
                };
                let mut events = Vec::with_capacity(entry.events.len());
                for body in entry.events {
                    events.push(append_event(&sp, &mut head, body)?);
                }
                Ok(Committed {
                    events,
                    revocation_seq,
                })
            })();
            match outcome {
                Ok(done) => {
                    sp.commit()?;
                    results.push(Ok(done));
                }
                Err(e) => {
                    sp.rollback()?;
                    drop(sp);
                    head = saved_head;
                    results.push(Err(e));
                }
            }
        }
        tx.commit()?;
        *head_guard = head;
        Ok(results)
    }

    fn audit_query(&self, f: &AuditFilter) -> Result<Vec<ChainedEvent>> {
        let c = lock(&self.reader);
        let mut sql = String::from("SELECT seq, prev_hash, hash, body FROM audit WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut eq = |col: &str, v: &Option<String>, sql: &mut String| {
            if let Some(v) = v {
                args.push(v.clone().into());
                sql.push_str(&format!(" AND {col} = ?{}", args.len()));
            }
        };
        eq("tenant", &f.tenant, &mut sql);
        eq("agent", &f.agent, &mut sql);
        eq("run", &f.run, &mut sql);
        eq("principal", &f.principal, &mut sql);
        eq("tool", &f.tool, &mut sql);
        eq("decision", &f.decision, &mut sql);
        eq("event_type", &f.event_type, &mut sql);
        if let Some(t) = f.since_ms {
            args.push((t as i64).into());
            sql.push_str(&format!(" AND time_ms >= ?{}", args.len()));
        }
        let limit = f.limit.unwrap_or(1000).min(100_000);
        if let Some(s) = f.after_seq {
            args.push((s as i64).into());
            sql.push_str(&format!(
                " AND seq > ?{} ORDER BY seq ASC LIMIT {limit}",
                args.len()
            ));
        } else {
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT {limit}"));
        }
        let mut out: Vec<ChainedEvent> = c
            .prepare(&sql)?
            .query_map(rusqlite::params_from_iter(args), row_event)?
            .collect::<rusqlite::Result<_>>()?;
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    fn audit_verify(&self, anchors: Vec<audit::Anchor>) -> Result<VerifyReport> {
        let c = lock(&self.reader);
        let mut stmt = c.prepare(&format!(
            "SELECT {} FROM audit ORDER BY seq ASC",
            audit_columns()
        ))?;
        let mut rows = stmt.query([])?;
        let mut v = ChainVerifier::anchored(anchors);
        let mut outcome = Ok(());
        while let Some(r) = rows.next()? {
            let mut row: audit::Row = Default::default();
            for (i, cell) in row.iter_mut().enumerate() {
                *cell = from_sql(r.get_ref(i)?);
            }
            outcome = v.next(&row);
            if outcome.is_err() {
                break;
            }
        }
        let outcome = outcome.and_then(|()| v.finish());
        let (seq, hash) = v.head();
        Ok(VerifyReport {
            verified: match &outcome {
                Ok(n) => *n,
                Err(b) => b.seq.saturating_sub(1),
            },
            head: (seq, hash.to_owned()),
            first_break: outcome.err(),
        })
    }

    fn list_runs(&self, tenant: Option<&str>, agent: Option<&str>, limit: u32) -> Result<Vec<Run>> {
        let c = lock(&self.reader);
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR agent = ?2) ORDER BY started_ms DESC LIMIT ?3"
        );
        let out = c
            .prepare(&sql)?
            .query_map(params![tenant, agent, limit as i64], row_run)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }

    fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Revocation>> {
        let c = lock(&self.reader);
        let out = c
            .prepare_cached("SELECT seq, key, reason, time_ms, until, tenant FROM revocations WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
            .query_map(params![after as i64, limit as i64], row_revocation)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }

    fn count_children(&self, parent: &str) -> Result<u64> {
        let c = lock(&self.reader);
        let n: i64 = c.query_row(
            "SELECT count(*) FROM runs WHERE parent = ?1",
            params![parent],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn live_leases(&self) -> Result<Vec<Lease>> {
        let c = lock(&self.reader);
        let v = c
            .prepare("SELECT id, tenant, tool, run, agent, principal, grant_id, role, expires_at, created_ms, dropped_ms, revoked_by FROM leases WHERE dropped_ms IS NULL ORDER BY created_ms")?
            .query_map([], |r| {
                Ok(Lease {
                    id: r.get(0)?, tenant: r.get(1)?, tool: r.get(2)?, run: r.get(3)?, agent: r.get(4)?,
                    principal: r.get(5)?, grant: r.get(6)?, role: r.get(7)?,
                    expires_at: r.get::<_, i64>(8)? as u64, created_ms: r.get::<_, i64>(9)? as u64,
                    dropped_ms: r.get::<_, Option<i64>>(10)?.map(|x| x as u64),
                    revoked_by: from_json(&r.get::<_, String>(11)?)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    fn join_token(&self, id: &str) -> Result<Option<JoinToken>> {
        let c = lock(&self.reader);
        Ok(c.query_row(
            "SELECT id, hash, tenant, agent, principal, grant_id, expires_at, created_ms, used_ms FROM join_tokens WHERE id = ?1",
            params![id],
            |r| {
                Ok(JoinToken {
                    id: r.get(0)?, hash: r.get(1)?, tenant: r.get(2)?, agent: r.get(3)?,
                    principal: r.get(4)?, grant: r.get(5)?, expires_at: r.get::<_, i64>(6)? as u64,
                    created_ms: r.get::<_, i64>(7)? as u64, used_ms: r.get::<_, Option<i64>>(8)?.map(|x| x as u64),
                })
            },
        )
        .optional()?)
    }

    fn outbox(&self, limit: u32) -> Result<Vec<(i64, String)>> {
        let c = lock(&self.reader);
        let mut q = c.prepare("SELECT id, body FROM outbox ORDER BY id ASC LIMIT ?1")?;
        let rows = q
            .query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn agent_tools_used(&self) -> Result<Vec<(String, String, String)>> {
        let c = lock(&self.reader);
        let mut q = c.prepare(
            "SELECT DISTINCT tenant, agent, tool FROM audit WHERE event_type = 'token.exchange' AND decision = 'allow' AND tenant IS NOT NULL AND agent IS NOT NULL AND tool IS NOT NULL",
        )?;
        let rows = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let c = lock(&self.reader);
        let body: Option<String> = c
            .query_row(
                "SELECT body FROM approvals WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match body {
            Some(b) => Some(from_json(&b)?),
            None => None,
        })
    }

    fn pending_approvals_for_run(&self, run: &str, now: u64) -> Result<usize> {
        let c = lock(&self.reader);
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM approvals WHERE run = ?1 AND status = 'pending' AND expires_at >= ?2",
            params![run, now as i64],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as usize)
    }

    fn approvals_for_request(&self, request_digest: &str) -> Result<Vec<Approval>> {
        let c = lock(&self.reader);
        let mut q = c.prepare(
            "SELECT body FROM approvals WHERE request_digest = ?1 AND status IN ('pending', 'approved', 'denied') ORDER BY rowid DESC LIMIT 64",
        )?;
        let rows = q
            .query_map(params![request_digest], |r| r.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows
            .iter()
            .map(|b| from_json(b))
            .collect::<rusqlite::Result<Vec<Approval>>>()?)
    }

    fn list_approvals(
        &self,
        tenant: Option<&str>,
        status: Option<mandate_core::approval::ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>> {
        let status = status.map(|s| s.as_str());
        let c = lock(&self.reader);
        let mut q = c.prepare(
            "SELECT body FROM approvals WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR status = ?2) ORDER BY rowid DESC LIMIT ?3",
        )?;
        let rows = q
            .query_map(params![tenant, status, limit as i64], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.iter().map(|b| Ok(from_json(b)?)).collect()
    }

    fn block_uses(&self, blocks: &[String]) -> Result<Vec<u64>> {
        let c = lock(&self.reader);
        let mut q = c.prepare_cached("SELECT uses FROM block_uses WHERE block = ?1")?;
        blocks
            .iter()
            .map(|b| {
                Ok(q.query_row(params![b], |r| r.get::<_, i64>(0))
                    .optional()?
                    .unwrap_or(0) as u64)
            })
            .collect()
    }

    fn get_run(&self, id: &str) -> Result<Option<Run>> {
        let c = lock(&self.reader);
        Ok(c.query_row(
            &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
            params![id],
            row_run,
        )
        .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_data() {
        let path = tmp();
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
            ))
            .unwrap();
            c.execute_batch(
                "INSERT INTO tenants VALUES ('acme', '', 1);
                 INSERT INTO agents VALUES ('acme', 'bot', 'ops', '', '[]', 'spiffe://x', 1);
                 INSERT INTO tools (tenant, name, audience, actions, labels, risk, max_ttl_secs, provider, alg, created_ms)
                   VALUES ('acme', 'crm', 'https://crm', '[\"read\"]', '[]', 'low', 300, 'jwt', 'EdDSA', 1);
                 INSERT INTO runs (id, tenant, agent, principal, grant_id, task, capabilities, jkt, started_ms, expires_at, ended_ms)
                   VALUES ('run_1', 'acme', 'bot', NULL, NULL, 't', '[]', 'k', 1, 2, NULL);",
            )
            .unwrap();
        }
        let st = SqliteStore::open(&path).unwrap();
        let snap = st.load().unwrap();
        assert_eq!(snap.tools.len(), 1);
        assert!(snap.tools[0].proxy.is_none() && snap.tools[0].env.is_empty());
        let run = st.get_run("run_1").unwrap().unwrap();
        assert_eq!(run.parent, None);
        assert_eq!(st.count_children("run_1").unwrap(), 0);
        assert!(st.live_leases().unwrap().is_empty());
        drop(st);
        // Opening again is a no-op.
        let st = SqliteStore::open(&path).unwrap();
        assert_eq!(st.load().unwrap().tools.len(), 1);
    }

    #[test]
    fn a_version_5_lease_is_revoked_by_its_own_ids_after_the_migration() {
        let path = tmp();
        {
            let c = Connection::open(&path).unwrap();
            for (v, sql) in [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5]
                .iter()
                .enumerate()
            {
                c.execute_batch(&format!(
                    "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
                    v + 1
                ))
                .unwrap();
            }
            c.execute_batch(
                "INSERT INTO leases (id, tenant, tool, run, agent, principal, grant_id, role, expires_at, created_ms, dropped_ms)
                   VALUES ('cred_1', 'acme', 'db', 'run_1', 'bot', 'alice', 'grt_1', 'mandate_1_abcdef', 9, 1, NULL);",
            )
            .unwrap();
        }
        let st = SqliteStore::open(&path).unwrap();
        let leases = st.live_leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert!(leases[0].revoked_by.is_empty());
        assert_eq!(
            leases[0].revocation_keys(),
            [
                "cred:cred_1",
                "run:run_1",
                "agent:acme/bot",
                "principal:acme/alice",
                "grant:grt_1",
                "tenant:acme"
            ]
        );
    }

    #[test]
    fn a_lease_keeps_its_credentials_revocation_ids() {
        let st = SqliteStore::open(&tmp()).unwrap();
        let lease = Lease {
            id: "cred_2".into(),
            tenant: "acme".into(),
            tool: "db".into(),
            run: "run_child".into(),
            agent: "kid".into(),
            principal: None,
            grant: None,
            role: "mandate_child_abcdef".into(),
            expires_at: 9,
            created_ms: 1,
            dropped_ms: None,
            revoked_by: vec![
                "cred:cred_2".into(),
                "run:run_child".into(),
                "run:run_parent".into(),
                "agent:acme/parent".into(),
            ],
        };
        st.commit(vec![Entry {
            mutation: Some(Mutation::CreateLease(lease.clone())),
            events: vec![ev("token.exchange", "acme")],
        }])
        .unwrap()
        .remove(0)
        .unwrap();
        let got = st.live_leases().unwrap();
        assert_eq!(got, [lease]);
        let keys = got[0].revocation_keys();
        for k in ["run:run_parent", "agent:acme/parent", "agent:acme/kid"] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert_eq!(
            keys.iter().filter(|k| *k == "cred:cred_2").count(),
            1,
            "{keys:?}"
        );
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mandate-store-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d.join("mandate.db")
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn ev(t: &str, tenant: &str) -> EventBody {
        EventBody {
            time_ms: 5,
            event_type: t.into(),
            decision: "ok".into(),
            tenant: Some(tenant.into()),
            ..Default::default()
        }
    }

    fn tenant(name: &str) -> Mutation {
        Mutation::CreateTenant(Tenant {
            name: name.into(),
            description: String::new(),
            created_ms: 1,
        })
    }

    #[test]
    fn failed_entry_leaves_neither_change_nor_event() {
        let p = tmp();
        let s = SqliteStore::open(&p).unwrap();
        let r = s
            .commit(vec![
                Entry {
                    mutation: Some(tenant("a")),
                    events: vec![ev("tenant.create", "a")],
                },
                Entry {
                    mutation: Some(tenant("a")),
                    events: vec![ev("tenant.create", "a")],
                },
                Entry {
                    mutation: None,
                    events: vec![ev("note", "a")],
                },
            ])
            .unwrap();
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(StoreError::Conflict(_))));
        assert_eq!(r[2].as_ref().unwrap().events[0].seq, 2);
        let snap = s.load().unwrap();
        assert_eq!(snap.tenants.len(), 1);
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!((rep.verified, rep.first_break), (2, None));
        assert_eq!(rep.head, *lock(&s.head));
    }

    #[test]
    fn chain_survives_reopen_and_edits_are_named() {
        let p = tmp();
        {
            let s = SqliteStore::open(&p).unwrap();
            s.commit(vec![Entry {
                mutation: Some(tenant("a")),
                events: vec![ev("x", "a"), ev("y", "a")],
            }])
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        s.commit(vec![Entry {
            mutation: None,
            events: vec![ev("z", "a")],
        }])
        .unwrap();
        assert_eq!(s.audit_verify(vec![]).unwrap().verified, 3);
        assert_eq!(
            s.audit_query(&AuditFilter {
                tenant: Some("a".into()),
                ..Default::default()
            })
            .unwrap()
            .len(),
            3
        );
        // The table refuses edits...
        let c = Connection::open(&p).unwrap();
        assert!(
            c.execute("UPDATE audit SET body = 'x' WHERE seq = 2", [])
                .is_err()
        );
        // ...and an edit that gets around the trigger is caught by the chain.
        c.execute_batch("DROP TRIGGER audit_no_update").unwrap();
        c.execute(
            "UPDATE audit SET body = replace(body, '\"y\"', '\"w\"') WHERE seq = 2",
            [],
        )
        .unwrap();
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!(rep.verified, 1);
        let b = rep.first_break.unwrap();
        assert_eq!((b.seq, b.column), (2, Some(audit::AuditColumn::Body)));
    }
}
