//! Errors the SFU reports to its callers. The signaling layer maps them to HTTP statuses.

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("the SDP offer was not accepted: {0}")]
    BadOffer(String),
    #[error("the ICE fragment was not accepted: {0}")]
    BadFragment(String),
    #[error("room is full: it holds at most {max} peers")]
    RoomFull { max: usize },
    #[error("room is full: it holds at most {max} viewers")]
    ViewersFull { max: usize },
    #[error("server is at its peer limit ({max})")]
    ServerFull { max: usize },
    #[error("no such session")]
    SessionNotFound,
    #[error("this session belongs to another participant")]
    NotSessionOwner,
    #[error("this participant holds {max} media sessions in the room already")]
    TooManySessions { max: usize },
    #[error("no such track")]
    TrackNotFound,
    #[error("the source sends no encoding with that id")]
    UnknownEncoding,
    #[error("no publisher to watch in this room")]
    PublisherNotFound,
    #[error("the session's ICE generation is not the one named (If-Match)")]
    StaleGeneration,
    #[error("an ICE restart must name the ICE generation it replaces (If-Match)")]
    GenerationRequired,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal media error: {0}")]
    Internal(String),
}

impl From<rtc::shared::error::Error> for SfuError {
    fn from(error: rtc::shared::error::Error) -> Self {
        SfuError::Internal(error.to_string())
    }
}
