//! The processing stage between the MQTT event loop and the writer: decode and
//! validate each message, run the rules on its fixes (event time), and hand records,
//! alerts and periodic rule checkpoints to the writer in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{pin_mut, TryStreamExt};
use rumqttc::Publish;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use crate::domain::{Fix, FixCandidate, FixLimits, Vehicle, VehicleId};
use crate::geo::GeoIndex;
use crate::ingest::mqtt::{Delivery, TooLarge};
use crate::ingest::validate::{Flags, Record, Rejected, Validator};
use crate::rules::{Engine, Output, VehicleState};
use crate::store::writer::{Derived, Item};
use crate::store::StoreError;
use crate::telemetry;

/// Flags of stored fixes the rules did not apply: jumps (bad positions, kept out) and
/// late fixes (older than what the rules had already applied). Anything that feeds
/// stored fixes to the rules again (restart replay, `fleetwatch replay --rules`)
/// skips them, or it would compute what the live service never did.
pub const SKIPPED_BY_RULES: i16 = Flags::JUMP | Flags::LATE;

/// Validation and rules, owned by one task.
pub struct Stage {
    /// Decoding and validation.
    pub validator: Validator,
    /// The compliance rules.
    pub engine: Engine,
    /// Seconds between rule checkpoints.
    pub checkpoint_every: Duration,
    /// Run the rules (off: ingest only).
    pub rules: bool,
}

impl Stage {
    /// Processes one message into an item for the writer.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &bytes::Bytes,
        received_at: DateTime<Utc>,
    ) -> (Vec<Record>, Derived) {
        let mut records = self.validator.process(topic, payload, received_at);
        let mut out = Output::default();
        for r in &mut records {
            match r {
                Record::Accepted(a) if self.rules => {
                    self.engine.heard(a.fix.vehicle(), a.received_at);
                    // A jump is a bad position: keep it out of the rules.
                    if !a.flags.has(Flags::JUMP) {
                        let o = self.engine.push(&a.fix);
                        if !o.late.is_empty() {
                            a.flags.0 |= Flags::LATE;
                        }
                        out.append(o);
                    }
                    telemetry::fix_accepted(a.flags.names());
                }
                Record::Accepted(a) => telemetry::fix_accepted(a.flags.names()),
                Record::Rejected(r) => telemetry::fix_rejected(r.reason),
            }
        }
        (records, derived(out))
    }

    /// A message over the size limit: one `too_large` dead letter with the prefix kept.
    pub fn too_large(
        &mut self,
        topic: &str,
        prefix: &bytes::Bytes,
        t: TooLarge,
        received_at: DateTime<Utc>,
    ) -> Record {
        telemetry::fix_rejected("too_large");
        Record::Rejected(Rejected {
            topic: topic.to_string(),
            payload: prefix.clone(),
            reason: "too_large",
            detail: format!(
                "message of {} bytes is over mqtt.max_message_bytes = {}; its first {} bytes are kept",
                t.size_bytes,
                t.limit_bytes,
                prefix.len()
            ),
            received_at,
        })
    }

    /// Processing-time duties: release quiet vehicles' buffers, no-signal check.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Derived {
        let mut out = self.engine.drain_due(now);
        out.alerts.extend(self.engine.tick(now));
        derived(out)
    }
}

fn derived(out: Output) -> Derived {
    for a in &out.alerts {
        telemetry::alert_emitted(a.kind.as_str());
    }
    Derived {
        alerts: out.alerts,
        trips: out.trips,
        checkpoint: Vec::new(),
    }
}

/// Restores the rules' state from the last checkpoint and replays the fixes stored
/// after it, so a restart (even after a crash) resumes exactly where committed data
/// ends. Alerts the replay produces are sent to the writer (they upsert by id).
pub async fn restore(
    client: &Client,
    stage: &mut Stage,
    horizon_h: u32,
    tx: &mpsc::Sender<Item<(usize, Publish)>>,
) -> Result<(usize, u64), StoreError> {
    let rows = client
        .query("SELECT vehicle_id, state FROM rule_state", &[])
        .await?;
    let mut states = Vec::with_capacity(rows.len());
    for row in &rows {
        let (id, state): (String, serde_json::Value) = (row.get(0), row.get(1));
        match (
            VehicleId::parse(&id),
            serde_json::from_value::<VehicleState>(state),
        ) {
            (Ok(v), Ok(s)) => states.push((v, s)),
            (_, Err(e)) => {
                tracing::warn!(vehicle = %id, error = %e, "unreadable rule checkpoint; vehicle starts fresh")
            }
            (Err(e), _) => {
                tracing::warn!(vehicle = %id, error = %e, "bad vehicle id in rule checkpoint")
            }
        }
    }
    let restored = states.len();
    stage.engine.restore(states);
    let window_s = f64::from(stage.engine.config().reorder_window_s) + 60.0;
    let horizon_s = f64::from(horizon_h) * 3600.0;
    let stream = client
        .query_raw(
            "SELECT f.vehicle_id, f.ts, f.lat, f.lon, f.speed_kmh, f.heading_deg, f.driver_id,
                    f.ignition, f.satellites, f.hdop, f.odometer_m, f.received_at
             FROM fixes f LEFT JOIN rule_state s USING (vehicle_id)
             WHERE f.ts > COALESCE(s.watermark - make_interval(secs => $1),
                                   now() - make_interval(secs => $2))
               AND f.flags & $3 = 0
             ORDER BY f.ts, f.vehicle_id",
            [
                &window_s as &(dyn tokio_postgres::types::ToSql + Sync),
                &horizon_s,
                &SKIPPED_BY_RULES,
            ],
        )
        .await?;
    pin_mut!(stream);
    let mut replayed = 0u64;
    let mut out = Output::default();
    let limits = stored_fix_limits();
    while let Some(row) = stream.try_next().await? {
        let Some(fix) = fix_from_row(&row, &limits) else {
            continue;
        };
        out.append(stage.engine.push(&fix));
        replayed += 1;
        if out.alerts.len() + out.trips.len() >= 1000 {
            send_derived(tx, derived(std::mem::take(&mut out))).await;
        }
    }
    send_derived(tx, derived(out)).await;
    stage.engine.heard_all(Utc::now());
    Ok((restored, replayed))
}

/// Limits for reading stored fixes back: they passed validation (under whatever
/// limits were configured then) when received; only their shape matters now.
pub(crate) fn stored_fix_limits() -> FixLimits {
    FixLimits {
        max_speed_kmh: f64::INFINITY,
        max_future_s: i64::MAX,
        max_age_s: i64::MAX,
    }
}

/// A stored fix from a row of `vehicle_id, ts, lat, lon, speed_kmh, heading_deg,
/// driver_id, ignition, satellites, hdop, odometer_m, received_at` (in that order).
pub(crate) fn fix_from_row(row: &tokio_postgres::Row, limits: &FixLimits) -> Option<Fix> {
    let vehicle = VehicleId::parse(row.get::<_, &str>(0)).ok()?;
    let received_at: DateTime<Utc> = row.get(11);
    let c = FixCandidate {
        vehicle: None,
        ts: Some(row.get(1)),
        lat: row.get(2),
        lon: row.get(3),
        speed_kmh: f64::from(row.get::<_, f32>(4)),
        heading_deg: row.get::<_, Option<f32>>(5).map(f64::from),
        driver: row.get::<_, Option<String>>(6),
        ignition: row.get(7),
        satellites: row.get::<_, Option<i16>>(8).map(i64::from),
        hdop: row.get::<_, Option<f32>>(9).map(f64::from),
        odometer_m: row.get(10),
    };
    Fix::validate(c, vehicle, limits, received_at).ok()
}

async fn send_derived(tx: &mpsc::Sender<Item<(usize, Publish)>>, d: Derived) {
    if d.is_empty() {
        return;
    }
    let _ = tx
        .send(Item {
            records: Vec::new(),
            derived: d,
            ack: None,
            received_at: Utc::now(),
        })
        .await;
}

/// Runs the stage until the event loop stops forwarding; then checkpoints once more.
pub async fn run(
    mut rx: mpsc::Receiver<Delivery>,
    tx: mpsc::Sender<Item<(usize, Publish)>>,
    mut stage: Stage,
    mut geo: watch::Receiver<Arc<GeoIndex>>,
    mut registry: watch::Receiver<Arc<Vec<Vehicle>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut geo_open = true;
    let mut registry_open = true;
    loop {
        let item = tokio::select! {
            d = rx.recv() => {
                let Some(d) = d else { break };
                telemetry::message_received();
                let (records, derived) = match d.too_large {
                    Some(t) => (vec![stage.too_large(d.topic(), d.payload(), t, d.received_at)], Derived::default()),
                    None => stage.message(d.topic(), d.payload(), d.received_at),
                };
                Item { records, derived, ack: Some((d.conn, crate::ingest::mqtt::ack_token(&d.publish))), received_at: d.received_at }
            }
            _ = tick.tick() => {
                let mut derived = stage.tick(Utc::now());
                if stage.rules && last_checkpoint.elapsed() >= stage.checkpoint_every {
                    derived.checkpoint = stage.engine.checkpoint_changed();
                    last_checkpoint = Instant::now();
                }
                if derived.is_empty() {
                    continue;
                }
                Item { records: Vec::new(), derived, ack: None, received_at: Utc::now() }
            }
            changed = geo.changed(), if geo_open => {
                match changed {
                    Ok(()) => {
                        let g = geo.borrow_and_update().clone();
                        tracing::info!(routes = g.route_count(), zones = g.zone_count(), "geography reloaded");
                        stage.engine.set_geo(g);
                    }
                    Err(_) => geo_open = false,
                }
                continue;
            }
            changed = registry.changed(), if registry_open => {
                match changed {
                    Ok(()) => {
                        let r = registry.borrow_and_update().clone();
                        tracing::info!(vehicles = r.len(), "vehicle registry changed");
                        stage.validator.set_registry(&r);
                        stage.engine.set_registry(r.to_vec());
                    }
                    Err(_) => registry_open = false,
                }
                continue;
            }
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
    if !stage.rules {
        return;
    }
    // Last checkpoint after the last message, so a clean restart replays nothing.
    let derived = Derived {
        checkpoint: stage.engine.checkpoint_changed(),
        ..Derived::default()
    };
    send_derived(&tx, derived).await;
}
