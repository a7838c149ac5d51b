//! Alerts: what the rules (and devices) report to the cooperative, with ids stable
//! across runs so that re-processing a track updates alerts instead of duplicating
//! them. The rules make them; the store, the deliveries and the API carry them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CooperativeId, DriverId, VehicleId};

/// A stable alert id: 128-bit FNV-1a of (kind, level, subject, start, tag) as 32
/// lower-case hex digits. Same inputs, same id, on any run, machine or Rust version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertId(String);

impl AlertId {
    /// The id as hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Hashes the identifying parts of an alert; parts are length-prefixed so that
    /// ("ab", "c") and ("a", "bc") differ.
    pub(crate) fn derive(parts: &[&[u8]]) -> Self {
        const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
        let mut h = OFFSET;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u128::from(*b);
                h = h.wrapping_mul(PRIME);
            }
        };
        eat(b"fleetwatch.alert.v1");
        for p in parts {
            eat(&(p.len() as u64).to_le_bytes());
            eat(p);
        }
        Self(format!("{h:032x}"))
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Above the speed limit for at least the minimum duration.
    Overspeed,
    /// Continuous driving near (warning) or over (violation) the limit.
    ContinuousDriving,
    /// Driving in one local day over the limit.
    DailyDriving,
    /// Driving in one local ISO week over the limit.
    WeeklyDriving,
    /// Outside the assigned route's corridor.
    OffRoute,
    /// Inside a restricted zone during its banned hours.
    RestrictedZone,
    /// Entered a depot, terminal or port.
    ZoneEnter,
    /// Left a depot, terminal or port.
    ZoneExit,
    /// The vehicle stopped sending.
    NoSignal,
    /// A gap between consecutive fixes above the sending cadence.
    DataGap,
    /// A bus on a scheduled trip passed a stop of the trip without stopping there.
    StopSkipped,
    /// A bus on a scheduled trip early or late at a stop beyond the configured bounds.
    ScheduleDeviation,
    /// An alarm the device itself raised (SOS button, power cut...), with a position.
    /// Not a rule's result: replays and recomputations leave it alone.
    DeviceAlarm,
}

impl AlertKind {
    /// Stable snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overspeed => "overspeed",
            Self::ContinuousDriving => "continuous_driving",
            Self::DailyDriving => "daily_driving",
            Self::WeeklyDriving => "weekly_driving",
            Self::OffRoute => "off_route",
            Self::RestrictedZone => "restricted_zone",
            Self::ZoneEnter => "zone_enter",
            Self::ZoneExit => "zone_exit",
            Self::NoSignal => "no_signal",
            Self::DataGap => "data_gap",
            Self::StopSkipped => "stop_skipped",
            Self::ScheduleDeviation => "schedule_deviation",
            Self::DeviceAlarm => "device_alarm",
        }
    }
}

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// An event for the log (geofence, data gap).
    Info,
    /// A limit is near.
    Warning,
    /// A rule was broken.
    Violation,
}

impl Level {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Violation => "violation",
        }
    }
}

/// Whether the episode behind an alert is still going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Going on: `end` is `None`; the same id comes again as `Closed`.
    Open,
    /// Over (or a one-off event): `end` is set and `details` are final.
    Closed,
}

impl AlertStatus {
    /// Stable snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// One alert. An episode is emitted as `Open` when it qualifies, then again with the
/// same `id` as `Closed`; one-off events (geofence, data gap) come `Closed` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id from (kind, level, vehicle or driver, start, zone/route).
    pub id: AlertId,
    /// The vehicle.
    pub vehicle: VehicleId,
    /// Its cooperative, when the vehicle is registered.
    pub cooperative: Option<CooperativeId>,
    /// Driver logged in at the fix that produced this alert (driving-time alerts:
    /// the driver they are about).
    pub driver: Option<DriverId>,
    /// What it is about.
    pub kind: AlertKind,
    /// How serious.
    pub level: Level,
    /// Open or closed.
    pub status: AlertStatus,
    /// Start of the episode (event time).
    pub start: DateTime<Utc>,
    /// End of the episode, when closed.
    pub end: Option<DateTime<Utc>>,
    /// Latitude of the episode's start, degrees.
    pub lat: f64,
    /// Longitude of the episode's start, degrees.
    pub lon: f64,
    /// Overspeed severity band 1..=4 (Decree 168/2024); `None` otherwise.
    pub severity: Option<u8>,
    /// Rule-specific facts: `max_speed_kmh`, `limit_kmh`, `duration_s`, `zone_id`,
    /// `distance_m`, `driving_s` ...
    pub details: Value,
    /// Event time of the fix whose processing produced this version (`None`: made on
    /// processing time, as no-signal). A recomputation from a snapshot reconciles
    /// the alerts emitted at or after it, whenever their episode started. Not published.
    #[serde(skip)]
    pub emitted: Option<DateTime<Utc>>,
}

/// Milliseconds since the epoch to a UTC time (the rules keep event time in ms).
pub(crate) fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}
