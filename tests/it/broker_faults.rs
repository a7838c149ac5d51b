//! Broker faults against real Mosquitto: an oversized message, a broker crash.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

/// A 2 MiB message (over the 1 MiB default limit, under the broker's) is kept as a
/// `too_large` dead letter and acked; the fixes after it are stored, and the
/// connection is not reset over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_a_dead_letter_and_ingest_goes_on() {
    // The shipped config caps packets at 1 MiB; a broker with a larger (or no) cap is
    // what lets such a message reach fleetwatch.
    let mosq = Mosquitto::start_with("", |_| "max_packet_size 8388608\n".into());
    let db = fresh_db().await;
    let app = start_app(settings(&db, &mosq.url, "fw-oversize")).await;
    let connects_before = app.health.mqtt_connects.load(Ordering::Relaxed);

    let big_topic = topic("HTX-BIG", "V-1");
    let mut big = b"{\"vehicle\":\"V-1\",\"pad\":\"".to_vec();
    big.resize(2 << 20, b'x');
    let mut msgs = vec![(big_topic.clone(), big.clone())];
    msgs.extend(track("HTX-BIG", 2, 20, base_time()));
    publish_all_with(&mosq.url, &msgs, |o| {
        o.set_max_packet_size(16 << 20, 16 << 20);
    })
    .await;

    wait_until("20 fixes stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 20 }
    })
    .await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let rows = c
        .query(
            "SELECT topic, reason, detail, payload FROM dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one dead letter");
    let (t, reason, detail, payload): (String, String, String, Vec<u8>) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
    );
    assert_eq!(t, big_topic);
    assert_eq!(reason, "too_large");
    assert!(detail.contains(&(2usize << 20).to_string()), "{detail}");
    assert_eq!(payload, big[..4096], "the first 4 KiB are kept");
    // Acked: a new session of the same client gets nothing redelivered.
    let connects = app.health.mqtt_connects.load(Ordering::Relaxed) - connects_before;
    assert!(connects <= 1, "reconnected {connects} times");
    app.shutdown();
    app.wait().await;
    let app = start_app(settings(&db, &mosq.url, "fw-oversize")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.health.messages.load(Ordering::Relaxed),
        0,
        "nothing redelivered"
    );
    app.shutdown();
    app.wait().await;
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 1);
}

/// A connection that fails right after ConnAck (here: a message over the configured
/// read cap, redelivered on every connect) backs off instead of reconnecting at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_failing_at_once_keeps_backing_off() {
    let mosq = Mosquitto::start_with("", |_| "max_packet_size 8388608\n".into());
    let db = fresh_db().await;
    let mut s = settings(&db, &mosq.url, "fw-backoff");
    s.mqtt.max_packet_bytes = 1 << 20;
    let app = start_app(s).await;
    let mut big = b"{\"pad\":\"".to_vec();
    big.resize(2 << 20, b'x');
    publish_all_with(&mosq.url, &[(topic("HTX-BO", "V-1"), big)], |o| {
        o.set_max_packet_size(16 << 20, 16 << 20);
    })
    .await;
    let before = app.health.mqtt_connects.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let connects = app.health.mqtt_connects.load(Ordering::Relaxed) - before;
    // Doubling from 50 ms: about 7 attempts in 5 s; resetting on every ConnAck: ~95.
    assert!((1..=10).contains(&connects), "{connects} connects in 5 s");
    app.shutdown();
    app.wait().await;
}
