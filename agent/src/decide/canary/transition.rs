//! Canary transitions, detected in one place: per PullSet image, whether an outcome failed after
//! success, failed again, or recovered. Event policy builds its Events from the [`Transition`]; the
//! daemon logs it with [`Transition::log`].

use crate::decide::canary::runner::CanaryOutcome;
use crate::model::inventory::ObjectKey;
use crate::model::verdict::Verdict;
use std::collections::HashMap;

/// What one canary outcome changed for its PullSet image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `Ok`, as the last outcome was (or this is the first).
    StillOk,
    /// `Ok` again after failing with `was`.
    Recovered { was: Verdict },
    /// Failing, after `Ok` or as the first outcome.
    Failed,
    /// Failing, as the last outcome was (with `was`, the same verdict or another).
    StillFailing { was: Verdict },
}

impl Transition {
    /// Logs a change: `CanaryRecovered` at INFO, `CanaryFailed` at WARN; repeats are not logged.
    pub fn log(self, outcome: &CanaryOutcome) {
        let pullset = ObjectKey::new(&outcome.namespace, &outcome.pullset);
        match self {
            Self::Recovered { .. } => {
                tracing::info!(pullset = %pullset, image = %outcome.image, "CanaryRecovered");
            }
            Self::Failed => {
                tracing::warn!(pullset = %pullset, image = %outcome.image, verdict = %outcome.verdict, "CanaryFailed");
            }
            Self::StillOk | Self::StillFailing { .. } => {}
        }
    }
}

/// The last verdict of every PullSet image, to tell what the next outcome changes.
#[derive(Debug, Default)]
pub struct Transitions {
    last: HashMap<(ObjectKey, String), Verdict>,
}

impl Transitions {
    /// Records `outcome` and says what it changed.
    pub fn observe(&mut self, outcome: &CanaryOutcome) -> Transition {
        let slot = (
            ObjectKey::new(&outcome.namespace, &outcome.pullset),
            outcome.image.clone(),
        );
        let was = self.last.insert(slot, outcome.verdict);
        match (was, outcome.verdict.is_ok()) {
            (Some(was), true) if !was.is_ok() => Transition::Recovered { was },
            (_, true) => Transition::StillOk,
            (Some(was), false) if !was.is_ok() => Transition::StillFailing { was },
            (_, false) => Transition::Failed,
        }
    }

    /// Forgets PullSet images that are gone (a PullSet or image added again starts clean).
    pub fn retain(&mut self, keep: impl Fn(&(ObjectKey, String)) -> bool) {
        self.last.retain(|slot, _| keep(slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::canary::runner::tests::outcome;

    #[test]
    fn transition_table() {
        use Transition::*;
        use Verdict::{NotFound, Ok, Unauthorized};
        let mut t = Transitions::default();
        let steps = [
            ("a", Ok, StillOk),
            ("a", Unauthorized, Failed),
            ("a", Unauthorized, StillFailing { was: Unauthorized }),
            ("a", NotFound, StillFailing { was: Unauthorized }),
            // Each image on its own.
            ("b", Unauthorized, Failed),
            ("a", Ok, Recovered { was: NotFound }),
            ("a", Ok, StillOk),
            ("b", Ok, Recovered { was: Unauthorized }),
        ];
        for (image, verdict, expected) in steps {
            assert_eq!(
                t.observe(&outcome(image, verdict, vec![])),
                expected,
                "{image} {verdict}"
            );
        }
        t.observe(&outcome("a", Unauthorized, vec![]));
        t.retain(|_| false);
        assert_eq!(t.observe(&outcome("a", Ok, vec![])), StillOk);
    }
}
