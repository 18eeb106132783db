//! The storage conformance suite: every test runs against SQLite, and against PostgreSQL too
//! when `DATABASE_URL` is set (CI sets it), so both backends are held to the same behaviour.

mod common;

use std::future::Future;

use convene::store::meetings::{Meeting, MeetingSettings};
use convene::store::participants::Participant;
use convene::store::users::NewUser;
use convene::store::{now_ms, Backend, Store, StoreError};

/// Runs `body` on a fresh SQLite store, then on a fresh PostgreSQL schema if configured.
async fn for_each_backend<F, Fut>(body: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = common::TempDir::new();
    let sqlite = Store::connect("", &dir.0).await.expect("sqlite store");
    assert_eq!(sqlite.backend, Backend::Sqlite);
    body(sqlite).await;
    if let Some(schema) = common::PgSchema::create().await {
        let postgres = Store::connect(&schema.url, &dir.0)
            .await
            .expect("postgres store");
        assert_eq!(postgres.backend, Backend::Postgres);
        body(postgres).await;
    }
}

async fn user(store: &Store, name: &str) -> convene::store::users::User {
    store
        .insert_user(NewUser {
            email: &format!("{name}@Example.test"),
            username: name,
            display_name: name,
            password_hash: "x",
        })
        .await
        .unwrap()
}

fn meeting(host: &str, code: &str) -> Meeting {
    let now = now_ms();
    Meeting {
        id: convene::store::new_id(),
        code: code.to_owned(),
        host_id: host.to_owned(),
        title: "Weekly".into(),
        description: String::new(),
        scheduled_at: None,
        duration_minutes: Some(30),
        access: "public".into(),
        passcode: None,
        settings: MeetingSettings {
            allow_guests: true,
            waiting_room: false,
            mute_on_join: true,
            video_on_join: false,
            chat: true,
            screen_share: true,
            recording: false,
            max_participants: 10,
        },
        status: "scheduled".into(),
        started_at: None,
        ended_at: None,
        created_at: now,
        updated_at: now,
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    for_each_backend(|store| async move {
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        assert!(store.ping().await);
    })
    .await;
}

#[tokio::test]
async fn users_are_unique_by_case_insensitive_email_and_username() {
    for_each_backend(|store| async move {
        let alice = user(&store, "alice").await;
        assert_eq!(
            alice.email, "alice@example.test",
            "emails are stored lowercased"
        );
        assert!(
            !alice.pref_mic_muted && alice.avatar_url.is_none() && alice.locked_until.is_none()
        );
        let same_email = store
            .insert_user(NewUser {
                email: "ALICE@example.test",
                username: "other",
                display_name: "x",
                password_hash: "x",
            })
            .await;
        assert!(
            matches!(same_email, Err(StoreError::Conflict(ref c)) if c == "email"),
            "{same_email:?}"
        );
        let same_name = store
            .insert_user(NewUser {
                email: "new@example.test",
                username: "alice",
                display_name: "x",
                password_hash: "x",
            })
            .await;
        assert!(
            matches!(same_name, Err(StoreError::Conflict(ref c)) if c == "username"),
            "{same_name:?}"
        );
        assert_eq!(
            store.user_by_login("Alice@EXAMPLE.test").await.unwrap().id,
            alice.id
        );
        assert_eq!(store.user_by_login("alice").await.unwrap().id, alice.id);
        assert!(matches!(
            store.user_by_login("nobody").await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.user("no-such-id").await,
            Err(StoreError::NotFound)
        ));
    })
    .await;
}

#[tokio::test]
async fn meetings_round_trip_and_codes_are_unique() {
    for_each_backend(|store| async move {
        let host = user(&store, "host").await;
        let mut m = meeting(&host.id, "abc-defg-hij");
        m.passcode = Some("1234".into());
        m.scheduled_at = Some(now_ms() + 60_000);
        store.insert_meeting(&m).await.unwrap();
        assert_eq!(
            store.meeting(&m.id).await.unwrap(),
            m,
            "every column survives the round trip"
        );
        assert_eq!(
            store.meeting("abc-defg-hij").await.unwrap().id,
            m.id,
            "found by code"
        );
        let clash = store
            .insert_meeting(&meeting(&host.id, "abc-defg-hij"))
            .await;
        assert!(
            matches!(clash, Err(StoreError::Conflict(ref c)) if c == "code"),
            "{clash:?}"
        );
        assert!(matches!(
            store.meeting("zzz-zzzz-zzz").await,
            Err(StoreError::NotFound)
        ));
    })
    .await;
}

#[tokio::test]
async fn participants_round_trip_with_nulls() {
    for_each_backend(|store| async move {
        let host = user(&store, "phost").await;
        let m = meeting(&host.id, "pqr-stuv-wxy");
        store.insert_meeting(&m).await.unwrap();
        let guest = Participant {
            id: convene::store::new_id(),
            meeting_id: m.id.clone(),
            user_id: None,
            identity: "guest-1".into(),
            display_name: "Guest".into(),
            role: "guest".into(),
            status: "waiting".into(),
            mic_muted: true,
            camera_off: false,
            joined_at: None,
            left_at: None,
            created_at: now_ms(),
        };
        store.add_participant(&guest).await.unwrap();
        assert_eq!(store.participant(&m.id, &guest.id).await.unwrap(), guest);
        assert!(matches!(
            store.participant("other-meeting", &guest.id).await,
            Err(StoreError::NotFound)
        ));
    })
    .await;
}

#[tokio::test]
async fn migrate_command_creates_the_sqlite_database() {
    let dir = common::TempDir::new();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args(["migrate", "--data-dir"])
        .arg(&dir.0)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.0.join("convene.db").exists());
    assert!(String::from_utf8_lossy(&output.stdout).contains("up to date"));
}
