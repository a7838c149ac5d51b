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

use chrono::{DateTime, Utc};
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

/// Recomputations for late fixes: at most one at a time (bounded work, so a device
/// replaying an old span again and again cannot starve the others), each over the
/// group of vehicles the late fix's drivers moved between, the others queued; a
/// vehicle's new fixes are held from the rules while it is queued or being
/// recomputed (in any group), and applied after it.
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
    late_before: DateTime<Utc>,
    fixes: Vec<Fix>,
}

/// The recomputation under way: a group of vehicles (the late fix's and those its
/// drivers moved between, see [`Engine::begin_group_recompute`]).
struct Active {
    /// One span per group vehicle, the late fix's first.
    spans: Vec<Span>,
    /// The alerts open at the vehicles' starts, stated again with the first output.
    restated: Vec<Alert>,
}

/// What a recomputation does to one vehicle of its group.
struct Span {
    vehicle: VehicleId,
    /// Alerts starting at or after this belong to the recomputed span.
    after: DateTime<Utc>,
    /// Alerts (ids) of the vehicle the recomputation produced.
    ids: HashSet<AlertId>,
    /// Starts of the trips and data gaps it produced.
    trips: Vec<DateTime<Utc>>,
    gaps: Vec<DateTime<Utc>>,
    /// Starts of the trip runs and keys of the stop events it produced.
    runs: Vec<DateTime<Utc>>,
    stop_events: Vec<(String, DateTime<Utc>, i32)>,
    /// Event times (ms) of the stored fixes replayed, sorted at the end.
    replayed_ms: Vec<i64>,
    held: Held,
}

impl Active {
    /// The span of `vehicle`, if in the group.
    fn span(&mut self, vehicle: &VehicleId) -> Option<&mut Span> {
        self.spans.iter_mut().find(|s| s.vehicle == *vehicle)
    }

    /// Notes what the recomputation produced: the reconciliation keeps it. (A driver's
    /// alert about a vehicle outside the group is not reconciled: that vehicle's
    /// span was not recomputed.)
    fn produced(&mut self, out: &Output) {
        for a in &out.alerts {
            let Some(s) = self.span(&a.vehicle) else {
                continue;
            };
            if a.kind == crate::rules::AlertKind::DataGap {
                s.gaps.push(a.start);
            } else {
                s.ids.insert(a.id.clone());
            }
        }
        for t in &out.trips {
            if let Some(s) = self.span(&t.vehicle) {
                s.trips.push(t.start);
            }
        }
        for t in &out.trip_runs {
            if let Some(s) = self.span(&t.vehicle) {
                s.runs.push(t.start);
            }
        }
        for e in &out.stop_events {
            if let Some(s) = self.span(&e.vehicle) {
                s.stop_events.push(crate::store::writer::stop_event_key(e));
            }
        }
    }
}

/// What the loader of a recomputation reads: each group vehicle's stored fixes from
/// its start, once the barrier fixes are stored.
struct LoadPlan {
    starts: Vec<(VehicleId, DateTime<Utc>)>,
    /// Fixes sent to the writer before the recomputation began (the late fix, each
    /// vehicle's newest): once they are stored, so is everything before them.
    barriers: Vec<(VehicleId, DateTime<Utc>)>,
}

/// What the loader of a recomputation sends back.
enum Loaded {
    /// The next stored fixes of the group, in time order (ties by vehicle).
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
    /// older than `late_before` are flagged late.
    fn hold_late(&mut self, fix: &Fix, late_before: Option<DateTime<Utc>>) {
        let vid = fix.vehicle();
        let late_before = late_before.unwrap_or(DateTime::<Utc>::MIN_UTC);
        match self.held.get_mut(vid) {
            Some(h) => {
                h.since = h.since.min(fix.ts());
                h.late_before = h.late_before.max(late_before);
                h.fixes.push(fix.clone());
            }
            None => {
                self.held.insert(
                    vid.clone(),
                    Held {
                        since: fix.ts(),
                        barrier: fix.ts(),
                        late_before,
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
                        let window = self.late_window();
                        if let Some(h) = self.recompute.held.get_mut(vid) {
                            if a.fix.ts() < h.late_before {
                                a.flags.0 |= Flags::LATE;
                            }
                            h.late_before = h.late_before.max(a.fix.ts() - window);
                            h.since = h.since.min(a.fix.ts());
                            h.fixes.push(a.fix.clone());
                        } else {
                            let o = self.engine.push(&a.fix);
                            if !o.late.is_empty() {
                                // Applied by a recomputation of the vehicle.
                                let late_before = self.late_before(vid);
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
    /// How far behind a newer fix of its vehicle a fix is `late` (data quality): the
    /// configured reorder window, whatever window the vehicle's order let the rules
    /// use (it may be none).
    fn late_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.engine.config().reorder_window_s))
    }

    /// Fixes of `vehicle` older than this are `late`: [`Stage::late_window`] behind
    /// its newest fix.
    fn late_before(&self, vehicle: &VehicleId) -> Option<DateTime<Utc>> {
        self.engine.newest(vehicle).map(|n| n - self.late_window())
    }

    /// Starts the next queued recomputation when none is under way: sets back its
    /// group (the vehicle and those its drivers moved between since) and returns what
    /// the loader must read.
    fn start_recompute(&mut self) -> Option<LoadPlan> {
        if self.recompute.active.is_some() {
            return None;
        }
        let vehicle = self.recompute.queue.pop_front()?;
        let held = self.recompute.held.remove(&vehicle)?;
        // Vehicles waiting with late fixes of their own: one drawn into the group is
        // recomputed from before them too, and leaves the queue.
        let pending: Vec<(VehicleId, DateTime<Utc>)> = self
            .recompute
            .held
            .iter()
            .map(|(v, h)| (v.clone(), h.since))
            .collect();
        let group = self
            .engine
            .begin_group_recompute(&[(vehicle.clone(), held.since)], &pending);
        let mut held = Some(held);
        let mut spans = Vec::with_capacity(group.len());
        let mut restated = Vec::new();
        let mut plan = LoadPlan {
            starts: Vec::with_capacity(group.len()),
            barriers: Vec::new(),
        };
        for r in group {
            let own = if r.vehicle == vehicle {
                held.take()
            } else {
                let h = self.recompute.held.remove(&r.vehicle);
                if h.is_some() {
                    self.recompute.queue.retain(|q| *q != r.vehicle);
                }
                h
            };
            let h = match own {
                Some(h) => {
                    plan.barriers.push((r.vehicle.clone(), h.barrier));
                    h
                }
                None => {
                    // Its fixes the rules applied live went to the writer before now.
                    plan.barriers
                        .extend(r.newest.map(|t| (r.vehicle.clone(), t)));
                    Held {
                        since: r.after,
                        barrier: r.newest.unwrap_or(r.after),
                        // Its newest from before the reset (the engine's is set back).
                        late_before: r
                            .newest
                            .map_or(DateTime::<Utc>::MIN_UTC, |t| t - self.late_window()),
                        fixes: Vec::new(),
                    }
                }
            };
            tracing::debug!(vehicle = %r.vehicle, after = %r.after, "recomputing for a late fix");
            plan.starts.push((r.vehicle.clone(), r.after));
            // Fixes arriving meanwhile are held again under the vehicle.
            self.recompute.held.insert(
                r.vehicle.clone(),
                Held {
                    since: DateTime::<Utc>::MAX_UTC,
                    barrier: h.barrier,
                    late_before: h.late_before,
                    fixes: Vec::new(),
                },
            );
            spans.push(Span {
                vehicle: r.vehicle,
                after: r.after,
                ids: r.restated.iter().map(|a| a.id.clone()).collect(),
                trips: Vec::new(),
                gaps: Vec::new(),
                runs: Vec::new(),
                stop_events: Vec::new(),
                replayed_ms: Vec::new(),
                held: h,
            });
            restated.extend(r.restated);
        }
        telemetry::recompute_queued(self.recompute.pending());
        self.recompute.active = Some(Active { spans, restated });
        Some(plan)
    }

    /// Applies what the loader of the active recomputation sent.
    fn on_loaded(&mut self, loaded: Loaded) -> Derived {
        let Some(active) = self.recompute.active.as_mut() else {
            return Derived::default();
        };
        match loaded {
            Loaded::Page(fixes) => {
                telemetry::recompute_replayed(fixes.len());
                for f in &fixes {
                    if let Some(s) = active.span(f.vehicle()) {
                        s.replayed_ms.push(f.ts().timestamp_millis());
                    }
                }
                let out = self.engine.replay(&fixes);
                active.produced(&out);
                let mut d = derived(out);
                d.restated = std::mem::take(&mut active.restated);
                d
            }
            Loaded::Done => {
                let mut active = self.recompute.active.take().expect("active");
                // The fixes held meanwhile (and the late ones): those not replayed
                // from the store already, in time order.
                let mut fixes = Vec::new();
                for span in &mut active.spans {
                    let mut own = std::mem::take(&mut span.held.fixes);
                    if let Some(l) = self.recompute.held.remove(&span.vehicle) {
                        own.extend(l.fixes);
                    }
                    span.replayed_ms.sort_unstable();
                    own.retain(|f| {
                        span.replayed_ms
                            .binary_search(&f.ts().timestamp_millis())
                            .is_err()
                    });
                    fixes.extend(own);
                }
                fixes.sort_by(|a, b| (a.ts(), a.vehicle()).cmp(&(b.ts(), b.vehicle())));
                fixes.dedup_by(|a, b| a.ts() == b.ts() && a.vehicle() == b.vehicle());
                let mut out = Output::default();
                let mut late: Vec<(VehicleId, DateTime<Utc>)> = Vec::new();
                for f in &fixes {
                    let o = self.engine.push(f);
                    for l in &o.late {
                        match late.iter_mut().find(|(v, _)| v == l.vehicle()) {
                            Some((_, t)) => *t = (*t).min(l.ts()),
                            None => late.push((l.vehicle().clone(), l.ts())),
                        }
                    }
                    out.append(o);
                }
                for span in &active.spans {
                    self.engine.end_recompute(&span.vehicle);
                }
                active.produced(&out);
                let mut d = derived(out);
                d.restated = std::mem::take(&mut active.restated);
                for mut span in active.spans {
                    let mut keep: Vec<AlertId> = span.ids.into_iter().collect();
                    keep.sort();
                    span.trips.sort_unstable();
                    span.gaps.sort_unstable();
                    d.recomputed.push(Recomputed {
                        vehicle: span.vehicle,
                        after: span.after,
                        keep,
                        trips: span.trips,
                        gaps: span.gaps,
                        runs: span.runs,
                        stop_events: span.stop_events,
                    });
                }
                for (vehicle, t) in late {
                    // Older than what was just recomputed and not stored in time
                    // for it: once more.
                    self.recompute.held.insert(
                        vehicle.clone(),
                        Held {
                            since: t,
                            barrier: t,
                            late_before: self.late_before(&vehicle).unwrap_or(t),
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
                let first = active.spans.first().map(|s| s.vehicle.clone());
                tracing::warn!(vehicle = ?first, vehicles = active.spans.len(), error = %e, "recomputation failed; queued again");
                // Every group vehicle was set back: each is recomputed from its start.
                for span in active.spans {
                    let mut h = span.held;
                    if let Some(l) = self.recompute.held.remove(&span.vehicle) {
                        h.fixes.extend(l.fixes);
                        h.since = h.since.min(l.since);
                    }
                    h.since = h.since.min(span.after);
                    self.recompute.held.insert(span.vehicle.clone(), h);
                    self.recompute.queue.push_back(span.vehicle.clone());
                    self.engine.end_recompute(&span.vehicle);
                }
                Derived::default()
            }
        }
    }
}

/// Reads the stored fixes of the group of `plan`, each vehicle's from its start,
/// merged in event-time order (ties by vehicle id, byte order as the rules sort),
/// once the barrier fixes are stored, page by page into `tx`.
async fn load_fixes(client: Arc<Client>, plan: LoadPlan, tx: mpsc::Sender<Loaded>) {
    let r = async {
        // The late fix (and each vehicle's newest) went to the writer after
        // everything the rules had applied.
        let (bv, bt): (Vec<&str>, Vec<DateTime<Utc>>) =
            plan.barriers.iter().map(|(v, t)| (v.as_str(), *t)).unzip();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .query_one(
                "SELECT count(*) FROM unnest($1::text[], $2::timestamptz[]) AS b(v, ts)
                 WHERE EXISTS (SELECT 1 FROM fixes f WHERE f.vehicle_id = b.v AND f.ts = b.ts)",
                &[&bv, &bt],
            )
            .await?
            .get::<_, i64>(0)
            < bv.len() as i64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (gv, ga): (Vec<&str>, Vec<DateTime<Utc>>) =
            plan.starts.iter().map(|(v, t)| (v.as_str(), *t)).unzip();
        let limits = stored_fix_limits();
        // Keyset: after (ts, vehicle) of the last row read.
        let mut from = ga.iter().min().copied().unwrap_or(DateTime::<Utc>::MIN_UTC)
            - chrono::Duration::microseconds(1);
        let mut from_v = String::new();
        loop {
            let rows = client
                .query(
                    r#"SELECT f.vehicle_id, f.ts, f.lat_e7 / 1e7::float8, f.lon_e7 / 1e7::float8, f.speed_kmh,
                              f.heading_deg, f.driver_id, f.ignition, f.satellites, f.hdop, f.odometer_m, f.received_at
                       FROM unnest($1::text[], $2::timestamptz[]) AS g(v, after)
                       JOIN fixes f ON f.vehicle_id = g.v AND f.ts >= GREATEST(g.after, $4)
                       WHERE f.flags & $3 = 0
                         AND (f.ts > $4 OR f.vehicle_id COLLATE "C" > $5::text COLLATE "C")
                       ORDER BY f.ts, f.vehicle_id COLLATE "C" LIMIT $6"#,
                    &[&gv, &ga, &SKIPPED_BY_RULES, &from, &from_v, &RECOMPUTE_PAGE],
                )
                .await?;
            let n = rows.len() as i64;
            if let Some(last) = rows.last() {
                from = last.get::<_, DateTime<Utc>>(1);
                from_v = last.get::<_, String>(0);
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
            let late_before = stage.late_before(fix.vehicle());
            stage.recompute.hold_late(&fix, late_before);
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
            if let Some(plan) = stage.start_recompute() {
                tokio::spawn(load_fixes(db.clone(), plan, ltx.clone()));
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
