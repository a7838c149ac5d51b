//! Per-fix cost of geo lookups and all compliance rules, on synthetic geometry in the
//! Thu Dau Mot / Di An area: 1,000 zones (one a 2,000-vertex inner city) and 200 routes
//! of 2,000 vertices each, 1,000 vehicles (600 buses on those routes, 400 trucks).
//!
//! The `*_5_shapes` runs use the same routes as transit feeds have them: each line,
//! its return 150 m away (one-way pairs) and three overlapping variants.
//!
//! `*_transit`: those routes with a city-sized GTFS schedule (1,000 shapes, 50,000
//! trips, 20 stops each): trip assignment, stop events and schedule deviation on top.
//! Its build time and size are printed (target: per fix under 2 µs).
//!
//! Run: `cargo bench --bench rules`. Target: at most 2 µs per fix for geo + rules.
//! `late_fix_*`: the rules' work for one fix arriving 1 h, 6 h or 24 h late for a bus
//! at 1 Hz (snapshot, replay of the fixes after it, in memory; target under 5 ms at
//! 1 h). The store's read of those fixes is measured end to end, not here.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::geo::{Coord, LineString, MultiPolygon, Polygon};
use chrono::{DateTime, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use fleetwatch::domain::{
    CooperativeId, Fix, FixCandidate, FixLimits, Vehicle, VehicleClass, VehicleId,
};
use fleetwatch::geo::{
    distance_m, GeoIndex, Route, Schedule, ScheduledTrip, Service, StopPoint, StopTime, TimeRange,
    Zone, ZoneKind, M_PER_DEG,
};
use fleetwatch::rules::{Engine, RulesConfig};

const ROUTES: usize = 200;
const ROUTE_VERTICES: usize = 2_000;
const ZONES: usize = 1_000;
const BUSES: usize = 600;
const TRUCKS: usize = 400;
const ROUNDS: usize = 300;

/// Area of the synthetic geometry: lon 106.60..106.80, lat 10.85..11.05.
const LON: (f64, f64) = (106.60, 106.80);
const LAT: (f64, f64) = (10.85, 11.05);

/// A small deterministic generator (PCG-like LCG): same geometry on every run.
struct Rng(u64);

impl Rng {
    fn f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
}

fn metres_to_deg(lat: f64, dx_m: f64, dy_m: f64) -> (f64, f64) {
    (
        dx_m / (M_PER_DEG * lat.to_radians().cos()),
        dy_m / M_PER_DEG,
    )
}

/// A wandering street of `n` vertices 25 m apart, kept inside the area.
fn route_line(rng: &mut Rng, n: usize) -> Vec<Coord<f64>> {
    let (mut x, mut y) = (rng.range(LON.0, LON.1), rng.range(LAT.0, LAT.1));
    let mut heading = rng.range(0.0, std::f64::consts::TAU);
    let mut pts = Vec::with_capacity(n);
    for _ in 0..n {
        pts.push(Coord { x, y });
        heading += rng.range(-0.25, 0.25);
        let (dx, dy) = metres_to_deg(y, 25.0 * heading.cos(), 25.0 * heading.sin());
        if !(LON.0..LON.1).contains(&(x + dx)) || !(LAT.0..LAT.1).contains(&(y + dy)) {
            heading += std::f64::consts::PI;
            continue;
        }
        x += dx;
        y += dy;
    }
    pts
}

fn blob(rng: &mut Rng, lon: f64, lat: f64, radius_m: f64, n: usize) -> MultiPolygon<f64> {
    let mut ring: Vec<Coord<f64>> = (0..n)
        .map(|i| {
            let a = i as f64 / n as f64 * std::f64::consts::TAU;
            let r = radius_m * rng.range(0.8, 1.2);
            let (dx, dy) = metres_to_deg(lat, r * a.cos(), r * a.sin());
            Coord {
                x: lon + dx,
                y: lat + dy,
            }
        })
        .collect();
    ring.push(ring[0]);
    MultiPolygon(vec![Polygon::new(LineString(ring), vec![])])
}

fn zones(rng: &mut Rng) -> Vec<Zone> {
    let day = TimeRange::parse("06:00", "22:00").expect("valid range");
    (0..ZONES)
        .map(|i| {
            let (lon, lat) = (rng.range(LON.0, LON.1), rng.range(LAT.0, LAT.1));
            let (kind, radius_m, vertices) = match i % 10 {
                0 if i == 0 => (ZoneKind::Restricted, 5_000.0, 2_000),
                0 => (ZoneKind::Restricted, rng.range(500.0, 3_000.0), 64),
                1..=3 => (ZoneKind::SpeedZone, rng.range(300.0, 1_500.0), 24),
                4..=5 => (ZoneKind::Depot, rng.range(100.0, 400.0), 12),
                6..=7 => (ZoneKind::Terminal, rng.range(100.0, 400.0), 12),
                _ => (ZoneKind::Port, rng.range(200.0, 800.0), 16),
            };
            let (lon, lat) = if i == 0 { (106.70, 10.95) } else { (lon, lat) };
            Zone {
                id: format!("Z{i:04}"),
                name: None,
                kind,
                classes: if kind == ZoneKind::Restricted {
                    vec![VehicleClass::Container, VehicleClass::Tractor]
                } else {
                    vec![]
                },
                banned_hours: if kind == ZoneKind::Restricted {
                    vec![day]
                } else {
                    vec![]
                },
                speed_limit_kmh: (kind == ZoneKind::SpeedZone)
                    .then(|| rng.range(40.0, 60.0).round()),
                area: blob(rng, lon, lat, radius_m, vertices),
            }
        })
        .collect()
}

struct World {
    geo: Arc<GeoIndex>,
    /// The same routes with 5 shapes each.
    geo5: Arc<GeoIndex>,
    /// Those routes with a city-sized schedule: 1,000 shapes, 50,000 trips.
    geo_transit: Arc<GeoIndex>,
    lines: Vec<Vec<Coord<f64>>>,
    registry: Vec<Vehicle>,
    fixes: Vec<Fix>,
}

fn world() -> World {
    let mut rng = Rng(0x5eed_f1ee_7a7c);
    let lines: Vec<Vec<Coord<f64>>> = (0..ROUTES)
        .map(|_| route_line(&mut rng, ROUTE_VERTICES))
        .collect();
    let routes = lines
        .iter()
        .enumerate()
        .map(|(i, l)| Route {
            id: format!("R{i:03}"),
            name: None,
            corridor_m: None,
            parts: vec![LineString(l.clone())],
            ..Default::default()
        })
        .collect();
    let zs = zones(&mut rng);
    let routes5: Vec<Route> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let n = l.len();
            let back: Vec<Coord<f64>> = l
                .iter()
                .rev()
                .map(|c| {
                    let (_, dy) = metres_to_deg(c.y, 0.0, 150.0);
                    Coord {
                        x: c.x,
                        y: c.y + dy,
                    }
                })
                .collect();
            Route {
                id: format!("R{i:03}"),
                parts: vec![
                    LineString(l.clone()),
                    LineString(back),
                    LineString(l[..n * 3 / 4].to_vec()),
                    LineString(l[n / 4..].to_vec()),
                    LineString(l[n / 10..n * 9 / 10].to_vec()),
                ],
                ..Default::default()
            }
        })
        .collect();
    let t = Instant::now();
    let sched = city_schedule(&routes5);
    let built = t.elapsed();
    let stop_times: usize = sched.trips.iter().map(|t| t.stop_times.len()).sum();
    // Heap of the schedule proper (the shapes' indexes come on top, like routes').
    let bytes = sched.trips.len() * std::mem::size_of::<ScheduledTrip>()
        + stop_times * std::mem::size_of::<StopTime>()
        + sched
            .trips
            .iter()
            .map(|t| t.id.len() + t.route.len())
            .sum::<usize>();
    eprintln!(
        "city schedule: {} routes, {} shapes, {} trips, {stop_times} stop times: built in {:.2?}, trips and stop times {:.1} MB",
        ROUTES,
        sched.shapes.len(),
        sched.trips.len(),
        built,
        bytes as f64 / 1e6
    );
    let geo_transit = Arc::new(
        GeoIndex::new(routes5.clone(), zs.clone())
            .expect("synthetic geometry is valid")
            .with_schedules(vec![sched]),
    );
    let geo5 = Arc::new(GeoIndex::new(routes5, zs.clone()).expect("synthetic geometry is valid"));
    let geo = Arc::new(GeoIndex::new(routes, zs).expect("synthetic geometry is valid"));
    let coop = CooperativeId::parse("HTX-BENCH").expect("valid id");
    let registry: Vec<Vehicle> = (0..BUSES + TRUCKS)
        .map(|i| Vehicle {
            id: VehicleId::parse(&format!("V{i:05}")).expect("valid id"),
            plate: None,
            cooperative: coop.clone(),
            class: match i {
                i if i < BUSES => VehicleClass::Bus,
                i if i % 2 == 0 => VehicleClass::Container,
                _ => VehicleClass::Tractor,
            },
            route: (i < BUSES).then(|| format!("R{:03}", i % ROUTES)),
            device_id: None,
        })
        .collect();

    // Rounds of one fix per vehicle every 5 s, vehicles staggered by up to 4 s.
    // Buses follow their route 2 vertices (50 m) per fix with lateral noise, and now
    // and then stray 200 m; trucks wander.
    let t0: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 11, 24, 0, 0, 0)
        .single()
        .expect("valid time");
    let mut pos: Vec<(f64, f64)> = (0..BUSES + TRUCKS)
        .map(|_| (rng.range(LON.0, LON.1), rng.range(LAT.0, LAT.1)))
        .collect();
    let mut fixes = Vec::with_capacity(ROUNDS * (BUSES + TRUCKS));
    for k in 0..ROUNDS {
        for (i, v) in registry.iter().enumerate() {
            let (lon, lat) = if i < BUSES {
                let line = &lines[i % ROUTES];
                let c = line[(i * 7 + k * 2) % line.len()];
                let stray = if (k / 20 + i) % 13 == 0 { 200.0 } else { 0.0 };
                let (dx, dy) =
                    metres_to_deg(c.y, rng.range(-30.0, 30.0) + stray, rng.range(-30.0, 30.0));
                (c.x + dx, c.y + dy)
            } else {
                let (lon, lat) = &mut pos[i];
                let (dx, dy) = metres_to_deg(*lat, rng.range(-60.0, 60.0), rng.range(-60.0, 60.0));
                *lon = (*lon + dx).clamp(LON.0, LON.1);
                *lat = (*lat + dy).clamp(LAT.0, LAT.1);
                (*lon, *lat)
            };
            let ts = t0 + chrono::Duration::seconds((k * 5 + i % 5) as i64);
            let c = FixCandidate {
                ts: Some(ts),
                lat,
                lon,
                speed_kmh: Some(rng.range(0.0, 95.0)),
                driver: Some(format!("D{i:05}")),
                ignition: Some(true),
                ..FixCandidate::default()
            };
            fixes.push(
                Fix::validate(c, v.id.clone(), &FixLimits::default(), ts).expect("valid fix"),
            );
        }
    }
    World {
        geo,
        geo5,
        geo_transit,
        lines,
        registry,
        fixes,
    }
}

fn bench(c: &mut Criterion) {
    let w = world();
    let mut g = c.benchmark_group("rules");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));

    // Points near routes (within ~40 m) and anywhere in the area.
    let mut rng = Rng(42);
    let probes: Vec<(usize, f64, f64)> = (0..10_000)
        .map(|i| {
            let line = &w.lines[i % ROUTES];
            let c = line[(i * 31) % line.len()];
            let (dx, dy) = metres_to_deg(c.y, rng.range(-40.0, 40.0), rng.range(-40.0, 40.0));
            (i % ROUTES, c.x + dx, c.y + dy)
        })
        .collect();
    let route_ids: Vec<String> = (0..ROUTES).map(|i| format!("R{i:03}")).collect();
    let mut i = 0usize;
    g.bench_function("point_to_route", |b| {
        b.iter(|| {
            let (r, lon, lat) = probes[i % probes.len()];
            i += 1;
            black_box(w.geo.locate_on_route(
                black_box(&route_ids[r]),
                black_box(lon),
                black_box(lat),
            ))
        })
    });
    let mut i = 0usize;
    g.bench_function("point_to_route_5_shapes", |b| {
        b.iter(|| {
            let (r, lon, lat) = probes[i % probes.len()];
            i += 1;
            black_box(w.geo5.locate_on_route(
                black_box(&route_ids[r]),
                black_box(lon),
                black_box(lat),
            ))
        })
    });
    let mut i = 0usize;
    g.bench_function("zone_lookup", |b| {
        b.iter(|| {
            let (_, lon, lat) = probes[i % probes.len()];
            i += 1;
            black_box(w.geo.zones_at(black_box(lon), black_box(lat)).count())
        })
    });

    // Everything per fix: reorder buffer, zone and route lookups, every rule. The
    // engine is rebuilt (untimed) when the pre-generated fixes run out.
    for (name, geo) in [
        ("geo_and_all_rules_per_fix", &w.geo),
        ("geo_and_all_rules_per_fix_5_shapes", &w.geo5),
        ("geo_and_all_rules_per_fix_transit", &w.geo_transit),
    ] {
        all_rules(&mut g, name, &w, geo);
    }
    g.finish();
}

/// Trips of each route's 5 shapes: 50 per shape, 18 min apart from 04:00, 20 stops
/// each evenly along the shape, at 36 km/h (the buses' speed in the fixes).
fn city_schedule(routes: &[Route]) -> Schedule {
    let mut stops = Vec::new();
    let mut shapes = Vec::new();
    let mut trips = Vec::new();
    let service = Service {
        id: "ALL".into(),
        always: true,
        ..Service::default()
    };
    for r in routes {
        for (si, part) in r.parts.iter().enumerate() {
            let line = &part.0;
            let shape = shapes.len() as u32;
            shapes.push((format!("{}-{si}", r.id), r.id.clone(), line.clone()));
            let mut along = vec![0.0];
            for w in line.windows(2) {
                let d = distance_m(w[0].x, w[0].y, w[1].x, w[1].y);
                along.push(along[along.len() - 1] + d);
            }
            let first_stop = stops.len() as u32;
            let at: Vec<usize> = (0..20).map(|k| k * (line.len() - 1) / 19).collect();
            for (k, &v) in at.iter().enumerate() {
                stops.push(StopPoint {
                    id: format!("{}-{si}-{k}", r.id),
                    name: None,
                    lon: Some(line[v].x),
                    lat: Some(line[v].y),
                });
            }
            for j in 0..50 {
                let dep = 4 * 3600 + j * 18 * 60;
                let stop_times = at
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| {
                        let t = dep + (along[v] / 10.0).round() as i32;
                        StopTime {
                            stop: first_stop + k as u32,
                            seq: k as u32 + 1,
                            arrival_s: t,
                            departure_s: t,
                            dist_m: along[v],
                        }
                    })
                    .collect();
                trips.push(ScheduledTrip {
                    id: format!("{}-{si}-{j:02}", r.id),
                    route: r.id.clone(),
                    service: 0,
                    shape,
                    direction: Some((si % 2) as u8),
                    headsign: None,
                    stop_times,
                    frequencies: Vec::new(),
                });
            }
        }
    }
    Schedule::from_parts(stops, shapes, vec![service], trips).expect("synthetic schedule is valid")
}

fn all_rules(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    w: &World,
    geo: &Arc<GeoIndex>,
) {
    let fresh = || Engine::new(RulesConfig::default(), geo.clone(), w.registry.clone());
    // One untimed pass: what the rules produced and the largest vehicle state.
    let mut engine = fresh();
    let (mut runs, mut events, mut assigned) = (0usize, 0usize, 0usize);
    for f in &w.fixes {
        let out = engine.push(f);
        runs += out.trip_runs.len();
        events += out.stop_events.len();
    }
    for v in &w.registry {
        assigned += usize::from(engine.trip_progress(&v.id).is_some());
    }
    let largest = engine
        .checkpoint()
        .iter()
        .map(|(_, s)| serde_json::to_vec(s).map_or(0, |v| v.len()))
        .max()
        .unwrap_or(0);
    eprintln!(
        "{name}: {} fixes: {runs} trip runs ended, {events} stop events, {assigned} buses on a trip at the end; largest vehicle state {largest} bytes (JSON)",
        w.fixes.len()
    );
    let mut engine = fresh();
    let mut cursor = 0usize;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                if cursor == w.fixes.len() {
                    engine = fresh();
                    cursor = 0;
                }
                let n = left.min(w.fixes.len() - cursor);
                let start = Instant::now();
                for f in &w.fixes[cursor..cursor + n] {
                    black_box(engine.push(black_box(f)));
                }
                total += start.elapsed();
                cursor += n;
                left -= n;
            }
            total
        })
    });
}

/// One fix arriving late for a bus at 1 Hz that has driven its route for 25 h: what
/// the pipeline's recomputation does in memory, from the snapshot to the last fix.
fn late(c: &mut Criterion) {
    let w = world();
    let bus = w.registry[0].clone();
    let line = &w.lines[0];
    let t0: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 11, 24, 0, 0, 0)
        .single()
        .expect("valid time");
    const SECONDS: usize = 25 * 3600;
    let fix_at = |k: usize, half: bool| {
        // Back and forth along the route, 2 vertices (50 m) per 5 s: about 36 km/h.
        let n = line.len();
        let j = (k * 2 / 5) % (2 * n - 2);
        let c = line[if j < n { j } else { 2 * n - 2 - j }];
        let ts = t0 + chrono::Duration::milliseconds(k as i64 * 1000 + if half { 500 } else { 0 });
        let cand = FixCandidate {
            ts: Some(ts),
            lat: c.y,
            lon: c.x,
            speed_kmh: Some(36.0),
            driver: Some("D00000".into()),
            ignition: Some(true),
            ..FixCandidate::default()
        };
        Fix::validate(cand, bus.id.clone(), &FixLimits::default(), ts).expect("valid fix")
    };
    let log: Vec<Fix> = (0..SECONDS).map(|k| fix_at(k, false)).collect();
    snapshot_memory(&w);
    let mut engine = Engine::new(RulesConfig::default(), w.geo.clone(), w.registry.clone());
    for f in &log {
        black_box(engine.push(f));
    }
    eprintln!(
        "snapshots of the bus after 25 h at 1 Hz: {} bytes (packed)",
        engine.snapshot_bytes(&bus.id)
    );
    let mut g = c.benchmark_group("rules");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for late_h in [1usize, 6, 24] {
        let mut n = 0usize;
        g.bench_function(format!("late_fix_{late_h}h"), |b| {
            b.iter(|| {
                // A new half-second fix each time, `late_h` before the newest.
                let k = SECONDS - late_h * 3600 + n % 600;
                n += 1;
                let late = fix_at(k, true);
                let group = engine.begin_group_recompute(&[(bus.id.clone(), late.ts())], &[]);
                let from_ms = group[0].after.timestamp_millis();
                let restated = group.into_iter().next().map(|r| r.restated);
                let i = log.partition_point(|f| f.ts().timestamp_millis() < from_ms);
                let j = log.partition_point(|f| f.ts() < late.ts());
                let mut replayed = 0usize;
                replayed += engine.replay(&log[i..j]).alerts.len();
                replayed += engine.replay(std::slice::from_ref(&late)).alerts.len();
                replayed += engine.replay(&log[j..]).alerts.len();
                engine.end_recompute(&bus.id);
                black_box((restated, replayed))
            })
        });
    }
    g.finish();
}

/// Resident memory of the process, bytes (Linux).
fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Memory the snapshots take per vehicle: the same 25 h of the buses (one fix per
/// 30 s) through an engine taking snapshots every 10 min and one taking one each; the
/// difference of their resident memory, per bus.
fn snapshot_memory(w: &World) {
    const STEP_S: usize = 30;
    let t0: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 11, 24, 0, 0, 0)
        .single()
        .expect("valid time");
    let buses: Vec<&Vehicle> = w.registry.iter().filter(|v| v.route.is_some()).collect();
    let run = |snapshot_interval_s: u32| {
        let cfg = RulesConfig {
            snapshot_interval_s,
            ..RulesConfig::default()
        };
        let mut e = Engine::new(cfg, w.geo.clone(), w.registry.clone());
        let before = rss_bytes();
        for k in 0..(25 * 3600 / STEP_S) {
            let ts = t0 + chrono::Duration::seconds((k * STEP_S) as i64);
            for (b, bus) in buses.iter().enumerate() {
                let line = &w.lines[b % w.lines.len()];
                let n = line.len();
                let j = (k * 6) % (2 * n - 2);
                let c = line[if j < n { j } else { 2 * n - 2 - j }];
                let cand = FixCandidate {
                    ts: Some(ts),
                    lat: c.y,
                    lon: c.x,
                    speed_kmh: Some(36.0),
                    driver: Some(format!("D{b:05}")),
                    ignition: Some(true),
                    ..FixCandidate::default()
                };
                let f = Fix::validate(cand, bus.id.clone(), &FixLimits::default(), ts)
                    .expect("valid fix");
                black_box(e.push(&f));
            }
        }
        let json: usize = buses.iter().map(|b| e.snapshot_bytes(&b.id)).sum();
        (e, rss_bytes() - before, json)
    };
    let (with, rss_with, json) = run(600);
    let (one, rss_one, json_one) = run(u32::MAX);
    let per_bus = (rss_with - rss_one) as f64 / buses.len() as f64;
    eprintln!(
        "snapshot memory, {} buses after 25 h (a fix per 30 s): {:.0} bytes per bus resident \
         ({:.0} bytes packed; one snapshot each: {:.0})",
        buses.len(),
        per_bus,
        json as f64 / buses.len() as f64,
        json_one as f64 / buses.len() as f64,
    );
    let mut parts: Vec<(&str, usize)> = Vec::new();
    for bus in &buses {
        for (name, n) in with.snapshot_breakdown(&bus.id) {
            match parts.iter_mut().find(|p| p.0 == name) {
                Some(p) => p.1 += n,
                None => parts.push((name, n)),
            }
        }
    }
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    let parts: Vec<String> = parts
        .iter()
        .map(|(name, n)| format!("{name} {:.0}", *n as f64 / buses.len() as f64))
        .collect();
    eprintln!("snapshot JSON bytes per bus by part: {}", parts.join(", "));
    drop((with, one));
}

criterion_group!(benches, bench, late);
criterion_main!(benches);
