//! Compliance report (Circular 12/2020 art. 5: violation statistics, including data
//! interruptions) per vehicle, per driver and per cooperative, for a range or a local
//! month.
//!
//! [`build`] makes the report without axum (the HTTP handler and `fleetwatch report`
//! both call it): whole local days of the range come from the daily roll-ups
//! ([`crate::store::rollup`]), partial days at its edges from the raw tables.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::vehicles::rfc3339;
use super::AppState;
use crate::domain::time::UtcOffset;
use crate::store::incidents::{self, StoredIncident};
use crate::store::rollup;

/// Longest report range.
pub const MAX_REPORT_RANGE: TimeDelta = TimeDelta::days(366);
/// Default revocation threshold: counted overspeed violations per 1,000 km per vehicle
/// and month (Decree 10/2020 art. 22); override with `threshold_per_1000km`.
pub const DEFAULT_THRESHOLD_PER_1000KM: f64 = 5.0;
/// Default "near the threshold" mark; override with `near_per_1000km`.
pub const DEFAULT_NEAR_PER_1000KM: f64 = 4.0;
/// What `data_completeness` means, as written into every JSON report.
pub const DATA_COMPLETENESS: &str = "data_completeness = 1 - data_gap_s / active_s. \
    A data gap is the time between two consecutive fixes of a vehicle that are further apart \
    than the sending cadence (30 s when both fixes are moving, 900 s otherwise; Circular 09/2015; \
    rules.gaps); data_gap_s sums the gaps starting in the range. active_s runs from the vehicle's \
    first fix in the range to its last fix in the range or the end of the last gap starting in \
    the range, whichever is later. null when active_s is 0 (fewer than two fixes). Totals: \
    1 - sum(data_gap_s) / sum(active_s) over the vehicles.";
/// What `distance_km` means, as written into every JSON report.
pub const DISTANCE: &str = "distance_km is the path length of the vehicle's accepted fixes \
    in event-time order, whether or not a trip has ended and whatever order the fixes arrived in: \
    the sum of the straight segments between consecutive fixes (fixes flagged as a jump are not \
    points of the path), each rounded to the millimetre. A segment crossing the start or end \
    of the range (or a local midnight, in the daily roll-ups) counts in proportion to the time \
    on each side. For a driver, a segment counts for the driver of its earlier fix.";
/// What the lateness figures mean, as written into every JSON report.
pub const LATENESS: &str = "late_fixes counts the fixes with their time in the range that \
    arrived late: more than the reorder window (rules.reorder_window_s) behind a newer fix of \
    their vehicle (flag `late`). late_p50_s and late_p99_s are percentiles (nearest \
    rank) of their lateness, received_at - ts, in seconds, from a histogram of fixed buckets: \
    under 1 s, then [2^((k-1)/8), 2^(k/8)) s for k = 1, 2, ...; the figure is the upper edge of \
    the percentile's bucket, so the true value is at most 8.3 % below it (under 1 s for the \
    first). null without late fixes.";

/// Errors making a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A parameter the caller must fix.
    #[error("{0}")]
    Invalid(String),
    /// A query failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// Reading the roll-ups' plan failed.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl ReportError {
    fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Invalid(m) => ApiError::BadRequest(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// Query of a report.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Cooperative (a cooperative token: its own, the default; others: all if absent).
    pub cooperative: Option<String>,
    /// A local calendar month, `YYYY-MM`; instead of `from`/`to`.
    pub month: Option<String>,
    /// Start, inclusive.
    #[serde(default, deserialize_with = "super::time::opt")]
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive.
    #[serde(default, deserialize_with = "super::time::opt")]
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

/// Output format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document.
    Json,
    /// One row per vehicle, then the total.
    Csv,
}

impl Format {
    /// `json` (also when absent) or `csv`.
    pub fn parse(s: Option<&str>) -> Result<Self, ReportError> {
        match s.unwrap_or("json") {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            _ => Err(ReportError::invalid("format must be json or csv")),
        }
    }
}

/// Where the whole days of a report come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// The daily roll-ups for whole local days, raw tables for partial days.
    #[default]
    RollUp,
    /// The raw tables for the whole range (slow; checks the roll-ups).
    Raw,
}

/// A checked report request.
#[derive(Debug, Clone)]
pub struct ReportParams {
    /// Cooperative, or every cooperative.
    pub cooperative: Option<String>,
    /// Start, inclusive.
    pub from: DateTime<Utc>,
    /// End, exclusive.
    pub to: DateTime<Utc>,
    /// The local month asked for, if any (echoed in the report).
    pub month: Option<String>,
    /// Revocation threshold, violations per 1,000 km.
    pub threshold_per_1000km: f64,
    /// Near-threshold mark, violations per 1,000 km.
    pub near_per_1000km: f64,
    /// Roll-ups or raw tables.
    pub source: Source,
}

impl ReportParams {
    /// Checks `q` (range, offset, thresholds) for `cooperative` (already authorised);
    /// `default_offset` makes `month` local when `q.utc_offset` is absent.
    pub fn from_query(
        q: &ReportQuery,
        cooperative: Option<String>,
        default_offset: UtcOffset,
    ) -> Result<Self, ReportError> {
        let offset = match &q.utc_offset {
            Some(o) => {
                UtcOffset::try_from(o.clone()).map_err(|e| ReportError::invalid(e.to_string()))?
            }
            None => default_offset,
        };
        let (from, to) = match (&q.month, q.from, q.to) {
            (Some(m), None, None) => month_range(m, offset.seconds())?,
            (None, Some(f), Some(t)) => {
                // Also for `fleetwatch report`, whose times skip the query's check.
                for (name, t) in [("from", f), ("to", t)] {
                    super::time::check(t)
                        .map_err(|e| ReportError::invalid(format!("{name}: {e}")))?;
                }
                (f, t)
            }
            _ => {
                return Err(ReportError::invalid(
                    "give either month=YYYY-MM or both from and to (RFC 3339)",
                ))
            }
        };
        if from >= to {
            return Err(ReportError::invalid("from must be before to"));
        }
        if to - from > MAX_REPORT_RANGE {
            return Err(ReportError::invalid(format!(
                "range too long: at most {} days per report",
                MAX_REPORT_RANGE.num_days()
            )));
        }
        let threshold = q
            .threshold_per_1000km
            .unwrap_or(DEFAULT_THRESHOLD_PER_1000KM);
        let near = q.near_per_1000km.unwrap_or(DEFAULT_NEAR_PER_1000KM);
        if !(threshold.is_finite() && near.is_finite() && 0.0 <= near && near <= threshold) {
            return Err(ReportError::invalid(
                "need 0 <= near_per_1000km <= threshold_per_1000km",
            ));
        }
        Ok(Self {
            cooperative,
            from,
            to,
            month: q.month.clone(),
            threshold_per_1000km: threshold,
            near_per_1000km: near,
            source: Source::RollUp,
        })
    }
}

/// Counts of one vehicle (or of the totals).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Counts {
    /// Distance driven, km: path length of the vehicle's fixes in the range, closed
    /// trip or not ([`DISTANCE`]).
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
    /// Total duration of the data gaps, seconds (to the millisecond).
    pub data_gap_s: f64,
    /// Fixes stored with their time in the range.
    pub fixes: i64,
    /// Time the data completeness is measured over, seconds ([`DATA_COMPLETENESS`]).
    pub active_s: f64,
    /// Share 0..1 of `active_s` not inside a data gap ([`DATA_COMPLETENESS`]).
    pub data_completeness: Option<f64>,
    /// Fixes with their time in the range that arrived late ([`LATENESS`]).
    pub late_fixes: i64,
    /// Median lateness of those, seconds (upper edge of its bucket); `null` without any.
    pub late_p50_s: Option<f64>,
    /// 99th percentile of their lateness, seconds (upper edge of its bucket).
    pub late_p99_s: Option<f64>,
    /// Late fixes by lateness bucket ([`late_bucket_upper_s`]).
    #[serde(skip)]
    late_buckets: BTreeMap<i16, i64>,
    /// Distance in whole millimetres: sums of integers do not depend on their order,
    /// so roll-ups and raw tables give the same figures.
    #[serde(skip)]
    distance_mm: i64,
    /// Data gaps in whole microseconds (same reason).
    #[serde(skip)]
    data_gap_us: i64,
}

impl Counts {
    fn add_alert(&mut self, kind: &str, level: &str, severity: Option<i16>, counted: bool, n: i64) {
        let violation = level == "violation";
        match kind {
            "overspeed" if violation && counted => {
                self.overspeed_counted += n;
                if let Some(b) = severity.filter(|b| (1..=4).contains(b)) {
                    self.add_band(&b.to_string(), n);
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

    fn add_band(&mut self, band: &str, n: i64) {
        if n != 0 {
            *self.overspeed_by_band.entry(band.to_string()).or_default() += n;
        }
    }

    fn add_late(&mut self, bucket: i16, n: i64) {
        if n != 0 {
            *self.late_buckets.entry(bucket).or_default() += n;
        }
    }

    fn add(&mut self, o: &Counts) {
        self.distance_mm += o.distance_mm;
        for (b, n) in &o.late_buckets {
            self.add_late(*b, *n);
        }
        self.trips += o.trips;
        self.overspeed_counted += o.overspeed_counted;
        for (b, n) in &o.overspeed_by_band {
            self.add_band(b, *n);
        }
        self.overspeed_not_counted += o.overspeed_not_counted;
        self.continuous_driving_violations += o.continuous_driving_violations;
        self.daily_driving_violations += o.daily_driving_violations;
        self.weekly_driving_violations += o.weekly_driving_violations;
        self.off_route_violations += o.off_route_violations;
        self.restricted_zone_violations += o.restricted_zone_violations;
        self.no_signal += o.no_signal;
        self.data_gaps += o.data_gaps;
        self.data_gap_us += o.data_gap_us;
        self.fixes += o.fixes;
        self.active_s += o.active_s;
    }

    /// Derives distance (to the metre), gap time (to the millisecond), rates, flags
    /// and completeness from the sums.
    fn rate(&mut self, threshold: f64, near: f64) {
        for b in ["1", "2", "3", "4"] {
            self.overspeed_by_band.entry(b.into()).or_default();
        }
        self.distance_km = (self.distance_mm as f64 / 1000.0).round() / 1000.0;
        self.data_gap_s = (self.data_gap_us as f64 / 1000.0).round() / 1000.0;
        self.active_s = (self.active_s * 1000.0).round() / 1000.0;
        self.overspeed_per_1000km = (self.distance_km > 0.0).then(|| {
            let r = self.overspeed_counted as f64 * 1000.0 / self.distance_km;
            (r * 1000.0).round() / 1000.0
        });
        let r = self.overspeed_per_1000km.unwrap_or(0.0);
        self.at_or_over_threshold = r >= threshold;
        self.near_threshold = !self.at_or_over_threshold && r >= near;
        self.data_completeness = (self.active_s > 0.0).then(|| {
            let c = (1.0 - self.data_gap_s / self.active_s).clamp(0.0, 1.0);
            (c * 1e6).round() / 1e6
        });
        self.late_fixes = self.late_buckets.values().sum();
        self.late_p50_s = percentile_s(&self.late_buckets, 50);
        self.late_p99_s = percentile_s(&self.late_buckets, 99);
    }
}

/// Upper edge of lateness bucket `b`, seconds: bucket 0 is under 1 s, bucket `b >= 1`
/// is `[2^((b-1)/8), 2^(b/8))` (`fw_late_bucket`, migration 9).
pub fn late_bucket_upper_s(b: i16) -> f64 {
    2f64.powf(f64::from(b.max(0)) / 8.0)
}

/// The `pct`-th percentile (nearest rank) of a lateness histogram, as the upper edge
/// of its bucket to the millisecond; `None` when empty.
fn percentile_s(h: &BTreeMap<i16, i64>, pct: i64) -> Option<f64> {
    let n: i64 = h.values().sum();
    // Nearest rank: the smallest value with at least pct % of the values at or under it.
    let rank = (n * pct + 99) / 100;
    let mut seen = 0;
    for (b, k) in h {
        seen += k;
        if seen >= rank.max(1) {
            return Some((late_bucket_upper_s(*b) * 1000.0).round() / 1000.0);
        }
    }
    None
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
    /// First fix in the range.
    #[serde(skip)]
    first_fix: Option<DateTime<Utc>>,
    /// Last fix in the range.
    #[serde(skip)]
    last_fix: Option<DateTime<Utc>>,
    /// End of the last data gap starting in the range.
    #[serde(skip)]
    last_gap_end: Option<DateTime<Utc>>,
}

impl VehicleRow {
    fn span(
        &mut self,
        first: Option<DateTime<Utc>>,
        last: Option<DateTime<Utc>>,
        gap_end: Option<DateTime<Utc>>,
    ) {
        fn min(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
            a.into_iter().chain(b).min()
        }
        fn max(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
            a.into_iter().chain(b).max()
        }
        self.first_fix = min(self.first_fix, first);
        self.last_fix = max(self.last_fix, last);
        self.last_gap_end = max(self.last_gap_end, gap_end);
    }

    fn active_s(&self) -> f64 {
        match (self.first_fix, max_opt(self.last_fix, self.last_gap_end)) {
            (Some(f), Some(e)) if e > f => (e - f).num_microseconds().unwrap_or(0) as f64 / 1e6,
            _ => 0.0,
        }
    }
}

fn max_opt(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    a.into_iter().chain(b).max()
}

/// Distance and driving-time breaches of one driver.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct DriverRow {
    /// Driver licence number.
    pub driver_id: String,
    /// Distance driven on the visible vehicles, km ([`DISTANCE`]; a segment between
    /// two fixes counts for the driver of its earlier fix).
    pub distance_km: f64,
    /// The same in whole millimetres (summed exactly).
    #[serde(skip)]
    distance_mm: i64,
    /// Continuous driving violations.
    pub continuous_driving_violations: i64,
    /// Daily driving violations.
    pub daily_driving_violations: i64,
    /// Weekly driving violations.
    pub weekly_driving_violations: i64,
}

impl DriverRow {
    fn is_empty(&self) -> bool {
        self.distance_mm == 0
            && self.continuous_driving_violations == 0
            && self.daily_driving_violations == 0
            && self.weekly_driving_violations == 0
    }
}

/// Totals over the vehicles.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Vehicles in the report.
    pub vehicles: usize,
    /// Vehicles at or over the threshold.
    pub vehicles_at_or_over_threshold: usize,
    /// Vehicles near the threshold.
    pub vehicles_near_threshold: usize,
    /// Summed counts.
    pub counts: Counts,
}

/// A time range, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// Start (RFC 3339).
    pub from: String,
    /// End (RFC 3339).
    pub to: String,
}

/// Which parts of the range came from the roll-ups and which from the raw tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComputedFrom {
    /// Local days `[from, to)` read from the daily roll-ups, if any.
    pub roll_up_days: Option<Span>,
    /// Offset of the roll-ups' local days.
    pub roll_up_utc_offset: Option<String>,
    /// Ranges computed from the raw tables.
    pub raw: Vec<Span>,
}

/// Definitions of derived figures.
#[derive(Debug, Serialize)]
pub struct Definitions {
    /// How `data_completeness` is computed.
    pub data_completeness: &'static str,
    /// How `distance_km` is computed.
    pub distance: &'static str,
    /// What `late_fixes`, `late_p50_s` and `late_p99_s` are.
    pub lateness: &'static str,
}

/// A compliance report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Cooperative, or `null` for all.
    pub cooperative: Option<String>,
    /// Start, inclusive (RFC 3339).
    pub from: String,
    /// End, exclusive (RFC 3339).
    pub to: String,
    /// The local month asked for.
    pub month: Option<String>,
    /// Revocation threshold, violations per 1,000 km.
    pub threshold_per_1000km: f64,
    /// Near-threshold mark.
    pub near_per_1000km: f64,
    /// One row per visible vehicle, by id.
    pub vehicles: Vec<VehicleRow>,
    /// Drivers with driving-time violations, by id.
    pub drivers: Vec<DriverRow>,
    /// Totals.
    pub totals: Totals,
    /// Roll-ups and raw ranges used.
    pub computed_from: ComputedFrom,
    /// Definitions of derived figures.
    pub definitions: Definitions,
    /// Ingest incidents in the range (e.g. a broker that lost fleetwatch's session):
    /// data may be missing around them beyond what the data gaps show. They concern
    /// the whole service, so every cooperative's report lists them.
    pub ingest_incidents: Vec<StoredIncident>,
}

/// Start and end of local month `YYYY-MM` at `offset`, as UTC.
pub fn month_range(
    month: &str,
    offset_s: i32,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ReportError> {
    let bad = || ReportError::invalid(format!("month must look like 2026-11, got {month:?}"));
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").map_err(|_| bad())?;
    if !(1..=9999).contains(&first.year()) {
        return Err(ReportError::invalid(format!(
            "month: {}",
            super::time::out_of_range(month)
        )));
    }
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

/// The whole local days `[d0, d1)` inside `[from, to)` at `offset_s`, if any.
pub fn whole_days(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    offset_s: i32,
) -> Option<(NaiveDate, NaiveDate)> {
    let mut d0 = rollup::local_day(from, offset_s);
    if rollup::day_start(d0, offset_s) < from {
        d0 = d0.succ_opt()?;
    }
    let d1 = rollup::local_day(to, offset_s);
    (d0 < d1).then_some((d0, d1))
}

/// Builds the report of `p`: vehicles of the registry (of the cooperative), their
/// trips, alerts, data gaps and fixes starting in the range.
pub async fn build(db: &Client, p: &ReportParams) -> Result<Report, ReportError> {
    let coop = &p.cooperative;
    let mut rows: BTreeMap<String, VehicleRow> = db
        .query(
            "SELECT vehicle_id, cooperative_id, plate, class FROM vehicles
             WHERE ($1::text IS NULL OR cooperative_id = $1) ORDER BY vehicle_id",
            &[coop],
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
                first_fix: None,
                last_fix: None,
                last_gap_end: None,
            };
            (id, row)
        })
        .collect();
    let mut drivers: BTreeMap<String, DriverRow> = BTreeMap::new();

    let plan = match p.source {
        Source::RollUp => rollup::plan(db).await?,
        Source::Raw => None,
    };
    let days = plan.and_then(|pl| whole_days(p.from, p.to, pl.offset_s).map(|d| (pl, d)));
    let mut computed = ComputedFrom {
        roll_up_days: None,
        roll_up_utc_offset: None,
        raw: Vec::new(),
    };
    let mut raw_ranges = Vec::new();
    match days {
        Some((pl, (d0, d1))) => {
            add_rollup(db, coop, d0, d1, &mut rows, &mut drivers).await?;
            computed.roll_up_days = Some(Span {
                from: d0.to_string(),
                to: d1.to_string(),
            });
            computed.roll_up_utc_offset = Some(UtcOffset::from_seconds(pl.offset_s).to_string());
            let (t0, t1) = (
                rollup::day_start(d0, pl.offset_s),
                rollup::day_start(d1, pl.offset_s),
            );
            if p.from < t0 {
                raw_ranges.push((p.from, t0));
            }
            if t1 < p.to {
                raw_ranges.push((t1, p.to));
            }
        }
        None => raw_ranges.push((p.from, p.to)),
    }
    for (a, b) in raw_ranges {
        add_raw(db, coop, a, b, &mut rows, &mut drivers).await?;
        computed.raw.push(Span {
            from: rfc3339(a),
            to: rfc3339(b),
        });
    }

    let (threshold, near) = (p.threshold_per_1000km, p.near_per_1000km);
    let mut total = Counts::default();
    for v in rows.values_mut() {
        v.counts.active_s = v.active_s();
        total.add(&v.counts);
        v.counts.rate(threshold, near);
    }
    total.rate(threshold, near);
    let vehicles: Vec<VehicleRow> = rows.into_values().collect();
    let totals = Totals {
        vehicles: vehicles.len(),
        vehicles_at_or_over_threshold: vehicles
            .iter()
            .filter(|v| v.counts.at_or_over_threshold)
            .count(),
        vehicles_near_threshold: vehicles.iter().filter(|v| v.counts.near_threshold).count(),
        counts: total,
    };
    Ok(Report {
        cooperative: p.cooperative.clone(),
        from: rfc3339(p.from),
        to: rfc3339(p.to),
        month: p.month.clone(),
        threshold_per_1000km: threshold,
        near_per_1000km: near,
        vehicles,
        drivers: drivers
            .into_values()
            .filter(|d| !d.is_empty())
            .map(|mut d| {
                d.distance_km = (d.distance_mm as f64 / 1000.0).round() / 1000.0;
                d
            })
            .collect(),
        totals,
        computed_from: computed,
        definitions: Definitions {
            data_completeness: DATA_COMPLETENESS,
            distance: DISTANCE,
            lateness: LATENESS,
        },
        ingest_incidents: incidents::in_range(db, p.from, p.to).await?,
    })
}

fn driver_row(drivers: &mut BTreeMap<String, DriverRow>, id: String) -> &mut DriverRow {
    drivers.entry(id.clone()).or_insert_with(|| DriverRow {
        driver_id: id,
        ..Default::default()
    })
}

/// Adds the local days `[d0, d1)` from the roll-ups.
async fn add_rollup(
    db: &Client,
    coop: &Option<String>,
    d0: NaiveDate,
    d1: NaiveDate,
    rows: &mut BTreeMap<String, VehicleRow>,
    drivers: &mut BTreeMap<String, DriverRow>,
) -> Result<(), ReportError> {
    let params: [&(dyn ToSql + Sync); 3] = [coop, &d0, &d1];
    for r in db
        .query(
            "SELECT r.vehicle_id, sum(r.trips)::int8, sum(r.distance_mm)::int8,
                    sum(r.overspeed_counted)::int8, sum(r.overspeed_band1)::int8,
                    sum(r.overspeed_band2)::int8, sum(r.overspeed_band3)::int8,
                    sum(r.overspeed_band4)::int8, sum(r.overspeed_not_counted)::int8,
                    sum(r.continuous_driving_violations)::int8, sum(r.daily_driving_violations)::int8,
                    sum(r.weekly_driving_violations)::int8, sum(r.off_route_violations)::int8,
                    sum(r.restricted_zone_violations)::int8, sum(r.no_signal)::int8,
                    sum(r.data_gaps)::int8, sum(r.data_gap_us)::int8, max(r.last_gap_end_ts)
             FROM rollup_daily r JOIN vehicles v ON v.vehicle_id = r.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1) AND r.day >= $2 AND r.day < $3
             GROUP BY r.vehicle_id",
            &params,
        )
        .await?
    {
        let Some(v) = rows.get_mut(r.get::<_, &str>(0)) else {
            continue;
        };
        let c = &mut v.counts;
        c.trips += r.get::<_, i64>(1);
        c.distance_mm += r.get::<_, i64>(2);
        c.overspeed_counted += r.get::<_, i64>(3);
        for (i, band) in ["1", "2", "3", "4"].iter().enumerate() {
            c.add_band(band, r.get(4 + i));
        }
        c.overspeed_not_counted += r.get::<_, i64>(8);
        c.continuous_driving_violations += r.get::<_, i64>(9);
        c.daily_driving_violations += r.get::<_, i64>(10);
        c.weekly_driving_violations += r.get::<_, i64>(11);
        c.off_route_violations += r.get::<_, i64>(12);
        c.restricted_zone_violations += r.get::<_, i64>(13);
        c.no_signal += r.get::<_, i64>(14);
        c.data_gaps += r.get::<_, i64>(15);
        c.data_gap_us += r.get::<_, i64>(16);
        v.span(None, None, r.get(17));
    }
    for r in db
        .query(
            "SELECT f.vehicle_id, sum(f.fixes)::int8, min(f.first_fix_ts), max(f.last_fix_ts)
             FROM rollup_fixes_daily f JOIN vehicles v ON v.vehicle_id = f.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1) AND f.day >= $2 AND f.day < $3
             GROUP BY f.vehicle_id",
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            v.counts.fixes += r.get::<_, i64>(1);
            v.span(r.get(2), r.get(3), None);
        }
    }
    for r in db
        .query(
            "SELECT d.driver_id, sum(d.continuous_driving_violations)::int8,
                    sum(d.daily_driving_violations)::int8, sum(d.weekly_driving_violations)::int8,
                    sum(d.distance_mm)::int8
             FROM rollup_daily_driver d JOIN vehicles v ON v.vehicle_id = d.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1) AND d.day >= $2 AND d.day < $3
             GROUP BY d.driver_id",
            &params,
        )
        .await?
    {
        let d = driver_row(drivers, r.get(0));
        d.continuous_driving_violations += r.get::<_, i64>(1);
        d.daily_driving_violations += r.get::<_, i64>(2);
        d.weekly_driving_violations += r.get::<_, i64>(3);
        d.distance_mm += r.get::<_, i64>(4);
    }
    for r in db
        .query(
            "SELECT l.vehicle_id, l.bucket, sum(l.fixes)::int8
             FROM rollup_late l JOIN vehicles v ON v.vehicle_id = l.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1) AND l.day >= $2 AND l.day < $3
             GROUP BY 1, 2",
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            v.counts.add_late(r.get(1), r.get(2));
        }
    }
    Ok(())
}

/// Distance in `[$2, $3)` of the vehicles visible to `$1` from the raw fixes, per
/// vehicle and driver (mm): the path of the fixes in the range and of the last fix
/// before and the first after it, each segment clipped to the range by time. The
/// clipped shares telescope, so this equals the daily roll-ups' split at midnight.
static RAW_DISTANCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let j = rollup::NOT_JUMP;
    let edge = |dir: &str, order: &str| {
        format!(
            "SELECT v.vehicle_id, e.ts, e.lat_e7, e.lon_e7, e.driver_id FROM v CROSS JOIN LATERAL (
                 SELECT ts, lat_e7, lon_e7, driver_id FROM fixes f
                 WHERE f.vehicle_id = v.vehicle_id AND f.ts {dir} AND f.{j}
                 ORDER BY f.ts {order} LIMIT 1) e"
        )
    };
    format!(
        "WITH v AS (SELECT vehicle_id FROM vehicles WHERE ($1::text IS NULL OR cooperative_id = $1)),
         pt AS (
             SELECT f.vehicle_id, f.ts, f.lat_e7, f.lon_e7, f.driver_id FROM fixes f JOIN v USING (vehicle_id)
             WHERE f.ts >= $2 AND f.ts < $3 AND f.{j}
             UNION ALL {}
             UNION ALL {}),
         seg AS (
             SELECT vehicle_id, a_ts, b_ts, fw_distance_e7_mm(a_lat_e7, a_lon_e7, b_lat_e7, b_lon_e7) AS len_mm, driver_id
             FROM (SELECT vehicle_id, lag(ts) OVER w AS a_ts, ts AS b_ts, lag(lat_e7) OVER w AS a_lat_e7,
                          lag(lon_e7) OVER w AS a_lon_e7, lat_e7 AS b_lat_e7, lon_e7 AS b_lon_e7,
                          lag(driver_id) OVER w AS driver_id
                   FROM pt WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)) s
             WHERE a_ts IS NOT NULL)
         SELECT vehicle_id, driver_id,
                sum(fw_share_mm(len_mm, a_ts, b_ts, LEAST(b_ts, $3))
                    - fw_share_mm(len_mm, a_ts, b_ts, GREATEST(a_ts, $2)))::int8
         FROM seg WHERE a_ts < $3 AND b_ts > $2
         GROUP BY 1, 2",
        edge("< $2", "DESC"),
        edge(">= $3", "ASC"),
    )
});

/// Adds `[from, to)` from the raw tables. Every aggregate is over the visible
/// vehicles, by the event time of its start.
async fn add_raw(
    db: &Client,
    coop: &Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    rows: &mut BTreeMap<String, VehicleRow>,
    drivers: &mut BTreeMap<String, DriverRow>,
) -> Result<(), ReportError> {
    let params: [&(dyn ToSql + Sync); 3] = [coop, &from, &to];
    for r in db
        .query(
            "SELECT t.vehicle_id, count(*)
             FROM trips t JOIN vehicles v ON v.vehicle_id = t.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1)
               AND t.start_ts >= $2 AND t.start_ts < $3
             GROUP BY t.vehicle_id",
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            v.counts.trips += r.get::<_, i64>(1);
        }
    }
    for r in db.query(&*RAW_DISTANCE, &params).await? {
        let (vehicle, driver, mm): (&str, Option<String>, i64) = (r.get(0), r.get(1), r.get(2));
        let Some(v) = rows.get_mut(vehicle) else {
            continue;
        };
        v.counts.distance_mm += mm;
        if let Some(d) = driver {
            driver_row(drivers, d).distance_mm += mm;
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
            &format!(
                "SELECT g.vehicle_id, count(*), sum({})::int8, max(g.end_ts)
                 FROM data_gaps g JOIN vehicles v ON v.vehicle_id = g.vehicle_id
                 WHERE ($1::text IS NULL OR v.cooperative_id = $1)
                   AND g.start_ts >= $2 AND g.start_ts < $3
                 GROUP BY g.vehicle_id",
                rollup::GAP_US
            ),
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            v.counts.data_gaps += r.get::<_, i64>(1);
            v.counts.data_gap_us += r.get::<_, i64>(2);
            v.span(None, None, r.get(3));
        }
    }
    for r in db
        .query(
            "SELECT f.vehicle_id, count(*), min(f.ts), max(f.ts),
                    CASE WHEN f.flags & 16 <> 0 THEN fw_late_bucket(f.received_at - f.ts) END
             FROM fixes f JOIN vehicles v ON v.vehicle_id = f.vehicle_id
             WHERE ($1::text IS NULL OR v.cooperative_id = $1)
               AND f.ts >= $2 AND f.ts < $3
             GROUP BY 1, 5",
            &params,
        )
        .await?
    {
        if let Some(v) = rows.get_mut(r.get::<_, &str>(0)) {
            let n = r.get::<_, i64>(1);
            v.counts.fixes += n;
            v.span(r.get(2), r.get(3), None);
            if let Some(b) = r.get::<_, Option<i16>>(4) {
                v.counts.add_late(b, n);
            }
        }
    }
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
        let d = driver_row(drivers, r.get(0));
        let n: i64 = r.get(2);
        match r.get::<_, &str>(1) {
            "continuous_driving" => d.continuous_driving_violations += n,
            "daily_driving" => d.daily_driving_violations += n,
            _ => d.weekly_driving_violations += n,
        }
    }
    Ok(())
}

/// `GET /api/v1/reports/compliance`.
pub async fn compliance(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let coop = caller.cooperative_filter(q.cooperative.as_deref())?;
    let format = Format::parse(q.format.as_deref())?;
    let params = ReportParams::from_query(&q, coop, s.settings.rules.utc_offset)?;
    let _permit = s.heavy.try_acquire(&caller)?;
    let db = s.db.get().await?;
    let report = build(&db, &params).await?;
    Ok(match format {
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.csv(),
        )
            .into_response(),
        Format::Json => Json(report).into_response(),
    })
}

impl Report {
    /// One CSV row per vehicle, then `TOTAL`.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "vehicle_id,cooperative_id,plate,distance_km,trips,overspeed_counted,band_1,band_2,band_3,band_4,\
             overspeed_not_counted,overspeed_per_1000km,at_or_over_threshold,near_threshold,\
             continuous_driving_violations,daily_driving_violations,weekly_driving_violations,\
             off_route_violations,restricted_zone_violations,no_signal,data_gaps,data_gap_s,\
             fixes,active_s,data_completeness,late_fixes,late_p50_s,late_p99_s\n",
        );
        let mut line = |id: &str, coop: &str, plate: &str, c: &Counts| {
            let band = |b: &str| c.overspeed_by_band.get(b).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.0},{},{:.0},{},{},{},{}",
                csv_field(id),
                csv_field(coop),
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
                c.fixes,
                c.active_s,
                c.data_completeness
                    .map(|r| format!("{r:.6}"))
                    .unwrap_or_default(),
                c.late_fixes,
                c.late_p50_s.map(|s| format!("{s:.3}")).unwrap_or_default(),
                c.late_p99_s.map(|s| format!("{s:.3}")).unwrap_or_default(),
            );
        };
        for v in &self.vehicles {
            line(
                &v.vehicle_id,
                &v.cooperative_id,
                v.plate.as_deref().unwrap_or(""),
                &v.counts,
            );
        }
        line("TOTAL", "", "", &self.totals.counts);
        // A second table after a blank line, only when there is something to show.
        if !self.ingest_incidents.is_empty() {
            out.push_str("\ningest_incident_at,kind,broker,connection,detail\n");
            for i in &self.ingest_incidents {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{}",
                    i.at,
                    csv_field(&i.kind),
                    csv_field(&i.broker),
                    csv_field(&i.connection),
                    csv_field(&i.detail)
                );
            }
        }
        out
    }
}

/// Quotes a free-text CSV field when needed (RFC 4180).
pub(super) fn csv_field(s: &str) -> String {
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
            distance_mm: 1_000_000_000,
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

    #[test]
    fn completeness_is_the_share_of_active_time_outside_gaps() {
        let mut c = Counts {
            data_gap_us: 900_000_000,
            active_s: 3600.0,
            ..Default::default()
        };
        c.rate(5.0, 4.0);
        assert_eq!(c.data_completeness, Some(0.75));
        c.active_s = 0.0;
        c.rate(5.0, 4.0);
        assert_eq!(c.data_completeness, None);
    }

    #[test]
    fn whole_days_of_a_range() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let d = |m, d| NaiveDate::from_ymd_opt(2026, m, d).unwrap();
        let off = 7 * 3600;
        // A local month is whole days.
        let (f, t) = month_range("2026-11", off).unwrap();
        assert_eq!(whole_days(f, t, off), Some((d(11, 1), d(12, 1))));
        // Partial first and last days are left out.
        assert_eq!(
            whole_days(at("2026-11-01T00:00:00Z"), at("2026-11-04T12:00:00Z"), off),
            Some((d(11, 2), d(11, 4)))
        );
        // Less than one whole day: none.
        assert_eq!(
            whole_days(at("2026-11-01T18:00:00Z"), at("2026-11-02T16:00:00Z"), off),
            None
        );
        // A month at another offset than the roll-ups': an hour at each edge is partial.
        let (f, t) = month_range("2026-11", 8 * 3600).unwrap();
        assert_eq!(whole_days(f, t, off), Some((d(11, 1), d(11, 30))));
    }
}
