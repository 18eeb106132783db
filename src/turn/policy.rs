//! Which peers the TURN server relays to: Convene's own media addresses (never an open relay),
//! plus networks an operator adds. A media address announced to clients (a public address, a
//! NAT's) is reached on the host itself, so relayed media never hairpins through the NAT.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// A media address as clients know it → where the relay sends to reach it.
    media: HashMap<SocketAddr, SocketAddr>,
    networks: Vec<IpNet>,
}

impl PeerPolicy {
    /// `announced` × `ports` are the media addresses; `bind` the media sockets' address (the
    /// unspecified address: reached on loopback).
    pub fn new(announced: &[IpAddr], ports: &[u16], bind: IpAddr, networks: Vec<IpNet>) -> Self {
        let mut media = HashMap::new();
        for ip in announced {
            for port in ports {
                let local = match (bind.is_unspecified(), ip) {
                    (false, _) => bind,
                    (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                media.insert(SocketAddr::new(*ip, *port), SocketAddr::new(local, *port));
            }
        }
        Self { media, networks }
    }

    pub fn allows(&self, peer: SocketAddr) -> bool {
        self.media.contains_key(&peer) || self.networks.iter().any(|n| n.contains(&peer.ip()))
    }

    /// Where datagrams for `peer` are sent.
    pub fn route(&self, peer: SocketAddr) -> SocketAddr {
        self.media.get(&peer).copied().unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_media_addresses_and_added_networks_are_peers() {
        let public: IpAddr = "203.0.113.10".parse().unwrap();
        let policy = PeerPolicy::new(
            &[public, "::1".parse().unwrap()],
            &[50000, 50001],
            "0.0.0.0".parse().unwrap(),
            vec!["10.1.0.0/16".parse().unwrap()],
        );
        let media = SocketAddr::new(public, 50001);
        assert!(policy.allows(media));
        assert_eq!(policy.route(media), a("127.0.0.1:50001"));
        assert_eq!(policy.route(a("[::1]:50000")), a("[::1]:50000"));
        for refused in [
            "203.0.113.10:22",
            "203.0.113.11:50000",
            "127.0.0.1:50000",
            "[::2]:50000",
        ] {
            assert!(!policy.allows(a(refused)), "{refused}");
        }
        assert!(policy.allows(a("10.1.2.3:9")));
        assert_eq!(policy.route(a("10.1.2.3:9")), a("10.1.2.3:9"));
    }

    #[test]
    fn a_specific_bind_address_is_where_media_is_reached() {
        let policy = PeerPolicy::new(
            &["198.51.100.7".parse().unwrap()],
            &[40000],
            "10.0.0.5".parse().unwrap(),
            Vec::new(),
        );
        assert_eq!(policy.route(a("198.51.100.7:40000")), a("10.0.0.5:40000"));
    }
}
