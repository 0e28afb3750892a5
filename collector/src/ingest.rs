//! Parsing and validating an ingest batch: a JSON array of events or NDJSON, all or nothing.
//! The first bad event stops the batch with an error that names the field (`[3].input_tokens`).
//!
//! Fields this collector does not know (from a newer filter: collectors are upgraded first, but
//! not always) are not stored, and not dropped silently either: they are found with
//! `serde_ignored` on the first event of each batch, and only when it has some, on every event,
//! so that the batches of filters as old as the collector cost nothing more.

use crate::error::ApiError;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use tally::event::Event;
use tally::time::parse_rfc3339_ms;

/// Events with their parsed timestamps (Unix ms).
pub type Batch = Vec<(Event, i64)>;

/// Far above any real request, far below SQLite's i64.
const MAX_TOKENS: u64 = tally::usage::MAX_TOKENS;
const MAX_EVENTS: usize = 10_000;

/// Plain serde_json from a `&str`: the UTF-8 is checked once, in one pass, where reading
/// bytes checks each string on its own (a sixth of the parse). A batch that fails this is
/// parsed again from its bytes, and that error names the field.
fn quick<'de, S: DeserializeSeed<'de>>(bytes: &'de [u8], seed: S) -> Result<S::Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Top-level event fields this collector does not know, each with the number of events of the
/// batch that carry it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnknownFields(pub Vec<(String, u64)>);

impl UnknownFields {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add(&mut self, field: String) {
        match self.0.iter_mut().find(|(f, _)| *f == field) {
            Some((_, n)) => *n += 1,
            None => self.0.push((field, 1)),
        }
    }
}

/// The top-level key an ignored value sits under (`None` for anything else).
fn top_key(path: &serde_ignored::Path<'_>) -> Option<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => None,
        Path::Map {
            parent: Path::Root,
            key,
        } => Some(key.clone()),
        Path::Map { parent, .. }
        | Path::Seq { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => top_key(parent),
    }
}

/// One event, plainly, or watched for unknown fields (which are added to the tally only once
/// the event has parsed).
struct Watched<'a>(Option<&'a mut UnknownFields>);

impl<'de> DeserializeSeed<'de> for Watched<'_> {
    type Value = Event;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Event, D::Error> {
        let Some(unknown) = self.0 else {
            return Event::deserialize(de);
        };
        let mut fields: Vec<String> = Vec::new();
        let event = serde_ignored::deserialize(de, |path| {
            if let Some(k) = top_key(&path) {
                if !fields.contains(&k) {
                    fields.push(k);
                }
            }
        })?;
        for f in fields {
            unknown.add(f);
        }
        Ok(event)
    }
}

/// A JSON array of events, the first watched, and the others too if it had unknown fields.
struct Events<'a>(&'a mut UnknownFields);

impl<'de> DeserializeSeed<'de> for Events<'_> {
    type Value = Vec<Event>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Vec<Event>, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Events<'_> {
    type Value = Vec<Event>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Event>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_EVENTS));
        let unknown = self.0;
        let Some(first) = seq.next_element_seed(Watched(Some(&mut *unknown)))? else {
            return Ok(out);
        };
        out.push(first);
        let watch = !unknown.is_empty();
        while let Some(e) = seq.next_element_seed(Watched(watch.then_some(&mut *unknown)))? {
            out.push(e);
        }
        Ok(out)
    }
}

/// A batch, for callers that do not count unknown fields (tests, fuzzing, benchmarks).
pub fn parse(body: &[u8]) -> Result<Batch, ApiError> {
    parse_counting(body).map(|(batch, _)| batch)
}

/// A batch, and the fields its events carry that this collector does not know.
pub fn parse_counting(body: &[u8]) -> Result<(Batch, UnknownFields), ApiError> {
    let mut unknown = UnknownFields::default();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let events: Vec<Event> = match first {
        None => {
            return Err(ApiError::bad(
                "empty batch: send a JSON array or NDJSON of events",
            ))
        }
        // Plain serde_json first: tracking the path costs a third of the parse, and only a
        // batch that fails needs it, parsed again to name the field.
        Some(b'[') => match quick(body, Events(&mut unknown)) {
            Ok(events) => events,
            Err(first) => {
                let mut de = serde_json::Deserializer::from_slice(body);
                // No error with a path: the array parsed, and something follows it.
                let e = serde_path_to_error::deserialize::<_, Vec<Event>>(&mut de)
                    .err()
                    .ok_or_else(|| ApiError::bad(format!("invalid batch: {first}")))?;
                return Err(ApiError::field(
                    e.path().to_string(),
                    format!("invalid event: {}", e.inner()),
                ));
            }
        },
        Some(_) => {
            let mut out = Vec::new();
            // Lines found with memchr: a closure per byte was a sixth of the parse.
            let mut rest = body;
            let lines = std::iter::from_fn(|| {
                if rest.is_empty() {
                    return None;
                }
                let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
                let line = &rest[..end];
                rest = rest.get(end + 1..).unwrap_or_default();
                Some(line)
            });
            // The first event is watched; the others only if it had unknown fields.
            let mut watch = true;
            for (i, line) in lines.enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let parsed = quick(line, Watched(watch.then_some(&mut unknown)));
                watch = !unknown.is_empty();
                if let Ok(ev) = parsed {
                    out.push(ev);
                    continue;
                }
                let mut de = serde_json::Deserializer::from_slice(line);
                let ev: Event = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    let path = e.path().to_string();
                    let field = if path == "." {
                        format!("[{}]", out.len())
                    } else {
                        format!("[{}].{path}", out.len())
                    };
                    ApiError::field(
                        field,
                        format!("line {}: invalid event: {}", i + 1, e.inner()),
                    )
                })?;
                out.push(ev);
            }
            out
        }
    };
    if events.is_empty() {
        return Err(ApiError::bad("empty batch"));
    }
    if events.len() > MAX_EVENTS {
        return Err(ApiError::bad(format!(
            "{} events in one batch; at most {MAX_EVENTS}",
            events.len()
        )));
    }
    let batch = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            validate(&e)
                .map(|ts| (e, ts))
                .map_err(|(f, m)| ApiError::field(format!("[{i}].{f}"), m))
        })
        .collect::<Result<Batch, ApiError>>()?;
    Ok((batch, unknown))
}

type Invalid = (&'static str, String);

fn text(field: &'static str, v: &str, max: usize) -> Result<(), Invalid> {
    if v.is_empty() || v.len() > max {
        return Err((field, format!("must be 1 to {max} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err((field, "must not contain control characters".into()));
    }
    Ok(())
}

fn opt_text(field: &'static str, v: &Option<String>, max: usize) -> Result<(), Invalid> {
    v.as_deref().map_or(Ok(()), |v| text(field, v, max))
}

fn tokens(field: &'static str, v: Option<u64>) -> Result<(), Invalid> {
    match v {
        Some(n) if n > MAX_TOKENS => Err((field, format!("{n} is more than {MAX_TOKENS}"))),
        _ => Ok(()),
    }
}

fn millis(field: &'static str, v: Option<f64>) -> Result<(), Invalid> {
    match v {
        Some(x) if !x.is_finite() || !(0.0..=86_400_000.0 * 7.0).contains(&x) => {
            Err((field, format!("{x} is not a duration in milliseconds")))
        }
        _ => Ok(()),
    }
}

/// Check one event; returns its timestamp in Unix ms.
fn validate(e: &Event) -> Result<i64, Invalid> {
    text("request_id", &e.request_id, 128)?;
    let ts = parse_rfc3339_ms(&e.timestamp)
        .ok_or(("timestamp", "must be an RFC 3339 date-time".to_string()))?;
    text("provider", &e.provider, 64)?;
    text("api", &e.api, 64)?;
    text("endpoint", &e.endpoint, 1024)?;
    opt_text("model_requested", &e.model_requested, 256)?;
    opt_text("model_actual", &e.model_actual, 256)?;
    if let Some(s) = e.status {
        if !(100..=599).contains(&s) {
            return Err(("status", format!("{s} is not an HTTP status")));
        }
    }
    millis("latency_ms", Some(e.latency_ms))?;
    millis("ttfb_ms", e.ttfb_ms)?;
    tokens("input_tokens", e.input_tokens)?;
    tokens("output_tokens", e.output_tokens)?;
    tokens("cached_input_tokens", e.cached_input_tokens)?;
    tokens("cache_write_tokens", e.cache_write_tokens)?;
    tokens("reasoning_tokens", e.reasoning_tokens)?;
    tokens("measured_output_tokens", e.measured_output_tokens)?;
    tokens("cache_write_1h_tokens", e.cache_write_1h_tokens)?;
    tokens("web_search_requests", e.web_search_requests)?;
    if e.cache_write_1h_tokens.unwrap_or(0) > e.cache_write_tokens.unwrap_or(0) {
        return Err((
            "cache_write_1h_tokens",
            "hour-long cache writes are part of cache_write_tokens and cannot exceed it".into(),
        ));
    }
    opt_text("service_tier", &e.service_tier, 64)?;
    let cache = e
        .cached_input_tokens
        .unwrap_or(0)
        .saturating_add(e.cache_write_tokens.unwrap_or(0));
    if cache > 0 && cache > e.input_tokens.unwrap_or(0) {
        return Err((
            "cached_input_tokens",
            "cached and cache-written tokens are part of input_tokens and cannot exceed it".into(),
        ));
    }
    if e.reasoning_tokens.unwrap_or(0) > e.output_tokens.unwrap_or(0) {
        return Err((
            "reasoning_tokens",
            "reasoning tokens are part of output_tokens and cannot exceed it".into(),
        ));
    }
    if let Some(c) = e.cost_usd {
        if !c.is_finite() || c < 0.0 {
            return Err(("cost_usd", format!("{c} is not a cost")));
        }
    }
    opt_text("team", &e.team, 256)?;
    opt_text("app", &e.app, 256)?;
    opt_text("feature", &e.feature, 256)?;
    opt_text("task", &e.task, 256)?;
    opt_text("session_id", &e.session_id, 256)?;
    opt_text("user", &e.user, 256)?;
    opt_text("rule", &e.rule, 256)?;
    if e.rule
        .as_deref()
        .is_some_and(|r| !r.starts_with("rule:") && !r.starts_with("budget:"))
    {
        return Err(("rule", "must be rule:<name> or budget:<name>".into()));
    }
    opt_text("model_routed", &e.model_routed, 256)?;
    // Trace context: lower-case hex of the W3C lengths, nothing else.
    for (field, v, n) in [("trace_id", &e.trace_id, 32), ("span_id", &e.span_id, 16)] {
        if v.as_deref().is_some_and(|v| {
            v.len() != n
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }) {
            return Err((field, format!("must be {n} lower-case hex digits")));
        }
    }
    opt_text("namespace", &e.namespace, 256)?;
    opt_text("workload", &e.workload, 256)?;
    opt_text("principal", &e.principal, 1024)?;
    opt_text("org_id", &e.org_id, 64)?;
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_json(extra: &str) -> String {
        format!(
            r#"{{"request_id":"r1","timestamp":"2026-11-24T08:00:00.000Z","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"gpt-4o-mini","model_actual":null,"status":200,"streaming":false,"latency_ms":12.5,"ttfb_ms":3.0,"input_tokens":10,"output_tokens":5,"cached_input_tokens":0,"cache_write_tokens":0,"reasoning_tokens":0,"token_source":"exact","cost_usd":0.0001,"error_category":null,"error_source":null,"team":null,"app":null,"feature":null,"task":null,"session_id":null,"user":null,"rule":null,"routed":false{extra}}}"#
        )
    }

    #[test]
    fn array_and_ndjson() {
        let one = event_json("");
        assert_eq!(parse(format!("[{one},{one}]").as_bytes()).unwrap().len(), 2);
        assert_eq!(
            parse(format!("{one}\n\n{one}\n").as_bytes()).unwrap().len(),
            2
        );
    }

    fn field_of(body: &str) -> String {
        match parse(body.as_bytes()).unwrap_err() {
            ApiError::BadRequest { field, .. } => field.unwrap_or_default(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_found_from_the_first_event_and_counted_over_the_batch() {
        let known = event_json("");
        let newer = event_json(r#","future_field":1,"later":{"a":[1]}"#);
        let tally = |body: String| parse_counting(body.as_bytes()).unwrap().1 .0;
        let want = |n: u64| vec![("future_field".to_string(), n), ("later".to_string(), n)];
        assert_eq!(tally(format!("[{newer},{newer},{known}]")), want(2));
        assert_eq!(tally(format!("{newer}\n\n{known}\n{newer}\n")), want(2));
        // A key twice in one event counts once.
        let twice = event_json(r#","future_field":1,"future_field":2"#);
        assert_eq!(
            tally(format!("[{twice}]")),
            vec![("future_field".to_string(), 1)]
        );
        // Only the first event is looked at: when it has none, nothing is counted.
        assert!(tally(format!("[{known},{newer}]")).is_empty());
        assert!(tally(format!("{known}\n{newer}")).is_empty());
        // Known fields nested or not are not unknown; the events parse alike either way.
        let (plain, _) = parse_counting(format!("[{known}]").as_bytes()).unwrap();
        let (watched, _) = parse_counting(format!("[{newer}]").as_bytes()).unwrap();
        assert_eq!(plain, watched);
        // A bad batch is still refused with its field named.
        let bad = newer.replace(r#""input_tokens":10"#, r#""input_tokens":"ten""#);
        assert_eq!(field_of(&format!("[{newer},{bad}]")), "[1].input_tokens");
    }

    #[test]
    fn errors_name_the_field() {
        let good = event_json("");
        let bad_type = good.replace(r#""input_tokens":10"#, r#""input_tokens":"ten""#);
        assert_eq!(
            field_of(&format!("[{good},{bad_type}]")),
            "[1].input_tokens"
        );
        assert_eq!(field_of(&format!("{good}\n{bad_type}")), "[1].input_tokens");
        // Bytes that are not UTF-8 are found where they are.
        let latin1 = good.replace(r#""team":null"#, "\"team\":\"caf\u{FFFD}\"");
        let mut raw = format!("[{latin1}]").into_bytes();
        let at = raw
            .windows(3)
            .position(|w| w == "\u{FFFD}".as_bytes())
            .unwrap();
        raw.splice(at..at + 3, [0xE9]);
        match parse(&raw) {
            Err(ApiError::BadRequest { field, .. }) => {
                assert_eq!(field.as_deref(), Some("[0].team"))
            }
            other => panic!("{other:?}"),
        }
        // Blank lines are skipped, yet counted in the line number.
        match parse(format!("\n{good}\r\n\n{bad_type}\n").as_bytes()) {
            Err(ApiError::BadRequest { message, field }) => {
                assert!(message.starts_with("line 4: "), "{message}");
                assert_eq!(field.as_deref(), Some("[1].input_tokens"));
            }
            other => panic!("{other:?}"),
        }
        let missing = good.replace(r#""provider":"openai","#, "");
        assert!(field_of(&format!("[{missing}]")).starts_with("[0]"));
        let bad_ts = good.replace("2026-11-24T08:00:00.000Z", "yesterday");
        assert_eq!(field_of(&format!("[{bad_ts}]")), "[0].timestamp");
        let too_cached = good.replace(r#""cached_input_tokens":0"#, r#""cached_input_tokens":11"#);
        assert_eq!(
            field_of(&format!("[{too_cached}]")),
            "[0].cached_input_tokens"
        );
        let bad_cat = good.replace(r#""error_category":null"#, r#""error_category":"oops""#);
        assert_eq!(field_of(&format!("[{bad_cat}]")), "[0].error_category");
        let neg = good.replace(r#""output_tokens":5"#, r#""output_tokens":-5"#);
        assert_eq!(field_of(&format!("[{neg}]")), "[0].output_tokens");
        assert!(matches!(
            parse(format!("[{good}] x").as_bytes()),
            Err(ApiError::BadRequest { field: None, .. })
        ));
        assert!(parse(b"  ").is_err());
        assert!(parse(b"[]").is_err());
    }
}
