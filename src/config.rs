//! One typed configuration for the whole server.
//!
//! Precedence, lowest to highest: built-in defaults < `convene.toml` (or `--config FILE`) <
//! `CONVENE_*` environment variables < command-line flags. Every limit the server enforces lives
//! here with a named default, so operators can see and change all of them in one place.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// What a second `join` of an identity already connected over `/ws` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateJoin {
    /// The new socket takes the session over; the old one is closed (4001).
    #[default]
    Takeover,
    /// The new socket is refused (4002) while the old one lives.
    Refuse,
}

/// A STUN/TURN server handed to clients (WHIP/WHEP `Link` headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The embedded TURN server, and the TURN URLs handed to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the embedded TURN server.
    pub enabled: bool,
    /// UDP and TCP address of the embedded server (the same port for both).
    pub listen: SocketAddr,
    /// TLS address, served when `tls_cert` is set.
    pub tls_listen: SocketAddr,
    /// PEM certificate chain and private key for TURN over TLS (`turns:`).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Shared secret of the credentials (coturn's `static-auth-secret`). Empty: generated once
    /// into `data_dir/turn.secret`.
    pub secret: String,
    pub realm: String,
    /// Host (name or address) in the TURN URLs handed to clients. Empty: the first announced
    /// media address.
    pub public_host: String,
    /// Addresses announced as relayed addresses, one per family. Empty: the announced media
    /// addresses.
    pub relay_ip: Vec<IpAddr>,
    /// How long a handed-out credential is valid (checked on every TURN request, refreshes
    /// included, so it bounds how long one relayed session can last).
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// TURN URLs of an external server (coturn with `use-auth-secret` and the same `secret`),
    /// handed to clients with credentials when the embedded server is off.
    pub urls: Vec<String>,
    /// Networks relayed to besides Convene's own media addresses (never needed for Convene
    /// itself; an open relay is never the default).
    pub allowed_peer_networks: Vec<ipnet::IpNet>,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// TCP and TLS connections open at once.
    pub max_connections: usize,
    /// The longest allocation lifetime a client may ask for.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:3478".parse().expect("literal"),
            tls_listen: "0.0.0.0:5349".parse().expect("literal"),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            secret: String::new(),
            realm: "convene".to_owned(),
            public_host: String::new(),
            relay_ip: Vec::new(),
            credential_ttl: Duration::from_secs(24 * 3600),
            urls: Vec::new(),
            allowed_peer_networks: Vec::new(),
            max_allocations: 1000,
            max_allocations_per_user: 10,
            max_connections: 2000,
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A receiver of webhook events, with its signing secret (Standard Webhooks: `whsec_` and the
/// base64 key; any other string is the key's bytes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("url", &self.url)
            .field("secret", &"…")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP address of the HTTP server (API, signaling, WHIP/WHEP, page, metrics).
    pub http: SocketAddr,
    /// The first media UDP port: engine `i` of `media_workers` uses `media_udp_port + i`, so
    /// the firewall opens `media_udp_port ..= media_udp_port + media_workers - 1`.
    pub media_udp_port: u16,
    /// Media engines, each a thread owning the rooms placed on it. 0: one per CPU core.
    pub media_workers: usize,
    /// IP the media socket binds to. `::` (the default) receives IPv4 and IPv6 on every
    /// interface (dual-stack; `0.0.0.0` on a host without IPv6); `0.0.0.0` IPv4 only.
    pub media_bind_ip: IpAddr,
    /// Addresses announced in ICE candidates (NAT 1:1). Empty: the host's own addresses,
    /// loopback included so local clients work.
    pub public_ip: Vec<IpAddr>,
    /// Where the signing key, database and recordings live.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// HS256 secret for join tokens. Empty: a key generated once into `data_dir/jwt.key`.
    pub jwt_secret: String,
    /// Browser origins allowed by CORS on WHIP/WHEP. `*` allows any.
    pub cors_allowed_origins: Vec<String>,
    /// STUN/TURN servers advertised to clients.
    pub ice_servers: Vec<IceServer>,
    /// The embedded TURN server and the TURN URLs handed to clients.
    pub turn: TurnConfig,
    /// ICE-TCP (RFC 6544): passive TCP candidates on each media port number, for clients whose
    /// UDP is blocked.
    pub ice_tcp: bool,
    /// ICE-TCP connections one media engine holds at once.
    pub ice_tcp_max_connections: usize,
    /// HTTP connections open at once; past it new ones are closed at accept.
    pub http_max_connections: usize,
    /// A request head (line and headers) must arrive within this, or the connection closes.
    #[serde(with = "humantime_serde")]
    pub http_header_read_timeout: Duration,
    /// A connection on which nothing arrives for this long is closed (keep-alive and
    /// upgraded alike; keep it above `ws_idle_timeout`).
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    /// Largest accepted HTTP request body (SDP offers, PATCH fragments), in bytes.
    pub max_body_bytes: usize,
    /// Participants (identities that publish, or join a meeting) a room accepts before
    /// answering 503. View-only WHEP sessions do not take a place: `max_viewers_per_room`.
    pub max_participants: usize,
    /// View-only (WHEP) sessions one room accepts, besides its participants.
    pub max_viewers_per_room: usize,
    /// Media sessions (peer connections) one identity may hold in one room at once: a meeting
    /// participant holds two (publisher and subscriber), plus WHIP/WHEP ones.
    pub max_sessions_per_identity: usize,
    /// Peer connections the whole server accepts.
    pub max_peers: usize,
    /// Minimum gap between two keyframe requests (PLI/FIR) sent for one published track.
    #[serde(with = "humantime_serde")]
    pub keyframe_request_interval: Duration,
    /// A WHEP viewer with no publisher to watch (it came first, or its publisher left) waits
    /// this long for one, then its session ends.
    #[serde(with = "humantime_serde")]
    pub whep_publisher_wait: Duration,
    /// A peer that has not completed ICE+DTLS within this time is closed and released.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// ICE connectivity-check interval while connecting (webrtc-rs' default of 200 ms makes a
    /// loopback connection slow).
    #[serde(with = "humantime_serde")]
    pub ice_check_interval: Duration,
    /// A connected peer without any inbound traffic for this long is considered gone.
    #[serde(with = "humantime_serde")]
    pub ice_disconnected_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub ice_failed_timeout: Duration,
    /// Source addresses a peer may have bound at once on the media port (each a verified ICE
    /// check); past it the oldest binding is dropped.
    pub max_addresses_per_peer: usize,
    /// RTP packets kept per published track for answering NACKs.
    pub nack_cache_packets: usize,
    /// Where events (meetings, participants, tracks, recordings) are POSTed, signed.
    pub webhooks: Vec<WebhookEndpoint>,
    /// An event not acknowledged (2xx) within this long is given up.
    #[serde(with = "humantime_serde")]
    pub webhook_max_age: Duration,
    /// One delivery attempt's time limit.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Networks RTP forwards may send to (CIDR). Default: loopback only, so the API cannot aim
    /// UDP at arbitrary hosts; add a pipeline's network to reach it.
    pub rtp_forward_allowed_networks: Vec<ipnet::IpNet>,
    /// RTP forwards one meeting may run at once.
    pub rtp_forward_max: usize,
    /// Where recordings are written. Empty: `data_dir/recordings`.
    pub recordings_dir: PathBuf,
    /// A recording stops (`failed`, reason `disk_full`) when the recordings disk has fewer free
    /// bytes than this; a new one is refused (507).
    pub recording_min_free_bytes: u64,
    /// How long the recorder waits for a missing packet (its retransmission) before it counts
    /// as lost and video skips to the next keyframe.
    #[serde(with = "humantime_serde")]
    pub recording_jitter: Duration,
    /// Redundant audio (RFC 2198 RED around Opus): asked of publishers that offer it, sent as
    /// RED to subscribers that accept it and as plain Opus to the others.
    pub audio_red: bool,
    /// A subscriber leg's bandwidth estimate (GCC, from its transport-wide feedback) starts
    /// here and stays within min..=max, in bits per second.
    pub bwe_initial_bitrate: u64,
    /// Send-side bandwidth estimation on subscriber legs (TWCC numbering, the estimator, the
    /// allocator and the pacer). Off: every subscriber gets what it asks for, whatever its link.
    pub bwe: bool,
    pub bwe_min_bitrate: u64,
    pub bwe_max_bitrate: u64,
    /// Packets a subscriber leg's pacer may hold; past it new ones are refused (dropped): a
    /// link far slower than what is sent must not turn into seconds of queue. 0: no pacer.
    pub pacer_queue_packets: usize,
    /// When this many peers (and a quarter of the peak) have gone since the last time, freed
    /// heap is handed back to the system (glibc `malloc_trim`); 0 never does.
    pub memory_trim_after_peers: usize,
    /// How long graceful shutdown waits for peers to close before exiting.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Empty: SQLite at `data_dir/convene.db`. `postgres://…`: PostgreSQL. Env: `DATABASE_URL`
    /// (or `CONVENE_DATABASE_URL`).
    pub database_url: String,
    /// Cluster mode: Redis holds the node registry (`redis://host:6379`). Empty: one node, no
    /// Redis. Also read from `REDIS_URL`.
    pub redis_url: String,
    /// This node's id in the cluster. Empty: a new one each start.
    pub node_id: String,
    /// How often a node renews its registry entry, and how long the entry lives without it.
    #[serde(with = "humantime_serde")]
    pub cluster_heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub cluster_node_ttl: Duration,
    /// How long a room's placement on a node stands without that node renewing it (it renews
    /// every heartbeat while it serves the room): covers a client's way from the REST join to
    /// its socket, and keeps an emptied room where it was for a while.
    #[serde(with = "humantime_serde")]
    pub cluster_room_ttl: Duration,
    /// Cascading: a meeting spreads over nodes. A socket, WHIP or WHEP session is served by
    /// the node it reaches, and the nodes relay each other's tracks to the nodes whose
    /// participants receive them ([cluster.md]). Off: a meeting lives on one node.
    pub cluster_cascade: bool,
    /// Cascading: the participants of one meeting its first node takes before the REST join
    /// sends the next ones to the least loaded other node.
    pub cluster_room_node_participants: usize,
    /// Cascading: how often a node reads the other nodes' members, tracks and events of the
    /// meetings it serves (the delay before a remote change is seen here).
    #[serde(with = "humantime_serde")]
    pub cluster_cascade_sync: Duration,
    /// Usernames of the operators who may read cluster state (`GET /api/v1/cluster/nodes`).
    pub admins: Vec<String>,
    /// Base URL clients reach this server at, for join links (`{public_url}/m/{code}`).
    /// Empty: relative links.
    pub public_url: String,
    /// Lifetime of REST access tokens (JWT).
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens (opaque, stored hashed, single use).
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// Lifetime of meeting join tokens (media JWTs) issued by `POST /meetings/{code}/join`.
    /// Short, since a token opens media until it expires; a joined socket receives a fresh one
    /// (`token_refreshed`) every half lifetime, and WHIP/WHEP owners manage their sessions
    /// with an expired one.
    #[serde(with = "humantime_serde")]
    pub join_token_ttl: Duration,
    /// Lifetime of wait tokens (a join parked in the waiting room claims its admission with one).
    #[serde(with = "humantime_serde")]
    pub wait_token_ttl: Duration,
    pub password_min_length: usize,
    pub password_max_length: usize,
    /// Failed logins in a row before an account's logins are delayed.
    pub login_failures_before_backoff: u32,
    /// The first delay; it doubles with each further failure, up to `login_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub login_backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub login_backoff_max: Duration,
    /// Requests per minute per client address, by class. 0 disables a class's limit.
    pub rate_limit_auth_per_minute: u32,
    pub rate_limit_general_per_minute: u32,
    pub rate_limit_meeting_create_per_hour: u32,
    /// WHIP/WHEP session creations (`POST /whip/{room}`, `/whep/{room}`) per minute, per client
    /// address and per identity of a room. 0 disables.
    pub rate_limit_media_per_minute: u32,
    pub rate_limit_media_per_identity_per_minute: u32,
    /// Chat message length, in characters.
    pub chat_max_length: usize,
    /// WebSocket signaling (`/ws`): the largest client message accepted, in bytes. Larger ones
    /// are refused with an `error` (a violation); frames over four times this close the socket.
    pub ws_max_message_bytes: usize,
    /// WebSockets open at once, overall (503 past it) and from one client address (429).
    pub ws_max_connections: usize,
    pub ws_max_connections_per_address: usize,
    /// Client messages per second a socket may send on average ...
    pub ws_messages_per_second: u32,
    /// ... and in one burst. Messages over the rate are refused with an `error`.
    pub ws_message_burst: u32,
    /// Refused messages (malformed, unknown, too large, over the rate) a socket may send before
    /// it is closed with 1008 (policy violation).
    pub ws_max_violations: u32,
    /// How often the server sends a WebSocket ping.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// A socket from which nothing (not even a pong) arrived for this long is closed.
    #[serde(with = "humantime_serde")]
    pub ws_idle_timeout: Duration,
    /// Time a new socket has to authenticate with `join`.
    #[serde(with = "humantime_serde")]
    pub ws_join_timeout: Duration,
    /// A participant whose socket dropped keeps their seat and media this long, so a new socket
    /// can resume the session without others seeing them leave and join again.
    #[serde(with = "humantime_serde")]
    pub ws_resume_grace: Duration,
    /// A second join of a connected identity: `takeover` (default) or `refuse`.
    pub ws_duplicate_join: DuplicateJoin,
    /// Server messages queued for a socket that does not read them; over it the socket is
    /// closed (the session may resume).
    pub ws_send_queue: usize,
    /// Chat messages one participant may send per minute over the socket.
    pub ws_chat_per_minute: u32,
    /// A participant's typing indicator is relayed at most once per this interval.
    #[serde(with = "humantime_serde")]
    pub ws_typing_interval: Duration,
    /// Tracks a participant may declare (`publish`) at once.
    pub ws_max_declared_tracks: usize,
    /// How often active speakers are ranked from RTP audio levels; a changed ranking is
    /// announced at most this often.
    #[serde(with = "humantime_serde")]
    pub active_speaker_interval: Duration,
    /// A live meeting with nobody connected over `/ws` for this long ends by itself, as if the
    /// host had ended it. Counted from the last socket participant leaving (a dropped socket
    /// leaves when its `ws_resume_grace` is over). 0 disables.
    #[serde(with = "humantime_serde")]
    pub meeting_empty_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".parse().expect("valid literal address"),
            media_udp_port: 50000,
            media_workers: 0,
            media_bind_ip: IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
            public_ip: Vec::new(),
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Pretty,
            jwt_secret: String::new(),
            cors_allowed_origins: vec!["*".to_owned()],
            ice_servers: Vec::new(),
            turn: TurnConfig::default(),
            ice_tcp: true,
            ice_tcp_max_connections: 1000,
            http_max_connections: 8192,
            http_header_read_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(75),
            max_body_bytes: 64 * 1024,
            max_participants: 100,
            max_viewers_per_room: 1000,
            max_sessions_per_identity: 4,
            max_peers: 2000,
            keyframe_request_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(15),
            whep_publisher_wait: Duration::from_secs(300),
            ice_check_interval: Duration::from_millis(20),
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(15),
            max_addresses_per_peer: 8,
            nack_cache_packets: 1024,
            webhooks: Vec::new(),
            webhook_max_age: Duration::from_secs(24 * 3600),
            webhook_timeout: Duration::from_secs(10),
            rtp_forward_allowed_networks: vec![
                "127.0.0.0/8".parse().expect("literal"),
                "::1/128".parse().expect("literal"),
            ],
            rtp_forward_max: 16,
            recordings_dir: PathBuf::new(),
            recording_min_free_bytes: 512 * 1024 * 1024,
            recording_jitter: Duration::from_millis(200),
            audio_red: true,
            bwe_initial_bitrate: 1_000_000,
            bwe: true,
            bwe_min_bitrate: 100_000,
            bwe_max_bitrate: 20_000_000,
            pacer_queue_packets: 512,
            memory_trim_after_peers: 100,
            shutdown_grace: Duration::from_secs(3),
            database_url: String::new(),
            redis_url: String::new(),
            node_id: String::new(),
            cluster_heartbeat: Duration::from_secs(2),
            cluster_node_ttl: Duration::from_secs(6),
            cluster_room_ttl: Duration::from_secs(60),
            cluster_cascade: false,
            cluster_room_node_participants: 50,
            cluster_cascade_sync: Duration::from_millis(200),
            admins: Vec::new(),
            public_url: String::new(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(7 * 24 * 3600),
            join_token_ttl: Duration::from_secs(10 * 60),
            wait_token_ttl: Duration::from_secs(2 * 3600),
            password_min_length: 8,
            password_max_length: 128,
            login_failures_before_backoff: 5,
            login_backoff_base: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(300),
            rate_limit_auth_per_minute: 30,
            rate_limit_general_per_minute: 600,
            rate_limit_meeting_create_per_hour: 120,
            rate_limit_media_per_minute: 120,
            rate_limit_media_per_identity_per_minute: 30,
            chat_max_length: 4000,
            ws_max_message_bytes: 64 * 1024,
            ws_max_connections: 10_000,
            ws_max_connections_per_address: 64,
            ws_messages_per_second: 20,
            ws_message_burst: 50,
            ws_max_violations: 20,
            ws_ping_interval: Duration::from_secs(15),
            ws_idle_timeout: Duration::from_secs(45),
            ws_join_timeout: Duration::from_secs(10),
            ws_resume_grace: Duration::from_secs(15),
            ws_duplicate_join: DuplicateJoin::Takeover,
            ws_send_queue: 1024,
            ws_chat_per_minute: 30,
            ws_typing_interval: Duration::from_secs(1),
            ws_max_declared_tracks: 32,
            active_speaker_interval: Duration::from_millis(500),
            meeting_empty_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// Errors in a configuration, named so an operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Defaults < `file` (if it exists) < `CONVENE_*` env. Flags are merged by the caller with
    /// [`Config::merge_overrides`].
    pub fn load(file: Option<&Path>, overrides: &ConfigOverrides) -> Result<Self, ConfigError> {
        let file = file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("convene.toml"));
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL", "REDIS_URL"])
                    .map(|k| k.as_str().to_ascii_lowercase().into()),
            )
            .merge(
                Env::prefixed("CONVENE_")
                    .map(|k| k.as_str().to_ascii_lowercase().into())
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides));
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The media engines to run: `media_workers`, or one per CPU core when it is 0.
    pub fn media_workers(&self) -> usize {
        match self.media_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(crate::sfu::MAX_WORKERS)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        if self.max_participants == 0 {
            return Err(invalid("max_participants", "must be at least 1"));
        }
        if self.media_workers > crate::sfu::MAX_WORKERS {
            return Err(invalid("media_workers", "must be at most 64"));
        }
        if usize::from(self.media_udp_port) + self.media_workers() > 65536 {
            return Err(invalid(
                "media_udp_port",
                "media_udp_port + media_workers must stay within 65535",
            ));
        }
        if self.max_addresses_per_peer == 0 {
            return Err(invalid("max_addresses_per_peer", "must be at least 1"));
        }
        if self.http_max_connections == 0 {
            return Err(invalid("http_max_connections", "must be at least 1"));
        }
        if self.http_header_read_timeout.is_zero() || self.http_idle_timeout.is_zero() {
            return Err(invalid(
                "http_header_read_timeout",
                "timeouts must be above zero",
            ));
        }
        if self.max_sessions_per_identity < 2 {
            return Err(invalid(
                "max_sessions_per_identity",
                "must be at least 2 (a meeting participant holds two connections)",
            ));
        }
        if self.max_peers == 0 {
            return Err(invalid("max_peers", "must be at least 1"));
        }
        if self.connect_timeout < Duration::from_secs(1) {
            return Err(invalid("connect_timeout", "must be at least 1s"));
        }
        if self.ice_check_interval.is_zero() {
            return Err(invalid("ice_check_interval", "must be positive"));
        }
        if self.bwe_min_bitrate == 0
            || self.bwe_min_bitrate > self.bwe_initial_bitrate
            || self.bwe_initial_bitrate > self.bwe_max_bitrate
        {
            return Err(invalid(
                "bwe_initial_bitrate",
                "needs 0 < bwe_min_bitrate <= bwe_initial_bitrate <= bwe_max_bitrate",
            ));
        }
        if self.nack_cache_packets == 0 || !self.nack_cache_packets.is_power_of_two() {
            return Err(invalid("nack_cache_packets", "must be a power of two"));
        }
        if self.password_min_length < 8 || self.password_max_length < self.password_min_length {
            return Err(invalid(
                "password_min_length",
                "must be at least 8 and at most password_max_length",
            ));
        }
        if self.access_token_ttl < Duration::from_secs(30) {
            return Err(invalid("access_token_ttl", "must be at least 30s"));
        }
        if !(self.database_url.is_empty()
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://")
            || self.database_url.starts_with("sqlite:"))
        {
            return Err(invalid(
                "database_url",
                "must be postgres://…, sqlite:… or empty",
            ));
        }
        if self.public_ip.iter().any(|ip| ip.is_unspecified()) {
            return Err(invalid("public_ip", "0.0.0.0 / :: cannot be announced"));
        }
        if self.media_bind_ip.is_ipv4() && self.public_ip.iter().any(IpAddr::is_ipv6) {
            return Err(invalid(
                "public_ip",
                "an IPv6 address needs an IPv6 media_bind_ip (:: for IPv4 and IPv6)",
            ));
        }
        if self.ws_max_message_bytes < 4096 {
            return Err(invalid("ws_max_message_bytes", "must be at least 4096"));
        }
        if self.ws_messages_per_second == 0 || self.ws_message_burst == 0 {
            return Err(invalid(
                "ws_messages_per_second",
                "the rate and ws_message_burst must be at least 1",
            ));
        }
        if self.ws_ping_interval.is_zero() || self.ws_idle_timeout <= self.ws_ping_interval {
            return Err(invalid(
                "ws_idle_timeout",
                "must be longer than ws_ping_interval, which must be positive",
            ));
        }
        if self.ws_join_timeout.is_zero() {
            return Err(invalid("ws_join_timeout", "must be positive"));
        }
        if self.ws_send_queue < 16 {
            return Err(invalid("ws_send_queue", "must be at least 16"));
        }
        for endpoint in &self.webhooks {
            if !(endpoint.url.starts_with("http://") || endpoint.url.starts_with("https://")) {
                return Err(invalid("webhooks", "every url must be http:// or https://"));
            }
            if endpoint.secret.is_empty() {
                return Err(invalid("webhooks", "every endpoint needs a secret"));
            }
        }
        if self.recording_jitter < Duration::from_millis(10)
            || self.recording_jitter > Duration::from_secs(5)
        {
            return Err(invalid("recording_jitter", "must be 10ms to 5s"));
        }
        if !(self.redis_url.is_empty()
            || self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("rediss://"))
        {
            return Err(invalid(
                "redis_url",
                "must be redis://…, rediss://… or empty",
            ));
        }
        if self.cluster_heartbeat.is_zero() || self.cluster_node_ttl < self.cluster_heartbeat * 2 {
            return Err(invalid(
                "cluster_node_ttl",
                "must be at least twice cluster_heartbeat, which must be positive",
            ));
        }
        if !self.redis_url.is_empty()
            && self.public_url.is_empty()
            && self.http.ip().is_unspecified()
        {
            // Clients and other nodes are sent to a node by the URL it registers.
            return Err(invalid(
                "public_url",
                "cluster mode (redis_url) needs the URL this node is reached at, or an HTTP address that is not 0.0.0.0/::",
            ));
        }
        if self.cluster_cascade_sync < Duration::from_millis(20)
            || self.cluster_cascade_sync > Duration::from_secs(10)
        {
            return Err(invalid(
                "cluster_cascade_sync",
                "must be between 20ms and 10s",
            ));
        }
        if self.cluster_room_node_participants == 0 {
            return Err(invalid(
                "cluster_room_node_participants",
                "must be at least 1",
            ));
        }
        if self.cluster_room_ttl < self.cluster_heartbeat * 2 {
            return Err(invalid(
                "cluster_room_ttl",
                "must be at least twice cluster_heartbeat",
            ));
        }
        let turn = &self.turn;
        if !turn.secret.is_empty() && turn.secret.len() < crate::turn::MIN_SECRET_BYTES {
            return Err(invalid(
                "turn.secret",
                "must be at least 16 bytes (or empty: one is generated)",
            ));
        }
        if turn.credential_ttl < Duration::from_secs(60) {
            return Err(invalid("turn.credential_ttl", "must be at least 60s"));
        }
        if turn.realm.is_empty() || turn.realm.len() > 127 {
            return Err(invalid("turn.realm", "must be 1 to 127 characters"));
        }
        if turn.tls_cert.as_os_str().is_empty() != turn.tls_key.as_os_str().is_empty() {
            return Err(invalid(
                "turn.tls_cert",
                "needs turn.tls_key, and the other way round",
            ));
        }
        if turn.max_allocations == 0
            || turn.max_allocations_per_user == 0
            || turn.max_connections == 0
        {
            return Err(invalid(
                "turn.max_allocations",
                "the TURN limits must be at least 1",
            ));
        }
        if turn.max_lifetime < Duration::from_secs(600) {
            return Err(invalid(
                "turn.max_lifetime",
                "must be at least 10m (TURN's default lifetime)",
            ));
        }
        for url in &turn.urls {
            if !(url.starts_with("turn:") || url.starts_with("turns:")) {
                return Err(invalid("turn.urls", "every url must be turn:… or turns:…"));
            }
        }
        for server in &self.ice_servers {
            if server.urls.is_empty() {
                return Err(invalid(
                    "ice_servers",
                    "every server needs at least one url",
                ));
            }
        }
        Ok(())
    }

    /// Where recordings go: `recordings_dir`, else `data_dir/recordings`.
    pub fn recordings_path(&self) -> PathBuf {
        if self.recordings_dir.as_os_str().is_empty() {
            self.data_dir.join("recordings")
        } else {
            self.recordings_dir.clone()
        }
    }

    pub fn turn_secret_path(&self) -> PathBuf {
        self.data_dir.join("turn.secret")
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.data_dir.join("jwt.key")
    }
}

/// Values given as command-line flags; only the ones set override lower layers.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConfigOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_udp_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<Vec<IpAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Durations in config files and env read as humantime strings ("500ms", "15s").
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("convene-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("convene.toml");
        std::fs::write(
            &file,
            "media_udp_port = 40000\nmax_participants = 7\nkeyframe_request_interval = \"1s\"\n",
        )
        .unwrap();
        let flags = ConfigOverrides {
            media_udp_port: Some(41000),
            ..Default::default()
        };
        let config = Config::load(Some(&file), &flags).unwrap();
        assert_eq!(config.media_udp_port, 41000, "flag beats file");
        assert_eq!(config.max_participants, 7, "file beats default");
        assert_eq!(config.keyframe_request_interval, Duration::from_secs(1));
    }

    #[test]
    // The Err type is figment's, fixed by Jail.
    #[allow(clippy::result_large_err)]
    fn sections_and_lists_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONVENE_TURN__ENABLED", "true");
            jail.set_env("CONVENE_TURN__SECRET", "s3cret-s3cret-s3cret");
            jail.set_env("CONVENE_PUBLIC_IP", "[203.0.113.10, 2001:db8::10]");
            jail.set_env(
                "CONVENE_TURN__URLS",
                r#"["turn:turn.example.net:3478?transport=udp"]"#,
            );
            let config = Config::load(Some(Path::new("/nonexistent.toml")), &Default::default())
                .expect("loads");
            assert!(config.turn.enabled);
            assert_eq!(config.turn.secret, "s3cret-s3cret-s3cret");
            assert_eq!(
                config.public_ip,
                vec![
                    "203.0.113.10".parse::<IpAddr>().unwrap(),
                    "2001:db8::10".parse().unwrap()
                ]
            );
            assert_eq!(config.turn.urls.len(), 1);
            assert_eq!(
                config.turn.realm, "convene",
                "the rest of the section stays"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_named() {
        let config = Config {
            nack_cache_packets: 1000,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("nack_cache_packets"), "{err}");
    }
}
