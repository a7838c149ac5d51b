//! Snapshots of a vehicle's rule state as held in memory between recomputations:
//! compact binary (postcard), decoded only when a late fix restores one. A full
//! clone cost about 3.7 KB resident per snapshot, most of it the open alerts (their
//! `details` maps) and the driving-time state of the drivers; packed, the state is a
//! few hundred bytes and each open alert is packed on its own, shared with the
//! previous snapshot while it has not changed (a violation stays open for hours).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::alert::{Alert, AlertId, AlertKind, AlertStatus, Level};
use super::driving::DrivingState;
use super::off_route::OffRouteState;
use super::overspeed::Episode;
use super::state::{Mark, Sample, VehicleCore, VehicleState};
use super::trips::MotionState;
use super::zones::Stay;
use crate::domain::{CooperativeId, DriverId, VehicleId};

/// Why a snapshot could not be packed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The binary form.
    #[error("snapshot encoding: {0}")]
    Postcard(#[from] postcard::Error),
    /// The JSON inside it (transit state, alert details).
    #[error("snapshot JSON part: {0}")]
    Json(#[from] serde_json::Error),
    /// An alert time outside chrono's range.
    #[error("snapshot alert time out of range")]
    Time,
}

/// One vehicle's state right before its fix at `at_ms`, packed.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    pub at_ms: i64,
    /// Processing sequence number of the last fix it reflects (set by the engine).
    pub seq: u64,
    /// The state without its open alerts (see [`CoreRef`]).
    core: Box<[u8]>,
    /// The open alerts, each packed on its own (see [`AlertRef`]).
    open: Box<[Arc<[u8]>]>,
}

/// The fields of [`VehicleCore`] but `open` and `heard_ms` (wall-clock, reset on
/// restore), then the drivers. Positional: postcard writes no field names. The
/// transit state goes as JSON: its optional fields are skipped when empty, which only
/// a self-describing format reads back.
type CoreRef<'a> = (
    &'a [Sample],
    &'a Option<Mark>,
    &'a Option<Sample>,
    &'a Option<Mark>,
    &'a Option<Episode>,
    &'a DrivingState,
    &'a OffRouteState,
    String,
    &'a [Stay],
    &'a MotionState,
    Option<i64>,
    &'a [(DriverId, DrivingState)],
);

type CoreOwned = (
    Vec<Sample>,
    Option<Mark>,
    Option<Sample>,
    Option<Mark>,
    Option<Episode>,
    DrivingState,
    OffRouteState,
    String,
    Vec<Stay>,
    MotionState,
    Option<i64>,
    Vec<(DriverId, DrivingState)>,
);

/// An instant as (seconds, nanoseconds): exact, and smaller than RFC 3339 text.
type Instant = (i64, u32);

/// An [`Alert`], `emitted` included (JSON skips it); `details` as JSON text, as
/// `serde_json::Value` needs a self-describing format.
type AlertRef<'a> = (
    &'a AlertId,
    &'a VehicleId,
    &'a Option<CooperativeId>,
    &'a Option<DriverId>,
    AlertKind,
    Level,
    AlertStatus,
    Instant,
    Option<Instant>,
    f64,
    f64,
    Option<u8>,
    String,
    Option<Instant>,
);

type AlertOwned = (
    AlertId,
    VehicleId,
    Option<CooperativeId>,
    Option<DriverId>,
    AlertKind,
    Level,
    AlertStatus,
    Instant,
    Option<Instant>,
    f64,
    f64,
    Option<u8>,
    String,
    Option<Instant>,
);

fn instant(t: DateTime<Utc>) -> Instant {
    (t.timestamp(), t.timestamp_subsec_nanos())
}

fn from_instant((s, ns): Instant) -> Result<DateTime<Utc>, SnapshotError> {
    DateTime::from_timestamp(s, ns).ok_or(SnapshotError::Time)
}

fn pack_alert(a: &Alert) -> Result<Vec<u8>, SnapshotError> {
    let t: AlertRef<'_> = (
        &a.id,
        &a.vehicle,
        &a.cooperative,
        &a.driver,
        a.kind,
        a.level,
        a.status,
        instant(a.start),
        a.end.map(instant),
        a.lat,
        a.lon,
        a.severity,
        serde_json::to_string(&a.details)?,
        a.emitted.map(instant),
    );
    Ok(postcard::to_allocvec(&t)?)
}

fn unpack_alert(b: &[u8]) -> Result<Alert, SnapshotError> {
    let (id, vehicle, cooperative, driver, kind, level, status, start, end, lat, lon, sev, det, em): AlertOwned =
        postcard::from_bytes(b)?;
    Ok(Alert {
        id,
        vehicle,
        cooperative,
        driver,
        kind,
        level,
        status,
        start: from_instant(start)?,
        end: end.map(from_instant).transpose()?,
        lat,
        lon,
        severity: sev,
        details: serde_json::from_str(&det)?,
        emitted: em.map(from_instant).transpose()?,
    })
}

impl Packed {
    /// Packs `st` as the snapshot at `at_ms`, sharing each open alert unchanged since
    /// `prev` with it.
    pub fn pack(
        at_ms: i64,
        st: &VehicleState,
        prev: Option<&Packed>,
    ) -> Result<Self, SnapshotError> {
        let c = &st.core;
        let t: CoreRef<'_> = (
            &c.buffer,
            &c.newest,
            &c.last,
            &c.no_signal,
            &c.overspeed,
            &c.driving,
            &c.off_route,
            serde_json::to_string(&c.transit)?,
            &c.zones,
            &c.motion,
            c.driver_since_ms,
            &st.drivers,
        );
        let core = postcard::to_allocvec(&t)?.into_boxed_slice();
        let open = c
            .open
            .iter()
            .map(|a| {
                let b = pack_alert(a)?;
                let same = prev.and_then(|p| p.open.iter().find(|o| ***o == *b));
                Ok(same.cloned().unwrap_or_else(|| Arc::from(b)))
            })
            .collect::<Result<_, SnapshotError>>()?;
        Ok(Self {
            at_ms,
            seq: 0,
            core,
            open,
        })
    }

    /// The state as packed (`heard_ms` none).
    pub fn unpack(&self) -> Result<VehicleState, SnapshotError> {
        let (
            buffer,
            newest,
            last,
            no_signal,
            overspeed,
            driving,
            off_route,
            transit,
            zones,
            motion,
            driver_since_ms,
            drivers,
        ): CoreOwned = postcard::from_bytes(&self.core)?;
        let open = self
            .open
            .iter()
            .map(|b| unpack_alert(b))
            .collect::<Result<_, _>>()?;
        Ok(VehicleState {
            core: VehicleCore {
                buffer,
                newest,
                last,
                no_signal,
                heard_ms: None,
                overspeed,
                driving,
                off_route,
                transit: serde_json::from_str(&transit)?,
                zones,
                motion,
                open,
                driver_since_ms,
                // Not packed: a recomputation keeps the vehicle's current window.
                window: None,
            },
            drivers,
        })
    }

    /// Bytes packed for the state, and for each open alert with its address (shared
    /// alerts count once per vehicle).
    pub fn parts(&self) -> (usize, impl Iterator<Item = (*const u8, usize)> + '_) {
        (
            self.core.len(),
            self.open.iter().map(|o| (o.as_ptr(), o.len())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mark(ts_ms: i64) -> serde_json::Value {
        json!({ "ts_ms": ts_ms, "pos": { "lat_e7": 109_876_543, "lon_e7": 1_066_543_210 } })
    }

    fn opened(ts_ms: i64) -> serde_json::Value {
        json!({ "start": mark(ts_ms), "vehicle": "V1", "cooperative": "C1", "driving_ms": 14_400_123 })
    }

    fn driving(base: i64) -> serde_json::Value {
        json!({
            "last_drive_end_ms": base + 9, "cont_ms": 14_500_000, "cont_start": mark(base),
            "cont_warning": opened(base + 1), "cont_violation": opened(base + 2),
            "day": 20_416, "day_ms": 36_100_000, "day_alert": opened(base + 3),
            "week": 2_917, "week_ms": 172_900_000, "week_alert": opened(base + 4),
        })
    }

    fn alert(id: &str, kind: &str, end: bool) -> Alert {
        let mut a: Alert = serde_json::from_value(json!({
            "id": id, "vehicle": "V1", "cooperative": "C1", "driver": "D1",
            "kind": kind, "level": "violation", "status": if end { "closed" } else { "open" },
            "start": "2026-11-24T03:04:05.123456789Z",
            "end": if end { json!("2026-11-24T04:00:00Z") } else { json!(null) },
            "lat": 10.987_654_3, "lon": 106.654_321_9, "severity": 3,
            "details": { "max_speed_kmh": 71.3, "limit_kmh": 50.0, "duration_s": 0.1, "zone_id": "Z-1", "n": [1, -2, 3.5e-7] },
        }))
        .expect("an alert");
        a.emitted = DateTime::from_timestamp(1_764_000_000, 7);
        a
    }

    /// A state with every part non-empty (and no default field where one can be set).
    fn full() -> VehicleState {
        let sample = |ts_ms: i64| json!({ "ts_ms": ts_ms, "pos": mark(0)["pos"], "speed_ckmh": 6_512, "ignition": true, "driver": "D1" });
        let mut st: VehicleState = serde_json::from_value(json!({
            "buffer": [sample(1_000), sample(2_000)],
            "newest": mark(2_000),
            "last": sample(500),
            "no_signal": mark(400),
            "overspeed": { "start": mark(100), "last_ms": 500, "max_speed_ckmh": 7_130, "max_excess_ckmh": 2_130, "limit_at_max_ckmh": 5_000, "open": true },
            "driving": driving(10),
            "off_route": { "outside_since": mark(200), "progress_m": 12_345, "part": 2, "max_cm": 45_600, "inside_since_ms": 450, "open": true },
            "transit": {
                "run": {
                    "trip": "T-7", "date": "2026-11-24", "shift_s": -600, "start_ms": 50, "confidence": 80,
                    "seg": 17, "progress_dm": 98_765, "next": 4, "at": [300, 400, true], "ok_ms": 420,
                    "ok_dm": 98_000, "served": 3, "skipped": 1, "delay_s": 95,
                    "dev": { "start": mark(250), "late": true, "stop_id": "S-4", "stop_seq": 40, "deviation_s": 420, "max_s": 480 },
                },
                "probes": [{ "shape": "SH-2", "since_ms": 60, "from_dm": 10, "last_dm": 5_000, "tried": true }],
            },
            "zones": [{ "key": 42, "violation": mark(300) }, { "key": 7, "violation": null }],
            "motion": {
                "trip": { "start": mark(20), "driver": "D1", "distance_mm": 12_345_678, "max_speed_ckmh": 7_130 },
                "stop": { "start": mark(480), "qualified": true, "trip_distance_mm": 12_000_000 },
            },
            "driver_since_ms": 30,
            "drivers": [["D1", driving(1_000)], ["D2", driving(2_000)]],
        }))
        .expect("a state");
        st.core.open = vec![
            alert("a1", "overspeed", false),
            alert("a2", "continuous_driving", true),
        ];
        st
    }

    #[test]
    fn a_packed_snapshot_unpacks_to_the_state_packed() {
        let st = full();
        // Every part is there: a field the packing forgot would come back default.
        assert!(!st.core.transit.is_idle());
        assert!(st.core.overspeed.is_some() && st.core.no_signal.is_some());
        assert_eq!(st.core.zones.len(), 2);
        assert_ne!(st.core.off_route, OffRouteState::default());
        assert_ne!(st.core.motion, MotionState::default());
        assert_ne!(st.core.driving, DrivingState::default());
        let p = Packed::pack(1_234, &st, None).expect("packs");
        assert_eq!(p.at_ms, 1_234);
        assert_eq!(p.unpack().expect("unpacks"), st);
        // Packed is far smaller than JSON.
        let json = serde_json::to_vec(&st).expect("json").len();
        let (core, open) = p.parts();
        let packed = core + open.map(|o| o.1).sum::<usize>();
        assert!(packed * 2 < json, "{packed} packed, {json} JSON");
    }

    #[test]
    fn an_open_alert_unchanged_since_the_previous_snapshot_is_shared() {
        let mut st = full();
        let first = Packed::pack(1, &st, None).expect("packs");
        st.core.open[1].details["duration_s"] = json!(0.2);
        let second = Packed::pack(2, &st, Some(&first)).expect("packs");
        let ptrs = |p: &Packed| p.parts().1.map(|o| o.0).collect::<Vec<_>>();
        let (a, b) = (ptrs(&first), ptrs(&second));
        assert_eq!(a[0], b[0], "unchanged: shared");
        assert_ne!(a[1], b[1], "changed: its own");
        assert_eq!(second.unpack().expect("unpacks"), st);
    }
}
