//! Connection quality per peer, from what RTCP and ICE tell us: loss (our receive statistics
//! for what a publisher sends, the subscriber's receiver reports for what we send), round-trip
//! time (ICE) and jitter, mapped to poor / fair / good / excellent.

use rtc::statistics::report::{RTCStatsReport, RTCStatsReportEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quality {
    Poor,
    Fair,
    Good,
    Excellent,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Poor => "poor",
            Quality::Fair => "fair",
            Quality::Good => "good",
            Quality::Excellent => "excellent",
        }
    }
}

/// One measurement of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Fraction of packets lost, 0..=1.
    pub loss: f64,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
}

/// Thresholds in the spirit of the E-model: loss hurts most, then delay, then jitter.
pub fn classify(sample: Sample) -> Quality {
    if sample.loss < 0.01 && sample.rtt_ms < 150.0 && sample.jitter_ms < 30.0 {
        Quality::Excellent
    } else if sample.loss < 0.03 && sample.rtt_ms < 300.0 && sample.jitter_ms < 50.0 {
        Quality::Good
    } else if sample.loss < 0.10 && sample.rtt_ms < 500.0 && sample.jitter_ms < 100.0 {
        Quality::Fair
    } else {
        Quality::Poor
    }
}

/// Per-peer memory between samples: receive counters are cumulative, loss is taken over the
/// interval.
#[derive(Debug, Default, Clone)]
pub struct QualityTracker {
    received: u64,
    lost: u64,
    pub last: Option<Quality>,
}

impl QualityTracker {
    pub fn sample(&mut self, report: &RTCStatsReport) -> Sample {
        let (mut received, mut lost, mut jitter_s, mut remote_loss, mut rtt_s) =
            (0u64, 0u64, 0f64, 0f64, 0f64);
        for entry in report.iter() {
            match entry {
                RTCStatsReportEntry::InboundRtp(s) => {
                    received += s.received_rtp_stream_stats.packets_received;
                    lost += s.received_rtp_stream_stats.packets_reported_as_lost;
                    jitter_s = jitter_s.max(jitter_seconds(&s.received_rtp_stream_stats));
                }
                RTCStatsReportEntry::RemoteInboundRtp(s) => {
                    remote_loss = remote_loss.max(s.fraction_lost);
                    jitter_s = jitter_s.max(jitter_seconds(&s.received_rtp_stream_stats));
                    rtt_s = rtt_s.max(s.round_trip_time);
                }
                RTCStatsReportEntry::IceCandidatePair(pair) if pair.nominated => {
                    rtt_s = rtt_s.max(pair.current_round_trip_time);
                }
                _ => {}
            }
        }
        let (received_delta, lost_delta) = (
            received.saturating_sub(self.received),
            lost.saturating_sub(self.lost),
        );
        self.received = received;
        self.lost = lost;
        let inbound_loss = if received_delta + lost_delta == 0 {
            0.0
        } else {
            lost_delta as f64 / (received_delta + lost_delta) as f64
        };
        Sample {
            loss: inbound_loss.max(remote_loss).clamp(0.0, 1.0),
            rtt_ms: rtt_s * 1000.0,
            jitter_ms: jitter_s * 1000.0,
        }
    }
}

/// webrtc-rs fills `jitter` with the RTCP value as is, in RTP timestamp units (not the
/// seconds the W3C field promises): convert with the media clock (Opus 48 kHz, video 90 kHz).
fn jitter_seconds(
    stats: &rtc::statistics::stats::rtp_stream::received::RTCReceivedRtpStreamStats,
) -> f64 {
    to_seconds(stats.rtp_stream_stats.kind, stats.jitter)
}

fn to_seconds(kind: rtc::rtp_transceiver::rtp_sender::RtpCodecKind, timestamp_units: f64) -> f64 {
    let clock_rate = match kind {
        rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video => 90_000.0,
        _ => 48_000.0,
    };
    timestamp_units / clock_rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_bands() {
        let s = |loss, rtt_ms, jitter_ms| Sample {
            loss,
            rtt_ms,
            jitter_ms,
        };
        assert_eq!(classify(s(0.0, 20.0, 5.0)), Quality::Excellent);
        assert_eq!(classify(s(0.02, 20.0, 5.0)), Quality::Good);
        assert_eq!(classify(s(0.0, 400.0, 5.0)), Quality::Fair);
        assert_eq!(classify(s(0.2, 20.0, 5.0)), Quality::Poor);
        assert_eq!(classify(s(0.0, 20.0, 250.0)), Quality::Poor);
    }

    #[test]
    fn jitter_is_converted_from_rtp_timestamp_units() {
        use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
        // 10 ms at 90 kHz and at 48 kHz.
        assert!((to_seconds(RtpCodecKind::Video, 900.0) - 0.010).abs() < 1e-9);
        assert!((to_seconds(RtpCodecKind::Audio, 480.0) - 0.010).abs() < 1e-9);
    }

    #[test]
    fn an_empty_report_is_a_clean_sample() {
        let mut tracker = QualityTracker::default();
        let report = RTCStatsReport::default();
        assert_eq!(tracker.sample(&report), Sample::default());
    }
}
