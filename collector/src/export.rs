//! `tally-collector export`: the stored events of a time range streamed out for a data
//! warehouse, as NDJSON, CSV or Parquet, in memory that does not grow with their number.
//!
//! Rows are read on a read-only connection, in pages of [`PAGE`] events by keyset (`ts_ms`, then
//! `seq`, the events' arrival order) through the `(org_id, ts_ms)` index, one org after another
//! (by name), and each row is written out as it is read: nothing holds more than a page's
//! statement, or for Parquet one row group ([`ROW_GROUP`] events) and the metadata of the row
//! groups written, which the file's footer needs at its end (about 40 KiB per row group: 0.6 MiB
//! per million events). Every page is read in one read transaction, so the export is a snapshot
//! of the database as it was when it began, even while a collector ingests.
//!
//! Every format has one row per event with every field of the event (PRODUCT.md, "The event"),
//! `org_id` naming its org: NDJSON as the read API gives each event; CSV with a header row, the
//! fields in the same order, strings escaped and guarded against formulas as the dashboard's CSV
//! (`csv.rs`); Parquet with typed columns (`timestamp` as TIMESTAMP(MILLIS, UTC), counts INT64,
//! `status` INT32, times and cost DOUBLE, flags BOOLEAN, labels nullable UTF-8 strings),
//! Snappy-compressed, with min/max statistics per row group.

use crate::db::{Conn, DbError, Row};
use crate::store::EVENT_COLUMNS;
use crate::values;
use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as Physical};
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally::event::Event;

/// Events read per query.
pub const PAGE: i64 = 10_000;

/// Events per Parquet row group: what the Parquet writer holds in memory before writing it.
pub const ROW_GROUP: usize = 65_536;

/// Values handed to the Parquet writer at a time.
const WRITE_BATCH: usize = 8_192;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Ndjson,
    Csv,
    Parquet,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// `export`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// From this time (RFC 3339, or a date: midnight UTC); default: the first event.
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time (exclusive; RFC 3339 or a date); default: no end.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum)]
    pub format: Format,
    /// One org's events; default: every org's, each row naming its org.
    #[arg(long)]
    pub org: Option<String>,
    /// Write here (made 0600, complete or not at all); default: standard output (Parquet too,
    /// when it is not a terminal).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub store: crate::store::StoreArgs,
}

/// What to export: events with `from_ms <= ts_ms < to_ms` of `org`, or of every org.
pub struct Options {
    pub from_ms: i64,
    pub to_ms: i64,
    pub org: Option<String>,
    pub format: Format,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub events: u64,
    pub orgs: usize,
}

/// `tally-collector export`: checks the flags, exports, and says on standard error what it
/// wrote.
pub fn run(args: &Args) -> Result<(), String> {
    let time = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| {
                tally::time::parse_rfc3339_ms(v).ok_or_else(|| {
                    format!("--{name} {v:?}: expected an RFC 3339 date-time or a date (YYYY-MM-DD)")
                })
            })
            .transpose()
    };
    let from_ms = time("from", &args.from)?.unwrap_or(i64::MIN);
    let to_ms = time("to", &args.to)?.unwrap_or(i64::MAX);
    if from_ms >= to_ms {
        return Err("--from must be before --to (--to is exclusive)".into());
    }
    let database = args.store.database().map_err(|e| e.to_string())?;
    if let crate::store::Database::Sqlite(dir) = &database {
        if !dir.join("tally.db").exists() {
            return Err(format!(
                "no database in {} (give the collector's --data-dir, or its --database)",
                dir.display()
            ));
        }
    }
    // Brings an older database to this collector's schema, as every command does; the export
    // itself reads on a connection of its own (on SQLite, one that cannot write).
    let store = args.store.open().map_err(|e| e.to_string())?;
    let mut conn = store
        .open_reader()
        .map_err(|e| format!("cannot open {}: {e}", database.describe()))?;
    let opts = Options {
        from_ms,
        to_ms,
        org: args.org.clone(),
        format: args.format,
    };
    let started = std::time::Instant::now();
    let (done, to) = match &args.out {
        Some(path) => {
            let (file, partial) = create_partial(path)?;
            let done = export(
                &mut conn,
                &opts,
                std::io::BufWriter::with_capacity(1 << 16, file),
            );
            match done {
                Ok(done) => {
                    std::fs::rename(&partial, path).map_err(|e| {
                        let _ = std::fs::remove_file(&partial);
                        format!("cannot write {}: {e}", path.display())
                    })?;
                    (done, path.display().to_string())
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            }
        }
        None => {
            use std::io::IsTerminal;
            let stdout = std::io::stdout();
            if args.format == Format::Parquet && stdout.is_terminal() {
                return Err("Parquet is binary: give --out PATH, or redirect the output".into());
            }
            let done = export(
                &mut conn,
                &opts,
                std::io::BufWriter::with_capacity(1 << 16, stdout),
            )?;
            (done, "standard output".to_string())
        }
    };
    drop(conn);
    drop(store);
    eprintln!(
        "Exported {} events of {} org{} as {} to {to} in {:.1} s.",
        done.events,
        done.orgs,
        if done.orgs == 1 { "" } else { "s" },
        args.format.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A file beside `path` that becomes it once complete, readable by its owner only (it holds
/// spend by team and user).
fn create_partial(path: &Path) -> Result<(std::fs::File, PathBuf), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path
        .file_name()
        .ok_or_else(|| format!("--out {}: not a file name", path.display()))?
        .to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    let partial = path.with_file_name(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    Ok((file, partial))
}

/// The orgs to export, by name: `org`, or every org.
fn orgs(conn: &mut Conn, org: Option<&str>) -> Result<Vec<(i64, String)>, String> {
    let db = |e: DbError| format!("database: {e}");
    match org {
        Some(name) => {
            let id: Option<i64> = conn
                .query_row_opt("SELECT id FROM orgs WHERE name = ?1", values![name], |r| {
                    r.get(0)
                })
                .map_err(db)?;
            let id = id.ok_or_else(|| format!("--org: no org named {name:?}"))?;
            Ok(vec![(id, name.to_string())])
        }
        None => conn
            .query_map("SELECT id, name FROM orgs ORDER BY name", &[], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db),
    }
}

/// A page of an org's events after the cursor `(?2, ?3)` (`ts_ms`, `seq`) and before `?4`, in
/// that order: `seq`, `ts_ms`, then [`EVENT_COLUMNS`]. `ts_ms >= ?2` alone first, so that the
/// index bounds the range.
fn page_sql() -> String {
    format!(
        "SELECT seq, ts_ms, {EVENT_COLUMNS} FROM events
         WHERE org_id = ?1 AND ts_ms >= ?2 AND (ts_ms > ?2 OR seq > ?3) AND ts_ms < ?4
         ORDER BY ts_ms, seq LIMIT ?5"
    )
}

/// An event from a row of [`page_sql`].
fn event(r: &Row, org: &str) -> crate::db::Result<Event> {
    crate::store::event_from_row(r, 2, org)
}

/// Export the events `opts` picks from `conn` to `out`, and flush it.
pub fn export<W: Write + Send>(
    conn: &mut Conn,
    opts: &Options,
    out: W,
) -> Result<Exported, String> {
    let db = |e: DbError| format!("database: {e}");
    // One read transaction for every page: a snapshot.
    let mut tx = conn.begin_read().map_err(db)?;
    let orgs = orgs(&mut tx, opts.org.as_deref())?;
    let mut sink = Sink::new(opts.format, out)?;
    let sql = page_sql();
    let mut events = 0u64;
    for (id, name) in &orgs {
        let mut cursor = (opts.from_ms, 0i64);
        loop {
            let mut n = 0;
            // Why writing a row failed, if it did: the scan stops there and this is the error.
            let mut unwritten = None;
            let scanned = tx.query_each(
                &sql,
                values![*id, cursor.0, cursor.1, opts.to_ms, PAGE],
                |r| {
                    let seq: i64 = r.get(0)?;
                    let ts_ms: i64 = r.get(1)?;
                    let e = event(&r, name)?;
                    if let Err(e) = sink.row(name, ts_ms, &e) {
                        unwritten = Some(e);
                        return Err(DbError::Sql("the export stopped".into()));
                    }
                    cursor = (ts_ms, seq);
                    n += 1;
                    Ok(())
                },
            );
            if let Some(e) = unwritten {
                return Err(e);
            }
            scanned.map_err(db)?;
            events += n as u64;
            if n < PAGE {
                break;
            }
        }
    }
    sink.finish()?;
    Ok(Exported {
        events,
        orgs: orgs.len(),
    })
}

/// A field of an exported row, as [`fields`] gives it.
enum V<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    /// Unix ms, and the event's RFC 3339 text (NDJSON and CSV write the text).
    Time(i64, &'a str),
    Int32(Option<i32>),
    Int(Option<u64>),
    Float(f64),
    OptFloat(Option<f64>),
    Bool(bool),
}

/// Every field of an event's row, in order: the event's own order (as NDJSON has them).
fn fields<'a>(org: &'a str, ts_ms: i64, e: &'a Event, f: &mut impl FnMut(&'static str, V<'a>)) {
    use V::*;
    let s = |v: &'a Option<String>| OptText(v.as_deref());
    f("request_id", Text(&e.request_id));
    f("timestamp", Time(ts_ms, &e.timestamp));
    f("org_id", Text(org));
    f("provider", Text(&e.provider));
    f("api", Text(&e.api));
    f("endpoint", Text(&e.endpoint));
    f("model_requested", s(&e.model_requested));
    f("model_actual", s(&e.model_actual));
    f("status", Int32(e.status.map(i32::from)));
    f("streaming", Bool(e.streaming));
    f("latency_ms", Float(e.latency_ms));
    f("ttfb_ms", OptFloat(e.ttfb_ms));
    f("input_tokens", Int(e.input_tokens));
    f("output_tokens", Int(e.output_tokens));
    f("cached_input_tokens", Int(e.cached_input_tokens));
    f("cache_write_tokens", Int(e.cache_write_tokens));
    f("reasoning_tokens", Int(e.reasoning_tokens));
    f("cache_write_1h_tokens", Int(e.cache_write_1h_tokens));
    f("web_search_requests", Int(e.web_search_requests));
    f("service_tier", s(&e.service_tier));
    f("token_source", OptText(e.token_source.map(|t| t.name())));
    f("measured_output_tokens", Int(e.measured_output_tokens));
    f("cost_usd", OptFloat(e.cost_usd));
    f(
        "error_category",
        OptText(e.error_category.map(|c| c.name())),
    );
    f("error_source", OptText(e.error_source.map(|c| c.name())));
    f("team", s(&e.team));
    f("app", s(&e.app));
    f("feature", s(&e.feature));
    f("task", s(&e.task));
    f("session_id", s(&e.session_id));
    f("user", s(&e.user));
    f("namespace", s(&e.namespace));
    f("workload", s(&e.workload));
    f("principal", s(&e.principal));
    f("rule", s(&e.rule));
    f("routed", Bool(e.routed));
    f("shadow", Bool(e.shadow));
    f("model_routed", s(&e.model_routed));
    f("trace_id", s(&e.trace_id));
    f("span_id", s(&e.span_id));
}

/// An event with every field empty, for the names and types of the columns.
fn template() -> Result<Event, String> {
    serde_json::from_str(
        r#"{"request_id":"","timestamp":"","provider":"","api":"","endpoint":"",
            "streaming":false,"latency_ms":0}"#,
    )
    .map_err(|e| format!("export: {e}"))
}

/// The column names, in order.
pub fn columns() -> Result<Vec<&'static str>, String> {
    let e = template()?;
    let mut names = Vec::new();
    fields("", 0, &e, &mut |name, _| names.push(name));
    Ok(names)
}

enum Sink<W: Write + Send> {
    Ndjson { out: W, line: Vec<u8> },
    Csv { out: W, line: String },
    Parquet(Box<ParquetSink<W>>),
}

fn io(e: std::io::Error) -> String {
    format!("cannot write the export: {e}")
}

impl<W: Write + Send> Sink<W> {
    fn new(format: Format, mut out: W) -> Result<Sink<W>, String> {
        Ok(match format {
            Format::Ndjson => Sink::Ndjson {
                out,
                line: Vec::new(),
            },
            Format::Csv => {
                let mut line = columns()?.join(",");
                line.push_str("\r\n");
                out.write_all(line.as_bytes()).map_err(io)?;
                Sink::Csv { out, line }
            }
            Format::Parquet => Sink::Parquet(Box::new(ParquetSink::new(out)?)),
        })
    }

    fn row(&mut self, org: &str, ts_ms: i64, e: &Event) -> Result<(), String> {
        match self {
            Sink::Ndjson { out, line } => {
                line.clear();
                serde_json::to_writer(&mut *line, e).map_err(|e| format!("export: {e}"))?;
                line.push(b'\n');
                out.write_all(line).map_err(io)
            }
            Sink::Csv { out, line } => {
                use std::fmt::Write as _;
                line.clear();
                let mut first = true;
                fields(org, ts_ms, e, &mut |_, v| {
                    if !first {
                        line.push(',');
                    }
                    first = false;
                    // Writing to a String cannot fail.
                    let _ = match v {
                        V::Text(s) | V::OptText(Some(s)) | V::Time(_, s) => {
                            crate::csv::field(line, s);
                            Ok(())
                        }
                        V::Int32(Some(n)) => write!(line, "{n}"),
                        V::Int(Some(n)) => write!(line, "{n}"),
                        V::Float(x) | V::OptFloat(Some(x)) => write!(line, "{x}"),
                        V::Bool(b) => write!(line, "{b}"),
                        V::OptText(None) | V::Int32(None) | V::Int(None) | V::OptFloat(None) => {
                            Ok(())
                        }
                    };
                });
                line.push_str("\r\n");
                out.write_all(line.as_bytes()).map_err(io)
            }
            Sink::Parquet(p) => p.row(org, ts_ms, e),
        }
    }

    fn finish(self) -> Result<(), String> {
        match self {
            Sink::Ndjson { mut out, .. } | Sink::Csv { mut out, .. } => out.flush().map_err(io),
            Sink::Parquet(p) => p.finish(),
        }
    }
}

/// A column's values of the row group being gathered: the non-null values, and for a nullable
/// column a definition level per row (1: a value, 0: null).
enum Data {
    /// UTF-8 bytes end to end, and where each value ends.
    Text {
        bytes: Vec<u8>,
        ends: Vec<usize>,
    },
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Double(Vec<f64>),
    Bool(Vec<bool>),
}

struct Column {
    nullable: bool,
    defs: Vec<i16>,
    data: Data,
}

struct ParquetSink<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Vec<Column>,
    rows: usize,
}

fn pq(e: parquet::errors::ParquetError) -> String {
    format!("cannot write the Parquet file: {e}")
}

impl<W: Write + Send> ParquetSink<W> {
    fn new(out: W) -> Result<ParquetSink<W>, String> {
        let e = template()?;
        let mut types = Vec::new();
        let mut columns = Vec::new();
        let mut failed = None;
        fields("", 0, &e, &mut |name, v| {
            let (physical, logical, nullable, data) = match v {
                V::Text(_) | V::OptText(_) => (
                    Physical::BYTE_ARRAY,
                    Some(LogicalType::String),
                    matches!(v, V::OptText(_)),
                    Data::Text {
                        bytes: Vec::new(),
                        ends: Vec::new(),
                    },
                ),
                V::Time(..) => (
                    Physical::INT64,
                    Some(LogicalType::timestamp(true, TimeUnit::MILLIS)),
                    false,
                    Data::Int64(Vec::new()),
                ),
                V::Int32(_) => (Physical::INT32, None, true, Data::Int32(Vec::new())),
                V::Int(_) => (Physical::INT64, None, true, Data::Int64(Vec::new())),
                V::Float(_) | V::OptFloat(_) => (
                    Physical::DOUBLE,
                    None,
                    matches!(v, V::OptFloat(_)),
                    Data::Double(Vec::new()),
                ),
                V::Bool(_) => (Physical::BOOLEAN, None, false, Data::Bool(Vec::new())),
            };
            let repetition = if nullable {
                Repetition::OPTIONAL
            } else {
                Repetition::REQUIRED
            };
            match Type::primitive_type_builder(name, physical)
                .with_repetition(repetition)
                .with_logical_type(logical)
                .build()
            {
                Ok(t) => types.push(Arc::new(t)),
                Err(e) => failed = Some(pq(e)),
            }
            columns.push(Column {
                nullable,
                defs: Vec::new(),
                data,
            });
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let schema = Type::group_type_builder("tally_event")
            .with_fields(types)
            .build()
            .map_err(pq)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(format!("tally-collector {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer =
            SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props)).map_err(pq)?;
        Ok(ParquetSink {
            writer,
            columns,
            rows: 0,
        })
    }

    fn row(&mut self, org: &str, ts_ms: i64, e: &Event) -> Result<(), String> {
        let mut i = 0;
        let mut mismatch = false;
        let columns = &mut self.columns;
        fields(org, ts_ms, e, &mut |_, v| {
            let Some(c) = columns.get_mut(i) else {
                mismatch = true;
                return;
            };
            i += 1;
            let present = match (v, &mut c.data) {
                (V::Text(s) | V::OptText(Some(s)), Data::Text { bytes, ends }) => {
                    bytes.extend_from_slice(s.as_bytes());
                    ends.push(bytes.len());
                    true
                }
                (V::Time(ms, _), Data::Int64(vals)) => {
                    vals.push(ms);
                    true
                }
                (V::Int32(Some(n)), Data::Int32(vals)) => {
                    vals.push(n);
                    true
                }
                (V::Int(Some(n)), Data::Int64(vals)) => {
                    vals.push(i64::try_from(n).unwrap_or(i64::MAX));
                    true
                }
                (V::Float(x) | V::OptFloat(Some(x)), Data::Double(vals)) => {
                    vals.push(x);
                    true
                }
                (V::Bool(b), Data::Bool(vals)) => {
                    vals.push(b);
                    true
                }
                (V::OptText(None), Data::Text { .. })
                | (V::Int32(None), Data::Int32(_))
                | (V::Int(None), Data::Int64(_))
                | (V::OptFloat(None), Data::Double(_)) => false,
                _ => {
                    mismatch = true;
                    false
                }
            };
            if c.nullable {
                c.defs.push(i16::from(present));
            }
        });
        if mismatch || i != self.columns.len() {
            return Err("export: a row does not match the Parquet schema".into());
        }
        self.rows += 1;
        if self.rows == ROW_GROUP {
            self.write_row_group()?;
        }
        Ok(())
    }

    fn write_row_group(&mut self) -> Result<(), String> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group().map_err(pq)?;
        for c in &mut self.columns {
            let mut col = group
                .next_column()
                .map_err(pq)?
                .ok_or("export: the Parquet schema has fewer columns than a row")?;
            let defs = c.nullable.then_some(c.defs.as_slice());
            let written = match (col.untyped(), &mut c.data) {
                (ColumnWriter::ByteArrayColumnWriter(w), Data::Text { bytes, ends }) => {
                    let all = bytes::Bytes::from(std::mem::take(bytes));
                    // In batches, so that the values' handles never take more than a batch.
                    let mut start = 0;
                    let mut at = 0;
                    let rows = if c.nullable { c.defs.len() } else { ends.len() };
                    let mut row = 0;
                    let mut values = Vec::with_capacity(WRITE_BATCH);
                    while row < rows {
                        let end_row = (row + WRITE_BATCH).min(rows);
                        let n = match defs {
                            Some(d) => d[row..end_row].iter().filter(|&&d| d == 1).count(),
                            None => end_row - row,
                        };
                        values.clear();
                        for &end in &ends[at..at + n] {
                            values.push(ByteArray::from(all.slice(start..end)));
                            start = end;
                        }
                        at += n;
                        w.write_batch(&values, defs.map(|d| &d[row..end_row]), None)
                            .map_err(pq)?;
                        row = end_row;
                    }
                    ends.clear();
                    Ok(())
                }
                (ColumnWriter::Int32ColumnWriter(w), Data::Int32(v)) => {
                    let r = w.write_batch(v, defs, None).map(drop);
                    v.clear();
                    r
                }
                (ColumnWriter::Int64ColumnWriter(w), Data::Int64(v)) => {
                    let r = w.write_batch(v, defs, None).map(drop);
                    v.clear();
                    r
                }
                (ColumnWriter::DoubleColumnWriter(w), Data::Double(v)) => {
                    let r = w.write_batch(v, defs, None).map(drop);
                    v.clear();
                    r
                }
                (ColumnWriter::BoolColumnWriter(w), Data::Bool(v)) => {
                    let r = w.write_batch(v, defs, None).map(drop);
                    v.clear();
                    r
                }
                _ => return Err("export: a column does not match the Parquet schema".into()),
            };
            written.map_err(pq)?;
            col.close().map_err(pq)?;
            c.defs.clear();
        }
        group.close().map_err(pq)?;
        self.rows = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        self.write_row_group()?;
        let mut out = self.writer.into_inner().map_err(pq)?;
        out.flush().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_the_event_is_a_column_in_the_events_own_order() {
        let e = template().expect("template");
        let json = serde_json::to_string(&e).expect("json");
        let value: serde_json::Value = serde_json::from_str(&json).expect("value");
        let cols = columns().expect("columns");
        assert_eq!(cols.len(), value.as_object().expect("object").len());
        let at: Vec<usize> = cols
            .iter()
            .map(|c| json.find(&format!("\"{c}\":")).expect(c))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{cols:?}");
    }
}
