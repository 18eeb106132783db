//! `convene load`: a load generator for any WHIP/WHEP server.
//!
//! Publishers send synthetic VP8-packetized video and Opus through WHIP; subscribers connect
//! through WHEP, complete ICE/DTLS/SRTP and count every packet (sequence gaps, jitter, bytes)
//! without decoding, so one core drives hundreds of them. It speaks only WHIP/WHEP (RFC 9725
//! and the WHEP draft), so the same command measures another SFU.
//!
//! The run: publishers connect → (server RSS sampled) → subscribers join at `join_rate` →
//! warm-up → the measured window of `seconds` → publishers stop → a short drain → the report.
//! Delivery is what the subscribers received in the window over what their publisher sent in
//! it; with `server_pid`, the server's CPU time in the window over the packets delivered.

mod client;
pub mod procfs;
pub mod report;
pub mod stats;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::token::{Grants, JoinClaims, TokenKeys};
use client::{ClientPeer, PeerStatus};
use report::Report;
use stats::Counters;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the server is unreachable: {0}")]
    Unreachable(String),
    #[error("the server refused the token: {0}")]
    Refused(String),
    #[error("the server answered with an error: {0}")]
    Server(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Local(String),
    #[error("{0}")]
    Usage(String),
}

/// Where tokens come from: one given token for every session, or minted per session.
pub enum Tokens {
    Given(String),
    Minted(Box<TokenKeys>),
}

impl Tokens {
    fn for_session(&self, room: &str, identity: &str, publish: bool, ttl: Duration) -> String {
        match self {
            Tokens::Given(token) => token.clone(),
            Tokens::Minted(keys) => {
                let grants = Grants {
                    publish,
                    subscribe: !publish,
                    ..Default::default()
                };
                keys.sign(&JoinClaims::new(room, identity, grants, ttl))
            }
        }
    }
}

pub struct LoadOptions {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Where subscribers go, in turn (other nodes of a cluster); empty: `url`.
    pub subscriber_urls: Vec<String>,
    pub room: String,
    pub tokens: Tokens,
    pub publishers: usize,
    pub subscribers: usize,
    pub video_kbps: u32,
    /// The measured window.
    pub seconds: u64,
    /// Subscribers started per second.
    pub join_rate: f64,
    pub warmup: Duration,
    /// The server process, for CPU per packet and RSS per subscriber from `/proc`.
    pub server_pid: Option<u32>,
    /// A progress line on stderr every second.
    pub progress: bool,
}

struct Session {
    location: Option<String>,
    token: String,
}

struct Subscriber {
    status: Arc<PeerStatus>,
    counters: Arc<Counters>,
    publisher: usize,
}

pub async fn run(options: LoadOptions) -> Result<Report, LoadError> {
    if options.publishers == 0 {
        return Err(LoadError::Usage("--publishers must be at least 1".into()));
    }
    let base = options.url.trim_end_matches('/').to_owned();
    let server = resolve(&base)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        // Followed in `post`, with the token: a cluster node sends a POST for a room served
        // elsewhere on with 307, and clients drop Authorization on a redirect to another origin.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| LoadError::Local(e.to_string()))?;
    let ttl = Duration::from_secs(options.seconds + 3600);
    let (stop, stopped) = watch::channel(false);
    let (stop_media, media_stopped) = watch::channel(false);
    let mut sessions = Vec::new();
    let mut tasks = Vec::new();

    // Publishers: each must connect, or the run has nothing to measure.
    let mut sent = Vec::new();
    let mut publisher_ids = Vec::new();
    for i in 0..options.publishers {
        let identity = format!("load-pub-{i}");
        let token = options
            .tokens
            .for_session(&options.room, &identity, true, ttl);
        let (mut peer, senders) = ClientPeer::new(server, true)?;
        let offer = peer.offer()?;
        let (answer, location) =
            post(&http, &base, "whip", &options.room, None, &token, offer).await?;
        peer.apply_answer(answer)?;
        let status = Arc::new(PeerStatus::default());
        let counter = Arc::new(AtomicU64::new(0));
        tasks.push(tokio::spawn(peer.publish(
            senders,
            options.video_kbps,
            status.clone(),
            counter.clone(),
            media_stopped.clone(),
        )));
        wait_connected(&status, Duration::from_secs(15))
            .await
            .map_err(|()| {
                LoadError::Unreachable(format!(
                    "publisher {identity} did not connect (ICE/DTLS) within 15 s: is the media port reachable?"
                ))
            })?;
        sessions.push(Session { location, token });
        sent.push(counter);
        publisher_ids.push(identity);
    }
    let rss_before = options.server_pid.and_then(procfs::rss_bytes);

    // Subscribers, paced; a refusal of the first one ends the run with its reason.
    let mut failures = Vec::new();
    let mut subscribers = Vec::new();
    let pace = Duration::from_secs_f64(1.0 / options.join_rate.max(0.1));
    let joining_started = Instant::now();
    for i in 0..options.subscribers {
        let publisher = i % options.publishers;
        let identity = format!("load-sub-{i}");
        let token = options
            .tokens
            .for_session(&options.room, &identity, false, ttl);
        // With several publishers, each viewer names its own (Convene's `?publisher=`).
        let watch = (options.publishers > 1 && matches!(options.tokens, Tokens::Minted(_)))
            .then(|| publisher_ids[publisher].clone());
        let status = Arc::new(PeerStatus::default());
        let counters = Arc::new(Counters::default());
        subscribers.push(Subscriber {
            status: status.clone(),
            counters: counters.clone(),
            publisher,
        });
        let started = Instant::now();
        let (mut peer, _) = ClientPeer::new(server, false)?;
        let offer = peer.offer()?;
        let subscriber_base = match options.subscriber_urls.len() {
            0 => base.clone(),
            n => options.subscriber_urls[i % n]
                .trim_end_matches('/')
                .to_owned(),
        };
        let joined = post(
            &http,
            &subscriber_base,
            "whep",
            &options.room,
            watch.as_deref(),
            &token,
            offer,
        )
        .await;
        let (answer, location) = match joined {
            Ok(joined) => joined,
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                status.failed.store(true, Ordering::Relaxed);
                failures.push(e.to_string());
                continue;
            }
        };
        sessions.push(Session { location, token });
        if let Err(e) = peer.apply_answer(answer.clone()) {
            status.failed.store(true, Ordering::Relaxed);
            failures.push(e.to_string());
            continue;
        }
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            peer.receive(&answer, started, status, counters, stopped)
                .await
        }));
        if options.progress && i % 10 == 9 {
            progress_line(&format!("joining {}/{}", i + 1, options.subscribers));
        }
        let next = joining_started + pace * (i as u32 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    // Everyone connected, or failed, or the deadline passed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && subscribers.iter().any(|s| {
            !s.status.connected.load(Ordering::Relaxed) && !s.status.failed.load(Ordering::Relaxed)
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(options.warmup).await;
    let rss_after = options.server_pid.and_then(procfs::rss_bytes);

    // The measured window.
    let sent_start: Vec<u64> = sent.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let received_start: Vec<_> = subscribers.iter().map(|s| s.counters.snapshot()).collect();
    let cpu_start = options.server_pid.and_then(procfs::cpu_seconds);
    let window_start = Instant::now();
    let window = Duration::from_secs(options.seconds);
    while window_start.elapsed() < window {
        tokio::time::sleep(
            Duration::from_secs(1).min(window.saturating_sub(window_start.elapsed())),
        )
        .await;
        if options.progress {
            let packets: u64 = subscribers
                .iter()
                .zip(&received_start)
                .map(|(s, start)| (s.counters.snapshot() - *start).packets)
                .sum();
            let rate = packets as f64 / window_start.elapsed().as_secs_f64().max(0.001);
            let connected = subscribers
                .iter()
                .filter(|s| s.status.connected.load(Ordering::Relaxed))
                .count();
            progress_line(&format!(
                "{:>3}/{} s · {connected}/{} subscribers connected · {:.0} packets/s received",
                window_start.elapsed().as_secs(),
                options.seconds,
                subscribers.len(),
                rate
            ));
        }
    }
    let elapsed = window_start.elapsed();
    let cpu_end = options.server_pid.and_then(procfs::cpu_seconds);
    // Publishers stop; what they sent gets a moment to arrive before the receivers are read.
    let _ = stop_media.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_end: Vec<u64> = sent.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let received_end: Vec<_> = subscribers.iter().map(|s| s.counters.snapshot()).collect();
    let _ = stop.send(true);
    if options.progress {
        eprintln!();
    }

    let report = report::build(report::Inputs {
        options: &options,
        elapsed,
        subscribers: subscribers
            .iter()
            .zip(received_start.iter().zip(&received_end))
            .map(|(s, (start, end))| report::SubscriberInputs {
                window: *end - *start,
                publisher_sent: sent_end[s.publisher].saturating_sub(sent_start[s.publisher]),
                connected: s.status.connected.load(Ordering::Relaxed),
                connect_us: s.status.connect_us.load(Ordering::Relaxed),
                first_packet_us: s.status.first_packet_us.load(Ordering::Relaxed),
                jitter_us: s.counters.jitter_us.load(Ordering::Relaxed),
            })
            .collect(),
        packets_sent: sent_end
            .iter()
            .zip(&sent_start)
            .map(|(end, start)| end.saturating_sub(*start))
            .sum(),
        failures,
        server_cpu_seconds: cpu_start.zip(cpu_end).map(|(a, b)| b - a),
        rss_before,
        rss_after,
    });

    // Tidy up: the tasks send DTLS close_notify; the sessions are deleted (best effort).
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let deletes = sessions.iter().filter_map(|s| {
        s.location.as_ref().map(|location| {
            let url = absolute(&base, location);
            http.delete(url).bearer_auth(&s.token).send()
        })
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(deletes),
    )
    .await;
    Ok(report)
}

async fn wait_connected(status: &PeerStatus, within: Duration) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if status.connected.load(Ordering::Relaxed) {
            return Ok(());
        }
        if status.failed.load(Ordering::Relaxed) {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(())
}

/// POSTs an offer to `/{kind}/{room}`; returns the answer and the session's Location.
async fn post(
    http: &reqwest::Client,
    base: &str,
    kind: &str,
    room: &str,
    publisher: Option<&str>,
    token: &str,
    offer: String,
) -> Result<(String, Option<String>), LoadError> {
    let mut url = format!("{base}/{kind}/{room}");
    if let Some(publisher) = publisher {
        url.push_str(&format!("?publisher={publisher}"));
    }
    let mut redirects = 0;
    let response = loop {
        let response = http
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/sdp")
            .body(offer.clone())
            .send()
            .await
            .map_err(|e| LoadError::Unreachable(format!("POST {url}: {}", error_chain(&e))))?;
        let redirected = matches!(response.status().as_u16(), 307 | 308);
        let next = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|location| absolute(base, location));
        match next {
            Some(next) if redirected && redirects < 3 => {
                redirects += 1;
                url = next;
            }
            _ => break response,
        }
    };
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.unwrap_or_default();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        return Err(LoadError::Refused(format!(
            "POST {url}: {status} {}",
            body.trim()
        )));
    }
    if !status.is_success() {
        return Err(LoadError::Server(format!(
            "POST {url}: {status} {}",
            body.trim()
        )));
    }
    if !body.starts_with("v=0") {
        return Err(LoadError::Protocol(format!(
            "POST {url}: {status} without an SDP answer"
        )));
    }
    Ok((body, location))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// The server's address, for our own socket to route to (its media may be elsewhere; ICE finds
/// it from the answer's candidates).
fn resolve(base: &str) -> Result<SocketAddr, LoadError> {
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .ok_or_else(|| {
            LoadError::Usage(format!("--url must be http(s)://host:port, not {base}"))
        })?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else if base.starts_with("https://") {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| LoadError::Unreachable(format!("resolving {authority}: {e}")))?
        .next()
        .ok_or_else(|| LoadError::Unreachable(format!("{authority} has no address")))
}

fn progress_line(text: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "\r\x1b[2K{text}");
    let _ = stderr.flush();
}
