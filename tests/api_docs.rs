//! The REST API documents itself: the OpenAPI document generated from the handlers lists every
//! endpoint with its methods, and the human page is served.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};

const ENDPOINTS: &[(&str, &str)] = &[
    ("post", "/auth/register"),
    ("post", "/auth/login"),
    ("post", "/auth/refresh"),
    ("post", "/auth/logout"),
    ("post", "/auth/logout-all"),
    ("get", "/users/me"),
    ("patch", "/users/me"),
    ("post", "/users/me/password"),
    ("post", "/meetings"),
    ("get", "/meetings"),
    ("get", "/meetings/{id}"),
    ("patch", "/meetings/{id}"),
    ("delete", "/meetings/{id}"),
    ("post", "/meetings/{id}/start"),
    ("post", "/meetings/{id}/end"),
    ("post", "/meetings/{id}/invites"),
    ("post", "/meetings/{id}/join-tokens"),
    ("post", "/meetings/{code}/join"),
    ("get", "/meetings/{id}/participants"),
    ("post", "/meetings/{id}/participants/{pid}/kick"),
    ("post", "/meetings/{id}/participants/{pid}/mute"),
    ("patch", "/meetings/{id}/participants/{pid}"),
    ("get", "/meetings/{id}/waiting"),
    ("post", "/meetings/{id}/waiting/{pid}/admit"),
    ("post", "/meetings/{id}/waiting/{pid}/deny"),
    ("get", "/meetings/{id}/messages"),
    ("post", "/meetings/{id}/messages"),
    ("get", "/meetings/{id}/recordings"),
    ("get", "/meetings/{id}/stats"),
];

#[tokio::test]
async fn openapi_document_lists_every_endpoint() {
    let server = TestServer::start().await;
    let (status, doc) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths object");
    let normalize = |p: &str| {
        // Parameter names differ between modules ({id}, {id_or_code}, {code}): compare shapes.
        p.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut missing = Vec::new();
    for (method, path) in ENDPOINTS {
        let found = paths.iter().any(|(p, item)| {
            let p = p.strip_prefix("/api/v1").unwrap_or(p);
            normalize(p) == normalize(path) && item.get(*method).is_some()
        });
        if !found {
            missing.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    assert!(
        missing.is_empty(),
        "not in the OpenAPI document: {missing:?}\nhave: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn docs_page_is_served() {
    let server = TestServer::start().await;
    let page = server.http.get(server.api("/docs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("openapi.json"));
}
