//! Line-ending discipline for message bodies.
//!
//! smtp-proto's `DataReceiver` ends DATA only at a strict CRLF.CRLF, but lets
//! bare LF and bare CR through into the body. A next hop that treats a bare
//! LF as a line end could then see `\n.\r\n` as the end of the message and
//! the rest as new commands (SMTP smuggling, CVE-2023-51764 class). Postern
//! therefore scans the raw bytes itself: by default a bare CR or LF refuses
//! the message; in `normalize` mode they are rewritten to CRLF in the stored
//! body, and are still never taken as line ends when looking for the end of
//! DATA.

/// Scans raw bytes across reads for CR not followed by LF and LF not
/// preceded by CR.
#[derive(Debug, Default, Clone)]
pub struct BareLineEndingScanner {
    pending_cr: bool,
    found: bool,
}

impl BareLineEndingScanner {
    pub fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' if !self.pending_cr => self.found = true,
                b'\r' if self.pending_cr => self.found = true,
                _ if self.pending_cr && b != b'\n' => self.found = true,
                _ => {}
            }
            self.pending_cr = b == b'\r';
        }
    }

    /// True once any bare CR or LF has been seen. A CR that is the very last
    /// byte so far is not yet counted: its LF may arrive in the next read.
    pub fn found(&self) -> bool {
        self.found
    }

    /// For BDAT, where the message may legitimately end in the middle of a
    /// chunk sequence: a trailing CR at the end of the last chunk is bare.
    pub fn finish(&mut self) -> bool {
        if self.pending_cr {
            self.found = true;
            self.pending_cr = false;
        }
        self.found
    }
}

/// Rewrites every bare CR and bare LF to CRLF.
pub fn normalize_line_endings(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_bare(input: &[u8]) -> bool {
        let mut s = BareLineEndingScanner::default();
        // Split at every position to prove chunk boundaries do not matter.
        for split in 0..=input.len() {
            let mut t = BareLineEndingScanner::default();
            t.scan(&input[..split]);
            t.scan(&input[split..]);
            s.scan(&[]);
            assert_eq!(t.clone().finish(), {
                let mut whole = BareLineEndingScanner::default();
                whole.scan(input);
                whole.finish()
            });
        }
        s.scan(input);
        s.finish()
    }

    #[test]
    fn detects_every_smuggling_shape() {
        for bad in [
            &b"a\n.\r\n"[..],
            b"a\n.\n",
            b"a\r\n.\n",
            b"a\r.\r\n",
            b"a\r\n.\r",
            b"line\rmore\r\n",
            b"\n",
        ] {
            assert!(has_bare(bad), "{bad:?}");
        }
        for good in [&b"a\r\n.\r\n"[..], b"", b"plain", b"x\r\ny\r\n"] {
            assert!(!has_bare(good), "{good:?}");
        }
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize_line_endings(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(normalize_line_endings(b"\r\r\n\n"), b"\r\n\r\n\r\n");
    }
}
