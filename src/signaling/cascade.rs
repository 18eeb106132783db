//! Cascading: one meeting over several nodes (`cluster_cascade`).
//!
//! Each node serves the participants who reached it. A room task shares its members (their
//! public view, with the tracks they publish here) in Redis, and reads the other nodes'
//! members every `cluster_cascade_sync`: they become *remote members*, announced to the local
//! participants like local ones, their tracks with ids of this node. A remote track is relayed
//! here (`sfu::relay`: a connection from this node's media engine to the publisher's node,
//! carrying the tracks of that publisher wanted when it opened) only while a local session
//! receives it; otherwise nothing of it reaches this node. Room events that are not about media (chat, typing, mute, the end of
//! the meeting, a kick) cross through a per-meeting Redis stream.
//!
//! The room task owns [`Cascade`]; a sync task per room does every Redis call, so the room
//! never waits on Redis.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::protocol::{Kind, ParticipantView, ServerMessage};
use super::room::Command;
use super::rooms::Signaling;
use crate::cluster::Cluster;
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};
use crate::sfu::relay_wish::RelayWish;
use crate::sfu::{MediaKind, RelayedTrack, Requester, Sfu};

/// The internal route a node opens a relay at (the publisher's node answers).
pub const RELAYS_PATH: &str = "/internal/v1/cascade/relays";

/// How long a relay that failed waits before it is made again.
const RELAY_RETRY: Duration = Duration::from_secs(2);

/// Sync ticks between two looks at the relays when nothing changed.
const RETRY_TICKS: u32 = 5;

/// Tries of one layer choice that does not get through, and the wait between them.
const WISH_ATTEMPTS: u32 = 3;
const WISH_RETRY: Duration = Duration::from_millis(500);

/// Layer choices kept for relays being opened, at most.
const MAX_EARLY_WISHES: usize = 256;

/// Sync ticks between two renewals of this node's member entries.
const RENEW_TICKS: u32 = 10;

/// What cascading needs of the node.
pub struct Settings {
    pub cluster: Cluster,
    pub sync: Duration,
    /// The cluster's relay key: what the publisher's node checks on a relay request.
    pub forward_key: String,
    pub http: reqwest::Client,
    /// Serials of track ids announced before their track exists.
    pub serials: AtomicU64,
    pub metrics: crate::metrics::Metrics,
}

/// One node's entry for one of its participants, as Redis holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberEntry {
    node: String,
    /// The node's HTTP base URL, where relays of this participant's tracks are opened.
    http_url: String,
    /// With the publishing node's track ids.
    view: ParticipantView,
}

/// An event of a meeting for its other nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Event {
    node: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum EventKind {
    /// A server message for every member, as sent on the node it happened on.
    Broadcast {
        frame: String,
    },
    /// A moderator removed this participant (store written).
    Kicked {
        participant_id: String,
        banned: bool,
        by: Option<String>,
    },
    /// A moderator muted every source of `kind` of this participant (store written).
    Muted {
        participant_id: String,
        video: bool,
        by: Option<String>,
    },
    MeetingEnded {
        by: Option<String>,
    },
    /// A moderator changed this participant's role (store written).
    RoleChanged {
        participant_id: String,
        role: String,
    },
    /// The meeting's details or settings changed (store written): read them again.
    MeetingChanged,
    /// Stop this recording, if it runs here (REST reached a node where it does not).
    StopRecording {
        recording_id: String,
    },
}

/// A remote track: whose, the publishing node's id of it, its kind.
struct RemoteTrack {
    participant_id: String,
    origin: TrackId,
    kind: Kind,
    source: super::protocol::Source,
}

/// A remote participant who publishes, and the relays of their tracks to this node. A relay
/// is one connection carrying some of the tracks: the ones wanted when it was opened. A track
/// wanted later gets a relay of its own rather than a new relay replacing the old one, which
/// would interrupt what the old one carried for everyone here.
struct RemotePublisher {
    identity: String,
    /// The publishing node's HTTP base URL, where relays are opened.
    http_url: String,
    relays: Vec<Relay>,
    /// After a relay failed, when the tracks it carried are tried again.
    retry_at: Option<Instant>,
}

struct Relay {
    tracks: Vec<TrackId>,
    /// `None` while it is being opened.
    open: Option<(PeerId, String)>,
}

/// What a relay task reports back to its room.
pub(crate) struct RelayOutcome {
    participant_id: String,
    tracks: Vec<TrackId>,
    result: Result<(PeerId, String), String>,
}

/// The room task's view of the meeting on other nodes.
pub(crate) struct Cascade {
    settings: Arc<Settings>,
    meeting_id: String,
    sync: mpsc::UnboundedSender<Outgoing>,
    /// Remote members by participant id, their tracks with this node's ids.
    remote: BTreeMap<String, ParticipantView>,
    /// (participant, the publishing node's track id) → this node's id.
    ids: HashMap<(String, String), TrackId>,
    tracks: HashMap<TrackId, RemoteTrack>,
    publishers: HashMap<String, RemotePublisher>,
    /// Layer choices for the publishers' nodes, sent in order by one task: (the relay's
    /// location there, the track's id there, the wish).
    wishes: mpsc::UnboundedSender<(String, TrackId, RelayWish)>,
    /// Wishes of relays whose opening is not reported yet (sent once it is).
    early_wishes: Vec<(PeerId, TrackId, RelayWish)>,
}

enum Outgoing {
    Member {
        participant_id: String,
        entry: Option<String>,
    },
    Event(String),
}

/// What a member of this node receives, for relays: its subscription mode and the tracks it
/// listed (subscribed to when manual, unsubscribed from when automatic).
#[derive(Debug, Default, Clone)]
pub(crate) struct Subscriptions {
    pub receives: bool,
    pub manual: bool,
    pub listed: HashSet<TrackId>,
}

impl Subscriptions {
    pub fn wants(&self, track: TrackId) -> bool {
        self.receives && (self.manual == self.listed.contains(&track))
    }
}

impl Cascade {
    pub fn start(settings: Arc<Settings>, meeting_id: String, signaling: Signaling) -> Self {
        let (sync, outgoing) = mpsc::unbounded_channel();
        tokio::spawn(sync_task(
            settings.clone(),
            meeting_id.clone(),
            signaling,
            outgoing,
        ));
        let (wishes, queued) = mpsc::unbounded_channel();
        tokio::spawn(wish_task(settings.clone(), queued));
        Self {
            settings,
            meeting_id,
            sync,
            remote: BTreeMap::new(),
            ids: HashMap::new(),
            tracks: HashMap::new(),
            publishers: HashMap::new(),
            wishes,
            early_wishes: Vec::new(),
        }
    }

    /// What this node's receivers want of `track` (the publishing node's id) that relay
    /// `session` brings: for the relay's other end.
    pub fn tell_wish(&mut self, session: PeerId, track: TrackId, wish: RelayWish) {
        let location = self.publishers.values().find_map(|p| {
            p.relays.iter().find_map(|r| match &r.open {
                Some((s, location)) if *s == session => Some(location.clone()),
                _ => None,
            })
        });
        match location {
            Some(location) => {
                let _ = self.wishes.send((location, track, wish));
            }
            None if self.opening() && self.early_wishes.len() < MAX_EARLY_WISHES => {
                self.early_wishes.push((session, track, wish));
            }
            None => {}
        }
    }

    /// Shares (or with `None`, withdraws) a local member's view.
    pub fn put_member(&self, participant_id: &str, view: Option<&ParticipantView>) {
        let entry = view.map(|view| {
            serde_json::to_string(&MemberEntry {
                node: self.settings.cluster.node_id().to_owned(),
                http_url: self.settings.cluster.http_url().to_owned(),
                view: view.clone(),
            })
            .expect("a member entry serializes")
        });
        let _ = self.sync.send(Outgoing::Member {
            participant_id: participant_id.to_owned(),
            entry,
        });
    }

    pub fn post(&self, kind: EventKind) {
        let event = Event {
            node: self.settings.cluster.node_id().to_owned(),
            kind,
        };
        let json = serde_json::to_string(&event).expect("an event serializes");
        let _ = self.sync.send(Outgoing::Event(json));
    }

    pub fn remote_views(&self) -> impl Iterator<Item = &ParticipantView> {
        self.remote.values()
    }

    /// The remote participant of `identity`.
    pub fn participant_of(&self, identity: &str) -> Option<&str> {
        self.remote
            .iter()
            .find(|(_, v)| v.identity == identity)
            .map(|(id, _)| id.as_str())
    }

    /// A remote participant's public view.
    pub fn remote_view(&self, participant_id: &str) -> Option<&ParticipantView> {
        self.remote.get(participant_id)
    }

    /// Whose remote track `track` is, and its source.
    pub fn remote_track(&self, track: TrackId) -> Option<(String, super::protocol::Source)> {
        self.tracks
            .get(&track)
            .map(|t| (t.participant_id.clone(), t.source))
    }

    /// The remote tracks open relays bring here (with this node's ids).
    pub fn relayed_tracks(&self) -> Vec<TrackId> {
        self.publishers
            .values()
            .flat_map(|p| p.relays.iter().filter(|r| r.open.is_some()))
            .flat_map(|r| r.tracks.iter().copied())
            .collect()
    }

    pub fn is_remote_track(&self, track: TrackId) -> bool {
        self.tracks.contains_key(&track)
    }

    /// The members of the other nodes, as read now: returns what local members must be told,
    /// with track ids of this node.
    pub fn apply_members(
        &mut self,
        entries: Vec<String>,
        is_local: impl Fn(&str) -> bool,
        sfu: &Sfu,
    ) -> Vec<ServerMessage> {
        let room = RoomId(self.meeting_id.clone());
        let mut seen: BTreeMap<String, (ParticipantView, String)> = BTreeMap::new();
        for json in entries {
            let Ok(entry) = serde_json::from_str::<MemberEntry>(&json) else {
                continue;
            };
            // Moved here (its old node's entry lingers a moment): it is local.
            if is_local(&entry.view.participant_id) {
                continue;
            }
            seen.insert(
                entry.view.participant_id.clone(),
                (entry.view, entry.http_url),
            );
        }
        let mut told = Vec::new();
        let gone: Vec<String> = self
            .remote
            .keys()
            .filter(|id| !seen.contains_key(*id))
            .cloned()
            .collect();
        for participant_id in gone {
            self.remote.remove(&participant_id);
            self.tracks
                .retain(|_, t| t.participant_id != participant_id);
            self.ids.retain(|(p, _), _| *p != participant_id);
            if let Some(publisher) = self.publishers.remove(&participant_id) {
                self.close(publisher, sfu);
            }
            told.push(ServerMessage::ParticipantLeft {
                participant_id,
                reason: "left".to_owned(),
            });
        }
        for (participant_id, (mut view, http_url)) in seen {
            let mut published = HashSet::new();
            view.tracks
                .retain(|t| TrackId::parse(&t.track_id).is_some());
            for track in &mut view.tracks {
                let key = (participant_id.clone(), track.track_id.clone());
                let local = match self.ids.get(&key) {
                    Some(id) => *id,
                    None => {
                        let serial = self.settings.serials.fetch_add(1, Ordering::Relaxed);
                        let id = sfu.provisional_track_id(&room, serial);
                        self.ids.insert(key, id);
                        self.tracks.insert(
                            id,
                            RemoteTrack {
                                participant_id: participant_id.clone(),
                                origin: TrackId::parse(&track.track_id).expect("kept above"),
                                kind: track.kind,
                                source: track.source,
                            },
                        );
                        id
                    }
                };
                track.track_id = local.to_string();
                published.insert(local);
            }
            let withdrawn: Vec<TrackId> = self
                .tracks
                .iter()
                .filter(|(id, t)| t.participant_id == participant_id && !published.contains(id))
                .map(|(id, _)| *id)
                .collect();
            for track in withdrawn {
                self.tracks.remove(&track);
                self.ids
                    .retain(|(p, _), id| !(*p == participant_id && *id == track));
                told.push(ServerMessage::TrackUnpublished {
                    participant_id: participant_id.clone(),
                    track_id: track.to_string(),
                });
            }
            if !view.tracks.is_empty() {
                self.publishers
                    .entry(participant_id.clone())
                    .or_insert_with(|| RemotePublisher {
                        identity: view.identity.clone(),
                        http_url: http_url.clone(),
                        relays: Vec::new(),
                        retry_at: None,
                    });
            }
            match self.remote.get(&participant_id) {
                None => told.push(ServerMessage::ParticipantJoined {
                    participant: view.clone(),
                }),
                Some(before) => {
                    for track in &view.tracks {
                        if !before.tracks.iter().any(|t| t.track_id == track.track_id) {
                            told.push(ServerMessage::TrackPublished {
                                participant_id: participant_id.clone(),
                                track: track.clone(),
                            });
                        }
                    }
                    if (
                        &before.role,
                        &before.muted,
                        before.hand_raised,
                        &before.display_name,
                    ) != (
                        &view.role,
                        &view.muted,
                        view.hand_raised,
                        &view.display_name,
                    ) {
                        told.push(ServerMessage::ParticipantUpdated {
                            participant: view.clone(),
                        });
                    }
                }
            }
            self.remote.insert(participant_id, view);
        }
        told
    }

    /// Relays to this node what local members receive (every remote track while this node
    /// records the meeting), and nothing else: a relay opens for the tracks wanted here that
    /// no relay carries, and a relay closes once nobody here wants any of its tracks.
    pub fn reconcile<'a>(
        &mut self,
        members: impl Iterator<Item = &'a Subscriptions> + Clone,
        viewers: &HashMap<PeerId, Option<String>>,
        recording: bool,
        sfu: &Sfu,
        signaling: &Signaling,
    ) {
        let now = Instant::now();
        let ids: Vec<String> = self.publishers.keys().cloned().collect();
        for participant_id in ids {
            let Some(view) = self.remote.get(&participant_id) else {
                continue;
            };
            let publisher = &self.publishers[&participant_id];
            // A recording here records every remote participant too.
            let watched = recording
                || viewers
                    .values()
                    .any(|w| w.as_ref().is_none_or(|who| *who == publisher.identity));
            // In the publisher's order: a relay's sections follow it.
            let wanted: Vec<TrackId> = view
                .tracks
                .iter()
                .filter_map(|t| TrackId::parse(&t.track_id))
                .filter(|id| watched || members.clone().any(|m| m.wants(*id)))
                .collect();
            let unwanted: Vec<usize> = publisher
                .relays
                .iter()
                .enumerate()
                .filter(|(_, r)| r.open.is_some() && !r.tracks.iter().any(|t| wanted.contains(t)))
                .map(|(i, _)| i)
                .collect();
            let missing: Vec<TrackId> = wanted
                .iter()
                .copied()
                .filter(|t| !publisher.relays.iter().any(|r| r.tracks.contains(t)))
                .collect();
            let may_open = publisher.retry_at.is_none_or(|at| at <= now)
                && publisher.relays.iter().all(|r| r.open.is_some());
            let publisher = self.publishers.get_mut(&participant_id).expect("listed");
            let closed: Vec<Relay> = unwanted
                .into_iter()
                .rev()
                .map(|i| publisher.relays.remove(i))
                .collect();
            for (session, location) in closed.into_iter().filter_map(|r| r.open) {
                self.spawn_close(sfu, session, location);
            }
            if !missing.is_empty() && may_open {
                self.open(&participant_id, missing, sfu.clone(), signaling.clone());
            }
        }
    }

    /// Opens a relay of `participant_id`'s `tracks`.
    fn open(&mut self, participant_id: &str, tracks: Vec<TrackId>, sfu: Sfu, signaling: Signaling) {
        let Some(publisher) = self.publishers.get_mut(participant_id) else {
            return;
        };
        publisher.relays.push(Relay {
            tracks: tracks.clone(),
            open: None,
        });
        let identity = publisher.identity.clone();
        let http_url = publisher.http_url.clone();
        let relayed: Vec<RelayedTrack> = tracks
            .iter()
            .filter_map(|local| {
                let remote = self.tracks.get(local)?;
                self.settings
                    .metrics
                    .cascade_relayed_tracks
                    .with_label_values(&[remote.source.as_str()])
                    .inc();
                Some(RelayedTrack {
                    kind: match remote.kind {
                        Kind::Audio => MediaKind::Audio,
                        Kind::Video => MediaKind::Video,
                    },
                    origin: remote.origin,
                    local: *local,
                })
            })
            .collect();
        let settings = self.settings.clone();
        let meeting_id = self.meeting_id.clone();
        let participant_id = participant_id.to_owned();
        tokio::spawn(async move {
            let result =
                open_relay(&settings, &sfu, &meeting_id, &identity, &http_url, relayed).await;
            match &result {
                Ok(_) => {
                    tracing::debug!(meeting = %meeting_id, publisher = %identity, "relay open")
                }
                Err(e) => {
                    tracing::info!(meeting = %meeting_id, publisher = %identity, error = %e, "relay not opened")
                }
            }
            signaling.tell_room(
                &meeting_id,
                Command::RelayOutcome(RelayOutcome {
                    participant_id,
                    tracks,
                    result,
                }),
            );
        });
    }

    /// A relay task is done: the relay is open, or dropped with a retry later. Returns the
    /// tracks it brings here when it opened.
    pub fn relay_outcome(&mut self, outcome: RelayOutcome, sfu: &Sfu) -> Vec<TrackId> {
        let early: Vec<_> = match &outcome.result {
            Ok((session, _)) => {
                let (theirs, others) = std::mem::take(&mut self.early_wishes)
                    .into_iter()
                    .partition(|(s, _, _)| s == session);
                self.early_wishes = others;
                theirs
            }
            Err(_) => Vec::new(),
        };
        let publisher = self.publishers.get_mut(&outcome.participant_id);
        let relay = publisher.and_then(|p| {
            let i = p
                .relays
                .iter()
                .position(|r| r.open.is_none() && r.tracks == outcome.tracks)?;
            Some((p, i))
        });
        let mut opened_tracks = Vec::new();
        match (relay, outcome.result) {
            (Some((publisher, i)), Ok(opened)) => {
                publisher.relays[i].open = Some(opened);
                opened_tracks = outcome.tracks;
            }
            (Some((publisher, i)), Err(_)) => {
                publisher.relays.remove(i);
                publisher.retry_at = Some(Instant::now() + RELAY_RETRY);
            }
            // The publisher went away meanwhile: close what was opened for it.
            (None, Ok((session, location))) => self.spawn_close(sfu, session, location),
            (None, Err(_)) => {}
        }
        for (session, track, wish) in early {
            self.tell_wish(session, track, wish);
        }
        if !self.opening() {
            self.early_wishes.clear();
        }
        opened_tracks
    }

    /// The relay `session` ended on its own (its connection failed, or the publishing node
    /// closed it): its tracks are relayed again later if they are still wanted.
    pub fn relay_ended(&mut self, session: PeerId) {
        for publisher in self.publishers.values_mut() {
            let before = publisher.relays.len();
            publisher
                .relays
                .retain(|r| !matches!(r.open, Some((s, _)) if s == session));
            if publisher.relays.len() != before {
                publisher.retry_at = Some(Instant::now() + RELAY_RETRY);
            }
        }
    }

    /// Whether a relay is being opened (its outcome is on its way to the room).
    pub fn opening(&self) -> bool {
        self.publishers
            .values()
            .any(|p| p.relays.iter().any(|r| r.open.is_none()))
    }

    /// Whether `session` is one of this room's open relays.
    pub fn is_relay(&self, session: PeerId) -> bool {
        self.publishers.values().any(|p| {
            p.relays
                .iter()
                .any(|r| matches!(r.open, Some((s, _)) if s == session))
        })
    }

    fn close(&self, publisher: RemotePublisher, sfu: &Sfu) {
        for relay in publisher.relays {
            if let Some((session, location)) = relay.open {
                self.spawn_close(sfu, session, location);
            }
        }
    }

    /// Closes a relay here and at the publisher's node, off the room task.
    fn spawn_close(&self, sfu: &Sfu, session: PeerId, location: String) {
        let (settings, sfu, meeting_id) =
            (self.settings.clone(), sfu.clone(), self.meeting_id.clone());
        tokio::spawn(async move {
            close_relay(&settings, &sfu, &meeting_id, session, &location).await;
        });
    }

    /// Closes every relay (the room task ends).
    pub fn close_all(&mut self, sfu: &Sfu) {
        let publishers: Vec<RemotePublisher> = self.publishers.drain().map(|(_, p)| p).collect();
        for publisher in publishers {
            self.close(publisher, sfu);
        }
    }
}

/// A relay request, as the publisher's node reads it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayRequest {
    pub meeting_id: String,
    /// The publisher's identity.
    pub publisher: String,
    /// The publishing node's ids of the tracks, in the offer's order.
    pub tracks: Vec<String>,
    pub offer: String,
}

/// The publisher's node's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayAnswer {
    pub answer: String,
    /// Its relay session (a viewer there), to close it.
    pub session: String,
}

async fn open_relay(
    settings: &Settings,
    sfu: &Sfu,
    meeting_id: &str,
    identity: &str,
    http_url: &str,
    tracks: Vec<RelayedTrack>,
) -> Result<(PeerId, String), String> {
    let room = RoomId(meeting_id.to_owned());
    let request_tracks = tracks.iter().map(|t| t.origin.to_string()).collect();
    let negotiated = sfu
        .open_relay(room.clone(), ParticipantId(identity.to_owned()), tracks)
        .await
        .map_err(|e| e.to_string())?;
    let session = negotiated.session;
    let request = RelayRequest {
        meeting_id: meeting_id.to_owned(),
        publisher: identity.to_owned(),
        tracks: request_tracks,
        offer: negotiated.answer,
    };
    let url = format!("{}{RELAYS_PATH}", http_url.trim_end_matches('/'));
    let response = settings
        .http
        .post(&url)
        .header(crate::state::RELAY, &settings.forward_key)
        .json(&request)
        .send()
        .await;
    let answer = match response {
        Ok(r) if r.status().is_success() => {
            r.json::<RelayAnswer>().await.map_err(|e| e.to_string())
        }
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            close_relay(settings, sfu, meeting_id, session, "").await;
            return Err(e);
        }
    };
    let location = format!("{url}/{meeting_id}/{}", answer.session);
    if let Err(e) = sfu.relay_answer(session, answer.answer).await {
        close_relay(settings, sfu, meeting_id, session, &location).await;
        return Err(e.to_string());
    }
    Ok((session, location))
}

/// Sends layer choices to the relays' other ends, in the order they were made. One that did
/// not get through (the other node busy or restarting) is tried again a few times; one that
/// was refused is not (the relay is gone there, and closes here too).
async fn wish_task(
    settings: Arc<Settings>,
    mut wishes: mpsc::UnboundedReceiver<(String, TrackId, RelayWish)>,
) {
    while let Some((location, track, wish)) = wishes.recv().await {
        let url = format!("{location}/tracks/{track}");
        for attempt in 1..=WISH_ATTEMPTS {
            let response = settings
                .http
                .put(&url)
                .header(crate::state::RELAY, &settings.forward_key)
                .json(&wish)
                .send()
                .await;
            match response {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status().is_client_error() => {
                    tracing::info!(%url, status = %r.status(), "relay wish refused");
                    break;
                }
                Ok(r) => tracing::info!(%url, status = %r.status(), attempt, "relay wish failed"),
                Err(e) => tracing::info!(%url, error = %e, attempt, "relay wish not sent"),
            }
            tokio::time::sleep(WISH_RETRY).await;
        }
    }
}

/// Closes a relay here and, at `location` (when known), its other end.
async fn close_relay(
    settings: &Settings,
    sfu: &Sfu,
    meeting_id: &str,
    session: PeerId,
    location: &str,
) {
    let room = RoomId(meeting_id.to_owned());
    // As the room's own: whoever the relay's identity is.
    let requester = Requester {
        identity: ParticipantId(String::new()),
        moderator: true,
    };
    let _ = sfu.close(room, session, requester).await;
    if !location.is_empty() {
        let _ = settings
            .http
            .delete(location)
            .header(crate::state::RELAY, &settings.forward_key)
            .send()
            .await;
    }
}

/// Does the room's Redis calls: writes its members' entries and events as they come, and
/// every `sync` reads the other nodes' members and new events and tells the room. Ends when
/// the room drops its [`Cascade`] (after writing what was queued).
async fn sync_task(
    settings: Arc<Settings>,
    meeting_id: String,
    signaling: Signaling,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let cluster = &settings.cluster;
    let me = cluster.node_id().to_owned();
    let mut tick = tokio::time::interval(settings.sync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<String>> = None;
    let mut after: Option<String> = None;
    let mut ticks = 0u32;
    // This node's entries, written again every few ticks: the hash expires unless renewed,
    // and Redis may have lost it (a restart).
    let mut own: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            message = outgoing.recv() => match message {
                Some(Outgoing::Member { participant_id, entry }) => {
                    match &entry {
                        Some(json) => own.insert(participant_id.clone(), json.clone()),
                        None => own.remove(&participant_id),
                    };
                    if let Err(e) = cluster.put_members(&meeting_id, &[(participant_id, entry)]).await {
                        tracing::warn!(meeting = %meeting_id, error = %e, "cascade member not shared");
                    }
                }
                Some(Outgoing::Event(json)) => {
                    if let Err(e) = cluster.post_event(&meeting_id, &json).await {
                        tracing::warn!(meeting = %meeting_id, error = %e, "cascade event not shared");
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                if ticks.is_multiple_of(RENEW_TICKS) && !own.is_empty() {
                    let entries: Vec<(String, Option<String>)> =
                        own.iter().map(|(p, e)| (p.clone(), Some(e.clone()))).collect();
                    let _ = cluster.put_members(&meeting_id, &entries).await;
                }
                let Ok(nodes) = cluster.nodes().await else { continue };
                let live: HashSet<String> = nodes.into_iter().map(|n| n.id).collect();
                if let Ok(entries) = cluster.members(&meeting_id).await {
                    let mut others: Vec<String> = entries
                        .into_iter()
                        .filter(|json| {
                            serde_json::from_str::<MemberEntry>(json)
                                .is_ok_and(|e| e.node != me && live.contains(&e.node))
                        })
                        .collect();
                    others.sort();
                    ticks = ticks.wrapping_add(1);
                    if last.as_ref() != Some(&others) {
                        last = Some(others.clone());
                        signaling.tell_room(&meeting_id, Command::RemoteMembers(others));
                    } else if ticks.is_multiple_of(RETRY_TICKS) {
                        // Relays that failed are made again once their wait is over.
                        signaling.tell_room(&meeting_id, Command::CascadeTick);
                    }
                }
                if let Ok((events, next)) = cluster.events_after(&meeting_id, after.as_deref()).await {
                    after = next;
                    for json in events {
                        let Ok(event) = serde_json::from_str::<Event>(&json) else { continue };
                        if event.node != me {
                            signaling.tell_room(&meeting_id, Command::RemoteEvent(event.kind));
                        }
                    }
                }
            }
        }
    }
}
