//! Test support: one private PostgreSQL per test binary with a migrated template
//! database (each test gets its own copy), Mosquitto on a free port, an MQTT publisher,
//! and polling with a deadline instead of sleeps.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fleetwatch::app::App;
use fleetwatch::config::Settings;
use fleetwatch::infra::broker::free_port;
use fleetwatch::infra::postgres::{EmbeddedPostgres, PgOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::OnceCell;

struct Cluster {
    pg: EmbeddedPostgres,
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();
const TEMPLATE: &str = "fleetwatch_template";

/// Data directory (option) of this test process's private PostgreSQL.
pub fn cluster_dir() -> PathBuf {
    std::env::temp_dir().join(format!("fleetwatch-test-pg-{}", std::process::id()))
}

async fn cluster() -> &'static Cluster {
    CLUSTER
        .get_or_init(|| async {
            fleetwatch::telemetry::init_logs();
            let dir = cluster_dir();
            let _ = std::fs::remove_dir_all(&dir);
            let opts = PgOptions {
                data_dir: dir.clone(),
                fast_unsafe: true,
                timescaledb: true,
            };
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
                .await
                .unwrap()
                .expect("private PostgreSQL starts");
            watchdog(pg.cluster_dir().to_path_buf(), dir);
            pg.ensure_database(TEMPLATE).await.unwrap();
            let mut c = fleetwatch::store::connect(&pg.url(TEMPLATE)).await.unwrap();
            fleetwatch::store::migrate::migrate(&mut c, &Default::default())
                .await
                .unwrap();
            drop(c);
            // TimescaleDB's scheduler connects to every database with the extension,
            // and a database being copied must have no sessions: the template takes
            // none (the copies do).
            let admin = fleetwatch::store::connect(&pg.url("postgres"))
                .await
                .unwrap();
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {TEMPLATE} WITH ALLOW_CONNECTIONS false;
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = '{TEMPLATE}' AND pid <> pg_backend_pid();"
                ))
                .await
                .unwrap();
            Cluster { pg }
        })
        .await
}

/// Statics are never dropped: a watcher process stops the server (and removes its
/// directory) when this test process exits, however it exits.
fn watchdog(cluster: PathBuf, dir: PathBuf) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         kill -INT $(head -1 '{c}/postmaster.pid') 2>/dev/null; sleep 2; rm -rf '{d}'",
        pid = std::process::id(),
        c = cluster.display(),
        d = dir.display()
    );
    // Deliberately not waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    let _watcher = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watchdog");
}

/// A fresh database (copy of the migrated template); returns its URL.
pub async fn fresh_db() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster().await;
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let admin = fleetwatch::store::connect(&c.pg.url("postgres"))
        .await
        .unwrap();
    // The template's last session (the migration's, TimescaleDB's scheduler) may take
    // a moment to end: PostgreSQL refuses the copy until then (SQLSTATE 55006).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
        {
            Ok(()) => break,
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("creating {name}: {e:?}"),
        }
    }
    c.pg.url(&name)
}

/// Settings for a test instance: given DB and broker, port 0, quick batches.
pub fn settings(db_url: &str, mqtt_url: &str, client_id: &str) -> Settings {
    let mut s = Settings::default();
    s.database.url = db_url.to_string();
    s.mqtt.url = mqtt_url.to_string();
    s.mqtt.client_id = client_id.to_string();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.batch.max_wait_ms = 20;
    s.shutdown_deadline_s = 10;
    s
}

/// Starts an instance and waits until its subscription is confirmed.
pub async fn start_app(s: Settings) -> App {
    let app = App::start(s).await.expect("app starts");
    let h = app.health.clone();
    wait_until("subscribed", Duration::from_secs(20), || {
        let ok = h.subscribed.load(Ordering::Relaxed);
        async move { ok }
    })
    .await;
    app
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts rows of a query returning one bigint.
pub async fn count(db_url: &str, sql: &str) -> i64 {
    let c = fleetwatch::store::connect(db_url).await.unwrap();
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Publishes every message at QoS 1 and returns once the broker acked them all.
pub async fn publish_all(url: &str, msgs: &[(String, Vec<u8>)]) {
    publish_all_with(url, msgs, |_| {}).await
}

/// [`publish_all`] with options adjusted by `opts` (credentials, packet size).
pub async fn publish_all_with(
    url: &str,
    msgs: &[(String, Vec<u8>)],
    opts: impl FnOnce(&mut MqttOptions),
) {
    let u = url::Url::parse(url).unwrap();
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "pub-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut o = MqttOptions::new(id, u.host_str().unwrap(), u.port().unwrap());
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(500)
        .set_max_packet_size(1 << 20, 1 << 20);
    if !u.username().is_empty() {
        o.set_credentials(u.username(), u.password().unwrap_or_default());
    }
    opts(&mut o);
    let (client, mut ev) = AsyncClient::new(o, 1000);
    let msgs = msgs.to_vec();
    let total = msgs.len();
    let sender = tokio::spawn(async move {
        for (t, p) in msgs {
            client.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < total {
        assert!(
            Instant::now() < deadline,
            "publisher: {acked}/{total} acked"
        );
        match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher connection: {e}"),
            Err(_) => {}
        }
    }
    let client = sender.await.unwrap();
    client.disconnect().await.unwrap();
    // Flush the disconnect.
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await {
        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
}

/// A Mosquitto broker on a free port with the shipped config; killed on drop.
pub struct Mosquitto {
    child: Child,
    /// `mqtt://127.0.0.1:PORT`.
    pub url: String,
    /// Working directory (configuration, persistence, test credentials).
    pub dir: PathBuf,
    conf_path: PathBuf,
    port: u16,
}

impl Mosquitto {
    /// Starts Mosquitto (the binary must be installed: `apt-get install mosquitto`).
    pub fn start() -> Mosquitto {
        Self::start_with("", |_| String::new())
    }

    /// Starts Mosquitto with `head` before the shipped configuration and more after the
    /// anonymous listener on `url`; `extra` gets the broker's working directory.
    pub fn start_with(head: &str, extra: impl FnOnce(&std::path::Path) -> String) -> Mosquitto {
        let port = free_port().unwrap();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fleetwatch-mosq-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/mosquitto.conf"),
        )
        .unwrap();
        let conf = format!(
            "{head}\n{shipped}\npersistence_location {}/\nuser root\nlog_dest stderr\nlog_type error\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n{}",
            dir.display(),
            extra(&dir)
        );
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        Mosquitto {
            child: spawn_mosquitto(&conf_path, port),
            url: format!("mqtt://127.0.0.1:{port}"),
            dir,
            conf_path,
            port,
        }
    }

    /// SIGKILLs the broker (a crash: no final save of its persistence file).
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port, configuration and persistence.
    pub fn restart(&mut self) {
        self.child = spawn_mosquitto(&self.conf_path, self.port);
    }
}

fn spawn_mosquitto(conf_path: &std::path::Path, port: u16) -> Child {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("mosquitto is installed (apt-get install -y mosquitto)");
    let child = Command::new(bin)
        .arg("-c")
        .arg(conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A canonical fix payload at `ts`.
pub fn fix(
    vehicle: &str,
    ts: chrono::DateTime<chrono::Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
) -> Vec<u8> {
    format!(
        r#"{{"vehicle":"{vehicle}","ts":"{}","lat":{lat},"lon":{lon},"speed_kmh":{speed_kmh},"heading_deg":90,"satellites":9,"hdop":0.9}}"#,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .into_bytes()
}

/// A start time for a test's track: an hour ago, whole seconds.
pub fn base_time() -> chrono::DateTime<chrono::Utc> {
    use chrono::{DurationRound, TimeDelta};
    (chrono::Utc::now() - TimeDelta::hours(1))
        .duration_trunc(TimeDelta::seconds(1))
        .unwrap()
}

/// Topic of a vehicle under the default pattern.
pub fn topic(coop: &str, vehicle: &str) -> String {
    format!("fleet/{coop}/{vehicle}/fix")
}

/// `n` fixes of `vehicles` vehicles, one second apart per vehicle, as MQTT messages.
pub fn track(
    coop: &str,
    vehicles: usize,
    n: usize,
    base: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let v = format!("T-{}", i % vehicles);
            let ts = base + chrono::Duration::seconds((i / vehicles) as i64);
            let lat = 10.9 + (i / vehicles) as f64 * 1e-4;
            (topic(coop, &v), fix(&v, ts, lat, 106.7, 30.0))
        })
        .collect()
}

/// The real `fleetwatch run` binary, killed when dropped.
pub struct Instance {
    /// The process.
    pub child: Child,
}

impl Instance {
    /// Starts `fleetwatch run` and waits until its subscription is confirmed.
    pub fn start(config: &std::path::Path, abort_after_commits: Option<u32>) -> Instance {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetwatch"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = abort_after_commits {
            cmd.env("FLEETWATCH_FAULT_ABORT_AFTER_COMMITS", n.to_string());
        }
        let mut child = cmd.spawn().expect("fleetwatch binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("subscription confirmed") {
                    let _ = tx.send(Ok(()));
                }
                seen.push(line);
            }
            // The process ended: hand its log to the test if it was still waiting.
            let _ = tx.send(Err(seen.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => panic!("fleetwatch exited before subscribing:\n{log}"),
            Err(e) => panic!("fleetwatch did not subscribe within 30 s: {e}"),
        }
        Instance { child }
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
