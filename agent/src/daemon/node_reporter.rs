//! Node-level reporting: conditions, Events and the readiness gate.
//!
//! [`Reports`] is the handle the pre-pull loop and the canaries use: every condition transition and
//! Event is a JSON line on stdout, and in cluster mode it also goes to one task ([`run_cluster`])
//! that owns everything written to the API server about this node:
//!
//! - the conditions, as one strategic-merge patch of `nodes/status` on every change and every
//!   `--condition-heartbeat`; a failed write is retried with backoff until it succeeds, always
//!   with the latest state, so an API server that was away gets the truth when it is back;
//! - the Events, through a per-node budget, retried while the API server is away (a bounded queue);
//! - the gate: the start-up taint is removed once the gated PullSets are ready, or at the timeout.

use crate::adapters::files::manifests::Loaded;
use crate::adapters::kube::event_recorder::EventRecorder;
use crate::adapters::kube::node_status::NodeStatus;
use crate::adapters::kube::node_taint::{NodeTaints, Removal};
use crate::adapters::serve::json_lines::JsonLines;
use crate::adapters::serve::metrics::Metrics;
use crate::daemon::status_board::StatusBoard;
use crate::decide::canary::runner::CanaryOutcome;
use crate::decide::conditions::Condition;
use crate::decide::event_policy::{Admit, Budget, EventIntent, Reason, Regarding};
use crate::decide::gate::{Gate, GateDecision, GateInputs, TimeoutAction};
use crate::model::inventory::ObjectKey;
use crate::model::node::NodeInfo;
use crate::model::outcome::Outcome;
use crate::model::verdict::Verdict;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The taint's effect: the gate only ever removes `<key>:NoSchedule`.
pub const TAINT_EFFECT: &str = "NoSchedule";

/// Events kept while the API server is away; older ones are dropped first (and counted).
const PENDING_EVENTS: usize = 256;

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

    pub fn condition(&self, condition: Condition) {
        self.out.json.emit(&condition);
        self.out.metrics.condition(&condition);
        self.out.board.condition(&condition);
        self.send(Msg::Condition(condition));
    }

    pub fn event(&self, event: EventIntent) {
        self.out.json.emit(&event);
        self.send(Msg::Event(event));
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
}

/// How the cluster task behaves.
#[derive(Debug, Clone)]
pub struct ClusterReportConfig {
    pub node: NodeInfo,
    pub taint_key: String,
    pub gate_timeout: Duration,
    pub gate_timeout_action: TimeoutAction,
    pub heartbeat: Duration,
    pub event_burst: u32,
    pub event_refill: Duration,
}

/// Starts the cluster task; it ends (after a last flush) when every [`Reports`] clone is dropped.
pub fn run_cluster(
    out: Outputs,
    api_errors: Arc<AtomicU64>,
    client: kube::Client,
    config: ClusterReportConfig,
    sources: watch::Receiver<Arc<Loaded>>,
) -> (Reports, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(
        ClusterTask {
            status: NodeStatus::new(client.clone(), config.node.name.clone()),
            taints: NodeTaints::new(client.clone(), config.node.name.clone()),
            events: EventRecorder::new(client, &config.node.name),
            budget: Budget::new(config.event_burst, config.event_refill, Instant::now()),
            gate: Gate::new(config.gate_timeout, config.gate_timeout_action),
            config,
            started: Instant::now(),
            conditions: BTreeMap::new(),
            conditions_dirty: false,
            written_at: None,
            conditions_retry: Retry::default(),
            pending: VecDeque::new(),
            lost_while_away: 0,
            events_retry: Retry::default(),
            images_ready: None,
            canary_verdicts: BTreeMap::new(),
            json: out.json.clone(),
            metrics: out.metrics.clone(),
            api_errors,
        }
        .run(rx, sources),
    );
    (
        Reports {
            out,
            cluster: Some(tx),
        },
        task,
    )
}

/// Exponential backoff (1 s … 30 s) for one kind of write.
#[derive(Debug, Default)]
struct Retry {
    failures: u32,
    not_before: Option<Instant>,
}

impl Retry {
    fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }
    fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let delay =
            Duration::from_secs(1 << (self.failures - 1).min(5)).min(Duration::from_secs(30));
        self.not_before = Some(now + delay);
    }
    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

struct ClusterTask {
    status: NodeStatus,
    taints: NodeTaints,
    events: EventRecorder,
    budget: Budget,
    gate: Gate,
    config: ClusterReportConfig,
    started: Instant,
    conditions: BTreeMap<&'static str, Condition>,
    conditions_dirty: bool,
    written_at: Option<Instant>,
    conditions_retry: Retry,
    pending: VecDeque<EventIntent>,
    lost_while_away: u64,
    events_retry: Retry,
    images_ready: Option<bool>,
    canary_verdicts: BTreeMap<(ObjectKey, String), Verdict>,
    json: Arc<JsonLines>,
    metrics: Arc<Metrics>,
    api_errors: Arc<AtomicU64>,
}

impl ClusterTask {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut sources: watch::Receiver<Arc<Loaded>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sources_open = true;
        loop {
            tokio::select! {
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
                }
                _ = tick.tick() => {}
            }
            let loaded = sources.borrow().clone();
            self.step(&loaded, Instant::now()).await;
        }
        // Last flush: the latest conditions and what Events the budget allows.
        let loaded = sources.borrow().clone();
        self.conditions_retry.succeeded();
        self.events_retry.succeeded();
        self.step(&loaded, Instant::now()).await;
    }

    fn absorb(&mut self, msg: Msg) {
        match msg {
            Msg::Condition(c) => {
                self.conditions.insert(c.type_, c);
                self.conditions_dirty = true;
            }
            Msg::Event(e) => {
                if self.pending.len() == PENDING_EVENTS {
                    self.pending.pop_front();
                    self.lost_while_away += 1;
                    self.metrics.events_dropped(1);
                }
                self.pending.push_back(e);
            }
            Msg::ImagesReady(ready) => self.images_ready = Some(ready),
            Msg::CanaryVerdicts(v) => self.canary_verdicts = v,
        }
    }

    async fn step(&mut self, loaded: &Loaded, now: Instant) {
        self.write_conditions(now).await;
        self.evaluate_gate(loaded, now).await;
        self.send_events(loaded, now).await;
    }

    async fn write_conditions(&mut self, now: Instant) {
        let heartbeat_due = self
            .written_at
            .is_some_and(|t| now.duration_since(t) >= self.config.heartbeat);
        if self.conditions.is_empty()
            || !(self.conditions_dirty || heartbeat_due)
            || !self.conditions_retry.due(now)
        {
            return;
        }
        let all: Vec<Condition> = self.conditions.values().cloned().collect();
        match self.status.publish(&all).await {
            Ok(()) => {
                if self.conditions_retry.failures > 0 {
                    tracing::info!("node conditions written again after the API server was away");
                }
                self.conditions_dirty = false;
                self.written_at = Some(now);
                self.conditions_retry.succeeded();
            }
            Err(e) => {
                self.api_errors.fetch_add(1, Ordering::Relaxed);
                self.conditions_retry.failed(now);
                tracing::warn!(error = %e, "node conditions not written; retrying with backoff");
            }
        }
    }

    async fn evaluate_gate(&mut self, loaded: &Loaded, now: Instant) {
        let node = loaded.node(&self.config.node);
        let expected = crate::decide::gate::gated_canaries(&loaded.inventory, &node);
        let inputs = GateInputs {
            tainted: loaded
                .node_facts
                .as_ref()
                .map(|f| f.has_taint(&self.config.taint_key, TAINT_EFFECT)),
            images_ready: self.images_ready,
            credentials_valid: crate::decide::gate::credentials_valid(
                &expected,
                &self.canary_verdicts,
            ),
            elapsed: now.duration_since(self.started),
        };
        let taint = format!("{}:{TAINT_EFFECT}", self.config.taint_key);
        let elapsed = humantime::format_duration(Duration::from_secs(inputs.elapsed.as_secs()));
        let regarding = Regarding::Node(self.config.node.name.clone());
        let (reason, note) = match self.gate.decide(&inputs) {
            GateDecision::Wait => return,
            GateDecision::TimedOutKeep { waiting_for } => {
                let note = format!(
                    "kept taint {taint} after {elapsed} (--gate-timeout-action keep): {waiting_for}"
                );
                tracing::warn!("{note}");
                self.own_event(EventIntent::new(
                    regarding,
                    Reason::GateTimedOut,
                    note,
                    "keep",
                ));
                return;
            }
            GateDecision::Open => (
                Reason::GateOpened,
                format!(
                    "removed taint {taint} after {elapsed}: CriticalImagesReady and PullCredentialsValid are True for the gated PullSets"
                ),
            ),
            GateDecision::TimedOutRemove { waiting_for } => (
                Reason::GateTimedOut,
                format!(
                    "removed taint {taint} at the gate timeout ({elapsed}) although {waiting_for}"
                ),
            ),
        };
        match self
            .taints
            .remove(&self.config.taint_key, TAINT_EFFECT)
            .await
        {
            Ok(Removal::Removed) => {
                tracing::info!("{note}");
                self.own_event(EventIntent::new(regarding, reason, note, ""));
            }
            Ok(Removal::Absent) => {
                tracing::debug!(%taint, "taint already gone");
            }
            Err(e) => {
                self.api_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "taint not removed; retrying");
            }
        }
    }

    /// An Event this task decided on: a JSON line too, like every other.
    fn own_event(&mut self, event: EventIntent) {
        self.json.emit(&event);
        self.absorb(Msg::Event(event));
    }

    async fn send_events(&mut self, loaded: &Loaded, now: Instant) {
        while self.events_retry.due(now) {
            let Some(mut event) = self.pending.pop_front() else {
                return;
            };
            let dropped = match self.budget.admit(now) {
                Admit::Send { dropped } => dropped + std::mem::take(&mut self.lost_while_away),
                Admit::Drop => {
                    self.metrics.events_dropped(1);
                    tracing::debug!(reason = event.reason.as_str(), regarding = %event.regarding, "event over the node's budget; dropped");
                    continue;
                }
            };
            if dropped > 0 {
                event.note = format!(
                    "{} ({dropped} earlier events not sent: per-node event budget)",
                    event.note
                );
            }
            let uid = match &event.regarding {
                Regarding::Node(_) => None,
                Regarding::PullSet(key) => loaded
                    .inventory
                    .pullsets
                    .get(key)
                    .and_then(|s| s.uid.clone()),
            };
            match self.events.publish(&event, uid).await {
                Ok(()) => {
                    self.metrics.event_sent(event.reason.as_str());
                    self.events_retry.succeeded();
                }
                Err(e) if e.retriable() => {
                    self.api_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "event not published; retrying with backoff");
                    self.pending.push_front(event);
                    self.events_retry.failed(now);
                }
                Err(e) => tracing::warn!(error = %e, "event rejected; dropped"),
            }
        }
    }
}
