//! The daemon's canary loop: the tokio driver of the schedule (`decide::canary::schedule`), which
//! decides which PullSet to check, when, and why. This module only does the I/O: it feeds the
//! schedule the sources' changes, the local API's manual requests and the passing of time, runs
//! the canaries it hands out (one at a time) with the runner, and passes outcomes to the sink and
//! to manual callers, and the next canary times to [`CanaryControl`]. It beats the watchdog at
//! each iteration, after each canary run and while it waits (however far the next cron time).

use crate::adapters::serve::local_api::{RepliesLost, RunNowRefused};
use crate::daemon::watchdog::Beat;
use crate::decide::canary::runner::{CanaryOutcome, CanaryRunner, RegistryProbe};
use crate::decide::canary::schedule::{Action, CanarySchedule, Input, Now, ScheduleConfig};
use crate::decide::credentials::CredentialResolver;
use crate::decide::gate::{GateWait, awaited_at_start_up};
use crate::model::inventory::ObjectKey;
use crate::model::node::NodeInfo;
use crate::model::snapshot::Snapshot;
use crate::model::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// This node: only the PullSets whose `nodeSelector` selects it are canaried here.
    pub node: NodeInfo,
    /// Rotation and start-up canaries wait a deterministic offset in `[0, window)`.
    pub rotation_window: Duration,
    /// A failed canary is retried after a jittered backoff whose step doubles from `retry_min`
    /// to `retry_max` (see `decide::retry::Retry`).
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A PullSet's canaries start at most once per this, manual runs aside.
    pub min_interval: Duration,
    /// Cluster mode: the gate, whose PullSets' start-up canaries run at once while the Node
    /// carries the taint.
    pub gate: Option<GateWait>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            node: NodeInfo::default(),
            rotation_window: Duration::from_secs(2),
            retry_min: Duration::from_secs(15),
            retry_max: Duration::from_secs(600),
            min_interval: Duration::from_secs(300),
            gate: None,
        }
    }
}

/// Manual requests waiting for the service to take them (it takes each at once unless a canary
/// is running); more are refused with [`RunNowRefused::Busy`].
pub const MANUAL_REQUESTS: usize = 16;

/// What a manual caller's reply stream holds before the caller reads it: one PullSet's whole
/// run (one outcome per image, at most `MAX_IMAGES`) and a last slot for [`RepliesLost`]. The
/// loop never waits on a caller: one that leaves the stream full while more outcomes come gets
/// that mark in the last slot and nothing more (the status board keeps every outcome).
pub const REPLY_OUTCOMES: usize = crate::model::pullset::MAX_IMAGES + 1;

/// A manual caller's end of its reply stream.
pub type ReplyTx = mpsc::Sender<Result<CanaryOutcome, RepliesLost>>;

/// A request to run canaries now (the local API's `TriggerCanary`): one PullSet, or every one
/// canaried on this node; each outcome is also sent to `reply`, which closes when all are done.
pub struct ManualRun {
    pub pullset: Option<ObjectKey>,
    pub reply: ReplyTx,
}

/// How the rest of the agent reaches a running service: manual runs in, next canary times out.
#[derive(Clone)]
pub struct CanaryControl {
    manual: mpsc::Sender<ManualRun>,
    next: Arc<Mutex<BTreeMap<ObjectKey, SystemTime>>>,
}

impl CanaryControl {
    /// The handle, and what the service itself keeps.
    pub fn new() -> (Self, ControlEnd) {
        let (manual, rx) = mpsc::channel(MANUAL_REQUESTS);
        let next = Arc::new(Mutex::new(BTreeMap::new()));
        (
            Self {
                manual,
                next: next.clone(),
            },
            ControlEnd { manual: rx, next },
        )
    }

    /// Runs canaries now; the receiver yields each outcome and ends when the run is done. At
    /// most [`MANUAL_REQUESTS`] requests wait for the service to take them: more are refused
    /// (`Busy`), not queued. The reply channel holds [`REPLY_OUTCOMES`].
    pub fn run_now(
        &self,
        pullset: Option<ObjectKey>,
    ) -> Result<mpsc::Receiver<Result<CanaryOutcome, RepliesLost>>, RunNowRefused> {
        let (reply, rx) = mpsc::channel(REPLY_OUTCOMES);
        self.manual
            .try_send(ManualRun { pullset, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RunNowRefused::Busy,
                mpsc::error::TrySendError::Closed(_) => RunNowRefused::Stopped,
            })?;
        Ok(rx)
    }

    /// When each scheduled PullSet's next canary is due (its cron tick plus this node's jitter).
    pub fn next_canaries(&self) -> BTreeMap<ObjectKey, SystemTime> {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The service's end of a [`CanaryControl`].
pub struct ControlEnd {
    manual: mpsc::Receiver<ManualRun>,
    next: Arc<Mutex<BTreeMap<ObjectKey, SystemTime>>>,
}

/// Where outcomes go.
pub trait CanarySink: Send + Sync {
    fn outcome(&self, outcome: &CanaryOutcome);
    /// The latest verdict of every canaried image, after each run.
    fn verdicts(&self, verdicts: &BTreeMap<(ObjectKey, String), Verdict>);
}

/// Runs until `cancel`.
pub async fn run<P: RegistryProbe + 'static>(
    runner: Arc<CanaryRunner<P>>,
    resolver: Arc<dyn CredentialResolver>,
    sources: watch::Receiver<Arc<Snapshot>>,
    sink: Arc<dyn CanarySink>,
    config: ServiceConfig,
    control: ControlEnd,
    cancel: CancellationToken,
) {
    run_watched(
        runner,
        resolver,
        sources,
        sink,
        config,
        control,
        cancel,
        Beat::none(),
    )
    .await;
}

/// [`run`], beating through `beat`.
#[allow(clippy::too_many_arguments)]
pub async fn run_watched<P: RegistryProbe + 'static>(
    runner: Arc<CanaryRunner<P>>,
    resolver: Arc<dyn CredentialResolver>,
    mut sources: watch::Receiver<Arc<Snapshot>>,
    sink: Arc<dyn CanarySink>,
    config: ServiceConfig,
    control: ControlEnd,
    cancel: CancellationToken,
    beat: Beat,
) {
    let mut ticker = beat.ticker();
    let ControlEnd {
        manual: mut manual_rx,
        next,
    } = control;
    let mut schedule = CanarySchedule::new(ScheduleConfig {
        node: runner.node.clone(),
        rotation_window: config.rotation_window,
        retry_min: config.retry_min,
        retry_max: config.retry_max,
        min_interval: config.min_interval,
    });
    let mut driver = Driver {
        runner,
        resolver,
        sink,
        next,
        node: config.node,
        gate: config.gate,
        loaded: sources.borrow_and_update().clone(),
        replies: HashMap::new(),
        beat: beat.clone(),
    };
    let start = driver.inventory_changed(&mut schedule);
    driver.act(&mut schedule, start).await;
    loop {
        beat.beat();
        let due = schedule.handle(Input::Tick, Now::current());
        if driver.act(&mut schedule, due).await {
            // A run took time: look again before waiting.
            continue;
        }
        let deadline = schedule.deadline();
        let actions = tokio::select! {
            () = cancel.cancelled() => break,
            // A wait, however long, is cut into beats.
            _ = ticker.tick() => Vec::new(),
            changed = sources.changed() => {
                if changed.is_err() {
                    break;
                }
                driver.loaded = sources.borrow_and_update().clone();
                driver.inventory_changed(&mut schedule)
            }
            Some(run) = manual_rx.recv() => {
                let actions = schedule.handle(Input::Manual(run.pullset), Now::current());
                for action in &actions {
                    if let Action::Awaiting(key) = action {
                        driver.replies.entry(key.clone()).or_default().push(run.reply.clone());
                    }
                }
                actions
            }
            () = sleep_until(deadline) => Vec::new(),
        };
        driver.act(&mut schedule, actions).await;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the loop keeps beside the schedule.
struct Driver<P> {
    runner: Arc<CanaryRunner<P>>,
    resolver: Arc<dyn CredentialResolver>,
    sink: Arc<dyn CanarySink>,
    next: Arc<Mutex<BTreeMap<ObjectKey, SystemTime>>>,
    node: NodeInfo,
    gate: Option<GateWait>,
    loaded: Arc<Snapshot>,
    /// Manual callers waiting for a PullSet's next run.
    replies: HashMap<ObjectKey, Vec<ReplyTx>>,
    beat: Beat,
}

impl<P: RegistryProbe + 'static> Driver<P> {
    fn inventory_changed(&self, schedule: &mut CanarySchedule) -> Vec<Action> {
        let node = self.loaded.node(&self.node);
        let awaited = self.gate.as_ref().map_or_else(BTreeSet::new, |gate| {
            awaited_at_start_up(
                &self.loaded.inventory,
                &node,
                self.loaded.node_facts.as_ref(),
                gate,
            )
        });
        schedule.handle(
            Input::Inventory {
                inventory: &self.loaded.inventory,
                node: &node,
                awaited: &awaited,
            },
            Now::current(),
        )
    }

    /// Carries out the schedule's actions; `true` when a canary ran.
    async fn act(&mut self, schedule: &mut CanarySchedule, actions: Vec<Action>) -> bool {
        let mut ran = false;
        let mut actions = VecDeque::from(actions);
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Run { key, trigger } => {
                    ran = true;
                    // Dropped at the end of this run: a manual caller's stream then ends.
                    let mut waiting = self.replies.remove(&key).unwrap_or_default();
                    let Some(set) = self.loaded.inventory.pullsets.get(&key) else {
                        continue;
                    };
                    let depth = set
                        .spec
                        .canary
                        .as_ref()
                        .map(|c| c.depth)
                        .unwrap_or_default();
                    let outcomes = self
                        .runner
                        .check_pullset(
                            &self.loaded.inventory,
                            set,
                            self.resolver.as_ref(),
                            depth,
                            trigger,
                        )
                        .await;
                    self.beat.beat();
                    for o in &outcomes {
                        self.sink.outcome(o);
                        answer_callers(&mut waiting, &mut self.replies, o);
                    }
                    let verdicts: Vec<(String, Verdict)> = outcomes
                        .iter()
                        .map(|o| (o.image.clone(), o.verdict))
                        .collect();
                    let finished = Input::Finished {
                        key: &key,
                        verdicts: &verdicts,
                    };
                    actions.extend(schedule.handle(finished, Now::current()));
                }
                Action::Awaiting(_) => {}
                Action::Dropped(key) => {
                    self.replies.remove(&key);
                }
                Action::Verdicts(verdicts) => self.sink.verdicts(&verdicts),
                Action::NextCanaries(times) => {
                    *self
                        .next
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = times;
                }
            }
        }
        ran
    }
}

/// Sends `outcome` to each caller `waiting` for this run, never waiting on one: a caller whose
/// stream has only its last slot left gets [`RepliesLost`] there and is forgotten, here and for
/// every PullSet it waits for (`later`).
fn answer_callers(
    waiting: &mut Vec<ReplyTx>,
    later: &mut HashMap<ObjectKey, Vec<ReplyTx>>,
    outcome: &CanaryOutcome,
) {
    waiting.retain(|reply| {
        // The loop is the only sender: the capacity seen here only grows until it sends.
        if reply.capacity() > 1 {
            return reply.try_send(Ok(outcome.clone())).is_ok();
        }
        tracing::debug!("a manual canary caller does not keep up; no more results sent to it");
        let _ = reply.try_send(Err(RepliesLost));
        for others in later.values_mut() {
            others.retain(|other| !other.same_channel(reply));
        }
        false
    });
}

impl crate::adapters::serve::local_api::Canaries for CanaryControl {
    fn run_now(
        &self,
        pullset: Option<ObjectKey>,
    ) -> Result<mpsc::Receiver<Result<CanaryOutcome, RepliesLost>>, RunNowRefused> {
        CanaryControl::run_now(self, pullset)
    }

    fn next_canaries(&self) -> BTreeMap<ObjectKey, SystemTime> {
        CanaryControl::next_canaries(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_requests_beyond_the_bound_are_refused_not_queued() {
        let (control, end) = CanaryControl::new();
        let waiting: Vec<_> = (0..MANUAL_REQUESTS)
            .map(|_| control.run_now(None).expect("within the bound"))
            .collect();
        assert_eq!(control.run_now(None).err(), Some(RunNowRefused::Busy));
        drop(end);
        assert_eq!(control.run_now(None).err(), Some(RunNowRefused::Stopped));
        drop(waiting);
    }

    #[test]
    fn a_caller_that_does_not_read_gets_the_lost_mark_and_nothing_more() {
        use crate::decide::canary::runner::tests::outcome;
        let (slow, mut slow_rx) = mpsc::channel(REPLY_OUTCOMES);
        let (reader, mut reader_rx) = mpsc::channel(REPLY_OUTCOMES);
        let other = ObjectKey::new("team", "other");
        // Both asked for every PullSet: they also wait for `other`'s run.
        let mut later = HashMap::from([(other.clone(), vec![slow.clone(), reader.clone()])]);
        let mut waiting = vec![slow, reader];
        let o = outcome("reg.io/a:1", Verdict::Ok, Vec::new());
        let mut read = 0;
        for _ in 0..REPLY_OUTCOMES * 3 {
            answer_callers(&mut waiting, &mut later, &o);
            while let Ok(reply) = reader_rx.try_recv() {
                assert!(reply.is_ok());
                read += 1;
            }
        }
        assert_eq!(
            read,
            REPLY_OUTCOMES * 3,
            "a caller that reads gets everything"
        );
        let mut got = Vec::new();
        while let Ok(reply) = slow_rx.try_recv() {
            got.push(reply.is_ok());
        }
        assert_eq!(got.len(), REPLY_OUTCOMES, "bounded");
        assert!(got[..REPLY_OUTCOMES - 1].iter().all(|ok| *ok));
        assert_eq!(got.last(), Some(&false), "the mark comes last");
        assert_eq!(waiting.len(), 1);
        assert_eq!(later[&other].len(), 1, "forgotten for its later runs too");
        drop((waiting, later));
        assert!(slow_rx.try_recv().is_err());
    }
}
