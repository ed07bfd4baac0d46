//! The one in-memory [`ImageRuntime`] the unit tests drive (the pre-pull engine's and the runtime
//! canary's): scripted answers per image and password, what was pulled, and how many pulls were in
//! flight at once; and a runtime that goes away: after a given number of calls, every call spends a
//! reconnect budget of tokio time and fails as unreachable. No socket; a pull takes 5 ms of tokio
//! time (run the tests with paused time).

use super::{ImageFsSpace, ImageRuntime, PresentImage, PullAuth, RuntimeFailure};
use crate::decide::credentials::{Candidate, CredentialSource};
use crate::model::inventory::ObjectKey;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret as _, SecretString};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Scripted answers: for each (image, password) a queue of results (then `Ok`); present images by
/// reference. An anonymous pull has the password `""`.
#[derive(Default)]
pub struct FakeRuntime {
    pub present: Mutex<HashMap<String, PresentImage>>,
    answers: Mutex<HashMap<(String, String), Vec<Result<(), RuntimeFailure>>>>,
    /// Every pull, in order: (image, password).
    pub pulls: Mutex<Vec<(String, String)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Every call (`ListImages`, `ImageStatus`, `PullImage`), counted as it starts.
    calls: AtomicUsize,
    /// From this call on (counted from 0), every call fails unreachable after this budget.
    down: Mutex<Option<(usize, Duration)>>,
    /// What `ImageFsInfo` reports (`None`: cannot be told).
    pub image_fs: Mutex<Option<ImageFsSpace>>,
    /// How many times `ImageFsInfo` was asked.
    pub image_fs_reads: AtomicUsize,
}

impl FakeRuntime {
    /// The next pulls of `image` with `password` answer `results`, in order.
    pub fn answer(&self, image: &str, password: &str, results: Vec<Result<(), RuntimeFailure>>) {
        lock(&self.answers).insert((image.into(), password.into()), results);
    }

    /// Holds `image` as present under `id`, by tag.
    pub fn hold(&self, image: &str, id: &str) {
        lock(&self.present).insert(
            image.into(),
            PresentImage {
                id: id.into(),
                repo_tags: vec![image.into()],
                repo_digests: vec![],
                size: 0,
            },
        );
    }

    /// The passwords pulls were made with, in order.
    pub fn passwords_tried(&self) -> Vec<String> {
        lock(&self.pulls).iter().map(|(_, p)| p.clone()).collect()
    }

    /// From the `after`-th call on (0: the next one), every call waits `budget` (the CRI adapter's
    /// reconnect budget) and fails as unreachable, until [`FakeRuntime::come_back`].
    pub fn go_down_after(&self, after: usize, budget: Duration) {
        *lock(&self.down) = Some((self.calls() + after, budget));
    }

    /// The runtime answers again.
    pub fn come_back(&self) {
        *lock(&self.down) = None;
    }

    /// How many calls were made (of any kind).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts a call; when the runtime is down, waits its reconnect budget and fails.
    async fn call(&self) -> Result<(), RuntimeFailure> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let down = *lock(&self.down);
        match down {
            Some((after, budget)) if n >= after => {
                tokio::time::sleep(budget).await;
                Err(RuntimeFailure::Unreachable {
                    endpoint: "unix:///run/fake.sock".into(),
                    cause: "transport error: connection refused".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The most pulls that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// A failure as containerd reports one: its own message.
pub fn rejected(message: &str) -> Result<(), RuntimeFailure> {
    Err(RuntimeFailure::Rejected {
        operation: "PullImage",
        message: message.into(),
    })
}

/// A pull secret's candidate `secret ns/<secret> key r.io`, user `u`.
pub fn candidate(secret: &str, password: &str) -> Candidate {
    Candidate {
        source: CredentialSource::PullSecret {
            secret: ObjectKey::new("ns", secret),
            key: "r.io".into(),
        },
        username: "u".into(),
        password: SecretString::from(password.to_string()),
        tokens: vec![],
        expires_at: None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ImageRuntime for FakeRuntime {
    fn list_images(&self) -> BoxFuture<'_, Result<Vec<PresentImage>, RuntimeFailure>> {
        Box::pin(async move {
            self.call().await?;
            Ok(lock(&self.present).values().cloned().collect())
        })
    }

    fn image_status<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresentImage>, RuntimeFailure>> {
        Box::pin(async move {
            self.call().await?;
            Ok(lock(&self.present).get(image).cloned())
        })
    }

    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<PullAuth<'a>>,
    ) -> BoxFuture<'a, Result<String, RuntimeFailure>> {
        let password = auth.map_or(String::new(), |a| a.password.expose_secret().to_string());
        Box::pin(async move {
            self.call().await?;
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            lock(&self.pulls).push((image.to_string(), password.clone()));
            let next = match lock(&self.answers).get_mut(&(image.to_string(), password)) {
                Some(q) if !q.is_empty() => q.remove(0),
                _ => Ok(()),
            };
            next?;
            let id = format!("sha256:id-of-{image}");
            let name = image
                .split_once('@')
                .or_else(|| image.rsplit_once(':'))
                .map_or(image, |(name, _)| name);
            lock(&self.present).insert(
                image.to_string(),
                PresentImage {
                    id: id.clone(),
                    repo_tags: vec![image.to_string()],
                    repo_digests: vec![format!("{name}@sha256:digest")],
                    size: 1024,
                },
            );
            Ok(id)
        })
    }

    /// Not counted as a call (the scripted outages count the calls that pull).
    fn image_fs(&self) -> BoxFuture<'_, Result<Option<ImageFsSpace>, RuntimeFailure>> {
        self.image_fs_reads.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { Ok(*lock(&self.image_fs)) })
    }
}
