//! The client's address: the peer of the connection, or, when that peer is a proxy
//! named in `--trusted-proxies`, the address the proxies report in `X-Forwarded-For`.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed (addresses or CIDR ranges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => IpNet::from(
                    item.parse::<IpAddr>()
                        .map_err(|_| format!("{item:?} is not an address or a CIDR range"))?,
                ),
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that came from `peer`. The list is read from its right
    /// end (the hop nearest to us); the first address not of a trusted proxy is the
    /// client. A client can write anything at the left end, so that is never believed
    /// over a trusted hop's word.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for hop in value.rsplit(',').map(str::trim) {
                match hop.parse::<IpAddr>() {
                    Ok(ip) => {
                        client = canonical(ip);
                        if !self.trusts(client) {
                            return client;
                        }
                    }
                    // Garbage from further out: stop at the last hop we could read.
                    Err(_) => return client,
                }
            }
        }
        client
    }
}

/// An IPv4 client seen through an IPv6 socket is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies: TrustedProxies = "10.0.0.0/8, 192.0.2.7".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Straight from the client: its header is ignored.
        assert_eq!(
            proxies.client(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        // Through the load balancer: the nearest untrusted hop, not the spoofed left end.
        assert_eq!(
            proxies.client(
                ip("10.1.2.3"),
                &headers(&["6.6.6.6, 198.51.100.4, 192.0.2.7"])
            ),
            ip("198.51.100.4")
        );
        // Several header lines read as one list.
        assert_eq!(
            proxies.client(ip("10.1.2.3"), &headers(&["198.51.100.4", "10.9.9.9"])),
            ip("198.51.100.4")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(
            proxies.client(ip("10.1.2.3"), &headers(&[])),
            ip("10.1.2.3")
        );
        assert_eq!(
            proxies.client(ip("10.1.2.3"), &headers(&["junk"])),
            ip("10.1.2.3")
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nope".parse::<TrustedProxies>().is_err());
    }
}
