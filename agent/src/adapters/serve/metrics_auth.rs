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

use crate::decide::audit::fingerprint::FingerprintKey;
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

/// The cache in front of a reviewer.
pub struct MetricsAuth {
    reviewer: Box<dyn Reviewer>,
    cache: AccessCache,
}

impl MetricsAuth {
    pub fn new(reviewer: Box<dyn Reviewer>, key: FingerprintKey) -> Self {
        Self {
            reviewer,
            cache: AccessCache::new(key),
        }
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

    #[tokio::test]
    async fn one_review_per_token_and_none_without_one() {
        let reviewer = std::sync::Arc::new(Counting {
            calls: AtomicUsize::new(0),
            answer: Ok(Access::Forbidden),
        });
        struct Shared(std::sync::Arc<Counting>);
        impl Reviewer for Shared {
            fn review<'a>(&'a self, t: &'a SecretString) -> ReviewFuture<'a> {
                self.0.review(t)
            }
        }
        let auth = MetricsAuth::new(
            Box::new(Shared(reviewer.clone())),
            FingerprintKey::from_bytes([2; 32]),
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
        let auth = MetricsAuth::new(Box::new(Hung), FingerprintKey::from_bytes([4; 32]));
        assert!(auth.access(Some("Bearer t")).await.is_err());
        assert!(auth.cache.is_empty());
    }
}
