//! End-to-end load run (not criterion: one long measured run).
//!
//! `cargo bench --bench e2e -- [--broker embedded|mosquitto|URL] [--fixes N] [--vehicles N]
//!  [--soak-s S --rate R] [--mosquitto-conf FILE] [--persist] [--connections N] [--late P]`
//!
//! `--persist` keeps the Mosquitto configuration's persistence (files in a fresh
//! temporary directory) instead of turning it off; `--mosquitto-conf` runs another
//! configuration than config/mosquitto.conf (e.g. the former one, to compare).
//!
//! In one run, on the same machine and broker:
//! 1. raw broker pass-through: QoS 1 publishers → one QoS 1 subscriber, no processing;
//! 2. raw binary COPY rows/s into a table shaped like `fixes` (with and without its key);
//! 3. the pipeline: simulator fixes → broker → fleetwatch (decode, validate, batch COPY,
//!    commit, ack) → PostgreSQL, sustained fixes/s;
//!
//! and reports 3 as a ratio of the slower of 1 and 2. With `--soak-s`, publishes at
//! `--rate` for that long and samples the process RSS every 10 s.
//!
//! `--late P` adds a second pipeline run on the same fleetwatch: the same number of
//! fixes a day later in fleet time, a share P of them each held back by 1 min to 2 h of
//! its vehicle's time (use few vehicles, e.g. `--vehicles 40`, so a vehicle's track
//! spans hours), and reports it as a share of the in-order run.
//!
//! `--gateway N [--gateway-s S] [--burst K]` measures the device gateway instead of 1
//! and 2: N JT/T 808 terminals on their own TCP connections (in a child process) log
//! in, report one location every 10 s for S s (60), then send K locations each (20)
//! back to back, each after the previous one's reply; then 3 runs with N × K fixes
//! for comparison, in the same run and process. See `device_fleet`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleetwatch::app::App;
use fleetwatch::config::Settings;
use fleetwatch::demo::Publisher;
use fleetwatch::infra::broker::{free_port, EmbeddedBroker};

use fleetwatch::pipeline::topic::TopicPattern;
use fleetwatch::sim::Simulator;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

mod device_fleet;
mod support;

struct Args {
    broker: String,
    fixes: usize,
    vehicles: usize,
    publishers: usize,
    soak_s: u64,
    rate: f64,
    no_rules: bool,
    /// fleetwatch's MQTT connections (shared subscription); 0: its default.
    connections: usize,
    /// Share of the fixes arriving late in the second pipeline run (0: no such run).
    late: f64,
    mosquitto_conf: Option<String>,
    persist: bool,
    /// Device connections of the gateway run (0: no gateway run).
    gateway: usize,
    gateway_s: u64,
    gateway_interval_s: u64,
    burst: usize,
    /// Set in the child process that plays the terminals: the listener's address.
    gateway_client: Option<std::net::SocketAddr>,
}

fn args() -> Args {
    let mut a = Args {
        broker: "embedded".into(),
        fixes: 300_000,
        vehicles: 10_000,
        publishers: 4,
        soak_s: 0,
        rate: 10_000.0,
        no_rules: false,
        late: 0.0,
        connections: 0,
        mosquitto_conf: None,
        persist: false,
        gateway: 0,
        gateway_s: 60,
        gateway_interval_s: 10,
        burst: 20,
        gateway_client: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let next = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--broker" => a.broker = next(),
            "--fixes" => a.fixes = next().parse().expect("--fixes N"),
            "--vehicles" => a.vehicles = next().parse().expect("--vehicles N"),
            "--publishers" => a.publishers = next().parse().expect("--publishers N"),
            "--soak-s" => a.soak_s = next().parse().expect("--soak-s S"),
            "--rate" => a.rate = next().parse().expect("--rate R"),
            "--late" => a.late = next().parse().expect("--late P"),
            "--connections" => a.connections = next().parse().expect("--connections N"),
            "--mosquitto-conf" => a.mosquitto_conf = Some(next()),
            "--gateway" => a.gateway = next().parse().expect("--gateway N"),
            "--gateway-s" => a.gateway_s = next().parse().expect("--gateway-s S"),
            "--gateway-interval-s" => {
                a.gateway_interval_s = next().parse().expect("--gateway-interval-s S")
            }
            "--burst" => a.burst = next().parse().expect("--burst K"),
            "--gateway-client" => {
                a.gateway_client = Some(next().parse().expect("--gateway-client ADDR"))
            }
            "--persist" => {
                a.persist = true;
                i += 1;
                continue;
            }
            "--no-rules" => {
                a.no_rules = true;
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

/// Messages as the simulator makes them (generated before timing starts).
fn messages(n: usize, vehicles: usize) -> Vec<(String, Vec<u8>)> {
    messages_from(n, vehicles, Utc::now() - chrono::Duration::days(10))
}

/// `n` messages of `vehicles` at 1 Hz from `start`, round by round.
fn messages_from(
    n: usize,
    vehicles: usize,
    start: chrono::DateTime<Utc>,
) -> Vec<(String, Vec<u8>)> {
    let pattern = TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap();
    let mut sim = Simulator::load_with_interval(vehicles, 1, start, chrono::Duration::seconds(1));
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        for f in sim.advance(chrono::Duration::seconds(1)) {
            if out.len() == n {
                break;
            }
            out.push((pattern.topic(&f.cooperative, &f.vehicle), f.payload));
        }
    }
    out
}

/// Holds back a share `p` of `msgs` (rounds of `vehicles` messages, 1 s apart) by 1 min
/// to 2 h of fleet time each (uniform), deterministically; the rest keep their order.
fn hold_back(msgs: Vec<(String, Vec<u8>)>, vehicles: usize, p: f64) -> Vec<(String, Vec<u8>)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut keyed: Vec<(usize, usize, (String, Vec<u8>))> = msgs
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let delay_s = if rnd() < p {
                60.0 + rnd() * 7140.0
            } else {
                0.0
            };
            (i + delay_s as usize * vehicles, i, m)
        })
        .collect();
    keyed.sort_by_key(|&(k, i, _)| (k, i));
    keyed.into_iter().map(|(_, _, m)| m).collect()
}

async fn publish_parallel(url: &str, msgs: &[(String, Vec<u8>)], publishers: usize) {
    // Each publisher takes whole vehicles (by topic), so a vehicle's fixes go out in
    // the order given: parallel publishers do not make them late.
    let mut parts: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); publishers.max(1)];
    for m in msgs {
        let h =
            m.0.bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let k = (h % parts.len() as u64) as usize;
        parts[k].push(m.clone());
    }
    let mut tasks = Vec::new();
    for (k, part) in parts.into_iter().enumerate() {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let p =
                Publisher::connect(&url, &format!("bench-pub-{k}-{}", std::process::id())).unwrap();
            let n = part.len() as u64;
            for (t, m) in part {
                p.publish(t, m).await.unwrap();
            }
            p.finish(n, Duration::from_secs(600)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// 1. Raw broker pass-through, QoS 1 both ways.
async fn raw_broker(url: &str, msgs: &[(String, Vec<u8>)], publishers: usize) -> f64 {
    let u = url::Url::parse(url).unwrap();
    let mut o = MqttOptions::new(
        format!("bench-sub-{}", std::process::id()),
        u.host_str().unwrap(),
        u.port().unwrap(),
    );
    if !u.username().is_empty() {
        o.set_credentials(u.username(), u.password().unwrap_or_default());
    }
    o.set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(o, 10_000);
    client
        .subscribe("fleet/+/+/fix", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    let total = msgs.len();
    let sub = tokio::spawn(async move {
        let mut n = 0;
        let mut first = None;
        while n < total {
            if let Event::Incoming(Packet::Publish(_)) = ev.poll().await.unwrap() {
                first.get_or_insert_with(Instant::now);
                n += 1;
            }
        }
        first.unwrap().elapsed()
    });
    let started = Instant::now();
    publish_parallel(url, msgs, publishers).await;
    let _ = sub.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    client.disconnect().await.ok();
    total as f64 / secs
}

/// 2. Raw binary COPY of the same rows.
async fn raw_copy(db: &str, rows: usize, with_key: bool) -> f64 {
    use fleetwatch::store::writer::{FIX_COLUMNS, FIX_TYPES};
    use futures_util::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    let client = fleetwatch::store::connect(db).await.unwrap();
    let like = if with_key {
        "INCLUDING ALL"
    } else {
        "INCLUDING DEFAULTS"
    };
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS copy_bench; CREATE TABLE copy_bench (LIKE fixes {like})"
        ))
        .await
        .unwrap();
    let base = Utc::now() - chrono::Duration::days(1);
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let n = 2000.min(rows - done);
        let sink = client
            .copy_in(&format!(
                "COPY copy_bench ({FIX_COLUMNS}) FROM STDIN BINARY"
            ))
            .await
            .unwrap();
        let w = BinaryCopyInWriter::new(sink, &FIX_TYPES);
        pin_mut!(w);
        for i in done..done + n {
            let v = format!("61C-{:06}", i % 10_000);
            let ts = base + chrono::Duration::seconds((i / 10_000) as i64);
            w.as_mut()
                .write(&[
                    &v,
                    &ts,
                    &"HTX-BENCH",
                    &10.9f64,
                    &106.7f64,
                    &42.0f32,
                    &Some(90.0f32),
                    &Some("079123456789"),
                    &Some(true),
                    &Some(9i16),
                    &Some(0.9f32),
                    &Some(1234.5f64),
                    &0i16,
                    &Utc::now(),
                ])
                .await
                .unwrap();
        }
        w.finish().await.unwrap();
        done += n;
    }
    let r = rows as f64 / started.elapsed().as_secs_f64();
    client.batch_execute("DROP TABLE copy_bench").await.unwrap();
    r
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Mosquitto(std::process::Child, String);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mosquitto with `conf` (default: the shipped config/mosquitto.conf). `persist`: keep
/// its persistence settings (files in a fresh temporary directory); else persistence off.
fn start_mosquitto(conf: Option<&str>, persist: bool) -> Mosquitto {
    let port = free_port().unwrap();
    let dir = std::env::temp_dir().join(format!("fw-bench-mosq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = conf.map_or_else(
        || concat!(env!("CARGO_MANIFEST_DIR"), "/config/mosquitto.conf").to_string(),
        str::to_string,
    );
    let shipped = std::fs::read_to_string(&path).expect("mosquitto configuration");
    let persistence = if persist {
        format!("persistence_location {}/", dir.display())
    } else {
        "persistence false".to_string()
    };
    let conf = dir.join("m.conf");
    std::fs::write(
        &conf,
        format!("{shipped}\nlistener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\nuser root\n"),
    )
    .unwrap();
    let child = std::process::Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto installed");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Mosquitto(child, format!("mqtt://127.0.0.1:{port}"))
}

fn main() {
    let a = args();
    // Both processes of the gateway run hold one socket per terminal.
    let open_files = device_fleet::raise_open_files();
    if let Some(addr) = a.gateway_client {
        device_fleet::client_main(addr, fleet_args(&a));
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(a, open_files));
}

fn fleet_args(a: &Args) -> device_fleet::FleetArgs {
    device_fleet::FleetArgs {
        terminals: a.gateway,
        steady_s: a.gateway_s,
        interval_s: a.gateway_interval_s,
        burst: a.burst,
    }
}

async fn run(a: Args, open_files: (u64, u64)) {
    let _mosq;
    let url = match a.broker.as_str() {
        "embedded" => EmbeddedBroker::start(0).unwrap().url(),
        "mosquitto" => {
            _mosq = start_mosquitto(a.mosquitto_conf.as_deref(), a.persist);
            _mosq.1.clone()
        }
        other => other.to_string(),
    };
    let dir = std::env::temp_dir().join(format!("fw-bench-pg-{}", std::process::id()));
    let (pg, db, mut c, _) = support::private_db(&dir, false, "bench").await;

    if a.gateway > 0 {
        gateway(&a, &url, (&db, pg.cluster_dir()), &mut c, open_files).await;
        drop(pg);
        let _ = std::fs::remove_dir_all(dir);
        return;
    }

    println!(
        "machine: {} cores; broker {} ({url}); {} fixes, {} vehicles, {} publishers",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.broker,
        a.fixes,
        a.vehicles,
        a.publishers
    );
    let msgs = messages(a.fixes, a.vehicles);

    let broker_rate = raw_broker(&url, &msgs, a.publishers).await;
    println!("raw broker pass-through (QoS 1):    {broker_rate:>10.0} msg/s");
    let copy_rate = raw_copy(&db, a.fixes, false).await;
    println!("raw binary COPY (no index):         {copy_rate:>10.0} rows/s");
    let copy_key_rate = raw_copy(&db, a.fixes, true).await;
    println!("raw binary COPY (with primary key): {copy_key_rate:>10.0} rows/s");

    let app = App::start(settings(&a, &url, &db)).await.unwrap();
    let e2e = pipeline_rate(&app, &url, &msgs, a.publishers).await;
    let slower = broker_rate.min(copy_rate);
    println!("pipeline end to end, rules {} (acks after commit): {e2e:>10.0} fixes/s = {:.0} % of the slower raw limit ({slower:.0}/s)",
        if a.no_rules { "off" } else { "on" }, 100.0 * e2e / slower);
    println!(
        "RSS after the run: {:.0} MiB (this process: app + broker if embedded + publishers)",
        rss_mib()
    );
    if a.late > 0.0 {
        let start = Utc::now() - chrono::Duration::days(9);
        let late = hold_back(
            messages_from(a.fixes, a.vehicles, start),
            a.vehicles,
            a.late,
        );
        let stats = fleetwatch::telemetry::stats();
        let replayed0 = stats.replayed.load(Ordering::Relaxed);
        let started = Instant::now();
        let rate = pipeline_rate(&app, &url, &late, a.publishers).await;
        // Stored is not the end: the recomputations for the late fixes finish after.
        while stats.recomputing.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let all = late.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "pipeline with {:.0} % of the fixes 1 min to 2 h late: stored {rate:.0} fixes/s = {:.0} % of in order; rules done {all:.0} fixes/s = {:.0} %; {} stored fixes replayed",
            100.0 * a.late,
            100.0 * rate / e2e,
            100.0 * all / e2e,
            stats.replayed.load(Ordering::Relaxed) - replayed0
        );
    }

    if a.soak_s > 0 {
        let stats = fleetwatch::telemetry::stats();
        let stored0 = stats.stored.load(Ordering::Relaxed);
        let pattern = TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap();
        let mut sim = Simulator::load_with_interval(
            a.vehicles,
            2,
            Utc::now() - chrono::Duration::days(5),
            chrono::Duration::seconds(1),
        );
        let p = Publisher::connect(&url, "bench-soak").unwrap();
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut next_sample = Duration::ZERO;
        let mut buf = std::collections::VecDeque::new();
        println!(
            "soak: {} fixes/s for {} s; RSS samples (MiB):",
            a.rate, a.soak_s
        );
        while t0.elapsed() < Duration::from_secs(a.soak_s) {
            let due = (t0.elapsed().as_secs_f64() * a.rate) as u64;
            while sent < due {
                if buf.is_empty() {
                    buf.extend(sim.advance(chrono::Duration::seconds(1)));
                }
                let f: fleetwatch::sim::SimFix = buf.pop_front().unwrap();
                p.publish(pattern.topic(&f.cooperative, &f.vehicle), f.payload)
                    .await
                    .unwrap();
                sent += 1;
            }
            if t0.elapsed() >= next_sample {
                println!(
                    "  t={:>4}s  rss={:.0}  stored={}",
                    t0.elapsed().as_secs(),
                    rss_mib(),
                    stats.stored.load(Ordering::Relaxed) - stored0
                );
                next_sample += Duration::from_secs(10);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p.finish(sent, Duration::from_secs(60)).await;
        println!("soak done: sent {sent}, rss {:.0} MiB", rss_mib());
    }
    app.shutdown();
    app.wait().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}

/// fleetwatch's settings for the run: the private database, the broker at `url`.
fn settings(a: &Args, url: &str, db: &str) -> Settings {
    let mut s = Settings::default();
    s.database.url = db.to_string();
    s.mqtt.url = url.to_string();
    s.mqtt.client_id = format!("bench-fleetwatch-{}", std::process::id());
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.disable_rules = a.no_rules;
    s.mqtt.connections = match a.connections {
        // What `run` does on its embedded broker (100 in flight per connection).
        0 if a.broker == "embedded" => 4,
        n => n,
    };
    s
}

/// The pipeline (3 above): publishes `msgs` and waits until `app` stored them all;
/// fixes/s from the first publish to the last commit.
async fn pipeline_rate(app: &App, url: &str, msgs: &[(String, Vec<u8>)], publishers: usize) -> f64 {
    while !app.health.subscribed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = fleetwatch::telemetry::stats();
    let stored0 = stats.stored.load(Ordering::Relaxed);
    let started = Instant::now();
    let h = app.health.clone();
    let progress = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            eprintln!(
                "  progress: received {} processed {} stored {}",
                h.messages.load(Ordering::Relaxed),
                stats.messages.load(Ordering::Relaxed),
                stats.stored.load(Ordering::Relaxed)
            );
        }
    });
    publish_parallel(url, msgs, publishers).await;
    eprintln!(
        "  published all after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    while stats.stored.load(Ordering::Relaxed) - stored0 < msgs.len() as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    progress.abort();
    msgs.len() as f64 / started.elapsed().as_secs_f64()
}

/// The gateway run: the terminals' phases, then the MQTT pipeline with as many fixes
/// as the burst, on the same fleetwatch.
async fn gateway(
    a: &Args,
    url: &str,
    (db, pg_dir): (&str, &std::path::Path),
    c: &mut tokio_postgres::Client,
    (soft, hard): (u64, u64),
) {
    let n = a.gateway;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores, load average {}; open files per process: soft {soft}, hard {hard}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Err(e) = device_fleet::fits(n, soft) {
        eprintln!("--gateway {n}: {e}");
        std::process::exit(2);
    }
    // One transaction: one commit for the whole registry, not one per vehicle.
    let t = Instant::now();
    let tx = c.transaction().await.unwrap();
    fleetwatch::store::registry::register(&tx, &device_fleet::vehicles(n))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    println!(
        "registered {n} vehicles with JT/T 808 terminals in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut s = settings(a, url, db);
    s.gateway.jt808.listen = Some("127.0.0.1:0".parse().unwrap());
    s.gateway.jt808_auth_secret = Some("bench secret".into());
    s.gateway.max_connections = n + 1000;
    let app = App::start(s).await.unwrap();
    let addr = app
        .gateway
        .iter()
        .find(|(p, _)| *p == "jt808")
        .map(|(_, a)| *a)
        .expect("the JT/T 808 listener runs");
    while !app.health.subscribed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fleet = fleet_args(a);
    let run = device_fleet::measure(addr, db, pg_dir, &fleet, rss_mib).await;
    report_gateway(&run, &fleet, cores);

    let msgs = messages(n * a.burst, a.vehicles);
    let (cpu0, pg0, m0) = (
        device_fleet::cpu_s(),
        device_fleet::pg_cpu_s(pg_dir),
        device_fleet::machine_jiffies(),
    );
    let t = Instant::now();
    let mqtt = pipeline_rate(&app, url, &msgs, a.publishers).await;
    let secs = t.elapsed().as_secs_f64();
    let per_fix_us = |cpu_s: f64| 1e6 * cpu_s / msgs.len() as f64;
    let burst = run.phases.iter().find(|p| p.client.phase == "burst");
    let gw = burst.map_or(0.0, |p| p.rows as f64 / p.client.secs);
    println!(
        "MQTT pipeline, same run and process ({} fixes, {} vehicles, {} publishers, rules {}): {mqtt:.0} fixes/s",
        msgs.len(),
        a.vehicles,
        a.publishers,
        if a.no_rules { "off" } else { "on" }
    );
    println!(
        "    CPU: this process (fleetwatch, publishers, embedded broker if used) {:.0} % of one core = {:.1} µs per fix; PostgreSQL {:.0} % = {:.1} µs per fix; machine {:.0} % of {cores} cores",
        100.0 * (device_fleet::cpu_s() - cpu0) / secs,
        per_fix_us(device_fleet::cpu_s() - cpu0),
        100.0 * (device_fleet::pg_cpu_s(pg_dir) - pg0) / secs,
        per_fix_us(device_fleet::pg_cpu_s(pg_dir) - pg0),
        100.0 * (device_fleet::machine_jiffies().0 - m0.0) as f64 / 100.0 / secs / cores.max(1) as f64,
    );
    println!(
        "gateway burst / MQTT pipeline: {gw:.0} / {mqtt:.0} fixes/s = {:.2}",
        gw / mqtt
    );
    println!("RSS at the end: {:.0} MiB", rss_mib());
    app.shutdown();
    app.wait().await;
}

fn report_gateway(run: &device_fleet::GatewayRun, f: &device_fleet::FleetArgs, cores: usize) {
    let n = f.terminals;
    println!("device gateway, JT/T 808 over TCP: {n} terminals (in a child process, one thread)");
    let mut acked = 0;
    for p in &run.phases {
        let c = &p.client;
        let what = match c.phase.as_str() {
            "login" => "login (register + authenticate)".to_string(),
            "steady" => format!(
                "steady, 1 location / {} s each for {} s",
                f.interval_s, f.steady_s
            ),
            _ => format!("burst, {} locations each, back to back", f.burst),
        };
        if c.phase == "login" {
            println!(
                "  {what}: {}/{n} terminals in {:.1} s ({:.0}/s), {} failed; login p50 {:.1} ms, p99 {:.1} ms",
                c.acked, c.secs, c.acked as f64 / c.secs, c.failed, c.p50_ms, c.p99_ms
            );
        } else {
            acked += c.acked;
            println!(
                "  {what}: {} sent, {} acked, {} failed; {} rows stored in {:.1} s = {:.0} fixes/s; fix to ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                c.sent, c.acked, c.failed, p.rows, c.secs, p.rows as f64 / c.secs,
                c.p50_ms, c.p99_ms, c.max_ms
            );
        }
        let per_fix = |cpu_s: f64| match c.phase.as_str() {
            "login" => String::new(),
            _ => format!(" = {:.1} µs per fix", 1e6 * cpu_s / p.rows.max(1) as f64),
        };
        println!(
            "    CPU: server {:.0} % of one core{}, PostgreSQL {:.0} %{}, client {:.0} % of its one thread, machine {:.0} % of {cores} cores (the rest: other work on the box); RSS end {:.0} MiB, peak {:.0} MiB; kernel TCP memory {:.0} MiB",
            100.0 * p.server_cpu_s / c.secs,
            per_fix(p.server_cpu_s),
            100.0 * p.pg_cpu_s / c.secs,
            per_fix(p.pg_cpu_s),
            100.0 * c.client_cpu_s / c.secs,
            100.0 * p.machine_cpu_s / c.secs / cores.max(1) as f64,
            p.rss_end_mib,
            p.rss_peak_mib,
            p.tcp_kernel_mib
        );
    }
    if let Some(login) = run.phases.first() {
        let grown = login.rss_end_mib - run.rss_before_mib;
        println!(
            "  RSS of the server process: {:.0} MiB before the connections, {:.0} MiB with {} connected: +{grown:.0} MiB = {:.1} KiB per connection; {:.0} MiB after they closed",
            run.rss_before_mib,
            login.rss_end_mib,
            login.client.connections,
            grown * 1024.0 / login.client.connections.max(1) as f64,
            run.rss_after_close_mib
        );
        println!(
            "  kernel TCP memory (both ends, outside RSS): {:.0} MiB before, {:.0} MiB connected",
            run.tcp_kernel_before_mib, login.tcp_kernel_mib
        );
    }
    println!(
        "  rows of the fleet stored: {} (acked locations: {acked}){}",
        run.rows_total,
        if run.rows_total == acked as i64 {
            ""
        } else {
            " MISMATCH"
        }
    );
}
