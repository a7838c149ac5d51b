//! Times in query parameters: RFC 3339, within the years 1 to 9999.
//!
//! chrono parses years far beyond what PostgreSQL stores (`timestamptz` ends in
//! 294276 AD and starts in 4713 BC; chrono reaches ±262,143), and arithmetic near
//! either end overflows: a time outside the range is a 400 naming the parameter, not a
//! database error answered as 500.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer};

/// Earliest time the API takes: 0001-01-01T00:00:00Z.
pub fn earliest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc()
}

/// First time after the range: 10000-01-01T00:00:00Z.
pub fn end() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(10_000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc()
}

/// The message for a time outside the range.
pub fn out_of_range(t: impl std::fmt::Display) -> String {
    format!("{t} is outside the supported range: years 0001 to 9999 (UTC)")
}

/// Checks that `t` is in the years 1 to 9999.
pub fn check(t: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if t >= earliest() && t < end() {
        Ok(t)
    } else {
        Err(out_of_range(t.to_rfc3339()))
    }
}

/// `deserialize_with` for an optional RFC 3339 query parameter (with `default`).
pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<DateTime<Utc>>::deserialize(d)?
        .map(check)
        .transpose()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_edges() {
        assert!(check(earliest()).is_ok());
        assert!(check(end() - chrono::TimeDelta::microseconds(1)).is_ok());
        assert!(check(end()).is_err());
        assert!(check(earliest() - chrono::TimeDelta::microseconds(1)).is_err());
        // chrono reads years beyond PostgreSQL's (with a sign), and before year 1.
        for t in [
            "+99999-01-01T00:00:00Z",
            "-4000-01-01T00:00:00Z",
            "0000-12-31T23:00:00Z",
        ] {
            let t: DateTime<Utc> = t.parse().unwrap();
            assert!(check(t).unwrap_err().contains("years 0001 to 9999"), "{t}");
        }
    }
}
