//! The TURN server's state and protocol (RFC 8656 over UDP, TCP and TLS; IPv6 relays per RFC
//! 6156): allocations with their permissions and channels, authentication, the peer policy.
//! One task owns a [`Relay`]; listeners and relay sockets feed it [`Event`]s and it answers
//! through non-blocking sends, so a slow client or socket drops its own packets and stalls
//! nobody else. The wire format is webrtc-rs' own STUN/TURN codec (`rtc::stun`,
//! `rtc::turn::proto`), the one its ICE agent and TURN client use.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::stun::attributes::*;
use rtc::stun::error_code::*;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::*;
use rtc::stun::textattrs::TextAttribute;
use rtc::stun::xoraddr::XorMappedAddress;
use rtc::turn::proto::channum::ChannelNumber;
use rtc::turn::proto::data::Data;
use rtc::turn::proto::lifetime::Lifetime;
use rtc::turn::proto::peeraddr::PeerAddress;
use rtc::turn::proto::relayaddr::RelayedAddress;
use rtc::turn::proto::reqfamily::{RequestedAddressFamily, REQUESTED_FAMILY_IPV6};
use rtc::turn::proto::reqtrans::RequestedTransport;
use rtc::turn::proto::PROTO_UDP;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::credentials::{self, Refused};
use super::nonce::{Check, Nonces};
use super::policy::PeerPolicy;
use crate::metrics::Metrics;

const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const SOFTWARE: &str = "convene";
/// The largest datagram relayed to a client: a Data indication adds 36 bytes of header and
/// attributes to it, and STUN's length field is 16 bits.
const MAX_RELAYED: usize = 65_000;
/// Permissions one allocation holds at most (a client needs one per peer it talks to).
const MAX_PERMISSIONS: usize = 64;

/// How a client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Where a client's packets go back to.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The listener's socket, and whether it is IPv6 (dual-stack: IPv4 clients written mapped).
    Udp(Arc<UdpSocket>, bool),
    /// A TCP or TLS connection's writer (already framed messages, a bounded queue), and whether
    /// the connection holds an allocation (one that never does is closed early).
    Stream(mpsc::Sender<Bytes>, Arc<AtomicBool>),
}

impl Sink {
    /// Sends without waiting; false when the socket buffer or the queue is full.
    fn send(&self, to: SocketAddr, data: Bytes) -> bool {
        match self {
            Sink::Udp(socket, ipv6) => socket
                .try_send_to(&data, crate::net::on_wire(*ipv6, to))
                .is_ok(),
            Sink::Stream(queue, _) => queue.try_send(data).is_ok(),
        }
    }
}

/// A client: its 5-tuple (with the listener implied by the transport) and its way back.
#[derive(Debug, Clone)]
pub struct Client {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub sink: Sink,
}

pub enum Event {
    /// A datagram, or one framed message of a stream, from a client.
    FromClient { client: Client, data: Bytes },
    /// A datagram a relay socket received.
    FromPeer {
        allocation: u64,
        from: SocketAddr,
        data: Bytes,
    },
    /// A stream connection ended: its allocation goes with it.
    Closed {
        transport: Transport,
        addr: SocketAddr,
    },
}

pub struct Settings {
    pub realm: String,
    pub secret: Vec<u8>,
    /// Addresses relayed addresses are announced with, by family (a relay socket binds the
    /// unspecified address of the family).
    pub relay_ipv4: Option<IpAddr>,
    pub relay_ipv6: Option<IpAddr>,
    pub policy: PeerPolicy,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
}

type Key = (Transport, SocketAddr);

struct Allocation {
    id: u64,
    client: Client,
    username: String,
    socket: Arc<UdpSocket>,
    relayed: SocketAddr,
    reader: JoinHandle<()>,
    expires: Instant,
    /// Peer IP → when the permission ends.
    permissions: HashMap<IpAddr, Instant>,
    /// Channel number → peer, and when the binding ends.
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
    /// Where a peer is really reached (the policy may route a public media address to the
    /// local one) → the address the client knows it by.
    aliases: HashMap<SocketAddr, SocketAddr>,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|until| *until > now)
    }
}

pub struct Relay {
    settings: Settings,
    nonces: Nonces,
    crypto: Arc<dyn rtc::crypto::RTCCryptoProvider>,
    allocations: HashMap<Key, Allocation>,
    by_id: HashMap<u64, Key>,
    /// Allocations by identity (the credential's `identity`, not its `expiry:identity`: every
    /// join hands out a new expiry, and the quota is the identity's).
    per_user: HashMap<String, usize>,
    next_id: u64,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
}

/// Why a request failed: the error code, its reason phrase, and the refusal metric's label.
struct Failure {
    code: ErrorCode,
    reason: &'static str,
    metric: &'static str,
}

fn fail(code: ErrorCode, reason: &'static str, metric: &'static str) -> Failure {
    Failure {
        code,
        reason,
        metric,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Relay {
    pub fn new(
        settings: Settings,
        events: mpsc::Sender<Event>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let crypto = rtc::crypto::default_provider()
            .map_err(|e| anyhow::anyhow!("no crypto provider for TURN: {e}"))?;
        Ok(Self {
            nonces: Nonces::new(settings.nonce_lifetime.as_secs().max(1)),
            settings,
            crypto,
            allocations: HashMap::new(),
            by_id: HashMap::new(),
            per_user: HashMap::new(),
            next_id: 1,
            events,
            metrics,
        })
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::FromClient { client, data } => self.client_datagram(client, data, now),
            Event::FromPeer {
                allocation,
                from,
                data,
            } => self.peer_datagram(allocation, from, data, now),
            Event::Closed { transport, addr } => {
                self.remove((transport, addr), "connection closed")
            }
        }
    }

    /// Ends what has expired: allocations, permissions, channels.
    pub fn sweep(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.remove(key, "expired");
        }
        for allocation in self.allocations.values_mut() {
            allocation.permissions.retain(|_, until| *until > now);
            let gone: Vec<u16> = allocation
                .channels
                .iter()
                .filter(|(_, (_, until))| *until <= now)
                .map(|(n, _)| *n)
                .collect();
            for number in gone {
                if let Some((peer, _)) = allocation.channels.remove(&number) {
                    allocation.by_peer.remove(&peer);
                }
            }
        }
    }

    fn remove(&mut self, key: Key, why: &str) {
        let Some(allocation) = self.allocations.remove(&key) else {
            return;
        };
        self.by_id.remove(&allocation.id);
        let identity = identity_of(&allocation.username);
        if let Some(count) = self.per_user.get_mut(identity) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(identity);
            }
        }
        self.metrics
            .turn_allocations
            .set(self.allocations.len() as i64);
        debug!(client = %key.1, relayed = %allocation.relayed, why, "turn allocation ended");
    }

    fn client_datagram(&mut self, client: Client, data: Bytes, now: Instant) {
        match data.first() {
            Some(0x40..=0x7f) => self.channel_data(&client, &data, now),
            Some(0x00..=0x03) => self.stun(client, &data, now),
            _ => {}
        }
    }

    /// ChannelData from a client: to the peer bound to its channel.
    fn channel_data(&mut self, client: &Client, data: &[u8], now: Instant) {
        if data.len() < 4 {
            return;
        }
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let Some(payload) = data.get(4..4 + len) else {
            return;
        };
        let Some(allocation) = self.allocations.get(&(client.transport, client.addr)) else {
            return;
        };
        let Some((peer, until)) = allocation.channels.get(&number) else {
            return;
        };
        if *until <= now || !allocation.permitted(peer.ip(), now) {
            return;
        }
        let target = self.settings.policy.route(*peer);
        self.to_peer(client.transport, client.addr, target, payload);
    }

    fn to_peer(&self, transport: Transport, addr: SocketAddr, target: SocketAddr, payload: &[u8]) {
        let Some(allocation) = self.allocations.get(&(transport, addr)) else {
            return;
        };
        let sent = allocation.socket.try_send_to(payload, target).is_ok();
        self.count(sent, "to_peer", payload.len());
    }

    fn count(&self, sent: bool, direction: &str, bytes: usize) {
        if sent {
            self.metrics
                .turn_relayed_packets
                .with_label_values(&[direction])
                .inc();
            self.metrics
                .turn_relayed_bytes
                .with_label_values(&[direction])
                .inc_by(bytes as u64);
        } else {
            self.metrics.turn_dropped.inc();
        }
    }

    /// A datagram from a peer: to the client, on its channel if it has one, else in a Data
    /// indication; dropped without a permission for the peer.
    fn peer_datagram(&mut self, id: u64, from: SocketAddr, data: Bytes, now: Instant) {
        let Some(key) = self.by_id.get(&id) else {
            return;
        };
        let Some(allocation) = self.allocations.get(key) else {
            return;
        };
        let peer = allocation.aliases.get(&from).copied().unwrap_or(from);
        if !allocation.permitted(peer.ip(), now) || !self.settings.policy.allows(peer) {
            return;
        }
        // Its length must fit a STUN or ChannelData length field (u16) with the headers.
        if data.len() > MAX_RELAYED {
            self.metrics.turn_dropped.inc();
            return;
        }
        let stream = allocation.client.transport.is_stream();
        let out = match allocation.by_peer.get(&peer) {
            Some(number) => {
                // Over TCP and TLS ChannelData is padded to four bytes (RFC 8656 §12.5).
                let padded = if stream {
                    data.len().div_ceil(4) * 4
                } else {
                    data.len()
                };
                let mut out = BytesMut::with_capacity(4 + padded);
                out.put_u16(*number);
                out.put_u16(data.len() as u16);
                out.put_slice(&data);
                out.resize(4 + padded, 0);
                out.freeze()
            }
            None => {
                let mut msg = Message::new();
                let built = msg.build(&[
                    Box::new(TransactionId::new()),
                    Box::new(MessageType::new(METHOD_DATA, CLASS_INDICATION)),
                    Box::new(PeerAddress {
                        ip: peer.ip(),
                        port: peer.port(),
                    }),
                    Box::new(Data(data.to_vec())),
                ]);
                if built.is_err() {
                    return;
                }
                Bytes::from(msg.raw)
            }
        };
        let sent = allocation.client.sink.send(allocation.client.addr, out);
        self.count(sent, "to_client", data.len());
    }

    fn stun(&mut self, client: Client, data: &[u8], now: Instant) {
        let mut msg = Message::new();
        if msg.unmarshal_binary(data).is_err() {
            return;
        }
        let (method, class) = (msg.typ.method, msg.typ.class);
        if class == CLASS_INDICATION {
            if method == METHOD_SEND {
                self.send_indication(&client, &msg, now);
            }
            return;
        }
        if class != CLASS_REQUEST {
            return;
        }
        if method == METHOD_BINDING {
            let reply = self.reply(
                &msg,
                &[Box::new(XorMappedAddress {
                    ip: client.addr.ip(),
                    port: client.addr.port(),
                })],
                None,
            );
            self.answer(&client, reply);
            return;
        }
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            let reply = self.error(
                &msg,
                fail(CODE_BAD_REQUEST, "Unsupported method", "bad_request"),
                None,
                &client,
            );
            self.answer(&client, reply);
            return;
        }
        let (username, key) = match self.authenticate(&mut msg, &client) {
            Ok(v) => v,
            Err(reply) => {
                self.answer(&client, reply);
                return;
            }
        };
        let result = if method == METHOD_ALLOCATE {
            self.allocate(&client, &msg, &username, now)
        } else if let Some(allocation) = self.allocations.get(&(client.transport, client.addr)) {
            // Requests on an allocation use its username (RFC 8656 §5: 441 otherwise).
            if allocation.username != username {
                Err(fail(
                    CODE_WRONG_CREDENTIALS,
                    "Wrong Credentials",
                    "bad_credentials",
                ))
            } else if method == METHOD_REFRESH {
                self.refresh(&client, &msg, now)
            } else if method == METHOD_CREATE_PERMISSION {
                self.create_permission(&client, &msg, now)
            } else {
                self.channel_bind(&client, &msg, now)
            }
        } else {
            Err(fail(
                CODE_ALLOC_MISMATCH,
                "Allocation Mismatch",
                "bad_request",
            ))
        };
        let reply = match result {
            Ok(attributes) => self.reply(&msg, &attributes, Some(&key)),
            Err(failure) => self.error(&msg, failure, Some(&key), &client),
        };
        self.answer(&client, reply);
    }

    /// Checks the long-term credential of a request: its nonce (ours, for this address, fresh),
    /// its username (`expiry:identity`, not expired, checked on every request) and its
    /// MESSAGE-INTEGRITY under the password the secret gives that username. Returns the
    /// username and the integrity key, or the answer to send.
    fn authenticate(
        &mut self,
        msg: &mut Message,
        client: &Client,
    ) -> Result<(String, Vec<u8>), Option<Bytes>> {
        let now = unix_now();
        if !msg.contains(ATTR_MESSAGE_INTEGRITY) {
            return Err(self.challenge(msg, client, CODE_UNAUTHORIZED, "unauthenticated"));
        }
        let text = |attr| TextAttribute::get_from_as(msg, attr).map(|t| t.text);
        let (Ok(username), Ok(realm), Ok(nonce)) =
            (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            return Err(self.error(
                msg,
                fail(CODE_BAD_REQUEST, "Bad Request", "bad_request"),
                None,
                client,
            ));
        };
        match self.nonces.check(&nonce, client.addr, now) {
            Check::Valid => {}
            Check::Stale => {
                return Err(self.challenge(msg, client, CODE_STALE_NONCE, "stale_nonce"));
            }
            Check::Invalid => {
                return Err(self.challenge(msg, client, CODE_UNAUTHORIZED, "bad_credentials"));
            }
        }
        if realm != self.settings.realm {
            return Err(self.challenge(msg, client, CODE_UNAUTHORIZED, "bad_credentials"));
        }
        let password = match credentials::verify(&self.settings.secret, &username, now) {
            Ok(password) => password,
            Err(Refused::Expired) => {
                return Err(self.challenge(msg, client, CODE_UNAUTHORIZED, "expired"));
            }
            Err(Refused::Malformed) => {
                return Err(self.challenge(msg, client, CODE_UNAUTHORIZED, "bad_credentials"));
            }
        };
        let crypto = self.crypto.crypto();
        let Ok(key) =
            MessageIntegrity::long_term_integrity_key(username.clone(), realm, password, crypto)
        else {
            return Err(None);
        };
        if MessageIntegrity::check(msg, &key, crypto).is_err() {
            return Err(self.challenge(msg, client, CODE_UNAUTHORIZED, "bad_credentials"));
        }
        Ok((username, key))
    }

    /// 401 or 438 with our realm and a fresh nonce, unsigned (the client has no key yet).
    fn challenge(
        &self,
        msg: &Message,
        client: &Client,
        code: ErrorCode,
        metric: &'static str,
    ) -> Option<Bytes> {
        self.metrics.turn_refused.with_label_values(&[metric]).inc();
        let reason: &[u8] = if code == CODE_STALE_NONCE {
            b"Stale Nonce"
        } else {
            b"Unauthorized"
        };
        let mut out = Message::new();
        out.build(&[
            Box::new(msg.transaction_id),
            Box::new(MessageType::new(msg.typ.method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code,
                reason: reason.to_vec(),
            }),
            Box::new(TextAttribute::new(ATTR_REALM, self.settings.realm.clone())),
            Box::new(TextAttribute::new(
                ATTR_NONCE,
                self.nonces.issue(client.addr, unix_now()),
            )),
            Box::new(TextAttribute::new(ATTR_SOFTWARE, SOFTWARE.to_owned())),
            Box::new(FINGERPRINT),
        ])
        .ok()?;
        Some(Bytes::from(out.raw))
    }

    fn reply(
        &self,
        msg: &Message,
        attributes: &[Box<dyn Setter>],
        key: Option<&[u8]>,
    ) -> Option<Bytes> {
        let mut out = Message::new();
        out.build(&[
            Box::new(msg.transaction_id),
            Box::new(MessageType::new(msg.typ.method, CLASS_SUCCESS_RESPONSE)),
        ])
        .ok()?;
        for attribute in attributes {
            attribute.add_to(&mut out).ok()?;
        }
        self.seal(out, key)
    }

    fn error(
        &self,
        msg: &Message,
        failure: Failure,
        key: Option<&[u8]>,
        client: &Client,
    ) -> Option<Bytes> {
        self.metrics
            .turn_refused
            .with_label_values(&[failure.metric])
            .inc();
        debug!(client = %client.addr, code = failure.code.0, reason = failure.reason, "turn request refused");
        let mut out = Message::new();
        out.build(&[
            Box::new(msg.transaction_id),
            Box::new(MessageType::new(msg.typ.method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: failure.code,
                reason: failure.reason.as_bytes().to_vec(),
            }),
        ])
        .ok()?;
        self.seal(out, key)
    }

    /// SOFTWARE, MESSAGE-INTEGRITY when the request authenticated, FINGERPRINT.
    fn seal(&self, mut out: Message, key: Option<&[u8]>) -> Option<Bytes> {
        TextAttribute::new(ATTR_SOFTWARE, SOFTWARE.to_owned())
            .add_to(&mut out)
            .ok()?;
        if let Some(key) = key {
            MessageIntegrity::new_raw_integrity_with_provider(key.to_vec(), self.crypto.crypto())
                .add_to(&mut out)
                .ok()?;
        }
        FINGERPRINT.add_to(&mut out).ok()?;
        Some(Bytes::from(out.raw))
    }

    fn answer(&self, client: &Client, reply: Option<Bytes>) {
        if let Some(reply) = reply {
            if !client.sink.send(client.addr, reply) {
                self.metrics.turn_dropped.inc();
            }
        }
    }

    fn allocate(
        &mut self,
        client: &Client,
        msg: &Message,
        username: &str,
        now: Instant,
    ) -> Result<Vec<Box<dyn Setter>>, Failure> {
        let key = (client.transport, client.addr);
        if self.allocations.contains_key(&key) {
            return Err(fail(
                CODE_ALLOC_MISMATCH,
                "Allocation Mismatch",
                "bad_request",
            ));
        }
        let mut transport = RequestedTransport::default();
        if transport.get_from(msg).is_err() {
            return Err(fail(
                CODE_BAD_REQUEST,
                "Missing REQUESTED-TRANSPORT",
                "bad_request",
            ));
        }
        if transport.protocol != PROTO_UDP {
            return Err(fail(
                CODE_UNSUPPORTED_TRANS_PROTO,
                "Unsupported Transport Protocol",
                "bad_request",
            ));
        }
        // Reservations and even ports are for RTP/RTCP pairs; WebRTC multiplexes on one.
        if msg.contains(ATTR_RESERVATION_TOKEN) || msg.contains(ATTR_EVEN_PORT) {
            return Err(fail(
                CODE_BAD_REQUEST,
                "Reservations not supported",
                "bad_request",
            ));
        }
        let mut family = RequestedAddressFamily::default();
        let ipv6 = family.get_from(msg).is_ok() && family == REQUESTED_FAMILY_IPV6;
        let announced = if ipv6 {
            self.settings.relay_ipv6
        } else {
            self.settings.relay_ipv4
        };
        let Some(announced) = announced else {
            return Err(fail(
                CODE_ADDR_FAMILY_NOT_SUPPORTED,
                "Address Family not Supported",
                "bad_request",
            ));
        };
        if self.allocations.len() >= self.settings.max_allocations {
            return Err(fail(
                CODE_INSUFFICIENT_CAPACITY,
                "Insufficient Capacity",
                "capacity",
            ));
        }
        if self
            .per_user
            .get(identity_of(username))
            .copied()
            .unwrap_or(0)
            >= self.settings.max_allocations_per_user
        {
            return Err(fail(
                CODE_ALLOC_QUOTA_REACHED,
                "Allocation Quota Reached",
                "quota",
            ));
        }
        let socket = match bind_relay(ipv6) {
            Ok(socket) => Arc::new(socket),
            Err(e) => {
                tracing::warn!(error = %e, "turn relay socket");
                return Err(fail(
                    CODE_INSUFFICIENT_CAPACITY,
                    "Insufficient Capacity",
                    "capacity",
                ));
            }
        };
        let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        let relayed = SocketAddr::new(announced, port);
        // The asked lifetime within the maximum, but never below the default (RFC 8656 §7.2);
        // max_lifetime is at least the default (config validation).
        let lifetime = self
            .lifetime(msg)
            .map_or(DEFAULT_LIFETIME, |asked| asked.max(DEFAULT_LIFETIME));
        let id = self.next_id;
        self.next_id += 1;
        let reader = tokio::spawn(read_relay(
            id,
            socket.clone(),
            self.events.clone(),
            self.metrics.clone(),
        ));
        self.allocations.insert(
            key,
            Allocation {
                id,
                client: client.clone(),
                username: username.to_owned(),
                socket,
                relayed,
                reader,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                by_peer: HashMap::new(),
                aliases: HashMap::new(),
            },
        );
        self.by_id.insert(id, key);
        if let Sink::Stream(_, allocated) = &client.sink {
            allocated.store(true, Ordering::Relaxed);
        }
        *self
            .per_user
            .entry(identity_of(username).to_owned())
            .or_default() += 1;
        self.metrics
            .turn_allocations
            .set(self.allocations.len() as i64);
        self.metrics
            .turn_allocations_made
            .with_label_values(&[client.transport.label()])
            .inc();
        info!(client = %client.addr, transport = ?client.transport, %relayed, user = username, "turn allocation");
        Ok(vec![
            Box::new(RelayedAddress {
                ip: relayed.ip(),
                port: relayed.port(),
            }),
            Box::new(Lifetime(lifetime)),
            Box::new(XorMappedAddress {
                ip: client.addr.ip(),
                port: client.addr.port(),
            }),
        ])
    }

    /// The requested lifetime, within the maximum; None when the request names none.
    fn lifetime(&self, msg: &Message) -> Option<Duration> {
        let mut lifetime = Lifetime::default();
        lifetime.get_from(msg).ok()?;
        Some(lifetime.0.min(self.settings.max_lifetime))
    }

    fn refresh(
        &mut self,
        client: &Client,
        msg: &Message,
        now: Instant,
    ) -> Result<Vec<Box<dyn Setter>>, Failure> {
        let key = (client.transport, client.addr);
        let lifetime = self.lifetime(msg).unwrap_or(DEFAULT_LIFETIME);
        if lifetime.is_zero() {
            self.remove(key, "refreshed to zero");
        } else if let Some(allocation) = self.allocations.get_mut(&key) {
            allocation.expires = now + lifetime;
        }
        Ok(vec![Box::new(Lifetime(lifetime))])
    }

    fn create_permission(
        &mut self,
        client: &Client,
        msg: &Message,
        now: Instant,
    ) -> Result<Vec<Box<dyn Setter>>, Failure> {
        let peers = peer_addresses(msg);
        if peers.is_empty() {
            return Err(fail(
                CODE_BAD_REQUEST,
                "Missing XOR-PEER-ADDRESS",
                "bad_request",
            ));
        }
        self.check_peers(client, &peers)?;
        let policy = &self.settings.policy;
        let allocation = self
            .allocations
            .get_mut(&(client.transport, client.addr))
            .expect("checked by the caller");
        let new = peers
            .iter()
            .filter(|p| !allocation.permissions.contains_key(&p.ip()))
            .count();
        if allocation.permissions.len() + new > MAX_PERMISSIONS {
            return Err(fail(
                CODE_INSUFFICIENT_CAPACITY,
                "Too many permissions",
                "quota",
            ));
        }
        for peer in peers {
            allocation
                .permissions
                .insert(peer.ip(), now + PERMISSION_LIFETIME);
            let target = policy.route(peer);
            if target != peer {
                allocation.aliases.insert(target, peer);
            }
        }
        Ok(Vec::new())
    }

    /// Every peer must be of the relay's family (443) and allowed by the policy (403).
    fn check_peers(&self, client: &Client, peers: &[SocketAddr]) -> Result<(), Failure> {
        let allocation = &self.allocations[&(client.transport, client.addr)];
        for peer in peers {
            if peer.is_ipv4() != allocation.relayed.is_ipv4() {
                return Err(fail(
                    CODE_PEER_ADDR_FAMILY_MISMATCH,
                    "Peer Address Family Mismatch",
                    "bad_request",
                ));
            }
            if !self.settings.policy.allows(*peer) {
                info!(client = %client.addr, %peer, "turn peer refused by policy");
                return Err(fail(CODE_FORBIDDEN, "Forbidden", "forbidden_peer"));
            }
        }
        Ok(())
    }

    fn channel_bind(
        &mut self,
        client: &Client,
        msg: &Message,
        now: Instant,
    ) -> Result<Vec<Box<dyn Setter>>, Failure> {
        let mut number = ChannelNumber::default();
        // RFC 8656 §12: 0x4000 through 0x4FFF; the rest is reserved.
        if number.get_from(msg).is_err() || !(0x4000..=0x4FFF).contains(&number.0) {
            return Err(fail(CODE_BAD_REQUEST, "Bad CHANNEL-NUMBER", "bad_request"));
        }
        let Some(peer) = peer_addresses(msg).first().copied() else {
            return Err(fail(
                CODE_BAD_REQUEST,
                "Missing XOR-PEER-ADDRESS",
                "bad_request",
            ));
        };
        self.check_peers(client, &[peer])?;
        let target = self.settings.policy.route(peer);
        let allocation = self
            .allocations
            .get_mut(&(client.transport, client.addr))
            .expect("checked by the caller");
        // A channel stays with its peer and a peer with its channel while bound.
        let taken = allocation
            .channels
            .get(&number.0)
            .is_some_and(|(bound, _)| *bound != peer)
            || allocation
                .by_peer
                .get(&peer)
                .is_some_and(|n| *n != number.0);
        if taken {
            return Err(fail(
                CODE_BAD_REQUEST,
                "Channel already bound",
                "bad_request",
            ));
        }
        allocation
            .channels
            .insert(number.0, (peer, now + CHANNEL_LIFETIME));
        allocation.by_peer.insert(peer, number.0);
        allocation
            .permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME);
        if target != peer {
            allocation.aliases.insert(target, peer);
        }
        Ok(Vec::new())
    }

    fn send_indication(&mut self, client: &Client, msg: &Message, now: Instant) {
        // Indications carry no MESSAGE-INTEGRITY: the first XOR-PEER-ADDRESS is the peer, read
        // without the allocations `peer_addresses` makes (this is the data path of clients
        // that bind no channel).
        let (mut peer, mut data) = (PeerAddress::default(), Data::default());
        if peer.get_from(msg).is_err() || data.get_from(msg).is_err() {
            return;
        }
        let peer = SocketAddr::new(peer.ip, peer.port);
        let Some(allocation) = self.allocations.get(&(client.transport, client.addr)) else {
            return;
        };
        // A permission is for an IP (RFC 8656 §9); the policy is for exact addresses, so a
        // permission for Convene's media port opens no other port of that host.
        if !allocation.permitted(peer.ip(), now) || !self.settings.policy.allows(peer) {
            return;
        }
        let target = self.settings.policy.route(peer);
        self.to_peer(client.transport, client.addr, target, &data.0);
    }
}

/// The identity of a credential's username (`expiry:identity`).
fn identity_of(username: &str) -> &str {
    username
        .split_once(':')
        .map_or(username, |(_, identity)| identity)
}

/// Every XOR-PEER-ADDRESS of a message (CreatePermission may carry several), up to its
/// MESSAGE-INTEGRITY: what follows it is not covered and is ignored (RFC 8489 §14.5).
fn peer_addresses(msg: &Message) -> Vec<SocketAddr> {
    msg.attributes
        .0
        .iter()
        .take_while(|a| a.typ != ATTR_MESSAGE_INTEGRITY)
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .filter_map(|a| {
            let mut single = Message::new();
            single.transaction_id = msg.transaction_id;
            single.add(ATTR_XOR_PEER_ADDRESS, &a.value);
            let mut peer = PeerAddress::default();
            peer.get_from(&single).ok()?;
            Some(SocketAddr::new(peer.ip, peer.port))
        })
        .collect()
}

fn bind_relay(ipv6: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let (domain, addr): (Domain, SocketAddr) = if ipv6 {
        (Domain::IPV6, "[::]:0".parse().expect("literal"))
    } else {
        (Domain::IPV4, "0.0.0.0:0".parse().expect("literal"))
    };
    let socket = Socket::new(domain, Type::DGRAM, None)?;
    if ipv6 {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A relay socket's reader: every datagram to the relay's owner, dropped when it falls behind.
async fn read_relay(
    allocation: u64,
    socket: Arc<UdpSocket>,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let event = Event::FromPeer {
            allocation,
            from: crate::net::canonical(from),
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => metrics.turn_dropped.inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
