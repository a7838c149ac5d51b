//! Synthetic bus runs with known answers against a small GTFS feed: on time, 3 min
//! late, a stop driven through, a short-turn, a restart from a checkpoint mid-run.
//!
//! The feed: route L1 along 10.95 N from 106.65 E, stops S0..S5 every 0.01° of
//! longitude (1,092 m); trip F0800 and F0830 serve them all, 140 s apart (what a bus
//! at 36 km/h with a 30 s dwell does), SHORT0815 runs S0..S3 on its own shape.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::scenarios::{of_kind, run};
use super::*;
use crate::domain::{
    CooperativeId, Fix, FixCandidate, FixLimits, Vehicle, VehicleClass, VehicleId,
};
use crate::geo::{load_routes_gtfs, load_schedule, GeoIndex};

const LAT: f64 = 10.95;
const LON0: f64 = 106.65;
const STEP: f64 = 0.01;

fn hms(s: i64) -> String {
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The feed in a temp directory (removed on drop).
struct Feed(PathBuf);

impl Drop for Feed {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn feed(tag: &str) -> Feed {
    let dir = std::env::temp_dir().join(format!("fw-transit-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let stops: String = (0..6)
        .map(|k| format!("S{k},Stop {k},{LAT},{:.4}\n", LON0 + STEP * f64::from(k)))
        .collect();
    let mut times = String::new();
    for (trip, dep, n) in [
        ("F0800", 8 * 3600, 6),
        ("F0830", 8 * 3600 + 1800, 6),
        ("SHORT0815", 8 * 3600 + 900, 4),
    ] {
        for k in 0..n {
            // Entering a stop's 50 m radius 5 s before it, leaving 25 s after.
            let (a, d) = match k {
                0 => (hms(dep), hms(dep)),
                _ => (hms(dep + 140 * k - 35), hms(dep + 140 * k - 5)),
            };
            times.push_str(&format!("{trip},{a},{d},S{k},{}\n", 10 + 5 * k));
        }
    }
    let shape = |id: &str, n: i32| -> String {
        (0..n)
            .map(|k| format!("{id},{LAT},{:.4},{}\n", LON0 + STEP * f64::from(k), k + 1))
            .collect()
    };
    let files = [
        ("routes.txt", "route_id,route_short_name\nL1,1\n".to_string()),
        (
            "trips.txt",
            "route_id,service_id,trip_id,shape_id,direction_id\nL1,WK,F0800,FULL,0\nL1,WK,F0830,FULL,0\nL1,WK,SHORT0815,SHORT,0\n".into(),
        ),
        ("stops.txt", format!("stop_id,stop_name,stop_lat,stop_lon\n{stops}")),
        ("stop_times.txt", format!("trip_id,arrival_time,departure_time,stop_id,stop_sequence\n{times}")),
        (
            "shapes.txt",
            format!("shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\n{}{}", shape("FULL", 6), shape("SHORT", 4)),
        ),
        (
            "calendar.txt",
            "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\nWK,1,1,1,1,1,1,1,20260101,20261231\n".into(),
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    Feed(dir)
}

fn geo(f: &Feed) -> Arc<GeoIndex> {
    let routes = load_routes_gtfs(&f.0).unwrap();
    let sched = load_schedule(&f.0, None).unwrap();
    Arc::new(
        GeoIndex::new(routes, vec![])
            .unwrap()
            .with_schedules(vec![sched]),
    )
}

fn engine(geo: Arc<GeoIndex>, cfg: RulesConfig) -> Engine {
    let bus = Vehicle {
        id: VehicleId::parse("BUS-T").unwrap(),
        plate: None,
        cooperative: CooperativeId::parse("HTX").unwrap(),
        class: VehicleClass::Bus,
        route: Some("L1".into()),
        device_id: None,
    };
    Engine::new(cfg, geo, vec![bus])
}

/// 2026-12-03 local (UTC+7) time of day.
fn local(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, h, m, s).unwrap() - Duration::hours(7)
}

fn fix(t: DateTime<Utc>, lon: f64, speed_kmh: f64) -> Fix {
    let c = FixCandidate {
        vehicle: None,
        ts: Some(t),
        lat: LAT,
        lon,
        speed_kmh: Some(speed_kmh),
        heading_deg: None,
        driver: None,
        ignition: Some(true),
        satellites: Some(9),
        hdop: Some(0.9),
        odometer_m: None,
        accuracy_m: None,
    };
    Fix::validate(
        c,
        VehicleId::parse("BUS-T").unwrap(),
        &FixLimits::default(),
        t,
    )
    .unwrap()
}

/// A bus waiting 5 min at S0, leaving at `depart`, at 36 km/h with fixes every 5 s,
/// dwelling 30 s at each stop up to `last` except those in `drive_through`, then
/// 5 min standing at `last`.
fn bus_run(depart: DateTime<Utc>, last: i32, drive_through: &[i32]) -> Vec<Fix> {
    let mut out = Vec::new();
    let mut t = depart - Duration::seconds(300);
    while t <= depart {
        out.push(fix(t, LON0, 0.0));
        t += Duration::seconds(5);
    }
    // 1,092 m per 0.01°: 10 m/s is STEP / 109.2 per second.
    let per_s = STEP / 109.2;
    let mut lon = LON0;
    for k in 1..=last {
        let target = LON0 + STEP * f64::from(k);
        while lon + per_s * 5.0 < target {
            lon += per_s * 5.0;
            out.push(fix(t, lon, 36.0));
            t += Duration::seconds(5);
        }
        lon = target;
        if drive_through.contains(&k) {
            out.push(fix(t, lon, 36.0));
            t += Duration::seconds(5);
            continue;
        }
        let dwell = if k == last { 300 } else { 30 };
        for _ in 0..dwell / 5 {
            out.push(fix(t, lon, 0.0));
            t += Duration::seconds(5);
        }
    }
    out
}

#[test]
fn on_time_run_is_assigned_with_every_stop() {
    let f = feed("ontime");
    let mut e = engine(geo(&f), RulesConfig::default());
    let out = run(&mut e, &bus_run(local(8, 0, 0), 5, &[]));
    assert_eq!(out.trip_runs.len(), 1, "{:#?}", out.trip_runs);
    let r = &out.trip_runs[0];
    assert_eq!(r.trip_id, "F0800");
    assert!(r.completed);
    assert_eq!((r.stops_served, r.stops_skipped, r.stops_total), (6, 0, 6));
    assert!(r.confidence >= 90, "{}", r.confidence);
    // Kilometres in service: S0 to S5 along the shape, 5 × 1,092 m.
    let d = r.distance_m.unwrap();
    assert!((d - 5.0 * 1092.0).abs() < 60.0, "{d}");
    // Departure: the last fix within the stop radius (50 m after 5 s).
    assert_eq!(r.start, local(8, 0, 5));
    let seqs: Vec<u32> = out.stop_events.iter().map(|s| s.stop_sequence).collect();
    assert_eq!(seqs, [10, 15, 20, 25, 30, 35]);
    for s in &out.stop_events {
        let d = s.deviation_s.unwrap();
        assert!(d.abs() <= 20, "{} {d}", s.stop_id);
        assert!(!s.skipped);
    }
    // Dwell 30 s at the middle stops: first to last fix there is 25 s at 5 s fixes
    // (plus the fix of arrival while still driving, within the radius).
    let mid = &out.stop_events[2];
    assert!((25.0..=40.0).contains(&mid.dwell_s.unwrap()), "{mid:?}");
    assert!(of_kind(&out, AlertKind::ScheduleDeviation).is_empty());
    assert!(of_kind(&out, AlertKind::StopSkipped).is_empty());
    assert!(of_kind(&out, AlertKind::OffRoute).is_empty());
}

#[test]
fn three_minutes_late() {
    let f = feed("late");
    let fixes = bus_run(local(8, 3, 0), 5, &[]);
    // Within the default 300 s: reported, no alert.
    let out = run(&mut engine(geo(&f), RulesConfig::default()), &fixes);
    assert_eq!(out.trip_runs[0].trip_id, "F0800");
    for s in &out.stop_events {
        let d = s.deviation_s.unwrap();
        assert!((160..=200).contains(&d), "{} {d}", s.stop_id);
    }
    assert!(of_kind(&out, AlertKind::ScheduleDeviation).is_empty());
    assert_eq!(
        out.trip_runs[0].last_delay_s.map(|d| (d - 180).abs() <= 20),
        Some(true)
    );
    // late_s = 120: one episode from the first stop to the end of the run.
    let mut cfg = RulesConfig::default();
    cfg.transit.late_s = 120;
    cfg.transit.deviation_level = Level::Info;
    let out = run(&mut engine(geo(&f), cfg), &fixes);
    let dev = of_kind(&out, AlertKind::ScheduleDeviation);
    assert_eq!(dev.len(), 2, "{dev:#?}");
    assert_eq!(
        (dev[0].status, dev[1].status),
        (AlertStatus::Open, AlertStatus::Closed)
    );
    assert_eq!(dev[0].id, dev[1].id);
    assert_eq!(dev[0].level, Level::Info);
    assert_eq!(dev[0].start, local(8, 3, 5));
    assert_eq!(dev[0].details["direction"], "late");
    assert_eq!(dev[0].details["stop_id"], "S0");
    assert_eq!(dev[1].end, Some(out.trip_runs[0].end));
}

#[test]
fn a_stop_driven_through_is_skipped() {
    let f = feed("skip");
    let out = run(
        &mut engine(geo(&f), RulesConfig::default()),
        &bus_run(local(8, 0, 0), 5, &[3]),
    );
    let r = &out.trip_runs[0];
    assert_eq!(
        (r.trip_id.as_str(), r.stops_served, r.stops_skipped),
        ("F0800", 5, 1)
    );
    let skipped: Vec<&str> = out
        .stop_events
        .iter()
        .filter(|s| s.skipped)
        .map(|s| s.stop_id.as_str())
        .collect();
    assert_eq!(skipped, ["S3"]);
    let a = of_kind(&out, AlertKind::StopSkipped);
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].details["stop_id"], "S3");
    assert_eq!(a[0].level, Level::Warning);
}

#[test]
fn a_short_turn_trip_is_told_from_the_full_one() {
    let f = feed("short");
    let mut e = engine(geo(&f), RulesConfig::default());
    let out = run(&mut e, &bus_run(local(8, 15, 0), 3, &[]));
    assert_eq!(
        out.trip_runs.len(),
        1,
        "{:#?} {:#?} {:?}",
        out.trip_runs,
        out.stop_events,
        e.checkpoint()
    );
    let r = &out.trip_runs[0];
    assert_eq!(r.trip_id, "SHORT0815");
    assert!(r.completed);
    assert_eq!((r.stops_served, r.stops_total), (4, 4));
    // The same track at 08:30 is the full trip that turned back short: abandoned
    // after the run went quiet, 4 of 6 stops served, the rest never reached.
    let mut cfg = RulesConfig::default();
    cfg.transit.abandon_after_s = 120;
    let out = run(&mut engine(geo(&f), cfg), &bus_run(local(8, 30, 0), 3, &[]));
    let r = &out.trip_runs[0];
    assert_eq!((r.trip_id.as_str(), r.completed), ("F0830", false));
    assert_eq!((r.stops_served, r.stops_skipped), (4, 0));
    // In service as far as S3 only: 3 × 1,092 m of the 5 × 1,092 m trip.
    let d = r.distance_m.unwrap();
    assert!((d - 3.0 * 1092.0).abs() < 60.0, "{d}");
}

/// A checkpoint taken mid-run and restored into a new engine goes on to the same
/// events as the run without it; the state is small.
#[test]
fn the_run_survives_a_checkpoint() {
    let f = feed("ckpt");
    let g = geo(&f);
    let fixes = bus_run(local(8, 0, 0), 5, &[3]);
    let whole = run(&mut engine(g.clone(), RulesConfig::default()), &fixes);
    let cut = fixes.len() / 2;
    let mut a = engine(g.clone(), RulesConfig::default());
    let mut first = run(&mut a, &fixes[..cut]);
    let state = a.checkpoint();
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.len() < 4096, "{} bytes: {json}", json.len());
    assert!(json.contains("F0800"), "{json}");
    let restored: Vec<(VehicleId, VehicleState)> = serde_json::from_str(&json).unwrap();
    let mut b = engine(g, RulesConfig::default());
    b.restore(restored);
    assert_eq!(
        b.trip_progress(&VehicleId::parse("BUS-T").unwrap())
            .unwrap()
            .trip_id,
        "F0800"
    );
    first.append(run(&mut b, &fixes[cut..]));
    assert_eq!(first.stop_events, whole.stop_events);
    assert_eq!(first.trip_runs, whole.trip_runs);
    let ids = |o: &Output| o.alerts.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&whole));
}
