//! `Fix`: one position report of a vehicle, valid by construction.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{DriverId, VehicleId};

/// A position report as decoded from a payload, before validation.
///
/// Coordinates are WGS84 degrees; the vehicle may be absent when the payload format
/// carries it only in the topic (OwnTracks).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FixCandidate {
    /// Vehicle id as written in the payload, if the format has one.
    pub vehicle: Option<String>,
    /// Time of the fix as the device measured it (event time).
    pub ts: Option<DateTime<Utc>>,
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
    /// Ground speed, km/h; `None` when the device does not know it (OwnTracks `vel`
    /// absent or -1): the validator derives one from the vehicle's previous fix.
    pub speed_kmh: Option<f64>,
    /// Course over ground, degrees clockwise from true north.
    pub heading_deg: Option<f64>,
    /// Driver licence / card number logged in at the device.
    pub driver: Option<String>,
    /// Ignition (engine) on.
    pub ignition: Option<bool>,
    /// Satellites used in the fix.
    pub satellites: Option<i64>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Odometer reading, metres.
    pub odometer_m: Option<f64>,
    /// Radius of the position's uncertainty, metres (OwnTracks `acc`): drives the
    /// poor-accuracy flag as HDOP does. Not stored.
    pub accuracy_m: Option<f64>,
}

/// Limits a fix must be inside to be accepted; all from configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixLimits {
    /// Highest plausible ground speed, km/h (docs/rules.md: 200).
    pub max_speed_kmh: f64,
    /// How far in the future of the receive time a fix may be, seconds (docs/rules.md: 5 min).
    pub max_future_s: i64,
    /// How far in the past of the receive time a fix may be, seconds (default 30 days:
    /// devices buffer during signal loss and upload later).
    pub max_age_s: i64,
}

impl Default for FixLimits {
    fn default() -> Self {
        Self {
            max_speed_kmh: 200.0,
            max_future_s: 300,
            max_age_s: 30 * 86_400,
        }
    }
}

/// Why a fix was rejected. The `label` is a metric label: keep the set small and fixed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FixError {
    /// No vehicle id in payload nor topic, or an id outside the safe alphabet.
    #[error("invalid vehicle id: {0}")]
    InvalidVehicle(String),
    /// A driver id outside the safe alphabet.
    #[error("invalid driver id: {0}")]
    InvalidDriver(String),
    /// The fix has no timestamp.
    #[error("missing timestamp")]
    MissingTime,
    /// Latitude or longitude not finite or out of range.
    #[error("coordinates out of range: lat {lat}, lon {lon}")]
    CoordinatesOutOfRange { lat: f64, lon: f64 },
    /// Exactly (0, 0): a receiver without a fix reporting "null island".
    #[error("coordinates are exactly (0, 0)")]
    NullIsland,
    /// No speed, and none was derived (the validator derives one for a fix without).
    #[error("missing speed")]
    MissingSpeed,
    /// Speed negative, not finite, or above the plausible maximum.
    #[error("speed {speed_kmh} km/h outside 0..={max_kmh}")]
    SpeedOutOfRange { speed_kmh: f64, max_kmh: f64 },
    /// Heading outside 0..=360 degrees.
    #[error("heading {0} outside 0..=360 degrees")]
    HeadingOutOfRange(f64),
    /// Fix time too far ahead of the receive time.
    #[error("timestamp {ts} is {ahead_s} s in the future (limit {max_s} s)")]
    TimeInFuture {
        ts: DateTime<Utc>,
        ahead_s: i64,
        max_s: i64,
    },
    /// Fix time too far before the receive time.
    #[error("timestamp {ts} is older than {max_s} s")]
    TimeTooOld { ts: DateTime<Utc>, max_s: i64 },
    /// Satellites negative or absurd, HDOP negative, odometer negative.
    #[error("invalid {field}: {value}")]
    InvalidField { field: &'static str, value: f64 },
    /// A finite number too large for the column it is stored in (e.g. an HDOP of 1e300
    /// would be stored as the `real` Infinity).
    #[error("invalid {field}: {value:e} does not fit its stored type ({stored})")]
    DoesNotFit {
        field: &'static str,
        value: f64,
        stored: &'static str,
    },
}

impl FixError {
    /// Low-cardinality reason label, used in metrics and the dead-letter table.
    pub fn label(&self) -> &'static str {
        match self {
            FixError::InvalidVehicle(_) => "invalid_vehicle",
            FixError::InvalidDriver(_) => "invalid_driver",
            FixError::MissingTime => "missing_time",
            FixError::CoordinatesOutOfRange { .. } => "coordinates_out_of_range",
            FixError::NullIsland => "null_island",
            FixError::SpeedOutOfRange { .. } => "speed_out_of_range",
            FixError::HeadingOutOfRange(_) => "heading_out_of_range",
            FixError::TimeInFuture { .. } => "time_in_future",
            FixError::TimeTooOld { .. } => "time_too_old",
            FixError::InvalidField { .. } | FixError::DoesNotFit { .. } => "invalid_field",
            FixError::MissingSpeed => "missing_speed",
        }
    }
}

/// A validated position report. Fields are private: the only way in is [`Fix::validate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fix {
    vehicle: VehicleId,
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f32,
    heading_deg: Option<f32>,
    driver: Option<DriverId>,
    ignition: Option<bool>,
    satellites: Option<i16>,
    hdop: Option<f32>,
    odometer_m: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy_m: Option<f32>,
}

/// Scale of the stored coordinates: `fixes.lat_e7` / `lon_e7` are integers of 1e-7 degree.
pub const COORD_E7: f64 = 1e7;

/// `deg` rounded to the nearest 1e-7 degree (what `fixes` stores; about 1 cm).
fn on_e7_grid(deg: f64) -> f64 {
    (deg * COORD_E7).round() / COORD_E7
}

/// A coordinate in degrees as stored, integer 1e-7 degrees (exact for a [`Fix`]'s).
pub fn deg_to_e7(deg: f64) -> i32 {
    // In range for any valid coordinate: |180e7| < 2^31.
    (deg * COORD_E7).round() as i32
}

/// A stored coordinate (integer 1e-7 degrees) in degrees: the double a [`Fix`] held.
pub fn e7_to_deg(e7: i32) -> f64 {
    f64::from(e7) / COORD_E7
}

/// What a `real` (PostgreSQL's 4-byte float, Rust's `f32`) column holds.
const REAL: &str = "real, finite up to ±3.4e38";

/// Checks that a finite `value` stays finite as the `f32` it is stored as.
fn fits_f32(field: &'static str, value: f64) -> Result<f32, FixError> {
    let v = value as f32;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(FixError::DoesNotFit {
            field,
            value,
            stored: REAL,
        })
    }
}

impl Fix {
    /// Checks a candidate against `limits`, with `received_at` as the reference for
    /// time checks, and `vehicle` as the id the transport (topic) gives.
    pub fn validate(
        c: FixCandidate,
        vehicle: VehicleId,
        limits: &FixLimits,
        received_at: DateTime<Utc>,
    ) -> Result<Fix, FixError> {
        let ts = c.ts.ok_or(FixError::MissingTime)?;
        if !(c.lat.is_finite()
            && c.lon.is_finite()
            && (-90.0..=90.0).contains(&c.lat)
            && (-180.0..=180.0).contains(&c.lon))
        {
            return Err(FixError::CoordinatesOutOfRange {
                lat: c.lat,
                lon: c.lon,
            });
        }
        // As stored (integers of 1e-7 degree), so the rules, the store and a
        // recomputation from stored fixes all see the same position.
        let (lat, lon) = (on_e7_grid(c.lat), on_e7_grid(c.lon));
        if lat == 0.0 && lon == 0.0 {
            return Err(FixError::NullIsland);
        }
        let speed_kmh = c.speed_kmh.ok_or(FixError::MissingSpeed)?;
        if !(speed_kmh.is_finite() && (0.0..=limits.max_speed_kmh).contains(&speed_kmh)) {
            return Err(FixError::SpeedOutOfRange {
                speed_kmh,
                max_kmh: limits.max_speed_kmh,
            });
        }
        // Within the limit, yet the limit itself is configuration.
        let speed_kmh = fits_f32("speed_kmh", speed_kmh)?;
        if let Some(h) = c.heading_deg {
            if !(h.is_finite() && (0.0..=360.0).contains(&h)) {
                return Err(FixError::HeadingOutOfRange(h));
            }
        }
        let ahead = ts - received_at;
        if ahead > Duration::try_seconds(limits.max_future_s).unwrap_or(Duration::MAX) {
            return Err(FixError::TimeInFuture {
                ts,
                ahead_s: ahead.num_seconds(),
                max_s: limits.max_future_s,
            });
        }
        if received_at - ts > Duration::try_seconds(limits.max_age_s).unwrap_or(Duration::MAX) {
            return Err(FixError::TimeTooOld {
                ts,
                max_s: limits.max_age_s,
            });
        }
        let satellites = match c.satellites {
            None => None,
            Some(n) if (0..=255).contains(&n) => Some(n as i16),
            Some(n) => {
                return Err(FixError::InvalidField {
                    field: "satellites",
                    value: n as f64,
                })
            }
        };
        for (field, v) in [
            ("hdop", c.hdop),
            ("odometer_m", c.odometer_m),
            ("accuracy_m", c.accuracy_m),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(FixError::InvalidField { field, value: v });
                }
            }
        }
        // Checked as f64 above, stored as f32: a huge value would become Infinity.
        // (The odometer is a double precision column: any finite f64 fits.)
        let hdop = c.hdop.map(|h| fits_f32("hdop", h)).transpose()?;
        let accuracy_m = c
            .accuracy_m
            .map(|a| fits_f32("accuracy_m", a))
            .transpose()?;
        let driver = match c.driver.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(d) => {
                Some(DriverId::parse(d).map_err(|e| FixError::InvalidDriver(e.to_string()))?)
            }
        };
        Ok(Fix {
            vehicle,
            ts,
            lat,
            lon,
            speed_kmh,
            // Within 0..=360 (checked above): always fits.
            heading_deg: c.heading_deg.map(|h| (h % 360.0) as f32),
            driver,
            ignition: c.ignition,
            satellites,
            hdop,
            odometer_m: c.odometer_m,
            accuracy_m,
        })
    }

    /// The reporting vehicle.
    pub fn vehicle(&self) -> &VehicleId {
        &self.vehicle
    }
    /// Event time of the fix.
    pub fn ts(&self) -> DateTime<Utc> {
        self.ts
    }
    /// Latitude, WGS84 degrees, on the stored 1e-7 degree grid.
    pub fn lat(&self) -> f64 {
        self.lat
    }
    /// Longitude, WGS84 degrees, on the stored 1e-7 degree grid.
    pub fn lon(&self) -> f64 {
        self.lon
    }
    /// Ground speed, km/h.
    pub fn speed_kmh(&self) -> f32 {
        self.speed_kmh
    }
    /// Course over ground, degrees clockwise from true north, in `0..360`.
    pub fn heading_deg(&self) -> Option<f32> {
        self.heading_deg
    }
    /// Driver logged in at the device, if any.
    pub fn driver(&self) -> Option<&DriverId> {
        self.driver.as_ref()
    }
    /// Ignition on.
    pub fn ignition(&self) -> Option<bool> {
        self.ignition
    }
    /// Satellites used.
    pub fn satellites(&self) -> Option<i16> {
        self.satellites
    }
    /// Horizontal dilution of precision.
    pub fn hdop(&self) -> Option<f32> {
        self.hdop
    }
    /// Odometer, metres.
    pub fn odometer_m(&self) -> Option<f64> {
        self.odometer_m
    }
    /// Radius of the position's uncertainty, metres, when the device gives one.
    pub fn accuracy_m(&self) -> Option<f32> {
        self.accuracy_m
    }
    /// Position as a `geo` point (x = lon, y = lat).
    pub fn point(&self) -> geo::Point<f64> {
        geo::Point::new(self.lon, self.lat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap()
    }

    fn good() -> FixCandidate {
        FixCandidate {
            vehicle: Some("61C-123.45".into()),
            ts: Some(now() - Duration::seconds(2)),
            lat: 10.98,
            lon: 106.65,
            speed_kmh: Some(42.0),
            heading_deg: Some(90.0),
            driver: Some("079123456789".into()),
            ignition: Some(true),
            satellites: Some(9),
            hdop: Some(0.9),
            odometer_m: Some(1000.0),
            accuracy_m: Some(8.0),
        }
    }

    fn check(c: FixCandidate) -> Result<Fix, FixError> {
        Fix::validate(
            c,
            VehicleId::parse("61C-123.45").unwrap(),
            &FixLimits::default(),
            now(),
        )
    }

    #[test]
    fn accepts_a_plausible_fix() {
        let f = check(good()).unwrap();
        assert_eq!(f.speed_kmh(), 42.0);
        assert_eq!(f.driver().unwrap().as_str(), "079123456789");
    }

    #[test]
    fn every_reject_reason_has_its_label() {
        let cases: Vec<(FixCandidate, &str)> = vec![
            (FixCandidate { ts: None, ..good() }, "missing_time"),
            (
                FixCandidate {
                    lat: 91.0,
                    ..good()
                },
                "coordinates_out_of_range",
            ),
            (
                FixCandidate {
                    lon: -180.5,
                    ..good()
                },
                "coordinates_out_of_range",
            ),
            (
                FixCandidate {
                    lat: f64::NAN,
                    ..good()
                },
                "coordinates_out_of_range",
            ),
            (
                FixCandidate {
                    lat: 0.0,
                    lon: 0.0,
                    ..good()
                },
                "null_island",
            ),
            (
                FixCandidate {
                    speed_kmh: Some(-1.0),
                    ..good()
                },
                "speed_out_of_range",
            ),
            (
                FixCandidate {
                    speed_kmh: Some(200.1),
                    ..good()
                },
                "speed_out_of_range",
            ),
            (
                FixCandidate {
                    heading_deg: Some(360.5),
                    ..good()
                },
                "heading_out_of_range",
            ),
            (
                FixCandidate {
                    heading_deg: Some(-0.1),
                    ..good()
                },
                "heading_out_of_range",
            ),
            (
                FixCandidate {
                    ts: Some(now() + Duration::seconds(301)),
                    ..good()
                },
                "time_in_future",
            ),
            (
                FixCandidate {
                    ts: Some(now() - Duration::days(31)),
                    ..good()
                },
                "time_too_old",
            ),
            (
                FixCandidate {
                    satellites: Some(-1),
                    ..good()
                },
                "invalid_field",
            ),
            (
                FixCandidate {
                    hdop: Some(-0.5),
                    ..good()
                },
                "invalid_field",
            ),
            (
                FixCandidate {
                    driver: Some("a/b".into()),
                    ..good()
                },
                "invalid_driver",
            ),
        ];
        for (c, label) in cases {
            let err = check(c.clone()).expect_err(&format!("{c:?} accepted"));
            assert_eq!(err.label(), label, "{c:?}");
        }
    }

    #[test]
    fn limits_are_inclusive_at_the_edges() {
        assert!(check(FixCandidate {
            speed_kmh: Some(200.0),
            ..good()
        })
        .is_ok());
        assert!(check(FixCandidate {
            heading_deg: Some(360.0),
            ..good()
        })
        .is_ok());
        assert!(check(FixCandidate {
            ts: Some(now() + Duration::seconds(300)),
            ..good()
        })
        .is_ok());
    }

    #[test]
    fn heading_360_is_stored_as_0() {
        let f = check(FixCandidate {
            heading_deg: Some(360.0),
            ..good()
        })
        .unwrap();
        assert_eq!(f.heading_deg(), Some(0.0));
    }

    #[test]
    fn values_that_do_not_fit_their_stored_type_are_invalid_fields() {
        // Finite as f64, Infinity as the f32 (`real`) they are stored as.
        for (c, field) in [
            (
                FixCandidate {
                    hdop: Some(1e300),
                    ..good()
                },
                "hdop",
            ),
            (
                FixCandidate {
                    hdop: Some(3.5e38),
                    ..good()
                },
                "hdop",
            ),
            (
                FixCandidate {
                    accuracy_m: Some(1e39),
                    ..good()
                },
                "accuracy_m",
            ),
        ] {
            let err = check(c.clone()).expect_err(&format!("{c:?} accepted"));
            assert_eq!(err.label(), "invalid_field", "{c:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(field) && msg.contains("does not fit its stored type (real"),
                "{msg}"
            );
        }
        // A configured speed limit beyond f32 cannot let a speed through as Infinity.
        let limits = FixLimits {
            max_speed_kmh: f64::MAX,
            ..FixLimits::default()
        };
        let err = Fix::validate(
            FixCandidate {
                speed_kmh: Some(1e300),
                ..good()
            },
            VehicleId::parse("61C-123.45").unwrap(),
            &limits,
            now(),
        )
        .unwrap_err();
        assert_eq!(err.label(), "invalid_field");
        assert!(err.to_string().contains("speed_kmh"), "{err}");
        // The largest f32 itself fits, as does an odometer beyond it (double precision).
        let f = check(FixCandidate {
            hdop: Some(f64::from(f32::MAX)),
            odometer_m: Some(1e300),
            ..good()
        })
        .unwrap();
        assert_eq!(f.hdop(), Some(f32::MAX));
        assert_eq!(f.odometer_m(), Some(1e300));
        assert!(check(FixCandidate {
            odometer_m: Some(f64::INFINITY),
            ..good()
        })
        .is_err());
    }

    #[test]
    fn a_fix_without_speed_is_refused_unless_one_is_derived() {
        let err = check(FixCandidate {
            speed_kmh: None,
            ..good()
        })
        .unwrap_err();
        assert_eq!(err.label(), "missing_speed");
    }
}
