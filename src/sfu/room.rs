//! A room: who is in it and who publishes. It exists while it has peers.

use crate::ids::{ParticipantId, PeerId, RoomId};

pub struct Room {
    pub id: RoomId,
    pub peers: Vec<PeerId>,
    /// Publishers in the order they joined; WHEP watches the most recent by default.
    pub publishers: Vec<(PeerId, ParticipantId)>,
    /// The ranking last announced, to announce only changes.
    pub speakers: Vec<crate::sfu::speaker::Speaker>,
}

impl Room {
    pub fn new(id: RoomId) -> Self {
        Self {
            id,
            peers: Vec::new(),
            publishers: Vec::new(),
            speakers: Vec::new(),
        }
    }

    /// The publisher a subscriber watches: the named identity, else the most recent publisher.
    pub fn choose_publisher(&self, identity: Option<&ParticipantId>) -> Option<PeerId> {
        self.publishers
            .iter()
            .rev()
            .find(|(_, who)| identity.is_none_or(|wanted| wanted == who))
            .map(|(peer, _)| *peer)
    }

    pub fn remove(&mut self, peer: PeerId) {
        self.peers.retain(|p| *p != peer);
        self.publishers.retain(|(p, _)| *p != peer);
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
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
        room.remove(b);
        assert_eq!(room.choose_publisher(None), Some(a));
    }
}
