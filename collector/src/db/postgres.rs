//! [`super::Conn`] on PostgreSQL: `?N` placeholders rewritten to `$N`, and values encoded for
//! the type the server infers for each placeholder, decoded from whatever type a column has.

use super::{DbError, Result, Row, Value};
use ::postgres::types::{to_sql_checked, FromSql, IsNull, Kind, ToSql, Type};
use bytes::BytesMut;
use std::error::Error;

type BoxError = Box<dyn Error + Sync + Send>;

pub fn is_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// `url` without its password, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// A client and the statements it has prepared, by their text: the collector runs the same few
/// statements over and over, and preparing one costs a round trip. A client whose connection
/// broke (the database restarted, a failover) connects again at its next use, and counts it
/// in `generation`, so that whoever held session state on it (advisory locks) can take it again.
pub struct Pg {
    pub client: ::postgres::Client,
    prepared: std::collections::HashMap<String, ::postgres::Statement>,
    url: String,
    /// Statements run on every new connection (settings).
    setup: String,
    pub generation: u64,
    /// A transaction is open (see [`Conn::batch`](super::Conn::batch)): a statement that fails
    /// on a broken connection then fails with it, since the transaction is gone.
    pub(super) in_transaction: bool,
}

/// Statements kept prepared per connection; past this (queries built per request, with
/// filters) the cache starts again.
const PREPARED_MAX: usize = 256;

impl Pg {
    fn prepare(&mut self, sql: &str) -> Result<::postgres::Statement> {
        self.reconnect_if_broken()?;
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(&placeholders(sql)).map_err(err)?;
        if self.prepared.len() >= PREPARED_MAX {
            self.prepared.clear();
        }
        self.prepared.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// A new connection in place of a broken one (its prepared statements and session state
    /// gone with it).
    pub(super) fn reconnect_if_broken(&mut self) -> Result<()> {
        if !self.client.is_closed() {
            return Ok(());
        }
        let mut client = client(&self.url).map_err(|e| DbError::Connect(e.to_string()))?;
        if !self.setup.is_empty() {
            client.batch_execute(&self.setup).map_err(err)?;
        }
        self.client = client;
        self.prepared.clear();
        self.generation += 1;
        self.in_transaction = false;
        Ok(())
    }

    /// Whether a read that just failed may run again at once on a new connection: the
    /// connection broke (the database restarted, or a failover), no transaction was open, and
    /// the statement only reads. Without this the first read of each connection after a
    /// restart failed, an API call's 500.
    fn may_read_again(&self, sql: &str) -> bool {
        self.client.is_closed() && !self.in_transaction && sql.trim_start().starts_with("SELECT")
    }

    /// Run `setup` now and on every new connection.
    pub(super) fn set_up(&mut self, setup: &str) -> Result<()> {
        self.setup = setup.to_string();
        self.client.batch_execute(setup).map_err(err)
    }
}

/// How long connecting may take when the URL does not say (`connect_timeout`): a database
/// host that does not answer must not hold a request, or a readiness check, for long.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn client(url: &str) -> std::result::Result<::postgres::Client, ::postgres::Error> {
    let mut config: ::postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.connect(::postgres::NoTls)
}

pub(super) fn connect(url: &str) -> Result<Box<Pg>> {
    client(url)
        .map(|client| {
            Box::new(Pg {
                client,
                prepared: Default::default(),
                url: url.to_string(),
                setup: String::new(),
                generation: 0,
                in_transaction: false,
            })
        })
        .map_err(|e| DbError::Connect(e.to_string()))
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

/// The schema's versions, in order: a new database is made by all of them, an older one
/// brought up to date by those after its version. The first is the schema whole (see it for
/// how it differs from SQLite's).
pub const MIGRATIONS: [(i64, &str); 3] = [
    (1, include_str!("../../migrations/postgres/0001_schema.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_events_without_foreign_key.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_users_under_teams.sql"),
    ),
];

/// The events partition holding `ts_ms`: its name (`events_YYYYMMDD`) and its range (a UTC
/// day). A day, so that retention, counted in days, drops whole partitions.
pub fn day_partition(ts_ms: i64) -> (String, i64, i64) {
    const DAY: i64 = 86_400_000;
    let day = ts_ms.div_euclid(DAY);
    let (y, m, d) = civil(day);
    (
        format!("events_{y:04}{m:02}{d:02}"),
        day * DAY,
        (day + 1) * DAY,
    )
}

/// The range of a partition named by [`day_partition`]; `None` for any other name.
pub fn partition_range(name: &str) -> Option<(i64, i64)> {
    let digits = name.strip_prefix("events_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits.get(r).and_then(|s| s.parse::<i64>().ok());
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (_, from, to) = day_partition(days_from_civil(y, m, d) * 86_400_000);
    (day_partition(from).0 == name).then_some((from, to))
}

/// Make the day partition of each of `ts_ms` that is not there yet; the names of those there
/// now. Replicas may race to make the same one: the advisory lock lets one make it, and the
/// others find it made. A day that cannot have its own partition (rows of it already sit in the
/// default partition) is left to the default one, and said.
pub fn ensure_partitions(
    c: &mut super::Conn,
    ts_ms: impl IntoIterator<Item = i64>,
) -> Result<Vec<String>> {
    let mut days: Vec<(String, i64, i64)> = ts_ms.into_iter().map(day_partition).collect();
    days.sort();
    days.dedup();
    let mut made = Vec::with_capacity(days.len());
    for (name, from, to) in days {
        c.lock(PARTITION_LOCK)?;
        let result = c.batch(&format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF events FOR VALUES FROM ({from}) TO ({to})"
        ));
        c.unlock(PARTITION_LOCK)?;
        if let Err(e) = result {
            crate::log::error(&format!(
                "database: events of {name} stay in events_default: {e}"
            ));
        }
        made.push(name);
    }
    Ok(made)
}

/// The advisory lock key under which partitions are made ("tally" and 1).
const PARTITION_LOCK: i64 = 0x7461_6c6c_7900_0001;

/// (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's civil-from-days).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days from 1970-01-01 to a civil date (the inverse of [`civil`]).
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

pub(super) fn execute(c: &mut Pg, sql: &str, values: &[Value]) -> Result<u64> {
    let stmt = c.prepare(sql)?;
    c.client.execute(&stmt, &params(values)).map_err(err)
}

pub(super) fn query_each(
    c: &mut Pg,
    sql: &str,
    values: &[Value],
    mut f: impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    let mut delivered = false;
    match read(c, sql, values, &mut f, &mut delivered) {
        // Once, and only if no row reached `f`: it sees each row once.
        Err(_) if !delivered && c.may_read_again(sql) => {
            c.reconnect_if_broken()?;
            read(c, sql, values, &mut f, &mut delivered)
        }
        done => done,
    }
}

fn read(
    c: &mut Pg,
    sql: &str,
    values: &[Value],
    f: &mut impl FnMut(Row) -> Result<()>,
    delivered: &mut bool,
) -> Result<()> {
    use ::postgres::fallible_iterator::FallibleIterator;
    let stmt = c.prepare(sql)?;
    let mut rows = c
        .client
        .query_raw(&stmt, values.iter().map(|v| v as &(dyn ToSql + Sync)))
        .map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let mut row = Vec::with_capacity(r.len());
        for i in 0..r.len() {
            row.push(r.try_get::<_, Value>(i).map_err(err)?);
        }
        *delivered = true;
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
            (Value::List(l), ty) if matches!(ty.kind(), Kind::Array(_)) => {
                l.as_slice().to_sql(ty, out)
            }
            _ => Err(wrong()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        if let Kind::Array(member) = ty.kind() {
            return <Value as ToSql>::accepts(member);
        }
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
    fn days_of_partitions() {
        // 2026-12-01T08:00:00Z.
        let (name, from, to) = day_partition(1_796_112_000_000);
        assert_eq!(name, "events_20261201");
        assert_eq!(from, 1_796_083_200_000);
        assert_eq!(to, from + 86_400_000);
        // The last millisecond of a day is in it; the next is in the next.
        assert_eq!(day_partition(to - 1).0, "events_20261201");
        assert_eq!(day_partition(to).0, "events_20261202");
        assert_eq!(day_partition(0).0, "events_19700101");
        assert_eq!(day_partition(951_782_400_000).0, "events_20000229");
        assert_eq!(day_partition(-1).0, "events_19691231");
        assert_eq!(partition_range("events_20261201"), Some((from, to)));
        assert_eq!(
            partition_range("events_20000229"),
            Some((951_782_400_000, 951_868_800_000))
        );
        for other in [
            "events_default",
            "events_20261301",
            "events_20230229",
            "events_2026120",
        ] {
            assert_eq!(partition_range(other), None, "{other}");
        }
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
