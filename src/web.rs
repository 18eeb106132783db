//! The browser meeting client: static files compiled into the binary (no Node, no build step),
//! served at `/` and `/m/{code}` (the app shell) and `/assets/{file}` (its ES modules and CSS).
//! The WHIP/WHEP demo page lives at `/whip`.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http_error::ApiError;
use crate::state::AppState;

const APP_HTML: &str = include_str!("../web/app/app.html");

/// (file name, content type, body). Plain ES modules: the browser loads them as they are.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "main.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app/main.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app/api.js"),
    ),
    (
        "signaling.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app/signaling.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app/ui.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../web/app/style.css"),
    ),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(app))
        .route("/m/{code}", get(app))
        .route("/whip", get(whip_demo))
        .route("/assets/{file}", get(asset))
}

async fn app() -> impl IntoResponse {
    // The shell must never be cached long: it names the assets of this build.
    ([(header::CACHE_CONTROL, "no-cache")], Html(APP_HTML))
}

async fn whip_demo() -> impl IntoResponse {
    Html(include_str!("../web/index.html"))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        // `no-cache` revalidates each load: without hashed file names a long max-age would keep
        // an old module after an upgrade.
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response(),
    }
}
