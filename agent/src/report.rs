//! Reporters. Standalone mode: JSON lines on stdout, one object per record, flushed per line.

use serde::Serialize;
use std::io::Write as _;
use std::sync::Mutex;

/// Writes JSON lines to stdout.
#[derive(Default)]
pub struct JsonLines {
    lock: Mutex<()>,
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
    }
}
