//! REST limits and malformed input: body size, broken JSON, wrong content type, and the
//! general and meeting-creation rate-limit classes. Every answer is the JSON error envelope.

mod common;

use common::api::assert_error;
use common::TestServer;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

async fn raw(
    server: &TestServer,
    path: &str,
    token: &str,
    content_type: &str,
    body: String,
) -> (StatusCode, Value) {
    let response = server
        .http
        .post(server.api(path))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_enveloped_errors() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let too_big = json!({ "title": "x".repeat(70 * 1024) }).to_string();
    assert_error(
        &raw(
            &server,
            "/meetings",
            &alice.token,
            "application/json",
            too_big,
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    assert_error(
        &raw(
            &server,
            "/meetings",
            &alice.token,
            "application/json",
            "{\"title\": ".into(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_json",
    );
    assert_error(
        &raw(
            &server,
            "/meetings",
            &alice.token,
            "text/plain",
            "{}".into(),
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let wrong_type = raw(
        &server,
        "/meetings",
        &alice.token,
        "application/json",
        json!({ "title": 42 }).to_string(),
    )
    .await;
    assert_error(
        &wrong_type,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert!(
        wrong_type.1["error"]["details"]["fields"].is_array(),
        "{}",
        wrong_type.1
    );
    let (status, _) = server
        .call(Method::GET, "/users/me", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "the server is unharmed");
}

#[tokio::test]
async fn general_and_meeting_creation_limits_answer_429_with_retry_after() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_general_per_minute = 5;
        c.rate_limit_meeting_create_per_hour = 2;
    })
    .await;
    let alice = server.user("alice").await;
    for _ in 0..2 {
        let (status, body) = server
            .call(
                Method::POST,
                "/meetings",
                Some(&alice.token),
                Some(json!({ "title": "t" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let third = server
        .call(
            Method::POST,
            "/meetings",
            Some(&alice.token),
            Some(json!({ "title": "t" })),
        )
        .await;
    assert_error(&third, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    let mut limited = None;
    for _ in 0..10 {
        let response = server
            .http
            .get(server.api("/users/me"))
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the general class is limited too");
    let retry_after: u64 = limited.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Media and health are not part of the REST classes.
    let health = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// NUL and other control characters never reach the store: 422 for a body or query field, 404
/// for a path, on SQLite and PostgreSQL alike; line breaks stay allowed in prose.
#[tokio::test]
async fn control_characters_are_refused_before_the_store() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let (status, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&alice.token),
            Some(json!({"title": "Text"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().unwrap().to_owned();
    let t = Some(alice.token.as_str());
    let unprocessable: Vec<(Method, String, Option<&str>, Value)> = vec![
        (
            Method::POST,
            "/auth/login".into(),
            None,
            json!({"login": "a\u{0}b", "password": "x"}),
        ),
        (
            Method::POST,
            "/auth/register".into(),
            None,
            json!({"email": "a\u{0}@x.test", "username": "nul", "password": "long enough pw"}),
        ),
        (
            Method::POST,
            "/meetings".into(),
            t,
            json!({"title": "a\u{0}b"}),
        ),
        (
            Method::POST,
            "/meetings".into(),
            t,
            json!({"title": "two\nlines"}),
        ),
        (
            Method::POST,
            "/meetings".into(),
            t,
            json!({"title": "ok", "description": "bell\u{7}"}),
        ),
        (
            Method::PATCH,
            format!("/meetings/{id}"),
            t,
            json!({"passcode": "12\u{0}34"}),
        ),
        (
            Method::PATCH,
            format!("/meetings/{id}"),
            t,
            json!({"title": "esc\u{1b}[31m"}),
        ),
        (
            Method::POST,
            format!("/meetings/{id}/messages"),
            t,
            json!({"text": "hi\u{0}"}),
        ),
        (
            Method::POST,
            format!("/meetings/{id}/invites"),
            t,
            json!({"emails": ["x\u{0}@y.test"]}),
        ),
        (
            Method::POST,
            format!("/meetings/{id}/join"),
            None,
            json!({"display_name": "G\u{0}"}),
        ),
        (
            Method::PATCH,
            "/users/me".into(),
            t,
            json!({"display_name": "A\u{0}"}),
        ),
    ];
    for (method, path, token, body) in unprocessable {
        let reply = server
            .call(method.clone(), &path, token, Some(body.clone()))
            .await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        let _ = (method, path, body);
    }
    for path in [
        "/meetings/%00",
        "/meetings/%00/join",
        "/meetings/a%01b/messages",
    ] {
        let reply = server.call(Method::GET, path, None, None).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
        let reply = server.call(Method::POST, path, t, Some(json!({}))).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    }
    let reply = server
        .call(Method::GET, "/meetings?status=%00", t, None)
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );

    // Prose keeps its line breaks and tabs.
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/meetings/{id}"),
            t,
            Some(json!({"description": "agenda:\n\t1. text\r\n"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/meetings/{id}/messages"),
            t,
            Some(json!({"text": "two\nlines"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
