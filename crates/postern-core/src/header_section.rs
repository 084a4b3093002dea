//! The header section of a message as it arrived, walked in place: where
//! each field starts and ends, and removing fields without a second copy
//! of the message. Inbound checks remove header fields only Postern may
//! write (a sender could otherwise arrive pre-marked as verified or
//! clean); parsers such as `mail-parser` give decoded values, not the
//! byte ranges that removal needs.

/// Each field of the header section: (name, start, end), `start..end`
/// covering the whole field with its folded lines and final line break.
/// The section ends at the first empty line (RFC 5322 §2.1).
pub fn fields(message: &[u8]) -> Vec<(&[u8], usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            break;
        }
        let start = pos;
        // A field runs to the end of its line, and on over each line that
        // begins with white space (RFC 5322 §2.2.3 folding).
        loop {
            pos = match message[pos..].iter().position(|&b| b == b'\n') {
                Some(lf) => pos + lf + 1,
                None => message.len(),
            };
            if pos >= message.len() || !matches!(message[pos], b' ' | b'\t') {
                break;
            }
        }
        let field = &message[start..pos];
        // RFC 5322 §4.5 (obsolete syntax) allows white space before ':'.
        let name = match field.iter().position(|&b| b == b':') {
            Some(colon) => field[..colon].trim_ascii_end(),
            None => &[][..],
        };
        out.push((name, start, pos));
    }
    out
}

/// Removes the sorted, disjoint `ranges` from `buf` in place.
pub fn remove_ranges(buf: &mut Vec<u8>, ranges: &[(usize, usize)]) {
    let Some(&(first, _)) = ranges.first() else {
        return;
    };
    let mut write = first;
    for (i, &(_, end)) in ranges.iter().enumerate() {
        let next = ranges.get(i + 1).map_or(buf.len(), |r| r.0);
        buf.copy_within(end..next, write);
        write += next - end;
    }
    buf.truncate(write);
}

/// Removes, in place, every field of the header section whose name is one
/// of `names` (compared without regard to case). Returns how many were
/// removed.
pub fn remove_named(message: &mut Vec<u8>, names: &[&str]) -> usize {
    if names.is_empty() {
        return 0;
    }
    let doomed: Vec<(usize, usize)> = fields(message)
        .into_iter()
        .filter(|(name, _, _)| {
            names
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        })
        .map(|(_, s, e)| (s, e))
        .collect();
    remove_ranges(message, &doomed);
    doomed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_fields_go_with_their_folded_lines_and_the_body_stays() {
        let mut m = b"X-Spam-Flag: NO\r\nSubject: hi\r\nx-spam-status: No,\r\n\tscore=-9\r\nTo: a@b\r\n\r\nX-Spam-Flag: body line\r\n".to_vec();
        assert_eq!(remove_named(&mut m, &["X-Spam-Flag", "X-Spam-Status"]), 2);
        assert_eq!(
            m,
            b"Subject: hi\r\nTo: a@b\r\n\r\nX-Spam-Flag: body line\r\n"
        );
        assert_eq!(remove_named(&mut m, &["X-Spam-Flag"]), 0);
    }

    #[test]
    fn a_message_without_a_body_or_line_ends_is_walked_to_its_end() {
        let mut m = b"X-A: 1\nX-B: 2".to_vec();
        assert_eq!(fields(&m).len(), 2);
        assert_eq!(remove_named(&mut m, &["x-b"]), 1);
        assert_eq!(m, b"X-A: 1\n");
    }
}
