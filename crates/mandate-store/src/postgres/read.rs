//! Reads: the snapshot at start, and the queries the broker makes while
//! running (on the reader threads). Each as the SQLite backend answers it.

use tokio_postgres::Row;

use mandate_core::approval::ApprovalStatus;
use mandate_core::model::*;

use super::pool::Session;
use super::rows::{bytes, from_json, i64_col, int, json, opt_int, opt_text, parse_col, text};
use super::trail::read_head;
use crate::Result;
use crate::records::*;

fn row_revocation(r: &Row) -> Result<Revocation> {
    Ok(Revocation {
        seq: int(r, 0)?,
        key: text(r, 1)?,
        reason: text(r, 2)?,
        time_ms: int(r, 3)?,
        until: int(r, 4)?,
        tenant: opt_text(r, 5)?,
    })
}

fn row_run(r: &Row) -> Result<Run> {
    Ok(Run {
        id: text(r, 0)?,
        tenant: text(r, 1)?,
        agent: text(r, 2)?,
        principal: opt_text(r, 3)?,
        grant: opt_text(r, 4)?,
        task: text(r, 5)?,
        capabilities: json(r, 6)?,
        jkt: text(r, 7)?,
        started_ms: int(r, 8)?,
        expires_at: int(r, 9)?,
        ended_ms: opt_int(r, 10)?,
        parent: opt_text(r, 11)?,
    })
}

fn row_tool(r: &Row) -> Result<Tool> {
    let config: ToolConfig = json(r, 10)?;
    Ok(Tool {
        tenant: text(r, 0)?,
        name: text(r, 1)?,
        audience: text(r, 2)?,
        actions: json(r, 3)?,
        labels: json(r, 4)?,
        risk: text(r, 5)?,
        max_ttl_secs: int(r, 6)?,
        provider: parse_col(r, 7, "provider", mandate_core::tooling::ProviderKind::parse)?,
        alg: parse_col(r, 8, "alg", |a| {
            mandate_core::jose::Alg::parse("tool", a).ok()
        })?,
        created_ms: int(r, 9)?,
        proxy: config.proxy,
        postgres: config.postgres,
        mcp: config.mcp,
        env: config.env,
    })
}

const RUN_COLS: &str = "id, tenant, agent, principal, grant_id, task, capabilities, jkt, started_ms, expires_at, ended_ms, parent";

/// Every row of `sql`, each mapped.
fn all<T>(s: &mut Session<'_>, sql: &str, map: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    s.query(sql, &[])?.iter().map(map).collect()
}

/// Everything the broker keeps in memory, in one consistent snapshot.
pub(super) fn load(s: &mut Session<'_>) -> Result<Snapshot> {
    s.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", load_in)
}

fn load_in(s: &mut Session<'_>) -> Result<Snapshot> {
    let head = read_head(s)?;
    let generation = generation(s)?;
    let registry = load_registry(s)?;
    Ok(Snapshot {
        audit_head: (head.seq, head.hash),
        generation,
        ..load_secrets(s, registry)?
    })
}

/// The registry's generation (`Snapshot::generation`).
pub(super) fn generation(s: &mut Session<'_>) -> Result<u64> {
    Ok(i64_col(
        &s.query_one("SELECT value FROM generation WHERE id = 1", &[])?,
        0,
    )? as u64)
}

pub(super) fn latest_one_time_use(s: &mut Session<'_>) -> Result<u64> {
    let until = i64_col(
        &s.query_one(
            "SELECT coalesce(max(until), 0)::BIGINT FROM one_time_uses",
            &[],
        )?,
        0,
    )?;
    Ok(until.max(0) as u64)
}

/// The registry: tenants, principals, agents, tools, grants, policy sets, revocations.
fn load_registry(s: &mut Session<'_>) -> Result<Snapshot> {
    Ok(Snapshot {
        tenants: all(
            s,
            "SELECT name, description, created_ms FROM tenants ORDER BY name",
            |r| {
                Ok(Tenant {
                    name: text(r, 0)?,
                    description: text(r, 1)?,
                    created_ms: int(r, 2)?,
                })
            },
        )?,
        principals: all(
            s,
            "SELECT tenant, id, display_name, created_ms, groups FROM principals ORDER BY tenant, id",
            |r| {
                Ok(Principal {
                    tenant: text(r, 0)?,
                    id: text(r, 1)?,
                    display_name: text(r, 2)?,
                    created_ms: int(r, 3)?,
                    groups: json(r, 4)?,
                })
            },
        )?,
        agents: all(
            s,
            "SELECT tenant, name, owner, purpose, envelope, spiffe_id, created_ms FROM agents ORDER BY tenant, name",
            |r| {
                Ok(Agent {
                    tenant: text(r, 0)?,
                    name: text(r, 1)?,
                    owner: text(r, 2)?,
                    purpose: text(r, 3)?,
                    envelope: json(r, 4)?,
                    spiffe_id: text(r, 5)?,
                    created_ms: int(r, 6)?,
                })
            },
        )?,
        tools: all(
            s,
            "SELECT tenant, name, audience, actions, labels, risk, max_ttl_secs, provider, alg, created_ms, config FROM tools ORDER BY tenant, name",
            row_tool,
        )?,
        grants: all(
            s,
            "SELECT id, tenant, principal, agent, capabilities, task, expires_at, created_ms FROM grants ORDER BY id",
            |r| {
                Ok(Grant {
                    id: text(r, 0)?,
                    tenant: text(r, 1)?,
                    principal: text(r, 2)?,
                    agent: text(r, 3)?,
                    capabilities: json(r, 4)?,
                    task: text(r, 5)?,
                    expires_at: int(r, 6)?,
                    created_ms: int(r, 7)?,
                })
            },
        )?,
        policy_sets: all(
            s,
            "SELECT tenant, name, policies, created_ms FROM policy_sets ORDER BY tenant, name",
            |r| {
                Ok(PolicySetRecord {
                    tenant: text(r, 0)?,
                    name: text(r, 1)?,
                    policies: json(r, 2)?,
                    created_ms: int(r, 3)?,
                })
            },
        )?,
        revocations: all(
            s,
            "SELECT seq, key, reason, time_ms, until, tenant FROM revocations ORDER BY seq",
            row_revocation,
        )?,
        ..Default::default()
    })
}

/// Keys, secrets, credentials, suspended runs and metadata, added to `snap`.
fn load_secrets(s: &mut Session<'_>, snap: Snapshot) -> Result<Snapshot> {
    Ok(Snapshot {
        keys: all(
            s,
            "SELECT kid, alg, purpose, sealed, created_ms FROM keys ORDER BY created_ms, kid",
            |r| {
                Ok(KeyRecord {
                    kid: text(r, 0)?,
                    alg: text(r, 1)?,
                    purpose: text(r, 2)?,
                    sealed: bytes(r, 3)?,
                    created_ms: int(r, 4)?,
                })
            },
        )?,
        tool_secrets: all(
            s,
            "SELECT tenant, tool, sealed, updated_ms FROM tool_secrets ORDER BY tenant, tool",
            |r| {
                Ok(ToolSecret {
                    tenant: text(r, 0)?,
                    tool: text(r, 1)?,
                    sealed: bytes(r, 2)?,
                    updated_ms: int(r, 3)?,
                })
            },
        )?,
        approver_tokens: all(
            s,
            "SELECT id, hash, tenant, principal, created_ms, expires_at FROM approver_tokens ORDER BY id",
            |r| {
                Ok(ApproverToken {
                    id: text(r, 0)?,
                    hash: bytes(r, 1)?,
                    tenant: text(r, 2)?,
                    principal: text(r, 3)?,
                    created_ms: int(r, 4)?,
                    expires_at: int(r, 5)?,
                })
            },
        )?,
        suspended_runs: all(
            s,
            "SELECT id, COALESCE(suspended_reason, '') FROM runs WHERE suspended_ms IS NOT NULL AND ended_ms IS NULL ORDER BY id",
            |r| Ok((text(r, 0)?, text(r, 1)?)),
        )?,
        admin_tokens: all(
            s,
            "SELECT id, hash, created_ms, tenant, expires_at FROM admin_tokens ORDER BY id",
            |r| {
                Ok(AdminToken {
                    id: text(r, 0)?,
                    hash: bytes(r, 1)?,
                    created_ms: int(r, 2)?,
                    tenant: opt_text(r, 3)?,
                    expires_at: int(r, 4)?,
                })
            },
        )?,
        meta: all(s, "SELECT key, value FROM meta ORDER BY key", |r| {
            Ok((text(r, 0)?, text(r, 1)?))
        })?,
        ..snap
    })
}

/// Runs, newest first, optionally of one tenant and/or agent.
pub(super) fn list_runs(
    s: &mut Session<'_>,
    tenant: Option<&str>,
    agent: Option<&str>,
    limit: u32,
) -> Result<Vec<Run>> {
    let sql = format!(
        "SELECT {RUN_COLS} FROM runs WHERE ($1::TEXT IS NULL OR tenant = $1) AND ($2::TEXT IS NULL OR agent = $2) ORDER BY started_ms DESC LIMIT $3"
    );
    s.query(&sql, &[&tenant, &agent, &i64::from(limit)])?
        .iter()
        .map(row_run)
        .collect()
}

/// One run.
pub(super) fn get_run(s: &mut Session<'_>, id: &str) -> Result<Option<Run>> {
    let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = $1");
    s.query_opt(&sql, &[&id])?.as_ref().map(row_run).transpose()
}

/// Revocations after `after`, in order.
pub(super) fn revocations_after(
    s: &mut Session<'_>,
    after: u64,
    limit: u32,
) -> Result<Vec<Revocation>> {
    s.query(
        "SELECT seq, key, reason, time_ms, until, tenant FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&(after as i64), &i64::from(limit)],
    )?
    .iter()
    .map(row_revocation)
    .collect()
}

/// How many runs were delegated from `parent`.
pub(super) fn count_children(s: &mut Session<'_>, parent: &str) -> Result<u64> {
    let r = s.query_one("SELECT count(*) FROM runs WHERE parent = $1", &[&parent])?;
    int(&r, 0)
}

/// Leases whose role has not been dropped yet.
pub(super) fn live_leases(s: &mut Session<'_>) -> Result<Vec<Lease>> {
    all(
        s,
        "SELECT id, tenant, tool, run, agent, principal, grant_id, role, expires_at, created_ms, dropped_ms, revoked_by FROM leases WHERE dropped_ms IS NULL ORDER BY created_ms",
        |r| {
            Ok(Lease {
                id: text(r, 0)?,
                tenant: text(r, 1)?,
                tool: text(r, 2)?,
                run: text(r, 3)?,
                agent: text(r, 4)?,
                principal: opt_text(r, 5)?,
                grant: opt_text(r, 6)?,
                role: text(r, 7)?,
                expires_at: int(r, 8)?,
                created_ms: int(r, 9)?,
                dropped_ms: opt_int(r, 10)?,
                revoked_by: json(r, 11)?,
            })
        },
    )
}

/// A join token by id.
pub(super) fn join_token(s: &mut Session<'_>, id: &str) -> Result<Option<JoinToken>> {
    let row = s.query_opt(
        "SELECT id, hash, tenant, agent, principal, grant_id, expires_at, created_ms, used_ms FROM join_tokens WHERE id = $1",
        &[&id],
    )?;
    row.map(|r| {
        Ok(JoinToken {
            id: text(&r, 0)?,
            hash: bytes(&r, 1)?,
            tenant: text(&r, 2)?,
            agent: text(&r, 3)?,
            principal: opt_text(&r, 4)?,
            grant: opt_text(&r, 5)?,
            expires_at: int(&r, 6)?,
            created_ms: int(&r, 7)?,
            used_ms: opt_int(&r, 8)?,
        })
    })
    .transpose()
}

/// Queued webhook payloads, oldest first.
pub(super) fn outbox(s: &mut Session<'_>, limit: u32) -> Result<Vec<(i64, String)>> {
    s.query(
        "SELECT id, body FROM outbox ORDER BY id ASC LIMIT $1",
        &[&i64::from(limit)],
    )?
    .iter()
    .map(|r| Ok((i64_col(r, 0)?, text(r, 1)?)))
    .collect()
}

/// Every (tenant, agent, tool) that ever got a credential.
pub(super) fn agent_tools_used(s: &mut Session<'_>) -> Result<Vec<(String, String, String)>> {
    all(
        s,
        "SELECT DISTINCT tenant, agent, tool FROM audit WHERE event_type = 'token.exchange' AND decision = 'allow' AND tenant IS NOT NULL AND agent IS NOT NULL AND tool IS NOT NULL",
        |r| Ok((text(r, 0)?, text(r, 1)?, text(r, 2)?)),
    )
}

fn bodies(rows: Vec<Row>) -> Result<Vec<Approval>> {
    rows.iter().map(|r| json(r, 0)).collect()
}

/// An approval by id.
pub(super) fn approval(s: &mut Session<'_>, id: &str) -> Result<Option<Approval>> {
    let row = s.query_opt("SELECT body FROM approvals WHERE id = $1", &[&id])?;
    row.map(|r| from_json(&text(&r, 0)?)).transpose()
}

/// How many approvals of a run wait for a decision and have not expired.
pub(super) fn pending_approvals_for_run(s: &mut Session<'_>, run: &str, now: u64) -> Result<usize> {
    let r = s.query_one(
        "SELECT COUNT(*) FROM approvals WHERE run = $1 AND status = 'pending' AND expires_at >= $2",
        &[&run, &(now as i64)],
    )?;
    Ok(i64_col(&r, 0)?.max(0) as usize)
}

/// The live approvals for a request digest, newest first.
pub(super) fn approvals_for_request(s: &mut Session<'_>, digest: &str) -> Result<Vec<Approval>> {
    bodies(s.query(
        "SELECT body FROM approvals WHERE request_digest = $1 AND status IN ('pending', 'approved', 'denied') ORDER BY ord DESC LIMIT 64",
        &[&digest],
    )?)
}

/// Approvals, newest first.
pub(super) fn list_approvals(
    s: &mut Session<'_>,
    tenant: Option<&str>,
    status: Option<ApprovalStatus>,
    limit: u32,
) -> Result<Vec<Approval>> {
    let status = status.map(|s| s.as_str());
    bodies(s.query(
        "SELECT body FROM approvals WHERE ($1::TEXT IS NULL OR tenant = $1) AND ($2::TEXT IS NULL OR status = $2) ORDER BY ord DESC LIMIT $3",
        &[&tenant, &status, &i64::from(limit)],
    )?)
}

/// How many times each block has been used (0 if never).
pub(super) fn block_uses(s: &mut Session<'_>, blocks: &[String]) -> Result<Vec<u64>> {
    let rows = s.query(
        "SELECT block, uses FROM block_uses WHERE block = ANY($1)",
        &[&blocks],
    )?;
    let mut uses = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        uses.insert(text(r, 0)?, int(r, 1)?);
    }
    Ok(blocks
        .iter()
        .map(|b| uses.get(b).copied().unwrap_or(0))
        .collect())
}
