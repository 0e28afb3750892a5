//! Parsing and validating an ingest batch: a JSON array of events or NDJSON, all or nothing.
//! The first bad event stops the batch with an error that names the field (`[3].input_tokens`).

use crate::error::ApiError;
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
fn quick<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

pub fn parse(body: &[u8]) -> Result<Batch, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let events: Vec<Event> = match first {
        None => {
            return Err(ApiError::bad(
                "empty batch: send a JSON array or NDJSON of events",
            ))
        }
        // Plain serde_json first: tracking the path costs a third of the parse, and only a
        // batch that fails needs it, parsed again to name the field.
        Some(b'[') => match quick(body) {
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
            for (i, line) in lines.enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Ok(ev) = quick::<Event>(line) {
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
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            validate(&e)
                .map(|ts| (e, ts))
                .map_err(|(f, m)| ApiError::field(format!("[{i}].{f}"), m))
        })
        .collect()
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
