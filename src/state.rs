//! What every request handler shares, cheap to clone. Sits below `api`, `signaling` and `web`
//! (each uses it; it uses none of them), so the layers import downward only: `app` wires
//! `api` and `signaling` over this, and neither reaches back into `app`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
use crate::domain::access::AccessKeys;
use crate::domain::live::LiveMeetings;
use crate::domain::token::TokenKeys;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::sfu::Sfu;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    /// Join tokens (media).
    pub keys: TokenKeys,
    /// REST access tokens.
    pub access: AccessKeys,
    pub limits: RateLimits,
    /// How REST moderation, chat and meeting changes reach the meetings' live sockets
    /// (implemented by signaling).
    pub live: Arc<dyn LiveMeetings>,
    pub metrics: Metrics,
    pub sfu: Sfu,
    /// Where recordings are written and read back.
    pub recorder: crate::recording::Recorder,
    /// Running RTP forwards to external pipelines.
    pub forwards: crate::recording::rtp_forward::Forwards,
    /// The ICE servers (STUN/TURN, with fresh TURN credentials) handed to clients.
    pub ice: Arc<crate::turn::IceServers>,
    /// Cluster membership (`redis_url` set); None: a single node.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Cleared when shutdown starts, so /readyz turns away new load first.
    pub accepting: Arc<AtomicBool>,
}

/// The header a node sets when it hands a request on to the node that owns its meeting.
pub const FORWARDED: &str = "x-convene-forwarded";

/// The header a node sets on a cascade relay request (`signaling::cascade`).
pub const RELAY: &str = "x-convene-relay";

/// Compared without an early exit: a key must not leak a byte at a time.
fn key_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl AppState {
    /// Whether another node of the cluster handed this request on (it carries the cluster's
    /// forward key): it was rate-limited there, and is served here as it is.
    pub fn forwarded_by_node(&self, headers: &axum::http::HeaderMap) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        let Some(given) = headers.get(FORWARDED) else {
            return false;
        };
        key_matches(given.as_bytes(), self.keys.cluster_forward_key().as_bytes())
    }

    /// Whether a cascading node of this cluster sent this relay request (its relay key).
    pub fn relay_from_node(&self, headers: &axum::http::HeaderMap) -> bool {
        self.cluster.is_some()
            && self.config.cluster_cascade
            && headers.get(RELAY).is_some_and(|given| {
                key_matches(given.as_bytes(), self.keys.cluster_relay_key().as_bytes())
            })
    }
}
