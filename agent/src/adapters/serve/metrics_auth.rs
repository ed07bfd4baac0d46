//! Who may read `/metrics` (it names namespaces, PullSets, Secrets and expiry times), decided as
//! kube-rbac-proxy and the kubelet do for their endpoints: the `Authorization: Bearer` token is
//! authenticated with a TokenReview and the user it names authorized with a SubjectAccessReview
//! (`get` on the non-resource URL `/metrics`), both through a [`Reviewer`]
//! (`adapters::kube::review` implements it against the API server).
//!
//! Answers are cached ([`AccessCache`]): at most [`CACHE_ENTRIES`] tokens, each for [`CACHE_TTL`]
//! (an allowed answer) or [`DENIED_TTL`] (a refused one), keyed by the token's HMAC-SHA256 under a
//! key drawn for this process (`audit::fingerprint`), never by the token; a review that failed
//! (the API server away) is not cached. The token is never logged.
//!
//! A token not in the cache costs the API server a TokenReview (and a SubjectAccessReview), so
//! anyone who reaches the port could make the agent flood it with random tokens. Reviews are
//! therefore paced ([`ReviewPacer`], a plain unit with the clock passed in): at most
//! [`ReviewLimits::in_flight`] at once, and a token bucket ([`ReviewLimits::burst`], then one per
//! [`ReviewLimits::refill`]; the defaults are client-go's `rest.Config` QPS 5 and burst 10, which
//! kube-rbac-proxy's delegating authenticator and authorizer use). Past either, the request is
//! refused at once ([`MetricsAuthError::Throttled`], a `429` with `Retry-After`) without a review,
//! where client-go would queue it: a flood then costs the API server nothing and holds no
//! connection. A cached answer, allowed or refused, needs no review and is never throttled.

use crate::decide::audit::fingerprint::FingerprintKey;
use crate::decide::event_policy::{Admit, Budget};
use secrecy::SecretString;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an allowed answer is reused (kube-rbac-proxy's default is 5 min; the kubelet's
/// webhook authenticator caches 2 min).
pub const CACHE_TTL: Duration = Duration::from_secs(120);
/// How long a refused answer is reused (the kubelet's webhook: 30 s).
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// A review (TokenReview then SubjectAccessReview) not answered within this is a 503: a hung API
/// server does not hold the scrape, nor one of the server's connection slots.
pub const REVIEW_DEADLINE: Duration = Duration::from_secs(10);
/// How many tokens are remembered; past that the oldest answer goes.
pub const CACHE_ENTRIES: usize = 256;

/// The process's key for token fingerprints: 32 bytes from the kernel's CSPRNG.
pub fn draw_key() -> std::io::Result<FingerprintKey> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(FingerprintKey::from_bytes(bytes))
}

/// What a request with a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Authenticated and authorized: 200.
    Allowed,
    /// Authenticated, not authorized: 403.
    Forbidden,
    /// No token, or one the API server does not know: 401.
    Unauthenticated,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsAuthError {
    #[error("cannot review the token: {0}")]
    Review(String),
    /// Over the review limits: refused without a review.
    #[error("too many token reviews; retry after {}s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
}

/// How reviews of tokens not in the cache are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewLimits {
    /// Reviews waiting on the API server at once.
    pub in_flight: usize,
    /// Reviews that may start at once after a quiet time…
    pub burst: u32,
    /// …then one more per this.
    pub refill: Duration,
}

impl Default for ReviewLimits {
    /// Four at once; client-go's default rate (`k8s.io/client-go/rest`: `DefaultQPS` 5,
    /// `DefaultBurst` 10).
    fn default() -> Self {
        Self {
            in_flight: 4,
            burst: 10,
            refill: Duration::from_millis(200),
        }
    }
}

/// Whether a review may start now: the in-flight count and the token bucket (the one token
/// bucket of the agent, `event_policy::Budget`). Time comes in; no I/O.
#[derive(Debug)]
pub struct ReviewPacer {
    limits: ReviewLimits,
    budget: Budget,
    in_flight: usize,
}

impl ReviewPacer {
    pub fn new(limits: ReviewLimits, now: Instant) -> Self {
        Self {
            limits,
            budget: Budget::new(limits.burst, limits.refill, now),
            in_flight: 0,
        }
    }

    /// Starts a review at `now` (answer it with [`finish`](Self::finish)), or says when to ask
    /// again: one second when all slots are taken, the bucket's refill (whole seconds, at least
    /// one) when it is empty. A refusal for slots takes nothing from the bucket.
    pub fn start(&mut self, now: Instant) -> Result<(), Duration> {
        if self.in_flight >= self.limits.in_flight {
            return Err(Duration::from_secs(1));
        }
        match self.budget.admit(now) {
            Admit::Send { .. } => {
                self.in_flight += 1;
                Ok(())
            }
            Admit::Drop => Err(Duration::from_secs(
                self.limits.refill.as_secs_f64().ceil().max(1.0) as u64,
            )),
        }
    }

    /// A started review ended (answered, failed or abandoned).
    pub fn finish(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// A review's future.
pub type ReviewFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Access, MetricsAuthError>> + Send + 'a>>;

/// Authenticates a bearer token and authorizes its user for `get /metrics`.
pub trait Reviewer: Send + Sync {
    fn review<'a>(&'a self, token: &'a SecretString) -> ReviewFuture<'a>;
}

/// Answers by token fingerprint, with their expiry.
pub struct AccessCache {
    key: FingerprintKey,
    entries: Mutex<HashMap<String, (Access, Instant)>>,
}

impl AccessCache {
    pub fn new(key: FingerprintKey) -> Self {
        Self {
            key,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Access, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached answer for `token` still valid at `now`.
    pub fn get(&self, token: &SecretString, now: Instant) -> Option<Access> {
        let id = self.key.of_secret(token);
        let map = self.lock();
        map.get(&id)
            .filter(|(_, until)| now < *until)
            .map(|(access, _)| *access)
    }

    /// Remembers `access` for `token` from `now`; forgets expired answers, then the one closest
    /// to expiry while over [`CACHE_ENTRIES`].
    pub fn put(&self, token: &SecretString, access: Access, now: Instant) {
        let ttl = if access == Access::Allowed {
            CACHE_TTL
        } else {
            DENIED_TTL
        };
        let id = self.key.of_secret(token);
        let mut map = self.lock();
        map.retain(|_, (_, until)| now < *until);
        while map.len() >= CACHE_ENTRIES {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(id, (access, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache and the pacer in front of a reviewer.
pub struct MetricsAuth {
    reviewer: Box<dyn Reviewer>,
    cache: AccessCache,
    pacer: Mutex<ReviewPacer>,
}

/// A review slot, given back when dropped (also when the client went away mid-review).
struct Slot<'a>(&'a Mutex<ReviewPacer>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock_pacer(self.0).finish();
    }
}

fn lock_pacer(pacer: &Mutex<ReviewPacer>) -> std::sync::MutexGuard<'_, ReviewPacer> {
    pacer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MetricsAuth {
    pub fn new(reviewer: Box<dyn Reviewer>, key: FingerprintKey, limits: ReviewLimits) -> Self {
        Self {
            reviewer,
            cache: AccessCache::new(key),
            pacer: Mutex::new(ReviewPacer::new(limits, Instant::now())),
        }
    }

    fn slot(&self) -> Result<Slot<'_>, MetricsAuthError> {
        lock_pacer(&self.pacer)
            .start(Instant::now())
            .map_err(|retry_after| MetricsAuthError::Throttled { retry_after })?;
        Ok(Slot(&self.pacer))
    }

    /// The access of the request whose `Authorization` header is `authorization`.
    pub async fn access(&self, authorization: Option<&str>) -> Result<Access, MetricsAuthError> {
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Ok(Access::Unauthenticated);
        };
        let token = SecretString::from(token.to_string());
        if let Some(access) = self.cache.get(&token, Instant::now()) {
            return Ok(access);
        }
        let _slot = self.slot()?;
        let access = tokio::time::timeout(REVIEW_DEADLINE, self.reviewer.review(&token))
            .await
            .map_err(|_| {
                MetricsAuthError::Review(format!("no answer within {REVIEW_DEADLINE:?}"))
            })??;
        self.cache.put(&token, access, Instant::now());
        Ok(access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn token(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn answers_expire_and_the_cache_is_bounded() {
        let cache = AccessCache::new(FingerprintKey::from_bytes([1; 32]));
        let t0 = Instant::now();
        cache.put(&token("a"), Access::Allowed, t0);
        cache.put(&token("b"), Access::Forbidden, t0);
        // (token, at, expected)
        let table = [
            ("a", t0, Some(Access::Allowed)),
            (
                "a",
                t0 + CACHE_TTL - Duration::from_secs(1),
                Some(Access::Allowed),
            ),
            ("a", t0 + CACHE_TTL, None),
            (
                "b",
                t0 + DENIED_TTL - Duration::from_secs(1),
                Some(Access::Forbidden),
            ),
            ("b", t0 + DENIED_TTL, None),
            ("c", t0, None),
        ];
        for (t, at, want) in table {
            assert_eq!(cache.get(&token(t), at), want, "{t}");
        }
        for i in 0..(CACHE_ENTRIES * 2) {
            cache.put(&token(&format!("t{i}")), Access::Allowed, t0);
        }
        assert_eq!(cache.len(), CACHE_ENTRIES);
        // The newest is kept.
        let newest = token(&format!("t{}", CACHE_ENTRIES * 2 - 1));
        assert_eq!(cache.get(&newest, t0), Some(Access::Allowed));
        // Keyed by a keyed hash: no token in what it holds.
        let held = format!("{:?}", cache.lock().keys().collect::<Vec<_>>());
        assert!(!held.contains("t1\""), "{held}");
    }

    struct Counting {
        calls: AtomicUsize,
        answer: Result<Access, ()>,
    }

    impl Reviewer for Counting {
        fn review<'a>(&'a self, _: &'a SecretString) -> ReviewFuture<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .answer
                .map_err(|()| MetricsAuthError::Review("away".into()));
            Box::pin(async move { answer })
        }
    }

    /// A [`Counting`] reviewer the test keeps a handle on.
    struct Shared(std::sync::Arc<Counting>);
    impl Reviewer for Shared {
        fn review<'a>(&'a self, t: &'a SecretString) -> ReviewFuture<'a> {
            self.0.review(t)
        }
    }

    #[tokio::test]
    async fn one_review_per_token_and_none_without_one() {
        let reviewer = std::sync::Arc::new(Counting {
            calls: AtomicUsize::new(0),
            answer: Ok(Access::Forbidden),
        });
        let auth = MetricsAuth::new(
            Box::new(Shared(reviewer.clone())),
            FingerprintKey::from_bytes([2; 32]),
            ReviewLimits::default(),
        );
        for header in [None, Some("Basic abc"), Some("Bearer "), Some("Bearer  ")] {
            assert_eq!(auth.access(header).await.unwrap(), Access::Unauthenticated);
        }
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 0);
        for _ in 0..3 {
            assert_eq!(
                auth.access(Some("Bearer t")).await.unwrap(),
                Access::Forbidden
            );
        }
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 1);
        // A failed review is an error and is not cached.
        let failing = MetricsAuth::new(
            Box::new(Counting {
                calls: AtomicUsize::new(0),
                answer: Err(()),
            }),
            FingerprintKey::from_bytes([3; 32]),
            ReviewLimits::default(),
        );
        assert!(failing.access(Some("Bearer t")).await.is_err());
        assert!(failing.cache.is_empty());
    }

    struct Hung;

    impl Reviewer for Hung {
        fn review<'a>(&'a self, _: &'a SecretString) -> ReviewFuture<'a> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_that_never_answers_is_an_error_at_its_deadline() {
        let auth = MetricsAuth::new(
            Box::new(Hung),
            FingerprintKey::from_bytes([4; 32]),
            ReviewLimits::default(),
        );
        assert!(auth.access(Some("Bearer t")).await.is_err());
        assert!(auth.cache.is_empty());
    }

    #[test]
    fn reviews_are_paced_by_slots_and_by_a_token_bucket() {
        let limits = ReviewLimits {
            in_flight: 2,
            burst: 3,
            refill: Duration::from_millis(2500),
        };
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut pacer = ReviewPacer::new(limits, t0);
        // (finish first, at, expected)
        let table: &[(usize, Instant, Result<(), Duration>)] = &[
            (0, t0, Ok(())),
            (0, t0, Ok(())),
            // Both slots taken: wait a second; the bucket keeps its last token.
            (0, t0, Err(s)),
            (1, t0, Ok(())),
            // Slots free, bucket empty: its refill, rounded up to whole seconds.
            (2, t0, Err(3 * s)),
            (0, t0 + 2 * s, Err(3 * s)),
            (0, t0 + 2500 * Duration::from_millis(1), Ok(())),
            (1, t0 + 2500 * Duration::from_millis(1), Err(3 * s)),
        ];
        for (i, (finish, at, want)) in table.iter().enumerate() {
            for _ in 0..*finish {
                pacer.finish();
            }
            assert_eq!(pacer.start(*at), *want, "row {i}");
        }
        let fast = ReviewPacer::new(ReviewLimits::default(), t0).limits;
        assert_eq!((fast.in_flight, fast.burst), (4, 10));
        let mut fast = ReviewPacer::new(fast, t0);
        for _ in 0..10 {
            assert_eq!(fast.start(t0), Ok(()));
            fast.finish();
        }
        assert_eq!(fast.start(t0), Err(s), "200 ms refill: retry after 1 s");
    }

    #[tokio::test]
    async fn a_flood_of_unknown_tokens_costs_the_burst_and_a_cached_token_still_answers() {
        let reviewer = std::sync::Arc::new(Counting {
            calls: AtomicUsize::new(0),
            answer: Ok(Access::Unauthenticated),
        });
        let auth = MetricsAuth::new(
            Box::new(Shared(reviewer.clone())),
            FingerprintKey::from_bytes([5; 32]),
            ReviewLimits {
                in_flight: 4,
                burst: 5,
                refill: Duration::from_secs(3600),
            },
        );
        let (mut refused, mut answered) = (0, 0);
        for i in 0..500 {
            match auth.access(Some(&format!("Bearer random-{i}"))).await {
                Ok(Access::Unauthenticated) => answered += 1,
                Err(MetricsAuthError::Throttled { retry_after }) => {
                    assert_eq!(retry_after, Duration::from_secs(3600));
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((answered, refused), (5, 495));
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 5);
        // A refused token's answer is cached: asked again, no review and no throttling.
        assert_eq!(
            auth.access(Some("Bearer random-0")).await.unwrap(),
            Access::Unauthenticated
        );
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_in_flight_holds_its_slot_until_it_ends_or_is_abandoned() {
        let auth = MetricsAuth::new(
            Box::new(Hung),
            FingerprintKey::from_bytes([6; 32]),
            ReviewLimits {
                in_flight: 1,
                burst: 100,
                refill: Duration::from_secs(1),
            },
        );
        let mut first = Box::pin(auth.access(Some("Bearer a")));
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(matches!(
            auth.access(Some("Bearer b")).await,
            Err(MetricsAuthError::Throttled { .. })
        ));
        // The client went away: its slot is free again (the next review is tried, and times out).
        drop(first);
        assert!(matches!(
            auth.access(Some("Bearer b")).await,
            Err(MetricsAuthError::Review(_))
        ));
        assert!(matches!(
            auth.access(Some("Bearer c")).await,
            Err(MetricsAuthError::Review(_))
        ));
    }
}
