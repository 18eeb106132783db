//! One load-test peer: webrtc-rs' sans-I/O `RTCPeerConnection` on its own UDP socket, driven by
//! one task. Publishers send synthetic media; subscribers count what arrives (see `stats.rs`).
//! No decoding and no jitter buffer: what one peer costs is ICE, DTLS, SRTP and counting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Registry, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::stats::{Counters, Stream};
use super::LoadError;

/// Payload bytes per video packet (an MTU of 1200 leaves room for headers, SRTP and TURN).
const VIDEO_MTU: usize = 1150;
const FRAME_RATE: u32 = 30;
/// A keyframe (VP8 `P` bit clear) every this many frames.
const KEYFRAME_EVERY: u32 = 60;
const OPUS_FRAME: Duration = Duration::from_millis(20);
const OPUS_BYTES: usize = 80;

/// A peer connection with its socket, before and after negotiation.
pub struct ClientPeer {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
}

/// Where a sender's packets go: its negotiated payload type and its SSRC.
#[derive(Debug, Clone, Copy)]
struct Target {
    payload_type: u8,
    ssrc: u32,
}

/// What a peer's task reports while it runs.
#[derive(Default)]
pub struct PeerStatus {
    pub connected: AtomicBool,
    pub failed: AtomicBool,
    /// Microseconds from the start of the POST to ICE+DTLS connected.
    pub connect_us: AtomicU64,
    /// Microseconds from the start of the POST to the first media packet.
    pub first_packet_us: AtomicU64,
}

impl ClientPeer {
    /// A peer bound on the local address that routes to `server`; `publish` adds an audio and
    /// a video track to send, else two receive-only transceivers.
    pub fn new(
        server: SocketAddr,
        publish: bool,
    ) -> Result<(Self, Vec<RTCRtpSenderId>), LoadError> {
        let local_ip = route_to(server)?;
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))
            .map_err(|e| LoadError::Local(format!("binding a UDP socket: {e}")))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| LoadError::Local(e.to_string()))?;
        let _ = socket2::SockRef::from(&std_socket).set_recv_buffer_size(1 << 20);
        let local = std_socket
            .local_addr()
            .map_err(|e| LoadError::Local(e.to_string()))?;
        let socket =
            UdpSocket::from_std(std_socket).map_err(|e| LoadError::Local(e.to_string()))?;

        let mut media_engine = MediaEngine::default();
        media_engine
            .register_default_codecs()
            .map_err(|e| LoadError::Local(e.to_string()))?;
        // As browsers do: a viewer NACKs what it lost, a publisher answers the server's NACKs
        // from what it sent, so a lossy link shows what retransmission recovers.
        // A viewer also reports arrivals transport-wide (TWCC), as browsers do: the server's
        // bandwidth estimation then runs on real feedback, and what it costs is what it costs
        // behind real viewers (without feedback its send history holds every packet until it
        // ages out).
        let registry = if publish {
            Registry::new().with(Slot::NackResponder, NackResponderBuilder::new().build())
        } else {
            configure_twcc_receiver_only(
                Registry::new().with(Slot::NackGenerator, NackGeneratorBuilder::new().build()),
                &mut media_engine,
            )
            .map_err(|e| LoadError::Local(e.to_string()))?
        };
        let registry = configure_rtcp_reports(registry);
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(|e| LoadError::Local(e.to_string()))?;
        let mut senders = Vec::new();
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            if publish {
                let track = crate::sfu::subscriber::sending_track(
                    "convene-load",
                    &format!("load-{kind}"),
                    kind,
                    codec_of(kind),
                    rand::random(),
                );
                senders.push(
                    pc.add_track(track)
                        .map_err(|e| LoadError::Local(e.to_string()))?,
                );
            } else {
                pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .map_err(|e| LoadError::Local(e.to_string()))?;
            }
        }
        Ok((Self { pc, socket, local }, senders))
    }

    /// The offer to POST, with our one host candidate.
    pub fn offer(&mut self) -> Result<String, LoadError> {
        let local = |e: rtc::shared::error::Error| LoadError::Local(e.to_string());
        let offer = self.pc.create_offer(None).map_err(local)?;
        self.pc
            .set_local_description(Instant::now(), offer)
            .map_err(local)?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.local.ip().to_string(),
                port: self.local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(|e| LoadError::Local(e.to_string()))?;
        let init = RTCIceCandidate::from(&candidate).to_json().map_err(local)?;
        self.pc.add_local_candidate(init).map_err(local)?;
        self.pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| LoadError::Local("no local description".into()))
    }

    pub fn apply_answer(&mut self, sdp: String) -> Result<(), LoadError> {
        let answer = RTCSessionDescription::answer(sdp)
            .map_err(|e| LoadError::Protocol(format!("the answer does not parse: {e}")))?;
        self.pc
            .set_remote_description(Instant::now(), answer)
            .map_err(|e| LoadError::Protocol(format!("the answer was not accepted: {e}")))
    }

    /// Sends synthetic VP8 at `video_kbps` and Opus at 32 kbit/s until `stop`, counting every
    /// RTP packet handed to the connection in `sent`.
    pub async fn publish(
        mut self,
        senders: Vec<RTCRtpSenderId>,
        video_kbps: u32,
        status: Arc<PeerStatus>,
        sent: Arc<AtomicU64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let (audio, video) = (senders[0], senders[1]);
        let frame_bytes = (video_kbps as usize * 1000 / 8 / FRAME_RATE as usize).max(64);
        let mut payloader = rtc::rtp::codec::vp8::Vp8Payloader::default();
        let mut video_tick = tokio::time::interval(Duration::from_secs(1) / FRAME_RATE);
        let mut audio_tick = tokio::time::interval(OPUS_FRAME);
        let (mut video_seq, mut audio_seq) = (rand::random::<u16>(), rand::random::<u16>());
        let (mut video_ts, mut audio_ts) = (rand::random::<u32>(), rand::random::<u32>());
        let mut frame = vec![0u8; frame_bytes];
        let mut frames = 0u32;
        let mut buf = vec![0u8; 2048];
        // Resolved once the connection is up (the answer fixed them), not per packet.
        let (mut video_target, mut audio_target) = (None, None);
        loop {
            self.flush().await;
            self.events(&status, None);
            while self.pc.poll_read().is_some() {}
            let timeout = self.timeout();
            let connected = status.connected.load(Ordering::Relaxed);
            tokio::select! {
                _ = stop.changed() => break,
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = received {
                        self.read(&buf[..n], from);
                    }
                }
                _ = tokio::time::sleep(timeout) => {
                    let _ = self.pc.handle_timeout(Instant::now());
                }
                _ = video_tick.tick(), if connected => {
                    let Some(target) = self.cached_target(&mut video_target, video) else {
                        continue;
                    };
                    // A VP8 frame header byte: bit 0 clear on keyframes (RFC 6386 §9.1).
                    frame[0] = if frames.is_multiple_of(KEYFRAME_EVERY) { 0x10 } else { 0x11 };
                    frames += 1;
                    let Ok(payloads) = payloader.payload(VIDEO_MTU, &Bytes::copy_from_slice(&frame)) else {
                        continue;
                    };
                    let last = payloads.len().saturating_sub(1);
                    for (i, payload) in payloads.into_iter().enumerate() {
                        if self.write(video, target, (video_seq, video_ts, i == last), payload) {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        video_seq = video_seq.wrapping_add(1);
                    }
                    video_ts = video_ts.wrapping_add(90_000 / FRAME_RATE);
                }
                _ = audio_tick.tick(), if connected => {
                    let Some(target) = self.cached_target(&mut audio_target, audio) else {
                        continue;
                    };
                    // The Opus TOC byte, then when it was sent (for the one-way delay).
                    let mut payload = vec![0xFC; OPUS_BYTES];
                    payload[1..9].copy_from_slice(&super::stats::stamp_now().to_be_bytes());
                    let payload = Bytes::from(payload);
                    if self.write(audio, target, (audio_seq, audio_ts, true), payload) {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    audio_seq = audio_seq.wrapping_add(1);
                    audio_ts = audio_ts.wrapping_add(960);
                }
            }
        }
        self.close().await;
    }

    /// Counts every RTP packet that arrives in `counters` until `stop`.
    pub async fn receive(
        mut self,
        answer: &str,
        started: Instant,
        status: Arc<PeerStatus>,
        counters: Arc<Counters>,
        mut stop: watch::Receiver<bool>,
    ) {
        let clock_rates = clock_rates(answer);
        let mut streams: HashMap<u32, Stream> = HashMap::new();
        let mut buf = vec![0u8; 2048];
        let mut first = true;
        loop {
            self.flush().await;
            self.events(&status, Some(started));
            while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
                let RTCMessage::RtpPacket(_, packet) = message else {
                    continue;
                };
                let now = Instant::now();
                if first {
                    first = false;
                    status
                        .first_packet_us
                        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                let header = &packet.header;
                let stream = streams.entry(header.ssrc).or_insert_with(|| {
                    let rate = clock_rates.get(&header.payload_type).copied();
                    Stream::new(rate.unwrap_or(90_000), started)
                });
                let Some(grown) = stream.observe(header.sequence_number, header.timestamp, now)
                else {
                    continue; // a second copy of a packet
                };
                counters.packets.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes
                    .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
                counters.expected.fetch_add(grown, Ordering::Relaxed);
                if stream.clock_rate() == 48_000 && packet.payload.len() >= 9 {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&packet.payload[1..9]);
                    let delay = super::stats::stamp_now().saturating_sub(u64::from_be_bytes(sent));
                    counters.delay_us.fetch_add(delay, Ordering::Relaxed);
                    counters.delayed.fetch_add(1, Ordering::Relaxed);
                }
                // The subscriber's jitter is its worst stream's.
                let jitter = streams.values().map(Stream::jitter_us).max().unwrap_or(0);
                counters.jitter_us.store(jitter, Ordering::Relaxed);
            }
            let timeout = self.timeout();
            tokio::select! {
                _ = stop.changed() => break,
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = received {
                        self.read(&buf[..n], from);
                        // Whatever else is queued, without going back to the scheduler.
                        for _ in 0..64 {
                            match self.socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => self.read(&buf[..n], from),
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(timeout) => {
                    let _ = self.pc.handle_timeout(Instant::now());
                }
            }
        }
        self.close().await;
    }

    /// The payload type the answer gave a sender's codec, and the sender's SSRC.
    fn target(&mut self, sender: RTCRtpSenderId) -> Option<Target> {
        let mut sender = self.pc.rtp_sender(sender)?;
        let payload_type = sender
            .get_parameters()
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)?;
        let ssrc = sender.track().ssrcs().last()?;
        Some(Target { payload_type, ssrc })
    }

    fn cached_target(
        &mut self,
        slot: &mut Option<Target>,
        sender: RTCRtpSenderId,
    ) -> Option<Target> {
        if slot.is_none() {
            *slot = self.target(sender);
        }
        *slot
    }

    fn write(
        &mut self,
        sender: RTCRtpSenderId,
        target: Target,
        (sequence, timestamp, marker): (u16, u32, bool),
        payload: Bytes,
    ) -> bool {
        let Some(mut sender) = self.pc.rtp_sender(sender) else {
            return false;
        };
        let Target { payload_type, ssrc } = target;
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                marker,
                payload_type,
                sequence_number: sequence,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload,
        };
        sender.write_rtp(Instant::now(), packet).is_ok()
    }

    fn read(&mut self, datagram: &[u8], from: SocketAddr) {
        let _ = self.pc.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(datagram),
        });
    }

    fn timeout(&mut self) -> Duration {
        self.pc
            .poll_timeout()
            .map_or(Duration::from_millis(100), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(100))
    }

    fn events(&mut self, status: &PeerStatus, started: Option<Instant>) {
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                match state {
                    RTCPeerConnectionState::Connected => {
                        if let Some(started) = started {
                            status
                                .connect_us
                                .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                        status.connected.store(true, Ordering::Relaxed);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        status.failed.store(true, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(out) = self.pc.poll_write() {
            let _ = self
                .socket
                .send_to(&out.message, out.transport.peer_addr)
                .await;
        }
    }

    async fn close(mut self) {
        let _ = self.pc.close();
        self.flush().await;
    }
}

fn codec_of(kind: RtpCodecKind) -> RTCRtpCodec {
    match kind {
        RtpCodecKind::Audio => RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
        _ => RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
    }
}

/// Payload type → clock rate, from the `a=rtpmap` lines of an SDP (none if it does not parse).
fn clock_rates(sdp: &str) -> HashMap<u8, u32> {
    crate::sfu::sdp::Sdp::parse(sdp)
        .map(|sdp| sdp.clock_rates())
        .unwrap_or_default()
}

/// The local address the kernel routes to `server` from.
fn route_to(server: SocketAddr) -> Result<std::net::IpAddr, LoadError> {
    let unspecified: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let probe = std::net::UdpSocket::bind(unspecified)
        .and_then(|s| s.connect(server).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| LoadError::Unreachable(format!("no route to {server}: {e}")))?;
    Ok(probe.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_rates_come_from_rtpmap_lines() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        let rates = clock_rates(sdp);
        assert_eq!(rates.get(&111), Some(&48_000));
        assert_eq!(rates.get(&96), Some(&90_000));
    }
}
