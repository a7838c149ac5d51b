//! The demo geography, embedded from `fixtures/demo/*.geojson` so the binary has no
//! runtime path dependency. Only what the simulator needs is read here; the compliance
//! engine reads the same files with its own loader.

use geo::{LineString, Polygon};
use serde::Deserialize;

use super::path::{Path, SpeedZone};

pub use crate::geo::demo::{DEMO_ROUTES_GEOJSON, DEMO_ZONES_GEOJSON};

/// Why an embedded fixture could not be read (a broken fixture, caught by the tests).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FixtureError {
    /// Not a GeoJSON FeatureCollection of the expected shape.
    #[error("fixture is not the expected GeoJSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A line with fewer than two distinct vertices.
    #[error("route {0} has fewer than two distinct vertices")]
    DegenerateRoute(String),
    /// The simulator needs a route or zone the fixture does not have.
    #[error("fixture has no route {0}")]
    MissingRoute(String),
}

#[derive(Deserialize)]
struct FeatureCollection<P> {
    features: Vec<Feature<P>>,
}

#[derive(Deserialize)]
struct Feature<P> {
    properties: P,
    geometry: Geometry,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Geometry {
    LineString { coordinates: Vec<[f64; 2]> },
    Polygon { coordinates: Vec<Vec<[f64; 2]>> },
}

#[derive(Deserialize)]
struct RouteProps {
    route_id: String,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct ZoneProps {
    kind: String,
    #[serde(default)]
    speed_limit_kmh: Option<f64>,
}

/// A line from the routes fixture.
#[derive(Debug, Clone)]
pub(crate) struct RouteLine {
    pub route_id: String,
    /// `true` for registered bus routes, `false` for truck corridors.
    pub is_bus_route: bool,
    pub path: Path,
}

/// A polygon from the zones fixture.
#[derive(Debug, Clone)]
pub(crate) struct ZoneArea {
    pub kind: String,
    pub polygon: Polygon<f64>,
    pub speed_limit_kmh: Option<f64>,
}

/// The routes and zones of a fixture pair.
#[derive(Debug, Clone)]
pub(crate) struct Geography {
    pub routes: Vec<RouteLine>,
    pub zones: Vec<ZoneArea>,
}

impl Geography {
    /// Parses a routes and a zones FeatureCollection.
    pub(crate) fn parse(routes_json: &str, zones_json: &str) -> Result<Geography, FixtureError> {
        let routes: FeatureCollection<RouteProps> = serde_json::from_str(routes_json)?;
        let zones: FeatureCollection<ZoneProps> = serde_json::from_str(zones_json)?;
        let routes = routes
            .features
            .into_iter()
            .filter_map(|f| match f.geometry {
                Geometry::LineString { coordinates } => Some((f.properties, coordinates)),
                Geometry::Polygon { .. } => None,
            })
            .map(|(props, coords)| {
                // GeoJSON is [lon, lat]; paths are (lat, lon) like payloads.
                let pts: Vec<(f64, f64)> = coords.iter().map(|c| (c[1], c[0])).collect();
                let path = Path::new(&pts)
                    .ok_or_else(|| FixtureError::DegenerateRoute(props.route_id.clone()))?;
                Ok(RouteLine {
                    is_bus_route: props.kind.as_deref() != Some("truck_corridor"),
                    route_id: props.route_id,
                    path,
                })
            })
            .collect::<Result<Vec<_>, FixtureError>>()?;
        let zones = zones
            .features
            .into_iter()
            .filter_map(|f| match f.geometry {
                Geometry::Polygon { mut coordinates } if !coordinates.is_empty() => {
                    let exterior: Vec<(f64, f64)> = coordinates
                        .swap_remove(0)
                        .iter()
                        .map(|c| (c[0], c[1]))
                        .collect();
                    Some(ZoneArea {
                        kind: f.properties.kind,
                        polygon: Polygon::new(LineString::from(exterior), vec![]),
                        speed_limit_kmh: f.properties.speed_limit_kmh,
                    })
                }
                _ => None,
            })
            .collect();
        Ok(Geography { routes, zones })
    }

    /// The embedded demo fixtures.
    pub(crate) fn demo() -> Result<Geography, FixtureError> {
        Geography::parse(DEMO_ROUTES_GEOJSON, DEMO_ZONES_GEOJSON)
    }

    /// The line of `route_id`.
    pub(crate) fn route(&self, route_id: &str) -> Result<&RouteLine, FixtureError> {
        self.routes
            .iter()
            .find(|r| r.route_id == route_id)
            .ok_or_else(|| FixtureError::MissingRoute(route_id.to_owned()))
    }

    /// Zones that carry a speed limit.
    pub(crate) fn speed_zones(&self) -> Vec<SpeedZone> {
        self.zones
            .iter()
            .filter(|z| z.kind == "speed_zone")
            .filter_map(|z| {
                z.speed_limit_kmh.map(|limit_kmh| SpeedZone {
                    polygon: z.polygon.clone(),
                    limit_kmh,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{Contains, Point};

    #[test]
    fn demo_fixtures_parse_and_have_what_the_demo_needs() {
        let g = Geography::demo().unwrap();
        let bus: Vec<_> = g.routes.iter().filter(|r| r.is_bus_route).collect();
        assert_eq!(bus.len(), 4);
        for r in &g.routes {
            let n = r.path.points().count();
            assert!((50..=400).contains(&n), "{} has {n} vertices", r.route_id);
            for (lat, lon) in r.path.points() {
                assert!((10.70..11.10).contains(&lat) && (106.60..106.85).contains(&lon));
            }
        }
        for kind in ["depot", "terminal", "port", "restricted", "speed_zone"] {
            assert!(g.zones.iter().any(|z| z.kind == kind), "no {kind} zone");
        }
        assert_eq!(g.speed_zones().len(), 1);
        // Every bus route starts and ends in a terminal or depot.
        for r in g.routes.iter().filter(|r| r.is_bus_route) {
            let pts: Vec<_> = r.path.points().collect();
            for (lat, lon) in [pts[0], pts[pts.len() - 1]] {
                let p = Point::new(lon, lat);
                assert!(
                    g.zones.iter().any(|z| z.kind != "restricted"
                        && z.kind != "speed_zone"
                        && z.polygon.contains(&p)),
                    "{} end ({lat}, {lon}) in no terminal or depot",
                    r.route_id
                );
            }
        }
    }

    #[test]
    fn every_zone_has_the_documented_properties() {
        let zones: serde_json::Value = serde_json::from_str(DEMO_ZONES_GEOJSON).unwrap();
        for f in zones["features"].as_array().unwrap() {
            let p = &f["properties"];
            assert!(p["zone_id"].is_string() && p["name"].is_string(), "{p}");
            let kind = p["kind"].as_str().unwrap();
            assert!(
                ["depot", "terminal", "port", "restricted", "speed_zone"].contains(&kind),
                "{kind}"
            );
            let ring = f["geometry"]["coordinates"][0].as_array().unwrap();
            assert_eq!(ring.first(), ring.last(), "ring of {p} not closed");
        }
    }
}
