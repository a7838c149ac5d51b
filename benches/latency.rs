//! Fix-to-webhook latency under load (not criterion: one long measured run).
//!
//! `cargo bench --bench latency -- [--rate R] [--vehicles N] [--seconds S] [--poll-ms P]
//!  [--limit-kmh L] [--connections N] [--warmup-s W] [--reorder-window-s R]`
//!
//! fleetwatch with the embedded broker and a private PostgreSQL; a webhook receiver (a
//! raw HTTP server in this process) is every cooperative's destination for overspeed and
//! zone events, delivered at once. A load fleet of N vehicles reports live: fixes carry
//! the wall-clock second, and R of them are published per second, evenly spread, for S
//! seconds. For each alert revision the webhook receives, the latency is from the
//! publication of the fix that made the rule emit it to the POST's arrival:
//! - overspeed opened: the fix at start + `duration_s` (the rule emits once the episode
//!   has lasted the minimum duration);
//! - overspeed closed: the vehicle's first fix after the episode's end;
//! - zone enter / exit: the fix at the event's time.
//!
//! Prints p50, p90, p99 and the maximum, and the share of the fixes stored meanwhile:
//! over every revision, and over the steady state (fixes published after the first
//! `--warmup-s` seconds, default 20: the fleet starts in step, so its first episodes
//! open together in one burst). The rules hold each fix `rules.reorder_window_s`
//! (default 10 s) of event time before applying it, so that much of every latency is
//! by design; `--reorder-window-s` sets it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::app::App;
use fleetwatch::config::Settings;
use fleetwatch::demo::Publisher;
use fleetwatch::infra::broker::EmbeddedBroker;
use fleetwatch::pipeline::topic::TopicPattern;
use fleetwatch::sim::{SimFix, Simulator};
use fleetwatch::store::deliver::spec::DestinationInput;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

struct Args {
    rate: f64,
    vehicles: usize,
    seconds: u64,
    poll_ms: Option<u64>,
    limit_kmh: f64,
    connections: usize,
    warmup_s: u64,
    reorder_window_s: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        rate: 10_000.0,
        vehicles: 10_000,
        seconds: 60,
        poll_ms: None,
        limit_kmh: 50.0,
        connections: 0,
        warmup_s: 20,
        reorder_window_s: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let next = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--rate" => a.rate = next().parse().expect("--rate R"),
            "--vehicles" => a.vehicles = next().parse().expect("--vehicles N"),
            "--seconds" => a.seconds = next().parse().expect("--seconds S"),
            "--connections" => a.connections = next().parse().expect("--connections N"),
            "--limit-kmh" => a.limit_kmh = next().parse().expect("--limit-kmh L"),
            "--poll-ms" => a.poll_ms = Some(next().parse().expect("--poll-ms P")),
            "--warmup-s" => a.warmup_s = next().parse().expect("--warmup-s W"),
            "--reorder-window-s" => {
                a.reorder_window_s = Some(next().parse().expect("--reorder-window-s R"))
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

/// When each fix was handed to the broker, per vehicle and fix time.
type Published = Arc<Mutex<HashMap<String, BTreeMap<DateTime<Utc>, Instant>>>>;

/// One alert revision as the webhook received it.
struct Got {
    at: Instant,
    alert: Value,
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(args()));
}

async fn run(a: Args) {
    let broker = EmbeddedBroker::start(0).unwrap();
    let url = broker.url();
    let dir = std::env::temp_dir().join(format!("fw-bench-latency-{}", std::process::id()));
    let (pg, db, c, _) = support::private_db(&dir, false, "bench").await;

    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let hook = receiver(got.clone()).await;

    // Live fixes: the fleet's clock is the wall clock, from the next whole second.
    let now = Utc::now();
    let start = now + TimeDelta::milliseconds(1000 - i64::from(now.timestamp_subsec_millis()));
    let interval_s = ((a.vehicles as f64 / a.rate).round() as i64).max(1);
    let mut sim =
        Simulator::load_with_interval(a.vehicles, 3, start, TimeDelta::seconds(interval_s));
    let mut coops: Vec<String> = sim
        .vehicles()
        .iter()
        .map(|v| v.cooperative.to_string())
        .collect();
    coops.sort();
    coops.dedup();

    let mut s = Settings::default();
    s.database.url = db.clone();
    s.mqtt.url = url.clone();
    s.mqtt.client_id = format!("bench-latency-{}", std::process::id());
    // 0: what `run` uses on its embedded broker.
    s.mqtt.connections = if a.connections > 0 { a.connections } else { 4 };
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.deliveries.allow_private_targets = true;
    // The load fleet is not registered, and its roads run at 30-60 km/h: a limit in
    // between makes vehicles go over and back under as they change sections.
    s.rules.overspeed.unregistered_limit_kmh = Some(a.limit_kmh);
    if let Some(p) = a.poll_ms {
        s.deliveries.poll_ms = p;
    }
    if let Some(r) = a.reorder_window_s {
        s.rules.reorder_window_s = r;
    }
    for c in &coops {
        s.deliveries.destinations.push(
            serde_json::from_value::<DestinationInput>(json!({
                "cooperative": c, "name": "latency", "channel": "webhook",
                "url": format!("http://{hook}/hook"), "secret": "a-webhook-secret-of-32-characters",
                "kinds": ["overspeed", "zone_enter", "zone_exit"],
            }))
            .unwrap(),
        );
    }
    let app_reorder_s = s.rules.reorder_window_s;
    let app = App::start(s).await.unwrap();
    while !app.health.subscribed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "machine: {} cores; {} vehicles, one fix each per {interval_s} s = {:.0} fixes/s for {} s; {} webhook destinations (overspeed, zone enter/exit); reorder window {} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.vehicles,
        a.vehicles as f64 / interval_s as f64,
        a.seconds,
        coops.len(),
        app_reorder_s
    );

    let published: Published = Arc::default();
    let stats = fleetwatch::telemetry::stats();
    let stored0 = stats.stored.load(Ordering::Relaxed);
    let pattern = TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap();
    let p = Publisher::connect(&url, "bench-latency-pub").unwrap();
    // Wait for the fleet's first second on the wall clock.
    let lead = (start - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(lead).await;
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut second: Vec<SimFix> = Vec::new();
    let mut k = 0usize;
    let mut elapsed_s = 0u64;
    while elapsed_s < a.seconds {
        // The fixes of wall second `elapsed_s` go out evenly through that second.
        if k == second.len() {
            second = sim.advance(TimeDelta::seconds(1));
            k = 0;
        }
        let in_second = t0.elapsed().as_secs_f64() - elapsed_s as f64;
        let due = ((in_second.min(1.0)) * second.len() as f64).ceil() as usize;
        let mut batch = Vec::new();
        while k < due {
            let f = &mut second[k];
            let payload = std::mem::take(&mut f.payload);
            p.publish(pattern.topic(&f.cooperative, &f.vehicle), payload)
                .await
                .unwrap();
            batch.push((f.vehicle.to_string(), f.ts, Instant::now()));
            k += 1;
            sent += 1;
        }
        {
            let mut m = published.lock().unwrap();
            for (v, ts, at) in batch {
                m.entry(v).or_default().insert(ts, at);
            }
        }
        if k == second.len() {
            elapsed_s += 1;
            if elapsed_s.is_multiple_of(5) {
                eprintln!(
                    "  t={elapsed_s:>3}s sent {sent} stored {} webhook revisions {}",
                    stats.stored.load(Ordering::Relaxed) - stored0,
                    got.lock().unwrap().len()
                );
            }
            let wait = Duration::from_secs(elapsed_s).saturating_sub(t0.elapsed());
            tokio::time::sleep(wait).await;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let publishing = t0.elapsed();
    p.finish(sent, Duration::from_secs(60)).await;
    // Let the last alerts arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.stored.load(Ordering::Relaxed) - stored0 < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = stats.stored.load(Ordering::Relaxed) - stored0;
    for (what, sql) in [
        ("alerts stored", "SELECT kind || ' ' || status, count(*) FROM alerts GROUP BY 1 ORDER BY 1"),
        ("deliveries", "SELECT status, count(*) FROM deliveries GROUP BY 1 ORDER BY 1"),
        ("destinations", "SELECT coalesce(parked_reason, 'live'), count(*) FROM delivery_destinations GROUP BY 1"),
    ] {
        let rows = c.query(sql, &[]).await.unwrap();
        let v: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        println!("{what}: {}", v.join(", "));
    }
    // Where the time goes, from the database's clocks (transaction start times):
    // fix time → alert committed, → fanned out, → delivery recorded.
    let stages = c
        .query_one(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM a.updated_at - a.emitted_ts)),
                    percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM d.created_at - a.updated_at)),
                    percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM d.delivered_at - d.created_at))
             FROM deliveries d JOIN alerts a USING (alert_id)
             WHERE a.revision = d.revision AND d.status = 'delivered'",
            &[],
        )
        .await
        .unwrap();
    let ms = |i: usize| -> String {
        let v: Vec<f64> = stages.get(i);
        format!("p50 {:.0} ms, p99 {:.0} ms", v[0] * 1e3, v[1] * 1e3)
    };
    println!(
        "stages: fix time → alert stored {}; → fanned out {}; → delivered {}",
        ms(0),
        ms(1),
        ms(2)
    );

    let published = std::mem::take(&mut *published.lock().unwrap());
    let mut lat_ms: Vec<f64> = Vec::new();
    let mut steady_ms: Vec<f64> = Vec::new();
    let steady_from = t0 + Duration::from_secs(a.warmup_s);
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut unmatched = 0usize;
    for g in got.lock().unwrap().iter() {
        let kind = g.alert["kind"].as_str().unwrap_or("?").to_string();
        *by_kind.entry(kind).or_default() += 1;
        match emitting_fix(&published, &g.alert) {
            Some(at) if g.at >= at => {
                let ms = (g.at - at).as_secs_f64() * 1e3;
                lat_ms.push(ms);
                if at >= steady_from {
                    steady_ms.push(ms);
                }
            }
            _ => unmatched += 1,
        }
    }
    println!(
        "published {sent} fixes in {:.1} s ({:.0}/s); stored {stored}",
        publishing.as_secs_f64(),
        sent as f64 / publishing.as_secs_f64()
    );
    println!("webhook revisions received: {by_kind:?}; {unmatched} without their fix in this run (alerts of the first seconds or after the end)");
    for (what, v) in [
        ("every revision".to_string(), &mut lat_ms),
        (format!("after the first {} s", a.warmup_s), &mut steady_ms),
    ] {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "fix → webhook latency, {what} ({} revisions): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            v.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
    app.shutdown();
    app.wait().await;
    drop(pg);
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

/// When the fix that made the rule emit `alert` was published.
fn emitting_fix(
    published: &HashMap<String, BTreeMap<DateTime<Utc>, Instant>>,
    alert: &Value,
) -> Option<Instant> {
    let fixes = published.get(alert["vehicle"].as_str()?)?;
    let time = |k: &str| -> Option<DateTime<Utc>> { alert[k].as_str()?.parse().ok() };
    match (alert["kind"].as_str()?, alert["status"].as_str()?) {
        ("overspeed", "open") => {
            let ms = (alert["details"]["duration_s"].as_f64()? * 1e3).round() as i64;
            fixes
                .get(&(time("start")? + TimeDelta::milliseconds(ms)))
                .copied()
        }
        ("overspeed", "closed") => fixes
            .range(time("end")? + TimeDelta::milliseconds(1)..)
            .next()
            .map(|(_, at)| *at),
        (_, _) => fixes.get(&time("end").or_else(|| time("start"))?).copied(),
    }
}

/// A webhook receiver on loopback answering 200; returns its address.
async fn receiver(got: Arc<Mutex<Vec<Got>>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock, got.clone()));
        }
    });
    addr
}

/// Serves one connection's requests (keep-alive), recording each body's alerts.
async fn serve(mut sock: tokio::net::TcpStream, got: Arc<Mutex<Vec<Got>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let (head_end, len) = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (i + 4, len);
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let at = Instant::now();
        if let Ok(body) = serde_json::from_slice::<Value>(&buf[head_end..head_end + len]) {
            let mut g = got.lock().unwrap();
            for alert in body["alerts"].as_array().into_iter().flatten() {
                g.push(Got {
                    at,
                    alert: alert.clone(),
                });
            }
        }
        buf.drain(..head_end + len);
        if sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}
