//! Alerts end to end, with the real binary: a hook added by the CLI, alerts raised by the
//! detectors from ingest (`X-Tally-Dropped`, a model with no price), delivered signed to a local
//! receiver, shown by `/api/v1/alerts`; the API's checks; and the hook's secret nowhere after
//! its one printout (database rows, the log, API answers).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tally-collector");

fn cli(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver on loopback that answers 200 and keeps each request's head and body.
fn receiver() -> (u16, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let (head, body) = read_message(&mut s);
            log.lock().expect("log").push((head, body));
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, seen)
}

/// An HTTP message's head and its Content-Length body.
fn read_message(s: &mut std::net::TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return (String::from_utf8_lossy(&buf).to_string(), String::new());
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
            return (head, String::from_utf8_lossy(&buf[i + 4..]).to_string());
        }
    }
}

/// One request to the collector: (status, body).
fn call(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    // Chunked answers: the JSON is between the size lines.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body,
    };
    (status, body)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn alerts_end_to_end_and_the_secret_shown_once() {
    let dir = std::env::temp_dir().join(format!("tally-alerts-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = cli(&dir, &["org", "create", "acme"]);
    let (hook_port, seen) = receiver();
    let hook_url = format!("http://127.0.0.1:{hook_port}/hooks/path-token?sig=abc");
    // Loopback only with the operator's explicit leave.
    let refused = Command::new(BIN)
        .args([
            "alert",
            "add",
            "ops",
            "--org",
            "acme",
            "--url",
            &hook_url,
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("loopback") && !said.contains("path-token"),
        "{said}"
    );
    let secret = cli(
        &dir,
        &[
            "alert",
            "add",
            "ops",
            "--org",
            "acme",
            "--url",
            &hook_url,
            "--allow-private",
        ],
    );
    assert!(
        secret.starts_with("whsec_") && secret.len() == 46,
        "{secret}"
    );
    let listed = cli(&dir, &["alert", "list", "--org", "acme"]);
    assert!(listed.starts_with("ops\thttp://127.0.0.1:"), "{listed}");

    let log_path = dir.join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut serve = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--alert-retry-base-ms",
            "50",
            "--alert-detect-every-ms",
            "200",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let port: u16 = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(rest) = text.split("listening on http://127.0.0.1:").nth(1) {
            break rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port");
        }
        assert!(Instant::now() < deadline, "no start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut answers = Vec::new();
    let mut api = |method: &str, path: &str, k: Option<&str>, extra: &str, body: &str| {
        let a = call(port, method, path, k, extra, body);
        answers.push(a.1.clone());
        a
    };

    // The API: org admins change hooks, with checks that name the field.
    let post = |name: &str, url: &str| format!(r#"{{"name":"{name}","url":"{url}"}}"#);
    let (st, _) = api(
        "POST",
        "/api/v1/alerts",
        None,
        "",
        &post("x", "https://8.8.8.8/x"),
    );
    assert_eq!(st, 401);
    for (body, field) in [
        (post("x", &hook_url), "url"),
        (post("x", "http://169.254.169.254/latest/meta-data/"), "url"),
        (post("x", "ftp://example.com/x"), "url"),
        (post("ops", "https://8.8.8.8/x"), "name"),
        (post("bad name!", "https://8.8.8.8/x"), "name"),
        (
            r#"{"name":"x","url":"https://8.8.8.8/x","kinds":["nope"]}"#.to_string(),
            "kinds",
        ),
        (
            r#"{"name":"x","url":"https://8.8.8.8/x","extra":1}"#.to_string(),
            "extra",
        ),
    ] {
        let (st, b) = api("POST", "/api/v1/alerts", Some(&key), "", &body);
        assert_eq!(st, 400, "{body}: {b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["field"], field, "{body}: {b}");
    }
    let (st, b) = api(
        "POST",
        "/api/v1/alerts",
        Some(&key),
        "",
        r#"{"name":"public","url":"https://8.8.8.8/x","kinds":["anomaly"]}"#,
    );
    assert_eq!(st, 201, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    let second = v["secret"].as_str().expect("secret").to_string();
    assert!(second.starts_with("whsec_"));
    let (st, _) = api("DELETE", "/api/v1/alerts/public", Some(&key), "", "");
    assert_eq!(st, 200);
    let (st, _) = api("DELETE", "/api/v1/alerts/public", Some(&key), "", "");
    assert_eq!(st, 400);

    // A batch that says 3 events were dropped, with a model no price table knows.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let event = format!(
        r#"{{"request_id":"r1","timestamp":"{}","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"no-such-model-1","status":200,"streaming":false,"latency_ms":120.0,"input_tokens":10,"output_tokens":5,"routed":false}}"#,
        tally::time::format_rfc3339_ms(now)
    );
    let (st, b) = api(
        "POST",
        "/v1/events",
        Some(&key),
        "X-Tally-Dropped: 3\r\n",
        &format!("[{event}]"),
    );
    assert_eq!(st, 202, "{b}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let history = loop {
        let (st, b) = api("GET", "/api/v1/alerts", Some(&key), "", "");
        assert_eq!(st, 200, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        let delivered = |kind: &str| {
            v["history"].as_array().into_iter().flatten().any(|a| {
                a["kind"] == kind
                    && a["deliveries"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|d| d["outcome"] == "delivered")
            })
        };
        if delivered("events_dropped") && delivered("unpriced_model") {
            break v;
        }
        assert!(Instant::now() < deadline, "{b}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(history["hooks"][0]["name"], "ops");
    let dropped = history["history"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["kind"] == "events_dropped")
        .expect("dropped");
    assert_eq!(dropped["payload"]["dropped"], 3);

    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (head, body) in &seen {
        assert!(
            head.starts_with("POST /hooks/path-token?sig=abc HTTP/1.1"),
            "{head}"
        );
        let ts: i64 = header(head, "x-tally-timestamp")
            .and_then(|v| v.parse().ok())
            .expect("ts");
        let want = format!(
            "sha256={}",
            tally_collector::alerts::sign(&secret, ts, body.as_bytes())
        );
        assert_eq!(header(head, "x-tally-signature"), Some(want.as_str()));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert!(
            v["text"].as_str().is_some_and(|t| t.starts_with("Tally: ")),
            "{v}"
        );
        assert_eq!(v["org"], "acme");
        assert!(!body.contains(&secret) && !body.contains(&key));
    }
    let unpriced = seen
        .iter()
        .find(|(_, b)| b.contains("unpriced_model"))
        .expect("unpriced");
    assert!(
        unpriced.1.contains("openai/no-such-model-1"),
        "{}",
        unpriced.1
    );

    let _ = serve.kill();
    let _ = serve.wait();
    let history_cli = cli(&dir, &["alert", "history", "--org", "acme"]);
    assert!(history_cli.contains("delivered"), "{history_cli}");

    // The secrets: in alert_hooks.secret and nowhere else.
    let log_text = std::fs::read_to_string(&log_path).expect("log");
    for s in [&secret, &second] {
        assert!(!log_text.contains(s.as_str()), "log");
        assert!(!history_cli.contains(s.as_str()) && !listed.contains(s.as_str()));
    }
    assert!(!log_text.contains("path-token"), "{log_text}");
    for a in &answers {
        assert!(!a.contains(&secret), "{a}");
        // The second secret appears once: in the 201 that created it.
    }
    assert_eq!(answers.iter().filter(|a| a.contains(&second)).count(), 1);
    let db = rusqlite::Connection::open(dir.join("tally.db")).expect("db");
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .expect("tables");
    let mut found = Vec::new();
    for t in tables {
        let mut st = db
            .prepare(&format!("SELECT * FROM \"{t}\""))
            .expect("select");
        let cols: Vec<String> = st.column_names().iter().map(|c| c.to_string()).collect();
        let mut rows = st.query([]).expect("rows");
        while let Some(r) = rows.next().expect("row") {
            for (i, c) in cols.iter().enumerate() {
                let text = match r.get_ref(i).expect("value") {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                        String::from_utf8_lossy(b).to_string()
                    }
                    _ => continue,
                };
                if text.contains(&secret) || text.contains(&second) {
                    found.push(format!("{t}.{c}"));
                }
            }
        }
    }
    assert_eq!(found, ["alert_hooks.secret"]);
    let _ = std::fs::remove_dir_all(&dir);
}
