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
use crate::domain::live::LiveTrip;
use crate::domain::{CooperativeId, Vehicle};
use crate::geo::LocalFrame;
use crate::store::registry;

/// Most fixes one track page may hold (before simplification).
pub const MAX_TRACK_FIXES: i64 = 500_000;
/// Above this speed a vehicle is `moving`, km/h (GPS noise keeps parked ones above 0).
pub const MOVING_KMH: f32 = 3.0;

/// RFC 3339, UTC, with milliseconds only when needed.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `GET /api/v1/vehicles`: every visible vehicle, its latest position, status,
/// driving time and open alerts.
pub async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let db = s.db.get().await?;
    let vehicles = live_vehicles(&db, caller.scope(), None, &s.settings, Utc::now()).await?;
    // Serialised straight from the structs: a fleet of 10,000 is megabytes of JSON.
    let body = serde_json::to_vec(&LiveList { vehicles })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The live list of the vehicles of `scope` (`None`: all), only those of `only` when
/// given, sorted by id, with driving figures read at `now`.
pub(crate) async fn live_vehicles(
    db: &tokio_postgres::Client,
    scope: Option<&str>,
    only: Option<&[String]>,
    settings: &crate::config::Settings,
    now: DateTime<Utc>,
) -> Result<Vec<LiveVehicle>, tokio_postgres::Error> {
    // One row per vehicle: the writer keeps the latest position in `vehicles`. Byte
    // order (COLLATE "C") sorts ids without the cost of a linguistic collation.
    let rows = db
        .query(
            "SELECT vehicle_id, cooperative_id, plate, class, route_id, registered, last_seen,
                    last_fix_ts, last_lat, last_lon, last_speed_kmh, last_heading_deg,
                    last_driver_id, device_id, live_as_of_ts, live_driver_id,
                    live_driver_since_ts, live_moving, live_continuous_s, live_last_drive_end_ts,
                    live_day, live_daily_s, live_weekly_s, live_on_route,
                    live_trip_id, live_trip_route_id, live_trip_service_date, live_trip_start_ts,
                    live_trip_direction, live_trip_headsign, live_next_stop_id,
                    live_next_stop_sequence, live_next_stop_name, live_delay_s,
                    live_trip_confidence
             FROM vehicles
             WHERE ($1::text IS NULL OR cooperative_id = $1)
               AND ($2::text[] IS NULL OR vehicle_id = ANY ($2))
             ORDER BY vehicle_id COLLATE \"C\"",
            &[&scope, &only],
        )
        .await?;
    let open = db
        .query(
            "SELECT a.vehicle_id, a.alert_id, a.kind, a.level, a.start_ts
             FROM alerts a JOIN vehicles v ON v.vehicle_id = a.vehicle_id
             WHERE a.status = 'open' AND a.retracted_at IS NULL
               AND ($1::text IS NULL OR v.cooperative_id = $1)
               AND ($2::text[] IS NULL OR a.vehicle_id = ANY ($2))
             ORDER BY a.start_ts",
            &[&scope, &only],
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
    let lim = settings.rules.driving_limits();
    Ok(rows
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
            let driving = r.get::<_, Option<DateTime<Utc>>>(14).map(|as_of| {
                let f = crate::domain::live::driving_now(
                    &lim,
                    now,
                    r.get::<_, Option<f64>>(18).unwrap_or(0.0),
                    r.get(19),
                    r.get(20),
                    r.get::<_, Option<f64>>(21).unwrap_or(0.0),
                    r.get::<_, Option<f64>>(22).unwrap_or(0.0),
                );
                Driving {
                    as_of: Rfc3339(as_of),
                    driver_id: r.get(15),
                    driver_since: r.get::<_, Option<DateTime<Utc>>>(16).map(Rfc3339),
                    moving: r.get::<_, Option<bool>>(17).unwrap_or(false),
                    continuous_s: f.continuous_s.round(),
                    continuous_left_s: f.continuous_left_s.round(),
                    daily_s: f.daily_s.round(),
                    daily_left_s: f.daily_left_s.round(),
                }
            });
            LiveVehicle {
                vehicle_id: id,
                cooperative_id: r.get(1),
                plate: r.get(2),
                class: r.get(3),
                route_id: r.get(4),
                device_id: r.get(13),
                registered: r.get(5),
                last_seen: r.get::<_, Option<DateTime<Utc>>>(6).map(Rfc3339),
                position,
                status,
                on_route: r.get(23),
                trip: live_trip(r),
                driving,
                open_alerts,
            }
        })
        .collect())
}

/// The live list.
#[derive(Serialize)]
struct LiveList {
    vehicles: Vec<LiveVehicle>,
}

/// One vehicle of the live list.
#[derive(Serialize, PartialEq)]
pub(crate) struct LiveVehicle {
    pub(crate) vehicle_id: String,
    pub(crate) cooperative_id: String,
    plate: Option<String>,
    class: Option<String>,
    route_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    registered: bool,
    last_seen: Option<Rfc3339>,
    position: Option<Position>,
    status: &'static str,
    /// Inside its route's corridor (`None`: no route, or not known yet).
    on_route: Option<bool>,
    /// The scheduled trip it runs (buses on GTFS routes; `None`: none assigned).
    pub(crate) trip: Option<LiveTrip>,
    /// Driving time of whoever drives it (the vehicle's own without a driver card).
    driving: Option<Driving>,
    open_alerts: Vec<OpenAlert>,
}

/// The live trip of a row of [`live_vehicles`] (columns 24..=34).
fn live_trip(r: &tokio_postgres::Row) -> Option<LiveTrip> {
    live_trip_at(r, 24)
}

/// The live trip of a row whose columns from `i` on are `live_trip_id`,
/// `live_trip_route_id`, `live_trip_service_date`, `live_trip_start_ts`,
/// `live_trip_direction`, `live_trip_headsign`, `live_next_stop_id`,
/// `live_next_stop_sequence`, `live_next_stop_name`, `live_delay_s`,
/// `live_trip_confidence`.
pub(crate) fn live_trip_at(r: &tokio_postgres::Row, i: usize) -> Option<LiveTrip> {
    Some(LiveTrip {
        trip_id: r.get::<_, Option<String>>(i)?,
        route_id: r.get::<_, Option<String>>(i + 1)?,
        service_date: r.get::<_, Option<chrono::NaiveDate>>(i + 2)?,
        scheduled_start: r.get::<_, Option<DateTime<Utc>>>(i + 3)?,
        direction: r
            .get::<_, Option<i16>>(i + 4)
            .and_then(|d| u8::try_from(d).ok()),
        headsign: r.get(i + 5),
        next_stop_id: r.get(i + 6),
        next_stop_sequence: r
            .get::<_, Option<i32>>(i + 7)
            .and_then(|q| u32::try_from(q).ok()),
        next_stop_name: r.get(i + 8),
        delay_s: r.get(i + 9),
        confidence: r
            .get::<_, Option<i16>>(i + 10)
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(0),
    })
}

/// Driving time of a vehicle's driver, read at the request's time.
#[derive(Serialize, PartialEq)]
struct Driving {
    /// Fix time the rules' figures are from.
    as_of: Rfc3339,
    driver_id: Option<String>,
    /// Since when this driver has been on the vehicle.
    driver_since: Option<Rfc3339>,
    /// Moving at that fix: the page counts the time left down while it is.
    moving: bool,
    continuous_s: f64,
    continuous_left_s: f64,
    daily_s: f64,
    daily_left_s: f64,
}

/// The latest position of a vehicle.
#[derive(Serialize, PartialEq)]
struct Position {
    ts: Rfc3339,
    lat: f64,
    lon: f64,
    speed_kmh: Option<f32>,
    heading_deg: Option<f32>,
    driver_id: Option<String>,
}

/// An open alert in the live list.
#[derive(Serialize, PartialEq)]
struct OpenAlert {
    id: String,
    kind: String,
    level: String,
    start: Rfc3339,
}

/// A time serialised as [`rfc3339`].
#[derive(PartialEq)]
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
    /// The GPS device fitted (IMEI, JT/T 808 terminal phone number, OsmAnd app id);
    /// taken off any other vehicle that had it.
    pub device_id: Option<String>,
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
        device_id: b
            .device_id
            .map(|d| crate::domain::vehicle::device_id(&d))
            .transpose()
            .map_err(|e| ApiError::bad(format!("device_id: {e}")))?,
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
        "device_id": vehicle.device_id,
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
    #[serde(default, deserialize_with = "super::time::opt")]
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (default: now).
    #[serde(default, deserialize_with = "super::time::opt")]
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

#[derive(Debug, Clone, PartialEq)]
struct Point {
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f32,
    heading_deg: Option<f32>,
    driver_id: Option<String>,
}

impl Point {
    /// A row of [`TRACK_ROWS`].
    fn from_row(r: &tokio_postgres::Row) -> Self {
        Self {
            ts: r.get(0),
            lat: r.get(1),
            lon: r.get(2),
            speed_kmh: r.get(3),
            heading_deg: r.get(4),
            driver_id: r.get(5),
        }
    }
}

/// Douglas-Peucker over points given one at a time, in a local metric plane centred on
/// the first point (lon/lat degrees are not metres): 16 bytes per point.
#[derive(Default)]
struct Simplifier {
    frame: Option<LocalFrame>,
    line: Vec<geo::Coord<f64>>,
}

impl Simplifier {
    fn push(&mut self, lon: f64, lat: f64) {
        let frame = self.frame.get_or_insert_with(|| LocalFrame::new(lon, lat));
        let [x, y] = frame.to_xy(lon, lat);
        self.line.push(geo::coord! { x: x, y: y });
    }

    /// Indices of the points kept with `tol_m` metres.
    fn kept(self, tol_m: f64) -> Vec<usize> {
        use geo::SimplifyIdx;
        geo::LineString::new(self.line).simplify_idx(tol_m)
    }
}

/// Output format of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackFormat {
    /// One GeoJSON Feature (LineString) with parallel arrays of times, speeds, headings.
    Line,
    /// A GeoJSON FeatureCollection of one Point per fix.
    Points,
    /// GPX 1.1.
    Gpx,
    /// CSV, one line per fix.
    Csv,
}

impl TrackFormat {
    fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s.unwrap_or("geojson") {
            "geojson" => Ok(Self::Line),
            "geojson_points" => Ok(Self::Points),
            "gpx" => Ok(Self::Gpx),
            "csv" => Ok(Self::Csv),
            _ => Err(ApiError::bad(
                "format must be geojson, geojson_points, gpx or csv",
            )),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Line | Self::Points => "application/geo+json",
            Self::Gpx => "application/gpx+xml",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// A checked track request.
struct TrackRequest {
    id: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    scope: Option<String>,
    limit: i64,
    /// Douglas-Peucker tolerance, metres; 0 = every fix.
    tol_m: f64,
    format: TrackFormat,
}

/// `GET /api/v1/vehicles/{id}/track`.
///
/// The page is streamed: rows come from the database as they are read and are encoded
/// into chunks of [`CHUNK_BYTES`] as they come, so a page of [`MAX_TRACK_FIXES`] fixes
/// costs kilobytes of memory, not the whole answer (the GeoJSON line keeps 16 bytes per
/// point for its parallel arrays, a simplified track 16 bytes per fix for
/// Douglas-Peucker). Everything a page says comes from one snapshot of the database.
pub async fn track(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    q: Result<Query<TrackQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let format = TrackFormat::parse(q.format.as_deref())?;
    let tol_m = q.simplify_m.unwrap_or(0.0);
    if !tol_m.is_finite() || tol_m < 0.0 {
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
    let permit = s.heavy.try_acquire(&caller)?;
    let db = s.db.get().await?;
    let id = visible_vehicle(&db, &caller, &raw).await?;
    let req = TrackRequest {
        id,
        from,
        to,
        scope: caller.scope().map(str::to_string),
        limit,
        tol_m,
        format,
    };
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (body_tx, body_rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        // Held until the last byte is handed over (or the client has gone).
        let _permit = permit;
        let mut db = db;
        stream_track(&mut db, &req, head_tx, body_tx).await;
    });
    let next_from = head_rx
        .await
        .map_err(|_| ApiError::Internal("track task ended early".into()))??;
    let body =
        axum::body::Body::from_stream(futures_util::stream::unfold(body_rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }));
    let mut resp = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if let Some(next) = next_from {
        // Every format says where the next page starts; GeoJSON also in its properties.
        if let Ok(v) = header::HeaderValue::from_str(&rfc3339(next)) {
            resp.headers_mut().insert("x-next-from", v);
        }
    }
    Ok(resp)
}

/// Bytes gathered before a chunk of a streamed track is handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;

/// The fixes of a track page, in time order: `ts, lat, lon, speed_kmh, heading_deg,
/// driver_id`; $1 vehicle, $2 from, $3 to, $4 scope, $5 limit. A cooperative sees only
/// the fixes it sent (a vehicle may have changed hands).
const TRACK_ROWS: &str = "SELECT ts, lat_e7 / 1e7::float8, lon_e7 / 1e7::float8, speed_kmh, heading_deg, driver_id FROM fixes
     WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3
       AND ($4::text IS NULL OR cooperative_id = $4)
     ORDER BY ts LIMIT $5";

/// Why a streamed page stopped.
enum Stop {
    /// The client went away: nothing to report.
    Gone,
    /// The database failed.
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Stop {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

/// Where the encoded bytes go: a buffer handed over in chunks of [`CHUNK_BYTES`].
struct Sink {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
}

impl Sink {
    /// Hands the buffer over once it holds a chunk; waits while the client is slower.
    async fn maybe_flush(&mut self) -> Result<(), Stop> {
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + 1024));
        self.tx.send(Ok(chunk.into())).await.map_err(|_| Stop::Gone)
    }
}

/// Runs one track page in a read-only snapshot: its end (`next_from`, sent through
/// `head` so the headers can say it), then the rows, encoded as they come, into `body`.
/// A failure before the headers is answered as an error; after them the body is cut
/// short (the client sees an incomplete chunked response) and the failure logged.
async fn stream_track(
    db: &mut deadpool_postgres::Object,
    req: &TrackRequest,
    head: tokio::sync::oneshot::Sender<ApiResult<Option<DateTime<Utc>>>>,
    body: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
) {
    let tx = match db
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
    {
        Ok(tx) => tx,
        Err(e) => {
            let _ = head.send(Err(e.into()));
            return;
        }
    };
    let (total, next_from, trips) = match page_head(&tx, req).await {
        Ok(h) => h,
        Err(e) => {
            let _ = head.send(Err(e));
            return;
        }
    };
    if head.send(Ok(next_from)).is_err() {
        return;
    }
    let mut sink = Sink {
        buf: Vec::with_capacity(CHUNK_BYTES + 1024),
        tx: body,
    };
    let result = write_page(&tx, req, total, next_from, trips.as_ref(), &mut sink).await;
    match result {
        Ok(()) => {
            let _ = tx.commit().await;
        }
        Err(Stop::Gone) => {}
        Err(Stop::Db(e)) => {
            tracing::error!(error = %e, vehicle = %req.id, "track page cut short");
            let _ = sink
                .tx
                .send(Err(std::io::Error::other(e.to_string())))
                .await;
        }
    }
}

/// Fixes in the page (at most the limit), the time of the first fix after it, and for
/// GeoJSON the trips and stops of the range.
async fn page_head(
    tx: &deadpool_postgres::Transaction<'_>,
    req: &TrackRequest,
) -> ApiResult<(usize, Option<DateTime<Utc>>, Option<TripsAndStops>)> {
    let row = tx
        .query_one(
            &format!("SELECT count(*), max(ts) FROM ({TRACK_ROWS}) page"),
            &[&req.id, &req.from, &req.to, &req.scope, &(req.limit + 1)],
        )
        .await?;
    let n: i64 = row.get(0);
    let (total, next_from) = if n > req.limit {
        (req.limit, row.get::<_, Option<DateTime<Utc>>>(1))
    } else {
        (n, None)
    };
    let trips = match req.format {
        TrackFormat::Line | TrackFormat::Points => {
            Some(trips_json(&**tx, &req.id, req.from, req.to, req.scope.as_deref()).await?)
        }
        TrackFormat::Gpx | TrackFormat::Csv => None,
    };
    Ok((total as usize, next_from, trips))
}

/// Streams the page's rows through an encoder; with simplification, a first pass reads
/// the coordinates alone to choose the points.
async fn write_page(
    tx: &deadpool_postgres::Transaction<'_>,
    req: &TrackRequest,
    total: usize,
    next_from: Option<DateTime<Utc>>,
    trips: Option<&TripsAndStops>,
    sink: &mut Sink,
) -> Result<(), Stop> {
    use futures_util::TryStreamExt;
    let stmt = tx.prepare_cached(TRACK_ROWS).await?;
    let params = || -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [&req.id, &req.from, &req.to, &req.scope, &req.limit]
    };
    let kept: Option<Vec<usize>> = if req.tol_m > 0.0 && total > 2 {
        let rows = tx.query_raw(&stmt, params()).await?;
        futures_util::pin_mut!(rows);
        let mut s = Simplifier {
            line: Vec::with_capacity(total),
            ..Simplifier::default()
        };
        while let Some(r) = rows.try_next().await? {
            s.push(r.get(2), r.get(1));
        }
        Some(s.kept(req.tol_m))
    } else {
        None
    };
    let points = kept.as_ref().map_or(total, Vec::len);
    let empty = Value::Array(Vec::new());
    let page = Page {
        id: &req.id,
        from: req.from,
        to: req.to,
        total,
        next_from,
        trips: trips.map_or(&empty, |t| &t.trips),
        stops: trips.map_or(&empty, |t| &t.stops),
    };
    let mut enc = Encoder::new(req.format, page, points);
    enc.start(&mut sink.buf);
    let rows = tx.query_raw(&stmt, params()).await?;
    futures_util::pin_mut!(rows);
    let mut next_kept = kept.as_ref().map(|k| k.iter().copied().peekable());
    let mut i = 0usize;
    while let Some(r) = rows.try_next().await? {
        let keep = match next_kept.as_mut() {
            None => true,
            Some(k) => k.next_if_eq(&i).is_some(),
        };
        i += 1;
        if keep {
            enc.point(&mut sink.buf, &Point::from_row(&r));
            sink.maybe_flush().await?;
        }
    }
    enc.end_into(sink).await?;
    sink.flush().await
}

/// What a GeoJSON track says about itself.
#[derive(Clone, Copy)]
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

/// Encodes one page in any format, point by point: [`Encoder::start`], then
/// [`Encoder::point`] for each of the `points` announced, then [`Encoder::end`].
struct Encoder<'a> {
    format: TrackFormat,
    page: Page<'a>,
    /// Points in the page (after simplification).
    points: usize,
    written: usize,
    /// GeoJSON line: time (µs since the epoch, as PostgreSQL keeps it), speed and
    /// heading (NaN: none) of each point, for the parallel arrays after the geometry.
    side: Vec<(i64, f32, f32)>,
}

impl<'a> Encoder<'a> {
    fn new(format: TrackFormat, page: Page<'a>, points: usize) -> Self {
        let side = if format == TrackFormat::Line {
            Vec::with_capacity(points)
        } else {
            Vec::new()
        };
        Self {
            format,
            page,
            points,
            written: 0,
            side,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        match self.format {
            // One Feature: a LineString of the points, with their times, speeds and
            // headings as parallel arrays in its properties (a Point for one fix, no
            // geometry for none).
            TrackFormat::Line => {
                out.extend_from_slice(b"{\"type\":\"Feature\",\"geometry\":");
                match self.points {
                    0 => out.extend_from_slice(b"null"),
                    1 => out.extend_from_slice(b"{\"type\":\"Point\",\"coordinates\":"),
                    _ => out.extend_from_slice(b"{\"type\":\"LineString\",\"coordinates\":["),
                }
            }
            // A FeatureCollection of one Point per fix.
            TrackFormat::Points => {
                out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[")
            }
            TrackFormat::Gpx => {
                out.extend_from_slice(
                    b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                     <gpx version=\"1.1\" creator=\"fleetwatch\" xmlns=\"http://www.topografix.com/GPX/1/1\" \
                     xmlns:fw=\"urn:fleetwatch:gpx:1\">\n",
                );
                let _ = writeln!(
                    out,
                    "<trk><name>{}</name><trkseg>",
                    xml_escape(self.page.id)
                );
            }
            TrackFormat::Csv => {
                out.extend_from_slice(b"ts,lat,lon,speed_kmh,heading_deg,driver_id\n")
            }
        }
    }

    fn point(&mut self, out: &mut Vec<u8>, p: &Point) {
        let first = self.written == 0;
        self.written += 1;
        match self.format {
            TrackFormat::Line => {
                if self.points == 1 {
                    if first {
                        json_lonlat(out, p);
                    }
                } else {
                    if !first {
                        out.push(b',');
                    }
                    json_lonlat(out, p);
                }
                self.side.push((
                    p.ts.timestamp_micros(),
                    p.speed_kmh,
                    p.heading_deg.unwrap_or(f32::NAN),
                ));
            }
            TrackFormat::Points => {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(
                    b"{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":",
                );
                json_lonlat(out, p);
                out.extend_from_slice(b"},\"properties\":{\"ts\":");
                json_time(out, p.ts);
                out.extend_from_slice(b",\"speed_kmh\":");
                json_num(out, p.speed_kmh);
                out.extend_from_slice(b",\"heading_deg\":");
                json_opt_f32(out, p.heading_deg);
                out.extend_from_slice(b",\"driver_id\":");
                match &p.driver_id {
                    Some(d) => json_str(out, d),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b"}}");
            }
            TrackFormat::Gpx => {
                let _ = write!(
                    out,
                    "<trkpt lat=\"{:.7}\" lon=\"{:.7}\"><time>",
                    p.lat, p.lon
                );
                push_rfc3339(out, p.ts);
                let _ = writeln!(
                    out,
                    "</time><extensions><fw:speed_kmh>{:.1}</fw:speed_kmh></extensions></trkpt>",
                    p.speed_kmh
                );
            }
            TrackFormat::Csv => {
                push_rfc3339(out, p.ts);
                let _ = write!(out, ",{:.7},{:.7},{:.1},", p.lat, p.lon, p.speed_kmh);
                if let Some(h) = p.heading_deg {
                    let _ = write!(out, "{h:.0}");
                }
                // Driver ids are [A-Za-z0-9-_.]: nothing to quote.
                let _ = writeln!(out, ",{}", p.driver_id.as_deref().unwrap_or(""));
            }
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        match self.format {
            TrackFormat::Line => {
                self.line_tail_start(out);
                for (which, key) in LINE_ARRAYS.iter().enumerate() {
                    out.extend_from_slice(key);
                    self.line_array(out, which, 0..self.side.len());
                    out.push(b']');
                }
                out.extend_from_slice(b"}}");
            }
            TrackFormat::Points => {
                out.push(b']');
                out.extend_from_slice(b",\"properties\":{");
                self.page.write_fields(out, self.points);
                out.extend_from_slice(b"}}");
            }
            TrackFormat::Gpx => out.extend_from_slice(b"</trkseg></trk>\n</gpx>\n"),
            TrackFormat::Csv => {}
        }
    }
}

/// The parallel arrays of a GeoJSON line, in order, each up to its `[`.
const LINE_ARRAYS: [&[u8]; 3] = [
    b",\"times\":[",
    b",\"speeds_kmh\":[",
    b",\"headings_deg\":[",
];

impl Encoder<'_> {
    /// GeoJSON line: the end of the geometry and the page's fields, before the arrays.
    fn line_tail_start(&self, out: &mut Vec<u8>) {
        match self.points {
            0 => {}
            1 => out.push(b'}'),
            _ => out.extend_from_slice(b"]}"),
        }
        out.extend_from_slice(b",\"properties\":{");
        self.page.write_fields(out, self.points);
    }

    /// GeoJSON line: elements `items` of parallel array `which` (of [`LINE_ARRAYS`]).
    fn line_array(&self, out: &mut Vec<u8>, which: usize, items: std::ops::Range<usize>) {
        for i in items {
            if i > 0 {
                out.push(b',');
            }
            let (us, speed, heading) = self.side[i];
            match which {
                0 => match DateTime::from_timestamp_micros(us) {
                    Some(t) => json_time(out, t),
                    None => out.extend_from_slice(b"null"),
                },
                1 => json_opt_f32(out, Some(speed)),
                _ => json_opt_f32(out, (!heading.is_nan()).then_some(heading)),
            }
        }
    }

    /// [`Encoder::end`] into `sink`, handing over chunks as they fill: a GeoJSON line's
    /// arrays are megabytes for a full page.
    async fn end_into(&mut self, sink: &mut Sink) -> Result<(), Stop> {
        if self.format != TrackFormat::Line {
            self.end(&mut sink.buf);
            return Ok(());
        }
        self.line_tail_start(&mut sink.buf);
        let n = self.side.len();
        for (which, key) in LINE_ARRAYS.iter().enumerate() {
            sink.buf.extend_from_slice(key);
            let mut i = 0;
            while i < n {
                let j = (i + 4096).min(n);
                self.line_array(&mut sink.buf, which, i..j);
                sink.maybe_flush().await?;
                i = j;
            }
            sink.buf.push(b']');
        }
        sink.buf.extend_from_slice(b"}}");
        Ok(())
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The trips starting in the range, and the stops between them, as JSON.
async fn trips_json(
    db: &impl tokio_postgres::GenericClient,
    id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    scope: Option<&str>,
) -> ApiResult<TripsAndStops> {
    // Where a trip ended is where the stop after it is: the fix at its end.
    let rows = db
        .query(
            "SELECT t.start_ts, t.end_ts, t.driver_id, t.distance_m, t.max_speed_kmh,
                    f.lat_e7 / 1e7::float8, f.lon_e7 / 1e7::float8
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
    #[serde(default, deserialize_with = "super::time::opt")]
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (default: now).
    #[serde(default, deserialize_with = "super::time::opt")]
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
    let t = trips_json(&**db, &id, from, to, caller.scope()).await?;
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

    /// A whole page as [`track`] streams it.
    fn encode(format: TrackFormat, page: &Page, points: &[&Point]) -> Vec<u8> {
        let mut e = Encoder::new(format, *page, points.len());
        let mut out = Vec::new();
        e.start(&mut out);
        for p in points {
            e.point(&mut out, p);
        }
        e.end(&mut out);
        out
    }

    fn geojson_line(page: &Page, points: &[&Point]) -> Vec<u8> {
        encode(TrackFormat::Line, page, points)
    }

    fn geojson_points(page: &Page, points: &[&Point]) -> Vec<u8> {
        encode(TrackFormat::Points, page, points)
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
