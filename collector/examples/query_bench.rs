//! Query benchmark: fill a fresh store with N synthetic events spread over 30 days (realistic
//! label cardinalities), then time the summary and time-series queries the dashboard makes.
//!
//!     cargo run --release -p tally-collector --example query_bench -- [EVENTS] [DATA_DIR | URL]
//!
//! `make bench-query EVENTS=10000000` runs it at ten million events. Prints a Markdown table.
//! With a DATA_DIR the store is kept, and a store already filled there is queried again
//! without refilling it. With a `postgres://` URL (an empty database) the store is PostgreSQL.

use std::time::Instant;
use tally::event::{ErrorCategory, ErrorSource, Event};
use tally::usage::TokenSource;
use tally_collector::rollup::{DAY, HOUR, MINUTE};
use tally_collector::store::{Database, EventFilter, Options, Store};

/// A small deterministic generator (SplitMix64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const MODELS: [(&str, &str); 12] = [
    ("openai", "gpt-4o-mini-2024-07-18"),
    ("openai", "gpt-4o-2024-08-06"),
    ("openai", "gpt-4.1-2025-04-14"),
    ("openai", "o4-mini-2025-04-16"),
    ("openai", "text-embedding-3-small"),
    ("anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-haiku-4-5-20251001"),
    ("anthropic", "claude-opus-4-1-20250805"),
    ("gemini", "gemini-2.5-flash"),
    ("gemini", "gemini-2.5-pro"),
    ("azure", "gpt-4o-2024-11-20"),
    ("groq", "llama-3.3-70b-versatile"),
];

/// Labels as mesh traffic has them: a workload lives in one namespace, which one team owns; an
/// app's features are its own; a workload calls two models; users belong to teams. The
/// cardinalities are those of a mid-sized platform: 100 workloads in 20 namespaces, 8 teams,
/// 10 apps with 2 features each, 12 models, 500 users, 30 tasks. (Independent labels, where every
/// event is a new combination, are the worst case for rollups by pairs of labels: run with
/// `TALLY_BENCH_INDEPENDENT=1` to measure it.)
fn event(rng: &mut Rng, i: u64, ts: i64, independent: bool) -> Event {
    let workload = rng.below(100);
    let (namespace, team, app, model) = if independent {
        (rng.below(20), rng.below(8), rng.below(10), rng.below(12))
    } else {
        let ns = workload % 20;
        (
            ns,
            ns % 8,
            workload % 10,
            (workload + 5 * rng.below(2)) % 12,
        )
    };
    let (provider, model) = MODELS[model as usize];
    let failed = rng.below(50) == 0;
    let latency = 50.0 + 4000.0 * rng.unit().powi(3);
    let input = 100 + rng.below(8000);
    let output = 10 + rng.below(1500);
    let feature = if independent {
        rng.below(20)
    } else {
        app * 2 + rng.below(2)
    };
    let user = if independent {
        rng.below(500)
    } else {
        team * 62 + rng.below(62)
    };
    Event {
        request_id: format!("bench-{i:012}"),
        timestamp: tally::time::format_rfc3339_ms(ts),
        org_id: None,
        provider: provider.into(),
        api: "chat_completions".into(),
        endpoint: "/v1/chat/completions".into(),
        model_requested: Some(model.into()),
        model_actual: Some(model.into()),
        status: Some(if failed { 429 } else { 200 }),
        streaming: rng.below(2) == 0,
        latency_ms: latency,
        ttfb_ms: Some(latency / 5.0),
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: Some(input / 4),
        cache_write_tokens: Some(0),
        reasoning_tokens: Some(0),
        cache_write_1h_tokens: None,
        web_search_requests: None,
        service_tier: None,
        token_source: Some(TokenSource::Exact),
        measured_output_tokens: None,
        cost_usd: Some((input as f64 * 1.5 + output as f64 * 6.0) / 1e6),
        error_category: failed.then_some(ErrorCategory::RateLimited),
        error_source: failed.then_some(ErrorSource::Provider),
        team: Some(format!("team-{team}")),
        app: Some(format!("app-{app}")),
        feature: (rng.below(10) != 0).then(|| format!("feature-{feature}")),
        task: Some(format!("task-{}", rng.below(30))),
        session_id: None,
        user: Some(format!("user-{user}")),
        namespace: Some(format!("ns-{namespace}")),
        workload: Some(format!("workload-{workload}")),
        principal: None,
        rule: None,
        routed: false,
        shadow: false,
        model_routed: None,
        trace_id: None,
        span_id: None,
    }
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[runs / 2], ms[(runs * 95 / 100).min(runs - 1)])
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse().map_err(|e| format!("EVENTS: {e}")))
        .transpose()?
        .unwrap_or(1_000_000);
    let target = args.next();
    let url = target
        .clone()
        .filter(|t| tally_collector::db::postgres::is_url(t));
    let (dir, keep) = match target {
        Some(d) if url.is_none() => (std::path::PathBuf::from(d), true),
        _ => (
            std::env::temp_dir().join(format!("tally-query-bench-{}", std::process::id())),
            false,
        ),
    };
    let filled = keep && dir.join("tally.db").exists();
    if !filled && url.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let store = match &url {
        Some(url) => Store::open_with(
            &Database::Postgres(url.clone()),
            Options {
                replica: Some("query-bench".into()),
                ..Default::default()
            },
        ),
        None => Store::open(&dir),
    }
    .map_err(|e| e.to_string())?;
    if !filled {
        store.create_org("bench", 0).map_err(|e| e.to_string())?;
    }
    let key = store.rotate_key("bench").map_err(|e| e.to_string())?;
    let org = store
        .org_for_key(&key)
        .map_err(|e| e.to_string())?
        .ok_or("org missing")?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as i64;
    let span = 30 * DAY;
    let start = now - span;
    let mut rng = Rng(42);
    let independent = std::env::var_os("TALLY_BENCH_INDEPENDENT").is_some();
    let batch_size = 5000u64;
    let t = Instant::now();
    let mut i = if filled { n } else { 0 };
    while i < n {
        let batch: Vec<(Event, i64)> = (i..(i + batch_size).min(n))
            .map(|j| {
                // In time order, as a filter sends them.
                let ts = start + (j as i128 * span as i128 / n as i128) as i64;
                (event(&mut rng, j, ts, independent), ts)
            })
            .collect();
        store
            .insert_events(&org, std::sync::Arc::new(batch), now)
            .map_err(|e| e.to_string())?;
        i += batch_size;
    }
    let ingest_s = t.elapsed().as_secs_f64();
    let db_mib = store.db_bytes() as f64 / (1 << 20) as f64;

    let runs = 21;
    let mut rows = Vec::new();
    for (name, dim, from) in [
        ("summary, total, 30 days", None, start),
        ("summary by feature, 30 days", Some("feature"), start),
        ("summary by model, 30 days", Some("model"), start),
        ("summary by user (500 keys), 30 days", Some("user"), start),
        ("summary by namespace, 30 days", Some("namespace"), start),
        (
            "summary by workload (100 keys), 30 days",
            Some("workload"),
            start,
        ),
        ("summary by feature, 24 hours", Some("feature"), now - DAY),
        ("summary, total, 90 minutes", None, now - 90 * MINUTE),
    ] {
        let (p50, p95) = time(runs, || {
            store.summary(&org, dim, &EventFilter::default(), from, now, now)
        });
        rows.push((name.to_string(), p50, p95));
    }
    for (name, bucket, dim, from) in [
        (
            "time series by hour, 7 days, by model",
            HOUR,
            Some("model"),
            now - 7 * DAY,
        ),
        (
            "time series by day, 30 days, by team",
            DAY,
            Some("team"),
            start,
        ),
        (
            "time series by minute, 3 hours",
            MINUTE,
            None,
            now - 3 * HOUR,
        ),
    ] {
        let (p50, p95) = time(runs, || {
            store.timeseries(&org, bucket, dim, &EventFilter::default(), from, now, now)
        });
        rows.push((name.to_string(), p50, p95));
    }
    // Filtered, as a team's bookmarked view asks: one filter, or a team and a model, is read
    // from pair rollups (a team's by user too); a grouping by user under another filter, or a
    // range of 6 hours or less, from the events.
    let team = || EventFilter {
        team: Some("team-3".into()),
        ..Default::default()
    };
    let app = || EventFilter {
        app: Some("app-3".into()),
        ..Default::default()
    };
    // A model team-3's workloads call (workload 3's first).
    let two = || EventFilter {
        team: Some("team-3".into()),
        model: Some("o4-mini-2025-04-16".into()),
        ..Default::default()
    };
    for (name, dim, filter, from) in [
        ("summary, total, team=team-3, 30 days", None, team(), start),
        (
            "summary by model, team=team-3, 30 days",
            Some("model"),
            team(),
            start,
        ),
        (
            "summary by workload, team=team-3, 30 days",
            Some("workload"),
            team(),
            start,
        ),
        (
            "summary by provider_model (the Models card), team=team-3, 30 days",
            Some("provider_model"),
            team(),
            start,
        ),
        (
            "summary by user, team=team-3, 30 days",
            Some("user"),
            team(),
            start,
        ),
        (
            "summary by user (from the events), app=app-3, 30 days",
            Some("user"),
            app(),
            start,
        ),
        (
            "summary by feature, team=team-3, 3 hours",
            Some("feature"),
            team(),
            now - 3 * HOUR,
        ),
        (
            "summary, total, team=team-3 and a model, 24 hours",
            None,
            two(),
            now - DAY,
        ),
        (
            "summary, total, team=team-3 and a model, 30 days",
            None,
            two(),
            start,
        ),
    ] {
        // A filter that picked nothing would time an empty answer.
        let (answer, _) = store
            .summary(&org, dim, &filter, from, now, now)
            .map_err(|e| e.to_string())?;
        if answer.iter().all(|r| r.1.requests == 0) {
            return Err(format!("{name}: no event matches the filter"));
        }
        let (p50, p95) = time(runs, || store.summary(&org, dim, &filter, from, now, now));
        rows.push((name.to_string(), p50, p95));
    }
    for (name, bucket, dim, filter, from) in [
        (
            "time series by day, 30 days, by model, team=team-3",
            DAY,
            Some("model"),
            team(),
            start,
        ),
        (
            "time series by hour, 7 days, team=team-3",
            HOUR,
            None,
            team(),
            now - 7 * DAY,
        ),
    ] {
        let (p50, p95) = time(runs, || {
            store.timeseries(&org, bucket, dim, &filter, from, now, now)
        });
        rows.push((name.to_string(), p50, p95));
    }
    if filled {
        println!("{n} events over 30 days (store filled earlier); database {db_mib:.0} MiB\n");
    } else {
        println!(
            "{n} events over 30 days stored in {ingest_s:.1} s ({:.0} events/s through the store, \
             rollups included); database {db_mib:.0} MiB\n",
            n as f64 / ingest_s
        );
    }
    println!("| query | p50 ms | p95 ms |\n|---|---:|---:|");
    for (name, p50, p95) in rows {
        println!("| {name} | {p50:.2} | {p95:.2} |");
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
