//! A registry key as it may be shown: the one home of "a key as displayed", for JSON lines,
//! Events, the metrics `credential` label, the local API, findings and every command's output.
//!
//! A key is a user's text, and users paste URLs with credentials in them
//! (`https://user:TOKEN@reg.io`), or with a query (`reg.io?token=…`). The kubelet ignores both for
//! matching (Go's `url.Parse` puts them outside the host and path), so they are dropped from the
//! shown form, and [`ShownKey::stripped`] says that something was, without echoing it. A key the
//! kubelet cannot parse is never echoed: only its length is shown (it could be anything — a
//! password pasted in the wrong field).

use super::keyring::normalize_key;

/// What may be shown of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownKey {
    /// The key as written, minus userinfo, query and fragment; or `<unparseable key, N bytes>`.
    pub text: String,
    /// Userinfo (`user:password@`), a query or a fragment was removed.
    pub stripped: bool,
    /// The kubelet cannot parse the key (it ignores it): `text` says so and shows nothing of it.
    pub unparseable: bool,
}

/// The displayed form of `key` (see the module documentation).
pub fn shown_key(key: &str) -> ShownKey {
    if normalize_key(key).is_none() {
        return ShownKey {
            text: format!("<unparseable key, {} bytes>", key.len()),
            stripped: false,
            unparseable: true,
        };
    }
    let (scheme, rest) = ["https://", "http://"]
        .iter()
        .find_map(|s| key.strip_prefix(s).map(|rest| (*s, rest)))
        .unwrap_or(("", key));
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (rest, tail) = rest.split_at(end);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, userinfo) = match authority.rsplit_once('@') {
        Some((_, host)) => (host, true),
        None => (authority, false),
    };
    ShownKey {
        text: format!("{scheme}{host}{path}"),
        stripped: userinfo || !tail.is_empty(),
        unparseable: false,
    }
}

/// [`shown_key`]'s text.
pub fn shown(key: &str) -> String {
    shown_key(key).text
}

/// The warning for a key whose shown form dropped something: names where the key is, never what
/// was dropped.
pub fn stripped_warning(shown: &ShownKey, origin: &str) -> String {
    format!(
        "registry key `{}` in {origin} carries userinfo (user:password@), a query or a fragment: it is not shown, and the kubelet ignores it when matching; remove it from the key",
        shown.text
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_key_table() {
        for (key, text, stripped, unparseable) in [
            ("reg.io", "reg.io", false, false),
            (
                "https://reg.io:5000/v1/",
                "https://reg.io:5000/v1/",
                false,
                false,
            ),
            ("https://user:TOKEN@reg.io", "https://reg.io", true, false),
            ("user:TOKEN@reg.io/team", "reg.io/team", true, false),
            (
                "http://TOKEN@reg.io:5000/p",
                "http://reg.io:5000/p",
                true,
                false,
            ),
            // The last `@` ends the userinfo, as in Go's parser.
            ("https://a@b:c@reg.io", "https://reg.io", true, false),
            // An `@` in the path is not userinfo.
            ("reg.io/team@x", "reg.io/team@x", false, false),
            ("reg.io?token=TOKEN", "reg.io", true, false),
            ("reg.io/p#TOKEN", "reg.io/p", true, false),
            // Unparseable: a bad port, control characters, a space, a bad escape.
            (
                "https://user:TOKEN@reg.io:xx",
                "<unparseable key, 28 bytes>",
                false,
                true,
            ),
            (
                "reg.io\u{1b}]0;pwned\u{7}",
                "<unparseable key, 16 bytes>",
                false,
                true,
            ),
            (
                "TOKEN with space",
                "<unparseable key, 16 bytes>",
                false,
                true,
            ),
            ("reg.io/%zz", "<unparseable key, 10 bytes>", false, true),
        ] {
            assert_eq!(
                shown_key(key),
                ShownKey {
                    text: text.into(),
                    stripped,
                    unparseable
                },
                "{key:?}"
            );
            assert!(!shown(key).contains("TOKEN"), "{key}");
        }
        let warning = stripped_warning(&shown_key("https://u:TOKEN@reg.io"), "secret ns/s");
        assert!(
            warning.contains("`https://reg.io` in secret ns/s"),
            "{warning}"
        );
        assert!(!warning.contains("TOKEN"), "{warning}");
    }
}
