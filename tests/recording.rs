//! Recordings, checked from the outside: a participant publishes real VP8 (or H264) and Opus
//! over the WebSocket flow, the host records over REST, and Debian's ffprobe/ffmpeg read the
//! files the download endpoint serves.

mod common;
#[path = "signaling/ws_client.rs"]
mod ws_client;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::api::{assert_error, TestUser};
use common::media::{self, Scratch};
use common::process::Process;
use common::{PgSchema, TempDir, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use ws_client::MediaClient;

async fn seat(server: &TestServer, meeting: &Value, user: &TestUser) -> String {
    let path = format!("/meetings/{}/join", meeting["code"].as_str().unwrap());
    let reply = server
        .call(Method::POST, &path, Some(&user.token), Some(json!({})))
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    reply.1["join_token"].as_str().unwrap().to_owned()
}

struct Meeting {
    host: TestUser,
    meeting: Value,
    id: String,
}

async fn live_meeting(server: &TestServer) -> Meeting {
    let host = server.user("host").await;
    let (status, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "recorded"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().unwrap().to_owned();
    Meeting { host, meeting, id }
}

/// Sends `frames` and `packets` paced in real time on the client's `video`/`audio` tracks
/// until `stop` (or the media runs out, then it loops from the start, timestamps going on).
fn stream(
    client: Arc<MediaClient>,
    video: Option<(&'static str, Vec<Bytes>, bool)>,
    audio: Option<(&'static str, Vec<Bytes>)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let (mut frame, mut packet) = (0usize, 0usize);
        while !stop.load(Ordering::Relaxed) {
            let elapsed = start.elapsed();
            if let Some((track, frames, h264)) = &video {
                while media::FRAME_INTERVAL * frame as u32 <= elapsed {
                    let data = &frames[frame % frames.len()];
                    let payloads = media::packetize(*h264, data);
                    let n = payloads.len();
                    let ts = (frame as u32).wrapping_mul(media::VIDEO_STEP);
                    for (i, payload) in payloads.into_iter().enumerate() {
                        client.send_packet(track, payload, i + 1 == n, ts).await;
                    }
                    frame += 1;
                }
            }
            if let Some((track, packets)) = &audio {
                while Duration::from_millis(20) * packet as u32 <= elapsed {
                    let data = packets[packet % packets.len()].clone();
                    let ts = (packet as u32).wrapping_mul(media::AUDIO_STEP);
                    client.send_packet(track, data, true, ts).await;
                    packet += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The files in a recording's directory.
fn recording_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Downloads `url` into `to`; returns the response headers.
async fn download(
    server: &TestServer,
    token: &str,
    url: &str,
    to: &Path,
) -> reqwest::header::HeaderMap {
    let response = server
        .http
        .get(format!("{}{url}", server.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    std::fs::write(to, &bytes).unwrap();
    headers
}

/// The file of `source` for participant `pid`.
fn file_of<'a>(recording: &'a Value, pid: &str, source: &str) -> &'a Value {
    recording["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["participant_id"] == pid && f["source"] == source)
        .unwrap_or_else(|| panic!("no {source} file of {pid}: {recording}"))
}

fn streams_of(probe: &Value) -> Vec<(String, String)> {
    probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or("").to_owned(),
                s["codec_name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn recorded_publisher(
    server: &TestServer,
    m: &Meeting,
    user: &TestUser,
    name: &str,
    h264: bool,
) -> MediaClient {
    let mut client =
        MediaClient::join(server, name, &seat(server, &m.meeting, user).await, false).await;
    if h264 {
        client.video_codec = Some(ws_client::h264());
    }
    client
        .publish(&[("camera", "cam"), ("microphone", "mic")])
        .await;
    client.wait_publisher_connected().await;
    client
}

/// A live meeting whose host, alice, publishes real camera (VP8, or H264) and microphone
/// media in real time until `stop` is set and `sender` awaited.
struct Publishing {
    scratch: Scratch,
    server: TestServer,
    m: Meeting,
    alice: Arc<MediaClient>,
    stop: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<()>,
}

impl Publishing {
    async fn start(
        name: &str,
        h264: bool,
        adjust: impl FnOnce(&mut convene::config::Config),
    ) -> Self {
        let scratch = Scratch::new(name);
        // Two seconds, looped: each lap starts with a keyframe.
        let frames = if h264 {
            media::h264_frames(&scratch.0, 2)
        } else {
            media::vp8_frames(&scratch.0, 2)
        };
        let packets = media::opus_packets(&scratch.0, 2);
        let server = TestServer::start_with(adjust).await;
        let m = live_meeting(&server).await;
        let alice = Arc::new(recorded_publisher(&server, &m, &m.host, "alice", h264).await);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = stream(
            alice.clone(),
            Some(("cam", frames, h264)),
            Some(("mic", packets)),
            stop.clone(),
        );
        Self {
            scratch,
            server,
            m,
            alice,
            stop,
            sender,
        }
    }
}

fn skip_without_ffmpeg() -> bool {
    if media::ffmpeg_available() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg/ffprobe are needed (scripts/test installs them as root)"
    );
    eprintln!("skipped: ffmpeg/ffprobe not installed (sudo apt-get install -y ffmpeg)");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vp8_and_opus_participant_is_recorded_to_webm_that_decodes() {
    if skip_without_ffmpeg() {
        return;
    }
    let Publishing {
        scratch,
        server,
        m,
        alice,
        stop,
        sender,
    } = Publishing::start("recording", false, |_| {}).await;

    let recordings = format!("/meetings/{}/recordings", m.id);
    // Nobody but the host and moderators: another user is refused.
    let stranger = server.user("stranger").await;
    let refused = server
        .call(
            Method::POST,
            &recordings,
            Some(&stranger.token),
            Some(json!({})),
        )
        .await;
    assert!(
        refused.0 == StatusCode::FORBIDDEN || refused.0 == StatusCode::NOT_FOUND,
        "{refused:?}"
    );
    let (status, started) = server
        .call(
            Method::POST,
            &recordings,
            Some(&m.host.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["status"], "recording");
    let id = started["id"].as_str().unwrap().to_owned();
    let began = Instant::now();
    // Everyone is told (the page shows REC).
    let told = alice_ws_expect(&alice, "recording_started").await;
    assert_eq!(told["recording_id"], id.as_str());
    // A second start while it runs is a conflict.
    let again = server
        .call(Method::POST, &recordings, Some(&m.host.token), None)
        .await;
    assert_error(&again, StatusCode::CONFLICT, "recording_running");

    tokio::time::sleep(Duration::from_secs(10)).await;
    let stopped = stop_recording(&server, &m, &id).await;
    let recorded_for = began.elapsed().as_secs_f64();
    assert_eq!(stopped["status"], "ready", "{stopped}");
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
    let told = alice_ws_expect(&alice, "recording_stopped").await;
    assert_eq!(told["status"], "ready");

    let file = file_of(&stopped, &alice.participant_id(), "camera");
    assert_eq!(file["content_type"], "video/webm", "{file}");
    assert_eq!(file["codecs"], json!(["vp8", "opus"]));
    assert_eq!(file["kinds"], json!(["audio", "video"]));
    let path = scratch.0.join("out.webm");
    let url = file["url"].as_str().unwrap();
    let headers = download(&server, &m.host.token, url, &path).await;
    assert_eq!(headers["content-type"], "video/webm");
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(file["size_bytes"].as_u64(), Some(size));
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        size.to_string()
    );

    let probe = media::probe(&path);
    let mut streams = streams_of(&probe);
    streams.sort();
    assert_eq!(
        streams,
        vec![
            ("audio".to_owned(), "opus".to_owned()),
            ("video".to_owned(), "vp8".to_owned())
        ],
        "{probe}"
    );
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    assert!(
        (duration - recorded_for).abs() <= recorded_for * 0.1,
        "duration {duration} s for {recorded_for:.1} s recorded"
    );
    let errors = media::decode_errors(&path);
    assert!(errors.is_empty(), "decoding: {errors}");
    // Audio and video cover the same time (within 100 ms at each end).
    let (video_end, audio_end) = (
        media::decoded_seconds(&path, "v:0"),
        media::decoded_seconds(&path, "a:0"),
    );
    assert!(
        (video_end - audio_end).abs() < 0.15,
        "video ends {video_end}, audio {audio_end}"
    );
    // The file starts with the first audio; video joins at its first keyframe (this publisher
    // ignores PLI and sends one every 2 s), at its true time.
    let (video_start, audio_start) = (
        media::frame_times(&path, "v:0")[0],
        media::frame_times(&path, "a:0")[0],
    );
    assert!(audio_start < 0.1, "audio starts at {audio_start}");
    assert!(video_start < 2.2, "video starts at {video_start}");

    // Range: the bytes asked for, 206.
    let ranged = server
        .http
        .get(format!("{}{url}", server.base))
        .bearer_auth(&m.host.token)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        format!("bytes 100-199/{size}")
    );
    let part = ranged.bytes().await.unwrap();
    assert_eq!(&part[..], &std::fs::read(&path).unwrap()[100..200]);
    // Another user's token gets nothing.
    let theirs = server
        .http
        .get(format!("{}{url}", server.base))
        .bearer_auth(&stranger.token)
        .send()
        .await
        .unwrap();
    assert!(
        theirs.status() == StatusCode::FORBIDDEN || theirs.status() == StatusCode::NOT_FOUND,
        "{}",
        theirs.status()
    );

    // Delete removes the files.
    let on_disk: Vec<PathBuf> = recording_files_on_disk(&server, &id);
    assert!(!on_disk.is_empty());
    let deleted = server
        .call(
            Method::DELETE,
            &format!("{recordings}/{id}"),
            Some(&m.host.token),
            None,
        )
        .await;
    assert_eq!(deleted.0, StatusCode::NO_CONTENT, "{:?}", deleted.1);
    assert!(on_disk.iter().all(|p| !p.exists()));
    let gone = server
        .call(
            Method::GET,
            &format!("{recordings}/{id}"),
            Some(&m.host.token),
            None,
        )
        .await;
    assert_error(&gone, StatusCode::NOT_FOUND, "recording_not_found");
}

/// Starts a recording with `body`, lets `run` act while it records, stops it; the stopped
/// recording.
async fn record(server: &TestServer, m: &Meeting, body: Value, seconds: u64) -> Value {
    let recordings = format!("/meetings/{}/recordings", m.id);
    let (status, started) = server
        .call(Method::POST, &recordings, Some(&m.host.token), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop_recording(server, m, &id).await
}

/// Stops recording `id` of `m` as its host; the stopped recording (200 checked).
async fn stop_recording(server: &TestServer, m: &Meeting, id: &str) -> Value {
    let (status, stopped) = server
        .call(
            Method::POST,
            &format!("/meetings/{}/recordings/{id}/stop", m.id),
            Some(&m.host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    stopped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_h264_participant_gives_matroska_that_decodes() {
    if skip_without_ffmpeg() {
        return;
    }
    let Publishing {
        scratch,
        server,
        m,
        alice,
        stop,
        sender,
    } = Publishing::start("recording-h264", true, |_| {}).await;
    let stopped = record(&server, &m, json!({}), 6).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
    assert_eq!(stopped["status"], "ready", "{stopped}");
    let file = file_of(&stopped, &alice.participant_id(), "camera");
    assert_eq!(file["content_type"], "video/x-matroska", "{file}");
    let path = scratch.0.join("out.mkv");
    let headers = download(&server, &m.host.token, file["url"].as_str().unwrap(), &path).await;
    assert_eq!(headers["content-type"], "video/x-matroska");
    let mut streams = streams_of(&media::probe(&path));
    streams.sort();
    assert_eq!(
        streams,
        vec![
            ("audio".to_owned(), "opus".to_owned()),
            ("video".to_owned(), "h264".to_owned())
        ]
    );
    let errors = media::decode_errors(&path);
    assert!(errors.is_empty(), "decoding: {errors}");
    assert!(
        media::frame_times(&path, "v:0").len() > 100,
        "too few video frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audio_only_gives_ogg_opus_and_a_late_joiner_gets_a_file_from_then() {
    if skip_without_ffmpeg() {
        return;
    }
    let scratch = Scratch::new("recording-ogg");
    let frames = media::vp8_frames(&scratch.0, 2);
    let packets = media::opus_packets(&scratch.0, 4);
    let server = TestServer::start().await;
    let m = live_meeting(&server).await;
    let alice = Arc::new(recorded_publisher(&server, &m, &m.host, "alice", false).await);
    let stop = Arc::new(AtomicBool::new(false));
    let a = stream(
        alice.clone(),
        Some(("cam", frames.clone(), false)),
        Some(("mic", packets.clone())),
        stop.clone(),
    );
    let recordings = format!("/meetings/{}/recordings", m.id);
    let (status, started) = server
        .call(
            Method::POST,
            &recordings,
            Some(&m.host.token),
            Some(json!({"audio_only": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["audio_only"], true);
    let id = started["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Bob joins and publishes 3 s in.
    let bob_user = server.user("bob").await;
    let bob = Arc::new(recorded_publisher(&server, &m, &bob_user, "bob", false).await);
    let b = stream(bob.clone(), None, Some(("mic", packets)), stop.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stopped = stop_recording(&server, &m, &id).await;
    stop.store(true, Ordering::Relaxed);
    let _ = (a.await, b.await);
    assert_eq!(stopped["status"], "ready", "{stopped}");
    assert_eq!(stopped["files"].as_array().unwrap().len(), 2, "{stopped}");

    let mut durations = Vec::new();
    for (who, client) in [("alice", &alice), ("bob", &bob)] {
        let file = file_of(&stopped, &client.participant_id(), "camera");
        assert_eq!(file["content_type"], "audio/ogg", "{file}");
        assert_eq!(file["kinds"], json!(["audio"]));
        let path = scratch.0.join(format!("{who}.ogg"));
        let headers = download(&server, &m.host.token, file["url"].as_str().unwrap(), &path).await;
        assert_eq!(headers["content-type"], "audio/ogg");
        assert_eq!(
            streams_of(&media::probe(&path)),
            vec![("audio".to_owned(), "opus".to_owned())]
        );
        let errors = media::decode_errors(&path);
        assert!(errors.is_empty(), "decoding {who}: {errors}");
        durations.push(media::decoded_seconds(&path, "a:0"));
        let started_at =
            chrono::DateTime::parse_from_rfc3339(file["started_at"].as_str().unwrap()).unwrap();
        durations.push(started_at.timestamp_millis() as f64 / 1000.0);
    }
    // Alice's file covers the 7 s; Bob's starts about 3 s later and covers the rest.
    let (alice_len, alice_start, bob_len, bob_start) =
        (durations[0], durations[1], durations[2], durations[3]);
    assert!((6.0..8.0).contains(&alice_len), "alice {alice_len} s");
    assert!(
        (bob_start - alice_start - 3.0).abs() < 1.5,
        "bob starts {} s later",
        bob_start - alice_start
    );
    assert!((2.5..5.0).contains(&bob_len), "bob {bob_len} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mute_is_a_gap_in_time_not_a_skew() {
    if skip_without_ffmpeg() {
        return;
    }
    let Publishing {
        scratch,
        server,
        m,
        alice,
        stop,
        sender,
    } = Publishing::start("recording-mute", false, |_| {}).await;
    let recordings = format!("/meetings/{}/recordings", m.id);
    let (status, started) = server
        .call(Method::POST, &recordings, Some(&m.host.token), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The microphone is muted for 3 s (the SFU stops forwarding it: the recorder gets nothing).
    alice
        .ws
        .send(json!({"type": "mute", "source": "microphone", "muted": true}));
    tokio::time::sleep(Duration::from_secs(3)).await;
    alice
        .ws
        .send(json!({"type": "mute", "source": "microphone", "muted": false}));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = stop_recording(&server, &m, &id).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
    let file = file_of(&stopped, &alice.participant_id(), "camera");
    let path = scratch.0.join("mute.webm");
    download(&server, &m.host.token, file["url"].as_str().unwrap(), &path).await;
    let audio = media::frame_times(&path, "a:0");
    let video = media::frame_times(&path, "v:0");
    let gap = audio.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!(
        (2.5..3.6).contains(&gap),
        "the longest audio gap is {gap} s"
    );
    // After the gap audio is where it belongs: both end together.
    let (audio_end, video_end) = (audio.last().unwrap(), video.last().unwrap());
    assert!(
        (audio_end - video_end).abs() < 0.15,
        "audio ends {audio_end}, video {video_end}"
    );
    let errors = media::decode_errors(&path);
    assert!(errors.is_empty(), "decoding: {errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_the_file_decodes_to_about_the_kill_and_the_restart_closes_it() {
    if skip_without_ffmpeg() {
        return;
    }
    let scratch = Scratch::new("recording-kill");
    let frames = media::vp8_frames(&scratch.0, 2);
    let packets = media::opus_packets(&scratch.0, 2);
    let data_dir = TempDir::new();
    let schema = PgSchema::create().await;
    let database_url = schema.as_ref().map(|s| s.url.clone()).unwrap_or_default();
    let server = Process::start(&data_dir, &database_url).await;
    let host = server.register("rec").await;
    let (status, meeting) = server
        .call("/meetings", Some(&host), Some(json!({"title": "crash"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().unwrap().to_owned();
    let (status, seat) = server
        .call(
            &format!("/meetings/{}/join", meeting["code"].as_str().unwrap()),
            Some(&host),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{seat}");
    let mut alice = MediaClient::join_at(
        server.addr,
        "alice",
        seat["join_token"].as_str().unwrap(),
        false,
    )
    .await;
    alice
        .publish(&[("camera", "cam"), ("microphone", "mic")])
        .await;
    alice.wait_publisher_connected().await;
    let alice = Arc::new(alice);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = stream(
        alice.clone(),
        Some(("cam", frames, false)),
        Some(("mic", packets)),
        stop.clone(),
    );
    let (status, started) = server
        .call(
            &format!("/meetings/{id}/recordings"),
            Some(&host),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let recording = started["id"].as_str().unwrap().to_owned();
    let began = Instant::now();
    // Killed once the file being written plays 4 s (read while it grows, as a player would),
    // not after a fixed time: a loaded machine may start the file late.
    let dir = data_dir.0.join("recordings").join(&recording);
    let deadline = began + Duration::from_secs(40);
    let written = loop {
        let files = recording_files(&dir);
        let seconds = files
            .first()
            .map(|f| media::decoded_seconds(f, "a:0"))
            .unwrap_or(0.0);
        if seconds >= 4.0 {
            break seconds;
        }
        assert!(Instant::now() < deadline, "{seconds} s written, {files:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.kill_9();
    let recorded = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;

    // What the dead process left decodes: at least what played before the kill, at most what
    // was recorded.
    let files = recording_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let errors = media::decode_errors(&files[0]);
    assert!(errors.is_empty(), "decoding what survived: {errors}");
    let survived = media::decoded_seconds(&files[0], "a:0");
    assert!(
        survived >= written && survived <= recorded + 0.5,
        "{survived} s survived: {written} s played before the kill, {recorded} s recorded"
    );

    // The next start closes it with what survived.
    let server = Process::start(&data_dir, &database_url).await;
    let (status, closed) = server
        .call(
            &format!("/meetings/{id}/recordings/{recording}"),
            Some(&host),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["status"], "ready", "{closed}");
    assert_eq!(closed["reason"], "interrupted");
    let file = &closed["files"][0];
    assert_eq!(file["status"], "ready", "{file}");
    let duration = file["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (survived - duration).abs() < 0.5,
        "{duration} s listed, {survived} s decoded"
    );
    assert_eq!(
        file["size_bytes"].as_u64(),
        Some(std::fs::metadata(&files[0]).unwrap().len())
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderators_record_over_the_socket_auto_start_and_the_end_of_the_meeting_stops_it() {
    let server = TestServer::start().await;
    let host = server.user("host").await;
    let (status, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "auto", "settings": {"recording": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().unwrap().to_owned();
    let m = Meeting {
        host,
        meeting,
        id: id.clone(),
    };
    // The meeting records itself once live: its first member is told.
    let mut host_client = MediaClient::join(
        &server,
        "host",
        &seat(&server, &m.meeting, &m.host).await,
        false,
    )
    .await;
    let auto = host_client.ws.expect("recording_started").await;
    assert!(auto.get("by").is_none(), "{auto}");
    let guest = server.user("guest").await;
    let mut guest_client = MediaClient::join(
        &server,
        "guest",
        &seat(&server, &m.meeting, &guest).await,
        false,
    )
    .await;
    // Joining while it records: told at once.
    let told = guest_client.ws.expect("recording_started").await;
    assert_eq!(told["recording_id"], auto["recording_id"]);
    // A participant may not stop it.
    guest_client
        .ws
        .send(json!({"type": "moderate", "action": "stop_recording"}));
    let refused = guest_client.ws.expect("error").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // The host stops it and starts another over the socket.
    host_client
        .ws
        .send(json!({"type": "moderate", "action": "stop_recording"}));
    let stopped = guest_client.ws.expect("recording_stopped").await;
    assert_eq!(stopped["recording_id"], auto["recording_id"]);
    assert_eq!(stopped["status"], "ready");
    host_client
        .ws
        .send(json!({"type": "moderate", "action": "start_recording", "audio_only": true}));
    let second = guest_client.ws.expect("recording_started").await;
    assert_eq!(second["audio_only"], true);
    assert_eq!(second["by"], host_client.participant_id().as_str());
    host_client
        .ws
        .send(json!({"type": "moderate", "action": "start_recording"}));
    let again = host_client.ws.expect("error").await;
    assert_eq!(again["code"], "recording_running", "{again}");
    // Ending the meeting stops it.
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/meetings/{id}/end"),
            Some(&m.host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = guest_client.ws.expect("recording_stopped").await;
    assert_eq!(ended["recording_id"], second["recording_id"]);
    let (status, list) = server
        .call(
            Method::GET,
            &format!("/meetings/{id}/recordings"),
            Some(&m.host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let statuses: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.len(), 2, "{list}");
    assert!(!statuses.contains(&"recording"), "{list}");
    // A recording bot: a join token of this meeting with the record grant manages recordings
    // over REST; the same token without it, or for another room, does not.
    let bot = |room: &str, record: bool| {
        server
            .server
            .state
            .keys
            .sign(&convene::domain::token::JoinClaims::new(
                room,
                "recorder-bot",
                convene::domain::token::Grants {
                    record,
                    ..Default::default()
                },
                Duration::from_secs(600),
            ))
    };
    let listed = server
        .call(
            Method::GET,
            &format!("/meetings/{id}/recordings"),
            Some(&bot(&id, true)),
            None,
        )
        .await;
    assert_eq!(listed.0, StatusCode::OK, "{}", listed.1);
    let no_grant = server
        .call(
            Method::GET,
            &format!("/meetings/{id}/recordings"),
            Some(&bot(&id, false)),
            None,
        )
        .await;
    assert_error(&no_grant, StatusCode::FORBIDDEN, "forbidden");
    let other_room = server
        .call(
            Method::GET,
            &format!("/meetings/{id}/recordings"),
            Some(&bot("elsewhere", true)),
            None,
        )
        .await;
    assert_error(&other_room, StatusCode::NOT_FOUND, "meeting_not_found");
    // A meeting that is not live is not recorded.
    let (status, not_live) = server
        .call(
            Method::POST,
            &format!("/meetings/{id}/recordings"),
            Some(&m.host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{not_live}");
    assert_eq!(not_live["error"]["code"], "meeting_not_live");
}

/// Runs ffmpeg on `sdp` copying `seconds` of what arrives into `out`; the errors it printed.
async fn receive_with_ffmpeg(sdp: &str, dir: &Path, name: &str, seconds: u32) -> (PathBuf, String) {
    let sdp_path = dir.join(format!("{name}.sdp"));
    std::fs::write(&sdp_path, sdp).unwrap();
    let out = dir.join(format!("{name}.mkv"));
    let child = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-v",
            "error",
            "-y",
            "-protocol_whitelist",
            "file,udp,rtp",
            "-i",
        ])
        .arg(&sdp_path)
        .args(["-t", &seconds.to_string(), "-c", "copy"])
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(u64::from(seconds) + 20), child)
        .await
        .expect("ffmpeg received the stream in time")
        .unwrap();
    (out, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rtp_forwards_are_received_by_ffmpeg_from_the_returned_sdp() {
    if skip_without_ffmpeg() {
        return;
    }
    let Publishing {
        scratch,
        server,
        m,
        alice,
        stop,
        sender,
    } = Publishing::start("rtp-forward", false, |_| {}).await;
    let forwards = format!("/meetings/{}/rtp-forwards", m.id);
    let pid = alice.participant_id();
    // Only networks on the allow-list (loopback by default).
    let outside = server
        .call(
            Method::POST,
            &forwards,
            Some(&m.host.token),
            Some(json!({"participant_id": pid, "kind": "video", "host": "10.9.8.7", "port": 5004})),
        )
        .await;
    assert_error(
        &outside,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert!(outside.1.to_string().contains("host"), "{}", outside.1);
    let stranger = server.user("stranger").await;
    let theirs = server
        .call(
            Method::POST,
            &forwards,
            Some(&stranger.token),
            Some(
                json!({"participant_id": pid, "kind": "video", "host": "127.0.0.1", "port": 5004}),
            ),
        )
        .await;
    assert!(
        theirs.0 == StatusCode::FORBIDDEN || theirs.0 == StatusCode::NOT_FOUND,
        "{theirs:?}"
    );

    // Video as plain RTP, audio as SRTP: both open in ffmpeg from the SDP alone.
    let (status, video) = server
        .call(
            Method::POST,
            &forwards,
            Some(&m.host.token),
            Some(json!({"participant_id": pid, "kind": "video", "host": "127.0.0.1", "port": free_udp_port()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{video}");
    let (status, audio) = server
        .call(
            Method::POST,
            &forwards,
            Some(&m.host.token),
            Some(json!({"participant_id": pid, "kind": "audio", "host": "127.0.0.1", "port": free_udp_port(), "srtp": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{audio}");
    assert!(audio["srtp_key"].is_string(), "{audio}");
    let (video_out, audio_out) = tokio::join!(
        receive_with_ffmpeg(video["sdp"].as_str().unwrap(), &scratch.0, "video", 4),
        receive_with_ffmpeg(audio["sdp"].as_str().unwrap(), &scratch.0, "audio", 4),
    );
    for (what, (path, stderr)) in [("video", &video_out), ("audio", &audio_out)] {
        let probe = media::probe(path);
        let streams = streams_of(&probe);
        let expected = if what == "video" {
            ("video", "vp8")
        } else {
            ("audio", "opus")
        };
        assert_eq!(
            streams,
            vec![(expected.0.to_owned(), expected.1.to_owned())],
            "{what}: {probe} {stderr}"
        );
        let errors = media::decode_errors(path);
        assert!(errors.is_empty(), "decoding the {what} forward: {errors}");
        let seconds = media::decoded_seconds(path, if what == "video" { "v:0" } else { "a:0" });
        assert!(seconds > 2.0, "{what}: {seconds} s received");
    }
    let (status, list) = server
        .call(Method::GET, &forwards, Some(&m.host.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    for forward in [&video, &audio] {
        let (status, _) = server
            .call(
                Method::DELETE,
                &format!("{forwards}/{}", forward["id"].as_str().unwrap()),
                Some(&m.host.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, list) = server
        .call(Method::GET, &forwards, Some(&m.host.token), None)
        .await;
    assert_eq!(list["items"], json!([]));
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
}

/// A small tmpfs the test mounts (as root) and unmounts when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(bytes: u64) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("convene-disk-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_stops_the_recording_cleanly_and_refuses_a_new_one() {
    if skip_without_ffmpeg() {
        return;
    }
    let Some(disk) = SmallDisk::mount(2 * 1024 * 1024) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let dir = disk.0.clone();
    let Publishing {
        scratch,
        server,
        m,
        alice,
        stop,
        sender,
    } = Publishing::start("recording-full", false, |c| {
        c.recordings_dir = dir;
        // 2 MiB disk: the guard trips after about 300 KB are written.
        c.recording_min_free_bytes = 1_750 * 1024;
    })
    .await;
    let recordings = format!("/meetings/{}/recordings", m.id);
    let (status, started) = server
        .call(Method::POST, &recordings, Some(&m.host.token), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    // Everyone is told why it stopped.
    let deadline = Instant::now() + Duration::from_secs(40);
    let stopped = loop {
        let found = alice
            .ws
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["type"] == "recording_stopped")
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "the full disk never stopped it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_eq!(stopped["reason"], "disk_full");
    let (status, shown) = server
        .call(
            Method::GET,
            &format!("{recordings}/{id}"),
            Some(&m.host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(
        (&shown["status"], &shown["reason"]),
        (&json!("failed"), &json!("disk_full"))
    );
    // What was written is closed whole and decodes.
    let file = file_of(&shown, &alice.participant_id(), "camera");
    let path = scratch.0.join("full.webm");
    download(&server, &m.host.token, file["url"].as_str().unwrap(), &path).await;
    let errors = media::decode_errors(&path);
    assert!(errors.is_empty(), "decoding: {errors}");
    // No new recording while the disk is full.
    let refused = server
        .call(Method::POST, &recordings, Some(&m.host.token), None)
        .await;
    assert_error(&refused, StatusCode::INSUFFICIENT_STORAGE, "disk_full");
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
}

async fn alice_ws_expect(client: &MediaClient, kind: &str) -> Value {
    // MediaClient's socket is behind a shared reference here: its log has every message.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = client
            .ws
            .log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["type"] == kind)
            .cloned()
        {
            return found;
        }
        assert!(Instant::now() < deadline, "no {kind}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn recording_files_on_disk(server: &TestServer, recording_id: &str) -> Vec<PathBuf> {
    let dir = server
        .server
        .state
        .config
        .recordings_path()
        .join(recording_id);
    recording_files(&dir)
}
