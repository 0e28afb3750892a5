use super::dest::{classify, parse, DestError};
use super::*;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

#[test]
fn alerts_hmac_matches_an_independent_vector() {
    // python3 -c "import hmac,hashlib; print(hmac.new(
    //   b'whsec_0123456789abcdefghijABCDEFGHIJ0123456789',
    //   b'1700000000.{\"text\":\"hi\"}', hashlib.sha256).hexdigest())"
    assert_eq!(
        sign(
            "whsec_0123456789abcdefghijABCDEFGHIJ0123456789",
            1_700_000_000,
            br#"{"text":"hi"}"#
        ),
        "ee8ace1c7ace6e915e9f1a1e76292f5a7eef7043fc4b409174aa3622680c88c4"
    );
}

#[test]
fn alerts_backoff_is_exponential_and_bounded() {
    let c = Config::default();
    let waits: Vec<i64> = (1..c.attempts).map(|n| c.backoff_ms(n)).collect();
    assert_eq!(waits, [5_000, 15_000, 45_000, 135_000, 405_000]);
    // Six attempts over about ten minutes.
    assert_eq!(waits.iter().sum::<i64>(), 605_000);
    assert_eq!(c.backoff_ms(200), i64::MAX);
}

#[test]
fn alerts_destinations_refused_unless_allowed() {
    for (ip, what) in [
        ("127.0.0.1", Some("loopback")),
        ("10.1.2.3", Some("private")),
        ("172.16.0.1", Some("private")),
        ("172.32.0.1", None),
        ("192.168.1.1", Some("private")),
        ("100.64.0.1", Some("carrier-grade NAT")),
        ("169.254.169.254", Some("cloud metadata")),
        ("169.254.1.1", Some("link-local")),
        ("0.0.0.0", Some("unspecified")),
        ("224.0.0.1", Some("multicast")),
        ("255.255.255.255", Some("reserved")),
        ("8.8.8.8", None),
        ("::1", Some("loopback")),
        ("::", Some("unspecified")),
        ("fd00:ec2::254", Some("private")),
        ("fe80::1", Some("link-local")),
        ("ff02::1", Some("multicast")),
        ("::ffff:127.0.0.1", Some("loopback")),
        ("::ffff:169.254.169.254", Some("cloud metadata")),
        ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
        ("2002:0a00:0001::", Some("private")),
        ("2606:4700::1111", None),
    ] {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        assert_eq!(classify(ip), what, "{ip}");
    }
    let t = |u: &str| parse(u).expect(u);
    let strict = Policy::default();
    let quick = std::time::Duration::from_secs(2);
    for url in [
        "http://127.0.0.1:9/x",
        "http://[::1]/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./x",
        "http://localhost:8080/x",
        "http://svc.localhost/x",
        "http://[::ffff:7f00:1]/x",
    ] {
        assert!(
            matches!(strict.resolve(&t(url), quick), Err(DestError::Refused(_))),
            "{url}"
        );
    }
    // A public address literal needs no lookup and passes.
    assert!(strict.resolve(&t("https://8.8.8.8/hook"), quick).is_ok());
    let private = strict.with_private(true);
    assert!(private.resolve(&t("http://127.0.0.1:9/x"), quick).is_ok());
    assert!(private.resolve(&t("http://10.0.0.1/x"), quick).is_ok());
    // Link-local and metadata stay refused with --alert-allow-private...
    for url in [
        "http://169.254.169.254/",
        "http://metadata.google.internal/",
        "http://[fe80::1]/",
    ] {
        assert!(
            matches!(private.resolve(&t(url), quick), Err(DestError::Refused(_))),
            "{url}"
        );
    }
    // ...unless the operator names the host (and port, if given).
    let named = Policy {
        allow_private: false,
        allow_hosts: vec![parse_allow_host("127.0.0.1:9").expect("host")],
    };
    assert!(named.resolve(&t("http://127.0.0.1:9/x"), quick).is_ok());
    assert!(named.resolve(&t("http://127.0.0.1:10/x"), quick).is_err());
    assert_eq!(
        parse_allow_host("[::1]:8080"),
        Ok(("::1".to_string(), Some(8080)))
    );
    assert_eq!(
        parse_allow_host("Hooks.Example.com"),
        Ok(("hooks.example.com".to_string(), None))
    );
    for bad in [
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "/relative",
        "not a url",
        "file:///etc/passwd",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    // Errors never repeat the URL's path or query.
    let e = parse("gopher://example.com/services/T000/B000/SECRETPATH").unwrap_err();
    assert!(!e.contains("SECRETPATH"), "{e}");
    let e = strict
        .resolve(&t("http://10.0.0.1/services/SECRETPATH?token=x"), quick)
        .unwrap_err()
        .to_string();
    assert!(!e.contains("SECRETPATH") && !e.contains("token"), "{e}");
    assert_eq!(
        dest::shown("https://hooks.slack.com/services/T0/B0/XYZ"),
        "https://hooks.slack.com/…"
    );
}

#[test]
fn alerts_payloads_lose_secret_shaped_strings() {
    let key = crate::keys::generate();
    let token = crate::keys::generate_token();
    let text = format!(
        r#"{{"a":"{key}","b":"x {token} y","c":"sk-proj-abcdefghijklmnopqrstuvwxyz","d":"tly_short","e":"é"}}"#
    );
    let out = redact(&text);
    assert!(!out.contains(&key) && !out.contains(&token) && !out.contains("sk-proj"));
    assert!(out.contains("tly_short") && out.contains("x [redacted] y") && out.contains('é'));
    assert_eq!(redact("plain"), "plain");
}

/// Seeded hourly spend over `weeks`: a working-day curve (a 09:00–19:00 bump), weekends at a
/// quarter, night hours near zero, multiplicative log-normal noise of σ = `sigma`.
fn diurnal(seed: u64, weeks: usize, peak_usd: f64, sigma: f64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..weeks * 7 * 24)
        .map(|h| {
            let hour = (h % 24) as f64;
            let weekend = (h / 24) % 7 >= 5;
            let day = if (9.0..19.0).contains(&hour) {
                (std::f64::consts::PI * (hour - 9.0) / 10.0).sin().max(0.15)
            } else {
                0.02
            };
            let level = peak_usd * day * if weekend { 0.25 } else { 1.0 };
            // Box-Muller: a standard normal from two uniforms.
            let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            level * (sigma * z).exp()
        })
        .collect()
}

/// Hours of `series` the test calls anomalous, each hour compared with the week before it.
fn alarms(a: &Anomaly, series: &[f64]) -> Vec<usize> {
    (0..series.len())
        .filter(|&h| {
            let from = h.saturating_sub(a.window_hours);
            let history: Vec<f64> = series[from..h].iter().rev().copied().collect();
            a.test(&history, series[h]).1
        })
        .collect()
}

#[test]
fn alerts_anomaly_false_alarms_on_seeded_spend_and_one_spike() {
    let a = Anomaly::default();
    // 50 orgs' worth of 4 weeks, peaks from $10 to $500 an hour; half with noise of σ 0.3
    // (an hour commonly 35 % off its usual), half with σ 0.5 (65 % off).
    let mut evaluated = [0usize; 2];
    let mut false_alarms = [0usize; 2];
    for seed in 0..50u64 {
        let peak = 10.0 * (1.0 + seed as f64);
        let noisy = (seed % 2) as usize;
        let s = diurnal(seed, 4, peak, [0.3, 0.5][noisy]);
        evaluated[noisy] += s.len() - a.min_history_hours;
        false_alarms[noisy] += alarms(&a, &s).len();
    }
    println!(
        "anomaly: σ 0.3: {} false alarms in {} hours; σ 0.5: {} in {}",
        false_alarms[0], evaluated[0], false_alarms[1], evaluated[1]
    );
    assert_eq!(evaluated, [25 * (672 - 72); 2]);
    // Measured (README, "Alerts"): 0 in 15 000 hours at σ 0.3, 5 in 15 000 at σ 0.5 (hours 3
    // to 4 times their usual peak, which such noise does make now and then).
    assert_eq!(false_alarms[0], 0);
    assert!(false_alarms[1] <= 5, "{false_alarms:?}");

    // One hour at 5 times the usual peak, a Tuesday at 14:00 of week 3: exactly that hour.
    let mut s = diurnal(7, 4, 100.0, 0.3);
    let spike = 2 * 168 + 24 + 14;
    s[spike] = 500.0;
    assert_eq!(alarms(&a, &s), [spike]);
    // Too little history: nothing, however large.
    let mut young = diurnal(8, 1, 100.0, 0.3);
    young[40] = 10_000.0;
    assert!(alarms(&a, &young[..48]).is_empty());
    // Under the floor: nothing.
    let tiny = diurnal(9, 2, 0.5, 0.3);
    let mut tiny2 = tiny.clone();
    tiny2[300] = 4.0;
    assert!(alarms(&a, &tiny2).is_empty());
}

/// A store with one org, in a directory of its own.
fn store(name: &str) -> (crate::store::tests::TempDir, i64) {
    let dir = crate::store::tests::temp_dir(name);
    let _ = std::fs::remove_dir_all(&*dir);
    let s = crate::store::tests::test_store(&dir);
    s.create_org("acme", 0).expect("org");
    let id = s.org_id("acme").expect("id");
    (dir, id)
}

/// A rollup row (granularity, bucket, dimension, key) set to these figures, replacing the one
/// there (on PostgreSQL, the row of the replica named '').
fn put_row(
    conn: &mut Conn,
    org: i64,
    (g, bucket, dim, key): (i64, i64, &str, &str),
    requests: i64,
    cost: f64,
    unpriced: i64,
) {
    let (column, value) = match conn.backend() {
        crate::db::Backend::Sqlite => ("", ""),
        crate::db::Backend::Postgres => (", replica", ", ''"),
    };
    conn.execute(
        &format!(
            "INSERT INTO rollups (org_id, granularity_ms, bucket_ms, dim, key, requests, errors,
                input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb,
                unpriced_requests{column})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, 0, ?7, 0, ?9, ?9, ?8{value})
             ON CONFLICT (org_id, granularity_ms, dim, key, bucket_ms{column}) DO UPDATE SET
                requests = excluded.requests, cost_usd = excluded.cost_usd,
                unpriced_requests = excluded.unpriced_requests"
        ),
        // Empty sketches as a value: a blob literal is written differently on each backend.
        values![
            org,
            g,
            bucket,
            dim,
            key,
            requests,
            cost,
            unpriced,
            Vec::<u8>::new()
        ],
    )
    .expect("row");
}

#[test]
fn alerts_detectors_raise_each_finding_once() {
    let (dir, org) = store("alerts-detect");
    let s = crate::store::tests::test_store(&dir);
    let mut conn = s.open_writer().expect("conn");
    let hour = crate::rollup::HOUR;
    let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a Thursday
    let series = diurnal(11, 4, 100.0, 0.3);
    let spike = 3 * 168 + 14;
    let row = |conn: &mut Conn, h: i64, dim: &str, key: &str, cost: f64, unpriced: i64| {
        put_row(
            conn,
            org,
            (hour, t0 + h * hour, dim, key),
            1,
            cost,
            unpriced,
        );
    };
    let mut raised = 0;
    for (h, spend) in series.iter().enumerate() {
        let spend = if h == spike { 600.0 } else { *spend };
        row(&mut conn, h as i64, "all", "", spend, 0);
        // Twice an hour, as the minute-by-minute runs would.
        for at in [hour / 2, hour - 1] {
            raised +=
                detect(&mut conn, &Anomaly::default(), t0 + h as i64 * hour + at).expect("detect");
        }
    }
    let anomalies: Vec<String> = conn
        .query_map(
            "SELECT dedupe_key FROM alert_events WHERE kind = 'anomaly'",
            &[],
            |r| r.get(0),
        )
        .expect("read");
    assert_eq!(
        anomalies,
        [format!(
            "anomaly:{}",
            tally::time::format_rfc3339_ms(t0 + spike as i64 * hour)
        )]
    );
    assert_eq!(raised, 1);

    // An unpriced model: once per day, whatever its count does meanwhile.
    let now = t0 + 672 * hour;
    let day = now.div_euclid(crate::rollup::DAY) * crate::rollup::DAY;
    let unpriced = |conn: &mut Conn, n: i64| {
        let row = (crate::rollup::DAY, day, "provider_model", "openai/gpt-new");
        put_row(conn, org, row, n, 0.0, n);
    };
    unpriced(&mut conn, 3);
    assert_eq!(
        detect(&mut conn, &Anomaly::default(), now).expect("detect"),
        1
    );
    unpriced(&mut conn, 9);
    assert_eq!(
        detect(&mut conn, &Anomaly::default(), now + 60_000).expect("detect"),
        0
    );

    // Dropped events: once per hour, with the count first seen.
    add_dropped(&mut conn, &[org], 7, now).expect("dropped");
    assert_eq!(
        detect(&mut conn, &Anomaly::default(), now + 120_000).expect("detect"),
        1
    );
    add_dropped(&mut conn, &[org], 5, now + 1).expect("dropped");
    assert_eq!(
        detect(&mut conn, &Anomaly::default(), now + 180_000).expect("detect"),
        0
    );
    let payload: String = conn
        .value(
            "SELECT payload FROM alert_events WHERE kind = 'events_dropped'",
            &[],
        )
        .expect("event");
    assert!(payload.contains("\"dropped\":7"), "{payload}");
}

/// What a receiver saw: the request head and body.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A local webhook receiver: answers each request with the next status of `statuses` (then 200).
fn receiver(statuses: Vec<u16>) -> (u16, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let (head, body) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::from_utf8_lossy(&buf).to_string(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < i + 4 + len {
                        let n = s.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (head, String::from_utf8_lossy(&buf[i + 4..]).to_string());
                }
            };
            log.lock().expect("log").push((head, body));
            let status = statuses.next().unwrap_or(200);
            let _ = s.write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    .as_bytes(),
            );
        }
    });
    (port, seen)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Deliveries of the store's alerts: (hook, attempt, status, outcome), in order.
fn deliveries(conn: &mut Conn) -> Vec<(String, i64, Option<i64>, String)> {
    conn.query_map(
        "SELECT hook_name, attempt, status_code, outcome FROM alert_deliveries ORDER BY id",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .expect("deliveries")
}

#[test]
fn alerts_deliveries_are_signed_retried_recorded_and_never_sent_twice() {
    let (dir, org) = store("alerts-deliver");
    let (port, seen) = receiver(vec![500]);
    // Loopback, allowed explicitly for the test.
    let config = Config {
        policy: Policy {
            allow_private: false,
            allow_hosts: vec![("127.0.0.1".into(), Some(port))],
        },
        retry_base_ms: 50,
        ..Default::default()
    };
    let client = Client::new(config.connect_timeout, config.call_timeout).expect("client");
    let url = format!("http://127.0.0.1:{port}/hooks/T0/B0/path-token?x=1");
    let secret = {
        let s = crate::store::tests::test_store(&dir);
        let mut conn = s.open_writer().expect("conn");
        // Refused without the operator's leave.
        let refused = add_hook(
            &mut conn,
            org,
            "ops",
            &url,
            None,
            false,
            &Policy::default(),
            0,
        );
        assert!(
            matches!(refused, Err(AlertError::Field("url", _))),
            "{refused:?}"
        );
        let secret =
            add_hook(&mut conn, org, "ops", &url, None, false, &config.policy, 1).expect("hook");
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == SECRET_PREFIX.len() + 40);
        assert!(matches!(
            add_hook(&mut conn, org, "ops", &url, None, false, &config.policy, 1),
            Err(AlertError::Duplicate(_))
        ));
        // A hook for other kinds only gets nothing of this one.
        add_hook(
            &mut conn,
            org,
            "anomalies",
            &url,
            Some(&["anomaly".to_string()]),
            false,
            &config.policy,
            1,
        )
        .expect("hook");
        let payload = json!({"budget": "daily", "scope": {"team": "search"}, "period": "day",
            "limit_usd": 100.0, "spend_usd": 101.5, "warn_at": 0.8, "action": "block"});
        assert!(record(
            &mut conn,
            org,
            "budget_limit",
            "budget:1:0:limit",
            &payload,
            2
        )
        .expect("rec"));
        assert!(!record(
            &mut conn,
            org,
            "budget_limit",
            "budget:1:0:limit",
            &payload,
            3
        )
        .expect("rec"));
        // The first attempt gets a 500.
        assert_eq!(
            deliver_due(&mut conn, &client, &config).expect("deliver"),
            1
        );
        secret
    };
    // A restart: the pending retry is taken up from the table.
    let s = crate::store::tests::test_store(&dir);
    let mut conn = s.open_writer().expect("conn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while deliveries(&mut conn).last().map(|d| d.3.as_str()) != Some("delivered") {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            deliveries(&mut conn)
        );
        deliver_due(&mut conn, &client, &config).expect("deliver");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        deliveries(&mut conn),
        [
            ("ops".to_string(), 1, Some(500), "retrying".to_string()),
            ("ops".to_string(), 2, Some(200), "delivered".to_string()),
        ]
    );
    let seen_now = seen.lock().expect("seen").clone();
    assert_eq!(seen_now.len(), 2);
    for (head, body) in &seen_now {
        assert!(
            head.starts_with("POST /hooks/T0/B0/path-token?x=1 HTTP/1.1"),
            "{head}"
        );
        let ts: i64 = header(head, "x-tally-timestamp")
            .and_then(|v| v.parse().ok())
            .expect("ts");
        assert!((ts - crate::api::now_ms() / 1000).abs() < 60);
        let want = format!("sha256={}", sign(&secret, ts, body.as_bytes()));
        assert_eq!(header(head, "x-tally-signature"), Some(want.as_str()));
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["kind"], "budget_limit");
        assert_eq!(v["org"], "acme");
        assert_eq!(v["dedupe_key"], "budget:1:0:limit");
        assert_eq!(v["budget"], "daily");
        assert_eq!(v["scope"]["team"], "search");
        assert!(
            v["text"].as_str().expect("text").contains("budget daily"),
            "{v}"
        );
        assert!(!body.contains(&secret) && !head.contains(&secret));
    }
    drop(conn);
    drop(s);
    // Another restart: nothing is sent again.
    let s = crate::store::tests::test_store(&dir);
    let mut conn = s.open_writer().expect("conn");
    for _ in 0..3 {
        assert_eq!(
            deliver_due(&mut conn, &client, &config).expect("deliver"),
            0
        );
    }
    assert_eq!(seen.lock().expect("seen").len(), 2);
    // The history says it all, without the secret or the URL's path.
    let h = history(&mut conn, org, "acme", 10).expect("history");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["deliveries"].as_array().map(Vec::len), Some(2));
    let listed = format!("{h:?} {:?}", list_hooks(&mut conn, org).expect("list"));
    assert!(
        !listed.contains(&secret) && !listed.contains("path-token"),
        "{listed}"
    );

    // A receiver that refuses (404) is not retried; an unreachable one is retried, then given up.
    let (port404, _) = receiver(vec![404]);
    let quick = Config {
        policy: Policy::default().with_private(true),
        retry_base_ms: 1,
        attempts: 3,
        ..Default::default()
    };
    add_hook(
        &mut conn,
        org,
        "gone",
        &format!("http://127.0.0.1:{port404}/x"),
        Some(&["anomaly".into()]),
        true,
        &quick.policy,
        5,
    )
    .expect("hook");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    add_hook(
        &mut conn,
        org,
        "down",
        &format!("http://127.0.0.1:{closed_port}/x"),
        Some(&["anomaly".into()]),
        true,
        &quick.policy,
        5,
    )
    .expect("hook");
    record(&mut conn, org, "anomaly", "anomaly:x", &json!({}), 6).expect("rec");
    for _ in 0..20 {
        deliver_due(&mut conn, &client, &quick).expect("deliver");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let d = deliveries(&mut conn);
    let of = |hook: &str| -> Vec<(i64, String)> {
        d.iter()
            .filter(|x| x.0 == hook)
            .map(|x| (x.1, x.3.clone()))
            .collect()
    };
    assert_eq!(of("gone"), [(1, "failed".to_string())]);
    assert_eq!(
        of("down"),
        [
            (1, "retrying".to_string()),
            (2, "retrying".to_string()),
            (3, "failed".to_string())
        ]
    );
    // The "anomalies" hook got this one, too: to the receiver that answered 500 then 200.
    assert!(of("anomalies").iter().any(|x| x.1 == "delivered"));
}
