//! Reporters: JSON lines on stdout, one object per record, flushed per line — and the same lines
//! to whoever watches through the local API (`Watch`).

use serde::Serialize;
use std::io::Write as _;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Lines a slow `Watch` client may fall behind by before it is told it lagged.
const WATCH_BACKLOG: usize = 1024;

/// Writes JSON lines to stdout and to watchers.
pub struct JsonLines {
    lock: Mutex<()>,
    watchers: broadcast::Sender<String>,
}

impl Default for JsonLines {
    fn default() -> Self {
        Self {
            lock: Mutex::new(()),
            watchers: broadcast::channel(WATCH_BACKLOG).0,
        }
    }
}

impl JsonLines {
    pub fn emit(&self, record: &impl Serialize) {
        let line = match serde_json::to_string(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise a report record");
                return;
            }
        };
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write report to stdout");
        }
        // No watcher is not an error.
        let _ = self.watchers.send(line);
    }

    /// Every line emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.watchers.subscribe()
    }
}
