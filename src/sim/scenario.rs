//! The fleets: the scripted demo fleet (so every compliance rule has something to
//! find) and the load fleet (many vehicles, always moving, cheap per fix).

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::fixtures::Geography;
use super::path::{Road, SpeedZone};
use super::vehicle::{
    Dynamics, Routine, RoutineKind, SpeedOverride, Step, Trip, VehicleSim, VehicleSpec, BUS, TRUCK,
};
use super::SimVehicle;
use crate::domain::{CooperativeId, DriverId, VehicleClass, VehicleId};

/// Base speeds per route as `(lat, lon, kmh)`: from the vertex nearest the point on,
/// in both directions. Town streets 30–40, avenues 45–50, highways 55–65 km/h.
fn breakpoints(route_id: &str) -> &'static [(f64, f64, f64)] {
    match route_id {
        "BD-01" => &[
            (10.9678, 106.6722, 35.0), // Thu Dau Mot terminal, town streets
            (10.9560, 106.6950, 45.0), // Phu Loi, DT743
            (10.9140, 106.7420, 40.0), // Song Than
            (10.9068, 106.7615, 30.0), // Di An centre
        ],
        "BD-02" => &[
            (10.9678, 106.6722, 38.0),
            (10.9880, 106.6680, 48.0), // Binh Duong Avenue
            (11.0400, 106.6600, 40.0), // New City boulevards
        ],
        "BD-03" => &[
            (10.9042, 106.7698, 32.0),
            (10.9150, 106.7560, 42.0),
            (10.9190, 106.7100, 32.0), // Lai Thieu old town
        ],
        "BD-04" => &[
            (10.9678, 106.6722, 40.0),
            (10.9550, 106.6790, 48.0), // QL13
            (10.9110, 106.7010, 35.0),
        ],
        "TRUCK-ICD-CATLAI" => &[
            (10.8965, 106.7515, 20.0), // inside the ICD
            (10.8975, 106.7570, 45.0),
            (10.8930, 106.7700, 55.0), // QL1K
            (10.8495, 106.7735, 65.0), // Xa lo Ha Noi from Thu Duc crossroads
            (10.8120, 106.7500, 55.0), // ring road
            (10.7775, 106.7705, 40.0), // Cat Lai intersection
            (10.7650, 106.7850, 20.0), // port gate and yard
        ],
        "TRUCK-ICD-TDM" => &[
            (10.8965, 106.7515, 20.0),
            (10.9020, 106.7495, 40.0),
            (10.9140, 106.7420, 55.0), // DT743
            (10.9620, 106.6880, 40.0),
            (10.9740, 106.6650, 30.0), // Thu Dau Mot streets
        ],
        _ => &[],
    }
}

/// The demo geography as drivable roads.
struct World {
    geo: Geography,
    speed_zones: Vec<SpeedZone>,
}

impl World {
    fn demo() -> World {
        let geo = Geography::demo().expect("embedded demo fixtures are valid (tested)");
        let speed_zones = geo.speed_zones();
        World { geo, speed_zones }
    }

    /// Both directions of a route: as drawn (`out`) and reversed (`back`).
    fn pair(&self, route_id: &str) -> (Arc<Road>, Arc<Road>) {
        let line = self
            .geo
            .route(route_id)
            .expect("embedded demo fixtures have every demo route (tested)");
        let out = Road::new(line.path.clone(), breakpoints(route_id), &self.speed_zones);
        let back = out.reversed(&self.speed_zones);
        (Arc::new(out), Arc::new(back))
    }
}

/// splitmix64: independent, well-mixed seeds per vehicle from one user seed.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn id<T>(parse: fn(&str) -> Result<T, crate::domain::IdError>, raw: &str) -> T {
    parse(raw).expect("demo ids are valid")
}

/// One demo vehicle's description.
struct DemoVehicle {
    plate: &'static str,
    cooperative: &'static str,
    class: VehicleClass,
    route: Option<&'static str>,
    /// 12-digit citizen ID card numbers (province code, sex/century, birth year, serial).
    driver: &'static str,
    moving_interval_s: i64,
    script: Vec<Step>,
    routine: Routine,
}

fn wait(duration_s: i64, ignition: bool) -> Step {
    Step::Wait {
        duration_s,
        ignition,
    }
}

/// The demo fleet; see the module documentation of `sim` for the script.
pub(crate) fn demo_fleet(seed: u64) -> Vec<VehicleSim> {
    let world = World::demo();
    let (bd01_out, bd01_back) = world.pair("BD-01");
    let (bd02_out, bd02_back) = world.pair("BD-02");
    let (bd03_out, bd03_back) = world.pair("BD-03");
    let (bd04_out, bd04_back) = world.pair("BD-04");
    let (port_out, port_back) = world.pair("TRUCK-ICD-CATLAI");
    let (tdm_out, tdm_back) = world.pair("TRUCK-ICD-TDM");

    // B1 drives through the school zone at 48 km/h (limit 40) on its first trip.
    let school_speeding: Vec<SpeedOverride> = bd01_out
        .zones
        .iter()
        .map(|z| SpeedOverride {
            from_m: z.from_m,
            to_m: z.to_m,
            kmh: 48.0,
        })
        .collect();

    // B2 detours 450 m east of Binh Duong Avenue for ~2.5 km (road works).
    let detour_from_m = bd02_out.path.nearest_vertex_m(10.9880, 106.6680);
    let detour_to_m = bd02_out.path.nearest_vertex_m(11.0120, 106.6635);
    let detour_path = bd02_out
        .path
        .with_detour(detour_from_m, detour_to_m, 450.0, 250.0);
    let detour_len_m =
        detour_path.length_m() - (bd02_out.length_m() - (detour_to_m - detour_from_m));
    let bd02_detour = Arc::new(Road::new(
        detour_path,
        breakpoints("BD-02"),
        &world.speed_zones,
    ));
    let side_street = vec![SpeedOverride {
        from_m: detour_from_m,
        to_m: detour_from_m + detour_len_m,
        kmh: 30.0,
    }];

    // B3 briefly at 66 km/h on the Thuan Giao straight.
    let burst_from_m = bd03_out.path.nearest_vertex_m(10.9236, 106.7340);
    let bus_burst = vec![SpeedOverride {
        from_m: burst_from_m,
        to_m: burst_from_m + 800.0,
        kmh: 66.0,
    }];

    // T1 at 90 km/h for 1.5 km on Xa lo Ha Noi (about a minute over 80).
    let highway_from_m = port_out.path.nearest_vertex_m(10.8440, 106.7700);
    let truck_speeding = vec![SpeedOverride {
        from_m: highway_from_m,
        to_m: highway_from_m + 1_500.0,
        kmh: 90.0,
    }];

    let fleet = vec![
        DemoVehicle {
            plate: "61B-024.17",
            cooperative: "HTX-TDM",
            class: VehicleClass::Bus,
            route: Some("BD-01"),
            driver: "074085001234",
            moving_interval_s: 5,
            script: vec![
                wait(180, true),
                Trip::bus(bd01_out.clone(), school_speeding),
                wait(360, true),
                Trip::bus(bd01_back.clone(), Vec::new()),
                // Driver change at the terminal: the first driver parks and leaves,
                // the second logs in with the card and boards.
                wait(360, false),
                Step::Login(id(DriverId::parse, "074190005678")),
                wait(720, true),
            ],
            routine: Routine::new(RoutineKind::Bus, bd01_out, bd01_back, true),
        },
        DemoVehicle {
            plate: "61B-031.05",
            cooperative: "HTX-TDM",
            class: VehicleClass::Bus,
            route: Some("BD-02"),
            driver: "074088004321",
            moving_interval_s: 10,
            script: vec![wait(300, true), Trip::bus(bd02_detour, side_street)],
            routine: Routine::new(RoutineKind::Bus, bd02_out, bd02_back, false),
        },
        DemoVehicle {
            plate: "61B-045.88",
            cooperative: "HTX-DIAN",
            class: VehicleClass::Bus,
            route: Some("BD-03"),
            driver: "074092007788",
            moving_interval_s: 5,
            script: vec![wait(120, false), Trip::bus(bd03_out.clone(), bus_burst)],
            routine: Routine::new(RoutineKind::Bus, bd03_out, bd03_back, false),
        },
        DemoVehicle {
            plate: "61B-052.31",
            cooperative: "HTX-DIAN",
            class: VehicleClass::Bus,
            route: Some("BD-04"),
            driver: "079087002468",
            moving_interval_s: 15,
            script: vec![wait(240, true)],
            routine: Routine::new(RoutineKind::Bus, bd04_out, bd04_back, false),
        },
        DemoVehicle {
            plate: "61C-330.12",
            cooperative: "HTX-CONTAINER-BD",
            class: VehicleClass::Container,
            route: None,
            driver: "074083009911",
            moving_interval_s: 5,
            script: vec![
                wait(300, true),
                Trip::truck(port_out.clone(), truck_speeding),
                wait(1800, false),
            ],
            routine: Routine::new(
                RoutineKind::Truck {
                    push_on_until_driving_s: 0,
                },
                port_out.clone(),
                port_back.clone(),
                false,
            ),
        },
        DemoVehicle {
            plate: "61C-412.80",
            cooperative: "HTX-CONTAINER-BD",
            class: VehicleClass::Tractor,
            route: None,
            driver: "074079003355",
            moving_interval_s: 5,
            script: vec![wait(60, true)],
            routine: Routine::new(
                RoutineKind::Truck {
                    // Only stops 4–6 min until 4 h 20 min of driving, then 45 min off.
                    push_on_until_driving_s: 4 * 3600 + 20 * 60,
                },
                port_out.clone(),
                port_back.clone(),
                true,
            ),
        },
        DemoVehicle {
            plate: "61C-207.45",
            cooperative: "HTX-CONTAINER-BD",
            class: VehicleClass::Container,
            route: None,
            driver: "079090006622",
            moving_interval_s: 10,
            script: vec![
                wait(600, true),
                // Into Thu Dau Mot's inner city, where containers are banned 06–22 h.
                Trip::truck(tdm_out, Vec::new()),
                wait(1500, false),
                Trip::truck(tdm_back, Vec::new()),
                wait(1800, false),
            ],
            routine: Routine::new(
                RoutineKind::Truck {
                    push_on_until_driving_s: 0,
                },
                port_out.clone(),
                port_back.clone(),
                true,
            ),
        },
        DemoVehicle {
            plate: "61C-518.03",
            cooperative: "HTX-CONTAINER-BD",
            class: VehicleClass::Tractor,
            route: None,
            driver: "074086008844",
            moving_interval_s: 5,
            script: vec![wait(1200, false)],
            routine: Routine::new(
                RoutineKind::Truck {
                    push_on_until_driving_s: 0,
                },
                port_out,
                port_back,
                true,
            ),
        },
    ];

    fleet
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let mut rng = SmallRng::seed_from_u64(mix(seed, i as u64));
            let dynamics: Dynamics = if v.class == VehicleClass::Bus {
                BUS
            } else {
                TRUCK
            };
            let first_report_s = rng.random_range(1..=v.moving_interval_s);
            let odometer_m =
                (rng.random_range(40_000_000.0..400_000_000.0_f64) * 10.0).round() / 10.0;
            VehicleSim::new(VehicleSpec {
                info: SimVehicle {
                    id: id(VehicleId::parse, v.plate),
                    cooperative: id(CooperativeId::parse, v.cooperative),
                    class: v.class,
                    route: v.route.map(str::to_owned),
                    driver: Some(id(DriverId::parse, v.driver)),
                },
                dynamics,
                rng,
                script: v.script,
                routine: v.routine,
                moving_interval_s: v.moving_interval_s,
                first_report_s,
                odometer_m,
                initial_speed_ms: 0.0,
            })
        })
        .collect()
}

/// A plate-like unique id for load vehicle `i`: `50B-000.00` … `99C-999.99`, then
/// `LOAD-<i>` beyond five million vehicles.
fn load_plate(i: usize, is_bus: bool) -> String {
    if i >= 5_000_000 {
        return format!("LOAD-{i}");
    }
    let series = if is_bus { 'B' } else { 'C' };
    let province = 50 + i / 100_000;
    let serial = i % 100_000;
    format!("{province}{series}-{:03}.{:02}", serial / 100, serial % 100)
}

/// `n` vehicles driving back and forth on every demo route and truck corridor, from
/// random positions, never stopping; reporting every `moving_interval_s`, staggered.
pub(crate) fn load_fleet(n: usize, seed: u64, moving_interval_s: i64) -> Vec<VehicleSim> {
    let world = World::demo();
    let roads: Vec<(String, bool, Arc<Road>, Arc<Road>)> = world
        .geo
        .routes
        .iter()
        .map(|r| {
            let (out, back) = world.pair(&r.route_id);
            (r.route_id.clone(), r.is_bus_route, out, back)
        })
        .collect();
    let cooperatives: Vec<CooperativeId> = (0..16)
        .map(|k| id(CooperativeId::parse, &format!("HTX-LOAD-{k:02}")))
        .collect();
    let interval = moving_interval_s.max(1);
    (0..n)
        .map(|i| {
            let (route_id, is_bus, out, back) = &roads[i % roads.len()];
            let mut rng = SmallRng::seed_from_u64(mix(seed, i as u64));
            let go_out = rng.random_bool(0.5);
            let road = if go_out { out.clone() } else { back.clone() };
            let from_m = rng.random_range(0.0..road.length_m());
            let mut hint = 0;
            let initial_speed_ms = road.section_kmh(from_m, &mut hint) / 3.6;
            let class = match (is_bus, i % 2) {
                (true, _) => VehicleClass::Bus,
                (false, 0) => VehicleClass::Container,
                (false, _) => VehicleClass::Tractor,
            };
            VehicleSim::new(VehicleSpec {
                info: SimVehicle {
                    id: id(VehicleId::parse, &load_plate(i, *is_bus)),
                    cooperative: cooperatives[i % cooperatives.len()].clone(),
                    class,
                    route: is_bus.then(|| route_id.clone()),
                    driver: Some(id(DriverId::parse, &format!("0740{:08}", i % 100_000_000))),
                },
                dynamics: if *is_bus { BUS } else { TRUCK },
                script: vec![Step::Trip(Trip {
                    road,
                    from_m,
                    overrides: Vec::new(),
                    bus_stops: false,
                    stops: false,
                })],
                routine: Routine::new(RoutineKind::Loop, out.clone(), back.clone(), !go_out),
                moving_interval_s: interval,
                first_report_s: 1 + (i as i64 % interval),
                odometer_m: rng.random_range(1_000_000.0..300_000_000.0),
                initial_speed_ms,
                rng,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_plates_are_unique_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for i in (0..5_000_100).step_by(997).chain(4_999_990..5_000_010) {
            let plate = load_plate(i, i % 3 == 0);
            assert!(VehicleId::parse(&plate).is_ok(), "{plate}");
            assert!(
                seen.insert(format!("{}{}", &plate[..2], &plate[3..])),
                "duplicate for {i}"
            );
        }
        assert_eq!(load_plate(0, true), "50B-000.00");
        assert_eq!(load_plate(123_456, false), "51C-234.56");
    }

    #[test]
    fn seeds_differ_per_vehicle() {
        assert_ne!(mix(1, 0), mix(1, 1));
        assert_ne!(mix(1, 0), mix(2, 0));
    }
}
