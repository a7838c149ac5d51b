//! Registered vehicles and their regulatory class.

use serde::{Deserialize, Serialize};

use super::ids::{CooperativeId, VehicleId};

/// Regulatory class of a vehicle; decides speed limits and zone bans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VehicleClass {
    /// Fixed-route bus.
    Bus,
    /// Coach (passenger car over 30 seats on contract or inter-provincial runs).
    Coach,
    /// Container truck (truck over 3.5 t).
    Container,
    /// Tractor unit with semi-trailer.
    Tractor,
    /// Truck up to 3.5 t.
    LightTruck,
    /// Passenger car up to 30 seats.
    Car,
}

impl VehicleClass {
    /// Stable lower-case name, as stored and configured.
    pub fn as_str(self) -> &'static str {
        match self {
            VehicleClass::Bus => "bus",
            VehicleClass::Coach => "coach",
            VehicleClass::Container => "container",
            VehicleClass::Tractor => "tractor",
            VehicleClass::LightTruck => "light_truck",
            VehicleClass::Car => "car",
        }
    }
}

/// A vehicle in the registry (from configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vehicle {
    /// Id used in topics and payloads (usually the plate without spaces).
    pub id: VehicleId,
    /// Registration plate as printed, for display.
    #[serde(default)]
    pub plate: Option<String>,
    /// Cooperative that operates it.
    pub cooperative: CooperativeId,
    /// Regulatory class.
    pub class: VehicleClass,
    /// Registered route id (fixed-route buses).
    #[serde(default)]
    pub route: Option<String>,
}
