//! When a credential says it expires: a JWT's `exp` (in the password or the identity token), or an
//! Amazon ECR authorization token's `expiration` (the password is base64 of a JSON document).
//! Pure decoding; an unrecognised credential simply has no known expiry. The number is whatever
//! the credential says: [`crate::model::time`] turns it into a time without overflow (far future
//! and far past clamp; a negative one is before 1970, hence expired).

use crate::model::time::{from_unix_seconds, from_unix_seconds_f64};
use base64::Engine as _;
use std::time::SystemTime;

/// The earliest expiry any of the given secrets carries.
pub fn expires_at<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Option<SystemTime> {
    secrets.into_iter().filter_map(one).min()
}

fn one(secret: &str) -> Option<SystemTime> {
    jwt_exp(secret).or_else(|| ecr_expiration(secret))
}

/// `header.payload.signature`, base64url without padding; `exp` in seconds since the epoch.
fn jwt_exp(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    seconds(claims.get("exp")?)
}

/// ECR: base64 of `{"payload": …, "datakey": …, "version": "2", "type": "DATA_KEY", "expiration": N}`.
fn ecr_expiration(password: &str) -> Option<SystemTime> {
    if password.len() < 16 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(password)
        .ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    doc.get("payload")?;
    seconds(doc.get("expiration")?)
}

/// A JSON number of seconds since the epoch: integers exactly (u64 or i64), anything else as f64.
fn seconds(v: &serde_json::Value) -> Option<SystemTime> {
    if let Some(secs) = v.as_u64() {
        from_unix_seconds(i128::from(secs))
    } else if let Some(secs) = v.as_i64() {
        from_unix_seconds(i128::from(secs))
    } else {
        from_unix_seconds_f64(v.as_f64()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::time::{AFTER_9999, BEFORE_1970, CLAMP_SECONDS, YEAR_10000, rfc3339_seconds};
    use std::time::{Duration, UNIX_EPOCH};

    fn b64url(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn at(secs: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn expiry_table() {
        let jwt = |claims: &str| format!("{}.{}.sig", b64url(r#"{"alg":"RS256"}"#), b64url(claims));
        let ecr = |json: &str| base64::engine::general_purpose::STANDARD.encode(json);
        let cases: Vec<(Vec<String>, Option<SystemTime>)> = vec![
            (
                vec![jwt(r#"{"exp":1900000000,"sub":"x"}"#)],
                at(1_900_000_000),
            ),
            (vec![jwt(r#"{"exp":1900000000.5}"#)], at(1_900_000_000)),
            (vec![jwt(r#"{"sub":"no exp"}"#)], None),
            (vec![jwt(r#"{"exp":"soon"}"#)], None),
            (vec!["a.b".into()], None),
            (vec!["plain-password".into()], None),
            (
                vec![ecr(
                    r#"{"payload":"p","datakey":"d","version":"2","type":"DATA_KEY","expiration":1800000000}"#,
                )],
                at(1_800_000_000),
            ),
            (vec![ecr(r#"{"expiration":1800000000}"#)], None),
            // The earliest of password and identity token.
            (
                vec![jwt(r#"{"exp":2000000000}"#), jwt(r#"{"exp":1950000000}"#)],
                at(1_950_000_000),
            ),
            (vec![], None),
        ];
        for (secrets, expected) in cases {
            assert_eq!(
                expires_at(secrets.iter().map(String::as_str)),
                expected,
                "{secrets:?}"
            );
        }
    }

    /// Out-of-range numbers a crafted token may carry: clamped, never a panic, and always writable.
    #[test]
    fn out_of_range_exp_table() {
        let jwt = |exp: &str| {
            format!(
                "{}.{}.sig",
                b64url(r#"{"alg":"RS256"}"#),
                b64url(&format!(r#"{{"exp":{exp}}}"#))
            )
        };
        let ecr = |exp: &str| {
            base64::engine::general_purpose::STANDARD.encode(format!(
                r#"{{"payload":"p","datakey":"d","version":"2","type":"DATA_KEY","expiration":{exp}}}"#
            ))
        };
        let far = at(CLAMP_SECONDS);
        let early = UNIX_EPOCH.checked_sub(Duration::from_secs(CLAMP_SECONDS));
        let before = |secs: u64| UNIX_EPOCH.checked_sub(Duration::from_secs(secs));
        let cases: Vec<(String, Option<SystemTime>, &str)> = vec![
            (
                (YEAR_10000 - 1).to_string(),
                at(YEAR_10000 - 1),
                "9999-12-31T23:59:59Z",
            ),
            (YEAR_10000.to_string(), at(YEAR_10000), AFTER_9999),
            // Year 20000.
            ("568971849600".into(), at(568_971_849_600), AFTER_9999),
            (u64::MAX.to_string(), far, AFTER_9999),
            (i64::MAX.to_string(), far, AFTER_9999),
            ("1e30".into(), far, AFTER_9999),
            ("1e308".into(), far, AFTER_9999),
            ("18446744073709551616".into(), far, AFTER_9999),
            ("-1".into(), before(1), BEFORE_1970),
            ("-1.5".into(), before(2), BEFORE_1970),
            (i64::MIN.to_string(), early, BEFORE_1970),
            ("-1e30".into(), early, BEFORE_1970),
        ];
        for (exp, expected, written) in cases {
            for secret in [jwt(&exp), ecr(&exp)] {
                let got = expires_at([secret.as_str()]);
                assert_eq!(got, expected, "{exp}");
                assert_eq!(got.map(rfc3339_seconds).as_deref(), Some(written), "{exp}");
            }
        }
        // JSON has no NaN or infinity: such a token does not parse, so it has no known expiry.
        for exp in ["NaN", "Infinity", "-Infinity", "1e400"] {
            assert_eq!(expires_at([jwt(exp).as_str()]), None, "{exp}");
        }
    }
}
