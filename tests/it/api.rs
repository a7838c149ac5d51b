//! The HTTP API over real HTTP against a real PostgreSQL: tokens and roles, tenant
//! isolation on every endpoint, track formats, alert filters and acks, the monthly
//! compliance report.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::app::App;
use fleetwatch::infra::broker::EmbeddedBroker;
use serde_json::Value;

use crate::support::*;

/// A response: status, raw headers, body.
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Resp {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

pub(crate) async fn get(addr: SocketAddr, path: &str, token: &str) -> Resp {
    http(addr, "GET", path, Some(token), None).await
}

/// Two cooperatives' data and a token of each role.
struct Env {
    _broker: EmbeddedBroker,
    app: App,
    db: String,
    coop_a: String,
    coop_b: String,
    regulator: String,
    admin: String,
    /// Start of the published tracks.
    base: DateTime<Utc>,
}

impl Env {
    fn addr(&self) -> SocketAddr {
        self.app.http_addr
    }

    async fn stop(self) {
        self.app.shutdown();
        self.app.wait().await;
    }
}

/// Number of fixes of A-1: 60 east, then 60 north (an L: simplifies to 3 points).
const A_FIXES: usize = 120;
const B_FIXES: usize = 20;

// Every column of an alert: a table row reads best as one call.
#[allow(clippy::too_many_arguments)]
async fn insert_alert(
    c: &tokio_postgres::Client,
    id: &str,
    vehicle: &str,
    coop: &str,
    (kind, level, status): (&str, &str, &str),
    severity: Option<i16>,
    start: DateTime<Utc>,
    driver: Option<&str>,
    details: Value,
) {
    c.execute(
        "INSERT INTO alerts (alert_id, vehicle_id, cooperative_id, driver_id, kind, level, status,
                             severity, start_ts, end_ts, lat, lon, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::timestamptz,
                 CASE WHEN $7 = 'closed' THEN $9::timestamptz + interval '1 minute' END,
                 10.9, 106.7, $10)",
        &[
            &id, &vehicle, &coop, &driver, &kind, &level, &status, &severity, &start, &details,
        ],
    )
    .await
    .unwrap();
}

async fn setup(client_id: &str) -> Env {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), client_id);
    // The alerts are seeded below; the rules would only add noise.
    s.disable_rules = true;
    let app = start_app(s).await;
    let base = base_time();
    let mut msgs = Vec::new();
    for i in 0..A_FIXES {
        let (lat, lon) = if i < 60 {
            (10.9, 106.7 + i as f64 * 1e-4)
        } else {
            (10.9 + (i - 59) as f64 * 1e-4, 106.7 + 59.0 * 1e-4)
        };
        let speed = if i + 1 == A_FIXES { 0.0 } else { 30.0 };
        let ts = base + TimeDelta::seconds(i as i64);
        msgs.push((topic("HTX-A", "A-1"), fix("A-1", ts, lat, lon, speed)));
    }
    for i in 0..B_FIXES {
        let ts = base + TimeDelta::seconds(i as i64);
        let lon = 106.8 + i as f64 * 1e-4;
        msgs.push((topic("HTX-B", "B-1"), fix("B-1", ts, 10.95, lon, 40.0)));
    }
    publish_all(&broker.url(), &msgs).await;
    wait_until("fixes stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == (A_FIXES + B_FIXES) as i64 }
    })
    .await;

    let c = fleetwatch::store::connect(&db).await.unwrap();
    let os = |counted: bool| serde_json::json!({"max_speed_kmh": 85, "limit_kmh": 70, "duration_s": 30, "counted": counted});
    insert_alert(
        &c,
        "a-open",
        "A-1",
        "HTX-A",
        ("overspeed", "violation", "open"),
        Some(2),
        base + TimeDelta::seconds(30),
        None,
        os(true),
    )
    .await;
    insert_alert(
        &c,
        "a-closed",
        "A-1",
        "HTX-A",
        ("zone_enter", "info", "closed"),
        None,
        base + TimeDelta::seconds(10),
        None,
        serde_json::json!({"zone_id": "DEPOT"}),
    )
    .await;
    insert_alert(
        &c,
        "b-open",
        "B-1",
        "HTX-B",
        ("off_route", "violation", "open"),
        None,
        base + TimeDelta::seconds(5),
        None,
        serde_json::json!({}),
    )
    .await;
    insert_alert(
        &c,
        "b-closed",
        "B-1",
        "HTX-B",
        ("overspeed", "violation", "closed"),
        Some(1),
        base + TimeDelta::seconds(8),
        None,
        os(true),
    )
    .await;
    for (v, coop) in [("A-1", "HTX-A"), ("B-1", "HTX-B")] {
        c.execute(
            "INSERT INTO trips (vehicle_id, start_ts, end_ts, cooperative_id, distance_m, max_speed_kmh)
             VALUES ($1, $2, $3, $4, 1300, 30)",
            &[&v, &base, &(base + TimeDelta::seconds(119)), &coop],
        )
        .await
        .unwrap();
    }
    let coop_a = create_token(&c, Role::Cooperative, Some("htx-a"), Some("A office"))
        .await
        .unwrap();
    let coop_b = create_token(&c, Role::Cooperative, Some("HTX-B"), None)
        .await
        .unwrap();
    let regulator = create_token(&c, Role::Regulator, None, Some("CSGT"))
        .await
        .unwrap();
    let admin = create_token(&c, Role::Admin, None, None).await.unwrap();
    Env {
        _broker: broker,
        app,
        db,
        coop_a,
        coop_b,
        regulator,
        admin,
        base,
    }
}

fn range_q(e: &Env) -> String {
    let f = (e.base - TimeDelta::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let t = (e.base + TimeDelta::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!("from={f}&to={t}")
}

fn ids(v: &Value, list: &str, key: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requires_a_valid_token() {
    let e = setup("fw-api-auth").await;
    let a = e.addr();
    let r = http(a, "GET", "/api/v1/vehicles", None, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
    assert!(r
        .headers
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    assert_eq!(get(a, "/api/v1/vehicles", "garbage").await.status, 401);
    let unknown = "ab".repeat(32);
    let r = get(a, "/api/v1/alerts", &unknown).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid token");
    for p in [
        "/api/v1/vehicles/A-1/track",
        "/api/v1/reports/compliance?month=2026-10",
    ] {
        assert_eq!(http(a, "GET", p, None, None).await.status, 401, "{p}");
    }
    let r = http(
        a,
        "POST",
        "/api/v1/alerts/a-open/ack",
        None,
        Some(r#"{"by":"x"}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    // Only digests are stored.
    let c = fleetwatch::store::connect(&e.db).await.unwrap();
    let stored: Vec<String> = c
        .query("SELECT token_sha256 FROM api_tokens", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 4);
    assert!(!stored.contains(&e.admin));
    assert!(stored.contains(&fleetwatch::api::auth::token_digest(e.admin.as_bytes())));
    // The admin token works; the description is public.
    assert_eq!(get(a, "/api/v1/vehicles", &e.admin).await.status, 200);
    let doc = http(a, "GET", "/api/v1/openapi.json", None, None)
        .await
        .json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/reports/compliance"].is_object());
    let r = get(a, "/api/v1/nothing", &e.admin).await;
    assert_eq!((r.status, r.json()["error"].is_string()), (404, true));
    // Tokens are listed by id (a digest prefix) and revoked by it.
    let listed = fleetwatch::api::auth::list_tokens(&c).await.unwrap();
    assert_eq!(listed.len(), 4);
    let b_id = &fleetwatch::api::auth::token_digest(e.coop_b.as_bytes())[..12];
    let b = listed
        .iter()
        .find(|t| t.id == b_id)
        .expect("B's token listed");
    assert_eq!(b.cooperative.as_deref(), Some("HTX-B"));
    assert!(fleetwatch::api::auth::revoke_token(&c, "abc")
        .await
        .is_err());
    assert!(fleetwatch::api::auth::revoke_token(&c, "00000000")
        .await
        .is_err());
    assert_eq!(get(a, "/api/v1/vehicles", &e.coop_b).await.status, 200);
    let revoked = fleetwatch::api::auth::revoke_token(&c, b_id).await.unwrap();
    assert_eq!(&revoked, b);
    assert_eq!(get(a, "/api/v1/vehicles", &e.coop_b).await.status, 401);
    assert_eq!(
        fleetwatch::api::auth::list_tokens(&c).await.unwrap().len(),
        3
    );
    // Reloading the geography is an admin's act.
    let reload = "/admin/reload-geo";
    assert_eq!(http(a, "POST", reload, None, None).await.status, 401);
    for t in [&e.regulator, &e.coop_a] {
        assert_eq!(http(a, "POST", reload, Some(t), None).await.status, 403);
    }
    let r = http(a, "POST", reload, Some(&e.admin), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("reloaded:"), "{}", r.body);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_token_never_sees_another_cooperatives_data() {
    let e = setup("fw-api-tenants").await;
    let a = e.addr();
    let tok = &e.coop_a;
    let rq = range_q(&e);

    // Vehicles: own only, with position, status and open alerts.
    let r = get(a, "/api/v1/vehicles", tok).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(ids(&v, "vehicles", "vehicle_id"), ["A-1"]);
    assert!(
        !r.body.contains("HTX-B") && !r.body.contains("B-1"),
        "{}",
        r.body
    );
    let a1 = &v["vehicles"][0];
    assert_eq!(a1["status"], "stopped");
    assert_eq!(a1["position"]["speed_kmh"], 0.0);
    let last = e.base + TimeDelta::seconds(A_FIXES as i64 - 1);
    assert_eq!(
        a1["position"]["ts"],
        last.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_eq!(ids(a1, "open_alerts", "id"), ["a-open"]);

    // Track and trips of the other cooperative's vehicle: 403; unknown vehicle: 404.
    for p in [
        format!("/api/v1/vehicles/B-1/track?{rq}"),
        format!("/api/v1/vehicles/B-1/track?{rq}&format=csv"),
        format!("/api/v1/vehicles/b-1/trips?{rq}"),
    ] {
        let r = get(a, &p, tok).await;
        assert_eq!(r.status, 403, "{p}: {}", r.body);
        assert!(!r.body.contains("10.95"), "{}", r.body);
    }
    assert_eq!(get(a, "/api/v1/vehicles/NOPE/track", tok).await.status, 404);

    // Alerts: filtered list; asking for the other cooperative is refused.
    let r = get(a, "/api/v1/alerts", tok).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["a-open", "a-closed"]);
    assert!(!r.body.contains("HTX-B"), "{}", r.body);
    assert_eq!(
        get(a, "/api/v1/alerts?cooperative=HTX-B", tok).await.status,
        403
    );
    let r = get(a, "/api/v1/alerts?vehicle=B-1", tok).await;
    assert_eq!(r.json()["count"], 0);

    // Ack of another cooperative's alert: 404 like an unknown one; nothing logged.
    let r = http(
        a,
        "POST",
        "/api/v1/alerts/b-open/ack",
        Some(tok),
        Some(r#"{"by":"A"}"#),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(count(&e.db, "SELECT count(*) FROM reminder_log").await, 0);

    // Reports.
    let r = get(
        a,
        "/api/v1/reports/compliance?cooperative=HTX-B&month=2026-10",
        tok,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let now = Utc::now();
    let month = format!("{}", (now + TimeDelta::hours(7)).format("%Y-%m"));
    let r = get(a, &format!("/api/v1/reports/compliance?month={month}"), tok).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r.json(), "vehicles", "vehicle_id"), ["A-1"]);
    let r = get(
        a,
        &format!("/api/v1/reports/compliance?{rq}&format=csv"),
        tok,
    )
    .await;
    assert!(
        !r.body.contains("B-1") && r.body.contains("A-1"),
        "{}",
        r.body
    );

    // The other cooperative sees its own, the regulator both.
    let r = get(a, "/api/v1/vehicles", &e.coop_b).await;
    let v = r.json();
    assert_eq!(ids(&v, "vehicles", "vehicle_id"), ["B-1"]);
    assert_eq!(v["vehicles"][0]["status"], "off_route");
    let r = get(a, "/api/v1/vehicles", &e.regulator).await;
    assert_eq!(ids(&r.json(), "vehicles", "vehicle_id"), ["A-1", "B-1"]);
    let r = get(a, "/api/v1/alerts", &e.regulator).await;
    assert_eq!(r.json()["count"], 4);
    let r = get(a, "/api/v1/alerts?cooperative=htx-b", &e.regulator).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["b-closed", "b-open"]);
    let r = get(
        a,
        &format!("/api/v1/vehicles/B-1/track?{rq}&format=csv"),
        &e.regulator,
    )
    .await;
    assert_eq!(r.body.lines().count(), B_FIXES + 1);
    let r = get(a, &format!("/api/v1/reports/compliance?{rq}"), &e.regulator).await;
    let rep = r.json();
    assert_eq!(ids(&rep, "vehicles", "vehicle_id"), ["A-1", "B-1"]);
    assert_eq!(rep["totals"]["counts"]["overspeed_counted"], 2);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_formats_and_simplification() {
    let e = setup("fw-api-track").await;
    let a = e.addr();
    let tok = &e.coop_a;
    let rq = range_q(&e);
    let path = |extra: &str| format!("/api/v1/vehicles/A-1/track?{rq}{extra}");

    let r = get(a, &path(""), tok).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains("application/geo+json"));
    let g = r.json();
    assert_eq!(g["type"], "Feature");
    assert_eq!(g["geometry"]["type"], "LineString");
    let coords = g["geometry"]["coordinates"].as_array().unwrap();
    assert_eq!(coords.len(), A_FIXES);
    assert_eq!(coords[0][0], 106.7); // lon first
    assert_eq!(coords[0][1], 10.9);
    assert_eq!(g["properties"]["times"].as_array().unwrap().len(), A_FIXES);
    assert_eq!(g["properties"]["speeds_kmh"][0], 30.0);
    assert_eq!(g["properties"]["trips"][0]["distance_m"], 1300.0);

    let r = get(a, &path("&format=geojson_points"), tok).await;
    let fc = r.json();
    assert_eq!(fc["type"], "FeatureCollection");
    assert_eq!(fc["features"].as_array().unwrap().len(), A_FIXES);

    let r = get(a, &path("&format=gpx"), tok).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<gpx version=\"1.1\"") && r.body.contains("<trk>"));
    assert_eq!(r.body.matches("<trkpt ").count(), A_FIXES);

    let r = get(a, &path("&format=csv"), tok).await;
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines[0], "ts,lat,lon,speed_kmh,heading_deg,driver_id");
    assert_eq!(lines.len(), A_FIXES + 1);

    // An L of collinear fixes: Douglas-Peucker keeps its two ends and the corner.
    let r = get(a, &path("&simplify_m=5"), tok).await;
    let g = r.json();
    assert_eq!(g["geometry"]["coordinates"].as_array().unwrap().len(), 3);
    assert_eq!(g["properties"]["fixes"], A_FIXES);
    assert_eq!(g["properties"]["times"].as_array().unwrap().len(), 3);
    let r = get(a, &path("&simplify_m=5&format=gpx"), tok).await;
    assert_eq!(r.body.matches("<trkpt ").count(), 3);

    // Paging: a page of 50, then the rest from where it says.
    let r = get(a, &path("&limit=50"), tok).await;
    let g = r.json();
    assert_eq!(g["geometry"]["coordinates"].as_array().unwrap().len(), 50);
    let next = g["properties"]["next_from"].as_str().unwrap().to_string();
    assert_eq!(
        next,
        (e.base + TimeDelta::seconds(50)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert!(r
        .headers
        .to_ascii_lowercase()
        .contains(&format!("x-next-from: {}", next.to_ascii_lowercase())));
    let to = g["properties"]["to"].as_str().unwrap();
    let r = get(
        a,
        &format!("/api/v1/vehicles/A-1/track?from={next}&to={to}&format=csv"),
        tok,
    )
    .await;
    assert_eq!(r.body.lines().count(), A_FIXES - 50 + 1);
    assert!(!r.headers.to_ascii_lowercase().contains("x-next-from"));
    let r = get(a, &path("&limit=0"), tok).await;
    assert_eq!(r.status, 400);

    // Trips endpoint.
    let r = get(a, &format!("/api/v1/vehicles/A-1/trips?{rq}"), tok).await;
    assert_eq!(r.json()["trips"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["stops"], serde_json::json!([]));
    // A second trip after a 5-minute stop at the end of the first one.
    let c = fleetwatch::store::connect(&e.db).await.unwrap();
    let second = e.base + TimeDelta::seconds(119 + 300);
    c.execute(
        "INSERT INTO trips (vehicle_id, start_ts, end_ts, cooperative_id, distance_m, max_speed_kmh)
         VALUES ('A-1', $1, $2, 'HTX-A', 500, 25)",
        &[&second, &(second + TimeDelta::seconds(60))],
    )
    .await
    .unwrap();
    let r = get(a, &format!("/api/v1/vehicles/A-1/trips?{rq}"), tok).await;
    let stops = r.json()["stops"].clone();
    assert_eq!(stops.as_array().unwrap().len(), 1, "{stops}");
    assert_eq!(stops[0]["duration_s"], 300.0);
    // Where the first trip ended: the corner's 60 m north of it (fix 119).
    assert_eq!(stops[0]["lon"], 106.7 + 59.0 * 1e-4);
    let g = get(a, &path(""), tok).await.json();
    assert_eq!(g["properties"]["stops"], stops);

    // Caps and bad parameters: clear 400s.
    for (p, msg) in [
        (
            "/api/v1/vehicles/A-1/track?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
            "range too long",
        ),
        ("/api/v1/vehicles/A-1/track?format=kml", "format"),
        ("/api/v1/vehicles/A-1/track?simplify_m=-1", "simplify_m"),
        ("/api/v1/vehicles/A-1/track?from=yesterday", "from"),
    ] {
        let r = get(a, p, tok).await;
        assert_eq!(r.status, 400, "{p}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(msg), "{p}: {err}");
    }
    // A late fix (older than the latest) is stored but does not move the live position.
    let late = e.base - TimeDelta::minutes(5);
    publish_all(
        &e._broker.url(),
        &[(topic("HTX-A", "A-1"), fix("A-1", late, 11.5, 106.0, 50.0))],
    )
    .await;
    let sql = "SELECT count(*) FROM fixes WHERE vehicle_id = 'A-1'";
    wait_until("the late fix stored", Duration::from_secs(20), || async {
        count(&e.db, sql).await == A_FIXES as i64 + 1
    })
    .await;
    let v = get(a, "/api/v1/vehicles", tok).await.json();
    let pos = &v["vehicles"][0]["position"];
    let last = e.base + TimeDelta::seconds(A_FIXES as i64 - 1);
    assert_eq!(
        pos["ts"],
        last.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_ne!(pos["lat"], 11.5);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_filters_and_ack_write_the_reminder_log() {
    let e = setup("fw-api-alerts").await;
    let a = e.addr();
    let reg = &e.regulator;

    let r = get(a, "/api/v1/alerts", reg).await;
    // Newest first.
    assert_eq!(
        ids(&r.json(), "alerts", "id"),
        ["a-open", "a-closed", "b-closed", "b-open"]
    );
    let r = get(a, "/api/v1/alerts?kind=overspeed", reg).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["a-open", "b-closed"]);
    let r = get(a, "/api/v1/alerts?kind=overspeed&status=open", reg).await;
    let v = r.json();
    assert_eq!(ids(&v, "alerts", "id"), ["a-open"]);
    assert_eq!(v["alerts"][0]["severity"], 2);
    assert_eq!(v["alerts"][0]["details"]["counted"], true);
    let r = get(a, "/api/v1/alerts?level=info", reg).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["a-closed"]);
    let r = get(a, "/api/v1/alerts?min_severity=1", reg).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["a-open", "b-closed"]);
    let r = get(a, "/api/v1/alerts?min_severity=2", reg).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["a-open"]);
    assert_eq!(
        get(a, "/api/v1/alerts?min_severity=5", reg).await.status,
        400
    );
    let r = get(a, "/api/v1/alerts?vehicle=b-1&limit=1", reg).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["b-closed"]);
    let t = (e.base + TimeDelta::seconds(9)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let r = get(a, &format!("/api/v1/alerts?from={t}"), reg).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["a-open", "a-closed"]);
    let r = get(a, &format!("/api/v1/alerts?to={t}"), reg).await;
    assert_eq!(ids(&r.json(), "alerts", "id"), ["b-closed", "b-open"]);
    for bad in [
        "kind=speeding",
        "level=high",
        "limit=0",
        "status=new",
        "cooperative=a%20b",
    ] {
        let r = get(a, &format!("/api/v1/alerts?{bad}"), reg).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // Ack by the cooperative: one reminder log entry.
    let r = http(
        a,
        "POST",
        "/api/v1/alerts/a-open/ack",
        Some(&e.coop_a),
        Some(r#"{"by":"Nguyễn Văn A","note":"called the driver"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["alert_id"], "a-open");
    assert_eq!(v["status"], "acknowledged");
    let c = fleetwatch::store::connect(&e.db).await.unwrap();
    let row = c
        .query_one(
            "SELECT alert_id, channel, status, actor, note FROM reminder_log",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a-open");
    assert_eq!(row.get::<_, String>(1), "api");
    assert_eq!(row.get::<_, String>(2), "acknowledged");
    assert_eq!(row.get::<_, String>(3), "Nguyễn Văn A");
    assert_eq!(row.get::<_, String>(4), "called the driver");
    // The regulator reads only.
    let r = http(
        a,
        "POST",
        "/api/v1/alerts/a-open/ack",
        Some(reg),
        Some(r#"{"by":"x"}"#),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Unknown alert, missing `by`, not JSON.
    let r = http(
        a,
        "POST",
        "/api/v1/alerts/zzz/ack",
        Some(&e.admin),
        Some(r#"{"by":"x"}"#),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = http(
        a,
        "POST",
        "/api/v1/alerts/a-open/ack",
        Some(&e.admin),
        Some(r#"{"note":"x"}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("by"));
    let r = http(
        a,
        "POST",
        "/api/v1/alerts/a-open/ack",
        Some(&e.admin),
        Some("{"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(count(&e.db, "SELECT count(*) FROM reminder_log").await, 1);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_report_counts_violations_per_1000_km() {
    let e = setup("fw-api-report").await;
    let a = e.addr();
    let c = fleetwatch::store::connect(&e.db).await.unwrap();
    for (v, coop) in [("R-1", "HTX-A"), ("R-2", "HTX-A"), ("RB-1", "HTX-B")] {
        c.execute(
            "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered)
             VALUES ($1, $2, $1, 'bus', true)",
            &[&v, &coop],
        )
        .await
        .unwrap();
    }
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    // October 2026, local time UTC+7: 2026-09-30T17:00Z .. 2026-10-31T17:00Z. Two
    // trips due north, 500 and 300 km: the distance is the path of the fixes.
    let mut lat = 10.0;
    for (start, km) in [
        ("2026-10-02T01:00:00Z", 500.0),
        ("2026-10-15T01:00:00Z", 300.0),
    ] {
        c.execute(
            "INSERT INTO trips (vehicle_id, start_ts, end_ts, cooperative_id, distance_m, max_speed_kmh)
             VALUES ('R-1', $1::timestamptz, $1::timestamptz + interval '5 hours', 'HTX-A', $2, 90)",
            &[&at(start), &(km * 1000.0)],
        )
        .await
        .unwrap();
        let end = lat + km * 1000.0 / fleetwatch::geo::M_PER_DEG;
        for (dt_h, lat) in [(0.0, lat), (5.0, end)] {
            c.execute(
                "INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, received_at)
                 VALUES ('R-1', $1::timestamptz + make_interval(hours => $2), 'HTX-A',
                         round($3::float8 * 1e7)::int4, 1067000000, 90,
                         $1::timestamptz + make_interval(hours => $2))",
                &[&at(start), &(dt_h as i32), &lat],
            )
            .await
            .unwrap();
        }
        lat = end;
    }
    let os = |counted: bool| serde_json::json!({"max_speed_kmh": 80, "limit_kmh": 70, "duration_s": 40, "counted": counted});
    let v = ("overspeed", "violation", "closed");
    // Four counted in October (first and last local hours included), one not counted
    // (excess of 5 km/h or less), one on 1 November local time (excluded).
    insert_alert(
        &c,
        "o1",
        "R-1",
        "HTX-A",
        v,
        Some(1),
        at("2026-09-30T17:30:00Z"),
        None,
        os(true),
    )
    .await;
    insert_alert(
        &c,
        "o2",
        "R-1",
        "HTX-A",
        v,
        Some(2),
        at("2026-10-10T03:00:00Z"),
        None,
        os(true),
    )
    .await;
    insert_alert(
        &c,
        "o3",
        "R-1",
        "HTX-A",
        v,
        Some(4),
        at("2026-10-20T03:00:00Z"),
        None,
        os(true),
    )
    .await;
    insert_alert(
        &c,
        "o4",
        "R-1",
        "HTX-A",
        v,
        Some(3),
        at("2026-10-31T16:00:00Z"),
        None,
        os(true),
    )
    .await;
    insert_alert(
        &c,
        "o5",
        "R-1",
        "HTX-A",
        v,
        Some(1),
        at("2026-10-12T03:00:00Z"),
        None,
        os(false),
    )
    .await;
    insert_alert(
        &c,
        "o6",
        "R-1",
        "HTX-A",
        v,
        Some(4),
        at("2026-10-31T18:00:00Z"),
        None,
        os(true),
    )
    .await;
    let drv = Some("079000000001");
    insert_alert(
        &c,
        "d1",
        "R-1",
        "HTX-A",
        ("continuous_driving", "violation", "closed"),
        None,
        at("2026-10-05T05:00:00Z"),
        drv,
        serde_json::json!({}),
    )
    .await;
    insert_alert(
        &c,
        "d2",
        "R-1",
        "HTX-A",
        ("continuous_driving", "warning", "closed"),
        None,
        at("2026-10-05T04:55:00Z"),
        drv,
        serde_json::json!({}),
    )
    .await;
    insert_alert(
        &c,
        "d3",
        "R-2",
        "HTX-A",
        ("daily_driving", "violation", "closed"),
        None,
        at("2026-10-06T12:00:00Z"),
        drv,
        serde_json::json!({}),
    )
    .await;
    insert_alert(
        &c,
        "n1",
        "R-1",
        "HTX-A",
        ("no_signal", "violation", "closed"),
        None,
        at("2026-10-07T12:00:00Z"),
        None,
        serde_json::json!({}),
    )
    .await;
    insert_alert(
        &c,
        "z1",
        "R-2",
        "HTX-A",
        ("restricted_zone", "violation", "closed"),
        None,
        at("2026-10-08T12:00:00Z"),
        None,
        serde_json::json!({}),
    )
    .await;
    insert_alert(
        &c,
        "x1",
        "RB-1",
        "HTX-B",
        v,
        Some(4),
        at("2026-10-10T03:00:00Z"),
        None,
        os(true),
    )
    .await;
    for (start, secs) in [("2026-10-03T00:00:00Z", 60), ("2026-10-04T00:00:00Z", 120)] {
        c.execute(
            "INSERT INTO data_gaps (vehicle_id, start_ts, end_ts, cooperative_id, details)
             VALUES ('R-1', $1::timestamptz, $1::timestamptz + make_interval(secs => $2), 'HTX-A', '{}')",
            &[&at(start), &f64::from(secs)],
        )
        .await
        .unwrap();
    }

    // Seeded straight into the raw tables, not through the writer: the roll-ups the
    // report reads for whole days are rebuilt from them.
    let mut c = c;
    fleetwatch::store::rollup::rebuild(
        &mut c,
        fleetwatch::rules::RulesConfig::default().utc_offset,
        true,
    )
    .await
    .unwrap();
    let r = get(a, "/api/v1/reports/compliance?month=2026-10", &e.coop_a).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rep = r.json();
    assert_eq!(rep["from"], "2026-09-30T17:00:00Z");
    assert_eq!(rep["to"], "2026-10-31T17:00:00Z");
    assert_eq!(rep["cooperative"], "HTX-A");
    assert_eq!(ids(&rep, "vehicles", "vehicle_id"), ["A-1", "R-1", "R-2"]);
    let r1 = &rep["vehicles"][1];
    assert_eq!(r1["distance_km"], 800.0);
    assert_eq!(r1["trips"], 2);
    assert_eq!(r1["overspeed_counted"], 4);
    assert_eq!(
        r1["overspeed_by_band"],
        serde_json::json!({"1": 1, "2": 1, "3": 1, "4": 1})
    );
    assert_eq!(r1["overspeed_not_counted"], 1);
    assert_eq!(r1["overspeed_per_1000km"], 5.0);
    assert_eq!(r1["at_or_over_threshold"], true);
    assert_eq!(r1["near_threshold"], false);
    assert_eq!(r1["continuous_driving_violations"], 1);
    assert_eq!(r1["no_signal"], 1);
    assert_eq!(r1["data_gaps"], 2);
    assert_eq!(r1["data_gap_s"], 180.0);
    let r2 = &rep["vehicles"][2];
    assert_eq!(r2["daily_driving_violations"], 1);
    assert_eq!(r2["restricted_zone_violations"], 1);
    assert_eq!(r2["overspeed_per_1000km"], Value::Null);
    assert_eq!(
        rep["drivers"],
        serde_json::json!([{"driver_id": "079000000001", "distance_km": 0.0, "continuous_driving_violations": 1,
                            "daily_driving_violations": 1, "weekly_driving_violations": 0}])
    );
    let t = &rep["totals"];
    assert_eq!(t["vehicles"], 3);
    assert_eq!(t["vehicles_at_or_over_threshold"], 1);
    assert_eq!(t["counts"]["overspeed_counted"], 4);
    assert_eq!(t["counts"]["distance_km"], 800.0);
    assert!(!r.body.contains("RB-1"), "{}", r.body);

    // The threshold is a parameter: at 6 per 1,000 km, 5.0 is "near".
    let r = get(
        a,
        "/api/v1/reports/compliance?month=2026-10&threshold_per_1000km=6",
        &e.coop_a,
    )
    .await;
    let r1 = &r.json()["vehicles"][1];
    assert_eq!(
        (
            r1["at_or_over_threshold"].clone(),
            r1["near_threshold"].clone()
        ),
        (Value::Bool(false), Value::Bool(true))
    );

    // CSV: header, one row per vehicle, the total.
    let r = get(
        a,
        "/api/v1/reports/compliance?month=2026-10&format=csv",
        &e.coop_a,
    )
    .await;
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.len(), 5, "{}", r.body);
    assert!(lines[0].starts_with("vehicle_id,cooperative_id,plate,distance_km"));
    assert!(
        lines[2].starts_with("R-1,HTX-A,R-1,800.000,2,4,1,1,1,1,1,5.000,true,false,"),
        "{}",
        lines[2]
    );
    assert!(lines[4].starts_with("TOTAL,"));

    // The regulator: one cooperative or all.
    let r = get(
        a,
        "/api/v1/reports/compliance?month=2026-10&cooperative=HTX-B",
        &e.regulator,
    )
    .await;
    let rep = r.json();
    assert_eq!(ids(&rep, "vehicles", "vehicle_id"), ["B-1", "RB-1"]);
    assert_eq!(rep["vehicles"][1]["overspeed_counted"], 1);
    for bad in [
        "month=2026-13",
        "month=2026-10&from=2026-10-01T00:00:00Z",
        "",
        "from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "month=2026-10&near_per_1000km=9",
    ] {
        let r = get(
            a,
            &format!("/api/v1/reports/compliance?{bad}"),
            &e.regulator,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_registers_and_removes_vehicles_while_running() {
    let e = setup("fw-api-admin").await;
    let a = e.addr();
    let body = r#"{"cooperative_id": "HTX-A", "class": "container", "plate": "61C-999.01"}"#;
    let put = |tok: &str, b: &'static str| {
        let tok = tok.to_string();
        async move { http(a, "PUT", "/api/v1/vehicles/NEW-1", Some(&tok), Some(b)).await }
    };
    assert_eq!(put(&e.coop_a, body).await.status, 403);
    assert_eq!(put(&e.regulator, body).await.status, 403);
    let r = put(
        &e.admin,
        r#"{"cooperative_id": "HTX-A", "class": "spaceship"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("container"),
        "{}",
        r.body
    );
    let r = put(
        &e.admin,
        r#"{"cooperative_id": "HTX-A", "class": "bus", "route_id": "NOWHERE"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("NOWHERE"), "{}", r.body);
    let r = put(&e.admin, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["class"], "container");

    // The running pipeline knows it from now on: its fixes are not flagged unregistered.
    let url = e._broker.url();
    let t0 = e.base + TimeDelta::hours(1);
    publish_all(
        &url,
        &[(
            topic("HTX-A", "NEW-1"),
            fix("NEW-1", t0, 10.95, 106.7, 20.0),
        )],
    )
    .await;
    let flags = |ts: DateTime<Utc>| {
        let db = e.db.clone();
        async move {
            let c = fleetwatch::store::connect(&db).await.unwrap();
            let mut flags = None;
            for _ in 0..400 {
                if let Some(r) = c
                    .query_opt(
                        "SELECT flags FROM fixes WHERE vehicle_id = 'NEW-1' AND ts = $1",
                        &[&ts],
                    )
                    .await
                    .unwrap()
                {
                    flags = Some(r.get::<_, i16>(0));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            flags.expect("the fix is stored")
        }
    };
    assert_eq!(flags(t0).await & 4, 0, "registered: no unregistered flag");
    let v = get(a, "/api/v1/vehicles", &e.coop_a).await.json();
    assert!(ids(&v, "vehicles", "vehicle_id").contains(&"NEW-1".to_string()));

    // Taken off the registry: its data stays, new fixes are flagged.
    let del = |tok: &str| {
        let tok = tok.to_string();
        async move { http(a, "DELETE", "/api/v1/vehicles/NEW-1", Some(&tok), None).await }
    };
    assert_eq!(del(&e.coop_a).await.status, 403);
    assert_eq!(del(&e.admin).await.status, 204);
    assert_eq!(del(&e.admin).await.status, 404);
    let t1 = t0 + TimeDelta::seconds(10);
    publish_all(
        &url,
        &[(
            topic("HTX-A", "NEW-1"),
            fix("NEW-1", t1, 10.95, 106.7, 20.0),
        )],
    )
    .await;
    assert_eq!(flags(t1).await & 4, 4, "no longer registered");
    e.stop().await;
}

/// Fixes of `vehicle` from `coop`, `n` seconds from `t0`, northward at `speed_kmh`
/// from `lat0`, one message each.
fn run(
    coop: &str,
    vehicle: &str,
    t0: DateTime<Utc>,
    n: usize,
    lat0: f64,
    speed_kmh: f64,
) -> Vec<(String, Vec<u8>)> {
    let step = speed_kmh / 3.6 / 111_195.0;
    (0..n)
        .map(|i| {
            let ts = t0 + TimeDelta::seconds(i as i64);
            let lat = lat0 + step * i as f64;
            (
                topic(coop, vehicle),
                fix(vehicle, ts, lat, 106.8, speed_kmh),
            )
        })
        .collect()
}

/// An unregistered vehicle belongs to the cooperative whose fix came first: another
/// cooperative's fixes for it are dead letters (`cooperative_mismatch`), never in the
/// first one's live list, track or alerts; and the claim holds after a restart and when
/// both cooperatives' first fixes arrive together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_vehicle_stays_with_the_cooperative_that_sent_it_first() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-api-claim");
    // Unregistered vehicles get a limit, so B's speeding would make an alert.
    s.rules.overspeed.unregistered_limit_kmh = Some(80.0);
    let app = start_app(s.clone()).await;
    let a = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let tok_a = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let tok_b = create_token(&c, Role::Cooperative, Some("HTX-B"), None)
        .await
        .unwrap();
    let regulator = create_token(&c, Role::Regulator, None, None).await.unwrap();
    let base = base_time();
    let url = broker.url();

    // A sends 10 slow fixes of V; then B sends 60 of V at 120 km/h, 20 s later.
    publish_all(&url, &run("HTX-A", "V-1", base, 10, 10.9, 30.0)).await;
    wait_until("A's fixes", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await == 10 }
    })
    .await;
    let t_b = base + TimeDelta::seconds(30);
    publish_all(&url, &run("HTX-B", "V-1", t_b, 60, 10.95, 120.0)).await;
    let handled = "SELECT (SELECT count(*) FROM fixes) + (SELECT count(*) FROM dead_letters)";
    wait_until("B's 60 messages handled", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, handled).await == 70 }
    })
    .await;
    let dead = c
        .query("SELECT reason, detail FROM dead_letters", &[])
        .await
        .unwrap();
    assert_eq!(dead.len(), 60, "B's fixes are dead letters");
    for r in &dead {
        assert_eq!(r.get::<_, &str>(0), "cooperative_mismatch");
        assert!(
            r.get::<_, &str>(1).contains("belongs to HTX-A"),
            "{}",
            r.get::<_, &str>(1)
        );
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM fixes WHERE cooperative_id = 'HTX-B'"
        )
        .await,
        0
    );
    // A's live list and track: A's positions only.
    let v = get(a, "/api/v1/vehicles", &tok_a).await.json();
    assert_eq!(ids(&v, "vehicles", "vehicle_id"), ["V-1"]);
    let pos = &v["vehicles"][0]["position"];
    assert!(pos["lat"].as_f64().unwrap() < 10.91, "{pos}");
    assert_eq!(pos["speed_kmh"], 30.0);
    let range = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let rq = format!(
        "from={}&to={}",
        range(base - TimeDelta::minutes(1)),
        range(base + TimeDelta::minutes(10))
    );
    let r = get(
        a,
        &format!("/api/v1/vehicles/V-1/track?{rq}&format=csv"),
        &tok_a,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.lines().count(), 10 + 1);
    assert!(!r.body.contains(",10.95"), "{}", r.body);
    // B does not see V at all: it is A's.
    let v = get(a, "/api/v1/vehicles", &tok_b).await.json();
    assert_eq!(ids(&v, "vehicles", "vehicle_id"), Vec::<String>::new());
    let r = get(a, &format!("/api/v1/vehicles/V-1/track?{rq}"), &tok_b).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // B's speeding made no alert, for anyone.
    for t in [&tok_a, &tok_b, &regulator] {
        let r = get(a, "/api/v1/alerts?kind=overspeed", t).await.json();
        assert_eq!(r["count"], 0, "{r}");
    }

    // After a restart the claim holds (it is the vehicles row's cooperative).
    app.shutdown();
    app.wait().await;
    let app = start_app(s).await;
    let a = app.http_addr;
    let t_b2 = base + TimeDelta::seconds(200);
    publish_all(&url, &run("HTX-B", "V-1", t_b2, 1, 10.96, 30.0)).await;
    wait_until("B's fix after the restart", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, handled).await == 71 }
    })
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM dead_letters WHERE reason = 'cooperative_mismatch'"
        )
        .await,
        61
    );

    // Both cooperatives' first fixes of W in one burst (one batch): one owner, the
    // other's fixes all dead letters.
    let t_w = base + TimeDelta::seconds(300);
    let mut burst = Vec::new();
    for (a_fix, b_fix) in run("HTX-A", "W-1", t_w, 5, 10.7, 30.0).into_iter().zip(run(
        "HTX-B",
        "W-1",
        t_w + TimeDelta::milliseconds(500),
        5,
        10.8,
        30.0,
    )) {
        burst.push(a_fix);
        burst.push(b_fix);
    }
    publish_all(&url, &burst).await;
    wait_until("the burst handled", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, handled).await == 81 }
    })
    .await;
    let owner: String = c
        .query_one(
            "SELECT cooperative_id FROM vehicles WHERE vehicle_id = 'W-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "HTX-A", "the first fix came from A");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM fixes WHERE vehicle_id = 'W-1' AND cooperative_id = 'HTX-A'"
        )
        .await,
        5
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE vehicle_id = 'W-1'").await,
        5
    );
    let pos = get(a, "/api/v1/vehicles", &regulator).await.json();
    let w = pos["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vehicle_id"] == "W-1")
        .unwrap()
        .clone();
    assert!(w["position"]["lat"].as_f64().unwrap() < 10.75, "{w}");
    app.shutdown();
    app.wait().await;
}

/// Times PostgreSQL (or chrono's arithmetic) cannot take are a 400 naming the
/// parameter on every endpoint with dates, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_outside_the_supported_range_are_400s() {
    let e = setup("fw-api-dates").await;
    let a = e.addr();
    let far = "%2B99999-01-01T00:00:00Z";
    let past = "-5000-01-01T00:00:00Z";
    let past2 = "-4999-12-31T00:00:00Z";
    for (p, param) in [
        (format!("/api/v1/vehicles/A-1/track?from={far}"), "from"),
        (format!("/api/v1/vehicles/A-1/track?to={past}"), "to"),
        (
            format!("/api/v1/vehicles/A-1/track?from={past}&to={past2}&format=csv"),
            "from",
        ),
        (
            "/api/v1/vehicles/A-1/track?to=0000-06-01T00:00:00Z".into(),
            "to",
        ),
        (
            format!("/api/v1/vehicles/A-1/trips?from={past}&to={past2}"),
            "from",
        ),
        (format!("/api/v1/vehicles/A-1/trips?to={far}"), "to"),
        (format!("/api/v1/alerts?from={past}"), "from"),
        ("/api/v1/alerts?to=%2B262000-01-01T00:00:00Z".into(), "to"),
        (
            format!("/api/v1/reports/compliance?from={past}&to={past2}"),
            "from",
        ),
        (
            format!("/api/v1/reports/compliance?from=2026-01-01T00:00:00Z&to={far}"),
            "to",
        ),
        ("/api/v1/reports/compliance?month=-5000-01".into(), "month"),
        ("/api/v1/reports/compliance?month=0000-12".into(), "month"),
    ] {
        let r = get(a, &p, &e.regulator).await;
        assert_eq!(r.status, 400, "{p}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            err.contains(param) && err.contains("years 0001 to 9999"),
            "{p}: {err}"
        );
    }
    // The edges of the range are fine.
    for p in [
        "/api/v1/vehicles/A-1/track?from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z",
        "/api/v1/alerts?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
        "/api/v1/reports/compliance?month=9999-12",
    ] {
        let r = get(a, p, &e.regulator).await;
        assert_eq!(r.status, 200, "{p}: {}", r.body);
    }
    e.stop().await;
}

/// A request that holds a heavy endpoint open: headers read, body left unread, so the
/// server stays blocked writing it.
async fn held(addr: SocketAddr, path: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[9..12], b"200", "{}", String::from_utf8_lossy(&head));
    s
}

/// One token has at most `http.max_heavy_requests_per_token` track pages in progress:
/// one more is a 429 with Retry-After; another token is not affected; the slot frees
/// when a page ends (here: its client goes away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_requests_of_one_token_are_limited() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-api-heavy");
    s.disable_rules = true;
    s.http.max_heavy_requests_per_token = 2;
    s.shutdown_deadline_s = 2;
    let app = start_app(s).await;
    let a = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    // 300,000 fixes: tens of megabytes of GeoJSON, more than the sockets buffer.
    c.batch_execute(
        "INSERT INTO fixes (vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, received_at)
         SELECT 'BIG-1', '2026-11-01T00:00:00Z'::timestamptz + make_interval(secs => i / 4.0),
                'HTX-A', 109000000 + i, 1067000000, 30, now()
         FROM generate_series(0, 299999) i;
         INSERT INTO vehicles (vehicle_id, cooperative_id, registered) VALUES ('BIG-1', 'HTX-A', true);",
    )
    .await
    .unwrap();
    let tok = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let other = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let page = "/api/v1/vehicles/BIG-1/track?from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z&format=geojson_points";
    let small =
        "/api/v1/vehicles/BIG-1/track?from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z&limit=10";
    let h1 = held(a, page, &tok).await;
    let _h2 = held(a, page, &tok).await;
    let r = get(a, small, &tok).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(
        r.headers.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        r.headers
    );
    assert!(
        r.json()["error"].as_str().unwrap().contains("at most 2"),
        "{}",
        r.body
    );
    // Reports count too; other endpoints do not.
    let r = get(a, "/api/v1/reports/compliance?month=2026-11", &tok).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(get(a, "/api/v1/vehicles", &tok).await.status, 200);
    // Another token of the same cooperative has its own slots.
    let r = get(a, small, &other).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["geometry"]["coordinates"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    // A client that goes away frees its slot.
    drop(h1);
    wait_until("a slot freed", Duration::from_secs(20), || async {
        get(a, small, &tok).await.status == 200
    })
    .await;
    // A client that stopped reading (h2) does not keep the service from stopping.
    app.shutdown();
    tokio::time::timeout(Duration::from_secs(30), app.wait())
        .await
        .expect("stops despite a stalled client");
}
