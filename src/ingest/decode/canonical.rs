//! The canonical fleetwatch fix: one JSON object, schema in `schema/fix.schema.json`.
//!
//! `{"vehicle":"61C-330.12","ts":"2026-11-24T08:00:05Z","lat":10.9,"lon":106.75,
//!   "speed_kmh":42.5,"heading_deg":91,"driver_id":"079123456789","ignition":true,
//!   "satellites":9,"hdop":0.9,"odometer_m":123456.7}` — `ts` is RFC 3339 or Unix
//! milliseconds; coordinates are WGS84 degrees, lat before lon.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{DecodeError, Format};
use crate::domain::FixCandidate;

/// The canonical JSON format.
pub struct Canonical;

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    vehicle: Option<std::borrow::Cow<'a, str>>,
    #[serde(deserialize_with = "de_ts")]
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    #[serde(default)]
    heading_deg: Option<f64>,
    #[serde(borrow, default)]
    driver_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    ignition: Option<bool>,
    #[serde(default)]
    satellites: Option<i64>,
    #[serde(default)]
    hdop: Option<f64>,
    #[serde(default)]
    odometer_m: Option<f64>,
}

impl Format for Canonical {
    fn name(&self) -> &'static str {
        "canonical"
    }

    fn sniff(&self, _object: &[u8]) -> bool {
        true
    }

    fn decode_object(&self, object: &[u8]) -> Result<FixCandidate, DecodeError> {
        let w: Wire = serde_json::from_slice(object)?;
        Ok(FixCandidate {
            vehicle: w.vehicle.map(|v| v.into_owned()),
            ts: Some(w.ts),
            lat: w.lat,
            lon: w.lon,
            speed_kmh: w.speed_kmh,
            heading_deg: w.heading_deg,
            driver: w.driver_id.map(|d| d.into_owned()),
            ignition: w.ignition,
            satellites: w.satellites,
            hdop: w.hdop,
            odometer_m: w.odometer_m,
        })
    }
}

/// `ts` as an RFC 3339 string or Unix epoch milliseconds.
pub(crate) fn de_ts<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct TsVisitor;
    impl Visitor<'_> for TsVisitor {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp or Unix milliseconds")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| E::custom(format!("bad timestamp {s:?}: {e}")))
        }
        fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Self::Value, E> {
            DateTime::from_timestamp_millis(ms).ok_or_else(|| E::custom("timestamp out of range"))
        }
        fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Self::Value, E> {
            let ms = i64::try_from(ms).map_err(|_| E::custom("timestamp out of range"))?;
            self.visit_i64(ms)
        }
        fn visit_f64<E: de::Error>(self, ms: f64) -> Result<Self::Value, E> {
            if !ms.is_finite() {
                return Err(E::custom("timestamp not finite"));
            }
            self.visit_i64(ms.round() as i64)
        }
    }
    d.deserialize_any(TsVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_all_fields() {
        let c = Canonical
            .decode_object(br#"{"vehicle":"61C-330.12","ts":"2026-11-24T08:00:05+07:00","lat":10.9,"lon":106.75,"speed_kmh":42.5,"heading_deg":91,"driver_id":"079123456789","ignition":true,"satellites":9,"hdop":0.9,"odometer_m":123456.7,"extra":"ignored"}"#)
            .unwrap();
        assert_eq!(c.vehicle.as_deref(), Some("61C-330.12"));
        assert_eq!(c.ts.unwrap().to_rfc3339(), "2026-11-24T01:00:05+00:00");
        assert_eq!((c.lat, c.lon, c.speed_kmh), (10.9, 106.75, 42.5));
        assert_eq!(c.heading_deg, Some(91.0));
        assert_eq!(c.driver.as_deref(), Some("079123456789"));
        assert_eq!(
            (c.ignition, c.satellites, c.hdop, c.odometer_m),
            (Some(true), Some(9), Some(0.9), Some(123456.7))
        );
    }

    #[test]
    fn epoch_millis_and_optional_fields() {
        let c = Canonical
            .decode_object(br#"{"ts":1795914000123,"lat":10.9,"lon":106.75,"speed_kmh":0}"#)
            .unwrap();
        assert_eq!(c.ts.unwrap().timestamp_millis(), 1795914000123);
        assert_eq!(c.vehicle, None);
        assert_eq!(c.heading_deg, None);
    }

    #[test]
    fn escaped_strings_are_fine() {
        let c = Canonical
            .decode_object(br#"{"vehicle":"61C\u002d1","ts":"2026-11-24T08:00:05Z","lat":1,"lon":2,"speed_kmh":0}"#)
            .unwrap();
        assert_eq!(c.vehicle.as_deref(), Some("61C-1"));
    }

    #[test]
    fn missing_or_mistyped_fields_are_malformed() {
        for p in [
            &br#"{"ts":"2026-11-24T08:00:05Z","lat":10.9,"speed_kmh":1}"#[..],
            br#"{"ts":"yesterday","lat":10.9,"lon":106.7,"speed_kmh":1}"#,
            br#"{"ts":"2026-11-24T08:00:05Z","lat":"10.9","lon":106.7,"speed_kmh":1}"#,
            br#"{"lat":10.9,"lon":106.7,"speed_kmh":1}"#,
        ] {
            let e = Canonical.decode_object(p).unwrap_err();
            assert_eq!(e.label(), "malformed");
        }
    }
}
