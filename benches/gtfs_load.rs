//! Loading a city-sized GTFS feed from its files (not criterion: a few timed loads in
//! one process, memory read off /proc).
//!
//! `cargo bench --bench gtfs_load -- [--routes 200] [--shapes-per-route 5]
//! [--trips-per-shape 50] [--stops 20] [--points 200] [--runs 3]`
//!
//! Writes a synthetic feed (by default 200 routes, 1,000 shapes of 200 points, 50,000
//! trips of 20 stops: 1 M stop times) as GTFS text files under the temp dir, then loads
//! it as `geo.gtfs` does at start and on reload (`GeoConfig::load`: the routes and
//! their spatial index, the schedule with its stops located on the shapes). Reports
//! the files' size, each load's time, the resident memory the loaded geography keeps,
//! and the peak during the first load.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fleetwatch::geo::GeoConfig;

struct Args {
    routes: usize,
    shapes_per_route: usize,
    trips_per_shape: usize,
    stops: usize,
    points: usize,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args {
        routes: 200,
        shapes_per_route: 5,
        trips_per_shape: 50,
        stops: 20,
        points: 200,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match k.as_str() {
            "--routes" => a.routes = v(),
            "--shapes-per-route" => a.shapes_per_route = v(),
            "--trips-per-shape" => a.trips_per_shape = v(),
            "--stops" => a.stops = v(),
            "--points" => a.points = v(),
            "--runs" => a.runs = v(),
            _ => {} // cargo bench passes --bench
        }
    }
    a.stops = a.stops.clamp(2, a.points.max(2));
    a
}

/// `VmRSS` and `VmHWM` of this process, kB.
fn memory_kb() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Writes the feed; returns its directory and its size in bytes.
fn write_feed(a: &Args) -> (PathBuf, u64) {
    let dir = std::env::temp_dir().join(format!("fw-gtfs-city-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut routes, mut trips, mut shapes, mut stops, mut times) = (
        String::from("route_id,route_short_name,route_long_name,route_type\n"),
        String::from("route_id,service_id,trip_id,trip_headsign,direction_id,shape_id\n"),
        String::from("shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\n"),
        String::from("stop_id,stop_name,stop_lat,stop_lon\n"),
        String::from("trip_id,arrival_time,departure_time,stop_id,stop_sequence\n"),
    );
    for r in 0..a.routes {
        let _ = writeln!(routes, "R{r:03},{r},Route {r},3");
        // Routes fanned over the Thu Dau Mot - Di An area, each shape a wavy line.
        let (lat0, lon0) = (
            10.85 + (r % 20) as f64 * 0.01,
            106.60 + (r / 20) as f64 * 0.012,
        );
        for s in 0..a.shapes_per_route {
            let shape = format!("R{r:03}-S{s}");
            let pt = |k: usize| {
                let f = k as f64 / (a.points - 1) as f64;
                let lat = lat0 + f * 0.12 + 0.002 * (f * 40.0 + s as f64).sin();
                let lon = lon0 + f * 0.08 * (1.0 + s as f64 * 0.1);
                (lat, lon)
            };
            for k in 0..a.points {
                let (lat, lon) = pt(k);
                let _ = writeln!(shapes, "{shape},{lat:.6},{lon:.6},{}", k + 1);
            }
            let at: Vec<usize> = (0..a.stops)
                .map(|k| k * (a.points - 1) / (a.stops - 1))
                .collect();
            for (k, &p) in at.iter().enumerate() {
                let (lat, lon) = pt(p);
                let _ = writeln!(stops, "{shape}-{k},Stop {k} of {shape},{lat:.6},{lon:.6}");
            }
            for j in 0..a.trips_per_shape {
                let trip = format!("{shape}-T{j:02}");
                let _ = writeln!(trips, "R{r:03},ALL,{trip},Terminal {s},{},{shape}", s % 2);
                let dep = 4 * 3600 + j * 18 * 60;
                for k in 0..a.stops {
                    let t = dep + k * 150;
                    let hms = format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
                    let _ = writeln!(times, "{trip},{hms},{hms},{shape}-{k},{}", k + 1);
                }
            }
        }
    }
    let files = [
        ("routes.txt", routes),
        ("trips.txt", trips),
        ("shapes.txt", shapes),
        ("stops.txt", stops),
        ("stop_times.txt", times),
        (
            "calendar.txt",
            "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\n\
             ALL,1,1,1,1,1,1,1,20260101,20271231\n"
                .to_string(),
        ),
    ];
    let mut bytes = 0;
    for (name, text) in files {
        bytes += text.len() as u64;
        std::fs::write(dir.join(name), text).unwrap();
    }
    (dir, bytes)
}

fn load(dir: &Path) -> fleetwatch::geo::GeoIndex {
    GeoConfig {
        gtfs: vec![dir.to_path_buf()],
        ..Default::default()
    }
    .load()
    .expect("the synthetic feed loads")
}

fn main() {
    let a = args();
    let (dir, bytes) = write_feed(&a);
    println!(
        "gtfs_load: {} routes, {} shapes of {} points, {} trips of {} stops ({} stop times); files {:.1} MB",
        a.routes,
        a.routes * a.shapes_per_route,
        a.points,
        a.routes * a.shapes_per_route * a.trips_per_shape,
        a.stops,
        a.routes * a.shapes_per_route * a.trips_per_shape * a.stops,
        bytes as f64 / 1e6
    );
    let (rss0, _) = memory_kb();
    let mut kept = None;
    for run in 0..a.runs.max(1) {
        drop(kept.take());
        let t = Instant::now();
        let g = load(&dir);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (rss, hwm) = memory_kb();
        let trips: usize = g.schedules().iter().map(|s| s.trips.len()).sum();
        println!(
            "load {}: {ms:.0} ms ({} routes, {trips} trips); resident {:.1} MB above the start, peak so far {:.1} MB above",
            run + 1,
            g.route_count(),
            rss.saturating_sub(rss0) as f64 / 1024.0,
            hwm.saturating_sub(rss0) as f64 / 1024.0,
        );
        kept = Some(g);
    }
    std::fs::remove_dir_all(&dir).ok();
}
