//! Per-vehicle state: the reorder buffer, the last released fix and each rule's
//! state. Everything is integers (ms, 1e-7 degrees, centi-km/h) so a checkpoint
//! written as JSON restores bit-for-bit and the state stays small.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::alert::{AlertKind, AlertStatus, Draft, Level};
use super::config::Params;
use super::driving::DrivingState;
use super::off_route::OffRouteState;
use super::overspeed::Episode;
use super::transit::TransitState;
use super::trips::MotionState;
use super::zones::Stay;
use super::Output;
use crate::domain::{CooperativeId, DriverId, Fix, VehicleId};

/// A position in 1e-7 degrees (about 1 cm), lat then lon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Pos {
    pub lat_e7: i32,
    pub lon_e7: i32,
}

impl Pos {
    /// Latitude, degrees.
    pub fn lat(self) -> f64 {
        f64::from(self.lat_e7) / 1e7
    }
    /// Longitude, degrees.
    pub fn lon(self) -> f64 {
        f64::from(self.lon_e7) / 1e7
    }
}

/// A point in time and space: where and when something began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub ts_ms: i64,
    pub pos: Pos,
}

/// The part of a fix the rules use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub ts_ms: i64,
    pub pos: Pos,
    pub speed_ckmh: u16,
    pub ignition: Option<bool>,
    pub driver: Option<DriverId>,
}

impl Sample {
    /// Quantises a fix: time to the millisecond, position to 1e-7°, speed to 0.01 km/h.
    pub fn from_fix(fix: &Fix) -> Self {
        let e7 = |deg: f64| (deg * 1e7).round() as i32;
        Self {
            ts_ms: fix.ts().timestamp_millis(),
            pos: Pos {
                lat_e7: e7(fix.lat()),
                lon_e7: e7(fix.lon()),
            },
            speed_ckmh: (f64::from(fix.speed_kmh()) * 100.0)
                .round()
                .clamp(0.0, f64::from(u16::MAX)) as u16,
            ignition: fix.ignition(),
            driver: fix.driver().cloned(),
        }
    }

    /// Moving: above the stopped speed with the ignition not reported off.
    pub fn moving(&self, p: &Params) -> bool {
        i32::from(self.speed_ckmh) > p.stopped_max_ckmh && self.ignition != Some(false)
    }

    /// Where and when this fix is.
    pub fn mark(&self) -> Mark {
        Mark {
            ts_ms: self.ts_ms,
            pos: self.pos,
        }
    }
}

/// Speed in km/h from centi-km/h, for details.
pub(crate) fn kmh(ckmh: i32) -> f64 {
    f64::from(ckmh) / 100.0
}

/// Seconds from milliseconds, for details.
pub(crate) fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The rules' state of one vehicle (driving time of its drivers lives per driver).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct VehicleCore {
    /// Fixes held back by the reorder window, in time order.
    pub buffer: Vec<Sample>,
    /// The newest fix pushed (buffered or not): the no-signal clock and the watermark.
    pub newest: Option<Mark>,
    /// The last fix released to the rules.
    pub last: Option<Sample>,
    /// Open no-signal alert: the last fix before the silence.
    pub no_signal: Option<Mark>,
    /// Processing time (ms) the device was last heard from, when the caller reports
    /// it ([`super::Engine::heard`]). Wall-clock, so never checkpointed.
    #[serde(skip)]
    pub heard_ms: Option<i64>,
    pub overspeed: Option<Episode>,
    /// Driving time while no driver is logged in.
    pub driving: DrivingState,
    pub off_route: OffRouteState,
    /// The scheduled trip being run (buses on routes with a GTFS schedule).
    #[serde(skip_serializing_if = "TransitState::is_idle")]
    pub transit: TransitState,
    pub zones: Vec<Stay>,
    pub motion: MotionState,
    /// The last version of each alert of the vehicle still open (no-signal aside): a
    /// recomputation from a snapshot states them again, so a version the wrong
    /// arrival order emitted after it (a "break" that was only missing fixes) is
    /// replaced by the true one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<super::alert::Alert>,
    /// First fix (ms) of the driver logged in at the last fix on this vehicle.
    pub driver_since_ms: Option<i64>,
    /// The vehicle's adaptive reorder window; `None`: the configured one (not
    /// adapted yet, or `rules.reorder_window_adaptive` off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<ReorderWindow>,
}

/// A vehicle's adaptive reorder window: it starts at the configured one, halves after
/// every `calm` fixes in a row that arrive newest so far (to none, so an in-order
/// source has its fixes applied, and its alerts emitted, on arrival), and widens at
/// once to twice the disorder of a fix older than the newest. Each widening doubles
/// `calm` (from 2, up to 128), so a source that shuffles now and then is not
/// recomputed again every few fixes as the window narrows under its disorder.
/// Checkpointed so that a restart resumes alike; a fix later than the window is
/// recomputed, so the rules' results do not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReorderWindow {
    /// The window now, ms of event time (u32: the state stays small).
    pub ms: u32,
    /// Fixes in a row that arrived newest so far, since the last change.
    pub in_order: u8,
    /// Fixes in a row in order before the window halves.
    pub calm: u8,
}

impl ReorderWindow {
    /// Fixes in a row in order before the window first halves.
    const CALM_FIRST: u8 = 2;
    /// The most `calm` grows to.
    const CALM_MAX: u8 = 128;
    /// Below this the window closes, ms.
    const MIN_MS: u32 = 250;

    /// A window of `max_ms`, as a vehicle starts.
    pub fn new(max_ms: i64) -> Self {
        Self {
            ms: u32::try_from(max_ms).unwrap_or(u32::MAX),
            in_order: 0,
            calm: Self::CALM_FIRST,
        }
    }

    /// The window now, ms.
    pub fn ms(&self) -> i64 {
        i64::from(self.ms)
    }

    /// Adapts to a fix at `ts_ms` arriving when the newest so far is `newest_ms`.
    pub fn observe(&mut self, ts_ms: i64, newest_ms: Option<i64>, max_ms: i64) {
        let Some(newest) = newest_ms else { return };
        if ts_ms > newest {
            self.in_order = self.in_order.saturating_add(1);
            if self.in_order >= self.calm {
                self.in_order = 0;
                self.ms /= 2;
                if self.ms < Self::MIN_MS {
                    self.ms = 0;
                }
            }
        } else if ts_ms < newest {
            self.in_order = 0;
            self.calm = self.calm.saturating_mul(2).min(Self::CALM_MAX);
            let ms = (newest - ts_ms)
                .saturating_mul(2)
                .max(self.ms())
                .min(max_ms);
            self.ms = u32::try_from(ms).unwrap_or(u32::MAX);
        }
    }
}

/// Checkpoint of one vehicle: its rule state plus the driving-time state of the
/// drivers last seen on it. Serialisable; restore with [`super::Engine::restore`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VehicleState {
    #[serde(flatten)]
    pub(crate) core: VehicleCore,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) drivers: Vec<(DriverId, DrivingState)>,
}

impl VehicleState {
    /// Time of the newest fix this state has seen (buffered or released): fixes after
    /// it are what a restart must replay.
    pub fn newest_ts(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.core.newest.map(|m| super::alert::utc(m.ts_ms))
    }
}

/// What a rule needs to emit records for the fix being processed.
pub(crate) struct Ctx<'a> {
    pub p: &'a Params,
    pub vehicle: &'a VehicleId,
    pub cooperative: Option<&'a CooperativeId>,
    /// Driver logged in at the current fix.
    pub driver: Option<&'a DriverId>,
    pub out: &'a mut Output,
}

impl<'a> Ctx<'a> {
    /// A draft for the current vehicle and driver; callers adjust fields and `push` it.
    pub fn draft(
        &self,
        kind: AlertKind,
        level: Level,
        status: AlertStatus,
        start: Mark,
        details: Value,
    ) -> Draft<'a> {
        Draft {
            kind,
            level,
            status,
            vehicle: self.vehicle,
            cooperative: self.cooperative,
            driver: self.driver,
            per_driver: false,
            start_ms: start.ts_ms,
            end_ms: None,
            pos: start.pos,
            severity: None,
            tag: "",
            details,
        }
    }

    /// Emits an alert.
    pub fn push(&mut self, d: Draft<'_>) {
        self.out.alerts.push(d.build());
    }
}
