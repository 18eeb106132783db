//! Routes the SFU's events: offers and connection changes to the signaling session they
//! concern, track and speaker changes to the meeting's room task (`signaling::room`), their one
//! consumer.
//!
//! A std mutex guards the routing tables: held only to look up or change a route, never across
//! an await (the senders are unbounded, so a send never waits).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::rooms::Signaling;
use crate::ids::PeerId;
use crate::sfu::SfuEvent;

pub type EventSender = mpsc::UnboundedSender<SfuEvent>;

#[derive(Clone, Default)]
pub struct Hub {
    routes: Arc<Mutex<Routes>>,
}

#[derive(Default)]
struct Routes {
    sessions: HashMap<PeerId, EventSender>,
}

impl Hub {
    /// Events of `session` (offers, connected, closed) go to `sender` until [`Hub::forget_session`].
    pub fn watch_session(&self, session: PeerId, sender: EventSender) {
        self.lock().sessions.insert(session, sender);
    }

    pub fn forget_session(&self, session: PeerId) {
        self.lock().sessions.remove(&session);
    }

    /// Delivers a session's event; returns the room events, which are not the hub's.
    pub fn dispatch(&self, event: SfuEvent) -> Option<SfuEvent> {
        let routes = self.lock();
        match &event {
            SfuEvent::Offer { session, .. }
            | SfuEvent::Connected { session }
            | SfuEvent::Closed { session, .. }
            | SfuEvent::ConnectionQuality { session, .. }
            | SfuEvent::TrackPaused { session, .. }
            | SfuEvent::EncodingsNeeded { session, .. } => {
                if let Some(sender) = routes.sessions.get(session) {
                    let _ = sender.send(event);
                }
                None
            }
            SfuEvent::TrackPublished { .. }
            | SfuEvent::TrackUnpublished { .. }
            | SfuEvent::ActiveSpeakers { .. }
            | SfuEvent::RelayWish { .. } => Some(event),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A panic while holding the lock cannot leave the maps half-updated in a harmful way.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Delivers the engine's events until the engine stops.
pub async fn run(hub: Hub, rooms: Signaling, mut events: mpsc::UnboundedReceiver<SfuEvent>) {
    while let Some(event) = events.recv().await {
        if let SfuEvent::Closed { session, .. } = &event {
            rooms.session_closed(*session);
        }
        if let Some(room_event) = hub.dispatch(event) {
            rooms.media_event(room_event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_sessions_and_hands_back_room_events() {
        let hub = Hub::default();
        let session = PeerId::new();
        let (session_tx, mut session_rx) = mpsc::unbounded_channel();
        hub.watch_session(session, session_tx);
        assert!(hub.dispatch(SfuEvent::Connected { session }).is_none());
        assert!(hub
            .dispatch(SfuEvent::Connected {
                session: PeerId::new(),
            })
            .is_none());
        let room_event = hub.dispatch(SfuEvent::TrackUnpublished {
            room: crate::ids::RoomId("r".into()),
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
            "other sessions' events and room events are not delivered to a session"
        );
        assert!(matches!(
            room_event,
            Some(SfuEvent::TrackUnpublished { .. })
        ));
        hub.forget_session(session);
        hub.dispatch(SfuEvent::Connected { session });
        assert!(
            session_rx.try_recv().is_err(),
            "a forgotten session gets nothing"
        );
    }
}
