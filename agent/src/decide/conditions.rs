//! Node-level state: the two conditions pullgate publishes (as Node conditions in a cluster, as
//! JSON lines standalone), with transitions only when the status or the reason changes.
//!
//! - `CriticalImagesReady`: every image of every `gate: true` PullSet selected here is present.
//! - `PullCredentialsValid`: the latest canary of every PullSet with canaries was `Ok`.
//!
//! `Unknown` until the first observation; `False` carries the worst verdict as its reason.

use crate::model::verdict::Verdict;
use serde::Serialize;

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    True,
    False,
    Unknown,
}

/// A condition as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// Always `condition`.
    pub kind: &'static str,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: Status,
    pub reason: String,
    pub message: String,
    /// When the status last flipped (RFC 3339).
    pub last_transition_time: String,
}

/// Worse first: what an operator must look at before anything else.
const SEVERITY: [Verdict; 14] = [
    Verdict::Expired,
    Verdict::Forbidden,
    Verdict::Unauthorized,
    Verdict::SecretMalformed,
    Verdict::SecretWrongType,
    Verdict::SecretNotFound,
    Verdict::ServiceAccountNotFound,
    Verdict::HostMismatch,
    Verdict::NoCredentials,
    Verdict::NotFound,
    Verdict::DigestMismatch,
    Verdict::RateLimited,
    Verdict::Network,
    Verdict::RuntimeError,
];

/// The worst of some verdicts (`Ok` when all are).
pub fn worst(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    verdicts
        .into_iter()
        .filter(|v| !v.is_ok())
        .min_by_key(|v| {
            SEVERITY
                .iter()
                .position(|s| s == v)
                .unwrap_or(SEVERITY.len())
        })
        .unwrap_or(Verdict::Ok)
}

/// Tracks one condition.
#[derive(Clone, Debug)]
pub struct Tracker {
    current: Condition,
}

impl Tracker {
    pub fn new(type_: &'static str) -> Self {
        Self {
            current: Condition {
                kind: "condition",
                type_,
                status: Status::Unknown,
                reason: "NotYetChecked".into(),
                message: "no result yet".into(),
                last_transition_time: crate::model::outcome::now_rfc3339(),
            },
        }
    }

    pub fn current(&self) -> &Condition {
        &self.current
    }

    /// Records the verdicts of a round (`None`: nothing to judge, the status stays). Returns the
    /// new condition when its status or reason changed.
    pub fn observe(&mut self, verdicts: &[Verdict], failing: &[String]) -> Option<Condition> {
        let worst = worst(verdicts.iter().copied());
        let (status, reason, message) = if worst.is_ok() {
            let message = if verdicts.is_empty() {
                "nothing to check on this node".to_string()
            } else {
                format!("{} checked, all Ok", verdicts.len())
            };
            (Status::True, "Ok".to_string(), message)
        } else {
            let shown: Vec<&str> = failing.iter().take(3).map(String::as_str).collect();
            let more = failing.len().saturating_sub(3);
            let mut message = format!("{}: {}", worst, shown.join(", "));
            if more > 0 {
                message.push_str(&format!(" and {more} more"));
            }
            (Status::False, worst.as_str().to_string(), message)
        };
        let message = crate::model::printable::printable_text(&message);
        if status == self.current.status && reason == self.current.reason {
            self.current.message = message;
            return None;
        }
        if status != self.current.status {
            self.current.last_transition_time = crate::model::outcome::now_rfc3339();
        }
        self.current.status = status;
        self.current.reason = reason;
        self.current.message = message;
        Some(self.current.clone())
    }

    /// [`observe`](Self::observe), the message ending with `note` (such as
    /// `gate::not_counted_note`); a changed note is a change too.
    pub fn observe_noting(
        &mut self,
        verdicts: &[Verdict],
        failing: &[String],
        note: &str,
    ) -> Option<Condition> {
        let before = self.current.message.clone();
        let changed = self.observe(verdicts, failing);
        let message = format!("{}{note}", self.current.message);
        self.current.message = crate::model::printable::printable_text(&message);
        (changed.is_some() || self.current.message != before).then(|| self.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_verdict_table() {
        use Verdict::*;
        for (verdicts, expected) in [
            (vec![], Ok),
            (vec![Ok, Ok], Ok),
            (vec![Ok, Network], Network),
            (vec![Network, Unauthorized], Unauthorized),
            (vec![NotFound, Expired, Unauthorized], Expired),
            (vec![RuntimeError, RateLimited], RateLimited),
        ] {
            assert_eq!(worst(verdicts.clone()), expected, "{verdicts:?}");
        }
    }

    #[test]
    fn transitions_only_on_change() {
        let mut t = Tracker::new("PullCredentialsValid");
        assert_eq!(t.current().status, Status::Unknown);
        let first = t.observe(&[Verdict::Ok], &[]).expect("Unknown → True");
        assert_eq!((first.status, first.reason.as_str()), (Status::True, "Ok"));
        assert!(t.observe(&[Verdict::Ok, Verdict::Ok], &[]).is_none());
        let down = t
            .observe(&[Verdict::Unauthorized], &["payments/critical".into()])
            .expect("True → False");
        assert_eq!(
            (down.status, down.reason.as_str()),
            (Status::False, "Unauthorized")
        );
        assert!(down.message.contains("payments/critical"));
        // A new reason while still False is published; the transition time stays.
        let worse = t
            .observe(&[Verdict::Expired], &["a".into()])
            .expect("reason changed");
        assert_eq!(worse.last_transition_time, down.last_transition_time);
        assert!(t.observe(&[Verdict::Expired], &["a".into()]).is_none());
        // A note: a change when it appears or goes, not when it stays.
        let noted = t
            .observe_noting(&[Verdict::Expired], &["a".into()], "; not counted: x/y")
            .expect("the note is new");
        assert!(
            noted.message.ends_with("a; not counted: x/y"),
            "{}",
            noted.message
        );
        assert!(
            t.observe_noting(&[Verdict::Expired], &["a".into()], "; not counted: x/y")
                .is_none()
        );
        let gone = t
            .observe_noting(&[Verdict::Expired], &["a".into()], "")
            .expect("the note went");
        assert!(!gone.message.contains("not counted"), "{}", gone.message);
    }
}
