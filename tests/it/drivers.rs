//! A driver's live driving time through the real app and broker: the writer keeps
//! `driver_state` and the vehicles' live columns; `GET /api/v1/drivers/{id}` and the
//! live list read them; late fixes that fill a break are recomputed into the state.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use fleetwatch::infra::broker::EmbeddedBroker;
use serde_json::Value;

use fleetwatch::api::vehicles::rfc3339;

use crate::api::get;
use crate::support::*;

const DRIVER: &str = "079000000042";
const VEHICLE: &str = "51B-420.01";

fn bus(id: &str, coop: &str) -> Vehicle {
    Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse(coop).unwrap(),
        class: VehicleClass::Bus,
        route: None,
        device_id: None,
    }
}

/// A moving fix of the driver at `ts`, the `i`-th along an eastward line.
fn driven(ts: DateTime<Utc>, i: i64) -> (String, Vec<u8>) {
    let ts = ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = format!(
        r#"{{"vehicle":"{VEHICLE}","ts":"{ts}","lat":10.95,"lon":{:.6},"speed_kmh":40,"driver_id":"{DRIVER}","ignition":true,"satellites":9,"hdop":0.9}}"#,
        106.60 + i as f64 * 1e-4
    );
    (topic("HTX-A", VEHICLE), body.into_bytes())
}

fn secs(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

/// Gets `path` until its JSON satisfies `done` (30 s at most).
async fn poll(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(addr, path, token).await;
        if r.status == 200 {
            let v = r.json();
            if done(&v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {v}"
            );
        } else {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                r.status
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_state_after_two_hours_of_driving_is_scoped_and_survives_a_recomputation() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-drivers");
    s.vehicles = vec![bus(VEHICLE, "HTX-A"), bus("51B-420.99", "HTX-B")];
    let app = start_app(s).await;
    let addr = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let coop_a = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let coop_b = create_token(&c, Role::Cooperative, Some("HTX-B"), None)
        .await
        .unwrap();

    // Two hours at 40 km/h, a fix every 10 s, ending a minute ago; fixes of minutes
    // 50 to 66 held back: without them the 16 minutes are a break.
    let end = base_time() + TimeDelta::seconds(3540);
    let start = end - TimeDelta::hours(2);
    let at = |i: i64| start + TimeDelta::seconds(10 * i);
    let hole = 300..396;
    let first: Vec<_> = (0..=720)
        .filter(|i| !hole.contains(i))
        .map(|i| driven(at(i), i))
        .collect();
    publish_all(&broker.url(), &first).await;

    let path = format!("/api/v1/drivers/{DRIVER}");
    let after_break = 7200.0 - 3960.0; // since the fix at minute 66
    let end_s = rfc3339(end);
    let mut d = poll(addr, &path, &coop_a, "the state after the last fix", |d| {
        d["as_of"].as_str() == Some(end_s.as_str())
    })
    .await;
    assert!(
        (secs(&d, "continuous_driving_s") - after_break).abs() <= 20.0,
        "the 16-minute hole is a break: {d}"
    );

    // The held-back fixes arrive late: the vehicle is recomputed, and the stored
    // state is the one after the newest fix, with the hole now driven.
    let late: Vec<_> = hole.clone().map(|i| driven(at(i), i)).collect();
    publish_all(&broker.url(), &late).await;
    d = poll(addr, &path, &coop_a, "the recomputed state", |d| {
        secs(d, "continuous_driving_s") > 7000.0
    })
    .await;
    let cont = secs(&d, "continuous_driving_s");
    assert!((cont - 7200.0).abs() <= 20.0, "~2 h continuous: {d}");
    let left = secs(&d, "continuous_left_s");
    assert!((left - 7200.0).abs() <= 20.0, "~2 h left before 4 h: {d}");
    assert_eq!(secs(&d, "continuous_left_s") + cont, 14_400.0, "{d}");
    assert_eq!(d["vehicle_id"], VEHICLE);
    assert_eq!(
        d["on_vehicle_since"].as_str(),
        Some(rfc3339(start).as_str())
    );
    assert_eq!(d["as_of"].as_str(), Some(rfc3339(end).as_str()));
    assert_eq!(d["moving"], true);
    let off = TimeDelta::hours(7);
    let daily = secs(&d, "daily_driving_s");
    if (start + off).date_naive() == (Utc::now() + off).date_naive() {
        assert!((daily - cont).abs() <= 1.0, "all of it today: {d}");
        assert!((secs(&d, "daily_left_s") - (36_000.0 - daily)).abs() <= 1.0);
    } else {
        assert!(daily < cont, "split at local midnight: {d}");
    }
    assert!(secs(&d, "weekly_driving_s") >= daily);

    // Another cooperative does not learn the driver exists; an unknown one is 404 too.
    let other = get(addr, &path, &coop_b).await;
    assert_eq!(other.status, 404, "{}", other.body);
    let unknown = get(addr, "/api/v1/drivers/079999999999", &coop_a).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        get(addr, "/api/v1/drivers/not%20an%20id!", &coop_a)
            .await
            .status,
        400
    );

    // The live list carries the same figures per vehicle; B's list does not have it.
    let list = get(addr, "/api/v1/vehicles", &coop_a).await.json();
    let v = list["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vehicle_id"] == VEHICLE)
        .unwrap()
        .clone();
    let dr = &v["driving"];
    assert_eq!(dr["driver_id"], DRIVER);
    assert!((secs(dr, "continuous_s") - 7200.0).abs() <= 20.0, "{v}");
    assert!(
        (secs(dr, "continuous_left_s") - 7200.0).abs() <= 20.0,
        "{v}"
    );
    assert_eq!(dr["moving"], true);
    assert!(v["on_route"].is_null(), "no route registered: {v}");
    let list_b = get(addr, "/api/v1/vehicles", &coop_b).await.json();
    assert!(!list_b.to_string().contains(DRIVER));

    // Documented.
    let doc = crate::api::http(addr, "GET", "/api/v1/openapi.json", None, None)
        .await
        .json();
    assert!(doc["paths"]["/api/v1/drivers/{id}"]["get"].is_object());
    assert!(doc["components"]["schemas"]["VehicleList"]
        .to_string()
        .contains("VehicleDriving"));

    app.shutdown();
    app.wait().await;
}
