//! `GET /cluster/nodes`: the cluster's nodes as the registry in Redis holds them (operators in
//! `admins` only).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::extract::AuthUser;
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
