//! [`super::Conn`] on PostgreSQL: `?N` placeholders rewritten to `$N`, and values encoded for
//! the type the server infers for each placeholder, decoded from whatever type a column has.

use super::{DbError, Result, Row, Value};
use ::postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use bytes::BytesMut;
use std::error::Error;

type BoxError = Box<dyn Error + Sync + Send>;

pub fn is_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

pub(super) fn connect(url: &str) -> Result<::postgres::Client> {
    ::postgres::Client::connect(url, ::postgres::NoTls).map_err(|e| DbError::Connect(e.to_string()))
}

pub(super) fn err(e: ::postgres::Error) -> DbError {
    // The server's own message (with its detail) says more than the client's summary.
    match e.as_db_error() {
        Some(db) => DbError::Sql(match db.detail() {
            Some(d) => format!("{}: {d}", db.message()),
            None => db.message().to_string(),
        }),
        None => DbError::Sql(e.to_string()),
    }
}

/// `sql` with SQLite's `?N` (and bare `?`, numbered in order) as PostgreSQL's `$N`; quoted text,
/// quoted names and comments are left as they are.
pub fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    let mut next = 0u32;
    while let Some((_, c)) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    // A doubled quote inside is an escaped one: it closes and opens again.
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek().map(|&(_, d)| d) == Some('-') => {
                out.push(c);
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut n = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    n.push(d);
                    chars.next();
                }
                out.push('$');
                if n.is_empty() {
                    next += 1;
                    out.push_str(&next.to_string());
                } else {
                    next = next.max(n.parse().unwrap_or(0));
                    out.push_str(&n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The schema, applied whole to a new database (see the file for how it differs from SQLite's).
pub const SCHEMA: &str = include_str!("../../migrations/postgres/0001_schema.sql");

/// The events partition holding `ts_ms`: its name and its range (a UTC calendar month).
pub fn month_partition(ts_ms: i64) -> (String, i64, i64) {
    const DAY: i64 = 86_400_000;
    let (y, m) = year_month(ts_ms.div_euclid(DAY));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (
        format!("events_{y:04}_{m:02}"),
        days_from_civil(y, m, 1) * DAY,
        days_from_civil(ny, nm, 1) * DAY,
    )
}

/// Make the month partition of each of `ts_ms` that is not there yet. Replicas may race to make
/// the same one: the advisory lock lets one make it, and the others find it made.
pub fn ensure_partitions(c: &mut super::Conn, ts_ms: impl IntoIterator<Item = i64>) -> Result<()> {
    let mut months: Vec<(String, i64, i64)> = ts_ms.into_iter().map(month_partition).collect();
    months.sort();
    months.dedup();
    for (name, from, to) in months {
        c.lock(PARTITION_LOCK)?;
        let made = c.batch(&format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF events FOR VALUES FROM ({from}) TO ({to})"
        ));
        c.unlock(PARTITION_LOCK)?;
        made?;
    }
    Ok(())
}

/// The advisory lock key under which partitions are made ("tally" and 1).
const PARTITION_LOCK: i64 = 0x7461_6c6c_7900_0001;

/// (year, month) of a day counted from 1970-01-01 (Howard Hinnant's civil-from-days).
fn year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// Days from 1970-01-01 to a civil date (the inverse of [`year_month`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn params(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

pub(super) fn execute(c: &mut ::postgres::Client, sql: &str, values: &[Value]) -> Result<u64> {
    let stmt = c.prepare(&placeholders(sql)).map_err(err)?;
    c.execute(&stmt, &params(values)).map_err(err)
}

pub(super) fn query_each(
    c: &mut ::postgres::Client,
    sql: &str,
    values: &[Value],
    mut f: impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    use ::postgres::fallible_iterator::FallibleIterator;
    let stmt = c.prepare(&placeholders(sql)).map_err(err)?;
    let mut rows = c
        .query_raw(&stmt, values.iter().map(|v| v as &(dyn ToSql + Sync)))
        .map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let mut row = Vec::with_capacity(r.len());
        for i in 0..r.len() {
            row.push(r.try_get::<_, Value>(i).map_err(err)?);
        }
        f(Row(row))?;
    }
    Ok(())
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        let wrong = || -> BoxError { format!("{} cannot be stored as {ty}", self.kind()).into() };
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i).map_err(|_| wrong())?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i).map_err(|_| wrong())?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => match i {
                0 | 1 => (*i == 1).to_sql(ty, out),
                _ => Err(wrong()),
            },
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT4) => (*i as f32).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Value::Real(r), &Type::FLOAT8) => r.to_sql(ty, out),
            (Value::Real(r), &Type::FLOAT4) => (*r as f32).to_sql(ty, out),
            (Value::Text(t), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                t.as_str().to_sql(ty, out)
            }
            (Value::Text(t), &Type::UNKNOWN) => t.as_str().to_sql(&Type::TEXT, out),
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            _ => Err(wrong()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::BOOL,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
            Type::BYTEA,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Value, BoxError> {
        Ok(match *ty {
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => Value::Blob(raw.to_vec()),
            _ => Value::Text(<&str>::from_sql(ty, raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
            || [
                Type::INT2,
                Type::INT4,
                Type::INT8,
                Type::OID,
                Type::BOOL,
                Type::FLOAT4,
                Type::FLOAT8,
                Type::NUMERIC,
                Type::BYTEA,
            ]
            .contains(ty)
    }
}

/// A `numeric` (what PostgreSQL's `sum` of a `bigint` column gives) in its binary form: digit
/// count, weight, sign and scale, then base-10000 digits. A whole number within `i64` reads as
/// an integer, anything else as a real.
fn numeric(raw: &[u8]) -> std::result::Result<Value, BoxError> {
    let word = |i: usize| -> std::result::Result<u16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "numeric cut short".into())
    };
    let (ndigits, weight, sign) = (word(0)? as usize, word(1)? as i16, word(2)?);
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let negative = sign == 0x4000;
    let mut int: Option<i128> = Some(0);
    let mut real = 0f64;
    for k in 0..ndigits {
        let d = word(4 + k)?;
        let power = i32::from(weight) - k as i32;
        real += f64::from(d) * 10_000f64.powi(power);
        int = match int {
            Some(acc) if power >= 0 => 10_000i128
                .checked_pow(power as u32)
                .and_then(|p| acc.checked_add(i128::from(d) * p)),
            // A fractional digit: an integer only if it is zero.
            Some(acc) if d == 0 => Some(acc),
            _ => None,
        };
    }
    let int = int
        .map(|i| if negative { -i } else { i })
        .and_then(|i| i64::try_from(i).ok());
    Ok(match int {
        Some(i) => Value::Int(i),
        None => Value::Real(if negative { -real } else { real }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_outside_quotes_and_comments() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?2 OR d = ?1"),
            "SELECT a FROM t WHERE b = $1 AND c = $2 OR d = $1"
        );
        assert_eq!(placeholders("VALUES (?, ?, ?)"), "VALUES ($1, $2, $3)");
        assert_eq!(
            placeholders("SELECT '?1', \"a?\", 'it''s ?' -- why?\n, ?3"),
            "SELECT '?1', \"a?\", 'it''s ?' -- why?\n, $3"
        );
    }

    #[test]
    fn months_of_partitions() {
        // 2026-12-01T08:00:00Z.
        let (name, from, to) = month_partition(1_796_112_000_000);
        assert_eq!(name, "events_2026_12");
        assert_eq!(from, 1_796_083_200_000);
        assert_eq!(to, 1_798_761_600_000);
        // The last millisecond of a month is in it; the next is in the next.
        assert_eq!(month_partition(to - 1).0, "events_2026_12");
        assert_eq!(month_partition(to).0, "events_2027_01");
        assert_eq!(month_partition(0).0, "events_1970_01");
        assert_eq!(
            month_partition(951_782_400_000).0,
            "events_2000_02",
            "2000-02-29"
        );
        assert_eq!(month_partition(-1).0, "events_1969_12");
    }

    #[test]
    fn numerics_read_as_integers_when_whole() {
        // 12345678 = [1234, 5678], weight 1; -0.5 = [5000], weight -1.
        let enc = |digits: &[u16], weight: i16, sign: u16, scale: u16| {
            let mut b = Vec::new();
            for w in [digits.len() as u16, weight as u16, sign, scale] {
                b.extend_from_slice(&w.to_be_bytes());
            }
            for d in digits {
                b.extend_from_slice(&d.to_be_bytes());
            }
            b
        };
        assert_eq!(
            numeric(&enc(&[1234, 5678], 1, 0, 0)).unwrap(),
            Value::Int(12_345_678)
        );
        assert_eq!(
            numeric(&enc(&[5000], -1, 0x4000, 1)).unwrap(),
            Value::Real(-0.5)
        );
        assert_eq!(numeric(&enc(&[], 0, 0, 0)).unwrap(), Value::Int(0));
        assert_eq!(numeric(&enc(&[1, 0], 5, 0, 0)).unwrap(), Value::Real(1e20));
        assert!(numeric(&[0, 1]).is_err());
    }
}
