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

    /// Every class, in declaration order.
    pub const ALL: [VehicleClass; 6] = [
        VehicleClass::Bus,
        VehicleClass::Coach,
        VehicleClass::Container,
        VehicleClass::Tractor,
        VehicleClass::LightTruck,
        VehicleClass::Car,
    ];
}

impl std::str::FromStr for VehicleClass {
    type Err = String;

    /// The name [`VehicleClass::as_str`] gives.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|c| c.as_str()).collect();
                format!("unknown vehicle class {s:?}: one of {}", names.join(", "))
            })
    }
}

/// A vehicle in the registry (from configuration or the admin API).
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
    /// Id of the GPS device fitted (IMEI, JT/T 808 terminal phone number, OsmAnd app
    /// id): the device gateway maps its frames to this vehicle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// Checks a device id (IMEI, terminal phone number, app id): 1 to 32 ASCII letters,
/// digits, `-` or `_`, as devices report them; returns it trimmed.
pub fn device_id(raw: &str) -> Result<String, String> {
    let d = raw.trim();
    let ok = !d.is_empty()
        && d.len() <= 32
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match ok {
        true => Ok(d.to_string()),
        false => Err(format!(
            "{raw:?} is not a device id: 1 to 32 letters, digits, '-' or '_'"
        )),
    }
}
