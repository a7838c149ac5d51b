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
