//! API response times, measured end to end over loopback HTTP against a private
//! PostgreSQL: one day of 1 Hz track as GeoJSON (and GPX, CSV, simplified), and the
//! live positions of a large fleet.
//!
//! `cargo bench --bench api -- [--track-fixes 86400] [--vehicles 10000] [--runs 15]
//!  [--heavy-fixes 500000] [--parallel 8]`
//!
//! The time is from sending the request to the last byte of the body, so it bounds
//! the server-side time from above. Then memory: `--parallel` maximum track pages
//! (`--heavy-fixes` fixes each, one token) at once, with the process's resident set
//! (VmRSS from /proc/self/status, sampled every 5 ms) before and at its peak. The
//! server runs in this process; the client counts the bytes it reads and keeps none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::api::{self, AppState, Health};
use fleetwatch::config::Settings;
use fleetwatch::geo::GeoIndex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

struct Args {
    track_fixes: i64,
    vehicles: i64,
    runs: usize,
    heavy_fixes: i64,
    parallel: usize,
}

fn args() -> Args {
    let mut a = Args {
        track_fixes: 86_400,
        vehicles: 10_000,
        runs: 15,
        heavy_fixes: 500_000,
        parallel: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().expect("a value after the option");
        match k.as_str() {
            "--track-fixes" => a.track_fixes = val().parse().expect("a number"),
            "--vehicles" => a.vehicles = val().parse().expect("a number"),
            "--runs" => a.runs = val().parse().expect("a number"),
            "--heavy-fixes" => a.heavy_fixes = val().parse().expect("a number"),
            "--parallel" => a.parallel = val().parse().expect("a number"),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    a
}

/// Status, body bytes and time to the last byte of one GET (one connection each).
async fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, usize, Duration) {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut raw).await.unwrap();
    let dt = t0.elapsed();
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw.len(), dt)
}

/// Status and body bytes of one GET, reading the body into a small buffer that is
/// reused (the client keeps nothing, so the process's memory is the server's).
async fn get_discard(addr: SocketAddr, path: &str, token: &str) -> (u16, usize) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        if head.len() < 12 {
            head.extend_from_slice(&buf[..n.min(12)]);
        }
        total += n;
    }
    let status = std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap();
    (status, total)
}

/// Resident set size of this process, bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `parallel` requests of `path` at once; prints RSS before and its peak during them.
async fn memory(addr: SocketAddr, token: &str, what: &str, path: &str, parallel: usize) {
    let before = rss_bytes();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let t0 = Instant::now();
    let reqs: Vec<_> = (0..parallel)
        .map(|_| {
            let (path, token) = (path.to_string(), token.to_string());
            tokio::spawn(async move { get_discard(addr, &path, &token).await })
        })
        .collect();
    let mut bytes = 0;
    for r in reqs {
        let (status, n) = r.await.unwrap();
        assert_eq!(status, 200, "{path}");
        bytes = n;
    }
    let dt = t0.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap().max(rss_bytes());
    println!(
        "{what:<40} {parallel} at once: RSS {:>6.1} MB before, peak {:>6.1} MB; {:.1} s, {:.1} MB each",
        before as f64 / 1e6,
        peak as f64 / 1e6,
        dt.as_secs_f64(),
        bytes as f64 / 1e6
    );
}

/// Runs `path` `runs` times after one warm-up; prints min, median and p90.
async fn measure(addr: SocketAddr, token: &str, what: &str, path: &str, runs: usize) {
    let (status, _, _) = get(addr, path, token).await;
    assert_eq!(status, 200, "{path}");
    let mut times = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let (status, n, dt) = get(addr, path, token).await;
        assert_eq!(status, 200);
        bytes = n;
        times.push(dt.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<40} min {:>7.1} ms  median {:>7.1} ms  p90 {:>7.1} ms  ({:.1} MB)",
        p(0.0),
        p(0.5),
        p(0.9),
        bytes as f64 / 1e6
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = std::env::temp_dir().join(format!("fw-bench-api-{}", std::process::id()));
    let (pg, db, c, _) = support::private_db(&dir, true, "bench").await;

    let t0 = Instant::now();
    // One vehicle, one day at 1 Hz: a slow loop around Thu Dau Mot.
    c.batch_execute(&format!(
        "INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, heading_deg,
                            driver_id, received_at)
         SELECT 'TRACK-1', '2026-11-01T00:00:00Z'::timestamptz + make_interval(secs => i),
                'HTX-A', round((10.98 + 0.05 * sin(i / 5000.0)) * 1e7)::int4,
                round((106.65 + 0.05 * cos(i / 5000.0)) * 1e7)::int4,
                40 + 20 * sin(i / 300.0), (i % 360)::real, 'D-1',
                '2026-11-01T00:00:00Z'::timestamptz + make_interval(secs => i)
         FROM generate_series(0, {} - 1) i;
         INSERT INTO vehicles (vehicle_id, cooperative_id, registered, last_seen, last_fix_ts)
         VALUES ('TRACK-1', 'HTX-A', true, now(), '2026-11-01T23:59:59Z');
         INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, heading_deg,
                            driver_id, received_at)
         SELECT 'HEAVY-1', '2026-11-01T00:00:00Z'::timestamptz + make_interval(secs => i * 2),
                'HTX-A', round((10.98 + 0.05 * sin(i / 5000.0)) * 1e7)::int4,
                round((106.65 + 0.05 * cos(i / 5000.0)) * 1e7)::int4,
                40 + 20 * sin(i / 300.0), (i % 360)::real, 'D-1', now()
         FROM generate_series(0, {} - 1) i;
         INSERT INTO vehicles (vehicle_id, cooperative_id, registered)
         VALUES ('HEAVY-1', 'HTX-A', true);",
        a.track_fixes, a.heavy_fixes
    ))
    .await
    .unwrap();
    // A fleet with 10 fixes each, its latest position in `vehicles` as the writer keeps
    // it, and an open alert on every 20th vehicle.
    c.batch_execute(&format!(
        "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered,
                               last_seen, last_fix_ts, last_lat, last_lon, last_speed_kmh,
                               last_heading_deg, last_driver_id)
         SELECT 'V-' || v, 'HTX-' || (v % 20), '61B-' || v, 'bus', true, now(),
                '2026-11-02T00:00:09Z', 10.9 + v * 1e-5, 106.6009, 35, 90, 'D-' || v
         FROM generate_series(1, {n}) v;
         INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, heading_deg,
                            received_at)
         SELECT 'V-' || v, '2026-11-02T00:00:00Z'::timestamptz + make_interval(secs => k),
                'HTX-' || (v % 20), 109000000 + v * 100, 1066000000 + k * 1000, 35, 90, now()
         FROM generate_series(1, {n}) v, generate_series(0, 9) k;
         INSERT INTO alerts (alert_id, vehicle_id, cooperative_id, kind, level, status,
                             start_ts, lat, lon, details)
         SELECT 'al-' || v, 'V-' || v, 'HTX-' || (v % 20), 'overspeed', 'violation', 'open',
                '2026-11-02T00:00:05Z', 10.9, 106.6, '{{}}'
         FROM generate_series(20, {n}, 20) v;
         ANALYZE;",
        n = a.vehicles
    ))
    .await
    .unwrap();
    println!(
        "seeded {} track fixes and {} vehicles in {:.1} s",
        a.track_fixes,
        a.vehicles,
        t0.elapsed().as_secs_f64()
    );
    let token = create_token(&c, Role::Regulator, None, Some("bench"))
        .await
        .unwrap();

    let (_geo_tx, geo) = tokio::sync::watch::channel(Arc::new(GeoIndex::empty()));
    let state = AppState {
        health: Arc::new(Health::default()),
        metrics: fleetwatch::telemetry::metrics_handle(),
        reload_geo: None,
        db: api::pool(&db).unwrap(),
        settings: Arc::new(Settings::default()),
        geo,
        registry: Arc::new(tokio::sync::watch::channel(Arc::new(Vec::new())).0),
        heavy: api::HeavyLimiter::new(a.parallel),
        devices: Default::default(),
        live: api::stream::LiveFeed::new(Default::default()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });

    println!(
        "machine: {} cores; PostgreSQL private (fsync off); {} runs each",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.runs
    );
    let day = "from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z";
    let track = format!("/api/v1/vehicles/TRACK-1/track?{day}");
    let n = a.track_fixes;
    measure(
        addr,
        &token,
        &format!("track {n} fixes, GeoJSON line"),
        &track,
        a.runs,
    )
    .await;
    for (what, q) in [
        ("track, GeoJSON points", "&format=geojson_points"),
        ("track, GPX", "&format=gpx"),
        ("track, CSV", "&format=csv"),
        ("track, GeoJSON simplified 10 m", "&simplify_m=10"),
    ] {
        measure(addr, &token, what, &format!("{track}{q}"), a.runs).await;
    }
    measure(
        addr,
        &token,
        &format!("live positions, {} vehicles", a.vehicles),
        "/api/v1/vehicles",
        a.runs,
    )
    .await;
    // The worst case of one tenant: maximum pages at once from one cooperative token
    // (its limit of heavy requests raised to allow them all).
    let coop = create_token(&c, Role::Cooperative, Some("HTX-A"), Some("bench"))
        .await
        .unwrap();
    let heavy = format!(
        "/api/v1/vehicles/HEAVY-1/track?from=2026-11-01T00:00:00Z&to=2026-11-30T00:00:00Z&limit={}",
        a.heavy_fixes
            .min(fleetwatch::api::vehicles::MAX_TRACK_FIXES)
    );
    let h = a.heavy_fixes;
    for (what, q) in [
        (format!("max pages ({h} fixes), GeoJSON line"), ""),
        ("  GeoJSON points".to_string(), "&format=geojson_points"),
        ("  CSV".to_string(), "&format=csv"),
        ("  GeoJSON simplified 1 m".to_string(), "&simplify_m=1"),
    ] {
        memory(addr, &coop, &what, &format!("{heavy}{q}"), a.parallel).await;
    }
    drop(c);
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}
