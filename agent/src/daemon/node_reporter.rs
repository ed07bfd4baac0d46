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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Events on their way to the cluster task and not yet taken by it: beyond this, an Event is
/// dropped and counted (`pullgate_events_dropped_total`), not queued. The other messages are
/// states sent on change, once per pass or per canary run; the task's own queue
/// (`node_report::PENDING_EVENTS`) bounds what it keeps after taking them.
pub const EVENTS_IN_CHANNEL: usize = 1024;

/// Messages to the cluster task.
#[derive(Debug)]
enum Msg {
    Condition(Condition),
    Event(EventIntent),
    ImagesReady(bool),
    CanaryVerdicts(BTreeMap<(ObjectKey, String), Verdict>),
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
    cluster: Option<mpsc::UnboundedSender<Msg>>,
    /// Events in the channel (at most [`EVENTS_IN_CHANNEL`]).
    queued_events: Arc<AtomicUsize>,
}

/// Counts an Event into the channel; `false` (and counted as dropped) when it is full.
fn admit_event(queued: &AtomicUsize, metrics: &Metrics) -> bool {
    let admitted = queued
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < EVENTS_IN_CHANNEL).then_some(n + 1)
        })
        .is_ok();
    if !admitted {
        tracing::debug!("the node reporter is behind; event dropped");
        metrics.events_dropped(1);
    }
    admitted
}

impl Reports {
    /// Local outputs only (standalone).
    pub fn standalone(out: Outputs) -> Self {
        Self {
            out,
            cluster: None,
            queued_events: Arc::default(),
        }
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
        self.send(Msg::Condition(condition));
    }

    pub fn event(&self, event: EventIntent) {
        self.out.json.emit(&event);
        if self.cluster.is_some() && admit_event(&self.queued_events, &self.out.metrics) {
            self.send(Msg::Event(event));
        }
    }

    /// `CriticalImagesReady` after a pass, for the gate.
    pub fn images_ready(&self, ready: bool) {
        self.send(Msg::ImagesReady(ready));
    }

    /// The latest canary verdicts, for the gate.
    pub fn canary_verdicts(&self, verdicts: &BTreeMap<(ObjectKey, String), Verdict>) {
        if self.cluster.is_some() {
            self.send(Msg::CanaryVerdicts(verdicts.clone()));
        }
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.cluster {
            let _ = tx.send(msg);
        }
    }

    /// A handle for what may outlive the loops (the credential resolver): it reports as this one
    /// does, but does not keep the cluster task from ending.
    pub fn downgrade(&self) -> WeakReports {
        WeakReports {
            out: self.out.clone(),
            cluster: self.cluster.as_ref().map(mpsc::UnboundedSender::downgrade),
            queued_events: self.queued_events.clone(),
        }
    }
}

/// [`Reports`] that lets the cluster task end once every [`Reports`] is dropped.
#[derive(Clone)]
pub struct WeakReports {
    out: Outputs,
    cluster: Option<mpsc::WeakUnboundedSender<Msg>>,
    queued_events: Arc<AtomicUsize>,
}

impl WeakReports {
    /// An Event: a JSON line, and the cluster task while it runs.
    pub fn event(&self, event: EventIntent) {
        self.out.json.emit(&event);
        if let Some(tx) = self
            .cluster
            .as_ref()
            .and_then(mpsc::WeakUnboundedSender::upgrade)
            && admit_event(&self.queued_events, &self.out.metrics)
        {
            let _ = tx.send(Msg::Event(event));
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
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_events = Arc::new(AtomicUsize::new(0));
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
            queued_events: queued_events.clone(),
        }
        .run(rx, sources),
    );
    (
        Reports {
            out,
            cluster: Some(tx),
            queued_events,
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
    queued_events: Arc<AtomicUsize>,
}

impl ClusterTask {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut sources: watch::Receiver<Arc<Snapshot>>,
    ) {
        let _ended = EndGuard(self.beat.clone());
        let mut ticker = self.beat.ticker();
        let mut sources_open = true;
        let mut loaded = sources.borrow_and_update().clone();
        self.observe(&loaded);
        loop {
            self.beat.beat();
            self.drive(&loaded).await;
            let deadline = self.report.deadline(Instant::now());
            tokio::select! {
                _ = ticker.tick() => {}
                msg = rx.recv() => match msg {
                    Some(msg) => {
                        self.absorb(msg);
                        // Take what else is queued before writing once.
                        while let Ok(msg) = rx.try_recv() {
                            self.absorb(msg);
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
        self.report.flush();
        self.drive(&loaded).await;
    }

    fn absorb(&mut self, msg: Msg) {
        match msg {
            Msg::Condition(c) => self.report.condition(c),
            Msg::Event(e) => {
                self.queued_events.fetch_sub(1, Ordering::AcqRel);
                self.report.event(e);
            }
            Msg::ImagesReady(ready) => self.report.images_ready(ready),
            Msg::CanaryVerdicts(v) => self.report.canary_verdicts(v),
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
    use crate::decide::event_policy::Reason;

    #[test]
    fn events_beyond_the_channels_bound_are_dropped_and_counted_not_queued() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reports = Reports {
            out: Outputs::default(),
            cluster: Some(tx),
            queued_events: Arc::default(),
        };
        let weak = reports.downgrade();
        let event = || {
            EventIntent::new(
                crate::decide::event_policy::Regarding::Node("n1".into()),
                Reason::GateTimedOut,
                "note".into(),
                "",
            )
        };
        for _ in 0..EVENTS_IN_CHANNEL + 5 {
            reports.event(event());
        }
        weak.event(event());
        let mut queued = 0;
        while let Ok(msg) = rx.try_recv() {
            assert!(matches!(msg, Msg::Event(_)));
            queued += 1;
        }
        assert_eq!(queued, EVENTS_IN_CHANNEL);
        let metrics = reports.out.metrics.encode();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("pullgate_events_dropped_total 6")),
            "{metrics}"
        );
        // The states still go through.
        reports.images_ready(true);
        assert!(matches!(rx.try_recv(), Ok(Msg::ImagesReady(true))));
    }
}
