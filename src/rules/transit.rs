//! Scheduled trips of buses whose route has a GTFS schedule: which trip a bus runs
//! (trip assignment), its arrival and departure at each stop of that trip, stops it
//! passes without stopping (`stop_skipped`) and how early or late it runs
//! (`schedule_deviation`).
//!
//! Assignment: while no trip is known (or the bus is not moving along its trip), the
//! bus is located on each shape of its route's trips; a "probe" per shape follows
//! its progress, restarting while the bus waits at the shape's start or when it goes
//! back. Once a probe has advanced `transit.confirm_m` (less when the trip's second
//! stop is nearer), the trips of that shape running that local service day (and
//! the day before, for times past 24:00) are compared with the time: the departure
//! from the first stop when the probe started there, else the schedule at the bus's
//! position. The nearest within `transit.match_window_s` wins; its confidence falls
//! with the time difference, when joined mid-trip and when another trip is about as
//! near. Everything is state of the vehicle's rules and a function of its fixes in
//! event order, so a recomputation from a snapshot gives the same runs and events.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::alert::{utc, AlertKind, AlertStatus, Level};
use super::state::{Ctx, Mark, Sample};
use crate::domain::trip::{StopEvent, TripRun};
use crate::geo::{distance_m, RouteLocation, RouteTrips, Schedule, ScheduledTrip, TripShape};

/// Moving back along a shape by less than this is GPS noise, decimetres.
const BACK_NOISE_DM: i32 = 200;
/// Progress along the trip's shape of at least this, decimetres, is moving along it.
const MOVED_DM: i32 = 50;
/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const UNIX_EPOCH_CE_DAYS: i32 = 719_163;
const DAY_MS: i64 = 86_400_000;
/// Within the stop radius this long, ms, a bus that never showed a stopped fix still
/// served the stop (a short dwell between two fixes).
const SERVED_MIN_MS: i64 = 20_000;
/// Not moving along the trip this long, ms, the bus may have started another one.
const STALLED_MS: i64 = 30_000;

/// Transit state of one vehicle: the trip it runs, or the probes looking for one.
/// Boxed: most vehicles have none, and the vehicle state stays small in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct TransitState(Option<Box<Inner>>);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Inner {
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<Run>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    probes: Vec<Probe>,
}

/// The bus moving along one shape, not yet matched to a trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Probe {
    /// Shape id.
    shape: String,
    /// The last fix at the shape's start, or where the bus came onto it, ms.
    since_ms: i64,
    /// Progress there, decimetres.
    from_dm: i32,
    /// Furthest progress since, decimetres.
    last_dm: i32,
    /// Matched already without a trip: wait until the probe restarts.
    tried: bool,
}

/// A trip being run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Run {
    trip: String,
    date: NaiveDate,
    /// This run's first departure minus the trip's template one, seconds (headways).
    shift_s: i32,
    start_ms: i64,
    confidence: u8,
    seg: u32,
    progress_dm: i32,
    /// First stop (position in the trip's stop times) not resolved yet.
    next: u16,
    /// At stop `next`: first and last fix within the stop radius (ms), and whether
    /// one of them was stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<(i64, i64, bool)>,
    /// Last fix that moved [`MOVED_DM`] along the shape from the one before it, ms,
    /// and the progress there, decimetres.
    ok_ms: i64,
    ok_dm: i32,
    served: u16,
    skipped: u16,
    /// Progress where the run started, decimetres (`None` in a checkpoint written
    /// before it was kept: the run's distance is then unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_dm: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_s: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<Deviation>,
}

/// An open schedule-deviation episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deviation {
    start: Mark,
    late: bool,
    stop_id: String,
    stop_seq: u32,
    deviation_s: i32,
    max_s: i32,
}

/// What the rules know of the trip a bus runs, for live views and GTFS-realtime.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TripProgress {
    /// GTFS `trip_id`.
    pub trip_id: String,
    /// GTFS `route_id`.
    pub route_id: String,
    /// `direction_id`, when the feed gives it.
    pub direction: Option<u8>,
    /// Local service date.
    pub service_date: NaiveDate,
    /// Scheduled first departure of this run (frequency-based trips: its own).
    pub scheduled_start: chrono::DateTime<chrono::Utc>,
    /// Match confidence, 0..=100.
    pub confidence: u8,
    /// Position of the next stop in the trip's stop times (= its count when done).
    pub next_stop: u16,
    /// Deviation at the last observed stop, seconds (late > 0).
    pub delay_s: Option<i32>,
    /// Distance along the trip's shape, metres.
    pub progress_m: f64,
    /// Frequency-based: the run's stop times are the template shifted by this, s.
    pub shift_s: i32,
}

impl TransitState {
    /// No trip and no probe (left out of checkpoints).
    pub(crate) fn is_idle(&self) -> bool {
        self.0.is_none()
    }

    fn run(&self) -> Option<&Run> {
        self.0.as_ref()?.run.as_ref()
    }

    /// Start of an open schedule-deviation alert, ms.
    pub(crate) fn pending_ms(&self) -> Option<i64> {
        self.run()?.dev.as_ref().map(|d| d.start.ts_ms)
    }

    /// The shape of the trip being run.
    pub(crate) fn shape<'a>(&self, sched: &'a Schedule) -> Option<&'a TripShape> {
        let (_, t) = sched.trip(&self.run()?.trip)?;
        sched.shapes.get(t.shape as usize)
    }

    /// The trip being run, if any.
    pub(crate) fn progress(&self, sched: &Schedule, offset_ms: i64) -> Option<TripProgress> {
        let r = self.run()?;
        let (_, t) = sched.trip(&r.trip)?;
        Some(TripProgress {
            trip_id: r.trip.clone(),
            route_id: t.route.clone(),
            direction: t.direction,
            service_date: r.date,
            scheduled_start: utc(sched_ms(
                r.date,
                offset_ms,
                t.first_departure_s(),
                r.shift_s,
            )),
            confidence: r.confidence,
            next_stop: r.next,
            delay_s: r.delay_s,
            progress_m: f64::from(r.progress_dm) / 10.0,
            shift_s: r.shift_s,
        })
    }
}

/// Local service date of `ts_ms`.
fn local_date(ts_ms: i64, offset_ms: i64) -> NaiveDate {
    let day = (ts_ms + offset_ms).div_euclid(DAY_MS);
    NaiveDate::from_num_days_from_ce_opt(day as i32 + UNIX_EPOCH_CE_DAYS).unwrap_or_default()
}

/// UTC ms of `secs` after the local midnight of `date`, shifted by `shift_s`.
fn sched_ms(date: NaiveDate, offset_ms: i64, secs: i32, shift_s: i32) -> i64 {
    use chrono::Datelike;
    i64::from(date.num_days_from_ce() - UNIX_EPOCH_CE_DAYS) * DAY_MS - offset_ms
        + i64::from(secs + shift_s) * 1000
}

fn dm(m: f64) -> i32 {
    (m * 10.0).round() as i32
}

/// Feeds fix `s` of a bus on route `route_id` (with trips in `sched`); returns where
/// the fix is on the trip's shape when the bus runs a trip and is on that shape.
pub(crate) fn update(
    ctx: &mut Ctx<'_>,
    st: &mut TransitState,
    s: &Sample,
    sched: &Schedule,
    route_id: &str,
    corridor_m: f64,
) -> Option<RouteLocation> {
    let Some(rt) = sched.route(route_id) else {
        st.0 = None;
        return None;
    };
    let inner = st.0.get_or_insert_with(Default::default);
    let on = update_inner(ctx, inner, s, sched, rt, corridor_m);
    if inner.run.is_none() && inner.probes.is_empty() {
        st.0 = None;
    }
    on
}

fn update_inner(
    ctx: &mut Ctx<'_>,
    st: &mut Inner,
    s: &Sample,
    sched: &Schedule,
    rt: &RouteTrips,
    corridor_m: f64,
) -> Option<RouteLocation> {
    let (lon, lat) = (s.pos.lon(), s.pos.lat());
    let mut on_shape = None;
    let mut progressing = false;
    if let Some(run) = &mut st.run {
        let Some((_, trip)) = sched.trip(&run.trip) else {
            // The feed was reloaded without the trip.
            st.run = None;
            return None;
        };
        let sh = &sched.shapes[trip.shape as usize];
        let f = sh.track(lon, lat, run.seg, f64::from(run.progress_dm) / 10.0);
        let mut ended = None;
        if f.distance_m <= corridor_m {
            on_shape = Some(RouteLocation {
                distance_m: f.distance_m,
                progress_m: f.progress_m,
                part: 0,
            });
            run.seg = f.seg;
            let p = dm(f.progress_m);
            if p >= run.ok_dm + MOVED_DM {
                run.ok_ms = s.ts_ms;
                run.ok_dm = p;
            }
            // Probes run only while the bus is not moving along its trip.
            progressing = s.ts_ms - run.ok_ms < STALLED_MS;
            run.progress_dm = run.progress_dm.max(p);
            if stops(ctx, run, trip, sched, s) {
                ended = Some(true);
            }
        }
        if ended.is_none() && s.ts_ms - run.ok_ms > ctx.p.abandon_ms {
            ended = Some(false);
        }
        if let Some(completed) = ended {
            finish(ctx, st, sched, completed, s.ts_ms);
            // The next trip starts from the terminal: probe from here.
            st.probes.clear();
            return on_shape;
        }
    }
    if progressing {
        st.probes.clear();
    } else {
        probe(ctx, st, s, sched, rt, corridor_m);
    }
    on_shape
}

/// Resolves the stops of the trip the fix reaches; true when the run completed
/// (arrival at its last stop).
fn stops(
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    trip: &ScheduledTrip,
    sched: &Schedule,
    s: &Sample,
) -> bool {
    let (lon, lat) = (s.pos.lon(), s.pos.lat());
    let radius = ctx.p.stop_radius_m;
    let n = trip.stop_times.len();
    let progress_m = f64::from(run.progress_dm) / 10.0;
    loop {
        let k = run.next as usize;
        if k >= n {
            return true;
        }
        let stt = &trip.stop_times[k];
        let stop = &sched.stops[stt.stop as usize];
        let d = match (stop.lon, stop.lat) {
            (Some(x), Some(y)) => distance_m(lon, lat, x, y),
            _ => f64::INFINITY,
        };
        let inside = d <= radius;
        let stopped = !s.moving(ctx.p);
        match run.at {
            Some((arr, _, was)) if inside => {
                run.at = Some((arr, s.ts_ms, was || stopped));
                return false;
            }
            Some((arr, last, was)) => {
                // Left the stop: its departure is the last fix there. Driving
                // through without stopping is skipping it.
                let served = was || last - arr >= SERVED_MIN_MS;
                event(
                    ctx,
                    run,
                    trip,
                    sched,
                    k,
                    Some(arr),
                    Some(last),
                    None,
                    !served,
                    s.ts_ms,
                );
                if served {
                    run.served += 1;
                } else {
                    run.skipped += 1;
                    skipped_alert(ctx, run, trip, sched, k, s.mark());
                }
                run.at = None;
                run.next += 1;
            }
            None if inside => {
                run.at = Some((s.ts_ms, s.ts_ms, stopped));
                let dev = s.ts_ms - sched_ms(run.date, ctx.p.offset_ms, stt.arrival_s, run.shift_s);
                observe(ctx, run, trip, sched, k, dev, s.mark());
                if k + 1 == n {
                    run.served += 1;
                    event(
                        ctx,
                        run,
                        trip,
                        sched,
                        k,
                        Some(s.ts_ms),
                        None,
                        Some(dev),
                        false,
                        s.ts_ms,
                    );
                    run.next += 1;
                    return true;
                }
                // The arrival's deviation goes with the event at departure.
                return false;
            }
            None if progress_m > stt.dist_m + radius => {
                run.skipped += 1;
                event(ctx, run, trip, sched, k, None, None, None, true, s.ts_ms);
                skipped_alert(ctx, run, trip, sched, k, s.mark());
                run.next += 1;
            }
            None => return false,
        }
    }
}

/// Emits the stop event of stop `k`; `dev_ms` when known already (else from the
/// arrival, or the departure at the first stop).
#[allow(clippy::too_many_arguments)]
fn event(
    ctx: &mut Ctx<'_>,
    run: &Run,
    trip: &ScheduledTrip,
    sched: &Schedule,
    k: usize,
    arrival_ms: Option<i64>,
    departure_ms: Option<i64>,
    dev_ms: Option<i64>,
    skipped: bool,
    now_ms: i64,
) {
    let stt = &trip.stop_times[k];
    let off = ctx.p.offset_ms;
    let sa = sched_ms(run.date, off, stt.arrival_s, run.shift_s);
    let sd = sched_ms(run.date, off, stt.departure_s, run.shift_s);
    let dev = dev_ms.or(match (arrival_ms, departure_ms) {
        (Some(a), _) => Some(a - sa),
        (None, Some(d)) => Some(d - sd),
        _ => None,
    });
    ctx.out.stop_events.push(StopEvent {
        vehicle: ctx.vehicle.clone(),
        cooperative: ctx.cooperative.cloned(),
        trip_id: run.trip.clone(),
        service_date: run.date,
        stop_sequence: stt.seq,
        stop_id: sched.stops[stt.stop as usize].id.clone(),
        observed: utc(now_ms),
        scheduled_arrival: utc(sa),
        scheduled_departure: utc(sd),
        arrival: arrival_ms.map(utc),
        departure: departure_ms.map(utc),
        dwell_s: arrival_ms
            .zip(departure_ms)
            .map(|(a, d)| (d - a) as f64 / 1000.0),
        deviation_s: dev.map(|d| (d as f64 / 1000.0).round() as i32),
        skipped,
    });
}

fn tag(run: &Run) -> String {
    format!("{}:{}", run.trip, run.date)
}

fn skipped_alert(
    ctx: &mut Ctx<'_>,
    run: &Run,
    trip: &ScheduledTrip,
    sched: &Schedule,
    k: usize,
    at: Mark,
) {
    let stt = &trip.stop_times[k];
    let stop = &sched.stops[stt.stop as usize];
    let details = json!({
        "trip_id": run.trip,
        "route_id": trip.route,
        "service_date": run.date,
        "stop_id": stop.id,
        "stop_name": stop.name,
        "stop_sequence": stt.seq,
        "scheduled_arrival": utc(sched_ms(run.date, ctx.p.offset_ms, stt.arrival_s, run.shift_s)),
    });
    let tag = format!("{}:{}", tag(run), stt.seq);
    let mut d = ctx.draft(
        AlertKind::StopSkipped,
        ctx.p.skipped_level,
        AlertStatus::Closed,
        at,
        details,
    );
    d.end_ms = Some(at.ts_ms);
    d.tag = &tag;
    ctx.push(d);
}

/// A deviation of `dev_ms` observed at stop `k`: opens, keeps or closes the
/// schedule-deviation episode.
fn observe(
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    trip: &ScheduledTrip,
    sched: &Schedule,
    k: usize,
    dev_ms: i64,
    at: Mark,
) {
    let dev_s = (dev_ms as f64 / 1000.0).round() as i32;
    run.delay_s = Some(dev_s);
    let class = if dev_ms > ctx.p.late_ms {
        Some(true)
    } else if dev_ms < -ctx.p.early_ms {
        Some(false)
    } else {
        None
    };
    if let (Some(d), Some(late)) = (&mut run.dev, class) {
        if d.late == late {
            if dev_s.abs() > d.max_s.abs() {
                d.max_s = dev_s;
            }
            return;
        }
    }
    close_deviation(ctx, run, trip, at.ts_ms);
    if let Some(late) = class {
        let stt = &trip.stop_times[k];
        let d = Deviation {
            start: at,
            late,
            stop_id: sched.stops[stt.stop as usize].id.clone(),
            stop_seq: stt.seq,
            deviation_s: dev_s,
            max_s: dev_s,
        };
        emit_deviation(ctx, run, trip, &d, None);
        run.dev = Some(d);
    }
}

fn close_deviation(ctx: &mut Ctx<'_>, run: &mut Run, trip: &ScheduledTrip, end_ms: i64) {
    if let Some(d) = run.dev.take() {
        emit_deviation(ctx, run, trip, &d, Some(end_ms));
    }
}

fn emit_deviation(
    ctx: &mut Ctx<'_>,
    run: &Run,
    trip: &ScheduledTrip,
    d: &Deviation,
    end_ms: Option<i64>,
) {
    let bound_s = if d.late {
        ctx.p.late_ms
    } else {
        ctx.p.early_ms
    } / 1000;
    let details = json!({
        "trip_id": run.trip,
        "route_id": trip.route,
        "service_date": run.date,
        "direction": if d.late { "late" } else { "early" },
        "stop_id": d.stop_id,
        "stop_sequence": d.stop_seq,
        "deviation_s": d.deviation_s,
        "max_deviation_s": d.max_s,
        "bound_s": bound_s,
    });
    let status = if end_ms.is_some() {
        AlertStatus::Closed
    } else {
        AlertStatus::Open
    };
    let tag = format!("{}:{}", tag(run), if d.late { "late" } else { "early" });
    let level: Level = ctx.p.deviation_level;
    let mut a = ctx.draft(
        AlertKind::ScheduleDeviation,
        level,
        status,
        d.start,
        details,
    );
    a.end_ms = end_ms;
    a.tag = &tag;
    ctx.push(a);
}

/// Ends the run: closes its deviation episode and reports it.
fn finish(ctx: &mut Ctx<'_>, st: &mut Inner, sched: &Schedule, completed: bool, at_ms: i64) {
    let Some(mut run) = st.run.take() else {
        return;
    };
    let Some((_, trip)) = sched.trip(&run.trip) else {
        return;
    };
    let end_ms = if completed { at_ms } else { run.ok_ms };
    // Ended standing at a stop: it was served.
    if let Some((arr, last, was)) = run.at.take() {
        let k = run.next as usize;
        if k < trip.stop_times.len() {
            let served = was || last - arr >= SERVED_MIN_MS;
            event(
                ctx,
                &run,
                trip,
                sched,
                k,
                Some(arr),
                Some(last),
                None,
                !served,
                at_ms,
            );
            if served {
                run.served += 1;
            } else {
                run.skipped += 1;
            }
        }
    }
    let end_ms = end_ms.max(run.ok_ms);
    close_deviation(ctx, &mut run, trip, end_ms);
    ctx.out.trip_runs.push(TripRun {
        vehicle: ctx.vehicle.clone(),
        cooperative: ctx.cooperative.cloned(),
        trip_id: run.trip.clone(),
        route_id: trip.route.clone(),
        service_date: run.date,
        scheduled_start: utc(sched_ms(
            run.date,
            ctx.p.offset_ms,
            trip.first_departure_s(),
            run.shift_s,
        )),
        start: utc(run.start_ms),
        end: utc(end_ms),
        confidence: run.confidence,
        completed,
        stops_served: run.served,
        stops_skipped: run.skipped,
        stops_total: trip.stop_times.len() as u16,
        last_delay_s: run.delay_s,
        // Kilometres in service: along the trip's shape, from where the run started
        // to the furthest point reached (GPS zigzag does not add to it); a completed
        // run reached its last stop, though it ends on entering the stop's radius.
        distance_m: run.start_dm.map(|d| {
            let last_dm = trip.stop_times.last().map_or(0, |l| dm(l.dist_m));
            let reached = if completed {
                run.progress_dm.max(last_dm)
            } else {
                run.progress_dm
            };
            f64::from((reached - d).max(0)) / 10.0
        }),
    });
}

/// A trip a probe may be running.
struct Cand {
    trip: u32,
    date: NaiveDate,
    shift_s: i32,
    delta_ms: i64,
    from_start: bool,
    since_ms: i64,
    progress_m: f64,
    shape: u32,
    /// Progress where the run starts, decimetres.
    start_dm: i32,
}

/// Updates the probes with fix `s` and starts a run when one matches a trip.
fn probe(
    ctx: &mut Ctx<'_>,
    st: &mut Inner,
    s: &Sample,
    sched: &Schedule,
    rt: &RouteTrips,
    corridor_m: f64,
) {
    let (lon, lat) = (s.pos.lon(), s.pos.lat());
    let radius = ctx.p.stop_radius_m;
    let now = s.ts_ms;
    let mut best: Option<(Cand, i64)> = None;
    for &si in &rt.shapes {
        let sh = &sched.shapes[si as usize];
        let loc = sh.locate(lon, lat);
        let at = st.probes.iter().position(|p| p.shape == sh.id);
        if loc.distance_m > corridor_m {
            if let Some(i) = at {
                st.probes.remove(i);
            }
            continue;
        }
        let p = dm(loc.progress_m);
        let Some(i) = at else {
            st.probes.push(Probe {
                shape: sh.id.clone(),
                since_ms: now,
                from_dm: p,
                last_dm: p,
                tried: false,
            });
            continue;
        };
        let pr = &mut st.probes[i];
        if loc.progress_m <= radius || p < pr.last_dm - BACK_NOISE_DM {
            // Restart in place: keeps the shape id's allocation (a fix per second
            // waiting at the terminal would otherwise allocate per shape).
            pr.since_ms = now;
            pr.from_dm = p;
            pr.last_dm = p;
            pr.tried = false;
            continue;
        }
        pr.last_dm = pr.last_dm.max(p);
        if pr.tried {
            continue;
        }
        let need_m = ctx
            .p
            .confirm_m
            .min((sh.first_gap_m - radius - 1.0).max(20.0));
        if f64::from(pr.last_dm - pr.from_dm) / 10.0 < need_m {
            continue;
        }
        pr.tried = true;
        let from_start = f64::from(pr.from_dm) / 10.0 <= radius;
        let since_ms = pr.since_ms;
        let from_dm = pr.from_dm;
        let current = st
            .run
            .as_ref()
            .map(|r| (r.trip.as_str(), r.date, r.shift_s));
        if let Some(c) = choose(
            ctx,
            sched,
            rt,
            si,
            loc.progress_m,
            now,
            from_start.then_some(since_ms),
            current,
        ) {
            let (mut cand, second) = c;
            cand.start_dm = if cand.from_start { from_dm } else { p };
            if best
                .as_ref()
                .is_none_or(|(b, _)| cand.delta_ms.abs() < b.delta_ms.abs())
            {
                best = Some((cand, second));
            }
        }
    }
    let Some((c, second_ms)) = best else {
        return;
    };
    // A new trip while one runs: the bus turned back or changed shape.
    if st.run.is_some() {
        let ok = st.run.as_ref().map_or(now, |r| r.ok_ms);
        finish(ctx, st, sched, false, ok);
    }
    let window = ctx.p.match_window_ms as f64;
    let mut conf = (1.0 - c.delta_ms.abs() as f64 / window).clamp(0.0, 1.0);
    if !c.from_start {
        conf *= 0.7;
    }
    // Another trip about as near in time: ambiguous.
    if second_ms - c.delta_ms.abs() < 60_000 {
        conf *= 0.5;
    }
    let trip = &sched.trips[c.trip as usize];
    let sh = &sched.shapes[c.shape as usize];
    let mut run = Run {
        trip: trip.id.clone(),
        date: c.date,
        shift_s: c.shift_s,
        start_ms: if c.from_start { c.since_ms } else { now },
        confidence: (conf * 100.0).round() as u8,
        seg: sh.seg_at(c.progress_m),
        progress_dm: dm(c.progress_m),
        next: 0,
        at: None,
        ok_ms: now,
        ok_dm: dm(c.progress_m),
        served: 0,
        skipped: 0,
        // Left from the first stop: in service from the stop, not from where the
        // bus left its radius.
        start_dm: Some(if c.from_start {
            c.start_dm.min(dm(trip.stop_times[0].dist_m))
        } else {
            c.start_dm
        }),
        delay_s: None,
        dev: None,
    };
    let first = &trip.stop_times[0];
    if c.from_start && first.dist_m <= radius {
        // Left the first stop at the probe's start.
        run.served = 1;
        let dev = c.since_ms - sched_ms(c.date, ctx.p.offset_ms, first.departure_s, c.shift_s);
        let mark = Mark {
            ts_ms: c.since_ms,
            pos: s.pos,
        };
        observe(ctx, &mut run, trip, sched, 0, dev, mark);
        event(
            ctx,
            &run,
            trip,
            sched,
            0,
            None,
            Some(c.since_ms),
            Some(dev),
            false,
            now,
        );
        run.next = 1;
    } else {
        // Joined mid-trip: the stops behind are not observed.
        let k = trip
            .stop_times
            .iter()
            .position(|x| x.dist_m + radius >= c.progress_m)
            .unwrap_or(trip.stop_times.len());
        run.next = k as u16;
    }
    st.probes.clear();
    let done = stops(ctx, &mut run, trip, sched, s);
    st.run = Some(run);
    if done {
        finish(ctx, st, sched, true, now);
    }
}

/// The trip of shape `si` running nearest the schedule at `progress_m` at `now_ms`
/// (or, when `depart_ms` is given, at its first departure), within the match window,
/// with the second-nearest distance in time (ms, `i64::MAX` when none). `current`
/// (the run the bus is on) is not a candidate.
#[allow(clippy::too_many_arguments)]
fn choose(
    ctx: &Ctx<'_>,
    sched: &Schedule,
    rt: &RouteTrips,
    si: u32,
    progress_m: f64,
    now_ms: i64,
    depart_ms: Option<i64>,
    current: Option<(&str, NaiveDate, i32)>,
) -> Option<(Cand, i64)> {
    let off = ctx.p.offset_ms;
    let radius = ctx.p.stop_radius_m;
    let today = local_date(now_ms, off);
    let days = [today, today.pred_opt().unwrap_or(today)];
    let mut best: Option<Cand> = None;
    let mut second = i64::MAX;
    for &ti in &rt.trips {
        let t = &sched.trips[ti as usize];
        if t.shape != si {
            continue;
        }
        let (Some(first), Some(last)) = (t.stop_times.first(), t.stop_times.last()) else {
            continue;
        };
        // A trip that ends behind the bus, or starts ahead of it, is not it.
        if progress_m > last.dist_m + radius || progress_m + radius < first.dist_m {
            continue;
        }
        let from_start = depart_ms.is_some() && first.dist_m <= radius;
        let (at_s, at_ms) = match depart_ms.filter(|_| from_start) {
            Some(d) => (f64::from(first.departure_s), d),
            None => (t.time_at_s(progress_m), now_ms),
        };
        for date in days {
            if !sched.runs_on(t, date) {
                continue;
            }
            let midnight = sched_ms(date, off, 0, 0);
            let shifts: Vec<i32> = if t.frequencies.is_empty() {
                vec![0]
            } else {
                // The departure of each headway period nearest the observed time.
                let rel = at_s - f64::from(t.first_departure_s());
                t.frequencies
                    .iter()
                    .map(|f| {
                        let want = (at_ms - midnight) as f64 / 1000.0 - rel;
                        let n = ((f.end_s - f.start_s - 1) / f.headway_s).max(0);
                        let k = ((want - f64::from(f.start_s)) / f64::from(f.headway_s))
                            .round()
                            .clamp(0.0, f64::from(n)) as i32;
                        f.start_s + k * f.headway_s - t.first_departure_s()
                    })
                    .collect()
            };
            for shift_s in shifts {
                if current == Some((t.id.as_str(), date, shift_s)) {
                    continue;
                }
                let sched_at = midnight + ((at_s + f64::from(shift_s)) * 1000.0).round() as i64;
                let delta_ms = at_ms - sched_at;
                if delta_ms.abs() > ctx.p.match_window_ms {
                    continue;
                }
                let c = Cand {
                    trip: ti,
                    date,
                    shift_s,
                    delta_ms,
                    from_start,
                    since_ms: depart_ms.unwrap_or(now_ms),
                    progress_m,
                    shape: si,
                    start_dm: dm(progress_m),
                };
                match &best {
                    Some(b) if b.delta_ms.abs() <= delta_ms.abs() => {
                        second = second.min(delta_ms.abs());
                    }
                    _ => {
                        if let Some(b) = &best {
                            second = second.min(b.delta_ms.abs());
                        }
                        best = Some(c);
                    }
                }
            }
        }
    }
    best.map(|b| (b, second))
}
