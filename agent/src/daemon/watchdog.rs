//! The daemon's side of `decide::watchdog`: the shared [`Heartbeats`] every loop beats through
//! (the clock is read here, not in the state machine), the decorators that beat on each runtime
//! call, registry probe and credential resolution, and the supervision of spawned tasks (a task
//! that panics is logged as an error naming it and ends the process; one that returns while the
//! daemon runs is marked ended, so `/healthz` fails).

use crate::decide::canary::runner::{ProbeFailure, ProbeReport, RegistryProbe};
use crate::decide::credentials::{CredentialResolver, Resolution};
use crate::decide::runtime::{ImageRuntime, PresentImage, PullAuth, RuntimeFailure};
use crate::decide::watchdog::{Health, Task, Watchdog, beat_every};
use crate::model::image_ref::ImageRef;
use crate::model::inventory::Inventory;
use crate::model::pullset::{CanaryDepth, ValidPullSet};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The watchdog, shared by the loops (beats) and `/healthz` (checks).
#[derive(Clone, Default)]
pub struct Heartbeats {
    dog: Arc<Mutex<Watchdog>>,
}

impl Heartbeats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watchdog> {
        self.dog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts watching `task`; its [`Beat`] handle.
    pub fn watch(&self, task: Task, bound: Duration) -> Beat {
        self.lock().watch(task, bound, Instant::now());
        tracing::debug!(%task, bound = %humantime::format_duration(bound), "watchdog: watching");
        Beat {
            heartbeats: self.clone(),
            task,
            every: beat_every(bound),
        }
    }

    /// What `/healthz` answers now.
    pub fn check(&self) -> Health {
        self.lock().check(Instant::now())
    }
}

/// One task's heartbeat.
#[derive(Clone)]
pub struct Beat {
    heartbeats: Heartbeats,
    task: Task,
    every: Duration,
}

impl Beat {
    /// A handle that beats nothing (a task nobody watches, e.g. in unit tests).
    pub fn none() -> Self {
        Self {
            heartbeats: Heartbeats::default(),
            task: Task::Prepull,
            every: Duration::from_secs(3600),
        }
    }

    pub fn beat(&self) {
        self.heartbeats.lock().beat(self.task, Instant::now());
    }

    /// The task ended (returned or panicked).
    pub fn ended(&self, why: &str) {
        self.heartbeats.lock().ended(self.task, why);
    }

    /// How often to beat while waiting: a wait should be cut into pieces no longer than this.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// A ticker for a loop's `select!`: beat on each tick while waiting.
    pub fn ticker(&self) -> tokio::time::Interval {
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    }

    /// Beats when dropped: a step's end, whether it returned or was cancelled.
    fn on_drop(&self) -> BeatOnDrop<'_> {
        BeatOnDrop(self)
    }
}

struct BeatOnDrop<'a>(&'a Beat);

impl Drop for BeatOnDrop<'_> {
    fn drop(&mut self) {
        self.0.beat();
    }
}

/// Marks `beat`'s task ended when dropped, saying whether it panicked: put one at the top of a
/// task's future.
pub struct EndGuard(pub Beat);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            "panicked"
        } else {
            "returned"
        };
        self.0.ended(why);
    }
}

/// A runtime that beats after every call.
pub struct Beating<T> {
    pub inner: T,
    pub beat: Beat,
}

impl<R: ImageRuntime> ImageRuntime for Beating<R> {
    fn list_images(&self) -> BoxFuture<'_, Result<Vec<PresentImage>, RuntimeFailure>> {
        Box::pin(async move {
            let _beat = self.beat.on_drop();
            self.inner.list_images().await
        })
    }

    fn image_status<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresentImage>, RuntimeFailure>> {
        Box::pin(async move {
            let _beat = self.beat.on_drop();
            self.inner.image_status(image).await
        })
    }

    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<PullAuth<'a>>,
    ) -> BoxFuture<'a, Result<String, RuntimeFailure>> {
        Box::pin(async move {
            let _beat = self.beat.on_drop();
            self.inner.pull_image(image, auth).await
        })
    }

    fn image_fs(
        &self,
    ) -> BoxFuture<'_, Result<Option<crate::decide::runtime::ImageFsSpace>, RuntimeFailure>> {
        Box::pin(async move {
            let _beat = self.beat.on_drop();
            self.inner.image_fs().await
        })
    }
}

impl<P: RegistryProbe> RegistryProbe for Beating<P> {
    fn probe<'a>(
        &'a self,
        image: &'a ImageRef,
        candidate: Option<&'a crate::decide::credentials::Candidate>,
        depth: CanaryDepth,
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeFailure>> {
        Box::pin(async move {
            let _beat = self.beat.on_drop();
            self.inner.probe(image, candidate, depth).await
        })
    }
}

impl<C: CredentialResolver + ?Sized> CredentialResolver for Beating<Arc<C>> {
    fn resolve<'a>(
        &'a self,
        inventory: &'a Inventory,
        pullset: &'a ValidPullSet,
        image: &'a ImageRef,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(async move {
            let _beat = self.beat.on_drop();
            self.inner.resolve(inventory, pullset, image).await
        })
    }
}

/// Why a supervised task stopped the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task} panicked: {message}")]
pub struct TaskPanicked {
    pub task: &'static str,
    pub message: String,
}

/// Awaits a spawned task: `Ok` when it returned (or was cancelled), the panic (logged as an error
/// naming the task) when it panicked.
pub async fn supervise(
    task: &'static str,
    handle: &mut tokio::task::JoinHandle<()>,
) -> Result<(), TaskPanicked> {
    match handle.await {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => {
            let message = panic_message(e.into_panic());
            tracing::error!(task, panic = %message, "task panicked; the agent exits");
            Err(TaskPanicked { task, message })
        }
        Err(_) => Ok(()),
    }
}

/// Runs `future` (a loop that is not spawned), turning its panic into the same error.
pub async fn catch_panic<T>(
    task: &'static str,
    future: impl Future<Output = T>,
) -> Result<T, TaskPanicked> {
    use futures::FutureExt as _;
    match std::panic::AssertUnwindSafe(future).catch_unwind().await {
        Ok(v) => Ok(v),
        Err(panic) => {
            let message = panic_message(panic);
            tracing::error!(task, panic = %message, "task panicked; the agent exits");
            Err(TaskPanicked { task, message })
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_reported_by_name_and_marked_ended() {
        let heartbeats = Heartbeats::default();
        let beat = heartbeats.watch(Task::CanaryScheduler, Duration::from_secs(3600));
        let guard = EndGuard(beat);
        let mut handle = tokio::spawn(async move {
            let _guard = guard;
            panic!("boom");
        });
        let err = supervise("canary-scheduler", &mut handle)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            TaskPanicked {
                task: "canary-scheduler",
                message: "boom".into()
            }
        );
        let health = heartbeats.check();
        assert_eq!(
            health.unhealthy.map(|u| (u.task, u.why)),
            Some((Task::CanaryScheduler, "ended: panicked".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_is_ended_not_panicked() {
        let heartbeats = Heartbeats::default();
        let guard = EndGuard(heartbeats.watch(Task::NodeReporter, Duration::from_secs(1)));
        let mut handle = tokio::spawn(async move {
            let _guard = guard;
        });
        assert_eq!(supervise("node-reporter", &mut handle).await, Ok(()));
        assert_eq!(
            heartbeats.check().unhealthy.map(|u| u.why),
            Some("ended: returned".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unspawned_loop_that_panics_is_caught_by_name() {
        let err = catch_panic("prepull", async { panic!("{}", String::from("bad")) })
            .await
            .unwrap_err();
        assert_eq!(err.task, "prepull");
        assert_eq!(err.message, "bad");
    }
}
