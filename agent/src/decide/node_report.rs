//! What cluster mode writes to the API server about this node, and when: a plain state machine.
//!
//! Inputs: the latest conditions, Events, `CriticalImagesReady`, the canary verdicts and what the
//! sources say about the Node (its taint, the gated canaries) — each replaces what was known
//! before — and the [`Reply`] to each request. Outputs, one [`Step`] at a time from
//! [`NodeReport::poll`]: write the conditions, remove the taint, publish an Event, announce one
//! of its own, count dropped Events. And [`NodeReport::deadline`], when to poll again. The
//! daemon's driver (`daemon::node_reporter`) does the I/O.
//!
//! - Conditions: all of them in one write on every change and every heartbeat; a failed write is
//!   retried (`retry::Retry`, 1 s doubling to 30 s, jittered) until it succeeds, always with the
//!   latest state; a policy denial or a missing Node waits the cap.
//! - Events: queued (at most [`PENDING_EVENTS`], the oldest dropped first), through the per-node
//!   [`Budget`]; a transient failure keeps the Event at the head of the queue and backs off like the
//!   conditions; a rejection drops it.
//! - The gate ([`Gate`]): evaluated whenever an input changes and at its timeout; the taint is
//!   removed when it opens (or times out with `remove`). A failed removal backs off (1 s doubling
//!   to 5 min, jittered; 403 and 404 straight to the cap) instead of a GET and a PATCH every
//!   second; after a try that worked, the taint is looked at again after a second at the soonest.
//!   Only PullSets from `--gate-namespaces` count (`gate::GateNamespaces`); each `gate: true`
//!   PullSet from another namespace gets one `GateNotAllowed` Event when it is first seen (again
//!   only after it stopped being one), and the gate's Events on the Node name what was not counted.

use crate::decide::conditions::Condition;
use crate::decide::event_policy::{Admit, Budget, EventIntent, Reason, Regarding};
use crate::decide::gate::{
    Gate, GateDecision, GateInputs, GateNamespaces, TimeoutAction, credentials_valid,
    not_counted_note,
};
use crate::decide::retry::{ApiErrorKind, Retry};
use crate::model::inventory::ObjectKey;
use crate::model::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// The taint's effect: the gate only ever removes `<key>:NoSchedule`.
pub const TAINT_EFFECT: &str = "NoSchedule";

/// Events kept while the API server is away; older ones are dropped first (and counted).
pub const PENDING_EVENTS: usize = 256;

const WRITE_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
const TAINT_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// After a removal that worked (or found the taint gone), until the Node's watch shows it.
const TAINT_RECHECK: Duration = Duration::from_secs(1);

/// How the reporter behaves.
#[derive(Debug, Clone)]
pub struct NodeReportConfig {
    pub node: String,
    pub taint_key: String,
    pub gate_timeout: Duration,
    pub gate_timeout_action: TimeoutAction,
    /// The namespaces whose PullSets hold the taint.
    pub gate_namespaces: GateNamespaces,
    pub heartbeat: Duration,
    pub event_burst: u32,
    pub event_refill: Duration,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these conditions (all of pullgate's) on the Node; answer [`Reply::Conditions`].
    WriteConditions(Vec<Condition>),
    /// Remove `<taint_key>:NoSchedule` from the Node; answer [`Reply::Taint`].
    RemoveTaint,
    /// Publish this Event; answer [`Reply::Event`].
    PublishEvent(EventIntent),
    /// The reporter decided this Event itself (the gate's): a JSON line like every other. It is
    /// already queued for publishing.
    Announce(EventIntent),
    /// These many Events will never be sent (over the budget, or dropped from a full queue).
    Dropped(u64),
}

/// What the taint removal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintRemoval {
    Removed,
    /// The Node did not carry it (any more).
    Absent,
}

/// The answer to the last request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Conditions(Result<(), ApiErrorKind>),
    Taint(Result<TaintRemoval, ApiErrorKind>),
    Event(Result<(), ApiErrorKind>),
}

/// The request waiting for its reply.
#[derive(Debug)]
enum InFlight {
    Conditions,
    Taint { reason: Reason, note: String },
    Event(EventIntent),
}

/// The reporter's state.
#[derive(Debug)]
pub struct NodeReport {
    config: NodeReportConfig,
    started: Instant,
    in_flight: Option<InFlight>,
    conditions: BTreeMap<&'static str, Condition>,
    conditions_dirty: bool,
    written_at: Option<Instant>,
    conditions_retry: Retry,
    gate: Gate,
    tainted: Option<bool>,
    gated: Vec<(ObjectKey, String)>,
    /// `gate: true` PullSets here whose namespace may not gate (each told once).
    not_allowed: BTreeSet<ObjectKey>,
    images_ready: Option<bool>,
    canary_verdicts: BTreeMap<(ObjectKey, String), Verdict>,
    taint_retry: Retry,
    taint_recheck: Option<Instant>,
    pending: VecDeque<EventIntent>,
    /// The reporter's own Events, for the driver's JSON lines.
    announcements: VecDeque<EventIntent>,
    /// Events dropped from a full queue, said in the next Event sent.
    lost_while_away: u64,
    /// Dropped Events not yet counted by the driver.
    uncounted: u64,
    events_retry: Retry,
    budget: Budget,
}

impl NodeReport {
    pub fn new(config: NodeReportConfig, now: Instant) -> Self {
        Self {
            started: now,
            in_flight: None,
            conditions: BTreeMap::new(),
            conditions_dirty: false,
            written_at: None,
            conditions_retry: Retry::new(WRITE_RETRY.0, WRITE_RETRY.1),
            gate: Gate::new(config.gate_timeout, config.gate_timeout_action),
            tainted: None,
            gated: Vec::new(),
            not_allowed: BTreeSet::new(),
            images_ready: None,
            canary_verdicts: BTreeMap::new(),
            taint_retry: Retry::new(TAINT_RETRY.0, TAINT_RETRY.1),
            taint_recheck: None,
            pending: VecDeque::new(),
            announcements: VecDeque::new(),
            lost_while_away: 0,
            uncounted: 0,
            events_retry: Retry::new(WRITE_RETRY.0, WRITE_RETRY.1),
            budget: Budget::new(config.event_burst, config.event_refill, now.into_std()),
            config,
        }
    }

    /// A condition's latest state (it replaces the one of its type).
    pub fn condition(&mut self, condition: Condition) {
        self.conditions.insert(condition.type_, condition);
        self.conditions_dirty = true;
    }

    /// An Event to publish.
    pub fn event(&mut self, event: EventIntent) {
        if self.pending.len() >= PENDING_EVENTS {
            self.pending.pop_front();
            self.lost_while_away += 1;
            self.uncounted += 1;
        }
        self.pending.push_back(event);
    }

    /// `CriticalImagesReady` after a pass.
    pub fn images_ready(&mut self, ready: bool) {
        self.images_ready = Some(ready);
    }

    /// The latest canary verdicts.
    pub fn canary_verdicts(&mut self, verdicts: BTreeMap<(ObjectKey, String), Verdict>) {
        self.canary_verdicts = verdicts;
    }

    /// What the sources say: whether the Node carries the taint (`None`: not read yet), and the
    /// canaries the gate waits for (`gate::gated_canaries`).
    pub fn node(&mut self, tainted: Option<bool>, gated: Vec<(ObjectKey, String)>) {
        self.tainted = tainted;
        self.gated = gated;
    }

    /// The `gate: true` PullSets selected here whose namespace may not gate (`gate::not_allowed`):
    /// a `GateNotAllowed` Event on each that was not one before; the rest are already told.
    pub fn gate_not_allowed(&mut self, not_allowed: BTreeSet<ObjectKey>) {
        let new: Vec<ObjectKey> = not_allowed.difference(&self.not_allowed).cloned().collect();
        for key in &new {
            tracing::warn!(pullset = %key, allowed = %self.config.gate_namespaces, "gate: true outside --gate-namespaces; not counted");
            let event = crate::decide::event_policy::for_gate_not_allowed(key, &self.config.node);
            self.event(event);
        }
        self.not_allowed = not_allowed;
    }

    /// Before the last round at shutdown: the latest conditions and what Events the budget allows
    /// get one more try each, whatever the backoff says.
    pub fn flush(&mut self) {
        self.conditions_retry.succeeded();
        self.events_retry.succeeded();
    }

    /// The next thing to do now, if any. `None` also while a request waits for its reply.
    pub fn poll(&mut self, now: Instant) -> Option<Step> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.conditions_due(now) {
            self.in_flight = Some(InFlight::Conditions);
            return Some(Step::WriteConditions(
                self.conditions.values().cloned().collect(),
            ));
        }
        if self.gate_step(now) {
            return Some(Step::RemoveTaint);
        }
        if let Some(event) = self.announcements.pop_front() {
            return Some(Step::Announce(event));
        }
        if let Some(dropped) = self.take_uncounted() {
            return Some(dropped);
        }
        // The budget may drop some on the way: said before whatever comes next.
        self.event_step(now).or_else(|| self.take_uncounted())
    }

    /// When to poll again at the latest, inputs aside (`None`: only when an input comes).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        let heartbeat = (!self.conditions.is_empty())
            .then(|| match (self.conditions_dirty, self.written_at) {
                (false, Some(at)) => Some(at + self.config.heartbeat),
                _ => None,
            })
            .flatten();
        let conditions = (!self.conditions.is_empty())
            .then_some(self.conditions_retry.not_before())
            .flatten();
        let gate = (self.tainted == Some(true)).then(|| {
            [
                Some(self.started + self.config.gate_timeout),
                self.taint_retry.not_before(),
                self.taint_recheck,
            ]
        });
        let events = (!self.pending.is_empty())
            .then_some(self.events_retry.not_before())
            .flatten();
        [heartbeat, conditions, events]
            .into_iter()
            .chain(gate.into_iter().flatten())
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// The answer to the step [`poll`](Self::poll) handed out last.
    pub fn reply(&mut self, reply: Reply, now: Instant) {
        match (self.in_flight.take(), reply) {
            (Some(InFlight::Conditions), Reply::Conditions(result)) => match result {
                Ok(()) => {
                    if self.conditions_retry.failures() > 0 {
                        tracing::info!(
                            "node conditions written again after the API server was away"
                        );
                    }
                    self.conditions_dirty = false;
                    self.written_at = Some(now);
                    self.conditions_retry.succeeded();
                }
                Err(kind) => {
                    self.conditions_retry.failed_with(kind, now);
                }
            },
            (Some(InFlight::Taint { reason, note }), Reply::Taint(result)) => match result {
                Ok(removal) => {
                    self.taint_retry.succeeded();
                    self.taint_recheck = Some(now + TAINT_RECHECK);
                    if removal == TaintRemoval::Removed {
                        tracing::info!("{note}");
                        let regarding = Regarding::Node(self.config.node.clone());
                        self.own_event(EventIntent::new(regarding, reason, note, ""));
                    } else {
                        tracing::debug!(taint = %self.taint(), "taint already gone");
                    }
                }
                Err(kind) => {
                    self.taint_retry.failed_with(kind, now);
                }
            },
            (Some(InFlight::Event(event)), Reply::Event(result)) => match result {
                Ok(()) => self.events_retry.succeeded(),
                Err(kind) if kind.is_transient() => {
                    self.pending.push_front(event);
                    self.events_retry.failed(now);
                }
                // A rejection (403 without the RBAC, 422 invalid): retrying it would hold every
                // later Event back.
                Err(_) => {}
            },
            (in_flight, reply) => {
                tracing::debug!(?in_flight, ?reply, "reply to no request; ignored");
            }
        }
    }

    fn take_uncounted(&mut self) -> Option<Step> {
        (self.uncounted > 0).then(|| Step::Dropped(std::mem::take(&mut self.uncounted)))
    }

    fn taint(&self) -> String {
        format!("{}:{TAINT_EFFECT}", self.config.taint_key)
    }

    fn conditions_due(&self, now: Instant) -> bool {
        let heartbeat_due = self
            .written_at
            .is_some_and(|t| now.duration_since(t) >= self.config.heartbeat);
        !self.conditions.is_empty()
            && (self.conditions_dirty || heartbeat_due)
            && self.conditions_retry.due(now)
    }

    /// The gate's verdict now; `true` when it asks for the taint's removal (now in flight).
    fn gate_step(&mut self, now: Instant) -> bool {
        let inputs = GateInputs {
            tainted: self.tainted,
            images_ready: self.images_ready,
            credentials_valid: credentials_valid(&self.gated, &self.canary_verdicts),
            elapsed: now.duration_since(self.started),
        };
        let may_try = self.taint_retry.due(now) && self.taint_recheck.is_none_or(|t| now >= t);
        // `decide` announces a kept taint once: ask only when its answer can be acted on.
        if !may_try {
            return false;
        }
        let taint = self.taint();
        let elapsed = humantime::format_duration(Duration::from_secs(inputs.elapsed.as_secs()));
        let not_counted = not_counted_note(&self.not_allowed, &self.config.gate_namespaces);
        let (reason, note) = match self.gate.decide(&inputs) {
            GateDecision::Wait => return false,
            GateDecision::TimedOutKeep { waiting_for } => {
                let note = format!(
                    "kept taint {taint} after {elapsed} (--gate-timeout-action keep): {waiting_for}{not_counted}"
                );
                tracing::warn!("{note}");
                let regarding = Regarding::Node(self.config.node.clone());
                self.own_event(EventIntent::new(
                    regarding,
                    Reason::GateTimedOut,
                    note,
                    "keep",
                ));
                return false;
            }
            GateDecision::Open => (
                Reason::GateOpened,
                format!(
                    "removed taint {taint} after {elapsed}: CriticalImagesReady and PullCredentialsValid are True for the gated PullSets{not_counted}"
                ),
            ),
            GateDecision::TimedOutRemove { waiting_for } => (
                Reason::GateTimedOut,
                format!(
                    "removed taint {taint} at the gate timeout ({elapsed}) although {waiting_for}{not_counted}"
                ),
            ),
        };
        self.in_flight = Some(InFlight::Taint { reason, note });
        true
    }

    /// Queues an Event of the reporter's own, and its announcement.
    fn own_event(&mut self, event: EventIntent) {
        self.event(event.clone());
        self.announcements.push_back(event);
    }

    fn event_step(&mut self, now: Instant) -> Option<Step> {
        while self.events_retry.due(now) {
            let mut event = self.pending.pop_front()?;
            let dropped = match self.budget.admit(now.into_std()) {
                Admit::Send { dropped } => dropped + std::mem::take(&mut self.lost_while_away),
                Admit::Drop => {
                    tracing::debug!(reason = event.reason.as_str(), regarding = %event.regarding, "event over the node's budget; dropped");
                    self.uncounted += 1;
                    continue;
                }
            };
            if dropped > 0 {
                event.append_to_note(&format!(
                    " ({dropped} earlier events not sent: per-node event budget)"
                ));
            }
            self.in_flight = Some(InFlight::Event(event.clone()));
            return Some(Step::PublishEvent(event));
        }
        None
    }
}

#[cfg(test)]
mod tests;
