//! Durations in the Go/Kuma text form (`15s`, `1h30m`, `500ms`, `0s`).
//!
//! The text a user wrote is kept as given, so what is applied is what is
//! shown back; the parsed value is available for generation.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration that remembers its original spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: StdDuration,
}

impl Duration {
    /// Parses the Go duration syntax: one or more `<number><unit>` groups, units
    /// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; a bare `0` is accepted. Negative
    /// durations are rejected: no field of Meridian takes one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = parse_go_duration(text).ok_or_else(|| format!("invalid duration {text:?}"))?;
        check_range(text, value)?;
        Ok(Duration {
            text: text.to_string(),
            value,
        })
    }

    pub fn as_std(&self) -> StdDuration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_zero(&self) -> bool {
        self.value.is_zero()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A duration of the mesh's mTLS settings (certificate lifetimes): the Go
/// form of [`Duration`], or Kuma's whole days, weeks and years (`1d`, `2w`,
/// `10y`; a year is 365 days). Keeps its spelling like [`Duration`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongDuration(Duration);

impl LongDuration {
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = parse_days(text)
            .or_else(|| parse_go_duration(text))
            .ok_or_else(|| format!("invalid duration {text:?} (e.g. 24h, 30d, 10y)"))?;
        check_range(text, value)?;
        Ok(LongDuration(Duration {
            text: text.to_string(),
            value,
        }))
    }

    pub fn as_std(&self) -> StdDuration {
        self.0.value
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for LongDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for LongDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LongDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        LongDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `<digits>d`, `<digits>w` or `<digits>y`.
/// The longest duration accepted: what fits in a signed 64-bit count of
/// nanoseconds (Go's `time.Duration`, which Kuma parses with, and the range
/// proxies convert durations into).
pub const MAX: StdDuration = StdDuration::new(9_223_372_036, 854_775_807);

fn check_range(text: &str, value: StdDuration) -> Result<(), String> {
    if value > MAX {
        return Err(format!(
            "duration {text:?} is out of range: at most 2562047h47m16.854775807s"
        ));
    }
    Ok(())
}

fn parse_days(s: &str) -> Option<StdDuration> {
    let unit_days: u64 = match s.as_bytes().last()? {
        b'd' => 1,
        b'w' => 7,
        b'y' => 365,
        _ => return None,
    };
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(StdDuration::from_secs(n.checked_mul(unit_days)?.checked_mul(86_400)?))
}

fn parse_go_duration(s: &str) -> Option<StdDuration> {
    if s == "0" {
        return Some(StdDuration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_nanos: u128 = 0;
    while i < bytes.len() {
        // number: digits with an optional fraction
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &s[start..i];
        let mut frac_part = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let fs = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &s[fs..i];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        // unit
        let us = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() && bytes[i] != b'.' {
            i += 1;
        }
        let unit_nanos: u128 = match &s[us..i] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return None,
        };
        let int_val: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        let mut nanos = int_val.checked_mul(unit_nanos)?;
        if !frac_part.is_empty() {
            let digits = frac_part.len().min(18) as u32;
            let frac: u128 = frac_part[..digits as usize].parse().ok()?;
            nanos = nanos.checked_add(frac * unit_nanos / 10u128.pow(digits))?;
        }
        total_nanos = total_nanos.checked_add(nanos)?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).ok()?;
    Some(StdDuration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        let cases = [
            ("0", 0),
            ("0s", 0),
            ("15s", 15_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("1.5s", 1_500),
            ("2h", 7_200_000),
            ("30m", 1_800_000),
        ];
        for (text, ms) in cases {
            let d = Duration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.as_std().as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_a_proxy_cannot_represent() {
        for text in [
            "99999999999h",
            "18446744073709551616ns",
            "2562048h",
            "9223372036854775808ns",
        ] {
            let e = Duration::parse(text).expect_err(text);
            assert!(e.contains("out of range"), "{text}: {e}");
        }
        assert_eq!(Duration::parse("9223372036854775807ns").map(|d| d.as_std()), Ok(MAX));
        assert_eq!(
            Duration::parse("2562047h").map(|d| d.as_std().as_secs()),
            Ok(2_562_047 * 3600)
        );
        let e = LongDuration::parse("300000y").expect_err("300000y");
        assert!(e.contains("out of range"), "{e}");
        assert!(LongDuration::parse("290y").is_ok());
    }

    #[test]
    fn rejects_bad_forms() {
        for text in [
            "",
            "15 seconds",
            "15",
            "s",
            "-1s",
            "1d",
            "1.s.",
            "ms5",
            "99999999999999999999h",
        ] {
            assert!(Duration::parse(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn long_durations_take_kuma_days_weeks_and_years() {
        for (text, secs) in [
            ("1d", 86_400),
            ("2w", 1_209_600),
            ("10y", 315_360_000),
            ("24h", 86_400),
            ("90m", 5_400),
        ] {
            let d = LongDuration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.as_std().as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), text);
        }
        for text in ["d", "1.5d", "-1d", "1dd", "99999999999999999999y", "", "1 d"] {
            assert!(LongDuration::parse(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn error_names_the_text() {
        let err = Duration::parse("15 seconds").unwrap_err();
        assert_eq!(err, "invalid duration \"15 seconds\"");
    }
}
