//! Header fields Postern reads or removes on inbound mail, found by
//! walking the header section in place (no parse into a second copy).

use postern_core::header_section::{fields, remove_ranges};

/// Header fields only this server may write: one it finds on arrival was
/// written by someone else and is removed.
const OURS_ALONE: &[&[u8]] = &[b"x-postern-verdict"];

/// Skips white space (folding included) and comments (RFC 5322 §3.2.2,
/// nested, with quoted pairs) from `i`.
fn skip_cfws(v: &[u8], mut i: usize) -> usize {
    loop {
        while i < v.len() && v[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= v.len() || v[i] != b'(' {
            return i;
        }
        let mut depth = 0usize;
        while i < v.len() {
            match v[i] {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The authserv-id an Authentication-Results value starts with (RFC 8601
/// §2.2: `[CFWS] authserv-id`, a token or a quoted string).
pub fn authserv_id(value: &[u8]) -> Option<String> {
    let i = skip_cfws(value, 0);
    let v = value.get(i..)?;
    let id: Vec<u8> = if v.first() == Some(&b'"') {
        let mut out = Vec::new();
        let mut j = 1;
        while j < v.len() && v[j] != b'"' {
            if v[j] == b'\\' {
                j += 1;
            }
            if let Some(&b) = v.get(j) {
                out.push(b);
            }
            j += 1;
        }
        out
    } else {
        v.iter()
            .take_while(|&&b| !b.is_ascii_whitespace() && b != b';' && b != b'(')
            .copied()
            .collect()
    };
    (!id.is_empty()).then(|| String::from_utf8_lossy(&id).into_owned())
}

/// Removes, in place, every Authentication-Results field whose
/// authserv-id is `authserv_id` (RFC 8601 §5: a field claiming to be ours
/// that arrives with the message is forged or stale), compared without
/// regard to case, and every field only Postern writes. Fields of other
/// authserv-ids stay. Returns how many were removed.
///
/// The rest of the message is moved down over each removed field with one
/// `copy_within` per gap, so no second copy of the body is ever made.
pub fn strip_own_fields(message: &mut Vec<u8>, authserv_id: &str) -> usize {
    let doomed: Vec<(usize, usize)> = fields(message)
        .into_iter()
        .filter(|(name, start, end)| {
            let value_at = start + name.len();
            if name.eq_ignore_ascii_case(b"authentication-results") {
                let value = message[value_at..*end]
                    .iter()
                    .position(|&b| b == b':')
                    .map_or(&[][..], |c| &message[value_at + c + 1..*end]);
                authserv_id_matches(value, authserv_id)
            } else {
                OURS_ALONE.iter().any(|n| name.eq_ignore_ascii_case(n))
            }
        })
        .map(|(_, s, e)| (s, e))
        .collect();
    remove_ranges(message, &doomed);
    doomed.len()
}

fn authserv_id_matches(value: &[u8], ours: &str) -> bool {
    authserv_id(value).is_some_and(|id| id.eq_ignore_ascii_case(ours))
}

/// Whether an (ARC-)Authentication-Results value records `method=pass`
/// (RFC 8601 §2.2 resinfo; comments and quoted strings skipped, a method
/// version `/1` ignored).
pub fn results_say_pass(value: &[u8], method: &str) -> bool {
    split_top_level(value).iter().any(|part| {
        let part = part.trim_ascii_start();
        let Some(eq) = part.iter().position(|&b| b == b'=') else {
            return false;
        };
        let name = part[..eq].trim_ascii();
        let name = name
            .split(|&b| b == b'/')
            .next()
            .unwrap_or(name)
            .trim_ascii();
        if !name.eq_ignore_ascii_case(method.as_bytes()) {
            return false;
        }
        let after = skip_cfws(part, eq + 1);
        let result: Vec<u8> = part[after..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .copied()
            .collect();
        result.eq_ignore_ascii_case(b"pass")
    })
}

/// The `;`-separated parts of a value, with comments removed and `;`
/// inside quoted strings kept.
fn split_top_level(value: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    let mut quoted = false;
    while i < value.len() {
        let b = value[i];
        if quoted {
            cur.push(b);
            if b == b'\\' {
                if let Some(&n) = value.get(i + 1) {
                    cur.push(n);
                    i += 1;
                }
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'(' {
            cur.push(b' ');
            i = skip_cfws(value, i);
            continue;
        } else if b == b';' {
            parts.push(std::mem::take(&mut cur));
        } else {
            quoted = b == b'"';
            cur.push(b);
        }
        i += 1;
    }
    parts.push(cur);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Authentication-Results: postern.test; dkim=pass\r\n\
Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
Authentication-Results: (forged) POSTERN.TEST 1;\r\n\tspf=pass smtp.mailfrom=x@y.test;\r\n dmarc=pass\r\n\
authentication-results : \"postern.test\"; arc=pass\r\n\
Authentication-Results: other.example; dkim=fail\r\n\
Authentication-Results: postern.test.evil; dkim=pass\r\n\
X-Postern-Verdict: accept\r\n\
Subject: Authentication-Results: postern.test; inside a subject\r\n\
\r\n\
Authentication-Results: postern.test; in the body stays\r\n";

    #[test]
    fn removes_our_authserv_id_only_in_place() {
        let mut m = MSG.to_vec();
        let capacity = m.capacity();
        let ptr = m.as_ptr();
        // Three Authentication-Results of ours and the X-Postern-Verdict.
        assert_eq!(strip_own_fields(&mut m, "postern.test"), 4);
        assert_eq!(
            String::from_utf8(m.clone()).unwrap(),
            "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
Authentication-Results: other.example; dkim=fail\r\n\
Authentication-Results: postern.test.evil; dkim=pass\r\n\
Subject: Authentication-Results: postern.test; inside a subject\r\n\
\r\n\
Authentication-Results: postern.test; in the body stays\r\n"
        );
        // The same buffer, shortened: nothing was copied elsewhere.
        assert_eq!((m.as_ptr(), m.capacity()), (ptr, capacity));
        // Nothing of ours left: a second pass removes nothing.
        assert_eq!(strip_own_fields(&mut m, "postern.test"), 0);
    }

    #[test]
    fn a_message_without_our_fields_is_untouched() {
        let mut m =
            b"From: a@b.test\r\nAuthentication-Results: mx.other; none\r\n\r\nbody".to_vec();
        let before = m.clone();
        assert_eq!(strip_own_fields(&mut m, "postern.test"), 0);
        assert_eq!(m, before);
        // A header section without an ending blank line, and LF-only lines.
        let mut m = b"Authentication-Results: postern.test; none\nSubject: x\n".to_vec();
        assert_eq!(strip_own_fields(&mut m, "postern.test"), 1);
        assert_eq!(m, b"Subject: x\n");
    }

    #[test]
    fn authserv_ids() {
        assert_eq!(
            authserv_id(b" example.com; spf=pass").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            authserv_id(b" (c (nested)) example.com 1; none").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            authserv_id(b" \"quoted.example\"; none").as_deref(),
            Some("quoted.example")
        );
        assert_eq!(authserv_id(b"  ; none"), None);
    }

    #[test]
    fn results_are_read_by_method() {
        let aar = b" i=1; forwarder.test;\r\n dkim=pass header.d=orig.test;\r\n spf=fail (x; y) smtp.mailfrom=a@b;\r\n dmarc = pass (p=reject) header.from=orig.test";
        assert!(results_say_pass(aar, "dmarc"));
        assert!(results_say_pass(aar, "dkim"));
        assert!(!results_say_pass(aar, "spf"));
        assert!(!results_say_pass(aar, "arc"));
        // "dmarc=pass" only inside a comment or a quoted reason is not a result.
        assert!(!results_say_pass(
            b" i=1; f.test; dmarc=fail (dmarc=pass)",
            "dmarc"
        ));
        assert!(!results_say_pass(
            b" i=1; f.test; spf=fail reason=\"x; dmarc=pass\"",
            "dmarc"
        ));
        assert!(results_say_pass(b" i=1; f.test; dmarc/1=pass", "dmarc"));
    }
}
