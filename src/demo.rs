//! `fleetwatch demo` (a simulated fleet through the whole pipeline, with a live
//! summary) and `fleetwatch simulate` (a load generator for any broker).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Settings;
use crate::domain::Vehicle;
use crate::ingest::topic::TopicPattern;
use crate::sim::{SimFix, Simulator};
use crate::telemetry;

/// Options of `fleetwatch demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Simulated minutes per real minute until the fleet catches up with the clock.
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// How many hours of history the simulation starts with (replayed at --speed),
    /// long enough for the scripted 4-hour drive without a break.
    #[arg(long, default_value_t = 6.0)]
    pub history_h: f64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration_s: Option<u64>,
}

/// Options of `fleetwatch simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateOptions {
    /// Broker URL.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// Number of vehicles.
    #[arg(long, default_value_t = 1000)]
    pub vehicles: usize,
    /// Total fixes per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop after this many fixes (default: until Ctrl-C or --duration-s).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Topic pattern.
    #[arg(long, default_value = "fleet/{cooperative}/{vehicle}/fix")]
    pub topic: String,
}

/// A QoS 1 publisher whose event loop runs in its own task.
pub struct Publisher {
    client: AsyncClient,
    /// Messages the broker acknowledged.
    pub acked: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Connects to `url` with `client_id`.
    pub fn connect(url: &str, client_id: &str) -> anyhow::Result<Publisher> {
        let cfg = crate::ingest::mqtt::MqttConfig {
            client_id: client_id.to_string(),
            ..Default::default()
        };
        Ok(Self::connect_with(&cfg, url)?)
    }

    /// Connects to `url` with the client id, credentials and CA file of `cfg`.
    pub fn connect_with(
        cfg: &crate::ingest::mqtt::MqttConfig,
        url: &str,
    ) -> Result<Publisher, crate::ingest::mqtt::MqttError> {
        let mut o: MqttOptions = crate::ingest::mqtt::options(cfg, url)?;
        // A publisher needs no session and acks automatically.
        o.set_clean_session(true)
            .set_manual_acks(false)
            .set_inflight(1000);
        let (client, mut ev) = AsyncClient::new(o, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "publisher connection error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(Publisher {
            client,
            acked,
            task,
        })
    }

    /// Publishes one fix (QoS 1); waits only when the client's queue is full.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .context("publishing")
    }

    /// Waits (bounded) until `sent` messages are acked, then disconnects.
    pub async fn finish(self, sent: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Never wait for room in the queue: the broker may be gone.
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

fn topic_of(pattern: &TopicPattern, f: &SimFix) -> String {
    pattern.topic(&f.cooperative, &f.vehicle)
}

/// Runs the demo until `stop` (or the duration) ends it.
pub async fn run_demo(
    mut settings: Settings,
    opts: DemoOptions,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let start = Utc::now() - chrono::Duration::seconds((opts.history_h * 3600.0) as i64);
    let mut sim = Simulator::demo(42, start);
    // The demo fleet is registered unless the configuration already lists it.
    for v in sim.vehicles() {
        if !settings.vehicles.iter().any(|r| r.id == v.id) {
            settings.vehicles.push(Vehicle {
                id: v.id.clone(),
                plate: Some(v.id.to_string()),
                cooperative: v.cooperative.clone(),
                class: v.class,
                route: v.route.clone(),
            });
        }
    }
    // The demo area's routes and zones, unless the configuration names its own.
    if settings.geo == crate::geo::GeoConfig::default() {
        settings.geo.demo = true;
    }
    let pattern = TopicPattern::parse(&settings.mqtt.topic)?;
    let app = App::start(settings).await?;
    println!(
        "fleetwatch demo: broker {}  |  metrics http://{}/metrics  |  Ctrl-C to stop",
        crate::app::redact(&app.mqtt_url),
        app.http_addr
    );
    println!("map: {}", map_url(&app).await?);
    let publisher = Publisher::connect(&app.mqtt_url, "fleetwatch-demo-fleet")?;
    let alerts = print_alerts(&app.mqtt_url)?;
    let deadline = opts
        .duration_s
        .map(|s| Instant::now() + Duration::from_secs(s));
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut report = Instant::now();
    let (mut sent, mut last_stored) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Catch up with the wall clock at `speed`, then run in real time.
        let lag = Utc::now() - sim.now();
        let step = chrono::Duration::milliseconds((100.0 * opts.speed.max(1.0)) as i64);
        let dt = step.min(lag);
        if dt > chrono::Duration::zero() {
            for f in sim.advance(dt) {
                publisher.publish(topic_of(&pattern, &f), f.payload).await?;
                sent += 1;
            }
        }
        if report.elapsed() >= Duration::from_secs(2) {
            let s = telemetry::stats();
            let stored = s.stored.load(Ordering::Relaxed);
            let rate = (stored - last_stored) as f64 / report.elapsed().as_secs_f64();
            last_stored = stored;
            report = Instant::now();
            let rejected = s.rejected();
            let rej_total: u64 = rejected.values().sum();
            let reasons: Vec<String> = rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
            println!(
                "sim {}  |  {:>6.0} fixes/s  |  published {sent}  stored {stored}  duplicates {}  |  rejected {rej_total}{}  |  alerts {}",
                sim.now().with_timezone(&chrono::FixedOffset::east_opt(7 * 3600).expect("valid offset")).format("%Y-%m-%d %H:%M:%S"),
                rate,
                s.duplicates.load(Ordering::Relaxed),
                if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
                s.alerts.load(Ordering::Relaxed),
            );
        }
    }
    println!("stopping: waiting for the last fixes to be stored");
    publisher.finish(sent, Duration::from_secs(10)).await;
    // The embedded broker dies with this process: let the pipeline take in all it
    // has before stopping (bounded), so the demo's own last fixes are not left behind.
    let s = telemetry::stats();
    let until = Instant::now() + Duration::from_secs(10);
    while s.stored.load(Ordering::Relaxed) + s.duplicates.load(Ordering::Relaxed) < sent
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown();
    app.wait().await;
    alerts.abort();
    let s = telemetry::stats();
    println!(
        "demo stopped: published {sent}, stored {}, rejected {}",
        s.stored.load(Ordering::Relaxed),
        s.rejected().values().sum::<u64>()
    );
    Ok(())
}

/// The map page's URL with a fresh regulator token (read-only, every cooperative) in
/// its fragment, which the browser keeps to itself.
async fn map_url(app: &App) -> anyhow::Result<String> {
    let client = crate::store::connect(&app.db_url)
        .await
        .context("connecting for the demo's map token")?;
    // One demo token at a time: the previous run's goes.
    client
        .execute("DELETE FROM api_tokens WHERE label = 'demo map'", &[])
        .await
        .context("replacing the demo's map token")?;
    let token = crate::api::auth::create_token(
        &client,
        crate::api::auth::Role::Regulator,
        None,
        Some("demo map"),
    )
    .await?;
    let mut addr = app.http_addr;
    // A wildcard listen address is not something a browser can open.
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("http://{addr}/map#token={token}"))
}

/// Prints every alert fleetwatch publishes, as a cooperative's dispatcher would see it.
fn print_alerts(url: &str) -> anyhow::Result<JoinHandle<()>> {
    let cfg = crate::ingest::mqtt::MqttConfig {
        client_id: "fleetwatch-demo-dispatcher".into(),
        ..Default::default()
    };
    let mut o = crate::ingest::mqtt::options(&cfg, url)?;
    o.set_clean_session(true).set_manual_acks(false);
    let (client, mut ev) = AsyncClient::new(o, 100);
    Ok(tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("fleet/+/+/alert", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(a) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                        println!("{}", alert_line(&a));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }))
}

/// One line per alert: local time, level, kind, vehicle, and the facts that matter.
fn alert_line(a: &serde_json::Value) -> String {
    let local = chrono::FixedOffset::east_opt(7 * 3600).expect("valid offset");
    let start = a["start"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&local).format("%H:%M:%S").to_string())
        .unwrap_or_default();
    let d = &a["details"];
    let facts: Vec<String> = [
        ("max_speed_kmh", "max km/h"),
        ("limit_kmh", "limit"),
        ("duration_s", "s"),
        ("driving_s", "driving s"),
        ("distance_m", "m off route"),
        ("zone_id", "zone"),
    ]
    .iter()
    .filter_map(|(k, label)| d.get(*k).map(|v| format!("{label} {v}")))
    .collect();
    format!(
        "  ALERT {start} {:<9} {:<9} {:<19} {} ({}) {}",
        a["status"].as_str().unwrap_or(""),
        a["level"].as_str().unwrap_or(""),
        a["kind"].as_str().unwrap_or(""),
        a["vehicle"].as_str().unwrap_or(""),
        a["driver_id"].as_str().unwrap_or("-"),
        facts.join(", ")
    )
}

/// Publishes a load fleet at a fixed rate, with a progress bar.
pub async fn run_simulate(
    opts: SimulateOptions,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let pattern = TopicPattern::parse(&opts.topic)?;
    // Start well in the past: at a rate above 1 fix/s per vehicle simulated time runs
    // ahead of the clock, and fixes must not be in the future when they arrive.
    let mut sim = Simulator::load(
        opts.vehicles.max(1),
        7,
        Utc::now() - chrono::Duration::days(20),
    );
    // Against the embedded broker of a local fleetwatch: its generated credential.
    let data_dir = crate::config::Settings::load(None)
        .map(|s| s.database.data_dir)
        .unwrap_or_else(|_| "data".into());
    let broker = crate::infra::mqtt_gate::with_local_credentials(&opts.broker, &data_dir);
    let publisher = Publisher::connect(&broker, &format!("fleetwatch-sim-{}", std::process::id()))?;
    let pb = match opts.count {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} fixes ({per_sec}) {msg}",
        )
        .expect("static template"),
    );
    let started = Instant::now();
    let deadline = opts.duration_s.map(|s| started + Duration::from_secs(s));
    let mut buffer: std::collections::VecDeque<SimFix> = Default::default();
    let mut sent = 0u64;
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut stopped = false;
    'run: loop {
        tokio::select! {
            _ = &mut stop => { stopped = true; break }
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || opts.count.is_some_and(|c| sent >= c) {
            break;
        }
        let due = (started.elapsed().as_secs_f64() * opts.rate) as u64;
        let due = opts.count.map_or(due, |c| due.min(c));
        while sent < due {
            if buffer.is_empty() {
                buffer.extend(sim.advance(chrono::Duration::seconds(1)));
                continue;
            }
            let f = buffer.pop_front().expect("not empty");
            // A publish waits while the client's queue is full (a slow or gone broker):
            // a stop must still get through.
            tokio::select! {
                r = publisher.publish(topic_of(&pattern, &f), f.payload) => r?,
                _ = &mut stop => { stopped = true; break 'run }
            }
            sent += 1;
        }
        pb.set_position(sent);
        pb.set_message(format!("acked {}", publisher.acked.load(Ordering::Relaxed)));
    }
    let acked = publisher.acked.clone();
    // Asked to stop: a short wait for the acks, not the full one.
    let wait = if stopped { 2 } else { 30 };
    publisher.finish(sent, Duration::from_secs(wait)).await;
    pb.finish_with_message(format!("acked {}", acked.load(Ordering::Relaxed)));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {sent} fixes in {secs:.1} s ({:.0}/s)",
        sent as f64 / secs
    );
    Ok(())
}
