//! Binds clients to the SFU: the WHIP/WHEP resources (RFC 9725) and the WebSocket signaling of
//! meetings (`/ws`). Owns authentication of media sessions by join token.
//!
//! - [`whip`]: WHIP/WHEP resources.
//! - [`ws`]: one task per WebSocket (auth, limits, parsing); [`session`]: one task per
//!   participant (its media connections, chat, moderation requests); [`room`]: one task per
//!   live meeting, the owner of its members, their tracks and mute/hand state, its waiting
//!   sockets and the end of the meeting once empty; [`rooms`]: the directory of room tasks,
//!   how sessions and REST moderation reach them; [`protocol`]: the wire format.
//! - [`hub`]: routes SFU events to sessions, and room events to the room tasks.

pub mod auth;
pub mod cascade;
pub mod hub;
pub mod protocol;
pub mod room;
pub mod rooms;
pub mod session;
pub mod sockets;
pub mod whip;
pub mod ws;

pub use rooms::Signaling;

use axum::routing::get;
use axum::{Extension, Router};

use crate::state::AppState;

/// Signaling's own tables, shared by its socket and session tasks.
#[derive(Clone)]
pub struct Live {
    /// Routes SFU events to signaling sessions.
    pub hub: hub::Hub,
    /// Who is in each meeting over WebSocket signaling; how moderation reaches live sockets.
    pub rooms: Signaling,
    /// Open WebSockets, overall and per address (`ws_max_connections*`).
    pub sockets: sockets::Sockets,
}

/// What a socket or session task holds: the server's state and signaling's tables. Derefs to
/// [`AppState`].
#[derive(Clone)]
pub struct Context {
    pub app: AppState,
    pub live: Live,
}

impl std::ops::Deref for Context {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

/// WHIP/WHEP and `/ws`.
pub fn router(live: Live) -> Router<AppState> {
    whip::router()
        .route("/ws", get(ws::upgrade))
        .layer(Extension(live))
}
