//! The live driving-time state of a vehicle and of its driver after its newest fix:
//! what the rules report and the writer keeps current for the API.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::Serialize;

use super::{DriverId, VehicleId};

/// Driving-time state of a vehicle (and of the driver logged in on it) right after
/// the fix at `as_of`, as the rules saw it (event time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveState {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The driver logged in at the fix (`None`: the figures are the vehicle's own).
    pub driver: Option<DriverId>,
    /// Since when this driver has been on this vehicle (their first fix on it).
    pub driver_since: Option<DateTime<Utc>>,
    /// Time of the fix the state reflects.
    pub as_of: DateTime<Utc>,
    /// The vehicle was moving at that fix.
    pub moving: bool,
    /// Continuous driving so far (since the last break), seconds.
    pub continuous_s: f64,
    /// End of the last interval counted as driving: a break runs from it.
    pub last_drive_end: Option<DateTime<Utc>>,
    /// Local day `daily_s` belongs to.
    pub day: NaiveDate,
    /// Driving in that local day, seconds.
    pub daily_s: f64,
    /// Driving in the local ISO week of `day`, seconds.
    pub weekly_s: f64,
    /// Inside its route's corridor (`None`: no registered route).
    pub on_route: Option<bool>,
    /// The scheduled trip it runs (`None`: none assigned). Boxed: most vehicles have none.
    pub trip: Option<Box<LiveTrip>>,
}

/// The scheduled (GTFS) trip a bus is running at its newest fix, for the live list,
/// the map and GTFS-realtime (the run itself is stored in `trip_runs` once it ends).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveTrip {
    /// GTFS `trip_id`.
    pub trip_id: String,
    /// GTFS `route_id`.
    pub route_id: String,
    /// Local service date.
    pub service_date: NaiveDate,
    /// Scheduled first departure of this run.
    pub scheduled_start: DateTime<Utc>,
    /// GTFS `direction_id`, when the feed gives it.
    pub direction: Option<u8>,
    /// Headsign of the trip, when the feed gives it.
    pub headsign: Option<String>,
    /// Next stop's `stop_id` (`None`: the trip's last stop is behind).
    pub next_stop_id: Option<String>,
    /// Next stop's `stop_sequence`.
    pub next_stop_sequence: Option<u32>,
    /// Next stop's name, when the feed gives it.
    pub next_stop_name: Option<String>,
    /// Deviation at the last observed stop, seconds (late > 0).
    pub delay_s: Option<i32>,
    /// Match confidence, 0..=100.
    pub confidence: u8,
}

/// Limits the live figures are read against (from the rules' configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrivingLimits {
    /// Continuous driving limit, seconds (4 h).
    pub continuous_max_s: f64,
    /// Daily driving limit, seconds (10 h).
    pub daily_max_s: f64,
    /// Weekly driving limit, seconds (48 h; `None`: not checked).
    pub weekly_max_s: Option<f64>,
    /// A break this long ends continuous driving, seconds (15 min).
    pub break_s: f64,
    /// Local time offset east of UTC, seconds.
    pub utc_offset_s: i32,
}

/// The stored figures read at wall-clock time `now`: a break already long enough
/// ends continuous driving, a new local day or week starts from zero.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DrivingNow {
    /// Continuous driving so far, seconds.
    pub continuous_s: f64,
    /// Time left before the continuous limit, seconds (0 at or past it).
    pub continuous_left_s: f64,
    /// Driving today (local day), seconds.
    pub daily_s: f64,
    /// Time left before the daily limit, seconds.
    pub daily_left_s: f64,
    /// Driving this local ISO week, seconds.
    pub weekly_s: f64,
}

/// The local date of `t` at `offset_s` east of UTC.
pub fn local_date(t: DateTime<Utc>, offset_s: i32) -> NaiveDate {
    (t + Duration::seconds(i64::from(offset_s))).date_naive()
}

/// Reads stored figures (`continuous_s` and `last_drive_end`, `daily_s` of local
/// `day`, `weekly_s` of that day's ISO week) at `now`.
pub fn driving_now(
    lim: &DrivingLimits,
    now: DateTime<Utc>,
    continuous_s: f64,
    last_drive_end: Option<DateTime<Utc>>,
    day: Option<NaiveDate>,
    daily_s: f64,
    weekly_s: f64,
) -> DrivingNow {
    let broke =
        last_drive_end.is_none_or(|e| (now - e).num_milliseconds() as f64 / 1000.0 >= lim.break_s);
    let continuous_s = if broke { 0.0 } else { continuous_s };
    let today = local_date(now, lim.utc_offset_s);
    let daily_s = if day == Some(today) { daily_s } else { 0.0 };
    let same_week = day.is_some_and(|d| d.iso_week() == today.iso_week());
    let weekly_s = if same_week { weekly_s } else { 0.0 };
    DrivingNow {
        continuous_s,
        continuous_left_s: (lim.continuous_max_s - continuous_s).max(0.0),
        daily_s,
        daily_left_s: (lim.daily_max_s - daily_s).max(0.0),
        weekly_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn lim() -> DrivingLimits {
        DrivingLimits {
            continuous_max_s: 14_400.0,
            daily_max_s: 36_000.0,
            weekly_max_s: Some(172_800.0),
            break_s: 900.0,
            utc_offset_s: 25_200,
        }
    }

    #[test]
    fn figures_are_read_at_now() {
        // Tuesday 2026-11-24 10:00 local.
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        let end = now - Duration::minutes(2);
        let n = driving_now(
            &lim(),
            now,
            7_200.0,
            Some(end),
            Some(today),
            9_000.0,
            20_000.0,
        );
        assert_eq!(n.continuous_s, 7_200.0);
        assert_eq!(n.continuous_left_s, 7_200.0);
        assert_eq!(n.daily_left_s, 27_000.0);
        assert_eq!(n.weekly_s, 20_000.0);
        // A break of 15 min is taken once the vehicle has been still that long.
        let n = driving_now(
            &lim(),
            now + Duration::minutes(13),
            7_200.0,
            Some(end),
            Some(today),
            9_000.0,
            1.0,
        );
        assert_eq!(n.continuous_s, 0.0);
        assert_eq!(n.continuous_left_s, 14_400.0);
        // Yesterday's driving is not today's; Monday of the same week still counts weekly.
        let monday = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let n = driving_now(&lim(), now, 0.0, None, Some(monday), 9_000.0, 5.0);
        assert_eq!((n.daily_s, n.weekly_s), (0.0, 5.0));
        let sunday = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let n = driving_now(&lim(), now, 0.0, None, Some(sunday), 9_000.0, 5.0);
        assert_eq!(n.weekly_s, 0.0);
        // Past the limit: nothing left, not negative.
        let n = driving_now(&lim(), now, 15_000.0, Some(now), Some(today), 37_000.0, 0.0);
        assert_eq!((n.continuous_left_s, n.daily_left_s), (0.0, 0.0));
    }
}
