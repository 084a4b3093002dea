//! Text from peers (SMTP user names, HELO names, remote replies, API input)
//! shown to an operator: control characters are escaped at output, so a
//! value can neither forge a line (CR, LF) nor drive the terminal (ESC
//! sequences, C1 controls such as CSI U+009B) nor reorder what is shown
//! (the bidirectional overrides behind "Trojan Source", CVE-2021-42574).

use std::fmt;

/// Displays a string with every control character escaped (`\n`, `\r`,
/// `\t`, `\x1b`, `\u{9b}`, `\u{202e}`, ...). Backslashes are doubled so an
/// escaped form cannot be confused with an original one.
pub struct Printable<'a>(pub &'a str);

/// Bidirectional formatting characters (Unicode Bidi_Control), and the
/// line and paragraph separators (U+2028, U+2029) that some viewers break
/// lines at.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut start = 0;
        for (i, c) in self.0.char_indices() {
            let escaped: Option<String> = match c {
                '\\' => Some("\\\\".into()),
                '\n' => Some("\\n".into()),
                '\r' => Some("\\r".into()),
                '\t' => Some("\\t".into()),
                c if (c as u32) < 0x80 && c.is_control() => Some(format!("\\x{:02x}", c as u32)),
                c if c.is_control() || is_bidi_control(c) => Some(format!("\\u{{{:x}}}", c as u32)),
                _ => None,
            };
            if let Some(e) = escaped {
                f.write_str(&self.0[start..i])?;
                f.write_str(&e)?;
                start = i + c.len_utf8();
            }
        }
        f.write_str(&self.0[start..])
    }
}

/// The printable form as a `String` (for `format!` chains and tables).
pub fn printable(s: &str) -> String {
    Printable(s).to_string()
}

/// Whether `s` holds a control or bidirectional formatting character:
/// input that names things (accounts, keys, user names) refuses them.
pub fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() || is_bidi_control(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("plain ünïcödé"), "plain ünïcödé");
        assert_eq!(
            printable("evil\r\n2026-01-01 auth.success admin"),
            "evil\\r\\n2026-01-01 auth.success admin"
        );
        assert_eq!(printable("\x1b[2J\x1b]0;x\x07"), "\\x1b[2J\\x1b]0;x\\x07");
        assert_eq!(printable("a\u{9b}31m"), "a\\u{9b}31m");
        assert_eq!(printable("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(printable("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(printable("\x7f\0"), "\\x7f\\x00");
        assert_eq!(printable("back\\slash"), "back\\\\slash");
        assert!(has_control("a\u{2066}b") && has_control("a\nb") && !has_control("ok é"));
    }
}
