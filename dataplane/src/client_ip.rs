//! The real client address behind trusted proxies (`--trusted-proxies CIDRS`): when the peer
//! that connected is a trusted proxy, the client is the rightmost `X-Forwarded-For` hop that is
//! not trusted — NGINX's `real_ip_recursive on` — or the leftmost hop when every hop is
//! trusted. An untrusted peer's `X-Forwarded-For` is never believed: anyone can write one.
//! Used for `client_ip` keys; the `X-Forwarded-For` sent on still appends the peer.

use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;

/// An address block, `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address block (as 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_owned());
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.trim().parse().map_err(|_| err())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.trim().parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if bits > max {
            return Err(err());
        }
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    /// Whether `ip` is in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The trusted proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts these blocks.
    pub fn new(blocks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(blocks)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client of a request that came from `peer` with these headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // From the right: each trusted hop vouches for the one before it.
        let mut last = peer;
        for h in hops.iter().rev() {
            let Ok(ip) = h.parse::<IpAddr>() else {
                // Garbage: nothing before it can be believed.
                return last;
            };
            if !self.trusts(ip) {
                return ip;
            }
            last = ip;
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_of_a_trusted_peer() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.5".parse().unwrap(),
        );
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("203.0.113.5"));
        // An untrusted peer's header is not believed.
        assert_eq!(t.client(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        // Every hop trusted: the leftmost.
        let mut all = HeaderMap::new();
        all.append("x-forwarded-for", "10.0.0.3, 10.0.0.2".parse().unwrap());
        assert_eq!(t.client(ip("10.0.0.1"), &all), ip("10.0.0.3"));
        // A hop that is no address: the last trusted hop after it.
        let mut junk = HeaderMap::new();
        junk.append(
            "x-forwarded-for",
            "198.51.100.1, unknown, 10.0.0.2".parse().unwrap(),
        );
        assert_eq!(t.client(ip("10.0.0.1"), &junk), ip("10.0.0.2"));
        // No header: the peer.
        assert_eq!(t.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // Nothing trusted: always the peer.
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }
}
