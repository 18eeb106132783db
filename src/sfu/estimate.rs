//! Send-side bandwidth estimation of one subscriber leg, from the subscriber's transport-wide
//! congestion control feedback, inside the leg's interceptor chain (webrtc-rs' congestion
//! control interceptor joins departures with the reported arrivals), and an [`Estimate`] the
//! engine reads without reaching into the chain (the estimator sits in a boxed interceptor the
//! application cannot name, so it publishes each new target into atomics it shares with the
//! peer).
//!
//! Why our own and not webrtc-rs' GCC: measured behind a 600 kbit/s tbf link with a Chromium
//! viewer, GCC's delay half never saw overuse (its estimate kept growing past 4 Mbit/s while the
//! queue filled) and its loss half, once loss passed 10%, cut again on every feedback that still
//! showed the queue built before the last cut, down to its 100 kbit/s floor: the video was
//! paused for seconds on a link that carries 600 kbit/s. This one compares the recent one-way
//! delay with the path's base delay (three seconds' minimum), backs off once per
//! overuse episode to a share of what the receiver actually got, and grows slowly near the
//! rate it last overused at.
//!
//! Until the path has shown a limit (the estimate fell once: delay grew or loss passed GCC's
//! threshold) the estimate is only GCC's starting guess growing, so nothing is held back for it:
//! the allocator sees no estimate and the pacer runs at the ceiling. A stream above the starting
//! guess is therefore not paused on a path that carries it. It also hands the pacer a
//! rate [`PACING_FACTOR`] above the estimate: the allocator keeps the forwarded rate under the
//! estimate itself, and the pacer's job is only to spread bursts (a keyframe) instead of
//! releasing them at line rate; pacing at the estimate exactly would queue every burst behind
//! steady media and add its length to the latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, PacketReport};

/// The pacer releases at this multiple of the estimate (libwebrtc paces video at 2.5×).
pub const PACING_FACTOR: f64 = 1.5;

/// What a leg's estimator last said, readable from the engine.
#[derive(Debug, Default)]
pub struct Estimate {
    bits_per_second: AtomicU64,
    /// Reports received: 0 until the subscriber's first feedback.
    reports: AtomicU64,
    /// The estimate has fallen at least once: it now says something about the path.
    limited: AtomicBool,
}

impl Estimate {
    /// The estimate, once the path has shown a limit (before it, nothing is known).
    pub fn bits_per_second(&self) -> Option<u64> {
        self.limited
            .load(Ordering::Relaxed)
            .then(|| self.bits_per_second.load(Ordering::Relaxed))
    }

    /// What GCC says now, limit shown or not (for figures).
    pub fn raw_bits_per_second(&self) -> Option<u64> {
        (self.reports.load(Ordering::Relaxed) > 0)
            .then(|| self.bits_per_second.load(Ordering::Relaxed))
    }
}

/// Queueing delay above the path's base delay that counts as overuse.
const OVERUSE_DELAY: Duration = Duration::from_millis(40);
/// Below this the path is taken as clear (between the two: hold).
const CLEAR_DELAY: Duration = Duration::from_millis(15);
/// Loss (smoothed) that counts as overuse; below [`CLEAR_LOSS`] the path is clear. Random loss
/// under it (a lossy Wi-Fi) is NACK's business, not a reason to send less.
const OVERUSE_LOSS: f64 = 0.10;
const CLEAR_LOSS: f64 = 0.05;
/// On overuse the estimate goes to this share of what the path delivered.
const BACKOFF: f64 = 0.85;
/// One decrease per overuse episode: the feedback after a decrease still shows the queue built
/// before it (and the delivered rate falls with what is sent), so acting on it again would
/// compound the cut down to the floor. Another comes only once the queue has drained, or when
/// overuse outlasts this.
const DECREASE_HOLD: Duration = Duration::from_millis(600);
/// Growth per second on a clear path, and near the rate at which the path last overused (for
/// [`CEILING_MEMORY`] after it), where the next overuse is likely.
const GROWTH: f64 = 0.10;
const GROWTH_NEAR_CEILING: f64 = 0.03;
const CEILING_MEMORY: Duration = Duration::from_secs(6);
/// Growth is capped at this multiple of the delivered rate (plus [`GROWTH_SLACK`]): an estimate
/// that ran far ahead of anything sent would say nothing about the path.
const GROWTH_CAP: f64 = 2.5;
const GROWTH_SLACK: f64 = 300_000.0;
/// The window the delivered rate and the recent delay are measured over.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// The window loss is measured over.
const LOSS_WINDOW: Duration = Duration::from_secs(2);
/// The window the standing queue is read over (the smallest delay in it).
const RECENT_WINDOW: Duration = Duration::from_millis(200);
/// One decrease cuts at most to this share of the estimate: the delivered rate read right
/// after a burst of loss can be far below what the path carries.
const MAX_CUT: f64 = 0.5;
/// The window the base delay is the minimum of (it follows a route change within it).
const BASE_WINDOW: Duration = Duration::from_secs(3);

/// The subscriber leg's estimator (see the module note): delay above the path's base delay and
/// loss say overuse, the receiver's delivered rate says how much to back off to.
pub struct Estimator {
    out: Arc<Estimate>,
    target: f64,
    min: f64,
    max: f64,
    /// Departures are measured from here (arrivals are on the receiver's own clock).
    epoch: Option<Instant>,
    /// (arrival on the receiver's clock, bytes) of the packets in the last [`RATE_WINDOW`].
    arrivals: std::collections::VecDeque<(Duration, usize)>,
    /// (when, one-way delay + the clocks' offset) of recent packets.
    delays: std::collections::VecDeque<(Instant, f64)>,
    /// Per-second minimum delays over [`BASE_WINDOW`].
    base: std::collections::VecDeque<(Instant, f64)>,
    /// (when, lost, reported) per feedback over the last [`LOSS_WINDOW`].
    losses: std::collections::VecDeque<(Instant, usize, usize)>,
    loss: f64,
    last_update: Option<Instant>,
    last_decrease: Option<Instant>,
    /// A decrease was made and the queue has not drained since.
    backing_off: bool,
    /// The delivered rate at the last overuse, and when.
    ceiling: Option<(f64, Instant)>,
}

impl Estimator {
    pub fn new(initial: f64, min: f64, max: f64) -> (Self, Arc<Estimate>) {
        let out = Arc::new(Estimate::default());
        let target = initial.clamp(min, max);
        out.bits_per_second.store(target as u64, Ordering::Relaxed);
        (
            Self {
                out: out.clone(),
                target,
                min,
                max,
                epoch: None,
                arrivals: Default::default(),
                delays: Default::default(),
                base: Default::default(),
                losses: Default::default(),
                loss: 0.0,
                last_update: None,
                last_decrease: None,
                backing_off: false,
                ceiling: None,
            },
            out,
        )
    }

    /// What the receiver got over the last window, bits per second.
    fn delivered(&self) -> Option<f64> {
        let (first, last) = (self.arrivals.front()?.0, self.arrivals.back()?.0);
        let span = last.saturating_sub(first);
        if span < Duration::from_millis(100) {
            return None;
        }
        let bytes: usize = self.arrivals.iter().skip(1).map(|(_, b)| b).sum();
        Some(bytes as f64 * 8.0 / span.as_secs_f64())
    }

    /// Standing queueing delay now: the smallest recent delay above the base (the window's
    /// minimum). The smallest, not the mean: a frame's packets leave in a burst and wait for
    /// each other at a slow link, which raises the mean without any standing queue.
    fn queueing(&self) -> Option<Duration> {
        let base = self
            .base
            .iter()
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min);
        let recent = self
            .delays
            .iter()
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min);
        if !recent.is_finite() || !base.is_finite() {
            return None;
        }
        Some(Duration::from_secs_f64((recent - base).max(0.0)))
    }

    fn observe(&mut self, now: Instant, reports: &[PacketReport]) {
        let epoch = *self.epoch.get_or_insert(reports[0].departure);
        let mut lost = 0usize;
        for report in reports {
            let Some(arrival) = report.arrival.filter(|_| report.arrived) else {
                lost += 1;
                continue;
            };
            self.arrivals.push_back((arrival, report.size));
            // Signed: a packet may have left before the first one reported.
            let departure = if report.departure >= epoch {
                report.departure.duration_since(epoch).as_secs_f64()
            } else {
                -epoch.duration_since(report.departure).as_secs_f64()
            };
            let delay = arrival.as_secs_f64() - departure;
            self.delays.push_back((now, delay));
            match self.base.back_mut() {
                Some((at, min)) if now.saturating_duration_since(*at) < Duration::from_secs(1) => {
                    *min = min.min(delay)
                }
                _ => self.base.push_back((now, delay)),
            }
        }
        if let Some(&(last, _)) = self.arrivals.back() {
            while self
                .arrivals
                .front()
                .is_some_and(|(a, _)| last.saturating_sub(*a) > RATE_WINDOW)
            {
                self.arrivals.pop_front();
            }
        }
        // The delay "now" is the last ~200 ms of packets; the base, ten seconds' minimum.
        while self
            .delays
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RECENT_WINDOW)
        {
            self.delays.pop_front();
        }
        while self
            .base
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > BASE_WINDOW)
        {
            self.base.pop_front();
        }
        // Loss over two seconds of packets (at least 100): a few packets say nothing.
        self.losses.push_back((now, lost, reports.len()));
        while self
            .losses
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > LOSS_WINDOW)
        {
            self.losses.pop_front();
        }
        let (lost, reported) = self
            .losses
            .iter()
            .fold((0, 0), |(l, r), (_, lost, n)| (l + lost, r + n));
        self.loss = if reported >= 100 {
            lost as f64 / reported as f64
        } else {
            0.0
        };
    }

    fn update(&mut self, now: Instant) {
        let dt = self.last_update.map_or(0.0, |at| {
            now.saturating_duration_since(at).as_secs_f64().min(1.0)
        });
        self.last_update = Some(now);
        let (Some(queueing), delivered) = (self.queueing(), self.delivered()) else {
            return;
        };
        let overuse = queueing > OVERUSE_DELAY || self.loss > OVERUSE_LOSS;
        let clear = queueing < CLEAR_DELAY && self.loss < CLEAR_LOSS;
        // The queue drained: the next overuse is a new episode (loss is not a queue: its
        // episodes end only with the hold).
        if queueing < OVERUSE_DELAY / 2 && self.loss <= OVERUSE_LOSS {
            self.backing_off = false;
        }
        if overuse {
            let held = self.backing_off
                && self
                    .last_decrease
                    .is_some_and(|at| now.saturating_duration_since(at) < DECREASE_HOLD);
            if let (false, Some(delivered)) = (held, delivered) {
                let backed_off = (delivered * BACKOFF)
                    .max(self.target * MAX_CUT)
                    .clamp(self.min, self.max);
                if backed_off < self.target {
                    self.target = backed_off;
                    self.last_decrease = Some(now);
                    self.backing_off = true;
                    self.ceiling = Some((delivered, now));
                    self.out.limited.store(true, Ordering::Relaxed);
                }
            }
        } else if clear {
            let near_ceiling = self.ceiling.is_some_and(|(rate, at)| {
                now.saturating_duration_since(at) < CEILING_MEMORY && self.target > rate * 0.9
            });
            let growth = if near_ceiling {
                GROWTH_NEAR_CEILING
            } else {
                GROWTH
            };
            let cap = delivered.map_or(self.max, |d| d * GROWTH_CAP + GROWTH_SLACK);
            let grown = self.target * (1.0 + growth * dt);
            self.target = grown.min(cap.max(self.target)).clamp(self.min, self.max);
        }
    }
}

impl BandwidthEstimator for Estimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        self.observe(now, reports);
        self.update(now);
        tracing::trace!(
            target = self.target,
            queueing_ms = self.queueing().map(|q| q.as_millis() as u64),
            delivered = self.delivered(),
            loss = self.loss,
            "estimate"
        );
        self.out
            .bits_per_second
            .store(self.target as u64, Ordering::Relaxed);
        self.out.reports.fetch_add(1, Ordering::Relaxed);
    }

    /// What the chain hands the pacer (see the module note).
    fn target_bitrate(&self) -> f64 {
        if self.out.limited.load(Ordering::Relaxed) {
            self.target * PACING_FACTOR
        } else {
            self.max * PACING_FACTOR
        }
    }

    fn stats(&self) -> EstimatorStats {
        EstimatorStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// Sends `send_bps` through a bottleneck of `link_bps` with a drop-tail queue of at most
    /// `queue_limit` of delay and random loss `loss`, for `seconds`, feeding the estimator one
    /// feedback per 50 ms; returns the estimate after each second.
    fn simulate(
        estimator: &mut Estimator,
        send_bps: impl Fn(f64) -> f64,
        link_bps: impl Fn(f64) -> f64,
        loss: f64,
        seconds: u32,
    ) -> Vec<f64> {
        let t0 = Instant::now();
        let base = Duration::from_millis(20);
        let queue_limit = Duration::from_millis(200);
        let size = 1200usize;
        let mut link_free = Duration::ZERO; // when the bottleneck is next idle (since t0)
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 10_000) as f64 / 10_000.0
        };
        let (mut out, mut batch, mut id) = (Vec::new(), Vec::new(), 0u64);
        let mut sent_at = Duration::ZERO;
        let end = Duration::from_secs(u64::from(seconds));
        let mut next_feedback = Duration::from_millis(50);
        let mut next_second = Duration::from_secs(1);
        while sent_at < end {
            // What the allocator would forward: the stream, within the estimate.
            let rate = send_bps(sent_at.as_secs_f64()).min(estimator.target);
            sent_at += Duration::from_secs_f64(size as f64 * 8.0 / rate.max(1.0));
            let start = link_free.max(sent_at);
            let queued = start - sent_at;
            let arrived = queued <= queue_limit && random() >= loss;
            if queued <= queue_limit {
                let link = link_bps(sent_at.as_secs_f64());
                link_free = start + Duration::from_secs_f64(size as f64 * 8.0 / link);
            }
            id += 1;
            batch.push(PacketReport {
                ssrc: 1,
                id,
                rtp_sequence_number: id as u16,
                is_twcc: true,
                twcc_sequence_number: id as u16,
                size,
                arrived,
                departure: t0 + sent_at,
                arrival: arrived.then(|| link_free + base + Duration::from_secs(7)),
                ecn: Ecn::NotEct,
            });
            if sent_at >= next_feedback {
                estimator.on_reports(t0 + sent_at + base, &std::mem::take(&mut batch));
                next_feedback += Duration::from_millis(50);
            }
            if sent_at >= next_second {
                out.push(estimator.target);
                next_second += Duration::from_secs(1);
            }
        }
        out
    }

    #[test]
    fn a_link_slower_than_the_stream_brings_the_estimate_to_its_rate_and_not_below() {
        let (mut estimator, shared) = Estimator::new(1_000_000.0, 100_000.0, 20_000_000.0);
        // 900 kbit/s offered into 600 kbit/s.
        let trace = simulate(&mut estimator, |_| 900_000.0, |_| 600_000.0, 0.0, 20);
        let settled = &trace[5..];
        assert!(
            shared.bits_per_second().is_some(),
            "the path showed a limit"
        );
        for estimate in settled {
            assert!(
                (300_000.0..=750_000.0).contains(estimate),
                "near the link's 600k, not collapsed: {trace:?}"
            );
        }
    }

    #[test]
    fn random_loss_below_the_threshold_does_not_move_the_estimate_down() {
        let (mut estimator, shared) = Estimator::new(1_000_000.0, 100_000.0, 20_000_000.0);
        let trace = simulate(&mut estimator, |_| 800_000.0, |_| 10e6, 0.05, 10);
        assert!(
            shared.bits_per_second().is_none(),
            "5% loss with no queue is no limit: {trace:?}"
        );
        assert!(trace.windows(2).all(|w| w[1] >= w[0]), "{trace:?}");
    }

    #[test]
    fn a_clear_path_lets_the_estimate_grow_a_limited_one_stops_it() {
        let (mut estimator, _) = Estimator::new(500_000.0, 100_000.0, 20_000_000.0);
        let trace = simulate(&mut estimator, |_| 2_000_000.0, |_| 10e6, 0.0, 8);
        assert!(
            trace.last().unwrap() > &(500_000.0 * 1.5),
            "grows about 10%/s: {trace:?}"
        );
        // Lifting a limit: 600k for 10 s, then 5 Mbit/s: the estimate climbs past 1 Mbit/s
        // within 10 s of the lift.
        let (mut estimator, _) = Estimator::new(1_000_000.0, 100_000.0, 20_000_000.0);
        let link = |t: f64| if t < 10.0 { 600_000.0 } else { 5_000_000.0 };
        let trace = simulate(&mut estimator, |_| 1_500_000.0, link, 0.0, 20);
        assert!(trace[9] < 800_000.0, "limited: {trace:?}");
        assert!(trace[19] > 1_000_000.0, "lifted: {trace:?}");
    }
}
