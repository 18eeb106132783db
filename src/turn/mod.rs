//! TURN: the embedded TURN server (UDP and TCP on one port, TLS on another) and the ICE servers
//! handed to clients, with coturn-compatible credentials so an external coturn sharing the
//! secret works the same. The rest of Convene sees [`Turn::start`] and [`IceServers`].
//!
//! Why our own server on webrtc-rs' STUN/TURN codec rather than a TURN crate: see
//! `docs/turn.md` (in short: the crates either keep per-source state before authentication,
//! cannot check a credential's expiry on every request, cannot refuse peers, or are UDP only).

pub mod credentials;
mod listener;
mod nonce;
pub mod policy;
mod relay;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::{Config, IceServer};
use crate::metrics::Metrics;
pub use policy::PeerPolicy;

/// Events queued for the relay's owner; past it datagrams drop (UDP semantics).
const EVENT_QUEUE: usize = 8192;

/// What the embedded server needs besides the config: where Convene's media is.
pub struct MediaAddresses {
    pub announced: Vec<IpAddr>,
    pub ports: Vec<u16>,
    pub bind: IpAddr,
}

/// A running embedded TURN server; its tasks end when it is dropped.
pub struct Turn {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Turn {
    pub async fn start(
        config: &Config,
        secret: &[u8],
        media: &MediaAddresses,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let turn = &config.turn;
        let (udp, tcp) = bind_udp_and_tcp(turn.listen).await?;
        let udp = Arc::new(udp);
        let udp_addr = udp.local_addr()?;
        let tcp_addr = tcp.local_addr()?;
        let relay_ip = |v4: bool| {
            turn.relay_ip
                .iter()
                .chain(media.announced.iter())
                .find(|ip| ip.is_ipv4() == v4)
                .copied()
        };
        let settings = relay::Settings {
            realm: turn.realm.clone(),
            secret: secret.to_vec(),
            relay_ipv4: relay_ip(true),
            relay_ipv6: relay_ip(false),
            policy: PeerPolicy::new(
                &media.announced,
                &media.ports,
                media.bind,
                turn.allowed_peer_networks.clone(),
            ),
            max_allocations: turn.max_allocations,
            max_allocations_per_user: turn.max_allocations_per_user,
            max_lifetime: turn.max_lifetime,
            nonce_lifetime: Duration::from_secs(600),
        };
        let (events, mut incoming) = mpsc::channel(EVENT_QUEUE);
        let mut relay = relay::Relay::new(settings, events.clone(), metrics.clone())?;
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            let mut sweep = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    event = incoming.recv() => match event {
                        Some(event) => relay.handle(event, Instant::now()),
                        None => return,
                    },
                    _ = sweep.tick() => relay.sweep(Instant::now()),
                }
            }
        }));
        tasks.push(tokio::spawn(listener::serve_udp(
            udp,
            events.clone(),
            metrics.clone(),
        )));
        let connections = Arc::new(Semaphore::new(turn.max_connections));
        tasks.push(tokio::spawn(listener::serve_tcp(
            tcp,
            None,
            connections.clone(),
            events.clone(),
            metrics.clone(),
        )));
        let mut tls = None;
        if let Some(acceptor) = tls_acceptor(config)? {
            let listener = TcpListener::bind(turn.tls_listen)
                .await
                .with_context(|| format!("binding TURN TLS {}", turn.tls_listen))?;
            tls = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(listener::serve_tcp(
                listener,
                Some(acceptor),
                connections,
                events,
                metrics,
            )));
        }
        info!(udp = %udp_addr, tcp = %tcp_addr, tls = ?tls, "turn listening");
        Ok(Self {
            udp: udp_addr,
            tcp: tcp_addr,
            tls,
            tasks,
        })
    }
}

/// UDP and TCP on the same port; with port 0, a free port both can take.
async fn bind_udp_and_tcp(listen: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("binding TURN UDP {listen}"))?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 => last = Some(e),
            Err(e) => return Err(e).with_context(|| format!("binding TURN TCP {addr}")),
        }
    }
    Err(last.expect("tried")).context("no port free for TURN on both UDP and TCP")
}

fn tls_acceptor(config: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let turn = &config.turn;
    if turn.tls_cert.as_os_str().is_empty() {
        return Ok(None);
    }
    let certs = CertificateDer::pem_file_iter(&turn.tls_cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading turn.tls_cert {}", turn.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&turn.tls_key)
        .with_context(|| format!("reading turn.tls_key {}", turn.tls_key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("turn.tls_cert and turn.tls_key do not make a certificate")?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// A secret shorter than this is refused: anyone could guess it and sign credentials.
pub const MIN_SECRET_BYTES: usize = 16;

/// The TURN secret: `turn.secret`, else one generated once into `path`.
pub fn load_or_create_secret(configured: &str, path: &Path) -> std::io::Result<Vec<u8>> {
    let secret = if !configured.is_empty() {
        configured.to_owned()
    } else {
        match std::fs::read_to_string(path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_secret(path)?,
            Err(e) => return Err(e),
        }
    };
    if secret.len() < MIN_SECRET_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the TURN secret is shorter than {MIN_SECRET_BYTES} bytes (remove {} to have one \
                 generated, or set a longer turn.secret)",
                path.display()
            ),
        ));
    }
    Ok(secret.into_bytes())
}

/// Writes a new secret to `path` whole or not at all (a temporary file, then a link that fails
/// if another process got there first, whose secret then wins).
fn create_secret(path: &Path) -> std::io::Result<String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Printable, so an operator can paste it into coturn's static-auth-secret.
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

/// The ICE servers a client is handed: the configured static ones, and the TURN URLs (embedded
/// or external) with a fresh credential for the client's identity.
#[derive(Debug, Clone, Default)]
pub struct IceServers {
    fixed: Vec<IceServer>,
    turn_urls: Vec<String>,
    secret: Vec<u8>,
    ttl: Duration,
}

impl IceServers {
    pub fn new(
        fixed: Vec<IceServer>,
        turn_urls: Vec<String>,
        secret: Vec<u8>,
        ttl: Duration,
    ) -> Self {
        Self {
            fixed,
            turn_urls,
            secret,
            ttl,
        }
    }

    /// The embedded server's URLs, reached at `host` (a name or an address).
    pub fn embedded_urls(host: &str, turn: &Turn) -> Vec<String> {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let mut urls = vec![
            format!("turn:{host}:{}?transport=udp", turn.udp.port()),
            format!("turn:{host}:{}?transport=tcp", turn.tcp.port()),
        ];
        if let Some(tls) = turn.tls {
            urls.push(format!("turns:{host}:{}?transport=tcp", tls.port()));
        }
        urls
    }

    pub fn for_identity(&self, identity: &str) -> Vec<IceServer> {
        let mut servers = self.fixed.clone();
        if !self.turn_urls.is_empty() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let credential =
                credentials::issue(&self.secret, identity, self.ttl.as_secs().max(1), now);
            servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(credential.username),
                credential: Some(credential.password),
            });
        }
        servers
    }
}
