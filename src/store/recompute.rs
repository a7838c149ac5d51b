//! Reconciliation of a recomputed span with the stored alerts, trips and data gaps: an
//! alert of the span the recomputation did not produce is retracted (kept, with when
//! and why, and published again as retracted), a trip or gap it did not produce is
//! deleted; the others were upserted by id (or start) with the batches.

use chrono::{DateTime, Utc};

use tokio_postgres::Transaction;

use super::rollup::{self, Plan};
use super::writer::Recomputed;
use super::StoreError;

/// Why a recomputation retracts an alert.
pub const RETRACTED_BY_LATE_FIXES: &str = "late fixes: not produced in event-time order";

/// Retracts, for each recomputed span, the vehicle's alerts emitted at or after the
/// span's start (whenever their episode began) that it did not produce (no-signal runs
/// on processing time: left alone), deletes the trips and gaps it no longer gives, and
/// refreshes the roll-ups of their days. Run after the batch's alerts, trips and gaps
/// are upserted. Returns how many alerts were retracted.
pub(crate) async fn retract(
    tx: &Transaction<'_>,
    plan: Option<&Plan>,
    spans: &[Recomputed],
) -> Result<u64, StoreError> {
    let mut n = 0;
    for span in spans {
        let keep: Vec<&str> = span.keep.iter().map(|a| a.as_str()).collect();
        let rows = tx
            .query(
                "UPDATE alerts SET retracted_at = now(), retraction_reason = $4,
                        updated_at = now(), published_at = NULL
                 WHERE vehicle_id = $1 AND COALESCE(emitted_ts, start_ts) >= $2
                   AND retracted_at IS NULL
                   AND kind NOT IN ('no_signal', 'device_alarm') AND NOT (alert_id = ANY ($3::text[]))
                 RETURNING start_ts, kind",
                &[
                    &span.vehicle.as_str(),
                    &span.after,
                    &keep,
                    &RETRACTED_BY_LATE_FIXES,
                ],
            )
            .await?;
        n += rows.len() as u64;
        if let (Some(p), false) = (plan, rows.is_empty()) {
            let (vehicles, days) = local_days(&rows, p.offset_s, span.vehicle.as_str());
            let drivers = rows.iter().any(|r| {
                matches!(
                    r.get::<_, &str>(1),
                    "continuous_driving" | "daily_driving" | "weekly_driving"
                )
            });
            rollup::refresh_alert_days(tx, p.offset_s, &vehicles, &days, drivers).await?;
        }
        // Trips and data gaps are emitted when they end: those ending in the span that
        // the event-time order no longer gives are gone (a late fix inside a "stop"
        // joins two trips; one inside a gap splits it).
        let gone = tx
            .query(
                "WITH t AS (DELETE FROM trips WHERE vehicle_id = $1 AND end_ts >= $2
                              AND NOT (start_ts = ANY ($3::timestamptz[])) RETURNING start_ts),
                      g AS (DELETE FROM data_gaps WHERE vehicle_id = $1 AND end_ts >= $2
                              AND NOT (start_ts = ANY ($4::timestamptz[])) RETURNING start_ts)
                 SELECT start_ts FROM t UNION ALL SELECT start_ts FROM g",
                &[&span.vehicle.as_str(), &span.after, &span.trips, &span.gaps],
            )
            .await?;
        // Trip runs and stop events likewise (they are emitted when decided).
        let (ev_trips, ev_sa, ev_seq): (Vec<&str>, Vec<DateTime<Utc>>, Vec<i32>) = span
            .stop_events
            .iter()
            .fold((Vec::new(), Vec::new(), Vec::new()), |mut acc, k| {
                acc.0.push(k.0.as_str());
                acc.1.push(k.1);
                acc.2.push(k.2);
                acc
            });
        let transit_gone = tx
            .query(
                "WITH r AS (DELETE FROM trip_runs WHERE vehicle_id = $1 AND end_ts >= $2
                              AND NOT (start_ts = ANY ($3::timestamptz[])) RETURNING 1),
                      e AS (DELETE FROM stop_events s WHERE vehicle_id = $1 AND observed_ts >= $2
                              AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::timestamptz[], $6::int4[])
                                                  AS k(trip_id, scheduled_arrival, stop_sequence)
                                              WHERE (k.trip_id, k.scheduled_arrival, k.stop_sequence)
                                                  = (s.trip_id, s.scheduled_arrival, s.stop_sequence))
                              RETURNING 1)
                 SELECT 1 FROM r UNION ALL SELECT 1 FROM e",
                &[
                    &span.vehicle.as_str(),
                    &span.after,
                    &span.runs,
                    &ev_trips,
                    &ev_sa,
                    &ev_seq,
                ],
            )
            .await?;
        let deleted = gone.len() + transit_gone.len();
        if deleted > 0 {
            metrics::counter!("fleetwatch_recompute_deleted_total").increment(deleted as u64);
        }
        if let (Some(p), false) = (plan, gone.is_empty()) {
            let (vehicles, days) = local_days(&gone, p.offset_s, span.vehicle.as_str());
            rollup::refresh_trip_gap_days(tx, p.offset_s, &vehicles, &days).await?;
        }
    }
    if n > 0 {
        metrics::counter!("fleetwatch_alerts_retracted_total").increment(n);
    }
    Ok(n)
}

/// The distinct local days of the times in column 0 of `rows`, each with `vehicle`:
/// the keys of the roll-ups to refresh.
fn local_days(
    rows: &[tokio_postgres::Row],
    offset_s: i32,
    vehicle: &str,
) -> (Vec<String>, Vec<chrono::NaiveDate>) {
    let mut days: Vec<chrono::NaiveDate> = rows
        .iter()
        .map(|r| rollup::local_day(r.get::<_, DateTime<Utc>>(0), offset_s))
        .collect();
    days.sort_unstable();
    days.dedup();
    (vec![vehicle.to_string(); days.len()], days)
}
