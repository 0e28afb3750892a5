//! Storage, on either database behind [`crate::db::Conn`]: SQLite (the default: one file in
//! the data directory, WAL mode, `synchronous=FULL` so that a committed batch survives a crash
//! or power loss before the 202 goes out) or PostgreSQL (`--database postgres://...`), where
//! any number of collector replicas share one database (see [`Database`]).

use crate::db::{self, Backend, Conn, Row, Value};
use crate::ingest::Batch;
use crate::keys;
use crate::prices::Prices;
use crate::rollup::{self, Agg, Pending, DAY, HOUR, MINUTE};
use crate::values;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tally::event::{ErrorCategory, ErrorSource, Event};
use tally::pricing::{PriceTable, Pricer};
use tally::usage::TokenSource;

/// Versioned migrations, applied in order; `PRAGMA user_version` records the last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_calibration.sql"),
    include_str!("../migrations/0003_rollups.sql"),
    include_str!("../migrations/0004_users.sql"),
    include_str!("../migrations/0005_rollups_by_time.sql"),
    include_str!("../migrations/0006_events_by_arrival.sql"),
    include_str!("../migrations/0007_mesh_identity.sql"),
    include_str!("../migrations/0008_mesh_tokens.sql"),
    include_str!("../migrations/0009_unpriced_and_filters.sql"),
    include_str!("../migrations/0010_roles_and_sso.sql"),
    include_str!("../migrations/0011_pricing_dimensions.sql"),
    include_str!("../migrations/0012_prices.sql"),
    include_str!("../migrations/0013_budgets.sql"),
    include_str!("../migrations/0014_alerts.sql"),
    include_str!("../migrations/0015_trace_context.sql"),
    include_str!("../migrations/0016_users_under_teams.sql"),
];

/// The SQLite schema version that added users under the team filter (see [`Write::UserPairs`]).
const USERS_UNDER_TEAMS: i64 = 16;

/// Minute rollups are kept this long; older ranges are answered from hour rollups.
pub const MINUTE_ROLLUP_DAYS: i64 = 31;

/// Pairs of exact and measured output a model needs before its measured events are corrected.
pub const MIN_CALIBRATION_SAMPLES: i64 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: i64,
    pub name: String,
}

/// Whose events a batch holds: one org's (a batch sent with an org key), or each event's own
/// (a batch sent with a mesh token, each event naming its org).
#[derive(Debug, Clone)]
pub struct Owners {
    orgs: Vec<Org>,
    /// Per event, its org's index in `orgs`; `None` when the whole batch is one org's, so that
    /// the common case allocates nothing per event.
    of_event: Option<Vec<u32>>,
}

impl Owners {
    pub fn one(org: Org) -> Owners {
        Owners {
            orgs: vec![org],
            of_event: None,
        }
    }

    /// Each event's org, in batch order.
    pub fn each(per_event: impl IntoIterator<Item = Org>) -> Owners {
        let mut orgs: Vec<Org> = Vec::new();
        let of_event = per_event
            .into_iter()
            .map(|org| match orgs.iter().position(|o| o.id == org.id) {
                Some(i) => i as u32,
                None => {
                    orgs.push(org);
                    (orgs.len() - 1) as u32
                }
            })
            .collect();
        Owners {
            orgs,
            of_event: Some(of_event),
        }
    }

    /// The index in [`Owners::orgs`] of event `i`'s org.
    fn index(&self, i: usize) -> usize {
        self.of_event
            .as_ref()
            .and_then(|v| v.get(i))
            .map_or(0, |&n| n as usize)
    }

    /// Event `i`'s org.
    pub fn of(&self, i: usize) -> Option<&Org> {
        self.orgs.get(self.index(i))
    }

    /// The distinct orgs, in order of first appearance.
    pub fn orgs(&self) -> &[Org] {
        &self.orgs
    }

    /// A `Pending` per org (in [`Owners::orgs`] order) counting the events `which` picks.
    fn count(
        &self,
        prices: &PriceTable,
        batch: &Batch,
        which: impl Iterator<Item = usize>,
    ) -> Vec<Pending> {
        let mut rows: Vec<Pending> = self.orgs.iter().map(|_| Pending::default()).collect();
        for i in which {
            if let (Some((e, ts)), Some(r)) = (batch.get(i), rows.get_mut(self.index(i))) {
                r.add(prices, e, *ts);
            }
        }
        rows
    }

    /// Rows per org, paired with the org ids.
    fn with_ids(&self, rows: Vec<Pending>) -> OrgRows {
        self.orgs.iter().map(|o| o.id).zip(rows).collect()
    }
}

#[derive(Debug)]
pub enum StoreError {
    OrgExists(String),
    NoSuchOrg(String),
    TokenExists(String),
    NoSuchToken(String),
    /// A command's arguments do not make sense (said in the message).
    Invalid(String),
    Db(db::DbError),
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::OrgExists(n) => write!(f, "an org named {n:?} already exists"),
            StoreError::NoSuchOrg(n) => write!(f, "no org named {n:?}"),
            StoreError::TokenExists(n) => write!(f, "a token named {n:?} already exists"),
            StoreError::NoSuchToken(n) => write!(f, "no token named {n:?}"),
            StoreError::Invalid(m) => write!(f, "{m}"),
            StoreError::Db(e) => write!(f, "database: {e}"),
            StoreError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<db::DbError> for StoreError {
    fn from(e: db::DbError) -> Self {
        StoreError::Db(e)
    }
}

/// What a repricing did: events looked at, events whose cost changed, and the total cost of
/// those looked at before and after.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Repricing {
    pub events: u64,
    pub changed: u64,
    /// Events of the range stored in the last second or so, not yet in the rollup rows of
    /// the database: left as they are (run again to price them).
    pub skipped: u64,
    pub before_usd: f64,
    pub after_usd: f64,
}

/// Filters of `GET /api/v1/events`; all optional, combined with AND.
#[derive(Debug, Default)]
pub struct EventFilter {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: u32,
    pub team: Option<String>,
    pub app: Option<String>,
    pub feature: Option<String>,
    pub task: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub user: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    /// Inclusive range of statuses (`429`, or `500..=599` for `5xx`).
    pub status: Option<(u16, u16)>,
    /// A page after the first: only events before this (ts_ms, request_id) in the list's order.
    pub before: Option<(i64, String)>,
}

impl EventFilter {
    /// No label or status filter (times and paging aside).
    pub fn is_empty(&self) -> bool {
        self.labels().next().is_none() && self.status.is_none()
    }

    /// The label filters, as (dimension, value): those set.
    fn labels(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("team", &self.team),
            ("app", &self.app),
            ("feature", &self.feature),
            ("task", &self.task),
            ("model", &self.model),
            ("provider", &self.provider),
            ("user", &self.user),
            ("namespace", &self.namespace),
            ("workload", &self.workload),
        ]
        .into_iter()
        .filter_map(|(d, v)| v.as_ref().map(|v| (d, v)))
    }

    /// Add the filters (labels and status) to a query's WHERE clause and its arguments.
    fn push_sql(&self, sql: &mut String, args: &mut Vec<Value>) {
        for (dim, v) in self.labels() {
            match dim {
                // Requests with no feature are shown, and found, as `untagged`.
                "feature" if v == "untagged" => {
                    sql.push_str(" AND (feature IS NULL OR feature = ?)")
                }
                "model" => {
                    sql.push_str(" AND (model_actual = ? OR model_requested = ?)");
                    args.push(v.clone().into());
                }
                // Column names come from the fixed list above (quoted: `user` is a keyword in
                // PostgreSQL); values are always bound.
                _ => sql.push_str(&format!(" AND \"{dim}\" = ?")),
            }
            args.push(v.clone().into());
        }
        if let Some((lo, hi)) = self.status {
            sql.push_str(" AND status BETWEEN ? AND ?");
            args.push(i64::from(lo).into());
            args.push(i64::from(hi).into());
        }
    }
}

/// A time series: its points (bucket start, key, figures) in time order, the bucket used, and
/// how it was read.
pub type Series = (Vec<(i64, String, Agg)>, i64, Read);

/// How a summary or time series was read: from rollups whose range edges are whole units of
/// this many ms (minute or hour), or from the events themselves (exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Rollups(i64),
    Events,
}

/// Ranges up to this long are answered from the events when filtered: few enough to read in
/// tens of milliseconds, and exact to the minute, where pair rows are kept per hour.
pub const EVENTS_RANGE_MS: i64 = 6 * HOUR;

/// Where a summary or time series is read from.
enum Plan {
    /// The dimension's own rollups (no filter).
    Rollups,
    /// Pair rollups: one filter on one of [`rollup::FILTER_DIMENSIONS`] (dimension, key).
    Pair(Pair),
    /// The events: filters or a grouping that pair rows do not keep, or a range short enough
    /// to read exactly.
    Events,
}

/// A read from pair rows: the filter kept as their filter (dimension, key), and maybe a second
/// filter on a dimension they are grouped by (see [`rollup::pair_kept`]), answered by the pair
/// rows grouped by that dimension, their row of its key only.
struct Pair {
    filter: (&'static str, String),
    second: Option<(&'static str, String)>,
}

fn read_plan(f: &EventFilter, dim: Option<&str>, span: i64) -> Plan {
    let mut filters: Vec<(&'static str, String)> =
        f.labels().map(|(d, v)| (d, v.clone())).collect();
    // A status class is kept in pair rows; a single status is not.
    if let Some((lo, hi)) = f.status {
        if lo % 100 != 0 || hi != lo + 99 {
            return Plan::Events;
        }
        filters.push(("status", rollup::status_class(Some(lo)).to_string()));
    }
    let pair = match filters.as_slice() {
        [] => return Plan::Rollups,
        [one] if rollup::FILTER_DIMENSIONS.contains(&one.0) => {
            let grouped = dim.is_none_or(|d| d == one.0 || rollup::pair_kept(one.0, d));
            grouped.then(|| Pair {
                filter: one.clone(),
                second: None,
            })
        }
        // Two filters: the rows of one grouped by the other's dimension, read at the other's
        // key. The model is never the group: a model filter also picks the model asked for,
        // and the group key is the model that answered.
        [a, b] => [(a, b), (b, a)]
            .into_iter()
            .filter(|(f, g)| g.0 != "model" && rollup::pair_kept(f.0, g.0))
            // Grouped by neither filter's dimension would need a third key; by the model's
            // (as the filter), the models that answered it.
            .find(|(f, g)| dim.is_none_or(|d| d == g.0 || (d == f.0 && f.0 != "model")))
            .map(|(f, g)| Pair {
                filter: f.clone(),
                second: Some(g.clone()),
            }),
        _ => None,
    };
    match pair {
        Some(p) if span > EVENTS_RANGE_MS => Plan::Pair(p),
        _ => Plan::Events,
    }
}

/// How a pair plan reads, grouped by `dim`: the rollup dimension, the only key to read (for a
/// second filter), and the key every row is shown under when the grouping is a filter's own
/// dimension or none (read as the filters' total).
fn pair_read(p: &Pair, dim: Option<&str>) -> (String, Option<String>, Option<String>) {
    let (f, value) = (p.filter.0, p.filter.1.as_str());
    match (&p.second, dim) {
        (None, Some(d)) if d == f && f != "model" => (
            rollup::pair_dim(f, "all", value),
            None,
            Some(value.to_string()),
        ),
        (None, d) => (rollup::pair_dim(f, d.unwrap_or("all"), value), None, None),
        (Some((g, key)), d) => {
            let shown = match d {
                None => Some(String::new()),
                Some(d) if d == f => Some(value.to_string()),
                Some(_) => None,
            };
            (rollup::pair_dim(f, g, value), Some(key.clone()), shown)
        }
    }
}

/// A rollup read of one key only (a second filter's: see [`pair_read`]): the condition after
/// the five others, and its argument.
fn only_key(only: Option<&str>) -> (&'static str, Vec<Value>) {
    match only {
        Some(key) => (" AND key = ?6", vec![Value::from(key)]),
        None => ("", Vec::new()),
    }
}

/// The finest resolution a range starting at `from` is read at (minute rows are kept for
/// [`MINUTE_ROLLUP_DAYS`] only).
fn finest_at(from: i64, now: i64, finest: i64) -> i64 {
    if finest == MINUTE && from >= now - MINUTE_ROLLUP_DAYS * DAY {
        MINUTE
    } else {
        HOUR
    }
}

/// Where the collector stores: a SQLite file in a data directory (one collector), or a
/// PostgreSQL database that any number of collector replicas share.
#[derive(Debug, Clone, PartialEq)]
pub enum Database {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Database {
    /// `--database` if given (a `postgres://` URL), else `tally.db` in `--data-dir`.
    pub fn from_args(database: Option<&str>, data_dir: &Path) -> Result<Database, StoreError> {
        match database {
            None => Ok(Database::Sqlite(data_dir.to_path_buf())),
            Some(url) if db::postgres::is_url(url) => Ok(Database::Postgres(url.to_string())),
            Some(other) => Err(StoreError::Invalid(format!(
                "--database {:?}: a postgres:// or postgresql:// URL is wanted (SQLite is the \
                 default, in --data-dir)",
                other.split('@').next_back().unwrap_or_default()
            ))),
        }
    }

    /// The database for messages: a URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(dir) => dir.join("tally.db").display().to_string(),
            Database::Postgres(url) => db::postgres::redacted(url),
        }
    }
}

/// Where the store is, as every command takes it.
#[derive(clap::Args, Debug, Clone)]
#[group(id = "storage")]
pub struct StoreArgs {
    /// Where the SQLite database lives (the default store).
    #[arg(long, default_value = "data", global = true)]
    pub data_dir: std::path::PathBuf,
    /// Store in PostgreSQL instead: `postgres://user:password@host:port/database`, shared by
    /// any number of collector replicas. Read from TALLY_DATABASE when not given, so that the
    /// password stays out of the process list.
    #[arg(long, env = "TALLY_DATABASE", hide_env_values = true, global = true)]
    pub database: Option<String>,
    /// This collector's name among the replicas of a PostgreSQL database, unique to it (a pod
    /// name, say); default: the host name and the process id.
    #[arg(long, global = true)]
    pub replica: Option<String>,
    /// PostgreSQL: read connections kept open for scans, besides one for writing and one for
    /// the read API.
    #[arg(long, default_value_t = 4, global = true)]
    pub db_pool: usize,
    /// PostgreSQL: statements running longer than this many milliseconds are cancelled
    /// (and a lock waited for longer); 0 for no limit.
    #[arg(long, default_value_t = 30_000, global = true)]
    pub db_statement_timeout_ms: u64,
}

impl StoreArgs {
    pub fn database(&self) -> Result<Database, StoreError> {
        Database::from_args(self.database.as_deref(), &self.data_dir)
    }

    fn options(&self, cli: bool) -> Options {
        Options {
            replica: self.replica.clone(),
            pool: self.db_pool.max(1),
            statement_timeout_ms: self.db_statement_timeout_ms,
            cli,
        }
    }

    /// The store, for a command-line tool.
    pub fn open(&self) -> Result<Store, StoreError> {
        Store::open_with(&self.database()?, self.options(true))
    }

    /// The store, for `serve`.
    pub fn open_serving(&self) -> Result<Store, StoreError> {
        Store::open_with(&self.database()?, self.options(false))
    }
}

/// How a store connects: for PostgreSQL, the replica's name, the size of its pool of read
/// connections, and the statement timeout.
#[derive(Debug, Clone)]
pub struct Options {
    /// This collector's name among the replicas (`--replica`); `None`: made from the host name
    /// and the process id. Ignored on SQLite.
    pub replica: Option<String>,
    /// Read connections kept open for the read API and scans (`--db-pool`).
    pub pool: usize,
    /// Statements running longer are cancelled (`--db-statement-timeout`); 0: no limit.
    pub statement_timeout_ms: u64,
    /// A command-line tool, not a serving collector: it takes no part in recovery.
    pub cli: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            replica: None,
            pool: 4,
            statement_timeout_ms: 30_000,
            cli: false,
        }
    }
}

pub struct Store {
    database: Database,
    options: Options,
    /// This collector's name among the replicas of a PostgreSQL database: its events and its
    /// rollup rows carry it. Empty on SQLite.
    replica: String,
    conn: Mutex<Conn>,
    /// A second connection, for authentication and the read API: it reads while `conn`
    /// writes (SQLite: in WAL mode, read-only), so an ingest transaction delays neither.
    read: Mutex<Conn>,
    /// Read connections for scans of the events (filtered summaries), kept for reuse: a scan
    /// may read millions of rows, and must not hold `read`, which authenticates every ingest
    /// call and session.
    scans: Mutex<Vec<Conn>>,
    /// Batches waiting for the next ingest transaction (see [`Store::insert_events`]).
    queue: Mutex<Vec<Arc<Job>>>,
    /// Rollup rows of committed events not yet written (see [`Unwritten`]). Locked after `conn`.
    unwritten: Mutex<Unwritten>,
    /// The prices in force (see `prices`), and when their generation was last checked.
    prices: std::sync::RwLock<Arc<Prices>>,
    prices_checked: Mutex<std::time::Instant>,
    /// Every org's budgets, reloaded in the ingest transaction when their generation moved.
    budgets: Mutex<Arc<crate::budgets::Defs>>,
    /// PostgreSQL: the event partitions known to exist (by name), so that a batch makes only
    /// the ones it is the first to need.
    partitions: Mutex<std::collections::HashSet<String>>,
}

/// Rollup rows are written about once a second, not in every ingest transaction: a batch's
/// events touch hundreds of rows (one per user, team, feature... per hour and per day), and
/// writing them for every batch took most of the write connection's time. Until written, they
/// wait here; every read of the rollups writes them first, so reads stay exact, and after a crash
/// [`Store::recount_rollups`] counts again the events stored after `rollup_progress`.
#[derive(Default)]
struct Unwritten {
    /// Per org.
    rows: Vec<(i64, Pending)>,
    /// The last event (`seq`) these rows count; the database's rollups count those before.
    through: i64,
    /// When the oldest of these rows was counted.
    since: Option<std::time::Instant>,
    /// The write connection's generation these rows were counted under (see
    /// [`Store::reclaim`]).
    generation: u64,
    /// The sketches of rows written lately (PostgreSQL).
    sketches: rollup::Sketches,
}

/// How long rollup rows may wait before an ingest transaction writes them.
const ROLLUP_WRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Unwritten {
    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn add(&mut self, org: i64, mut p: Pending) {
        if p.is_empty() {
            return;
        }
        match self.rows.iter_mut().find(|(o, _)| *o == org) {
            Some((_, mine)) => {
                // Merge the smaller into the larger.
                if p.len() > mine.len() {
                    std::mem::swap(mine, &mut p);
                }
                mine.merge(&p);
            }
            None => self.rows.push((org, p)),
        }
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    /// Write the rows and the progress mark in `tx`; the caller calls [`Unwritten::written`]
    /// with what this returns once it commits.
    fn write(&mut self, tx: &mut Conn, replica: &str) -> db::Result<Written> {
        let mut written = Vec::new();
        for (org, p) in &mut self.rows {
            written.extend(p.write_own(tx, *org, replica, &self.sketches)?);
        }
        set_progress(tx, replica, self.through)?;
        Ok(Written(written))
    }

    /// The rows are in the database: cleared, their sketches kept.
    fn written(&mut self, w: Written) {
        self.clear();
        self.sketches.keep(w.0);
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.since = None;
    }
}

/// Sketches of rows written in a transaction not yet committed (see [`Unwritten::written`]).
struct Written(
    Vec<(
        rollup::SketchKey,
        (crate::sketch::Sketch, crate::sketch::Sketch),
    )>,
);

/// Rollup rows per org id.
type OrgRows = Vec<(i64, Pending)>;

/// What storing a batch gives: (accepted, duplicates, the indexes of the events newly stored).
pub type Stored = (usize, usize, Vec<usize>);

/// A batch waiting to be stored, and its outcome once a transaction has taken it.
struct Job {
    owners: Owners,
    batch: Arc<Batch>,
    /// The batch's rollup rows, per org, as if every event were new and stored as sent,
    /// counted before the batch queues, so not while it holds the write connection.
    /// Taken once the batch is committed.
    rollup: Mutex<OrgRows>,
    now_ms: i64,
    /// The `X-Tally-Filter` id the batch came with (budgets count each filter's spend).
    filter: Option<String>,
    outcome: Mutex<Option<Result<Stored, StoreError>>>,
}

/// The page size of a new database.
const PAGE_SIZE: i64 = 16_384;

/// The write connection's page cache, in KiB (SQLite takes a negative size as KiB).
const WRITE_CACHE_KIB: i64 = -32_768;

/// At most this many events in one ingest transaction: batches waiting beyond it go in the next.
const MAX_GROUP_EVENTS: usize = 20_000;

/// A lock, even after a panic in another holder: SQLite rolls back a transaction cut short, and
/// the ingest queue only ever holds whole jobs.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The data directory, made (or kept) readable by its owner only (0700), and the database
/// created 0600 before SQLite opens it: SQLite gives its WAL and shared-memory files the
/// database's own mode. It holds spend by team and user, and hashes of keys and sessions.
fn private_files(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |what: &str, p: &Path, e: std::io::Error| {
        StoreError::Io(format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create", dir, e))?;
    let tighten = |p: &Path| -> Result<(), StoreError> {
        let mode = std::fs::metadata(p)
            .map_err(|e| io("read", p, e))?
            .permissions()
            .mode();
        let private = if p.is_dir() { 0o700 } else { 0o600 };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & private))
                .map_err(|e| io("restrict", p, e))?;
            crate::log::info(&format!(
                "{} was readable by others (mode {:o}): now {:o}",
                p.display(),
                mode & 0o777,
                mode & private
            ));
        }
        Ok(())
    };
    tighten(dir)?;
    let db = dir.join("tally.db");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&db)
        .map_err(|e| io("create", &db, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.join(format!("tally.db{suffix}"));
        if p.exists() {
            tighten(&p)?;
        }
    }
    Ok(())
}

/// The SQLite database in `dir`, opened for writing and migrated to the latest schema.
fn open_sqlite(dir: &Path) -> Result<rusqlite::Connection, StoreError> {
    private_files(dir)?;
    let sqlite = |e: rusqlite::Error| StoreError::Db(db::DbError::Sql(e.to_string()));
    let raw = rusqlite::Connection::open(dir.join("tally.db")).map_err(sqlite)?;
    raw.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite)?;
    rollup::register(&raw).map_err(sqlite)?;
    // New databases only (SQLite ignores it once tables exist). Each commit writes every
    // page it changed to the WAL, one write call per page: with 16 KiB pages a batch's
    // scattered index entries take fewer of them (ingest over HTTP: +15 %).
    raw.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(sqlite)?;
    raw.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite)?;
    // SQLite's default cache is 2 000 KiB: 125 pages of 16 KiB. Rollup upserts then read
    // most pages from the OS again (a bulk load over 30 days ran at 15 300 events/s; 22 500
    // with this).
    raw.pragma_update(None, "cache_size", WRITE_CACHE_KIB)
        .map_err(sqlite)?;
    raw.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite)?;
    raw.pragma_update(None, "foreign_keys", "ON")
        .map_err(sqlite)?;
    let mut conn = Conn::Sqlite(raw);
    let version: i64 = conn.value("PRAGMA user_version", &[])?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Io(format!(
            "the database is at schema version {version}, newer than this collector ({known}); \
             run a newer tally-collector"
        )));
    }
    let prices = PriceTable::builtin().map_err(StoreError::Io)?;
    // Rollups appeared with migration 3, and start from the events already stored: counted
    // once the schema is the latest (the counting writes today's columns), so a database
    // from before them needs no backfill of migration 9.
    let count_all = version <= 2;
    if version < known {
        // Every pending migration and the counting after them in one transaction: a crash
        // anywhere leaves the database as it was, to be migrated again whole.
        let mut tx = conn.begin()?;
        for sql in MIGRATIONS.iter().skip(version as usize) {
            tx.batch(sql)?;
        }
        // Counting reads today's columns: only once the schema is the latest.
        if (3..=8).contains(&version) {
            // Migration 9's figures and pair rows, for the events the rollups already
            // count (those after `events_seq` are counted whole when `serve` starts).
            let through = progress(&mut tx, "")?;
            roll_up(
                &mut tx,
                &prices,
                Counted::Through(through),
                Write::NewFigures,
                "",
            )?;
        }
        if (9..USERS_UNDER_TEAMS).contains(&version) {
            // Migration 16's pair rows (migration 9's counting above wrote them too).
            let through = progress(&mut tx, "")?;
            roll_up(
                &mut tx,
                &prices,
                Counted::Through(through),
                Write::UserPairs,
                "",
            )?;
        }
        if count_all {
            tx.execute("DELETE FROM rollups", &[])?;
            roll_up(
                &mut tx,
                &prices,
                Counted::Through(i64::MAX),
                Write::Whole,
                "",
            )?;
            tx.execute(
                "UPDATE rollup_progress SET events_seq =
                    (SELECT coalesce(max(seq), 0) FROM events)",
                &[],
            )?;
        }
        tx.batch(&format!("PRAGMA user_version = {known}"))?;
        tx.commit()?;
    }
    match conn {
        Conn::Sqlite(c) => Ok(c),
        Conn::Postgres(_) => Err(StoreError::Io("not a SQLite connection".into())),
    }
}

/// A read-only connection to the SQLite database in `dir`.
fn open_sqlite_reader(dir: &Path) -> Result<Conn, StoreError> {
    let sqlite = |e: rusqlite::Error| StoreError::Db(db::DbError::Sql(e.to_string()));
    let read = rusqlite::Connection::open(dir.join("tally.db")).map_err(sqlite)?;
    read.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite)?;
    read.pragma_update(None, "query_only", "ON")
        .map_err(sqlite)?;
    Ok(Conn::Sqlite(read))
}

/// How long opening a PostgreSQL connection keeps trying while the database cannot be reached
/// (a replica starting beside its database, a failover).
const CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection to the PostgreSQL database at `url`, with the statement timeout set; tried
/// again, with growing pauses, while the database cannot be reached.
fn open_postgres(url: &str, options: &Options) -> Result<Conn, StoreError> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(100);
    let mut conn = loop {
        match Conn::open(url) {
            Ok(c) => break c,
            Err(db::DbError::Connect(e)) if start.elapsed() + pause < CONNECT_PATIENCE => {
                crate::log::error(&format!(
                    "database {}: {e}; trying again in {} ms",
                    db::postgres::redacted(url),
                    pause.as_millis()
                ));
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    // The schema version this collector writes: a version that changes what is counted lets
    // only collectors at it or later write (see migrations/postgres/0003_users_under_teams.sql).
    conn.set_up(&format!(
        "SET statement_timeout = {}; SET lock_timeout = {}; \
         SET tally.schema_version = {POSTGRES_SCHEMA_VERSION}",
        options.statement_timeout_ms, options.statement_timeout_ms
    ))?;
    Ok(conn)
}

/// The version of the PostgreSQL schema this collector writes (`schema_version`): the last
/// of [`db::postgres::MIGRATIONS`].
const POSTGRES_SCHEMA_VERSION: i64 = db::postgres::MIGRATIONS[db::postgres::MIGRATIONS.len() - 1].0;

/// Advisory lock keys ("tally" and a number): the schema's migration, and each replica's
/// name (the name hashed into the second key).
const MIGRATION_LOCK: i64 = 0x7461_6c6c_7900_0002;
const RETENTION_LOCK: i64 = 0x7461_6c6c_7900_0003;
pub(crate) const REPLICA_LOCK: i32 = 0x7461_6c6c;

/// Make the schema of a new PostgreSQL database, or bring an existing one's up to this
/// collector's version, each version in a transaction of its own. Replicas starting together
/// take turns under an advisory lock: one migrates, the others find it done.
fn migrate_postgres(conn: &mut Conn) -> Result<(), StoreError> {
    conn.lock(MIGRATION_LOCK)?;
    let result = (|| -> Result<(), StoreError> {
        let made: bool = conn.value("SELECT to_regclass('schema_version') IS NOT NULL", &[])?;
        let version: i64 = if made {
            conn.value("SELECT max(version) FROM schema_version", &[])?
        } else {
            0
        };
        if version > POSTGRES_SCHEMA_VERSION {
            return Err(StoreError::Io(format!(
                "the database is at schema version {version}, newer than this collector \
                 ({POSTGRES_SCHEMA_VERSION}); run a newer tally-collector"
            )));
        }
        for (v, sql) in db::postgres::MIGRATIONS {
            if v <= version {
                continue;
            }
            conn.transaction(|tx| -> Result<(), StoreError> {
                tx.batch(sql)?;
                if v == POSTGRES_USERS_UNDER_TEAMS {
                    count_user_pairs(tx)?;
                }
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    values![v],
                )?;
                Ok(())
            })?;
            crate::log::info(&format!("database: schema version {v} made"));
        }
        Ok(())
    })();
    conn.unlock(MIGRATION_LOCK)?;
    result
}

/// The PostgreSQL schema version that added users under the team filter.
const POSTGRES_USERS_UNDER_TEAMS: i64 = 3;

/// Count users under the team filter for the events each replica's rollup rows count, into its
/// rows. The version's triggers, made first in the same transaction, waited for the writes of
/// collectors from before it and fence them off from now on: no replica's progress moves while
/// this counts, and events it has not counted yet are counted whole when its name is taken over.
fn count_user_pairs(tx: &mut Conn) -> Result<(), StoreError> {
    let prices = Prices::load(tx).map_err(StoreError::Io)?;
    let replicas: Vec<(String, i64)> = tx.query_map(
        "SELECT replica, events_seq FROM rollup_progress ORDER BY replica",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (replica, through) in replicas {
        let (counted, _) = roll_up(
            tx,
            &prices.table,
            Counted::Through(through),
            Write::UserPairs,
            &replica,
        )?;
        crate::log::info(&format!(
            "database: users under teams counted for {counted} events of replica {replica}"
        ));
    }
    Ok(())
}

/// This collector's replica name, locked for as long as its write connection lives (so that
/// no other replica takes the name, and recovery knows it is alive), with its progress row.
fn claim_replica(conn: &mut Conn, options: &Options) -> Result<String, StoreError> {
    let name = match &options.replica {
        Some(n) => n.clone(),
        None => {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "collector".into());
            let role = if options.cli { "cli" } else { "serve" };
            format!("{host}-{role}-{}", std::process::id())
        }
    };
    if !valid_name(&name) {
        return Err(StoreError::Invalid(format!(
            "replica name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    // Held by another replica recovering this name's events (briefly), or by a running
    // collector of the same name (refused).
    let start = std::time::Instant::now();
    while !conn.try_lock_named(REPLICA_LOCK, &name)? {
        if start.elapsed() > std::time::Duration::from_secs(5) {
            return Err(StoreError::Invalid(format!(
                "replica name {name:?} is in use by another running collector: give each \
                 replica its own --replica"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A command-line tool stores no events: no progress row of its own. A replica new to
    // the database (or one whose events a recovery counted, and removed its row) starts after
    // every event stored so far.
    if !options.cli {
        join_progress(conn, &name)?;
    }
    Ok(name)
}

/// The progress row of `replica`, made if it has none: starting after every event stored so
/// far, since a replica without one is new, or had its events counted by a recovery (which
/// then removed its row). The caller holds the replica's lock.
fn join_progress(conn: &mut Conn, replica: &str) -> db::Result<()> {
    conn.execute(
        "INSERT INTO rollup_progress (replica, events_seq)
         SELECT ?1, CASE WHEN is_called THEN last_value ELSE 0 END FROM events_seq
         ON CONFLICT (replica) DO NOTHING",
        values![replica],
    )?;
    Ok(())
}

/// The last event (`seq`) of `replica` its rollup rows in the database count.
fn progress(conn: &mut Conn, replica: &str) -> db::Result<i64> {
    match conn.backend() {
        Backend::Sqlite => conn.value("SELECT events_seq FROM rollup_progress", &[]),
        Backend::Postgres => Ok(conn
            .query_row_opt(
                "SELECT events_seq FROM rollup_progress WHERE replica = ?1",
                values![replica],
                |r| r.get(0),
            )?
            .unwrap_or(0)),
    }
}

fn set_progress(conn: &mut Conn, replica: &str, seq: i64) -> db::Result<()> {
    match conn.backend() {
        Backend::Sqlite => conn.execute("UPDATE rollup_progress SET events_seq = ?1", values![seq]),
        Backend::Postgres => conn.execute(
            "UPDATE rollup_progress SET events_seq = ?1 WHERE replica = ?2",
            values![seq, replica],
        ),
    }?;
    Ok(())
}

/// Count into `replica`'s rollup rows its events stored after its progress mark, and move the
/// mark: (events counted, the new mark). The caller holds the replica's name (its own, or a
/// stopped replica's lock).
fn recount(
    conn: &mut Conn,
    prices: &PriceTable,
    replica: &str,
) -> Result<(usize, i64), StoreError> {
    let mut tx = conn.begin()?;
    let done = progress(&mut tx, replica)?;
    let (counted, last) = roll_up(&mut tx, prices, Counted::After(done), Write::Whole, replica)?;
    let through = last.map_or(done, |last| last.max(done));
    set_progress(&mut tx, replica, through)?;
    tx.commit()?;
    Ok((counted, through))
}

/// The id of the org named `name`.
pub(crate) fn org_id(conn: &mut Conn, name: &str) -> Result<i64, StoreError> {
    conn.query_row_opt("SELECT id FROM orgs WHERE name = ?1", values![name], |r| {
        r.get(0)
    })?
    .ok_or_else(|| StoreError::NoSuchOrg(name.to_string()))
}

/// Names of orgs and tokens: 1 to 64 letters, digits, '-', '_' or '.'.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Store {
    /// The SQLite store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(&Database::Sqlite(dir.to_path_buf()), Options::default())
    }

    pub fn open_with(database: &Database, options: Options) -> Result<Store, StoreError> {
        let (conn, read, replica, through) = match database {
            Database::Sqlite(dir) => {
                let conn = open_sqlite(dir)?;
                let mut conn = Conn::Sqlite(conn);
                let through = progress(&mut conn, "")?;
                let read = open_sqlite_reader(dir)?;
                (conn, read, String::new(), through)
            }
            Database::Postgres(url) => {
                let mut conn = open_postgres(url, &options)?;
                migrate_postgres(&mut conn)?;
                let replica = claim_replica(&mut conn, &options)?;
                let through = progress(&mut conn, &replica)?;
                let read = open_postgres(url, &options)?;
                (conn, read, replica, through)
            }
        };
        let mut read = read;
        let current = Prices::load(&mut read).map_err(StoreError::Io)?;
        let store = Store {
            database: database.clone(),
            options,
            replica,
            conn: Mutex::new(conn),
            read: Mutex::new(read),
            scans: Mutex::new(Vec::new()),
            queue: Mutex::new(Vec::new()),
            unwritten: Mutex::new(Unwritten {
                through,
                ..Default::default()
            }),
            prices: std::sync::RwLock::new(Arc::new(current)),
            prices_checked: Mutex::new(std::time::Instant::now()),
            // Generation -1: loaded by the first ingest transaction.
            budgets: Mutex::new(Arc::new(crate::budgets::Defs {
                generation: -1,
                ..Default::default()
            })),
            partitions: Mutex::new(Default::default()),
        };
        Ok(store)
    }

    /// Which database this store is in.
    pub fn database(&self) -> &Database {
        &self.database
    }

    pub fn backend(&self) -> Backend {
        match self.database {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// This collector's name among the replicas (empty on SQLite).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Count into the rollups the events stored after the last rollup write: this collector's
    /// own (a collector stopped before its next one) and, on PostgreSQL, those of replicas that
    /// stopped and have not come back (see [`Store::recover_replicas`]); how many. Only the
    /// serving process may: a running collector counts its events in memory, and would count
    /// them twice.
    pub fn recount_rollups(&self) -> Result<usize, StoreError> {
        let mine = {
            let mut conn = self.conn();
            let mut unwritten = lock(&self.unwritten);
            let prices = self.prices();
            let (counted, through) = recount(&mut conn, &prices.table, &self.replica)?;
            unwritten.through = unwritten.through.max(through);
            // Rows the recount wrote: their sketches are no longer what this knew.
            unwritten.sketches.clear();
            counted
        };
        Ok(mine + self.recover_replicas()?)
    }

    /// After the write connection was made again (PostgreSQL: the database restarted, a
    /// failover), this replica's lock went with the old session, and another replica may have
    /// counted its events meanwhile, those whose rows wait here included. So, as at a start:
    /// take the lock back (waiting while such a recovery runs), drop the rows waiting in memory,
    /// and count again the events after the mark. Called with the write connection held, before
    /// anything is written on it.
    fn reclaim(&self, conn: &mut Conn) -> Result<(), StoreError> {
        conn.ensure_connected()?;
        let mut unwritten = lock(&self.unwritten);
        if conn.generation() == unwritten.generation {
            return Ok(());
        }
        let start = std::time::Instant::now();
        while !conn.try_lock_named(REPLICA_LOCK, &self.replica)? {
            if start.elapsed() > CONNECT_PATIENCE {
                return Err(StoreError::Invalid(format!(
                    "replica name {:?} was taken by another collector while the database \
                     could not be reached",
                    self.replica
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        unwritten.clear();
        unwritten.sketches.clear();
        // Another replica may have recovered this one meanwhile and removed its row: counting
        // again from a mark of 0 would count those events twice.
        join_progress(conn, &self.replica)?;
        let prices = self.prices();
        let (counted, through) = recount(conn, &prices.table, &self.replica)?;
        unwritten.through = through;
        unwritten.generation = conn.generation();
        crate::log::info(&format!(
            "database: connected again; {counted} events counted again into the rollups"
        ));
        Ok(())
    }

    /// Count the events of replicas that stopped (their session is gone, so their lock is
    /// free) stored after their last rollup write, into their own rows: once, by whichever
    /// replica takes the lock first. SQLite has no other replicas.
    pub fn recover_replicas(&self) -> Result<usize, StoreError> {
        if self.backend() == Backend::Sqlite {
            return Ok(0);
        }
        let mut conn = self.conn();
        self.reclaim(&mut conn)?;
        let others: Vec<String> = conn.query_map(
            "SELECT replica FROM rollup_progress WHERE replica <> ?1",
            values![self.replica.as_str()],
            |r| r.get(0),
        )?;
        let prices = self.prices();
        let mut counted = 0;
        for other in others {
            if !conn.try_lock_named(REPLICA_LOCK, &other)? {
                continue; // alive, or being recovered by another replica
            }
            // Its events after its mark, counted; then its progress row goes, so that no
            // replica looks at it again (one that comes back under the name starts after every
            // event stored so far: those before are counted).
            let result = recount(&mut conn, &prices.table, &other).and_then(|r| {
                conn.execute(
                    "DELETE FROM rollup_progress WHERE replica = ?1",
                    values![other.as_str()],
                )?;
                Ok(r)
            });
            conn.unlock_named(REPLICA_LOCK, &other)?;
            let (n, _) = result?;
            if n > 0 {
                crate::log::info(&format!(
                    "rollups: counted {n} events of stopped replica {other:?}"
                ));
            }
            counted += n;
        }
        Ok(counted)
    }

    /// A serving replica's periodic work on PostgreSQL: count stopped replicas' events (see
    /// [`Store::recover_replicas`]) and make the event partitions of today and tomorrow ahead
    /// of their events.
    pub fn housekeeping(&self, now_ms: i64) -> Result<(), StoreError> {
        if self.backend() == Backend::Sqlite {
            return Ok(());
        }
        self.recover_replicas()?;
        let made = db::postgres::ensure_partitions(&mut self.conn(), [now_ms, now_ms + DAY])?;
        lock(&self.partitions).extend(made);
        Ok(())
    }

    /// The id of the org named `name`.
    pub fn org_id(&self, name: &str) -> Result<i64, StoreError> {
        org_id(&mut self.conn(), name)
    }

    /// The write connection, for the CLI's commands.
    pub fn conn_for_cli(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.conn()
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Conn> {
        lock(&self.conn)
    }

    /// The read connection.
    pub(crate) fn reader(&self) -> std::sync::MutexGuard<'_, Conn> {
        lock(&self.read)
    }

    /// Another read connection to the database, for a reader that must not wait behind the
    /// read API's queries (see `controls`). On SQLite it is read-only.
    pub(crate) fn open_reader(&self) -> Result<Conn, StoreError> {
        match &self.database {
            Database::Sqlite(dir) => open_sqlite_reader(dir),
            Database::Postgres(url) => open_postgres(url, &self.options),
        }
    }

    /// Another connection that may write, for background work that must not hold the ingest
    /// connection (alert delivery).
    pub(crate) fn open_writer(&self) -> Result<Conn, StoreError> {
        match &self.database {
            Database::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.join("tally.db"))
                    .map_err(|e| StoreError::Io(e.to_string()))?;
                c.busy_timeout(std::time::Duration::from_secs(5))
                    .and_then(|_| c.pragma_update(None, "foreign_keys", "ON"))
                    .map_err(|e| StoreError::Io(e.to_string()))?;
                Ok(Conn::Sqlite(c))
            }
            Database::Postgres(url) => open_postgres(url, &self.options),
        }
    }

    /// Whether the database answers (for `/readyz`): a trivial query on a connection of its
    /// own, so that a long ingest transaction does not make a replica look unready.
    pub fn ready(&self) -> Result<(), StoreError> {
        // One attempt: a replica whose database is away says so at once.
        let mut c = match &self.database {
            Database::Sqlite(dir) => open_sqlite_reader(dir)?,
            Database::Postgres(url) => Conn::open(url)?,
        };
        c.value::<i64>("SELECT 1", &[])?;
        // A replica older than the database's schema may not write (a newer replica's
        // migration fenced it off): not ready, so that load balancers send its traffic to the
        // others.
        if let Database::Postgres(_) = self.database {
            let version: i64 = c.value("SELECT max(version) FROM schema_version", &[])?;
            if version > POSTGRES_SCHEMA_VERSION {
                return Err(StoreError::Io(format!(
                    "the database is at schema version {version}, newer than this collector \
                     ({POSTGRES_SCHEMA_VERSION}); upgrade it"
                )));
            }
        }
        Ok(())
    }

    /// Create an org and return its key: the only time the key exists outside the caller.
    pub fn create_org(&self, name: &str, now_ms: i64) -> Result<String, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Io(format!(
                "org name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let key = keys::generate();
        let n = self.conn().execute(
            "INSERT INTO orgs (name, key_hash, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            values![name, keys::hash(&key), now_ms],
        )?;
        if n == 0 {
            return Err(StoreError::OrgExists(name.into()));
        }
        Ok(key)
    }

    /// Replace an org's key; the old one stops working at once.
    pub fn rotate_key(&self, name: &str) -> Result<String, StoreError> {
        let key = keys::generate();
        let n = self.conn().execute(
            "UPDATE orgs SET key_hash = ?1 WHERE name = ?2",
            values![keys::hash(&key), name],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchOrg(name.into()));
        }
        Ok(key)
    }

    /// Disable (or enable again) an org: a disabled org's key gets 401 at once.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE orgs SET disabled = ?1 WHERE name = ?2",
            values![disabled, name],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchOrg(name.into()));
        }
        Ok(())
    }

    pub fn list_orgs(&self) -> Result<Vec<(String, i64, bool)>, StoreError> {
        Ok(self.conn().query_map(
            "SELECT name, created_ms, disabled FROM orgs ORDER BY name",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<i64>(2)? != 0)),
        )?)
    }

    /// The enabled org a key belongs to. The key is looked up by its SHA-256 (an index probe
    /// that reveals nothing useful about the key); the stored hash is then compared again in
    /// constant time.
    pub fn org_for_key(&self, key: &str) -> Result<Option<Org>, StoreError> {
        let hash = keys::hash(key);
        let found: Option<(i64, String, String)> = self.reader().query_row_opt(
            "SELECT id, name, key_hash FROM orgs WHERE key_hash = ?1 AND disabled = 0",
            values![hash.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(found
            .filter(|(_, _, stored)| keys::constant_time_eq(stored.as_bytes(), hash.as_bytes()))
            .map(|(id, name, _)| Org { id, name }))
    }

    /// The name calibration is kept under: the model without a trailing snapshot date
    /// (`-20250929`, `-2024-07-18`, `@20241022`), so that snapshots of a model share one ratio.
    fn calibration_model(e: &Event) -> Option<String> {
        let m = e.model()?;
        Some(strip_snapshot_date(m).to_string())
    }

    /// Store a batch, all or nothing, and return once it is committed (and, with
    /// synchronous=FULL, on disk). Returns (accepted, duplicates, the indexes of the events
    /// newly stored): an event whose `request_id` the org already has is a duplicate, counted
    /// and not stored again.
    ///
    /// Group commit: batches that arrive while a transaction is being written wait, and the
    /// next caller to get the connection stores all of them in one transaction, so they share
    /// one sync to disk. If that transaction fails, each of its batches is tried again in a
    /// transaction of its own, so that one bad batch fails alone. The batch's rollup rows are
    /// counted before it queues, and join the rows waiting to be written once it is committed
    /// (see [`Unwritten`]).
    ///
    /// Calibration happens here too: an event with exact usage and Tally's own count adds a
    /// sample for its model; a measured event of a model with enough samples gets its output
    /// scaled by the model's exact/measured ratio (and its cost recomputed), and is stored as
    /// `measured_calibrated`.
    pub fn insert_events(
        &self,
        org: &Org,
        batch: Arc<Batch>,
        now_ms: i64,
    ) -> Result<Stored, StoreError> {
        self.insert_owned(Owners::one(org.clone()), batch, now_ms)
    }

    /// [`Store::insert_events`] for a batch whose events may belong to several orgs, each
    /// stored (and rolled up, and calibrated) under its own.
    pub fn insert_owned(
        &self,
        owners: Owners,
        mut batch: Arc<Batch>,
        now_ms: i64,
    ) -> Result<Stored, StoreError> {
        self.price(&owners, Arc::make_mut(&mut batch));
        self.insert_priced(owners, batch, now_ms)
    }

    /// Price the events that arrive without a cost with this collector's table: filters
    /// carry no prices and send none. An event that arrives priced (a filter from before prices
    /// moved here, or a client that prices its own calls) keeps its cost: each event is priced
    /// once, by one table.
    pub fn price(&self, owners: &Owners, batch: &mut Batch) {
        let prices = self.prices();
        let mut pricer = Pricer::default();
        for (i, (e, _)) in batch.iter_mut().enumerate() {
            if e.cost_usd.is_none() {
                let org = owners.of(i).map_or(0, |o| o.id);
                e.cost_usd = prices.cost_usd(&mut pricer, org, e);
            }
        }
    }

    /// The prices in force: read again when a change was recorded (checked at most once a
    /// second), so a loaded table or an org's rate applies within a second on every collector.
    pub fn prices(&self) -> Arc<Prices> {
        let due = {
            let mut checked = lock(&self.prices_checked);
            let due = checked.elapsed() >= std::time::Duration::from_secs(1);
            if due {
                *checked = std::time::Instant::now();
            }
            due
        };
        let current = self
            .prices
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        if !due {
            return current;
        }
        let generation: Option<i64> = self
            .reader()
            .value(
                "SELECT generation FROM pricing_generation WHERE id = 1",
                &[],
            )
            .ok();
        if generation.is_none_or(|g| g == current.generation) {
            return current;
        }
        // Parsed on a connection of its own: the shared reader authenticates every call.
        let loaded = self
            .open_reader()
            .map_err(|e| e.to_string())
            .and_then(|mut conn| Prices::load(&mut conn));
        match loaded {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                crate::log::info(&format!(
                    "prices: now {} ({} models)",
                    fresh.source,
                    fresh.table.len()
                ));
                match self.prices.write() {
                    Ok(mut p) => *p = fresh.clone(),
                    Err(p) => *p.into_inner() = fresh.clone(),
                }
                fresh
            }
            Err(e) => {
                crate::log::error(&format!("prices: cannot read the new prices: {e}"));
                current
            }
        }
    }

    /// [`Store::insert_owned`] for a batch [`Store::price`] has priced.
    pub fn insert_priced(
        &self,
        owners: Owners,
        batch: Arc<Batch>,
        now_ms: i64,
    ) -> Result<Stored, StoreError> {
        self.insert_from(owners, batch, now_ms, None)
    }

    /// [`Store::insert_priced`] for a batch a filter sent with its id (`X-Tally-Filter`).
    pub fn insert_from(
        &self,
        owners: Owners,
        batch: Arc<Batch>,
        now_ms: i64,
        filter: Option<String>,
    ) -> Result<Stored, StoreError> {
        let prices = self.prices();
        let rollup = owners.with_ids(owners.count(&prices.table, &batch, 0..batch.len()));
        let job = Arc::new(Job {
            owners,
            rollup: Mutex::new(rollup),
            batch,
            now_ms,
            filter,
            outcome: Mutex::new(None),
        });
        lock(&self.queue).push(job.clone());
        loop {
            let mut conn = self.conn();
            // Whoever held the connection before may have stored this batch already.
            if let Some(done) = lock(&job.outcome).take() {
                return done;
            }
            let group: Vec<Arc<Job>> = {
                let mut queue = lock(&self.queue);
                let (mut n, mut events) = (0, 0);
                while let Some(j) = queue.get(n) {
                    if n > 0 && events + j.batch.len() > MAX_GROUP_EVENTS {
                        break;
                    }
                    events += j.batch.len();
                    n += 1;
                }
                queue.drain(..n).collect()
            };
            if group.is_empty() {
                // Only a holder of the connection takes batches, and it records every outcome
                // before it lets go; a holder that panicked lost them.
                return Err(StoreError::Io("a queued batch was lost".into()));
            }
            match self.store_group(&mut conn, &group) {
                Ok(outcomes) => {
                    for (j, o) in group.iter().zip(outcomes) {
                        *lock(&j.outcome) = Some(Ok(o));
                    }
                }
                Err(e) if group.len() == 1 => *lock(&group[0].outcome) = Some(Err(e)),
                Err(_) => {
                    for j in &group {
                        let o = self
                            .store_group(&mut conn, std::slice::from_ref(j))
                            .map(|mut o| o.swap_remove(0));
                        *lock(&j.outcome) = Some(o);
                    }
                }
            }
        }
    }

    /// Store batches in one transaction; their outcomes, in order.
    fn store_group(&self, conn: &mut Conn, group: &[Arc<Job>]) -> Result<Vec<Stored>, StoreError> {
        if let Database::Postgres(_) = self.database {
            self.reclaim(conn)?;
            self.make_partitions(conn, group)?;
        }
        // On SQLite, IMMEDIATE (see `Conn::begin`): the budgets are read first, and a read
        // before the first write would fail the write if another process (the CLI) committed
        // in between.
        let mut tx = conn.begin()?;
        let budgets = self.budget_defs(&mut tx)?;
        // Each batch's rollup rows (its own, or counted again: see `store_batch`); and the
        // last event stored.
        let mut counted = Vec::with_capacity(group.len());
        let mut last = None;
        let mut outcomes = Vec::with_capacity(group.len());
        let mut spent = Vec::with_capacity(group.len());
        for j in group {
            let (stored, again, spend) = self.store_batch(&mut tx, j, &mut last, &budgets)?;
            outcomes.push(stored);
            counted.push(again);
            spent.push(spend);
        }
        // Budget spend last: its rows are shared by every replica, so their locks are taken
        // once every event is in, and held only until the commit (a replica waiting on another's
        // events while holding a spend row could deadlock with it).
        for (j, spend) in group.iter().zip(spent) {
            if !spend.is_empty() {
                spend.write(&mut tx, &budgets, j.filter.as_deref(), j.now_ms)?;
            }
        }
        let mut unwritten = lock(&self.unwritten);
        let due = unwritten
            .since
            .is_some_and(|t| t.elapsed() >= ROLLUP_WRITE_EVERY);
        let written = if due {
            Some(unwritten.write(&mut tx, &self.replica)?)
        } else {
            None
        };
        tx.commit()?;
        // Only now: rows of a transaction that failed must not be counted.
        if let Some(w) = written {
            unwritten.written(w);
        }
        for (j, again) in group.iter().zip(counted) {
            let rows = again.unwrap_or_else(|| std::mem::take(&mut *lock(&j.rollup)));
            for (org, p) in rows {
                unwritten.add(org, p);
            }
        }
        if let Some(seq) = last {
            unwritten.through = seq;
        }
        Ok(outcomes)
    }

    /// Insert one batch's events; `last` becomes the `seq` of the last one stored. Returns,
    /// besides the outcome, the batch's rollup rows counted again when `job.rollup` does not
    /// fit: some events were duplicates, or had their output calibrated.
    fn store_batch(
        &self,
        tx: &mut Conn,
        job: &Job,
        last: &mut Option<i64>,
        budgets: &crate::budgets::Defs,
    ) -> Result<(Stored, Option<OrgRows>, crate::budgets::Added), StoreError> {
        let (owners, batch, now_ms) = (&job.owners, &job.batch, job.now_ms);
        // Events are stored under the org their key authenticated; a batch without one is a
        // bug, refused whole (PostgreSQL checks no foreign key on events).
        if owners.orgs().is_empty() && !batch.is_empty() {
            return Err(StoreError::Io("a batch with no org was refused".into()));
        }
        let mut out = Outcome {
            new: Vec::with_capacity(batch.len()),
            ..Default::default()
        };
        let mut pricer = Pricer::default();
        let prices = self.prices();
        // On PostgreSQL a round trip per event would bound ingest by the network's latency:
        // events go in by the batch, one statement each ([`insert_rows`]), unless an event
        // reads calibration, which samples taught by the events before it may change.
        let reads = |e: &Event| {
            e.token_source == Some(TokenSource::Measured)
                && e.measured_output_tokens.is_some()
                && Self::calibration_model(e).is_some()
        };
        let bulk = tx.backend() == Backend::Postgres && !batch.iter().any(|(e, _)| reads(e));
        let mut rows: Vec<Value> = Vec::new();
        for (index, (original, ts)) in batch.iter().enumerate() {
            let org_id = owners.of(index).map_or(0, |o| o.id);
            let mut e = std::borrow::Cow::Borrowed(original);
            // Calibration reads and teaches only with Tally's own count beside the event.
            if let (Some(TokenSource::Measured), Some(m), Some(model)) = (
                e.token_source,
                e.measured_output_tokens,
                Self::calibration_model(original).filter(|_| reads(original)),
            ) {
                let learned: Option<(i64, i64, i64)> = tx.query_row_opt(
                    "SELECT exact_output, measured_output, samples FROM calibration
                     WHERE org_id = ?1 AND model = ?2",
                    values![org_id, model],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                if let Some((exact, measured, n)) = learned {
                    if n >= MIN_CALIBRATION_SAMPLES && measured > 0 {
                        let ev = e.to_mut();
                        let calibrated = (m as f64 * exact as f64 / measured as f64).round() as u64;
                        ev.output_tokens = Some(calibrated);
                        ev.token_source = Some(TokenSource::MeasuredCalibrated);
                        out.calibrated_at.push(index);
                        ev.cost_usd = prices.cost_usd(&mut pricer, org_id, ev);
                    }
                }
            }
            let e = e.as_ref();
            let row = event_values(org_id, e, *ts, now_ms, &self.replica);
            if bulk {
                rows.extend(row);
                continue;
            }
            // The new event's `seq`; none for a duplicate.
            let seq: Option<i64> = match tx.backend() {
                Backend::Sqlite => match (tx.execute(INSERT_EVENT, &row[..42])?, tx.sqlite()) {
                    (1, Some(c)) => Some(c.last_insert_rowid()),
                    _ => None,
                },
                Backend::Postgres => tx.query_row_opt(INSERT_EVENT_REPLICA, &row, |r| r.get(0))?,
            };
            out.record(tx, budgets, job, (index, org_id, e, *ts), seq)?;
        }
        if bulk {
            let seqs = insert_rows(tx, batch, owners, rows)?;
            for (index, ((e, ts), seq)) in batch.iter().zip(seqs).enumerate() {
                let org_id = owners.of(index).map_or(0, |o| o.id);
                out.record(tx, budgets, job, (index, org_id, e, *ts), seq)?;
            }
        }
        let Outcome {
            accepted,
            new,
            calibrated,
            calibrated_at,
            spend,
            last: mine,
        } = out;
        if mine.is_some() {
            *last = mine;
        }
        let again = (new.len() < batch.len() || !calibrated_at.is_empty()).then(|| {
            let as_sent = new
                .iter()
                .copied()
                .filter(|i| calibrated_at.binary_search(i).is_err());
            let mut rows = owners.count(&prices.table, batch, as_sent);
            for (i, e) in &calibrated {
                if let (Some((_, ts)), Some(r)) = (batch.get(*i), rows.get_mut(owners.index(*i))) {
                    r.add(&prices.table, e, *ts);
                }
            }
            owners.with_ids(rows)
        });
        Ok(((accepted, batch.len() - accepted, new), again, spend))
    }

    /// Every org's budgets, read again in this transaction if they changed since they were
    /// loaded (one row read per ingest transaction), so that a budget set from the CLI counts
    /// every event committed after it.
    fn budget_defs(&self, tx: &mut Conn) -> Result<Arc<crate::budgets::Defs>, StoreError> {
        let generation: i64 = tx.value("SELECT n FROM budget_generation", &[])?;
        let mut current = lock(&self.budgets);
        if current.generation != generation {
            *current = Arc::new(crate::budgets::Defs::load(tx)?);
        }
        Ok(current.clone())
    }

    /// Every org's budgets as they stand (read again only when their generation moved).
    pub fn budgets(&self) -> Result<Arc<crate::budgets::Defs>, StoreError> {
        self.budget_defs(&mut self.reader())
    }

    /// The budgets of the org `org_id` as they stand.
    pub fn budgets_of(&self, org_id: i64) -> Result<Vec<crate::budgets::Budget>, StoreError> {
        Ok(self
            .budgets()?
            .by_org
            .get(&org_id)
            .cloned()
            .unwrap_or_default())
    }

    /// Write the rollup rows still waiting (see [`Unwritten`]), so that the table counts every
    /// stored event. Reads of the rollups call it first.
    pub fn write_rollups(&self) -> Result<(), StoreError> {
        if lock(&self.unwritten).is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        self.reclaim(&mut conn)?;
        let mut unwritten = lock(&self.unwritten);
        if unwritten.is_empty() {
            return Ok(());
        }
        let mut tx = conn.begin()?;
        let written = unwritten.write(&mut tx, &self.replica)?;
        tx.commit()?;
        unwritten.written(written);
        Ok(())
    }

    /// Figures per key of `dim` (or the total, for `None`) over `[from, to)` for the events
    /// `filter` picks (its `limit` and `before` unused), sorted by cost, and how they were read.
    pub fn summary(
        &self,
        org: &Org,
        dim: Option<&str>,
        filter: &EventFilter,
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<(Vec<(String, Agg)>, Read), StoreError> {
        let (rows, read) = match self.plan(org, filter, dim, from, to)? {
            Plan::Rollups => {
                let finest = rollup::finest(dim);
                let rows =
                    self.summary_rows(org, dim.unwrap_or("all"), None, finest, from, to, now)?;
                (rows, Read::Rollups(finest_at(from, now, finest)))
            }
            Plan::Pair(p) => {
                let (name, only, shown) = pair_read(&p, dim);
                let mut rows =
                    self.summary_rows(org, &name, only.as_deref(), HOUR, from, to, now)?;
                if let Some(k) = shown {
                    rows.iter_mut().for_each(|r| r.0 = k.clone());
                }
                (rows, Read::Rollups(HOUR))
            }
            Plan::Events => {
                let mut out: HashMap<String, Agg> = HashMap::new();
                self.scan(org, filter, from, to, |_, e, savings| {
                    let key = match dim {
                        None => std::borrow::Cow::Borrowed(""),
                        Some(d) => match rollup::key_of(e, d) {
                            Some(k) => k,
                            None => return,
                        },
                    };
                    out.entry(key.into_owned())
                        .or_default()
                        .add_event(e, savings);
                })?;
                (out.into_iter().collect(), Read::Events)
            }
        };
        let mut rows = rows;
        rows.sort_by(|a, b| {
            b.1.cost_usd
                .total_cmp(&a.1.cost_usd)
                .then(b.1.requests.cmp(&a.1.requests))
                .then(a.0.cmp(&b.0))
        });
        Ok((rows, read))
    }

    /// Where to read a filtered query from ([`read_plan`]), except that a range older than the
    /// org's oldest stored event (deleted by retention) is read from pair rows where it can be,
    /// since the events are gone.
    fn plan(
        &self,
        org: &Org,
        filter: &EventFilter,
        dim: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Plan, StoreError> {
        let plan = read_plan(filter, dim, to - from);
        if !matches!(plan, Plan::Events) {
            return Ok(plan);
        }
        let oldest: Option<i64> = self.reader().query_row_opt(
            "SELECT ts_ms FROM events WHERE org_id = ?1 ORDER BY ts_ms LIMIT 1",
            values![org.id],
            |r| r.get(0),
        )?;
        if oldest.is_some_and(|t| from >= t) {
            return Ok(plan);
        }
        Ok(match read_plan(filter, dim, i64::MAX) {
            Plan::Pair(p) => Plan::Pair(p),
            _ => Plan::Events,
        })
    }

    /// Rollup rows of one dimension (of its key `only`, if given) over `[from, to)`, per key,
    /// read at `finest` resolution.
    #[allow(clippy::too_many_arguments)]
    fn summary_rows(
        &self,
        org: &Org,
        dim: &str,
        only: Option<&str>,
        finest: i64,
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<Vec<(String, Agg)>, StoreError> {
        self.write_rollups()?;
        let mut conn = self.reader();
        let (key_sql, key_arg) = only_key(only);
        let sql = format!(
            "SELECT key, {} FROM rollups WHERE org_id = ?1 AND granularity_ms = ?2 AND dim = ?3
               AND bucket_ms >= ?4 AND bucket_ms < ?5{key_sql}",
            rollup::FIGURES
        );
        let mut out: HashMap<String, Agg> = HashMap::new();
        // The range widens to whole units of the finest rows: from rounds down, to rounds up
        // (so "the last 24 hours" includes the hour, or minute, in progress).
        let (from, to) = (
            align(from, now, finest, false),
            align(to, now, finest, true),
        );
        // Pair rows are per hour only; the dimensions' own, per day, hour and maybe minute.
        let parts = if dim.contains(':') {
            vec![(rollup::PAIR_GRANULARITY, from, to)]
        } else {
            rollup::plan(from, to, finest)
        };
        for (g, start, end) in parts {
            // Merge straight from the row: no owned key unless new, sketches added in place.
            // (On PostgreSQL a key has a row per replica: they add up like buckets.)
            let args = [values![org.id, g, dim, start, end], &key_arg].concat();
            conn.query_each(&sql, &args, |r| {
                let key = match r.0.first() {
                    Some(Value::Text(k)) => k.as_str(),
                    _ => return Err(db::DbError::NoRow),
                };
                if !out.contains_key(key) {
                    out.insert(key.to_string(), Agg::default());
                }
                if let Some(a) = out.get_mut(key) {
                    rollup::merge_row(a, &r, 1)?;
                }
                Ok(())
            })?;
        }
        Ok(out.into_iter().collect())
    }

    /// Figures per bucket (and per key of `dim`) over `[from, to)` for the events `filter`
    /// picks; `bucket` is [`MINUTE`], [`HOUR`] or [`DAY`] (UTC). Returns the points, in time
    /// order, and the bucket used: a bucket finer than the rows that can answer (hour-only
    /// dimensions, or a filter over a long range) becomes [`HOUR`].
    #[allow(clippy::too_many_arguments)]
    pub fn timeseries(
        &self,
        org: &Org,
        bucket: i64,
        dim: Option<&str>,
        filter: &EventFilter,
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<Series, StoreError> {
        let mut out: std::collections::BTreeMap<(i64, String), Agg> = Default::default();
        let plan = self.plan(org, filter, dim, from, to)?;
        let finest = match &plan {
            // Minute rows are kept for MINUTE_ROLLUP_DAYS only.
            Plan::Rollups => finest_at(from, now, rollup::finest(dim)),
            Plan::Pair(..) => HOUR,
            Plan::Events => MINUTE,
        };
        let bucket = bucket.max(finest);
        // Every bucket that meets [from, to), the one holding `from` from its first millisecond.
        let from = from.div_euclid(bucket) * bucket;
        let (name, only, fixed) = match &plan {
            Plan::Rollups => (dim.unwrap_or("all").to_string(), None, None),
            Plan::Pair(p) => pair_read(p, dim),
            Plan::Events => {
                self.scan(org, filter, from, to, |ts, e, savings| {
                    let key = match dim {
                        None => std::borrow::Cow::Borrowed(""),
                        Some(d) => match rollup::key_of(e, d) {
                            Some(k) => k,
                            None => return,
                        },
                    };
                    let b = ts.div_euclid(bucket) * bucket;
                    out.entry((b, key.into_owned()))
                        .or_default()
                        .add_event(e, savings);
                })?;
                let points = out.into_iter().map(|((b, k), a)| (b, k, a)).collect();
                return Ok((points, bucket, Read::Events));
            }
        };
        self.write_rollups()?;
        let mut conn = self.reader();
        // Day buckets from day rows, hour buckets from hour rows, minute buckets from minute rows.
        let (key_sql, key_arg) = only_key(only.as_deref());
        let sql = format!(
            "SELECT bucket_ms, key, {} FROM rollups WHERE org_id = ?1 AND granularity_ms = ?2
               AND dim = ?3 AND bucket_ms >= ?4 AND bucket_ms < ?5{key_sql}",
            rollup::FIGURES
        );
        let g = match plan {
            Plan::Pair(..) => rollup::PAIR_GRANULARITY,
            _ => bucket,
        };
        let args = [values![org.id, g, name, from, to], &key_arg].concat();
        conn.query_each(&sql, &args, |r| {
            let b: i64 = r.get(0)?;
            let key: String = match &fixed {
                Some(k) => k.clone(),
                None => r.get(1)?,
            };
            let a = out.entry((b.div_euclid(bucket) * bucket, key)).or_default();
            rollup::merge_row(a, &r, 2)
        })?;
        let points = out.into_iter().map(|((b, k), a)| (b, k, a)).collect();
        Ok((points, bucket, Read::Rollups(bucket)))
    }

    /// Call `f` with each of the org's events in `[from, to)` that `filter` picks (its time,
    /// the event's rollup fields, and what its cached input saved).
    fn scan(
        &self,
        org: &Org,
        filter: &EventFilter,
        from: i64,
        to: i64,
        mut f: impl FnMut(i64, &Event, f64),
    ) -> Result<(), StoreError> {
        let mut sql = format!(
            "SELECT {LITE_COLUMNS} FROM events WHERE org_id = ? AND ts_ms >= ? AND ts_ms < ?"
        );
        let mut args: Vec<Value> = vec![org.id.into(), from.into(), to.into()];
        filter.push_sql(&mut sql, &mut args);
        let taken = lock(&self.scans).pop();
        let mut conn = match taken {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let mut pricer = tally::pricing::Pricer::default();
        let prices = self.prices();
        conn.query_each(&sql, &args, |r| {
            let (ts, e) = lite_event(&r)?;
            let saved = pricer.cache_savings_usd(&prices.table, &e);
            f(ts, &e, saved);
            Ok(())
        })?;
        // Kept for the next scan (a few at most: one per concurrent scan).
        let mut pool = lock(&self.scans);
        if pool.len() < self.options.pool.max(1) {
            pool.push(conn);
        }
        Ok(())
    }

    /// Delete raw events older than `days` (rollups stay: hour rows for ever, minute rows for
    /// [`MINUTE_ROLLUP_DAYS`]). Returns how many events went. On PostgreSQL the events are
    /// partitioned by day, and whole partitions older than the cutoff are dropped (no row is
    /// deleted one by one), by one replica at a time.
    pub fn prune(&self, days: u32, now: i64) -> Result<usize, StoreError> {
        self.write_rollups()?;
        let mut conn = self.conn();
        // Minute rows go below: a sketch kept for one would outlive it.
        lock(&self.unwritten).sketches.clear();
        let cutoff = now - i64::from(days) * DAY;
        let n = match self.database {
            Database::Sqlite(_) => {
                conn.execute("DELETE FROM events WHERE ts_ms < ?1", values![cutoff])? as usize
            }
            Database::Postgres(_) => {
                if !conn.try_lock(RETENTION_LOCK)? {
                    return Ok(0); // another replica is at it
                }
                let dropped = self.drop_partitions(&mut conn, cutoff);
                conn.unlock(RETENTION_LOCK)?;
                dropped?
            }
        };
        let orgs: Vec<i64> = conn.query_map("SELECT id FROM orgs", &[], |r| r.get(0))?;
        for org in orgs {
            // One range of the table per org and dimension (rollups are keyed by time within
            // them).
            for dim in std::iter::once("all").chain(rollup::MINUTE_DIMENSIONS) {
                conn.execute(
                    "DELETE FROM rollups WHERE org_id = ?1 AND granularity_ms = ?2 AND dim = ?3
                       AND bucket_ms < ?4",
                    values![org, MINUTE, dim, now - MINUTE_ROLLUP_DAYS * DAY],
                )?;
            }
        }
        Ok(n)
    }

    /// Drop the event partitions wholly before `cutoff` (rounded down to its day): how many
    /// events they held. The default partition's old rows (events of a day no partition was
    /// made for) are deleted.
    fn drop_partitions(&self, conn: &mut Conn, cutoff: i64) -> Result<usize, StoreError> {
        let cutoff = cutoff.div_euclid(DAY) * DAY;
        let parts: Vec<String> = conn.query_map(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'events'::regclass AND c.relname LIKE 'events\\_%'
             ORDER BY c.relname",
            &[],
            |r| r.get(0),
        )?;
        let mut n = 0usize;
        for name in parts {
            let Some((_, end)) = db::postgres::partition_range(&name) else {
                continue;
            };
            if end > cutoff {
                continue;
            }
            // The name was read from the catalogue and parsed as a day's: safe to quote.
            let held: i64 = conn.value(&format!("SELECT count(*) FROM \"{name}\""), &[])?;
            conn.batch(&format!("DROP TABLE \"{name}\""))?;
            lock(&self.partitions).remove(&name);
            n += held as usize;
        }
        n += conn.execute(
            "DELETE FROM events_default WHERE ts_ms < ?1",
            values![cutoff],
        )? as usize;
        Ok(n)
    }

    /// Make the event partitions a group's events need (PostgreSQL), outside the ingest
    /// transaction: making one takes a lock on the whole table, which must not be held while
    /// the transaction stores.
    fn make_partitions(&self, conn: &mut Conn, group: &[Arc<Job>]) -> Result<(), StoreError> {
        let mut wanted: Vec<i64> = Vec::new();
        {
            let known = lock(&self.partitions);
            for j in group {
                for (_, ts) in j.batch.iter() {
                    let day = ts.div_euclid(DAY);
                    if wanted.last() != Some(&day)
                        && !known.contains(&db::postgres::day_partition(*ts).0)
                    {
                        wanted.push(day);
                    }
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let made = db::postgres::ensure_partitions(conn, wanted.iter().map(|d| d * DAY))?;
        lock(&self.partitions).extend(made);
        Ok(())
    }

    /// Price an org's stored events in `[from, to)` again with the prices in force (after a
    /// new table or a rate of the org's own), correcting the rollups by what changed and
    /// recording the repricing. Events whose cost does not change are left alone. Runs beside a
    /// serving collector: only events its rollup rows in the database already count are
    /// repriced (their rows take the difference); the last second's are skipped and counted.
    pub fn reprice(
        &self,
        org_name: &str,
        from: Option<i64>,
        to: Option<i64>,
        now_ms: i64,
    ) -> Result<Repricing, StoreError> {
        let org_id = org_id(&mut self.conn(), org_name)?;
        // Prices as they are now in the database, not as this process last read them.
        let prices = Prices::load(&mut self.conn()).map_err(StoreError::Io)?;
        let (lo, hi) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
        let mut conn = self.conn();
        let mut out = Repricing::default();
        // The record is made first and kept current pass by pass: a run cut short still says
        // what it changed.
        let record: i64 = conn.value(
            "INSERT INTO repricings (at_ms, org_id, from_ms, to_ms, events, changed, before_usd,
                after_usd) VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0) RETURNING id",
            values![now_ms, org_id, from, to],
        )?;
        let mut after_seq = 0i64;
        // The events each replica's rollup rows in the database count: up to its progress
        // mark (SQLite has one, without a replica column).
        let counted_by = match conn.backend() {
            Backend::Sqlite => "seq <= (SELECT events_seq FROM rollup_progress)",
            Backend::Postgres => {
                // A replica with no progress row was recovered whole: all its events count.
                "seq <= coalesce((SELECT p.events_seq FROM rollup_progress p
                                  WHERE p.replica = events.replica), 9223372036854775807)"
            }
        };
        // Short passes, each a transaction of its own (on SQLite IMMEDIATE: it takes the write
        // lock before reading, so a serving collector's commit cannot make it fail midway, and
        // its ingest waits for one pass at most); each pass changes its events, their rollups
        // and the record together.
        loop {
            let mut tx = conn.begin()?;
            // Only events the rollup rows in the database count: newer ones wait in a serving
            // collector's memory at their old cost, and a difference applied now would be lost
            // or counted twice. They are left, and counted as skipped.
            let batch: Vec<(i64, i64, Event)> = tx.query_map(
                &format!(
                    "SELECT {LITE_COLUMNS}, seq FROM events WHERE org_id = ?1 AND seq > ?2
                       AND {counted_by} AND ts_ms >= ?3 AND ts_ms < ?4 ORDER BY seq LIMIT ?5"
                ),
                values![org_id, after_seq, lo, hi, REPRICE_PASS],
                |r| {
                    let (ts, e) = lite_event(r)?;
                    Ok((r.get::<i64>(24)?, ts, e))
                },
            )?;
            let Some(&(last, _, _)) = batch.last() else {
                out.skipped = tx.value::<i64>(
                    &format!(
                        "SELECT count(*) FROM events WHERE org_id = ?1 AND seq > ?2
                           AND NOT ({counted_by}) AND ts_ms >= ?3 AND ts_ms < ?4"
                    ),
                    values![org_id, after_seq, lo, hi],
                )? as u64;
                break;
            };
            after_seq = last;
            let (mut before, mut after) = (Pending::default(), Pending::default());
            let mut pricer = Pricer::default();
            for (seq, ts, mut e) in batch {
                out.events += 1;
                let was = e.cost_usd;
                let now = prices.cost_usd(&mut pricer, org_id, &e);
                out.before_usd += was.unwrap_or(0.0);
                out.after_usd += now.unwrap_or(0.0);
                if now == was {
                    continue;
                }
                out.changed += 1;
                before.add(&prices.table, &e, ts);
                e.cost_usd = now;
                after.add(&prices.table, &e, ts);
                // With its time: on PostgreSQL, the partition to look in.
                tx.execute(
                    "UPDATE events SET cost_usd = ?1 WHERE seq = ?2 AND ts_ms = ?3",
                    values![now, seq, ts],
                )?;
            }
            after.write_price_change(&mut tx, org_id, &mut before, &self.replica)?;
            tx.execute(
                "UPDATE repricings SET events = ?2, changed = ?3, before_usd = ?4, after_usd = ?5
                 WHERE id = ?1",
                values![
                    record,
                    out.events,
                    out.changed,
                    out.before_usd,
                    out.after_usd
                ],
            )?;
            tx.commit()?;
        }
        Ok(out)
    }

    /// Size of the database (SQLite: its files, main and WAL), for the metrics.
    pub fn db_bytes(&self) -> u64 {
        let path = match &self.database {
            Database::Sqlite(dir) => dir.join("tally.db"),
            Database::Postgres(_) => {
                return self
                    .reader()
                    .value::<i64>("SELECT pg_database_size(current_database())", &[])
                    .map_or(0, |n| n.max(0) as u64)
            }
        };
        ["", "-wal"]
            .iter()
            .filter_map(|sfx| {
                let mut p = path.clone().into_os_string();
                p.push(sfx);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum()
    }

    /// An org's events, newest first.
    pub fn query_events(&self, org: &Org, f: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE org_id = ?");
        let mut args: Vec<Value> = vec![org.id.into()];
        if let Some(v) = f.from_ms {
            sql.push_str(" AND ts_ms >= ?");
            args.push(v.into());
        }
        if let Some(v) = f.to_ms {
            sql.push_str(" AND ts_ms < ?");
            args.push(v.into());
        }
        f.push_sql(&mut sql, &mut args);
        if let Some((ts, id)) = &f.before {
            // Keyset paging: the list's order is (ts_ms, request_id) descending, so a page
            // neither repeats nor skips an event whatever is stored meanwhile.
            // `ts_ms <= ?` first, so that the index bounds the range.
            sql.push_str(" AND ts_ms <= ? AND (ts_ms < ? OR (ts_ms = ? AND request_id < ?))");
            args.push((*ts).into());
            args.push((*ts).into());
            args.push((*ts).into());
            args.push(id.clone().into());
        }
        sql.push_str(" ORDER BY ts_ms DESC, request_id DESC LIMIT ?");
        args.push(i64::from(f.limit).into());

        Ok(self
            .reader()
            .query_map(&sql, &args, |r| event_from_row(r, 0, &org.name))?)
    }
}

fn strip_snapshot_date(model: &str) -> &str {
    let b = model.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let n = b.len();
    // -YYYYMMDD or @YYYYMMDD
    if n > 9 && matches!(b[n - 9], b'-' | b'@') && digits(n - 8..n) {
        return &model[..n - 9];
    }
    // -YYYY-MM-DD
    if n > 11
        && b[n - 11] == b'-'
        && digits(n - 10..n - 6)
        && b[n - 6] == b'-'
        && digits(n - 5..n - 3)
        && b[n - 3] == b'-'
        && digits(n - 2..n)
    {
        return &model[..n - 11];
    }
    model
}

/// A range end on a boundary of the finest rows kept (minute rows only for the last
/// [`MINUTE_ROLLUP_DAYS`] days), rounded down, or up for the end of a range.
fn align(t: i64, now: i64, finest: i64, up: bool) -> i64 {
    let g = if finest == MINUTE && t >= now - MINUTE_ROLLUP_DAYS * DAY {
        MINUTE
    } else {
        HOUR
    };
    let down = t.div_euclid(g) * g;
    if up && down < t {
        down + g
    } else {
        down
    }
}

/// What storing a batch's events did, event by event (see [`Store::store_batch`]).
#[derive(Default)]
struct Outcome {
    accepted: usize,
    /// The indexes of the events newly stored.
    new: Vec<usize>,
    /// Calibrated events, as stored (the copies the batch does not hold).
    calibrated: Vec<(usize, Event)>,
    /// The indexes of the events calibrated (stored or not), in order.
    calibrated_at: Vec<usize>,
    spend: crate::budgets::Added,
    /// The `seq` of the last event stored.
    last: Option<i64>,
}

impl Outcome {
    /// Count event `index` (stored as `e`, of `org_id`, at `ts`) as new (`seq`) or a duplicate;
    /// a new event adds to its budgets' spend and, with exact usage and Tally's own count
    /// beside it, teaches calibration.
    fn record(
        &mut self,
        tx: &mut Conn,
        budgets: &crate::budgets::Defs,
        job: &Job,
        (index, org_id, e, ts): (usize, i64, &Event, i64),
        seq: Option<i64>,
    ) -> Result<(), StoreError> {
        let Some(seq) = seq else {
            return Ok(());
        };
        self.accepted += 1;
        if let Some(b) = budgets.by_org.get(&org_id) {
            self.spend.add(b, e, ts, job.filter.is_some());
        }
        self.new.push(index);
        self.last = Some(seq);
        if self.calibrated_at.last() == Some(&index) {
            self.calibrated.push((index, e.clone()));
        }
        // Only new events teach: a retried batch must not count its samples twice.
        if let (Some(TokenSource::Exact), Some(m), Some(exact), Some(model)) = (
            e.token_source,
            e.measured_output_tokens,
            e.output_tokens,
            e.measured_output_tokens
                .and_then(|_| Store::calibration_model(e)),
        ) {
            if m > 0 {
                tx.execute(
                    "INSERT INTO calibration (org_id, model, exact_output, measured_output,
                        samples)
                     VALUES (?1, ?2, ?3, ?4, 1)
                     ON CONFLICT (org_id, model) DO UPDATE SET
                        exact_output = calibration.exact_output + excluded.exact_output,
                        measured_output = calibration.measured_output + excluded.measured_output,
                        samples = calibration.samples + 1",
                    values![org_id, model, exact, m],
                )?;
            }
        }
        Ok(())
    }
}

/// An event's values in the order of [`INSERT_EVENT_REPLICA`] (the first 42: [`INSERT_EVENT`]).
fn event_values(org_id: i64, e: &Event, ts: i64, now_ms: i64, replica: &str) -> [Value; 43] {
    [
        Value::from(org_id),
        Value::from(e.request_id.as_str()),
        Value::from(ts),
        Value::from(tally::time::format_rfc3339_ms(ts)),
        Value::from(e.provider.as_str()),
        Value::from(e.api.as_str()),
        Value::from(e.endpoint.as_str()),
        Value::from(&e.model_requested),
        Value::from(&e.model_actual),
        Value::from(e.status),
        Value::from(e.streaming),
        Value::from(e.latency_ms),
        Value::from(e.ttfb_ms),
        Value::from(e.input_tokens),
        Value::from(e.output_tokens),
        Value::from(e.cached_input_tokens),
        Value::from(e.cache_write_tokens),
        Value::from(e.reasoning_tokens),
        Value::from(e.token_source.map(TokenSource::name)),
        Value::from(e.cost_usd),
        Value::from(e.error_category.map(ErrorCategory::name)),
        Value::from(e.error_source.map(ErrorSource::name)),
        Value::from(&e.team),
        Value::from(&e.app),
        Value::from(&e.feature),
        Value::from(&e.task),
        Value::from(&e.session_id),
        Value::from(&e.user),
        Value::from(&e.rule),
        Value::from(e.routed),
        Value::from(now_ms),
        Value::from(e.measured_output_tokens),
        Value::from(&e.namespace),
        Value::from(&e.workload),
        Value::from(&e.principal),
        Value::from(e.cache_write_1h_tokens),
        Value::from(e.web_search_requests),
        Value::from(&e.service_tier),
        Value::from(e.shadow),
        Value::from(&e.model_routed),
        Value::from(&e.trace_id),
        Value::from(&e.span_id),
        Value::from(replica),
    ]
}

/// The PostgreSQL type of each of [`event_values`], in order: the arrays [`insert_rows`] binds.
const EVENT_TYPES: [&str; 43] = [
    "bigint", "text", "bigint", "text", "text", "text", "text", "text", "text", "bigint", "bigint",
    "float8", "float8", "bigint", "bigint", "bigint", "bigint", "bigint", "text", "float8", "text",
    "text", "text", "text", "text", "text", "text", "text", "text", "bigint", "bigint", "bigint",
    "text", "text", "text", "bigint", "bigint", "text", "bigint", "text", "text", "text", "text",
];

/// Insert the batch's events (`rows`: [`event_values`] of each, in order) in one statement
/// (PostgreSQL): each column bound as one array and the rows made by `unnest`, so that the
/// statement is the same for every batch size, and the database sets up 43 parameters, not 43
/// per event (a multi-row `VALUES` made it build each row's expressions, a sixth of its time
/// at ingest). The `seq` of each event newly stored, none for a duplicate (of a stored event,
/// or of one before it in the batch).
fn insert_rows(
    tx: &mut Conn,
    batch: &Batch,
    owners: &Owners,
    rows: Vec<Value>,
) -> Result<Vec<Option<i64>>, StoreError> {
    let mut columns: Vec<Vec<Value>> = (0..EVENT_TYPES.len())
        .map(|_| Vec::with_capacity(batch.len()))
        .collect();
    for (i, v) in rows.into_iter().enumerate() {
        columns[i % EVENT_TYPES.len()].push(v);
    }
    let columns: Vec<Value> = columns.into_iter().map(Value::List).collect();
    // Which event each returned row is: the first of the batch with its key.
    let mut index: HashMap<(i64, &str, i64), usize> = HashMap::with_capacity(batch.len());
    for (i, (e, ts)) in batch.iter().enumerate() {
        let org_id = owners.of(i).map_or(0, |o| o.id);
        index
            .entry((org_id, e.request_id.as_str(), *ts))
            .or_insert(i);
    }
    let mut seqs = vec![None; batch.len()];
    tx.query_each(&insert_rows_sql(), &columns, |r| {
        let key = (r.get::<i64>(1)?, r.get::<String>(2)?, r.get::<i64>(3)?);
        if let Some(&i) = index.get(&(key.0, key.1.as_str(), key.2)) {
            seqs[i] = Some(r.get(0)?);
        }
        Ok(())
    })?;
    Ok(seqs)
}

/// The statement inserting events with their replica from arrays (see [`insert_rows`]).
fn insert_rows_sql() -> String {
    let head = INSERT_EVENT_REPLICA
        .split(" VALUES")
        .next()
        .unwrap_or(INSERT_EVENT_REPLICA);
    let arrays: Vec<String> = EVENT_TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("unnest(?{}::{t}[])", i + 1))
        .collect();
    // In the select list, not `FROM unnest(...)`: there the rows are made into a tuplestore
    // first, which cost what the parameters saved.
    format!(
        "{head} SELECT {} {EVENT_CONFLICT} RETURNING seq, org_id, request_id, ts_ms",
        arrays.join(", ")
    )
}

/// A PostgreSQL event insert's duplicate: the unique key only. Without the target every unique
/// index is checked before each row goes in, the primary key on `seq` too (which a sequence
/// never repeats): a quarter of the database's time at ingest.
macro_rules! event_conflict {
    () => {
        "ON CONFLICT (org_id, request_id, ts_ms) DO NOTHING"
    };
}
const EVENT_CONFLICT: &str = event_conflict!();

/// The columns an event is stored with, in the order of `store_batch`'s values.
macro_rules! event_insert {
    ($extra_column:literal, $extra_value:literal, $conflict:expr, $returning:literal) => {
        concat!(
            "INSERT INTO events (org_id, request_id, ts_ms, timestamp, provider, api, endpoint,
                model_requested, model_actual, status, streaming, latency_ms, ttfb_ms,
                input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
                reasoning_tokens, token_source, cost_usd, error_category, error_source, team,
                app, feature, task, session_id, \"user\", rule, routed, received_ms,
                measured_output_tokens, namespace, workload, principal, cache_write_1h_tokens,
                web_search_requests, service_tier, shadow, model_routed, trace_id, span_id",
            $extra_column,
            ")
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32,
                ?33, ?34, ?35, ?36, ?37, ?38, ?39, ?40, ?41, ?42",
            $extra_value,
            ") ",
            $conflict,
            $returning
        )
    };
}

/// An event stored (nothing for a duplicate: an event whose org already has its `request_id`),
/// on SQLite. Its `seq` is the connection's last rowid: with `RETURNING`, SQLite journals every
/// page the statement changes into a temporary file when the table has a foreign key (half of
/// the collector's ingest time went to those writes).
const INSERT_EVENT: &str = event_insert!("", "", "ON CONFLICT DO NOTHING", "");

/// [`INSERT_EVENT`] with the replica that stores it, and its `seq` returned (PostgreSQL).
const INSERT_EVENT_REPLICA: &str =
    event_insert!(", replica", ", ?43", event_conflict!(), " RETURNING seq");

/// The columns of an event that rollups and summaries read, in the order [`lite_event`] reads.
const LITE_COLUMNS: &str = "ts_ms, provider, model_requested, model_actual, latency_ms, ttfb_ms,
    input_tokens, output_tokens, cost_usd, error_category, team, app, feature, task, \"user\",
    error_source, namespace, workload, cached_input_tokens, cache_write_tokens, status,
    cache_write_1h_tokens, web_search_requests, service_tier";

/// An event's time and the fields rollups and summaries read (the rest left empty), from a row
/// of [`LITE_COLUMNS`].
fn lite_event(r: &Row) -> db::Result<(i64, Event)> {
    let tok = |i: usize| -> db::Result<Option<u64>> { r.get::<Option<u64>>(i) };
    let ev = Event {
        request_id: String::new(),
        timestamp: String::new(),
        org_id: None,
        provider: r.get(1)?,
        api: String::new(),
        endpoint: String::new(),
        model_requested: r.get(2)?,
        model_actual: r.get(3)?,
        status: r.get(20)?,
        streaming: false,
        latency_ms: r.get(4)?,
        ttfb_ms: r.get(5)?,
        input_tokens: tok(6)?,
        output_tokens: tok(7)?,
        cached_input_tokens: tok(18)?,
        cache_write_tokens: tok(19)?,
        reasoning_tokens: None,
        cache_write_1h_tokens: tok(21)?,
        web_search_requests: tok(22)?,
        service_tier: r.get(23)?,
        token_source: None,
        measured_output_tokens: None,
        cost_usd: r.get(8)?,
        error_category: from_enum_str(r.get(9)?),
        error_source: from_enum_str(r.get(15)?),
        team: r.get(10)?,
        app: r.get(11)?,
        feature: r.get(12)?,
        task: r.get(13)?,
        session_id: None,
        user: r.get(14)?,
        namespace: r.get(16)?,
        workload: r.get(17)?,
        principal: None,
        rule: None,
        routed: false,
        shadow: false,
        model_routed: None,
        trace_id: None,
        span_id: None,
    };
    Ok((r.get::<i64>(0)?, ev))
}

/// Which stored events [`roll_up`] counts, by `seq`.
#[derive(Clone, Copy)]
enum Counted {
    /// Those after this `seq` (the ones the last rollup write did not count).
    After(i64),
    /// Those up to this `seq` (all of them: `i64::MAX`).
    Through(i64),
}

/// How [`roll_up`] writes what it counted.
#[derive(Clone, Copy)]
enum Write {
    Whole,
    /// Only the figures migration 9 added (see [`Pending::write_new_figures`]).
    NewFigures,
    /// Only the users under the team filter (see [`Pending::users_under_teams`]), rows new to
    /// the database.
    UserPairs,
}

/// Events priced again per pass of [`Store::reprice`]: each pass holds the write lock.
const REPRICE_PASS: i64 = 5_000;

/// Events counted per pass of [`roll_up`]: its rows are held in memory until written.
const ROLL_UP_CHUNK: i64 = 200_000;

/// Count stored events into the rollups, in passes of [`ROLL_UP_CHUNK`] events by `seq` (the
/// writes add up, so passes may share rows). Returns how many were counted and, for
/// [`Counted::After`], the last `seq` counted, if any.
fn roll_up(
    tx: &mut Conn,
    prices: &PriceTable,
    which: Counted,
    write: Write,
    replica: &str,
) -> db::Result<(usize, Option<i64>)> {
    // Events with lo < seq <= hi (on PostgreSQL, of this replica).
    let (lo, hi) = match which {
        Counted::After(seq) => (seq, i64::MAX),
        Counted::Through(seq) => (0, seq),
    };
    let mine = match tx.backend() {
        Backend::Sqlite => "?3 = ''",
        Backend::Postgres => "replica = ?3",
    };
    let max: Option<i64> = tx.value(
        &format!("SELECT max(seq) FROM events WHERE seq > ?1 AND seq <= ?2 AND {mine}"),
        values![lo, hi, replica],
    )?;
    let Some(max) = max else {
        return Ok((0, None));
    };
    let mut counted = 0;
    // Users under teams, per org, from every pass: their rows are new, so written once at the
    // end without reading what is stored (passes share rows).
    let mut user_pairs: Vec<(i64, Pending)> = Vec::new();
    let mut start = lo;
    while start < max {
        let end = start.saturating_add(ROLL_UP_CHUNK).min(max);
        let orgs: Vec<i64> = tx.query_map(
            &format!("SELECT DISTINCT org_id FROM events WHERE seq > ?1 AND seq <= ?2 AND {mine}"),
            values![start, end, replica],
            |r| r.get(0),
        )?;
        for org in orgs {
            let mut pending = match write {
                Write::UserPairs => Pending::users_under_teams(),
                Write::Whole | Write::NewFigures => Pending::default(),
            };
            tx.query_each(
                &format!(
                    "SELECT {LITE_COLUMNS} FROM events WHERE seq > ?1 AND seq <= ?2 AND {mine}
                       AND org_id = ?4"
                ),
                values![start, end, replica, org],
                |r| {
                    let (ts, ev) = lite_event(&r)?;
                    pending.add(prices, &ev, ts);
                    counted += 1;
                    Ok(())
                },
            )?;
            match write {
                Write::Whole => pending.write(tx, org, replica)?,
                Write::NewFigures => pending.write_new_figures(tx, org)?,
                Write::UserPairs => {
                    // Settled per pass, so that what is kept is rows, not every event's keys.
                    pending.settle();
                    match user_pairs.iter_mut().find(|(o, _)| *o == org) {
                        Some((_, all)) => all.merge(&pending),
                        None => user_pairs.push((org, pending)),
                    }
                }
            }
        }
        start = end;
    }
    for (org, mut rows) in user_pairs {
        rows.write_new(tx, org, replica)?;
    }
    Ok((counted, matches!(which, Counted::After(_)).then_some(max)))
}

/// The columns of an event as [`event_from_row`] reads them, in its order.
pub const EVENT_COLUMNS: &str = "request_id, timestamp, provider, api, endpoint,
    model_requested, model_actual, status, streaming, latency_ms, ttfb_ms, input_tokens,
    output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, token_source,
    cost_usd, error_category, error_source, team, app, feature, task, session_id, \"user\", rule,
    routed, measured_output_tokens, namespace, workload, principal, cache_write_1h_tokens,
    web_search_requests, service_tier, shadow, model_routed, trace_id, span_id";

/// An event of `org` from a row holding [`EVENT_COLUMNS`] from column `base` on: the one
/// reading of stored events (the read API, the export).
pub fn event_from_row(r: &Row, base: usize, org: &str) -> db::Result<Event> {
    let tok = |i: usize| -> db::Result<Option<u64>> { r.get::<Option<u64>>(base + i) };
    let get = |i: usize| base + i;
    Ok(Event {
        request_id: r.get(get(0))?,
        timestamp: r.get(get(1))?,
        org_id: Some(org.to_string()),
        provider: r.get(get(2))?,
        api: r.get(get(3))?,
        endpoint: r.get(get(4))?,
        model_requested: r.get(get(5))?,
        model_actual: r.get(get(6))?,
        status: r.get(get(7))?,
        streaming: r.get(get(8))?,
        latency_ms: r.get(get(9))?,
        ttfb_ms: r.get(get(10))?,
        input_tokens: tok(11)?,
        output_tokens: tok(12)?,
        cached_input_tokens: tok(13)?,
        cache_write_tokens: tok(14)?,
        reasoning_tokens: tok(15)?,
        token_source: from_enum_str(r.get(get(16))?),
        cost_usd: r.get(get(17))?,
        error_category: from_enum_str(r.get(get(18))?),
        error_source: from_enum_str(r.get(get(19))?),
        team: r.get(get(20))?,
        app: r.get(get(21))?,
        feature: r.get(get(22))?,
        task: r.get(get(23))?,
        session_id: r.get(get(24))?,
        user: r.get(get(25))?,
        rule: r.get(get(26))?,
        routed: r.get(get(27))?,
        measured_output_tokens: tok(28)?,
        namespace: r.get(get(29))?,
        workload: r.get(get(30))?,
        principal: r.get(get(31))?,
        cache_write_1h_tokens: tok(32)?,
        web_search_requests: tok(33)?,
        service_tier: r.get(get(34))?,
        shadow: r.get(get(35))?,
        model_routed: r.get(get(36))?,
        trace_id: r.get(get(37))?,
        span_id: r.get(get(38))?,
    })
}

/// A named value (`token_source`, `error_category`, ...) from its column; one this collector
/// does not know (a newer collector stored it) is None rather than an error.
fn from_enum_str<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::strip_snapshot_date as s;
    use super::*;
    use tally::time::parse_rfc3339_ms;

    /// A test's directory under the system's temporary directory: removed when dropped, so also
    /// when the test fails (the other modules' tests use it too).
    pub(crate) struct TempDir(std::path::PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TempDir {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `tally-NAME-PID` in the system's temporary directory, new and empty.
    pub(crate) fn temp_dir(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The store of a test directory, on the database the suite runs on: SQLite in the
    /// directory, or with `TALLY_TEST_DATABASE=postgres` a database of the process's private
    /// PostgreSQL cluster, one per directory (so that opening it again finds the same data),
    /// each opening a replica of its own. Every test that is not about one backend opens its
    /// store here, so that one suite runs over both.
    pub(crate) fn test_store(dir: &Path) -> Store {
        match std::env::var("TALLY_TEST_DATABASE").as_deref() {
            Ok("postgres") => {
                static OPENED: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let name: String = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let url = tally_testpg::shared().database_once(&name);
                let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let options = Options {
                    replica: Some(format!("test-{n}")),
                    ..Default::default()
                };
                Store::open_with(&Database::Postgres(url), options).unwrap()
            }
            Ok("sqlite") | Err(_) => Store::open(dir).unwrap(),
            Ok(other) => panic!("TALLY_TEST_DATABASE={other}: sqlite or postgres"),
        }
    }

    /// A batch of successful events: (request id, timestamp, user).
    fn batch(events: &[(&str, &str, &str)]) -> Batch {
        let lines: Vec<String> = events
            .iter()
            .map(|(id, ts, user)| {
                format!(
                    r#"{{"request_id":"{id}","timestamp":"{ts}","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"gpt-4o-mini","status":200,"streaming":false,"latency_ms":120.0,"input_tokens":10,"output_tokens":5,"cost_usd":0.25,"user":"{user}","routed":false}}"#
                )
            })
            .collect();
        crate::ingest::parse(lines.join("\n").as_bytes()).unwrap()
    }

    #[test]
    fn batches_waiting_together_commit_together_and_a_failing_one_fails_alone() {
        let dir = temp_dir("group");
        let store = Arc::new(test_store(&dir));
        store.create_org("acme", 0).unwrap();
        let acme = Org {
            id: 1,
            name: "acme".into(),
        };
        // No org at all (a bug): the batch is refused, so its transaction fails.
        let ghost = Owners::each(std::iter::empty());
        let ts = "2026-01-01T10:00:00.000Z";
        let one = || Owners::one(acme.clone());
        let jobs = [
            (one(), batch(&[("a1", ts, "u1"), ("a2", ts, "u2")])),
            (one(), batch(&[("b1", ts, "u1")])),
            (ghost, batch(&[("g1", ts, "u1")])),
            // One event again: a duplicate, as if the batches had come one after the other.
            (one(), batch(&[("a1", ts, "u1"), ("c1", ts, "u3")])),
        ];
        // Hold the connection while the four queue up: whoever gets it next stores them as one
        // group. Each thread starts only once the one before has queued its batch, so the queue
        // holds them in the order listed whatever the scheduler does.
        let held = store.conn();
        let mut threads = Vec::new();
        for (i, (owners, b)) in jobs.into_iter().enumerate() {
            let s = store.clone();
            threads.push(std::thread::spawn(move || {
                s.insert_owned(owners, Arc::new(b), 0)
            }));
            for _ in 0..500 {
                if lock(&store.queue).len() > i {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            assert_eq!(lock(&store.queue).len(), i + 1);
        }
        drop(held);
        let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(outcomes[0].as_ref().unwrap(), &(2, 0, vec![0, 1]));
        assert_eq!(outcomes[1].as_ref().unwrap(), &(1, 0, vec![0]));
        assert!(
            matches!(&outcomes[2], Err(StoreError::Io(e)) if e.contains("no org")),
            "{:?}",
            outcomes[2]
        );
        assert_eq!(outcomes[3].as_ref().unwrap(), &(1, 1, vec![1]));
        let from = parse_rfc3339_ms("2026-01-01T00:00:00.000Z").unwrap();
        let total = store
            .summary(
                &acme,
                None,
                &EventFilter::default(),
                from,
                from + DAY,
                from + DAY,
            )
            .map(|r| r.0)
            .unwrap();
        assert_eq!(total[0].1.requests, 4);
    }

    /// A database as schema `version` left it, with the org `acme` (id 1).
    fn database_at(dir: &Path, version: usize) -> Conn {
        let conn = rusqlite::Connection::open(dir.join("tally.db")).unwrap();
        rollup::register(&conn).unwrap();
        let mut conn = Conn::Sqlite(conn);
        for sql in &MIGRATIONS[..version] {
            conn.batch(sql).unwrap();
        }
        conn.batch(&format!("PRAGMA user_version = {version}"))
            .unwrap();
        conn.execute(
            "INSERT INTO orgs (name, key_hash, created_ms) VALUES ('acme', 'h', 0)",
            &[],
        )
        .unwrap();
        conn
    }

    #[test]
    fn rollups_move_to_time_ordered_keys_and_old_minute_rows_expire() {
        let dir = temp_dir("migration");
        let batch = batch(&[
            ("a", "2026-01-01T10:00:00.000Z", "u1"),
            ("b", "2026-01-01T10:30:00.000Z", "u2"),
            ("c", "2026-03-01T10:00:00.000Z", "u1"),
        ]);
        // A database as the previous schema (4) left it, rollups keyed by key before time.
        {
            let mut conn = database_at(&dir, 4);
            let mut pending = Pending::default();
            for (e, ts) in &batch {
                pending.add(&PriceTable::builtin().unwrap(), e, *ts);
            }
            let mut tx = conn.begin().unwrap();
            pending.write_before_v9(&mut tx, 1).unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let org = Org {
            id: 1,
            name: "acme".into(),
        };
        let jan = parse_rfc3339_ms("2026-01-01T00:00:00.000Z").unwrap();
        let mar = parse_rfc3339_ms("2026-03-02T00:00:00.000Z").unwrap();
        let users = store
            .summary(&org, Some("user"), &EventFilter::default(), jan, mar, mar)
            .map(|r| r.0)
            .unwrap();
        let figures: Vec<_> = users
            .iter()
            .map(|(k, a)| (k.as_str(), a.requests, a.latency.count()))
            .collect();
        assert_eq!(figures, [("u1", 2, 2), ("u2", 1, 1)]);
        let old_index: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'rollups_by_time'",
                &[],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_index, 0);
        // Pruned on March 15th: minute rows older than 31 days (January's) go; March's, and
        // every hour and day row, stay.
        let count = |g: i64| -> i64 {
            store
                .conn()
                .query_row(
                    "SELECT count(*) FROM rollups WHERE granularity_ms = ?1",
                    values![g],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let (minutes, hours) = (count(MINUTE), count(HOUR));
        let now = parse_rfc3339_ms("2026-03-15T00:00:00.000Z").unwrap();
        store.prune(3650, now).unwrap();
        // Per minute: "all", feature, model, provider and provider_model (no error: all
        // succeeded), for 3 distinct minutes, 2 of them in January.
        assert_eq!((minutes, count(MINUTE)), (15, 5));
        assert_eq!(count(HOUR), hours);
    }

    #[test]
    fn events_move_to_a_rowid_table_and_stay_unique_by_request_id() {
        let dir = temp_dir("migration6");
        // A database as schema 5 left it: events keyed by (org_id, request_id), no rowid.
        {
            let mut conn = database_at(&dir, 5);
            for (id, ts, measured) in [("b", 2000, None), ("a", 1000, Some(7))] {
                conn.execute(
                    "INSERT INTO events (org_id, request_id, ts_ms, timestamp, provider, api,
                        endpoint, streaming, latency_ms, routed, received_ms,
                        measured_output_tokens)
                     VALUES (1, ?1, ?2, 't', 'openai', 'chat_completions', '/v1/chat/completions',
                        0, 1.5, 0, 5, ?3)",
                    values![id, ts, measured],
                )
                .unwrap();
            }
        }
        let store = Store::open(&dir).unwrap();
        let rows: Vec<(String, i64, Option<i64>)> = {
            let mut conn = store.conn();
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name = 'events'",
                    &[],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
            let indexes: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE tbl_name = 'events' AND type = 'index'",
                    &[],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(
                indexes, 3,
                "events_by_time, the unique request id index and events_by_rule (migration 13)"
            );
            conn.query_map(
                "SELECT request_id, ts_ms, measured_output_tokens FROM events ORDER BY rowid",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
        };
        assert_eq!(
            rows,
            [("a".into(), 1000, Some(7)), ("b".into(), 2000, None)]
        );
        // A request id the org already has is still a duplicate; a new one is stored.
        let org = Org {
            id: 1,
            name: "acme".into(),
        };
        let ts = "2026-01-01T10:00:00.000Z";
        let again = batch(&[("a", ts, "u1"), ("c", ts, "u1")]);
        let stored = store.insert_events(&org, Arc::new(again), 0).unwrap();
        assert_eq!(stored, (1, 1, vec![1]));
    }

    #[test]
    fn rollup_rows_wait_until_read_and_are_counted_again_after_a_crash() {
        let dir = temp_dir("deferred");
        let org = Org {
            id: 1,
            name: "acme".into(),
        };
        let ts = "2026-01-01T10:00:00.000Z";
        let day = parse_rfc3339_ms("2026-01-01T00:00:00.000Z").unwrap();
        let rows = |s: &Store| -> (i64, i64) {
            let mut conn = s.conn();
            let n = conn
                .query_row("SELECT count(*) FROM rollups", &[], |r| r.get(0))
                .unwrap();
            let done = conn
                .query_row("SELECT events_seq FROM rollup_progress", &[], |r| r.get(0))
                .unwrap();
            (n, done)
        };
        {
            let store = Store::open(&dir).unwrap();
            store.create_org("acme", 0).unwrap();
            let b = batch(&[("a", ts, "u1"), ("b", ts, "u2")]);
            store.insert_events(&org, Arc::new(b), 0).unwrap();
            // Stored, not yet rolled up.
            assert_eq!(rows(&store), (0, 0));
            let page: i64 = store.conn().value("PRAGMA page_size", &[]).unwrap();
            assert_eq!(page, PAGE_SIZE);
            // A read writes the rows first, with the mark of the last event they count.
            let total = store
                .summary(
                    &org,
                    None,
                    &EventFilter::default(),
                    day,
                    day + DAY,
                    day + DAY,
                )
                .map(|r| r.0)
                .unwrap();
            assert_eq!(total[0].1.requests, 2);
            let (n, done) = rows(&store);
            assert!(n > 0);
            assert_eq!(done, 2);
            let b = batch(&[("c", ts, "u1"), ("a", ts, "u1")]);
            assert_eq!(
                store.insert_events(&org, Arc::new(b), 0).unwrap(),
                (1, 1, vec![0])
            );
            // Dropped as a crash would leave it: event c stored, its rows not written.
            assert_eq!(rows(&store), (n, 2));
        }
        let store = Store::open(&dir).unwrap();
        // Opening alone counts nothing (a CLI command beside a running collector opens it too).
        assert_eq!(rows(&store).1, 2);
        assert_eq!(store.recount_rollups().unwrap(), 1);
        assert_eq!(rows(&store).1, 3);
        let users = store
            .summary(
                &org,
                Some("user"),
                &EventFilter::default(),
                day,
                day + DAY,
                day + DAY,
            )
            .map(|r| r.0)
            .unwrap();
        let figures: Vec<_> = users
            .iter()
            .map(|(k, a)| (k.as_str(), a.requests))
            .collect();
        assert_eq!(figures, [("u1", 2), ("u2", 1)]);
    }

    /// Events of `org_id` with a namespace and workload (or none, for "").
    fn mesh_batch(events: &[(&str, &str, &str)]) -> Batch {
        let lines: Vec<String> = events
            .iter()
            .map(|(id, ns, wl)| {
                let opt = |v: &str| {
                    if v.is_empty() {
                        "null".to_string()
                    } else {
                        format!("\"{v}\"")
                    }
                };
                format!(
                    r#"{{"request_id":"{id}","timestamp":"2026-01-01T10:00:00.000Z","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"gpt-4o-mini","status":200,"streaming":false,"latency_ms":120.0,"input_tokens":10,"output_tokens":5,"cost_usd":0.25,"namespace":{},"workload":{},"principal":"spiffe://cluster.local/ns/{ns}/sa/default","rule":null,"routed":false}}"#,
                    opt(ns),
                    opt(wl)
                )
            })
            .collect();
        crate::ingest::parse(lines.join("\n").as_bytes()).unwrap()
    }

    #[test]
    fn mesh_identity_is_stored_filtered_and_rolled_up_under_each_events_org() {
        let dir = temp_dir("mesh");
        let store = test_store(&dir);
        let acme_key = store.create_org("acme", 0).unwrap();
        let globex_key = store.create_org("globex", 0).unwrap();
        let acme = store.org_for_key(&acme_key).unwrap().unwrap();
        let globex = store.org_for_key(&globex_key).unwrap().unwrap();
        let batch = mesh_batch(&[
            ("a1", "shop", "cart"),
            ("g1", "shop", "cart"),
            ("a2", "shop", "pay"),
            ("a3", "", ""),
        ]);
        let owners = Owners::each([&acme, &globex, &acme, &acme].map(|o| o.clone()));
        assert_eq!(owners.orgs().len(), 2);
        let stored = store.insert_owned(owners.clone(), Arc::new(batch), 0);
        assert_eq!(stored.unwrap(), (4, 0, vec![0, 1, 2, 3]));
        // Again, one event new: only it is counted in.
        let again = mesh_batch(&[("a1", "shop", "cart"), ("g2", "lab", "nb")]);
        let owners2 = Owners::each([acme.clone(), globex.clone()]);
        let stored = store.insert_owned(owners2, Arc::new(again), 0).unwrap();
        assert_eq!(stored, (1, 1, vec![1]));
        let ids = |org: &Org, f: EventFilter| -> Vec<String> {
            let f = EventFilter { limit: 100, ..f };
            let mut v: Vec<String> = store
                .query_events(org, &f)
                .unwrap()
                .into_iter()
                .map(|e| e.request_id)
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(&acme, EventFilter::default()), ["a1", "a2", "a3"]);
        assert_eq!(ids(&globex, EventFilter::default()), ["g1", "g2"]);
        let ns = |v: &str| EventFilter {
            namespace: Some(v.into()),
            ..Default::default()
        };
        assert_eq!(ids(&acme, ns("shop")), ["a1", "a2"]);
        let wl = EventFilter {
            workload: Some("pay".into()),
            ..Default::default()
        };
        assert_eq!(ids(&acme, wl), ["a2"]);
        let e = &store
            .query_events(
                &acme,
                &EventFilter {
                    limit: 10,
                    ..ns("shop")
                },
            )
            .unwrap()[0];
        assert_eq!(e.namespace.as_deref(), Some("shop"));
        assert_eq!(
            e.principal.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/default")
        );
        let day = parse_rfc3339_ms("2026-01-01T00:00:00.000Z").unwrap();
        let by = |org: &Org, dim: &str| -> Vec<(String, u64)> {
            store
                .summary(
                    org,
                    Some(dim),
                    &EventFilter::default(),
                    day,
                    day + DAY,
                    day + DAY,
                )
                .map(|r| r.0)
                .unwrap()
                .into_iter()
                .map(|(k, a)| (k, a.requests))
                .collect()
        };
        assert_eq!(by(&acme, "namespace"), [("shop".into(), 2), ("".into(), 1)]);
        assert_eq!(
            by(&acme, "workload"),
            [("".into(), 1), ("cart".into(), 1), ("pay".into(), 1)]
        );
        assert_eq!(
            by(&globex, "namespace"),
            [("lab".into(), 1), ("shop".into(), 1)]
        );
        let series = store
            .timeseries(
                &acme,
                HOUR,
                Some("namespace"),
                &EventFilter::default(),
                day,
                day + DAY,
                day + DAY,
            )
            .map(|r| r.0)
            .unwrap();
        assert_eq!(series.len(), 2);
        // Counted again after a crash, namespaces included.
        drop(store);
        let store = test_store(&dir);
        store.conn().execute("DELETE FROM rollups", &[]).unwrap();
        store
            .conn()
            .execute("UPDATE rollup_progress SET events_seq = 0", &[])
            .unwrap();
        assert_eq!(store.recount_rollups().unwrap(), 5);
        let ns_rows: Vec<(String, u64)> = store
            .summary(
                &acme,
                Some("namespace"),
                &EventFilter::default(),
                day,
                day + DAY,
                day + DAY,
            )
            .map(|r| r.0)
            .unwrap()
            .into_iter()
            .map(|(k, a)| (k, a.requests))
            .collect();
        assert_eq!(ns_rows, [("shop".into(), 2), ("".into(), 1)]);
    }

    #[test]
    fn events_from_before_mesh_identity_count_under_the_missing_namespace() {
        let dir = temp_dir("migration7");
        // Schema 6 with rollups of two events (written as that schema's code would: the
        // namespace and workload rows, which it did not have, removed).
        {
            let mut conn = database_at(&dir, 6);
            let mut pending = Pending::default();
            for (e, ts) in &batch(&[
                ("a", "2026-01-01T10:00:00.000Z", "u1"),
                ("b", "2026-01-01T11:30:00.000Z", "u2"),
            ]) {
                pending.add(&PriceTable::builtin().unwrap(), e, *ts);
            }
            let mut tx = conn.begin().unwrap();
            pending.write_before_v9(&mut tx, 1).unwrap();
            tx.execute(
                "DELETE FROM rollups WHERE dim IN ('namespace', 'workload')",
                &[],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let org = Org {
            id: 1,
            name: "acme".into(),
        };
        let day = parse_rfc3339_ms("2026-01-01T00:00:00.000Z").unwrap();
        for dim in ["namespace", "workload"] {
            let rows = store
                .summary(
                    &org,
                    Some(dim),
                    &EventFilter::default(),
                    day,
                    day + DAY,
                    day + DAY,
                )
                .map(|r| r.0)
                .unwrap();
            assert_eq!(rows.len(), 1, "{dim}");
            assert_eq!((rows[0].0.as_str(), rows[0].1.requests), ("", 2));
            assert_eq!(rows[0].1.latency.count(), 2);
            let hours = store
                .timeseries(
                    &org,
                    HOUR,
                    Some(dim),
                    &EventFilter::default(),
                    day,
                    day + DAY,
                    day + DAY,
                )
                .map(|r| r.0)
                .unwrap();
            assert_eq!(hours.len(), 2, "{dim}");
        }
    }

    #[test]
    fn snapshot_dates() {
        assert_eq!(s("claude-sonnet-4-5-20250929"), "claude-sonnet-4-5");
        assert_eq!(s("gpt-4o-mini-2024-07-18"), "gpt-4o-mini");
        assert_eq!(s("claude-3-5-haiku@20241022"), "claude-3-5-haiku");
        assert_eq!(s("gpt-4o"), "gpt-4o");
        assert_eq!(s("o3-mini"), "o3-mini");
        assert_eq!(s("model-123"), "model-123");
    }

    /// Per key: requests, errors, input and output tokens, unpriced requests and their input
    /// tokens, and the cost in micro-dollars (`C`: known, or maybe unknown).
    pub(crate) type Counts<C> = (u64, u64, u64, u64, u64, u64, C);
    pub(crate) type Figures = std::collections::BTreeMap<String, Counts<Option<i64>>>;

    /// Events with labels drawn from small sets, so that every filter and grouping has several
    /// keys; one model in five is unknown to the price table, and some events fail.
    pub(crate) fn labelled_batch(n: u64, start: i64, span: i64) -> Batch {
        const TEAMS: [&str; 3] = ["pay", "search", "ml"];
        const APPS: [&str; 2] = ["web", "batch"];
        const FEATURES: [&str; 3] = ["chat", "sum", "rank"];
        const NAMESPACES: [&str; 2] = ["ns-a", "ns-b"];
        const WORKLOADS: [&str; 4] = ["w1", "w2", "w3", "w4"];
        let mut batch: Batch = (0..n)
            .map(|i| {
                let pick = |k: u64, m: u64| ((i + 1).wrapping_mul(k).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % m;
                let model = ["gpt-4o-mini", "claude-haiku-4-5", "acme-llm-1", "gpt-4o", "gemini-2.5-flash"]
                    [pick(7, 5) as usize];
                let provider = match model {
                    m if m.starts_with("claude") => "anthropic",
                    m if m.starts_with("gemini") => "gemini",
                    _ => "openai",
                };
                let status = [200, 200, 200, 429, 503][pick(11, 5) as usize];
                let ts = start + (i as i64 * span) / n as i64;
                let e: Event = serde_json::from_value(serde_json::json!({
                    "request_id": format!("lab-{i}"),
                    "timestamp": tally::time::format_rfc3339_ms(ts),
                    "provider": provider, "api": "chat_completions",
                    "endpoint": "/v1/chat/completions",
                    "model_requested": model,
                    "model_actual": if i % 2 == 0 { Some(format!("{model}-2025-01-01")) } else { None },
                    "status": status, "streaming": false,
                    "latency_ms": 10.0 + (i % 17) as f64,
                    "input_tokens": 100 + i % 13, "output_tokens": 10 + i % 7,
                    "cached_input_tokens": i % 3 * 10,
                    "cost_usd": if model == "acme-llm-1" { None } else { Some(0.001 * (1 + i % 5) as f64) },
                    "error_category": if status == 200 { None } else if status == 429 { Some("rate_limited") } else { Some("provider_error") },
                    "error_source": if status == 200 { None } else { Some("provider") },
                    "team": TEAMS[pick(3, 3) as usize],
                    "app": if i % 4 == 0 { None } else { Some(APPS[pick(5, 2) as usize]) },
                    "feature": if i % 5 == 0 { None } else { Some(FEATURES[pick(13, 3) as usize]) },
                    "namespace": NAMESPACES[pick(17, 2) as usize],
                    "workload": WORKLOADS[pick(19, 4) as usize],
                    "user": format!("u{}", pick(23, 6)),
                    "routed": false,
                }))
                .unwrap();
                (e, ts)
            })
            .collect();
        // Priced as the collector prices them (an unknown model: no cost).
        let prices = PriceTable::builtin().unwrap();
        let mut pricer = Pricer::default();
        for (e, _) in &mut batch {
            e.cost_usd = pricer.cost_usd(&prices, e);
        }
        batch
    }

    /// What a summary over `events` must say, computed here the plain way.
    pub(crate) fn expected(
        events: &Batch,
        keep: impl Fn(&Event) -> bool,
        dim: Option<&str>,
    ) -> Figures {
        let mut out: std::collections::BTreeMap<String, Counts<f64>> = Default::default();
        for (e, _) in events.iter().filter(|(e, _)| keep(e)) {
            let key = match dim {
                None => String::new(),
                Some(d) => match rollup::key_of(e, d) {
                    Some(k) => k.into_owned(),
                    None => continue,
                },
            };
            let r = out.entry(key).or_default();
            r.0 += 1;
            r.1 += u64::from(e.error_category.is_some());
            r.2 += e.input_tokens.unwrap_or(0);
            r.3 += e.output_tokens.unwrap_or(0);
            if e.cost_usd.is_none() {
                r.4 += 1;
                r.5 += e.input_tokens.unwrap_or(0);
            }
            r.6 += e.cost_usd.unwrap_or(0.0);
        }
        out.into_iter()
            .map(|(k, r)| {
                // Nano-dollars: sums of floats in another order agree to far less.
                let cost = (r.4 < r.0).then_some((r.6 * 1e9).round() as i64);
                (k, (r.0, r.1, r.2, r.3, r.4, r.5, cost))
            })
            .collect()
    }

    pub(crate) fn seen(rows: &[(String, Agg)]) -> Figures {
        rows.iter()
            .map(|(k, a)| {
                let cost = a.known_cost().map(|c| (c * 1e9).round() as i64);
                (
                    k.clone(),
                    (
                        a.requests,
                        a.errors,
                        a.input_tokens,
                        a.output_tokens,
                        a.unpriced_requests,
                        a.unpriced_input_tokens,
                        cost,
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn filtered_summaries_count_exactly_the_events_the_filter_picks_from_pair_rows_and_events() {
        let dir = temp_dir("filtered");
        let store = test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let day = parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
        // Three days of events, from hour edges (pair rows answer at hour resolution).
        let events = labelled_batch(3000, day, 3 * DAY);
        store
            .insert_events(&org, Arc::new(events.clone()), day + 3 * DAY)
            .unwrap();
        let now = day + 4 * DAY;
        let model = |m: &'static str| {
            move |e: &Event| {
                e.model_requested.as_deref() == Some(m) || e.model_actual.as_deref() == Some(m)
            }
        };
        type Keep = Box<dyn Fn(&Event) -> bool>;
        // The groupings each filter is answered for from pair rows (the others, from events).
        const ONE: &[Option<&str>] = &[
            None,
            Some("model"),
            Some("team"),
            Some("app"),
            Some("feature"),
            Some("workload"),
            Some("error"),
        ];
        // A team's, and by user as well.
        const TEAM: &[Option<&str>] = &[
            None,
            Some("model"),
            Some("team"),
            Some("app"),
            Some("feature"),
            Some("workload"),
            Some("error"),
            Some("user"),
        ];
        let cases: Vec<(EventFilter, Keep, &[Option<&str>])> = vec![
            (
                EventFilter {
                    team: Some("pay".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.team.as_deref() == Some("pay")),
                TEAM,
            ),
            (
                EventFilter {
                    feature: Some("untagged".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.feature.is_none()),
                ONE,
            ),
            (
                EventFilter {
                    model: Some("acme-llm-1".into()),
                    ..Default::default()
                },
                Box::new(model("acme-llm-1")),
                ONE,
            ),
            (
                EventFilter {
                    model: Some("gpt-4o-2025-01-01".into()),
                    ..Default::default()
                },
                Box::new(model("gpt-4o-2025-01-01")),
                ONE,
            ),
            (
                EventFilter {
                    status: Some((500, 599)),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.status == Some(503)),
                ONE,
            ),
            (
                EventFilter {
                    namespace: Some("ns-b".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.namespace.as_deref() == Some("ns-b")),
                ONE,
            ),
            // Two filters: the pair rows of one grouped by the other's dimension, at its key,
            // for their total or grouped by either. The model is only ever the filter side.
            (
                EventFilter {
                    team: Some("ml".into()),
                    app: Some("web".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| {
                    e.team.as_deref() == Some("ml") && e.app.as_deref() == Some("web")
                }),
                &[None, Some("team"), Some("app")],
            ),
            (
                EventFilter {
                    model: Some("acme-llm-1".into()),
                    team: Some("pay".into()),
                    ..Default::default()
                },
                Box::new(move |e: &Event| {
                    model("acme-llm-1")(e) && e.team.as_deref() == Some("pay")
                }),
                &[None, Some("team")],
            ),
            (
                EventFilter {
                    status: Some((500, 599)),
                    namespace: Some("ns-b".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| {
                    e.status == Some(503) && e.namespace.as_deref() == Some("ns-b")
                }),
                &[None],
            ),
            (
                EventFilter {
                    feature: Some("untagged".into()),
                    workload: Some("w2".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.feature.is_none() && e.workload.as_deref() == Some("w2")),
                &[None, Some("feature"), Some("workload")],
            ),
            (
                EventFilter {
                    team: Some("search".into()),
                    user: Some("u3".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| {
                    e.team.as_deref() == Some("search") && e.user.as_deref() == Some("u3")
                }),
                &[None, Some("team"), Some("user")],
            ),
            // Read from the events: a model and a status (neither is a group the other's rows
            // keep), three filters, a single status, a user alone.
            (
                EventFilter {
                    model: Some("gpt-4o-2025-01-01".into()),
                    status: Some((400, 499)),
                    ..Default::default()
                },
                Box::new(move |e: &Event| model("gpt-4o-2025-01-01")(e) && e.status == Some(429)),
                &[],
            ),
            (
                EventFilter {
                    team: Some("ml".into()),
                    app: Some("web".into()),
                    feature: Some("chat".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| {
                    e.team.as_deref() == Some("ml")
                        && e.app.as_deref() == Some("web")
                        && e.feature.as_deref() == Some("chat")
                }),
                &[],
            ),
            (
                EventFilter {
                    status: Some((429, 429)),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.status == Some(429)),
                &[],
            ),
            (
                EventFilter {
                    user: Some("u3".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.user.as_deref() == Some("u3")),
                &[],
            ),
        ];
        for (filter, keep, pairs) in &cases {
            for dim in ONE.iter().copied().chain([Some("user")]) {
                let (rows, read) = store
                    .summary(&org, dim, filter, day, day + 3 * DAY, now)
                    .unwrap();
                let want = expected(&events, keep, dim);
                assert!(!want.is_empty(), "{filter:?} by {dim:?}");
                assert_eq!(seen(&rows), want, "{filter:?} by {dim:?}");
                assert_eq!(
                    read,
                    if pairs.contains(&dim) {
                        Read::Rollups(HOUR)
                    } else {
                        Read::Events
                    },
                    "{filter:?} by {dim:?}"
                );
            }
            // The total per hour, read the same way.
            let (points, bucket, read) = store
                .timeseries(&org, HOUR, None, filter, day, day + 3 * DAY, now)
                .unwrap();
            assert_eq!(bucket, HOUR);
            let by_pairs = pairs.contains(&None);
            assert_eq!(
                read,
                if by_pairs {
                    Read::Rollups(HOUR)
                } else {
                    Read::Events
                },
                "{filter:?}"
            );
            assert!(points.iter().all(|p| p.1.is_empty()), "{filter:?}");
            let rows: Vec<(String, Agg)> = points.into_iter().map(|p| (p.1, p.2)).collect();
            let mut total = Agg::default();
            rows.iter().for_each(|r| total.merge(&r.1));
            assert_eq!(
                seen(&[(String::new(), total)]),
                expected(&events, keep, None),
                "{filter:?}"
            );
            // Per day, from day rows or events, the same figures.
            let (points, bucket, _) = store
                .timeseries(
                    &org,
                    DAY,
                    Some("model"),
                    filter,
                    day,
                    day + 3 * DAY,
                    day + 3 * DAY,
                )
                .unwrap();
            assert_eq!(bucket, DAY);
            for d in 0..3 {
                let t = day + d * DAY;
                let rows: Vec<(String, Agg)> = points
                    .iter()
                    .filter(|p| p.0 == t)
                    .map(|p| (p.1.clone(), p.2.clone()))
                    .collect();
                let today: Batch = events
                    .iter()
                    .filter(|(_, ts)| (t..t + DAY).contains(ts))
                    .cloned()
                    .collect();
                assert_eq!(
                    seen(&rows),
                    expected(&today, keep, Some("model")),
                    "{filter:?} day {d}"
                );
            }
        }
        // Minute buckets of a filtered long range fall back to hours; of a short one, they are
        // read from the events.
        let team = EventFilter {
            team: Some("pay".into()),
            ..Default::default()
        };
        let (_, bucket, _) = store
            .timeseries(&org, MINUTE, None, &team, day, day + DAY, day + DAY)
            .unwrap();
        assert_eq!(bucket, HOUR);
        let (points, bucket, read) = store
            .timeseries(
                &org,
                MINUTE,
                None,
                &team,
                day,
                day + 2 * HOUR,
                day + 2 * HOUR,
            )
            .unwrap();
        assert_eq!((bucket, read), (MINUTE, Read::Events));
        let n: u64 = points.iter().map(|p| p.2.requests).sum();
        let want = events
            .iter()
            .filter(|(e, ts)| *ts < day + 2 * HOUR && e.team.as_deref() == Some("pay"))
            .count();
        assert_eq!(n, want as u64);
    }

    #[test]
    fn unpriced_requests_are_counted_and_their_cost_is_unknown_not_zero() {
        let dir = temp_dir("unpriced");
        let store = test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let day = parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
        let events = labelled_batch(500, day, DAY);
        store
            .insert_events(&org, Arc::new(events.clone()), day + DAY)
            .unwrap();
        let (rows, _) = store
            .summary(
                &org,
                Some("model"),
                &EventFilter::default(),
                day,
                day + DAY,
                day + DAY,
            )
            .unwrap();
        let unknown = rows.iter().find(|(k, _)| k == "acme-llm-1").unwrap();
        let n = events
            .iter()
            .filter(|(e, _)| {
                e.model_requested.as_deref() == Some("acme-llm-1") && e.model_actual.is_none()
            })
            .count() as u64;
        assert_eq!((unknown.1.requests, unknown.1.unpriced_requests), (n, n));
        assert_eq!(unknown.1.known_cost(), None);
        let priced = rows.iter().find(|(k, _)| k == "gpt-4o-mini").unwrap();
        assert_eq!(priced.1.unpriced_requests, 0);
        assert!(priced.1.known_cost().unwrap() > 0.0);
        // The total is the priced part, with the unpriced count beside it.
        assert_eq!(
            seen(
                &store
                    .summary(
                        &org,
                        None,
                        &EventFilter::default(),
                        day,
                        day + DAY,
                        day + DAY
                    )
                    .unwrap()
                    .0
            ),
            expected(&events, |_| true, None)
        );
        // Cached tokens saved their list price difference: gpt-4o-mini reads cache at half its
        // input rate (0.15 vs 0.075 USD per 1M tokens).
        let mini_cached: u64 = events
            .iter()
            .filter(|(e, _)| rollup::model_of(e) == "gpt-4o-mini")
            .map(|(e, _)| e.cached_input_tokens.unwrap_or(0))
            .sum();
        assert!(mini_cached > 0);
        assert_eq!(priced.1.cached_input_tokens, mini_cached);
        assert_eq!(
            (priced.1.cache_savings_usd * 1e12).round() as u64,
            mini_cached * 75_000
        );
    }

    #[test]
    fn the_unpriced_and_pair_figures_are_counted_for_events_stored_before_them() {
        let dir = temp_dir("migration9");
        let day = parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
        let events = labelled_batch(400, day, DAY);
        // A database as schema 8 left it: events counted in rollups without the new figures,
        // and the last 100 events stored after the last rollup write.
        {
            let mut conn = database_at(&dir, 8);
            let prices = PriceTable::builtin().unwrap();
            let mut pending = Pending::default();
            let mut tx = conn.begin().unwrap();
            insert_raw(&mut tx, &events, true);
            for (e, ts) in &events[..300] {
                pending.add(&prices, e, *ts);
            }
            pending.write_before_v9(&mut tx, 1).unwrap();
            tx.execute("UPDATE rollup_progress SET events_seq = 300", &[])
                .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.recount_rollups().unwrap(), 100);
        let org = Org {
            id: 1,
            name: "acme".into(),
        };
        for (filter, keep) in [
            (
                EventFilter::default(),
                Box::new(|_: &Event| true) as Box<dyn Fn(&Event) -> bool>,
            ),
            (
                EventFilter {
                    team: Some("search".into()),
                    ..Default::default()
                },
                Box::new(|e: &Event| e.team.as_deref() == Some("search")),
            ),
        ] {
            for dim in [None, Some("model"), Some("namespace"), Some("user")] {
                let (rows, _) = store
                    .summary(&org, dim, &filter, day, day + DAY, day + 2 * DAY)
                    .unwrap();
                assert_eq!(
                    seen(&rows),
                    expected(&events, &keep, dim),
                    "{filter:?} by {dim:?}"
                );
            }
        }
    }

    /// Users under the team filter are counted by the migration that added them, for the events
    /// the rollups counted before it (on PostgreSQL, into each replica's rows), and at ingest
    /// after it.
    #[test]
    fn users_under_teams_are_counted_for_events_stored_before_them() {
        let dir = temp_dir("users_under_teams");
        let store = test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let day = parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
        let events = labelled_batch(600, day, DAY);
        store
            .insert_events(&org, Arc::new(events[..400].to_vec()), day + DAY)
            .unwrap();
        store.write_rollups().unwrap();
        // The database as the schema before them left it: no such rows, nor the version.
        let database = store.database().clone();
        {
            let mut conn = store.conn_for_cli();
            conn.execute("DELETE FROM rollups WHERE dim LIKE 'team:user%'", &[])
                .unwrap();
            let older = match store.backend() {
                Backend::Sqlite => format!("PRAGMA user_version = {}", USERS_UNDER_TEAMS - 1),
                Backend::Postgres => format!(
                    "DELETE FROM schema_version WHERE version >= {POSTGRES_USERS_UNDER_TEAMS};
                     DROP FUNCTION tally_writer_is_current() CASCADE"
                ),
            };
            conn.batch(&older).unwrap();
        }
        drop(store);
        let options = Options {
            replica: Some("upgraded".into()),
            ..Default::default()
        };
        let store = Store::open_with(&database, options).unwrap();
        store
            .insert_events(&org, Arc::new(events[400..].to_vec()), day + DAY)
            .unwrap();
        let team = EventFilter {
            team: Some("search".into()),
            ..Default::default()
        };
        let (rows, read) = store
            .summary(&org, Some("user"), &team, day, day + DAY, day + 2 * DAY)
            .unwrap();
        assert_eq!(read, Read::Rollups(HOUR));
        let search = |e: &Event| e.team.as_deref() == Some("search");
        assert_eq!(seen(&rows), expected(&events, search, Some("user")));
    }

    /// Events straight into the events table of an older schema (`mesh`: with its namespace and
    /// workload columns, from schema 7).
    fn insert_raw(tx: &mut Conn, events: &Batch, mesh: bool) {
        let (cols, vals) = if mesh {
            (", namespace, workload", ", ?18, ?19")
        } else {
            ("", "")
        };
        for (e, ts) in events {
            let sql = format!(
                "INSERT INTO events (org_id, request_id, ts_ms, timestamp, provider, api, endpoint,
                    model_requested, model_actual, status, streaming, latency_ms, input_tokens,
                    output_tokens, cached_input_tokens, cost_usd, error_category, error_source,
                    team, app, feature, user, routed, received_ms{cols})
                 VALUES (1, ?1, ?2, '', ?3, 'chat_completions', '/', ?4, ?5, ?6, 0, ?7, ?8, ?9,
                    ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, 0, 0{vals})"
            );
            let mut args: Vec<Value> = vec![
                e.request_id.clone().into(),
                (*ts).into(),
                e.provider.clone().into(),
                e.model_requested.clone().into(),
                e.model_actual.clone().into(),
                e.status.map(i64::from).into(),
                e.latency_ms.into(),
                e.input_tokens.map(|n| n as i64).into(),
                e.output_tokens.map(|n| n as i64).into(),
                e.cached_input_tokens.map(|n| n as i64).into(),
                e.cost_usd.into(),
                e.error_category.map(|c| c.name().to_string()).into(),
                e.error_source.map(|c| c.name().to_string()).into(),
                e.team.clone().into(),
                e.app.clone().into(),
                e.feature.clone().into(),
                e.user.clone().into(),
            ];
            if mesh {
                args.push(e.namespace.clone().into());
                args.push(e.workload.clone().into());
            }
            tx.execute(&sql, &args).unwrap();
        }
    }

    #[test]
    fn a_database_from_before_rollups_counts_every_event_once_at_the_latest_schema() {
        let dir = temp_dir("migration2");
        let day = parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
        let mut events = labelled_batch(300, day, DAY);
        {
            let mut conn = database_at(&dir, 2);
            let mut tx = conn.begin().unwrap();
            insert_raw(&mut tx, &events, false);
            tx.commit().unwrap();
        }
        // Schema 2 had no mesh identity.
        for (e, _) in &mut events {
            e.namespace = None;
            e.workload = None;
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(
            store.recount_rollups().unwrap(),
            0,
            "counted at the migration"
        );
        let org = Org {
            id: 1,
            name: "acme".into(),
        };
        let team = EventFilter {
            team: Some("pay".into()),
            ..Default::default()
        };
        for (filter, keep) in [
            (
                EventFilter::default(),
                Box::new(|_: &Event| true) as Box<dyn Fn(&Event) -> bool>,
            ),
            (team, Box::new(|e: &Event| e.team.as_deref() == Some("pay"))),
        ] {
            for dim in [None, Some("model"), Some("namespace")] {
                let (rows, _) = store
                    .summary(&org, dim, &filter, day, day + DAY, day + 2 * DAY)
                    .unwrap();
                assert_eq!(
                    seen(&rows),
                    expected(&events, &keep, dim),
                    "{filter:?} by {dim:?}"
                );
            }
        }
    }

    #[test]
    fn data_files_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("modes");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let data = dir.join("data");
        {
            let store = Store::open(&data).unwrap();
            let key = store.create_org("acme", 0).unwrap();
            let org = store.org_for_key(&key).unwrap().unwrap();
            store
                .insert_events(&org, Arc::new(labelled_batch(10, 0, DAY)), DAY)
                .unwrap();
            assert_eq!(mode(&data), 0o700);
            for f in ["tally.db", "tally.db-wal", "tally.db-shm"] {
                assert_eq!(mode(&data.join(f)), 0o600, "{f}");
            }
        }
        // A directory and database that others could read (made before this rule) are closed.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            data.join("tally.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        drop(Store::open(&data).unwrap());
        assert_eq!((mode(&data), mode(&data.join("tally.db"))), (0o700, 0o600));
    }

    #[test]
    fn filtered_ranges_whose_events_retention_deleted_are_read_from_pair_rows() {
        let dir = temp_dir("retained");
        let store = test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let day = parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
        let events = labelled_batch(600, day, 2 * DAY);
        store
            .insert_events(&org, Arc::new(events.clone()), day + 2 * DAY)
            .unwrap();
        let team = EventFilter {
            team: Some("pay".into()),
            ..Default::default()
        };
        let keep = |e: &Event| e.team.as_deref() == Some("pay");
        let first_hours: Batch = events
            .iter()
            .filter(|(_, ts)| *ts < day + 2 * HOUR)
            .cloned()
            .collect();
        // Two hours: read from the events while they are stored...
        let (rows, read) = store
            .summary(&org, None, &team, day, day + 2 * HOUR, day + 3 * DAY)
            .unwrap();
        assert_eq!(read, Read::Events);
        assert_eq!(seen(&rows), expected(&first_hours, keep, None));
        // ...and from pair rows once retention deleted the first day's.
        store.prune(1, day + 2 * DAY).unwrap();
        let (rows, read) = store
            .summary(&org, None, &team, day, day + 2 * HOUR, day + 3 * DAY)
            .unwrap();
        assert_eq!(read, Read::Rollups(HOUR));
        assert_eq!(seen(&rows), expected(&first_hours, keep, None));
    }

    #[test]
    fn the_collector_prices_what_filters_send_unpriced_by_every_dimension() {
        let dir = temp_dir("pricing");
        let store = test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let event = |id: &str, json: serde_json::Value| -> (Event, i64) {
            let mut v = serde_json::json!({
                "request_id": id, "timestamp": "2026-01-05T10:00:00.000Z", "provider": "openai",
                "api": "chat_completions", "endpoint": "/v1/chat/completions",
                "model_requested": "gpt-5", "model_actual": "gpt-5-2025-08-07", "status": 200,
                "streaming": false, "latency_ms": 10.0, "input_tokens": 1000,
                "output_tokens": 100, "cached_input_tokens": 400, "cost_usd": null,
                "routed": false,
            });
            for (k, x) in json.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e: Event = serde_json::from_value(v).unwrap();
            (e, parse_rfc3339_ms("2026-01-05T10:00:00Z").unwrap())
        };
        let batch = vec![
            event("default", serde_json::json!({})),
            event("flex", serde_json::json!({"service_tier": "flex"})),
            event(
                "sonnet",
                serde_json::json!({"provider": "anthropic", "model_requested": "claude-sonnet-4-5",
                "model_actual": "claude-sonnet-4-5-20250929", "input_tokens": 1300, "cached_input_tokens": 0,
                "cache_write_tokens": 300, "cache_write_1h_tokens": 200, "web_search_requests": 3, "output_tokens": 10}),
            ),
            event("sent", serde_json::json!({"cost_usd": 0.5})),
        ];
        store.insert_events(&org, Arc::new(batch), 0).unwrap();
        let cost = |id: &str| -> Option<u64> {
            let f = EventFilter {
                limit: 10,
                ..Default::default()
            };
            let events = store.query_events(&org, &f).unwrap();
            let e = events.iter().find(|e| e.request_id == id).unwrap();
            e.cost_usd.map(|c| (c * 1e12).round() as u64)
        };
        // gpt-5: $1.25 in, $0.125 cached, $10 out per 1M; flex half of each.
        assert_eq!(
            cost("default"),
            Some(600 * 1_250_000 + 400 * 125_000 + 100 * 10_000_000)
        );
        assert_eq!(
            cost("flex"),
            Some(600 * 625_000 + 400 * 62_500 + 100 * 5_000_000)
        );
        // claude-sonnet-4-5: $3 in, $3.75 for 5-minute writes, $6 for hour-long ones, $15 out,
        // $0.01 per search.
        assert_eq!(
            cost("sonnet"),
            Some(
                1000 * 3_000_000
                    + 100 * 3_750_000
                    + 200 * 6_000_000
                    + 10 * 15_000_000
                    + 3 * 10_000_000_000
            )
        );
        // A cost that arrived with the event (an older filter's) is kept.
        assert_eq!(cost("sent"), Some(500_000_000_000));
    }

    #[test]
    fn reprice_leaves_events_the_rollups_do_not_count_yet_and_records_itself() {
        let dir = temp_dir("reprice");
        let store = test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let day = parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
        let first = labelled_batch(50, day, DAY);
        store
            .insert_events(&org, Arc::new(first), day + DAY)
            .unwrap();
        store.write_rollups().unwrap();
        // Stored a moment ago: their rollup rows wait in memory, not yet in the database.
        let mut later = labelled_batch(80, day, DAY);
        for (e, _) in later.iter_mut() {
            e.request_id = format!("later-{}", e.request_id);
        }
        later.truncate(30);
        store
            .insert_events(&org, Arc::new(later), day + DAY)
            .unwrap();
        let r = store.reprice("acme", None, None, 7).unwrap();
        assert_eq!((r.events, r.changed, r.skipped), (50, 0, 30));
        let record: (i64, i64, i64) = store
            .conn()
            .query_row(
                "SELECT at_ms, events, changed FROM repricings ORDER BY id DESC LIMIT 1",
                &[],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!(record, (7, 50, 0));
        store.write_rollups().unwrap();
        assert_eq!(store.reprice("acme", None, None, 8).unwrap().skipped, 0);
        assert!(matches!(
            store.reprice("nobody", None, None, 9),
            Err(StoreError::NoSuchOrg(_))
        ));
    }
}
