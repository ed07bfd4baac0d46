//! The validation ported from the real API server, for what pullgate writes.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::status;

/// The API server's limit on an Event's `note`, in bytes (Go's `len`): `NoteLengthLimit = 1024`
/// in Kubernetes' `pkg/apis/core/validation/events.go`, which `ValidateEventCreate` and
/// `ValidateEventUpdate` apply to events.k8s.io/v1 Events (`field.TooLong` on `note`).
pub const EVENT_NOTE_LIMIT_BYTES: usize = 1024;

/// The validation ported from the real API server, for what pullgate writes: `422 Invalid` in the
/// shape kube-rs reads, naming the object and the field.
pub(super) fn validate(api: &str, plural: &str, name: &str, object: &Value) -> Option<Response> {
    if api != "events.k8s.io/v1" || plural != "events" {
        return None;
    }
    let note = object["note"].as_str().unwrap_or("");
    (note.len() > EVENT_NOTE_LIMIT_BYTES).then(|| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "Event.events.k8s.io \"{name}\" is invalid: note: Too long: may not be more than {EVENT_NOTE_LIMIT_BYTES} bytes"
            ),
        )
    })
}
