//! No signal: the one rule on processing time. `Engine::tick(now)` opens an alert for
//! a vehicle whose newest fix's own timestamp is more than `after` before `now`; the
//! next fix pushed for it closes the alert (end = that fix's time).
//!
//! Comparing `now` with the fix time (not the receive time) keeps the state free of
//! wall-clock values, so a checkpoint restored elsewhere behaves the same; a device
//! whose clock runs late just looks silent sooner.

use serde_json::json;

use super::alert::{AlertKind, AlertStatus, Level};
use super::state::{secs, Ctx, Mark};

/// Opens the alert if the vehicle has been silent too long; returns the mark to keep.
pub(crate) fn check(ctx: &mut Ctx<'_>, newest: Mark, now_ms: i64) -> Option<Mark> {
    let silent_ms = now_ms - newest.ts_ms;
    if silent_ms <= ctx.p.no_signal_ms {
        return None;
    }
    let details = json!({ "silent_s": secs(silent_ms), "threshold_s": secs(ctx.p.no_signal_ms) });
    let d = ctx.draft(
        AlertKind::NoSignal,
        Level::Violation,
        AlertStatus::Open,
        newest,
        details,
    );
    ctx.push(d);
    Some(newest)
}

/// Closes an open alert because a fix at `ts_ms` arrived.
pub(crate) fn close(ctx: &mut Ctx<'_>, since: Mark, ts_ms: i64) {
    let details =
        json!({ "silent_s": secs(ts_ms - since.ts_ms), "threshold_s": secs(ctx.p.no_signal_ms) });
    let mut d = ctx.draft(
        AlertKind::NoSignal,
        Level::Violation,
        AlertStatus::Closed,
        since,
        details,
    );
    d.end_ms = Some(ts_ms);
    ctx.push(d);
}
