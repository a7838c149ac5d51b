//! Building the GTFS-realtime feeds for 2,000 buses on scheduled trips, as
//! `GET /api/v1/gtfs-rt/vehicle-positions` and `/trip-updates` do after their queries:
//! the message and its protobuf bytes. Trip updates: 200 routes of 40 stops, each bus
//! half way along its run (its stops behind observed, the ones ahead predicted).
//!
//! Run: `cargo bench --bench gtfs_rt`. Target: each feed under 10 ms.

use std::hint::black_box;

use ::geo::Coord;
use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use fleetwatch::api::gtfs_rt::{proto, trip_update, vehicle_positions, ObservedStop, RtVehicle};
use fleetwatch::domain::live::LiveTrip;
use fleetwatch::geo::{Schedule, ScheduledTrip, Service, StopPoint, StopTime};
use prost::Message;

const BUSES: usize = 2_000;
const ROUTES: usize = 200;
const STOPS: usize = 40;
/// 07:00 local (UTC+7) on the service date: the runs' first departure.
const DEPART_S: i32 = 7 * 3600;
const UTC_OFFSET_S: i32 = 7 * 3600;

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 3).expect("valid date")
}

/// 200 straight routes of 40 stops 500 m apart, one trip per bus (10 per route),
/// stops 90 s apart.
fn schedule() -> Schedule {
    let mut stops = Vec::new();
    let mut shapes = Vec::new();
    let mut trips = Vec::new();
    for r in 0..ROUTES {
        let (lon0, lat0) = (106.6 + r as f64 * 1e-3, 10.7);
        let step = 0.0045; // about 500 m of latitude
        let line: Vec<Coord<f64>> = (0..STOPS)
            .map(|k| Coord {
                x: lon0,
                y: lat0 + k as f64 * step,
            })
            .collect();
        shapes.push((format!("SH{r}"), format!("R{r}"), line.clone()));
        let first = stops.len() as u32;
        for (k, c) in line.iter().enumerate() {
            stops.push(StopPoint {
                id: format!("S{r}-{k}"),
                name: Some(format!("Trạm {k} tuyến {r}")),
                lon: Some(c.x),
                lat: Some(c.y),
            });
        }
        for j in 0..BUSES / ROUTES {
            let stop_times = (0..STOPS)
                .map(|k| StopTime {
                    stop: first + k as u32,
                    seq: k as u32 + 1,
                    arrival_s: DEPART_S + k as i32 * 90,
                    departure_s: DEPART_S + k as i32 * 90 + 20,
                    dist_m: k as f64 * 500.0,
                })
                .collect();
            trips.push(ScheduledTrip {
                id: format!("T{r}-{j}"),
                route: format!("R{r}"),
                service: 0,
                shape: r as u32,
                direction: Some((j % 2) as u8),
                headsign: Some("Bến xe Miền Tây".into()),
                stop_times,
                frequencies: Vec::new(),
            });
        }
    }
    let service = Service {
        id: "ALL".into(),
        always: true,
        ..Service::default()
    };
    Schedule::from_parts(stops, shapes, vec![service], trips).expect("synthetic schedule is valid")
}

fn start() -> DateTime<Utc> {
    let local = day().and_hms_opt(0, 0, 0).expect("midnight")
        + TimeDelta::seconds(i64::from(DEPART_S - UTC_OFFSET_S));
    Utc.from_utc_datetime(&local)
}

/// Bus `i` runs trip `T{i % 200}-{i / 200}`, its next stop the 21st, 2 min late.
fn fleet() -> Vec<RtVehicle> {
    let now = start() + TimeDelta::minutes(30);
    (0..BUSES)
        .map(|i| {
            let (r, j) = (i % ROUTES, i / ROUTES);
            let next = STOPS as u32 / 2 + 1;
            RtVehicle {
                vehicle_id: format!("51B-{:03}.{:02}", i / 100, i % 100),
                plate: Some(format!("51B-{:03}.{:02}", i / 100, i % 100)),
                ts: now - TimeDelta::seconds((i % 30) as i64),
                lat: 10.7 + f64::from(next - 1) * 0.0045,
                lon: 106.6 + r as f64 * 1e-3,
                speed_kmh: Some((i % 50) as f32),
                heading_deg: Some(0.0),
                trip: Some(LiveTrip {
                    trip_id: format!("T{r}-{j}"),
                    route_id: format!("R{r}"),
                    service_date: day(),
                    scheduled_start: start(),
                    direction: Some((j % 2) as u8),
                    headsign: Some("Bến xe Miền Tây".into()),
                    next_stop_id: Some(format!("S{r}-{}", next - 1)),
                    next_stop_sequence: Some(next),
                    next_stop_name: Some(format!("Trạm {} tuyến {r}", next - 1)),
                    delay_s: Some(120),
                    confidence: 90,
                }),
            }
        })
        .collect()
}

/// The stop events of each bus's run so far: the stops before its next, 2 min late.
fn observed(buses: &[RtVehicle]) -> Vec<Vec<ObservedStop>> {
    buses
        .iter()
        .map(|v| {
            let t = v.trip.as_ref().expect("every bus runs a trip");
            let r = &t.route_id[1..];
            (1..t.next_stop_sequence.expect("a next stop"))
                .map(|seq| {
                    let sch = t.scheduled_start + TimeDelta::seconds(i64::from(seq - 1) * 90);
                    ObservedStop {
                        stop_sequence: seq,
                        stop_id: format!("S{r}-{}", seq - 1),
                        arrival: Some(sch + TimeDelta::seconds(120)),
                        departure: Some(sch + TimeDelta::seconds(140)),
                        scheduled_arrival: sch,
                        scheduled_departure: sch + TimeDelta::seconds(20),
                        skipped: false,
                    }
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let buses = fleet();
    let sched = schedule();
    let seen = observed(&buses);
    let now = start() + TimeDelta::minutes(30);

    // Checked once, so the benchmark measures feeds that carry what they should.
    let vp = vehicle_positions(&buses, now, UTC_OFFSET_S);
    assert_eq!(vp.entity.len(), BUSES);
    let tu = trip_update(&buses[0], &sched, &seen[0], UTC_OFFSET_S).expect("bus 0 runs a trip");
    let stus = tu.trip_update.expect("a trip update").stop_time_update;
    assert_eq!(stus.len(), STOPS, "20 stops observed + 20 predicted");

    c.bench_function("gtfs_rt_vehicle_positions_2000_buses", |b| {
        b.iter(|| {
            let msg = vehicle_positions(black_box(&buses), now, UTC_OFFSET_S);
            msg.encode_to_vec().len()
        })
    });
    c.bench_function("gtfs_rt_trip_updates_2000_buses", |b| {
        b.iter(|| {
            let entity = black_box(&buses)
                .iter()
                .zip(&seen)
                .filter_map(|(v, o)| trip_update(v, &sched, o, UTC_OFFSET_S))
                .collect();
            let msg = proto::FeedMessage {
                header: proto::FeedHeader {
                    gtfs_realtime_version: "2.0".into(),
                    incrementality: Some(proto::Incrementality::FullDataset as i32),
                    timestamp: Some(now.timestamp() as u64),
                },
                entity,
            };
            msg.encode_to_vec().len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
