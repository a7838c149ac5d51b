//! Reports per route, for a local service day or month (issue 11): trips scheduled
//! (the loaded GTFS feed's calendar) against trips run (`trip_runs`), stops served,
//! punctuality at the stops (`stop_events`) and kilometres in service.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Datelike, NaiveDate, TimeDelta};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::reports::{csv_field, Format};
use super::AppState;
use crate::geo::GeoIndex;

/// What the figures of a route report mean, as written into every JSON report.
pub const DEFINITIONS: &str = "Service dates are local (rules.utc_offset). trips_scheduled: \
    departures of the route's trips whose service runs that date in the GTFS feed loaded now \
    (a frequency-based trip once per departure). trips_run: distinct scheduled departures \
    (trip_id, scheduled_start) with at least one stored run; trips_completed: of those, with a \
    run reaching the last stop; trips_short_turned = trips_run - trips_completed; \
    trips_not_run = trips_scheduled - trips_run (at least 0); runs: stored runs. \
    stops_scheduled: stops of the scheduled departures; stops_served and stops_skipped: \
    distinct stop visits (trip, scheduled arrival, stop) of ended runs with a stop event served \
    or skipped. stop_events_timed: stop events of served stops with a deviation (arrival, or \
    departure at the first stop; a stop driven through is not timed); punctuality: the share of those with -early_s <= deviation_s <= late_s \
    (rules.transit, the bounds of the schedule_deviation alert), null without any; \
    median_deviation_s: their median (late > 0; the mean of the two middle values for an even \
    count). km_in_service: sum over the runs of the distance along the trip's shape from where \
    the run started to the furthest point reached (the last stop for a completed run); \
    km_scheduled: the scheduled departures' distance from first to last stop along the shape. \
    A cooperative sees the routes of its registered vehicles and of its own runs, and only its \
    own runs and stop events; trips_scheduled is the whole route's.";

/// Query of a route report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteReportQuery {
    /// Cooperative (a cooperative token: its own, the default; others: all if absent).
    pub cooperative: Option<String>,
    /// A local month, `YYYY-MM` (per route, a `days` list); or `date`.
    pub month: Option<String>,
    /// One local service date, `YYYY-MM-DD`.
    pub date: Option<NaiveDate>,
    /// Only this GTFS `route_id`.
    pub route: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// Figures of one route and period (or of the totals).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct RouteCounts {
    /// Scheduled departures in the feed's calendar.
    pub trips_scheduled: i64,
    /// Scheduled departures with a run.
    pub trips_run: i64,
    /// Of those, completed (last stop reached).
    pub trips_completed: i64,
    /// Run but not completed (abandoned, short-turned).
    pub trips_short_turned: i64,
    /// Scheduled and not run.
    pub trips_not_run: i64,
    /// Stored runs.
    pub runs: i64,
    /// Stops of the scheduled departures.
    pub stops_scheduled: i64,
    /// Stop visits served.
    pub stops_served: i64,
    /// Stop visits skipped.
    pub stops_skipped: i64,
    /// Stop events of served stops with a deviation.
    pub stop_events_timed: i64,
    /// Of those, within the early/late bounds.
    pub stop_events_within_bounds: i64,
    /// `stop_events_within_bounds / stop_events_timed`, 0..1; `null` without any.
    pub punctuality: Option<f64>,
    /// Median deviation of the timed stop events, seconds (late > 0).
    pub median_deviation_s: Option<f64>,
    /// Kilometres in service of the runs.
    pub km_in_service: f64,
    /// Kilometres of the scheduled departures.
    pub km_scheduled: f64,
    #[serde(skip)]
    service_m: f64,
    #[serde(skip)]
    scheduled_m: f64,
}

impl RouteCounts {
    fn add_runs(&mut self, o: &RouteCounts) {
        self.trips_scheduled += o.trips_scheduled;
        self.trips_run += o.trips_run;
        self.trips_completed += o.trips_completed;
        self.runs += o.runs;
        self.stops_scheduled += o.stops_scheduled;
        self.service_m += o.service_m;
        self.scheduled_m += o.scheduled_m;
    }

    /// Derives the differences, share and kilometres from the sums.
    fn finish(&mut self) {
        self.trips_short_turned = (self.trips_run - self.trips_completed).max(0);
        self.trips_not_run = (self.trips_scheduled - self.trips_run).max(0);
        self.punctuality = (self.stop_events_timed > 0).then(|| {
            let p = self.stop_events_within_bounds as f64 / self.stop_events_timed as f64;
            (p * 1e6).round() / 1e6
        });
        self.km_in_service = (self.service_m).round() / 1000.0;
        self.km_scheduled = (self.scheduled_m).round() / 1000.0;
    }
}

/// One day of a route in a month report.
#[derive(Debug, Clone, Serialize)]
pub struct RouteDay {
    /// Local service date.
    pub date: NaiveDate,
    /// Its figures.
    #[serde(flatten)]
    pub counts: RouteCounts,
}

/// One route of a report.
#[derive(Debug, Clone, Serialize)]
pub struct RouteRow {
    /// GTFS `route_id`.
    pub route_id: String,
    /// Figures over the period.
    #[serde(flatten)]
    pub counts: RouteCounts,
    /// Per service date (month reports only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<RouteDay>>,
}

/// The early/late bounds punctuality is measured against, seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bounds {
    /// Earlier than the schedule by more than this: early.
    pub early_s: u32,
    /// Later by more than this: late.
    pub late_s: u32,
}

/// A route report.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// The month asked for, if any.
    pub month: Option<String>,
    /// The service date asked for, if any.
    pub date: Option<NaiveDate>,
    /// First service date, inclusive.
    pub from_date: NaiveDate,
    /// Last service date, inclusive.
    pub to_date: NaiveDate,
    /// The cooperative, or `null` for all.
    pub cooperative: Option<String>,
    /// Punctuality bounds.
    pub bounds: Bounds,
    /// What the figures mean ([`DEFINITIONS`]).
    pub definitions: &'static str,
    /// Per route, by id.
    pub routes: Vec<RouteRow>,
    /// Over every route of the report.
    pub totals: RouteCounts,
}

/// First and last (exclusive) service date of `month` (`YYYY-MM`) or `date`.
fn period(q: &RouteReportQuery) -> ApiResult<(NaiveDate, NaiveDate)> {
    match (&q.month, q.date) {
        (Some(m), None) => {
            let bad = || ApiError::bad(format!("month must look like 2026-11, got {m:?}"));
            let first =
                NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d").map_err(|_| bad())?;
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            }
            .ok_or_else(bad)?;
            Ok((first, next))
        }
        (None, Some(d)) => Ok((d, d + TimeDelta::days(1))),
        _ => Err(ApiError::bad(
            "give either month=YYYY-MM or date=YYYY-MM-DD",
        )),
    }
}

/// The feed's scheduled departures of `route` on `d`: trips, stops and metres.
fn scheduled(geo: &GeoIndex, route: &str, d: NaiveDate) -> RouteCounts {
    let mut c = RouteCounts::default();
    let Some(sched) = geo.schedule_for(route) else {
        return c;
    };
    let Some(rt) = sched.route(route) else {
        return c;
    };
    for &ti in &rt.trips {
        let t = &sched.trips[ti as usize];
        if !sched.runs_on(t, d) {
            continue;
        }
        let n: i64 = if t.frequencies.is_empty() {
            1
        } else {
            t.frequencies
                .iter()
                .map(|f| {
                    if f.headway_s > 0 && f.end_s > f.start_s {
                        i64::from((f.end_s - f.start_s - 1) / f.headway_s + 1)
                    } else {
                        0
                    }
                })
                .sum()
        };
        let len_m = match (t.stop_times.first(), t.stop_times.last()) {
            (Some(a), Some(b)) => (b.dist_m - a.dist_m).max(0.0),
            _ => 0.0,
        };
        c.trips_scheduled += n;
        c.stops_scheduled += n * t.stop_times.len() as i64;
        c.scheduled_m += n as f64 * len_m;
    }
    c
}

/// `GET /api/v1/reports/routes`.
pub async fn routes(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<RouteReportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let coop = caller.cooperative_filter(q.cooperative.as_deref())?;
    let format = Format::parse(q.format.as_deref())?;
    let (from, to) = period(&q)?;
    let bounds = Bounds {
        early_s: s.settings.rules.transit.early_s,
        late_s: s.settings.rules.transit.late_s,
    };
    let _permit = s.heavy.try_acquire(&caller)?;
    let geo = s.geo.borrow().clone();
    let db = s.db.get().await?;

    // Runs per route and service date.
    let mut runs: BTreeMap<(String, NaiveDate), RouteCounts> = BTreeMap::new();
    for r in db
        .query(
            "SELECT t.route_id, t.service_date, count(*),
                    count(DISTINCT (t.trip_id, t.scheduled_start)),
                    count(DISTINCT (t.trip_id, t.scheduled_start)) FILTER (WHERE t.completed),
                    COALESCE(sum(t.distance_m), 0)::float8
             FROM trip_runs t LEFT JOIN vehicles v ON v.vehicle_id = t.vehicle_id
             WHERE ($1::text IS NULL OR COALESCE(t.cooperative_id, v.cooperative_id) = $1)
               AND t.service_date >= $2 AND t.service_date < $3
               AND ($4::text IS NULL OR t.route_id = $4)
             GROUP BY 1, 2",
            &[&coop, &from, &to, &q.route],
        )
        .await?
    {
        runs.insert(
            (r.get(0), r.get(1)),
            RouteCounts {
                runs: r.get(2),
                trips_run: r.get(3),
                trips_completed: r.get(4),
                service_m: r.get(5),
                ..Default::default()
            },
        );
    }
    // Stop events per route and date, per route, and over all: a median does not
    // add up, so each level is its own group. The route of an event is its run's.
    let (early, late) = (bounds.early_s as i32, bounds.late_s as i32);
    let mut events: BTreeMap<(Option<String>, Option<NaiveDate>), RouteCounts> = BTreeMap::new();
    for r in db
        .query(
            "SELECT r.route_id, e.service_date, GROUPING(r.route_id, e.service_date),
                    count(DISTINCT (e.trip_id, e.scheduled_arrival, e.stop_sequence))
                        FILTER (WHERE NOT e.skipped),
                    count(DISTINCT (e.trip_id, e.scheduled_arrival, e.stop_sequence))
                        FILTER (WHERE e.skipped),
                    count(e.deviation_s) FILTER (WHERE NOT e.skipped),
                    count(*) FILTER (WHERE NOT e.skipped
                                       AND e.deviation_s BETWEEN -($5::int4) AND $6::int4),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY e.deviation_s::float8)
                        FILTER (WHERE NOT e.skipped)
             FROM stop_events e LEFT JOIN vehicles v ON v.vehicle_id = e.vehicle_id
             JOIN LATERAL (SELECT route_id FROM trip_runs t
                           WHERE t.vehicle_id = e.vehicle_id AND t.trip_id = e.trip_id
                             AND t.service_date = e.service_date LIMIT 1) r ON true
             WHERE ($1::text IS NULL OR COALESCE(e.cooperative_id, v.cooperative_id) = $1)
               AND e.service_date >= $2 AND e.service_date < $3
               AND ($4::text IS NULL OR r.route_id = $4)
             GROUP BY GROUPING SETS ((r.route_id, e.service_date), (r.route_id), ())",
            &[&coop, &from, &to, &q.route, &early, &late],
        )
        .await?
    {
        let g: i32 = r.get(2);
        let route: Option<String> = if g & 2 == 0 { r.get(0) } else { None };
        let date: Option<NaiveDate> = if g & 1 == 0 { r.get(1) } else { None };
        events.insert(
            (route, date),
            RouteCounts {
                stops_served: r.get(3),
                stops_skipped: r.get(4),
                stop_events_timed: r.get(5),
                stop_events_within_bounds: r.get(6),
                median_deviation_s: r.get(7),
                ..Default::default()
            },
        );
    }

    // Routes: a cooperative's are those of its vehicles and runs; others see every
    // route of the feeds too.
    let mut ids: BTreeSet<String> = runs.keys().map(|(r, _)| r.clone()).collect();
    ids.extend(events.keys().filter_map(|(r, _)| r.clone()));
    match &coop {
        Some(c) => {
            for r in db
                .query(
                    "SELECT DISTINCT route_id FROM vehicles
                     WHERE cooperative_id = $1 AND route_id IS NOT NULL",
                    &[c],
                )
                .await?
            {
                ids.insert(r.get(0));
            }
        }
        None => {
            for sched in geo.schedules() {
                ids.extend(sched.route_ids().map(str::to_string));
            }
        }
    }
    if let Some(only) = &q.route {
        ids.retain(|r| r == only);
    }

    let with_days = q.month.is_some();
    let mut totals = RouteCounts::default();
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let mut sum = RouteCounts::default();
        let mut days = Vec::new();
        let mut d = from;
        while d < to {
            let mut c = scheduled(&geo, &id, d);
            if let Some(r) = runs.get(&(id.clone(), d)) {
                c.add_runs(r);
            }
            sum.add_runs(&c);
            if with_days {
                let key = (Some(id.clone()), Some(d));
                add_events(&mut c, events.get(&key));
                c.finish();
                days.push(RouteDay { date: d, counts: c });
            }
            d += TimeDelta::days(1);
        }
        totals.add_runs(&sum);
        add_events(&mut sum, events.get(&(Some(id.clone()), None)));
        sum.finish();
        rows.push(RouteRow {
            route_id: id,
            counts: sum,
            days: with_days.then_some(days),
        });
    }
    add_events(&mut totals, events.get(&(None, None)));
    totals.finish();
    let report = RouteReport {
        month: q.month.clone(),
        date: q.date,
        from_date: from,
        to_date: to - TimeDelta::days(1),
        cooperative: coop,
        bounds,
        definitions: DEFINITIONS,
        routes: rows,
        totals,
    };
    Ok(match format {
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.csv(),
        )
            .into_response(),
        Format::Json => Json(report).into_response(),
    })
}

fn add_events(c: &mut RouteCounts, e: Option<&RouteCounts>) {
    if let Some(e) = e {
        c.stops_served = e.stops_served;
        c.stops_skipped = e.stops_skipped;
        c.stop_events_timed = e.stop_events_timed;
        c.stop_events_within_bounds = e.stop_events_within_bounds;
        c.median_deviation_s = e.median_deviation_s;
    }
}

/// CSV header of a route report.
pub const CSV_HEADER: &str = "route_id,period,trips_scheduled,trips_run,trips_completed,\
    trips_short_turned,trips_not_run,runs,stops_scheduled,stops_served,stops_skipped,\
    stop_events_timed,stop_events_within_bounds,punctuality,median_deviation_s,km_in_service,\
    km_scheduled";

impl RouteReport {
    /// Per route: one row per day (month reports), then its row for the whole period
    /// (`period` the month or the date); last the `TOTAL` row.
    pub fn csv(&self) -> String {
        let mut out = format!("{CSV_HEADER}\n");
        let period = self
            .month
            .clone()
            .unwrap_or_else(|| self.from_date.to_string());
        let mut line = |id: &str, period: &str, c: &RouteCounts| {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3}",
                csv_field(id),
                period,
                c.trips_scheduled,
                c.trips_run,
                c.trips_completed,
                c.trips_short_turned,
                c.trips_not_run,
                c.runs,
                c.stops_scheduled,
                c.stops_served,
                c.stops_skipped,
                c.stop_events_timed,
                c.stop_events_within_bounds,
                c.punctuality.map(|p| format!("{p:.6}")).unwrap_or_default(),
                c.median_deviation_s
                    .map(|m| format!("{m:.1}"))
                    .unwrap_or_default(),
                c.km_in_service,
                c.km_scheduled,
            );
        };
        for r in &self.routes {
            for d in r.days.iter().flatten() {
                line(&r.route_id, &d.date.to_string(), &d.counts);
            }
            line(&r.route_id, &period, &r.counts);
        }
        line("TOTAL", &period, &self.totals);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let q = |month: Option<&str>, date: Option<&str>| RouteReportQuery {
            cooperative: None,
            month: month.map(Into::into),
            date: date.map(|d| d.parse().unwrap()),
            route: None,
            format: None,
        };
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(
            period(&q(Some("2026-12"), None)).unwrap(),
            (d("2026-12-01"), d("2027-01-01"))
        );
        assert_eq!(
            period(&q(None, Some("2026-02-28"))).unwrap(),
            (d("2026-02-28"), d("2026-03-01"))
        );
        assert!(period(&q(Some("2026-13"), None)).is_err());
        assert!(period(&q(None, None)).is_err());
        assert!(period(&q(Some("2026-12"), Some("2026-12-01"))).is_err());
    }

    #[test]
    fn differences_and_share() {
        let mut c = RouteCounts {
            trips_scheduled: 3,
            trips_run: 2,
            trips_completed: 1,
            stop_events_timed: 11,
            stop_events_within_bounds: 6,
            service_m: 10_920.4,
            ..Default::default()
        };
        c.finish();
        assert_eq!((c.trips_short_turned, c.trips_not_run), (1, 1));
        assert_eq!(c.punctuality, Some(0.545455));
        assert_eq!(c.km_in_service, 10.92);
        c.stop_events_timed = 0;
        c.finish();
        assert_eq!(c.punctuality, None);
    }
}
