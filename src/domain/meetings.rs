//! Meeting rules that are not HTTP: access modes and lifecycle states, meeting codes, invite-link
//! tokens, who may see a meeting, and the join decision itself ([`join`]), which REST
//! (`POST /meetings/{code}/join`) and WebSocket signaling both call. Never imports the web
//! framework: failures are [`JoinError`]s that the API maps to statuses.

use std::time::Duration;

use base64::Engine as _;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::roles::{grants_for, GrantSettings, Role};
use super::token::{Grants, JoinClaims, TokenKeys};
use crate::config::Config;
use crate::store::meetings::{
    consume_join_link, lock_seats, meeting_on, start_meeting_on, Meeting,
};
use crate::store::participants::{
    count_joined, insert_participant, leave_user_sessions, user_is_joined, Participant,
};
use crate::store::users::User;
use crate::store::webhooks::enqueue_on;
use crate::store::{new_id, now_ms, Store, StoreError};

/// Bounds of meeting fields (the API's 422 checks).
pub const TITLE_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 5000;
pub const DURATION_MAX_MINUTES: i64 = 1440;
pub const PASSCODE_MIN_CHARS: usize = 4;
pub const PASSCODE_MAX_CHARS: usize = 32;
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;
/// A meeting may be scheduled this far in the past (clock skew between client and server).
pub const SCHEDULE_PAST_TOLERANCE: Duration = Duration::from_secs(60);
/// Invite links: uses and lifetime.
pub const LINK_MAX_USES: i64 = 1000;
pub const LINK_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const LINK_MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often meeting creation retries after drawing a code that is taken.
pub const CODE_ATTEMPTS: usize = 5;

/// Who may see and join a meeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone may see it and join it.
    Public,
    /// Unlisted: only the host and invitees see its details, but whoever holds the code may
    /// join (subject to passcode, guest policy and waiting room).
    Private,
    /// Only the host, invitees and holders of an invite link may join.
    InviteOnly,
}

impl Access {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "public" => Some(Access::Public),
            "private" => Some(Access::Private),
            "invite_only" => Some(Access::InviteOnly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Private => "private",
            Access::InviteOnly => "invite_only",
        }
    }
}

/// Lifecycle: `scheduled → live → ended`, or `cancelled` from scheduled or live. Ended and
/// cancelled are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Scheduled,
    Live,
    Ended,
    Cancelled,
}

impl Status {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "scheduled" => Some(Status::Scheduled),
            "live" => Some(Status::Live),
            "ended" => Some(Status::Ended),
            "cancelled" => Some(Status::Cancelled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Live => "live",
            Status::Ended => "ended",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Whether a stored status is final (ended or cancelled).
pub fn is_closed(status: &str) -> bool {
    matches!(
        Status::parse(status),
        Some(Status::Ended | Status::Cancelled)
    )
}

/// A fresh meeting code, `abc-defg-hij`: 10 random lowercase letters (26^10 ≈ 1.4e14).
pub fn generate_code() -> String {
    let mut rng = rand::rng();
    let mut letters = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect()
    };
    let (a, b, c) = (letters(3), letters(4), letters(3));
    format!("{a}-{b}-{c}")
}

/// Whether `text` has the shape of a meeting code.
pub fn is_code(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 3
        && [3, 4, 3]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_lowercase()))
}

/// The page a person opens to join: `{public_url}/m/{code}`, relative when no public URL is set.
pub fn join_url(public_url: &str, code: &str) -> String {
    format!("{}/m/{code}", public_url.trim_end_matches('/'))
}

/// A new invite-link token: 32 random bytes, base64url without padding.
pub fn new_link_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of an invite-link token: its SHA-256, hex. The token has 256 random bits, so
/// a plain hash (no salt, no stretching) is enough and lets a join find its row by the hash.
pub fn hash_link_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares passcodes in constant time for a given length (no early exit on the first
/// differing byte).
pub fn passcode_matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// A display name's problem, if any.
pub fn display_name_problem(name: &str) -> Option<&'static str> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > DISPLAY_NAME_MAX_CHARS {
        Some("must be 1 to 64 characters")
    } else if trimmed.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// Whether `viewer` may see `meeting`: the host, invitees and those holding a seat in it now
/// always, anyone a public one. The same rule as for its participants and messages
/// (`api::moderation::MeetingCaller`), so no endpoint of a meeting shows what another hides.
pub async fn can_view(
    store: &Store,
    meeting: &Meeting,
    viewer: Option<&User>,
) -> Result<bool, StoreError> {
    let Some(viewer) = viewer else {
        return Ok(meeting.access == Access::Public.as_str());
    };
    if viewer.id == meeting.host_id || meeting.access == Access::Public.as_str() {
        return Ok(true);
    }
    if store
        .joined_seat_of_user(&meeting.id, &viewer.id)
        .await?
        .is_some()
    {
        return Ok(true);
    }
    store.is_invited(&meeting.id, &viewer.id).await
}

/// What a joiner brings.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// The signed-in user, if any (None: a guest).
    pub user_id: Option<String>,
    pub passcode: Option<String>,
    /// Required for guests; a signed-in user defaults to their account's display name.
    pub display_name: Option<String>,
    /// An invite-link token (`?invite=` of the link).
    pub invite_token: Option<String>,
    /// The wait token of an earlier 202: claims the admission once a moderator admitted it.
    pub wait_token: Option<String>,
}

/// A successful join: the participant row is `joined` and the token admits it to the media.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Join token (JWT) accepted by WHIP/WHEP and WebSocket signaling.
    pub join_token: String,
    pub role: Role,
    pub participant_id: String,
    pub meeting_id: String,
    pub identity: String,
    pub display_name: String,
    pub grants: Grants,
    pub mic_muted: bool,
    pub camera_off: bool,
}

#[derive(Debug, Clone)]
pub enum JoinOutcome {
    Joined(Admission),
    /// Parked in the waiting room until a moderator admits the participant.
    Waiting {
        participant_id: String,
        meeting_id: String,
        /// Present it to the join endpoint again to learn the decision (see [`JoinRequest`]).
        wait_token: String,
    },
}

/// Why a join was refused, in the order [`join`] checks.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no such meeting")]
    NotFound,
    #[error("the meeting has ended")]
    Ended,
    #[error("the invite link is invalid, used up or expired")]
    InvalidInvite,
    #[error("you are banned from this meeting")]
    Banned,
    #[error("the passcode is missing or wrong")]
    WrongPasscode,
    #[error("this meeting admits invited people only")]
    NotInvited,
    #[error("this meeting does not admit guests; sign in")]
    LoginRequired,
    /// The access token names an account that no longer exists.
    #[error("the account no longer exists")]
    UnknownUser,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
    #[error("the meeting is full")]
    Full,
    #[error("the wait token is invalid or expired")]
    InvalidWaitToken,
    #[error("a moderator did not admit you to this meeting")]
    Denied,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`join`] needs from the server.
#[derive(Clone, Copy)]
pub struct JoinContext<'a> {
    pub store: &'a Store,
    pub keys: &'a TokenKeys,
    pub access: &'a crate::domain::access::AccessKeys,
    pub config: &'a Config,
}

/// Decides a join of the meeting `meeting_ref` (id or code) and records it.
///
/// Checks, in order: the meeting exists (NotFound), is not ended or cancelled (Ended), the
/// invite link if one is given is usable (InvalidInvite), the user is not banned (Banned), the
/// passcode unless host or invite link (WrongPasscode), invite-only access (NotInvited), the
/// guest policy (LoginRequired), the display name (Invalid), capacity (Full; the host is never
/// refused from their own meeting), then the waiting room (Waiting) for roles below moderator
/// without an invite link and not already admitted. A signed-in user's new join replaces their
/// earlier joined or waiting row, so a reload never takes a second seat. Capacity is decided inside one transaction whose first statement
/// locks the meeting's seats, so two joins racing for the last seat cannot both win.
pub async fn join(
    ctx: JoinContext<'_>,
    meeting_ref: &str,
    request: JoinRequest,
) -> Result<JoinOutcome, JoinError> {
    let store = ctx.store;
    let meeting = match store.meeting(meeting_ref).await {
        Err(StoreError::NotFound) => return Err(JoinError::NotFound),
        other => other?,
    };
    if is_closed(&meeting.status) {
        return Err(JoinError::Ended);
    }
    if let Some(token) = &request.wait_token {
        return claim_waiting_seat(ctx, &meeting, token).await;
    }
    let user = match &request.user_id {
        Some(id) => match store.user(id).await {
            Err(StoreError::NotFound) => return Err(JoinError::UnknownUser),
            other => Some(other?),
        },
        None => None,
    };
    let now = now_ms();

    let link = match &request.invite_token {
        Some(token) => {
            let hash = hash_link_token(token);
            let link = store.usable_join_link(&meeting.id, &hash, now).await?;
            Some(link.ok_or(JoinError::InvalidInvite)?)
        }
        None => None,
    };
    // Link roles are written by this server; an unknown one gets the least privilege.
    let link_role = link
        .as_ref()
        .map(|l| Role::parse(&l.role).unwrap_or(Role::Guest));

    if let Some(user) = &user {
        if store.is_banned(&meeting.id, &user.id).await? {
            return Err(JoinError::Banned);
        }
    }
    let is_host = user.as_ref().is_some_and(|u| u.id == meeting.host_id);
    if let Some(expected) = &meeting.passcode {
        let given = request.passcode.as_deref().unwrap_or("");
        if !is_host && link.is_none() && !passcode_matches(expected, given) {
            return Err(JoinError::WrongPasscode);
        }
    }
    if meeting.access == Access::InviteOnly.as_str() && !is_host && link.is_none() {
        let invited = match &user {
            Some(u) => store.is_invited(&meeting.id, &u.id).await?,
            None => false,
        };
        if !invited {
            return Err(JoinError::NotInvited);
        }
    }
    if user.is_none() && !meeting.settings.allow_guests {
        return Err(JoinError::LoginRequired);
    }
    let display_name = match (&request.display_name, &user) {
        (Some(name), _) => {
            if let Some(message) = display_name_problem(name) {
                return Err(JoinError::Invalid {
                    field: "display_name",
                    message,
                });
            }
            name.trim().to_owned()
        }
        (None, Some(user)) => user.display_name.clone(),
        (None, None) => {
            return Err(JoinError::Invalid {
                field: "display_name",
                message: "is required for guests",
            })
        }
    };

    let role = if is_host {
        Role::Host
    } else {
        let base = link_role.unwrap_or(if user.is_some() {
            Role::Participant
        } else {
            Role::Guest
        });
        match &user {
            // A promotion to moderator sticks across rejoins, but not across a kick.
            Some(u)
                if store
                    .latest_seat_of_identity(&meeting.id, &u.id)
                    .await?
                    .is_some_and(|seat| seat.role == "moderator" && seat.status != "kicked") =>
            {
                base.max(Role::Moderator)
            }
            _ => base,
        }
    };

    let mut tx = store.pool.begin().await.map_err(StoreError::from)?;
    if !lock_seats(&mut *tx, &meeting.id).await? {
        return Err(JoinError::NotFound);
    }
    // Re-read under the seat lock: status and settings may have changed since the first read.
    let meeting = meeting_on(&mut *tx, &meeting.id).await?;
    if is_closed(&meeting.status) {
        return Err(JoinError::Ended);
    }
    // Someone already admitted (a reload, a second device) is not sent back to the waiting room.
    let mut admitted_before = false;
    if let Some(user) = &user {
        admitted_before = user_is_joined(&mut *tx, &meeting.id, &user.id).await?;
        leave_user_sessions(&mut *tx, &meeting.id, &user.id, now).await?;
    }
    let to_waiting_room =
        meeting.settings.waiting_room && !role.is_moderator() && link.is_none() && !admitted_before;
    if role != Role::Host
        && count_joined(&mut *tx, &meeting.id).await? >= meeting.settings.max_participants
    {
        return Err(JoinError::Full);
    }

    let participant_id = new_id();
    let identity = match &user {
        Some(user) => user.id.clone(),
        None => format!("guest-{participant_id}"),
    };
    let settings = &meeting.settings;
    let mut participant = Participant {
        id: participant_id.clone(),
        meeting_id: meeting.id.clone(),
        user_id: user.as_ref().map(|u| u.id.clone()),
        identity: identity.clone(),
        display_name: display_name.clone(),
        role: role.as_str().to_owned(),
        status: "waiting".to_owned(),
        mic_muted: settings.mute_on_join || user.as_ref().is_some_and(|u| u.pref_mic_muted),
        camera_off: !settings.video_on_join || user.as_ref().is_some_and(|u| u.pref_camera_off),
        joined_at: None,
        left_at: None,
        created_at: now,
    };
    if to_waiting_room {
        insert_participant(&mut *tx, &participant).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(waiting(ctx, &participant));
    }
    if link.is_some() {
        let hash = hash_link_token(request.invite_token.as_deref().unwrap_or_default());
        // The use is taken only now, so a join refused above leaves the link untouched.
        if !consume_join_link(&mut *tx, &meeting.id, &hash, now).await? {
            return Err(JoinError::InvalidInvite);
        }
    }
    participant.status = "joined".to_owned();
    participant.joined_at = Some(now);
    insert_participant(&mut *tx, &participant).await?;
    let outbox = &store.outbox;
    if start_meeting_on(&mut *tx, &meeting.id, now).await? {
        let data = serde_json::json!({"meeting_id": meeting.id});
        enqueue_on(&mut *tx, outbox, "meeting_started", &data).await?;
    }
    let data = serde_json::json!({
        "meeting_id": meeting.id, "participant_id": participant.id,
        "identity": participant.identity, "display_name": participant.display_name,
        "role": participant.role,
    });
    enqueue_on(&mut *tx, outbox, "participant_joined", &data).await?;
    tx.commit().await.map_err(StoreError::from)?;

    Ok(JoinOutcome::Joined(admit(
        ctx,
        &meeting,
        &participant,
        role,
    )))
}

fn waiting(ctx: JoinContext<'_>, participant: &Participant) -> JoinOutcome {
    JoinOutcome::Waiting {
        participant_id: participant.id.clone(),
        meeting_id: participant.meeting_id.clone(),
        wait_token: ctx.access.issue_wait(
            &participant.id,
            &participant.meeting_id,
            ctx.config.wait_token_ttl,
        ),
    }
}

/// The join token and what the client needs with it, for a participant now `joined`.
fn admit(
    ctx: JoinContext<'_>,
    meeting: &Meeting,
    participant: &Participant,
    role: Role,
) -> Admission {
    let settings = &meeting.settings;
    let grants = grants_for(
        role,
        GrantSettings {
            chat: settings.chat,
            screen_share: settings.screen_share,
            recording: settings.recording,
        },
    );
    let mut claims = JoinClaims::new(
        &meeting.id,
        &participant.identity,
        grants.clone(),
        ctx.config.join_token_ttl,
    );
    claims.name = Some(participant.display_name.clone());
    claims.pid = Some(participant.id.clone());
    Admission {
        join_token: ctx.keys.sign(&claims),
        role,
        participant_id: participant.id.clone(),
        meeting_id: meeting.id.clone(),
        identity: participant.identity.clone(),
        display_name: participant.display_name.clone(),
        grants,
        mic_muted: participant.mic_muted,
        camera_off: participant.camera_off,
    }
}

/// A participant from the waiting room comes back with its wait token: still waiting (202
/// again), admitted (its join token now), or refused.
async fn claim_waiting_seat(
    ctx: JoinContext<'_>,
    meeting: &Meeting,
    token: &str,
) -> Result<JoinOutcome, JoinError> {
    let claims = ctx
        .access
        .verify_wait(token)
        .ok_or(JoinError::InvalidWaitToken)?;
    if claims.meeting != meeting.id {
        return Err(JoinError::InvalidWaitToken);
    }
    let participant = match ctx.store.participant(&meeting.id, &claims.sub).await {
        Err(StoreError::NotFound) => return Err(JoinError::InvalidWaitToken),
        other => other?,
    };
    match participant.status.as_str() {
        "waiting" => Ok(waiting(ctx, &participant)),
        "joined" => {
            let role = Role::parse(&participant.role).unwrap_or(Role::Guest);
            Ok(JoinOutcome::Joined(admit(ctx, meeting, &participant, role)))
        }
        "kicked" => Err(JoinError::Banned),
        _ => Err(JoinError::Denied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_documented_shape() {
        for _ in 0..100 {
            let code = generate_code();
            assert!(is_code(&code), "{code}");
        }
        assert!(!is_code("abc-defg-hi"));
        assert!(!is_code("ABC-defg-hij"));
        assert!(!is_code("abcdefghij"));
    }

    #[test]
    fn passcodes_compare_exactly() {
        assert!(passcode_matches("1234", "1234"));
        assert!(!passcode_matches("1234", "1235"));
        assert!(!passcode_matches("1234", "12345"));
        assert!(!passcode_matches("1234", ""));
    }

    #[test]
    fn link_tokens_are_random_and_hashed() {
        let (a, b) = (new_link_token(), new_link_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_link_token(&a), hash_link_token(&a));
        assert_ne!(hash_link_token(&a), hash_link_token(&b));
    }

    #[test]
    fn join_urls() {
        assert_eq!(join_url("", "abc-defg-hij"), "/m/abc-defg-hij");
        assert_eq!(
            join_url("https://meet.example/", "abc-defg-hij"),
            "https://meet.example/m/abc-defg-hij"
        );
    }

    #[test]
    fn display_names() {
        assert!(display_name_problem("Ada").is_none());
        assert!(display_name_problem("  ").is_some());
        assert!(display_name_problem(&"x".repeat(65)).is_some());
        assert!(display_name_problem("a\u{7}b").is_some());
    }
}
