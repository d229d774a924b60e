//! Who is signing in from where, and how many tries they get: the client's real address
//! (behind a configured trusted proxy, from `X-Forwarded-For`), and the per-address and
//! per-account counters, kept in the database so every replica counts together.

use super::*;

/// The client's address: the connection's peer, unless that is a trusted proxy, in which case
/// the right-most address in `X-Forwarded-For` that is not a trusted proxy (addresses to its
/// left were written by the client and cannot be believed).
pub(super) fn client_ip(peer: IpAddr, forwarded_for: &[&str], proxies: &[ipnet::IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for header in forwarded_for {
        for part in header.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => chain.push(ip),
                // A malformed hop: nothing left of it can be trusted either.
                Err(_) => chain.clear(),
            }
        }
    }
    chain.into_iter().rev().find(|ip| !trusted(ip)).unwrap_or(peer)
}

/// What the address throttle says about an attempt.
pub(super) enum AddressCheck {
    /// Counted; go on (a right answer takes it back).
    Counted,
    /// Over the limit for this minute.
    Throttled,
}

impl Http {
    /// The real client address of a request.
    pub(super) fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        client_ip(peer.ip(), &values, &self.proxies)
    }

    /// Counts an attempt from `ip` in this minute, across replicas.
    pub(super) async fn count_address(&self, ip: IpAddr) -> Result<AddressCheck, OAuthError> {
        let n = self.provider.store.count_address(&ip.to_string(), now() / 60).await?;
        Ok(if n > i64::from(self.provider.config.address_failures_per_minute) {
            AddressCheck::Throttled
        } else {
            AddressCheck::Counted
        })
    }

    /// A right answer from `ip`: its attempt is taken back (only failures stay counted).
    pub(super) async fn address_succeeded(&self, ip: IpAddr) {
        if let Err(e) = self.provider.store.uncount_address(&ip.to_string(), now() / 60).await {
            tracing::warn!(error = %e, "a successful attempt could not be taken off its address's count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_client_address_comes_from_a_trusted_proxy_only() {
        let proxies: Vec<ipnet::IpNet> = vec!["10.42.0.0/16".parse().expect("cidr")];
        // No proxy configured, or a peer that is not one: the header is ignored.
        assert_eq!(client_ip(ip("203.0.113.9"), &["198.51.100.1"], &[]), ip("203.0.113.9"));
        assert_eq!(
            client_ip(ip("203.0.113.9"), &["198.51.100.1"], &proxies),
            ip("203.0.113.9")
        );
        // Behind the ingress: the right-most address that is not a proxy.
        assert_eq!(
            client_ip(ip("10.42.0.7"), &["1.2.3.4, 198.51.100.1, 10.42.3.3"], &proxies),
            ip("198.51.100.1"),
            "what the client wrote on the left is not believed"
        );
        assert_eq!(
            client_ip(ip("10.42.0.7"), &["1.2.3.4", "198.51.100.1"], &proxies),
            ip("198.51.100.1"),
            "several header lines are one list"
        );
        assert_eq!(client_ip(ip("10.42.0.7"), &[], &proxies), ip("10.42.0.7"));
        assert_eq!(
            client_ip(ip("10.42.0.7"), &["198.51.100.1, junk"], &proxies),
            ip("10.42.0.7"),
            "a malformed hop leaves only the peer"
        );
    }
}
