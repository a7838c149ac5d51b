//! Stops and trips for reports: a stop is being stopped for at least `min_stop`
//! (from the first stopped fix to the first moving one); a trip runs from the end of
//! one stop to the start of the next, with its distance (sum of the straight lines
//! between consecutive fixes) and maximum speed. Both are emitted once complete.

use serde::{Deserialize, Serialize};

use super::alert::utc;
use super::state::{kmh, Ctx, Mark, Sample};
use super::{Stop, Trip};
use crate::domain::DriverId;
use crate::geo::distance_m;

/// Stop/trip state of one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct MotionState {
    trip: Option<TripRun>,
    stop: Option<StopRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TripRun {
    start: Mark,
    driver: Option<DriverId>,
    distance_mm: i64,
    max_speed_ckmh: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StopRun {
    start: Mark,
    /// Long enough already; the trip before it has been emitted.
    qualified: bool,
    /// Trip distance when the stop began: drift while parked is not travel.
    trip_distance_mm: i64,
}

/// Feeds fix `s` (moving or not) after `prev`.
pub(crate) fn update(
    ctx: &mut Ctx<'_>,
    st: &mut MotionState,
    prev: Option<&Sample>,
    s: &Sample,
    moving: bool,
) {
    if let (Some(p), Some(trip)) = (prev, st.trip.as_mut()) {
        let d = distance_m(p.pos.lon(), p.pos.lat(), s.pos.lon(), s.pos.lat());
        trip.distance_mm += (d * 1000.0).round() as i64;
        trip.max_speed_ckmh = trip.max_speed_ckmh.max(s.speed_ckmh);
    }
    if !moving {
        let trip_distance_mm = st.trip.as_ref().map_or(0, |t| t.distance_mm);
        let stop = st.stop.get_or_insert(StopRun {
            start: s.mark(),
            qualified: false,
            trip_distance_mm,
        });
        if !stop.qualified && s.ts_ms - stop.start.ts_ms >= ctx.p.min_stop_ms {
            qualify(ctx, st);
        }
        return;
    }
    if let Some(stop) = st.stop.as_ref() {
        if !stop.qualified && s.ts_ms - stop.start.ts_ms >= ctx.p.min_stop_ms {
            qualify(ctx, st);
        }
    }
    if let Some(stop) = st.stop.take() {
        if stop.qualified {
            ctx.out.stops.push(Stop {
                vehicle: ctx.vehicle.clone(),
                cooperative: ctx.cooperative.cloned(),
                start: utc(stop.start.ts_ms),
                end: utc(s.ts_ms),
                duration_s: (s.ts_ms - stop.start.ts_ms) as f64 / 1000.0,
                lat: stop.start.pos.lat(),
                lon: stop.start.pos.lon(),
            });
        }
    }
    if st.trip.is_none() {
        st.trip = Some(TripRun {
            start: s.mark(),
            driver: s.driver.clone(),
            distance_mm: 0,
            max_speed_ckmh: s.speed_ckmh,
        });
    }
}

/// The current stop has lasted long enough: the trip before it ends at its start.
fn qualify(ctx: &mut Ctx<'_>, st: &mut MotionState) {
    let Some(stop) = st.stop.as_mut() else {
        return;
    };
    stop.qualified = true;
    if let Some(trip) = st.trip.take() {
        let end = stop.start;
        ctx.out.trips.push(Trip {
            vehicle: ctx.vehicle.clone(),
            cooperative: ctx.cooperative.cloned(),
            driver: trip.driver,
            start: utc(trip.start.ts_ms),
            end: utc(end.ts_ms),
            start_lat: trip.start.pos.lat(),
            start_lon: trip.start.pos.lon(),
            end_lat: end.pos.lat(),
            end_lon: end.pos.lon(),
            distance_m: stop.trip_distance_mm as f64 / 1000.0,
            duration_s: (end.ts_ms - trip.start.ts_ms) as f64 / 1000.0,
            max_speed_kmh: kmh(i32::from(trip.max_speed_ckmh)),
        });
    }
}
