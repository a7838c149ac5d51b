//! Deliveries: alerts to the cooperatives' webhooks and mailboxes, at least once, in
//! order per destination, every attempt in the reminder log (Circular 12/2020 art. 5).
//!
//! `fanout` turns committed alert revisions into outbox rows (`deliveries`) per
//! destination; a supervisor runs one `worker` per destination over a small pool of
//! connections; `webhook` and `email` are the channels (MQTT is the alert outbox,
//! [`super::outbox`]); `spec`, `schedule` and `render` are the pure parts.

pub mod config;
pub mod destinations;
pub mod email;
pub mod fanout;
pub mod render;
pub mod schedule;
pub mod spec;
pub mod webhook;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::DeliveriesConfig;

use super::lease::Fence;
use super::StoreError;

/// Errors of the delivery store.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] StoreError),
    /// No pooled connection.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// No such destination (or another cooperative's).
    #[error("no destination {0}")]
    NotFound(i64),
    /// The change conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// A destination of the configuration file is invalid.
    #[error("{0}")]
    Config(String),
    /// A stored row fleetwatch cannot read back.
    #[error("stored data: {0}")]
    Stored(String),
}

impl From<tokio_postgres::Error> for DeliverError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(StoreError::Db(e))
    }
}

/// Why one attempt failed (recorded in the reminder log, counted towards parking).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Refused before sending (a private address, no SMTP relay configured ...).
    #[error("refused: {0}")]
    Refused(String),
    /// No answer: DNS, connection, TLS, timeout.
    #[error("{0}")]
    Transport(String),
    /// The receiver answered but did not accept (HTTP non-2xx, SMTP rejection).
    #[error("{0}")]
    Answer(String),
}

/// What every worker shares.
pub(crate) struct Ctx {
    pool: deadpool_postgres::Pool,
    /// Changes when the fan-out queued deliveries.
    queued: watch::Receiver<u64>,
    cfg: DeliveriesConfig,
    utc_offset_s: i32,
    webhook: webhook::Webhook,
    mailer: email::Mailer,
    /// Under failover: confirmed before each send, checked before each record.
    fence: Option<Fence>,
}

/// Connections the workers share (they hold one only to read or record).
const POOL_SIZE: usize = 4;

fn pool(db_url: &str) -> Result<deadpool_postgres::Pool, StoreError> {
    let mut cfg: tokio_postgres::Config = db_url.parse()?;
    cfg.connect_timeout(Duration::from_secs(5));
    cfg.application_name("fleetwatch-deliveries");
    let mgr = deadpool_postgres::Manager::from_config(
        cfg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let wait = Some(Duration::from_secs(10));
    Ok(deadpool_postgres::Pool::builder(mgr)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(wait)
        .build()
        .expect("pool with the tokio runtime builds"))
}

/// Runs the fan-out and one worker per destination until `stop`; picks up
/// destinations created, changed, unparked or deleted (by any instance) within
/// `poll_ms`. `utc_offset_s`: local time of quiet hours, digests and messages.
/// `alerts_ready`: the writer's wake after it committed changed alerts (alerts
/// written by another instance are found at the next poll). Under failover, `fence`
/// keeps a leader that lost its lease from sending or recording anything.
pub async fn run(
    db_url: String,
    cfg: DeliveriesConfig,
    utc_offset_s: i32,
    alerts_ready: Arc<Notify>,
    fence: Option<Fence>,
    stop: CancellationToken,
) {
    let pool = match pool(&db_url) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "deliveries: no database pool; nothing is delivered");
            return;
        }
    };
    let timeout = Duration::from_secs(cfg.timeout_s.max(1));
    let poll = Duration::from_millis(cfg.poll_ms.max(10));
    // Bumped by the fan-out when it queued deliveries: wakes the idle workers.
    let (queued_tx, queued) = watch::channel(0u64);
    let ctx = Arc::new(Ctx {
        pool,
        queued,
        webhook: webhook::Webhook {
            timeout,
            allow_private: cfg.allow_private_targets,
        },
        mailer: email::Mailer::new(&cfg.smtp, timeout),
        cfg,
        utc_offset_s,
        fence: fence.clone(),
    });
    let fan = tokio::spawn(fan_out_loop(
        db_url,
        utc_offset_s,
        poll,
        alerts_ready,
        queued_tx,
        fence,
        stop.clone(),
    ));
    let mut workers: HashMap<i64, (DateTime<Utc>, CancellationToken, JoinHandle<()>)> =
        HashMap::new();
    loop {
        match live_destinations(&ctx).await {
            Ok(list) => {
                let parked = list.iter().filter(|d| d.parked_at.is_some()).count();
                metrics::gauge!("fleetwatch_destinations_parked").set(parked as f64);
                metrics::gauge!("fleetwatch_deliveries_pending")
                    .set(list.iter().map(|d| d.pending).sum::<i64>() as f64);
                let current: HashMap<i64, DateTime<Utc>> =
                    list.iter().map(|d| (d.id, d.updated_at)).collect();
                // Changed (unparked, edited) or deleted: stop the old worker first, so
                // two never send for one destination.
                let stale: Vec<i64> = workers
                    .iter()
                    .filter(|(id, (at, _, _))| current.get(id) != Some(at))
                    .map(|(id, _)| *id)
                    .collect();
                for id in stale {
                    if let Some((_, token, handle)) = workers.remove(&id) {
                        token.cancel();
                        let _ = handle.await;
                    }
                }
                for d in list {
                    if !workers.contains_key(&d.id) {
                        let token = stop.child_token();
                        let at = d.updated_at;
                        let id = d.id;
                        let handle = tokio::spawn(worker::run(d, ctx.clone(), token.clone()));
                        workers.insert(id, (at, token, handle));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "deliveries: reading destinations"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.cancelled() => break,
        }
    }
    for (_, (token, handle)) in workers.into_iter().map(|(k, (_, t, h))| (k, (t, h))) {
        token.cancel();
        let _ = handle.await;
    }
    let _ = fan.await;
}

async fn live_destinations(ctx: &Ctx) -> Result<Vec<destinations::Destination>, DeliverError> {
    let db = ctx.pool.get().await?;
    destinations::list(&db, None).await
}

/// Fans out changed alerts on its own connection (a transaction needs one).
async fn fan_out_loop(
    db_url: String,
    utc_offset_s: i32,
    poll: Duration,
    alerts_ready: Arc<Notify>,
    queued: watch::Sender<u64>,
    fence: Option<Fence>,
    stop: CancellationToken,
) {
    let mut db: Option<tokio_postgres::Client> = None;
    while !stop.is_cancelled() {
        if fence.as_ref().is_some_and(|f| f.lost().is_cancelled()) {
            return; // stepped down: the new leader fans out
        }
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = super::connect(&db_url).await.ok();
            if let (Some(c), Some(f)) = (&db, &fence) {
                if f.prepare(c).await.is_err() {
                    db = None;
                }
            }
        }
        if let Some(c) = db.as_mut() {
            match fanout::fan_out(c, utc_offset_s, fence.as_ref()).await {
                Ok(n) if n > 0 => {
                    queued.send_modify(|k| *k = k.wrapping_add(1));
                    continue; // more may be waiting
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "deliveries: fan-out"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = alerts_ready.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}
