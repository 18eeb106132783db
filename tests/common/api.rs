//! REST helpers for the API tests: users made straight through the store (so a test of one
//! resource does not depend on another's endpoints), and requests returning (status, JSON).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::TestServer;

pub struct TestUser {
    pub id: String,
    pub username: String,
    pub email: String,
    pub password: String,
    /// A valid REST access token for this user.
    pub token: String,
}

impl TestServer {
    /// How many messages of the meeting's chat history (read with `token`) say `text`.
    pub async fn chat_copies(&self, meeting_id: &str, token: &str, text: &str) -> usize {
        let (_, history) = self
            .call(
                Method::GET,
                &format!("/meetings/{meeting_id}/messages"),
                Some(token),
                None,
            )
            .await;
        history["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{history}"))
            .iter()
            .filter(|m| m["text"] == text)
            .count()
    }

    /// A live meeting of `host` that admits guests straight in.
    pub async fn open_meeting(&self, host: &TestUser) -> Value {
        let (status, meeting) = self
            .call(
                Method::POST,
                "/meetings",
                Some(&host.token),
                Some(json!({"title": "Open", "settings": {"waiting_room": false}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{meeting}");
        meeting
    }

    /// Joins `meeting` over REST (as `user`, or a guest); returns the join reply.
    pub async fn join_meeting(&self, meeting: &Value, user: Option<&TestUser>) -> Value {
        let path = format!("/meetings/{}/join", meeting["id"].as_str().unwrap());
        let body = match user {
            Some(_) => json!({}),
            None => json!({"display_name": "Guest"}),
        };
        let (status, reply) = self
            .call(
                Method::POST,
                &path,
                user.map(|u| u.token.as_str()),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply
    }

    /// Creates a user (unique name derived from `name`) and an access token for it.
    pub async fn user(&self, name: &str) -> TestUser {
        let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let username = format!("{name}_{suffix}");
        let email = format!("{username}@example.test");
        let password = format!("pw-{username}-secret");
        let hash = convene::domain::password::hash(password.clone())
            .await
            .unwrap();
        let user = self
            .server
            .state
            .store
            .insert_user(convene::store::users::NewUser {
                email: &email,
                username: &username,
                display_name: name,
                password_hash: &hash,
            })
            .await
            .unwrap();
        let token = self.server.state.access.issue(&user.id, &user.username);
        TestUser {
            id: user.id,
            username,
            email,
            password,
            token,
        }
    }

    /// Sends a JSON request to `/api/v1{path}`; returns the status and the JSON body (Null when
    /// the body is empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.api(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }
}

/// Asserts an error envelope with `code`.
pub fn assert_error(result: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["error"]["code"], code, "{}", result.1);
}
