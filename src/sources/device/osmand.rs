//! The OsmAnd / Traccar Client HTTP protocol, spoken by drivers' phones: a position as
//! query (or form) parameters `id, timestamp, lat, lon, speed (knots), bearing,
//! altitude, accuracy, hdop, batt, driverUniqueId, ignition`, or, from newer Traccar
//! Client versions, a JSON body `{device_id, location: {timestamp, coords: {latitude,
//! longitude, speed (m/s), heading, accuracy, altitude}, odometer}}`. The answer is
//! HTTP 200 once the position is stored; the client keeps and resends the position
//! until it gets it.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;

use crate::domain::FixCandidate;

/// Knots to km/h.
const KMH_PER_KNOT: f64 = 1.852;

/// Why a request does not carry a position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OsmandError {
    /// A required parameter is missing.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// A parameter is not what it should be.
    #[error("bad parameter {name}: {value:?}")]
    Bad {
        /// Parameter name.
        name: &'static str,
        /// What was sent (cut to 64 characters).
        value: String,
    },
    /// A JSON body that does not parse.
    #[error("malformed JSON body: {0}")]
    Json(String),
}

impl OsmandError {
    /// Low-cardinality reason label for metrics and dead letters.
    pub fn label(&self) -> &'static str {
        "malformed"
    }
}

/// A phone's position, with the device id it reported it under.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The device id configured in the app (mapped to a vehicle like any device id).
    pub device_id: String,
    /// The fix (an unknown speed stays `None`: validation derives it).
    pub fix: FixCandidate,
}

/// The parameters [`decode_params`] reads, as sent (a name given twice counts with
/// its last value).
#[derive(Default)]
struct Params<'a> {
    id: Option<Cow<'a, str>>,
    deviceid: Option<Cow<'a, str>>,
    lat: Option<Cow<'a, str>>,
    lon: Option<Cow<'a, str>>,
    location: Option<Cow<'a, str>>,
    timestamp: Option<Cow<'a, str>>,
    speed: Option<Cow<'a, str>>,
    bearing: Option<Cow<'a, str>>,
    heading: Option<Cow<'a, str>>,
    hdop: Option<Cow<'a, str>>,
    accuracy: Option<Cow<'a, str>>,
    ignition: Option<Cow<'a, str>>,
    driver: Option<Cow<'a, str>>,
}

/// Decodes query-string or form parameters (`a=1&b=2`, percent-encoded).
pub fn decode_params(query: &[u8]) -> Result<Report, OsmandError> {
    // One pass matching the names we use: values stay borrowed from the query unless
    // they carry escapes, and the others are skipped without a copy (this runs per
    // request on the listener).
    let mut p = Params::default();
    for (k, v) in url::form_urlencoded::parse(query) {
        let slot = match &*k {
            "id" => &mut p.id,
            "deviceid" => &mut p.deviceid,
            "lat" => &mut p.lat,
            "lon" => &mut p.lon,
            "location" => &mut p.location,
            "timestamp" => &mut p.timestamp,
            "speed" => &mut p.speed,
            "bearing" => &mut p.bearing,
            "heading" => &mut p.heading,
            "hdop" => &mut p.hdop,
            "accuracy" => &mut p.accuracy,
            "ignition" => &mut p.ignition,
            "driverUniqueId" => &mut p.driver,
            _ => continue,
        };
        *slot = Some(v);
    }
    // An empty id names no device: as good as none.
    let device_id = [p.id, p.deviceid]
        .into_iter()
        .flatten()
        .find(|v| !v.is_empty())
        .ok_or(OsmandError::Missing("id"))?
        .into_owned();
    let (lat, lon) = match (num("lat", &p.lat)?, num("lon", &p.lon)?) {
        (Some(lat), Some(lon)) => (lat, lon),
        _ => match p.location.as_deref() {
            Some(v) => {
                let (a, b) = v.split_once(',').ok_or_else(|| bad("location", v))?;
                (
                    a.trim().parse().map_err(|_| bad("location", v))?,
                    b.trim().parse().map_err(|_| bad("location", v))?,
                )
            }
            None => return Err(OsmandError::Missing("lat")),
        },
    };
    let ts = match p.timestamp.as_deref() {
        None => return Err(OsmandError::Missing("timestamp")),
        Some(v) => Some(timestamp(v).ok_or_else(|| bad("timestamp", v))?),
    };
    let ignition = p.ignition.map(|v| matches!(&*v, "true" | "1"));
    let accuracy_m = num("accuracy", &p.accuracy)?;
    let speed_kmh = num("speed", &p.speed)?
        .filter(|s| *s >= 0.0)
        .map(|k| k * KMH_PER_KNOT);
    // `bearing` wins over `heading` when both are sent, even empty.
    let heading_deg = match &p.bearing {
        Some(_) => num("bearing", &p.bearing)?,
        None => num("heading", &p.heading)?,
    };
    let hdop = num("hdop", &p.hdop)?;
    Ok(Report {
        device_id,
        fix: FixCandidate {
            vehicle: None,
            ts,
            lat,
            lon,
            speed_kmh,
            heading_deg,
            driver: p.driver.map(Cow::into_owned),
            ignition,
            satellites: None,
            hdop,
            odometer_m: None,
            accuracy_m,
        },
    })
}

/// A numeric parameter: absent or empty is `None`.
fn num(name: &'static str, v: &Option<Cow<'_, str>>) -> Result<Option<f64>, OsmandError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<f64>().map(Some).map_err(|_| bad(name, v)),
    }
}

#[derive(Deserialize)]
struct Body {
    device_id: String,
    location: Location,
}

#[derive(Deserialize)]
struct Location {
    timestamp: String,
    coords: Coords,
    odometer: Option<f64>,
}

#[derive(Deserialize)]
struct Coords {
    latitude: f64,
    longitude: f64,
    /// m/s; negative when unknown.
    speed: Option<f64>,
    /// degrees; negative when unknown.
    heading: Option<f64>,
    accuracy: Option<f64>,
}

/// Decodes a JSON body of newer Traccar Client versions.
pub fn decode_json(body: &[u8]) -> Result<Report, OsmandError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| OsmandError::Json(e.to_string()))?;
    if b.device_id.is_empty() {
        return Err(OsmandError::Missing("device_id"));
    }
    let ts =
        timestamp(&b.location.timestamp).ok_or_else(|| bad("timestamp", &b.location.timestamp))?;
    let c = b.location.coords;
    Ok(Report {
        device_id: b.device_id,
        fix: FixCandidate {
            vehicle: None,
            ts: Some(ts),
            lat: c.latitude,
            lon: c.longitude,
            speed_kmh: c.speed.filter(|s| *s >= 0.0).map(|ms| ms * 3.6),
            heading_deg: c.heading.filter(|h| *h >= 0.0),
            driver: None,
            ignition: None,
            satellites: None,
            hdop: None,
            odometer_m: b.location.odometer,
            accuracy_m: c.accuracy,
        },
    })
}

/// Unix seconds (or milliseconds, as some clients send), RFC 3339, or
/// `yyyy-MM-dd HH:mm:ss` in UTC.
fn timestamp(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(n) = v.parse::<i64>() {
        return if n > 100_000_000_000 {
            DateTime::from_timestamp_millis(n)
        } else {
            DateTime::from_timestamp(n, 0)
        };
    }
    if let Ok(f) = v.parse::<f64>() {
        return DateTime::from_timestamp_millis((f * 1000.0).round() as i64);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

fn bad(name: &'static str, v: &str) -> OsmandError {
    OsmandError::Bad {
        name,
        value: v.chars().take(64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reading `decode_params` replaced, kept as its specification: every pair
    /// into a map of owned strings, then the names looked up in order of preference.
    fn decode_params_with_a_map(query: &[u8]) -> Result<Report, OsmandError> {
        let mut p = std::collections::HashMap::new();
        for (k, v) in url::form_urlencoded::parse(query) {
            p.insert(k.into_owned(), v.into_owned());
        }
        let get = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| p.get(*n).map(|v| (*n, v.as_str())))
        };
        let num = |names: &[&'static str]| -> Result<Option<f64>, OsmandError> {
            match get(names) {
                None => Ok(None),
                Some((_, "")) => Ok(None),
                Some((name, v)) => v.parse::<f64>().map(Some).map_err(|_| bad(name, v)),
            }
        };
        // An empty id names no device: as good as none.
        let device_id = ["id", "deviceid"]
            .iter()
            .find_map(|n| p.get(*n).filter(|v| !v.is_empty()))
            .ok_or(OsmandError::Missing("id"))?
            .to_string();
        let (lat, lon) = match (num(&["lat"])?, num(&["lon"])?) {
            (Some(lat), Some(lon)) => (lat, lon),
            _ => match get(&["location"]) {
                Some((_, v)) => {
                    let (a, b) = v.split_once(',').ok_or_else(|| bad("location", v))?;
                    (
                        a.trim().parse().map_err(|_| bad("location", v))?,
                        b.trim().parse().map_err(|_| bad("location", v))?,
                    )
                }
                None => return Err(OsmandError::Missing("lat")),
            },
        };
        let ts = match get(&["timestamp"]) {
            None => return Err(OsmandError::Missing("timestamp")),
            Some((_, v)) => Some(timestamp(v).ok_or_else(|| bad("timestamp", v))?),
        };
        let ignition = get(&["ignition"]).map(|(_, v)| matches!(v, "true" | "1"));
        let accuracy_m = num(&["accuracy"])?;
        Ok(Report {
            device_id,
            fix: FixCandidate {
                vehicle: None,
                ts,
                lat,
                lon,
                speed_kmh: num(&["speed"])?
                    .filter(|s| *s >= 0.0)
                    .map(|k| k * KMH_PER_KNOT),
                heading_deg: num(&["bearing", "heading"])?,
                driver: get(&["driverUniqueId"]).map(|(_, v)| v.to_string()),
                ignition,
                satellites: None,
                hdop: num(&["hdop"])?,
                odometer_m: None,
                accuracy_m,
            },
        })
    }

    proptest! {
        #[test]
        fn reads_what_the_map_based_reading_did(
            pairs in proptest::collection::vec(
                (
                    prop::sample::select(vec![
                        "id", "deviceid", "lat", "lon", "location", "timestamp", "speed",
                        "bearing", "heading", "hdop", "accuracy", "ignition",
                        "driverUniqueId", "batt", "altitude", "%69d", "la+t",
                    ]),
                    // Mostly values that read, so that later parameters are reached.
                    prop_oneof![
                        3 => "-?[0-9]{1,3}(\\.[0-9]{1,4})?",
                        1 => any::<f64>().prop_map(|f| f.to_string()),
                        1 => (1_600_000_000i64..1_900_000_000).prop_map(|n| n.to_string()),
                        1 => Just(String::new()),
                        1 => Just("true".to_string()),
                        1 => Just("10.5,106.25".to_string()),
                        1 => "[-+0-9.eE:TZ ,]{0,24}",
                        1 => ".{0,12}",
                    ],
                ),
                0..10,
            ),
            valid_head in any::<bool>(),
            raw_tail in prop_oneof![Just(""), Just("&"), Just("&&=x"), Just("&lat=%zz")],
        ) {
            // Repeated names, unknown ones, escapes and empty values included; half the
            // queries start as a valid position, so the pairs also override good values.
            let head = if valid_head { "id=7&lat=10.5&lon=106.5&timestamp=1733112000&" } else { "" };
            let mut query = url::form_urlencoded::Serializer::new(head.to_string())
                .extend_pairs(&pairs)
                .finish()
                .replace("%2569d", "%69d")
                .replace("la%2Bt", "la+t");
            query.push_str(raw_tail);
            // Compared as printed: a NaN coordinate is the same NaN either way.
            prop_assert_eq!(
                format!("{:?}", decode_params(query.as_bytes())),
                format!("{:?}", decode_params_with_a_map(query.as_bytes())),
                "{}",
                query
            );
        }
    }

    #[test]
    fn traccar_client_query() {
        let r = decode_params(b"id=123456&timestamp=1733112000&lat=10.9804&lon=106.6519&speed=27.0&bearing=91.5&altitude=12&accuracy=8.5&batt=87&driverUniqueId=079123456789").unwrap();
        assert_eq!(r.device_id, "123456");
        assert_eq!(r.fix.ts.unwrap().to_rfc3339(), "2024-12-02T04:00:00+00:00");
        assert_eq!((r.fix.lat, r.fix.lon), (10.9804, 106.6519));
        assert!(
            (r.fix.speed_kmh.unwrap() - 50.004).abs() < 1e-9,
            "knots to km/h"
        );
        assert_eq!(r.fix.heading_deg, Some(91.5));
        assert_eq!(r.fix.accuracy_m, Some(8.5));
        assert_eq!(r.fix.driver.as_deref(), Some("079123456789"));
    }

    #[test]
    fn timestamps_in_every_form_clients_send() {
        for (v, want) in [
            ("1733112000", "2024-12-02T04:00:00+00:00"),
            ("1733112000000", "2024-12-02T04:00:00+00:00"),
            ("1733112000.5", "2024-12-02T04:00:00.500+00:00"),
            ("2024-12-02T11:00:00%2B07:00", "2024-12-02T04:00:00+00:00"),
            ("2024-12-02%2004:00:00", "2024-12-02T04:00:00+00:00"),
        ] {
            let q = format!("id=1&lat=1&lon=2&timestamp={v}");
            let r = decode_params(q.as_bytes()).unwrap();
            assert_eq!(r.fix.ts.unwrap().to_rfc3339(), want, "{v}");
        }
    }

    #[test]
    fn location_pair_and_missing_or_bad_values() {
        let r = decode_params(b"deviceid=7&location=10.5,106.25&timestamp=1733112000").unwrap();
        assert_eq!(
            (r.fix.lat, r.fix.lon, r.fix.speed_kmh),
            (10.5, 106.25, None)
        );
        assert_eq!(
            decode_params(b"lat=1&lon=2&timestamp=1"),
            Err(OsmandError::Missing("id"))
        );
        assert_eq!(
            decode_params(b"id=1&lat=1&lon=2"),
            Err(OsmandError::Missing("timestamp"))
        );
        assert!(matches!(
            decode_params(b"id=1&lat=north&lon=2&timestamp=1"),
            Err(OsmandError::Bad { name: "lat", .. })
        ));
        assert!(matches!(
            decode_params(b"id=1&lat=1&lon=2&timestamp=yesterday"),
            Err(OsmandError::Bad {
                name: "timestamp",
                ..
            })
        ));
    }

    #[test]
    fn an_empty_id_is_no_device_id() {
        assert_eq!(
            decode_params(b"id=&lat=1&lon=2&timestamp=1733112000"),
            Err(OsmandError::Missing("id"))
        );
        assert_eq!(
            decode_params(b"deviceid=&lat=1&lon=2&timestamp=1733112000"),
            Err(OsmandError::Missing("id"))
        );
        let r = decode_params(b"id=&deviceid=7&lat=1&lon=2&timestamp=1733112000").unwrap();
        assert_eq!(r.device_id, "7", "the other name still counts");
    }

    #[test]
    fn json_body_of_newer_clients() {
        let body = br#"{"location":{"timestamp":"2024-12-02T04:00:00.000Z","coords":{"latitude":10.98,"longitude":106.65,"accuracy":5,"speed":10,"heading":-1,"altitude":3},"is_moving":true,"odometer":1234.5,"battery":{"level":0.5}},"device_id":"phone-7"}"#;
        let r = decode_json(body).unwrap();
        assert_eq!(r.device_id, "phone-7");
        assert_eq!(r.fix.speed_kmh, Some(36.0), "m/s to km/h");
        assert_eq!(r.fix.heading_deg, None, "-1 is unknown");
        assert_eq!(r.fix.odometer_m, Some(1234.5));
        assert!(decode_json(b"{\"device_id\":1}").is_err());
        let unnamed = String::from_utf8_lossy(body).replace("phone-7", "");
        assert_eq!(
            decode_json(unnamed.as_bytes()),
            Err(OsmandError::Missing("device_id"))
        );
    }
}
