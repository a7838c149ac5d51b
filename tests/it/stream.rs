//! `GET /api/v1/stream` through the real app and broker: a snapshot on connect, then a
//! fix's vehicle update within 2 s, and never another cooperative's vehicle.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use fleetwatch::infra::broker::EmbeddedBroker;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A server-sent events reader over a raw HTTP/1.1 connection (chunked body).
pub(crate) struct SseClient {
    s: tokio::net::TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    /// Status of the response.
    pub(crate) status: u16,
}

impl SseClient {
    /// Opens `GET /api/v1/stream` with `token` (`None`: no Authorization header).
    pub(crate) async fn open(addr: SocketAddr, token: Option<&str>) -> SseClient {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req =
            "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n".to_string();
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let split = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        if status == 200 {
            assert!(head.contains("content-type: text/event-stream"), "{head}");
        }
        let raw = raw[split + 4..].to_vec();
        SseClient {
            s,
            raw,
            body: Vec::new(),
            status,
        }
    }

    /// The next event (name and JSON data) within `timeout`; `None` when none came.
    pub(crate) async fn next(&mut self, timeout: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.dechunk();
            if let Some(e) = self.take_event() {
                if e.0.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(e);
            }
            let mut buf = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => return None,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("stream read: {e}"),
            }
        }
    }

    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..eol]).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if self.raw.len() < eol + 2 + n + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[eol + 2..eol + 2 + n]);
            self.raw.drain(..eol + 2 + n + 2);
        }
    }

    fn take_event(&mut self) -> Option<(String, Value)> {
        let end = self.body.windows(2).position(|w| w == b"\n\n")?;
        let text = String::from_utf8(self.body[..end].to_vec()).unwrap();
        self.body.drain(..end + 2);
        let mut name = String::new();
        let mut data = String::new();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        let value = if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&data).unwrap()
        };
        Some((name, value))
    }
}

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

fn ids(v: &Value) -> Vec<String> {
    v["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vehicle_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_pushes_a_fix_within_two_seconds_and_only_to_its_cooperative() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-stream");
    s.vehicles = vec![bus("A-1", "HTX-A"), bus("B-1", "HTX-B")];
    let app = start_app(s).await;
    let addr = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let coop_a = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let coop_b = create_token(&c, Role::Cooperative, Some("HTX-B"), None)
        .await
        .unwrap();

    // Only with the header: no token, or a token in the query, is refused.
    assert_eq!(SseClient::open(addr, None).await.status, 401);
    let query = format!("/api/v1/stream?token={coop_a}");
    assert_eq!(
        crate::api::http(addr, "GET", &query, None, None)
            .await
            .status,
        401
    );

    // A's first position, then both streams open: the snapshot has A's vehicles only.
    let t0 = Utc::now() - chrono::Duration::seconds(30);
    publish_all(
        &broker.url(),
        &[(topic("HTX-A", "A-1"), fix("A-1", t0, 10.95, 106.70, 30.0))],
    )
    .await;
    wait_until("A-1 stored", Duration::from_secs(20), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes WHERE vehicle_id = 'A-1'").await == 1 }
    })
    .await;
    let mut a = SseClient::open(addr, Some(&coop_a)).await;
    let mut b = SseClient::open(addr, Some(&coop_b)).await;
    let (name, snap) = a.next(Duration::from_secs(10)).await.expect("a snapshot");
    assert_eq!(name, "snapshot");
    assert_eq!(ids(&snap), ["A-1"]);
    assert_eq!(snap["vehicles"][0]["position"]["lat"], 10.95);
    let (name, snap_b) = b.next(Duration::from_secs(10)).await.expect("b's snapshot");
    assert_eq!(name, "snapshot");
    assert_eq!(
        ids(&snap_b),
        ["B-1"],
        "B's snapshot has its own vehicle only"
    );

    // A fix of A-1: its update arrives on A's stream within 2 s of the publish.
    let published = Instant::now();
    publish_all(
        &broker.url(),
        &[(
            topic("HTX-A", "A-1"),
            fix(
                "A-1",
                t0 + chrono::Duration::seconds(10),
                10.951,
                106.70,
                35.0,
            ),
        )],
    )
    .await;
    let update = loop {
        let left = Duration::from_secs(2).saturating_sub(published.elapsed());
        let (name, v) = a
            .next(left)
            .await
            .expect("A-1's update within 2 s of its fix");
        if name == "update" && ids(&v).contains(&"A-1".to_string()) {
            break v;
        }
    };
    let v = &update["vehicles"][0];
    assert_eq!(v["position"]["lat"], 10.951, "the new position: {v}");
    assert_eq!(v["status"], "moving");
    assert_eq!(ids(&update), ["A-1"], "only what changed");

    // Then a fix of B-1: B's stream carries it, and nothing of A came before it.
    publish_all(
        &broker.url(),
        &[(
            topic("HTX-B", "B-1"),
            fix(
                "B-1",
                t0 + chrono::Duration::seconds(10),
                10.90,
                106.60,
                20.0,
            ),
        )],
    )
    .await;
    loop {
        let (name, v) = b.next(Duration::from_secs(10)).await.expect("B-1's update");
        assert_eq!(name, "update");
        let text = v.to_string();
        assert!(
            !text.contains("A-1") && !text.contains("HTX-A"),
            "B's stream: {text}"
        );
        if ids(&v).contains(&"B-1".to_string()) {
            break;
        }
    }
    // And A's stream never carries B-1.
    while let Some((_, v)) = a.next(Duration::from_millis(1500)).await {
        assert!(!v.to_string().contains("B-1"), "A's stream: {v}");
    }

    // An alert of A-1 is pushed to A's stream, and again once acknowledged.
    c.execute(
        "INSERT INTO alerts (alert_id, vehicle_id, cooperative_id, kind, level, status,
                             start_ts, lat, lon, details)
         VALUES ('al-stream-1', 'A-1', 'HTX-A', 'overspeed', 'violation', 'open', $1,
                 10.951, 106.70, '{}')",
        &[&t0],
    )
    .await
    .unwrap();
    let alert = |v: &Value| {
        v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == "al-stream-1")
            .cloned()
    };
    let seen = loop {
        let (_, v) = a
            .next(Duration::from_secs(5))
            .await
            .expect("the alert's update");
        if let Some(al) = alert(&v) {
            break al;
        }
    };
    assert_eq!(seen["acknowledged"], false);
    assert_eq!(seen["level"], "violation");
    let ack = crate::api::http(
        addr,
        "POST",
        "/api/v1/alerts/al-stream-1/ack",
        Some(&coop_a),
        Some(r#"{"by":"dispatch"}"#),
    )
    .await;
    assert_eq!(ack.status, 201, "{}", ack.body);
    loop {
        let (_, v) = a
            .next(Duration::from_secs(5))
            .await
            .expect("the acknowledgement's update");
        if alert(&v).is_some_and(|al| al["acknowledged"] == true) {
            break;
        }
    }
    // B never sees it.
    while let Some((_, v)) = b.next(Duration::from_millis(1200)).await {
        assert!(!v.to_string().contains("al-stream-1"), "B's stream: {v}");
    }

    // Shutdown ends the streams (the server does not wait for them to be closed).
    app.shutdown();
    tokio::time::timeout(Duration::from_secs(20), app.wait())
        .await
        .expect("shutdown with streams open");
}
