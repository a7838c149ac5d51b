//! OwnTracks location messages (<https://owntracks.org/booklet/tech/json/>):
//! `{"_type":"location","tst":1795914000,"lat":10.9,"lon":106.7,"vel":30,"cog":90,"acc":5}`.
//! `tst` is Unix seconds, `vel` km/h, `cog` degrees, `acc` metres. The vehicle comes
//! from the topic. OwnTracks writes -1 for a `vel` or `cog` the phone does not know:
//! such a field is absent here (an unknown speed is derived by the validator, an
//! unknown heading stays empty), as is one the message leaves out.

use chrono::DateTime;
use serde::Deserialize;

use super::{contains, DecodeError, Format};
use crate::domain::FixCandidate;

/// The OwnTracks JSON format.
pub struct OwnTracks;

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "_type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    tst: Option<i64>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    vel: Option<f64>,
    #[serde(default)]
    cog: Option<f64>,
    #[serde(default)]
    acc: Option<f64>,
}

/// OwnTracks' "unknown" (-1) as absent; any other value as given (a different negative
/// value is still out of range and rejected).
fn known(v: Option<f64>) -> Option<f64> {
    v.filter(|&x| x != -1.0)
}

impl Format for OwnTracks {
    fn name(&self) -> &'static str {
        "owntracks"
    }

    fn sniff(&self, object: &[u8]) -> bool {
        contains(object, b"\"_type\"")
    }

    fn decode_object(&self, object: &[u8]) -> Result<FixCandidate, DecodeError> {
        let w: Wire = serde_json::from_slice(object)?;
        if w.kind != "location" {
            return Err(DecodeError::NotALocation(w.kind.chars().take(32).collect()));
        }
        let missing = |f: &str| DecodeError::Malformed(format!("missing field `{f}`"));
        let tst = w.tst.ok_or_else(|| missing("tst"))?;
        Ok(FixCandidate {
            vehicle: None,
            ts: Some(
                DateTime::from_timestamp(tst, 0)
                    .ok_or_else(|| DecodeError::Malformed("tst out of range".into()))?,
            ),
            lat: w.lat.ok_or_else(|| missing("lat"))?,
            lon: w.lon.ok_or_else(|| missing("lon"))?,
            speed_kmh: known(w.vel),
            heading_deg: known(w.cog),
            accuracy_m: w.acc,
            ..FixCandidate::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_location() {
        let c = OwnTracks
            .decode_object(br#"{"_type":"location","tid":"b1","tst":1795914000,"lat":10.98,"lon":106.65,"vel":42,"cog":270,"acc":8,"batt":80}"#)
            .unwrap();
        assert_eq!(c.ts.unwrap().timestamp(), 1795914000);
        assert_eq!(
            (c.lat, c.lon, c.speed_kmh, c.heading_deg, c.accuracy_m),
            (10.98, 106.65, Some(42.0), Some(270.0), Some(8.0))
        );
    }

    #[test]
    fn minus_one_means_unknown_speed_and_heading() {
        // As an Android phone sends it without a GPS fix: cell positioning, 3 km.
        let c = OwnTracks
            .decode_object(br#"{"_type":"location","acc":3000,"alt":0,"batt":54,"bs":1,"conn":"m","created_at":1795914003,"lat":10.98,"lon":106.65,"m":1,"t":"p","tid":"b1","tst":1795914000,"vac":0,"vel":-1,"cog":-1}"#)
            .unwrap();
        assert_eq!(
            (c.speed_kmh, c.heading_deg, c.accuracy_m),
            (None, None, Some(3000.0))
        );
        // Left out: unknown too (no longer taken as stopped).
        let c = OwnTracks
            .decode_object(br#"{"_type":"location","tst":1795914000,"lat":10.98,"lon":106.65}"#)
            .unwrap();
        assert_eq!(
            (c.speed_kmh, c.heading_deg, c.accuracy_m),
            (None, None, None)
        );
        // Zero is a real value; other negatives are kept, for validation to reject.
        let c = OwnTracks
            .decode_object(br#"{"_type":"location","tst":1795914000,"lat":10.98,"lon":106.65,"vel":0,"cog":0,"acc":5}"#)
            .unwrap();
        assert_eq!((c.speed_kmh, c.heading_deg), (Some(0.0), Some(0.0)));
        let c = OwnTracks
            .decode_object(br#"{"_type":"location","tst":1795914000,"lat":10.98,"lon":106.65,"vel":-2,"cog":-1.5}"#)
            .unwrap();
        assert_eq!((c.speed_kmh, c.heading_deg), (Some(-2.0), Some(-1.5)));
    }

    #[test]
    fn other_message_types_are_not_locations() {
        let e = OwnTracks
            .decode_object(br#"{"_type":"lwt","tst":1}"#)
            .unwrap_err();
        assert_eq!(e.label(), "not_a_location");
    }

    #[test]
    fn location_without_position_is_malformed() {
        let e = OwnTracks
            .decode_object(br#"{"_type":"location","tst":1}"#)
            .unwrap_err();
        assert_eq!(e.label(), "malformed");
    }
}
