//! A `kube::Client` for unit tests: every request is recorded (method, path, body) and held until
//! the test opens the server, then answered `200` with a minimal object of the kind the path
//! names. So a writer can be shown hung (the request seen, no answer) and then answering, under
//! tokio's paused time, with no socket.

use kube::client::Body;
use std::convert::Infallible;
use tokio::sync::{mpsc, watch};

/// One request the client sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// The test's end: what was sent, and the switch that lets answers out.
pub struct Scripted {
    pub seen: mpsc::UnboundedReceiver<Seen>,
    open: watch::Sender<bool>,
}

impl Scripted {
    /// From now on every request (those already waiting too) is answered.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// A client whose server holds every request until [`Scripted::open`].
pub fn client() -> (kube::Client, Scripted) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (open, open_rx) = watch::channel(false);
    let service = tower::service_fn(move |request: http::Request<Body>| {
        let seen_tx = seen_tx.clone();
        let mut open_rx = open_rx.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            let _ = seen_tx.send(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = open_rx.wait_for(|open| *open).await;
            let object = if parts.uri.path().contains("/events") {
                r#"{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"e"},"eventTime":null}"#
            } else {
                r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}"#
            };
            Ok::<_, Infallible>(http::Response::new(Body::from(object.as_bytes().to_vec())))
        }
    });
    (
        kube::Client::new(service, "default"),
        Scripted { seen, open },
    )
}
