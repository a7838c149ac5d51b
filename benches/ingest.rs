//! Decode + validate per fix, over payloads like the simulator's and a batch.

use std::hint::black_box;

use bytes::Bytes;
use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetwatch::pipeline::decode::Decoder;
use fleetwatch::pipeline::topic::TopicPattern;
use fleetwatch::pipeline::validate::{ValidateConfig, Validator};

fn payload(i: usize) -> String {
    let ts = Utc::now() - chrono::Duration::seconds(3600 - i as i64);
    format!(
        r#"{{"vehicle":"61C-330.{:02}","ts":"{}","lat":{:.6},"lon":{:.6},"speed_kmh":{:.1},"heading_deg":91.0,"driver_id":"079123456789","ignition":true,"satellites":9,"hdop":0.9,"odometer_m":{:.1}}}"#,
        i % 100,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        10.9 + i as f64 * 1e-5,
        106.75 + i as f64 * 1e-5,
        40.0 + (i % 30) as f64,
        123456.7 + i as f64 * 10.0
    )
}

fn bench(c: &mut Criterion) {
    let singles: Vec<(String, Bytes)> = (0..1000)
        .map(|i| {
            (
                format!("fleet/HTX-CONTAINER-BD/61C-330.{:02}/fix", i % 100),
                Bytes::from(payload(i)),
            )
        })
        .collect();
    let pattern = TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap();

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    let decoder = Decoder::default();
    g.bench_function("decode canonical fix", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % singles.len();
            black_box(decoder.decode(black_box(&singles[i].1)).unwrap());
        })
    });
    let owntracks = Bytes::from_static(
        br#"{"_type":"location","tid":"b1","tst":1795914000,"lat":10.98,"lon":106.65,"vel":42,"cog":270,"acc":8,"batt":80}"#,
    );
    g.bench_function("decode owntracks fix", |b| {
        b.iter(|| black_box(decoder.decode(black_box(&owntracks)).unwrap()))
    });
    let mut validator = Validator::new(pattern.clone(), ValidateConfig::default(), &[]);
    let now = Utc::now();
    g.bench_function("topic + decode + validate + flags per fix", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % singles.len();
            let (t, p) = &singles[i];
            black_box(validator.process(t, p, now));
        })
    });
    g.finish();

    let batch: String = format!(
        "[{}]",
        (0..100)
            .map(|i| payload(i * 100))
            .collect::<Vec<_>>()
            .join(",")
    );
    let batch = Bytes::from(batch);
    let mut g = c.benchmark_group("ingest batch");
    g.throughput(Throughput::Elements(100));
    let mut validator = Validator::new(pattern, ValidateConfig::default(), &[]);
    g.bench_function("decode + validate 100-fix batch", |b| {
        b.iter(|| {
            black_box(validator.process("fleet/HTX-CONTAINER-BD/61C-330.00/fix", &batch, now))
        })
    });
    g.finish();
}

/// The load simulator must outrun any broker it feeds: one second of a 100,000-vehicle
/// fleet (about 20,000 fixes with their payloads).
fn simulator(c: &mut Criterion) {
    let start = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 24, 1, 0, 0).unwrap();
    let mut sim = fleetwatch::sim::Simulator::load(100_000, 1, start);
    let per_s = sim.advance(chrono::Duration::seconds(1)).len() as u64;
    let mut g = c.benchmark_group("simulator");
    g.throughput(Throughput::Elements(per_s));
    g.bench_function("one second of a 100k-vehicle load", |b| {
        b.iter(|| black_box(sim.advance(chrono::Duration::seconds(1))))
    });
    g.finish();
}

criterion_group!(benches, bench, simulator);
criterion_main!(benches);
