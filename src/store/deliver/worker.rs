//! One worker per destination: sends its due deliveries in outbox order, one message
//! (an alert, the alerts that queued together for a webhook, or a digest) at a time, records every attempt in the reminder log,
//! backs off after a failure and parks the destination after too many. A worker
//! holds a database connection only to read and record, never while it sends, so a
//! slow or dead destination costs the others nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::destinations::Destination;
use super::render::{self, AlertView};
use super::schedule::{self, Pending};
use super::spec::Target;
use super::{Ctx, DeliverError, SendError};

/// What one look at the outbox did.
enum Outcome {
    /// Nothing due.
    Idle,
    /// Sent and recorded.
    Delivered,
    /// The attempt failed: back off.
    Failed,
    /// The attempt failed for the last allowed time: the destination is parked.
    Parked,
    /// Leadership is lost (failover): this instance delivers nothing more.
    SteppedDown,
}

/// Runs `dest`'s deliveries until `stop` (or until it is parked).
pub(super) async fn run(dest: Destination, ctx: Arc<Ctx>, stop: CancellationToken) {
    if dest.parked_at.is_some() {
        return;
    }
    let mut failures = u32::try_from(dest.consecutive_failures).unwrap_or(0);
    let poll = Duration::from_millis(ctx.cfg.poll_ms.max(10));
    let base = Duration::from_millis(ctx.cfg.backoff_initial_ms.max(1));
    let mut queued = ctx.queued.clone();
    let max = Duration::from_secs(ctx.cfg.backoff_max_s.max(1));
    loop {
        if failures > 0 && pause(schedule::backoff(failures, base, max), &stop).await {
            return;
        }
        queued.borrow_and_update();
        let outcome = tokio::select! {
            o = attempt(&dest, &ctx) => o,
            // An attempt cut short is not recorded: the delivery stays pending.
            _ = stop.cancelled() => return,
        };
        match outcome {
            Ok(Outcome::Idle) => {
                // Until the next poll, or sooner when the fan-out queued deliveries
                // since this attempt began (a fan-out that has stopped wakes nobody).
                let woken = async {
                    if queued.changed().await.is_err() {
                        std::future::pending::<()>().await
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = woken => {}
                    _ = stop.cancelled() => return,
                }
            }
            Ok(Outcome::Delivered) => failures = 0,
            Ok(Outcome::Failed) => failures += 1,
            Ok(Outcome::Parked | Outcome::SteppedDown) => return,
            Err(DeliverError::Db(crate::store::StoreError::Fenced { .. })) => return,
            Err(e) => {
                // The database's trouble, not the destination's: no failure counted.
                tracing::warn!(destination = dest.id, error = %e, "deliveries");
                if pause(poll.max(Duration::from_secs(1)), &stop).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `d`; true when stopped meanwhile.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

async fn attempt(dest: &Destination, ctx: &Ctx) -> Result<Outcome, DeliverError> {
    let max_digest = ctx.cfg.max_digest.max(1);
    // A webhook takes what queued together; a mail is one alert (its subject names it).
    let max_batch = match dest.target {
        Target::Webhook { .. } => ctx.cfg.max_batch.max(1),
        Target::Email { .. } => 1,
    };
    let db = ctx.pool.get().await?;
    let rows = db
        .query(
            "SELECT id, digest, batch_id, payload FROM deliveries
             WHERE destination_id = $1 AND status = 'pending' AND due_at <= now()
             ORDER BY id LIMIT $2",
            &[&dest.id, &(2 * max_digest.max(max_batch) as i64 + 1)],
        )
        .await?;
    let pending: Vec<Pending> = rows
        .iter()
        .map(|r| Pending {
            id: r.get(0),
            digest: r.get(1),
            batch: r.get(2),
        })
        .collect();
    let picked = schedule::next_batch(&pending, max_digest, max_batch);
    let Some(&first) = picked.first() else {
        return Ok(Outcome::Idle);
    };
    // A leader that lost its lease (paused, cut off) sends and writes nothing more:
    // asked afresh on the database's clock before each send. The new leader sends it.
    if let Some(f) = &ctx.fence {
        if !f.confirm(&db).await? {
            return Ok(Outcome::SteppedDown);
        }
    }
    let head = &pending[first];
    let ids: Vec<i64> = picked.iter().map(|&i| pending[i].id).collect();
    // A digest, or several alerts in one message, is fixed at its first attempt so
    // that a retry sends the same message under the same key.
    let batch = (head.digest || picked.len() > 1).then(|| head.batch.unwrap_or(head.id));
    if let (Some(b), None) = (batch, head.batch) {
        db.execute(
            "UPDATE deliveries SET batch_id = $1 WHERE id = ANY($2) AND batch_id IS NULL",
            &[&b, &ids],
        )
        .await?;
    }
    let views: Vec<AlertView> = picked
        .iter()
        .map(|&i| serde_json::from_value(rows[i].get(3)))
        .collect::<Result<_, _>>()
        .map_err(|e| DeliverError::Stored(format!("delivery payload: {e}")))?;
    drop(db);

    let key = match batch {
        Some(b) if head.digest => format!("digest:{}:{b}", dest.id),
        Some(b) => format!("batch:{}:{b}", dest.id),
        None => views[0].key(),
    };
    let channel = dest.target.channel().as_str();
    let started = Instant::now();
    let sent = send(dest, ctx, &views, &key, head.digest).await;
    metrics::histogram!("fleetwatch_delivery_attempt_seconds", "channel" => channel)
        .record(started.elapsed().as_secs_f64());
    let outcome = if sent.is_ok() { "delivered" } else { "failed" };
    metrics::counter!("fleetwatch_deliveries_total", "channel" => channel, "outcome" => outcome)
        .increment(views.len() as u64);
    if sent.is_ok() {
        let now = chrono::Utc::now();
        for v in &views {
            let lag = (now - v.event_time()).as_seconds_f64().max(0.0);
            metrics::histogram!("fleetwatch_delivery_lag_seconds", "channel" => channel)
                .record(lag);
        }
    }
    record(dest, ctx, &ids, &sent).await
}

async fn send(
    dest: &Destination,
    ctx: &Ctx,
    views: &[AlertView],
    key: &str,
    digest: bool,
) -> Result<String, SendError> {
    match &dest.target {
        Target::Webhook { url, secret } => {
            let body = json!({
                "idempotency_key": key,
                "destination": { "id": dest.id, "name": dest.name },
                "cooperative": dest.cooperative,
                "digest": digest,
                "alerts": views.iter().map(|v| v.json(&ctx.cfg.public_url)).collect::<Vec<_>>(),
            });
            ctx.webhook
                .send(url, secret, key, body.to_string().into_bytes())
                .await
        }
        Target::Email { to } => {
            let msg = render::render(
                views,
                &dest.cooperative,
                dest.spec.language,
                ctx.utc_offset_s,
                &ctx.cfg.public_url,
            );
            // A Message-ID's left part may not hold ':'.
            let id = format!("{}.d{}@fleetwatch", key.replace(':', "."), dest.id);
            ctx.mailer.send(to, &msg, &id).await
        }
    }
}

/// Records the attempt on the deliveries, in the reminder log, and on the
/// destination (failures in a row, parking).
async fn record(
    dest: &Destination,
    ctx: &Ctx,
    ids: &[i64],
    sent: &Result<String, SendError>,
) -> Result<Outcome, DeliverError> {
    let mut db = ctx.pool.get().await?;
    if let Some(f) = &ctx.fence {
        // A pause inside the transaction must not hold the takeover back.
        f.prepare(&db).await?;
    }
    let tx = db.transaction().await?;
    let (ok, detail) = match sent {
        Ok(d) => (true, d.clone()),
        Err(e) => (false, e.to_string()),
    };
    let error = (!ok).then_some(detail.as_str());
    tx.execute(
        "WITH done AS (
             UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = now(), last_error = $2,
                    status = CASE WHEN $3 THEN 'delivered' ELSE status END,
                    delivered_at = CASE WHEN $3 THEN now() END
             WHERE id = ANY($1) AND status = 'pending'
             RETURNING id, alert_id, revision, attempts)
         INSERT INTO reminder_log (alert_id, channel, status, destination_id, delivery_id, target,
                                   revision, attempt, detail)
         SELECT alert_id, $4, CASE WHEN $3 THEN 'delivered' ELSE 'failed' END, $5, id, $6,
                revision, attempts, $7
         FROM done ORDER BY id",
        &[
            &ids,
            &error,
            &ok,
            &dest.target.channel().as_str(),
            &dest.id,
            &dest.target.address(),
            &detail,
        ],
    )
    .await?;
    let outcome = if ok {
        tx.execute(
            "UPDATE delivery_destinations SET consecutive_failures = 0, last_error = NULL WHERE id = $1",
            &[&dest.id],
        )
        .await?;
        Outcome::Delivered
    } else {
        let park_after = i32::try_from(ctx.cfg.park_after_failures.max(1)).unwrap_or(i32::MAX);
        let row = tx
            .query_one(
                "UPDATE delivery_destinations SET consecutive_failures = consecutive_failures + 1,
                        last_error = $2,
                        parked_at = CASE WHEN consecutive_failures + 1 >= $3 THEN now() END,
                        parked_reason = CASE WHEN consecutive_failures + 1 >= $3
                            THEN (consecutive_failures + 1) || ' consecutive failures; last: ' || $2 END
                 WHERE id = $1
                 RETURNING consecutive_failures, parked_at IS NOT NULL",
                &[&dest.id, &detail, &park_after],
            )
            .await?;
        let (n, parked): (i32, bool) = (row.get(0), row.get(1));
        if parked {
            tracing::warn!(destination = dest.id, name = %dest.name, failures = n, last = %detail,
                "delivery destination parked: unpark it with POST /api/v1/destinations/{}/unpark", dest.id);
            Outcome::Parked
        } else {
            tracing::info!(destination = dest.id, failures = n, error = %detail, "delivery failed; retrying");
            Outcome::Failed
        }
    };
    // A stale leader's record is refused whole: the delivery stays pending for the new
    // leader, which sends it again under the same key.
    if let Some(f) = &ctx.fence {
        f.check(&tx).await?;
    }
    tx.commit().await?;
    Ok(outcome)
}
