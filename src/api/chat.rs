//! Chat history of a meeting over REST: read it page by page (newest first), and post to it.
//! The WebSocket chat stores through the same [`Store::insert_message`](crate::store::Store), and
//! messages posted here reach connected sockets as `chat_message`.
//!
//! Readers: the host, joined participants and invitees. Writers: the host and joined
//! participants, and only while the meeting's chat setting is on.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::extract::{ApiJson, AuthUser, Validator};
use super::moderation::{time, MeetingCaller};
use super::ApiError;
use crate::state::AppState;
use crate::store::chat::{Message, NewMessage};

/// Page size when the client names none, and the largest it may ask for.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub id: String,
    /// The sender's participant row; `null` when the host wrote without joining.
    pub participant_id: Option<String>,
    /// The sender's account; `null` for guests.
    pub user_id: Option<String>,
    pub sender_name: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

impl From<Message> for ChatMessage {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            participant_id: m.participant_id,
            user_id: m.user_id,
            sender_name: m.sender_name,
            text: m.body,
            created_at: time(m.created_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// Newest first.
    pub items: Vec<ChatMessage>,
    /// Pass as `before` for the next (older) page; `null` when there is none.
    pub next_before: Option<String>,
}

/// Strings, parsed by hand, so a bad value is a 422 in the error envelope rather than the
/// query extractor's plain-text 400.
#[derive(Debug, Deserialize, IntoParams)]
pub struct MessagesQuery {
    /// Only messages older than this message id.
    pub before: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PostMessage {
    /// 1 to `chat_max_length` characters once trimmed.
    #[schema(min_length = 1, max_length = 4000)]
    pub text: String,
}

#[utoipa::path(
    get,
    path = "/meetings/{id}/messages",
    tag = "chat",
    params(("id" = String, Path, description = "meeting id or code"), MessagesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "a page of messages, newest first", body = MessagePage),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "neither host, participant nor invitee"),
        (status = 404, description = "meeting_not_found"),
        (status = 422, description = "bad before or limit"),
    )
)]
async fn list_messages(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    Query(query): Query<MessagesQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let caller = MeetingCaller::resolve(&state, &user, &id).await?;
    if caller.role.is_none() && !caller.invited {
        return Err(ApiError::forbidden("you are not in this meeting"));
    }
    let mut validator = Validator::default();
    let limit = match query.limit.as_deref() {
        None | Some("") => Some(DEFAULT_PAGE),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n)),
    };
    validator.check(
        limit.is_some(),
        "limit",
        "must be a whole number from 1 to 200",
    );
    // Ids compare as text, so the cursor is normalized to the stored (lowercase) form.
    let before = match query.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(text) => match uuid::Uuid::parse_str(text) {
            Ok(id) => Some(id.to_string()),
            Err(_) => {
                validator.push("before", "must be a message id");
                None
            }
        },
    };
    validator.finish()?;
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    // One more than asked tells whether an older page exists.
    let mut rows = state
        .store
        .messages_page(&caller.meeting.id, before.as_deref(), limit + 1)
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_before = if more {
        rows.last().map(|m| m.id.clone())
    } else {
        None
    };
    Ok(Json(MessagePage {
        items: rows.into_iter().map(ChatMessage::from).collect(),
        next_before,
    }))
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/messages",
    tag = "chat",
    params(("id" = String, Path, description = "meeting id or code")),
    request_body = PostMessage,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "stored", body = ChatMessage),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "forbidden (not in the meeting) or chat_disabled"),
        (status = 404, description = "meeting_not_found"),
        (status = 422, description = "empty or too long"),
    )
)]
async fn post_message(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PostMessage>,
) -> Result<(StatusCode, Json<ChatMessage>), ApiError> {
    let caller = MeetingCaller::resolve(&state, &user, &id).await?;
    caller.require_role()?;
    if !caller.meeting.settings.chat {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "chat_disabled",
            "chat is turned off in this meeting",
        ));
    }
    let text = body.text.trim();
    let max = state.config.chat_max_length;
    let length = text.chars().count();
    let mut validator = Validator::default();
    validator.check(length > 0, "text", "must not be empty");
    validator.check(
        length <= max,
        "text",
        &format!("must be at most {max} characters"),
    );
    validator.finish()?;
    // The name shown is the one of the seat (what others see in the meeting), else the
    // account's for a host writing without having joined.
    let sender_name = match &caller.seat {
        Some(seat) => seat.display_name.clone(),
        None => state.store.user(&user.user_id).await?.display_name,
    };
    let message = state
        .store
        .insert_message(NewMessage {
            meeting_id: &caller.meeting.id,
            participant_id: caller.seat.as_ref().map(|s| s.id.as_str()),
            user_id: Some(&user.user_id),
            sender_name: &sender_name,
            body: text,
        })
        .await?;
    // Everyone connected over WebSocket sees it too.
    state.live.chat_posted(&message);
    Ok((StatusCode::CREATED, Json(message.into())))
}

#[derive(OpenApi)]
#[openapi(
    paths(list_messages, post_message),
    components(schemas(ChatMessage, MessagePage, PostMessage))
)]
struct Doc;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/meetings/{id}/messages",
        get(list_messages).post(post_message),
    )
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}
