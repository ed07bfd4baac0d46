//! Wall-clock times as pullgate writes and reads them: RFC 3339 in UTC, and seconds since the
//! epoch as credentials carry them (a JWT's `exp`, an ECR token's `expiration`). The one home of
//! both conversions, and neither panics: what a tenant, registry or plugin sends may be any number,
//! and a time RFC 3339 cannot write (before 1970, after 9999) is written as what it is.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the epoch to 10000-01-01T00:00:00Z, the first second a four-digit year cannot write.
pub const YEAR_10000: u64 = 253_402_300_800;

/// What [`rfc3339_seconds`] and [`rfc3339_millis`] write for a time after year 9999.
pub const AFTER_9999: &str = "out of range: after 9999-12-31T23:59:59Z";

/// What [`rfc3339_seconds`] and [`rfc3339_millis`] write for a time before the epoch.
pub const BEFORE_1970: &str = "out of range: before 1970-01-01T00:00:00Z";

/// Seconds since the epoch beyond which (either way) a credential's time is clamped: about
/// ±31,700 years, far past anything RFC 3339 writes, and well inside what `SystemTime` holds, so
/// `u64::MAX`, `1e30` or `-1e30` are simply "after 9999" or "before 1970".
pub const CLAMP_SECONDS: u64 = 1_000_000_000_000;

/// `2026-05-01T12:00:00Z`, or [`AFTER_9999`] / [`BEFORE_1970`].
pub fn rfc3339_seconds(t: SystemTime) -> String {
    written(t, humantime::format_rfc3339_seconds)
}

/// `2026-05-01T12:00:00.123Z`, or [`AFTER_9999`] / [`BEFORE_1970`].
pub fn rfc3339_millis(t: SystemTime) -> String {
    written(t, humantime::format_rfc3339_millis)
}

/// humantime panics outside 1970..=9999; those times never reach it.
fn written(t: SystemTime, format: fn(SystemTime) -> humantime::Rfc3339Timestamp) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Err(_) => BEFORE_1970.to_string(),
        Ok(d) if d.as_secs() >= YEAR_10000 => AFTER_9999.to_string(),
        Ok(_) => format(t).to_string(),
    }
}

/// Seconds since the epoch of a time as [`rfc3339_seconds`] or [`rfc3339_millis`] wrote it, for a
/// gauge: [`AFTER_9999`] reads as the first second after 9999 (a lower bound: "not before"),
/// [`BEFORE_1970`] as 0. `None` for any other text.
pub fn unix_seconds_of(written: &str) -> Option<f64> {
    match written {
        AFTER_9999 => Some(YEAR_10000 as f64),
        BEFORE_1970 => Some(0.0),
        text => humantime::parse_rfc3339(text)
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64()),
    }
}

/// Whole seconds since the epoch (negative: before it), clamped to ±[`CLAMP_SECONDS`]. `None` only
/// where the platform's `SystemTime` cannot hold the clamped time (never on Linux).
pub fn from_unix_seconds(secs: i128) -> Option<SystemTime> {
    let limit = i128::from(CLAMP_SECONDS);
    let clamped = secs.clamp(-limit, limit);
    // Within ±CLAMP_SECONDS, so the magnitude fits a u64.
    let by = Duration::from_secs(u64::try_from(clamped.unsigned_abs()).unwrap_or(CLAMP_SECONDS));
    if clamped >= 0 {
        UNIX_EPOCH.checked_add(by)
    } else {
        UNIX_EPOCH.checked_sub(by)
    }
}

/// Seconds since the epoch as a JSON number may carry them (`1900000000.5`, `1e30`, `-1`): the
/// fraction is dropped (floored), infinities clamp as [`from_unix_seconds`] does, NaN is no time.
pub fn from_unix_seconds_f64(secs: f64) -> Option<SystemTime> {
    if secs.is_nan() {
        return None;
    }
    // `as` saturates: ±inf and anything past i128 land on its bounds, then on the clamp.
    from_unix_seconds(secs.floor() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc3339_table() {
        let cases = [
            (
                UNIX_EPOCH,
                "1970-01-01T00:00:00Z",
                "1970-01-01T00:00:00.000Z",
            ),
            (
                at(1_700_000_000),
                "2023-11-14T22:13:20Z",
                "2023-11-14T22:13:20.000Z",
            ),
            (
                at(YEAR_10000 - 1),
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:59:59.000Z",
            ),
            (
                at(YEAR_10000 - 1) + Duration::from_millis(999),
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:59:59.999Z",
            ),
            (at(YEAR_10000), AFTER_9999, AFTER_9999),
            (at(YEAR_10000 * 2), AFTER_9999, AFTER_9999),
            (at(CLAMP_SECONDS), AFTER_9999, AFTER_9999),
            (
                UNIX_EPOCH - Duration::from_millis(1),
                BEFORE_1970,
                BEFORE_1970,
            ),
            (
                UNIX_EPOCH - Duration::from_secs(CLAMP_SECONDS),
                BEFORE_1970,
                BEFORE_1970,
            ),
        ];
        for (t, seconds, millis) in cases {
            assert_eq!(rfc3339_seconds(t), seconds, "{t:?}");
            assert_eq!(rfc3339_millis(t), millis, "{t:?}");
        }
    }

    #[test]
    fn written_times_read_back_for_gauges() {
        for (t, expected) in [
            (at(1_700_000_000), Some(1_700_000_000.0)),
            (at(YEAR_10000 - 1), Some((YEAR_10000 - 1) as f64)),
            (at(CLAMP_SECONDS), Some(YEAR_10000 as f64)),
            (UNIX_EPOCH - Duration::from_secs(5), Some(0.0)),
        ] {
            assert_eq!(unix_seconds_of(&rfc3339_seconds(t)), expected, "{t:?}");
        }
        assert_eq!(unix_seconds_of("soon"), None);
        assert_eq!(unix_seconds_of(""), None);
    }

    #[test]
    fn unix_seconds_table() {
        let far = Some(at(CLAMP_SECONDS));
        let early = UNIX_EPOCH.checked_sub(Duration::from_secs(CLAMP_SECONDS));
        let cases: [(i128, Option<SystemTime>); 9] = [
            (0, Some(UNIX_EPOCH)),
            (1_900_000_000, Some(at(1_900_000_000))),
            (i128::from(YEAR_10000 - 1), Some(at(YEAR_10000 - 1))),
            (i128::from(YEAR_10000), Some(at(YEAR_10000))),
            (i128::from(u64::MAX), far),
            (i128::MAX, far),
            (-1, UNIX_EPOCH.checked_sub(Duration::from_secs(1))),
            (i128::from(i64::MIN), early),
            (i128::MIN, early),
        ];
        for (secs, expected) in cases {
            assert_eq!(from_unix_seconds(secs), expected, "{secs}");
        }
        let floats: [(f64, Option<SystemTime>); 9] = [
            (1_900_000_000.5, Some(at(1_900_000_000))),
            (0.0, Some(UNIX_EPOCH)),
            (-0.5, UNIX_EPOCH.checked_sub(Duration::from_secs(1))),
            (1e30, far),
            (u64::MAX as f64, far),
            (f64::INFINITY, far),
            (-1e30, early),
            (f64::NEG_INFINITY, early),
            (f64::NAN, None),
        ];
        for (secs, expected) in floats {
            assert_eq!(from_unix_seconds_f64(secs), expected, "{secs}");
        }
        // Whatever comes in, it can be written.
        for secs in [i128::MAX, i128::MIN, 0, i128::from(YEAR_10000)] {
            if let Some(t) = from_unix_seconds(secs) {
                let _ = rfc3339_seconds(t);
            }
        }
    }
}
