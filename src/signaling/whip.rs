//! WHIP (`/whip/{room}`, publish) and WHEP (`/whep/{room}`, watch): RFC 9725 resources.
//!
//! Both share one resource model: `POST` an SDP offer → `201 Created` with the answer, a
//! `Location` naming the session resource and its `ETag`; `PATCH` the session with trickled
//! candidates (204) or an ICE restart (200 + answer fragment, `If-Match` checked); `DELETE` it.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::auth::{authorize, Need};
use crate::config::IceServer;
use crate::domain::admission;
use crate::http_error::ApiError;
use crate::ids::{ParticipantId, PeerId, RoomId};
use crate::sfu::{Generation, Intent, PatchOutcome, Requester};
use crate::state::AppState;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/whip/{room}", post(whip_post).options(endpoint_options))
        .route(
            "/whip/{room}/{session}",
            axum::routing::patch(whip_patch)
                .delete(whip_delete)
                .options(session_options),
        )
        .route("/whep/{room}", post(whep_post).options(endpoint_options))
        .route(
            "/whep/{room}/{session}",
            axum::routing::patch(whep_patch)
                .delete(whep_delete)
                .options(session_options),
        )
        .route(
            "/whep/{room}/{session}/layer",
            axum::routing::get(layers).post(select_layer),
        )
}

/// The WHEP layer-selection extension's link relation.
const LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";

/// A viewer's choice (draft-ietf-wish-whep, layer selection): `encodingId` is a RID of the
/// source; without it, the best the SFU can send. `mediaId` names the video section (every
/// one when left out). `temporalLayerId` caps a VP8 encoding's temporal layers (0 = base
/// only; left out: every one). Spatial SVC ids are not supported: VP9/AV1 are forwarded as one
/// stream.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerChoice {
    #[serde(rename = "mediaId", default)]
    media_id: Option<String>,
    #[serde(rename = "encodingId", default)]
    encoding_id: Option<String>,
    #[serde(rename = "temporalLayerId", default)]
    temporal_layer_id: Option<u8>,
}

/// The layers a viewer's video sections can take and which each receives (JSON).
async fn layers(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = authorize(&state.keys, &headers, &room, Need::Session)?;
    let session = parse_session(&session)?;
    let layers = state
        .sfu
        .layers(
            RoomId(room),
            session,
            Requester::owner(ParticipantId(claims.sub)),
        )
        .await?;
    Ok(axum::Json(layers).into_response())
}

async fn select_layer(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let claims = authorize(&state.keys, &headers, &room, Need::Session)?;
    let session = parse_session(&session)?;
    require_content_type(&headers, "application/json")?;
    let choice: LayerChoice = serde_json::from_str(&text_body(body)?)
        .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    state
        .sfu
        .select_layer(
            RoomId(room),
            session,
            Requester::owner(ParticipantId(claims.sub)),
            choice.media_id,
            choice.encoding_id,
            choice.temporal_layer_id,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn whip_post(
    state: State<AppState>,
    room: Path<String>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create(Kind::Whip, state, room, query, headers, body).await
}

async fn whep_post(
    state: State<AppState>,
    room: Path<String>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create(Kind::Whep, state, room, query, headers, body).await
}

async fn whip_patch(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    patch(state, path, headers, body).await
}

async fn whep_patch(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    patch(state, path, headers, body).await
}

async fn whip_delete(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete(state, path, headers).await
}

async fn whep_delete(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete(state, path, headers).await
}

async fn create(
    kind: Kind,
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_room(&room)?;
    let need = if kind == Kind::Whip {
        Need::Publish
    } else {
        Need::Subscribe
    };
    let claims = authorize(&state.keys, &headers, &room, need)?;
    // A room is served by one node of a cluster: elsewhere, the client is sent there
    // (RFC 9725 §4.5 lets a WHIP/WHEP POST be redirected; 307 keeps the method and the offer).
    // With cascading, the node reached serves the session (the meeting spreads over nodes).
    let mut base = String::new();
    if let Some(cluster) = &state.cluster {
        let placed = if state.config.cluster_cascade {
            crate::cluster::Owner::Here
        } else {
            cluster.place(&room).await
        };
        if let crate::cluster::Owner::Node(node) = placed {
            let mut location = format!(
                "{}/{}/{}",
                node.http_url.trim_end_matches('/'),
                kind.path(),
                room
            );
            if !query.is_empty() {
                let pairs: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                    .collect();
                location = format!("{location}?{}", pairs.join("&"));
            }
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            response
                .headers_mut()
                .insert(header::LOCATION, header_value(&location)?);
            return Ok(response);
        }
        base = cluster.http_url().trim_end_matches('/').to_owned();
    }
    state.limits.check_media_identity(&room, &claims.sub)?;
    let admitted = admission::check(&state.store, &state.config, &claims).await?;
    require_content_type(&headers, SDP)?;
    let offer = text_body(body)?;
    let watched = query.get("publisher").cloned();
    let intent = match kind {
        Kind::Whip => Intent::Publish,
        Kind::Whep => Intent::Subscribe {
            publisher: watched.clone().map(ParticipantId),
        },
    };
    let ice_servers = state.ice.for_identity(&claims.sub);
    let negotiated = state
        .sfu
        .offer(
            RoomId(room.clone()),
            ParticipantId(claims.sub),
            intent,
            admitted.limits,
            offer,
        )
        .await?;
    if kind == Kind::Whep {
        // Cascading: the watched publisher's tracks are relayed here while the viewer lasts.
        state.live.viewer(&room, negotiated.session, watched);
    }

    let mut response = (StatusCode::CREATED, negotiated.answer).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    headers.insert(
        header::LOCATION,
        header_value(&format!(
            "{base}/{}/{}/{}",
            kind.path(),
            room,
            negotiated.session
        ))?,
    );
    headers.insert(
        header::ETAG,
        header_value(&etag(&negotiated.ice_generation))?,
    );
    headers.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    if kind == Kind::Whep {
        let layer = format!(
            "<{base}/whep/{room}/{}/layer>; rel=\"{LAYER_REL}\"",
            negotiated.session
        );
        headers.append(header::LINK, header_value(&layer)?);
    }
    for link in ice_server_links(&ice_servers) {
        headers.append(header::LINK, header_value(&link)?);
    }
    Ok(response)
}

async fn patch(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let claims = authorize(&state.keys, &headers, &room, Need::Session)?;
    let session = parse_session(&session)?;
    require_content_type(&headers, SDPFRAG)?;
    let fragment = crate::sfu::sdp::parse_fragment(&text_body(body)?)
        .map_err(|m| ApiError::bad_request("bad_ice_fragment", m))?;
    let replaces = headers
        .get(header::IF_MATCH)
        .map(|v| generation_of(v.to_str().unwrap_or_default()))
        .transpose()?;
    match state
        .sfu
        .patch(
            RoomId(room),
            session,
            Requester::owner(ParticipantId(claims.sub)),
            replaces,
            fragment,
        )
        .await?
    {
        PatchOutcome::Trickled => Ok(StatusCode::NO_CONTENT.into_response()),
        PatchOutcome::Restarted {
            fragment,
            ice_generation,
        } => {
            let mut response = (StatusCode::OK, fragment).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            response
                .headers_mut()
                .insert(header::ETAG, header_value(&etag(&ice_generation))?);
            Ok(response)
        }
    }
}

/// A session's entity tag (RFC 9725 §4.3): its ICE generation, which every restart changes.
fn etag(ice_generation: &str) -> String {
    format!("\"{ice_generation}\"")
}

/// The ICE generation an `If-Match` names: `*` is any, a strong tag its quoted value. A weak
/// or malformed tag names none of ours: the precondition fails (412).
fn generation_of(if_match: &str) -> Result<Generation, ApiError> {
    let tag = if_match.trim();
    if tag == "*" {
        return Ok(Generation::Any);
    }
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .map(|generation| Generation::Is(generation.to_owned()))
        .ok_or_else(|| crate::sfu::SfuError::StaleGeneration.into())
}

async fn delete(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = authorize(&state.keys, &headers, &room, Need::Session)?;
    let session = parse_session(&session)?;
    let requester = Requester {
        identity: ParticipantId(claims.sub),
        moderator: claims.grants.moderate,
    };
    state.sfu.close(RoomId(room), session, requester).await?;
    Ok(StatusCode::OK.into_response())
}

/// Non-preflight OPTIONS on an endpoint (RFC 9725 §4.2): what it accepts and which ICE servers
/// to use. CORS preflights are answered by the CORS layer before reaching here. The caller is
/// not authenticated, so it gets the configured servers only: TURN credentials go to callers
/// with a token (the POST's answer).
async fn endpoint_options(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert("accept-post", HeaderValue::from_static(SDP));
    headers.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
    for link in ice_server_links(&state.config.ice_servers) {
        headers.append(header::LINK, header_value(&link)?);
    }
    Ok(response)
}

async fn session_options() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    response.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("OPTIONS, PATCH, DELETE"),
    );
    response
}

fn validate_room(room: &str) -> Result<(), ApiError> {
    let ok = !room.is_empty()
        && room.len() <= 128
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_room",
            "room names are 1-128 characters of A-Z a-z 0-9 - _ .",
        ))
    }
}

fn parse_session(session: &str) -> Result<PeerId, ApiError> {
    uuid::Uuid::parse_str(session)
        .map(PeerId)
        .map_err(|_| ApiError::not_found("session_not_found", "no such session"))
}

fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let actual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = actual.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected Content-Type: {expected}, got '{actual}'"),
        ))
    }
}

fn text_body(body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the size limit",
            )
        } else {
            ApiError::bad_request("bad_body", rejection.body_text())
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request body is empty",
        ));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("bad_body", "the request body is not UTF-8"))
}

fn header_value(value: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(value).map_err(ApiError::internal)
}

/// RFC 9725 §4.6 `Link` headers, one per ICE server URL.
fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(username), Some(credential)) = (&server.username, &server.credential) {
                link.push_str(&format!("; username=\"{username}\"; credential=\"{credential}\"; credential-type=\"password\""));
            }
            links.push(link);
        }
    }
    links
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_carry_credentials() {
        let servers = vec![IceServer {
            urls: vec!["turn:turn.example.net?transport=udp".into()],
            username: Some("u".into()),
            credential: Some("p".into()),
        }];
        assert_eq!(
            ice_server_links(&servers),
            vec!["<turn:turn.example.net?transport=udp>; rel=\"ice-server\"; username=\"u\"; credential=\"p\"; credential-type=\"password\""]
        );
    }

    #[test]
    fn room_names_are_checked() {
        assert!(validate_room("team-1.a_b").is_ok());
        assert!(validate_room("").is_err());
        assert!(validate_room("a/b").is_err());
    }
}
