//! The validation ported from the real API server, for what pullgate writes: events.k8s.io/v1
//! Events, on create and on update (a patch is validated as the update it makes).
//!
//! Ported from Kubernetes' `pkg/apis/core/validation/events.go` (`ValidateEventCreate`,
//! `ValidateEventUpdate`, `validateV1EventSeries`, `legacyValidateEvent`, for the
//! events.k8s.io/v1 request version, the strict one) and apimachinery's
//! `pkg/util/validation/validation.go` (`IsDNS1123Subdomain`, `IsQualifiedName`). The v1 field
//! names stand for the internal ones the Go code checks (`note` for `message`, `regarding` for
//! `involvedObject`, `deprecated*` for the legacy fields). Not ported: `ValidateObjectMeta`'s
//! label, annotation and owner-reference rules (pullgate sets none).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::status;

/// The API server's limit on an Event's `note`, in bytes (Go's `len`): `NoteLengthLimit = 1024`.
pub const EVENT_NOTE_LIMIT_BYTES: usize = 1024;
/// `ReportingInstanceLengthLimit`, `ActionLengthLimit`, `ReasonLengthLimit`.
pub const EVENT_FIELD_LIMIT: usize = 128;
/// `DNS1123SubdomainMaxLength`.
pub const DNS_SUBDOMAIN_LIMIT: usize = 253;
/// `qualifiedNameMaxLength`.
const QUALIFIED_NAME_LIMIT: usize = 63;

/// `422 Invalid` for an object a create would store, in the shape kube-rs reads, naming the
/// object and every field at fault; `None` when valid (or not an Event).
pub(super) fn validate(api: &str, plural: &str, name: &str, object: &Value) -> Option<Response> {
    if !is_event(api, plural) {
        return None;
    }
    invalid(name, event_create(object))
}

/// `422 Invalid` for the update of `old` into `new`; `None` when valid (or not an Event).
pub(super) fn validate_update(
    api: &str,
    plural: &str,
    name: &str,
    new: &Value,
    old: &Value,
) -> Option<Response> {
    if !is_event(api, plural) {
        return None;
    }
    invalid(name, event_update(new, old))
}

fn is_event(api: &str, plural: &str) -> bool {
    api == "events.k8s.io/v1" && plural == "events"
}

fn invalid(name: &str, errors: Vec<String>) -> Option<Response> {
    (!errors.is_empty()).then(|| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "Event.events.k8s.io \"{name}\" is invalid: {}",
                errors.join(", ")
            ),
        )
    })
}

fn text<'a>(object: &'a Value, field: &str) -> &'a str {
    object[field].as_str().unwrap_or("")
}

fn set(object: &Value, field: &str) -> bool {
    !object[field].is_null()
}

/// `ValidateEventCreate` for events.k8s.io/v1.
pub(crate) fn event_create(event: &Value) -> Vec<String> {
    let mut errors = legacy(event);
    let name = event["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        errors.push("metadata.name: Required value: name or generateName is required".into());
    }
    errors.extend(
        dns_subdomain(name)
            .into_iter()
            .map(|m| format!("metadata.name: Invalid value: \"{name}\": {m}")),
    );
    errors.extend(series(event));
    if !set(event, "eventTime") {
        errors.push("eventTime: Required value".into());
    }
    let type_ = text(event, "type");
    if type_ != "Normal" && type_ != "Warning" {
        errors.push(format!(
            "type: Invalid value: \"\": has invalid value: {type_}"
        ));
    }
    for field in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedSource",
    ] {
        if set(event, field) && event[field] != serde_json::json!({}) {
            errors.push(format!("{field}: Invalid value: \"\": needs to be unset"));
        }
    }
    if event["deprecatedCount"].as_i64().unwrap_or(0) != 0 {
        errors.push("deprecatedCount: Invalid value: \"\": needs to be unset".into());
    }
    errors
}

/// `ValidateEventUpdate` for events.k8s.io/v1.
pub(crate) fn event_update(new: &Value, old: &Value) -> Vec<String> {
    let mut errors = legacy(new);
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        if new["metadata"][field] != old["metadata"][field] {
            errors.push(format!(
                "metadata.{field}: Invalid value: field is immutable"
            ));
        }
    }
    if new["series"] != old["series"] {
        errors.extend(series(new));
    }
    for field in [
        "regarding",
        "reason",
        "note",
        "deprecatedSource",
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "type",
        "eventTime",
        "action",
        "related",
        "reportingController",
        "reportingInstance",
    ] {
        if new[field] != old[field] {
            errors.push(format!("{field}: Invalid value: field is immutable"));
        }
    }
    errors
}

/// `validateV1EventSeries`.
fn series(event: &Value) -> Vec<String> {
    let series = &event["series"];
    let mut errors = Vec::new();
    if series.is_null() {
        return errors;
    }
    if series["count"].as_i64().unwrap_or(0) < 2 {
        errors.push("series.count: Invalid value: \"\": should be at least 2".into());
    }
    if series["lastObservedTime"].is_null() {
        errors.push("series.lastObservedTime: Required value".into());
    }
    errors
}

/// `legacyValidateEvent`, for an Event with an `eventTime` (every events.k8s.io/v1 one).
fn legacy(event: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let namespace = event["metadata"]["namespace"].as_str().unwrap_or("");
    let regarding_ns = event["regarding"]["namespace"].as_str().unwrap_or("");
    if set(event, "eventTime") {
        if regarding_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
            errors.push(format!(
                "regarding.namespace: Invalid value: \"{regarding_ns}\": does not match event.namespace"
            ));
        }
        let controller = text(event, "reportingController");
        if controller.is_empty() {
            errors.push("reportingController: Required value".into());
        }
        errors.extend(
            qualified_name(controller)
                .into_iter()
                .map(|m| format!("reportingController: Invalid value: \"{controller}\": {m}")),
        );
        for field in ["reportingInstance", "action", "reason"] {
            let value = text(event, field);
            if value.is_empty() {
                errors.push(format!("{field}: Required value"));
            }
            if value.len() > EVENT_FIELD_LIMIT {
                errors.push(format!(
                    "{field}: Invalid value: \"\": can have at most {EVENT_FIELD_LIMIT} characters"
                ));
            }
        }
        if text(event, "note").len() > EVENT_NOTE_LIMIT_BYTES {
            errors.push(format!(
                "note: Invalid value: \"\": can have at most {EVENT_NOTE_LIMIT_BYTES} characters"
            ));
        }
    } else if regarding_ns != namespace
        && !(regarding_ns.is_empty() && (namespace.is_empty() || namespace == "default"))
    {
        errors.push(format!(
            "regarding.namespace: Invalid value: \"{regarding_ns}\": does not match event.namespace"
        ));
    }
    errors.extend(
        dns_subdomain(namespace)
            .into_iter()
            .map(|m| format!("namespace: Invalid value: \"{namespace}\": {m}")),
    );
    errors
}

/// `IsDNS1123Subdomain`: at most 253 characters of dot-separated labels, each lower-case
/// alphanumerics and `-`, starting and ending alphanumeric.
pub fn dns_subdomain(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS_SUBDOMAIN_LIMIT {
        errors.push(format!(
            "must be no more than {DNS_SUBDOMAIN_LIMIT} characters"
        ));
    }
    let label_ok = |label: &str| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if !value.split('.').all(label_ok) {
        errors.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    errors
}

/// `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".into());
            } else {
                errors.extend(
                    dns_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errors.push("a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character with an optional DNS subdomain prefix and '/'".into());
            return errors;
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".into());
        return errors;
    }
    if name.len() > QUALIFIED_NAME_LIMIT {
        errors.push(format!(
            "name part must be no more than {QUALIFIED_NAME_LIMIT} characters"
        ));
    }
    let b = name.as_bytes();
    let ok = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    if !ok {
        errors.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "critical.17f", "namespace": "payments"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "regarding": {"kind": "PullSet", "namespace": "payments", "name": "critical"},
            "reportingController": "pullgate.io/agent", "reportingInstance": "node-1",
            "action": "PrePull", "reason": "PrePulled", "type": "Normal", "note": "ok"
        })
    }

    /// A change to a valid Event.
    type Change = Box<dyn Fn(&mut Value)>;

    #[test]
    fn create_rules_table() {
        // (change, the field the error must name; None: valid)
        let cases: Vec<(Change, Option<&str>)> = vec![
            (Box::new(|_| {}), None),
            (
                Box::new(|e| e["metadata"]["name"] = json!("a".repeat(254))),
                Some("metadata.name"),
            ),
            (
                Box::new(|e| e["metadata"]["name"] = json!("a".repeat(253))),
                None,
            ),
            (
                Box::new(|e| e["metadata"]["name"] = json!("a-.1")),
                Some("metadata.name"),
            ),
            (
                Box::new(|e| e["metadata"]["name"] = json!("Upper.1")),
                Some("metadata.name"),
            ),
            (
                Box::new(|e| e["reportingInstance"] = json!("n".repeat(129))),
                Some("reportingInstance"),
            ),
            (
                Box::new(|e| e["reportingInstance"] = json!("n".repeat(128))),
                None,
            ),
            (
                Box::new(|e| e["reportingInstance"] = json!(null)),
                Some("reportingInstance"),
            ),
            (
                Box::new(|e| e["reportingController"] = json!("bad controller")),
                Some("reportingController"),
            ),
            (
                Box::new(|e| e["reportingController"] = json!(format!("p.io/{}", "c".repeat(64)))),
                Some("reportingController"),
            ),
            (
                Box::new(|e| e["action"] = json!("a".repeat(129))),
                Some("action"),
            ),
            (Box::new(|e| e["reason"] = json!("")), Some("reason")),
            (
                Box::new(|e| e["note"] = json!("é".repeat(513))),
                Some("note"),
            ),
            (Box::new(|e| e["note"] = json!("x".repeat(1024))), None),
            (
                Box::new(|e| e["eventTime"] = json!(null)),
                Some("eventTime"),
            ),
            (Box::new(|e| e["type"] = json!("Info")), Some("type")),
            (
                Box::new(|e| e["deprecatedCount"] = json!(3)),
                Some("deprecatedCount"),
            ),
            (
                Box::new(|e| {
                    e["series"] =
                        json!({"count": 1, "lastObservedTime": "2026-01-01T00:00:00.000000Z"})
                }),
                Some("series.count"),
            ),
            (
                Box::new(|e| e["series"] = json!({"count": 2})),
                Some("series.lastObservedTime"),
            ),
            (
                Box::new(|e| {
                    e["regarding"]["namespace"] = json!(null);
                    e["metadata"]["namespace"] = json!("payments");
                }),
                Some("regarding.namespace"),
            ),
            (
                Box::new(|e| {
                    e["regarding"]["namespace"] = json!(null);
                    e["metadata"]["namespace"] = json!("default");
                }),
                None,
            ),
        ];
        for (i, (change, want)) in cases.iter().enumerate() {
            let mut event = good();
            change(&mut event);
            let errors = event_create(&event);
            match want {
                None => assert!(errors.is_empty(), "case {i}: {errors:?}"),
                Some(field) => assert!(
                    errors.iter().any(|e| e.starts_with(&format!("{field}:"))),
                    "case {i}: want {field}, got {errors:?}"
                ),
            }
        }
    }

    #[test]
    fn update_keeps_the_note_and_checks_the_series() {
        let old = good();
        let mut repeat = old.clone();
        repeat["series"] = json!({"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"});
        assert!(event_update(&repeat, &old).is_empty());
        let mut new_note = repeat.clone();
        new_note["note"] = json!("another");
        assert!(
            event_update(&new_note, &old)
                .iter()
                .any(|e| e.starts_with("note:"))
        );
        let mut bad_series = old.clone();
        bad_series["series"] =
            json!({"count": 1, "lastObservedTime": "2026-01-01T00:01:00.000000Z"});
        assert!(
            event_update(&bad_series, &old)
                .iter()
                .any(|e| e.starts_with("series.count:"))
        );
    }
}
