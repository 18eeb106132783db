//! Every Prometheus metric of the server, declared once, with bounded label sets.
//!
//! The forwarding path only touches atomics (prometheus' counters are atomic), so counting a
//! packet never takes a lock.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub rooms: IntGauge,
    pub peers: IntGauge,
    pub published_tracks: IntGauge,
    pub subscribers: IntGauge,
    /// Down tracks their subscriber paused (`set_track`): nothing forwarded on them.
    pub paused_down_tracks: IntGauge,
    /// Peers held by each media engine (label `engine`: 0 .. media_workers-1).
    pub engine_peers: IntGaugeVec,
    /// Rooms placed on each media engine.
    pub engine_rooms: IntGaugeVec,
    /// Commands each media engine handled: which engine a room's moderation reached.
    pub engine_commands: IntCounterVec,
    pub rtp_packets_in: IntCounter,
    pub rtp_bytes_in: IntCounter,
    pub rtp_packets_out: IntCounter,
    /// Packets a tap (recorder, RTP forward) could not take: its consumer fell behind.
    pub tap_dropped: IntCounter,
    /// Webhook attempts by result: `delivered`, `retried` (failed, tried again later),
    /// `given_up` (older than webhook_max_age).
    pub webhooks: IntCounterVec,
    /// Webhook events not yet delivered nor given up.
    pub webhooks_pending: IntGauge,
    /// Seconds from an event's write to its acknowledged delivery.
    pub webhook_latency: prometheus::Histogram,
    /// RTP forwards running now, and the packets they sent.
    pub rtp_forwards: IntGauge,
    pub rtp_forward_packets: IntCounter,
    /// Recordings ended, by status (`ready`, `failed`).
    pub recordings: IntCounterVec,
    /// Frames written into recordings.
    pub recorded_frames: IntCounter,
    pub rtp_bytes_out: IntCounter,
    /// NACKs by direction: `received` from subscribers. (Those sent to publishers are the
    /// NACK generator's of each publisher leg, inside `rtc`, and not counted here.)
    pub nacks: IntCounterVec,
    /// Packets NACKed by subscribers: `sent` again from the track's history, or `missed`
    /// (no longer kept, or sent before the leg's last resync).
    pub retransmissions: IntCounterVec,
    /// Simulcast: a down track's target layer changed, by reason (`start`, `requested`: the
    /// subscriber asked; `layer_stopped`, `layer_returned`: the publisher's encoder dropped or
    /// resumed one).
    pub layer_switches: IntCounterVec,
    /// Down tracks paused (`paused`) or resumed (`resumed`) because their subscriber's
    /// bandwidth estimate could not carry them.
    pub bandwidth_pauses: IntCounterVec,
    /// Subscriber legs' bandwidth estimates (bits/s), sampled with connection quality.
    pub subscriber_estimate: prometheus::Histogram,
    /// Keyframe requests by kind (`pli`, `fir`) and direction (`received`, `sent`).
    pub keyframe_requests: IntCounterVec,
    /// Keyframes the SFU wanted from publishers, by reason (`subscriber_joined`,
    /// `subscriber_pli`, `layer_switch`, `still_waiting` (a leg whose target keyframe has not
    /// come), `resume`, `source_changed`, `first_packet`, `deferred`), before the per-layer
    /// throttle.
    pub keyframes_asked: IntCounterVec,
    /// Packets that could not be forwarded, by reason.
    pub forward_errors: IntCounterVec,
    /// Redundant audio (RED) from publishers, by how it went out: `red` (to subscribers that
    /// took RED), `opus` (its primary frame, to those that did not), `recovered` (Opus frames
    /// of packets lost before the SFU, rebuilt from the next packet's redundancy).
    pub audio_red: IntCounterVec,
    pub udp_datagrams_dropped: IntCounter,
    /// Datagrams dropped because the socket's send buffer stayed full past the backlog bound.
    pub udp_send_dropped: IntCounter,
    /// STUN naming a peer's ufrag whose MESSAGE-INTEGRITY did not verify (spoofed or broken).
    pub stun_rejected: IntCounter,
    pub peers_reaped: IntCounter,
    /// HTTP connections open now (until they upgrade to a WebSocket).
    pub http_connections: IntGauge,
    /// Connections closed at accept because `http_max_connections` were open.
    pub http_connections_refused: IntCounter,
    /// Cluster mode: 1 while Redis answers this node's heartbeat, 0 while it does not (the node
    /// serves what it has: degraded).
    pub cluster_redis_up: IntGauge,
    /// Cascading: remote tracks a relay to this node was opened for, by source (`camera`,
    /// `microphone`, `screen`, `screen_audio`).
    pub cascade_relayed_tracks: IntCounterVec,
    /// ICE-TCP connections open now and accepted so far, and packets dropped because one's
    /// queue was full.
    pub ice_tcp_connections: IntGauge,
    pub ice_tcp_accepted: IntCounter,
    pub ice_tcp_dropped: IntCounter,
    /// Embedded TURN: allocations held now, and made, by client transport (`udp`, `tcp`, `tls`).
    pub turn_allocations: IntGauge,
    pub turn_allocations_made: IntCounterVec,
    /// Embedded TURN: packets relayed, by direction (`to_peer`, `to_client`).
    pub turn_relayed_packets: IntCounterVec,
    pub turn_relayed_bytes: IntCounterVec,
    /// Embedded TURN: requests refused, by reason (`unauthenticated`, `stale_nonce`,
    /// `bad_credentials`, `expired`, `forbidden_peer`, `quota`, `capacity`, `bad_request`).
    pub turn_refused: IntCounterVec,
    /// Embedded TURN: datagrams or frames dropped (a full queue or socket buffer).
    pub turn_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("convene".to_owned()), None).expect("static prefix is valid");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        Self {
            engine_peers: gauge_vec("engine_peers", "Peers held by a media engine", &["engine"]),
            engine_rooms: gauge_vec("engine_rooms", "Rooms held by a media engine", &["engine"]),
            engine_commands: counter_vec(
                "engine_commands_total",
                "Commands handled by a media engine",
                &["engine"],
            ),
            rooms: gauge("rooms", "Rooms that currently have peers"),
            peers: gauge("peers", "Peer connections held by the SFU"),
            published_tracks: gauge("published_tracks", "Tracks currently published"),
            subscribers: gauge(
                "subscribers",
                "Down tracks currently forwarding to a subscriber",
            ),
            paused_down_tracks: gauge("paused_down_tracks", "Down tracks their subscriber paused"),
            rtp_packets_in: counter(
                "rtp_packets_in_total",
                "RTP packets received from publishers",
            ),
            rtp_bytes_in: counter(
                "rtp_bytes_in_total",
                "RTP payload bytes received from publishers",
            ),
            rtp_packets_out: counter(
                "rtp_packets_out_total",
                "RTP packets forwarded to subscribers",
            ),
            tap_dropped: counter(
                "tap_dropped_total",
                "Packets a tap's consumer (recorder, RTP forward) was too slow to take",
            ),
            cluster_redis_up: gauge(
                "cluster_redis_up",
                "1 while Redis answers this node's cluster heartbeat",
            ),
            cascade_relayed_tracks: {
                let relayed = counter_vec(
                    "cascade_relayed_tracks_total",
                    "Remote tracks a relay to this node was opened for (cascading)",
                    &["source"],
                );
                for source in ["camera", "microphone", "screen", "screen_audio"] {
                    relayed.with_label_values(&[source]);
                }
                relayed
            },
            ice_tcp_connections: gauge("ice_tcp_connections", "ICE-TCP connections open"),
            ice_tcp_accepted: counter("ice_tcp_connections_total", "ICE-TCP connections accepted"),
            ice_tcp_dropped: counter(
                "ice_tcp_dropped_total",
                "Packets dropped because an ICE-TCP connection's queue was full",
            ),
            turn_allocations: gauge("turn_allocations", "Embedded TURN allocations held"),
            turn_allocations_made: counter_vec(
                "turn_allocations_total",
                "Embedded TURN allocations made, by client transport",
                &["transport"],
            ),
            turn_relayed_packets: counter_vec(
                "turn_relayed_packets_total",
                "Packets relayed by the embedded TURN server",
                &["direction"],
            ),
            turn_relayed_bytes: counter_vec(
                "turn_relayed_bytes_total",
                "Payload bytes relayed by the embedded TURN server",
                &["direction"],
            ),
            turn_refused: counter_vec(
                "turn_refused_total",
                "TURN requests refused, by reason",
                &["reason"],
            ),
            turn_dropped: counter(
                "turn_dropped_total",
                "TURN datagrams dropped because a queue or socket buffer was full",
            ),
            recordings: counter_vec(
                "recordings_total",
                "Recordings ended, by status",
                &["status"],
            ),
            webhooks: counter_vec(
                "webhook_attempts_total",
                "Webhook delivery attempts, by result",
                &["result"],
            ),
            webhooks_pending: gauge("webhooks_pending", "Webhook events awaiting delivery"),
            webhook_latency: {
                let h = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "webhook_delivery_seconds",
                        "From an event's write to its acknowledged delivery",
                    )
                    .buckets(vec![
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
                    ]),
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            rtp_forwards: gauge("rtp_forwards", "RTP forwards to external pipelines running"),
            rtp_forward_packets: counter(
                "rtp_forward_packets_total",
                "RTP packets sent by RTP forwards",
            ),
            recorded_frames: counter("recorded_frames_total", "Frames written into recordings"),
            rtp_bytes_out: counter(
                "rtp_bytes_out_total",
                "RTP payload bytes forwarded to subscribers",
            ),
            nacks: counter_vec("nacks_total", "RTCP NACK packets", &["direction"]),
            retransmissions: counter_vec(
                "rtp_retransmissions_total",
                "RTP packets NACKed by subscribers, by result",
                &["result"],
            ),
            bandwidth_pauses: counter_vec(
                "bandwidth_pauses_total",
                "Down tracks paused or resumed for their subscriber's bandwidth",
                &["change"],
            ),
            subscriber_estimate: {
                let h = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "subscriber_estimate_bits",
                        "Subscriber legs' send-side bandwidth estimates, bits per second",
                    )
                    .buckets(vec![
                        100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6, 20e6,
                    ]),
                )
                .expect("valid histogram");
                registry
                    .register(Box::new(h.clone()))
                    .expect("registered once");
                h
            },
            layer_switches: counter_vec(
                "layer_switches_total",
                "Simulcast target layer changes of down tracks, by reason",
                &["reason"],
            ),
            keyframe_requests: counter_vec(
                "keyframe_requests_total",
                "PLI/FIR keyframe requests",
                &["kind", "direction"],
            ),
            keyframes_asked: counter_vec(
                "keyframe_requests_asked_total",
                "Keyframes wanted from publishers, by reason, before the throttle",
                &["reason"],
            ),
            forward_errors: counter_vec(
                "forward_errors_total",
                "Packets not forwarded",
                &["reason"],
            ),
            audio_red: counter_vec(
                "audio_red_total",
                "Redundant audio packets from publishers, by how they went out",
                &["sent_as"],
            ),
            udp_datagrams_dropped: counter(
                "udp_datagrams_dropped_total",
                "Datagrams on the media port that matched no peer",
            ),
            udp_send_dropped: counter(
                "udp_send_dropped_total",
                "Datagrams dropped because the media socket's send buffer stayed full",
            ),
            stun_rejected: counter(
                "stun_rejected_total",
                "STUN requests naming a known ufrag whose MESSAGE-INTEGRITY did not verify",
            ),
            http_connections: gauge("http_connections", "HTTP connections open now"),
            http_connections_refused: counter(
                "http_connections_refused_total",
                "HTTP connections closed at accept because http_max_connections were open",
            ),
            peers_reaped: counter(
                "peers_reaped_total",
                "Peers closed because ICE/DTLS did not complete or the connection failed",
            ),
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
