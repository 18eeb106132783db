//! Meetings and joining over REST: create, read, list, edit, lifecycle, invites, invite links,
//! every join rule (passcode, access mode, guests, bans, capacity, waiting room), the race for
//! the last seat, and the full flow from sign-up to publishing media with the join token.
//! Runs on SQLite, and on PostgreSQL when DATABASE_URL is set.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::api::{assert_error, TestUser};
use common::client::WhipPublisher;
use common::TestServer;
use convene::domain::meetings::is_code;
use convene::domain::token::JoinClaims;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

type Reply = (StatusCode, Value);

async fn create(server: &TestServer, host: &TestUser, body: Value) -> Value {
    let reply = server
        .call(Method::POST, "/meetings", Some(&host.token), Some(body))
        .await;
    assert_eq!(reply.0, StatusCode::CREATED, "{}", reply.1);
    reply.1
}

async fn create_titled(server: &TestServer, host: &TestUser, title: &str) -> Value {
    create(server, host, json!({ "title": title })).await
}

async fn join(server: &TestServer, meeting: &Value, token: Option<&str>, body: Value) -> Reply {
    let path = format!("/meetings/{}/join", meeting["code"].as_str().unwrap());
    server.call(Method::POST, &path, token, Some(body)).await
}

async fn join_guest(server: &TestServer, meeting: &Value, name: &str) -> Reply {
    join(server, meeting, None, json!({ "display_name": name })).await
}

fn path(meeting: &Value, tail: &str) -> String {
    format!("/meetings/{}{tail}", meeting["id"].as_str().unwrap())
}

fn claims(server: &TestServer, reply: &Reply) -> JoinClaims {
    let token = reply.1["join_token"].as_str().expect("a join token");
    server
        .server
        .state
        .keys
        .verify(token)
        .expect("a valid join token")
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn field_names(reply: &Reply) -> HashSet<String> {
    reply.1["error"]["details"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no field list in {}", reply.1))
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect()
}

fn in_minutes(minutes: i64) -> String {
    (Utc::now() + chrono::Duration::minutes(minutes)).to_rfc3339()
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn participant_status(server: &TestServer, meeting: &Value, participant_id: &str) -> String {
    server
        .server
        .state
        .store
        .participant(meeting["id"].as_str().unwrap(), participant_id)
        .await
        .unwrap()
        .status
}

#[tokio::test]
async fn create_returns_the_meeting_with_defaults_and_overrides() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let at = in_minutes(90);
    let m = create(
        &server,
        &host,
        json!({
            "title": "  Weekly sync ",
            "description": "agenda",
            "scheduled_at": at,
            "duration_minutes": 45,
            "access": "private",
            "passcode": "4321",
            "settings": { "waiting_room": true, "max_participants": 10, "chat": false }
        }),
    )
    .await;
    let code = m["code"].as_str().unwrap();
    assert!(is_code(code), "{code}");
    assert_eq!(m["title"], "Weekly sync");
    assert_eq!(m["description"], "agenda");
    assert_eq!(m["duration_minutes"], 45);
    assert_eq!(m["access"], "private");
    assert_eq!(m["status"], "scheduled");
    assert_eq!(m["has_passcode"], true);
    assert_eq!(m["passcode"], "4321", "the host sees the passcode");
    assert_eq!(m["host"]["id"], host.id.as_str());
    assert_eq!(m["host"]["display_name"], "hana");
    assert_eq!(m["join_url"], format!("/m/{code}"));
    let scheduled: DateTime<Utc> = m["scheduled_at"].as_str().unwrap().parse().unwrap();
    let wanted: DateTime<Utc> = at.parse().unwrap();
    assert_eq!(scheduled.timestamp_millis(), wanted.timestamp_millis());
    assert!(m["created_at"]
        .as_str()
        .unwrap()
        .parse::<DateTime<Utc>>()
        .is_ok());
    assert!(m["started_at"].is_null() && m["ended_at"].is_null());
    let s = &m["settings"];
    assert_eq!(
        (
            s["allow_guests"].clone(),
            s["waiting_room"].clone(),
            s["mute_on_join"].clone()
        ),
        (json!(true), json!(true), json!(false))
    );
    assert_eq!(
        (
            s["video_on_join"].clone(),
            s["chat"].clone(),
            s["screen_share"].clone()
        ),
        (json!(true), json!(false), json!(true))
    );
    assert_eq!(s["recording"], false);
    assert_eq!(s["max_participants"], 10);

    // Defaults: public, no passcode, the server's participant limit.
    let plain = create_titled(&server, &host, "plain").await;
    assert_eq!(plain["access"], "public");
    assert_eq!(plain["has_passcode"], false);
    assert!(plain.get("passcode").is_none());
    assert_eq!(plain["settings"]["max_participants"], 100);
    assert!(plain["scheduled_at"].is_null());
}

#[tokio::test]
async fn join_url_uses_the_public_url() {
    let server = TestServer::start_with(|c| c.public_url = "https://meet.example".into()).await;
    let host = server.user("hana").await;
    let m = create_titled(&server, &host, "x").await;
    assert_eq!(
        m["join_url"],
        format!("https://meet.example/m/{}", m["code"].as_str().unwrap())
    );
}

#[tokio::test]
async fn create_lists_every_bad_field_and_needs_a_token() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let reply = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({
                "title": "",
                "description": "x".repeat(5001),
                "scheduled_at": in_minutes(-10),
                "duration_minutes": 0,
                "access": "secret",
                "passcode": "12",
                "settings": { "max_participants": 101 }
            })),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let fields = field_names(&reply);
    for field in [
        "title",
        "description",
        "scheduled_at",
        "duration_minutes",
        "access",
        "passcode",
        "settings.max_participants",
    ] {
        assert!(fields.contains(field), "{field} missing from {fields:?}");
    }

    let reply = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({ "scheduled_at": "tomorrow", "duration_minutes": 1441 })),
        )
        .await;
    let fields = field_names(&reply);
    assert!(fields.contains("title") && fields.contains("scheduled_at"));
    assert!(fields.contains("duration_minutes"));

    let reply = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({ "title": "x", "colour": "red" })),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );

    // A minute of clock skew is tolerated.
    let reply = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({ "title": "x", "scheduled_at": (Utc::now() - chrono::Duration::seconds(20)).to_rfc3339() })),
        )
        .await;
    assert_eq!(reply.0, StatusCode::CREATED, "{}", reply.1);

    let reply = server
        .call(
            Method::POST,
            "/meetings",
            None,
            Some(json!({ "title": "x" })),
        )
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = server
        .call(
            Method::POST,
            "/meetings",
            Some("garbage"),
            Some(json!({ "title": "x" })),
        )
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn codes_are_well_formed_and_unique() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let mut codes = HashSet::new();
    for i in 0..25 {
        let m = create_titled(&server, &host, &format!("m{i}")).await;
        let code = m["code"].as_str().unwrap().to_owned();
        assert!(is_code(&code), "{code}");
        assert!(codes.insert(code), "duplicate code");
    }
    // The store refuses a taken code with Conflict("code"), which creation retries on.
    let store = &server.server.state.store;
    let existing = store.meeting(codes.iter().next().unwrap()).await.unwrap();
    let mut copy = existing.clone();
    copy.id = convene::store::new_id();
    match store.insert_meeting(&copy).await {
        Err(convene::store::StoreError::Conflict(what)) => assert_eq!(what, "code"),
        other => panic!("expected a code conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn get_by_id_and_by_code() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let other = server.user("otto").await;
    let m = create(
        &server,
        &host,
        json!({ "title": "open", "passcode": "abcd" }),
    )
    .await;
    let by_id = server
        .call(Method::GET, &path(&m, ""), Some(&host.token), None)
        .await;
    assert_eq!(by_id.0, StatusCode::OK);
    assert_eq!(by_id.1, m);
    let code_path = format!("/meetings/{}", m["code"].as_str().unwrap());
    let by_code = server
        .call(Method::GET, &code_path, Some(&other.token), None)
        .await;
    assert_eq!(by_code.0, StatusCode::OK);
    assert_eq!(by_code.1["id"], m["id"]);
    assert_eq!(by_code.1["has_passcode"], true);
    assert!(by_code.1.get("passcode").is_none(), "only the host sees it");
    // Anonymous: what a join page needs.
    let anonymous = server.call(Method::GET, &code_path, None, None).await;
    assert_eq!(anonymous.0, StatusCode::OK);
    for key in ["title", "status", "access", "has_passcode"] {
        assert!(anonymous.1.get(key).is_some(), "{key}");
    }
    assert_eq!(anonymous.1["settings"]["allow_guests"], true);
    assert_eq!(anonymous.1["settings"]["waiting_room"], false);

    let missing = server
        .call(
            Method::GET,
            "/meetings/zzz-zzzz-zzz",
            Some(&host.token),
            None,
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "meeting_not_found");
    let bad = server
        .call(Method::GET, &path(&m, ""), Some("garbage"), None)
        .await;
    assert_error(&bad, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn private_and_invite_only_meetings_are_hidden_from_others() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let other = server.user("otto").await;
    let invitee = server.user("ines").await;
    for access in ["private", "invite_only"] {
        let m = create(&server, &host, json!({ "title": access, "access": access })).await;
        let reply = server
            .call(Method::GET, &path(&m, ""), Some(&other.token), None)
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "meeting_not_found");
        let code_path = format!("/meetings/{}", m["code"].as_str().unwrap());
        let reply = server.call(Method::GET, &code_path, None, None).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "meeting_not_found");
        let reply = server
            .call(Method::GET, &path(&m, ""), Some(&host.token), None)
            .await;
        assert_eq!(reply.0, StatusCode::OK);

        // Invited by email: now visible.
        let invite = server
            .call(
                Method::POST,
                &path(&m, "/invites"),
                Some(&host.token),
                Some(json!({ "emails": [invitee.email.to_uppercase()] })),
            )
            .await;
        assert_eq!(invite.0, StatusCode::CREATED, "{}", invite.1);
        let reply = server
            .call(Method::GET, &code_path, Some(&invitee.token), None)
            .await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    }
    let public = create_titled(&server, &host, "public").await;
    let reply = server
        .call(Method::GET, &path(&public, ""), Some(&other.token), None)
        .await;
    assert_eq!(reply.0, StatusCode::OK);
}

#[tokio::test]
async fn list_pages_filters_and_shows_invited_meetings() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let guest = server.user("gina").await;
    let stranger = server.user("sam").await;
    let a = create_titled(&server, &host, "a").await;
    let b = create(
        &server,
        &host,
        json!({ "title": "b", "scheduled_at": in_minutes(120) }),
    )
    .await;
    let c = create(
        &server,
        &host,
        json!({ "title": "c", "scheduled_at": in_minutes(30) }),
    )
    .await;
    let d = create_titled(&server, &host, "d").await;
    // Someone else's meeting never shows up in the host's list.
    create_titled(&server, &stranger, "not mine").await;

    let page1 = server
        .call(
            Method::GET,
            "/meetings?limit=3&page=1",
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(page1.0, StatusCode::OK, "{}", page1.1);
    assert_eq!(page1.1["total"], 4);
    assert_eq!(
        (page1.1["page"].clone(), page1.1["limit"].clone()),
        (json!(1), json!(3))
    );
    let id = |m: &Value| m["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&page1.1), vec![id(&d), id(&c), id(&b)], "newest first");
    let page2 = server
        .call(
            Method::GET,
            "/meetings?limit=3&page=2",
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(ids(&page2.1), vec![id(&a)]);
    assert_eq!(page2.1["total"], 4);

    // Status filter: start d, end a.
    let started = server
        .call(Method::POST, &path(&d, "/start"), Some(&host.token), None)
        .await;
    assert_eq!(started.0, StatusCode::OK);
    let ended = server
        .call(Method::POST, &path(&a, "/end"), Some(&host.token), None)
        .await;
    assert_eq!(ended.0, StatusCode::OK);
    let live = server
        .call(
            Method::GET,
            "/meetings?status=live",
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(ids(&live.1), vec![id(&d)]);
    assert_eq!(live.1["total"], 1);

    // Upcoming: live and scheduled ones still ahead, soonest first; the ended one is gone.
    let upcoming = server
        .call(
            Method::GET,
            "/meetings?upcoming=true",
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(upcoming.0, StatusCode::OK, "{}", upcoming.1);
    assert_eq!(ids(&upcoming.1), vec![id(&d), id(&c), id(&b)]);
    assert_eq!(upcoming.1["total"], 3);

    // Invitees see the meetings they are invited to, by account or by email.
    let empty = server
        .call(Method::GET, "/meetings", Some(&guest.token), None)
        .await;
    assert_eq!(empty.1["total"], 0);
    server
        .call(
            Method::POST,
            &path(&b, "/invites"),
            Some(&host.token),
            Some(json!({ "user_ids": [guest.id] })),
        )
        .await;
    server
        .call(
            Method::POST,
            &path(&c, "/invites"),
            Some(&host.token),
            Some(json!({ "emails": [guest.email] })),
        )
        .await;
    let invited = server
        .call(Method::GET, "/meetings", Some(&guest.token), None)
        .await;
    assert_eq!(ids(&invited.1), vec![id(&c), id(&b)]);
    assert!(invited.1["items"][0].get("passcode").is_none());

    for bad in [
        "limit=0",
        "limit=101",
        "page=0",
        "status=open",
        "upcoming=maybe",
        "limit=x",
    ] {
        let reply = server
            .call(
                Method::GET,
                &format!("/meetings?{bad}"),
                Some(&host.token),
                None,
            )
            .await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let reply = server.call(Method::GET, "/meetings", None, None).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn patch_by_host_only() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let other = server.user("otto").await;
    let m = create(
        &server,
        &host,
        json!({ "title": "before", "passcode": "1234", "duration_minutes": 30 }),
    )
    .await;
    let at = in_minutes(60);
    let reply = server
        .call(
            Method::PATCH,
            &path(&m, ""),
            Some(&host.token),
            Some(json!({
                "title": "after",
                "passcode": null,
                "scheduled_at": at,
                "duration_minutes": null,
                "access": "private",
                "settings": { "waiting_room": true, "allow_guests": false }
            })),
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    let updated = &reply.1;
    assert_eq!(updated["title"], "after");
    assert_eq!(updated["has_passcode"], false);
    assert!(updated["duration_minutes"].is_null());
    assert_eq!(updated["access"], "private");
    assert_eq!(updated["settings"]["waiting_room"], true);
    assert_eq!(updated["settings"]["allow_guests"], false);
    assert_eq!(updated["settings"]["chat"], true, "untouched settings stay");
    assert!(updated["scheduled_at"].is_string());
    // It persisted.
    let read = server
        .call(Method::GET, &path(&m, ""), Some(&host.token), None)
        .await;
    assert_eq!(&read.1, updated);

    let reply = server
        .call(
            Method::PATCH,
            &path(&m, ""),
            Some(&host.token),
            Some(json!({ "title": "", "passcode": "1", "settings": { "max_participants": 0 } })),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(
        field_names(&reply),
        set(&["title", "passcode", "settings.max_participants"])
    );

    // Private now: a stranger cannot even see it.
    let reply = server
        .call(
            Method::PATCH,
            &path(&m, ""),
            Some(&other.token),
            Some(json!({ "title": "x" })),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "meeting_not_found");
    // A public one they can see but not change.
    let public = create_titled(&server, &host, "public").await;
    let reply = server
        .call(
            Method::PATCH,
            &path(&public, ""),
            Some(&other.token),
            Some(json!({ "title": "x" })),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");

    server
        .call(
            Method::POST,
            &path(&public, "/end"),
            Some(&host.token),
            None,
        )
        .await;
    let reply = server
        .call(
            Method::PATCH,
            &path(&public, ""),
            Some(&host.token),
            Some(json!({ "title": "x" })),
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "meeting_closed");
}

#[tokio::test]
async fn lifecycle_transitions() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let other = server.user("otto").await;
    let m = create_titled(&server, &host, "life").await;

    let reply = server
        .call(Method::POST, &path(&m, "/start"), Some(&other.token), None)
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let started = server
        .call(Method::POST, &path(&m, "/start"), Some(&host.token), None)
        .await;
    assert_eq!(started.0, StatusCode::OK, "{}", started.1);
    assert_eq!(started.1["status"], "live");
    assert!(started.1["started_at"].is_string());
    let again = server
        .call(Method::POST, &path(&m, "/start"), Some(&host.token), None)
        .await;
    assert_eq!(
        again.0,
        StatusCode::OK,
        "starting a live meeting is idempotent"
    );
    assert_eq!(again.1["started_at"], started.1["started_at"]);

    // Someone is in it when it ends: their row is closed.
    let guest = join_guest(&server, &m, "Gus").await;
    assert_eq!(guest.0, StatusCode::OK, "{}", guest.1);
    let reply = server
        .call(Method::POST, &path(&m, "/end"), Some(&other.token), None)
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let ended = server
        .call(Method::POST, &path(&m, "/end"), Some(&host.token), None)
        .await;
    assert_eq!(ended.0, StatusCode::OK, "{}", ended.1);
    assert_eq!(ended.1["status"], "ended");
    assert!(ended.1["ended_at"].is_string());
    let pid = guest.1["participant_id"].as_str().unwrap();
    assert_eq!(participant_status(&server, &m, pid).await, "left");

    for (method, tail) in [
        (Method::POST, "/end"),
        (Method::POST, "/start"),
        (Method::DELETE, ""),
    ] {
        let reply = server
            .call(method, &path(&m, tail), Some(&host.token), None)
            .await;
        assert_error(&reply, StatusCode::CONFLICT, "meeting_closed");
    }

    let doomed = create_titled(&server, &host, "doomed").await;
    let reply = server
        .call(Method::DELETE, &path(&doomed, ""), Some(&other.token), None)
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let cancelled = server
        .call(Method::DELETE, &path(&doomed, ""), Some(&host.token), None)
        .await;
    assert_eq!(cancelled.0, StatusCode::OK);
    assert_eq!(cancelled.1["status"], "cancelled");
    // History is kept.
    let read = server
        .call(Method::GET, &path(&doomed, ""), Some(&host.token), None)
        .await;
    assert_eq!(read.1["status"], "cancelled");
    let again = server
        .call(Method::DELETE, &path(&doomed, ""), Some(&host.token), None)
        .await;
    assert_error(&again, StatusCode::CONFLICT, "meeting_closed");
    let reply = server
        .call(
            Method::POST,
            &path(&doomed, "/end"),
            Some(&host.token),
            None,
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "meeting_closed");

    let hidden = create(&server, &host, json!({ "title": "h", "access": "private" })).await;
    let reply = server
        .call(
            Method::POST,
            &path(&hidden, "/start"),
            Some(&other.token),
            None,
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "meeting_not_found");
    let reply = server
        .call(Method::POST, &path(&hidden, "/start"), None, None)
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn invites_validate_and_ignore_duplicates() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let ines = server.user("ines").await;
    let other = server.user("otto").await;
    let m = create(
        &server,
        &host,
        json!({ "title": "inv", "access": "invite_only" }),
    )
    .await;

    let reply = server
        .call(
            Method::POST,
            &path(&m, "/invites"),
            Some(&host.token),
            Some(json!({ "user_ids": [ines.id], "emails": ["a@example.test", "B@Example.test"] })),
        )
        .await;
    assert_eq!(reply.0, StatusCode::CREATED, "{}", reply.1);
    assert_eq!(reply.1["invited"], 3);
    let again = server
        .call(
            Method::POST,
            &path(&m, "/invites"),
            Some(&host.token),
            Some(json!({ "user_ids": [ines.id], "emails": ["b@example.test"] })),
        )
        .await;
    assert_eq!(again.0, StatusCode::CREATED);
    assert_eq!(again.1["invited"], 0, "duplicates are ignored");

    let reply = server
        .call(
            Method::POST,
            &path(&m, "/invites"),
            Some(&host.token),
            Some(json!({ "user_ids": [uuid::Uuid::now_v7().to_string()], "emails": ["nope"] })),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(field_names(&reply), set(&["user_ids[0]", "emails[0]"]));
    let reply = server
        .call(
            Method::POST,
            &path(&m, "/invites"),
            Some(&host.token),
            Some(json!({})),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );

    // The invitee sees it now and may act on nothing; a stranger sees nothing.
    let reply = server
        .call(
            Method::POST,
            &path(&m, "/invites"),
            Some(&ines.token),
            Some(json!({ "user_ids": [other.id] })),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let reply = server
        .call(
            Method::POST,
            &path(&m, "/invites"),
            Some(&other.token),
            Some(json!({ "user_ids": [other.id] })),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "meeting_not_found");
}

#[tokio::test]
async fn invite_links_carry_a_role_and_are_used_up() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let other = server.user("otto").await;
    let m = create(
        &server,
        &host,
        json!({
            "title": "links",
            "access": "invite_only",
            "passcode": "9999",
            "settings": { "waiting_room": true }
        }),
    )
    .await;
    let link = server
        .call(
            Method::POST,
            &path(&m, "/join-tokens"),
            Some(&host.token),
            Some(json!({ "role": "moderator" })),
        )
        .await;
    assert_eq!(link.0, StatusCode::CREATED, "{}", link.1);
    let token = link.1["token"].as_str().unwrap().to_owned();
    assert_eq!(link.1["role"], "moderator");
    assert_eq!(link.1["uses"], 1);
    assert_eq!(
        link.1["url"],
        format!("/m/{}?invite={token}", m["code"].as_str().unwrap())
    );
    let expires: DateTime<Utc> = link.1["expires_at"].as_str().unwrap().parse().unwrap();
    let in_a_day = (expires - Utc::now()).num_seconds();
    assert!((86_000..=86_400).contains(&in_a_day), "{in_a_day}");
    // Only its hash is stored.
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM join_links WHERE token_hash = $1")
        .bind(&token)
        .fetch_one(&server.server.state.store.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // A guest with the link: no passcode, no invite, no waiting room, the link's role.
    let joined = join(
        &server,
        &m,
        None,
        json!({ "display_name": "Linda", "invite_token": token }),
    )
    .await;
    assert_eq!(joined.0, StatusCode::OK, "{}", joined.1);
    assert_eq!(joined.1["role"], "moderator");
    assert!(claims(&server, &joined).grants.moderate);
    let second = join(
        &server,
        &m,
        None,
        json!({ "display_name": "Late", "invite_token": token }),
    )
    .await;
    assert_error(&second, StatusCode::FORBIDDEN, "invalid_invite");
    let forged = join(
        &server,
        &m,
        None,
        json!({ "display_name": "Forger", "invite_token": "not-a-token" }),
    )
    .await;
    assert_error(&forged, StatusCode::FORBIDDEN, "invalid_invite");

    // Expired: a two-use link whose time is up refuses even with a use left.
    let link = server
        .call(
            Method::POST,
            &path(&m, "/join-tokens"),
            Some(&host.token),
            Some(json!({ "role": "participant", "uses": 2, "ttl": 3600 })),
        )
        .await;
    let token = link.1["token"].as_str().unwrap().to_owned();
    let ok = join(
        &server,
        &m,
        Some(&other.token),
        json!({ "invite_token": token }),
    )
    .await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    assert_eq!(ok.1["role"], "participant");
    sqlx::query("UPDATE join_links SET expires_at = $1 WHERE meeting_id = $2")
        .bind(convene::store::now_ms() - 1)
        .bind(m["id"].as_str().unwrap())
        .execute(&server.server.state.store.pool)
        .await
        .unwrap();
    let expired = join(
        &server,
        &m,
        None,
        json!({ "display_name": "Late", "invite_token": token }),
    )
    .await;
    assert_error(&expired, StatusCode::FORBIDDEN, "invalid_invite");

    // Validation and permission.
    let reply = server
        .call(
            Method::POST,
            &path(&m, "/join-tokens"),
            Some(&host.token),
            Some(json!({ "role": "host", "uses": 0, "ttl": 2_592_001 })),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(field_names(&reply), set(&["role", "uses", "ttl"]));
    // `other` joined through a participant link: not invited to this invite-only meeting,
    // but holding a seat, they see it (as they see its participants and messages), and as a
    // participant they may not mint links.
    let reply = server
        .call(
            Method::POST,
            &path(&m, "/join-tokens"),
            Some(&other.token),
            Some(json!({ "role": "guest" })),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let public = create_titled(&server, &host, "pub").await;
    let reply = server
        .call(
            Method::POST,
            &path(&public, "/join-tokens"),
            Some(&other.token),
            Some(json!({ "role": "guest" })),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn moderators_may_create_links_below_their_role() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let mo = server.user("mo").await;
    let m = create_titled(&server, &host, "mods").await;
    // Promote mo the way moderation does: their participant row holds the role (and they are
    // in the meeting now: a departed moderator mints no links).
    let now = convene::store::now_ms();
    server
        .server
        .state
        .store
        .add_participant(&convene::store::participants::Participant {
            id: convene::store::new_id(),
            meeting_id: m["id"].as_str().unwrap().to_owned(),
            user_id: Some(mo.id.clone()),
            identity: mo.id.clone(),
            display_name: "mo".into(),
            role: "moderator".into(),
            status: "joined".into(),
            mic_muted: false,
            camera_off: false,
            joined_at: Some(now),
            left_at: None,
            created_at: now,
        })
        .await
        .unwrap();
    let reply = server
        .call(
            Method::POST,
            &path(&m, "/join-tokens"),
            Some(&mo.token),
            Some(json!({ "role": "participant", "uses": 5 })),
        )
        .await;
    assert_eq!(reply.0, StatusCode::CREATED, "{}", reply.1);
    assert_eq!(reply.1["uses"], 5);
    let reply = server
        .call(
            Method::POST,
            &path(&m, "/join-tokens"),
            Some(&mo.token),
            Some(json!({ "role": "moderator" })),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");

    // The promotion sticks: mo rejoins as moderator.
    let rejoined = join(&server, &m, Some(&mo.token), json!({})).await;
    assert_eq!(rejoined.0, StatusCode::OK, "{}", rejoined.1);
    assert_eq!(rejoined.1["role"], "moderator");
}

#[tokio::test]
async fn join_as_host_participant_and_guest() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let pat = server.user("pat").await;
    let m = create(
        &server,
        &host,
        json!({
            "title": "join",
            "passcode": "2468",
            "settings": { "mute_on_join": true, "video_on_join": false }
        }),
    )
    .await;
    let id = m["id"].as_str().unwrap();

    // The host needs no passcode; the meeting goes live.
    let h = join(&server, &m, Some(&host.token), json!({})).await;
    assert_eq!(h.0, StatusCode::OK, "{}", h.1);
    assert_eq!(h.1["role"], "host");
    assert_eq!(h.1["identity"], host.id.as_str());
    assert_eq!(h.1["meeting_id"], id);
    assert_eq!(h.1["room"], id);
    assert_eq!(h.1["ws_url"], "/ws");
    assert_eq!(h.1["whip_url"], format!("/whip/{id}"));
    assert_eq!(h.1["whep_url"], format!("/whep/{id}"));
    assert!(h.1["ice_servers"].is_array());
    assert_eq!(h.1["mic_muted"], true);
    assert_eq!(h.1["camera_off"], true);
    let hc = claims(&server, &h);
    assert_eq!(hc.sub, host.id);
    assert_eq!(hc.room, id);
    assert_eq!(hc.name.as_deref(), Some("hana"));
    assert!(hc.grants.moderate && hc.grants.publish && hc.grants.subscribe);
    assert!(hc.grants.publish_sources.contains(&"screen".to_owned()));
    assert_eq!(hc.grants.role.as_deref(), Some("host"));
    assert!(hc.exp - hc.nbf >= 10 * 60 - 5, "join_token_ttl");
    assert_eq!(
        hc.pid.as_deref(),
        h.1["participant_id"].as_str(),
        "the token names its seat"
    );
    let read = server.call(Method::GET, &path(&m, ""), None, None).await;
    assert_eq!(read.1["status"], "live");
    assert!(read.1["started_at"].is_string());

    // A registered participant with the passcode and a name of their choice.
    let p = join(
        &server,
        &m,
        Some(&pat.token),
        json!({ "passcode": "2468", "display_name": "Pat (laptop)" }),
    )
    .await;
    assert_eq!(p.0, StatusCode::OK, "{}", p.1);
    assert_eq!(p.1["role"], "participant");
    assert_eq!(p.1["identity"], pat.id.as_str());
    let pc = claims(&server, &p);
    assert_eq!(pc.name.as_deref(), Some("Pat (laptop)"));
    assert!(!pc.grants.moderate);
    assert!(pc.grants.publish_sources.contains(&"screen".to_owned()));

    // A guest with the passcode: never screen sharing, never moderating.
    let g = join(
        &server,
        &m,
        None,
        json!({ "passcode": "2468", "display_name": "Gus" }),
    )
    .await;
    assert_eq!(g.0, StatusCode::OK, "{}", g.1);
    assert_eq!(g.1["role"], "guest");
    let pid = g.1["participant_id"].as_str().unwrap();
    assert_eq!(g.1["identity"], format!("guest-{pid}"));
    let gc = claims(&server, &g);
    assert!(!gc.grants.publish_sources.contains(&"screen".to_owned()));
    assert!(!gc.grants.moderate);
    assert_eq!(participant_status(&server, &m, pid).await, "joined");

    // Wrong or missing passcode; guests without a name; unknown meetings.
    let wrong = join(
        &server,
        &m,
        None,
        json!({ "passcode": "1111", "display_name": "X" }),
    )
    .await;
    assert_error(&wrong, StatusCode::FORBIDDEN, "wrong_passcode");
    let missing = join(&server, &m, Some(&pat.token), json!({})).await;
    assert_error(&missing, StatusCode::FORBIDDEN, "wrong_passcode");
    let nameless = join(&server, &m, None, json!({ "passcode": "2468" })).await;
    assert_error(
        &nameless,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert!(field_names(&nameless).contains("display_name"));
    let long = join(
        &server,
        &m,
        None,
        json!({ "passcode": "2468", "display_name": "x".repeat(65) }),
    )
    .await;
    assert_error(&long, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let unknown = server
        .call(
            Method::POST,
            "/meetings/zzz-zzzz-zzz/join",
            None,
            Some(json!({ "display_name": "X" })),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "meeting_not_found");
}

#[tokio::test]
async fn join_refusals() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let ines = server.user("ines").await;
    let otto = server.user("otto").await;

    // Guests disallowed.
    let members = create(
        &server,
        &host,
        json!({ "title": "members", "settings": { "allow_guests": false } }),
    )
    .await;
    let reply = join_guest(&server, &members, "Gus").await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "login_required");
    let reply = join(&server, &members, Some(&otto.token), json!({})).await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);

    // Invite-only: strangers refused, invitees admitted.
    let closed = create(
        &server,
        &host,
        json!({ "title": "closed", "access": "invite_only" }),
    )
    .await;
    let reply = join(&server, &closed, Some(&otto.token), json!({})).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "not_invited");
    let reply = join_guest(&server, &closed, "Gus").await;
    assert_error(&reply, StatusCode::FORBIDDEN, "not_invited");
    server
        .call(
            Method::POST,
            &path(&closed, "/invites"),
            Some(&host.token),
            Some(json!({ "user_ids": [ines.id] })),
        )
        .await;
    let reply = join(&server, &closed, Some(&ines.token), json!({})).await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    assert_eq!(reply.1["role"], "participant");

    // Private: hidden from GET, but the code admits.
    let private = create(
        &server,
        &host,
        json!({ "title": "private", "access": "private" }),
    )
    .await;
    let reply = join(&server, &private, Some(&otto.token), json!({})).await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);

    // Banned (by identity).
    let open = create_titled(&server, &host, "open").await;
    sqlx::query("INSERT INTO bans (meeting_id, identity, created_at) VALUES ($1, $2, $3)")
        .bind(open["id"].as_str().unwrap())
        .bind(&otto.id)
        .bind(convene::store::now_ms())
        .execute(&server.server.state.store.pool)
        .await
        .unwrap();
    let reply = join(&server, &open, Some(&otto.token), json!({})).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "banned");
    let reply = join(&server, &open, Some(&ines.token), json!({})).await;
    assert_eq!(reply.0, StatusCode::OK);

    // Ended and cancelled: gone.
    server
        .call(Method::POST, &path(&open, "/end"), Some(&host.token), None)
        .await;
    let reply = join(&server, &open, Some(&ines.token), json!({})).await;
    assert_error(&reply, StatusCode::GONE, "meeting_ended");
    server
        .call(Method::DELETE, &path(&private, ""), Some(&host.token), None)
        .await;
    let reply = join_guest(&server, &private, "Gus").await;
    assert_error(&reply, StatusCode::GONE, "meeting_ended");

    // A bad access token is 401, not a silent guest join.
    let reply = join(
        &server,
        &members,
        Some("garbage"),
        json!({ "display_name": "X" }),
    )
    .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn waiting_room_parks_participants_but_not_the_host() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let pat = server.user("pat").await;
    let m = create(
        &server,
        &host,
        json!({ "title": "lobby", "settings": { "waiting_room": true } }),
    )
    .await;
    let g = join_guest(&server, &m, "Gus").await;
    assert_eq!(g.0, StatusCode::ACCEPTED, "{}", g.1);
    assert_eq!(g.1["status"], "waiting");
    assert_eq!(g.1["meeting_id"], m["id"]);
    assert!(g.1.get("join_token").is_none());
    let pid = g.1["participant_id"].as_str().unwrap();
    assert_eq!(participant_status(&server, &m, pid).await, "waiting");
    let p = join(&server, &m, Some(&pat.token), json!({})).await;
    assert_eq!(p.0, StatusCode::ACCEPTED);
    // Asking again while waiting keeps one waiting row, not two.
    let p = join(&server, &m, Some(&pat.token), json!({})).await;
    assert_eq!(p.0, StatusCode::ACCEPTED);
    let waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM participants WHERE meeting_id = $1 AND user_id = $2 AND status = 'waiting'",
    )
    .bind(m["id"].as_str().unwrap())
    .bind(&pat.id)
    .fetch_one(&server.server.state.store.pool)
    .await
    .unwrap();
    assert_eq!(waiting, 1);
    // Waiting does not start the meeting.
    let read = server.call(Method::GET, &path(&m, ""), None, None).await;
    assert_eq!(read.1["status"], "scheduled");
    // Once admitted (as moderation does it), a rejoin skips the waiting room.
    sqlx::query("UPDATE participants SET status = 'joined' WHERE id = $1")
        .bind(p.1["participant_id"].as_str().unwrap())
        .execute(&server.server.state.store.pool)
        .await
        .unwrap();
    let p = join(&server, &m, Some(&pat.token), json!({})).await;
    assert_eq!(p.0, StatusCode::OK, "{}", p.1);
    assert_eq!(p.1["role"], "participant");
    let read = server.call(Method::GET, &path(&m, ""), None, None).await;
    assert_eq!(read.1["status"], "live");
    // The host never waits.
    let h = join(&server, &m, Some(&host.token), json!({})).await;
    assert_eq!(h.0, StatusCode::OK, "{}", h.1);
    assert_eq!(h.1["role"], "host");
}

#[tokio::test]
async fn capacity_is_enforced_and_rejoins_keep_their_seat() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let pat = server.user("pat").await;
    let m = create(
        &server,
        &host,
        json!({ "title": "small", "settings": { "max_participants": 2 } }),
    )
    .await;
    assert_eq!(
        join(&server, &m, Some(&pat.token), json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(join_guest(&server, &m, "One").await.0, StatusCode::OK);
    let full = join_guest(&server, &m, "Two").await;
    assert_error(&full, StatusCode::CONFLICT, "meeting_full");
    // Pat reloads: the new session replaces the old one instead of needing a second seat.
    let again = join(&server, &m, Some(&pat.token), json!({})).await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.1);
    // The host is never locked out of their own meeting.
    let h = join(&server, &m, Some(&host.token), json!({})).await;
    assert_eq!(h.0, StatusCode::OK, "{}", h.1);
}

#[tokio::test]
async fn two_joins_race_for_the_last_seat() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    for round in 0..10 {
        let m = create(
            &server,
            &host,
            json!({ "title": format!("race {round}"), "settings": { "max_participants": 1 } }),
        )
        .await;
        let (a, b) = tokio::join!(join_guest(&server, &m, "A"), join_guest(&server, &m, "B"));
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}: {} / {}",
            a.1,
            b.1
        );
        let loser = if a.0 == StatusCode::CONFLICT { &a } else { &b };
        assert_error(loser, StatusCode::CONFLICT, "meeting_full");
        let seats: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM participants WHERE meeting_id = $1 AND status = 'joined'",
        )
        .bind(m["id"].as_str().unwrap())
        .fetch_one(&server.server.state.store.pool)
        .await
        .unwrap();
        assert_eq!(seats, 1, "round {round}");
    }
}

#[tokio::test]
async fn sign_up_create_join_as_guest_and_publish() {
    let server = TestServer::start().await;
    let signup = server
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({
                "email": "flow@example.test",
                "username": "flow_host",
                "display_name": "Flo",
                "password": "correct horse battery"
            })),
        )
        .await;
    assert_eq!(signup.0, StatusCode::CREATED, "{}", signup.1);
    let access = signup.1["access_token"].as_str().unwrap().to_owned();
    let created = server
        .call(
            Method::POST,
            "/meetings",
            Some(&access),
            Some(json!({ "title": "Flow", "passcode": "open-sesame" })),
        )
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
    let meeting = created.1;
    assert_eq!(meeting["host"]["display_name"], "Flo");

    let joined = join(
        &server,
        &meeting,
        None,
        json!({ "passcode": "open-sesame", "display_name": "Guest Gus" }),
    )
    .await;
    assert_eq!(joined.0, StatusCode::OK, "{}", joined.1);
    let room = joined.1["room"].as_str().unwrap().to_owned();
    let join_token = joined.1["join_token"].as_str().unwrap().to_owned();
    let publisher = WhipPublisher::connect(&server, &room, &join_token).await;
    let tracks = server
        .wait_metric("convene_published_tracks", 2.0, Duration::from_secs(5))
        .await;
    assert_eq!(tracks, 2.0);

    // Ending the meeting closes the media of everyone in it.
    let ended = server
        .call(Method::POST, &path(&meeting, "/end"), Some(&access), None)
        .await;
    assert_eq!(ended.0, StatusCode::OK, "{}", ended.1);
    let tracks = server
        .wait_metric("convene_published_tracks", 0.0, Duration::from_secs(5))
        .await;
    assert_eq!(tracks, 0.0, "ending the meeting closes its peers");
    publisher.close().await;
}

#[tokio::test]
async fn openapi_lists_the_meeting_endpoints() {
    let server = TestServer::start().await;
    let (status, doc) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = &doc["paths"];
    for (p, method) in [
        ("/meetings", "post"),
        ("/meetings", "get"),
        ("/meetings/{id}", "get"),
        ("/meetings/{id}", "patch"),
        ("/meetings/{id}", "delete"),
        ("/meetings/{id}/start", "post"),
        ("/meetings/{id}/end", "post"),
        ("/meetings/{id}/invites", "post"),
        ("/meetings/{id}/join-tokens", "post"),
        ("/meetings/{code}/join", "post"),
    ] {
        assert!(paths[p][method].is_object(), "{method} {p} missing");
    }
}

#[tokio::test]
async fn waiting_guest_claims_the_admission_with_its_wait_token() {
    let server = TestServer::start().await;
    let host = server.user("host").await;
    let meeting = create(
        &server,
        &host,
        json!({ "title": "Lobby", "settings": { "waiting_room": true } }),
    )
    .await;

    let first = join_guest(&server, &meeting, "Gail").await;
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.1);
    let participant_id = first.1["participant_id"].as_str().unwrap().to_owned();
    let wait_token = first.1["wait_token"].as_str().unwrap().to_owned();

    let still = join(&server, &meeting, None, json!({ "wait_token": wait_token })).await;
    assert_eq!(still.0, StatusCode::ACCEPTED, "still waiting: {}", still.1);
    assert_eq!(
        still.1["participant_id"],
        participant_id.as_str(),
        "the same seat, not a new one"
    );

    let admit = path(&meeting, &format!("/waiting/{participant_id}/admit"));
    let (status, body) = server
        .call(Method::POST, &admit, Some(&host.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admitted = join(&server, &meeting, None, json!({ "wait_token": wait_token })).await;
    assert_eq!(admitted.0, StatusCode::OK, "{}", admitted.1);
    assert_eq!(admitted.1["participant_id"], participant_id.as_str());
    let token = claims(&server, &admitted);
    assert_eq!(token.sub, format!("guest-{participant_id}"));
    assert_eq!(token.grants.role.as_deref(), Some("guest"));

    let second = join_guest(&server, &meeting, "Gus").await;
    let denied_id = second.1["participant_id"].as_str().unwrap().to_owned();
    let deny = path(&meeting, &format!("/waiting/{denied_id}/deny"));
    assert_eq!(
        server
            .call(Method::POST, &deny, Some(&host.token), None)
            .await
            .0,
        StatusCode::OK
    );
    let refused = join(
        &server,
        &meeting,
        None,
        json!({ "wait_token": second.1["wait_token"] }),
    )
    .await;
    common::api::assert_error(&refused, StatusCode::FORBIDDEN, "denied");

    let other = create(&server, &host, json!({ "title": "Other" })).await;
    let foreign = join(&server, &other, None, json!({ "wait_token": wait_token })).await;
    common::api::assert_error(&foreign, StatusCode::FORBIDDEN, "invalid_wait_token");
    let forged = join(
        &server,
        &meeting,
        None,
        json!({ "wait_token": "not-a-token" }),
    )
    .await;
    common::api::assert_error(&forged, StatusCode::FORBIDDEN, "invalid_wait_token");
    let access_as_wait = join(&server, &meeting, None, json!({ "wait_token": host.token })).await;
    common::api::assert_error(&access_as_wait, StatusCode::FORBIDDEN, "invalid_wait_token");
}

#[tokio::test]
async fn a_private_meetings_participant_sees_it_like_its_participants_and_messages() {
    let server = TestServer::start().await;
    let host = server.user("hana").await;
    let pat = server.user("pat").await;
    let outsider = server.user("olga").await;
    let m = create(
        &server,
        &host,
        json!({"title": "Unlisted", "access": "private"}),
    )
    .await;
    let endpoints = ["", "/participants", "/messages"];
    for tail in endpoints {
        let reply = server
            .call(Method::GET, &path(&m, tail), Some(&outsider.token), None)
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "meeting_not_found");
    }
    let joined = join(&server, &m, Some(&pat.token), json!({})).await;
    assert_eq!(joined.0, StatusCode::OK, "{}", joined.1);
    for tail in endpoints {
        let reply = server
            .call(Method::GET, &path(&m, tail), Some(&pat.token), None)
            .await;
        assert_eq!(reply.0, StatusCode::OK, "GET {tail}: {}", reply.1);
    }
}
