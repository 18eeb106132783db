//! RTP forwarding: one published track, as plain RTP (or SRTP with a key we return), to a
//! host:port an external pipeline (ffmpeg, GStreamer) listens on, with the SDP that opens it.
//!
//! A forward is a tap on the track read by a task on the control plane, which rewrites the
//! SSRC and payload type, unwraps RED to its primary Opus, optionally encrypts, and sends from
//! its own UDP socket (never the media port). It ends when deleted, or when its track ends.
//! Destinations must lie in `rtp_forward_allowed_networks` (default: loopback), so the API
//! cannot aim UDP at arbitrary hosts, and a meeting holds at most `rtp_forward_max` forwards.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use rtc::shared::marshal::Marshal;
use tokio::sync::mpsc;

use crate::ids::TrackId;
use crate::sfu::tap::{TapInfo, TapPacket};
use crate::sfu::{MediaKind, Sfu};

/// Packets a forward's tap holds before the engine drops them.
const QUEUE: usize = 1_024;
const VIDEO_PAYLOAD_TYPE: u8 = 96;
const AUDIO_PAYLOAD_TYPE: u8 = 111;

#[derive(Debug, Clone)]
pub struct ForwardView {
    pub id: String,
    pub meeting_id: String,
    pub participant_id: String,
    pub track_id: TrackId,
    pub kind: MediaKind,
    pub destination: SocketAddr,
    pub ssrc: u32,
    pub payload_type: u8,
    pub codec: String,
    /// The session description a receiver opens (`ffmpeg -protocol_whitelist file,udp,rtp
    /// -i stream.sdp`).
    pub sdp: String,
    /// SRTP: the `AES_CM_128_HMAC_SHA1_80` master key and salt, base64 (RFC 4568 inline form,
    /// also in the SDP's `a=crypto`).
    pub srtp_key: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the track's codec cannot be forwarded: {0}")]
    Codec(String),
    #[error("this meeting already has {0} RTP forwards")]
    TooMany(usize),
    #[error("no such track")]
    NoTrack,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct Entry {
    view: ForwardView,
    tap: u64,
    task: tokio::task::JoinHandle<()>,
}

/// Every RTP forward of the server, by id. Locked only to add, list or remove one.
#[derive(Clone)]
pub struct Forwards {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    sfu: Sfu,
    per_meeting: usize,
    metrics: crate::metrics::Metrics,
}

/// What a forward needs to know of its track.
pub struct ForwardTarget {
    pub meeting_id: String,
    pub participant_id: String,
    pub track: TrackId,
    pub kind: MediaKind,
}

impl Forwards {
    pub fn new(sfu: Sfu, per_meeting: usize, metrics: crate::metrics::Metrics) -> Self {
        Self {
            inner: Arc::default(),
            sfu,
            per_meeting,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self, meeting_id: &str) -> Vec<ForwardView> {
        let mut views: Vec<ForwardView> = self
            .lock()
            .values()
            .filter(|e| e.view.meeting_id == meeting_id && !e.task.is_finished())
            .map(|e| e.view.clone())
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// Starts forwarding `target` to `destination` (already checked against the allow-list).
    pub async fn start(
        &self,
        target: ForwardTarget,
        destination: SocketAddr,
        srtp: bool,
    ) -> Result<ForwardView, ForwardError> {
        {
            let mut all = self.lock();
            all.retain(|_, e| !e.task.is_finished());
            let count = all
                .values()
                .filter(|e| e.view.meeting_id == target.meeting_id)
                .count();
            if count >= self.per_meeting {
                return Err(ForwardError::TooMany(self.per_meeting));
            }
        }
        let bind: SocketAddr = if destination.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = tokio::net::UdpSocket::bind(bind).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let info = self
            .sfu
            .attach_tap(target.track, 0, tx)
            .await
            .map_err(|_| ForwardError::NoTrack)?;
        let payload_type = if target.kind == MediaKind::Video {
            VIDEO_PAYLOAD_TYPE
        } else {
            AUDIO_PAYLOAD_TYPE
        };
        let Some(media) = sdp_media(&info, payload_type) else {
            let _ = self.sfu.detach_tap(target.track, info.id).await;
            return Err(ForwardError::Codec(info.mime_type));
        };
        let key: Option<[u8; 30]> = srtp.then(rand::random);
        let context = match key {
            Some(key) => Some(srtp_context(&key)?),
            None => None,
        };
        let srtp_key = key.map(|k| base64::engine::general_purpose::STANDARD.encode(k));
        let ssrc = rand::random::<u32>();
        let id = uuid::Uuid::now_v7().to_string();
        let sdp = session_description(&destination, &media, srtp_key.as_deref(), target.kind);
        let view = ForwardView {
            id: id.clone(),
            meeting_id: target.meeting_id,
            participant_id: target.participant_id,
            track_id: target.track,
            kind: target.kind,
            destination,
            ssrc,
            payload_type,
            codec: info.mime_type.clone(),
            sdp,
            srtp_key,
            created_at: crate::store::now_ms(),
        };
        let task = tokio::spawn(run(Sender {
            sfu: self.sfu.clone(),
            track: target.track,
            video: target.kind == MediaKind::Video,
            socket,
            destination,
            ssrc,
            payload_type,
            red_payload_type: info.red_payload_type,
            srtp: context,
            metrics: self.metrics.clone(),
            packets: rx,
        }));
        tracing::info!(forward = %id, track = %view.track_id, %destination, srtp, "RTP forward started");
        self.lock().insert(
            id,
            Entry {
                view: view.clone(),
                tap: info.id,
                task,
            },
        );
        Ok(view)
    }

    /// Stops one forward of `meeting_id`; false when it has none of that id.
    pub async fn stop(&self, meeting_id: &str, id: &str) -> bool {
        let entry = {
            let mut all = self.lock();
            match all.get(id) {
                Some(e) if e.view.meeting_id == meeting_id => all.remove(id),
                _ => None,
            }
        };
        let Some(entry) = entry else {
            return false;
        };
        let _ = self.sfu.detach_tap(entry.view.track_id, entry.tap).await;
        entry.task.abort();
        tracing::info!(forward = %id, "RTP forward stopped");
        true
    }
}

struct Sender {
    sfu: Sfu,
    track: TrackId,
    video: bool,
    socket: tokio::net::UdpSocket,
    destination: SocketAddr,
    ssrc: u32,
    payload_type: u8,
    red_payload_type: Option<u8>,
    srtp: Option<rtc::srtp::context::Context>,
    metrics: crate::metrics::Metrics,
    packets: mpsc::Receiver<TapPacket>,
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts a running forward; dropped when its task ends or is aborted.
struct Running(crate::metrics::Metrics);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.rtp_forwards.dec();
    }
}

/// Sends until the tap closes (the track ended) or the forward is stopped (aborted).
async fn run(mut sender: Sender) {
    sender.metrics.rtp_forwards.inc();
    let _running = Running(sender.metrics.clone());
    // The keyframe asked for at attach may reach the pipeline before it listens (Chromium
    // sends one only when asked): a few more in the first seconds.
    let mut asks = [500u64, 1_500, 3_000]
        .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms))
        .into_iter()
        .filter(|_| sender.video);
    let mut next_ask = asks.next();
    loop {
        let packet = tokio::select! {
            packet = sender.packets.recv() => match packet {
                Some(packet) => packet,
                None => return,
            },
            _ = sleep_until(next_ask) => {
                let _ = sender.sfu.request_keyframe(sender.track).await;
                next_ask = asks.next();
                continue;
            }
        };
        let payload = match sender.red_payload_type {
            Some(pt) if pt == packet.payload_type && !packet.payload.is_empty() => {
                match crate::sfu::red::Red::parse(&packet.payload) {
                    Some(red) => crate::sfu::red::block(&packet.payload, &red.primary),
                    None => continue,
                }
            }
            _ => packet.payload,
        };
        let rtp = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: packet.marker,
                payload_type: sender.payload_type,
                sequence_number: packet.sequence,
                timestamp: packet.timestamp,
                ssrc: sender.ssrc,
                ..Default::default()
            },
            payload,
        };
        let Ok(plain) = rtp.marshal() else { continue };
        let datagram = match &mut sender.srtp {
            Some(context) => match context.encrypt_rtp(&plain) {
                Ok(sealed) => sealed,
                Err(_) => continue,
            },
            None => plain,
        };
        // A receiver not listening yet (ICMP unreachable) is not an error worth stopping for.
        if sender
            .socket
            .send_to(&datagram, sender.destination)
            .await
            .is_ok()
        {
            sender.metrics.rtp_forward_packets.inc();
        }
    }
}

fn srtp_context(key: &[u8; 30]) -> Result<rtc::srtp::context::Context, ForwardError> {
    let provider = rtc::crypto::default_provider()
        .map_err(|e| ForwardError::Io(std::io::Error::other(e.to_string())))?;
    rtc::srtp::context::Context::new(
        &key[..16],
        &key[16..],
        rtc::srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_80,
        None,
        None,
        provider.crypto(),
    )
    .map_err(|e| ForwardError::Io(std::io::Error::other(e.to_string())))
}

/// The `a=rtpmap`/`a=fmtp` lines of the forwarded codec; `None` when it has no RTP mapping we
/// write.
fn sdp_media(info: &TapInfo, pt: u8) -> Option<String> {
    let mime = info.mime_type.to_ascii_lowercase();
    Some(match mime.as_str() {
        "video/vp8" => format!("a=rtpmap:{pt} VP8/90000\r\n"),
        "video/vp9" => format!("a=rtpmap:{pt} VP9/90000\r\n"),
        "video/av1" => format!("a=rtpmap:{pt} AV1/90000\r\n"),
        "video/h264" => {
            let fmtp = if info.fmtp.is_empty() {
                "packetization-mode=1".to_owned()
            } else {
                info.fmtp.clone()
            };
            format!("a=rtpmap:{pt} H264/90000\r\na=fmtp:{pt} {fmtp}\r\n")
        }
        "audio/opus" => format!("a=rtpmap:{pt} opus/48000/{}\r\n", info.channels.clamp(1, 2)),
        _ => return None,
    })
}

fn session_description(
    destination: &SocketAddr,
    media: &str,
    srtp_key: Option<&str>,
    kind: MediaKind,
) -> String {
    let family = if destination.is_ipv4() { "IP4" } else { "IP6" };
    let ip = destination.ip();
    let port = destination.port();
    let m = if kind == MediaKind::Video {
        "video"
    } else {
        "audio"
    };
    let pt = media
        .strip_prefix("a=rtpmap:")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("96");
    let (profile, crypto) = match srtp_key {
        Some(key) => (
            "RTP/SAVP",
            format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"),
        ),
        None => ("RTP/AVP", String::new()),
    };
    format!(
        "v=0\r\no=- 0 0 IN {family} {ip}\r\ns=Convene RTP forward\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m={m} {port} {profile} {pt}\r\n{media}{crypto}a=recvonly\r\n"
    )
}

/// Whether `ip` lies in one of `networks` (CIDR, e.g. `127.0.0.0/8`).
pub fn allowed(ip: std::net::IpAddr, networks: &[ipnet::IpNet]) -> bool {
    networks.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_for_vp8_and_srtp_opus() {
        let info = TapInfo {
            id: 1,
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            red_payload_type: None,
            fmtp: String::new(),
        };
        let dest: SocketAddr = "127.0.0.1:5004".parse().unwrap();
        let sdp = session_description(
            &dest,
            &sdp_media(&info, 96).unwrap(),
            None,
            MediaKind::Video,
        );
        assert!(
            sdp.contains("m=video 5004 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("c=IN IP4 127.0.0.1"));
        let opus = TapInfo {
            mime_type: "audio/opus".into(),
            channels: 2,
            ..info
        };
        let sdp = session_description(
            &dest,
            &sdp_media(&opus, 111).unwrap(),
            Some("a2V5"),
            MediaKind::Audio,
        );
        assert!(sdp.contains("m=audio 5004 RTP/SAVP 111"), "{sdp}");
        assert!(sdp.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:a2V5"));
    }

    #[test]
    fn the_allow_list_is_by_network() {
        let loopback: Vec<ipnet::IpNet> =
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(allowed("127.0.0.9".parse().unwrap(), &loopback));
        assert!(allowed("::1".parse().unwrap(), &loopback));
        assert!(!allowed("10.0.0.1".parse().unwrap(), &loopback));
        assert!(!allowed("8.8.8.8".parse().unwrap(), &loopback));
    }
}
