//! The monitoring files against the real app: every metric name the Grafana dashboard
//! (ops/grafana/fleetwatch.json) and the alerting rules
//! (ops/prometheus/fleetwatch-rules.yml) use is exported on /metrics once the app has
//! done what the metric counts. Renaming a metric in the code without updating the
//! dashboard and the rules fails here.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};

use crate::api::http;
use crate::deliver::{webhook, Env, Receiver};
use crate::support::*;

const V: &str = "51B-777.01";

/// Every `fleetwatch_*` name in a file's text (expressions, queries, annotations).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("fleetwatch_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Names of the series in a Prometheus text exposition (`_bucket`, `_sum`, `_count`
/// of histograms included, as they are written).
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn ops_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn driven(ts: DateTime<Utc>, i: usize, speed_kmh: f64) -> Vec<u8> {
    let ts = ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"vehicle":"{V}","ts":"{ts}","lat":10.95,"lon":{:.6},"speed_kmh":{speed_kmh},"driver_id":"079000000001","ignition":true,"satellites":9,"hdop":0.9}}"#,
        106.60 + i as f64 * 1e-4
    )
    .into_bytes()
}

#[test]
fn the_dashboard_is_importable_and_names_its_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&ops_file("ops/grafana/fleetwatch.json")).unwrap();
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().unwrap();
            assert!(!metric_names(e).is_empty(), "{}: {e}", p["title"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerting_rules_is_exported() {
    let mut used = metric_names(&ops_file("ops/grafana/fleetwatch.json"));
    let in_rules = metric_names(&ops_file("ops/prometheus/fleetwatch-rules.yml"));
    // The rules' own metrics, so this test cannot pass on an empty parse.
    for m in [
        "fleetwatch_fixes_stored_total",
        "fleetwatch_database_ready",
        "fleetwatch_ingest_lag_seconds_bucket",
        "fleetwatch_vehicles_no_signal",
        "fleetwatch_destinations_parked",
        "fleetwatch_recompute_queued",
    ] {
        assert!(in_rules.contains(m), "rules use {m}");
    }
    used.extend(in_rules);

    // Rules on, a registered bus (limit 70), a webhook destination of its cooperative.
    let e = Env::start(
        |s| {
            s.disable_rules = false;
            s.vehicles = vec![Vehicle {
                id: VehicleId::parse(V).unwrap(),
                plate: None,
                cooperative: CooperativeId::parse("HTX-A").unwrap(),
                class: VehicleClass::Bus,
                route: None,
                device_id: None,
            }];
        },
        "fw-monitoring",
    )
    .await;
    let rx = Receiver::start(0, 200).await;
    e.destination(&e.coop_a, webhook(&rx.url())).await;

    // 60 s at 40, 30 s at 85 (overspeed), 60 s at 40; a malformed message (reject).
    let base = base_time();
    let t = topic("HTX-A", V);
    let mut msgs: Vec<(String, Vec<u8>)> = (0..150)
        .map(|i| {
            let v = if (60..90).contains(&i) { 85.0 } else { 40.0 };
            (
                t.clone(),
                driven(base + chrono::Duration::seconds(i as i64), i, v),
            )
        })
        .collect();
    msgs.push((t.clone(), b"{not json".to_vec()));
    publish_all(&e._broker.url(), &msgs).await;
    wait_until("track stored", Duration::from_secs(30), || async {
        count(&e.db, "SELECT count(*) FROM fixes").await == 150
    })
    .await;
    // A late fix (older than what the rules applied, beyond the reorder window): a
    // recomputation.
    let late = base + chrono::Duration::milliseconds(30_500);
    publish_all(&e._broker.url(), &[(t.clone(), driven(late, 30, 40.0))]).await;
    wait_until(
        "alert published, delivered, late fix recomputed",
        Duration::from_secs(60),
        || async {
            count(&e.db, "SELECT count(*) FROM fixes WHERE flags & 16 <> 0").await == 1
                && count(
                    &e.db,
                    "SELECT count(*) FROM alerts WHERE kind = 'overspeed' AND published_at IS NOT NULL",
                )
                .await
                    >= 1
                && !rx.accepted().is_empty()
        },
    )
    .await;

    // The gauges refreshed by the rules' tick (every 5 s) and by the delivery loop.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (body, missing) = loop {
        let body = http(e.app.http_addr, "GET", "/metrics", None, None)
            .await
            .body;
        let missing: BTreeSet<String> = used.difference(&exported(&body)).cloned().collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break (body, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(missing.is_empty(), "not exported: {missing:?}\n{body}");
    assert!(body.contains("fleetwatch_database_ready 1"), "{body}");
    assert!(body.contains("fleetwatch_mqtt_ready 1"), "{body}");
    assert!(
        body.contains(r#"fleetwatch_ingest_lag_seconds_bucket{le="120"}"#),
        "the lag alert needs a 120 s bucket: {body}"
    );
    e.stop().await;
}
