//! Storage cost per fix (not criterion: one seeded run, sizes read off the server).
//!
//! `cargo bench --bench storage -- [--vehicles 1000] [--days 7] [--interval-s 10]`
//!
//! Fills `fixes` of two databases of one private PostgreSQL, one on the plain layout
//! and one on the TimescaleDB layout (when TimescaleDB is installed), with the same
//! synthetic fleet: every vehicle a fix every `--interval-s` over `--days`, a smooth
//! track at 1e-6 degree and speeds at 0.1 km/h as devices report them (JT/T 808's
//! resolution), a driver, ignition, satellites and HDOP changing every few minutes,
//! and a growing odometer, as the writer stores them. Reports bytes on disk per fix
//! (table, indexes, TOAST) on each layout, and on TimescaleDB after compressing every
//! chunk; and what a year of a 10,000-vehicle fleet costs at that rate.

use std::time::Instant;

use fleetwatch::infra::postgres::{EmbeddedPostgres, PgOptions};
use fleetwatch::store::migrate::{Layout, LayoutConfig};

struct Args {
    vehicles: i32,
    days: i32,
    interval_s: i32,
}

fn args() -> Args {
    let mut a = Args {
        vehicles: 1000,
        days: 7,
        interval_s: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match k.as_str() {
            "--vehicles" => a.vehicles = v(),
            "--days" => a.days = v(),
            "--interval-s" => a.interval_s = v(),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// Seeds `fixes` one day at a time (bounded transactions), in time order as devices
/// send them.
async fn seed(c: &tokio_postgres::Client, a: &Args) -> i64 {
    for day in 0..a.days {
        c.execute(
            "INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, heading_deg,
                                driver_id, ignition, satellites, hdop, odometer_m, flags, received_at)
             SELECT 'V-' || lpad(v::text, 5, '0'),
                    t,
                    'HTX-' || (v % 20),
                    -- As devices report them: 1e-6 degree, 0.1 km/h; satellites and HDOP
                    -- change every few minutes, not every fix.
                    -- Coordinates stored as integers of 1e-7 degree (src/store/migrations/0040).
                    (round((10.8 + (v % 100) * 0.004 + 0.02 * sin(k / 500.0 + v))::numeric, 6) * 1e7)::int4,
                    (round((106.6 + (v / 100) * 0.004 + 0.02 * cos(k / 700.0 + v))::numeric, 6) * 1e7)::int4,
                    round(greatest(0, 40 + 25 * sin(k / 90.0 + v))::numeric, 1)::real,
                    ((k * 3 + v * 17) % 360)::real,
                    '0790' || lpad((v * 7919 % 100000000)::text, 8, '0'),
                    (k % 1000) > 40,
                    (8 + (k / 120 + v) % 5)::smallint,
                    (0.8 + ((k / 300 + v) % 5) / 10.0)::real,
                    v * 1000.0 + k * 11.1,
                    0,
                    t + interval '2 s'
             FROM generate_series(1, $1::int4) v,
                  generate_series(0, 86400 / $3::int4 - 1) k,
                  LATERAL (SELECT date_trunc('day', now()) - make_interval(days => $2::int4 - $4::int4)
                                  + make_interval(secs => k * $3::int4) AS t) tt",
            &[&a.vehicles, &(a.days), &a.interval_s, &day],
        )
        .await
        .expect("seeding");
    }
    c.query_one("SELECT count(*) FROM fixes", &[])
        .await
        .unwrap()
        .get(0)
}

async fn size(c: &tokio_postgres::Client, layout: Layout) -> i64 {
    let q = match layout {
        Layout::Plain => "SELECT pg_total_relation_size('fixes')",
        Layout::Timescale => "SELECT hypertable_size('fixes')",
    };
    c.query_one(q, &[]).await.unwrap().get(0)
}

fn report(label: &str, bytes: i64, rows: i64, a: &Args) {
    let per_fix = bytes as f64 / rows as f64;
    // A year of 10,000 vehicles at the same cadence.
    let year_rows = 10_000.0 * 365.0 * 86_400.0 / f64::from(a.interval_s);
    println!(
        "{label:<34} {:>10.1} MB  {per_fix:>7.1} bytes/fix  year of 10,000 vehicles: {:>8.0} GB",
        bytes as f64 / 1e6,
        per_fix * year_rows / 1e9
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = std::env::temp_dir().join(format!("fleetwatch-bench-storage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = EmbeddedPostgres::start(&PgOptions {
        data_dir: dir.clone(),
        fast_unsafe: true,
        timescaledb: true,
    })
    .expect("private PostgreSQL starts");
    println!(
        "storage: {} vehicles x {} days, a fix every {} s ({} fixes per layout)",
        a.vehicles,
        a.days,
        a.interval_s,
        i64::from(a.vehicles) * i64::from(a.days) * 86_400 / i64::from(a.interval_s)
    );
    for timescale in [false, true] {
        let name = if timescale {
            "st_timescale"
        } else {
            "st_plain"
        };
        pg.ensure_database(name).await.unwrap();
        let mut c = fleetwatch::store::connect(&pg.url(name)).await.unwrap();
        let cfg = LayoutConfig {
            timescaledb: timescale,
            ..LayoutConfig::default()
        };
        let layout = fleetwatch::store::migrate::migrate(&mut c, &cfg)
            .await
            .unwrap();
        if timescale && layout != Layout::Timescale {
            println!("TimescaleDB is not installed: no Timescale figures");
            break;
        }
        let started = Instant::now();
        let rows = seed(&c, &a).await;
        c.batch_execute("VACUUM ANALYZE fixes").await.unwrap();
        println!(
            "{name}: seeded {rows} fixes in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let label = match layout {
            Layout::Plain => "plain (table + key + BRIN)",
            Layout::Timescale => "timescale, uncompressed",
        };
        report(label, size(&c, layout).await, rows, &a);
        if layout == Layout::Timescale {
            let started = Instant::now();
            c.batch_execute("SELECT count(compress_chunk(ch, if_not_compressed => true)) FROM show_chunks('fixes') ch")
                .await
                .unwrap();
            let secs = started.elapsed().as_secs_f64();
            report(
                "timescale, every chunk compressed",
                size(&c, layout).await,
                rows,
                &a,
            );
            println!(
                "compressed in {secs:.0} s ({:.0} fixes/s)",
                rows as f64 / secs
            );
        }
    }
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
