//! Per-client rate limits by request class (auth, meeting creation, everything else), answered
//! with 429 and `Retry-After`. Keyed by the client's IP address; limits come from the config.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;
use crate::http_error::ApiError;
use crate::state::AppState;

#[derive(Clone, Default)]
pub struct RateLimits {
    auth: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    meeting_create: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    general: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// WHIP/WHEP session creation, per address ...
    media: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// ... and per identity of a room, whatever address it comes from.
    media_identity: Option<Arc<DefaultKeyedRateLimiter<(String, String)>>>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    quota: Option<Quota>,
) -> Option<Arc<DefaultKeyedRateLimiter<K>>> {
    quota.map(|q| Arc::new(RateLimiter::keyed(q)))
}

impl RateLimits {
    pub fn from_config(config: &Config) -> Self {
        let per_minute = |n: u32| NonZeroU32::new(n).map(Quota::per_minute);
        let per_hour = |n: u32| NonZeroU32::new(n).map(Quota::per_hour);
        Self {
            auth: limiter(per_minute(config.rate_limit_auth_per_minute)),
            meeting_create: limiter(per_hour(config.rate_limit_meeting_create_per_hour)),
            general: limiter(per_minute(config.rate_limit_general_per_minute)),
            media: limiter(per_minute(config.rate_limit_media_per_minute)),
            media_identity: limiter(per_minute(config.rate_limit_media_per_identity_per_minute)),
        }
    }

    fn for_request(&self, method: &Method, path: &str) -> Option<&DefaultKeyedRateLimiter<IpAddr>> {
        if method == Method::POST && is_media_endpoint(path) {
            return self.media.as_deref();
        }
        let rest = path.strip_prefix("/api/v1")?;
        if rest.starts_with("/auth/") {
            self.auth.as_deref()
        } else if method == Method::POST && (rest == "/meetings" || rest == "/meetings/") {
            self.meeting_create.as_deref()
        } else {
            self.general.as_deref()
        }
    }

    /// A new WHIP/WHEP session of `identity` in `room`: 429 past its rate.
    pub fn check_media_identity(&self, room: &str, identity: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.media_identity else {
            return Ok(());
        };
        limiter
            .check_key(&(room.to_owned(), identity.to_owned()))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                ApiError::too_many_requests(wait.as_secs() + 1)
            })
    }

    /// Forgets the keys whose limit is back to full: the maps are keyed by client input
    /// (addresses, identities) and would otherwise only grow.
    pub fn prune(&self) {
        for limiter in [&self.auth, &self.meeting_create, &self.general, &self.media]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.media_identity {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys tracked over every class (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        [&self.auth, &self.meeting_create, &self.general, &self.media]
            .into_iter()
            .flatten()
            .map(|l| l.len())
            .sum::<usize>()
            + self.media_identity.as_ref().map_or(0, |l| l.len())
    }
}

/// `POST /whip/{room}` or `/whep/{room}` (not a session resource below it).
fn is_media_endpoint(path: &str) -> bool {
    let rest = path
        .strip_prefix("/whip/")
        .or_else(|| path.strip_prefix("/whep/"));
    rest.is_some_and(|room| !room.is_empty() && !room.contains('/'))
}

pub async fn enforce(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Counted on the node that received it.
    if state.forwarded_by_node(request.headers()) {
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if let Some(limiter) = state
        .limits
        .for_request(request.method(), request.uri().path())
    {
        if let Err(not_until) = limiter.check_key(&client) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return ApiError::too_many_requests(wait.as_secs() + 1).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_back_to_full_are_pruned() {
        let limits = RateLimits {
            general: limiter(Some(Quota::per_second(NonZeroU32::new(1000).unwrap()))),
            media_identity: limiter(Some(Quota::per_second(NonZeroU32::new(1000).unwrap()))),
            ..Default::default()
        };
        let general = limits.general.as_ref().unwrap();
        for i in 0..500u32 {
            let _ = general.check_key(&IpAddr::from(i.to_be_bytes()));
            let _ = limits.check_media_identity("room", &format!("id{i}"));
        }
        assert_eq!(limits.tracked_keys(), 1000);
        // One cell comes back in a millisecond at this quota.
        std::thread::sleep(std::time::Duration::from_millis(20));
        limits.prune();
        assert_eq!(limits.tracked_keys(), 0);
    }

    #[test]
    fn media_endpoints_are_the_session_collections() {
        assert!(is_media_endpoint("/whip/demo"));
        assert!(is_media_endpoint("/whep/demo"));
        assert!(!is_media_endpoint("/whip/demo/0190"));
        assert!(!is_media_endpoint("/whip/"));
        assert!(!is_media_endpoint("/api/v1/meetings"));
    }
}
