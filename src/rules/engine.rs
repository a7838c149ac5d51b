//! The engine: per-vehicle reorder buffers in front of the rules, the geo lookups of
//! each fix, and checkpoint/restore of all state.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::alert::{Alert, AlertKind, AlertStatus};
use super::config::{ckmh, Params, RulesConfig};
use super::driving::{self, DrivingState};
use super::snapshot::Packed;
use super::state::{Ctx, ReorderWindow, Sample, VehicleCore, VehicleState};
use super::{gaps, no_signal, off_route, overspeed, transit, trips, zones};
use crate::domain::live::{LiveState, LiveTrip};
use crate::domain::{CooperativeId, DriverId, FastMap, Fix, Vehicle, VehicleId};
use crate::geo::{GeoIndex, Zone, ZoneKey, ZoneKind};

/// What one call to the engine produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Output {
    /// Alerts opened or closed, in event order per vehicle.
    pub alerts: Vec<Alert>,
    /// Fixes older than one already released for their vehicle: reported, not applied.
    pub late: Vec<Fix>,
    /// Fixes with the same time as one already seen for their vehicle: ignored.
    pub duplicates: Vec<Fix>,
    /// Stops that ended.
    pub stops: Vec<Stop>,
    /// Trips that ended (at the start of a stop).
    pub trips: Vec<Trip>,
    /// Runs of scheduled (GTFS) trips that ended (completed or abandoned).
    pub trip_runs: Vec<TripRun>,
    /// Arrivals, departures and skips at the stops of scheduled trips.
    pub stop_events: Vec<StopEvent>,
    /// Driving-time state after the newest fix applied of each vehicle (one per
    /// vehicle per call, in the order vehicles were last touched).
    pub live: Vec<LiveState>,
}

impl Output {
    /// Nothing was produced.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.late.is_empty()
            && self.duplicates.is_empty()
            && self.stops.is_empty()
            && self.trips.is_empty()
            && self.trip_runs.is_empty()
            && self.stop_events.is_empty()
            && self.live.is_empty()
    }

    /// Appends everything of `other`.
    pub fn append(&mut self, mut other: Output) {
        self.alerts.append(&mut other.alerts);
        self.late.append(&mut other.late);
        self.duplicates.append(&mut other.duplicates);
        self.stops.append(&mut other.stops);
        self.trips.append(&mut other.trips);
        self.trip_runs.append(&mut other.trip_runs);
        self.stop_events.append(&mut other.stop_events);
        for l in other.live {
            push_live(&mut self.live, l);
        }
    }
}

/// A completed stop of a vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// Its cooperative, when registered.
    pub cooperative: Option<CooperativeId>,
    /// First stopped fix.
    pub start: DateTime<Utc>,
    /// First moving fix after it.
    pub end: DateTime<Utc>,
    /// `end - start`, seconds.
    pub duration_s: f64,
    /// Latitude of the first stopped fix, degrees.
    pub lat: f64,
    /// Longitude of the first stopped fix, degrees.
    pub lon: f64,
}

pub use crate::domain::trip::{StopEvent, Trip, TripRun};

struct Slot {
    id: VehicleId,
    reg: Option<Arc<Vehicle>>,
    core: VehicleCore,
    /// Changed since the last [`Engine::checkpoint_changed`].
    dirty: bool,
    /// Being recomputed: quiet-vehicle releases leave it alone.
    frozen: bool,
    /// Snapshots of the state at event-time intervals, oldest first, packed.
    snaps: Vec<Packed>,
}

/// Levels of snapshot spacing kept per vehicle: level `k` keeps the first snapshot of
/// each of the two newest spans of `2^k` snapshot intervals, so the snapshot before a
/// fix `L` late is at most about `2 L` back (one interval at least) up to
/// `2^(LEVELS+1)` intervals (21 h at 10 min), in at most `LEVELS + 2` snapshots. An
/// older late fix recomputes from the start of its local week, from the stored fixes.
const SNAPSHOT_LEVELS: u32 = 6;

/// A driver's driving time and the vehicle (slot) they were last seen on: the
/// vehicle whose checkpoint carries it.
struct DriverSlot {
    id: DriverId,
    owner: u32,
    state: DrivingState,
    /// The driver's recent stints, oldest first: each time their owner changed (or
    /// they were first seen), with their state then. A late fix follows the driver
    /// through them to the other vehicles they drove since (see [`Engine::begin_group_recompute`]).
    stints: Vec<Stint>,
    /// Every stint starting after this sequence number is in `stints` (older ones
    /// were dropped, or the state was restored from a checkpoint without them).
    known_since: u64,
}

/// A driver's arrival on a vehicle.
#[derive(Debug, Clone)]
struct Stint {
    /// The vehicle slot arrived on.
    vehicle: u32,
    /// The vehicle slot left (the same one when the driver was first seen).
    prev_owner: u32,
    /// Processing sequence number and event time (ms) of the fix whose processing
    /// brought the driver there.
    seq: u64,
    at_ms: i64,
    /// The driver's state right before it.
    state: DrivingState,
    /// First sight of the driver.
    created: bool,
}

/// Stints kept per driver: a day of a driver switching vehicles every hour or two.
/// A late fix older than the oldest one recomputes without following the driver.
const MAX_STINTS: usize = 16;

/// Driving-time state of all drivers: one hash lookup per fix, then an index.
#[derive(Default)]
struct Drivers {
    index: FastMap<DriverId, u32>,
    slots: Vec<DriverSlot>,
    /// Vehicle slots a driver left since the last checkpoint: their checkpoints still
    /// carry the driver and must be written again without them.
    left: Vec<u32>,
    /// Sequence number and event time (ms) of the fix being processed: stamps stints.
    clock: (u64, i64),
}

/// One vehicle of a group recomputation, as [`Engine::begin_group_recompute`] set it
/// back: replay its stored fixes from `after` on (merged with the group's others in
/// event-time order), then reconcile its span from `after`.
#[derive(Debug, Clone)]
pub struct Restart {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// Event time its replay starts at (inclusive): its snapshot's, or the start of
    /// the local ISO week when it has none old enough.
    pub after: DateTime<Utc>,
    /// The alerts of the vehicle open at `after`, as they stood then: the
    /// recomputation states them again.
    pub restated: Vec<Alert>,
    /// The newest fix pushed for it before the reset: everything up to it was sent
    /// to the store, which a loader must wait for.
    pub newest: Option<DateTime<Utc>>,
}

/// Where a group recomputation starts one vehicle: its snapshot (or nothing, at the
/// start of the local week).
struct Start {
    vi: usize,
    at_ms: i64,
    seq: u64,
    state: VehicleState,
}

/// Where a group recomputation starts one driver: from a vehicle's snapshot holding
/// them (`starts[i]`), or at the start of one of their stints.
#[derive(Debug, Clone, Copy)]
enum DriverFrom {
    Snap(usize),
    Stint(usize),
}

/// The compliance rules over a stream of validated fixes: pure, synchronous and
/// deterministic on event time (only [`Engine::tick`] looks at processing time).
pub struct Engine {
    cfg: RulesConfig,
    p: Params,
    geo: Arc<GeoIndex>,
    registry: FastMap<VehicleId, Arc<Vehicle>>,
    /// Vehicle id to position in `slots`: one hash lookup per fix.
    index: FastMap<VehicleId, u32>,
    slots: Vec<Slot>,
    drivers: Drivers,
    /// Fixes processed so far (any vehicle): orders snapshots and stints.
    seq: u64,
}

impl Engine {
    /// An engine with configuration `cfg` (check it with [`RulesConfig::validate`]
    /// first), geometry `geo` and the registered vehicles.
    pub fn new(cfg: RulesConfig, geo: Arc<GeoIndex>, registry: Vec<Vehicle>) -> Self {
        let mut e = Self {
            p: Params::new(&cfg),
            cfg,
            geo,
            registry: FastMap::default(),
            index: FastMap::default(),
            slots: Vec::new(),
            drivers: Drivers::default(),
            seq: 0,
        };
        e.set_registry(registry);
        e
    }

    /// Replaces the geometry (hot reload). Per-vehicle state refers to zones by
    /// key and to routes by id, so it carries over.
    pub fn set_geo(&mut self, geo: Arc<GeoIndex>) {
        self.geo = geo;
    }

    /// Replaces the vehicle registry (hot reload).
    pub fn set_registry(&mut self, registry: Vec<Vehicle>) {
        self.registry = registry
            .into_iter()
            .map(|v| (v.id.clone(), Arc::new(v)))
            .collect();
        for slot in &mut self.slots {
            slot.reg = self.registry.get(&slot.id).cloned();
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    /// Number of vehicles with state.
    pub fn vehicle_count(&self) -> usize {
        self.slots.len()
    }

    /// Feeds one validated fix. Fixes of a vehicle are held for its reorder window
    /// (event time: until a fix that much newer arrives; see [`ReorderWindow`]) and released
    /// to the rules in time order; a fix older than one already released is `late`:
    /// reported and not applied.
    pub fn push(&mut self, fix: &Fix) -> Output {
        let mut out = Output::default();
        let vi = self.slot_of(fix.vehicle());
        let slot = &mut self.slots[vi];
        slot.dirty = true;
        let vid = &slot.id;
        let s = Sample::from_fix(fix);
        // Any fix, even a late one, shows the device is heard again.
        if let Some(since) = slot.core.no_signal.take() {
            let mut ctx = Ctx {
                p: &self.p,
                vehicle: vid,
                cooperative: slot.reg.as_ref().map(|v| &v.cooperative),
                driver: s.driver.as_ref(),
                out: &mut out,
            };
            no_signal::close(&mut ctx, since, s.ts_ms);
        }
        let max_ms = self.p.reorder_ms;
        if self.p.reorder_adaptive {
            let newest = slot.core.newest.map(|m| m.ts_ms);
            let w = slot.core.window.get_or_insert(ReorderWindow::new(max_ms));
            w.observe(s.ts_ms, newest, max_ms);
        }
        let newest_ms = match slot.core.newest {
            Some(m) if m.ts_ms >= s.ts_ms => m.ts_ms,
            _ => {
                slot.core.newest = Some(s.mark());
                s.ts_ms
            }
        };
        if let Some(last) = &slot.core.last {
            if s.ts_ms < last.ts_ms {
                out.late.push(fix.clone());
                return out;
            }
            if s.ts_ms == last.ts_ms {
                out.duplicates.push(fix.clone());
                return out;
            }
        }
        match slot.core.buffer.binary_search_by_key(&s.ts_ms, |b| b.ts_ms) {
            Ok(_) => {
                out.duplicates.push(fix.clone());
                return out;
            }
            Err(i) => slot.core.buffer.insert(i, s),
        }
        let window_ms = slot.core.window.map_or(max_ms, |w| w.ms());
        self.release(vi, newest_ms - window_ms, &mut out);
        out
    }

    /// Releases, on processing time, buffered fixes older than `now` minus their
    /// vehicle's reorder window: call it periodically so a vehicle that goes quiet
    /// does not keep its last fixes (and the end of its episodes) buffered.
    pub fn drain_due(&mut self, now: DateTime<Utc>) -> Output {
        let now_ms = now.timestamp_millis();
        let max_ms = self.p.reorder_ms;
        self.release_all(|s| now_ms - s.core.window.map_or(max_ms, |w| w.ms()))
    }

    /// Releases everything buffered (shutdown, end of a replay).
    pub fn flush(&mut self) -> Output {
        self.release_all(|_| i64::MAX)
    }

    /// The newest fix time seen of `vehicle` (applied or buffered).
    pub fn newest(&self, vehicle: &VehicleId) -> Option<DateTime<Utc>> {
        let &vi = self.index.get(vehicle)?;
        let m = self.slots[vi as usize].core.newest?;
        Some(super::alert::utc(m.ts_ms))
    }

    /// No-signal check at processing time `now`: opens one alert for each vehicle
    /// whose newest fix is more than `no_signal.after_s` older than `now` (see
    /// `rules::no_signal`). Sorted by vehicle.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Alert> {
        let now_ms = now.timestamp_millis();
        let mut out = Output::default();
        for slot in &mut self.slots {
            let vid = &slot.id;
            let Some(newest) = slot.core.newest.filter(|_| slot.core.no_signal.is_none()) else {
                continue;
            };
            // Silence is measured from when the device was last heard (receive time)
            // when known: a device uploading a buffered backlog, or a replay of old
            // fixes, is not silent. Without receive times, from the fix's own time.
            let silent_ms = now_ms - slot.core.heard_ms.unwrap_or(newest.ts_ms);
            if silent_ms <= self.p.no_signal_ms {
                continue;
            }
            let mut ctx = Ctx {
                p: &self.p,
                vehicle: vid,
                cooperative: slot.reg.as_ref().map(|v| &v.cooperative),
                driver: slot.core.last.as_ref().and_then(|l| l.driver.as_ref()),
                out: &mut out,
            };
            slot.core.no_signal = no_signal::check(&mut ctx, newest, silent_ms);
            slot.dirty = true;
        }
        out.alerts.sort_by(|a, b| a.vehicle.cmp(&b.vehicle));
        out.alerts
    }

    /// Vehicles with an open no-signal alert.
    pub fn silent_vehicles(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.core.no_signal.is_some())
            .count()
    }

    /// Records that `vehicle` was heard from at processing time `at` (any fix,
    /// even one the rules do not use): the no-signal clock.
    pub fn heard(&mut self, vehicle: &VehicleId, at: DateTime<Utc>) {
        let vi = self.slot_of(vehicle);
        let core = &mut self.slots[vi].core;
        core.heard_ms = Some(core.heard_ms.unwrap_or(i64::MIN).max(at.timestamp_millis()));
    }

    /// Marks every known vehicle heard at `at` (after a restore: silence is counted
    /// from the restart, not from before it).
    pub fn heard_all(&mut self, at: DateTime<Utc>) {
        for slot in &mut self.slots {
            slot.core.heard_ms = Some(at.timestamp_millis());
        }
    }

    /// Event times at which something still in progress for `vehicle` began: its
    /// buffered fixes, the last fix released to the rules (the interval to the next one
    /// is not accounted yet), an overspeed or off-route episode, a restricted-zone
    /// violation, the continuous driving of the vehicle and of the drivers last seen
    /// on it, and open driving-time alerts opened on it. Once none of these is before
    /// `t`, every alert about `vehicle` starting before `t` is final (no-signal aside:
    /// it runs on processing time). Sorted; empty for an unknown vehicle.
    pub fn pending_since(&self, vehicle: &VehicleId) -> Vec<DateTime<Utc>> {
        let Some(&vi) = self.index.get(vehicle) else {
            return Vec::new();
        };
        let core = &self.slots[vi as usize].core;
        let mut ms: Vec<i64> = core.buffer.iter().map(|b| b.ts_ms).collect();
        ms.extend(core.last.as_ref().map(|l| l.ts_ms));
        ms.extend(core.overspeed.as_ref().map(|e| e.start_ms()));
        ms.extend(core.off_route.since_ms());
        ms.extend(core.transit.pending_ms());
        ms.extend(core.zones.iter().filter_map(|z| z.violation_ms()));
        core.driving.pending_ms(vehicle, true, &mut ms);
        for d in &self.drivers.slots {
            d.state.pending_ms(vehicle, d.owner == vi, &mut ms);
        }
        ms.sort_unstable();
        ms.dedup();
        ms.into_iter().map(super::alert::utc).collect()
    }

    /// State of every vehicle (with the driving time of the drivers last seen on it),
    /// sorted by vehicle id, for a checkpoint.
    pub fn checkpoint(&self) -> Vec<(VehicleId, VehicleState)> {
        self.states(|_| true)
    }

    /// The states of the vehicles that changed since the last call (those a driver
    /// left included), sorted by vehicle: what a periodic checkpoint must write, the
    /// rest being stored already. Clears the marks.
    pub fn checkpoint_changed(&mut self) -> Vec<(VehicleId, VehicleState)> {
        for vi in std::mem::take(&mut self.drivers.left) {
            self.slots[vi as usize].dirty = true;
        }
        let out = self.states(|s| s.dirty);
        for slot in &mut self.slots {
            slot.dirty = false;
        }
        out
    }

    /// The states of the vehicles `pick` selects, each with the drivers last seen on it.
    fn states(&self, pick: impl Fn(&Slot) -> bool) -> Vec<(VehicleId, VehicleState)> {
        let mut by_owner: Vec<Vec<(DriverId, DrivingState)>> = vec![Vec::new(); self.slots.len()];
        for d in &self.drivers.slots {
            if pick(&self.slots[d.owner as usize]) {
                by_owner[d.owner as usize].push((d.id.clone(), d.state.clone()));
            }
        }
        let mut out: Vec<(VehicleId, VehicleState)> = self
            .slots
            .iter()
            .zip(by_owner)
            .filter(|(slot, _)| pick(slot))
            .map(|(slot, mut drivers)| {
                drivers.sort_by(|a, b| a.0.cmp(&b.0));
                (
                    slot.id.clone(),
                    VehicleState {
                        core: slot.core.clone(),
                        drivers,
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores checkpointed states (replacing those of the same vehicles). A driver
    /// found under several vehicles keeps the state with the latest driving.
    pub fn restore(&mut self, states: Vec<(VehicleId, VehicleState)>) {
        // Restored drivers have no stints: none is known before this point.
        self.seq += 1;
        self.drivers.clock = (self.seq, i64::MIN);
        for (vid, st) in states {
            let vi = self.slot_of(&vid);
            self.slots[vi].core = st.core;
            for (d, ds) in st.drivers {
                let di = self.drivers.slot_of(&d, vi);
                let slot = &mut self.drivers.slots[di];
                if slot.state == DrivingState::default()
                    || ds.last_activity_ms() > slot.state.last_activity_ms()
                {
                    slot.state = ds;
                    slot.owner = vi as u32;
                }
                slot.stints.clear();
                slot.known_since = self.seq;
            }
        }
    }

    /// Position of `vid` in `slots`, creating its slot on first sight.
    fn slot_of(&mut self, vid: &VehicleId) -> usize {
        if let Some(&i) = self.index.get(vid) {
            return i as usize;
        }
        let i = self.slots.len();
        self.index.insert(vid.clone(), i as u32);
        self.slots.push(Slot {
            id: vid.clone(),
            reg: self.registry.get(vid).cloned(),
            core: VehicleCore::default(),
            dirty: true,
            frozen: false,
            snaps: Vec::new(),
        });
        i
    }

    /// Releases buffered fixes up to `upto_ms(slot)` for every vehicle, in vehicle order.
    fn release_all(&mut self, upto_ms: impl Fn(&Slot) -> i64) -> Output {
        let mut out = Output::default();
        let mut due: Vec<(usize, i64)> = (0..self.slots.len())
            .filter_map(|i| {
                let s = &self.slots[i];
                let upto = upto_ms(s);
                (!s.frozen && s.core.buffer.first().is_some_and(|b| b.ts_ms <= upto))
                    .then_some((i, upto))
            })
            .collect();
        due.sort_by(|a, b| self.slots[a.0].id.cmp(&self.slots[b.0].id));
        for (vi, upto) in due {
            self.release(vi, upto, &mut out);
        }
        out
    }

    /// Runs the rules over the buffered fixes of slot `vi` up to `upto_ms`, in time order.
    fn release(&mut self, vi: usize, upto_ms: i64, out: &mut Output) {
        loop {
            let slot = &mut self.slots[vi];
            if slot.core.buffer.first().is_none_or(|b| b.ts_ms > upto_ms) {
                break;
            }
            slot.dirty = true;
            let s = slot.core.buffer.remove(0);
            if slot
                .snaps
                .last()
                .is_none_or(|l| s.ts_ms - l.at_ms >= self.p.snapshot_ms)
            {
                take_snapshot(
                    &self.drivers,
                    vi,
                    slot,
                    s.ts_ms,
                    self.seq,
                    self.p.snapshot_ms,
                );
            }
            self.seq += 1;
            self.drivers.clock = (self.seq, s.ts_ms);
            let first = out.alerts.len();
            process(&self.p, &self.geo, &mut self.drivers, vi, slot, s, out);
            for a in &out.alerts[first..] {
                self.track_open(a);
            }
        }
    }

    /// Keeps the open-alert list of the alert's vehicle (a driver's alert may be
    /// closed while the driver is on another vehicle) current.
    fn track_open(&mut self, a: &Alert) {
        if matches!(
            a.kind,
            AlertKind::NoSignal | AlertKind::DeviceAlarm | AlertKind::DataGap
        ) {
            return;
        }
        let Some(&vi) = self.index.get(&a.vehicle) else {
            return;
        };
        let open = &mut self.slots[vi as usize].core.open;
        let at = open.iter().position(|o| o.id == a.id);
        match (a.status, at) {
            (AlertStatus::Open, Some(i)) => open[i] = a.clone(),
            (AlertStatus::Open, None) => open.push(a.clone()),
            (AlertStatus::Closed, Some(i)) => {
                open.remove(i);
            }
            (AlertStatus::Closed, None) => {}
        }
    }

    /// The scheduled trip `vehicle` runs, as of its last fix applied.
    pub fn trip_progress(&self, vehicle: &VehicleId) -> Option<super::TripProgress> {
        let &vi = self.index.get(vehicle)?;
        let slot = &self.slots[vi as usize];
        let route = slot.reg.as_ref()?.route.as_deref()?;
        let sched = self.geo.schedule_for(route)?;
        slot.core.transit.progress(sched, self.p.offset_ms)
    }

    /// Bytes of packed snapshot state held for `vehicle`, an open alert shared by
    /// several snapshots counted once (a measure of memory, for benchmarks and metrics).
    pub fn snapshot_bytes(&self, vehicle: &VehicleId) -> usize {
        let Some(&vi) = self.index.get(vehicle) else {
            return 0;
        };
        let mut seen: Vec<*const u8> = Vec::new();
        let mut n = 0;
        for s in &self.slots[vi as usize].snaps {
            let (core, open) = s.parts();
            n += core;
            for (at, len) in open {
                if !seen.contains(&at) {
                    seen.push(at);
                    n += len;
                }
            }
        }
        n
    }

    /// What the snapshots held for `vehicle` are made of: serialised (JSON) bytes of
    /// each part, summed over its snapshots, largest first (for benchmarks).
    pub fn snapshot_breakdown(&self, vehicle: &VehicleId) -> Vec<(&'static str, usize)> {
        let Some(&vi) = self.index.get(vehicle) else {
            return Vec::new();
        };
        fn len<T: Serialize>(t: &T) -> usize {
            serde_json::to_vec(t).map_or(0, |v| v.len())
        }
        let mut parts: Vec<(&'static str, usize)> = Vec::new();
        let mut add = |name: &'static str, n: usize| match parts.iter_mut().find(|p| p.0 == name) {
            Some(p) => p.1 += n,
            None => parts.push((name, n)),
        };
        for s in &self.slots[vi as usize].snaps {
            let Ok(st) = s.unpack() else { continue };
            let c = &st.core;
            add("buffer", len(&c.buffer));
            add(
                "last, newest, no-signal",
                len(&(&c.last, &c.newest, &c.no_signal)),
            );
            add("overspeed", len(&c.overspeed));
            add("vehicle driving", len(&c.driving));
            add("off-route", len(&c.off_route));
            add("transit", len(&c.transit));
            add("zones", len(&c.zones));
            add("motion (trips, stops)", len(&c.motion));
            add("open alerts", len(&c.open));
            add("drivers' driving", len(&st.drivers));
        }
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        parts
    }

    /// The start of a recomputation of slot `vi` that replays its fixes from at most
    /// `ms` on, before the fix processed as `seq` (exclusive): its newest snapshot
    /// that old, or nothing at the start of the local ISO week of `ms` (weekly
    /// driving), as a restart does.
    fn start_for(&self, vi: usize, ms: i64, seq: u64) -> Start {
        let slot = &self.slots[vi];
        // One that does not unpack (never seen) is passed over for an older one: the
        // recomputation is longer, not wrong.
        let snap = slot
            .snaps
            .iter()
            .rev()
            .filter(|s| s.at_ms <= ms && s.seq < seq)
            .find_map(|s| match s.unpack() {
                Ok(state) => Some((s.at_ms, s.seq, state)),
                Err(e) => {
                    tracing::error!(vehicle = %slot.id, error = %e, "rule snapshot unreadable, using an older one");
                    None
                }
            });
        match snap {
            Some((at_ms, seq, state)) => Start {
                vi,
                at_ms,
                seq,
                state,
            },
            None => Start {
                vi,
                at_ms: week_start_ms(ms, self.p.offset_ms),
                seq: 0,
                state: VehicleState::default(),
            },
        }
    }

    /// Starts a recomputation for late fixes: `late` gives each vehicle with late
    /// fixes and the oldest of them. The recomputation follows drivers across
    /// vehicles: it takes a **group**, the vehicles of `late` plus every vehicle a
    /// driver of a group member drove after that member's start (transitively, from
    /// the drivers' stints), each started from its newest snapshot old enough, and
    /// each driver restarted exactly once, from where its first replayed fix finds it
    /// (a snapshot holding it, or the start of a stint). `pending` are vehicles with
    /// late fixes of their own waiting: one drawn into the group starts before them.
    ///
    /// Every group vehicle is reset to its start and frozen until
    /// [`Engine::end_recompute`]; then replay the stored fixes of all of them, each
    /// from its `after` on, merged in event-time order (ties by vehicle) with
    /// [`Engine::replay`]. The no-signal state (processing time) is kept. Returns the
    /// group, `late`'s vehicles first.
    pub fn begin_group_recompute(
        &mut self,
        late: &[(VehicleId, DateTime<Utc>)],
        pending: &[(VehicleId, DateTime<Utc>)],
    ) -> Vec<Restart> {
        // Constraints (vehicle slot, replay from at most this time, before this seq).
        let mut need: Vec<(usize, i64, u64)> = late
            .iter()
            .map(|(v, t)| (self.slot_of(v), t.timestamp_millis(), u64::MAX))
            .collect();
        let mut starts: Vec<Start> = Vec::new();
        let mut plan: Vec<(usize, DriverFrom)> = Vec::new();
        let mut unknown: Vec<usize> = Vec::new();
        loop {
            let mut changed = false;
            for (vi, ms, seq) in std::mem::take(&mut need) {
                match starts.iter().position(|s| s.vi == vi) {
                    Some(i) if starts[i].at_ms <= ms && starts[i].seq < seq => {}
                    Some(i) => {
                        let ms = ms.min(starts[i].at_ms);
                        let seq = seq.min(starts[i].seq.saturating_add(1));
                        let st = self.start_for(vi, ms, seq);
                        // Nothing older to start from: as far back as it goes.
                        changed |= (st.at_ms, st.seq) != (starts[i].at_ms, starts[i].seq);
                        starts[i] = st;
                    }
                    None => {
                        // A vehicle with late fixes of its own starts before them too.
                        let own = pending
                            .iter()
                            .filter(|(v, _)| self.index.get(v) == Some(&(vi as u32)))
                            .map(|(_, t)| t.timestamp_millis())
                            .min();
                        let ms = own.map_or(ms, |o| o.min(ms));
                        starts.push(self.start_for(vi, ms, seq));
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
            // Each driver restarts at the first of their fixes some group vehicle
            // replays; every stint after it must then be replayed whole.
            plan.clear();
            unknown.clear();
            for (di, d) in self.drivers.slots.iter().enumerate() {
                let mut best: Option<(u64, DriverFrom)> = None;
                let mut consider = |seq: u64, from: DriverFrom| {
                    if best.is_none_or(|(b, _)| seq < b) {
                        best = Some((seq, from));
                    }
                };
                let mut blind = false;
                for (i, st) in starts.iter().enumerate() {
                    if st.state.drivers.iter().any(|(id, _)| *id == d.id) {
                        consider(st.seq, DriverFrom::Snap(i));
                    }
                    if let Some(k) = d
                        .stints
                        .iter()
                        .position(|x| x.vehicle as usize == st.vi && x.seq > st.seq)
                    {
                        consider(d.stints[k].seq, DriverFrom::Stint(k));
                    }
                    blind |= d.known_since > st.seq && d.owner as usize == st.vi;
                }
                match best {
                    Some((seq, from)) => {
                        for x in d.stints.iter().filter(|x| x.seq > seq) {
                            need.push((x.vehicle as usize, x.at_ms, x.seq));
                        }
                        plan.push((di, from));
                    }
                    None if blind => unknown.push(di),
                    None => {}
                }
            }
        }
        if !unknown.is_empty() {
            // Restored from a checkpoint, or stints dropped: the driver's runs on
            // other vehicles since the start are not followed (as before issue 13).
            tracing::warn!(
                drivers = unknown.len(),
                "recomputation older than the drivers' known stints: their driving elsewhere is not replayed"
            );
        }

        // Drivers first (they read the starts' states), then the vehicles.
        for &(di, from) in &plan {
            let (state, owner, keep) = {
                let d = &self.drivers.slots[di];
                match from {
                    DriverFrom::Snap(i) => {
                        let st = &starts[i];
                        let state = st
                            .state
                            .drivers
                            .iter()
                            .find(|(id, _)| *id == d.id)
                            .map(|(_, s)| s.clone())
                            .unwrap_or_default();
                        let keep = d.stints.iter().take_while(|x| x.seq <= st.seq).count();
                        (state, st.vi as u32, keep)
                    }
                    DriverFrom::Stint(k) => {
                        let x = &d.stints[k];
                        if x.created {
                            // Replayed from first sight: on that vehicle, with nothing.
                            (DrivingState::default(), x.vehicle, k + 1)
                        } else {
                            // The replay moves them again, recording the stint anew.
                            (x.state.clone(), x.prev_owner, k)
                        }
                    }
                }
            };
            let d = &mut self.drivers.slots[di];
            d.stints.truncate(keep);
            d.state = state;
            if d.owner != owner {
                self.drivers.left.push(d.owner);
                d.owner = owner;
            }
        }
        for &di in &unknown {
            self.drivers.slots[di].state = DrivingState::default();
        }
        let mut out = Vec::with_capacity(starts.len());
        for st in starts {
            let slot = &mut self.slots[st.vi];
            let newest = slot.core.newest.map(|m| super::alert::utc(m.ts_ms));
            let no_signal = slot.core.no_signal;
            let heard_ms = slot.core.heard_ms;
            let window = slot.core.window;
            slot.core = st.state.core;
            slot.core.no_signal = no_signal;
            slot.core.heard_ms = heard_ms;
            // How the vehicle's fixes arrive is not history: the window stays.
            slot.core.window = window;
            slot.snaps.retain(|s| s.at_ms < st.at_ms);
            slot.frozen = true;
            slot.dirty = true;
            out.push(Restart {
                vehicle: slot.id.clone(),
                after: super::alert::utc(st.at_ms),
                restated: slot.core.open.clone(),
                newest,
            });
        }
        out
    }

    /// Ends a recomputation: the vehicle's buffer is released on processing time again.
    pub fn end_recompute(&mut self, vehicle: &VehicleId) {
        if let Some(&vi) = self.index.get(vehicle) {
            self.slots[vi as usize].frozen = false;
        }
    }

    /// Feeds stored fixes of the vehicles being recomputed, in time order (merged
    /// across the group's vehicles), during a recomputation: like [`Engine::push`],
    /// but a fix does not end its vehicle's no-signal alert (it is history, not a
    /// sign of life).
    pub fn replay(&mut self, fixes: &[Fix]) -> Output {
        let mut out = Output::default();
        for f in fixes {
            let vi = self.slot_of(f.vehicle());
            let no_signal = self.slots[vi].core.no_signal.take();
            out.append(self.push(f));
            self.slots[vi].core.no_signal = no_signal;
        }
        out
    }
}

/// The live view of trip progress `pr` in `sched`: next stop's id, sequence and name.
fn live_trip(sched: &crate::geo::Schedule, pr: super::TripProgress) -> Option<Box<LiveTrip>> {
    let (_, t) = sched.trip(&pr.trip_id)?;
    let next = t.stop_times.get(usize::from(pr.next_stop));
    let stop = next.and_then(|st| sched.stops.get(st.stop as usize));
    Some(Box::new(LiveTrip {
        trip_id: pr.trip_id,
        route_id: pr.route_id,
        service_date: pr.service_date,
        scheduled_start: pr.scheduled_start,
        direction: pr.direction,
        headsign: t.headsign.clone(),
        next_stop_id: stop.map(|s| s.id.clone()),
        next_stop_sequence: next.map(|st| st.seq),
        next_stop_name: stop.and_then(|s| s.name.clone()),
        delay_s: pr.delay_s,
        confidence: pr.confidence,
    }))
}

/// Adds `l` to `live`, replacing the last state when it is of the same vehicle (a
/// vehicle's fixes are processed in a run; the writer keeps the newest of any others).
fn push_live(live: &mut Vec<LiveState>, l: LiveState) {
    match live.last_mut() {
        Some(x) if x.vehicle == l.vehicle => {
            if x.as_of <= l.as_of {
                *x = l;
            }
        }
        _ => live.push(l),
    }
}

/// Records a snapshot of slot `vi` right before its fix at `at_ms`, thinning older
/// ones so they stay few and spread back in time (see [`thin_snapshots`]).
fn take_snapshot(
    drivers: &Drivers,
    vi: usize,
    slot: &mut Slot,
    at_ms: i64,
    seq: u64,
    snapshot_ms: i64,
) {
    let mut core = slot.core.clone();
    core.buffer.clear();
    core.newest = core.last.as_ref().map(|l| l.mark());
    // Every driver last seen on the vehicle: a recomputation starts them over.
    let ds: Vec<(DriverId, DrivingState)> = drivers
        .slots
        .iter()
        .filter(|d| d.owner == vi as u32)
        .map(|d| (d.id.clone(), d.state.clone()))
        .collect();
    let state = VehicleState { core, drivers: ds };
    match Packed::pack(at_ms, &state, slot.snaps.last()) {
        Ok(mut p) => {
            p.seq = seq;
            slot.snaps.push(p);
        }
        // Never seen: without it a late fix recomputes from an older snapshot.
        Err(e) => tracing::error!(vehicle = %slot.id, error = %e, "rule snapshot not packed"),
    }
    thin_snapshots(&mut slot.snaps, snapshot_ms);
}

/// Start (ms, UTC) of the local ISO week (`offset_ms` east) of `ms`.
fn week_start_ms(ms: i64, offset_ms: i64) -> i64 {
    let day = i64::from(driving::local_day(ms, offset_ms));
    let monday = (day + 3).div_euclid(7) * 7 - 3;
    monday * 86_400_000 - offset_ms
}

/// Keeps, for each level `k` up to [`SNAPSHOT_LEVELS`], the first snapshot of each of
/// the two newest spans of `2^k` intervals holding one: spacing doubles with age (a
/// binary counter), so recomputing a fix late by `L` replays about `2 L` at most.
fn thin_snapshots(snaps: &mut Vec<Packed>, interval_ms: i64) {
    let n: Vec<i64> = snaps
        .iter()
        .map(|s| s.at_ms.div_euclid(interval_ms.max(1)))
        .collect();
    let mut keep = vec![false; snaps.len()];
    for k in 0..=SNAPSHOT_LEVELS {
        let mut end = snaps.len();
        for _ in 0..2 {
            if end == 0 {
                break;
            }
            let span = n[end - 1] >> k;
            let mut first = end - 1;
            while first > 0 && n[first - 1] >> k == span {
                first -= 1;
            }
            keep[first] = true;
            end = first;
        }
    }
    let mut i = 0;
    snaps.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

impl Drivers {
    /// Position of driver `d`, creating it (owned by vehicle slot `vi`) on first sight.
    fn slot_of(&mut self, d: &DriverId, vi: usize) -> usize {
        if let Some(&i) = self.index.get(d) {
            return i as usize;
        }
        let i = self.slots.len();
        self.index.insert(d.clone(), i as u32);
        let (seq, at_ms) = self.clock;
        self.slots.push(DriverSlot {
            id: d.clone(),
            owner: vi as u32,
            state: DrivingState::default(),
            stints: vec![Stint {
                vehicle: vi as u32,
                prev_owner: vi as u32,
                seq,
                at_ms,
                state: DrivingState::default(),
                created: true,
            }],
            known_since: 0,
        });
        i
    }

    /// Moves driver `di` to vehicle slot `vi`, recording the stint.
    fn move_to(&mut self, di: usize, vi: u32) {
        let (seq, at_ms) = self.clock;
        let slot = &mut self.slots[di];
        if slot.owner == vi {
            return;
        }
        self.left.push(slot.owner);
        if slot.stints.len() >= MAX_STINTS {
            let dropped = slot.stints.remove(0);
            slot.known_since = slot.known_since.max(dropped.seq);
        }
        slot.stints.push(Stint {
            vehicle: vi,
            prev_owner: slot.owner,
            seq,
            at_ms,
            state: slot.state.clone(),
            created: false,
        });
        slot.owner = vi;
    }
}

/// The driving-time state for `driver` (now owned by vehicle slot `vi`), or the
/// vehicle's own when no driver is logged in.
fn driving_state<'a>(
    drivers: &'a mut Drivers,
    own: &'a mut DrivingState,
    driver: Option<&DriverId>,
    vi: usize,
) -> &'a mut DrivingState {
    let Some(d) = driver else {
        return own;
    };
    let di = drivers.slot_of(d, vi);
    drivers.move_to(di, vi as u32);
    &mut drivers.slots[di].state
}

/// All rules on one released fix.
fn process(
    p: &Params,
    geo: &GeoIndex,
    drivers: &mut Drivers,
    vi: usize,
    slot: &mut Slot,
    s: Sample,
    out: &mut Output,
) {
    let Slot {
        id: vid, reg, core, ..
    } = slot;
    let reg = reg.as_deref();
    let class = reg.map(|v| v.class);
    let (lon, lat) = (s.pos.lon(), s.pos.lat());

    // Geo facts: the limit from speed zones, zones with events or bans, the route.
    let mut limit = p.class_limit(class);
    let mut here: Vec<(ZoneKey, &Zone)> = Vec::new();
    let mut in_depot = false;
    for (key, zone) in geo.zones_at(lon, lat) {
        if !zone.applies_to(class) {
            continue;
        }
        if let Some(l) = zone.speed_limit_kmh.map(ckmh) {
            limit = Some(limit.map_or(l, |c| c.min(l)));
        }
        in_depot |= matches!(zone.kind, ZoneKind::Depot | ZoneKind::Terminal);
        if zone.kind.has_events() || zone.kind == ZoneKind::Restricted {
            here.push((key, zone));
        }
    }
    here.sort_by_key(|(k, _)| *k);
    // Located below: a bus on a scheduled trip is located on that trip's shape only.
    let route = reg
        .and_then(|v| v.route.as_deref())
        .and_then(|id| geo.route(id));

    let moving = s.moving(p);
    let prev = core.last.take();
    let first_alert = out.alerts.len();
    let at_ms = s.ts_ms;
    let mut ctx = Ctx {
        p,
        vehicle: vid,
        cooperative: reg.map(|v| &v.cooperative),
        driver: s.driver.as_ref(),
        out: &mut *out,
    };
    if let Some(pr) = &prev {
        let prev_moving = pr.moving(p);
        gaps::check(&mut ctx, pr, &s, prev_moving && moving);
        // The interval belongs to whoever was logged in at its start.
        let driving = prev_moving && s.ts_ms - pr.ts_ms <= p.drive_gap_ms;
        let st = driving_state(drivers, &mut core.driving, pr.driver.as_ref(), vi);
        driving::on_interval(&mut ctx, st, pr.driver.as_ref(), pr, &s, driving);
        // A new card login ends continuous driving for whoever was logged in; a plain
        // logout does not (the break clock decides: the driver may log in elsewhere).
        if s.driver.is_some() && pr.driver != s.driver {
            let st = driving_state(drivers, &mut core.driving, pr.driver.as_ref(), vi);
            driving::end_continuous(&mut ctx, st, pr.driver.as_ref(), "driver_change");
        }
    }
    overspeed::update(&mut ctx, &mut core.overspeed, &s, limit);
    // A bus on a scheduled trip is checked against that trip's shape.
    let sched = route
        .filter(|_| p.transit)
        .and_then(|r| geo.schedule_for(r.id()).map(|sc| (r, sc)));
    let on_trip = sched.and_then(|(r, sc)| {
        let corridor_m = r.corridor_m().unwrap_or(p.corridor_m);
        let on = transit::update(&mut ctx, &mut core.transit, &s, sc, r.id(), corridor_m);
        let sh = core.transit.shape(sc)?;
        Some((&sh.index, on.unwrap_or_else(|| sh.index.locate(lon, lat))))
    });
    let route = on_trip.or_else(|| route.map(|r| (r, r.locate(lon, lat))));
    if let Some((r, loc)) = route {
        off_route::update(
            &mut ctx,
            &mut core.off_route,
            &s,
            r,
            loc,
            in_depot && p.depots_on_route,
        );
    }
    zones::update(&mut ctx, &mut core.zones, &s, &here, geo);
    trips::update(&mut ctx, &mut core.motion, prev.as_ref(), &s, moving);
    core.driver_since_ms = match (&prev, &s.driver) {
        (_, None) => None,
        (Some(pr), Some(d)) if pr.driver.as_ref() == Some(d) => {
            core.driver_since_ms.or(Some(s.ts_ms))
        }
        _ => Some(s.ts_ms),
    };
    let st = match &s.driver {
        Some(d) => drivers
            .index
            .get(d)
            .map(|&i| &drivers.slots[i as usize].state),
        None => Some(&core.driving),
    };
    let (cont_ms, end_ms, day, day_ms, week_ms) = st.map_or_else(
        || (0, None, super::alert::utc(s.ts_ms).date_naive(), 0, 0),
        |st| st.figures(),
    );
    let live = LiveState {
        vehicle: vid.clone(),
        driver: s.driver.clone(),
        driver_since: core.driver_since_ms.map(super::alert::utc),
        as_of: super::alert::utc(s.ts_ms),
        moving,
        continuous_s: super::state::secs(cont_ms),
        last_drive_end: end_ms.map(super::alert::utc),
        day,
        daily_s: super::state::secs(day_ms),
        weekly_s: super::state::secs(week_ms),
        on_route: route.map(|_| !core.off_route.is_off()),
        trip: sched.and_then(|(_, sc)| live_trip(sc, core.transit.progress(sc, p.offset_ms)?)),
    };
    push_live(&mut out.live, live);
    core.last = Some(s);
    // What this fix's processing emitted: a recomputation from a snapshot at or
    // before it reconciles these.
    for a in &mut out.alerts[first_alert..] {
        a.emitted = Some(super::alert::utc(at_ms));
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    fn snap(at_ms: i64) -> Packed {
        Packed::pack(at_ms, &VehicleState::default(), None).expect("packs")
    }

    #[test]
    fn snapshots_are_spaced_by_doubling_ages_and_stay_few() {
        const I: i64 = 600_000;
        let mut snaps = Vec::new();
        // A week at one snapshot per interval, checking after each day's first hours.
        for n in 0..(7 * 144) {
            snaps.push(snap(n * I));
            thin_snapshots(&mut snaps, I);
            assert!(
                snaps.len() <= SNAPSHOT_LEVELS as usize + 2,
                "{} kept",
                snaps.len()
            );
            assert_eq!(snaps.last().map(|s| s.at_ms), Some(n * I), "newest kept");
            if n < 144 {
                continue;
            }
            // The snapshot a recomputation starts from for a fix late by 1 h, 2 h, 6 h.
            for (late_n, worst_n) in [(6, 14), (12, 28), (36, 100)] {
                let at = (n - late_n) * I;
                let from = snaps.iter().rev().find(|s| s.at_ms <= at).map(|s| s.at_ms);
                let back_n = (n * I - from.expect("one old enough")) / I;
                assert!(back_n <= worst_n, "{late_n} late: {back_n} back at {n}");
            }
        }
    }
}
