//! Watches: the history after a resourceVersion, then live events; `410 Gone` after compaction;
//! `BOOKMARK`s when asked for (`allowWatchBookmarks=true`): the current resourceVersion, every
//! [`BOOKMARK_INTERVAL`] (the real watch cache sends them about every minute and just before the
//! watch times out, k8s.io/apiserver `pkg/storage/cacher/cacher.go`), so that a client resumes from
//! there rather than from its last event, which compaction may have made too old.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use tokio::sync::broadcast;

use super::handle::matches;
use super::schema::{Structural, coerce};
use super::{ApiState, Collection, Event, status};

/// How often a watch asking for bookmarks gets one, unless [`super::ApiServer::bookmark_every`].
pub(super) const BOOKMARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A bookmark: an object of the watched kind with only its `resourceVersion`
/// (k8s.io/apiserver `pkg/storage/cacher/cacher.go`, `getBookmarkObject`).
fn bookmark(collection: &Collection, rv: u64) -> Value {
    json!({"apiVersion": collection.api, "kind": super::kind_of(&collection.plural),
           "metadata": {"resourceVersion": rv.to_string()}})
}

pub(super) fn watch(
    state: ApiState,
    collection: Collection,
    schema: Option<Structural>,
    namespace: Option<String>,
    name: Option<String>,
    query: &HashMap<String, String>,
) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let interval = state.lock().bookmark_interval.unwrap_or(BOOKMARK_INTERVAL);
    let mut live = state.events.subscribe();
    let (backlog, gone) = {
        let store = state.lock();
        let oldest = store.history.first().map_or(store.rv + 1, |e| e.rv);
        let gone = since != 0 && since + 1 < oldest && since < store.rv;
        let backlog: Vec<Event> = store
            .history
            .iter()
            .filter(|e| e.rv > since && e.collection == collection)
            .cloned()
            .collect();
        (backlog, gone)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        // A custom resource is sent as the server decodes it from storage: pruned and defaulted
        // by its CRD's schema (bookmarks and errors are no stored object).
        let line = |kind: &str, object: &Value| {
            let object = match (&schema, kind) {
                (Some(schema), "ADDED" | "MODIFIED" | "DELETED") => {
                    let mut object = object.clone();
                    coerce(&mut object, schema);
                    object
                }
                _ => object.clone(),
            };
            Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
        };
        if gone {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {since}"), "reason": "Expired", "code": 410});
            let _ = tx.send(Ok(line("ERROR", &status))).await;
            return;
        }
        let mut last = since;
        for e in backlog {
            if matches(&e.object, &namespace, &name)
                && tx.send(Ok(line(e.kind, &e.object))).await.is_err()
            {
                return;
            }
            last = last.max(e.rv);
        }
        let timeout = std::time::Duration::from_secs(timeout);
        // The last bookmark comes a little before the end, as the real cacher's
        // (it sends one when the watch is about to time out).
        let deadline = tokio::time::sleep(timeout);
        let last_bookmark = tokio::time::sleep(timeout.saturating_sub(interval.min(timeout / 4)));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tokio::pin!(deadline, last_bookmark);
        let mut last_bookmark_sent = false;
        loop {
            let mut send_bookmark = false;
            tokio::select! {
                () = &mut deadline => return,
                () = &mut last_bookmark, if bookmarks && !last_bookmark_sent => {
                    last_bookmark_sent = true;
                    send_bookmark = true;
                }
                _ = ticks.tick(), if bookmarks => send_bookmark = true,
                event = live.recv() => match event {
                    Ok(e) if e.rv > last && e.collection == collection && matches(&e.object, &namespace, &name) => {
                        last = e.rv;
                        if tx.send(Ok(line(e.kind, &e.object))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            if send_bookmark {
                // Every event up to the current resourceVersion is already in `live` (events
                // are broadcast under the store's lock): send those first, then the bookmark.
                let current = state.lock().rv;
                loop {
                    match live.try_recv() {
                        Ok(e) => {
                            if e.rv > last
                                && e.collection == collection
                                && matches(&e.object, &namespace, &name)
                                && tx.send(Ok(line(e.kind, &e.object))).await.is_err()
                            {
                                return;
                            }
                            last = last.max(e.rv);
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(_) => return,
                    }
                }
                last = last.max(current);
                if tx
                    .send(Ok(line("BOOKMARK", &bookmark(&collection, last))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "stream".into(),
            )
        })
}
