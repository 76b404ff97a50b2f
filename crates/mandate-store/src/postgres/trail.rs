//! The audit table (the trail): appending chained events (the chain rule is
//! the core's, so hashes are the SQLite backend's), querying and verifying.

use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use mandate_core::audit::{self, ChainedEvent, EventBody};

use super::Head;
use super::pool::Session;
use super::rows::{Value, int, json, opt_int, text};
use crate::{AuditFilter, Result, StoreError, VerifyReport};

/// The audit table's columns, in [`audit::AuditColumn::ALL`] order.
fn audit_columns() -> String {
    audit::AuditColumn::ALL
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How far back an event's time may be moved to keep the trail in time
/// order (events committed out of the order they were made in).
const REORDER_TOLERANCE_MS: u64 = 5_000;

/// The chain's last event, from the database (in a commit: after the
/// chain lock).
pub(super) fn read_head(s: &mut Session<'_>) -> Result<Head> {
    let row = s.query_opt(
        "SELECT seq, hash, time_ms FROM audit ORDER BY seq DESC LIMIT 1",
        &[],
    )?;
    Ok(match row {
        Some(r) => Head {
            seq: int(&r, 0)?,
            hash: text(&r, 1)?,
            time_ms: super::rows::i64_col(&r, 2)?.max(0) as u64,
        },
        None => Head {
            seq: 0,
            hash: audit::GENESIS.to_owned(),
            time_ms: 0,
        },
    })
}

/// Chains `body` after `head` and stores it (as the SQLite backend does:
/// a time a little before the head's is moved up to it, a clock step
/// further back is kept and noted in `audit_time_steps`).
pub(super) fn append_event(
    s: &mut Session<'_>,
    head: &mut Head,
    mut body: EventBody,
) -> Result<ChainedEvent> {
    if body.time_ms < head.time_ms {
        if head.time_ms - body.time_ms <= REORDER_TOLERANCE_MS {
            body.time_ms = head.time_ms;
        } else {
            s.execute(
                "INSERT INTO audit_time_steps (seq) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&(head.seq as i64)],
            )?;
        }
    }
    let (ev, json) = audit::chain_with_body(head.seq, &head.hash, body);
    let text = String::from_utf8(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let row: Vec<Value> = audit::stored_row(&ev, &text)
        .into_iter()
        .map(Value::from)
        .collect();
    let params: Vec<&(dyn ToSql + Sync)> = row.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    s.execute(
        &format!(
            "INSERT INTO audit ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            audit_columns()
        ),
        &params,
    )?;
    head.hash = ev.hash.clone();
    head.seq = ev.seq;
    head.time_ms = ev.body.time_ms;
    Ok(ev)
}

fn row_event(r: &Row) -> Result<ChainedEvent> {
    Ok(ChainedEvent {
        seq: int(r, 0)?,
        prev_hash: text(r, 1)?,
        hash: text(r, 2)?,
        body: json(r, 3)?,
    })
}

/// The last time step: events up to it may be out of time order; 0 when
/// there is none.
fn last_time_step(s: &mut Session<'_>) -> Result<u64> {
    let r = s.query_one("SELECT coalesce(max(seq), 0) FROM audit_time_steps", &[])?;
    Ok(u64::try_from(super::rows::i64_col(&r, 0)?).unwrap_or(0))
}

/// The first event after `from` at or after `t` (ms), by binary search
/// over sequence numbers (times do not go back after the last step). A
/// probe reads the first row at or after its number, so a trail with a
/// row missing is still searched.
fn first_at_or_after(s: &mut Session<'_>, from: u64, t: u64) -> Result<Option<u64>> {
    let head = s.query_one("SELECT max(seq) FROM audit", &[])?;
    let Some(head) = opt_int(&head, 0)? else {
        return Ok(None);
    };
    let at = |seq: u64| -> Result<i64> {
        let r = s.query_opt(
            "SELECT time_ms FROM audit WHERE seq >= $1 ORDER BY seq ASC LIMIT 1",
            &[&(seq as i64)],
        )?;
        Ok(match r {
            Some(r) => super::rows::i64_col(&r, 0)?,
            None => i64::MAX,
        })
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

fn seq_value(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The events matching `f` (but its `since`) in `range`, at most `limit`:
/// the newest, or the oldest after `after_seq`. Sorted by seq. Values are
/// parameters only; the SQL text depends on which filters are set.
fn query_range(
    s: &mut Session<'_>,
    f: &AuditFilter,
    range: Option<Range>,
    limit: usize,
) -> Result<Vec<ChainedEvent>> {
    let mut sql = String::from("SELECT seq, prev_hash, hash, body FROM audit WHERE true");
    let mut args: Vec<Value> = Vec::new();
    let mut push = |cond: &str, v: Value, sql: &mut String| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ${}", args.len()));
    };
    for (col, v) in [
        ("tenant", &f.tenant),
        ("agent", &f.agent),
        ("run", &f.run),
        ("principal", &f.principal),
        ("tool", &f.tool),
        ("decision", &f.decision),
        ("event_type", &f.event_type),
    ] {
        if let Some(v) = v {
            push(&format!("{col} ="), Value::Text(v.clone()), &mut sql);
        }
    }
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
        push(&format!("seq {op}"), seq_value(n), &mut sql);
    }
    if let Some(t) = time {
        push("time_ms >=", seq_value(t), &mut sql);
    }
    // The partial indexes serve a query whose WHERE has their condition
    // word for word.
    if f.decision.as_deref().is_some_and(|d| d != "allow") {
        sql.push_str(" AND decision <> 'allow'");
    }
    if f.event_type
        .as_deref()
        .is_some_and(|t| t != "token.exchange")
    {
        sql.push_str(" AND event_type <> 'token.exchange'");
    }
    let order = if f.after_seq.is_some() { "ASC" } else { "DESC" };
    args.push(Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(" ORDER BY seq {order} LIMIT ${}", args.len()));
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let mut out = s
        .query(&sql, &params)?
        .iter()
        .map(row_event)
        .collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// Audit events matching `f`, in sequence order.
pub(super) fn query(s: &mut Session<'_>, f: &AuditFilter) -> Result<Vec<ChainedEvent>> {
    let limit = f.limit.unwrap_or(1000).min(100_000) as usize;
    let Some(t) = f.since_ms else {
        return query_range(s, f, None, limit);
    };
    // Since `t`: in time order after the last step, a sequence range from
    // the first event at or after `t`; up to the step, by time.
    let step = last_time_step(s)?;
    let ordered = first_at_or_after(s, step, t)?.map(|first| Range::From(first, t));
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
        out.extend(query_range(s, f, Some(r), limit - out.len())?);
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// Rows read per page while verifying.
const PAGE: i64 = 4096;

/// A stored column as the verifier sees it.
fn cell(r: &Row, i: usize) -> audit::Cell {
    let ty = r.columns().get(i).map(|c| c.type_().clone());
    match ty {
        Some(Type::INT8) => match r.try_get::<_, Option<i64>>(i) {
            Ok(Some(n)) => audit::Cell::Integer(n),
            Ok(None) => audit::Cell::Null,
            Err(_) => audit::Cell::Other("value that cannot be read"),
        },
        Some(Type::TEXT | Type::VARCHAR) => match r.try_get::<_, Option<String>>(i) {
            Ok(Some(t)) => audit::Cell::Text(t),
            Ok(None) => audit::Cell::Null,
            Err(_) => audit::Cell::Other("value that cannot be read"),
        },
        _ => audit::Cell::Other("value of another type"),
    }
}

/// Examines `rows` on several threads (the costly part: parse, hash,
/// compare), in order.
fn examine(rows: Vec<audit::Row>) -> Result<Vec<audit::Examined>> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let chunk = rows.len().div_ceil(workers).max(256);
    let mut chunks: Vec<Vec<audit::Row>> = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        chunks.push(rows.by_ref().take(chunk).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                scope.spawn(move || c.into_iter().map(audit::Examined::of).collect::<Vec<_>>())
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join().map_err(|_| {
                    StoreError::Db("audit verification stopped unexpectedly".into())
                })?,
            );
        }
        Ok(out)
    })
}

/// Verifies the whole trail in one snapshot: read in pages (keyset, by
/// seq), examined in parallel, linked in order by one
/// [`audit::ChainVerifier`].
pub(super) fn verify(
    s: &mut Session<'_>,
    from: Option<audit::Anchor>,
    anchors: Vec<audit::Anchor>,
) -> Result<VerifyReport> {
    s.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", |s| {
        let sql = format!(
            "SELECT {} FROM audit WHERE seq > $1 ORDER BY seq ASC LIMIT $2",
            audit_columns()
        );
        let (mut v, mut after) = match &from {
            None => (audit::ChainVerifier::anchored(anchors.clone()), i64::MIN),
            Some(f) => {
                let row =
                    s.query_opt("SELECT hash FROM audit WHERE seq = $1", &[&(f.seq as i64)])?;
                let stored = row.map(|r| text(&r, 0)).transpose()?;
                if let Some(b) = audit::resume_point_break(f, stored.as_deref()) {
                    return Ok(VerifyReport {
                        verified: f.seq.saturating_sub(1),
                        head: (f.seq.saturating_sub(1), String::new()),
                        first_break: Some(b),
                    });
                }
                let seq = i64::try_from(f.seq).map_err(|_| StoreError::Corrupt("seq".into()))?;
                (audit::ChainVerifier::resumed(f, anchors.clone()), seq)
            }
        };
        let mut outcome = Ok(());
        'pages: loop {
            let rows = s.query(&sql, &[&after, &PAGE])?;
            let Some(last) = rows.last() else { break };
            after = super::rows::i64_col(last, 0)?;
            let batch: Vec<audit::Row> = rows
                .iter()
                .map(|r| std::array::from_fn(|i| cell(r, i)))
                .collect();
            let full = batch.len() as i64 == PAGE;
            for e in examine(batch)? {
                outcome = v.link(e);
                if outcome.is_err() {
                    break 'pages;
                }
            }
            if !full {
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
    })
}
