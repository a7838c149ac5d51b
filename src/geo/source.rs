//! Where routes and zones come from, and building the geo index from there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::geo::{self, GeoError, GeoIndex, DEFAULT_TERMINAL_RADIUS_M};

/// Route and zone sources (reloaded on SIGHUP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoConfig {
    /// GeoJSON files of LineString / MultiLineString routes (`route_id`, `corridor_m`,
    /// `terminals`); features sharing a `route_id` are one route.
    pub routes: Vec<PathBuf>,
    /// GTFS feed directories (routes.txt, trips.txt, stops.txt, stop_times.txt and
    /// shapes.txt when present).
    pub gtfs: Vec<PathBuf>,
    /// GeoJSON files of zone polygons (kind, classes, banned hours, speed limit).
    pub zones: Vec<PathBuf>,
    /// Also load the demo area's routes and zones built into the binary.
    pub demo: bool,
    /// Radius around each route terminal (first and last stop of a trip) that counts
    /// as on route, metres, for routes that do not set their own; 0 turns it off.
    pub terminal_radius_m: f64,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            gtfs: Vec::new(),
            zones: Vec::new(),
            demo: false,
            terminal_radius_m: DEFAULT_TERMINAL_RADIUS_M,
        }
    }
}

impl GeoConfig {
    /// Loads every source into one index.
    pub fn load(&self) -> Result<GeoIndex, GeoError> {
        if !(self.terminal_radius_m.is_finite() && self.terminal_radius_m >= 0.0) {
            return Err(GeoError::Document {
                origin: "geo.terminal_radius_m".into(),
                reason: format!("must be a number >= 0, got {}", self.terminal_radius_m),
            });
        }
        let mut routes = Vec::new();
        let mut zones = Vec::new();
        if self.demo {
            routes.extend(geo::parse_routes_geojson(
                super::demo::DEMO_ROUTES_GEOJSON,
                "built-in demo routes",
            )?);
            zones.extend(geo::parse_zones_geojson(
                super::demo::DEMO_ZONES_GEOJSON,
                "built-in demo zones",
            )?);
        }
        for p in &self.routes {
            routes.extend(geo::load_routes_geojson(p)?);
        }
        let mut schedules = Vec::new();
        for p in &self.gtfs {
            let (r, _, schedule) = geo::load_feed(p, Some(self.terminal_radius_m))?;
            routes.extend(r);
            schedules.push(schedule);
        }
        for p in &self.zones {
            zones.extend(geo::load_zones_geojson(p)?);
        }
        for r in &mut routes {
            r.terminal_radius_m.get_or_insert(self.terminal_radius_m);
        }
        Ok(GeoIndex::new(routes, zones)?.with_schedules(schedules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_geography_loads() {
        let g = GeoConfig {
            demo: true,
            ..Default::default()
        }
        .load()
        .unwrap();
        assert_eq!(g.route_count(), 4);
        assert_eq!(g.zone_count(), 9);
    }

    #[test]
    fn shipped_files_load() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let g = GeoConfig {
            routes: vec![root.join("fixtures/demo/routes.geojson")],
            gtfs: vec![root.join("fixtures/gtfs")],
            zones: vec![root.join("fixtures/demo/zones.geojson")],
            ..Default::default()
        }
        .load()
        .unwrap();
        assert_eq!(g.route_count(), 6);
        assert_eq!(g.zone_count(), 9);
    }
}
