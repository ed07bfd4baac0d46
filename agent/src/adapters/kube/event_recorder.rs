//! Publishes [`EventIntent`]s as `events.k8s.io/v1` Events with kube's event `Recorder`
//! (`reportingController` `pullgate.io/agent`, `reportingInstance` the node name).
//!
//! kube's Recorder aggregates repeats of one (type, action, reason, regarding object) within six
//! minutes into one Event whose `series.count` grows (a merge patch, not a new object). pullgate's
//! repeats are narrower — per image, and per verdict for failures — so it keeps one Recorder per
//! aggregation key: a different image or verdict is a new Event, a repeat patches the old one.
//! Node Events live in the `default` namespace and name the Node's UID as its name, as the
//! kubelet's do (that is what `kubectl describe node` looks for).

use crate::decide::event_policy::{EventIntent, Regarding, Severity};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const REPORTING_CONTROLLER: &str = "pullgate.io/agent";

/// Recorders unused for this long are forgotten (kube's own series cache lasts six minutes).
const IDLE: Duration = Duration::from_secs(15 * 60);

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

pub struct EventRecorder {
    client: kube::Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<String, (Recorder, Instant)>>,
}

impl EventRecorder {
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: REPORTING_CONTROLLER.into(),
                instance: Some(node.into()),
            },
            recorders: Mutex::new(HashMap::new()),
        }
    }

    pub async fn publish(
        &self,
        intent: &EventIntent,
        uid: Option<String>,
    ) -> Result<(), EventError> {
        let recorder = {
            let mut map = self
                .recorders
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            map.retain(|_, (_, used)| now.duration_since(*used) < IDLE);
            let entry = map.entry(intent.aggregation.clone()).or_insert_with(|| {
                (
                    Recorder::new(self.client.clone(), self.reporter.clone()),
                    now,
                )
            });
            entry.1 = now;
            entry.0.clone()
        };
        let event = Event {
            type_: match intent.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: intent.reason.as_str().into(),
            note: Some(intent.note.clone()),
            action: intent.action.into(),
            secondary: None,
        };
        recorder
            .publish(&event, &reference(&intent.regarding, uid))
            .await
            .map_err(|source| EventError {
                reason: intent.reason.as_str(),
                regarding: intent.regarding.to_string(),
                source,
            })
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
