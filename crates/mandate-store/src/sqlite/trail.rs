//! The audit table (the trail): appending chained events (the chain rule is the
//! core's), querying and verifying.

use rusqlite::Connection;

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
    head: &mut (u64, String),
    body: EventBody,
) -> Result<ChainedEvent> {
    let (ev, json) = audit::chain_with_body(head.0, &head.1, body);
    let text = String::from_utf8(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let row = audit::stored_row(&ev, &text);
    tx.prepare_cached(&format!(
        "INSERT INTO audit ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        audit_columns()
    ))?
    .execute(rusqlite::params_from_iter(row.into_iter().map(to_sql)))?;
    head.1 = ev.hash.clone();
    head.0 = ev.seq;
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
