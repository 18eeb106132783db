//! Wires the subsystems together: config → keys, metrics, SFU engine, HTTP router; owns
//! graceful shutdown (stop accepting, close peers, drain HTTP).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::config::Config;
use crate::domain::token::TokenKeys;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::sfu::{Sfu, SfuConfig};
use crate::signaling::Live;
pub use crate::state::AppState;
use crate::store::Store;

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub http_addr: SocketAddr,
    pub media_addr: SocketAddr,
    pub state: AppState,
    /// The embedded TURN server, when `turn.enabled`.
    pub turn: Option<crate::turn::Turn>,
    /// Signaling's tables (live meetings, open sockets, the SFU event hub).
    pub live: Live,
    stop: Option<oneshot::Sender<()>>,
    http: JoinHandle<()>,
    pruning: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl Server {
    /// Binds both ports and starts serving. Port 0 in the config picks free ports.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        crate::http_server::raise_descriptor_limit();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let keys = TokenKeys::load_or_create(&config.jwt_secret, &config.signing_key_path())
            .with_context(|| {
                format!(
                    "loading signing key {}",
                    config.signing_key_path().display()
                )
            })?;
        let store = Store::connect(&config.database_url, &config.data_dir)
            .await
            .context("opening the database")?
            .with_outbox(crate::store::webhooks::Outbox {
                endpoints: Arc::new(config.webhooks.iter().map(|e| e.url.clone()).collect()),
                written: Default::default(),
            });
        let access = keys.access_keys(config.access_token_ttl);
        let limits = RateLimits::from_config(&config);
        let metrics = Metrics::new();
        let sfu_config = sfu_config(&config);
        anyhow::ensure!(
            !sfu_config.announced_ips.is_empty(),
            "no address to announce: set public_ip"
        );
        let (sfu, sfu_events) = Sfu::start(sfu_config.clone(), metrics.clone())
            .with_context(|| format!("binding media UDP {}", sfu_config.bind))?;
        let (turn, ice) = start_turn(&config, &sfu, &sfu_config, &metrics).await?;
        let listener = TcpListener::bind(config.http)
            .await
            .with_context(|| format!("binding HTTP {}", config.http))?;
        let http_addr = listener.local_addr()?;
        let cluster = if config.redis_url.is_empty() {
            None
        } else {
            let http_url = if config.public_url.is_empty() {
                format!("http://{http_addr}")
            } else {
                config.public_url.clone()
            };
            let media = sfu
                .media_addrs()
                .iter()
                .flat_map(|a| {
                    sfu_config
                        .announced_ips
                        .iter()
                        .map(move |ip| SocketAddr::new(*ip, a.port()))
                })
                .collect();
            let node_id = if config.node_id.is_empty() {
                uuid::Uuid::now_v7().to_string()
            } else {
                config.node_id.clone()
            };
            Some(
                crate::cluster::Cluster::start(
                    crate::cluster::ClusterSettings {
                        redis_url: config.redis_url.clone(),
                        node_id,
                        http_url,
                        media,
                        heartbeat: config.cluster_heartbeat,
                        ttl: config.cluster_node_ttl,
                        room_ttl: config.cluster_room_ttl,
                        signing_key: keys.cluster_registry_key(),
                    },
                    metrics.clone(),
                )
                .await?,
            )
        };
        // Recordings a crash left running are closed with what their files hold.
        let recovered = crate::recording::recover::recover(&store)
            .await
            .context("closing interrupted recordings")?;
        if recovered > 0 {
            warn!(
                recordings = recovered,
                "closed recordings an earlier run left open"
            );
        }
        let recorder = crate::recording::Recorder::new(
            crate::recording::RecorderConfig {
                dir: config.recordings_path(),
                jitter: config.recording_jitter,
                min_free_bytes: config.recording_min_free_bytes,
            },
            store.clone(),
            sfu.clone(),
            metrics.clone(),
        )
        .with_context(|| format!("recordings dir {}", config.recordings_path().display()))?;
        let signaling = crate::signaling::Signaling::new(crate::signaling::rooms::Services {
            store: store.clone(),
            sfu: sfu.clone(),
            recorder: recorder.clone(),
            empty_timeout: config.meeting_empty_timeout,
            node_id: cluster.as_ref().map(|c| c.node_id().to_owned()),
            cascade: cluster
                .as_ref()
                .filter(|_| config.cluster_cascade)
                .map(|cluster| {
                    Arc::new(crate::signaling::cascade::Settings {
                        cluster: cluster.clone(),
                        sync: config.cluster_cascade_sync,
                        forward_key: keys.cluster_relay_key(),
                        http: reqwest::Client::builder()
                            .redirect(reqwest::redirect::Policy::none())
                            .timeout(std::time::Duration::from_secs(10))
                            .build()
                            .expect("an HTTP client builds"),
                        serials: Default::default(),
                        metrics: metrics.clone(),
                    })
                }),
        });
        let live = Live {
            hub: crate::signaling::hub::Hub::default(),
            rooms: signaling,
            sockets: Default::default(),
        };
        if let Some(cluster) = &cluster {
            let (sfu, rooms) = (sfu.clone(), live.rooms.clone());
            cluster.set_held_rooms(Box::new(move || {
                let mut held: Vec<String> = sfu.rooms().into_iter().map(|r| r.0).collect();
                held.extend(rooms.meeting_ids());
                held.sort();
                held.dedup();
                held
            }));
        }
        let forwards = crate::recording::rtp_forward::Forwards::new(
            sfu.clone(),
            config.rtp_forward_max,
            metrics.clone(),
        );
        let state = AppState {
            config: Arc::new(config),
            store,
            keys,
            access,
            limits,
            live: Arc::new(live.rooms.clone()),
            metrics,
            sfu: sfu.clone(),
            recorder,
            forwards,
            ice: Arc::new(ice),
            cluster,
            accepting: Arc::new(AtomicBool::new(true)),
        };
        tokio::spawn(crate::signaling::hub::run(
            live.hub.clone(),
            live.rooms.clone(),
            sfu_events,
        ));
        reconcile_seats(&state, &live, "startup").await?;
        let sweeper = tokio::spawn(sweep_dead_nodes(state.clone(), live.clone()));
        // Events pending from an earlier run (a crash included) go out first.
        if !state.config.webhooks.is_empty() {
            tokio::spawn(
                crate::webhooks::Worker {
                    store: state.store.clone(),
                    endpoints: state.config.webhooks.clone(),
                    max_age: state.config.webhook_max_age,
                    timeout: state.config.webhook_timeout,
                    metrics: state.metrics.clone(),
                }
                .run(),
            );
        }
        let pruning = tokio::spawn(maintain(
            state.limits.clone(),
            state.metrics.clone(),
            state.config.memory_trim_after_peers,
        ));
        let router = router(state.clone(), live.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = crate::http_server::HttpLimits {
            max_connections: state.config.http_max_connections,
            header_read_timeout: state.config.http_header_read_timeout,
            idle_timeout: state.config.http_idle_timeout,
        };
        let http = tokio::spawn(crate::http_server::serve(
            listener,
            router,
            limits,
            state.metrics.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        info!(http = %http_addr, media = ?sfu.media_addrs(), announced = ?sfu_config.announced_ips, "convene listening");
        Ok(Self {
            http_addr,
            media_addr: sfu.media_addr(),
            state,
            turn,
            live,
            stop: Some(stop),
            http,
            pruning,
            sweeper,
        })
    }

    /// Graceful stop: refuse new work, close every peer (they are told), then drain HTTP.
    pub async fn shutdown(mut self) {
        self.state.accepting.store(false, Ordering::Relaxed);
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
        self.live.rooms.shutdown();
        let grace = self.state.config.shutdown_grace;
        let _ = tokio::time::timeout(grace, self.state.sfu.shutdown()).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(grace, &mut self.http).await;
        // Nobody holds a seat on a stopped server; the next start counts the meetings down.
        if let Err(e) = reconcile_seats(&self.state, &self.live, "shutdown").await {
            warn!(error = %e, "seats not closed at shutdown");
        }
        self.http.abort();
        self.pruning.abort();
        self.sweeper.abort();
        info!("convene stopped");
    }
}

/// The embedded TURN server (when enabled) and the ICE servers clients are handed: the static
/// `ice_servers`, then the embedded server's URLs or `turn.urls`, with credentials of the TURN
/// secret.
async fn start_turn(
    config: &Config,
    sfu: &Sfu,
    sfu_config: &SfuConfig,
    metrics: &Metrics,
) -> anyhow::Result<(Option<crate::turn::Turn>, crate::turn::IceServers)> {
    use crate::turn::{IceServers, MediaAddresses, Turn};
    let turn_config = &config.turn;
    if !turn_config.enabled && turn_config.urls.is_empty() {
        return Ok((
            None,
            IceServers::new(
                config.ice_servers.clone(),
                Vec::new(),
                Vec::new(),
                turn_config.credential_ttl,
            ),
        ));
    }
    let secret =
        crate::turn::load_or_create_secret(&turn_config.secret, &config.turn_secret_path())
            .with_context(|| {
                format!(
                    "loading the TURN secret {}",
                    config.turn_secret_path().display()
                )
            })?;
    let mut urls = turn_config.urls.clone();
    let mut turn = None;
    if turn_config.enabled {
        let media = MediaAddresses {
            announced: sfu_config.announced_ips.clone(),
            ports: sfu.media_addrs().iter().map(|a| a.port()).collect(),
            bind: sfu_config.bind.ip(),
        };
        let server = Turn::start(config, &secret, &media, metrics.clone()).await?;
        let host = if turn_config.public_host.is_empty() {
            sfu_config.announced_ips[0].to_string()
        } else {
            turn_config.public_host.clone()
        };
        urls.splice(0..0, IceServers::embedded_urls(&host, &server));
        turn = Some(server);
    }
    let ice = IceServers::new(
        config.ice_servers.clone(),
        urls,
        secret,
        turn_config.credential_ttl,
    );
    Ok((turn, ice))
}

/// Seats left `joined` belong to sockets and media that no longer exist (after `kill -9`, or
/// at a graceful stop): they are closed, and every live meeting, now empty, starts its
/// countdown, so its seats are free and it ends like any meeting left empty.
/// In a cluster, only this node's seats: the others' sockets and media live on.
async fn reconcile_seats(state: &AppState, live: &Live, when: &str) -> anyhow::Result<()> {
    let now = crate::store::now_ms();
    let (closed, live_meetings) = match &state.cluster {
        Some(cluster) => {
            state
                .store
                .reconcile_seats_of_node(cluster.node_id(), now)
                .await
        }
        None => state.store.reconcile_seats(now).await,
    }
    .context("closing the seats of a previous run")?;
    if when == "startup" {
        for meeting in &live_meetings {
            meeting_left_empty(state, live, meeting).await;
        }
    }
    if closed > 0 || !live_meetings.is_empty() {
        info!(
            when,
            seats = closed,
            live_meetings = live_meetings.len(),
            "seats reconciled"
        );
    }
    Ok(())
}

/// A live meeting whose seats were closed: its empty-meeting countdown runs on one node (here
/// on a single node; in a cluster, here unless a live node serves the meeting, which counts
/// down itself when its last participant leaves). The countdown never ends a meeting while
/// seats are joined through another node.
async fn meeting_left_empty(state: &AppState, live: &Live, meeting: &str) {
    let here = match &state.cluster {
        Some(cluster) => cluster.claim(meeting).await,
        None => true,
    };
    if here {
        live.rooms.meeting_is_empty(meeting);
    }
}

/// Cluster mode: the seats of a node that died stay `joined` while its clients resume on other
/// nodes (which take the seats over); once a node has been gone from the registry for
/// `ws_resume_grace` and a heartbeat more, the seats it still holds are closed, by whichever node
/// sees it first (closing is idempotent), and the meetings they leave empty count down.
async fn sweep_dead_nodes(state: AppState, live: Live) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let grace = state.config.ws_resume_grace + state.config.cluster_node_ttl;
    let mut gone_since: std::collections::HashMap<String, std::time::Instant> = Default::default();
    let mut every = tokio::time::interval(state.config.cluster_heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (Ok(seat_nodes), Ok(nodes)) = (state.store.seat_nodes().await, cluster.nodes().await)
        else {
            continue;
        };
        let now = std::time::Instant::now();
        gone_since.retain(|id, _| seat_nodes.contains(id));
        for id in seat_nodes {
            if id == cluster.node_id() || nodes.iter().any(|n| n.id == id) {
                gone_since.remove(&id);
                continue;
            }
            let since = *gone_since.entry(id.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            match state
                .store
                .reconcile_seats_of_node(&id, crate::store::now_ms())
                .await
            {
                Ok((closed, meetings)) => {
                    // Every node that sees the death does this; one of them finds the seats.
                    if closed > 0 {
                        info!(node = %id, seats = closed, "closed the seats of a node that died");
                    }
                    for meeting in &meetings {
                        meeting_left_empty(&state, &live, meeting).await;
                    }
                    gone_since.remove(&id);
                }
                Err(e) => warn!(node = %id, error = %e, "closing a dead node's seats"),
            }
        }
    }
}

/// Background upkeep: every minute, forgets rate-limit keys whose quota is full again; every
/// second, looks whether many peers have gone since the peak, and then gives freed heap back
/// to the system (see [`release_memory`]).
async fn maintain(limits: RateLimits, metrics: Metrics, trim_after_peers: usize) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut peak_peers = 0;
    loop {
        every.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(60) {
            limits.prune();
        }
        let peers = metrics.peers.get();
        peak_peers = peak_peers.max(peers);
        // A burst of peers (a large meeting ending, a flood of never-connecting offers) leaves
        // its memory with the allocator; hand it back once `memory_trim_after_peers` and a
        // quarter of the peak are gone.
        let gone = peak_peers - peers;
        if trim_after_peers > 0 && gone >= trim_after_peers as i64 && gone * 4 >= peak_peers {
            peak_peers = peers;
            let _ = tokio::task::spawn_blocking(release_memory).await;
        }
    }
}

/// Returns free heap pages to the system (glibc keeps freed memory in its arenas: without this
/// the resident size stays at the high-water mark of the largest burst).
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn router(state: AppState, live: Live) -> Router {
    let cors = cors_layer(&state.config.cors_allowed_origins);
    let routes = Router::new()
        .merge(crate::web::router())
        .merge(crate::api::health::router())
        .merge(crate::signaling::router(live))
        .merge(crate::api::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::api::cluster::route_to_owner,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::ratelimit::enforce,
        ))
        .layer(axum::middleware::from_fn(
            crate::api::extract::refuse_control_characters,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state);
    // The CORS layer answers every OPTIONS itself; a plain OPTIONS (no
    // Access-Control-Request-Method) is a WHIP client asking what the endpoint accepts and which
    // ICE servers to use (RFC 9725 §4.2), so it goes to the routes.
    let with_cors = routes.clone().layer(cors);
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let plain_options = request.method() == Method::OPTIONS
            && !request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let target = if plain_options {
            routes.clone()
        } else {
            with_cors.clone()
        };
        target.oneshot(request)
    }))
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            HeaderName::from_static("accept-patch"),
            HeaderName::from_static("accept-post"),
        ])
}

/// The media engines' part of the config.
pub(crate) fn sfu_config(config: &Config) -> SfuConfig {
    SfuConfig {
        bind: SocketAddr::new(media_bind_ip(config), config.media_udp_port),
        workers: config.media_workers(),
        announced_ips: announced_ips(config),
        max_peers: config.max_peers,
        keyframe_request_interval: config.keyframe_request_interval,
        connect_timeout: config.connect_timeout,
        whep_publisher_wait: config.whep_publisher_wait,
        ice_check_interval: config.ice_check_interval,
        ice_disconnected_timeout: config.ice_disconnected_timeout,
        ice_failed_timeout: config.ice_failed_timeout,
        nack_cache_packets: config.nack_cache_packets.min(u16::MAX as usize / 2) as u16,
        audio_red: config.audio_red,
        bwe: crate::sfu::BweConfig {
            enabled: config.bwe,
            initial: config.bwe_initial_bitrate,
            min: config.bwe_min_bitrate,
            max: config.bwe_max_bitrate,
            pacer_queue_packets: config.pacer_queue_packets,
        },
        active_speaker_interval: config.active_speaker_interval,
        max_addresses_per_peer: config.max_addresses_per_peer,
        ice_tcp: config.ice_tcp,
        ice_tcp_max_connections: config.ice_tcp_max_connections,
    }
}

/// `media_bind_ip`; the default `::` (dual-stack) becomes `0.0.0.0` on a host without IPv6.
fn media_bind_ip(config: &Config) -> IpAddr {
    let ip = config.media_bind_ip;
    if ip.is_ipv6() && ip.is_unspecified() && std::net::UdpSocket::bind("[::]:0").is_err() {
        if config.public_ip.iter().any(IpAddr::is_ipv6) {
            warn!("this host has no IPv6: the IPv6 public_ip is announced but unreachable");
        }
        return IpAddr::from([0, 0, 0, 0]);
    }
    ip
}

/// Configured public addresses, else the address we bind to, else every address of the host
/// the socket can take: IPv4, and IPv6 (not link-local) on a dual-stack socket, loopback
/// included so local clients connect.
fn announced_ips(config: &Config) -> Vec<IpAddr> {
    if !config.public_ip.is_empty() {
        return config.public_ip.clone();
    }
    let bind = media_bind_ip(config);
    if !bind.is_unspecified() {
        return vec![bind];
    }
    let ipv6 = bind.is_ipv6();
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|interfaces| {
            interfaces
                .into_iter()
                .map(|i| i.ip())
                .filter(|ip| match ip {
                    IpAddr::V4(_) => true,
                    // Link-local needs a scope a candidate cannot carry.
                    IpAddr::V6(v6) => ipv6 && !v6.is_unicast_link_local(),
                })
                .collect()
        })
        .unwrap_or_default();
    // Non-loopback first (ICE tries candidates in priority order and remote clients need
    // those), IPv4 before IPv6 within each.
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
    ips.dedup();
    if ips.is_empty() {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips
}
