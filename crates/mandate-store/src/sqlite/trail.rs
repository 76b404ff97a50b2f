//! The audit table (the trail): appending chained events (the chain rule is the
//! core's), querying and verifying.

use rusqlite::Connection;
use rusqlite::OptionalExtension as _;

use mandate_core::audit::{self, ChainVerifier, ChainedEvent, EventBody};

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

pub(super) fn append_event(
    tx: &Connection,
    head: &mut Head,
    mut body: EventBody,
) -> Result<ChainedEvent> {
    // Times never go back along the chain (events made concurrently commit
    // in any order; a clock may step back): an event is recorded no earlier
    // than its predecessor, so "since T" is a range of sequence numbers.
    body.time_ms = body.time_ms.max(head.time_ms);
    let (ev, json) = audit::chain_with_body(head.seq, &head.hash, body);
    let text = String::from_utf8(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let row = audit::stored_row(&ev, &text);
    tx.prepare_cached(&format!(
        "INSERT INTO audit ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        audit_columns()
    ))?
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

/// The first event at or after `t` (ms), by binary search over sequence
/// numbers (times never go back along them). A probe reads the first row
/// at or after its number, so a trail with a row missing (tampered: `audit
/// verify` names it) is still searched.
fn first_at_or_after(c: &Connection, t: u64) -> Result<Option<u64>> {
    let head: Option<i64> = c
        .prepare_cached("SELECT max(seq) FROM audit")?
        .query_row([], |r| r.get(0))?;
    let Some(head) = head.and_then(|h| u64::try_from(h).ok()) else {
        return Ok(None);
    };
    let mut time_of =
        c.prepare_cached("SELECT time_ms FROM audit WHERE seq >= ?1 ORDER BY seq ASC LIMIT 1")?;
    let mut at = |seq: u64| -> Result<i64> {
        let ms: Option<i64> = time_of.query_row([seq as i64], |r| r.get(0)).optional()?;
        Ok(ms.unwrap_or(i64::MAX))
    };
    let t = i64::try_from(t).unwrap_or(i64::MAX);
    if at(head)? < t {
        return Ok(None);
    }
    let (mut lo, mut hi) = (1, head);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at(mid)? >= t {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(lo))
}

impl SqliteStore {
    pub(super) fn audit_query_impl(&self, f: &AuditFilter) -> Result<Vec<ChainedEvent>> {
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
        // The partial indexes (schema v8) serve a query whose WHERE has
        // their condition word for word.
        if f.decision.as_deref().is_some_and(|d| d != "allow") {
            sql.push_str(" AND decision <> 'allow'");
        }
        if f.event_type
            .as_deref()
            .is_some_and(|t| t != "token.exchange")
        {
            sql.push_str(" AND event_type <> 'token.exchange'");
        }
        if let Some(t) = f.since_ms {
            // Times do not go back along the chain (`append_event`), so the
            // events since `t` are those from the first one at or after it:
            // a sequence range the filter's index serves directly.
            let Some(first) = first_at_or_after(&c, t)? else {
                return Ok(Vec::new());
            };
            args.push((first as i64).into());
            sql.push_str(&format!(" AND seq >= ?{}", args.len()));
            // Rows written before times were kept in order (schema < 8).
            args.push((t as i64).into());
            sql.push_str(&format!(" AND time_ms >= ?{}", args.len()));
        }
        if let Some(s) = f.before_seq {
            args.push((s as i64).into());
            sql.push_str(&format!(" AND seq < ?{}", args.len()));
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
            .prepare_cached(&sql)?
            .query_map(rusqlite::params_from_iter(args), row_event)?
            .collect::<rusqlite::Result<_>>()?;
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    pub(super) fn audit_verify_impl(&self, anchors: Vec<audit::Anchor>) -> Result<VerifyReport> {
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
}
