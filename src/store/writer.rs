//! Batched writer: accepted fixes by binary COPY into a staging table, then one
//! conflict-ignoring insert (idempotent on redelivery); dead letters and the vehicle
//! list in the same transaction. Acks go out only after the commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{connect, fnv1a64, pg_text, StoreError};
use crate::api::Health;
use crate::ingest::validate::{Record, Rejected};

/// Batching settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch closes at this many records.
    pub max_records: usize,
    /// A batch closes this long after its first record, milliseconds.
    pub max_wait_ms: u64,
    /// Longest wait between reconnect attempts during a database outage, milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 2_000,
            max_wait_ms: 50,
            max_backoff_ms: 5_000,
        }
    }
}

/// One received message: its records and the token that acknowledges it.
#[derive(Debug)]
pub struct Item<A> {
    /// One record per fix or element of the message.
    pub records: Vec<Record>,
    /// Acknowledges the message to the broker; `None` when there is nothing to ack.
    pub ack: Option<A>,
    /// When the message was received.
    pub received_at: DateTime<Utc>,
}

/// Sends acknowledgements after a commit.
pub trait Acker: Send + Sync {
    /// The token type carried by [`Item`].
    type Token: Send;
    /// Acknowledges every token, in order.
    fn ack_all(&self, tokens: Vec<Self::Token>) -> impl std::future::Future<Output = ()> + Send;
}

/// What one committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// New rows in `fixes`.
    pub stored: u64,
    /// Fixes already stored (same vehicle and timestamp).
    pub duplicates: u64,
    /// New rows in `dead_letters`.
    pub dead_letters: u64,
}

const FIX_COLUMNS: &str = "vehicle_id, ts, cooperative_id, lat, lon, speed_kmh, heading_deg, \
     driver_id, ignition, satellites, hdop, odometer_m, flags, received_at";

/// Prepares a connection for [`write_batch`] (session-local staging table).
pub async fn prepare(client: &Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS fixes_stage
                 (LIKE fixes INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        )
        .await?;
    Ok(())
}

/// Writes records in one transaction. Safe to repeat: a repeated batch stores nothing new.
pub async fn write_batch(
    client: &mut Client,
    records: &[&Record],
) -> Result<BatchOutcome, StoreError> {
    let tx = client.transaction().await?;
    let mut outcome = BatchOutcome::default();
    let mut fixes = 0u64;
    let mut vehicles: HashMap<&str, (&str, DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    let mut dead: Vec<&Rejected> = Vec::new();

    let sink = tx
        .copy_in(&format!(
            "COPY fixes_stage ({FIX_COLUMNS}) FROM STDIN BINARY"
        ))
        .await?;
    let types = [
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT4,
        Type::FLOAT4,
        Type::TEXT,
        Type::BOOL,
        Type::INT2,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::INT2,
        Type::TIMESTAMPTZ,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for r in records {
        match r {
            Record::Accepted(a) => {
                let f = &a.fix;
                let driver = f.driver().map(|d| d.as_str());
                writer
                    .as_mut()
                    .write(&[
                        &f.vehicle().as_str(),
                        &f.ts(),
                        &a.cooperative.as_str(),
                        &f.lat(),
                        &f.lon(),
                        &f.speed_kmh(),
                        &f.heading_deg(),
                        &driver,
                        &f.ignition(),
                        &f.satellites(),
                        &f.hdop(),
                        &f.odometer_m(),
                        &a.flags.0,
                        &a.received_at,
                    ])
                    .await?;
                fixes += 1;
                let e = vehicles.entry(f.vehicle().as_str()).or_insert((
                    a.cooperative.as_str(),
                    a.received_at,
                    f.ts(),
                ));
                e.1 = e.1.max(a.received_at);
                e.2 = e.2.max(f.ts());
            }
            Record::Rejected(r) => dead.push(r),
        }
    }
    writer.finish().await?;
    if fixes > 0 {
        outcome.stored = tx
            .execute(
                &format!(
                    "INSERT INTO fixes ({FIX_COLUMNS}) SELECT {FIX_COLUMNS} FROM fixes_stage
                     ON CONFLICT DO NOTHING"
                ),
                &[],
            )
            .await?;
        outcome.duplicates = fixes - outcome.stored;
    }
    if !dead.is_empty() {
        let keys: Vec<i64> = dead
            .iter()
            .map(|d| fnv1a64(&[d.topic.as_bytes(), &d.payload]) as i64)
            .collect();
        let at: Vec<DateTime<Utc>> = dead.iter().map(|d| d.received_at).collect();
        let topics: Vec<String> = dead.iter().map(|d| pg_text(&d.topic)).collect();
        let payloads: Vec<&[u8]> = dead.iter().map(|d| &d.payload[..]).collect();
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason).collect();
        let details: Vec<String> = dead.iter().map(|d| pg_text(&d.detail)).collect();
        outcome.dead_letters = tx
            .execute(
                "INSERT INTO dead_letters (dedup_key, received_at, topic, payload, reason, detail)
                 SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::bytea[],
                                      $5::text[], $6::text[])
                 ON CONFLICT (dedup_key) DO NOTHING",
                &[&keys, &at, &topics, &payloads, &reasons, &details],
            )
            .await?;
    }
    if !vehicles.is_empty() {
        let mut ids = Vec::with_capacity(vehicles.len());
        let (mut coops, mut seen, mut last_ts) = (Vec::new(), Vec::new(), Vec::new());
        for (id, (coop, at, ts)) in &vehicles {
            ids.push(*id);
            coops.push(*coop);
            seen.push(*at);
            last_ts.push(*ts);
        }
        tx.execute(
            "INSERT INTO vehicles (vehicle_id, cooperative_id, first_seen, last_seen, last_fix_ts)
             SELECT v, c, s, s, t FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
                 AS u(v, c, s, t)
             ON CONFLICT (vehicle_id) DO UPDATE SET
                 first_seen = COALESCE(vehicles.first_seen, EXCLUDED.first_seen),
                 last_seen = GREATEST(vehicles.last_seen, EXCLUDED.last_seen),
                 last_fix_ts = GREATEST(vehicles.last_fix_ts, EXCLUDED.last_fix_ts)",
            &[&ids, &coops, &seen, &last_ts],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Runs the writer until `rx` closes (the consumer stopped) and every item in it is
/// committed and acked. A database outage makes it retry the same batch with backoff:
/// nothing is acked, so the broker keeps the messages and backpressure reaches it.
pub async fn run<K: Acker>(
    url: String,
    cfg: BatchConfig,
    mut rx: mpsc::Receiver<Item<K::Token>>,
    acker: K,
    shutdown: CancellationToken,
    health: Arc<Health>,
) {
    let mut client: Option<Client> = None;
    let mut backoff = Duration::from_millis(100);
    let max_wait = Duration::from_millis(cfg.max_wait_ms);
    let mut pending: Vec<Item<K::Token>> = Vec::new();
    loop {
        // Gather a batch: block for the first item, then take more until full or late.
        if pending.is_empty() {
            match rx.recv().await {
                Some(item) => pending.push(item),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut n: usize = pending.iter().map(|i| i.records.len()).sum();
        while n < cfg.max_records {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => {
                    n += item.records.len();
                    pending.push(item);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Commit, retrying on a fresh connection until it lands or we are told to stop
        // waiting for the database (then the unacked messages are redelivered later).
        let records: Vec<&Record> = pending.iter().flat_map(|i| i.records.iter()).collect();
        let started = Instant::now();
        let outcome = loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match connect(&url).await {
                    Ok(c) => match prepare(&c).await {
                        Ok(()) => Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "preparing writer connection failed");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "database unreachable; retrying");
                        None
                    }
                };
            }
            if let Some(c) = client.as_mut() {
                match write_batch(c, &records).await {
                    Ok(o) => {
                        health.database.store(true, Ordering::Relaxed);
                        break Some(o);
                    }
                    Err(e) => {
                        health.database.store(false, Ordering::Relaxed);
                        metrics::counter!("fleetwatch_store_errors_total",
                            "kind" => if e.is_transient() { "transient" } else { "data" })
                        .increment(1);
                        tracing::warn!(error = %e, records = records.len(), "batch commit failed; retrying");
                        client = None;
                    }
                }
            }
            if shutdown.is_cancelled()
                && rx.is_closed()
                && backoff >= Duration::from_millis(cfg.max_backoff_ms)
            {
                // Shutting down during an outage: give up this batch, unacked.
                break None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(cfg.max_backoff_ms));
        };
        let Some(outcome) = outcome else {
            tracing::warn!(
                messages = pending.len(),
                "stopping with an uncommitted batch; the broker will redeliver it"
            );
            return;
        };
        backoff = Duration::from_millis(100);
        let elapsed = started.elapsed();
        let now = Utc::now();
        crate::telemetry::batch_committed(&outcome, records.len(), elapsed.as_secs_f64());
        let lag = metrics::histogram!("fleetwatch_ingest_lag_seconds");
        let mut tokens = Vec::with_capacity(pending.len());
        for item in pending.drain(..) {
            lag.record((now - item.received_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
            tokens.extend(item.ack);
        }
        fault::after_commit();
        acker.ack_all(tokens).await;
    }
}

/// Fault injection for the no-loss tests: `FLEETWATCH_FAULT_ABORT_AFTER_COMMITS=N`
/// aborts the process right after the N-th commit, before its acks are sent.
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COMMITS: AtomicU64 = AtomicU64::new(0);

    pub fn after_commit() {
        let limit = LIMIT.get_or_init(|| {
            std::env::var("FLEETWATCH_FAULT_ABORT_AFTER_COMMITS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(limit) = limit {
            if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 >= *limit {
                eprintln!("fault injection: aborting after commit, before ack");
                std::process::abort();
            }
        }
    }
}
