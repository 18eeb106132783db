//! What a load subscriber measures of one received stream, without decoding it: packets, bytes,
//! sequence gaps (loss) and interarrival jitter (RFC 3550 §6.4.1).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters the progress line and the report read while the receiver writes them.
#[derive(Default)]
pub struct Counters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets the sequence numbers say were sent (highest - first + 1, over every stream).
    pub expected: AtomicU64,
    /// Jitter in microseconds, the last estimate.
    pub jitter_us: AtomicU64,
    /// One-way delay of audio packets (the publisher stamps each; the run's publishers and
    /// subscribers share a clock): its sum in microseconds and how many packets it covers.
    pub delay_us: AtomicU64,
    pub delayed: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            expected: self.expected.load(Ordering::Relaxed),
            delay_us: self.delay_us.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub packets: u64,
    pub bytes: u64,
    pub expected: u64,
    pub delay_us: u64,
    pub delayed: u64,
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, earlier: Snapshot) -> Snapshot {
        Snapshot {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            expected: self.expected.saturating_sub(earlier.expected),
            delay_us: self.delay_us.saturating_sub(earlier.delay_us),
            delayed: self.delayed.saturating_sub(earlier.delayed),
        }
    }
}

/// Sequence numbers behind the highest one a stream remembers having received, to tell a
/// retransmission of a lost packet from a duplicate.
const SEEN_WINDOW: u64 = 1024;

/// One stream (one SSRC) as it arrives.
pub struct Stream {
    clock_rate: u32,
    first: Option<u64>,
    highest: u64,
    /// Bit `i`: extended sequence number `highest - i` was received.
    seen: [u64; (SEEN_WINDOW / 64) as usize],
    /// Last (arrival in clock units − RTP timestamp), for the jitter estimate.
    transit: Option<i64>,
    jitter: f64,
    epoch: Instant,
}

impl Stream {
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    pub fn new(clock_rate: u32, epoch: Instant) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            first: None,
            highest: 0,
            seen: [0; (SEEN_WINDOW / 64) as usize],
            transit: None,
            jitter: 0.0,
            epoch,
        }
    }

    /// Takes one packet; returns how many more packets the sequence now says were sent, or
    /// `None` for a packet already received (a duplicate: a retransmission of one that was not
    /// lost), which counts for nothing.
    pub fn observe(&mut self, sequence: u16, timestamp: u32, arrival: Instant) -> Option<u64> {
        let grown = match self.first {
            None => {
                let extended = u64::from(sequence) + (1 << 16);
                self.first = Some(extended);
                self.highest = extended;
                self.mark(0);
                1
            }
            Some(_) => {
                let extended = extend(self.highest, sequence);
                if extended > self.highest {
                    let grown = extended - self.highest;
                    self.shift(grown);
                    self.highest = extended;
                    self.mark(0);
                    grown
                } else {
                    let behind = self.highest - extended;
                    if behind < SEEN_WINDOW && self.was_seen(behind) {
                        return None;
                    }
                    if behind < SEEN_WINDOW {
                        self.mark(behind);
                    }
                    0
                }
            }
        };
        let arrival_units =
            (arrival.duration_since(self.epoch).as_secs_f64() * f64::from(self.clock_rate)) as i64;
        let transit = arrival_units - i64::from(timestamp);
        if let Some(previous) = self.transit {
            let d = (transit - previous).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
        Some(grown)
    }

    fn mark(&mut self, behind: u64) {
        self.seen[(behind / 64) as usize] |= 1 << (behind % 64);
    }

    fn was_seen(&self, behind: u64) -> bool {
        self.seen[(behind / 64) as usize] & (1 << (behind % 64)) != 0
    }

    /// The highest sequence number moved `by` ahead: every bit moves `by` further behind.
    fn shift(&mut self, by: u64) {
        if by >= SEEN_WINDOW {
            self.seen = [0; (SEEN_WINDOW / 64) as usize];
            return;
        }
        let mut shifted = [0u64; (SEEN_WINDOW / 64) as usize];
        for behind in 0..SEEN_WINDOW - by {
            if self.was_seen(behind) {
                let to = behind + by;
                shifted[(to / 64) as usize] |= 1 << (to % 64);
            }
        }
        self.seen = shifted;
    }

    pub fn jitter_us(&self) -> u64 {
        (self.jitter * 1e6 / f64::from(self.clock_rate)) as u64
    }
}

/// The extended sequence number of `sequence` nearest to `highest` (RFC 3550 A.1).
fn extend(highest: u64, sequence: u16) -> u64 {
    let cycle = highest & !0xFFFF;
    let candidate = cycle | u64::from(sequence);
    let half = 1u64 << 15;
    if candidate + half < highest {
        candidate + (1 << 16)
    } else if candidate > highest + half && candidate >= 1 << 16 {
        candidate - (1 << 16)
    } else {
        candidate
    }
}

/// The p-th percentile (0..=100) of `values`, nearest rank; `None` when empty.
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// The clock audio packets are stamped with: microseconds since the run's first use of it.
pub fn stamp_now() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gaps_and_wraparound_count_as_expected_packets() {
        let epoch = Instant::now();
        let mut stream = Stream::new(90_000, epoch);
        let mut expected = 0;
        for sequence in [65_534u16, 65_535, 0, 3, 2, 4] {
            expected += stream.observe(sequence, 0, epoch).expect("new");
        }
        // 65534..=4 across the wrap is 7 packets; 1 was never seen, 2 came late.
        assert_eq!(expected, 7);
        // A retransmission of 1 (lost) counts; a second copy of 2 does not.
        assert_eq!(stream.observe(1, 0, epoch), Some(0));
        assert_eq!(stream.observe(2, 0, epoch), None);
        assert_eq!(stream.observe(65_535, 0, epoch), None);
    }

    #[test]
    fn steady_arrival_has_no_jitter_and_uneven_arrival_has_some() {
        let epoch = Instant::now();
        let mut steady = Stream::new(90_000, epoch);
        let mut uneven = Stream::new(90_000, epoch);
        for i in 0..100u32 {
            let at = epoch + Duration::from_millis(u64::from(i) * 20);
            let _ = steady.observe(i as u16, i * 1800, at);
            let late = if i % 2 == 0 { 5 } else { 0 };
            let _ = uneven.observe(i as u16, i * 1800, at + Duration::from_millis(late));
        }
        assert!(steady.jitter_us() < 100, "{}", steady.jitter_us());
        assert!(uneven.jitter_us() > 2_000, "{}", uneven.jitter_us());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 50.0), Some(50.0));
        assert_eq!(percentile(&mut values, 95.0), Some(95.0));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
