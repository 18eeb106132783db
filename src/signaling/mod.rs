//! Binds clients to the SFU: the WHIP/WHEP resources (RFC 9725) and the WebSocket signaling of
//! meetings (`/ws`). Owns authentication of media sessions by join token.
//!
//! - [`whip`]: WHIP/WHEP resources.
//! - [`ws`]: one task per WebSocket (auth, limits, parsing); [`session`]: one task per
//!   participant (media negotiation, mute, chat, moderation); [`rooms`]: who is in each
//!   meeting now, how REST moderation reaches live sockets, and the end of meetings left empty;
//!   [`protocol`]: the wire format.
//! - [`hub`]: routes SFU events to sessions.

pub mod auth;
pub mod hub;
pub mod protocol;
pub mod rooms;
pub mod sdpfrag;
pub mod sdpscan;
pub mod session;
pub mod sockets;
pub mod whip;
pub mod ws;

pub use rooms::Signaling;

use axum::routing::get;
use axum::Router;

use crate::app::AppState;

/// WHIP/WHEP and `/ws`.
pub fn router() -> Router<AppState> {
    whip::router().route("/ws", get(ws::upgrade))
}
