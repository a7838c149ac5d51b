//! OwnTracks location messages (<https://owntracks.org/booklet/tech/json/>):
//! `{"_type":"location","tst":1795914000,"lat":10.9,"lon":106.7,"vel":30,"cog":90,"acc":5}`.
//! `tst` is Unix seconds, `vel` km/h, `cog` degrees. The vehicle comes from the topic.

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
            // OwnTracks omits vel when the phone does not know it; treat as stopped.
            speed_kmh: w.vel.unwrap_or(0.0),
            heading_deg: w.cog,
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
            (c.lat, c.lon, c.speed_kmh, c.heading_deg),
            (10.98, 106.65, 42.0, Some(270.0))
        );
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
