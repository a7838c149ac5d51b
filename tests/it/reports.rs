//! Daily roll-ups and reports against a real PostgreSQL: the roll-ups the writer keeps
//! give the same report as the raw tables over random ranges, also after redelivery
//! and alert updates; `fleetwatch report` prints what the API returns.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::api::reports::{self, ReportParams, ReportQuery, Source};
use fleetwatch::domain::Vehicle;
use fleetwatch::geo::GeoIndex;
use fleetwatch::infra::broker::EmbeddedBroker;
use fleetwatch::ingest::topic::TopicPattern;
use fleetwatch::ingest::validate::Validator;
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
    let mut stage = Stage {
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
    };
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
    records: Vec<fleetwatch::ingest::validate::Record>,
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
    // The app's writer kept the roll-up of what came through MQTT.
    assert_eq!(
        count(
            &db,
            "SELECT sum(fixes)::int8 FROM rollup_daily WHERE vehicle_id = 'R-1'"
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
