//! Chat history over REST: posting (who may, when, how long), reading newest first with cursor
//! pages, and messages outliving their senders.
//!
//! Meetings and participant rows are made straight through the store, so these tests do not
//! depend on the meeting and join endpoints.

mod common;

use std::collections::HashSet;

use common::api::{assert_error, TestUser};
use common::TestServer;
use convene::store::meetings::{Meeting, MeetingSettings};
use convene::store::now_ms;
use convene::store::participants::Participant;
use convene::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const MAX_LENGTH: usize = 20;

async fn start() -> TestServer {
    TestServer::start_with(|config| config.chat_max_length = MAX_LENGTH).await
}

fn store(server: &TestServer) -> &Store {
    &server.server.state.store
}

async fn meeting(server: &TestServer, host: &TestUser, access: &str, chat: bool) -> Meeting {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let now = now_ms();
    let meeting = Meeting {
        id: uuid::Uuid::now_v7().to_string(),
        code: format!("{}-{}-{}", &id[22..25], &id[25..29], &id[29..32]),
        host_id: host.id.clone(),
        title: "Chat".into(),
        description: String::new(),
        scheduled_at: None,
        duration_minutes: None,
        access: access.into(),
        passcode: None,
        settings: MeetingSettings {
            allow_guests: true,
            waiting_room: false,
            mute_on_join: false,
            video_on_join: true,
            chat,
            screen_share: true,
            recording: false,
            max_participants: 100,
        },
        status: "live".into(),
        started_at: Some(now),
        ended_at: None,
        created_at: now,
        updated_at: now,
    };
    store(server).insert_meeting(&meeting).await.unwrap();
    meeting
}

async fn seat(
    server: &TestServer,
    meeting: &Meeting,
    user: &TestUser,
    status: &str,
) -> Participant {
    let now = now_ms();
    let participant = Participant {
        id: uuid::Uuid::now_v7().to_string(),
        meeting_id: meeting.id.clone(),
        user_id: Some(user.id.clone()),
        identity: user.id.clone(),
        display_name: format!("{} (seat)", user.username),
        role: "participant".into(),
        status: status.into(),
        mic_muted: false,
        camera_off: false,
        joined_at: (status == "joined").then_some(now),
        left_at: None,
        created_at: now,
    };
    store(server).add_participant(&participant).await.unwrap();
    participant
}

async fn post(
    server: &TestServer,
    meeting: &Meeting,
    user: &TestUser,
    text: &str,
) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            &format!("/meetings/{}/messages", meeting.id),
            Some(&user.token),
            Some(json!({ "text": text })),
        )
        .await
}

async fn list(
    server: &TestServer,
    meeting: &Meeting,
    user: &TestUser,
    query: &str,
) -> (StatusCode, Value) {
    server
        .call(
            Method::GET,
            &format!("/meetings/{}/messages{query}", meeting.id),
            Some(&user.token),
            None,
        )
        .await
}

fn texts(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_read_in_pages() {
    let server = start().await;
    let (h, p) = (server.user("host").await, server.user("pat").await);
    let meeting = meeting(&server, &h, "private", true).await;
    let p_seat = seat(&server, &meeting, &p, "joined").await;

    let (status, message) = post(&server, &meeting, &p, "  hello  ").await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert_eq!(message["text"], "hello", "stored trimmed");
    assert_eq!(message["participant_id"], p_seat.id.as_str());
    assert_eq!(message["user_id"], p.id.as_str());
    assert_eq!(message["sender_name"], p_seat.display_name.as_str());
    assert!(message["created_at"].as_str().unwrap().ends_with('Z'));
    // The host writes without a seat: their account's name, no participant.
    let (status, message) = post(&server, &meeting, &h, "welcome").await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert!(message["participant_id"].is_null());
    assert_eq!(message["sender_name"], "host");
    for text in ["three", "four", "five"] {
        assert_eq!(
            post(&server, &meeting, &p, text).await.0,
            StatusCode::CREATED
        );
    }
    let newest_first = ["five", "four", "three", "welcome", "hello"];

    let (status, all) = list(&server, &meeting, &h, "").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(texts(&all), newest_first);
    assert!(all["next_before"].is_null());

    let mut seen = Vec::new();
    let mut ids = HashSet::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = list(&server, &meeting, &p, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        for item in items {
            assert!(
                ids.insert(item["id"].as_str().unwrap().to_owned()),
                "seen twice: {item}"
            );
        }
        seen.extend(texts(&page));
        match page["next_before"].as_str() {
            Some(before) => {
                assert_eq!(before, items.last().unwrap()["id"].as_str().unwrap());
                query = format!("?limit=2&before={before}");
            }
            None => break,
        }
        assert!(pages < 5, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_and_queries() {
    let server = start().await;
    let (h, p) = (server.user("host").await, server.user("pat").await);
    let meeting = meeting(&server, &h, "private", true).await;
    seat(&server, &meeting, &p, "joined").await;

    for text in ["", "   \n\t ", &"x".repeat(MAX_LENGTH + 1)] {
        let result = post(&server, &meeting, &p, text).await;
        assert_error(
            &result,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(result.1["error"]["details"]["fields"][0]["field"], "text");
    }
    // The limit counts characters, not bytes; surrounding space does not count.
    let longest = "é".repeat(MAX_LENGTH);
    let (status, body) = post(&server, &meeting, &p, &format!(" {longest} ")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["text"], longest.as_str());
    // A body without text is a 422 too.
    let missing = server
        .call(
            Method::POST,
            &format!("/meetings/{}/messages", meeting.id),
            Some(&p.token),
            Some(json!({})),
        )
        .await;
    assert_error(
        &missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );

    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=ten", "limit"),
        ("?before=not-an-id", "before"),
    ] {
        let result = list(&server, &meeting, &p, query).await;
        assert_error(
            &result,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(
            result.1["error"]["details"]["fields"][0]["field"], field,
            "{query}"
        );
    }
    let (status, page) = list(&server, &meeting, &p, "?limit=200").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_disabled_refuses_posts() {
    let server = start().await;
    let (h, p) = (server.user("host").await, server.user("pat").await);
    let meeting = meeting(&server, &h, "private", false).await;
    seat(&server, &meeting, &p, "joined").await;
    for user in [&p, &h] {
        assert_error(
            &post(&server, &meeting, user, "hi").await,
            StatusCode::FORBIDDEN,
            "chat_disabled",
        );
    }
    let (status, page) = list(&server, &meeting, &p, "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"], json!([]));
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE meeting_id = $1")
        .bind(&meeting.id)
        .fetch_one(&store(&server).pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_read_and_write() {
    let server = start().await;
    let h = server.user("host").await;
    let waiting = server.user("waiting").await;
    let invitee = server.user("invitee").await;
    let by_email = server.user("emailed").await;
    let outsider = server.user("outsider").await;
    let private = meeting(&server, &h, "invite_only", true).await;
    seat(&server, &private, &waiting, "waiting").await;
    assert_eq!(
        post(&server, &private, &h, "for the invited").await.0,
        StatusCode::CREATED
    );
    for (user_id, email) in [
        (Some(invitee.id.clone()), None),
        (None, Some(by_email.email.to_uppercase())),
    ] {
        sqlx::query(
            "INSERT INTO meeting_invites (id, meeting_id, user_id, email, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&private.id)
        .bind(user_id)
        .bind(email)
        .bind(now_ms())
        .execute(&store(&server).pool)
        .await
        .unwrap();
    }

    // Invitees read, but write only once they have joined.
    for user in [&invitee, &by_email] {
        let (status, page) = list(&server, &private, user, "").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(texts(&page), ["for the invited"]);
        assert_error(
            &post(&server, &private, user, "me too").await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    // Waiting is not being in the meeting (nor being invited): an invite-only meeting stays
    // hidden from them, as from any outsider.
    for user in [&waiting, &outsider] {
        for result in [
            list(&server, &private, user, "").await,
            post(&server, &private, user, "hi").await,
        ] {
            assert_error(&result, StatusCode::NOT_FOUND, "meeting_not_found");
        }
    }
    // A public meeting is visible, but its chat is for those in it.
    let public = meeting(&server, &h, "public", true).await;
    seat(&server, &public, &waiting, "waiting").await;
    for user in [&waiting, &outsider] {
        for result in [
            list(&server, &public, user, "").await,
            post(&server, &public, user, "hi").await,
        ] {
            assert_error(&result, StatusCode::FORBIDDEN, "forbidden");
        }
    }
    let unknown = server
        .call(
            Method::GET,
            &format!("/meetings/{}/messages", uuid::Uuid::now_v7()),
            Some(&h.token),
            None,
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "meeting_not_found");
    let anonymous = server
        .call(
            Method::GET,
            &format!("/meetings/{}/messages", public.id),
            None,
            None,
        )
        .await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_outlive_everyone_leaving() {
    let server = start().await;
    let (h, p) = (server.user("host").await, server.user("pat").await);
    let meeting = meeting(&server, &h, "private", true).await;
    let p_seat = seat(&server, &meeting, &p, "joined").await;
    let (status, sent) = post(&server, &meeting, &p, "remember me").await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");

    // Everyone leaves and the meeting ends.
    let now = now_ms();
    sqlx::query("UPDATE participants SET status = 'left', left_at = $1 WHERE meeting_id = $2")
        .bind(now)
        .bind(&meeting.id)
        .execute(&store(&server).pool)
        .await
        .unwrap();
    sqlx::query("UPDATE meetings SET status = 'ended', ended_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&meeting.id)
        .execute(&store(&server).pool)
        .await
        .unwrap();

    let (status, page) = list(&server, &meeting, &h, "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let item = &page["items"][0];
    assert_eq!(item["id"], sent["id"]);
    assert_eq!(item["text"], "remember me");
    assert_eq!(item["participant_id"], p_seat.id.as_str());
    assert_eq!(item["sender_name"], p_seat.display_name.as_str());
    // P left the private meeting: it is no longer theirs to read or write.
    assert_error(
        &post(&server, &meeting, &p, "again").await,
        StatusCode::NOT_FOUND,
        "meeting_not_found",
    );
}
