//! The live map page: its HTML, script and styles (and the vendored Leaflet 1.9.4)
//! built into the binary, the page's settings, and `GET /api/v1/geo`, our own routes
//! and zones as GeoJSON so the map is useful without background tiles.
//!
//! Nothing here is built at run time or read from disk: `cargo run` serves the page.

use std::collections::HashSet;
use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use geo::{LineString, Polygon};
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiResult;
use super::AppState;
use crate::geo::GeoIndex;

/// Leaflet's version, part of its asset paths so they can be cached for good.
pub const LEAFLET_VERSION: &str = "1.9.4";

/// A file of the page, embedded in the binary.
struct Asset {
    /// Path under `/map/static/`.
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    /// Versioned path: cached for a year; otherwise revalidated (ETag) on every use.
    immutable: bool,
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr, $immutable:literal) => {
        Asset {
            path: $path,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file)),
            content_type: $type,
            immutable: $immutable,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const PNG: &str = "image/png";

/// The page itself (served at `/map`).
static PAGE: Asset = asset!(
    "index.html",
    "map/index.html",
    "text/html; charset=utf-8",
    false
);

/// Everything under `/map/static/`.
static ASSETS: &[Asset] = &[
    asset!("map.js", "map/map.js", JS, false),
    asset!("map.css", "map/map.css", CSS, false),
    asset!(
        "leaflet-1.9.4/leaflet.js",
        "vendor/leaflet/leaflet.js",
        JS,
        true
    ),
    asset!(
        "leaflet-1.9.4/leaflet.css",
        "vendor/leaflet/leaflet.css",
        CSS,
        true
    ),
    asset!(
        "leaflet-1.9.4/images/layers.png",
        "vendor/leaflet/images/layers.png",
        PNG,
        true
    ),
    asset!(
        "leaflet-1.9.4/images/layers-2x.png",
        "vendor/leaflet/images/layers-2x.png",
        PNG,
        true
    ),
    asset!(
        "leaflet-1.9.4/images/marker-icon.png",
        "vendor/leaflet/images/marker-icon.png",
        PNG,
        true
    ),
    asset!(
        "leaflet-1.9.4/images/marker-icon-2x.png",
        "vendor/leaflet/images/marker-icon-2x.png",
        PNG,
        true
    ),
    asset!(
        "leaflet-1.9.4/images/marker-shadow.png",
        "vendor/leaflet/images/marker-shadow.png",
        PNG,
        true
    ),
    asset!(
        "leaflet-1.9.4/LICENSE",
        "vendor/leaflet/LICENSE",
        "text/plain; charset=utf-8",
        true
    ),
];

/// Scripts and data only from this server; tiles from anywhere the operator
/// configures; Leaflet positions its panes with inline styles.
const CSP: &str = "default-src 'self'; script-src 'self'; connect-src 'self'; \
                   img-src * data: blob:; style-src 'self' 'unsafe-inline'; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Strong ETag of an asset's bytes (SHA-256, 128 bits), computed once per asset.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&PAGE)
            .chain(ASSETS)
            .map(|a| {
                use sha2::Digest;
                format!("\"{}\"", &hex::encode(sha2::Sha256::digest(a.body))[..32])
            })
            .collect()
    });
    let i = if std::ptr::eq(asset, &PAGE) {
        0
    } else {
        1 + ASSETS
            .iter()
            .position(|a| std::ptr::eq(a, asset))
            .expect("asset from the table")
    };
    &tags[i]
}

fn serve_asset(asset: &'static Asset, req: &HeaderMap) -> Response {
    let tag = etag(asset);
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(tag).expect("hex ETag is a valid header"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `GET /map`: the page (it asks for a token; `#token=...` in the URL gives one).
pub async fn page(req: HeaderMap) -> Response {
    let mut r = serve_asset(&PAGE, &req);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // The token travels in the fragment, never sent anywhere; keep it out of referrers.
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /map/static/{*file}`: the page's script, styles and Leaflet.
pub async fn static_file(Path(file): Path<String>, req: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.path == file) {
        Some(a) => serve_asset(a, &req),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file\n",
        )
            .into_response(),
    }
}

/// `GET /map/config.json`: the page's settings (tiles, local time); no token needed,
/// none of it is confidential.
pub async fn config(State(s): State<AppState>) -> Json<Value> {
    let h = &s.settings.http;
    Json(json!({
        "tile_url": h.map_tile_url,
        "tile_attribution": h.map_tile_attribution,
        "utc_offset": s.settings.rules.utc_offset.to_string(),
        "leaflet_version": LEAFLET_VERSION,
        "driving_break_s": s.settings.rules.driving.break_min_s,
    }))
}

/// `GET /api/v1/geo`: the routes and zones in use, as one GeoJSON FeatureCollection.
///
/// Zones are regulatory geography (restricted areas, speed zones, terminals, ports)
/// and are shown to every token; a cooperative token gets only the routes registered
/// to its own vehicles, regulator and admin tokens every route.
pub async fn geo(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let routes = match caller.scope() {
        None => None,
        Some(coop) => Some(cooperative_routes(&s, coop).await?),
    };
    let index = s.geo.borrow().clone();
    let body = geo_features(&index, routes.as_ref()).to_string();
    Ok(([(header::CONTENT_TYPE, "application/geo+json")], body).into_response())
}

/// `GET /api/v1/stops`: the stops of the scheduled (GTFS) trips of the routes in
/// use, as GeoJSON Points, for the map at street zoom. Scoped as [`geo`]: a
/// cooperative token gets the stops of the routes registered to its own vehicles.
pub async fn stops(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let routes = match caller.scope() {
        None => None,
        Some(coop) => Some(cooperative_routes(&s, coop).await?),
    };
    let index = s.geo.borrow().clone();
    let body = stop_features(&index, routes.as_ref()).to_string();
    Ok(([(header::CONTENT_TYPE, "application/geo+json")], body).into_response())
}

/// The route ids registered to `coop`'s vehicles.
async fn cooperative_routes(s: &AppState, coop: &str) -> ApiResult<HashSet<String>> {
    let db = s.db.get().await?;
    let rows = db
        .query(
            "SELECT DISTINCT route_id FROM vehicles
             WHERE cooperative_id = $1 AND route_id IS NOT NULL",
            &[&coop],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A stop of [`stop_features`]: name, lat, lon, the routes stopping there.
type StopAt<'a> = (Option<&'a str>, f64, f64, Vec<&'a str>);

/// The stops served by trips of the routes of `g`'s schedules (all, or those in
/// `only`), each once with the routes stopping there (sorted), sorted by stop id.
/// Stops without coordinates are left out.
pub fn stop_features(g: &GeoIndex, only: Option<&HashSet<String>>) -> Value {
    // stop_id → (name, lat, lon, routes); a stop id is one place across feeds.
    let mut at: std::collections::BTreeMap<&str, StopAt<'_>> = Default::default();
    for sched in g.schedules() {
        for route in sched.route_ids() {
            if only.is_some_and(|ids| !ids.contains(route))
                || g.schedule_for(route)
                    .is_none_or(|s| !std::ptr::eq(s, sched))
            {
                continue;
            }
            let Some(trips) = sched.route(route) else {
                continue;
            };
            let mut seen = HashSet::new();
            for &t in &trips.trips {
                for st in &sched.trips[t as usize].stop_times {
                    if !seen.insert(st.stop) {
                        continue;
                    }
                    let Some(p) = sched.stops.get(st.stop as usize) else {
                        continue;
                    };
                    let (Some(lat), Some(lon)) = (p.lat, p.lon) else {
                        continue;
                    };
                    let e = at
                        .entry(&p.id)
                        .or_insert_with(|| (p.name.as_deref(), lat, lon, Vec::new()));
                    if !e.3.contains(&route) {
                        e.3.push(route);
                    }
                }
            }
        }
    }
    let features: Vec<Value> = at
        .into_iter()
        .map(|(id, (name, lat, lon, mut routes))| {
            routes.sort_unstable();
            json!({
                "type": "Feature",
                "id": format!("stop:{id}"),
                "geometry": { "type": "Point", "coordinates": [lon, lat] },
                "properties": { "layer": "stop", "stop_id": id, "name": name, "route_ids": routes },
            })
        })
        .collect();
    json!({ "type": "FeatureCollection", "features": features })
}

/// The routes (all, or those in `only`) and every zone of `g` as a FeatureCollection
/// in lon/lat degrees; routes sorted by id, zones in index order.
pub fn geo_features(g: &GeoIndex, only: Option<&HashSet<String>>) -> Value {
    let mut routes: Vec<_> = g
        .routes()
        .filter(|r| only.is_none_or(|ids| ids.contains(r.id())))
        .collect();
    routes.sort_by(|a, b| a.id().cmp(b.id()));
    let route_features = routes.iter().map(|r| {
        let lines: Vec<Value> = r.parts().iter().map(line_coords).collect();
        let geometry = match <[Value; 1]>::try_from(lines) {
            Ok([one]) => json!({ "type": "LineString", "coordinates": one }),
            Err(many) => json!({ "type": "MultiLineString", "coordinates": many }),
        };
        json!({
            "type": "Feature",
            "id": format!("route:{}", r.id()),
            "geometry": geometry,
            "properties": {
                "layer": "route",
                "route_id": r.id(),
                "name": r.name(),
                "corridor_m": r.corridor_m(),
                "length_m": (r.length_m() * 10.0).round() / 10.0,
            }
        })
    });
    let zone_features = g.zones().iter().map(|z| {
        let polys: Vec<Value> = z.area.0.iter().map(polygon_coords).collect();
        let geometry = match <[Value; 1]>::try_from(polys) {
            Ok([one]) => json!({ "type": "Polygon", "coordinates": one }),
            Err(many) => json!({ "type": "MultiPolygon", "coordinates": many }),
        };
        json!({
            "type": "Feature",
            "id": format!("zone:{}", z.id),
            "geometry": geometry,
            "properties": {
                "layer": "zone",
                "zone_id": z.id,
                "name": z.name,
                "kind": z.kind.as_str(),
                "classes": z.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "banned_hours": z.banned_hours.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "speed_limit_kmh": z.speed_limit_kmh,
            }
        })
    });
    json!({
        "type": "FeatureCollection",
        "features": route_features.chain(zone_features).collect::<Vec<_>>(),
    })
}

fn line_coords(l: &LineString<f64>) -> Value {
    Value::Array(l.0.iter().map(|c| json!([c.x, c.y])).collect())
}

fn polygon_coords(p: &Polygon<f64>) -> Value {
    Value::Array(
        std::iter::once(p.exterior())
            .chain(p.interiors())
            .map(line_coords)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::GeoConfig;

    fn demo() -> GeoIndex {
        GeoConfig {
            demo: true,
            ..Default::default()
        }
        .load()
        .unwrap()
    }

    #[test]
    fn every_route_and_zone_is_exported_in_lon_lat() {
        let g = demo();
        let fc = geo_features(&g, None);
        let f = fc["features"].as_array().unwrap();
        let routes: Vec<&str> = f
            .iter()
            .filter(|f| f["properties"]["layer"] == "route")
            .map(|f| f["properties"]["route_id"].as_str().unwrap())
            .collect();
        assert_eq!(routes, ["BD-01", "BD-02", "BD-03", "BD-04"]);
        assert_eq!(f.len(), g.route_count() + g.zone_count());
        let bd01 = &f[0];
        assert_eq!(bd01["geometry"]["type"], "LineString");
        // The first vertex of BD-01 in the fixture, lon first.
        assert_eq!(
            bd01["geometry"]["coordinates"][0],
            json!([106.6722, 10.9678])
        );
        let zone = f
            .iter()
            .find(|f| f["properties"]["zone_id"] == "TDM-TERMINAL")
            .unwrap();
        assert_eq!(zone["geometry"]["type"], "Polygon");
        assert_eq!(zone["properties"]["kind"], "terminal");
        assert_eq!(
            zone["geometry"]["coordinates"][0][0],
            json!([106.671009, 10.966811])
        );
    }

    #[test]
    fn a_route_filter_keeps_every_zone() {
        let g = demo();
        let only: HashSet<String> = ["BD-03".to_string(), "NOT-LOADED".to_string()].into();
        let fc = geo_features(&g, Some(&only));
        let f = fc["features"].as_array().unwrap();
        let routes: Vec<&Value> = f
            .iter()
            .filter(|f| f["properties"]["layer"] == "route")
            .collect();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0]["properties"]["route_id"], "BD-03");
        assert_eq!(f.len() - 1, g.zone_count());
        let none = geo_features(&g, Some(&HashSet::new()));
        assert_eq!(none["features"].as_array().unwrap().len(), g.zone_count());
    }

    #[test]
    fn restricted_zone_keeps_its_classes_and_hours() {
        let g = demo();
        let fc = geo_features(&g, None);
        let restricted: Vec<&Value> = fc["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["properties"]["kind"] == "restricted")
            .collect();
        assert!(!restricted.is_empty());
        for z in restricted {
            assert!(!z["properties"]["banned_hours"]
                .as_array()
                .unwrap()
                .is_empty());
            assert!(!z["properties"]["classes"].as_array().unwrap().is_empty());
        }
    }

    /// Two routes sharing stop B; C has no coordinates; D is used by no trip.
    fn with_stops() -> GeoIndex {
        use crate::geo::{Schedule, ScheduledTrip, Service, StopPoint, StopTime};
        let stop = |id: &str, at: Option<(f64, f64)>| StopPoint {
            id: id.into(),
            name: Some(format!("Stop {id}")),
            lon: at.map(|a| a.0),
            lat: at.map(|a| a.1),
        };
        let stops = vec![
            stop("A", Some((106.60, 10.90))),
            stop("B", Some((106.61, 10.90))),
            stop("C", None),
            stop("D", Some((106.63, 10.90))),
            stop("E", Some((106.61, 10.91))),
        ];
        let line = |a: (f64, f64), b: (f64, f64)| {
            vec![geo::Coord { x: a.0, y: a.1 }, geo::Coord { x: b.0, y: b.1 }]
        };
        let shapes = vec![
            (
                "S1".into(),
                "R1".into(),
                line((106.60, 10.90), (106.61, 10.90)),
            ),
            (
                "S2".into(),
                "R2".into(),
                line((106.61, 10.90), (106.61, 10.91)),
            ),
        ];
        let trip = |id: &str, route: &str, shape: u32, at: &[u32]| ScheduledTrip {
            id: id.into(),
            route: route.into(),
            service: 0,
            shape,
            direction: None,
            headsign: None,
            stop_times: at
                .iter()
                .enumerate()
                .map(|(k, &stop)| StopTime {
                    stop,
                    seq: k as u32 + 1,
                    arrival_s: 3600 + 60 * k as i32,
                    departure_s: 3600 + 60 * k as i32,
                    dist_m: 500.0 * k as f64,
                })
                .collect(),
            frequencies: Vec::new(),
        };
        let sched = Schedule::from_parts(
            stops,
            shapes,
            vec![Service {
                id: "ALL".into(),
                always: true,
                ..Default::default()
            }],
            vec![
                trip("T1", "R1", 0, &[0, 2, 1]),
                trip("T2", "R2", 1, &[1, 4]),
            ],
        )
        .unwrap();
        GeoIndex::empty().with_schedules(vec![sched])
    }

    #[test]
    fn stops_of_the_routes_in_scope_once_each() {
        let g = with_stops();
        let ids = |fc: &Value| -> Vec<String> {
            fc["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["properties"]["stop_id"].as_str().unwrap().to_string())
                .collect()
        };
        let all = stop_features(&g, None);
        assert_eq!(ids(&all), ["A", "B", "E"]);
        let b = &all["features"][1];
        assert_eq!(b["properties"]["route_ids"], json!(["R1", "R2"]));
        assert_eq!(b["properties"]["name"], "Stop B");
        assert_eq!(b["geometry"]["coordinates"], json!([106.61, 10.90]));
        let only: HashSet<String> = ["R2".to_string()].into();
        let r2 = stop_features(&g, Some(&only));
        assert_eq!(ids(&r2), ["B", "E"]);
        assert_eq!(r2["features"][0]["properties"]["route_ids"], json!(["R2"]));
        assert!(ids(&stop_features(&g, Some(&HashSet::new()))).is_empty());
    }

    #[test]
    fn assets_have_their_types_and_tags() {
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
        let js = ASSETS.iter().find(|a| a.path == "map.js").unwrap();
        assert_eq!(js.content_type, JS);
        assert_ne!(etag(js), etag(&PAGE));
        assert_eq!(etag(js).len(), 34);
        // The page refers to the versioned Leaflet paths served here.
        let page = std::str::from_utf8(PAGE.body).unwrap();
        for a in ASSETS
            .iter()
            .filter(|a| a.path.ends_with(".js") || a.path.ends_with(".css"))
        {
            assert!(
                page.contains(&format!("/map/static/{}", a.path)),
                "{}",
                a.path
            );
        }
        assert!(ASSETS.iter().all(|a| !a.path.starts_with("leaflet-")
            || a.path.starts_with(&format!("leaflet-{LEAFLET_VERSION}/"))));
    }
}
