//! The canonical fleetwatch fix: one JSON object, schema in `schema/fix.schema.json`.
//!
//! `{"vehicle":"61C-330.12","ts":"2026-11-24T08:00:05Z","lat":10.9,"lon":106.75,
//!   "speed_kmh":42.5,"heading_deg":91,"driver_id":"079123456789","ignition":true,
//!   "satellites":9,"hdop":0.9,"odometer_m":123456.7}` — `ts` is RFC 3339 or Unix
//! milliseconds; coordinates are WGS84 degrees, lat before lon. [`encode`] writes a
//! stored fix back in this format (replays).

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::{DecodeError, Format};
use crate::domain::{Fix, FixCandidate};

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
            speed_kmh: Some(w.speed_kmh),
            heading_deg: w.heading_deg,
            driver: w.driver_id.map(|d| d.into_owned()),
            ignition: w.ignition,
            satellites: w.satellites,
            hdop: w.hdop,
            odometer_m: w.odometer_m,
            accuracy_m: None,
        })
    }
}

/// The payload object [`encode`] writes; keys in the order of the schema's example.
#[derive(Serialize)]
struct Out<'a> {
    vehicle: &'a str,
    ts: String,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading_deg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignition: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    satellites: Option<i16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hdop: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    odometer_m: Option<f64>,
}

/// Encodes `fix` as one canonical JSON object that decodes and validates back to an
/// equal [`Fix`]: `ts` in RFC 3339 UTC with as many fraction digits as it has,
/// `f64` fields in their shortest exact form, `f32` fields (speed, heading, HDOP) as
/// the shortest decimal that reads back to the same `f32`.
pub fn encode(fix: &Fix) -> Vec<u8> {
    let out = Out {
        vehicle: fix.vehicle().as_str(),
        ts: fix.ts().to_rfc3339_opts(SecondsFormat::AutoSi, true),
        lat: fix.lat(),
        lon: fix.lon(),
        speed_kmh: f32_exact(fix.speed_kmh()),
        heading_deg: fix.heading_deg().map(heading_exact),
        driver_id: fix.driver().map(|d| d.as_str()),
        ignition: fix.ignition(),
        satellites: fix.satellites(),
        hdop: fix.hdop().map(f32_exact),
        odometer_m: fix.odometer_m(),
    };
    serde_json::to_vec(&out).expect("a struct of numbers and strings serialises")
}

/// The `f64` to write for an `f32` value: its shortest decimal (`42.3`, not
/// `42.29999923706055`) when that reads back, as `f64` then cast, to the same `f32`
/// (double rounding can break this in rare cases), else the exact widening.
fn f32_exact(x: f32) -> f64 {
    let short: f64 = x.to_string().parse().unwrap_or(f64::from(x));
    if short as f32 == x {
        short
    } else {
        f64::from(x)
    }
}

/// As [`f32_exact`], except for 360: validation maps a heading of 360 to 0, yet a
/// received heading just below 360 (359.99999) is stored as the `f32` 360.0.
fn heading_exact(h: f32) -> f64 {
    if h == 360.0 {
        359.99999
    } else {
        f32_exact(h)
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
    use crate::domain::{FixLimits, VehicleId};

    #[test]
    fn decodes_all_fields() {
        let c = Canonical
            .decode_object(br#"{"vehicle":"61C-330.12","ts":"2026-11-24T08:00:05+07:00","lat":10.9,"lon":106.75,"speed_kmh":42.5,"heading_deg":91,"driver_id":"079123456789","ignition":true,"satellites":9,"hdop":0.9,"odometer_m":123456.7,"extra":"ignored"}"#)
            .unwrap();
        assert_eq!(c.vehicle.as_deref(), Some("61C-330.12"));
        assert_eq!(c.ts.unwrap().to_rfc3339(), "2026-11-24T01:00:05+00:00");
        assert_eq!((c.lat, c.lon, c.speed_kmh), (10.9, 106.75, Some(42.5)));
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

    fn round_trip(fix: &Fix) -> Fix {
        let payload = encode(fix);
        let c = Canonical.decode_object(&payload).unwrap();
        assert_eq!(c.vehicle.as_deref(), Some(fix.vehicle().as_str()));
        Fix::validate(c, fix.vehicle().clone(), &FixLimits::default(), fix.ts()).unwrap()
    }

    fn validated(c: FixCandidate) -> Fix {
        let ts = c.ts.unwrap();
        Fix::validate(
            c,
            VehicleId::parse("61C-330.12").unwrap(),
            &FixLimits::default(),
            ts,
        )
        .unwrap()
    }

    #[test]
    fn encodes_what_a_device_sent_and_decodes_back() {
        let fix = validated(Canonical
            .decode_object(br#"{"vehicle":"61C-330.12","ts":"2026-11-24T08:00:05.250Z","lat":10.90123,"lon":106.75012,"speed_kmh":42.3,"heading_deg":91.1,"driver_id":"079123456789","ignition":true,"satellites":9,"hdop":0.9,"odometer_m":123456.7}"#)
            .unwrap());
        assert_eq!(
            String::from_utf8(encode(&fix)).unwrap(),
            r#"{"vehicle":"61C-330.12","ts":"2026-11-24T08:00:05.250Z","lat":10.90123,"lon":106.75012,"speed_kmh":42.3,"heading_deg":91.1,"driver_id":"079123456789","ignition":true,"satellites":9,"hdop":0.9,"odometer_m":123456.7}"#
        );
        assert_eq!(round_trip(&fix), fix);
    }

    #[test]
    fn optional_fields_are_left_out_and_360_survives() {
        let fix = validated(FixCandidate {
            ts: Some(DateTime::from_timestamp(1_795_914_000, 123_456_000).unwrap()),
            lat: -0.000001,
            lon: 1e-7,
            speed_kmh: Some(0.0),
            // Stored as the f32 360.0, which validation would turn into 0.
            heading_deg: Some(359.999_99),
            ..FixCandidate::default()
        });
        assert_eq!(fix.heading_deg(), Some(360.0));
        let text = String::from_utf8(encode(&fix)).unwrap();
        assert!(
            text.contains(r#""ts":"2026-11-29T01:00:00.123456Z""#),
            "{text}"
        );
        assert!(
            !text.contains("driver_id") && !text.contains("ignition"),
            "{text}"
        );
        assert_eq!(round_trip(&fix), fix);
    }

    #[test]
    fn seventeen_digit_coordinates_round_trip() {
        // Needs serde_json's float_roundtrip: the default parser is one ulp off here.
        let fix = validated(FixCandidate {
            ts: Some(DateTime::from_timestamp(1_795_914_000, 0).unwrap()),
            lat: 10.901_234_567_891_234,
            lon: 122.913_318_327_151_39,
            speed_kmh: Some(0.0),
            ..FixCandidate::default()
        });
        assert_eq!(round_trip(&fix), fix);
    }

    proptest::proptest! {
        #[test]
        fn every_valid_fix_round_trips(
            ts_ms in 0i64..4_102_444_800_000,
            sub_ms_ns in proptest::prop_oneof![proptest::strategy::Just(0u32), 0u32..1_000_000],
            lat in -90.0f64..=90.0,
            lon in -180.0f64..=180.0,
            speed in 0.0f64..=200.0,
            heading in proptest::option::of(0.0f64..=360.0),
            driver in proptest::option::of("[A-Z0-9][A-Z0-9._-]{0,31}"),
            ignition in proptest::option::of(proptest::bool::ANY),
            satellites in proptest::option::of(0i64..=255),
            hdop in proptest::option::of(0.0f64..1000.0),
            odometer in proptest::option::of(0.0f64..1e10),
        ) {
            let ts = DateTime::from_timestamp_millis(ts_ms).unwrap()
                + chrono::Duration::nanoseconds(i64::from(sub_ms_ns));
            proptest::prop_assume!(lat != 0.0 || lon != 0.0);
            let fix = validated(FixCandidate {
                vehicle: None,
                ts: Some(ts),
                lat,
                lon,
                speed_kmh: Some(speed),
                heading_deg: heading,
                driver,
                ignition,
                satellites,
                hdop,
                odometer_m: odometer,
                accuracy_m: None,
            });
            proptest::prop_assert_eq!(round_trip(&fix), fix);
        }
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
