//! Injected `429 Too Many Requests` and `503 Service Unavailable`, with `Retry-After`, as the real
//! server's filters answer an overloaded server: the max-in-flight and priority-and-fairness
//! filters (k8s.io/apiserver `pkg/server/filters/maxinflight.go`, `priority-and-fairness.go`,
//! via `tooManyRequests`: `Retry-After: 1`, "Too many requests, please try again later.") and
//! the Status of `errors.NewTooManyRequests` / `NewServiceUnavailable`
//! (k8s.io/apimachinery `pkg/api/errors/errors.go`), with `details.retryAfterSeconds`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub(crate) struct Throttle {
    /// How many of the next requests still get it.
    pub(crate) remaining: u32,
    /// `429` or `503` (anything else is answered as `503`).
    pub(crate) code: u16,
    pub(crate) retry_after_secs: u64,
}

impl Throttle {
    pub(crate) fn response(&self) -> Response {
        let (code, reason, message) = if self.code == 429 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests, please try again later.",
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The server is currently unable to handle the request",
            )
        };
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason,
            "details": {"retryAfterSeconds": self.retry_after_secs},
            "code": code.as_u16(),
        });
        (
            code,
            [
                ("content-type", "application/json".to_string()),
                ("retry-after", self.retry_after_secs.to_string()),
            ],
            body.to_string(),
        )
            .into_response()
    }
}
