//! Ingest incidents (`ingest_incidents`): recorded off the event loop by their own
//! task, read by the compliance report.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_postgres::{Client, GenericClient};
use tokio_util::sync::CancellationToken;

use super::lease::Fence;
use super::StoreError;

/// Kind of an incident where the broker lost its session for fleetwatch.
pub const SESSION_LOST: &str = "mqtt_session_lost";

/// One incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// When fleetwatch noticed it.
    pub at: DateTime<Utc>,
    /// Low-cardinality kind, e.g. [`SESSION_LOST`].
    pub kind: &'static str,
    /// The broker's URL, without password.
    pub broker: String,
    /// The connection (MQTT client id) it happened on.
    pub connection: String,
    /// What happened, for people.
    pub detail: String,
}

/// A stored incident, as reports show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredIncident {
    /// When fleetwatch noticed it (RFC 3339).
    pub at: String,
    /// Kind, e.g. `mqtt_session_lost`.
    pub kind: String,
    /// The broker's URL, without password.
    pub broker: String,
    /// The connection (MQTT client id).
    pub connection: String,
    /// What happened.
    pub detail: String,
}

/// Stores one incident.
pub async fn insert(db: &impl GenericClient, i: &Incident) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO ingest_incidents (at, kind, broker, connection, detail)
         VALUES ($1, $2, $3, $4, $5)",
        &[&i.at, &i.kind, &i.broker, &i.connection, &i.detail],
    )
    .await?;
    Ok(())
}

/// Incidents with `from <= at < to`, oldest first.
pub async fn in_range(
    db: &Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<StoredIncident>, StoreError> {
    let rows = db
        .query(
            "SELECT at, kind, broker, connection, detail FROM ingest_incidents
             WHERE at >= $1 AND at < $2 ORDER BY at, id",
            &[&from, &to],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredIncident {
            at: r
                .get::<_, DateTime<Utc>>(0)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            kind: r.get(1),
            broker: r.get(2),
            connection: r.get(3),
            detail: r.get(4),
        })
        .collect())
}

/// Stores one incident in a transaction checked by the failover `fence` (a leader
/// that lost its lease stores nothing).
pub async fn insert_fenced(
    db: &mut Client,
    i: &Incident,
    fence: Option<&Fence>,
) -> Result<(), StoreError> {
    let Some(f) = fence else {
        return insert(db, i).await;
    };
    let tx = db.transaction().await?;
    insert(&tx, i).await?;
    f.check(&tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Stores incidents from `rx` until it closes or `stop` fires (then drains what is
/// queued, bounded). A failed insert is retried with backoff: the incident is kept in
/// memory meanwhile, and the event loops never wait on this task. Under failover
/// (`fence`), a leader that lost its lease stops storing.
pub async fn run(
    db_url: String,
    mut rx: mpsc::Receiver<Incident>,
    fence: Option<Fence>,
    stop: CancellationToken,
) {
    let mut client: Option<Client> = None;
    loop {
        let incident = tokio::select! {
            i = rx.recv() => match i { Some(i) => i, None => return },
            _ = stop.cancelled() => match rx.try_recv() { Ok(i) => i, Err(_) => return },
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = super::connect(&db_url).await.ok();
                if let (Some(c), Some(f)) = (&client, &fence) {
                    if f.prepare(c).await.is_err() {
                        client = None;
                    }
                }
            }
            let r = match client.as_mut() {
                Some(c) => insert_fenced(c, &incident, fence.as_ref())
                    .await
                    .map_err(Some),
                None => Err(None),
            };
            match r {
                Ok(()) => break,
                Err(Some(StoreError::Fenced { .. })) => return,
                Err(e) => {
                    let e = e.map_or_else(|| "no database connection".into(), |e| e.to_string());
                    tracing::warn!(error = %e, kind = incident.kind, "ingest incident not stored yet; retrying");
                    client = None;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
