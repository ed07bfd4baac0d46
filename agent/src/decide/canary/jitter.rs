//! Deterministic jitter: each node waits an offset derived from its name and the PullSet, so a
//! fleet spreads evenly over the window instead of stampeding the registry, and a restarted agent
//! keeps its slot.

use crate::model::inventory::ObjectKey;
use sha2::{Digest as _, Sha256};
use std::time::Duration;

/// An offset in `[0, window)`, uniform over node names, stable for the same inputs. Total: a window
/// longer than `u64::MAX` nanoseconds (about 584 years) spreads over that much, so no window
/// overflows the arithmetic.
pub fn offset(node: &str, pullset: &ObjectKey, window: Duration) -> Duration {
    if window.is_zero() {
        return Duration::ZERO;
    }
    let digest = Sha256::new()
        .chain_update(node.as_bytes())
        .chain_update([0])
        .chain_update(pullset.namespace.as_bytes())
        .chain_update(b"/")
        .chain_update(pullset.name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let x = u128::from(u64::from_be_bytes(first));
    // x / 2^64 of the window, in nanoseconds (no float rounding, never equal to the window); both
    // factors below 2^64, so the product fits in a u128.
    let window_nanos = window.as_nanos().min(u128::from(u64::MAX));
    let nanos = (x * window_nanos) >> 64;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_evenly_over_a_fleet() {
        let set = ObjectKey::new("payments", "critical");
        let window = Duration::from_secs(600);
        let mut buckets = [0usize; 10];
        for i in 0..1000 {
            let o = offset(
                &format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250),
                &set,
                window,
            );
            assert!(o < window);
            buckets[(o.as_secs() / 60) as usize] += 1;
        }
        // 100 expected per minute; a uniform hash stays well within ±35%.
        assert!(
            buckets.iter().all(|b| (65..=135).contains(b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn offsets_are_stable_and_depend_on_node_and_set() {
        let set = ObjectKey::new("payments", "critical");
        let w = Duration::from_secs(600);
        // Pinned: a change of the derivation would move every node of a fleet at once.
        assert_eq!(offset("node-1", &set, w), offset("node-1", &set, w));
        assert_eq!(offset("node-1", &set, w).as_millis(), PINNED_NODE_1_MS);
        assert_ne!(offset("node-1", &set, w), offset("node-2", &set, w));
        assert_ne!(
            offset("node-1", &set, w),
            offset("node-1", &ObjectKey::new("payments", "other"), w)
        );
        assert_eq!(offset("node-1", &set, Duration::ZERO), Duration::ZERO);
    }

    const PINNED_NODE_1_MS: u128 = 51_074;

    #[test]
    fn any_window_gives_an_offset_within_it() {
        let set = ObjectKey::new("payments", "critical");
        let ten_thousand_years = Duration::from_secs(10_000 * 365 * 24 * 3600);
        for window in [
            Duration::from_nanos(1),
            Duration::from_nanos(u64::MAX),
            Duration::from_nanos(u64::MAX) + Duration::from_nanos(1),
            ten_thousand_years,
            Duration::MAX,
        ] {
            for node in ["node-1", "node-2", "ip-10-0-0-1.ec2.internal"] {
                let o = offset(node, &set, window);
                assert!(o < window, "{node}: {o:?} for {window:?}");
            }
        }
    }
}
