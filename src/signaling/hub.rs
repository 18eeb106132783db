//! Routes the SFU's events to the signaling sessions they concern: offers and connection
//! changes to the session's own listener, track and speaker changes to every listener of the room.
//!
//! A std mutex guards the routing tables: held only to look up or change a route, never across
//! an await (the senders are unbounded, so a send never waits).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::ids::{PeerId, RoomId};
use crate::sfu::SfuEvent;

pub type EventSender = mpsc::UnboundedSender<SfuEvent>;

#[derive(Clone, Default)]
pub struct Hub {
    routes: Arc<Mutex<Routes>>,
}

#[derive(Default)]
struct Routes {
    sessions: HashMap<PeerId, EventSender>,
    rooms: HashMap<RoomId, Vec<(u64, EventSender)>>,
    next_listener: u64,
}

/// Removes a room listener when dropped.
pub struct RoomListener {
    hub: Hub,
    room: RoomId,
    id: u64,
}

impl Hub {
    /// Events of `session` (offers, connected, closed) go to `sender` until [`Hub::forget_session`].
    pub fn watch_session(&self, session: PeerId, sender: EventSender) {
        self.lock().sessions.insert(session, sender);
    }

    pub fn forget_session(&self, session: PeerId) {
        self.lock().sessions.remove(&session);
    }

    /// Track events of `room` go to `sender` while the returned guard lives.
    pub fn watch_room(&self, room: RoomId, sender: EventSender) -> RoomListener {
        let mut routes = self.lock();
        routes.next_listener += 1;
        let id = routes.next_listener;
        routes
            .rooms
            .entry(room.clone())
            .or_default()
            .push((id, sender));
        RoomListener {
            hub: self.clone(),
            room,
            id,
        }
    }

    pub fn dispatch(&self, event: SfuEvent) {
        let routes = self.lock();
        match &event {
            SfuEvent::Offer { session, .. }
            | SfuEvent::Connected { session }
            | SfuEvent::Closed { session, .. }
            | SfuEvent::ConnectionQuality { session, .. } => {
                if let Some(sender) = routes.sessions.get(session) {
                    let _ = sender.send(event);
                }
            }
            SfuEvent::TrackPublished { room, .. }
            | SfuEvent::TrackUnpublished { room, .. }
            | SfuEvent::ActiveSpeakers { room, .. } => {
                for (_, sender) in routes.rooms.get(room).into_iter().flatten() {
                    let _ = sender.send(event.clone());
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A panic while holding the lock cannot leave the maps half-updated in a harmful way.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for RoomListener {
    fn drop(&mut self) {
        let mut routes = self.hub.lock();
        if let Some(listeners) = routes.rooms.get_mut(&self.room) {
            listeners.retain(|(id, _)| *id != self.id);
            if listeners.is_empty() {
                routes.rooms.remove(&self.room);
            }
        }
    }
}

/// Delivers the engine's events until the engine stops.
pub async fn run(hub: Hub, mut events: mpsc::UnboundedReceiver<SfuEvent>) {
    while let Some(event) = events.recv().await {
        hub.dispatch(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_session_and_room() {
        let hub = Hub::default();
        let session = PeerId::new();
        let (session_tx, mut session_rx) = mpsc::unbounded_channel();
        let (room_tx, mut room_rx) = mpsc::unbounded_channel();
        hub.watch_session(session, session_tx);
        let listener = hub.watch_room(RoomId("r".into()), room_tx);
        hub.dispatch(SfuEvent::Connected { session });
        hub.dispatch(SfuEvent::Connected {
            session: PeerId::new(),
        });
        hub.dispatch(SfuEvent::TrackUnpublished {
            room: RoomId("r".into()),
            identity: crate::ids::ParticipantId("a".into()),
            session,
            track: crate::ids::TrackId(1),
        });
        assert!(matches!(
            session_rx.try_recv(),
            Ok(SfuEvent::Connected { .. })
        ));
        assert!(
            session_rx.try_recv().is_err(),
            "other sessions' events are not delivered"
        );
        assert!(matches!(
            room_rx.try_recv(),
            Ok(SfuEvent::TrackUnpublished { .. })
        ));
        drop(listener);
        hub.dispatch(SfuEvent::TrackUnpublished {
            room: RoomId("r".into()),
            identity: crate::ids::ParticipantId("a".into()),
            session,
            track: crate::ids::TrackId(2),
        });
        assert!(
            room_rx.try_recv().is_err(),
            "a dropped listener gets nothing"
        );
    }
}
