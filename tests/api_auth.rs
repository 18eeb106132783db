//! Accounts over HTTP: register, login (with per-account backoff), refresh-token rotation and
//! reuse detection, logout, the caller's profile and password, and the auth rate limit.
//! Runs on SQLite, or on PostgreSQL with `DATABASE_URL=postgres://…`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::api::assert_error;
use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Registers `name` through the API; returns the 201 body.
async fn register(server: &TestServer, name: &str) -> Value {
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let username = format!("{name}_{suffix}");
    let (status, body) = server
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({
                "email": format!("{username}@example.test"),
                "username": username,
                "display_name": name,
                "password": "correct horse battery",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn login(server: &TestServer, login: &str, password: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({ "login": login, "password": password })),
        )
        .await
}

async fn refresh(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            "/auth/refresh",
            None,
            Some(json!({ "refresh_token": token })),
        )
        .await
}

/// A POST whose response headers matter (Retry-After).
async fn post_raw(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    server
        .http
        .post(server.api(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The field names of a 422's `details.fields`.
fn bad_fields(body: &Value) -> BTreeSet<String> {
    body["error"]["details"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.fields in {body}"))
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect()
}

fn set(fields: &[&str]) -> BTreeSet<String> {
    fields.iter().map(|f| (*f).to_owned()).collect()
}

fn str_of<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
}

#[tokio::test]
async fn register_creates_a_signed_in_account() {
    let server = TestServer::start().await;
    let (status, body) = server
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({
                "email": "  Ada.Lovelace@Example.TEST ",
                "username": "ada.l-1_x",
                "display_name": "  Ada Lovelace  ",
                "password": "analytical engine",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 15 * 60);
    let user = &body["user"];
    assert_eq!(
        user["email"], "ada.lovelace@example.test",
        "stored lowercased"
    );
    assert_eq!(user["username"], "ada.l-1_x");
    assert_eq!(user["display_name"], "Ada Lovelace", "stored trimmed");
    assert_eq!(user["avatar_url"], Value::Null);
    assert_eq!(
        user["preferences"],
        json!({ "default_mic_muted": false, "default_camera_off": false })
    );
    assert!(user.get("password_hash").is_none() && user.get("failed_logins").is_none());
    let created = str_of(user, "created_at");
    chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339 time");
    assert_eq!(body["refresh_token"].as_str().unwrap().len(), 43);

    // The access token works, and names this user.
    let access = str_of(&body, "access_token");
    let (status, me) = server
        .call(Method::GET, "/users/me", Some(access), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], user["id"]);
}

#[tokio::test]
async fn register_lists_every_invalid_field() {
    let server = TestServer::start().await;
    let result = server
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({
                "email": "not-an-email",
                "username": "A",
                "display_name": "   ",
                "password": "short",
            })),
        )
        .await;
    assert_error(
        &result,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(
        bad_fields(&result.1),
        set(&["email", "username", "display_name", "password"])
    );

    // Each rule on its own names only its field.
    let good = json!({
        "email": "ok@example.test",
        "username": "okname",
        "display_name": "Ok",
        "password": "long enough password",
    });
    let long_email = format!("{}@example.test", "a".repeat(250));
    let cases: Vec<(&str, Value)> = vec![
        ("email", json!("no-at-sign.example.test")),
        ("email", json!("a@nodot")),
        ("email", json!("two@@example.test")),
        ("email", json!(long_email)),
        ("username", json!("ab")),
        ("username", json!("x".repeat(33))),
        ("username", json!("UpperCase")),
        ("username", json!("has space")),
        ("username", json!("at@sign")),
        ("display_name", json!("")),
        ("display_name", json!("x".repeat(65))),
        ("password", json!("7chars!")),
        ("password", json!("p".repeat(129))),
    ];
    for (field, value) in cases {
        let mut body = good.clone();
        body[field] = value.clone();
        let result = server
            .call(Method::POST, "/auth/register", None, Some(body))
            .await;
        assert_error(
            &result,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(bad_fields(&result.1), set(&[field]), "{field} = {value}");
    }

    // A missing field is a 422 too, not a 400 or 500.
    let result = server
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({ "email": "x@example.test", "username": "xyz" })),
        )
        .await;
    assert_error(
        &result,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn register_refuses_taken_email_and_username() {
    let server = TestServer::start().await;
    let first = register(&server, "taken").await;
    let username = str_of(&first["user"], "username").to_owned();
    let email = str_of(&first["user"], "email").to_uppercase();

    let result = server
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({
                "email": email, "username": "someone_else",
                "display_name": "X", "password": "long enough password",
            })),
        )
        .await;
    assert_error(&result, StatusCode::CONFLICT, "email_taken");

    let result = server
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({
                "email": "other@example.test", "username": username,
                "display_name": "X", "password": "long enough password",
            })),
        )
        .await;
    assert_error(&result, StatusCode::CONFLICT, "username_taken");
}

#[tokio::test]
async fn login_by_email_or_username() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;

    let (status, by_email) = login(&server, &alice.email.to_uppercase(), &alice.password).await;
    assert_eq!(status, StatusCode::OK, "{by_email}");
    assert_eq!(by_email["user"]["id"], alice.id.as_str());
    assert_eq!(by_email["token_type"], "Bearer");

    let (status, by_username) = login(&server, &alice.username, &alice.password).await;
    assert_eq!(status, StatusCode::OK, "{by_username}");
    assert_eq!(by_username["user"]["id"], alice.id.as_str());
    assert_ne!(by_email["refresh_token"], by_username["refresh_token"]);

    let access = str_of(&by_username, "access_token");
    let (status, me) = server
        .call(Method::GET, "/users/me", Some(access), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], alice.username.as_str());

    let result = login(&server, "", "x").await;
    assert_error(
        &result,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_login_look_the_same() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;

    let wrong = login(&server, &alice.username, "not the password").await;
    let unknown = login(&server, "nobody_at_all", "not the password").await;
    let unknown_email = login(&server, "nobody@example.test", "not the password").await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(wrong, unknown, "same status and body");
    assert_eq!(wrong, unknown_email, "same status and body");
}

#[tokio::test]
async fn failed_logins_back_off_per_account() {
    let server = TestServer::start_with(|c| {
        c.login_failures_before_backoff = 2;
        c.login_backoff_base = Duration::from_secs(1);
        c.login_backoff_max = Duration::from_secs(2);
    })
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let attempt = |login: String, password: String| {
        let server = &server;
        async move {
            post_raw(
                server,
                "/auth/login",
                json!({ "login": login, "password": password }),
            )
            .await
        }
    };
    let wrong = || attempt(alice.username.clone(), "wrong password".into());
    let right = || attempt(alice.username.clone(), alice.password.clone());

    // Two failures reach the threshold: the second still answers 401, then the account waits.
    assert_eq!(wrong().await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong().await.status(), StatusCode::UNAUTHORIZED);
    let locked = right().await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&locked), 1);
    let body: Value = locked.json().await.unwrap();
    assert_eq!(body["error"]["code"], "login_backoff");
    // Other accounts are not affected.
    assert_eq!(
        attempt(bob.username.clone(), bob.password.clone())
            .await
            .status(),
        StatusCode::OK
    );

    // After the delay the account answers again; one more failure doubles the delay.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(wrong().await.status(), StatusCode::UNAUTHORIZED);
    let locked = right().await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        retry_after(&locked),
        2,
        "base doubled, capped at the 2 s max"
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(right().await.status(), StatusCode::OK);

    // Success reset the streak: one failure is below the threshold again.
    assert_eq!(wrong().await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(right().await.status(), StatusCode::OK);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let server = TestServer::start().await;
    let session = register(&server, "rot").await;
    let username = str_of(&session["user"], "username").to_owned();
    let first = str_of(&session, "refresh_token").to_owned();

    let (status, rotated) = refresh(&server, &first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = str_of(&rotated, "refresh_token").to_owned();
    assert_ne!(second, first);
    assert_eq!(rotated["user"]["username"], username.as_str());
    let access = str_of(&rotated, "access_token");
    let (status, _) = server
        .call(Method::GET, "/users/me", Some(access), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // A second, independent session of the same user (another device).
    let (status, other) = login(&server, &username, "correct horse battery").await;
    assert_eq!(status, StatusCode::OK);
    let other_token = str_of(&other, "refresh_token").to_owned();

    // The used token again: reuse, and the family's newest token dies with it.
    let result = refresh(&server, &first).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "refresh_token_reused");
    let result = refresh(&server, &second).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    // The other family is untouched.
    let (status, _) = refresh(&server, &other_token).await;
    assert_eq!(status, StatusCode::OK);

    let result = refresh(&server, "not-a-token").await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    let result = server
        .call(Method::POST, "/auth/refresh", None, Some(json!({})))
        .await;
    assert_error(
        &result,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn expired_refresh_tokens_are_refused() {
    let server = TestServer::start_with(|c| c.refresh_token_ttl = Duration::from_millis(300)).await;
    let session = register(&server, "exp").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let result = refresh(&server, str_of(&session, "refresh_token")).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_succeed_once() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    for round in 0..5 {
        let (status, session) = login(&server, &alice.username, &alice.password).await;
        assert_eq!(status, StatusCode::OK);
        let token = str_of(&session, "refresh_token").to_owned();
        let (a, b) = tokio::join!(refresh(&server, &token), refresh(&server, &token));
        let (winner, loser) = match (a.0, b.0) {
            (StatusCode::OK, _) => (a, b),
            _ => (b, a),
        };
        assert_eq!(winner.0, StatusCode::OK, "round {round}: {}", winner.1);
        assert_error(&loser, StatusCode::UNAUTHORIZED, "refresh_token_reused");
        // The loser's reuse revoked the family, including what the winner received.
        let result = refresh(&server, str_of(&winner.1, "refresh_token")).await;
        assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    }
}

#[tokio::test]
async fn logout_revokes_the_session_and_is_idempotent() {
    let server = TestServer::start().await;
    let session = register(&server, "out").await;
    let first = str_of(&session, "refresh_token").to_owned();
    let (status, rotated) = refresh(&server, &first).await;
    assert_eq!(status, StatusCode::OK);
    let second = str_of(&rotated, "refresh_token").to_owned();

    let logout = |token: String| {
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    "/auth/logout",
                    None,
                    Some(json!({ "refresh_token": token })),
                )
                .await
        }
    };
    // Logging out with the current token ends its whole family.
    assert_eq!(logout(second.clone()).await.0, StatusCode::NO_CONTENT);
    let result = refresh(&server, &second).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    assert_eq!(logout(second.clone()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(logout("unknown".into()).await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn logout_all_revokes_every_session() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (status, session) = login(&server, &alice.username, &alice.password).await;
        assert_eq!(status, StatusCode::OK);
        tokens.push(str_of(&session, "refresh_token").to_owned());
    }
    let bob = server.user("bob").await;
    let (_, bob_session) = login(&server, &bob.username, &bob.password).await;

    let result = server
        .call(Method::POST, "/auth/logout-all", None, None)
        .await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "unauthorized");

    let (status, _) = server
        .call(Method::POST, "/auth/logout-all", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for token in &tokens {
        let result = refresh(&server, token).await;
        assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    }
    // Only alice's sessions.
    let (status, _) = refresh(&server, str_of(&bob_session, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn me_can_be_read_and_edited() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let token = Some(alice.token.as_str());

    let (status, me) = server.call(Method::GET, "/users/me", token, None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], alice.id.as_str());
    assert_eq!(me["email"], alice.email.as_str());
    assert_eq!(me["display_name"], "alice");

    let (status, edited) = server
        .call(
            Method::PATCH,
            "/users/me",
            token,
            Some(json!({
                "display_name": "  Alice A.  ",
                "avatar_url": "https://cdn.example.test/alice.png",
                "preferences": { "default_mic_muted": true },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["display_name"], "Alice A.");
    assert_eq!(edited["avatar_url"], "https://cdn.example.test/alice.png");
    assert_eq!(
        edited["preferences"],
        json!({ "default_mic_muted": true, "default_camera_off": false })
    );
    // Compared as times: RFC 3339 text omits a zero fraction ("…:31Z" sorts after "…:31.4Z").
    let time = |body: &Value| {
        chrono::DateTime::parse_from_rfc3339(str_of(body, "updated_at")).expect("RFC 3339")
    };
    assert!(time(&edited) >= time(&me), "{edited} {me}");

    // Only what is sent changes; null clears the avatar.
    let (status, edited) = server
        .call(
            Method::PATCH,
            "/users/me",
            token,
            Some(json!({ "avatar_url": null, "preferences": { "default_camera_off": true } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["avatar_url"], Value::Null);
    assert_eq!(edited["display_name"], "Alice A.");
    assert_eq!(
        edited["preferences"],
        json!({ "default_mic_muted": true, "default_camera_off": true })
    );
    let (_, read) = server.call(Method::GET, "/users/me", token, None).await;
    assert_eq!(read, edited, "the edit is stored");

    // Every bad field is listed, and nothing is stored.
    let result = server
        .call(
            Method::PATCH,
            "/users/me",
            token,
            Some(json!({ "display_name": "   ", "avatar_url": "ftp://example.test/a.png" })),
        )
        .await;
    assert_error(
        &result,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(bad_fields(&result.1), set(&["display_name", "avatar_url"]));
    for body in [
        json!({ "display_name": null }),
        json!({ "avatar_url": format!("https://example.test/{}", "a".repeat(2048)) }),
        json!({ "display_name": "x".repeat(65) }),
        json!({ "preferences": { "default_mic_muted": "yes" } }),
        json!({ "nickname": "typo" }),
    ] {
        let result = server
            .call(Method::PATCH, "/users/me", token, Some(body.clone()))
            .await;
        assert_error(
            &result,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let (_, after) = server.call(Method::GET, "/users/me", token, None).await;
    assert_eq!(after, read);
}

#[tokio::test]
async fn me_requires_an_access_token() {
    let server = TestServer::start().await;
    let join_token = server.token("room-1", "alice", true, true);
    for token in [None, Some("garbage"), Some(join_token.as_str())] {
        let result = server.call(Method::GET, "/users/me", token, None).await;
        assert_error(&result, StatusCode::UNAUTHORIZED, "unauthorized");
        let result = server
            .call(
                Method::PATCH,
                "/users/me",
                token,
                Some(json!({ "display_name": "x" })),
            )
            .await;
        assert_error(&result, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Not a Bearer header at all.
    let response = server
        .http
        .get(server.api("/users/me"))
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn password_change_signs_out_other_sessions() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let token = Some(alice.token.as_str());
    let (_, other_device) = login(&server, &alice.username, &alice.password).await;
    let old_refresh = str_of(&other_device, "refresh_token").to_owned();
    let change = |current: &str, new: &str| {
        let body = json!({ "current_password": current, "new_password": new });
        server.call(Method::POST, "/users/me/password", token, Some(body))
    };

    let result = change("not my password", "a brand new password").await;
    assert_error(&result, StatusCode::FORBIDDEN, "wrong_password");
    let result = change(&alice.password, "short").await;
    assert_error(
        &result,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(bad_fields(&result.1), set(&["new_password"]));
    // Neither attempt changed anything.
    let (status, _) = login(&server, &alice.username, &alice.password).await;
    assert_eq!(status, StatusCode::OK);

    let (status, fresh) = change(&alice.password, "a brand new password").await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(fresh["user"]["id"], alice.id.as_str());

    // Other sessions are gone; the caller's fresh pair works.
    let result = refresh(&server, &old_refresh).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    let (status, _) = refresh(&server, str_of(&fresh, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .call(
            Method::GET,
            "/users/me",
            Some(str_of(&fresh, "access_token")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let result = login(&server, &alice.username, &alice.password).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let (status, _) = login(&server, &alice.username, "a brand new password").await;
    assert_eq!(status, StatusCode::OK);

    let result = server
        .call(
            Method::POST,
            "/users/me/password",
            None,
            Some(json!({ "current_password": "a", "new_password": "b" })),
        )
        .await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn auth_requests_are_rate_limited_per_address() {
    let server = TestServer::start_with(|c| c.rate_limit_auth_per_minute = 3).await;
    let body = json!({ "login": "nobody", "password": "whatever" });
    for _ in 0..3 {
        let response = post_raw(&server, "/auth/login", body.clone()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = post_raw(&server, "/auth/register", json!({})).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&response) >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn accounts_are_in_the_openapi_document() {
    let server = TestServer::start().await;
    let (status, doc) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/auth/register",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/auth/logout-all",
        "/users/me",
        "/users/me/password",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["TokenResponse"].is_object());
}
