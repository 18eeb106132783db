//! `GET /ws`: one task per WebSocket. It authenticates the socket (`?token=` at the upgrade, or
//! the token of the first `join`; `?wait_token=` for the waiting room), enforces the limits
//! (message size and rate, refused-message budget, heartbeats, idle and join timeouts), parses
//! messages, and hands a joined socket's messages to its participant session (`session.rs`).
//!
//! A refused message gets an `error` and the socket stays; only repeated abuse closes it (1008).
//! Must never: block on a slow client (the session's queue to the socket is bounded), or panic on
//! anything a client sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tracing::{debug, info, Instrument};

use super::protocol::{self, close, ClientMessage, ServerMessage, WaitingView, PROTOCOL_VERSION};
use super::rooms::{WaitEvent, WaitingGuard};
use super::session::{self, Bucket, Input, Outbound, SocketHandle};
use super::sockets::Refused;
use super::{Context, Live};
use crate::domain::access::WaitClaims;
use crate::domain::meetings::{self as rules, JoinOutcome, JoinRequest};
use crate::domain::token::{JoinClaims, TokenError};
use crate::http_error::ApiError;
use crate::state::AppState;

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// How long a closing socket waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What the upgrade request carried.
enum Credentials {
    None,
    Token(Box<JoinClaims>),
    Wait { claims: WaitClaims, token: String },
}

/// `GET /ws[?token=<join token> | ?wait_token=<wait token>]`. A bad token in the query is
/// refused before the upgrade (401, JSON error envelope).
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    axum::Extension(live): axum::Extension<Live>,
    ConnectInfo(remote): ConnectInfo<std::net::SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let state = Context { app, live };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let status = rejection.status();
            return ApiError::new(
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    status
                } else {
                    StatusCode::UPGRADE_REQUIRED
                },
                "websocket_required",
                "GET /ws is a WebSocket endpoint (Upgrade: websocket)",
            )
            .into_response();
        }
    };
    if !state.accepting.load(Ordering::Relaxed) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .into_response();
    }
    let credentials = if let Some(token) = query.get("token") {
        match state.keys.verify(token) {
            Ok(claims) => Credentials::Token(Box::new(claims)),
            Err(e) => return ApiError::unauthorized(token_problem(e)).into_response(),
        }
    } else if let Some(token) = query.get("wait_token") {
        match state.access.verify_wait(token) {
            Some(claims) => Credentials::Wait {
                claims,
                token: token.clone(),
            },
            None => {
                return ApiError::unauthorized("the wait token is invalid or expired")
                    .into_response()
            }
        }
    } else {
        Credentials::None
    };
    let config = &state.config;
    let slot = match state.live.sockets.open(
        remote.ip(),
        config.ws_max_connections,
        config.ws_max_connections_per_address,
    ) {
        Ok(slot) => slot,
        Err(Refused::ServerFull) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "the server holds as many WebSockets as it may; try again later",
            )
            .into_response()
        }
        Err(Refused::AddressFull) => {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "too many WebSockets from your address",
            )
            .into_response()
        }
    };
    let limit = state.config.ws_max_message_bytes;
    ws.max_message_size(limit.saturating_mul(4))
        .max_frame_size(limit.saturating_mul(4))
        .on_upgrade(move |socket| {
            let id = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!("ws", socket = id);
            async move {
                Connection::new(state, socket, id).run(credentials).await;
                drop(slot);
            }
            .instrument(span)
        })
}

/// Whether a read failed on the transport's size limit (the socket is still writable then).
fn is_too_big(error: &axum::Error) -> bool {
    let source = std::error::Error::source(error);
    matches!(
        source.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

fn token_problem(error: TokenError) -> &'static str {
    match error {
        TokenError::Expired => "the join token has expired",
        TokenError::NotYetValid => "the join token is not valid yet",
        TokenError::Invalid => "the join token is invalid",
    }
}

/// Where a socket is in its life.
enum Phase {
    /// Not joined yet; `claims` when the upgrade carried a valid token.
    Open {
        claims: Option<Box<JoinClaims>>,
        deadline: Instant,
    },
    /// In the waiting room: only `admitted`/`denied` (and `ping`, `leave`) here.
    Waiting {
        meeting_id: String,
        participant_id: String,
        token: String,
        events: mpsc::UnboundedReceiver<WaitEvent>,
        _guard: WaitingGuard,
    },
    /// Joined: messages go to the session, whose messages come back on `outbound`.
    Joined {
        session: mpsc::UnboundedSender<Input>,
        outbound: mpsc::Receiver<Outbound>,
    },
}

/// Whether the socket goes on after handling something.
enum Flow {
    Continue,
    /// The socket is closed (or gone); stop.
    Stop,
}

struct Connection {
    state: Context,
    socket: WebSocket,
    id: u64,
    rate: Bucket,
    violations: u32,
    last_heard: Instant,
}

/// Something that happened to the socket's phase.
enum PhaseEvent {
    Outbound(Option<Outbound>),
    Wait(Option<WaitEvent>),
    JoinTimeout,
}

async fn next_phase_event(phase: &mut Phase) -> PhaseEvent {
    match phase {
        Phase::Open { deadline, .. } => {
            tokio::time::sleep_until(*deadline).await;
            PhaseEvent::JoinTimeout
        }
        Phase::Waiting { events, .. } => PhaseEvent::Wait(events.recv().await),
        Phase::Joined { outbound, .. } => PhaseEvent::Outbound(outbound.recv().await),
    }
}

impl Connection {
    fn new(state: Context, socket: WebSocket, id: u64) -> Self {
        let config = &state.config;
        let rate = Bucket::new(
            config.ws_message_burst,
            f64::from(config.ws_messages_per_second),
        );
        Self {
            state,
            socket,
            id,
            rate,
            violations: 0,
            last_heard: Instant::now(),
        }
    }

    async fn run(mut self, credentials: Credentials) {
        debug!("socket open");
        let mut phase = match credentials {
            Credentials::Wait { claims, token } => match self.enter_waiting(claims, token).await {
                Some(phase) => phase,
                None => return,
            },
            Credentials::Token(claims) => self.open(Some(claims)),
            Credentials::None => self.open(None),
        };
        let config = self.state.config.clone();
        let mut ping = tokio::time::interval_at(
            Instant::now() + config.ws_ping_interval,
            config.ws_ping_interval,
        );
        loop {
            let idle_deadline = self.last_heard + config.ws_idle_timeout;
            let flow = tokio::select! {
                frame = self.socket.recv() => match frame {
                    Some(Ok(message)) => {
                        self.last_heard = Instant::now();
                        self.on_frame(message, &mut phase).await
                    }
                    Some(Err(e)) if is_too_big(&e) => {
                        info!("frame over the hard size limit; closing");
                        self.close(close::TOO_BIG, "message too big").await;
                        Flow::Stop
                    }
                    // Closed by the client, or the connection broke.
                    _ => Flow::Stop,
                },
                event = next_phase_event(&mut phase) => self.on_phase_event(event, &mut phase).await,
                _ = ping.tick() => {
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    info!("socket idle; closing");
                    self.close(close::TIMEOUT, "idle timeout").await;
                    Flow::Stop
                }
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        // Whatever ended the socket, a joined session holds the seat for the grace period,
        // unless it closed the socket itself (then it no longer knows this socket).
        if let Phase::Joined { session, .. } = &phase {
            let _ = session.send(Input::Detached { socket: self.id });
        }
        debug!("socket closed");
    }

    fn open(&self, claims: Option<Box<JoinClaims>>) -> Phase {
        Phase::Open {
            claims,
            deadline: Instant::now() + self.state.config.ws_join_timeout,
        }
    }

    // ---- frames from the client -------------------------------------------------------------

    async fn on_frame(&mut self, message: Message, phase: &mut Phase) -> Flow {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return self
                    .violation("bad_message", "only text frames are accepted", None)
                    .await
            }
            // Pings are answered by the WebSocket layer; pongs only prove the client is alive.
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Close(_) => {
                // The closing handshake (RFC 6455 §5.5.1): the library queued the echo of the
                // client's close frame; flushing sends it, so the client sees a clean close
                // instead of 1006.
                let _ = futures_util::SinkExt::flush(&mut self.socket).await;
                return Flow::Stop;
            }
        };
        let limit = self.state.config.ws_max_message_bytes;
        if text.len() > limit {
            return self
                .violation(
                    "message_too_large",
                    &format!("messages are at most {limit} bytes"),
                    None,
                )
                .await;
        }
        if !self.rate.take() {
            return self
                .violation("rate_limited", "too many messages; slow down", None)
                .await;
        }
        let (message, reference) = match protocol::parse(text.as_str()) {
            Ok(parsed) => parsed,
            Err(e) => return self.violation(e.code, &e.message, e.reference).await,
        };
        if message == ClientMessage::Ping {
            return self.send(&ServerMessage::Pong { reference }).await;
        }
        match phase {
            Phase::Open { claims, .. } => match message {
                ClientMessage::Join {
                    token,
                    version,
                    resume,
                    auto_subscribe,
                } => {
                    let claims = claims.take();
                    let manual = auto_subscribe == Some(false);
                    self.join(phase, claims, (token, manual), version, resume, reference)
                        .await
                }
                ClientMessage::Leave => {
                    self.close(close::NORMAL, "left").await;
                    Flow::Stop
                }
                _ => {
                    self.send(&ServerMessage::error(
                        "not_joined",
                        "send join first",
                        reference,
                    ))
                    .await
                }
            },
            Phase::Waiting { .. } => match message {
                ClientMessage::Leave => {
                    self.close(close::NORMAL, "left").await;
                    Flow::Stop
                }
                _ => {
                    self.send(&ServerMessage::error(
                        "not_admitted",
                        "you are in the waiting room; wait for admitted",
                        reference,
                    ))
                    .await
                }
            },
            Phase::Joined { session, .. } => {
                let input = Input::Client {
                    socket: self.id,
                    message,
                    reference,
                };
                if session.send(input).is_err() {
                    self.close(close::SESSION_GONE, "session ended").await;
                    return Flow::Stop;
                }
                Flow::Continue
            }
        }
    }

    /// `join`: authenticates (the message's token, else the upgrade's) and enters the meeting.
    async fn join(
        &mut self,
        phase: &mut Phase,
        upgrade_claims: Option<Box<JoinClaims>>,
        (token, manual): (Option<String>, bool),
        version: Option<u32>,
        resume: bool,
        reference: Option<String>,
    ) -> Flow {
        if let Some(version) = version.filter(|v| *v != PROTOCOL_VERSION) {
            // The socket stays unjoined, under the join deadline it had.
            if let Phase::Open { claims, .. } = phase {
                *claims = upgrade_claims;
            }
            return self
                .send(&ServerMessage::error(
                    "unsupported_version",
                    format!(
                        "this server speaks protocol version {PROTOCOL_VERSION}, not {version}"
                    ),
                    reference,
                ))
                .await;
        }
        let claims = match (token, upgrade_claims) {
            (Some(token), _) => match self.state.keys.verify(&token) {
                Ok(claims) => claims,
                Err(e) => {
                    return self
                        .refuse(
                            "unauthorized",
                            token_problem(e),
                            close::UNAUTHORIZED,
                            reference,
                        )
                        .await
                }
            },
            (None, Some(claims)) => *claims,
            (None, None) => {
                return self
                    .refuse(
                        "unauthorized",
                        "a join token is required: ?token= or join {token}",
                        close::UNAUTHORIZED,
                        reference,
                    )
                    .await
            }
        };
        let (outbound_tx, outbound) = mpsc::channel(self.state.config.ws_send_queue);
        let handle = SocketHandle {
            id: self.id,
            outbound: outbound_tx,
        };
        match session::join(&self.state, &claims, resume, manual, handle).await {
            Ok(session) => {
                info!(room = %claims.room, identity = %claims.sub, resume, "socket joined");
                *phase = Phase::Joined { session, outbound };
                Flow::Continue
            }
            Err(failure) => {
                info!(room = %claims.room, identity = %claims.sub, code = failure.code, "join refused");
                if let Some(ws_url) = failure.ws_url {
                    let _ = self
                        .send(&ServerMessage::Error {
                            code: failure.code.to_owned(),
                            message: failure.message,
                            reference,
                            ws_url: Some(ws_url),
                        })
                        .await;
                    self.close(failure.close, failure.code).await;
                    return Flow::Stop;
                }
                self.refuse(failure.code, &failure.message, failure.close, reference)
                    .await
            }
        }
    }

    /// A refused message: `error`, and one more violation (closing the socket over the budget).
    async fn violation(&mut self, code: &str, message: &str, reference: Option<String>) -> Flow {
        self.violations += 1;
        if let Flow::Stop = self
            .send(&ServerMessage::error(code, message, reference))
            .await
        {
            return Flow::Stop;
        }
        if self.violations > self.state.config.ws_max_violations {
            info!(
                violations = self.violations,
                "too many refused messages; closing"
            );
            self.close(close::POLICY, "too many refused messages").await;
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// `error`, then close with `code`.
    async fn refuse(
        &mut self,
        error: &str,
        message: &str,
        code: u16,
        reference: Option<String>,
    ) -> Flow {
        let _ = self
            .send(&ServerMessage::error(error, message, reference))
            .await;
        self.close(code, error).await;
        Flow::Stop
    }

    // ---- the phase's own events ---------------------------------------------------------------

    async fn on_phase_event(&mut self, event: PhaseEvent, phase: &mut Phase) -> Flow {
        match event {
            PhaseEvent::JoinTimeout => {
                info!("no join in time; closing");
                self.close(close::TIMEOUT, "no join in time").await;
                Flow::Stop
            }
            PhaseEvent::Outbound(Some(Outbound::Frame(frame))) => {
                match self.socket.send(Message::Text(frame.as_ref().into())).await {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Stop,
                }
            }
            PhaseEvent::Outbound(Some(Outbound::Close { code, reason })) => {
                // The session let go of this socket: it must not hear of it again.
                *phase = self.open(None);
                self.close(code, &reason).await;
                Flow::Stop
            }
            PhaseEvent::Outbound(None) => {
                // The session dropped this socket: its queue was full (the client does not read).
                *phase = self.open(None);
                self.close(close::POLICY, "not reading").await;
                Flow::Stop
            }
            PhaseEvent::Wait(event) => self.on_wait_event(event, phase).await,
        }
    }

    // ---- the waiting room ---------------------------------------------------------------------

    /// A waiting-room socket: registers it, then tells where its participant stands.
    async fn enter_waiting(&mut self, claims: WaitClaims, token: String) -> Option<Phase> {
        let store = &self.state.store;
        let participant = match store.participant(&claims.meeting, &claims.sub).await {
            Ok(p) => p,
            Err(_) => {
                self.refuse(
                    "invalid_wait_token",
                    "the wait token names no participant",
                    close::UNAUTHORIZED,
                    None,
                )
                .await;
                return None;
            }
        };
        // The meeting's moderators and its decisions are on the node serving it.
        if let Some(cluster) = &self.state.cluster {
            if let crate::cluster::Owner::Node(node) = cluster.place(&claims.meeting).await {
                let _ = self
                    .send(&ServerMessage::Error {
                        code: "wrong_node".to_owned(),
                        message: format!("this meeting is served by node {}: wait there", node.id),
                        reference: None,
                        ws_url: Some(crate::cluster::ws_url(&node.http_url)),
                    })
                    .await;
                self.close(close::WRONG_NODE, "wrong_node").await;
                return None;
            }
        }
        let view = WaitingView {
            participant_id: participant.id.clone(),
            display_name: participant.display_name.clone(),
            user_id: participant.user_id.clone(),
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        // Registered before the status is read, so a decision made in between still arrives.
        let guard = self
            .state
            .live
            .rooms
            .wait(&claims.meeting, view.clone(), events_tx.clone());
        let meeting_closed = match store.meeting(&claims.meeting).await {
            Ok(m) => rules::is_closed(&m.status),
            Err(_) => true,
        };
        let status = store
            .participant(&claims.meeting, &claims.sub)
            .await
            .map(|p| p.status)
            .unwrap_or_default();
        let now = match status.as_str() {
            _ if meeting_closed => Some(WaitEvent::MeetingEnded),
            "waiting" => None,
            "joined" => Some(WaitEvent::Admitted),
            "denied" => Some(WaitEvent::Denied),
            "kicked" => Some(WaitEvent::Kicked { banned: false }),
            _ => {
                self.refuse(
                    "session_gone",
                    "this waiting seat was given up; join again",
                    close::SESSION_GONE,
                    None,
                )
                .await;
                return None;
            }
        };
        if let Flow::Stop = self
            .send(&ServerMessage::Waiting { participant: view })
            .await
        {
            return None;
        }
        if let Some(event) = now {
            let _ = events_tx.send(event);
        }
        info!(meeting = %claims.meeting, participant = %claims.sub, "socket waiting");
        Some(Phase::Waiting {
            meeting_id: claims.meeting,
            participant_id: claims.sub,
            token,
            events,
            _guard: guard,
        })
    }

    async fn on_wait_event(&mut self, event: Option<WaitEvent>, phase: &mut Phase) -> Flow {
        let Phase::Waiting {
            meeting_id,
            participant_id,
            token,
            ..
        } = phase
        else {
            return Flow::Continue;
        };
        let (meeting_id, participant_id, token) =
            (meeting_id.clone(), participant_id.clone(), token.clone());
        match event {
            Some(WaitEvent::Admitted) => {
                let context = rules::JoinContext {
                    store: &self.state.store,
                    keys: &self.state.keys,
                    access: &self.state.access,
                    config: &self.state.config,
                };
                let request = JoinRequest {
                    wait_token: Some(token),
                    ..JoinRequest::default()
                };
                match rules::join(context, &meeting_id, request).await {
                    Ok(JoinOutcome::Joined(admission)) => {
                        let claims = self.state.keys.verify(&admission.join_token).ok();
                        let flow = self
                            .send(&ServerMessage::Admitted {
                                participant_id,
                                join_token: Some(admission.join_token),
                                role: Some(admission.role.as_str().to_owned()),
                            })
                            .await;
                        // Admitted: the socket may now `join` (with or without the token).
                        *phase = self.open(claims.map(Box::new));
                        flow
                    }
                    Ok(JoinOutcome::Waiting { .. }) => Flow::Continue,
                    Err(rules::JoinError::Denied) => self.denied(participant_id).await,
                    Err(e) => {
                        let api = ApiError::from(e);
                        self.refuse(api.code, &api.message, close::SESSION_GONE, None)
                            .await
                    }
                }
            }
            Some(WaitEvent::Denied) => self.denied(participant_id).await,
            Some(WaitEvent::Kicked { banned }) => {
                let _ = self
                    .send(&ServerMessage::Kicked {
                        reason: "removed by a moderator".into(),
                        banned,
                        by: None,
                    })
                    .await;
                self.close(close::KICKED, "kicked").await;
                Flow::Stop
            }
            Some(WaitEvent::MeetingEnded) => {
                let _ = self.send(&ServerMessage::MeetingEnded { by: None }).await;
                self.close(close::MEETING_ENDED, "meeting ended").await;
                Flow::Stop
            }
            Some(WaitEvent::Shutdown) | None => {
                self.close(close::GOING_AWAY, "server shutting down").await;
                Flow::Stop
            }
        }
    }

    async fn denied(&mut self, participant_id: String) -> Flow {
        let _ = self.send(&ServerMessage::Denied { participant_id }).await;
        self.close(close::DENIED, "denied").await;
        Flow::Stop
    }

    // ---- writing -----------------------------------------------------------------------------

    async fn send(&mut self, message: &ServerMessage) -> Flow {
        match self
            .socket
            .send(Message::Text(message.to_text().into()))
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    /// Sends a close frame and waits briefly for the client's, so the close handshake completes.
    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self.socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
