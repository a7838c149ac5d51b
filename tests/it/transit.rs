//! Scheduled trips through the app (issue 11): a GTFS feed with a schedule, a bus
//! running one of its trips 3 min late and driving through one stop; the trip run,
//! its stop events and the `schedule_deviation` and `stop_skipped` alerts are stored.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use fleetwatch::infra::broker::EmbeddedBroker;

use crate::support::*;

pub(crate) const LAT: f64 = 10.95;
pub(crate) const LON0: f64 = 106.65;
const STEP: f64 = 0.01;

fn hms(s: i64) -> String {
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Route L1 east along 10.95 N, stops S0..S5 every 0.01° (1,092 m); trip T1 leaves
/// S0 at local `dep_s` (seconds after local midnight), 140 s between stops. No
/// calendar files: the service runs every day.
pub(crate) fn write_feed(dir: &std::path::Path, dep_s: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let stops: String = (0..6)
        .map(|k| format!("S{k},Stop {k},{LAT},{:.4}\n", LON0 + STEP * f64::from(k)))
        .collect();
    let times: String = (0..6)
        .map(|k| {
            let (a, d) = match k {
                0 => (hms(dep_s), hms(dep_s)),
                _ => (hms(dep_s + 140 * k - 35), hms(dep_s + 140 * k - 5)),
            };
            format!("T1,{a},{d},S{k},{}\n", k + 1)
        })
        .collect();
    let shape: String = (0..6)
        .map(|k| format!("SH,{LAT},{:.4},{}\n", LON0 + STEP * f64::from(k), k + 1))
        .collect();
    for (name, text) in [
        (
            "routes.txt",
            "route_id,route_short_name\nL1,1\n".to_string(),
        ),
        (
            "trips.txt",
            "route_id,service_id,trip_id,shape_id\nL1,ALL,T1,SH\n".into(),
        ),
        (
            "stops.txt",
            format!("stop_id,stop_name,stop_lat,stop_lon\n{stops}"),
        ),
        (
            "stop_times.txt",
            format!("trip_id,arrival_time,departure_time,stop_id,stop_sequence\n{times}"),
        ),
        (
            "shapes.txt",
            format!("shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\n{shape}"),
        ),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// A bus waiting 2 min at S0, leaving at `depart`, 36 km/h, 5 s fixes, 30 s at each
/// stop but `through`, 3 min standing at S5.
pub(crate) fn bus_run(depart: DateTime<Utc>, through: i32) -> Vec<(DateTime<Utc>, f64, f64)> {
    let mut out = Vec::new();
    let mut t = depart - chrono::Duration::seconds(120);
    while t <= depart {
        out.push((t, LON0, 0.0));
        t += chrono::Duration::seconds(5);
    }
    let per_5s = STEP / 109.2 * 5.0;
    let mut lon = LON0;
    for k in 1..=5 {
        let target = LON0 + STEP * f64::from(k);
        while lon + per_5s < target {
            lon += per_5s;
            out.push((t, lon, 36.0));
            t += chrono::Duration::seconds(5);
        }
        lon = target;
        let dwell = match k {
            _ if k == through => 0,
            5 => 180,
            _ => 30,
        };
        if dwell == 0 {
            out.push((t, lon, 36.0));
            t += chrono::Duration::seconds(5);
        }
        for _ in 0..dwell / 5 {
            out.push((t, lon, 0.0));
            t += chrono::Duration::seconds(5);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_run_with_a_skipped_stop_is_stored() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    // The trip leaves at the local time of `base` (UTC+7, the default offset); the
    // bus 3 min after it.
    let base = base_time() - chrono::Duration::minutes(30);
    let local = base + chrono::Duration::hours(7);
    let dep_s = i64::from(local.num_seconds_from_midnight());
    let feed = std::env::temp_dir().join(format!("fw-it-transit-{}", std::process::id()));
    write_feed(&feed, dep_s);
    let mut s = settings(&db, &broker.url(), "fw-transit");
    s.geo.gtfs = vec![feed.clone()];
    s.rules.transit.late_s = 120;
    s.vehicles = vec![Vehicle {
        id: VehicleId::parse("51B-111.11").unwrap(),
        plate: None,
        cooperative: CooperativeId::parse("HTX-T").unwrap(),
        class: VehicleClass::Bus,
        route: Some("L1".into()),
        device_id: None,
    }];
    let app = start_app(s).await;
    let t = topic("HTX-T", "51B-111.11");
    let msgs: Vec<(String, Vec<u8>)> = bus_run(base + chrono::Duration::minutes(3), 3)
        .into_iter()
        .map(|(ts, lon, v)| (t.clone(), fix("51B-111.11", ts, LAT, lon, v)))
        .collect();
    publish_all(&broker.url(), &msgs).await;
    wait_until("the trip run stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM trip_runs").await == 1 }
    })
    .await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let r = c
        .query_one(
            "SELECT trip_id, route_id, cooperative_id, completed, stops_served, stops_skipped,
                    stops_total, last_delay_s, confidence
             FROM trip_runs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "T1");
    assert_eq!(r.get::<_, String>(1), "L1");
    assert_eq!(r.get::<_, String>(2), "HTX-T");
    assert!(r.get::<_, bool>(3));
    assert_eq!(
        (r.get::<_, i16>(4), r.get::<_, i16>(5), r.get::<_, i16>(6)),
        (5, 1, 6)
    );
    // 3 min late, 30 s made up by not dwelling at S3.
    let delay = r.get::<_, i32>(7);
    assert!((120..=180).contains(&delay), "{delay}");
    assert!(r.get::<_, i16>(8) >= 80);
    let rows = c
        .query(
            "SELECT stop_id, skipped, deviation_s FROM stop_events ORDER BY stop_sequence",
            &[],
        )
        .await
        .unwrap();
    let stops: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, bool)> = (0..6).map(|k| (format!("S{k}"), k == 3)).collect();
    assert_eq!(stops, want);
    for (k, r) in rows.iter().enumerate() {
        let d: i32 = r.get(2);
        let want = if k <= 3 { 150..=210 } else { 120..=180 };
        assert!(want.contains(&d), "S{k}: {d}");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM alerts WHERE kind = 'stop_skipped'"
        )
        .await,
        1
    );
    wait_until("the deviation closed", Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM alerts WHERE kind = 'schedule_deviation' AND status = 'closed'",
            )
            .await
                == 1
        }
    })
    .await;
    app.shutdown();
    app.wait().await;
    std::fs::remove_dir_all(&feed).ok();
}

/// The API of what buses ran: two cooperatives' buses on trip T1, A's 3 min late and
/// B's on time; while A's runs, its live record carries the trip, next stop and delay;
/// once both have ended, each cooperative sees only its own run and stop events, and
/// B's come back on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trip_runs_and_stop_events_are_served_per_cooperative() {
    use crate::api::http;
    use fleetwatch::api::auth::{create_token, Role};
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let base = base_time() - chrono::Duration::minutes(30);
    let local = base + chrono::Duration::hours(7);
    let dep_s = i64::from(local.num_seconds_from_midnight());
    let feed = std::env::temp_dir().join(format!("fw-it-transit-api-{}", std::process::id()));
    write_feed(&feed, dep_s);
    let mut s = settings(&db, &broker.url(), "fw-transit-api");
    s.geo.gtfs = vec![feed.clone()];
    s.rules.transit.late_s = 120;
    let bus = |id: &str, coop: &str| Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse(coop).unwrap(),
        class: VehicleClass::Bus,
        route: Some("L1".into()),
        device_id: None,
    };
    s.vehicles = vec![bus("51B-111.11", "HTX-A"), bus("51B-222.22", "HTX-B")];
    let app = start_app(s).await;
    let addr = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let tok_a = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let tok_b = create_token(&c, Role::Cooperative, Some("HTX-B"), None)
        .await
        .unwrap();
    let msgs = |coop: &str, v: &str, run: Vec<(DateTime<Utc>, f64, f64)>| {
        let t = topic(coop, v);
        run.into_iter()
            .map(|(ts, lon, kmh)| (t.clone(), fix(v, ts, LAT, lon, kmh)))
            .collect::<Vec<_>>()
    };
    let late = msgs(
        "HTX-A",
        "51B-111.11",
        bus_run(base + chrono::Duration::minutes(3), 0),
    );
    // A's bus up to between S2 and S3 (waiting 2 min, then about 5 min on the way).
    let (first, rest) = late.split_at(24 + 60);
    publish_all(&broker.url(), first).await;
    let live_trip = "SELECT count(*) FROM vehicles
                     WHERE vehicle_id = '51B-111.11' AND live_trip_id = 'T1' AND live_delay_s > 0";
    wait_until("A's live trip", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, live_trip).await == 1 }
    })
    .await;
    let r = http(addr, "GET", "/api/v1/vehicles", Some(&tok_a), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = &r.json()["vehicles"][0];
    assert_eq!(v["vehicle_id"], "51B-111.11");
    let trip = &v["trip"];
    assert_eq!(trip["trip_id"], "T1", "{v}");
    assert_eq!(trip["route_id"], "L1");
    assert_eq!(trip["next_stop_id"], "S3", "{trip}");
    assert_eq!(trip["next_stop_name"], "Stop 3");
    let delay = trip["delay_s"].as_i64().unwrap();
    assert!((150..=210).contains(&delay), "{delay}");
    gtfs_rt_of_a_late_bus(addr, &tok_a, &tok_b).await;
    publish_all(&broker.url(), rest).await;
    publish_all(
        &broker.url(),
        &msgs("HTX-B", "51B-222.22", bus_run(base, 0)),
    )
    .await;
    wait_until("both runs stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM trip_runs").await == 2 }
    })
    .await;
    // The ended run is no longer live.
    wait_until("A's live trip cleared", Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM vehicles WHERE live_trip_id IS NULL AND last_fix_ts IS NOT NULL",
            )
            .await
                == 2
        }
    })
    .await;

    for (tok, vehicle, coop) in [
        (&tok_a, "51B-111.11", "HTX-A"),
        (&tok_b, "51B-222.22", "HTX-B"),
    ] {
        let r = http(addr, "GET", "/api/v1/trip-runs", Some(tok), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        assert_eq!(j["count"], 1, "{j}");
        let run = &j["trip_runs"][0];
        assert_eq!(run["vehicle_id"], vehicle);
        assert_eq!(run["cooperative_id"], coop);
        assert_eq!(run["trip_id"], "T1");
        assert_eq!(run["route_id"], "L1");
        assert_eq!(run["stops_served"], 6);
        assert!(j["next_cursor"].is_null());
        let r = http(
            addr,
            "GET",
            &format!(
                "/api/v1/stop-events?trip=T1&from={}",
                rfc(base - chrono::Duration::hours(1))
            ),
            Some(tok),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        let events = j["stop_events"].as_array().unwrap();
        assert_eq!(events.len(), 6, "{j}");
        let seqs: Vec<i64> = events
            .iter()
            .map(|e| e["stop_sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        for e in events {
            assert_eq!(e["vehicle_id"], vehicle, "{e}");
            assert_eq!(e["skipped"], false);
            let d = e["deviation_s"].as_i64().unwrap();
            let want = if coop == "HTX-A" { 150..=210 } else { -30..=30 };
            assert!(want.contains(&d), "{coop} {}: {d}", e["stop_id"]);
        }
    }
    // Another cooperative's vehicle is refused; its trip filter finds nothing.
    let r = http(
        addr,
        "GET",
        "/api/v1/trip-runs?cooperative=HTX-B",
        Some(&tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        addr,
        "GET",
        "/api/v1/stop-events?vehicle=51B-222.22",
        Some(&tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["count"], 0);
    // A regulator sees both, a page at a time.
    let reg = create_token(&c, Role::Regulator, None, None).await.unwrap();
    let r = http(addr, "GET", "/api/v1/trip-runs?limit=1", Some(&reg), None).await;
    let j = r.json();
    assert_eq!(j["count"], 1, "{j}");
    let first_vehicle = j["trip_runs"][0]["vehicle_id"].clone();
    let cursor = j["next_cursor"].as_str().expect("a next page").to_string();
    let r = http(
        addr,
        "GET",
        &format!(
            "/api/v1/trip-runs?limit=1&cursor={}",
            cursor.replace(':', "%3A")
        ),
        Some(&reg),
        None,
    )
    .await;
    let j = r.json();
    assert_eq!(j["count"], 1, "{j}");
    assert_ne!(j["trip_runs"][0]["vehicle_id"], first_vehicle);
    assert!(j["next_cursor"].is_null());
    let r = http(addr, "GET", "/api/v1/trip-runs", None, None).await;
    assert_eq!(r.status, 401);
    app.shutdown();
    app.wait().await;
    std::fs::remove_dir_all(&feed).ok();
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A GET answered with a body of bytes (protobuf): status, headers, body.
async fn get_bytes(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..at].to_vec()).unwrap();
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    (head[9..12].parse().unwrap(), head, raw[at + 4..].to_vec())
}

/// The GTFS-realtime feeds while A's bus runs T1 about 3 min late (between S2 and S3).
async fn gtfs_rt_of_a_late_bus(addr: std::net::SocketAddr, tok_a: &str, tok_b: &str) {
    use fleetwatch::api::gtfs_rt::proto::{self, FeedMessage};
    use prost::Message;
    let (status, head, body) = get_bytes(
        addr,
        "/api/v1/gtfs-rt/vehicle-positions?max_age_s=86400",
        tok_a,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-protobuf"),
        "{head}"
    );
    let feed = FeedMessage::decode(&body[..]).expect("a GTFS-realtime FeedMessage");
    assert_eq!(feed.header.gtfs_realtime_version, "2.0");
    assert_eq!(
        feed.header.incrementality,
        Some(proto::Incrementality::FullDataset as i32)
    );
    let now = Utc::now().timestamp() as u64;
    let ts = feed.header.timestamp.unwrap();
    assert!(ts <= now && ts + 60 > now, "{ts} {now}");
    assert_eq!(feed.entity.len(), 1, "{feed:?}");
    let v = feed.entity[0].vehicle.as_ref().unwrap();
    let trip = v.trip.as_ref().unwrap();
    assert_eq!(trip.trip_id.as_deref(), Some("T1"));
    assert_eq!(trip.route_id.as_deref(), Some("L1"));
    assert_eq!(
        trip.schedule_relationship,
        Some(proto::trip_descriptor::ScheduleRelationship::Scheduled as i32)
    );
    assert_eq!(trip.start_date.as_ref().map(String::len), Some(8));
    assert_eq!(
        v.vehicle.as_ref().unwrap().id.as_deref(),
        Some("51B-111.11")
    );
    assert_eq!(v.stop_id.as_deref(), Some("S3"));
    assert_eq!(v.current_stop_sequence, Some(4));
    let p = v.position.as_ref().unwrap();
    assert!((p.latitude - LAT as f32).abs() < 1e-4, "{p:?}");
    // 36 km/h is 10 m/s, or 0 standing at a stop.
    assert!(p.speed.is_some_and(|sp| sp == 10.0 || sp == 0.0), "{p:?}");

    let (status, _, body) =
        get_bytes(addr, "/api/v1/gtfs-rt/trip-updates?max_age_s=86400", tok_a).await;
    assert_eq!(status, 200);
    let feed = FeedMessage::decode(&body[..]).unwrap();
    assert_eq!(feed.header.gtfs_realtime_version, "2.0");
    assert_eq!(feed.entity.len(), 1, "{feed:?}");
    let u = feed.entity[0].trip_update.as_ref().unwrap();
    assert_eq!(u.trip.trip_id.as_deref(), Some("T1"));
    assert_eq!(u.trip.route_id.as_deref(), Some("L1"));
    let delay = u.delay.unwrap();
    assert!((150..=210).contains(&delay), "{delay}");
    let seqs: Vec<u32> = u
        .stop_time_update
        .iter()
        .filter_map(|s| s.stop_sequence)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "{u:?}");
    for s in &u.stop_time_update {
        let d = s
            .arrival
            .as_ref()
            .or(s.departure.as_ref())
            .and_then(|e| e.delay)
            .unwrap();
        assert!((150..=210).contains(&d), "{s:?}");
    }
    // Observed (uncertainty 0) behind, predicted ahead.
    assert_eq!(
        u.stop_time_update[1].arrival.as_ref().unwrap().uncertainty,
        Some(0)
    );
    assert!(u.stop_time_update[4].arrival.as_ref().unwrap().uncertainty > Some(0));

    let r = crate::api::http(
        addr,
        "GET",
        "/api/v1/gtfs-rt/trip-updates?format=json&max_age_s=86400",
        Some(tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["header"]["gtfs_realtime_version"], "2.0");
    assert_eq!(j["header"]["incrementality"], "FULL_DATASET");
    assert_eq!(j["entity"][0]["trip_update"]["trip"]["trip_id"], "T1");
    assert_eq!(
        j["entity"][0]["trip_update"]["trip"]["schedule_relationship"],
        "SCHEDULED"
    );
    let r = crate::api::http(
        addr,
        "GET",
        "/api/v1/gtfs-rt/vehicle-positions?format=json&max_age_s=86400",
        Some(tok_a),
        None,
    )
    .await;
    let j = r.json();
    assert_eq!(j["entity"][0]["vehicle"]["trip"]["route_id"], "L1", "{j}");
    // B's bus has sent nothing yet, and B never sees A's.
    let (status, _, body) = get_bytes(
        addr,
        "/api/v1/gtfs-rt/vehicle-positions?max_age_s=86400",
        tok_b,
    )
    .await;
    assert_eq!(status, 200);
    assert!(FeedMessage::decode(&body[..]).unwrap().entity.is_empty());
    let (status, _, body) =
        get_bytes(addr, "/api/v1/gtfs-rt/trip-updates?max_age_s=86400", tok_b).await;
    assert_eq!(status, 200);
    assert!(FeedMessage::decode(&body[..]).unwrap().entity.is_empty());
    for path in [
        "/api/v1/gtfs-rt/vehicle-positions",
        "/api/v1/gtfs-rt/trip-updates",
    ] {
        let r = crate::api::http(addr, "GET", path, None, None).await;
        assert_eq!(r.status, 401, "{path}");
    }
}

/// Routes L1 (trips T1, T2, T3 leaving S0 at `dep_s`, +10 min, +20 min) and L2
/// (trip U1 at `dep_s`), both over the stops of [`write_feed`], every day.
fn write_route_feed(dir: &std::path::Path, dep_s: i64) {
    write_feed(dir, dep_s);
    let mut times = String::from("trip_id,arrival_time,departure_time,stop_id,stop_sequence\n");
    for (trip, dep) in [
        ("T1", dep_s),
        ("T2", dep_s + 600),
        ("T3", dep_s + 1200),
        ("U1", dep_s),
    ] {
        for k in 0..6 {
            let (a, d) = match k {
                0 => (hms(dep), hms(dep)),
                _ => (hms(dep + 140 * k - 35), hms(dep + 140 * k - 5)),
            };
            times.push_str(&format!("{trip},{a},{d},S{k},{}\n", k + 1));
        }
    }
    let shape: String = ["SH", "SH2"]
        .iter()
        .flat_map(|id| {
            (0..6).map(move |k| format!("{id},{LAT},{:.4},{}\n", LON0 + STEP * f64::from(k), k + 1))
        })
        .collect();
    for (name, text) in [
        (
            "routes.txt",
            "route_id,route_short_name\nL1,1\nL2,2\n".to_string(),
        ),
        (
            "trips.txt",
            "route_id,service_id,trip_id,shape_id\nL1,ALL,T1,SH\nL1,ALL,T2,SH\nL1,ALL,T3,SH\nL2,ALL,U1,SH2\n"
                .into(),
        ),
        ("stop_times.txt", times),
        (
            "shapes.txt",
            format!("shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\n{shape}"),
        ),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// The route report (issue 11) on known runs of cooperative A on L1: T1 on time, T2
/// 3 min late driving through S3, T3 not run; cooperative B has a bus on L2 that
/// sent nothing and sees no route of A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_report_counts_trips_stops_and_punctuality() {
    use crate::api::http;
    use fleetwatch::api::auth::{create_token, Role};
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let base = base_time() - chrono::Duration::minutes(45);
    let local = base + chrono::Duration::hours(7);
    let dep_s = i64::from(local.num_seconds_from_midnight());
    let date = local.date_naive();
    let feed = std::env::temp_dir().join(format!("fw-it-route-report-{}", std::process::id()));
    write_route_feed(&feed, dep_s);
    let mut s = settings(&db, &broker.url(), "fw-route-report");
    s.geo.gtfs = vec![feed.clone()];
    s.rules.transit.early_s = 60;
    s.rules.transit.late_s = 90;
    let bus = |id: &str, coop: &str, route: &str| Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse(coop).unwrap(),
        class: VehicleClass::Bus,
        route: Some(route.into()),
        device_id: None,
    };
    s.vehicles = vec![
        bus("51B-111.11", "HTX-A", "L1"),
        bus("51B-222.22", "HTX-A", "L1"),
        bus("51B-333.33", "HTX-B", "L2"),
    ];
    let app = start_app(s).await;
    let addr = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let tok_a = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let tok_b = create_token(&c, Role::Cooperative, Some("HTX-B"), None)
        .await
        .unwrap();
    let reg = create_token(&c, Role::Regulator, None, None).await.unwrap();
    let msgs = |v: &str, run: Vec<(DateTime<Utc>, f64, f64)>| {
        let t = topic("HTX-A", v);
        run.into_iter()
            .map(|(ts, lon, kmh)| (t.clone(), fix(v, ts, LAT, lon, kmh)))
            .collect::<Vec<_>>()
    };
    let mut all = msgs("51B-111.11", bus_run(base, 0));
    all.extend(msgs(
        "51B-222.22",
        bus_run(base + chrono::Duration::minutes(13), 3),
    ));
    publish_all(&broker.url(), &all).await;
    wait_until("both runs stored", Duration::from_secs(40), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM trip_runs").await == 2 }
    })
    .await;
    // The known answer of the median: 11 timed stops (6 on time, 5 late; S3 of T2
    // driven through is not timed), so the 6th smallest, the latest on-time one.
    let on_time = c
        .query_one(
            "SELECT max(deviation_s) FROM stop_events WHERE vehicle_id = '51B-111.11'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, Option<i32>>(0)
        .unwrap();
    assert!((-30..=30).contains(&on_time), "{on_time}");

    let r = http(
        addr,
        "GET",
        &format!("/api/v1/reports/routes?date={date}"),
        Some(&tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    let routes = j["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{j}");
    let l1 = &routes[0];
    assert_eq!(l1["route_id"], "L1");
    assert!(l1.get("days").is_none());
    for (k, want) in [
        ("trips_scheduled", 3),
        ("trips_run", 2),
        ("trips_completed", 2),
        ("trips_short_turned", 0),
        ("trips_not_run", 1),
        ("runs", 2),
        ("stops_scheduled", 18),
        ("stops_served", 11),
        ("stops_skipped", 1),
        ("stop_events_timed", 11),
        ("stop_events_within_bounds", 6),
    ] {
        assert_eq!(l1[k], want, "{k}: {l1}");
    }
    assert_eq!(l1["punctuality"], 0.545455, "{l1}");
    assert_eq!(l1["median_deviation_s"], f64::from(on_time), "{l1}");
    // 2 runs of 5 × 1,092 m; 3 scheduled.
    let km = l1["km_in_service"].as_f64().unwrap();
    assert!((km - 10.92).abs() < 0.12, "{km}");
    let km = l1["km_scheduled"].as_f64().unwrap();
    assert!((km - 16.38).abs() < 0.1, "{km}");
    assert_eq!(j["bounds"]["late_s"], 90);
    assert_eq!(j["totals"]["trips_scheduled"], 3);
    assert_eq!(j["totals"]["median_deviation_s"], f64::from(on_time));

    // The month: a day per service date, the feed running every day.
    let month = date.format("%Y-%m").to_string();
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/reports/routes?month={month}"),
        Some(&tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    let l1 = &j["routes"][0];
    let days = l1["days"].as_array().unwrap();
    assert_eq!(l1["trips_scheduled"], 3 * days.len(), "{l1}");
    assert!((28..=31).contains(&days.len()));
    assert_eq!(l1["trips_run"], 2);
    assert_eq!(l1["trips_not_run"], 3 * days.len() - 2);
    assert_eq!(l1["punctuality"], 0.545455);
    let day = days.iter().find(|d| d["date"] == date.to_string()).unwrap();
    assert_eq!(day["trips_run"], 2, "{day}");
    assert_eq!(day["stops_served"], 11);
    assert_eq!(day["median_deviation_s"], f64::from(on_time));
    let other = days.iter().find(|d| d["date"] != date.to_string()).unwrap();
    assert_eq!(other["trips_run"], 0);
    assert!(other["punctuality"].is_null());

    // CSV: the header, then the route's row of the date, then TOTAL.
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/reports/routes?date={date}&format=csv"),
        Some(&tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(
        lines[0],
        "route_id,period,trips_scheduled,trips_run,trips_completed,trips_short_turned,\
         trips_not_run,runs,stops_scheduled,stops_served,stops_skipped,stop_events_timed,\
         stop_events_within_bounds,punctuality,median_deviation_s,km_in_service,km_scheduled"
    );
    assert!(
        lines[1].starts_with(&format!(
            "L1,{date},3,2,2,0,1,2,18,11,1,11,6,0.545455,{on_time}.0,"
        )),
        "{}",
        r.body
    );
    assert!(
        lines[2].starts_with(&format!("TOTAL,{date},3,")),
        "{}",
        r.body
    );

    // B sees its own route only, and nothing of A's; nor may it ask for A.
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/reports/routes?date={date}"),
        Some(&tok_b),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    let ids: Vec<&str> = j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["L2"], "{j}");
    assert_eq!(j["routes"][0]["trips_scheduled"], 1);
    assert_eq!(j["routes"][0]["trips_run"], 0);
    assert_eq!(j["totals"]["stops_served"], 0);
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/reports/routes?date={date}&cooperative=HTX-A"),
        Some(&tok_b),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A regulator sees both routes.
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/reports/routes?date={date}"),
        Some(&reg),
        None,
    )
    .await;
    let j = r.json();
    let ids: Vec<&str> = j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["L1", "L2"], "{j}");
    let r = http(addr, "GET", "/api/v1/reports/routes", Some(&reg), None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    app.shutdown();
    app.wait().await;
    std::fs::remove_dir_all(&feed).ok();
}
