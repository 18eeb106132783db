//! Simulcast: a published video track as up to [`MAX_LAYERS`] encodings of one source (RID
//! `q`/`h`/`f` in Chromium's shape), each its own RTP stream, and which of them each down track
//! receives.
//!
//! A track that is not simulcast has one layer (its RID empty). Layers are ordered lowest
//! first: by the conventional RID names when the publisher uses them (`q` < `h` < `f`,
//! `l` < `m` < `h`, `0` < `1` < `2`), else in the order of its `a=simulcast` line. Their sizes are
//! learned from VP8 keyframes; the bitrates are measured here as packets arrive.

use std::time::{Duration, Instant};

use super::history::History;
use super::track::KeyframeThrottle;

/// More encodings than this are not received (browsers send at most three).
pub const MAX_LAYERS: usize = 3;

/// A layer that has sent nothing for this long is taken as stopped (the publisher's encoder
/// dropped it, for its own bandwidth or CPU): down tracks move off it.
pub const LAYER_IDLE: Duration = Duration::from_millis(1_500);

/// How often a layer's bitrate is measured.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// Dynacast: a layer nobody has needed for this long is no longer encoded (the publisher is
/// told); one needed again is resumed at once.
pub const UNNEEDED_FOR: Duration = Duration::from_secs(2);

/// What a simulcast track's publisher was last told to encode, and since when each layer has
/// gone unneeded.
#[derive(Debug, Default, Clone)]
pub struct Dynacast {
    pub told: Option<Vec<bool>>,
    pub unneeded_since: [Option<Instant>; MAX_LAYERS],
}

impl Dynacast {
    /// The layers to encode now, given those some subscriber needs (the lowest always: a new
    /// subscriber starts on it at once); `Some` when that differs from what was last told.
    pub fn update(&mut self, needed: &[bool], now: Instant) -> Option<Vec<bool>> {
        let active: Vec<bool> = needed
            .iter()
            .enumerate()
            .map(|(i, &need)| {
                let since = &mut self.unneeded_since[i.min(MAX_LAYERS - 1)];
                if need || i == 0 {
                    *since = None;
                    return true;
                }
                let since = *since.get_or_insert(now);
                now.saturating_duration_since(since) < UNNEEDED_FOR
            })
            .collect();
        let changed = self.told.as_ref() != Some(&active);
        // Nothing to say before the first change: publishers start with every layer on.
        if changed && (self.told.is_some() || active.iter().any(|a| !a)) {
            self.told = Some(active.clone());
            return Some(active);
        }
        None
    }
}

pub struct Layer {
    /// Its RTP stream id (empty for a track that is not simulcast).
    pub rid: String,
    /// Learned from its first packet; needed to address PLI/FIR.
    pub ssrc: Option<u32>,
    pub keyframes: KeyframeThrottle,
    /// Video: the recent packets, for NACKs.
    pub history: Option<History>,
    /// From its last VP8 keyframe.
    pub size: Option<(u16, u16)>,
    pub rate: Rate,
    /// VP8: frames per second in each temporal layer (what a frame-rate cap chooses from).
    pub frame_rates: FrameRates,
}

impl Layer {
    pub fn new(rid: String, history: Option<History>) -> Self {
        Self {
            rid,
            ssrc: None,
            keyframes: KeyframeThrottle::default(),
            history,
            size: None,
            rate: Rate::default(),
            frame_rates: FrameRates::default(),
        }
    }

    /// Whether it is being sent now.
    pub fn active(&self, now: Instant) -> bool {
        self.rate
            .last_packet
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE)
    }
}

/// RIDs in the order layers are kept: lowest quality first.
pub fn order(rids: &[String]) -> Vec<String> {
    const CONVENTIONS: [[&str; 3]; 3] = [["q", "h", "f"], ["l", "m", "h"], ["0", "1", "2"]];
    let mut rids: Vec<String> = rids.iter().take(MAX_LAYERS).cloned().collect();
    let convention = CONVENTIONS
        .iter()
        .find(|names| rids.iter().all(|r| names.contains(&r.as_str())));
    if let Some(names) = convention {
        rids.sort_by_key(|r| names.iter().position(|n| n == r));
    }
    rids
}

/// A layer's bitrate, measured over [`RATE_WINDOW`]s (what the allocator spends).
#[derive(Debug, Default, Clone)]
pub struct Rate {
    window_start: Option<Instant>,
    window_bytes: u64,
    /// Bits per second over the last full window.
    pub bits_per_second: u64,
    pub last_packet: Option<Instant>,
}

impl Rate {
    #[inline]
    pub fn observe(&mut self, bytes: usize, now: Instant) {
        self.last_packet = Some(now);
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            self.bits_per_second =
                (self.window_bytes * 8 * 1_000_000) / (elapsed.as_micros().max(1) as u64);
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
        self.window_bytes += bytes as u64;
    }
}

/// Temporal layers a frame-rate cap can choose among (VP8 names at most four).
pub const MAX_TEMPORAL: usize = 4;
const FRAME_RATE_WINDOW: Duration = Duration::from_secs(1);

/// Frames per second of each temporal layer of one stream, counted from frame starts over one
/// second windows.
#[derive(Debug, Default, Clone)]
pub struct FrameRates {
    window_start: Option<Instant>,
    counting: [u16; MAX_TEMPORAL],
    /// Frames per second in each layer over the last full window.
    pub per_layer: [u16; MAX_TEMPORAL],
}

impl FrameRates {
    #[inline]
    pub fn observe(&mut self, tid: u8, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= FRAME_RATE_WINDOW {
            let scale = 1_000_000.0 / elapsed.as_micros().max(1) as f64;
            for (rate, count) in self.per_layer.iter_mut().zip(&mut self.counting) {
                *rate = (f64::from(*count) * scale).round() as u16;
                *count = 0;
            }
            self.window_start = Some(now);
        }
        let slot = usize::from(tid).min(MAX_TEMPORAL - 1);
        self.counting[slot] = self.counting[slot].saturating_add(1);
    }

    /// The frame rates of the layers seen, base first (empty: no temporal layers seen).
    pub fn known(&self) -> &[u16] {
        let seen = self
            .per_layer
            .iter()
            .rposition(|r| *r > 0)
            .map_or(0, |top| top + 1);
        &self.per_layer[..seen]
    }

    /// The lowest temporal layer whose frame rate (with every layer below it) reaches `fps`,
    /// or every layer (`None`) when only all of them together do, or none is known.
    pub fn layer_for(&self, fps: u16) -> Option<u8> {
        let known = self.known();
        let mut total = 0u16;
        for (tid, rate) in known.iter().enumerate().take(known.len().saturating_sub(1)) {
            total = total.saturating_add(*rate);
            // A tenth below the ask still counts (frame rates wobble).
            if u32::from(total) * 10 >= u32::from(fps) * 9 {
                return Some(tid as u8);
            }
        }
        None
    }
}

/// What a subscriber asked to receive of one video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The best there is (the default).
    Best,
    /// The smallest layer at least this wide and high (a tile's size in device pixels).
    Size { width: u16, height: u16 },
    /// This layer at most (0 = lowest).
    Layer(u8),
}

/// The highest layer `wanted` allows, among `layers` (lowest first).
pub fn wanted_layer(layers: &[Layer], wanted: Wanted) -> usize {
    let top = layers.len().saturating_sub(1);
    match wanted {
        Wanted::Best => top,
        Wanted::Layer(layer) => usize::from(layer).min(top),
        Wanted::Size { width, height } => {
            // Sizes known from keyframes decide; unknown ones are taken as the usual
            // quarter, half and full of a 1280×720 top layer.
            let assumed = |index: usize| -> (u16, u16) {
                let shift = top - index;
                (1280 >> shift, 720 >> shift)
            };
            (0..=top)
                .find(|&index| {
                    let (w, h) = layers[index].size.unwrap_or_else(|| assumed(index));
                    w >= width && h >= height
                })
                .unwrap_or(top)
        }
    }
}

/// The layer a down track should move to: the highest that is active, at most `ceiling`; when
/// none up to it is active, the lowest active one above it (something beats nothing).
pub fn choose(layers: &[Layer], ceiling: usize, now: Instant) -> Option<usize> {
    let ceiling = ceiling.min(layers.len().saturating_sub(1));
    (0..=ceiling)
        .rev()
        .find(|&i| layers[i].active(now))
        .or_else(|| (ceiling + 1..layers.len()).find(|&i| layers[i].active(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(active: [bool; 3], now: Instant) -> Vec<Layer> {
        active
            .iter()
            .zip(["q", "h", "f"])
            .map(|(on, rid)| {
                let mut layer = Layer::new(rid.into(), None);
                if *on {
                    layer.rate.observe(1000, now);
                }
                layer
            })
            .collect()
    }

    #[test]
    fn rids_are_ordered_lowest_first() {
        let s = |v: &[&str]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(order(&s(&["f", "h", "q"])), s(&["q", "h", "f"]));
        assert_eq!(order(&s(&["h", "m", "l"])), s(&["l", "m", "h"]));
        assert_eq!(order(&s(&["2", "0", "1"])), s(&["0", "1", "2"]));
        assert_eq!(order(&s(&["lo", "hi"])), s(&["lo", "hi"]), "SDP order");
        assert_eq!(order(&s(&["f", "h", "q", "x"])).len(), MAX_LAYERS);
    }

    #[test]
    fn a_tile_size_picks_the_smallest_layer_that_covers_it() {
        let now = Instant::now();
        let mut all = layers([true; 3], now);
        let size = |w, h| Wanted::Size {
            width: w,
            height: h,
        };
        assert_eq!(wanted_layer(&all, size(160, 90)), 0);
        assert_eq!(wanted_layer(&all, size(320, 180)), 0);
        assert_eq!(wanted_layer(&all, size(321, 180)), 1);
        assert_eq!(wanted_layer(&all, size(1280, 720)), 2);
        assert_eq!(wanted_layer(&all, size(3840, 2160)), 2, "nothing bigger");
        assert_eq!(wanted_layer(&all, Wanted::Layer(1)), 1);
        assert_eq!(wanted_layer(&all, Wanted::Layer(9)), 2);
        assert_eq!(wanted_layer(&all, Wanted::Best), 2);
        // Learned sizes win over the assumption.
        all[0].size = Some((480, 270));
        assert_eq!(wanted_layer(&all, size(400, 200)), 0);
    }

    #[test]
    fn the_choice_skips_stopped_layers() {
        let now = Instant::now();
        assert_eq!(choose(&layers([true; 3], now), 2, now), Some(2));
        assert_eq!(choose(&layers([true; 3], now), 1, now), Some(1));
        assert_eq!(choose(&layers([true, true, false], now), 2, now), Some(1));
        assert_eq!(
            choose(&layers([false, false, true], now), 0, now),
            Some(2),
            "above the ceiling beats nothing"
        );
        assert_eq!(choose(&layers([false; 3], now), 2, now), None);
        let later = now + LAYER_IDLE;
        assert_eq!(choose(&layers([true; 3], now), 2, later), None, "idle");
    }

    #[test]
    fn rate_is_measured_per_window() {
        let t0 = Instant::now();
        let mut rate = Rate::default();
        for i in 0..50 {
            rate.observe(1250, t0 + Duration::from_millis(i * 10));
        }
        rate.observe(0, t0 + Duration::from_millis(500));
        assert_eq!(rate.bits_per_second, 1_000_000);
    }
}
