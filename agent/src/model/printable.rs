//! The one home of "text safe to print": what a registry, a plugin, a runtime or a file sends is
//! printed by `check`, `status`, `diagnose`, `audit` and `auth`, and reported in JSON lines, Event
//! notes and condition messages. A control character in it could move the cursor, retitle the
//! terminal (`ESC ] 0 ; … BEL`), hide text with a carriage return, or reorder it (bidirectional
//! overrides): each is shown as a visible escape (`\u{1b}`) instead.

use std::borrow::Cow;
use std::fmt::Write as _;

/// What the output format allows of whitespace controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// Tab and newline kept (messages, multi-line text); every other control escaped.
    Keep,
    /// Every control escaped, tab and newline too (a table cell, a one-line field).
    Escape,
}

/// `text` with every C0 control (but tab and newline under [`Lines::Keep`]), DEL, C1 control and
/// bidirectional formatting character written as `\u{XX}`. Borrowed when nothing needed escaping.
pub fn printable(text: &str, lines: Lines) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        let kept = lines == Lines::Keep && matches!(c, '\t' | '\n');
        (c.is_control() && !kept) || is_bidi_control(c)
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`printable`] with [`Lines::Keep`], as an owned string.
pub fn printable_text(text: &str) -> String {
    printable(text, Lines::Keep).into_owned()
}

/// [`printable`] with [`Lines::Escape`], as an owned string.
pub fn printable_line(text: &str) -> String {
    printable(text, Lines::Escape).into_owned()
}

/// Unicode's bidirectional embedding, override and isolate controls, and the marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_table() {
        for (input, keep, escape) in [
            (
                "plain text, ünïcode ✓",
                "plain text, ünïcode ✓",
                "plain text, ünïcode ✓",
            ),
            (
                "\u{1b}[31mred\u{1b}[0m",
                "\\u{1b}[31mred\\u{1b}[0m",
                "\\u{1b}[31mred\\u{1b}[0m",
            ),
            (
                "\u{1b}]0;pwned\u{7}title",
                "\\u{1b}]0;pwned\\u{7}title",
                "\\u{1b}]0;pwned\\u{7}title",
            ),
            ("ok\rFAKE", "ok\\u{d}FAKE", "ok\\u{d}FAKE"),
            ("bell\u{7}", "bell\\u{7}", "bell\\u{7}"),
            ("nul\u{0}byte", "nul\\u{0}byte", "nul\\u{0}byte"),
            ("del\u{7f}", "del\\u{7f}", "del\\u{7f}"),
            // C1 controls: CSI (U+009B) is an escape sequence on its own in some terminals.
            (
                "c1\u{9b}31m\u{85}",
                "c1\\u{9b}31m\\u{85}",
                "c1\\u{9b}31m\\u{85}",
            ),
            (
                "bidi \u{202e}txt.exe",
                "bidi \\u{202e}txt.exe",
                "bidi \\u{202e}txt.exe",
            ),
            (
                "two\nlines\tand a tab",
                "two\nlines\tand a tab",
                "two\\u{a}lines\\u{9}and a tab",
            ),
            ("", "", ""),
        ] {
            assert_eq!(printable(input, Lines::Keep), keep, "{input:?}");
            assert_eq!(printable(input, Lines::Escape), escape, "{input:?}");
            for out in [printable_text(input), printable_line(input)] {
                assert!(
                    !out.chars()
                        .any(|c| c.is_control() && c != '\n' && c != '\t'),
                    "{out:?}"
                );
            }
            assert!(!printable_line(input).chars().any(char::is_control));
        }
        assert!(matches!(
            printable("clean", Lines::Escape),
            Cow::Borrowed(_)
        ));
    }
}
