//! Building the GTFS-realtime vehicle-positions feed (message and protobuf bytes) for
//! 2,000 buses on scheduled trips, as `GET /api/v1/gtfs-rt/vehicle-positions` does
//! after its query. `cargo bench --bench gtfs_rt`.

use chrono::{NaiveDate, TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use fleetwatch::api::gtfs_rt::{vehicle_positions, RtVehicle};
use fleetwatch::domain::live::LiveTrip;
use prost::Message;

fn fleet(n: usize) -> Vec<RtVehicle> {
    let now = Utc::now();
    (0..n)
        .map(|i| RtVehicle {
            vehicle_id: format!("51B-{:03}.{:02}", i / 100, i % 100),
            plate: Some(format!("51B-{:03}.{:02}", i / 100, i % 100)),
            ts: now - TimeDelta::seconds((i % 30) as i64),
            lat: 10.7 + (i as f64) * 1e-4,
            lon: 106.6 + (i as f64) * 1e-4,
            speed_kmh: Some((i % 50) as f32),
            heading_deg: Some((i % 360) as f32),
            trip: Some(LiveTrip {
                trip_id: format!("T{}-{}", i % 200, i),
                route_id: format!("R{}", i % 200),
                service_date: NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
                scheduled_start: now - TimeDelta::minutes((i % 60) as i64),
                direction: Some((i % 2) as u8),
                headsign: Some("Bến xe Miền Tây".into()),
                next_stop_id: Some(format!("S{}", i % 5_000)),
                next_stop_sequence: Some((i % 40) as u32 + 1),
                next_stop_name: Some("Chợ Bến Thành".into()),
                delay_s: Some((i % 600) as i32 - 120),
                confidence: 90,
            }),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let buses = fleet(2_000);
    c.bench_function("gtfs_rt_vehicle_positions_2000_buses", |b| {
        b.iter(|| {
            let msg = vehicle_positions(&buses, Utc::now(), 7 * 3600);
            msg.encode_to_vec().len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
