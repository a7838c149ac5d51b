//! Driving time (Law 36/2024 art. 64): continuous, daily and weekly, per driver when
//! the fix carries one, else per vehicle.
//!
//! The interval between two consecutive fixes of a vehicle is driving when the
//! earlier fix is moving and the two are at most `max_counted_gap` apart (no hours of
//! driving are invented across signal loss). Continuous driving ends after a break:
//! no driving for at least `break_min` (stopped fixes, ignition off, or silence), or
//! when another driver logs in on the vehicle (a logout alone does not end it: the
//! driver may log in on another vehicle, and the break clock follows the driver).
//! Days and ISO weeks are local (`utc_offset`); a drive across local midnight is
//! split between the two days. A silence of at least `break_min` after a moving fix
//! counts as a break: a violation needs evidence of driving, and the silence itself
//! is reported as a data gap.

use chrono::{DateTime, Datelike};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::alert::{AlertKind, AlertStatus, Level};
use super::state::{secs, Ctx, Mark, Sample};
use crate::domain::{CooperativeId, DriverId, VehicleId};

const DAY_MS: i64 = 86_400_000;

/// Driving-time accumulators of one driver (or of a vehicle without driver).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrivingState {
    /// End of the last driving interval, ms: breaks are measured from it.
    last_drive_end_ms: Option<i64>,
    /// Continuous driving so far, ms.
    cont_ms: i64,
    /// Where the continuous driving began.
    cont_start: Option<Mark>,
    cont_warning: Option<Box<Opened>>,
    cont_violation: Option<Box<Opened>>,
    /// Local day number (days since 1970-01-01 local) and driving in it, ms.
    day: i32,
    day_ms: i64,
    day_alert: Option<Box<Opened>>,
    /// Local ISO week number (weeks since the Monday before 1970-01-01) and driving, ms.
    week: i32,
    week_ms: i64,
    week_alert: Option<Box<Opened>>,
}

/// An open driving-time alert: enough to emit it again, identically, when it closes
/// (possibly from another vehicle the driver moved to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Opened {
    start: Mark,
    vehicle: VehicleId,
    cooperative: Option<CooperativeId>,
    /// Driving at opening, ms.
    driving_ms: i64,
}

impl DrivingState {
    /// Event time of the last driving seen, ms (to pick the newer of two checkpoints).
    pub(crate) fn last_activity_ms(&self) -> i64 {
        self.last_drive_end_ms.unwrap_or(i64::MIN)
    }

    /// The live figures: continuous driving (ms) and the end of the last driving
    /// (ms), the local day with its driving (ms), and the week's driving (ms).
    pub(crate) fn figures(&self) -> (i64, Option<i64>, chrono::NaiveDate, i64, i64) {
        let day = DateTime::from_timestamp(i64::from(self.day) * 86_400, 0)
            .unwrap_or(DateTime::UNIX_EPOCH)
            .date_naive();
        (
            self.cont_ms,
            self.last_drive_end_ms,
            day,
            self.day_ms,
            self.week_ms,
        )
    }

    /// Starts (ms) of what is in progress: the continuous run when `runs` (the
    /// state is the vehicle's own or its current driver's), and the open alerts that
    /// were opened on `vehicle`.
    pub(crate) fn pending_ms(&self, vehicle: &VehicleId, runs: bool, out: &mut Vec<i64>) {
        if runs {
            out.extend(self.cont_start.map(|m| m.ts_ms));
        }
        let open = [
            &self.cont_warning,
            &self.cont_violation,
            &self.day_alert,
            &self.week_alert,
        ];
        out.extend(
            open.into_iter()
                .flatten()
                .filter(|op| op.vehicle == *vehicle)
                .map(|op| op.start.ts_ms),
        );
    }
}

/// Accounts the interval from `p` to `s` (consecutive fixes of one vehicle) for
/// `driver` (`None`: the vehicle itself); `driving` says whether it counts as driving.
pub(crate) fn on_interval(
    ctx: &mut Ctx<'_>,
    st: &mut DrivingState,
    driver: Option<&DriverId>,
    p: &Sample,
    s: &Sample,
    driving: bool,
) {
    let pp = ctx.p;
    if !driving {
        if st.cont_ms > 0
            && st
                .last_drive_end_ms
                .is_some_and(|e| s.ts_ms - e >= pp.break_ms)
        {
            end_continuous(ctx, st, driver, "break");
        }
        roll(ctx, st, driver, local_day(s.ts_ms, pp.offset_ms));
        return;
    }
    if st
        .last_drive_end_ms
        .is_some_and(|e| p.ts_ms - e >= pp.break_ms)
    {
        end_continuous(ctx, st, driver, "break");
    }
    if st.cont_ms == 0 {
        st.cont_start = Some(p.mark());
    }
    // Daily and weekly, split at local midnights (a week starts at a midnight too).
    let mut a = p.ts_ms;
    while a < s.ts_ms {
        let day = local_day(a, pp.offset_ms);
        let b = s.ts_ms.min(day_start_ms(day + 1, pp.offset_ms));
        roll(ctx, st, driver, day);
        let before = st.day_ms;
        st.day_ms += b - a;
        if before <= pp.daily_max_ms && st.day_ms > pp.daily_max_ms && st.day_alert.is_none() {
            let at = Mark {
                ts_ms: a + (pp.daily_max_ms - before),
                pos: s.pos,
            };
            let op = opened(ctx, at, st.day_ms);
            emit(
                ctx,
                AlertKind::DailyDriving,
                Level::Violation,
                AlertStatus::Open,
                &op,
                driver,
                None,
                period_details(st, true, pp.daily_max_ms),
            );
            st.day_alert = Some(Box::new(op));
        }
        if let Some(max) = pp.weekly_max_ms {
            let before = st.week_ms;
            st.week_ms += b - a;
            if before <= max && st.week_ms > max && st.week_alert.is_none() {
                let at = Mark {
                    ts_ms: a + (max - before),
                    pos: s.pos,
                };
                let op = opened(ctx, at, st.week_ms);
                emit(
                    ctx,
                    AlertKind::WeeklyDriving,
                    Level::Violation,
                    AlertStatus::Open,
                    &op,
                    driver,
                    None,
                    period_details(st, false, max),
                );
                st.week_alert = Some(Box::new(op));
            }
        }
        st.last_drive_end_ms = Some(b);
        a = b;
    }
    let before = st.cont_ms;
    st.cont_ms += s.ts_ms - p.ts_ms;
    let start = st.cont_start.unwrap_or_else(|| p.mark());
    if let Some(w) = pp.cont_warn_ms {
        if before < w && st.cont_ms >= w && st.cont_warning.is_none() {
            let op = opened(ctx, start, st.cont_ms);
            let det = cont_details(&op, st, pp.cont_max_ms, None);
            emit(
                ctx,
                AlertKind::ContinuousDriving,
                Level::Warning,
                AlertStatus::Open,
                &op,
                driver,
                None,
                det,
            );
            st.cont_warning = Some(Box::new(op));
        }
    }
    if before <= pp.cont_max_ms && st.cont_ms > pp.cont_max_ms && st.cont_violation.is_none() {
        let op = opened(ctx, start, st.cont_ms);
        let det = cont_details(&op, st, pp.cont_max_ms, None);
        emit(
            ctx,
            AlertKind::ContinuousDriving,
            Level::Violation,
            AlertStatus::Open,
            &op,
            driver,
            None,
            det,
        );
        st.cont_violation = Some(Box::new(op));
    }
}

/// Ends continuous driving (break taken, or `driver` logged out): closes its alerts.
pub(crate) fn end_continuous(
    ctx: &mut Ctx<'_>,
    st: &mut DrivingState,
    driver: Option<&DriverId>,
    reason: &str,
) {
    let end = st.last_drive_end_ms;
    for (op, level) in [
        (st.cont_warning.take(), Level::Warning),
        (st.cont_violation.take(), Level::Violation),
    ] {
        if let Some(op) = op {
            let det = cont_details(&op, st, ctx.p.cont_max_ms, Some(reason));
            emit(
                ctx,
                AlertKind::ContinuousDriving,
                level,
                AlertStatus::Closed,
                &op,
                driver,
                end,
                det,
            );
        }
    }
    st.cont_ms = 0;
    st.cont_start = None;
}

/// Moves to local `day` (and its week): closes the previous day's / week's alerts.
/// Earlier days (a driver's fixes from two vehicles slightly out of order) count in
/// the current one.
fn roll(ctx: &mut Ctx<'_>, st: &mut DrivingState, driver: Option<&DriverId>, day: i32) {
    let end = st.last_drive_end_ms;
    if day > st.day {
        if let Some(op) = st.day_alert.take() {
            let det = period_details(st, true, ctx.p.daily_max_ms);
            emit(
                ctx,
                AlertKind::DailyDriving,
                Level::Violation,
                AlertStatus::Closed,
                &op,
                driver,
                end,
                det,
            );
        }
        st.day = day;
        st.day_ms = 0;
    }
    let week = week_of(day);
    if week > st.week {
        if let Some(op) = st.week_alert.take() {
            let det = period_details(st, false, ctx.p.weekly_max_ms.unwrap_or(0));
            emit(
                ctx,
                AlertKind::WeeklyDriving,
                Level::Violation,
                AlertStatus::Closed,
                &op,
                driver,
                end,
                det,
            );
        }
        st.week = week;
        st.week_ms = 0;
    }
}

fn opened(ctx: &Ctx<'_>, start: Mark, driving_ms: i64) -> Opened {
    Opened {
        start,
        vehicle: ctx.vehicle.clone(),
        cooperative: ctx.cooperative.cloned(),
        driving_ms,
    }
}

#[allow(clippy::too_many_arguments)]
fn emit(
    ctx: &mut Ctx<'_>,
    kind: AlertKind,
    level: Level,
    status: AlertStatus,
    op: &Opened,
    driver: Option<&DriverId>,
    end_ms: Option<i64>,
    details: Value,
) {
    let mut d = ctx.draft(kind, level, status, op.start, details);
    d.vehicle = &op.vehicle;
    d.cooperative = op.cooperative.as_ref();
    d.driver = driver;
    d.per_driver = true;
    d.end_ms = end_ms.filter(|_| status == AlertStatus::Closed);
    ctx.push(d);
}

fn cont_details(op: &Opened, st: &DrivingState, limit_ms: i64, ended_by: Option<&str>) -> Value {
    let mut v = json!({
        "driving_s": secs(if ended_by.is_some() { st.cont_ms } else { op.driving_ms }),
        "limit_s": secs(limit_ms),
    });
    if let Some(r) = ended_by {
        v["ended_by"] = json!(r);
    }
    v
}

fn period_details(st: &DrivingState, daily: bool, limit_ms: i64) -> Value {
    let date = DateTime::from_timestamp(i64::from(st.day) * 86_400, 0)
        .unwrap_or(DateTime::UNIX_EPOCH)
        .date_naive();
    if daily {
        json!({ "day": date.format("%Y-%m-%d").to_string(), "driving_s": secs(st.day_ms), "limit_s": secs(limit_ms) })
    } else {
        let w = date.iso_week();
        json!({ "week": format!("{}-W{:02}", w.year(), w.week()), "driving_s": secs(st.week_ms), "limit_s": secs(limit_ms) })
    }
}

/// Local day number of an instant (ms since the epoch, UTC) at `offset_ms` east.
pub(crate) fn local_day(ts_ms: i64, offset_ms: i64) -> i32 {
    (ts_ms + offset_ms).div_euclid(DAY_MS) as i32
}

/// The instant (ms, UTC) a local day starts.
fn day_start_ms(day: i32, offset_ms: i64) -> i64 {
    i64::from(day) * DAY_MS - offset_ms
}

/// Monday-based week number of a local day (1970-01-01 was a Thursday).
fn week_of(day: i32) -> i32 {
    (day + 3).div_euclid(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};

    #[test]
    fn local_days_and_weeks() {
        let off = 7 * 3_600_000;
        // 2026-11-23 16:59:59 UTC is 23:59:59 local on Monday 23rd; a second later is Tuesday.
        let t = Utc
            .with_ymd_and_hms(2026, 11, 23, 16, 59, 59)
            .unwrap()
            .timestamp_millis();
        let d = local_day(t, off);
        assert_eq!(local_day(t + 1000, off), d + 1);
        assert_eq!(day_start_ms(d + 1, off), t + 1000);
        let monday = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(
            i64::from(d),
            monday
                .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
                .num_days()
        );
        // Sunday 22nd and Monday 23rd are in different weeks; Monday to Sunday the same.
        assert_eq!(week_of(d), week_of(d - 1) + 1);
        assert_eq!(week_of(d), week_of(d + 6));
    }
}
