//! Points in time and durations as the rollout engine and its API see them.
//!
//! The engine never reads a clock: the service passes `now` in. Timestamps are milliseconds since
//! the Unix epoch (stable on disk) and render as RFC 3339 in the API; durations are written the
//! way people say them (`500ms`, `30s`, `5m`, `1h 30m`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The wall clock now.
    pub fn now() -> Timestamp {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// This time plus `duration`, saturating.
    pub fn plus(self, duration: Duration) -> Timestamp {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }

    /// Time from `earlier` to this, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = UNIX_EPOCH + Duration::from_millis(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(time))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339_weak(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}"))
        })?;
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| serde::de::Error::custom("time before 1970"))?
            .as_millis();
        Ok(Timestamp(u64::try_from(millis).unwrap_or(u64::MAX)))
    }
}

/// A duration written for people: `500ms`, `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map(HumanDuration)
            .map_err(|e| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h: {e}"))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    /// Like [`str::parse`], except that a duration too long to represent saturates instead of
    /// failing: it is well-formed, just absurd, and the field's own limit then rejects it with
    /// the field named (422), as it does any other over-long duration.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match humantime::parse_duration(&text) {
            Err(humantime::DurationError::NumberOverflow) => Ok(HumanDuration(Duration::MAX)),
            _ => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl utoipa::PartialSchema for HumanDuration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A duration such as `500ms`, `30s`, `5m` or `1h 30m`."))
            .examples(["30s"])
            .into()
    }
}

impl utoipa::ToSchema for HumanDuration {}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// The pattern a [`HumanDuration`] matches in the MeshRollout CRD's schema: numbers (with an
/// optional fraction) each followed by one of humantime's units, e.g. `500ms`, `1h 30m`, `1.5h`.
/// The API server uses it to refuse `soon` or `5 minutes later` at `kubectl apply`; the parser
/// stays the judge of the rest (limits, overflow).
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+$";

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as `500ms`, `30s`, `5m` or `1h 30m`.",
            "pattern": DURATION_PATTERN,
        })
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h 30m", 5_400_000),
        ] {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.0, Duration::from_millis(millis), "{text}");
            let again: HumanDuration = parsed.to_string().parse().unwrap();
            assert_eq!(again, parsed);
        }
        assert!("soon"
            .parse::<HumanDuration>()
            .unwrap_err()
            .contains("not a duration"));
    }

    #[test]
    fn durations_too_long_to_represent_saturate_when_deserialized() {
        for (json, expected) in [
            ("\"99999999999999999999s\"", Some(Duration::MAX)),
            ("\"600000000000y\"", Some(Duration::MAX)),
            (
                "\"300000000y\"",
                Some(Duration::from_secs(300_000_000 * 31_557_600)),
            ),
            ("\"soon\"", None),
        ] {
            let parsed = serde_json::from_str::<HumanDuration>(json)
                .ok()
                .map(|d| d.0);
            assert_eq!(parsed, expected, "{json}");
        }
    }

    #[test]
    fn timestamps_round_trip_as_rfc3339() {
        let t = Timestamp(1_795_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(
            t.plus(Duration::from_secs(1)).since(t),
            Duration::from_secs(1)
        );
        assert_eq!(t.since(t.plus(Duration::from_secs(1))), Duration::ZERO);
    }
}
