//! `tally-collector export` with the real binary: events stored through the store's ingest (nulls,
//! unicode, commas and quotes, formula-looking labels, several orgs, a time range's edges),
//! exported as NDJSON, CSV and Parquet and read back by independent readers (serde_json;
//! Python's csv module; pyarrow, from `.venv`, which `make test-deps` installs), every field of
//! every row compared with the stored events; the flags' errors; and memory that does not grow
//! with the number of events (peak RSS of the export at 200 000 and 1 000 000 events).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use tally::event::Event;
use tally_collector::store::{EventFilter, Store};

const BIN: &str = env!("CARGO_BIN_EXE_tally-collector");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    let ok = Command::new(&p)
        .args(["-c", "import pyarrow.parquet"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import pyarrow: run `make test-deps` (it installs pyarrow into .venv)",
        p.display()
    );
    p
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tally-export-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("run tally-collector")
}

fn cli(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn create_org(dir: &Path, name: &str) -> String {
    String::from_utf8(cli(dir, &["org", "create", name]))
        .expect("utf-8")
        .trim()
        .to_string()
}

const BASE: &str = "2026-11-24T08:00:00.000Z";

fn base_ms() -> i64 {
    tally::time::parse_rfc3339_ms(BASE).expect("base")
}

/// An event `ms` after BASE, with its fields set from `extra` (JSON) over a plain call.
fn event(id: &str, ms: i64, extra: Value) -> (Event, i64) {
    let ts = base_ms() + ms;
    let mut v = json!({
        "request_id": id, "timestamp": tally::time::format_rfc3339_ms(ts),
        "provider": "openai", "api": "chat_completions", "endpoint": "/v1/chat/completions",
        "model_requested": "gpt-4o-mini", "model_actual": "gpt-4o-mini-2024-07-18",
        "status": 200, "streaming": false, "latency_ms": 812.25, "ttfb_ms": 120.5,
        "input_tokens": 1200, "output_tokens": 300, "cached_input_tokens": 200,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "token_source": "exact",
        "cost_usd": null, "error_category": null, "error_source": null,
        "team": "payments", "app": "billing", "feature": "receipt-summary", "task": null,
        "session_id": null, "user": null, "rule": null, "routed": false
    });
    for (k, x) in extra.as_object().expect("object") {
        v[k] = x.clone();
    }
    let ts = v["timestamp"]
        .as_str()
        .and_then(tally::time::parse_rfc3339_ms)
        .expect("timestamp");
    (serde_json::from_value(v).expect("event"), ts)
}

/// The events of `acme`: every kind of value a field can hold.
fn acme_events() -> Vec<(Event, i64)> {
    vec![
        // At `--from` exactly: in.
        event("a-first", 0, json!({})),
        event(
            "a-unicode",
            1_000,
            json!({"team": "zahlungsverkehr-ü", "feature": "résumé 日本語 🚀", "user": "björk@example.com",
                   "session_id": "sess-Ω", "task": "tâche"}),
        ),
        event(
            "a-commas",
            2_000,
            json!({"team": "a,b", "app": "say \"hi\"", "feature": "line\nbreak", "task": "tab\there",
                   "user": "quote\"and,comma", "session_id": "cr\rlf\r\n"}),
        ),
        event(
            "a-formula",
            3_000,
            json!({"team": "=HYPERLINK(\"http://evil\",\"x\")", "app": "+cmd|' /C calc'!A0",
                   "feature": "-2+3", "task": "@SUM(A1)", "user": "-1.5", "session_id": "=1,\"2\""}),
        ),
        event(
            "a-nulls",
            4_000,
            json!({"model_requested": null, "model_actual": null, "status": null, "ttfb_ms": null,
                   "input_tokens": null, "output_tokens": null, "cached_input_tokens": null,
                   "cache_write_tokens": null, "reasoning_tokens": null, "token_source": null,
                   "team": null, "app": null, "feature": null, "latency_ms": 0.0,
                   "error_category": "client_disconnect", "error_source": "client"}),
        ),
        event(
            "a-everything",
            5_000,
            json!({"provider": "anthropic", "api": "messages", "endpoint": "/v1/messages",
                   "model_requested": "claude-sonnet-4-5", "model_actual": "claude-sonnet-4-5-20250929",
                   "status": 429, "streaming": true, "error_category": "rate_limited",
                   "error_source": "provider", "token_source": "measured",
                   "measured_output_tokens": 310, "cache_write_1h_tokens": 50,
                   "cache_write_tokens": 80, "web_search_requests": 2, "service_tier": "priority",
                   "cost_usd": 0.012345678901234, "namespace": "payments-prod",
                   "workload": "billing-api", "principal": "spiffe://cluster.local/ns/payments-prod/sa/billing",
                   "rule": "budget:monthly", "shadow": true, "routed": true,
                   "model_routed": "claude-haiku-4-5", "user": "u-7", "task": "t-1",
                   "session_id": "s-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                   "span_id": "00f067aa0ba902b7"}),
        ),
        // A model without a price: its cost stays unknown.
        event(
            "a-unpriced",
            6_000,
            json!({"model_requested": "no-such-model-xyz", "model_actual": "no-such-model-xyz"}),
        ),
        // Another offset than UTC: stored as sent, at the same instant.
        event(
            "a-offset",
            7_000,
            json!({"timestamp": "2026-11-24T10:00:07.123+02:00"}),
        ),
        // Three events in the same millisecond.
        event("a-tie-1", 8_000, json!({})),
        event("a-tie-2", 8_000, json!({"team": "tie"})),
        event("a-tie-3", 8_000, json!({"team": "tie"})),
        // Before `--from`, and at `--to` (exclusive): out.
        event("a-before", -1, json!({})),
        event("a-at-to", 3_600_000, json!({})),
    ]
}

fn beta_events() -> Vec<(Event, i64)> {
    vec![
        event("b-1", 500, json!({"team": "search"})),
        event("b-2", 9_000, json!({"team": "search", "cost_usd": 1.5})),
    ]
}

const FROM: &str = "2026-11-24T08:00:00Z";
const TO: &str = "2026-11-24T09:00:00Z";

/// A data directory with orgs acme and beta and their events stored by the store's ingest;
/// returns the stored events in the range, in export order (org, then time, then arrival).
fn fill(dir: &Path) -> Vec<Event> {
    let keys = [create_org(dir, "acme"), create_org(dir, "beta")];
    let store = Store::open(&dir.join("data")).expect("open");
    let now = base_ms() + 86_400_000;
    let mut expected = Vec::new();
    for (key, events) in keys.iter().zip([acme_events(), beta_events()]) {
        let org = store.org_for_key(key).expect("key").expect("org");
        let (accepted, _, _) = store
            .insert_events(&org, Arc::new(events), now)
            .expect("insert");
        assert!(accepted > 0);
        let mut stored = store
            .query_events(
                &org,
                &EventFilter {
                    from_ms: Some(base_ms()),
                    to_ms: Some(base_ms() + 3_600_000),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .expect("query");
        // Newest first there; the export goes by time, then arrival.
        stored.reverse();
        stored.sort_by_key(|e| tally::time::parse_rfc3339_ms(&e.timestamp));
        expected.extend(stored);
    }
    expected
}

/// The fields of the events as JSON objects (the API's form).
fn as_json(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::to_value(e).expect("json"))
        .collect()
}

fn export(dir: &Path, format: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["export", "--from", FROM, "--to", TO, "--format", format];
    args.extend_from_slice(extra);
    cli(dir, &args)
}

/// The column names, in the order every format has them.
fn columns() -> Vec<String> {
    tally_collector::export::columns()
        .expect("columns")
        .into_iter()
        .map(String::from)
        .collect()
}

/// The names of the files in `dir` that `keep` picks.
fn files_in(dir: &std::path::Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .collect()
}
#[test]
fn ndjson_has_every_stored_event_of_the_range_as_the_api_gives_it() {
    let dir = TempDir::new("ndjson");
    let expected = fill(&dir.0);
    let ids: Vec<&str> = expected.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "a-first",
            "a-unicode",
            "a-commas",
            "a-formula",
            "a-nulls",
            "a-everything",
            "a-unpriced",
            "a-offset",
            "a-tie-1",
            "a-tie-2",
            "a-tie-3",
            "b-1",
            "b-2"
        ]
    );
    let out = String::from_utf8(export(&dir.0, "ndjson", &[])).expect("utf-8");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(rows, as_json(&expected));
    // Each line is an event as the contract has it, its keys in order.
    for (l, e) in out.lines().zip(&expected) {
        let back: Event = serde_json::from_str(l).expect("an event");
        assert_eq!(&back, e);
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(l)
            .expect("object")
            .keys()
            .cloned()
            .collect();
        let mut cols = columns();
        cols.sort();
        assert_eq!(keys, cols);
    }
    // What was sent came through: unicode, quotes, the formula as it is (only CSV guards it).
    let by_id = |id: &str| rows.iter().find(|r| r["request_id"] == id).expect(id);
    assert_eq!(by_id("a-unicode")["feature"], "résumé 日本語 🚀");
    assert_eq!(
        by_id("a-formula")["team"],
        "=HYPERLINK(\"http://evil\",\"x\")"
    );
    assert_eq!(by_id("a-unpriced")["cost_usd"], Value::Null);
    assert!(by_id("a-first")["cost_usd"]
        .as_f64()
        .is_some_and(|c| c > 0.0));
    assert_eq!(by_id("b-2")["org_id"], "beta");

    // One org.
    let out = String::from_utf8(export(&dir.0, "ndjson", &["--org", "beta"])).expect("utf-8");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    let beta: Vec<Event> = expected
        .iter()
        .filter(|e| e.org_id.as_deref() == Some("beta"))
        .cloned()
        .collect();
    assert_eq!(rows, as_json(&beta));

    // A file, made 0600, with nothing left beside it.
    let path = dir.0.join("out.ndjson");
    export(&dir.0, "ndjson", &["--out", path.to_str().expect("path")]);
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), expected.len());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let left = files_in(&dir.0, |n| n.contains("partial"));
    assert!(left.is_empty(), "{left:?}");
}

/// A CSV cell as the export should write it for a JSON value of the event: strings guarded
/// against formulas (a `'` before `=`, `+`, `-`, `@`, tab or CR, unless it is a number),
/// null empty.
fn csv_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => {
            let formula =
                s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
            if formula {
                format!("'{s}")
            } else {
                s.clone()
            }
        }
        other => other.to_string(),
    }
}

#[test]
fn csv_read_by_pythons_csv_module_matches_the_stored_events() {
    let dir = TempDir::new("csv");
    let expected = fill(&dir.0);
    let path = dir.0.join("out.csv");
    export(&dir.0, "csv", &["--out", path.to_str().expect("path")]);
    let out = Command::new(python())
        .args([
            "-c",
            "import csv, json, sys\n\
             with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
             \x20   r = csv.reader(f, strict=True)\n\
             \x20   print(json.dumps(list(r)))",
        ])
        .arg(&path)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Vec<Vec<String>> = serde_json::from_slice(&out.stdout).expect("rows");
    assert_eq!(table[0], columns(), "the header");
    assert_eq!(table.len(), expected.len() + 1);
    for (row, e) in table[1..].iter().zip(as_json(&expected)) {
        assert_eq!(row.len(), table[0].len());
        for (name, cell) in table[0].iter().zip(row) {
            let want = &e[name];
            match want {
                // Numbers are compared as numbers (1 and 1.0 are the same cost).
                Value::Number(n) => {
                    let got: f64 = cell.parse().unwrap_or_else(|_| panic!("{name}: {cell:?}"));
                    assert_eq!(Some(got), n.as_f64(), "{} {name}", e["request_id"]);
                }
                _ => assert_eq!(cell, &csv_cell(want), "{} {name}", e["request_id"]),
            }
        }
    }
    // The guard, as a spreadsheet would see it.
    let formula = table
        .iter()
        .find(|r| r[0] == "a-formula")
        .expect("a-formula");
    let col = |n: &str| table[0].iter().position(|c| c == n).expect(n);
    assert_eq!(formula[col("team")], "'=HYPERLINK(\"http://evil\",\"x\")");
    assert_eq!(formula[col("app")], "'+cmd|' /C calc'!A0");
    assert_eq!(formula[col("user")], "-1.5");
    let commas = table.iter().find(|r| r[0] == "a-commas").expect("a-commas");
    assert_eq!(commas[col("session_id")], "cr\rlf\r\n");
}

#[test]
fn parquet_read_by_pyarrow_has_typed_columns_and_every_stored_event() {
    let dir = TempDir::new("parquet");
    let expected = fill(&dir.0);
    let path = dir.0.join("out.parquet");
    export(&dir.0, "parquet", &["--out", path.to_str().expect("path")]);
    // Also to standard output when it is not a terminal: the same file.
    let piped = export(&dir.0, "parquet", &[]);
    assert_eq!(piped, std::fs::read(&path).expect("read"));
    let out = Command::new(python())
        .args([
            "-c",
            "import json, sys\n\
             import pyarrow as pa, pyarrow.parquet as pq\n\
             f = pq.ParquetFile(sys.argv[1])\n\
             t = f.read()\n\
             schema = {x.name: [str(x.type), x.nullable] for x in t.schema}\n\
             t = t.set_column(t.schema.get_field_index('timestamp'), 'timestamp',\n\
             \x20   t.column('timestamp').cast(pa.int64()))\n\
             print(json.dumps({'schema': schema, 'order': t.schema.names,\n\
             \x20   'row_groups': f.metadata.num_row_groups,\n\
             \x20   'created_by': f.metadata.created_by, 'rows': t.to_pylist()}))",
        ])
        .arg(&path)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got["order"], json!(columns()));
    let schema = &got["schema"];
    for (name, ty, nullable) in [
        ("request_id", "string", false),
        ("timestamp", "timestamp[ms, tz=UTC]", false),
        ("org_id", "string", false),
        ("status", "int32", true),
        ("streaming", "bool", false),
        ("latency_ms", "double", false),
        ("ttfb_ms", "double", true),
        ("input_tokens", "int64", true),
        ("cost_usd", "double", true),
        ("team", "string", true),
        ("shadow", "bool", false),
        ("model_routed", "string", true),
    ] {
        assert_eq!(schema[name], json!([ty, nullable]), "{name}");
    }
    assert!(got["created_by"]
        .as_str()
        .is_some_and(|c| c.starts_with("tally-collector")));
    let rows = got["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), expected.len());
    for (row, (e, want)) in rows.iter().zip(expected.iter().zip(as_json(&expected))) {
        let mut want = want;
        want["timestamp"] = json!(tally::time::parse_rfc3339_ms(&e.timestamp).expect("ts"));
        assert_eq!(row, &want);
    }
}

#[test]
fn empty_ranges_give_a_header_or_an_empty_file_and_bad_flags_say_what_is_wrong() {
    let dir = TempDir::new("flags");
    fill(&dir.0);
    let range = ["--from", "2020-01-01", "--to", "2020-01-02"];
    let csv = cli(
        &dir.0,
        &[&["export", "--format", "csv"][..], &range].concat(),
    );
    assert_eq!(
        String::from_utf8(csv).expect("utf-8"),
        columns().join(",") + "\r\n"
    );
    assert!(cli(
        &dir.0,
        &[&["export", "--format", "ndjson"][..], &range].concat()
    )
    .is_empty());
    let path = dir.0.join("empty.parquet");
    let p = path.to_str().expect("path");
    cli(
        &dir.0,
        &[&["export", "--format", "parquet", "--out", p][..], &range].concat(),
    );
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq; print(pq.read_table(sys.argv[1]).num_rows)",
        ])
        .arg(&path)
        .output()
        .expect("python");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    // No bounds: every event, the ones out of the range above too.
    let all = cli(&dir.0, &["export", "--format", "ndjson"]);
    assert_eq!(all.iter().filter(|&&b| b == b'\n').count(), 15);
    // A date is midnight UTC.
    let day = cli(
        &dir.0,
        &[
            "export",
            "--format",
            "ndjson",
            "--from",
            "2026-11-24",
            "--to",
            "2026-11-25",
        ],
    );
    assert_eq!(day.iter().filter(|&&b| b == b'\n').count(), 15);

    let fails = |args: &[&str], says: &str| {
        let out = run(&dir.0, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} wrote {} bytes",
            out.stdout.len()
        );
    };
    fails(
        &["export", "--format", "csv", "--org", "nobody"],
        "no org named \"nobody\"",
    );
    fails(
        &["export", "--format", "csv", "--from", "yesterday"],
        "--from \"yesterday\": expected an RFC 3339 date-time or a date",
    );
    fails(
        &["export", "--format", "csv", "--to", "2026-13-01"],
        "--to \"2026-13-01\"",
    );
    fails(
        &[
            "export",
            "--format",
            "csv",
            "--from",
            "2026-11-25",
            "--to",
            "2026-11-24",
        ],
        "--from must be before --to",
    );
    fails(&["export", "--format", "xml"], "invalid value 'xml'");
    let out = Command::new(BIN)
        .args(["export", "--format", "csv", "--data-dir"])
        .arg(dir.0.join("nowhere"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database in"));
    assert!(!dir.0.join("nowhere").exists());
    // A failed export to a file leaves nothing behind.
    let gone = dir.0.join("never.csv");
    fails(
        &[
            "export",
            "--format",
            "csv",
            "--org",
            "nobody",
            "--out",
            gone.to_str().expect("path"),
        ],
        "no org named",
    );
    let left = files_in(&dir.0, |n| n.starts_with("never"));
    assert!(left.is_empty(), "{left:?}");
}

/// `n` events of org 1 (the first org created), in a thousandth of the SQL ingest takes: three
/// per millisecond from BASE (so that pages end inside a millisecond), labels of realistic
/// lengths, every fifth without a team.
fn fill_raw(db: &Path, first: u64, n: u64) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute(
        "WITH RECURSIVE k(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM k WHERE i < ?2)
         INSERT INTO events (org_id, request_id, ts_ms, timestamp, provider, api, endpoint,
            model_requested, model_actual, status, streaming, latency_ms, ttfb_ms, input_tokens,
            output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,
            token_source, cost_usd, team, app, feature, task, session_id, user, routed,
            received_ms, namespace, workload, shadow)
         SELECT 1, printf('%08x-5f1c-4d8e-9a3b-%012x', i, i * 7919), ?3 + i / 3,
            strftime('%Y-%m-%dT%H:%M:%fZ', (?3 + i / 3) / 1000.0, 'unixepoch'),
            'openai', 'chat_completions', '/v1/chat/completions', 'gpt-4o-mini',
            'gpt-4o-mini-2024-07-18', 200, i % 2, 100.0 + i % 1000, 20.5, 1000 + i % 5000,
            200 + i % 700, 0, 0, 0, 'exact', 0.000123 * (i % 97),
            CASE WHEN i % 5 = 0 THEN NULL ELSE 'team-' || (i % 8) END, 'app-' || (i % 10),
            'feature-' || (i % 20), 'task-' || (i % 30), 'session-' || (i % 1000),
            'user-' || (i % 500) || '@example.com', 0, ?3, 'ns-' || (i % 20),
            'workload-' || (i % 100), 0
         FROM k",
        rusqlite::params![first as i64, (first + n - 1) as i64, base_ms()],
    )
    .expect("fill");
}

/// One export run under a Python parent that reads the child's rusage: (peak RSS in KiB,
/// seconds, lines or bytes written to standard output).
fn measure(dir: &Path, format: &str, out: Option<&Path>) -> (u64, f64, u64) {
    let mut args = vec![
        BIN.to_string(),
        "export".into(),
        "--format".into(),
        format.into(),
        "--data-dir".into(),
        dir.join("data").to_string_lossy().into_owned(),
    ];
    if let Some(p) = out {
        args.extend(["--out".to_string(), p.to_string_lossy().into_owned()]);
    }
    let py = Command::new(python())
        .args([
            "-c",
            "import json, resource, subprocess, sys, time\n\
             t = time.monotonic()\n\
             p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)\n\
             lines = 0\n\
             while True:\n\
             \x20   b = p.stdout.read(1 << 20)\n\
             \x20   if not b: break\n\
             \x20   lines += b.count(b'\\n')\n\
             rc = p.wait()\n\
             s = time.monotonic() - t\n\
             print(json.dumps([rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, s, lines]))",
        ])
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .expect("python");
    let v: Value = serde_json::from_slice(&py.stdout).expect("measure");
    assert_eq!(v[0], 0, "export {format} failed");
    (
        v[1].as_u64().expect("rss"),
        v[2].as_f64().expect("s"),
        v[3].as_u64().expect("lines"),
    )
}

/// Rows, row groups and distinct request ids of a Parquet file as pyarrow reads it, and whether
/// its timestamps never go back (keyset pages that end inside a millisecond neither repeat nor
/// skip an event).
fn parquet_rows(path: &Path) -> (u64, u64, u64, bool) {
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq, pyarrow.compute as pc\n\
             f = pq.ParquetFile(sys.argv[1])\n\
             t = f.read(columns=['request_id', 'timestamp'])\n\
             ts = t.column('timestamp').combine_chunks()\n\
             up = len(ts) < 2 or pc.all(pc.less_equal(ts[:-1], ts[1:])).as_py()\n\
             print(f.metadata.num_rows, f.metadata.num_row_groups,\n\
             \x20     pc.count_distinct(t.column('request_id')).as_py(), int(up))",
        ])
        .arg(path)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = s
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    (n[0], n[1], n[2], n[3] == 1)
}

/// Peak RSS of the export at 200 000 and at 1 000 000 events: the same within a few MB (and
/// the Parquet footer's metadata), under a fixed bound. `TALLY_EXPORT_EVENTS=10000000` runs the
/// larger size at ten million (`make bench-export`).
#[test]
fn memory_does_not_grow_with_the_number_of_events() {
    const SLACK_KIB: u64 = 6 * 1024;
    const BOUND_KIB: u64 = 96 * 1024;
    let large: u64 = std::env::var("TALLY_EXPORT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let small = 200_000u64;
    let dir = TempDir::new("memory");
    create_org(&dir.0, "bulk");
    let db = dir.0.join("data/tally.db");
    let parquet = dir.0.join("bulk.parquet");
    let mut seen = Vec::new();
    for (first, n) in [(0, small), (small, large - small)] {
        fill_raw(&db, first, n);
        let total = first + n;
        for format in ["ndjson", "csv", "parquet"] {
            let out = (format == "parquet").then_some(parquet.as_path());
            let (rss, s, lines) = measure(&dir.0, format, out);
            match format {
                "ndjson" => assert_eq!(lines, total),
                "csv" => assert_eq!(lines, total + 1),
                _ => {
                    let (rows, groups, distinct, ordered) = parquet_rows(&parquet);
                    assert_eq!((rows, distinct), (total, total));
                    assert_eq!(groups, total.div_ceil(65_536));
                    assert!(ordered, "timestamps out of order");
                    let _ = std::fs::remove_file(&parquet);
                }
            }
            eprintln!(
                "export {format}: {total} events in {s:.2} s, peak RSS {:.1} MiB",
                rss as f64 / 1024.0
            );
            seen.push((format, total, rss));
        }
    }
    for format in ["ndjson", "csv", "parquet"] {
        // A Parquet writer keeps each row group's metadata (columns, offsets, statistics) until
        // the footer it ends the file with: measured 0.6 MiB per million events, allowed 1 MiB.
        let footer_kib = if format == "parquet" {
            large / 1_000_000 * 1024
        } else {
            0
        };
        let rss: Vec<u64> = seen
            .iter()
            .filter(|(f, _, _)| *f == format)
            .map(|(_, _, r)| *r)
            .collect();
        assert!(
            rss[1] <= rss[0] + SLACK_KIB + footer_kib,
            "{format}: peak RSS {} KiB at {large} events, {} KiB at {small}",
            rss[1],
            rss[0]
        );
        assert!(rss[1] <= BOUND_KIB, "{format}: peak RSS {} KiB", rss[1]);
    }
}
