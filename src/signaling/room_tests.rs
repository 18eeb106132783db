//! The room task, driven through its command interface (as sessions, waiting sockets, REST
//! moderation and the SFU's events drive it), with a real store (SQLite in a scratch
//! directory) and a real media engine. Channels stand in for the sessions' and waiting
//! sockets' tasks: what a room sends them is what these tests read.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::super::protocol::{ParticipantView, Source, WaitingView};
use super::super::rooms::{Services, Signaling, WaitEvent};
use super::super::session::Input;
use super::Closed;
use crate::config::Config;
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};
use crate::sfu::{MediaKind, Sfu, SfuEvent, TrackInfo};
use crate::store::meetings::Meeting;
use crate::store::participants::Participant;
use crate::store::users::NewUser;
use crate::store::{now_ms, Store};

struct Fixture {
    signaling: Signaling,
    store: Store,
    host_id: String,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fixture(empty_timeout: Duration) -> Fixture {
    let dir = std::env::temp_dir().join(format!("convene-room-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::connect("", &dir).await.unwrap();
    let config = Config {
        media_udp_port: 0,
        media_workers: 1,
        media_bind_ip: [127, 0, 0, 1].into(),
        ..Config::default()
    };
    let (sfu, _events) = Sfu::start(crate::app::sfu_config(&config), Default::default()).unwrap();
    let host = store
        .insert_user(NewUser {
            email: "host@example.com",
            username: "host",
            display_name: "Host",
            password_hash: "x",
        })
        .await
        .unwrap();
    let recorder = crate::recording::Recorder::new(
        crate::recording::RecorderConfig {
            dir: config.recordings_path(),
            jitter: config.recording_jitter,
            min_free_bytes: 0,
        },
        store.clone(),
        sfu.clone(),
        Default::default(),
    )
    .unwrap();
    let signaling = Signaling::new(Services {
        node_id: None,
        cascade: None,
        store: store.clone(),
        sfu,
        recorder,
        empty_timeout,
    });
    Fixture {
        signaling,
        store,
        host_id: host.id,
        dir,
    }
}

impl Fixture {
    async fn live_meeting(&self) -> String {
        let now = now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sample = Meeting::sample(&id, &self.host_id);
        let meeting = Meeting {
            code: format!("c{}", &id[id.len() - 10..]),
            started_at: Some(now),
            created_at: now,
            updated_at: now,
            // Not recorded by itself: these tests count the messages members get.
            settings: crate::store::meetings::MeetingSettings {
                recording: false,
                ..sample.settings.clone()
            },
            ..sample
        };
        self.store.insert_meeting(&meeting).await.unwrap();
        id
    }

    async fn seat(&self, meeting_id: &str, name: &str, role: &str) -> Participant {
        let id = uuid::Uuid::now_v7().to_string();
        let seat = Participant {
            id: id.clone(),
            meeting_id: meeting_id.to_owned(),
            user_id: None,
            identity: format!("guest-{id}"),
            display_name: name.to_owned(),
            role: role.to_owned(),
            status: "joined".into(),
            mic_muted: false,
            camera_off: false,
            joined_at: Some(now_ms()),
            left_at: None,
            created_at: now_ms(),
        };
        self.store.add_participant(&seat).await.unwrap();
        seat
    }

    /// Registers a stand-in session for the seat.
    async fn join(&self, seat: &Participant) -> Member {
        let (session, inputs) = mpsc::unbounded_channel();
        let others = self
            .signaling
            .register(
                &seat.meeting_id,
                view(seat),
                session.clone(),
                Default::default(),
            )
            .await
            .expect("registered");
        Member {
            seat: seat.clone(),
            session,
            inputs,
            others: others.into_iter().map(|v| v.participant_id).collect(),
        }
    }

    /// Returns once the room served every command sent before (it serves them in order).
    async fn settle(&self, meeting_id: &str) {
        let _ = self
            .signaling
            .session_of_identity(meeting_id, "nobody")
            .await;
    }

    /// Registers a new seat's session; what the room answered.
    async fn late_join(&self, meeting_id: &str) -> Result<(), Closed> {
        let (session, _) = mpsc::unbounded_channel();
        let seat = self.seat(meeting_id, "Eve", "participant").await;
        self.signaling
            .register(meeting_id, view(&seat), session, Default::default())
            .await
            .map(drop)
    }

    async fn status(&self, meeting_id: &str) -> String {
        self.store.meeting(meeting_id).await.unwrap().status
    }
}

/// A live meeting with alice and bob in it.
async fn two_members() -> (Fixture, String, Member, Member) {
    let f = fixture(Duration::ZERO).await;
    let meeting = f.live_meeting().await;
    let alice = f
        .join(&f.seat(&meeting, "Alice", "participant").await)
        .await;
    let bob = f.join(&f.seat(&meeting, "Bob", "participant").await).await;
    (f, meeting, alice, bob)
}

fn waiting_view(seat: &Participant) -> WaitingView {
    WaitingView {
        participant_id: seat.id.clone(),
        display_name: seat.display_name.clone(),
        user_id: seat.user_id.clone(),
    }
}

fn view(seat: &Participant) -> ParticipantView {
    ParticipantView {
        participant_id: seat.id.clone(),
        identity: seat.identity.clone(),
        user_id: seat.user_id.clone(),
        display_name: seat.display_name.clone(),
        role: seat.role.clone(),
        muted: Vec::new(),
        hand_raised: false,
        tracks: Vec::new(),
    }
}

struct Member {
    seat: Participant,
    session: mpsc::UnboundedSender<Input>,
    inputs: mpsc::UnboundedReceiver<Input>,
    others: Vec<String>,
}

/// What a stand-in session was told, in order: room messages as JSON, other inputs by name.
#[derive(Debug)]
enum Told {
    Message(Value),
    Kicked { banned: bool },
    Replaced,
    MeetingEnded,
    RoleChanged,
    MeetingChanged,
    Shutdown,
    Other,
}

impl Member {
    fn told(&mut self) -> Vec<Told> {
        let mut told = Vec::new();
        while let Ok(input) = self.inputs.try_recv() {
            told.push(match input {
                Input::Deliver(frame) => Told::Message(serde_json::from_str(&frame).unwrap()),
                Input::Kicked { banned, .. } => Told::Kicked { banned },
                Input::Replaced { .. } => Told::Replaced,
                Input::MeetingEnded { .. } => Told::MeetingEnded,
                Input::RoleChanged { .. } => Told::RoleChanged,
                Input::MeetingChanged { .. } => Told::MeetingChanged,
                Input::Shutdown => Told::Shutdown,
                _ => Told::Other,
            });
        }
        told
    }

    /// The room messages of `type` told since the last look.
    fn messages(&mut self, kind: &str) -> Vec<Value> {
        self.told()
            .into_iter()
            .filter_map(|t| match t {
                Told::Message(m) if m["type"] == kind => Some(m),
                _ => None,
            })
            .collect()
    }

    fn publisher_event(&self, publisher: PeerId, track: u64, client_track: &str) -> SfuEvent {
        SfuEvent::TrackPublished {
            room: RoomId(self.seat.meeting_id.clone()),
            identity: ParticipantId(self.seat.identity.clone()),
            session: publisher,
            track: TrackInfo {
                id: TrackId(track),
                kind: MediaKind::Video,
                mid: "0".into(),
                publisher_track_id: client_track.into(),
                mime_type: "video/VP8".into(),
            },
        }
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tracks_are_announced_with_their_source_and_follow_mute() {
    let (f, meeting, alice, mut bob) = two_members().await;
    assert_eq!(bob.others, vec![alice.seat.id.clone()]);

    // The SFU publishes tracks as it answers an offer, before the session knows the
    // connection's id: the room holds them until the session names its publisher.
    let sources = HashMap::from([("screen-1".to_owned(), Source::Screen)]);
    f.signaling.sources(&meeting, &alice.seat.id, sources);
    let publisher = PeerId::new();
    f.signaling
        .media_event(alice.publisher_event(publisher, 7, "screen-1"));
    // Tracks of a connection that is not alice's publisher are not hers.
    f.signaling
        .media_event(alice.publisher_event(PeerId::new(), 8, "screen-1"));
    f.settle(&meeting).await;
    assert!(bob.messages("track_published").is_empty());
    f.signaling.publisher(&meeting, &alice.seat.id, publisher);
    f.signaling
        .media_event(alice.publisher_event(PeerId::new(), 9, "screen-1"));
    f.settle(&meeting).await;
    let published = bob.messages("track_published");
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0]["participant_id"], alice.seat.id.as_str());
    assert_eq!(published[0]["source"], "screen");
    assert_eq!(published[0]["track_id"], "t7");

    // Alice mutes her camera: the store and everyone see it; her screen track is not muted.
    f.signaling
        .set_muted(&meeting, &alice.seat.id, Source::Camera, true)
        .await
        .unwrap();
    let states = bob.messages("media_state");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0]["source"], "camera");
    assert_eq!(states[0]["muted"], true);
    let seat = f.store.participant(&meeting, &alice.seat.id).await.unwrap();
    assert!(seat.camera_off, "the mute is stored");
    // The same mute again changes nothing and tells nobody.
    f.signaling
        .set_muted(&meeting, &alice.seat.id, Source::Camera, true)
        .await
        .unwrap();
    assert!(bob.messages("media_state").is_empty());

    f.signaling
        .set_muted(&meeting, &alice.seat.id, Source::Screen, true)
        .await
        .unwrap();
    assert_eq!(bob.messages("media_state").len(), 1);
    let snapshot = f
        .signaling
        .snapshot(&meeting, &bob.seat.id)
        .await
        .expect("bob is a member");
    let alice_view = &snapshot.others[0];
    assert_eq!(alice_view.muted, vec![Source::Camera, Source::Screen]);
    assert!(alice_view.tracks[0].muted, "the screen track shows muted");

    // A moderator mutes her audio: both audio sources, by whom.
    f.signaling.muted(
        &meeting,
        &alice.seat.id,
        MediaKind::Audio,
        Some(bob.seat.id.clone()),
    );
    f.settle(&meeting).await;
    let states = bob.messages("media_state");
    let sources: Vec<&str> = states.iter().filter_map(|m| m["source"].as_str()).collect();
    assert_eq!(sources, ["microphone", "screen_audio"]);
    assert!(states.iter().all(|m| m["by"] == bob.seat.id.as_str()));

    // Unpublished: everyone is told, the view drops it.
    f.signaling.media_event(SfuEvent::TrackUnpublished {
        room: RoomId(meeting.clone()),
        identity: ParticipantId(alice.seat.identity.clone()),
        session: publisher,
        track: TrackId(7),
    });
    f.settle(&meeting).await;
    assert_eq!(bob.messages("track_unpublished").len(), 1);
    let snapshot = f.signaling.snapshot(&meeting, &bob.seat.id).await.unwrap();
    assert!(snapshot.others[0].tracks.is_empty());
}

#[tokio::test]
async fn speakers_and_hands_are_told_by_participant_id() {
    let (f, meeting, mut alice, bob) = two_members().await;
    f.signaling.media_event(SfuEvent::ActiveSpeakers {
        room: RoomId(meeting.clone()),
        speakers: vec![
            crate::sfu::speaker::Speaker {
                identity: ParticipantId(bob.seat.identity.clone()),
                level: 0.5,
            },
            crate::sfu::speaker::Speaker {
                identity: ParticipantId("not-here".into()),
                level: 0.9,
            },
        ],
    });
    f.signaling.set_hand(&meeting, &bob.seat.id, true);
    f.signaling.set_hand(&meeting, &bob.seat.id, true);
    f.settle(&meeting).await;
    let told = alice.told();
    let speakers: Vec<&Value> = told
        .iter()
        .filter_map(|t| match t {
            Told::Message(m) if m["type"] == "active_speakers" => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(speakers.len(), 1);
    assert_eq!(
        speakers[0]["speakers"][0]["participant_id"],
        bob.seat.id.as_str()
    );
    assert_eq!(speakers[0]["speakers"].as_array().unwrap().len(), 1);
    let updates = told
        .iter()
        .filter(|t| matches!(t, Told::Message(m) if m["type"] == "participant_updated"))
        .count();
    assert_eq!(updates, 1, "a hand raised twice is one change");
}

#[tokio::test]
async fn kick_ends_the_targets_session_and_tells_its_waiting_socket() {
    let (f, meeting, mut alice, mut bob) = two_members().await;
    let carol = f.seat(&meeting, "Carol", "participant").await;
    let (events, mut carol_events) = mpsc::unbounded_channel();
    let _guard = f.signaling.wait(&meeting, waiting_view(&carol), events);
    f.signaling.kicked(&meeting, &alice.seat, true, None);
    f.signaling.kicked(&meeting, &carol, false, None);
    f.settle(&meeting).await;
    assert!(matches!(
        alice.told().as_slice(),
        [Told::Message(_), Told::Kicked { banned: true }]
    ));
    assert!(
        !bob.told().iter().any(|t| matches!(t, Told::Kicked { .. })),
        "only the target is kicked"
    );
    assert_eq!(
        carol_events.try_recv().ok(),
        Some(WaitEvent::Kicked { banned: false })
    );
}

#[tokio::test]
async fn leave_is_told_once_and_only_for_the_current_session() {
    let (f, meeting, alice, mut bob) = two_members().await;
    // A session that is not alice's current one leaving changes nothing.
    let (stranger, _) = mpsc::unbounded_channel();
    f.signaling
        .unregister(&meeting, &alice.seat.id, &stranger, Some("left"));
    f.settle(&meeting).await;
    assert!(bob.messages("participant_left").is_empty());
    f.signaling
        .unregister(&meeting, &alice.seat.id, &alice.session, Some("left"));
    f.signaling
        .unregister(&meeting, &alice.seat.id, &alice.session, Some("left"));
    f.settle(&meeting).await;
    let left = bob.messages("participant_left");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["participant_id"], alice.seat.id.as_str());
    assert_eq!(left[0]["reason"], "left");
    let snapshot = f.signaling.snapshot(&meeting, &bob.seat.id).await.unwrap();
    assert!(snapshot.others.is_empty());
    assert!(f
        .signaling
        .snapshot(&meeting, &alice.seat.id)
        .await
        .is_none());
}

#[tokio::test]
async fn a_second_session_of_an_identity_takes_over() {
    let f = fixture(Duration::ZERO).await;
    let meeting = f.live_meeting().await;
    let seat = f.seat(&meeting, "Alice", "participant").await;
    let mut first = f.join(&seat).await;
    let mut bob = f.join(&f.seat(&meeting, "Bob", "participant").await).await;
    // The same identity on a new seat (a second join of the same account).
    let mut again = seat.clone();
    again.id = uuid::Uuid::now_v7().to_string();
    let second = f.join(&again).await;
    assert_eq!(
        second.others,
        vec![bob.seat.id.clone()],
        "the old session is gone"
    );
    assert!(first.told().iter().any(|t| matches!(t, Told::Replaced)));
    let told: Vec<(String, String)> = bob
        .told()
        .into_iter()
        .filter_map(|t| match t {
            Told::Message(m) => Some((
                m["type"].as_str().unwrap_or_default().to_owned(),
                m["participant_id"]
                    .as_str()
                    .or(m["participant"]["participant_id"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        told,
        [
            ("participant_left".to_owned(), seat.id.clone()),
            ("participant_joined".to_owned(), again.id.clone()),
        ]
    );
    let (held, _) = f
        .signaling
        .session_of_identity(&meeting, &seat.identity)
        .await
        .expect("held");
    assert_eq!(held, again.id);
    // The replaced session ending afterwards does not remove its successor.
    f.signaling
        .unregister(&meeting, &seat.id, &first.session, Some("left"));
    f.settle(&meeting).await;
    assert!(f.signaling.snapshot(&meeting, &again.id).await.is_some());
}

#[tokio::test]
async fn an_empty_meeting_ends_after_the_countdown_and_a_join_cancels_it() {
    let timeout = Duration::from_millis(300);
    let f = fixture(timeout).await;
    let ends = f.live_meeting().await;
    let stays = f.live_meeting().await;

    // `stays`: emptied, then joined again before its countdown runs out.
    let alice = f.join(&f.seat(&stays, "Alice", "participant").await).await;
    f.signaling
        .unregister(&stays, &alice.seat.id, &alice.session, Some("left"));
    let _bob = f.join(&f.seat(&stays, "Bob", "participant").await).await;

    // `ends`: emptied after `stays`, so its countdown runs out later than the cancelled one would.
    let carol = f.join(&f.seat(&ends, "Carol", "participant").await).await;
    f.signaling
        .unregister(&ends, &carol.seat.id, &carol.session, Some("left"));
    wait_for("the empty meeting ends", async || {
        f.status(&ends).await == "ended"
    })
    .await;
    // Had its countdown run, `stays`' room would have served it by now, before this question.
    f.settle(&stays).await;
    assert_eq!(
        f.status(&stays).await,
        "live",
        "a join cancelled its countdown"
    );
    // The ended meeting's room lets itself go; `stays` keeps one.
    wait_for("the ended room closes", async || {
        f.signaling.open_rooms() == 1
    })
    .await;
}

#[tokio::test]
async fn an_ended_meeting_takes_no_member_and_tells_everyone() {
    let f = fixture(Duration::ZERO).await;
    let meeting = f.live_meeting().await;
    let mut alice = f.join(&f.seat(&meeting, "Alice", "host").await).await;
    let waiting = f.seat(&meeting, "Dan", "participant").await;
    let (events, mut dan_events) = mpsc::unbounded_channel();
    let guard = f.signaling.wait(&meeting, waiting_view(&waiting), events);
    f.signaling.announce_waiting(&meeting, &waiting);
    f.settle(&meeting).await;
    assert_eq!(
        alice.messages("waiting").len(),
        1,
        "the host sees the waiting socket"
    );
    let snapshot = f
        .signaling
        .snapshot(&meeting, &alice.seat.id)
        .await
        .unwrap();
    assert_eq!(snapshot.waiting.len(), 1);
    f.signaling.waiting_resolved(&meeting, &waiting.id, true);
    f.settle(&meeting).await;
    assert_eq!(dan_events.try_recv().ok(), Some(WaitEvent::Admitted));
    assert_eq!(alice.messages("admitted").len(), 1);
    drop(guard);
    let snapshot = f
        .signaling
        .snapshot(&meeting, &alice.seat.id)
        .await
        .unwrap();
    assert!(
        snapshot.waiting.is_empty(),
        "a dropped waiting socket is forgotten"
    );

    f.signaling
        .meeting_ended(&meeting, Some(alice.seat.id.clone()));
    assert_eq!(f.late_join(&meeting).await, Err(Closed));
    assert!(alice.told().iter().any(|t| matches!(t, Told::MeetingEnded)));
}

#[tokio::test]
async fn shutdown_tells_every_socket_and_refuses_joins() {
    let f = fixture(Duration::from_millis(50)).await;
    let meeting = f.live_meeting().await;
    let mut alice = f
        .join(&f.seat(&meeting, "Alice", "participant").await)
        .await;
    let empty = f.live_meeting().await;
    f.signaling.meeting_is_empty(&empty);
    f.signaling.shutdown();
    f.settle(&meeting).await;
    assert!(alice.told().iter().any(|t| matches!(t, Told::Shutdown)));
    assert_eq!(f.late_join(&meeting).await, Err(Closed));
    // No countdown runs on a stopping server: the empty meeting's room closes, still live.
    wait_for("the countdown-only room closes", async || {
        f.signaling.open_rooms() == 1
    })
    .await;
    assert_eq!(f.status(&empty).await, "live");
}
