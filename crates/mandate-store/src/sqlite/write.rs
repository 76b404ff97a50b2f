//! Writes: one transaction per batch; an entry's mutation and its audit
//! events succeed or fail together (the batch at once when nothing in it
//! fails, else one savepoint per entry).

use rusqlite::{Connection, OptionalExtension, params};

use super::trail::append_event;
use super::*;
use crate::{Committed, Entry, Result, StoreError};

impl SqliteStore {
    pub(super) fn commit_impl(&self, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>> {
        let mut c = lock(&self.writer);
        let mut head_guard = lock(&self.head);
        // Most batches have no refusal: they are applied straight. A
        // savepoint per entry copies every page the entry first touches to
        // the statement journal (13% of a commit's instructions), so only a
        // batch with a refusal in it is rolled back and applied again: the
        // entries before the refused one straight (they passed on the same
        // state), the refused one not at all (its refusal is known), and
        // those after it each in a savepoint.
        let (batch, refused, mut refusal) = match at_once(&mut c, &head_guard, batch)? {
            AtOnce::Committed(results, head, marks) => {
                *lock(&self.written) = marks;
                *head_guard = head;
                return Ok(results);
            }
            AtOnce::Refused { batch, at, error } => (batch, at, Some(error)),
        };
        let mut head = head_guard.clone();
        let tx = c.transaction()?;
        let mut results = Vec::with_capacity(batch.len());
        for (i, entry) in batch.into_iter().enumerate() {
            if i < refused {
                results.push(Ok(apply_entry(&tx, &mut head, entry)?));
                continue;
            }
            if let Some(e) = refusal.take() {
                results.push(Err(e));
                continue;
            }
            let saved_head = head.clone();
            // A savepoint per entry, its statements prepared once (rusqlite's
            // `savepoint()` parses its SQL every time: 8% of the writer).
            tx.prepare_cached("SAVEPOINT entry")?.execute([])?;
            match apply_entry(&tx, &mut head, entry) {
                Ok(done) => {
                    tx.prepare_cached("RELEASE entry")?.execute([])?;
                    results.push(Ok(done));
                }
                Err(e) => {
                    tx.prepare_cached("ROLLBACK TO entry")?.execute([])?;
                    tx.prepare_cached("RELEASE entry")?.execute([])?;
                    head = saved_head;
                    results.push(Err(e));
                }
            }
        }
        let marks = super::Marks::read(&tx, head.seq)?;
        tx.commit()?;
        *lock(&self.written) = marks;
        *head_guard = head;
        Ok(results)
    }
}

/// A batch applied in one go, or given back whole (nothing of it kept)
/// with where and why an entry's change failed.
enum AtOnce {
    Committed(Vec<Result<Committed>>, Head, super::Marks),
    Refused {
        batch: Vec<Entry>,
        at: usize,
        error: StoreError,
    },
}

/// Applies every entry of `batch` in one transaction without savepoints;
/// at the first entry whose change fails, rolls everything back and gives
/// the batch back (the events already chained give their bodies back).
/// An event that cannot be written fails the whole commit, as a failed
/// commit does.
fn at_once(c: &mut Connection, start: &Head, batch: Vec<Entry>) -> Result<AtOnce> {
    let tx = c.transaction()?;
    let mut head = start.clone();
    let mut done: Vec<(Option<Mutation>, Committed)> = Vec::with_capacity(batch.len());
    let mut rest = batch.into_iter();
    while let Some(entry) = rest.next() {
        let (revocation_seq, generation) = match change(&tx, entry.mutation.as_ref()) {
            Ok(c) => c,
            Err(error) => {
                drop(tx);
                let at = done.len();
                let mut back: Vec<Entry> = done
                    .into_iter()
                    .map(|(mutation, c)| Entry {
                        mutation,
                        events: c.events.into_iter().map(|e| e.body).collect(),
                    })
                    .collect();
                back.push(entry);
                back.extend(rest);
                return Ok(AtOnce::Refused {
                    batch: back,
                    at,
                    error,
                });
            }
        };
        let committed = Committed {
            events: chain(&tx, &mut head, entry.events)?,
            revocation_seq,
            generation,
        };
        done.push((entry.mutation, committed));
    }
    let marks = super::Marks::read(&tx, head.seq)?;
    tx.commit()?;
    let results = done.into_iter().map(|(_, c)| Ok(c)).collect();
    Ok(AtOnce::Committed(results, head, marks))
}

/// Applies an entry: its change, then its events chained.
fn apply_entry(tx: &Connection, head: &mut Head, entry: Entry) -> Result<Committed> {
    let (revocation_seq, generation) = change(tx, entry.mutation.as_ref())?;
    Ok(Committed {
        events: chain(tx, head, entry.events)?,
        revocation_seq,
        generation,
    })
}

/// Appends `events` to the chain after `head`.
fn chain(
    tx: &Connection,
    head: &mut Head,
    events: Vec<mandate_core::audit::EventBody>,
) -> Result<Vec<mandate_core::audit::ChainedEvent>> {
    events
        .into_iter()
        .map(|body| append_event(tx, head, body))
        .collect()
}

/// Applies an entry's change: the revocation sequence number it wrote, and
/// the registry's new generation if it changed the registry.
fn change(tx: &Connection, m: Option<&Mutation>) -> Result<(Option<u64>, Option<u64>)> {
    let Some(m) = m else {
        return Ok((None, None));
    };
    let revocation_seq = apply(tx, m)?;
    let generation = match m.change() {
        crate::Change::Registry => Some(tx.query_row(
            "UPDATE generation SET value = value + 1 WHERE id = 1 RETURNING value",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64),
        _ => None,
    };
    Ok((revocation_seq, generation))
}

pub(super) fn apply(tx: &Connection, m: &Mutation) -> Result<Option<u64>> {
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
                    json(&ToolConfig { proxy: t.proxy.clone(), postgres: t.postgres.clone(), mcp: t.mcp.clone(), env: t.env.clone() })],
            )?;
        }
        Mutation::ReplaceAgent(a) => {
            let n = tx.execute(
                "UPDATE agents SET owner = ?3, purpose = ?4, envelope = ?5 WHERE tenant = ?1 AND name = ?2",
                params![a.tenant, a.name, a.owner, a.purpose, json(&a.envelope)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("agent `{}`", a.name)));
            }
        }
        Mutation::ReplaceTool(t) => {
            let n = tx.execute(
                "UPDATE tools SET audience = ?3, actions = ?4, labels = ?5, risk = ?6, max_ttl_secs = ?7, provider = ?8, alg = ?9, config = ?10 WHERE tenant = ?1 AND name = ?2",
                params![t.tenant, t.name, t.audience, json(&t.actions), json(&t.labels), t.risk, t.max_ttl_secs as i64, t.provider.as_str(), t.alg.as_str(),
                    json(&ToolConfig { proxy: t.proxy.clone(), postgres: t.postgres.clone(), mcp: t.mcp.clone(), env: t.env.clone() })],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("tool `{}`", t.name)));
            }
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
        Mutation::DeleteAdminToken { id } => {
            let n = tx.execute("DELETE FROM admin_tokens WHERE id = ?1", params![id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("admin credential `{id}`")));
            }
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
        Mutation::Unrevoked {
            keys,
            issued_at,
            now,
        } => {
            let mut rows = Vec::new();
            let mut by_key =
                tx.prepare_cached("SELECT key, until FROM revocations WHERE key = ?1")?;
            for k in keys {
                for r in by_key.query_map([k], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))? {
                    rows.push(r?);
                }
            }
            let mut kill = tx.prepare_cached(
                "SELECT key, until FROM revocations WHERE key LIKE 'everything:%'",
            )?;
            for r in kill.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))? {
                rows.push(r?);
            }
            if let Some(k) = crate::refused_by(rows, keys, *issued_at, *now) {
                return Err(StoreError::Revoked(k));
            }
        }
        Mutation::FewerChildren { parent, max } => {
            let n: i64 = tx
                .prepare_cached("SELECT count(*) FROM runs WHERE parent = ?1")?
                .query_row([parent], |r| r.get(0))?;
            if n as u64 >= *max {
                return Err(crate::limit_of_children(parent, n as u64));
            }
        }
        Mutation::FirstUse { uses, now } => {
            // Each use first clears what expired (the leftmost rows: both
            // tables are in expiry order), so they hold about what is
            // live without a sweeper.
            for clear in [
                "DELETE FROM temp.live_uses WHERE until < ?1",
                "DELETE FROM main.one_time_uses WHERE until < ?1",
            ] {
                tx.prepare_cached(clear)?.execute([*now as i64])?;
            }
            // The latest `now` that cleared (changes once a second).
            tx.prepare_cached(
                "UPDATE meta SET value = ?2 WHERE key = ?1 AND CAST(value AS INTEGER) < ?3",
            )?
            .execute(params![crate::USES_CLEARED, now.to_string(), *now as i64])?;
            // Used before: the key is live in memory (schema v11). Then
            // kept on disk after the others of its expiry.
            let mut live = tx.prepare_cached(
                "INSERT INTO temp.live_uses (until, key) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?;
            let mut keep = tx.prepare_cached(
                "INSERT INTO main.one_time_uses (until, n, key) VALUES (?1, (SELECT coalesce(max(n), 0) + 1 FROM main.one_time_uses WHERE until = ?1), ?2)",
            )?;
            for u in uses {
                let at = params![u.until as i64, u.key];
                if live.execute(at)? == 0 {
                    return Err(StoreError::Replayed(u.key.clone()));
                }
                keep.execute(at)?;
            }
        }
        // One process on the file: its window is the only one (a change
        // at a restart is covered by the boot's nonces). What `FirstUse`
        // keeps up to date starts here.
        Mutation::KeepUses { .. } => {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, '0') ON CONFLICT (key) DO NOTHING",
                [crate::USES_CLEARED],
            )?;
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
