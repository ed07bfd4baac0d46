//! What the test API server answers for delegated authentication and authorization, and what it
//! records of every request's headers: the one hook `handle` calls first.
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: `status.authenticated` and `status.user`
//!   for a token the test registered with [`super::ApiServer::add_token`], else
//!   `authenticated: false` (as the real server answers a token it does not know: a `201` with
//!   a negative status, not an error).
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: `status.allowed` when the user
//!   was allowed with [`super::ApiServer::allow_metrics`] and the review asks `get` on the
//!   non-resource URL `/metrics`; otherwise `allowed: false` with a reason.
//! - every request's `User-Agent` ([`super::ApiServer::user_agents`]).
//!
//! Not done: groups and RBAC rules behind the decision, resource attributes, impersonation,
//! `audiences` (echoed empty).

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::{ApiState, ok_json};

/// Registered tokens, allowed users, what was seen.
#[derive(Default)]
pub(crate) struct Reviews {
    /// token → user name.
    pub(crate) tokens: BTreeMap<String, String>,
    pub(crate) metrics_readers: BTreeSet<String>,
    pub(crate) user_agents: Vec<String>,
    pub(crate) token_reviews: usize,
    pub(crate) access_reviews: usize,
}

/// Records the request's headers; answers it when it is a review.
pub(super) fn hook(
    state: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let mut reviews = state.reviews();
    let agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    reviews.user_agents.push(agent);
    if method != Method::POST {
        return None;
    }
    let review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let spec = &review["spec"];
    match uri.path() {
        "/apis/authentication.k8s.io/v1/tokenreviews" => {
            reviews.token_reviews += 1;
            let token = spec["token"].as_str().unwrap_or("");
            let status = match reviews.tokens.get(token) {
                Some(user) => json!({"authenticated": true,
                    "user": {"username": user, "uid": format!("uid-{user}"), "groups": ["system:authenticated"]},
                    "audiences": []}),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            Some(ok_json(
                StatusCode::CREATED,
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "metadata": {}, "spec": {}, "status": status}),
            ))
        }
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
            reviews.access_reviews += 1;
            let user = spec["user"].as_str().unwrap_or("");
            let attrs = &spec["nonResourceAttributes"];
            let asks_metrics = attrs["path"] == "/metrics" && attrs["verb"] == "get";
            let allowed = asks_metrics && reviews.metrics_readers.contains(user);
            let reason = if allowed {
                "allowed by the test"
            } else {
                "no rule of the test allows it"
            };
            Some(ok_json(
                StatusCode::CREATED,
                &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                        "metadata": {}, "spec": spec, "status": {"allowed": allowed, "reason": reason}}),
            ))
        }
        _ => None,
    }
}
