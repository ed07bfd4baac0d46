//! When a credential says it expires: a JWT's `exp` (in the password or the identity token), or an
//! Amazon ECR authorization token's `expiration` (the password is base64 of a JSON document).
//! Pure decoding; an unrecognised credential simply has no known expiry.

use base64::Engine as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

fn seconds(v: &serde_json::Value) -> Option<SystemTime> {
    let secs = v
        .as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
