//! The demo area's routes and zones (Thu Dau Mot, Di An, Thuan An; ICD Song Than,
//! Cat Lai), built into the binary for `fleetwatch demo` and `geo.demo = true`.

/// Registered bus routes and truck corridors (GeoJSON LineStrings, `[lon, lat]`).
pub const DEMO_ROUTES_GEOJSON: &str = include_str!("../../fixtures/demo/routes.geojson");
/// Depots, terminals, ports, restricted and speed zones (GeoJSON Polygons, `[lon, lat]`).
pub const DEMO_ZONES_GEOJSON: &str = include_str!("../../fixtures/demo/zones.geojson");
