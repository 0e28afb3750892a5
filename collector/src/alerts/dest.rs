//! Where a hook may send: `http` or `https` URLs whose host resolves only to public addresses,
//! unless the operator allows more. Refused by default: loopback, private (RFC 1918, fc00::/7),
//! carrier-grade NAT (100.64/10), link-local (169.254/16 with the cloud metadata address,
//! fe80::/10), unspecified, multicast, broadcast and reserved ranges, IPv6 forms that embed one
//! of those (IPv4-mapped, NAT64, 6to4), and names such as `localhost` or
//! `metadata.google.internal`. The addresses checked are the ones connected to, so a name cannot
//! resolve to another address between the check and the call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A name lookup must answer within this.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest URL accepted.
const MAX_URL: usize = 2048;

/// What the operator allows besides public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--alert-allow-private`: private and loopback addresses (not link-local or metadata).
    pub allow_private: bool,
    /// `--alert-allow-host HOST[:PORT]`: these hosts (lowercase; any port when `None`), whatever
    /// they resolve to.
    pub allow_hosts: Vec<(String, Option<u16>)>,
}

/// `HOST` or `HOST:PORT` (`[v6]:PORT`), for `--alert-allow-host`.
pub fn parse_allow_host(s: &str) -> Result<(String, Option<u16>), String> {
    let s = s.trim().to_ascii_lowercase();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: an IPv6 host is written [addr] or [addr]:port"))?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), Some(p)),
            None if after.is_empty() => (h.to_string(), None),
            None => return Err(format!("{s:?} is not HOST[:PORT]")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            _ => (s.clone(), None),
        }
    };
    let host = host.trim_end_matches('.').to_string();
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| format!("{s:?}: bad port")))
        .transpose()?;
    Ok((host, port))
}

/// A parsed hook URL.
pub use crate::outbound::Target;

pub fn parse(url: &str) -> Result<Target, String> {
    use crate::outbound::BadUrl;
    // The URL is not repeated in errors: its path or query may hold a token.
    if url.len() > MAX_URL {
        return Err(format!("a URL may be at most {MAX_URL} characters"));
    }
    crate::outbound::parse(url).map_err(|e| {
        match e {
            BadUrl::NotAUrl => "not a URL (expected https://host/path)",
            BadUrl::Scheme => "only http:// and https:// URLs are accepted (https recommended)",
            BadUrl::NoHost => "the URL has no host",
            BadUrl::Credentials => "credentials in a URL are not accepted",
        }
        .to_string()
    })
}

/// A URL as shown by lists: scheme and authority, the path hidden (a Slack webhook's path is a
/// credential).
pub fn shown(url: &str) -> String {
    match parse(url) {
        Ok(t) => format!(
            "{}://{}/…",
            if t.https { "https" } else { "http" },
            t.authority
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

/// Why a destination was not reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestError {
    /// The policy refuses it: final.
    Refused(String),
    /// The name did not resolve (now): worth a retry.
    Lookup(String),
}

impl std::fmt::Display for DestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestError::Refused(m) | DestError::Lookup(m) => f.write_str(m),
        }
    }
}

/// What a refused address is, or `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [169, 254, 169, 254] => "cloud metadata",
        [169, 254, ..] => "link-local",
        [127, ..] => "loopback",
        [0, ..] => "unspecified",
        [10, ..] | [192, 168, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT",
        [a, ..] if (224..240).contains(&a) => "multicast",
        [a, ..] if a >= 240 => "reserved",
        [192, 0, 0, _] => "reserved",
        [198, b, ..] if b == 18 || b == 19 => "reserved",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4
    // address that a gateway may reach for us.
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) {
        return classify_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return classify_v4(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "private",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "private",
        x if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// Names refused before any lookup: the metadata services' (any policy but an explicit host),
/// and names that are this machine or a private network's.
fn classify_name(host: &str) -> Option<&'static str> {
    if matches!(
        host,
        "metadata" | "metadata.google.internal" | "metadata.goog" | "instance-data"
    ) || host.starts_with("instance-data.")
    {
        return Some("cloud metadata");
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return Some("loopback");
    }
    if host.ends_with(".internal") || host.ends_with(".local") || host.ends_with(".lan") {
        return Some("private");
    }
    None
}

impl Policy {
    /// This policy, with private and loopback addresses allowed too if `allow`.
    pub fn with_private(&self, allow: bool) -> Policy {
        let mut p = self.clone();
        p.allow_private |= allow;
        p
    }

    fn allows(&self, what: &str) -> bool {
        self.allow_private && matches!(what, "loopback" | "private" | "carrier-grade NAT")
    }

    fn host_allowed(&self, t: &Target) -> bool {
        self.allow_hosts
            .iter()
            .any(|(h, p)| *h == t.host && p.is_none_or(|p| p == t.port))
    }

    /// The addresses to connect to for `t`, every one of them allowed; else why not.
    pub fn resolve(&self, t: &Target, timeout: Duration) -> Result<Vec<SocketAddr>, DestError> {
        let explicit = self.host_allowed(t);
        let refused = |what: &str| {
            DestError::Refused(format!(
                "{} is a {what} destination, refused (an operator may allow it: \
                 --alert-allow-private for private and loopback addresses, \
                 --alert-allow-host {}:{} for this host)",
                t.host, t.host, t.port
            ))
        };
        if !explicit {
            if let Some(what) = classify_name(&t.host) {
                if !self.allows(what) {
                    return Err(refused(what));
                }
            }
        }
        let addrs = lookup(&t.host, t.port, timeout)?;
        if addrs.is_empty() {
            return Err(DestError::Lookup(format!("{}: no address", t.host)));
        }
        if !explicit {
            // Every address, not only the first: the connection may go to any of them.
            for a in &addrs {
                if let Some(what) = classify(a.ip()) {
                    if !self.allows(what) {
                        return Err(refused(what));
                    }
                }
            }
        }
        Ok(addrs)
    }
}

/// Resolve within `timeout` (the system resolver has none of its own that we control): the
/// lookup runs on a thread of its own, left to finish alone if it is late.
fn lookup(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, DestError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("alerts-dns".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })
        .map_err(|e| DestError::Lookup(format!("{host}: cannot resolve: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(DestError::Lookup(format!("{host}: cannot resolve: {e}"))),
        Err(_) => Err(DestError::Lookup(format!(
            "{host}: no DNS answer within {} ms",
            timeout.as_millis()
        ))),
    }
}
