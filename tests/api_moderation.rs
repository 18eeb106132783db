//! Participants and moderation over REST: the authorization matrix (who may do what to whom, in
//! their own meeting and in another's), kick/ban, mute, role changes, the waiting room, the
//! participant list, recordings, stats, and one media test showing mute and kick reach the SFU.
//!
//! Meetings and participant rows are made straight through the store, so these tests do not
//! depend on the meeting and join endpoints.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::api::{assert_error, TestUser};
use common::client::{Kind, WhepSubscriber, WhipPublisher};
use common::TestServer;
use convene::store::meetings::{Meeting, MeetingSettings};
use convene::store::now_ms;
use convene::store::participants::Participant;
use convene::store::recordings::Recording;
use convene::store::Store;
use rand::RngCore;
use reqwest::{Method, StatusCode};
use rtc::peer_connection::transport::RTCDtlsTransportState;
use serde_json::{json, Value};

const MINUTE: i64 = 60_000;

fn store(server: &TestServer) -> &Store {
    &server.server.state.store
}

/// A meeting hosted by `host`, made through the store. `access`: public, private, invite_only.
async fn meeting(server: &TestServer, host: &TestUser, access: &str) -> Meeting {
    let id = uuid::Uuid::now_v7().simple().to_string();
    // The random tail of a UUIDv7; its head is the clock, the same for meetings made together.
    let code = format!("{}-{}-{}", &id[22..25], &id[25..29], &id[29..32]);
    let now = now_ms();
    let meeting = Meeting {
        id: uuid::Uuid::now_v7().to_string(),
        code,
        host_id: host.id.clone(),
        title: "Moderation".into(),
        description: String::new(),
        scheduled_at: None,
        duration_minutes: None,
        access: access.into(),
        passcode: None,
        settings: MeetingSettings {
            allow_guests: true,
            waiting_room: true,
            mute_on_join: false,
            video_on_join: true,
            chat: true,
            screen_share: true,
            recording: true,
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

/// A participant row of `meeting`: for `user`, or a guest (identity `guest-<id>`) when `None`.
async fn seat(
    server: &TestServer,
    meeting: &Meeting,
    user: Option<&TestUser>,
    role: &str,
    status: &str,
) -> Participant {
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms();
    let participant = Participant {
        identity: user
            .map(|u| u.id.clone())
            .unwrap_or_else(|| format!("guest-{id}")),
        id,
        meeting_id: meeting.id.clone(),
        user_id: user.map(|u| u.id.clone()),
        display_name: user
            .map(|u| u.username.clone())
            .unwrap_or_else(|| "Guest".into()),
        role: role.into(),
        status: status.into(),
        mic_muted: false,
        camera_off: false,
        joined_at: (status != "waiting").then_some(now),
        left_at: None,
        created_at: now,
    };
    store(server).add_participant(&participant).await.unwrap();
    participant
}

/// Rows of `identity` in the ban list of a meeting.
async fn bans(server: &TestServer, meeting_id: &str, identity: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM bans WHERE meeting_id = $1 AND identity = $2")
        .bind(meeting_id)
        .bind(identity)
        .fetch_one(&store(server).pool)
        .await
        .unwrap()
}

async fn row(server: &TestServer, p: &Participant) -> Participant {
    store(server)
        .participant(&p.meeting_id, &p.id)
        .await
        .unwrap()
}

/// The cast: host H, moderator M, participant P, an outsider O and the host X of another
/// meeting.
struct Cast {
    h: TestUser,
    m: TestUser,
    p: TestUser,
    o: TestUser,
    x: TestUser,
}

impl Cast {
    async fn new(server: &TestServer) -> Self {
        Self {
            h: server.user("host").await,
            m: server.user("moderator").await,
            p: server.user("participant").await,
            o: server.user("outsider").await,
            x: server.user("other_host").await,
        }
    }
}

/// One meeting with every kind of participant row, fresh for each case.
struct Room {
    meeting: Meeting,
    host_seat: Participant,
    m: Participant,
    p: Participant,
    g: Participant,
    w: Participant,
}

impl Room {
    async fn new(server: &TestServer, cast: &Cast, host: &TestUser, access: &str) -> Self {
        let meeting = meeting(server, host, access).await;
        let host_seat = seat(server, &meeting, Some(host), "host", "joined").await;
        let m = seat(server, &meeting, Some(&cast.m), "moderator", "joined").await;
        let p = seat(server, &meeting, Some(&cast.p), "participant", "joined").await;
        let g = seat(server, &meeting, None, "guest", "joined").await;
        let w = seat(server, &meeting, None, "guest", "waiting").await;
        Self {
            meeting,
            host_seat,
            m,
            p,
            g,
            w,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Caller {
    Host,
    Moderator,
    Participant,
    Outsider,
    /// H, acting in a (public) meeting hosted by someone else.
    HostOfOtherMeeting,
}

#[derive(Debug, Clone, Copy)]
enum Act {
    MuteP,
    KickP,
    PromoteP,
    AdmitW,
    DenyW,
    ListWaiting,
    Stats,
    Recordings,
    KickHost,
    MuteModerator,
}

impl Act {
    /// The request, and the row it would change (checked untouched when refused).
    fn request(self, room: &Room) -> (Method, String, Option<Value>, Option<&Participant>) {
        let base = format!("/meetings/{}", room.meeting.id);
        match self {
            Act::MuteP => (
                Method::POST,
                format!("{base}/participants/{}/mute", room.p.id),
                Some(json!({"source": "microphone"})),
                Some(&room.p),
            ),
            Act::KickP => (
                Method::POST,
                format!("{base}/participants/{}/kick", room.p.id),
                Some(json!({})),
                Some(&room.p),
            ),
            Act::PromoteP => (
                Method::PATCH,
                format!("{base}/participants/{}", room.p.id),
                Some(json!({"role": "moderator"})),
                Some(&room.p),
            ),
            Act::AdmitW => (
                Method::POST,
                format!("{base}/waiting/{}/admit", room.w.id),
                None,
                Some(&room.w),
            ),
            Act::DenyW => (
                Method::POST,
                format!("{base}/waiting/{}/deny", room.w.id),
                None,
                Some(&room.w),
            ),
            Act::ListWaiting => (Method::GET, format!("{base}/waiting"), None, None),
            Act::Stats => (Method::GET, format!("{base}/stats"), None, None),
            Act::Recordings => (Method::GET, format!("{base}/recordings"), None, None),
            Act::KickHost => (
                Method::POST,
                format!("{base}/participants/{}/kick", room.host_seat.id),
                Some(json!({"ban": true})),
                Some(&room.host_seat),
            ),
            Act::MuteModerator => (
                Method::POST,
                format!("{base}/participants/{}/mute", room.m.id),
                Some(json!({"source": "camera"})),
                Some(&room.m),
            ),
        }
    }
}

const ACTS: [Act; 10] = [
    Act::MuteP,
    Act::KickP,
    Act::PromoteP,
    Act::AdmitW,
    Act::DenyW,
    Act::ListWaiting,
    Act::Stats,
    Act::Recordings,
    Act::KickHost,
    Act::MuteModerator,
];

/// Expected status per action, in the order of [`ACTS`].
fn expected(caller: Caller) -> [u16; 10] {
    match caller {
        //                       mute kick prom admit deny wait stats recs kickH muteM
        Caller::Host => [200, 200, 200, 200, 200, 200, 200, 200, 403, 200],
        Caller::Moderator => [200, 200, 403, 200, 200, 200, 200, 200, 403, 403],
        Caller::Participant => [403; 10],
        // The main meeting is private: an outsider cannot tell it exists.
        Caller::Outsider => [404; 10],
        // The other meeting is public: visible, but H has no role in it.
        Caller::HostOfOtherMeeting => [403; 10],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let mut failures = Vec::new();
    for caller in [
        Caller::Host,
        Caller::Moderator,
        Caller::Participant,
        Caller::Outsider,
        Caller::HostOfOtherMeeting,
    ] {
        let (token, host, access) = match caller {
            Caller::Host => (&cast.h.token, &cast.h, "private"),
            Caller::Moderator => (&cast.m.token, &cast.h, "private"),
            Caller::Participant => (&cast.p.token, &cast.h, "private"),
            Caller::Outsider => (&cast.o.token, &cast.h, "private"),
            Caller::HostOfOtherMeeting => (&cast.h.token, &cast.x, "public"),
        };
        for (act, want) in ACTS.iter().zip(expected(caller)) {
            // Fresh rows per case, so no action sees another's effects.
            // In X's meeting, M and P hold their usual seats, the host seat is X's and H has
            // none.
            let room = Room::new(&server, &cast, host, access).await;
            let (method, path, body, target) = act.request(&room);
            let before = match target {
                Some(t) => Some(row(&server, t).await),
                None => None,
            };
            let result = server.call(method, &path, Some(token), body).await;
            if result.0.as_u16() != want {
                failures.push(format!(
                    "{caller:?} {act:?}: expected {want}, got {} {}",
                    result.0, result.1
                ));
                continue;
            }
            match want {
                403 => assert_error(&result, StatusCode::FORBIDDEN, "forbidden"),
                404 => assert_error(&result, StatusCode::NOT_FOUND, "meeting_not_found"),
                _ => {}
            }
            if let (Some(target), Some(before)) = (target, before) {
                let after = row(&server, target).await;
                let changed = after != before;
                if changed != (want == 200) {
                    failures.push(format!(
                        "{caller:?} {act:?}: answered {want} but the row {} changed",
                        if changed { "was" } else { "was not" }
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_an_access_token() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "public").await;
    let path = format!("/meetings/{}/participants", room.meeting.id);
    assert_error(
        &server.call(Method::GET, &path, None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &server
            .call(Method::GET, &path, Some("not-a-token"), None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let unknown = format!("/meetings/{}/participants", uuid::Uuid::now_v7());
    assert_error(
        &server
            .call(Method::GET, &unknown, Some(&cast.h.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "meeting_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_with_ban_closes_every_seat_of_the_identity() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "private").await;
    // A second live seat of P (another tab): the kick ends it too.
    let second = seat(
        &server,
        &room.meeting,
        Some(&cast.p),
        "participant",
        "joined",
    )
    .await;
    let base = format!("/meetings/{}/participants", room.meeting.id);

    let (status, body) = server
        .call(
            Method::POST,
            &format!("{base}/{}/kick", room.p.id),
            Some(&cast.m.token),
            Some(json!({"ban": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], room.p.id.as_str());
    assert_eq!(body["status"], "kicked");
    assert!(body["left_at"].is_string(), "{body}");
    assert_eq!(row(&server, &second).await.status, "kicked");
    assert_eq!(bans(&server, &room.meeting.id, &room.p.identity).await, 1);

    // Kicked P no longer has a role: they may not even list the participants.
    assert_error(
        &server
            .call(Method::GET, &base, Some(&cast.p.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "meeting_not_found",
    );

    // Banning again is not an error; a kick without ban bans nobody.
    let again = server
        .call(
            Method::POST,
            &format!("{base}/{}/kick", room.p.id),
            Some(&cast.h.token),
            Some(json!({"ban": true})),
        )
        .await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.1);
    assert_eq!(bans(&server, &room.meeting.id, &room.p.identity).await, 1);
    let guest = server
        .call(
            Method::POST,
            &format!("{base}/{}/kick", room.g.id),
            Some(&cast.h.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(guest.0, StatusCode::OK, "{}", guest.1);
    assert_eq!(guest.1["status"], "kicked");
    assert_eq!(bans(&server, &room.meeting.id, &room.g.identity).await, 0);

    // Unknown participant, and a participant of another meeting: 404.
    let other = Room::new(&server, &cast, &cast.x, "public").await;
    for pid in [uuid::Uuid::now_v7().to_string(), other.p.id.clone()] {
        assert_error(
            &server
                .call(
                    Method::POST,
                    &format!("{base}/{pid}/kick"),
                    Some(&cast.h.token),
                    Some(json!({})),
                )
                .await,
            StatusCode::NOT_FOUND,
            "participant_not_found",
        );
    }
    assert_eq!(row(&server, &other.p).await.status, "joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_sets_the_flags() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "private").await;
    let path = format!(
        "/meetings/{}/participants/{}/mute",
        room.meeting.id, room.g.id
    );

    let (status, body) = server
        .call(
            Method::POST,
            &path,
            Some(&cast.m.token),
            Some(json!({"source": "microphone"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["mic_muted"].clone(), body["camera_off"].clone()),
        (json!(true), json!(false))
    );
    let stored = row(&server, &room.g).await;
    assert!(stored.mic_muted && !stored.camera_off);

    let (status, body) = server
        .call(
            Method::POST,
            &path,
            Some(&cast.h.token),
            Some(json!({"source": "camera"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["mic_muted"].clone(), body["camera_off"].clone()),
        (json!(true), json!(true))
    );
    let stored = row(&server, &room.g).await;
    assert!(stored.mic_muted && stored.camera_off);

    let screen_path = format!(
        "/meetings/{}/participants/{}/mute",
        room.meeting.id, room.p.id
    );
    let (status, body) = server
        .call(
            Method::POST,
            &screen_path,
            Some(&cast.h.token),
            Some(json!({"source": "screen"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["camera_off"], true);
    assert_eq!(body["mic_muted"], false);

    let bad = server
        .call(
            Method::POST,
            &path,
            Some(&cast.h.token),
            Some(json!({"source": "speaker"})),
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(bad.1["error"]["details"]["fields"][0]["field"], "source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_changes_roles() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "private").await;
    let path = |p: &Participant| format!("/meetings/{}/participants/{}", room.meeting.id, p.id);
    let waiting = format!("/meetings/{}/waiting", room.meeting.id);

    // P may not run the waiting room, until promoted.
    assert_error(
        &server
            .call(Method::GET, &waiting, Some(&cast.p.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, body) = server
        .call(
            Method::PATCH,
            &path(&room.p),
            Some(&cast.h.token),
            Some(json!({"role": "moderator"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "moderator");
    assert_eq!(row(&server, &room.p).await.role, "moderator");
    let (status, body) = server
        .call(Method::GET, &waiting, Some(&cast.p.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Demote M to guest: M loses moderation.
    let (status, body) = server
        .call(
            Method::PATCH,
            &path(&room.m),
            Some(&cast.h.token),
            Some(json!({"role": "guest"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(row(&server, &room.m).await.role, "guest");
    assert_error(
        &server
            .call(Method::GET, &waiting, Some(&cast.m.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    for role in ["host", "boss", ""] {
        let result = server
            .call(
                Method::PATCH,
                &path(&room.g),
                Some(&cast.h.token),
                Some(json!({ "role": role })),
            )
            .await;
        assert_error(
            &result,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(result.1["error"]["details"]["fields"][0]["field"], "role");
    }
    assert_eq!(row(&server, &room.g).await.role, "guest");
    // Not on the host's own seat.
    assert_error(
        &server
            .call(
                Method::PATCH,
                &path(&room.host_seat),
                Some(&cast.h.token),
                Some(json!({"role": "guest"})),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(row(&server, &room.host_seat).await.role, "host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_room_admit_and_deny() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "private").await;
    let second = seat(
        &server,
        &room.meeting,
        Some(&cast.o),
        "participant",
        "waiting",
    )
    .await;
    let base = format!("/meetings/{}/waiting", room.meeting.id);

    let (status, body) = server
        .call(Method::GET, &base, Some(&cast.m.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [room.w.id.as_str(), second.id.as_str()]);
    assert!(body["items"][0]["joined_at"].is_null());

    let (status, body) = server
        .call(
            Method::POST,
            &format!("{base}/{}/admit", room.w.id),
            Some(&cast.m.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "joined");
    assert!(body["joined_at"].is_string());
    let admitted = row(&server, &room.w).await;
    assert_eq!(admitted.status, "joined");
    assert!(admitted.joined_at.is_some());
    for action in ["admit", "deny"] {
        assert_error(
            &server
                .call(
                    Method::POST,
                    &format!("{base}/{}/{action}", room.w.id),
                    Some(&cast.h.token),
                    None,
                )
                .await,
            StatusCode::CONFLICT,
            "not_waiting",
        );
    }

    let (status, body) = server
        .call(
            Method::POST,
            &format!("{base}/{}/deny", second.id),
            Some(&cast.h.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "denied");
    assert!(body["left_at"].is_string());
    assert_eq!(row(&server, &second).await.status, "denied");
    assert_error(
        &server
            .call(
                Method::POST,
                &format!("{base}/{}/admit", second.id),
                Some(&cast.h.token),
                None,
            )
            .await,
        StatusCode::CONFLICT,
        "not_waiting",
    );
    // A denied outsider still has no role.
    assert_error(
        &server
            .call(Method::GET, &base, Some(&cast.o.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "meeting_not_found",
    );
    // A joined participant is not waiting either; an unknown one is not found.
    assert_error(
        &server
            .call(
                Method::POST,
                &format!("{base}/{}/admit", room.p.id),
                Some(&cast.h.token),
                None,
            )
            .await,
        StatusCode::CONFLICT,
        "not_waiting",
    );
    assert_error(
        &server
            .call(
                Method::POST,
                &format!("{base}/{}/admit", uuid::Uuid::now_v7()),
                Some(&cast.h.token),
                None,
            )
            .await,
        StatusCode::NOT_FOUND,
        "participant_not_found",
    );
    let (_, body) = server
        .call(Method::GET, &base, Some(&cast.h.token), None)
        .await;
    assert_eq!(body["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_list_present_and_past() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "private").await;
    // O was here earlier and left.
    let mut earlier = seat(
        &server,
        &room.meeting,
        Some(&cast.o),
        "participant",
        "joined",
    )
    .await;
    sqlx::query("UPDATE participants SET status = 'left', left_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(&earlier.id)
        .execute(&store(&server).pool)
        .await
        .unwrap();
    earlier.status = "left".into();
    let base = format!("/meetings/{}/participants", room.meeting.id);

    // Any role in the meeting may list; by code as well as by id.
    for (token, path) in [
        (&cast.p.token, base.clone()),
        (
            &cast.h.token,
            format!("/meetings/{}/participants", room.meeting.code),
        ),
    ] {
        let (status, body) = server.call(Method::GET, &path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 6);
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), 6);
        let guest = items
            .iter()
            .find(|p| p["id"] == room.g.id.as_str())
            .unwrap();
        assert!(guest["user_id"].is_null());
        assert_eq!(guest["identity"], room.g.identity.as_str());
        assert_eq!(guest["role"], "guest");
        assert_eq!(guest["mic_muted"], false);
        assert!(guest["joined_at"].as_str().unwrap().ends_with('Z'));
    }

    let (status, body) = server
        .call(
            Method::GET,
            &format!("{base}?status=left"),
            Some(&cast.h.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1);
    assert_eq!(body["items"][0]["id"], earlier.id.as_str());
    assert!(body["items"][0]["left_at"].is_string());
    let (_, body) = server
        .call(
            Method::GET,
            &format!("{base}?status=waiting"),
            Some(&cast.h.token),
            None,
        )
        .await;
    assert_eq!(body["items"][0]["id"], room.w.id.as_str());

    assert_error(
        &server
            .call(
                Method::GET,
                &format!("{base}?status=gone"),
                Some(&cast.h.token),
                None,
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // O left: no role any more, and the meeting is private.
    assert_error(
        &server
            .call(Method::GET, &base, Some(&cast.o.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "meeting_not_found",
    );
    // A public meeting is visible to O, but O has no role in it.
    let public = Room::new(&server, &cast, &cast.x, "public").await;
    assert_error(
        &server
            .call(
                Method::GET,
                &format!("/meetings/{}/participants", public.meeting.id),
                Some(&cast.o.token),
                None,
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_listed_for_moderators() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "private").await;
    let path = format!("/meetings/{}/recordings", room.meeting.id);

    let (status, body) = server
        .call(Method::GET, &path, Some(&cast.h.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"], json!([]));

    let started = now_ms() - 10 * MINUTE;
    let recording = Recording {
        id: uuid::Uuid::now_v7().to_string(),
        meeting_id: room.meeting.id.clone(),
        status: "ready".into(),
        path: Some("/secret/place.webm".into()),
        size_bytes: Some(123_456),
        duration_ms: Some(5 * MINUTE),
        started_at: Some(started),
        ended_at: Some(started + 5 * MINUTE),
        created_at: started,
        audio_only: false,
        reason: None,
        started_by: None,
    };
    store(&server).insert_recording(&recording).await.unwrap();

    let (status, body) = server
        .call(Method::GET, &path, Some(&cast.m.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let item = &body["items"][0];
    assert_eq!(item["id"], recording.id.as_str());
    assert_eq!(item["status"], "ready");
    assert_eq!(item["size_bytes"], 123_456);
    assert_eq!(item["duration_ms"], 5 * MINUTE);
    assert!(item["started_at"].is_string() && item["ended_at"].is_string());
    assert!(
        item.get("path").is_none(),
        "file paths stay private: {item}"
    );

    assert_error(
        &server
            .call(Method::GET, &path, Some(&cast.p.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_from_crafted_rows() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let mut meeting = meeting(&server, &cast.h, "private").await;
    // A meeting that ran for 50 minutes and ended, so every number is fixed.
    let start = now_ms() - 120 * MINUTE;
    sqlx::query(
        "UPDATE meetings SET started_at = $1, ended_at = $2, status = 'ended' WHERE id = $3",
    )
    .bind(start)
    .bind(start + 50 * MINUTE)
    .bind(&meeting.id)
    .execute(&store(&server).pool)
    .await
    .unwrap();
    meeting.started_at = Some(start);
    let interval = |identity: &str, from: i64, to: i64| Participant {
        id: uuid::Uuid::now_v7().to_string(),
        meeting_id: meeting.id.clone(),
        user_id: None,
        identity: identity.into(),
        display_name: identity.into(),
        role: "guest".into(),
        status: "left".into(),
        mic_muted: false,
        camera_off: false,
        joined_at: Some(start + from * MINUTE),
        left_at: Some(start + to * MINUTE),
        created_at: start + from * MINUTE,
    };
    // A and B overlap, B and C overlap, A and C do not: the peak is 2. A comes back later.
    for row in [
        interval("guest-a", 0, 20),
        interval("guest-b", 10, 30),
        interval("guest-c", 25, 40),
        interval("guest-a", 45, 50),
    ] {
        store(&server).add_participant(&row).await.unwrap();
    }
    // Waited and was never admitted: counts for nothing.
    seat(&server, &meeting, None, "guest", "waiting").await;
    // M's seat, joined as the meeting ended: an empty interval, yet M was there.
    let m_seat = seat(&server, &meeting, Some(&cast.m), "moderator", "joined").await;
    sqlx::query("UPDATE participants SET joined_at = $1 WHERE id = $2")
        .bind(start + 50 * MINUTE)
        .bind(&m_seat.id)
        .execute(&store(&server).pool)
        .await
        .unwrap();
    for text in ["one", "two"] {
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/meetings/{}/messages", meeting.id),
                Some(&cast.h.token),
                Some(json!({ "text": text })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    let path = format!("/meetings/{}/stats", meeting.id);
    let (status, stats) = server
        .call(Method::GET, &path, Some(&cast.m.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["participants_total"], 4, "{stats}");
    assert_eq!(stats["peak_concurrent"], 2, "{stats}");
    // 20 + 20 + 15 + 5 minutes.
    assert_eq!(
        stats["total_participant_minutes"].as_f64(),
        Some(60.0),
        "{stats}"
    );
    assert_eq!(
        stats["average_duration_seconds"].as_f64(),
        Some(900.0),
        "{stats}"
    );
    assert_eq!(stats["duration_seconds"], 50 * 60, "{stats}");
    assert_eq!(stats["messages_total"], 2, "{stats}");

    assert_error(
        &server
            .call(Method::GET, &path, Some(&cast.o.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "meeting_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_meeting_that_never_started() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let meeting = meeting(&server, &cast.h, "public").await;
    sqlx::query("UPDATE meetings SET started_at = NULL, status = 'scheduled' WHERE id = $1")
        .bind(&meeting.id)
        .execute(&store(&server).pool)
        .await
        .unwrap();
    let (status, stats) = server
        .call(
            Method::GET,
            &format!("/meetings/{}/stats", meeting.id),
            Some(&cast.h.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        stats,
        json!({
            "participants_total": 0,
            "peak_concurrent": 0,
            "total_participant_minutes": 0.0,
            "average_duration_seconds": 0.0,
            "duration_seconds": 0,
            "messages_total": 0
        })
    );
}

// ---- media: mute and kick reach the SFU ------------------------------------------------------

fn random_payload(len: usize) -> Bytes {
    let mut payload = vec![0u8; len];
    rand::rng().fill_bytes(&mut payload);
    Bytes::from(payload)
}

/// Sends `count` audio and video packets from sequence `first`, paced; returns the payloads.
async fn send_media(publisher: &WhipPublisher, first: u16, count: u16) -> (Vec<Bytes>, Vec<Bytes>) {
    let (mut audio, mut video) = (Vec::new(), Vec::new());
    for sequence in first..first + count {
        let (a, v) = (random_payload(100), random_payload(900));
        publisher.send(Kind::Audio, sequence, a.clone()).await;
        publisher.send(Kind::Video, sequence, v.clone()).await;
        audio.push(a);
        video.push(v);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (audio, video)
}

fn arrived(subscriber: &WhepSubscriber, kind: Kind, sent: &[Bytes]) -> usize {
    let received: HashSet<Bytes> = subscriber.payloads(kind).into_iter().collect();
    sent.iter().filter(|p| received.contains(*p)).count()
}

/// The server closed the publisher: its DTLS transport closed (close_notify), or its ICE gave
/// up because the server stopped answering.
async fn publisher_closed(publisher: &WhipPublisher) -> &'static str {
    let dtls_closed = async {
        loop {
            for sender in publisher.peer.pc.get_senders().await {
                if let Ok(Some(transport)) = sender.transport().await {
                    if transport.state().await.ok() == Some(RTCDtlsTransportState::Closed) {
                        return "dtls closed";
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        how = dtls_closed => how,
        _ = publisher.peer.connection_lost() => "connection lost",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mute_and_kick_reach_the_media() {
    let server = TestServer::start().await;
    let cast = Cast::new(&server).await;
    let room = Room::new(&server, &cast, &cast.h, "private").await;
    let room_name = room.meeting.id.as_str();
    let publisher = WhipPublisher::connect(
        &server,
        room_name,
        &server.token(room_name, &room.p.identity, true, false),
    )
    .await;
    let subscriber = WhepSubscriber::connect(
        &server,
        room_name,
        &server.token(room_name, "watcher", false, true),
        None,
    )
    .await;
    let within = Duration::from_secs(10);

    let (audio, video) = send_media(&publisher, 0, 50).await;
    subscriber.wait_packets(Kind::Audio, 45, within).await;
    subscriber.wait_packets(Kind::Video, 45, within).await;
    assert!(
        arrived(&subscriber, Kind::Audio, &audio) >= 45,
        "audio before the mute"
    );
    assert!(
        arrived(&subscriber, Kind::Video, &video) >= 45,
        "video before the mute"
    );

    let base = format!("/meetings/{}/participants/{}", room.meeting.id, room.p.id);
    let (status, body) = server
        .call(
            Method::POST,
            &format!("{base}/mute"),
            Some(&cast.h.token),
            Some(json!({"source": "microphone"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["mic_muted"], true);

    let video_before = subscriber.payloads(Kind::Video).len();
    let (audio, video) = send_media(&publisher, 50, 50).await;
    subscriber
        .wait_packets(Kind::Video, video_before + 45, within)
        .await;
    // Audio sent with the video would have arrived by now; give stragglers a moment anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        arrived(&subscriber, Kind::Video, &video) >= 45,
        "video after the mute"
    );
    assert_eq!(
        arrived(&subscriber, Kind::Audio, &audio),
        0,
        "audio still forwarded after the mute"
    );

    assert!(
        tokio::time::timeout(Duration::from_millis(300), publisher_closed(&publisher))
            .await
            .is_err(),
        "the publisher's connection was closed before the kick"
    );
    let peers = server.metric("convene_peers").await;
    assert_eq!(peers, 2.0);
    let (status, body) = server
        .call(
            Method::POST,
            &format!("{base}/kick"),
            Some(&cast.h.token),
            Some(json!({"ban": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "kicked");
    let kicked_at = std::time::Instant::now();
    let how = tokio::time::timeout(within, publisher_closed(&publisher))
        .await
        .expect("the server did not close the kicked publisher's connection");
    println!(
        "publisher closed ({how}) {:?} after the kick",
        kicked_at.elapsed()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut after = server.metric("convene_peers").await;
    while after >= peers && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = server.metric("convene_peers").await;
    }
    assert!(after < peers, "convene_peers stayed at {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_these_routes() {
    let server = TestServer::start().await;
    let (status, doc) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for (path, method) in [
        ("/meetings/{id}/participants", "get"),
        ("/meetings/{id}/participants/{pid}", "patch"),
        ("/meetings/{id}/participants/{pid}/kick", "post"),
        ("/meetings/{id}/participants/{pid}/mute", "post"),
        ("/meetings/{id}/waiting", "get"),
        ("/meetings/{id}/waiting/{pid}/admit", "post"),
        ("/meetings/{id}/waiting/{pid}/deny", "post"),
        ("/meetings/{id}/messages", "get"),
        ("/meetings/{id}/messages", "post"),
        ("/meetings/{id}/recordings", "get"),
        ("/meetings/{id}/stats", "get"),
    ] {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        assert!(
            operation["security"].is_array(),
            "{method} {path} does not declare its bearer auth"
        );
    }
    for schema in [
        "ParticipantInfo",
        "ChatMessage",
        "MessagePage",
        "MeetingStats",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}
