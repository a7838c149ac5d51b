//! Backup and restore as README "Backup and restore" says: `pg_dump -Fc` of a running
//! instance's database, `pg_restore` into a fresh database (on TimescaleDB between
//! `timescaledb_pre_restore()` and `timescaledb_post_restore()`), and the restored
//! database gives the same month report, to the figure, as the original.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::TimeDelta;
use fleetwatch::infra::broker::EmbeddedBroker;
use fleetwatch::store::rollup;
use serde_json::{json, Value};

use crate::database::{own_server, timescale_preloaded};
use crate::support::*;

/// Same major as the test server: the dump's format and the server must agree.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `url` with another database name.
fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_path(db);
    u.to_string()
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(Path::new(PG_BIN).join(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{tool} {args:?}: {stderr}");
    stderr
}

/// `fleetwatch report` on `db` (JSON), as an operator would run it on the restored one.
fn report(db: &str, dir: &Path, args: &[&str]) -> Value {
    let config = dir.join(format!("report-{}.toml", db.rsplit('/').next().unwrap()));
    std::fs::write(&config, format!("[database]\nurl = \"{db}\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
        .arg("report")
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("fleetwatch runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Row counts of the journey tables, to compare beyond the report.
async fn tables(db: &str) -> Value {
    let mut m = serde_json::Map::new();
    for t in [
        "fixes",
        "alerts",
        "trips",
        "data_gaps",
        "dead_letters",
        "rule_state",
        "api_tokens",
    ] {
        m.insert(
            t.into(),
            json!(count(db, &format!("SELECT count(*) FROM {t}")).await),
        );
    }
    Value::Object(m)
}

/// Runs an app on `db`, ingests a known track (overspeed, a data gap), dumps the
/// database while the app runs and ingests another cooperative, restores it into a
/// new database and compares the month reports. Returns the layout seen.
async fn dump_restore_report(db: String, tag: &str) -> bool {
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let timescale = timescale_preloaded(&c).await;
    let broker = EmbeddedBroker::start(0).unwrap();
    let mut s = settings(&db, &broker.url(), &format!("fw-backup-{tag}"));
    s.vehicles =
        vec![
            serde_json::from_value(json!({"id": "R-1", "cooperative": "HTX-R", "class": "bus"}))
                .unwrap(),
        ];
    let app = start_app(s).await;
    if timescale {
        // The app migrated this database: fixes is a hypertable.
        assert_eq!(
            count(&db, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'fixes'").await,
            1
        );
    }
    // 3 min at 30 km/h, 60 s at 95 (limit 70), 30 s at 30, 2 min silent while moving
    // (a data gap), 30 s at 30, 5 min stopped.
    let base = base_time();
    let mut msgs = Vec::new();
    let (mut lat, mut t) = (10.9, 0);
    for (secs, speed) in [
        (180, 30.0),
        (60, 95.0),
        (30, 30.0),
        (-120, 30.0),
        (30, 30.0),
        (300, 0.0),
    ] {
        if secs < 0 {
            t -= secs;
            continue;
        }
        for _ in 0..secs / 5 {
            lat += speed / 3.6 * 5.0 / 111_000.0;
            msgs.push((
                topic("HTX-R", "R-1"),
                fix("R-1", base + TimeDelta::seconds(t), lat, 106.7, speed),
            ));
            t += 5;
        }
    }
    let n = msgs.len() as i64;
    publish_all(&broker.url(), &msgs).await;
    wait_until("track and its closed overspeed stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM fixes").await == n
                && count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed' AND status = 'closed'").await == 1
                && count(&db, "SELECT count(*) FROM data_gaps").await == 1
        }
    })
    .await;
    let dir = std::env::temp_dir().join(format!("fw-backup-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let month = rollup::local_day(base, 7 * 3600)
        .format("%Y-%m")
        .to_string();
    let month_args = ["--cooperative", "HTX-R", "--month", month.as_str()];
    let original = report(&db, &dir, &month_args);
    assert_eq!(original["vehicles"][0]["fixes"], n, "{original}");
    assert_eq!(original["vehicles"][0]["overspeed_by_band"]["3"], 1);
    assert_eq!(original["vehicles"][0]["data_gaps"], 1);
    let raw_args = ["--cooperative", "HTX-R", "--month", month.as_str(), "--raw"];
    let original_raw = report(&db, &dir, &raw_args);

    // The dump, while the app runs and another cooperative's fixes come in.
    let other = track("HTX-Z", 3, 600, base);
    let url = broker.url();
    let busy = tokio::spawn(async move { publish_all(&url, &other).await });
    let file = dir.join("fleetwatch.dump");
    let file_s = file.to_str().unwrap();
    run("pg_dump", &["-Fc", "-f", file_s, "-d", &db]);
    busy.await.unwrap();
    let before = tables(&db).await;
    app.shutdown();
    app.wait().await;

    // Restore into a new database of the same server.
    let name = format!("restored_{}_{tag}", std::process::id());
    let admin = fleetwatch::store::connect(&with_db(&db, "postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let restored = with_db(&db, &name);
    let r = fleetwatch::store::connect(&restored).await.unwrap();
    if timescale {
        r.batch_execute("CREATE EXTENSION timescaledb; SELECT timescaledb_pre_restore();")
            .await
            .unwrap();
    }
    run(
        "pg_restore",
        &["--exit-on-error", "--no-owner", "-d", &restored, file_s],
    );
    if timescale {
        r.batch_execute("SELECT timescaledb_post_restore();")
            .await
            .unwrap();
    }
    drop(r);

    // The same figures from the restored database, roll-ups and raw alike.
    assert_eq!(report(&restored, &dir, &month_args), original);
    assert_eq!(report(&restored, &dir, &raw_args), original_raw);
    // Everything the dump saw: the other cooperative's fixes stored up to then too.
    let after = tables(&restored).await;
    assert!(
        after["fixes"].as_i64().unwrap() >= n
            && after["fixes"].as_i64() <= before["fixes"].as_i64(),
        "{after} {before}"
    );
    assert_eq!(after["alerts"], before["alerts"]);
    assert_eq!(after["api_tokens"], before["api_tokens"]);
    if timescale {
        assert_eq!(
            count(&restored, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'fixes'").await,
            1,
            "still a hypertable"
        );
    }
    // A restored database is one fleetwatch runs on: migrations find it current and
    // ingest goes on.
    let broker2 = EmbeddedBroker::start(0).unwrap();
    let app = start_app(settings(
        &restored,
        &broker2.url(),
        &format!("fw-restored-{tag}"),
    ))
    .await;
    let total = after["fixes"].as_i64().unwrap();
    publish_all(
        &broker2.url(),
        &[(
            topic("HTX-R", "R-1"),
            fix("R-1", base + TimeDelta::seconds(t + 5), lat, 106.7, 0.0),
        )],
    )
    .await;
    wait_until(
        "a fix stored after the restore",
        Duration::from_secs(30),
        || {
            let restored = restored.clone();
            async move { count(&restored, "SELECT count(*) FROM fixes").await == total + 1 }
        },
    )
    .await;
    app.shutdown();
    app.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    timescale
}

/// On the shared test server: the Timescale layout when it preloads TimescaleDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_of_a_running_instance_restores_to_the_same_month_report() {
    let timescale = dump_restore_report(fresh_db().await, "shared").await;
    eprintln!(
        "backup/restore tested on the {} layout",
        if timescale { "timescale" } else { "plain" }
    );
}

/// On a server without TimescaleDB: the plain layout, whatever the shared one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_restores_on_the_plain_layout_too() {
    let pg = tokio::task::spawn_blocking(|| own_server("backup", false))
        .await
        .unwrap();
    pg.ensure_database("fleetwatch").await.unwrap();
    let timescale = dump_restore_report(pg.url("fleetwatch"), "plain").await;
    assert!(!timescale);
}
