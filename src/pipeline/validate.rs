//! Validation stage: a received message → accepted fixes (with flags) and rejects
//! (dead letters with their reason). Stateful for jump detection, derived speeds and
//! the owner of each vehicle.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::decode::Decoder;
use super::delivery::DeviceReport;
use super::topic::TopicPattern;
pub use crate::domain::record::{Accepted, Flags, Record, Rejected};
use crate::domain::{CooperativeId, Fix, FixLimits, Vehicle, VehicleId};

/// Validation settings (docs/rules.md "Validation of a fix").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Hard limits: a fix outside them is rejected.
    pub limits: FixLimits,
    /// Fewer satellites than this flags poor accuracy.
    pub min_satellites: i16,
    /// HDOP above this flags poor accuracy.
    pub max_hdop: f32,
    /// An accuracy radius above this, metres (OwnTracks `acc`), flags poor accuracy.
    pub max_accuracy_m: f32,
    /// A move shorter than this, metres, is never a jump (GPS noise while parked).
    pub jump_min_distance_m: f64,
    /// Most fixes accepted in one batch payload.
    pub max_batch: usize,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        Self {
            limits: FixLimits::default(),
            min_satellites: 4,
            max_hdop: 5.0,
            max_accuracy_m: 300.0,
            jump_min_distance_m: 200.0,
            max_batch: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Last {
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
    jumps_in_row: u8,
}

/// The validation stage. One per pipeline; holds the last position per vehicle.
pub struct Validator {
    decoder: Decoder,
    pattern: TopicPattern,
    cfg: ValidateConfig,
    registry: HashMap<VehicleId, Vehicle>,
    /// The cooperative each known vehicle belongs to: the registered one, else the one
    /// whose fix was accepted first (kept as `vehicles.cooperative_id`, which the writer
    /// never changes, so the claim survives a restart).
    owners: HashMap<VehicleId, CooperativeId>,
    last: HashMap<VehicleId, Last>,
}

impl Validator {
    /// A validator for topics of `pattern` and the vehicles of `registry`.
    pub fn new(pattern: TopicPattern, cfg: ValidateConfig, registry: &[Vehicle]) -> Self {
        let mut v = Self {
            decoder: Decoder::new(cfg.max_batch),
            pattern,
            registry: HashMap::new(),
            owners: HashMap::new(),
            cfg,
            last: HashMap::new(),
        };
        v.set_registry(registry);
        v
    }

    /// With the stored owners of the vehicles seen so far (`vehicles` rows, registered
    /// or not: [`crate::store::registry::owners`]); the registry wins where both say.
    pub fn with_owners(
        mut self,
        owners: impl IntoIterator<Item = (VehicleId, CooperativeId)>,
    ) -> Self {
        for (v, c) in owners {
            if !self.registry.contains_key(&v) {
                self.owners.insert(v, c);
            }
        }
        self
    }

    /// Replaces the registry (a vehicle added or removed while running). A vehicle
    /// taken off the registry stays with the cooperative it was registered to, as its
    /// `vehicles` row does.
    pub fn set_registry(&mut self, registry: &[Vehicle]) {
        self.registry = registry.iter().map(|v| (v.id.clone(), v.clone())).collect();
        for v in registry {
            self.owners.insert(v.id.clone(), v.cooperative.clone());
        }
    }

    /// Validates one MQTT message; every fix or element yields exactly one record.
    pub fn process(
        &mut self,
        topic: &str,
        payload: &Bytes,
        received_at: DateTime<Utc>,
    ) -> Vec<Record> {
        let reject = |bytes: Bytes, reason: &'static str, detail: String| {
            Record::Rejected(Rejected {
                topic: topic.to_string(),
                payload: bytes,
                reason,
                detail,
                received_at,
            })
        };
        let (coop, vehicle) = match self.pattern.parse_topic(topic) {
            Ok(cv) => cv,
            Err(e) => return vec![reject(payload.clone(), "bad_topic", e.to_string())],
        };
        // A vehicle belongs to one cooperative: the one it is registered to, or for an
        // unregistered one, the one whose fix was accepted first. Anything else from
        // another cooperative is refused, so its data and alerts never mix.
        if let Err(detail) = self.owned_by(&vehicle, &coop) {
            return vec![reject(payload.clone(), "cooperative_mismatch", detail)];
        }
        let elements = match self.decoder.decode(payload) {
            Ok(e) => e,
            Err(e) => return vec![reject(payload.clone(), e.label(), e.to_string())],
        };
        let mut out = Vec::with_capacity(elements.len());
        for el in elements {
            // A dead letter keeps the element's own bytes: two bad elements of one
            // batch are two dead letters, not one batch payload stored once.
            let element_bytes = || payload.slice_ref(el.bytes);
            let candidate = match el.result {
                Ok(c) => c,
                Err(e) => {
                    out.push(reject(element_bytes(), e.label(), e.to_string()));
                    continue;
                }
            };
            if let Some(v) = candidate.vehicle.as_deref() {
                match VehicleId::parse(v) {
                    Ok(id) if id == vehicle => {}
                    Ok(id) => {
                        let detail =
                            format!("payload vehicle {id} differs from topic vehicle {vehicle}");
                        out.push(reject(element_bytes(), "vehicle_mismatch", detail));
                        continue;
                    }
                    Err(e) => {
                        out.push(reject(element_bytes(), "invalid_vehicle", e.to_string()));
                        continue;
                    }
                }
            }
            out.push(self.accept(
                candidate,
                &vehicle,
                &coop,
                (topic, element_bytes()),
                received_at,
            ));
        }
        out
    }

    /// Validates the positions a device sent in one frame: every position yields
    /// exactly one record. The gateway resolved the vehicle from the device's
    /// identity; a vehicle owned by another cooperative is refused as for MQTT.
    pub fn process_device(&mut self, r: &DeviceReport, received_at: DateTime<Utc>) -> Vec<Record> {
        // One dead letter per rejected position: each gets its own topic (the frame's
        // bytes are the same), stable across reconnections so a resent frame is one.
        let several = r.positions.len() > 1;
        let topic = |i: usize| match several {
            true => format!("{}#{i}", r.source),
            false => r.source.clone(),
        };
        let reject = |i: usize, reason: &'static str, detail: String| {
            Record::Rejected(Rejected {
                topic: topic(i),
                payload: r.frame.clone(),
                reason,
                detail: format!("{detail} (from {})", r.remote),
                received_at,
            })
        };
        if let Err(detail) = self.owned_by(&r.vehicle, &r.cooperative) {
            return (0..r.positions.len())
                .map(|i| reject(i, "cooperative_mismatch", detail.clone()))
                .collect();
        }
        let mut out = Vec::with_capacity(r.positions.len());
        for (i, p) in r.positions.iter().enumerate() {
            if !p.gps_valid {
                // The receiver had no fix: the position repeats the last known place.
                let detail = "the device reports no GPS fix for this position".to_string();
                out.push(reject(i, "no_gps_fix", detail));
                continue;
            }
            let record = self.accept(
                p.fix.clone(),
                &r.vehicle,
                &r.cooperative,
                (&topic(i), r.frame.clone()),
                received_at,
            );
            out.push(match record {
                Record::Rejected(mut rej) => {
                    rej.detail = format!("{} (from {})", rej.detail, r.remote);
                    Record::Rejected(rej)
                }
                accepted => accepted,
            });
        }
        out
    }

    /// Whether fixes of `vehicle` may come from `coop`: the registered cooperative,
    /// or for an unregistered vehicle the one whose fix was accepted first.
    fn owned_by(&self, vehicle: &VehicleId, coop: &CooperativeId) -> Result<(), String> {
        if let Some(reg) = self.registry.get(vehicle) {
            if reg.cooperative != *coop {
                return Err(format!(
                    "vehicle {vehicle} is registered to {} not {coop}",
                    reg.cooperative
                ));
            }
        } else if let Some(owner) = self.owners.get(vehicle) {
            if owner != coop {
                return Err(format!(
                    "unregistered vehicle {vehicle} belongs to {owner} (its first fixes came \
                     from there), not {coop}; registering it to {coop} moves it"
                ));
            }
        }
        Ok(())
    }

    /// Validates one candidate of `vehicle` into a record.
    fn accept(
        &mut self,
        mut candidate: crate::domain::FixCandidate,
        vehicle: &VehicleId,
        coop: &CooperativeId,
        (topic, bytes): (&str, Bytes),
        received_at: DateTime<Utc>,
    ) -> Record {
        let derived = candidate.speed_kmh.is_none();
        if derived {
            candidate.speed_kmh = Some(self.derive_speed_kmh(vehicle, &candidate));
        }
        match Fix::validate(candidate, vehicle.clone(), &self.cfg.limits, received_at) {
            Ok(fix) => {
                let mut flags = self.flags(&fix);
                if derived {
                    flags.0 |= Flags::SPEED_DERIVED;
                }
                if !self.owners.contains_key(vehicle) {
                    self.owners.insert(vehicle.clone(), coop.clone());
                }
                Record::Accepted(Accepted {
                    fix,
                    cooperative: coop.clone(),
                    flags,
                    received_at,
                    source: (topic.to_string(), bytes),
                })
            }
            Err(e) => Record::Rejected(Rejected {
                topic: topic.to_string(),
                payload: bytes,
                reason: e.label(),
                detail: e.to_string(),
                received_at,
            }),
        }
    }

    /// A speed for a fix whose device did not give one: the average from the vehicle's
    /// last plausible fix (the one jump detection compares with), in either time order;
    /// 0 for a vehicle's first fix. Capped at the speed limit of validation: a move that
    /// fast is flagged as a jump, which keeps it out of the rules.
    fn derive_speed_kmh(&self, vehicle: &VehicleId, c: &crate::domain::FixCandidate) -> f64 {
        let (Some(prev), Some(ts)) = (self.last.get(vehicle), c.ts) else {
            return 0.0;
        };
        let dt_s = (ts - prev.ts).num_milliseconds().unsigned_abs() as f64 / 1000.0;
        if dt_s <= 0.0 || !(c.lat.is_finite() && c.lon.is_finite()) {
            return 0.0;
        }
        let kmh = haversine_m(prev.lat, prev.lon, c.lat, c.lon) / dt_s * 3.6;
        kmh.min(self.cfg.limits.max_speed_kmh)
    }

    fn flags(&mut self, fix: &Fix) -> Flags {
        let mut flags = 0;
        if !self.registry.contains_key(fix.vehicle()) {
            flags |= Flags::UNREGISTERED;
        }
        let sats_low = fix
            .satellites()
            .is_some_and(|s| s < self.cfg.min_satellites);
        let hdop_high = fix.hdop().is_some_and(|h| h > self.cfg.max_hdop);
        let radius_large = fix
            .accuracy_m()
            .is_some_and(|a| a > self.cfg.max_accuracy_m);
        if sats_low || hdop_high || radius_large {
            flags |= Flags::POOR_ACCURACY;
        }
        let here = Last {
            ts: fix.ts(),
            lat: fix.lat(),
            lon: fix.lon(),
            jumps_in_row: 0,
        };
        match self.last.get_mut(fix.vehicle()) {
            None => {
                self.last.insert(fix.vehicle().clone(), here);
            }
            Some(prev) if fix.ts() < prev.ts => flags |= Flags::OUT_OF_ORDER,
            Some(prev) => {
                let dist_m = haversine_m(prev.lat, prev.lon, fix.lat(), fix.lon());
                let dt_s = (fix.ts() - prev.ts).num_milliseconds() as f64 / 1000.0;
                let implied_kmh = if dt_s > 0.0 {
                    dist_m / dt_s * 3.6
                } else {
                    f64::INFINITY
                };
                let jump = dist_m > self.cfg.jump_min_distance_m
                    && implied_kmh > self.cfg.limits.max_speed_kmh;
                // Compare against the last plausible position, so a single spike flags
                // one fix, not the good one after it; three in a row mean the vehicle
                // really is elsewhere (e.g. after a ferry without signal): re-anchor.
                if jump && prev.jumps_in_row < 2 {
                    flags |= Flags::JUMP;
                    prev.jumps_in_row += 1;
                } else {
                    if jump {
                        flags |= Flags::JUMP;
                    }
                    *prev = here;
                }
            }
        }
        Flags(flags)
    }
}

/// Great-circle distance in metres between two WGS84 points given lat/lon in degrees.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R_M: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R_M * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::VehicleClass;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap()
    }

    fn validator() -> Validator {
        let reg = vec![Vehicle {
            id: VehicleId::parse("61B-024.17").unwrap(),
            plate: None,
            cooperative: CooperativeId::parse("HTX-TDM").unwrap(),
            class: VehicleClass::Bus,
            route: None,
            device_id: None,
        }];
        Validator::new(
            TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap(),
            ValidateConfig::default(),
            &reg,
        )
    }

    fn fix_json(vehicle: &str, secs: i64, lat: f64, lon: f64) -> Bytes {
        let ts = (now() + chrono::Duration::seconds(secs)).to_rfc3339();
        Bytes::from(format!(
            r#"{{"vehicle":"{vehicle}","ts":"{ts}","lat":{lat},"lon":{lon},"speed_kmh":30,"satellites":9,"hdop":1.0}}"#
        ))
    }

    fn reasons(records: &[Record]) -> Vec<&'static str> {
        records
            .iter()
            .map(|r| match r {
                Record::Accepted(_) => "ok",
                Record::Rejected(r) => r.reason,
            })
            .collect()
    }

    const T: &str = "fleet/HTX-TDM/61B-024.17/fix";

    #[test]
    fn spoofed_vehicle_is_rejected() {
        let mut v = validator();
        let out = v.process(T, &fix_json("61B-999.99", -5, 10.98, 106.65), now());
        assert_eq!(reasons(&out), ["vehicle_mismatch"]);
    }

    #[test]
    fn wrong_cooperative_for_a_registered_vehicle_is_rejected() {
        let mut v = validator();
        let out = v.process(
            "fleet/OTHER/61B-024.17/fix",
            &fix_json("61B-024.17", -5, 10.98, 106.65),
            now(),
        );
        assert_eq!(reasons(&out), ["cooperative_mismatch"]);
    }

    #[test]
    fn bad_topic_and_malformed_payload_are_rejected_with_bytes_kept() {
        let mut v = validator();
        let out = v.process("fleet/x/fix", &Bytes::from_static(b"{}"), now());
        assert_eq!(reasons(&out), ["bad_topic"]);
        let out = v.process(T, &Bytes::from_static(b"\xff\xfe"), now());
        assert_eq!(reasons(&out), ["malformed"]);
        let Record::Rejected(r) = &out[0] else {
            unreachable!()
        };
        assert_eq!(&r.payload[..], b"\xff\xfe");
    }

    #[test]
    fn batch_element_rejects_keep_only_their_bytes() {
        let mut v = validator();
        let ok = fix_json("61B-024.17", -5, 10.98, 106.65);
        let payload = Bytes::from(format!(
            r#"[{}, {{"lat":1}}]"#,
            std::str::from_utf8(&ok).unwrap()
        ));
        let out = v.process(T, &payload, now());
        assert_eq!(reasons(&out), ["ok", "malformed"]);
        let Record::Rejected(r) = &out[1] else {
            unreachable!()
        };
        assert_eq!(&r.payload[..], br#"{"lat":1}"#);
    }

    #[test]
    fn each_invalid_batch_element_keeps_its_own_bytes() {
        let mut v = validator();
        let a = fix_json("61B-024.17", -5, 0.0, 0.0);
        let b = fix_json("61B-024.17", -4, 0.0, 0.0);
        let payload = Bytes::from(format!(
            "[{},{}]",
            std::str::from_utf8(&a).unwrap(),
            std::str::from_utf8(&b).unwrap()
        ));
        let out = v.process(T, &payload, now());
        assert_eq!(reasons(&out), ["null_island", "null_island"]);
        let bytes: Vec<&[u8]> = out
            .iter()
            .map(|r| match r {
                Record::Rejected(r) => &r.payload[..],
                Record::Accepted(_) => unreachable!(),
            })
            .collect();
        assert_eq!(bytes, [&a[..], &b[..]]);
    }

    #[test]
    fn unregistered_vehicle_is_accepted_and_flagged() {
        let mut v = validator();
        let out = v.process(
            "fleet/HTX-X/51B-1/fix",
            &fix_json("51B-1", -5, 10.98, 106.65),
            now(),
        );
        let Record::Accepted(a) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(a.flags.has(Flags::UNREGISTERED));
        assert_eq!(a.cooperative.as_str(), "HTX-X");
    }

    #[test]
    fn jump_is_flagged_once_and_the_next_good_fix_is_clean() {
        let mut v = validator();
        let flags = |out: Vec<Record>| match &out[0] {
            Record::Accepted(a) => a.flags,
            r => panic!("{r:?}"),
        };
        assert_eq!(
            flags(v.process(T, &fix_json("61B-024.17", -30, 10.980, 106.650), now())),
            Flags(0)
        );
        // ~11 km in 10 s: impossible.
        let spike = flags(v.process(T, &fix_json("61B-024.17", -20, 11.080, 106.650), now()));
        assert!(spike.has(Flags::JUMP));
        let back = flags(v.process(T, &fix_json("61B-024.17", -10, 10.9805, 106.650), now()));
        assert!(!back.has(Flags::JUMP), "{back:?}");
        let old = flags(v.process(T, &fix_json("61B-024.17", -25, 10.9805, 106.650), now()));
        assert!(old.has(Flags::OUT_OF_ORDER));
    }

    #[test]
    fn poor_accuracy_is_flagged() {
        let mut v = validator();
        let p = Bytes::from(format!(
            r#"{{"ts":"{}","lat":10.9,"lon":106.7,"speed_kmh":1,"satellites":3}}"#,
            now().to_rfc3339()
        ));
        let Record::Accepted(a) = &v.process(T, &p, now())[0] else {
            panic!()
        };
        assert!(a.flags.has(Flags::POOR_ACCURACY));
    }

    fn accepted(out: &[Record]) -> &Accepted {
        match &out[0] {
            Record::Accepted(a) => a,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn an_unregistered_vehicle_belongs_to_the_cooperative_that_sent_it_first() {
        let mut v = validator();
        let (a, b) = ("fleet/HTX-A/51B-1/fix", "fleet/HTX-B/51B-1/fix");
        let p = |s| fix_json("51B-1", s, 10.98, 106.65);
        assert_eq!(reasons(&v.process(a, &p(-9), now())), ["ok"]);
        let out = v.process(b, &p(-8), now());
        assert_eq!(reasons(&out), ["cooperative_mismatch"]);
        let Record::Rejected(r) = &out[0] else {
            unreachable!()
        };
        assert!(r.detail.contains("belongs to HTX-A"), "{}", r.detail);
        assert_eq!(reasons(&v.process(a, &p(-7), now())), ["ok"]);
        // A payload that is rejected claims nothing.
        assert_eq!(
            reasons(&v.process("fleet/HTX-B/51B-2/fix", &Bytes::from_static(b"{}"), now())),
            ["malformed"]
        );
        assert_eq!(
            reasons(&v.process(
                "fleet/HTX-A/51B-2/fix",
                &fix_json("51B-2", -5, 10.9, 106.6),
                now()
            )),
            ["ok"]
        );

        // After a restart the stored owner holds, before any fix of the new run.
        let mut v = validator().with_owners([(
            VehicleId::parse("51B-1").unwrap(),
            CooperativeId::parse("HTX-A").unwrap(),
        )]);
        assert_eq!(
            reasons(&v.process(b, &p(-6), now())),
            ["cooperative_mismatch"]
        );
        // Registering it to B moves it; taking it off the registry leaves it with B.
        let to_b = Vehicle {
            id: VehicleId::parse("51B-1").unwrap(),
            plate: None,
            cooperative: CooperativeId::parse("HTX-B").unwrap(),
            class: VehicleClass::Bus,
            route: None,
            device_id: None,
        };
        v.set_registry(std::slice::from_ref(&to_b));
        assert_eq!(reasons(&v.process(b, &p(-5), now())), ["ok"]);
        assert_eq!(
            reasons(&v.process(a, &p(-4), now())),
            ["cooperative_mismatch"]
        );
        v.set_registry(&[]);
        let out = v.process(b, &p(-3), now());
        assert!(accepted(&out).flags.has(Flags::UNREGISTERED));
        assert_eq!(
            reasons(&v.process(a, &p(-2), now())),
            ["cooperative_mismatch"]
        );
    }

    fn owntracks(secs: i64, lat: f64, lon: f64, vel: i64, cog: i64, acc: i64) -> Bytes {
        let tst = (now() + chrono::Duration::seconds(secs)).timestamp();
        Bytes::from(format!(
            r#"{{"_type":"location","tid":"p1","tst":{tst},"lat":{lat},"lon":{lon},"vel":{vel},"cog":{cog},"acc":{acc}}}"#
        ))
    }

    #[test]
    fn unknown_owntracks_speed_is_derived_from_the_previous_fix_and_flagged() {
        let mut v = validator();
        // First fix: nothing to derive from; taken as stopped, flagged.
        let out = v.process(T, &owntracks(-120, 10.98, 106.65, -1, -1, 10), now());
        let a = accepted(&out);
        assert_eq!(a.fix.speed_kmh(), 0.0);
        assert_eq!(a.fix.heading_deg(), None);
        assert!(a.flags.has(Flags::SPEED_DERIVED), "{:?}", a.flags);
        // 0.0025 degrees of latitude (278 m) in 30 s: 33.4 km/h.
        let out = v.process(T, &owntracks(-90, 10.9825, 106.65, -1, 90, 10), now());
        let a = accepted(&out);
        assert!(
            (a.fix.speed_kmh() - 33.36).abs() < 0.1,
            "{}",
            a.fix.speed_kmh()
        );
        assert_eq!(a.fix.heading_deg(), Some(90.0));
        assert!(a.flags.has(Flags::SPEED_DERIVED));
        assert_eq!(a.flags.names().collect::<Vec<_>>(), ["speed_derived"]);
        // A speed the phone knows is taken as given, not flagged.
        let out = v.process(T, &owntracks(-60, 10.985, 106.65, 41, 0, 10), now());
        let a = accepted(&out);
        assert_eq!(a.fix.speed_kmh(), 41.0);
        assert_eq!(a.flags, Flags(0));
        // An impossible move: capped at the limit and flagged as a jump (kept out of
        // the rules), never a speed_out_of_range reject.
        let out = v.process(T, &owntracks(-50, 11.5, 106.65, -1, -1, 10), now());
        let a = accepted(&out);
        assert_eq!(a.fix.speed_kmh(), 200.0);
        assert!(a.flags.has(Flags::JUMP) && a.flags.has(Flags::SPEED_DERIVED));
    }

    #[test]
    fn a_large_accuracy_radius_flags_poor_accuracy() {
        let mut v = validator();
        let out = v.process(T, &owntracks(-60, 10.98, 106.65, 30, 0, 3000), now());
        assert!(accepted(&out).flags.has(Flags::POOR_ACCURACY));
        let out = v.process(T, &owntracks(-30, 10.9801, 106.65, 30, 0, 300), now());
        assert!(!accepted(&out).flags.has(Flags::POOR_ACCURACY));
    }

    #[test]
    fn an_hdop_too_large_for_its_column_is_rejected() {
        let mut v = validator();
        let p = Bytes::from(format!(
            r#"{{"ts":"{}","lat":10.9,"lon":106.7,"speed_kmh":1,"hdop":1e300}}"#,
            now().to_rfc3339()
        ));
        let out = v.process(T, &p, now());
        assert_eq!(reasons(&out), ["invalid_field"]);
        let Record::Rejected(r) = &out[0] else {
            unreachable!()
        };
        assert!(
            r.detail.contains("hdop") && r.detail.contains("does not fit"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn haversine_one_degree_of_latitude() {
        let d = haversine_m(10.0, 106.0, 11.0, 106.0);
        assert!((d - 111_195.0).abs() < 100.0, "{d}");
    }
}
