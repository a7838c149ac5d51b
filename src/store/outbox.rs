//! Alert outbox: alerts are committed with the fixes that caused them (`published_at`
//! NULL), then this task publishes them to MQTT (QoS 1) and records each publication
//! in the reminder log. A crash between commit and publish loses nothing: the row is
//! still unpublished at the next start.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, QoS};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{connect, StoreError};
use crate::domain::{CooperativeId, VehicleId};
use crate::ingest::topic::TopicPattern;

/// Publishes pending alerts until `stop`; wakes on `ready` or every second.
pub async fn run(
    db_url: String,
    client: AsyncClient,
    topic: TopicPattern,
    ready: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut db = None;
    loop {
        if db.is_none() {
            db = connect(&db_url).await.ok();
        }
        if let Some(c) = &db {
            match publish_pending(c, &client, &topic).await {
                Ok(n) if n > 0 => continue, // more may be waiting
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "alert outbox");
                    db = None;
                }
            }
        }
        tokio::select! {
            _ = ready.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Publishes up to 500 pending alerts, oldest change first; returns how many.
pub async fn publish_pending(
    db: &tokio_postgres::Client,
    client: &AsyncClient,
    topic: &TopicPattern,
) -> Result<usize, StoreError> {
    let rows = db
        .query(
            "SELECT alert_id, vehicle_id, cooperative_id, driver_id, kind, level, status, severity,
                    start_ts, end_ts, lat, lon, details, updated_at
             FROM alerts WHERE published_at IS NULL ORDER BY updated_at LIMIT 500",
            &[],
        )
        .await?;
    for row in &rows {
        let id: String = row.get(0);
        let vehicle: String = row.get(1);
        let coop: Option<String> = row.get(2);
        let status: String = row.get(6);
        let updated_at: DateTime<Utc> = row.get(13);
        let payload = json!({
            "alert_id": id,
            "vehicle": vehicle,
            "cooperative": coop,
            "driver_id": row.get::<_, Option<String>>(3),
            "kind": row.get::<_, String>(4),
            "level": row.get::<_, String>(5),
            "status": status,
            "severity": row.get::<_, Option<i16>>(7),
            "start": row.get::<_, DateTime<Utc>>(8),
            "end": row.get::<_, Option<DateTime<Utc>>>(9),
            "lat": row.get::<_, f64>(10),
            "lon": row.get::<_, f64>(11),
            "details": row.get::<_, serde_json::Value>(12),
        });
        let t = alert_topic(topic, coop.as_deref(), &vehicle);
        if let Err(e) = client
            .publish(t, QoS::AtLeastOnce, false, payload.to_string())
            .await
        {
            tracing::warn!(error = %e, "publishing alert");
            return Ok(0);
        }
        // Only if unchanged since read: a newer version goes out in the next round.
        let marked = db
            .execute(
                "UPDATE alerts SET published_at = now() WHERE alert_id = $1 AND updated_at = $2",
                &[&id, &updated_at],
            )
            .await?;
        if marked == 1 {
            db.execute(
                "INSERT INTO reminder_log (alert_id, channel, status) VALUES ($1, 'mqtt', $2)",
                &[&id, &status],
            )
            .await?;
        }
        metrics::counter!("fleetwatch_alerts_published_total").increment(1);
    }
    Ok(rows.len())
}

fn alert_topic(pattern: &TopicPattern, coop: Option<&str>, vehicle: &str) -> String {
    // Unregistered vehicles have no cooperative on record.
    let coop = coop
        .and_then(|c| CooperativeId::parse(c).ok())
        .unwrap_or_else(|| CooperativeId::parse("UNREGISTERED").expect("valid id"));
    match VehicleId::parse(vehicle) {
        Ok(v) => pattern.topic(&coop, &v),
        Err(_) => pattern.topic(&coop, &VehicleId::parse("UNKNOWN").expect("valid id")),
    }
}
