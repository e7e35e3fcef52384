//! Times as every answer and event carries them: RFC 3339, UTC (`Z`), and
//! always six fractional digits (the database keeps microseconds), so one
//! parser configuration reads them all (Apple's `ISO8601DateFormatter`
//! with fractional seconds, for one, reads no time without them).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// `at` as text: `2026-12-04T10:00:00.000000Z`.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `#[serde(serialize_with = "shared::time::serialize")]`.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*at))
}

/// `#[serde(serialize_with = "shared::time::serialize_option")]`: `null` for `None`.
pub fn serialize_option<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&rfc3339(*at)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_has_six_fractional_digits() {
        for (text, shown) in [
            ("2026-12-04T10:00:00Z", "2026-12-04T10:00:00.000000Z"),
            ("2026-12-04T10:00:00.5Z", "2026-12-04T10:00:00.500000Z"),
            ("2026-12-04T10:00:00.123Z", "2026-12-04T10:00:00.123000Z"),
            (
                "2026-12-04T12:00:00.123456+02:00",
                "2026-12-04T10:00:00.123456Z",
            ),
        ] {
            let at: DateTime<Utc> = text.parse().unwrap();
            assert_eq!(rfc3339(at), shown);
        }
    }
}
