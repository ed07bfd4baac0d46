//! When each PullSet's canary runs, and why: the canary scheduler as a plain state machine.
//!
//! Inputs ([`Input`]): time passed, the inventory changed, a manual request (the local API's
//! `TriggerCanary`), a run finished with its outcomes. Outputs ([`Action`]): run this PullSet's
//! canaries now, the latest verdicts, the next canary times; and [`CanarySchedule::deadline`], when
//! to come back. The daemon's driver (`daemon::canary_scheduler`) does the I/O.
//!
//! Triggers: start-up (every PullSet with `canary`, each delayed by its deterministic offset in the
//! rotation window, but at once for the PullSets a tainted node's gate waits for); a PullSet that
//! appears later, the same way; rotation (the data of a referenced Secret or the ServiceAccount's secret list changed, with `onRotation`), within the rotation
//! window; the PullSet's cron `schedule` (UTC), each node delayed by its offset in the PullSet's
//! `jitter`; retries of a failed canary, backed off (`retry::Retry`, jittered and capped) until it
//! succeeds; manual runs, at once. Requests for the same PullSet coalesce: the earliest wins, with
//! its trigger. At most one run is handed out at a time: runs are sequential, so a node never
//! stampedes its registries.
//!
//! The floor: a PullSet's canaries start at most once per `min_interval`
//! (`--min-canary-interval`) whatever asks — cron, rotation, retry, start-up — except a manual
//! run. A request within the floor of the PullSet's last run is deferred to the floor and
//! coalesced with the others, so the first rotation after a quiet floor still runs at once, and a
//! Secret rewritten every second costs one canary per floor. A cron schedule whose ticks come
//! closer than the floor (`* * * * * *`, or every minute under a 5 min floor) is refused where it
//! is built, here, with an error naming the PullSet and `spec.canary.schedule` (logged once per
//! expression); its other triggers still run.
//!
//! Fairness: of the runs that are due, the next one comes from the namespace after the last
//! one served (round-robin over namespaces, in name order), the earliest of that namespace first:
//! a namespace with many PullSets (or a registry that hangs until the canary timeout) delays
//! another namespace's canary by at most one run of its own. The queue holds at most one run
//! per canaried PullSet (requests coalesce), so it is bounded by the inventory.
//!
//! No duration panics it: a `jitter` window is clamped to
//! [`MAX_CANARY_JITTER`] (validation refuses more), every wait to [`MAX_DELAY`].

use crate::decide::canary::jitter;
use crate::decide::canary::rotation;
use crate::decide::canary::runner::Trigger;
use crate::decide::retry::Retry;
use crate::model::inventory::{Inventory, ObjectKey};
use crate::model::node::NodeInfo;
use crate::model::pullset::{MAX_CANARY_JITTER, ValidPullSet, cron_schedule};
use crate::model::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The longest wait the schedule ever sets: a year. Every delay it makes from valid input is far
/// shorter (a jitter is at most [`MAX_CANARY_JITTER`], a retry at most `retry_max`), and a year is
/// far within what the monotonic clock and tokio's timers hold (a `DelayQueue` about two years),
/// so whatever a PullSet or a flag says, no deadline overflows and no timer panics. A cron tick
/// further away is looked at again when the year is up.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `at + delay`, the delay clamped to [`MAX_DELAY`]; never panics (at the end of the monotonic
/// clock, which no host reaches, it is `at`).
fn later(at: Instant, delay: Duration) -> Instant {
    at.checked_add(delay.min(MAX_DELAY)).unwrap_or(at)
}

/// The latest verdict of every canaried image, by (PullSet, image).
pub type Verdicts = BTreeMap<(ObjectKey, String), Verdict>;

/// Settings of the schedule.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    /// This node's name: the seed of its jitter offsets.
    pub node: String,
    /// Start-up and rotation canaries wait a deterministic offset in `[0, window)`.
    pub rotation_window: Duration,
    /// The first retry step of a failed canary; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// The floor: a PullSet's canaries start at most once per this, manual runs aside.
    pub min_interval: Duration,
}

/// Why a PullSet's schedule is not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "PullSet {pullset}: spec.canary.schedule `{schedule}` fires every {}, more often than pullgate run --min-canary-interval {}: refused, its scheduled canaries do not run (rotation, retries and manual runs still do)",
        humantime::format_duration(*every),
        humantime::format_duration(*floor)
    )]
    TooFrequent {
        pullset: ObjectKey,
        schedule: String,
        every: Duration,
        floor: Duration,
    },
}

/// The two clocks at one moment: the monotonic one for deadlines, the wall clock for cron (whose
/// ticks are calendar times, UTC).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn current() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What happened.
pub enum Input<'a> {
    /// Time passed (the deadline, or any wake-up).
    Tick,
    /// The sources published a new inventory (the first one is the start-up); `node` is this node
    /// with the labels the source knows.
    Inventory {
        inventory: &'a Inventory,
        node: &'a NodeInfo,
        /// The PullSets a tainted node's gate waits for (`gate::awaited_at_start_up`): their
        /// start-up canary runs at once, not after its offset in the rotation window.
        awaited: &'a BTreeSet<ObjectKey>,
    },
    /// Run now: one PullSet, or every one canaried here.
    Manual(Option<ObjectKey>),
    /// The run handed out by [`Action::Run`] finished: each image's verdict.
    Finished {
        key: &'a ObjectKey,
        verdicts: &'a [(String, Verdict)],
    },
}

/// What the driver does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run this PullSet's canaries now, then report [`Input::Finished`]. Never more than one
    /// at a time.
    Run { key: ObjectKey, trigger: Trigger },
    /// A manual request waits for this PullSet's next run (or its [`Action::Dropped`]).
    Awaiting(ObjectKey),
    /// A queued run was dropped: the PullSet is no longer canaried here.
    Dropped(ObjectKey),
    /// The latest verdicts changed (after a run, or when PullSets stopped being canaried here;
    /// also empty when there is nothing to canary, so the credentials condition is not Unknown
    /// forever).
    Verdicts(Verdicts),
    /// When each scheduled PullSet's next canary is due (its cron tick plus this node's jitter).
    NextCanaries(BTreeMap<ObjectKey, SystemTime>),
}

/// A PullSet's cron schedule, with its next tick.
#[derive(Debug)]
struct Cron {
    expression: String,
    pattern: croner::Cron,
    /// The next tick (wall clock) and when it is due (monotonic); `None`: never again.
    next: Option<(SystemTime, Instant)>,
    /// The tick is more than [`MAX_DELAY`] away: when due, look again rather than run.
    beyond: bool,
}

impl Cron {
    /// `None` (with a warning) for a schedule validation would have refused.
    fn parse(schedule: &str) -> Option<Self> {
        match cron_schedule(schedule) {
            Ok((expression, pattern)) => Some(Self {
                expression,
                pattern,
                next: None,
                beyond: false,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot schedule canary");
                None
            }
        }
    }

    /// The shortest gap between the next few ticks after `now` (`None`: fewer than two ticks).
    fn shortest_gap(&self, now: SystemTime) -> Option<Duration> {
        let mut after = chrono::DateTime::<chrono::Utc>::from(now);
        let mut ticks = Vec::new();
        for _ in 0..8 {
            let Ok(tick) = self.pattern.find_next_occurrence(&after, false) else {
                break;
            };
            ticks.push(SystemTime::from(tick));
            after = tick;
        }
        ticks
            .windows(2)
            .filter_map(|w| w[1].duration_since(w[0]).ok())
            .min()
    }

    /// Finds the first tick after `now.wall`.
    fn advance(&mut self, now: Now) {
        let after = chrono::DateTime::<chrono::Utc>::from(now.wall);
        let next = self.pattern.find_next_occurrence(&after, false).ok();
        let wait = next.map(|tick| {
            let tick = SystemTime::from(tick);
            (tick, tick.duration_since(now.wall).unwrap_or_default())
        });
        self.beyond = wait.is_some_and(|(_, wait)| wait > MAX_DELAY);
        self.next = wait.map(|(tick, wait)| (tick, later(now.instant, wait)));
    }

    /// The tick is due: `false` when only the [`MAX_DELAY`] clamp is up and the tick still ahead.
    fn fires(&self, now: Now) -> bool {
        self.next
            .is_some_and(|(tick, at)| at <= now.instant && !(self.beyond && tick > now.wall))
    }
}

/// The schedule's state.
#[derive(Debug)]
pub struct CanarySchedule {
    config: ScheduleConfig,
    /// The inventory was seen at least once.
    started: bool,
    /// PullSets with canaries selected for this node, with their `jitter` window.
    canaried: BTreeMap<ObjectKey, Duration>,
    fingerprints: BTreeMap<ObjectKey, [u8; 32]>,
    crons: BTreeMap<ObjectKey, Cron>,
    /// One queued run per PullSet: when, and why.
    pending: BTreeMap<ObjectKey, (Instant, Trigger)>,
    retries: BTreeMap<ObjectKey, Retry>,
    /// Schedules refused (they fire more often than the floor), each said once.
    refused: BTreeMap<ObjectKey, String>,
    /// When each PullSet's last run was handed out: the floor counts from there.
    last_run: BTreeMap<ObjectKey, Instant>,
    /// The namespace of the last run handed out: the next comes from the one after it.
    last_namespace: Option<String>,
    verdicts: Verdicts,
    published_next: Option<BTreeMap<ObjectKey, SystemTime>>,
}

impl CanarySchedule {
    pub fn new(config: ScheduleConfig) -> Self {
        Self {
            config,
            started: false,
            canaried: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            crons: BTreeMap::new(),
            pending: BTreeMap::new(),
            retries: BTreeMap::new(),
            refused: BTreeMap::new(),
            last_run: BTreeMap::new(),
            last_namespace: None,
            verdicts: BTreeMap::new(),
            published_next: None,
        }
    }

    /// When to come back with [`Input::Tick`]: the earliest queued run or cron tick.
    pub fn deadline(&self) -> Option<Instant> {
        let runs = self.pending.values().map(|(at, _)| *at);
        let ticks = self.crons.values().filter_map(|c| c.next.map(|(_, at)| at));
        runs.chain(ticks).min()
    }

    /// When each scheduled PullSet's next canary is due (its cron tick plus this node's jitter).
    pub fn next_canaries(&self) -> BTreeMap<ObjectKey, SystemTime> {
        self.crons
            .iter()
            .filter_map(|(key, cron)| {
                let (tick, _) = cron.next?;
                let offset = self.schedule_offset(key);
                Some((key.clone(), tick.checked_add(offset).unwrap_or(tick)))
            })
            .collect()
    }

    pub fn handle(&mut self, input: Input<'_>, now: Now) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Tick => self.tick(now, &mut actions),
            Input::Inventory {
                inventory,
                node,
                awaited,
            } => {
                self.inventory(inventory, node, awaited, now, &mut actions);
            }
            Input::Manual(pullset) => {
                let keys = match pullset {
                    Some(key) => vec![key],
                    None => self.canaried.keys().cloned().collect(),
                };
                for key in keys {
                    self.enqueue(key.clone(), Trigger::Manual, now.instant);
                    actions.push(Action::Awaiting(key));
                }
            }
            Input::Finished { key, verdicts } => self.finished(key, verdicts, now, &mut actions),
        }
        self.publish_next(&mut actions);
        actions
    }

    /// This node's offset in `window`, the window clamped to [`MAX_DELAY`].
    fn offset(&self, key: &ObjectKey, window: Duration) -> Duration {
        jitter::offset(&self.config.node, key, window.min(MAX_DELAY))
    }

    fn schedule_offset(&self, key: &ObjectKey) -> Duration {
        let window = self.canaried.get(key).copied().unwrap_or_default();
        self.offset(key, window)
    }

    fn tick(&mut self, now: Now, actions: &mut Vec<Action>) {
        let due: Vec<(ObjectKey, bool)> = self
            .crons
            .iter()
            .filter(|(_, c)| c.next.is_some_and(|(_, at)| at <= now.instant))
            .map(|(k, c)| (k.clone(), c.fires(now)))
            .collect();
        for (key, fires) in due {
            if fires {
                let delay = self.schedule_offset(&key);
                self.enqueue(key.clone(), Trigger::Schedule, later(now.instant, delay));
            }
            if let Some(cron) = self.crons.get_mut(&key) {
                cron.advance(now);
            }
        }
        while let Some((key, trigger)) = self.take_due(now.instant) {
            if self.canaried.contains_key(&key) {
                self.last_run.insert(key.clone(), now.instant);
                self.last_namespace = Some(key.namespace.clone());
                actions.push(Action::Run { key, trigger });
                return;
            }
            actions.push(Action::Dropped(key));
        }
    }

    /// The next due run, removed from the queue: from the first namespace after the last one
    /// served that has a due run (wrapping round), the earliest of that namespace.
    fn take_due(&mut self, now: Instant) -> Option<(ObjectKey, Trigger)> {
        let due = || self.pending.iter().filter(|(_, (at, _))| *at <= now);
        let after = self.last_namespace.as_deref();
        let namespace = due()
            .map(|(k, _)| k.namespace.as_str())
            .filter(|ns| after.is_some_and(|last| *ns > last))
            .min()
            .or_else(|| due().map(|(k, _)| k.namespace.as_str()).min())?;
        let (key, _) = due()
            .filter(|(k, _)| k.namespace == namespace)
            .min_by_key(|(_, (at, _))| *at)?;
        let key = key.clone();
        let (_, trigger) = self.pending.remove(&key)?;
        Some((key, trigger))
    }

    fn inventory(
        &mut self,
        inventory: &Inventory,
        node: &NodeInfo,
        awaited: &BTreeSet<ObjectKey>,
        now: Now,
        actions: &mut Vec<Action>,
    ) {
        let first = !self.started;
        self.started = true;
        let selected = |s: &&ValidPullSet| node.matches(&s.spec.node_selector);
        self.canaried = inventory
            .pullsets
            .values()
            .filter(selected)
            .filter_map(|s| {
                let canary = s.spec.canary.as_ref()?;
                let window = canary
                    .jitter
                    .as_deref()
                    .and_then(|j| humantime::parse_duration(j).ok())
                    .unwrap_or_default();
                if window > MAX_CANARY_JITTER {
                    tracing::warn!(pullset = %s.key, ?window, "spec.canary.jitter over the bound; clamped");
                }
                Some((s.key.clone(), window.min(MAX_CANARY_JITTER)))
            })
            .collect();
        let new = rotation::fingerprints(inventory);
        let window = self.config.rotation_window;
        for key in rotation::rotated(&self.fingerprints, &new) {
            if let Some(set) = inventory.pullsets.get(&key)
                && set.spec.canary.as_ref().is_some_and(|c| c.on_rotation)
                && node.matches(&set.spec.node_selector)
            {
                tracing::info!(pullset = %key, "credentials changed; re-validating");
                let at = later(now.instant, self.offset(&key, window));
                self.enqueue(key, Trigger::Rotation, at);
            }
        }
        // New here (all of them at start-up): a start-up canary, spread over the window.
        let fresh: Vec<ObjectKey> = self
            .canaried
            .keys()
            .filter(|k| first || !self.fingerprints.contains_key(*k))
            .cloned()
            .collect();
        for key in fresh {
            let at = if awaited.contains(&key) {
                now.instant
            } else {
                later(now.instant, self.offset(&key, window))
            };
            self.enqueue(key, Trigger::Startup, at);
        }
        // A start-up canary already waiting for its offset when the taint becomes known (the
        // Node read after the PullSets) runs now; the earliest request wins.
        let waiting: Vec<ObjectKey> = self
            .pending
            .iter()
            .filter(|(k, (_, trigger))| *trigger == Trigger::Startup && awaited.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.enqueue(key, Trigger::Startup, now.instant);
        }
        self.fingerprints = new;
        let canaried = &self.canaried;
        self.retries.retain(|k, _| canaried.contains_key(k));
        self.last_run.retain(|k, _| canaried.contains_key(k));
        // Only the images the canaried PullSets name now: a verdict of an image removed from its
        // PullSet would hold `PullCredentialsValid` (and the gate) at its last value forever.
        let live: BTreeSet<(ObjectKey, String)> = inventory
            .pullsets
            .values()
            .filter(|s| canaried.contains_key(&s.key))
            .flat_map(|s| s.images.iter().map(|i| (s.key.clone(), i.to_string())))
            .collect();
        let before = self.verdicts.len();
        self.verdicts.retain(|slot, _| live.contains(slot));
        if self.verdicts.len() != before || self.canaried.is_empty() {
            actions.push(Action::Verdicts(self.verdicts.clone()));
        }
        self.sync_crons(inventory, node, now);
    }

    /// One cron per selected PullSet with a schedule; a changed schedule starts again.
    fn sync_crons(&mut self, inventory: &Inventory, node: &NodeInfo, now: Now) {
        let wanted: BTreeMap<ObjectKey, Cron> = inventory
            .pullsets
            .values()
            .filter(|s| node.matches(&s.spec.node_selector))
            .filter_map(|s| {
                let schedule = s.spec.canary.as_ref()?.schedule.as_ref()?;
                Some((s.key.clone(), Cron::parse(schedule)?))
            })
            .collect();
        self.crons
            .retain(|k, c| wanted.get(k).is_some_and(|w| w.expression == c.expression));
        let floor = self.config.min_interval;
        let mut refused = BTreeMap::new();
        for (key, mut cron) in wanted {
            if self.crons.contains_key(&key) {
                continue;
            }
            if let Some(gap) = cron.shortest_gap(now.wall).filter(|gap| *gap < floor) {
                if self.refused.get(&key) != Some(&cron.expression) {
                    let error = ScheduleError::TooFrequent {
                        pullset: key.clone(),
                        schedule: cron.expression.clone(),
                        every: gap,
                        floor,
                    };
                    tracing::error!("{error}");
                }
                refused.insert(key, cron.expression);
                continue;
            }
            cron.advance(now);
            self.crons.insert(key, cron);
        }
        self.refused = refused;
    }

    fn finished(
        &mut self,
        key: &ObjectKey,
        verdicts: &[(String, Verdict)],
        now: Now,
        actions: &mut Vec<Action>,
    ) {
        for (image, verdict) in verdicts {
            self.verdicts.insert((key.clone(), image.clone()), *verdict);
        }
        actions.push(Action::Verdicts(self.verdicts.clone()));
        if verdicts.iter().all(|(_, v)| v.is_ok()) {
            self.retries.remove(key);
            return;
        }
        // Clamped before `Retry` adds its delay to the clock.
        let min = self.config.retry_min.min(MAX_DELAY);
        let max = self.config.retry_max.min(MAX_DELAY);
        let delay = self
            .retries
            .entry(key.clone())
            .or_insert_with(|| Retry::new(min, max))
            .failed(now.instant);
        self.enqueue(key.clone(), Trigger::Retry, later(now.instant, delay));
    }

    /// Queues a run, no sooner than the floor after the PullSet's last run unless manual; an
    /// earlier request for the same PullSet wins.
    fn enqueue(&mut self, key: ObjectKey, trigger: Trigger, at: Instant) {
        let at = match self.last_run.get(&key) {
            Some(last) if trigger != Trigger::Manual => {
                at.max(later(*last, self.config.min_interval))
            }
            _ => at,
        };
        match self.pending.get(&key) {
            Some((queued, _)) if *queued <= at => {}
            _ => {
                self.pending.insert(key, (at, trigger));
            }
        }
    }

    fn publish_next(&mut self, actions: &mut Vec<Action>) {
        if !self.started {
            return;
        }
        let next = self.next_canaries();
        if self.published_next.as_ref() != Some(&next) {
            self.published_next = Some(next.clone());
            actions.push(Action::NextCanaries(next));
        }
    }
}

#[cfg(test)]
mod tests;
