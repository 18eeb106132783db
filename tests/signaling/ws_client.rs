//! Clients of `/ws` for the signaling tests: [`Ws`], a WebSocket that records what the server
//! says (and how it closed), and [`MediaClient`], a meeting participant with a publisher and a
//! subscriber connection (webrtc-rs), as a browser would hold them: it offers its tracks on the
//! publisher, answers the server's offers on the subscriber, and records every packet per
//! remote track.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Mutex};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::{MediaStreamTrack, Track};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
};
use webrtc::rtp_transceiver::RtpTransceiver;

use crate::common::TestServer;

/// How long a test waits for a server message before failing.
pub const WAIT: Duration = Duration::from_secs(10);

// ---- the WebSocket ------------------------------------------------------------------------

/// A connected `/ws` socket. A reader task files every server message in order; offers go to
/// `offers` instead when a media client handles them.
pub struct Ws {
    writer: mpsc::UnboundedSender<Message>,
    inbox: mpsc::UnboundedReceiver<Value>,
    /// Read but not yet taken by `expect`.
    buffered: VecDeque<Value>,
    /// Every message received, in order.
    pub log: Arc<std::sync::Mutex<Vec<Value>>>,
    /// Set when the socket closed: the close code and reason (1006 when it just dropped).
    pub closed: watch::Receiver<Option<(u16, String)>>,
}

impl Ws {
    /// Opens `/ws{query}` (e.g. `?token=…`); the HTTP status when the upgrade is refused.
    pub async fn connect(server: &TestServer, query: &str) -> Result<Self, u16> {
        Self::connect_diverting(server, query, None).await
    }

    async fn connect_diverting(
        server: &TestServer,
        query: &str,
        offers: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Self, u16> {
        Self::connect_diverting_to(server.server.http_addr, query, offers).await
    }

    async fn connect_diverting_to(
        addr: std::net::SocketAddr,
        query: &str,
        offers: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Self, u16> {
        let url = format!("ws://{addr}/ws{query}");
        let (stream, _) = match tokio_tungstenite::connect_async(&url).await {
            Ok(connected) => connected,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                return Err(response.status().as_u16())
            }
            // Nobody listens (a node that died): status 0.
            Err(_) => return Err(0),
        };
        let (mut sink, mut source) = stream.split();
        let (writer, mut outgoing) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(None);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader_log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut close = (1006, String::new());
            while let Some(frame) = source.next().await {
                match frame {
                    Ok(Message::Text(text)) => {
                        let value: Value = serde_json::from_str(text.as_str())
                            .unwrap_or_else(|e| panic!("server sent non-JSON {text}: {e}"));
                        reader_log.lock().unwrap().push(value.clone());
                        match (&offers, value["type"].as_str()) {
                            (Some(offers), Some("offer")) => {
                                let _ = offers.send(value);
                            }
                            _ => {
                                let _ = inbox_tx.send(value);
                            }
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        if let Some(frame) = frame {
                            close = (u16::from(frame.code), frame.reason.to_string());
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            closed_tx.send_replace(Some(close));
        });
        Ok(Self {
            writer,
            inbox,
            buffered: VecDeque::new(),
            log,
            closed,
        })
    }

    pub fn send(&self, message: Value) {
        let _ = self.writer.send(Message::Text(message.to_string().into()));
    }

    pub fn send_text(&self, text: &str) {
        let _ = self.writer.send(Message::Text(text.to_owned().into()));
    }

    pub fn send_binary(&self, bytes: &[u8]) {
        let _ = self.writer.send(Message::Binary(bytes.to_vec().into()));
    }

    /// Closes the socket from our side (a dropped connection, as far as the session knows).
    pub fn drop_connection(&self) {
        let _ = self.writer.send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Away,
                reason: "test drops".into(),
            },
        )));
    }

    /// The next message of type `kind`, skipping (and keeping) others; panics after `WAIT`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(kind, |_| true).await
    }

    /// The next message of type `kind` that satisfies `accept`.
    pub async fn expect_where(&mut self, kind: &str, accept: impl Fn(&Value) -> bool) -> Value {
        match self.wait_where(kind, WAIT, accept).await {
            Some(message) => message,
            None => panic!(
                "no {kind} message within {WAIT:?}; received: {:?}",
                self.log.lock().unwrap()
            ),
        }
    }

    /// Like `expect_where`, but `None` when `within` passes.
    pub async fn wait_where(
        &mut self,
        kind: &str,
        within: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let matches = |m: &Value| m["type"] == kind && accept(m);
        if let Some(i) = self.buffered.iter().position(matches) {
            return self.buffered.remove(i);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(message)) if matches(&message) => return Some(message),
                Ok(Some(message)) => self.buffered.push_back(message),
                _ => return None,
            }
        }
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Value> {
        self.log.lock().unwrap().iter().cloned().collect()
    }

    /// Every message received so far (and still to come within `settle`) of type `kind`.
    pub async fn all_of(&mut self, kind: &str, settle: Duration) -> Vec<Value> {
        tokio::time::sleep(settle).await;
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == kind)
            .cloned()
            .collect()
    }

    /// Waits until the server closed the socket; its close code and reason.
    pub async fn closed(&self) -> (u16, String) {
        let mut closed = self.closed.clone();
        let result = tokio::time::timeout(WAIT, closed.wait_for(|c| c.is_some())).await;
        match result {
            Ok(Ok(value)) => value.clone().expect("set"),
            _ => panic!("the socket was not closed within {WAIT:?}"),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Connects with `?token=` and joins; the `joined` message.
    pub async fn join(server: &TestServer, token: &str) -> (Self, Value) {
        let mut ws = Self::connect(server, &format!("?token={token}"))
            .await
            .expect("upgrade accepted");
        ws.send(json!({"type": "join"}));
        let joined = ws.expect("joined").await;
        (ws, joined)
    }
}

// ---- a participant with media -------------------------------------------------------------

/// One RTP track the client sends, packet by packet.
struct SendTrack {
    track: Arc<TrackLocalStaticRTP>,
    transceiver: Arc<dyn RtpTransceiver>,
    ssrc: u32,
    kind: RtpCodecKind,
    payload_type: u8,
    sequence: u16,
}

/// What one remote track delivered on the subscriber connection.
#[derive(Debug, Clone, Default)]
pub struct RemoteTrack {
    /// The publisher's identity (the stream id the server gives the track).
    pub stream_id: String,
    pub payloads: Vec<Bytes>,
}

struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<u32>,
    candidates: Option<mpsc::UnboundedSender<RTCIceCandidateInit>>,
    received: Option<Arc<watch::Sender<HashMap<String, RemoteTrack>>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|n| *n += 1);
        }
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let (Some(candidates), Ok(init)) = (&self.candidates, event.candidate.to_json()) {
            let _ = candidates.send(init);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(received) = &self.received {
            tokio::spawn(record(Arc::clone(received), track));
        }
    }
}

async fn record(
    received: Arc<watch::Sender<HashMap<String, RemoteTrack>>>,
    track: Arc<dyn TrackRemote>,
) {
    let id = track.track_id().await.to_string();
    let stream_id = track.stream_id().await.to_string();
    received.send_modify(|tracks| {
        tracks.entry(id.clone()).or_default().stream_id = stream_id;
    });
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => received.send_modify(|tracks| {
                tracks
                    .entry(id.clone())
                    .or_default()
                    .payloads
                    .push(packet.payload)
            }),
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

struct Pc {
    pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<u32>,
}

/// The RTP header extension carrying audio levels (RFC 6464), which drives active speakers.
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

async fn build_pc(
    candidates: Option<mpsc::UnboundedSender<RTCIceCandidateInit>>,
    received: Option<Arc<watch::Sender<HashMap<String, RemoteTrack>>>>,
) -> Pc {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs().expect("codecs");
    media_engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )
        .expect("audio level extension");
    let registry =
        register_default_interceptors(Registry::new(), &mut media_engine).expect("interceptors");
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let (gathered_tx, gathered) = watch::channel(0);
    let handler = Arc::new(Handler {
        state: state_tx,
        gathered: gathered_tx,
        candidates,
        received,
    });
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await
        .expect("peer connection builds");
    Pc {
        pc: Arc::new(pc),
        state,
        gathered,
    }
}

impl Pc {
    async fn wait_gathered(&self, rounds: u32) {
        let mut gathered = self.gathered.clone();
        tokio::time::timeout(WAIT, gathered.wait_for(|n| *n >= rounds))
            .await
            .expect("ICE gathering completes")
            .expect("alive");
    }

    async fn wait_connected(&self) {
        let mut state = self.state.clone();
        let connected = tokio::time::timeout(
            WAIT,
            state.wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await;
        assert!(
            matches!(connected, Ok(Ok(_))),
            "not connected: {}",
            *self.state.borrow()
        );
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub fn h264() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/H264".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// A meeting participant over `/ws` with real media connections.
pub struct MediaClient {
    pub name: String,
    pub ws: Ws,
    pub joined: Value,
    /// When `joined` arrived (before the peer connections were built).
    pub joined_at: std::time::Instant,
    publisher: Pc,
    subscriber: Arc<Pc>,
    tracks: Mutex<HashMap<String, SendTrack>>,
    /// Per remote track id (the server's `tN`): its stream id and payloads.
    received: Arc<watch::Sender<HashMap<String, RemoteTrack>>>,
    /// Server offers answered so far.
    pub answered: watch::Receiver<u32>,
    publisher_candidates: Option<mpsc::UnboundedReceiver<RTCIceCandidateInit>>,
    trickle: bool,
    offers_sent: u32,
    /// The negotiated id of the audio-level extension, once the publisher is answered.
    audio_level_id: Option<u8>,
    /// The level (-dBov, 0 loudest) audio packets carry.
    pub audio_level: std::sync::atomic::AtomicU8,
    /// The codec of video tracks published from now on (VP8 unless set).
    pub video_codec: Option<RTCRtpCodec>,
}

impl MediaClient {
    /// Connects with `token`, joins, and answers the server's offers from now on. `trickle`: the
    /// publisher's offers carry no candidates; they follow as `candidate` messages.
    pub async fn join(server: &TestServer, name: &str, token: &str, trickle: bool) -> Self {
        Self::join_at(server.server.http_addr, name, token, trickle).await
    }

    /// The same, to a server at `addr` (one running as its own process).
    pub async fn join_at(
        addr: std::net::SocketAddr,
        name: &str,
        token: &str,
        trickle: bool,
    ) -> Self {
        Self::join_sending(addr, name, token, trickle, json!({"type": "join"})).await
    }

    /// The same, with this `join` message.
    pub async fn join_sending(
        addr: std::net::SocketAddr,
        name: &str,
        token: &str,
        trickle: bool,
        join: Value,
    ) -> Self {
        let (offers_tx, offers) = mpsc::unbounded_channel();
        let mut ws = Ws::connect_diverting_to(addr, &format!("?token={token}"), Some(offers_tx))
            .await
            .expect("upgrade accepted");
        ws.send(join);
        let joined = ws.expect("joined").await;
        Self::joined(ws, joined, offers, name, trickle).await
    }

    /// Joins a cluster through the node at `entry`: follows `wrong_node` to the node serving
    /// the meeting, and starts over at `entry` while the node named does not answer (it died and
    /// the registry does not know yet). `resume`: the join asks to resume. Panics after `within`.
    pub async fn join_cluster(
        entry: std::net::SocketAddr,
        name: &str,
        token: &str,
        resume: bool,
        within: Duration,
    ) -> Self {
        let deadline = tokio::time::Instant::now() + within;
        let mut addr = entry;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never joined the cluster"
            );
            let (offers_tx, offers) = mpsc::unbounded_channel();
            let Ok(mut ws) =
                Ws::connect_diverting_to(addr, &format!("?token={token}"), Some(offers_tx)).await
            else {
                addr = entry;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            ws.send(json!({"type": "join", "resume": resume}));
            let first = tokio::time::timeout(WAIT, ws.inbox.recv())
                .await
                .ok()
                .flatten();
            match first {
                Some(message) if message["type"] == "joined" => {
                    return Self::joined(ws, message, offers, name, false).await
                }
                Some(message) if message["code"] == "wrong_node" => {
                    let url = message["ws_url"].as_str().expect("wrong_node names ws_url");
                    addr = url
                        .strip_prefix("ws://")
                        .and_then(|rest| rest.strip_suffix("/ws"))
                        .and_then(|host| host.parse().ok())
                        .unwrap_or_else(|| panic!("ws_url {url}"));
                    assert_eq!(ws.closed().await.0, 4307, "wrong_node closes with 4307");
                }
                Some(message) => panic!("{name}: {message}"),
                None => {
                    addr = entry;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn joined(
        ws: Ws,
        joined: Value,
        offers: mpsc::UnboundedReceiver<Value>,
        name: &str,
        trickle: bool,
    ) -> Self {
        let joined_at = std::time::Instant::now();
        let received = Arc::new(watch::Sender::new(HashMap::new()));
        let (candidates_tx, candidates) = mpsc::unbounded_channel();
        let publisher = build_pc(trickle.then_some(candidates_tx), None).await;
        let subscriber = Arc::new(build_pc(None, Some(Arc::clone(&received))).await);
        let (answered_tx, answered) = watch::channel(0);
        tokio::spawn(answer_offers(
            Arc::clone(&subscriber),
            offers,
            ws.writer.clone(),
            answered_tx,
        ));
        Self {
            name: name.to_owned(),
            ws,
            joined,
            joined_at,
            publisher,
            subscriber,
            tracks: Mutex::new(HashMap::new()),
            received,
            answered,
            publisher_candidates: trickle.then_some(candidates),
            trickle,
            offers_sent: 0,
            audio_level_id: None,
            audio_level: std::sync::atomic::AtomicU8::new(127),
            video_codec: None,
        }
    }

    /// The server's last offer on the subscriber connection, as applied.
    pub async fn subscriber_offer(&self) -> String {
        self.subscriber
            .pc
            .remote_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default()
    }

    pub fn participant_id(&self) -> String {
        self.joined["you"]["participant_id"]
            .as_str()
            .expect("joined.you.participant_id")
            .to_owned()
    }

    /// Adds a send-only track `track_id` carrying `source`, declares it (`publish`), and
    /// negotiates the publisher connection (`offer` → `answer`).
    pub async fn publish(&mut self, sources: &[(&str, &str)]) {
        for (source, track_id) in sources {
            let kind = if source.contains("audio") || *source == "microphone" {
                RtpCodecKind::Audio
            } else {
                RtpCodecKind::Video
            };
            let codec = if kind == RtpCodecKind::Audio {
                opus()
            } else {
                self.video_codec.clone().unwrap_or_else(vp8)
            };
            let ssrc = rand::random::<u32>();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("stream-{}", self.name),
                (*track_id).to_owned(),
                format!("{} {source}", self.name),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            )));
            let transceiver = self
                .publisher
                .pc
                .add_transceiver_from_track(
                    Arc::clone(&track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await
                .expect("add_transceiver_from_track");
            self.ws
                .send(json!({"type": "publish", "source": source, "track_id": track_id}));
            self.tracks.lock().await.insert(
                (*track_id).to_owned(),
                SendTrack {
                    track,
                    transceiver,
                    ssrc,
                    kind,
                    payload_type: 0,
                    sequence: 0,
                },
            );
        }
        let answer = self.offer().await;
        assert_eq!(answer["type"], "answer", "{answer}");
        self.resolve_payload_types().await;
    }

    /// Sends the publisher's offer and applies the answer; returns the reply (`answer`, or the
    /// `error` that refused it).
    pub async fn offer(&mut self) -> Value {
        let rounds = *self.publisher.gathered.borrow();
        let offer = self
            .publisher
            .pc
            .create_offer(None)
            .await
            .expect("create_offer");
        self.publisher
            .pc
            .set_local_description(offer.clone())
            .await
            .expect("set_local_description");
        let sdp = if self.trickle || rounds > 0 {
            self.publisher
                .pc
                .local_description()
                .await
                .map(|d| d.sdp)
                .unwrap_or(offer.sdp)
        } else {
            self.publisher.wait_gathered(1).await;
            self.publisher
                .pc
                .local_description()
                .await
                .expect("local")
                .sdp
        };
        self.offers_sent += 1;
        let reference = format!("offer-{}", self.offers_sent);
        self.ws
            .send(json!({"type": "offer", "sdp": sdp, "ref": reference}));
        let reply = self
            .ws
            .expect_where("answer", |m| m["ref"] == reference.as_str())
            .await;
        let answer_sdp = reply["sdp"].as_str().unwrap().to_owned();
        self.audio_level_id = answer_sdp.lines().find_map(|line| {
            let rest = line.trim_end().strip_prefix("a=extmap:")?;
            let (id, uri) = rest.split_once(' ')?;
            (uri == AUDIO_LEVEL_URI).then(|| id.split('/').next()?.parse().ok())?
        });
        let answer = RTCSessionDescription::answer(answer_sdp).expect("answer parses");
        self.publisher
            .pc
            .set_remote_description(answer)
            .await
            .expect("set_remote_description(answer)");
        if let Some(mut candidates) = self.publisher_candidates.take() {
            let writer = self.ws.writer.clone();
            let mid = sdp
                .lines()
                .find_map(|l| l.trim_end().strip_prefix("a=mid:").map(str::to_owned));
            tokio::spawn(async move {
                while let Some(candidate) = candidates.recv().await {
                    let message = json!({
                        "type": "candidate",
                        "candidate": candidate.candidate,
                        "sdp_mid": mid,
                        "sdp_mline_index": 0,
                        "target": "publisher",
                    });
                    let _ = writer.send(Message::Text(message.to_string().into()));
                }
            });
        }
        reply
    }

    /// Sends an offer expected to be refused; the `error`.
    pub async fn offer_refused(&mut self, source: &str, track_id: &str) -> Value {
        let kind = if source == "microphone" || source == "screen_audio" {
            RtpCodecKind::Audio
        } else {
            RtpCodecKind::Video
        };
        let codec = if kind == RtpCodecKind::Audio {
            opus()
        } else {
            vp8()
        };
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("stream-{}", self.name),
            track_id.to_owned(),
            "refused".to_owned(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(rand::random()),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        )));
        self.publisher
            .pc
            .add_transceiver_from_track(
                track as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("add_transceiver_from_track");
        let offer = self
            .publisher
            .pc
            .create_offer(None)
            .await
            .expect("create_offer");
        self.ws
            .send(json!({"type": "offer", "sdp": offer.sdp, "ref": "refused"}));
        self.ws
            .expect_where("error", |m| m["ref"] == "refused")
            .await
    }

    async fn resolve_payload_types(&self) {
        for track in self.tracks.lock().await.values_mut() {
            if track.payload_type != 0 {
                continue;
            }
            let mime = track.track.codings().await[0].codec.mime_type.clone();
            let sender = track
                .transceiver
                .sender()
                .await
                .expect("transceiver alive")
                .expect("a sender");
            let parameters = sender.get_parameters().await.expect("sender parameters");
            track.payload_type = parameters
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
                .unwrap_or_else(|| panic!("{mime} was not negotiated"))
                .payload_type;
        }
    }

    pub async fn wait_publisher_connected(&self) {
        self.publisher.wait_connected().await;
    }

    pub async fn wait_subscriber_connected(&self) {
        self.subscriber.wait_connected().await;
    }

    /// Sends one packet on each of the given tracks; the payload names the client, the track
    /// and the sequence number, so receivers can tell whose packet they got.
    pub async fn send_round(&self, track_ids: &[&str]) {
        for track_id in track_ids {
            self.send_payload(track_id, None).await;
        }
    }

    /// One packet on `track_id`: `payload`, or (`None`) the tagged one `packets_from` counts.
    pub async fn send_payload(&self, track_id: &str, payload: Option<Bytes>) {
        let mut tracks = self.tracks.lock().await;
        {
            let track = tracks
                .get_mut(track_id)
                .unwrap_or_else(|| panic!("no track {track_id}"));
            track.sequence = track.sequence.wrapping_add(1);
            let payload = payload.unwrap_or_else(|| {
                Bytes::from(format!(
                    "{}|{}|{:06}|{}",
                    self.name,
                    track_id,
                    track.sequence,
                    "x".repeat(if track.kind == RtpCodecKind::Video {
                        600
                    } else {
                        80
                    })
                ))
            });
            let step = if track.kind == RtpCodecKind::Video {
                3_000
            } else {
                960
            };
            let mut header = rtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: track.payload_type,
                sequence_number: track.sequence,
                timestamp: u32::from(track.sequence).wrapping_mul(step),
                ssrc: track.ssrc,
                ..Default::default()
            };
            if let (RtpCodecKind::Audio, Some(id)) = (track.kind, self.audio_level_id) {
                let level = self.audio_level.load(std::sync::atomic::Ordering::Relaxed);
                // RFC 6464: voice-activity bit, then the level in -dBov.
                header
                    .set_extension(id, Bytes::from(vec![0x80 | (level & 0x7F)]))
                    .expect("audio level extension");
            }
            let packet = rtc::rtp::Packet { header, payload };
            track.track.write_rtp(packet).await.expect("write_rtp");
        }
    }

    /// One packet of real media on `track_id`, with its own marker and RTP timestamp.
    pub async fn send_packet(&self, track_id: &str, payload: Bytes, marker: bool, timestamp: u32) {
        let mut tracks = self.tracks.lock().await;
        let track = tracks
            .get_mut(track_id)
            .unwrap_or_else(|| panic!("no track {track_id}"));
        track.sequence = track.sequence.wrapping_add(1);
        let header = rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: track.payload_type,
            sequence_number: track.sequence,
            timestamp,
            ssrc: track.ssrc,
            ..Default::default()
        };
        let packet = rtc::rtp::Packet { header, payload };
        track.track.write_rtp(packet).await.expect("write_rtp");
    }

    /// Remote tracks received so far.
    pub fn received(&self) -> HashMap<String, RemoteTrack> {
        self.received.borrow().clone()
    }

    /// Packets received on remote track `track_id` whose payload came from `sender`'s
    /// `sender_track`.
    pub fn packets_from(&self, track_id: &str, sender: &str, sender_track: &str) -> usize {
        let prefix = format!("{sender}|{sender_track}|");
        self.received
            .borrow()
            .get(track_id)
            .map(|t| {
                t.payloads
                    .iter()
                    .filter(|p| p.starts_with(prefix.as_bytes()))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until remote track `track_id` delivered `n` packets of `sender`'s `sender_track`.
    pub async fn wait_packets(
        &self,
        track_id: &str,
        sender: &str,
        sender_track: &str,
        n: usize,
        within: Duration,
    ) -> usize {
        let prefix = format!("{sender}|{sender_track}|");
        let mut received = self.received.subscribe();
        let _ = tokio::time::timeout(
            within,
            received.wait_for(|tracks| {
                tracks.get(track_id).is_some_and(|t| {
                    t.payloads
                        .iter()
                        .filter(|p| p.starts_with(prefix.as_bytes()))
                        .count()
                        >= n
                })
            }),
        )
        .await;
        self.packets_from(track_id, sender, sender_track)
    }

    pub async fn close(&self) {
        let _ = self.publisher.pc.close().await;
        let _ = self.subscriber.pc.close().await;
    }
}

/// Answers every server offer on the subscriber connection, in order.
async fn answer_offers(
    subscriber: Arc<Pc>,
    mut offers: mpsc::UnboundedReceiver<Value>,
    writer: mpsc::UnboundedSender<Message>,
    answered: watch::Sender<u32>,
) {
    while let Some(offer) = offers.recv().await {
        assert!(
            offer["reset"] != true,
            "this client does not handle subscriber resets: {offer}"
        );
        let sdp = offer["sdp"].as_str().expect("offer.sdp").to_owned();
        let offer = RTCSessionDescription::offer(sdp).expect("offer parses");
        let first = *answered.borrow() == 0;
        subscriber
            .pc
            .set_remote_description(offer)
            .await
            .expect("set_remote_description(offer)");
        let answer = subscriber
            .pc
            .create_answer(None)
            .await
            .expect("create_answer");
        subscriber
            .pc
            .set_local_description(answer)
            .await
            .expect("set_local_description(answer)");
        if first {
            subscriber.wait_gathered(1).await;
        }
        let sdp = subscriber.pc.local_description().await.expect("local").sdp;
        let message = json!({"type": "answer", "sdp": sdp});
        let _ = writer.send(Message::Text(message.to_string().into()));
        answered.send_modify(|n| *n += 1);
    }
}
