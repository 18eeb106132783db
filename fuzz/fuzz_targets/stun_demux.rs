//! The media demultiplexer on arbitrary datagrams: never panics, and no datagram without a
//! MESSAGE-INTEGRITY made with the peer's password binds an address.
#![no_main]

use std::net::SocketAddr;

use convene::ids::PeerId;
use convene::sfu::demux::{stun_routing, Demux};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stun_routing(data);
    let mut demux = Demux::new(2);
    let peer = PeerId::new();
    demux.bind_ufrag("srv1", "a-password-the-fuzzer-does-not-know", peer);
    let source = SocketAddr::from(([127, 0, 0, 1], 5000));
    let routed = demux.route(source, data);
    assert!(demux.bound_addresses() <= 1);
    if routed.is_ok() {
        // Only a verified check routes anything here (nothing was bound before it).
        assert_eq!(demux.bound_addresses(), 1);
    }
    demux.remove_peer(peer);
    assert_eq!(demux.bound_addresses(), 0);
});
