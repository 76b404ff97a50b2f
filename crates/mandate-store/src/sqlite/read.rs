//! Reads: the snapshot at start, and the queries the broker makes while
//! running (on the reader connection).

use rusqlite::{OptionalExtension, params};

use super::*;
use crate::Result;

pub(super) fn row_revocation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Revocation> {
    Ok(Revocation {
        seq: r.get::<_, i64>(0)? as u64,
        key: r.get(1)?,
        reason: r.get(2)?,
        time_ms: r.get::<_, i64>(3)? as u64,
        until: r.get::<_, i64>(4)? as u64,
        tenant: r.get(5)?,
    })
}

pub(super) fn row_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
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

pub(super) const RUN_COLS: &str = "id, tenant, agent, principal, grant_id, task, capabilities, jkt, started_ms, expires_at, ended_ms, parent";

impl SqliteStore {
    pub(super) fn load_impl(&self) -> Result<Snapshot> {
        let c = lock(&self.reader);
        let mut s = Snapshot {
            audit_head: {
                let h = lock(&self.head);
                (h.seq, h.hash.clone())
            },
            generation: generation(&c)?,
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
                    proxy: config.proxy, postgres: config.postgres, mcp: config.mcp, env: config.env,
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

    pub(super) fn list_runs_impl(
        &self,
        tenant: Option<&str>,
        agent: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Run>> {
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

    pub(super) fn revocations_after_impl(&self, after: u64, limit: u32) -> Result<Vec<Revocation>> {
        let c = lock(&self.reader);
        let out = c
            .prepare_cached("SELECT seq, key, reason, time_ms, until, tenant FROM revocations WHERE seq > ?1 AND seq <= ?3 ORDER BY seq LIMIT ?2")?
            .query_map(params![after as i64, limit as i64, self.durable().revocation as i64], row_revocation)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }

    pub(super) fn count_children_impl(&self, parent: &str) -> Result<u64> {
        let c = lock(&self.reader);
        let n: i64 = c.query_row(
            "SELECT count(*) FROM runs WHERE parent = ?1",
            params![parent],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    pub(super) fn live_leases_impl(&self) -> Result<Vec<Lease>> {
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

    pub(super) fn join_token_impl(&self, id: &str) -> Result<Option<JoinToken>> {
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

    pub(super) fn outbox_impl(&self, limit: u32) -> Result<Vec<(i64, String)>> {
        let c = lock(&self.reader);
        let mut q =
            c.prepare("SELECT id, body FROM outbox WHERE id <= ?2 ORDER BY id ASC LIMIT ?1")?;
        let rows = q
            .query_map(params![limit as i64, self.durable().outbox as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub(super) fn agent_tools_used_impl(&self) -> Result<Vec<(String, String, String)>> {
        let c = lock(&self.reader);
        let mut q = c.prepare(
            "SELECT DISTINCT tenant, agent, tool FROM audit WHERE event_type = 'token.exchange' AND decision = 'allow' AND tenant IS NOT NULL AND agent IS NOT NULL AND tool IS NOT NULL",
        )?;
        let rows = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub(super) fn approval_impl(&self, id: &str) -> Result<Option<Approval>> {
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

    pub(super) fn pending_approvals_for_run_impl(&self, run: &str, now: u64) -> Result<usize> {
        let c = lock(&self.reader);
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM approvals WHERE run = ?1 AND status = 'pending' AND expires_at >= ?2",
            params![run, now as i64],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as usize)
    }

    pub(super) fn approvals_for_request_impl(&self, request_digest: &str) -> Result<Vec<Approval>> {
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

    pub(super) fn list_approvals_impl(
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

    pub(super) fn block_uses_impl(&self, blocks: &[String]) -> Result<Vec<u64>> {
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

    pub(super) fn get_run_impl(&self, id: &str) -> Result<Option<Run>> {
        let c = lock(&self.reader);
        Ok(c.query_row(
            &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
            params![id],
            row_run,
        )
        .optional()?)
    }
}

/// The registry's generation (`Snapshot::generation`).
pub(super) fn latest_one_time_use(c: &Connection) -> Result<u64> {
    let until: i64 = c.query_row(
        "SELECT coalesce(max(until), 0) FROM one_time_uses",
        [],
        |r| r.get(0),
    )?;
    Ok(until.max(0) as u64)
}

pub(super) fn generation(c: &Connection) -> Result<u64> {
    Ok(
        c.query_row("SELECT value FROM generation WHERE id = 1", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}
