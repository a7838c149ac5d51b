//! Alert lists and acknowledgements (the cooperative's reminder log).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{vehicle_param, Caller, Role};
use super::error::{ApiError, ApiResult};
use super::vehicles::rfc3339;
use super::AppState;

/// Alerts per list request when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most alerts per list request.
pub const MAX_LIMIT: i64 = 1_000;

/// Alert kinds, as stored.
pub const KINDS: &[&str] = &[
    "overspeed",
    "continuous_driving",
    "daily_driving",
    "weekly_driving",
    "off_route",
    "restricted_zone",
    "zone_enter",
    "zone_exit",
    "no_signal",
    "device_alarm",
    "stop_skipped",
    "schedule_deviation",
];
/// Alert levels.
pub const LEVELS: &[&str] = &["info", "warning", "violation"];
/// Alert statuses.
pub const STATUSES: &[&str] = &["open", "closed"];

/// Filters of the alert list; every one optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Cooperative id (a cooperative token: its own only).
    pub cooperative: Option<String>,
    /// Vehicle id.
    pub vehicle: Option<String>,
    /// Driver licence number.
    pub driver: Option<String>,
    /// One of [`KINDS`].
    pub kind: Option<String>,
    /// One of [`LEVELS`].
    pub level: Option<String>,
    /// `open` or `closed`.
    pub status: Option<String>,
    /// Overspeed severity band (Decree 168/2024 art. 6): alerts of this band or higher,
    /// 1..4.
    pub min_severity: Option<i16>,
    /// Alerts starting at or after.
    #[serde(default, deserialize_with = "super::time::opt")]
    pub from: Option<DateTime<Utc>>,
    /// Alerts starting before.
    #[serde(default, deserialize_with = "super::time::opt")]
    pub to: Option<DateTime<Utc>>,
    /// At most this many (default 100, at most 1,000).
    pub limit: Option<i64>,
    /// Also alerts a recomputation retracted (a late fix showed the episode did not
    /// happen); default false: they are left out.
    pub include_retracted: Option<bool>,
}

fn one_of(name: &str, v: Option<String>, allowed: &[&str]) -> ApiResult<Option<String>> {
    match v {
        Some(v) if !allowed.contains(&v.as_str()) => Err(ApiError::bad(format!(
            "{name} must be one of: {}",
            allowed.join(", ")
        ))),
        v => Ok(v),
    }
}

/// An alert row as JSON (columns in the order of [`SELECT_ALERT`]).
pub(crate) fn alert_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "id": r.get::<_, String>(0),
        "vehicle_id": r.get::<_, String>(1),
        "cooperative_id": r.get::<_, Option<String>>(2),
        "driver_id": r.get::<_, Option<String>>(3),
        "kind": r.get::<_, String>(4),
        "level": r.get::<_, String>(5),
        "status": r.get::<_, String>(6),
        "severity": r.get::<_, Option<i16>>(7),
        "start": rfc3339(r.get(8)),
        "end": r.get::<_, Option<DateTime<Utc>>>(9).map(rfc3339),
        "lat": r.get::<_, f64>(10),
        "lon": r.get::<_, f64>(11),
        "details": r.get::<_, Value>(12),
        "retracted_at": r.get::<_, Option<DateTime<Utc>>>(13).map(rfc3339),
        "retraction_reason": r.get::<_, Option<String>>(14),
    })
}

/// An alert's cooperative is its own, or for an unregistered vehicle's alert the one
/// the vehicle is listed under.
pub(crate) const SELECT_ALERT: &str =
    "SELECT a.alert_id, a.vehicle_id, COALESCE(a.cooperative_id, v.cooperative_id),
        a.driver_id, a.kind, a.level, a.status, a.severity, a.start_ts, a.end_ts, a.lat, a.lon,
        a.details, a.retracted_at, a.retraction_reason
 FROM alerts a LEFT JOIN vehicles v ON v.vehicle_id = a.vehicle_id";

/// `GET /api/v1/alerts`: filtered, newest first.
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let coop = caller.cooperative_filter(q.cooperative.as_deref())?;
    let vehicle = q.vehicle.as_deref().map(vehicle_param).transpose()?;
    let kind = one_of("kind", q.kind, KINDS)?;
    let level = one_of("level", q.level, LEVELS)?;
    let status = one_of("status", q.status, STATUSES)?;
    if q.min_severity.is_some_and(|b| !(1..=4).contains(&b)) {
        return Err(ApiError::bad("min_severity must be a band from 1 to 4"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let db = s.db.get().await?;
    let sql = format!(
        "{SELECT_ALERT}
         WHERE ($1::text IS NULL OR COALESCE(a.cooperative_id, v.cooperative_id) = $1)
           AND ($2::text IS NULL OR a.vehicle_id = $2)
           AND ($3::text IS NULL OR a.driver_id = $3)
           AND ($4::text IS NULL OR a.kind = $4)
           AND ($5::text IS NULL OR a.level = $5)
           AND ($6::text IS NULL OR a.status = $6)
           AND ($7::timestamptz IS NULL OR a.start_ts >= $7)
           AND ($8::timestamptz IS NULL OR a.start_ts < $8)
           AND ($10::int2 IS NULL OR a.severity >= $10)
           AND ($11 OR a.retracted_at IS NULL)
         ORDER BY a.start_ts DESC, a.alert_id
         LIMIT $9"
    );
    let rows = db
        .query(
            &sql,
            &[
                &coop,
                &vehicle,
                &q.driver,
                &kind,
                &level,
                &status,
                &q.from,
                &q.to,
                &limit,
                &q.min_severity,
                &q.include_retracted.unwrap_or(false),
            ],
        )
        .await?;
    let alerts: Vec<Value> = rows.iter().map(alert_json).collect();
    Ok(Json(json!({ "count": alerts.len(), "alerts": alerts })))
}

/// Body of an acknowledgement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Who acknowledges (name or staff id).
    pub by: String,
    /// What was done (called the driver, ...).
    pub note: Option<String>,
}

/// `POST /api/v1/alerts/{id}/ack`: adds an `acknowledged` entry to the reminder log
/// (cooperative tokens for their own alerts, admin tokens for any).
pub async fn ack(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Ack>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // The reminder log is the cooperative's: the regulator only reads it.
    if caller.role == Role::Regulator {
        return Err(ApiError::Forbidden(
            "regulator tokens are read-only; the cooperative acknowledges its alerts".into(),
        ));
    }
    let Json(body) = body?;
    let by = body.by.trim();
    if by.is_empty() || by.chars().count() > 200 {
        return Err(ApiError::bad("by must be 1 to 200 characters"));
    }
    if body
        .note
        .as_ref()
        .is_some_and(|n| n.chars().count() > 2_000)
    {
        return Err(ApiError::bad("note must be at most 2,000 characters"));
    }
    let db = s.db.get().await?;
    // Unknown and invisible alerts answer alike, so ids of other cooperatives leak nothing.
    let row = db
        .query_opt(
            "INSERT INTO reminder_log (alert_id, channel, status, actor, note)
             SELECT a.alert_id, 'api', 'acknowledged', $3, $4
             FROM alerts a LEFT JOIN vehicles v ON v.vehicle_id = a.vehicle_id
             WHERE a.alert_id = $1
               AND ($2::text IS NULL OR COALESCE(a.cooperative_id, v.cooperative_id) = $2)
             RETURNING id, alert_id, at, channel, status, actor, note",
            &[&id, &caller.scope(), &by, &body.note],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": row.get::<_, i64>(0),
            "alert_id": row.get::<_, String>(1),
            "at": rfc3339(row.get(2)),
            "channel": row.get::<_, String>(3),
            "status": row.get::<_, String>(4),
            "actor": row.get::<_, Option<String>>(5),
            "note": row.get::<_, Option<String>>(6),
        })),
    ))
}
