//! Durations as the Gateway API writes them (GEP-2257), parsed once when a manifest is read.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration from a manifest: its value, and its text as written, which is what is stored and
/// shown back (`90m` stays `90m`, not `1h30m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayDuration {
    text: String,
    value: Duration,
}

impl GatewayDuration {
    pub fn get(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for GatewayDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(Self {
            value: duration(text)?,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for GatewayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for GatewayDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

inline_json_schema!(GatewayDuration, {
    "type": "string",
    "pattern": "^([0-9]{1,5}(h|m|s|ms)){1,4}$",
    "description": "A Gateway API duration (GEP-2257): 10s, 250ms, 1h30m.",
});

impl<'de> Deserialize<'de> for GatewayDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a Gateway API duration (GEP-2257): one to four components, each one to five decimal
/// digits followed by `h`, `m`, `s` or `ms` ("1h30m", "500ms"), added up; nothing else.
pub fn duration(value: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "{value:?} is not a duration: write whole h, m, s and ms, as in 1h30m or 500ms (Gateway API GEP-2257)"
        )
    };
    let mut rest = value;
    let mut total = Duration::ZERO;
    let mut components = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(invalid());
        }
        let count: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit_ms, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (3_600_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b's') => (1_000, 1),
                _ => return Err(invalid()),
            }
        };
        rest = &rest[unit_len..];
        // At most 99999h per component and four components: no overflow.
        total += Duration::from_millis(count * unit_ms);
        components += 1;
    }
    if components == 0 || components > 4 {
        return Err(invalid());
    }
    Ok(total)
}

/// A duration as the Gateway API writes it: "1h30m", "500ms", "0s".
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut text = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            text.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    text
}
