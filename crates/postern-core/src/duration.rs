//! Durations in the config file, written as `30s`, `5m`, `4h`, `5d` or `250ms`.
//! A few lines of serde instead of an unmaintained helper crate
//! (humantime-serde).

use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serializer};

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => {
            return Err(format!(
                "{s:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

pub fn format(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(de::Error::custom)
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5d"), Ok(Duration::from_secs(432_000)));
        assert!(parse("5").is_err());
        assert!(parse("m").is_err());
        assert!(parse("5w").is_err());
        assert_eq!(format(Duration::from_secs(14_400)), "4h");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    }
}
