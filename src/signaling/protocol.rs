//! The WebSocket signaling protocol (`GET /ws`), version 1: every message a client may send and
//! every message the server sends, as serde-tagged enums (`{"type": "snake_case_name", ...}`).
//! docs/signaling.md documents each one with an example; keep the two in step.
//!
//! Owns only the wire shapes and close codes. What a message does lives in `ws.rs` (the socket)
//! and `session.rs` (the participant).

use serde::{Deserialize, Serialize};

use crate::config::IceServer;

/// The protocol version this server speaks. A client may name the version it wants in `join`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Close codes the server uses. 1000–1011 are the standard ones; 4000–4999 are ours.
pub mod close {
    /// `leave` was honoured.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Too many refused messages (malformed, unknown, over the rate or size limit).
    pub const POLICY: u16 = 1008;
    /// A frame far over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server cannot take the participant now (room or server full): try again later.
    pub const TRY_AGAIN: u16 = 1013;
    /// The same participant joined from another socket, which took the session over.
    pub const REPLACED: u16 = 4001;
    /// The participant is already connected elsewhere and `ws_duplicate_join` is `refuse`.
    pub const ALREADY_CONNECTED: u16 = 4002;
    /// A moderator removed the participant.
    pub const KICKED: u16 = 4003;
    /// The meeting ended for everyone.
    pub const MEETING_ENDED: u16 = 4004;
    /// A moderator refused the participant waiting to be admitted.
    pub const DENIED: u16 = 4005;
    /// The socket is not for a participant any more (its seat was given up, or it never had
    /// one): join the meeting again over REST.
    pub const SESSION_GONE: u16 = 4010;
    /// The token (or wait token) is missing, invalid or expired.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The token is valid but does not admit this socket (another room, a banned identity).
    pub const FORBIDDEN: u16 = 4403;
    /// No `join` in time, or nothing heard from the client for too long.
    pub const TIMEOUT: u16 = 4408;
    /// A client message the server cannot honour keeps the socket; the server failed.
    pub const INTERNAL: u16 = 1011;
    /// `wrong_node`: the meeting is served by another node of the cluster (the `error` names
    /// its `ws_url`).
    pub const WRONG_NODE: u16 = 4307;
}

// ---- client → server ---------------------------------------------------------------------

/// Every message a client sends. Unknown fields are ignored; an optional `ref` on any message is
/// echoed on the `error` (or `answer`, `pong`) it causes, so a client can match them up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Authenticate (unless `?token=` did) and enter the meeting.
    Join {
        #[serde(default)]
        token: Option<String>,
        /// The protocol version the client speaks; default 1.
        #[serde(default)]
        version: Option<u32>,
        /// Take over this participant's session if it is still held (a dropped socket within
        /// the grace period): media connections are kept.
        #[serde(default)]
        resume: bool,
        /// `false`: your subscriber connection carries only the tracks you `subscribe` to
        /// (large meetings); default `true`: every other participant's tracks.
        #[serde(default)]
        auto_subscribe: Option<bool>,
    },
    /// An offer for the client's publisher connection (the server answers with `answer`).
    Offer {
        sdp: String,
    },
    /// The client's answer to the server's last `offer` (its subscriber connection).
    Answer {
        sdp: String,
    },
    /// A trickled ICE candidate of one of the client's connections.
    Candidate {
        candidate: String,
        #[serde(default)]
        sdp_mid: Option<String>,
        #[serde(default)]
        sdp_mline_index: Option<u16>,
        #[serde(default)]
        target: Target,
    },
    /// Declares which source the client track `track_id` (its MediaStreamTrack id, the msid
    /// track id in the offer) carries. Sent before the offer that adds the track.
    Publish {
        source: Source,
        track_id: String,
    },
    /// Withdraws a declaration; the track ends with the next offer that no longer sends it.
    Unpublish {
        track_id: String,
    },
    /// Selective subscription: takes one track of another participant back into the
    /// subscriber connection (a new server offer follows).
    Subscribe {
        track_id: String,
    },
    /// Drops one track of another participant from the subscriber connection (a new server
    /// offer follows); it stays out until `subscribe`.
    Unsubscribe {
        track_id: String,
    },
    /// What the client wants of one track it receives, without renegotiating: `paused` stops
    /// its media on the subscriber connection (a hidden tile), unpausing resumes it at once
    /// from a keyframe; `width`/`height` (a tile's size in device pixels) or `layer` (0 =
    /// lowest) choose a simulcast publisher's layer; `fps` caps its frame rate (VP8 temporal
    /// layers above it are dropped; 0 lifts the cap). Fields left out keep their setting.
    SetTrack {
        track_id: String,
        #[serde(default)]
        paused: Option<bool>,
        #[serde(default)]
        width: Option<u16>,
        #[serde(default)]
        height: Option<u16>,
        #[serde(default)]
        layer: Option<u8>,
        #[serde(default)]
        fps: Option<u16>,
    },
    /// Mutes or unmutes one of the client's own sources.
    Mute {
        source: Source,
        muted: bool,
    },
    RaiseHand,
    LowerHand,
    Chat {
        text: String,
    },
    /// The client is typing (`active`, default true) or stopped.
    Typing {
        #[serde(default = "yes")]
        active: bool,
    },
    Moderate(Moderation),
    Leave,
    Ping,
}

fn yes() -> bool {
    true
}

/// The type names of [`ClientMessage`], to tell an unknown type from a known one with bad fields.
pub const CLIENT_TYPES: [&str; 17] = [
    "join",
    "offer",
    "answer",
    "candidate",
    "publish",
    "unpublish",
    "subscribe",
    "unsubscribe",
    "set_track",
    "mute",
    "raise_hand",
    "lower_hand",
    "chat",
    "typing",
    "moderate",
    "leave",
    "ping",
];

/// A moderator's action on a participant (or on the meeting).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Moderation {
    pub action: ModerateAction,
    /// The participant acted on; not needed for `end_meeting`.
    #[serde(default)]
    pub participant_id: Option<String>,
    /// `mute`: which source.
    #[serde(default)]
    pub source: Option<Source>,
    /// `kick`: also ban the identity from rejoining.
    #[serde(default)]
    pub ban: bool,
    /// `set_role`: `moderator`, `participant` or `guest`.
    #[serde(default)]
    pub role: Option<String>,
    /// `start_recording`: Ogg/Opus of every microphone only.
    #[serde(default)]
    pub audio_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModerateAction {
    Mute,
    Kick,
    Admit,
    Deny,
    SetRole,
    EndMeeting,
    /// Start recording the meeting (`audio_only` optional).
    StartRecording,
    StopRecording,
}

/// Which of the client's two connections a candidate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    #[default]
    Publisher,
    Subscriber,
}

/// What a published track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Camera,
    Microphone,
    Screen,
    ScreenAudio,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Audio,
    Video,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::Camera,
        Source::Microphone,
        Source::Screen,
        Source::ScreenAudio,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Camera => "camera",
            Source::Microphone => "microphone",
            Source::Screen => "screen",
            Source::ScreenAudio => "screen_audio",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Source::Camera | Source::Screen => Kind::Video,
            Source::Microphone | Source::ScreenAudio => Kind::Audio,
        }
    }

    /// The source a track of `kind` carries when the client did not declare one.
    pub fn default_for(kind: Kind) -> Source {
        match kind {
            Kind::Audio => Source::Microphone,
            Kind::Video => Source::Camera,
        }
    }
}

// ---- server → client ---------------------------------------------------------------------

/// Every message the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined(Box<Joined>),
    /// An offer for the client's subscriber connection: apply it and reply with `answer`.
    /// `reset`: the previous subscriber connection is gone; answer on a new one.
    Offer {
        sdp: String,
        #[serde(skip_serializing_if = "is_false")]
        reset: bool,
    },
    /// The answer to the client's `offer` (publisher connection).
    Answer {
        sdp: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Reserved: this server puts its candidates in its SDP and never trickles.
    Candidate {
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
        target: Target,
    },
    ParticipantJoined {
        participant: ParticipantView,
    },
    ParticipantLeft {
        participant_id: String,
        /// `left`, `disconnected`, `replaced`, `kicked`.
        reason: String,
    },
    ParticipantUpdated {
        participant: ParticipantView,
    },
    TrackPublished {
        participant_id: String,
        #[serde(flatten)]
        track: TrackView,
    },
    TrackUnpublished {
        participant_id: String,
        track_id: String,
    },
    MediaState {
        participant_id: String,
        source: Source,
        muted: bool,
        /// The moderator who muted, when it was not the participant.
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Loudest first.
    ActiveSpeakers {
        speakers: Vec<SpeakerView>,
    },
    /// A participant's connection quality changed: `poor`, `fair`, `good` or `excellent`
    /// (the worse of their two connections).
    ConnectionQuality {
        participant_id: String,
        quality: String,
    },
    /// To a publisher (dynacast): which encodings (RID → on) of its simulcast track `track_id`
    /// (its own track id) to send; nobody receives the others. Apply with
    /// `RTCRtpSender.setParameters` (`encodings[i].active`).
    Encodings {
        track_id: String,
        active: std::collections::BTreeMap<String, bool>,
    },
    /// To one subscriber: the server stopped (`paused: true`) or resumed forwarding a track it
    /// receives, of its own accord; `reason` says why (`bandwidth`: its link cannot carry even
    /// the track's lowest layer now).
    TrackPaused {
        track_id: String,
        paused: bool,
        reason: String,
    },
    ChatMessage(ChatView),
    Typing {
        participant_id: String,
        active: bool,
    },
    /// To a waiting socket: you are waiting. To moderators: someone is waiting.
    Waiting {
        participant: WaitingView,
    },
    /// To the admitted socket (with its join token), and to moderators (without).
    Admitted {
        participant_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        join_token: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    Denied {
        participant_id: String,
    },
    Kicked {
        reason: String,
        banned: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    MeetingUpdated {
        meeting: MeetingView,
    },
    MeetingEnded {
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The meeting is being recorded (sent to everyone when it starts, and to each participant
    /// who joins while it runs): the page shows its REC indicator.
    RecordingStarted {
        recording_id: String,
        audio_only: bool,
        /// The participant who started it, when it was one (not REST or auto-start).
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The recording ended: `status` `ready` or `failed` (with `reason`, e.g. `disk_full`).
    RecordingStopped {
        recording_id: String,
        status: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        code: String,
        message: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// `wrong_node`: the socket of the node serving the meeting, to join there instead.
        #[serde(skip_serializing_if = "Option::is_none")]
        ws_url: Option<String>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A fresh join token for this seat, sent every half token lifetime while the socket is
    /// joined: use it for the next `resume` and for WHIP/WHEP. Tokens stay short-lived and
    /// revocable (they name the seat) without ending long meetings.
    TokenRefreshed {
        join_token: String,
        expires_at: String,
    },
}

fn is_false(value: &bool) -> bool {
    !value
}

impl ServerMessage {
    pub fn error(code: &str, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerMessage::Error {
            code: code.to_owned(),
            message: message.into(),
            reference,
            ws_url: None,
        }
    }

    /// The JSON text sent on the wire.
    pub fn to_text(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"unserializable message"}"#.to_owned()
        })
    }
}

/// The answer to `join`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Joined {
    pub protocol_version: u32,
    /// True when this socket took over a held session: keep your media connections.
    pub resumed: bool,
    pub you: ParticipantView,
    /// What you may do.
    pub permissions: Permissions,
    /// Everyone else in the meeting, with their tracks.
    pub participants: Vec<ParticipantView>,
    pub ice_servers: Vec<IceServer>,
    pub meeting: MeetingView,
    /// The latest chat messages (at most 50), oldest first: the history guests cannot read over
    /// REST. Empty when chat is off.
    pub chat: Vec<ChatView>,
    /// The waiting room; only sent to moderators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Vec<WaitingView>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permissions {
    pub publish_sources: Vec<Source>,
    pub chat: bool,
    pub moderate: bool,
}

/// A participant as the others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantView {
    pub participant_id: String,
    /// The media identity: the stream id of their tracks on your subscriber connection.
    pub identity: String,
    pub user_id: Option<String>,
    pub display_name: String,
    pub role: String,
    /// Sources they (or a moderator) muted.
    pub muted: Vec<Source>,
    pub hand_raised: bool,
    pub tracks: Vec<TrackView>,
}

/// A published track. Its `track_id` is the id of the track on your subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackView {
    pub track_id: String,
    pub source: Source,
    pub kind: Kind,
    pub muted: bool,
    /// The publisher's own id for the track (its MediaStreamTrack id).
    pub publisher_track_id: String,
    pub mime_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeakerView {
    pub participant_id: String,
    /// 0 (silence) to 1 (loudest).
    pub level: f32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatView {
    pub id: String,
    pub participant_id: Option<String>,
    pub user_id: Option<String>,
    pub sender_name: String,
    pub text: String,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingView {
    pub participant_id: String,
    pub display_name: String,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeetingView {
    pub id: String,
    pub code: String,
    pub title: String,
    pub status: String,
    pub host_id: String,
    /// RFC 3339, when scheduled; a change arrives as `meeting_updated`.
    pub scheduled_at: Option<String>,
    pub duration_minutes: Option<i64>,
    pub settings: SettingsView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingsView {
    pub allow_guests: bool,
    pub waiting_room: bool,
    pub mute_on_join: bool,
    pub video_on_join: bool,
    pub chat: bool,
    pub screen_share: bool,
    pub recording: bool,
    pub max_participants: i64,
}

impl From<&crate::store::meetings::Meeting> for MeetingView {
    fn from(m: &crate::store::meetings::Meeting) -> Self {
        let s = &m.settings;
        Self {
            id: m.id.clone(),
            code: m.code.clone(),
            title: m.title.clone(),
            status: m.status.clone(),
            host_id: m.host_id.clone(),
            scheduled_at: m
                .scheduled_at
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            duration_minutes: m.duration_minutes,
            settings: SettingsView {
                allow_guests: s.allow_guests,
                waiting_room: s.waiting_room,
                mute_on_join: s.mute_on_join,
                video_on_join: s.video_on_join,
                chat: s.chat,
                screen_share: s.screen_share,
                recording: s.recording,
                max_participants: s.max_participants,
            },
        }
    }
}

// ---- parsing -----------------------------------------------------------------------------

/// Why a text frame is not a [`ClientMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// `bad_json`, `unknown_type` or `bad_message`.
    pub code: &'static str,
    pub message: String,
    /// The frame's `ref`, when it had one.
    pub reference: Option<String>,
}

/// Parses a text frame: the message and its optional `ref`.
pub fn parse(text: &str) -> Result<(ClientMessage, Option<String>), ParseError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ParseError {
        code: "bad_json",
        message: format!("not JSON: {e}"),
        reference: None,
    })?;
    let reference = value
        .get("ref")
        .and_then(|r| match r {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .map(|r| r.chars().take(64).collect::<String>());
    let fail = |code, message: String| ParseError {
        code,
        message,
        reference: reference.clone(),
    };
    let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
        return Err(fail(
            "bad_message",
            "a message is a JSON object with a string \"type\"".to_owned(),
        ));
    };
    if !CLIENT_TYPES.contains(&kind) {
        let shown: String = kind.chars().take(40).collect();
        return Err(fail(
            "unknown_type",
            format!("unknown message type '{shown}'"),
        ));
    }
    match serde_json::from_value::<ClientMessage>(value.clone()) {
        Ok(message) => Ok((message, reference)),
        Err(e) => Err(fail("bad_message", format!("bad '{kind}' message: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_parse() {
        let (message, reference) =
            parse(r#"{"type":"join","token":"t","ref":"1"}"#).expect("join parses");
        assert_eq!(
            message,
            ClientMessage::Join {
                token: Some("t".into()),
                version: None,
                resume: false,
                auto_subscribe: None,
            }
        );
        assert_eq!(reference.as_deref(), Some("1"));
        let (message, _) =
            parse(r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host"}"#)
                .unwrap();
        assert!(matches!(
            message,
            ClientMessage::Candidate {
                target: Target::Publisher,
                ..
            }
        ));
        let (message, _) = parse(
            r#"{"type":"moderate","action":"kick","participant_id":"p","ban":true,"extra":1}"#,
        )
        .unwrap();
        assert!(matches!(
            message,
            ClientMessage::Moderate(Moderation {
                action: ModerateAction::Kick,
                ban: true,
                ..
            })
        ));
        assert_eq!(
            parse(r#"{"type":"typing"}"#).unwrap().0,
            ClientMessage::Typing { active: true }
        );
        assert_eq!(
            parse(r#"{"type":"publish","source":"screen_audio","track_id":"x"}"#)
                .unwrap()
                .0,
            ClientMessage::Publish {
                source: Source::ScreenAudio,
                track_id: "x".into()
            }
        );
    }

    #[test]
    fn bad_frames_are_classified() {
        assert_eq!(parse("{").unwrap_err().code, "bad_json");
        assert_eq!(parse("[1]").unwrap_err().code, "bad_message");
        let unknown = parse(r#"{"type":"dance","ref":7}"#).unwrap_err();
        assert_eq!(unknown.code, "unknown_type");
        assert_eq!(unknown.reference.as_deref(), Some("7"));
        assert_eq!(
            parse(r#"{"type":"offer"}"#).unwrap_err().code,
            "bad_message"
        );
        assert_eq!(
            parse(r#"{"type":"mute","source":"nose","muted":true}"#)
                .unwrap_err()
                .code,
            "bad_message"
        );
        assert_eq!(parse(r#"{"type":""}"#).unwrap_err().code, "unknown_type");
    }

    #[test]
    fn server_messages_have_their_wire_shape() {
        let text = ServerMessage::TrackPublished {
            participant_id: "p".into(),
            track: TrackView {
                track_id: "t3".into(),
                source: Source::Screen,
                kind: Kind::Video,
                muted: false,
                publisher_track_id: "abc".into(),
                mime_type: "video/VP8".into(),
            },
        }
        .to_text();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({"type":"track_published","participant_id":"p","track_id":"t3","source":"screen",
                   "kind":"video","muted":false,"publisher_track_id":"abc","mime_type":"video/VP8"})
        );
        let error = ServerMessage::error("bad_json", "x", Some("9".into())).to_text();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&error).unwrap(),
            json!({"type":"error","code":"bad_json","message":"x","ref":"9"})
        );
        let offer = ServerMessage::Offer {
            sdp: "v=0".into(),
            reset: false,
        }
        .to_text();
        assert_eq!(offer, r#"{"type":"offer","sdp":"v=0"}"#);
    }
}
