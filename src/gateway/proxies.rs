//! Who the client is, for limits that count per client: the TCP peer, or —
//! when the peer is a trusted reverse proxy (`http.trusted_proxies`) — the
//! address that proxy wrote into `X-Forwarded-For`.
//!
//! The header is only believed from listed proxies: any client can send
//! one, and believing it would let a client pick a fresh address (and a
//! fresh rate-limit bucket) for every request. Behind a chain of proxies
//! the client is the rightmost address that is not itself a trusted proxy:
//! everything to the left of it was written by parties we do not trust.
//!
//! Limits then count an [`IpKey`], not an address: an IPv6 client usually
//! owns a whole /64 and could otherwise rotate through 2^64 addresses.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address` or `address/prefix`; says what is wrong otherwise.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// From `http.trusted_proxies` (validated at load; an entry that does
    /// not parse is skipped here rather than trusted).
    pub fn new(entries: &[String]) -> TrustedProxies {
        TrustedProxies(entries.iter().filter_map(|e| Cidr::parse(e).ok()).collect())
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(addr))
    }

    /// The client behind `peer`: `peer` itself unless it is a trusted
    /// proxy; then the rightmost `X-Forwarded-For` address that is not a
    /// trusted proxy (the leftmost if all are). A header that does not
    /// parse is ignored: the proxy is then the client, which only limits
    /// the proxy itself.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        // Several headers are one list, in order (RFC 9110, 5.3).
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            for hop in text.split(',') {
                match parse_hop(hop) {
                    Some(addr) => hops.push(addr),
                    None => return peer,
                }
            }
        }
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            client = hop;
            if !self.contains(hop) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`) as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, from dual-stack sockets) is the IPv4
/// address, so both spellings count as one client.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// What per-client limits count: an IPv4 address, or an IPv6 /64 (the
/// block one subscriber line or host usually gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl IpKey {
    pub fn of(addr: IpAddr) -> IpKey {
        match canonical(addr) {
            IpAddr::V6(v6) => {
                let net = u128::from(v6) & (u128::MAX << 64);
                IpKey(IpAddr::V6(Ipv6Addr::from(net)))
            }
            v4 => IpKey(v4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("ascii"));
        }
        h
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0.0/x", "proxy", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".into(), "192.0.2.1".into()]);
        let headers = xff(&["203.0.113.9"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &headers), ip("203.0.113.9"));
        // A client that writes the header itself gains nothing.
        assert_eq!(
            proxies.client(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        // No header, or a garbled one: the proxy is the client.
        assert_eq!(proxies.client(ip("10.0.0.5"), &xff(&[])), ip("10.0.0.5"));
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &xff(&["unknown"])),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".into()]);
        // The client spoofed 1.1.1.1; the edge proxy appended the real peer,
        // an inner proxy appended the edge proxy.
        let headers = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.7:4431"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &headers), ip("203.0.113.9"));
        let all_trusted = xff(&["10.0.0.8, 10.0.0.7"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &all_trusted), ip("10.0.0.8"));
        let v6 = xff(&["[2001:db8::1]:443"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &v6), ip("2001:db8::1"));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        assert_eq!(
            IpKey::of(ip("2001:db8:1:2:aaaa::1")),
            IpKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            IpKey::of(ip("2001:db8:1:2::1")),
            IpKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            IpKey::of(ip("::ffff:192.0.2.1")),
            IpKey::of(ip("192.0.2.1"))
        );
        assert_ne!(IpKey::of(ip("192.0.2.1")), IpKey::of(ip("192.0.2.2")));
    }
}
