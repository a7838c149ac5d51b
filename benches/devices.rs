//! Device decoders: what a listener spends on each frame (scan, checksum, decode),
//! per frame for single-position messages and per fix for multi-position ones, over
//! frames the simulator's device encoders build.
//!
//! Run: `cargo bench --bench devices`. Target: under 1 µs per fix.

use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetwatch::sim::devices::{self, DeviceFix, Jt808Phone};
use fleetwatch::sources::device::{gt06, jt808, osmand, teltonika, DevicePosition, Scan};

/// Positions per multi-position frame: a JT/T 808 batch, a Teltonika packet.
const BATCH: usize = 10;

/// Local time of the terminals (Vietnam).
const GMT7: i32 = 7 * 3600;

/// A truck on Xa lo Ha Noi, reporting every 5 s.
fn fixes(n: usize) -> Vec<DeviceFix> {
    let start = Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap();
    (0..n)
        .map(|i| DeviceFix {
            ts: start + chrono::Duration::seconds(5 * i as i64),
            lat: 10.8801 + i as f64 * 1.2e-4,
            lon: 106.7702 + i as f64 * 1.5e-4,
            speed_kmh: 62.4 + (i % 7) as f64,
            heading_deg: 51.0,
            ignition: true,
            satellites: 11,
            odometer_m: Some(184_230.0 + i as f64 * 87.0),
        })
        .collect()
}

/// The frame at the start of `buf`, as the listener's scanner finds it.
fn frame_len(scan: Scan) -> usize {
    match scan {
        Scan::Frame(n) => n,
        s => panic!("not a frame: {s:?}"),
    }
}

/// A listener's work on a GT06 frame: scan, CRC, decode.
fn gt06_read(raw: &[u8]) -> gt06::Message {
    let n = frame_len(gt06::scan(raw));
    gt06::decode(&gt06::parse(&raw[..n]).unwrap(), 0).unwrap()
}

/// A listener's work on a JT/T 808 frame: scan, unescape and check code, decode.
fn jt808_read(raw: &[u8]) -> jt808::Message {
    let n = frame_len(jt808::scan(raw));
    jt808::decode(&jt808::parse(&raw[..n]).unwrap(), GMT7).unwrap()
}

/// A listener's work on a Teltonika AVL packet: scan, CRC, decode.
fn teltonika_read(raw: &[u8]) -> Vec<DevicePosition> {
    let n = frame_len(teltonika::scan(raw));
    teltonika::decode(&raw[..n]).unwrap()
}

/// Positions a JT/T 808 message carries (checked once before timing).
fn jt808_count(m: jt808::Message) -> usize {
    match m {
        jt808::Message::Positions(p) => p.len(),
        m => panic!("not positions: {m:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let one = &fixes(1)[0];
    let many = fixes(BATCH);
    let phone = Jt808Phone::new("013912345678").unwrap();
    let imei = devices::Imei::new("864717003283581").unwrap();

    let gt06 = devices::gt06_position(one, 1);
    let jt808_one = devices::jt808_location(&phone, one, GMT7, 1);
    let jt808_batch = devices::jt808_batch(&phone, &many, true, GMT7, 2).unwrap();
    let teltonika_one = devices::teltonika_packet(std::slice::from_ref(one)).unwrap();
    let teltonika_many = devices::teltonika_packet(&many).unwrap();
    let udp_many = devices::teltonika_udp(&imei, 1, 1, &many).unwrap();
    let osmand = devices::osmand_query("phone-7", one);
    let osmand_json = format!(
        r#"{{"location":{{"timestamp":"2026-11-24T01:00:00.000Z","coords":{{"latitude":{},"longitude":{},"accuracy":5,"speed":17.3,"heading":51,"altitude":3}},"is_moving":true,"odometer":184230,"battery":{{"level":0.5}}}},"device_id":"phone-7"}}"#,
        one.lat, one.lon
    );

    // Every frame decodes to what it carries before anything is timed.
    assert!(matches!(gt06_read(&gt06), gt06::Message::Position(_)));
    assert_eq!(jt808_count(jt808_read(&jt808_one)), 1);
    assert_eq!(jt808_count(jt808_read(&jt808_batch)), BATCH);
    assert_eq!(teltonika_read(&teltonika_one).len(), 1);
    assert_eq!(teltonika_read(&teltonika_many).len(), BATCH);
    assert_eq!(
        teltonika::decode_udp(&udp_many).unwrap().positions.len(),
        BATCH
    );
    assert!(osmand::decode_params(osmand.as_bytes()).is_ok());
    assert!(osmand::decode_json(osmand_json.as_bytes()).is_ok());

    let mut g = c.benchmark_group("device decode per frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("gt06 0x22 position", |b| {
        b.iter(|| gt06_read(black_box(&gt06)))
    });
    g.bench_function("jt808 0x0200 location", |b| {
        b.iter(|| jt808_read(black_box(&jt808_one)))
    });
    g.bench_function("teltonika codec 8E, 1 record", |b| {
        b.iter(|| teltonika_read(black_box(&teltonika_one)))
    });
    g.bench_function("osmand query", |b| {
        b.iter(|| osmand::decode_params(black_box(osmand.as_bytes())))
    });
    g.bench_function("osmand json", |b| {
        b.iter(|| osmand::decode_json(black_box(osmand_json.as_bytes())))
    });
    g.finish();

    let mut g = c.benchmark_group("device decode per fix");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("jt808 0x0704 batch of 10", |b| {
        b.iter(|| jt808_read(black_box(&jt808_batch)))
    });
    g.bench_function("teltonika codec 8E, 10 records", |b| {
        b.iter(|| teltonika_read(black_box(&teltonika_many)))
    });
    g.bench_function("teltonika udp, 10 records", |b| {
        b.iter(|| teltonika::decode_udp(black_box(&udp_many)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Sub-microsecond functions settle quickly: short runs keep the whole bench
    // to about a minute on the shared box.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
