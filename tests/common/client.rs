//! WHIP publishers and WHEP subscribers built on the async `webrtc` crate, so the media tests
//! talk to a real server the way a real client does: SDP over HTTP, then ICE, DTLS and SRTP
//! over UDP.
//!
//! [`Peer`] is what both roles share (the connection, its state, offers and answers);
//! [`Session`] is the WHIP/WHEP resource the server created (`Location`, `ETag`, PATCH,
//! DELETE). [`WhipPublisher`] adds two send-only tracks whose RTP the test writes packet by
//! packet; [`WhepSubscriber`] records every packet its receive-only tracks get.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH, LOCATION};
use reqwest::StatusCode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::{RTCConfiguration, RTCOfferOptions};
use rtc::peer_connection::transport::RTCDtlsTransportState;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
pub use rtc::rtp_transceiver::rtp_sender::RtpCodecKind as Kind;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::{MediaStreamTrack, Track};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry,
};
use webrtc::rtp_transceiver::RtpTransceiver;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

use super::TestServer;

/// The payload type test clients register `audio/red` with (Chromium's).
pub const RED_PAYLOAD_TYPE: u8 = 63;

/// How long a connection may take to reach `connected` before the test fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
const SDP: &str = "application/sdp";
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

// ---- the peer connection both roles share -----------------------------------------------

/// How a test peer differs from the default one.
pub struct PeerOptions {
    /// ICE servers and transport policy (relay-only through TURN, say).
    pub configuration: Option<RTCConfiguration>,
    /// The address its UDP socket binds to; empty: no UDP at all (as behind a firewall that
    /// blocks it).
    pub bind: &'static str,
    /// ICE-TCP: the address its TCP candidates (active: it connects) bind to.
    pub tcp: Option<&'static str>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            configuration: None,
            bind: "127.0.0.1:0",
            tcp: None,
        }
    }
}

/// A webrtc-rs peer connection on 127.0.0.1 with default codecs and interceptors, and watches
/// on its connection state and ICE gathering.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    /// Completed ICE gathering rounds: 1 after the first, 2 after an ICE restart's, ...
    gathered: watch::Receiver<u32>,
    /// Set: every datagram this connection sends is dropped.
    network_cut: Arc<AtomicBool>,
    /// Inbound media to lose on the way in.
    inbound_loss: Arc<InboundLoss>,
}

impl Peer {
    async fn build(with_keyframe_requests: bool, inboxes: Option<Arc<Inboxes>>) -> Self {
        Self::build_with(with_keyframe_requests, inboxes, false).await
    }

    /// `red`: redundant audio (`audio/red` around Opus, as Chromium offers it) is registered
    /// after the default codecs.
    async fn build_with(
        with_keyframe_requests: bool,
        inboxes: Option<Arc<Inboxes>>,
        red: bool,
    ) -> Self {
        Self::build_configured(with_keyframe_requests, inboxes, red, PeerOptions::default()).await
    }

    async fn build_configured(
        with_keyframe_requests: bool,
        inboxes: Option<Arc<Inboxes>>,
        red: bool,
        options: PeerOptions,
    ) -> Self {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_default_codecs()
            .expect("default codecs");
        if red {
            media_engine
                .register_codec(
                    rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: "audio/red".to_owned(),
                            clock_rate: 48_000,
                            channels: 2,
                            sdp_fmtp_line: "111/111".to_owned(),
                            rtcp_feedback: vec![],
                        },
                        payload_type: RED_PAYLOAD_TYPE,
                    },
                    Kind::Audio,
                )
                .expect("red registers");
        }
        let mut registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .expect("default interceptors");
        if with_keyframe_requests {
            // Application-most, so every other interceptor has seen the RTCP first.
            registry = registry.with(Slot::from(14_000), KeyframeRequestsToApp::default());
        }
        let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (gathered, gathered_rx) = watch::channel(0);
        let handler = Arc::new(Events {
            state,
            gathered,
            inboxes,
        });
        let network_cut = Arc::new(AtomicBool::new(false));
        let inbound_loss = Arc::new(InboundLoss::default());
        let runtime = CuttableRuntime {
            cut: Arc::clone(&network_cut),
            loss: Arc::clone(&inbound_loss),
        };
        let mut builder = PeerConnectionBuilder::new();
        if let Some(configuration) = options.configuration {
            builder = builder.with_configuration(configuration);
        }
        if let Some(tcp) = options.tcp {
            builder = builder.with_tcp_addrs(vec![tcp]);
        }
        let udp: Vec<&str> = [options.bind]
            .into_iter()
            .filter(|b| !b.is_empty())
            .collect();
        let pc = builder
            .with_runtime(Arc::new(runtime))
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(udp)
            .build()
            .await
            .expect("peer connection builds");
        Self {
            pc: Arc::new(pc),
            state: state_rx,
            gathered: gathered_rx,
            network_cut,
            inbound_loss,
        }
    }

    /// The next `count` RTP datagrams of `payload_type` that reach this connection are lost:
    /// their SRTP authentication tag is spoiled, so the receiver drops them as a lossy link
    /// would have (and can still accept a retransmission of the same packet).
    pub fn lose_incoming_rtp(&self, payload_type: u8, count: u32) {
        self.inbound_loss
            .payload_type
            .store(payload_type, Ordering::Relaxed);
        self.inbound_loss.remaining.store(count, Ordering::Relaxed);
    }

    /// How many inbound datagrams [`Peer::lose_incoming_rtp`] has lost so far.
    pub fn lost_incoming(&self) -> u32 {
        self.inbound_loss.lost.load(Ordering::Relaxed)
    }

    /// From now on nothing this connection sends reaches anyone.
    pub fn cut_network(&self) {
        self.network_cut.store(true, Ordering::Relaxed);
    }

    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Waits until the connection state satisfies `done`; false if `within` passed first.
    pub async fn wait_state(
        &self,
        within: Duration,
        done: impl FnMut(&RTCPeerConnectionState) -> bool,
    ) -> bool {
        wait_for(&self.state, within, done).await
    }

    /// Resolves when the connection is disconnected, failed or closed, with that state.
    pub async fn connection_lost(&self) -> RTCPeerConnectionState {
        let lost = |s: &RTCPeerConnectionState| {
            matches!(
                s,
                RTCPeerConnectionState::Disconnected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        };
        let mut state = self.state.clone();
        let result = state.wait_for(lost).await.map(|s| *s);
        result.unwrap_or(RTCPeerConnectionState::Closed)
    }

    /// Resolves once the DTLS transport is closed (the remote sent `close_notify`).
    pub async fn transport_closed(&self) {
        loop {
            if self.dtls_state().await == Some(RTCDtlsTransportState::Closed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The DTLS transport's state, seen through the first receiver (webrtc-rs makes one when
    /// its track's first packet arrives) or, on a publisher, the first sender; `None` before.
    async fn dtls_state(&self) -> Option<RTCDtlsTransportState> {
        if let Some(receiver) = self.pc.get_receivers().await.into_iter().next() {
            if let Ok(Some(transport)) = receiver.transport().await {
                return transport.state().await.ok();
            }
        }
        let sender = self.pc.get_senders().await.into_iter().next()?;
        let transport = sender.transport().await.ok().flatten()?;
        transport.state().await.ok()
    }

    /// Resolves when the server ended the connection: DTLS closed, or the connection lost.
    pub async fn closed_by_server(&self) {
        tokio::select! {
            _ = self.transport_closed() => {}
            _ = self.connection_lost() => {}
        }
    }

    /// Waits for `connected`, failing the test if it does not come within `within`.
    pub async fn wait_connected(&self, within: Duration) {
        assert!(
            self.wait_state(within, |s| *s == RTCPeerConnectionState::Connected)
                .await,
            "not connected within {within:?}; state is {}",
            self.state()
        );
    }

    /// Creates an offer and applies it locally. With `gathered`, waits for ICE gathering to
    /// complete and returns the local description (candidates included); otherwise returns
    /// the offer as created, which carries no candidates.
    pub async fn offer(&self, options: Option<RTCOfferOptions>, gathered: bool) -> String {
        let rounds = *self.gathered.borrow();
        let offer = self.pc.create_offer(options).await.expect("create_offer");
        self.pc
            .set_local_description(offer.clone())
            .await
            .expect("set_local_description(offer)");
        if !gathered {
            return offer.sdp;
        }
        self.wait_gathered(rounds + 1).await;
        self.local_sdp().await
    }

    /// Waits until `rounds` ICE gathering rounds have completed.
    pub async fn wait_gathered(&self, rounds: u32) {
        let mut gathered = self.gathered.clone();
        tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|n| *n >= rounds))
            .await
            .expect("ICE gathering completes")
            .expect("peer connection alive");
    }

    pub fn gathering_rounds(&self) -> u32 {
        *self.gathered.borrow()
    }

    pub async fn local_sdp(&self) -> String {
        self.pc
            .local_description()
            .await
            .expect("a local description")
            .sdp
    }

    pub async fn remote_sdp(&self) -> String {
        self.pc
            .remote_description()
            .await
            .expect("a remote description")
            .sdp
    }

    pub async fn apply_answer(&self, sdp: &str) {
        let answer = RTCSessionDescription::answer(sdp.to_owned()).expect("answer parses");
        self.pc
            .set_remote_description(answer)
            .await
            .expect("set_remote_description(answer)");
        // webrtc-rs connects to passive TCP candidates only when they are added one by one (it
        // does not for those in a description): hand it the answer's.
        for line in candidate_lines(sdp) {
            if line.contains(" tcptype passive") {
                let init = rtc::peer_connection::transport::RTCIceCandidateInit {
                    candidate: line.trim_start_matches("a=").to_owned(),
                    sdp_mid: sdp_attribute(sdp, "mid").map(str::to_owned),
                    sdp_mline_index: Some(0),
                    ..Default::default()
                };
                self.pc
                    .add_ice_candidate(init)
                    .await
                    .expect("add_ice_candidate(tcp)");
            }
        }
    }

    pub async fn close(&self) {
        self.pc.close().await.expect("close");
    }
}

/// Receives the connection's callbacks. The trait is declared with `#[async_trait]`; the
/// methods below are its expansion, written out so the tests need no extra dependency.
struct Events {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<u32>,
    inboxes: Option<Arc<Inboxes>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|rounds| *rounds += 1);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(inboxes) = &self.inboxes {
            tokio::spawn(record_track(Arc::clone(inboxes), track));
        }
    }
}

/// Waits until the watched value satisfies `done`; false if `within` passed first.
async fn wait_for<T>(
    watched: &watch::Receiver<T>,
    within: Duration,
    done: impl FnMut(&T) -> bool,
) -> bool {
    let mut watched = watched.clone();
    let result = tokio::time::timeout(within, watched.wait_for(done)).await;
    matches!(result, Ok(Ok(_)))
}

// ---- a network that can be cut ----------------------------------------------------------

static TOKIO: TokioRuntime = TokioRuntime;

/// The tokio runtime, except that the UDP sockets it wraps can be silenced: once `cut` is set
/// nothing leaves the connection any more (no consent checks, no DTLS close_notify), which is
/// what the server sees of a client whose network dropped or whose process was killed.
#[derive(Debug)]
struct CuttableRuntime {
    cut: Arc<AtomicBool>,
    loss: Arc<InboundLoss>,
}

/// Inbound RTP of one payload type to lose, and how many were lost.
#[derive(Debug, Default)]
struct InboundLoss {
    payload_type: AtomicU8,
    remaining: AtomicU32,
    lost: AtomicU32,
}

impl InboundLoss {
    /// Spoils `datagram` if it is RTP of the payload type and losses remain.
    fn apply(&self, datagram: &mut [u8]) {
        let is_rtp = datagram.len() > 12 && (128..192).contains(&datagram[0]);
        if !is_rtp || datagram[1] & 0x7f != self.payload_type.load(Ordering::Relaxed) {
            return;
        }
        let taken = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if taken.is_ok() {
            if let Some(last) = datagram.last_mut() {
                *last ^= 0xff;
            }
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Runtime for CuttableRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TOKIO.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(CuttableSocket {
            inner: TOKIO.wrap_udp_socket(socket)?,
            cut: Arc::clone(&self.cut),
            loss: Arc::clone(&self.loss),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TOKIO.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TOKIO.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TOKIO.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TOKIO.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TOKIO.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TOKIO.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TOKIO.yield_now()
    }
}

#[derive(Debug)]
struct CuttableSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    cut: Arc<AtomicBool>,
    loss: Arc<InboundLoss>,
}

impl AsyncUdpSocket for CuttableSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if self.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(transmit.contents.len()));
        }
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &received {
            if self.loss.remaining.load(Ordering::Relaxed) > 0 {
                for (buf, meta) in bufs.iter_mut().zip(meta.iter()).take(*count) {
                    // With GRO one buffer holds several datagrams, `stride` bytes apart.
                    let stride = meta.stride.clamp(1, meta.len.max(1));
                    for datagram in buf[..meta.len].chunks_mut(stride) {
                        self.loss.apply(datagram);
                    }
                }
            }
        }
        received
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

// ---- the WHIP/WHEP resource -------------------------------------------------------------

/// A non-2xx answer from the server, with its JSON error code when it sent one.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub body: String,
}

impl HttpError {
    /// `error.code` of the JSON error envelope.
    pub fn code(&self) -> String {
        error_code(&self.body)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.body)
    }
}

/// `error.code` of a JSON error envelope (`{"error":{"code":…,"message":…}}`), or the body
/// itself when it is not one.
pub fn error_code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<not a JSON error: {body}>"))
}

/// A session resource the server created: where it lives and how to address it.
#[derive(Debug, Clone)]
pub struct Session {
    http: reqwest::Client,
    token: String,
    /// `Location` as the server sent it (a path).
    pub location: String,
    /// Absolute URL of `location`.
    pub url: String,
    pub etag: String,
    /// The SDP offer POSTed, and the server's answer.
    pub offer: String,
    pub answer: String,
    /// Every `Link` header of the 201.
    pub links: Vec<String>,
}

impl Session {
    /// POSTs `offer` to `path` (`/whip/{room}` or `/whep/{room}[?publisher=…]`).
    pub async fn create(
        server: &TestServer,
        path: &str,
        token: &str,
        offer: String,
    ) -> Result<Self, HttpError> {
        // A cluster node answers 307 for a room served elsewhere. Followed here, sending the
        // token again: HTTP clients drop Authorization on a redirect to another origin.
        static NO_REDIRECTS: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let client = NO_REDIRECTS.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap()
        });
        let mut url = server.url(path);
        let mut redirects = 0;
        let response = loop {
            let response = client
                .post(&url)
                .header(CONTENT_TYPE, SDP)
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .body(offer.clone())
                .send()
                .await
                .expect("POST reaches the server");
            if response.status() != StatusCode::TEMPORARY_REDIRECT || redirects == 3 {
                break response;
            }
            redirects += 1;
            url = response.headers()[LOCATION].to_str().unwrap().to_owned();
        };
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, etag) = (header(LOCATION), header(ETAG));
        let links = response
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let body = response.text().await.expect("POST body");
        if status != StatusCode::CREATED {
            return Err(HttpError { status, body });
        }
        let location = location.expect("201 carries Location");
        Ok(Self {
            http: server.http.clone(),
            token: token.to_owned(),
            // In a cluster the node serving the room answers with an absolute URL.
            url: if location.starts_with("http") {
                location.clone()
            } else {
                server.url(&location)
            },
            location,
            etag: etag.expect("201 carries ETag"),
            offer,
            answer: body,
            links,
        })
    }

    /// PATCHes an `application/trickle-ice-sdpfrag` body, with `If-Match` if given.
    pub async fn patch(&self, if_match: Option<&str>, fragment: &str) -> reqwest::Response {
        let mut request = self
            .http
            .patch(&self.url)
            .header(CONTENT_TYPE, SDPFRAG)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .body(fragment.to_owned());
        if let Some(tag) = if_match {
            request = request.header(IF_MATCH, tag);
        }
        request.send().await.expect("PATCH reaches the server")
    }

    pub async fn delete(&self) -> reqwest::Response {
        self.http
            .delete(&self.url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .send()
            .await
            .expect("DELETE reaches the server")
    }
}

/// Offers `peer`'s media to `path` and applies the answer. `gathered`: wait for ICE gathering
/// so the offer carries our candidates (no trickle needed).
async fn negotiate(
    server: &TestServer,
    peer: &Peer,
    path: &str,
    token: &str,
    gathered: bool,
) -> Result<Session, HttpError> {
    let offer = peer.offer(None, gathered).await;
    let session = Session::create(server, path, token, offer).await?;
    peer.apply_answer(&session.answer).await;
    Ok(session)
}

// ---- SDP and sdpfrag text ---------------------------------------------------------------

/// The value of the first `a=<name>:` line of `sdp`.
pub fn sdp_attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix("a=")?
            .strip_prefix(name)?
            .strip_prefix(':')
    })
}

/// Distinct `a=candidate:` lines of `sdp`, in order.
pub fn candidate_lines(sdp: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("a=candidate:") && !lines.iter().any(|l| l == line) {
            lines.push(line.to_owned());
        }
    }
    lines
}

/// RFC 8840 fragment of `sdp`: its ICE credentials, then its candidates under the first media
/// section (BUNDLE: one transport for all), then `a=end-of-candidates`.
pub fn trickle_fragment(sdp: &str) -> String {
    let first_media = sdp
        .lines()
        .find(|l| l.starts_with("m="))
        .expect("an m= line");
    let mut out = format!(
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n{}\r\na=mid:{}\r\n",
        sdp_attribute(sdp, "ice-ufrag").expect("a=ice-ufrag"),
        sdp_attribute(sdp, "ice-pwd").expect("a=ice-pwd"),
        first_media.trim_end(),
        sdp_attribute(sdp, "mid").expect("a=mid"),
    );
    for candidate in candidate_lines(sdp) {
        out.push_str(&candidate);
        out.push_str("\r\n");
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

/// A full answer for an ICE restart: `previous` with the credentials and candidates of the
/// server's answer `fragment` (candidates go to the first media section; BUNDLE).
pub fn answer_from_fragment(previous: &str, fragment: &str) -> String {
    let ufrag = sdp_attribute(fragment, "ice-ufrag").expect("fragment has a=ice-ufrag");
    let pwd = sdp_attribute(fragment, "ice-pwd").expect("fragment has a=ice-pwd");
    let mut candidates = candidate_lines(fragment);
    let mut out = String::new();
    for line in previous.lines().map(str::trim_end) {
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        if line.starts_with("a=ice-ufrag:") {
            out.push_str(&format!("a=ice-ufrag:{ufrag}\r\n"));
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str(&format!("a=ice-pwd:{pwd}\r\n"));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
        if line.starts_with("a=mid:") && !candidates.is_empty() {
            for candidate in candidates.drain(..) {
                out.push_str(&candidate);
                out.push_str("\r\n");
            }
            out.push_str("a=end-of-candidates\r\n");
        }
    }
    out
}

// ---- WHIP publisher ---------------------------------------------------------------------

/// One send-only track whose RTP packets the test writes itself.
struct SendTrack {
    track: Arc<TrackLocalStaticRTP>,
    transceiver: Arc<dyn RtpTransceiver>,
    ssrc: u32,
    /// RTP timestamp units per packet (20 ms of audio, one 30 fps frame of video).
    timestamp_step: u32,
    /// The payload type negotiated for the codec; known once the answer is applied.
    payload_type: u8,
}

impl SendTrack {
    async fn add(peer: &Peer, kind: Kind, codec: RTCRtpCodec, timestamp_step: u32) -> Self {
        let ssrc = rand::random::<u32>();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "convene-test".to_owned(),
            format!("convene-test-{kind}"),
            format!("convene test {kind}"),
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
        let transceiver = peer
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
        Self {
            track,
            transceiver,
            ssrc,
            timestamp_step,
            payload_type: 0,
        }
    }

    /// Reads the payload type the answer settled on for this track's codec.
    async fn resolve_payload_type(&mut self) {
        let mime = self.track.codings().await[0].codec.mime_type.clone();
        let sender = self
            .transceiver
            .sender()
            .await
            .expect("transceiver alive")
            .expect("a sender");
        let parameters = sender.get_parameters().await.expect("sender parameters");
        self.payload_type = parameters
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
            .unwrap_or_else(|| panic!("{mime} was not negotiated"))
            .payload_type;
    }

    async fn send(&self, sequence: u16, payload: Bytes) {
        self.send_as(self.payload_type, sequence, payload).await;
    }

    async fn send_as(&self, payload_type: u8, sequence: u16, payload: Bytes) {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type,
                sequence_number: sequence,
                timestamp: u32::from(sequence).wrapping_mul(self.timestamp_step),
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        self.track.write_rtp(packet).await.expect("write_rtp");
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

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// A WHIP publisher with one Opus and one VP8 track, counting the keyframe requests (PLI/FIR)
/// the server sends it.
pub struct WhipPublisher {
    pub peer: Peer,
    pub session: Session,
    audio: SendTrack,
    video: SendTrack,
    keyframe_requests: watch::Receiver<u64>,
}

impl WhipPublisher {
    /// Publishes into `room` and waits until the connection is up.
    pub async fn connect(server: &TestServer, room: &str, token: &str) -> Self {
        let publisher = Self::start(server, room, token, true)
            .await
            .unwrap_or_else(|e| panic!("WHIP POST failed: {e}"));
        publisher.peer.wait_connected(CONNECT_TIMEOUT).await;
        publisher
    }

    /// Publishes into `room` without waiting for the connection. `gathered`: whether the
    /// offer waits for (and carries) our ICE candidates.
    pub async fn start(
        server: &TestServer,
        room: &str,
        token: &str,
        gathered: bool,
    ) -> Result<Self, HttpError> {
        Self::start_with(server, room, token, gathered, false).await
    }

    /// Publishes with redundant audio offered too (`red`), and waits until connected.
    pub async fn connect_with_red(server: &TestServer, room: &str, token: &str) -> Self {
        let publisher = Self::start_with(server, room, token, true, true)
            .await
            .unwrap_or_else(|e| panic!("WHIP POST failed: {e}"));
        publisher.peer.wait_connected(CONNECT_TIMEOUT).await;
        publisher
    }

    /// Publishes with `options` (ICE servers, transport policy, address), and waits until
    /// connected.
    pub async fn connect_configured(
        server: &TestServer,
        room: &str,
        token: &str,
        options: PeerOptions,
    ) -> Self {
        let peer = Peer::build_configured(true, None, false, options).await;
        let publisher = Self::start_on(peer, server, room, token, true)
            .await
            .unwrap_or_else(|e| panic!("WHIP POST failed: {e}"));
        publisher.peer.wait_connected(CONNECT_TIMEOUT).await;
        publisher
    }

    async fn start_with(
        server: &TestServer,
        room: &str,
        token: &str,
        gathered: bool,
        red: bool,
    ) -> Result<Self, HttpError> {
        let peer = Peer::build_with(true, None, red).await;
        Self::start_on(peer, server, room, token, gathered).await
    }

    async fn start_on(
        peer: Peer,
        server: &TestServer,
        room: &str,
        token: &str,
        gathered: bool,
    ) -> Result<Self, HttpError> {
        let mut audio = SendTrack::add(&peer, Kind::Audio, opus(), 960).await;
        let mut video = SendTrack::add(&peer, Kind::Video, vp8(), 3_000).await;
        let (requests, keyframe_requests) = watch::channel(0);
        for track in [&audio, &video] {
            tokio::spawn(count_keyframe_requests(
                Arc::clone(&track.track),
                requests.clone(),
            ));
        }
        let session = negotiate(server, &peer, &format!("/whip/{room}"), token, gathered).await?;
        audio.resolve_payload_type().await;
        video.resolve_payload_type().await;
        Ok(Self {
            peer,
            session,
            audio,
            video,
            keyframe_requests,
        })
    }

    /// Sends one RTP packet of `kind` with exactly `payload`.
    pub async fn send(&self, kind: Kind, sequence: u16, payload: impl Into<Bytes>) {
        let track = match kind {
            Kind::Video => &self.video,
            _ => &self.audio,
        };
        track.send(sequence, payload.into()).await;
    }

    /// Sends one audio packet as RED (`payload` is the whole RED payload, block headers and
    /// all) with the payload type the answer gave `audio/red`.
    pub async fn send_red(&self, sequence: u16, payload: impl Into<Bytes>) {
        self.audio
            .send_as(RED_PAYLOAD_TYPE, sequence, payload.into())
            .await;
    }

    pub fn location(&self) -> &str {
        &self.session.location
    }

    pub fn etag(&self) -> &str {
        &self.session.etag
    }

    /// PLI and FIR packets received so far.
    pub fn keyframe_requests(&self) -> u64 {
        *self.keyframe_requests.borrow()
    }

    /// Waits until more than `seen` keyframe requests have arrived; false if `within` passed.
    pub async fn wait_keyframe_request(&self, seen: u64, within: Duration) -> bool {
        wait_for(&self.keyframe_requests, within, |n| *n > seen).await
    }

    /// DELETEs the WHIP session (the polite way to leave).
    pub async fn delete(&self) -> reqwest::Response {
        self.session.delete().await
    }

    /// Closes the connection (DTLS close_notify goes out) without a DELETE.
    pub async fn close(self) {
        self.peer.close().await;
    }

    /// Vanishes: the network goes silent first, so the server hears nothing at all, not even
    /// the close_notify of the close that follows.
    pub async fn vanish(self) {
        self.peer.cut_network();
        self.peer.close().await;
    }
}

/// Counts PLI/FIR packets delivered for `track` until its connection goes away.
async fn count_keyframe_requests(track: Arc<TrackLocalStaticRTP>, count: watch::Sender<u64>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            let requests = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .count();
            count.send_modify(|n| *n += requests as u64);
        }
    }
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Marks inbound PLI/FIR for the application, which otherwise never sees inbound RTCP (see the
/// webrtc crate's `rtcp-processing` example).
#[derive(Default)]
struct KeyframeRequestsToApp {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestsToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for KeyframeRequestsToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

// ---- WHEP subscriber --------------------------------------------------------------------

/// One RTP packet as a subscriber received it.
#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    pub sequence: u16,
    pub payload_type: u8,
    pub payload: Bytes,
}

/// What one remote track delivered.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    pub opened: bool,
    /// The track's event stream ended (`OnEnded`, or the connection went away).
    pub ended: bool,
    pub packets: Vec<ReceivedPacket>,
}

struct Inboxes {
    audio: watch::Sender<Inbox>,
    video: watch::Sender<Inbox>,
}

impl Inboxes {
    fn of(&self, kind: Kind) -> &watch::Sender<Inbox> {
        match kind {
            Kind::Video => &self.video,
            _ => &self.audio,
        }
    }
}

/// Records every packet of `track` until it ends.
async fn record_track(inboxes: Arc<Inboxes>, track: Arc<dyn TrackRemote>) {
    let inbox = inboxes.of(track.kind().await);
    inbox.send_modify(|i| i.opened = true);
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => inbox.send_modify(|i| {
                i.packets.push(ReceivedPacket {
                    sequence: packet.header.sequence_number,
                    payload_type: packet.header.payload_type,
                    payload: packet.payload,
                })
            }),
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    inbox.send_modify(|i| i.ended = true);
}

/// How a subscriber saw its subscription end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every track's event stream ended.
    TracksEnded,
    /// The server closed DTLS (`close_notify`). webrtc-rs keeps the connection state at
    /// `connected` then (W3C counts a closed DTLS transport as connected), so this is polled.
    TransportClosed,
    /// The connection state became disconnected, failed or closed.
    Connection(RTCPeerConnectionState),
}

/// A WHEP subscriber with a receive-only audio and video transceiver.
pub struct WhepSubscriber {
    pub peer: Peer,
    pub session: Session,
    inboxes: Arc<Inboxes>,
}

impl WhepSubscriber {
    /// Watches `publisher` (or the room's most recent publisher) and waits until connected.
    pub async fn connect(
        server: &TestServer,
        room: &str,
        token: &str,
        publisher: Option<&str>,
    ) -> Self {
        let subscriber = Self::start(server, room, token, publisher)
            .await
            .unwrap_or_else(|e| panic!("WHEP POST failed: {e}"));
        subscriber.peer.wait_connected(CONNECT_TIMEOUT).await;
        subscriber
    }

    /// The WHEP POST and answer, without waiting for the connection.
    pub async fn start(
        server: &TestServer,
        room: &str,
        token: &str,
        publisher: Option<&str>,
    ) -> Result<Self, HttpError> {
        Self::start_with(server, room, token, publisher, false).await
    }

    /// Watches the room's most recent publisher offering redundant audio too (`red`), and
    /// waits until connected.
    pub async fn connect_with_red(server: &TestServer, room: &str, token: &str) -> Self {
        let subscriber = Self::start_with(server, room, token, None, true)
            .await
            .unwrap_or_else(|e| panic!("WHEP POST failed: {e}"));
        subscriber.peer.wait_connected(CONNECT_TIMEOUT).await;
        subscriber
    }

    /// Watches the room's most recent publisher from `options`' address, and waits until
    /// connected.
    pub async fn connect_configured(
        server: &TestServer,
        room: &str,
        token: &str,
        options: PeerOptions,
    ) -> Self {
        let subscriber = Self::start_configured(server, room, token, None, false, options)
            .await
            .unwrap_or_else(|e| panic!("WHEP POST failed: {e}"));
        subscriber.peer.wait_connected(CONNECT_TIMEOUT).await;
        subscriber
    }

    async fn start_with(
        server: &TestServer,
        room: &str,
        token: &str,
        publisher: Option<&str>,
        red: bool,
    ) -> Result<Self, HttpError> {
        Self::start_configured(server, room, token, publisher, red, PeerOptions::default()).await
    }

    async fn start_configured(
        server: &TestServer,
        room: &str,
        token: &str,
        publisher: Option<&str>,
        red: bool,
        options: PeerOptions,
    ) -> Result<Self, HttpError> {
        let inboxes = Arc::new(Inboxes {
            audio: watch::Sender::new(Inbox::default()),
            video: watch::Sender::new(Inbox::default()),
        });
        let peer = Peer::build_configured(false, Some(Arc::clone(&inboxes)), red, options).await;
        for kind in [Kind::Audio, Kind::Video] {
            peer.pc
                .add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await
                .expect("add_transceiver_from_kind");
        }
        let path = match publisher {
            Some(identity) => format!("/whep/{room}?publisher={identity}"),
            None => format!("/whep/{room}"),
        };
        let session = negotiate(server, &peer, &path, token, true).await?;
        Ok(Self {
            peer,
            session,
            inboxes,
        })
    }

    /// A snapshot of what the `kind` track has delivered.
    pub fn inbox(&self, kind: Kind) -> Inbox {
        self.inboxes.of(kind).borrow().clone()
    }

    /// Payloads received on the `kind` track, in arrival order.
    pub fn payloads(&self, kind: Kind) -> Vec<Bytes> {
        let inbox = self.inboxes.of(kind).borrow();
        inbox.packets.iter().map(|p| p.payload.clone()).collect()
    }

    /// Waits until `n` packets of `kind` have arrived; returns how many had when it stopped.
    pub async fn wait_packets(&self, kind: Kind, n: usize, within: Duration) -> usize {
        let mut inbox = self.inboxes.of(kind).subscribe();
        let _ = tokio::time::timeout(within, inbox.wait_for(|i| i.packets.len() >= n)).await;
        let count = inbox.borrow().packets.len();
        count
    }

    /// Waits until the subscription is over, and says how that showed; `None` if `within`
    /// passed first.
    pub async fn ended(&self, within: Duration) -> Option<Ending> {
        let ending = async {
            tokio::select! {
                _ = self.tracks_ended() => Ending::TracksEnded,
                _ = self.peer.transport_closed() => Ending::TransportClosed,
                state = self.peer.connection_lost() => Ending::Connection(state),
            }
        };
        tokio::time::timeout(within, ending).await.ok()
    }

    /// Every track opened and then ended.
    async fn tracks_ended(&self) {
        for kind in [Kind::Audio, Kind::Video] {
            let mut inbox = self.inboxes.of(kind).subscribe();
            let _ = inbox.wait_for(|i| i.opened && i.ended).await;
        }
    }

    pub async fn close(self) {
        self.peer.close().await;
    }
}

// ---- a connection the server offers (room subscriptions) -----------------------------------

/// The client side of a room subscription: the server offers, this answers (after gathering)
/// and records every packet that arrives, per kind, like [`WhepSubscriber`].
pub struct OfferedSubscriber {
    pub peer: Peer,
    inboxes: Arc<Inboxes>,
}

impl OfferedSubscriber {
    pub async fn new() -> Self {
        let inboxes = Arc::new(Inboxes {
            audio: watch::Sender::new(Inbox::default()),
            video: watch::Sender::new(Inbox::default()),
        });
        let peer = Peer::build(false, Some(Arc::clone(&inboxes))).await;
        Self { peer, inboxes }
    }

    /// Applies a server offer; returns the answer with our candidates in it.
    pub async fn answer(&self, offer: &str) -> String {
        let rounds = self.peer.gathering_rounds();
        let offer = RTCSessionDescription::offer(offer.to_owned()).expect("a valid offer");
        self.peer
            .pc
            .set_remote_description(offer)
            .await
            .expect("set_remote_description(offer)");
        let answer = self
            .peer
            .pc
            .create_answer(None)
            .await
            .expect("create_answer");
        self.peer
            .pc
            .set_local_description(answer)
            .await
            .expect("set_local_description(answer)");
        if rounds == 0 {
            self.peer.wait_gathered(1).await;
        }
        self.peer.local_sdp().await
    }

    pub fn payloads(&self, kind: Kind) -> Vec<Bytes> {
        self.inboxes
            .of(kind)
            .borrow()
            .packets
            .iter()
            .map(|p| p.payload.clone())
            .collect()
    }

    /// Waits until `n` packets of `kind` arrived; returns how many had when it stopped.
    pub async fn wait_packets(&self, kind: Kind, n: usize, within: Duration) -> usize {
        let mut inbox = self.inboxes.of(kind).subscribe();
        let _ = tokio::time::timeout(within, inbox.wait_for(|i| i.packets.len() >= n)).await;
        let count = inbox.borrow().packets.len();
        count
    }
}
