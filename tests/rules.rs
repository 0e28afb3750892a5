//! Rules and budgets through the exchange, natively: the hold, the rewrite byte for byte beside
//! the streaming-usage insertion, refusals, the cap, signed requests, and the event's fields.

use tally::config::Config;
use tally::event::{ErrorCategory, ErrorSource, Event};
use tally::exchange::{begin, BodyStep, Exchange, Finish, HeadersStep};
use tally::measure::Tokenizers;
use tally::rules::{self, Budget, Ledger, Refusal};

const KEY: &str = "tly_0123456789abcdefghijABCDEFGHIJ0123456789";

/// Budgets act as the collector says, in these tests.
struct Collector;
impl Ledger for Collector {
    fn acting(&mut self, _: usize, b: &Budget) -> bool {
        b.exceeded
    }
}

fn cfg(rules: &str, hold: usize) -> Config {
    let json = format!(r#"{{"rules":{rules},"model_hold_bytes":{hold}}}"#);
    Config::parse(json.as_bytes(), Some(KEY.into())).unwrap()
}

fn start(cfg: &Config, path: &str, extra: &[(&str, &str)]) -> (Exchange, HeadersStep) {
    let mut headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":path", path),
        (":authority", "api.openai.com"),
        ("authorization", "Bearer sk-canary-key"),
        ("x-tally-team", "web"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let b = begin(cfg, &headers, 1_000.0);
    let mut ex = b.exchange.expect("metered");
    let step = rules::decide(
        &cfg.rules,
        &[],
        &mut Collector,
        &ex.facts(ex.model_at_headers()),
    );
    let h = ex.at_headers(step, cfg.model_hold_bytes);
    (ex, h)
}

/// Feed `body` in chunks of `size`; what went upstream, and the refusal if one came.
fn feed(ex: &mut Exchange, cfg: &Config, body: &[u8], size: usize) -> (Vec<u8>, Option<Refusal>) {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = body.chunks(size.max(1)).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        match ex.on_request_chunk(c, last, &mut |f| {
            rules::decide(&cfg.rules, &[], &mut Collector, f)
        }) {
            BodyStep::Pass => out.extend_from_slice(c),
            BodyStep::Replace(b) => out.extend(b),
            BodyStep::Refuse(why) => return (out, Some(why)),
        }
    }
    (out, None)
}

fn finish(ex: Exchange, status: u16) -> Event {
    if ex.acted().refused.is_none() {
        // A response as the mock gives it.
    }
    let mut ex = ex;
    if ex.acted().refused.is_none() {
        ex.on_response_headers(Some(status), Some("application/json"), None, 1_010.0);
        ex.on_response_body(
            br#"{"model":"gpt-4o-mini-2024-07-18","usage":{"prompt_tokens":10,"completion_tokens":2}}"#,
            true,
        );
    }
    ex.finish(
        Finish {
            now_unix_ms: 1_050.0,
            request_id: "r".into(),
            code_details: None,
            final_status: None,
        },
        &mut Tokenizers::default(),
    )
    .0
}

/// The official OpenAI Python SDK sends `messages` before `model`.
fn sdk_body(prompt_bytes: usize, model: &str, stream: bool) -> Vec<u8> {
    let prompt = "canary-prompt ".repeat(prompt_bytes / 14 + 1);
    format!(
        r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"model":"{model}","stream":{stream}}}"#
    )
    .into_bytes()
}

#[test]
fn a_rewrite_changes_only_the_model_holds_only_its_value_and_keeps_the_usage_insertion() {
    let cfg = cfg(
        r#"[{"name":"cheap","match":{"model":"gpt-4o"},"rewrite_model":"gpt-4o-mini"}]"#,
        4096,
    );
    let body = sdk_body(200_000, "gpt-4o", true);
    let want = String::from_utf8(body.clone())
        .unwrap()
        .replace(r#""model":"gpt-4o""#, r#""model":"gpt-4o-mini""#)
        .replace(
            r#""stream":true}"#,
            r#""stream":true,"stream_options":{"include_usage":true}}"#,
        );
    for size in [1, 7, 4096, 16_384, 65_536, body.len()] {
        let (mut ex, h) = start(&cfg, "/v1/chat/completions", &[]);
        assert_eq!(
            h,
            HeadersStep::Go {
                route: None,
                body_may_change: true
            }
        );
        let (out, refused) = feed(&mut ex, &cfg, &body, size);
        assert_eq!(refused, None);
        same(&out, want.as_bytes(), &format!("chunks of {size}"));
        // Held from one chunk to the next: at most the model's value ("gpt-4o" quoted).
        assert!(ex.held_max() <= 8, "{size}: held {}", ex.held_max());
        let e = finish(ex, 200);
        assert_eq!(e.model_requested.as_deref(), Some("gpt-4o"));
        assert_eq!(e.model_routed.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(e.rule.as_deref(), Some("rule:cheap"));
        assert!(e.routed && !e.shadow);
    }
    // Another model: the body passes untouched (apart from the usage insertion).
    let (mut ex, _) = start(&cfg, "/v1/chat/completions", &[]);
    let body = sdk_body(1000, "gpt-4.1", false);
    let (out, _) = feed(&mut ex, &cfg, &body, 333);
    assert_eq!(out, body);
    let e = finish(ex, 200);
    assert_eq!((e.rule, e.routed, e.model_routed), (None, false, None));
}

#[test]
fn a_block_on_the_model_holds_the_whole_body_and_nothing_goes_upstream() {
    let cfg = cfg(
        r#"[{"name":"no-o1","match":{"model":"o1*"},"block":true}]"#,
        1 << 20,
    );
    let body = sdk_body(300_000, "o1-preview", false);
    let (mut ex, h) = start(&cfg, "/v1/chat/completions", &[]);
    assert!(matches!(h, HeadersStep::Go { .. }));
    let (out, refused) = feed(&mut ex, &cfg, &body, 16_384);
    assert!(out.is_empty(), "{} bytes went upstream", out.len());
    assert_eq!(refused, Some(Refusal::Rule("rule:no-o1".into())));
    let e = finish(ex, 0);
    assert_eq!(e.status, Some(403));
    assert_eq!(e.error_category, Some(ErrorCategory::Blocked));
    assert_eq!(e.error_source, Some(ErrorSource::Proxy));
    assert_eq!(e.rule.as_deref(), Some("rule:no-o1"));
    // Another model: held until the model, then everything goes, unchanged.
    let (mut ex, _) = start(&cfg, "/v1/chat/completions", &[]);
    let body = sdk_body(300_000, "gpt-4o", false);
    let (out, refused) = feed(&mut ex, &cfg, &body, 16_384);
    assert_eq!((out, refused), (body.clone(), None));
    assert!(ex.held_max() >= 300_000 - 16_384, "held {}", ex.held_max());
}

#[test]
fn past_the_cap_over_cap_decides_pass_or_refuse_never_413() {
    let body = sdk_body(100_000, "o1-preview", false);
    for (over_cap, refused) in [("pass", false), ("refuse", true)] {
        let cfg = cfg(
            &format!(
                r#"[{{"name":"no-o1","match":{{"model":"o1*"}},"block":true,"over_cap":"{over_cap}"}}]"#
            ),
            8192,
        );
        let (mut ex, _) = start(&cfg, "/v1/chat/completions", &[]);
        let (out, why) = feed(&mut ex, &cfg, &body, 4096);
        assert!(ex.held_max() <= 8192 + 4096, "held {}", ex.held_max());
        if refused {
            assert_eq!(why, Some(Refusal::OverCap("rule:no-o1".into())));
            assert!(out.is_empty());
            let e = finish(ex, 0);
            assert_eq!(
                (e.status, e.error_category),
                (Some(403), Some(ErrorCategory::Blocked))
            );
        } else {
            // Passed, unchanged, and said so; the model that came later is not checked.
            assert_eq!((out, why), (body.clone(), None));
            assert!(ex.acted().passed_over_cap);
            let e = finish(ex, 200);
            assert_eq!(e.rule, None);
        }
    }
}

#[test]
fn a_signed_body_is_never_rewritten_and_the_skip_is_counted() {
    let cfg = cfg(
        r#"[{"name":"cheap","match":{"model":"gpt-4o"},"rewrite_model":"gpt-4o-mini"}]"#,
        4096,
    );
    let sig = "AWS4-HMAC-SHA256 Credential=AKID/20261201/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=ab";
    let (mut ex, h) = start(&cfg, "/v1/chat/completions", &[("authorization", sig)]);
    assert!(matches!(
        h,
        HeadersStep::Go {
            body_may_change: false,
            ..
        }
    ));
    let body = sdk_body(1000, "gpt-4o", true);
    let (out, _) = feed(&mut ex, &cfg, &body, 100);
    assert_eq!(out, body, "byte for byte");
    assert!(ex.acted().rewrite_skipped);
    let e = finish(ex, 200);
    assert_eq!((e.rule, e.routed), (None, false));
}

#[test]
fn header_rules_decide_at_the_headers_and_budgets_block_in_the_providers_format() {
    let cfg = cfg(
        r#"[{"name":"web-local","match":{"team":"web"},"route":"local-vllm"}]"#,
        4096,
    );
    let (ex, h) = start(&cfg, "/v1/chat/completions", &[]);
    assert_eq!(
        h,
        HeadersStep::Go {
            route: Some("local-vllm".into()),
            body_may_change: false
        }
    );
    let e = finish(ex, 200);
    assert_eq!(
        (e.rule.as_deref(), e.routed),
        (Some("rule:web-local"), true)
    );

    // A budget at its limit refuses with 429 and says when to come back.
    let set = tally::budgets::BudgetSet::parse(
        br#"{"budgets":[{"org_id":"acme","name":"web-month","scope":{"team":"web"},"action":"block","state":"exceeded","period_start_ms":0,"period_end_ms":3600000,"share_usd":0,"confirmed_requests":0,"estimate_usd":0.01}]}"#,
    )
    .unwrap();
    let budgets = set.for_org(None).unwrap();
    let cfg = cfg_plain();
    let headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":path", "/v1/messages"),
        (":authority", "api.anthropic.com"),
        ("x-tally-team", "web"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut ex = begin(&cfg, &headers, 1_000.0).exchange.unwrap();
    let step = rules::decide(
        &cfg.rules,
        &budgets,
        &mut Collector,
        &ex.facts(ex.model_at_headers()),
    );
    let HeadersStep::Refuse(why) = ex.at_headers(step, 4096) else {
        panic!("not refused")
    };
    // Half an hour before the period's end.
    let (status, headers, body) = rules::refusal_response(ex.api(), &why, 1_800_000);
    assert_eq!(status, 429);
    assert!(headers.contains(&("retry-after", "1800".to_string())));
    assert!(headers.contains(&("x-should-retry", "false".to_string())));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let e = finish(ex, 0);
    assert_eq!(e.status, Some(429));
    assert_eq!(e.error_category, Some(ErrorCategory::BudgetExceeded));
    assert_eq!(e.error_source, Some(ErrorSource::Proxy));
    assert_eq!(e.rule.as_deref(), Some("budget:web-month"));
}

/// Equal, or a failure that shows where they part (bodies here are large).
fn same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 60).min(b.len())]).into_owned()
    };
    panic!(
        "{what}: {} bytes against {}, first difference at {at}:\n got  {}\n want {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

fn cfg_plain() -> Config {
    Config::parse(b"", Some(KEY.into())).unwrap()
}

#[test]
fn a_rewrite_after_a_whole_body_hold_changes_the_model() {
    let cfg = cfg(
        r#"[{"name":"no-o1","match":{"model":"o1*"},"block":true},
            {"name":"cheap","match":{"model":"gpt-4o"},"rewrite_model":"gpt-4o-mini"}]"#,
        65536,
    );
    let body = sdk_body(50_000, "gpt-4o", false);
    let want = String::from_utf8(body.clone())
        .unwrap()
        .replace(r#""model":"gpt-4o""#, r#""model":"gpt-4o-mini""#);
    for size in [1000, 16_384, body.len()] {
        let (mut ex, _) = start(&cfg, "/v1/chat/completions", &[]);
        let (out, refused) = feed(&mut ex, &cfg, &body, size);
        assert_eq!(refused, None);
        same(&out, want.as_bytes(), &format!("chunks of {size}"));
    }
}

#[test]
fn a_model_given_twice_is_decided_on_each_value_as_providers_read_the_last() {
    let block = cfg(
        r#"[{"name":"no-o1","match":{"model":"o1*"},"block":true}]"#,
        4096,
    );
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"canary-prompt"}],"model":"o1-pro"}"#;
    for size in [7, 40, body.len()] {
        let (mut ex, _) = start(&block, "/v1/chat/completions", &[]);
        let (_, refused) = feed(&mut ex, &block, body, size);
        assert_eq!(
            refused,
            Some(Refusal::Rule("rule:no-o1".into())),
            "chunks of {size}"
        );
    }
    let rewrite = cfg(
        r#"[{"name":"cheap","match":{"model":"gpt-4o"},"rewrite_model":"gpt-4o-mini"}]"#,
        4096,
    );
    let body = br#"{"model":"gpt-4o","messages":[],"model":"gpt-4.1"}"#;
    let (mut ex, _) = start(&rewrite, "/v1/chat/completions", &[]);
    let (out, _) = feed(&mut ex, &rewrite, body, 20);
    // The first value was rewritten, but the last one, which counts, is not the rule's.
    assert!(
        out.ends_with(br#""model":"gpt-4.1"}"#),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let e = finish(ex, 200);
    assert_eq!(
        (e.model_routed, e.model_requested.as_deref()),
        (None, Some("gpt-4.1"))
    );
}

#[test]
fn a_model_that_begins_within_the_cap_is_waited_for_whatever_the_chunking() {
    let cfg = cfg(
        r#"[{"name":"no-o1","match":{"model":"o1*"},"block":true,"over_cap":"pass"}]"#,
        1024,
    );
    let pad = "p".repeat(1000);
    let body =
        format!(r#"{{"messages":"{pad}","model":"o1-preview-2024-09-12-with-a-long-name"}}"#);
    let start_at = body.find("\"o1-").unwrap();
    assert!(start_at < 1024 && body.len() > 1030);
    // Cut inside the model's value, past the cap, and not at all.
    for size in [1030, body.len()] {
        let (mut ex, _) = start(&cfg, "/v1/chat/completions", &[]);
        let (out, refused) = feed(&mut ex, &cfg, body.as_bytes(), size);
        assert_eq!(
            refused,
            Some(Refusal::Rule("rule:no-o1".into())),
            "chunks of {size}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn a_block_budget_at_its_limit_holds_the_body_while_a_rewrite_rule_waits_for_the_model() {
    let cfg = cfg(
        r#"[{"name":"cheap","match":{"model":"gpt-4o"},"rewrite_model":"gpt-4o-mini"}]"#,
        65536,
    );
    let set = tally::budgets::BudgetSet::parse(
        br#"{"budgets":[{"org_id":"acme","name":"web","scope":{"team":"web"},"action":"block","state":"exceeded","period_start_ms":0,"period_end_ms":3600000,"share_usd":0,"confirmed_requests":0,"estimate_usd":0.01}]}"#,
    )
    .unwrap();
    let budgets = set.for_org(None).unwrap();
    let (ex, _) = start(&cfg, "/v1/chat/completions", &[]);
    let step = rules::decide(
        &cfg.rules,
        &budgets,
        &mut Collector,
        &ex.facts(ex.model_at_headers()),
    );
    assert_eq!(
        step,
        rules::Step::Wait {
            hold_all: true,
            route: None
        },
        "the block stands unless the model's rule acts first: nothing may go upstream before"
    );
}
