//! The schema, one version at a time: a database is migrated forward in
//! order, each step in its own transaction, under a transaction-scoped
//! advisory lock (two brokers starting together do not both migrate).
//!
//! Version 1 has the tables and columns of the SQLite schema's version 8,
//! in PostgreSQL's types, plus `approvals.ord` (SQLite's implicit rowid:
//! approvals are listed newest first by it).

use super::pool::Session;
use crate::{Result, StoreError};

/// Version 1: everything SQLite's schema has at its version 8.
///
/// The audit indexes are `(col, seq)`: `WHERE col = $1 ORDER BY seq DESC
/// LIMIT n` reads n entries. Decisions and event types are indexed only
/// where they are rare (not `allow`, not `token.exchange`), as in SQLite.
/// `audit_time_steps` keeps the sequence numbers after which the trail's
/// times went back (see the SQLite backend: "since" is a sequence range
/// after the last step).
const SCHEMA_V1: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tenants (name TEXT PRIMARY KEY, description TEXT NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE principals (
  tenant TEXT NOT NULL REFERENCES tenants(name), id TEXT NOT NULL,
  display_name TEXT NOT NULL, created_ms BIGINT NOT NULL, groups TEXT NOT NULL DEFAULT '[]',
  PRIMARY KEY (tenant, id));
CREATE TABLE agents (
  tenant TEXT NOT NULL REFERENCES tenants(name), name TEXT NOT NULL, owner TEXT NOT NULL,
  purpose TEXT NOT NULL, envelope TEXT NOT NULL, spiffe_id TEXT NOT NULL, created_ms BIGINT NOT NULL,
  PRIMARY KEY (tenant, name));
CREATE TABLE tools (
  tenant TEXT NOT NULL REFERENCES tenants(name), name TEXT NOT NULL, audience TEXT NOT NULL,
  actions TEXT NOT NULL, labels TEXT NOT NULL, risk TEXT NOT NULL, max_ttl_secs BIGINT NOT NULL,
  provider TEXT NOT NULL, alg TEXT NOT NULL, created_ms BIGINT NOT NULL,
  config TEXT NOT NULL DEFAULT '{}',
  PRIMARY KEY (tenant, name), UNIQUE (tenant, audience));
CREATE TABLE grants (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name), principal TEXT NOT NULL,
  agent TEXT NOT NULL, capabilities TEXT NOT NULL, task TEXT NOT NULL, expires_at BIGINT NOT NULL,
  created_ms BIGINT NOT NULL,
  FOREIGN KEY (tenant, principal) REFERENCES principals(tenant, id),
  FOREIGN KEY (tenant, agent) REFERENCES agents(tenant, name));
CREATE TABLE policy_sets (
  tenant TEXT NOT NULL REFERENCES tenants(name), name TEXT NOT NULL, policies TEXT NOT NULL,
  created_ms BIGINT NOT NULL, PRIMARY KEY (tenant, name));
CREATE TABLE runs (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, agent TEXT NOT NULL, principal TEXT, grant_id TEXT,
  task TEXT NOT NULL, capabilities TEXT NOT NULL, jkt TEXT NOT NULL, started_ms BIGINT NOT NULL,
  expires_at BIGINT NOT NULL, ended_ms BIGINT, parent TEXT, suspended_ms BIGINT,
  suspended_reason TEXT,
  FOREIGN KEY (tenant, agent) REFERENCES agents(tenant, name));
CREATE INDEX runs_by_agent ON runs (tenant, agent, started_ms);
CREATE INDEX runs_by_start ON runs (started_ms);
CREATE INDEX runs_by_parent ON runs (parent) WHERE parent IS NOT NULL;
CREATE TABLE keys (
  kid TEXT PRIMARY KEY, alg TEXT NOT NULL, purpose TEXT NOT NULL, sealed BYTEA NOT NULL,
  created_ms BIGINT NOT NULL);
CREATE TABLE revocations (
  seq BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, reason TEXT NOT NULL,
  time_ms BIGINT NOT NULL, until BIGINT NOT NULL, tenant TEXT);
CREATE TABLE admin_tokens (
  id TEXT PRIMARY KEY, hash BYTEA NOT NULL, created_ms BIGINT NOT NULL, tenant TEXT,
  expires_at BIGINT NOT NULL DEFAULT 0);
CREATE TABLE audit (
  seq BIGINT PRIMARY KEY, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, body TEXT NOT NULL,
  time_ms BIGINT NOT NULL, event_type TEXT NOT NULL, decision TEXT NOT NULL,
  tenant TEXT, agent TEXT, run TEXT, principal TEXT, tool TEXT);
CREATE INDEX audit_by_tenant ON audit (tenant, seq);
CREATE INDEX audit_by_agent ON audit (agent, seq);
CREATE INDEX audit_by_run ON audit (run, seq);
CREATE INDEX audit_by_principal ON audit (principal, seq);
CREATE INDEX audit_by_tool ON audit (tool, seq);
CREATE INDEX audit_rare_decisions ON audit (decision, seq) WHERE decision <> 'allow';
CREATE INDEX audit_rare_types ON audit (event_type, seq) WHERE event_type <> 'token.exchange';
CREATE TABLE audit_time_steps (seq BIGINT PRIMARY KEY);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
  FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
  FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
  FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TABLE tool_secrets (
  tenant TEXT NOT NULL, tool TEXT NOT NULL, sealed BYTEA NOT NULL, updated_ms BIGINT NOT NULL,
  PRIMARY KEY (tenant, tool), FOREIGN KEY (tenant, tool) REFERENCES tools (tenant, name));
CREATE TABLE leases (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, tool TEXT NOT NULL, run TEXT NOT NULL,
  agent TEXT NOT NULL, principal TEXT, grant_id TEXT, role TEXT NOT NULL UNIQUE,
  expires_at BIGINT NOT NULL, created_ms BIGINT NOT NULL, dropped_ms BIGINT,
  revoked_by TEXT NOT NULL DEFAULT '[]');
CREATE INDEX leases_live ON leases (created_ms) WHERE dropped_ms IS NULL;
CREATE TABLE join_tokens (
  id TEXT PRIMARY KEY, hash BYTEA NOT NULL, tenant TEXT NOT NULL, agent TEXT NOT NULL,
  principal TEXT, grant_id TEXT, expires_at BIGINT NOT NULL, created_ms BIGINT NOT NULL,
  used_ms BIGINT);
CREATE TABLE block_uses (block TEXT PRIMARY KEY, uses BIGINT NOT NULL, until BIGINT NOT NULL);
CREATE TABLE approver_tokens (
  id TEXT PRIMARY KEY, hash BYTEA NOT NULL, tenant TEXT NOT NULL, principal TEXT NOT NULL,
  created_ms BIGINT NOT NULL, expires_at BIGINT NOT NULL DEFAULT 0,
  FOREIGN KEY (tenant, principal) REFERENCES principals(tenant, id));
CREATE TABLE approvals (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, run TEXT NOT NULL, request_digest TEXT NOT NULL,
  status TEXT NOT NULL, expires_at BIGINT NOT NULL, body TEXT NOT NULL,
  ord BIGSERIAL NOT NULL UNIQUE);
CREATE INDEX approvals_by_request ON approvals (request_digest, status);
CREATE INDEX approvals_by_tenant ON approvals (tenant, status);
CREATE INDEX approvals_by_run ON approvals (run, status);
CREATE TABLE outbox (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL, created_ms BIGINT NOT NULL);
"#;

/// v2 (issue 14, several brokers): what brokers must agree on at commit
/// time: revocations found by id (the kill switch's few rows by a partial
/// index), one-time uses (proof ids, single-use credentials) with their
/// expiry, and the registry's generation (see the SQLite schema's v9).
const SCHEMA_V2: &str = r#"
CREATE INDEX revocations_by_key ON revocations (key);
CREATE INDEX revocations_everything ON revocations (seq) WHERE key LIKE 'everything:%';
CREATE TABLE one_time_uses (key TEXT PRIMARY KEY, until BIGINT NOT NULL);
CREATE INDEX one_time_uses_by_until ON one_time_uses (until);
CREATE TABLE generation (id INT PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
INSERT INTO generation (id, value) VALUES (1, 0);
"#;

/// The schema version this code writes.
pub(super) const SCHEMA_VERSION: i64 = 2;

/// Every version's statements, in order (index 0 is version 1).
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [SCHEMA_V1, SCHEMA_V2];

/// The advisory lock key that serialises migrations (`MANDAT` then 1).
const MIGRATION_LOCK: i64 = 0x4d41_4e44_4154_0001;

/// The version a database is at: 0 when it has no schema yet.
fn version(s: &mut Session<'_>) -> Result<i64> {
    let exists: bool = s
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .try_get(0)
        .map_err(|e| StoreError::Db(e.to_string()))?;
    if !exists {
        return Ok(0);
    }
    s.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
        .try_get(0)
        .map_err(|e| StoreError::Db(e.to_string()))
}

fn too_new(version: i64) -> StoreError {
    StoreError::Corrupt(format!(
        "database schema version {version} is newer than this broker understands ({SCHEMA_VERSION})"
    ))
}

/// Brings the database to [`SCHEMA_VERSION`], one version per transaction.
pub(super) fn migrate(s: &mut Session<'_>) -> Result<()> {
    let v = version(s)?;
    if v > SCHEMA_VERSION {
        return Err(too_new(v));
    }
    if v == SCHEMA_VERSION {
        return Ok(());
    }
    for (v, sql) in (1..).zip(MIGRATIONS) {
        s.transaction("BEGIN", |s| {
            // Waits for another broker's migration, then sees its result.
            s.query("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            s.batch(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
            )?;
            let current = version(s)?;
            if current > SCHEMA_VERSION {
                return Err(too_new(current));
            }
            if current < v {
                s.batch(sql)?;
                s.execute(
                    "INSERT INTO schema_version (version, applied_ms) VALUES ($1, $2)",
                    &[&v, &super::now_ms()],
                )?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
