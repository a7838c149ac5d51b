//! `fleetwatch demo` (the real binary) restarted on its data: it goes on from where
//! its stored data ends (nothing flagged late, nothing added before the first run's
//! end) and keeps its map token; `--fresh` starts afresh.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::support::*;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo binary; killed on drop.
struct Demo {
    child: Child,
    map_url: String,
    /// Everything it printed before the map URL (the plan note is there).
    head: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(config: &Path, extra: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .args(["demo", "--config"])
            .arg(config)
            // One hour of history in about 6 s, then real time.
            .args(["--history-h", "1", "--speed", "600", "--duration-s", "300"])
            .args(extra)
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("fleetwatch binary starts");
        let stdout = child.stdout.take().unwrap();
        // Killed on drop even if no map URL comes.
        let mut demo = Demo {
            child,
            map_url: String::new(),
            head: Vec::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut head = Vec::new();
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.strip_prefix("map: ") {
                        let _ = tx.send(Ok((url.trim().to_string(), head.clone())));
                        sent = true;
                    } else {
                        head.push(line);
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(head.join("\n")));
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok((map_url, head))) => {
                demo.map_url = map_url;
                demo.head = head;
                demo
            }
            Ok(Err(out)) => panic!("the demo ended without a map URL:\n{out}"),
            Err(e) => panic!("no map URL from the demo within 60 s: {e}"),
        }
    }

    fn token(&self) -> String {
        self.map_url.split_once("#token=").unwrap().1.to_string()
    }

    /// SIGTERM (a clean stop, as Ctrl-C), and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap()
    }
}

/// Status of `GET path` on the demo's HTTP server with `token`.
fn get_status(map_url: &str, path: &str, token: &str) -> u16 {
    let addr = map_url["http://".len()..].split('/').next().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// The newest stored fix of every vehicle.
async fn ends(db: &str) -> Vec<(String, DateTime<Utc>)> {
    let c = fleetwatch::store::connect(db).await.unwrap();
    c.query(
        "SELECT vehicle_id, max(ts) FROM fixes GROUP BY vehicle_id ORDER BY vehicle_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until all 8 demo vehicles have a fix in the last two minutes (the demo
/// caught up with the clock) and, if given, after `after`.
async fn wait_caught_up(db: &str, after: Option<DateTime<Utc>>) {
    let db = db.to_string();
    wait_until("the demo caught up", Duration::from_secs(120), || {
        let db = db.clone();
        async move {
            let e = ends(&db).await;
            let recent = Utc::now() - chrono::TimeDelta::minutes(2);
            e.len() == 8
                && e.iter()
                    .all(|(_, t)| *t > recent && after.is_none_or(|a| *t > a))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_demo_goes_on_from_its_stored_data_and_keeps_its_map_token() {
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("fleetwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{db}\"\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             map_tile_url = \"\"\n[embedded_broker]\nport = 0\n[mqtt]\nclient_id = \"fw-demo-restart\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();

    let first = Demo::start(&config, &[]);
    let token = first.token();
    assert_eq!(token.len(), 64);
    assert_eq!(get_status(&first.map_url, "/api/v1/vehicles", &token), 200);
    wait_caught_up(&db, None).await;
    let status = tokio::task::spawn_blocking(move || first.stop())
        .await
        .unwrap();
    assert!(status.success(), "the demo stops cleanly: {status}");
    let state = dir.join("data/demo.json");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the demo state holds a token: owner only");

    let first_ends = ends(&db).await;
    let first_end = first_ends.iter().map(|(_, t)| *t).max().unwrap();
    let stored_before = count(
        &db,
        &format!(
            "SELECT count(*) FROM fixes WHERE ts <= '{}'",
            first_end.to_rfc3339()
        ),
    )
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE flags & 16 <> 0").await,
        0
    );

    // Again on the same data: the same link, still valid; the fleet goes on.
    let second = Demo::start(&config, &[]);
    let (second_token, second_head) = (second.token(), second.head.clone());
    let old_token_status = get_status(&second.map_url, "/api/v1/vehicles", &token);
    wait_caught_up(&db, Some(first_end)).await;
    // A few more seconds of real time, so any replayed history would have arrived.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = tokio::task::spawn_blocking(move || second.stop())
        .await
        .unwrap();
    assert!(status.success(), "the demo stops cleanly: {status}");

    let late = count(&db, "SELECT count(*) FROM fixes WHERE flags & 16 <> 0").await;
    assert_eq!(late, 0, "fixes flagged late because of the restart");
    let after = count(
        &db,
        &format!(
            "SELECT count(*) FROM fixes WHERE ts <= '{}'",
            first_end.to_rfc3339()
        ),
    )
    .await;
    assert_eq!(
        after, stored_before,
        "the restart added fixes to the stored history (a track went back in time)"
    );
    // Each vehicle's track goes on where it ended: no jump to a script start.
    let jumps = count(&db, "SELECT count(*) FROM fixes WHERE flags & 1 <> 0").await;
    assert_eq!(jumps, 0, "fixes flagged as jumps");
    // Continuity: no vehicle moved implausibly between its last fix of the first run
    // and its first of the second (the same simulation goes on).
    let c = fleetwatch::store::connect(&db).await.unwrap();
    for (vehicle, end) in &first_ends {
        let rows = c
            .query(
                "(SELECT ts, lat_e7 / 1e7::float8, lon_e7 / 1e7::float8 FROM fixes WHERE vehicle_id = $1 AND ts <= $2 ORDER BY ts DESC LIMIT 1)
                 UNION ALL
                 (SELECT ts, lat_e7 / 1e7::float8, lon_e7 / 1e7::float8 FROM fixes WHERE vehicle_id = $1 AND ts > $2 ORDER BY ts LIMIT 1)",
                &[vehicle, end],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 2, "{vehicle} went on after the restart");
        let (t0, t1): (DateTime<Utc>, DateTime<Utc>) = (rows[0].get(0), rows[1].get(0));
        let d_m = fleetwatch::geo::distance_m(
            rows[0].get::<_, f64>(2),
            rows[0].get::<_, f64>(1),
            rows[1].get::<_, f64>(2),
            rows[1].get::<_, f64>(1),
        );
        let dt_s = (t1 - t0).num_milliseconds() as f64 / 1000.0;
        assert!(
            d_m <= 30.0 * dt_s.max(1.0) + 20.0,
            "{vehicle}: {d_m:.0} m in {dt_s} s across the restart"
        );
    }

    assert_eq!(second_token, token, "the map token a browser holds is kept");
    assert_eq!(
        old_token_status, 200,
        "the first run's map link still works"
    );
    assert!(
        second_head.iter().any(|l| l.contains("resuming")),
        "{second_head:?}"
    );

    // --fresh: the demo's data goes, a new history and a new token come.
    let history_start = Utc::now() - chrono::TimeDelta::hours(1);
    let fresh = Demo::start(&config, &["--fresh"]);
    assert_ne!(fresh.token(), token);
    assert_eq!(get_status(&fresh.map_url, "/api/v1/vehicles", &token), 401);
    assert_eq!(
        get_status(&fresh.map_url, "/api/v1/vehicles", &fresh.token()),
        200
    );
    let older = count(
        &db,
        &format!(
            "SELECT count(*) FROM fixes WHERE ts < '{}'",
            history_start.to_rfc3339()
        ),
    )
    .await;
    assert_eq!(older, 0, "--fresh cleared the stored history");
    drop(fresh);
}
