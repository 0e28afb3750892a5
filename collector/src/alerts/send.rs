//! One delivery attempt: a blocking HTTP/1.1 POST (HTTPS with Mozilla's roots), to addresses the
//! policy allowed, bounded in time (connect, and the whole call), redirects not followed (a 3xx
//! is an answer like any other). Only the status line of the answer is read.
//!
//! Signature: `X-Tally-Timestamp: <unix seconds>` and
//! `X-Tally-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, the key being
//! the secret's bytes as shown at creation (`whsec_...`).

use super::dest::{self, DestError, Policy};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest status line read.
const MAX_HEAD: usize = 8 * 1024;

/// Why an attempt did not get an answer.
#[derive(Debug)]
pub enum Failure {
    /// The destination is not allowed: not retried.
    Refused(String),
    /// Lookup, connection, TLS or timeout: retried.
    Transient(String),
}

/// Hex HMAC-SHA256 of `timestamp.body` under `secret`: the `X-Tally-Signature` value after
/// `sha256=`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    call_timeout: Duration,
}

impl Client {
    pub fn new(connect_timeout: Duration, call_timeout: Duration) -> Result<Client, String> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = crate::outbound::tls_config(roots)?;
        Ok(Client {
            tls: Arc::new(config),
            connect_timeout,
            call_timeout,
        })
    }

    /// POST `body` (JSON) to `url`, signed with `secret`; the answer's status. Errors name the
    /// host only, never the URL's path or query, nor the secret.
    pub fn post(
        &self,
        url: &str,
        policy: &Policy,
        secret: &str,
        body: &[u8],
    ) -> Result<u16, Failure> {
        let target = dest::parse(url).map_err(Failure::Refused)?;
        let addrs = policy
            .resolve(&target, self.call_timeout.min(dest::RESOLVE_TIMEOUT))
            .map_err(|e| match e {
                DestError::Refused(m) => Failure::Refused(m),
                DestError::Lookup(m) => Failure::Transient(m),
            })?;
        let timestamp = crate::api::now_ms() / 1000;
        let headers = [
            ("Content-Type", "application/json".to_string()),
            ("X-Tally-Timestamp", timestamp.to_string()),
            (
                "X-Tally-Signature",
                format!("sha256={}", sign(secret, timestamp, body)),
            ),
        ];
        self.send(&target, addrs, &headers, body)
    }

    /// POST `body` to `target` at one of `addrs` (already checked, or the operator's own
    /// endpoint) with these headers (`Host`, `Content-Length` and `Connection` are added); the
    /// answer's status. Bounded by the client's timeouts; errors name the host only.
    pub fn send(
        &self,
        target: &dest::Target,
        addrs: Vec<std::net::SocketAddr>,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<u16, Failure> {
        let deadline = Instant::now() + self.call_timeout;
        let host = target.host.clone();
        let late = || {
            Failure::Transient(format!(
                "{host}: no answer within {} ms",
                self.call_timeout.as_millis()
            ))
        };
        let mut last = format!("{host}: no address");
        let mut tcp = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(late());
            }
            match TcpStream::connect_timeout(&addr, self.connect_timeout.min(left)) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("{host}: cannot connect: {e}"),
            }
        }
        let tcp = tcp.ok_or(Failure::Transient(last))?;
        let _ = tcp.set_nodelay(true);
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\
             User-Agent: tally-collector\r\nConnection: close\r\n",
            target.path,
            target.authority,
            body.len(),
        );
        for (name, value) in headers {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        let io = |what: &str, e: std::io::Error| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                late()
            } else {
                Failure::Transient(format!("{host}: {what}: {e}"))
            }
        };
        // The socket's timeouts are set to what is left of the call before each read and
        // write, so the whole call ends by the deadline.
        let sock = tcp.try_clone().map_err(|e| io("socket", e))?;
        let bound = || -> Result<(), Failure> {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(late());
            }
            sock.set_read_timeout(Some(left))
                .and_then(|()| sock.set_write_timeout(Some(left)))
                .map_err(|e| io("socket", e))
        };
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|_| Failure::Refused(format!("{host}: not a valid TLS server name")))?;
            let conn = rustls::ClientConnection::new(self.tls.clone(), name)
                .map_err(|e| Failure::Transient(format!("{host}: TLS: {e}")))?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            exchange(&mut tls, &request, &bound, &io, &host)
        } else {
            let mut tcp = tcp;
            exchange(&mut tcp, &request, &bound, &io, &host)
        }
    }
}

fn exchange<S: Read + Write>(
    s: &mut S,
    request: &[u8],
    bound: &dyn Fn() -> Result<(), Failure>,
    io: &dyn Fn(&str, std::io::Error) -> Failure,
    host: &str,
) -> Result<u16, Failure> {
    bound()?;
    s.write_all(request).map_err(|e| io("sending", e))?;
    s.flush().map_err(|e| io("sending", e))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if head.len() > MAX_HEAD {
            return Err(Failure::Transient(format!(
                "{host}: answer without a status line"
            )));
        }
        bound()?;
        let n = s.read(&mut buf).map_err(|e| io("reading the answer", e))?;
        if n == 0 {
            return Err(Failure::Transient(format!(
                "{host}: connection closed without an answer"
            )));
        }
        head.extend_from_slice(&buf[..n]);
    }
    // `HTTP/1.1 200 OK`
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && (100..600).contains(&code) => Ok(code),
        _ => Err(Failure::Transient(format!("{host}: not an HTTP answer"))),
    }
}
