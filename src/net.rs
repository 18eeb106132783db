//! Address helpers shared by the media sockets and the TURN server.

use std::net::{IpAddr, SocketAddr};

/// An address as a dual-stack socket reports an IPv4 peer (`::ffff:a.b.c.d`) as the IPv4
/// address, which is how ICE, the demux and our candidates know it.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// How a destination is written on a socket: an IPv6 (dual-stack) one takes IPv4 peers mapped
/// (`::ffff:a.b.c.d`).
pub fn on_wire(ipv6_socket: bool, addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if ipv6_socket => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(canonical(a("[::ffff:192.0.2.1]:7")), a("192.0.2.1:7"));
        assert_eq!(canonical(a("[::1]:7")), a("[::1]:7"));
        assert_eq!(canonical(a("127.0.0.1:7")), a("127.0.0.1:7"));
        assert_eq!(on_wire(true, a("127.0.0.1:7")), a("[::ffff:127.0.0.1]:7"));
        assert_eq!(on_wire(false, a("127.0.0.1:7")), a("127.0.0.1:7"));
        assert_eq!(on_wire(true, a("[::1]:7")), a("[::1]:7"));
    }
}
