//! Which Kubernetes Events pullgate emits, and how many: plain decisions, no client.
//!
//! - Per-image outcomes go on the PullSet (its namespace's owners see their own failures in
//!   `kubectl describe pullset`); node-level transitions (the gate) go on the Node.
//! - Repeats — the same reason for the same object and image, and for a failure the same verdict —
//!   share an aggregation key; the recorder turns them into one Event with a growing series count.
//! - Canary Events follow the [`Transition`] that `canary::transition` detected; they are built
//!   here, not detected again.
//! - A per-node token bucket ([`Budget`]) caps what one node sends to the API server, however many
//!   PullSets fail at once; what the budget drops is counted and said in the next Event that passes.

use crate::decide::canary::runner::CanaryOutcome;
use crate::decide::canary::transition::Transition;
use crate::model::inventory::ObjectKey;
use crate::model::outcome::{Action, Outcome};
use crate::model::verdict::Verdict;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Regarding {
    PullSet(ObjectKey),
    Node(String),
}

impl std::fmt::Display for Regarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PullSet(key) => write!(f, "PullSet {key}"),
            Self::Node(name) => write!(f, "Node {name}"),
        }
    }
}

impl Serialize for Regarding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `Normal` or `Warning`, as `kubectl describe` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Severity {
    Normal,
    Warning,
}

/// Every reason pullgate uses (CamelCase, as Kubernetes reasons are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Reason {
    PrePulled,
    PrePullFailed,
    /// A download not started: the image filesystem is at the `--min-free-disk` headroom.
    PrePullSkippedDiskPressure,
    CanaryFailed,
    CanaryRecovered,
    CredentialExpiringSoon,
    /// A registry-direct canary is `Ok` through one host while another host the runtime uses
    /// for the registry fails (`MirrorMasks`).
    CanaryHostFailing,
    GateOpened,
    GateTimedOut,
    /// A `gate: true` PullSet outside `--gate-namespaces`: it does not hold the taint.
    GateNotAllowed,
    CredentialPluginFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrePulled => "PrePulled",
            Self::PrePullFailed => "PrePullFailed",
            Self::PrePullSkippedDiskPressure => "PrePullSkippedDiskPressure",
            Self::CanaryFailed => "CanaryFailed",
            Self::CanaryRecovered => "CanaryRecovered",
            Self::CredentialExpiringSoon => "CredentialExpiringSoon",
            Self::CanaryHostFailing => "CanaryHostFailing",
            Self::GateOpened => "GateOpened",
            Self::GateTimedOut => "GateTimedOut",
            Self::GateNotAllowed => "GateNotAllowed",
            Self::CredentialPluginFailed => "CredentialPluginFailed",
        }
    }

    /// The `action` field: what pullgate was doing.
    pub fn action(self) -> &'static str {
        match self {
            Self::PrePulled | Self::PrePullFailed | Self::PrePullSkippedDiskPressure => "PrePull",
            Self::CanaryFailed
            | Self::CanaryRecovered
            | Self::CredentialExpiringSoon
            | Self::CanaryHostFailing => "Canary",
            Self::GateOpened | Self::GateTimedOut => "RemoveTaint",
            Self::GateNotAllowed => "Gate",
            Self::CredentialPluginFailed => "ResolveCredentials",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::PrePulled | Self::CanaryRecovered | Self::GateOpened => Severity::Normal,
            _ => Severity::Warning,
        }
    }
}

/// One Event to emit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventIntent {
    /// Always `event`.
    pub kind: &'static str,
    pub regarding: Regarding,
    pub reason: Reason,
    #[serde(rename = "type")]
    pub severity: Severity,
    pub action: &'static str,
    /// Short, useful, never a credential; at most [`NOTE_LIMIT_BYTES`], whatever is appended
    /// (see [`EventIntent::append_to_note`]).
    pub note: String,
    /// Repeats share this key (the recorder aggregates them into one Event's series).
    #[serde(skip)]
    pub aggregation: String,
}

impl EventIntent {
    pub fn new(regarding: Regarding, reason: Reason, note: String, discriminator: &str) -> Self {
        let aggregation = format!("{regarding:?}|{}|{discriminator}", reason.as_str());
        Self {
            kind: "event",
            regarding,
            reason,
            severity: reason.severity(),
            action: reason.action(),
            // Notes quote registries and runtimes: no control character in an Event.
            note: fit_note(crate::model::printable::printable_text(&note), ""),
            aggregation,
        }
    }

    /// Appends `suffix` (such as the budget's drop count) to the note, keeping the note within
    /// [`NOTE_LIMIT_BYTES`]: the suffix is kept whole and the body before it is shortened.
    pub fn append_to_note(&mut self, suffix: &str) {
        self.note = fit_note(std::mem::take(&mut self.note), suffix);
    }
}

/// The API server's limit on an Event's `note` (events.k8s.io/v1; `message` in core/v1), in
/// bytes: `NoteLengthLimit = 1024` in Kubernetes' `pkg/apis/core/validation/events.go`, checked
/// with Go's `len` (bytes, not characters). A longer note is refused with `422 Invalid`, and the
/// Event is lost.
pub const NOTE_LIMIT_BYTES: usize = 1024;

/// What replaces the end of a shortened body.
const ELLIPSIS: &str = "...";

/// The one rule for note length: `body` + `suffix` if that fits in [`NOTE_LIMIT_BYTES`]; otherwise
/// `body` cut at a UTF-8 character boundary, then [`ELLIPSIS`], then `suffix` whole. A suffix too
/// long to fit with an ellipsis is itself cut at a character boundary (never the case for ours).
fn fit_note(mut body: String, suffix: &str) -> String {
    if body.len() + suffix.len() <= NOTE_LIMIT_BYTES {
        body.push_str(suffix);
        return body;
    }
    let Some(room) = NOTE_LIMIT_BYTES.checked_sub(suffix.len() + ELLIPSIS.len()) else {
        return floor_at_char(suffix, NOTE_LIMIT_BYTES).to_string();
    };
    let cut = floor_at_char(&body, room).len();
    body.truncate(cut);
    body.push_str(ELLIPSIS);
    body.push_str(suffix);
    body
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn floor_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The Event on a `gate: true` PullSet whose namespace may not gate (`gate::not_allowed`): said
/// to its owners, naming neither the allowed namespaces nor any other PullSet.
pub fn for_gate_not_allowed(pullset: &ObjectKey, node: &str) -> EventIntent {
    EventIntent::new(
        Regarding::PullSet(pullset.clone()),
        Reason::GateNotAllowed,
        format!(
            "gate: true is not counted on node {node}: namespace {} is not one a cluster admin allowed to hold the readiness taint (pullgate run --gate-namespaces); its images are still pre-pulled and its canaries still run",
            pullset.namespace
        ),
        node,
    )
}

/// The API server's limit on an object name that must be a DNS subdomain (`metadata.name` of an
/// Event): `DNS1123SubdomainMaxLength = 253` in apimachinery's `pkg/util/validation/validation.go`.
pub const NAME_LIMIT: usize = 253;

/// The API server's limit on an Event's `reportingInstance`: `ReportingInstanceLengthLimit = 128`
/// in Kubernetes' `pkg/apis/core/validation/events.go`.
pub const REPORTING_INSTANCE_LIMIT: usize = 128;

/// The name of a new Event about the object named `regarding`: `<regarding>.<unique in hex>`, as
/// kube's and client-go's recorders name theirs, with `regarding` cut (at a character boundary,
/// then of trailing `-` and `.`, so each DNS label still ends alphanumeric) so the whole name fits
/// [`NAME_LIMIT`]. A name of nothing usable becomes `pullgate`.
pub fn event_name(regarding: &str, unique: u64) -> String {
    let suffix = format!(".{unique:x}");
    let prefix = floor_at_char(regarding, NAME_LIMIT - suffix.len());
    let prefix = prefix.trim_end_matches(['-', '.']);
    let prefix = if prefix.is_empty() {
        "pullgate"
    } else {
        prefix
    };
    format!("{prefix}{suffix}")
}

/// The `reportingInstance` for node `node`: the node name when it fits
/// [`REPORTING_INSTANCE_LIMIT`]; otherwise its start and `-` and 16 hex digits of its SHA-256, so
/// two long names that share a start stay apart, and the same node always gets the same value.
/// (A node name is not a secret: a plain hash is enough.)
pub fn reporting_instance(node: &str) -> String {
    if node.len() <= REPORTING_INSTANCE_LIMIT {
        return node.to_string();
    }
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(node));
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let start = floor_at_char(node, REPORTING_INSTANCE_LIMIT - 1 - hash.len());
    format!("{start}-{hash}")
}

/// The [`Failed`] an outcome tells: pre-pull and canary outcomes name these fields alike.
macro_rules! failed {
    ($outcome:expr) => {
        Failed {
            image: &$outcome.image,
            node: &$outcome.node,
            verdict: $outcome.verdict,
            message: &$outcome.message,
            hint: $outcome.hint,
        }
    };
}

/// The Event for a pre-pull outcome: `PrePulled` when the image was pulled now, `PrePullFailed`
/// on every failure (aggregated per image and verdict), `PrePullSkippedDiskPressure` for a download
/// refused for space, nothing when it was already present.
pub fn for_prepull(outcome: &Outcome) -> Option<EventIntent> {
    let regarding = Regarding::PullSet(ObjectKey::new(&outcome.namespace, &outcome.pullset));
    match outcome.action {
        Action::Present => None,
        Action::Pulled => Some(EventIntent::new(
            regarding,
            Reason::PrePulled,
            format!(
                "pulled {} on node {} in {} ms",
                outcome.image, outcome.node, outcome.duration_ms
            ),
            &outcome.image,
        )),
        Action::Failed if outcome.verdict == Verdict::DiskPressure => Some(failure_event(
            regarding,
            Reason::PrePullSkippedDiskPressure,
            failed!(outcome),
        )),
        Action::Failed => Some(failure_event(
            regarding,
            Reason::PrePullFailed,
            failed!(outcome),
        )),
    }
}

/// A credential-provider plugin failed: an Event on the Node (the plugin is the node's
/// configuration, never a tenant's), aggregated per provider, with its stderr excerpt.
pub fn for_plugin_failure(
    node: &str,
    failure: &crate::decide::credentials::PluginFailure,
) -> EventIntent {
    let mut note = format!("{} on node {node}", failure.error);
    if !failure.stderr.is_empty() {
        note.push_str(&format!("; stderr: {}", failure.stderr));
    }
    EventIntent::new(
        Regarding::Node(node.to_string()),
        Reason::CredentialPluginFailed,
        note,
        &failure.provider,
    )
}

/// A failed image, as a failure Event tells it.
struct Failed<'a> {
    image: &'a str,
    node: &'a str,
    verdict: Verdict,
    message: &'a str,
    hint: Option<&'a str>,
}

/// A failure Event, aggregated per image and verdict: `IMAGE on node N: VERDICT: MESSAGE — HINT`.
fn failure_event(regarding: Regarding, reason: Reason, failed: Failed<'_>) -> EventIntent {
    let Failed {
        image,
        node,
        verdict,
        message,
        hint,
    } = failed;
    let mut note = format!("{image} on node {node}: {verdict}: {message}");
    if let Some(hint) = hint {
        note.push_str(" — ");
        note.push_str(hint);
    }
    EventIntent::new(regarding, reason, note, &format!("{image}|{verdict}"))
}

/// The Events for a canary outcome, given the [`Transition`] it made: `CanaryFailed` on every
/// failure (aggregated per image and verdict), `CanaryRecovered` when an image that failed is `Ok`
/// again, `CredentialExpiringSoon` while the credential that worked says it expires within the
/// warning window (or has expired, yet was accepted), `CanaryHostFailing` while a host the
/// runtime uses for the registry fails though another serves the pull (aggregated per image).
pub fn for_canary(outcome: &CanaryOutcome, transition: Transition) -> Vec<EventIntent> {
    let regarding = Regarding::PullSet(ObjectKey::new(&outcome.namespace, &outcome.pullset));
    let mut out = Vec::new();
    match transition {
        Transition::StillOk => {}
        Transition::Recovered { was } => out.push(EventIntent::new(
            regarding.clone(),
            Reason::CanaryRecovered,
            format!(
                "{} on node {}: Ok again (was {was}) via {}",
                outcome.image,
                outcome.node,
                outcome.credential.as_deref().unwrap_or("anonymous")
            ),
            &outcome.image,
        )),
        Transition::Failed | Transition::StillFailing { .. } => out.push(failure_event(
            regarding.clone(),
            Reason::CanaryFailed,
            failed!(outcome),
        )),
    }
    for warning in outcome.warnings.iter().filter(|w| w.is_expiry()) {
        out.push(EventIntent::new(
            regarding.clone(),
            Reason::CredentialExpiringSoon,
            format!("{} on node {}: {warning}", outcome.image, outcome.node),
            &outcome.image,
        ));
    }
    for warning in outcome.warnings.iter().filter(|w| w.is_masked_host()) {
        out.push(EventIntent::new(
            regarding.clone(),
            Reason::CanaryHostFailing,
            format!("{} on node {}: {warning}", outcome.image, outcome.node),
            &format!("{}|hosts", outcome.image),
        ));
    }
    out
}

/// A token bucket: `burst` Events at once, then one per `refill`.
#[derive(Debug, Clone)]
pub struct Budget {
    burst: u32,
    refill: Duration,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

/// What the budget says about one Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it; `dropped` Events were suppressed since the last one sent.
    Send { dropped: u64 },
    /// Over budget: not sent (counted).
    Drop,
}

impl Budget {
    pub fn new(burst: u32, refill: Duration, now: Instant) -> Self {
        Self {
            burst,
            refill,
            tokens: f64::from(burst),
            last: now,
            dropped: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        if !self.refill.is_zero() {
            self.tokens = (self.tokens + elapsed.as_secs_f64() / self.refill.as_secs_f64())
                .min(f64::from(self.burst));
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            let dropped = std::mem::take(&mut self.dropped);
            Admit::Send { dropped }
        } else {
            self.dropped += 1;
            Admit::Drop
        }
    }

    /// Suppressed and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::decide::canary::runner::tests::outcome;
    use crate::decide::canary::transition::Transitions;
    use crate::decide::canary::warning::CanaryWarning;
    use crate::model::outcome::OutcomeKind;
    use std::time::SystemTime;

    /// A pre-pull outcome of `payments/critical` for the unit tests.
    pub(crate) fn prepull(action: Action, verdict: Verdict) -> Outcome {
        Outcome {
            kind: OutcomeKind::Prepull,
            time: String::new(),
            node: "n1".into(),
            namespace: "payments".into(),
            pullset: "critical".into(),
            image: "r/api@sha256:1".into(),
            verdict,
            message: "boom".into(),
            hint: Some(verdict.hint()),
            duration_ms: 7,
            action,
            attempts: 1,
            credential: None,
            image_ref: None,
            repo_digest: None,
            size_bytes: None,
            pinned: None,
            warnings: vec![],
            kubelet_access: Default::default(),
            kubelet_access_warning: None,
        }
    }

    #[test]
    fn event_names_fit_the_api_servers_limit() {
        // (regarding name, unique, expected)
        let long = "a".repeat(250);
        let dashed = format!("{}-b", "a".repeat(235));
        let table: &[(&str, u64, String)] = &[
            ("critical", 0x1f, "critical.1f".into()),
            (
                &long,
                u64::MAX,
                format!("{}.ffffffffffffffff", "a".repeat(236)),
            ),
            // Cut just after a dash: the dash goes too, the label ends alphanumeric.
            (
                &dashed,
                u64::MAX,
                format!("{}.ffffffffffffffff", "a".repeat(235)),
            ),
            ("---", 1, "pullgate.1".into()),
        ];
        for (regarding, unique, want) in table {
            let got = event_name(regarding, *unique);
            assert_eq!(&got, want, "{regarding}");
            assert!(got.len() <= NAME_LIMIT, "{} bytes", got.len());
        }
    }

    #[test]
    fn reporting_instance_fits_and_stays_apart() {
        assert_eq!(reporting_instance("node-1"), "node-1");
        let exact = "n".repeat(REPORTING_INSTANCE_LIMIT);
        assert_eq!(reporting_instance(&exact), exact);
        let a = format!("{}a", "n".repeat(199));
        let b = format!("{}b", "n".repeat(199));
        let (ia, ib) = (reporting_instance(&a), reporting_instance(&b));
        assert_eq!(ia.len(), REPORTING_INSTANCE_LIMIT);
        assert_ne!(ia, ib);
        assert_eq!(ia, reporting_instance(&a), "deterministic");
        assert!(ia.starts_with(&"n".repeat(100)));
        // Multi-byte characters are cut at a boundary.
        let wide = "é".repeat(100);
        assert!(reporting_instance(&wide).len() <= REPORTING_INSTANCE_LIMIT);
    }

    #[test]
    fn prepull_table() {
        assert_eq!(for_prepull(&prepull(Action::Present, Verdict::Ok)), None);
        let pulled = for_prepull(&prepull(Action::Pulled, Verdict::Ok)).unwrap();
        assert_eq!(
            (pulled.reason, pulled.severity, pulled.action),
            (Reason::PrePulled, Severity::Normal, "PrePull")
        );
        assert_eq!(
            pulled.regarding,
            Regarding::PullSet(ObjectKey::new("payments", "critical"))
        );
        let failed = for_prepull(&prepull(Action::Failed, Verdict::Unauthorized)).unwrap();
        assert_eq!(
            (failed.reason, failed.severity),
            (Reason::PrePullFailed, Severity::Warning)
        );
        assert!(
            failed.note.contains("Unauthorized: boom"),
            "{}",
            failed.note
        );
        let disk = for_prepull(&prepull(Action::Failed, Verdict::DiskPressure)).unwrap();
        assert_eq!(
            (disk.reason, disk.severity, disk.action),
            (
                Reason::PrePullSkippedDiskPressure,
                Severity::Warning,
                "PrePull"
            )
        );
        // Same image, same verdict: one aggregation key; another verdict: another key.
        let again = for_prepull(&prepull(Action::Failed, Verdict::Unauthorized)).unwrap();
        let other = for_prepull(&prepull(Action::Failed, Verdict::NotFound)).unwrap();
        assert_eq!(failed.aggregation, again.aggregation);
        assert_ne!(failed.aggregation, other.aggregation);
        assert_ne!(failed.aggregation, pulled.aggregation);
    }

    #[test]
    fn canary_transitions() {
        let mut transitions = Transitions::default();
        let mut observe = |image: &str, verdict: Verdict, warnings: Vec<CanaryWarning>| {
            let o = outcome(image, verdict, warnings);
            for_canary(&o, transitions.observe(&o))
        };
        assert!(observe("a", Verdict::Ok, vec![]).is_empty());
        let failed = observe("a", Verdict::Unauthorized, vec![]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].reason, Reason::CanaryFailed);
        assert_eq!(failed[0].note, "a on node n1: Unauthorized: m");
        let repeat = observe("a", Verdict::Unauthorized, vec![]);
        assert_eq!(repeat[0].aggregation, failed[0].aggregation);
        // Another image failing is its own Event.
        let b = observe("b", Verdict::Unauthorized, vec![]);
        assert_ne!(b[0].aggregation, failed[0].aggregation);
        let recovered = observe("a", Verdict::Ok, vec![]);
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].reason, Reason::CanaryRecovered);
        assert!(
            recovered[0].note.contains("was Unauthorized"),
            "{}",
            recovered[0].note
        );
        assert!(observe("a", Verdict::Ok, vec![]).is_empty());
        let at = SystemTime::now() + Duration::from_secs(3600);
        let expiring = observe("a", Verdict::Ok, vec![CanaryWarning::ExpiringSoon { at }]);
        assert_eq!(expiring.len(), 1);
        assert_eq!(expiring[0].reason, Reason::CredentialExpiringSoon);
        assert_eq!(expiring[0].severity, Severity::Warning);
        assert_eq!(
            expiring[0].note,
            format!(
                "a on node n1: ExpiringSoon: the credential expires at {}",
                crate::model::time::rfc3339_seconds(at)
            )
        );
        // Other warnings are no Event of their own.
        let mirrored = observe(
            "a",
            Verdict::Ok,
            vec![CanaryWarning::MirrorInPath {
                registry: "r".into(),
                mirrors: vec!["m".into()],
            }],
        );
        assert!(mirrored.is_empty(), "{mirrored:?}");
        // A host that fails behind or in front of the one that answered: an Event, while it lasts.
        let masks = CanaryWarning::MirrorMasks {
            registry: "r".into(),
            answered: "m".into(),
            before: vec![],
            after: vec![crate::decide::canary::warning::HostVerdict {
                host: "r".into(),
                verdict: Verdict::Unauthorized,
                message: "401".into(),
            }],
        };
        for _ in 0..2 {
            let masked = observe("a", Verdict::Ok, vec![masks.clone()]);
            assert_eq!(masked.len(), 1, "{masked:?}");
            assert_eq!(masked[0].reason, Reason::CanaryHostFailing);
            assert_eq!(masked[0].severity, Severity::Warning);
            assert_eq!(masked[0].note, format!("a on node n1: {masks}"));
        }
    }

    #[test]
    fn budget_bursts_then_refills_and_counts_drops() {
        let t0 = Instant::now();
        let mut budget = Budget::new(3, Duration::from_secs(10), t0);
        for _ in 0..3 {
            assert_eq!(budget.admit(t0), Admit::Send { dropped: 0 });
        }
        assert_eq!(budget.admit(t0), Admit::Drop);
        assert_eq!(budget.admit(t0 + Duration::from_secs(5)), Admit::Drop);
        assert_eq!(budget.dropped(), 2);
        // 10 s after the first drop a token is back, and the send reports the two drops.
        assert_eq!(
            budget.admit(t0 + Duration::from_secs(10)),
            Admit::Send { dropped: 2 }
        );
        assert_eq!(budget.admit(t0 + Duration::from_secs(11)), Admit::Drop);
        // Never more than the burst, however long the quiet.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(matches!(budget.admit(later), Admit::Send { .. }));
        }
        assert_eq!(budget.admit(later), Admit::Drop);
    }

    #[test]
    fn notes_are_bounded() {
        let long = "é".repeat(2000);
        let e = EventIntent::new(Regarding::Node("n1".into()), Reason::GateTimedOut, long, "");
        assert!(e.note.len() <= NOTE_LIMIT_BYTES);
        assert!(e.note.ends_with("..."));
        // A note that fits is left alone.
        let e = EventIntent::new(
            Regarding::Node("n1".into()),
            Reason::GateTimedOut,
            "x".repeat(NOTE_LIMIT_BYTES),
            "",
        );
        assert_eq!(e.note, "x".repeat(NOTE_LIMIT_BYTES));
    }

    #[test]
    fn a_suffix_keeps_the_note_within_the_api_servers_limit() {
        let suffix = " (7 earlier events not sent: per-node event budget)";
        // 5,000 bytes of two-, three- and four-byte characters: every cut lands mid-character
        // for one of them.
        for body in ["é".repeat(2500), "€".repeat(1667), "🦀".repeat(1250)] {
            assert!(body.len() >= 5000);
            let mut e = EventIntent::new(
                Regarding::Node("n1".into()),
                Reason::GateTimedOut,
                body.clone(),
                "",
            );
            e.append_to_note(suffix);
            assert!(e.note.len() <= NOTE_LIMIT_BYTES, "{} bytes", e.note.len());
            assert!(e.note.ends_with(&format!("...{suffix}")), "{}", e.note);
            let kept = &e.note[..e.note.len() - suffix.len() - 3];
            assert!(body.starts_with(kept));
            // Nothing wasted beyond one character's width.
            assert!(e.note.len() > NOTE_LIMIT_BYTES - 4);
        }
        // A short note just gains the suffix.
        let mut e = EventIntent::new(
            Regarding::Node("n1".into()),
            Reason::GateTimedOut,
            "short".into(),
            "",
        );
        e.append_to_note(suffix);
        assert_eq!(e.note, format!("short{suffix}"));
        // A note exactly at the limit, then a suffix: the body gives way.
        let mut e = EventIntent::new(
            Regarding::Node("n1".into()),
            Reason::GateTimedOut,
            "é".repeat(NOTE_LIMIT_BYTES / 2),
            "",
        );
        e.append_to_note(suffix);
        assert!(e.note.len() <= NOTE_LIMIT_BYTES);
        assert!(e.note.ends_with(suffix));
    }

    #[test]
    fn an_oversized_suffix_is_cut_at_a_character_boundary() {
        let note = fit_note("body".into(), &"é".repeat(NOTE_LIMIT_BYTES));
        assert!(note.len() <= NOTE_LIMIT_BYTES);
        assert!(note.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_plugin_failure_is_an_event_on_the_node_per_provider() {
        let failure = crate::decide::credentials::PluginFailure {
            provider: "ecr".into(),
            error: "credential provider plugin ecr exited with exit status: 3".into(),
            stderr: "token service unavailable".into(),
        };
        let e = for_plugin_failure("n1", &failure);
        assert_eq!(e.regarding, Regarding::Node("n1".into()));
        assert_eq!(e.reason, Reason::CredentialPluginFailed);
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(
            e.note,
            "credential provider plugin ecr exited with exit status: 3 on node n1; stderr: token service unavailable"
        );
        let other = for_plugin_failure(
            "n1",
            &crate::decide::credentials::PluginFailure {
                provider: "gcr".into(),
                ..failure.clone()
            },
        );
        assert_ne!(e.aggregation, other.aggregation, "one series per provider");
        let silent = for_plugin_failure(
            "n1",
            &crate::decide::credentials::PluginFailure {
                stderr: String::new(),
                ..failure
            },
        );
        assert!(!silent.note.contains("stderr"), "{}", silent.note);
    }
}
