//! The database as a fault source: content PostgreSQL refuses, outages, hangs, the
//! private server's life cycle.

use std::time::Duration;

use crate::support::*;

/// PostgreSQL refuses one fix of a batch (a check constraint the validator does not
/// know about): the batch is split, the good fixes are stored, the refused one is a
/// dead letter with the database's error, and ingest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_the_database_refuses_becomes_a_dead_letter_and_the_rest_is_stored() {
    let mosq = Mosquitto::start();
    let db = fresh_db().await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    c.batch_execute("ALTER TABLE fixes ADD CONSTRAINT no_speed_123 CHECK (speed_kmh <> 123)")
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
                    == 1
            }
        },
    )
    .await;
    let row = c
        .query_one(
            "SELECT topic, payload, detail FROM dead_letters WHERE reason = 'rejected_by_database'",
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
