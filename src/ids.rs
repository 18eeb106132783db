//! Typed identifiers, so a room name is never passed where a session id belongs.

use std::fmt;

/// A room, named by its clients (the `{room}` of `/whip/{room}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub String);

/// A participant's identity within a room (the token's `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParticipantId(pub String);

/// One peer connection held by the SFU; also the id of its WHIP/WHEP session resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub uuid::Uuid);

/// A published track, unique across the server for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u64);

impl PeerId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// A new id that names the media engine holding the peer (its last byte, otherwise random),
    /// so a command for a session is routed without a lookup table.
    pub fn on_engine(engine: u8) -> Self {
        let mut bytes = *uuid::Uuid::now_v7().as_bytes();
        bytes[15] = engine;
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// The engine named by [`PeerId::on_engine`].
    pub fn engine(&self) -> usize {
        usize::from(self.0.as_bytes()[15])
    }
}

impl TrackId {
    /// The `serial`-th track of engine `engine` of `engines`: ids of different engines never
    /// collide, and the id names its engine.
    pub fn on_engine(serial: u64, engine: usize, engines: usize) -> Self {
        Self(serial * engines as u64 + engine as u64)
    }

    pub fn engine(&self, engines: usize) -> usize {
        (self.0 % engines.max(1) as u64) as usize
    }

    /// `"t3"` → `TrackId(3)`: the form track ids take on the wire (the inverse of `Display`).
    pub fn parse(text: &str) -> Option<Self> {
        text.strip_prefix('t')?.parse().ok().map(Self)
    }
}

impl Default for PeerId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}
