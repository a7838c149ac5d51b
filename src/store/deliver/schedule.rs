//! The pure decisions of delivery: whether a destination wants an alert, when it is
//! due (quiet hours, hourly digests), what goes out next, how long to back off.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::spec::Spec;
use crate::domain::alert::{AlertKind, Level};

/// What a destination's filter looks at in an alert.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Its kind.
    pub kind: AlertKind,
    /// Its level.
    pub level: Level,
    /// Overspeed severity band (1-4).
    pub severity: Option<u8>,
    /// Its vehicle id.
    pub vehicle: &'a str,
}

/// Whether a destination with `spec` wants the alert.
pub fn wants(spec: &Spec, a: Facts<'_>) -> bool {
    spec.kinds.as_ref().is_none_or(|k| k.contains(&a.kind))
        && a.level >= spec.min_level
        && (a.kind != AlertKind::Overspeed
            || spec
                .min_severity
                .is_none_or(|min| a.severity.is_some_and(|s| s >= min)))
        && spec
            .vehicles
            .as_ref()
            .is_none_or(|vs| vs.iter().any(|v| v.as_str() == a.vehicle))
}

/// When an alert of `level` enqueued at `now` may go out, and whether it goes in a
/// digest. Info events wait for the end of quiet hours; with `digest`, info events
/// go at the next local full hour, together. Warnings and violations go at once.
pub fn due(
    spec: &Spec,
    level: Level,
    now: DateTime<Utc>,
    utc_offset_s: i32,
) -> (DateTime<Utc>, bool) {
    if level != Level::Info {
        return (now, false);
    }
    let offset = TimeDelta::seconds(i64::from(utc_offset_s));
    let mut at = now;
    if let Some(q) = spec.quiet_hours {
        let local = now + offset;
        let secs_of_day = local.timestamp().rem_euclid(86_400);
        let minute = (secs_of_day / 60) as u16;
        if q.contains(minute) {
            let end_s = i64::from(q.end_min()) * 60;
            let wait = (end_s - secs_of_day).rem_euclid(86_400);
            at = now + TimeDelta::seconds(wait);
        }
    }
    if spec.digest {
        let local_s = (at + offset).timestamp();
        let into_hour = local_s.rem_euclid(3600);
        let sub = at.timestamp_subsec_nanos() > 0;
        if into_hour > 0 || sub {
            let floor = at
                - TimeDelta::seconds(into_hour)
                - TimeDelta::nanoseconds(at.timestamp_subsec_nanos().into());
            at = floor + TimeDelta::hours(1);
        }
    }
    (at, spec.digest)
}

/// A pending delivery, as the worker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Row id (the order of the outbox).
    pub id: i64,
    /// Goes in a digest.
    pub digest: bool,
    /// The digest it was put in at its first attempt.
    pub batch: Option<i64>,
}

/// The rows that go out next from the due pending rows in id order (indices into
/// `due`). A row already attempted in a batch goes again with exactly that batch. A
/// digest row takes every due digest row not yet batched (at most `max_digest`); an
/// immediate row takes the immediate rows right behind it that are not yet batched (at
/// most `max_batch`; never past a digest row, so the outbox order holds).
pub fn next_batch(due: &[Pending], max_digest: usize, max_batch: usize) -> Vec<usize> {
    let Some(head) = due.first() else {
        return Vec::new();
    };
    match head.batch {
        Some(b) => (0..due.len())
            .filter(|&i| due[i].batch == Some(b))
            .collect(),
        None if head.digest => (0..due.len())
            .filter(|&i| due[i].digest && due[i].batch.is_none())
            .take(max_digest.max(1))
            .collect(),
        None => (0..due.len())
            .take_while(|&i| !due[i].digest && due[i].batch.is_none())
            .take(max_batch.max(1))
            .collect(),
    }
}

/// Wait before the next attempt after `failures` consecutive failures: `base`
/// doubling, at most `max`.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::VehicleId;
    use crate::store::deliver::spec::{Language, QuietHours};

    fn spec() -> Spec {
        Spec {
            kinds: None,
            min_level: Level::Info,
            min_severity: None,
            vehicles: None,
            quiet_hours: None,
            digest: false,
            language: Language::Vi,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const VN: i32 = 7 * 3600;

    #[test]
    fn filters() {
        let os = |sev| Facts {
            kind: AlertKind::Overspeed,
            level: Level::Violation,
            severity: sev,
            vehicle: "51A-1",
        };
        let zone = Facts {
            kind: AlertKind::ZoneEnter,
            level: Level::Info,
            severity: None,
            vehicle: "51A-1",
        };
        assert!(wants(&spec(), os(Some(1))) && wants(&spec(), zone));
        let s = Spec {
            min_level: Level::Warning,
            ..spec()
        };
        assert!(wants(&s, os(Some(1))) && !wants(&s, zone));
        let s = Spec {
            min_severity: Some(3),
            ..spec()
        };
        assert!(!wants(&s, os(Some(2))) && wants(&s, os(Some(3))) && !wants(&s, os(None)));
        assert!(wants(&s, zone), "the band applies to overspeed only");
        let s = Spec {
            kinds: Some(vec![AlertKind::ZoneEnter]),
            ..spec()
        };
        assert!(!wants(&s, os(Some(4))) && wants(&s, zone));
        let s = Spec {
            vehicles: Some(vec![VehicleId::parse("51a-2").unwrap()]),
            ..spec()
        };
        assert!(!wants(&s, zone));
        assert!(wants(
            &s,
            Facts {
                vehicle: "51A-2",
                ..zone
            }
        ));
    }

    #[test]
    fn quiet_hours_hold_info_events_until_they_end() {
        let s = Spec {
            quiet_hours: Some(QuietHours::try_from("22:00-06:00".to_string()).unwrap()),
            ..spec()
        };
        // 23:30 local (16:30 UTC): info waits until 06:00 local (23:00 UTC).
        let now = t("2026-11-24T16:30:00Z");
        assert_eq!(
            due(&s, Level::Info, now, VN),
            (t("2026-11-24T23:00:00Z"), false)
        );
        // 02:15 local the next day: the same morning.
        assert_eq!(
            due(&s, Level::Info, t("2026-11-24T19:15:00Z"), VN).0,
            t("2026-11-24T23:00:00Z")
        );
        // A violation in the night goes at once; info outside quiet hours too.
        assert_eq!(due(&s, Level::Violation, now, VN), (now, false));
        let day = t("2026-11-24T05:00:00Z");
        assert_eq!(due(&s, Level::Info, day, VN), (day, false));
        // 06:00 exactly is no longer quiet.
        assert_eq!(
            due(&s, Level::Info, t("2026-11-24T23:00:00Z"), VN).0,
            t("2026-11-24T23:00:00Z")
        );
    }

    #[test]
    fn digests_go_at_the_next_local_hour() {
        let s = Spec {
            digest: true,
            ..spec()
        };
        let (at, digest) = due(&s, Level::Info, t("2026-11-24T03:15:20.5Z"), VN);
        assert_eq!((at, digest), (t("2026-11-24T04:00:00Z"), true));
        assert_eq!(
            due(&s, Level::Info, t("2026-11-24T04:00:00Z"), VN).0,
            t("2026-11-24T04:00:00Z")
        );
        assert_eq!(
            due(&s, Level::Warning, t("2026-11-24T03:15:00Z"), VN),
            (t("2026-11-24T03:15:00Z"), false)
        );
        // A half-hour zone: local hours start at :30 UTC.
        assert_eq!(
            due(&s, Level::Info, t("2026-11-24T03:15:00Z"), 5 * 3600 + 1800).0,
            t("2026-11-24T03:30:00Z")
        );
        // Quiet hours then digest: the batch goes when the quiet hours end.
        let q = Spec {
            quiet_hours: Some(QuietHours::try_from("22:00-06:00".to_string()).unwrap()),
            ..s
        };
        assert_eq!(
            due(&q, Level::Info, t("2026-11-24T16:30:00Z"), VN),
            (t("2026-11-24T23:00:00Z"), true)
        );
    }

    #[test]
    fn digest_grouping() {
        let p = |id, digest, batch| Pending { id, digest, batch };
        assert!(next_batch(&[], 10, 1).is_empty());
        // A single alert first: alone, even with digest rows behind it.
        assert_eq!(
            next_batch(&[p(1, false, None), p(2, true, None)], 10, 1),
            vec![0]
        );
        // A digest: every due digest row not yet batched, not the violation among them.
        let due = [
            p(2, true, None),
            p(3, false, None),
            p(4, true, None),
            p(5, true, None),
        ];
        assert_eq!(next_batch(&due, 10, 1), vec![0, 2, 3]);
        assert_eq!(next_batch(&due, 2, 1), vec![0, 2]);
        // A retried digest keeps its rows, not the ones that came due since.
        let due = [p(2, true, Some(2)), p(4, true, Some(2)), p(6, true, None)];
        assert_eq!(next_batch(&due, 10, 1), vec![0, 1]);
    }

    #[test]
    fn immediate_alerts_go_together_in_outbox_order() {
        let p = |id, digest, batch| Pending { id, digest, batch };
        let due = [
            p(1, false, None),
            p(2, false, None),
            p(3, false, None),
            p(4, true, None),
            p(5, false, None),
        ];
        // Up to the first digest row, at most `max_batch`.
        assert_eq!(next_batch(&due, 10, 100), vec![0, 1, 2]);
        assert_eq!(next_batch(&due, 10, 2), vec![0, 1]);
        assert_eq!(next_batch(&due, 10, 1), vec![0]);
        // A retried batch goes again as it was, without what queued meanwhile.
        let due = [
            p(1, false, Some(1)),
            p(2, false, Some(1)),
            p(3, false, None),
        ];
        assert_eq!(next_batch(&due, 10, 100), vec![0, 1]);
        // A batched row is not swept into a new batch.
        let due = [p(3, false, None), p(7, false, Some(7))];
        assert_eq!(next_batch(&due, 10, 100), vec![0]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(300));
        let waits: Vec<u64> = (1..=11).map(|f| backoff(f, b, m).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(1000, b, m), m);
    }
}
