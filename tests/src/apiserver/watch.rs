//! Watches: the history after a resourceVersion, then live events; `410 Gone` after compaction.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use tokio::sync::broadcast;

use super::handle::matches;
use super::{ApiState, Collection, Event, status};

pub(super) fn watch(
    state: ApiState,
    collection: Collection,
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
        let line = |kind: &str, object: &Value| {
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
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
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
