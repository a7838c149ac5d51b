//! A completed trip of a vehicle: from its first moving fix to the stop that ended it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CooperativeId, DriverId, VehicleId};

/// A completed trip: from the end of one stop to the start of the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// Its cooperative, when registered.
    pub cooperative: Option<CooperativeId>,
    /// Driver logged in when the trip started.
    pub driver: Option<DriverId>,
    /// First moving fix.
    pub start: DateTime<Utc>,
    /// First fix of the stop that ended it.
    pub end: DateTime<Utc>,
    /// Start latitude, degrees.
    pub start_lat: f64,
    /// Start longitude, degrees.
    pub start_lon: f64,
    /// End latitude, degrees.
    pub end_lat: f64,
    /// End longitude, degrees.
    pub end_lon: f64,
    /// Sum of straight lines between consecutive fixes, metres.
    pub distance_m: f64,
    /// `end - start`, seconds.
    pub duration_s: f64,
    /// Highest speed of the trip, km/h.
    pub max_speed_kmh: f64,
}

/// A bus's run of a scheduled (GTFS) trip, as the rules observed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripRun {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// Its cooperative, when registered.
    pub cooperative: Option<CooperativeId>,
    /// GTFS `trip_id`.
    pub trip_id: String,
    /// GTFS `route_id`.
    pub route_id: String,
    /// Local service date the trip ran on.
    pub service_date: chrono::NaiveDate,
    /// Scheduled first departure (of this run, for a frequency-based trip).
    pub scheduled_start: DateTime<Utc>,
    /// Fix at which the run was matched (departure from the first stop when seen).
    pub start: DateTime<Utc>,
    /// Fix at which it ended (arrival at the last stop, or abandonment).
    pub end: DateTime<Utc>,
    /// How sure the match is, 0..=100.
    pub confidence: u8,
    /// The bus reached the trip's last stop.
    pub completed: bool,
    /// Stops served (arrived at).
    pub stops_served: u16,
    /// Stops passed without stopping.
    pub stops_skipped: u16,
    /// Stops of the trip.
    pub stops_total: u16,
    /// Deviation from the schedule at the last observed stop, seconds (late > 0).
    pub last_delay_s: Option<i32>,
    /// Kilometres in service, as metres along the trip's shape from where the run
    /// started to the furthest point reached (`None`: unknown, a run carried over
    /// from a checkpoint of an older version).
    pub distance_m: Option<f64>,
}

/// A bus at one stop of the trip it runs (or passing it without stopping).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopEvent {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// Its cooperative, when registered.
    pub cooperative: Option<CooperativeId>,
    /// GTFS `trip_id`.
    pub trip_id: String,
    /// Local service date of the run.
    pub service_date: chrono::NaiveDate,
    /// GTFS `stop_sequence`.
    pub stop_sequence: u32,
    /// GTFS `stop_id`.
    pub stop_id: String,
    /// The fix at which the event was decided (a recomputation from before it
    /// states it again).
    pub observed: DateTime<Utc>,
    /// Scheduled arrival.
    pub scheduled_arrival: DateTime<Utc>,
    /// Scheduled departure.
    pub scheduled_departure: DateTime<Utc>,
    /// First fix within the stop radius (`None` at the first stop when the bus was
    /// already waiting there, and for a skipped stop).
    pub arrival: Option<DateTime<Utc>>,
    /// Last fix within the stop radius (`None` at the last stop and when skipped).
    pub departure: Option<DateTime<Utc>>,
    /// `departure - arrival`, seconds, when both are known.
    pub dwell_s: Option<f64>,
    /// Observed minus scheduled, seconds (late > 0): the arrival, or the departure
    /// at the first stop.
    pub deviation_s: Option<i32>,
    /// Not served: passed without coming within the stop radius, or driven through
    /// it without a stopped fix and in less than 20 s.
    pub skipped: bool,
}
