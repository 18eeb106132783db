//! (being written)

use axum::Router;
use utoipa::OpenApi;

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi()]
struct Doc;

pub fn router() -> Router<AppState> {
    Router::new()
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}
