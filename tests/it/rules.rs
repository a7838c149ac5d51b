//! The rules end to end: fixes through the broker, alerts stored once, published once;
//! rule state survives a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use fleetwatch::infra::broker::EmbeddedBroker;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::support::*;

fn bus(id: &str) -> Vehicle {
    Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse("HTX-R").unwrap(),
        class: VehicleClass::Bus,
        route: None,
        device_id: None,
    }
}

/// A fix with a driver, heading east at `speed_kmh` (position advances with time).
fn driven(vehicle: &str, ts: DateTime<Utc>, i: usize, speed_kmh: f64) -> Vec<u8> {
    let ts = ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        r#"{{"vehicle":"{vehicle}","ts":"{ts}","lat":10.95,"lon":{:.6},"speed_kmh":{speed_kmh},"driver_id":"079000000001","ignition":true,"satellites":9,"hdop":0.9}}"#,
        106.60 + i as f64 * 1e-4
    )
    .into_bytes()
}

/// Collects alert messages published by fleetwatch: alert_id → statuses seen.
async fn alert_listener(url: &str) -> Arc<Mutex<HashMap<String, Vec<String>>>> {
    let u = url::Url::parse(url).unwrap();
    let mut o = MqttOptions::new("alert-listener", u.host_str().unwrap(), u.port().unwrap());
    if !u.username().is_empty() {
        o.set_credentials(u.username(), u.password().unwrap_or_default());
    }
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 100);
    client
        .subscribe("fleet/+/+/alert", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                let id = v["alert_id"].as_str().unwrap().to_string();
                let status = v["status"].as_str().unwrap().to_string();
                s.lock().unwrap().entry(id).or_default().push(status);
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overspeed_alert_is_stored_once_and_published_once() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-rules-overspeed");
    s.vehicles = vec![bus("51B-900.01")];
    let app = start_app(s).await;
    let seen = alert_listener(&broker.url()).await;

    // 60 s at 40, 30 s at 85 (bus limit 70: excess 15 → band 2), 60 s at 40.
    let base = base_time();
    let t = topic("HTX-R", "51B-900.01");
    let speeds = (0..150).map(|i| if (60..90).contains(&i) { 85.0 } else { 40.0 });
    let msgs: Vec<(String, Vec<u8>)> = speeds
        .enumerate()
        .map(|(i, v)| {
            (
                t.clone(),
                driven(
                    "51B-900.01",
                    base + chrono::Duration::seconds(i as i64),
                    i,
                    v,
                ),
            )
        })
        .collect();
    publish_all(&broker.url(), &msgs).await;
    wait_until("overspeed closed and published", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed' AND status = 'closed' AND published_at IS NOT NULL").await == 1
        }
    })
    .await;
    // Re-sending the same fixes (a device retry) changes nothing.
    publish_all(&broker.url(), &msgs).await;
    let marker = vec![(
        t.clone(),
        driven(
            "51B-900.01",
            base + chrono::Duration::seconds(200),
            200,
            40.0,
        ),
    )];
    publish_all(&broker.url(), &marker).await;
    wait_until("marker stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 151 }
    })
    .await;

    let c = fleetwatch::store::connect(&db).await.unwrap();
    let row = c
        .query_one(
            "SELECT alert_id, severity, level, (details->>'max_speed_kmh')::float8, (details->>'limit_kmh')::float8,
                    extract(epoch from end_ts - start_ts)::float8
             FROM alerts WHERE kind = 'overspeed'",
            &[],
        )
        .await
        .unwrap();
    let id: String = row.get(0);
    assert_eq!(
        row.get::<_, Option<i16>>(1),
        Some(2),
        "excess 15 km/h is band 2"
    );
    assert_eq!(row.get::<_, String>(2), "violation");
    assert_eq!(row.get::<_, f64>(3), 85.0);
    assert_eq!(row.get::<_, f64>(4), 70.0);
    assert!(
        (28.0..=30.0).contains(&row.get::<_, f64>(5)),
        "duration {}",
        row.get::<_, f64>(5)
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM alerts WHERE kind = 'overspeed'").await,
        1
    );
    // Every stored version was published exactly once, and logged.
    wait_until(
        "listener got the closed alert",
        Duration::from_secs(10),
        || {
            let got = seen
                .lock()
                .unwrap()
                .get(&id)
                .is_some_and(|v| v.contains(&"closed".to_string()));
            async move { got }
        },
    )
    .await;
    let statuses = seen.lock().unwrap().get(&id).cloned().unwrap();
    let closed = statuses.iter().filter(|s| *s == "closed").count();
    let open = statuses.iter().filter(|s| *s == "open").count();
    assert_eq!((closed, open <= 1), (1, true), "published: {statuses:?}");
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM reminder_log WHERE alert_id = '{id}'")
        )
        .await,
        statuses.len() as i64
    );
    app.shutdown();
    app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_driving_survives_a_restart() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-rules-restart");
    s.vehicles = vec![bus("51B-900.02")];
    let t = topic("HTX-R", "51B-900.02");
    let start = Utc::now() - chrono::Duration::hours(6);
    let at = |i: usize| start + chrono::Duration::seconds(20 * i as i64);
    // 3 h 50 min of driving, one fix every 20 s.
    let first: Vec<(String, Vec<u8>)> = (0..=690)
        .map(|i| (t.clone(), driven("51B-900.02", at(i), i, 50.0)))
        .collect();
    let app = start_app(s.clone()).await;
    publish_all(&broker.url(), &first).await;
    wait_until("first part stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 691 }
    })
    .await;
    app.shutdown();
    app.wait().await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM rule_state").await,
        1,
        "checkpoint written at shutdown"
    );

    // A new process: 15 more minutes of driving crosses the 4 h limit only if the
    // first 3 h 50 min were remembered.
    let app = start_app(s).await;
    let second: Vec<(String, Vec<u8>)> = (691..=735)
        .map(|i| (t.clone(), driven("51B-900.02", at(i), i, 50.0)))
        .collect();
    publish_all(&broker.url(), &second).await;
    wait_until("continuous driving violation", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND level = 'violation'").await == 1
        }
    })
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND level = 'warning'"
        )
        .await,
        1,
        "one warning 5 minutes before the limit"
    );
    app.shutdown();
    app.wait().await;
}

/// PAIR-1 (fixtures/gtfs-pair): east on street A (10.95 N), back west on street B
/// 150 m north; `detour`: 2 min on a street 300 m north of B. One fix every 5 s from
/// `t0` s after the base time, as (offset s, lat, lon).
fn pair_trip(t0: i64, detour: bool) -> Vec<(i64, f64, f64)> {
    const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;
    let (a, b) = (10.95, 10.951349);
    let dlon = |m: f64, lat: f64| m / (M_PER_DEG * f64::to_radians(lat).cos());
    let step = dlon(30.0 / 3.6 * 5.0, a);
    let mut out = Vec::new();
    let mut t = t0;
    let mut push = |lat: f64, lon: f64, t: &mut i64| {
        out.push((*t, lat, lon));
        *t += 5;
    };
    let mut lon = 106.651;
    for _ in 0..114 {
        push(a, lon, &mut t);
        lon += step;
    }
    // Layover 120 m past the east terminal: off the corridor, inside the terminal radius.
    for _ in 0..60 {
        push(a, 106.70 + dlon(120.0, a), &mut t);
    }
    let mut lon = 106.699;
    for k in 0..112 {
        let lat = if detour && (56..80).contains(&k) {
            b + 300.0 / M_PER_DEG
        } else {
            b
        };
        push(lat, lon, &mut t);
        lon -= step;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtfs_route_of_all_its_shapes_through_the_app_and_a_broken_reload_keeps_it() {
    use fleetwatch::api::auth::{create_token, Role};
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    // A copy of the feed, to break it later.
    let feed = std::env::temp_dir().join(format!("fw-it-gtfs-pair-{}", std::process::id()));
    std::fs::create_dir_all(&feed).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gtfs-pair");
    for f in [
        "routes.txt",
        "trips.txt",
        "shapes.txt",
        "stops.txt",
        "stop_times.txt",
    ] {
        std::fs::copy(src.join(f), feed.join(f)).unwrap();
    }
    let mut s = settings(&db, &broker.url(), "fw-rules-gtfs-pair");
    s.geo.gtfs = vec![feed.clone()];
    let mut v = bus("51B-777.01");
    v.route = Some("PAIR-1".into());
    s.vehicles = vec![v];
    let app = start_app(s).await;
    let t = topic("HTX-R", "51B-777.01");
    let base = base_time() - chrono::Duration::hours(1);
    let msgs = |trip: Vec<(i64, f64, f64)>| -> Vec<(String, Vec<u8>)> {
        trip.into_iter()
            .map(|(dt, lat, lon)| {
                let ts = base + chrono::Duration::seconds(dt);
                (t.clone(), fix("51B-777.01", ts, lat, lon, 30.0))
            })
            .collect()
    };
    let off_route = "SELECT count(*) FROM alerts WHERE kind = 'off_route'";
    let closed = "SELECT count(*) FROM alerts WHERE kind = 'off_route' AND status = 'closed'";

    // Out and back without a detour, then with one: exactly one alert.
    let first = msgs(pair_trip(0, false));
    let second = msgs(pair_trip(2000, true));
    let n = (first.len() + second.len()) as i64;
    publish_all(&broker.url(), &first).await;
    publish_all(&broker.url(), &second).await;
    wait_until("the detour's alert closed", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, closed).await == 1 }
    })
    .await;
    wait_until("all fixes stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == n }
    })
    .await;
    assert_eq!(count(&db, off_route).await, 1);
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let row = c
        .query_one(
            "SELECT (details->>'max_distance_m')::float8, details->>'route_id', start_ts
             FROM alerts WHERE kind = 'off_route'",
            &[],
        )
        .await
        .unwrap();
    assert!((row.get::<_, f64>(0) - 300.0).abs() < 1.0);
    assert_eq!(row.get::<_, String>(1), "PAIR-1");
    assert!(row.get::<_, DateTime<Utc>>(2) > base + chrono::Duration::seconds(2000));

    // A broken feed is refused with its file and line; the good geography stays.
    std::fs::write(
        feed.join("stops.txt"),
        "stop_id,stop_name,stop_lat,stop_lon\nA-W,A-W,10.95,106.65\nA-M,A-M,north,106.675\n",
    )
    .unwrap();
    let admin = create_token(&c, Role::Admin, None, None).await.unwrap();
    let r = crate::api::http(
        app.http_addr,
        "POST",
        "/admin/reload-geo",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("stops.txt:3") && r.body.contains("stop_lat"),
        "{}",
        r.body
    );
    // Another detour: the route is still known, so it is still checked.
    let third = msgs(pair_trip(4000, true));
    publish_all(&broker.url(), &third).await;
    wait_until("the second detour's alert", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, closed).await == 2 }
    })
    .await;
    app.shutdown();
    app.wait().await;
    std::fs::remove_dir_all(&feed).ok();
}
