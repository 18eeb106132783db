//! Binds clients to the SFU: the WHIP/WHEP resources (RFC 9725) and, later, the WebSocket
//! signaling. Owns authentication of media sessions by join token.

pub mod auth;
pub mod hub;
pub mod sdpfrag;
pub mod whip;

pub use whip::router;
