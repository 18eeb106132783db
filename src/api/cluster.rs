//! `GET /cluster/nodes`: the cluster's nodes as the registry in Redis holds them (operators in
//! `admins` only).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::extract::{ApiJson, AuthUser};
use super::ApiError;
use crate::cluster::{NodeEntry, NodeLoad};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct NodesResponse {
    /// False on a single node (no `redis_url`): `nodes` is then empty.
    pub cluster: bool,
    /// The node that answered.
    pub this_node: Option<String>,
    pub nodes: Vec<NodeEntry>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/cluster/nodes", get(nodes))
}

/// Node-to-node routes (cascading), outside `/api/v1`: only a node of the cluster (its forward
/// key) may call them.
pub fn internal_router() -> Router<AppState> {
    use crate::signaling::cascade::RELAYS_PATH;
    Router::new()
        .route(RELAYS_PATH, axum::routing::post(open_relay))
        .route(
            &format!("{RELAYS_PATH}/{{meeting_id}}/{{session}}"),
            axum::routing::delete(close_relay),
        )
        .route(
            &format!("{RELAYS_PATH}/{{meeting_id}}/{{session}}/tracks/{{track}}"),
            axum::routing::put(relay_wish),
        )
}

fn from_a_node(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if state.relay_from_node(headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "for the nodes of this cluster only",
        ))
    }
}

/// Where another node's relay is answered: a viewer of the publisher restricted to the asked
/// tracks (see `sfu::relay`).
async fn open_relay(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    // Not `ApiJson`: an offer's text has line breaks, which that refuses in user text.
    request: Result<
        Json<crate::signaling::cascade::RelayRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Json<crate::signaling::cascade::RelayAnswer>, ApiError> {
    from_a_node(&state, &headers)?;
    let Json(request) = request.map_err(super::extract::json_rejection)?;
    let tracks = request
        .tracks
        .iter()
        .map(|t| crate::ids::TrackId::parse(t))
        .collect::<Option<Vec<_>>>()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "tracks: one or more track ids",
            )
        })?;
    // A node's relays are bounded by the server's own capacity (`max_peers`), not by the
    // meeting's viewer limit: they are not viewers but the meeting's other nodes.
    let limits = crate::sfu::RoomLimits {
        participants: usize::MAX,
        viewers: usize::MAX,
        sessions_per_identity: usize::MAX,
    };
    let negotiated = state
        .sfu
        .offer(
            crate::ids::RoomId(request.meeting_id),
            crate::ids::ParticipantId(crate::sfu::relay::RELAY_IDENTITY.to_owned()),
            crate::sfu::Intent::Relay {
                publisher: crate::ids::ParticipantId(request.publisher),
                tracks,
            },
            limits,
            request.offer,
        )
        .await?;
    Ok(Json(crate::signaling::cascade::RelayAnswer {
        answer: negotiated.answer,
        session: negotiated.session.to_string(),
    }))
}

fn relay_session(session: &str) -> Result<crate::ids::PeerId, ApiError> {
    uuid::Uuid::parse_str(session)
        .map(crate::ids::PeerId)
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such relay",
            )
        })
}

/// What the receiving node's receivers want of one track the relay carries (layer, frame
/// rate, paused): applied to the relay as a viewer's own asks (see `sfu::relay_wish`).
async fn relay_wish(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path((meeting_id, session, track)): axum::extract::Path<(
        String,
        String,
        String,
    )>,
    // Read after the key is checked: a caller without it learns nothing of the body's shape.
    wish: Result<ApiJson<crate::sfu::relay_wish::RelayWish>, ApiError>,
) -> Result<axum::http::StatusCode, ApiError> {
    from_a_node(&state, &headers)?;
    let ApiJson(wish) = wish?;
    let session = relay_session(&session)?;
    let track = crate::ids::TrackId::parse(&track).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such track",
        )
    })?;
    if !wish.is_valid(
        crate::signaling::session::MAX_TILE_SIDE,
        crate::signaling::session::MAX_FPS,
    ) {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "a wish within what a receiver may ask (set_track's limits)",
        ));
    }
    state
        .sfu
        .relay_wish(crate::ids::RoomId(meeting_id), session, track, wish)
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

async fn close_relay(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path((meeting_id, session)): axum::extract::Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    from_a_node(&state, &headers)?;
    let session = relay_session(&session)?;
    state
        .sfu
        .close(
            crate::ids::RoomId(meeting_id),
            session,
            crate::sfu::Requester::owner(crate::ids::ParticipantId(
                crate::sfu::relay::RELAY_IDENTITY.to_owned(),
            )),
        )
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/cluster/nodes", tag = "cluster",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The nodes whose registry entry is alive", body = NodesResponse),
        (status = 401, description = "No, an invalid or an expired access token (`unauthorized`)"),
        (status = 403, description = "Not an operator in `admins` (`forbidden`)"),
        (status = 503, description = "Redis does not answer (`cluster_unavailable`)"),
    )
)]
async fn nodes(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<NodesResponse>, ApiError> {
    if !state.config.admins.contains(&auth.username) {
        return Err(ApiError::forbidden(
            "only operators (admins) read the cluster",
        ));
    }
    let Some(cluster) = &state.cluster else {
        return Ok(Json(NodesResponse {
            cluster: false,
            this_node: None,
            nodes: Vec::new(),
        }));
    };
    let nodes = cluster.nodes().await.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("Redis does not answer: {e}"),
        )
    })?;
    Ok(Json(NodesResponse {
        cluster: true,
        this_node: Some(cluster.node_id().to_owned()),
        nodes,
    }))
}

#[derive(OpenApi)]
#[openapi(paths(nodes), components(schemas(NodesResponse, NodeEntry, NodeLoad)))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// In cluster mode, a request about one meeting (`/api/v1/meetings/{id}/…`, and a change or
/// cancellation of the meeting itself) is served by the node its room is placed on: that node
/// holds the meeting's sockets, media and recording, so a kick, a chat message or a recording
/// started there acts at once and writes the store once. Another node hands the request on
/// over HTTP (one hop, with the cluster's forward key) and returns the owner's answer. A join
/// places the room (docs/cluster.md); anything else about a room placed nowhere, or whose
/// owner died, is served where it arrived. Without Redis every node serves what reaches it.
pub async fn route_to_owner(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    if state.forwarded_by_node(request.headers()) {
        return next.run(request).await;
    }
    let Some(rest) = request.uri().path().strip_prefix("/api/v1/meetings/") else {
        return next.run(request).await;
    };
    let (key, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let method = request.method().clone();
    let about_live_meeting = if tail.is_empty() {
        method == Method::PATCH || method == Method::DELETE
    } else {
        true
    };
    if key.is_empty() || !about_live_meeting {
        return next.run(request).await;
    }
    let joining = tail == "join" && method == Method::POST;
    // As the route's path parameter reads it (`%61bc` is `abc`), or this node would act on a
    // meeting whose sockets are elsewhere.
    let Some(key) = percent_decode(key) else {
        return next.run(request).await;
    };
    // Unknown meetings are the handler's to refuse.
    let Ok(meeting) = state.store.meeting(&key).await else {
        return next.run(request).await;
    };
    let owner = if joining && !crate::domain::meetings::is_closed(&meeting.status) {
        cluster.place(&meeting.id).await
    } else {
        cluster
            .owner(&meeting.id)
            .await
            .unwrap_or(crate::cluster::Owner::Here)
    };
    match owner {
        crate::cluster::Owner::Here => next.run(request).await,
        crate::cluster::Owner::Node(node) => match forward(&state, &node, request).await {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "the meeting's node did not answer");
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "node_unavailable",
                    "the node serving this meeting did not answer; try again",
                )
                .into_response()
            }
        },
    }
}

/// Hands `request` to `node` and returns its answer as it is.
async fn forward(
    state: &AppState,
    node: &NodeEntry,
    request: axum::extract::Request,
) -> anyhow::Result<axum::response::Response> {
    use axum::http::header;
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(3))
            // Per read, not in all: a recording download streams for as long as it takes.
            .read_timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("an HTTP client with rustls builds")
    });
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{}", node.http_url.trim_end_matches('/'), path);
    // Only what this middleware routes goes on: `..` segments (`%2e%2e` included) would leave
    // the meeting's routes once the URL is normalized.
    let raw = parts.uri.path().to_ascii_lowercase();
    let routed = reqwest::Url::parse(&url).is_ok_and(|u| u.path().starts_with("/api/v1/meetings/"));
    if !routed || raw.contains("..") || raw.contains("%2e") {
        return Ok(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )
        .into_response());
    }
    let Ok(body) = axum::body::to_bytes(body, state.config.max_body_bytes).await else {
        return Ok(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is over the size limit",
        )
        .into_response());
    };
    let mut outgoing = client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    outgoing = outgoing.header(crate::state::FORWARDED, state.keys.cluster_forward_key());
    let answer = outgoing.send().await?;
    let mut response = axum::response::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    // Streamed: a recording download can be large.
    Ok(response.body(axum::body::Body::from_stream(answer.bytes_stream()))?)
}

fn is_hop_by_hop(name: &axum::http::HeaderName) -> bool {
    use axum::http::header;
    [
        header::HOST,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == crate::state::FORWARDED
}

/// `%XX` escapes of a path segment decoded; None when malformed or not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_segment_is_read_as_the_router_reads_it() {
        assert_eq!(super::percent_decode("%61bc-d").as_deref(), Some("abc-d"));
        assert_eq!(super::percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(super::percent_decode("%6"), None);
        assert_eq!(super::percent_decode("%zz"), None);
    }
}
