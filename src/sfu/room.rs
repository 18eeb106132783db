//! Rooms own their media state: a [`Room`] holds its peers (with their down tracks), its
//! published tracks (the forwarding table) and who publishes. An engine holds [`Rooms`], not
//! flat maps of everything it serves: a room's fan-out touches only its own maps.
//!
//! Ids come in from outside (a datagram's peer, a command's session or track), so [`Rooms`]
//! keeps which room holds each peer and track; those indexes are FxHash maps of ids the
//! server made, and a room is found by its slot, never by hashing its name per packet.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use slab::Slab;

use super::peer::Peer;
use super::track::PublishedTrack;
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};

pub struct Room {
    pub id: RoomId,
    pub peers: FxHashMap<PeerId, Peer>,
    /// Every track published in the room, with its subscribers.
    pub tracks: FxHashMap<TrackId, PublishedTrack>,
    /// Publishers in the order they joined; WHEP watches the most recent by default.
    pub publishers: Vec<(PeerId, ParticipantId)>,
    /// The ranking last announced, to announce only changes.
    pub speakers: Vec<crate::sfu::speaker::Speaker>,
}

impl Room {
    pub fn new(id: RoomId) -> Self {
        Self {
            id,
            peers: FxHashMap::default(),
            tracks: FxHashMap::default(),
            publishers: Vec::new(),
            speakers: Vec::new(),
        }
    }

    /// The publisher a subscriber watches: the named identity, else the most recent publisher.
    /// Only a publisher with tracks (a relay still waiting for its answer has none yet): a
    /// viewer waits, and takes it once its tracks are published.
    pub fn choose_publisher(&self, identity: Option<&ParticipantId>) -> Option<PeerId> {
        self.publishers
            .iter()
            .rev()
            .filter(|(peer, _)| self.peers.get(peer).is_none_or(|p| !p.published.is_empty()))
            .find(|(_, who)| identity.is_none_or(|wanted| wanted == who))
            .map(|(peer, _)| *peer)
    }
}

/// The rooms of one engine, and which room holds each peer and each track.
#[derive(Default)]
pub struct Rooms {
    slots: Slab<Room>,
    by_id: HashMap<RoomId, usize>,
    peer_slot: FxHashMap<PeerId, usize>,
    track_slot: FxHashMap<TrackId, usize>,
}

impl Rooms {
    pub fn room_count(&self) -> usize {
        self.slots.len()
    }

    pub fn contains(&self, id: &RoomId) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn get(&self, id: &RoomId) -> Option<&Room> {
        self.slots.get(*self.by_id.get(id)?)
    }

    /// The room, opened if it is not.
    pub fn open(&mut self, id: &RoomId) -> &mut Room {
        let slot = match self.by_id.get(id) {
            Some(slot) => *slot,
            None => {
                let slot = self.slots.insert(Room::new(id.clone()));
                self.by_id.insert(id.clone(), slot);
                slot
            }
        };
        &mut self.slots[slot]
    }

    /// Forgets the room if it holds no peer; returns whether it did.
    pub fn close_if_empty(&mut self, id: &RoomId) -> bool {
        let Some(slot) = self.by_id.get(id).copied() else {
            return false;
        };
        if !self.slots[slot].peers.is_empty() {
            return false;
        }
        let room = self.slots.remove(slot);
        self.by_id.remove(id);
        for track in room.tracks.keys() {
            self.track_slot.remove(track);
        }
        true
    }

    pub fn values(&self) -> impl Iterator<Item = &Room> {
        self.slots.iter().map(|(_, room)| room)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Room> {
        self.slots.iter_mut().map(|(_, room)| room)
    }

    // ---- peers --------------------------------------------------------------------------------

    pub fn of_peer(&self, peer: PeerId) -> Option<&Room> {
        self.slots.get(*self.peer_slot.get(&peer)?)
    }

    pub fn of_peer_mut(&mut self, peer: PeerId) -> Option<&mut Room> {
        self.slots.get_mut(*self.peer_slot.get(&peer)?)
    }

    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.of_peer(id)?.peers.get(&id)
    }

    pub fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.of_peer_mut(id)?.peers.get_mut(&id)
    }

    /// Adds a peer to its room, opening the room if needed.
    pub fn insert_peer(&mut self, peer: Peer) {
        let id = peer.id;
        let publisher = peer.is_publisher().then(|| peer.identity.clone());
        let room_id = peer.room.clone();
        let room = self.open(&room_id);
        if let Some(identity) = publisher {
            room.publishers.push((id, identity));
        }
        room.peers.insert(id, peer);
        let slot = self.by_id[&room_id];
        self.peer_slot.insert(id, slot);
    }

    /// Takes a peer out of its room for good (its room stays open, even empty: see
    /// [`Rooms::close_if_empty`]).
    pub fn remove_peer(&mut self, id: PeerId) -> Option<Peer> {
        let slot = self.peer_slot.remove(&id)?;
        let room = self.slots.get_mut(slot)?;
        room.publishers.retain(|(p, _)| *p != id);
        room.peers.remove(&id)
    }

    /// Takes a peer out of its room's map for a while (its room still counts it as its own:
    /// see [`Rooms::put_back`]), so it can be changed together with the rest of the engine.
    pub fn take_peer(&mut self, id: PeerId) -> Option<Peer> {
        self.of_peer_mut(id)?.peers.remove(&id)
    }

    /// Puts back a peer [`Rooms::take_peer`] took.
    pub fn put_back(&mut self, peer: Peer) {
        if let Some(room) = self.of_peer_mut(peer.id) {
            room.peers.insert(peer.id, peer);
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.values().flat_map(|room| room.peers.values())
    }

    pub fn peers_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.values_mut().flat_map(|room| room.peers.values_mut())
    }

    pub fn peer_count(&self) -> usize {
        self.peer_slot.len()
    }

    // ---- tracks -------------------------------------------------------------------------------

    pub fn of_track_mut(&mut self, track: TrackId) -> Option<&mut Room> {
        self.slots.get_mut(*self.track_slot.get(&track)?)
    }

    pub fn track(&self, id: TrackId) -> Option<&PublishedTrack> {
        self.slots.get(*self.track_slot.get(&id)?)?.tracks.get(&id)
    }

    pub fn track_mut(&mut self, id: TrackId) -> Option<&mut PublishedTrack> {
        self.of_track_mut(id)?.tracks.get_mut(&id)
    }

    /// Adds a track to its publisher's room (which must hold the publisher, or be `room`).
    pub fn insert_track(&mut self, room: &RoomId, track: PublishedTrack) {
        let id = track.id;
        self.open(room).tracks.insert(id, track);
        let slot = self.by_id[room];
        self.track_slot.insert(id, slot);
    }

    pub fn remove_track(&mut self, id: TrackId) -> Option<PublishedTrack> {
        let slot = self.track_slot.remove(&id)?;
        self.slots.get_mut(slot)?.tracks.remove(&id)
    }

    pub fn tracks(&self) -> impl Iterator<Item = &PublishedTrack> {
        self.values().flat_map(|room| room.tracks.values())
    }

    pub fn track_count(&self) -> usize {
        self.track_slot.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_most_recent_or_named_publisher() {
        let mut room = Room::new(RoomId("r".into()));
        let (a, b) = (PeerId::new(), PeerId::new());
        room.publishers.push((a, ParticipantId("alice".into())));
        room.publishers.push((b, ParticipantId("bob".into())));
        assert_eq!(room.choose_publisher(None), Some(b));
        assert_eq!(
            room.choose_publisher(Some(&ParticipantId("alice".into()))),
            Some(a)
        );
        assert_eq!(
            room.choose_publisher(Some(&ParticipantId("carol".into()))),
            None
        );
        room.publishers.retain(|(p, _)| *p != b);
        assert_eq!(room.choose_publisher(None), Some(a));
    }
}
