//! The audit table (the trail): appending chained events (the chain rule is the
//! core's), querying and verifying.

use rusqlite::Connection;
use rusqlite::OptionalExtension as _;

use mandate_core::audit::{self, ChainedEvent, EventBody};

use super::*;
use crate::{AuditFilter, Result, StoreError, VerifyReport};

/// The audit table's columns, in [`audit::AuditColumn::ALL`] order.
pub(super) fn audit_columns() -> String {
    audit::AuditColumn::ALL
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn to_sql(c: audit::Cell) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match c {
        audit::Cell::Null | audit::Cell::Other(_) => Value::Null,
        audit::Cell::Integer(n) => Value::Integer(n),
        audit::Cell::Text(t) => Value::Text(t),
    }
}

pub(super) fn from_sql(v: rusqlite::types::ValueRef<'_>) -> audit::Cell {
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

/// How far back an event's time may be moved to keep the trail in time
/// order (events committed out of the order they were made in).
const REORDER_TOLERANCE_MS: u64 = 5_000;

pub(super) fn append_event(
    tx: &Connection,
    head: &mut Head,
    mut body: EventBody,
) -> Result<ChainedEvent> {
    // Times do not go back along the chain, so "since T" is a range of
    // sequence numbers. Events made concurrently commit in any order: one
    // a little earlier than its predecessor is recorded at its
    // predecessor's time. A clock that stepped back further keeps its own
    // time (a clock that jumped ahead must not stamp every later event),
    // and the step is noted: events up to it are searched by time.
    if body.time_ms < head.time_ms {
        if head.time_ms - body.time_ms <= REORDER_TOLERANCE_MS {
            body.time_ms = head.time_ms;
        } else {
            tx.prepare_cached("INSERT OR IGNORE INTO audit_time_steps (seq) VALUES (?1)")?
                .execute([head.seq as i64])?;
        }
    }
    let (ev, json) = audit::chain_with_body(head.seq, &head.hash, body);
    let text = String::from_utf8(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let row = audit::stored_row(&ev, &text);
    static INSERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let insert = INSERT.get_or_init(|| {
        format!(
            "INSERT INTO audit ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            audit_columns()
        )
    });
    tx.prepare_cached(insert)?
        .execute(rusqlite::params_from_iter(row.into_iter().map(to_sql)))?;
    head.hash = ev.hash.clone();
    head.seq = ev.seq;
    head.time_ms = ev.body.time_ms;
    Ok(ev)
}

pub(super) fn row_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainedEvent> {
    let body: String = r.get(3)?;
    Ok(ChainedEvent {
        seq: r.get::<_, i64>(0)? as u64,
        prev_hash: r.get(1)?,
        hash: r.get(2)?,
        body: from_json(&body)?,
    })
}

/// The last time step (`audit_time_steps`): events up to it may be out of
/// time order; 0 when there is none.
fn last_time_step(c: &Connection) -> Result<u64> {
    let s: i64 = c
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM audit_time_steps")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(s).unwrap_or(0))
}

/// The first event after `from` at or after `t` (ms), by binary search over
/// sequence numbers (times do not go back after the last step). A probe
/// reads the first row at or after its number, so a trail with a row
/// missing (tampered: `audit verify` names it) is still searched.
fn first_at_or_after(c: &Connection, from: u64, t: u64) -> Result<Option<u64>> {
    let head: Option<i64> = c
        .prepare_cached("SELECT max(seq) FROM audit")?
        .query_row([], |r| r.get(0))?;
    let Some(head) = head.and_then(|h| u64::try_from(h).ok()) else {
        return Ok(None);
    };
    let mut time_of =
        c.prepare_cached("SELECT time_ms FROM audit WHERE seq >= ?1 ORDER BY seq ASC LIMIT 1")?;
    let at = |seq: u64| -> Result<i64> {
        let ms: Option<i64> = time_of.query_row([seq as i64], |r| r.get(0)).optional()?;
        Ok(ms.unwrap_or(i64::MAX))
    };
    crate::search::first_at_or_after(from, head, t, at)
}

/// Which part of the trail a query reads (for `since`).
#[derive(Clone, Copy)]
enum Range {
    /// From this seq on (in time order), at or after the time.
    From(u64, u64),
    /// Up to this seq (perhaps out of time order), at or after the time.
    UpTo(u64, u64),
}

/// The events matching `f` (but its `since`) in `range`, at most `limit`:
/// the newest, or the oldest after `after_seq`. Sorted by seq.
fn query_range(
    c: &Connection,
    f: &AuditFilter,
    range: Option<Range>,
    limit: usize,
) -> Result<Vec<ChainedEvent>> {
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
    // The partial indexes (schema v8) serve a query whose WHERE has their
    // condition word for word.
    if f.decision.as_deref().is_some_and(|d| d != "allow") {
        sql.push_str(" AND decision <> 'allow'");
    }
    if f.event_type
        .as_deref()
        .is_some_and(|t| t != "token.exchange")
    {
        sql.push_str(" AND event_type <> 'token.exchange'");
    }
    let seq = |n: u64| rusqlite::types::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let (bound, time) = match range {
        Some(Range::From(first, t)) => (Some((">=", first)), Some(t)),
        Some(Range::UpTo(step, t)) => (Some(("<=", step)), Some(t)),
        None => (None, None),
    };
    for (op, n) in [
        bound,
        f.before_seq.map(|b| ("<", b)),
        f.after_seq.map(|a| (">", a)),
    ]
    .into_iter()
    .flatten()
    {
        args.push(seq(n));
        sql.push_str(&format!(" AND seq {op} ?{}", args.len()));
    }
    if let Some(t) = time {
        args.push(seq(t));
        sql.push_str(&format!(" AND time_ms >= ?{}", args.len()));
    }
    let order = if f.after_seq.is_some() { "ASC" } else { "DESC" };
    sql.push_str(&format!(" ORDER BY seq {order} LIMIT {limit}"));
    let mut out: Vec<ChainedEvent> = c
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), row_event)?
        .collect::<rusqlite::Result<_>>()?;
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

impl SqliteStore {
    pub(super) fn audit_query_impl(&self, f: &AuditFilter) -> Result<Vec<ChainedEvent>> {
        let c = lock(&self.reader);
        let limit = f.limit.unwrap_or(1000).min(100_000) as usize;
        let Some(t) = f.since_ms else {
            return query_range(&c, f, None, limit).map(|v| self.durable_only(v));
        };
        // Since `t`: in time order after the last step, a sequence range
        // from the first event at or after `t`; up to the step, by time.
        let step = last_time_step(&c)?;
        let ordered = first_at_or_after(&c, step, t)?.map(|first| Range::From(first, t));
        let unordered = (step > 0).then_some(Range::UpTo(step, t));
        // Newest first: the ordered part, then the older part if room is
        // left; oldest first (`after_seq`): the other way round.
        let parts = if f.after_seq.is_some() {
            [unordered, ordered]
        } else {
            [ordered, unordered]
        };
        let mut out = Vec::new();
        for r in parts.into_iter().flatten() {
            if out.len() >= limit {
                break;
            }
            out.extend(query_range(&c, f, Some(r), limit - out.len())?);
        }
        out.sort_by_key(|e| e.seq);
        Ok(self.durable_only(out))
    }

    /// Events not yet durable are left out (a page may come short by what
    /// one sync covers; the next page has them).
    fn durable_only(&self, mut events: Vec<ChainedEvent>) -> Vec<ChainedEvent> {
        let durable = self.durable().audit;
        events.retain(|e| e.seq <= durable);
        events
    }

    /// Verifies the whole trail: rows are read in order here, examined in
    /// parallel by worker threads (the body parsed and re-serialised, the
    /// hash recomputed, the copied columns compared: what costs), and
    /// linked in order by one [`audit::ChainVerifier`] (issue 12: `audit
    /// verify` was one thread).
    pub(super) fn audit_verify_impl(
        &self,
        from: Option<audit::Anchor>,
        anchors: Vec<audit::Anchor>,
    ) -> Result<VerifyReport> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::mpsc;
        const BATCH: usize = 2048;
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let c = lock(&self.reader);
        // From a checkpoint verified before: the event it names must still
        // have its hash; the rows after it are read, not those before.
        if let Some(f) = &from {
            let stored: Option<String> = c
                .query_row(
                    "SELECT hash FROM audit WHERE seq = ?1",
                    [f.seq as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(b) = audit::resume_point_break(f, stored.as_deref()) {
                return Ok(VerifyReport {
                    verified: f.seq.saturating_sub(1),
                    head: (f.seq.saturating_sub(1), String::new()),
                    first_break: Some(b),
                });
            }
        }
        let after = from.as_ref().map_or(-1, |f| f.seq as i64);
        let mut stmt = c.prepare(&format!(
            "SELECT {} FROM audit WHERE seq > ?1 AND seq <= ?2 ORDER BY seq ASC",
            audit_columns()
        ))?;
        let mut rows = stmt.query([after, self.durable().audit as i64])?;
        let stop = AtomicBool::new(false);
        let (job_tx, job_rx) = mpsc::sync_channel::<(usize, Vec<audit::Row>)>(workers * 2);
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = mpsc::sync_channel::<(usize, Vec<audit::Examined>)>(workers * 2);
        let (read, (outcome, head)) = std::thread::scope(|scope| {
            for _ in 0..workers {
                let (job_rx, done_tx) = (&job_rx, done_tx.clone());
                scope.spawn(move || {
                    // After the linker stops (a break found), jobs are
                    // still taken, unexamined, until the reader stops, so
                    // it never waits on a full queue nobody empties.
                    let mut linking = true;
                    loop {
                        let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((n, batch)) = job else { break };
                        if linking {
                            let examined = batch.into_iter().map(audit::Examined::of).collect();
                            linking = done_tx.send((n, examined)).is_ok();
                        }
                    }
                });
            }
            drop(done_tx);
            let stop = &stop;
            let linker = scope.spawn(move || {
                let mut v = match &from {
                    None => audit::ChainVerifier::anchored(anchors),
                    Some(f) => audit::ChainVerifier::resumed(f, anchors),
                };
                let mut waiting = std::collections::BTreeMap::new();
                let mut next = 0usize;
                let mut outcome = Ok(());
                'all: for (n, batch) in done_rx {
                    waiting.insert(n, batch);
                    while let Some(batch) = waiting.remove(&next) {
                        next += 1;
                        for e in batch {
                            outcome = v.link(e);
                            if outcome.is_err() {
                                stop.store(true, Ordering::Relaxed);
                                break 'all;
                            }
                        }
                    }
                }
                let outcome = outcome.and_then(|()| v.finish());
                let (seq, hash) = v.head();
                (outcome, (seq, hash.to_owned()))
            });
            let read = (|| -> Result<()> {
                let mut batch = Vec::with_capacity(BATCH);
                let mut n = 0;
                while let Some(r) = rows.next()? {
                    let mut row: audit::Row = Default::default();
                    for (i, cell) in row.iter_mut().enumerate() {
                        *cell = from_sql(r.get_ref(i)?);
                    }
                    batch.push(row);
                    if batch.len() == BATCH {
                        if stop.load(Ordering::Relaxed)
                            || job_tx.send((n, std::mem::take(&mut batch))).is_err()
                        {
                            return Ok(());
                        }
                        n += 1;
                        batch.reserve(BATCH);
                    }
                }
                if !batch.is_empty() {
                    let _ = job_tx.send((n, batch));
                }
                Ok(())
            })();
            drop(job_tx);
            let linked = linker.join().unwrap_or_else(|_| {
                (
                    Err(audit::ChainBreak {
                        seq: 0,
                        column: None,
                        reason: "verification stopped unexpectedly".into(),
                    }),
                    (0, String::new()),
                )
            });
            (read, linked)
        });
        read?;
        Ok(VerifyReport {
            verified: match &outcome {
                Ok(n) => *n,
                Err(b) => b.seq.saturating_sub(1),
            },
            head,
            first_break: outcome.err(),
        })
    }
}
