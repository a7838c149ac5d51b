//! A deterministic, pure, synchronous fleet simulator: the demo fleet behind
//! `fleetwatch demo` and the load fleet behind `fleetwatch simulate`.
//!
//! It owns simulated time and vehicles and produces canonical JSON payloads; where to
//! publish them (topics, pacing against the wall clock) is the caller's business.
//! Same seed and start, same fixes, however time is sliced in [`Simulator::advance`].
//!
//! # The demo fleet
//! Around Thu Dau Mot, Di An and Thuan An (former Binh Duong, now Ho Chi Minh City),
//! on the lines of `fixtures/demo/routes.geojson` and in the zones of
//! `fixtures/demo/zones.geojson`. Times are offsets from `start`; departures are
//! exact, later times move by a few minutes with the seed (bus stops and red lights
//! are random).
//!
//! | vehicle | what it does |
//! | --- | --- |
//! | `61B-024.17` bus, HTX-TDM, route BD-01 | leaves Thu Dau Mot terminal at T+3 min; over 40 km/h (48) for ~40 s in the DT743 school zone (limit 40) at T+13–15 min; Di An depot ~T+30 min, back at the terminal ~T+63–69 min, where the driver changes 6 min after arrival (`074085001234` → `074190005678`, ~T+69–75 min) |
//! | `61B-031.05` bus, HTX-TDM, route BD-02 | leaves at T+5 min; detours up to 450 m east of Binh Duong Avenue, over 300 m off the line from ~T+10.5 to ~T+15.5 min, then back on route to the New City |
//! | `61B-045.88` bus, HTX-DIAN, route BD-03 | leaves Di An depot at T+2 min; over 60 km/h (~65) for ~40 s on the Thuan Giao straight at ~T+12–13 min |
//! | `61B-052.31` bus, HTX-DIAN, route BD-04 | normal service from Lai Thieu; reports every 15 s |
//! | `61C-330.12` container | leaves ICD Song Than at T+5 min; over 80 km/h (~90) for 50–60 s on Xa lo Ha Noi at ~T+16–19 min; parked at Cat Lai ~T+30–60 min, then shuttles |
//! | `61C-412.80` tractor | shuttles ICD Song Than – Cat Lai from T+1 min with 4–6 min stops only: its driver (`074079003355`) passes 4 h of continuous driving at T+4 h 01 min counting the short stops, ~T+4 h 55 min counting moving time only; 45 min off from ~T+5 h 30 min |
//! | `61C-207.45` container | leaves the ICD at T+10 min for a riverside warehouse in Thu Dau Mot's inner city (containers and tractors banned 06:00–22:00 local): inside the restricted zone from ~T+29 to ~T+65 min, parked with ignition off for 25 min in the riverside quarter (trucks banned 21:30–06:30): a restricted-zone violation whatever the hour the demo starts at (the two bans overlap, so an entry just before 06:00 or 22:00 is caught by one of them). Then shuttles to Cat Lai |
//! | `61C-518.03` tractor | parked at the ICD with ignition off until T+20 min, then shuttles normally |
//!
//! Nothing else breaks a rule: buses stay ≤ 50 km/h and trucks ≤ 68 km/h, everyone
//! keeps to 35 km/h in the speed zone, every other driver drives less than an hour
//! between breaks of ≥ 15 min, and buses keep within a few metres of their lines.
//! Drivers hold 12-digit citizen ID card numbers. Devices report every 5 s (10 s for
//! `61B-031.05` and `61C-207.45`, 15 s for `61B-052.31`) while moving, every 30 s
//! stopped, every 60 s parked with ignition off, and once more the second a vehicle
//! moves off.

pub mod devices;
mod fixtures;
mod path;
mod payload;
mod scenario;
mod vehicle;

use std::fmt;

use chrono::{DateTime, Duration, Utc};

pub use fixtures::{DEMO_ROUTES_GEOJSON, DEMO_ZONES_GEOJSON};

use crate::domain::{CooperativeId, DriverId, VehicleClass, VehicleId};
use vehicle::VehicleSim;

/// A simulated vehicle as it would be registered.
#[derive(Debug, Clone, PartialEq)]
pub struct SimVehicle {
    /// Plate-like id, used in topics and payloads.
    pub id: VehicleId,
    /// Operating cooperative.
    pub cooperative: CooperativeId,
    /// Regulatory class.
    pub class: VehicleClass,
    /// Registered route (`route_id` in the routes fixture), for buses.
    pub route: Option<String>,
    /// Driver logged in at the start.
    pub driver: Option<DriverId>,
}

impl SimVehicle {
    /// The vehicle as the registry holds it (the demo registers its fleet).
    pub fn registration(&self) -> crate::domain::Vehicle {
        crate::domain::Vehicle {
            id: self.id.clone(),
            plate: Some(self.id.to_string()),
            cooperative: self.cooperative.clone(),
            class: self.class,
            route: self.route.clone(),
            device_id: None,
        }
    }
}

/// The seed of `fleetwatch demo`'s fleet: every demo run is the same script.
pub const DEMO_SEED: u64 = 42;

/// One generated fix: where to publish it and the JSON payload (canonical format).
#[derive(Debug, Clone, PartialEq)]
pub struct SimFix {
    /// Cooperative of the vehicle (a topic segment).
    pub cooperative: CooperativeId,
    /// Reporting vehicle (a topic segment; also in the payload).
    pub vehicle: VehicleId,
    /// Fix time, as in the payload.
    pub ts: DateTime<Utc>,
    /// Canonical JSON payload: `vehicle, ts, lat, lon, speed_kmh, heading_deg,
    /// driver_id, ignition, satellites, hdop, odometer_m`.
    pub payload: Vec<u8>,
}

/// A fleet moving in simulated time.
#[derive(Clone)]
pub struct Simulator {
    start: DateTime<Utc>,
    /// `start` in ms since the Unix epoch (fix times are this plus whole seconds).
    start_ms: i64,
    /// Simulated time elapsed since `start`, ms.
    elapsed_ms: i64,
    fleet: Vec<VehicleSim>,
}

/// Enough for every payload, so writing one never reallocates.
const PAYLOAD_CAPACITY: usize = 256;

impl Simulator {
    /// The demo fleet: 4 cooperative buses on their registered routes and 4 container
    /// trucks / tractor units between ICD Song Than, Cat Lai port and Thu Dau Mot, with
    /// the scripted incidents of the module documentation. Starts at simulated time `start`.
    pub fn demo(seed: u64, start: DateTime<Utc>) -> Self {
        Self::with_fleet(start, scenario::demo_fleet(seed))
    }

    /// A load fleet of `n` vehicles (buses and trucks on all demo lines), all moving,
    /// each reporting every 5 s, staggered evenly over the 5 s.
    pub fn load(n: usize, seed: u64, start: DateTime<Utc>) -> Self {
        Self::load_with_interval(n, seed, start, Duration::seconds(5))
    }

    /// Like [`Simulator::load`] with another report interval (whole seconds, at least 1):
    /// the fleet then sends `n / interval` fixes per simulated second.
    pub fn load_with_interval(
        n: usize,
        seed: u64,
        start: DateTime<Utc>,
        interval: Duration,
    ) -> Self {
        Self::with_fleet(
            start,
            scenario::load_fleet(n, seed, interval.num_seconds().max(1)),
        )
    }

    fn with_fleet(start: DateTime<Utc>, fleet: Vec<VehicleSim>) -> Self {
        Simulator {
            start,
            start_ms: start.timestamp_millis(),
            elapsed_ms: 0,
            fleet,
        }
    }

    /// The fleet, in a fixed order.
    pub fn vehicles(&self) -> Vec<SimVehicle> {
        self.fleet.iter().map(|v| v.info.clone()).collect()
    }

    /// Advances simulated time by `dt` and returns every fix whose timestamp falls in
    /// (t, t+dt], sorted by ts (then by vehicle order). A non-positive `dt` does nothing.
    pub fn advance(&mut self, dt: Duration) -> Vec<SimFix> {
        let dt_ms = dt.num_milliseconds();
        if dt_ms <= 0 {
            return Vec::new();
        }
        let end_ms = self.elapsed_ms + dt_ms;
        let mut fixes: Vec<(i64, usize, SimFix)> = Vec::new();
        for (index, v) in self.fleet.iter_mut().enumerate() {
            while v.next_report_s * 1000 <= end_ms {
                let ts_s = v.next_report_s;
                v.advance_to(ts_s);
                let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
                v.report(self.start_ms, &mut payload);
                let ts = DateTime::from_timestamp_millis(self.start_ms + ts_s * 1000)
                    .expect("simulated time stays within chrono's range");
                fixes.push((
                    ts_s,
                    index,
                    SimFix {
                        cooperative: v.info.cooperative.clone(),
                        vehicle: v.info.id.clone(),
                        ts,
                        payload,
                    },
                ));
            }
        }
        // (ts, vehicle index) is unique, so the unstable sort is deterministic.
        fixes.sort_unstable_by_key(|(ts_s, index, _)| (*ts_s, *index));
        self.elapsed_ms = end_ms;
        fixes.into_iter().map(|(_, _, fix)| fix).collect()
    }

    /// Current simulated time.
    pub fn now(&self) -> DateTime<Utc> {
        self.start + Duration::milliseconds(self.elapsed_ms)
    }

    /// Simulated time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::milliseconds(self.elapsed_ms)
    }
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("start", &self.start)
            .field("now", &self.now())
            .field("vehicles", &self.fleet.len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
