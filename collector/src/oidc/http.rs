//! The few HTTP calls sign-in makes to the identity provider (discovery, JWKS, token,
//! userinfo): HTTP/1.1, one connection per call, HTTPS with Mozilla's roots (plus an optional
//! CA file), plain HTTP only to a loopback address. Every call is bounded in time and size, and
//! redirects are not followed.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::http::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A whole call (DNS, connect, TLS, request, body) must finish within this.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: discovery documents, JWKS and token answers are a few KiB.
pub const MAX_BODY: usize = 256 * 1024;

pub struct Client {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

/// A URL the client may call: `https`, or `http` to a loopback host (tests, a provider on the
/// same machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(crate::outbound::Target);

impl std::ops::Deref for Target {
    type Target = crate::outbound::Target;
    fn deref(&self) -> &crate::outbound::Target {
        &self.0
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        use crate::outbound::BadUrl;
        let t = crate::outbound::parse(url).map_err(|e| match e {
            BadUrl::NotAUrl => format!("{url:?} is not a URL"),
            BadUrl::Scheme => format!("{url:?} must be an https:// URL"),
            BadUrl::NoHost => format!("{url:?} has no host"),
            BadUrl::Credentials => format!("{url:?}: credentials in a URL are not accepted"),
        })?;
        if !t.https && !is_loopback_name(&t.host) {
            return Err(format!(
                "{url:?}: plain http is allowed only for a loopback address (127.0.0.1, ::1, \
                 localhost); use https"
            ));
        }
        Ok(Target(t))
    }

    pub fn is_https(&self) -> bool {
        self.https
    }
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An answer: status and body (at most `MAX_BODY` bytes).
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Client {
    /// `ca_file`: PEM certificates to trust besides the public roots (a company's own CA).
    pub fn new(ca_file: Option<&Path>) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--oidc-ca-file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--oidc-ca-file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--oidc-ca-file {}: no PEM certificate in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("--oidc-ca-file {}: {e}", path.display()))?;
            }
        }
        let config = crate::outbound::tls_config(roots)?;
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout: TIMEOUT,
        })
    }

    pub async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Answer, String> {
        let mut headers = Vec::new();
        if let Some(token) = bearer {
            headers.push((header::AUTHORIZATION, format!("Bearer {token}")));
        }
        self.call(Method::GET, url, headers, Bytes::new()).await
    }

    /// A form POST (`application/x-www-form-urlencoded`), with HTTP Basic credentials if given.
    pub async fn post_form(
        &self,
        url: &str,
        form: String,
        basic: Option<String>,
    ) -> Result<Answer, String> {
        let mut headers = vec![(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".to_string(),
        )];
        if let Some(b) = basic {
            headers.push((header::AUTHORIZATION, format!("Basic {b}")));
        }
        self.call(Method::POST, url, headers, Bytes::from(form))
            .await
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(header::HeaderName, String)>,
        body: Bytes,
    ) -> Result<Answer, String> {
        let target = Target::parse(url)?;
        // Errors name the host only: a URL's query may carry something that is not for logs.
        let host = target.host.clone();
        tokio::time::timeout(self.timeout, self.exchange(method, target, headers, body))
            .await
            .map_err(|_| format!("{host}: no answer within {} ms", self.timeout.as_millis()))?
            .map_err(|e| format!("{host}: {e}"))
    }

    async fn exchange(
        &self,
        method: Method,
        target: Target,
        headers: Vec<(header::HeaderName, String)>,
        body: Bytes,
    ) -> Result<Answer, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve: {e}"))?
            .collect();
        if !target.https && addrs.iter().any(|a| !a.ip().is_loopback()) {
            // `localhost` could be made to resolve elsewhere: plain http stays on this machine.
            return Err("plain http to a non-loopback address refused".into());
        }
        let mut last = String::from("no address");
        let mut tcp = None;
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("cannot connect: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let mut builder = Request::builder()
            .method(method)
            .uri(target.path.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "tally-collector")
            .header(header::CONNECTION, "close");
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        if target.https {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| "not a valid TLS server name".to_string())?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(tls, request).await
        } else {
            send(tcp, request).await
        }
    }
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Answer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection is driven beside the request; it ends with the answer (Connection: close).
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| format!("the answer is larger than {MAX_BODY} bytes or cut short"))?
            .to_bytes();
        Ok(Answer { status, body })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oidc_urls_https_or_loopback_http() {
        let t = Target::parse("https://id.example.com/realms/x/.well-known/openid-configuration")
            .expect("https");
        assert!(t.is_https());
        assert_eq!(t.port, 443);
        assert_eq!(t.path, "/realms/x/.well-known/openid-configuration");
        for ok in [
            "http://127.0.0.1:8080/token",
            "http://localhost/token",
            "http://[::1]:9/x",
        ] {
            assert!(Target::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://id.example.com/token",
            "http://10.0.0.1/token",
            "ftp://127.0.0.1/x",
            "https://user:pw@id.example.com/",
            "/relative",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn oidc_http_answers_are_bounded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    if head.starts_with("GET /big") {
                        let big = vec![b'x'; MAX_BODY + 10];
                        let _ = s
                            .write_all(
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len())
                                    .as_bytes(),
                            )
                            .await;
                        let _ = s.write_all(&big).await;
                    } else if head.starts_with("GET /slow") {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    } else {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                            .await;
                    }
                });
            }
        });
        let mut client = Client::new(None).expect("client");
        client.timeout = Duration::from_millis(300);
        let ok = client
            .get(&format!("http://127.0.0.1:{port}/ok"), None)
            .await
            .expect("ok");
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(&ok.body[..], b"{}");
        let big = client
            .get(&format!("http://127.0.0.1:{port}/big"), None)
            .await;
        assert!(big.is_err_and(|e| e.contains("larger than")));
        let slow = client
            .get(&format!("http://127.0.0.1:{port}/slow"), None)
            .await;
        assert!(slow.is_err_and(|e| e.contains("no answer within")));
    }
}
