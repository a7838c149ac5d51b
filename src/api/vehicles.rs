//! Live positions, tracks (GeoJSON, GPX, CSV; optionally simplified) and trips.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{vehicle_param, Caller};
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::geo::LocalFrame;

/// Most fixes one track request may return (before simplification).
pub const MAX_TRACK_FIXES: i64 = 500_000;
/// Above this speed a vehicle is `moving`, km/h (GPS noise keeps parked ones above 0).
pub const MOVING_KMH: f32 = 3.0;

/// RFC 3339, UTC, with milliseconds only when needed.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `GET /api/v1/vehicles`: every visible vehicle, its latest position, status and
/// open alerts.
pub async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let db = s.db.get().await?;
    let scope = caller.scope();
    // The latest fix is found through the primary key (vehicle_id, last_fix_ts).
    let rows = db
        .query(
            "SELECT v.vehicle_id, v.cooperative_id, v.plate, v.class, v.route_id, v.registered,
                    v.last_seen, f.ts, f.lat, f.lon, f.speed_kmh, f.heading_deg, f.driver_id
             FROM vehicles v
             LEFT JOIN fixes f ON f.vehicle_id = v.vehicle_id AND f.ts = v.last_fix_ts
             WHERE ($1::text IS NULL OR v.cooperative_id = $1)
             ORDER BY v.vehicle_id",
            &[&scope],
        )
        .await?;
    let open = db
        .query(
            "SELECT a.vehicle_id, a.alert_id, a.kind, a.level, a.start_ts
             FROM alerts a JOIN vehicles v ON v.vehicle_id = a.vehicle_id
             WHERE a.status = 'open' AND ($1::text IS NULL OR v.cooperative_id = $1)
             ORDER BY a.vehicle_id, a.start_ts",
            &[&scope],
        )
        .await?;
    let mut by_vehicle: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for r in &open {
        let start: DateTime<Utc> = r.get(4);
        by_vehicle.entry(r.get(0)).or_default().push(json!({
            "id": r.get::<_, String>(1),
            "kind": r.get::<_, String>(2),
            "level": r.get::<_, String>(3),
            "start": rfc3339(start),
        }));
    }
    let vehicles: Vec<Value> = rows
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            let alerts = by_vehicle.remove(&id).unwrap_or_default();
            let ts: Option<DateTime<Utc>> = r.get(7);
            let speed: Option<f32> = r.get(10);
            let has = |k: &str| alerts.iter().any(|a| a["kind"] == k);
            let status = if has("no_signal") {
                "no_signal"
            } else if has("off_route") {
                "off_route"
            } else {
                match speed {
                    Some(v) if v > MOVING_KMH => "moving",
                    Some(_) => "stopped",
                    None => "unknown",
                }
            };
            let position = ts.map(|ts| {
                json!({
                    "ts": rfc3339(ts),
                    "lat": r.get::<_, f64>(8),
                    "lon": r.get::<_, f64>(9),
                    "speed_kmh": speed,
                    "heading_deg": r.get::<_, Option<f32>>(11),
                    "driver_id": r.get::<_, Option<String>>(12),
                })
            });
            json!({
                "vehicle_id": id,
                "cooperative_id": r.get::<_, String>(1),
                "plate": r.get::<_, Option<String>>(2),
                "class": r.get::<_, Option<String>>(3),
                "route_id": r.get::<_, Option<String>>(4),
                "registered": r.get::<_, bool>(5),
                "last_seen": r.get::<_, Option<DateTime<Utc>>>(6).map(rfc3339),
                "position": position,
                "status": status,
                "open_alerts": alerts,
            })
        })
        .collect();
    Ok(Json(json!({ "vehicles": vehicles })))
}

/// Query of a track.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackQuery {
    /// Start, inclusive (default: 24 h before `to`).
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (default: now).
    pub to: Option<DateTime<Utc>>,
    /// `geojson` (default), `geojson_points`, `gpx` or `csv`.
    pub format: Option<String>,
    /// Douglas-Peucker tolerance in metres; none or 0 = every fix.
    pub simplify_m: Option<f64>,
}

/// Longest track range one request may ask for (`http.max_track_days`).
fn max_track_range(s: &AppState) -> TimeDelta {
    TimeDelta::days(i64::from(s.settings.http.max_track_days.max(1)))
}

/// A range checked against the cap.
fn range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    max: TimeDelta,
) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or(to - TimeDelta::hours(24));
    if from >= to {
        return Err(ApiError::bad("from must be before to"));
    }
    if to - from > max {
        return Err(ApiError::bad(format!(
            "range too long: at most {} days per request",
            max.num_days()
        )));
    }
    Ok((from, to))
}

/// The vehicle's cooperative, checked against the caller (404 unknown, 403 other).
async fn visible_vehicle(
    db: &deadpool_postgres::Object,
    caller: &Caller,
    raw: &str,
) -> ApiResult<String> {
    let id = vehicle_param(raw)?;
    let owner: Option<String> = db
        .query_opt(
            "SELECT cooperative_id FROM vehicles WHERE vehicle_id = $1",
            &[&id],
        )
        .await?
        .map(|r| r.get(0));
    caller.check_vehicle(&id, owner.as_deref())?;
    Ok(id)
}

struct Point {
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f32,
    heading_deg: Option<f32>,
    driver_id: Option<String>,
}

/// Indices of the points kept by Douglas-Peucker with `tol_m` metres, computed in a
/// local metric plane centred on the first point (lon/lat degrees are not metres).
fn simplify(points: &[Point], tol_m: f64) -> Vec<usize> {
    use geo::{LineString, SimplifyIdx};
    let Some(p0) = points.first() else {
        return vec![];
    };
    let frame = LocalFrame::new(p0.lon, p0.lat);
    let line: LineString<f64> = points
        .iter()
        .map(|p| {
            let [x, y] = frame.to_xy(p.lon, p.lat);
            geo::coord! { x: x, y: y }
        })
        .collect();
    line.simplify_idx(tol_m)
}

/// `GET /api/v1/vehicles/{id}/track`.
pub async fn track(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    q: Result<Query<TrackQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let format = q.format.as_deref().unwrap_or("geojson");
    if !matches!(format, "geojson" | "geojson_points" | "gpx" | "csv") {
        return Err(ApiError::bad(
            "format must be geojson, geojson_points, gpx or csv",
        ));
    }
    let tol = q.simplify_m.unwrap_or(0.0);
    if !tol.is_finite() || tol < 0.0 {
        return Err(ApiError::bad(
            "simplify_m must be a distance in metres >= 0",
        ));
    }
    let (from, to) = range(q.from, q.to, max_track_range(&s))?;
    let db = s.db.get().await?;
    let id = visible_vehicle(&db, &caller, &raw).await?;
    // A cooperative sees only the fixes it sent (a vehicle may have changed hands).
    let rows = db
        .query(
            "SELECT ts, lat, lon, speed_kmh, heading_deg, driver_id FROM fixes
             WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3
               AND ($4::text IS NULL OR cooperative_id = $4)
             ORDER BY ts LIMIT $5",
            &[&id, &from, &to, &caller.scope(), &(MAX_TRACK_FIXES + 1)],
        )
        .await?;
    if rows.len() as i64 > MAX_TRACK_FIXES {
        return Err(ApiError::bad(format!(
            "more than {MAX_TRACK_FIXES} fixes in the range: ask for a shorter range"
        )));
    }
    let all: Vec<Point> = rows
        .iter()
        .map(|r| Point {
            ts: r.get(0),
            lat: r.get(1),
            lon: r.get(2),
            speed_kmh: r.get(3),
            heading_deg: r.get(4),
            driver_id: r.get(5),
        })
        .collect();
    let total = all.len();
    let points: Vec<&Point> = if tol > 0.0 && all.len() > 2 {
        simplify(&all, tol).into_iter().map(|i| &all[i]).collect()
    } else {
        all.iter().collect()
    };
    match format {
        "gpx" => Ok(gpx(&id, &points)),
        "csv" => Ok(csv(&points)),
        _ => {
            let trips = trips_json(&db, &id, from, to, caller.scope()).await?;
            let body = if format == "geojson_points" {
                geojson_points(&id, &points, from, to, total, trips)
            } else {
                geojson_line(&id, &points, from, to, total, trips)
            };
            Ok((
                [(header::CONTENT_TYPE, "application/geo+json")],
                body.to_string(),
            )
                .into_response())
        }
    }
}

fn geojson_line(
    id: &str,
    points: &[&Point],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    total: usize,
    trips: Value,
) -> Value {
    let coords: Vec<[f64; 2]> = points.iter().map(|p| [p.lon, p.lat]).collect();
    // A LineString needs two positions: one fix is a Point, none no geometry.
    let geometry = match coords.len() {
        0 => Value::Null,
        1 => json!({ "type": "Point", "coordinates": coords[0] }),
        _ => json!({ "type": "LineString", "coordinates": coords }),
    };
    json!({
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "vehicle_id": id,
            "from": rfc3339(from),
            "to": rfc3339(to),
            "fixes": total,
            "points": points.len(),
            "times": points.iter().map(|p| rfc3339(p.ts)).collect::<Vec<_>>(),
            "speeds_kmh": points.iter().map(|p| p.speed_kmh).collect::<Vec<_>>(),
            "headings_deg": points.iter().map(|p| p.heading_deg).collect::<Vec<_>>(),
            "trips": trips,
        }
    })
}

fn geojson_points(
    id: &str,
    points: &[&Point],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    total: usize,
    trips: Value,
) -> Value {
    let features: Vec<Value> = points
        .iter()
        .map(|p| {
            json!({
                "type": "Feature",
                "geometry": { "type": "Point", "coordinates": [p.lon, p.lat] },
                "properties": {
                    "ts": rfc3339(p.ts),
                    "speed_kmh": p.speed_kmh,
                    "heading_deg": p.heading_deg,
                    "driver_id": p.driver_id,
                }
            })
        })
        .collect();
    json!({
        "type": "FeatureCollection",
        "features": features,
        "properties": {
            "vehicle_id": id, "from": rfc3339(from), "to": rfc3339(to),
            "fixes": total, "points": points.len(), "trips": trips,
        }
    })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn gpx(id: &str, points: &[&Point]) -> Response {
    let mut out = String::with_capacity(200 + points.len() * 160);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <gpx version=\"1.1\" creator=\"fleetwatch\" xmlns=\"http://www.topografix.com/GPX/1/1\" \
         xmlns:fw=\"urn:fleetwatch:gpx:1\">\n",
    );
    let _ = writeln!(out, "<trk><name>{}</name><trkseg>", xml_escape(id));
    for p in points {
        let _ = writeln!(
            out,
            "<trkpt lat=\"{:.7}\" lon=\"{:.7}\"><time>{}</time><extensions><fw:speed_kmh>{:.1}</fw:speed_kmh></extensions></trkpt>",
            p.lat,
            p.lon,
            rfc3339(p.ts),
            p.speed_kmh
        );
    }
    out.push_str("</trkseg></trk>\n</gpx>\n");
    ([(header::CONTENT_TYPE, "application/gpx+xml")], out).into_response()
}

fn csv(points: &[&Point]) -> Response {
    let mut out = String::with_capacity(64 + points.len() * 80);
    out.push_str("ts,lat,lon,speed_kmh,heading_deg,driver_id\n");
    for p in points {
        let _ = writeln!(
            out,
            "{},{:.7},{:.7},{:.1},{},{}",
            rfc3339(p.ts),
            p.lat,
            p.lon,
            p.speed_kmh,
            p.heading_deg.map(|h| format!("{h:.0}")).unwrap_or_default(),
            // Driver ids are [A-Za-z0-9-_.]: nothing to quote.
            p.driver_id.as_deref().unwrap_or("")
        );
    }
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
}

/// The trips starting in the range, as JSON.
async fn trips_json(
    db: &deadpool_postgres::Object,
    id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    scope: Option<&str>,
) -> ApiResult<Value> {
    let rows = db
        .query(
            "SELECT start_ts, end_ts, driver_id, distance_m, max_speed_kmh FROM trips
             WHERE vehicle_id = $1 AND start_ts >= $2 AND start_ts < $3
               AND ($4::text IS NULL OR cooperative_id IS NULL OR cooperative_id = $4)
             ORDER BY start_ts",
            &[&id, &from, &to, &scope],
        )
        .await?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "start": rfc3339(r.get(0)),
                    "end": rfc3339(r.get(1)),
                    "driver_id": r.get::<_, Option<String>>(2),
                    "distance_m": r.get::<_, f64>(3),
                    "max_speed_kmh": r.get::<_, f64>(4),
                })
            })
            .collect(),
    ))
}

/// Query of a trip list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// Start, inclusive (default: 24 h before `to`).
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (default: now).
    pub to: Option<DateTime<Utc>>,
}

/// `GET /api/v1/vehicles/{id}/trips`.
pub async fn trips(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let (from, to) = range(q.from, q.to, max_track_range(&s))?;
    let db = s.db.get().await?;
    let id = visible_vehicle(&db, &caller, &raw).await?;
    let trips = trips_json(&db, &id, from, to, caller.scope()).await?;
    Ok(Json(json!({
        "vehicle_id": id, "from": rfc3339(from), "to": rfc3339(to), "trips": trips,
    })))
}
