//! Cascading (`cluster_cascade`): one meeting over three nodes on loopback sharing Redis (the
//! test's own), the database (the CI's PostgreSQL with `DATABASE_URL`, else one SQLite file)
//! and the server secret. Each participant connects to a different node and stays there; the
//! publisher's node relays to the others the tracks their participants receive, and only those.
//! (Publishers on several nodes at once are not covered yet: see docs/cluster.md.)
mod common;
#[path = "signaling/ws_client.rs"]
mod ws_client;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis::Shared;
use common::TestServer;
use serde_json::{json, Value};
use ws_client::MediaClient;

async fn three_cascading_nodes(shared: &Shared) -> [TestServer; 3] {
    let cascading = |c: &mut convene::config::Config| {
        c.cluster_cascade = true;
        c.cluster_cascade_sync = Duration::from_millis(100);
    };
    let a = shared.node("node-a", cascading).await;
    let b = shared.node("node-b", cascading).await;
    let c = shared.node("node-c", cascading).await;
    let cluster = a.server.state.cluster.clone().expect("cluster mode");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while cluster.nodes().await.map(|n| n.len()).unwrap_or(0) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 nodes never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    [a, b, c]
}

/// A participant connected to `node` (REST join there, then its socket there).
async fn participant(node: &TestServer, meeting: &Value, name: &str, manual: bool) -> MediaClient {
    let user = node.user(name).await;
    let answer = node.join_meeting(meeting, Some(&user)).await;
    let token = answer["join_token"].as_str().unwrap();
    let join = if manual {
        json!({"type": "join", "auto_subscribe": false})
    } else {
        json!({"type": "join"})
    };
    MediaClient::join_sending(node.server.http_addr, name, token, false, join).await
}

/// The track ids `client` was told of, by (participant id, source): from `joined`,
/// `participant_joined` and `track_published`, less `track_unpublished`.
fn tracks_known(client: &MediaClient) -> HashMap<(String, String), String> {
    let mut known = HashMap::new();
    let add = |known: &mut HashMap<(String, String), String>, participant: &Value| {
        for track in participant["tracks"].as_array().into_iter().flatten() {
            known.insert(
                (
                    participant["participant_id"].as_str().unwrap().to_owned(),
                    track["source"].as_str().unwrap().to_owned(),
                ),
                track["track_id"].as_str().unwrap().to_owned(),
            );
        }
    };
    for participant in client.joined["participants"]
        .as_array()
        .into_iter()
        .flatten()
    {
        add(&mut known, participant);
    }
    for message in client.ws.messages() {
        match message["type"].as_str() {
            Some("participant_joined") | Some("participant_updated") => {
                add(&mut known, &message["participant"])
            }
            Some("track_published") => {
                known.insert(
                    (
                        message["participant_id"].as_str().unwrap().to_owned(),
                        message["source"].as_str().unwrap().to_owned(),
                    ),
                    message["track_id"].as_str().unwrap().to_owned(),
                );
            }
            Some("track_unpublished") => {
                let gone = message["track_id"].as_str().unwrap();
                known.retain(|_, id| id != gone);
            }
            _ => {}
        }
    }
    known
}

/// Waits until `client` knows every one of `wanted` (participant id, source); their ids.
async fn wait_tracks(
    client: &MediaClient,
    wanted: &[(String, &str)],
) -> HashMap<(String, String), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let known = tracks_known(client);
        if wanted
            .iter()
            .all(|(p, s)| known.contains_key(&(p.clone(), (*s).to_owned())))
        {
            return known;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never learnt of {wanted:?}: knows {known:?}",
            client.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_over_three_nodes_relays_a_track_only_to_the_nodes_that_receive_it() {
    let shared = Shared::new().await;
    let [a, b, c] = three_cascading_nodes(&shared).await;
    let host = a.user("host").await;
    let meeting = a.open_meeting(&host).await;

    // A publisher on A; a receiver on each node, each connected where it is (no redirect).
    // The one on C subscribes by hand: to the camera, never to the screen share.
    let sa = participant(&a, &meeting, "sa", false).await;
    let sb = participant(&b, &meeting, "sb", false).await;
    let sc = participant(&c, &meeting, "sc", true).await;
    let mut pa = participant(&a, &meeting, "pa", false).await;
    pa.publish(&[("camera", "cam"), ("screen", "screen")]).await;
    pa.wait_publisher_connected().await;
    let pa = Arc::new(pa);
    let sending = {
        let pa = pa.clone();
        tokio::spawn(async move {
            loop {
                pa.send_round(&["cam", "screen"]).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let camera = (pa.participant_id(), "camera");
    let screen = (pa.participant_id(), "screen");
    let key = |(p, s): &(String, &str)| (p.clone(), (*s).to_owned());
    let known = wait_tracks(&sc, &[camera.clone(), screen.clone()]).await;
    sc.ws
        .send(json!({"type": "subscribe", "track_id": known[&key(&camera)]}));

    // Every receiver gets the camera, whichever node it is on; A's and B's get the screen.
    for (receiver, sources) in [
        (&sa, vec![&camera, &screen]),
        (&sb, vec![&camera, &screen]),
        (&sc, vec![&camera]),
    ] {
        let known = wait_tracks(receiver, &[camera.clone(), screen.clone()]).await;
        for wanted in sources {
            let track = &known[&key(wanted)];
            let sent = if wanted.1 == "camera" {
                "cam"
            } else {
                "screen"
            };
            let got = receiver
                .wait_packets(track, "pa", sent, 20, Duration::from_secs(20))
                .await;
            assert!(
                got >= 20,
                "{} got {got} packets of pa's {} ({track})",
                receiver.name,
                wanted.1
            );
        }
    }
    // Nothing of the screen share reaches node C, where nobody receives it; B relayed it.
    let relayed =
        |source: &str| format!("convene_cascade_relayed_tracks_total{{source=\"{source}\"}}");
    assert_eq!(
        c.metric(&relayed("screen")).await,
        0.0,
        "the screen share reached node C"
    );
    assert!(c.metric(&relayed("camera")).await >= 1.0);
    assert!(b.metric(&relayed("screen")).await >= 1.0);
    let on_c = &tracks_known(&sc)[&key(&screen)];
    assert_eq!(sc.packets_from(on_c, "pa", "screen"), 0);
    sending.abort();
}
