//! What the registry adapter reads of an HTTP answer, bounded, and what of it may be shown: a
//! registry, a token service or whatever a token realm points at decides what it sends, and the
//! message ends up in a tenant's Event. Bodies are read up to a limit; an error body is reduced to
//! the distribution error code and a short, cleaned message (`{"errors":[{"code","message"}]}`),
//! never reflected raw.

use super::RegistryError;
use futures::StreamExt as _;
use serde::Deserialize;
use std::time::Duration;

/// The most of an error body read (to find the distribution error JSON in it).
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The longest message shown from a registry's error (characters).
pub const MESSAGE_LIMIT: usize = 200;
/// The longest distribution error code accepted (`MANIFEST_UNKNOWN`…).
const CODE_LIMIT: usize = 64;

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: serde_json::Value,
    #[serde(default)]
    message: serde_json::Value,
}

/// The body, up to `limit` bytes: more is an error ([`RegistryError::TooLarge`]).
pub async fn read_limited(
    what: &str,
    response: reqwest::Response,
    limit: usize,
    redirects: usize,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport(what, &e, redirects))?;
        if out.len().saturating_add(chunk.len()) > limit {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// At most the first `limit` bytes of the body; the rest is never read (the connection is
/// dropped), and a failure part-way keeps what came.
pub async fn read_prefix(response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    out
}

/// The first distribution error in `body`: its code (when it looks like one) and its message,
/// cleaned and cut ([`clean_message`]). Anything else in the body is ignored.
pub fn distribution_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) else {
        return (None, None);
    };
    let Some(first) = envelope.errors.into_iter().next() else {
        return (None, None);
    };
    let code = first.code.as_str().filter(|c| {
        !c.is_empty()
            && c.len() <= CODE_LIMIT
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    let message = first
        .message
        .as_str()
        .map(clean_message)
        .filter(|m| !m.is_empty());
    (code.map(str::to_string), message)
}

/// `text` without control characters, whitespace runs collapsed, cut to [`MESSAGE_LIMIT`]
/// characters (an ellipsis says so).
pub fn clean_message(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            space = !out.is_empty();
            continue;
        }
        if count >= MESSAGE_LIMIT {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// The canonical reason of an HTTP status (`Unauthorized`), the message when the body has none.
pub fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_string()
}

/// A request that did not finish within `limit`.
pub fn timed_out(what: &str, limit: Duration) -> RegistryError {
    RegistryError::Transport {
        what: what.to_string(),
        cause: format!(
            "timed out after {} (a slow or stalled registry)",
            humantime::format_duration(limit)
        ),
    }
}

/// A redirect from HTTPS to plain HTTP, refused by the client's redirect policy.
#[derive(Debug, thiserror::Error)]
#[error("redirected from HTTPS to plain HTTP ({0}): refused")]
pub struct Downgrade(pub String);

/// A transport failure, with its innermost cause (`Connection refused`, `dns error`…).
pub fn transport(what: &str, e: &reqwest::Error, redirects: usize) -> RegistryError {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    let mut downgrade = None;
    while let Some(s) = source {
        if let Some(d) = s.downcast_ref::<Downgrade>() {
            downgrade = Some(d.to_string());
        }
        cause = s.to_string();
        source = s.source();
    }
    if let Some(cause) = downgrade {
        return RegistryError::Transport {
            what: what.to_string(),
            cause,
        };
    }
    if e.is_redirect() {
        return RegistryError::Redirects {
            what: what.to_string(),
            limit: redirects,
        };
    }
    if e.is_timeout() {
        cause = format!("timed out ({cause})");
    }
    RegistryError::Transport {
        what: what.to_string(),
        cause: clean_message(&cause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_a_code_and_a_short_clean_message_only() {
        let long = "x".repeat(5_000);
        let long_body = format!(r#"{{"errors":[{{"code":"DENIED","message":"{long}"}}]}}"#);
        for (body, code, message) in [
            (
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                Some("UNAUTHORIZED"),
                Some("authentication required"),
            ),
            (
                r#"{"errors":[{"code":"DENIED","message":"line\none\u0007\u001b[31mred\ttab"}]}"#,
                Some("DENIED"),
                Some("line one [31mred tab"),
            ),
            // Not the distribution error JSON: nothing of it is shown.
            ("<html>internal MARKER-1234</html>", None, None),
            (r#"{"detail":"MARKER-1234"}"#, None, None),
            (r#"{"errors":[]}"#, None, None),
            // A code that is not one is dropped (it would reach classification and labels).
            (
                r#"{"errors":[{"code":"NOT A CODE MARKER","message":"m"}]}"#,
                None,
                Some("m"),
            ),
            (r#"{"errors":[{"code":7,"message":{"x":1}}]}"#, None, None),
            ("", None, None),
        ] {
            let (c, m) = distribution_error(body.as_bytes());
            assert_eq!((c.as_deref(), m.as_deref()), (code, message), "{body}");
        }
        let (code, message) = distribution_error(long_body.as_bytes());
        assert_eq!(code.as_deref(), Some("DENIED"));
        let message = message.unwrap();
        assert_eq!(message.chars().count(), MESSAGE_LIMIT + 1, "{message}");
        assert!(message.ends_with('…'));
    }

    #[test]
    fn clean_messages() {
        for (input, expected) in [
            ("plain", "plain"),
            ("  lead and trail  ", "lead and trail"),
            ("a\r\nb", "a b"),
            ("\u{0}\u{7f}x", "x"),
            ("é ü 日本", "é ü 日本"),
        ] {
            assert_eq!(clean_message(input), expected, "{input:?}");
        }
        let cut = clean_message(&"日".repeat(1_000));
        assert_eq!(cut.chars().count(), MESSAGE_LIMIT + 1);
    }
}
