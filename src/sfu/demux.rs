//! Which peer a datagram on the shared media port belongs to.
//!
//! The grammar, in the order we try it:
//! 1. A STUN Binding request (first two bits 00, magic cookie 0x2112A442 at bytes 4..8) carries a
//!    USERNAME attribute `"<server ufrag>:<client ufrag>"`; the server ufrag names the peer. Every
//!    such request also (re)binds its source address to that peer, which is how ICE restarts and
//!    network changes move a peer to a new address.
//! 2. Anything else (DTLS, SRTP, SRTCP, STUN responses/indications) is routed by its source
//!    address, which a successful STUN exchange bound before.
//!
//! Parsing is defensive: network input never panics, lengths are checked before every slice.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::ids::PeerId;

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER_LEN: usize = 20;
const STUN_ATTR_USERNAME: u16 = 0x0006;

/// Returns the server-side ufrag of a STUN message's USERNAME, if the datagram is STUN and has one.
pub fn stun_server_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < STUN_HEADER_LEN
        || datagram[0] & 0xC0 != 0
        || datagram[4..8] != STUN_MAGIC_COOKIE
    {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let body = datagram.get(STUN_HEADER_LEN..STUN_HEADER_LEN + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let attr_type = u16::from_be_bytes([rest[0], rest[1]]);
        let attr_len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + attr_len)?;
        if attr_type == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|ufrag| !ufrag.is_empty());
        }
        let padded = (attr_len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// The two indexes that route datagrams to peers.
#[derive(Default)]
pub struct Demux {
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
}

impl Demux {
    pub fn route(&mut self, source: SocketAddr, datagram: &[u8]) -> Option<PeerId> {
        if let Some(ufrag) = stun_server_ufrag(datagram) {
            let peer = *self.by_ufrag.get(ufrag)?;
            if self.by_addr.get(&source) != Some(&peer) {
                self.by_addr.insert(source, peer);
            }
            return Some(peer);
        }
        self.by_addr.get(&source).copied()
    }

    pub fn bind_ufrag(&mut self, ufrag: &str, peer: PeerId) {
        self.by_ufrag.insert(ufrag.to_owned(), peer);
    }

    pub fn unbind_ufrag(&mut self, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
    }

    /// Forgets every route to `peer`.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.by_ufrag.retain(|_, p| *p != peer);
        self.by_addr.retain(|_, p| *p != peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A SOFTWARE attribute first, odd length, to exercise padding.
        attrs.extend_from_slice(&0x8022u16.to_be_bytes());
        attrs.extend_from_slice(&3u16.to_be_bytes());
        attrs.extend_from_slice(b"abc\0");
        attrs.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7u8; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    #[test]
    fn parses_server_ufrag() {
        assert_eq!(
            stun_server_ufrag(&binding_request("srv1:cli2")),
            Some("srv1")
        );
    }

    #[test]
    fn rejects_non_stun_and_truncated_input() {
        assert_eq!(stun_server_ufrag(&[0x80; 40]), None, "RTP is not STUN");
        assert_eq!(stun_server_ufrag(&[22, 254, 253]), None, "DTLS is not STUN");
        let full = binding_request("srv1:cli2");
        for cut in 0..full.len() {
            let _ = stun_server_ufrag(&full[..cut]);
        }
        let mut lying = full.clone();
        lying[2] = 0xFF; // body length beyond the datagram
        assert_eq!(stun_server_ufrag(&lying), None);
    }

    #[test]
    fn stun_binds_address_then_media_follows_it() {
        let mut demux = Demux::default();
        let peer = PeerId::new();
        demux.bind_ufrag("srv1", peer);
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            demux.route(addr, &[0x80; 20]),
            None,
            "unknown address before STUN"
        );
        assert_eq!(demux.route(addr, &binding_request("srv1:x")), Some(peer));
        assert_eq!(demux.route(addr, &[0x80; 20]), Some(peer));
        demux.remove_peer(peer);
        assert_eq!(demux.route(addr, &[0x80; 20]), None);
        assert_eq!(demux.route(addr, &binding_request("srv1:x")), None);
    }
}
