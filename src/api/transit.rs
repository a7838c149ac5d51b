//! What buses ran: stored runs of scheduled (GTFS) trips and their stop events.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{vehicle_param, Caller};
use super::error::{ApiError, ApiResult};
use super::vehicles::rfc3339;
use super::AppState;

/// Rows per list request when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most rows per list request.
pub const MAX_LIMIT: i64 = 1_000;

/// Filters of the trip-run list; every one optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripRunQuery {
    /// Cooperative id (a cooperative token: its own only).
    pub cooperative: Option<String>,
    /// Vehicle id.
    pub vehicle: Option<String>,
    /// GTFS `route_id`.
    pub route: Option<String>,
    /// GTFS `trip_id`.
    pub trip: Option<String>,
    /// First local service date, inclusive (`YYYY-MM-DD`).
    pub from_date: Option<NaiveDate>,
    /// Last local service date, inclusive.
    pub to_date: Option<NaiveDate>,
    /// At most this many (default 100, at most 1,000).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn limit(l: Option<i64>) -> ApiResult<i64> {
    let l = l.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&l) {
        return Err(ApiError::bad(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok(l)
}

/// A page's cursor: the start (ms) and vehicle of its last run, `<ms>:<vehicle>`.
fn cursor(raw: Option<&str>) -> ApiResult<(Option<DateTime<Utc>>, Option<String>)> {
    let Some(raw) = raw else {
        return Ok((None, None));
    };
    let bad = || ApiError::bad("cursor: not a next_cursor of this list");
    let (ms, v) = raw.split_once(':').ok_or_else(bad)?;
    let ts = ms
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(bad)?;
    Ok((Some(ts), Some(v.to_string())))
}

/// `GET /api/v1/trip-runs`: runs of scheduled trips, newest first, `limit` a page
/// and `next_cursor` where the next page starts (absent on the last page).
pub async fn trip_runs(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<TripRunQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let coop = caller.cooperative_filter(q.cooperative.as_deref())?;
    let vehicle = q.vehicle.as_deref().map(vehicle_param).transpose()?;
    let limit = limit(q.limit)?;
    if let (Some(f), Some(t)) = (q.from_date, q.to_date) {
        if f > t {
            return Err(ApiError::bad("from_date must not be after to_date"));
        }
    }
    let (c_ts, c_vehicle) = cursor(q.cursor.as_deref())?;
    let db = s.db.get().await?;
    let rows = db
        .query(
            "SELECT t.vehicle_id, COALESCE(t.cooperative_id, v.cooperative_id), t.trip_id,
                    t.route_id, t.service_date, t.scheduled_start, t.start_ts, t.end_ts,
                    t.confidence, t.completed, t.stops_served, t.stops_skipped, t.stops_total,
                    t.last_delay_s, t.distance_m
             FROM trip_runs t LEFT JOIN vehicles v ON v.vehicle_id = t.vehicle_id
             WHERE ($1::text IS NULL OR COALESCE(t.cooperative_id, v.cooperative_id) = $1)
               AND ($2::text IS NULL OR t.vehicle_id = $2)
               AND ($3::text IS NULL OR t.route_id = $3)
               AND ($4::text IS NULL OR t.trip_id = $4)
               AND ($5::date IS NULL OR t.service_date >= $5)
               AND ($6::date IS NULL OR t.service_date <= $6)
               AND ($7::timestamptz IS NULL
                    OR (t.start_ts, t.vehicle_id COLLATE \"C\") < ($7, $8::text COLLATE \"C\"))
             ORDER BY t.start_ts DESC, t.vehicle_id COLLATE \"C\" DESC
             LIMIT $9",
            &[
                &coop,
                &vehicle,
                &q.route,
                &q.trip,
                &q.from_date,
                &q.to_date,
                &c_ts,
                &c_vehicle,
                &(limit + 1),
            ],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let runs: Vec<Value> = page
        .iter()
        .map(|r| {
            json!({
                "vehicle_id": r.get::<_, String>(0),
                "cooperative_id": r.get::<_, Option<String>>(1),
                "trip_id": r.get::<_, String>(2),
                "route_id": r.get::<_, String>(3),
                "service_date": r.get::<_, NaiveDate>(4).to_string(),
                "scheduled_start": rfc3339(r.get(5)),
                "start": rfc3339(r.get(6)),
                "end": rfc3339(r.get(7)),
                "confidence": r.get::<_, i16>(8),
                "completed": r.get::<_, bool>(9),
                "stops_served": r.get::<_, i16>(10),
                "stops_skipped": r.get::<_, i16>(11),
                "stops_total": r.get::<_, i16>(12),
                "last_delay_s": r.get::<_, Option<i32>>(13),
                "distance_m": r.get::<_, Option<f64>>(14),
            })
        })
        .collect();
    let next = more.then(|| {
        let last = &page[page.len() - 1];
        let ts: DateTime<Utc> = last.get(6);
        format!("{}:{}", ts.timestamp_millis(), last.get::<_, String>(0))
    });
    Ok(Json(
        json!({ "count": runs.len(), "trip_runs": runs, "next_cursor": next }),
    ))
}

/// Filters of the stop-event list: a vehicle or a trip (or both), and a time range.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopEventQuery {
    /// Vehicle id.
    pub vehicle: Option<String>,
    /// GTFS `trip_id`.
    pub trip: Option<String>,
    /// Events observed at or after (default: 24 h before `to`).
    #[serde(default, deserialize_with = "super::time::opt")]
    pub from: Option<DateTime<Utc>>,
    /// Events observed before (default: now).
    #[serde(default, deserialize_with = "super::time::opt")]
    pub to: Option<DateTime<Utc>>,
    /// At most this many (default 100, at most 1,000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/stop-events`: arrivals, departures and skips at the stops of
/// scheduled trips, in the order they were observed.
pub async fn stop_events(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<StopEventQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    if q.vehicle.is_none() && q.trip.is_none() {
        return Err(ApiError::bad("give a vehicle or a trip (or both)"));
    }
    let vehicle = q.vehicle.as_deref().map(vehicle_param).transpose()?;
    let limit = limit(q.limit)?;
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - TimeDelta::hours(24));
    if from >= to {
        return Err(ApiError::bad("from must be before to"));
    }
    let max = TimeDelta::days(i64::from(s.settings.http.max_track_days.max(1)));
    if to - from > max {
        return Err(ApiError::bad(format!(
            "range too long: at most {} days per request",
            max.num_days()
        )));
    }
    let db = s.db.get().await?;
    let rows = db
        .query(
            "SELECT e.vehicle_id, COALESCE(e.cooperative_id, v.cooperative_id), e.trip_id,
                    e.service_date, e.stop_sequence, e.stop_id, e.observed_ts,
                    e.scheduled_arrival, e.scheduled_departure, e.arrival_ts, e.departure_ts,
                    e.dwell_s, e.deviation_s, e.skipped
             FROM stop_events e LEFT JOIN vehicles v ON v.vehicle_id = e.vehicle_id
             WHERE ($1::text IS NULL OR COALESCE(e.cooperative_id, v.cooperative_id) = $1)
               AND ($2::text IS NULL OR e.vehicle_id = $2)
               AND ($3::text IS NULL OR e.trip_id = $3)
               AND e.observed_ts >= $4 AND e.observed_ts < $5
             ORDER BY e.observed_ts, e.vehicle_id COLLATE \"C\", e.stop_sequence
             LIMIT $6",
            &[&caller.scope(), &vehicle, &q.trip, &from, &to, &limit],
        )
        .await?;
    let events: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "vehicle_id": r.get::<_, String>(0),
                "cooperative_id": r.get::<_, Option<String>>(1),
                "trip_id": r.get::<_, String>(2),
                "service_date": r.get::<_, NaiveDate>(3).to_string(),
                "stop_sequence": r.get::<_, i32>(4),
                "stop_id": r.get::<_, String>(5),
                "observed": rfc3339(r.get(6)),
                "scheduled_arrival": rfc3339(r.get(7)),
                "scheduled_departure": rfc3339(r.get(8)),
                "arrival": r.get::<_, Option<DateTime<Utc>>>(9).map(rfc3339),
                "departure": r.get::<_, Option<DateTime<Utc>>>(10).map(rfc3339),
                "dwell_s": r.get::<_, Option<f64>>(11),
                "deviation_s": r.get::<_, Option<i32>>(12),
                "skipped": r.get::<_, bool>(13),
            })
        })
        .collect();
    Ok(Json(json!({
        "from": rfc3339(from), "to": rfc3339(to),
        "count": events.len(), "stop_events": events,
    })))
}
