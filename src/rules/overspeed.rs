//! Overspeed: an episode is a continuous run of fixes above the limit; it becomes a
//! violation once it has lasted the minimum duration (first to last fix above the
//! limit, event time) and is closed by the first fix at or below the limit.
//!
//! The limit of a fix is the lowest of its class limit and the limits of the speed
//! zones it is in (resolved by the engine). Severity is the band of the episode's
//! largest excess; episodes not over the "counted" excess are flagged `counted: false`.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::alert::{AlertKind, AlertStatus, Level};
use super::state::{kmh, secs, Ctx, Mark, Sample};

/// An episode in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Episode {
    start: Mark,
    last_ms: i64,
    max_speed_ckmh: u16,
    max_excess_ckmh: i32,
    /// The limit in force at the fix of the largest excess.
    limit_at_max_ckmh: i32,
    /// Already reported as an Open violation.
    open: bool,
}

impl Episode {
    /// First fix of the episode, ms.
    pub(crate) fn start_ms(&self) -> i64 {
        self.start.ts_ms
    }
}

/// Feeds fix `s` with its limit (`None`: no limit applies).
pub(crate) fn update(
    ctx: &mut Ctx<'_>,
    st: &mut Option<Episode>,
    s: &Sample,
    limit_ckmh: Option<i32>,
) {
    let excess = limit_ckmh.map(|l| i32::from(s.speed_ckmh) - l);
    let (Some(limit), Some(excess)) = (limit_ckmh, excess.filter(|e| *e > 0)) else {
        if let Some(ep) = st.take() {
            finish(ctx, ep);
        }
        return;
    };
    // A long silence splits the run: overspeed is not invented across signal loss.
    if st
        .as_ref()
        .is_some_and(|ep| s.ts_ms - ep.last_ms > ctx.p.os_max_gap_ms)
    {
        if let Some(ep) = st.take() {
            finish(ctx, ep);
        }
    }
    let ep = st.get_or_insert_with(|| Episode {
        start: s.mark(),
        last_ms: s.ts_ms,
        max_speed_ckmh: s.speed_ckmh,
        max_excess_ckmh: excess,
        limit_at_max_ckmh: limit,
        open: false,
    });
    ep.last_ms = s.ts_ms;
    ep.max_speed_ckmh = ep.max_speed_ckmh.max(s.speed_ckmh);
    if excess > ep.max_excess_ckmh {
        ep.max_excess_ckmh = excess;
        ep.limit_at_max_ckmh = limit;
    }
    if !ep.open && ep.last_ms - ep.start.ts_ms >= ctx.p.os_min_ms {
        ep.open = true;
        let ep = ep.clone();
        emit(ctx, &ep, AlertStatus::Open);
    }
}

fn finish(ctx: &mut Ctx<'_>, ep: Episode) {
    if ep.open {
        emit(ctx, &ep, AlertStatus::Closed);
    }
}

fn emit(ctx: &mut Ctx<'_>, ep: &Episode, status: AlertStatus) {
    let duration_ms = ep.last_ms - ep.start.ts_ms;
    let details = json!({
        "max_speed_kmh": kmh(i32::from(ep.max_speed_ckmh)),
        "limit_kmh": kmh(ep.limit_at_max_ckmh),
        "max_excess_kmh": kmh(ep.max_excess_ckmh),
        "duration_s": secs(duration_ms),
        "counted": ep.max_excess_ckmh > ctx.p.os_counted_over_ckmh,
    });
    let mut d = ctx.draft(
        AlertKind::Overspeed,
        Level::Violation,
        status,
        ep.start,
        details,
    );
    d.severity = ctx.p.severity(ep.max_excess_ckmh);
    if status == AlertStatus::Closed {
        d.end_ms = Some(ep.last_ms);
    }
    ctx.push(d);
}
