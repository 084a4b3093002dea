//! The hosts of the URLs in a message's text: its text/plain and
//! text/html parts as mail-parser decoded them (transfer encoding and
//! charset undone), nested messages included.
//!
//! In plain text, URLs with a scheme and bare `www.` hosts (which mail
//! clients turn into links) count; other bare names do not: `invoice.pdf`
//! or `e.g.` would be looked up as domains. In HTML, the values of the
//! attributes that load or link something (`href`, `src`, `action`) with
//! their character references decoded, and the URLs in the text between
//! the tags (after the same decoding, so `http&#58;//` is no hiding
//! place).

use std::collections::HashSet;
use std::net::IpAddr;

use mail_parser::{Message, PartType};

/// A URL's host as it is looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UrlHost {
    /// Lower-case ASCII (IDNA applied), no trailing dot.
    Domain(String),
    Address(IpAddr),
}

/// Nested messages are followed this deep (a message in a message in …),
/// so a crafted one cannot make the walk deep without end; mail-parser
/// bounds its own nesting too.
const MAX_NESTING: usize = 8;

/// Every URL host in the message's text and HTML parts, in the order first
/// found, each once.
pub fn message_hosts(message: &Message<'_>) -> Vec<UrlHost> {
    let mut hosts = Hosts::default();
    walk(message, 0, &mut hosts);
    hosts.found
}

fn walk(message: &Message<'_>, depth: usize, hosts: &mut Hosts) {
    for part in &message.parts {
        if hosts.full() {
            return;
        }
        match &part.body {
            PartType::Text(text) => text_hosts(text, hosts),
            PartType::Html(html) => html_hosts(html, hosts),
            PartType::Message(inner) if depth < MAX_NESTING => walk(inner, depth + 1, hosts),
            _ => {}
        }
    }
}

/// Hosts found so far, in order, without repeats (a set beside the list:
/// a message may name a great many, and a scan of the list for each
/// would make that quadratic).
#[derive(Default)]
pub struct Hosts {
    pub found: Vec<UrlHost>,
    seen: HashSet<UrlHost>,
}

/// Distinct hosts kept per message: far more than the lookups will use
/// (`uribl_max_domains`), and a bound on what a message naming millions
/// costs in memory.
pub const MAX_HOSTS: usize = 1000;

impl Hosts {
    fn add(&mut self, host: UrlHost) {
        if self.found.len() < MAX_HOSTS && self.seen.insert(host.clone()) {
            self.found.push(host);
        }
    }

    /// No more hosts are taken: the parts' scans can stop.
    pub fn full(&self) -> bool {
        self.found.len() >= MAX_HOSTS
    }
}

/// The URLs of plain text.
pub fn text_hosts(text: &str, hosts: &mut Hosts) {
    let mut finder = linkify::LinkFinder::new();
    finder.kinds(&[linkify::LinkKind::Url]);
    finder.url_must_have_scheme(false);
    for link in finder.links(text) {
        if hosts.full() {
            return;
        }
        if let Some(host) = url_host(link.as_str()) {
            hosts.add(host);
        }
    }
}

/// The URLs of an HTML part: in its linking attributes and in its text.
pub fn html_hosts(html: &str, hosts: &mut Hosts) {
    for value in link_attributes(html) {
        if let Some(host) = url_host(&decode_references(value)) {
            hosts.add(host);
        }
    }
    text_hosts(&decode_references(html), hosts);
}

/// The host of one URL as found: with a scheme, or a bare `www.` host;
/// `//host/…` (scheme-relative, as in HTML) too. None for anything else
/// (a relative link, `mailto:`, a name that is no host).
pub fn url_host(found: &str) -> Option<UrlHost> {
    let found = found.trim();
    let parsed = if found.starts_with("//") {
        url::Url::parse(&format!("http:{found}"))
    } else if found
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("www."))
    {
        url::Url::parse(&format!("http://{found}"))
    } else {
        url::Url::parse(found)
    }
    .ok()?;
    match parsed.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.');
            // A single label (`localhost`, an intranet name) is nobody's
            // registrable domain.
            if d.is_empty() || !d.contains('.') {
                return None;
            }
            Some(UrlHost::Domain(d.to_ascii_lowercase()))
        }
        url::Host::Ipv4(a) => Some(UrlHost::Address(IpAddr::V4(a))),
        url::Host::Ipv6(a) => Some(UrlHost::Address(IpAddr::V6(a))),
    }
}

/// The attributes whose value is a URL a reader's client follows or loads.
const LINK_ATTRIBUTES: [&str; 3] = ["href", "src", "action"];

/// The raw values of `href=`, `src=` and `action=` attributes: quoted
/// with `"` or `'`, or unquoted up to white space or `>` (HTML's three
/// attribute forms). A lenient scan, not a parser: spam HTML is often
/// broken, and a value found in a comment costs a lookup at most.
fn link_attributes(html: &str) -> Vec<&str> {
    let bytes = html.as_bytes();
    let mut values = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let Some(name) = LINK_ATTRIBUTES.iter().find(|n| {
            bytes[i..]
                .get(..n.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(n.as_bytes()))
        }) else {
            i += 1;
            continue;
        };
        // The name must stand alone: after a tag name or another
        // attribute (white space, a quote, a slash), not inside a word
        // such as `data-href`.
        let standalone = i > 0
            && matches!(
                bytes[i - 1],
                b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'' | b'/'
            );
        let mut j = i + name.len();
        if !standalone {
            i = j;
            continue;
        }
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if bytes.get(j) != Some(&b'=') {
            i = j;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let (start, end) = match bytes.get(j) {
            Some(&q @ (b'"' | b'\'')) => {
                let start = j + 1;
                let end = bytes[start..]
                    .iter()
                    .position(|&b| b == q)
                    .map_or(bytes.len(), |p| start + p);
                (start, end)
            }
            Some(_) => {
                let end = bytes[j..]
                    .iter()
                    .position(|&b| b.is_ascii_whitespace() || b == b'>')
                    .map_or(bytes.len(), |p| j + p);
                (j, end)
            }
            None => break,
        };
        // Both ends sit next to ASCII bytes, so on character boundaries.
        if let Some(v) = html.get(start..end).filter(|v| !v.is_empty()) {
            values.push(v);
        }
        i = end.max(i + 1);
    }
    values
}

/// HTML character references decoded: numeric ones (`&#58;`, `&#x3a;`)
/// and the named ones that matter in a URL. Others are left as written.
fn decode_references(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match reference(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The character a reference at the start of `s` stands for, and how long
/// the reference is (its `;` is optional, as browsers read it).
fn reference(s: &str) -> Option<(char, usize)> {
    const NAMED: [(&str, char); 10] = [
        ("amp", '&'),
        ("colon", ':'),
        ("sol", '/'),
        ("period", '.'),
        ("quest", '?'),
        ("equals", '='),
        ("quot", '"'),
        ("apos", '\''),
        ("lt", '<'),
        ("gt", '>'),
    ];
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 3),
            None => (num, 10, 2),
        };
        let n = digits
            .find(|c: char| !c.is_digit(radix))
            .unwrap_or(digits.len());
        // More than 7 digits is past any character (and past u32).
        if n == 0 || n > 7 {
            return None;
        }
        let c = char::from_u32(u32::from_str_radix(&digits[..n], radix).ok()?)?;
        let semi = usize::from(digits[n..].starts_with(';'));
        return Some((c, skip + n + semi));
    }
    NAMED.iter().find_map(|(name, c)| {
        let after = body.get(..name.len())?;
        if !after.eq_ignore_ascii_case(name) {
            return None;
        }
        let semi = usize::from(body[name.len()..].starts_with(';'));
        Some((*c, 1 + name.len() + semi))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_decode_as_browsers_read_them() {
        assert_eq!(decode_references("a&amp;b"), "a&b");
        assert_eq!(decode_references("http&#58;//x&#x2e;test"), "http://x.test");
        assert_eq!(decode_references("http&colon&sol;&sol;"), "http://");
        assert_eq!(decode_references("&unknown; & &#;"), "&unknown; & &#;");
        assert_eq!(decode_references("&#99999999;"), "&#99999999;");
        assert_eq!(decode_references("&#xD800;"), "&#xD800;");
    }

    #[test]
    fn attribute_values_in_three_forms() {
        let html = r#"<a HREF = "http://a.test/">x</a><img src='//b.test/i.png'><form action=http://c.test/f>
            <a data-href="http://no.test/">n</a><a href=>"#;
        assert_eq!(
            link_attributes(html),
            vec!["http://a.test/", "//b.test/i.png", "http://c.test/f"]
        );
    }
}
