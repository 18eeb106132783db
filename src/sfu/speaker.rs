//! Active speakers from the RTP audio-level header extension (RFC 6464): each audio packet
//! carries its loudness in -dBov (0 loudest, 127 silence). Per track, a smoothed loudness;
//! per room, every interval, the ranked list of participants above a threshold.

use std::time::{Duration, Instant};

use crate::ids::ParticipantId;

/// Loudness in 0..=127 (127 - dBov) below which a participant is not speaking (about -50 dBov).
pub const SPEAKING_THRESHOLD: f32 = 77.0;
/// A track whose last level is older than this counts as silent.
const STALE: Duration = Duration::from_millis(1000);
/// Weight of a new packet: about 20 ms audio packets, so loudness follows within ~100 ms.
const SMOOTHING: f32 = 0.2;

/// The loudness of one audio track.
#[derive(Debug, Default, Clone, Copy)]
pub struct AudioLevel {
    smoothed: f32,
    last: Option<Instant>,
}

impl AudioLevel {
    /// Folds in the level of one packet (the extension's first byte).
    #[inline]
    pub fn observe(&mut self, extension_byte: u8, now: Instant) {
        let loudness = f32::from(127 - (extension_byte & 0x7F));
        self.smoothed += (loudness - self.smoothed) * SMOOTHING;
        self.last = Some(now);
    }

    /// Current loudness, 0 when no level arrived lately.
    pub fn loudness(&self, now: Instant) -> f32 {
        match self.last {
            Some(last) if now.duration_since(last) < STALE => self.smoothed,
            _ => 0.0,
        }
    }
}

/// A participant heard in a room: `level` is 0..=1 (1 loudest).
#[derive(Debug, Clone, PartialEq)]
pub struct Speaker {
    pub identity: ParticipantId,
    pub level: f32,
}

/// Participants above the threshold, loudest first; each participant once (its loudest track).
pub fn rank(mut heard: Vec<(ParticipantId, f32)>) -> Vec<Speaker> {
    heard.retain(|(_, loudness)| *loudness >= SPEAKING_THRESHOLD);
    heard.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut speakers: Vec<Speaker> = Vec::new();
    for (identity, loudness) in heard {
        if !speakers.iter().any(|s| s.identity == identity) {
            speakers.push(Speaker {
                identity,
                level: loudness / 127.0,
            });
        }
    }
    speakers
}

/// Whether two rankings name the same participants in the same order (levels move constantly;
/// only an order change is news).
pub fn same_order(a: &[Speaker], b: &[Speaker]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.identity == y.identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loud_packets_raise_loudness_and_staleness_silences() {
        let t0 = Instant::now();
        let mut level = AudioLevel::default();
        for i in 0..50 {
            level.observe(10, t0 + Duration::from_millis(20 * i)); // -10 dBov: loud
        }
        let now = t0 + Duration::from_millis(1000);
        assert!(level.loudness(now) > 110.0, "{}", level.loudness(now));
        assert_eq!(level.loudness(now + Duration::from_secs(2)), 0.0);
        let mut quiet = AudioLevel::default();
        for i in 0..50 {
            quiet.observe(0x80 | 120, t0 + Duration::from_millis(20 * i)); // voice bit set, -120 dBov
        }
        assert!(quiet.loudness(now) < 10.0);
    }

    #[test]
    fn ranks_loudest_first_once_per_participant() {
        let id = |s: &str| ParticipantId(s.into());
        let ranked = rank(vec![
            (id("a"), 90.0),
            (id("b"), 120.0),
            (id("a"), 100.0),
            (id("c"), 20.0),
        ]);
        let names: Vec<_> = ranked.iter().map(|s| s.identity.0.as_str()).collect();
        assert_eq!(
            names,
            ["b", "a"],
            "c is below the threshold; a appears once"
        );
        assert!((ranked[0].level - 120.0 / 127.0).abs() < 1e-6);
        assert!(same_order(
            &ranked,
            &rank(vec![(id("b"), 100.0), (id("a"), 95.0)])
        ));
        assert!(!same_order(
            &ranked,
            &rank(vec![(id("a"), 125.0), (id("b"), 100.0)])
        ));
    }
}
