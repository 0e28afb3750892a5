//! [`super::Conn`] on SQLite: values as SQLite's own storage classes.

use super::{DbError, Result, Row, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};

pub(super) fn err(e: rusqlite::Error) -> DbError {
    DbError::Sql(e.to_string())
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::List(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "a list is a PostgreSQL array parameter: SQLite has none".into(),
                ))
            }
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        // SQLite keeps what it was given; text that is not UTF-8 reads as its bytes.
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_string()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

pub(super) fn execute(c: &rusqlite::Connection, sql: &str, values: &[Value]) -> Result<u64> {
    let mut stmt = c.prepare_cached(sql).map_err(err)?;
    stmt.execute(rusqlite::params_from_iter(values))
        .map(|n| n as u64)
        .map_err(err)
}

pub(super) fn query_each(
    c: &rusqlite::Connection,
    sql: &str,
    values: &[Value],
    mut f: impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    let mut stmt = c.prepare_cached(sql).map_err(err)?;
    let columns = stmt.column_count();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(values))
        .map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let mut row = Vec::with_capacity(columns);
        for i in 0..columns {
            row.push(value(r.get_ref(i).map_err(err)?));
        }
        f(Row(row))?;
    }
    Ok(())
}
