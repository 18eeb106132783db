//! One peer connection held by the SFU: webrtc-rs' sans-I/O `RTCPeerConnection` plus what the
//! engine needs to route to it and report about it.
//!
//! Lifecycle: `Connecting` (answer sent, ICE/DTLS under way) → `Connected` → `Closed`. A peer
//! that stays `Connecting` past `connect_timeout`, or whose connection fails, is reaped.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::tcp_type::TcpType;
use std::sync::Arc;

use rtc::interceptor::{
    CongestionControlBuilder, NackGeneratorBuilder, PacerBuilder, ReceiverReportBuilder, Registry,
    SenderReportBuilder, Slot, TwccSenderBuilder,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

use super::error::SfuError;
use super::estimate::{Estimate, Estimator, PACING_FACTOR};
use super::rtcp::DeliverFeedback;
use super::subscriber::DownTrack;
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};

/// Why a peer exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRole {
    /// Sends media into the room (WHIP).
    Publisher,
    /// Receives one publisher's media (WHEP): `publisher` while it watches one, `None` while it
    /// waits for one (since `waiting_since`); `wanted`, the identity it asked for, if any.
    Subscriber {
        publisher: Option<PeerId>,
        wanted: Option<ParticipantId>,
        waiting_since: Option<Instant>,
    },
    /// Receives every other participant's tracks in the room; the server offers, and offers
    /// again whenever tracks come and go (WebSocket signaling).
    RoomSubscriber,
}

/// Renegotiation of a room subscriber, where the server offers: at most one offer in flight;
/// changes made meanwhile are offered together once its answer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Negotiation {
    /// Nothing to offer, nothing in flight.
    #[default]
    Stable,
    /// Tracks changed: an offer goes out when the peer is next serviced.
    OfferDue,
    /// An offer awaits the client's answer; `again`: tracks changed since it went out.
    AwaitingAnswer { again: bool },
}

impl Negotiation {
    /// Tracks changed.
    pub fn changed(self) -> Self {
        match self {
            Negotiation::AwaitingAnswer { .. } => Negotiation::AwaitingAnswer { again: true },
            _ => Negotiation::OfferDue,
        }
    }

    /// The client answered.
    pub fn answered(self) -> Self {
        match self {
            Negotiation::AwaitingAnswer { again: true } => Negotiation::OfferDue,
            _ => Negotiation::Stable,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
}

pub struct Peer {
    pub id: PeerId,
    pub room: RoomId,
    pub identity: ParticipantId,
    pub role: PeerRole,
    pub pc: RTCPeerConnection,
    pub state: PeerState,
    pub created_at: Instant,
    /// Our ICE ufrag: incoming STUN names the peer with it. It is the session's ICE
    /// generation (WHIP/WHEP show it as the resource's ETag).
    pub local_ufrag: String,
    /// The remote ufrag; a PATCH with another one is an ICE restart.
    pub remote_ufrag: String,
    /// Publisher: rtc track id of each inbound stream → our track.
    pub inbound: rustc_hash::FxHashMap<String, TrackId>,
    /// Publisher: tracks in m-line order.
    pub published: Vec<TrackId>,
    /// Subscriber: down tracks; `SubscriberRef::slot` indexes this.
    pub down_tracks: Vec<DownTrack>,
    /// The deadline this peer last asked for, to keep one timer entry per peer current.
    pub next_timeout: Option<Instant>,
    /// Queued in the engine's dirty list (input handled, output not yet polled).
    pub dirty: bool,
    /// Where the server's offers to a room subscriber stand.
    pub negotiation: Negotiation,
    pub quality: crate::sfu::quality::QualityTracker,
    /// A DTLS record arrived since the last service: look whether the client closed DTLS.
    pub dtls_input: bool,
    /// A subscriber leg's bandwidth estimate (its congestion control writes it).
    pub estimate: Option<Arc<Estimate>>,
    /// A cascade relay (see `relay.rs`): the publishing node's id of each track it receives,
    /// and the id the track takes here.
    pub relay_tracks: Vec<(TrackId, TrackId)>,
    /// A relay: what its receivers here want of each of its tracks (by the id here), as last
    /// told to the publishing node; absent until the track first has a receiver here (the
    /// other end starts with everything).
    pub relay_wishes: rustc_hash::FxHashMap<TrackId, super::relay_wish::RelayWish>,
    /// A room subscriber with manual subscriptions gets only these tracks; `None`: every other
    /// participant's track (automatic, the default).
    pub manual: Option<rustc_hash::FxHashSet<TrackId>>,
}

impl Peer {
    /// A new connection in `room`, connecting, with nothing negotiated on it yet: callers set
    /// what their kind of peer adds (credentials, down tracks, relay tracks, manual set).
    pub fn new(
        id: PeerId,
        room: RoomId,
        identity: ParticipantId,
        role: PeerRole,
        pc: RTCPeerConnection,
        estimate: Option<Arc<Estimate>>,
        now: Instant,
    ) -> Self {
        Self {
            id,
            room,
            identity,
            role,
            pc,
            state: PeerState::Connecting,
            created_at: now,
            local_ufrag: String::new(),
            remote_ufrag: String::new(),
            inbound: Default::default(),
            published: Vec::new(),
            down_tracks: Vec::new(),
            next_timeout: None,
            dirty: false,
            negotiation: Default::default(),
            quality: Default::default(),
            dtls_input: false,
            estimate,
            relay_tracks: Vec::new(),
            relay_wishes: Default::default(),
            manual: None,
        }
    }

    /// Whether a room subscriber takes `track` when it appears.
    pub fn takes(&self, track: TrackId) -> bool {
        self.manual
            .as_ref()
            .is_none_or(|wanted| wanted.contains(&track))
    }

    pub fn is_publisher(&self) -> bool {
        self.role == PeerRole::Publisher
    }

    /// A view-only (WHEP) session: it takes no participant's place in its room.
    pub fn is_viewer(&self) -> bool {
        matches!(self.role, PeerRole::Subscriber { .. })
    }

    /// Down track whose sender has this rtc track id (RTCP from the subscriber is tagged so).
    pub fn down_track_slot(&self, rtc_track_id: &str) -> Option<usize> {
        self.down_tracks
            .iter()
            .position(|d| d.rtc_track_id == rtc_track_id)
    }
}

/// Which way a leg's media flows: into the SFU (a publisher) or out of it (a subscriber).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegDirection {
    Receives,
    Sends,
}

/// How every peer connection is built: the same codecs, interceptors, timeouts and candidates.
#[derive(Debug, Clone)]
pub struct PeerFactory {
    /// Host candidates: one per announced address, all on the shared media port.
    pub candidate_addrs: Vec<SocketAddr>,
    /// Passive ICE-TCP candidates too, on the same addresses and port.
    pub ice_tcp: bool,
    pub ice_check_interval: Duration,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    pub nack_cache_packets: u16,
    pub audio_red: bool,
    pub bwe: super::BweConfig,
}

impl PeerFactory {
    /// A new connection, with (for a leg that sends) the estimate its congestion control
    /// publishes.
    pub fn new_peer_connection(
        &self,
        now: Instant,
        direction: LegDirection,
    ) -> Result<(RTCPeerConnection, Option<Arc<Estimate>>), SfuError> {
        let mut media_engine = MediaEngine::default();
        match direction {
            // Opus, VP8, VP9, H264 (several profiles), AV1; no RTX (see `codecs.rs`). The
            // mid/rid header extensions name a simulcast publisher's layers.
            LegDirection::Receives => {
                super::codecs::register_without_rtx(&mut media_engine)?;
                configure_simulcast_extension_headers(&mut media_engine)?;
            }
            // The same, with their RTX pairs.
            LegDirection::Sends => media_engine.register_default_codecs()?,
        }
        if self.audio_red {
            super::codecs::register_red(&mut media_engine)?;
        }
        // Video feedback the SFU relies on: NACK (retransmission), PLI and FIR (keyframes).
        for (typ, parameter) in [("nack", ""), ("nack", "pli"), ("ccm", "fir")] {
            let feedback = RTCPFeedback {
                typ: typ.into(),
                parameter: parameter.into(),
            };
            media_engine.register_feedback(feedback, RtpCodecKind::Video);
        }
        // Every interceptor in the chain costs each packet two moves through its queue, so a
        // leg carries only what its direction uses: a publisher's (media in) NACKs its losses,
        // reports reception and measures TWCC; a subscriber's (media out) sends sender
        // reports, numbers its packets transport-wide, estimates its bandwidth from the
        // subscriber's feedback (GCC) and paces. Both relay the RTCP the engine acts on
        // (NACKs are answered by the engine from the track's history).
        let mut estimate = None;
        let registry = match direction {
            LegDirection::Receives => {
                let registry = Registry::new()
                    .with(
                        Slot::NackGenerator,
                        NackGeneratorBuilder::new()
                            .with_size(self.nack_cache_packets)
                            .build(),
                    )
                    .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
                    // After the NACK/report interceptors (they act first), before the terminus.
                    .with(Slot::from(14_000), DeliverFeedback::default());
                configure_twcc_receiver_only(registry, &mut media_engine)?
            }
            LegDirection::Sends if !self.bwe.enabled => Registry::new()
                .with(Slot::SenderReport, SenderReportBuilder::new().build())
                .with(Slot::from(14_000), DeliverFeedback::default()),
            LegDirection::Sends => {
                for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
                    media_engine.register_feedback(
                        RTCPFeedback {
                            typ: "transport-cc".into(),
                            parameter: String::new(),
                        },
                        kind,
                    );
                    media_engine.register_header_extension(
                        RTCRtpHeaderExtensionCapability {
                            uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
                        },
                        kind,
                        None,
                    )?;
                }
                let bwe = self.bwe;
                let (estimator, shared) =
                    Estimator::new(bwe.initial as f64, bwe.min as f64, bwe.max as f64);
                estimate = Some(shared);
                let registry = Registry::new()
                    .with(Slot::SenderReport, SenderReportBuilder::new().build())
                    .with(Slot::from(14_000), DeliverFeedback::default())
                    .with(
                        Slot::CongestionControl,
                        CongestionControlBuilder::new(estimator).build(),
                    )
                    .with(Slot::TwccSender, TwccSenderBuilder::new().build());
                if bwe.pacer_queue_packets == 0 {
                    registry
                } else {
                    registry.with(
                        Slot::Pacer,
                        PacerBuilder::new()
                            .with_target_bitrate(bwe.max as f64 * PACING_FACTOR)
                            .with_queue_limit(bwe.pacer_queue_packets)
                            .build(),
                    )
                }
            }
        };
        // Audio level (RFC 6464) from publishers drives active-speaker detection.
        media_engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )?;

        let setting_engine = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(self.ice_check_interval), Some(50))
            // Browsers without camera permission send mDNS `.local` host candidates; resolving them
            // would send multicast from the server. Their peer-reflexive address is learned from
            // their connectivity checks instead.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(self.ice_disconnected_timeout),
                Some(self.ice_failed_timeout),
                Some(Duration::from_secs(2)),
            )
            .build();
        let pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(setting_engine)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)?;
        Ok((pc, estimate))
    }

    /// Adds one host candidate per announced address, and with ICE-TCP a passive TCP one on
    /// the same port (its lower type preference keeps UDP first). Called after the remote offer
    /// is set and before the answer is created, so the answer carries them (no trickle needed
    /// from us).
    pub fn add_host_candidates(&self, pc: &mut RTCPeerConnection) -> Result<(), SfuError> {
        self.add_host_candidates_on(pc, None)
    }

    /// The same, on `port` instead of the media port when given (a relay's socket), without
    /// ICE-TCP.
    pub fn add_host_candidates_on(
        &self,
        pc: &mut RTCPeerConnection,
        port: Option<u16>,
    ) -> Result<(), SfuError> {
        let networks: &[(&str, TcpType)] = if self.ice_tcp && port.is_none() {
            &[("udp", TcpType::Unspecified), ("tcp", TcpType::Passive)]
        } else {
            &[("udp", TcpType::Unspecified)]
        };
        for (network, tcp_type) in networks {
            for addr in &self.candidate_addrs {
                let candidate = CandidateHostConfig {
                    base_config: CandidateConfig {
                        network: (*network).to_owned(),
                        address: addr.ip().to_string(),
                        port: port.unwrap_or(addr.port()),
                        component: 1,
                        ..Default::default()
                    },
                    tcp_type: *tcp_type,
                }
                .new_candidate_host()
                .map_err(|e| SfuError::Internal(e.to_string()))?;
                let init = RTCIceCandidate::from(&candidate).to_json()?;
                pc.add_local_candidate(init)?;
            }
        }
        Ok(())
    }

    /// The local address to report for a datagram that reached `destination_ip`: the candidate
    /// address ICE knows, which differs from the real one behind a NAT 1:1 mapping.
    pub fn local_addr_for(&self, destination_ip: Option<IpAddr>) -> SocketAddr {
        let first = self.candidate_addrs[0];
        let Some(ip) = destination_ip else {
            return first;
        };
        self.candidate_addrs
            .iter()
            .find(|c| c.ip() == ip)
            .or_else(|| {
                self.candidate_addrs
                    .iter()
                    .find(|c| c.is_ipv4() == ip.is_ipv4() && !c.ip().is_loopback())
            })
            .copied()
            .unwrap_or(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_during_an_offer_are_offered_once_it_is_answered() {
        let mut n = Negotiation::Stable.changed();
        assert_eq!(n, Negotiation::OfferDue);
        n = Negotiation::AwaitingAnswer { again: false };
        assert_eq!(n.answered(), Negotiation::Stable);
        n = n.changed().changed();
        assert_eq!(n, Negotiation::AwaitingAnswer { again: true });
        assert_eq!(n.answered(), Negotiation::OfferDue);
    }

    #[test]
    fn nat_mapping_prefers_exact_then_public() {
        let factory = PeerFactory {
            candidate_addrs: vec![
                "203.0.113.5:50000".parse().unwrap(),
                "127.0.0.1:50000".parse().unwrap(),
            ],
            ice_tcp: true,
            ice_check_interval: Duration::from_millis(20),
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(15),
            nack_cache_packets: 1024,
            audio_red: true,
            bwe: crate::sfu::BweConfig {
                enabled: true,
                initial: 1_000_000,
                min: 100_000,
                max: 20_000_000,
                pacer_queue_packets: 512,
            },
        };
        assert_eq!(
            factory
                .local_addr_for(Some("127.0.0.1".parse().unwrap()))
                .ip()
                .to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            factory
                .local_addr_for(Some("10.0.0.7".parse().unwrap()))
                .ip()
                .to_string(),
            "203.0.113.5"
        );
        assert_eq!(factory.local_addr_for(None).ip().to_string(), "203.0.113.5");
    }
}
