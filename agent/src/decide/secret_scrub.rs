//! Last line of defence for text that crosses the process boundary: removes any occurrence of a
//! known secret from a message (a runtime, registry or plugin could echo one back in an error).
//!
//! Each secret is removed as written and in the base64 forms it travels in: an `Authorization:
//! Basic` header or a Docker config's `auth` field is `base64(user:password)`, so the password's
//! encoding depends on where it starts in that text (its offset modulo 3), not on the username.
//! For each of the three offsets, in the standard and the URL-safe alphabets, the characters that
//! encode only the secret's own bits are removed: whatever the username, nothing of the password
//! survives but at most one character at each end of its encoding (two bits of information each).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not scrubbed as written: replacing every `abc` would mangle
/// messages, and tell a reader which three letters the password is.
const MIN_SECRET_CHARS: usize = 4;

/// An encoded form shorter than this is not scrubbed (it would match ordinary words).
const MIN_ENCODED_CHARS: usize = 8;

/// Replaces every occurrence of each secret (of 4 characters or more) and of its base64 forms
/// (see the module documentation) with `[REDACTED]`, then escapes control characters
/// ([`crate::model::printable::printable_text`]): what is scrubbed is about to be reported.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a SecretString>) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        let s = secret.expose_secret();
        if s.len() < MIN_SECRET_CHARS {
            continue;
        }
        if out.contains(s) {
            out = out.replace(s, REDACTED);
        }
        for form in encoded_forms(s.as_bytes()) {
            let f = form.expose_secret();
            if out.contains(f) {
                out = out.replace(f, REDACTED);
            }
        }
    }
    // Whatever is scrubbed is about to be reported: no control character either.
    crate::model::printable::printable_text(&out)
}

/// The base64 characters that encode only `secret`'s bits, for each offset of the secret in the
/// encoded text and each alphabet; longest first, so that a shorter form never splits a longer one.
fn encoded_forms(secret: &[u8]) -> Vec<SecretString> {
    let mut forms = Vec::new();
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            let mut bytes = vec![0u8; offset];
            bytes.extend_from_slice(secret);
            let encoded = SecretString::from(engine.encode(&bytes));
            // Character j covers bits [6j, 6j + 6): keep those inside the secret's bits.
            let first = (8 * offset).div_ceil(6);
            let end = (8 * (offset + secret.len())) / 6;
            if let Some(core) = encoded.expose_secret().get(first..end)
                && core.len() >= MIN_ENCODED_CHARS
            {
                forms.push(SecretString::from(core.to_string()));
            }
            bytes.fill(0);
        }
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.expose_secret().len()));
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

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

    /// The password in every base64 form it travels in, whatever the username's length: an
    /// `Authorization: Basic` header, a Docker config `auth` field (padded or not), the URL-safe
    /// alphabet, the password alone.
    #[test]
    fn base64_forms_are_scrubbed() {
        let password = "pg-Secret-Passw0rd-7f3a9c";
        let secrets = [SecretString::from(password)];
        for user in ["", "u", "us", "pullgate", "team-robot$1", "ünïcode"] {
            let plain = format!("{user}:{password}");
            for (what, encoded) in [
                ("basic", STANDARD.encode(&plain)),
                ("unpadded", STANDARD_NO_PAD.encode(&plain)),
                ("url-safe", URL_SAFE.encode(&plain)),
                ("password alone", STANDARD.encode(password)),
            ] {
                let message = format!("registry said: 401 for Authorization: Basic {encoded}");
                let scrubbed = scrub(&message, &secrets);
                assert!(scrubbed.contains(REDACTED), "{user:?} {what}: {scrubbed}");
                assert!(!scrubbed.contains(&encoded), "{user:?} {what}: {scrubbed}");
                // At most one character of the password's encoding is left at each end.
                let kept = scrubbed
                    .rsplit_once(REDACTED)
                    .map_or(0, |(_, after)| after.trim_end_matches('=').len());
                assert!(kept <= 1, "{user:?} {what}: {scrubbed}");
            }
        }
    }

    /// Tokens (a bearer token, an identity token, a plugin's password) as written and encoded.
    #[test]
    fn tokens_are_scrubbed_as_written_and_encoded() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb2JvdCJ9.c2lnbmF0dXJl";
        let secrets = [SecretString::from(token)];
        for message in [
            format!("Authorization: Bearer {token}"),
            format!("{{\"token\":\"{token}\",\"access_token\":\"{token}\"}}"),
            format!("auth {}", STANDARD.encode(format!("<token>:{token}"))),
        ] {
            let scrubbed = scrub(&message, &secrets);
            assert!(!scrubbed.contains(token), "{scrubbed}");
            assert!(scrubbed.contains(REDACTED), "{scrubbed}");
        }
    }

    /// Short secrets are scrubbed as written (4+ characters) but not in encodings too short to be
    /// told from ordinary text.
    #[test]
    fn short_secrets_keep_messages_readable() {
        let secrets = [SecretString::from("pass")];
        assert_eq!(scrub("bad pass", &secrets), "bad [REDACTED]");
        assert_eq!(
            scrub("unauthorized: authentication required", &secrets),
            "unauthorized: authentication required"
        );
        assert!(encoded_forms(b"pass").is_empty());
    }
}
