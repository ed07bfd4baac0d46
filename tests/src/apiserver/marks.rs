//! Test-only instrumentation, not a behaviour of the real server: the instant a write stored an
//! object that first satisfies a test's predicate ([`ApiServer::mark_when`]). It is taken inside
//! the store's write (`ApiState::put`), under the store's lock, after the new version is stored and
//! before its watch event and the answer go out: the server-side moment of the write, so a
//! benchmark's figure (`bench gate`: when the start-up taint was removed) is not inflated by a
//! client's poll interval. Nothing is answered differently; the marks only watch.

use serde_json::Value;
use std::time::Instant;

use super::{ApiServer, Collection};

type Predicate = Box<dyn Fn(&Value) -> bool + Send>;

/// One watched object and the first instant a stored version of it satisfied the predicate.
struct Mark {
    name: String,
    collection: Collection,
    /// (namespace, name); a cluster-scoped object has namespace `""`.
    key: (String, String),
    predicate: Predicate,
    at: Option<Instant>,
}

/// The marks set on a server.
#[derive(Default)]
pub(crate) struct Marks {
    marks: Vec<Mark>,
}

impl Marks {
    /// A write just stored `object` as `key` of `collection`, at `now`.
    pub(crate) fn observe(
        &mut self,
        collection: &Collection,
        key: &(String, String),
        object: &Value,
        now: Instant,
    ) {
        for mark in &mut self.marks {
            if mark.at.is_none()
                && mark.collection == *collection
                && mark.key == *key
                && (mark.predicate)(object)
            {
                mark.at = Some(now);
            }
        }
    }
}

impl ApiServer {
    /// From now on, records the instant the first write stores the object `namespace`/`object`
    /// of `api`/`plural` (namespace `""` for a cluster-scoped object) in a form that satisfies
    /// `predicate`; read it with [`ApiServer::marked_at`]. A mark of the same `name` is replaced.
    /// The object as stored now is not looked at: only later writes count.
    pub fn mark_when(
        &self,
        name: &str,
        (api, plural): (&str, &str),
        (namespace, object): (&str, &str),
        predicate: impl Fn(&Value) -> bool + Send + 'static,
    ) {
        let mut store = self.state.lock();
        store.marks.marks.retain(|m| m.name != name);
        store.marks.marks.push(Mark {
            name: name.to_string(),
            collection: Collection {
                api: api.into(),
                plural: plural.into(),
            },
            key: (namespace.to_string(), object.to_string()),
            predicate: Box::new(predicate),
            at: None,
        });
    }

    /// When the mark `name` was hit (`None`: not yet, or no such mark).
    pub fn marked_at(&self, name: &str) -> Option<Instant> {
        self.state
            .lock()
            .marks
            .marks
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.at)
    }
}
