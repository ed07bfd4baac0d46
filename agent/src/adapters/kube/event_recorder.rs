//! Publishes [`EventIntent`]s as `events.k8s.io/v1` Events (`reportingController`
//! `pullgate.io/agent`, `reportingInstance` the node name, shortened by
//! `event_policy::reporting_instance` when over the server's limit), with its own small recorder
//! rather than kube's `Recorder`, whose Events a real API server can refuse: it names an Event
//! `<regarding>.<nanoseconds>` with no bound (a 250-character PullSet name makes a 267-character
//! name: `422`), passes the reporter's instance whole (a node name over 128 characters: `422`),
//! sends no field manager, and on a repeat patches only the series, so the note stays the first
//! one forever.
//!
//! Repeats. The note of an events.k8s.io/v1 Event is immutable (`ValidateEventUpdate` in
//! Kubernetes' `pkg/apis/core/validation/events.go` checks `message` with
//! `ValidateImmutableField`), so a repeat cannot carry a new note in the old Event. As client-go's
//! `tools/events` recorder does (its series key includes the note), a repeat with the same note
//! patches the Event's `series` (count, last observed time); a repeat with a new note is a new
//! Event, so the newest Event of an aggregation key always carries the current note.
//! Series are remembered for six minutes after their last observation (kube's and client-go's
//! cache time). Node Events live in the `default` namespace and name the Node's name as its UID,
//! as the kubelet's do (that is what `kubectl describe node` looks for).

use crate::decide::event_policy::{self, EventIntent, Regarding, Severity};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const REPORTING_CONTROLLER: &str = "pullgate.io/agent";

/// How long a series is continued after its last observation (kube-runtime's `CACHE_TTL`,
/// client-go's `maxTriesPerEvent` window: six minutes).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

#[derive(Debug, thiserror::Error)]
#[error("cannot publish event {reason} on {regarding}: {source}")]
pub struct EventError {
    reason: &'static str,
    regarding: String,
    source: kube::Error,
}

impl EventError {
    /// Whether it is worth retrying is the kind's call (`ApiErrorKind::is_transient`).
    pub fn kind(&self) -> crate::decide::retry::ApiErrorKind {
        crate::adapters::kube::api_errors::kind(&self.source)
    }
}

/// One Event being continued as a series.
struct Series {
    namespace: String,
    name: String,
    count: i32,
    observed: Instant,
}

pub struct EventRecorder {
    client: kube::Client,
    instance: String,
    /// By aggregation key and note.
    series: Mutex<HashMap<(String, String), Series>>,
}

impl EventRecorder {
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            client,
            instance: event_policy::reporting_instance(node),
            series: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Series>> {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn publish(
        &self,
        intent: &EventIntent,
        uid: Option<String>,
    ) -> Result<(), EventError> {
        let error = |source| EventError {
            reason: intent.reason.as_str(),
            regarding: intent.regarding.to_string(),
            source,
        };
        let key = (intent.aggregation.clone(), intent.note.clone());
        let repeat = {
            let mut map = self.lock();
            let now = Instant::now();
            map.retain(|_, s| now.duration_since(s.observed) < SERIES_TTL);
            map.get(&key)
                .map(|s| (s.namespace.clone(), s.name.clone(), s.count + 1))
        };
        let now = Timestamp::now();
        if let Some((namespace, name, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            let patch = serde_json::json!({ "series": series });
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            match api
                .patch(&name, &super::patch_params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if let Some(s) = self.lock().get_mut(&key) {
                        s.count = count;
                        s.observed = Instant::now();
                    }
                    return Ok(());
                }
                // Gone (expired, deleted): start again with a new Event.
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    self.lock().remove(&key);
                }
                Err(e) => return Err(error(e)),
            }
        }
        let event = self.event(intent, uid, now);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let params = PostParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        api.create(&params, &event).await.map_err(error)?;
        self.lock().insert(
            key,
            Series {
                namespace,
                name,
                count: 1,
                observed: Instant::now(),
            },
        );
        Ok(())
    }

    fn event(&self, intent: &EventIntent, uid: Option<String>, now: Timestamp) -> Event {
        let regarding = reference(&intent.regarding, uid);
        let regarding_name = regarding.name.clone().unwrap_or_default();
        // Nanoseconds since the epoch fit in u64 until 2554; a clock before 1970 gives 0.
        let unique = u64::try_from(now.as_nanosecond()).unwrap_or(0);
        Event {
            metadata: ObjectMeta {
                name: Some(event_policy::event_name(&regarding_name, unique)),
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                ..ObjectMeta::default()
            },
            action: Some(intent.action.into()),
            reason: Some(intent.reason.as_str().into()),
            note: Some(intent.note.clone()),
            type_: Some(
                match intent.severity {
                    Severity::Normal => "Normal",
                    Severity::Warning => "Warning",
                }
                .into(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

fn reference(regarding: &Regarding, uid: Option<String>) -> ObjectReference {
    match regarding {
        Regarding::PullSet(key) => ObjectReference {
            api_version: Some("pullgate.io/v1alpha1".into()),
            kind: Some("PullSet".into()),
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            uid,
            ..ObjectReference::default()
        },
        // The kubelet's convention, which `kubectl describe node` searches by: a Node's
        // reference carries its name as UID.
        Regarding::Node(name) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(name.clone()),
            uid: Some(name.clone()),
            ..ObjectReference::default()
        },
    }
}
