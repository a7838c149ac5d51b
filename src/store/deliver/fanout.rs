//! Fan-out: every committed alert revision becomes one outbox row per destination
//! that wants it, in one transaction with the mark that it was fanned out.
//!
//! Why here and not in the writer's transaction: the alert row is already durable,
//! so reading it back loses nothing (a crash between the alert's commit and the
//! fan-out leaves `fanned_out_revision` behind `revision`: fanned out at the next
//! start), and the writer, the hot path, stays unaware of subscriptions that change
//! at run time. Rows are unique by (destination, alert, revision), so a repeat adds
//! nothing; `FOR UPDATE SKIP LOCKED` lets several instances share the work.

use chrono::Utc;
use serde_json::Value;
use tokio_postgres::Client;

use super::destinations;
use super::render::AlertView;
use super::schedule::{self, Facts};
use super::DeliverError;
use crate::domain::alert::{AlertKind, Level};
use crate::store::lease::Fence;

/// Alerts fanned out per transaction.
const ROUND: i64 = 500;

/// Fans out up to [`ROUND`] changed alerts; returns how many alerts it marked. Under
/// failover the transaction is checked by `fence` before its commit: a leader that
/// lost its lease queues nothing.
pub async fn fan_out(
    db: &mut Client,
    utc_offset_s: i32,
    fence: Option<&Fence>,
) -> Result<usize, DeliverError> {
    let dests = destinations::list(db, None).await?;
    let tx = db.transaction().await?;
    let rows = tx
        .query(
            "SELECT a.alert_id, a.revision, COALESCE(a.cooperative_id, v.cooperative_id),
                    a.vehicle_id, a.driver_id, a.kind, a.level, a.status, a.severity,
                    a.start_ts, a.end_ts, a.lat, a.lon, a.details, a.retracted_at IS NOT NULL,
                    a.retraction_reason
             FROM alerts a LEFT JOIN vehicles v ON v.vehicle_id = a.vehicle_id
             WHERE a.fanned_out_revision IS DISTINCT FROM a.revision
             ORDER BY a.updated_at, a.alert_id
             LIMIT $1
             FOR UPDATE OF a SKIP LOCKED",
            &[&ROUND],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let (mut d_ids, mut a_ids, mut revs, mut digests, mut dues, mut payloads) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut marked = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.get(0);
        marked.push(id.clone());
        let Some(coop) = r.get::<_, Option<String>>(2) else {
            continue; // an unregistered vehicle nobody claimed: no cooperative to tell
        };
        let (kind, level) = match (parse::<AlertKind>(r.get(5)), parse::<Level>(r.get(6))) {
            (Some(k), Some(l)) => (k, l),
            _ => {
                tracing::warn!(alert = %id, "deliveries: unknown alert kind or level, not delivered");
                continue;
            }
        };
        let status: String = r.get(7);
        let retracted: bool = r.get(14);
        let view = AlertView {
            id: id.clone(),
            revision: r.get(1),
            vehicle: r.get(3),
            cooperative: coop.clone(),
            driver: r.get(4),
            kind,
            level,
            status: if retracted {
                "retracted".into()
            } else {
                status.clone()
            },
            episode_status: status,
            severity: r
                .get::<_, Option<i16>>(8)
                .and_then(|s| u8::try_from(s).ok()),
            start: r.get(9),
            end: r.get(10),
            lat: r.get(11),
            lon: r.get(12),
            details: r.get(13),
            retraction_reason: r.get(15),
        };
        let facts = Facts {
            kind,
            level,
            severity: view.severity,
            vehicle: &view.vehicle,
        };
        let payload = serde_json::to_value(&view).expect("a view serialises");
        for d in dests.iter().filter(|d| d.cooperative == coop) {
            if !schedule::wants(&d.spec, facts) {
                continue;
            }
            let (due, digest) = schedule::due(&d.spec, level, now, utc_offset_s);
            d_ids.push(d.id);
            a_ids.push(id.clone());
            revs.push(view.revision);
            digests.push(digest);
            dues.push(due);
            payloads.push(payload.clone());
        }
    }
    if !d_ids.is_empty() {
        tx.execute(
            "INSERT INTO deliveries (destination_id, alert_id, revision, digest, due_at, payload)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::int4[], $4::bool[], $5::timestamptz[], $6::jsonb[])
             ON CONFLICT (destination_id, alert_id, revision) DO NOTHING",
            &[&d_ids, &a_ids, &revs, &digests, &dues, &payloads],
        )
        .await?;
    }
    // The rows are locked: their revision is the one read.
    tx.execute(
        "UPDATE alerts SET fanned_out_revision = revision WHERE alert_id = ANY($1)",
        &[&marked],
    )
    .await?;
    if let Some(f) = fence {
        f.check(&tx).await?;
    }
    tx.commit().await?;
    metrics::counter!("fleetwatch_deliveries_enqueued_total").increment(d_ids.len() as u64);
    Ok(marked.len())
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(Value::String(s.to_string())).ok()
}
