//! The schema, one version at a time: a database is migrated forward in
//! order, each step in its own transaction.

pub(super) const SCHEMA_V1: &str = r#"
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
pub(super) const SCHEMA_V2: &str = r#"
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
pub(super) const SCHEMA_V3: &str = r#"
CREATE TABLE block_uses (block TEXT PRIMARY KEY, uses INTEGER NOT NULL, until INTEGER NOT NULL);
"#;

/// Version 4: principals' groups, approver credentials, approvals, suspended runs.
pub(super) const SCHEMA_V4: &str = r#"
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
pub(super) const SCHEMA_V5: &str = r#"
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, created_ms INTEGER NOT NULL);
"#;

/// Version 6: a lease keeps every revocation id of its credential (with the
/// ancestors of a delegated run); older leases keep `[]` and are revoked by
/// their own columns, as before.
pub(super) const SCHEMA_V6: &str = r#"
ALTER TABLE leases ADD COLUMN revoked_by TEXT NOT NULL DEFAULT '[]';
"#;

/// v7 (issue 10): revocations name their tenant (a tenant's feed credential
/// reads only its own); feed credentials may be limited to a tenant and
/// expire; approver credentials expire (those made before: 30 days after
/// they were made).
pub(super) const SCHEMA_V7: &str = r#"
ALTER TABLE revocations ADD COLUMN tenant TEXT;
ALTER TABLE admin_tokens ADD COLUMN tenant TEXT;
ALTER TABLE admin_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approver_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
UPDATE approver_tokens SET expires_at = created_ms / 1000 + 2592000;
"#;

/// v8 (issue 12): audit indexes that serve "the latest N matching events"
/// directly. An index on `(col)` is ordered by `(col, seq)` (the rowid), so
/// `WHERE col = ? ORDER BY seq DESC LIMIT N` reads N entries; the old
/// `(col, time_ms)` indexes had to sort every match. Decisions and event
/// types are indexed only where they are rare (not `allow`, not
/// `token.exchange`): the common ones are found by reading the trail
/// backwards, and an ordinary exchange's event touches no extra index.
/// "Since" needs no index: times do not go back along the chain after a
/// step (`audit_time_steps`: events up to that seq may be out of time
/// order; the trail written before v8 is one such step), so it is a binary
/// search over the sequence numbers after the last step.
pub(super) const SCHEMA_V8: &str = r#"
CREATE TABLE audit_time_steps (seq INTEGER PRIMARY KEY);
INSERT INTO audit_time_steps (seq) SELECT max(seq) FROM audit HAVING max(seq) IS NOT NULL;
DROP INDEX audit_by_tenant;
DROP INDEX audit_by_agent;
DROP INDEX audit_by_principal;
DROP INDEX audit_by_tool;
CREATE INDEX audit_by_tenant ON audit (tenant);
CREATE INDEX audit_by_agent ON audit (agent);
CREATE INDEX audit_by_principal ON audit (principal);
CREATE INDEX audit_by_tool ON audit (tool);
CREATE INDEX audit_rare_decisions ON audit (decision) WHERE decision <> 'allow';
CREATE INDEX audit_rare_types ON audit (event_type) WHERE event_type <> 'token.exchange';
"#;

/// v9 (issue 14): what several brokers (or one across restarts) must
/// agree on at commit time: revocations found by id (and the kill switch's
/// few rows by a partial index), one-time uses (proof ids, single-use
/// credentials) with their expiry, and the registry's generation.
pub(super) const SCHEMA_V9: &str = r#"
CREATE INDEX revocations_by_key ON revocations (key);
CREATE INDEX revocations_everything ON revocations (seq) WHERE key LIKE 'everything:%';
CREATE TABLE one_time_uses (key TEXT PRIMARY KEY, until INTEGER NOT NULL);
CREATE INDEX one_time_uses_by_until ON one_time_uses (until);
CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO generation (id, value) VALUES (1, 0);
"#;

/// v10 (issue 12): one-time uses kept in expiry order. Keyed by the key
/// alone (v9), every use wrote one random leaf of the key's index when it
/// came and another when it was cleared, two WAL pages per exchange; in
/// expiry order the uses of a batch share the rightmost leaf, and the
/// cleared ones the leftmost. A use's expiry is a function of the use (a
/// proof's `iat` plus this broker's window, a credential's `exp`), so a
/// replay of the same proof or credential has the same key and expiry and
/// is refused; see docs/decisions.md.
pub(super) const SCHEMA_V10: &str = r#"
CREATE TABLE one_time_uses_v10 (until INTEGER NOT NULL, key TEXT NOT NULL, PRIMARY KEY (until, key)) WITHOUT ROWID;
INSERT INTO one_time_uses_v10 (until, key) SELECT until, key FROM one_time_uses;
DROP TABLE one_time_uses;
ALTER TABLE one_time_uses_v10 RENAME TO one_time_uses;
"#;

/// v11 (issue 12): one-time uses in arrival order on disk. In v10's
/// `(until, key)` order the uses of one second (one `until`) still went
/// to random places among that second's rows, a range of dozens of pages
/// at a few thousand exchanges a second: a commit of three exchanges
/// dirtied about ten of them (measured from the WAL's frames under W1),
/// half of the WAL the broker wrote. Here a use goes after the others of
/// its `until` (`n` counts within it), so a batch's uses share the
/// rightmost leaf. Whether a key was used before is answered by the
/// writer's in-memory copy of the live uses (`temp.live_uses`, in the same
/// transactions, loaded from this table when the store opens): see
/// docs/decisions.md.
pub(super) const SCHEMA_V11: &str = r#"
CREATE TABLE one_time_uses_v11 (until INTEGER NOT NULL, n INTEGER NOT NULL, key TEXT NOT NULL, PRIMARY KEY (until, n)) WITHOUT ROWID;
INSERT INTO one_time_uses_v11 (until, n, key) SELECT until, row_number() OVER (PARTITION BY until ORDER BY key), key FROM one_time_uses;
DROP TABLE one_time_uses;
ALTER TABLE one_time_uses_v11 RENAME TO one_time_uses;
"#;

/// The writer's copy of the live one-time uses, by key: the uniqueness
/// check (see [`SCHEMA_V11`]). A `TEMP` table of the writer's connection,
/// in memory (`temp_store = MEMORY`), so it takes part in the commit's
/// transaction and savepoints like the tables on disk.
pub(super) const LIVE_USES: &str = r#"
CREATE TEMP TABLE live_uses (until INTEGER NOT NULL, key TEXT NOT NULL, PRIMARY KEY (until, key)) WITHOUT ROWID;
INSERT OR IGNORE INTO temp.live_uses (until, key) SELECT until, key FROM main.one_time_uses;
"#;

/// The schema version this code writes.
pub(super) const SCHEMA_VERSION: i64 = 11;

/// Every version's statements, in order (index 0 is version 1).
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9, SCHEMA_V10, SCHEMA_V11,
];

/// Brings a database at `version` to [`SCHEMA_VERSION`], one version per
/// transaction.
pub(super) fn migrate(c: &rusqlite::Connection, version: i64) -> rusqlite::Result<()> {
    for (v, sql) in (1..).zip(MIGRATIONS) {
        if version < v {
            c.execute_batch(&format!("BEGIN; {sql} PRAGMA user_version = {v}; COMMIT;"))?;
        }
    }
    Ok(())
}
