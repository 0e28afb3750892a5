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
    /// An array parameter (PostgreSQL only): a column of many rows in one value, so that a
    /// statement inserts them from `unnest` (see `store::insert_rows`).
    List(Vec<Value>),
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

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        // Counts never come near 2^63; one that did is stored as the largest there is.
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Int(v.into())
    }
}

impl From<u8> for Value {
    fn from(v: u8) -> Value {
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

impl<T: Clone + Into<Value>> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Value {
        v.clone().map_or(Value::Null, Into::into)
    }
}

impl From<&Value> for Value {
    fn from(v: &Value) -> Value {
        v.clone()
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
            Value::List(l) => format!("list of {} values", l.len()),
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

impl FromValue for u64 {
    const NAME: &'static str = "a count";
    fn from_value(v: &Value) -> Option<u64> {
        i64::from_value(v).and_then(|i| u64::try_from(i).ok())
    }
}

impl FromValue for u32 {
    const NAME: &'static str = "a count";
    fn from_value(v: &Value) -> Option<u32> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}

impl FromValue for u16 {
    const NAME: &'static str = "a 16-bit count";
    fn from_value(v: &Value) -> Option<u16> {
        i64::from_value(v).and_then(|i| u16::try_from(i).ok())
    }
}

impl FromValue for usize {
    const NAME: &'static str = "a count";
    fn from_value(v: &Value) -> Option<usize> {
        i64::from_value(v).and_then(|i| usize::try_from(i).ok())
    }
}

impl FromValue for Value {
    const NAME: &'static str = "a value";
    fn from_value(v: &Value) -> Option<Value> {
        Some(v.clone())
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
    // Boxed: a PostgreSQL client and its statement cache are several times SQLite's handle.
    Postgres(Box<postgres::Pg>),
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

    /// The SQLite connection, for what only SQLite has (pragmas, functions).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres(_) => None,
        }
    }

    /// How many times the connection was made again after it broke (PostgreSQL): session
    /// state (advisory locks) from before is gone.
    pub fn generation(&self) -> u64 {
        match self {
            Conn::Sqlite(_) => 0,
            Conn::Postgres(c) => c.generation,
        }
    }

    /// Make the connection again now if it broke (PostgreSQL), so that its [`Conn::generation`]
    /// tells before a transaction whether session state was lost.
    pub fn ensure_connected(&mut self) -> Result<()> {
        match self {
            Conn::Sqlite(_) => Ok(()),
            Conn::Postgres(c) => c.reconnect_if_broken(),
        }
    }

    /// Settings for the session, run again whenever the connection is made again.
    pub fn set_up(&mut self, setup: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(setup).map_err(sqlite::err),
            Conn::Postgres(c) => c.set_up(setup),
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
        #[cfg(test)]
        record(sql, values);
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
        #[cfg(test)]
        record(sql, values);
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

    /// `f` of the first row, which must exist ([`DbError::NoRow`] otherwise).
    pub fn query_row<T>(
        &mut self,
        sql: &str,
        values: &[Value],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        f(&self.query_one(sql, values)?)
    }

    /// `f` of the first row, if there is one.
    pub fn query_row_opt<T>(
        &mut self,
        sql: &str,
        values: &[Value],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        self.query_opt(sql, values)?.as_ref().map(f).transpose()
    }

    /// `f` of every row.
    pub fn query_map<T>(
        &mut self,
        sql: &str,
        values: &[Value],
        mut f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_each(sql, values, |r| {
            out.push(f(&r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The one value of a one-row, one-column query (a count, a setting).
    pub fn value<T: FromValue>(&mut self, sql: &str, values: &[Value]) -> Result<T> {
        self.query_one(sql, values)?.get(0)
    }

    /// Begin a transaction: committed by [`Tx::commit`], rolled back if dropped before. On
    /// SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so that a read early in it
    /// cannot fail a later write when another process (the CLI) commits in between.
    pub fn begin(&mut self) -> Result<Tx<'_>> {
        self.batch(match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        })?;
        Ok(Tx {
            conn: self,
            open: true,
        })
    }

    /// Begin a read transaction: every read in it sees the database as of one moment, on a
    /// connection that may be read-only (where [`Conn::begin`]'s `BEGIN IMMEDIATE` is refused).
    /// Dropping it ends it: it wrote nothing.
    pub fn begin_read(&mut self) -> Result<Tx<'_>> {
        self.batch(match self.backend() {
            Backend::Sqlite => "BEGIN",
            // PostgreSQL's default level gives each statement a snapshot of its own.
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        })?;
        Ok(Tx {
            conn: self,
            open: true,
        })
    }

    /// Statements without values, separated by semicolons (a migration).
    pub fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(sqlite::err),
            Conn::Postgres(c) => {
                c.reconnect_if_broken()?;
                let done = c.client.batch_execute(sql).map_err(postgres::err);
                // A COMMIT or ROLLBACK ends the transaction even when it fails (the server
                // rolls back, or the connection is gone with it).
                let start = sql.trim_start();
                if start.starts_with("BEGIN") {
                    c.in_transaction = done.is_ok();
                } else if start.starts_with("COMMIT") || start.starts_with("ROLLBACK") {
                    c.in_transaction = false;
                }
                done
            }
        }
    }

    /// Run `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    pub fn transaction<R, E: From<DbError>>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let mut tx = self.begin()?;
        let r = f(&mut tx)?;
        tx.commit()?;
        Ok(r)
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

    /// Take the advisory lock (`class`, a hash of `name`) if no other session holds it.
    pub fn try_lock_named(&mut self, class: i32, name: &str) -> Result<bool> {
        match self {
            Conn::Sqlite(_) => Ok(true),
            Conn::Postgres(_) => self
                .query_one(
                    "SELECT pg_try_advisory_lock(?1, hashtext(?2))",
                    &[Value::Int(class.into()), Value::Text(name.into())],
                )?
                .get::<bool>(0),
        }
    }

    pub fn unlock_named(&mut self, class: i32, name: &str) -> Result<()> {
        match self {
            Conn::Sqlite(_) => Ok(()),
            Conn::Postgres(_) => self
                .execute(
                    "SELECT pg_advisory_unlock(?1, hashtext(?2))",
                    &[Value::Int(class.into()), Value::Text(name.into())],
                )
                .map(|_| ()),
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

/// A statement as run: its text and its values.
#[cfg(test)]
pub type Statement = (String, Vec<Value>);

#[cfg(test)]
thread_local! {
    static RECORDED: std::cell::RefCell<Option<Vec<Statement>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
fn record(sql: &str, values: &[Value]) {
    RECORDED.with(|r| {
        if let Some(list) = r.borrow_mut().as_mut() {
            list.push((sql.to_string(), values.to_vec()));
        }
    });
}

/// Every statement this thread runs while `f` does, with its values (for the tests that show
/// what the API's queries read).
#[cfg(test)]
pub fn statements_of(f: impl FnOnce()) -> Vec<Statement> {
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
    f();
    RECORDED.with(|r| r.borrow_mut().take().unwrap_or_default())
}

/// The plan the database makes for a query, one line per step, for the tests that show a query
/// reads through an index. On PostgreSQL, sequential scans are priced out of the running (in a
/// transaction of its own), so that a test's few rows show which index the query can use
/// rather than that reading them all is cheaper: a plan with "Seq Scan" in it then has no index
/// to use.
#[cfg(test)]
pub fn plan(c: &mut Conn, sql: &str, values: &[Value]) -> Result<String> {
    let lines: Vec<String> = match c.backend() {
        Backend::Sqlite => {
            c.query_map(&format!("EXPLAIN QUERY PLAN {sql}"), values, |r| r.get(3))?
        }
        Backend::Postgres => {
            let mut tx = c.begin()?;
            tx.batch("SET LOCAL enable_seqscan = off")?;
            tx.query_map(&format!("EXPLAIN {sql}"), values, |r| r.get(0))?
        }
    };
    Ok(lines.join("\n"))
}

/// The plan PostgreSQL keeps for a statement it runs often, made without the values: its generic
/// plan, as it would be made now (on the tables' statistics as they stand, an empty table's
/// say). A statement run on one connection from its start gets that plan after five runs, and
/// keeps it until the statistics change, so a plan that is fast only for some statistics shows
/// here.
#[cfg(test)]
pub fn generic_plan(c: &mut Conn, sql: &str, values: &[Value]) -> Result<String> {
    let mut tx = c.begin()?;
    tx.batch("SET LOCAL plan_cache_mode = force_generic_plan")?;
    tx.batch(&format!(
        "PREPARE generic_plan_probe AS {}",
        postgres::placeholders(sql)
    ))?;
    // EXPLAIN takes no parameters: the values go in as literals.
    fn literal(v: &Value) -> String {
        match v {
            Value::Null => "NULL".to_string(),
            Value::Int(i) => i.to_string(),
            Value::Real(r) => format!("'{r:?}'::float8"),
            Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
            Value::Blob(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("'\\x{hex}'::bytea")
            }
            Value::List(l) => {
                let items: Vec<String> = l.iter().map(literal).collect();
                format!("ARRAY[{}]", items.join(", "))
            }
        }
    }
    let args: Vec<String> = values.iter().map(literal).collect();
    let lines: Result<Vec<String>> = tx.query_map(
        &format!("EXPLAIN EXECUTE generic_plan_probe({})", args.join(", ")),
        &[],
        |r| r.get(0),
    );
    // A prepared statement outlives the transaction, failed or not.
    drop(tx);
    c.batch("DEALLOCATE generic_plan_probe")?;
    Ok(lines?.join("\n"))
}

/// An open transaction on a [`Conn`], used as the connection itself (it dereferences to it).
pub struct Tx<'a> {
    conn: &'a mut Conn,
    open: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        self.conn.batch("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // The error that matters is the one that ended the transaction early; a rollback
            // that fails too leaves the connection to be dropped by its owner.
            let _ = self.conn.batch("ROLLBACK");
        }
    }
}
