//! What the providers answered, and how long each answer stands: a state machine over
//! `tokio::time::Instant` (time comes in, nothing sleeps), unit-tested under paused time.
//!
//! - An answer is kept per provider and `cacheKeyType` key (`Image`: the repository, `Registry`:
//!   the host, `Global`) for its `cacheDuration`, at most [`MAX_CACHE_DURATION`] whatever the plugin
//!   says (checked arithmetic: no duration can overflow the clock).
//! - A failure is kept too, with a capped, jittered backoff ([`crate::decide::retry::Retry`], from
//!   [`FAILURE_BACKOFF_MIN`] doubling to [`FAILURE_BACKOFF_MAX`]): until it elapses the provider is
//!   not run again and the failure is the answer, with its error. A failure that says nothing about
//!   the image (a timeout, a binary that cannot start) holds for the whole provider, so a pass of
//!   many images waits out one timeout, not one per image; any other holds for that image. An
//!   answer clears the provider's failures for that image and for the whole provider.
//! - A provider in service-account token mode adds the ServiceAccount part of the key (the
//!   `account` of the `*_as` methods, a keyed HMAC of the ServiceAccount's namespace, name, UID,
//!   the annotations passed and, with `cacheType: Token`, the token): as the kubelet's
//!   `generateCacheKey(baseKey, serviceAccountCacheKey)`, an answer for one ServiceAccount never
//!   answers for another. A failure for one image holds for that ServiceAccount only; one that
//!   holds for the whole provider holds for every ServiceAccount.
//! - At most [`MAX_ENTRIES`] answers and as many failures: past that, expired answers and failures
//!   whose backoff has elapsed are dropped.

use crate::decide::credentials::PluginCredential;
use crate::decide::retry::Retry;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// The longest an answer is kept, whatever `cacheDuration` the plugin sends.
pub const MAX_CACHE_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The first backoff step after a failure (the wait is drawn from [step/2, step)).
pub const FAILURE_BACKOFF_MIN: Duration = Duration::from_secs(10);
/// The backoff's cap.
pub const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Entries kept before expired ones are dropped.
pub const MAX_ENTRIES: usize = 10_000;

const GLOBAL_CACHE_KEY: &str = "<global>";

/// Where a failure holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only the image it failed for.
    Image,
    /// Every image the provider serves.
    Provider,
}

/// What the cache says about one provider and one image.
#[derive(Debug)]
pub enum Lookup {
    /// An answer that still stands.
    Hit(Vec<PluginCredential>),
    /// A failure whose backoff has not elapsed: its error, and how long until the next try.
    Failing { last: String, retry_in: Duration },
    /// Run the provider.
    Miss,
}

struct Answer {
    expires: Instant,
    credentials: Vec<PluginCredential>,
}

struct Failure {
    retry: Retry,
    last: String,
}

/// The cache of every provider. Keys: (provider, ServiceAccount part, cache key) for answers;
/// (provider, (image, ServiceAccount part), or `None` for the whole provider) for failures. The
/// ServiceAccount part is empty for a provider not in service-account token mode.
#[derive(Default)]
pub struct Cache {
    answers: HashMap<(String, String, String), Answer>,
    failures: HashMap<(String, Option<(String, String)>), Failure>,
}

/// The `Registry` cache key of an image: its host.
pub fn registry_of(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

/// The cache key of an answer by its `cacheKeyType`, or `None` for a type the kubelet refuses.
pub fn cache_key(cache_key_type: &str, image: &str) -> Option<String> {
    match cache_key_type {
        "Image" => Some(image.to_string()),
        "Registry" => Some(registry_of(image).to_string()),
        "Global" => Some(GLOBAL_CACHE_KEY.to_string()),
        _ => None,
    }
}

impl Cache {
    pub fn lookup(&self, provider: &str, image: &str, now: Instant) -> Lookup {
        self.lookup_as(provider, image, "", now)
    }

    /// [`Self::lookup`] for a pull whose ServiceAccount part of the key is `account`.
    pub fn lookup_as(&self, provider: &str, image: &str, account: &str, now: Instant) -> Lookup {
        let answer = [image, registry_of(image), GLOBAL_CACHE_KEY]
            .iter()
            .filter_map(|k| {
                self.answers
                    .get(&(provider.to_string(), account.to_string(), (*k).to_string()))
            })
            .find(|a| now < a.expires);
        if let Some(a) = answer {
            return Lookup::Hit(a.credentials.clone());
        }
        for key in [None, Some((image.to_string(), account.to_string()))] {
            if let Some(f) = self.failures.get(&(provider.to_string(), key))
                && let Some(until) = f.retry.not_before().filter(|t| now < *t)
            {
                return Lookup::Failing {
                    last: f.last.clone(),
                    retry_in: until.saturating_duration_since(now),
                };
            }
        }
        Lookup::Miss
    }

    /// The provider answered for `image`: kept under `key` for `duration` (at most
    /// [`MAX_CACHE_DURATION`]; zero: not kept), and its failures for the image and for the whole
    /// provider are forgotten.
    pub fn answered(
        &mut self,
        provider: &str,
        image: &str,
        key: String,
        duration: Duration,
        credentials: Vec<PluginCredential>,
        now: Instant,
    ) {
        self.answered_as(provider, image, "", key, duration, credentials, now);
    }

    /// [`Self::answered`] for a pull whose ServiceAccount part of the key is `account`.
    #[allow(clippy::too_many_arguments)] // the kubelet's key parts, each its own argument
    pub fn answered_as(
        &mut self,
        provider: &str,
        image: &str,
        account: &str,
        key: String,
        duration: Duration,
        credentials: Vec<PluginCredential>,
        now: Instant,
    ) {
        self.failures.remove(&(provider.to_string(), None));
        self.failures.remove(&(
            provider.to_string(),
            Some((image.to_string(), account.to_string())),
        ));
        let Some(expires) = now.checked_add(duration.min(MAX_CACHE_DURATION)) else {
            return;
        };
        if duration.is_zero() {
            return;
        }
        if self.answers.len() >= MAX_ENTRIES {
            self.answers.retain(|_, a| now < a.expires);
        }
        self.answers.insert(
            (provider.to_string(), account.to_string(), key),
            Answer {
                expires,
                credentials,
            },
        );
    }

    /// The provider failed for `image` with `error`: not run again (for `scope`) until the next
    /// backoff delay, which is returned.
    pub fn failed(
        &mut self,
        provider: &str,
        image: &str,
        scope: Scope,
        error: String,
        now: Instant,
    ) -> Duration {
        self.failed_as(provider, image, "", scope, error, now)
    }

    /// [`Self::failed`] for a pull whose ServiceAccount part of the key is `account`.
    pub fn failed_as(
        &mut self,
        provider: &str,
        image: &str,
        account: &str,
        scope: Scope,
        error: String,
        now: Instant,
    ) -> Duration {
        if self.failures.len() >= MAX_ENTRIES {
            self.failures.retain(|_, f| !f.retry.due(now));
        }
        let key = (
            provider.to_string(),
            (scope == Scope::Image).then(|| (image.to_string(), account.to_string())),
        );
        let failure = self.failures.entry(key).or_insert_with(|| Failure {
            retry: Retry::new(FAILURE_BACKOFF_MIN, FAILURE_BACKOFF_MAX),
            last: String::new(),
        });
        failure.last = error;
        failure.retry.failed(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    const S: Duration = Duration::from_secs(1);

    fn credential(password: &str) -> Vec<PluginCredential> {
        vec![PluginCredential {
            provider: "p".into(),
            key: "r.io".into(),
            username: "u".into(),
            password: SecretString::from(password.to_string()),
            tokens: vec![],
        }]
    }

    fn is_hit(l: &Lookup) -> bool {
        matches!(l, Lookup::Hit(_))
    }

    fn failing(l: Lookup) -> Option<(String, Duration)> {
        match l {
            Lookup::Failing { last, retry_in } => Some((last, retry_in)),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_stand_for_their_duration_by_key_type() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        for (ty, key) in [
            ("Image", "r.io/a"),
            ("Registry", "r.io"),
            ("Global", "<global>"),
        ] {
            assert_eq!(cache_key(ty, "r.io/a").as_deref(), Some(key));
        }
        assert_eq!(cache_key("Forever", "r.io/a"), None);
        c.answered("p", "r.io/a", "r.io".into(), 60 * S, credential("x"), t0);
        assert!(is_hit(&c.lookup("p", "r.io/b", t0)), "same registry");
        assert!(
            matches!(c.lookup("q", "r.io/a", t0), Lookup::Miss),
            "other provider"
        );
        assert!(
            matches!(c.lookup("p", "s.io/a", t0), Lookup::Miss),
            "other registry"
        );
        tokio::time::advance(59 * S).await;
        assert!(is_hit(&c.lookup("p", "r.io/a", Instant::now())));
        tokio::time::advance(S).await;
        assert!(matches!(
            c.lookup("p", "r.io/a", Instant::now()),
            Lookup::Miss
        ));
        // Zero: not kept.
        c.answered(
            "p",
            "r.io/a",
            "r.io/a".into(),
            Duration::ZERO,
            credential("x"),
            t0,
        );
        assert!(matches!(
            c.lookup("p", "r.io/a", Instant::now()),
            Lookup::Miss
        ));
    }

    /// A plugin's `cacheDuration` of centuries (or anything Go accepts) never overflows the clock
    /// and never keeps an answer past 24 hours.
    #[tokio::test(start_paused = true)]
    async fn a_huge_cache_duration_is_capped_at_a_day() {
        for duration in [
            Duration::from_secs(2_562_047 * 3600),
            Duration::from_nanos(u64::MAX),
            Duration::MAX,
        ] {
            let mut c = Cache::default();
            let t0 = Instant::now();
            c.answered(
                "p",
                "r.io/a",
                "r.io/a".into(),
                duration,
                credential("x"),
                t0,
            );
            assert!(is_hit(&c.lookup(
                "p",
                "r.io/a",
                t0 + MAX_CACHE_DURATION - S
            )));
            assert!(
                matches!(
                    c.lookup("p", "r.io/a", t0 + MAX_CACHE_DURATION),
                    Lookup::Miss
                ),
                "{duration:?}"
            );
        }
    }

    /// The state machine of a failing provider: the failure is the answer until its backoff
    /// elapses, the backoff doubles (jittered) up to its cap, and an answer clears it.
    #[tokio::test(start_paused = true)]
    async fn failures_back_off_until_an_answer() {
        let mut c = Cache::default();
        let mut step = FAILURE_BACKOFF_MIN;
        for round in 0..8 {
            let now = Instant::now();
            assert!(
                matches!(c.lookup("p", "r.io/a", now), Lookup::Miss),
                "round {round}: due"
            );
            let error = format!("exited with 3 (round {round})");
            let delay = c.failed("p", "r.io/a", Scope::Image, error.clone(), now);
            assert!(
                delay >= step / 2 && delay < step && delay <= FAILURE_BACKOFF_MAX,
                "round {round}: {delay:?} for step {step:?}"
            );
            let (last, retry_in) = failing(c.lookup("p", "r.io/a", now)).unwrap();
            assert_eq!((last, retry_in), (error.clone(), delay));
            // Only that image: another one of the same provider is run.
            assert!(matches!(c.lookup("p", "r.io/b", now), Lookup::Miss));
            tokio::time::advance(delay - Duration::from_millis(1)).await;
            assert!(failing(c.lookup("p", "r.io/a", Instant::now())).is_some());
            tokio::time::advance(Duration::from_millis(1)).await;
            step = (step * 2).min(FAILURE_BACKOFF_MAX);
        }
        let now = Instant::now();
        c.answered(
            "p",
            "r.io/a",
            "r.io/a".into(),
            Duration::ZERO,
            credential("x"),
            now,
        );
        let delay = c.failed("p", "r.io/a", Scope::Image, "again".into(), now);
        assert!(
            delay < FAILURE_BACKOFF_MIN,
            "an answer resets the backoff: {delay:?}"
        );
    }

    /// A timeout holds for every image of the provider (and for no other provider): a pass of
    /// many images needing it waits out one timeout.
    #[tokio::test(start_paused = true)]
    async fn a_provider_wide_failure_answers_for_every_image() {
        let mut c = Cache::default();
        let now = Instant::now();
        let delay = c.failed("p", "r.io/a", Scope::Provider, "timed out".into(), now);
        for image in ["r.io/a", "r.io/b", "other.io/c"] {
            let (last, retry_in) = failing(c.lookup("p", image, now)).unwrap();
            assert_eq!((last.as_str(), retry_in), ("timed out", delay), "{image}");
        }
        assert!(matches!(c.lookup("q", "r.io/a", now), Lookup::Miss));
        tokio::time::advance(delay).await;
        let now = Instant::now();
        assert!(matches!(c.lookup("p", "r.io/b", now), Lookup::Miss));
        // It answers again: the provider-wide failure is gone, and the backoff starts over.
        c.answered(
            "p",
            "r.io/b",
            "r.io/b".into(),
            Duration::ZERO,
            credential("x"),
            now,
        );
        assert!(matches!(c.lookup("p", "r.io/a", now), Lookup::Miss));
    }

    /// Service-account token mode: an answer for one ServiceAccount part never answers for
    /// another, nor for a pull without one; a failure for one image holds for its ServiceAccount
    /// only, a provider-wide one for all.
    #[tokio::test(start_paused = true)]
    async fn the_service_account_part_keeps_answers_apart() {
        let mut c = Cache::default();
        let now = Instant::now();
        c.answered_as(
            "p",
            "r.io/a",
            "sa:1",
            "r.io".into(),
            60 * S,
            credential("x"),
            now,
        );
        assert!(is_hit(&c.lookup_as("p", "r.io/b", "sa:1", now)));
        assert!(matches!(
            c.lookup_as("p", "r.io/a", "sa:2", now),
            Lookup::Miss
        ));
        assert!(matches!(c.lookup("p", "r.io/a", now), Lookup::Miss));
        c.failed_as("p", "s.io/a", "sa:1", Scope::Image, "exit 3".into(), now);
        assert!(failing(c.lookup_as("p", "s.io/a", "sa:1", now)).is_some());
        assert!(matches!(
            c.lookup_as("p", "s.io/a", "sa:2", now),
            Lookup::Miss
        ));
        c.failed_as(
            "p",
            "t.io/a",
            "sa:1",
            Scope::Provider,
            "timed out".into(),
            now,
        );
        assert!(failing(c.lookup_as("p", "u.io/a", "sa:2", now)).is_some());
        assert!(failing(c.lookup("p", "u.io/a", now)).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_are_bounded() {
        let mut c = Cache::default();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES {
            c.failed("p", &format!("r.io/{i}"), Scope::Image, "x".into(), now);
            c.answered("q", "r.io/a", format!("r.io/{i}"), S, credential("x"), now);
        }
        tokio::time::advance(FAILURE_BACKOFF_MAX).await;
        let now = Instant::now();
        c.failed("p", "r.io/new", Scope::Image, "x".into(), now);
        c.answered("q", "r.io/a", "r.io/new".into(), S, credential("x"), now);
        assert_eq!((c.failures.len(), c.answers.len()), (1, 1));
    }
}
