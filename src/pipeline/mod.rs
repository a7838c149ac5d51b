//! The pipeline: the processing stage between the sources and the writer. It decodes
//! and validates each delivery, runs the rules on its fixes (event time), and hands
//! records, alerts and periodic rule checkpoints to the writer in order, each with
//! the ack handle of the delivery it came from.

pub mod decode;
pub mod delivery;
/// Topic patterns (shared vocabulary, in [`crate::domain::topic`]).
pub use crate::domain::topic;
pub mod validate;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use futures_util::{pin_mut, TryStreamExt};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use crate::domain::{Fix, FixCandidate, FixLimits, Vehicle, VehicleId};
use crate::geo::GeoIndex;
use crate::pipeline::validate::{Flags, Record, Rejected, Validator};
use crate::rules::Alert;
use crate::rules::{AlertId, Engine, Output, VehicleState};
use crate::store::writer::{Checkpoint, Derived, Item, Recomputed};
use crate::store::StoreError;
use crate::telemetry;
use delivery::{Ack, Body, Delivery, DeviceReport, TooLarge, Unusable};

/// Flags of stored fixes the rules do not apply: jumps (bad positions, kept out).
/// Late fixes (older than what the rules had already applied) are applied by a
/// recomputation of their vehicle, so they are read back like any other. (Versions
/// before 0007 left late fixes out; a recomputation or `fleetwatch replay --rules`
/// over such a span now applies them, which is what the event-time order gives.)
pub const SKIPPED_BY_RULES: i16 = Flags::JUMP;

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
    /// Vehicles recomputed for late fixes, and those waiting.
    pub recompute: Recompute,
}

/// Recomputations for late fixes: at most one vehicle at a time (bounded work, so a
/// device replaying an old span again and again cannot starve the others), the others
/// queued; a vehicle's new fixes are held from the rules while it is queued or being
/// recomputed, and applied after it.
#[derive(Default)]
pub struct Recompute {
    held: HashMap<VehicleId, Held>,
    queue: VecDeque<VehicleId>,
    active: Option<Active>,
}

/// Fixes of a vehicle held back while it waits for (or undergoes) a recomputation.
struct Held {
    /// Oldest late fix: the recomputation starts from a snapshot older than it.
    since: DateTime<Utc>,
    /// The late fix that triggered it: once it is stored, so is everything the rules
    /// had applied before it (the writer commits in order).
    barrier: DateTime<Utc>,
    /// Fixes older than this are `late` (data quality): a reorder window behind the
    /// newest fix seen, whatever the recomputation has reached.
    applied: DateTime<Utc>,
    fixes: Vec<Fix>,
}

/// The recomputation under way.
struct Active {
    vehicle: VehicleId,
    /// Alerts starting at or after this belong to the recomputed span.
    after: DateTime<Utc>,
    /// Alerts (ids) the recomputation produced.
    ids: HashSet<AlertId>,
    /// Starts of the trips and data gaps it produced.
    trips: Vec<DateTime<Utc>>,
    gaps: Vec<DateTime<Utc>>,
    /// Starts of the trip runs and keys of the stop events it produced.
    runs: Vec<DateTime<Utc>>,
    stop_events: Vec<(String, DateTime<Utc>, i32)>,
    /// The alerts open at the snapshot, stated again with the first output.
    restated: Vec<Alert>,
    /// Event times (ms) of the stored fixes replayed, sorted.
    replayed_ms: Vec<i64>,
    held: Held,
}

impl Active {
    /// Notes what the recomputation produced: the reconciliation keeps it.
    fn produced(&mut self, out: &Output) {
        for a in &out.alerts {
            if a.kind == crate::rules::AlertKind::DataGap {
                self.gaps.push(a.start);
            } else {
                self.ids.insert(a.id.clone());
            }
        }
        self.trips.extend(out.trips.iter().map(|t| t.start));
        self.runs.extend(out.trip_runs.iter().map(|t| t.start));
        self.stop_events.extend(
            out.stop_events
                .iter()
                .map(crate::store::writer::stop_event_key),
        );
    }
}

/// What the loader of a recomputation sends back.
enum Loaded {
    /// The next stored fixes of the vehicle, in time order.
    Page(Vec<Fix>),
    /// All read.
    Done,
    /// The database failed: the vehicle is queued again.
    Failed(StoreError),
}

/// Stored fixes read per page of a recomputation: the rules replay one page per turn
/// of the stage's loop, between messages.
const RECOMPUTE_PAGE: i64 = 5_000;

impl Recompute {
    /// Queues a recomputation for the late `fix` (or widens the one queued); fixes
    /// older than `applied` are flagged late.
    fn hold_late(&mut self, fix: &Fix, applied: Option<DateTime<Utc>>) {
        let vid = fix.vehicle();
        let applied = applied.unwrap_or(DateTime::<Utc>::MIN_UTC);
        match self.held.get_mut(vid) {
            Some(h) => {
                h.since = h.since.min(fix.ts());
                h.applied = h.applied.max(applied);
                h.fixes.push(fix.clone());
            }
            None => {
                self.held.insert(
                    vid.clone(),
                    Held {
                        since: fix.ts(),
                        barrier: fix.ts(),
                        applied,
                        fixes: vec![fix.clone()],
                    },
                );
                self.queue.push_back(vid.clone());
            }
        }
        telemetry::recompute_queued(self.pending());
    }

    /// Vehicles queued or being recomputed.
    pub fn pending(&self) -> usize {
        self.held.len()
    }
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
        let derived = self.apply(&mut records);
        (records, derived)
    }

    /// Processes the positions of one device frame into an item for the writer.
    pub fn device(
        &mut self,
        report: &DeviceReport,
        received_at: DateTime<Utc>,
    ) -> (Vec<Record>, Derived) {
        let mut records = self.validator.process_device(report, received_at);
        let mut derived = self.apply(&mut records);
        // Alarms the device raised with an accepted position become alerts (one
        // record per position, in order).
        for (r, p) in records.iter().zip(&report.positions) {
            let Record::Accepted(a) = r else { continue };
            for alarm in &p.alarms {
                let code = match alarm {
                    delivery::Alarm::Other(c) => Some(*c),
                    _ => None,
                };
                telemetry::alert_emitted("device_alarm");
                derived.alerts.push(crate::rules::device_alarm(
                    &a.fix,
                    &a.cooperative,
                    alarm.name(),
                    code,
                    report.protocol,
                ));
            }
        }
        (records, derived)
    }

    /// A frame a source could not use: one dead letter.
    pub fn unusable(&mut self, u: Unusable, received_at: DateTime<Utc>) -> Record {
        telemetry::fix_rejected(u.reason);
        Record::Rejected(Rejected {
            topic: u.source,
            payload: u.bytes,
            reason: u.reason,
            detail: u.detail,
            received_at,
        })
    }

    /// Runs the rules on the accepted fixes of `records` (flagging late ones).
    fn apply(&mut self, records: &mut [Record]) -> Derived {
        let mut out = Output::default();
        for r in records.iter_mut() {
            match r {
                Record::Accepted(a) if self.rules => {
                    self.engine.heard(a.fix.vehicle(), a.received_at);
                    // A jump is a bad position: keep it out of the rules.
                    if !a.flags.has(Flags::JUMP) {
                        let vid = a.fix.vehicle();
                        // Late (data quality) is older than a newer fix of the vehicle
                        // by more than the configured window, whatever window the
                        // vehicle's order let the rules use (it may be none).
                        let window = chrono::Duration::seconds(i64::from(
                            self.engine.config().reorder_window_s,
                        ));
                        if let Some(h) = self.recompute.held.get_mut(vid) {
                            if a.fix.ts() < h.applied {
                                a.flags.0 |= Flags::LATE;
                            }
                            h.applied = h.applied.max(a.fix.ts() - window);
                            h.since = h.since.min(a.fix.ts());
                            h.fixes.push(a.fix.clone());
                        } else {
                            let o = self.engine.push(&a.fix);
                            if !o.late.is_empty() {
                                // Applied by a recomputation of the vehicle.
                                let late_before = self.engine.newest(vid).map(|n| n - window);
                                if late_before.is_some_and(|l| a.fix.ts() < l) {
                                    a.flags.0 |= Flags::LATE;
                                }
                                self.recompute.hold_late(&a.fix, late_before);
                            }
                            out.append(o);
                        }
                    }
                    telemetry::fix_accepted(a.flags.names());
                }
                Record::Accepted(a) => telemetry::fix_accepted(a.flags.names()),
                Record::Rejected(r) => telemetry::fix_rejected(r.reason),
            }
        }
        derived(out)
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
        // Refreshed here too, so both gauges exist (at 0) before the first event.
        telemetry::vehicles_silent(self.engine.silent_vehicles());
        telemetry::recompute_queued(self.recompute.pending());
        derived(out)
    }
}

impl Stage {
    /// Starts the next queued recomputation when none is under way: picks the
    /// snapshot and returns what the loader must read (vehicle, fixes after this
    /// time, barrier fix time).
    fn start_recompute(&mut self) -> Option<(VehicleId, DateTime<Utc>, DateTime<Utc>)> {
        if self.recompute.active.is_some() {
            return None;
        }
        let vehicle = self.recompute.queue.pop_front()?;
        let held = self.recompute.held.remove(&vehicle)?;
        let snap = self.engine.snapshot_before(&vehicle, held.since);
        // Without a snapshot older than the late fix: from nothing at the start of
        // its local ISO week (weekly driving), as a restart does.
        let after = match &snap {
            Some(s) => s.at(),
            None => week_start(held.since, self.engine.config().utc_offset.seconds()),
        };
        let restated = self.engine.begin_recompute(&vehicle, snap.as_ref());
        let barrier = held.barrier;
        tracing::debug!(vehicle = %vehicle, %after, "recomputing for a late fix");
        self.recompute.active = Some(Active {
            vehicle: vehicle.clone(),
            after,
            ids: restated.iter().map(|a| a.id.clone()).collect(),
            trips: Vec::new(),
            gaps: Vec::new(),
            runs: Vec::new(),
            stop_events: Vec::new(),
            restated,
            replayed_ms: Vec::new(),
            held: Held {
                since: held.since,
                barrier,
                applied: held.applied,
                fixes: held.fixes,
            },
        });
        // Fixes arriving meanwhile are held again under the vehicle.
        self.recompute.held.insert(
            vehicle.clone(),
            Held {
                since: DateTime::<Utc>::MAX_UTC,
                barrier,
                applied: held.applied,
                fixes: Vec::new(),
            },
        );
        Some((vehicle, after, barrier))
    }

    /// Applies what the loader of the active recomputation sent.
    fn on_loaded(&mut self, loaded: Loaded) -> Derived {
        let Some(active) = self.recompute.active.as_mut() else {
            return Derived::default();
        };
        match loaded {
            Loaded::Page(fixes) => {
                telemetry::recompute_replayed(fixes.len());
                active
                    .replayed_ms
                    .extend(fixes.iter().map(|f| f.ts().timestamp_millis()));
                let out = self.engine.replay(&fixes);
                active.produced(&out);
                let mut d = derived(out);
                d.restated = std::mem::take(&mut active.restated);
                d
            }
            Loaded::Done => {
                let mut active = self.recompute.active.take().expect("active");
                let vehicle = active.vehicle.clone();
                // The fixes held meanwhile (and the late ones): those not replayed
                // from the store already, in time order.
                let mut fixes = std::mem::take(&mut active.held.fixes);
                let later = self.recompute.held.remove(&vehicle);
                if let Some(l) = later {
                    fixes.extend(l.fixes);
                }
                active.replayed_ms.sort_unstable();
                fixes.retain(|f| {
                    active
                        .replayed_ms
                        .binary_search(&f.ts().timestamp_millis())
                        .is_err()
                });
                fixes.sort_by_key(|f| f.ts());
                fixes.dedup_by_key(|f| f.ts());
                let mut out = Output::default();
                let mut late: Option<DateTime<Utc>> = None;
                for f in &fixes {
                    let o = self.engine.push(f);
                    if let Some(l) = o.late.first() {
                        late = Some(late.map_or(l.ts(), |t: DateTime<Utc>| t.min(l.ts())));
                    }
                    out.append(o);
                }
                self.engine.end_recompute(&vehicle);
                active.produced(&out);
                let mut d = derived(out);
                d.restated = std::mem::take(&mut active.restated);
                let mut keep: Vec<AlertId> = active.ids.into_iter().collect();
                keep.sort();
                active.trips.sort_unstable();
                active.gaps.sort_unstable();
                d.recomputed.push(Recomputed {
                    vehicle: vehicle.clone(),
                    after: active.after,
                    keep,
                    trips: active.trips,
                    gaps: active.gaps,
                    runs: active.runs,
                    stop_events: active.stop_events,
                });
                if let Some(t) = late {
                    // Older than what was just recomputed and not stored in time
                    // for it: once more.
                    self.recompute.held.insert(
                        vehicle.clone(),
                        Held {
                            since: t,
                            barrier: t,
                            applied: self.engine.last_applied(&vehicle).unwrap_or(t),
                            fixes: Vec::new(),
                        },
                    );
                    self.recompute.queue.push_back(vehicle);
                }
                telemetry::recompute_queued(self.recompute.pending());
                d
            }
            Loaded::Failed(e) => {
                let active = self.recompute.active.take().expect("active");
                tracing::warn!(vehicle = %active.vehicle, error = %e, "recomputation failed; queued again");
                let mut h = active.held;
                if let Some(l) = self.recompute.held.remove(&active.vehicle) {
                    h.fixes.extend(l.fixes);
                    h.since = h.since.min(l.since);
                }
                self.recompute.held.insert(active.vehicle.clone(), h);
                self.recompute.queue.push_back(active.vehicle.clone());
                self.engine.end_recompute(&active.vehicle);
                Derived::default()
            }
        }
    }
}

/// Start (UTC) of the local ISO week (`offset_s` east of UTC) of `t`.
fn week_start(t: DateTime<Utc>, offset_s: i32) -> DateTime<Utc> {
    let local = t.naive_utc() + chrono::Duration::seconds(i64::from(offset_s));
    let day = local.date();
    let monday = day - chrono::Duration::days(i64::from(day.weekday().num_days_from_monday()));
    monday.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
        - chrono::Duration::seconds(i64::from(offset_s))
}

/// Reads the stored fixes of `vehicle` from `after` on for a recomputation, once the
/// fix at `barrier` is stored, page by page into `tx`.
async fn load_fixes(
    client: Arc<Client>,
    vehicle: VehicleId,
    after: DateTime<Utc>,
    barrier: DateTime<Utc>,
    tx: mpsc::Sender<Loaded>,
) {
    let r = async {
        // The late fix went to the writer after everything the rules had applied.
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .query_opt(
                "SELECT 1 FROM fixes WHERE vehicle_id = $1 AND ts = $2",
                &[&vehicle.as_str(), &barrier],
            )
            .await?
            .is_none()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let limits = stored_fix_limits();
        let mut from = after;
        loop {
            let rows = client
                .query(
                    "SELECT vehicle_id, ts, lat_e7 / 1e7::float8, lon_e7 / 1e7::float8, speed_kmh, heading_deg, driver_id,
                            ignition, satellites, hdop, odometer_m, received_at
                     FROM fixes WHERE vehicle_id = $1 AND ts >= $2 AND flags & $3 = 0
                     ORDER BY ts LIMIT $4",
                    &[&vehicle.as_str(), &from, &SKIPPED_BY_RULES, &RECOMPUTE_PAGE],
                )
                .await?;
            let n = rows.len() as i64;
            if let Some(last) = rows.last() {
                // Timestamps are microseconds: the next page starts just after.
                from = last.get::<_, DateTime<Utc>>(1) + chrono::Duration::microseconds(1);
            }
            let page: Vec<Fix> = rows
                .iter()
                .filter_map(|r| fix_from_row(r, &limits))
                .collect();
            if tx.send(Loaded::Page(page)).await.is_err() {
                return Ok(());
            }
            if n < RECOMPUTE_PAGE {
                break;
            }
        }
        Ok::<(), StoreError>(())
    }
    .await;
    let _ = tx
        .send(match r {
            Ok(()) => Loaded::Done,
            Err(e) => Loaded::Failed(e),
        })
        .await;
}

fn derived(out: Output) -> Derived {
    for a in &out.alerts {
        telemetry::alert_emitted(a.kind.as_str());
    }
    Derived {
        alerts: out.alerts,
        trips: out.trips,
        trip_runs: out.trip_runs,
        stop_events: out.stop_events,
        live: out.live,
        ..Derived::default()
    }
}

/// Restores the rules' state from the last checkpoint and replays the fixes stored
/// after it, so a restart (even after a crash) resumes exactly where committed data
/// ends. A vehicle without a checkpoint (first seen less than a checkpoint interval
/// before a crash, or never run through the rules) is rebuilt from its stored fixes
/// as far back as any rule needs: from the start of the local ISO week (weekly
/// driving) of its oldest fix no older than `max_age_s` (the oldest a fix may be
/// accepted, so the oldest the rules may have to account). Alerts the replay
/// produces are sent to the writer (they upsert by id).
pub async fn restore(
    client: &Client,
    stage: &mut Stage,
    max_age_s: i64,
    tx: &mpsc::Sender<Item<Ack>>,
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
                tracing::warn!(vehicle = %id, error = %e, "unreadable rule checkpoint; vehicle rebuilt from its fixes")
            }
            (Err(e), _) => {
                tracing::warn!(vehicle = %id, error = %e, "bad vehicle id in rule checkpoint")
            }
        }
    }
    let restored = states.len();
    // Vehicles whose checkpoint says how far it got; the others are rebuilt.
    let resumed: Vec<String> = states
        .iter()
        .filter(|(_, s)| s.newest_ts().is_some())
        .map(|(v, _)| v.as_str().to_string())
        .collect();
    stage.engine.restore(states);
    let window_s = f64::from(stage.engine.config().reorder_window_s) + 60.0;
    let age_s = max_age_s.clamp(0, 10 * 366 * 86_400) as f64;
    let offset_s = f64::from(stage.engine.config().utc_offset.seconds());
    let stream = client
        .query_raw(
            REPLAY_SQL,
            [
                &window_s as &(dyn tokio_postgres::types::ToSql + Sync),
                &age_s,
                &offset_s,
                &SKIPPED_BY_RULES,
                &resumed,
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
        let o = stage.engine.push(&fix);
        if o.late.is_empty() {
            out.append(o);
        } else {
            // Older than its checkpoint: recomputed once the stage runs.
            let applied = stage.engine.last_applied(fix.vehicle());
            stage.recompute.hold_late(&fix, applied);
        }
        replayed += 1;
        if out.alerts.len() + out.trips.len() >= 1000 {
            send_derived(tx, derived(std::mem::take(&mut out))).await;
        }
    }
    send_derived(tx, derived(out)).await;
    stage.engine.heard_all(Utc::now());
    Ok((restored, replayed))
}

/// The stored fixes a restart feeds to the rules, in event-time order: after its
/// watermark (less the reorder window) for a vehicle with a readable checkpoint
/// (`$5`: their checkpoints have a watermark), else from the local week start (`$3`: UTC offset, s) of its oldest fix
/// of the last `$2` seconds. `$1`: reorder window plus a margin, s; `$4`: flags skipped.
const REPLAY_SQL: &str = "
    WITH fresh AS (
        SELECT v.vehicle_id,
               (date_trunc('week', (m.oldest AT TIME ZONE 'UTC') + make_interval(secs => $3))
                  - make_interval(secs => $3)) AT TIME ZONE 'UTC' AS from_ts
        FROM vehicles v
        CROSS JOIN LATERAL (
            SELECT min(f.ts) AS oldest FROM fixes f
            WHERE f.vehicle_id = v.vehicle_id AND f.ts > now() - make_interval(secs => $2)) m
        WHERE m.oldest IS NOT NULL
          AND NOT (v.vehicle_id = ANY ($5::text[]))
    ), starts AS (
        SELECT s.vehicle_id, s.watermark - make_interval(secs => $1) AS from_ts
        FROM rule_state s
        WHERE s.vehicle_id = ANY ($5::text[])
        UNION ALL
        SELECT vehicle_id, from_ts FROM fresh
    )
    SELECT f.vehicle_id, f.ts, f.lat_e7 / 1e7::float8, f.lon_e7 / 1e7::float8, f.speed_kmh, f.heading_deg, f.driver_id,
           f.ignition, f.satellites, f.hdop, f.odometer_m, f.received_at
    FROM starts st JOIN fixes f ON f.vehicle_id = st.vehicle_id AND f.ts >= st.from_ts
    WHERE f.flags & $4 = 0
    ORDER BY f.ts, f.vehicle_id";

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
        speed_kmh: Some(f64::from(row.get::<_, f32>(4))),
        heading_deg: row.get::<_, Option<f32>>(5).map(f64::from),
        driver: row.get::<_, Option<String>>(6),
        ignition: row.get(7),
        satellites: row.get::<_, Option<i16>>(8).map(i64::from),
        hdop: row.get::<_, Option<f32>>(9).map(f64::from),
        odometer_m: row.get(10),
        accuracy_m: None,
    };
    Fix::validate(c, vehicle, limits, received_at).ok()
}

/// The rules' states as the writer stores them (JSON text and watermark).
fn checkpoints(states: Vec<(VehicleId, VehicleState)>) -> Vec<Checkpoint> {
    states
        .into_iter()
        .filter_map(|(vehicle, s)| {
            let state = match serde_json::value::to_raw_value(&s) {
                Ok(j) => j,
                Err(e) => {
                    // Not stored: a restart rebuilds this vehicle from its fixes.
                    tracing::error!(vehicle = %vehicle, error = %e, "rule state not serialisable");
                    return None;
                }
            };
            Some(Checkpoint {
                vehicle,
                watermark: s.newest_ts(),
                state,
            })
        })
        .collect()
}

async fn send_derived(tx: &mpsc::Sender<Item<Ack>>, d: Derived) {
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
/// `db` reads stored fixes for recomputations (none: late fixes wait).
pub async fn run(
    mut rx: mpsc::Receiver<Delivery>,
    tx: mpsc::Sender<Item<Ack>>,
    mut stage: Stage,
    mut geo: watch::Receiver<Arc<GeoIndex>>,
    mut registry: watch::Receiver<Arc<Vec<Vehicle>>>,
    db: Option<Arc<Client>>,
) {
    let (ltx, mut lrx) = mpsc::channel::<Loaded>(2);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut geo_open = true;
    let mut registry_open = true;
    loop {
        if let Some(db) = &db {
            if let Some((vehicle, after, barrier)) = stage.start_recompute() {
                tokio::spawn(load_fixes(db.clone(), vehicle, after, barrier, ltx.clone()));
            }
        }
        let item = tokio::select! {
            Some(loaded) = lrx.recv() => {
                let derived = stage.on_loaded(loaded);
                if derived.is_empty() {
                    continue;
                }
                Item { records: Vec::new(), derived, ack: None, received_at: Utc::now() }
            }
            d = rx.recv() => {
                let Some(d) = d else { break };
                telemetry::message_received();
                let (records, derived) = match d.body {
                    Body::Message { topic, payload, too_large: Some(t) } => {
                        (vec![stage.too_large(&topic, &payload, t, d.received_at)], Derived::default())
                    }
                    Body::Message { topic, payload, too_large: None } => stage.message(&topic, &payload, d.received_at),
                    Body::Device(report) => stage.device(&report, d.received_at),
                    Body::Unusable(u) => (vec![stage.unusable(u, d.received_at)], Derived::default()),
                };
                Item { records, derived, ack: d.ack, received_at: d.received_at }
            }
            _ = tick.tick() => {
                let mut derived = stage.tick(Utc::now());
                if stage.rules && last_checkpoint.elapsed() >= stage.checkpoint_every {
                    derived.checkpoint = checkpoints(stage.engine.checkpoint_changed());
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
        checkpoint: checkpoints(stage.engine.checkpoint_changed()),
        ..Derived::default()
    };
    send_derived(&tx, derived).await;
}
