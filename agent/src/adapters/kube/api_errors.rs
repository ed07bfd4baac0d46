//! What kind of failure an API-server request met, decided once from kube's error (the plain
//! [`ApiErrorKind`] the decisions and the metrics use), and the per-kind counts behind
//! `pullgate_apiserver_errors_total{kind}`, kept by the cluster source and the node reporter.

use crate::decide::retry::ApiErrorKind;
use kube::runtime::watcher;
use std::sync::atomic::{AtomicU64, Ordering};

/// The kind of a failed request: the status the API server answered with, or `Transport` when
/// there was none.
pub fn kind(error: &kube::Error) -> ApiErrorKind {
    match error {
        kube::Error::Api(status) => ApiErrorKind::from_status(status.code),
        _ => ApiErrorKind::Transport,
    }
}

/// The kind of a broken watch.
pub fn watch_kind(error: &watcher::Error) -> ApiErrorKind {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => kind(e),
        watcher::Error::WatchError(status) => ApiErrorKind::from_status(status.code),
        watcher::Error::NoResourceVersion => ApiErrorKind::Other,
    }
}

/// Failed API-server requests and broken watches, by kind.
#[derive(Debug, Default)]
pub struct ApiErrors {
    counts: [AtomicU64; ApiErrorKind::ALL.len()],
}

impl ApiErrors {
    pub fn record(&self, kind: ApiErrorKind) {
        if let Some(i) = ApiErrorKind::ALL.iter().position(|k| *k == kind) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a broken watch.
    pub fn record_watch(&self, error: &watcher::Error) {
        self.record(watch_kind(error));
    }

    /// Every kind with its count so far (zeros included).
    pub fn counts(&self) -> impl Iterator<Item = (ApiErrorKind, u64)> + '_ {
        ApiErrorKind::ALL
            .into_iter()
            .zip(&self.counts)
            .map(|(kind, count)| (kind, count.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("injected", "Test").with_code(code),
        ))
    }

    #[test]
    fn kinds_are_decided_from_the_status_or_its_absence() {
        let errors = ApiErrors::default();
        for (error, expected) in [
            (status(403), ApiErrorKind::Forbidden),
            (status(404), ApiErrorKind::NotFound),
            (status(409), ApiErrorKind::Conflict),
            (status(410), ApiErrorKind::Gone),
            (status(429), ApiErrorKind::TooManyRequests),
            (status(503), ApiErrorKind::Server),
            (status(422), ApiErrorKind::Other),
            (
                kube::Error::LinesCodecMaxLineLengthExceeded,
                ApiErrorKind::Transport,
            ),
        ] {
            assert_eq!(kind(&error), expected, "{error}");
            errors.record(kind(&error));
        }
        assert_eq!(
            watch_kind(&watcher::Error::WatchFailed(status(410))),
            ApiErrorKind::Gone
        );
        // A 410 whose message holds "403" (a resource version) is Gone, never Forbidden; a 403
        // is Forbidden however the watch broke.
        let gone = kube::Error::Api(Box::new(
            kube::core::Status::failure("too old resource version: 14031234 (14039999)", "Expired")
                .with_code(410),
        ));
        assert_eq!(
            watch_kind(&watcher::Error::InitialListFailed(gone)),
            ApiErrorKind::Gone
        );
        for broken in [
            watcher::Error::InitialListFailed(status(403)),
            watcher::Error::WatchStartFailed(status(403)),
            watcher::Error::WatchFailed(status(403)),
        ] {
            assert_eq!(watch_kind(&broken), ApiErrorKind::Forbidden, "{broken}");
        }
        errors.record(ApiErrorKind::Server);
        let counts: Vec<(ApiErrorKind, u64)> = errors.counts().collect();
        assert_eq!(counts.len(), 8);
        assert!(counts.contains(&(ApiErrorKind::Server, 2)));
        assert!(counts.contains(&(ApiErrorKind::Forbidden, 1)));
    }
}
