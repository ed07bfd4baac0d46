//! Node-level reporting: conditions, Events and the readiness gate.
//!
//! [`Reports`] is the handle the pre-pull loop and the canaries use: every condition transition and
//! Event is a JSON line on stdout, and in cluster mode it also goes to one task ([`run_cluster`])
//! that owns everything written to the API server about this node. That task is the tokio driver
//! of `decide::node_report::NodeReport`, which decides what to write and when (conditions on
//! change and every `--condition-heartbeat`, retried with backoff until written with the latest
//! state; Events through the per-node budget, queued while the API server is away; the gate and
//! its taint removal); the driver feeds it the reports, the sources' view of the Node and the
//! passing of time, does the writes (`node_status`, `node_taint`, `event_recorder`), counts each
//! failure by kind, and answers it with the result. It beats the watchdog at each iteration, after
//! each answered write and while it waits, so a write that never returns shows on `/healthz`.
//!
//! Nothing on the way to the task is unbounded, however long a write takes: Events go through a
//! channel of [`EVENTS_IN_CHANNEL`] (a full one drops and counts), and the states (conditions,
//! `CriticalImagesReady`, canary verdicts) are coalesced, the latest of each waiting for the task
//! to take them all at once.

use crate::adapters::kube::NodeWriters;
use crate::adapters::kube::api_errors::ApiErrors;
use crate::adapters::kube::event_recorder::EventRecorder;
use crate::adapters::kube::node_status::NodeStatus;
use crate::adapters::kube::node_taint::{NodeTaints, Removal};
use crate::adapters::serve::json_lines::JsonLines;
use crate::adapters::serve::metrics::Metrics;
use crate::daemon::watchdog::{Beat, EndGuard};
use crate::decide::canary::runner::CanaryOutcome;
use crate::decide::conditions::Condition;
use crate::decide::event_policy::{EventIntent, Regarding};
use crate::decide::gate::{GateNamespaces, gated_canaries, not_allowed};
use crate::decide::node_report::{
    NodeReport, NodeReportConfig, Reply, Step, TAINT_EFFECT, TaintRemoval,
};
use crate::decide::retry::ApiErrorKind;
use crate::decide::status_board::StatusBoard;
use crate::model::inventory::ObjectKey;
use crate::model::node::NodeInfo;
use crate::model::outcome::Outcome;
use crate::model::snapshot::Snapshot;
use crate::model::verdict::Verdict;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

/// Events on their way to the cluster task and not yet taken by it: the channel's bound. Beyond
/// it an Event is dropped and counted (`pullgate_events_dropped_total`), not queued; the task's
/// own queue (`node_report::PENDING_EVENTS`) bounds what it keeps after taking them.
pub const EVENTS_IN_CHANNEL: usize = 1024;

/// The states on their way to the cluster task and not yet taken by it. Only the latest of each
/// matters, so a new one replaces the one waiting: however long the task waits on a write, this
/// holds at most one condition per type, one `CriticalImagesReady` and one set of canary
/// verdicts. The task takes all of it at once, so it never sees a pass's images-ready without
/// the condition the same pass sent before it.
#[derive(Debug, Default)]
struct Pending {
    conditions: BTreeMap<&'static str, Condition>,
    images_ready: Option<bool>,
    canary_verdicts: Option<BTreeMap<(ObjectKey, String), Verdict>>,
}

/// Where [`Pending`] waits, and the task's wake-up.
#[derive(Debug, Default)]
struct States {
    pending: Mutex<Pending>,
    changed: Notify,
}

impl States {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces what waits with `put`'s change, and wakes the task (or leaves it a permit).
    fn put(&self, put: impl FnOnce(&mut Pending)) {
        put(&mut self.lock());
        self.changed.notify_one();
    }

    /// Everything waiting, leaving nothing.
    fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }
}

/// The loops' way to the cluster task: Events through a bounded channel, states coalesced.
#[derive(Clone)]
struct ToCluster {
    events: mpsc::Sender<EventIntent>,
    states: Arc<States>,
}

/// Where node-level results go: JSON lines always; the cluster task in cluster mode.
/// Where every local report goes: JSON lines (and `Watch`), metrics, the status board.
#[derive(Clone, Default)]
pub struct Outputs {
    pub json: Arc<JsonLines>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<StatusBoard>,
}

#[derive(Clone)]
pub struct Reports {
    out: Outputs,
    cluster: Option<ToCluster>,
}

/// Offers an Event to the channel; a full channel drops it (counted).
fn offer_event(events: &mpsc::Sender<EventIntent>, event: EventIntent, metrics: &Metrics) {
    match events.try_send(event) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!("the node reporter is behind; event dropped");
            metrics.events_dropped(1);
        }
        // The task has ended (shutdown): nothing more is written.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

impl Reports {
    /// Local outputs only (standalone).
    pub fn standalone(out: Outputs) -> Self {
        Self { out, cluster: None }
    }

    pub fn json(&self) -> &JsonLines {
        &self.out.json
    }

    /// A pre-pull outcome: a JSON line, metrics, the board, and its Event if it has one.
    pub fn prepull(&self, outcome: &Outcome) {
        self.out.json.emit(outcome);
        self.out.metrics.prepull(outcome);
        self.out.board.prepull(outcome);
        if let Some(event) = crate::decide::event_policy::for_prepull(outcome) {
            self.event(event);
        }
    }

    /// A canary outcome: a JSON line, metrics, the board (its Events come from the caller).
    pub fn canary(&self, outcome: &CanaryOutcome) {
        self.out.json.emit(outcome);
        self.out.metrics.canary(outcome);
        self.out.board.canary(outcome);
    }

    /// Forgets what belongs to PullSet images not in `live` (gone, or no longer selected here):
    /// the board's outcomes and the metric series.
    pub fn retain(&self, live: &std::collections::BTreeSet<(ObjectKey, String)>) {
        self.out.board.retain(live);
        self.out.metrics.retain(live);
    }

    pub fn condition(&self, condition: Condition) {
        self.out.json.emit(&condition);
        self.out.metrics.condition(&condition);
        self.out.board.condition(&condition);
        if let Some(cluster) = &self.cluster {
            cluster.states.put(|p| {
                p.conditions.insert(condition.type_, condition);
            });
        }
    }

    pub fn event(&self, event: EventIntent) {
        self.out.json.emit(&event);
        if let Some(cluster) = &self.cluster {
            offer_event(&cluster.events, event, &self.out.metrics);
        }
    }

    /// `CriticalImagesReady` after a pass, for the gate.
    pub fn images_ready(&self, ready: bool) {
        if let Some(cluster) = &self.cluster {
            cluster.states.put(|p| p.images_ready = Some(ready));
        }
    }

    /// The latest canary verdicts, for the gate.
    pub fn canary_verdicts(&self, verdicts: &BTreeMap<(ObjectKey, String), Verdict>) {
        if let Some(cluster) = &self.cluster {
            cluster
                .states
                .put(|p| p.canary_verdicts = Some(verdicts.clone()));
        }
    }

    /// A handle for what may outlive the loops (the credential resolver): it reports Events as
    /// this one does, but does not keep the cluster task from ending.
    pub fn downgrade(&self) -> WeakReports {
        WeakReports {
            out: self.out.clone(),
            events: self.cluster.as_ref().map(|c| c.events.downgrade()),
        }
    }
}

/// [`Reports`] that lets the cluster task end once every [`Reports`] is dropped.
#[derive(Clone)]
pub struct WeakReports {
    out: Outputs,
    events: Option<mpsc::WeakSender<EventIntent>>,
}

impl WeakReports {
    /// An Event: a JSON line, and the cluster task while it runs.
    pub fn event(&self, event: EventIntent) {
        self.out.json.emit(&event);
        if let Some(tx) = self.events.as_ref().and_then(mpsc::WeakSender::upgrade) {
            offer_event(&tx, event, &self.out.metrics);
        }
    }
}

/// Starts the cluster task for `node` (`config.node` is its name); it ends (after a last flush)
/// when every [`Reports`] clone is dropped. It beats through `beat`.
pub fn run_cluster(
    out: Outputs,
    api_errors: Arc<ApiErrors>,
    writers: NodeWriters,
    node: NodeInfo,
    config: NodeReportConfig,
    sources: watch::Receiver<Arc<Snapshot>>,
    beat: Beat,
) -> (Reports, tokio::task::JoinHandle<()>) {
    let (events, rx) = mpsc::channel(EVENTS_IN_CHANNEL);
    let states = Arc::new(States::default());
    let task = tokio::spawn(
        ClusterTask {
            status: writers.status,
            taints: writers.taints,
            events: writers.events,
            taint_key: config.taint_key.clone(),
            gate_namespaces: config.gate_namespaces.clone(),
            report: NodeReport::new(config, Instant::now()),
            node,
            json: out.json.clone(),
            metrics: out.metrics.clone(),
            api_errors,
            beat,
            states: states.clone(),
        }
        .run(rx, sources),
    );
    (
        Reports {
            out,
            cluster: Some(ToCluster { events, states }),
        },
        task,
    )
}

struct ClusterTask {
    status: NodeStatus,
    taints: NodeTaints,
    events: EventRecorder,
    report: NodeReport,
    node: NodeInfo,
    taint_key: String,
    gate_namespaces: GateNamespaces,
    json: Arc<JsonLines>,
    metrics: Arc<Metrics>,
    api_errors: Arc<ApiErrors>,
    beat: Beat,
    states: Arc<States>,
}

impl ClusterTask {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<EventIntent>,
        mut sources: watch::Receiver<Arc<Snapshot>>,
    ) {
        let _ended = EndGuard(self.beat.clone());
        let mut ticker = self.beat.ticker();
        let mut sources_open = true;
        let mut loaded = sources.borrow_and_update().clone();
        self.observe(&loaded);
        loop {
            self.beat.beat();
            // The latest states before writing once.
            self.absorb_states();
            self.drive(&loaded).await;
            let deadline = self.report.deadline(Instant::now());
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.states.changed.notified() => {}
                event = events.recv() => match event {
                    Some(event) => {
                        self.report.event(event);
                        // Take what else is queued before writing once.
                        while let Ok(event) = events.try_recv() {
                            self.report.event(event);
                        }
                    }
                    None => break,
                },
                changed = sources.changed(), if sources_open => {
                    sources_open = changed.is_ok();
                    loaded = sources.borrow_and_update().clone();
                    self.observe(&loaded);
                }
                () = sleep_until(deadline) => {}
            }
        }
        // Last flush: the latest conditions and what Events the budget allows.
        self.absorb_states();
        self.report.flush();
        self.drive(&loaded).await;
    }

    /// Hands the machine the states that came since the last take: the conditions first, then
    /// images-ready, then the verdicts (the order the loops send them in).
    fn absorb_states(&mut self) {
        let Pending {
            conditions,
            images_ready,
            canary_verdicts,
        } = self.states.take();
        for condition in conditions.into_values() {
            self.report.condition(condition);
        }
        if let Some(ready) = images_ready {
            self.report.images_ready(ready);
        }
        if let Some(verdicts) = canary_verdicts {
            self.report.canary_verdicts(verdicts);
        }
    }

    /// What the sources say about the Node and the gated PullSets.
    fn observe(&mut self, loaded: &Snapshot) {
        let node = loaded.node(&self.node);
        let tainted = loaded
            .node_facts
            .as_ref()
            .map(|f| f.has_taint(&self.taint_key, TAINT_EFFECT));
        let allowed = &self.gate_namespaces;
        self.report
            .node(tainted, gated_canaries(&loaded.inventory, &node, allowed));
        self.report
            .gate_not_allowed(not_allowed(&loaded.inventory, &node, allowed));
    }

    /// Carries out what the reporter asks for now, one request at a time.
    async fn drive(&mut self, loaded: &Snapshot) {
        while let Some(step) = self.report.poll(Instant::now()) {
            let reply = match step {
                Step::WriteConditions(all) => {
                    Reply::Conditions(match bounded(self.status.publish(&all)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "node conditions not written; retrying with backoff");
                            Err(self.failed(e.kind()))
                        }
                        Err(elapsed) => {
                            tracing::warn!(
                                "node conditions not written: {elapsed}; retrying with backoff"
                            );
                            Err(self.failed(ApiErrorKind::Transport))
                        }
                    })
                }
                Step::RemoveTaint => Reply::Taint(
                    match bounded(self.taints.remove(&self.taint_key, TAINT_EFFECT)).await {
                        Ok(Ok(Removal::Removed)) => Ok(TaintRemoval::Removed),
                        Ok(Ok(Removal::Absent)) => Ok(TaintRemoval::Absent),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "taint not removed; retrying with backoff");
                            Err(self.failed(e.kind()))
                        }
                        Err(elapsed) => {
                            tracing::warn!("taint not removed: {elapsed}; retrying with backoff");
                            Err(self.failed(ApiErrorKind::Transport))
                        }
                    },
                ),
                Step::PublishEvent(event) => {
                    let uid = match &event.regarding {
                        Regarding::Node(_) => None,
                        Regarding::PullSet(key) => loaded
                            .inventory
                            .pullsets
                            .get(key)
                            .and_then(|s| s.uid.clone()),
                    };
                    Reply::Event(match bounded(self.events.publish(&event, uid)).await {
                        Ok(Ok(())) => {
                            self.metrics.event_sent(event.reason.as_str());
                            Ok(())
                        }
                        Err(elapsed) => {
                            tracing::warn!("event not published: {elapsed}; retrying with backoff");
                            Err(self.failed(ApiErrorKind::Transport))
                        }
                        Ok(Err(e)) => {
                            if e.kind().is_transient() {
                                tracing::warn!(error = %e, "event not published; retrying with backoff");
                            } else {
                                tracing::warn!(error = %e, "event rejected; dropped");
                            }
                            Err(self.failed(e.kind()))
                        }
                    })
                }
                Step::Announce(event) => {
                    self.json.emit(&event);
                    continue;
                }
                Step::Dropped(n) => {
                    self.metrics.events_dropped(n);
                    continue;
                }
            };
            self.beat.beat();
            self.report.reply(reply, Instant::now());
        }
    }

    fn failed(
        &self,
        kind: crate::decide::retry::ApiErrorKind,
    ) -> crate::decide::retry::ApiErrorKind {
        self.api_errors.record(kind);
        kind
    }
}

/// How long one write to the API server may take: a server that accepts the request and never
/// answers (kube-rs sets no read timeout of its own) costs this, then the write is retried with
/// backoff like any transport failure, instead of freezing every condition, Event and the gate.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs one write under [`WRITE_TIMEOUT`].
async fn bounded<T>(write: impl std::future::Future<Output = T>) -> Result<T, WriteTimedOut> {
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| WriteTimedOut)
}

/// A write that got no answer within [`WRITE_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("no answer from the API server within {WRITE_TIMEOUT:?}")]
struct WriteTimedOut;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::kube::scripted;
    use crate::decide::conditions::Status;
    use crate::decide::event_policy::Reason;
    use crate::decide::gate::TimeoutAction;
    use std::time::Duration;

    fn event() -> EventIntent {
        EventIntent::new(
            Regarding::Node("n1".into()),
            Reason::GateTimedOut,
            "note".into(),
            "",
        )
    }

    fn condition(type_: &'static str, message: &str) -> Condition {
        Condition {
            kind: "condition",
            type_,
            status: Status::False,
            reason: "Testing".into(),
            message: message.into(),
            last_transition_time: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn dropped(metrics: &Metrics) -> String {
        metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("pullgate_events_dropped_total "))
            .unwrap_or("pullgate_events_dropped_total (none)")
            .to_string()
    }

    #[test]
    fn events_beyond_the_channels_bound_are_dropped_and_counted_not_queued() {
        let (events, mut rx) = mpsc::channel(EVENTS_IN_CHANNEL);
        let reports = Reports {
            out: Outputs::default(),
            cluster: Some(ToCluster {
                events,
                states: Arc::default(),
            }),
        };
        let weak = reports.downgrade();
        for _ in 0..EVENTS_IN_CHANNEL + 5 {
            reports.event(event());
        }
        weak.event(event());
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, EVENTS_IN_CHANNEL);
        assert_eq!(
            dropped(&reports.out.metrics),
            "pullgate_events_dropped_total 6"
        );
    }

    /// The status writer hangs (the API server took the PATCH and does not answer) while the
    /// loops keep reporting: what waits for the task stays one state per kind, Events stop at the
    /// channel's bound, and once the server answers the next write carries the latest state.
    #[tokio::test(start_paused = true)]
    async fn states_coalesce_while_the_writer_hangs_and_the_latest_is_written() {
        let (client, mut api) = scripted::client();
        let (_sources_tx, sources) = watch::channel(Arc::new(Snapshot::default()));
        let out = Outputs::default();
        let (reports, task) = run_cluster(
            out.clone(),
            Arc::default(),
            NodeWriters::new(client, "n1"),
            NodeInfo {
                name: "n1".into(),
                ..NodeInfo::default()
            },
            NodeReportConfig {
                node: "n1".into(),
                taint_key: "pullgate.io/not-ready".into(),
                gate_timeout: Duration::from_secs(3600),
                gate_timeout_action: TimeoutAction::Keep,
                gate_namespaces: GateNamespaces::only(["team"]),
                heartbeat: Duration::from_secs(3600),
                event_burst: 3,
                event_refill: Duration::from_secs(3600),
            },
            sources,
            Beat::none(),
        );
        let weak = reports.downgrade();
        reports.condition(condition("CriticalImagesReady", "first"));
        let first = api.seen.recv().await.expect("the first write");
        assert!(
            first.path == "/api/v1/nodes/n1/status" && first.body.contains("first"),
            "{first:?}"
        );
        // The task waits on that write: nothing below reaches the API server yet.
        const N: usize = 2 * EVENTS_IN_CHANNEL;
        for i in 0..N {
            reports.condition(condition("CriticalImagesReady", &format!("images {i}")));
            reports.condition(condition("PullCredentialsValid", &format!("canaries {i}")));
            reports.images_ready(i % 2 == 1);
            let verdicts = BTreeMap::from([(
                (
                    ObjectKey::new("team", format!("set-{i}")),
                    "img".to_string(),
                ),
                Verdict::Ok,
            )]);
            reports.canary_verdicts(&verdicts);
            reports.event(event());
        }
        let to_cluster = reports.cluster.as_ref().expect("cluster mode");
        {
            let pending = to_cluster.states.lock();
            let types: Vec<_> = pending.conditions.keys().copied().collect();
            assert_eq!(types, ["CriticalImagesReady", "PullCredentialsValid"]);
            assert_eq!(pending.images_ready, Some(true));
            let verdicts = pending.canary_verdicts.as_ref().expect("verdicts");
            let last = (
                ObjectKey::new("team", format!("set-{}", N - 1)),
                "img".into(),
            );
            assert_eq!(verdicts.keys().collect::<Vec<_>>(), [&last]);
        }
        assert_eq!(to_cluster.events.capacity(), 0, "the channel is full");
        assert_eq!(
            dropped(&out.metrics),
            format!("pullgate_events_dropped_total {}", N - EVENTS_IN_CHANNEL)
        );
        api.open();
        // The next status write (after the hung one, answered or timed out) has the latest.
        let next = loop {
            let seen = api.seen.recv().await.expect("another write");
            if seen.path == "/api/v1/nodes/n1/status" {
                break seen;
            }
        };
        let last_images = format!("images {}", N - 1);
        let last_canaries = format!("canaries {}", N - 1);
        assert!(
            next.body.contains(&format!("\"{last_images}\""))
                && next.body.contains(&format!("\"{last_canaries}\"")),
            "{next:?}"
        );
        assert!(
            !next.body.contains(&format!("\"images {}\"", N - 2)),
            "{next:?}"
        );
        // A weak handle does not keep the task: dropping the last `Reports` ends it.
        drop(reports);
        task.await.expect("the task ends");
        weak.event(event());
    }
}
