//! REST over the domain layer, all under `/api/v1`: thin handlers, one module per resource,
//! each with its own `router()` and `openapi()`, merged here. Errors go through [`ApiError`].

pub mod auth;
pub mod chat;
pub mod cluster;
pub mod extract;
pub mod health;
pub mod ice;
pub mod meetings;
pub mod moderation;
pub mod recordings;
pub mod rtp_forwards;
pub mod users;

use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

pub use crate::http_error::ApiError;

use crate::state::AppState;

/// Every `/api/v1` route.
pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .merge(auth::router())
        .merge(users::router())
        .merge(meetings::router())
        .merge(moderation::router())
        .merge(chat::router())
        .merge(recordings::router())
        .merge(rtp_forwards::router())
        .merge(ice::router())
        .merge(cluster::router())
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs_page));
    Router::new()
        .nest("/api/v1", v1)
        .merge(cluster::internal_router())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Convene REST API", version = "1", description = "Accounts, meetings, joins, moderation and chat. Errors: {\"error\": {\"code\", \"message\", \"details\"?}}."),
    servers((url = "/api/v1")),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document, assembled from each resource module's own.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for part in [
        auth::openapi(),
        users::openapi(),
        meetings::openapi(),
        moderation::openapi(),
        chat::openapi(),
        recordings::openapi(),
        rtp_forwards::openapi(),
        ice::openapi(),
        cluster::openapi(),
    ] {
        doc.merge(part);
    }
    add_common_errors(&mut doc);
    doc
}

/// Statuses every operation can answer whatever its handler says, from the layers in front of
/// it: 429 (rate limits), 422 (a query with control characters), 404 (a path that names nothing),
/// 503 for a meeting's paths (a cluster node handing the request to the meeting's node that
/// does not answer), and for bodies 400 (malformed JSON), 413, 415 and 422 (invalid fields). Documented once here,
/// so schema-driven clients and fuzzers expect exactly what the server does.
fn add_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let envelope = ObjectBuilder::new()
        .property(
            "error",
            ObjectBuilder::new()
                .property("code", ObjectBuilder::new().schema_type(Type::String))
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .property("details", ObjectBuilder::new())
                .required("code")
                .required("message"),
        )
        .required("error")
        .build();
    let response = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(envelope.clone())).build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let has_body = operation.request_body.is_some();
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| response(description));
            };
            add("429", "rate_limited: too many requests (see Retry-After)");
            add(
                "422",
                "validation_failed: invalid fields or query (details.fields)",
            );
            if path.contains('{') {
                add("404", "not_found: no such resource");
            }
            if path.starts_with("/meetings/{") {
                add(
                    "503",
                    "node_unavailable: in a cluster, the node serving this meeting did not answer",
                );
            }
            if has_body {
                add("400", "bad_json: the body is not JSON");
                add("413", "body_too_large");
                add(
                    "415",
                    "unsupported_media_type: the body is not application/json",
                );
            }
        }
    }
}

async fn openapi_json() -> impl IntoResponse {
    Json(openapi())
}

async fn docs_page() -> impl IntoResponse {
    Html(include_str!("../../web/api-docs.html"))
}
