//! Alert outbox: alerts are committed with the fixes that caused them (`published_at`
//! NULL), then this task publishes them to MQTT (QoS 1) on its own connection and
//! marks them published, in the reminder log, only once the broker has acknowledged
//! them (PubAck). A crash anywhere loses nothing: an unacknowledged alert is still
//! unpublished at the next start and goes out again (at least once; `alert_id` lets
//! subscribers drop a repeat).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::lease::Fence;
use super::{connect, StoreError};
use crate::domain::topic::TopicPattern;
use crate::domain::{CooperativeId, VehicleId};

/// Most alerts published in one round (and awaited together).
const ROUND: usize = 500;
/// How long a round waits for the broker's acknowledgements before trying again.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the publisher's event loop reports to the outbox, in the order it happened.
#[derive(Debug, Clone, Copy)]
pub enum PubEvent {
    /// A publication went out with this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
}

/// The publisher connection: its client (request capacity at least [`ROUND`]) and
/// event loop.
pub struct Publisher {
    /// Queues publications.
    pub client: AsyncClient,
    /// Drives the connection.
    pub eventloop: EventLoop,
}

/// Publishes pending alerts until `stop`; wakes on `ready` or every second.
pub async fn run(
    db_url: String,
    publisher: Publisher,
    topic: TopicPattern,
    ready: Arc<Notify>,
    stop: CancellationToken,
    fence: Option<Fence>,
) {
    let Publisher { client, eventloop } = publisher;
    let (etx, mut erx) = mpsc::channel(4 * ROUND);
    // The event loop runs in its own task so it is polled all the time (keep-alive)
    // and never cancelled mid-packet.
    let driver = tokio::spawn(drive(eventloop, etx, stop.clone()));
    let mut db = None;
    loop {
        if db.is_none() {
            db = connect(&db_url).await.ok();
        }
        if let Some(c) = &mut db {
            match publish_pending(c, &client, &mut erx, &topic, fence.as_ref()).await {
                Ok(n) if n > 0 => continue, // more may be waiting
                Ok(_) => {}
                // Stepping down: the new leader's outbox publishes what is left.
                Err(StoreError::Fenced { .. }) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "alert outbox");
                    db = None;
                }
            }
        }
        tokio::select! {
            _ = ready.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => break,
        }
    }
    let _ = client.try_disconnect();
    let _ = driver.await;
}

/// Polls the publisher's event loop, reporting publications and acknowledgements.
async fn drive(mut eventloop: EventLoop, tx: mpsc::Sender<PubEvent>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let polled = tokio::select! {
            r = eventloop.poll() => r,
            _ = stop.cancelled() => return,
        };
        let event = match polled {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => PubEvent::Sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(a))) => PubEvent::Acked(a.pkid),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "alert publisher connection");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // The outbox reads these while a round is out; between rounds it drops them.
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// Publishes up to [`ROUND`] pending alerts, oldest change first, and marks those the
/// broker acknowledged; returns how many were acknowledged.
pub async fn publish_pending(
    db: &mut tokio_postgres::Client,
    client: &AsyncClient,
    events: &mut mpsc::Receiver<PubEvent>,
    topic: &TopicPattern,
    fence: Option<&Fence>,
) -> Result<usize, StoreError> {
    let rows = db
        .query(
            "SELECT alert_id, vehicle_id, cooperative_id, driver_id, kind, level, status, severity,
                    start_ts, end_ts, lat, lon, details, updated_at,
                    retracted_at, retraction_reason
             FROM alerts WHERE published_at IS NULL ORDER BY updated_at LIMIT $1",
            &[&(ROUND as i64)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Reports of an earlier, timed-out round.
    while events.try_recv().is_ok() {}
    for row in &rows {
        let id: String = row.get(0);
        let vehicle: String = row.get(1);
        let coop: Option<String> = row.get(2);
        let retracted: Option<DateTime<Utc>> = row.get(14);
        // A retracted alert goes out with status "retracted" (its episode status in
        // `episode_status`), so a subscriber drops it.
        let status = match retracted {
            Some(_) => "retracted".to_string(),
            None => row.get::<_, String>(6),
        };
        let payload = json!({
            "alert_id": id,
            "vehicle": vehicle,
            "cooperative": coop,
            "driver_id": row.get::<_, Option<String>>(3),
            "kind": row.get::<_, String>(4),
            "level": row.get::<_, String>(5),
            "status": status,
            "episode_status": row.get::<_, String>(6),
            "retracted_at": retracted,
            "retraction_reason": row.get::<_, Option<String>>(15),
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
    }
    let acked = await_acks(events, rows.len()).await;
    // One transaction, fenced under failover: a stale leader logs no publication.
    let tx = db.transaction().await?;
    for &i in &acked {
        let row = &rows[i];
        let id: String = row.get(0);
        let status: String = match row.get::<_, Option<DateTime<Utc>>>(14) {
            Some(_) => "retracted".into(),
            None => row.get(6),
        };
        let updated_at: DateTime<Utc> = row.get(13);
        // Written (committed with its fixes, or updated) to acknowledged by the broker.
        let lag_s = (Utc::now() - updated_at).as_seconds_f64().max(0.0);
        metrics::histogram!("fleetwatch_outbox_lag_seconds").record(lag_s);
        // Only if unchanged since read: a newer version goes out in the next round.
        let marked = tx
            .execute(
                "UPDATE alerts SET published_at = now() WHERE alert_id = $1 AND updated_at = $2",
                &[&id, &updated_at],
            )
            .await?;
        if marked == 1 {
            tx.execute(
                "INSERT INTO reminder_log (alert_id, channel, status) VALUES ($1, 'mqtt', $2)",
                &[&id, &status],
            )
            .await?;
        }
    }
    if let Some(f) = fence {
        f.check(&tx).await?;
    }
    tx.commit().await?;
    metrics::counter!("fleetwatch_alerts_published_total").increment(acked.len() as u64);
    if acked.len() < rows.len() {
        tracing::warn!(
            published = rows.len(),
            acknowledged = acked.len(),
            "alert outbox: not every publication was acknowledged; the rest go out again"
        );
    }
    Ok(acked.len())
}

/// Indices (in publication order) of the `n` publications the broker acknowledged
/// within [`ACK_TIMEOUT`].
async fn await_acks(events: &mut mpsc::Receiver<PubEvent>, n: usize) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    // Packet ids are reused once acknowledged, so they are matched in event order:
    // the k-th `Sent` is the k-th publication.
    let mut sent = 0;
    let mut outstanding: HashMap<u16, usize> = HashMap::new();
    let mut acked = Vec::with_capacity(n);
    while acked.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(PubEvent::Sent(pkid))) if sent < n => {
                outstanding.insert(pkid, sent);
                sent += 1;
            }
            Ok(Some(PubEvent::Acked(pkid))) => {
                if let Some(i) = outstanding.remove(&pkid) {
                    acked.push(i);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    acked.sort_unstable();
    acked
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn acks(events: &[PubEvent], n: usize) -> Vec<usize> {
        let (tx, mut rx) = mpsc::channel(64);
        for e in events {
            tx.send(*e).await.unwrap();
        }
        drop(tx);
        await_acks(&mut rx, n).await
    }

    #[tokio::test]
    async fn packet_ids_reused_after_their_ack_map_to_the_right_publication() {
        use PubEvent::*;
        // Window of 2: ids 1 and 2, then 1 again once acknowledged.
        let ev = [Sent(1), Sent(2), Acked(1), Sent(1), Acked(1), Acked(2)];
        assert_eq!(acks(&ev, 3).await, vec![0, 1, 2]);
        // The third publication is never acknowledged: only the first two count.
        let ev = [Sent(1), Sent(2), Acked(2), Acked(1), Sent(1)];
        assert_eq!(acks(&ev, 3).await, vec![0, 1]);
        // An ack of a packet sent in an earlier round counts for nothing.
        assert_eq!(acks(&[Acked(7), Sent(7)], 1).await, Vec::<usize>::new());
    }
}
