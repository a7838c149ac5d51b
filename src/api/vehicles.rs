//! Live positions, tracks (GeoJSON, GPX, CSV; optionally simplified) and trips.

use std::collections::HashMap;
use std::io::Write;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{vehicle_id_param, vehicle_param, Caller};
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::domain::{CooperativeId, Vehicle};
use crate::geo::LocalFrame;
use crate::store::registry;

/// Most fixes one track page may hold (before simplification).
pub const MAX_TRACK_FIXES: i64 = 500_000;
/// Above this speed a vehicle is `moving`, km/h (GPS noise keeps parked ones above 0).
pub const MOVING_KMH: f32 = 3.0;

/// RFC 3339, UTC, with milliseconds only when needed.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `GET /api/v1/vehicles`: every visible vehicle, its latest position, status and
/// open alerts.
pub async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let db = s.db.get().await?;
    let scope = caller.scope();
    // One row per vehicle: the writer keeps the latest position in `vehicles`. Byte
    // order (COLLATE "C") sorts ids without the cost of a linguistic collation.
    let rows = db
        .query(
            "SELECT vehicle_id, cooperative_id, plate, class, route_id, registered, last_seen,
                    last_fix_ts, last_lat, last_lon, last_speed_kmh, last_heading_deg,
                    last_driver_id
             FROM vehicles
             WHERE ($1::text IS NULL OR cooperative_id = $1)
             ORDER BY vehicle_id COLLATE \"C\"",
            &[&scope],
        )
        .await?;
    let open = db
        .query(
            "SELECT a.vehicle_id, a.alert_id, a.kind, a.level, a.start_ts
             FROM alerts a JOIN vehicles v ON v.vehicle_id = a.vehicle_id
             WHERE a.status = 'open' AND ($1::text IS NULL OR v.cooperative_id = $1)
             ORDER BY a.start_ts",
            &[&scope],
        )
        .await?;
    let mut by_vehicle: HashMap<String, Vec<OpenAlert>> = HashMap::new();
    for r in &open {
        by_vehicle.entry(r.get(0)).or_default().push(OpenAlert {
            id: r.get(1),
            kind: r.get(2),
            level: r.get(3),
            start: Rfc3339(r.get(4)),
        });
    }
    let vehicles: Vec<LiveVehicle> = rows
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            let open_alerts = by_vehicle.remove(&id).unwrap_or_default();
            let ts: Option<DateTime<Utc>> = r.get(7);
            let speed_kmh: Option<f32> = r.get(10);
            let has = |k: &str| open_alerts.iter().any(|a| a.kind == k);
            let status = if has("no_signal") {
                "no_signal"
            } else if has("off_route") {
                "off_route"
            } else {
                match speed_kmh {
                    Some(v) if v > MOVING_KMH => "moving",
                    Some(_) => "stopped",
                    None => "unknown",
                }
            };
            let position = match (ts, r.get::<_, Option<f64>>(8), r.get::<_, Option<f64>>(9)) {
                (Some(ts), Some(lat), Some(lon)) => Some(Position {
                    ts: Rfc3339(ts),
                    lat,
                    lon,
                    speed_kmh,
                    heading_deg: r.get(11),
                    driver_id: r.get(12),
                }),
                _ => None,
            };
            LiveVehicle {
                vehicle_id: id,
                cooperative_id: r.get(1),
                plate: r.get(2),
                class: r.get(3),
                route_id: r.get(4),
                registered: r.get(5),
                last_seen: r.get::<_, Option<DateTime<Utc>>>(6).map(Rfc3339),
                position,
                status,
                open_alerts,
            }
        })
        .collect();
    // Serialised straight from the structs: a fleet of 10,000 is megabytes of JSON.
    let body = serde_json::to_vec(&LiveList { vehicles })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The live list.
#[derive(Serialize)]
struct LiveList {
    vehicles: Vec<LiveVehicle>,
}

/// One vehicle of the live list.
#[derive(Serialize)]
struct LiveVehicle {
    vehicle_id: String,
    cooperative_id: String,
    plate: Option<String>,
    class: Option<String>,
    route_id: Option<String>,
    registered: bool,
    last_seen: Option<Rfc3339>,
    position: Option<Position>,
    status: &'static str,
    open_alerts: Vec<OpenAlert>,
}

/// The latest position of a vehicle.
#[derive(Serialize)]
struct Position {
    ts: Rfc3339,
    lat: f64,
    lon: f64,
    speed_kmh: Option<f32>,
    heading_deg: Option<f32>,
    driver_id: Option<String>,
}

/// An open alert in the live list.
#[derive(Serialize)]
struct OpenAlert {
    id: String,
    kind: String,
    level: String,
    start: Rfc3339,
}

/// A time serialised as [`rfc3339`].
struct Rfc3339(DateTime<Utc>);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

/// Body of `PUT /api/v1/vehicles/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleBody {
    /// Cooperative that operates it.
    pub cooperative_id: String,
    /// Regulatory class (`bus`, `coach`, `container`, `tractor`, `light_truck`, `car`).
    pub class: String,
    /// Registration plate as printed.
    pub plate: Option<String>,
    /// Registered route (fixed-route buses): a route id of the loaded routes.
    pub route_id: Option<String>,
}

/// `PUT /api/v1/vehicles/{id}` (admin): registers or changes a vehicle; the running
/// pipeline uses it from the next fix on.
pub async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Json<VehicleBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let Json(b) = body?;
    let vehicle = Vehicle {
        id: vehicle_id_param(&raw)?,
        cooperative: CooperativeId::parse(&b.cooperative_id)
            .map_err(|e| ApiError::bad(format!("cooperative_id: {e}")))?,
        class: b.class.parse().map_err(ApiError::bad)?,
        plate: b.plate,
        route: b.route_id,
    };
    if let Some(r) = &vehicle.route {
        if s.geo.borrow().route(r).is_none() {
            return Err(ApiError::bad(format!(
                "route_id: no route {r:?} among the loaded routes"
            )));
        }
    }
    let db = s.db.get().await?;
    registry::register(&**db, std::slice::from_ref(&vehicle)).await?;
    reload_registry(&s, &db).await?;
    Ok(Json(json!({
        "vehicle_id": vehicle.id.as_str(),
        "cooperative_id": vehicle.cooperative.as_str(),
        "class": vehicle.class.as_str(),
        "plate": vehicle.plate,
        "route_id": vehicle.route,
        "registered": true,
    })))
}

/// `DELETE /api/v1/vehicles/{id}` (admin): takes a vehicle off the registry (its data
/// stays; its fixes are flagged unregistered from then on).
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    caller.require_admin()?;
    let id = vehicle_id_param(&raw)?;
    let db = s.db.get().await?;
    if !registry::deregister(&**db, &id).await? {
        return Err(ApiError::NotFound(format!("no registered vehicle {id}")));
    }
    reload_registry(&s, &db).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Hands the stored registry to the pipeline.
async fn reload_registry(s: &AppState, db: &deadpool_postgres::Object) -> ApiResult<()> {
    let r = registry::load(&***db).await?;
    s.registry.send_replace(std::sync::Arc::new(r));
    Ok(())
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
    /// Most fixes in this page (default and maximum [`MAX_TRACK_FIXES`]); when the range
    /// holds more, the answer says where the next page starts (`next_from`).
    pub limit: Option<i64>,
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
    let limit = q.limit.unwrap_or(MAX_TRACK_FIXES);
    if !(1..=MAX_TRACK_FIXES).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit must be between 1 and {MAX_TRACK_FIXES}"
        )));
    }
    let (from, to) = range(q.from, q.to, max_track_range(&s))?;
    let db = s.db.get().await?;
    let id = visible_vehicle(&db, &caller, &raw).await?;
    let (all, next_from) = track_points(&db, &id, from, to, caller.scope(), limit).await?;
    let total = all.len();
    let points: Vec<&Point> = if tol > 0.0 && all.len() > 2 {
        simplify(&all, tol).into_iter().map(|i| &all[i]).collect()
    } else {
        all.iter().collect()
    };
    let (content_type, body) = match format {
        "gpx" => ("application/gpx+xml", gpx(&id, &points)),
        "csv" => ("text/csv; charset=utf-8", csv(&points)),
        _ => {
            let t = trips_json(&db, &id, from, to, caller.scope()).await?;
            let page = Page {
                id: &id,
                from,
                to,
                total,
                next_from,
                trips: &t.trips,
                stops: &t.stops,
            };
            let body = if format == "geojson_points" {
                geojson_points(&page, &points)
            } else {
                geojson_line(&page, &points)
            };
            ("application/geo+json", body)
        }
    };
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Some(next) = next_from {
        // Every format says where the next page starts; GeoJSON also in its properties.
        if let Ok(v) = header::HeaderValue::from_str(&rfc3339(next)) {
            resp.headers_mut().insert("x-next-from", v);
        }
    }
    Ok(resp)
}

/// The fixes of a page, in time order, and the time of the first fix after the page.
async fn track_points(
    db: &deadpool_postgres::Object,
    id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    scope: Option<&str>,
    limit: i64,
) -> ApiResult<(Vec<Point>, Option<DateTime<Utc>>)> {
    use futures_util::TryStreamExt;
    // A cooperative sees only the fixes it sent (a vehicle may have changed hands).
    let stmt = db
        .prepare_cached(
            "SELECT ts, lat, lon, speed_kmh, heading_deg, driver_id FROM fixes
             WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3
               AND ($4::text IS NULL OR cooperative_id = $4)
             ORDER BY ts LIMIT $5",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&id, &from, &to, &scope, &(limit + 1)];
    let rows = db.query_raw(&stmt, params).await?;
    futures_util::pin_mut!(rows);
    let mut points = Vec::new();
    // Rows are converted as they arrive rather than after the whole result.
    while let Some(r) = rows.try_next().await? {
        points.push(Point {
            ts: r.get(0),
            lat: r.get(1),
            lon: r.get(2),
            speed_kmh: r.get(3),
            heading_deg: r.get(4),
            driver_id: r.get(5),
        });
    }
    let next = if points.len() as i64 > limit {
        points.pop().map(|p| p.ts)
    } else {
        None
    };
    Ok((points, next))
}

/// What a GeoJSON track says about itself.
struct Page<'a> {
    id: &'a str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Fixes in the page before simplification.
    total: usize,
    next_from: Option<DateTime<Utc>>,
    trips: &'a Value,
    stops: &'a Value,
}

impl Page<'_> {
    /// `"vehicle_id":…,"from":…,"to":…,"fixes":…,"next_from":…` (no braces).
    fn write_fields(&self, out: &mut Vec<u8>, points: usize) {
        out.extend_from_slice(b"\"vehicle_id\":");
        json_str(out, self.id);
        out.extend_from_slice(b",\"from\":");
        json_time(out, self.from);
        out.extend_from_slice(b",\"to\":");
        json_time(out, self.to);
        let _ = write!(
            out,
            ",\"fixes\":{},\"points\":{points},\"next_from\":",
            self.total
        );
        match self.next_from {
            Some(t) => json_time(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"trips\":");
        let _ = serde_json::to_writer(&mut *out, self.trips);
        out.extend_from_slice(b",\"stops\":");
        let _ = serde_json::to_writer(&mut *out, self.stops);
    }
}

// The track writers format straight into bytes: a day at 1 Hz is 86,400 points, and a
// tree of `serde_json::Value`s costs several times the output.

/// A JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(out, s);
}

/// A time as a JSON string in [`rfc3339`] form.
fn json_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    out.push(b'"');
    push_rfc3339(out, t);
    out.push(b'"');
}

/// Appends `t` exactly as [`rfc3339`] writes it, without its allocations.
fn push_rfc3339(out: &mut Vec<u8>, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let n = t.naive_utc();
    let ns = n.nanosecond();
    if !(0..=9999).contains(&n.year()) || ns >= 1_000_000_000 {
        // Years chrono writes with a sign, and leap seconds: rare, take the slow path.
        out.extend_from_slice(rfc3339(t).as_bytes());
        return;
    }
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        n.year(),
        n.month(),
        n.day(),
        n.hour(),
        n.minute(),
        n.second()
    );
    if ns == 0 {
    } else if ns.is_multiple_of(1_000_000) {
        let _ = write!(out, ".{:03}", ns / 1_000_000);
    } else if ns.is_multiple_of(1_000) {
        let _ = write!(out, ".{:06}", ns / 1_000);
    } else {
        let _ = write!(out, ".{ns:09}");
    }
    out.push(b'Z');
}

/// A JSON number in its shortest form, with `.0` on whole numbers as serde_json
/// writes them (typed clients see a float either way).
fn json_num(out: &mut Vec<u8>, v: impl Into<f64> + std::fmt::Display + Copy) {
    let _ = write!(out, "{v}");
    if v.into().fract() == 0.0 {
        out.extend_from_slice(b".0");
    }
}

/// A JSON number or `null`.
fn json_opt_f32(out: &mut Vec<u8>, v: Option<f32>) {
    match v {
        Some(v) => json_num(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `[lon,lat]`.
fn json_lonlat(out: &mut Vec<u8>, p: &Point) {
    out.push(b'[');
    json_num(out, p.lon);
    out.push(b',');
    json_num(out, p.lat);
    out.push(b']');
}

/// Writes `items` as a JSON array with `each` writing one element.
fn json_array<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, x);
    }
    out.push(b']');
}

/// One Feature: a LineString of the points, with their times, speeds and headings as
/// parallel arrays in its properties (a Point for one fix, no geometry for none).
fn geojson_line(page: &Page, points: &[&Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 + points.len() * 80);
    out.extend_from_slice(b"{\"type\":\"Feature\",\"geometry\":");
    match points {
        [] => out.extend_from_slice(b"null"),
        [p] => {
            out.extend_from_slice(b"{\"type\":\"Point\",\"coordinates\":");
            json_lonlat(&mut out, p);
            out.push(b'}');
        }
        _ => {
            out.extend_from_slice(b"{\"type\":\"LineString\",\"coordinates\":");
            json_array(&mut out, points, |o, p| json_lonlat(o, p));
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"properties\":{");
    page.write_fields(&mut out, points.len());
    out.extend_from_slice(b",\"times\":");
    json_array(&mut out, points, |o, p| json_time(o, p.ts));
    out.extend_from_slice(b",\"speeds_kmh\":");
    json_array(&mut out, points, |o, p| json_opt_f32(o, Some(p.speed_kmh)));
    out.extend_from_slice(b",\"headings_deg\":");
    json_array(&mut out, points, |o, p| json_opt_f32(o, p.heading_deg));
    out.extend_from_slice(b"}}");
    out
}

/// A FeatureCollection of one Point per fix.
fn geojson_points(page: &Page, points: &[&Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 + points.len() * 200);
    out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":");
    json_array(&mut out, points, |o, p| {
        o.extend_from_slice(
            b"{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":",
        );
        json_lonlat(o, p);
        o.extend_from_slice(b"},\"properties\":{\"ts\":");
        json_time(o, p.ts);
        o.extend_from_slice(b",\"speed_kmh\":");
        json_num(o, p.speed_kmh);
        o.extend_from_slice(b",\"heading_deg\":");
        json_opt_f32(o, p.heading_deg);
        o.extend_from_slice(b",\"driver_id\":");
        match &p.driver_id {
            Some(d) => json_str(o, d),
            None => o.extend_from_slice(b"null"),
        }
        o.extend_from_slice(b"}}");
    });
    out.extend_from_slice(b",\"properties\":{");
    page.write_fields(&mut out, points.len());
    out.extend_from_slice(b"}}");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn gpx(id: &str, points: &[&Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + points.len() * 160);
    out.extend_from_slice(
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <gpx version=\"1.1\" creator=\"fleetwatch\" xmlns=\"http://www.topografix.com/GPX/1/1\" \
         xmlns:fw=\"urn:fleetwatch:gpx:1\">\n",
    );
    let _ = writeln!(out, "<trk><name>{}</name><trkseg>", xml_escape(id));
    for p in points {
        let _ = write!(
            out,
            "<trkpt lat=\"{:.7}\" lon=\"{:.7}\"><time>",
            p.lat, p.lon
        );
        push_rfc3339(&mut out, p.ts);
        let _ = writeln!(
            out,
            "</time><extensions><fw:speed_kmh>{:.1}</fw:speed_kmh></extensions></trkpt>",
            p.speed_kmh
        );
    }
    out.extend_from_slice(b"</trkseg></trk>\n</gpx>\n");
    out
}

fn csv(points: &[&Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + points.len() * 80);
    out.extend_from_slice(b"ts,lat,lon,speed_kmh,heading_deg,driver_id\n");
    for p in points {
        push_rfc3339(&mut out, p.ts);
        let _ = write!(out, ",{:.7},{:.7},{:.1},", p.lat, p.lon, p.speed_kmh);
        if let Some(h) = p.heading_deg {
            let _ = write!(out, "{h:.0}");
        }
        // Driver ids are [A-Za-z0-9-_.]: nothing to quote.
        let _ = writeln!(out, ",{}", p.driver_id.as_deref().unwrap_or(""));
    }
    out
}

/// The trips starting in the range, and the stops between them, as JSON.
async fn trips_json(
    db: &deadpool_postgres::Object,
    id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    scope: Option<&str>,
) -> ApiResult<TripsAndStops> {
    // Where a trip ended is where the stop after it is: the fix at its end.
    let rows = db
        .query(
            "SELECT t.start_ts, t.end_ts, t.driver_id, t.distance_m, t.max_speed_kmh, f.lat, f.lon
             FROM trips t
             LEFT JOIN fixes f ON f.vehicle_id = t.vehicle_id AND f.ts = t.end_ts
             WHERE t.vehicle_id = $1 AND t.start_ts >= $2 AND t.start_ts < $3
               AND ($4::text IS NULL OR t.cooperative_id IS NULL OR t.cooperative_id = $4)
             ORDER BY t.start_ts",
            &[&id, &from, &to, &scope],
        )
        .await?;
    let trips = rows
        .iter()
        .map(|r| {
            json!({
                "start": rfc3339(r.get(0)),
                "end": rfc3339(r.get(1)),
                "driver_id": r.get::<_, Option<String>>(2),
                "distance_m": r.get::<_, f64>(3),
                "max_speed_kmh": r.get::<_, f64>(4),
            })
        })
        .collect();
    let stops = rows
        .windows(2)
        .map(|w| {
            let (start, end): (DateTime<Utc>, DateTime<Utc>) = (w[0].get(1), w[1].get(0));
            json!({
                "start": rfc3339(start),
                "end": rfc3339(end),
                "duration_s": (end - start).num_milliseconds() as f64 / 1000.0,
                "lat": w[0].get::<_, Option<f64>>(5),
                "lon": w[0].get::<_, Option<f64>>(6),
            })
        })
        .collect();
    Ok(TripsAndStops {
        trips: Value::Array(trips),
        stops: Value::Array(stops),
    })
}

/// Trips of a range and the stops between consecutive ones.
struct TripsAndStops {
    trips: Value,
    stops: Value,
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
    let t = trips_json(&db, &id, from, to, caller.scope()).await?;
    Ok(Json(json!({
        "vehicle_id": id, "from": rfc3339(from), "to": rfc3339(to),
        "trips": t.trips, "stops": t.stops,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fast_rfc3339_writes_what_chrono_writes(
            secs in -62_000_000_000i64..300_000_000_000,
            ns in prop_oneof![
                Just(0u32),
                (0u32..1000).prop_map(|m| m * 1_000_000),
                (0u32..1_000_000).prop_map(|u| u * 1000),
                0u32..1_000_000_000,
            ],
        ) {
            let t = DateTime::from_timestamp(secs, ns).unwrap();
            let mut out = Vec::new();
            push_rfc3339(&mut out, t);
            prop_assert_eq!(String::from_utf8(out).unwrap(), rfc3339(t));
        }
    }

    fn point(i: i64) -> Point {
        Point {
            ts: DateTime::from_timestamp(1_790_000_000 + i, 0).unwrap(),
            lat: 10.9 + i as f64 * 1e-4,
            lon: 106.7,
            speed_kmh: 40.3,
            heading_deg: if i == 0 { None } else { Some(90.0) },
            driver_id: Some("D-\"1".into()),
        }
    }

    #[test]
    fn geojson_writers_produce_valid_geojson() {
        let pts: Vec<Point> = (0..3).map(point).collect();
        let refs: Vec<&Point> = pts.iter().collect();
        let trips = json!([{ "distance_m": 12.5 }]);
        let page = Page {
            id: "V-1",
            from: pts[0].ts,
            to: pts[2].ts,
            total: 3,
            next_from: Some(pts[2].ts),
            trips: &trips,
            stops: &json!([]),
        };
        let line: Value = serde_json::from_slice(&geojson_line(&page, &refs)).unwrap();
        assert_eq!(line["geometry"]["type"], "LineString");
        assert_eq!(line["geometry"]["coordinates"][1], json!([106.7, 10.9001]));
        assert_eq!(line["properties"]["times"][0], rfc3339(pts[0].ts));
        // Shortest form of the f32, as a person wrote it.
        assert_eq!(line["properties"]["speeds_kmh"][2], json!(40.3));
        assert_eq!(
            line["properties"]["headings_deg"],
            json!([null, 90.0, 90.0])
        );
        assert_eq!(line["properties"]["next_from"], rfc3339(pts[2].ts));
        assert_eq!(line["properties"]["trips"], trips);
        let one: Value = serde_json::from_slice(&geojson_line(&page, &refs[..1])).unwrap();
        assert_eq!(one["geometry"]["type"], "Point");
        let none: Value = serde_json::from_slice(&geojson_line(&page, &[])).unwrap();
        assert!(none["geometry"].is_null());
        let fc: Value = serde_json::from_slice(&geojson_points(&page, &refs)).unwrap();
        assert_eq!(fc["features"].as_array().unwrap().len(), 3);
        assert_eq!(fc["features"][1]["properties"]["driver_id"], "D-\"1");
        assert_eq!(fc["properties"]["fixes"], 3);
    }
}
