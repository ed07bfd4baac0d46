//! The real server's serialisation of times: a stored `metav1.Time` has whole seconds and a
//! `metav1.MicroTime` microseconds, both in UTC with `Z` (k8s.io/apimachinery
//! `pkg/apis/meta/v1/time.go` `MarshalJSON`: RFC 3339 of `t.UTC()`; `micro_time.go`:
//! `"2006-01-02T15:04:05.000000Z07:00"`). A client that writes nanoseconds reads back less.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// The `Time` fields of the objects pullgate writes, as JSON pointers (`*`: every list item).
const TIME_FIELDS: &[&str] = &[
    "/metadata/creationTimestamp",
    "/metadata/deletionTimestamp",
    "/status/conditions/*/lastHeartbeatTime",
    "/status/conditions/*/lastTransitionTime",
    "/deprecatedFirstTimestamp",
    "/deprecatedLastTimestamp",
];

/// The `MicroTime` fields of `events.k8s.io/v1` Events.
const MICRO_TIME_FIELDS: &[&str] = &["/eventTime", "/series/lastObservedTime"];

/// The object as the real server stores it: every known time field truncated. A value that is
/// not an RFC 3339 time is left as it is (the validation rules say what is wrong with it).
pub(super) fn normalised(mut object: Value) -> Value {
    for field in TIME_FIELDS {
        each(&mut object, field, &|t| {
            t.to_rfc3339_opts(SecondsFormat::Secs, true)
        });
    }
    for field in MICRO_TIME_FIELDS {
        each(&mut object, field, &|t| {
            t.to_rfc3339_opts(SecondsFormat::Micros, true)
        });
    }
    object
}

/// Now, as a `Time`.
pub(super) fn now_seconds() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DateTime::<Utc>::from_timestamp(i64::try_from(now).unwrap_or(0), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn each(value: &mut Value, pointer: &str, format: &dyn Fn(DateTime<Utc>) -> String) {
    let pointer = pointer.trim_start_matches('/');
    let (head, rest) = pointer.split_once('/').unwrap_or((pointer, ""));
    if head == "*" {
        if let Value::Array(items) = value {
            for item in items {
                each(item, rest, format);
            }
        }
        return;
    }
    let Some(child) = value.get_mut(head) else {
        return;
    };
    if !rest.is_empty() {
        each(child, rest, format);
        return;
    }
    let parsed = child
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
    if let Some(time) = parsed {
        *child = Value::String(format(time.with_timezone(&Utc)));
    }
}
