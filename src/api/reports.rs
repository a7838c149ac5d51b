//! Compliance report (Circular 12/2020 art. 5: violation statistics, including data
//! interruptions) per vehicle, per driver and per cooperative, for a range or a local
//! month.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::vehicles::rfc3339;
use super::AppState;
use crate::rules::UtcOffset;

/// Longest report range.
pub const MAX_REPORT_RANGE: TimeDelta = TimeDelta::days(366);
/// Default revocation threshold: counted overspeed violations per 1,000 km per vehicle
/// and month (Decree 10/2020 art. 22); override with `threshold_per_1000km`.
pub const DEFAULT_THRESHOLD_PER_1000KM: f64 = 5.0;
/// Default "near the threshold" mark; override with `near_per_1000km`.
pub const DEFAULT_NEAR_PER_1000KM: f64 = 4.0;

/// Query of a report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Cooperative (a cooperative token: its own, the default; others: all if absent).
    pub cooperative: Option<String>,
    /// A local calendar month, `YYYY-MM`; instead of `from`/`to`.
    pub month: Option<String>,
    /// Start, inclusive.
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive.
    pub to: Option<DateTime<Utc>>,
    /// Offset of local time for `month`, `+HH:MM` (default: the rules' default, +07:00).
    pub utc_offset: Option<String>,
    /// `json` (default) or `csv` (one row per vehicle, then the total).
    pub format: Option<String>,
    /// Violations per 1,000 km at or over which a vehicle is flagged (default 5).
    pub threshold_per_1000km: Option<f64>,
    /// Violations per 1,000 km at or over which a vehicle is "near" (default 4).
    pub near_per_1000km: Option<f64>,
}

/// Counts of one vehicle (or of the totals).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Distance driven, km (sum of the trips starting in the range).
    pub distance_km: f64,
    /// Trips starting in the range.
    pub trips: i64,
    /// Overspeed violations counted by the regulator (excess over 5 km/h).
    pub overspeed_counted: i64,
    /// Counted overspeed violations by severity band 1..4 (Decree 168/2024 art. 6).
    pub overspeed_by_band: BTreeMap<String, i64>,
    /// Overspeed episodes not counted (excess of 5 km/h or less).
    pub overspeed_not_counted: i64,
    /// Counted overspeed violations per 1,000 km; `null` without distance.
    pub overspeed_per_1000km: Option<f64>,
    /// At or over the revocation threshold.
    pub at_or_over_threshold: bool,
    /// At or over the "near" mark but under the threshold.
    pub near_threshold: bool,
    /// Continuous driving violations (over the limit; warnings not counted).
    pub continuous_driving_violations: i64,
    /// Daily driving violations.
    pub daily_driving_violations: i64,
    /// Weekly driving violations.
    pub weekly_driving_violations: i64,
    /// Off-route violations.
    pub off_route_violations: i64,
    /// Restricted zone violations.
    pub restricted_zone_violations: i64,
    /// No-signal episodes.
    pub no_signal: i64,
    /// Data gaps (between consecutive fixes, above the sending cadence).
    pub data_gaps: i64,
    /// Total duration of the data gaps, seconds.
    pub data_gap_s: f64,
}

impl Counts {
    fn add_alert(&mut self, kind: &str, level: &str, severity: Option<i16>, counted: bool, n: i64) {
        let violation = level == "violation";
        match kind {
            "overspeed" if violation && counted => {
                self.overspeed_counted += n;
                if let Some(b) = severity.filter(|b| (1..=4).contains(b)) {
                    *self.overspeed_by_band.entry(b.to_string()).or_default() += n;
                }
            }
            "overspeed" if violation => self.overspeed_not_counted += n,
            "continuous_driving" if violation => self.continuous_driving_violations += n,
            "daily_driving" if violation => self.daily_driving_violations += n,
            "weekly_driving" if violation => self.weekly_driving_violations += n,
            "off_route" if violation => self.off_route_violations += n,
            "restricted_zone" if violation => self.restricted_zone_violations += n,
            "no_signal" => self.no_signal += n,
            _ => {}
        }
    }

    fn add(&mut self, o: &Counts) {
        self.distance_km += o.distance_km;
        self.trips += o.trips;
        self.overspeed_counted += o.overspeed_counted;
        for (b, n) in &o.overspeed_by_band {
            *self.overspeed_by_band.entry(b.clone()).or_default() += n;
        }
        self.overspeed_not_counted += o.overspeed_not_counted;
        self.continuous_driving_violations += o.continuous_driving_violations;
        self.daily_driving_violations += o.daily_driving_violations;
        self.weekly_driving_violations += o.weekly_driving_violations;
        self.off_route_violations += o.off_route_violations;
        self.restricted_zone_violations += o.restricted_zone_violations;
        self.no_signal += o.no_signal;
        self.data_gaps += o.data_gaps;
        self.data_gap_s += o.data_gap_s;
    }

    fn rate(&mut self, threshold: f64, near: f64) {
        for b in ["1", "2", "3", "4"] {
            self.overspeed_by_band.entry(b.into()).or_default();
        }
        self.distance_km = (self.distance_km * 1000.0).round() / 1000.0;
        self.overspeed_per_1000km = (self.distance_km > 0.0).then(|| {
            let r = self.overspeed_counted as f64 * 1000.0 / self.distance_km;
            (r * 1000.0).round() / 1000.0
        });
        let r = self.overspeed_per_1000km.unwrap_or(0.0);
        self.at_or_over_threshold = r >= threshold;
        self.near_threshold = !self.at_or_over_threshold && r >= near;
    }
}

/// One vehicle's row.
#[derive(Debug, Serialize)]
pub struct VehicleRow {
    /// Vehicle id.
    pub vehicle_id: String,
    /// Its cooperative.
    pub cooperative_id: String,
    /// Registration plate.
    pub plate: Option<String>,
    /// Vehicle class.
    pub class: Option<String>,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// Driving-time breaches of one driver.
#[derive(Debug, Default, Serialize)]
pub struct DriverRow {
    /// Driver licence number.
    pub driver_id: String,
    /// Continuous driving violations.
    pub continuous_driving_violations: i64,
    /// Daily driving violations.
    pub daily_driving_violations: i64,
    /// Weekly driving violations.
    pub weekly_driving_violations: i64,
}

/// Start and end of local month `YYYY-MM` at `offset`, as UTC.
pub fn month_range(month: &str, offset_s: i32) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let bad = || ApiError::bad(format!("month must look like 2026-11, got {month:?}"));
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").map_err(|_| bad())?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    }
    .ok_or_else(bad)?;
    let tz = FixedOffset::east_opt(offset_s).ok_or_else(bad)?;
    let at = |d: NaiveDate| {
        tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
            .single()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(bad)
    };
    Ok((at(first)?, at(next)?))
}

/// `GET /api/v1/reports/compliance`.
pub async fn compliance(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let coop = caller.cooperative_filter(q.cooperative.as_deref())?;
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv") {
        return Err(ApiError::bad("format must be json or csv"));
    }
    let offset = match &q.utc_offset {
        Some(o) => UtcOffset::try_from(o.clone()).map_err(|e| ApiError::bad(e.to_string()))?,
        None => s.settings.rules.utc_offset,
    };
    let (from, to) = match (&q.month, q.from, q.to) {
        (Some(m), None, None) => month_range(m, offset.seconds())?,
        (None, Some(f), Some(t)) => (f, t),
        _ => {
            return Err(ApiError::bad(
                "give either month=YYYY-MM or both from and to (RFC 3339)",
            ))
        }
    };
    if from >= to {
        return Err(ApiError::bad("from must be before to"));
    }
    if to - from > MAX_REPORT_RANGE {
        return Err(ApiError::bad(format!(
            "range too long: at most {} days per report",
            MAX_REPORT_RANGE.num_days()
        )));
    }
    let threshold = q
        .threshold_per_1000km
        .unwrap_or(DEFAULT_THRESHOLD_PER_1000KM);
    let near = q.near_per_1000km.unwrap_or(DEFAULT_NEAR_PER_1000KM);
    if !(threshold.is_finite() && near.is_finite() && 0.0 <= near && near <= threshold) {
        return Err(ApiError::bad(
            "need 0 <= near_per_1000km <= threshold_per_1000km",
        ));
    }

    let db = s.db.get().await?;
    let mut rows: BTreeMap<String, VehicleRow> = db
        .query(
            "SELECT vehicle_id, cooperative_id, plate, class FROM vehicles
             WHERE ($1::text IS NULL OR cooperative_id = $1) ORDER BY vehicle_id",
            &[&coop],
        )
        .await?
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            let row = VehicleRow {
                vehicle_id: id.clone(),
                cooperative_id: r.get(1),
                plate: r.get(2),
                class: r.get(3),
                counts: Counts::default(),
            };
            (id, row)
        })
        .collect();

    // Every aggregate is over the visible vehicles, by the event time of its start.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&coop, &from, &to];
    for r in db
        .query(
            "SELECT t.vehicle_id, sum(t.distance_m)::float8, count(*)
             FROM trips t JOIN vehicles v ON v.vehicle_id = t.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1)
               AND t.start_ts >= $2 AND t.start_ts < $3
             GROUP BY t.vehicle_id",
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            v.counts.distance_km = r.get::<_, f64>(1) / 1000.0;
            v.counts.trips = r.get(2);
        }
    }
    for r in db
        .query(
            "SELECT a.vehicle_id, a.kind, a.level, a.severity,
                    COALESCE((a.details->>'counted')::boolean, true), count(*)
             FROM alerts a JOIN vehicles v ON v.vehicle_id = a.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1)
               AND a.start_ts >= $2 AND a.start_ts < $3
             GROUP BY 1, 2, 3, 4, 5",
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            v.counts
                .add_alert(r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        }
    }
    for r in db
        .query(
            "SELECT g.vehicle_id, count(*),
                    COALESCE(sum(extract(epoch FROM g.end_ts - g.start_ts)), 0)::float8
             FROM data_gaps g JOIN vehicles v ON v.vehicle_id = g.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1)
               AND g.start_ts >= $2 AND g.start_ts < $3
             GROUP BY g.vehicle_id",
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            v.counts.data_gaps = r.get(1);
            v.counts.data_gap_s = r.get(2);
        }
    }
    let mut drivers: BTreeMap<String, DriverRow> = BTreeMap::new();
    for r in db
        .query(
            "SELECT a.driver_id, a.kind, count(*)
             FROM alerts a JOIN vehicles v ON v.vehicle_id = a.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1)
               AND a.start_ts >= $2 AND a.start_ts < $3
               AND a.driver_id IS NOT NULL AND a.level = 'violation'
               AND a.kind IN ('continuous_driving', 'daily_driving', 'weekly_driving')
             GROUP BY 1, 2",
            &params,
        )
        .await?
    {
        let id: String = r.get(0);
        let d = drivers.entry(id.clone()).or_insert_with(|| DriverRow {
            driver_id: id,
            ..Default::default()
        });
        let n: i64 = r.get(2);
        match r.get::<_, &str>(1) {
            "continuous_driving" => d.continuous_driving_violations += n,
            "daily_driving" => d.daily_driving_violations += n,
            _ => d.weekly_driving_violations += n,
        }
    }

    let mut total = Counts::default();
    for v in rows.values_mut() {
        total.add(&v.counts);
        v.counts.rate(threshold, near);
    }
    total.rate(threshold, near);
    let vehicles: Vec<VehicleRow> = rows.into_values().collect();
    let at_or_over = vehicles
        .iter()
        .filter(|v| v.counts.at_or_over_threshold)
        .count();
    let near_n = vehicles.iter().filter(|v| v.counts.near_threshold).count();
    if format == "csv" {
        return Ok(csv(&vehicles, &total));
    }
    Ok(Json(json!({
        "cooperative": coop,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "month": q.month,
        "threshold_per_1000km": threshold,
        "near_per_1000km": near,
        "vehicles": vehicles,
        "drivers": drivers.into_values().collect::<Vec<_>>(),
        "totals": {
            "vehicles": vehicles.len(),
            "vehicles_at_or_over_threshold": at_or_over,
            "vehicles_near_threshold": near_n,
            "counts": total,
        },
    }))
    .into_response())
}

fn csv(vehicles: &[VehicleRow], total: &Counts) -> Response {
    let mut out = String::from(
        "vehicle_id,cooperative_id,plate,distance_km,trips,overspeed_counted,band_1,band_2,band_3,band_4,\
         overspeed_not_counted,overspeed_per_1000km,at_or_over_threshold,near_threshold,\
         continuous_driving_violations,daily_driving_violations,weekly_driving_violations,\
         off_route_violations,restricted_zone_violations,no_signal,data_gaps,data_gap_s\n",
    );
    let mut line = |id: &str, coop: &str, plate: &str, c: &Counts| {
        let band = |b: &str| c.overspeed_by_band.get(b).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{id},{coop},{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.0}",
            csv_field(plate),
            c.distance_km,
            c.trips,
            c.overspeed_counted,
            band("1"),
            band("2"),
            band("3"),
            band("4"),
            c.overspeed_not_counted,
            c.overspeed_per_1000km
                .map(|r| format!("{r:.3}"))
                .unwrap_or_default(),
            c.at_or_over_threshold,
            c.near_threshold,
            c.continuous_driving_violations,
            c.daily_driving_violations,
            c.weekly_driving_violations,
            c.off_route_violations,
            c.restricted_zone_violations,
            c.no_signal,
            c.data_gaps,
            c.data_gap_s,
        );
    };
    for v in vehicles {
        line(
            &v.vehicle_id,
            &v.cooperative_id,
            v.plate.as_deref().unwrap_or(""),
            &v.counts,
        );
    }
    line("TOTAL", "", "", total);
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
}

/// Quotes a free-text CSV field when needed (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_month_is_utc_plus_7() {
        let (f, t) = month_range("2026-11", 7 * 3600).unwrap();
        assert_eq!(rfc3339(f), "2026-10-31T17:00:00Z");
        assert_eq!(rfc3339(t), "2026-11-30T17:00:00Z");
        let (_, t) = month_range("2026-12", 7 * 3600).unwrap();
        assert_eq!(rfc3339(t), "2026-12-31T17:00:00Z");
        assert!(month_range("2026-13", 0).is_err());
    }

    #[test]
    fn rate_flags() {
        let mut c = Counts {
            distance_km: 1000.0,
            overspeed_counted: 5,
            ..Default::default()
        };
        c.rate(5.0, 4.0);
        assert_eq!(c.overspeed_per_1000km, Some(5.0));
        assert!(c.at_or_over_threshold && !c.near_threshold);
        c.overspeed_counted = 4;
        c.rate(5.0, 4.0);
        assert!(!c.at_or_over_threshold && c.near_threshold);
    }
}
