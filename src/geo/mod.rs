//! Geometry for the compliance rules: registered routes (corridors), zones
//! (geofences, restricted areas, speed zones) and the spatial index that answers,
//! per fix, "how far from its route, and in which zones".
//!
//! Coordinate order: `geo` types and GeoJSON are (x = lon, y = lat) in WGS84 degrees;
//! payloads and [`crate::domain::Fix`] getters are lat/lon. Distances are metres,
//! computed in a local metric plane (never in degrees).
//!
//! Loaders read GeoJSON (by hand with `serde_json`) and GTFS feeds. A
//! [`GeoIndex`] is built once from routes and zones, is immutable, and is shared
//! behind an `Arc` and swapped whole on reload.

pub mod demo;
mod error;
mod frame;
mod geojson;
mod grid;
mod gtfs;
mod index;
mod route;
mod schedule;
mod source;
mod zone;

pub use error::GeoError;
pub use frame::{distance_m, LocalFrame, M_PER_DEG};
pub use geojson::{
    load_routes_geojson, load_zones_geojson, parse_routes_geojson, parse_zones_geojson,
    routes_to_geojson, zones_to_geojson,
};
pub use gtfs::{load_feed, load_gtfs, load_routes_gtfs, GtfsSummary};
pub use index::GeoIndex;
pub use route::{Route, RouteIndex, RouteLocation, DEFAULT_TERMINAL_RADIUS_M};
pub use schedule::{
    load_schedule, Frequency, RouteTrips, Schedule, ScheduledTrip, Service, ShapeFix, StopPoint,
    StopTime, TripShape,
};
pub use source::GeoConfig;
pub use zone::{TimeRange, Zone, ZoneKey, ZoneKind};
