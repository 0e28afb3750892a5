//! One SQL interface over the two databases the collector can store in: SQLite (embedded, the
//! default) and PostgreSQL (`--database postgres://...`, for replicas on one database).
//!
//! Statements are written once, with SQLite's numbered placeholders (`?1`, `?2`, ...); on
//! PostgreSQL they become `$1`, `$2`, ... (outside quoted text). Values cross as [`Value`], with
//! SQLite's five storage classes: on PostgreSQL a value is encoded for the type the server infers
//! for its placeholder (an integer into `smallint`, `integer` or `bigint`, ...) and any column
//! decodes into one (a `numeric` sum into an integer or a real), so the same statement and the
//! same reading code serve both.

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub mod testpg;
#[cfg(test)]
mod tests;

use std::fmt;

/// Which database a connection is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A value in or out of a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug)]
pub enum DbError {
    /// The database refused or failed the statement.
    Sql(String),
    /// A column's value is not of the type asked for.
    Type {
        column: usize,
        wanted: &'static str,
        got: String,
    },
    /// No row where one was expected.
    NoRow,
    /// The database could not be reached.
    Connect(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sql(e) => write!(f, "{e}"),
            DbError::Type {
                column,
                wanted,
                got,
            } => write!(f, "column {column}: {wanted} wanted, {got} found"),
            DbError::NoRow => write!(f, "no row"),
            DbError::Connect(e) => write!(f, "cannot reach the database: {e}"),
        }
    }
}

impl std::error::Error for DbError {}

pub type Result<T> = std::result::Result<T, DbError>;

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v.into())
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// `[a, b, ...]` as statement values.
#[macro_export]
macro_rules! values {
    ($($v:expr),* $(,)?) => {
        &[$($crate::db::Value::from($v)),*][..]
    };
}

impl Value {
    fn kind(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Int(i) => format!("integer {i}"),
            Value::Real(r) => format!("real {r}"),
            Value::Text(_) => "text".into(),
            Value::Blob(b) => format!("blob of {} bytes", b.len()),
        }
    }
}

/// What a column's value can be read as.
pub trait FromValue: Sized {
    const NAME: &'static str;
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const NAME: &'static str = "an integer";
    fn from_value(v: &Value) -> Option<i64> {
        match *v {
            Value::Int(i) => Some(i),
            // A whole number read back from a real or `numeric` column (a sum, say).
            Value::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e15 => Some(r as i64),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    const NAME: &'static str = "a number";
    fn from_value(v: &Value) -> Option<f64> {
        match *v {
            Value::Real(r) => Some(r),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }
}

impl FromValue for bool {
    const NAME: &'static str = "a boolean (0 or 1)";
    fn from_value(v: &Value) -> Option<bool> {
        match *v {
            Value::Int(0) => Some(false),
            Value::Int(1) => Some(true),
            _ => None,
        }
    }
}

impl FromValue for String {
    const NAME: &'static str = "text";
    fn from_value(v: &Value) -> Option<String> {
        match v {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    const NAME: &'static str = "a blob";
    fn from_value(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const NAME: &'static str = T::NAME;
    fn from_value(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result, its values in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn get<T: FromValue>(&self, column: usize) -> Result<T> {
        let v = self.0.get(column).ok_or(DbError::Type {
            column,
            wanted: T::NAME,
            got: "no such column".into(),
        })?;
        T::from_value(v).ok_or_else(|| DbError::Type {
            column,
            wanted: T::NAME,
            got: v.kind(),
        })
    }

    /// A blob column in place (sketches are merged from it without a copy).
    pub fn blob(&self, column: usize) -> Result<&[u8]> {
        match self.0.get(column) {
            Some(Value::Blob(b)) => Ok(b),
            other => Err(DbError::Type {
                column,
                wanted: "a blob",
                got: other.map_or_else(|| "no such column".into(), Value::kind),
            }),
        }
    }
}

/// A connection to either database. Statements use `?N` placeholders (see the module's doc).
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(::postgres::Client),
}

impl Conn {
    /// Open `database`: a `postgres://` or `postgresql://` URL, or the path of a SQLite file.
    pub fn open(database: &str) -> Result<Conn> {
        if postgres::is_url(database) {
            postgres::connect(database).map(Conn::Postgres)
        } else {
            rusqlite::Connection::open(database)
                .map(Conn::Sqlite)
                .map_err(|e| DbError::Connect(e.to_string()))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Run one statement; how many rows it changed.
    pub fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64> {
        match self {
            Conn::Sqlite(c) => sqlite::execute(c, sql, values),
            Conn::Postgres(c) => postgres::execute(c, sql, values),
        }
    }

    /// Every row a query gives.
    pub fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        self.query_each(sql, values, |r| {
            rows.push(r);
            Ok(())
        })?;
        Ok(rows)
    }

    /// The rows of a query, one at a time (a scan that must not hold them all).
    pub fn query_each(
        &mut self,
        sql: &str,
        values: &[Value],
        f: impl FnMut(Row) -> Result<()>,
    ) -> Result<()> {
        match self {
            Conn::Sqlite(c) => sqlite::query_each(c, sql, values, f),
            Conn::Postgres(c) => postgres::query_each(c, sql, values, f),
        }
    }

    /// The first row, if any.
    pub fn query_opt(&mut self, sql: &str, values: &[Value]) -> Result<Option<Row>> {
        let mut first = None;
        self.query_each(sql, values, |r| {
            if first.is_none() {
                first = Some(r);
            }
            Ok(())
        })?;
        Ok(first)
    }

    /// The first row, which must exist.
    pub fn query_one(&mut self, sql: &str, values: &[Value]) -> Result<Row> {
        self.query_opt(sql, values)?.ok_or(DbError::NoRow)
    }

    /// Statements without values, separated by semicolons (a migration).
    pub fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(sqlite::err),
            Conn::Postgres(c) => c.batch_execute(sql).map_err(postgres::err),
        }
    }

    /// Run `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    pub fn transaction<R>(&mut self, f: impl FnOnce(&mut Conn) -> Result<R>) -> Result<R> {
        self.batch("BEGIN")?;
        match f(self) {
            Ok(r) => {
                self.batch("COMMIT")?;
                Ok(r)
            }
            Err(e) => {
                // The error that matters is the first; a failed rollback leaves the connection
                // to be dropped by its owner.
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Take the session-level advisory lock `key`, waiting for it (PostgreSQL), so that work
    /// meant to run once across replicas (migrations, retention) does. A SQLite database has
    /// one collector: there is nothing to wait for.
    pub fn lock(&mut self, key: i64) -> Result<()> {
        match self {
            Conn::Sqlite(_) => Ok(()),
            Conn::Postgres(_) => self
                .execute("SELECT pg_advisory_lock(?1)", &[Value::Int(key)])
                .map(|_| ()),
        }
    }

    /// Take the advisory lock `key` if no other session holds it: whether it was taken.
    pub fn try_lock(&mut self, key: i64) -> Result<bool> {
        match self {
            Conn::Sqlite(_) => Ok(true),
            Conn::Postgres(_) => self
                .query_one("SELECT pg_try_advisory_lock(?1)", &[Value::Int(key)])?
                .get::<bool>(0),
        }
    }

    pub fn unlock(&mut self, key: i64) -> Result<()> {
        match self {
            Conn::Sqlite(_) => Ok(()),
            Conn::Postgres(_) => self
                .execute("SELECT pg_advisory_unlock(?1)", &[Value::Int(key)])
                .map(|_| ()),
        }
    }
}
