//! GeoJSON loaders for routes (LineString features) and zones (Polygon features),
//! parsed by hand with `serde_json`. Positions are `[lon, lat]` degrees (RFC 7946).

use std::path::Path;

use ::geo::{Coord, LineString, MultiPolygon, Polygon};
use serde_json::{Map, Value};

use super::error::GeoError;
use super::route::Route;
use super::zone::{TimeRange, Zone, ZoneKind};
use crate::domain::VehicleClass;

/// Route features whose `kind` is absent or one of these are bus routes; any other
/// kind (e.g. `truck_corridor`) is skipped.
const ROUTE_KINDS: [&str; 2] = ["route", "bus_route"];

/// Reads routes from a GeoJSON file of LineString / MultiLineString features with
/// properties `route_id`, optional `name` and optional `corridor_m` (metres).
pub fn load_routes_geojson(path: &Path) -> Result<Vec<Route>, GeoError> {
    parse_routes_geojson(&read(path)?, &path.display().to_string())
}

/// Parses routes from GeoJSON text; `origin` names the source in errors.
pub fn parse_routes_geojson(text: &str, origin: &str) -> Result<Vec<Route>, GeoError> {
    let doc = parse_doc(text, origin)?;
    let mut routes = Vec::new();
    for (index, f) in features(&doc, origin)?.into_iter().enumerate() {
        let props = properties(f);
        let id = id_prop(props, "route_id");
        let err = |reason: String| GeoError::Feature {
            origin: origin.to_string(),
            index,
            id: id.clone(),
            reason,
        };
        if let Some(kind) = props.and_then(|p| p.get("kind")).and_then(Value::as_str) {
            if !ROUTE_KINDS.contains(&kind) {
                tracing::debug!(origin, index, kind, "skipping non-route line feature");
                continue;
            }
        }
        let Some(route_id) = id.clone() else {
            return Err(err("missing property route_id".into()));
        };
        let geometry = f.get("geometry").ok_or_else(|| err("no geometry".into()))?;
        let parts = match geometry_type(geometry) {
            Some("LineString") => vec![line(coordinates(geometry).map_err(&err)?).map_err(&err)?],
            Some("MultiLineString") => array(coordinates(geometry).map_err(&err)?)
                .map_err(&err)?
                .iter()
                .map(line)
                .collect::<Result<_, _>>()
                .map_err(&err)?,
            other => {
                return Err(err(format!(
                    "geometry must be LineString or MultiLineString, got {}",
                    other.unwrap_or("nothing")
                )))
            }
        };
        let terminals = match props.and_then(|p| p.get("terminals")) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => array(v)
                .map_err(&err)?
                .iter()
                .map(position)
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("terminals: {e}")))?,
        };
        let terminal_radius_m = match props.and_then(|p| p.get("terminal_radius_m")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| {
                        err(format!(
                            "terminal_radius_m must be a number >= 0, got {}",
                            short(v)
                        ))
                    })?,
            ),
        };
        let route = Route {
            id: route_id,
            name: str_prop(props, "name"),
            corridor_m: positive_prop(props, "corridor_m").map_err(&err)?,
            parts,
            terminals,
            terminal_radius_m,
        };
        // Several features with one route_id are one route (directions, variants).
        match routes.iter_mut().find(|r: &&mut Route| r.id == route.id) {
            None => routes.push(route),
            Some(r) => {
                for (what, a, b) in [
                    ("corridor_m", r.corridor_m, route.corridor_m),
                    (
                        "terminal_radius_m",
                        r.terminal_radius_m,
                        route.terminal_radius_m,
                    ),
                ] {
                    if a.is_some() && b.is_some() && a != b {
                        return Err(err(format!(
                            "{what} differs from an earlier feature of the same route_id"
                        )));
                    }
                }
                r.corridor_m = r.corridor_m.or(route.corridor_m);
                r.terminal_radius_m = r.terminal_radius_m.or(route.terminal_radius_m);
                r.name = r.name.take().or(route.name);
                r.parts.extend(route.parts);
                r.terminals.extend(route.terminals);
            }
        }
    }
    Ok(routes)
}

/// Reads zones from a GeoJSON file of Polygon / MultiPolygon features with properties
/// `zone_id`, `kind` (`depot`, `terminal`, `port`, `restricted`, `speed_zone`),
/// optional `name`, `classes`, `banned_hours` (`[{"from": "06:00", "to": "22:00"}]`,
/// local time) and `speed_limit_kmh`.
pub fn load_zones_geojson(path: &Path) -> Result<Vec<Zone>, GeoError> {
    parse_zones_geojson(&read(path)?, &path.display().to_string())
}

/// Parses zones from GeoJSON text; `origin` names the source in errors.
pub fn parse_zones_geojson(text: &str, origin: &str) -> Result<Vec<Zone>, GeoError> {
    let doc = parse_doc(text, origin)?;
    let mut zones = Vec::new();
    for (index, f) in features(&doc, origin)?.into_iter().enumerate() {
        let props = properties(f);
        let id = id_prop(props, "zone_id");
        let err = |reason: String| GeoError::Feature {
            origin: origin.to_string(),
            index,
            id: id.clone(),
            reason,
        };
        let Some(zone_id) = id.clone() else {
            return Err(err("missing property zone_id".into()));
        };
        let kind_str =
            str_prop(props, "kind").ok_or_else(|| err("missing property kind".into()))?;
        let kind = ZoneKind::parse(&kind_str).ok_or_else(|| {
            err(format!(
                "unknown kind {kind_str:?}: expected depot, terminal, port, restricted or speed_zone"
            ))
        })?;
        let classes = match props.and_then(|p| p.get("classes")) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => array(v)
                .map_err(&err)?
                .iter()
                .map(|c| {
                    serde_json::from_value::<VehicleClass>(c.clone())
                        .map_err(|_| err(format!("unknown vehicle class {c}")))
                })
                .collect::<Result<_, _>>()?,
        };
        let banned_hours = match props.and_then(|p| p.get("banned_hours")) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => array(v)
                .map_err(&err)?
                .iter()
                .map(|r| {
                    let from = r.get("from").and_then(Value::as_str);
                    let to = r.get("to").and_then(Value::as_str);
                    match (from, to) {
                        (Some(f), Some(t)) => TimeRange::parse(f, t).map_err(&err),
                        _ => Err(err(format!(
                            "banned_hours entry needs \"from\" and \"to\": {r}"
                        ))),
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let geometry = f.get("geometry").ok_or_else(|| err("no geometry".into()))?;
        let area = match geometry_type(geometry) {
            Some("Polygon") => MultiPolygon(vec![
                polygon(coordinates(geometry).map_err(&err)?).map_err(&err)?
            ]),
            Some("MultiPolygon") => MultiPolygon(
                array(coordinates(geometry).map_err(&err)?)
                    .map_err(&err)?
                    .iter()
                    .map(polygon)
                    .collect::<Result<_, _>>()
                    .map_err(&err)?,
            ),
            other => {
                return Err(err(format!(
                    "geometry must be Polygon or MultiPolygon, got {}",
                    other.unwrap_or("nothing")
                )))
            }
        };
        zones.push(Zone {
            id: zone_id,
            name: str_prop(props, "name"),
            kind,
            classes,
            banned_hours,
            speed_limit_kmh: positive_prop(props, "speed_limit_kmh").map_err(&err)?,
            area,
        });
    }
    Ok(zones)
}

/// The routes of `g` as a FeatureCollection that [`parse_routes_geojson`] reads back
/// to the same routes (GTFS shapes included), sorted by id.
pub fn routes_to_geojson(g: &super::GeoIndex) -> Value {
    let mut routes: Vec<_> = g.routes().collect();
    routes.sort_by(|a, b| a.id().cmp(b.id()));
    let features: Vec<Value> = routes
        .iter()
        .map(|r| {
            let lines: Vec<Value> = r.parts().iter().map(line_json).collect();
            let mut props = serde_json::json!({"route_id": r.id(), "name": r.name(), "corridor_m": r.corridor_m()});
            // Only routes with terminals carry them, so the export (and the recorded
            // geography's hash) of routes without any stays as it was.
            if !r.terminals().is_empty() {
                props["terminals"] = line_json(&LineString(r.terminals().to_vec()));
                props["terminal_radius_m"] = r.terminal_radius_m().into();
            }
            serde_json::json!({
                "type": "Feature",
                "properties": props,
                "geometry": {"type": "MultiLineString", "coordinates": lines},
            })
        })
        .collect();
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

/// The zones of `g` as a FeatureCollection that [`parse_zones_geojson`] reads back to
/// the same zones, in index order.
pub fn zones_to_geojson(g: &super::GeoIndex) -> Value {
    let features: Vec<Value> = g
        .zones()
        .iter()
        .map(|z| {
            let polys: Vec<Value> = z
                .area
                .0
                .iter()
                .map(|p| {
                    Value::Array(
                        std::iter::once(p.exterior())
                            .chain(p.interiors())
                            .map(line_json)
                            .collect(),
                    )
                })
                .collect();
            let hours: Vec<Value> = z
                .banned_hours
                .iter()
                .map(|h| {
                    let text = h.to_string();
                    let (from, to) = text.split_once('-').unwrap_or((&text, &text));
                    serde_json::json!({"from": from, "to": to})
                })
                .collect();
            serde_json::json!({
                "type": "Feature",
                "properties": {
                    "zone_id": z.id,
                    "name": z.name,
                    "kind": z.kind.as_str(),
                    "classes": z.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "banned_hours": hours,
                    "speed_limit_kmh": z.speed_limit_kmh,
                },
                "geometry": {"type": "MultiPolygon", "coordinates": polys},
            })
        })
        .collect();
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

fn line_json(l: &LineString<f64>) -> Value {
    Value::Array(l.0.iter().map(|c| serde_json::json!([c.x, c.y])).collect())
}

fn read(path: &Path) -> Result<String, GeoError> {
    std::fs::read_to_string(path).map_err(|source| GeoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_doc(text: &str, origin: &str) -> Result<Value, GeoError> {
    serde_json::from_str(text).map_err(|source| GeoError::Json {
        origin: origin.to_string(),
        source,
    })
}

/// The features of a FeatureCollection, or the one Feature.
fn features<'a>(doc: &'a Value, origin: &str) -> Result<Vec<&'a Value>, GeoError> {
    let bad = |reason: &str| GeoError::Document {
        origin: origin.to_string(),
        reason: reason.to_string(),
    };
    match doc.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => Ok(doc
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("FeatureCollection without a features array"))?
            .iter()
            .collect()),
        Some("Feature") => Ok(vec![doc]),
        _ => Err(bad("expected a GeoJSON FeatureCollection or Feature")),
    }
}

fn properties(f: &Value) -> Option<&Map<String, Value>> {
    f.get("properties").and_then(Value::as_object)
}

fn geometry_type(g: &Value) -> Option<&str> {
    g.get("type").and_then(Value::as_str)
}

fn coordinates(g: &Value) -> Result<&Value, String> {
    g.get("coordinates")
        .ok_or_else(|| "geometry without coordinates".to_string())
}

fn array(v: &Value) -> Result<&Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("expected an array, got {}", short(v)))
}

/// An id property given as a string or a number.
fn id_prop(props: Option<&Map<String, Value>>, key: &str) -> Option<String> {
    match props?.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn str_prop(props: Option<&Map<String, Value>>, key: &str) -> Option<String> {
    props?.get(key)?.as_str().map(str::to_string)
}

fn positive_prop(props: Option<&Map<String, Value>>, key: &str) -> Result<Option<f64>, String> {
    match props.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => Err(format!("{key} must be a positive number, got {}", short(v))),
        },
    }
}

/// A `[lon, lat]` (or `[lon, lat, alt]`) position.
fn position(v: &Value) -> Result<Coord<f64>, String> {
    let a = array(v)?;
    let (Some(x), Some(y)) = (
        a.first().and_then(Value::as_f64),
        a.get(1).and_then(Value::as_f64),
    ) else {
        return Err(format!("position must be [lon, lat], got {}", short(v)));
    };
    if !((-180.0..=180.0).contains(&x) && (-90.0..=90.0).contains(&y)) {
        return Err(format!(
            "position [{x}, {y}] out of range (is it [lat, lon]?)"
        ));
    }
    Ok(Coord { x, y })
}

fn line(v: &Value) -> Result<LineString<f64>, String> {
    let pts: Vec<Coord<f64>> = array(v)?.iter().map(position).collect::<Result<_, _>>()?;
    if pts.len() < 2 {
        return Err("a line needs at least 2 positions".into());
    }
    Ok(LineString(pts))
}

fn polygon(v: &Value) -> Result<Polygon<f64>, String> {
    let mut rings = array(v)?.iter().map(|r| {
        let ring = line(r)?;
        // `Polygon::new` closes an open ring; 3 distinct corners is the minimum area.
        let distinct = if ring.is_closed() {
            ring.0.len() - 1
        } else {
            ring.0.len()
        };
        if distinct < 3 {
            return Err("a polygon ring needs at least 3 corners".to_string());
        }
        Ok(ring)
    });
    let exterior = rings.next().ok_or("polygon without rings")??;
    let interiors = rings.collect::<Result<Vec<_>, _>>()?;
    Ok(Polygon::new(exterior, interiors))
}

/// A value shortened for an error message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"route_id":"BD-01","name":"Thu Dau Mot - Di An","corridor_m":80},
       "geometry":{"type":"LineString","coordinates":[[106.652,10.980],[106.700,10.940],[106.768,10.905]]}},
      {"type":"Feature","properties":{"route_id":"TC-1","kind":"truck_corridor"},
       "geometry":{"type":"LineString","coordinates":[[106.70,10.90],[106.75,10.95]]}},
      {"type":"Feature","properties":{"route_id":7},
       "geometry":{"type":"MultiLineString","coordinates":[[[106.70,10.90],[106.71,10.90]],[[106.72,10.90],[106.73,10.90]]]}}
    ]}"#;

    const ZONES: &str = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"zone_id":"INNER","name":"Inner city","kind":"restricted",
        "classes":["container","tractor"],"banned_hours":[{"from":"06:00","to":"22:00"}]},
       "geometry":{"type":"Polygon","coordinates":[[[106.60,10.90],[106.70,10.90],[106.70,11.00],[106.60,11.00],[106.60,10.90]]]}},
      {"type":"Feature","properties":{"zone_id":"SZ-1","kind":"speed_zone","speed_limit_kmh":40},
       "geometry":{"type":"MultiPolygon","coordinates":[[[[106.60,10.90],[106.61,10.90],[106.61,10.91]]]]}}
    ]}"#;

    #[test]
    fn loads_routes_and_skips_truck_corridors() {
        let r = parse_routes_geojson(ROUTES, "test").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].id, "BD-01");
        assert_eq!(r[0].corridor_m, Some(80.0));
        assert_eq!(
            r[0].parts[0].0[0],
            Coord {
                x: 106.652,
                y: 10.980
            }
        );
        assert_eq!(r[1].id, "7");
        assert_eq!(r[1].parts.len(), 2);
    }

    #[test]
    fn features_sharing_a_route_id_are_one_route_and_round_trip() {
        let two = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"route_id":"R","name":"outbound","terminals":[[106.70,10.90]]},
           "geometry":{"type":"LineString","coordinates":[[106.70,10.90],[106.71,10.90]]}},
          {"type":"Feature","properties":{"route_id":"R","corridor_m":60,"terminal_radius_m":90},
           "geometry":{"type":"LineString","coordinates":[[106.71,10.901],[106.70,10.901]]}}
        ]}"#;
        let r = parse_routes_geojson(two, "test").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].parts.len(), 2);
        assert_eq!(r[0].name.as_deref(), Some("outbound"));
        assert_eq!(r[0].corridor_m, Some(60.0));
        assert_eq!(r[0].terminal_radius_m, Some(90.0));
        assert_eq!(
            r[0].terminals,
            [Coord {
                x: 106.70,
                y: 10.90
            }]
        );
        let g = crate::geo::GeoIndex::new(r.clone(), vec![]).unwrap();
        let back = parse_routes_geojson(&routes_to_geojson(&g).to_string(), "export").unwrap();
        assert_eq!(back, r);
        let clash = two.replace("\"name\":\"outbound\",", "\"corridor_m\":70,");
        let e = parse_routes_geojson(&clash, "f.geojson")
            .unwrap_err()
            .to_string();
        assert!(e.contains("feature #1") && e.contains("corridor_m"), "{e}");
    }

    #[test]
    fn loads_zones_with_classes_hours_and_limits() {
        let z = parse_zones_geojson(ZONES, "test").unwrap();
        assert_eq!(z.len(), 2);
        assert_eq!(z[0].kind, ZoneKind::Restricted);
        assert_eq!(
            z[0].classes,
            [VehicleClass::Container, VehicleClass::Tractor]
        );
        assert!(z[0].banned_at(6 * 60) && !z[0].banned_at(22 * 60));
        assert_eq!(z[1].speed_limit_kmh, Some(40.0));
        assert!(z[1].applies_to(Some(VehicleClass::Bus)));
        assert!(!z[0].applies_to(Some(VehicleClass::Bus)));
    }

    #[test]
    fn errors_name_the_feature() {
        let bad = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"zone_id":"Z9","kind":"lake"},"geometry":null}]}"#;
        let e = parse_zones_geojson(bad, "zones.geojson")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("zones.geojson")
                && e.contains("#0")
                && e.contains("Z9")
                && e.contains("lake"),
            "{e}"
        );
        let swapped = r#"{"type":"Feature","properties":{"route_id":"R"},
          "geometry":{"type":"LineString","coordinates":[[10.9,106.7],[10.95,106.75]]}}"#;
        assert!(parse_routes_geojson(swapped, "r").is_err());
        assert!(matches!(
            parse_routes_geojson("{", "r"),
            Err(GeoError::Json { .. })
        ));
        assert!(matches!(
            parse_routes_geojson("[]", "r"),
            Err(GeoError::Document { .. })
        ));
        let no_id = r#"{"type":"Feature","properties":{},"geometry":{"type":"LineString","coordinates":[[106.7,10.9],[106.8,10.9]]}}"#;
        assert!(parse_routes_geojson(no_id, "r")
            .unwrap_err()
            .to_string()
            .contains("route_id"));
    }
}
