//! The mutations, by group (dispatched by [`super::write::apply`]); each
//! as the SQLite backend applies it.

use mandate_core::approval::ApprovalStatus;
use mandate_core::model::{Approval, Tool};

use super::pool::Session;
use super::rows::{from_json, i64_col};
use super::{json, now_ms};
use crate::{Mutation, Result, StoreError, ToolConfig};

/// The metadata key of [`Mutation::KeepUses`].
const USES_KEPT: &str = "one_time_uses_kept";

fn misrouted() -> StoreError {
    StoreError::Db("a mutation was sent to the wrong handler".into())
}

/// Fails with `NotFound(what)` when a statement changed no row.
fn found(n: u64, what: impl FnOnce() -> String) -> Result<()> {
    if n == 0 {
        Err(StoreError::NotFound(what()))
    } else {
        Ok(())
    }
}

fn tool_config(t: &Tool) -> String {
    json(&ToolConfig {
        proxy: t.proxy.clone(),
        postgres: t.postgres.clone(),
        mcp: t.mcp.clone(),
        env: t.env.clone(),
    })
}

/// Tenants, principals, agents, tools, grants and policy sets.
pub(super) fn registry(s: &mut Session<'_>, m: &Mutation) -> Result<()> {
    match m {
        Mutation::CreateTenant(t) => {
            s.execute(
                "INSERT INTO tenants (name, description, created_ms) VALUES ($1, $2, $3)",
                &[&t.name, &t.description, &(t.created_ms as i64)],
            )?;
        }
        Mutation::CreatePrincipal(p) => {
            s.execute(
                "INSERT INTO principals (tenant, id, display_name, created_ms, groups) VALUES ($1, $2, $3, $4, $5)",
                &[&p.tenant, &p.id, &p.display_name, &(p.created_ms as i64), &json(&p.groups)],
            )?;
        }
        Mutation::CreateAgent(a) => {
            s.execute(
                "INSERT INTO agents (tenant, name, owner, purpose, envelope, spiffe_id, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&a.tenant, &a.name, &a.owner, &a.purpose, &json(&a.envelope), &a.spiffe_id, &(a.created_ms as i64)],
            )?;
        }
        Mutation::CreateTool(t) => {
            s.execute(
                "INSERT INTO tools (tenant, name, audience, actions, labels, risk, max_ttl_secs, provider, alg, created_ms, config) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[&t.tenant, &t.name, &t.audience, &json(&t.actions), &json(&t.labels), &t.risk, &(t.max_ttl_secs as i64),
                  &t.provider.as_str(), &t.alg.as_str(), &(t.created_ms as i64), &tool_config(t)],
            )?;
        }
        Mutation::ReplaceAgent(a) => {
            let n = s.execute(
                "UPDATE agents SET owner = $3, purpose = $4, envelope = $5 WHERE tenant = $1 AND name = $2",
                &[&a.tenant, &a.name, &a.owner, &a.purpose, &json(&a.envelope)],
            )?;
            found(n, || format!("agent `{}`", a.name))?;
        }
        Mutation::ReplaceTool(t) => {
            let n = s.execute(
                "UPDATE tools SET audience = $3, actions = $4, labels = $5, risk = $6, max_ttl_secs = $7, provider = $8, alg = $9, config = $10 WHERE tenant = $1 AND name = $2",
                &[&t.tenant, &t.name, &t.audience, &json(&t.actions), &json(&t.labels), &t.risk, &(t.max_ttl_secs as i64),
                  &t.provider.as_str(), &t.alg.as_str(), &tool_config(t)],
            )?;
            found(n, || format!("tool `{}`", t.name))?;
        }
        Mutation::CreateGrant(g) => {
            s.execute(
                "INSERT INTO grants (id, tenant, principal, agent, capabilities, task, expires_at, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&g.id, &g.tenant, &g.principal, &g.agent, &json(&g.capabilities), &g.task, &(g.expires_at as i64), &(g.created_ms as i64)],
            )?;
        }
        Mutation::PutPolicySet(p) => {
            s.execute(
                "INSERT INTO policy_sets (tenant, name, policies, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, name) DO UPDATE SET policies = excluded.policies, created_ms = excluded.created_ms",
                &[&p.tenant, &p.name, &json(&p.policies), &(p.created_ms as i64)],
            )?;
        }
        Mutation::DeletePolicySet { tenant, name } => {
            let n = s.execute(
                "DELETE FROM policy_sets WHERE tenant = $1 AND name = $2",
                &[tenant, name],
            )?;
            found(n, || format!("policy set `{name}`"))?;
        }
        _ => return Err(misrouted()),
    }
    Ok(())
}

/// Runs, revocations and block use counts.
pub(super) fn runs(s: &mut Session<'_>, m: &Mutation) -> Result<Option<u64>> {
    match m {
        Mutation::StartRun(r) => {
            s.execute(
                "INSERT INTO runs (id, tenant, agent, principal, grant_id, task, capabilities, jkt, started_ms, expires_at, ended_ms, parent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[&r.id, &r.tenant, &r.agent, &r.principal, &r.grant, &r.task, &json(&r.capabilities), &r.jkt,
                  &(r.started_ms as i64), &(r.expires_at as i64), &r.ended_ms.map(|x| x as i64), &r.parent],
            )?;
        }
        Mutation::EndRun {
            id,
            ended_ms,
            revocation,
        } => {
            let n = s.execute(
                "UPDATE runs SET ended_ms = $2 WHERE id = $1 AND ended_ms IS NULL",
                &[id, &(*ended_ms as i64)],
            )?;
            found(n, || format!("active run `{id}`"))?;
            return runs(s, &Mutation::Revoke(revocation.clone()));
        }
        Mutation::Revoke(r) => {
            let row = s.query_one(
                "INSERT INTO revocations (key, reason, time_ms, until, tenant) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                &[&r.key, &r.reason, &(r.time_ms as i64), &(r.until as i64), &r.tenant],
            )?;
            return Ok(Some(i64_col(&row, 0)? as u64));
        }
        Mutation::SuspendRun { id, ms, reason } => {
            let n = s.execute(
                "UPDATE runs SET suspended_ms = $2, suspended_reason = $3 WHERE id = $1 AND ended_ms IS NULL",
                &[id, &(*ms as i64), reason],
            )?;
            found(n, || format!("running run `{id}`"))?;
        }
        Mutation::ResumeRun { id } => {
            let n = s.execute(
                "UPDATE runs SET suspended_ms = NULL, suspended_reason = NULL WHERE id = $1 AND suspended_ms IS NOT NULL",
                &[id],
            )?;
            found(n, || format!("suspended run `{id}`"))?;
        }
        Mutation::Unrevoked {
            keys,
            issued_at,
            now,
        } => {
            let rows = s.query(
                "SELECT key, until FROM revocations WHERE key = ANY($1)
                 UNION ALL SELECT key, until FROM revocations WHERE key LIKE 'everything:%'",
                &[keys],
            )?;
            let mut found = Vec::with_capacity(rows.len());
            for r in &rows {
                let key: String = r
                    .try_get(0)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                found.push((key, i64_col(r, 1)? as u64));
            }
            if let Some(k) = crate::refused_by(found, keys, *issued_at, *now) {
                return Err(StoreError::Revoked(k));
            }
        }
        Mutation::FewerChildren { parent, max } => {
            // The parent's row locked first: delegations from one run (at
            // any broker) count their siblings one after the other.
            s.query_opt("SELECT id FROM runs WHERE id = $1 FOR UPDATE", &[parent])?;
            let row = s.query_opt("SELECT count(*) FROM runs WHERE parent = $1", &[parent])?;
            let n = row.map(|r| i64_col(&r, 0)).transpose()?.unwrap_or(0);
            if n as u64 >= *max {
                return Err(crate::limit_of_children(parent, n as u64));
            }
        }
        Mutation::FirstUse { uses, now } => {
            // Each use first clears what expired longer ago than any
            // broker's window (`Mutation::KeepUses`, read in the statement:
            // a broker started since with a longer one counts at once),
            // found by the index on `until`, so the table holds about what
            // is live without a sweeper.
            // `now` is never past the database's clock: a broker whose
            // clock runs ahead clears nothing the others still need.
            s.execute(
                "DELETE FROM one_time_uses WHERE until < LEAST($1, floor(extract(epoch from clock_timestamp()))::bigint)
                   - (SELECT COALESCE(max(value::bigint), 0) FROM meta WHERE key = $2)",
                &[&(*now as i64), &USES_KEPT],
            )?;
            // The latest `now` that cleared (changes once a second; a row
            // is locked only when it changes).
            s.execute(
                "UPDATE meta SET value = LEAST($2, floor(extract(epoch from clock_timestamp()))::bigint)::text
                 WHERE key = $1 AND value::bigint < LEAST($2, floor(extract(epoch from clock_timestamp()))::bigint)",
                &[&crate::USES_CLEARED, &(*now as i64)],
            )?;
            for u in uses {
                let n = s.execute(
                    "INSERT INTO one_time_uses (key, until) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET until = excluded.until
                     WHERE one_time_uses.until < LEAST($3, floor(extract(epoch from clock_timestamp()))::bigint)
                       - (SELECT COALESCE(max(value::bigint), 0) FROM meta WHERE key = $4)",
                    &[&u.key, &(u.until as i64), &(*now as i64), &USES_KEPT],
                )?;
                if n == 0 {
                    return Err(StoreError::Replayed(u.key.clone()));
                }
            }
        }
        Mutation::CountUses { blocks, until } => {
            for (block, limit) in blocks {
                let n = s.execute(
                    "INSERT INTO block_uses (block, uses, until) VALUES ($1, 1, $3)
                     ON CONFLICT (block) DO UPDATE SET uses = block_uses.uses + 1 WHERE block_uses.uses < $2",
                    &[block, &(*limit as i64), &(*until as i64)],
                )?;
                if n == 0 || *limit == 0 {
                    return Err(StoreError::Conflict(format!(
                        "use limit ({limit}) of attenuation block {block}: reached"
                    )));
                }
            }
        }
        _ => return Err(misrouted()),
    }
    Ok(None)
}

/// Keys, secrets, credentials, metadata and the webhook outbox.
pub(super) fn secrets(s: &mut Session<'_>, m: &Mutation) -> Result<()> {
    match m {
        Mutation::PutKey(k) => {
            s.execute(
                "INSERT INTO keys (kid, alg, purpose, sealed, created_ms) VALUES ($1, $2, $3, $4, $5)",
                &[&k.kid, &k.alg, &k.purpose, &k.sealed, &(k.created_ms as i64)],
            )?;
        }
        Mutation::PutToolSecret(t) => {
            s.execute(
                "INSERT INTO tool_secrets (tenant, tool, sealed, updated_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, tool) DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms",
                &[&t.tenant, &t.tool, &t.sealed, &(t.updated_ms as i64)],
            )?;
        }
        Mutation::PutAdminToken(t) => {
            s.execute(
                "INSERT INTO admin_tokens (id, hash, created_ms, tenant, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&t.id, &t.hash, &(t.created_ms as i64), &t.tenant, &(t.expires_at as i64)],
            )?;
        }
        Mutation::DeleteAdminToken { id } => {
            let n = s.execute("DELETE FROM admin_tokens WHERE id = $1", &[id])?;
            found(n, || format!("admin credential `{id}`"))?;
        }
        Mutation::PutApproverToken(t) => {
            s.execute(
                "INSERT INTO approver_tokens (id, hash, tenant, principal, created_ms, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&t.id, &t.hash, &t.tenant, &t.principal, &(t.created_ms as i64), &(t.expires_at as i64)],
            )?;
        }
        Mutation::PutMeta { key, value } => {
            s.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[key, value],
            )?;
        }
        Mutation::KeepUses { secs } => {
            s.execute(
                "INSERT INTO meta (key, value) VALUES ($1, '0') ON CONFLICT (key) DO NOTHING",
                &[&crate::USES_CLEARED],
            )?;
            s.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key)
                 DO UPDATE SET value = GREATEST(meta.value::bigint, excluded.value::bigint)::text",
                &[&USES_KEPT, &secs.to_string()],
            )?;
        }
        Mutation::Enqueue { body } => {
            s.execute(
                "INSERT INTO outbox (body, created_ms) VALUES ($1, $2)",
                &[body, &now_ms()],
            )?;
        }
        Mutation::Dequeue { id } => {
            s.execute("DELETE FROM outbox WHERE id = $1", &[id])?;
        }
        _ => return Err(misrouted()),
    }
    Ok(())
}

/// Database leases and join tokens.
pub(super) fn leases(s: &mut Session<'_>, m: &Mutation) -> Result<()> {
    match m {
        Mutation::CreateLease(l) => {
            s.execute(
                "INSERT INTO leases (id, tenant, tool, run, agent, principal, grant_id, role, expires_at, created_ms, dropped_ms, revoked_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11)",
                &[&l.id, &l.tenant, &l.tool, &l.run, &l.agent, &l.principal, &l.grant, &l.role,
                  &(l.expires_at as i64), &(l.created_ms as i64), &json(&l.revoked_by)],
            )?;
        }
        Mutation::DropLease { id, dropped_ms } => {
            let n = s.execute(
                "UPDATE leases SET dropped_ms = $2 WHERE id = $1 AND dropped_ms IS NULL",
                &[id, &(*dropped_ms as i64)],
            )?;
            found(n, || format!("live lease `{id}`"))?;
        }
        Mutation::CreateJoinToken(j) => {
            s.execute(
                "INSERT INTO join_tokens (id, hash, tenant, agent, principal, grant_id, expires_at, created_ms, used_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
                &[&j.id, &j.hash, &j.tenant, &j.agent, &j.principal, &j.grant, &(j.expires_at as i64), &(j.created_ms as i64)],
            )?;
        }
        Mutation::UseJoinToken { id, used_ms } => {
            let n = s.execute(
                "UPDATE join_tokens SET used_ms = $2 WHERE id = $1 AND used_ms IS NULL",
                &[id, &(*used_ms as i64)],
            )?;
            found(n, || format!("unused join token `{id}`"))?;
        }
        _ => return Err(misrouted()),
    }
    Ok(())
}

/// Approvals: asked, decided, used.
pub(super) fn approvals(s: &mut Session<'_>, m: &Mutation) -> Result<()> {
    match m {
        Mutation::CreateApproval(a) => {
            s.execute(
                "INSERT INTO approvals (id, tenant, run, request_digest, status, expires_at, body) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&a.id, &a.tenant, &a.run, &a.request_digest, &a.status.as_str(), &(a.expires_at as i64), &json(a)],
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
            let row = s.query_opt(
                "SELECT body FROM approvals WHERE id = $1 AND status = 'pending' AND expires_at >= $2",
                &[id, &(*now as i64)],
            )?;
            let row = row.ok_or_else(|| {
                StoreError::NotFound(format!("pending, unexpired approval `{id}`"))
            })?;
            let mut a: Approval = from_json(&super::rows::text(&row, 0)?)?;
            a.status = *status;
            a.decided_by = Some(by.clone());
            a.decided_ms = Some(*decided_ms);
            a.comment = comment.clone();
            s.execute(
                "UPDATE approvals SET status = $2, body = $3 WHERE id = $1",
                &[id, &status.as_str(), &json(&a)],
            )?;
        }
        Mutation::UseApproval { id } => {
            let row = s.query_opt(
                "SELECT body FROM approvals WHERE id = $1 AND status = 'approved'",
                &[id],
            )?;
            let row = row.ok_or_else(|| StoreError::Conflict(format!("use of approval `{id}`")))?;
            let mut a: Approval = from_json(&super::rows::text(&row, 0)?)?;
            a.status = ApprovalStatus::Used;
            s.execute(
                "UPDATE approvals SET status = 'used', body = $2 WHERE id = $1",
                &[id, &json(&a)],
            )?;
        }
        _ => return Err(misrouted()),
    }
    Ok(())
}
