//! Rules exact whatever the order and timing of fixes: restarts of the real binary
//! (issue 13).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetwatch::infra::broker::EmbeddedBroker;

use crate::support::*;

/// The real `fleetwatch run`, killed with SIGKILL on drop.
struct Binary {
    child: Child,
}

impl Binary {
    /// Starts `fleetwatch run --config config` and waits for its subscription.
    fn start(config: &std::path::Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fleetwatch binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("subscription confirmed") {
                    let _ = tx.send(Ok(()));
                }
                if line.contains("rule state restored") {
                    eprintln!("{line}");
                }
                seen.push(line);
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => panic!("fleetwatch exited before subscribing:\n{log}"),
            Err(e) => panic!("fleetwatch did not subscribe within 60 s: {e}"),
        }
        Binary { child }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// A driving fix of driver 079000000013 at `ts`, `i` steps east of the start.
fn driving(vehicle: &str, ts: DateTime<Utc>, i: usize, speed_kmh: f64) -> Vec<u8> {
    let ts = ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        r#"{{"vehicle":"{vehicle}","ts":"{ts}","lat":10.95,"lon":{:.6},"speed_kmh":{speed_kmh},"driver_id":"079000000013","ignition":true,"satellites":9,"hdop":0.9}}"#,
        106.60 + i as f64 * 1e-4
    )
    .into_bytes()
}

/// A config file for the binary: this database and broker, checkpoints far apart (so
/// a kill comes before any).
fn config_file(name: &str, db: &str, mqtt: &str, vehicle: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleetwatch-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{mqtt}\"\nclient_id = \"fw-{name}\"\n\
             [database]\nurl = \"{db}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [batch]\nmax_wait_ms = 20\n[checkpoint]\ninterval_s = 3600\n\
             [[vehicles]]\nid = \"{vehicle}\"\ncooperative = \"HTX-O\"\nclass = \"bus\"\n"
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_the_first_checkpoint_loses_no_driving_time() {
    const V: &str = "51B-913.01";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let config = config_file("restart", &db, &broker.url(), V);
    let t = topic("HTX-O", V);
    // 4 h 05 min of driving, one fix every 20 s, ending about an hour ago.
    let start = base_time() - chrono::Duration::minutes(245);
    let at = |i: usize| start + chrono::Duration::seconds(20 * i as i64);
    let first: Vec<(String, Vec<u8>)> = (0..=540)
        .map(|i| (t.clone(), driving(V, at(i), i, 50.0)))
        .collect();
    let second: Vec<(String, Vec<u8>)> = (541..=735)
        .map(|i| (t.clone(), driving(V, at(i), i, 50.0)))
        .collect();

    let bin = Binary::start(&config);
    publish_all(&broker.url(), &first).await;
    wait_until("3 h of driving stored", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 541 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(bin); // SIGKILL
    assert_eq!(
        count(&db, "SELECT count(*) FROM rule_state").await,
        0,
        "killed before any checkpoint"
    );

    let bin = Binary::start(&config);
    publish_all(&broker.url(), &second).await;
    wait_until("1 h 05 more stored", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 736 }
    })
    .await;
    wait_until("continuous driving violation", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND level = 'violation'",
            )
            .await
                == 1
        }
    })
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND level = 'warning'"
        )
        .await,
        1
    );
    // The violation starts where the driving began, before the crash.
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let started: DateTime<Utc> = c
        .query_one(
            "SELECT start_ts FROM alerts WHERE kind = 'continuous_driving' AND level = 'violation'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(started, at(0));
    drop(bin);
}
