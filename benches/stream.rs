//! Bytes the live stream sends: `GET /api/v1/stream` for a fleet of `--vehicles`
//! (10,000) of which `--moving-pct` (1 %) report a new position every second, against
//! polling the whole live list. End to end over loopback HTTP against a private
//! PostgreSQL, with the real poller; the moving vehicles' rows are updated as the
//! writer does (position, `last_seen`, `last_fix_ts`).
//!
//! `cargo bench --bench stream -- [--vehicles 10000] [--moving-pct 1] [--seconds 20]`

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
    vehicles: i64,
    moving_pct: i64,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        vehicles: 10_000,
        moving_pct: 1,
        seconds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().expect("a value after the option");
        match k.as_str() {
            "--vehicles" => a.vehicles = val().parse().expect("a number"),
            "--moving-pct" => a.moving_pct = val().parse().expect("a number"),
            "--seconds" => a.seconds = val().parse().expect("a number"),
            _ => {}
        }
    }
    a
}

/// One server-sent event as read: its name, its data, and the bytes it took on the
/// wire (chunk framing included).
struct Ev {
    name: String,
    data: serde_json::Value,
    data_bytes: usize,
    wire_bytes: usize,
}

struct Reader {
    s: tokio::net::TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    wire: usize,
}

impl Reader {
    async fn open(addr: SocketAddr, token: &str) -> Reader {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut r = Reader {
            s,
            raw: Vec::new(),
            body: Vec::new(),
            wire: 0,
        };
        let mut buf = [0u8; 65536];
        loop {
            if let Some(i) = r.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(
                    r.raw.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&r.raw[..i])
                );
                r.raw.drain(..i + 4);
                r.wire = r.raw.len();
                return r;
            }
            let n = r.s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            r.raw.extend_from_slice(&buf[..n]);
        }
    }

    async fn next(&mut self, timeout: Duration) -> Option<Ev> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // Chunks to the body.
            while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let n = usize::from_str_radix(
                    std::str::from_utf8(&self.raw[..eol]).unwrap().trim(),
                    16,
                )
                .unwrap();
                if self.raw.len() < eol + 4 + n {
                    break;
                }
                self.body.extend_from_slice(&self.raw[eol + 2..eol + 2 + n]);
                self.raw.drain(..eol + 4 + n);
            }
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let text = String::from_utf8(self.body.drain(..end + 2).collect()).unwrap();
                let wire = std::mem::take(&mut self.wire);
                let mut name = String::new();
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Ev {
                    name,
                    data_bytes: data.len(),
                    data: serde_json::from_str(&data).unwrap(),
                    wire_bytes: wire,
                });
            }
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    self.wire += n;
                    self.raw.extend_from_slice(&buf[..n]);
                }
                _ => return None,
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = std::env::temp_dir().join(format!("fw-bench-stream-{}", std::process::id()));
    let (pg, db, c, _) = support::private_db(&dir, true, "bench").await;
    // The fleet as the writer keeps it: latest position, driving figures, and an open
    // alert on every 20th vehicle.
    c.batch_execute(&format!(
        "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered,
                               last_seen, last_fix_ts, last_lat, last_lon, last_speed_kmh,
                               last_heading_deg, last_driver_id, live_as_of_ts, live_driver_id,
                               live_driver_since_ts, live_moving, live_continuous_s,
                               live_last_drive_end_ts, live_day, live_daily_s, live_weekly_s)
         SELECT 'V-' || v, 'HTX-' || (v % 20), '61B-' || v, 'bus', true, now() - interval '1 min',
                now() - interval '1 min', 10.9 + v * 1e-5, 106.6009, 35, 90, 'D-' || v,
                now() - interval '1 min', 'D-' || v, now() - interval '2 h', true, 7200,
                now() - interval '1 min', (now() AT TIME ZONE '+07')::date, 7200, 30000
         FROM generate_series(1, {n}) v;
         INSERT INTO alerts (alert_id, vehicle_id, cooperative_id, kind, level, status,
                             start_ts, lat, lon, details)
         SELECT 'al-' || v, 'V-' || v, 'HTX-' || (v % 20), 'overspeed', 'violation', 'open',
                now() - interval '1 h', 10.9, 106.6, '{{}}'
         FROM generate_series(20, {n}, 20) v;
         -- Seeded long ago: only the moves below are changes.
         UPDATE alerts SET updated_at = now() - interval '1 h';
         ANALYZE;",
        n = a.vehicles
    ))
    .await
    .unwrap();
    let token = create_token(&c, Role::Regulator, None, Some("bench"))
        .await
        .unwrap();
    let (_geo_tx, geo) = tokio::sync::watch::channel(Arc::new(GeoIndex::empty()));
    let stop = tokio_util::sync::CancellationToken::new();
    let state = AppState {
        health: Arc::new(Health::default()),
        metrics: fleetwatch::telemetry::metrics_handle(),
        reload_geo: None,
        db: api::pool(&db).unwrap(),
        settings: Arc::new(Settings::default()),
        geo,
        registry: Arc::new(tokio::sync::watch::channel(Arc::new(Vec::new())).0),
        heavy: api::HeavyLimiter::new(4),
        devices: Default::default(),
        live: api::stream::LiveFeed::new(stop.clone()),
    };
    let poller = tokio::spawn(api::stream::run(
        state.live.clone(),
        state.clone(),
        stop.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });

    // Polling instead: the whole list each time.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /api/v1/vehicles HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let list_bytes = raw.len();

    let t0 = Instant::now();
    let mut r = Reader::open(addr, &token).await;
    let snap = r.next(Duration::from_secs(60)).await.expect("a snapshot");
    assert_eq!(snap.name, "snapshot");
    let snap_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(
        snap.data["vehicles"].as_array().unwrap().len() as i64,
        a.vehicles
    );

    // Every second a different 1 % moves, as the writer would record it.
    let every = 100 / a.moving_pct.max(1);
    let moves = tokio::spawn({
        let db = db.clone();
        let seconds = a.seconds;
        async move {
            let c = fleetwatch::store::connect(&db).await.unwrap();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for k in 0..seconds as i64 {
                tick.tick().await;
                c.execute(
                    "UPDATE vehicles SET last_seen = now(), last_fix_ts = now(),
                            last_lat = last_lat + 1e-5, live_as_of_ts = now(),
                            live_continuous_s = live_continuous_s + 1
                     WHERE substr(vehicle_id, 3)::int8 % $1 = $2",
                    &[&every, &(k % every)],
                )
                .await
                .unwrap();
            }
        }
    });
    let mut updates: Vec<(usize, usize, usize)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(a.seconds + 2);
    while Instant::now() < end {
        let Some(ev) = r.next(end - Instant::now()).await else {
            break;
        };
        if ev.name == "update" {
            let n = ev.data["vehicles"].as_array().unwrap().len();
            updates.push((n, ev.data_bytes, ev.wire_bytes));
        }
    }
    moves.await.unwrap();
    stop.cancel();
    let _ = poller.await;

    let k = updates.len().max(1) as f64;
    let vehicles: usize = updates.iter().map(|u| u.0).sum();
    let data: usize = updates.iter().map(|u| u.1).sum();
    let wire: usize = updates.iter().map(|u| u.2).sum();
    println!(
        "fleet {} vehicles, {} % moving each second, {} s",
        a.vehicles, a.moving_pct, a.seconds
    );
    println!(
        "GET /api/v1/vehicles (a poll)      {:>10} bytes",
        list_bytes
    );
    println!(
        "stream snapshot                   {:>10} bytes of data, {:.0} ms to receive",
        snap.data_bytes, snap_ms
    );
    println!(
        "stream updates: {} events, {:.1} vehicles each, {:.0} bytes of data ({:.0} on the wire) each, {:.0} bytes per vehicle",
        updates.len(),
        vehicles as f64 / k,
        data as f64 / k,
        wire as f64 / k,
        data as f64 / vehicles.max(1) as f64
    );
    println!(
        "an update is {:.2} % of a poll of the whole list",
        100.0 * wire as f64 / k / list_bytes as f64
    );
    drop(c);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
