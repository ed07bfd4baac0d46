//! The watchdog: whether the daemon's long-running loops are alive, as `/healthz` reports it.
//!
//! A pure state machine: the loops' heartbeats and ends come in with the time they happened, a
//! verdict goes out (healthy, or the first unhealthy task and why). It never reads the clock and
//! never sleeps. Each watched task has its own bound, derived from its own flags (see
//! [`Bounds`]): the longest one step of that loop may legitimately go without a beat. A loop beats
//! at each iteration, at each step that made progress (a runtime call, a registry probe, a
//! credential resolution, an API write answered) and at least every [`beat_every`] while it waits,
//! so that a loop sleeping until a far cron time is never judged stalled. A task that ended (its
//! future returned or panicked) is unhealthy from then on.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The loops `/healthz` answers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// The pre-pull loop (`pullgate run`'s main loop).
    Prepull,
    /// The canary scheduler's driver.
    CanaryScheduler,
    /// The node reporter (cluster mode): conditions, Events, the gate.
    NodeReporter,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Self::Prepull => "prepull",
            Self::CanaryScheduler => "canary-scheduler",
            Self::NodeReporter => "node-reporter",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The longest gap each task may leave between two beats, from its own flags. `grace` (the
/// `--watchdog-grace` flag) is added to every bound: what the bound does not model (scheduling,
/// a slow disk, a credential plugin's own timeout).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub grace: Duration,
}

impl Bounds {
    /// The pre-pull loop beats after every runtime call and credential resolution: one call may
    /// take its deadline (`PullImage`'s is the longest), then the whole reconnect budget, then the
    /// longest retry delay before the next call.
    pub fn prepull(
        &self,
        longest_call: Duration,
        reconnect_budget: Duration,
        retry_max_delay: Duration,
    ) -> Duration {
        longest_call
            .saturating_add(reconnect_budget)
            .saturating_add(retry_max_delay)
            .saturating_add(self.grace)
    }

    /// The canary scheduler beats after every registry probe and runtime call of a canary: the
    /// longest is a registry probe's deadline (`--canary-timeout`, the caller passes the longer of
    /// it and `--registry-timeout`) or a runtime pull's deadline, plus the reconnect budget.
    pub fn canary(
        &self,
        registry_timeout: Duration,
        pull_timeout: Duration,
        reconnect_budget: Duration,
    ) -> Duration {
        registry_timeout
            .max(pull_timeout)
            .saturating_add(reconnect_budget)
            .saturating_add(self.grace)
    }

    /// The node reporter beats after every API write: a write that takes longer than the
    /// condition heartbeat has already missed the heartbeat it promises the Node.
    pub fn node_reporter(&self, condition_heartbeat: Duration) -> Duration {
        condition_heartbeat.saturating_add(self.grace)
    }
}

/// How often a waiting loop beats: a third of its bound (at least 100 ms), so that a wait, however
/// long, never looks like a stall.
pub fn beat_every(bound: Duration) -> Duration {
    (bound / 3).max(Duration::from_millis(100))
}

#[derive(Clone, Debug)]
struct Watched {
    bound: Duration,
    last_beat: Instant,
    ended: Option<String>,
}

/// What `/healthz` says of one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskHealth {
    pub task: Task,
    /// `running`, `stalled` or `ended`.
    pub state: &'static str,
    pub last_beat_ms_ago: u64,
    pub bound_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The first unhealthy task, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unhealthy {
    pub task: Task,
    pub why: String,
}

/// The verdict, with every task's state (the `/healthz` body, as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// `ok` or `unhealthy`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<Unhealthy>,
    pub tasks: Vec<TaskHealth>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.unhealthy.is_none()
    }
}

/// The watched tasks and what they last said.
#[derive(Clone, Debug, Default)]
pub struct Watchdog {
    tasks: BTreeMap<Task, Watched>,
}

impl Watchdog {
    /// Starts watching `task` with this bound (counts as a beat). Watching it again resets it.
    pub fn watch(&mut self, task: Task, bound: Duration, now: Instant) {
        self.tasks.insert(
            task,
            Watched {
                bound,
                last_beat: now,
                ended: None,
            },
        );
    }

    /// `task` made progress (ignored for a task not watched, or ended).
    pub fn beat(&mut self, task: Task, now: Instant) {
        if let Some(w) = self.tasks.get_mut(&task)
            && w.ended.is_none()
        {
            w.last_beat = w.last_beat.max(now);
        }
    }

    /// `task` ended (returned, or panicked): unhealthy from now on. The first reason is kept.
    pub fn ended(&mut self, task: Task, why: impl Into<String>) {
        if let Some(w) = self.tasks.get_mut(&task) {
            w.ended.get_or_insert_with(|| why.into());
        }
    }

    /// Healthy, or the first task (in [`Task`] order) that ended or went longer than its bound
    /// without a beat.
    pub fn check(&self, now: Instant) -> Health {
        let mut unhealthy = None;
        let tasks = self
            .tasks
            .iter()
            .map(|(&task, w)| {
                let silent = now.saturating_duration_since(w.last_beat);
                let (state, why) = match &w.ended {
                    Some(why) => ("ended", Some(format!("ended: {why}"))),
                    None if silent > w.bound => (
                        "stalled",
                        Some(format!(
                            "no progress for {}, over its bound of {}",
                            human(silent),
                            human(w.bound)
                        )),
                    ),
                    None => ("running", None),
                };
                if let (None, Some(why)) = (&unhealthy, &why) {
                    unhealthy = Some(Unhealthy {
                        task,
                        why: why.clone(),
                    });
                }
                TaskHealth {
                    task,
                    state,
                    last_beat_ms_ago: millis(silent),
                    bound_ms: millis(w.bound),
                    why,
                }
            })
            .collect();
        Health {
            status: if unhealthy.is_none() {
                "ok"
            } else {
                "unhealthy"
            },
            unhealthy,
            tasks,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration to the second (to the millisecond below one second), for a human.
fn human(d: Duration) -> String {
    let d = if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(0))
    };
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn beats_keep_a_task_healthy_and_silence_past_its_bound_does_not() {
        let start = Instant::now();
        let mut dog = Watchdog::default();
        dog.watch(Task::Prepull, 10 * S, start);
        dog.watch(Task::NodeReporter, 3 * S, start);
        assert!(dog.check(start).is_healthy());

        // The node reporter beats; at 3 s both are within their bounds (the bound is inclusive).
        dog.beat(Task::NodeReporter, start + 2 * S);
        let health = dog.check(start + 3 * S);
        assert!(health.is_healthy(), "{health:?}");
        assert_eq!(health.status, "ok");

        // 5 s after its last beat the node reporter is past its 3 s; the pre-pull loop is not.
        let health = dog.check(start + 7 * S);
        assert_eq!(health.status, "unhealthy");
        assert_eq!(
            health.unhealthy,
            Some(Unhealthy {
                task: Task::NodeReporter,
                why: "no progress for 5s, over its bound of 3s".into(),
            })
        );
        let by: BTreeMap<_, _> = health.tasks.iter().map(|t| (t.task, t)).collect();
        assert_eq!(by[&Task::Prepull].state, "running");
        assert_eq!(by[&Task::NodeReporter].state, "stalled");
        assert_eq!(by[&Task::NodeReporter].last_beat_ms_ago, 5000);
        assert_eq!(by[&Task::NodeReporter].bound_ms, 3000);

        // A beat makes it healthy again.
        dog.beat(Task::NodeReporter, start + 7 * S);
        assert!(dog.check(start + 7 * S).is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_unhealthy_task_in_order_is_named() {
        let start = Instant::now();
        let mut dog = Watchdog::default();
        for task in [Task::NodeReporter, Task::CanaryScheduler, Task::Prepull] {
            dog.watch(task, S, start);
        }
        let health = dog.check(start + 5 * S);
        assert_eq!(
            health.unhealthy.map(|u| u.task),
            Some(Task::Prepull),
            "in Task order"
        );
        assert_eq!(health.tasks.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_task_is_unhealthy_at_once_and_beats_do_not_revive_it() {
        let start = Instant::now();
        let mut dog = Watchdog::default();
        dog.watch(Task::CanaryScheduler, 3600 * S, start);
        dog.ended(Task::CanaryScheduler, "panicked");
        dog.ended(Task::CanaryScheduler, "returned");
        dog.beat(Task::CanaryScheduler, start + S);
        let health = dog.check(start + S);
        assert_eq!(
            health.unhealthy,
            Some(Unhealthy {
                task: Task::CanaryScheduler,
                why: "ended: panicked".into(),
            })
        );
        assert_eq!(health.tasks[0].state, "ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_beats_while_it_waits_is_never_stalled() {
        // A canary scheduler waiting a week for its next cron time, beating every third of its
        // bound, as its driver does.
        let start = Instant::now();
        let bound = Bounds { grace: 5 * S }.canary(60 * S, 900 * S, 30 * S);
        let mut dog = Watchdog::default();
        dog.watch(Task::CanaryScheduler, bound, start);
        let week = start + 7 * 24 * 3600 * S;
        let mut now = start;
        while now < week {
            now += beat_every(bound);
            assert!(dog.check(now).is_healthy(), "at {:?}", now - start);
            dog.beat(Task::CanaryScheduler, now);
        }
        // Without its beats, the same wait is a stall.
        let mut silent = Watchdog::default();
        silent.watch(Task::CanaryScheduler, bound, start);
        assert!(!silent.check(week).is_healthy());
    }

    #[test]
    fn unwatched_tasks_are_not_reported_and_the_body_is_json() {
        let start = Instant::now();
        let mut dog = Watchdog::default();
        dog.beat(Task::NodeReporter, start);
        dog.ended(Task::NodeReporter, "returned");
        let health = dog.check(start);
        assert!(health.is_healthy() && health.tasks.is_empty());

        dog.watch(Task::Prepull, S, start);
        let json = serde_json::to_value(dog.check(start + 2 * S)).unwrap();
        assert_eq!(json["status"], "unhealthy");
        assert_eq!(json["unhealthy"]["task"], "prepull");
        assert_eq!(json["tasks"][0]["state"], "stalled");
    }

    #[test]
    fn bounds_derive_from_the_tasks_own_flags_and_never_overflow() {
        let b = Bounds { grace: 60 * S };
        assert_eq!(b.prepull(900 * S, 30 * S, 30 * S), 1020 * S);
        assert_eq!(b.canary(60 * S, 900 * S, 30 * S), 990 * S);
        assert_eq!(b.node_reporter(600 * S), 660 * S);
        assert_eq!(b.prepull(Duration::MAX, S, S), Duration::MAX);
        assert_eq!(beat_every(3 * S), S);
        assert_eq!(beat_every(Duration::ZERO), Duration::from_millis(100));
    }
}
