//! Daily roll-ups and reports against a real PostgreSQL: the roll-ups the writer keeps
//! give the same report as the raw tables over random ranges, also after redelivery
//! and alert updates; `fleetwatch report` prints what the API returns.

use fleetwatch::domain::fix::{deg_to_e7, e7_to_deg};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::api::reports::{self, ReportParams, ReportQuery, Source};
use fleetwatch::domain::Vehicle;
use fleetwatch::geo::GeoIndex;
use fleetwatch::infra::broker::EmbeddedBroker;
use fleetwatch::pipeline::topic::TopicPattern;
use fleetwatch::pipeline::validate::Validator;
use fleetwatch::pipeline::Stage;
use fleetwatch::rules::{Alert, AlertKind, AlertStatus, Engine, RulesConfig};
use fleetwatch::store::rollup;
use fleetwatch::store::writer::{self, Derived, Item};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::api::get;
use crate::support::*;

const OFFSET_S: i32 = 7 * 3600;

/// What a vehicle does over a stretch of local time.
#[derive(Clone, Copy)]
enum Act {
    /// Moving at `kmh`, a fix every 30 s.
    Drive(f64),
    /// Overspeed: 75 km/h for 5 min, then up to 100 km/h (bus limit 70).
    Ramp,
    /// Stopped with the engine on, a fix every 2 min.
    Stop,
    /// Parked, ignition off, a fix every 10 min (under the 15 min cadence).
    Park,
    /// Sends nothing.
    Silent,
}

/// (local start "HH:MM", activity) until the next entry; the day ends parked.
type Day = Vec<(&'static str, Act)>;

fn normal_day() -> Day {
    vec![
        ("00:00", Act::Park),
        ("06:00", Act::Drive(50.0)),
        ("09:30", Act::Stop),
        ("10:00", Act::Drive(50.0)),
        ("13:00", Act::Stop),
        ("14:00", Act::Drive(45.0)),
        ("17:00", Act::Park),
    ]
}

/// Vehicle, cooperative, driver before/after 13:00, schedule of days 0..3.
struct Script {
    vehicle: &'static str,
    coop: &'static str,
    drivers: (&'static str, &'static str),
    days: [Day; 3],
}

fn scripts() -> Vec<Script> {
    let mut v1_day1 = normal_day();
    // A 20-minute overspeed episode: opens counted=false in band 1 (excess 5), closes
    // counted in band 3 several batches later.
    v1_day1.splice(4..4, [("11:00", Act::Ramp), ("11:20", Act::Drive(50.0))]);
    let mut v1_day2 = normal_day();
    v1_day2.splice(6..6, [("15:00", Act::Silent), ("15:03", Act::Drive(45.0))]);
    let v2_day0 = vec![
        ("00:00", Act::Park),
        // 4 h 45 min without a break, then 12 h in the day.
        ("06:00", Act::Drive(55.0)),
        ("10:45", Act::Stop),
        ("11:15", Act::Drive(55.0)),
        ("14:00", Act::Stop),
        ("14:30", Act::Drive(55.0)),
        ("19:00", Act::Park),
    ];
    let mut v3_day1 = normal_day();
    v3_day1.splice(4..4, [("10:30", Act::Silent), ("11:10", Act::Drive(50.0))]);
    let mut v4_day2 = normal_day();
    v4_day2.splice(6..6, [("14:30", Act::Silent), ("15:30", Act::Drive(45.0))]);
    vec![
        Script {
            vehicle: "V-1",
            coop: "HTX-A",
            drivers: ("079000000011", "079000000011"),
            days: [normal_day(), v1_day1, v1_day2],
        },
        Script {
            vehicle: "V-2",
            coop: "HTX-A",
            drivers: ("079000000021", "079000000021"),
            days: [v2_day0, normal_day(), normal_day()],
        },
        Script {
            vehicle: "V-3",
            coop: "HTX-A",
            drivers: ("079000000031", "079000000032"),
            days: [normal_day(), v3_day1, normal_day()],
        },
        Script {
            vehicle: "V-4",
            coop: "HTX-B",
            drivers: ("079000000041", "079000000041"),
            days: [normal_day(), normal_day(), v4_day2],
        },
    ]
}

/// First local day of the data.
fn day0() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 14).unwrap()
}

fn local(day: usize, hhmm: &str) -> DateTime<Utc> {
    let (h, m) = hhmm.split_once(':').unwrap();
    let d = day0() + TimeDelta::days(day as i64);
    rollup::day_start(d, OFFSET_S)
        + TimeDelta::hours(h.parse().unwrap())
        + TimeDelta::minutes(m.parse().unwrap())
}

/// Every fix of a script: (ts, topic, payload).
fn fixes(s: &Script) -> Vec<(DateTime<Utc>, String, Vec<u8>)> {
    let mut out = Vec::new();
    let (mut lat, lon) = (10.9, 106.7);
    let mut north = true;
    for (d, day) in s.days.iter().enumerate() {
        for (k, (start, act)) in day.iter().enumerate() {
            let t0 = local(d, start);
            let t1 = day
                .get(k + 1)
                .map_or(local(d + 1, "00:00"), |n| local(d, n.0));
            let step = match act {
                Act::Drive(_) | Act::Ramp => 30,
                Act::Stop => 120,
                Act::Park => 600,
                Act::Silent => continue,
            };
            north = !north;
            let mut t = t0;
            while t < t1 {
                let speed = match act {
                    Act::Drive(v) => *v,
                    // 5 min at 75, then up to 100 by the end.
                    Act::Ramp => {
                        let (e, n) = ((t - t0).num_seconds() - 300, (t1 - t0).num_seconds() - 300);
                        75.0 + 25.0 * e.max(0) as f64 / n as f64
                    }
                    _ => 0.0,
                };
                let step_deg = speed / 3.6 * step as f64 / 111_000.0;
                lat += if north { step_deg } else { -step_deg };
                let driver = if t < local(d, "13:00") {
                    s.drivers.0
                } else {
                    s.drivers.1
                };
                let ignition = !matches!(act, Act::Park);
                let payload = json!({
                    "vehicle": s.vehicle, "ts": t.to_rfc3339(), "lat": lat, "lon": lon,
                    "speed_kmh": speed, "heading_deg": if north { 0 } else { 180 },
                    "driver_id": driver, "ignition": ignition, "satellites": 9, "hdop": 0.9,
                });
                out.push((
                    t,
                    topic(s.coop, s.vehicle),
                    payload.to_string().into_bytes(),
                ));
                t += TimeDelta::seconds(step);
            }
        }
    }
    out
}

/// An alert as the rules would make it (for kinds needing routes and zones).
fn alert(
    id: &str,
    vehicle: &str,
    kind: &str,
    open: bool,
    start: DateTime<Utc>,
    driver: Option<&str>,
) -> Alert {
    serde_json::from_value(json!({
        "id": id, "vehicle": vehicle, "cooperative": "HTX-A", "driver": driver,
        "kind": kind, "level": "violation", "status": if open { "open" } else { "closed" },
        "start": start, "end": if open { None } else { Some(start + TimeDelta::minutes(7)) },
        "lat": 10.9, "lon": 106.7, "severity": null, "details": {},
    }))
    .unwrap()
}

/// The dataset as the pipeline stage makes it: one item per message (each fix its own
/// message, received a second after its time), a rules tick every 5 minutes, plus
/// off-route, zone and driver-changing alerts; in batches of 50 items.
fn batches() -> Vec<Vec<Item<()>>> {
    let registry: Vec<Vehicle> = scripts()
        .iter()
        .map(|s| {
            serde_json::from_value(json!({"id": s.vehicle, "cooperative": s.coop, "class": "bus"}))
                .unwrap()
        })
        .collect();
    let mut stage = stage_of(registry);
    let mut all: Vec<_> = scripts().iter().flat_map(fixes).collect();
    all.sort_by_key(|a| a.0);
    // Handmade alerts, each delivered at its time: off route opened then closed later;
    // a zone violation; a continuous-driving alert whose driver changes before it closes.
    let mut extra: Vec<(DateTime<Utc>, Alert)> = Vec::new();
    let s = local(1, "07:00");
    extra.push((
        s + TimeDelta::minutes(1),
        alert("x-off", "V-1", "off_route", true, s, None),
    ));
    extra.push((
        s + TimeDelta::hours(1),
        alert("x-off", "V-1", "off_route", false, s, None),
    ));
    let s = local(2, "08:00");
    extra.push((s, alert("x-zone", "V-3", "restricted_zone", false, s, None)));
    let s = local(0, "23:50");
    let d = (Some("079000000031"), Some("079000000032"));
    extra.push((s, alert("x-drv", "V-3", "continuous_driving", true, s, d.0)));
    extra.push((
        s + TimeDelta::hours(2),
        alert("x-drv", "V-3", "continuous_driving", false, s, d.1),
    ));

    let mut items = Vec::new();
    let mut next_tick = local(0, "00:05");
    let mut fixes = all.into_iter().peekable();
    let mut extra = extra.into_iter().peekable();
    while let Some(&(ts, _, _)) = fixes.peek() {
        if next_tick <= ts {
            let derived = stage.tick(next_tick);
            items.push(item(Vec::new(), derived, next_tick));
            next_tick += TimeDelta::minutes(5);
            continue;
        }
        if extra.peek().is_some_and(|(at, _)| *at <= ts) {
            let (at, a) = extra.next().unwrap();
            let derived = Derived {
                alerts: vec![a],
                ..Derived::default()
            };
            items.push(item(Vec::new(), derived, at));
            continue;
        }
        let (ts, topic, payload) = fixes.next().unwrap();
        let received = ts + TimeDelta::seconds(1);
        let (records, derived) = stage.message(&topic, &Bytes::from(payload), received);
        items.push(item(records, derived, received));
    }
    let mut out = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(50).collect());
    }
    out
}

fn item(
    records: Vec<fleetwatch::pipeline::validate::Record>,
    derived: Derived,
    at: DateTime<Utc>,
) -> Item<()> {
    Item {
        records,
        derived,
        ack: None,
        received_at: at,
    }
}

/// The roll-up tables as text, in key order.
async fn snapshot(c: &tokio_postgres::Client) -> Vec<String> {
    let mut rows: Vec<String> = c
        .query(
            "SELECT (vehicle_id, day, cooperative_id, fixes, first_fix_ts, last_fix_ts, trips,
                     distance_mm, overspeed_counted, overspeed_band1,
                     overspeed_band2, overspeed_band3, overspeed_band4, overspeed_not_counted,
                     continuous_driving_violations, daily_driving_violations,
                     weekly_driving_violations, off_route_violations, restricted_zone_violations,
                     no_signal, data_gaps, data_gap_us, last_gap_end_ts)::text
             FROM rollup_daily ORDER BY vehicle_id, day",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.extend(
        c.query(
            "SELECT d::text FROM rollup_daily_driver d ORDER BY vehicle_id, day, driver_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0)),
    );
    rows
}

fn params(
    coop: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    source: Source,
) -> ReportParams {
    let q = ReportQuery {
        from: Some(from),
        to: Some(to),
        ..ReportQuery::default()
    };
    let mut p = ReportParams::from_query(
        &q,
        coop.map(str::to_string),
        RulesConfig::default().utc_offset,
    )
    .unwrap();
    p.source = source;
    p
}

/// The parts of a report that must not depend on where they were computed from.
fn figures(r: &reports::Report) -> Value {
    json!({ "vehicles": r.vehicles, "drivers": r.drivers, "totals": r.totals })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_report_equals_raw_report_over_random_ranges_and_after_redelivery() {
    let db = fresh_db().await;
    let mut c = fleetwatch::store::connect(&db).await.unwrap();
    for s in scripts() {
        c.execute(
            "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered)
             VALUES ($1, $2, $1, 'bus', true) ON CONFLICT DO NOTHING",
            &[&s.vehicle, &s.coop],
        )
        .await
        .unwrap();
    }
    let offset = RulesConfig::default().utc_offset;
    let layout = fleetwatch::store::migrate::Layout::Plain;
    assert!(
        rollup::ensure(&mut c, offset, layout).await.unwrap(),
        "first build"
    );
    assert!(
        !rollup::ensure(&mut c, offset, layout).await.unwrap(),
        "nothing to do"
    );
    let plan = writer::prepare(&c)
        .await
        .unwrap()
        .expect("roll-ups planned");
    assert_eq!(
        plan,
        rollup::Plan {
            offset_s: OFFSET_S,
            fixes: true
        }
    );

    let batches = batches();
    // The overspeed episode is stored open in one batch and closed in a later one, so
    // its roll-up must follow an update (band 1 not counted -> band 3 counted).
    let with = |status: AlertStatus| {
        batches.iter().position(|b| {
            b.iter().any(|i| {
                i.derived
                    .alerts
                    .iter()
                    .any(|a| a.kind == AlertKind::Overspeed && a.status == status)
            })
        })
    };
    let (opened, closed) = (
        with(AlertStatus::Open).unwrap(),
        with(AlertStatus::Closed).unwrap(),
    );
    assert!(
        opened < closed,
        "open in batch {opened}, closed in {closed}"
    );
    let mut sent = 0u64;
    let mut stored = 0u64;
    for b in &batches {
        let o = writer::write_batch(&mut c, Some(&plan), b).await.unwrap();
        sent += b.iter().map(|i| i.records.len() as u64).sum::<u64>();
        stored += o.stored;
    }
    assert_eq!(stored, sent, "every fix accepted and stored once");
    let kept = snapshot(&c).await;
    assert!(
        kept.len() > 12,
        "a row per vehicle and day, and driver rows: {kept:?}"
    );

    // Redelivery of every batch: nothing stored, nothing counted twice.
    for b in &batches {
        let o = writer::write_batch(&mut c, Some(&plan), b).await.unwrap();
        assert_eq!(o.stored, 0);
    }
    assert_eq!(snapshot(&c).await, kept, "after redelivery");

    // What the writer kept equals a rebuild from the raw tables.
    rollup::rebuild(&mut c, offset, true).await.unwrap();
    assert_eq!(snapshot(&c).await, kept, "kept incrementally = rebuilt");

    // Whole span: known figures.
    let (start, end) = (local(0, "00:00"), local(3, "00:00"));
    let r = reports::build(&c, &params(None, start, end, Source::RollUp))
        .await
        .unwrap();
    assert_eq!(
        r.computed_from
            .roll_up_days
            .as_ref()
            .map(|d| (d.from.as_str(), d.to.as_str())),
        Some(("2026-10-14", "2026-10-17"))
    );
    assert!(r.computed_from.raw.is_empty());
    let v = |id: &str| {
        &r.vehicles
            .iter()
            .find(|v| v.vehicle_id == id)
            .unwrap()
            .counts
    };
    assert_eq!(r.totals.counts.fixes as u64, stored);
    assert_eq!(v("V-1").overspeed_counted, 1);
    assert_eq!(v("V-1").overspeed_by_band["3"], 1);
    assert_eq!(v("V-1").overspeed_not_counted, 0);
    assert_eq!(v("V-1").off_route_violations, 1);
    assert_eq!(v("V-3").restricted_zone_violations, 1);
    assert!(
        v("V-2").continuous_driving_violations >= 2,
        "{:?}",
        v("V-2")
    );
    assert!(v("V-2").daily_driving_violations >= 1, "{:?}", v("V-2"));
    assert!(v("V-4").no_signal >= 1 && v("V-3").no_signal >= 1);
    assert!(
        v("V-1").data_gaps >= 1 && v("V-1").data_gap_s >= 180.0,
        "{:?}",
        v("V-1")
    );
    assert!(v("V-3").data_gap_s >= 2400.0, "{:?}", v("V-3"));
    assert!(
        v("V-2").trips >= 6 && v("V-2").distance_km > 1000.0,
        "{:?}",
        v("V-2")
    );
    // Completeness: V-2 never lost signal; V-3 lost 40 min of a ~3-day active span.
    assert_eq!(v("V-2").data_completeness, Some(1.0));
    let c3 = v("V-3").data_completeness.unwrap();
    assert!(c3 < 0.995 && c3 > 0.98, "{c3}");
    let d = |id: &str| r.drivers.iter().find(|d| d.driver_id == id);
    // The driver-changing alert counts for its final driver only.
    assert_eq!(
        d("079000000032").map(|d| d.continuous_driving_violations),
        Some(1)
    );
    assert!(d("079000000031").is_none_or(|d| d.continuous_driving_violations == 0));
    let raw = reports::build(&c, &params(None, start, end, Source::Raw))
        .await
        .unwrap();
    assert_eq!(figures(&r), figures(&raw));

    // Random ranges, for all and for one cooperative, with partial edges.
    let mut rng = SmallRng::seed_from_u64(4);
    let span_s = (end - start).num_seconds() + 6 * 3600;
    let mut from_roll_ups = 0;
    for k in 0..24 {
        let from = start - TimeDelta::hours(3) + TimeDelta::seconds(rng.random_range(0..span_s));
        let to = from + TimeDelta::seconds(rng.random_range(600..span_s));
        let coop = (k % 2 == 0).then_some("HTX-A");
        let a = reports::build(&c, &params(coop, from, to, Source::RollUp))
            .await
            .unwrap();
        let b = reports::build(&c, &params(coop, from, to, Source::Raw))
            .await
            .unwrap();
        assert_eq!(figures(&a), figures(&b), "{from} .. {to} ({coop:?})");
        from_roll_ups += usize::from(a.computed_from.roll_up_days.is_some());
    }
    assert!(
        from_roll_ups >= 12,
        "{from_roll_ups} of 24 ranges used roll-ups"
    );
    // A local month at another offset than the roll-ups': the partial first and last
    // days (1 h and 23 h of the roll-ups' days) are raw.
    let q = ReportQuery {
        month: Some("2026-10".into()),
        utc_offset: Some("+08:00".into()),
        ..ReportQuery::default()
    };
    let mut p = ReportParams::from_query(&q, None, offset).unwrap();
    let a = reports::build(&c, &p).await.unwrap();
    assert_eq!(a.computed_from.raw.len(), 2);
    p.source = Source::Raw;
    assert_eq!(figures(&a), figures(&reports::build(&c, &p).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_command_prints_what_the_api_returns() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-report-cli");
    s.vehicles =
        vec![
            serde_json::from_value(json!({"id": "R-1", "cooperative": "HTX-R", "class": "bus"}))
                .unwrap(),
        ];
    let app = start_app(s).await;
    // One bus: 3 minutes at 30 km/h, 60 s at 95 km/h (limit 70: a band 3 violation),
    // 30 s at 30 km/h, 2 minutes of silence while moving (a data gap), 30 s more, then
    // stopped.
    let base = base_time();
    let mut msgs = Vec::new();
    let mut lat = 10.9;
    let mut t = 0;
    for (secs, speed) in [
        (180, 30.0),
        (60, 95.0),
        (30, 30.0),
        (-120, 30.0),
        (30, 30.0),
        (300, 0.0),
    ] {
        if secs < 0 {
            t -= secs;
            continue;
        }
        for _ in 0..secs / 5 {
            lat += speed / 3.6 * 5.0 / 111_000.0;
            msgs.push((
                topic("HTX-R", "R-1"),
                fix("R-1", base + TimeDelta::seconds(t), lat, 106.7, speed),
            ));
            t += 5;
        }
    }
    let n = msgs.len() as i64;
    publish_all(&broker.url(), &msgs).await;
    wait_until("fixes and the closed overspeed stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM fixes").await == n
                && count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed' AND status = 'closed'").await == 1
        }
    })
    .await;
    // The roll-up counts what came through MQTT, kept by the app's writer (both layouts).
    assert_eq!(
        count(
            &db,
            "SELECT sum(fixes)::int8 FROM rollup_fixes_daily WHERE vehicle_id = 'R-1'"
        )
        .await,
        n
    );

    let c = fleetwatch::store::connect(&db).await.unwrap();
    let token = create_token(&c, Role::Regulator, None, None).await.unwrap();
    let month = rollup::local_day(base, OFFSET_S)
        .format("%Y-%m")
        .to_string();
    let dir = std::env::temp_dir().join(format!("fleetwatch-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{db}\"\n")).unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .arg("report")
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("fleetwatch runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from = (base - TimeDelta::minutes(30)).to_rfc3339();
    let to = (base + TimeDelta::hours(1)).to_rfc3339();
    let enc = |s: &str| s.replace('+', "%2B");
    for (query, args) in [
        (
            format!("cooperative=HTX-R&month={month}"),
            vec!["--cooperative", "htx-r", "--month", &month],
        ),
        (
            format!("from={}&to={}", enc(&from), enc(&to)),
            vec!["--from", &from, "--to", &to],
        ),
    ] {
        let api = get(
            app.http_addr,
            &format!("/api/v1/reports/compliance?{query}"),
            &token,
        )
        .await;
        assert_eq!(api.status, 200, "{}", api.body);
        let printed: Value = serde_json::from_str(&cli(&args)).unwrap();
        assert_eq!(printed, api.json(), "{query}");
        let r1 = &printed["vehicles"][0];
        assert_eq!(r1["vehicle_id"], "R-1");
        assert_eq!(r1["fixes"], n);
        assert_eq!(r1["overspeed_by_band"]["3"], 1);
        assert_eq!(r1["data_gaps"], 1);
        assert!(r1["data_completeness"].as_f64().unwrap() < 1.0, "{r1}");

        let api = get(
            app.http_addr,
            &format!("/api/v1/reports/compliance?{query}&format=csv"),
            &token,
        )
        .await;
        let mut csv_args = args.clone();
        csv_args.extend(["--format", "csv"]);
        assert_eq!(cli(&csv_args), api.body, "{query}");
    }
    // The roll-ups the app kept agree with the raw tables.
    let raw: Value = serde_json::from_str(&cli(&["--month", &month, "--raw"])).unwrap();
    let rolled: Value = serde_json::from_str(&cli(&["--month", &month])).unwrap();
    assert!(
        rolled["computed_from"]["roll_up_days"].is_object(),
        "{}",
        rolled["computed_from"]
    );
    assert!(raw["computed_from"]["roll_up_days"].is_null());
    for k in ["vehicles", "drivers", "totals"] {
        assert_eq!(raw[k], rolled[k], "{k}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    app.shutdown();
    app.wait().await;
}

/// A pipeline stage (validation and rules) for `vehicles` of cooperative `coop`.
fn stage_for(coop: &str, vehicles: &[&str]) -> Stage {
    let registry: Vec<Vehicle> = vehicles
        .iter()
        .map(|v| {
            serde_json::from_value(json!({"id": v, "cooperative": coop, "class": "bus"})).unwrap()
        })
        .collect();
    stage_of(registry)
}

/// A pipeline stage (validation and rules) over `registry`, no geography.
fn stage_of(registry: Vec<Vehicle>) -> Stage {
    Stage {
        validator: Validator::new(
            TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap(),
            Default::default(),
            &registry,
        ),
        engine: Engine::new(
            RulesConfig::default(),
            std::sync::Arc::new(GeoIndex::empty()),
            registry.clone(),
        ),
        checkpoint_every: Duration::from_secs(3600),
        rules: true,
        recompute: Default::default(),
    }
}

/// One fix of a drive: time, position, driver.
#[derive(Clone)]
struct DriveFix {
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
    driver: &'static str,
}

impl DriveFix {
    fn payload(&self, vehicle: &str) -> Vec<u8> {
        json!({
            "vehicle": vehicle, "ts": self.ts.to_rfc3339(), "lat": self.lat, "lon": self.lon,
            "speed_kmh": 50.0, "heading_deg": 45, "driver_id": self.driver, "ignition": true,
            "satellites": 9, "hdop": 0.9,
        })
        .to_string()
        .into_bytes()
    }
}

/// A drive at 50 km/h that never stops (so no trip ever closes), a fix every 10 s
/// from local 22:00:07 of day 0 to 01:59:57 of day 1, bending from north to east;
/// one driver until 00:30, another after.
fn endless_drive() -> Vec<DriveFix> {
    let (mut lat, mut lon) = (10.8, 106.6);
    let mut t = local(0, "22:00") + TimeDelta::seconds(7);
    let end = local(1, "02:00");
    let mut out = Vec::new();
    let mut k = 0.0f64;
    while t < end {
        let step_m = 50.0 / 3.6 * 10.0;
        let bearing = (k / 1440.0) * std::f64::consts::FRAC_PI_2;
        lat += step_m * bearing.cos() / fleetwatch::geo::M_PER_DEG;
        lon += step_m * bearing.sin() / (fleetwatch::geo::M_PER_DEG * lat.to_radians().cos());
        let driver = if t < local(1, "00:30") {
            "079000000051"
        } else {
            "079000000052"
        };
        // Sent as stored (1e-7 degree), so the expected distances are of the stored path.
        let on_grid = |d: f64| e7_to_deg(deg_to_e7(d));
        out.push(DriveFix {
            ts: t,
            lat: on_grid(lat),
            lon: on_grid(lon),
            driver,
        });
        t += TimeDelta::seconds(10);
        k += 1.0;
    }
    out
}

/// Expected distance (mm) of `path` by local day and by driver of the earlier fix,
/// as migration 9 defines it: segments rounded to mm, a segment crossing midnight
/// shared in proportion to time.
fn expected_mm(path: &[DriveFix]) -> (BTreeMap<NaiveDate, i64>, BTreeMap<&'static str, i64>) {
    let (mut days, mut drivers) = (BTreeMap::new(), BTreeMap::new());
    for w in path.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let len = (fleetwatch::geo::distance_m(a.lon, a.lat, b.lon, b.lat) * 1000.0).round() as i64;
        *drivers.entry(a.driver).or_default() += len;
        let (da, db) = (
            rollup::local_day(a.ts, OFFSET_S),
            rollup::local_day(b.ts, OFFSET_S),
        );
        if da == db {
            *days.entry(da).or_default() += len;
        } else {
            let mid = rollup::day_start(db, OFFSET_S);
            let first = (len as f64 * (mid - a.ts).num_milliseconds() as f64
                / (b.ts - a.ts).num_milliseconds() as f64)
                .round() as i64;
            *days.entry(da).or_default() += first;
            *days.entry(db).or_default() += len - first;
        }
    }
    (days, drivers)
}

/// Distance columns of the roll-ups: (vehicle, day, mm) and (vehicle, day, driver, mm).
async fn distance_rows(c: &tokio_postgres::Client) -> Vec<String> {
    let mut rows: Vec<String> = c
        .query(
            "SELECT (vehicle_id, day, distance_mm)::text FROM rollup_daily
             WHERE distance_mm <> 0 ORDER BY vehicle_id, day",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.extend(
        c.query(
            "SELECT (vehicle_id, day, driver_id, distance_mm)::text FROM rollup_daily_driver
             WHERE distance_mm <> 0 ORDER BY vehicle_id, day, driver_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0)),
    );
    rows
}

/// A fresh database with the roll-ups built and `vehicles` registered; its plan.
async fn rollup_db(coop: &str, vehicles: &[&str]) -> (tokio_postgres::Client, rollup::Plan) {
    let db = fresh_db().await;
    let mut c = fleetwatch::store::connect(&db).await.unwrap();
    for v in vehicles {
        c.execute(
            "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered)
             VALUES ($1, $2, $1, 'bus', true)",
            &[v, &coop],
        )
        .await
        .unwrap();
    }
    let offset = RulesConfig::default().utc_offset;
    rollup::ensure(&mut c, offset, fleetwatch::store::migrate::Layout::Plain)
        .await
        .unwrap();
    let plan = writer::prepare(&c)
        .await
        .unwrap()
        .expect("roll-ups planned");
    (c, plan)
}

/// Sends `msgs` (topic, payload, received at) through a fresh stage and the writer in
/// batches of the given sizes (cycled).
async fn write_all(
    c: &mut tokio_postgres::Client,
    plan: &rollup::Plan,
    stage: &mut Stage,
    msgs: &[(String, Vec<u8>, DateTime<Utc>)],
    sizes: &[usize],
) {
    let mut items: Vec<Item<()>> = Vec::new();
    let mut k = 0;
    for (topic, payload, at) in msgs {
        let (records, derived) = stage.message(topic, &Bytes::from(payload.clone()), *at);
        items.push(item(records, derived, *at));
        if items.len() >= sizes[k % sizes.len()] {
            writer::write_batch(c, Some(plan), &items).await.unwrap();
            items.clear();
            k += 1;
        }
    }
    if !items.is_empty() {
        writer::write_batch(c, Some(plan), &items).await.unwrap();
    }
}

fn vehicle_km(r: &reports::Report, id: &str) -> f64 {
    r.vehicles
        .iter()
        .find(|v| v.vehicle_id == id)
        .unwrap()
        .counts
        .distance_km
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distance_is_the_path_of_the_fixes_closed_trip_or_not_in_any_arrival_order() {
    let path = endless_drive();
    let (days, drivers) = expected_mm(&path);
    let (d0, d1) = (day0(), day0() + TimeDelta::days(1));
    assert!(days[&d0] > 10_000_000 && days[&d1] > 10_000_000, "{days:?}");
    let total_km = days.values().sum::<i64>() as f64 / 1e6;
    let coop = "HTX-D";
    let msgs_in_order: Vec<(String, Vec<u8>, DateTime<Utc>)> = path
        .iter()
        .map(|f| {
            (
                topic(coop, "D-1"),
                f.payload("D-1"),
                f.ts + TimeDelta::seconds(1),
            )
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(13);
    let mut shuffled = msgs_in_order.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.random_range(0..=i));
    }
    let mut reversed = msgs_in_order.clone();
    reversed.reverse();
    // The same fixes, and each of them again (duplicates count once).
    let mut twice = msgs_in_order.clone();
    twice.extend(shuffled.iter().take(200).cloned());
    let runs: [(&str, &[_], &[usize]); 4] = [
        ("in order", &msgs_in_order, &[50]),
        ("reversed", &reversed, &[1, 7, 120]),
        ("shuffled", &shuffled, &[3, 64, 500, 1]),
        ("with duplicates", &twice, &[50]),
    ];
    let mut first: Option<Vec<String>> = None;
    for (name, msgs, sizes) in runs {
        let (mut c, plan) = rollup_db(coop, &["D-1"]).await;
        let mut stage = stage_for(coop, &["D-1"]);
        write_all(&mut c, &plan, &mut stage, msgs, sizes).await;
        assert_eq!(
            count_rows(&c, "SELECT count(*) FROM trips").await,
            0,
            "{name}: the drive never stopped, no trip closed"
        );
        // The roll-ups per day and driver, against the definition.
        let kept = distance_rows(&c).await;
        let mm = |sql: &str| {
            let c = &c;
            let sql = sql.to_string();
            async move { c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        for (day, want) in &days {
            let got = mm(&format!(
                "SELECT distance_mm FROM rollup_daily WHERE vehicle_id = 'D-1' AND day = '{day}'"
            ))
            .await;
            // Floating point in PostgreSQL and Rust: a millimetre per thousand segments.
            assert!(
                (got - want).abs() <= 3,
                "{name}: {day}: {got} mm, want {want}"
            );
        }
        for (driver, want) in &drivers {
            let got = mm(&format!(
                "SELECT sum(distance_mm)::int8 FROM rollup_daily_driver WHERE driver_id = '{driver}'"
            ))
            .await;
            assert!(
                (got - want).abs() <= 3,
                "{name}: {driver}: {got} mm, want {want}"
            );
        }
        // Whatever the order: the very same rows, and what a rebuild gives.
        match &first {
            None => first = Some(kept.clone()),
            Some(f) => assert_eq!(&kept, f, "{name} vs in order"),
        }
        rollup::rebuild(&mut c, RulesConfig::default().utc_offset, true)
            .await
            .unwrap();
        assert_eq!(distance_rows(&c).await, kept, "{name}: rebuilt");

        // The report: the whole drive, each local day, and partial ranges, from the
        // roll-ups and from the raw fixes alike.
        let (start, mid, end) = (local(0, "00:00"), local(1, "00:00"), local(2, "00:00"));
        let whole = reports::build(&c, &params(None, start, end, Source::RollUp))
            .await
            .unwrap();
        assert!(
            (vehicle_km(&whole, "D-1") - total_km).abs() < 0.002,
            "{name}: {} km, want {total_km}",
            vehicle_km(&whole, "D-1")
        );
        let day_km = |d: &NaiveDate| days[d] as f64 / 1e6;
        for (from, to, want) in [(start, mid, day_km(&d0)), (mid, end, day_km(&d1))] {
            let r = reports::build(&c, &params(None, from, to, Source::RollUp))
                .await
                .unwrap();
            assert!(r.computed_from.raw.is_empty());
            assert!(
                (vehicle_km(&r, "D-1") - want).abs() < 0.002,
                "{name}: {from}..{to}: {} km, want {want}",
                vehicle_km(&r, "D-1")
            );
        }
        let d = |id: &str| {
            whole
                .drivers
                .iter()
                .find(|d| d.driver_id == id)
                .unwrap()
                .distance_km
        };
        assert!((d("079000000051") - drivers["079000000051"] as f64 / 1e6).abs() < 0.002);
        assert!((d("079000000052") - drivers["079000000052"] as f64 / 1e6).abs() < 0.002);
        for (from, to) in [
            (start, end),
            (local(0, "23:17"), local(1, "01:03")),
            (local(0, "12:00"), local(1, "00:00") + TimeDelta::seconds(3)),
            (local(1, "00:00") - TimeDelta::seconds(2), local(1, "12:00")),
        ] {
            let a = reports::build(&c, &params(None, from, to, Source::RollUp))
                .await
                .unwrap();
            let b = reports::build(&c, &params(None, from, to, Source::Raw))
                .await
                .unwrap();
            assert_eq!(figures(&a), figures(&b), "{name}: {from} .. {to}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distance_leaves_jumps_out() {
    let coop = "HTX-D";
    let path = endless_drive();
    let (days, _) = expected_mm(&path);
    let want_km = days.values().sum::<i64>() as f64 / 1e6;
    // One position 1 degree (111 km) off in the middle: flagged a jump by validation.
    let mut msgs: Vec<(String, Vec<u8>, DateTime<Utc>)> = path
        .iter()
        .map(|f| {
            (
                topic(coop, "D-2"),
                f.payload("D-2"),
                f.ts + TimeDelta::seconds(1),
            )
        })
        .collect();
    let mut spike = path[700].clone();
    spike.ts += TimeDelta::seconds(5);
    spike.lat += 1.0;
    msgs.insert(701, (topic(coop, "D-2"), spike.payload("D-2"), spike.ts));
    let (mut c, plan) = rollup_db(coop, &["D-2"]).await;
    let mut stage = stage_for(coop, &["D-2"]);
    write_all(&mut c, &plan, &mut stage, &msgs, &[50]).await;
    assert_eq!(
        count_rows(&c, "SELECT count(*) FROM fixes WHERE flags & 1 <> 0").await,
        1,
        "the spike is stored, flagged as a jump"
    );
    let (start, end) = (local(0, "00:00"), local(2, "00:00"));
    for source in [Source::RollUp, Source::Raw] {
        let r = reports::build(&c, &params(None, start, end, source))
            .await
            .unwrap();
        assert!(
            (vehicle_km(&r, "D-2") - want_km).abs() < 0.002,
            "{source:?}: {} km, want {want_km} (the jump adds 222 km)",
            vehicle_km(&r, "D-2")
        );
    }
}

async fn count_rows(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_count_late_fixes_and_how_late_from_roll_ups_and_raw_alike() {
    let coop = "HTX-L";
    // Day 0: an hour at 10 s from 08:00 local, the fixes of 08:20..08:30 uploaded at
    // 09:05 (after the live ones); day 1: the same with 08:10..08:40 uploaded at 15:00.
    // L-2 is always on time.
    let mut msgs: Vec<(String, Vec<u8>, DateTime<Utc>)> = Vec::new();
    let mut lateness_s: Vec<f64> = Vec::new();
    for (day, hole, upload) in [
        (0, ("08:20", "08:30"), "09:05"),
        (1, ("08:10", "08:40"), "15:00"),
    ] {
        let (h0, h1, up) = (local(day, hole.0), local(day, hole.1), local(day, upload));
        let mut backlog = Vec::new();
        let mut t = local(day, "08:00");
        let mut lat = 10.8;
        while t < local(day, "09:00") {
            lat += 0.001;
            for v in ["L-1", "L-2"] {
                let f = DriveFix {
                    ts: t,
                    lat,
                    lon: 106.6,
                    driver: "079000000061",
                };
                let m = (topic(coop, v), f.payload(v), t + TimeDelta::seconds(1));
                if v == "L-1" && h0 <= t && t < h1 {
                    lateness_s.push((up - t).num_seconds() as f64);
                    backlog.push((m.0, m.1, up));
                } else {
                    msgs.push(m);
                }
            }
            t += TimeDelta::seconds(10);
        }
        msgs.extend(backlog);
    }
    let (mut c, plan) = rollup_db(coop, &["L-1", "L-2"]).await;
    let mut stage = stage_for(coop, &["L-1", "L-2"]);
    write_all(&mut c, &plan, &mut stage, &msgs, &[20]).await;
    let late = lateness_s.len() as i64;
    assert_eq!(late, 60 + 180);
    assert_eq!(
        count_rows(&c, "SELECT count(*) FROM fixes WHERE flags & 16 <> 0").await,
        late,
        "every backlog fix is flagged late, no other"
    );
    lateness_s.sort_by(f64::total_cmp);
    let rank = |p: usize| lateness_s[(lateness_s.len() * p).div_ceil(100) - 1];
    let (start, end) = (local(0, "00:00"), local(2, "00:00"));
    let mut seen = Vec::new();
    for source in [Source::RollUp, Source::Raw] {
        let r = reports::build(&c, &params(None, start, end, source))
            .await
            .unwrap();
        let j = serde_json::to_value(&r).unwrap();
        let l1 = &j["vehicles"][0];
        assert_eq!(l1["vehicle_id"], "L-1");
        assert_eq!(l1["late_fixes"], late, "{source:?}: {l1}");
        // The stated precision: the upper edge of a bucket 2^(1/8) wide.
        for (key, want) in [("late_p50_s", rank(50)), ("late_p99_s", rank(99))] {
            let got = l1[key].as_f64().unwrap_or_else(|| panic!("{key}: {l1}"));
            assert!(
                want <= got + 1e-3 && got <= want * 2f64.powf(1.0 / 8.0) + 1e-3,
                "{source:?} {key}: {got}, the value is {want}"
            );
        }
        let l2 = &j["vehicles"][1];
        assert_eq!(l2["late_fixes"], 0);
        assert_eq!(l2["late_p50_s"], Value::Null);
        assert_eq!(j["totals"]["counts"]["late_p99_s"], l1["late_p99_s"]);
        // Day 1 alone: only its backlog (30 min, uploaded 6 h 20 min to 6 h 50 min late).
        let d1 = reports::build(&c, &params(None, local(1, "00:00"), end, source))
            .await
            .unwrap();
        let d1 = serde_json::to_value(&d1).unwrap();
        assert_eq!(d1["vehicles"][0]["late_fixes"], 180);
        let p50 = d1["vehicles"][0]["late_p50_s"].as_f64().unwrap();
        assert!((6.0 * 3600.0..7.5 * 3600.0).contains(&p50), "{p50}");
        let csv = r.csv();
        assert!(
            csv.lines()
                .next()
                .unwrap()
                .ends_with(",late_fixes,late_p50_s,late_p99_s"),
            "{csv}"
        );
        let row = csv.lines().nth(1).unwrap();
        assert!(
            row.ends_with(&format!(
                ",{late},{:.3},{:.3}",
                l1["late_p50_s"].as_f64().unwrap(),
                l1["late_p99_s"].as_f64().unwrap()
            )),
            "{row}"
        );
        seen.push(figures(&r));
    }
    assert_eq!(seen[0], seen[1], "roll-ups and raw tables");
    // A partial range: the raw edge and the roll-up days together.
    let (from, to) = (local(0, "08:25"), local(2, "00:00"));
    let a = reports::build(&c, &params(None, from, to, Source::RollUp))
        .await
        .unwrap();
    let b = reports::build(&c, &params(None, from, to, Source::Raw))
        .await
        .unwrap();
    assert_eq!(a.computed_from.raw.len(), 1);
    assert_eq!(figures(&a), figures(&b));
    assert_eq!(
        serde_json::to_value(&a).unwrap()["vehicles"][0]["late_fixes"],
        30 + 180
    );
}
