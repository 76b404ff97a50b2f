//! Reading columns (never panicking: a column that does not decode is a
//! [`StoreError::Corrupt`]) and a parameter type for statements built at
//! run time.

use std::error::Error as StdError;

use bytes::BytesMut;
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::{Result, StoreError};

fn corrupt(r: &Row, i: usize, e: impl std::fmt::Display) -> StoreError {
    let name = r.columns().get(i).map_or("?", |c| c.name());
    StoreError::Corrupt(format!("column `{name}`: {e}"))
}

/// A text column.
pub(super) fn text(r: &Row, i: usize) -> Result<String> {
    r.try_get(i).map_err(|e| corrupt(r, i, e))
}

/// A nullable text column.
pub(super) fn opt_text(r: &Row, i: usize) -> Result<Option<String>> {
    r.try_get(i).map_err(|e| corrupt(r, i, e))
}

/// An integer column, as the SQLite backend reads it (`as u64`).
pub(super) fn int(r: &Row, i: usize) -> Result<u64> {
    Ok(r.try_get::<_, i64>(i).map_err(|e| corrupt(r, i, e))? as u64)
}

/// A signed integer column.
pub(super) fn i64_col(r: &Row, i: usize) -> Result<i64> {
    r.try_get(i).map_err(|e| corrupt(r, i, e))
}

/// A nullable integer column.
pub(super) fn opt_int(r: &Row, i: usize) -> Result<Option<u64>> {
    Ok(r.try_get::<_, Option<i64>>(i)
        .map_err(|e| corrupt(r, i, e))?
        .map(|x| x as u64))
}

/// A binary column.
pub(super) fn bytes(r: &Row, i: usize) -> Result<Vec<u8>> {
    r.try_get(i).map_err(|e| corrupt(r, i, e))
}

/// A text column holding JSON.
pub(super) fn json<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> Result<T> {
    let s: String = text(r, i)?;
    from_json(&s).map_err(|e| corrupt(r, i, e))
}

/// JSON text decoded, or why not.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A text column parsed into a kind (an enum), or a corruption error naming it.
pub(super) fn parse_col<T>(
    r: &Row,
    i: usize,
    what: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    let s = text(r, i)?;
    parse(&s).ok_or_else(|| {
        corrupt(
            r,
            i,
            format!(
                "unknown {what} `{}`",
                s.chars().take(32).collect::<String>()
            ),
        )
    })
}

/// A parameter of a statement built at run time, or an audit cell: an
/// integer, text, or NULL of whatever type the column has.
#[derive(Debug, Clone)]
pub(super) enum Value {
    /// NULL.
    Null,
    /// A BIGINT.
    Int(i64),
    /// TEXT.
    Text(String),
}

impl From<mandate_core::audit::Cell> for Value {
    fn from(c: mandate_core::audit::Cell) -> Self {
        use mandate_core::audit::Cell;
        match c {
            Cell::Null | Cell::Other(_) => Value::Null,
            Cell::Integer(n) => Value::Int(n),
            Cell::Text(t) => Value::Text(t),
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Text(t) => t.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value by the delegated `to_sql`.
        true
    }

    to_sql_checked!();
}
