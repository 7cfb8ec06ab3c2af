//! Text that came from a peer, made safe to show or to log. A peer's words
//! (a relay's refusal, a forward target, a path, a name in the audit log)
//! may hold control characters that drive a terminal or forge a log line,
//! or Unicode format characters that reorder or hide text (bidirectional
//! controls, zero-width marks). Everything a peer sends passes through
//! [`Shown`] (or [`shown`]) on its way to a person: those characters are
//! written as escapes, the rest as it is.

use std::{borrow::Cow, fmt};

/// Unicode format characters that change how the text around them shows
/// (bidirectional controls, zero-width marks, the soft hyphen).
pub fn is_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Whether `c` is written as an escape: a control or a format character.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// `text` with every hidden character escaped (`\n`, `\u{1b}`, `\u{202e}`).
pub fn shown(text: &str) -> Cow<'_, str> {
    if text.chars().any(is_hidden) {
        Cow::Owned(Shown(text).to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// Displays a peer's text with its hidden characters escaped, without
/// allocating: for log fields (`info!(target = %Shown(&t))`) and messages.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_hidden(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_marks_are_escaped_and_the_rest_is_kept() {
        assert_eq!(shown("mypc:22"), "mypc:22");
        assert!(matches!(shown("plain café"), Cow::Borrowed(_)));
        assert_eq!(
            shown("a\nINFO forged line\x1b[2J"),
            "a\\nINFO forged line\\u{1b}[2J"
        );
        assert_eq!(shown("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(shown("zero\u{200b}width"), "zero\\u{200b}width");
        assert_eq!(Shown("tab\there").to_string(), "tab\\there");
    }

    #[test]
    fn escaped_text_has_nothing_hidden_left() {
        let nasty: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!shown(&nasty).chars().any(is_hidden));
    }
}
