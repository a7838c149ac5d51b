//! Failover (`[ha]`): two real `fleetwatch run` processes on one Mosquitto and one
//! PostgreSQL, the same client id and leadership group. The active one is SIGKILLed, or
//! SIGSTOPped past its lease and resumed; the standby takes over the persistent session.
//! What ends up stored must equal what a single instance (HA off, its own database,
//! its own session on the same broker, so it receives the same stream) made of it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

const COOP: &str = "HTX-HA";
const VEHICLES: usize = 8;
/// Fixes per vehicle, one a second of event time.
const PER_VEHICLE: usize = 900;

/// A `fleetwatch run` child whose log lines are kept for the test.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(config: &std::path::Path, name: &str) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,rumqttc=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fleetwatch binary starts");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = log.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ha:") || line.contains("connected to broker") {
                    eprintln!("[{name}] {line}");
                }
                l.lock().unwrap().push(line);
            }
        });
        Proc { child, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The API's address, from the "fleetwatch running" line.
    fn http_addr(&self) -> std::net::SocketAddr {
        let log = self.log.lock().unwrap();
        let line = log
            .iter()
            .find(|l| l.contains("fleetwatch running"))
            .expect("running");
        let at = line.find("http_addr=").unwrap() + "http_addr=".len();
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn lines(&self, pat: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    async fn wait_log(&self, pat: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lines(pat) == 0 {
            if Instant::now() > deadline {
                panic!(
                    "no log line {pat:?} within {timeout:?}; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bus(id: &str) -> Vehicle {
    Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse(COOP).unwrap(),
        class: VehicleClass::Bus,
        route: None,
        device_id: None,
    }
}

fn vehicle(k: usize) -> String {
    format!("51B-7{k:02}.01")
}

/// Each vehicle driven by its own driver, one fix a second: 40 km/h with a 30 s burst
/// at 85 (bus limit 70) every 3 minutes, so overspeed alerts open and close along
/// the stream, and continuous driving time accumulates.
fn stream(base: DateTime<Utc>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(VEHICLES * PER_VEHICLE);
    for i in 0..PER_VEHICLE {
        for k in 0..VEHICLES {
            let v = vehicle(k);
            let ts = (base + chrono::Duration::seconds(i as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let speed = if (i + 20 * k) % 180 >= 150 {
                85.0
            } else {
                40.0
            };
            let payload = format!(
                r#"{{"vehicle":"{v}","ts":"{ts}","lat":{:.6},"lon":{:.6},"speed_kmh":{speed},"driver_id":"0790000000{k:02}","ignition":true,"satellites":9,"hdop":0.9}}"#,
                10.95 + k as f64 * 0.01,
                106.60 + i as f64 * 1e-4
            );
            out.push((topic(COOP, &v), payload.into_bytes()));
        }
    }
    out
}

/// Publishes in paced chunks (about 20 s in all), so the faults land mid-stream.
async fn publish_paced(url: String, msgs: Vec<(String, Vec<u8>)>) {
    for chunk in msgs.chunks(200) {
        publish_all(&url, chunk).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn write_config(dir: &std::path::Path, mqtt: &str, db: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut vehicles = String::new();
    for k in 0..VEHICLES {
        vehicles.push_str(&format!(
            "[[vehicles]]\nid = \"{}\"\ncooperative = \"{COOP}\"\nclass = \"bus\"\n",
            vehicle(k)
        ));
    }
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown_deadline_s = 10\n\
             [mqtt]\nurl = \"{mqtt}\"\nclient_id = \"fw-ha\"\n\
             [database]\nurl = \"{db}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [batch]\nmax_records = 100\nmax_wait_ms = 20\n\
             [checkpoint]\ninterval_s = 2\n\
             [ha]\nenabled = true\nlease_s = 3\nname = \"test\"\n{vehicles}"
        ),
    )
    .unwrap();
    config
}

/// The single-instance reference: HA off, its own database and session.
async fn reference(mqtt: &str) -> (String, fleetwatch::app::App) {
    let db = fresh_db().await;
    let mut s = settings(&db, mqtt, "fw-ha-reference");
    s.vehicles = (0..VEHICLES).map(|k| bus(&vehicle(k))).collect();
    s.checkpoint.interval_s = 2;
    (db.clone(), start_app(s).await)
}

/// What must match between the failover pair and the reference, as text rows.
async fn outcome(db: &str) -> Vec<String> {
    let c = fleetwatch::store::connect(db).await.unwrap();
    let mut out = Vec::new();
    let queries = [
        "SELECT 'fixes ' || count(*) || ' ' || count(DISTINCT (vehicle_id, ts)) FROM fixes",
        "SELECT 'dead ' || count(*) FROM dead_letters",
        "SELECT concat_ws(' ', 'alert', alert_id, vehicle_id, driver_id, kind, level, status, severity,
                start_ts, end_ts) FROM alerts ORDER BY 1",
        "SELECT concat_ws(' ', 'trip', vehicle_id, start_ts, end_ts, round(distance_m::numeric, 1))
           FROM trips ORDER BY 1",
        "SELECT concat_ws(' ', 'live', vehicle_id, live_driver_id, live_as_of_ts, live_continuous_s,
                live_daily_s, live_weekly_s) FROM vehicles ORDER BY 1",
        "SELECT concat_ws(' ', 'driver', driver_id, vehicle_id, since_ts, as_of_ts, continuous_s,
                daily_s, weekly_s) FROM driver_state ORDER BY 1",
    ];
    for q in queries {
        for r in c.query(q, &[]).await.unwrap() {
            out.push(r.get::<_, String>(0));
        }
    }
    out
}

/// Waits until both databases hold the whole stream and the same outcome.
async fn assert_same_outcome(ha_db: &str, ref_db: &str) {
    let n = (VEHICLES * PER_VEHICLE) as i64;
    for db in [ha_db, ref_db] {
        wait_until("whole stream stored", Duration::from_secs(120), || {
            let db = db.to_string();
            async move { count(&db, "SELECT count(*) FROM fixes").await >= n }
        })
        .await;
    }
    // Rule output follows its fixes in the same transactions; allow the last batch.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (outcome(ha_db).await, outcome(ref_db).await);
        if a == b {
            assert_eq!(a[0], format!("fixes {n} {n}"), "every fix stored once");
            assert!(
                a.iter().filter(|l| l.starts_with("alert ")).count() >= VEHICLES * 4,
                "the stream raised overspeed alerts: {a:?}"
            );
            return;
        }
        if Instant::now() > deadline {
            let only_ha: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
            let only_ref: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
            panic!("failover outcome differs from a single instance's:\nonly failover: {only_ha:#?}\nonly reference: {only_ref:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn exit_status(p: Proc, timeout: Duration) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || {
        let mut p = p;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
}

/// What both fault tests start from: a leader `a` and a standby `b` on one Mosquitto
/// and one database, a reference instance, and the stream being published, the
/// leader having stored part of it.
struct Streaming {
    _mosq: Mosquitto,
    db: String,
    dir: std::path::PathBuf,
    ref_db: String,
    ref_app: fleetwatch::app::App,
    a: Proc,
    b: Proc,
    publisher: tokio::task::JoinHandle<()>,
}

async fn leader_and_standby_streaming(tag: &str) -> Streaming {
    let mosq = Mosquitto::start();
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("fleetwatch-ha-{tag}-{}", std::process::id()));
    let config = write_config(&dir, &mosq.url, &db);
    let (ref_db, ref_app) = reference(&mosq.url).await;

    let a = Proc::spawn(&config, "a");
    a.wait_log("subscription confirmed", Duration::from_secs(30))
        .await;
    let b = Proc::spawn(&config, "b");
    b.wait_log("ha: standby", Duration::from_secs(30)).await;

    let publisher = tokio::spawn(publish_paced(mosq.url.clone(), stream(base_time())));
    wait_until("the leader stores", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await > 1500 }
    })
    .await;
    Streaming {
        _mosq: mosq,
        db,
        dir,
        ref_db,
        ref_app,
        a,
        b,
        publisher,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_fails_over_within_10_s_losing_and_duplicating_nothing() {
    let Streaming {
        _mosq,
        db,
        dir,
        ref_db,
        ref_app,
        a,
        b,
        publisher,
    } = leader_and_standby_streaming("kill").await;
    assert_eq!(
        b.lines("connected to broker"),
        0,
        "the standby stays off the broker"
    );
    kill(a.pid(), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    b.wait_log("subscription confirmed", Duration::from_secs(10))
        .await;
    let took = killed.elapsed();
    eprintln!("standby subscribed {took:?} after the SIGKILL");
    assert!(took < Duration::from_secs(10), "took over in {took:?}");
    let stored = count(&db, "SELECT count(*) FROM fixes").await;
    assert!(
        stored < (VEHICLES * PER_VEHICLE) as i64,
        "the kill came mid-stream"
    );

    publisher.await.unwrap();
    assert_same_outcome(&db, &ref_db).await;
    assert_eq!(
        count(&db, "SELECT epoch FROM leadership WHERE name = 'test'").await,
        2
    );
    // The new leader serves the API.
    let addr = b.http_addr();
    let ready = crate::ingest::reqwest_get(addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // A clean stop hands the lease back at once.
    kill(b.pid(), Signal::SIGTERM).unwrap();
    let status = exit_status(b, Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM leadership WHERE lease_until < now()"
        )
        .await,
        1
    );
    drop(a);
    ref_app.shutdown();
    ref_app.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_and_steps_down_without_taking_the_session_back() {
    let Streaming {
        _mosq,
        db,
        dir,
        ref_db,
        ref_app,
        a,
        b,
        publisher,
    } = leader_and_standby_streaming("stop").await;
    kill(a.pid(), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    b.wait_log("subscription confirmed", Duration::from_secs(15))
        .await;
    eprintln!(
        "standby subscribed {:?} after the SIGSTOP",
        stopped.elapsed()
    );
    let a_connects = a.lines("connected to broker");
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;

    let b_connects = b.lines("connected to broker");
    kill(a.pid(), Signal::SIGCONT).unwrap();
    a.wait_log("ha: leadership lost", Duration::from_secs(10))
        .await;
    let a_log = a.log.clone();
    let status = exit_status(a, Duration::from_secs(30)).await;
    let a_log = a_log.lock().unwrap().join("\n");
    assert!(
        !status.success(),
        "the old leader steps down: {status}\n{a_log}"
    );
    assert!(
        a_log.contains("another instance took over leadership; stepped down"),
        "a clear message:\n{a_log}"
    );
    assert_eq!(
        a_log.matches("connected to broker").count(),
        a_connects,
        "the old leader did not reconnect:\n{a_log}"
    );
    // Its session stayed with the new leader: no disconnection, no second connect.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.lines("connected to broker"), b_connects);
    assert_eq!(b.lines("MQTT poll error"), 0);
    let fenced = a_log.matches("commit refused by the fence").count();
    eprintln!("old leader's commits refused by the fence: {fenced}");

    publisher.await.unwrap();
    assert_same_outcome(&db, &ref_db).await;
    assert_eq!(
        count(&db, "SELECT epoch FROM leadership WHERE name = 'test'").await,
        2
    );
    drop(b);
    ref_app.shutdown();
    ref_app.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_refuses_the_embedded_broker_and_the_private_database() {
    let db = fresh_db().await;
    let mut s = settings(&db, "", "fw-ha-refuse");
    s.ha.enabled = true;
    let e = fleetwatch::app::App::start(s.clone()).await.err().unwrap();
    assert!(
        e.to_string()
            .contains("ha.enabled needs an external broker"),
        "{e:#}"
    );
    s.mqtt.url = "mqtt://127.0.0.1:1".into();
    s.database.url = String::new();
    let e = fleetwatch::app::App::start(s).await.err().unwrap();
    assert!(
        e.to_string()
            .contains("ha.enabled needs an external database"),
        "{e:#}"
    );
}

/// The fence itself: once a standby took over, the old leader's batch stores nothing
/// and marks the old leader as stepping down; the new leader's batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leaders_batch_is_refused_whole() {
    use bytes::Bytes;
    use fleetwatch::pipeline::topic::TopicPattern;
    use fleetwatch::pipeline::validate::Validator;
    use fleetwatch::store::lease::{self, HaConfig};
    use fleetwatch::store::writer::{self, Item};
    use fleetwatch::store::StoreError;
    use tokio_util::sync::CancellationToken;

    let db = fresh_db().await;
    let mut c = fleetwatch::store::connect(&db).await.unwrap();
    let plan = writer::prepare(&c).await.unwrap();
    let cfg = HaConfig {
        enabled: true,
        lease_s: 1,
        name: "unit".into(),
    };
    let never = CancellationToken::new();
    let old = lease::acquire(&c, &cfg, "old", &never)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.epoch(), 1);
    // While the lease runs, nobody else leads.
    assert_eq!(lease::try_acquire(&c, &cfg, "new").await.unwrap(), None);
    let mut v = Validator::new(
        TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap(),
        Default::default(),
        &[bus("51B-799.01")],
    );
    let mut batch = |i: i64| -> Vec<Item<()>> {
        let t = base_time() + chrono::Duration::seconds(i);
        let records = v.process(
            &topic(COOP, "51B-799.01"),
            &Bytes::from(fix("51B-799.01", t, 10.9, 106.7, 40.0)),
            t,
        );
        vec![Item {
            records,
            derived: Default::default(),
            ack: None,
            received_at: t,
        }]
    };
    let o = writer::write_batch_fenced(&mut c, plan.as_ref(), &batch(0), Some(&old))
        .await
        .unwrap();
    assert_eq!(o.stored, 1, "the leader writes");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let new_c = fleetwatch::store::connect(&db).await.unwrap();
    let new = lease::acquire(&new_c, &cfg, "new", &never)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.epoch(), 2);
    let e = writer::write_batch_fenced(&mut c, plan.as_ref(), &batch(1), Some(&old))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Fenced {
                epoch: 1,
                current: Some(2)
            }
        ),
        "{e}"
    );
    assert!(old.lost().is_cancelled(), "the old leader steps down");
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes").await,
        1,
        "nothing of it stored"
    );
    let mut c2 = fleetwatch::store::connect(&db).await.unwrap();
    let plan2 = writer::prepare(&c2).await.unwrap();
    let o = writer::write_batch_fenced(&mut c2, plan2.as_ref(), &batch(1), Some(&new))
        .await
        .unwrap();
    assert_eq!(o.stored, 1, "the new leader writes it");
    assert!(!new.lost().is_cancelled());
}
