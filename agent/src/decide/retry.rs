//! Retry pacing for the loops that are state machines (the canary schedule, the node report): an
//! exponential backoff from `backon`, jittered and capped, kept as plain data the machine reads its
//! next deadline from, so it runs under tokio's paused time in tests. And the kinds of API-server
//! failure, which pace differently: a policy denial or a missing object does not heal in seconds.

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;
use tokio::time::Instant;

/// Why an API-server request failed, decided once from the client's error (the kube adapter's
/// `api_errors::kind`); its [`label`](Self::label) is the `kind` of `pullgate_apiserver_errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiErrorKind {
    /// 403: RBAC or an admission policy said no.
    Forbidden,
    /// 404: the object (this Node) does not exist.
    NotFound,
    /// 409: a conflicting change (or a failed JSON-patch `test` on some servers).
    Conflict,
    /// 410: a watch's resourceVersion is too old.
    Gone,
    /// 429: throttled (API priority and fairness).
    TooManyRequests,
    /// 5xx: the API server failed.
    Server,
    /// Any other status (400, 401, 422…).
    Other,
    /// No status at all: connection, TLS, timeout, an undecodable answer.
    Transport,
}

impl ApiErrorKind {
    pub const ALL: [Self; 8] = [
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::Gone,
        Self::TooManyRequests,
        Self::Server,
        Self::Other,
        Self::Transport,
    ];

    /// The kind of an HTTP status the API server answered with.
    pub fn from_status(code: u16) -> Self {
        match code {
            403 => Self::Forbidden,
            404 => Self::NotFound,
            409 => Self::Conflict,
            410 => Self::Gone,
            429 => Self::TooManyRequests,
            500..=599 => Self::Server,
            _ => Self::Other,
        }
    }

    /// The metric label: bounded, no free text.
    pub fn label(self) -> &'static str {
        match self {
            Self::Forbidden => "403",
            Self::NotFound => "404",
            Self::Conflict => "409",
            Self::Gone => "410",
            Self::TooManyRequests => "429",
            Self::Server => "5xx",
            Self::Other => "other",
            Self::Transport => "transport",
        }
    }

    /// The server was away, overloaded or failing: the same request may succeed soon.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::TooManyRequests | Self::Server | Self::Transport)
    }

    /// A policy denial or a missing object: an operator must act, so retries wait the cap.
    pub fn is_lasting(self) -> bool {
        matches!(self, Self::Forbidden | Self::NotFound)
    }
}

/// When one kind of request may be tried again. After each failure it waits a delay from an
/// exponential backoff whose step doubles from `min` to `max`; each delay is drawn from
/// `[step/2, step)` (backon's jitter over half steps), so `max` is a true cap and a fleet that
/// failed together does not retry together. A [lasting](ApiErrorKind::is_lasting) failure goes
/// straight to the cap. Success resets it.
#[derive(Debug)]
pub struct Retry {
    min: Duration,
    max: Duration,
    delays: Option<ExponentialBackoff>,
    failures: u32,
    not_before: Option<Instant>,
}

impl Retry {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min: min.min(max),
            max,
            delays: None,
            failures: 0,
            not_before: None,
        }
    }

    fn builder(first: Duration, max: Duration) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(first / 2)
            .with_max_delay(max / 2)
            .without_max_times()
    }

    /// No failure is waiting out its delay.
    pub fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// When the next try may happen (`None`: now).
    pub fn not_before(&self) -> Option<Instant> {
        self.not_before
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A try failed: the next waits the next delay, which is returned.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let (min, max) = (self.min, self.max);
        let delay = self
            .delays
            .get_or_insert_with(|| Self::builder(min, max).build())
            .next();
        self.record(now, delay)
    }

    /// A try failed for a reason that does not heal by itself: wait the cap (jittered).
    pub fn failed_lasting(&mut self, now: Instant) -> Duration {
        let mut at_cap = Self::builder(self.max, self.max).build();
        let delay = at_cap.next();
        self.delays = Some(at_cap);
        self.record(now, delay)
    }

    /// [`failed`](Self::failed) or [`failed_lasting`](Self::failed_lasting), by kind.
    pub fn failed_with(&mut self, kind: ApiErrorKind, now: Instant) -> Duration {
        if kind.is_lasting() {
            self.failed_lasting(now)
        } else {
            self.failed(now)
        }
    }

    fn record(&mut self, now: Instant, delay: Option<Duration>) -> Duration {
        // Without a limit of times the backoff never ends; the cap is the fallback all the same.
        let delay = delay.unwrap_or(self.max).min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + delay);
        delay
    }

    pub fn succeeded(&mut self) {
        self.delays = None;
        self.failures = 0;
        self.not_before = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn delays_double_within_their_jitter_and_never_pass_the_cap() {
        let mut r = Retry::new(2 * S, 30 * S);
        let now = Instant::now();
        assert!(r.due(now));
        for step in [2, 4, 8, 16, 30, 30, 30] {
            let d = r.failed(now);
            let step = step * S;
            assert!(d >= step / 2 && d < step, "{d:?} for step {step:?}");
            assert!(!r.due(now));
            assert!(r.due(now + d));
        }
        assert_eq!(r.failures(), 7);
        r.succeeded();
        assert!(r.due(now));
        let d = r.failed(now);
        assert!(d < 2 * S, "success starts again from the first step: {d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn lasting_failures_wait_the_cap_and_stay_there() {
        let mut r = Retry::new(S, 60 * S);
        let now = Instant::now();
        for kind in [ApiErrorKind::Forbidden, ApiErrorKind::Server] {
            let d = r.failed_with(kind, now);
            assert!(d >= 30 * S && d <= 60 * S, "{kind:?}: {d:?}");
        }
        let d = r.failed_with(ApiErrorKind::Transport, now);
        assert!(
            d >= 30 * S,
            "after a lasting failure the step stays at the cap: {d:?}"
        );
    }

    #[test]
    fn kinds_table() {
        use ApiErrorKind::*;
        for (code, kind, label, transient, lasting) in [
            (403, Forbidden, "403", false, true),
            (404, NotFound, "404", false, true),
            (409, Conflict, "409", false, false),
            (410, Gone, "410", false, false),
            (422, Other, "other", false, false),
            (429, TooManyRequests, "429", true, false),
            (500, Server, "5xx", true, false),
            (503, Server, "5xx", true, false),
        ] {
            let k = ApiErrorKind::from_status(code);
            assert_eq!(
                (k, k.label(), k.is_transient(), k.is_lasting()),
                (kind, label, transient, lasting),
                "{code}"
            );
        }
        assert!(Transport.is_transient());
        assert_eq!(Transport.label(), "transport");
    }
}
