//! The figures of a load run: a table for people, `--json` for scripts.

use std::time::Duration;

use serde::Serialize;

use super::stats::{percentile, Snapshot};
use super::LoadOptions;

pub(super) struct Inputs<'a> {
    pub options: &'a LoadOptions,
    pub elapsed: Duration,
    pub subscribers: Vec<SubscriberInputs>,
    /// Every publisher's packets in the window.
    pub packets_sent: u64,
    pub failures: Vec<String>,
    pub server_cpu_seconds: Option<f64>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
}

pub(super) struct SubscriberInputs {
    /// Received in the window (plus what was in flight when it closed).
    pub window: Snapshot,
    /// What the subscriber's publisher sent in the window.
    pub publisher_sent: u64,
    pub connected: bool,
    pub connect_us: u64,
    pub first_packet_us: u64,
    pub jitter_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub publishers: usize,
    pub subscribers: usize,
    pub subscribers_connected: usize,
    pub subscribers_failed: usize,
    /// The first few reasons subscribers failed to join.
    pub failures: Vec<String>,
    pub seconds: f64,
    pub video_kbps: u32,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Received over what each subscriber's publisher sent in the window, in percent (at most
    /// 100: packets in flight as the window opened arrive inside it).
    pub delivery_percent: f64,
    /// Loss the sequence numbers show (gaps), in percent of what they say was sent.
    pub loss_percent: f64,
    pub jitter_ms_p50: Option<f64>,
    pub jitter_ms_p95: Option<f64>,
    /// POST to ICE+DTLS connected.
    pub join_ms_p50: Option<f64>,
    pub join_ms_p95: Option<f64>,
    /// POST to the first media packet.
    pub first_packet_ms_p50: Option<f64>,
    pub first_packet_ms_p95: Option<f64>,
    /// Mean one-way delay of audio packets, publisher to subscriber (one clock: the load
    /// generator runs both ends).
    pub delay_ms_mean: Option<f64>,
    pub received_mbit_per_s: f64,
    /// With `--server-pid`: the server's CPU time over packets delivered, in microseconds.
    pub server_us_per_packet: Option<f64>,
    /// Server CPU in percent of one core over the window.
    pub server_cpu_percent: Option<f64>,
    /// Server RSS growth from before the subscribers joined, per subscriber connected.
    pub server_rss_bytes_per_subscriber: Option<f64>,
    pub server_rss_bytes: Option<u64>,
}

pub(super) fn build(inputs: Inputs<'_>) -> Report {
    let options = inputs.options;
    let seconds = inputs.elapsed.as_secs_f64().max(0.001);
    let connected: Vec<&SubscriberInputs> =
        inputs.subscribers.iter().filter(|s| s.connected).collect();
    // Every subscriber that should have received counts, connected or not: a subscriber that
    // never connected delivered 0 of what it was sent.
    let expected: u64 = inputs.subscribers.iter().map(|s| s.publisher_sent).sum();
    let received: u64 = inputs.subscribers.iter().map(|s| s.window.packets).sum();
    let bytes: u64 = inputs.subscribers.iter().map(|s| s.window.bytes).sum();
    let gaps_expected: u64 = inputs.subscribers.iter().map(|s| s.window.expected).sum();
    let delivery = if expected == 0 {
        0.0
    } else {
        (received as f64 / expected as f64 * 100.0).min(100.0)
    };
    let loss = if gaps_expected == 0 {
        0.0
    } else {
        (gaps_expected.saturating_sub(received) as f64 / gaps_expected as f64 * 100.0).max(0.0)
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let delay_us: u64 = inputs.subscribers.iter().map(|s| s.window.delay_us).sum();
    let delayed: u64 = inputs.subscribers.iter().map(|s| s.window.delayed).sum();
    let mut jitter: Vec<f64> = connected.iter().map(|s| ms(s.jitter_us)).collect();
    let mut join: Vec<f64> = connected
        .iter()
        .filter(|s| s.connect_us > 0)
        .map(|s| ms(s.connect_us))
        .collect();
    let mut first: Vec<f64> = connected
        .iter()
        .filter(|s| s.first_packet_us > 0)
        .map(|s| ms(s.first_packet_us))
        .collect();
    let rss_growth = inputs
        .rss_before
        .zip(inputs.rss_after)
        .map(|(before, after)| after.saturating_sub(before) as f64);
    Report {
        publishers: options.publishers,
        subscribers: options.subscribers,
        subscribers_connected: connected.len(),
        subscribers_failed: options.subscribers - connected.len(),
        failures: inputs.failures.into_iter().take(5).collect(),
        seconds,
        video_kbps: options.video_kbps,
        packets_sent: inputs.packets_sent,
        packets_received: received,
        delivery_percent: round(delivery, 3),
        loss_percent: round(loss, 3),
        jitter_ms_p50: percentile(&mut jitter, 50.0).map(|v| round(v, 2)),
        jitter_ms_p95: percentile(&mut jitter, 95.0).map(|v| round(v, 2)),
        join_ms_p50: percentile(&mut join, 50.0).map(|v| round(v, 1)),
        join_ms_p95: percentile(&mut join, 95.0).map(|v| round(v, 1)),
        first_packet_ms_p50: percentile(&mut first, 50.0).map(|v| round(v, 1)),
        first_packet_ms_p95: percentile(&mut first, 95.0).map(|v| round(v, 1)),
        delay_ms_mean: (delayed > 0).then(|| round(ms(delay_us) / delayed as f64, 3)),
        received_mbit_per_s: round(bytes as f64 * 8.0 / seconds / 1e6, 2),
        server_us_per_packet: inputs
            .server_cpu_seconds
            .filter(|_| received > 0)
            .map(|cpu| round(cpu * 1e6 / received as f64, 3)),
        server_cpu_percent: inputs
            .server_cpu_seconds
            .map(|cpu| round(cpu / seconds * 100.0, 1)),
        server_rss_bytes_per_subscriber: rss_growth
            .filter(|_| !connected.is_empty())
            .map(|g| round(g / connected.len() as f64, 0)),
        server_rss_bytes: inputs.rss_after,
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v} {unit}"));
        let mut rows = vec![
            (
                "subscribers".to_owned(),
                format!(
                    "{} connected of {} ({} failed)",
                    self.subscribers_connected, self.subscribers, self.subscribers_failed
                ),
            ),
            (
                "publishers".into(),
                format!(
                    "{} × {} kbit/s video + Opus",
                    self.publishers, self.video_kbps
                ),
            ),
            ("window".into(), format!("{:.1} s", self.seconds)),
            ("delivery".into(), format!("{} %", self.delivery_percent)),
            (
                "loss (sequence gaps)".into(),
                format!("{} %", self.loss_percent),
            ),
            (
                "jitter p50 / p95".into(),
                format!(
                    "{} / {}",
                    opt(self.jitter_ms_p50, "ms"),
                    opt(self.jitter_ms_p95, "ms")
                ),
            ),
            (
                "join p50 / p95".into(),
                format!(
                    "{} / {}",
                    opt(self.join_ms_p50, "ms"),
                    opt(self.join_ms_p95, "ms")
                ),
            ),
            (
                "first packet p50 / p95".into(),
                format!(
                    "{} / {}",
                    opt(self.first_packet_ms_p50, "ms"),
                    opt(self.first_packet_ms_p95, "ms")
                ),
            ),
            ("audio delay mean".into(), opt(self.delay_ms_mean, "ms")),
            (
                "packets sent / received".into(),
                format!("{} / {}", self.packets_sent, self.packets_received),
            ),
            (
                "received".into(),
                format!("{} Mbit/s", self.received_mbit_per_s),
            ),
            (
                "server CPU per packet".into(),
                opt(self.server_us_per_packet, "µs"),
            ),
            (
                "server CPU".into(),
                opt(self.server_cpu_percent, "% of a core"),
            ),
            (
                "server RSS per subscriber".into(),
                opt(
                    self.server_rss_bytes_per_subscriber
                        .map(|b| round(b / 1024.0, 1)),
                    "KiB",
                ),
            ),
        ];
        for failure in &self.failures {
            rows.push(("failure".into(), failure.clone()));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}
