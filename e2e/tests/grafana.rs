//! `deploy/grafana/tally.json` against what a real stack exports: every metric a panel's query
//! (or a template variable) names must be a sample name of the collector's `/metrics` or of
//! Envoy's `/stats/prometheus` after traffic. A metric renamed in `collector/src/metrics.rs` or
//! in the filter (`src/filter/host.rs`) without the dashboard breaks this test, not the
//! dashboard: the extractor below keeps every metric name of a query, and the
//! `extractor_*` tests check that it does (and that a name missing from the scrape is reported).

mod common;

use common::{agent, send, wait_until, Options, Stack};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

/// The templated datasource every panel and target must use, so the dashboard imports anywhere.
const DS_UID: &str = "${DS_PROMETHEUS}";

fn dashboard() -> Value {
    let path = common::root().join("deploy/grafana/tally.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/tally.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// PromQL words that are not metric names: aggregations and their modifiers, binary operators
/// written as words, `offset`/`bool`, and the special floats.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
];

/// Words after which a parenthesised list holds label names, not expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Every metric name a PromQL expression reads. An identifier is a metric name unless it is a
/// function (followed by `(`), a keyword, a Grafana variable (`$x`, `${x}`, `$__rate_interval`),
/// a label name (inside `{...}` selectors and `by (...)`-style lists), a duration (inside
/// `[...]`, or after `offset`) or inside a string.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: u8| -> usize {
        // From just after an opening bracket to just after its close, strings skipped.
        let mut j = from;
        while j < b.len() && b[j] != close {
            if b[j] == b'"' || b[j] == b'\'' || b[j] == b'`' {
                let q = b[j];
                j += 1;
                while j < b.len() && b[j] != q {
                    j += 1 + usize::from(b[j] == b'\\' && q != b'`');
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            // A string literal (an argument such as label_replace's).
            let mut j = i + 1;
            while j < b.len() && b[j] != c {
                j += 1 + usize::from(b[j] == b'\\' && c != b'`');
            }
            i = j + 1;
        } else if c == b'{' {
            i = skip_to(i + 1, b'}');
        } else if c == b'[' {
            i = skip_to(i + 1, b']');
        } else if c == b'$' {
            // A Grafana variable: `$name`, `${name}` or `${name:format}`.
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = skip_to(i + 1, b'}');
            } else {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // A number or a duration (0.95, 1e3, 5m, 0x1f).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut k = i;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            let next = b.get(k).copied();
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) && next == Some(b'(') {
                i = skip_to(k + 1, b')');
            } else if lower == "offset" {
                // Its duration follows: skip it, sign included.
                while k < b.len() && (b[k] == b'-' || b[k].is_ascii_alphanumeric()) {
                    k += 1;
                }
                i = k;
            } else if next != Some(b'(') && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric a template variable's query reads: `label_values(metric, label)` (or any other
/// PromQL a query variable runs); `label_values(label)` reads none.
fn variable_metric_names(query: &str) -> BTreeSet<String> {
    let q = query.trim();
    if let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((selector, _label)) => metric_names(selector),
            None => BTreeSet::new(),
        };
    }
    if q.starts_with("label_names(") {
        return BTreeSet::new();
    }
    let inner = ["query_result(", "metrics("]
        .iter()
        .find_map(|p| q.strip_prefix(p).and_then(|r| r.strip_suffix(')')));
    metric_names(inner.unwrap_or(q))
}

/// Every panel, row panels' nested ones included.
fn all_panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        out.push(p);
    }
    out
}

/// Every metric the dashboard reads, with where (panel title or variable name).
fn dashboard_metrics(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of {:?} has no PromQL expr: {t}", p["title"]));
            for name in metric_names(expr) {
                out.push((
                    name,
                    format!("panel {:?}", p["title"].as_str().unwrap_or("")),
                ));
            }
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let query = match &v["query"] {
            Value::String(s) => s.clone(),
            q => q["query"].as_str().unwrap_or("").to_string(),
        };
        for name in variable_metric_names(&query) {
            out.push((
                name,
                format!("variable {:?}", v["name"].as_str().unwrap_or("")),
            ));
        }
    }
    out
}

/// The sample names of a Prometheus text page (`foo_total`, `foo_bucket`...): what PromQL names.
fn sample_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The dashboard's metrics that no scrape has a sample of, with where they are read.
fn missing<'a>(
    wanted: &'a [(String, String)],
    exported: &HashSet<String>,
) -> Vec<&'a (String, String)> {
    wanted
        .iter()
        .filter(|(name, _)| !exported.contains(name))
        .collect()
}

#[test]
fn extractor_keeps_metric_names_and_drops_functions_labels_variables_and_durations() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"sum by (provider, model) (rate(tally_cost_usd_total{org=~"$org"}[$__rate_interval])) * 3600"#,
            &["tally_cost_usd_total"],
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(tally_collector_ingest_batch_seconds_bucket[5m])))",
            &["tally_collector_ingest_batch_seconds_bucket"],
        ),
        (
            "sum(rate(a_sum[1m])) / sum without (instance) (rate(a_count[1m] offset 1h))",
            &["a_count", "a_sum"],
        ),
        (
            r#"sum by (instance) (tally_events_waiting) and on (instance) up{job="envoy"}"#,
            &["tally_events_waiting", "up"],
        ),
        (
            r#"sort_desc(sum(increase(x_total{a="by (b)",c=~"[}]"}[$__range])) > bool 0)"#,
            &["x_total"],
        ),
        (
            r#"label_replace(m1, "dst", "$1", "src", "(.*)") or vector(0) unless m2 ${DS:raw}"#,
            &["m1", "m2"],
        ),
        ("topk(5, max_over_time(m3[1h:5m]))", &["m3"]),
        ("tally_vms", &["tally_vms"]),
    ];
    for (expr, want) in cases {
        let got: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(got, *want, "{expr}");
    }
    assert_eq!(
        variable_metric_names("label_values(tally_requests_total, org)"),
        BTreeSet::from(["tally_requests_total".to_string()])
    );
    assert!(variable_metric_names("label_values(org)").is_empty());
}

#[test]
fn extractor_reports_a_renamed_metric() {
    // As if tally_cost_usd_total were renamed in the collector and not in the dashboard.
    let wanted = dashboard_metrics(&dashboard());
    assert!(wanted.iter().any(|(n, _)| n == "tally_cost_usd_total"));
    let mut exported: HashSet<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    assert!(missing(&wanted, &exported).is_empty());
    exported.remove("tally_cost_usd_total");
    exported.insert("tally_spend_usd_total".into());
    let gone = missing(&wanted, &exported);
    assert!(!gone.is_empty());
    assert!(gone.iter().all(|(n, _)| n == "tally_cost_usd_total"));
}

#[test]
fn dashboard_is_provisionable_with_a_templated_datasource_and_unique_panel_ids() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    let uses_ds = |d: &Value, what: &str| {
        assert_eq!(d["uid"], DS_UID, "{what}: datasource {d}");
        assert_eq!(d["type"], "prometheus", "{what}: datasource {d}");
    };
    for v in vars.iter().filter(|v| v["type"] == "query") {
        uses_ds(&v["datasource"], &format!("variable {}", v["name"]));
    }
    let mut ids = HashSet::new();
    let mut targets = 0;
    for p in all_panels(&dash) {
        let id = p["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{}", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("");
        uses_ds(&p["datasource"], title);
        let ts = p["targets"].as_array().expect("targets");
        assert!(!ts.is_empty(), "{title} has no query");
        let mut refs = HashSet::new();
        for t in ts {
            uses_ds(&t["datasource"], title);
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            targets += 1;
        }
    }
    assert!(targets >= 20, "{targets} targets");
    let text = std::fs::read_to_string(
        common::root().join("deploy/grafana/provisioning/dashboards/tally.yaml"),
    )
    .unwrap();
    let prov: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(prov["providers"][0]["type"], "file");
    let text = std::fs::read_to_string(
        common::root().join("deploy/grafana/provisioning/datasources/prometheus.yaml"),
    )
    .unwrap();
    let ds: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
}

fn scrape(url: &str) -> String {
    let (status, body, _) = send(agent().get(url), None);
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// One chat completion through Envoy, with acme's key unless `extra` gives one: its status.
fn chat(stack: &Stack, model: &str, extra: &[(&str, &str)]) -> u16 {
    let mut headers = vec![("x-tally-feature", "grafana")];
    if !extra.iter().any(|(k, _)| *k == "x-tally-key") {
        headers.push(("x-tally-key", stack.key.as_str()));
    }
    headers.extend_from_slice(extra);
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    stack.post_json("/v1/chat/completions", &headers, &body).0
}

#[test]
fn every_metric_the_dashboard_reads_is_exported_after_traffic() {
    let stack = Stack::start_with(Options {
        filter_config: r#"{"flush_interval_ms": 100, "require_org_key": true,
            "controls_refresh_ms": 300,
            "rules": [{"name": "no-o1", "match": {"model": "o1*"}, "block": true}]}"#
            .into(),
        // require_org_key needs a mesh token: acme and globex's, acme's key in each request.
        token_orgs: vec!["globex"],
        org_key_env: false,
        ..Options::default()
    });
    // A forged key is refused once the filter has the collector's key set.
    let forged = "tly_ForgedForgedForgedForgedForgedForged1234";
    let mut last = 0;
    let start = std::time::Instant::now();
    while last != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a forged key still gets {last}\n{}",
            stack.log_tails()
        );
        last = chat(&stack, "gpt-4o-mini", &[("x-tally-key", forged)]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let usage = ("x-mock-usage", "input=120,output=30");
    assert_eq!(chat(&stack, "gpt-4o-mini", &[usage]), 200);
    assert_eq!(chat(&stack, "gpt-4o", &[usage]), 200);
    // A model without a price: unpriced.
    assert_eq!(chat(&stack, "acme-llm-1", &[usage]), 200);
    // A provider error, and a request a rule blocks.
    assert_eq!(
        chat(&stack, "gpt-4o-mini", &[("x-mock-status", "429")]),
        429
    );
    assert_eq!(chat(&stack, "o1-preview", &[]), 403);
    wait_until("the events", Duration::from_secs(15), || {
        stack.query_events("feature=grafana").len() >= 4
            && stack.envoy_counter("wasmcustom.tally.events_sent") >= 4
    });
    // A batch sent twice, carrying a field this collector does not know: a duplicate, and an
    // unknown field.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let event = json!({
        "request_id": "grafana-direct-1", "timestamp": tally::time::format_rfc3339_ms(now),
        "org_id": null, "provider": "openai", "api": "chat_completions",
        "endpoint": "/v1/chat/completions", "model_requested": "gpt-4o-mini",
        "model_actual": "gpt-4o-mini-2024-07-18", "status": 200, "streaming": false,
        "latency_ms": 10.0, "ttfb_ms": 5.0, "input_tokens": 10, "output_tokens": 2,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "token_source": "exact", "cost_usd": null, "error_category": null, "error_source": null,
        "team": null, "app": null, "feature": "grafana-direct", "task": null,
        "session_id": null, "user": null, "rule": null, "routed": false,
        "grafana_future_field": 1
    });
    for _ in 0..2 {
        let (status, body, _) = send(
            agent()
                .post(&stack.collector_url("/v1/events"))
                .set("Authorization", &format!("Bearer {}", stack.key))
                .set("content-type", "application/x-ndjson"),
            Some(&event.to_string()),
        );
        assert_eq!(status, 202, "{body}");
    }

    let collector = scrape(&stack.collector_url("/metrics"));
    let envoy = scrape(&stack.admin_url("/stats/prometheus"));
    let mut exported = sample_names(&collector);
    exported.extend(sample_names(&envoy));
    let wanted = dashboard_metrics(&dashboard());
    let names: BTreeSet<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("the dashboard reads {} metrics: {names:?}", names.len());
    let gone = missing(&wanted, &exported);
    assert!(
        gone.is_empty(),
        "the dashboard reads metrics no scrape exports (renamed?): {gone:?}\n\
         --- collector /metrics\n{collector}\n--- envoy /stats/prometheus (tally)\n{}",
        envoy
            .lines()
            .filter(|l| l.contains("tally"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Both sources are read, and the traffic shows where the panels look.
    assert!(names.iter().any(|n| n.starts_with("tally_collector_")));
    assert!(names.contains("tally_events_queued"));
    let value = |text: &str, line_start: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(line_start))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        value(&envoy, "tally_requests_refused_key") >= 1.0,
        "{envoy}"
    );
    assert!(
        value(&envoy, "tally_requests_refused_rule") >= 1.0,
        "{envoy}"
    );
    assert!(value(&envoy, "tally_events_sent") >= 4.0, "{envoy}");
    assert!(value(&collector, "tally_unpriced_requests_total{") >= 1.0);
    assert!(value(&collector, "tally_errors_by_category_total{") >= 1.0);
    assert!(value(&collector, "tally_collector_ingest_duplicates_total") >= 1.0);
    assert!(value(&collector, "tally_ingest_unknown_fields_total{") >= 1.0);
    assert!(
        value(
            &collector,
            "tally_collector_ingest_batch_seconds_bucket{le=\"+Inf\"}"
        ) >= 3.0
    );
}
