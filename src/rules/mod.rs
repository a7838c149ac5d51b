//! Compliance rules (Circular 12/2020 art. 5 and the limits of `docs/rules.md`):
//! overspeed, driving time, wrong route, restricted zones and geofences, no signal,
//! data gaps, stops and trips. One file per rule with its per-vehicle state; the
//! [`Engine`] orders each vehicle's fixes, looks them up in the [`crate::geo::GeoIndex`]
//! and feeds every rule. Pure and synchronous; all rules but no-signal run on the
//! fixes' own time, so re-processing a track gives the same alerts with the same ids.

mod alert;
mod config;
mod driving;
mod engine;
mod gaps;
mod no_signal;
mod off_route;
mod overspeed;
mod snapshot;
mod state;
mod transit;
mod trips;
mod zones;

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod transit_tests;

pub use alert::{device_alarm, Alert, AlertId, AlertKind, AlertStatus, Level};
pub use config::{
    ClassLimitsKmh, DrivingConfig, GapsConfig, NoSignalConfig, OffRouteConfig, OverspeedConfig,
    RestrictedTrigger, RulesConfig, RulesConfigError, SeverityBands, StopsConfig, TransitConfig,
    UtcOffset, ZonesConfig,
};
pub use engine::{Engine, Output, Restart, Stop, Trip};
pub use snapshot::SnapshotError;
pub use state::VehicleState;
pub use transit::TripProgress;
