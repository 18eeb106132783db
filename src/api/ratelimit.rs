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

use super::ApiError;
use crate::app::AppState;
use crate::config::Config;

#[derive(Clone, Default)]
pub struct RateLimits {
    auth: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    meeting_create: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    general: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

fn limiter(quota: Option<Quota>) -> Option<Arc<DefaultKeyedRateLimiter<IpAddr>>> {
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
        }
    }

    fn for_request(&self, method: &Method, path: &str) -> Option<&DefaultKeyedRateLimiter<IpAddr>> {
        let rest = path.strip_prefix("/api/v1")?;
        if rest.starts_with("/auth/") {
            self.auth.as_deref()
        } else if method == Method::POST && (rest == "/meetings" || rest == "/meetings/") {
            self.meeting_create.as_deref()
        } else {
            self.general.as_deref()
        }
    }
}

pub async fn enforce(State(state): State<AppState>, request: Request, next: Next) -> Response {
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
