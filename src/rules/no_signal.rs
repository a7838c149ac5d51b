//! No signal: the one rule on processing time. `Engine::tick(now)` opens an alert for
//! a vehicle not heard from for more than `after` before `now`; the next fix pushed
//! for it closes the alert (end = that fix's time).
//!
//! "Heard" is the receive time the pipeline reports (`Engine::heard`), so a device
//! uploading a buffered backlog, or a replay of old fixes, is not silent; receive
//! times are never checkpointed (silence restarts counting at a restart). Without
//! receive times (pure replays, tests), the newest fix's own time is used.

use serde_json::json;

use super::alert::{AlertKind, AlertStatus, Level};
use super::state::{secs, Ctx, Mark};

/// Opens the alert if the vehicle has been silent too long; returns the mark to keep.
pub(crate) fn check(ctx: &mut Ctx<'_>, newest: Mark, silent_ms: i64) -> Option<Mark> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Duration, TimeZone, Utc};

    use crate::domain::{Fix, FixCandidate, FixLimits, VehicleId};
    use crate::geo::GeoIndex;
    use crate::rules::{AlertKind, Engine, RulesConfig};

    fn fix(ts: DateTime<Utc>) -> Fix {
        let c = FixCandidate {
            ts: Some(ts),
            lat: 10.9,
            lon: 106.7,
            speed_kmh: Some(30.0),
            ..FixCandidate::default()
        };
        Fix::validate(
            c,
            VehicleId::parse("V1").unwrap(),
            &FixLimits::default(),
            ts,
        )
        .unwrap()
    }

    #[test]
    fn silence_counts_from_receive_time_when_known() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap();
        let mut e = Engine::new(RulesConfig::default(), Arc::new(GeoIndex::empty()), vec![]);
        let v = VehicleId::parse("V1").unwrap();
        // A fix from an hour ago, received just now (a buffered upload): not silent.
        e.push(&fix(t0 - Duration::hours(1)));
        e.heard(&v, t0);
        assert!(e.tick(t0 + Duration::minutes(14)).is_empty());
        // Nothing heard for 16 minutes: one alert, not repeated on the next tick.
        let alerts = e.tick(t0 + Duration::minutes(16));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::NoSignal);
        assert!(e.tick(t0 + Duration::minutes(17)).is_empty());
    }
}
