//! REST over the domain layer, all under `/api/v1`: thin handlers, one module per resource,
//! each with its own `router()` and `openapi()`, merged here. Errors go through [`ApiError`].

pub mod auth;
pub mod chat;
pub mod error;
pub mod extract;
pub mod health;
pub mod meetings;
pub mod moderation;
pub mod ratelimit;
pub mod recordings;
pub mod users;

use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

pub use error::ApiError;

use crate::app::AppState;

/// Every `/api/v1` route.
pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .merge(auth::router())
        .merge(users::router())
        .merge(meetings::router())
        .merge(moderation::router())
        .merge(chat::router())
        .merge(recordings::router())
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs_page));
    Router::new().nest("/api/v1", v1)
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
    ] {
        doc.merge(part);
    }
    doc
}

async fn openapi_json() -> impl IntoResponse {
    Json(openapi())
}

async fn docs_page() -> impl IntoResponse {
    Html(include_str!("../../web/api-docs.html"))
}
