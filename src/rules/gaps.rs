//! Data gaps: two consecutive fixes further apart than the sending cadence (30 s
//! while moving, 15 min otherwise; Circular 09/2015) make one `DataGap` Info record
//! for completeness reports.
//!
//! The moving cadence applies only when both fixes are moving: a vehicle that parks
//! (or starts) between them legitimately switches to the stopped cadence, and we
//! cannot tell when.

use serde_json::json;

use super::alert::{AlertKind, AlertStatus, Level};
use super::state::{secs, Ctx, Sample};

/// Checks the gap between `prev` and `s`.
pub(crate) fn check(ctx: &mut Ctx<'_>, prev: &Sample, s: &Sample, both_moving: bool) {
    let gap_ms = s.ts_ms - prev.ts_ms;
    let max_ms = if both_moving {
        ctx.p.gap_moving_ms
    } else {
        ctx.p.gap_stopped_ms
    };
    if gap_ms <= max_ms {
        return;
    }
    let details = json!({
        "duration_s": secs(gap_ms),
        "cadence_s": secs(max_ms),
        "moving": both_moving,
    });
    let mut d = ctx.draft(
        AlertKind::DataGap,
        Level::Info,
        AlertStatus::Closed,
        prev.mark(),
        details,
    );
    d.end_ms = Some(s.ts_ms);
    ctx.push(d);
}
