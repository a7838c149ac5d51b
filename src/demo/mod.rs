//! `fleetwatch demo` (a simulated fleet through the whole pipeline, with a live
//! summary) and `fleetwatch simulate` (a load generator for any broker).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

mod devices;

use crate::app::App;
use crate::config::Settings;
use crate::domain::Vehicle;
use crate::pipeline::topic::TopicPattern;
use crate::sim::{SimFix, Simulator, DEMO_SEED};
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
    /// Start afresh: delete the demo fleet's stored data (fixes, alerts, trips, gaps,
    /// roll-ups, rule state) and its map token, and replay a new history. Without it a
    /// demo restarted on its data goes on from where the stored data ends.
    #[arg(long)]
    pub fresh: bool,
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
        let cfg = crate::sources::mqtt::MqttConfig {
            client_id: client_id.to_string(),
            ..Default::default()
        };
        Ok(Self::connect_with(&cfg, url)?)
    }

    /// Connects to `url` with the client id, credentials and CA file of `cfg`.
    pub fn connect_with(
        cfg: &crate::sources::mqtt::MqttConfig,
        url: &str,
    ) -> Result<Publisher, crate::sources::mqtt::MqttError> {
        let mut o: MqttOptions = crate::sources::mqtt::options(cfg, url)?;
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

/// What a demo keeps in its data directory (`demo.json`, mode 0600) so that a restart
/// goes on with the same simulation and the same map link.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct DemoState {
    /// Seed of the simulated fleet.
    seed: u64,
    /// Simulated time zero: the fleet is deterministic from (seed, start).
    start: DateTime<Utc>,
    /// The map's regulator token (the database keeps only its hash).
    map_token: Option<String>,
}

impl DemoState {
    fn path(settings: &Settings) -> PathBuf {
        settings.database.data_dir.join("demo.json")
    }

    fn load(path: &Path) -> Option<DemoState> {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable demo state");
                None
            }
        }
    }

    /// Writes the state readable by its owner only (it holds a token), atomically.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// 127.0.0.1:`port` when it is free (TCP and UDP), else any free port.
fn demo_listen(port: u16) -> std::net::SocketAddr {
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let free = std::net::TcpListener::bind(at).is_ok() && std::net::UdpSocket::bind(at).is_ok();
    match free {
        true => at,
        false => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// Label of the demo's map token in `api_tokens`.
const DEMO_TOKEN_LABEL: &str = "demo map";

/// Deletes everything stored about `vehicles` (`--fresh`), in one transaction.
async fn forget_vehicles(
    client: &tokio_postgres::Client,
    vehicles: &[String],
) -> anyhow::Result<()> {
    client.batch_execute("BEGIN").await?;
    let r = async {
        for table in ["reminder_log", "deliveries"] {
            client
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE alert_id IN
                             (SELECT alert_id FROM alerts WHERE vehicle_id = ANY($1))"
                    ),
                    &[&vehicles],
                )
                .await?;
        }
        for table in [
            "alerts",
            "fixes",
            "trips",
            "data_gaps",
            "rule_state",
            "rollup_daily",
            "rollup_daily_driver",
            "vehicles",
        ] {
            client
                .execute(
                    &format!("DELETE FROM {table} WHERE vehicle_id = ANY($1)"),
                    &[&vehicles],
                )
                .await?;
        }
        client
            .execute(
                "DELETE FROM api_tokens WHERE label = $1",
                &[&DEMO_TOKEN_LABEL],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>(())
    }
    .await;
    match r {
        Ok(()) => client.batch_execute("COMMIT").await?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e).context("clearing the demo's data (--fresh)");
        }
    }
    Ok(())
}

/// The newest stored fix of each of `vehicles`.
async fn last_stored(
    client: &tokio_postgres::Client,
    vehicles: &[String],
) -> anyhow::Result<HashMap<String, DateTime<Utc>>> {
    let rows = client
        .query(
            "SELECT vehicle_id, max(ts) FROM fixes WHERE vehicle_id = ANY($1) GROUP BY vehicle_id",
            &[&vehicles],
        )
        .await
        .context("reading where the demo's stored data ends")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Where a demo starts: a new history, or on from the stored data.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// Simulated time zero.
    start: DateTime<Utc>,
    /// Simulated silently (nothing published) up to here.
    skip_to: DateTime<Utc>,
    /// Per vehicle, fixes at or before this are already stored: not published again.
    stored_until: HashMap<String, DateTime<Utc>>,
    /// What to tell the user.
    note: String,
}

/// Plans a demo at wall time `now` from the stored data's end per vehicle and the
/// state a previous run left. The fleet is deterministic from (seed, start): resuming
/// the previous run's simulation gives each vehicle the track it would have had, so
/// its stored track goes on without a jump back in time or place.
fn plan(
    now: DateTime<Utc>,
    history: chrono::Duration,
    stored_until: HashMap<String, DateTime<Utc>>,
    previous: Option<&DemoState>,
) -> Plan {
    let (Some(first_end), Some(last_end)) = (
        stored_until.values().min().copied(),
        stored_until.values().max().copied(),
    ) else {
        return Plan {
            start: now - history,
            skip_to: now - history,
            stored_until,
            note: format!(
                "a new demo: replaying {} h of history",
                history.num_minutes() as f64 / 60.0
            ),
        };
    };
    match previous.filter(|p| p.seed == DEMO_SEED && p.start <= last_end) {
        Some(p) => {
            // After a long stop, do not replay days of downtime: go on at most
            // `history` before now (the gap is a real gap: the demo was off).
            let skip_to = first_end.max(p.start).max(now - history);
            Plan {
                start: p.start,
                skip_to,
                note: format!(
                    "resuming the demo fleet where its stored data ends ({}; --fresh starts afresh)",
                    last_end.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                stored_until,
            }
        }
        // Stored data without (or with another) simulation to resume: a new fleet
        // from the end of the stored data, never over it.
        None => {
            let start = last_end.max(now - history) + chrono::Duration::seconds(1);
            Plan {
                start,
                skip_to: start,
                note: format!(
                    "stored demo data ends {}: a new simulation starts after it (--fresh starts afresh)",
                    last_end.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                stored_until,
            }
        }
    }
}

/// Runs the demo until `stop` (or the duration) ends it.
pub async fn run_demo(
    mut settings: Settings,
    opts: DemoOptions,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut fleet: Vec<Vehicle> = Simulator::demo(DEMO_SEED, Utc::now())
        .vehicles()
        .iter()
        .map(crate::sim::SimVehicle::registration)
        .collect();
    devices::fit_devices(&mut fleet);
    // The device listeners on their usual ports (a free one where taken), unless the
    // configuration names its own: part of the fleet reports through them.
    if !settings.gateway.any() {
        let g = &mut settings.gateway;
        g.gt06.listen = Some(demo_listen(5023));
        g.jt808.listen = Some(demo_listen(5015));
        g.teltonika.listen = Some(demo_listen(5027));
        g.osmand.listen = Some(demo_listen(5055));
    }
    // The demo fleet is registered unless the configuration already lists it.
    for v in &fleet {
        if !settings.vehicles.iter().any(|r| r.id == v.id) {
            settings.vehicles.push(v.clone());
        }
    }
    // The demo area's routes and zones, unless the configuration names its own.
    if settings.geo == crate::geo::GeoConfig::default() {
        settings.geo.demo = true;
    }
    // One connection unless configured: a shared subscription over several spreads a
    // vehicle's fixes over connections, and at replay speed the rules' reorder window
    // (10 s of event time, 170 ms of wall time at 60x) is too short to put them back
    // in order: they would be flagged late. One connection carries the demo's rate.
    if settings.mqtt.connections == 0 {
        settings.mqtt.connections = 1;
    }
    let state_path = DemoState::path(&settings);
    let mut previous = DemoState::load(&state_path);
    if opts.fresh {
        previous = None;
        let _ = std::fs::remove_file(&state_path);
    }
    let ids: Vec<String> = fleet.iter().map(|v| v.id.to_string()).collect();
    let fresh = opts.fresh;
    let pattern = TopicPattern::parse(&settings.mqtt.topic)?;
    // Before the pipeline restores its rule state: --fresh must clear that too.
    let (app, stored_until) = App::start_with(settings, async |client: &tokio_postgres::Client| {
        if fresh {
            forget_vehicles(client, &ids).await?;
        }
        last_stored(client, &ids).await
    })
    .await?;
    let history = chrono::Duration::seconds((opts.history_h.max(0.0) * 3600.0) as i64);
    // Whole seconds: the fleet's times are its start plus whole seconds.
    let now = chrono::DurationRound::duration_trunc(Utc::now(), chrono::Duration::seconds(1))
        .unwrap_or_else(|_| Utc::now());
    let plan = plan(now, history, stored_until, previous.as_ref());
    let mut sim = Simulator::demo(DEMO_SEED, plan.start);
    // Deterministic: the skipped part is what was stored (or the downtime); an hour
    // at a time so a long downtime does not pile up fixes in memory.
    loop {
        let left = plan.skip_to - sim.now();
        // Whole milliseconds: `advance` does nothing with less.
        if left.num_milliseconds() <= 0 {
            break;
        }
        let _ = sim.advance(left.min(chrono::Duration::hours(1)));
    }
    let map_token = map_token(&app, previous.as_ref().and_then(|p| p.map_token.as_deref())).await?;
    DemoState {
        seed: DEMO_SEED,
        start: plan.start,
        map_token: Some(map_token.clone()),
    }
    .save(&state_path)?;
    println!(
        "fleetwatch demo: broker {}  |  metrics http://{}/metrics  |  Ctrl-C to stop",
        crate::app::redact(&app.mqtt_url),
        app.http_addr
    );
    println!("{}", plan.note);
    println!("map: {}", map_url(&app, &map_token));
    let publisher = Publisher::connect(&app.mqtt_url, "fleetwatch-demo-fleet")?;
    let devices = devices::Devices::start(&app.gateway);
    if !devices.summary.is_empty() {
        println!("devices: {}", devices.summary.join("  |  "));
    }
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
                if plan
                    .stored_until
                    .get(f.vehicle.as_str())
                    .is_some_and(|until| f.ts <= *until)
                {
                    continue;
                }
                sent += 1;
                if devices.send(&f).await {
                    continue;
                }
                publisher.publish(topic_of(&pattern, &f), f.payload).await?;
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
    let to_devices = devices.sent.load(Ordering::Relaxed);
    publisher
        .finish(sent - to_devices, Duration::from_secs(10))
        .await;
    devices.finish().await;
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

/// The demo's map token: the previous run's while it is still a stored regulator
/// token (a browser tab keeps working across restarts), else a new one replacing any
/// other demo token.
async fn map_token(app: &App, previous: Option<&str>) -> anyhow::Result<String> {
    use crate::api::auth::{self, Role};
    let client = crate::store::connect(&app.db_url)
        .await
        .context("connecting for the demo's map token")?;
    if let Some(token) = previous {
        if let Some((Role::Regulator, Some(label))) = auth::token_role(&client, token).await? {
            if label == DEMO_TOKEN_LABEL {
                return Ok(token.to_string());
            }
        }
    }
    client
        .execute(
            "DELETE FROM api_tokens WHERE label = $1",
            &[&DEMO_TOKEN_LABEL],
        )
        .await
        .context("replacing the demo's map token")?;
    Ok(auth::create_token(&client, Role::Regulator, None, Some(DEMO_TOKEN_LABEL)).await?)
}

/// The map page's URL with the token in its fragment, which the browser keeps to itself.
fn map_url(app: &App, token: &str) -> String {
    let mut addr = app.http_addr;
    // A wildcard listen address is not something a browser can open.
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}/map#token={token}")
}

/// Prints every alert fleetwatch publishes, as a cooperative's dispatcher would see it.
fn print_alerts(url: &str) -> anyhow::Result<JoinHandle<()>> {
    let cfg = crate::sources::mqtt::MqttConfig {
        client_id: "fleetwatch-demo-dispatcher".into(),
        ..Default::default()
    };
    let mut o = crate::sources::mqtt::options(&cfg, url)?;
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_restart_resumes_the_recorded_simulation_and_never_replays_over_stored_data() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let h6 = chrono::Duration::hours(6);
        let min = chrono::Duration::minutes;
        // Nothing stored: a new history.
        let p = plan(now, h6, HashMap::new(), None);
        assert_eq!((p.start, p.skip_to), (now - h6, now - h6));
        // Stopped 10 minutes ago: the same simulation, on from the earliest end.
        let first = DemoState {
            seed: DEMO_SEED,
            start: now - h6 - min(30),
            map_token: None,
        };
        let ends = HashMap::from([
            ("A".to_string(), now - min(11)),
            ("B".to_string(), now - min(10)),
        ]);
        let p = plan(now, h6, ends.clone(), Some(&first));
        assert_eq!(p.start, first.start);
        assert_eq!(p.skip_to, now - min(11));
        assert_eq!(p.stored_until, ends);
        // Stopped for two days: on from `history` before now, not over the downtime.
        let old = HashMap::from([("A".to_string(), now - chrono::Duration::days(2))]);
        let long_ago = DemoState {
            start: now - chrono::Duration::days(3),
            ..first.clone()
        };
        let p = plan(now, h6, old, Some(&long_ago));
        assert_eq!((p.start, p.skip_to), (long_ago.start, now - h6));
        // Stored data but no state to resume (or another seed): a new fleet after it.
        for previous in [
            None,
            Some(&DemoState {
                seed: 7,
                ..first.clone()
            }),
        ] {
            let p = plan(now, h6, ends.clone(), previous);
            assert_eq!(p.start, now - min(10) + chrono::Duration::seconds(1));
        }
    }
}
