//! Last line of defence for text that crosses the process boundary: removes any occurrence of a
//! known secret from a message (a runtime or registry could echo one back in an error).

use secrecy::{ExposeSecret, SecretString};

/// Replaces every occurrence of each secret (of 4 characters or more) with `[REDACTED]`.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a SecretString>) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        let s = secret.expose_secret();
        if s.len() >= 4 && out.contains(s) {
            out = out.replace(s, "[REDACTED]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_table() {
        let secrets = [SecretString::from("hunter22"), SecretString::from("abc")];
        for (input, expected) in [
            ("auth failed for hunter22", "auth failed for [REDACTED]"),
            ("hunter22hunter22", "[REDACTED][REDACTED]"),
            (
                "short abc stays (too short to scrub safely)",
                "short abc stays (too short to scrub safely)",
            ),
            ("clean", "clean"),
        ] {
            assert_eq!(scrub(input, &secrets), expected);
        }
    }
}
