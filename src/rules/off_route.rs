//! Wrong route, for vehicles with an assigned route: outside the corridor
//! (distance > corridor) continuously for `leave_after` opens an alert starting at
//! the first outside fix; inside continuously for `back_after` closes it. The two
//! time thresholds are the hysteresis: GPS noise at the corridor's edge resets the
//! runs but never opens or closes a second alert.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::alert::{AlertKind, AlertStatus, Level};
use super::state::{secs, Ctx, Mark, Sample};
use crate::geo::{RouteIndex, RouteLocation};

/// Off-route state of one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct OffRouteState {
    /// First fix of the current outside run (and the alert's start once open).
    outside_since: Option<Mark>,
    /// Progress along the nearest part at that fix, metres (rounded).
    progress_m: i64,
    /// That part's position in the route's parts.
    part: u32,
    /// Largest distance from the route in the run / episode, centimetres.
    max_cm: i64,
    /// First fix of the current inside run while the alert is open.
    inside_since_ms: Option<i64>,
    /// The alert is open.
    open: bool,
}

impl OffRouteState {
    /// First fix of the current outside run (the open alert's start), ms.
    pub(crate) fn since_ms(&self) -> Option<i64> {
        self.outside_since.map(|m| m.ts_ms)
    }

    /// An off-route alert is open.
    pub(crate) fn is_off(&self) -> bool {
        self.open
    }
}

/// Feeds fix `s` located at `loc` relative to `route`; `on_route_anyway` (in a depot
/// or terminal zone) and being near one of the route's terminals count as inside
/// whatever the distance.
pub(crate) fn update(
    ctx: &mut Ctx<'_>,
    st: &mut OffRouteState,
    s: &Sample,
    route: &RouteIndex,
    loc: RouteLocation,
    on_route_anyway: bool,
) {
    let corridor_m = route.corridor_m().unwrap_or(ctx.p.corridor_m);
    // The terminal test only for fixes outside the corridor: on-route fixes skip it.
    let outside = !on_route_anyway
        && loc.distance_m > corridor_m
        && !route.at_terminal(s.pos.lon(), s.pos.lat());
    let dist_cm = (loc.distance_m * 100.0).round() as i64;
    if outside {
        st.inside_since_ms = None;
        match st.outside_since {
            None => {
                st.outside_since = Some(s.mark());
                st.progress_m = loc.progress_m.round() as i64;
                st.part = loc.part as u32;
                st.max_cm = dist_cm;
            }
            Some(_) => st.max_cm = st.max_cm.max(dist_cm),
        }
        if let Some(start) = st
            .outside_since
            .filter(|m| !st.open && s.ts_ms - m.ts_ms >= ctx.p.leave_ms)
        {
            st.open = true;
            emit(
                ctx,
                st,
                start,
                route,
                corridor_m,
                s.ts_ms,
                AlertStatus::Open,
            );
        }
    } else if st.open {
        let since = *st.inside_since_ms.get_or_insert(s.ts_ms);
        if s.ts_ms - since >= ctx.p.back_ms {
            if let Some(start) = st.outside_since {
                emit(
                    ctx,
                    st,
                    start,
                    route,
                    corridor_m,
                    since,
                    AlertStatus::Closed,
                );
            }
            *st = OffRouteState::default();
        }
    } else {
        st.outside_since = None;
    }
}

/// `until_ms`: the fix that opened the alert, or the first fix back inside.
fn emit(
    ctx: &mut Ctx<'_>,
    st: &OffRouteState,
    start: Mark,
    route: &RouteIndex,
    corridor_m: f64,
    until_ms: i64,
    status: AlertStatus,
) {
    let details = json!({
        "route_id": route.id(),
        "corridor_m": corridor_m,
        "max_distance_m": st.max_cm as f64 / 100.0,
        "progress_m": st.progress_m,
        "part": st.part,
        "duration_s": secs(until_ms - start.ts_ms),
    });
    let mut d = ctx.draft(
        AlertKind::OffRoute,
        Level::Violation,
        status,
        start,
        details,
    );
    d.tag = route.id();
    if status == AlertStatus::Closed {
        d.end_ms = Some(until_ms);
    }
    ctx.push(d);
}
