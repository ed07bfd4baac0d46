//! The manifest bodies a registry-direct canary has already fetched, by digest, so that a later
//! canary of the same digest-pinned image need not `GET` them again (Docker Hub counts manifest
//! `GET`s against its pull rate limit, not `HEAD`s).
//!
//! Only content addressed by a `sha256:` digest is held, and only once its bytes hash to that
//! digest: such a body never changes, whoever asks. Nothing is held by a tag (tags move): a
//! canary of a tag learns the digest the tag names now from its `HEAD`, and asks here by that
//! digest. Nothing here says whether a credential may read the image: the canary still sends its
//! authenticated `HEAD` for every manifest it uses. Bounded by entries and by bytes (each body at
//! most the adapter's manifest limit); the least recently used entries go first. No I/O: the
//! registry adapter holds one, shared by every probe of the process.

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// The default bounds: 256 bodies, 16 MiB in all, 4 MiB each (the registry adapter's manifest
/// limit).
pub const MAX_ENTRIES: usize = 256;
pub const MAX_BYTES: usize = 16 << 20;
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// How much the cache holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub entries: usize,
    pub bytes: usize,
    pub body_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            entries: MAX_ENTRIES,
            bytes: MAX_BYTES,
            body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// Why a body was not cached (the canary goes on without the cache; nothing is wrong with it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotCached {
    #[error("`{0}` is not a sha256 digest (a tag, or another algorithm): not cached")]
    NotSha256(String),
    #[error("the body hashes to {actual}, not {expected}: not cached")]
    Mismatch { expected: String, actual: String },
    #[error("{size} bytes, over the {limit}-byte limit of one cached body")]
    TooLarge { size: usize, limit: usize },
}

struct Entry {
    body: Arc<[u8]>,
    /// When it was last inserted or handed out (a counter, not a clock).
    used: u64,
}

/// Manifest bodies by digest, least recently used evicted first.
pub struct ManifestCache {
    bounds: Bounds,
    entries: HashMap<String, Entry>,
    bytes: usize,
    tick: u64,
}

impl Default for ManifestCache {
    fn default() -> Self {
        Self::new(Bounds::default())
    }
}

impl ManifestCache {
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            entries: HashMap::new(),
            bytes: 0,
            tick: 0,
        }
    }

    /// The body of `digest`, if held (and now the most recently used).
    pub fn get(&mut self, digest: &str) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(digest).map(|e| {
            e.used = tick;
            e.body.clone()
        })
    }

    /// Holds `body` as the content of `digest` once it hashes to it, evicting the least recently
    /// used bodies until both bounds hold.
    pub fn insert(&mut self, digest: &str, body: &[u8]) -> Result<(), NotCached> {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return Err(NotCached::NotSha256(digest.to_string()));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(NotCached::NotSha256(digest.to_string()));
        }
        let limit = self.bounds.body_bytes.min(self.bounds.bytes);
        if body.len() > limit {
            return Err(NotCached::TooLarge {
                size: body.len(),
                limit,
            });
        }
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(body)));
        if actual != digest {
            return Err(NotCached::Mismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        if self.bounds.entries == 0 {
            return Ok(());
        }
        self.tick += 1;
        if let Some(old) = self.entries.remove(digest) {
            self.bytes -= old.body.len();
        }
        while self.entries.len() >= self.bounds.entries
            || self.bytes + body.len() > self.bounds.bytes
        {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.body.len();
            }
        }
        self.bytes += body.len();
        self.entries.insert(
            digest.to_string(),
            Entry {
                body: Arc::from(body),
                used: self.tick,
            },
        );
        Ok(())
    }

    /// Bodies held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test fixtures

    use super::*;

    fn body(n: usize, fill: u8) -> (String, Vec<u8>) {
        let bytes = vec![fill; n];
        (
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            bytes,
        )
    }

    fn small(entries: usize, bytes: usize) -> ManifestCache {
        ManifestCache::new(Bounds {
            entries,
            bytes,
            body_bytes: 100,
        })
    }

    #[test]
    fn only_a_body_that_hashes_to_its_sha256_digest_is_held() {
        let (digest, bytes) = body(10, b'a');
        let (other, _) = body(10, b'b');
        let mut cache = small(4, 1000);
        for (key, want) in [
            ("v1", Err(NotCached::NotSha256("v1".into()))),
            ("latest", Err(NotCached::NotSha256("latest".into()))),
            (
                "sha512:abcd",
                Err(NotCached::NotSha256("sha512:abcd".into())),
            ),
            (
                "sha256:ABCD",
                Err(NotCached::NotSha256("sha256:ABCD".into())),
            ),
            (
                other.as_str(),
                Err(NotCached::Mismatch {
                    expected: other.clone(),
                    actual: digest.clone(),
                }),
            ),
        ] {
            assert_eq!(cache.insert(key, &bytes), want, "{key}");
            assert_eq!(cache.get(key), None, "{key}");
        }
        assert!(cache.is_empty());
        assert_eq!(cache.insert(&digest, &bytes), Ok(()));
        assert_eq!(cache.get(&digest).as_deref(), Some(&bytes[..]));
        assert_eq!((cache.len(), cache.bytes()), (1, 10));
    }

    #[test]
    fn a_body_over_the_limit_is_not_held() {
        let mut cache = small(4, 1000);
        let (digest, bytes) = body(101, b'a');
        assert_eq!(
            cache.insert(&digest, &bytes),
            Err(NotCached::TooLarge {
                size: 101,
                limit: 100
            })
        );
        let (digest, bytes) = body(100, b'a');
        assert_eq!(cache.insert(&digest, &bytes), Ok(()));
        // The whole cache smaller than one body: nothing over the total is held either.
        let mut tiny = small(4, 50);
        let (digest, bytes) = body(60, b'a');
        assert_eq!(
            tiny.insert(&digest, &bytes),
            Err(NotCached::TooLarge {
                size: 60,
                limit: 50
            })
        );
        assert!(tiny.is_empty());
    }

    #[test]
    fn the_least_recently_used_go_first_when_entries_run_out() {
        let mut cache = small(2, 1000);
        let (a, ab) = body(10, b'a');
        let (b, bb) = body(10, b'b');
        let (c, cb) = body(10, b'c');
        cache.insert(&a, &ab).unwrap();
        cache.insert(&b, &bb).unwrap();
        // `a` used since `b` was added: `b` is the one to go.
        assert!(cache.get(&a).is_some());
        cache.insert(&c, &cb).unwrap();
        assert_eq!(
            (
                cache.get(&a).is_some(),
                cache.get(&b).is_some(),
                cache.get(&c).is_some()
            ),
            (true, false, true)
        );
        assert_eq!((cache.len(), cache.bytes()), (2, 20));
    }

    #[test]
    fn bytes_bound_the_cache_as_well_as_entries() {
        let mut cache = small(10, 100);
        let bodies: Vec<_> = (0..4).map(|i| body(40, b'a' + i)).collect();
        for (digest, bytes) in &bodies {
            cache.insert(digest, bytes).unwrap();
            assert!(cache.bytes() <= 100, "{}", cache.bytes());
        }
        // 40 + 40 fit in 100; a third evicts the oldest.
        let held: Vec<bool> = bodies.iter().map(|(d, _)| cache.get(d).is_some()).collect();
        assert_eq!(held, [false, false, true, true]);
        assert_eq!((cache.len(), cache.bytes()), (2, 80));
    }

    #[test]
    fn inserting_again_replaces_without_double_counting() {
        let mut cache = small(2, 1000);
        let (a, ab) = body(10, b'a');
        cache.insert(&a, &ab).unwrap();
        cache.insert(&a, &ab).unwrap();
        assert_eq!((cache.len(), cache.bytes()), (1, 10));
    }

    #[test]
    fn the_default_bounds_are_the_documented_ones() {
        assert_eq!(
            Bounds::default(),
            Bounds {
                entries: 256,
                bytes: 16 << 20,
                body_bytes: 4 << 20
            }
        );
    }
}
