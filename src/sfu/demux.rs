//! Which peer a datagram on the shared media port belongs to.
//!
//! The grammar, in the order we try it:
//! 1. A STUN message (first two bits 00, magic cookie 0x2112A442 at bytes 4..8) with a USERNAME
//!    attribute `"<server ufrag>:<client ufrag>"`: the server ufrag names the peer. It is routed
//!    only when its MESSAGE-INTEGRITY verifies with that peer's ICE password (RFC 8445 §7.3:
//!    HMAC-SHA1, short-term credentials), and a verified Binding request (re)binds its source
//!    address to the peer: that is how ICE restarts and network changes move a peer. An
//!    off-path sender who learns a ufrag cannot move or add a binding without the password.
//! 2. Anything else (DTLS, SRTP, SRTCP, STUN responses/indications) is routed by its source
//!    address, which a verified STUN request bound before.
//!
//! Bounds: one ufrag per peer, and at most `max_addresses_per_peer` addresses per peer (the
//! oldest binding goes first), so the maps grow with peers, never with what clients send.
//! Parsing is defensive: network input never panics, lengths are checked before every slice.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use hmac::{Hmac, Mac};

use crate::ids::PeerId;

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER_LEN: usize = 20;
const STUN_ATTR_USERNAME: u16 = 0x0006;
const STUN_ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const STUN_BINDING_REQUEST: u16 = 0x0001;
const HMAC_SHA1_LEN: usize = 20;

/// What a STUN message says about routing: its type, the server ufrag of its USERNAME, and
/// where its MESSAGE-INTEGRITY attribute starts (if it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunRouting<'a> {
    pub message_type: u16,
    pub server_ufrag: &'a str,
    integrity_at: Option<usize>,
}

/// Parses the routing facts of a STUN message with a USERNAME; `None` for anything else.
pub fn stun_routing(datagram: &[u8]) -> Option<StunRouting<'_>> {
    if datagram.len() < STUN_HEADER_LEN
        || datagram[0] & 0xC0 != 0
        || datagram[4..8] != STUN_MAGIC_COOKIE
    {
        return None;
    }
    let message_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    datagram.get(STUN_HEADER_LEN..STUN_HEADER_LEN + body_len)?;
    let end = STUN_HEADER_LEN + body_len;
    let mut at = STUN_HEADER_LEN;
    let mut server_ufrag = None;
    let mut integrity_at = None;
    while at + 4 <= end {
        let attr_type = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let attr_len = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize;
        let value = datagram.get(at + 4..at + 4 + attr_len)?;
        if at + 4 + attr_len > end {
            return None;
        }
        match attr_type {
            STUN_ATTR_USERNAME if server_ufrag.is_none() => {
                let username = std::str::from_utf8(value).ok()?;
                server_ufrag = username.split(':').next().filter(|u| !u.is_empty());
            }
            STUN_ATTR_MESSAGE_INTEGRITY => {
                integrity_at = Some(at);
                // Attributes after it (FINGERPRINT) are not covered by it.
                break;
            }
            _ => {}
        }
        at += 4 + ((attr_len + 3) & !3);
    }
    Some(StunRouting {
        message_type,
        server_ufrag: server_ufrag?,
        integrity_at,
    })
}

/// Returns the server-side ufrag of a STUN message's USERNAME, if the datagram is STUN and has one.
pub fn stun_server_ufrag(datagram: &[u8]) -> Option<&str> {
    stun_routing(datagram).map(|r| r.server_ufrag)
}

/// Whether the message's MESSAGE-INTEGRITY is the HMAC-SHA1 of what precedes it under `key`
/// (RFC 8489 §14.5: the header's length counts up to the end of MESSAGE-INTEGRITY).
fn integrity_verifies(datagram: &[u8], routing: &StunRouting<'_>, key: &[u8]) -> bool {
    let Some(at) = routing.integrity_at else {
        return false;
    };
    let Some(expected) = datagram.get(at + 4..at + 4 + HMAC_SHA1_LEN) else {
        return false;
    };
    if u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize != HMAC_SHA1_LEN {
        return false;
    }
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) else {
        return false;
    };
    let covered_len = (at + 4 + HMAC_SHA1_LEN - STUN_HEADER_LEN) as u16;
    mac.update(&datagram[0..2]);
    mac.update(&covered_len.to_be_bytes());
    mac.update(&datagram[4..at]);
    mac.verify_slice(expected).is_ok()
}

/// Why a datagram was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// From an address no verified STUN request bound.
    UnknownAddress,
    /// STUN naming an unknown ufrag.
    UnknownUfrag,
    /// STUN naming a known ufrag whose integrity does not verify (or is missing).
    BadIntegrity,
}

struct Credentials {
    peer: PeerId,
    /// Our ICE password for the peer: the key of its checks' MESSAGE-INTEGRITY.
    password: Box<[u8]>,
}

/// The indexes that route datagrams to peers.
pub struct Demux {
    by_ufrag: HashMap<String, Credentials>,
    /// FxHash: looked up per datagram; only addresses that passed a verified check get in.
    by_addr: rustc_hash::FxHashMap<SocketAddr, PeerId>,
    /// Each peer's bound addresses, oldest first.
    addrs_of: HashMap<PeerId, VecDeque<SocketAddr>>,
    max_addresses_per_peer: usize,
}

impl Default for Demux {
    fn default() -> Self {
        Self::new(8)
    }
}

impl Demux {
    pub fn new(max_addresses_per_peer: usize) -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: rustc_hash::FxHashMap::default(),
            addrs_of: HashMap::new(),
            max_addresses_per_peer: max_addresses_per_peer.max(1),
        }
    }

    pub fn route(&mut self, source: SocketAddr, datagram: &[u8]) -> Result<PeerId, Unrouted> {
        let Some(routing) = stun_routing(datagram) else {
            return self
                .by_addr
                .get(&source)
                .copied()
                .ok_or(Unrouted::UnknownAddress);
        };
        let credentials = self
            .by_ufrag
            .get(routing.server_ufrag)
            .ok_or(Unrouted::UnknownUfrag)?;
        if !integrity_verifies(datagram, &routing, &credentials.password) {
            return Err(Unrouted::BadIntegrity);
        }
        let peer = credentials.peer;
        if routing.message_type == STUN_BINDING_REQUEST && self.by_addr.get(&source) != Some(&peer)
        {
            self.bind_addr(source, peer);
        }
        Ok(peer)
    }

    fn bind_addr(&mut self, source: SocketAddr, peer: PeerId) {
        if let Some(previous) = self.by_addr.insert(source, peer) {
            if let Some(list) = self.addrs_of.get_mut(&previous) {
                list.retain(|a| *a != source);
            }
        }
        let list = self.addrs_of.entry(peer).or_default();
        list.push_back(source);
        while list.len() > self.max_addresses_per_peer {
            if let Some(oldest) = list.pop_front() {
                self.by_addr.remove(&oldest);
            }
        }
    }

    /// Routes STUN naming `ufrag` to `peer`, verified with `password` (our `a=ice-pwd`).
    pub fn bind_ufrag(&mut self, ufrag: &str, password: &str, peer: PeerId) {
        self.by_ufrag.insert(
            ufrag.to_owned(),
            Credentials {
                peer,
                password: password.as_bytes().into(),
            },
        );
    }

    pub fn unbind_ufrag(&mut self, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
    }

    /// The peer a verified check bound `addr` to, if any.
    pub fn peer_of(&self, addr: SocketAddr) -> Option<PeerId> {
        self.by_addr.get(&addr).copied()
    }

    /// Forgets every route to `peer`.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.by_ufrag.retain(|_, c| c.peer != peer);
        for addr in self.addrs_of.remove(&peer).unwrap_or_default() {
            if self.by_addr.get(&addr) == Some(&peer) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// Bound addresses, all peers together.
    pub fn bound_addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding request with USERNAME and MESSAGE-INTEGRITY under `password` (and a
    /// FINGERPRINT-like trailer that integrity does not cover).
    fn signed_request(username: &str, password: &str) -> Vec<u8> {
        let mut msg = binding_request(username);
        let at = msg.len();
        let length = (at + 24 - STUN_HEADER_LEN) as u16;
        msg[2..4].copy_from_slice(&length.to_be_bytes());
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(password.as_bytes()).unwrap();
        mac.update(&msg);
        let tag = mac.finalize().into_bytes();
        msg.extend_from_slice(&STUN_ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        msg.extend_from_slice(&20u16.to_be_bytes());
        msg.extend_from_slice(&tag);
        msg.extend_from_slice(&0x8028u16.to_be_bytes());
        msg.extend_from_slice(&4u16.to_be_bytes());
        msg.extend_from_slice(&[1, 2, 3, 4]);
        let total = (msg.len() - STUN_HEADER_LEN) as u16;
        msg[2..4].copy_from_slice(&total.to_be_bytes());
        msg
    }

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
    fn verified_stun_binds_address_then_media_follows_it() {
        let mut demux = Demux::default();
        let peer = PeerId::new();
        demux.bind_ufrag("srv1", "secretpassword", peer);
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            demux.route(addr, &[0x80; 20]),
            Err(Unrouted::UnknownAddress),
            "unknown address before STUN"
        );
        let request = signed_request("srv1:x", "secretpassword");
        assert_eq!(demux.route(addr, &request), Ok(peer));
        assert_eq!(demux.route(addr, &[0x80; 20]), Ok(peer));
        demux.remove_peer(peer);
        assert_eq!(
            demux.route(addr, &[0x80; 20]),
            Err(Unrouted::UnknownAddress)
        );
        assert_eq!(demux.route(addr, &request), Err(Unrouted::UnknownUfrag));
    }

    #[test]
    fn forged_or_unsigned_stun_binds_nothing() {
        let mut demux = Demux::default();
        let peer = PeerId::new();
        demux.bind_ufrag("srv1", "secretpassword", peer);
        let spoofer: SocketAddr = "127.0.0.1:6666".parse().unwrap();
        for forged in [
            signed_request("srv1:x", "wrong"),
            binding_request("srv1:x"),
            {
                let mut tampered = signed_request("srv1:x", "secretpassword");
                tampered[10] ^= 1; // the transaction id is covered
                tampered
            },
        ] {
            assert_eq!(demux.route(spoofer, &forged), Err(Unrouted::BadIntegrity));
            assert_eq!(
                demux.route(spoofer, &[0x80; 20]),
                Err(Unrouted::UnknownAddress)
            );
        }
        assert_eq!(demux.bound_addresses(), 0);
    }

    #[test]
    fn addresses_per_peer_are_bounded() {
        let mut demux = Demux::new(3);
        let peer = PeerId::new();
        demux.bind_ufrag("srv1", "pw", peer);
        let request = signed_request("srv1:x", "pw");
        for port in 1000..1010u16 {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(demux.route(addr, &request), Ok(peer));
        }
        assert_eq!(demux.bound_addresses(), 3);
        let newest = SocketAddr::from(([127, 0, 0, 1], 1009));
        let oldest = SocketAddr::from(([127, 0, 0, 1], 1000));
        assert_eq!(demux.route(newest, &[0x80; 20]), Ok(peer));
        assert_eq!(
            demux.route(oldest, &[0x80; 20]),
            Err(Unrouted::UnknownAddress)
        );
    }
}
