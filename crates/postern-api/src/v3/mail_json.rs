//! Bounded shapes for the `/v3/mail/send` JSON. A request is at most 30 MB,
//! but serde_json turns small JSON into much larger Rust values (`{}` into
//! a whole personalization, `0,` into a 32-byte `Value`), so a request's
//! parsed form could dwarf its bytes and the memory budget that covers
//! them. Every list and map here has a count limit checked while parsing,
//! free-form values the server does not use are skipped without being
//! built, and the recipients of all personalizations together are counted
//! as they are read (SendGrid: at most 1,000 per request).

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// SendGrid: 1,000 recipients (to + cc + bcc) per request, 1,000
/// personalizations.
pub const MAX_RECIPIENTS: usize = 1000;
/// Header fields in one `headers` object.
pub const MAX_HEADERS: usize = 100;
/// Attachments in one request.
pub const MAX_ATTACHMENTS: usize = 100;
/// Content objects (text/plain, text/html).
pub const MAX_CONTENT: usize = 10;

thread_local! {
    /// Recipients read so far by the parse running on this thread.
    static RECIPIENTS: Cell<usize> = const { Cell::new(0) };
}

/// Parses a request with the recipient count starting at zero (the parse
/// runs on this thread, start to end, so a thread-local counts it).
pub fn parse<T: de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    RECIPIENTS.with(|c| c.set(0));
    serde_json::from_slice(bytes)
}

/// A list of at most `N` items.
pub struct Bounded<T, const N: usize>(pub Vec<T>);

impl<T, const N: usize> Default for Bounded<T, N> {
    fn default() -> Self {
        Bounded(Vec::new())
    }
}

impl<T, const N: usize> std::ops::Deref for Bounded<T, N> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<'a, T, const N: usize> IntoIterator for &'a Bounded<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a, T> IntoIterator for &'a Recipients<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of at most {N} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if out.len() == N {
                        return Err(de::Error::custom(format!("more than {N} items in a list")));
                    }
                    out.push(item);
                }
                Ok(Bounded(out))
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

/// Recipients (to, cc, bcc): counted across the whole request.
pub struct Recipients<T>(pub Vec<T>);

impl<T> Default for Recipients<T> {
    fn default() -> Self {
        Recipients(Vec::new())
    }
}

impl<T> std::ops::Deref for Recipients<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Recipients<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Recipients<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of recipients")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    let total = RECIPIENTS.with(|c| {
                        c.set(c.get() + 1);
                        c.get()
                    });
                    if total > MAX_RECIPIENTS {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_RECIPIENTS} recipients (to, cc and bcc) in the request"
                        )));
                    }
                    out.push(item);
                }
                Ok(Recipients(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A header field's value: text, or something else (refused later with a
/// clear message), which is skipped unbuilt.
pub enum HeaderText {
    Text(String),
    NotText,
}

impl HeaderText {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderText::Text(s) => Some(s),
            HeaderText::NotText => None,
        }
    }
}

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a header value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HeaderText, E> {
                Ok(HeaderText::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<HeaderText, E> {
                Ok(HeaderText::Text(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<HeaderText, E> {
                Ok(HeaderText::NotText)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<HeaderText, E> {
                Ok(HeaderText::NotText)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<HeaderText, E> {
                Ok(HeaderText::NotText)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<HeaderText, E> {
                Ok(HeaderText::NotText)
            }
            fn visit_unit<E: de::Error>(self) -> Result<HeaderText, E> {
                Ok(HeaderText::NotText)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeaderText, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(HeaderText::NotText)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderText, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(HeaderText::NotText)
            }
        }
        d.deserialize_any(V)
    }
}

/// A `headers` object: at most `MAX_HEADERS` fields, in order.
#[derive(Default)]
pub struct Headers(Vec<(String, HeaderText)>);

impl Headers {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &HeaderText)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an object of at most {MAX_HEADERS} header fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, HeaderText>()? {
                    if out.len() == MAX_HEADERS {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_HEADERS} header fields"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether a field was given with any content (an object with entries, or
/// any value but null), its content skipped unbuilt: for features the
/// server refuses (substitutions, dynamic template data).
#[derive(Default)]
pub struct Present(pub bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Present;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Present, E> {
                Ok(Present(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Present, A::Error> {
                let mut any = false;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(Present(any))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Present, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Present(true))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Present, E> {
                Ok(Present(true))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Present, E> {
                Ok(Present(true))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Present, E> {
                Ok(Present(true))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Present, E> {
                Ok(Present(true))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Present, E> {
                Ok(Present(true))
            }
        }
        d.deserialize_any(V)
    }
}

/// `mail_settings`: only sandbox mode is read; everything else is skipped.
#[derive(Default, serde::Deserialize)]
pub struct MailSettings {
    #[serde(default)]
    pub sandbox_mode: Option<Toggle>,
}

#[derive(Default, serde::Deserialize)]
pub struct Toggle {
    #[serde(default)]
    pub enable: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        to: Recipients<String>,
    }

    #[derive(serde::Deserialize)]
    struct R {
        #[serde(default)]
        ps: Bounded<P, 3>,
        #[serde(default)]
        headers: Headers,
        #[serde(default)]
        extra: Present,
    }

    #[test]
    fn limits_apply_while_parsing() {
        let ok: R = parse(
            br#"{"ps":[{"to":["a"]},{"to":["b","c"]}],"headers":{"X":"1","Y":[1,2]},"extra":{}}"#,
        )
        .unwrap();
        assert_eq!(ok.ps.len(), 2);
        assert_eq!(ok.ps.iter().map(|p| p.to.len()).sum::<usize>(), 3);
        assert_eq!(
            ok.headers
                .iter()
                .filter(|(_, v)| v.as_str().is_some())
                .count(),
            1
        );
        assert!(!ok.extra.0);
        assert!(
            parse::<R>(br#"{"ps":[{},{},{},{}]}"#).is_err(),
            "4 > 3 items"
        );
        let many = format!(
            r#"{{"ps":[{{"to":[{}]}}]}}"#,
            vec![r#""x""#; MAX_RECIPIENTS + 1].join(",")
        );
        assert!(
            parse::<R>(many.as_bytes()).is_err(),
            "recipients over the request limit"
        );
        let split = format!(
            r#"{{"ps":[{{"to":[{0}]}},{{"to":[{0}]}},{{"to":[{0}]}}]}}"#,
            vec![r#""x""#; MAX_RECIPIENTS / 3 + 1].join(",")
        );
        assert!(
            parse::<R>(split.as_bytes()).is_err(),
            "counted across personalizations"
        );
        let headers = format!(
            "{{\"headers\":{{{}}}}}",
            (0..=MAX_HEADERS)
                .map(|i| format!("\"h{i}\":\"v\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(parse::<R>(headers.as_bytes()).is_err());
        let present: R = parse(br#"{"extra":{"a":[1,2,3]}}"#).unwrap();
        assert!(present.extra.0);
    }
}
