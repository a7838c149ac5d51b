//! `fleetwatch replay`: the offline rules reproduce the alerts the service stored, and
//! a replayed track, published to a real broker, is stored identically by a second
//! instance.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use fleetwatch::domain::{
    CooperativeId, Fix, FixCandidate, FixLimits, Vehicle, VehicleClass, VehicleId,
};
use fleetwatch::infra::broker::EmbeddedBroker;
use fleetwatch::pipeline::decode::Decoder;
use fleetwatch::replay::{self, Difference, PublishTarget, Speed, TopicChoice, TrackRange};
use fleetwatch::sources::mqtt::MqttConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::support::*;

const COOP: &str = "HTX-RP";

fn bus(id: &str, route: Option<&str>) -> Vehicle {
    Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse(COOP).unwrap(),
        class: VehicleClass::Bus,
        route: route.map(str::to_string),
        device_id: None,
    }
}

/// One fix of a driven vehicle, as a device would send it.
struct Point {
    vehicle: &'static str,
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    ignition: bool,
    /// Driver logged in, if any.
    driver: bool,
}

fn message(p: &Point) -> (String, Vec<u8>) {
    let driver = if p.driver {
        r#""driver_id":"079000000009","#
    } else {
        ""
    };
    let payload = format!(
        r#"{{"vehicle":"{}","ts":"{}","lat":{},"lon":{},"speed_kmh":{},"heading_deg":90,{driver}"ignition":{},"satellites":9,"hdop":0.9}}"#,
        p.vehicle,
        p.ts.to_rfc3339_opts(SecondsFormat::Millis, true),
        p.lat,
        p.lon,
        p.speed_kmh,
        p.ignition
    );
    (topic(COOP, p.vehicle), payload.into_bytes())
}

/// A bus route along latitude 10.95 from longitude 106.5 to 107.5, as a GeoJSON file.
fn route_file() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleetwatch-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("route.geojson");
    std::fs::write(
        &path,
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"route_id":"R-TEST"},
            "geometry":{"type":"LineString","coordinates":[[106.5,10.95],[107.5,10.95]]}}]}"#,
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_rules_over_a_sub_range_give_the_stored_alerts() {
    const V: &str = "51B-800.01";
    const W: &str = "51B-800.02";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-replay-rules");
    s.vehicles = vec![bus(V, Some("R-TEST")), bus(W, None)];
    // One connection: fixes reach the rules in the order sent (several connections
    // of a shared subscription may swap two, and 20 s apart one would be late).
    s.mqtt.connections = 1;
    s.geo.routes = vec![route_file()];
    // Driving time compressed: 20 min continuous, warned 2 min before, 5-min breaks.
    s.rules.driving.continuous_max_s = 20 * 60;
    s.rules.driving.warn_before_s = 2 * 60;
    s.rules.driving.break_min_s = 5 * 60;
    let app = start_app(s.clone()).await;

    // One fix every 20 s. The driver first drives W (i = -40..-13), logs out (the
    // two last fixes of W, stopped), logs in on V 240 s later (no break) and drives
    // it on its route at 40 km/h: an overspeed
    // minute at i = 20, 330 m off the route for i = 60..70, a 400-s stop with the
    // ignition off at i = 130..150 (a break), a second run from i = 150 with another
    // overspeed at i = 170; a last fix 20 min later ends the run.
    let base = base_time() - chrono::Duration::hours(2);
    let at = |i: i64| base + chrono::Duration::seconds(20 * i);
    let mut points: Vec<Point> = (-40..-10)
        .map(|i| Point {
            vehicle: W,
            ts: at(i),
            lat: 10.80,
            lon: 106.60 + (i.min(-12) + 40) as f64 * 0.002,
            speed_kmh: if i < -12 { 40.0 } else { 0.0 },
            ignition: i < -12,
            // Logged out at the end: the live service releases W's last fix (held
            // for the reorder window) only later, when V's fixes are already in, so
            // that interval must not be the driver's.
            driver: i < -12,
        })
        .collect();
    for i in (0..240).chain([300]) {
        let stopped = (130..150).contains(&i);
        // Parked during the stop: the position moves on from where it stopped.
        let moved = i.min(130) + (i - 150).max(0);
        points.push(Point {
            vehicle: V,
            ts: at(i),
            lat: if (60..70).contains(&i) { 10.953 } else { 10.95 },
            lon: 106.60 + moved as f64 * 0.002,
            speed_kmh: match i {
                20..26 | 170..176 => 85.0,
                _ if stopped => 0.0,
                _ => 40.0,
            },
            ignition: !stopped,
            driver: true,
        });
    }
    let msgs: Vec<_> = points.iter().map(message).collect();
    publish_all(&broker.url(), &msgs).await;
    // The last fix releases everything before it from the reorder window, and its
    // 20-min gap is a break: both runs' warning and violation are closed.
    wait_until("both runs' alerts closed", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM fixes").await == 271
                && count(&db, "SELECT count(*) FROM alerts WHERE kind = 'continuous_driving' AND status = 'closed'").await == 4
        }
    })
    .await;
    app.shutdown();
    app.wait().await;

    let client = fleetwatch::store::connect(&db).await.unwrap();
    let range = TrackRange::new(VehicleId::parse(V).unwrap(), at(40), at(200)).unwrap();
    let check = replay::check_rules(&client, &s, &range).await.unwrap();
    assert!(
        check.differences.is_empty(),
        "{}",
        replay::render_differences(&check)
    );
    assert_eq!(check.computed, check.stored);
    let mut got: Vec<_> = check
        .computed
        .iter()
        .map(|a| (a.start, a.kind.as_str(), a.level.as_str(), a.end))
        .collect();
    got.sort();
    let at_239 = Some(at(239));
    let mut want = vec![
        (at(60), "off_route", "violation", Some(at(70))),
        (at(150), "continuous_driving", "warning", at_239),
        (at(150), "continuous_driving", "violation", at_239),
        (at(170), "overspeed", "violation", Some(at(175))),
    ];
    want.sort();
    assert_eq!(got, want);
    // The run of the second part becomes a warning at i = 204 and a violation at
    // i = 210, after the range: read on until they closed.
    assert_eq!(check.read_until, Some(at(300)));
    assert_eq!(
        check.vehicles,
        [VehicleId::parse(V).unwrap(), VehicleId::parse(W).unwrap()],
        "the other vehicle of the driver is read too"
    );

    // Without the warm-up, the first run seems to start at the range's start: its
    // 30 minutes to the break make a warning and a violation the service never had.
    let cold = replay::check_rules_from(&client, &s, &range, range.from)
        .await
        .unwrap();
    let extra: Vec<_> = cold
        .differences
        .iter()
        .filter_map(|d| match d {
            Difference::OnlyComputed(a) => Some((a.kind.as_str(), a.start)),
            _ => None,
        })
        .collect();
    assert_eq!(
        extra,
        [
            ("continuous_driving", at(40)),
            ("continuous_driving", at(40))
        ],
        "{}",
        replay::render_differences(&cold)
    );
}

/// Messages received: topic and payload, in order.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Subscribes to `filter` (QoS 1) and collects every message, in order.
async fn collector(url: &str, filter: &str) -> Received {
    let u = url::Url::parse(url).unwrap();
    let mut o = MqttOptions::new("replay-collector", u.host_str().unwrap(), u.port().unwrap());
    if !u.username().is_empty() {
        o.set_credentials(u.username(), u.password().unwrap_or_default());
    }
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    let seen: Received = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                s.lock().unwrap().push((p.topic, p.payload.to_vec()));
            }
        }
    });
    seen
}

/// The track of a database as text, one fix a line, every column but receive time.
async fn dump(db: &str, vehicle: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let c = fleetwatch::store::connect(db).await.unwrap();
    c.query_one(
        "SELECT string_agg(format('%s', row(vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh,
                    heading_deg, driver_id, ignition, satellites, hdop, odometer_m, flags)),
                    E'\n' ORDER BY ts)
         FROM fixes WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3",
        &[&vehicle, &from, &to],
    )
    .await
    .unwrap()
    .get::<_, Option<String>>(0)
    .unwrap_or_default()
}

/// The stored fixes of the range, as fixes.
async fn stored_fixes(
    db: &str,
    vehicle: &VehicleId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Fix> {
    let c = fleetwatch::store::connect(db).await.unwrap();
    let rows = c
        .query(
            "SELECT ts, lat_e7, lon_e7, speed_kmh, heading_deg, driver_id, ignition, satellites, hdop,
                    odometer_m, received_at
             FROM fixes WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts",
            &[&vehicle.as_str(), &from, &to],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let c = FixCandidate {
                vehicle: None,
                ts: Some(r.get(0)),
                lat: fleetwatch::domain::fix::e7_to_deg(r.get(1)),
                lon: fleetwatch::domain::fix::e7_to_deg(r.get(2)),
                speed_kmh: Some(f64::from(r.get::<_, f32>(3))),
                heading_deg: r.get::<_, Option<f32>>(4).map(f64::from),
                driver: r.get(5),
                ignition: r.get(6),
                satellites: r.get::<_, Option<i16>>(7).map(i64::from),
                hdop: r.get::<_, Option<f32>>(8).map(f64::from),
                odometer_m: r.get(9),
                accuracy_m: None,
            };
            Fix::validate(c, vehicle.clone(), &FixLimits::default(), r.get(10)).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_the_track_and_a_second_instance_stores_it_identically() {
    const V: &str = "51B-800.11";
    let broker = EmbeddedBroker::start(0).unwrap();
    let db_a = fresh_db().await;
    let mut s = settings(&db_a, &broker.url(), "fw-replay-src");
    s.vehicles = vec![bus(V, None)];
    // One connection: in order, so no fix is flagged out of order here and not there.
    s.mqtt.connections = 1;
    let app_a = start_app(s.clone()).await;

    // 61 fixes over 60 s at uneven millisecond times, with full-precision floats and
    // every optional field, one with poor accuracy (a flag); plus one before and one
    // at the end of the range, which are not replayed.
    let base = base_time();
    let vid = VehicleId::parse(V).unwrap();
    let (from, to) = (base, base + chrono::Duration::seconds(61));
    let mut msgs = Vec::new();
    for i in -1..=61i64 {
        let ts = base + chrono::Duration::milliseconds(1000 * i + (i * 37) % 1000);
        let payload = format!(
            r#"{{"vehicle":"{V}","ts":"{}","lat":{},"lon":{},"speed_kmh":{},"heading_deg":{},"driver_id":"079000000010","ignition":true,"satellites":{},"hdop":{},"odometer_m":{}}}"#,
            ts.to_rfc3339_opts(SecondsFormat::Millis, true),
            10.9 + i as f64 * 1.234_567_891_234e-5,
            106.7 + i as f64 * 3.3e-6,
            30.0 + i as f64 / 3.0,
            (i * 7).rem_euclid(360),
            if i == 30 { 2 } else { 9 },
            0.7 + i as f64 / 100.0,
            123_456.7 + i as f64 * 8.9,
        );
        msgs.push((topic(COOP, V), payload.into_bytes()));
    }
    publish_all(&broker.url(), &msgs).await;
    wait_until("the track stored", Duration::from_secs(30), || {
        let db = db_a.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 63 }
    })
    .await;
    app_a.shutdown();
    app_a.wait().await;
    let stored = stored_fixes(&db_a, &vid, from, to).await;
    assert_eq!(stored.len(), 61);

    // A second instance on Mosquitto, and a plain subscriber there.
    let mosq = Mosquitto::start();
    let db_b = fresh_db().await;
    let mut sb = settings(&db_b, &mosq.url, "fw-replay-dst");
    sb.vehicles = s.vehicles.clone();
    let app_b = start_app(sb).await;
    let seen = collector(&mosq.url, "fleet/+/+/fix").await;

    let client = fleetwatch::store::connect(&db_a).await.unwrap();
    let range = TrackRange::new(vid.clone(), from, to).unwrap();
    let target = PublishTarget {
        url: mosq.url.clone(),
        mqtt: MqttConfig {
            client_id: "fw-replay-test".into(),
            ..MqttConfig::default()
        },
        topic: TopicChoice::new(None, &s.mqtt.topic).unwrap(),
        speed: Speed::Factor(20.0),
    };
    let summary = replay::publish_track(&client, &range, &target, std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        (summary.fixes, summary.acked, summary.interrupted),
        (61, 61, false)
    );
    let (first, last) = summary.span.unwrap();
    assert_eq!((first, last), (stored[0].ts(), stored[60].ts()));
    let span = (last - first).to_std().unwrap();
    assert!(
        summary.wall >= span / 20,
        "wall {:?} < span {span:?} / 20",
        summary.wall
    );

    // Every fix, in order, on its original topic, decoding to the stored fix.
    wait_until(
        "61 messages at the subscriber",
        Duration::from_secs(10),
        || {
            let n = seen.lock().unwrap().len();
            async move { n >= 61 }
        },
    )
    .await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 61);
    let decoder = Decoder::default();
    for ((t, payload), want) in got.iter().zip(&stored) {
        assert_eq!(t, &topic(COOP, V));
        let el = decoder.decode(payload).unwrap().remove(0);
        let fix = Fix::validate(
            el.result.unwrap(),
            vid.clone(),
            &FixLimits::default(),
            want.ts(),
        )
        .unwrap();
        assert_eq!(&fix, want, "{}", String::from_utf8_lossy(payload));
    }

    // The second instance stores the same track (flags included).
    wait_until("the replayed track stored", Duration::from_secs(30), || {
        let db = db_b.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 61 }
    })
    .await;
    let original = dump(&db_a, V, from, to).await;
    assert_eq!(original.lines().count(), 61);
    assert!(
        original.contains(",2)"),
        "the poor-accuracy flag is in the dump"
    );
    assert_eq!(dump(&db_b, V, from, to).await, original);

    // Ctrl-C during a real-time replay: stops, and what was sent is acked.
    let stop = tokio::time::sleep(Duration::from_millis(1500));
    let target = PublishTarget {
        speed: Speed::Factor(1.0),
        ..target
    };
    let summary = replay::publish_track(&client, &range, &target, stop)
        .await
        .unwrap();
    assert!(summary.interrupted);
    assert!((1..61).contains(&summary.fixes), "{summary:?}");
    assert_eq!(summary.acked, summary.fixes);

    app_b.shutdown();
    app_b.wait().await;
}

/// `fleetwatch replay --rules` (the real binary) with the configuration in `config`;
/// exit success and stderr.
fn replay_rules(
    config: &std::path::Path,
    vehicle: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    extra: &[&str],
) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
        .args(["replay", "--rules", "--vehicle", vehicle, "--config"])
        .arg(config)
        .args(["--from", &from.to_rfc3339(), "--to", &to.to_rfc3339()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("fleetwatch replay runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.success(), text)
}

/// The service records the geography it ran with; `replay --rules` uses it by default,
/// so it agrees without the service's `[geo]` settings and with the files gone, and
/// says what it used. With `--geo files` and no files it says that nothing is loaded
/// (and, as `replay` did before geography was recorded, reports false differences).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rules_uses_the_recorded_geography() {
    let db = fresh_db().await;
    let broker = EmbeddedBroker::start(0).unwrap();
    let dir = std::env::temp_dir().join(format!("fleetwatch-geo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let routes = dir.join("routes.geojson");
    let zones = dir.join("zones.geojson");
    std::fs::write(&routes, fleetwatch::sim::DEMO_ROUTES_GEOJSON).unwrap();
    std::fs::write(&zones, fleetwatch::sim::DEMO_ZONES_GEOJSON).unwrap();

    // 80 minutes of the demo fleet: a bus off its route, a truck in a restricted zone.
    let start = base_time() - chrono::Duration::hours(1);
    let mut sim = fleetwatch::sim::Simulator::demo(fleetwatch::sim::DEMO_SEED, start);
    let mut s = settings(&db, &broker.url(), "fw-geo-rec");
    s.mqtt.connections = 1;
    s.geo.routes = vec![routes.clone()];
    s.geo.zones = vec![zones.clone()];
    s.vehicles = sim
        .vehicles()
        .iter()
        .map(fleetwatch::sim::SimVehicle::registration)
        .collect();
    let app = start_app(s.clone()).await;
    let msgs: Vec<(String, Vec<u8>)> = sim
        .advance(chrono::Duration::minutes(80))
        .into_iter()
        .map(|f| (topic(f.cooperative.as_str(), f.vehicle.as_str()), f.payload))
        .collect();
    let n = msgs.len() as i64;
    publish_all(&broker.url(), &msgs).await;
    wait_until("the fleet stored", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == n }
    })
    .await;
    app.shutdown();
    app.wait().await;
    let kinds = |v: &'static str| {
        let db = db.clone();
        async move {
            count(
                &db,
                &format!("SELECT count(*) FROM alerts WHERE vehicle_id = '{v}' AND kind IN ('off_route', 'restricted_zone')"),
            )
            .await
        }
    };
    assert!(kinds("61B-031.05").await >= 1, "the bus's off-route alert");
    assert!(
        kinds("61C-207.45").await >= 1,
        "the truck's restricted-zone alert"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM geo_versions").await, 1);

    let (from, to) = (start, start + chrono::Duration::minutes(75));
    // A configuration without [geo]: the recorded geography.
    let bare = dir.join("bare.toml");
    std::fs::write(&bare, format!("[database]\nurl = \"{db}\"\n")).unwrap();
    // The service's configuration, its files gone.
    let with_files = dir.join("with-files.toml");
    std::fs::write(
        &with_files,
        format!(
            "[database]\nurl = \"{db}\"\n[geo]\nroutes = [\"{}\"]\nzones = [\"{}\"]\n",
            routes.display(),
            zones.display()
        ),
    )
    .unwrap();
    for vehicle in ["61B-031.05", "61C-207.45"] {
        let (ok, text) = replay_rules(&bare, vehicle, from, to, &[]);
        assert!(ok, "{vehicle}: {text}");
        assert!(text.contains("all match the stored ones"), "{text}");
        assert!(
            text.contains("4 routes, 9 zones, recorded by the service"),
            "{text}"
        );
        // The registry comes from the database; the files are what is missing.
        let (ok, text) = replay_rules(&bare, vehicle, from, to, &["--geo", "files"]);
        assert!(
            !ok,
            "{vehicle}: without routes and zones the alerts differ: {text}"
        );
        assert!(text.contains("no routes and no zones are loaded"), "{text}");
    }
    std::fs::remove_file(&routes).unwrap();
    std::fs::remove_file(&zones).unwrap();
    let (ok, text) = replay_rules(&with_files, "61C-207.45", from, to, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("do not load"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
