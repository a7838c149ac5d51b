//! The failover fence's cost to the writer (`[ha]`): batches written alternately with
//! and without the epoch check (`SELECT … FOR SHARE` before the commit), so that other
//! load on the machine hits both alike.
//!
//! `cargo bench --bench fence -- [--batches 300]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use fleetwatch::domain::Vehicle;
use fleetwatch::pipeline::topic::TopicPattern;
use fleetwatch::pipeline::validate::Validator;
use fleetwatch::store::lease::{self, HaConfig};
use fleetwatch::store::writer::{self, Item};
use tokio_util::sync::CancellationToken;

mod support;

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let batches: usize = argv
        .iter()
        .position(|a| a == "--batches")
        .and_then(|i| argv.get(i + 1))
        .map_or(300, |n| n.parse().expect("--batches N"));
    let dir = std::env::temp_dir().join(format!("fw-bench-fence-{}", std::process::id()));
    // Durable commits, as in production: the fence is one more round trip per commit.
    let (_pg, db, _c, _) = support::private_db(&dir, false, "bench_fence").await;
    let mut c = fleetwatch::store::connect(&db).await.unwrap();
    let plan = writer::prepare(&c).await.unwrap();
    let fence = lease::acquire(&c, &HaConfig::default(), "bench", &CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    fence.prepare(&c).await.unwrap();
    println!(
        "machine: {} cores (shared with other work); PostgreSQL {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        c.query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    );
    for size in [100usize, 2_000] {
        let n_vehicles = size;
        let reg: Vec<Vehicle> = (0..n_vehicles)
            .map(|k| {
                serde_json::from_value(serde_json::json!({
                    "id": format!("F{size}-{k:05}"), "cooperative": "HTX-F", "class": "bus",
                }))
                .unwrap()
            })
            .collect();
        let mut v = Validator::new(
            TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap(),
            Default::default(),
            &reg,
        );
        let t0 = Utc::now() - TimeDelta::days(1);
        let (mut with, mut without) = (Duration::ZERO, Duration::ZERO);
        for b in 0..batches * 2 {
            let items: Vec<Item<()>> = (0..size)
                .map(|i| {
                    let n = b * size + i;
                    let (k, s) = (n % n_vehicles, (n / n_vehicles) as i64);
                    let t = t0 + TimeDelta::seconds(s);
                    let payload = format!(
                        r#"{{"vehicle":"F{size}-{k:05}","ts":"{}","lat":10.9,"lon":106.7,"speed_kmh":40,"satellites":9,"hdop":0.9}}"#,
                        t.to_rfc3339()
                    );
                    let topic = format!("fleet/HTX-F/F{size}-{k:05}/fix");
                    let records = v.process(&topic, &Bytes::from(payload), t);
                    Item { records, derived: Default::default(), ack: None, received_at: t }
                })
                .collect();
            let fenced = b % 2 == 0;
            let started = Instant::now();
            let o =
                writer::write_batch_fenced(&mut c, plan.as_ref(), &items, fenced.then_some(&fence))
                    .await
                    .unwrap();
            *(if fenced { &mut with } else { &mut without }) += started.elapsed();
            assert_eq!(o.stored, size as u64);
        }
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / batches as f64;
        println!(
            "write_batch, {size} fixes of {size} vehicles, {batches} batches each: {:.2} ms without the fence, {:.2} ms with: {:+.2} ms ({:+.1} %)",
            per(without),
            per(with),
            per(with) - per(without),
            (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
