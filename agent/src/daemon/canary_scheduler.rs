//! The daemon's canary loop: which PullSet to check, when, and why.
//!
//! Triggers: start-up (every PullSet with `canary`, spread over the rotation window); rotation (the
//! data of a referenced Secret or the ServiceAccount's secret list changed, `onRotation`), within
//! seconds; the PullSet's cron `schedule`, each node delayed by its deterministic jitter offset; and
//! retries of a failed canary with capped exponential backoff until it succeeds. Requests for the
//! same PullSet coalesce (the earliest wins). Runs are sequential: a node never stampedes its
//! registries.

use crate::adapters::files::manifests::Loaded;
use crate::decide::canary::jitter;
use crate::decide::canary::rotation;
use crate::decide::canary::runner::{CanaryOutcome, CanaryRunner, RegistryProbe, Trigger};
use crate::decide::credentials::CredentialResolver;
use crate::model::inventory::{Inventory, ObjectKey};
use crate::model::node::NodeInfo;
use crate::model::pullset::{ValidPullSet, cron_expression};
use crate::model::verdict::Verdict;
use futures::StreamExt as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// This node: only the PullSets whose `nodeSelector` selects it are canaried here.
    pub node: NodeInfo,
    /// Rotation and start-up canaries wait a deterministic offset in `[0, window)`.
    pub rotation_window: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            node: NodeInfo::default(),
            rotation_window: Duration::from_secs(2),
            retry_min: Duration::from_secs(15),
            retry_max: Duration::from_secs(600),
        }
    }
}

/// A request to run canaries now (the local API's `TriggerCanary`): one PullSet, or every one
/// canaried on this node; each outcome is also sent to `reply`, which closes when all are done.
pub struct ManualRun {
    pub pullset: Option<ObjectKey>,
    pub reply: mpsc::UnboundedSender<CanaryOutcome>,
}

/// How the rest of the agent reaches a running service: manual runs in, next canary times out.
#[derive(Clone)]
pub struct CanaryControl {
    manual: mpsc::UnboundedSender<ManualRun>,
    next: Arc<Mutex<BTreeMap<ObjectKey, SystemTime>>>,
}

impl CanaryControl {
    /// The handle, and what the service itself keeps.
    pub fn new() -> (Self, ControlEnd) {
        let (manual, rx) = mpsc::unbounded_channel();
        let next = Arc::new(Mutex::new(BTreeMap::new()));
        (
            Self {
                manual,
                next: next.clone(),
            },
            ControlEnd { manual: rx, next },
        )
    }

    /// Runs canaries now; the receiver yields each outcome and ends when the run is done. `None`
    /// when the service has stopped.
    pub fn run_now(
        &self,
        pullset: Option<ObjectKey>,
    ) -> Option<mpsc::UnboundedReceiver<CanaryOutcome>> {
        let (reply, rx) = mpsc::unbounded_channel();
        self.manual.send(ManualRun { pullset, reply }).ok()?;
        Some(rx)
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
    manual: mpsc::UnboundedReceiver<ManualRun>,
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
    mut sources: watch::Receiver<Arc<Loaded>>,
    sink: Arc<dyn CanarySink>,
    config: ServiceConfig,
    control: ControlEnd,
    cancel: CancellationToken,
) {
    let ControlEnd {
        manual: mut manual_rx,
        next: next_canaries,
    } = control;
    let mut replies: HashMap<ObjectKey, Vec<mpsc::UnboundedSender<CanaryOutcome>>> = HashMap::new();
    let node = runner.node.clone();
    let (fire_tx, mut fire_rx) = mpsc::unbounded_channel::<ObjectKey>();
    let mut scheduler = match JobScheduler::new().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot create the canary scheduler; scheduled canaries are off");
            None
        }
    };
    if let Some(s) = scheduler.as_mut()
        && let Err(e) = s.start().await
    {
        tracing::error!(error = %e, "cannot start the canary scheduler; scheduled canaries are off");
    }
    let mut jobs: HashMap<ObjectKey, (String, uuid::Uuid)> = HashMap::new();
    let mut queue: DelayQueue<(ObjectKey, Trigger)> = DelayQueue::new();
    let mut pending: HashMap<ObjectKey, Key> = HashMap::new();
    let mut failures: HashMap<ObjectKey, u32> = HashMap::new();
    let mut verdicts: BTreeMap<(ObjectKey, String), Verdict> = BTreeMap::new();

    let mut loaded = sources.borrow_and_update().clone();
    let mut this_node = loaded.node(&config.node);
    let mut fingerprints = rotation::fingerprints(&loaded.inventory);
    for set in canaried(&loaded.inventory, &this_node) {
        let delay = jitter::offset(&node, &set.key, config.rotation_window);
        enqueue(
            &mut queue,
            &mut pending,
            set.key.clone(),
            Trigger::Startup,
            delay,
        );
    }
    sync_jobs(
        scheduler.as_mut(),
        &mut jobs,
        &loaded.inventory,
        &this_node,
        &fire_tx,
    )
    .await;
    publish_next(scheduler.as_mut(), &jobs, &loaded, &node, &next_canaries).await;
    // Nothing to canary here: the credentials condition is True at once, not Unknown forever.
    if canaried(&loaded.inventory, &this_node).next().is_none() {
        sink.verdicts(&verdicts);
    }

    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = sources.changed() => {
                if changed.is_err() {
                    break;
                }
                loaded = sources.borrow_and_update().clone();
                this_node = loaded.node(&config.node);
                let new = rotation::fingerprints(&loaded.inventory);
                for key in rotation::rotated(&fingerprints, &new) {
                    if let Some(set) = loaded.inventory.pullsets.get(&key)
                        && set.spec.canary.as_ref().is_some_and(|c| c.on_rotation)
                        && this_node.matches(&set.spec.node_selector)
                    {
                        tracing::info!(pullset = %key, "credentials changed; re-validating");
                        let delay = jitter::offset(&node, &key, config.rotation_window);
                        enqueue(&mut queue, &mut pending, key, Trigger::Rotation, delay);
                    }
                }
                for set in canaried(&loaded.inventory, &this_node) {
                    if !fingerprints.contains_key(&set.key) {
                        let delay = jitter::offset(&node, &set.key, config.rotation_window);
                        enqueue(&mut queue, &mut pending, set.key.clone(), Trigger::Startup, delay);
                    }
                }
                fingerprints = new;
                let selected: std::collections::BTreeSet<ObjectKey> =
                    canaried(&loaded.inventory, &this_node).map(|s| s.key.clone()).collect();
                let before = verdicts.len();
                verdicts.retain(|(key, _), _| selected.contains(key));
                if verdicts.len() != before || selected.is_empty() {
                    sink.verdicts(&verdicts);
                }
                sync_jobs(scheduler.as_mut(), &mut jobs, &loaded.inventory, &this_node, &fire_tx).await;
                publish_next(scheduler.as_mut(), &jobs, &loaded, &node, &next_canaries).await;
            }
            Some(run) = manual_rx.recv() => {
                let keys: Vec<ObjectKey> = match run.pullset {
                    Some(key) => vec![key],
                    None => canaried(&loaded.inventory, &this_node).map(|s| s.key.clone()).collect(),
                };
                for key in keys {
                    replies.entry(key.clone()).or_default().push(run.reply.clone());
                    enqueue(&mut queue, &mut pending, key, Trigger::Manual, Duration::ZERO);
                }
            }
            Some(key) = fire_rx.recv() => {
                let window = loaded
                    .inventory
                    .pullsets
                    .get(&key)
                    .and_then(|s| s.spec.canary.as_ref())
                    .and_then(|c| c.jitter.as_deref())
                    .and_then(|j| humantime::parse_duration(j).ok())
                    .unwrap_or_default();
                let delay = jitter::offset(&node, &key, window);
                enqueue(&mut queue, &mut pending, key, Trigger::Schedule, delay);
                publish_next(scheduler.as_mut(), &jobs, &loaded, &node, &next_canaries).await;
            }
            Some(expired) = queue.next() => {
                let (key, trigger) = expired.into_inner();
                pending.remove(&key);
                // Dropped at the end of this run: a manual caller's stream then ends.
                let waiting = replies.remove(&key).unwrap_or_default();
                let Some(set) = loaded
                    .inventory
                    .pullsets
                    .get(&key)
                    .filter(|s| s.spec.canary.is_some() && this_node.matches(&s.spec.node_selector))
                else {
                    continue;
                };
                let depth = set.spec.canary.as_ref().map(|c| c.depth).unwrap_or_default();
                let outcomes = runner.check_pullset(&loaded.inventory, set, resolver.as_ref(), depth, trigger).await;
                let mut all_ok = true;
                for o in &outcomes {
                    let previous = verdicts.insert((key.clone(), o.image.clone()), o.verdict);
                    match (previous, o.verdict.is_ok()) {
                        (Some(p), true) if !p.is_ok() => tracing::info!(pullset = %key, image = %o.image, "CanaryRecovered"),
                        (Some(p), false) if p.is_ok() => tracing::warn!(pullset = %key, image = %o.image, verdict = %o.verdict, "CanaryFailed"),
                        (None, false) => tracing::warn!(pullset = %key, image = %o.image, verdict = %o.verdict, "CanaryFailed"),
                        _ => {}
                    }
                    all_ok &= o.verdict.is_ok();
                    sink.outcome(o);
                    for reply in &waiting {
                        let _ = reply.send(o.clone());
                    }
                }
                sink.verdicts(&verdicts);
                if all_ok {
                    failures.remove(&key);
                } else {
                    let n = failures.entry(key.clone()).or_insert(0);
                    *n += 1;
                    let backoff = config.retry_min.saturating_mul(1 << (*n - 1).min(16)).min(config.retry_max);
                    enqueue(&mut queue, &mut pending, key, Trigger::Retry, backoff);
                }
            }
        }
    }
    if let Some(mut s) = scheduler {
        let _ = s.shutdown().await;
    }
}

/// Records when each scheduled PullSet's canary is next due: the cron tick plus the jitter.
async fn publish_next(
    scheduler: Option<&mut JobScheduler>,
    jobs: &HashMap<ObjectKey, (String, uuid::Uuid)>,
    loaded: &Loaded,
    node: &str,
    next: &Mutex<BTreeMap<ObjectKey, SystemTime>>,
) {
    let Some(scheduler) = scheduler else {
        return;
    };
    let mut times = BTreeMap::new();
    for (key, (_, id)) in jobs {
        let Ok(Some(tick)) = scheduler.next_tick_for_job(*id).await else {
            continue;
        };
        let window = loaded
            .inventory
            .pullsets
            .get(key)
            .and_then(|s| s.spec.canary.as_ref())
            .and_then(|c| c.jitter.as_deref())
            .and_then(|j| humantime::parse_duration(j).ok())
            .unwrap_or_default();
        times.insert(
            key.clone(),
            SystemTime::from(tick) + jitter::offset(node, key, window),
        );
    }
    *next
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = times;
}

fn canaried<'a>(
    inventory: &'a Inventory,
    node: &'a NodeInfo,
) -> impl Iterator<Item = &'a ValidPullSet> {
    inventory
        .pullsets
        .values()
        .filter(|s| s.spec.canary.is_some() && node.matches(&s.spec.node_selector))
}

/// Queues a check; an earlier request for the same PullSet wins.
fn enqueue(
    queue: &mut DelayQueue<(ObjectKey, Trigger)>,
    pending: &mut HashMap<ObjectKey, Key>,
    key: ObjectKey,
    trigger: Trigger,
    delay: Duration,
) {
    if let Some(queued) = pending.get(&key) {
        let due = queue.deadline(queued);
        if due <= tokio::time::Instant::now() + delay {
            return;
        }
        queue.remove(queued);
    }
    let k = queue.insert((key.clone(), trigger), delay);
    pending.insert(key, k);
}

/// One cron job per PullSet with a schedule; changed schedules are replaced.
async fn sync_jobs(
    scheduler: Option<&mut JobScheduler>,
    jobs: &mut HashMap<ObjectKey, (String, uuid::Uuid)>,
    inventory: &Inventory,
    node: &NodeInfo,
    fire: &mpsc::UnboundedSender<ObjectKey>,
) {
    let Some(scheduler) = scheduler else {
        return;
    };
    let wanted: HashMap<ObjectKey, String> = inventory
        .pullsets
        .values()
        .filter(|s| node.matches(&s.spec.node_selector))
        .filter_map(|s| {
            let schedule = s.spec.canary.as_ref()?.schedule.as_ref()?;
            Some((s.key.clone(), cron_expression(schedule).ok()?))
        })
        .collect();
    let stale: Vec<ObjectKey> = jobs
        .iter()
        .filter(|(k, (expr, _))| wanted.get(*k) != Some(expr))
        .map(|(k, _)| k.clone())
        .collect();
    for key in stale {
        if let Some((_, id)) = jobs.remove(&key) {
            let _ = scheduler.remove(&id).await;
        }
    }
    for (key, expression) in wanted {
        if jobs.contains_key(&key) {
            continue;
        }
        let fire = fire.clone();
        let job_key = key.clone();
        let job = Job::new_async(expression.as_str(), move |_id, _scheduler| {
            let fire = fire.clone();
            let key = job_key.clone();
            Box::pin(async move {
                let _ = fire.send(key);
            })
        });
        match job {
            Ok(job) => match scheduler.add(job).await {
                Ok(id) => {
                    jobs.insert(key, (expression, id));
                }
                Err(e) => tracing::warn!(pullset = %key, error = %e, "cannot schedule canary"),
            },
            Err(e) => tracing::warn!(pullset = %key, error = %e, "cannot schedule canary"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_for_a_pullset_coalesce_and_the_earliest_wins() {
        let mut queue = DelayQueue::new();
        let mut pending = HashMap::new();
        let key = ObjectKey::new("ns", "s");
        let start = tokio::time::Instant::now();
        enqueue(
            &mut queue,
            &mut pending,
            key.clone(),
            Trigger::Schedule,
            Duration::from_secs(60),
        );
        enqueue(
            &mut queue,
            &mut pending,
            key.clone(),
            Trigger::Rotation,
            Duration::from_secs(1),
        );
        enqueue(
            &mut queue,
            &mut pending,
            key.clone(),
            Trigger::Retry,
            Duration::from_secs(30),
        );
        enqueue(
            &mut queue,
            &mut pending,
            ObjectKey::new("ns", "other"),
            Trigger::Startup,
            Duration::from_secs(2),
        );
        assert_eq!(queue.len(), 2);
        let (first, trigger) = queue.next().await.unwrap().into_inner();
        assert_eq!((first, trigger), (key, Trigger::Rotation));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let (second, _) = queue.next().await.unwrap().into_inner();
        assert_eq!(second.name, "other");
    }
}
