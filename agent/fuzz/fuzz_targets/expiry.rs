//! Credential expiry (issue #13): whatever a JWT's `exp` or an ECR token's `expiration` says, as
//! raw bytes, as a JSON number in a JWT or an ECR document, or as the seconds themselves, decoding
//! never panics and the time it gives can always be written as RFC 3339.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use pullgate::decide::credentials::expiry::expires_at;
use pullgate::model::time::{
    from_unix_seconds, from_unix_seconds_f64, rfc3339_millis, rfc3339_seconds,
};

fn written(t: Option<std::time::SystemTime>) {
    if let Some(t) = t {
        let _ = (rfc3339_seconds(t), rfc3339_millis(t));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.first_chunk::<16>() {
        let raw = i128::from_le_bytes(*head);
        written(from_unix_seconds(raw));
        written(from_unix_seconds_f64(f64::from_bits(raw as u64)));
        written(from_unix_seconds_f64(f64::from_bits((raw >> 64) as u64)));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    written(expires_at([text]));
    let url = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let std = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let jwt = format!(
        "{}.{}.sig",
        url(r#"{"alg":"RS256"}"#),
        url(&format!(r#"{{"exp":{text}}}"#))
    );
    let ecr = std(&format!(r#"{{"payload":"p","expiration":{text}}}"#));
    written(expires_at([jwt.as_str(), ecr.as_str()]));
    written(expires_at([url(text).as_str()]));
});
