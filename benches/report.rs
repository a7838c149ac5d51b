//! Compliance report of a month (not criterion: a seeded database, then timed runs).
//!
//! `cargo bench --bench report -- [--vehicles 500] [--days 31] [--reps 7]
//!  [--data-dir DIR] [--compress]`
//!
//! Seeds a private PostgreSQL with a month of one cooperative through the real path
//! (canonical JSON messages → validation → rules → `write_batch`, so trips, alerts,
//! data gaps and the daily roll-ups are what production would have): each vehicle
//! parks overnight (a fix every 10 min), drives about 10 h a day in stretches of
//! 2–4.5 h (a fix every 30 s) with breaks of 20–60 min (a fix every 2 min), with
//! occasional overspeed episodes and signal losses. Then times the month's report from
//! the roll-ups (JSON and CSV) and from the raw tables.
//!
//! With `--data-dir`, the database is kept there and reused by later runs (seeded once).
//! With `--compress` (TimescaleDB layout), every chunk of `fixes` is then compressed and
//! both reports are checked equal and timed again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use fleetwatch::api::reports::{self, ReportParams, ReportQuery, Source};
use fleetwatch::domain::Vehicle;
use fleetwatch::geo::GeoIndex;

use fleetwatch::pipeline::topic::TopicPattern;
use fleetwatch::pipeline::validate::Validator;
use fleetwatch::pipeline::Stage;
use fleetwatch::rules::{Engine, RulesConfig};
use fleetwatch::store::migrate::Layout;
use fleetwatch::store::rollup;
use fleetwatch::store::writer::{self, Item};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod support;

const COOP: &str = "HTX-BENCH";
const MONTH: &str = "2026-10";
/// Local time: Asia/Ho_Chi_Minh.
const OFFSET_S: i32 = 7 * 3600;
/// Items (one fix each, or a rules tick) per committed batch.
const BATCH: usize = 2000;

struct Args {
    vehicles: usize,
    days: u32,
    reps: usize,
    data_dir: Option<std::path::PathBuf>,
    writer_batches: usize,
    compress: bool,
}

fn args() -> Args {
    let mut a = Args {
        vehicles: 500,
        days: 31,
        reps: 7,
        data_dir: None,
        writer_batches: 100,
        compress: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let next = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--vehicles" => a.vehicles = next().parse().expect("--vehicles N"),
            "--days" => a.days = next().parse().expect("--days N"),
            "--reps" => a.reps = next().parse().expect("--reps N"),
            "--data-dir" => a.data_dir = Some(next().into()),
            "--writer-batches" => a.writer_batches = next().parse().expect("--writer-batches N"),
            "--compress" => {
                a.compress = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1; // `--bench` and other harness flags
                continue;
            }
        }
        i += 2;
    }
    a
}

fn vehicle_id(k: usize) -> String {
    format!("B-{k:04}")
}

fn registry(n: usize) -> Vec<Vehicle> {
    (0..n)
        .map(|k| {
            // Buses (limit 70) and container trucks (limit 80) in turn.
            let class = if k.is_multiple_of(2) {
                "bus"
            } else {
                "container"
            };
            serde_json::from_value(serde_json::json!({
                "id": vehicle_id(k), "plate": vehicle_id(k), "cooperative": COOP, "class": class,
            }))
            .unwrap()
        })
        .collect()
}

fn day_start(day: u32) -> DateTime<Utc> {
    let first = NaiveDate::parse_from_str(&format!("{MONTH}-01"), "%Y-%m-%d").unwrap();
    rollup::day_start(first + TimeDelta::days(i64::from(day)), OFFSET_S)
}

/// Where a simulated vehicle is between days.
#[derive(Clone, Copy)]
struct Pos {
    lat: f64,
    north: bool,
}

/// Builds one vehicle's fixes of one day: (ts, payload).
struct Track<'a> {
    k: usize,
    driver: String,
    pos: &'a mut Pos,
    out: Vec<(DateTime<Utc>, Vec<u8>)>,
}

impl Track<'_> {
    /// Moves `dt_s` seconds at `speed` km/h along the current direction.
    fn advance(&mut self, speed: f64, dt_s: f64) {
        let step = speed / 3.6 * dt_s / 111_000.0;
        self.pos.lat += if self.pos.north { step } else { -step };
    }

    /// A fix at `t` after `dt_s` seconds at `speed`.
    fn fix(&mut self, t: DateTime<Utc>, speed: f64, ignition: bool, dt_s: f64) {
        self.advance(speed, dt_s);
        let payload = serde_json::json!({
            "vehicle": vehicle_id(self.k), "ts": t.to_rfc3339(), "lat": self.pos.lat,
            "lon": 106.7 + self.k as f64 * 1e-3, "speed_kmh": (speed * 10.0).round() / 10.0,
            "heading_deg": if self.pos.north { 0 } else { 180 }, "driver_id": &self.driver,
            "ignition": ignition, "satellites": 9, "hdop": 0.9,
        });
        self.out.push((t, payload.to_string().into_bytes()));
    }

    /// Parked (ignition off) from `t` until `until`, a fix every 10 min.
    fn park(&mut self, t: &mut DateTime<Utc>, until: DateTime<Utc>) {
        while *t < until {
            self.fix(*t, 0.0, false, 600.0);
            *t += TimeDelta::minutes(10);
        }
    }
}

/// One vehicle's fixes of one local day: (ts, payload).
fn vehicle_day(k: usize, day: u32, pos: &mut Pos) -> Vec<(DateTime<Utc>, Vec<u8>)> {
    let mut rng = SmallRng::seed_from_u64(((k as u64) << 16) | u64::from(day));
    let limit = if k.is_multiple_of(2) { 70.0 } else { 80.0 };
    let (start, end) = (day_start(day), day_start(day + 1));
    let mut tr = Track {
        k,
        // Two drivers take turns by day.
        driver: format!("0790{:04}{:04}", k, day % 2),
        pos,
        out: Vec::with_capacity(1400),
    };
    let mut t = start;
    // Parked until 05:30-07:00, then about 10 h of driving (9 h to 11 h 30).
    tr.park(
        &mut t,
        start + TimeDelta::minutes(330 + rng.random_range(0..90)),
    );
    let mut to_drive_s = 9 * 3600 + rng.random_range(0..9000);
    while to_drive_s > 0 && t < end - TimeDelta::hours(1) {
        let stretch_s = rng.random_range(7200..16200).min(to_drive_s);
        to_drive_s -= stretch_s;
        tr.pos.north = !tr.pos.north;
        let cruise = rng.random_range(40.0..62.0);
        let stretch_end = t + TimeDelta::seconds(stretch_s);
        let mut over: Option<(DateTime<Utc>, f64)> = None;
        while t < stretch_end {
            // Signal lost for 1-40 min now and then (a data gap; over 15 min, no signal).
            if rng.random_range(0..4000) == 0 {
                let resume = t + TimeDelta::minutes(rng.random_range(1..40));
                while t < resume && t < stretch_end {
                    tr.advance(cruise, 30.0);
                    t += TimeDelta::seconds(30);
                }
                continue;
            }
            if over.is_none() && rng.random_range(0..600) == 0 {
                let len = TimeDelta::seconds(rng.random_range(30..180));
                over = Some((t + len, limit + rng.random_range(3.0..40.0)));
            }
            let speed = match over {
                Some((until, v)) if t < until => v,
                _ => {
                    over = None;
                    cruise + rng.random_range(-3.0..3.0)
                }
            };
            tr.fix(t, speed, true, 30.0);
            t += TimeDelta::seconds(30);
        }
        // A break of 20-60 min, engine on.
        let resume = t + TimeDelta::minutes(rng.random_range(20..60));
        while t < resume {
            tr.fix(t, 0.0, true, 120.0);
            t += TimeDelta::minutes(2);
        }
    }
    tr.park(&mut t, end);
    tr.out
}

/// Seeds the month through validation, the rules and the writer; returns fixes stored.
async fn seed(db: &str, a: &Args) -> u64 {
    let mut c = fleetwatch::store::connect(db).await.unwrap();
    let reg = registry(a.vehicles);
    for v in &reg {
        c.execute(
            "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered)
             VALUES ($1, $2, $3, $4, true) ON CONFLICT DO NOTHING",
            &[
                &v.id.as_str(),
                &v.cooperative.as_str(),
                &v.plate,
                &v.class.as_str(),
            ],
        )
        .await
        .unwrap();
    }
    let plan = writer::prepare(&c).await.unwrap();
    assert!(plan.is_some(), "roll-ups planned");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Item<()>>>(4);
    let (n_vehicles, days) = (a.vehicles, a.days);
    // Generation, validation and rules on their own thread, overlapping the writes.
    let producer = std::thread::spawn(move || {
        let mut stage = Stage {
            validator: Validator::new(
                TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap(),
                Default::default(),
                &reg,
            ),
            engine: Engine::new(
                RulesConfig::default(),
                Arc::new(GeoIndex::empty()),
                reg.clone(),
            ),
            checkpoint_every: Duration::from_secs(3600),
            rules: true,
            recompute: Default::default(),
        };
        let topics: Vec<String> = (0..n_vehicles)
            .map(|k| format!("fleet/{COOP}/{}/fix", vehicle_id(k)))
            .collect();
        let mut pos = vec![
            Pos {
                lat: 10.9,
                north: true
            };
            n_vehicles
        ];
        let mut batch = Vec::with_capacity(BATCH);
        for day in 0..days {
            let mut all: Vec<(DateTime<Utc>, usize, Vec<u8>)> = Vec::new();
            for (k, p) in pos.iter_mut().enumerate() {
                all.extend(vehicle_day(k, day, p).into_iter().map(|(t, b)| (t, k, b)));
            }
            all.sort_unstable_by_key(|(t, k, _)| (*t, *k));
            let mut next_tick = day_start(day) + TimeDelta::minutes(5);
            for (t, k, payload) in all {
                // The processing-time rules (no signal) on simulated time.
                while next_tick <= t {
                    let derived = stage.tick(next_tick);
                    if !derived.is_empty() {
                        batch.push(Item {
                            records: Vec::new(),
                            derived,
                            ack: None,
                            received_at: next_tick,
                        });
                    }
                    next_tick += TimeDelta::minutes(5);
                }
                let received = t + TimeDelta::seconds(1);
                let (records, derived) = stage.message(&topics[k], &Bytes::from(payload), received);
                batch.push(Item {
                    records,
                    derived,
                    ack: None,
                    received_at: received,
                });
                if batch.len() >= BATCH {
                    tx.blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .unwrap();
                }
            }
        }
        tx.blocking_send(batch).unwrap();
    });
    let started = Instant::now();
    let (mut stored, mut batches) = (0u64, 0u64);
    while let Some(b) = rx.recv().await {
        stored += writer::write_batch(&mut c, plan.as_ref(), &b)
            .await
            .unwrap()
            .stored;
        batches += 1;
        if batches % 500 == 0 {
            let s = started.elapsed().as_secs_f64();
            eprintln!(
                "  seeding: {stored} fixes in {s:.0} s ({:.0}/s)",
                stored as f64 / s
            );
        }
    }
    producer.join().unwrap();
    let s = started.elapsed().as_secs_f64();
    println!(
        "seeded {stored} fixes in {batches} batches in {s:.0} s ({:.0} fixes/s through validation, rules and write_batch with roll-ups)",
        stored as f64 / s
    );
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    stored
}

/// The writer's cost of the roll-ups: batches of 2,000 fixes of 2,000 vehicles (one
/// fix each, the worst case: one roll-up row per fix), written alternately with and
/// without the roll-ups so that other load on the machine hits both alike.
async fn writer_cost(db: &str, batches: usize) {
    let mut c = fleetwatch::store::connect(db).await.unwrap();
    let plan = writer::prepare(&c).await.unwrap();
    assert!(plan.is_some());
    let n_vehicles = 10_000;
    let reg: Vec<Vehicle> = (0..n_vehicles)
        .map(|k| {
            serde_json::from_value(serde_json::json!({
                "id": format!("W-{k:05}"), "cooperative": "HTX-W", "class": "bus",
            }))
            .unwrap()
        })
        .collect();
    let mut v = Validator::new(
        TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap(),
        Default::default(),
        &reg,
    );
    let t0 = day_start(0);
    let mut with = Duration::ZERO;
    let mut without = Duration::ZERO;
    for b in 0..batches * 2 {
        let items: Vec<Item<()>> = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                let (k, s) = (n % n_vehicles, (n / n_vehicles) as i64);
                let t = t0 + TimeDelta::seconds(s);
                let payload = format!(
                    r#"{{"vehicle":"W-{k:05}","ts":"{}","lat":10.9,"lon":106.7,"speed_kmh":40,"satellites":9,"hdop":0.9}}"#,
                    t.to_rfc3339()
                );
                let topic = format!("fleet/HTX-W/W-{k:05}/fix");
                let records = v.process(&topic, &Bytes::from(payload), t);
                Item { records, derived: Default::default(), ack: None, received_at: t }
            })
            .collect();
        let rolled = b % 2 == 0;
        let started = Instant::now();
        let o = writer::write_batch(&mut c, if rolled { plan.as_ref() } else { None }, &items)
            .await
            .unwrap();
        *(if rolled { &mut with } else { &mut without }) += started.elapsed();
        assert_eq!(o.stored, BATCH as u64);
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / batches as f64;
    let rate = |d: Duration| (batches * BATCH) as f64 / d.as_secs_f64();
    println!(
        "write_batch, {BATCH} fixes of {BATCH} vehicles: {:.1} ms ({:.0} fixes/s) without roll-ups, {:.1} ms ({:.0} fixes/s) with: +{:.0} %",
        per(without), rate(without), per(with), rate(with),
        (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0
    );
}

/// Figures that differ between two reports (at most 20).
fn differences(a: &reports::Report, b: &reports::Report) -> Vec<String> {
    let flat = |r: &reports::Report| {
        let mut m = std::collections::BTreeMap::new();
        for v in &r.vehicles {
            if let serde_json::Value::Object(o) = serde_json::to_value(v).unwrap() {
                for (k, x) in o {
                    m.insert(format!("{} {k}", v.vehicle_id), x);
                }
            }
        }
        for d in &r.drivers {
            m.insert(
                format!("driver {}", d.driver_id),
                serde_json::to_value(d).unwrap(),
            );
        }
        m.insert("totals".into(), serde_json::to_value(&r.totals).unwrap());
        m
    };
    let (fa, fb) = (flat(a), flat(b));
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    keys.into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .take(20)
        .map(|k| format!("{k}: {:?} vs {:?}", fa.get(k), fb.get(k)))
        .collect()
}

/// min / median / max of `reps` runs of `f`, ms.
async fn time<F, Fut>(reps: usize, mut f: F) -> (f64, f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f().await);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms[0], ms[ms.len() / 2], ms[ms.len() - 1])
}

#[tokio::main]
async fn main() {
    let a = args();
    let (dir, keep) = match &a.data_dir {
        Some(d) => (d.clone(), true),
        None => (
            std::env::temp_dir().join(format!("fw-bench-report-{}", std::process::id())),
            false,
        ),
    };
    // Durability off: seeding speed only; the timed reports only read.
    let (mut pg, db, mut c, layout) = support::private_db(&dir, true, "bench_report").await;
    rollup::ensure(&mut c, RulesConfig::default().utc_offset, layout)
        .await
        .unwrap();
    println!(
        "machine: {} cores; PostgreSQL {}; {} vehicles of one cooperative, {} days of {MONTH}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        c.query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        a.vehicles,
        a.days,
    );
    if a.writer_batches > 0 {
        pg.ensure_database("bench_writer").await.unwrap();
        let w = pg.url("bench_writer");
        let mut wc = fleetwatch::store::connect(&w).await.unwrap();
        let layout = fleetwatch::store::migrate::migrate(&mut wc, &Default::default())
            .await
            .unwrap();
        rollup::ensure(&mut wc, RulesConfig::default().utc_offset, layout)
            .await
            .unwrap();
        writer_cost(&w, a.writer_batches).await;
        wc.batch_execute("TRUNCATE fixes, rollup_daily")
            .await
            .unwrap();
    }
    let have: i64 = c
        .query_one("SELECT count(*) FROM vehicles", &[])
        .await
        .unwrap()
        .get(0);
    if have == 0 {
        seed(&db, &a).await;
    } else {
        println!("reusing the seeded database in {}", dir.display());
    }
    for (what, sql) in [
        ("fixes", "SELECT count(*) FROM fixes"),
        ("trips", "SELECT count(*) FROM trips"),
        ("alerts", "SELECT count(*) FROM alerts"),
        (
            "overspeed alerts",
            "SELECT count(*) FROM alerts WHERE kind = 'overspeed'",
        ),
        (
            "driving-time violations",
            "SELECT count(*) FROM alerts WHERE kind LIKE '%driving' AND level = 'violation'",
        ),
        (
            "no-signal alerts",
            "SELECT count(*) FROM alerts WHERE kind = 'no_signal'",
        ),
        ("data gaps", "SELECT count(*) FROM data_gaps"),
        ("roll-up rows", "SELECT count(*) FROM rollup_daily"),
        (
            "driver roll-up rows",
            "SELECT count(*) FROM rollup_daily_driver",
        ),
    ] {
        let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
        println!("  {what:<24} {n:>12}");
    }
    let size: String = c
        .query_one(
            "SELECT pg_size_pretty(pg_database_size(current_database()))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("  database size            {size:>12}");

    let q = ReportQuery {
        month: Some(MONTH.into()),
        ..ReportQuery::default()
    };
    let p =
        ReportParams::from_query(&q, Some(COOP.into()), RulesConfig::default().utc_offset).unwrap();
    let mut raw_p = p.clone();
    raw_p.source = Source::Raw;
    let c = &c;
    let json = |p: ReportParams| async move {
        serde_json::to_vec(&reports::build(c, &p).await.unwrap())
            .unwrap()
            .len()
    };
    let csv = |p: ReportParams| async move { reports::build(c, &p).await.unwrap().csv().len() };
    // Same figures both ways, or the comparison means nothing.
    let (r1, r2) = (
        reports::build(c, &p).await.unwrap(),
        reports::build(c, &raw_p).await.unwrap(),
    );
    let diffs = differences(&r1, &r2);
    assert!(
        diffs.is_empty(),
        "roll-up and raw reports differ:\n{}",
        diffs.join("\n")
    );
    let t = &r1.totals;
    println!(
        "report: {} vehicles, {:.0} km, {} counted overspeed ({} at or over 5/1,000 km, {} near), completeness {:?}",
        t.vehicles, t.counts.distance_km, t.counts.overspeed_counted,
        t.vehicles_at_or_over_threshold, t.vehicles_near_threshold, t.counts.data_completeness
    );
    let reps = a.reps;
    let row = |what: &str, (min, med, max): (f64, f64, f64)| {
        println!("{what:<44} min {min:>9.1} ms  median {med:>9.1} ms  max {max:>9.1} ms");
    };
    row(
        "month report from roll-ups, JSON",
        time(reps, || json(p.clone())).await,
    );
    row(
        "month report from roll-ups, CSV",
        time(reps, || csv(p.clone())).await,
    );
    row(
        "month report from raw tables, JSON",
        time(reps.div_ceil(2), || json(raw_p.clone())).await,
    );
    // TimescaleDB: the same reports once every chunk of the month is compressed, as
    // they are a week after the fact (`fixes` policy).
    if a.compress && layout == Layout::Timescale {
        let before: i64 = c
            .query_one(
                "SELECT count(*) FROM timescaledb_information.chunks
                 WHERE hypertable_name = 'fixes' AND is_compressed",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        println!("chunks of fixes compressed by the policy before the timings above: {before}");
        let started = Instant::now();
        let n: i64 = c
            .query_one(
                "SELECT count(compress_chunk(ch, if_not_compressed => true)) FROM show_chunks('fixes') ch",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let size: String = c
            .query_one("SELECT pg_size_pretty(hypertable_size('fixes'))", &[])
            .await
            .unwrap()
            .get(0);
        println!(
            "compressed {n} chunks of fixes in {:.1} s; fixes now {size}",
            started.elapsed().as_secs_f64()
        );
        let r3 = reports::build(c, &raw_p).await.unwrap();
        let diffs = differences(&r1, &r3);
        assert!(
            diffs.is_empty(),
            "the raw report on compressed chunks differs:\n{}",
            diffs.join("\n")
        );
        row(
            "compressed: month report from roll-ups, JSON",
            time(reps, || json(p.clone())).await,
        );
        row(
            "compressed: month report from raw tables, JSON",
            time(reps.div_ceil(2), || json(raw_p.clone())).await,
        );
    } else if a.compress {
        println!(
            "--compress: the plain layout has no chunks to compress (TimescaleDB not installed)"
        );
    }
    if !keep {
        pg.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
