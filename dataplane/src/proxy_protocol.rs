//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the header an L4 load
//! balancer sends before the client's bytes, announcing the client's address. With
//! `--proxy-protocol`, every connection to the proxy listener must start with one; the announced
//! source address is then the client for `client_ip` keys, `X-Forwarded-For` and logs. A
//! connection whose header is missing, malformed or incomplete within the header timeout is
//! closed. `LOCAL` (v2) and `UNKNOWN` (v1) headers — health checks of the balancer itself — keep
//! the TCP peer.
//!
//! [`parse`] is pure; [`read`] takes the header off a socket without reading past it (peek,
//! then consume exactly its length), so the HTTP bytes behind it reach hyper untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted (16 bytes, then addresses and TLVs).
const V2_MAX: usize = 16 + 512;

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a PROXY header at all.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A PROXY header that breaks the specification.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The header did not arrive (whole) in time, or the connection closed first.
    #[error("the PROXY protocol header did not arrive in time")]
    Incomplete,
}

/// What a complete header says: its length, and the client's address (`None`: keep the
/// TCP peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes.
    pub len: usize,
    /// The announced source address.
    pub source: Option<SocketAddr>,
}

/// Parses the start of a connection: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    if buf.len() >= 12 && buf[..12] == V2_SIGNATURE[..] {
        return parse_v2(buf);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return Ok(None);
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(HeaderError::Missing);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(HeaderError::Malformed("v1 header longer than 107 bytes"));
        }
        return Ok(None);
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(HeaderError::Malformed("v1 header longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| HeaderError::Malformed("v1 header is not text"))?;
    let mut f = line.split(' ');
    let _proxy = f.next();
    let source = match f.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let bad = || HeaderError::Malformed("v1 addresses");
            let src: IpAddr = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let dst: IpAddr = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let sport: u16 = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let dport: u16 = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let v4 = family == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 || f.next().is_some() || dport == 0 {
                return Err(bad());
            }
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(HeaderError::Malformed("v1 protocol family")),
    };
    Ok(Some(Header { len, source }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::Malformed("v2 version"));
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err(HeaderError::Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[16..len];
    let source = match (ver_cmd & 0x0f, family) {
        // LOCAL: the balancer's own connection (a health check).
        (0, _) => None,
        (1, 0x11) if a.len() >= 12 => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            u16::from_be_bytes([a[8], a[9]]),
        )),
        (1, 0x21) if a.len() >= 36 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC or a family other than TCP over IPv4/IPv6: keep the peer.
        (1, 0x00) => None,
        (1, _) => return Err(HeaderError::Malformed("v2 address family or length")),
        _ => return Err(HeaderError::Malformed("v2 command")),
    };
    Ok(Some(Header { len, source }))
}

/// Reads the PROXY header at the start of `stream` within `timeout`, consuming exactly its
/// bytes; the client's address (the peer's for LOCAL/UNKNOWN).
pub async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, HeaderError> {
    let header = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; V2_MAX];
        let mut seen = 0;
        loop {
            let n = stream
                .peek(&mut buf)
                .await
                .map_err(|_| HeaderError::Incomplete)?;
            if n == 0 {
                return Err(HeaderError::Incomplete);
            }
            if let Some(h) = parse(&buf[..n])? {
                return Ok(h);
            }
            if n == seen {
                // Nothing new since the last peek: wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen = n;
        }
    })
    .await
    .map_err(|_| HeaderError::Incomplete)??;
    let mut skip = vec![0u8; header.len];
    stream
        .read_exact(&mut skip)
        .await
        .map_err(|_| HeaderError::Incomplete)?;
    Ok(header.source.unwrap_or(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, family: u8, addr: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(family);
        b.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        b.extend_from_slice(addr);
        b
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Some(Header {
                len: 47,
                source: Some("198.51.100.7:51234".parse().unwrap())
            }))
        );
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n";
        assert_eq!(
            parse(h6).unwrap().unwrap().source,
            Some("[2001:db8::7]:1".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);
        assert_eq!(parse(b"PROXY TCP4 198.51.100.7 2"), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        for bad in [
            &b"PROXY TCP4 198.51.100.7 203.0.113.1 51234\r\n"[..],
            b"PROXY TCP4 2001:db8::7 203.0.113.1 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing));
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(HeaderError::Malformed(_))
        ));
    }

    #[test]
    fn v2_headers() {
        let addr4 = [198, 51, 100, 7, 203, 0, 113, 1, 0xc8, 0x22, 0x01, 0xbb];
        let h = v2(1, 0x11, &addr4);
        assert_eq!(
            parse(&h),
            Ok(Some(Header {
                len: 28,
                source: Some("198.51.100.7:51234".parse().unwrap())
            }))
        );
        // Incomplete until the last byte.
        assert_eq!(parse(&h[..27]), Ok(None));
        assert_eq!(parse(&h[..5]), Ok(None));
        // LOCAL: keep the peer.
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().source, None);
        let mut addr6 = vec![0u8; 36];
        addr6[0] = 0x20;
        addr6[1] = 0x01;
        addr6[15] = 7;
        addr6[32] = 0;
        addr6[33] = 80;
        assert_eq!(
            parse(&v2(1, 0x21, &addr6)).unwrap().unwrap().source,
            Some("[2001::7]:80".parse().unwrap())
        );
        assert!(parse(&v2(1, 0x11, &addr4[..6])).is_err(), "short addresses");
        let mut wrong_version = h;
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version).is_err());
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(
            parse(&huge).is_err(),
            "a length beyond the bound is refused at once"
        );
    }
}
