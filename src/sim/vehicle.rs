//! One simulated vehicle: a queue of legs (drive along a road, dwell, driver login)
//! fed first by a script and then by an endless routine, integrated in one-second
//! steps and reporting fixes at the device's cadence.
//!
//! Everything a vehicle does depends only on its own seed and on its report times,
//! never on how the caller slices time in `advance`: the same seed gives the same
//! fixes whether time is advanced by 1 s or by 2 h.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::Rng;

use super::path::{m_per_deg_lon, Road, M_PER_DEG_LAT};
use super::payload::{self, PayloadFix};
use super::SimVehicle;
use crate::domain::DriverId;

/// How a vehicle accelerates, brakes and how fast it normally cruises.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dynamics {
    pub accel_ms2: f64,
    pub decel_ms2: f64,
    /// Highest normal cruising speed; only scripted overrides go above it, so the
    /// demo's violations are exactly the scripted ones.
    pub cap_kmh: f64,
}

/// A city bus: brisk, and kept well under the 60 km/h town limit.
pub(crate) const BUS: Dynamics = Dynamics {
    accel_ms2: 0.8,
    decel_ms2: 1.2,
    cap_kmh: 50.0,
};
/// A loaded container truck or tractor unit: slow to pick up speed, under 70 km/h.
pub(crate) const TRUCK: Dynamics = Dynamics {
    accel_ms2: 0.5,
    decel_ms2: 1.0,
    cap_kmh: 68.0,
};

/// Drivers keep this far under a speed zone's limit unless scripted otherwise.
const ZONE_MARGIN_KMH: f64 = 5.0;
/// How far ahead a driver sees a speed zone coming and slows for it, metres.
const ZONE_LOOKAHEAD_M: f64 = 400.0;
/// Hardest braking, m/s².
const MAX_DECEL_MS2: f64 = 3.0;
/// A drive this close to its end has arrived, m.
const ARRIVED_M: f64 = 0.5;
/// Below this speed a vehicle counts as stopped, m/s.
const STOPPED_MS: f64 = 0.3;
/// A stop at least this long is a break (docs/rules.md: 15 min).
const BREAK_S: i64 = 15 * 60;
/// Report interval while stopped with ignition on, s (regulation allows 15 min; the
/// demo keeps it short so the map stays lively).
const STOPPED_INTERVAL_S: i64 = 30;
/// Report interval while parked with ignition off, s.
const PARKED_INTERVAL_S: i64 = 60;

/// A scripted speed on a stretch of a trip's road (a speeding episode, a slow side street).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SpeedOverride {
    pub from_m: f64,
    pub to_m: f64,
    pub kmh: f64,
}

/// A trip along a road, from `from_m` to its end.
#[derive(Debug, Clone)]
pub(crate) struct Trip {
    pub road: Arc<Road>,
    pub from_m: f64,
    pub overrides: Vec<SpeedOverride>,
    /// Serve the road's bus stops.
    pub bus_stops: bool,
    /// Stop at red lights and at the end of the road. Load vehicles never stop.
    pub stops: bool,
}

impl Trip {
    /// A bus trip over the whole road.
    pub(crate) fn bus(road: Arc<Road>, overrides: Vec<SpeedOverride>) -> Step {
        Step::Trip(Trip {
            road,
            from_m: 0.0,
            overrides,
            bus_stops: true,
            stops: true,
        })
    }

    /// A truck trip over the whole road.
    pub(crate) fn truck(road: Arc<Road>, overrides: Vec<SpeedOverride>) -> Step {
        Step::Trip(Trip {
            road,
            from_m: 0.0,
            overrides,
            bus_stops: false,
            stops: true,
        })
    }
}

/// What a vehicle does next.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Trip(Trip),
    Wait {
        duration_s: i64,
        ignition: bool,
    },
    /// A driver logs in with a card at the device; ends the previous driver's driving.
    Login(DriverId),
}

/// What a vehicle does once its script is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoutineKind {
    /// Back and forth on a route; a long layover with ignition off after each return
    /// trip gives the driver a break.
    Bus,
    /// Shuttling between two ends, 20–40 min loading at each. Until the driver has
    /// driven `push_on_until_driving_s` without a break, stops are only 4–6 min: the
    /// tired-driver script. After that the driver takes a 45-min break.
    Truck { push_on_until_driving_s: i64 },
    /// Back and forth without ever stopping (load generation).
    Loop,
}

/// An endless routine between the two directions of a road.
#[derive(Debug, Clone)]
pub(crate) struct Routine {
    kind: RoutineKind,
    out: Arc<Road>,
    back: Arc<Road>,
    next_out: bool,
    rest_next: bool,
}

impl Routine {
    /// A routine whose first step is a trip `out` (if `next_out`) or `back`.
    pub(crate) fn new(kind: RoutineKind, out: Arc<Road>, back: Arc<Road>, next_out: bool) -> Self {
        Routine {
            kind,
            out,
            back,
            next_out,
            rest_next: false,
        }
    }

    /// Where the routine's first trip starts.
    fn start_road(&self) -> &Arc<Road> {
        if self.next_out {
            &self.out
        } else {
            &self.back
        }
    }

    fn next_step(&mut self, rng: &mut SmallRng, driving_since_break_s: i64) -> Step {
        if self.rest_next && self.kind != RoutineKind::Loop {
            self.rest_next = false;
            // `next_out` was flipped when the trip was handed out: `true` means the
            // vehicle just came back home.
            let home = self.next_out;
            return match &mut self.kind {
                RoutineKind::Bus if home => Step::Wait {
                    duration_s: rng.random_range(960..=1320),
                    ignition: false,
                },
                RoutineKind::Bus => Step::Wait {
                    duration_s: rng.random_range(300..=480),
                    ignition: rng.random_bool(0.5),
                },
                RoutineKind::Truck {
                    push_on_until_driving_s,
                } if *push_on_until_driving_s > 0 => {
                    if driving_since_break_s < *push_on_until_driving_s {
                        Step::Wait {
                            duration_s: rng.random_range(240..=360),
                            ignition: true,
                        }
                    } else {
                        *push_on_until_driving_s = 0;
                        Step::Wait {
                            duration_s: 45 * 60,
                            ignition: false,
                        }
                    }
                }
                RoutineKind::Truck { .. } | RoutineKind::Loop => Step::Wait {
                    duration_s: rng.random_range(1200..=2400),
                    ignition: rng.random_bool(0.3),
                },
            };
        }
        let road = self.start_road().clone();
        self.next_out = !self.next_out;
        self.rest_next = true;
        match self.kind {
            RoutineKind::Bus => Trip::bus(road, Vec::new()),
            RoutineKind::Truck { .. } => Trip::truck(road, Vec::new()),
            RoutineKind::Loop => Step::Trip(Trip {
                road,
                from_m: 0.0,
                overrides: Vec::new(),
                bus_stops: false,
                stops: false,
            }),
        }
    }
}

/// Driving along a road between two positions.
#[derive(Debug, Clone)]
struct Drive {
    road: Arc<Road>,
    overrides: Arc<[SpeedOverride]>,
    pos_m: f64,
    end_m: f64,
    stop_at_end: bool,
    /// This trip's driver keeps to `factor` × the section speed (0.92–1.05).
    factor: f64,
    section_hint: usize,
}

impl Drive {
    fn target_kmh(&mut self, dynamics: Dynamics) -> f64 {
        let pos = self.pos_m;
        if let Some(o) = self
            .overrides
            .iter()
            .find(|o| (o.from_m..o.to_m).contains(&pos))
        {
            return o.kmh;
        }
        let mut kmh = (self.road.section_kmh(pos, &mut self.section_hint) * self.factor)
            .min(dynamics.cap_kmh);
        if let Some(z) = self.road.zone_at(pos) {
            kmh = kmh.min(z.limit_kmh - ZONE_MARGIN_KMH);
        }
        kmh
    }

    /// Integrates one second. Returns the distance covered and whether the end was reached.
    fn step_1s(&mut self, v_ms: &mut f64, dynamics: Dynamics) -> (f64, bool) {
        let remaining = self.end_m - self.pos_m;
        let mut want = self.target_kmh(dynamics) / 3.6;
        for z in &self.road.zones {
            let ahead = z.from_m - self.pos_m;
            if ahead > 0.0 && ahead < ZONE_LOOKAHEAD_M {
                let zone_ms = (z.limit_kmh - ZONE_MARGIN_KMH) / 3.6;
                want = want.min((zone_ms * zone_ms + 2.0 * dynamics.decel_ms2 * ahead).sqrt());
            }
        }
        if self.stop_at_end {
            // Brake to stop at the end; crawl the last metres rather than stall short.
            let stop_ms = (2.0 * dynamics.decel_ms2 * (remaining - 1.0).max(0.0)).sqrt();
            want = want.min(stop_ms).max(1.0);
        }
        let v0 = *v_ms;
        let v1 = if want > v0 {
            (v0 + dynamics.accel_ms2).min(want)
        } else {
            (v0 - MAX_DECEL_MS2).max(want)
        };
        let ds = 0.5 * (v0 + v1);
        if ds >= remaining - ARRIVED_M {
            self.pos_m = self.end_m;
            *v_ms = if self.stop_at_end { 0.0 } else { v1 };
            (remaining.max(0.0), true)
        } else {
            self.pos_m += ds;
            *v_ms = v1;
            (ds, false)
        }
    }
}

#[derive(Debug, Clone)]
enum Leg {
    Drive(Drive),
    Dwell { remaining_s: i64, ignition: bool },
    Login(DriverId),
}

/// Everything needed to start a vehicle.
pub(crate) struct VehicleSpec {
    pub info: SimVehicle,
    pub dynamics: Dynamics,
    pub rng: SmallRng,
    pub script: Vec<Step>,
    pub routine: Routine,
    /// Report interval while moving, s.
    pub moving_interval_s: i64,
    /// Time of the first report, s after the simulator's start (≥ 1).
    pub first_report_s: i64,
    pub odometer_m: f64,
    /// Speed at the start, m/s (load vehicles start moving).
    pub initial_speed_ms: f64,
}

/// A simulated vehicle and its device.
#[derive(Debug, Clone)]
pub(crate) struct VehicleSim {
    pub info: SimVehicle,
    dynamics: Dynamics,
    rng: SmallRng,
    script: VecDeque<Step>,
    routine: Routine,
    legs: VecDeque<Leg>,
    /// Time of the state below, s since the simulator's start.
    t_s: i64,
    /// When the device reports next, s since the simulator's start.
    pub next_report_s: i64,
    moving_interval_s: i64,
    v_ms: f64,
    lat: f64,
    lon: f64,
    heading_deg: f64,
    seg_hint: usize,
    odometer_m: f64,
    ignition: bool,
    driver: Option<DriverId>,
    driving_since_break_s: i64,
    stopped_s: i64,
    satellites: u8,
}

impl VehicleSim {
    /// Places the vehicle at the start of its first trip.
    pub(crate) fn new(spec: VehicleSpec) -> Self {
        let first_road = spec
            .script
            .iter()
            .find_map(|s| match s {
                Step::Trip(t) => Some((t.road.clone(), t.from_m)),
                _ => None,
            })
            .unwrap_or_else(|| (spec.routine.start_road().clone(), 0.0));
        let mut seg_hint = 0;
        let (lat, lon, heading_deg) = first_road.0.path.point_at(first_road.1, &mut seg_hint);
        let mut v = VehicleSim {
            driver: spec.info.driver.clone(),
            info: spec.info,
            dynamics: spec.dynamics,
            rng: spec.rng,
            script: spec.script.into(),
            routine: spec.routine,
            legs: VecDeque::new(),
            t_s: 0,
            next_report_s: spec.first_report_s.max(1),
            moving_interval_s: spec.moving_interval_s.max(1),
            v_ms: spec.initial_speed_ms,
            lat,
            lon,
            heading_deg,
            seg_hint,
            odometer_m: spec.odometer_m,
            ignition: true,
            driving_since_break_s: 0,
            stopped_s: 0,
            satellites: 9,
        };
        v.satellites = v.rng.random_range(7..=12);
        v
    }

    /// Pops finished legs, applies logins and expands the next step until the front
    /// leg is something to do.
    fn ensure_leg(&mut self) {
        loop {
            match self.legs.front() {
                Some(Leg::Dwell { remaining_s, .. }) if *remaining_s <= 0 => {}
                Some(Leg::Drive(d)) if d.end_m - d.pos_m < ARRIVED_M => {
                    // Dwells that follow report where the drive ended.
                    let (lat, lon, brg) = d.road.path.point_at(d.pos_m, &mut self.seg_hint);
                    (self.lat, self.lon, self.heading_deg) = (lat, lon, brg);
                }
                Some(Leg::Login(id)) => {
                    self.driver = Some(id.clone());
                    self.driving_since_break_s = 0;
                }
                Some(_) => return,
                None => {
                    let step = match self.script.pop_front() {
                        Some(step) => step,
                        None => self
                            .routine
                            .next_step(&mut self.rng, self.driving_since_break_s),
                    };
                    self.expand(step);
                    continue;
                }
            }
            self.legs.pop_front();
        }
    }

    /// Turns a step into legs; a trip is cut at bus stops and red lights.
    fn expand(&mut self, step: Step) {
        let trip = match step {
            Step::Wait {
                duration_s,
                ignition,
            } => {
                self.legs.push_back(Leg::Dwell {
                    remaining_s: duration_s,
                    ignition,
                });
                return;
            }
            Step::Login(id) => {
                self.legs.push_back(Leg::Login(id));
                return;
            }
            Step::Trip(trip) => trip,
        };
        let rng = &mut self.rng;
        let mut cuts: Vec<(f64, i64)> = Vec::new();
        // No stop in or just before a scripted stretch: the episode must happen.
        let clear = |s: f64| {
            !trip
                .overrides
                .iter()
                .any(|o| s > o.from_m - 300.0 && s < o.to_m)
        };
        if trip.bus_stops {
            for &s in trip.road.stops_m.iter().filter(|&&s| s > trip.from_m) {
                if clear(s) && rng.random_bool(0.85) {
                    cuts.push((s, rng.random_range(15..=40)));
                }
            }
        }
        if trip.stops {
            for &s in trip.road.lights_m.iter().filter(|&&s| s > trip.from_m) {
                if clear(s) && rng.random_bool(0.35) {
                    cuts.push((s, rng.random_range(15..=50)));
                }
            }
        }
        cuts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let factor = rng.random_range(0.92..=1.05);
        let overrides: Arc<[SpeedOverride]> = trip.overrides.into();
        let drive = |from_m: f64, end_m: f64, stop_at_end: bool| {
            Leg::Drive(Drive {
                road: trip.road.clone(),
                overrides: overrides.clone(),
                pos_m: from_m,
                end_m,
                stop_at_end,
                factor,
                section_hint: 0,
            })
        };
        let mut from_m = trip.from_m;
        for (s, dwell_s) in cuts {
            self.legs.push_back(drive(from_m, s, true));
            self.legs.push_back(Leg::Dwell {
                remaining_s: dwell_s,
                ignition: true,
            });
            from_m = s;
        }
        self.legs
            .push_back(drive(from_m, trip.road.length_m(), trip.stops));
    }

    /// Moves the state forward to `t_s` in one-second steps.
    pub(crate) fn advance_to(&mut self, t_s: i64) {
        while self.t_s < t_s {
            self.step_1s();
        }
    }

    fn step_1s(&mut self) {
        self.ensure_leg();
        let mut arrived = false;
        match self.legs.front_mut().expect("routines never end") {
            Leg::Dwell {
                remaining_s,
                ignition,
            } => {
                *remaining_s -= 1;
                self.ignition = *ignition;
                self.v_ms = 0.0;
            }
            Leg::Drive(d) => {
                self.ignition = true;
                let (ds, done) = d.step_1s(&mut self.v_ms, self.dynamics);
                self.odometer_m += ds;
                arrived = done;
            }
            Leg::Login(_) => unreachable!("ensure_leg applies logins"),
        }
        if arrived {
            // Settles the position and pops the leg.
            self.ensure_leg();
        }
        if self.v_ms > STOPPED_MS {
            self.driving_since_break_s += 1;
            self.stopped_s = 0;
        } else {
            self.stopped_s += 1;
            if self.stopped_s >= BREAK_S {
                self.driving_since_break_s = 0;
            }
        }
        self.t_s += 1;
    }

    /// Writes the fix for the current state to `out` and schedules the next report.
    /// `start_ms` is the simulator's start, ms since the Unix epoch.
    pub(crate) fn report(&mut self, start_ms: i64, out: &mut Vec<u8>) {
        self.ensure_leg();
        if let Some(Leg::Drive(d)) = self.legs.front() {
            let (lat, lon, brg) = d.road.path.point_at(d.pos_m, &mut self.seg_hint);
            (self.lat, self.lon, self.heading_deg) = (lat, lon, brg);
        }
        let rng = &mut self.rng;
        let moving = self.v_ms > STOPPED_MS;
        let (speed_kmh, heading_deg) = if moving {
            (
                (self.v_ms * 3.6 + rng.random_range(-0.8..=0.8)).max(0.5),
                self.heading_deg + rng.random_range(-1.5..=1.5),
            )
        } else {
            (0.0, self.heading_deg)
        };
        // GPS noise: a few metres in each direction, moving or not.
        let north_m: f64 = rng.random_range(-4.0..=4.0);
        let east_m: f64 = rng.random_range(-4.0..=4.0);
        if rng.random_ratio(1, 5) {
            self.satellites = if rng.random_bool(0.5) {
                (self.satellites + 1).min(12)
            } else {
                (self.satellites - 1).max(7)
            };
        }
        let hdop = 0.7 + f64::from(12 - self.satellites) * 0.12 + rng.random_range(0.0..0.1);
        payload::write(
            out,
            &PayloadFix {
                vehicle: self.info.id.as_str(),
                ts_ms: start_ms + self.t_s * 1000,
                lat: self.lat + north_m / M_PER_DEG_LAT,
                lon: self.lon + east_m / m_per_deg_lon(self.lat),
                speed_kmh,
                heading_deg: heading_deg.rem_euclid(360.0),
                driver: self.driver.as_ref().map(DriverId::as_str),
                ignition: self.ignition,
                satellites: self.satellites,
                hdop,
                odometer_m: self.odometer_m,
            },
        );
        self.next_report_s = self.t_s + self.next_interval_s();
    }

    /// Moving: the device's cadence. Stopped: every 30 s (60 s with ignition off), and
    /// once more the second the vehicle moves off, so no gap while moving is longer
    /// than the moving cadence.
    fn next_interval_s(&self) -> i64 {
        let mut ahead_s = 0;
        let mut parked = false;
        for leg in &self.legs {
            match leg {
                Leg::Dwell {
                    remaining_s,
                    ignition,
                } => {
                    if ahead_s == 0 {
                        parked = !ignition;
                    }
                    ahead_s += remaining_s;
                }
                Leg::Login(_) => {}
                Leg::Drive(_) => break,
            }
        }
        if ahead_s == 0 {
            return self.moving_interval_s;
        }
        let cadence = if parked {
            PARKED_INTERVAL_S
        } else {
            STOPPED_INTERVAL_S
        };
        cadence.min(ahead_s).max(1)
    }
}
