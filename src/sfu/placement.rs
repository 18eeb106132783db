//! Which media engine owns which room.
//!
//! A room lives on exactly one engine for as long as it holds a peer, so its fan-out never
//! crosses threads. A room is placed when its first peer is asked for, on the engine with the
//! fewest peers (then the fewest rooms), and forgotten when its engine has released it and no
//! command that may open it again is still on its way. That "still on its way" count is what
//! keeps a room from being split: without it, a room emptied on engine 0 while a join for it
//! waits in engine 0's queue could be placed anew on engine 1 by the next join.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::ids::RoomId;

pub(super) struct Placement {
    rooms: Mutex<HashMap<RoomId, Placed>>,
    /// Peers each engine holds, as it last reported.
    peers: Vec<AtomicUsize>,
}

struct Placed {
    engine: usize,
    /// Commands that may open the room, sent and not yet handled by its engine.
    pending: usize,
}

impl Placement {
    pub fn new(engines: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            peers: (0..engines.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    pub fn engines(&self) -> usize {
        self.peers.len()
    }

    /// The engine of `room`, placing it if it has none; the caller is about to send it a
    /// command that may open the room, and the engine calls [`Placement::settle`] once handled.
    pub fn claim(&self, room: &RoomId) -> usize {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(placed) = rooms.get_mut(room) {
            placed.pending += 1;
            return placed.engine;
        }
        let mut rooms_on = vec![0usize; self.peers.len()];
        for placed in rooms.values() {
            rooms_on[placed.engine] += 1;
        }
        let engine = (0..self.peers.len())
            .min_by_key(|&e| (self.peers[e].load(Ordering::Relaxed), rooms_on[e]))
            .unwrap_or(0);
        rooms.insert(room.clone(), Placed { engine, pending: 1 });
        engine
    }

    /// The engine of `room`, if it is placed (a room without one holds nobody).
    pub fn find(&self, room: &RoomId) -> Option<usize> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.get(room).map(|p| p.engine)
    }

    /// Every placed room.
    pub fn rooms(&self) -> Vec<RoomId> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.keys().cloned().collect()
    }

    /// A claimed command was handled; `open` says whether the room holds peers now.
    pub fn settle(&self, room: &RoomId, open: bool) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(placed) = rooms.get_mut(room) {
            placed.pending = placed.pending.saturating_sub(1);
            if placed.pending == 0 && !open {
                rooms.remove(room);
            }
        }
    }

    /// The room's engine released it (its last peer left).
    pub fn released(&self, room: &RoomId) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms.get(room).is_some_and(|p| p.pending == 0) {
            rooms.remove(room);
        }
    }

    pub fn report_peers(&self, engine: usize, peers: usize) {
        if let Some(count) = self.peers.get(engine) {
            count.store(peers, Ordering::Relaxed);
        }
    }

    /// Peers of every engine: what `max_peers` bounds. Engines report after each change, so
    /// two engines admitting at the same instant may pass the bound by one peer each.
    pub fn total_peers(&self) -> usize {
        self.peers.iter().map(|p| p.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId(name.into())
    }

    #[test]
    fn rooms_go_to_the_least_loaded_engine_and_stay_there() {
        let placement = Placement::new(2);
        let a = placement.claim(&room("a"));
        let b = placement.claim(&room("b"));
        assert_ne!(a, b, "the second room goes to the empty engine");
        placement.report_peers(a, 10);
        placement.settle(&room("a"), true);
        placement.settle(&room("b"), true);
        assert_eq!(placement.claim(&room("c")), b, "fewest peers wins");
        assert_eq!(placement.claim(&room("a")), a, "a placed room stays put");
    }

    #[test]
    fn a_room_is_forgotten_only_when_released_and_nothing_is_pending() {
        let placement = Placement::new(2);
        let engine = placement.claim(&room("a"));
        placement.settle(&room("a"), true);
        // A join is on its way when the last peer leaves: the room keeps its engine.
        assert_eq!(placement.claim(&room("a")), engine);
        placement.released(&room("a"));
        assert_eq!(placement.find(&room("a")), Some(engine));
        // The join was refused: now nothing holds the room.
        placement.settle(&room("a"), false);
        assert_eq!(placement.find(&room("a")), None);
    }
}
