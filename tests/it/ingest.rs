//! The ingest pipeline end to end: broker → validate → PostgreSQL → ack.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetwatch::infra::broker::EmbeddedBroker;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixes_land_exactly_once_through_the_embedded_broker() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-exactly-once");
    // Several connections sharing the subscription, as on the embedded broker by default.
    s.mqtt.connections = 3;
    let app = start_app(s).await;

    let base = base_time();
    let mut msgs = track("HTX-A", 10, 500, base);
    // A device re-sending the same fixes (same vehicle and timestamp) must not double them.
    msgs.extend(msgs[..50].to_vec());
    publish_all(&broker.url(), &msgs).await;

    wait_until("500 fixes stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 500 }
    })
    .await;
    // All 550 messages were handled (none waiting), yet only 500 rows exist.
    let h = app.health.clone();
    wait_until("550 messages seen", Duration::from_secs(10), || {
        let n = h.messages.load(Ordering::Relaxed);
        async move { n >= 550 }
    })
    .await;
    app.shutdown();
    app.wait().await;
    assert_eq!(count(&db, "SELECT count(*) FROM fixes").await, 500);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT vehicle_id) FROM fixes").await,
        10
    );
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
    // Unregistered vehicles are stored, flagged and listed.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM vehicles WHERE NOT registered AND cooperative_id = 'HTX-A'"
        )
        .await,
        10
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE flags & 4 = 0").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_are_kept_with_reasons_and_the_consumer_keeps_going() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let app = start_app(settings(&db, &broker.url(), "fw-rejects")).await;
    let base = base_time();
    let t = topic("HTX-A", "51B-1");
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let msgs = vec![
        (t.clone(), b"not json at all".to_vec()),
        (t.clone(), b"\xff\x00\xfe".to_vec()),
        (t.clone(), fix("51B-2", base, 10.9, 106.7, 30.0)), // spoofed: topic says 51B-1
        (t.clone(), fix("51B-1", base, 0.0, 0.0, 30.0)),
        (t.clone(), fix("51B-1", base, 95.0, 106.7, 30.0)),
        (t.clone(), fix("51B-1", base, 10.9, 106.7, 250.0)),
        (t.clone(), fix("51B-1", future, 10.9, 106.7, 30.0)),
        (t.clone(), br#"{"_type":"lwt","tst":1}"#.to_vec()),
        (
            "fleet/HTX-A/bad vehicle/fix".to_string(),
            fix("51B-1", base, 10.9, 106.7, 30.0),
        ),
        (t.clone(), br#"[]"#.to_vec()),
        // After all that garbage, a good fix still lands.
        (t.clone(), fix("51B-1", base, 10.9, 106.7, 30.0)),
    ];
    publish_all(&broker.url(), &msgs).await;
    wait_until(
        "good fix and 10 dead letters stored",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move {
                count(&db, "SELECT count(*) FROM fixes").await == 1
                    && count(&db, "SELECT count(*) FROM dead_letters").await == 10
            }
        },
    )
    .await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let rows = c
        .query("SELECT reason FROM dead_letters ORDER BY reason", &[])
        .await
        .unwrap();
    let reasons: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        reasons,
        [
            "bad_topic",
            "coordinates_out_of_range",
            "empty_batch",
            "malformed",
            "malformed",
            "not_a_location",
            "null_island",
            "speed_out_of_range",
            "time_in_future",
            "vehicle_mismatch"
        ]
    );
    // The raw bytes are kept as received.
    let raw: Vec<u8> = c
        .query_one(
            "SELECT payload FROM dead_letters WHERE payload = '\\xff00fe'::bytea",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, b"\xff\x00\xfe");
    // Metrics count rejects by reason.
    let body = reqwest_get(app.http_addr, "/metrics").await;
    assert!(
        body.contains(r#"fleetwatch_fixes_rejected_total{reason="vehicle_mismatch"}"#),
        "{body}"
    );
    assert!(reqwest_get(app.http_addr, "/readyz")
        .await
        .contains("mqtt: up"));
    app.shutdown();
    app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owntracks_payloads_and_batches_land() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let app = start_app(settings(&db, &broker.url(), "fw-owntracks")).await;
    let tst = base_time().timestamp();
    let t = topic("HTX-B", "OT-1");
    let owntracks = format!(
        r#"{{"_type":"location","tid":"o1","tst":{tst},"lat":10.98,"lon":106.65,"vel":42,"cog":180,"acc":6,"batt":77}}"#
    );
    let base = base_time() + chrono::Duration::seconds(10);
    let batch = format!(
        "[{},{}]",
        String::from_utf8(fix("OT-1", base, 10.981, 106.651, 20.0)).unwrap(),
        String::from_utf8(fix(
            "OT-1",
            base + chrono::Duration::seconds(5),
            10.982,
            106.652,
            25.0
        ))
        .unwrap()
    );
    publish_all(
        &broker.url(),
        &[(t.clone(), owntracks.into_bytes()), (t, batch.into_bytes())],
    )
    .await;
    wait_until("3 fixes", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 3 }
    })
    .await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let r = c
        .query_one(
            "SELECT speed_kmh, heading_deg, extract(epoch from ts)::bigint FROM fixes ORDER BY ts LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, f32>(0), 42.0);
    assert_eq!(r.get::<_, Option<f32>>(1), Some(180.0));
    assert_eq!(r.get::<_, i64>(2), tst);
    app.shutdown();
    app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_the_load_without_loss_or_duplicates() {
    shared_subscription(false).await;
}

/// The scale-out topology for ingest: rules off, `[ha]` off, one share group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_only_instances_split_a_shared_subscription() {
    shared_subscription(true).await;
}

async fn shared_subscription(ingest_only: bool) {
    let mosq = Mosquitto::start();
    let db = fresh_db().await;
    let mut s1 = settings(&db, &mosq.url, "fw-shared-1");
    s1.mqtt.share_group = Some("fleetwatch".into());
    s1.disable_rules = ingest_only;
    assert!(!s1.ha.enabled, "[ha] is off by default");
    let mut s2 = s1.clone();
    s2.mqtt.client_id = "fw-shared-2".into();
    let a = start_app(s1).await;
    let b = start_app(s2).await;
    let msgs = track("HTX-S", 20, 2000, base_time());
    publish_all(&mosq.url, &msgs).await;
    wait_until("2000 fixes", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 2000 }
    })
    .await;
    let (na, nb) = (
        a.health.messages.load(Ordering::Relaxed),
        b.health.messages.load(Ordering::Relaxed),
    );
    assert_eq!(na + nb, 2000, "each message went to exactly one instance");
    assert!(na > 200 && nb > 200, "load split: {na} / {nb}");
    a.shutdown();
    b.shutdown();
    a.wait().await;
    b.wait().await;
    assert_eq!(count(&db, "SELECT count(*) FROM fixes").await, 2000);
}

/// Minimal HTTP GET over a TCP stream (no client dependency needed for two checks).
pub async fn reqwest_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A phone in a car (OwnTracks for Android, `fixtures/owntracks/car.jsonl`), replayed
/// an hour ago: every location is stored; OwnTracks' -1 (unknown) speeds are derived
/// from the previous fix and flagged, unknown headings stay empty, cell-only positions
/// (3 km accuracy) are flagged as poor accuracy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owntracks_recording_is_stored_with_derived_speeds_and_accuracy_flags() {
    use fleetwatch::pipeline::validate::{haversine_m, Flags};
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let app = start_app(settings(&db, &broker.url(), "fw-owntracks-car")).await;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/owntracks/car.jsonl"),
    )
    .unwrap();
    let mut recorded: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recorded.len(), 20);
    let shift = base_time().timestamp() - recorded[0]["tst"].as_i64().unwrap();
    for m in &mut recorded {
        for k in ["tst", "created_at"] {
            m[k] = (m[k].as_i64().unwrap() + shift).into();
        }
    }
    let t = topic("HTX-OT", "51A-123.45");
    let msgs: Vec<(String, Vec<u8>)> = recorded
        .iter()
        .map(|m| (t.clone(), serde_json::to_vec(m).unwrap()))
        .collect();
    publish_all(&broker.url(), &msgs).await;
    wait_until("20 fixes", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 20 }
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let rows = c
        .query(
            "SELECT extract(epoch from ts)::bigint, speed_kmh, heading_deg, flags
             FROM fixes ORDER BY ts",
            &[],
        )
        .await
        .unwrap();
    let (mut derived, mut poor, mut no_heading) = (0, 0, 0);
    for (i, (r, m)) in rows.iter().zip(&recorded).enumerate() {
        assert_eq!(r.get::<_, i64>(0), m["tst"].as_i64().unwrap());
        let (speed, heading, flags) = (
            r.get::<_, f32>(1),
            r.get::<_, Option<f32>>(2),
            Flags(r.get::<_, i16>(3)),
        );
        assert!(!flags.has(Flags::JUMP), "fix {i}: {flags:?}");
        let vel = m["vel"].as_f64().unwrap();
        if vel == -1.0 {
            derived += 1;
            assert!(flags.has(Flags::SPEED_DERIVED), "fix {i}: {flags:?}");
            // The average from the previous fix (none for the first: 0).
            let want = match i.checked_sub(1).map(|j| &recorded[j]) {
                None => 0.0,
                Some(p) => {
                    let d = haversine_m(
                        p["lat"].as_f64().unwrap(),
                        p["lon"].as_f64().unwrap(),
                        m["lat"].as_f64().unwrap(),
                        m["lon"].as_f64().unwrap(),
                    );
                    let dt = (m["tst"].as_i64().unwrap() - p["tst"].as_i64().unwrap()) as f64;
                    d / dt * 3.6
                }
            };
            assert!(
                (f64::from(speed) - want).abs() < 0.01,
                "fix {i}: {speed} vs {want}"
            );
        } else {
            assert!(!flags.has(Flags::SPEED_DERIVED), "fix {i}: {flags:?}");
            assert_eq!(f64::from(speed), vel, "fix {i}");
        }
        match m["cog"].as_f64().unwrap() {
            -1.0 => {
                no_heading += 1;
                assert_eq!(heading, None, "fix {i}");
            }
            cog => assert_eq!(heading.map(f64::from), Some(cog), "fix {i}"),
        }
        let cell = m["acc"].as_f64().unwrap() > 300.0;
        poor += usize::from(cell);
        assert_eq!(flags.has(Flags::POOR_ACCURACY), cell, "fix {i}: {flags:?}");
    }
    assert_eq!((derived, no_heading, poor), (9, 6, 2));
    // Counted by flag.
    let body = reqwest_get(app.http_addr, "/metrics").await;
    assert!(body.contains(r#"fleetwatch_fixes_flagged_total{flag="speed_derived"}"#));
    app.shutdown();
    app.wait().await;
}

/// A number that is finite as f64 but not as the f32 it is stored as (an HDOP of 1e300
/// was stored as Infinity) is a dead letter `invalid_field`, not a stored fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_too_large_for_their_column_are_dead_letters() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let app = start_app(settings(&db, &broker.url(), "fw-too-large-values")).await;
    let base = base_time();
    let t = topic("HTX-A", "51B-9");
    let ts = base.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let msgs = vec![
        (
            t.clone(),
            format!(r#"{{"ts":"{ts}","lat":10.9,"lon":106.7,"speed_kmh":30,"hdop":1e300}}"#)
                .into_bytes(),
        ),
        (
            t.clone(),
            format!(
                r#"{{"_type":"location","tst":{},"lat":10.9,"lon":106.7,"vel":30,"acc":1e39}}"#,
                base.timestamp() + 1
            )
            .into_bytes(),
        ),
        (
            t.clone(),
            fix(
                "51B-9",
                base + chrono::Duration::seconds(2),
                10.9,
                106.7,
                30.0,
            ),
        ),
    ];
    publish_all(&broker.url(), &msgs).await;
    wait_until("1 fix and 2 dead letters", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) FROM fixes").await == 1
                && count(&db, "SELECT count(*) FROM dead_letters").await == 2
        }
    })
    .await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let rows = c
        .query("SELECT reason, detail FROM dead_letters ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got[0].0, "invalid_field");
    assert!(
        got[0]
            .1
            .contains("invalid hdop: 1e300 does not fit its stored type (real"),
        "{}",
        got[0].1
    );
    assert_eq!(got[1].0, "invalid_field");
    assert!(got[1].1.contains("accuracy_m"), "{}", got[1].1);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM fixes WHERE hdop = 'Infinity'::real"
        )
        .await,
        0
    );
    app.shutdown();
    app.wait().await;
}
