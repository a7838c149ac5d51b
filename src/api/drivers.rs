//! A driver's live driving time (`GET /api/v1/drivers/{id}`), read from what the
//! writer keeps in `driver_state`.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::vehicles::rfc3339;
use super::AppState;
use crate::domain::live::{driving_now, DrivingLimits};
use crate::domain::DriverId;

/// `GET /api/v1/drivers/{id}`: continuous, daily and weekly driving and the time left
/// before the limits, the vehicle and since when, as of the driver's newest fix. A
/// cooperative sees the drivers who drove its vehicles (others: 404, as unknown ones),
/// and the vehicle only when it is one of its own.
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let driver = DriverId::parse(&raw).map_err(|e| ApiError::bad(format!("driver: {e}")))?;
    let db = s.db.get().await?;
    let scope = caller.scope();
    let row = db
        .query_opt(
            "SELECT d.vehicle_id, v.cooperative_id, d.since_ts, d.as_of_ts, d.moving,
                    d.continuous_s, d.last_drive_end_ts, d.day, d.daily_s, d.weekly_s,
                    v.live_on_route
             FROM driver_state d LEFT JOIN vehicles v ON v.vehicle_id = d.vehicle_id
             WHERE d.driver_id = $1
               AND ($2::text IS NULL OR EXISTS (
                    SELECT 1 FROM driver_cooperatives c
                    WHERE c.driver_id = d.driver_id AND c.cooperative_id = $2))",
            &[&driver.as_str(), &scope],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no driver {driver}")))?;
    let lim = s.settings.rules.driving_limits();
    let now = Utc::now();
    let owner: Option<String> = row.get(1);
    let own = scope.is_none() || owner.as_deref() == scope;
    let figures = driving_now(
        &lim,
        now,
        row.get(5),
        row.get(6),
        Some(row.get::<_, NaiveDate>(7)),
        row.get(8),
        row.get(9),
    );
    let as_of: DateTime<Utc> = row.get(3);
    let mut v = json!({
        "driver_id": driver.as_str(),
        "vehicle_id": own.then(|| row.get::<_, String>(0)),
        "on_vehicle_since": own.then(|| row.get::<_, Option<DateTime<Utc>>>(2).map(rfc3339)).flatten(),
        "as_of": rfc3339(as_of),
        "moving": row.get::<_, bool>(4),
        "on_route": if own { row.get::<_, Option<bool>>(10) } else { None },
    });
    merge_figures(&mut v, &lim, &figures);
    Ok(Json(v))
}

/// Adds the driving figures and limits to `v`.
pub(crate) fn merge_figures(
    v: &mut Value,
    lim: &DrivingLimits,
    f: &crate::domain::live::DrivingNow,
) {
    v["continuous_driving_s"] = json!(f.continuous_s.round());
    v["continuous_left_s"] = json!(f.continuous_left_s.round());
    v["daily_driving_s"] = json!(f.daily_s.round());
    v["daily_left_s"] = json!(f.daily_left_s.round());
    v["weekly_driving_s"] = json!(f.weekly_s.round());
    v["weekly_left_s"] = json!(lim.weekly_max_s.map(|m| (m - f.weekly_s).max(0.0).round()));
    v["limits"] = json!({
        "continuous_s": lim.continuous_max_s,
        "daily_s": lim.daily_max_s,
        "weekly_s": lim.weekly_max_s,
        "break_s": lim.break_s,
    });
}
