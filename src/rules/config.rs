//! `RulesConfig`: every threshold of the compliance rules, with the defaults of
//! `docs/rules.md` (laws change and cooperatives differ: nothing here is a constant
//! in code), and the integer form the rules use on the hot path.

use serde::{Deserialize, Serialize};

use crate::domain::alert::Level;
use crate::domain::VehicleClass;

/// Settings of all compliance rules. Durations in seconds, speeds in km/h, distances
/// in metres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Offset of local time from UTC for days, ISO weeks and banned hours
    /// (Asia/Ho_Chi_Minh: "+07:00", no daylight saving).
    pub utc_offset: UtcOffset,
    /// At or below this speed, km/h, or with ignition off, a vehicle is stopped
    /// (driving time, breaks, stops, data-gap cadence).
    pub stopped_max_kmh: f64,
    /// Fixes of a vehicle are held this long (event time) to be put in time order
    /// cheaply; a fix older than what the rules already applied triggers a
    /// recomputation of its vehicle from a snapshot instead.
    pub reorder_window_s: u32,
    /// Each vehicle's window adapts, up to `reorder_window_s`: it narrows while the
    /// vehicle's fixes arrive in order (down to none: applied on arrival, alerts at
    /// once) and widens at once to twice the disorder seen. A fix later than its
    /// vehicle's window is recomputed, so results are the same either way. Off by
    /// default for now: with it on, one integration test (100-fix messages over four
    /// connections) stalls about one run in six under load, not yet explained.
    pub reorder_window_adaptive: bool,
    /// Event time between two in-memory snapshots of a vehicle's rule state: a late
    /// fix is recomputed from the newest snapshot older than it (thinned out to a few
    /// per vehicle, older ones further apart).
    pub snapshot_interval_s: u32,
    /// Overspeed episodes.
    pub overspeed: OverspeedConfig,
    /// Continuous, daily and weekly driving time.
    pub driving: DrivingConfig,
    /// Wrong route for vehicles with an assigned route.
    pub off_route: OffRouteConfig,
    /// Restricted zones and geofence events.
    pub zones: ZonesConfig,
    /// Vehicles that stop sending.
    pub no_signal: NoSignalConfig,
    /// Gaps between consecutive fixes.
    pub gaps: GapsConfig,
    /// Stop and trip detection for reports.
    pub stops: StopsConfig,
    /// Scheduled bus trips (GTFS): trip assignment, stop events, schedule deviation.
    pub transit: TransitConfig,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            utc_offset: UtcOffset::from_seconds(7 * 3600),
            stopped_max_kmh: 3.0,
            reorder_window_s: 10,
            reorder_window_adaptive: false,
            snapshot_interval_s: 600,
            overspeed: OverspeedConfig::default(),
            driving: DrivingConfig::default(),
            off_route: OffRouteConfig::default(),
            zones: ZonesConfig::default(),
            no_signal: NoSignalConfig::default(),
            gaps: GapsConfig::default(),
            stops: StopsConfig::default(),
            transit: TransitConfig::default(),
        }
    }
}

/// Overspeed: limits per class without road data, episode length, severity bands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverspeedConfig {
    /// Limit per vehicle class where no speed zone says otherwise, km/h
    /// (Circular 31/2019 as amended by 06/2023, outside residential areas).
    pub class_limits_kmh: ClassLimitsKmh,
    /// Limit for vehicles missing from the registry, km/h; `None`: only speed zones.
    pub unregistered_limit_kmh: Option<f64>,
    /// An episode above the limit becomes a violation once it has lasted this long
    /// (first to last fix above the limit), seconds.
    pub min_duration_s: u32,
    /// Episodes whose maximum excess is at most this, km/h, are reported with
    /// `counted: false`: not in the regulator's per-1,000-km metric.
    pub counted_excess_over_kmh: f64,
    /// Severity bands by the maximum excess (Decree 168/2024 art. 6).
    pub bands: SeverityBands,
    /// Two fixes above the limit further apart than this, seconds, are two episodes
    /// (no overspeed is invented across signal loss); `None`: `gaps.moving_max_s`.
    pub max_fix_gap_s: Option<u32>,
}

impl Default for OverspeedConfig {
    fn default() -> Self {
        Self {
            class_limits_kmh: ClassLimitsKmh::default(),
            unregistered_limit_kmh: None,
            min_duration_s: 20,
            counted_excess_over_kmh: 5.0,
            bands: SeverityBands::default(),
            max_fix_gap_s: None,
        }
    }
}

/// Speed limit per vehicle class, km/h.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassLimitsKmh {
    /// Fixed-route bus.
    pub bus: f64,
    /// Coach over 30 seats.
    pub coach: f64,
    /// Container truck over 3.5 t.
    pub container: f64,
    /// Tractor unit with semi-trailer.
    pub tractor: f64,
    /// Truck up to 3.5 t.
    pub light_truck: f64,
    /// Car up to 30 seats.
    pub car: f64,
}

impl Default for ClassLimitsKmh {
    fn default() -> Self {
        Self {
            bus: 70.0,
            coach: 80.0,
            container: 80.0,
            tractor: 70.0,
            light_truck: 90.0,
            car: 90.0,
        }
    }
}

impl ClassLimitsKmh {
    /// The limit of `class`, km/h.
    pub fn for_class(&self, class: VehicleClass) -> f64 {
        match class {
            VehicleClass::Bus => self.bus,
            VehicleClass::Coach => self.coach,
            VehicleClass::Container => self.container,
            VehicleClass::Tractor => self.tractor,
            VehicleClass::LightTruck => self.light_truck,
            VehicleClass::Car => self.car,
        }
    }
}

/// Lower edges of the four severity bands by excess over the limit, km/h:
/// band 1 is `band1_from..band2_from`, band 2 `band2_from..=band3_over`, band 3
/// `(band3_over, band4_over]`, band 4 above `band4_over`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeverityBands {
    /// Band 1 starts at this excess (inclusive), km/h.
    pub band1_from_kmh: f64,
    /// Band 2 starts at this excess (inclusive), km/h.
    pub band2_from_kmh: f64,
    /// Band 3 starts above this excess (exclusive), km/h.
    pub band3_over_kmh: f64,
    /// Band 4 starts above this excess (exclusive), km/h.
    pub band4_over_kmh: f64,
}

impl Default for SeverityBands {
    fn default() -> Self {
        Self {
            band1_from_kmh: 5.0,
            band2_from_kmh: 10.0,
            band3_over_kmh: 20.0,
            band4_over_kmh: 35.0,
        }
    }
}

/// Driving-time limits (Law 36/2024 art. 64), per driver when known, else per vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrivingConfig {
    /// Longest continuous driving, seconds.
    pub continuous_max_s: u32,
    /// A warning is raised this long before `continuous_max_s`, seconds (0: none).
    pub warn_before_s: u32,
    /// Longest driving in one local day, seconds.
    pub daily_max_s: u32,
    /// Longest driving in one local ISO week, seconds.
    pub weekly_max_s: u32,
    /// Whether the weekly limit is checked.
    pub weekly_enabled: bool,
    /// Being stopped this long ends continuous driving, seconds.
    pub break_min_s: u32,
    /// Time between two fixes counts as driving only when they are at most this far
    /// apart, seconds; `None`: `gaps.moving_max_s`.
    pub max_counted_gap_s: Option<u32>,
}

impl Default for DrivingConfig {
    fn default() -> Self {
        Self {
            continuous_max_s: 4 * 3600,
            warn_before_s: 5 * 60,
            daily_max_s: 10 * 3600,
            weekly_max_s: 48 * 3600,
            weekly_enabled: true,
            break_min_s: 15 * 60,
            max_counted_gap_s: None,
        }
    }
}

/// Wrong route, with time hysteresis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffRouteConfig {
    /// Corridor half-width around the route, metres (a route's `corridor_m` wins).
    pub corridor_m: f64,
    /// Outside the corridor this long (first to last outside fix) opens an alert, s.
    pub leave_after_s: u32,
    /// Inside again this long closes it, seconds.
    pub back_after_s: u32,
    /// Fixes inside a depot or terminal zone count as on route (buses park there).
    pub depots_count_as_on_route: bool,
}

impl Default for OffRouteConfig {
    fn default() -> Self {
        Self {
            corridor_m: 100.0,
            leave_after_s: 60,
            back_after_s: 60,
            depots_count_as_on_route: true,
        }
    }
}

/// Scheduled trips of buses whose route has a GTFS schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransitConfig {
    /// Assign trips and report stop events at all.
    pub enabled: bool,
    /// Within this distance of a stop, metres, the bus is at the stop.
    pub stop_radius_m: f64,
    /// Moving this far along one shape from where a probe started, metres, lets
    /// the bus be matched to a trip of that shape (less when the trip's second stop
    /// is nearer).
    pub confirm_m: f64,
    /// A trip is a candidate when the bus is within this many seconds of its
    /// schedule at its position.
    pub match_window_s: u32,
    /// Earlier than the schedule by more than this at a stop, seconds: early.
    pub early_s: u32,
    /// Later than the schedule by more than this at a stop, seconds: late.
    pub late_s: u32,
    /// Level of `schedule_deviation` alerts (`info` or `warning`).
    pub deviation_level: Level,
    /// Level of `stop_skipped` alerts (`info` or `warning`).
    pub skipped_level: Level,
    /// Off the trip's shape, or not moving along it, this long ends the run
    /// (abandoned), seconds.
    pub abandon_after_s: u32,
}

impl Default for TransitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stop_radius_m: 50.0,
            confirm_m: 200.0,
            match_window_s: 1800,
            early_s: 60,
            late_s: 300,
            deviation_level: Level::Warning,
            skipped_level: Level::Warning,
            abandon_after_s: 1800,
        }
    }
}

/// When a stay in a restricted zone is a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestrictedTrigger {
    /// Entering (or being inside at the first fix) during banned hours (docs/rules.md).
    Enter,
    /// Any fix inside during banned hours, even if the vehicle entered before them.
    Inside,
}

/// Restricted zones and geofences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZonesConfig {
    /// Which stays in a restricted zone are violations.
    pub restricted_trigger: RestrictedTrigger,
}

impl Default for ZonesConfig {
    fn default() -> Self {
        Self {
            restricted_trigger: RestrictedTrigger::Enter,
        }
    }
}

/// No signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoSignalConfig {
    /// Silence longer than this (processing time against the last fix's time) opens
    /// a no-signal alert, seconds (the stopped cadence).
    pub after_s: u32,
}

impl Default for NoSignalConfig {
    fn default() -> Self {
        Self { after_s: 15 * 60 }
    }
}

/// Sending cadence (Circular 09/2015): larger gaps are data gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GapsConfig {
    /// Longest gap between two moving fixes, seconds.
    pub moving_max_s: u32,
    /// Longest gap when either fix is stopped, seconds.
    pub stopped_max_s: u32,
}

impl Default for GapsConfig {
    fn default() -> Self {
        Self {
            moving_max_s: 30,
            stopped_max_s: 15 * 60,
        }
    }
}

/// Stops and trips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StopsConfig {
    /// Stopped at least this long is a stop (and ends a trip), seconds.
    pub min_stop_s: u32,
}

impl Default for StopsConfig {
    fn default() -> Self {
        Self { min_stop_s: 3 * 60 }
    }
}

pub use crate::domain::time::UtcOffset;

/// A setting out of its sensible range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RulesConfigError {
    /// A value that must be positive (or non-negative) is not.
    #[error("{0} must be a positive number")]
    NotPositive(&'static str),
    /// A transit alert level other than info or warning.
    #[error("{0} must be \"info\" or \"warning\"")]
    InfoOrWarning(&'static str),
    /// Severity band edges not in increasing order.
    #[error("overspeed.bands must increase: band1_from <= band2_from <= band3_over <= band4_over")]
    BandsOrder,
}

impl RulesConfig {
    /// The driving-time limits the live figures are read against.
    pub fn driving_limits(&self) -> crate::domain::live::DrivingLimits {
        let d = &self.driving;
        crate::domain::live::DrivingLimits {
            continuous_max_s: f64::from(d.continuous_max_s),
            daily_max_s: f64::from(d.daily_max_s),
            weekly_max_s: d.weekly_enabled.then_some(f64::from(d.weekly_max_s)),
            break_s: f64::from(d.break_min_s),
            utc_offset_s: self.utc_offset.seconds(),
        }
    }

    /// Checks ranges the rules rely on; call after loading the configuration.
    pub fn validate(&self) -> Result<(), RulesConfigError> {
        let c = &self.overspeed.class_limits_kmh;
        let positive = [
            (
                "overspeed.class_limits_kmh",
                [c.bus, c.coach, c.container, c.tractor, c.light_truck, c.car]
                    .iter()
                    .all(|v| v.is_finite() && *v > 0.0),
            ),
            (
                "overspeed.unregistered_limit_kmh",
                self.overspeed
                    .unregistered_limit_kmh
                    .is_none_or(|v| v.is_finite() && v > 0.0),
            ),
            (
                "off_route.corridor_m",
                self.off_route.corridor_m.is_finite() && self.off_route.corridor_m > 0.0,
            ),
            (
                "stopped_max_kmh",
                self.stopped_max_kmh.is_finite() && self.stopped_max_kmh >= 0.0,
            ),
            (
                "driving.continuous_max_s",
                self.driving.continuous_max_s > 0,
            ),
            ("driving.daily_max_s", self.driving.daily_max_s > 0),
            ("driving.weekly_max_s", self.driving.weekly_max_s > 0),
            ("driving.break_min_s", self.driving.break_min_s > 0),
            ("gaps.moving_max_s", self.gaps.moving_max_s > 0),
            ("gaps.stopped_max_s", self.gaps.stopped_max_s > 0),
            ("no_signal.after_s", self.no_signal.after_s > 0),
            (
                "transit.stop_radius_m",
                self.transit.stop_radius_m.is_finite() && self.transit.stop_radius_m > 0.0,
            ),
            (
                "transit.confirm_m",
                self.transit.confirm_m.is_finite() && self.transit.confirm_m > 0.0,
            ),
            ("transit.match_window_s", self.transit.match_window_s > 0),
            ("transit.abandon_after_s", self.transit.abandon_after_s > 0),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, ok)| !ok) {
            return Err(RulesConfigError::NotPositive(name));
        }
        for (name, level) in [
            ("transit.deviation_level", self.transit.deviation_level),
            ("transit.skipped_level", self.transit.skipped_level),
        ] {
            if level == Level::Violation {
                return Err(RulesConfigError::InfoOrWarning(name));
            }
        }
        let b = &self.overspeed.bands;
        let edges = [
            b.band1_from_kmh,
            b.band2_from_kmh,
            b.band3_over_kmh,
            b.band4_over_kmh,
        ];
        if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] > w[1]) {
            return Err(RulesConfigError::BandsOrder);
        }
        Ok(())
    }
}

/// Centi-km/h from km/h: the rules compare speeds as integers so that band edges are
/// exact (75.1 km/h over 70 is 510, over the 500 of "more than 5 km/h").
pub(crate) fn ckmh(kmh: f64) -> i32 {
    (kmh * 100.0).round().clamp(0.0, i32::MAX as f64) as i32
}

/// The configuration in the units the rules use per fix: milliseconds, centi-km/h.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub offset_ms: i64,
    pub stopped_max_ckmh: i32,
    pub reorder_ms: i64,
    pub reorder_adaptive: bool,
    pub snapshot_ms: i64,
    pub class_limit_ckmh: [i32; 6],
    pub unregistered_limit_ckmh: Option<i32>,
    pub os_min_ms: i64,
    pub os_counted_over_ckmh: i32,
    /// band1_from, band2_from, band3_over, band4_over.
    pub os_bands_ckmh: [i32; 4],
    pub os_max_gap_ms: i64,
    pub cont_max_ms: i64,
    pub cont_warn_ms: Option<i64>,
    pub daily_max_ms: i64,
    pub weekly_max_ms: Option<i64>,
    pub break_ms: i64,
    pub drive_gap_ms: i64,
    pub corridor_m: f64,
    pub leave_ms: i64,
    pub back_ms: i64,
    pub depots_on_route: bool,
    pub restricted_trigger: RestrictedTrigger,
    pub no_signal_ms: i64,
    pub gap_moving_ms: i64,
    pub gap_stopped_ms: i64,
    pub min_stop_ms: i64,
    pub transit: bool,
    pub stop_radius_m: f64,
    pub confirm_m: f64,
    pub match_window_ms: i64,
    pub early_ms: i64,
    pub late_ms: i64,
    pub deviation_level: Level,
    pub skipped_level: Level,
    pub abandon_ms: i64,
}

impl Params {
    pub(crate) fn new(c: &RulesConfig) -> Self {
        let ms = |s: u32| i64::from(s) * 1000;
        let cl = &c.overspeed.class_limits_kmh;
        let b = &c.overspeed.bands;
        let d = &c.driving;
        Self {
            offset_ms: i64::from(c.utc_offset.seconds()) * 1000,
            stopped_max_ckmh: ckmh(c.stopped_max_kmh),
            reorder_ms: ms(c.reorder_window_s),
            reorder_adaptive: c.reorder_window_adaptive,
            snapshot_ms: ms(c.snapshot_interval_s.max(1)),
            class_limit_ckmh: [
                cl.bus,
                cl.coach,
                cl.container,
                cl.tractor,
                cl.light_truck,
                cl.car,
            ]
            .map(ckmh),
            unregistered_limit_ckmh: c.overspeed.unregistered_limit_kmh.map(ckmh),
            os_min_ms: ms(c.overspeed.min_duration_s),
            os_counted_over_ckmh: ckmh(c.overspeed.counted_excess_over_kmh),
            os_bands_ckmh: [
                b.band1_from_kmh,
                b.band2_from_kmh,
                b.band3_over_kmh,
                b.band4_over_kmh,
            ]
            .map(ckmh),
            os_max_gap_ms: ms(c.overspeed.max_fix_gap_s.unwrap_or(c.gaps.moving_max_s)),
            cont_max_ms: ms(d.continuous_max_s),
            cont_warn_ms: (d.warn_before_s > 0 && d.warn_before_s < d.continuous_max_s)
                .then(|| ms(d.continuous_max_s - d.warn_before_s)),
            daily_max_ms: ms(d.daily_max_s),
            weekly_max_ms: d.weekly_enabled.then(|| ms(d.weekly_max_s)),
            break_ms: ms(d.break_min_s),
            drive_gap_ms: ms(d.max_counted_gap_s.unwrap_or(c.gaps.moving_max_s)),
            corridor_m: c.off_route.corridor_m,
            leave_ms: ms(c.off_route.leave_after_s),
            back_ms: ms(c.off_route.back_after_s),
            depots_on_route: c.off_route.depots_count_as_on_route,
            restricted_trigger: c.zones.restricted_trigger,
            no_signal_ms: ms(c.no_signal.after_s),
            gap_moving_ms: ms(c.gaps.moving_max_s),
            gap_stopped_ms: ms(c.gaps.stopped_max_s),
            min_stop_ms: ms(c.stops.min_stop_s),
            transit: c.transit.enabled,
            stop_radius_m: c.transit.stop_radius_m,
            confirm_m: c.transit.confirm_m,
            match_window_ms: ms(c.transit.match_window_s),
            early_ms: ms(c.transit.early_s),
            late_ms: ms(c.transit.late_s),
            deviation_level: c.transit.deviation_level,
            skipped_level: c.transit.skipped_level,
            abandon_ms: ms(c.transit.abandon_after_s),
        }
    }

    /// The class limit, centi-km/h; `None` for unregistered vehicles without a default.
    pub(crate) fn class_limit(&self, class: Option<VehicleClass>) -> Option<i32> {
        let Some(c) = class else {
            return self.unregistered_limit_ckmh;
        };
        let i = match c {
            VehicleClass::Bus => 0,
            VehicleClass::Coach => 1,
            VehicleClass::Container => 2,
            VehicleClass::Tractor => 3,
            VehicleClass::LightTruck => 4,
            VehicleClass::Car => 5,
        };
        Some(self.class_limit_ckmh[i])
    }

    /// Severity band 1..=4 of an excess (centi-km/h), `None` below band 1.
    pub(crate) fn severity(&self, excess_ckmh: i32) -> Option<u8> {
        let [b1, b2, b3, b4] = self.os_bands_ckmh;
        match excess_ckmh {
            e if e > b4 => Some(4),
            e if e > b3 => Some(3),
            e if e >= b2 => Some(2),
            e if e >= b1 => Some(1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_docs_rules_md() {
        let c = RulesConfig::default();
        assert_eq!(c.utc_offset.to_string(), "+07:00");
        assert_eq!(c.driving.continuous_max_s, 14_400);
        assert_eq!(
            c.overspeed
                .class_limits_kmh
                .for_class(VehicleClass::Tractor),
            70.0
        );
        c.validate().unwrap();
    }

    #[test]
    fn partial_json_keeps_other_defaults_and_rejects_unknown_fields() {
        let c: RulesConfig =
            serde_json::from_str(r#"{"utc_offset":"+05:30","overspeed":{"min_duration_s":30}}"#)
                .unwrap();
        assert_eq!(c.utc_offset.seconds(), 5 * 3600 + 1800);
        assert_eq!(c.overspeed.min_duration_s, 30);
        assert_eq!(c.overspeed.class_limits_kmh.bus, 70.0);
        assert!(
            serde_json::from_str::<RulesConfig>(r#"{"overspeed":{"min_durration_s":30}}"#).is_err()
        );
        assert!(serde_json::from_str::<RulesConfig>(r#"{"utc_offset":"7"}"#).is_err());
        let back: RulesConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validate_catches_nonsense() {
        let mut c = RulesConfig::default();
        c.overspeed.bands.band3_over_kmh = 40.0;
        assert_eq!(c.validate(), Err(RulesConfigError::BandsOrder));
        let mut c = RulesConfig::default();
        let mut t = RulesConfig::default();
        t.transit.skipped_level = Level::Violation;
        assert_eq!(
            t.validate(),
            Err(RulesConfigError::InfoOrWarning("transit.skipped_level"))
        );
        c.off_route.corridor_m = 0.0;
        assert!(matches!(
            c.validate(),
            Err(RulesConfigError::NotPositive("off_route.corridor_m"))
        ));
    }

    #[test]
    fn severity_edges() {
        let p = Params::new(&RulesConfig::default());
        let cases = [
            (499, None),
            (500, Some(1)),
            (510, Some(1)),
            (999, Some(1)),
            (1000, Some(2)),
            (2000, Some(2)),
            (2010, Some(3)),
            (3500, Some(3)),
            (3510, Some(4)),
        ];
        for (e, s) in cases {
            assert_eq!(p.severity(e), s, "excess {e}");
        }
    }
}
