//! Rules exact whatever the order and timing of fixes: restarts of the real binary
//! (issue 13).

use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetwatch::infra::broker::EmbeddedBroker;

use crate::support::*;

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

    let bin = Instance::start(&config, None);
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

    let bin = Instance::start(&config, None);
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

/// `replay --rules` over `[from, to)` of `vehicle` agrees with the stored alerts.
async fn replay_agrees(
    db: &str,
    s: &fleetwatch::config::Settings,
    vehicle: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) {
    use fleetwatch::replay::{self, TrackRange};
    let client = fleetwatch::store::connect(db).await.unwrap();
    let range = TrackRange::new(
        fleetwatch::domain::VehicleId::parse(vehicle).unwrap(),
        from,
        to,
    )
    .unwrap();
    let check = replay::check_rules(&client, s, &range).await.unwrap();
    assert!(
        check.differences.is_empty(),
        "{}",
        replay::render_differences(&check)
    );
}

fn registered(id: &str) -> fleetwatch::domain::Vehicle {
    use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
    Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse("HTX-O").unwrap(),
        class: VehicleClass::Bus,
        route: None,
        device_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_uploaded_after_live_fixes_gets_the_alerts_it_would_have_had_online() {
    const V: &str = "51B-913.02";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-backlog");
    s.vehicles = vec![registered(V)];
    let t = topic("HTX-O", V);
    let start = base_time() - chrono::Duration::hours(4);
    let at = |i: usize| start + chrono::Duration::seconds(20 * i as i64);
    // 20 s cadence: 0..540 live (3 h), 541..720 offline (1 h, with 80 s at 85 km/h
    // over the bus limit of 70), 721..750 live again (10 min).
    let speed = |i: usize| if (600..604).contains(&i) { 85.0 } else { 50.0 };
    let msg = |i: usize| (t.clone(), driving(V, at(i), i, speed(i)));
    let live_before: Vec<_> = (0..=540).map(msg).collect();
    let backlog: Vec<_> = (541..=720).map(msg).collect();
    let live_after: Vec<_> = (721..=750).map(msg).collect();

    let app = start_app(s.clone()).await;
    publish_all(&broker.url(), &live_before).await;
    publish_all(&broker.url(), &live_after).await;
    wait_until("live fixes stored", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 571 }
    })
    .await;
    publish_all(&broker.url(), &backlog).await;
    wait_until("alerts of the backlog", Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM alerts WHERE retracted_at IS NULL AND level = 'violation'
                   AND kind IN ('continuous_driving', 'overspeed')",
            )
            .await
                == 2
        }
    })
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE flags & 16 <> 0").await,
        180,
        "the backlog is flagged late (data quality), and applied"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND level = 'warning' AND retracted_at IS NULL").await,
        1
    );
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let started: DateTime<Utc> = c
        .query_one(
            "SELECT start_ts FROM alerts WHERE kind = 'continuous_driving' AND level = 'violation'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(started, at(0), "one run of driving from the first fix");
    app.shutdown();
    app.wait().await;
    replay_agrees(&db, &s, V, at(0), at(750)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hour_drive_in_100_fix_messages_over_four_connections_is_exact() {
    const V: &str = "51B-913.03";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-burst");
    s.vehicles = vec![registered(V)];
    // The embedded broker's default: four connections in one shared subscription.
    s.mqtt.connections = 4;
    let t = topic("HTX-O", V);
    let start = base_time() - chrono::Duration::hours(4);
    let at = |i: usize| start + chrono::Duration::seconds(9 * i as i64);
    const N: usize = 1_610; // 4 h 01 min 21 s at 9 s
    let msgs: Vec<(String, Vec<u8>)> = (0..N)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|c| {
            let body: Vec<String> = c
                .iter()
                .map(|&i| String::from_utf8(driving(V, at(i), i, 50.0)).unwrap())
                .collect();
            (t.clone(), format!("[{}]", body.join(",")).into_bytes())
        })
        .collect();
    let app = start_app(s.clone()).await;
    publish_all(&broker.url(), &msgs).await;
    wait_until("all stored", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == N as i64 }
    })
    .await;
    wait_until("continuous driving violation", Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND level = 'violation' AND retracted_at IS NULL",
            )
            .await
                == 1
        }
    })
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND level = 'warning' AND retracted_at IS NULL").await,
        1
    );
    eprintln!(
        "late: {}, retracted: {}",
        count(&db, "SELECT count(*) FROM fixes WHERE flags & 16 <> 0").await,
        count(
            &db,
            "SELECT count(*) FROM alerts WHERE retracted_at IS NOT NULL"
        )
        .await
    );
    // Recomputations done: none queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.shutdown();
    app.wait().await;
    replay_agrees(&db, &s, V, at(0), at(N)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_the_true_order_does_not_produce_is_retracted_published_and_logged() {
    const V: &str = "51B-913.04";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-retract");
    s.vehicles = vec![registered(V)];
    let t = topic("HTX-O", V);
    let start = base_time() - chrono::Duration::hours(1);
    let at = |i: usize| start + chrono::Duration::seconds(i as i64);
    // 1 Hz: 85 km/h (bus limit 70) for i = 0..=30, then 40. Fixes 10..=20 are at 40
    // and come late: without them the episode seems to last 30 s (an alert); in
    // event-time order it is two runs of 10 s (none).
    let speed = |i: usize| {
        if i <= 30 && !(10..=20).contains(&i) {
            85.0
        } else {
            40.0
        }
    };
    let msg = |i: usize| (t.clone(), driving(V, at(i), i, speed(i)));
    let live: Vec<_> = (0..=90)
        .filter(|i| !(10..=20).contains(i))
        .map(msg)
        .collect();
    let backlog: Vec<_> = (10..=20).map(msg).collect();
    let app = start_app(s.clone()).await;
    publish_all(&broker.url(), &live).await;
    wait_until("overspeed published", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed' AND status = 'closed' AND published_at IS NOT NULL").await == 1
        }
    })
    .await;
    publish_all(&broker.url(), &backlog).await;
    wait_until("overspeed retracted and published", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed' AND retracted_at IS NOT NULL AND published_at IS NOT NULL").await == 1
        }
    })
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM reminder_log r JOIN alerts a USING (alert_id) WHERE a.kind = 'overspeed' AND r.status = 'retracted'").await,
        1,
        "the legal log records the retraction"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed' AND retraction_reason IS NOT NULL").await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed'").await,
        1,
        "kept, not deleted"
    );
    // The API leaves it out unless asked, and then says why it was retracted.
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let token =
        fleetwatch::api::auth::create_token(&c, fleetwatch::api::auth::Role::Regulator, None, None)
            .await
            .unwrap();
    let listed = crate::api::get(app.http_addr, "/api/v1/alerts?kind=overspeed", &token)
        .await
        .json();
    assert_eq!(listed["count"], 0, "{listed}");
    let all = crate::api::get(
        app.http_addr,
        "/api/v1/alerts?kind=overspeed&include_retracted=true",
        &token,
    )
    .await
    .json();
    assert_eq!(all["count"], 1, "{all}");
    assert!(all["alerts"][0]["retracted_at"].is_string(), "{all}");
    assert!(all["alerts"][0]["retraction_reason"].is_string(), "{all}");
    app.shutdown();
    app.wait().await;
    replay_agrees(&db, &s, V, at(0), at(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_fixes_rewrite_the_trips_and_data_gaps_of_their_span() {
    const V: &str = "51B-913.05";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-trips");
    s.vehicles = vec![registered(V)];
    let t = topic("HTX-O", V);
    let start = base_time() - chrono::Duration::hours(1);
    // 10 s cadence (`half`: 5 s later). Live: driving, stopped 4 min (i = 31..=54:
    // a stop, so two trips), driving with 5 min missing (i = 91..=120: a data gap),
    // stopped again (the second trip ends). Late: the missing 5 min, and fixes at
    // 40 km/h between the stopped ones: in event-time order the vehicle never
    // stopped 3 min, so one trip and no gap.
    let at = |i: usize, half: bool| {
        start + chrono::Duration::seconds(10 * i as i64 + if half { 5 } else { 0 })
    };
    let stopped = |i: usize| (31..=54).contains(&i) || (151..=175).contains(&i);
    let msg = |i: usize, half: bool| {
        let speed = if stopped(i) && !half { 0.0 } else { 40.0 };
        (t.clone(), driving(V, at(i, half), i, speed))
    };
    let live: Vec<_> = (0..=180)
        .filter(|i| !(91..=120).contains(i))
        .map(|i| msg(i, false))
        .collect();
    let backlog: Vec<_> = (91..=120)
        .map(|i| msg(i, false))
        .chain((31..=53).map(|i| msg(i, true)))
        .collect();
    let app = start_app(s.clone()).await;
    publish_all(&broker.url(), &live).await;
    wait_until("two trips and a gap", Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM trips").await == 2
                && count(&db, "SELECT count(*) FROM data_gaps").await == 1
        }
    })
    .await;
    publish_all(&broker.url(), &backlog).await;
    wait_until("one trip, no gap", Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM fixes").await == 181 + 23
                && count(&db, "SELECT count(*) FROM trips").await == 1
                && count(&db, "SELECT count(*) FROM data_gaps").await == 0
        }
    })
    .await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let trip = c
        .query_one("SELECT start_ts, end_ts FROM trips", &[])
        .await
        .unwrap();
    assert_eq!(trip.get::<_, DateTime<Utc>>(0), at(0, false));
    assert_eq!(trip.get::<_, DateTime<Utc>>(1), at(151, false));
    // The roll-ups the reports read say the same.
    let r = c
        .query_one(
            "SELECT sum(trips)::int8, sum(data_gaps)::int8, sum(data_gap_us)::int8 FROM rollup_daily WHERE vehicle_id = $1",
            &[&V],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
        (1, 0, 0)
    );
    app.shutdown();
    app.wait().await;
    replay_agrees(&db, &s, V, at(0, false), at(181, false)).await;
}

/// A fix of `vehicle` at `ts`, `i` steps east when moving, with `driver` logged in.
fn fix_msg(vehicle: &str, ts: DateTime<Utc>, i: usize, kmh: f64, driver: Option<&str>) -> Vec<u8> {
    let ts = ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let driver = driver.map_or(String::new(), |d| format!(r#","driver_id":"{d}""#));
    format!(
        r#"{{"vehicle":"{vehicle}","ts":"{ts}","lat":10.95,"lon":{:.6},"speed_kmh":{kmh}{driver},"ignition":true,"satellites":9,"hdop":0.9}}"#,
        106.60 + i as f64 * 1e-4
    )
    .into_bytes()
}

/// Driver D drives bus A for 2 h, stands, logs out, and 5 min later drives bus B for
/// 2 h 05: one continuous run of 4 h 05 (no 15-min break), a warning and a violation
/// on B. 20 minutes of A's fixes come late: live, they look like a break (no alert);
/// the recomputation of A follows D to B and replays both buses in event-time order.
/// The stored alerts are the in-order run's, and the driver's live state agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_fix_is_recomputed_across_the_vehicles_its_driver_moved_to() {
    const A: &str = "51B-913.06";
    const B: &str = "51B-913.07";
    const D: &str = "079000000077";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-shared");
    s.vehicles = vec![registered(A), registered(B)];
    // Ending about 40 s ago, so the live state is still in its run.
    let start = base_time() - chrono::Duration::seconds(3 * 3600 + 14 * 60);
    let at = |i: usize| start + chrono::Duration::seconds(20 * i as i64);
    // (vehicle, i, speed, driver), 20 s cadence.
    let mut track: Vec<(&str, usize, f64, Option<&str>)> = Vec::new();
    for i in 0..=380 {
        let (kmh, d) = match i {
            0..=360 => (50.0, Some(D)),
            361..=364 => (0.0, Some(D)),
            _ => (0.0, None),
        };
        track.push((A, i, kmh, d));
    }
    for i in 350..=760 {
        let (kmh, d) = match i {
            375..=750 => (50.0, Some(D)),
            751.. => (0.0, Some(D)),
            _ => (0.0, None),
        };
        track.push((B, i, kmh, d));
    }
    track.sort_by_key(|&(v, i, _, _)| (at(i), v));
    let hole = |v: &str, i: usize| v == A && (120..=180).contains(&i);
    // Where the bus is at step `i`: standing where it stopped (or will start).
    let place = |v: &str, i: usize| {
        if v == A {
            i.min(361)
        } else {
            i.clamp(375, 751)
        }
    };
    let msg = |&(v, i, kmh, d): &(&str, usize, f64, Option<&str>)| {
        let step = place(v, i);
        (topic("HTX-O", v), fix_msg(v, at(i), step, kmh, d))
    };
    let live: Vec<_> = track.iter().filter(|x| !hole(x.0, x.1)).map(msg).collect();
    let late: Vec<_> = track.iter().filter(|x| hole(x.0, x.1)).map(msg).collect();

    // The in-order run, through the rules alone.
    let limits = fleetwatch::domain::FixLimits::default();
    let mut engine = fleetwatch::rules::Engine::new(
        s.rules.clone(),
        std::sync::Arc::new(fleetwatch::geo::GeoIndex::new(vec![], vec![]).unwrap()),
        s.vehicles.clone(),
    );
    let mut out = fleetwatch::rules::Output::default();
    for &(v, i, kmh, d) in &track {
        let step = place(v, i);
        let c = fleetwatch::domain::FixCandidate {
            ts: Some(at(i)),
            lat: 10.95,
            lon: 106.60 + step as f64 * 1e-4,
            speed_kmh: Some(kmh),
            driver: d.map(str::to_string),
            ignition: Some(true),
            satellites: Some(9),
            hdop: Some(0.9),
            ..Default::default()
        };
        let vid = fleetwatch::domain::VehicleId::parse(v).unwrap();
        let f = fleetwatch::domain::Fix::validate(c, vid, &limits, Utc::now()).unwrap();
        out.append(engine.push(&f));
    }
    out.append(engine.flush());
    let mut want: std::collections::BTreeMap<String, String> = Default::default();
    for a in out.alerts.iter().filter(|a| a.kind.as_str() != "no_signal") {
        let row = format!(
            "{} {} {} {:?} {} {:?}",
            a.vehicle.as_str(),
            a.kind.as_str(),
            serde_json::to_value(a.level).unwrap(),
            a.status,
            a.start,
            a.end
        );
        want.insert(a.id.as_str().to_string(), row);
    }
    let kinds: Vec<&str> = want.values().map(|r| r.as_str()).collect();
    assert!(
        kinds
            .iter()
            .any(|r| r.starts_with(&format!("{B} continuous_driving \"violation\""))),
        "in order, a violation on B: {kinds:?}"
    );
    let expected_live = out
        .live
        .iter()
        .filter(|l| l.vehicle.as_str() == B)
        .max_by_key(|l| l.as_of)
        .cloned()
        .unwrap();

    let app = start_app(s.clone()).await;
    publish_all(&broker.url(), &live).await;
    wait_until("live fixes stored", Duration::from_secs(60), || {
        let db = db.clone();
        let n = live.len() as i64;
        async move { count(&db, "SELECT count(*) FROM fixes").await == n }
    })
    .await;
    let violations = "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving'
                        AND level = 'violation' AND retracted_at IS NULL";
    assert_eq!(count(&db, violations).await, 0, "live, the hole is a break");
    publish_all(&broker.url(), &late).await;
    wait_until("the violation on B", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, violations).await == 1 }
    })
    .await;
    // Recomputation done: the stored alerts are the in-order ones.
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let stored = || async {
        let rows = c
            .query(
                "SELECT alert_id, vehicle_id, kind, level, status, start_ts, end_ts FROM alerts
                 WHERE retracted_at IS NULL AND kind <> 'no_signal'",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let status: String = r.get(4);
                let status = if status == "open" { "Open" } else { "Closed" };
                (
                    r.get::<_, String>(0),
                    format!(
                        "{} {} \"{}\" {} {} {:?}",
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, String>(3),
                        status,
                        r.get::<_, DateTime<Utc>>(5),
                        r.get::<_, Option<DateTime<Utc>>>(6)
                    ),
                )
            })
            .collect::<std::collections::BTreeMap<String, String>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got = stored().await;
    while got != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = stored().await;
    }
    assert_eq!(got, want, "stored (not retracted) vs in order");
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE flags & 16 <> 0").await,
        late.len() as i64,
        "the hole is flagged late"
    );
    let skipped = format!(
        "SELECT count(*) FROM fixes WHERE flags & {} <> 0",
        fleetwatch::pipeline::SKIPPED_BY_RULES
    );
    assert_eq!(
        count(&db, &skipped).await,
        0,
        "every fix applied, as in order"
    );

    // The driver's live state, as the API shows it, is the in-order one.
    let token = fleetwatch::api::auth::create_token(
        &c,
        fleetwatch::api::auth::Role::Cooperative,
        Some("HTX-O"),
        None,
    )
    .await
    .unwrap();
    let now = fleetwatch::domain::live::driving_now(
        &s.rules.driving_limits(),
        Utc::now(),
        expected_live.continuous_s,
        expected_live.last_drive_end,
        Some(expected_live.day),
        expected_live.daily_s,
        expected_live.weekly_s,
    );
    assert!(now.continuous_s > 14_400.0, "{now:?}");
    // The late fixes arrive while the first recomputation runs: it is done again for
    // those not yet stored then, and the last fix leaves the reorder window on the
    // next processing-time tick after it.
    let want_as_of = fleetwatch::api::vehicles::rfc3339(expected_live.as_of);
    let path = format!("/api/v1/drivers/{D}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut d = crate::api::get(app.http_addr, &path, &token).await.json();
    while (d["as_of"].as_str() != Some(want_as_of.as_str())
        || d["continuous_driving_s"] != now.continuous_s.round())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        d = crate::api::get(app.http_addr, &path, &token).await.json();
    }
    assert_eq!(d["vehicle_id"], B, "{d}");
    assert_eq!(d["as_of"].as_str(), Some(want_as_of.as_str()), "{d}");
    assert_eq!(d["continuous_driving_s"], now.continuous_s.round(), "{d}");
    assert_eq!(d["daily_driving_s"], now.daily_s.round(), "{d}");
    assert_eq!(d["weekly_driving_s"], now.weekly_s.round(), "{d}");
    app.shutdown();
    app.wait().await;
}
