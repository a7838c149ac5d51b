//! The database as a fault source: content PostgreSQL refuses, outages, hangs, the
//! private server's life cycle.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::app::App;
use fleetwatch::infra::broker::EmbeddedBroker;
use fleetwatch::infra::postgres::{EmbeddedPostgres, PgOptions};
use fleetwatch::store::migrate::Layout;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::api::get;
use crate::support::*;

/// PostgreSQL refuses one fix of a batch (a check constraint the validator does not
/// know about): the batch is split, the good fixes are stored, the refused one is a
/// dead letter with the database's error, and ingest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_the_database_refuses_becomes_a_dead_letter_and_the_rest_is_stored() {
    let mosq = Mosquitto::start();
    let db = fresh_db().await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    // And a dead letter it refuses as it is: kept escaped.
    c.batch_execute(
        "ALTER TABLE fixes ADD CONSTRAINT no_speed_123 CHECK (speed_kmh <> 123);
         ALTER TABLE dead_letters ADD CONSTRAINT no_malformed CHECK (reason <> 'malformed')",
    )
    .await
    .unwrap();
    let mut s = settings(&db, &mosq.url, "fw-db-refuses");
    // One batch for the whole burst, so the refused row shares it with good ones.
    s.batch.max_wait_ms = 300;
    let app = start_app(s).await;
    let base = base_time();
    let mut msgs = track("HTX-A", 5, 100, base);
    let bad = fix(
        "T-2",
        base + chrono::Duration::milliseconds(500),
        10.9,
        106.7,
        123.0,
    );
    msgs.insert(37, (topic("HTX-A", "T-2"), bad.clone()));
    msgs.insert(60, (topic("HTX-A", "T-3"), b"not json".to_vec()));
    publish_all(&mosq.url, &msgs).await;
    wait_until("good fixes stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 100 }
    })
    .await;
    wait_until(
        "the refused fix is a dead letter",
        Duration::from_secs(10),
        || {
            let db = db.clone();
            async move {
                count(
                    &db,
                    "SELECT count(*) FROM dead_letters WHERE reason = 'rejected_by_database'",
                )
                .await
                    == 2
            }
        },
    )
    .await;
    let row = c
        .query_one(
            "SELECT topic, payload, detail FROM dead_letters
             WHERE reason = 'rejected_by_database' AND topic LIKE '%/T-2/%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), topic("HTX-A", "T-2"));
    assert_eq!(row.get::<_, Vec<u8>>(1), bad, "the received bytes are kept");
    let detail: String = row.get(2);
    assert!(
        detail.contains("23514") && detail.contains("no_speed_123"),
        "the database's error is kept: {detail}"
    );
    let row = c
        .query_one(
            "SELECT payload, detail FROM dead_letters
             WHERE reason = 'rejected_by_database' AND topic LIKE '%/T-3/%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Vec<u8>>(0),
        b"6e6f74206a736f6e",
        "bytes as hex"
    );
    let detail: String = row.get(1);
    assert!(
        detail.contains("malformed") && detail.contains("no_malformed"),
        "{detail}"
    );
    // Ingest goes on.
    let later = track("HTX-A", 1, 1, base + chrono::Duration::minutes(5));
    publish_all(&mosq.url, &later).await;
    wait_until("a later fix is stored", Duration::from_secs(10), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 101 }
    })
    .await;
    app.shutdown();
    app.wait().await;
}

/// A private server of the test's own (faults must not reach the shared one).
pub(crate) fn own_server(tag: &str, timescaledb: bool) -> EmbeddedPostgres {
    let dir = std::env::temp_dir().join(format!("fw-own-pg-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    EmbeddedPostgres::start(&PgOptions {
        data_dir: dir,
        fast_unsafe: true,
        timescaledb,
    })
    .expect("private PostgreSQL starts")
}

/// The postmaster's pid and its backends'.
fn server_pids(cluster: &Path) -> Vec<i32> {
    let pid_file = std::fs::read_to_string(cluster.join("postmaster.pid")).unwrap();
    let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let ppid: Option<i32> = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

fn signal_all(pids: &[i32], sig: Signal) {
    for p in pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(*p), sig);
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
}

/// A hung database (postmaster and backends SIGSTOPped): `/readyz` turns 503 within a
/// few seconds, an API request gets 503 within its bound instead of hanging; after
/// SIGCONT readiness returns and every fix published meanwhile is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_makes_readyz_and_the_api_answer_503_and_nothing_is_lost() {
    let pg = own_server("hung", true);
    pg.ensure_database("fw").await.unwrap();
    let db = pg.url("fw");
    let mosq = Mosquitto::start();
    let mut s = settings(&db, &mosq.url, "fw-db-hung");
    s.database.api_statement_timeout_ms = 1_000;
    s.database.api_wait_timeout_ms = 1_000;
    s.database.probe_interval_ms = 500;
    s.database.probe_timeout_ms = 1_000;
    let app = start_app(s).await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let token = create_token(&c, Role::Admin, None, None).await.unwrap();
    drop(c);
    let addr = app.http_addr;
    let base = base_time();
    publish_all(&mosq.url, &track("HTX-A", 2, 20, base)).await;
    wait_until("first fixes stored", Duration::from_secs(20), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 20 }
    })
    .await;
    assert_eq!(get(addr, "/api/v1/vehicles", &token).await.status, 200);
    assert_eq!(get(addr, "/readyz", "").await.status, 200);

    let pids = server_pids(pg.cluster_dir());
    signal_all(&pids, Signal::SIGSTOP);
    let stopped = Instant::now();
    let outcome = std::panic::AssertUnwindSafe(async {
        wait_until("/readyz 503 while hung", Duration::from_secs(6), || async {
            get(addr, "/readyz", "").await.status == 503
        })
        .await;
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            get(addr, "/api/v1/vehicles", &token),
        )
        .await
        .expect("the API answers while the database hangs");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Published during the hang: stored once the database answers again.
        publish_all(
            &mosq.url,
            &track("HTX-A", 2, 20, base + chrono::Duration::minutes(1)),
        )
        .await;
    });
    let r = futures_util::FutureExt::catch_unwind(outcome).await;
    signal_all(&pids, Signal::SIGCONT);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
    eprintln!("hung for {:?}", stopped.elapsed());
    wait_until("/readyz 200 again", Duration::from_secs(15), || async {
        get(addr, "/readyz", "").await.status == 200
    })
    .await;
    wait_until("every fix stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 40 }
    })
    .await;
    assert_eq!(get(addr, "/api/v1/vehicles", &token).await.status, 200);
    app.shutdown();
    app.wait().await;
}

/// A stopped database between batches: `/readyz` notices it without a batch failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_between_batches_makes_readyz_503() {
    let mut pg = own_server("down", true);
    pg.ensure_database("fw").await.unwrap();
    let db = pg.url("fw");
    let mosq = Mosquitto::start();
    let mut s = settings(&db, &mosq.url, "fw-db-down");
    s.database.probe_interval_ms = 500;
    let app = start_app(s).await;
    let addr = app.http_addr;
    assert_eq!(get(addr, "/readyz", "").await.status, 200);
    tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    wait_until("/readyz 503 while down", Duration::from_secs(6), || async {
        get(addr, "/readyz", "").await.status == 503
    })
    .await;
    app.shutdown();
    app.wait().await;
}

/// `http.listen` taken by another socket: start fails naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_address_is_an_error_naming_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-port-taken");
    s.http.listen = taken;
    let e = match App::start(s).await {
        Ok(app) => panic!("started elsewhere: {}", app.http_addr),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains(&taken.to_string()), "{e}");
    drop(holder);
}

/// The private server requires its password: a connection without it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_server_refuses_connections_without_the_password() {
    let db = fresh_db().await;
    let mut u = url::Url::parse(&db).unwrap();
    assert!(
        u.password().is_some_and(|p| p.len() >= 32),
        "a generated password"
    );
    fleetwatch::store::connect(&db)
        .await
        .expect("with the password");
    u.set_password(Some("guess")).unwrap();
    let e = fleetwatch::store::connect(u.as_str()).await.unwrap_err();
    assert!(e.to_string().contains("28P01"), "{e}");
    u.set_password(None).unwrap();
    assert!(fleetwatch::store::connect(u.as_str()).await.is_err());
    // And the password file is for fleetwatch alone.
    use std::os::unix::fs::PermissionsExt;
    let f = cluster_dir().join(fleetwatch::infra::postgres::PASSWORD_FILE);
    let mode = std::fs::metadata(&f).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", f.display());
}

/// TimescaleDB installed but not preloaded: migrations take the plain layout (with a
/// warning) and the connection still works. A server started by an older fleetwatch
/// with trust authentication gets the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescaledb_installed_but_not_preloaded_gives_the_plain_layout_on_a_live_connection() {
    let pg = own_server("no-preload", false);
    if !pg.timescaledb_installed() {
        eprintln!("TimescaleDB is not installed beside this PostgreSQL: nothing to check (scripts/test installs it)");
        return;
    }
    pg.ensure_database("fw").await.unwrap();
    let mut c = fleetwatch::store::connect(&pg.url("fw")).await.unwrap();
    let layout = fleetwatch::store::migrate::migrate(&mut c, &Default::default())
        .await
        .unwrap();
    assert_eq!(layout, Layout::Plain);
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the connection works after migrating");
    // The plain layout stores fixes, and its retention deletes only those past it.
    c.execute(
        "INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, received_at)
         VALUES ('P-1', now(), 'C', 109000000, 1067000000, 30, now()),
                ('P-1', now() - interval '401 days', 'C', 109000000, 1067000000, 30, now()),
                ('P-1', now() - interval '399 days', 'C', 109000000, 1067000000, 30, now())",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        fleetwatch::store::migrate::enforce_retention(&c, 400)
            .await
            .unwrap(),
        1
    );
    let left: i64 = c
        .query_one("SELECT count(*) FROM fixes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2, "the fixes within the retention stay");
}

/// The shared test server preloads TimescaleDB when it is installed: the suite runs on
/// the Timescale layout then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_server_preloads_timescaledb_when_installed() {
    let db = fresh_db().await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let preloaded = timescale_preloaded(&c).await;
    let hyper = count(
        &db,
        "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'",
    )
    .await;
    if preloaded {
        assert_eq!(hyper, 1, "migrations took the Timescale layout");
    } else {
        eprintln!("TimescaleDB not installed: plain layout");
        assert_eq!(hyper, 0);
    }
}

/// A private server left running by a SIGKILLed fleetwatch is adopted by the next
/// start and stopped when that one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_left_by_a_killed_fleetwatch_is_adopted_and_stopped() {
    let mosq = Mosquitto::start();
    let dir = std::env::temp_dir().join(format!("fw-adopt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{}\"\nclient_id = \"fw-adopt\"\n\
             [database]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            mosq.url,
            dir.join("data").display()
        ),
    )
    .unwrap();
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("subscription confirmed") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("fleetwatch subscribes");
        child
    };
    let postmaster = || -> i32 {
        let pid = dir.join("data/postgres/cluster/postmaster.pid");
        let text = std::fs::read_to_string(&pid).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    };
    let mut first = start();
    let pm = postmaster();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(alive(pm), "SIGKILL leaves the server running");
    let mut second = start();
    assert_eq!(postmaster(), pm, "the running server is used");
    nix::sys::signal::kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "{status}");
    wait_until(
        "the adopted server stopped",
        Duration::from_secs(10),
        || async move { !alive(pm) },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster an older fleetwatch made with `trust` authentication gets a password at
/// the next start, and requires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_cluster_of_an_older_fleetwatch_gets_a_password() {
    let mut pg = own_server("trust", false);
    let data = pg.cluster_dir().parent().unwrap().to_path_buf();
    pg.stop();
    drop(pg);
    let hba = data.join("cluster/pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, text.replace("scram-sha-256", "trust")).unwrap();
    std::fs::remove_file(data.join(fleetwatch::infra::postgres::PASSWORD_FILE)).unwrap();
    let pg = tokio::task::spawn_blocking(move || {
        EmbeddedPostgres::start(&PgOptions {
            data_dir: data,
            fast_unsafe: true,
            timescaledb: false,
        })
    })
    .await
    .unwrap()
    .expect("starts");
    let url = pg.url("postgres");
    fleetwatch::store::connect(&url)
        .await
        .expect("with the new password");
    let mut u = url::Url::parse(&url).unwrap();
    u.set_password(Some("guess")).unwrap();
    let e = fleetwatch::store::connect(u.as_str()).await.unwrap_err();
    assert!(e.to_string().contains("28P01"), "{e}");
}

/// The Timescale layout for real: fixes ten days old are compressed by the policy's
/// own job, the compliance report reads the compressed chunks to the same figures, a
/// redelivered fix into a compressed chunk is stored once and a late one is added,
/// and the retention job drops chunks past the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescale_compression_and_retention_jobs_keep_reports_and_dedup_exact() {
    let db = fresh_db().await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    if !timescale_preloaded(&c).await {
        eprintln!("TimescaleDB not installed: nothing to check (scripts/test installs it)");
        return;
    }
    let broker = EmbeddedBroker::start(0).unwrap();
    let app = start_app(settings(&db, &broker.url(), "fw-ts")).await;
    assert_eq!(app.layout, Layout::Timescale);
    // Two hours of one vehicle, ten days ago, with a stretch over the limit.
    let base = chrono::DurationRound::duration_trunc(
        chrono::Utc::now() - chrono::TimeDelta::days(10),
        chrono::TimeDelta::days(1),
    )
    .unwrap()
        + chrono::TimeDelta::hours(2);
    let mut msgs = Vec::new();
    for i in 0..720 {
        let speed = if (300..330).contains(&i) { 95.0 } else { 50.0 };
        let ts = base + chrono::TimeDelta::seconds(i * 10);
        let lat = 10.9 + i as f64 * 1.4e-3;
        msgs.push((topic("HTX-TS", "TS-1"), fix("TS-1", ts, lat, 106.7, speed)));
    }
    publish_all(&broker.url(), &msgs).await;
    wait_until("fixes stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 720 }
    })
    .await;
    let token = create_token(&c, Role::Regulator, None, None).await.unwrap();
    let month = (base + chrono::TimeDelta::hours(7))
        .format("%Y-%m")
        .to_string();
    let path = format!("/api/v1/reports/compliance?cooperative=HTX-TS&month={month}");
    let before = get(app.http_addr, &path, &token).await.json();
    assert!(
        before["vehicles"][0]["distance_km"].as_f64().unwrap() > 100.0,
        "{before}"
    );

    // The compression policy's job, run now rather than on its schedule.
    run_policy(&c, "policy_compression").await;
    let compressed = count(
        &db,
        "SELECT count(*) FROM chunk_compression_stats('fixes') WHERE compression_status = 'Compressed'",
    )
    .await;
    assert!(compressed >= 1, "the old chunk is compressed");
    let after = get(app.http_addr, &path, &token).await.json();
    assert_eq!(
        before["vehicles"], after["vehicles"],
        "same report on compressed chunks"
    );

    // Redelivered into a compressed chunk: once; a late fix there: added.
    let mut again = msgs[..50].to_vec();
    let late = base + chrono::TimeDelta::seconds(5);
    again.push((
        topic("HTX-TS", "TS-1"),
        fix("TS-1", late, 10.9, 106.7, 50.0),
    ));
    publish_all(&broker.url(), &again).await;
    wait_until("the late fix stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 721 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes").await,
        721,
        "duplicates stored once"
    );

    // A fix past the retention (written directly: validation refuses fixes that old)
    // goes with its chunk when the retention job runs.
    c.batch_execute(
        "INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, flags, received_at)
         VALUES ('TS-1', now() - interval '500 days', 'HTX-TS', 109000000, 1067000000, 10, 0, now())",
    )
    .await
    .unwrap();
    run_policy(&c, "policy_retention").await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes").await,
        721,
        "the old chunk dropped"
    );
    app.shutdown();
    app.wait().await;
}

/// A TimescaleDB database whose roll-ups an earlier version kept in a real-time
/// continuous aggregate: the start (`rollup::ensure`) drops it, and the writer-kept
/// table counts the stored fixes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_continuous_aggregate_is_dropped_and_the_fix_counts_rebuilt() {
    let db = fresh_db().await;
    let mut c = fleetwatch::store::connect(&db).await.unwrap();
    if !timescale_preloaded(&c).await {
        eprintln!("TimescaleDB not installed: nothing to check (scripts/test installs it)");
        return;
    }
    c.batch_execute(
        "INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, flags, received_at)
         SELECT 'CA-1', now() - interval '3 days' + i * interval '10 s', 'HTX-CA', 109000000, 1067000000, 40, 0, now()
         FROM generate_series(0, 99) i;
         CREATE MATERIALIZED VIEW fixes_daily_cagg
             WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
         SELECT vehicle_id, time_bucket(interval '1 day', ts) AS day_start,
                count(*) AS fixes, min(ts) AS first_fix_ts, max(ts) AS last_fix_ts
         FROM fixes GROUP BY vehicle_id, day_start WITH NO DATA;
         CREATE OR REPLACE VIEW rollup_fixes_daily AS
             SELECT vehicle_id, fw_local_day(day_start, 25200) AS day, fixes, first_fix_ts, last_fix_ts
             FROM fixes_daily_cagg;
         INSERT INTO rollup_meta (singleton, utc_offset_s, fixes_source) VALUES (true, 25200, 'cagg')
             ON CONFLICT (singleton) DO UPDATE SET utc_offset_s = 25200, fixes_source = 'cagg';",
    )
    .await
    .unwrap();
    let offset = fleetwatch::domain::time::UtcOffset::from_seconds(25200);
    let rebuilt = fleetwatch::store::rollup::ensure(&mut c, offset, Layout::Timescale)
        .await
        .unwrap();
    assert!(rebuilt, "a plan with the aggregate is rebuilt");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rollup_meta WHERE fixes_source = 'table'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT sum(fixes)::int8 FROM rollup_fixes_daily WHERE vehicle_id = 'CA-1'"
        )
        .await,
        100
    );
    // Started again: nothing to do.
    assert!(
        !fleetwatch::store::rollup::ensure(&mut c, offset, Layout::Timescale)
            .await
            .unwrap()
    );
}

/// Whether the server `c` talks to preloads TimescaleDB.
pub(crate) async fn timescale_preloaded(c: &tokio_postgres::Client) -> bool {
    let preload: String = c
        .query_one("SHOW shared_preload_libraries", &[])
        .await
        .unwrap()
        .get(0);
    preload.contains("timescaledb")
}

/// Runs the job of the TimescaleDB policy `proc` (e.g. `policy_compression`) on `fixes`
/// now, as its schedule would.
async fn run_policy(c: &tokio_postgres::Client, proc: &str) {
    c.batch_execute(&format!(
        "DO $$ DECLARE j int; BEGIN
           SELECT job_id INTO j FROM timescaledb_information.jobs
             WHERE proc_name = '{proc}' AND hypertable_name = 'fixes';
           CALL run_job(j);
         END $$"
    ))
    .await
    .unwrap();
}

/// Migration 0040 on a database that already holds compressed chunks of `lat`/`lon`
/// doubles (the schema before it, rebuilt here): the chunks are converted and
/// compressed again, and every coordinate reads back within 0.5e-7 degree of the
/// double stored before (GT06's 1/1,800,000 minute is off the 1e-7 grid). On the plain
/// layout the same migration converts the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinates_become_integers_of_1e7_degree_on_a_database_with_compressed_chunks() {
    let db = fresh_db().await;
    let mut c = fleetwatch::store::connect(&db).await.unwrap();
    let timescale = timescale_preloaded(&c).await;
    // Back to the columns before migration 0040, then old rows in two days' chunks.
    if timescale {
        c.batch_execute(
            "SELECT remove_compression_policy('fixes', if_exists => true);
             ALTER TABLE fixes SET (timescaledb.compress = false);",
        )
        .await
        .unwrap();
    }
    c.batch_execute(
        "ALTER TABLE fixes RENAME COLUMN lat_e7 TO lat;
         ALTER TABLE fixes RENAME COLUMN lon_e7 TO lon;
         ALTER TABLE fixes ALTER COLUMN lat TYPE double precision,
                           ALTER COLUMN lon TYPE double precision;
         DELETE FROM schema_migrations WHERE version = 40;
         INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat, lon, speed_kmh, received_at)
         SELECT 'M-' || (i % 3), now() - interval '20 days' + make_interval(secs => i * 60),
                'HTX-M', 10.9 + i / 1800000.0 / 60.0 * 7, 106.7 - i / 30000000.0, 30, now()
         FROM generate_series(0, 2999) i;
         CREATE TABLE old_fixes AS SELECT vehicle_id, ts, lat, lon FROM fixes;",
    )
    .await
    .unwrap();
    if timescale {
        c.batch_execute(
            "ALTER TABLE fixes SET (timescaledb.compress,
                 timescaledb.compress_segmentby = 'vehicle_id', timescaledb.compress_orderby = 'ts');
             SELECT count(compress_chunk(ch)) FROM show_chunks('fixes') ch;",
        )
        .await
        .unwrap();
    }
    let compressed = "SELECT count(*) FROM timescaledb_information.chunks
                      WHERE hypertable_name = 'fixes' AND is_compressed";
    let before = if timescale {
        count(&db, compressed).await
    } else {
        0
    };
    assert!(!timescale || before >= 2, "{before} compressed chunks");
    let layout = fleetwatch::store::migrate::migrate(&mut c, &Default::default())
        .await
        .unwrap();
    assert_eq!(layout == Layout::Timescale, timescale);
    if timescale {
        assert_eq!(count(&db, compressed).await, before, "compressed again");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM fixes").await, 3000);
    let worst: f64 = c
        .query_one(
            "SELECT max(greatest(abs(f.lat_e7 / 1e7::float8 - o.lat), abs(f.lon_e7 / 1e7::float8 - o.lon)))
             FROM fixes f JOIN old_fixes o USING (vehicle_id, ts)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Half a unit of 1e-7 degree, plus the subtraction's own rounding.
    assert!(
        worst <= 0.5e-7 + 1e-12 && worst > 0.0,
        "worst {worst:e} degree"
    );
    // And the stored integers are the domain's: a Fix's coordinate reads back equal.
    let (lat, lon): (i32, i32) = {
        let r = c
            .query_one("SELECT lat_e7, lon_e7 FROM fixes ORDER BY ts LIMIT 1", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    use fleetwatch::domain::fix::{deg_to_e7, e7_to_deg};
    assert_eq!(
        (deg_to_e7(e7_to_deg(lat)), deg_to_e7(e7_to_deg(lon))),
        (lat, lon)
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM rollup_meta").await,
        0,
        "the roll-ups are forgotten: the next start rebuilds them"
    );
}
