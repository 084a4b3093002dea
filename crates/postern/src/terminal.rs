//! What the CLI prints for scripts (`--json`): JSON whose strings carry no
//! character a terminal acts on. serde_json escapes C0 controls already;
//! DEL, C1 controls (U+009B is a one-character CSI) and bidirectional
//! overrides it leaves raw, so they are written here as JSON `\u` escapes
//! (four hex digits each). The
//! result is the same JSON value.

use std::fmt::Write;

/// One JSON document, safe to print.
pub fn json(v: &serde_json::Value) -> String {
    escape(&v.to_string())
}

/// The same, indented.
pub fn json_pretty(v: &serde_json::Value) -> String {
    escape(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Outside strings JSON is ASCII structure without controls, so
        // any such character is inside a string, where \u is allowed.
        if c == '\u{7f}'
            || ('\u{80}'..='\u{9f}').contains(&c)
            || postern_core::printable::has_control(c.encode_utf8(&mut [0; 4]))
                && !matches!(c, '\n' | ' ')
        {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_become_escapes_of_the_same_value() {
        let v = serde_json::json!({"actor": "a\u{9b}31m\u{202e}b\x1b\x7f", "n": 1});
        let text = json(&v);
        assert!(
            !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        let pretty = json_pretty(&v);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
            v
        );
    }
}
